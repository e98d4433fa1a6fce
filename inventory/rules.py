"""Cross-field rules: known failure modes turned into load-time errors.

Each problem carries the key path it is about, so the loader can point at the
exact line:column in the user's YAML.
"""

from __future__ import annotations

from dataclasses import dataclass

from inventory.derive import (
    NoRoute,
    exact_aliases,
    largest_resident_set,
    router_route,
    served_models,
    total_vram_gb,
    usable_vram_gb,
)
from inventory.model import Acceleration, Capability, Inventory

Loc = tuple[str | int, ...]


@dataclass(frozen=True)
class Problem:
    loc: Loc
    message: str


class CrossFieldError(ValueError):
    """Raised from the Inventory validator; the loader unpacks `problems`."""

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        super().__init__("; ".join(f"{'.'.join(map(str, p.loc))}: {p.message}" for p in problems))


def problems(inv: Inventory) -> list[Problem]:
    found: list[Problem] = []
    found += _server_problems(inv)
    found += _port_problems(inv)
    found += _client_problems(inv)
    found += _ssh_problems(inv)
    return found


def _server_problems(inv: Inventory) -> list[Problem]:
    found = []
    for host in inv.servers:
        server = host.server
        assert server is not None
        base: Loc = ("hosts", host.name, "server")
        ollama = server.ollama
        for list_name in ("persistent_models", "on_demand_models"):
            for i, model in enumerate(getattr(ollama, list_name)):
                if model not in inv.models:
                    found.append(Problem((*base, "ollama", list_name, i),
                                         f"model {model!r} is not in the top-level `models:` catalogue; add it "
                                         "there with its vram_gb, context_length and capabilities"))
        served = set(served_models(server))
        for alias, target in server.router.aliases.items():
            loc = (*base, "router", "aliases", alias)
            if target not in served:
                found.append(Problem(loc, f"alias {alias!r} points at {target!r}, which this server does not "
                                          f"serve (persistent or on-demand models: {sorted(served) or 'none'})"))
                continue
            spec = inv.models.get(target)
            if alias.startswith("claude-") and spec and Capability.tools not in spec.capabilities:
                found.append(Problem(loc, f"alias {alias!r} is used by Claude Code, which always sends tools, "
                                          f"but {target!r} lacks the 'tools' capability; point it at a model "
                                          "with tools"))
        if ollama.acceleration is not Acceleration.cpu:
            if not server.gpus:
                found.append(Problem((*base, "gpus"),
                                     f"acceleration {ollama.acceleration.value} needs at least one entry in gpus"))
                continue
            usable = usable_vram_gb(server)
            for model in served & set(inv.models):
                size = inv.models[model].vram_gb
                if size > usable:
                    found.append(Problem(("models", model, "vram_gb"),
                                         f"{model} needs {size:g} GB but {host.name} has {total_vram_gb(server):g} "
                                         f"GB VRAM minus {server.vram_headroom_gb:g} GB headroom = {usable:g} GB"))
            resident, resident_gb = largest_resident_set(inv, server)
            if len(resident) > 1 and resident_gb > usable:
                found.append(Problem((*base, "ollama", "max_loaded_models"),
                                     f"max_loaded_models {ollama.max_loaded_models} lets {', '.join(resident)} "
                                     f"be resident together ({resident_gb:g} GB) but only {usable:g} GB is "
                                     "usable; lower max_loaded_models so Ollama evicts before loading"))
    return found


def _port_problems(inv: Inventory) -> list[Problem]:
    found = []
    for host in inv.servers:
        server = host.server
        assert server is not None
        base: Loc = ("hosts", host.name, "server")
        claimed: dict[int, Loc] = {}
        candidates: list[tuple[int, Loc]] = [
            (host.ssh.port, ("hosts", host.name, "ssh", "port")),
            (server.ollama.port, (*base, "ollama", "port")),
            (server.router.port, (*base, "router", "port")),
        ]
        if server.exposure.tailscale_serve.enabled:
            candidates.append((server.exposure.tailscale_serve.https_port,
                               (*base, "exposure", "tailscale_serve", "https_port")))
        if server.exposure.caddy.enabled:
            candidates.append((server.exposure.caddy.https_port, (*base, "exposure", "caddy", "https_port")))
        for port, loc in candidates:
            if port in claimed:
                found.append(Problem(loc, f"port {port} is already used by {'.'.join(map(str, claimed[port]))}"))
            else:
                claimed[port] = loc
    return found


def _client_problems(inv: Inventory) -> list[Problem]:
    found = []
    for host in inv.clients:
        client = host.client
        assert client is not None
        base: Loc = ("hosts", host.name, "client")
        try:
            router_route(inv, host)
        except NoRoute as exc:
            found.append(Problem((*base, "router"), f"no reachable router: {exc}"))
            continue
        server = inv.hosts[client.router].server
        assert server is not None
        if client.default_model not in exact_aliases(server):
            found.append(Problem((*base, "default_model"),
                                 f"{client.default_model!r} is not a name {client.router}'s router serves "
                                 f"(one of: {', '.join(sorted(exact_aliases(server)))})"))
        seen = set()
        for i, user in enumerate(client.users):
            if user.name in seen:
                found.append(Problem((*base, "users", i, "name"), f"user {user.name!r} listed twice"))
            seen.add(user.name)
    return found


def _ssh_problems(inv: Inventory) -> list[Problem]:
    found = []
    seen: dict[tuple[str, int], str] = {}
    for host in inv.hosts.values():
        endpoint = (host.ssh.hostname, host.ssh.port)
        if endpoint in seen:
            found.append(Problem(("hosts", host.name, "ssh", "hostname"),
                                 f"{host.ssh.hostname}:{host.ssh.port} is already host {seen[endpoint]!r}: "
                                 "two inventory hosts cannot be the same machine"))
        seen[endpoint] = host.name
    return found
