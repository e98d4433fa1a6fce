"""The whole stack: `pyinfra inventory/hosts.py deploys/site.py`.

Reads the typed inventory from host data (set by inventory/hosts.py) and runs
each component on the hosts whose roles call for it. Every component declares
what it manages first, so one remote command reads the state all of this
host's operations compare against.
"""

from __future__ import annotations

import os
import sys
from types import ModuleType

from pyinfra import host

from deploys import client, exposure, gc_freeze, keys, ollama, op_order, ops, router
from deploys.nodelay import set_nodelay
from inventory.model import Host, Inventory


def register_deploy_file(path: str) -> None:
    """Make this file, which pyinfra execs rather than imports, known to `inspect` as a module.

    pyinfra orders operations by calling `inspect.stack()` at every operation call;
    `inspect` maps each frame's file to a module, and for a file that is no
    module's it rescans all of sys.modules (~1000 entries), once per frame
    and operation: ~1 ms per operation and host. Registered, it is a dict lookup.
    """
    name = "deploys._site_as_executed"
    if name not in sys.modules:
        module = ModuleType(name, "deploys/site.py, as pyinfra executes it (for inspect only)")
        module.__file__ = os.path.abspath(path)
        sys.modules[name] = module


register_deploy_file(__file__)

inventory: Inventory = host.data.llm_inventory
this_host: Host = host.data.llm_host

set_nodelay(host)
op_order.install()  # same order, without inspect.stack() per operation
gc_freeze.install()  # the collector stops rescanning what lives until exit anyway

if this_host.is_server:
    ollama.declare(inventory, this_host)
    router.declare(inventory, this_host)
    exposure.declare(inventory, this_host)
if this_host.is_client:
    client.declare(inventory, this_host)

# Read the state now, while pyinfra loads this file for all hosts at once: the hosts' state commands
# overlap. With -y pyinfra evaluates operations only as it executes them, so a host whose first
# operation comes late would otherwise read its state after the others, one round trip later.
ops.snapshot()

if this_host.is_server:
    ollama.ollama(inventory, this_host)
    router.router(inventory, this_host)
    exposure.exposure(inventory, this_host)
if this_host.is_client:
    client.client(inventory, this_host)

# Last: a key rotation drops the old keys only once every host has the new ones.
keys.finish_rotation(inventory, this_host)
