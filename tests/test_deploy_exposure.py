"""deploys/exposure.py without a host: the nftables table, firewall choice, tailscale serve, caddy."""

from __future__ import annotations

import hashlib
import json
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
from pyinfra.api.exceptions import DeployError
from ruamel.yaml import YAML

from deploys import exposure
from facts.files import PathState
from facts.firewall_backends import FirewalldZonePorts, UfwState
from facts.host_state import Snapshot
from facts.sections import Section
from facts.tailscale import parse_tailscale_serve
from inventory.load import load_inventory
from tests.deploy_harness import changes, plan, unit

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
    # Two firewalls both active: no way to know whose rules count; refused with what to do.
    with pytest.raises(DeployError, match="ufw disable"):
        exposure.choose_firewall("auto", {"firewalld.service"}, {"nft", "ufw"}, True)


def serve(output: str):
    return parse_tailscale_serve(output.splitlines())


def test_serve_is_current():
    assert exposure.serve_is_current(P620.server, serve(SERVED))
    assert not exposure.serve_is_current(P620.server, serve("{}"))
    assert not exposure.serve_is_current(P620.server, serve(SERVED.replace("4000", "4001")))


def test_serve_unit_waits_for_tailscale_and_applies_the_mapping():
    unit = exposure.serve_unit(P620.server)
    assert "ExecStart=tailscale serve --bg --https=443 --set-path=/router http://localhost:4000" in unit
    assert "tailscale status" in unit and "WantedBy=multi-user.target" in unit


def ufw_state(status: str) -> UfwState:
    return UfwState("Status: active" in status, status)


def firewalld(lines: str) -> dict:
    return FirewalldZonePorts().process_section(Section(0, tuple(lines.splitlines())))


def converged() -> Snapshot:
    return Snapshot.of(
        paths={exposure.NFT_FILE: PathState("file", "644", "root", "root",
                                            hashlib.sha256(exposure.nft_ruleset(P620).encode())
                                            .hexdigest()),
               exposure.NFT_DIR: PathState("dir", "755", "root", "root"),
               exposure.SERVE_UNIT_PATH: PathState("file", "644", "root", "root",
                                                   hashlib.sha256(exposure.serve_unit(P620.server)
                                                                                .encode()).hexdigest())},
        units=[unit("nftables.service", "active", "enabled"), unit(exposure.SERVE_UNIT, "active", "enabled")],
        commands={"nft": True, "tailscale": True},
        facts={exposure.NFT_TABLE_LOADED: True, exposure.NFT_INCLUDED: True, exposure.SERVE: serve(SERVED),
               exposure.UFW: ufw_state("")},
    )


def run(snapshot: Snapshot, inv=INV):
    return plan(lambda: exposure.exposure(inv, inv.hosts["p620"]), "p620", snapshot)


def test_converged_host_yields_no_commands():
    assert changes(run(converged())) == {}


def test_flushed_table_is_reloaded_and_nothing_else():
    snap = converged()
    snap.values[exposure.NFT_TABLE_LOADED.key] = False
    assert list(changes(run(snap)).values()) == [[f"nft -f {exposure.NFT_FILE}"]]


def test_reset_serve_config_is_reapplied():
    snap = converged()
    snap.values[exposure.SERVE.key] = serve("{}")
    assert list(changes(run(snap)).values()) == [
        ["tailscale serve --bg --https=443 --set-path=/router http://localhost:4000"]]


def test_missing_include_appends_two_lines_to_nftables_conf():
    snap = converged()
    snap.values[exposure.NFT_INCLUDED.key] = False
    [commands] = changes(run(snap)).values()
    assert commands[0].endswith(f">> {exposure.NFT_CONF}") and exposure.NFT_INCLUDE in commands[0]


def test_ufw_host_gets_per_interface_rules_and_our_table():
    snap = converged()
    snap.values[exposure.UFW.key] = ufw_state("Status: active\n")
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
    snap.units["nftables.service"] = unit("nftables.service", "inactive", "disabled")
    [commands] = changes(run(snap)).values()
    assert commands == [f"systemctl enable nftables.service && touch {exposure.NFT_ENABLED_MARKER}"]
    assert "start" not in commands[0]


def test_ufw_host_loads_our_table_at_boot_with_our_own_unit_not_nftables_service():
    snap = converged()
    snap.values[exposure.UFW.key] = ufw_state("Status: active\n")
    snap.values[exposure.NFT_INCLUDED.key] = False
    snap.units["nftables.service"] = unit("nftables.service", "inactive", "disabled")
    found = changes(run(snap))
    flat = " ; ".join(c for commands in found.values() for c in commands)
    assert exposure.BOOT_UNIT_PATH in " ".join(found) or "llm-router-firewall.service" in flat
    assert "nftables.service" not in flat and exposure.NFT_CONF not in flat


# --- firewalld and ufw hosts --------------------------------------------------------------

# `ufw status verbose` on the lab's ufw host after the deploy (ufw 0.36.2, Debian bookworm).
UFW_OPENED = """Status: active
Logging: on (low)
Default: deny (incoming), allow (outgoing), disabled (routed)
New profiles: skip

To                         Action      From
--                         ------      ----
22/tcp (OpenSSH)           ALLOW IN    Anywhere
4000/tcp on tailscale0     ALLOW IN    Anywhere                   # llm-router
4000/tcp on enp1s0         ALLOW IN    Anywhere                   # llm-router
22/tcp (OpenSSH (v6))      ALLOW IN    Anywhere (v6)
4000/tcp (v6) on tailscale0 ALLOW IN    Anywhere (v6)              # llm-router
4000/tcp (v6) on enp1s0    ALLOW IN    Anywhere (v6)              # llm-router
"""


def converged_behind(firewall: str, firewall_probe: str = "") -> Snapshot:
    """A converged host whose own firewall is firewalld or ufw: our table loaded by our boot unit."""
    snap = converged()
    snap.units["nftables.service"] = unit("nftables.service", "inactive", "disabled")
    snap.values[exposure.NFT_INCLUDED.key] = False
    snap.paths[exposure.BOOT_UNIT_PATH] = PathState("file", "644", "root", "root",
                                                    hashlib.sha256(exposure.boot_unit().encode()).hexdigest())
    snap.units[exposure.BOOT_UNIT] = unit(exposure.BOOT_UNIT, "active", "enabled")
    if firewall == "firewalld":
        snap.units["firewalld.service"] = unit("firewalld.service", "active", "enabled")
        zones = exposure.firewalld_zones(P620.server.router.port, exposure.opened_interfaces(P620))
        snap.values[zones.key] = firewalld(firewall_probe or "tailscale0 public yes yes\nenp1s0 public yes yes\n")
    else:
        snap.values[exposure.UFW.key] = ufw_state(firewall_probe or UFW_OPENED)
    return snap


@pytest.mark.parametrize("firewall", ["firewalld", "ufw"])
def test_converged_firewalld_or_ufw_host_yields_no_commands(firewall):
    assert changes(run(converged_behind(firewall))) == {}


def test_firewalld_opens_the_port_once_per_zone_runtime_and_permanent():
    snap = converged_behind("firewalld", "tailscale0 public no no\nenp1s0 public no no\n")
    [commands] = changes(run(snap)).values()
    assert commands == ["firewall-cmd -q --zone=public --add-port=4000/tcp",
                        "firewall-cmd -q --permanent --zone=public --add-port=4000/tcp"]


def test_firewalld_restores_only_what_a_reload_dropped_in_the_zone_that_lacks_it():
    # tailscale0 bound to trusted (already fine); the LAN in home, where a reload dropped the runtime rule.
    snap = converged_behind("firewalld", "tailscale0 trusted yes yes\nenp1s0 home no yes\n")
    [commands] = changes(run(snap)).values()
    assert commands == ["firewall-cmd -q --zone=home --add-port=4000/tcp"]


def test_firewalld_that_does_not_answer_is_refused_with_what_to_do():
    snap = converged_behind("firewalld", "tailscale0 public yes yes\n")
    with pytest.raises(DeployError, match="enp1s0.*systemctl enable --now firewalld"):
        run(snap)


def test_firewalld_probe_reads_bound_and_default_zones(tmp_path):
    """The probe's shell, run against a stand-in firewall-cmd: an unbound interface is in the default zone."""
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "systemctl").write_text("#!/bin/sh\nexit 0\n")
    (fake / "firewall-cmd").write_text("""#!/bin/sh
case "$*" in
  --get-zone-of-interface=tailscale0) echo trusted ;;
  --get-zone-of-interface=*) echo "no zone" >&2; exit 2 ;;
  --get-default-zone) echo public ;;
  "--zone=trusted --query-port=4000/tcp"|"--permanent --zone=trusted --query-port=4000/tcp") echo yes ;;
  "--permanent --zone=public --query-port=4000/tcp") echo yes ;;
  *) echo no; exit 1 ;;
esac
""")
    for script in fake.iterdir():
        script.chmod(0o755)
    command = FirewalldZonePorts().command(4000, ("tailscale0", "enp1s0"))
    done = subprocess.run(["sh", "-c", command], capture_output=True, text=True, check=False,
                          env={"PATH": f"{fake}:/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["tailscale0 trusted yes yes", "enp1s0 public no yes"]
    zones = firewalld(done.stdout)
    assert exposure.firewalld_missing(zones, ("tailscale0", "enp1s0")) == [("public", True, False)]


def test_ufw_rules_are_recognised_per_interface_and_port():
    assert exposure.ufw_allows(UFW_OPENED, 4000, "tailscale0")
    assert exposure.ufw_allows(UFW_OPENED, 4000, "enp1s0")
    assert not exposure.ufw_allows(UFW_OPENED, 4000, "wan0")
    assert not exposure.ufw_allows(UFW_OPENED, 400, "enp1s0")
    assert not exposure.ufw_allows(UFW_OPENED.replace("4000/tcp on enp1s0 ", "14000/tcp on enp1s0"), 4000, "enp1s0")


def test_ufw_host_adds_only_the_missing_interface():
    opened_tailnet_only = "\n".join(line for line in UFW_OPENED.splitlines() if "enp1s0" not in line)
    [commands] = changes(run(converged_behind("ufw", opened_tailnet_only))).values()
    assert commands == ["ufw allow in on enp1s0 to any port 4000 proto tcp comment llm-router"]


def test_boot_unit_loads_only_our_table_after_the_host_firewall():
    unit = exposure.boot_unit()
    assert "After=firewalld.service ufw.service" in unit
    assert f"ExecStart=/usr/sbin/nft -f {exposure.NFT_FILE}" in unit
    assert "flush" not in unit and "WantedBy=multi-user.target" in unit


# --- Caddy as the front ------------------------------------------------------------------


def caddy_inventory(tmp_path: Path):
    from lab.variants import write_variant

    def caddy_front(data: dict) -> None:
        data["secrets_dir"] = str(tmp_path / "secrets")  # never the lab's own secrets directory
        exposure_section = data["hosts"]["p620"]["server"]["exposure"]
        exposure_section["tailscale_serve"] = {"enabled": False}
        exposure_section["caddy"] = {"enabled": True, "site_names": ["llm.home.arpa"]}

    return load_inventory(write_variant(REPO / "inventory" / "lab.yaml", tmp_path / "caddy.yaml", caddy_front))


def test_caddy_front_is_restricted_to_the_tailnet_address_and_interface(tmp_path):
    inv = caddy_inventory(tmp_path)
    text = exposure.nft_ruleset(inv.hosts["p620"])
    assert 'tcp dport 443 ip daddr 100.86.213.10 iifname != { "lo", "tailscale0" } reject with tcp reset' in text
    caddyfile = exposure.caddyfile(inv.hosts["p620"])
    assert "bind 100.86.213.10" in caddyfile and "tls internal" in caddyfile
    assert "admin off" in caddyfile and "auto_https disable_redirects" in caddyfile
    assert caddyfile.startswith(exposure.CADDY_MARKER_LINE)


def test_caddy_on_a_fresh_host_keeps_the_admins_file_validates_and_exports_the_ca(tmp_path):
    inv = caddy_inventory(tmp_path)
    snap = converged()
    snap.paths[exposure.CADDYFILE] = PathState("file", "644", "root", "root", "0" * 64)  # Debian's default
    snap.values[exposure.CADDYFILE_OURS.key] = False
    snap.units["caddy.service"] = unit("caddy.service", "inactive", "disabled")
    found = changes(run(snap, inv))
    keep = next(c for name, c in found.items() if "Keep the admin" in name)
    assert keep == [f"cp -p {exposure.CADDYFILE} {exposure.CADDYFILE_ORIGINAL}"]
    names = list(found)
    order = [next(i for i, n in enumerate(names) if word in n)
             for word in ("Keep the admin", "Caddyfile for", "caddy validate", "caddy serves", "Export Caddy")]
    assert order == sorted(order)
    export = found[names[order[-1]]]
    assert str(exposure.caddy_root_ca_copy(inv, "p620")) in export[-1]


def test_converged_caddy_host_yields_no_commands(tmp_path):
    inv = caddy_inventory(tmp_path)
    ca = b"-----BEGIN CERTIFICATE-----\nlab\n-----END CERTIFICATE-----\n"
    copy = exposure.caddy_root_ca_copy(inv, "p620")
    exposure.caddy_root_ca_dir_made(inv, copy)
    copy.write_bytes(ca)
    snap = converged()
    caddyfile = exposure.caddyfile(inv.hosts["p620"]).encode()
    nft = exposure.nft_ruleset(inv.hosts["p620"]).encode()
    snap.paths[exposure.CADDYFILE] = PathState("file", "644", "root", "root", hashlib.sha256(caddyfile).hexdigest())
    snap.paths[exposure.NFT_FILE] = PathState("file", "644", "root", "root", hashlib.sha256(nft).hexdigest())
    snap.paths[exposure.CADDYFILE_ORIGINAL] = PathState("file", "644", "root", "root", "1" * 64)
    snap.paths[exposure.CADDY_ROOT_CA] = PathState("file", "644", "caddy", "caddy", hashlib.sha256(ca).hexdigest())
    snap.paths.pop(exposure.SERVE_UNIT_PATH)
    drop_in = hashlib.sha256(exposure.CADDY_DROP_IN_TEXT.encode()).hexdigest()
    snap.paths[exposure.CADDY_DROP_IN] = PathState("file", "644", "root", "root", drop_in)
    snap.paths[str(Path(exposure.CADDY_DROP_IN).parent)] = PathState("dir", "755", "root", "root", "")
    snap.values[exposure.CADDYFILE_OURS.key] = True
    snap.values[exposure.SERVE.key] = serve("{}")
    snap.units["caddy.service"] = unit("caddy.service", "active", "enabled")
    assert changes(run(snap, inv)) == {}
    # A new CA on the server (Caddy's data wiped) is fetched again.
    snap.paths[exposure.CADDY_ROOT_CA] = PathState("file", "644", "caddy", "caddy", "2" * 64)
    assert [name.split(' | ')[-1] for name in changes(run(snap, inv))] == ["Export Caddy's root CA to the workstation"]


def test_caddy_off_restores_the_admins_caddyfile_and_disables_what_we_enabled():
    snap = converged()
    snap.values[exposure.CADDYFILE_OURS.key] = True
    snap.paths[exposure.CADDYFILE_ORIGINAL] = PathState("file", "644", "root", "root", "1" * 64)
    snap.paths[exposure.CADDY_ENABLED_MARKER] = PathState("file", "644", "root", "root", "")
    found = changes(run(snap))
    assert list(found.values()) == [[
        (f"systemctl disable --now caddy.service && rm -f {exposure.CADDY_ENABLED_MARKER} && "
         f"mv -f {exposure.CADDYFILE_ORIGINAL} {exposure.CADDYFILE}")]]


# --- a change of firewall backend -----------------------------------------------------------


def test_nftables_host_that_turns_on_ufw_gives_up_nftables_service_we_enabled():
    snap = converged()  # deployed as an nftables host: include line present, nftables.service enabled by us
    snap.paths[exposure.NFT_ENABLED_MARKER] = PathState("file", "644", "root", "root", "")
    snap.values[exposure.UFW.key] = ufw_state(UFW_OPENED)
    found = changes(run(snap))
    undo = next(commands for name, commands in found.items() if "another firewall backend" in name)
    assert undo == [(f"sed -i -e {shlex.quote(exposure._SED_DELETE_INCLUDE)} {exposure.NFT_CONF} && "
                     f"systemctl disable nftables.service && rm -f {exposure.NFT_ENABLED_MARKER}")]


def test_nftables_service_the_admin_enabled_is_left_alone_on_a_switch():
    snap = converged()
    snap.values[exposure.UFW.key] = ufw_state(UFW_OPENED)
    snap.values[exposure.NFT_INCLUDED.key] = False  # no include line of ours, no marker
    found = changes(run(snap))
    assert not any("another firewall backend" in name for name in found)


def test_ufw_host_back_on_plain_nftables_drops_our_boot_unit():
    snap = converged()
    snap.paths[exposure.BOOT_UNIT_PATH] = PathState("file", "644", "root", "root", "0" * 64)
    found = changes(run(snap))
    undo = next(commands for name, commands in found.items() if "another firewall backend" in name)
    assert undo == [(f"systemctl disable {exposure.BOOT_UNIT} && rm -f {exposure.BOOT_UNIT_PATH} && "
                     "systemctl daemon-reload")]
