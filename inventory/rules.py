"""Cross-field rules: known failure modes turned into load-time errors.

The loader runs them on a validated inventory, the way NixOS checks `assertions`
after evaluating a configuration. Each problem carries the key path it is about, so
the loader can point at the exact line:column in the user's YAML.

A rule looks at one host (and the inventory around it); :data:`PASSES` says which
hosts each rule runs on, and :func:`problems` is the one loop over them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from inventory.derive import (
    CLAUDE_CODE_MIN_CONTEXT,
    NoRoute,
    exact_aliases,
    largest_resident_set,
    router_route,
    served_models,
    total_vram_gb,
    usable_vram_gb,
)
from inventory.model import Acceleration, Capability, Client, Host, Inventory, Server, Ssh

Loc = tuple[str | int, ...]


@dataclass(frozen=True)
class Problem:
    loc: Loc
    message: str


def problems(inv: Inventory) -> list[Problem]:
    """Every rule on every host it applies to, in the order of :data:`PASSES`."""
    return [problem
            for rule_pass in PASSES
            for host in inv.hosts.values()
            if (section := rule_pass.section(host)) is not None
            for rule in rule_pass.rules
            for problem in rule(inv, host, section)]


# --- rules on a gpu_server's `server:` section ----------------------------------------


def _catalogue_models(inv: Inventory, host: Host, server: Server) -> Iterator[Problem]:
    base: Loc = ("hosts", host.name, "server")
    for list_name in ("persistent_models", "on_demand_models"):
        for i, model in enumerate(getattr(server.ollama, list_name)):
            if model not in inv.models:
                yield Problem((*base, "ollama", list_name, i),
                              f"model {model!r} is not in the top-level `models:` catalogue; add it "
                              "there with its vram_gb, context_length and capabilities")


def _alias_targets(inv: Inventory, host: Host, server: Server) -> Iterator[Problem]:
    served = set(served_models(server))
    for alias, target in server.router.aliases.items():
        loc = ("hosts", host.name, "server", "router", "aliases", alias)
        if target not in served:
            yield Problem(loc, f"alias {alias!r} points at {target!r}, which this server does not "
                               f"serve (persistent or on-demand models: {sorted(served) or 'none'})")
            continue
        spec = inv.models.get(target)
        if alias.startswith("claude-") and spec and Capability.tools not in spec.capabilities:
            yield Problem(loc, f"alias {alias!r} is used by Claude Code, which always sends tools, "
                               f"but {target!r} lacks the 'tools' capability; point it at a model "
                               "with tools")
        elif alias.startswith("claude-") and spec and spec.context_length < CLAUDE_CODE_MIN_CONTEXT:
            yield Problem(loc, f"alias {alias!r} is used by Claude Code, whose sessions need a context of at "
                               f"least {CLAUDE_CODE_MIN_CONTEXT} tokens (its system prompt and tools alone "
                               f"are ~20k; claude-router sizes compaction to the context), but {target!r} "
                               f"runs with context_length {spec.context_length}; raise the model's "
                               f"context_length to {CLAUDE_CODE_MIN_CONTEXT} or more and its vram_gb to its "
                               "size at that context (the VRAM budget must hold it), or point the alias "
                               "at a model that has it")


def _vram_fit(inv: Inventory, host: Host, server: Server) -> Iterator[Problem]:
    ollama = server.ollama
    if ollama.acceleration is Acceleration.cpu:
        return
    base: Loc = ("hosts", host.name, "server")
    if not server.gpus:
        yield Problem((*base, "gpus"), f"acceleration {ollama.acceleration.value} needs at least one entry in gpus")
        return
    usable = usable_vram_gb(server)
    for model in set(served_models(server)) & set(inv.models):
        size = inv.models[model].vram_gb
        if size > usable:
            yield Problem(("models", model, "vram_gb"),
                          f"{model} needs {size:g} GB but {host.name} has {total_vram_gb(server):g} "
                          f"GB VRAM minus {server.vram_headroom_gb:g} GB headroom = {usable:g} GB")
    resident, resident_gb = largest_resident_set(inv, server)
    if len(resident) > 1 and resident_gb > usable:
        yield Problem((*base, "ollama", "max_loaded_models"),
                      f"max_loaded_models {ollama.max_loaded_models} lets {', '.join(resident)} "
                      f"be resident together ({resident_gb:g} GB) but only {usable:g} GB is "
                      "usable; lower max_loaded_models so Ollama evicts before loading")


def _port_clashes(inv: Inventory, host: Host, server: Server) -> Iterator[Problem]:
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
            yield Problem(loc, f"port {port} is already used by {'.'.join(map(str, claimed[port]))}")
        else:
            claimed[port] = loc


# --- rules on a client's `client:` section --------------------------------------------


def _client_router(inv: Inventory, host: Host, client: Client) -> Iterator[Problem]:
    base: Loc = ("hosts", host.name, "client")
    try:
        router_route(inv, host)
    except NoRoute as exc:
        yield Problem((*base, "router"), f"no reachable router: {exc}")
        return  # the default model and users are judged once the router is reachable
    server = inv.hosts[client.router].server
    assert server is not None
    if client.default_model not in exact_aliases(server):
        yield Problem((*base, "default_model"),
                      f"{client.default_model!r} is not a name {client.router}'s router serves "
                      f"(one of: {', '.join(sorted(exact_aliases(server)))})")
    seen = set()
    for i, user in enumerate(client.users):
        if user.name in seen:
            yield Problem((*base, "users", i, "name"), f"user {user.name!r} listed twice")
        seen.add(user.name)


# --- rules on every host's `ssh:` -----------------------------------------------------


def _ssh_endpoint(inv: Inventory, host: Host, ssh: Ssh) -> Iterator[Problem]:
    same_machine = None  # the last host before this one with the same endpoint
    for other in inv.hosts.values():
        if other is host:
            break
        if (other.ssh.hostname, other.ssh.port) == (ssh.hostname, ssh.port):
            same_machine = other.name
    if same_machine is not None:
        yield Problem(("hosts", host.name, "ssh", "hostname"),
                      f"{ssh.hostname}:{ssh.port} is already host {same_machine!r}: "
                      "two inventory hosts cannot be the same machine")


# --- which rules run on which hosts ---------------------------------------------------


@dataclass(frozen=True)
class Pass:
    """One walk over the hosts: each host whose `section` is set gets `rules`, in order, on that section."""

    section: Callable[[Host], Any]
    rules: tuple[Callable[[Inventory, Host, Any], Iterator[Problem]], ...]


# Problems are reported pass by pass: every server's model problems before any port clash, as always.
PASSES: tuple[Pass, ...] = (
    Pass(lambda host: host.server, (_catalogue_models, _alias_targets, _vram_fit)),
    Pass(lambda host: host.server, (_port_clashes,)),
    Pass(lambda host: host.client, (_client_router,)),
    Pass(lambda host: host.ssh, (_ssh_endpoint,)),
)
