"""inventory/lab.yaml pins the stand-in release exactly as a user pins a real Ollama release."""

from pathlib import Path

from inventory.derive import ollama_archives
from inventory.load import load_inventory
from lab.config import DEFAULT_LAN_SUBNET, DEFAULT_TAILNET_SUBNET
from lab.standins.ollama.build import build_release

REPO = Path(__file__).resolve().parent.parent
LAB = load_inventory(REPO / "inventory" / "lab.yaml")


def test_lab_inventory_pins_the_stand_in_release(tmp_path):
    ollama = LAB.hosts["p620"].server.ollama
    built = build_release(tmp_path, ollama.version)
    assert dict(ollama_archives(ollama)) == built, (
        "lab/standins/ollama changed: update the sha256 pins in inventory/lab.yaml to " + repr(built))


def test_lab_inventory_addresses_are_in_the_lab_subnets():
    import ipaddress

    lan, tailnet = ipaddress.ip_network(DEFAULT_LAN_SUBNET), ipaddress.ip_network(DEFAULT_TAILNET_SUBNET)
    for host in LAB.hosts.values():
        if host.network.lan_address:
            assert host.network.lan_address in lan
        if host.network.tailnet_address:
            assert host.network.tailnet_address in tailnet
