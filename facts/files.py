"""Files: kind, mode, owner and sha256 of declared paths, and small yes/no questions about a file."""

from __future__ import annotations

import shlex
from collections.abc import Iterable
from dataclasses import dataclass

from typing_extensions import override

from facts.sections import ExitStatusFact, Section, SectionFact

# Between the fields of one path's line: a character no path we manage contains.
FIELD = "\x1f"


@dataclass(frozen=True)
class PathState:
    kind: str  # "file", "dir", "link" or "absent"
    mode: str = ""  # octal, e.g. "644"
    user: str = ""
    group: str = ""
    sha256: str = ""  # files only
    target: str = ""  # links only


class Paths(SectionFact[dict[str, PathState]]):
    """One line per given path, absent ones included: ``path FIELD kind FIELD mode ...``.

    Every given path is in the result, so a path missing from it was never asked for.
    """

    default = dict

    @override
    def command(self, paths: Iterable[str]) -> str:
        paths = tuple(paths)
        for path in paths:
            if FIELD in path or "\n" in path:
                raise ValueError(f"path {path!r} contains a newline or the field separator")
        f = FIELD
        stat = f"\"$(stat -c '%a{f}%U{f}%G' \"$p\")\""
        return (
            f"for p in {' '.join(shlex.quote(p) for p in paths)}; do "
            f"if [ -L \"$p\" ]; then printf '%s{f}link{f}{f}{f}{f}{f}%s\\n' \"$p\" \"$(readlink \"$p\")\"; "
            f"elif [ -f \"$p\" ]; then printf '%s{f}file{f}%s{f}%s{f}\\n' \"$p\" {stat} "
            f"\"$(sha256sum < \"$p\" | cut -d' ' -f1)\"; "
            f"elif [ -d \"$p\" ]; then printf '%s{f}dir{f}%s{f}{f}\\n' \"$p\" {stat}; "
            f"else printf '%s{f}absent\\n' \"$p\"; fi; done"
        )

    @override
    def process(self, output: list[str]) -> dict[str, PathState]:
        paths: dict[str, PathState] = {}
        for line in output:
            fields = line.split(FIELD)
            if len(fields) == 2 and fields[1] == "absent":
                paths[fields[0]] = PathState("absent")
            elif len(fields) == 7 and fields[1] in ("file", "dir", "link"):
                paths[fields[0]] = PathState(*fields[1:7])
        return paths


class FileHasLine(ExitStatusFact):
    """Whether the file has exactly this line (False when it does not exist or cannot be read)."""

    @override
    def command(self, path: str, line: str) -> str:
        return f"grep -qxF {shlex.quote(line)} {shlex.quote(path)}"


class FirstLineHas(ExitStatusFact):
    """Whether the file's first line contains this text (our marker in a config file we write)."""

    @override
    def command(self, path: str, text: str) -> str:
        return f"head -n 1 {shlex.quote(path)} 2>/dev/null | grep -qF {shlex.quote(text)}"


class JsonKeyEquals(ExitStatusFact):
    """Whether a JSON file's top-level ``key`` is this string (False when absent or not JSON)."""

    @override
    def command(self, path: str, key: str, value: str) -> str:
        check = "import json,sys; sys.exit(0 if json.load(open(sys.argv[1])).get(sys.argv[2]) == sys.argv[3] else 1)"
        return f"python3 -c {shlex.quote(check)} {shlex.quote(path)} {shlex.quote(key)} {shlex.quote(value)}"


class DirectoryEntries(SectionFact[tuple[str, ...]]):
    """The names in a directory, newest first (none when it does not exist)."""

    default = tuple

    @override
    def command(self, path: str) -> str:
        return f"ls -1t {shlex.quote(path)} 2>/dev/null || true"

    @override
    def process_section(self, section: Section) -> tuple[str, ...]:
        return tuple(name for line in section.lines for name in line.split()) if section.ok else ()
