"""The whole site on the lab: exposure (issue 5) and the acceptance checks with sabotage (issue 7)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from checks.observe import probe
from inventory.load import load_inventory
from lab import core as lab_core
from lab.config import load_config
from lab.topology import build_topology
from lab.variants import write_variant
from tests.conftest import LAB_INVENTORY, ruleset_without_ours

REPO = Path(__file__).resolve().parent.parent
_P620 = build_topology(load_config()).node("p620")
P620_LAN, P620_TAILNET, P620_WAN = (_P620.address_on(segment) for segment in ("lan", "tailnet", "public"))
TAILNET_URL = "https://" + load_inventory(LAB_INVENTORY).hosts["p620"].network.tailnet_dns_name + "/router"

pytestmark = pytest.mark.lab


def in_lab(name: str, command: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return lab_core.run(name, ["sh", "-c", command], timeout=timeout)


def tcp(name: str, address: str, port: int) -> str:
    """'open' or 'refused' from a lab host or peer: the same probe `python -m checks` runs."""
    return probe([sys.executable, "-m", "lab", "exec", name, "--"], address, port)


def run_checks(*args: str) -> tuple[int, list[dict]]:
    out = REPO / ".cache" / "checks" / "last.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    done = subprocess.run([sys.executable, "-m", "checks", *args, "--inventory", str(LAB_INVENTORY),
                           "--json", str(out)], cwd=REPO, capture_output=True, text=True, timeout=600, check=False)
    assert out.exists(), done.stdout + done.stderr
    return done.returncode, json.loads(out.read_text())


# --- exposure -----------------------------------------------------------------------


def test_router_reachable_from_lan_and_tailnet_peers(deployed):
    assert tcp("lan", P620_LAN, 4000) == "open"
    assert tcp("tailnet", P620_TAILNET, 4000) == "open"


@pytest.mark.parametrize("address", [P620_WAN, P620_LAN, P620_TAILNET])
def test_public_peer_is_refused_even_when_routing_to_lan_and_tailnet_addresses(deployed, address):
    assert tcp("public", address, 4000) == "refused"


def test_tailscale_serve_port_answers_the_tailnet_only(deployed):
    """The HTTPS front on the tailnet address: Linux would also answer a peer routing to it via wan0."""
    assert tcp("tailnet", P620_TAILNET, 443) == "open"
    assert tcp("public", P620_TAILNET, 443) == "refused"


@pytest.mark.parametrize("peer,address", [("lan", P620_LAN), ("tailnet", P620_TAILNET), ("public", P620_WAN),
                                          ("public", P620_LAN)])
def test_ollama_port_refused_from_every_peer(deployed, peer, address):
    assert tcp(peer, address, 11434) == "refused"


def test_loopback_router_and_ssh_still_work(deployed):
    assert tcp("p620", "127.0.0.1", 4000) == "open"
    for host in ("p620", "razer"):
        done = subprocess.run(lab_core.ssh_command(host, ["true"]), capture_output=True, timeout=30, check=False)
        assert done.returncode == 0, done.stderr


def test_razer_reaches_the_router_through_tailscale_serve(deployed):
    """https://p620.<tailnet>.ts.net/router/v1/messages from razer, with razer's own key."""
    key_file = "/home/olaf/.config/claude-router/key"
    body = json.dumps({"model": "claude-sonnet-4-6", "max_tokens": 16,
                       "messages": [{"role": "user", "content": "say hi"}]})
    done = in_lab("razer", f"printf 'x-api-key: %s\\n' \"$(cat {key_file})\" > /tmp/h; "
                           f"curl -sS -m 60 -H @/tmp/h -H 'content-type: application/json' "
                           f"-H 'anthropic-version: 2023-06-01' -d '{body}' "
                           f"{TAILNET_URL}/v1/messages; rm -f /tmp/h", timeout=90)
    answer = json.loads(done.stdout)
    assert answer["type"] == "message", done.stdout + done.stderr
    assert "stand-in" in answer["content"][0]["text"]


def test_firewall_table_is_loaded_at_boot_from_nftables_conf(deployed):
    conf = in_lab("p620", "cat /etc/nftables.conf").stdout
    assert 'include "/etc/nftables.d/llm-router.nft"' in conf
    assert in_lab("p620", "systemctl is-enabled nftables.service").stdout.strip() == "enabled"
    # The boot-time load parses with our include (checked only: loading it would flush the ruleset;
    # the reboot test below boots for real).
    checked = in_lab("p620", "nft -c -f /etc/nftables.conf")
    assert checked.returncode == 0, checked.stderr
    assert tcp("public", P620_LAN, 4000) == "refused"
    assert tcp("lan", P620_LAN, 4000) == "open"


def test_second_apply_reports_no_changes(deployed, apply):
    result = apply()
    assert result.converged, result.output[-3000:]


# --- acceptance checks and sabotage -------------------------------------------------


def failing(results: list[dict]) -> set[str]:
    return {f"{r['host']}: {r['check']}" for r in results if r["status"] == "FAIL"}


def test_checks_all_pass_after_deploy(deployed):
    status, results = run_checks()
    assert failing(results) == set(), results
    assert status == 0
    names = {r["check"] for r in results}
    assert "ollama listens on loopback only" in names and "tailscale serve" in names
    assert any(r["check"].startswith("probe public") for r in results)


SABOTAGE = [
    # (id, break it, expected failing checks (regex on "host: check"), repair)
    ("ollama-rebound",
     ("mkdir -p /etc/systemd/system/ollama.service.d && printf '[Service]\\nEnvironment=OLLAMA_HOST=0.0.0.0:11434\\n'"
     " > /etc/systemd/system/ollama.service.d/sabotage.conf && systemctl daemon-reload && systemctl restart ollama"),
     # The firewall still refuses 11434 from every peer (defence in depth): only the bind check fails.
     [r"p620: ollama listens on loopback only"],
     "rm -rf /etc/systemd/system/ollama.service.d && systemctl daemon-reload && systemctl restart ollama"),
    ("firewall-table-deleted", "nft delete table inet llm_router",
     [r"p620: firewall admits", r"p620: probe public"], "nft -f /etc/nftables.d/llm-router.nft"),
    ("key-file-0644", "chmod 644 /home/olaf/.config/claude-router/key",
     [r"p620: olaf's router key mode and owner"], "chmod 600 /home/olaf/.config/claude-router/key"),
    ("serve-reset", "tailscale serve reset", [r"p620: tailscale serve", r"razer: client request with its key"],
     "systemctl restart llm-router-tailscale-serve"),
    ("router-stopped", "systemctl stop llm-router",
     [r"p620: router listens", r"llm-router.service enabled and active", r"client request with its key",
      r"probe (lan|tailnet) -> .*:4000"],
     ("systemctl start llm-router && for i in $(seq 60); do curl -s -o /dev/null 127.0.0.1:4000/health/liveliness "
     "&& break; sleep 1; done")),
]


@pytest.mark.parametrize("case_id,sabotage,expected,repair", SABOTAGE, ids=[c[0] for c in SABOTAGE])
def test_sabotage_fails_exactly_the_matching_check(deployed, case_id, sabotage, expected, repair):
    broken = in_lab("p620", sabotage, timeout=120)
    assert broken.returncode == 0, broken.stderr
    try:
        status, results = run_checks()
    finally:
        fixed = in_lab("p620", repair, timeout=120)
        assert fixed.returncode == 0, fixed.stderr
    failed = failing(results)
    assert status == 1
    for pattern in expected:
        assert any(re.search(pattern, f) for f in failed), (pattern, failed)
    unexpected = {f for f in failed if not any(re.search(p, f) for p in expected)}
    assert unexpected == set(), unexpected
    # Each failure tells the user what is wrong.
    assert all(r["reason"] for r in results if r["status"] == "FAIL")


def test_exposure_off_removes_ours_and_nothing_else(deployed, apply, tmp_path):
    def off(data: dict) -> None:
        exposure = data["hosts"]["p620"]["server"]["exposure"]
        exposure["firewall"] = "none"
        exposure["tailscale_serve"]["enabled"] = False
        # razer reaches p620 only through tailscale serve: without it, razer cannot be a client.
        del data["hosts"]["razer"]
        data.pop("checks", None)

    variant = write_variant(LAB_INVENTORY, tmp_path / "exposure-off.yaml", off)
    try:
        removed = apply(inventory=variant)
        assert removed.returncode == 0, removed.output[-4000:]
        assert ruleset_without_ours() == deployed.ruleset_before
        assert in_lab("p620", "nft list table inet llm_router").returncode != 0
        conf = in_lab("p620", "cat /etc/nftables.conf").stdout
        assert conf == deployed.nftables_conf_before
        assert in_lab("p620", "test -e /etc/systemd/system/llm-router-tailscale-serve.service").returncode == 1
        assert "/router" not in in_lab("p620", "tailscale serve status --json").stdout
        assert tcp("lan", P620_LAN, 4000) == "open"  # the router itself is untouched
    finally:
        restored = apply()
        assert restored.returncode == 0, restored.output[-4000:]
    assert tcp("public", P620_LAN, 4000) == "refused"


def wait_for_router(timeout: int = 180) -> None:
    done = in_lab("p620", f"for i in $(seq {timeout}); do curl -s -o /dev/null -m 2 "
                          "http://127.0.0.1:4000/health/liveliness && exit 0; sleep 1; done; exit 1",
                  timeout=timeout + 30)
    assert done.returncode == 0, "the router did not come back"


def test_rules_and_serve_survive_a_reboot(deployed):
    assert lab_core.reboot("p620") == "running"
    wait_for_router()
    assert in_lab("p620", "nft list table inet llm_router").returncode == 0
    assert "/router" in in_lab("p620", "tailscale serve status --json").stdout
    status, results = run_checks()
    assert failing(results) == set() and status == 0
