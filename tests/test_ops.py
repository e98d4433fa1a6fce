"""Our batched-state operations: pyinfra semantics, secrets never shown, one snapshot per host."""

from __future__ import annotations

import hashlib
import json
import logging
import subprocess

import pytest
from pyinfra import host
from pyinfra.context import ctx_state

from deploys import ops
from facts.files import PathState
from facts.host_state import FactRequest, Snapshot, Undeclared, parse_state, state_command
from facts.sections import MARKER, Section, SectionFact, encode, framed, split_sections
from facts.system import OnlineCpus
from tests.deploy_harness import changes, plan, unit

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
    snap = Snapshot.of(paths={"/etc/a": PathState("file", "644", "root", "root", sha("hello\n"))})
    assert run(snap, declare_and(lambda: ops.file("/etc/a", "hello\n"))) == {}
    drift = Snapshot.of(paths={"/etc/a": PathState("file", "664", "root", "root", sha("hello\n"))})
    [commands] = run(drift, declare_and(lambda: ops.file("/etc/a", "hello\n"))).values()
    assert commands == ["chown root:root /etc/a && chmod 644 /etc/a"]


def test_new_file_is_uploaded_into_a_0600_temp_file_and_content_is_not_in_commands():
    [commands] = run(Snapshot.of(), declare_and(lambda: ops.file("/etc/s", SECRET, mode="600", secret=True))).values()
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

    snap = Snapshot.of(paths={"/etc/s": PathState("file", "600", "root", "root", sha("old-secret"))})
    with caplog.at_level(logging.DEBUG):
        found = run(snap, body)
    assert found, "a changed secret must still be written"
    assert SECRET not in caplog.text and "old-secret" not in caplog.text


def test_directory_with_mode_none_is_created_but_never_remoded():
    assert run(Snapshot.of(paths={"/etc/d": PathState("dir", "700", "u", "u")}),
               declare_and(lambda: ops.directory("/etc/d", mode=None, user="u", group="u"))) == {}
    [commands] = run(Snapshot.of(), declare_and(lambda: ops.directory("/etc/d", mode=None, user="u",
                                                                   group="u"))).values()
    assert commands == ["install -d -m 755 -o u -g u /etc/d"]


def test_link_switch_is_atomic():
    snap = Snapshot.of(paths={"/etc/l": PathState("link", target="/opt/v1")})
    assert run(snap, declare_and(lambda: ops.link("/etc/l", "/opt/v1"))) == {}
    [commands] = run(snap, declare_and(lambda: ops.link("/etc/l", "/opt/v2"))).values()
    assert commands == ["ln -sfn /opt/v2 /etc/l.new && mv -T /etc/l.new /etc/l"]


def test_unit_restart_only_when_asked_and_running():
    active = Snapshot.of(units=[unit("x.service", "active", "enabled")])
    assert run(active, declare_and(lambda: ops.unit("x.service"))) == {}
    [commands] = run(active, declare_and(lambda: ops.unit("x.service", restart=True))).values()
    assert commands == ["systemctl restart x.service"]
    stopped = Snapshot.of(units=[unit("x.service", "inactive", "disabled")])
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

    plan(body, "h", Snapshot.of())
    assert len(calls) == 1


class Shell(SectionFact[Section]):
    """Any script, its section as it arrived: what the framing must carry intact."""

    def command(self, script: str) -> str:
        return script

    def process_section(self, section: Section) -> Section:
        return section


def run_state(command: str) -> Snapshot:
    return parse_state(subprocess.run(["sh", "-c", command], capture_output=True, text=True, check=True)
                       .stdout.splitlines())


def test_state_command_round_trip(tmp_path):
    (tmp_path / "f").write_text("hi\n")
    (tmp_path / "l").symlink_to("f")
    (tmp_path / "d").mkdir()
    probe = FactRequest.of(Shell, script="printf 'a\\nb'; exit 3")
    command = state_command(paths=(str(tmp_path / "f"), str(tmp_path / "l"), str(tmp_path / "d"),
                                   str(tmp_path / "no")),
                            users=("root", "no-such-user-here"), commands=("sh", "no-such-command"), facts=(probe,))
    snap = run_state(command)
    assert snap.path(str(tmp_path / "f")).sha256 == sha("hi\n")
    assert snap.path(str(tmp_path / "f")).kind == "file"
    assert snap.path(str(tmp_path / "l")) == PathState("link", target="f")
    assert snap.path(str(tmp_path / "d")).kind == "dir"
    assert snap.path(str(tmp_path / "no")).kind == "absent"
    assert snap.user("root").uid == 0 and "root" in snap.groups
    assert snap.user("no-such-user-here") is None
    assert (snap.has_command("sh"), snap.has_command("no-such-command")) == (True, False)
    assert snap.value(probe) == Section(3, ("a", "b"))


def test_reading_what_no_component_declared_raises(tmp_path):
    """An undeclared path would read as absent, and its file be rewritten on every run."""
    snap = run_state(state_command(paths=(str(tmp_path / "declared"),), users=("root",), commands=("sh",)))
    assert snap.path(str(tmp_path / "declared")).kind == "absent"
    with pytest.raises(Undeclared, match="other"):
        snap.path(str(tmp_path / "other"))
    with pytest.raises(Undeclared):
        snap.user("nobody-declared")
    with pytest.raises(Undeclared):
        snap.has_command("ls")
    with pytest.raises(Undeclared):
        snap.get(OnlineCpus)


def test_an_operation_on_an_undeclared_path_raises():
    with pytest.raises(Undeclared, match="/etc/undeclared"):
        run(Snapshot.of(), declare_and(lambda: ops.file("/etc/undeclared", "x")))


HOSTILE = [
    ("newlines", "printf '\\n\\nx\\n\\n'", ("", "", "x", "")),
    ("the marker itself", f"echo '{MARKER} paths AAAA'; echo '{MARKER} x'", (f"{MARKER} paths AAAA", f"{MARKER} x")),
    ("no trailing newline", "printf 'last'", ("last",)),
]


@pytest.mark.parametrize(("what", "script", "lines"), HOSTILE, ids=[h[0] for h in HOSTILE])
def test_framing_survives_hostile_output(what, script, lines, tmp_path):
    """Output that looks like a section, or has odd newlines, stays inside its own section."""
    before, after = FactRequest.of(Shell, script="echo before"), FactRequest.of(Shell, script=script)
    snap = run_state(state_command(paths=(str(tmp_path),), facts=(before, after)))
    assert snap.value(after) == Section(0, lines)
    assert snap.value(before) == Section(0, ("before",))
    assert snap.path(str(tmp_path)).kind == "dir"


def test_framing_carries_binary_output_and_an_exit_from_the_command_byte_for_byte():
    script = "printf '\\000\\377\\r\\n##fact k x\\n'; exit 7"
    out = subprocess.run(["sh", "-c", framed("k", script)], capture_output=True, check=True).stdout
    assert out.count(b"\n") == 1  # one line, whatever the output
    [line] = out.decode().splitlines()
    assert line == encode("k", 7, b"\x00\xff\r\n##fact k x\n")


def test_a_damaged_or_missing_section_is_unknown_with_a_reason():
    good = encode("facts.system.OnlineCpus", 0, b"8\n")
    assert parse_state([good]).get(OnlineCpus).count == 8
    cut = good[:-3]  # a connection dropped mid-line
    sections = split_sections(["banner line", cut])
    assert sections["facts.system.OnlineCpus"].status is None and "base64" in sections["facts.system.OnlineCpus"].problem
    unknown = parse_state([cut]).get(OnlineCpus)
    assert unknown.count is None and "base64" in unknown.reason


def test_a_facts_process_on_garbage_returns_unknown_with_a_reason():
    garbage = OnlineCpus().process_section(Section(0, ("not a number", "\x00")))
    assert garbage.count is None and "not a number" in garbage.reason
    failed = OnlineCpus().process_section(Section(2, ()))
    assert failed.count is None and "exited 2" in failed.reason


def test_units_are_parsed_whatever_the_property_order():
    """systemctl prints properties in its own order; blocks are separated by blank lines."""
    output = (b"LoadState=loaded\nId=ollama.service\nActiveState=active\nUnitFileState=enabled\n\n"
              b"Id=gone.service\nLoadState=not-found\nActiveState=inactive\nUnitFileState=\n")
    snap = parse_state([encode("units", 0, output)])
    ollama, gone = snap.unit("ollama.service"), snap.unit("gone.service")
    assert (ollama.is_enabled, ollama.is_running, ollama.exists) == (True, True, True)
    assert (gone.is_enabled, gone.is_running, gone.exists, gone.unit_file_state) == (False, False, False, None)


def test_users_and_paths_lines_that_do_not_parse_are_left_out():
    snap = parse_state([encode("users", 0, b"root\x1fx\x1f0\x1froot\x1f/root\nu\x1fabsent\n"),
                        encode("paths", 0, b"/a\x1fweird\n/b\x1fabsent\n")])
    assert snap.users == {"u": None}
    assert snap.paths == {"/b": PathState("absent")}


def test_state_dump_records_the_one_state_command_bench_measures(tmp_path, monkeypatch):
    dump = tmp_path / "state-commands.json"
    monkeypatch.setenv("LLM_ROUTER_STATE_DUMP", str(dump))
    probe = FactRequest.of(Shell, script="echo hi")

    def body():
        ops.declare(paths=[str(tmp_path)], facts=(probe,))
        ops.snapshot()

    plan(body, "h", Snapshot.of())
    command = json.loads(dump.read_text())["h"]
    snap = run_state(command)
    assert snap.path(str(tmp_path)).kind == "dir" and snap.value(probe) == Section(0, ("hi",))
