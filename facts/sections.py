"""One framing for a remote command that runs several probes: one line per section.

Each probe's stdout, then a newline and its exit status, travels base64-encoded on
one line ``##fact KEY BASE64``. Base64 has no newline and no space, so no output
(binary, newlines, this very marker text) can end a section early or start another;
a line that is not a marker (a login banner) is ignored.
"""

from __future__ import annotations

import base64
import binascii
import re
import shlex
from dataclasses import dataclass
from typing import TypeVar

from pyinfra.api import FactBase

MARKER = "##fact"
_KEY = re.compile(r"[A-Za-z0-9_.:+=@-]+")
T = TypeVar("T")


@dataclass(frozen=True)
class Section:
    """One probe's exit status and output lines; ``status`` is None when the section is missing or
    damaged, and ``problem`` says why."""

    status: int | None
    lines: tuple[str, ...] = ()
    problem: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == 0

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


def framed(key: str, command: str) -> str:
    """POSIX sh printing the marker line of ``command``'s section (its stderr is dropped).

    The command runs in its own subshell, so an ``exit`` in it ends only the command."""
    if not _KEY.fullmatch(key):
        raise ValueError(f"section key {key!r} must match {_KEY.pattern}")
    return (f"printf '{MARKER} %s ' {shlex.quote(key)}; "
            f"{{ ( {command} ) 2>/dev/null; printf '\\n%s' \"$?\"; }} | base64 -w0; echo")


def encode(key: str, status: int, output: bytes) -> str:
    """The marker line ``framed`` prints for this output (for tests and fixtures)."""
    payload = output + b"\n" + str(status).encode()
    return f"{MARKER} {key} {base64.b64encode(payload).decode()}"


def split_sections(lines: list[str]) -> dict[str, Section]:
    """Every section in the output, by key (a repeated key: the last one wins)."""
    sections: dict[str, Section] = {}
    for line in lines:
        words = line.strip().split(" ")
        if len(words) != 3 or words[0] != MARKER:
            continue
        key, encoded = words[1], words[2]
        try:
            payload = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            sections[key] = Section(None, problem="its output is not valid base64 (cut short?)")
            continue
        output, separator, status = payload.rpartition(b"\n")
        if not separator or not status.isdigit():
            sections[key] = Section(None, problem="its exit status is missing")
            continue
        sections[key] = Section(int(status), tuple(output.decode(errors="replace").splitlines()))
    return sections


def missing(key: str) -> Section:
    return Section(None, problem=f"no section {key} in the output")


def section(lines: list[str], key: str) -> Section:
    """The section ``key`` of the output (a ``missing`` one when it is not there)."""
    return split_sections(lines).get(key) or missing(key)


class SectionFact(FactBase[T]):
    """A fact whose parser may also read its exit status, so HostState can run it inside its one
    command. Run alone by pyinfra (which only processes a command that succeeded), status is 0.
    Subclasses override ``process_section`` (status-aware) or ``process`` (output only)."""

    def process_section(self, section: Section) -> T:
        return self.process(list(section.lines))

    def process(self, output: list[str]) -> T:
        return self.process_section(Section(0, tuple(output)))


class ExitStatusFact(SectionFact[bool]):
    """A yes/no question its command answers by its exit status (no section: no)."""

    def process_section(self, section: Section) -> bool:
        return section.ok
