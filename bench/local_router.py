"""The deploy's LiteLLM router as a local process on loopback, for tests and benchmarks (no lab).

Everything it runs is what the server runs: the config is `build_litellm_config(...)` dumped to
YAML (or a given variant of it), the auth hook, the launcher, the speed-ups and the names they share
are hostfiles/'s files under their names on the server, the master key arrives as a systemd-style
credential file and client keys are checked against a hashes file. Only the directories are
temporary and the bind is 127.0.0.1. Used by tests/test_router_runtime.py and bench.router_local.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hostfiles
from deploys.router import STARTUP_FILES
from deploys.router_config import (
    RouterLayout,
    build_litellm_config,
    dump_config_yaml,
    router_command,
    router_environment,
)
from hostfiles import router_names as names

SERVER = "p620"


class RouterNotLive(RuntimeError):
    """The process exited or did not answer in time; the message ends with its log."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_live(url: str, process: subprocess.Popen, log_file: Path, timeout: float) -> float:
    """Seconds until `url` answers 200, or RouterNotLive when `process` exits or `timeout` passes."""
    started = time.monotonic()
    while True:
        if process.poll() is not None:
            raise RouterNotLive(f"{url}: exited with {process.returncode}:\n"
                                f"{log_file.read_text(errors='replace')[-4000:]}")
        try:
            with urllib.request.urlopen(url, timeout=5) as reply:
                if reply.status == 200:
                    return time.monotonic() - started
        except (OSError, urllib.error.HTTPError):
            pass
        if time.monotonic() - started > timeout:
            raise RouterNotLive(f"{url}: not live after {timeout}s:\n{log_file.read_text(errors='replace')[-4000:]}")
        time.sleep(0.5)


@dataclass
class LocalRouter:
    url: str
    process: subprocess.Popen
    log_file: Path
    hashes_file: Path

    def log(self) -> str:
        return self.log_file.read_text(errors="replace")

    def wait_live(self, timeout: float) -> float:
        """Seconds until /health/liveliness answers 200."""
        return wait_live(f"{self.url}/health/liveliness", self.process, self.log_file, timeout)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)


def start_local_router(root: Path, inventory: Any, venv: Path, master_key: str, hashes_text: str, *,
                       workers: int = 1, config: dict[str, Any] | None = None, hook: Path | None = None,
                       extra_args: Iterable[str] = (), env: dict[str, str | None] | None = None) -> LocalRouter:
    """Start (not wait for) the router of `inventory`'s server under `root`.

    `config` replaces the deploy's config dict, `hook` the auth hook file; `env` adds variables to
    the router's environment (None removes one).
    """
    etc, credentials, state, cache = (root / d for d in ("etc", "credentials", "state", "cache"))
    for directory in (etc, credentials, state, cache):
        directory.mkdir(parents=True, mode=0o700)
    layout = RouterLayout(etc_dir=str(etc), install_root=str(root))
    Path(layout.config_file).write_text(
        dump_config_yaml(config if config is not None else build_litellm_config(inventory, SERVER)))
    shutil.copy(hook or hostfiles.HOSTFILES_DIR / "router_auth.py", layout.auth_hook_file)
    libexec = Path(layout.libexec_dir)
    libexec.mkdir()
    for source, path, _ in STARTUP_FILES:
        shutil.copy(hostfiles.HOSTFILES_DIR / source, libexec / Path(path).name)
    (credentials / names.MASTER_KEY_CREDENTIAL).write_text(master_key + "\n")
    hashes_file = Path(layout.key_hashes_file)
    hashes_file.write_text(hashes_text)

    port = free_port()
    argv = router_command(inventory.hosts[SERVER].server, workers, layout, venv=str(venv), bind="127.0.0.1",
                          port=port) + list(extra_args)
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("LITELLM_", "PIP_"))}
    environment |= router_environment(layout)
    environment |= {"HOME": str(state), "XDG_CACHE_HOME": str(cache), "CREDENTIALS_DIRECTORY": str(credentials)}
    for key, value in (env or {}).items():
        if value is None:
            environment.pop(key, None)
        else:
            environment[key] = value
    log_file = root / "router.log"
    with log_file.open("wb") as log:
        process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   cwd=state, env=environment, start_new_session=True)
    return LocalRouter(f"http://127.0.0.1:{port}", process, log_file, hashes_file)
