"""The lab: pure parts (address plan, image recipe, files written into hosts) and, marked `lab`, the
running topology (boot, SSH, names, the public path a firewall must close, clean teardown)."""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import time
from dataclasses import replace
from pathlib import Path

import pytest

from lab import core, network
from lab.config import CACHE_DIR, FALLBACK_HOSTS, LabConfig, LabHost, address_in, validate_prefix
from lab.containers import Container, passwd_entries
from lab.image import PACKAGES, mirror_from_deb822, mirror_from_sources_list, recipe, recipe_hash
from lab.overlay import apply_overlays
from lab.topology import LAN, PUBLIC, TAILNET, build_topology, hosts_file, ssh_address
from lab.upper_layer import ensure_upper_dir

HOME_NETWORKS = [ipaddress.ip_network(n) for n in ("192.168.0.0/24", "192.168.1.0/24", "10.0.0.0/16")]

# A second instance for the teardown test: its own prefix and subnets, next to the session lab, and
# distinct per pytest session so concurrent sessions do not share it.
_SESSION = os.getpid() % 250 + 1
SECOND_INSTANCE = LabConfig(
    prefix=f"lt{_SESSION}-",
    lan_subnet=f"10.214.{_SESSION}.0/24",
    tailnet_subnet=f"100.87.{_SESSION}.0/24",
    public_subnet=f"10.216.{_SESSION}.0/24",
)


# --- pure ---------------------------------------------------------------------------------------------


def test_default_plan_avoids_home_networks_and_addresses_are_unique() -> None:
    topology = build_topology(LabConfig())
    addresses = [i.address for node in topology.nodes for i in node.interfaces]
    addresses.append(topology.control_interface.address)
    assert len(addresses) == len(set(addresses))
    for address in addresses:
        assert not any(ipaddress.ip_address(address) in home for home in HOME_NETWORKS), address
    assert ipaddress.ip_address(topology.node("razer").address_on(TAILNET)) in ipaddress.ip_network(
        "100.64.0.0/10"
    )


def test_topology_matches_the_reference_setup() -> None:
    topology = build_topology(LabConfig())
    p620, razer = topology.node("p620"), topology.node("razer")
    assert {(i.name, i.segment) for i in p620.interfaces} == {
        ("enp1s0", LAN),
        ("tailscale0", TAILNET),
        ("wan0", PUBLIC),
    }
    assert {(i.name, i.segment) for i in razer.interfaces} == {("tailscale0", TAILNET)}
    router = topology.node("router")
    assert {i.segment for i in router.interfaces} == {LAN, TAILNET}  # never public
    public_routes = {(r.destination, r.via) for r in topology.node("public").routes}
    wan = p620.address_on(PUBLIC)
    assert public_routes == {(f"{p620.address_on(LAN)}/32", wan), (f"{p620.address_on(TAILNET)}/32", wan)}
    assert ssh_address(p620) == p620.address_on(LAN)
    assert ssh_address(razer) == razer.address_on(TAILNET)


def test_two_prefixes_share_no_namespace_or_link_name() -> None:
    first, second = build_topology(LabConfig()), build_topology(SECOND_INSTANCE)
    assert not set(first.namespaces) & set(second.namespaces)
    assert first.control_interface.name != second.control_interface.name
    assert all(len(name) <= 15 for name in (first.control_interface.name, second.control_interface.name))


def test_inventory_addresses_win_over_the_plan() -> None:
    host = replace(FALLBACK_HOSTS[0], lan_address="10.213.1.50", tailnet_address="100.86.213.50")
    topology = build_topology(LabConfig(hosts=(host,)))
    assert topology.node("p620").address_on(LAN) == "10.213.1.50"
    assert topology.node("p620").address_on(TAILNET) == "100.86.213.50"


def test_address_in_and_prefix_validation() -> None:
    assert address_in("10.213.1.0/24", 10) == "10.213.1.10"
    with pytest.raises(ValueError):
        address_in("10.213.1.0/24", 255)
    with pytest.raises(ValueError):
        validate_prefix("much-too-long-")
    assert validate_prefix("lrd-") == "lrd-"


def test_hosts_file_resolves_tailnet_names_and_peers() -> None:
    topology = build_topology(LabConfig())
    razer_hosts = hosts_file(topology, "razer")
    p620_tailnet = topology.node("p620").address_on(TAILNET)
    assert f"{p620_tailnet}\tp620.tail-lab.ts.net" in razer_hosts.splitlines()
    assert f"{p620_tailnet}\tp620" in razer_hosts.splitlines()  # razer has no LAN: MagicDNS-style
    assert "127.0.1.1\trazer" in razer_hosts.splitlines()


def test_mirror_is_read_from_deb822_and_one_line_sources() -> None:
    deb822 = (
        "Types: deb\n# comment\nURIs: http://mirror.example/debian\nSuites: bookworm bookworm-updates\n"
        "Components: main\n\nTypes: deb\nURIs: http://security.example/debian-security\n"
        "Suites: bookworm-security\n"
    )
    assert mirror_from_deb822(deb822) == "http://mirror.example/debian"
    assert mirror_from_deb822("Types: deb-src\nURIs: http://x/\nSuites: bookworm\n") is None
    one_line = (
        "# deb http://old/ bookworm main\ndeb [arch=amd64] http://mirror.example/debian bookworm main\n"
    )
    assert mirror_from_sources_list(one_line) == "http://mirror.example/debian"


def test_recipe_hash_follows_the_package_list_only() -> None:
    base = recipe("http://deb.debian.org/debian")
    assert recipe_hash(base) == recipe_hash(recipe("http://deb.debian.org/debian"))
    changed = dict(base, packages=sorted([*PACKAGES, "htop"]))
    assert recipe_hash(changed) != recipe_hash(base)
    assert {"systemd", "openssh-server", "nftables", "python3-venv", "caddy"} <= set(PACKAGES)


def test_client_users_get_free_ids() -> None:
    passwd = "root:x:0:0::/root:/bin/bash\nfirst:x:1000:1000::/home/first:/bin/bash\n"
    group = "root:x:0:\nfirst:x:1000:\nother:x:1001:\n"
    assert passwd_entries(("olaf", "ann"), passwd, group) == [("olaf", 1002), ("ann", 1003)]


def test_known_hosts_replaces_only_the_lab_entries() -> None:
    merged = core.merge_known_hosts(
        "10.213.1.10 ssh-ed25519 OLD\nelsewhere ssh-ed25519 KEEP\n", ["10.213.1.10 ssh-ed25519 NEW"]
    )
    assert merged.splitlines() == ["elsewhere ssh-ed25519 KEEP", "10.213.1.10 ssh-ed25519 NEW"]


def test_upper_dirs_copy_the_lower_modes_and_overlay_trees_apply_by_selector(tmp_path: Path) -> None:
    lower, upper, overlays = tmp_path / "lower", tmp_path / "upper", tmp_path / "overlay"
    (lower / "root").mkdir(parents=True)
    (lower / "root").chmod(0o700)
    upper.mkdir()
    ensure_upper_dir(upper, lower, Path("root/.ssh"))
    assert (upper / "root").stat().st_mode & 0o777 == 0o700
    (overlays / "client/usr/local/bin").mkdir(parents=True)
    (overlays / "client/usr/local/bin/tool").write_text("#!/bin/sh\n")
    (overlays / "client/usr/local/bin/tool").chmod(0o755)
    (overlays / "gpu_server/etc").mkdir(parents=True)
    (overlays / "gpu_server/etc/only-servers").write_text("x")
    razer = LabHost("razer", frozenset({"client"}), (), "tailscale0", None)
    assert apply_overlays(razer, upper, lower, overlays) == ["/usr/local/bin/tool"]
    assert (upper / "usr/local/bin/tool").stat().st_mode & 0o777 == 0o755
    assert not (upper / "etc/only-servers").exists()


# --- running lab --------------------------------------------------------------------------------------


def _leftovers(config: LabConfig) -> dict[str, list[str]]:
    """Everything an instance could leave on the machine."""
    topology = build_topology(config)
    machines = [config.prefix + node.name for node in topology.hosts]
    processes = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            command_line = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z" and any(f"--machine={machine}" in command_line for machine in machines):
            processes.append(f"{proc.name} {command_line}")
    mounts = [
        line
        for line in Path("/proc/self/mountinfo").read_text().splitlines()
        if str(config.state_dir) in line
    ]
    cgroups = [str(path) for path in Path("/sys/fs/cgroup").glob(f"*/{config.cgroup_name}")]
    cgroups += [str(path) for path in Path("/sys/fs/cgroup").glob(config.cgroup_name)]
    links = [config.prefix + "ctl"] if network.link_exists(config.prefix + "ctl") else []
    return {
        "namespaces": network.present_namespaces(topology),
        "processes": processes,
        "mounts": mounts,
        "cgroups": cgroups,
        "links": links,
        "state": [str(config.state_dir)] if config.state_dir.exists() else [],
    }


@pytest.mark.lab
def test_second_instance_comes_up_beside_the_first_and_leaves_nothing(lab) -> None:
    assert not any(_leftovers(SECOND_INSTANCE).values())
    try:
        result = core.up(SECOND_INSTANCE)
        assert set(result["states"].values()) == {"running"}
        during = _leftovers(SECOND_INSTANCE)
        assert len(during["namespaces"]) == len(build_topology(SECOND_INSTANCE).namespaces)
        assert during["processes"] and during["cgroups"] and during["links"]
        # The session lab is untouched by the second one.
        assert core.status(lab.config)["up"]
    finally:
        core.down(SECOND_INSTANCE)
    assert _leftovers(SECOND_INSTANCE) == {key: [] for key in _leftovers(SECOND_INSTANCE)}
    core.down(SECOND_INSTANCE)  # idempotent
    assert core.status(lab.config)["up"]
    # This session's instance name is never used again: drop its lock and boot logs from the cache.
    for leftover in CACHE_DIR.glob(f"{SECOND_INSTANCE.prefix}*.log"):
        leftover.unlink()
    (CACHE_DIR / "locks" / f"{SECOND_INSTANCE.prefix}.lock").unlink(missing_ok=True)


def _ssh(host: str, command: str, user: str = "root") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        core.ssh_command(host, [command], user=user), check=False, capture_output=True, text=True, timeout=30
    )


@pytest.mark.lab
def test_ssh_reaches_every_host_and_systemd_runs(lab) -> None:
    for node in lab.topology.hosts:
        result = _ssh(node.name, "hostname; systemctl is-system-running")
        assert result.returncode == 0, result.stderr
        assert result.stdout.split() == [node.name, "running"]


@pytest.mark.lab
def test_client_users_have_claude_code(lab) -> None:
    clients = [node for node in lab.topology.hosts if node.host.client_users]
    assert clients
    for node in clients:
        for user in node.host.client_users:
            result = _ssh(node.name, "id -un; claude --version", user=user)
            assert result.returncode == 0, result.stderr
            name, version = result.stdout.splitlines()[:2]
            assert name == user
            assert "Claude Code" in version


@pytest.mark.lab
def test_tailnet_names_resolve_inside_hosts(lab) -> None:
    p620 = lab.topology.node("p620")
    result = core.run("razer", ["getent", "hosts", p620.host.tailnet_dns_name], lab.config)
    assert result.stdout.split()[0] == p620.address_on(TAILNET)
    ping = core.run("razer", ["ping", "-c1", "-W2", p620.host.tailnet_dns_name], lab.config)
    assert ping.returncode == 0, ping.stdout + ping.stderr


@pytest.mark.lab
def test_public_peer_reaches_a_lan_listener_when_no_firewall_is_loaded(lab) -> None:
    """Without a firewall the public path is open; the firewall tests prove they close it."""
    p620 = lab.topology.node("p620")
    assert core.run("p620", ["nft", "list", "ruleset"], lab.config).stdout.strip() == ""
    lan_address, port = p620.address_on(LAN), 18080
    started = core.run(
        "p620",
        [
            "systemd-run",
            "--unit=lab-test-listener",
            "--",
            "python3",
            "-m",
            "http.server",
            "--bind",
            lan_address,
            str(port),
            "--directory",
            "/etc",
        ],
        lab.config,
    )
    assert started.returncode == 0, started.stderr
    try:
        url = f"http://{lan_address}:{port}/hostname"
        for _ in range(50):
            fetched = core.run("public", ["curl", "-sS", "-m", "2", url], lab.config)
            if fetched.returncode == 0:
                break
            time.sleep(0.1)
        assert fetched.stdout == "p620\n", fetched.stderr
        # and the same listener from the LAN peer and the control machine, the sanctioned paths
        assert core.run("lan", ["curl", "-sS", "-m", "2", url], lab.config).stdout == "p620\n"
        assert (
            subprocess.run(
                ["curl", "-sS", "-m", "2", url], check=False, capture_output=True, text=True
            ).stdout
            == "p620\n"
        )
    finally:
        core.run("p620", ["systemctl", "stop", "lab-test-listener"], lab.config)


@pytest.mark.lab
def test_status_json_lists_hosts_and_peers_with_addresses(lab) -> None:
    report = json.loads(
        subprocess.run(
            [".venv/bin/python", "-m", "lab", "status", "--json"], capture_output=True, text=True, check=True
        ).stdout
    )
    assert report["up"] is True
    hosts = {host["name"]: host for host in report["hosts"]}
    assert set(hosts) == {node.name for node in lab.topology.hosts}
    assert all(host["running"] for host in hosts.values())
    assert {
        "name": "enp1s0",
        "segment": "lan",
        "address": lab.topology.node("p620").interfaces[0].cidr,
    } in hosts["p620"]["interfaces"]
    assert {peer["name"] for peer in report["peers"]} == {"lan", "tailnet", "public", "router"}


@pytest.mark.lab
def test_install_file_writes_into_a_running_host(lab) -> None:
    core.install_file("razer", "/opt/lab-test/hello", "hi\n", mode=0o750, owner="olaf", config=lab.config)
    result = core.run("razer", ["stat", "-c", "%a %U %s", "/opt/lab-test/hello"], lab.config)
    assert result.stdout.split() == ["750", "olaf", "3"]
    core.run("razer", ["rm", "-rf", "/opt/lab-test"], lab.config)


@pytest.mark.lab
def test_containers_are_accounted_in_their_own_cgroups(lab) -> None:
    for node in lab.topology.hosts:
        container = Container(lab.config, node)
        assert container.cgroup_pids()
        assert (container.memory_bytes() or 0) > 0


def test_inventory_address_outside_the_subnet_is_refused() -> None:
    host = replace(FALLBACK_HOSTS[0], lan_address="192.168.1.10")
    with pytest.raises(ValueError, match="outside the lab's lan subnet"):
        build_topology(LabConfig(hosts=(host,)))


def test_without_root_the_lab_refuses_with_a_clear_message(monkeypatch, capsys) -> None:
    from lab.__main__ import main

    monkeypatch.setattr(core.os, "geteuid", lambda: 1000)
    assert any(reason.startswith("root") for reason in core.missing_capabilities())
    with pytest.raises(core.LabError, match="missing: root"):
        core.up()
    assert main(["down"]) == 2
    assert "missing: root" in capsys.readouterr().err


def test_missing_capability_skips_or_fails_with_lab_required(monkeypatch) -> None:
    from tests.conftest import _refuse

    monkeypatch.delenv("LAB_REQUIRED", raising=False)
    with pytest.raises(pytest.skip.Exception):
        _refuse("no systemd-nspawn")
    monkeypatch.setenv("LAB_REQUIRED", "1")
    with pytest.raises(pytest.fail.Exception, match="LAB_REQUIRED=1 but no systemd-nspawn"):
        _refuse("no systemd-nspawn")


def test_before_boot_hooks_see_each_host_and_its_upper_layer(tmp_path: Path, monkeypatch) -> None:
    from lab import overlay

    seen = []
    monkeypatch.setattr(overlay, "_registered_hooks", [])
    overlay.register_before_boot(lambda host, upper, base: seen.append((host.name, upper)))
    apply_overlays(FALLBACK_HOSTS[1], tmp_path, tmp_path, tmp_path / "no-trees")
    assert seen == [("razer", tmp_path)]


@pytest.mark.lab
def test_public_peer_reaches_every_p620_address_through_wan0(lab) -> None:
    """The public peer routes p620's LAN and tailnet addresses at wan0: open until a firewall closes them."""
    p620 = lab.topology.node("p620")
    wan_address = p620.address_on(PUBLIC)
    targets = [wan_address, p620.address_on(LAN), p620.address_on(TAILNET)]
    for target in targets[1:]:
        route = core.run("public", ["ip", "-o", "route", "get", target], lab.config).stdout
        assert f"via {wan_address}" in route
    command = ["systemd-run", "--unit=lab-test-any", "--", "python3", "-m", "http.server", "18081"]
    command += ["--directory", "/etc"]
    assert core.run("p620", command, lab.config).returncode == 0
    try:
        for target in targets:
            url = f"http://{target}:18081/hostname"
            for _ in range(50):
                fetched = core.run("public", ["curl", "-sS", "-m", "2", url], lab.config)
                if fetched.returncode == 0:
                    break
                time.sleep(0.1)
            assert fetched.stdout == "p620\n", (target, fetched.stderr)
    finally:
        core.run("p620", ["systemctl", "stop", "lab-test-any"], lab.config)


def test_routes_of_the_machine_that_overlap_the_lab_are_reported() -> None:
    routes = [
        {"dst": "default", "dev": "eth0"},
        {"dst": "10.213.0.0/16", "dev": "wg0"},
        {"dst": "10.213.1.0/24", "dev": "lrd-ctl"},  # the lab's own veth
        {"dst": "192.168.1.0/24", "dev": "eth0"},
        {"dst": "fd00::/64", "dev": "eth0"},
        {"dst": "100.64.0.0/10", "dev": "tailscale0"},
    ]
    subnets = ["10.213.1.0/24", "100.86.213.0/24", "10.213.3.0/24"]
    assert network.overlapping_routes(routes, subnets, "lrd-ctl") == [
        "10.213.0.0/16 dev wg0",
        "100.64.0.0/10 dev tailscale0",
    ]
