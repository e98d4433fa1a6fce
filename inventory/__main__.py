"""`python -m inventory check FILE | schema | diagram FILE | pin ollama VERSION --inventory FILE`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from inventory.derive import (
    alias_table,
    client_key_name,
    largest_resident_set,
    router_interfaces,
    router_route,
    served_models,
    total_vram_gb,
    usable_vram_gb,
)
from inventory.load import InventoryError, load_inventory
from inventory.model import Host, Inventory
from inventory.pin import add_parser as add_pin_parser
from inventory.pin import placeholder_diagnostics
from inventory.pin import run as run_pin


def summary(inv: Inventory) -> str:
    lines = []
    for host in inv.hosts.values():
        roles = ", ".join(sorted(r.value for r in host.roles))
        lines.append(f"{host.name}: {roles}; ssh {host.ssh.user}@{host.ssh.hostname}:{host.ssh.port}")
        if host.server:
            server = host.server
            lines.append(f"  ollama {server.ollama.version} ({server.ollama.acceleration.value}) on "
                         f"{server.ollama.bind}:{server.ollama.port}; router litellm "
                         f"{server.router.litellm_version} on {server.router.bind}:{server.router.port}")
            for alias, model in alias_table(server).items():
                lines.append(f"  alias {alias} -> {model}")
            if server.gpus:
                resident, resident_gb = largest_resident_set(inv, server)
                lines.append(f"  VRAM {total_vram_gb(server):g} GB, {usable_vram_gb(server):g} GB usable after "
                             f"{server.vram_headroom_gb:g} GB headroom; worst resident set "
                             f"{' + '.join(resident) or 'none'} = {resident_gb:g} GB")
                for model in served_models(server):
                    lines.append(f"    {model}: {inv.models[model].vram_gb:g} GB")
        if host.client:
            route = router_route(inv, host)
            users = ", ".join(u.name for u in host.client.users)
            lines.append(f"  client ({users}) -> {route.url} via {route.reach}; key secret "
                         f"{client_key_name(host)}")
    return "\n".join(lines)


def diagram(inv: Inventory) -> str:
    """The topology as text: hosts, interfaces, ports, who reaches what."""
    lines: list[str] = []
    for host in inv.servers:
        server = host.server
        assert server is not None
        header = f"┌─ {host.name} [{', '.join(sorted(r.value for r in host.roles))}]"
        lines.append(header)
        gpus = ", ".join(f"{g.name} {g.vram_gb:g} GB" for g in server.gpus) or "no GPU (cpu)"
        lines.append(f"│  GPU: {gpus}")
        lines.append(f"│  ollama {server.ollama.acceleration.value}  {server.ollama.bind}:{server.ollama.port}"
                     "  (loopback only)")
        for model in served_models(server):
            tier = "persistent" if model in server.ollama.persistent_models else "on demand"
            lines.append(f"│    {model:<16} {inv.models[model].vram_gb:>5g} GB  {tier}")
        lines.append(f"│  router litellm  {server.router.bind}:{server.router.port}")
        for alias, model in alias_table(server).items():
            lines.append(f"│    {alias:<20} -> {model}")
        lines.append("│  port " f"{server.router.port} open on:")
        for interface in router_interfaces(host):
            address = {
                "lo": "127.0.0.1",
                host.network.tailnet_interface: host.network.tailnet_address or host.network.tailnet_dns_name,
            }.get(interface) or (host.network.lan_address if interface in host.network.lan_interfaces else "")
            lines.append(f"│    {interface:<12} {address or ''}")
        lines.append("│    (every other interface: refused)")
        serve = server.exposure.tailscale_serve
        if serve.enabled:
            lines.append(f"│  tailscale serve https://{host.network.tailnet_dns_name}:{serve.https_port}{serve.path}"
                         f" -> http://localhost:{server.router.port}")
        if server.exposure.caddy.enabled:
            caddy = server.exposure.caddy
            lines.append(f"│  caddy (tls internal) {', '.join(caddy.site_names)}:{caddy.https_port}{caddy.path}"
                         f" -> http://localhost:{server.router.port}")
        lines.append("└" + "─" * (len(header) - 1))
    for host in inv.clients:
        lines.append(_client_line(inv, host))
    return "\n".join(lines)


def _client_line(inv: Inventory, host: Host) -> str:
    assert host.client is not None
    route = router_route(inv, host)
    users = ", ".join(u.name for u in host.client.users)
    return (f"{host.name:<8} claude-router ({users}) ──{route.reach}──▶ {route.url}  "
            f"[{host.client.router} router, key {client_key_name(host)}]")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m inventory", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    check = commands.add_parser("check", help="validate an inventory and print a summary")
    check.add_argument("file", type=Path)
    commands.add_parser("schema", help="print the JSON Schema (for editors)")
    draw = commands.add_parser("diagram", help="print the topology as text")
    draw.add_argument("file", type=Path)
    add_pin_parser(commands)
    args = parser.parse_args(argv)

    if args.command == "pin":
        return run_pin(args)

    if args.command == "schema":
        print(json.dumps(Inventory.model_json_schema(), indent=2))
        return 0
    try:
        inv = load_inventory(args.file)
        if args.command == "check" and (placeholders := placeholder_diagnostics(inv, args.file)):
            raise InventoryError(placeholders)  # valid, but the apply refuses it: say so here already
    except InventoryError as exc:
        print(exc, file=sys.stderr)
        return 1
    print(summary(inv) if args.command == "check" else diagram(inv))
    if args.command == "check":
        print(f"{args.file}: OK ({len(inv.hosts)} hosts)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
