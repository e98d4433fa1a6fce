"""Exposure: the router port open only on lo, the tailnet and the LAN; Ollama only on lo.

- nftables: our own table in its own file, included from /etc/nftables.conf and
  loaded at once; other tables are never touched.
- firewalld / ufw hosts: their own mechanism opens the port on the tailnet and LAN
  interfaces (a default-drop firewall would otherwise refuse it), and our nftables
  table still restricts it to exactly those interfaces.
- `tailscale serve` publishes the router at /router (or Caddy with `tls internal`).
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

from pyinfra import host
from pyinfra.api import FileDownloadCommand, deploy, operation
from pyinfra.api.exceptions import DeployError

from deploys import ops
from deploys.render import render
from deploys.secrets import secrets_dir
from facts.files import FileHasLine, FirstLineHas
from facts.firewall_backends import FirewalldZonePorts, NftTableLoaded, UfwStatus, ZonePort
from facts.host_state import FactRequest
from facts.tailscale import TailscaleServe, TailscaleServeStatus, serve_route_for_path
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
# The admin's own Caddyfile (Debian ships a default one), kept once before ours replaces it.
CADDYFILE_ORIGINAL = "/etc/caddy/Caddyfile.llm-router-orig"
CADDY_MARKER_LINE = "# Managed by llm-router-deploy"
# Written when we enabled caddy.service, so turning Caddy off disables it only if it was ours to enable.
CADDY_ENABLED_MARKER = "/etc/caddy/.llm-router-enabled-caddy"
# Caddy binds the tailnet address, which exists only once tailscaled is up: order after it, retry.
CADDY_DROP_IN = "/etc/systemd/system/caddy.service.d/llm-router.conf"
CADDY_DROP_IN_TEXT = """# Managed by llm-router-deploy: Caddy binds the tailnet address, which appears with tailscaled.
[Unit]
Wants=network-online.target
After=network-online.target tailscaled.service
StartLimitIntervalSec=0

[Service]
Restart=on-failure
RestartSec=3s
"""
# Debian's caddy.service runs as user caddy with HOME=/var/lib/caddy; `tls internal` keeps its CA here.
CADDY_ROOT_CA = "/var/lib/caddy/.local/share/caddy/pki/authorities/local/root.crt"
ROUTER_UNIT = "llm-router.service"

_INCLUDE_COMMENT = "# LLM router firewall (llm-router-deploy)"
_SED_DELETE_INCLUDE = "/^" + _INCLUDE_COMMENT + "$/d; \\|^" + NFT_INCLUDE + "$|d"

# What the operations ask the host, read in its one state snapshot (firewalld's zones: firewalld_zones).
NFT_TABLE_LOADED = FactRequest.of(NftTableLoaded, family=NFT_FAMILY, table=NFT_TABLE)
NFT_INCLUDED = FactRequest.of(FileHasLine, path=NFT_CONF, line=NFT_INCLUDE)
SERVE = FactRequest.of(TailscaleServeStatus)
UFW = FactRequest.of(UfwStatus)
CADDYFILE_OURS = FactRequest.of(FirstLineHas, path=CADDYFILE, text=CADDY_MARKER_LINE)
COMMANDS = ("nft", "firewall-cmd", "ufw", "tailscale", "caddy")


# --- pure values -------------------------------------------------------------------


@dataclass(frozen=True)
class PortRule:
    port: int
    interfaces: tuple[str, ...]
    comment: str
    address: str | None = None  # only packets to this local address (None: every address)

    @property
    def address_match(self) -> str:
        if self.address is None:
            return ""
        return f"{'ip6' if ipaddress.ip_address(self.address).version == 6 else 'ip'} daddr {self.address} "


def port_rules(host_model: Host) -> list[PortRule]:
    server = host_model.server
    assert server is not None
    rules = [
        PortRule(server.router.port, tuple(router_interfaces(host_model)),
                 "router: loopback, tailnet and LAN only"),
        PortRule(server.ollama.port, ("lo",), "Ollama: loopback only (it has no authentication)"),
    ]
    tailnet_address, tailnet_interface = host_model.network.tailnet_address, host_model.network.tailnet_interface
    if tailnet_address is not None and tailnet_interface:
        # The HTTPS front on the tailnet address answers only tailnet peers: Linux would otherwise accept
        # a LAN or public peer that routes to the tailnet address. Other addresses' port 443 are not ours.
        fronts = []
        if server.exposure.caddy.enabled:
            fronts.append(("Caddy", server.exposure.caddy.https_port))
        if server.exposure.tailscale_serve.enabled:
            fronts.append(("tailscale serve", server.exposure.tailscale_serve.https_port))
        rules += [PortRule(port, ("lo", tailnet_interface), f"{name}: the tailnet only", str(tailnet_address))
                  for name, port in fronts]
    return rules


def nft_ruleset(host_model: Host) -> str:
    rules = [
        {"port": r.port, "interfaces": [f'"{i}"' for i in r.interfaces], "comment": r.comment,
         "address_match": r.address_match}
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


def serve_is_current(server: Server, current: TailscaleServe) -> bool:
    """Whether `tailscale serve` already maps the path to the router."""
    serve = server.exposure.tailscale_serve
    route = serve_route_for_path(current, serve.path, serve.https_port)
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
    return render("exposure/Caddyfile.j2", sites=sites, marker=CADDY_MARKER_LINE)


def caddy_root_ca_copy(inv: Inventory, server_name: str) -> Path:
    """Where the workstation keeps the server's Caddy root CA certificate (public) for client deploys."""
    return inv.secrets_path / "ca" / f"{server_name}-caddy-root.crt"


def caddy_root_ca_dir_made(inv: Inventory, copy: Path) -> None:
    """The directory of such a copy, made 0700 inside the (checked) secrets directory if missing."""
    secrets_dir(inv)
    copy.parent.mkdir(mode=0o700, exist_ok=True)


def boot_unit() -> str:
    return render("exposure/llm-router-firewall.service.j2", nft_file=NFT_FILE, family=NFT_FAMILY, table=NFT_TABLE)


def choose_firewall(configured: str, active_units: set[str], commands: set[str], ufw_active: bool) -> str:
    """The firewall backend to manage: the configured one, or what the host runs."""
    if configured != "auto":
        return configured
    firewalld_active = "firewalld.service" in active_units
    if firewalld_active and ufw_active:
        raise DeployError(
            "both firewalld and ufw are active on this host, so neither is in charge: keep one "
            "(systemctl disable --now firewalld, or ufw disable) or set server.exposure.firewall"
        )
    if firewalld_active:
        return "firewalld"
    if ufw_active:
        return "ufw"
    if "nft" in commands:
        return "nftables"
    raise DeployError(
        "cannot tell which firewall this host uses and `nft` is not installed: install nftables "
        "(apt install nftables) or set server.exposure.firewall (nftables, firewalld, ufw or none)"
    )


def firewalld_zones(port: int, interfaces: tuple[str, ...]) -> FactRequest:
    return FactRequest.of(FirewalldZonePorts, port=port, interfaces=interfaces)


def firewalld_missing(zones: dict[str, ZonePort], interfaces: tuple[str, ...]) -> list[tuple[str, bool, bool]]:
    """(zone, runtime missing, permanent missing) for each zone of the interfaces lacking the port."""
    zone_of = {interface: found.zone for interface, found in zones.items()}
    seen = {found.zone: found for found in zones.values()}
    unknown = [i for i in interfaces if i not in zone_of]
    if unknown:
        raise DeployError(f"firewalld did not say which zone {', '.join(unknown)} is in (is firewalld running? "
                          "systemctl enable --now firewalld, or set server.exposure.firewall to nftables)")
    missing = []
    for zone in dict.fromkeys(zone_of[i] for i in interfaces):
        if not seen[zone].runtime or not seen[zone].permanent:
            missing.append((zone, not seen[zone].runtime, not seen[zone].permanent))
    return missing


def opened_interfaces(host_model: Host) -> tuple[str, ...]:
    """The interfaces a host firewall (firewalld, ufw) must open the router port on: loopback is always open."""
    return tuple(i for i in router_interfaces(host_model) if i != "lo")


def ufw_allows(status_output: str, port: int, interface: str) -> bool:
    """Whether `ufw status` lists an allow rule for the port on the interface (IPv4 line)."""
    pattern = re.compile(rf"^{port}/tcp on {re.escape(interface)}\s+ALLOW IN\b", re.MULTILINE)
    return pattern.search(status_output) is not None


# --- operations --------------------------------------------------------------------


@operation()
def nft_loaded(ruleset_changed: bool):
    """Load our table now when its file changed or it is not in the kernel (after a manual flush)."""
    if ruleset_changed or not ops.snapshot().value(NFT_TABLE_LOADED):
        yield f"nft -f {NFT_FILE}"
    else:
        host.noop(f"table {NFT_FAMILY} {NFT_TABLE} is loaded")


@operation()
def nft_included():
    """One include line in /etc/nftables.conf so the table is loaded at boot."""
    if ops.snapshot().value(NFT_INCLUDED):
        host.noop(f"{NFT_CONF} includes {NFT_FILE}")
        return
    yield (f"test -e {NFT_CONF} || printf '#!/usr/sbin/nft -f\\n' > {NFT_CONF}; "
           f"printf '%s\\n%s\\n' {shlex.quote(_INCLUDE_COMMENT)} {shlex.quote(NFT_INCLUDE)} >> {NFT_CONF}")


def _undo_nftables_service_boot(snap) -> list[str]:
    """Commands that take back the include line and the nftables.service we enabled."""
    commands = []
    if snap.value(NFT_INCLUDED):
        # Delete exactly the two lines nft_included appended, nothing else of the admin's file.
        commands.append(f"sed -i -e {shlex.quote(_SED_DELETE_INCLUDE)} {NFT_CONF}")
    if snap.path(NFT_ENABLED_MARKER).kind != "absent":
        commands.append(f"systemctl disable nftables.service && rm -f {NFT_ENABLED_MARKER}")
    return commands


def _undo_boot_unit(snap) -> list[str]:
    if snap.path(BOOT_UNIT_PATH).kind == "absent":
        return []
    return [f"systemctl disable {BOOT_UNIT} && rm -f {BOOT_UNIT_PATH} && systemctl daemon-reload"]


@operation()
def nft_removed():
    """Our table, its file, include lines and boot unit gone; nftables.service as it was before us."""
    snap = ops.snapshot()
    commands = []
    if snap.value(NFT_TABLE_LOADED):
        commands.append(f"nft delete table {NFT_FAMILY} {NFT_TABLE}")
    commands += _undo_nftables_service_boot(snap) + _undo_boot_unit(snap)
    if snap.path(NFT_FILE).kind != "absent":
        commands.append(f"rm -f {NFT_FILE} && rmdir --ignore-fail-on-non-empty {NFT_DIR}")
    if commands:
        yield " && ".join(commands)
    else:
        host.noop("no llm-router firewall table")


@operation()
def other_backend_boot_undone(backend: str):
    """After a change of firewall backend, the previous backend's way of loading our table at boot goes:
    nftables.service (its `flush ruleset` would wipe firewalld's or ufw's rules) or our own unit."""
    snap = ops.snapshot()
    commands = _undo_boot_unit(snap) if backend == "nftables" else _undo_nftables_service_boot(snap)
    if commands:
        yield " && ".join(commands)
    else:
        host.noop("no boot loader of another firewall backend")


@operation()
def enabled_at_boot_by_us(unit_name: str, marker: str):
    """The unit enabled for boot (not started), with a marker saying we did it, so that turning the
    feature off disables only what was ours to enable. nftables.service is never started here: its
    config begins with `flush ruleset`, which would wipe every other table now."""
    unit = ops.snapshot().unit(unit_name)
    if unit is not None and unit.is_enabled_by_link:
        host.noop(f"{unit_name} is enabled")
        return
    yield f"systemctl enable {unit_name} && touch {marker}"


@operation()
def firewalld_open(port: int, interfaces: tuple[str, ...]):
    """Open the port in the zone of each interface, runtime and permanent (so it survives a reload)."""
    missing = firewalld_missing(ops.snapshot().value(firewalld_zones(port, interfaces)), interfaces)
    if not missing:
        host.noop(f"firewalld zones of {', '.join(interfaces)} allow {port}/tcp")
        return
    for zone, runtime, permanent in missing:
        if runtime:
            yield f"firewall-cmd -q --zone={shlex.quote(zone)} --add-port={port}/tcp"
        if permanent:
            yield f"firewall-cmd -q --permanent --zone={shlex.quote(zone)} --add-port={port}/tcp"


@operation()
def ufw_open(port: int, interfaces: tuple[str, ...], current_status: str):
    """One ufw allow rule per interface (ufw adds the IPv6 twin itself)."""
    for interface in interfaces:
        if ufw_allows(current_status, port, interface):
            host.noop(f"ufw allows {port}/tcp on {interface}")
            continue
        yield f"ufw allow in on {shlex.quote(interface)} to any port {port} proto tcp comment llm-router"


@operation()
def tailscale_serve(server: Server):
    if serve_is_current(server, ops.snapshot().value(SERVE)):
        host.noop(f"tailscale serve maps {server.exposure.tailscale_serve.path} to the router")
        return
    yield shlex.join(serve_command(server))


@operation()
def tailscale_serve_off(server: Server):
    serve = server.exposure.tailscale_serve
    if serve_route_for_path(ops.snapshot().value(SERVE), serve.path, serve.https_port) is None:
        host.noop(f"tailscale serve has no {serve.path}")
        return
    yield shlex.join(serve_off_command(server))


@operation()
def caddy_original_kept():
    """Keep the admin's Caddyfile (one copy, never overwritten) before ours replaces it."""
    snap = ops.snapshot()
    if (snap.path(CADDYFILE).kind == "absent" or snap.value(CADDYFILE_OURS)
            or snap.path(CADDYFILE_ORIGINAL).kind != "absent"):
        host.noop(f"{CADDYFILE}: nothing of the admin's to keep")
        return
    yield f"cp -p {CADDYFILE} {CADDYFILE_ORIGINAL}"


@operation()
def caddy_config_valid(config_changed: bool):
    """`caddy validate` before any restart, so a bad config stops the apply, not the running Caddy."""
    if not config_changed:
        host.noop("Caddyfile unchanged")
        return
    yield f"caddy validate --adapter caddyfile --config {CADDYFILE} >/dev/null"


@operation()
def caddy_root_ca_exported(local_copy: Path):
    """Copy Caddy's root CA certificate (created at Caddy's first start) to the workstation."""
    remote = ops.snapshot().path(CADDY_ROOT_CA)
    if (remote.kind == "file" and local_copy.exists()
            and hashlib.sha256(local_copy.read_bytes()).hexdigest() == remote.sha256):
        host.noop(f"{local_copy} matches {CADDY_ROOT_CA}")
        return
    # Caddy writes its CA while it provisions `tls internal`; wait for it after a (re)start.
    yield (f"for i in $(seq 100); do test -s {CADDY_ROOT_CA} && exit 0; sleep 0.1; done; "
           f"echo 'caddy created no root CA at {CADDY_ROOT_CA}: journalctl -u caddy' >&2; exit 1")
    yield FileDownloadCommand(CADDY_ROOT_CA, str(local_copy))


@operation()
def caddy_removed():
    """Caddy back as it was before us: the admin's Caddyfile restored, caddy disabled if we enabled it."""
    snap = ops.snapshot()
    commands = []
    if snap.path(CADDY_ENABLED_MARKER).kind != "absent":
        commands.append(f"systemctl disable --now caddy.service && rm -f {CADDY_ENABLED_MARKER}")
    if snap.path(CADDY_DROP_IN).kind != "absent":
        commands.append(f"rm -f {CADDY_DROP_IN} && rmdir --ignore-fail-on-non-empty {Path(CADDY_DROP_IN).parent} "
                        "&& systemctl daemon-reload")
    if snap.value(CADDYFILE_OURS):
        if snap.path(CADDYFILE_ORIGINAL).kind != "absent":
            commands.append(f"mv -f {CADDYFILE_ORIGINAL} {CADDYFILE}")
        else:
            commands.append(f"rm -f {CADDYFILE}")
        if snap.path(CADDY_ENABLED_MARKER).kind == "absent":
            # The admin runs Caddy for other sites: give it its own config back.
            commands.append("systemctl try-restart caddy.service")
    if commands:
        yield " && ".join(commands)
    else:
        host.noop("no llm-router Caddy site")


# --- the deploy ---------------------------------------------------------------------


def declare(inv: Inventory, host_model: Host) -> None:
    server = host_model.server
    assert server is not None
    ops.declare(
        paths=(NFT_FILE, NFT_DIR, NFT_ENABLED_MARKER, BOOT_UNIT_PATH, SERVE_UNIT_PATH, CADDYFILE,
               CADDYFILE_ORIGINAL, CADDY_ENABLED_MARKER, CADDY_ROOT_CA, CADDY_DROP_IN,
               str(Path(CADDY_DROP_IN).parent)),
        units=("firewalld.service", "ufw.service", "nftables.service", BOOT_UNIT, SERVE_UNIT, "caddy.service"),
        commands=COMMANDS,
        facts=(NFT_TABLE_LOADED, NFT_INCLUDED, SERVE, UFW, CADDYFILE_OURS,
               firewalld_zones(server.router.port, opened_interfaces(host_model))),
    )


@deploy("Exposure: firewall, tailscale serve, caddy")
def exposure(inv: Inventory, host_model: Host) -> None:
    server = host_model.server
    assert server is not None
    declare(inv, host_model)
    snap = ops.snapshot()
    active = {name for name, unit in snap.units.items() if unit.is_active}
    ufw = snap.value(UFW)
    backend = choose_firewall(server.exposure.firewall, active, {c for c in COMMANDS if snap.has_command(c)},
                              ufw.active)
    if backend == "none":
        nft_removed(name="Remove the llm-router nftables table")
    else:
        if backend == "firewalld":
            firewalld_open(server.router.port, opened_interfaces(host_model),
                           name="firewalld: open the router port on the tailnet and LAN zones")
        elif backend == "ufw":
            ufw_open(server.router.port, opened_interfaces(host_model),
                     ufw.status, name="ufw: allow the router port per interface")
        ops.directory(NFT_DIR, mode="755", name=f"Directory {NFT_DIR}")
        ruleset = ops.file(NFT_FILE, nft_ruleset(host_model), mode="644", name=f"nftables table {NFT_TABLE}")
        nft_loaded(ops.changed(ruleset), name=f"Load table {NFT_FAMILY} {NFT_TABLE}")
        other_backend_boot_undone(backend, name="Nothing left of another firewall backend's boot")
        if backend == "nftables":
            nft_included(name=f"Include {NFT_FILE} from {NFT_CONF}")
            enabled_at_boot_by_us("nftables.service", NFT_ENABLED_MARKER, name="nftables.service loads the ruleset at boot")
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
        caddy_original_kept(name=f"Keep the admin's {CADDYFILE}")
        config = ops.file(CADDYFILE, caddyfile(host_model), name="Caddyfile for the router")
        caddy_config_valid(ops.changed(config), name="caddy validate")
        ops.directory(str(Path(CADDY_DROP_IN).parent), mode="755", name="caddy.service.d")
        drop_in = ops.file(CADDY_DROP_IN, CADDY_DROP_IN_TEXT, name="caddy.service starts after tailscaled")
        enabled_at_boot_by_us("caddy.service", CADDY_ENABLED_MARKER, name="caddy.service enabled at boot")
        ops.unit("caddy.service", enabled=True, running=True, restart=ops.changed(config, drop_in),
                 daemon_reload=ops.changed(drop_in), name="caddy serves the router")
        ca_copy = caddy_root_ca_copy(inv, host_model.name)
        caddy_root_ca_dir_made(inv, ca_copy)
        caddy_root_ca_exported(ca_copy, name="Export Caddy's root CA to the workstation")
    else:
        caddy_removed(name="Remove the llm-router Caddy site")
