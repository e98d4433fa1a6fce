"""Start the LLM router: master key from a systemd credential into LiteLLM's environment, then exec.

Managed by llm-router-deploy (hostfiles/router_launch.py). Run by the router venv's python:

    /opt/llm-router/current/bin/python -I llm_router_launch.py --config ... --host ... --port ...

systemd hands the root-only key file over as a credential
(`LoadCredential=master-key:/etc/llm-router/master-key`): a file readable only by
the service under $CREDENTIALS_DIRECTORY. This launcher puts its content in
LITELLM_MASTER_KEY (the config says `master_key: os.environ/LITELLM_MASTER_KEY`)
and replaces itself with LiteLLM's CLI, started through llm_router_speedups.py beside it
(LiteLLM with the router's speed-ups installed in every worker), so the key is never on a
command line, in the config, in the unit file or in the journal. Its arguments go to
`litellm` unchanged. Stdlib only; the names it shares with the deploy are in
llm_router_names.py beside it (hostfiles/router_names.py).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

if __package__:  # imported from this repository (hostfiles.router_launch)
    from hostfiles import router_names as names
else:  # run as a script on the server: -I leaves the script's own (root's) directory off sys.path
    sys.path.insert(0, str(Path(__file__).parent))
    import llm_router_names as names  # type: ignore[import-not-found, no-redef]

# LiteLLM refuses weak master keys; ours are 48 random bytes. Catch a truncated file early.
MIN_KEY_LENGTH = 32


class LaunchError(Exception):
    pass


def read_master_key(environ: dict[str, str]) -> str:
    """The key from $CREDENTIALS_DIRECTORY/master-key (trailing newline removed)."""
    credentials = environ.get("CREDENTIALS_DIRECTORY")
    if not credentials:
        raise LaunchError(
            "CREDENTIALS_DIRECTORY is not set: start the router through its systemd unit "
            f"(LoadCredential={names.MASTER_KEY_CREDENTIAL}:...)"
        )
    path = Path(credentials) / names.MASTER_KEY_CREDENTIAL
    try:
        key = path.read_text().strip()
    except OSError as err:
        raise LaunchError(f"cannot read the master key credential {path}: {err.strerror}") from None
    if not key.startswith("sk-") or len(key) < MIN_KEY_LENGTH or any(c.isspace() for c in key):
        # Never print the key, not even part of it.
        raise LaunchError(f"the master key in {path} is malformed (expected one line 'sk-...', "
                          f"at least {MIN_KEY_LENGTH} characters)")
    return key


def litellm_command(argv: list[str]) -> list[str]:
    """LiteLLM's CLI with `argv`, run by the same venv's python through the speed-ups beside this file."""
    return [sys.executable, str(Path(__file__).with_name(names.SPEEDUPS_FILE_NAME)), *argv]


def main(argv: list[str]) -> int:
    try:
        key = read_master_key(dict(os.environ))
    except LaunchError as err:
        print(f"llm-router: {err}", file=sys.stderr)
        return 1
    environ = dict(os.environ)
    environ[names.MASTER_KEY_ENV] = key
    command = litellm_command(argv)
    os.execve(command[0], command, environ)
    return 1  # not reached


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
