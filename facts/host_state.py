"""The state of everything a deploy manages on one host, read by ONE remote command.

Stock pyinfra runs one command per file check (and one sha1sum per file), each
paying an SSH round trip. `HostState` instead runs the command of every fact the
components declared, each in its own section (facts/sections.py), and hands each
section to that fact's own parser. pyinfra 3 keeps no fact cache (every
`host.get_fact` runs its command again), so deploys/ops.py keeps the value.

Reading something no component declared raises: it would otherwise read as absent
and, for a file, be rewritten on every run.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from pyinfra.api import FactBase, StringCommand
from typing_extensions import override

from facts.files import Paths, PathState
from facts.sections import Section, SectionFact, framed, split_sections
from facts.system import CommandsOnPath
from facts.units import UnitState, UnitStates, unit_state
from facts.users import Groups, Users, UserState

T = TypeVar("T")

# The sections of the resources every component lists (the named facts are keyed by FactRequest.key).
PATHS, UNITS, USERS, GROUPS, COMMANDS = "paths", "units", "users", "groups", "commands"


class Undeclared(LookupError):
    """A component read host state it did not declare (add it to that component's `declare`)."""


@dataclass(frozen=True)
class FactRequest:
    """One fact with its arguments, as a component declares it and reads it back."""

    fact: type[SectionFact]
    arguments: tuple[tuple[str, Any], ...] = ()

    @classmethod
    def of(cls, fact: type[SectionFact], **arguments: Any) -> FactRequest:
        return cls(fact, tuple(sorted(arguments.items())))

    @property
    def key(self) -> str:
        """The fact's name, plus a digest of its arguments when it has any (same arguments, same key)."""
        if not self.arguments:
            return self.fact.name
        return f"{self.fact.name}:{hashlib.sha256(repr(self.arguments).encode()).hexdigest()[:12]}"

    def command(self) -> str:
        command = self.fact().command(**dict(self.arguments))
        return command.get_raw_value() if isinstance(command, StringCommand) else command


@dataclass
class Snapshot:
    """The parsed state; `get` parses a named fact's section on first use."""

    paths: dict[str, PathState] = field(default_factory=dict)
    units: dict[str, UnitState] = field(default_factory=dict)
    users: dict[str, UserState | None] = field(default_factory=dict)
    groups: frozenset[str] = frozenset()
    commands: dict[str, bool] = field(default_factory=dict)
    sections: dict[str, Section] = field(default_factory=dict)
    values: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, paths: Mapping[str, PathState] = {}, units: Iterable[UnitState] = (),
           users: Mapping[str, UserState | None] = {}, groups: Iterable[str] = (),
           commands: Mapping[str, bool] = {}, facts: Mapping[FactRequest, Any] = {}) -> Snapshot:
        """A snapshot from values (tests, or a caller that already knows them)."""
        return cls(dict(paths), {u.id: u for u in units}, dict(users), frozenset(groups), dict(commands),
                   values={request.key: value for request, value in facts.items()})

    def path(self, path: str) -> PathState:
        if path not in self.paths:
            raise Undeclared(f"path {path} was not declared: add it to the declare() of the component that reads it")
        return self.paths[path]

    def unit(self, name: str) -> UnitState | None:
        """The unit by id or alias; None when systemctl said nothing about it."""
        return unit_state(self.units, name)

    def user(self, name: str) -> UserState | None:
        if name not in self.users:
            raise Undeclared(f"user {name} was not declared")
        return self.users[name]

    def has_command(self, name: str) -> bool:
        if name not in self.commands:
            raise Undeclared(f"command {name} was not declared")
        return self.commands[name]

    def get(self, fact: type[SectionFact[T]], **arguments: Any) -> T:
        """The parsed value of a declared fact: `state.get(TailscaleServeStatus)`."""
        return self.value(FactRequest.of(fact, **arguments))

    def value(self, request: FactRequest) -> Any:
        """The parsed value of a declared fact request (as the component declared it)."""
        key = request.key
        if key not in self.values:
            if key not in self.sections:
                raise Undeclared(f"fact {request.fact.name}{dict(request.arguments)} was not declared "
                                 "(or is missing from the output)")
            self.values[key] = request.fact().process_section(self.sections[key])
        return self.values[key]


def state_command(paths: Iterable[str] = (), units: Iterable[str] = (), users: Iterable[str] = (),
                  commands: Iterable[str] = (), facts: Iterable[FactRequest] = ()) -> str:
    """A POSIX sh script printing one section per resource kind and per named fact."""
    parts = ["export LC_ALL=C"]
    collections = ((PATHS, Paths, "paths", tuple(paths)), (UNITS, UnitStates, "units", tuple(units)),
                   (USERS, Users, "users", tuple(users)), (COMMANDS, CommandsOnPath, "commands", tuple(commands)))
    for key, fact, argument, names in collections:
        if names:
            parts.append(framed(key, FactRequest.of(fact, **{argument: names}).command()))
    parts.append(framed(GROUPS, Groups().command()))
    parts += [framed(request.key, request.command()) for request in facts]
    return "; ".join(parts)


def parse_state(lines: list[str]) -> Snapshot:
    sections = split_sections(lines)

    def parsed(key: str, fact: type[SectionFact[T]]) -> T:
        return fact().process_section(sections.pop(key)) if key in sections else fact.default()

    return Snapshot(paths=parsed(PATHS, Paths), units=parsed(UNITS, UnitStates), users=parsed(USERS, Users),
                    groups=parsed(GROUPS, Groups), commands=parsed(COMMANDS, CommandsOnPath), sections=sections)


class HostState(FactBase[Snapshot]):
    """Paths, units, users, groups, commands on PATH and the declared named facts, in one remote command."""

    @override
    def command(self, paths=(), units=(), users=(), commands=(), facts=()) -> str:
        return state_command(paths, units, users, commands, facts)

    @override
    def process(self, output: list[str]) -> Snapshot:
        return parse_state(output)
