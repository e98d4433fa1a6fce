"""Every program the deploy puts on a host, as a real file, and the names they share with the deploy.

Each file is uploaded as it is (deploys read it with `content`, then ops.file / staged_file); the
Python ones are ordinary modules here too (`from hostfiles import router_auth`), so tests import
them instead of loading them by path.

    file here                 on the host                                    installed by
    router_names.py           /opt/llm-router/libexec/llm_router_names.py    deploys/router.py
    router_launch.py          /opt/llm-router/libexec/llm_router_launch.py   deploys/router.py
    router_speedups.py        /opt/llm-router/libexec/llm_router_speedups.py deploys/router.py
    router_check_config.py    /opt/llm-router/libexec/check-config.py        deploys/router.py
    router_activate.sh        /opt/llm-router/libexec/activate               deploys/router.py
    router_auth.py            /etc/llm-router/llm_router_auth.py (staged)    deploys/router.py
    claude_router.py          /usr/local/bin/claude-router, and the symlink  deploys/client.py
                              /usr/local/bin/claude-router-key (the apiKeyHelper: the same program,
                              which answers as `claude-router key` when started by that name)
    claude_commands/*.md      ~USER/.claude/commands/ (Claude Code slash commands)  deploys/client.py
    ollama_model_loader.sh    /usr/local/lib/llm-router/ollama-model-loader  deploys/ollama.py

Names both sides need are defined once:
- the router's (paths, file names, environment variables) in router_names.py, which only holds
  constants. The deploy imports `hostfiles.router_names`; on the server it is llm_router_names.py in
  libexec, and each router program imports it under that name when it does not run from this
  package (`__package__` is empty there): the launcher puts its own directory on sys.path (it runs
  with -I), and the LiteLLM process started through it has that directory first on sys.path (its main
  script, llm_router_speedups.py, is there), which the auth hook, loaded by LiteLLM, imports from.
- the client's in claude_router.py itself: one stdlib-only file on the host, so the deploy imports
  its names from it (`claude_router.PROGRAM_FILE`, `DEFAULT_CONFIG_PATH`, ...) rather than ship a
  second file beside it.
- the activation script's as shell assignments the deploy writes after its first line
  (deploys/router.py: activate_script); the script refuses to run without them.
"""

from __future__ import annotations

from pathlib import Path

HOSTFILES_DIR = Path(__file__).resolve().parent


def content(name: str) -> str:
    """The text of hostfiles/<name>, which is what the host receives."""
    return (HOSTFILES_DIR / name).read_text()
