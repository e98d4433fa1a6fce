"""The whole stack: `pyinfra inventory/hosts.py deploys/site.py`.

Reads the typed inventory from host data (set by inventory/hosts.py) and runs
each component on the hosts whose roles call for it. Every component declares
what it manages first, so one remote command reads the state all of this
host's operations compare against.
"""

from __future__ import annotations

from pyinfra import host

from deploys import client, exposure, keys, ollama, router
from deploys.nodelay import set_nodelay
from inventory.model import Host, Inventory

inventory: Inventory = host.data.llm_inventory
this_host: Host = host.data.llm_host

set_nodelay(host)

if this_host.is_server:
    ollama.declare(inventory, this_host)
    router.declare(inventory, this_host)
    exposure.declare(inventory, this_host)
if this_host.is_client:
    client.declare(inventory, this_host)

if this_host.is_server:
    ollama.ollama(inventory, this_host)
    router.router(inventory, this_host)
    exposure.exposure(inventory, this_host)
if this_host.is_client:
    client.client(inventory, this_host)

# Last: a key rotation drops the old keys only once every host has the new ones.
keys.finish_rotation(inventory, this_host)
