"""The LiteLLM router on a gpu_server: pinned venv, validated config swaps, rollback, keys.

Layout on the host:
    /opt/llm-router/venv-<litellm>-<hash>/   one venv per requirement set, never modified; after a
                                             successful activation only the new one and the one it
                                             replaced are kept
    /opt/llm-router/current -> that venv     switched by the activation script only
    /opt/llm-router/libexec/activate         validate + swap + restart + wait + roll back
    /opt/llm-router/libexec/check-config.py  structural checks of a config before it is used
    /opt/llm-router/libexec/llm_router_launch.py  credential -> LITELLM_MASTER_KEY, exec litellm
    /etc/llm-router/config.yaml              LiteLLM config (dumped from deploys.router_config)
    /etc/llm-router/llm_router_auth.py       custom auth hook (master key + client key hashes)
    /etc/llm-router/client-keys.json         client key hashes (deploys.keys; no restart needed)
    /etc/llm-router/master-key               root 0600, handed over as a systemd credential
    /etc/llm-router/staged/                  desired files that differ from the live ones, and
                                             the trial-run unit (only during an activation)
    /etc/systemd/system/llm-router.service

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

from deploys import keys, ops
from deploys import router_config as rc
from deploys.render import render
from deploys.secrets import ensure_secret
from deploys.wheelhouse import LOCK_FILE as WHEELHOUSE_LOCK
from facts.host_state import FactRequest
from facts.system import OnlineCpus
from inventory.model import Host, Inventory, Router

LAYOUT = rc.DEFAULT_LAYOUT
INSTALL_ROOT = LAYOUT.install_root
CURRENT_LINK = LAYOUT.current_venv
LIBEXEC_DIR = f"{INSTALL_ROOT}/libexec"
ACTIVATE_SCRIPT = f"{LIBEXEC_DIR}/activate"
CHECK_CONFIG_SCRIPT = f"{LIBEXEC_DIR}/check-config.py"
LAUNCHER_FILE = LAYOUT.launcher_file
ETC_DIR = LAYOUT.etc_dir
STAGED_DIR = f"{ETC_DIR}/staged"
NEXT_DIR = f"{ETC_DIR}/next"  # the staged set, assembled for the trial run
CONFIG_FILE = LAYOUT.config_file
AUTH_HOOK_FILE = LAYOUT.auth_hook_file
MASTER_KEY_FILE = LAYOUT.master_key_file
UNIT = LAYOUT.unit_name
UNIT_FILE = f"/etc/systemd/system/{UNIT}"
# The trial-run unit: uploaded with each activation, removed by it.
CHECK_UNIT_SOURCE = f"{STAGED_DIR}/llm-router-check.service"
SERVICE_USER = LAYOUT.service_user
# Loopback port of the throwaway instance that proves a new config/venv/unit starts before the swap.
CHECK_PORT_OFFSET = 1
READY_TIMEOUT_S = 300  # LiteLLM imports for 10-30 s on a quiet small host, minutes on a loaded one

TEMPLATES = Path(__file__).resolve().parent.parent / "templates" / "router"


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


# The config checks run with the NEW venv's python (PyYAML comes with litellm).
CHECK_CONFIG_PY = r'''"""check-config.py CONFIG: is this LiteLLM proxy config fit to replace the running one?

Managed by llm-router-deploy (deploys/router.py). Exit 0, or 1 with one line per problem.
"""
import os
import sys
import urllib.error
import urllib.request

import yaml


def problems(path):
    found = []
    try:
        with open(path) as handle:
            config = yaml.safe_load(handle)
    except (OSError, yaml.YAMLError) as error:
        return [f"{path}: not loadable YAML: {error}"]
    if not isinstance(config, dict):
        return [f"{path}: the document is not a mapping"]
    models = config.get("model_list")
    if not isinstance(models, list) or not models:
        found.append("model_list is missing or empty")
        models = []
    bases = set()
    for index, entry in enumerate(models):
        where = f"model_list[{index}]"
        if not isinstance(entry, dict) or not isinstance(entry.get("model_name"), str):
            found.append(f"{where}: needs a model_name")
            continue
        params = entry.get("litellm_params")
        if not isinstance(params, dict) or not isinstance(params.get("model"), str) or "/" not in params["model"]:
            found.append(f"{where} ({entry['model_name']}): litellm_params.model must be '<provider>/<model>'")
            continue
        if isinstance(params.get("api_base"), str):
            bases.add(params["api_base"])
    for base in sorted(bases):
        try:
            urllib.request.urlopen(base, timeout=5).close()
        except urllib.error.HTTPError:
            pass  # it answered: reachable
        except (urllib.error.URLError, OSError) as error:
            found.append(f"api_base {base} is not reachable: {getattr(error, 'reason', error)}")
    general = config.get("general_settings") or {}
    if not isinstance(general, dict):
        found.append("general_settings is not a mapping")
        general = {}
    master = general.get("master_key")
    if isinstance(master, str) and not master.startswith("os.environ/"):
        found.append("general_settings.master_key holds a literal key; it must come from the environment")
    auth = general.get("custom_auth")
    if auth:
        module = str(auth).rsplit(".", 1)[0]
        source = os.path.join(os.path.dirname(os.path.abspath(path)), module.replace(".", "/") + ".py")
        try:
            with open(source) as handle:
                compile(handle.read(), source, "exec")
        except (OSError, SyntaxError) as error:
            found.append(f"custom_auth {auth}: {error}")
    return found


if __name__ == "__main__":
    found = problems(sys.argv[1])
    for problem in found:
        print(f"check-config: {problem}", file=sys.stderr)
    sys.exit(1 if found else 0)
'''


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
    StagedFile(CONFIG_FILE, "config.yaml", "640", SERVICE_USER),
    StagedFile(AUTH_HOOK_FILE, "llm_router_auth.py", "644"),
    StagedFile(UNIT_FILE, UNIT, "644"),
)


def render_config(inv: Inventory, host: Host) -> str:
    return rc.dump_config_yaml(rc.build_litellm_config(inv, host))


def render_unit(inv: Inventory, host: Host, cpu_count: int, **overrides) -> str:
    """llm-router.service; with overrides (venv, config_file, bind, port) the trial-run unit."""
    context = rc.router_unit_context(inv, host, cpu_count, LAYOUT, **overrides)
    return render("router/llm-router.service.j2", **context)


def activate_script(staged: tuple[StagedFile, ...] = STAGED_FILES) -> str:
    """The one remote command that activates staged files and a venv, with rollback. Pure text."""
    table = "\n".join(f"{s.staged_name} {s.live}" for s in staged)
    return ACTIVATE_TEMPLATE.replace("@FILES@", table).replace("@ETC@", ETC_DIR).replace(
        "@STAGED@", STAGED_DIR).replace("@CURRENT@", CURRENT_LINK).replace("@UNIT@", UNIT).replace(
        "@CHECK_CONFIG@", CHECK_CONFIG_SCRIPT).replace("@MASTER_KEY@", MASTER_KEY_FILE)


ACTIVATE_TEMPLATE = r"""#!/bin/sh
# Managed by llm-router-deploy (deploys/router.py): activate staged router files and a venv.
#
# usage: activate VENV PORT CHECK_PORT CHECK_UNIT_FILE TIMEOUT_S
#   1. check: the staged config (YAML, structure, api_base reachable) with the new venv, then a
#      throwaway instance (CHECK_UNIT_FILE: new venv + staged files, loopback port) must become
#      live. A failure here leaves the running router untouched.
#   2. swap: back up the live files and the `current` link, move the staged files in, switch the
#      link, restart, wait for /health/liveliness on 127.0.0.1:PORT; once live, remove the venvs
#      other than the new one and the one it replaced.
#   3. not live within TIMEOUT_S: restore the backup, restart, fail with the router's own log.
set -u
VENV=$1 PORT=$2 CHECK_PORT=$3 CHECK_UNIT_FILE=$4 TIMEOUT=$5
ETC=@ETC@
STAGED=@STAGED@
NEXT=$ETC/next
BACKUP=$ETC/rollback
CURRENT=@CURRENT@
UNIT=@UNIT@
CHECK_UNIT=llm-router-check.service
FILES='@FILES@'

say() { printf 'llm-router: %s\n' "$*" >&2; }

# The router's log since $2 (epoch), last lines, with the master key masked: it never reaches
# pyinfra's output even if LiteLLM printed it. The key is read by python from its file, never
# passed as an argument.
router_log() {
    journalctl -u "$1" --since "@$2" --no-pager -o cat 2>/dev/null | tail -n 40 | python3 -c '
import sys
try:
    key = open("@MASTER_KEY@").read().strip()
except OSError:
    key = ""
for line in sys.stdin:
    sys.stderr.write(line.replace(key, "<master key>") if key else line)
'
}

# Wait until 127.0.0.1:$1/health/liveliness answers; give up early when the unit ($2) failed
# or restarted, else after TIMEOUT seconds.
wait_live() {
    end=$(( $(date +%s) + TIMEOUT ))
    while [ "$(date +%s)" -lt "$end" ]; do
        if python3 -c 'import sys, urllib.request
urllib.request.urlopen("http://127.0.0.1:%s/health/liveliness" % sys.argv[1], timeout=2).close()' "$1" \
            2>/dev/null; then
            return 0
        fi
        state=$(systemctl show -p ActiveState --value "$2")
        restarts=$(systemctl show -p NRestarts --value "$2")
        case "$state" in failed|inactive) return 1 ;; esac
        [ "${restarts:-0}" -gt 0 ] && return 1
        sleep 1
    done
    return 1
}

# Blocking (Type=exec returns once the new process runs): with --no-block the old router could
# still answer the first liveliness probe while it is being stopped.
restart_router() {
    systemctl reset-failed "$UNIT" 2>/dev/null
    systemctl restart "$UNIT" || true
}

staged_or_live() { # NAME LIVE -> the file the new set uses
    if [ -e "$STAGED/$1" ]; then echo "$STAGED/$1"; else echo "$2"; fi
}

# Staged files are used once: whatever the outcome, the staging area is empty afterwards, so a
# refused change can never slip in with a later activation.
discard_staged() {
    rm -rf "$NEXT"
    find "$STAGED" -mindepth 1 -maxdepth 1 -type f -delete 2>/dev/null
}

stop_trial() {
    systemctl stop "$CHECK_UNIT" 2>/dev/null
    rm -f "/run/systemd/system/$CHECK_UNIT"
    systemctl daemon-reload
}

# --- 1. check, without touching the running router ------------------------------
[ -f "$VENV/.installed" ] || { say "$VENV is not a complete venv; $CURRENT unchanged"; discard_staged; exit 1; }
rm -rf "$NEXT" && install -d -m 750 -g "$(stat -c %G "$ETC")" "$NEXT" || exit 1
echo "$FILES" | while read -r name live; do
    case "$live" in
        $ETC/*) src=$(staged_or_live "$name" "$live"); [ -e "$src" ] && cp -p "$src" "$NEXT/$name" ;;
    esac
done
if ! "$VENV/bin/python" @CHECK_CONFIG@ "$NEXT/config.yaml"; then
    say "the new config was rejected before use; the running router is unchanged"
    discard_staged; exit 1
fi
started=$(date +%s)
install -m 644 "$CHECK_UNIT_FILE" "/run/systemd/system/$CHECK_UNIT"
systemctl daemon-reload
systemctl reset-failed "$CHECK_UNIT" 2>/dev/null
systemctl start "$CHECK_UNIT"
if ! wait_live "$CHECK_PORT" "$CHECK_UNIT"; then
    say "a trial run of the new router (venv, config, unit) did not become live; the running router is unchanged"
    say "its log:"
    router_log "$CHECK_UNIT" "$started"
    stop_trial; discard_staged; exit 1
fi
stop_trial
rm -f "$CHECK_UNIT_FILE"

# --- 2. swap ---------------------------------------------------------------------
rm -rf "$BACKUP" && install -d -m 700 "$BACKUP" || exit 1
readlink "$CURRENT" > "$BACKUP/current.target" 2>/dev/null || : > "$BACKUP/current.target"
echo "$FILES" | while read -r name live; do
    if [ -e "$live" ]; then cp -p "$live" "$BACKUP/$name"; fi
done
echo "$FILES" | while read -r name live; do
    if [ -e "$STAGED/$name" ]; then mv -f "$STAGED/$name" "$live"; fi
done
ln -sfn "$VENV" "$CURRENT.new" && mv -T "$CURRENT.new" "$CURRENT"
discard_staged
systemctl daemon-reload
started=$(date +%s)
restart_router
if wait_live "$PORT" "$UNIT"; then
    # Serving: venvs other than this one and the one it replaced (kept to switch back by hand) are
    # never used again, and each holds LiteLLM and its dependencies (~0.5 GB).
    replaced=$(cat "$BACKUP/current.target")
    for old in "${VENV%/*}"/venv-*; do
        case "$old" in "$VENV"|"$replaced") ;; *) [ -d "$old" ] && rm -rf "$old" ;; esac
    done
    rm -rf "$BACKUP"
    exit 0
fi

# --- 3. roll back ----------------------------------------------------------------
say "the router did not become live within ${TIMEOUT}s after the change; restoring the previous version"
say "its log:"
router_log "$UNIT" "$started"
echo "$FILES" | while read -r name live; do
    if [ -e "$BACKUP/$name" ]; then mv -f "$BACKUP/$name" "$live"; else rm -f "$live"; fi
done
previous=$(cat "$BACKUP/current.target")
if [ -n "$previous" ]; then ln -sfn "$previous" "$CURRENT.new" && mv -T "$CURRENT.new" "$CURRENT"; fi
systemctl daemon-reload
if [ -n "$previous" ]; then
    started=$(date +%s)
    restart_router
    if wait_live "$PORT" "$UNIT"; then
        say "rolled back: the previous router is serving again"
    else
        say "rolled back, but the previous router is not live either:"
        router_log "$UNIT" "$started"
    fi
else
    # A first install that never came up: back to "not installed", so the next apply starts afresh
    # (no half-activated `current` link left that would make it skip the activation).
    systemctl stop "$UNIT" 2>/dev/null
    rm -f "$CURRENT"
    systemctl daemon-reload
    say "there was no previous version to restore; the router is stopped and not installed"
fi
rm -rf "$BACKUP"
exit 1
"""


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
        ETC_DIR, STAGED_DIR, MASTER_KEY_FILE, LAUNCHER_FILE, *keys.managed_paths(),
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
    ops.file(CHECK_CONFIG_SCRIPT, CHECK_CONFIG_PY, mode="644", name="Router: config checks")
    # Written in place: it is only read when a router starts, and the trial run needs it live.
    launcher = ops.file(LAUNCHER_FILE, (TEMPLATES / "llm_router_launch.py").read_text(), mode="644",
                        name="Router: launcher (credential -> environment)")
    ops.directory(STAGED_DIR, mode="700", name=f"Router: {STAGED_DIR}")
    cpus = cpu_count()
    contents = {
        CONFIG_FILE: render_config(inv, host),
        AUTH_HOOK_FILE: (TEMPLATES / "llm_router_auth.py").read_text(),
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
              changed=restage or ops.changed(master_key, venv, launcher), name="Router: activate (check, swap, restart)")
    ops.unit(UNIT, enabled=True, running=True, name="Router: service enabled")
