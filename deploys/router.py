"""The LiteLLM router on a gpu_server: pinned venv, validated config swaps, rollback, keys.

Layout on the host:
    /opt/llm-router/venv-<litellm>-<hash>/   one venv per requirement set, never modified; after a
                                             successful activation only the new one and the one it
                                             replaced are kept
    /opt/llm-router/current -> that venv     switched by the activation script only
    /opt/llm-router/libexec/activate         validate + swap + restart + wait + roll back
    /opt/llm-router/libexec/check-config.py  structural checks of a config before it is used
    /opt/llm-router/libexec/llm_router_launch.py  credential -> LITELLM_MASTER_KEY, exec LiteLLM through
    /opt/llm-router/libexec/llm_router_speedups.py  LiteLLM's CLI, its speed-ups installed in each worker
    /opt/llm-router/libexec/llm_router_names.py     paths and names the router's programs share
    /etc/llm-router/config.yaml              LiteLLM config (dumped from deploys.router_config)
    /etc/llm-router/llm_router_auth.py       custom auth hook (master key + client key hashes)
    /etc/llm-router/client-keys.json         client key hashes (deploys.keys; no restart needed)
    /etc/llm-router/master-key               root 0600, handed over as a systemd credential
    /etc/llm-router/staged/                  desired files that differ from the live ones, and
                                             the trial-run unit (only during an activation)
    /etc/systemd/system/llm-router.service

The programs are hostfiles/'s files (hostfiles/__init__.py maps each to its path here), uploaded
as they are; the activation script gets the layout above as assignments after its first line.

Files that make the router restart are never written in place: the deploy puts
the desired version in `staged/` when it differs from the live one, and the
activation script (one remote command, run only when something changed or the
router is not running) checks the staged set - config structure and reachable
api_base with the new venv's python, then a throwaway instance of the new venv,
config and unit on 127.0.0.1:<port+1> that must become live - and only then
swaps it in, switches `current`, restarts, waits for /health/liveliness, and
restores the previous files and link if the router is not live in time,
failing the apply with the router's own log (master key masked). A change the
trial run refuses never touches the running router. A converged host costs no
command beyond the batched state snapshot.
"""

from __future__ import annotations

import hashlib
import io
import shlex
import tarfile
from dataclasses import dataclass
from pathlib import Path

from pyinfra import host as current_host
from pyinfra.api import FileUploadCommand, deploy, operation
from pyinfra.api.exceptions import OperationError

import hostfiles
from deploys import keys, ops
from deploys import router_config as rc
from deploys.render import render
from deploys.secrets import ensure_secret
from deploys.wheelhouse import LOCK_FILE as WHEELHOUSE_LOCK
from facts.host_state import FactRequest
from facts.system import OnlineCpus
from hostfiles import router_names as names
from inventory.model import Host, Inventory, Router

LAYOUT = rc.DEFAULT_LAYOUT
INSTALL_ROOT = LAYOUT.install_root
CURRENT_LINK = LAYOUT.current_venv
LIBEXEC_DIR = LAYOUT.libexec_dir
ACTIVATE_SCRIPT = f"{LIBEXEC_DIR}/{names.ACTIVATE_FILE_NAME}"
CHECK_CONFIG_SCRIPT = f"{LIBEXEC_DIR}/{names.CHECK_CONFIG_FILE_NAME}"
LAUNCHER_FILE = LAYOUT.launcher_file
# What the launcher runs (LiteLLM with the speed-ups) and the names the router's programs import.
SPEEDUPS_FILE = f"{LIBEXEC_DIR}/{names.SPEEDUPS_FILE_NAME}"
NAMES_FILE = f"{LIBEXEC_DIR}/{names.NAMES_MODULE}.py"
# Written in place (hostfiles/ file, path, operation name): they are only read when a router starts,
# and the trial run needs them live.
STARTUP_FILES: tuple[tuple[str, str, str], ...] = (
    ("router_names.py", NAMES_FILE, "Router: names its programs share"),
    ("router_speedups.py", SPEEDUPS_FILE, "Router: LiteLLM with its speed-ups"),
    ("router_launch.py", LAUNCHER_FILE, "Router: launcher (credential -> environment)"),
)
ETC_DIR = LAYOUT.etc_dir
STAGED_DIR = f"{ETC_DIR}/staged"
NEXT_DIR = f"{ETC_DIR}/next"  # the staged set, assembled for the trial run
CONFIG_FILE = LAYOUT.config_file
AUTH_HOOK_FILE = LAYOUT.auth_hook_file
MASTER_KEY_FILE = LAYOUT.master_key_file
UNIT = LAYOUT.unit_name
UNIT_FILE = f"/etc/systemd/system/{UNIT}"
# The trial-run unit: uploaded with each activation, removed by it.
CHECK_UNIT_SOURCE = f"{STAGED_DIR}/{names.CHECK_UNIT_NAME}"
SERVICE_USER = LAYOUT.service_user
# Loopback port of the throwaway instance that proves a new config/venv/unit starts before the swap.
CHECK_PORT_OFFSET = 1
READY_TIMEOUT_S = 300  # LiteLLM imports for 10-30 s on a quiet small host, minutes on a loaded one


# --- pure values ------------------------------------------------------------------


def requirements(router: Router) -> list[str]:
    """The pins the venv is built from."""
    return [f"litellm[proxy]=={router.litellm_version}", f"prisma=={router.prisma_version}"]


def wheelhouse_files(wheelhouse: Path) -> list[str]:
    """What is uploaded: every wheel, and the lock when there is one."""
    return sorted(p.name for p in wheelhouse.iterdir()
                  if p.is_file() and (p.name.endswith(".whl") or p.name == WHEELHOUSE_LOCK))


def requirements_fingerprint(pins: list[str], wheelhouse_lock: str | None) -> str:
    """Short hash of what decides the venv's content: the pins and, from a wheelhouse, its lock
    (which names every wheel by sha256), so another wheel set is another venv."""
    text = "\n".join(pins) + "\n"
    if wheelhouse_lock is not None:
        text += "wheelhouse:\n" + wheelhouse_lock
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def venv_dir(router: Router, fingerprint: str) -> str:
    return f"{INSTALL_ROOT}/venv-{router.litellm_version}-{fingerprint}"


def wheelhouse_tarball(wheelhouse: Path, wheels: list[str]) -> bytes:
    """One uncompressed tar of the wheels (wheels are zip files already), reproducible."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name in wheels:
            info = tar.gettarinfo(str(wheelhouse / name), arcname=name)
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            info.mtime = 0
            info.mode = 0o644
            with open(wheelhouse / name, "rb") as handle:
                tar.addfile(info, handle)
    return buffer.getvalue()


def install_script(venv: str, stage: str, pins: list[str], from_wheelhouse: bool) -> str:
    """Build the venv at its final path (venvs are not relocatable), prove it imports, mark it done.

    From a wheelhouse, exactly the locked wheels are installed (`--no-deps
    --require-hashes -r requirements.lock`): the host resolves nothing, needs no
    index, and refuses a wheel whose hash is not the lock's.
    A failure removes the half-built venv, so the next apply starts clean and
    `current` (switched later, by the activation script) never points at it.
    """
    q_venv, q_stage = shlex.quote(venv), shlex.quote(stage)
    lines = [
        "set -eu",
        "export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1 LITELLM_LOCAL_MODEL_COST_MAP=True",
        f"fail() {{ echo \"llm-router: $1; {CURRENT_LINK} unchanged\" >&2; rm -rf {q_venv} {q_stage}; exit 1; }}",
        "command -v python3 >/dev/null || fail 'python3 is missing (install python3 and python3-venv)'",
    ]
    if from_wheelhouse:
        lines.append(f"mkdir {q_stage}/wheels && tar -xf {q_stage}/wheelhouse.tar -C {q_stage}/wheels"
                     " || fail 'cannot unpack the uploaded wheelhouse'")
    lines += [
        f"rm -rf {q_venv}",
        f"python3 -m venv {q_venv} || fail 'python3 -m venv failed (install python3-venv)'",
    ]
    if from_wheelhouse:
        lines.append(f"{q_venv}/bin/pip install --quiet --no-index --find-links {q_stage}/wheels --no-deps"
                     f" --require-hashes -r {q_stage}/wheels/{WHEELHOUSE_LOCK}"
                     " || fail 'pip install from the wheelhouse failed'")
    else:
        lines.append(f"{q_venv}/bin/pip install --quiet {' '.join(shlex.quote(p) for p in pins)}"
                     " || fail 'pip install from the package index failed'")
    lines += [
        (f"{q_venv}/bin/python -c 'import litellm.proxy.proxy_server' >/dev/null"
         " || fail 'the new venv cannot import litellm.proxy.proxy_server'"),
        f"touch {q_venv}/.installed",
        f"rm -rf {q_stage}",
    ]
    return "\n".join(lines)


@dataclass(frozen=True)
class StagedFile:
    """A file that only reaches its live path through the activation script."""

    live: str
    staged_name: str
    mode: str = "644"
    group: str = "root"

    @property
    def staged(self) -> str:
        return f"{STAGED_DIR}/{self.staged_name}"


STAGED_FILES: tuple[StagedFile, ...] = (
    StagedFile(CONFIG_FILE, names.CONFIG_FILE_NAME, "640", SERVICE_USER),
    StagedFile(AUTH_HOOK_FILE, f"{names.AUTH_HOOK_MODULE}.py", "644"),
    StagedFile(UNIT_FILE, UNIT, "644"),
)


def render_config(inv: Inventory, host: Host) -> str:
    return rc.dump_config_yaml(rc.build_litellm_config(inv, host))


def render_unit(inv: Inventory, host: Host, cpu_count: int, **overrides) -> str:
    """llm-router.service; with overrides (venv, config_file, bind, port) the trial-run unit."""
    context = rc.router_unit_context(inv, host, cpu_count, LAYOUT, **overrides)
    return render("router/llm-router.service.j2", **context)


def activate_script(staged: tuple[StagedFile, ...] = STAGED_FILES) -> str:
    """hostfiles/router_activate.sh with the router's layout assigned after its first line. Pure text."""
    layout = {
        "ETC": ETC_DIR, "STAGED": STAGED_DIR, "NEXT": NEXT_DIR, "CURRENT": CURRENT_LINK, "UNIT": UNIT,
        "CHECK_UNIT": names.CHECK_UNIT_NAME, "CHECK_CONFIG": CHECK_CONFIG_SCRIPT, "MASTER_KEY": MASTER_KEY_FILE,
        "FILES": "\n".join(f"{s.staged_name} {s.live}" for s in staged),
    }
    shebang, body = hostfiles.content("router_activate.sh").split("\n", 1)
    header = "".join(f"{name}={shlex.quote(value)}\n" for name, value in layout.items())
    return f"{shebang}\n{header}{body}"


# --- operations that ops.py does not have -----------------------------------------


@operation()
def staged_file(spec: StagedFile, content: str):
    """Put `content` in the staging directory when the LIVE file differs (content, mode or owner).

    Comparing with the live file (not the staged copy) means a change that
    was rolled back is staged and tried again by the next apply.
    """
    data = content.encode()
    live = ops.snapshot().path(spec.live)
    if live.kind not in ("file", "absent"):
        raise OperationError(f"{spec.live} exists and is a {live.kind}, not a file")
    if not live_differs(spec, content):
        if snapshot_has(spec.staged):
            # Left by an apply that stopped before its activation: never let it ride along later.
            yield f"rm -f {shlex.quote(spec.staged)}"
        else:
            current_host.noop(f"{spec.live} is up to date")
        return
    ops.show_diff(spec.live, data, live.kind == "file")
    temp = current_host.get_temp_filename(spec.staged)
    yield f"install -m 600 /dev/null {shlex.quote(temp)}"
    yield FileUploadCommand(io.BytesIO(data), spec.staged, remote_temp_filename=temp)
    q = shlex.quote(spec.staged)
    yield f"chown root:{shlex.quote(spec.group)} {q} && chmod {spec.mode} {q}"


def live_differs(spec: StagedFile, content: str) -> bool:
    """Whether the live file lacks this content, mode or owner (so it must be staged and activated)."""
    live = ops.snapshot().path(spec.live)
    same = live.kind == "file" and live.sha256 == hashlib.sha256(content.encode()).hexdigest()
    return not (same and (live.mode, live.user, live.group) == (spec.mode, "root", spec.group))


def snapshot_has(path: str) -> bool:
    return ops.snapshot().path(path).kind != "absent"


_tarballs: dict[tuple[str, tuple[str, ...]], bytes] = {}


@operation()
def venv_installed(venv: str, pins: tuple[str, ...], wheelhouse: str | None, wheels: tuple[str, ...]):
    """The venv, built and import-checked once; nothing at all when its completion marker exists."""
    if ops.snapshot().path(f"{venv}/.installed").kind == "file":
        current_host.noop(f"{venv} is installed")
        return
    stage = f"{INSTALL_ROOT}/.incoming-{Path(venv).name}"
    yield f"rm -rf {shlex.quote(stage)} && install -d -m 700 {shlex.quote(stage)}"
    if wheelhouse is not None:
        key = (wheelhouse, wheels)
        if key not in _tarballs:  # the generator runs at plan and at execution time: tar once
            _tarballs[key] = wheelhouse_tarball(Path(wheelhouse), list(wheels))
        yield FileUploadCommand(io.BytesIO(_tarballs[key]), f"{stage}/wheelhouse.tar")
    yield install_script(venv, stage, list(pins), from_wheelhouse=wheelhouse is not None)


@operation()
def activated(venv: str, port: int, check_port: int, trial_unit: str, changed: bool,
              timeout_s: int = READY_TIMEOUT_S):
    """Run the activation script when something the router runs changed, or it is not serving.

    The trial-run unit (new venv and config on a loopback port) is uploaded with it and
    removed by it, so it never lingers as a file to compare on the next apply.
    """
    snap = ops.snapshot()
    link = snap.path(CURRENT_LINK)
    unit = snap.unit(UNIT)
    serving = unit is not None and unit.is_running
    if not changed and link.kind == "link" and link.target == venv and serving:
        current_host.noop(f"{UNIT} runs {venv}")
        return
    yield FileUploadCommand(io.BytesIO(trial_unit.encode()), CHECK_UNIT_SOURCE)
    yield " ".join(shlex.quote(str(a)) for a in (ACTIVATE_SCRIPT, venv, port, check_port, CHECK_UNIT_SOURCE,
                                                timeout_s))


# --- the deploy ---------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """What the router deploy will install on one host, computed from the inventory alone."""

    pins: tuple[str, ...]
    wheelhouse: str | None
    wheels: tuple[str, ...]
    venv: str

    @property
    def marker(self) -> str:
        return f"{self.venv}/.installed"


def plan(inv: Inventory, host: Host) -> Plan:
    if host.server is None:
        raise ValueError(f"{host.name} is not a gpu_server")
    router = host.server.router
    pins = requirements(router)
    wheelhouse: Path | None = None
    wheels: list[str] | None = None
    lock: str | None = None
    if router.install_source == "wheelhouse":
        if router.wheelhouse_dir is None:
            raise ValueError(f"{host.name}: router.install_source is wheelhouse but router.wheelhouse_dir is not set")
        wheelhouse = inv.resolve_path(router.wheelhouse_dir)
        if not wheelhouse.is_dir():
            raise ValueError(f"{host.name}: the wheelhouse {wheelhouse} does not exist on this workstation "
                             "(fill it with: python -m deploys wheelhouse)")
        wheels = wheelhouse_files(wheelhouse)
        if WHEELHOUSE_LOCK not in wheels:
            raise ValueError(f"{host.name}: the wheelhouse {wheelhouse} has no {WHEELHOUSE_LOCK} "
                             "(fill it with: python -m deploys wheelhouse --version <router.litellm_version>)")
        lock = (wheelhouse / WHEELHOUSE_LOCK).read_text()
        if not any(w.startswith(f"litellm-{router.litellm_version}-") for w in wheels):
            raise ValueError(f"{host.name}: the wheelhouse {wheelhouse} has no litellm {router.litellm_version} "
                             "wheel (router.litellm_version); refill it with: python -m deploys wheelhouse")
    fingerprint = requirements_fingerprint(pins, lock if wheelhouse else None)
    return Plan(tuple(pins), str(wheelhouse) if wheelhouse else None, tuple(wheels or ()),
                venv_dir(router, fingerprint))


def check_port(router: Router) -> int:
    return router.port + CHECK_PORT_OFFSET if router.port < 65535 else router.port - CHECK_PORT_OFFSET


def managed_paths(inv: Inventory, host: Host) -> list[str]:
    p = plan(inv, host)
    return [
        INSTALL_ROOT, LIBEXEC_DIR, ACTIVATE_SCRIPT, CHECK_CONFIG_SCRIPT, CURRENT_LINK, p.marker,
        ETC_DIR, STAGED_DIR, MASTER_KEY_FILE, *(path for _, path, _ in STARTUP_FILES), *keys.managed_paths(),
        *(s.live for s in STAGED_FILES), *(s.staged for s in STAGED_FILES),
    ]


# The unit's default worker count follows the host's CPUs: read in the same snapshot.
CPUS = FactRequest.of(OnlineCpus)


def declare(inv: Inventory, host: Host) -> None:
    """Register everything the router deploy reads, for the host's one state snapshot."""
    ops.declare(paths=managed_paths(inv, host), units=(UNIT,), users=(SERVICE_USER,), facts=(CPUS,))


def cpu_count() -> int:
    return ops.snapshot().get(OnlineCpus).count or 1


@deploy("LiteLLM router")
def router(inv: Inventory, host: Host) -> None:
    if host.server is None:
        raise ValueError(f"{host.name} is not a gpu_server")
    settings = host.server.router
    p = plan(inv, host)
    declare(inv, host)

    # 1. Who may call: the service group, then the client key hashes (old and new during a
    #    rotation). First, so a rotation's new keys are accepted before any client receives them.
    ops.system_user(SERVICE_USER, home=LAYOUT.state_dir, name="Router: service user")
    ops.directory(ETC_DIR, mode="750", group=SERVICE_USER, name=f"Router: {ETC_DIR}")
    keys.hashes_file(inv, host, name="Router: client key hashes")
    master_key = ops.file(MASTER_KEY_FILE, ensure_secret(inv, settings.master_key) + "\n", mode="600",
                          secret=True, name="Router: master key (systemd credential)")

    # 2. The venv, built once per requirement set; `current` is switched by the activation below.
    ops.directory(INSTALL_ROOT, name=f"Router: {INSTALL_ROOT}")
    venv = venv_installed(p.venv, p.pins, p.wheelhouse, p.wheels, name=f"Router: venv {Path(p.venv).name}")

    # 3. Tools of the activation, then the files the router runs, staged when they differ.
    ops.directory(LIBEXEC_DIR, name=f"Router: {LIBEXEC_DIR}")
    ops.file(ACTIVATE_SCRIPT, activate_script(), mode="755", name="Router: activation script")
    ops.file(CHECK_CONFIG_SCRIPT, hostfiles.content("router_check_config.py"), mode="644",
             name="Router: config checks")
    started_by = [ops.file(path, hostfiles.content(source), mode="644", name=title)
                  for source, path, title in STARTUP_FILES]
    ops.directory(STAGED_DIR, mode="700", name=f"Router: {STAGED_DIR}")
    cpus = cpu_count()
    contents = {
        CONFIG_FILE: render_config(inv, host),
        AUTH_HOOK_FILE: hostfiles.content("router_auth.py"),
        UNIT_FILE: render_unit(inv, host, cpus),
    }
    for spec in STAGED_FILES:
        staged_file(spec, contents[spec.live], name=f"Router: {spec.live}")
    restage = any(live_differs(spec, contents[spec.live]) for spec in STAGED_FILES)
    check_unit = render_unit(inv, host, cpus, venv=p.venv, config_file=f"{NEXT_DIR}/config.yaml",
                             bind="127.0.0.1", port=check_port(settings),
                             description="LLM router trial run of a new venv/config (stopped after the check)")

    # 4. Swap in what changed, restart, wait, roll back on failure - one remote command.
    activated(p.venv, settings.port, check_port(settings), check_unit,
              changed=restage or ops.changed(master_key, venv, *started_by), name="Router: activate (check, swap, restart)")
    ops.unit(UNIT, enabled=True, running=True, name="Router: service enabled")
