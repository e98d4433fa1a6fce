"""The REAL LiteLLM proxy (pinned, from the offline wheelhouse) in front of the Ollama stand-in.

Everything the router runs on the server is used as deployed: the config is
`build_litellm_config(...)` dumped to YAML, the auth hook, the launcher and the
speed-ups are hostfiles/'s files (bench.local_router), the master key arrives as a systemd-style
credential file, client keys are checked against a hashes file in the format
deploys/keys.py writes. LiteLLM starts once for the module (10-40 s here).

The venv is `.cache/litellm-venv`, built offline from `.cache/wheelhouse` by
`python -m deploys wheelhouse` (downloaded from PyPI on first use, then reused).
"""

from __future__ import annotations

import json
import os
import secrets
import statistics
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from ruamel.yaml import YAML

from bench.local_router import RouterNotLive, start_local_router
from deploys import wheelhouse
from deploys.keys import hashes_document, render_hashes
from inventory.load import load_inventory
from lab.standins.ollama.server import make_server

REPO = Path(__file__).resolve().parent.parent
START_TIMEOUT_S = 180
REQUEST_TIMEOUT_S = 60

THINKING_MODEL = "qwen3.6:27b"  # capabilities: completion, tools, thinking
PLAIN_MODEL = "qwen2.5-coder:14b"  # completion, tools; real Ollama rejects `think` for it
WEATHER_TOOL = {
    "name": "get_weather",
    "description": "Current weather in a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


# --- helpers ----------------------------------------------------------------------------


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def http(method: str, url: str, body: Any = None, headers: dict[str, str] | None = None) -> Reply:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method,
                                     headers={"content-type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT_S) as response:
            return Reply(response.status, {k.lower(): v for k, v in response.headers.items()}, response.read())
    except urllib.error.HTTPError as err:
        return Reply(err.code, {k.lower(): v for k, v in err.headers.items()}, err.read())


def sse_events(url: str, body: Any, headers: dict[str, str]) -> list[tuple[str, dict[str, Any]]]:
    """(event name, data) pairs of a streamed Anthropic response."""
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"content-type": "application/json", **headers})
    events: list[tuple[str, dict[str, Any]]] = []
    name = ""
    with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT_S) as response:
        assert response.status == 200
        assert response.headers.get("content-type", "").startswith("text/event-stream")
        for raw in response:
            line = raw.decode().rstrip("\r\n")
            if line.startswith("event:"):
                name = line.split(":", 1)[1].strip()
            elif line.startswith("data:"):
                data = json.loads(line.split(":", 1)[1].strip())
                events.append((name or data.get("type", ""), data))
                name = ""
    return events


def messages_body(model: str, text: str, **extra: Any) -> dict[str, Any]:
    return {"model": model, "max_tokens": 256, "messages": [{"role": "user", "content": text}], **extra}


def write_atomically(path: Path, text: str) -> None:
    """How the deploy replaces the hashes file: write beside, then rename over it."""
    temp = path.with_name(path.name + ".tmp")
    temp.write_text(text)
    os.replace(temp, path)


# --- the wheelhouse (pure parts) ------------------------------------------------------------

METADATA = """\
Metadata-Version: 2.1
Name: litellm
Version: 9.9.9
Requires-Dist: httpx>=0.28.0,<1.0
Requires-Dist: certifi>=2026.10.19
Requires-Dist: async-timeout>=4.0.3 ; python_full_version < '3.11'
Requires-Dist: uvicorn>=0.33.0,<1.0 ; extra == 'proxy'
Requires-Dist: uvloop>=0.22.1 ; sys_platform != 'win32' and extra == 'proxy'
Requires-Dist: orjson>=3.12.0 ; python_full_version >= '3.15' and extra == 'proxy'
Requires-Dist: ddtrace>=4.8.2 ; extra == 'proxy-runtime'
"""


def test_wheel_requirements_for_the_target_with_certifi_relaxed() -> None:
    assert wheelhouse.wheel_requirements(METADATA) == [
        "httpx<1.0,>=0.28.0", "certifi", "uvicorn<1.0,>=0.33.0", "uvloop>=0.22.1",
    ]


def test_wheelhouse_is_reused_only_while_pins_and_files_match(tmp_path: Path) -> None:
    wheel = tmp_path / "demo-1.0-py3-none-any.whl"
    wheel.write_bytes(b"not really a zip")
    locked = wheelhouse.locked_wheel(wheel)
    assert locked.line.startswith("demo==1.0 --hash=sha256:")
    (tmp_path / wheelhouse.LOCK_FILE).write_text(wheelhouse.lock_text("9.9.9", "0.1.0", [locked]))
    (tmp_path / wheelhouse.MANIFEST_FILE).write_text(json.dumps(
        {"key": wheelhouse.manifest_key("9.9.9", "0.1.0"), "files": {locked.file: locked.sha256}}))
    assert wheelhouse.is_current(tmp_path, "9.9.9", "0.1.0")
    assert not wheelhouse.is_current(tmp_path, "9.9.8", "0.1.0")  # another pin
    wheel.write_bytes(b"tampered")
    assert not wheelhouse.is_current(tmp_path, "9.9.9", "0.1.0")


def test_compromised_release_is_refused(tmp_path: Path) -> None:
    with pytest.raises(wheelhouse.WheelhouseError, match="compromised"):
        wheelhouse.build("1.107.0", dest=tmp_path / "wh", log=lambda *_: None)


# --- fixtures -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def litellm_venv() -> Path:
    lock = wheelhouse.build(log=lambda *_: None)
    return wheelhouse.build_venv(wheelhouse.DEFAULT_VENV, lock.parent, log=lambda *_: None)


@dataclass
class Ollama:
    url: str
    port: int


@pytest.fixture(scope="module")
def ollama(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Ollama]:
    models_dir = tmp_path_factory.mktemp("ollama-models")
    server = make_server("127.0.0.1", 0, {"OLLAMA_MODELS": str(models_dir), "OLLAMA_KEEP_ALIVE": "5m"})
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    port = server.server_address[1]
    url = f"http://127.0.0.1:{port}"
    for model in (THINKING_MODEL, PLAIN_MODEL, "gemma4:26b"):
        reply = http("POST", f"{url}/api/pull", {"model": model, "stream": False})
        assert reply.status == 200, reply.body
    yield Ollama(url, port)
    server.shutdown()
    server.server_close()


def lab_inventory_for(ollama_port: int, directory: Path):
    """The lab inventory, with the stand-in's port and a Claude Code alias on a non-thinking model
    (at the 64k a claude-* alias needs)."""
    yaml = YAML()
    document = yaml.load((REPO / "inventory" / "lab.yaml").read_text())
    document["models"][PLAIN_MODEL] = {"vram_gb": 9, "context_length": 65536, "capabilities": ["completion", "tools"]}
    server = document["hosts"]["p620"]["server"]
    server["ollama"]["port"] = ollama_port
    server["ollama"]["on_demand_models"].append(PLAIN_MODEL)
    server["router"]["aliases"]["claude-haiku-*"] = PLAIN_MODEL
    path = directory / "inventory.yaml"
    with path.open("w") as handle:
        yaml.dump(document, handle)
    return load_inventory(path)


@dataclass
class Router:
    url: str
    master_key: str
    client_keys: dict[str, str]
    hashes_file: Path
    log_file: Path
    process: subprocess.Popen
    inventory: Any

    def log(self) -> str:
        return self.log_file.read_text(errors="replace")

    def key_headers(self, key: str, style: str = "x-api-key") -> dict[str, str]:
        return {"x-api-key": key} if style == "x-api-key" else {"authorization": f"Bearer {key}"}


def new_key() -> str:
    return "sk-" + secrets.token_urlsafe(48)


@pytest.fixture(scope="module")
def router(litellm_venv: Path, ollama: Ollama, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Router]:
    root = tmp_path_factory.mktemp("router")
    inventory = lab_inventory_for(ollama.port, root)
    master_key = new_key()
    client_keys = {"razer": new_key(), "p620": new_key()}
    hashes = render_hashes(hashes_document({c: [k] for c, k in client_keys.items()}))
    local = start_local_router(root, inventory, litellm_venv, master_key, hashes)
    try:
        try:
            print(f"\nLiteLLM live after {local.wait_live(START_TIMEOUT_S):.1f}s")
        except RouterNotLive as err:
            pytest.fail(str(err))
        yield Router(local.url, master_key, client_keys, local.hashes_file, local.log_file, local.process, inventory)
    finally:
        local.stop()


# --- Anthropic /v1/messages -----------------------------------------------------------------


def test_messages_non_streaming_with_master_key(router: Router) -> None:
    reply = http("POST", f"{router.url}/v1/messages", messages_body("claude-sonnet-4-6", "say hi"),
                 router.key_headers(router.master_key))
    assert reply.status == 200, reply.body
    message = reply.json()
    assert message["type"] == "message" and message["role"] == "assistant"
    assert message["model"] == "claude-sonnet-4-6"
    text = "".join(block["text"] for block in message["content"] if block["type"] == "text")
    assert f"model {THINKING_MODEL}" in text  # the stand-in names the model that answered
    assert message["stop_reason"] == "end_turn"
    assert message["usage"]["output_tokens"] > 0


def test_messages_streaming_full_event_sequence(router: Router) -> None:
    events = sse_events(f"{router.url}/v1/messages",
                        messages_body("claude-sonnet-4-6", "say hi", stream=True),
                        router.key_headers(router.master_key))
    names = [name for name, _ in events]
    assert names[0] == "message_start"
    assert names[-2:] == ["message_delta", "message_stop"]
    middle = names[1:-2]
    assert middle[0] == "content_block_start" and middle[-1] == "content_block_stop"
    assert "content_block_delta" in middle
    # Blocks open and close in pairs, deltas only inside an open block.
    open_block = False
    for name in middle:
        if name == "content_block_start":
            assert not open_block
            open_block = True
        elif name == "content_block_stop":
            assert open_block
            open_block = False
        else:
            assert name == "content_block_delta" and open_block
    text = "".join(data["delta"].get("text", "") for name, data in events if name == "content_block_delta")
    assert f"model {THINKING_MODEL}" in text
    assert dict(events)["message_delta"]["delta"]["stop_reason"] == "end_turn"


def test_tool_call_round_trip(router: Router) -> None:
    headers = router.key_headers(router.master_key)
    first = http("POST", f"{router.url}/v1/messages",
                 messages_body("claude-sonnet-4-6", "call tool get_weather", tools=[WEATHER_TOOL]), headers)
    assert first.status == 200, first.body
    answer = first.json()
    assert answer["stop_reason"] == "tool_use"
    calls = [block for block in answer["content"] if block["type"] == "tool_use"]
    assert len(calls) == 1 and calls[0]["name"] == "get_weather"
    assert isinstance(calls[0]["input"].get("city"), str)

    follow_up = {
        "model": "claude-sonnet-4-6", "max_tokens": 256, "tools": [WEATHER_TOOL],
        "messages": [
            {"role": "user", "content": "call tool get_weather"},
            {"role": "assistant", "content": answer["content"]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": calls[0]["id"], "content": "sunny, 21 degrees"},
            ]},
        ],
    }
    second = http("POST", f"{router.url}/v1/messages", follow_up, headers)
    assert second.status == 200, second.body
    text = "".join(b.get("text", "") for b in second.json()["content"] if b["type"] == "text")
    assert "sunny, 21 degrees" in text  # the stand-in quotes the tool result it received


def test_dated_claude_code_id_reaches_wildcard_alias(router: Router) -> None:
    reply = http("POST", f"{router.url}/v1/messages", messages_body("claude-haiku-4-5-20251001", "hi"),
                 router.key_headers(router.master_key))
    assert reply.status == 200, reply.body
    assert f"model {PLAIN_MODEL}" in reply.json()["content"][-1]["text"]


def test_thinking_is_stripped_for_a_model_without_thinking(router: Router, ollama: Ollama) -> None:
    thinking = {"type": "enabled", "budget_tokens": 1024}
    # Without the stripping this is what the request would meet: Ollama refuses `think`.
    direct = http("POST", f"{ollama.url}/api/chat", {
        "model": PLAIN_MODEL, "stream": False, "think": True, "messages": [{"role": "user", "content": "hi"}],
    })
    assert direct.status == 400 and "does not support thinking" in direct.json()["error"]

    reply = http("POST", f"{router.url}/v1/messages",
                 messages_body("claude-haiku-4-5-20251001", "hi", max_tokens=2048, thinking=thinking),
                 router.key_headers(router.master_key))
    assert reply.status == 200, reply.body
    assert all(block["type"] != "thinking" for block in reply.json()["content"])

    chat = http("POST", f"{router.url}/v1/chat/completions", {
        "model": "claude-haiku-4-5", "reasoning_effort": "high", "messages": [{"role": "user", "content": "hi"}],
    }, router.key_headers(router.master_key))
    assert chat.status == 200, chat.body


def test_thinking_still_reaches_a_thinking_model(router: Router) -> None:
    reply = http("POST", f"{router.url}/v1/messages",
                 messages_body("claude-sonnet-4-6", "hi", max_tokens=2048,
                               thinking={"type": "enabled", "budget_tokens": 1024}),
                 router.key_headers(router.master_key))
    assert reply.status == 200, reply.body
    assert any(block["type"] == "thinking" for block in reply.json()["content"])


def test_unknown_model_is_a_clear_client_error(router: Router) -> None:
    reply = http("POST", f"{router.url}/v1/messages", messages_body("no-such-model", "hi"),
                 router.key_headers(router.master_key))
    assert 400 <= reply.status < 500, reply.body
    assert "no-such-model" in reply.body.decode()


# --- OpenAI-compatible endpoints ---------------------------------------------------------------


def test_chat_completions_with_client_key(router: Router) -> None:
    reply = http("POST", f"{router.url}/v1/chat/completions",
                 {"model": "qwen3.6", "messages": [{"role": "user", "content": "hi"}]},
                 router.key_headers(router.client_keys["p620"], "bearer"))
    assert reply.status == 200, reply.body
    choice = reply.json()["choices"][0]
    assert choice["message"]["role"] == "assistant"
    assert f"model {THINKING_MODEL}" in choice["message"]["content"]


def test_models_lists_aliases_and_native_names(router: Router) -> None:
    reply = http("GET", f"{router.url}/v1/models", headers=router.key_headers(router.client_keys["razer"]))
    assert reply.status == 200, reply.body
    listed = {entry["id"]: entry for entry in reply.json()["data"]}
    assert {"claude-sonnet-4-6", "qwen3.6", "gemma4", THINKING_MODEL, PLAIN_MODEL} <= set(listed)
    # The local context, not the cloud model's (LiteLLM's cost map says 1M for claude-sonnet-4-6).
    context = router.inventory.models[THINKING_MODEL].context_length
    assert listed["claude-sonnet-4-6"]["max_input_tokens"] == context
    assert listed[PLAIN_MODEL]["max_input_tokens"] == router.inventory.models[PLAIN_MODEL].context_length


# --- keys ------------------------------------------------------------------------------------


def test_missing_key_is_401(router: Router) -> None:
    reply = http("POST", f"{router.url}/v1/messages", messages_body("claude-sonnet-4-6", "hi"))
    assert reply.status == 401, reply.body


@pytest.mark.parametrize("style", ["x-api-key", "bearer"])
def test_wrong_key_is_401_not_400_or_500(router: Router, style: str) -> None:
    reply = http("POST", f"{router.url}/v1/messages", messages_body("claude-sonnet-4-6", "hi"),
                 router.key_headers(new_key(), style))
    assert reply.status == 401, reply.body
    assert "No connected db" not in reply.body.decode()


@pytest.mark.parametrize("style", ["x-api-key", "bearer"])
def test_client_key_works_and_the_log_names_the_client(router: Router, style: str) -> None:
    before = router.log().count("client=razer ")
    reply = http("POST", f"{router.url}/v1/messages", messages_body("claude-sonnet-4-6", "hi"),
                 router.key_headers(router.client_keys["razer"], style))
    assert reply.status == 200, reply.body
    deadline = time.monotonic() + 5
    while router.log().count("client=razer ") == before and time.monotonic() < deadline:
        time.sleep(0.1)
    lines = [line for line in router.log().splitlines() if "client=razer " in line]
    assert len(lines) > before
    assert "route=/v1/messages" in lines[-1]


def test_client_key_cannot_use_admin_routes(router: Router) -> None:
    assert http("GET", f"{router.url}/model/info",
                headers=router.key_headers(router.client_keys["razer"])).status == 200
    for route in ("/key/list", "/config/yaml", "/user/list"):
        reply = http("GET", f"{router.url}{route}", headers=router.key_headers(router.client_keys["razer"]))
        assert reply.status == 401, (route, reply.body)


def test_rotation_and_revocation_need_no_restart(router: Router) -> None:
    body = messages_body("claude-sonnet-4-6", "hi")
    old, new = router.client_keys["razer"], new_key()
    p620 = router.client_keys["p620"]

    def status(key: str) -> int:
        return http("POST", f"{router.url}/v1/messages", body, router.key_headers(key)).status

    # During a rotation the server accepts old and new.
    write_atomically(router.hashes_file, render_hashes(hashes_document({"razer": [old, new], "p620": [p620]})))
    assert (status(old), status(new), status(p620)) == (200, 200, 200)
    # At its end the old one is dropped.
    write_atomically(router.hashes_file, render_hashes(hashes_document({"razer": [new], "p620": [p620]})))
    assert (status(old), status(new), status(p620)) == (401, 200, 200)
    # Revocation: razer removed from the inventory, so from the file.
    write_atomically(router.hashes_file, render_hashes(hashes_document({"p620": [p620]})))
    assert (status(new), status(p620)) == (401, 200)
    assert status(router.master_key) == 200
    assert router.process.poll() is None  # the same process all along
    router.client_keys["razer"] = new
    write_atomically(router.hashes_file, render_hashes(hashes_document(
        {c: [k] for c, k in router.client_keys.items()})))


def test_a_broken_or_missing_hashes_file_refuses_client_keys_only(router: Router) -> None:
    body = messages_body("claude-sonnet-4-6", "hi")
    razer = router.client_keys["razer"]

    def status(key: str) -> int:
        return http("POST", f"{router.url}/v1/messages", body, router.key_headers(key)).status

    good = router.hashes_file.read_text()
    assert status(razer) == 200
    write_atomically(router.hashes_file, good[: len(good) // 2])  # a torn write, say
    assert (status(razer), status(router.master_key)) == (401, 200)
    router.hashes_file.unlink()
    assert (status(razer), status(router.master_key)) == (401, 200)
    write_atomically(router.hashes_file, good)
    assert status(razer) == 200
    assert "unreadable" in router.log() and "is gone" in router.log()


def test_no_key_in_the_log(router: Router) -> None:
    log = router.log()
    assert log  # it did log (requests, client lines)
    for key in (router.master_key, *router.client_keys.values()):
        assert key not in log
        assert key[3:20] not in log


HOOK_UNIT_CHECKS = r"""
import hashlib, json
from hostfiles import router_auth as hook
h = lambda key: hashlib.sha256(key.encode()).hexdigest()
results = {}
for name, text in {
    "not json": "{", "no clients": '{"keys": {}}', "clients not a map": '{"clients": []}',
    "hashes not a list": '{"clients": {"a": "%s"}}' % h("k"),
    "upper-case hex": '{"clients": {"a": ["%s"]}}' % h("k").upper(),
    "short hex": '{"clients": {"a": ["abc"]}}',
}.items():
    try:
        hook.parse_key_hashes(text)
        results[name] = "accepted"
    except ValueError:
        results[name] = "refused"
table = hook.parse_key_hashes(json.dumps({"clients": {"razer": [h("old"), h("new")], "p620": [h("p")]}}))
results["match"] = [hook.match_client(table, h(k)) for k in ("old", "new", "p", "other")]
results["routes"] = {r: hook.client_may_call(r) for r in (
    "/v1/messages", "/v1/messages/count_tokens", "/v1/chat/completions", "/v1/models", "/v1/messagesX",
    "/key/generate", "/anthropic/v1/messages", "/config/update", "/")}
print(json.dumps(results))
"""


def test_auth_hook_parsing_matching_and_routes(litellm_venv: Path) -> None:
    """The hook's pure parts, run by the router venv's python, as on the server."""
    result = subprocess.run([str(litellm_venv / "bin" / "python"), "-c", HOOK_UNIT_CHECKS], cwd=REPO,
                            check=True, capture_output=True, text=True,
                            env={**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True"}, timeout=120)
    results = json.loads(result.stdout.strip().splitlines()[-1])
    for malformed in ("not json", "no clients", "clients not a map", "hashes not a list", "upper-case hex",
                      "short hex"):
        assert results[malformed] == "refused", malformed
    assert results["match"] == ["razer", "razer", "p620", None]
    assert results["routes"] == {
        "/v1/messages": True, "/v1/messages/count_tokens": True, "/v1/chat/completions": True,
        "/v1/models": True, "/v1/messagesX": False, "/key/generate": False,
        "/anthropic/v1/messages": False, "/config/update": False, "/": False,
    }


SPEEDUP_CHECKS = r"""
import json, sys
from hostfiles import router_auth, router_speedups
assert "litellm" not in sys.modules  # importing the auth hook changes nothing in LiteLLM
router_speedups.install()  # what the router process does first, in each worker
import litellm
from fastapi import APIRouter, FastAPI
from litellm.llms.ollama.common_utils import OllamaModelInfo
from litellm.proxy import _lazy_features
results = {}

# The cached static-model check answers as before, and sees a model registered later.
name = "ollama_chat/llm-router-test-model:1b"
results["static before"] = [OllamaModelInfo._is_static_ollama_model(m) for m in ("ollama/llama3", name)]
litellm.register_model({name: {"litellm_provider": "ollama", "mode": "chat",
                               "input_cost_per_token": 0, "output_cost_per_token": 0}})
results["static after register"] = OllamaModelInfo._is_static_ollama_model(name)

def router(*paths):
    r = APIRouter()
    for path in paths:
        r.add_api_route(path, lambda: None, methods=["POST"])
    return r

def order(*routers):
    app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)
    for r in routers:
        app.include_router(r)
    first_paths = lambda routes: [[x.path for x in r.original_router.routes] if hasattr(r, "original_router")
                                  else [getattr(r, "path", "?")] for r in routes]
    return first_paths(_lazy_features.hot_routes_first(app.router.routes))

# A late included router serving /v1/messages moves to the front...
results["hoisted"] = order(router("/a"), router("/b/{x}"), router("/v1/messages", "/v1/messages/count_tokens"))
# ...but not past a route that already answers one of its paths (precedence unchanged).
results["shadowed"] = order(router("/v1/{rest:path}"), router("/v1/messages"))
print(json.dumps(results))
"""


def test_speedups_keep_litellms_answers(litellm_venv: Path) -> None:
    """The speed-ups of LiteLLM's request path, run by the router venv's python."""
    result = subprocess.run([str(litellm_venv / "bin" / "python"), "-c", SPEEDUP_CHECKS], cwd=REPO,
                            check=True, capture_output=True, text=True,
                            env={**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True"}, timeout=180)
    assert "speed-ups: otel-import=on ollama-static-model=on hot-routes=on" in result.stderr
    results = json.loads(result.stdout.strip().splitlines()[-1])
    assert results["static before"] == [True, False]
    assert results["static after register"] is True
    assert results["hoisted"] == [["/v1/messages", "/v1/messages/count_tokens"], ["/a"], ["/b/{x}"]]
    assert results["shadowed"] == [["/v1/{rest:path}"], ["/v1/messages"]]


def test_the_router_runs_with_the_speedups_and_without_cost_warnings(router: Router) -> None:
    headers = router.key_headers(router.client_keys["p620"])
    for _ in range(3):
        assert http("POST", f"{router.url}/v1/messages", messages_body("claude-sonnet-4-6", "hi"), headers).status == 200
    log = router.log()
    assert "speed-ups: otel-import=on ollama-static-model=on hot-routes=on" in log
    # Explicitly free deployments: no start warning about cache rates, no $0 diagnostic.
    assert "has custom pricing but not in built-in cost map" not in log
    assert "priced at $0" not in log


# --- figures (printed, not asserted) ------------------------------------------------------------


def test_print_router_overhead(router: Router, ollama: Ollama) -> None:
    rounds = 40
    direct_body = {"model": THINKING_MODEL, "stream": False, "messages": [{"role": "user", "content": "hi"}]}
    routed_body = messages_body("claude-sonnet-4-6", "hi")
    headers = router.key_headers(router.client_keys["p620"])

    def timed(call) -> list[float]:
        call()  # warm
        samples = []
        for _ in range(rounds):
            start = time.perf_counter()
            reply = call()
            samples.append((time.perf_counter() - start) * 1000)
            assert reply.status == 200
        return sorted(samples)

    direct = timed(lambda: http("POST", f"{ollama.url}/api/chat", direct_body))
    routed = timed(lambda: http("POST", f"{router.url}/v1/messages", routed_body, headers))

    def p(samples: list[float], q: float) -> float:
        return samples[min(len(samples) - 1, int(q * len(samples)))]

    print(f"\nnon-streaming, sequential, {rounds} requests (ms):"
          f"\n  direct to the stand-in  p50 {statistics.median(direct):7.1f}  p95 {p(direct, 0.95):7.1f}"
          f"\n  through LiteLLM         p50 {statistics.median(routed):7.1f}  p95 {p(routed, 0.95):7.1f}")
