"""deploys/exposure.py without a host: the nftables table, firewall choice, tailscale serve, caddy."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import pytest
from pyinfra.api.exceptions import DeployError
from ruamel.yaml import YAML

from deploys import exposure
from deploys.state import PathState, Probe, Snapshot, UnitState
from inventory.load import load_inventory
from tests.deploy_harness import changes, plan

REPO = Path(__file__).resolve().parent.parent
INV = load_inventory(REPO / "inventory" / "lab.yaml")
P620 = INV.hosts["p620"]
SERVED = json.dumps({"TCP": {"443": {"HTTPS": True}}, "Web": {
    "p620.tail-lab.ts.net:443": {"Handlers": {"/router": {"Proxy": "http://localhost:4000"}}}}})


def test_nft_table_admits_exactly_the_inventory_interfaces():
    text = exposure.nft_ruleset(P620)
    assert 'tcp dport 4000 iifname != { "lo", "tailscale0", "enp1s0" } reject with tcp reset' in text
    assert 'tcp dport 11434 iifname != { "lo" } reject with tcp reset' in text
    # Our own table only: never a flush of the ruleset or of anyone else's table.
    assert "flush ruleset" not in text and text.count("table inet llm_router") == 3


@pytest.mark.skipif(shutil.which("nft") is None or shutil.which("ip") is None, reason="needs nft and ip")
def test_nft_table_loads_twice_in_a_scratch_namespace(tmp_path):
    """The file is valid for the real nft and re-loading it replaces our table atomically."""
    path = tmp_path / "t.nft"
    path.write_text(exposure.nft_ruleset(P620))
    ns = f"lrdexp{path.stat().st_ino % 100000}"
    if subprocess.run(["ip", "netns", "add", ns], capture_output=True, check=False).returncode != 0:
        pytest.skip("cannot create a network namespace here")
    try:
        other = "add table inet admin; add chain inet admin input { type filter hook input priority 0; policy accept; }"
        subprocess.run(["ip", "netns", "exec", ns, "nft", *other.split()], check=True)
        for _ in range(2):
            subprocess.run(["ip", "netns", "exec", ns, "nft", "-f", str(path)], check=True)
        listing = subprocess.run(["ip", "netns", "exec", ns, "nft", "list", "tables"], check=True,
                                 capture_output=True, text=True).stdout
        assert listing.split() == ["table", "inet", "admin", "table", "inet", "llm_router"]
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)


def test_choose_firewall():
    assert exposure.choose_firewall("auto", {"firewalld.service"}, {"nft"}, False) == "firewalld"
    assert exposure.choose_firewall("auto", set(), {"nft", "ufw"}, True) == "ufw"
    assert exposure.choose_firewall("auto", set(), {"nft"}, False) == "nftables"
    assert exposure.choose_firewall("ufw", set(), set(), False) == "ufw"
    with pytest.raises(DeployError, match="install nftables"):
        exposure.choose_firewall("auto", set(), set(), False)


def test_serve_is_current():
    assert exposure.serve_is_current(P620.server, SERVED)
    assert not exposure.serve_is_current(P620.server, "{}")
    assert not exposure.serve_is_current(P620.server, SERVED.replace("4000", "4001"))


def test_serve_unit_waits_for_tailscale_and_applies_the_mapping():
    unit = exposure.serve_unit(P620.server)
    assert "ExecStart=tailscale serve --bg --https=443 --set-path=/router http://localhost:4000" in unit
    assert "tailscale status" in unit and "WantedBy=multi-user.target" in unit


def converged() -> Snapshot:
    return Snapshot(
        paths={exposure.NFT_FILE: PathState("file", "644", "root", "root",
                                            hashlib.sha256(exposure.nft_ruleset(P620).encode())
                                            .hexdigest()),
               exposure.NFT_DIR: PathState("dir", "755", "root", "root"),
               exposure.SERVE_UNIT_PATH: PathState("file", "644", "root", "root",
                                                   hashlib.sha256(exposure.serve_unit(P620.server)
                                                                                .encode()).hexdigest())},
        units={"nftables.service": UnitState("loaded", "active", "enabled"),
               exposure.SERVE_UNIT: UnitState("loaded", "active", "enabled")},
        commands=frozenset({"nft", "tailscale"}),
        probes={exposure.PROBE_NFT_TABLE: Probe(0, ""), exposure.PROBE_NFT_INCLUDE: Probe(0, ""),
                exposure.PROBE_SERVE: Probe(0, SERVED), exposure.PROBE_UFW: Probe(127, "")},
    )


def run(snapshot: Snapshot, inv=INV):
    return plan(lambda: exposure.exposure(inv, inv.hosts["p620"]), "p620", snapshot)


def test_converged_host_yields_no_commands():
    assert changes(run(converged())) == {}


def test_flushed_table_is_reloaded_and_nothing_else():
    snap = converged()
    snap.probes[exposure.PROBE_NFT_TABLE] = Probe(1, "")
    assert list(changes(run(snap)).values()) == [[f"nft -f {exposure.NFT_FILE}"]]


def test_reset_serve_config_is_reapplied():
    snap = converged()
    snap.probes[exposure.PROBE_SERVE] = Probe(0, "{}")
    assert list(changes(run(snap)).values()) == [
        ["tailscale serve --bg --https=443 --set-path=/router http://localhost:4000"]]


def test_missing_include_appends_two_lines_to_nftables_conf():
    snap = converged()
    snap.probes[exposure.PROBE_NFT_INCLUDE] = Probe(1, "")
    [commands] = changes(run(snap)).values()
    assert commands[0].endswith(f">> {exposure.NFT_CONF}") and exposure.NFT_INCLUDE in commands[0]


def test_ufw_host_gets_per_interface_rules_and_our_table():
    snap = converged()
    snap.probes[exposure.PROBE_UFW] = Probe(0, "Status: active\n")
    found = changes(run(snap))
    ufw = next(commands for name, commands in found.items() if "ufw" in name)
    assert ufw == ["ufw allow in on tailscale0 to any port 4000 proto tcp comment llm-router",
                   "ufw allow in on enp1s0 to any port 4000 proto tcp comment llm-router"]


def test_exposure_off_removes_only_ours(tmp_path):
    yaml = YAML()
    data = yaml.load((REPO / "inventory" / "lab.yaml").read_text())
    del data["hosts"]["razer"]  # a remote client needs the published router
    exposure_section = data["hosts"]["p620"]["server"]["exposure"]
    exposure_section["firewall"] = "none"
    exposure_section["tailscale_serve"]["enabled"] = False
    path = tmp_path / "off.yaml"
    with path.open("w") as f:
        yaml.dump(data, f)
    off = load_inventory(path)
    found = changes(run(converged(), inv=off))
    flat = " ; ".join(c for commands in found.values() for c in commands)
    assert "nft delete table inet llm_router" in flat
    assert "sed -i -e" in flat and exposure.NFT_CONF in flat
    assert "tailscale serve --https=443 --set-path=/router off" in flat
    assert "flush" not in flat
    # nftables.service was enabled before us in this snapshot (no marker): it stays enabled.
    assert "disable nftables.service" not in flat


def test_nftables_service_is_enabled_for_boot_but_never_started():
    snap = converged()
    snap.units["nftables.service"] = UnitState("loaded", "inactive", "disabled")
    [commands] = changes(run(snap)).values()
    assert commands == [f"systemctl enable nftables.service && touch {exposure.NFT_ENABLED_MARKER}"]
    assert "start" not in commands[0]


def test_ufw_host_loads_our_table_at_boot_with_our_own_unit_not_nftables_service():
    snap = converged()
    snap.probes[exposure.PROBE_UFW] = Probe(0, "Status: active\n")
    snap.probes[exposure.PROBE_NFT_INCLUDE] = Probe(1, "")
    snap.units["nftables.service"] = UnitState("loaded", "inactive", "disabled")
    found = changes(run(snap))
    flat = " ; ".join(c for commands in found.values() for c in commands)
    assert exposure.BOOT_UNIT_PATH in " ".join(found) or "llm-router-firewall.service" in flat
    assert "nftables.service" not in flat and exposure.NFT_CONF not in flat
