"""The Ollama deploy against the lab's p620 (systemd-nspawn): converge, loopback only, no-op re-apply,
checksum refusal, background model loader.

Most tests apply the Ollama deploy alone with `inventory/lab.yaml` rewritten
into a temporary file (absolute paths, the checksums of the stand-in release
built here) so each test can vary one value; `test_full_site_*` check Ollama
after conftest's full-site apply of the real lab inventory.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from ruamel.yaml import YAML

from deploys import ollama as deploy_ollama
from inventory.load import load_inventory
from lab import core
from lab.standins.ollama.build import build_release

pytestmark = pytest.mark.lab

REPO = Path(__file__).resolve().parent.parent
LAB_INVENTORY = REPO / "inventory" / "lab.yaml"
HOST = "p620"


# The Ollama component alone, as a deploy file: these tests vary Ollama's inventory without the
# rest of the site (router wheelhouse, firewall, clients) in the way. The full site runs in
# test_full_site_* through conftest's `deployed` fixture.
OLLAMA_ONLY_DEPLOY = """\
from pyinfra import host

from deploys import ollama

if host.data.llm_host.is_server:
    ollama.declare(host.data.llm_inventory, host.data.llm_host)
    ollama.ollama(host.data.llm_inventory, host.data.llm_host)
"""


@pytest.fixture(scope="module")
def ollama_only_deploy(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("deploy") / "ollama_only.py"
    path.write_text(OLLAMA_ONLY_DEPLOY)
    return path


def _release_dir() -> Path:
    inv = load_inventory(LAB_INVENTORY)
    return inv.resolve_path(inv.hosts[HOST].server.ollama.source.local_dir)


@pytest.fixture(scope="module")
def release_sums() -> dict[str, str]:
    """Build the stand-in release where lab.yaml uploads it from (reproducible: same bytes every build)."""
    version = load_inventory(LAB_INVENTORY).hosts[HOST].server.ollama.version
    return build_release(_release_dir(), version)


def write_inventory(path: Path, artifacts: dict[str, str] | None = None, **ollama_updates) -> Path:
    """lab.yaml with absolute paths, optionally other artifact checksums or ollama settings."""
    yaml = YAML(typ="rt")
    document = yaml.load(LAB_INVENTORY.read_text())
    base = LAB_INVENTORY.parent

    def absolute(value: str) -> str:
        return str((base / value).resolve())

    document["secrets_dir"] = absolute(document["secrets_dir"])
    for host in document["hosts"].values():
        for key in ("key", "known_hosts"):
            if host["ssh"].get(key):
                host["ssh"][key] = absolute(host["ssh"][key])
        server = host.get("server")
        if server:
            for section, key in (("ollama", "source"), ("router", None)):
                block = server.get(section) or {}
                if key and block.get(key, {}).get("local_dir"):
                    block[key]["local_dir"] = absolute(block[key]["local_dir"])
                if block.get("wheelhouse_dir"):
                    block["wheelhouse_dir"] = absolute(block["wheelhouse_dir"])
    ollama = document["hosts"][HOST]["server"]["ollama"]
    if artifacts is not None:
        ollama["artifacts"] = dict(artifacts)
    ollama.update(ollama_updates)
    with path.open("w") as out:
        yaml.dump(document, out)
    return path


def apply_ollama(deploy: Path, inventory: Path) -> subprocess.CompletedProcess[str]:
    """The Ollama deploy alone, on p620, with this inventory."""
    env = {**os.environ, "LLM_ROUTER_INVENTORY": str(inventory)}
    return subprocess.run(
        [sys.executable, "-m", "pyinfra", "-y", "--limit", HOST, "inventory/hosts.py", str(deploy)],
        check=False, cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )


def on_p620(*command: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return core.run(HOST, list(command), timeout=timeout)


def operation_results(output: str) -> dict[str, tuple[str, str, str]]:
    """pyinfra's closing table: operation -> (success, error, no change) counts ("-" for none)."""
    table = output.split("--> Results:", 1)[1] if "--> Results:" in output else ""
    rows = {}
    for line in table.splitlines():
        match = re.match(r"\s+(.+?)\s+(\d+)\s+(\S+)\s+(\S+)\s+(\S+)\s*$", line)
        if match and match.group(1) != "Grand total":
            rows[match.group(1)] = match.group(3, 4, 5)
    assert rows, f"no results table in pyinfra's output:\n{output[-3000:]}"
    return rows


def changed_operations(output: str) -> list[str]:
    return [name for name, (success, _, _) in operation_results(output).items() if success != "-"]


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(1)


@pytest.fixture(scope="module")
def converged(lab, release_sums, ollama_only_deploy, tmp_path_factory) -> Path:
    inventory = write_inventory(tmp_path_factory.mktemp("ollama") / "inventory.yaml", release_sums)
    result = apply_ollama(ollama_only_deploy, inventory)
    assert result.returncode == 0, result.stderr[-4000:]
    return inventory


def test_apply_installs_the_release_and_ollama_listens_on_loopback_only(converged):
    inv = load_inventory(converged)
    ollama = inv.hosts[HOST].server.ollama
    link = on_p620("readlink", deploy_ollama.CURRENT_LINK)
    assert link.stdout.strip() == deploy_ollama.release_dir(ollama)
    assert on_p620("systemctl", "is-active", "ollama.service").stdout.strip() == "active"

    def listeners():
        out = on_p620("ss", "-Htln").stdout
        return [line.split()[3] for line in out.splitlines() if line.split()[3].endswith(":11434")]

    bound = wait_for(listeners, 30, "ollama to listen on port 11434")
    assert bound == ["127.0.0.1:11434"]
    version = on_p620("curl", "-fsS", "http://127.0.0.1:11434/api/version")
    assert json.loads(version.stdout)["version"] == ollama.version
    # Not reachable on the LAN address from the LAN peer.
    lan = core.run("lan", ["curl", "-sS", "-m", "3", "http://10.213.1.10:11434/api/version"])
    assert lan.returncode != 0


def test_ollama_runs_as_its_user_with_gpu_groups_and_sandboxing(converged):
    show = on_p620("systemctl", "show", "-p", "User,ProtectSystem,NoNewPrivileges,PrivateDevices,DevicePolicy,"
                   "MainPID", "ollama.service").stdout
    props = dict(line.split("=", 1) for line in show.splitlines() if "=" in line)
    assert props["User"] == "ollama" and props["ProtectSystem"] == "strict"
    assert props["NoNewPrivileges"] == "yes" and props["PrivateDevices"] == "no"
    assert props["DevicePolicy"] == "closed"
    groups = on_p620("id", "-Gn", "ollama").stdout.split()
    existing = on_p620("getent", "group", "render", "video").stdout
    for group in ("render", "video"):
        assert (group in groups) == (f"{group}:" in existing)
    owner = on_p620("stat", "-c", "%U:%G", "/var/lib/ollama/models").stdout.strip()
    assert owner == "ollama:ollama"


def test_model_loader_pulls_the_listed_models_and_reports_status(converged):
    inv = load_inventory(converged)
    wanted = [*inv.hosts[HOST].server.ollama.persistent_models, *inv.hosts[HOST].server.ollama.on_demand_models]

    def loaded():
        state = on_p620("systemctl", "show", "-p", "ActiveState,Result,StatusText",
                        "ollama-model-loader.service").stdout
        props = dict(line.split("=", 1) for line in state.splitlines() if "=" in line)
        return props if props.get("ActiveState") in ("inactive", "failed") and props.get("Result") else None

    props = wait_for(loaded, 120, "the model loader to finish")
    assert props["Result"] == "success", on_p620("journalctl", "-u", "ollama-model-loader", "-n", "30").stdout
    listed = on_p620("ollama", "list").stdout
    for model in wanted:
        assert re.search(rf"^{re.escape(model)}\s", listed, re.MULTILINE), listed
    journal = on_p620("journalctl", "-u", "ollama-model-loader", "-o", "cat", "--no-pager").stdout
    assert "done: " in journal


def test_second_apply_reports_no_changes(converged, ollama_only_deploy):
    result = apply_ollama(ollama_only_deploy, converged)
    assert result.returncode == 0, result.stderr[-4000:]
    results = operation_results(result.stdout + result.stderr)
    assert len([name for name in results if name.startswith("Ollama | ")]) >= 10
    assert changed_operations(result.stdout + result.stderr) == []
    releases = on_p620("sh", "-c", f"ls -1 {deploy_ollama.INSTALL_ROOT} | grep -vx current").stdout.split()
    assert 1 <= len(releases) <= deploy_ollama.KEEP_RELEASES


def test_checksum_mismatch_is_refused_and_current_is_untouched(converged, release_sums, ollama_only_deploy,
                                                               tmp_path):
    before = on_p620("readlink", deploy_ollama.CURRENT_LINK).stdout.strip()
    tampered = dict(release_sums)
    name = next(n for n in tampered if "-rocm" in n)
    tampered[name] = hashlib.sha256(b"not the archive").hexdigest()
    result = apply_ollama(ollama_only_deploy, write_inventory(tmp_path / "inventory.yaml", tampered))
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert f"sha256 mismatch for {name}: expected {tampered[name]}, actual {release_sums[name]}" in output
    assert on_p620("readlink", deploy_ollama.CURRENT_LINK).stdout.strip() == before
    assert on_p620("systemctl", "is-active", "ollama.service").stdout.strip() == "active"
    leftovers = on_p620("sh", "-c", "ls -d /opt/ollama/.incoming-* 2>/dev/null").stdout
    assert leftovers == ""


def test_changing_keep_alive_restarts_ollama_only_then_settles(converged, release_sums, ollama_only_deploy,
                                                                tmp_path):
    before = on_p620("systemctl", "show", "-p", "MainPID", "--value", "ollama.service").stdout.strip()
    changed_inventory = write_inventory(tmp_path / "inventory.yaml", release_sums, keep_alive="7m")
    try:
        result = apply_ollama(ollama_only_deploy, changed_inventory)
        assert result.returncode == 0, result.stderr[-4000:]
        changed = changed_operations(result.stdout + result.stderr)
        assert "Ollama | ollama.service file" in changed and "Ollama | ollama.service" in changed
        after = on_p620("systemctl", "show", "-p", "MainPID", "--value", "ollama.service").stdout.strip()
        assert after != before
        env = on_p620("systemctl", "show", "-p", "Environment", "--value", "ollama.service").stdout
        assert "OLLAMA_KEEP_ALIVE=7m" in env
    finally:
        restored = apply_ollama(ollama_only_deploy, converged)
        assert restored.returncode == 0, restored.stderr[-4000:]


# --- the full site (conftest's session apply of inventory/lab.yaml) ---------------


def test_full_site_apply_converges_ollama_on_loopback(deployed):
    ollama = load_inventory(LAB_INVENTORY).hosts[HOST].server.ollama
    assert on_p620("readlink", deploy_ollama.CURRENT_LINK).stdout.strip() == deploy_ollama.release_dir(ollama)
    assert on_p620("systemctl", "is-active", "ollama.service").stdout.strip() == "active"
    listening = [line.split()[3] for line in on_p620("ss", "-Htln").stdout.splitlines()
                 if line.split()[3].endswith(f":{ollama.port}")]
    assert listening == [f"127.0.0.1:{ollama.port}"]


def test_full_site_second_apply_changes_nothing_in_ollama(deployed, apply):
    again = apply()
    assert again.returncode == 0, again.output[-6000:]
    assert [name for name in changed_operations(again.output) if name.startswith("Ollama | ")] == []
    assert again.converged, again.output[-4000:]
