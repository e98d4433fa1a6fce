"""Users (uid, gid, groups, home) and the groups that exist."""

from __future__ import annotations

import shlex
from collections.abc import Iterable
from dataclasses import dataclass

from typing_extensions import override

from facts._util import to_int
from facts.files import FIELD
from facts.sections import SectionFact


@dataclass(frozen=True)
class UserState:
    uid: int
    gid: int
    groups: frozenset[str]
    home: str


class Users(SectionFact[dict[str, UserState | None]]):
    """Every given user: its state, or None when it does not exist."""

    default = dict

    @override
    def command(self, users: Iterable[str]) -> str:
        f = FIELD
        parts = []
        for user in users:
            q = shlex.quote(user)
            parts.append(
                f"if id {q} >/dev/null 2>&1; then printf '%s{f}%s{f}%s{f}%s{f}%s\\n' {q} \"$(id -u {q})\" "
                f"\"$(id -g {q})\" \"$(id -Gn {q})\" \"$(getent passwd {q} | cut -d: -f6)\"; "
                f"else printf '%s{f}absent\\n' {q}; fi"
            )
        return "; ".join(parts) or "true"

    @override
    def process(self, output: list[str]) -> dict[str, UserState | None]:
        users: dict[str, UserState | None] = {}
        for line in output:
            fields = line.split(FIELD)
            if len(fields) == 2 and fields[1] == "absent":
                users[fields[0]] = None
            elif len(fields) == 5:
                uid, gid = to_int(fields[1]), to_int(fields[2])
                if uid is not None and gid is not None:
                    users[fields[0]] = UserState(uid, gid, frozenset(fields[3].split()), fields[4])
        return users


class Groups(SectionFact[frozenset[str]]):
    """The names of the groups in /etc/group."""

    default = frozenset

    @override
    def command(self) -> str:
        return "cut -d: -f1 /etc/group"

    @override
    def process(self, output: list[str]) -> frozenset[str]:
        return frozenset(name for line in output for name in line.split())
