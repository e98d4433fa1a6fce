"""Run a @deploy against a preset HostState snapshot and read back each operation's commands.

A real pyinfra State with one host whose facts are preset (the way pyinfra's own
operation tests fake facts); any other fact is an error, because our deploys must
read the one batched snapshot. A test lists only what its host has: everything
else the deploy declared reads as on a fresh host (absent paths and users, missing
commands, each named fact as its command failing), as the real HostState would.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from unittest.mock import patch

from pyinfra.api import Config, FileUploadCommand, State, StringCommand
from pyinfra.api import Inventory as PyinfraInventory
from pyinfra.api.state import StateStage
from pyinfra.context import ctx_host, ctx_state
from pyinfra.facts.server import LinuxDistribution, TmpDir

from deploys import ops
from facts.files import PathState
from facts.host_state import FactRequest, HostState, Snapshot
from facts.sections import Section
from facts.units import UnitState


def forget_host(name: str) -> None:
    """ops keeps each host's manifest and snapshot for the run: start every plan afresh."""
    ops._manifests.pop(name, None)
    ops._snapshots.pop(name, None)


def command_text(command) -> str:
    if isinstance(command, FileUploadCommand):
        # A local file is named; in-memory content (maybe a secret) never is.
        source = f"{command.src} " if isinstance(command.src, (str, Path)) else ""
        return f"upload {source}-> {command.dest}"
    if isinstance(command, StringCommand):
        return command.get_raw_value()
    return str(command)


def plan(run: Callable[[], None], host_name: str, snapshot: Snapshot | Callable[[], Snapshot],
         os_release: dict | None = None, prefix: str | tuple[str, ...] = "", hosts: list[str] | None = None,
         data: dict | None = None, limit: list[str] | None = None) -> list[tuple[str, list[str]]]:
    """(operation name, commands) for every operation `run()` adds on a host in `snapshot`.

    `snapshot` may be a callable, evaluated inside the host context (after secrets exist);
    `hosts`, `data` and `limit` shape the pyinfra inventory as `--data`/`--limit` would.
    """
    inventory = PyinfraInventory((hosts or [host_name], data or {}))
    state = State(inventory, Config())
    if limit is not None:
        state.limit_hosts = [inventory.get_host(name) for name in limit]
    state.set_stage(StateStage.Prepare)
    host = state.inventory.get_host(host_name)
    forget_host(host.name)
    current: dict[str, Snapshot] = {}

    def get_fact(cls, *args, **kwargs):
        if cls is HostState:
            if "snapshot" not in current:
                current["snapshot"] = as_declared(snapshot() if callable(snapshot) else snapshot, **kwargs)
            return current["snapshot"]
        if cls is TmpDir:
            return "/tmp"
        if cls is LinuxDistribution:
            return {"name": "Debian", "release_meta": os_release or {"ID": "debian"}}
        raise AssertionError(f"unexpected fact {cls.__name__}: the deploy must read the batched snapshot")

    prefixes = (prefix,) if isinstance(prefix, str) else prefix
    with patch.object(type(host), "get_fact", lambda self, cls, *a, **kw: get_fact(cls, *a, **kw)), \
            ctx_state.use(state), ctx_host.use(host):
        run()
        result = []
        for op_hash in state.get_op_order():
            name = ", ".join(state.get_op_meta(op_hash).names)
            for p in prefixes:
                name = name.removeprefix(p)
            generator = state.get_op_data_for_host(host, op_hash).command_generator
            result.append((name, [command_text(c) for c in generator()]))
    forget_host(host.name)
    return result


def as_declared(host: Snapshot, paths=(), units=(), users=(), commands=(),
                facts: tuple[FactRequest, ...] = ()) -> Snapshot:
    """The snapshot HostState would read with these arguments from a host in the state `host` lists."""
    fresh = Section(1, problem="the test's host does not have it")
    return Snapshot(
        paths={p: host.paths.get(p, PathState("absent")) for p in paths},
        units=dict(host.units),
        users={u: host.users.get(u) for u in users},
        groups=host.groups,
        commands={c: host.commands.get(c, False) for c in commands},
        values={r.key: host.values[r.key] if r.key in host.values else r.fact().process_section(fresh)
                for r in facts},
    )


def unit(name: str, active: str, enabled: str, load: str = "loaded") -> UnitState:
    """A unit as `systemctl show` describes it (the states the deploys read)."""
    return UnitState(id=name, names=(name,), load_state=load, active_state=active or None, sub_state=None,
                     unit_file_state=enabled or None, exec_main_status=None, fragment_path=None)


def changes(steps: list[tuple[str, list[str]]]) -> dict[str, list[str]]:
    return {name: commands for name, commands in steps if commands}
