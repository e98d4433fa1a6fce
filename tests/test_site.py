"""deploys/site.py as the pyinfra CLI loads it: the components' operations in the table's order on every host.

pyinfra orders the operations of different hosts by the line numbers of the calls that made them
(deploys/op_order.py), so here a server-only host and a client-only host share no operation and
only that order decides whether the client's operations interleave with the server's.
"""

from __future__ import annotations

from pathlib import Path
from unittest.mock import patch

import pyinfra
from pyinfra.api import Config, State
from pyinfra.api import Inventory as PyinfraInventory
from pyinfra.api.state import StateStage
from pyinfra.context import ctx_config, ctx_host, ctx_state
from pyinfra.facts.server import LinuxDistribution, TmpDir
from pyinfra_cli.util import exec_file

from deploys import gc_freeze, keys, op_order
from facts.host_state import HostState, Snapshot
from inventory.hosts import pyinfra_host_data
from inventory.load import load_inventory
from tests.deploy_harness import as_declared, forget_host

REPO = Path(__file__).resolve().parent.parent
SITE = str(REPO / "deploys" / "site.py")


def split_lab_inventory(tmp_path: Path) -> Path:
    """lab.yaml with p620 a server only and razer its only client; secrets and wheelhouse in tmp_path."""
    source = (REPO / "inventory" / "lab.yaml").read_text()
    source = source.replace("secrets_dir: ../.cache/lab/secrets", "secrets_dir: secrets")
    source = source.replace("wheelhouse_dir: ../.cache/wheelhouse", "wheelhouse_dir: wheelhouse")
    source = source.replace("    roles: [gpu_server, client]\n", "    roles: [gpu_server]\n", 1)
    p620_client = "    client:\n      router: p620\n      users:\n        - name: olaf\n\n  razer:"
    assert p620_client in source
    source = source.replace(p620_client, "\n  razer:", 1)
    path = tmp_path / "inventory.yaml"
    path.write_text(source)
    version = load_inventory(path).hosts["p620"].server.router.litellm_version
    wheelhouse = tmp_path / "wheelhouse"
    wheelhouse.mkdir()
    (wheelhouse / f"litellm-{version}-py3-none-any.whl").write_bytes(b"litellm wheel")
    (wheelhouse / "prisma-0.15.0-py3-none-any.whl").write_bytes(b"prisma wheel")
    (wheelhouse / "requirements.lock").write_text(f"litellm=={version} --hash=sha256:" + "1" * 64 + "\n")
    return path


def site_operation_order(inventory_path: Path, monkeypatch) -> list[tuple[str, tuple[str, ...]]]:
    """(operation name, hosts) in pyinfra's order after loading site.py for every host, as `pyinfra` does."""
    inv = load_inventory(inventory_path)
    keys._keyrings.clear()
    monkeypatch.setattr(pyinfra, "is_cli", True)
    monkeypatch.setattr(gc_freeze, "_installed", True)  # not in the test process
    # site.py installs the frame-based order; put pyinfra's own function back afterwards.
    monkeypatch.setattr(op_order.pyinfra_operation, "get_operation_order_from_stack",
                        op_order.pyinfra_operation.get_operation_order_from_stack)
    pyinfra_inventory = PyinfraInventory(([(h.name, pyinfra_host_data(inv, h)) for h in inv.hosts.values()], {}))
    state = State(pyinfra_inventory, Config())
    state.set_stage(StateStage.Prepare)
    state.current_deploy_filename = SITE
    installed = Snapshot.of(commands={"nft": True})  # nftables: the firewall choice needs a backend

    def get_fact(self, cls, *args, **kwargs):
        if cls is HostState:
            return as_declared(installed, **kwargs)
        if cls is TmpDir:
            return "/tmp"
        if cls is LinuxDistribution:
            return {"name": "Debian", "release_meta": {"ID": "debian"}}
        raise AssertionError(f"unexpected fact {cls.__name__}")

    hosts = list(pyinfra_inventory)
    with patch("pyinfra.api.host.Host.get_fact", get_fact), ctx_state.use(state):
        for host in hosts:
            forget_host(host.name)
            state.current_op_file_number = 0
            with ctx_config.use(state.config.copy()), ctx_host.use(host):
                exec_file(SITE)
        order = [(", ".join(sorted(state.get_op_meta(op_hash).names)),
                  tuple(host.name for host in hosts if op_hash in host.op_hash_order))
                 for op_hash in state.get_op_order()]
    for host in hosts:
        forget_host(host.name)
    return order


def test_site_orders_operations_by_the_component_table_across_hosts(tmp_path, monkeypatch):
    order = site_operation_order(split_lab_inventory(tmp_path), monkeypatch)
    on_razer = [name for name, hosts in order if hosts == ("razer",)]
    on_p620 = [name for name, hosts in order if hosts == ("p620",)]
    assert len(on_razer) + len(on_p620) == len(order)  # no operation shared by both hosts
    assert on_razer and all(name.startswith("Claude Code client | ") for name in on_razer)
    # Each host's operations in its components' order...
    server_components = ["Ollama", "LiteLLM router", "Exposure: firewall, tailscale serve, caddy"]
    p620_components = [name.split(" | ")[0] for name in on_p620]
    assert set(p620_components) == set(server_components)
    assert p620_components == sorted(p620_components, key=server_components.index)
    # ...and pyinfra runs the hosts' next operations side by side, the server's first: the table's order.
    assert [hosts for _, hosts in order[:2 * len(on_razer)]] == [("p620",), ("razer",)] * len(on_razer)
