"""What the workstation checks before it connects: each host's SSH key is readable and its name resolves.

Without this, a missing key ends the apply in a pyinfra/gevent traceback (`No such private key file`).
Each problem is a Diagnostic at the host's `ssh:` section, as the loader reports inventory errors.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

from inventory.load import Diagnostic, InventoryError, _at, _parse_yaml
from inventory.model import Host, Inventory
from inventory.pin import placeholder_diagnostics


def ssh_problems(inv: Inventory, host: Host) -> list[tuple[str, str]]:
    """(key under ssh, what is wrong and what to do) for one host."""
    problems = []
    if host.ssh.key is not None:
        key = inv.resolve_path(host.ssh.key)
        if not key.exists():
            problems.append(("key", (f"the SSH key file {key} does not exist: create it (ssh-keygen -t ed25519 "
                                    f"-f {key}) and install its .pub on {host.name}, or point ssh.key at your key")))
        elif not key.is_file() or not os.access(key, os.R_OK):
            problems.append(("key", (f"the SSH key file {key} is not a readable file: check its owner and mode "
                                    f"(chmod 600 {key})")))
    try:
        socket.getaddrinfo(host.ssh.hostname, host.ssh.port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        problems.append(("hostname", (f"{host.ssh.hostname} does not resolve ({exc}): fix ssh.hostname, or add "
                                     "the name to DNS or /etc/hosts (a tailnet name needs MagicDNS on this "
                                     "workstation)")))
    return problems


def ssh_diagnostics(inv: Inventory, path: Path) -> list[Diagnostic]:
    """Every host's SSH problems, each at its line in the inventory file."""
    found = [(host, key, message) for host in inv.hosts.values() for key, message in ssh_problems(inv, host)]
    if not found:
        return []
    document = _parse_yaml(path, path.read_text(encoding="utf-8"))  # only now: a good inventory needs no parse
    return [_at(path, document, ("hosts", host.name, "ssh", key), message, point_at_key=False)
            for host, key, message in found]


def refuse_before_connecting(inv: Inventory, path: Path) -> None:
    """Every problem the apply would otherwise meet only on connecting (or on the host), all at once."""
    found = placeholder_diagnostics(inv, path) + ssh_diagnostics(inv, path)
    if found:
        raise InventoryError(found)
