"""Values computed from the inventory. Pure functions: templates and deploys only print them."""

from __future__ import annotations

import fnmatch
import ipaddress
from dataclasses import dataclass
from typing import Literal

from inventory.model import Acceleration, Host, Inventory, Ollama, Server

Reach = Literal["loopback", "tailnet", "lan"]


class NoRoute(ValueError):
    """A client cannot reach its router the way the inventory says."""


# The least context a model behind a claude-* alias may run with. Claude Code 2.1.330 sends ~20k
# tokens of system prompt and tools before the first word of a conversation; claude-router
# (hostfiles/claude_router.py, SessionSizing) makes it compact at 62% of the context, keeping an
# eighth for the answer and a quarter for one step's tool results. At 64k that leaves ~20k tokens
# of conversation between compactions; below it a session would compact again and again.
CLAUDE_CODE_MIN_CONTEXT = 65536


def served_models(server: Server) -> list[str]:
    """Models the server pulls, persistent first, in inventory order."""
    return [*server.ollama.persistent_models, *server.ollama.on_demand_models]


def alias_table(server: Server) -> dict[str, str]:
    """Every name the router answers to -> Ollama model (aliases, then native names)."""
    table = dict(server.router.aliases)
    if server.router.expose_model_names:
        for model in served_models(server):
            table.setdefault(model, model)
    return table


def exact_aliases(server: Server) -> list[str]:
    """Names a client can select by name (wildcard patterns excluded)."""
    return [name for name in alias_table(server) if "*" not in name]


def resolve_alias(server: Server, requested: str) -> str | None:
    """The model a requested name maps to: exact names win over wildcard patterns."""
    table = alias_table(server)
    if requested in table:
        return table[requested]
    for pattern, model in table.items():
        if "*" in pattern and fnmatch.fnmatchcase(requested, pattern):
            return model
    return None


def total_vram_gb(server: Server) -> float:
    return sum(gpu.vram_gb for gpu in server.gpus)


def usable_vram_gb(server: Server) -> float:
    return total_vram_gb(server) - server.vram_headroom_gb


def largest_resident_set(inv: Inventory, server: Server) -> tuple[list[str], float]:
    """The max_loaded_models largest models: the worst case Ollama may hold at once."""
    sized = sorted(
        ((inv.models[m].vram_gb, m) for m in served_models(server) if m in inv.models), reverse=True
    )[: server.ollama.max_loaded_models]
    return [m for _, m in sized], sum(size for size, _ in sized)


def router_interfaces(host: Host) -> list[str]:
    """Interfaces admitted to the router port: lo, the tailnet and LAN interfaces by default."""
    assert host.server is not None
    if host.server.exposure.router_interfaces is not None:
        chosen = list(host.server.exposure.router_interfaces)
        return chosen if "lo" in chosen else ["lo", *chosen]
    interfaces = ["lo"]
    if host.network.tailnet_interface:
        interfaces.append(host.network.tailnet_interface)
    interfaces.extend(i for i in host.network.lan_interfaces if i not in interfaces)
    return interfaces


def client_key_name(host: Host) -> str:
    assert host.client is not None
    return host.client.key or f"router-key-{host.name}"


@dataclass(frozen=True)
class RouterRoute:
    reach: Reach
    url: str
    # The server whose Caddy `tls internal` root CA the client must trust (None: a public or no CA).
    caddy_ca_of: str | None = None


def _host_url(address: str) -> str:
    return f"[{address}]" if ipaddress.ip_address(address).version == 6 else address


def router_route(inv: Inventory, client: Host) -> RouterRoute:
    """How `client` reaches its router: loopback on the server itself, the tailnet elsewhere."""
    assert client.client is not None
    server_host = inv.hosts.get(client.client.router)
    if server_host is None or server_host.server is None:
        raise NoRoute(f"client.router {client.client.router!r} is not a gpu_server host of this inventory")
    server = server_host.server
    via = client.client.via
    if via == "auto":
        if server_host.name == client.name:
            via = "loopback"
        elif client.network.tailnet_interface and server_host.network.tailnet_interface:
            via = "tailnet"
        else:
            via = "lan"
    admitted = router_interfaces(server_host)
    if via == "loopback":
        if server_host.name != client.name:
            raise NoRoute("via loopback only works on the server itself")
        bind = ipaddress.ip_address(str(server.router.bind))
        if not (bind.is_unspecified or bind.is_loopback):
            raise NoRoute(f"the router binds {bind}, so it cannot be reached on loopback")
        return RouterRoute("loopback", f"http://127.0.0.1:{server.router.port}")
    if via == "tailnet":
        if not client.network.tailnet_interface:
            raise NoRoute("the client has no tailnet interface (network.tailnet_interface)")
        if server.exposure.tailscale_serve.enabled:
            if not server_host.network.tailnet_dns_name:
                raise NoRoute(f"{server_host.name} publishes tailscale serve but has no network.tailnet_dns_name")
            serve = server.exposure.tailscale_serve
            port = "" if serve.https_port == 443 else f":{serve.https_port}"
            return RouterRoute("tailnet", f"https://{server_host.network.tailnet_dns_name}{port}{serve.path}")
        if server.exposure.caddy.enabled:
            caddy = server.exposure.caddy
            port = "" if caddy.https_port == 443 else f":{caddy.https_port}"
            return RouterRoute("tailnet", f"https://{caddy.site_names[0]}{port}{caddy.path}",
                               caddy_ca_of=server_host.name)
        raise NoRoute(f"{server_host.name} publishes the router on the tailnet neither by tailscale serve nor caddy")
    # via == "lan"
    if server_host.network.lan_address is None:
        raise NoRoute(f"{server_host.name} has no network.lan_address for LAN clients")
    if not any(i in admitted for i in server_host.network.lan_interfaces):
        raise NoRoute(f"{server_host.name}'s firewall does not admit the router port on a LAN interface")
    return RouterRoute("lan", f"http://{_host_url(str(server_host.network.lan_address))}:{server.router.port}")


def ollama_environment(ollama: Ollama) -> dict[str, str]:
    """The Ollama unit's environment, in a stable order. Never contains secrets."""
    env = {
        "OLLAMA_HOST": f"{_host_url(str(ollama.bind))}:{ollama.port}",
        "OLLAMA_KEEP_ALIVE": ollama.keep_alive,
        "OLLAMA_NUM_PARALLEL": str(ollama.num_parallel),
        "OLLAMA_MAX_LOADED_MODELS": str(ollama.max_loaded_models),
        "OLLAMA_FLASH_ATTENTION": "1" if ollama.flash_attention else "0",
        "OLLAMA_CONTEXT_LENGTH": str(ollama.context_length),
        "OLLAMA_MODELS": str(ollama.models_dir),
    }
    if ollama.hsa_override_gfx_version:
        env["HSA_OVERRIDE_GFX_VERSION"] = ollama.hsa_override_gfx_version
    if ollama.visible_devices:
        devices = ",".join(ollama.visible_devices)
        if ollama.acceleration is Acceleration.rocm:
            env["ROCR_VISIBLE_DEVICES"] = devices
        elif ollama.acceleration is Acceleration.cuda:
            env["CUDA_VISIBLE_DEVICES"] = devices
        elif ollama.acceleration is Acceleration.vulkan:
            env["GGML_VK_VISIBLE_DEVICES"] = devices
    env.update(ollama.extra_environment)
    return env


def ollama_archives(ollama: Ollama) -> list[tuple[str, str]]:
    """(file name, sha256) in extraction order: the base archive, then add-ons for the acceleration."""
    base = [(n, s) for n, s in ollama.artifacts.items() if n.count("-") == 2]
    addons = [(n, s) for n, s in ollama.artifacts.items() if n.count("-") > 2]
    wanted = {Acceleration.rocm: "-rocm.", Acceleration.vulkan: "-vulkan."}.get(ollama.acceleration)
    return base + [(n, s) for n, s in addons if wanted and wanted in n]
