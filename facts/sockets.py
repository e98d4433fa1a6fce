"""Listening TCP sockets from ``ss -Htlnp``."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass

from pyinfra.api import FactBase
from typing_extensions import override

from facts._util import JsonDataclass

# One process entry of the ss "users:" column: ("name",pid=123,fd=4)
_PROCESS_ENTRY = re.compile(r'\("((?:[^"\\]|\\.)*)",pid=(\d+)')
_WILDCARD_ADDRESSES = {"0.0.0.0", "::", "*"}


@dataclass(frozen=True)
class ListeningSocket(JsonDataclass):
    """``address`` is as ss shows it without brackets ("127.0.0.1", "::", "*" for a
    dual-stack wildcard); ``interface`` is the ``%dev`` scope (SO_BINDTODEVICE), if any.
    ``processes``/``pids`` are empty when ss could not see the owner (another user's or
    another namespace's socket without root)."""

    address: str
    port: int
    interface: str | None
    processes: tuple[str, ...]
    pids: tuple[int, ...]

    @property
    def is_wildcard(self) -> bool:
        return self.address in _WILDCARD_ADDRESSES

    @property
    def is_loopback(self) -> bool:
        try:
            return ipaddress.ip_address(self.address).is_loopback
        except ValueError:
            return False


def parse_local_address(text: str) -> tuple[str, int, str | None] | None:
    """Split an ss local address into (address, port, interface).

    Handles ``127.0.0.1:11434``, ``*:4000``, ``[::]:22``, ``127.0.0.53%lo:53`` and
    ``[fe80::1]%eth0:22``. Returns ``None`` when there is no numeric port.
    """
    host, separator, port_text = text.rpartition(":")
    if not separator or not port_text.isdigit() or not host:
        return None
    interface = None
    if "%" in host:
        host, interface = host.split("%", 1)
        # Some iproute2 versions put the scope inside the brackets: [fe80::1%eth0]
        if interface.endswith("]"):
            host, interface = host + "]", interface[:-1]
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port_text), interface or None


def parse_process_column(text: str) -> tuple[tuple[str, ...], tuple[int, ...]]:
    """``users:(("ollama",pid=1,fd=3),("ollama",pid=2,fd=3))`` -> (names, pids), de-duplicated in order."""
    names: list[str] = []
    pids: list[int] = []
    for name, pid in _PROCESS_ENTRY.findall(text):
        if name not in names:
            names.append(name)
        if int(pid) not in pids:
            pids.append(int(pid))
    return tuple(names), tuple(pids)


def parse_ss_listeners(lines: Iterable[str]) -> tuple[ListeningSocket, ...]:
    """Parse ``ss -Htlnp`` rows: State Recv-Q Send-Q Local Peer [Process]."""
    sockets = []
    for line in lines:
        fields = line.split(None, 5)
        if len(fields) < 5 or not fields[1].isdigit():
            continue  # a header, an error message or garbage
        local = parse_local_address(fields[3])
        if local is None:
            continue
        address, port, interface = local
        processes, pids = parse_process_column(fields[5]) if len(fields) > 5 else ((), ())
        sockets.append(ListeningSocket(address, port, interface, processes, pids))
    return tuple(sockets)


def listeners_on_port(sockets: Iterable[ListeningSocket], port: int) -> tuple[ListeningSocket, ...]:
    """The sockets listening on ``port``, whatever their address."""
    return tuple(socket for socket in sockets if socket.port == port)


class ListeningSockets(FactBase[tuple[ListeningSocket, ...]]):
    """
    Returns the listening TCP sockets, including rows whose owner ss cannot see.
    Run with ``_sudo=True`` to see the processes of other users.

    .. code:: python

        (ListeningSocket(address="127.0.0.1", port=11434, interface=None,
                         processes=("ollama",), pids=(1234,)),)
    """

    @override
    def requires_command(self) -> str:
        return "ss"

    default = tuple

    @override
    def command(self) -> str:
        return "ss -Htlnp"

    @override
    def process(self, output: list[str]) -> tuple[ListeningSocket, ...]:
        return parse_ss_listeners(output)
