"""deploys/ollama.py without a host: unit contexts, install script, and the deploy against preset snapshots.

The operation tests build a real pyinfra State with one host whose `HostState`
fact is preset (the way pyinfra's own operation tests fake facts), run the
`ollama` deploy, and read back the commands every operation would run.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest

from deploys import ollama as deploy_ollama
from facts.files import PathState
from facts.host_state import Snapshot
from facts.users import UserState
from inventory.derive import ollama_archives
from inventory.load import load_inventory
from inventory.model import Acceleration, ArtifactSourceUpload, Inventory, Ollama
from tests.deploy_harness import changes, unit
from tests.deploy_harness import plan as run_plan

LAB_INVENTORY = Path(__file__).resolve().parent.parent / "inventory" / "lab.yaml"
BASE = "ollama-linux-amd64.tar.zst"
ROCM = "ollama-linux-amd64-rocm.tar.zst"
VULKAN = "ollama-linux-amd64-vulkan.tar.zst"
SHA_BASE, SHA_ROCM, SHA_VULKAN = "1" * 64, "2" * 64, "3" * 64


def make_ollama(**overrides) -> Ollama:
    values = {
        "version": "0.13.5",
        "artifacts": {ROCM: SHA_ROCM, BASE: SHA_BASE, VULKAN: SHA_VULKAN},
        "acceleration": "rocm",
        "hsa_override_gfx_version": "11.0.0",
        "visible_devices": ["0"],
        "persistent_models": ["qwen3.6:27b"],
        "on_demand_models": ["gemma4:26b"],
    }
    values.update(overrides)
    return Ollama.model_validate(values)


def service(context: dict) -> list[tuple[str, str]]:
    return context["service"]


def values(context: dict, key: str) -> list[str]:
    return [value for k, value in service(context) if k == key]


def environment(context: dict) -> dict[str, str]:
    pairs = (value.strip('"').split("=", 1) for value in values(context, "Environment"))
    return {k: v for k, v in pairs}


# --- unit context -----------------------------------------------------------------


def test_rocm_unit_gets_environment_devices_and_no_private_devices():
    context = deploy_ollama.ollama_unit_context(make_ollama())
    env = environment(context)
    assert env["OLLAMA_HOST"] == "127.0.0.1:11434"
    assert env["HSA_OVERRIDE_GFX_VERSION"] == "11.0.0"
    assert env["ROCR_VISIBLE_DEVICES"] == "0"
    assert "CUDA_VISIBLE_DEVICES" not in env
    assert env["OLLAMA_MODELS"] == "/var/lib/ollama/models"
    assert values(context, "DeviceAllow") == ["/dev/kfd rw", "char-drm rw"]
    assert values(context, "DevicePolicy") == ["closed"]
    assert values(context, "PrivateDevices") == ["no"]


def test_cuda_unit_allows_nvidia_devices_only():
    context = deploy_ollama.ollama_unit_context(
        make_ollama(acceleration="cuda", hsa_override_gfx_version=None, visible_devices=["0", "1"])
    )
    env = environment(context)
    assert env["CUDA_VISIBLE_DEVICES"] == "0,1"
    assert "ROCR_VISIBLE_DEVICES" not in env and "HSA_OVERRIDE_GFX_VERSION" not in env
    allowed = values(context, "DeviceAllow")
    assert allowed and all("nvidia" in device for device in allowed)
    assert values(context, "PrivateDevices") == ["no"]


def test_cpu_unit_gets_private_devices_and_no_device_allow():
    context = deploy_ollama.ollama_unit_context(
        make_ollama(acceleration="cpu", hsa_override_gfx_version=None, visible_devices=[])
    )
    assert values(context, "DeviceAllow") == []
    assert values(context, "PrivateDevices") == ["yes"]
    assert not any(k.endswith("VISIBLE_DEVICES") for k in environment(context))


@pytest.mark.parametrize("acceleration", ["rocm", "cuda", "vulkan", "cpu"])
def test_unit_hardening_and_resource_settings(acceleration):
    ollama = make_ollama(acceleration=acceleration, oom_score_adjust=300, nice=7,
                         io_scheduling_class="idle", io_scheduling_priority=6)
    settings = dict(service(deploy_ollama.ollama_unit_context(ollama)))  # last value per key
    expected = {
        "ProtectSystem": "strict", "ProtectHome": "yes", "PrivateTmp": "yes", "NoNewPrivileges": "yes",
        "ProtectKernelTunables": "yes", "ProtectControlGroups": "yes", "RestrictNamespaces": "yes",
        "LockPersonality": "yes", "RestrictRealtime": "yes", "SystemCallArchitectures": "native",
        "CapabilityBoundingSet": "", "Restart": "always", "User": "ollama",
        "OOMScoreAdjust": "300", "Nice": "7", "IOSchedulingClass": "idle", "IOSchedulingPriority": "6",
    }
    assert {k: settings.get(k) for k in expected} == expected
    assert settings["ReadWritePaths"].split() == ["/var/lib/ollama", "/var/lib/ollama/models"]


def test_read_write_paths_follow_the_models_dir():
    ollama = make_ollama(models_dir="/mnt/data/ollama/models")
    settings = dict(service(deploy_ollama.ollama_unit_context(ollama)))
    assert settings["ReadWritePaths"].split() == ["/mnt/data/ollama/models", "/var/lib/ollama"]
    assert environment(deploy_ollama.ollama_unit_context(ollama))["OLLAMA_MODELS"] == "/mnt/data/ollama/models"


def test_ipv6_loopback_bind_is_bracketed_and_accepted():
    env = environment(deploy_ollama.ollama_unit_context(make_ollama(bind="::1", port=11500)))
    assert env["OLLAMA_HOST"] == "[::1]:11500"


def test_non_loopback_bind_is_refused_by_the_model_and_by_the_unit():
    with pytest.raises(ValueError, match="loopback"):
        make_ollama(bind="0.0.0.0")
    # Even a model built without validation (model_construct) cannot render a public bind.
    public = make_ollama().model_copy(update={"bind": ipaddress.ip_address("192.168.1.10")})
    with pytest.raises(ValueError, match="non-loopback"):
        deploy_ollama.ollama_unit_context(public)


def test_environment_values_are_quoted_for_systemd():
    ollama = make_ollama(extra_environment={"OLLAMA_DEBUG": 'say "hi" 100% \\o/'})
    rendered = deploy_ollama.render_ollama_unit(ollama)
    assert 'Environment="OLLAMA_DEBUG=say \\"hi\\" 100%% \\\\o/"' in rendered


# --- rendered units ---------------------------------------------------------------


def _systemd_analyze_available() -> bool:
    try:
        return subprocess.run(["systemd-analyze", "--version"], check=False, capture_output=True).returncode == 0
    except FileNotFoundError:
        return False


def test_rendered_unit_has_what_systemd_needs_and_nothing_secret():
    ollama = make_ollama(extra_environment={"OLLAMA_DEBUG": "1"})
    text = deploy_ollama.render_ollama_unit(ollama)
    sections = re.findall(r"^\[(\w+)\]$", text, re.MULTILINE)
    assert sections == ["Unit", "Service", "Install"]
    assert "ExecStart=/opt/ollama/current/bin/ollama serve\n" in text
    assert "WantedBy=multi-user.target\n" in text
    assert 'Environment="OLLAMA_HOST=127.0.0.1:11434"\n' in text
    assert 'Environment="OLLAMA_DEBUG=1"\n' in text
    # Every non-comment line is `Key=value` or a section header: nothing the template invented.
    for line in text.splitlines():
        assert line == "" or line.startswith("#") or re.fullmatch(r"\[\w+\]|[A-Za-z]+=.*", line), line
    assert not re.search(r"(?i)key|token|secret|password|sk-", text.split("[Unit]", 1)[1])


def test_every_rendered_line_comes_from_the_context():
    ollama = make_ollama()
    context = deploy_ollama.ollama_unit_context(ollama)
    lines = [line for line in deploy_ollama.render_ollama_unit(ollama).splitlines()
             if line and not line.startswith(("#", "["))]
    expected = [f"{k}={v}" for section in ("unit", "service", "install") for k, v in context[section]]
    assert lines == expected


def test_loader_unit_orders_after_ollama_and_accepts_status_updates():
    text = deploy_ollama.render_loader_unit(make_ollama(prune_models=True))
    assert "After=ollama.service\n" in text and "Requires=ollama.service\n" in text
    assert "NotifyAccess=all\n" in text
    assert "ExecStart=/usr/local/lib/llm-router/ollama-model-loader /etc/ollama/models.list\n" in text
    assert 'Environment="LOADER_PRUNE=1"\n' in text
    assert 'Environment="LOADER_PRUNE=0"\n' in deploy_ollama.render_loader_unit(make_ollama())


@pytest.mark.skipif(not _systemd_analyze_available(), reason="systemd-analyze not installed")
def test_rendered_units_pass_systemd_analyze_verify(tmp_path):
    ollama = make_ollama()
    for name, text in (("ollama.service", deploy_ollama.render_ollama_unit(ollama)),
                       ("ollama-model-loader.service", deploy_ollama.render_loader_unit(ollama))):
        (tmp_path / name).write_text(text.replace("/opt/ollama/current/bin/ollama", "/bin/true")
                                     .replace("/usr/local/lib/llm-router/ollama-model-loader", "/bin/true"))
    result = subprocess.run(["systemd-analyze", "verify", *(str(p) for p in tmp_path.iterdir())],
                            check=False, capture_output=True, text=True)
    unknown = [line for line in result.stderr.splitlines() if "Unknown key" in line or "Invalid" in line]
    assert unknown == []


# --- release ----------------------------------------------------------------------


def test_archives_in_extraction_order_base_first_then_the_acceleration_add_on():
    assert ollama_archives(make_ollama()) == [(BASE, SHA_BASE), (ROCM, SHA_ROCM)]
    assert ollama_archives(make_ollama(acceleration="vulkan")) == [(BASE, SHA_BASE), (VULKAN, SHA_VULKAN)]
    assert ollama_archives(make_ollama(acceleration="cpu")) == [(BASE, SHA_BASE)]


def test_release_id_changes_with_version_and_any_archive_hash():
    base = deploy_ollama.release_id(make_ollama())
    assert re.fullmatch(r"0\.13\.5-[0-9a-f]{12}", base)
    assert deploy_ollama.release_id(make_ollama(version="0.13.6")).startswith("0.13.6-")
    republished = make_ollama(artifacts={BASE: SHA_BASE, ROCM: "4" * 64})
    assert deploy_ollama.release_id(republished) != base
    # An add-on the acceleration does not use does not change the install.
    assert deploy_ollama.release_id(make_ollama(artifacts={BASE: SHA_BASE, ROCM: SHA_ROCM})) == base


def test_install_script_verifies_every_archive_before_extracting_any():
    script = deploy_ollama.install_script(make_ollama(), "/opt/ollama/.incoming-x")
    lines = script.splitlines()
    checks = [i for i, line in enumerate(lines) if "sha256sum -c" in line]
    extracts = [i for i, line in enumerate(lines) if line.startswith("tar ")]
    assert len(checks) == 2 and len(extracts) == 2 and max(checks) < min(extracts)
    assert BASE in lines[extracts[0]] and ROCM in lines[extracts[1]]
    assert lines[-2].startswith("mv -T /opt/ollama/.incoming-x/root /opt/ollama/0.13.5-")
    assert "curl" not in script


def test_install_script_downloads_https_only_when_fetching():
    ollama = make_ollama(source={"kind": "url"})
    urls = {name: f"https://example.test/v0.13.5/{name}" for name, _ in ollama_archives(ollama)}
    script = deploy_ollama.install_script(ollama, "/opt/ollama/.incoming-x", urls)
    assert script.count("curl ") == 2 and "--proto =https" in script
    assert script.index("curl ") < script.index("sha256sum -c")


def _run_install(tmp_path: Path, archives: dict[str, bytes], ollama: Ollama) -> subprocess.CompletedProcess:
    """Run the install script with /opt/ollama redirected into tmp_path."""
    stage = tmp_path / "stage"
    (stage / "archives").mkdir(parents=True)
    for name, data in archives.items():
        (stage / "archives" / name).write_bytes(data)
    script = deploy_ollama.install_script(ollama, str(stage)).replace(
        deploy_ollama.INSTALL_ROOT + "/", f"{tmp_path}/opt/")
    (tmp_path / "opt").mkdir()
    return subprocess.run(["sh", "-c", script], check=False, capture_output=True, text=True)


def _tar_zst(tmp_path: Path, files: dict[str, bytes]) -> bytes:
    tree = tmp_path / f"tree-{len(list(tmp_path.iterdir()))}"
    for name, data in files.items():
        (tree / name).parent.mkdir(parents=True, exist_ok=True)
        (tree / name).write_bytes(data)
    out = tree.with_suffix(".tar.zst")
    subprocess.run(["tar", "--zstd", "-cf", str(out), "-C", str(tree), "."], check=True)
    return out.read_bytes()


zstd_missing = subprocess.run(["sh", "-c", "command -v zstd"], check=False, capture_output=True).returncode != 0


@pytest.mark.skipif(zstd_missing, reason="zstd not installed")
def test_install_script_extracts_in_order_and_moves_into_place(tmp_path):
    base = _tar_zst(tmp_path, {"bin/ollama": b"#!/bin/sh\n", "lib/ollama/base.txt": b"base"})
    rocm = _tar_zst(tmp_path, {"lib/ollama/rocm/libggml-hip.so": b"rocm"})
    ollama = make_ollama(artifacts={BASE: hashlib.sha256(base).hexdigest(), ROCM: hashlib.sha256(rocm).hexdigest()})
    result = _run_install(tmp_path, {BASE: base, ROCM: rocm}, ollama)
    assert result.returncode == 0, result.stderr
    installed = tmp_path / "opt" / deploy_ollama.release_id(ollama)
    assert (installed / "bin/ollama").read_bytes() == b"#!/bin/sh\n"
    assert (installed / "lib/ollama/rocm/libggml-hip.so").read_bytes() == b"rocm"
    assert not (tmp_path / "stage").exists()


@pytest.mark.skipif(zstd_missing, reason="zstd not installed")
def test_install_script_refuses_a_checksum_mismatch_naming_file_and_hashes(tmp_path):
    base = _tar_zst(tmp_path, {"bin/ollama": b"#!/bin/sh\n"})
    rocm = _tar_zst(tmp_path, {"lib/ollama/rocm/x": b"rocm"})
    ollama = make_ollama(artifacts={BASE: hashlib.sha256(base).hexdigest(), ROCM: "f" * 64})
    result = _run_install(tmp_path, {BASE: base, ROCM: rocm}, ollama)
    assert result.returncode != 0
    assert f"sha256 mismatch for {ROCM}: expected {'f' * 64}, actual {hashlib.sha256(rocm).hexdigest()}" in result.stderr
    assert list((tmp_path / "opt").iterdir()) == []  # nothing extracted, nothing moved


def test_models_list_puts_persistent_first_and_tags_untagged_names():
    text = deploy_ollama.models_list(make_ollama(persistent_models=["qwen3.6:27b", "llama3"],
                                                 on_demand_models=["hf.co/org/model:Q4_K_M"]))
    body = [line for line in text.splitlines() if not line.startswith("#")]
    assert body == ["persistent qwen3.6:27b", "persistent llama3:latest", "on-demand hf.co/org/model:Q4_K_M"]


def test_package_table_installs_only_what_is_missing():
    assert deploy_ollama.distro_family({"ID": "ubuntu", "ID_LIKE": "debian"}) == "debian"
    assert deploy_ollama.distro_family({"ID": "fedora"}) == "fedora"
    assert deploy_ollama.distro_family({"ID": "endeavouros", "ID_LIKE": "arch"}) == "arch"
    assert deploy_ollama.distro_family({"ID": "alpine"}) is None
    command = deploy_ollama.package_install_command("debian", ["zstd"])
    assert "apt-get install -y --no-install-recommends zstd" in command and "curl" not in command
    assert "curl ca-certificates" in deploy_ollama.package_install_command("debian", ["curl"])
    assert deploy_ollama.package_install_command("arch", ["zstd"]) == "pacman -S --needed --noconfirm zstd"
    upload = {"kind": "upload", "local_dir": "/srv/releases"}
    assert deploy_ollama.needed_commands(make_ollama(source=upload)) == ("sha256sum", "tar", "zstd")
    assert "curl" in deploy_ollama.needed_commands(make_ollama(source={"kind": "url"}))


# --- the deploy against a preset snapshot -----------------------------------------


def lab_inventory() -> Inventory:
    return load_inventory(LAB_INVENTORY)


def with_ollama(inv: Inventory, **updates) -> Inventory:
    """The inventory with p620's ollama section changed (models are frozen: copy the path down)."""
    server = inv.hosts["p620"].server
    ollama = server.ollama.model_copy(update=updates)
    host = inv.hosts["p620"].model_copy(update={"server": server.model_copy(update={"ollama": ollama})})
    changed = inv.model_copy(update={"hosts": {**inv.hosts, "p620": host}})
    changed._source = inv._source
    return changed


def with_release_files(inv: Inventory, directory: Path) -> Inventory:
    """Upload from `directory`, holding (dummy) archives: the operation checks they exist."""
    for name in inv.hosts["p620"].server.ollama.artifacts:
        (directory / name).write_bytes(b"archive")
    return with_ollama(inv, source=ArtifactSourceUpload(local_dir=directory))


def _file_state(content: str, mode: str = "644") -> PathState:
    return PathState("file", mode, "root", "root", hashlib.sha256(content.encode()).hexdigest())


def converged_snapshot(inv: Inventory) -> Snapshot:
    """The state a host has after a successful apply of the lab inventory."""
    ollama = inv.hosts["p620"].server.ollama
    d = deploy_ollama
    root_dir = PathState("dir", "755", "root", "root")
    ollama_dir = PathState("dir", "750", "ollama", "ollama")
    paths = {
        d.INSTALL_ROOT: root_dir,
        d.release_dir(ollama): root_dir,
        d.CURRENT_LINK: PathState("link", target=d.release_dir(ollama)),
        d.BIN_LINK: PathState("link", target=f"{d.CURRENT_LINK}/bin/ollama"),
        d.STATE_DIR: ollama_dir,
        str(ollama.models_dir): ollama_dir,
        d.CONFIG_DIR: root_dir,
        d.LIBEXEC_DIR: root_dir,
        d.MODELS_LIST: _file_state(d.models_list(ollama)),
        d.LOADER_SCRIPT: _file_state(d.loader_script(), "755"),
        f"{d.UNIT_DIR}/{d.OLLAMA_UNIT}": _file_state(d.render_ollama_unit(ollama)),
        f"{d.UNIT_DIR}/{d.LOADER_UNIT}": _file_state(d.render_loader_unit(ollama)),
    }
    return Snapshot.of(
        paths=paths,
        units=[unit(d.OLLAMA_UNIT, "active", "enabled"), unit(d.LOADER_UNIT, "inactive", "enabled")],
        users={"ollama": UserState(990, 990, frozenset({"ollama", "render", "video"}), d.STATE_DIR)},
        groups=frozenset({"root", "ollama", "render", "video"}),
        commands=dict.fromkeys(("sha256sum", "tar", "zstd"), True),
    )


def plan(inv: Inventory, snapshot: Snapshot, os_release: dict | None = None) -> list[tuple[str, list]]:
    """(operation name, commands) for every operation of the deploy on a host in `snapshot`."""
    return run_plan(lambda: deploy_ollama.ollama(inv, inv.hosts["p620"]), "p620", snapshot, os_release,
                    prefix="Ollama | ")


def test_converged_host_yields_no_commands():
    inv = lab_inventory()
    steps = plan(inv, converged_snapshot(inv))
    assert len(steps) >= 10
    assert changes(steps) == {}


def test_changed_unit_restarts_ollama_and_reloads_systemd_only():
    inv = lab_inventory()
    snapshot = converged_snapshot(inv)
    unit_path = f"{deploy_ollama.UNIT_DIR}/{deploy_ollama.OLLAMA_UNIT}"
    paths = {**snapshot.paths, unit_path: _file_state("[Service]\nEnvironment=OLLAMA_KEEP_ALIVE=1h\n")}
    changed = changes(plan(inv, replace(snapshot, paths=paths)))
    assert set(changed) == {"ollama.service file", "ollama.service", "ollama-model-loader.service"}
    assert changed["ollama.service"] == ["systemctl daemon-reload && systemctl restart ollama.service"]
    assert changed["ollama-model-loader.service"] == ["systemctl restart --no-block ollama-model-loader.service"]


def test_changed_model_list_restarts_only_the_loader():
    inv = lab_inventory()
    snapshot = converged_snapshot(inv)
    paths = {**snapshot.paths, deploy_ollama.MODELS_LIST: _file_state("persistent other:1b\n")}
    changed = changes(plan(inv, replace(snapshot, paths=paths)))
    assert set(changed) == {"/etc/ollama/models.list", "ollama-model-loader.service"}
    assert changed["ollama-model-loader.service"] == ["systemctl restart --no-block ollama-model-loader.service"]


def test_failed_loader_is_started_again():
    inv = lab_inventory()
    snapshot = converged_snapshot(inv)
    units = {**snapshot.units, deploy_ollama.LOADER_UNIT: unit(deploy_ollama.LOADER_UNIT, "failed", "enabled")}
    changed = changes(plan(inv, replace(snapshot, units=units)))
    assert changed == {"ollama-model-loader.service": ["systemctl restart --no-block ollama-model-loader.service"]}


def test_fresh_host_uploads_verifies_installs_and_switches_current(tmp_path):
    inv = with_release_files(lab_inventory(), tmp_path)
    ollama = inv.hosts["p620"].server.ollama
    steps = plan(inv, Snapshot.of(groups={"root", "render", "video"}, commands={"sha256sum": True, "tar": True}))
    changed = changes(steps)
    names = [name for name, commands in steps if commands]
    release = changed[f"release {deploy_ollama.release_id(ollama)}"]
    local_dir = inv.resolve_path(ollama.source.local_dir)
    uploads = [c for c in release if c.startswith("upload ")]
    assert uploads == [f"upload {local_dir / name} -> /opt/ollama/.incoming-{deploy_ollama.release_id(ollama)}"
                       f"/archives/{name}" for name, _ in ollama_archives(ollama)]
    assert "sha256sum -c" in release[-1]
    # zstd was missing: installed first, with the Debian package name.
    assert "apt-get install -y --no-install-recommends zstd" in changed["tools for the release archives"][0]
    # current switches only after the release operation.
    assert names.index(f"release {deploy_ollama.release_id(ollama)}") < names.index(
        deploy_ollama.CURRENT_LINK)
    assert changed["system user ollama"] == [
        "useradd --system --user-group --home-dir /var/lib/ollama --shell /usr/sbin/nologin -G render,video ollama"]
    assert changed["ollama.service"] == [
        "systemctl daemon-reload && systemctl enable ollama.service && systemctl start ollama.service"]
    assert changed["ollama-model-loader.service"] == ["systemctl enable ollama-model-loader.service",
                                               "systemctl restart --no-block ollama-model-loader.service"]


def test_version_upgrade_installs_new_release_switches_link_and_restarts(tmp_path):
    inv = lab_inventory()
    snapshot = converged_snapshot(inv)
    new_inv = with_ollama(with_release_files(inv, tmp_path), version="0.13.6")
    upgraded = new_inv.hosts["p620"].server.ollama
    changed = changes(plan(new_inv, snapshot))
    assert f"release {deploy_ollama.release_id(upgraded)}" in changed
    assert changed[deploy_ollama.CURRENT_LINK][0].startswith(
        f"ln -sfn {deploy_ollama.release_dir(upgraded)} ")
    assert changed["ollama.service"][-1].endswith("systemctl restart ollama.service")


def test_user_missing_a_gpu_group_gets_it_added():
    inv = lab_inventory()
    snapshot = converged_snapshot(inv)
    users = {"ollama": UserState(990, 990, frozenset({"ollama", "video"}), deploy_ollama.STATE_DIR)}
    changed = changes(plan(inv, replace(snapshot, users=users)))
    assert changed == {"system user ollama": ["usermod -a -G render ollama"]}


def test_models_dir_is_created_owned_by_ollama():
    inv = lab_inventory()
    snapshot = converged_snapshot(inv)
    models_dir = str(inv.hosts["p620"].server.ollama.models_dir)
    paths = {k: v for k, v in snapshot.paths.items() if k != models_dir}
    changed = changes(plan(inv, replace(snapshot, paths=paths)))
    assert changed == {f"models dir {models_dir}": [f"install -d -m 750 -o ollama -g ollama {models_dir}"]}


def test_acceleration_groups_table_covers_every_acceleration():
    assert set(deploy_ollama.GPU_GROUPS) == set(Acceleration) == set(deploy_ollama.GPU_DEVICES)


def test_rollback_to_an_installed_release_is_only_a_link_switch_and_restart():
    inv = lab_inventory()
    snapshot = converged_snapshot(inv)
    old_dir = deploy_ollama.release_dir(inv.hosts["p620"].server.ollama)
    newer = deploy_ollama.release_dir(with_ollama(inv, version="0.13.6").hosts["p620"].server.ollama)
    # The host runs the newer release; the inventory pins the old one again, still on disk.
    paths = {**snapshot.paths, newer: snapshot.paths[old_dir],
             deploy_ollama.CURRENT_LINK: PathState("link", target=newer)}
    changed = changes(plan(inv, replace(snapshot, paths=paths)))
    assert changed == {
        deploy_ollama.CURRENT_LINK: [(f"ln -sfn {old_dir} /opt/ollama/current.new && "
                                     "mv -T /opt/ollama/current.new /opt/ollama/current")],
        "ollama.service": ["systemctl restart ollama.service"],
    }


def test_stale_releases_keep_wanted_rollback_target_and_newest():
    listing = ["0.14.0-aaaaaaaaaaaa", "0.13.9-bbbbbbbbbbbb", "0.13.8-cccccccccccc", "0.13.5-dddddddddddd",
               "current", "0.13.1-eeeeeeeeeeee"]
    # Rolling back to an old release: it and the previous current are kept, then the newest other one.
    stale = deploy_ollama.stale_releases(listing, wanted="0.13.5-dddddddddddd", previous="0.14.0-aaaaaaaaaaaa")
    assert stale == ["0.13.8-cccccccccccc", "0.13.1-eeeeeeeeeeee"]
    assert deploy_ollama.stale_releases(listing[:2], "0.14.0-aaaaaaaaaaaa", "0.13.9-bbbbbbbbbbbb") == []
    assert "current" not in deploy_ollama.stale_releases(listing, "x", "y", keep=1)
    # Re-applying the running release: it counts once, so the two newest others stay too.
    same = deploy_ollama.stale_releases(listing, wanted="0.14.0-aaaaaaaaaaaa", previous="0.14.0-aaaaaaaaaaaa")
    assert same == ["0.13.5-dddddddddddd", "0.13.1-eeeeeeeeeeee"]


def test_old_releases_beyond_the_newest_three_are_removed_after_the_switch():
    inv = lab_inventory()
    snapshot = converged_snapshot(inv)
    wanted = deploy_ollama.release_id(inv.hosts["p620"].server.ollama)
    listing = f"current\n{wanted}\n0.13.4-111111111111\n0.13.3-222222222222\n0.13.2-333333333333\n"
    steps = plan(inv, replace(snapshot, values={deploy_ollama.RELEASES.key: tuple(listing.split())}))
    changed = changes(steps)
    assert changed == {"releases beyond the newest 3": [
        "rm -rf /opt/ollama/0.13.2-333333333333"]}
    names = [name for name, _ in steps]
    assert names.index("releases beyond the newest 3") > names.index(deploy_ollama.CURRENT_LINK)
