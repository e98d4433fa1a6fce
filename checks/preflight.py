"""`python -m checks preflight`: the apply's preflight (deploys/preflight.py) as a table, before any apply.

The workstation's own checks come first (each host's SSH key and name, inventory/workstation.py);
then each reachable host is read with the same fact the apply reads and judged by the same rules.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from checks.core import Result
from checks.observe import connected, fact
from deploys import preflight
from facts.preflight import HostPreflight
from inventory.model import Inventory
from inventory.workstation import ssh_problems


def preflight_results(inv: Inventory, path: Path) -> list[Result]:
    results = []
    unusable = set()
    for host in inv.hosts.values():
        for key, message in ssh_problems(inv, host):
            unusable.add(host.name)
            results.append(Result(host.name, f"ssh.{key} usable", "readable key, resolvable name",
                                   f"{path}: hosts.{host.name}.ssh.{key}", "FAIL", message))
    with connected(inv) as hosts:
        for model in inv.hosts.values():
            if model.name in unusable:
                continue
            if model.name not in hosts:
                results.append(Result(model.name, "ssh", "reachable", "unreachable", "FAIL",
                                      f"cannot connect to {model.ssh.hostname}:{model.ssh.port}"))
                continue
            request = preflight.request(model)
            facts = fact(hosts[model.name], HostPreflight, **dict(request.arguments))
            results += [Result(**asdict(finding)) for finding in preflight.judge(inv, model, facts)]
    return results
