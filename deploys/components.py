"""The stack's components, in deploy order: the roles each serves, what it declares, how it deploys.

deploys/site.py reads this table once per host: it declares every component that applies, reads
the host's state once, then deploys the same components in the same order.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from deploys import client, exposure, ollama, router
from inventory.model import Host, Inventory, Role

Step = Callable[[Inventory, Host], None]


@dataclass(frozen=True)
class Component:
    roles: frozenset[Role]
    declare: Step  # registers what it manages in the host's one state read; adds no operation
    deploy: Step  # the component's operations

    def applies_to(self, host: Host) -> bool:
        return not self.roles.isdisjoint(host.roles)


SERVER = frozenset({Role.gpu_server})
CLIENT = frozenset({Role.client})

# pyinfra orders operations by the line numbers of the calls that lead to them, and site.py deploys
# every component from one line: so each `deploy` is a lambda whose call runs on its row's own line,
# and the rows' order stays the order of their operations on every host.
COMPONENTS: tuple[Component, ...] = (
    Component(SERVER, ollama.declare, lambda inv, host: ollama.ollama(inv, host)),
    Component(SERVER, router.declare, lambda inv, host: router.router(inv, host)),
    Component(SERVER, exposure.declare, lambda inv, host: exposure.exposure(inv, host)),
    Component(CLIENT, client.declare, lambda inv, host: client.client(inv, host)),
)


def components_for(host: Host) -> tuple[Component, ...]:
    """The components `host`'s roles call for, in deploy order."""
    return tuple(component for component in COMPONENTS if component.applies_to(host))
