"""deploys/router.py without a host: venv identity, scripts, and the deploy against preset snapshots.

The operation tests build a real pyinfra State with one host whose `HostState`
fact is preset, run the `router` deploy, and read back the commands each
operation would run (the pattern of tests/test_deploy_ollama.py).
"""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import sys
import tarfile
from dataclasses import replace
from pathlib import Path

import pytest

import hostfiles
from deploys import keys
from deploys import router as deploy_router
from deploys.secrets import ensure_secret
from facts.files import PathState
from facts.host_state import Snapshot
from facts.system import CpuCount
from facts.users import UserState
from inventory.load import load_inventory
from inventory.model import Inventory
from tests.deploy_harness import changes, unit
from tests.deploy_harness import plan as run_plan

REPO = Path(__file__).resolve().parent.parent
CPUS = 2


@pytest.fixture
def inv(tmp_path: Path) -> Inventory:
    """lab.yaml with its secrets and wheelhouse in tmp_path (two dummy wheels)."""
    source = (REPO / "inventory" / "lab.yaml").read_text()
    source = source.replace("secrets_dir: ../.cache/lab/secrets", "secrets_dir: secrets")
    source = source.replace("wheelhouse_dir: ../.cache/wheelhouse", "wheelhouse_dir: wheelhouse")
    path = tmp_path / "inventory.yaml"
    path.write_text(source)
    keys._keyrings.clear()
    loaded = load_inventory(path)
    version = loaded.hosts["p620"].server.router.litellm_version
    wheelhouse = tmp_path / "wheelhouse"
    wheelhouse.mkdir()
    (wheelhouse / f"litellm-{version}-py3-none-any.whl").write_bytes(b"litellm wheel")
    (wheelhouse / "prisma-0.15.0-py3-none-any.whl").write_bytes(b"prisma wheel")
    (wheelhouse / "README").write_text("not a wheel")
    (wheelhouse / "requirements.lock").write_text(f"litellm=={version} --hash=sha256:" + "1" * 64 + "\n")
    return loaded


def _version(inv: Inventory) -> str:
    return inv.hosts["p620"].server.router.litellm_version


# --- pure values ------------------------------------------------------------------


def test_venv_name_carries_version_and_requirement_hash(inv):
    p = deploy_router.plan(inv, inv.hosts["p620"])
    assert Path(p.venv).parent == Path("/opt/llm-router")
    version = _version(inv)
    assert Path(p.venv).name.startswith(f"venv-{version}-")
    assert p.wheels == (f"litellm-{version}-py3-none-any.whl", "prisma-0.15.0-py3-none-any.whl",
                        "requirements.lock")
    assert p.pins == (f"litellm[proxy]=={version}", "prisma==0.15.0")


def test_another_wheel_set_or_pin_is_another_venv():
    pins = ["litellm[proxy]==1.109.1", "prisma==0.15.0"]
    lock = "a==1 --hash=sha256:" + "a" * 64 + "\n"
    base = deploy_router.requirements_fingerprint(pins, lock)
    assert deploy_router.requirements_fingerprint(pins, lock.replace("a" * 64, "b" * 64)) != base
    assert deploy_router.requirements_fingerprint(["litellm[proxy]==1.109.0", pins[1]], lock) != base
    assert deploy_router.requirements_fingerprint(pins, None) != base
    assert deploy_router.requirements_fingerprint(pins, lock) == base


def test_a_wheelhouse_without_the_pinned_litellm_is_refused(inv):
    (inv.resolve_path(Path("wheelhouse")) / f"litellm-{_version(inv)}-py3-none-any.whl").unlink()
    with pytest.raises(ValueError, match=f"no litellm {_version(inv)} wheel"):
        deploy_router.plan(inv, inv.hosts["p620"])


def test_wheelhouse_tarball_is_reproducible_and_holds_the_wheels(tmp_path):
    (tmp_path / "a.whl").write_bytes(b"A")
    (tmp_path / "b.whl").write_bytes(b"B")
    one = deploy_router.wheelhouse_tarball(tmp_path, ["a.whl", "b.whl"])
    os.utime(tmp_path / "a.whl", (1, 1))
    assert deploy_router.wheelhouse_tarball(tmp_path, ["a.whl", "b.whl"]) == one
    with tarfile.open(fileobj=io.BytesIO(one)) as tar:
        assert tar.getnames() == ["a.whl", "b.whl"]
        assert tar.extractfile("b.whl").read() == b"B"


def test_install_script_proves_the_import_before_marking_the_venv_done():
    script = deploy_router.install_script("/opt/llm-router/venv-x", "/opt/llm-router/.incoming", ["litellm[proxy]==1"],
                                          from_wheelhouse=True)
    lines = script.splitlines()
    import_line = next(i for i, line in enumerate(lines) if "import litellm.proxy.proxy_server" in line)
    marker_line = next(i for i, line in enumerate(lines) if ".installed" in line)
    assert import_line < marker_line
    assert "--no-index" in script and "--require-hashes" in script and "current" not in lines[marker_line]
    assert "/opt/llm-router/current" not in "\n".join(lines[3:])  # only named in the error message


def test_activate_script_is_valid_sh_and_lists_every_staged_file():
    script = deploy_router.activate_script()
    result = subprocess.run(["sh", "-n"], input=script, text=True, capture_output=True, check=False)
    assert result.returncode == 0, result.stderr
    for spec in deploy_router.STAGED_FILES:
        assert f"{spec.staged_name} {spec.live}" in script
    # The layout, assigned right after the shebang, before the script's own lines.
    lines = script.splitlines()
    assert lines[0] == "#!/bin/sh"
    assert lines[1:6] == ["ETC=/etc/llm-router", "STAGED=/etc/llm-router/staged", "NEXT=/etc/llm-router/next",
                          "CURRENT=/opt/llm-router/current", "UNIT=llm-router.service"]
    assert "CHECK_CONFIG=/opt/llm-router/libexec/check-config.py" in lines
    assert "MASTER_KEY=/etc/llm-router/master-key" in lines
    assert script.endswith((REPO / "hostfiles" / "router_activate.sh").read_text().split("\n", 1)[1])


def test_activate_script_refuses_to_run_without_the_layout(tmp_path):
    result = subprocess.run(["sh", str(REPO / "hostfiles" / "router_activate.sh"), str(tmp_path), "4000", "4001",
                             str(tmp_path / "unit"), "5"], capture_output=True, text=True, check=False,
                            env={"PATH": "/usr/bin:/bin"}, timeout=30)
    assert result.returncode != 0 and "ETC" in result.stderr


def _check_config(tmp_path: Path, text: str, hook: str | None = "x = 1\n") -> subprocess.CompletedProcess:
    (tmp_path / "config.yaml").write_text(text)
    if hook is not None:
        (tmp_path / "llm_router_auth.py").write_text(hook)
    return subprocess.run([sys.executable, "-m", "hostfiles.router_check_config", str(tmp_path / "config.yaml")],
                          cwd=REPO, capture_output=True, text=True, timeout=60, check=False)


def test_check_config_accepts_the_rendered_config_when_ollama_answers(tmp_path, inv):
    import http.server
    import threading

    server = http.server.HTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        text = deploy_router.render_config(inv, inv.hosts["p620"])
        text = text.replace("http://127.0.0.1:11434", f"http://127.0.0.1:{server.server_port}")
        result = _check_config(tmp_path, text)
    finally:
        server.shutdown()
    assert result.returncode == 0, result.stderr


def test_check_config_rejects_unreachable_api_base_and_broken_documents(tmp_path, inv):
    text = deploy_router.render_config(inv, inv.hosts["p620"]).replace(
        "http://127.0.0.1:11434", "http://127.0.0.1:9")  # discard port: nothing listens
    result = _check_config(tmp_path, text)
    assert result.returncode == 1 and "not reachable" in result.stderr
    assert "not loadable YAML" in _check_config(tmp_path, "model_list: [\n").stderr
    assert "model_list is missing" in _check_config(tmp_path, "general_settings: {}\n").stderr
    literal = "model_list:\n- model_name: a\n  litellm_params: {model: ollama_chat/a}\n" \
              "general_settings: {master_key: sk-literal}\n"
    assert "literal key" in _check_config(tmp_path, literal).stderr
    broken_hook = "model_list:\n- model_name: a\n  litellm_params: {model: ollama_chat/a}\n" \
                  "general_settings: {custom_auth: llm_router_auth.user_api_key_auth}\n"
    assert "custom_auth" in _check_config(tmp_path, broken_hook, hook="def broken(:\n").stderr


# --- the deploy against snapshots ---------------------------------------------------


def _file_state(content: str, mode: str = "644", group: str = "root") -> PathState:
    return PathState("file", mode, "root", group, hashlib.sha256(content.encode()).hexdigest())


def converged_snapshot(inv: Inventory) -> Snapshot:
    """The state p620 has after a successful apply of this inventory."""
    host = inv.hosts["p620"]
    d = deploy_router
    p = d.plan(inv, host)
    root_dir = PathState("dir", "755", "root", "root")
    master = (inv.secrets_path / "litellm-master-key").read_text()
    live = {
        d.CONFIG_FILE: d.render_config(inv, host),
        d.AUTH_HOOK_FILE: hostfiles.content("router_auth.py"),
        d.UNIT_FILE: d.render_unit(inv, host, CPUS),
    }
    paths = {
        d.INSTALL_ROOT: root_dir,
        d.LIBEXEC_DIR: root_dir,
        d.ETC_DIR: PathState("dir", "750", "root", "llm-router"),
        d.STAGED_DIR: PathState("dir", "700", "root", "root"),
        d.CURRENT_LINK: PathState("link", target=p.venv),
        p.marker: _file_state(""),
        d.ACTIVATE_SCRIPT: _file_state(d.activate_script(), "755"),
        d.CHECK_CONFIG_SCRIPT: _file_state(hostfiles.content("router_check_config.py")),
        **{path: _file_state(hostfiles.content(source)) for source, path, _ in d.STARTUP_FILES},
        d.MASTER_KEY_FILE: _file_state(master, "600"),
        keys.KEY_HASHES_FILE: _file_state(keys.server_keys(inv, host), "640", "llm-router"),
        **{spec.live: _file_state(live[spec.live], spec.mode, spec.group) for spec in d.STAGED_FILES},
    }
    return Snapshot.of(
        paths=paths,
        units=[unit(d.UNIT, "active", "enabled")],
        users={"llm-router": UserState(991, 991, frozenset({"llm-router"}), "/var/lib/llm-router")},
        groups=frozenset({"root", "llm-router"}),
        facts={deploy_router.CPUS: CpuCount(CPUS)},
    )


def plan(inv: Inventory, snapshot: Snapshot | None = None, data: dict | None = None,
         finish: bool = False, limit: list[str] | None = None) -> list[tuple[str, list]]:
    """(operation name, commands) of the router deploy (and finish_rotation) on p620 in `snapshot`."""

    def run() -> None:
        keys.keyring(inv)  # creates the client keys
        ensure_secret(inv, "litellm-master-key")
        deploy_router.router(inv, inv.hosts["p620"])
        if finish:
            keys.finish_rotation(inv, inv.hosts["p620"])

    # The converged snapshot needs the secrets first: it is built inside the host context.
    def current() -> Snapshot:
        return snapshot(inv) if callable(snapshot) else (snapshot or Snapshot.of())

    return run_plan(run, "p620", current, hosts=["p620", "razer"], data=data, limit=limit,
                    prefix=("LiteLLM router | ", "Finish router key rotation | "))


def _with_paths(snapshot: Snapshot, **paths: PathState) -> Snapshot:
    return replace(snapshot, paths={**snapshot.paths, **paths})


def test_converged_host_yields_no_commands(inv):
    steps = plan(inv, converged_snapshot)
    assert len(steps) >= 15
    assert changes(steps) == {}


def test_fresh_host_gets_everything_and_one_activation(inv):
    steps = dict(plan(inv, Snapshot.of(facts={deploy_router.CPUS: CpuCount(CPUS)})))
    p = deploy_router.plan(inv, inv.hosts["p620"])
    activation = steps["Router: activate (check, swap, restart)"]
    assert activation == [f"upload -> {deploy_router.CHECK_UNIT_SOURCE}",
                          (f"{deploy_router.ACTIVATE_SCRIPT} {p.venv} 4000 4001 "
                           f"{deploy_router.CHECK_UNIT_SOURCE} {deploy_router.READY_TIMEOUT_S}")]
    assert any("wheelhouse.tar" in c for c in steps[f"Router: venv {Path(p.venv).name}"])
    # Files the router runs go to the staging directory, never straight to their live path.
    for spec in deploy_router.STAGED_FILES:
        assert f"upload -> {spec.staged}" in steps[f"Router: {spec.live}"]


def test_a_changed_alias_stages_the_config_and_activates_nothing_else(inv):
    def snapshot(inv):
        converged = converged_snapshot(inv)
        return _with_paths(converged, **{deploy_router.CONFIG_FILE: _file_state("model_list: []\n", "640",
                                                                                  "llm-router")})
    changed = changes(plan(inv, snapshot))
    assert set(changed) == {"Router: /etc/llm-router/config.yaml", "Router: activate (check, swap, restart)"}
    assert "upload -> /etc/llm-router/staged/config.yaml" in changed["Router: /etc/llm-router/config.yaml"]


def test_changed_client_keys_rewrite_the_hashes_without_a_restart(inv):
    def snapshot(inv):
        return _with_paths(converged_snapshot(inv),
                           **{keys.KEY_HASHES_FILE: _file_state('{"clients": {}}\n', "640", "llm-router")})
    changed = changes(plan(inv, snapshot))
    assert set(changed) == {"Router: client key hashes"}


def test_a_staged_file_left_by_an_interrupted_apply_is_removed(inv):
    def snapshot(inv):
        return _with_paths(converged_snapshot(inv),
                           **{f"{deploy_router.STAGED_DIR}/config.yaml": _file_state("stale\n", "640")})
    changed = changes(plan(inv, snapshot))
    assert changed == {"Router: /etc/llm-router/config.yaml": ["rm -f /etc/llm-router/staged/config.yaml"]}


def test_the_trial_unit_runs_the_new_venv_and_config_on_loopback(inv):
    steps = plan(inv, Snapshot.of())  # creates the secrets the rendering needs
    assert steps
    host = inv.hosts["p620"]
    p = deploy_router.plan(inv, host)
    trial = deploy_router.render_unit(inv, host, CPUS, venv=p.venv, config_file=f"{deploy_router.NEXT_DIR}/config.yaml",
                                      bind="127.0.0.1", port=deploy_router.check_port(host.server.router))
    exec_start = next(line for line in trial.splitlines() if line.startswith("ExecStart="))
    assert f"{p.venv}/bin/python" in exec_start and "/etc/llm-router/next/config.yaml" in exec_start
    assert "--host 127.0.0.1 --port 4001" in exec_start
    assert "MemoryMax=2G" in trial


def test_a_stopped_router_is_activated_even_without_changes(inv):
    def snapshot(inv):
        converged = converged_snapshot(inv)
        return replace(converged, units={deploy_router.UNIT: unit(deploy_router.UNIT, "failed", "enabled")})
    changed = changes(plan(inv, snapshot))
    assert "Router: activate (check, swap, restart)" in changed


def test_secrets_never_appear_in_commands(inv):
    steps = plan(inv, Snapshot.of())
    text = "\n".join(c for _, commands in steps for c in commands)
    master = (inv.secrets_path / "litellm-master-key").read_text().strip()
    razer = (inv.secrets_path / "router-key-razer").read_text().strip()
    assert master not in text and razer not in text


def test_rotation_accepts_both_keys_first_and_drops_the_old_one_last(inv):
    old = keys.load_client_key(inv, inv.hosts["razer"]).current
    p620 = keys.load_client_key(inv, inv.hosts["p620"])
    steady = keys.render_hashes(keys.accepted_hashes({"p620": p620, "razer": keys.ClientKey(old)}, final=True))

    def before_rotation(inv):
        return _with_paths(converged_snapshot(inv),
                           **{keys.KEY_HASHES_FILE: _file_state(steady, "640", "llm-router")})

    steps = plan(inv, before_rotation, data={"rotate_keys": "razer"}, finish=True)
    names = [name for name, commands in steps if commands]
    new = (inv.secrets_path / "router-key-razer").read_text().strip()
    assert new != old and (inv.secrets_path / "router-key-razer.previous").read_text().strip() == old
    # First the hashes with both keys, last the hashes without the old one, then the workstation.
    assert names[0] == "Router: client key hashes"
    assert names[-2:] == ["Router keys: stop accepting old keys of razer",
                          "Router keys: remove old keys of razer on the workstation"]
    during = keys.render_hashes(keys.accepted_hashes({"p620": p620, "razer": keys.ClientKey(new, old)},
                                                     final=False))
    assert keys.server_keys(inv, inv.hosts["p620"]) == during
    assert keys.key_hash(old) in during and keys.key_hash(new) in during
    final = keys.server_keys(inv, inv.hosts["p620"], final=True)
    assert keys.key_hash(old) not in final and keys.key_hash(new) in final


def test_no_rotation_means_no_finishing_operations(inv):
    steps = plan(inv, converged_snapshot, finish=True)
    assert not any(name.startswith("Router keys:") for name, _ in steps)


def test_pypi_install_resolves_the_pins_on_the_host_and_uploads_nothing(inv):
    server = inv.hosts["p620"].server
    router = server.router.model_copy(update={"install_source": "pypi", "wheelhouse_dir": None})
    host = inv.hosts["p620"].model_copy(update={"server": server.model_copy(update={"router": router})})
    inv = inv.model_copy(update={"hosts": {**inv.hosts, "p620": host}})
    p = deploy_router.plan(inv, host)
    assert p.wheelhouse is None and p.wheels == ()
    script = deploy_router.install_script(p.venv, "/opt/llm-router/.incoming", list(p.pins), from_wheelhouse=False)
    assert f"'litellm[proxy]=={router.litellm_version}' prisma==0.15.0" in script
    assert "--no-index" not in script and "wheelhouse" not in script


def test_secrets_are_written_beside_and_renamed_over_never_in_place(inv):
    steps = dict(plan(inv, Snapshot.of()))
    for name, path, mode, group in (("Router: client key hashes", keys.KEY_HASHES_FILE, "640", "llm-router"),
                                    ("Router: master key (systemd credential)", deploy_router.MASTER_KEY_FILE,
                                     "600", "root")):
        assert steps[name] == [
            f"rm -f {path}.llm-router-new && install -m 600 /dev/null {path}.llm-router-new",
            f"upload -> {path}.llm-router-new",
            (f"chown root:{group} {path}.llm-router-new && chmod {mode} {path}.llm-router-new && "
            f"mv -f {path}.llm-router-new {path}"),
        ]


def test_a_rotation_refuses_to_run_without_the_client_or_its_router(inv):
    with pytest.raises(keys.RotationError, match="razer in this run"):
        plan(inv, Snapshot.of(), data={"rotate_keys": "razer"}, limit=["p620"])
    assert not (inv.secrets_path / "router-key-razer.previous").exists()
