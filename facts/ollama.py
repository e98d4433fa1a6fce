"""Ollama's version, installed models and loaded models, from its local HTTP API.

One remote command fetches ``/api/version``, ``/api/tags`` and ``/api/ps`` (with
curl, or python3's urllib when curl is absent) and prints each body as a section
named after its endpoint (facts/sections.py).
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from typing import Any

from pyinfra.api import FactBase
from typing_extensions import override

from facts._util import JsonDataclass, parse_json_lines, to_int
from facts.sections import framed, split_sections

DEFAULT_OLLAMA_ADDRESS = "127.0.0.1:11434"
_ENDPOINTS = ("version", "tags", "ps")
NO_FETCHER = "error"  # the section saying the host has no HTTP client


@dataclass(frozen=True)
class InstalledModel(JsonDataclass):
    name: str
    size: int | None
    digest: str | None
    modified_at: str | None


@dataclass(frozen=True)
class LoadedModel(JsonDataclass):
    """``size`` is the model's total memory, ``size_vram`` the part held in GPU memory;
    ``context_length`` is only reported by recent Ollama versions."""

    name: str
    size: int | None
    size_vram: int | None
    expires_at: str | None
    context_length: int | None

    @property
    def fully_on_gpu(self) -> bool:
        return self.size is not None and self.size > 0 and self.size_vram == self.size


@dataclass(frozen=True)
class OllamaState(JsonDataclass):
    reachable: bool
    version: str | None
    installed: tuple[InstalledModel, ...]
    loaded: tuple[LoadedModel, ...]
    reason: str | None = None


def _models(body: Any) -> list[dict[str, Any]] | None:
    if not isinstance(body, dict) or not isinstance(body.get("models"), list):
        return None
    return [model for model in body["models"] if isinstance(model, dict)]


def _model_name(model: dict[str, Any]) -> str | None:
    name = model.get("name") or model.get("model")
    return name if isinstance(name, str) else None


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _first_line(lines: list[str]) -> str:
    return next((line.strip() for line in lines if line.strip()), "no response")


def parse_ollama_output(lines: list[str]) -> OllamaState:
    """Build the state from the three API responses, one section each.

    Ollama counts as reachable when ``/api/version`` answered with JSON; a failing
    tags/ps endpoint is reported in ``reason`` and leaves its list empty.
    """
    sections = split_sections(lines)

    def body(endpoint: str) -> list[str]:
        return list(sections[endpoint].lines) if endpoint in sections else []

    def detail(endpoint: str) -> str:
        damaged = sections[endpoint].problem if endpoint in sections else None
        return damaged or _first_line(body(endpoint))

    if NO_FETCHER in sections:
        return OllamaState(False, None, (), (), detail(NO_FETCHER))
    version_body = parse_json_lines(body("version"))
    if not isinstance(version_body, dict) or not isinstance(version_body.get("version"), str):
        return OllamaState(False, None, (), (), f"/api/version did not answer with JSON: {detail('version')}")

    problems = []
    tags = _models(parse_json_lines(body("tags")))
    if tags is None:
        problems.append(f"/api/tags: {detail('tags')}")
    ps = _models(parse_json_lines(body("ps")))
    if ps is None:
        problems.append(f"/api/ps: {detail('ps')}")

    installed = tuple(
        InstalledModel(
            name, to_int(model.get("size")), _text(model.get("digest")), _text(model.get("modified_at"))
        )
        for model in tags or []
        if (name := _model_name(model))
    )
    loaded = tuple(
        LoadedModel(
            name,
            to_int(model.get("size")),
            to_int(model.get("size_vram")),
            _text(model.get("expires_at")),
            to_int(model.get("context_length")),
        )
        for model in ps or []
        if (name := _model_name(model))
    )
    return OllamaState(True, version_body["version"], installed, loaded, "; ".join(problems) or None)


def ollama_base_url(address: str) -> str:
    """``127.0.0.1:11434`` -> ``http://127.0.0.1:11434``; full URLs pass through (minus a trailing /)."""
    address = address.strip().rstrip("/")
    return address if address.startswith(("http://", "https://")) else f"http://{address}"


# python3 fallback: print the body, or the error on one line (HTTP errors keep their body).
_PYTHON_FETCH = (
    "import sys, urllib.request, urllib.error\n"
    "try:\n"
    "    print(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode())\n"
    "except urllib.error.HTTPError as error:\n"
    "    print(error.read().decode() or error)\n"
    "except Exception as error:\n"
    "    print(type(error).__name__, error)\n"
)


def ollama_command(address: str = DEFAULT_OLLAMA_ADDRESS) -> str:
    base = ollama_base_url(address)
    fetch_curl = 'curl -sS --connect-timeout 2 --max-time 5 "$url" 2>&1'
    fetch_python = 'python3 -c "$program" "$url" 2>&1'
    fetch_body = f'if [ "$fetch" = curl ]; then {fetch_curl}; else {fetch_python}; fi'
    no_fetcher = framed(NO_FETCHER, "echo 'neither curl nor python3 is installed'")
    parts = [
        "if command -v curl >/dev/null 2>&1; then fetch=curl;",
        f"elif command -v python3 >/dev/null 2>&1; then fetch=python3; program={shlex.quote(_PYTHON_FETCH)};",
        f"else fetch=; {no_fetcher}; fi;",
        'if [ -n "$fetch" ]; then',
        *(framed(endpoint, f"url={shlex.quote(base + '/api/' + endpoint)}; {fetch_body}") + ";" for endpoint in _ENDPOINTS),
        "fi",
    ]
    return " ".join(parts)


class OllamaStatus(FactBase[OllamaState]):
    """
    Returns Ollama's version, installed models (``/api/tags``) and loaded models (``/api/ps``).

    + address: ``host:port`` or URL of the Ollama API (default ``127.0.0.1:11434``)

    .. code:: python

        OllamaState(reachable=True, version="0.12.3",
                    installed=(InstalledModel("qwen3:32b", 20201253400, "030ee887880f...", "2025-..."),),
                    loaded=(LoadedModel("qwen3:32b", 23000000000, 23000000000, "2025-...", 32768),))
    """

    @override
    @staticmethod
    def default() -> OllamaState:
        return OllamaState(False, None, (), (), "the Ollama probe printed nothing")

    @override
    def command(self, address: str = DEFAULT_OLLAMA_ADDRESS) -> str:
        return ollama_command(address)

    @override
    def process(self, output: list[str]) -> OllamaState:
        return parse_ollama_output(output)
