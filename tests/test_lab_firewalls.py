"""Exposure (issue 5) on gpu_servers that run their own firewall: firewalld (Fedora) and ufw (Ubuntu).

Each variant gets its own lab instance (LAB_SERVER_FIREWALL=firewalld|ufw, see lab/firewall_hooks.py),
brought up once, applied once with `firewall: auto` and probed by every test of the variant; the two
instances run one after the other on the same prefix and subnets (LAB_FIREWALLS_PREFIX, default lrf-
on 10.216.x, clear of the default lrd- instance on 10.213.x), and are taken down afterwards
(LAB_KEEP=1 keeps the last one up).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from checks.observe import probe
from lab import core as lab_core
from lab.artifacts import prepare_artifacts
from lab.config import FALLBACK_HOSTS, INVENTORY_PATH, LabConfig, load_config, server_firewall
from lab.firewall_hooks import enable_server_firewall
from lab.topology import Topology, build_topology
from lab.variants import write_variant
from tests.conftest import ApplyResult, _lab_unavailable_reason, _refuse, run_apply

REPO = Path(__file__).resolve().parent.parent
FIREWALLS = ("firewalld", "ufw")
ROUTER_PORT, OLLAMA_PORT = 4000, 11434
OPENED_INTERFACES = ("enp1s0", "tailscale0")  # p620's LAN and tailnet interfaces in inventory/lab.yaml



def instance_env() -> dict[str, str]:
    """Prefix and subnets of the instance these tests use (the default lab's 10.213 becomes 10.216)."""
    third = os.environ.get("LAB_FIREWALLS_OCTET", "216")
    return {
        "LAB_PREFIX": os.environ.get("LAB_FIREWALLS_PREFIX", "lrf-"),
        "LAB_LAN_SUBNET": f"10.{third}.1.0/24",
        "LAB_TAILNET_SUBNET": f"100.86.{third}.0/24",
        "LAB_PUBLIC_SUBNET": f"10.{third}.3.0/24",
    }


def write_instance_inventory(dest: Path) -> Path:
    """inventory/lab.yaml with absolute paths, this instance's addresses and `firewall: auto`."""
    def auto(data: dict) -> None:
        data["hosts"]["p620"]["server"]["exposure"]["firewall"] = "auto"

    write_variant(INVENTORY_PATH, dest, auto)
    third = instance_env()["LAB_LAN_SUBNET"].split(".")[1]
    text = dest.read_text().replace("10.213.", f"10.{third}.").replace("100.86.213.", f"100.86.{third}.")
    dest.write_text(text)
    return dest


@dataclass(frozen=True)
class FirewallLab:
    firewall: str
    config: LabConfig
    topology: Topology
    inventory: Path
    first_apply: ApplyResult

    def address(self, segment: str) -> str:
        address = self.topology.node("p620").address_on(segment)
        assert address is not None
        return address


@pytest.fixture(scope="module", params=FIREWALLS)
def firewall_lab(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[FirewallLab]:
    """A lab instance whose p620 runs `request.param`, with the reference site applied once."""
    reason = _lab_unavailable_reason()
    if reason:
        _refuse(reason)
    firewall = request.param
    inventory = write_instance_inventory(tmp_path_factory.mktemp(firewall) / "lab.yaml")
    patch = pytest.MonkeyPatch()
    for name, value in {**instance_env(), "LAB_INVENTORY": str(inventory), "LLM_ROUTER_INVENTORY": str(inventory),
                        "LAB_SERVER_FIREWALL": firewall}.items():
        patch.setenv(name, value)
    config = load_config()
    try:
        # A failure to start is an error, never a skip: the capabilities were checked above.
        lab_core.up(config)
        prepare_artifacts(inventory)
        result = run_apply(inventory=inventory)
        assert result.returncode == 0, f"apply on the {firewall} host failed:\n{result.output[-6000:]}"
        yield FirewallLab(firewall, config, build_topology(config), inventory, result)
    finally:
        if os.environ.get("LAB_KEEP") != "1" or firewall != FIREWALLS[-1]:
            lab_core.down(config)
        patch.undo()


def in_lab(name: str, command: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return lab_core.run(name, ["sh", "-c", command], timeout=timeout)


def tcp(name: str, address: str, port: int) -> str:
    """'open' or 'refused' from a lab host or peer: the probe `python -m checks` runs."""
    return probe([sys.executable, "-m", "lab", "exec", name, "--"], address, port)


def run_checks(inventory: Path) -> tuple[int, list[dict]]:
    out = REPO / ".cache" / "checks" / f"firewalls-{os.getpid()}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    done = subprocess.run([sys.executable, "-m", "checks", "--inventory", str(inventory), "--json", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=600, check=False)
    assert out.exists(), done.stdout + done.stderr
    results = json.loads(out.read_text())
    out.unlink()
    return done.returncode, results


def failing(results: list[dict]) -> dict[str, str]:
    return {f"{r['host']}: {r['check']}": r["reason"] for r in results if r["status"] == "FAIL"}


def zone_of(interface: str) -> str:
    """firewalld's zone for an interface: its bound zone, else the default zone."""
    bound = in_lab("p620", f"firewall-cmd --get-zone-of-interface={interface}")
    if bound.returncode == 0:
        return bound.stdout.strip()
    return in_lab("p620", "firewall-cmd --get-default-zone").stdout.strip()


def assert_exposure(lab: FirewallLab) -> None:
    """The probes of test_lab_site's exposure tests, on this instance."""
    lan, tailnet, wan = lab.address("lan"), lab.address("tailnet"), lab.address("public")
    answers = {
        "lan -> lan:4000": (tcp("lan", lan, ROUTER_PORT), "open"),
        "tailnet -> tailnet:4000": (tcp("tailnet", tailnet, ROUTER_PORT), "open"),
        "p620 -> 127.0.0.1:4000": (tcp("p620", "127.0.0.1", ROUTER_PORT), "open"),
        # The public peer on wan0, and routing to the LAN and tailnet addresses through wan0.
        "public -> wan:4000": (tcp("public", wan, ROUTER_PORT), "refused"),
        "public -> lan:4000": (tcp("public", lan, ROUTER_PORT), "refused"),
        "public -> tailnet:4000": (tcp("public", tailnet, ROUTER_PORT), "refused"),
        "lan -> lan:11434": (tcp("lan", lan, OLLAMA_PORT), "refused"),
        "tailnet -> tailnet:11434": (tcp("tailnet", tailnet, OLLAMA_PORT), "refused"),
        "public -> wan:11434": (tcp("public", wan, OLLAMA_PORT), "refused"),
        "public -> lan:11434": (tcp("public", lan, OLLAMA_PORT), "refused"),
    }
    wrong = {probe_name: got for probe_name, (got, expected) in answers.items() if got != expected}
    assert wrong == {}, f"{lab.firewall}: unexpected answers {wrong}"
    for host in ("p620", "razer"):
        done = subprocess.run(lab_core.ssh_command(host, ["true"], lab.config), capture_output=True, timeout=30,
                              check=False)
        assert done.returncode == 0, f"ssh {host}: {done.stderr!r}"


def assert_their_firewall_opens_the_port_per_interface(firewall: str) -> None:
    if firewall == "firewalld":
        assert in_lab("p620", "firewall-cmd --state").stdout.strip() == "running"
        for interface in OPENED_INTERFACES:
            zone = zone_of(interface)
            for mode in ("", "--permanent "):
                ports = in_lab("p620", f"firewall-cmd {mode}--zone={zone} --list-ports").stdout.split()
                assert f"{ROUTER_PORT}/tcp" in ports, (interface, zone, mode, ports)
        # ssh is still allowed the way the admin had it.
        assert "ssh" in in_lab("p620", f"firewall-cmd --zone={zone_of('enp1s0')} --list-services").stdout.split()
    else:
        status = in_lab("p620", "ufw status").stdout
        assert status.startswith("Status: active"), status
        rules = [line.split() for line in status.splitlines()]
        for interface in OPENED_INTERFACES:
            assert [f"{ROUTER_PORT}/tcp", "on", interface, "ALLOW"] in [rule[:4] for rule in rules], status
        assert not any("wan0" in rule for rule in rules), status
        assert ["OpenSSH", "ALLOW", "Anywhere"] in rules, status


# --- the tests -------------------------------------------------------------------------


@pytest.mark.lab
def test_deploy_detects_the_host_firewall(firewall_lab):
    output = firewall_lab.first_apply.output
    if firewall_lab.firewall == "firewalld":
        assert "firewalld: open the router port" in output
        assert "ufw: allow the router port" not in output
    else:
        assert "ufw: allow the router port" in output
        assert "firewalld: open the router port" not in output
    assert f"loads our table at boot, after {firewall_lab.firewall}" in output
    # Never nftables.service on such a host: its config starts with `flush ruleset`.
    assert "Include /etc/nftables.d/llm-router.nft" not in output
    assert in_lab("p620", "systemctl is-enabled nftables.service").stdout.strip() != "enabled"


@pytest.mark.lab
def test_router_open_on_lan_tailnet_and_loopback_only(firewall_lab):
    assert_exposure(firewall_lab)


@pytest.mark.lab
def test_their_firewall_opens_the_port_on_the_lan_and_tailnet_interfaces(firewall_lab):
    assert_their_firewall_opens_the_port_per_interface(firewall_lab.firewall)
    assert in_lab("p620", "nft list table inet llm_router").returncode == 0


@pytest.mark.lab
def test_second_apply_reports_no_changes(firewall_lab):
    result = run_apply(inventory=firewall_lab.inventory)
    assert result.returncode == 0, result.output[-4000:]
    assert result.converged, result.output[-4000:]


@pytest.mark.lab
def test_checks_all_pass(firewall_lab):
    status, results = run_checks(firewall_lab.inventory)
    assert failing(results) == {}
    assert status == 0
    assert any(r["check"].startswith("probe public") for r in results)


@pytest.mark.lab
def test_their_reload_keeps_our_table_and_the_opened_port(firewall_lab):
    """What an admin runs after editing their firewall: it rebuilds only its own tables."""
    reload = "firewall-cmd --reload" if firewall_lab.firewall == "firewalld" else "ufw reload"
    done = in_lab("p620", reload)
    assert done.returncode == 0, done.stderr
    assert in_lab("p620", "nft list table inet llm_router").returncode == 0
    assert_their_firewall_opens_the_port_per_interface(firewall_lab.firewall)
    assert_exposure(firewall_lab)


@pytest.mark.lab
def test_everything_survives_a_reboot(firewall_lab):
    assert lab_core.reboot("p620", firewall_lab.config) == "running"
    live = in_lab("p620", "for i in $(seq 180); do curl -s -o /dev/null -m 2 "
                          "http://127.0.0.1:4000/health/liveliness && exit 0; sleep 1; done; exit 1", timeout=240)
    assert live.returncode == 0, "the router did not come back after the reboot"
    unit = "firewalld.service" if firewall_lab.firewall == "firewalld" else "ufw.service"
    # Our table is loaded after their firewall started, by our own unit.
    started = in_lab("p620", f"systemctl show -P ActiveEnterTimestampMonotonic {unit} llm-router-firewall.service")
    theirs, ours = (int(value) for value in started.stdout.split())
    assert 0 < theirs <= ours, started.stdout
    assert in_lab("p620", "nft list table inet llm_router").returncode == 0
    assert_their_firewall_opens_the_port_per_interface(firewall_lab.firewall)
    assert_exposure(firewall_lab)
    status, results = run_checks(firewall_lab.inventory)
    assert failing(results) == {} and status == 0


# --- the lab hook, without a lab --------------------------------------------------------


@pytest.mark.parametrize("firewall", FIREWALLS)
def test_hook_turns_the_firewall_on_for_the_gpu_server_only(firewall, tmp_path, monkeypatch):
    monkeypatch.setenv("LAB_SERVER_FIREWALL", firewall)
    base = tmp_path / "base"
    base.mkdir()
    p620, razer = FALLBACK_HOSTS
    for host in (p620, razer):
        (tmp_path / host.name).mkdir()
        enable_server_firewall(host, tmp_path / host.name, base)
    written = {str(path.relative_to(tmp_path / "p620")) for path in (tmp_path / "p620").rglob("*")
               if path.is_file() or path.is_symlink()}
    assert list((tmp_path / "razer").iterdir()) == []
    wants = "etc/systemd/system/multi-user.target.wants"
    if firewall == "firewalld":
        assert written == {f"{wants}/firewalld.service", "etc/systemd/system/dbus-org.fedoraproject.FirewallD1.service",
                           "etc/firewalld/zones/internal.xml"}
        assert '<interface name="tailscale0"/>' in (tmp_path / "p620/etc/firewalld/zones/internal.xml").read_text()
    else:
        assert written == {f"{wants}/lab-ufw-setup.service", "etc/systemd/system/lab-ufw-setup.service"}
        unit = (tmp_path / "p620/etc/systemd/system/lab-ufw-setup.service").read_text()
        commands = [line.removeprefix("ExecStart=") for line in unit.splitlines() if line.startswith("ExecStart=")]
        # The admin's order: allow ssh before enabling, so the session that enables it survives.
        assert commands[0] == "/usr/sbin/ufw allow OpenSSH" and commands[2] == "/usr/sbin/ufw --force enable"


def test_server_firewall_setting(monkeypatch):
    monkeypatch.delenv("LAB_SERVER_FIREWALL", raising=False)
    assert server_firewall() is None
    monkeypatch.setenv("LAB_SERVER_FIREWALL", "ufw")
    assert server_firewall() == "ufw"
    monkeypatch.setenv("LAB_SERVER_FIREWALL", "iptables")
    with pytest.raises(ValueError, match="firewalld, ufw"):
        server_firewall()
