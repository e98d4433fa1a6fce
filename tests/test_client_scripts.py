"""claude-router / claude-router-key as the client hosts run them: subprocesses on throwaway git repos.

Every run gets its own HOME, config file (via $CLAUDE_ROUTER_CONFIG) and key files, and no ANTHROPIC_*
variable from the outer environment, so the key helper must decide from the settings files alone.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hostfiles import claude_router

REPO_ROOT = Path(__file__).resolve().parent.parent
# Run by its file, under both names it has on the hosts (the program looks at the name it runs as).
SCRIPT = Path(claude_router.__file__)
COMMANDS_DIR = REPO_ROOT / "hostfiles" / "claude_commands"
# The target hosts run Debian's /usr/bin/python3 (stdlib only); use it when this machine has one.
PYTHON = "/usr/bin/python3" if Path("/usr/bin/python3").exists() else sys.executable
ROUTER_URL = "http://127.0.0.1:4000"
ROUTER_KEY = "sk-router-test-key"
ANTHROPIC_KEY = "sk-ant-user-key"
HELPER = "/usr/local/bin/claude-router-key"


@dataclass
class Sandbox:
    """A HOME, a config, a bin dir with both program names, and a git repo."""

    base: Path
    home: Path
    bin: Path
    config_path: Path
    repo: Path

    def write_config(self, **overrides: Any) -> None:
        config: dict[str, Any] = {
            "router_url": ROUTER_URL,
            "default_model": "claude-sonnet-4-6",
            "models": ["claude-sonnet-4-6", "qwen-coder", "qwen-small"],
            "small_fast_model": "qwen-small",
            "key_file": "~/.config/claude-router/key",
            "anthropic_key_file": None,
        }
        config.update(overrides)
        self.config_path.write_text(json.dumps(config))

    def env(self, **extra: str) -> dict[str, str]:
        env = {
            "PATH": f"{self.bin}:/usr/local/bin:/usr/bin:/bin",
            "HOME": str(self.home),
            "CLAUDE_ROUTER_CONFIG": str(self.config_path),
            "GIT_CONFIG_NOSYSTEM": "1",
            "LANG": "C.UTF-8",
        }
        env.update(extra)
        return env

    def run(
        self, *args: str, cwd: Path | None = None, program: str = "claude-router", **env: str
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [PYTHON, str(self.bin / program), *args],
            cwd=cwd or self.repo,
            check=False,
            env=self.env(**env),
            capture_output=True,
            text=True,
            timeout=60,
        )

    def key(self, cwd: Path | None = None, **env: str) -> subprocess.CompletedProcess[str]:
        return self.run(cwd=cwd, program="claude-router-key", **env)

    @property
    def local_settings(self) -> Path:
        return self.repo / ".claude" / "settings.local.json"

    def local_json(self) -> dict[str, Any]:
        return json.loads(self.local_settings.read_text())


def make_sandbox(base: Path) -> Sandbox:
    home, bin_dir, repo = base / "home", base / "bin", base / "repo"
    for directory in (home, bin_dir, repo):
        directory.mkdir(parents=True)
    for name in ("claude-router", "claude-router-key"):
        (bin_dir / name).symlink_to(SCRIPT)
    subprocess.run(
        ["git", "init", "-q", str(repo)], check=True, env={"GIT_CONFIG_NOSYSTEM": "1", "HOME": str(home)}
    )
    key_file = home / ".config" / "claude-router" / "key"
    key_file.parent.mkdir(parents=True)
    key_file.write_text(ROUTER_KEY + "\n")
    sandbox = Sandbox(base=base, home=home, bin=bin_dir, config_path=base / "config.json", repo=repo)
    sandbox.write_config()
    return sandbox


@pytest.fixture
def sandbox(tmp_path: Path) -> Sandbox:
    return make_sandbox(tmp_path)


def assert_clean_error(result: subprocess.CompletedProcess[str], *fragments: str) -> None:
    assert result.returncode == 2, result
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


# ------------------------------------------------------------------------------------ use-ollama


def test_use_ollama_merges_router_settings_and_keeps_user_keys(sandbox: Sandbox) -> None:
    sandbox.local_settings.parent.mkdir()
    sandbox.local_settings.write_text(
        json.dumps(
            {
                "permissions": {"allow": ["Bash(ls:*)"]},
                "env": {"FOO": "bar", "ANTHROPIC_BASE_URL": "http://mine"},
            }
        )
    )
    sandbox.local_settings.chmod(0o640)

    result = sandbox.run("use-ollama", "--model", "qwen-coder")

    assert result.returncode == 0, result.stderr
    written = sandbox.local_json()
    assert written["permissions"] == {"allow": ["Bash(ls:*)"]}
    assert written["env"]["FOO"] == "bar"
    assert written["env"]["ANTHROPIC_BASE_URL"] == ROUTER_URL
    assert written["env"]["ANTHROPIC_MODEL"] == "qwen-coder"
    assert written["model"] == "qwen-coder"
    assert written["env"]["ANTHROPIC_DEFAULT_SONNET_MODEL"] == "qwen-coder"
    assert written["env"]["ANTHROPIC_DEFAULT_OPUS_MODEL"] == "qwen-coder"
    assert written["env"]["ANTHROPIC_DEFAULT_HAIKU_MODEL"] == "qwen-small"
    assert written["env"]["CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC"] == "1"
    assert written["apiKeyHelper"] == HELPER
    assert stat.S_IMODE(sandbox.local_settings.stat().st_mode) == 0o640
    exclude = (sandbox.repo / ".git" / "info" / "exclude").read_text().splitlines()
    assert "/.claude/settings.local.json" in exclude and "/.claude/claude-router.json" in exclude
    assert not [p for p in sandbox.local_settings.parent.iterdir() if p.name.endswith(".tmp")]


def test_use_ollama_defaults_to_config_model_and_honours_config_switches(sandbox: Sandbox) -> None:
    sandbox.write_config(
        default_model="qwen-coder",
        small_fast_model=None,
        disable_nonessential_traffic=False,
        helper_command=None,
    )
    assert sandbox.run("use-ollama").returncode == 0
    env = sandbox.local_json()["env"]
    assert env["ANTHROPIC_MODEL"] == "qwen-coder"
    assert env["ANTHROPIC_DEFAULT_HAIKU_MODEL"] == "qwen-coder"
    assert "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC" not in env
    assert "apiKeyHelper" not in sandbox.local_json()


def test_use_ollama_accepts_a_bare_alias_from_the_slash_command(sandbox: Sandbox) -> None:
    assert sandbox.run("use-ollama", "qwen-small").returncode == 0
    assert sandbox.local_json()["env"]["ANTHROPIC_MODEL"] == "qwen-small"


def test_unknown_model_alias_is_refused(sandbox: Sandbox) -> None:
    result = sandbox.run("use-ollama", "--model", "gpt-17")
    assert_clean_error(result, "gpt-17", "claude-sonnet-4-6")
    assert not (sandbox.repo / ".claude").exists()


def test_missing_config_is_a_clean_error(sandbox: Sandbox) -> None:
    sandbox.config_path.unlink()
    assert_clean_error(sandbox.run("use-ollama"), str(sandbox.config_path), "not found")


# ----------------------------------------------------------------------------- use-claude / default


def test_use_claude_restores_the_previous_file_byte_for_byte(sandbox: Sandbox) -> None:
    original = b'{\n    "env": {"ANTHROPIC_BASE_URL": "http://mine",   "X": 1},\n    "model": "opus"\n}'
    sandbox.local_settings.parent.mkdir()
    sandbox.local_settings.write_bytes(original)
    sandbox.local_settings.chmod(0o600)

    assert sandbox.run("use-ollama").returncode == 0
    assert sandbox.local_json()["model"] == "claude-sonnet-4-6"
    assert sandbox.run("use-claude").returncode == 0

    assert sandbox.local_settings.read_bytes() == original
    assert stat.S_IMODE(sandbox.local_settings.stat().st_mode) == 0o600
    assert not (sandbox.repo / ".claude" / "claude-router.json").exists()


def test_use_claude_deletes_what_did_not_exist(sandbox: Sandbox) -> None:
    assert sandbox.run("use-ollama").returncode == 0
    assert sandbox.local_settings.exists()
    assert sandbox.run("use-claude").returncode == 0
    assert not (sandbox.repo / ".claude").exists()


def test_use_default_keeps_a_dir_that_existed(sandbox: Sandbox) -> None:
    (sandbox.repo / ".claude").mkdir()
    (sandbox.repo / ".claude" / "settings.json").write_text("{}")
    assert sandbox.run("use-ollama").returncode == 0
    assert sandbox.run("use-default").returncode == 0
    assert sorted(p.name for p in (sandbox.repo / ".claude").iterdir()) == ["settings.json"]


def test_use_default_after_user_edit_removes_only_our_keys(sandbox: Sandbox) -> None:
    sandbox.local_settings.parent.mkdir()
    sandbox.local_settings.write_text(json.dumps({"env": {"ANTHROPIC_BASE_URL": "http://mine"}}))
    assert sandbox.run("use-ollama").returncode == 0
    # Claude Code (or the user) edits the file while the override is active.
    edited = sandbox.local_json()
    edited["permissions"] = {"allow": ["Bash(make:*)"]}
    edited["env"]["ANTHROPIC_DEFAULT_HAIKU_MODEL"] = "their-own-choice"
    sandbox.local_settings.write_text(json.dumps(edited))

    assert sandbox.run("use-default").returncode == 0

    assert sandbox.local_json() == {
        "env": {"ANTHROPIC_BASE_URL": "http://mine", "ANTHROPIC_DEFAULT_HAIKU_MODEL": "their-own-choice"},
        "permissions": {"allow": ["Bash(make:*)"]},
    }


def test_a_symlinked_settings_file_stays_a_symlink(sandbox: Sandbox) -> None:
    target = sandbox.base / "shared-local-settings.json"
    original = b'{"env": {"FOO": "1"}}'
    target.write_bytes(original)
    sandbox.local_settings.parent.mkdir()
    sandbox.local_settings.symlink_to(target)
    assert sandbox.run("use-ollama").returncode == 0
    assert sandbox.local_settings.is_symlink()
    assert json.loads(target.read_text())["env"]["ANTHROPIC_BASE_URL"] == ROUTER_URL
    assert sandbox.run("use-claude").returncode == 0
    assert sandbox.local_settings.is_symlink() and target.read_bytes() == original


def test_switching_model_twice_still_restores_the_original(sandbox: Sandbox) -> None:
    original = b'{"env": {"ANTHROPIC_MODEL": "mine"}}'
    sandbox.local_settings.parent.mkdir()
    sandbox.local_settings.write_bytes(original)
    assert sandbox.run("use-ollama").returncode == 0
    assert sandbox.run("use-ollama", "--model", "qwen-coder").returncode == 0
    assert sandbox.local_json()["env"]["ANTHROPIC_MODEL"] == "qwen-coder"
    assert sandbox.run("use-claude").returncode == 0
    assert sandbox.local_settings.read_bytes() == original


def test_use_claude_pins_the_cloud_when_the_shared_settings_route_to_the_router(sandbox: Sandbox) -> None:
    shared = sandbox.repo / ".claude" / "settings.json"
    shared.parent.mkdir()
    shared.write_text(json.dumps({"env": {"ANTHROPIC_BASE_URL": ROUTER_URL + "/"}}))

    assert sandbox.run("use-claude").returncode == 0
    assert sandbox.local_json() == {"env": {"ANTHROPIC_BASE_URL": "https://api.anthropic.com"}}
    assert "backend: cloud (claude-router override)" in sandbox.run("status").stdout

    assert sandbox.run("use-default").returncode == 0
    assert not sandbox.local_settings.exists()
    assert "backend: router (.claude/settings.json)" in sandbox.run("status").stdout


def test_use_claude_without_override_leaves_the_repo_alone(sandbox: Sandbox) -> None:
    result = sandbox.run("use-claude")
    assert result.returncode == 0, result.stderr
    assert not (sandbox.repo / ".claude").exists()


# ------------------------------------------------------------------------------------------ errors


BROKEN_CASES = [
    (command, content)
    for command in ("use-ollama", "use-claude", "use-default")
    for content in (b'{"env": {"A": 1},,}', b"[1, 2]", b'{"env": "not an object"}')
    # A valid object whose env is no longer an object holds nothing of ours to undo: that succeeds.
    if not (command != "use-ollama" and content == b'{"env": "not an object"}')
]


@pytest.mark.parametrize(("command", "content"), BROKEN_CASES)
def test_broken_settings_file_is_reported_and_never_clobbered(
    sandbox: Sandbox, command: str, content: bytes
) -> None:
    if command != "use-ollama":
        assert sandbox.run("use-ollama").returncode == 0  # an override to undo
    sandbox.local_settings.parent.mkdir(exist_ok=True)
    sandbox.local_settings.write_bytes(content)
    state_before = sorted(p.name for p in sandbox.local_settings.parent.iterdir())

    result = sandbox.run(command)

    assert_clean_error(result, "settings.local.json")
    assert sandbox.local_settings.read_bytes() == content
    assert sorted(p.name for p in sandbox.local_settings.parent.iterdir()) == state_before


def test_undo_with_nothing_of_ours_left_keeps_the_users_bytes(sandbox: Sandbox) -> None:
    assert sandbox.run("use-ollama").returncode == 0
    replaced_by_user = b'{"env":   "theirs now"}'
    sandbox.local_settings.write_bytes(replaced_by_user)
    assert sandbox.run("use-default").returncode == 0
    assert sandbox.local_settings.read_bytes() == replaced_by_user
    assert not (sandbox.repo / ".claude" / "claude-router.json").exists()


def test_broken_json_message_names_the_position(sandbox: Sandbox) -> None:
    sandbox.local_settings.parent.mkdir()
    sandbox.local_settings.write_text('{\n  "env": {\n    "A": 1,\n  }\n}')
    assert_clean_error(sandbox.run("use-ollama"), "not valid JSON", "line 4", "left untouched")


def read_only_run(sandbox: Sandbox, directory: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run claude-router with ``directory`` read-only, even for root (who ignores mode bits)."""
    if os.geteuid() != 0:
        directory.chmod(0o555)
        try:
            return sandbox.run(*args)
        finally:
            directory.chmod(0o755)
    if shutil.which("unshare") is None:
        pytest.skip("root without unshare(1): cannot make a read-only directory")
    script = (
        'mount --bind "$1" "$1" && mount -o remount,bind,ro "$1" "$1" && shift && cd "$REPO" && exec "$@"'
    )
    return subprocess.run(
        [
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            script,
            "sh",
            str(directory),
            PYTHON,
            str(sandbox.bin / "claude-router"),
            *args,
        ],
        env=sandbox.env(REPO=str(sandbox.repo)),
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_read_only_repository_is_a_clean_error(sandbox: Sandbox) -> None:
    result = read_only_run(sandbox, sandbox.repo, "use-ollama")
    if result.returncode != 2 and "mount" in result.stderr:
        pytest.skip(f"cannot create a read-only bind mount here: {result.stderr.strip()}")
    assert_clean_error(result, "cannot write", str(sandbox.repo / ".claude"))
    assert not (sandbox.repo / ".claude").exists()


def test_read_only_claude_dir_keeps_the_override_when_undo_fails(sandbox: Sandbox) -> None:
    assert sandbox.run("use-ollama").returncode == 0
    before = sandbox.local_settings.read_bytes()
    result = read_only_run(sandbox, sandbox.repo / ".claude", "use-claude")
    if result.returncode != 2 and "mount" in result.stderr:
        pytest.skip(f"cannot create a read-only bind mount here: {result.stderr.strip()}")
    assert_clean_error(result, "settings.local.json")
    assert sandbox.local_settings.read_bytes() == before
    assert (sandbox.repo / ".claude" / "claude-router.json").exists()


def test_unknown_command_is_a_clean_error(sandbox: Sandbox) -> None:
    no_command = sandbox.run()
    assert (no_command.returncode, no_command.stdout) == (2, "")
    assert "usage:" in no_command.stderr
    assert_clean_error(sandbox.run("use-gemini"), "unknown command", "use-gemini")
    assert_clean_error(sandbox.run("use-ollama", "--temperature", "2"), "--temperature")


# ------------------------------------------------------------------------------------------ status


def test_status_reports_router_then_cloud(sandbox: Sandbox) -> None:
    assert sandbox.run("use-ollama", "--model", "qwen-coder").returncode == 0
    on_router = sandbox.run("status")
    assert on_router.returncode == 0
    lines = on_router.stdout.splitlines()
    assert f"repository: {sandbox.repo}" in lines
    assert "backend: router (claude-router override)" in lines
    assert f"url: {ROUTER_URL}" in lines
    assert "model: qwen-coder (.claude/settings.local.json)" in lines
    key_path = sandbox.home / ".config" / "claude-router" / "key"
    assert f"router key: {key_path} (present)" in lines

    assert sandbox.run("use-claude").returncode == 0
    key_path.unlink()
    on_cloud = sandbox.run("status").stdout.splitlines()
    assert "backend: cloud (default)" in on_cloud
    assert "url: https://api.anthropic.com" in on_cloud
    assert "model: Claude Code default" in on_cloud
    assert f"router key: {key_path} (missing)" in on_cloud


def test_status_warns_about_a_broken_settings_file(sandbox: Sandbox) -> None:
    sandbox.local_settings.parent.mkdir()
    sandbox.local_settings.write_text("{")
    result = sandbox.run("status")
    assert result.returncode == 0
    assert "backend: cloud (default)" in result.stdout.splitlines()
    assert "warning" in result.stderr and "not valid JSON" in result.stderr


def test_status_names_a_foreign_endpoint(sandbox: Sandbox) -> None:
    sandbox.local_settings.parent.mkdir()
    sandbox.local_settings.write_text(json.dumps({"env": {"ANTHROPIC_BASE_URL": "https://gateway.example"}}))
    lines = sandbox.run("status").stdout.splitlines()
    assert "backend: other endpoint (.claude/settings.local.json)" in lines


# --------------------------------------------------------------------------------------- key helper


def test_key_helper_prints_the_router_key_for_a_router_repo(sandbox: Sandbox) -> None:
    sandbox.write_config(anthropic_key_file="~/.config/anthropic/key")
    (sandbox.home / ".config" / "anthropic").mkdir(parents=True)
    (sandbox.home / ".config" / "anthropic" / "key").write_text(ANTHROPIC_KEY)
    assert sandbox.key().stdout == ANTHROPIC_KEY + "\n"
    assert sandbox.run("use-ollama").returncode == 0
    result = sandbox.key()
    assert (result.returncode, result.stdout) == (0, ROUTER_KEY + "\n")
    # Same answer through the subcommand spelling.
    assert sandbox.run("key").stdout == ROUTER_KEY + "\n"
    assert sandbox.run("use-claude").returncode == 0
    assert sandbox.key().stdout == ANTHROPIC_KEY + "\n"


def test_key_helper_prints_nothing_without_an_anthropic_key(sandbox: Sandbox) -> None:
    result = sandbox.key()
    assert (result.returncode, result.stdout) == (0, "")
    sandbox.write_config(anthropic_key_file="~/.config/anthropic/key")  # configured but absent
    result = sandbox.key()
    assert (result.returncode, result.stdout) == (0, "")


def test_key_helper_runs_the_anthropic_key_command(sandbox: Sandbox) -> None:
    sandbox.write_config(anthropic_key_command=["/bin/sh", "-c", f"echo {ANTHROPIC_KEY}-from-command"])
    assert sandbox.key().stdout == f"{ANTHROPIC_KEY}-from-command\n"
    sandbox.write_config(anthropic_key_command=["/bin/false"])
    failed = sandbox.key()
    assert (failed.returncode, failed.stdout) == (0, "")
    assert "anthropic_key_command failed" in failed.stderr


def test_key_helper_reads_the_shared_settings_and_the_environment(sandbox: Sandbox) -> None:
    assert sandbox.key(ANTHROPIC_BASE_URL=ROUTER_URL).stdout == ROUTER_KEY + "\n"
    shared = sandbox.repo / ".claude" / "settings.json"
    shared.parent.mkdir()
    shared.write_text(json.dumps({"env": {"ANTHROPIC_BASE_URL": ROUTER_URL}}))
    assert sandbox.key().stdout == ROUTER_KEY + "\n"
    # settings.local.json beats settings.json, and a settings env value beats the shell.
    sandbox.local_settings.write_text(
        json.dumps({"env": {"ANTHROPIC_BASE_URL": "https://api.anthropic.com"}})
    )
    assert sandbox.key(ANTHROPIC_BASE_URL=ROUTER_URL).stdout == ""


def test_key_helper_reads_the_user_settings(sandbox: Sandbox) -> None:
    user_settings = sandbox.home / ".claude" / "settings.json"
    user_settings.parent.mkdir()
    user_settings.write_text(json.dumps({"env": {"ANTHROPIC_BASE_URL": ROUTER_URL}}))
    assert sandbox.key().stdout == ROUTER_KEY + "\n"


def test_key_helper_refuses_to_send_another_key_to_the_router(sandbox: Sandbox) -> None:
    sandbox.write_config(anthropic_key_command=["/bin/echo", ANTHROPIC_KEY])
    assert sandbox.run("use-ollama").returncode == 0
    (sandbox.home / ".config" / "claude-router" / "key").unlink()
    result = sandbox.key()
    assert result.returncode == 1
    assert result.stdout == ""
    assert "router key" in result.stderr


def test_key_helper_without_config_falls_back_quietly(sandbox: Sandbox) -> None:
    sandbox.config_path.unlink()
    result = sandbox.key()
    assert (result.returncode, result.stdout) == (0, "")
    assert "not found" in result.stderr


# ------------------------------------------------------------------------------ repository discovery


def test_subdirectory_finds_the_repository_root(sandbox: Sandbox) -> None:
    nested = sandbox.repo / "src" / "deep"
    nested.mkdir(parents=True)
    assert sandbox.run("use-ollama", cwd=nested).returncode == 0
    assert sandbox.local_settings.exists()
    assert not (nested / ".claude").exists()
    assert sandbox.key(cwd=nested).stdout == ROUTER_KEY + "\n"
    assert f"repository: {sandbox.repo}" in sandbox.run("status", cwd=nested).stdout


def test_non_git_directory_uses_the_current_directory(sandbox: Sandbox) -> None:
    plain = sandbox.base / "plain"
    plain.mkdir()
    assert sandbox.run("use-ollama", cwd=plain).returncode == 0
    assert (
        json.loads((plain / ".claude" / "settings.local.json").read_text())["env"]["ANTHROPIC_BASE_URL"]
        == ROUTER_URL
    )
    assert sandbox.key(cwd=plain).stdout == ROUTER_KEY + "\n"
    assert sandbox.run("use-claude", cwd=plain).returncode == 0
    assert not (plain / ".claude").exists()


# ------------------------------------------------------------------------------------ register-helper


def test_register_helper_merges_into_user_settings(sandbox: Sandbox) -> None:
    user_settings = sandbox.home / ".claude" / "settings.json"
    user_settings.parent.mkdir()
    user_settings.write_text(json.dumps({"theme": "dark", "env": {"X": "1"}, "apiKeyHelper": "/old/helper"}))

    first = sandbox.run("register-helper")
    second = sandbox.run("register-helper")

    assert (first.returncode, first.stdout) == (0, "changed\n")
    assert (second.returncode, second.stdout) == (0, "unchanged\n")
    assert json.loads(user_settings.read_text()) == {
        "theme": "dark",
        "env": {"X": "1"},
        "apiKeyHelper": HELPER,
    }
    assert sandbox.run("unregister-helper").stdout == "changed\n"
    assert json.loads(user_settings.read_text()) == {"theme": "dark", "env": {"X": "1"}}


def test_register_helper_creates_a_private_settings_file(sandbox: Sandbox) -> None:
    settings_path = sandbox.home / ".claude" / "settings.json"
    assert sandbox.run("register-helper", "--command", "/opt/helper").stdout == "changed\n"
    assert json.loads(settings_path.read_text()) == {"apiKeyHelper": "/opt/helper"}
    assert stat.S_IMODE(settings_path.stat().st_mode) == 0o600
    # Someone else's helper is not ours to remove.
    assert sandbox.run("unregister-helper").stdout == "unchanged\n"


def test_register_helper_refuses_a_broken_file(sandbox: Sandbox) -> None:
    settings_path = sandbox.home / ".claude" / "settings.json"
    settings_path.parent.mkdir()
    settings_path.write_text("{oops")
    assert_clean_error(sandbox.run("register-helper"), str(settings_path))
    assert settings_path.read_text() == "{oops"


def test_register_api_key_helper_function_is_importable(tmp_path: Path) -> None:
    settings_path = tmp_path / ".claude" / "settings.json"
    assert claude_router.register_api_key_helper(settings_path, "/x/helper") is True
    assert claude_router.register_api_key_helper(settings_path, "/x/helper") is False
    assert json.loads(settings_path.read_text()) == {"apiKeyHelper": "/x/helper"}


# ------------------------------------------------------------------------------------ slash commands


@pytest.mark.parametrize(
    ("name", "command"),
    [
        ("use-ollama", "claude-router use-ollama $ARGUMENTS"),
        ("use-claude", "claude-router use-claude"),
        ("use-default", "claude-router use-default"),
    ],
)
def test_slash_command_files(name: str, command: str) -> None:
    text = (COMMANDS_DIR / f"{name}.md").read_text()
    front, _, body = text.removeprefix("---\n").partition("\n---\n")
    fields = dict(line.split(": ", 1) for line in front.splitlines())
    assert fields["allowed-tools"] == "Bash(claude-router:*)"
    assert fields["description"]
    assert f"!`{command}`" in body
    assert ("argument-hint" in fields) == (name == "use-ollama")


# ------------------------------------------------------------------------------------------ properties

json_leaf = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.text(max_size=8)
    | st.floats(allow_nan=False, allow_infinity=False)
)
json_value = st.recursive(
    json_leaf,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8,
)
env_names = st.sampled_from(["ANTHROPIC_BASE_URL", "ANTHROPIC_MODEL", "ANTHROPIC_DEFAULT_HAIKU_MODEL", "FOO"])
settings_objects = st.fixed_dictionaries(
    {},
    optional={
        "env": st.dictionaries(
            env_names | st.text(max_size=6), st.text(max_size=8) | st.integers(), max_size=4
        ),
        "model": json_value,
        "apiKeyHelper": st.text(max_size=8),
        "permissions": json_value,
    },
).flatmap(
    lambda base: st.dictionaries(
        st.text(max_size=6).filter(lambda key: key != "env"), json_value, max_size=3
    ).map(lambda extra: {**extra, **base})
)


@given(settings_objects)
@settings(max_examples=300, deadline=None)
def test_apply_then_undo_restores_any_settings_object(original: dict[str, Any]) -> None:
    config = claude_router.parse_config(
        {"router_url": ROUTER_URL, "default_model": "claude-sonnet-4-6", "small_fast_model": "qwen-small"},
        "test",
    )
    settings_object = json.loads(json.dumps(original))
    record = claude_router.apply_override(
        settings_object, claude_router.router_override(config, "qwen-coder")
    )
    assert settings_object["env"]["ANTHROPIC_BASE_URL"] == ROUTER_URL
    record = json.loads(json.dumps(record))  # the record goes through the JSON state file
    assert claude_router.undo_override(settings_object, record) == original


@given(original=settings_objects, indent=st.sampled_from([None, 2, 4, "\t"]), trailing_newline=st.booleans())
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_use_ollama_then_use_claude_restores_any_file_exactly(
    original: dict[str, Any], indent: int | str | None, trailing_newline: bool
) -> None:
    with tempfile.TemporaryDirectory() as base:
        sandbox = make_sandbox(Path(base))
        content = json.dumps(original, indent=indent, ensure_ascii=False) + ("\n" if trailing_newline else "")
        sandbox.local_settings.parent.mkdir()
        sandbox.local_settings.write_text(content, encoding="utf-8")
        assert sandbox.run("use-ollama").returncode == 0
        assert sandbox.local_json()["env"]["ANTHROPIC_BASE_URL"] == ROUTER_URL
        result = sandbox.run("use-claude")
        assert result.returncode == 0, result.stderr
        assert sandbox.local_settings.read_text(encoding="utf-8") == content


def test_private_ca_is_given_to_claude_code_only_in_router_mode() -> None:
    base = {"router_url": ROUTER_URL, "default_model": "claude-sonnet-4-6"}
    with_ca = claude_router.parse_config({**base, "ca_file": "/usr/local/share/ca-certificates/x.crt"}, "test")
    assert claude_router.router_override(with_ca, "m")["env"]["NODE_EXTRA_CA_CERTS"] == with_ca.ca_file
    assert "NODE_EXTRA_CA_CERTS" not in claude_router.router_override(claude_router.parse_config(base, "t"), "m")["env"]
    assert "NODE_EXTRA_CA_CERTS" not in claude_router.cloud_override()["env"]
    with pytest.raises(claude_router.RouterError, match="ca_file"):
        claude_router.parse_config({**base, "ca_file": 7}, "test")


# --- issue 17: model slots and a session sized to the model's context ------------------------------


def test_use_ollama_maps_the_slots_and_sizes_the_session_to_the_smallest_context(sandbox: Sandbox) -> None:
    sandbox.write_config(opus_model="qwen-coder", sonnet_model="claude-sonnet-4-6",
                         context_tokens={"claude-sonnet-4-6": 65536, "qwen-coder": 131072, "qwen-small": 65536})
    assert sandbox.run("use-ollama", "--model", "qwen-coder").returncode == 0
    env = sandbox.local_json()["env"]
    assert {k: env[k] for k in env if k.startswith(("ANTHROPIC_DEFAULT", "CLAUDE_CODE_SUBAGENT"))} == {
        "ANTHROPIC_DEFAULT_OPUS_MODEL": "qwen-coder",
        "ANTHROPIC_DEFAULT_SONNET_MODEL": "claude-sonnet-4-6",
        "ANTHROPIC_DEFAULT_HAIKU_MODEL": "qwen-small",
        "CLAUDE_CODE_SUBAGENT_MODEL": "qwen-coder",
    }
    # 64k behind the sonnet and haiku slots: an eighth for the answer, compaction at 44% of
    # (100k, the least window 2.1.330 takes, minus the answer) = 40395 tokens, tool results 8k each.
    assert {k: env[k] for k in claude_router.SessionSizing(1).env()} == {
        "CLAUDE_CODE_MAX_OUTPUT_TOKENS": "8192",
        "CLAUDE_CODE_AUTO_COMPACT_WINDOW": "100000",
        "CLAUDE_AUTOCOMPACT_PCT_OVERRIDE": "44",
        "CLAUDE_CODE_FILE_READ_MAX_OUTPUT_TOKENS": "8192",
        "MAX_MCP_OUTPUT_TOKENS": "8192",
        "BASH_MAX_OUTPUT_LENGTH": "24576",
    }
    assert env["API_TIMEOUT_MS"] == "900000"
    assert env["CLAUDE_CODE_ATTRIBUTION_HEADER"] == "0"
    status = sandbox.run("status").stdout.splitlines()
    assert "compacts at: 40395 tokens of prompt" in status
    assert "model context: 65536 tokens (smallest behind the slots)" in status
    assert "CLAUDE_AUTOCOMPACT_PCT_OVERRIDE: 44 (.claude/settings.local.json)" in status
    assert "CLAUDE_CODE_SUBAGENT_MODEL: qwen-coder (.claude/settings.local.json)" in status


def test_a_larger_context_gets_a_larger_window_and_answer() -> None:
    sizing = claude_router.SessionSizing(131072)
    assert sizing.env()["CLAUDE_CODE_MAX_OUTPUT_TOKENS"] == "16384"
    assert sizing.env()["CLAUDE_CODE_AUTO_COMPACT_WINDOW"] == "131072"
    assert sizing.env()["CLAUDE_AUTOCOMPACT_PCT_OVERRIDE"] == "71"  # 81920 of 114688
    assert sizing.compact_at == 81428


@given(st.integers(min_value=65536, max_value=2_000_000))
def test_a_compacting_session_leaves_room_for_a_step_and_the_answer(context: int) -> None:
    sizing = claude_router.SessionSizing(context)
    assert sizing.compact_at + sizing.step + sizing.output <= context
    assert 2 * sizing.tool_result_tokens <= sizing.step
    # Claude Code's own prompt (~20k tokens) must leave room for a conversation before compaction.
    assert sizing.compact_at >= 40000
    assert int(sizing.env()["CLAUDE_CODE_AUTO_COMPACT_WINDOW"]) >= 100_000


def test_without_contexts_in_the_config_no_sizing_is_written(sandbox: Sandbox) -> None:
    assert sandbox.run("use-ollama").returncode == 0
    assert "CLAUDE_AUTOCOMPACT_PCT_OVERRIDE" not in sandbox.local_json()["env"]
    with pytest.raises(claude_router.RouterError, match="context_tokens"):
        claude_router.parse_config({"router_url": ROUTER_URL, "default_model": "m", "context_tokens": {"m": "64k"}},
                                   "test")


def test_client_config_maps_the_inventorys_aliases_to_slots_and_contexts() -> None:
    from deploys.client import client_config
    from inventory.load import load_inventory

    inv = load_inventory(REPO_ROOT / "inventory" / "lab.yaml")
    config = client_config(inv, inv.hosts["razer"])
    assert (config["opus_model"], config["sonnet_model"], config["small_fast_model"]) == (
        "claude-opus-4-6", "claude-sonnet-4-6", "claude-sonnet-4-6")
    assert config["context_tokens"]["claude-opus-4-6"] == 65536  # gemma4:26b in the lab's catalogue
    parsed = claude_router.parse_config(json.loads(json.dumps(config)), "config.json")
    assert claude_router.session_sizing(parsed, "claude-sonnet-4-6") == claude_router.SessionSizing(65536)
