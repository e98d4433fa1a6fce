"""Creates and removes the lab's namespaces, bridges and veths. Touches nothing of the machine's own
network except one veth (prefix + "ctl") and the route to the tailnet subnet on that veth, which both
vanish with it."""

from __future__ import annotations

import ipaddress
import json
import subprocess
from pathlib import Path

from lab.topology import BRIDGE, LAN, PUBLIC, TAILNET, Node, Topology

NETNS_DIR = Path("/run/netns")


def ip(*args: str, namespace: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    command = ["ip", *(["-n", namespace] if namespace else []), *args]
    result = subprocess.run(command, check=False, capture_output=True, text=True)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed: {result.stderr.strip()}")
    return result


def in_namespace(namespace: str, *command: str, check: bool = True, input_text: str | None = None) -> str:
    result = subprocess.run(
        ["ip", "netns", "exec", namespace, *command],
        check=False,
        capture_output=True,
        text=True,
        input=input_text,
    )
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} in {namespace} failed: {result.stderr.strip()}")
    return result.stdout


def existing_namespaces() -> set[str]:
    return {path.name for path in NETNS_DIR.iterdir()} if NETNS_DIR.is_dir() else set()


def link_exists(name: str, namespace: str | None = None) -> bool:
    return ip("link", "show", "dev", name, namespace=namespace, check=False).returncode == 0


def clashing_routes(topology: Topology) -> list[str]:
    """Routes of the machine itself that overlap the lab's subnets (and are not the lab's own veth)."""
    routes = json.loads(ip("-j", "route", "show", "table", "all").stdout or "[]")
    subnets = [topology.subnet(segment) for segment in (LAN, TAILNET, PUBLIC)]
    return overlapping_routes(routes, subnets, topology.control_interface.name)


def overlapping_routes(routes: list[dict[str, str]], subnets: list[str], own_interface: str) -> list[str]:
    """The IPv4 routes of `ip -j route` output that overlap `subnets`, except default routes and those on
    `own_interface`, as 'destination dev device'."""
    networks = [ipaddress.ip_network(subnet) for subnet in subnets]
    clashes = []
    for route in routes:
        destination = route.get("dst", "")
        if destination in ("", "default") or route.get("dev") == own_interface or ":" in destination:
            continue
        try:
            network = ipaddress.ip_network(destination, strict=False)
        except ValueError:
            continue
        if network.prefixlen > 0 and any(network.overlaps(subnet) for subnet in networks):
            clashes.append(f"{destination} dev {route.get('dev')}")
    return clashes


def _sysctl(namespace: str, key: str, value: str) -> None:
    in_namespace(namespace, "sysctl", "-q", "-w", f"{key}={value}")


def create(topology: Topology) -> None:
    """Namespaces, one bridge per segment (in the peer namespace), veths, addresses, routes."""
    for namespace in topology.namespaces:
        ip("netns", "add", namespace)
        ip("link", "set", "lo", "up", namespace=namespace)
        # No IPv6 chatter (DAD, router solicitations) on a lab that only plans IPv4.
        _sysctl(namespace, "net.ipv6.conf.all.disable_ipv6", "1")
        _sysctl(namespace, "net.ipv6.conf.default.disable_ipv6", "1")

    segment_namespace = {node.name: node.namespace for node in topology.nodes if node.kind == "peer"}
    for node in topology.nodes:
        if node.kind != "peer":
            continue
        ip("link", "add", BRIDGE, "type", "bridge", namespace=node.namespace)
        for interface in node.interfaces:
            ip("addr", "add", interface.cidr, "dev", BRIDGE, namespace=node.namespace)
        ip("link", "set", BRIDGE, "up", namespace=node.namespace)

    for node in topology.nodes:
        if node.kind == "peer":
            continue
        for index, interface in enumerate(node.interfaces):
            _attach(
                node.namespace,
                interface.name,
                segment_namespace[interface.segment],
                f"{node.name}"[:12] + f"-{index}",
                interface.cidr,
            )
        for route in node.routes:
            ip("route", "add", route.destination, "via", route.via, namespace=node.namespace)

    router = topology.node("router")
    _sysctl(router.namespace, "net.ipv4.ip_forward", "1")
    # Traffic from the LAN into the tailnet leaves with the router's tailnet address, as traffic of a
    # workstation on the tailnet would; tailnet hosts need no route back to the LAN.
    in_namespace(
        router.namespace,
        "nft",
        "-f",
        "-",
        input_text=(
            "table ip lab_nat {\n"
            "  chain postrouting {\n"
            "    type nat hook postrouting priority srcnat; policy accept;\n"
            f'    oifname "{TAILNET}" masquerade\n'
            "  }\n"
            "}\n"
        ),
    )

    for node in topology.nodes:
        if node.kind == "peer":
            for route in node.routes:
                ip("route", "add", route.destination, "via", route.via, namespace=node.namespace)

    control = topology.control_interface
    ip(
        "link",
        "add",
        control.name,
        "type",
        "veth",
        "peer",
        "name",
        "control",
        "netns",
        segment_namespace[LAN],
    )
    _enslave(segment_namespace[LAN], "control")
    ip("addr", "add", control.cidr, "dev", control.name)
    ip("link", "set", control.name, "up")
    for route in topology.control_routes:
        ip("route", "add", route.destination, "via", route.via, "dev", control.name)


def _attach(
    namespace: str, interface_name: str, bridge_namespace: str, bridge_side_name: str, cidr: str
) -> None:
    """A veth from `namespace` (named `interface_name`) to the segment bridge in `bridge_namespace`."""
    ip(
        "link",
        "add",
        bridge_side_name,
        "type",
        "veth",
        "peer",
        "name",
        interface_name,
        "netns",
        namespace,
        namespace=bridge_namespace,
    )
    _enslave(bridge_namespace, bridge_side_name)
    ip("addr", "add", cidr, "dev", interface_name, namespace=namespace)
    ip("link", "set", interface_name, "up", namespace=namespace)


def _enslave(namespace: str, link: str) -> None:
    ip("link", "set", link, "master", BRIDGE, namespace=namespace)
    ip("link", "set", link, "up", namespace=namespace)


def destroy(topology: Topology) -> None:
    """Idempotent: removes whatever of this instance's network exists."""
    if link_exists(topology.control_interface.name):
        ip("link", "del", topology.control_interface.name, check=False)
    present = existing_namespaces()
    for namespace in topology.namespaces:
        if namespace in present:
            ip("netns", "del", namespace, check=False)


def present_namespaces(topology: Topology) -> list[str]:
    present = existing_namespaces()
    return [namespace for namespace in topology.namespaces if namespace in present]


def node_is_wired(node: Node) -> bool:
    return all(
        link_exists(interface.name, node.namespace) for interface in node.interfaces if node.kind != "peer"
    )
