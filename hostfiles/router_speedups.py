"""Three speed-ups of the pinned LiteLLM's request path, and LiteLLM's CLI run with them.

On the server this is /opt/llm-router/libexec/llm_router_speedups.py. The launcher
(llm_router_launch.py) replaces itself with `<venv>/bin/python llm_router_speedups.py ARGS`, the way
LiteLLM's own `litellm` script would run (not isolated), so this file is the router process's main
script: it installs the speed-ups, then runs LiteLLM's CLI with ARGS. A router with several workers
starts them with multiprocessing's spawn, which runs the main script again, as `__mp_main__`, in each
worker (https://docs.python.org/3/library/multiprocessing.html#the-spawn-and-forkserver-start-methods):
that installs them in every worker too. Each speed-up keeps LiteLLM's result and only stops it from
recomputing or retrying the same thing on every request; each is installed only where this LiteLLM has
what it changes. LLM_ROUTER_SPEEDUPS=0 leaves them out (bench/router_local.py compares both).

Measured with bench/router_local.py (py-spy on the worker). Stdlib only besides LiteLLM.
"""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path
from typing import Any

SPEEDUPS_ENV = "LLM_ROUTER_SPEEDUPS"


def _say(message: str) -> None:
    """One line on stderr (the journal), whatever LiteLLM's logging setup, with the prefix it had
    when the auth hook installed the speed-ups."""
    print(f"llm_router_auth: {message}", file=sys.stderr, flush=True)


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
            _say(f"route hoisting skipped: {err}")
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


def install() -> None:
    """Install the speed-ups unless LLM_ROUTER_SPEEDUPS=0, and log which ones took."""
    if os.environ.get(SPEEDUPS_ENV, "1") != "0":
        _say("speed-ups: " + " ".join(f"{name}={'on' if on else 'off'}" for name, on in apply_speedups().items()))


def run_litellm(argv: list[str]) -> int:
    """LiteLLM's CLI (what the venv's `litellm` script runs), with the speed-ups installed first."""
    install()
    sys.argv = [str(Path(sys.executable).with_name("litellm")), *argv]
    from litellm import run_server

    return run_server()


if __name__ == "__main__":
    sys.exit(run_litellm(sys.argv[1:]))
elif __name__ == "__mp_main__":  # a worker of a multi-worker router (see above)
    install()
