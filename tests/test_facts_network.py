import json
import shutil
import subprocess

import pytest

from facts.network import (
    NetworkInterfaces,
    interface_named,
    interface_with_address,
    parse_ip_addr,
    strip_peer_suffix,
)


def test_strip_peer_suffix():
    assert strip_peer_suffix("enp1s0@if12") == "enp1s0"
    assert strip_peer_suffix("vlan10@enp1s0") == "vlan10"
    assert strip_peer_suffix("tailscale0") == "tailscale0"


def _links():
    return parse_ip_addr(
        [
            json.dumps(
                [
                    {
                        "ifindex": 2,
                        "ifname": "host0@if5",
                        "flags": ["BROADCAST", "UP"],
                        "operstate": "UP",
                        "addr_info": [
                            {"family": "inet", "local": "192.168.1.20", "prefixlen": 24, "scope": "global"}
                        ],
                    },
                    {
                        "ifindex": 3,
                        "ifname": "tailscale0",
                        "flags": ["POINTOPOINT", "NOARP"],
                        "operstate": "DOWN",
                        "addr_info": [
                            {"family": "inet", "local": "100.64.0.1", "prefixlen": 32, "scope": "global"}
                        ],
                    },
                ]
            )
        ]
    )


def test_lookups_by_name_and_address():
    links = _links()
    assert interface_named(links, "host0").index == 2
    assert interface_named(links, "host0@if5") is None
    assert interface_with_address(links, "100.64.0.1").name == "tailscale0"
    assert interface_with_address(links, "10.0.0.1") is None


def test_is_up_reads_the_admin_flag():
    links = _links()
    assert [link.is_up for link in links] == [True, False]


def test_non_list_json_gives_no_interfaces():
    assert parse_ip_addr(['{"ifname": "lo"}']) == ()
    assert parse_ip_addr([]) == ()


@pytest.mark.skipif(shutil.which("ip") is None, reason="iproute2 not installed")
def test_real_ip_output_has_loopback():
    output = subprocess.run(NetworkInterfaces().command().split(), capture_output=True, text=True, check=True)
    loopback = interface_named(parse_ip_addr(output.stdout.splitlines()), "lo")
    assert loopback is not None
    assert ("inet", "127.0.0.1", 8) in [(a.family, a.address, a.prefixlen) for a in loopback.addresses]
