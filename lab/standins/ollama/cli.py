"""LAB STAND-IN for the `ollama` command line (the real binary cannot be fetched here).

Verbs: serve, pull, list/ls, ps, rm, stop, run, show, --version/-v. Like the
real client, everything but `serve` talks to the server at OLLAMA_HOST.
"""

from __future__ import annotations

import json
import os
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import datetime
from typing import Any

from . import models
from .server import parse_ollama_host, serve

STANDIN_MARK = "(lab stand-in)"
USAGE = """Large language model runner (LAB STAND-IN)

Usage:
  ollama [flags]
  ollama [command]

Available Commands:
  serve       Start ollama
  show        Show information for a model
  run         Run a model
  stop        Stop a running model
  pull        Pull a model from a registry
  list        List models
  ps          List running models
  rm          Remove a model

Flags:
  -h, --help      help for ollama
  -v, --version   Show version information
"""


class ClientError(Exception):
    pass


def _base_url() -> str:
    host, port = parse_ollama_host(os.environ.get("OLLAMA_HOST"))
    host = "127.0.0.1" if host in ("0.0.0.0", "") else host
    host = f"[{host}]" if ":" in host else host
    return f"http://{host}:{port}"


def _request(method: str, path: str, body: dict[str, Any] | None = None, timeout: float = 600):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(
        _base_url() + path, data=data, method=method, headers={"Content-Type": "application/json"}
    )
    try:
        return urllib.request.urlopen(req, timeout=timeout)
    except urllib.error.HTTPError as err:
        try:
            message = json.loads(err.read()).get("error", err.reason)
        except ValueError:
            message = err.reason
        raise ClientError(message) from None
    except (urllib.error.URLError, ConnectionError):
        raise ClientError("could not connect to ollama server, run 'ollama serve' to start it") from None


def _get_json(method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    with _request(method, path, body) as resp:
        raw = resp.read()
    return json.loads(raw) if raw.strip() else {}


def _ndjson(method: str, path: str, body: dict[str, Any]) -> Iterator[dict[str, Any]]:
    with _request(method, path, body) as resp:
        for line in resp:
            if line.strip():
                event = json.loads(line)
                if "error" in event:
                    raise ClientError(event["error"])
                yield event


def human_bytes(size: float) -> str:
    """Ollama's format.HumanBytes: decimal units, integer above 10."""
    for unit, factor in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if size >= factor:
            value = size / factor
            return f"{value:.0f} {unit}" if value >= 10 else f"{value:.1f} {unit}"
    return f"{int(size)} B"


def human_duration(seconds: float) -> str:
    seconds = abs(seconds)
    if seconds < 1:
        return "Less than a second"
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60), ("second", 1)):
        if seconds >= size:
            count = int(seconds // size)
            return f"About a {unit}" if count == 1 and unit != "second" else f"{count} {unit}s"
    return "Less than a second"


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("    ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


def cmd_version() -> int:
    try:
        server_version = _get_json("GET", "/api/version")["version"]
    except ClientError:
        print("Warning: could not connect to a running Ollama instance")
        print(f"Warning: client version is {models.version()} {STANDIN_MARK}")
        return 0
    print(f"ollama version is {server_version} {STANDIN_MARK}")
    if server_version != models.version():
        print(f"Warning: client version is {models.version()} {STANDIN_MARK}")
    return 0


def cmd_pull(name: str) -> int:
    last_status = None
    for event in _ndjson("POST", "/api/pull", {"model": name}):
        status = event.get("status", "")
        if "total" in event:
            if event.get("completed") == event["total"]:
                print(f"{status}: 100% {human_bytes(event['total'])}", flush=True)
        elif status != last_status:
            print(status, flush=True)
        last_status = status
    return 0


def cmd_list() -> int:
    rows = [["NAME", "ID", "SIZE", "MODIFIED"]]
    now = time.time()
    for m in _get_json("GET", "/api/tags")["models"]:
        modified = datetime.fromisoformat(m["modified_at"]).timestamp()
        rows.append(
            [m["name"], m["digest"][:12], human_bytes(m["size"]), f"{human_duration(now - modified)} ago"]
        )
    print(_table(rows))
    return 0


def cmd_ps() -> int:
    rows = [["NAME", "ID", "SIZE", "PROCESSOR", "CONTEXT", "UNTIL"]]
    now = time.time()
    for m in _get_json("GET", "/api/ps")["models"]:
        processor = (
            "100% GPU"
            if m["size_vram"] == m["size"]
            else (
                "100% CPU"
                if m["size_vram"] == 0
                else f"{100 - round(100 * m['size_vram'] / m['size'])}%/{round(100 * m['size_vram'] / m['size'])}% CPU/GPU"
            )
        )
        left = datetime.fromisoformat(m["expires_at"]).timestamp() - now
        until = (
            "Forever"
            if left > 100 * 365 * 86400
            else ("Stopping..." if left <= 0 else f"{human_duration(left)} from now")
        )
        rows.append(
            [
                m["name"],
                m["digest"][:12],
                human_bytes(m["size"]),
                processor,
                str(m.get("context_length", "")),
                until,
            ]
        )
    print(_table(rows))
    return 0


def cmd_rm(names: list[str]) -> int:
    for name in names:
        _get_json("DELETE", "/api/delete", {"model": name})
        print(f"deleted '{name}'")
    return 0


def cmd_stop(name: str) -> int:
    _get_json("POST", "/api/generate", {"model": name, "keep_alive": 0})
    return 0


def cmd_run(name: str, prompt: str) -> int:
    if not prompt:
        prompt = sys.stdin.read() if not sys.stdin.isatty() else ""
    body = {"model": name, "messages": [{"role": "user", "content": prompt}] if prompt else []}
    for event in _ndjson("POST", "/api/chat", body):
        print(event.get("message", {}).get("content", ""), end="", flush=True)
    print()
    return 0


def cmd_show(name: str) -> int:
    info = _get_json("POST", "/api/show", {"model": name})
    details, model_info = info["details"], info["model_info"]
    arch = model_info.get("general.architecture", "")
    print("  Model")
    print(f"    architecture        {arch}")
    print(f"    parameters          {details.get('parameter_size', '')}")
    print(f"    context length      {model_info.get(f'{arch}.context_length', '')}")
    print(f"    quantization        {details.get('quantization_level', '')}")
    print("\n  Capabilities")
    for cap in info.get("capabilities", []):
        print(f"    {cap}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0
    verb, rest = args[0], args[1:]
    try:
        if verb in ("-v", "--version", "version"):
            return cmd_version()
        if verb == "serve":
            return serve()
        if verb in ("list", "ls"):
            return cmd_list()
        if verb == "ps":
            return cmd_ps()
        if verb == "pull" and len(rest) == 1:
            return cmd_pull(rest[0])
        if verb == "rm" and rest:
            return cmd_rm(rest)
        if verb == "stop" and len(rest) == 1:
            return cmd_stop(rest[0])
        if verb == "run" and rest:
            return cmd_run(rest[0], " ".join(rest[1:]))
        if verb == "show" and len(rest) == 1:
            return cmd_show(rest[0])
    except ClientError as err:
        print(f"Error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    print(f"Error: unknown command or wrong arguments: {' '.join(args)}\n\n{USAGE}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
