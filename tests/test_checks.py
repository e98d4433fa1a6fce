"""Every acceptance check judged on plain facts: one PASS and at least one FAIL each."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from checks import core
from checks.__main__ import duration_seconds, table
from checks.observe import client_request_script
from facts.files import PathState
from facts.firewall import NFT as NFT_SECTION
from facts.firewall import NftRuleset
from facts.gpu import GpuDevice, GpuInventory, parse_nvidia_smi
from facts.host_state import Undeclared
from facts.ollama import InstalledModel, LoadedModel, OllamaState
from facts.sections import encode
from facts.sockets import parse_ss_listeners
from facts.tailscale import parse_tailscale_serve
from inventory.load import load_inventory
from tests.deploy_harness import unit

REPO = Path(__file__).resolve().parent.parent
NFT = REPO / "tests" / "fixtures" / "nft"
INV = load_inventory(REPO / "inventory" / "homelab.yaml")
P620 = INV.hosts["p620"]
RAZER = INV.hosts["razer"]
GIB = 1024**3


def ss(*rows: str):
    return parse_ss_listeners([f"LISTEN 0 4096 {row} 0.0.0.0:*" for row in rows])


def ruleset(name: str) -> dict:
    return json.loads((NFT / f"{name}.json").read_text())


def test_ollama_bind_pass_and_fail():
    assert core.check_ollama_bind(P620, core.ServerFacts(sockets=ss("127.0.0.1:11434"))).status == "PASS"
    wide = core.check_ollama_bind(P620, core.ServerFacts(sockets=ss("0.0.0.0:11434")))
    assert wide.status == "FAIL" and "beyond loopback" in wide.reason
    both = core.check_ollama_bind(P620, core.ServerFacts(sockets=ss("127.0.0.1:11434", "[::]:11434")))
    assert both.status == "FAIL"
    assert core.check_ollama_bind(P620, core.ServerFacts(sockets=ss())).status == "FAIL"


def test_router_bind_pass_and_fail():
    assert core.check_router_bind(P620, core.ServerFacts(sockets=ss("0.0.0.0:4000"))).status == "PASS"
    assert core.check_router_bind(P620, core.ServerFacts(sockets=ss("127.0.0.1:4000"))).status == "FAIL"
    assert core.check_router_bind(P620, core.ServerFacts(sockets=ss())).status == "FAIL"


def test_firewall_our_table_passes():
    """The captured llm_router table admits 4000 on lo, tailscale0, enp1s0 and 11434 on lo only."""
    results = core.check_firewall(P620, core.ServerFacts(ruleset=ruleset("llm_router")))
    assert [r.status for r in results] == ["PASS", "PASS"], [r.reason for r in results]


def test_firewall_without_our_table_fails_naming_the_open_interfaces():
    results = core.check_firewall(P620, core.ServerFacts(ruleset=ruleset("debian_default")))
    assert [r.status for r in results] == ["FAIL", "FAIL"]
    assert "also open on" in results[0].reason and "wan0" not in results[0].expected


def test_firewall_missing_ruleset_fails():
    result = core.check_firewall(P620, core.ServerFacts(ruleset=None))[0]
    assert result.status == "FAIL" and "not loaded" in result.reason


def test_firewall_unreadable_ruleset_fails_with_the_facts_reason():
    unreadable = NftRuleset().process([encode(NFT_SECTION, 0, b"Error: Could not process rule: Operation not permitted\n")])
    result = core.check_firewall(P620, core.ServerFacts(ruleset=unreadable))[0]
    assert (result.status, result.observed) == ("FAIL", "unreadable nftables ruleset")
    assert "Operation not permitted" in result.reason


def test_probe_judgement():
    assert core.check_probe(P620, "public", "10.0.0.1", 4000, "refused", "refused").status == "PASS"
    failed = core.check_probe(P620, "public", "10.0.0.1", 4000, "refused", "open")
    assert failed.status == "FAIL" and "public" in failed.reason


def test_tailscale_serve_check():
    served = parse_tailscale_serve([json.dumps({
        "TCP": {"443": {"HTTPS": True}},
        "Web": {"p620.tail1234.ts.net:443": {"Handlers": {"/router": {"Proxy": "http://localhost:4000"}}}}})])
    assert [r.status for r in core.check_publication(P620, core.ServerFacts(serve=served))] == ["PASS"]
    empty = parse_tailscale_serve(["{}"])
    result = core.check_publication(P620, core.ServerFacts(serve=empty))[0]
    assert result.status == "FAIL" and "mapping is missing" in result.reason


def test_tailscale_serve_check_reads_a_services_only_config():
    """tailscale 1.92 may print only a Services map: the check names what it serves, not "no route"."""
    services = parse_tailscale_serve([json.dumps({"Services": {"svc:llm-router": {
        "TCP": {"443": {"HTTPS": True}},
        "Web": {"llm-router.tail1234.ts.net:443": {"Handlers": {"/router": {"Proxy": "http://127.0.0.1:4000"}}}}}}})])
    result = core.check_publication(P620, core.ServerFacts(serve=services))[0]
    assert result.status == "FAIL"  # the clients use the node's name, which serves nothing
    assert result.observed == "svc:llm-router: https://llm-router.tail1234.ts.net/router -> http://127.0.0.1:4000"
    assert f"not served on this node's name ({P620.network.tailnet_dns_name})" in result.reason
    tcp_only = parse_tailscale_serve([json.dumps({"Services": {"svc:ascii-chat": {
        "TCP": {"27224": {"TCPForward": "localhost:27224"}}}}})])
    result = core.check_publication(P620, core.ServerFacts(serve=tcp_only))[0]
    assert result.observed == "no route; only Tailscale Services: svc:ascii-chat"
    # Both: the node's own mapping decides.
    both = parse_tailscale_serve([json.dumps({"TCP": {"443": {"HTTPS": True}}, "Web": {
        "p620.tail1234.ts.net:443": {"Handlers": {"/router": {"Proxy": "http://127.0.0.1:4000"}}}},
        "Services": {"svc:other": {"TCP": {"443": {"HTTPS": True}}}}})])
    assert core.check_publication(P620, core.ServerFacts(serve=both))[0].status == "PASS"


def test_vram_fit():
    big = GpuInventory("rocm-smi", (GpuDevice(0, "RX 7900 XTX", 24 * 10**9, 10**9, "rocm-smi"),))
    small = GpuInventory("rocm-smi", (GpuDevice(0, "RX 7600", 8 * 10**9, 10**9, "rocm-smi"),))
    assert core.check_vram_fit(INV, P620, core.ServerFacts(gpu=big)).status == "PASS"
    assert core.check_vram_fit(INV, P620, core.ServerFacts(gpu=small)).status == "FAIL"
    skipped = core.check_vram_fit(INV, P620, core.ServerFacts(gpu=GpuInventory(None, (), "no GPU tool")))
    assert skipped.status == "SKIP" and "no GPU tool" in skipped.reason


def ollama(loaded=(), installed=("qwen3.6:27b", "gemma4:26b")) -> OllamaState:
    return OllamaState(True, "0.13.5", tuple(InstalledModel(n, 1, "d", None) for n in installed), tuple(loaded))


def test_gpu_offload():
    full = LoadedModel("qwen3.6:27b", 17 * GIB, 17 * GIB, None, 65536)
    partial = LoadedModel("qwen3.6:27b", 17 * GIB, 12 * GIB, None, 65536)
    assert core.check_gpu_offload(P620, core.ServerFacts(ollama=ollama([full]))).status == "PASS"
    assert core.check_gpu_offload(P620, core.ServerFacts(ollama=ollama([partial]))).status == "FAIL"
    assert core.check_gpu_offload(P620, core.ServerFacts(ollama=OllamaState(False, None, (), ()))).status == "FAIL"


def test_models_installed():
    assert core.check_models_installed(P620, core.ServerFacts(ollama=ollama())).status == "PASS"
    missing = core.check_models_installed(P620, core.ServerFacts(ollama=ollama(installed=("qwen3.6:27b",))))
    assert missing.status == "FAIL" and "gemma4:26b" in missing.reason


def test_idle_against_baseline():
    gpu = GpuInventory("sysfs", (GpuDevice(0, None, 24 * GIB, 2 * GIB, "sysfs"),))
    ok = core.check_idle(P620, core.ServerFacts(ollama=ollama(), gpu=gpu), [2 * GIB], 512 * 1024**2)
    assert [r.status for r in ok] == ["PASS", "PASS"]
    busy = core.check_idle(P620, core.ServerFacts(ollama=ollama([LoadedModel("qwen3.6:27b", 1, 1, None, None)]),
                                                  gpu=GpuInventory("sysfs", (GpuDevice(0, None, 24 * GIB,
                                                                                       19 * GIB, "sysfs"),))),
                           [2 * GIB], 512 * 1024**2)
    assert [r.status for r in busy] == ["FAIL", "FAIL"]
    no_baseline = core.check_idle(P620, core.ServerFacts(ollama=ollama(), gpu=gpu), None, 0)
    assert no_baseline[1].status == "SKIP" and "baseline" in no_baseline[1].reason



# nvidia-smi on a DGX Spark (GB10, unified memory): tests/facts/gpu.GpuVram/nvidia_smi_gb10_unified_memory.json
GB10 = parse_nvidia_smi(["0, NVIDIA GB10, [N/A], [N/A]"])


def test_vram_fit_skips_unified_memory_instead_of_judging_0_gb():
    result = core.check_vram_fit(INV, P620, core.ServerFacts(gpu=GB10))
    assert result.status == "SKIP" and result.observed == "-"
    assert "[N/A]" in result.reason and "NVIDIA GB10" in result.reason
    # One unknown device makes the whole total unknown: a sum would undercount it.
    mixed = GpuInventory("nvidia-smi", (GpuDevice(0, "RTX 4090", 24 * 10**9, 0, "nvidia-smi"), *GB10.devices))
    assert mixed.total_bytes is None
    assert core.check_vram_fit(INV, P620, core.ServerFacts(gpu=mixed)).status == "SKIP"


def test_idle_compares_only_measured_vram():
    idle_gb10 = core.check_idle(P620, core.ServerFacts(ollama=ollama(), gpu=GB10), [None], 0)
    assert [r.status for r in idle_gb10] == ["PASS", "SKIP"]
    assert "[N/A]" in idle_gb10[1].reason and "loaded models only" in idle_gb10[1].reason
    busy_gb10 = core.check_idle(P620, core.ServerFacts(ollama=ollama([LoadedModel("qwen3.6:27b", 1, 1, None, None)]),
                                                       gpu=GB10), [None], 0)
    assert [r.status for r in busy_gb10] == ["FAIL", "SKIP"] and "still loaded" in busy_gb10[0].reason
    # Two GPUs, the second unmeasured: only the first is compared, at its own figure.
    two = GpuInventory("nvidia-smi", (GpuDevice(0, "RTX 4090", 24 * GIB, 3 * GIB, "nvidia-smi"), *GB10.devices))
    over = core.check_idle(P620, core.ServerFacts(ollama=ollama(), gpu=two), [1 * GIB, None], 512 * 1024**2)
    assert over[1].status == "FAIL" and over[1].observed == f"{3 * GIB / core.GB:.2f} GB"
    back = core.check_idle(P620, core.ServerFacts(ollama=ollama(), gpu=two), [3 * GIB, None], 0)
    assert back[1].status == "PASS"
    unreachable = core.check_idle(P620, core.ServerFacts(ollama=OllamaState(False, None, (), ()), gpu=GB10), [None], 0)
    assert unreachable[0].status == "FAIL" and "does not answer" in unreachable[0].reason


def test_units():
    units = {u.id: u for u in (unit("ollama.service", "active", "enabled"),
                               unit("llm-router.service", "inactive", "enabled"),
                               unit("static.service", "active", "static"),
                               unit("starting.service", "activating", "enabled"),
                               unit("gone.service", "inactive", "", load="not-found"))}
    names = ["ollama.service", "llm-router.service", "missing.service", "static.service", "starting.service",
             "gone.service"]
    results = core.check_units(P620, units, names)
    assert [r.status for r in results] == ["PASS", "FAIL", "FAIL", "PASS", "STARTING", "FAIL"]
    assert [r.observed for r in results] == ["active/enabled", "inactive/enabled", "not found", "active/static",
                                             "activating/enabled for an unknown time", "inactive/"]


def test_a_unit_still_starting_says_for_how_long_and_a_restart_loop_fails():
    from dataclasses import replace
    starting = replace(unit("llm-router.service", "activating", "enabled"), sub_state="start",
                       started_monotonic_us=100_000_000)
    looping = replace(unit("ollama.service", "activating", "enabled"), sub_state="auto-restart",
                      started_monotonic_us=100_000_000)
    results = core.check_units(P620, {u.id: u for u in (starting, looping)}, ["llm-router.service",
                                                                           "ollama.service"], uptime_s=130.4)
    assert (results[0].status, results[0].observed) == ("STARTING", "activating/enabled for 30 s")
    assert "still starting (for 30 s)" in results[0].reason
    assert results[1].status == "FAIL"


def test_file_modes():
    paths = {"/k": PathState("file", "600", "olaf", "olaf"), "/loose": PathState("file", "644", "olaf", "olaf"),
             "/absent": PathState("absent")}
    assert core.check_file_mode(RAZER, paths, "/k", "600", "olaf", None, "key").status == "PASS"
    loose = core.check_file_mode(RAZER, paths, "/loose", "600", "olaf", None, "key")
    assert loose.status == "FAIL" and "chmod 600" in loose.reason
    assert core.check_file_mode(RAZER, paths, "/absent", "600", "olaf", None, "key").status == "FAIL"
    with pytest.raises(Undeclared, match="/unread"):
        core.check_file_mode(RAZER, paths, "/unread", "600", "olaf", None, "key")


def test_security_threshold():
    assert core.check_security(P620, 3.2, 5.0).status == "PASS"
    assert core.check_security(P620, 7.9, 5.0).status == "FAIL"
    assert core.check_security(P620, None, 5.0).status == "SKIP"


def test_client_requests():
    good = core.check_client(RAZER, core.ClientFacts(url="https://x/router", with_key=200, without_key=401))
    assert [r.status for r in good] == ["PASS", "PASS"]
    open_router = core.check_client(RAZER, core.ClientFacts(url="u", with_key=200, without_key=200))
    assert [r.status for r in open_router] == ["PASS", "FAIL"]
    down = core.check_client(RAZER, core.ClientFacts(url="u", error="request failed: timeout"))
    assert down[0].status == "FAIL"
    unreachable = core.check_client(RAZER, core.ClientFacts(url="u", with_key=0, without_key=0))
    assert [r.status for r in unreachable] == ["FAIL", "SKIP"] and "no connection" in unreachable[0].observed
    bad_gateway = core.check_client(RAZER, core.ClientFacts(url="u", with_key=502, without_key=502))
    assert [r.status for r in bad_gateway] == ["FAIL", "SKIP"]


def test_client_request_script_keeps_the_key_out_of_argv():
    script = client_request_script("https://p620/router", "/home/olaf/.config/claude-router/key", "claude-sonnet-4-6")
    assert "x-api-key: %s" in script and "$(cat /home/olaf/.config/claude-router/key)" in script
    assert "-H @" in script  # the header travels in a file, not as an argument


def test_exit_code_and_table():
    results = [core.Result("p620", "a", "x", "x", "PASS"), core.Result("p620", "b", "x", "y", "FAIL", "why")]
    assert core.summary_exit_code(results) == 1
    assert core.summary_exit_code(results[:1]) == 0
    text = table(results)
    assert "FAIL (why)" in text and text.splitlines()[0].split()[:2] == ["HOST", "CHECK"]


@pytest.mark.parametrize("text,seconds", [("5m", 300), ("30s", 30), ("1h", 3600), ("0", 0), ("-1", -1)])
def test_duration_seconds(text, seconds):
    assert duration_seconds(text) == seconds


def test_a_router_started_moments_ago_and_not_listening_yet_is_starting_later_it_fails():
    from dataclasses import replace
    router = replace(unit("llm-router.service", "active", "enabled"), started_monotonic_us=1_000_000_000)
    facts = core.ServerFacts(sockets=ss(), units={router.id: router}, uptime_s=1_012.0)
    starting = core.check_router_bind(P620, facts)
    assert (starting.status, starting.observed) == ("STARTING", "not yet, started 12 s ago")
    facts.uptime_s = 1_000.0 + core.ROUTER_STARTUP_S + 1
    assert core.check_router_bind(P620, facts).status == "FAIL"
