"""LAB STAND-IN for Ollama: the HTTP API server (`ollama serve`).

Stand-in because the real Ollama cannot be fetched in the lab sandbox; see
``__init__``. Status codes and error bodies follow real Ollama's server/routes.go
(e.g. 404 {"error":"model 'x' not found"}, 400 {"error":"\\"x\\" does not support
thinking"}). Request bodies are parsed as JSON whatever the Content-Type
(LiteLLM sends application/octet-stream).
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from . import models, replies
from .models import InstalledModel, ModelStore, Scheduler

DEFAULT_PORT = 11434
# Tokens real Ollama's runner keeps from the start of a truncated prompt (its log's keep=).
TRUNCATE_KEEP = 4


def parse_ollama_host(value: str | None) -> tuple[str, int]:
    """OLLAMA_HOST ("127.0.0.1:11434", "0.0.0.0", ":11434", "http://[::1]:8080") -> (host, port)."""
    value = (value or "").strip()
    if not value:
        return "127.0.0.1", DEFAULT_PORT
    if "://" not in value:
        value = "http://" + value
    parts = urlsplit(value)
    return parts.hostname or "0.0.0.0", parts.port or DEFAULT_PORT


class OllamaState:
    def __init__(self, environ: dict[str, str]) -> None:
        models_dir = environ.get("OLLAMA_MODELS") or str(Path.home() / ".ollama" / "models")
        self.store = ModelStore(Path(models_dir), models.load_catalogue())
        self.gpu = models.rocm_installed()
        vram = int(environ.get("OLLAMA_STANDIN_VRAM_BYTES", models.DEFAULT_VRAM_BYTES))
        self.scheduler = Scheduler(
            models.env_keep_alive(environ),
            models.env_max_loaded(environ),
            self.gpu,
            vram,
            models.env_context_length(environ),
        )


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _dumps(obj: Any) -> bytes:
    """Compact like Go's encoding/json."""
    return json.dumps(obj, separators=(",", ":")).encode()


def _model_not_found(raw: str) -> ApiError:
    return ApiError(404, f"model '{raw}' not found")


def _num_ctx(body: dict[str, Any]) -> int | None:
    """options.num_ctx of a request (LiteLLM passes it through when set)."""
    options = body.get("options")
    value = options.get("num_ctx") if isinstance(options, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def _think_requested(think: Any) -> bool:
    """Go's ThinkValue.Bool(): true for true and for a level string ("high", ...)."""
    return think is True or (isinstance(think, str) and think not in ("", "false"))


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # As Ollama (Go's net/http sets TCP_NODELAY on every connection): headers and body go out as
    # two writes, and with Nagle a kept-alive client would wait ~40 ms for its delayed ACK each time.
    disable_nagle_algorithm = True
    state: OllamaState  # set on the subclass made by make_server

    def version_string(self) -> str:
        return "ollama-standin"

    # ------------------------------------------------------------ plumbing

    def log_message(self, format: str, *args: Any) -> None:
        pass  # we log GIN-style lines in _log instead

    def _log(self, status: int, started: float) -> None:
        elapsed_ms = (time.monotonic() - started) * 1000
        stamp = time.strftime("%Y/%m/%d - %H:%M:%S")
        sys.stderr.write(
            f"[GIN] {stamp} | {status:3d} | {elapsed_ms:10.3f}ms | {self.client_address[0]:>15} "
            f'| {self.command:<7} "{urlsplit(self.path).path}"\n'
        )
        sys.stderr.flush()

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            body = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline().strip():
                        pass
                    return body
                body += self.rfile.read(size)
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _json_body(self) -> dict[str, Any]:
        raw = self._read_body()
        if not raw.strip():
            raise ApiError(400, "missing request body")
        try:
            body = json.loads(raw)
        except ValueError as exc:
            raise ApiError(400, f"invalid character in request body: {exc}") from None
        if not isinstance(body, dict):
            raise ApiError(400, "json: cannot unmarshal into Go value of type api.Request")
        return body

    def _send(self, status: int, body: bytes, content_type: str) -> int:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
        return status

    def _send_json(self, status: int, obj: Any) -> int:
        return self._send(status, _dumps(obj), "application/json; charset=utf-8")

    def _stream(self, events: Any) -> int:
        """NDJSON over chunked encoding, one JSON object per line, flushed as produced."""
        self.send_response(200)
        self.send_header("Content-Type", "application/x-ndjson")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for event in events:
            line = _dumps(event) + b"\n"
            self.wfile.write(f"{len(line):x}\r\n".encode() + line + b"\r\n")
            self.wfile.flush()
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()
        return 200

    def _dispatch(self, routes: dict[str, Any]) -> None:
        started = time.monotonic()
        path = urlsplit(self.path).path
        route = routes.get(path)
        try:
            if route is None:
                self._read_body()
                status = self._send(404, b"404 page not found", "text/plain")
            else:
                status = route()
        except ApiError as err:
            status = self._send_json(err.status, {"error": err.message})
        except (BrokenPipeError, ConnectionResetError):
            status = 499
        self._log(status, started)

    def do_GET(self) -> None:
        self._dispatch(
            {"/": self.root, "/api/version": self.version, "/api/tags": self.tags, "/api/ps": self.ps}
        )

    def do_HEAD(self) -> None:
        self._dispatch({"/": self.root, "/api/version": self.version, "/api/tags": self.tags})

    def do_POST(self) -> None:
        self._dispatch(
            {
                "/api/chat": self.chat,
                "/api/generate": self.generate,
                "/api/show": self.show,
                "/api/pull": self.pull,
            }
        )

    def do_DELETE(self) -> None:
        self._dispatch({"/api/delete": self.delete})

    # ------------------------------------------------------------ helpers

    def _installed(self, body: dict[str, Any]) -> tuple[str, InstalledModel]:
        raw = body.get("model") or body.get("name") or ""
        if not raw:
            raise ApiError(400, "model is required")
        name = models.parse_model_name(raw)
        installed = self.state.store.get(name) if name else None
        if installed is None:
            raise _model_not_found(raw)
        return raw, installed

    def _keep_alive(self, body: dict[str, Any]) -> float | None:
        try:
            return models.parse_keep_alive(body.get("keep_alive"))
        except ValueError as exc:
            raise ApiError(400, str(exc)) from None

    def _check_capabilities(self, raw: str, installed: InstalledModel, body: dict[str, Any]) -> bool:
        """Real Ollama's order: thinking first, then tools. Returns whether to think."""
        caps = installed.capabilities
        think = body.get("think")
        if "thinking" not in caps and _think_requested(think):
            raise ApiError(400, f"{json.dumps(raw)} does not support thinking")
        if body.get("tools") and "tools" not in caps:
            raise ApiError(400, f"{installed.name.full} does not support tools")
        return "thinking" in caps and _think_requested(think)

    @staticmethod
    def _fit_prompt(raw: str, context: int, pieces: list[str], count: int) -> int:
        """Log the prompt's pieces and fit it to the context; return the tokens evaluated.

        Real Ollama does not refuse a chat prompt over its context: the runner logs
        `msg="truncating input prompt" limit=... prompt=... keep=... new=...` (WARN) and drops
        tokens after the first `keep` (the system prompt and tool definitions go first);
        since 2025 it keeps about half the window (ollama/ollama#17427). The stand-in logs the
        same line and reports the truncated count as prompt_eval_count, as Ollama does.
        The INFO line lists each piece's tokens and hash: how much of a prompt repeats the
        previous one as an exact prefix (what Ollama's cache can reuse) is read from it.
        """
        listing = ",".join(f"{replies.token_count(p)}:{hashlib.sha256(p.encode()).hexdigest()[:12]}" for p in pieces)
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
        sys.stderr.write(f'time={stamp} level=INFO source=standin msg="prompt" model={raw} limit={context} '
                         f"prompt={count} pieces={listing}\n")
        if count > context:
            keep, new = TRUNCATE_KEEP, context // 2 + 2
            sys.stderr.write(f'time={stamp} level=WARN source=runner.go:159 msg="truncating input prompt" '
                             f"limit={context} prompt={count} keep={keep} new={new}\n")
            count = new
        sys.stderr.flush()
        return count

    @staticmethod
    def _metrics(prompt_count: int, eval_count: int) -> dict[str, int]:
        prompt_ns, eval_ns, load_ns = prompt_count * 1_000_000, eval_count * 20_000_000, 5_000_000
        return {
            "total_duration": load_ns + prompt_ns + eval_ns,
            "load_duration": load_ns,
            "prompt_eval_count": prompt_count,
            "prompt_eval_duration": prompt_ns,
            "eval_count": eval_count,
            "eval_duration": eval_ns,
        }

    # ------------------------------------------------------------ endpoints

    def root(self) -> int:
        return self._send(200, b"Ollama is running", "text/plain; charset=utf-8")

    def version(self) -> int:
        return self._send_json(200, {"version": models.version()})

    def tags(self) -> int:
        entries = [
            {
                "name": m.name.short,
                "model": m.name.short,
                "modified_at": models.iso_local(m.modified_at),
                "size": m.size,
                "digest": m.digest,
                "details": m.details(),
            }
            for m in self.state.store.list()
        ]
        return self._send_json(200, {"models": entries})

    def ps(self) -> int:
        entries = [
            {
                "name": lm.model.name.short,
                "model": lm.model.name.short,
                "size": lm.model.size,
                "digest": lm.model.digest,
                "details": lm.model.details(),
                "expires_at": models.expires_at_text(lm),
                "size_vram": lm.size_vram,
                "context_length": lm.context_length,
            }
            for lm in self.state.scheduler.running()
        ]
        return self._send_json(200, {"models": entries})

    def show(self) -> int:
        _, m = self._installed(self._json_body())
        caps = m.capabilities
        arch = m.details()["family"] or "llama"
        template = models.template_for(caps)
        return self._send_json(
            200,
            {
                "license": "Lab stand-in model: no license, no weights.",
                "modelfile": f'# Modelfile generated by "ollama show"\n# LAB STAND-IN\nFROM {m.name.short}\n'
                f'TEMPLATE """{template}"""\nPARAMETER temperature 0.7\n',
                "parameters": "temperature                    0.7\ntop_p                          0.8",
                "template": template,
                "details": m.details(),
                "model_info": {
                    "general.architecture": arch,
                    "general.file_type": 15,
                    "general.parameter_count": int(m.config.get("parameter_count", 0)),
                    "general.quantization_version": 2,
                    f"{arch}.context_length": m.context_length,
                    f"{arch}.embedding_length": 4096,
                    f"{arch}.block_count": 48,
                },
                "capabilities": caps,
                "modified_at": models.iso_local(m.modified_at),
            },
        )

    def chat(self) -> int:
        body = self._json_body()
        raw, installed = self._installed(body)
        think = self._check_capabilities(raw, installed, body)
        keep_alive = self._keep_alive(body)
        messages = [m for m in body.get("messages") or [] if isinstance(m, dict)]
        tools = body.get("tools") or []
        scheduler = self.state.scheduler
        if not messages:  # load / unload request
            if keep_alive == 0:
                scheduler.unload(installed.name)
            else:
                scheduler.use(installed, keep_alive, context_length=_num_ctx(body))
            return self._send_json(
                200,
                {
                    "model": raw,
                    "created_at": models.iso_utc_now(),
                    "message": {"role": "assistant", "content": ""},
                    "done_reason": "unload" if keep_alive == 0 else "load",
                    "done": True,
                },
            )
        context = scheduler.use(installed, keep_alive, context_length=_num_ctx(body))
        reply = replies.compose_reply(raw, messages, tools, think)
        prompt_count = self._fit_prompt(raw, context, replies.prompt_pieces(messages, tools),
                                        replies.prompt_tokens(messages, tools))
        eval_count = replies.token_count(reply.content + (reply.thinking or "")) + 8 * len(reply.tool_calls)
        final = {
            "model": raw,
            "created_at": models.iso_utc_now(),
            "message": {"role": "assistant", "content": ""},
            "done_reason": "stop",
            "done": True,
            **self._metrics(prompt_count, eval_count),
        }
        if body.get("stream") is False:
            message: dict[str, Any] = {"role": "assistant", "content": reply.content}
            if reply.thinking:
                message["thinking"] = reply.thinking
            if reply.tool_calls:
                message["tool_calls"] = reply.tool_calls
            return self._send_json(200, {**final, "message": message})
        return self._stream(self._chat_events(raw, reply, final))

    @staticmethod
    def _chat_events(raw: str, reply: replies.Reply, final: dict[str, Any]) -> Any:
        def chunk(**message: Any) -> dict[str, Any]:
            return {
                "model": raw,
                "created_at": models.iso_utc_now(),
                "message": {"role": "assistant", "content": "", **message},
                "done": False,
            }

        if reply.thinking:
            for piece in replies.content_pieces(reply.thinking):
                yield chunk(thinking=piece)
        for piece in replies.content_pieces(reply.content):
            yield chunk(content=piece)
        if reply.tool_calls:
            yield chunk(tool_calls=reply.tool_calls)
        yield {**final, "created_at": models.iso_utc_now()}

    def generate(self) -> int:
        body = self._json_body()
        raw, installed = self._installed(body)
        think = self._check_capabilities(raw, installed, body)
        keep_alive = self._keep_alive(body)
        prompt = str(body.get("prompt") or "")
        base = {"model": raw, "created_at": models.iso_utc_now(), "response": "", "done": True}
        if not prompt:
            if keep_alive == 0:
                self.state.scheduler.unload(installed.name)
                return self._send_json(200, {**base, "done_reason": "unload"})
            self.state.scheduler.use(installed, keep_alive, context_length=_num_ctx(body))
            return self._send_json(200, base)
        self.state.scheduler.use(installed, keep_alive, context_length=_num_ctx(body))
        messages = [{"role": "user", "content": prompt}]
        reply = replies.compose_reply(raw, messages, [], think)
        final = {
            **base,
            "done_reason": "stop",
            **self._metrics(replies.prompt_tokens(messages, []), replies.token_count(reply.content)),
        }
        if body.get("stream") is False:
            return self._send_json(200, {**final, "response": reply.content})
        pieces = (
            {"model": raw, "created_at": models.iso_utc_now(), "response": p, "done": False}
            for p in replies.content_pieces(reply.content)
        )
        return self._stream([*pieces, final])

    def pull(self) -> int:
        body = self._json_body()
        raw = body.get("model") or body.get("name") or ""
        name = models.parse_model_name(raw)
        if name is None:
            raise ApiError(400, "invalid model name")
        events = self.state.store.pull(name)
        if body.get("stream") is False:
            last: dict[str, Any] = {}
            for event in events:
                if "error" in event:
                    raise ApiError(500, event["error"])
                last = event
            return self._send_json(200, last)
        return self._stream(events)

    def delete(self) -> int:
        body = self._json_body()
        raw = body.get("model") or body.get("name") or ""
        name = models.parse_model_name(raw)
        if name is None or not self.state.store.delete(name):
            raise _model_not_found(raw)
        self.state.scheduler.unload(name)
        return self._send(200, b"", "text/plain")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128


def make_server(host: str, port: int, environ: dict[str, str] | None = None) -> ThreadingHTTPServer:
    state = OllamaState(dict(os.environ if environ is None else environ))
    handler = type("BoundHandler", (Handler,), {"state": state})
    server_class = _Server
    if ":" in host:
        server_class = type("_Server6", (_Server,), {"address_family": socket.AF_INET6})
    return server_class((host, port), handler)


def serve(environ: dict[str, str] | None = None) -> int:
    env = dict(os.environ if environ is None else environ)
    host, port = parse_ollama_host(env.get("OLLAMA_HOST"))
    try:
        server = make_server(host, port, env)
    except OSError as err:  # worded like the real binary's Go error
        print(
            f"Error: listen tcp {host}:{port}: bind: {err.strerror.lower() if err.strerror else err}",
            file=sys.stderr,
        )
        return 1
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    log = sys.stderr.write
    log(f'time={stamp} level=INFO source=routes.go:1 msg="LAB STAND-IN for Ollama (not the real server)"\n')
    log(
        f'time={stamp} level=INFO source=routes.go:1 msg="Listening on {host}:{port} '
        f'(version {models.version()})"\n'
    )
    if models.rocm_installed():
        log(
            f'time={stamp} level=INFO source=types.go:1 msg="inference compute" id=0 library=ROCm '
            f'compute=gfx1100 name="Radeon RX 7900 XTX (lab stand-in)" total="24.0 GiB"\n'
        )
    else:
        log(f'time={stamp} level=INFO source=gpu.go:1 msg="no compatible GPUs were discovered"\n')
        log(f'time={stamp} level=INFO source=types.go:1 msg="inference compute" id=cpu library=cpu\n')
    sys.stderr.flush()
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0
