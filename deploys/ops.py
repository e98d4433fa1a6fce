"""Our operations: pyinfra semantics (read state, compare, yield commands or noop), batched state.

Every component declares what it manages (`declare`) before its operations run;
all operations of a host then read one `HostState` snapshot, so a converged
host costs one remote command instead of one per file. Secret files never show
a diff, and their content never travels in a command line.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path

from pyinfra import host, logger, state
from pyinfra.api import FileUploadCommand, operation
from pyinfra.facts.files import FileContents
from pyinfra.operations.util.files import generate_color_diff

from facts.host_state import FactRequest, HostState, Snapshot, state_command


@dataclass
class Manifest:
    """What the site manages on one host: the arguments of its HostState fact."""

    paths: set[str] = field(default_factory=set)
    units: set[str] = field(default_factory=set)
    users: set[str] = field(default_factory=set)
    commands: set[str] = field(default_factory=set)
    facts: set[FactRequest] = field(default_factory=set)


_manifests: dict[str, Manifest] = {}


def manifest() -> Manifest:
    return _manifests.setdefault(host.name, Manifest())


def declare(paths=(), units=(), users=(), commands=(), facts: tuple[FactRequest, ...] = ()) -> None:
    """Register resources before any operation reads the snapshot (call from each @deploy first).

    `facts` are read-only facts whose value is wanted in the same remote call, e.g.
    `FactRequest.of(TailscaleServeStatus)`; read them back with `snapshot().get(...)`.
    """
    m = manifest()
    m.paths.update(paths)
    m.units.update(units)
    m.users.update(users)
    m.commands.update(commands)
    m.facts.update(facts)


_snapshots: dict[str, tuple[tuple, Snapshot]] = {}


def snapshot() -> Snapshot:
    """The host's state as the deploy started, read once per host: pyinfra 3 keeps no fact cache
    (each host.get_fact runs its command again), so the snapshot is kept here.

    Each resource is owned by exactly one operation, so the state before the
    deploy is all an operation needs, both when pyinfra checks for changes and
    when it executes.
    """
    m = manifest()
    arguments = {"paths": tuple(sorted(m.paths)), "units": tuple(sorted(m.units)), "users": tuple(sorted(m.users)),
                 "commands": tuple(sorted(m.commands)), "facts": tuple(sorted(m.facts, key=lambda r: r.key))}
    key = tuple(arguments.values())
    cached = _snapshots.get(host.name)
    if cached is None or cached[0] != key:
        _snapshots[host.name] = (key, host.get_fact(HostState, **arguments))
        _dump_state_command(arguments)
    return _snapshots[host.name][1]


def _dump_state_command(arguments: dict) -> None:
    """For bench: record each host's state command, the floor a no-op is measured against."""
    target = os.environ.get("LLM_ROUTER_STATE_DUMP")
    if not target:
        return
    path = Path(target)
    commands = json.loads(path.read_text()) if path.exists() else {}
    commands[host.name] = state_command(**arguments)
    path.write_text(json.dumps(commands, indent=1))


def show_diff(path: str, new: bytes, existed: bool) -> None:
    if not state.config.DIFF:
        return
    host.log(f"Will {'modify' if existed else 'create'} {path}", logger.info)
    try:
        desired = new.decode().splitlines(keepends=True)
    except UnicodeDecodeError:
        logger.info("  (binary content)")
        return
    current = []
    if existed:
        current = [line + "\n" for line in (host.get_fact(FileContents, path=path) or [])]
    for line in generate_color_diff(current, desired):
        logger.info("  %s", line)


@operation()
def file(path: str, content: str | bytes, mode: str = "644", user: str = "root", group: str = "root",
         secret: bool = False):
    """A file with exactly this content, mode and owner. `secret`: never diffed, uploaded 0600 first."""
    data = content.encode() if isinstance(content, str) else content
    mode = mode.lstrip("0") or "0"
    current = snapshot().path(path)
    if current.kind not in ("file", "absent"):
        raise ValueError(f"{path} exists and is a {current.kind}, not a file")
    same_content = current.kind == "file" and current.sha256 == hashlib.sha256(data).hexdigest()
    if not same_content:
        if secret and state.config.DIFF:
            host.log(f"Will {'update' if current.kind == 'file' else 'create'} secret {path} (content not shown)",
                     logger.info)
        elif not secret:
            show_diff(path, data, current.kind == "file")
        # Upload into a 0600 file beside the target, set owner and mode, then rename it over the target:
        # readers see the old file or the whole new one, and a secret is never readable by others.
        # (pyinfra's own remote_temp_filename is only used with sudo.)
        temp = shlex.quote(f"{path}.llm-router-new")
        yield f"rm -f {temp} && install -m 600 /dev/null {temp}"
        yield FileUploadCommand(BytesIO(data), f"{path}.llm-router-new")
        yield (f"chown {shlex.quote(user)}:{shlex.quote(group)} {temp} && chmod {mode} {temp} && "
               f"mv -f {temp} {shlex.quote(path)}")
    elif (current.mode, current.user, current.group) != (mode, user, group):
        q = shlex.quote(path)
        yield f"chown {shlex.quote(user)}:{shlex.quote(group)} {q} && chmod {mode} {q}"
    else:
        host.noop(f"{path} is up to date")


@operation()
def directory(path: str, mode: str | None = "755", user: str = "root", group: str = "root"):
    """A directory. `mode=None`: create it if missing (0755) but leave an existing one as it is."""
    current = snapshot().path(path)
    q = shlex.quote(path)
    if current.kind == "absent":
        yield f"install -d -m {(mode or '755').lstrip('0') or '0'} -o {shlex.quote(user)} -g {shlex.quote(group)} {q}"
    elif current.kind != "dir":
        raise ValueError(f"{path} exists and is a {current.kind}, not a directory")
    elif mode is None:
        host.noop(f"directory {path} exists")
    elif (current.mode, current.user, current.group) != (mode.lstrip("0") or "0", user, group):
        yield f"chown {shlex.quote(user)}:{shlex.quote(group)} {q} && chmod {mode} {q}"
    else:
        host.noop(f"directory {path} is up to date")


@operation()
def link(path: str, target: str):
    """A symlink; switching it is atomic (rename over the old link)."""
    current = snapshot().path(path)
    if current.kind == "link" and current.target == target:
        host.noop(f"{path} -> {target}")
        return
    if current.kind not in ("link", "absent"):
        raise ValueError(f"{path} exists and is a {current.kind}, not a symlink")
    temp = f"{path}.new"
    yield f"ln -sfn {shlex.quote(target)} {shlex.quote(temp)} && mv -T {shlex.quote(temp)} {shlex.quote(path)}"


@operation()
def absent(path: str):
    current = snapshot().path(path)
    if current.kind == "absent":
        host.noop(f"{path} is absent")
        return
    yield f"rm -rf {shlex.quote(path)}"


@operation()
def system_user(name: str, home: str, groups: tuple[str, ...] = (), shell: str = "/usr/sbin/nologin"):
    """A system user with its own group and these supplementary groups (those that exist on the host)."""
    snap = snapshot()
    wanted = sorted(g for g in groups if g in snap.groups)
    current = snap.user(name)
    q = shlex.quote(name)
    if current is None:
        extra = f" -G {','.join(wanted)}" if wanted else ""
        yield f"useradd --system --user-group --home-dir {shlex.quote(home)} --shell {shell}{extra} {q}"
        return
    missing = [g for g in wanted if g not in current.groups]
    if missing:
        yield f"usermod -a -G {','.join(missing)} {q}"
    else:
        host.noop(f"user {name} is up to date")


@operation()
def unit(name: str, enabled: bool = True, running: bool | None = True, restart: bool = False,
         daemon_reload: bool = False):
    """A systemd unit's state; `running=None` leaves it running or not as it is.

    `restart` and `daemon_reload` are decided when the deploy is built, from the
    `will_change` of the operations that wrote the unit's files (see `changed`),
    so a dry run reports exactly the restarts an apply would do.
    """
    current = snapshot().unit(name)
    q = shlex.quote(name)
    is_enabled = current is not None and current.is_enabled
    is_running = current is not None and current.is_running
    commands = ["systemctl daemon-reload"] if daemon_reload else []
    if enabled and not is_enabled:
        commands.append(f"systemctl enable {q}")
    if not enabled and is_enabled and current and current.unit_file_state != "static":
        commands.append(f"systemctl disable {q}")
    if running is True and not is_running:
        commands.append(f"systemctl start {q}")
    elif running is True and restart:
        commands.append(f"systemctl restart {q}")
    elif running is False and is_running:
        commands.append(f"systemctl stop {q}")
    if commands:
        yield " && ".join(commands)  # one remote command however many steps
    else:
        host.noop(f"unit {name} is {(current.active_state or '') if current else 'unknown'}")


def changed(*metas) -> bool:
    """Whether any of these operations will change the host (known before execution)."""
    return any(meta.will_change for meta in metas)


def cached_snapshot(host_name: str) -> Snapshot | None:
    """Another host's state if this run has already read it (a client compares with its server's)."""
    cached = _snapshots.get(host_name)
    return cached[1] if cached is not None else None
