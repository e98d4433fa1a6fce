"""LiteLLM `custom_auth` hook of the LLM router: the master key plus per-client keys, no database.

Deployed next to the router's config.yaml (LiteLLM loads `llm_router_auth.user_api_key_auth`
from the config's directory). Without a database LiteLLM itself can only check the master
key and answers any other key with 400 "No connected db."; this hook replaces that check:

- the master key comes from the environment (LITELLM_MASTER_KEY, set by the launcher from
  a systemd credential) and gets the proxy-admin role;
- client keys are checked against a JSON file of sha256 hashes (no plaintext client key on
  the server): {"clients": {"razer": ["<sha256 hex>", ...], ...}}, at $LLM_ROUTER_KEY_HASHES_FILE
  (default /etc/llm-router/client-keys.json, root:llm-router 0640). Several hashes per client
  allow rotation (old and new accepted during an apply). The file is re-read when it
  changes (inode, size or mtime), so rotation and revocation need no restart; a missing or
  broken file refuses every client key (fail closed) and keeps the master key working;
- a client key may use only the model APIs, not LiteLLM's admin routes;
- every refusal raises ProxyException(code=401), which LiteLLM sends as a 401.

Each accepted request logs one line with the client's alias (`llm_router_auth: client=razer
...`) and carries it as key_alias/user_id, so LiteLLM's own logging and spend figures see it.
Stdlib only besides LiteLLM: this file is copied to the host as is.

LiteLLM imports this file once per worker, at start, so it also carries three speed-ups of
the pinned LiteLLM's request path (`apply_speedups`, below): same results, less CPU.
"""

from __future__ import annotations

import hashlib
import hmac
import importlib
import json
import logging
import os
import sys
import threading
from pathlib import Path
from typing import Any

from fastapi import Request
from litellm.proxy._types import LitellmUserRoles, ProxyErrorTypes, ProxyException, UserAPIKeyAuth

# Where the hashes are. Read directly (0640 root:llm-router), not as a systemd credential:
# credentials are copied once at start, so a rotation would need a restart.
KEY_HASHES_FILE_ENV = "LLM_ROUTER_KEY_HASHES_FILE"
DEFAULT_KEY_HASHES_FILE = "/etc/llm-router/client-keys.json"
MASTER_KEY_ENV = "LITELLM_MASTER_KEY"
MASTER_ALIAS = "master"

# Routes a client key may call: the model APIs Claude Code and OpenAI-compatible tools use.
# Not LiteLLM's admin routes, nor its provider pass-through routes (/anthropic/..., /openai/...).
CLIENT_ROUTE_PREFIXES: tuple[str, ...] = (
    "/v1/messages",  # and /v1/messages/count_tokens
    "/messages",
    "/v1/responses",
    "/responses",
    "/v1/chat/completions",
    "/chat/completions",
    "/v1/completions",
    "/completions",
    "/v1/embeddings",
    "/embeddings",
    "/v1/models",
    "/models",
    "/v1/model/info",
    "/model/info",
)

_log = logging.getLogger("llm_router_auth")
if not _log.handlers:
    # Own handler on stderr (the journal): one line per request whatever LiteLLM's log level is.
    _handler = logging.StreamHandler(sys.stderr)
    _handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
    _log.addHandler(_handler)
    _log.setLevel(logging.INFO)
    _log.propagate = False


def key_hash(key: str) -> str:
    """The sha256 hex digest stored for a key (keys are 48+ random bytes, so no salt/KDF needed)."""
    return hashlib.sha256(key.encode()).hexdigest()


def parse_key_hashes(text: str) -> dict[str, tuple[str, ...]]:
    """{"clients": {name: [sha256 hex, ...]}} -> {name: (hash, ...)}; raises ValueError if malformed."""
    document = json.loads(text)
    clients = document.get("clients") if isinstance(document, dict) else None
    if not isinstance(clients, dict):
        raise ValueError('expected {"clients": {"<name>": ["<sha256 hex>", ...]}}')  # noqa: TRY004 (bad file)
    table: dict[str, tuple[str, ...]] = {}
    for name, hashes in clients.items():
        if not isinstance(name, str) or not isinstance(hashes, list):
            raise ValueError(f"client {name!r}: expected a list of sha256 hex digests")  # noqa: TRY004
        for digest in hashes:
            if not (isinstance(digest, str) and len(digest) == 64 and all(c in "0123456789abcdef" for c in digest)):
                raise ValueError(f"client {name!r}: {digest!r} is not a lower-case sha256 hex digest")
        table[name] = tuple(hashes)
    return table


def match_client(table: dict[str, tuple[str, ...]], presented_hash: str) -> str | None:
    """The client whose hashes include presented_hash. Compares against every hash (constant time)."""
    found: str | None = None
    for name, hashes in table.items():
        for digest in hashes:
            if hmac.compare_digest(digest, presented_hash):
                found = name
    return found


def key_hashes_path() -> Path:
    return Path(os.environ.get(KEY_HASHES_FILE_ENV) or DEFAULT_KEY_HASHES_FILE)


class KeyHashesFile:
    """The hashes file, re-parsed only when its identity (inode, size, mtime) changes."""

    # A plain class, not a dataclass: LiteLLM loads this file without registering it in
    # sys.modules, which dataclasses need.
    def __init__(self, path: Path) -> None:
        self.path = path
        self._stamp: tuple[int, int, int] | None = None
        self._table: dict[str, tuple[str, ...]] = {}
        self._lock = threading.Lock()

    def table(self) -> dict[str, tuple[str, ...]]:
        try:
            st = self.path.stat()
        except OSError:
            # Missing file: no client key is valid (fail closed), the master key still is.
            if self._stamp is not None:
                _log.warning("key hashes file %s is gone: client keys refused", self.path)
            self._stamp, self._table = None, {}
            return {}
        stamp = (st.st_ino, st.st_size, st.st_mtime_ns)
        if stamp != self._stamp:
            with self._lock:
                if stamp != self._stamp:
                    try:
                        self._table = parse_key_hashes(self.path.read_text())
                    except (OSError, ValueError) as err:
                        # Fail closed on a broken file rather than keep stale (maybe revoked) keys.
                        _log.error("key hashes file %s unreadable (%s): client keys refused", self.path, err)
                        self._table = {}
                    self._stamp = stamp
        return self._table


_key_hashes = KeyHashesFile(key_hashes_path())


def _unauthorized(message: str) -> ProxyException:
    return ProxyException(message=message, type=ProxyErrorTypes.auth_error, param="api_key", code=401)


def _route(request: Request) -> str:
    path = request.url.path
    root = request.scope.get("root_path") or ""
    return path[len(root):] if root and path.startswith(root) else path


def client_may_call(route: str) -> bool:
    return any(route == p or route.startswith(p + "/") for p in CLIENT_ROUTE_PREFIXES)


async def user_api_key_auth(request: Request, api_key: str) -> UserAPIKeyAuth:
    """LiteLLM custom_auth entry point: `api_key` is the presented key, 'Bearer ' already stripped."""
    route = _route(request)
    if not api_key:
        raise _unauthorized("Authentication Error: no API key given")
    master_key = os.environ.get(MASTER_KEY_ENV, "")
    if master_key and hmac.compare_digest(api_key.encode(), master_key.encode()):
        return UserAPIKeyAuth(
            api_key=api_key,
            user_role=LitellmUserRoles.PROXY_ADMIN,
            key_alias=MASTER_ALIAS,
            key_name=MASTER_ALIAS,
            user_id=MASTER_ALIAS,
        )
    presented = key_hash(api_key)
    client = match_client(_key_hashes.table(), presented)
    if client is None:
        _log.info("refused: unknown or revoked key route=%s", route)
        raise _unauthorized("Authentication Error: invalid or revoked API key")
    if not client_may_call(route):
        _log.info("refused: client=%s may not call route=%s", client, route)
        raise _unauthorized(f"Authentication Error: a client key may not call {route}")
    # Short hash prefix: tells old from new key during a rotation, reveals nothing usable.
    _log.info("client=%s key=%s route=%s", client, presented[:8], route)
    return UserAPIKeyAuth(
        api_key=presented,
        token=presented,
        user_role=LitellmUserRoles.INTERNAL_USER,
        key_alias=client,
        key_name=client,
        user_id=client,
        metadata={"client": client},
    )


# --- speed-ups of LiteLLM's request path ------------------------------------------------
# Measured with bench/router_local.py (py-spy on the worker). Each keeps LiteLLM's result
# and only stops it from recomputing or retrying the same thing on every request.

# LiteLLM's auth imports this module on every request to route OpenTelemetry spans; without
# the opentelemetry SDK (not in the router's venv) the import fails, and Python searches
# for and loads the module again each time (~0.5 ms). A None entry in sys.modules makes
# the same import fail at once, with the same ImportError LiteLLM already catches.
OTEL_LOGGER_MODULE = "litellm.integrations.otel.logger"


def _fail_absent_import_fast(module: str) -> bool:
    if module in sys.modules:
        return False
    try:
        importlib.import_module(module)
    except ImportError:
        sys.modules[module] = None  # type: ignore[assignment]
        return True
    return False


def _cache_static_ollama_model_check() -> bool:
    """OllamaModelInfo._is_static_ollama_model lower-cases every key of the cost map (4,000+)
    on each call, several calls a request (~1.5 ms). The answer depends only on the model
    name and the map's keys, so it is kept until the map changes (another object or size)."""
    try:
        import litellm
        from litellm.llms.ollama.common_utils import OllamaModelInfo
    except ImportError:
        return False
    original = OllamaModelInfo.__dict__.get("_is_static_ollama_model")
    if not isinstance(original, staticmethod) or getattr(original.__func__, "_llm_router_cached", False):
        return False
    compute = original.__func__
    answers: dict[tuple[str, int, int], bool] = {}

    def is_static_ollama_model(model: str) -> bool:
        cost_map: Any = litellm.model_cost
        key = (model, id(cost_map), len(cost_map))
        answer = answers.get(key)
        if answer is None:
            if len(answers) > 1024:  # names come from requests: bound the memory
                answers.clear()
            answer = answers[key] = compute(model)
        return answer

    is_static_ollama_model._llm_router_cached = True  # type: ignore[attr-defined]
    OllamaModelInfo._is_static_ollama_model = staticmethod(is_static_ollama_model)  # type: ignore[method-assign]
    return True


def _hoistable(router: Any, ahead: list[Any], hot_paths: frozenset[str]) -> bool:
    """An included router serving a hot path, whose every route has a fixed path that no
    route ahead of it answers: moving it to the front cannot change which route wins."""
    context = getattr(router, "include_context", None)
    original = getattr(router, "original_router", None)
    if context is None or original is None or getattr(context, "prefix", None) != "":
        return False
    routes = list(original.routes)
    if not any(getattr(route, "path", None) in hot_paths for route in routes):
        return False
    from starlette.routing import Match

    for route in routes:
        path, methods = getattr(route, "path", None), getattr(route, "methods", None)
        if not isinstance(path, str) or "{" in path or not methods:
            return False
        for method in methods:
            scope = {"type": "http", "path": path, "method": method, "root_path": "", "headers": [],
                     "query_string": b""}
            if any(earlier.matches(dict(scope))[0] is Match.FULL for earlier in ahead):
                return False
    return True


def _hot_included_routers_first() -> bool:
    """LiteLLM scans its ~630 routes in order for every request and puts its hot paths
    (/v1/messages, /v1/chat/completions...) first, but only plain routes: /v1/messages
    arrives lazily, on the first request, as an included router, and is then matched last
    (~2-3 ms a request). This also moves such a router to the front when `_hoistable`."""
    try:
        from litellm.proxy import _lazy_features, route_priority
    except ImportError:
        return False
    original = getattr(_lazy_features, "hot_routes_first", None)
    hot_paths = getattr(route_priority, "HOT_ROUTE_PATHS", None)
    if original is None or hot_paths is None or getattr(original, "_llm_router_hoisting", False):
        return False

    def hot_routes_first(routes: Any) -> list[Any]:
        ordered = list(original(routes))
        try:
            hoisted = [route for index, route in enumerate(ordered)
                       if hasattr(route, "original_router") and _hoistable(route, ordered[:index], hot_paths)]
        except Exception as err:  # noqa: BLE001 (a speed-up must never break routing)
            _log.warning("route hoisting skipped: %s", err)
            return ordered
        if not hoisted:
            return ordered
        hoisted_ids = {id(route) for route in hoisted}
        return hoisted + [route for route in ordered if id(route) not in hoisted_ids]

    hot_routes_first._llm_router_hoisting = True  # type: ignore[attr-defined]
    _lazy_features.hot_routes_first = hot_routes_first
    return True


def apply_speedups() -> dict[str, bool]:
    """Install the speed-ups (each only where this LiteLLM has what it changes)."""
    return {
        "otel-import": _fail_absent_import_fast(OTEL_LOGGER_MODULE),
        "ollama-static-model": _cache_static_ollama_model_check(),
        "hot-routes": _hot_included_routers_first(),
    }


if os.environ.get("LLM_ROUTER_SPEEDUPS", "1") != "0":
    _log.info("speed-ups: %s", " ".join(f"{name}={'on' if on else 'off'}" for name, on in apply_speedups().items()))
