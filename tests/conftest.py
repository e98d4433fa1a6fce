"""pytest wiring for the lab (the `lab` marker itself is declared in pyproject.toml).

- Tests marked `lab` are skipped on a machine that cannot run the lab (not root, no systemd-nspawn, no
  overlayfs, ...); with LAB_REQUIRED=1 (CI) they fail instead, so a broken runner cannot pass silently.
- The session fixture `lab` brings the lab up, or reuses one that is already running, and takes it down
  at the end if a fixture started it and no other pytest session still uses it (LAB_KEEP=1 keeps it up
  for a look afterwards).
- With LAB_REQUIRED=1 (`./dev test`, CI) ANY skipped test fails the session: a test that skips because a
  tool is missing proves nothing, and `./dev` installs every tool the suite needs.
"""

from __future__ import annotations

import fcntl
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from lab import core
from lab.artifacts import prepare_artifacts
from lab.config import CACHE_DIR, LabConfig, lab_inventory_path, load_config
from lab.topology import Topology, build_topology


def _lab_unavailable_reason() -> str | None:
    missing = core.missing_capabilities()
    return "the lab cannot run here; missing: " + "; ".join(missing) if missing else None


def _refuse(reason: str) -> None:
    if os.environ.get("LAB_REQUIRED") == "1":
        pytest.fail(f"LAB_REQUIRED=1 but {reason}", pytrace=False)
    pytest.skip(reason)


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("lab") is not None:
        reason = _lab_unavailable_reason()
        if reason:
            _refuse(reason)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = reporter.stats.get("skipped", []) if reporter is not None else []
    if os.environ.get("LAB_REQUIRED") == "1" and skipped:
        reporter.ensure_newline()
        for report in skipped:
            reporter.write_line(f"LAB_REQUIRED=1: {report.nodeid} was skipped ({report.longrepr[-1]}): "
                                "a skipped test fails the session here", red=True)
        if session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED


@dataclass(frozen=True)
class RunningLab:
    """What lab tests get: the configuration, its topology and the `up` result."""

    config: LabConfig
    topology: Topology
    started_here: bool


def _lease_dir(config: LabConfig) -> Path:
    return CACHE_DIR / "leases" / config.prefix.rstrip("-")


def _live_leases(lease_dir: Path) -> list[int]:
    """Pids of pytest sessions still holding the lab (leases of dead sessions are dropped)."""
    alive = []
    for lease in lease_dir.glob("*.pid"):
        pid = int(lease.stem)
        if Path(f"/proc/{pid}").exists():
            alive.append(pid)
        else:
            lease.unlink(missing_ok=True)
    return alive


@contextmanager
def _leases_locked(lease_dir: Path) -> Iterator[None]:
    lease_dir.mkdir(parents=True, exist_ok=True)
    with (lease_dir / "lock").open("w") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        yield


@pytest.fixture(scope="session")
def lab() -> Iterator[RunningLab]:
    """The lab, shared by concurrent pytest sessions: each holds a lease, and the last one out takes down
    a lab that a fixture started (one a user started by hand stays up)."""
    reason = _lab_unavailable_reason()
    if reason:
        _refuse(reason)
    config = load_config()
    lease_dir = _lease_dir(config)
    own_lease = lease_dir / f"{os.getpid()}.pid"
    # Inside the instance's state directory, so any `down` (a user's too) clears it.
    started_by_fixture = config.state_dir / "started-by-fixture"
    with _leases_locked(lease_dir):
        result = core.up(config)
        if not result["reused"]:
            started_by_fixture.touch()
        own_lease.touch()
    try:
        yield RunningLab(config, build_topology(config), not result["reused"])
    finally:
        with _leases_locked(lease_dir):
            own_lease.unlink(missing_ok=True)
            last_out = not _live_leases(lease_dir)
            if last_out and started_by_fixture.exists() and os.environ.get("LAB_KEEP") != "1":
                core.down(config)


# --- the deployed site ----------------------------------------------------------------

REPO_ROOT = Path(__file__).resolve().parent.parent
# LAB_INVENTORY (with LAB_PREFIX and the LAB_*_SUBNET variables) points the tests at another lab instance.
LAB_INVENTORY = lab_inventory_path()
_GRAND_TOTAL = re.compile(r"^\s*Grand total\s+(\d+)\s+(\S+)\s+(\S+)\s+(\S+)", re.MULTILINE)


@dataclass(frozen=True)
class ApplyResult:
    returncode: int
    output: str

    @property
    def changed(self) -> int:
        """Operations that ran commands (pyinfra's "Success" column of the grand total)."""
        match = _GRAND_TOTAL.search(self.output)
        if match is None:
            raise AssertionError("no pyinfra results table in:\n" + self.output[-3000:])
        success = match.group(2)
        return 0 if success == "-" else int(success)

    @property
    def errors(self) -> int:
        """Operations that failed (pyinfra's "Error" column of the grand total)."""
        match = _GRAND_TOTAL.search(self.output)
        if match is None:
            raise AssertionError("no pyinfra results table in:\n" + self.output[-3000:])
        return 0 if match.group(3) == "-" else int(match.group(3))

    @property
    def converged(self) -> bool:
        """A re-apply that found nothing to do: exit 0, no operation failed, none changed anything."""
        return self.returncode == 0 and self.errors == 0 and self.changed == 0


def run_apply(*args: str, inventory: Path = LAB_INVENTORY, timeout: float = 1200) -> ApplyResult:
    """`pyinfra -y inventory/hosts.py deploys/site.py` against an inventory, as a user runs it."""
    env = {**os.environ, "LLM_ROUTER_INVENTORY": str(inventory)}
    confirm = [] if "--dry" in args else ["-y"]
    done = subprocess.run(
        [sys.executable, "-m", "pyinfra", *confirm, "inventory/hosts.py", "deploys/site.py", *args],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout, check=False,
    )
    return ApplyResult(done.returncode, done.stdout + done.stderr)


@pytest.fixture(scope="session")
def apply(lab: RunningLab):
    """Run the site against the lab (extra pyinfra arguments, e.g. `--dry`, `--diff`, `--data k=v`)."""
    prepare_artifacts(LAB_INVENTORY)
    return run_apply


@dataclass(frozen=True)
class Deployed:
    result: ApplyResult
    ruleset_before: str  # p620's `nft list ruleset` before the first apply, our table left out
    nftables_conf_before: str


def ruleset_without_ours(host: str = "p620") -> str:
    """The host's ruleset as text with our table removed (what must be left after removal)."""
    text = core.run(host, ["nft", "list", "ruleset"]).stdout
    kept, skipping = [], False
    for line in text.splitlines():
        if line.startswith("table inet llm_router"):
            skipping = True
        elif skipping and line == "}":
            skipping = False
            continue
        if not skipping:
            kept.append(line)
    return "\n".join(kept)


@pytest.fixture(scope="session")
def deployed(apply) -> Deployed:
    """The reference setup applied to the lab once per session; tests that break it must repair it."""
    conf = core.run("p620", ["cat", "/etc/nftables.conf"]).stdout
    conf_before = "\n".join(line for line in conf.splitlines()
                             if "llm-router" not in line) + ("\n" if conf.endswith("\n") else "")
    before = ruleset_without_ours()
    result = apply()
    assert result.returncode == 0, result.output[-6000:]
    return Deployed(result, before, conf_before)
