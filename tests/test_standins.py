"""Tests of the lab stand-ins (lab/standins/): Ollama and Tailscale.

They run on this machine without the lab: loopback, random free ports, tmp dirs.
The Ollama server is run from the built release tarball (extracted), so the
packaging and the `bin/ollama` launcher are exercised too.
"""

from __future__ import annotations

import hashlib
import http.client
import io
import json
import math
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest

from lab.standins.ollama import build, models, replies, server
from lab.standins.tailscale import ca, install, state
from lab.standins.tailscale.daemon import TailscaledStandin

pytestmark = pytest.mark.skipif(
    shutil.which("zstd") is None or shutil.which("openssl") is None,
    reason="needs the zstd and openssl binaries",
)

REPO = Path(__file__).resolve().parent.parent
DNS_NAME = "p620.tail1234.ts.net"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def port_open(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
        return True
    except OSError:
        return False


def stop(proc: subprocess.Popen[Any]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# ====================================================================== Ollama: pure parts


@pytest.mark.parametrize(
    ("raw", "seconds"),
    [
        ("5m", 300.0),
        ("1h30m", 5400.0),
        ("1.5s", 1.5),
        ("300ms", 0.3),
        (10, 10.0),
        (0, 0.0),
        ("0", 0.0),
        ("-1", math.inf),
        (-1, math.inf),
        ("-5m", math.inf),
        (None, None),
    ],
)
def test_parse_keep_alive(raw: Any, seconds: float | None) -> None:
    assert models.parse_keep_alive(raw) == seconds


@pytest.mark.parametrize("raw", ["5 minutes", "m5", "", "1x"])
def test_parse_keep_alive_rejects_garbage_like_go(raw: str) -> None:
    with pytest.raises(ValueError, match="invalid duration"):
        models.parse_keep_alive(raw)


def test_env_defaults() -> None:
    assert models.env_keep_alive({}) == 300.0
    assert models.env_keep_alive({"OLLAMA_KEEP_ALIVE": "10m"}) == 600.0
    assert models.env_keep_alive({"OLLAMA_KEEP_ALIVE": "-1"}) == math.inf
    assert models.env_max_loaded({}) == 3
    assert models.env_max_loaded({"OLLAMA_MAX_LOADED_MODELS": "1"}) == 1


@pytest.mark.parametrize(
    ("raw", "short", "full"),
    [
        ("qwen3.6:27b", "qwen3.6:27b", "registry.ollama.ai/library/qwen3.6:27b"),
        ("tinyllama", "tinyllama:latest", "registry.ollama.ai/library/tinyllama:latest"),
        ("me/model:v1", "me/model:v1", "registry.ollama.ai/me/model:v1"),
        ("hf.co/org/m:q4", "hf.co/org/m:q4", "hf.co/org/m:q4"),
    ],
)
def test_parse_model_name(raw: str, short: str, full: str) -> None:
    name = models.parse_model_name(raw)
    assert name is not None and (name.short, name.full) == (short, full)


@pytest.mark.parametrize("raw", ["", "  ", "a/b/c/d", "bad name"])
def test_parse_model_name_invalid(raw: str) -> None:
    assert models.parse_model_name(raw) is None


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, ("127.0.0.1", 11434)),
        ("127.0.0.1:11434", ("127.0.0.1", 11434)),
        ("0.0.0.0", ("0.0.0.0", 11434)),
        ("http://10.0.0.5:8080", ("10.0.0.5", 8080)),
        ("[::1]:9999", ("::1", 9999)),
    ],
)
def test_parse_ollama_host(value: str | None, expected: tuple[str, int]) -> None:
    assert server.parse_ollama_host(value) == expected


def test_arguments_from_schema_fills_required_only() -> None:
    schema = {
        "type": "object",
        "properties": {
            "path": {"type": "string"},
            "unit": {"type": "string", "enum": ["c", "f"]},
            "count": {"type": "integer"},
            "optional": {"type": "string"},
        },
        "required": ["path", "unit", "count"],
    }
    assert replies.arguments_from_schema(schema) == {
        "path": replies.FIXED_STRING_ARGUMENT,
        "unit": "c",
        "count": 1,
    }


def test_scheduler_evicts_least_recently_used() -> None:
    def installed(name: str, size: int) -> models.InstalledModel:
        parsed = models.parse_model_name(name)
        assert parsed is not None
        return models.InstalledModel(parsed, {}, "d" * 64, size, 0.0)

    sched = models.Scheduler(default_keep_alive=60, max_loaded=2, gpu=True, vram_bytes=100)
    a, b, c, big = installed("a", 10), installed("b", 10), installed("c", 10), installed("big", 95)
    sched.use(a, None, now=1)
    sched.use(b, None, now=2)
    sched.use(a, None, now=3)  # a is now the most recently used
    sched.use(c, None, now=4)
    assert [m.model.name.model for m in sched.running(now=5)] == ["c", "a"]
    sched.use(big, None, now=6)  # VRAM budget: 95 + anything > 100
    assert [m.model.name.model for m in sched.running(now=7)] == ["big"]
    assert sched.running(now=6 + 61) == []  # keep_alive expiry


# ====================================================================== Ollama: release build


def _tar_members(path: Path) -> dict[str, tarfile.TarInfo]:
    raw = subprocess.run(["zstd", "-dc", str(path)], stdout=subprocess.PIPE, check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
        return {m.name: m for m in tar.getmembers()}


@pytest.fixture(scope="module")
def release(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    outdir = tmp_path_factory.mktemp("release")
    return outdir, build.build_release(outdir, "0.13.5")


@pytest.fixture(scope="module")
def ollama_install(release: tuple[Path, dict[str, str]], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The release extracted as the deploy does: main tarball, then the ROCm add-on over it."""
    root = tmp_path_factory.mktemp("usr-local")
    for name in (build.MAIN_TARBALL, build.ROCM_TARBALL):
        subprocess.run(["tar", "--zstd", "-xf", str(release[0] / name), "-C", str(root)], check=True)
    return root


def test_build_is_reproducible(release: tuple[Path, dict[str, str]], tmp_path: Path) -> None:
    outdir, sums = release
    again = build.build_release(tmp_path / "again", "0.13.5")
    assert again == sums
    for name in (build.MAIN_TARBALL, build.ROCM_TARBALL, build.SUMS_FILE):
        assert (tmp_path / "again" / name).read_bytes() == (outdir / name).read_bytes()
    other = build.build_release(tmp_path / "other", "0.14.0")
    assert other[build.MAIN_TARBALL] != sums[build.MAIN_TARBALL]  # the version is baked in


def test_sha256sum_file_matches(release: tuple[Path, dict[str, str]]) -> None:
    outdir, sums = release
    assert set(sums) == {"ollama-linux-amd64.tar.zst", "ollama-linux-amd64-rocm.tar.zst"}
    lines = (outdir / build.SUMS_FILE).read_text().splitlines()
    assert sorted(lines) == sorted(f"{digest}  ./{name}" for name, digest in sums.items())
    for name, digest in sums.items():
        assert hashlib.sha256((outdir / name).read_bytes()).hexdigest() == digest
    subprocess.run(["sha256sum", "-c", build.SUMS_FILE], cwd=outdir, check=True, capture_output=True)


def test_tarballs_have_the_official_layout(release: tuple[Path, dict[str, str]]) -> None:
    outdir, _ = release
    main = _tar_members(outdir / build.MAIN_TARBALL)
    rocm = _tar_members(outdir / build.ROCM_TARBALL)
    assert main["bin/ollama"].isfile() and main["bin/ollama"].mode == 0o755
    assert {"lib/ollama", "lib/ollama/standin/server.py", "lib/ollama/standin/catalogue.json"} <= set(main)
    assert all(n == "bin" or n.startswith(("bin/", "lib")) for n in main)
    assert all(n.startswith("lib/ollama/rocm") or n in ("lib", "lib/ollama") for n in rocm)
    assert "lib/ollama/rocm/STANDIN-README.txt" in rocm
    for member in [*main.values(), *rocm.values()]:
        assert (member.uid, member.gid, member.mtime) == (0, 0, build.FIXED_MTIME)


def test_launcher_is_a_python3_stand_in(ollama_install: Path) -> None:
    launcher = (ollama_install / "bin" / "ollama").read_text()
    assert launcher.startswith("#!/usr/bin/python3\n") and "STAND-IN" in launcher
    assert (ollama_install / "lib" / "ollama" / "standin" / "VERSION").read_text().strip() == "0.13.5"
    out = subprocess.run(
        [str(ollama_install / "bin" / "ollama"), "--version"],
        capture_output=True,
        text=True,
        env={**os.environ, "OLLAMA_HOST": f"127.0.0.1:{free_port()}"},
        check=True,
    ).stdout
    assert "client version is 0.13.5 (lab stand-in)" in out  # no server: the real CLI's warning
    assert not list(ollama_install.rglob("__pycache__"))  # running it leaves the release untouched


# ====================================================================== Ollama: the server


class Ollama:
    """A running stand-in server from an extracted release, plus a tiny HTTP client."""

    def __init__(self, install_root: Path, models_dir: Path, env: dict[str, str]) -> None:
        self.install_root = install_root
        self.port = free_port()
        self.env = {
            **os.environ,
            "OLLAMA_HOST": f"127.0.0.1:{self.port}",
            "OLLAMA_MODELS": str(models_dir),
            **env,
        }
        self.proc = subprocess.Popen(
            [str(install_root / "bin" / "ollama"), "serve"],
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        wait_until(lambda: port_open(self.port) or self.proc.poll() is not None, what="ollama serve")
        assert self.proc.poll() is None, self.proc.stderr.read() if self.proc.stderr else ""

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.install_root / "bin" / "ollama"), *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )

    def request(
        self, method: str, path: str, body: Any = None, content_type: str = "application/octet-stream"
    ) -> tuple[int, bytes, str]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        data = json.dumps(body).encode() if body is not None else None
        conn.request(method, path, body=data, headers={"Content-Type": content_type} if data else {})
        resp = conn.getresponse()
        raw = resp.read()
        conn.close()
        return resp.status, raw, resp.getheader("Content-Type") or ""

    def json(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        status, raw, _ = self.request(method, path, body)
        return status, json.loads(raw)

    def ndjson(self, path: str, body: Any) -> list[dict[str, Any]]:
        status, raw, content_type = self.request("POST", path, body)
        assert status == 200 and content_type == "application/x-ndjson", raw
        return [json.loads(line) for line in raw.splitlines()]

    def pull(self, *names: str) -> None:
        for name in names:
            result = self.cli("pull", name)
            assert result.returncode == 0 and result.stdout.strip().endswith("success"), result

    def ps(self) -> list[dict[str, Any]]:
        status, body = self.json("GET", "/api/ps")
        assert status == 200
        return body["models"]

    def stop(self) -> None:
        stop(self.proc)


@pytest.fixture
def start_ollama(ollama_install: Path, tmp_path: Path) -> Iterator[Callable[..., Ollama]]:
    started: list[Ollama] = []

    def start(install_root: Path = ollama_install, **env: str) -> Ollama:
        started.append(Ollama(install_root, tmp_path / "models", env))
        return started[-1]

    yield start
    for instance in started:
        instance.stop()


@pytest.fixture
def ollama(start_ollama: Callable[..., Ollama]) -> Ollama:
    instance = start_ollama()
    instance.pull("qwen3.6:27b", "qwen2.5:0.5b", "qwen3:0.6b")
    return instance


def litellm_chat(model: str, messages: list[dict[str, Any]], stream: bool, **extra: Any) -> dict[str, Any]:
    """The body LiteLLM's ollama_chat transform_request sends (options always present)."""
    return {"model": model, "messages": messages, "options": {"num_predict": 64}, "stream": stream, **extra}


WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {
            "type": "object",
            "required": ["city", "unit"],
            "properties": {
                "city": {"type": "string"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
        },
    },
}


def test_root_version_and_cli_version(ollama: Ollama) -> None:
    assert ollama.request("GET", "/")[:2] == (200, b"Ollama is running")
    assert ollama.json("GET", "/api/version") == (200, {"version": "0.13.5"})
    assert ollama.cli("--version").stdout.strip() == "ollama version is 0.13.5 (lab stand-in)"


def test_show_has_what_litellm_reads(ollama: Ollama) -> None:
    status, body = ollama.json("POST", "/api/show", {"name": "qwen3.6:27b"})  # LiteLLM sends "name"
    assert status == 200
    assert body["capabilities"] == ["completion", "tools", "thinking"]
    context = {k: v for k, v in body["model_info"].items() if k.endswith(".context_length")}
    assert context == {"qwen3.context_length": 262144}
    assert "tools" in body["template"].lower()  # LiteLLM's supports_function_calling check
    assert body["details"]["parameter_size"] == "27.3B"
    _, small = ollama.json("POST", "/api/show", {"model": "qwen2.5:0.5b"})
    assert "thinking" not in small["capabilities"]


def test_chat_non_streaming(ollama: Ollama) -> None:
    status, body = ollama.json(
        "POST", "/api/chat", litellm_chat("qwen3.6:27b", [{"role": "user", "content": "hi"}], stream=False)
    )
    assert status == 200
    assert body["message"] == {
        "role": "assistant",
        "content": "Hello from the Ollama stand-in (model qwen3.6:27b).",
    }
    assert body["done"] is True and body["done_reason"] == "stop" and body["model"] == "qwen3.6:27b"
    assert body["eval_count"] > 0 and body["prompt_eval_count"] > 0 and body["total_duration"] > 0


def test_chat_streaming_ndjson(ollama: Ollama) -> None:
    lines = ollama.ndjson(
        "/api/chat", litellm_chat("qwen3.6:27b", [{"role": "user", "content": "hi"}], stream=True)
    )
    assert len(lines) > 2
    assert all({"model", "message", "done", "created_at"} <= set(line) for line in lines)
    assert [line["done"] for line in lines] == [False] * (len(lines) - 1) + [True]
    assert (
        "".join(line["message"]["content"] for line in lines)
        == "Hello from the Ollama stand-in (model qwen3.6:27b)."
    )
    assert lines[-1]["done_reason"] == "stop" and lines[-1]["eval_count"] > 0


def test_tool_call_round_trip(ollama: Ollama) -> None:
    ask = [{"role": "user", "content": "please call tool get_weather for Paris"}]
    status, first = ollama.json(
        "POST", "/api/chat", litellm_chat("qwen3.6:27b", ask, stream=False, tools=[WEATHER_TOOL])
    )
    assert status == 200
    (call,) = first["message"]["tool_calls"]
    assert call["function"]["name"] == "get_weather"
    assert call["function"]["arguments"] == {"city": replies.FIXED_STRING_ARGUMENT, "unit": "celsius"}

    streamed = ollama.ndjson("/api/chat", litellm_chat("qwen3.6:27b", ask, stream=True, tools=[WEATHER_TOOL]))
    assert [c["function"]["name"] for line in streamed for c in line["message"].get("tool_calls", [])] == [
        "get_weather"
    ]

    follow_up = [
        *ask,
        {"role": "assistant", "content": "", "tool_calls": [call]},
        {"role": "tool", "content": "18 degrees and sunny"},
    ]
    _, second = ollama.json(
        "POST", "/api/chat", litellm_chat("qwen3.6:27b", follow_up, stream=False, tools=[WEATHER_TOOL])
    )
    assert "tool_calls" not in second["message"]
    assert "18 degrees and sunny" in second["message"]["content"]


def test_plain_text_when_tools_given_but_not_asked(ollama: Ollama) -> None:
    _, body = ollama.json(
        "POST",
        "/api/chat",
        litellm_chat(
            "qwen3.6:27b", [{"role": "user", "content": "hello"}], stream=False, tools=[WEATHER_TOOL]
        ),
    )
    assert "tool_calls" not in body["message"] and body["message"]["content"].startswith("Hello from")


def test_think_rejected_for_model_without_thinking(ollama: Ollama) -> None:
    body = litellm_chat("qwen2.5:0.5b", [{"role": "user", "content": "hi"}], stream=False, think=True)
    assert ollama.json("POST", "/api/chat", body) == (
        400,
        {"error": '"qwen2.5:0.5b" does not support thinking'},
    )
    assert ollama.json("POST", "/api/chat", {**body, "think": False})[0] == 200
    status, thinking = ollama.json("POST", "/api/chat", {**body, "model": "qwen3:0.6b"})
    assert status == 200 and thinking["message"]["thinking"]


def test_unknown_model_is_404(ollama: Ollama) -> None:
    body = litellm_chat("nope:1b", [{"role": "user", "content": "hi"}], stream=True)
    assert ollama.json("POST", "/api/chat", body) == (404, {"error": "model 'nope:1b' not found"})
    assert ollama.json("POST", "/api/show", {"name": "nope:1b"}) == (
        404,
        {"error": "model 'nope:1b' not found"},
    )


def test_pull_unknown_model_fails_like_ollama(ollama: Ollama) -> None:
    result = ollama.cli("pull", "doesnotexist:7b")
    assert result.returncode == 1
    assert result.stderr.strip() == "Error: pull model manifest: file does not exist"
    assert ollama.json("POST", "/api/pull", {"model": "doesnotexist:7b", "stream": False}) == (
        500,
        {"error": "pull model manifest: file does not exist"},
    )


def test_pull_streams_progress_and_persists_across_restart(start_ollama: Callable[..., Ollama]) -> None:
    first = start_ollama()
    events = first.ndjson("/api/pull", {"model": "gemma4:26b"})
    assert events[0] == {"status": "pulling manifest"} and events[-1] == {"status": "success"}
    model_layer = [e for e in events if e.get("total") == 18019590144]
    assert model_layer[-1]["completed"] == model_layer[-1]["total"]
    first.stop()

    second = start_ollama()
    _, tags = second.json("GET", "/api/tags")
    (entry,) = tags["models"]
    layer_sizes = {e["digest"]: e["total"] for e in events if "digest" in e}
    assert (entry["name"], entry["size"], entry["details"]["family"]) == (
        "gemma4:26b",
        sum(layer_sizes.values()),
        "gemma4",
    )
    assert "gemma4:26b" in second.cli("list").stdout


def test_delete(ollama: Ollama) -> None:
    status, _, _ = ollama.request("DELETE", "/api/delete", {"model": "qwen3:0.6b"})
    assert status == 200
    assert ollama.json("POST", "/api/show", {"model": "qwen3:0.6b"})[0] == 404
    assert ollama.json("DELETE", "/api/delete", {"model": "qwen3:0.6b"}) == (
        404,
        {"error": "model 'qwen3:0.6b' not found"},
    )


def _chat(instance: Ollama, model: str, **extra: Any) -> None:
    status, _ = instance.json(
        "POST", "/api/chat", litellm_chat(model, [{"role": "user", "content": "hi"}], stream=False, **extra)
    )
    assert status == 200


def test_keep_alive_expiry_from_env(start_ollama: Callable[..., Ollama]) -> None:
    instance = start_ollama(OLLAMA_KEEP_ALIVE="1s")
    instance.pull("qwen2.5:0.5b")
    before = time.time()
    _chat(instance, "qwen2.5:0.5b")
    (loaded,) = instance.ps()
    (tag,) = instance.json("GET", "/api/tags")[1]["models"]
    assert loaded["name"] == "qwen2.5:0.5b" and loaded["size_vram"] == loaded["size"] == tag["size"]
    expires = datetime.fromisoformat(loaded["expires_at"]).timestamp()
    assert before + 0.5 < expires < time.time() + 1.5
    wait_until(lambda: instance.ps() == [], timeout=5, what="keep_alive expiry")


def test_keep_alive_per_request(start_ollama: Callable[..., Ollama]) -> None:
    instance = start_ollama(OLLAMA_KEEP_ALIVE="1s")
    instance.pull("qwen2.5:0.5b", "qwen3:0.6b")
    _chat(instance, "qwen2.5:0.5b", keep_alive=-1)  # forever
    _chat(instance, "qwen3:0.6b", keep_alive=0)  # unload right after the request
    (loaded,) = instance.ps()
    assert loaded["name"] == "qwen2.5:0.5b"
    assert datetime.fromisoformat(loaded["expires_at"]).year > 2200
    time.sleep(1.2)
    assert [m["name"] for m in instance.ps()] == ["qwen2.5:0.5b"]
    assert "Forever" in instance.cli("ps").stdout
    assert instance.cli("stop", "qwen2.5:0.5b").returncode == 0
    assert instance.ps() == []


def test_max_loaded_models_evicts_then_loads(start_ollama: Callable[..., Ollama]) -> None:
    instance = start_ollama(OLLAMA_MAX_LOADED_MODELS="1")
    instance.pull("qwen2.5:0.5b", "qwen3:0.6b")
    _chat(instance, "qwen2.5:0.5b")
    _chat(instance, "qwen3:0.6b")
    assert [m["name"] for m in instance.ps()] == ["qwen3:0.6b"]


def test_vram_budget_evicts_the_big_models(start_ollama: Callable[..., Ollama]) -> None:
    instance = start_ollama(OLLAMA_MAX_LOADED_MODELS="3")
    instance.pull("qwen3.6:27b", "gemma4:26b", "qwen2.5:0.5b")
    _chat(instance, "qwen2.5:0.5b")
    _chat(instance, "qwen3.6:27b")
    assert sorted(m["name"] for m in instance.ps()) == ["qwen2.5:0.5b", "qwen3.6:27b"]
    _chat(instance, "gemma4:26b")  # 17 GB + 18 GB do not fit the 24 GiB GPU: evict, then load
    loaded = instance.ps()
    assert "gemma4:26b" in [m["name"] for m in loaded] and "qwen3.6:27b" not in [m["name"] for m in loaded]
    assert sum(m["size_vram"] for m in loaded) <= models.DEFAULT_VRAM_BYTES
    assert "100% GPU" in instance.cli("ps").stdout


def test_without_rocm_addon_models_run_on_cpu(
    start_ollama: Callable[..., Ollama], release: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    cpu_root = tmp_path / "cpu-only"
    cpu_root.mkdir()
    subprocess.run(
        ["tar", "--zstd", "-xf", str(release[0] / build.MAIN_TARBALL), "-C", str(cpu_root)], check=True
    )
    instance = start_ollama(cpu_root)
    instance.pull("qwen2.5:0.5b")
    _chat(instance, "qwen2.5:0.5b")
    (loaded,) = instance.ps()
    assert loaded["size_vram"] == 0 and loaded["size"] > 0
    assert "100% CPU" in instance.cli("ps").stdout


# ====================================================================== Tailscale: pure parts


def test_serve_config_edits_have_the_real_shape() -> None:
    config = state.serve_set({}, DNS_NAME, 443, "router", "http://localhost:4000")
    assert config == {
        "TCP": {"443": {"HTTPS": True}},
        "Web": {f"{DNS_NAME}:443": {"Handlers": {"/router": {"Proxy": "http://localhost:4000"}}}},
    }
    assert state.serve_off(config, DNS_NAME, 443, "/router") == {}
    assert state.normalize_target("4000") == "http://127.0.0.1:4000"
    assert state.normalize_target("localhost:4000") == "http://localhost:4000"


@pytest.mark.parametrize(
    ("path", "mount"),
    [
        ("/router", "/router"),
        ("/router/v1/messages", "/router"),
        ("/routerx", "/"),
        ("/", "/"),
        ("/router/deep/x", "/router/deep"),
    ],
)
def test_match_handler_longest_prefix(path: str, mount: str) -> None:
    handlers = {"/": {"Proxy": "a"}, "/router": {"Proxy": "b"}, "/router/deep": {"Proxy": "c"}}
    matched = state.match_handler(handlers, path)
    assert matched is not None and matched[0] == mount


@pytest.mark.parametrize(
    ("mount", "path", "proxy_path", "expected"),
    [
        ("/router", "/router/v1/messages", "", "/v1/messages"),
        ("/router", "/router", "", "/"),
        ("/router", "/router/v1/models", "/api", "/api/v1/models"),
        ("/", "/v1/messages", "", "/v1/messages"),
    ],
)
def test_upstream_path_strips_the_mount(mount: str, path: str, proxy_path: str, expected: str) -> None:
    assert state.upstream_path(mount, path, proxy_path) == expected


# ====================================================================== Tailscale: CA, CLI, daemon


@pytest.fixture(scope="module")
def lab_certs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, ca.NodeCert]:
    outdir = tmp_path_factory.mktemp("lab-ca")
    return outdir, ca.ensure_node_cert(outdir, DNS_NAME)


def test_ca_is_cached_and_cert_names_the_node(lab_certs: tuple[Path, ca.NodeCert]) -> None:
    outdir, node_cert = lab_certs
    before = {p.name: p.read_bytes() for p in outdir.iterdir()}
    again = ca.ensure_node_cert(outdir, DNS_NAME)
    assert again == node_cert and {p.name: p.read_bytes() for p in outdir.iterdir()} == before
    text = subprocess.run(
        ["openssl", "x509", "-in", str(node_cert.cert), "-noout", "-ext", "subjectAltName"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert f"DNS:{DNS_NAME}" in text


class Tailnet:
    """A tailscaled stand-in on 127.0.0.1 with its state in a tmp dir, plus the CLI."""

    def __init__(self, tmp: Path, certs: ca.NodeCert) -> None:
        config = tmp / "tailscale-standin.json"
        config.write_text(
            json.dumps(
                {
                    "hostname": "p620",
                    "tailnet": "tail1234.ts.net",
                    "tailscale_ips": ["127.0.0.1"],
                    "interface": "lo",
                    "cert_file": str(certs.cert),
                    "key_file": str(certs.key),
                }
            )
        )
        self.env = {
            **os.environ,
            "TAILSCALE_STANDIN_CONFIG": str(config),
            "TAILSCALE_STANDIN_STATE_DIR": str(tmp / "state"),
            "TAILSCALE_STANDIN_SOCKET": str(tmp / "tailscaled.sock"),
            "PYTHONPATH": str(REPO),
        }
        self.socket = tmp / "tailscaled.sock"
        self.state_dir = tmp / "state"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "lab.standins.tailscale.daemon"],
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_until(self.socket.exists, what="tailscaled socket")

    def stop(self) -> None:
        if self.proc is not None:
            stop(self.proc)

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "lab.standins.tailscale.cli", *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )


@pytest.fixture
def tailnet(tmp_path: Path, lab_certs: tuple[Path, ca.NodeCert]) -> Iterator[Tailnet]:
    node = Tailnet(tmp_path, lab_certs[1])
    yield node
    node.stop()


def test_cli_needs_the_daemon(tailnet: Tailnet) -> None:
    result = tailnet.cli("status")
    assert result.returncode == 1 and "failed to connect to local tailscaled" in result.stderr
    assert tailnet.cli("version").returncode == 0


def test_status_json_and_up_down(tailnet: Tailnet) -> None:
    tailnet.start()
    status = json.loads(tailnet.cli("status", "--json").stdout)
    assert status["BackendState"] == "Running"
    assert status["Self"]["DNSName"] == f"{DNS_NAME}." and status["Self"]["HostName"] == "p620"
    assert status["Self"]["TailscaleIPs"] == ["127.0.0.1"]
    assert status["MagicDNSSuffix"] == status["CurrentTailnet"]["MagicDNSSuffix"] == "tail1234.ts.net"
    assert tailnet.cli("status").returncode == 0
    assert tailnet.cli("down").returncode == 0
    stopped = tailnet.cli("status")
    assert stopped.returncode == 1 and stopped.stdout.strip() == "Tailscale is stopped."
    assert json.loads(tailnet.cli("status", "--json").stdout)["BackendState"] == "Stopped"
    assert tailnet.cli("up").returncode == 0
    assert tailnet.cli("status").returncode == 0


def test_serve_status_reset_round_trip_survives_restart(tailnet: Tailnet) -> None:
    tailnet.start()
    assert json.loads(tailnet.cli("serve", "status", "--json").stdout) == {}
    result = tailnet.cli("serve", "--bg", "--https=443", "--set-path=/router", "http://localhost:4000")
    assert result.returncode == 0 and f"https://{DNS_NAME}/router" in result.stdout
    expected = {
        "TCP": {"443": {"HTTPS": True}},
        "Web": {f"{DNS_NAME}:443": {"Handlers": {"/router": {"Proxy": "http://localhost:4000"}}}},
    }
    assert json.loads(tailnet.cli("serve", "status", "--json").stdout) == expected
    tailnet.stop()
    tailnet.start()
    assert json.loads(tailnet.cli("serve", "status", "--json").stdout) == expected
    assert json.loads((tailnet.state_dir / "serve.json").read_text()) == expected
    assert tailnet.cli("serve", "reset").returncode == 0
    assert json.loads(tailnet.cli("serve", "status", "--json").stdout) == {}


class _Backend(BaseHTTPRequestHandler):
    """Records what it received and answers with SSE events spaced in time."""

    protocol_version = "HTTP/1.1"
    seen: ClassVar[list[tuple[str, str, bytes, str]]] = []
    gap = 0.4

    def log_message(self, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.seen.append((self.command, self.path, body, self.headers.get("X-Forwarded-Proto", "")))
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Connection", "close")
        self.end_headers()
        for index in range(3):
            self.wfile.write(f"event: tick\ndata: {index}\n\n".encode())
            self.wfile.flush()
            time.sleep(self.gap)


@pytest.fixture
def sse_backend() -> Iterator[int]:
    _Backend.seen = []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Backend)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield httpd.server_address[1]
    httpd.shutdown()
    httpd.server_close()


class PinnedHTTPS(http.client.HTTPSConnection):
    """HTTPS to 127.0.0.1 while verifying the certificate for the node's DNS name."""

    def connect(self) -> None:
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)  # type: ignore[attr-defined]


def _serve_and_wait(tailnet: Tailnet, backend_port: int) -> int:
    https_port = free_port()
    result = tailnet.cli(
        "serve", "--bg", f"--https={https_port}", "--set-path=/router", f"http://localhost:{backend_port}"
    )
    assert result.returncode == 0, result.stderr
    wait_until(lambda: port_open(https_port), what="the HTTPS listener")
    return https_port


def test_https_proxy_strips_prefix_and_streams(
    tailnet: Tailnet, sse_backend: int, lab_certs: tuple[Path, ca.NodeCert]
) -> None:
    tailnet.start()
    https_port = _serve_and_wait(tailnet, sse_backend)
    context = ssl.create_default_context(cafile=str(lab_certs[0] / "ca.crt"))
    conn = PinnedHTTPS(DNS_NAME, https_port, context=context, timeout=10)
    conn.request(
        "POST",
        "/router/v1/messages?beta=true",
        body=b'{"stream": true}',
        headers={"Content-Type": "application/json"},
    )
    resp = conn.getresponse()
    assert resp.status == 200 and resp.getheader("Content-Type") == "text/event-stream"
    arrivals: list[tuple[float, bytes]] = []
    while line := resp.readline():
        if line.startswith(b"data:"):
            arrivals.append((time.monotonic(), line.strip()))
    conn.close()
    assert [data for _, data in arrivals] == [b"data: 0", b"data: 1", b"data: 2"]
    # Streamed: events arrive as the backend sends them, not all at once at the end.
    assert arrivals[-1][0] - arrivals[0][0] > 1.5 * _Backend.gap
    assert _Backend.seen == [("POST", "/v1/messages?beta=true", b'{"stream": true}', "https")]


def test_https_is_real_tls_and_unknown_paths_404(
    tailnet: Tailnet, sse_backend: int, lab_certs: tuple[Path, ca.NodeCert]
) -> None:
    tailnet.start()
    https_port = _serve_and_wait(tailnet, sse_backend)
    untrusting = PinnedHTTPS(DNS_NAME, https_port, context=ssl.create_default_context(), timeout=5)
    with pytest.raises(ssl.SSLCertVerificationError):
        untrusting.request("GET", "/router/")
    trusting = PinnedHTTPS(
        DNS_NAME,
        https_port,
        timeout=5,
        context=ssl.create_default_context(cafile=str(lab_certs[0] / "ca.crt")),
    )
    trusting.request("GET", "/elsewhere")
    assert trusting.getresponse().status == 404
    trusting.close()
    tailnet.cli("serve", "reset")
    wait_until(lambda: not port_open(https_port), what="the listener to stop after serve reset")


def test_install_into_root_gives_working_launchers(tmp_path: Path) -> None:
    node = {"hostname": "razer", "tailnet": "tail1234.ts.net", "tailscale_ips": ["100.64.0.2"]}
    written = install.install_into(tmp_path, node)
    assert tmp_path / "usr/lib/systemd/system/tailscaled.service" in written
    for launcher in ("usr/bin/tailscale", "usr/sbin/tailscaled"):
        path = tmp_path / launcher
        assert path.stat().st_mode & 0o777 == 0o755 and path.read_text().startswith("#!/usr/bin/python3\n")
    result = subprocess.run(
        [str(tmp_path / "usr/bin/tailscale"), "version"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0 and "STAND-IN" in result.stdout
    assert json.loads((tmp_path / "etc/tailscale-standin.json").read_text())["hostname"] == "razer"
    unit = (tmp_path / "usr/lib/systemd/system/tailscaled.service").read_text()
    assert "ExecStart=/usr/sbin/tailscaled" in unit and "STAND-IN" in unit


def test_local_api_refuses_writes_from_non_root(tmp_path: Path) -> None:
    paths = state.Paths(
        config=tmp_path / "missing.json", state_dir=tmp_path / "state", socket=tmp_path / "sock"
    )
    daemon = TailscaledStandin(paths)
    wanted = state.serve_set({}, DNS_NAME, 443, "/router", "http://localhost:4000")
    assert daemon.local_api({"op": "serve_set", "config": wanted}, peer_uid=1000) == {
        "error": "Access denied: serve config denied"
    }
    assert daemon.local_api({"op": "set_prefs", "WantRunning": False}, peer_uid=1000)["error"].startswith(
        "Access denied"
    )
    assert daemon.local_api({"op": "serve_get"}, peer_uid=1000) == {"config": {}}  # reading is open to all
    assert daemon.local_api({"op": "serve_set", "config": wanted}, peer_uid=0) == {"ok": True}
    assert daemon.local_api({"op": "serve_get"}, peer_uid=1000) == {"config": wanted}
    assert json.loads(paths.serve_file.read_text()) == wanted


def test_context_length_from_env_and_request(start_ollama: Callable[..., Ollama]) -> None:
    instance = start_ollama(OLLAMA_CONTEXT_LENGTH="65536")
    instance.pull("qwen3.6:27b", "qwen2.5:0.5b")
    _chat(instance, "qwen3.6:27b")
    _chat(instance, "qwen2.5:0.5b")  # trained for 32768: capped like real Ollama
    assert {m["name"]: m["context_length"] for m in instance.ps()} == {
        "qwen3.6:27b": 65536,
        "qwen2.5:0.5b": 32768,
    }
    _chat(instance, "qwen3.6:27b", options={"num_ctx": 8192})  # another num_ctx reloads the model
    assert {m["name"]: m["context_length"] for m in instance.ps()}["qwen3.6:27b"] == 8192


def test_tailscaled_notifies_systemd_when_ready(tailnet: Tailnet, tmp_path: Path) -> None:
    notify_path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
        notify.bind(str(notify_path))
        notify.settimeout(10)
        tailnet.env["NOTIFY_SOCKET"] = str(notify_path)
        tailnet.start()
        assert notify.recv(64) == b"READY=1"  # what Type=notify in tailscaled.service waits for
    assert tailnet.cli("status").returncode == 0
