"""Where the lab keeps its state, which addresses it uses and which hosts it builds.

Everything configurable lives here: the instance prefix, the three segment subnets and the host table
(read from `inventory/lab.yaml` when it loads, else `FALLBACK_HOSTS`).
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
CACHE_DIR = REPO_ROOT / ".cache" / "lab"
INVENTORY_PATH = REPO_ROOT / "inventory" / "lab.yaml"
LAB_KEY_PATH = CACHE_DIR / "id_ed25519"
KNOWN_HOSTS_PATH = CACHE_DIR / "known_hosts"

# Default address plan. 10.213.x and 100.86.213.x stay clear of the usual home ranges (192.168.0/1.x,
# 10.0.x) and of Tailscale's own 100.100.100.100. Override with the LAB_* environment variables.
DEFAULT_PREFIX = "lrd-"
DEFAULT_LAN_SUBNET = "10.213.1.0/24"
DEFAULT_TAILNET_SUBNET = "100.86.213.0/24"
DEFAULT_PUBLIC_SUBNET = "10.213.3.0/24"
DEFAULT_TAILNET_DOMAIN = "tail-lab.ts.net"

# Host offsets inside each segment: hosts get FIRST_HOST_OFFSET + their index in the host table.
CONTROL_OFFSET = 1
FIRST_HOST_OFFSET = 10
PEER_OFFSET = 20
ROUTER_OFFSET = 254


@dataclass(frozen=True)
class LabHost:
    """What the lab needs to know about one host of the inventory."""

    name: str
    roles: frozenset[str]
    lan_interfaces: tuple[str, ...]
    tailnet_interface: str | None
    tailnet_dns_name: str | None
    client_users: tuple[str, ...] = ()
    lan_address: str | None = None
    tailnet_address: str | None = None
    ssh_port: int = 22


# Used until inventory/lab.yaml exists; mirrors the reference setup (p620 + razer).
FALLBACK_HOSTS: tuple[LabHost, ...] = (
    LabHost(
        name="p620",
        roles=frozenset({"gpu_server", "client"}),
        lan_interfaces=("enp1s0",),
        tailnet_interface="tailscale0",
        tailnet_dns_name=f"p620.{DEFAULT_TAILNET_DOMAIN}",
        client_users=("olaf",),
    ),
    LabHost(
        name="razer",
        roles=frozenset({"client"}),
        lan_interfaces=(),
        tailnet_interface="tailscale0",
        tailnet_dns_name=f"razer.{DEFAULT_TAILNET_DOMAIN}",
        client_users=("olaf",),
    ),
)

# The interface a gpu_server gets on the public segment (the path a firewall must close).
PUBLIC_INTERFACE = "wan0"

# LAB_SERVER_FIREWALL=firewalld|ufw: the gpu_server boots with that firewall on, set up the way a
# Fedora (firewalld) or Ubuntu (ufw) admin has it (lab/firewall_hooks.py). Unset: no firewall of its own.
SERVER_FIREWALLS = ("firewalld", "ufw")


def server_firewall() -> str | None:
    """The firewall the gpu_server runs before any deploy ($LAB_SERVER_FIREWALL), or None."""
    value = os.environ.get("LAB_SERVER_FIREWALL", "").strip()
    if not value or value == "none":
        return None
    if value not in SERVER_FIREWALLS:
        raise ValueError(f"LAB_SERVER_FIREWALL={value!r}: use one of {', '.join(SERVER_FIREWALLS)} or leave it unset")
    return value


@dataclass(frozen=True)
class LabConfig:
    prefix: str = DEFAULT_PREFIX
    lan_subnet: str = DEFAULT_LAN_SUBNET
    tailnet_subnet: str = DEFAULT_TAILNET_SUBNET
    public_subnet: str = DEFAULT_PUBLIC_SUBNET
    hosts: tuple[LabHost, ...] = field(default=FALLBACK_HOSTS)

    @property
    def state_dir(self) -> Path:
        """Per-instance state (upper layers, pids, logs)."""
        return CACHE_DIR / "instances" / self.prefix.rstrip("-")

    @property
    def cgroup_name(self) -> str:
        return f"lab-{self.prefix.rstrip('-')}"


def validate_prefix(prefix: str) -> str:
    # Namespace and link names are built as prefix + up to 7 characters; links are limited to 15.
    if not prefix or len(prefix) > 8 or not all(c.isalnum() or c == "-" for c in prefix):
        raise ValueError(f"lab prefix {prefix!r} must be 1-8 characters of [A-Za-z0-9-]")
    return prefix


def address_in(subnet: str, offset: int) -> str:
    """The address at `offset` inside `subnet`, e.g. address_in('10.213.1.0/24', 10) == '10.213.1.10'."""
    network = ipaddress.ip_network(subnet)
    if not 0 < offset < network.num_addresses - 1:
        raise ValueError(f"offset {offset} is outside {subnet}")
    return str(network.network_address + offset)


def prefix_length(subnet: str) -> int:
    return ipaddress.ip_network(subnet).prefixlen


def hosts_from_inventory(path: Path = INVENTORY_PATH) -> tuple[LabHost, ...] | None:
    """The hosts of inventory/lab.yaml, or None while that file (or its loader) does not exist yet."""
    if not path.exists():
        return None
    try:
        from inventory.load import load_inventory
    except ImportError:
        return None
    inventory = load_inventory(path)
    hosts = []
    for name, host in inventory.hosts.items():
        network = host.network
        client = getattr(host, "client", None)
        users = tuple(user.name for user in client.users) if client is not None else ()
        hosts.append(
            LabHost(
                name=name,
                roles=frozenset(str(role) for role in host.roles),
                lan_interfaces=tuple(network.lan_interfaces or ()),
                tailnet_interface=network.tailnet_interface,
                tailnet_dns_name=network.tailnet_dns_name,
                client_users=users,
                lan_address=_plain_address(network.lan_address),
                tailnet_address=_plain_address(network.tailnet_address),
                ssh_port=int(host.ssh.port or 22),
            )
        )
    return tuple(hosts)


def _plain_address(value: object) -> str | None:
    if value is None:
        return None
    return str(value).split("/")[0]


def lab_inventory_path() -> Path:
    """inventory/lab.yaml, or the variant named by $LAB_INVENTORY."""
    return Path(os.environ["LAB_INVENTORY"]) if os.environ.get("LAB_INVENTORY") else INVENTORY_PATH


def load_config() -> LabConfig:
    """The configuration of this lab instance: environment overrides on top of the defaults."""
    hosts = hosts_from_inventory(lab_inventory_path()) or FALLBACK_HOSTS
    return LabConfig(
        prefix=validate_prefix(os.environ.get("LAB_PREFIX", DEFAULT_PREFIX)),
        lan_subnet=os.environ.get("LAB_LAN_SUBNET", DEFAULT_LAN_SUBNET),
        tailnet_subnet=os.environ.get("LAB_TAILNET_SUBNET", DEFAULT_TAILNET_SUBNET),
        public_subnet=os.environ.get("LAB_PUBLIC_SUBNET", DEFAULT_PUBLIC_SUBNET),
        hosts=hosts,
    )
