"""The router's config, environment, command line and unit, as computed from the inventory (pure)."""

from __future__ import annotations

import inspect
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from deploys.render import render
from deploys.router_config import (
    AUTH_HOOK_FUNCTION,
    FREE_MODEL_RATES,
    SUPERVISOR_MEMORY_BYTES,
    THINKING_PARAMS,
    WORKER_MEMORY_BYTES,
    RouterLayout,
    build_litellm_config,
    catalogue_entry,
    default_workers,
    dump_config_yaml,
    litellm_pattern_order,
    ollama_api_base,
    resolve_like_litellm,
    router_command,
    router_environment,
    router_unit_context,
    size_bytes,
    systemd_quote,
    workers_fitting,
)
from hostfiles import router_auth
from hostfiles import router_launch as launcher
from hostfiles.router_names import MASTER_KEY_CREDENTIAL
from inventory.derive import alias_table, resolve_alias
from inventory.load import load_inventory
from inventory.model import Capability, Server

REPO = Path(__file__).resolve().parent.parent
INVENTORIES = [REPO / "inventory" / "lab.yaml", REPO / "inventory" / "homelab.yaml"]


@pytest.fixture(scope="module")
def lab_inventory():
    return load_inventory(REPO / "inventory" / "lab.yaml")


def servers(path: Path):
    inv = load_inventory(path)
    return [(inv, host) for host in inv.servers]


ALL_SERVERS = [pair for path in INVENTORIES for pair in servers(path)]


def entries_by_name(config: dict) -> dict[str, dict]:
    return {entry["model_name"]: entry for entry in config["model_list"]}


# --- model_list ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("inv", "host"), ALL_SERVERS, ids=lambda v: getattr(v, "name", ""))
def test_every_name_the_router_answers_to_is_one_ollama_deployment(inv, host) -> None:
    server: Server = host.server
    config = build_litellm_config(inv, host)
    entries = entries_by_name(config)
    assert len(entries) == len(config["model_list"])  # no duplicate names
    table = alias_table(server)
    assert set(entries) == set(table)
    for name, target in table.items():
        params = entries[name]["litellm_params"]
        assert params["model"] == f"ollama_chat/{target}"
        assert params["api_base"] == f"http://127.0.0.1:{server.ollama.port}"
        assert params["drop_params"] is server.router.drop_params


@pytest.mark.parametrize(("inv", "host"), ALL_SERVERS, ids=lambda v: getattr(v, "name", ""))
def test_thinking_is_dropped_exactly_for_models_without_the_capability(inv, host) -> None:
    for name, target in alias_table(host.server).items():
        params = entries_by_name(build_litellm_config(inv, host))[name]["litellm_params"]
        thinks = Capability.thinking in inv.models[target].capabilities
        assert ("additional_drop_params" in params) is (not thinks), name
        if not thinks:
            assert set(params["additional_drop_params"]) == set(THINKING_PARAMS)


@pytest.mark.parametrize(("inv", "host"), ALL_SERVERS, ids=lambda v: getattr(v, "name", ""))
def test_model_info_carries_the_catalogue_context_and_capabilities(inv, host) -> None:
    for name, target in alias_table(host.server).items():
        entry = entries_by_name(build_litellm_config(inv, host))[name]
        info, model = entry["model_info"], inv.models[target]
        assert info["max_input_tokens"] == model.context_length
        assert info["supports_function_calling"] is (Capability.tools in model.capabilities)
        assert info["supports_reasoning"] is (Capability.thinking in model.capabilities)
        # Ollama runs the model at its catalogue context when that differs from the server default.
        expected_num_ctx = None if model.context_length == host.server.ollama.context_length else model.context_length
        assert entry["litellm_params"].get("num_ctx") == expected_num_ctx


@pytest.mark.parametrize(("inv", "host"), ALL_SERVERS, ids=lambda v: getattr(v, "name", ""))
def test_every_deployment_is_explicitly_free(inv, host) -> None:
    """Explicit 0 rates (input, output and both cache rates): LiteLLM's per-request zero-cost
    diagnostic stops early for them, and it does not warn at start about missing cache rates."""
    assert set(FREE_MODEL_RATES) >= {"input_cost_per_token", "output_cost_per_token",
                                      "cache_creation_input_token_cost", "cache_read_input_token_cost"}
    for entry in build_litellm_config(inv, host)["model_list"]:
        info = entry["model_info"]
        for rate in FREE_MODEL_RATES:
            assert info[rate] == 0 and not isinstance(info[rate], bool), (entry["model_name"], rate)


def test_lab_has_wildcards_for_claude_codes_dated_ids(lab_inventory) -> None:
    names = list(entries_by_name(build_litellm_config(lab_inventory, "p620")))
    assert resolve_like_litellm(names, "claude-haiku-4-5-20251001") == "claude-haiku-*"
    assert resolve_like_litellm(names, "claude-sonnet-4-6-20260101") == "claude-sonnet-*"
    assert resolve_like_litellm(names, "claude-sonnet-4-6") == "claude-sonnet-4-6"  # exact beats pattern
    assert resolve_like_litellm(names, "gpt-4o") is None


def test_litellm_tries_the_longest_pattern_first() -> None:
    # LiteLLM orders wildcard deployments by length, not by config order.
    assert litellm_pattern_order(["claude-*", "claude-sonnet-*", "x", "*"]) == ["claude-sonnet-*", "claude-*", "*"]
    assert resolve_like_litellm(["claude-*", "claude-sonnet-*"], "claude-sonnet-9") == "claude-sonnet-*"
    assert resolve_like_litellm(["claude-*", "claude-sonnet-*"], "claude-opus-9") == "claude-*"


@pytest.mark.parametrize(("inv", "host"), ALL_SERVERS, ids=lambda v: getattr(v, "name", ""))
def test_inventory_and_litellm_agree_on_claude_code_ids(inv, host) -> None:
    """The alias the deploy's own checks predict is the one LiteLLM routes to."""
    names = list(alias_table(host.server))
    for requested in ("claude-sonnet-4-6", "claude-sonnet-4-6-20260101", "claude-haiku-4-5-20251001",
                      "claude-opus-4-6-20260101", "claude-3-5-haiku-20241022"):
        chosen = resolve_like_litellm(names, requested)
        expected = resolve_alias(host.server, requested)
        assert (alias_table(host.server)[chosen] if chosen else None) == expected, requested


def test_uncatalogued_model_gets_server_context_and_no_thinking(lab_inventory) -> None:
    server = lab_inventory.hosts["p620"].server
    entry = catalogue_entry(lab_inventory, server, "mystery:7b")
    assert entry.context_length == server.ollama.context_length
    assert Capability.thinking not in entry.capabilities


def test_api_base_follows_the_ollama_bind(lab_inventory) -> None:
    server = lab_inventory.hosts["p620"].server
    v6 = server.model_copy(update={"ollama": server.ollama.model_copy(update={"bind": "::1", "port": 11500})})
    assert ollama_api_base(v6) == "http://[::1]:11500"


# --- settings and YAML --------------------------------------------------------------------------


def test_settings_reference_the_key_and_hook_and_keep_requests_cheap(lab_inventory) -> None:
    config = build_litellm_config(lab_inventory, "p620")
    general, settings = config["general_settings"], config["litellm_settings"]
    assert general["master_key"] == "os.environ/LITELLM_MASTER_KEY"
    assert general["custom_auth"] == AUTH_HOOK_FUNCTION
    for callbacks in ("callbacks", "success_callback", "failure_callback"):
        assert settings[callbacks] == []
    assert settings["set_verbose"] is False
    assert settings["drop_params"] is lab_inventory.hosts["p620"].server.router.drop_params
    assert config["router_settings"]["disable_cooldowns"] is True


def test_the_custom_auth_hook_exists_where_litellm_will_look() -> None:
    module, function = AUTH_HOOK_FUNCTION.rsplit(".", 1)
    assert f"/etc/llm-router/{module}.py" == RouterLayout().auth_hook_file  # next to config.yaml
    hook = getattr(router_auth, function)
    assert inspect.iscoroutinefunction(hook)
    assert list(inspect.signature(hook).parameters) == ["request", "api_key"]


def test_yaml_dump_round_trips_and_holds_no_secret(lab_inventory) -> None:
    config = build_litellm_config(lab_inventory, "p620")
    text = dump_config_yaml(config)
    assert yaml.safe_load(text) == config  # what LiteLLM (PyYAML) reads is what we built
    assert "sk-" not in text
    assert text.index("model_list") < text.index("general_settings")  # insertion order kept


@given(st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(), children, max_size=3),
    max_leaves=12))
def test_yaml_dump_reads_back_the_same_for_any_values(value) -> None:
    # Any string an inventory could carry, control and non-BMP characters included.
    config = {"model_list": [{"model_name": "a", "litellm_params": {"extra": value}}]}
    assert yaml.safe_load(dump_config_yaml(config)) == config


# --- workers --------------------------------------------------------------------------------------


def test_workers_override_wins() -> None:
    assert default_workers(cpu_count=16, override=3) == 3


def test_workers_one_per_core_within_memory() -> None:
    assert default_workers(cpu_count=2, override=None, memory_max="2G") == 2
    assert default_workers(cpu_count=32, override=None, memory_max="2G") == 3  # 350M + 3 x 450M
    assert default_workers(cpu_count=32, override=None, memory_max="512M") == 1


@given(cpu=st.integers(1, 256), megabytes=st.integers(1, 64 * 1024))
def test_default_workers_fit_memory_and_cores(cpu: int, megabytes: int) -> None:
    workers = default_workers(cpu, None, f"{megabytes}M")
    assert 1 <= workers <= cpu
    if workers > 1:
        assert SUPERVISOR_MEMORY_BYTES + workers * WORKER_MEMORY_BYTES <= megabytes * 1024**2
    assert workers == min(cpu, workers_fitting(f"{megabytes}M"))


def test_size_bytes() -> None:
    assert size_bytes("2G") == 2 * 1024**3
    assert size_bytes("512M") == 512 * 1024**2
    assert size_bytes("4096") == 4096
    with pytest.raises(ValueError):
        size_bytes("2GB")


# --- process and unit -----------------------------------------------------------------------------


def test_command_runs_the_launcher_with_litellms_flags(lab_inventory) -> None:
    layout = RouterLayout()
    argv = router_command(lab_inventory.hosts["p620"].server, 3, layout)
    assert argv[:3] == [f"{layout.current_venv}/bin/python", "-I", layout.launcher_file]
    flags = dict(zip(argv[3::2], argv[4::2], strict=True))
    assert flags == {"--config": layout.config_file, "--host": "0.0.0.0", "--port": "4000", "--num_workers": "3"}
    check = router_command(lab_inventory.hosts["p620"].server, 1, layout, venv="/opt/llm-router/venv-new",
                           config_file="/etc/llm-router/next/config.yaml", bind="127.0.0.1", port=4001)
    assert check[0] == "/opt/llm-router/venv-new/bin/python"
    assert check[check.index("--port") + 1] == "4001" and check[check.index("--host") + 1] == "127.0.0.1"


def test_environment_is_offline_quiet_and_secret_free() -> None:
    layout = RouterLayout()
    env = router_environment(layout)
    assert env["LITELLM_LOCAL_MODEL_COST_MAP"] == "True"
    assert env["LITELLM_MODE"] == "PRODUCTION"  # no .env loading from the working directory
    assert env["LITELLM_TELEMETRY_DISABLED"] == "true"
    assert env["LLM_ROUTER_KEY_HASHES_FILE"] == layout.key_hashes_file
    assert "LITELLM_MASTER_KEY" not in env
    assert not any(v.startswith("sk-") for v in env.values())


def test_systemd_quote() -> None:
    assert systemd_quote("/opt/x/bin/python") == "/opt/x/bin/python"
    assert systemd_quote("a b") == '"a b"'
    assert systemd_quote('say "hi"') == '"say \\"hi\\""'
    assert systemd_quote("") == '""'


def render_unit(lab_inventory, cpu_count: int = 8) -> str:
    return render("router/llm-router.service.j2", **router_unit_context(lab_inventory, "p620", cpu_count))


def unit_directives(text: str) -> list[tuple[str, str]]:
    return [tuple(line.split("=", 1)) for line in text.splitlines() if "=" in line and not line.startswith("#")]


def test_unit_prints_the_computed_values(lab_inventory) -> None:
    context = router_unit_context(lab_inventory, "p620", cpu_count=2)
    directives = unit_directives(render("router/llm-router.service.j2", **context))
    values = dict(directives)
    server = lab_inventory.hosts["p620"].server
    assert values["ExecStart"] == context["exec_start"]
    assert "--num_workers 2" in values["ExecStart"]
    assert values["MemoryMax"] == server.router.memory_max
    assert values["Restart"] == "on-failure" and values["RestartSec"] == "5"
    assert ("After", "ollama.service") in directives and ("Wants", "ollama.service") in directives
    assert ("LoadCredential", f"{MASTER_KEY_CREDENTIAL}:/etc/llm-router/master-key") in directives
    assert ("Environment", "LITELLM_LOCAL_MODEL_COST_MAP=True") in directives
    for key, value in context["hardening"]:
        assert (key, value) in directives
    for required in ("ProtectSystem", "ProtectHome", "PrivateTmp", "NoNewPrivileges", "RestrictSUIDSGID"):
        assert required in values
    assert values["User"] == "llm-router" and "DynamicUser" not in values


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_unit_exposure_within_the_inventory_bound(lab_inventory, tmp_path: Path) -> None:
    unit = tmp_path / "llm-router.service"
    unit.write_text(render_unit(lab_inventory))
    result = subprocess.run(["systemd-analyze", "security", "--offline=yes", "--no-pager", str(unit)],
                            check=False, capture_output=True, text=True)
    line = next(l for l in result.stdout.splitlines() if "Overall exposure level" in l)
    exposure = float(line.split(":")[1].split()[0])
    print(f"\nsystemd-analyze security (offline): {line.strip()}")
    assert exposure <= lab_inventory.hosts["p620"].server.router.security_exposure_max


# --- the launcher (stdlib only, so importable here) ------------------------------------------------


def test_launcher_puts_the_credential_in_the_environment_and_execs_litellm_with_the_speedups(
        tmp_path, monkeypatch) -> None:
    key = "sk-" + "k" * 60
    (tmp_path / MASTER_KEY_CREDENTIAL).write_text(key + "\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    monkeypatch.delenv("LITELLM_MASTER_KEY", raising=False)
    calls = []
    monkeypatch.setattr(os, "execve", lambda path, argv, env: calls.append((path, argv, env)))
    launcher.main(["--config", "c.yaml", "--port", "4000"])
    (path, argv, env), = calls
    # The same venv's python, on the speed-ups module that sits beside the launcher on the server.
    assert path == argv[0] == sys.executable
    assert Path(argv[1]) == Path(launcher.__file__).with_name("llm_router_speedups.py")
    assert argv[2:] == ["--config", "c.yaml", "--port", "4000"]  # the key is not an argument
    assert env["LITELLM_MASTER_KEY"] == key
    assert key not in " ".join(argv)


@pytest.mark.parametrize("content", ["", "not-a-key\n", "sk-short\n", "sk-" + "a" * 40 + " trailing\n"])
def test_launcher_refuses_a_malformed_key_without_printing_it(tmp_path, monkeypatch, capsys, content) -> None:
    (tmp_path / MASTER_KEY_CREDENTIAL).write_text(content)
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    monkeypatch.setattr(os, "execve", lambda *a: pytest.fail("must not start LiteLLM"))
    assert launcher.main([]) == 1
    err = capsys.readouterr().err
    assert "malformed" in err
    if content.strip():
        assert content.strip() not in err


def test_launcher_needs_the_systemd_credential(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setattr(os, "execve", lambda *a: pytest.fail("must not start LiteLLM"))
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    assert launcher.main([]) == 1
    assert "CREDENTIALS_DIRECTORY" in capsys.readouterr().err
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))  # no master-key file in it
    assert launcher.main([]) == 1
    assert "cannot read" in capsys.readouterr().err
