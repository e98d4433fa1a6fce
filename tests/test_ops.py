"""Our batched-state operations: pyinfra semantics, secrets never shown, one snapshot per host."""

from __future__ import annotations

import hashlib
import logging

from pyinfra import host
from pyinfra.context import ctx_state

from deploys import ops
from deploys.state import PathState, Probe, Snapshot, UnitState, parse_state, state_command
from tests.deploy_harness import changes, plan

SECRET = "sk-this-must-never-be-printed-0123456789"


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def run(snapshot: Snapshot, body) -> dict[str, list[str]]:
    return changes(plan(body, "h", snapshot))


def declare_and(body):
    def run_body():
        ops.declare(paths=["/etc/a", "/etc/d", "/etc/l", "/etc/s"], units=["x.service"])
        body()
    return run_body


def test_up_to_date_file_is_a_noop_and_mode_drift_is_only_a_chmod():
    snap = Snapshot(paths={"/etc/a": PathState("file", "644", "root", "root", sha("hello\n"))})
    assert run(snap, declare_and(lambda: ops.file("/etc/a", "hello\n"))) == {}
    drift = Snapshot(paths={"/etc/a": PathState("file", "664", "root", "root", sha("hello\n"))})
    [commands] = run(drift, declare_and(lambda: ops.file("/etc/a", "hello\n"))).values()
    assert commands == ["chown root:root /etc/a && chmod 644 /etc/a"]


def test_new_file_is_uploaded_into_a_0600_temp_file_and_content_is_not_in_commands():
    [commands] = run(Snapshot(), declare_and(lambda: ops.file("/etc/s", SECRET, mode="600", secret=True))).values()
    assert commands[0] == "rm -f /etc/s.llm-router-new && install -m 600 /dev/null /etc/s.llm-router-new"
    assert commands[1].startswith("upload ") and commands[1].endswith("-> /etc/s.llm-router-new")
    assert commands[2] == ("chown root:root /etc/s.llm-router-new && chmod 600 /etc/s.llm-router-new && "
                           "mv -f /etc/s.llm-router-new /etc/s")
    assert all(SECRET not in c for c in commands)


def test_secret_diff_is_never_printed(caplog):
    def body():
        ops.declare(paths=["/etc/s"])
        state = ctx_state.get()
        state.config.DIFF = True
        ops.file("/etc/s", SECRET, mode="600", secret=True)

    snap = Snapshot(paths={"/etc/s": PathState("file", "600", "root", "root", sha("old-secret"))})
    with caplog.at_level(logging.DEBUG):
        found = run(snap, body)
    assert found, "a changed secret must still be written"
    assert SECRET not in caplog.text and "old-secret" not in caplog.text


def test_directory_with_mode_none_is_created_but_never_remoded():
    assert run(Snapshot(paths={"/etc/d": PathState("dir", "700", "u", "u")}),
               declare_and(lambda: ops.directory("/etc/d", mode=None, user="u", group="u"))) == {}
    [commands] = run(Snapshot(), declare_and(lambda: ops.directory("/etc/d", mode=None, user="u",
                                                                   group="u"))).values()
    assert commands == ["install -d -m 755 -o u -g u /etc/d"]


def test_link_switch_is_atomic():
    snap = Snapshot(paths={"/etc/l": PathState("link", target="/opt/v1")})
    assert run(snap, declare_and(lambda: ops.link("/etc/l", "/opt/v1"))) == {}
    [commands] = run(snap, declare_and(lambda: ops.link("/etc/l", "/opt/v2"))).values()
    assert commands == ["ln -sfn /opt/v2 /etc/l.new && mv -T /etc/l.new /etc/l"]


def test_unit_restart_only_when_asked_and_running():
    active = Snapshot(units={"x.service": UnitState("loaded", "active", "enabled")})
    assert run(active, declare_and(lambda: ops.unit("x.service"))) == {}
    [commands] = run(active, declare_and(lambda: ops.unit("x.service", restart=True))).values()
    assert commands == ["systemctl restart x.service"]
    stopped = Snapshot(units={"x.service": UnitState("loaded", "inactive", "disabled")})
    [commands] = run(stopped, declare_and(lambda: ops.unit("x.service", restart=True))).values()
    assert commands == ["systemctl enable x.service && systemctl start x.service"]


def test_one_snapshot_serves_every_operation():
    calls = []

    def body():
        ops.declare(paths=["/etc/a", "/etc/d"])
        original = host.get_fact
        host.get_fact = lambda cls, **kw: calls.append(kw) or original(cls, **kw)
        ops.file("/etc/a", "x")
        ops.directory("/etc/d")

    plan(body, "h", Snapshot())
    assert len(calls) == 1


def test_state_command_round_trip(tmp_path):
    import subprocess

    (tmp_path / "f").write_text("hi\n")
    (tmp_path / "l").symlink_to("f")
    (tmp_path / "d").mkdir()
    command = state_command((str(tmp_path / "f"), str(tmp_path / "l"), str(tmp_path / "d"), str(tmp_path / "no")),
                            (), ("root",), ("sh", "no-such-command"), (("probe", "printf 'a\\nb'; exit 3"),))
    out = subprocess.run(["sh", "-c", command], capture_output=True, text=True, check=True).stdout
    snap = parse_state(out.splitlines())
    assert snap.path(str(tmp_path / "f")).sha256 == sha("hi\n")
    assert snap.path(str(tmp_path / "l")) == PathState("link", target="f")
    assert snap.path(str(tmp_path / "d")).kind == "dir"
    assert snap.path(str(tmp_path / "no")).kind == "absent"
    assert snap.users["root"].uid == 0 and "root" in snap.groups
    assert snap.commands == frozenset({"sh"})
    assert snap.probes["probe"] == Probe(3, "a\nb")


def test_unit_blocks_are_parsed_whatever_the_property_order():
    """systemctl prints properties in its own order; blocks are separated by blank lines."""
    lines = ["U=LoadState=loaded", "U=Id=ollama.service", "U=ActiveState=active", "U=UnitFileState=enabled", "U=",
             "U=Id=gone.service", "U=LoadState=not-found", "U=ActiveState=inactive", "U=UnitFileState="]
    units = parse_state(lines).units
    assert units["ollama.service"] == UnitState("loaded", "active", "enabled")
    assert units["gone.service"] == UnitState("not-found", "inactive", "")
