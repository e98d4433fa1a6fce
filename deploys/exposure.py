"""Exposure: the router port open only on lo, the tailnet and the LAN; Ollama only on lo.

- nftables: our own table in its own file, included from /etc/nftables.conf and
  loaded at once; other tables are never touched.
- firewalld / ufw hosts: their own mechanism opens the port on the tailnet and LAN
  interfaces (a default-drop firewall would otherwise refuse it), and our nftables
  table still restricts it to exactly those interfaces.
- `tailscale serve` publishes the router at /router (or Caddy with `tls internal`).
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass

from pyinfra import host
from pyinfra.api import deploy, operation
from pyinfra.api.exceptions import DeployError

from deploys import ops
from deploys.render import render
from facts.tailscale import parse_tailscale_serve, serve_route_for_path
from inventory.derive import router_interfaces
from inventory.model import Host, Inventory, Server

NFT_FILE = "/etc/nftables.d/llm-router.nft"
NFT_DIR = "/etc/nftables.d"
NFT_CONF = "/etc/nftables.conf"
NFT_TABLE = "llm_router"
NFT_FAMILY = "inet"
NFT_INCLUDE = f'include "{NFT_FILE}"'
# Before the usual filter chains (priority 0): our verdict is seen first in traces.
NFT_PRIORITY = "filter - 10"
# Written when we enabled nftables.service, so removal disables it only if it was ours to enable.
NFT_ENABLED_MARKER = f"{NFT_DIR}/.llm-router-enabled-nftables-service"
# On firewalld/ufw hosts nftables.service must not run (its config starts with `flush ruleset`):
# our own oneshot loads just our table at boot, after their firewall.
BOOT_UNIT = "llm-router-firewall.service"
BOOT_UNIT_PATH = f"/etc/systemd/system/{BOOT_UNIT}"
SERVE_UNIT = "llm-router-tailscale-serve.service"
SERVE_UNIT_PATH = f"/etc/systemd/system/{SERVE_UNIT}"
CADDYFILE = "/etc/caddy/Caddyfile"
CADDY_ROOT_CA = "/var/lib/caddy/.local/share/caddy/pki/authorities/local/root.crt"
ROUTER_UNIT = "llm-router.service"

_INCLUDE_COMMENT = "# LLM router firewall (llm-router-deploy)"
_SED_DELETE_INCLUDE = "/^" + _INCLUDE_COMMENT + "$/d; \\|^" + NFT_INCLUDE + "$|d"

PROBE_NFT_TABLE = "nft_table"
PROBE_NFT_INCLUDE = "nft_include"
PROBE_SERVE = "tailscale_serve"
PROBE_UFW = "ufw_status"


# --- pure values -------------------------------------------------------------------


@dataclass(frozen=True)
class PortRule:
    port: int
    interfaces: tuple[str, ...]
    comment: str


def port_rules(host_model: Host) -> list[PortRule]:
    server = host_model.server
    assert server is not None
    return [
        PortRule(server.router.port, tuple(router_interfaces(host_model)),
                 "router: loopback, tailnet and LAN only"),
        PortRule(server.ollama.port, ("lo",), "Ollama: loopback only (it has no authentication)"),
    ]


def nft_ruleset(host_model: Host) -> str:
    rules = [
        {"port": r.port, "interfaces": [f'"{i}"' for i in r.interfaces], "comment": r.comment}
        for r in port_rules(host_model)
    ]
    return render("exposure/llm-router.nft.j2", family=NFT_FAMILY, table=NFT_TABLE, priority=NFT_PRIORITY,
                  rules=rules, include_from=NFT_CONF)


def serve_command(server: Server) -> list[str]:
    serve = server.exposure.tailscale_serve
    return ["tailscale", "serve", "--bg", f"--https={serve.https_port}", f"--set-path={serve.path}",
            f"http://localhost:{server.router.port}"]


def serve_off_command(server: Server) -> list[str]:
    serve = server.exposure.tailscale_serve
    return ["tailscale", "serve", f"--https={serve.https_port}", f"--set-path={serve.path}", "off"]


def serve_unit(server: Server) -> str:
    return render("exposure/llm-router-tailscale-serve.service.j2", path=server.exposure.tailscale_serve.path,
                  router_unit=ROUTER_UNIT, wait_seconds=120, serve_command=shlex.join(serve_command(server)),
                  stop_command=shlex.join(serve_off_command(server)))


def serve_is_current(server: Server, probe_output: str) -> bool:
    """Whether `tailscale serve status --json` already maps the path to the router."""
    serve = server.exposure.tailscale_serve
    route = serve_route_for_path(parse_tailscale_serve(probe_output.splitlines()), serve.path, serve.https_port)
    return route is not None and route.proxy in (
        f"http://localhost:{server.router.port}", f"http://127.0.0.1:{server.router.port}")


def caddyfile(host_model: Host) -> str:
    server = host_model.server
    assert server is not None
    caddy = server.exposure.caddy
    bind = str(host_model.network.tailnet_address) if host_model.network.tailnet_address else None
    if bind is None:
        raise DeployError(f"{host_model.name}: caddy listens only on the tailnet: set network.tailnet_address")
    sites = [{"name": name, "port": caddy.https_port, "bind": bind, "path": caddy.path,
              "upstream": f"127.0.0.1:{server.router.port}"} for name in caddy.site_names]
    return render("exposure/Caddyfile.j2", sites=sites)


def boot_unit() -> str:
    return render("exposure/llm-router-firewall.service.j2", nft_file=NFT_FILE, family=NFT_FAMILY, table=NFT_TABLE)


def choose_firewall(configured: str, active_units: set[str], commands: set[str], ufw_active: bool) -> str:
    """The firewall backend to manage: the configured one, or what the host runs."""
    if configured != "auto":
        return configured
    if "firewalld.service" in active_units:
        return "firewalld"
    if ufw_active:
        return "ufw"
    if "nft" in commands:
        return "nftables"
    raise DeployError(
        "cannot tell which firewall this host uses and `nft` is not installed: install nftables "
        "(apt install nftables) or set server.exposure.firewall (nftables, firewalld, ufw or none)"
    )


# --- operations --------------------------------------------------------------------


@operation()
def nft_loaded(ruleset_changed: bool):
    """Load our table now when its file changed or it is not in the kernel (after a manual flush)."""
    probe = ops.snapshot().probes.get(PROBE_NFT_TABLE)
    if ruleset_changed or probe is None or probe.status != 0:
        yield f"nft -f {NFT_FILE}"
    else:
        host.noop(f"table {NFT_FAMILY} {NFT_TABLE} is loaded")


@operation()
def nft_included():
    """One include line in /etc/nftables.conf so the table is loaded at boot."""
    probe = ops.snapshot().probes.get(PROBE_NFT_INCLUDE)
    if probe is not None and probe.status == 0:
        host.noop(f"{NFT_CONF} includes {NFT_FILE}")
        return
    yield (f"test -e {NFT_CONF} || printf '#!/usr/sbin/nft -f\\n' > {NFT_CONF}; "
           f"printf '%s\\n%s\\n' {shlex.quote(_INCLUDE_COMMENT)} {shlex.quote(NFT_INCLUDE)} >> {NFT_CONF}")


@operation()
def nft_removed():
    """Our table, its file, include lines and boot unit gone; nftables.service as it was before us."""
    snap = ops.snapshot()
    table, include = snap.probes.get(PROBE_NFT_TABLE), snap.probes.get(PROBE_NFT_INCLUDE)
    commands = []
    if table is not None and table.status == 0:
        commands.append(f"nft delete table {NFT_FAMILY} {NFT_TABLE}")
    if include is not None and include.status == 0:
        # Delete exactly the two lines nft_included appended, nothing else of the admin's file.
        commands.append(f"sed -i -e {shlex.quote(_SED_DELETE_INCLUDE)} {NFT_CONF}")
    if snap.path(NFT_ENABLED_MARKER).kind != "absent":
        commands.append(f"systemctl disable nftables.service && rm -f {NFT_ENABLED_MARKER}")
    if snap.path(BOOT_UNIT_PATH).kind != "absent":
        commands.append(f"systemctl disable {BOOT_UNIT} && rm -f {BOOT_UNIT_PATH} && systemctl daemon-reload")
    if snap.path(NFT_FILE).kind != "absent":
        commands.append(f"rm -f {NFT_FILE} && rmdir --ignore-fail-on-non-empty {NFT_DIR}")
    if commands:
        yield " && ".join(commands)
    else:
        host.noop("no llm-router firewall table")


@operation()
def nftables_enabled_at_boot():
    """nftables.service loads /etc/nftables.conf (and so our include) at boot. Never started here:
    its config begins with `flush ruleset`, which would wipe every other table now."""
    unit = ops.snapshot().units.get("nftables.service")
    if unit is not None and unit.enabled == "enabled":
        host.noop("nftables.service is enabled")
        return
    yield f"systemctl enable nftables.service && touch {NFT_ENABLED_MARKER}"


@operation()
def firewalld_open(port: int, interfaces: tuple[str, ...]):
    """Open the port in the zone of each interface (runtime and permanent)."""
    for interface in interfaces:
        zone = f"$(firewall-cmd --get-zone-of-interface={shlex.quote(interface)} 2>/dev/null || firewall-cmd --get-default-zone)"
        yield (f"z={zone}; firewall-cmd -q --zone=\"$z\" --query-port={port}/tcp || "
               f"{{ firewall-cmd -q --zone=\"$z\" --add-port={port}/tcp && "
               f"firewall-cmd -q --permanent --zone=\"$z\" --add-port={port}/tcp; }}")


@operation()
def ufw_open(port: int, interfaces: tuple[str, ...], current_status: str):
    for interface in interfaces:
        marker = f"{port}/tcp on {interface}"
        if marker in current_status:
            host.noop(f"ufw allows {marker}")
            continue
        yield f"ufw allow in on {shlex.quote(interface)} to any port {port} proto tcp comment llm-router"


@operation()
def tailscale_serve(server: Server):
    probe = ops.snapshot().probes.get(PROBE_SERVE)
    if probe is not None and serve_is_current(server, probe.output):
        host.noop(f"tailscale serve maps {server.exposure.tailscale_serve.path} to the router")
        return
    yield shlex.join(serve_command(server))


@operation()
def tailscale_serve_off(server: Server):
    probe = ops.snapshot().probes.get(PROBE_SERVE)
    serve = server.exposure.tailscale_serve
    if probe is None or serve_route_for_path(parse_tailscale_serve(probe.output.splitlines()), serve.path,
                                             serve.https_port) is None:
        host.noop(f"tailscale serve has no {serve.path}")
        return
    yield shlex.join(serve_off_command(server))


# --- the deploy ---------------------------------------------------------------------


def declare(inv: Inventory, host_model: Host) -> None:
    ops.declare(
        paths=(NFT_FILE, NFT_DIR, NFT_ENABLED_MARKER, BOOT_UNIT_PATH, SERVE_UNIT_PATH, CADDYFILE),
        units=("firewalld.service", "ufw.service", "nftables.service", BOOT_UNIT, SERVE_UNIT, "caddy.service"),
        commands=("nft", "firewall-cmd", "ufw", "tailscale", "caddy"),
        probes={
            PROBE_NFT_TABLE: f"nft list table {NFT_FAMILY} {NFT_TABLE} >/dev/null",
            PROBE_NFT_INCLUDE: f"grep -qxF {shlex.quote(NFT_INCLUDE)} {NFT_CONF}",
            PROBE_SERVE: "tailscale serve status --json",
            PROBE_UFW: "ufw status verbose",
        },
    )


@deploy("Exposure: firewall, tailscale serve, caddy")
def exposure(inv: Inventory, host_model: Host) -> None:
    server = host_model.server
    assert server is not None
    declare(inv, host_model)
    snap = ops.snapshot()
    active = {name for name, unit in snap.units.items() if unit.active == "active"}
    ufw_probe = snap.probes.get(PROBE_UFW)
    ufw_active = bool(ufw_probe and ufw_probe.status == 0 and "Status: active" in ufw_probe.output)

    backend = choose_firewall(server.exposure.firewall, active, set(snap.commands), ufw_active)
    if backend == "none":
        nft_removed(name="Remove the llm-router nftables table")
    else:
        if backend == "firewalld":
            firewalld_open(server.router.port, tuple(i for i in router_interfaces(host_model) if i != "lo"),
                           name="firewalld: open the router port on the tailnet and LAN zones")
        elif backend == "ufw":
            ufw_open(server.router.port, tuple(i for i in router_interfaces(host_model) if i != "lo"),
                     ufw_probe.output if ufw_probe else "", name="ufw: allow the router port per interface")
        ops.directory(NFT_DIR, mode="755", name=f"Directory {NFT_DIR}")
        ruleset = ops.file(NFT_FILE, nft_ruleset(host_model), mode="644", name=f"nftables table {NFT_TABLE}")
        nft_loaded(ops.changed(ruleset), name=f"Load table {NFT_FAMILY} {NFT_TABLE}")
        if backend == "nftables":
            nft_included(name=f"Include {NFT_FILE} from {NFT_CONF}")
            nftables_enabled_at_boot(name="nftables.service loads the ruleset at boot")
        else:
            unit_file = ops.file(BOOT_UNIT_PATH, boot_unit(), name=f"Unit {BOOT_UNIT}")
            ops.unit(BOOT_UNIT, enabled=True, running=None, daemon_reload=ops.changed(unit_file),
                     name=f"{BOOT_UNIT} loads our table at boot, after {backend}")

    if server.exposure.tailscale_serve.enabled:
        unit_file = ops.file(SERVE_UNIT_PATH, serve_unit(server), name=f"Unit {SERVE_UNIT}")
        ops.unit(SERVE_UNIT, enabled=True, running=True, daemon_reload=ops.changed(unit_file),
                 name=f"{SERVE_UNIT} restores the mapping at boot")
        tailscale_serve(server, name=f"tailscale serve {server.exposure.tailscale_serve.path} -> router")
    else:
        if snap.path(SERVE_UNIT_PATH).kind != "absent":
            ops.unit(SERVE_UNIT, enabled=False, running=False, name=f"Stop {SERVE_UNIT}")
            ops.absent(SERVE_UNIT_PATH, name=f"Remove {SERVE_UNIT}")
        tailscale_serve_off(server, name="tailscale serve: remove the router path")

    if server.exposure.caddy.enabled:
        config = ops.file(CADDYFILE, caddyfile(host_model), name="Caddyfile for the router")
        ops.unit("caddy.service", enabled=True, running=True, restart=ops.changed(config),
                 name="caddy serves the router")
