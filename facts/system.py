"""Which commands are on PATH, and how many CPUs are online."""

from __future__ import annotations

import shlex
from collections.abc import Iterable
from dataclasses import dataclass

from typing_extensions import override

from facts.sections import Section, SectionFact


class CommandsOnPath(SectionFact[dict[str, bool]]):
    """Every given command: whether ``command -v`` finds it."""

    default = dict

    @override
    def command(self, commands: Iterable[str]) -> str:
        quoted = " ".join(shlex.quote(c) for c in commands)
        return f"for c in {quoted}; do if command -v \"$c\" >/dev/null 2>&1; then echo \"+$c\"; else echo \"-$c\"; fi; done"

    @override
    def process(self, output: list[str]) -> dict[str, bool]:
        return {line[1:]: line[0] == "+" for line in output if line[:1] in ("+", "-") and len(line) > 1}


@dataclass(frozen=True)
class CpuCount:
    """Online CPUs; ``count`` is None (with a reason) when getconf gave no number."""

    count: int | None
    reason: str | None = None


class OnlineCpus(SectionFact[CpuCount]):
    @override
    def command(self) -> str:
        return "getconf _NPROCESSORS_ONLN"

    @override
    def process_section(self, section: Section) -> CpuCount:
        if not section.ok:
            return CpuCount(None, section.problem or f"getconf exited {section.status}")
        try:
            count: int | None = int(section.text.strip())
        except ValueError:
            count = None
        if count is None or count < 1:
            return CpuCount(None, f"getconf printed {section.text[:40]!r}, not a CPU count")
        return CpuCount(count)


class Uptime(SectionFact[float | None]):
    """Seconds since boot (/proc/uptime): the host's clock for systemd's *TimestampMonotonic values
    (CLOCK_MONOTONIC, which stands still while the host is suspended; /proc/uptime does not), None
    when unreadable."""

    @override
    def command(self) -> str:
        return "cat /proc/uptime"

    @override
    def process_section(self, section: Section) -> float | None:
        words = section.text.split()
        try:
            return float(words[0]) if section.ok and words else None
        except ValueError:
            return None
