"""One remote command per host for the state every managed resource needs.

Stock pyinfra runs one command per file check (and one sha1sum per file), each
paying an SSH round trip. The site registers every path, unit and user it
manages before any operation runs; the first operation asks for `HostState`
with that whole set, and every later one gets pyinfra's cached answer.
"""

from __future__ import annotations

import base64
import shlex
from dataclasses import dataclass, field

from pyinfra.api import FactBase

from facts.units import parse_unit_blocks

# Field separator that cannot appear in paths we manage.
SEP = "\x1f"


@dataclass(frozen=True)
class PathState:
    kind: str  # "file", "dir", "link" or "absent"
    mode: str = ""  # octal, e.g. "644"
    user: str = ""
    group: str = ""
    sha256: str = ""  # files only
    target: str = ""  # links only


@dataclass(frozen=True)
class UnitState:
    load: str  # loaded / not-found
    active: str  # active / inactive / failed ...
    enabled: str  # enabled / disabled / static / "" when unknown


@dataclass(frozen=True)
class UserState:
    uid: int
    gid: int
    groups: frozenset[str]
    home: str


@dataclass(frozen=True)
class Probe:
    """Exit status and output of a read-only shell command run inside the same remote call."""

    status: int
    output: str


@dataclass(frozen=True)
class Snapshot:
    paths: dict[str, PathState] = field(default_factory=dict)
    units: dict[str, UnitState] = field(default_factory=dict)
    users: dict[str, UserState] = field(default_factory=dict)
    groups: frozenset[str] = frozenset()
    commands: frozenset[str] = frozenset()
    probes: dict[str, Probe] = field(default_factory=dict)

    def path(self, path: str) -> PathState:
        return self.paths.get(path, PathState("absent"))


def state_command(paths: tuple[str, ...], units: tuple[str, ...], users: tuple[str, ...],
                  commands: tuple[str, ...] = (), probes: tuple[tuple[str, str], ...] = ()) -> str:
    """A POSIX sh script printing one tagged line per path, unit, user and command."""
    s = SEP
    parts = ["export LC_ALL=C"]
    if paths:
        parts.append(
            f"for p in {' '.join(shlex.quote(p) for p in paths)}; do "
            f"if [ -L \"$p\" ]; then printf 'P{s}%s{s}link{s}{s}{s}{s}{s}%s\\n' \"$p\" \"$(readlink \"$p\")\"; "
            f"elif [ -f \"$p\" ]; then printf 'P{s}%s{s}file{s}%s{s}%s\\n' \"$p\" "
            f"\"$(stat -c '%a{s}%U{s}%G' \"$p\")\" \"$(sha256sum < \"$p\" | cut -d' ' -f1){s}\"; "
            f"elif [ -d \"$p\" ]; then printf 'P{s}%s{s}dir{s}%s{s}{s}\\n' \"$p\" \"$(stat -c '%a{s}%U{s}%G' \"$p\")\"; "
            f"fi; done"
        )
    if units:
        quoted = " ".join(shlex.quote(u) for u in units)
        parts.append(
            f"systemctl show --no-pager -p Id,LoadState,ActiveState,UnitFileState {quoted} 2>/dev/null"
            " | sed 's/^/U=/'"
        )
    for user in users:
        q = shlex.quote(user)
        parts.append(
            f"if id {q} >/dev/null 2>&1; then printf 'W{s}%s{s}%s{s}%s{s}%s{s}%s\\n' {q} \"$(id -u {q})\" "
            f"\"$(id -g {q})\" \"$(id -Gn {q})\" \"$(getent passwd {q} | cut -d: -f6)\"; fi"
        )
    parts.append(f"printf 'G{s}%s\\n' \"$(cut -d: -f1 /etc/group | tr '\\n' ' ')\"")
    for command in commands:
        q = shlex.quote(command)
        parts.append(f"command -v {q} >/dev/null 2>&1 && printf 'C{s}%s\\n' {q}")
    for name, command in probes:
        # Output travels base64-encoded so any bytes and newlines survive the line protocol.
        parts.append(
            f"out=$( {{ {command} ; }} 2>/dev/null ); rc=$?; "
            f"printf 'R{s}%s{s}%s{s}%s\\n' {shlex.quote(name)} \"$rc\" \"$(printf '%s' \"$out\" | base64 -w0)\""
        )
    return "; ".join(parts) + "; true"


def parse_state(lines: list[str]) -> Snapshot:
    paths: dict[str, PathState] = {}
    units: dict[str, UnitState] = {}
    users: dict[str, UserState] = {}
    groups: frozenset[str] = frozenset()
    commands: set[str] = set()
    probes: dict[str, Probe] = {}
    unit_lines: list[str] = []

    for line in lines:
        if line.startswith("U="):
            unit_lines.append(line[2:])
            continue
        tag, *fields = line.split(SEP)
        if tag == "P" and len(fields) >= 7:
            path, kind, mode, user, group, digest, target = fields[:7]
            paths[path] = PathState(kind, mode, user, group, digest, target)
        elif tag == "W" and len(fields) == 5:
            name, uid, gid, group_names, home = fields
            users[name] = UserState(int(uid), int(gid), frozenset(group_names.split()), home)
        elif tag == "G" and fields:
            groups = frozenset(fields[0].split())
        elif tag == "C" and fields:
            commands.add(fields[0])
        elif tag == "R" and len(fields) == 3:
            name, status, encoded = fields
            probes[name] = Probe(int(status), base64.b64decode(encoded).decode(errors="replace"))
    # systemctl's blocks, parsed by the same code as the UnitStates fact.
    for unit_id, unit in parse_unit_blocks(unit_lines).items():
        units[unit_id] = UnitState(unit.load_state or "", unit.active_state or "", unit.unit_file_state or "")
    return Snapshot(paths, units, users, groups, frozenset(commands), probes)


class HostState(FactBase):
    """Mode, owner and sha256 of paths, unit states and users, in one remote command."""

    def command(self, paths=(), units=(), users=(), commands=(), probes=()):
        return state_command(tuple(paths), tuple(units), tuple(users), tuple(commands), tuple(probes))

    def process(self, output):
        return parse_state(list(output))
