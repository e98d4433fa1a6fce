"""The preflight's rules on parsed facts (deploys/preflight.py), its probe's parser, and the workstation checks."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from deploys import preflight
from facts.preflight import (
    CGROUPS,
    DEVICES,
    DISK,
    GPU,
    INIT,
    INTERFACES,
    LISTENERS,
    OS_RELEASE,
    PRESENT,
    TAILSCALE,
    parse_preflight,
)
from facts.sections import Section, encode
from facts.tailscale import TAILSCALE as TAILSCALE_CLI
from inventory.load import load_inventory
from inventory.model import Acceleration
from lab.variants import write_variant

REPO = Path(__file__).resolve().parent.parent
INV = load_inventory(REPO / "inventory" / "lab.yaml")
P620, RAZER = INV.hosts["p620"], INV.hosts["razer"]
MODELS = "/var/lib/ollama/models"
GIB = 1024**3

DEBIAN = 'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nID=debian\nVERSION_ID="12"\n'


def ip_addr(*links: tuple[str, str]) -> str:
    return json.dumps([{"ifindex": i, "ifname": name, "flags": ["UP"], "operstate": "UP",
                        "addr_info": [{"family": "inet", "local": address, "prefixlen": 24}]}
                       for i, (name, address) in enumerate(links, 1)])


def tailscale(state: str = "Running", dns: str = "p620.tail-lab.ts.net.", status: int = 0, text: str = "") -> str:
    body = text or json.dumps({"BackendState": state, "Self": {"DNSName": dns, "TailscaleIPs": ["100.86.213.10"]}})
    return encode(TAILSCALE_CLI, status, body.encode())


def rocm_smi(total_bytes: int) -> str:
    card = {"card0": {"Card Series": "RX 7900 XTX", "VRAM Total Memory (B)": str(total_bytes),
                      "VRAM Total Used Memory (B)": "0"}}
    return encode("rocm-smi", 0, json.dumps(card).encode())


GOOD = {
    OS_RELEASE: DEBIAN,
    INIT: "systemd\nsystemd-booted\n",
    INTERFACES: ip_addr(("lo", "127.0.0.1"), ("enp1s0", "10.213.1.10"), ("tailscale0", "100.86.213.10")),
    TAILSCALE: tailscale(),
    DEVICES: "character special file|/dev/kfd\ncharacter special file|/dev/dri/renderD128\n",
    GPU: rocm_smi(24 * GIB),
    DISK: "Filesystem 1-blocks Used Available Capacity Mounted on\n"
          f"/dev/sda2 500000000000 100000000000 400000000000 20% /var\n{MODELS}\n",
    PRESENT: "",
    LISTENERS: "",
    CGROUPS: "",
}


def facts(**changes: str):
    """Parsed facts of a p620 as the lab inventory describes it, with some probes' output replaced."""
    probes = {**GOOD, **{key.replace("_", "-"): value for key, value in changes.items()}}
    lines = [encode(key, 0, output.encode()) for key, output in probes.items()]
    return parse_preflight(Section(0, tuple(lines)))


def failures(host=P620, **changes: str) -> dict[str, str]:
    return {f.check: f.reason for f in preflight.judge(INV, host, facts(**changes)) if f.status == "FAIL"}


def test_the_lab_host_as_described_passes_every_rule():
    findings = preflight.judge(INV, P620, facts())
    assert [f for f in findings if f.status != "PASS"] == []
    assert len(findings) == 11
    assert preflight.refusal(P620, findings) is None


def test_a_renamed_lan_interface_names_the_interface_that_carries_the_address():
    found = failures(interfaces=ip_addr(("enp5s0", "10.213.1.10"), ("tailscale0", "100.86.213.10")))
    assert list(found) == ["LAN interface enp1s0 carries 10.213.1.10"]
    assert "p620 has no interface enp1s0: the host has 10.213.1.10 on enp5s0: set network.lan_interfaces to " \
           "enp5s0" in found["LAN interface enp1s0 carries 10.213.1.10"]


def test_an_interface_without_its_address_fails():
    found = failures(interfaces=ip_addr(("enp1s0", "10.213.1.99"), ("tailscale0", "100.86.213.10")))
    assert "does not carry 10.213.1.10 on enp1s0 (10.213.1.10 is on no interface)" in \
        found["LAN interface enp1s0 carries 10.213.1.10"]


def test_tailscale_down_or_under_another_name():
    stopped = failures(tailscale_status=tailscale(status=1, text="failed to connect to local tailscaled"))
    assert "tailscale is not up on p620 (failed to connect to local tailscaled)" in stopped["tailscale is up"]
    assert "not installed" in preflight.judge(INV, P620, facts(tailscale_status=tailscale(status=127)))[4].observed
    renamed = failures(tailscale_status=tailscale(dns="p620-1.tail-lab.ts.net."))
    assert "p620's tailnet name is p620-1.tail-lab.ts.net, the inventory says p620.tail-lab.ts.net" in \
        renamed["tailnet DNS name"]
    assert "tailscale is up" in failures(tailscale_status=tailscale(state="NeedsLogin"))


@pytest.mark.parametrize("devices,missing", [
    ("character special file|/dev/dri/renderD128\n", "/dev/kfd missing"),
    ("character special file|/dev/kfd\n", "/dev/dri/renderD* missing"),
    ("regular empty file|/dev/kfd\ncharacter special file|/dev/dri/renderD128\n", "/dev/kfd missing"),
])
def test_rocm_needs_kfd_and_a_render_node(devices, missing):
    assert missing in failures(devices=devices)["GPU visible to rocm"]


def test_cuda_needs_the_nvidia_nodes():
    cuda = INV.model_copy(deep=True)
    server = P620.server.model_copy(update={"ollama": P620.server.ollama.model_copy(update={"acceleration": Acceleration.cuda})})
    host = P620.model_copy(update={"server": server})
    found = {f.check: f for f in preflight.judge(cuda, host, facts(devices="character special file|/dev/nvidia0\n"))}
    assert found["GPU visible to cuda"].status == "FAIL" and "/dev/nvidiactl missing" in found[
        "GPU visible to cuda"].reason
    nodes = "character special file|/dev/nvidia0\ncharacter special file|/dev/nvidiactl\n"
    assert {f.check: f for f in preflight.judge(cuda, host, facts(devices=nodes))}[
        "GPU visible to cuda"].status == "PASS"


def test_vram_within_tolerance_of_the_inventory_else_fails_and_unknown_skips():
    assert "GPU VRAM matches server.gpus" not in failures(gpu=rocm_smi(int(23.5 * GIB)))  # 24 GB as GiB, less some
    assert "p620 has 16.0 GiB on 1 device(s), the inventory's server.gpus add up to 24 GB" in \
        failures(gpu=rocm_smi(16 * GIB))["GPU VRAM matches server.gpus"]
    unknown = {f.check: f for f in preflight.judge(INV, P620, facts(gpu=encode("sysfs", 0, b"")))}
    assert unknown["GPU VRAM matches server.gpus"].status == "SKIP"
    assert "not measurable" in unknown["GPU VRAM matches server.gpus"].reason


def test_free_space_covers_the_models_not_yet_pulled_sized_by_their_vram():
    small = ("Filesystem 1-blocks Used Available Capacity Mounted on\n"
             f"tmpfs 20000000000 0 20000000000 0% {MODELS}\n{MODELS}\n")
    reason = failures(disk=small)[f"free space at {MODELS}"]
    assert f"{MODELS} on p620 has 20.0 GB free, the models not yet pulled need up to 35 GB" in reason
    pulled = preflight.manifest_path(MODELS, "gemma4:26b")
    assert pulled == f"{MODELS}/manifests/registry.ollama.ai/library/gemma4/26b"
    assert f"free space at {MODELS}" not in failures(disk=small, present=pulled + "\n")  # 17 GB left to pull


def test_manifest_paths_follow_ollamas_layout():
    assert preflight.manifest_path("/m", "llama3.2") == "/m/manifests/registry.ollama.ai/library/llama3.2/latest"
    assert preflight.manifest_path("/m", "me/x:1b") == "/m/manifests/registry.ollama.ai/me/x/1b"
    assert preflight.manifest_path("/m", "hf.co/org/x:q4") == "/m/manifests/hf.co/org/x/q4"


def test_systemd_must_be_the_init():
    reason = failures(init="runit\n")["systemd is the init"]
    assert reason.startswith("p620 runs runit as PID 1, not systemd")


@pytest.mark.parametrize("release,passes", [
    ('ID=ubuntu\nID_LIKE=debian\nPRETTY_NAME="Ubuntu 24.04 LTS"\n', True),
    ('ID=fedora\nPRETTY_NAME="Fedora Linux 42"\n', True),
    ('ID="rocky"\nID_LIKE="rhel centos fedora"\n', True),
    ('ID=nixos\nPRETTY_NAME="NixOS 25.05 (Warbler)"\n', False),
    ('ID=alpine\nPRETTY_NAME="Alpine Linux v3.20"\n', False),
])
def test_distribution_families(release, passes):
    found = failures(os_release=release)
    assert ("supported distribution" not in found) is passes
    if "NixOS" in release:
        assert "use services.ollama and a NixOS module" in found["supported distribution"]


def test_ports_free_or_held_by_our_units():
    ours = ('LISTEN 0 4096 0.0.0.0:4000 0.0.0.0:* users:(("litellm",pid=700,fd=3))\n'
            'LISTEN 0 4096 127.0.0.1:11434 0.0.0.0:* users:(("ollama",pid=800,fd=3))\n')
    cgroups = "700 /system.slice/llm-router.service\n800 /system.slice/ollama.service\n"
    assert failures(listeners=ours, cgroups=cgroups) == {}
    foreign = 'LISTEN 0 4096 *:11434 *:* users:(("ollama",pid=900,fd=3))\n'
    reason = failures(listeners=foreign, cgroups="900 /user.slice/user-1000.slice/session-2.scope\n")[
        "Ollama port 11434 free or ours"]
    assert reason.startswith("port 11434 on p620 is taken by ollama (session-2.scope)")


def test_clients_skip_the_server_rules():
    checks = {f.check for f in preflight.judge(INV, RAZER, facts(
        interfaces=ip_addr(("tailscale0", "100.86.213.11")), tailscale_status=tailscale(dns="razer.tail-lab.ts.net.")))}
    assert checks == {"supported distribution", "systemd is the init",
                      "tailnet interface tailscale0 carries 100.86.213.11", "tailscale is up", "tailnet DNS name"}


def test_a_probe_that_printed_nothing_is_named_and_an_unreadable_fact_does_not_block():
    lines = [encode(key, 0, output.encode()) for key, output in GOOD.items() if key != INTERFACES]
    partial = parse_preflight(Section(0, tuple(lines)))
    assert partial.interfaces is None and "interfaces: no section interfaces in the output" in partial.problems
    unread = preflight.judge(INV, P620, parse_preflight(Section(None, problem="cut short")))
    assert [(f.status, f.reason) for f in unread] == [("SKIP", "cut short")]


def test_the_refusal_names_host_problem_and_what_to_do():
    findings = preflight.judge(INV, P620, facts(devices="", init="init\n"))
    message = preflight.refusal(P620, findings)
    assert message is not None
    assert message.splitlines()[0] == ("preflight: p620 is not the host the inventory describes; nothing was "
                                       "changed on it:")
    assert "  p620: systemd is the init: p620 runs init as PID 1" in message
    assert "  p620: GPU visible to rocm: /dev/kfd, /dev/dri/renderD* missing on p620" in message


def test_the_probe_command_reads_everything_in_one_shell_script():
    request = preflight.request(P620)
    command = request.command()
    assert "ss -Htlnp '( sport = :4000 or sport = :11434 )'" in command
    assert f"{MODELS}/manifests/registry.ollama.ai/library/qwen3.6/27b" in command
    done = subprocess.run(["sh", "-n", "-c", command], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr


# --- on the workstation, before connecting ------------------------------------------------------------


def test_apply_refuses_a_missing_key_and_an_unresolvable_name_at_their_lines(tmp_path):
    def edit(document):
        document["hosts"]["p620"]["ssh"]["key"] = str(tmp_path / "no-such-key")
        document["hosts"]["razer"]["ssh"]["hostname"] = "razer.invalid"

    variant = write_variant(REPO / "inventory" / "lab.yaml", tmp_path / "inv.yaml", edit)
    lines = variant.read_text().splitlines()
    key_line = next(i for i, line in enumerate(lines, 1) if "no-such-key" in line)
    name_line = next(i for i, line in enumerate(lines, 1) if "razer.invalid" in line)
    done = subprocess.run([sys.executable, "-m", "pyinfra", "-y", "inventory/hosts.py", "deploys/site.py"],
                          cwd=REPO, env={"PATH": "/usr/bin:/bin", "LLM_ROUTER_INVENTORY": str(variant)},
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 2, done.stdout + done.stderr
    errors = [line for line in done.stderr.splitlines() if ": error at " in line]
    assert len(errors) == 2 and "Traceback" not in done.stdout + done.stderr
    assert errors[0].startswith(f"{variant}:{key_line}:") and "hosts.p620.ssh.key" in errors[0]
    assert f"the SSH key file {tmp_path / 'no-such-key'} does not exist" in errors[0]
    assert errors[1].startswith(f"{variant}:{name_line}:") and "razer.invalid does not resolve" in errors[1]
