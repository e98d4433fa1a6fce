import json
import os
import shutil
import socket
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import pytest

from facts.ollama import LoadedModel, ollama_base_url, ollama_command, parse_ollama_output
from facts.sections import encode

TAGS = {
    "models": [
        {
            "name": "qwen3.6:27b",
            "model": "qwen3.6:27b",
            "size": 17302493184,
            "digest": "a3de",
            "modified_at": "2026-10-02T18:21:07+02:00",
        }
    ]
}
PS = {
    "models": [
        {
            "name": "qwen3.6:27b",
            "size": 100,
            "size_vram": 60,
            "expires_at": "2026-11-23T01:35:12+01:00",
            "context_length": 8192,
        }
    ]
}


def test_base_url():
    assert ollama_base_url("127.0.0.1:11434") == "http://127.0.0.1:11434"
    assert ollama_base_url("https://gpu.example/ollama/") == "https://gpu.example/ollama"


def test_fully_on_gpu_needs_equal_sizes():
    assert LoadedModel("m", 100, 100, None, None).fully_on_gpu
    assert not LoadedModel("m", 100, 60, None, None).fully_on_gpu
    assert not LoadedModel("m", 0, 0, None, None).fully_on_gpu
    assert not LoadedModel("m", None, None, None, None).fully_on_gpu


def test_models_without_a_name_are_skipped_and_model_key_is_a_fallback():
    lines = [
        encode("version", 0, b'{"version": "0.12.6"}'),
        encode("tags", 0, json.dumps({"models": [{"size": 1}, {"model": "only-model-key:1b", "size": 2}]}).encode()),
        encode("ps", 0, b'{"models": []}'),
    ]
    state = parse_ollama_output(lines)
    assert [model.name for model in state.installed] == ["only-model-key:1b"]
    assert state.reason is None


def test_missing_sections_are_reported():
    state = parse_ollama_output([encode("version", 0, b'{"version": "0.12.6"}')])
    assert state.reachable
    assert state.reason == "/api/tags: no response; /api/ps: no response"


def test_version_must_be_a_string():
    assert not parse_ollama_output([encode("version", 0, b'{"version": 12}')]).reachable


def test_a_damaged_section_is_reported():
    cut = encode("tags", 0, b'{"models": []}')[:-3]
    state = parse_ollama_output([encode("version", 0, b'{"version": "0.12.6"}'), cut, encode("ps", 0, b"{}")])
    assert state.reachable and state.reason.startswith("/api/tags: its output is not valid base64")


# --- the command, run locally against a fake Ollama on loopback -------------------------------


class _FakeOllama(BaseHTTPRequestHandler):
    bodies: ClassVar[dict[str, object]] = {
        "/api/version": {"version": "0.12.6"},
        "/api/tags": TAGS,
        "/api/ps": PS,
    }

    def do_GET(self):
        body = self.bodies.get(self.path)
        payload = json.dumps(body).encode() if body is not None else b"404 page not found"
        self.send_response(200 if body is not None else 404)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args):
        pass


@pytest.fixture
def fake_ollama():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _FakeOllama)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _run(command: str, path: str | None = None) -> list[str]:
    env = dict(os.environ) if path is None else {"PATH": path}
    return subprocess.run(
        ["/bin/sh", "-c", command], env=env, capture_output=True, text=True, timeout=30, check=False
    ).stdout.splitlines()


def _assert_fake_state(state):
    assert state.reachable and state.version == "0.12.6"
    assert [(m.name, m.size) for m in state.installed] == [("qwen3.6:27b", 17302493184)]
    assert [(m.name, m.size_vram, m.context_length) for m in state.loaded] == [("qwen3.6:27b", 60, 8192)]


def test_command_reads_a_live_server(fake_ollama):
    _assert_fake_state(parse_ollama_output(_run(ollama_command(fake_ollama))))


def test_command_falls_back_to_python_without_curl(fake_ollama, tmp_path):
    # The real interpreter, not a wrapper script (pyenv shims need bash on PATH).
    (tmp_path / "python3").symlink_to(Path(sys.executable).resolve())
    (tmp_path / "base64").symlink_to(shutil.which("base64"))
    _assert_fake_state(parse_ollama_output(_run(ollama_command(fake_ollama), path=str(tmp_path))))


def test_command_reports_a_down_server():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed again before the command runs: nothing listens
    state = parse_ollama_output(_run(ollama_command(f"127.0.0.1:{port}")))
    assert not state.reachable
    assert state.reason.startswith("/api/version did not answer with JSON:")


def test_command_without_any_http_client(tmp_path):
    (tmp_path / "base64").symlink_to(shutil.which("base64"))  # the framing's, not an HTTP client
    state = parse_ollama_output(_run(ollama_command(), path=str(tmp_path)))
    assert (state.reachable, state.reason) == (False, "neither curl nor python3 is installed")
