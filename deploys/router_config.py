"""The LiteLLM router's config, environment and unit values, computed from the inventory.

Pure functions only (no I/O): deploys/router.py writes what they return, the
unit template only prints `router_unit_context(...)`, and the config YAML is a
dump of `build_litellm_config(...)` (never string-pasted YAML).

Secrets never pass through here: the config names the master key as
`os.environ/LITELLM_MASTER_KEY` (the launcher sets it from a systemd
credential), and client keys exist on the server only as sha256 hashes in the
file the auth hook reads (`LLM_ROUTER_KEY_HASHES_FILE`).
"""

from __future__ import annotations

import ipaddress
import json
import re
from dataclasses import dataclass
from typing import Any

from hostfiles import router_names as names
from inventory.derive import alias_table
from inventory.model import Capability, CatalogueModel, Host, Inventory, Server

# LiteLLM's Ollama chat provider (/api/chat: tools, thinking, streaming).
OLLAMA_PROVIDER = "ollama_chat"
# Request params that make LiteLLM send Ollama `think`; real Ollama answers 400
# "does not support thinking" for models without that capability, so they are dropped.
THINKING_PARAMS: tuple[str, ...] = ("thinking", "reasoning_effort")
# The auth hook module, deployed next to config.yaml (LiteLLM imports it from there).
AUTH_HOOK_FUNCTION = f"{names.AUTH_HOOK_MODULE}.user_api_key_auth"
# model_info rates that mark a model free: LiteLLM's cost check ends early for explicit zeros.
FREE_MODEL_RATES: tuple[str, ...] = (
    "input_cost_per_token",
    "output_cost_per_token",
    "cache_creation_input_token_cost",
    "cache_read_input_token_cost",
)
# Resident memory of one LiteLLM 1.108 worker, measured: 330 MB after start, ~400 MB after
# requests; rounded up.
WORKER_MEMORY_BYTES = 450 * 1024**2
# The supervisor of a multi-worker router imports all of litellm too: 325 MB measured.
SUPERVISOR_MEMORY_BYTES = 350 * 1024**2


@dataclass(frozen=True)
class RouterLayout:
    """Where the router's pieces live on the server (the defaults: hostfiles/router_names.py)."""

    etc_dir: str = names.ETC_DIR
    install_root: str = names.INSTALL_ROOT
    service_user: str = names.SERVICE_USER
    unit_name: str = names.UNIT_NAME
    state_dir_name: str = names.STATE_DIR_NAME  # StateDirectory= / CacheDirectory= / RuntimeDirectory= name

    @property
    def config_file(self) -> str:
        return f"{self.etc_dir}/{names.CONFIG_FILE_NAME}"

    @property
    def auth_hook_file(self) -> str:
        return f"{self.etc_dir}/{names.AUTH_HOOK_MODULE}.py"

    @property
    def key_hashes_file(self) -> str:
        return f"{self.etc_dir}/{names.KEY_HASHES_FILE_NAME}"

    @property
    def master_key_file(self) -> str:
        return f"{self.etc_dir}/{names.MASTER_KEY_FILE_NAME}"

    @property
    def current_venv(self) -> str:
        return f"{self.install_root}/current"

    @property
    def libexec_dir(self) -> str:
        return f"{self.install_root}/{names.LIBEXEC_DIR_NAME}"

    @property
    def launcher_file(self) -> str:
        return f"{self.libexec_dir}/{names.LAUNCHER_FILE_NAME}"

    @property
    def state_dir(self) -> str:
        return f"/var/lib/{self.state_dir_name}"

    @property
    def cache_dir(self) -> str:
        return f"/var/cache/{self.state_dir_name}"


DEFAULT_LAYOUT = RouterLayout()


# --- the LiteLLM config -------------------------------------------------------------


def server_of(inventory: Inventory, server_host: Host | str) -> Server:
    host = inventory.hosts[server_host] if isinstance(server_host, str) else server_host
    if host.server is None:
        raise ValueError(f"host {host.name} has no server section (role gpu_server)")
    return host.server


def ollama_api_base(server: Server) -> str:
    """Ollama as the router reaches it: its loopback bind address and port."""
    address = ipaddress.ip_address(str(server.ollama.bind))
    host = f"[{address}]" if address.version == 6 else str(address)
    return f"http://{host}:{server.ollama.port}"


def catalogue_entry(inventory: Inventory, server: Server, model: str) -> CatalogueModel:
    """The catalogue's description of a model; an uncatalogued model gets the server's context
    and no capabilities beyond completion (so `thinking` is stripped for it: the safe side)."""
    entry = inventory.models.get(model)
    if entry is not None:
        return entry
    return CatalogueModel(vram_gb=1, context_length=server.ollama.context_length)


def model_info(entry: CatalogueModel) -> dict[str, Any]:
    """What LiteLLM reports about a model (/v1/models, /model/info) and uses for its checks.

    Without it /v1/models would show the cloud model's window for an alias that happens to be
    a cloud model's name (1M tokens for claude-sonnet-4-6). Prices: explicitly 0 (a local
    model is free). Without them LiteLLM runs its zero-cost diagnostic on every answer
    (deep-walks the pricing entry, ~5 ms of CPU a request); with the input/output rates alone
    it warns at start that the cache rates default to 0."""
    caps = entry.capabilities
    return {
        "mode": "embedding" if caps == frozenset({Capability.embedding}) else "chat",
        **dict.fromkeys(FREE_MODEL_RATES, 0),
        # Ollama's window is shared by prompt and answer: both bounded by the context length.
        "max_input_tokens": entry.context_length,
        "max_output_tokens": entry.context_length,
        "max_tokens": entry.context_length,
        "supports_function_calling": Capability.tools in caps,
        "supports_reasoning": Capability.thinking in caps,
        "supports_vision": Capability.vision in caps,
    }


def litellm_params(
    inventory: Inventory, server: Server, model: str, drop_params: bool
) -> dict[str, Any]:
    entry = catalogue_entry(inventory, server, model)
    params: dict[str, Any] = {
        "model": f"{OLLAMA_PROVIDER}/{model}",
        "api_base": ollama_api_base(server),
        "drop_params": drop_params,
    }
    if Capability.thinking not in entry.capabilities:
        params["additional_drop_params"] = list(THINKING_PARAMS)
    if entry.context_length != server.ollama.context_length:
        # Run the model at its catalogue context (what its VRAM size was measured at),
        # not Ollama's server-wide default.
        params["num_ctx"] = entry.context_length
    return params


def model_list(inventory: Inventory, server: Server) -> list[dict[str, Any]]:
    """One deployment per name the router answers to: aliases (wildcards included), then native names.

    LiteLLM tries exact names first, then wildcard patterns, longest pattern first
    (`litellm_pattern_order`); `*` matches any characters, including '-'.
    """
    entries = []
    for name, model in alias_table(server).items():
        entries.append({
            "model_name": name,
            "litellm_params": litellm_params(inventory, server, model, server.router.drop_params),
            "model_info": model_info(catalogue_entry(inventory, server, model)),
        })
    return entries


def litellm_pattern_order(names: list[str]) -> list[str]:
    """Wildcard names in the order LiteLLM's router tries them (its PatternUtils: longest pattern,
    then most wildcard characters, first). Lets checks and docs predict which alias wins."""
    patterns = [n for n in names if "*" in n]

    def specificity(name: str) -> tuple[int, int]:
        regex = re.escape(name).replace(r"\*", "(.*)")
        return len(regex), sum(regex.count(c) for c in "*+?\\^$|()")

    return sorted(patterns, key=specificity, reverse=True)


def resolve_like_litellm(names: list[str], requested: str) -> str | None:
    """The model_name LiteLLM routes `requested` to: an exact name, else the first matching pattern."""
    if requested in names and "*" not in requested:
        return requested
    for pattern in litellm_pattern_order(names):
        if re.match(re.escape(pattern).replace(r"\*", "(.*)"), requested):
            return pattern
    return None


def build_litellm_config(inventory: Inventory, server_host: Host | str) -> dict[str, Any]:
    """The LiteLLM proxy config of a gpu_server, as data (dump it with `dump_config_yaml`)."""
    server = server_of(inventory, server_host)
    return {
        "model_list": model_list(inventory, server),
        "general_settings": {
            # A reference, resolved by LiteLLM from the environment: the key is never in the file.
            "master_key": f"os.environ/{names.MASTER_KEY_ENV}",
            # Per-client keys without a database (LiteLLM alone answers them 400 "No connected db.").
            "custom_auth": AUTH_HOOK_FUNCTION,
            # No database: nothing to write spend or error rows to.
            "disable_spend_logs": True,
            "disable_error_logs": True,
        },
        "litellm_settings": {
            # Silently drop params Ollama does not take (Anthropic's cache_control, metadata...).
            "drop_params": server.router.drop_params,
            # Per-request CPU: no logging callbacks, no debug logging, no message bodies in logs.
            "callbacks": [],
            "success_callback": [],
            "failure_callback": [],
            "set_verbose": False,
            "json_logs": False,
            "turn_off_message_logging": True,
            "telemetry": False,
        },
        "router_settings": {
            # One deployment per name: a cooldown after one failed request (a 404, a timeout)
            # would answer every request for that name 429 for the next seconds.
            "disable_cooldowns": True,
        },
    }


# Characters JSON leaves raw that YAML refuses or reads as line breaks (NEL, LS, PS) or a BOM;
# JSON and YAML both read them escaped as \\uXXXX.
_NOT_YAML_PRINTABLE = re.compile("[\x7f-\x9f\u2028\u2029\ud800-\udfff\ufeff\ufffe\uffff]")
# PyYAML (YAML 1.1) reads 1e-09 as a string: its floats need a dot. With one JSON value per line,
# an unquoted number ends its line (a comma at most).
_EXPONENT_WITHOUT_DOT = re.compile(r'^(\s*(?:"(?:[^"\\]|\\.)*": )?-?\d+)(e[-+]?\d+,?)$', re.MULTILINE)


def dump_config_yaml(config: dict[str, Any]) -> str:
    """YAML text of a config dict: JSON laid out one key per line (JSON is YAML), keys in insertion order.

    JSON because ruamel's pure-Python emitter took ~15 ms of every deploy run for
    this file; PyYAML, which LiteLLM reads it with, gets the same values (tested).
    """
    text = json.dumps(config, indent=2, ensure_ascii=False, allow_nan=False)  # YAML has no Infinity literal
    text = _NOT_YAML_PRINTABLE.sub(lambda match: f"\\u{ord(match.group()):04x}", text)
    text = _EXPONENT_WITHOUT_DOT.sub(r"\1.0\2", text)
    return "# Managed by llm-router-deploy (deploys/router_config.py): do not edit.\n" + text + "\n"


# --- process: environment, workers, command line -----------------------------------


def router_environment(layout: RouterLayout = DEFAULT_LAYOUT) -> dict[str, str]:
    """The router's non-secret environment (the master key comes from the credential, at start)."""
    return {
        # Use the cost map shipped in the wheel: no fetch from the internet at start.
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        # PRODUCTION: do not load a .env file from the working directory.
        "LITELLM_MODE": "PRODUCTION",
        "LITELLM_LOG": "WARNING",
        "LITELLM_DONT_SHOW_FEEDBACK_BOX": "true",
        # Usage telemetry vetoed (it is off without stored consent anyway; this pins it off).
        "LITELLM_TELEMETRY_DISABLED": "true",
        # No admin UI and no API docs pages: less to serve, less to attack.
        "DISABLE_ADMIN_UI": "True",
        "NO_DOCS": "True",
        "NO_REDOC": "True",
        names.KEY_HASHES_FILE_ENV: layout.key_hashes_file,
        # Writable places (the rest of the file system is read-only to the service).
        "HOME": layout.state_dir,
        "XDG_CACHE_HOME": layout.cache_dir,
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONUNBUFFERED": "1",
    }


_SIZE_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}


def size_bytes(size: str) -> int:
    """systemd size ("2G", "512M", "1073741824") -> bytes."""
    match = re.fullmatch(r"(\d+)([KMGT]?)", size)
    if match is None:
        raise ValueError(f"not a systemd size: {size!r}")
    return int(match.group(1)) * _SIZE_UNITS[match.group(2)]


def workers_fitting(memory_max: str) -> int:
    """How many workers fit in MemoryMax (at least one: a single worker has no supervisor)."""
    room = size_bytes(memory_max) - SUPERVISOR_MEMORY_BYTES
    return max(1, room // WORKER_MEMORY_BYTES)


def default_workers(cpu_count: int, override: int | None, memory_max: str = "2G") -> int:
    """Uvicorn workers: the inventory's number, else one per core as far as MemoryMax allows."""
    if override is not None:
        return override
    return max(1, min(cpu_count, workers_fitting(memory_max)))


def router_command(
    server: Server,
    workers: int,
    layout: RouterLayout = DEFAULT_LAYOUT,
    *,
    venv: str | None = None,
    config_file: str | None = None,
    bind: str | None = None,
    port: int | None = None,
) -> list[str]:
    """ExecStart argv: the launcher (run by the venv's python) then LiteLLM's own flags.

    No secret on it: the launcher reads the master key from $CREDENTIALS_DIRECTORY."""
    return [
        f"{venv or layout.current_venv}/bin/python",
        "-I",  # isolated: no PYTHON* variables, no user site, no script dir on sys.path
        layout.launcher_file,
        "--config", config_file or layout.config_file,
        "--host", bind if bind is not None else str(server.router.bind),
        "--port", str(port if port is not None else server.router.port),
        "--num_workers", str(workers),
    ]


# --- the systemd unit ---------------------------------------------------------------

# What `systemd-analyze security` asks for, kept where LiteLLM (CPython, uvicorn workers,
# asyncio, outbound HTTP to loopback Ollama) still works.
_HARDENING: tuple[tuple[str, str], ...] = (
    ("NoNewPrivileges", "yes"),
    ("ProtectSystem", "strict"),
    ("ProtectHome", "yes"),
    ("PrivateTmp", "yes"),
    ("PrivateDevices", "yes"),
    ("PrivateUsers", "yes"),
    ("PrivateMounts", "yes"),
    ("ProtectHostname", "yes"),
    ("ProtectClock", "yes"),
    ("ProtectKernelTunables", "yes"),
    ("ProtectKernelModules", "yes"),
    ("ProtectKernelLogs", "yes"),
    ("ProtectControlGroups", "yes"),
    ("ProtectProc", "invisible"),
    ("ProcSubset", "pid"),
    ("RestrictAddressFamilies", "AF_INET AF_INET6 AF_UNIX"),
    ("RestrictNamespaces", "yes"),
    ("RestrictRealtime", "yes"),
    ("RestrictSUIDSGID", "yes"),
    ("RemoveIPC", "yes"),
    ("LockPersonality", "yes"),
    ("MemoryDenyWriteExecute", "yes"),
    ("SystemCallArchitectures", "native"),
    ("SystemCallFilter", "@system-service"),
    ("SystemCallFilter", "~@privileged @resources"),
    ("SystemCallErrorNumber", "EPERM"),
    ("CapabilityBoundingSet", ""),
    ("AmbientCapabilities", ""),
    ("DevicePolicy", "closed"),
    ("UMask", "0077"),
)


def systemd_quote(value: str) -> str:
    """One word for a systemd command line or Environment= assignment."""
    if value and re.fullmatch(r"[A-Za-z0-9_@%+=:,./-]+", value):
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def router_unit_context(
    inventory: Inventory,
    server_host: Host | str,
    cpu_count: int,
    layout: RouterLayout = DEFAULT_LAYOUT,
    *,
    description: str = "LLM router (LiteLLM proxy in front of Ollama)",
    venv: str | None = None,
    config_file: str | None = None,
    bind: str | None = None,
    port: int | None = None,
) -> dict[str, Any]:
    """Everything templates/router/llm-router.service.j2 prints, computed here.

    `venv`/`config_file`/`bind`/`port` let the deploy build the throwaway check unit that
    proves a new venv and config start before they replace the running ones."""
    server = server_of(inventory, server_host)
    router = server.router
    workers = default_workers(cpu_count, router.workers, router.memory_max)
    argv = router_command(server, workers, layout, venv=venv, config_file=config_file, bind=bind, port=port)
    # Ollama runs on this host in the reference setup; Wants= does not fail without it.
    ollama_unit = "ollama.service"
    return {
        "description": description,
        "after": ["network-online.target", ollama_unit],
        "wants": ["network-online.target", ollama_unit],
        "user": layout.service_user,
        "group": layout.service_user,
        "working_directory": layout.state_dir,
        "exec_start": " ".join(systemd_quote(a) for a in argv),
        "environment": [f"{k}={systemd_quote(v)}" for k, v in sorted(router_environment(layout).items())],
        "load_credentials": [f"{names.MASTER_KEY_CREDENTIAL}:{layout.master_key_file}"],
        "state_directory": layout.state_dir_name,
        "cache_directory": layout.state_dir_name,
        "memory_max": router.memory_max,
        "restart": "on-failure",
        "restart_sec": 5,
        # LiteLLM imports for 10-30 s on a small host.
        "timeout_start_sec": 120,
        "timeout_stop_sec": 20,
        "hardening": list(_HARDENING),
        "workers": workers,
    }
