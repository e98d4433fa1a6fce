"""TCP_NODELAY on pyinfra's SSH sockets.

paramiko never sets it, so each small SSH packet waits for the peer's delayed
ACK: ~45 ms per remote command. pyinfra has no connector option for socket
options, and it connects before loading deploy files, so the site sets the
option on the already connected transport (the smallest hook that needs no
patching; worth offering upstream as an `ssh_tcp_nodelay` connector option).
"""

from __future__ import annotations

import socket

from pyinfra.api import Host


def set_nodelay(host: Host) -> bool:
    """Set TCP_NODELAY on the host's SSH socket; False when it has none (local, docker, not connected)."""
    client = getattr(host.connector, "client", None)
    transport = client.get_transport() if client is not None else None
    sock = getattr(transport, "sock", None)
    if not isinstance(sock, socket.socket) or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return False
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return True
