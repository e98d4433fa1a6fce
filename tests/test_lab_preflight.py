"""The preflight on the lab: a host that is not what the inventory says stops the apply before any change.

Each test breaks p620 the way a real host can be wrong, drifts one managed file (so an apply that went
on would rewrite it), runs the apply, and compares p620's managed state before and after: identical.
Each test repairs the host.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from inventory.load import load_inventory
from lab import core as lab_core
from tests.conftest import LAB_INVENTORY

pytestmark = pytest.mark.lab
REPO = Path(__file__).resolve().parent.parent
DRIFTED = "/etc/ollama/models.list"  # owned by the Ollama component: an apply that ran would rewrite it
# What the deploy manages on p620: file metadata and content, unit states, the firewall, the serve config.
MANAGED_STATE = (
    "find /etc/ollama /etc/llm-router /etc/systemd/system /usr/local/lib/llm-router /usr/local/bin /opt "
    "/var/lib/ollama -xdev -printf '%p %y %m %u:%g %s %T@\\n' 2>/dev/null | sort; "
    "find /etc/ollama /etc/llm-router /usr/local/lib/llm-router /etc/systemd/system -xdev -type f "
    "-exec sha256sum {} + 2>/dev/null | sort; "
    "systemctl show -p Id,ActiveState,UnitFileState,ExecMainPID ollama.service llm-router.service "
    "ollama-model-loader.service llm-router-tailscale-serve.service; nft list table inet llm_router"
)


def on_p620(command: str) -> subprocess.CompletedProcess[str]:
    return lab_core.run("p620", ["sh", "-c", command], timeout=60)


def managed_state() -> str:
    return on_p620(f"{MANAGED_STATE}; cat {DRIFTED}").stdout


def apply() -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pyinfra", "-y", "inventory/hosts.py", "deploys/site.py"],
                          cwd=REPO, env={**os.environ, "LLM_ROUTER_INVENTORY": str(LAB_INVENTORY)},
                          capture_output=True, text=True, timeout=900, check=False)


@contextmanager
def drifted_file() -> Iterator[None]:
    """A managed file with other content: proof that nothing ran if it is still there afterwards."""
    original = on_p620(f"cat {DRIFTED}").stdout
    on_p620(f"printf 'persistent drifted:latest\\n' > {DRIFTED}")
    try:
        yield
    finally:
        lab_core.install_file("p620", DRIFTED, original, 0o644)


def assert_refused_unchanged(message: str) -> None:
    with drifted_file():
        before = managed_state()
        done = apply()
        after = managed_state()
    output = done.stdout + done.stderr
    assert done.returncode == 2, output[-4000:]
    assert message in output, output[-4000:]
    assert "Traceback" not in output and "Grand total" not in output, output[-4000:]
    assert "drifted" in before and after == before


def test_renamed_lan_interface_stops_the_apply(deployed):
    on_p620("ip link set enp1s0 down && ip link set enp1s0 name enp5s0 && ip link set enp5s0 up")
    try:
        lan_address = load_inventory(LAB_INVENTORY).hosts["p620"].network.lan_address
        assert_refused_unchanged(f"p620 has no interface enp1s0: the host has {lan_address} on enp5s0: "
                                 "set network.lan_interfaces to enp5s0")
    finally:
        on_p620("ip link set enp5s0 down && ip link set enp5s0 name enp1s0 && ip link set enp1s0 up")
    assert "enp1s0" in on_p620("ip -br link").stdout


def test_full_models_disk_stops_the_apply(deployed):
    on_p620("mount -t tmpfs -o size=1m lab-full /var/lib/ollama/models && "
            "dd if=/dev/zero of=/var/lib/ollama/models/fill bs=64k 2>/dev/null; true")
    try:
        assert_refused_unchanged("/var/lib/ollama/models on p620 has 0.0 GB free, the models not yet pulled need "
                                 "up to 35 GB")
    finally:
        on_p620("umount /var/lib/ollama/models")
    assert on_p620("mountpoint -q /var/lib/ollama/models").returncode != 0


def test_stopped_tailscaled_stops_the_apply(deployed):
    serve_before = on_p620("tailscale serve status --json").stdout
    on_p620("systemctl stop tailscaled")
    try:
        assert_refused_unchanged("tailscale is not up on p620")
    finally:
        on_p620("systemctl start tailscaled")
    assert on_p620("tailscale serve status --json").stdout == serve_before


def test_missing_gpu_device_node_stops_the_apply(deployed):
    on_p620("rm /dev/kfd")
    try:
        assert_refused_unchanged("/dev/kfd missing on p620: the rocm driver is not loaded")
    finally:
        on_p620("systemctl restart lab-gpu-nodes.service")
    assert on_p620("test -c /dev/kfd").returncode == 0


def test_preflight_passes_on_the_deployed_lab(deployed):
    done = subprocess.run([sys.executable, "-m", "checks", "preflight", "--inventory", str(LAB_INVENTORY)],
                          cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert " 0 FAIL" in done.stdout and "FAIL (" not in done.stdout and "GPU visible to rocm" in done.stdout
