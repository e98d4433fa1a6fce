"""Network interfaces and their addresses from ``ip -j addr``."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from pyinfra.api import FactBase
from typing_extensions import override

from facts._util import JsonDataclass, parse_json_lines, to_int


@dataclass(frozen=True)
class InterfaceAddress(JsonDataclass):
    family: str  # "inet" or "inet6"
    address: str
    prefixlen: int
    scope: str | None


@dataclass(frozen=True)
class NetworkInterface(JsonDataclass):
    """``state`` is the kernel operstate (``UP``, ``DOWN``, ``UNKNOWN`` for loopback
    and tun devices such as tailscale0); ``flags`` are the link flags (``UP``,
    ``POINTOPOINT``, ...); ``mac`` is None for links without a link-layer address."""

    name: str
    index: int | None
    state: str | None
    flags: tuple[str, ...]
    link_type: str | None
    mac: str | None
    mtu: int | None
    addresses: tuple[InterfaceAddress, ...]

    @property
    def is_up(self) -> bool:
        return "UP" in self.flags


def strip_peer_suffix(name: str) -> str:
    """``enp1s0@if12`` -> ``enp1s0`` (the peer index text output adds to veth/vlan names)."""
    return name.split("@", 1)[0]


def _parse_address(entry: Any) -> InterfaceAddress | None:
    if not isinstance(entry, dict):
        return None
    family, local, prefixlen = entry.get("family"), entry.get("local"), to_int(entry.get("prefixlen"))
    if not isinstance(family, str) or not isinstance(local, str) or prefixlen is None:
        return None
    scope = entry.get("scope")
    return InterfaceAddress(family, local, prefixlen, scope if isinstance(scope, str) else None)


def parse_ip_addr(lines: list[str]) -> tuple[NetworkInterface, ...]:
    """Parse ``ip -j addr``: a JSON list of links, each with ``addr_info``."""
    data = parse_json_lines(lines)
    if not isinstance(data, list):
        return ()
    interfaces = []
    for link in data:
        if not isinstance(link, dict) or not isinstance(link.get("ifname"), str):
            continue
        flags = link.get("flags") if isinstance(link.get("flags"), list) else []
        addresses = (_parse_address(entry) for entry in link.get("addr_info") or [])
        interfaces.append(
            NetworkInterface(
                name=strip_peer_suffix(link["ifname"]),
                index=to_int(link.get("ifindex")),
                state=link.get("operstate"),
                flags=tuple(str(flag) for flag in flags),
                link_type=link.get("link_type"),
                mac=link.get("address"),
                mtu=to_int(link.get("mtu")),
                addresses=tuple(address for address in addresses if address is not None),
            )
        )
    return tuple(interfaces)


def interface_named(interfaces: Iterable[NetworkInterface], name: str) -> NetworkInterface | None:
    return next((interface for interface in interfaces if interface.name == name), None)


def interface_with_address(interfaces: Iterable[NetworkInterface], address: str) -> NetworkInterface | None:
    """The interface that carries ``address`` (e.g. which device a bind address belongs to)."""
    for interface in interfaces:
        if any(entry.address == address for entry in interface.addresses):
            return interface
    return None


class NetworkInterfaces(FactBase[tuple[NetworkInterface, ...]]):
    """
    Returns every network interface with its state, flags and addresses.

    .. code:: python

        (NetworkInterface(name="lo", index=1, state="UNKNOWN", flags=("LOOPBACK", "UP", "LOWER_UP"),
                          link_type="loopback", mac="00:00:00:00:00:00", mtu=65536,
                          addresses=(InterfaceAddress("inet", "127.0.0.1", 8, "host"), ...)),)
    """

    @override
    def requires_command(self) -> str:
        return "ip"

    default = tuple

    @override
    def command(self) -> str:
        return "ip -j addr"

    @override
    def process(self, output: list[str]) -> tuple[NetworkInterface, ...]:
        return parse_ip_addr(output)
