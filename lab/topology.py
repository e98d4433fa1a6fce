"""The lab's topology as plain data: segments, nodes, their interfaces and addresses.

Pure functions of a LabConfig, so the address plan is unit-testable without root.

Segments (each a bridge inside its peer's namespace):
  lan      p620 enp1s0, the `lan` peer, the control machine (one veth), the router
  tailnet  p620 tailscale0, razer tailscale0, the `tailnet` peer, the router
  public   p620 wan0, the `public` peer (with routes to p620's LAN and tailnet addresses via wan0)
The router joins lan and tailnet (never public) and masquerades into the tailnet, so the control machine
reaches tailnet-only hosts the way a workstation on the tailnet does.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from lab.config import (
    CONTROL_OFFSET,
    FIRST_HOST_OFFSET,
    PEER_OFFSET,
    PUBLIC_INTERFACE,
    ROUTER_OFFSET,
    LabConfig,
    LabHost,
    address_in,
    prefix_length,
)

LAN, TAILNET, PUBLIC = "lan", "tailnet", "public"
SEGMENTS = (LAN, TAILNET, PUBLIC)
BRIDGE = "br0"  # inside each segment's peer namespace


@dataclass(frozen=True)
class Interface:
    name: str  # as seen inside the node
    segment: str
    address: str  # without prefix length
    prefix_length: int

    @property
    def cidr(self) -> str:
        return f"{self.address}/{self.prefix_length}"


@dataclass(frozen=True)
class Route:
    destination: str  # CIDR
    via: str


@dataclass(frozen=True)
class Node:
    name: str
    kind: str  # "host" | "peer" | "router"
    namespace: str
    interfaces: tuple[Interface, ...]
    routes: tuple[Route, ...] = ()
    host: LabHost | None = None

    def address_on(self, segment: str) -> str | None:
        for interface in self.interfaces:
            if interface.segment == segment:
                return interface.address
        return None


@dataclass(frozen=True)
class Topology:
    config: LabConfig
    nodes: tuple[Node, ...]
    control_interface: Interface  # the one veth in the machine's own namespace
    control_routes: tuple[Route, ...] = field(default=())

    def node(self, name: str) -> Node:
        for node in self.nodes:
            if node.name == name:
                return node
        known = ", ".join(node.name for node in self.nodes)
        raise KeyError(f"no lab host or peer named {name!r} (known: {known})")

    @property
    def hosts(self) -> tuple[Node, ...]:
        return tuple(node for node in self.nodes if node.kind == "host")

    @property
    def namespaces(self) -> tuple[str, ...]:
        return tuple(node.namespace for node in self.nodes)

    def subnet(self, segment: str) -> str:
        return {
            LAN: self.config.lan_subnet,
            TAILNET: self.config.tailnet_subnet,
            PUBLIC: self.config.public_subnet,
        }[segment]


def ssh_address(node: Node) -> str:
    """Where the control machine reaches a host: its LAN address, else its tailnet address."""
    address = node.address_on(LAN) or node.address_on(TAILNET)
    if address is None:
        raise ValueError(f"lab host {node.name} is on neither the LAN nor the tailnet")
    return address


def build_topology(config: LabConfig) -> Topology:
    subnets = {LAN: config.lan_subnet, TAILNET: config.tailnet_subnet, PUBLIC: config.public_subnet}

    def interface(name: str, segment: str, offset: int, fixed: str | None = None) -> Interface:
        if fixed and ipaddress.ip_address(fixed) not in ipaddress.ip_network(subnets[segment]):
            raise ValueError(
                f"{fixed} (from the inventory) is outside the lab's {segment} subnet {subnets[segment]}"
            )
        return Interface(
            name, segment, fixed or address_in(subnets[segment], offset), prefix_length(subnets[segment])
        )

    nodes: list[Node] = []
    for index, host in enumerate(config.hosts):
        offset = FIRST_HOST_OFFSET + index
        interfaces: list[Interface] = []
        for lan_index, lan_interface in enumerate(host.lan_interfaces):
            # Only the first LAN interface carries the host's LAN address; the others share the segment.
            fixed = host.lan_address if lan_index == 0 else None
            interfaces.append(interface(lan_interface, LAN, offset + 100 * lan_index, fixed))
        if host.tailnet_interface:
            interfaces.append(interface(host.tailnet_interface, TAILNET, offset, host.tailnet_address))
        if "gpu_server" in host.roles:
            interfaces.append(interface(PUBLIC_INTERFACE, PUBLIC, offset))
        nodes.append(Node(host.name, "host", config.prefix + host.name, tuple(interfaces), host=host))

    for segment in SEGMENTS:
        nodes.append(
            Node(segment, "peer", config.prefix + segment, (interface(BRIDGE, segment, PEER_OFFSET),))
        )

    router_interfaces = (interface(LAN, LAN, ROUTER_OFFSET), interface(TAILNET, TAILNET, ROUTER_OFFSET))
    nodes.append(Node("router", "router", config.prefix + "router", router_interfaces))

    # The public peer is "the internet next to p620": it routes the server's private addresses at wan0,
    # which is exactly the traffic the firewall must drop.
    public_routes: list[Route] = []
    for node in nodes:
        wan_address = node.address_on(PUBLIC) if node.kind == "host" else None
        if wan_address is None:
            continue
        for segment in (LAN, TAILNET):
            private_address = node.address_on(segment)
            if private_address:
                public_routes.append(Route(f"{private_address}/32", wan_address))
    nodes = [
        Node(node.name, node.kind, node.namespace, node.interfaces, tuple(public_routes), node.host)
        if node.name == PUBLIC and node.kind == "peer"
        else node
        for node in nodes
    ]

    control_interface = Interface(
        config.prefix + "ctl",
        LAN,
        address_in(config.lan_subnet, CONTROL_OFFSET),
        prefix_length(config.lan_subnet),
    )
    control_routes = (Route(config.tailnet_subnet, address_in(config.lan_subnet, ROUTER_OFFSET)),)
    return Topology(config, tuple(nodes), control_interface, control_routes)


def hosts_file(topology: Topology, host_name: str) -> str:
    """/etc/hosts for a container: localhost, its own name, every host by name and tailnet DNS name."""
    lines = [
        "127.0.0.1\tlocalhost",
        f"127.0.1.1\t{host_name}",
        "::1\tlocalhost ip6-localhost ip6-loopback",
        "",
    ]
    this_host = topology.node(host_name)
    for node in topology.hosts:
        assert node.host is not None
        tailnet_address = node.address_on(TAILNET)
        if tailnet_address and node.host.tailnet_dns_name:
            lines.append(f"{tailnet_address}\t{node.host.tailnet_dns_name}")
        if node.name == host_name:
            continue
        # Short names resolve as MagicDNS would (tailnet first), else over a shared LAN.
        for segment in (TAILNET, LAN):
            if this_host.address_on(segment) and node.address_on(segment):
                lines.append(f"{node.address_on(segment)}\t{node.name}")
                break
    return "\n".join(lines) + "\n"
