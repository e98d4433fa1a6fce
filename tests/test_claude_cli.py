"""The real Claude Code CLI against a fake Anthropic API on 127.0.0.1, switched by claude-router.

Claude Code is the npm package ``@anthropic-ai/claude-code`` (pinned below). Its ``claude`` program is
a self-contained native executable shipped in the optional dependency
``@anthropic-ai/claude-code-linux-x64``: node/npm are needed only to *fetch* it, not to run it.
The test installs it once into ``.cache/claude-code/`` and skips (with the reason) only when that
install is impossible.

What ``claude -p`` needs to run non-interactively here (verified on 2.1.330): nothing but HOME —
no ``~/.claude.json`` onboarding flag, no login, no trust prompt (``-p`` skips the workspace trust
dialog, and an ``apiKeyHelper`` from the repository's settings.local.json is honoured).
``CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC=1``/``DISABLE_TELEMETRY=1`` keep it off the network apart
from the model request. The "cloud" run is forced through a recording HTTPS proxy on loopback
(``HTTPS_PROXY``) that refuses the tunnel, so no test traffic leaves the machine and the test still
sees that the request was headed for api.anthropic.com:443.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from lab.claude_code import CLAUDE_CODE_VERSION, INSTALLED_PATH, ensure_layer
from tests.test_client_scripts import ROUTER_KEY, make_sandbox

REPO_ROOT = Path(__file__).resolve().parent.parent
COMMANDS_DIR = REPO_ROOT / "hostfiles" / "claude_commands"
PYTHON = "/usr/bin/python3" if Path("/usr/bin/python3").exists() else "python3"
ANSWER = "Hi from the fake router"


def installed_version(binary: Path) -> str | None:
    try:
        result = subprocess.run(
            [str(binary), "--version"], capture_output=True, text=True, timeout=60, check=False
        )
    except OSError:
        return None
    return result.stdout.split()[0] if result.returncode == 0 and result.stdout.strip() else None


@pytest.fixture(scope="session")
def claude_binary() -> Path:
    """The pinned native binary, fetched once with npm for the lab too (a failure fails the test)."""
    binary = ensure_layer(CLAUDE_CODE_VERSION) / INSTALLED_PATH
    assert installed_version(binary) == CLAUDE_CODE_VERSION
    return binary


# --------------------------------------------------------------------------------- fake endpoints


@dataclass
class Recorder:
    requests: list[dict[str, Any]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, entry: dict[str, Any]) -> None:
        with self.lock:
            self.requests.append(entry)

    def snapshot(self) -> list[dict[str, Any]]:
        with self.lock:
            return list(self.requests)


def anthropic_events(model: str) -> list[tuple[str, dict[str, Any]]]:
    message = {
        "id": "msg_fake_router",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {"input_tokens": 5, "output_tokens": 1},
    }
    return [
        ("message_start", {"type": "message_start", "message": message}),
        (
            "content_block_start",
            {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        ),
        (
            "content_block_delta",
            {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": ANSWER}},
        ),
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        (
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                "usage": {"output_tokens": 6},
            },
        ),
        ("message_stop", {"type": "message_stop"}),
    ]


def fake_anthropic_handler(recorder: Recorder) -> type[BaseHTTPRequestHandler]:
    class FakeAnthropic(BaseHTTPRequestHandler):
        """Answers every /v1/messages call with one fixed text message (SSE when asked to stream)."""

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length", "0"))).decode("utf-8")
            recorder.add({"method": "POST", "path": self.path, "headers": dict(self.headers), "body": body})
            request = json.loads(body or "{}")
            if not self.path.startswith("/v1/messages") or "count_tokens" in self.path:
                self.reply_json({"input_tokens": 5})
                return
            events = anthropic_events(str(request.get("model", "unknown")))
            if request.get("stream"):
                self.send_response(200)
                self.send_header("content-type", "text/event-stream")
                self.end_headers()
                for name, data in events:
                    self.wfile.write(f"event: {name}\ndata: {json.dumps(data)}\n\n".encode())
                return
            message = events[0][1]["message"] | {
                "content": [{"type": "text", "text": ANSWER}],
                "stop_reason": "end_turn",
            }
            self.reply_json(message)

        def do_GET(self) -> None:
            recorder.add({"method": "GET", "path": self.path, "headers": dict(self.headers), "body": ""})
            self.send_response(404)
            self.end_headers()

        def reply_json(self, payload: dict[str, Any]) -> None:
            data = json.dumps(payload).encode()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return FakeAnthropic


def refusing_proxy_handler(recorder: Recorder) -> type[BaseHTTPRequestHandler]:
    class RefusingProxy(BaseHTTPRequestHandler):
        """Records where HTTPS traffic wanted to go, then refuses the tunnel."""

        def do_CONNECT(self) -> None:
            recorder.add({"method": "CONNECT", "path": self.path, "headers": dict(self.headers), "body": ""})
            self.send_response(403)
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return RefusingProxy


@pytest.fixture
def serve() -> Iterator[Any]:
    servers: list[ThreadingHTTPServer] = []

    def start(handler: type[BaseHTTPRequestHandler]) -> str:
        server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


# --------------------------------------------------------------------------------- client sandbox


@dataclass
class Client:
    home: Path
    bin: Path
    config: Path
    repo: Path
    claude_path: Path

    def env(self, **extra: str) -> dict[str, str]:
        git_dir = os.path.dirname(shutil.which("git") or "/usr/bin/git")
        env = {
            "PATH": f"{self.bin}:{git_dir}:/usr/local/bin:/usr/bin:/bin",
            "HOME": str(self.home),
            "LANG": "C.UTF-8",
            "CLAUDE_ROUTER_CONFIG": str(self.config),
            "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
            "DISABLE_TELEMETRY": "1",
            "DISABLE_AUTOUPDATER": "1",
            "CLAUDE_CODE_MAX_RETRIES": "0",
            "GIT_CONFIG_NOSYSTEM": "1",
        }
        env.update(extra)
        return env

    def router(self, *args: str) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [PYTHON, str(self.bin / "claude-router"), *args],
            cwd=self.repo,
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        return result

    def claude(
        self, prompt: str, cwd: Path | None = None, **extra_env: str
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.claude_path), "-p", prompt],
            cwd=cwd or self.repo,
            env=self.env(**extra_env),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )


def make_client(base: Path, claude: Path, router_url: str) -> Client:
    """The claude-router sandbox of test_client_scripts, configured for the real CLI."""
    sandbox = make_sandbox(base)
    (sandbox.home / ".config" / "claude-router" / "key").chmod(0o600)
    # The deploy installs /usr/local/bin/claude-router-key; here it lives in the sandbox.
    sandbox.write_config(router_url=router_url, models=["claude-sonnet-4-6"], small_fast_model="claude-sonnet-4-6",
                         helper_command=str(sandbox.bin / "claude-router-key"))
    return Client(home=sandbox.home, bin=sandbox.bin, config=sandbox.config_path, repo=sandbox.repo,
                  claude_path=claude)


def model_requests(recorder: Recorder) -> list[dict[str, Any]]:
    return [entry for entry in recorder.snapshot() if entry["path"].startswith("/v1/messages")]


@pytest.mark.parametrize(
    ("global_helper", "previous_local_settings", "subdirectory"),
    [
        pytest.param(True, None, "", id="helper-in-user-settings"),
        pytest.param(
            False,
            b'{\n  "permissions": {"allow": ["Bash(ls:*)"]}\n}\n',
            "src/deep",
            id="helper-from-override-only-in-subdirectory",
        ),
    ],
)
def test_router_then_cloud_with_the_real_cli(
    tmp_path: Path,
    claude_binary: Path,
    serve: Any,
    global_helper: bool,
    previous_local_settings: bytes | None,
    subdirectory: str,
) -> None:
    router, proxy = Recorder(), Recorder()
    router_url = serve(fake_anthropic_handler(router))
    proxy_url = serve(refusing_proxy_handler(proxy))
    client = make_client(tmp_path, claude_binary, router_url)
    local_settings = client.repo / ".claude" / "settings.local.json"
    if previous_local_settings is not None:
        local_settings.parent.mkdir()
        local_settings.write_bytes(previous_local_settings)
    if global_helper:
        client.router("register-helper", "--command", str(client.bin / "claude-router-key"))

    client.router("use-ollama")
    # Claude Code started below the root still reads the root's .claude/ and runs the helper there.
    workdir = client.repo / subdirectory
    workdir.mkdir(parents=True, exist_ok=True)
    on_router = client.claude("say hi", cwd=workdir)

    assert on_router.returncode == 0, on_router.stderr
    assert ANSWER in on_router.stdout
    requests = model_requests(router)
    assert requests, "Claude Code sent nothing to the router"
    for request in requests:
        assert request["headers"].get("x-api-key") == ROUTER_KEY
        assert request["headers"].get("Authorization") == f"Bearer {ROUTER_KEY}"
        assert json.loads(request["body"])["model"] == "claude-sonnet-4-6"

    client.router("use-claude")
    if previous_local_settings is None:
        assert not local_settings.exists()
    else:
        assert local_settings.read_bytes() == previous_local_settings
    seen_by_router = len(router.snapshot())
    cloud_env = {"HTTPS_PROXY": proxy_url, "https_proxy": proxy_url}
    if not global_helper:
        # Without a helper in the user settings the cloud run uses the user's own credentials; with
        # neither a login nor a key Claude Code would stop before sending anything.
        cloud_env["ANTHROPIC_API_KEY"] = "sk-ant-user-own-key"
    on_cloud = client.claude("say hi", cwd=workdir, **cloud_env)

    assert on_cloud.returncode != 0  # the proxy refuses the tunnel: no cloud on this machine
    assert ANSWER not in on_cloud.stdout
    assert len(router.snapshot()) == seen_by_router
    assert "api.anthropic.com:443" in [entry["path"] for entry in proxy.snapshot()]


def test_slash_command_switches_the_repository(tmp_path: Path, claude_binary: Path, serve: Any) -> None:
    """``claude -p "/use-ollama"`` runs the command file's ``!`` line, then sends its output to the model."""
    model, router = Recorder(), Recorder()
    model_url = serve(fake_anthropic_handler(model))
    # The router is a second fake: Claude Code may reload the settings the command's `!` line just
    # wrote before it sends that line's output, so the request can go to either; both answer.
    router_url = serve(fake_anthropic_handler(router))
    client = make_client(tmp_path, claude_binary, router_url=router_url)
    commands = client.home / ".claude" / "commands"
    commands.mkdir(parents=True)
    for command_file in COMMANDS_DIR.glob("*.md"):
        shutil.copy(command_file, commands / command_file.name)

    result = client.claude(
        "/use-ollama claude-sonnet-4-6", ANTHROPIC_BASE_URL=model_url, ANTHROPIC_API_KEY="sk-test"
    )

    assert result.returncode == 0, result.stdout + result.stderr
    local_settings = client.repo / ".claude" / "settings.local.json"
    assert json.loads(local_settings.read_text())["env"]["ANTHROPIC_BASE_URL"] == router_url
    prompts = " ".join(entry["body"] for entry in model_requests(model) + model_requests(router))
    assert f"Claude Code now uses the router {router_url}" in prompts

    # The command's `!` line runs before this run's model request, wherever that goes.
    client.claude("/use-default", ANTHROPIC_BASE_URL=model_url, ANTHROPIC_API_KEY="sk-test")
    assert not local_settings.exists()
    assert not (client.repo / ".claude").exists()
