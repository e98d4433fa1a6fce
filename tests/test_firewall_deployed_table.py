"""The table the deploy renders, loaded by the kernel in a throwaway network namespace, then evaluated.

The hand-written scenarios in tests/fixtures/nft test the evaluator; this test is about the deploy: what
`deploys.exposure.nft_ruleset` writes for the lab's p620 must admit the router from loopback, the LAN and
the tailnet only, Ollama from loopback only, and the HTTPS front on the tailnet address from the tailnet
only, each refusal a TCP reset. Expected values come from inventory/lab.yaml as a reader sees it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest

from checks.nft_eval import admitted_interfaces
from deploys.exposure import nft_ruleset
from inventory.load import load_inventory
from tests.conftest import REPO_ROOT

INTERFACES = ("lo", "enp1s0", "tailscale0", "wan0")  # p620's in inventory/lab.yaml, plus a public one
TAILNET_ADDRESS, LAN_ADDRESS = "100.86.213.10", "10.213.1.10"


@pytest.fixture(scope="module")
def deployed_table() -> dict:
    if os.geteuid() != 0 or shutil.which("nft") is None or shutil.which("unshare") is None:
        reason = "loading the rendered table needs root, nft and unshare"
        if os.environ.get("LAB_REQUIRED") == "1":
            pytest.fail(f"LAB_REQUIRED=1 but {reason}", pytrace=False)
        pytest.skip(reason)
    p620 = load_inventory(REPO_ROOT / "inventory" / "lab.yaml").hosts["p620"]
    text = nft_ruleset(p620)
    # A new network namespace has an empty ruleset: the host's own firewall is never touched.
    done = subprocess.run(["unshare", "--net", "sh", "-c", "nft -f - && nft -j list ruleset"], input=text,
                          capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 0, f"the kernel refused the rendered table:\n{done.stderr}\n{text}"
    return json.loads(done.stdout)


def test_router_port_admits_loopback_lan_and_tailnet_and_resets_the_rest(deployed_table):
    router = admitted_interfaces(deployed_table, 4000, INTERFACES)
    assert (router.accepted, router.dropped, router.uncertain) == (["lo", "enp1s0", "tailscale0"], ["wan0"], [])
    assert router.decisions["wan0"].decided_by.endswith("reject")
    # A public peer that routes to the LAN address arrives on wan0: the rule matches the interface.
    assert admitted_interfaces(deployed_table, 4000, ["wan0"], daddr=LAN_ADDRESS).dropped == ["wan0"]


def test_ollama_port_admits_loopback_only(deployed_table):
    ollama = admitted_interfaces(deployed_table, 11434, INTERFACES)
    assert (ollama.accepted, ollama.dropped) == (["lo"], ["enp1s0", "tailscale0", "wan0"])


def test_https_front_on_the_tailnet_address_admits_the_tailnet_only(deployed_table):
    front = admitted_interfaces(deployed_table, 443, INTERFACES, daddr=TAILNET_ADDRESS)
    assert (front.accepted, front.dropped) == (["lo", "tailscale0"], ["enp1s0", "wan0"])
    # Port 443 of the host's other addresses is not ours to restrict.
    assert admitted_interfaces(deployed_table, 443, INTERFACES, daddr=LAN_ADDRESS).accepted == list(INTERFACES)


def test_every_refusal_is_a_tcp_reset_as_the_kernel_holds_it(deployed_table):
    verdicts = [expr["reject"] for item in deployed_table["nftables"] if "rule" in item
                for expr in item["rule"]["expr"] if "reject" in expr]
    assert verdicts == [{"type": "tcp reset"}] * 3  # router, Ollama, the tailnet front


def test_ssh_and_other_ports_are_left_alone(deployed_table):
    assert admitted_interfaces(deployed_table, 22, INTERFACES).accepted == list(INTERFACES)
