"""The whole stack: `pyinfra inventory/hosts.py deploys/site.py`.

Reads the typed inventory from host data (set by inventory/hosts.py) and runs
each component (deploys/components.py) on the hosts whose roles call for it.
Every component declares what it manages first, so one remote command reads the
state all of this host's operations compare against.
"""

from __future__ import annotations

from pyinfra import host

from deploys import gc_freeze, keys, op_order, ops, preflight
from deploys.components import components_for
from deploys.nodelay import set_nodelay
from inventory.model import Host, Inventory

inventory: Inventory = host.data.llm_inventory
this_host: Host = host.data.llm_host

set_nodelay(host)
op_order.install()  # same order, without inspect.stack() per operation
gc_freeze.install()  # the collector stops rescanning what lives until exit anyway

components = components_for(this_host)
for component in components:
    component.declare(inventory, this_host)
ops.declare(facts=(preflight.request(this_host),))  # read in the same one command as the state

# Read the state now, while pyinfra loads this file for all hosts at once: the hosts' state commands
# overlap. With -y pyinfra evaluates operations only as it executes them, so a host whose first
# operation comes late would otherwise read its state after the others, one round trip later.
ops.snapshot()
# Before the first operation: a host that is not what the inventory says ends the apply here, unchanged.
preflight.refuse_if_wrong(inventory, this_host, ops.snapshot().value(preflight.request(this_host)))

for component in components:
    component.deploy(inventory, this_host)

# Last: a key rotation drops the old keys only once every host has the new ones.
keys.finish_rotation(inventory, this_host)
