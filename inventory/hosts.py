"""pyinfra inventory module: `pyinfra inventory/hosts.py deploys/site.py`.

The YAML file comes from $LLM_ROUTER_INVENTORY (default inventory/homelab.yaml).
Each host's data carries its typed model (`llm_host`) and the whole inventory
(`llm_inventory`); deploys read those, never loose host.data keys.
"""

from __future__ import annotations

import sys

import pyinfra

from inventory.load import InventoryError, inventory_path_from_env, load_inventory
from inventory.model import Host, Inventory
from inventory.workstation import refuse_before_connecting


def pyinfra_host_data(inv: Inventory, host: Host) -> dict:
    data: dict = {
        "ssh_hostname": host.ssh.hostname,
        "ssh_port": host.ssh.port,
        "ssh_user": host.ssh.user,
        "ssh_strict_host_key_checking": "yes" if host.ssh.strict_host_key_checking else "no",
        "llm_host": host,
        "llm_inventory": inv,
    }
    if host.ssh.key:
        data["ssh_key"] = str(inv.resolve_path(host.ssh.key))
    if host.ssh.known_hosts:
        data["ssh_known_hosts_file"] = str(inv.resolve_path(host.ssh.known_hosts))
    if host.ssh.sudo:
        data["_sudo"] = True
    return data


def pyinfra_groups(inv: Inventory) -> dict[str, list[tuple[str, dict]]]:
    return {
        "gpu_servers": [(h.name, pyinfra_host_data(inv, h)) for h in inv.servers],
        "clients": [(h.name, pyinfra_host_data(inv, h)) for h in inv.clients],
    }


try:
    _inventory = load_inventory(inventory_path_from_env(), cache=True)
    if pyinfra.is_cli:  # pyinfra loads this file before it connects; importers (checks) only read the model
        refuse_before_connecting(_inventory, inventory_path_from_env())
except InventoryError as _error:
    # pyinfra would print a traceback; the diagnostics say everything needed.
    print(_error, file=sys.stderr)
    raise SystemExit(2) from None

_groups = pyinfra_groups(_inventory)
gpu_servers = _groups["gpu_servers"]
clients = _groups["clients"]
