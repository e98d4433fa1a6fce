"""The state of several systemd units in one ``systemctl show`` call."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from pyinfra.api import QuoteString, StringCommand
from typing_extensions import override

from facts._util import JsonDataclass, to_int
from facts.sections import SectionFact

UNIT_PROPERTIES = (
    "Id",
    "Names",
    "LoadState",
    "ActiveState",
    "SubState",
    "UnitFileState",
    "ExecMainStatus",
    "FragmentPath",
    "InactiveExitTimestampMonotonic",
)
# `systemctl enable` has nothing to do: linked, no [Install] section, or made by a generator.
# ("indirect", "alias" and "enabled-runtime" are left out: `systemctl enable` still changes those.)
ENABLED_STATES = ("enabled", "static", "generated")
# Started or on its way: `systemctl start` has nothing to do.
RUNNING_STATES = ("active", "activating", "reloading")


@dataclass(frozen=True)
class UnitState(JsonDataclass):
    """Empty systemd values become None; ``exec_main_status`` only exists for services.

    The one place that decides what "enabled", "running" and "active" mean, for the
    operations and the checks alike.
    """

    id: str
    names: tuple[str, ...]
    load_state: str | None
    active_state: str | None
    sub_state: str | None
    unit_file_state: str | None
    exec_main_status: int | None
    fragment_path: str | None
    # CLOCK_MONOTONIC microseconds when the unit last left "inactive" (began starting); None if never.
    started_monotonic_us: int | None = None

    @property
    def exists(self) -> bool:
        return self.load_state not in (None, "not-found")

    @property
    def is_enabled(self) -> bool:
        """Starts at boot, or cannot be enabled: nothing for `systemctl enable` to do."""
        return self.unit_file_state in ENABLED_STATES

    @property
    def is_enabled_by_link(self) -> bool:
        """`systemctl enable` was run for it (UnitFileState enabled): not merely static or generated."""
        return self.unit_file_state == "enabled"

    @property
    def is_running(self) -> bool:
        """Started or starting: nothing for `systemctl start` to do."""
        return self.active_state in RUNNING_STATES

    @property
    def is_active(self) -> bool:
        """Up right now (ActiveState active), which a check or a choice of firewall asks for."""
        return self.active_state == "active"

    @property
    def has_failed(self) -> bool:
        return self.active_state == "failed"

    @property
    def is_starting(self) -> bool:
        """On its way up for the first time (not waiting to restart after a failure)."""
        return self.active_state == "activating" and self.sub_state != "auto-restart"

    def starting_for_s(self, now_monotonic_s: float | None) -> float | None:
        """Seconds since it began starting, given the host's monotonic clock; None when unknown."""
        if not self.started_monotonic_us or now_monotonic_s is None:
            return None
        return max(0.0, now_monotonic_s - self.started_monotonic_us / 1_000_000)


def parse_unit_blocks(lines: Iterable[str]) -> dict[str, UnitState]:
    """Parse ``systemctl show -p ... u1 u2``: one ``Key=value`` block per unit, blank-line separated.

    systemctl prints properties in its own order (service properties such as
    ExecMainStatus come before Id), so a unit is recognised by its block, not by
    the ``Id=`` line. Blocks without an ``Id`` are dropped. Keyed by ``Id``.
    """
    blocks: list[dict[str, str]] = [{}]
    for line in lines:
        key, separator, value = line.strip().partition("=")
        if not line.strip():
            if blocks[-1]:
                blocks.append({})
        elif separator and key in UNIT_PROPERTIES:
            blocks[-1][key] = value.strip()
    units = {}
    for block in blocks:
        unit_id = block.get("Id")
        if not unit_id:
            continue
        units[unit_id] = UnitState(
            id=unit_id,
            names=tuple(block.get("Names", "").split()) or (unit_id,),
            load_state=block.get("LoadState") or None,
            active_state=block.get("ActiveState") or None,
            sub_state=block.get("SubState") or None,
            unit_file_state=block.get("UnitFileState") or None,
            exec_main_status=to_int(block.get("ExecMainStatus")),
            fragment_path=block.get("FragmentPath") or None,
            started_monotonic_us=to_int(block.get("InactiveExitTimestampMonotonic")) or None,
        )
    return units


def unit_state(states: Mapping[str, UnitState], name: str) -> UnitState | None:
    """Look a unit up by its id or any of its alias names (``sshd.service`` -> ``ssh.service``)."""
    if name in states:
        return states[name]
    return next((state for state in states.values() if name in state.names), None)


class UnitStates(SectionFact[dict[str, UnitState]]):
    """
    Returns the load/active/sub/unit-file state of the given units, keyed by unit id.

    + units: unit names (``ollama.service``, ``litellm.service`` ...)
    + user_mode: query the calling user's manager (``systemctl --user``)

    .. code:: python

        {"ollama.service": UnitState(id="ollama.service", load_state="loaded", active_state="active", ...)}
    """

    @override
    def requires_command(self, *args, **kwargs) -> str:
        return "systemctl"

    default = dict

    @override
    def command(self, units: str | Iterable[str], user_mode: bool = False) -> StringCommand:
        names = [units] if isinstance(units, str) else list(units)
        return StringCommand(
            "systemctl --user" if user_mode else "systemctl",
            "show",
            "-p",
            ",".join(UNIT_PROPERTIES),
            "--",
            *(QuoteString(name) for name in names),
            # Without a running systemd (containers, chroots) systemctl fails; the
            # fact then reads as "no units" instead of failing the host.
            "2>&1",
            "||",
            "true",
        )

    @override
    def process(self, output: list[str]) -> dict[str, UnitState]:
        return parse_unit_blocks(output)
