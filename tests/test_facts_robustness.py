"""Every fact's process() must turn any output into its typed result, never raise."""

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from facts.files import DirectoryEntries, FileHasLine, FirstLineHas, JsonKeyEquals, Paths
from facts.firewall import NftRuleset, RulesetUnreadable
from facts.firewall_backends import FirewalldZonePorts, NftTableLoaded, UfwState, UfwStatus
from facts.gpu import GpuInventory, GpuVram
from facts.network import NetworkInterfaces
from facts.ollama import OllamaState, OllamaStatus
from facts.sockets import ListeningSockets
from facts.system import CommandsOnPath, CpuCount, OnlineCpus
from facts.tailscale import TailscaleNode, TailscaleServe, TailscaleServeStatus, TailscaleStatus
from facts.units import UnitStates
from facts.users import Groups, Users

FACTS = [
    (GpuVram, GpuInventory),
    (ListeningSockets, tuple),
    (NetworkInterfaces, tuple),
    (OllamaStatus, OllamaState),
    (TailscaleStatus, TailscaleNode),
    (TailscaleServeStatus, TailscaleServe),
    (UnitStates, dict),
    (NftRuleset, (dict, RulesetUnreadable, type(None))),
]
# The facts HostState batches (their values are not all JSON-serialisable: frozensets).
SECTION_FACTS = [
    (Paths, dict), (Users, dict), (Groups, frozenset), (CommandsOnPath, dict), (OnlineCpus, CpuCount),
    (FileHasLine, bool), (FirstLineHas, bool), (JsonKeyEquals, bool), (DirectoryEntries, tuple),
    (NftTableLoaded, bool), (UfwStatus, UfwState), (FirewalldZonePorts, dict),
]
MARKERS = [
    "##section:rocm-smi",
    "##section:amd-smi-metric",
    "##section:amd-smi-static",
    "##section:nvidia-smi",
    "##section:sysfs",
    "##section:version",
    "##section:tags",
    "##section:ps",
    "##section:error",
    "##section:absent",
]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
# JSON documents using the keys the parsers look for, so the fuzzing reaches the deep branches.
KEYS = ["card0", "gpu", "gpu_data", "mem_usage", "total_vram", "used_vram", "value", "unit", "asic", "market_name",
        "VRAM Total Memory (B)", "models", "name", "size", "size_vram", "version", "ifname", "addr_info", "local",
        "prefixlen", "flags", "BackendState", "Self", "DNSName", "TailscaleIPs", "TCP", "Web", "Handlers", "Proxy",
        "host:443", "443", "Foreground", "AllowFunnel"]  # fmt: skip
shaped_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.sampled_from(["N/A", "1024", "MB", "x:1"]),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.sampled_from(KEYS), children, max_size=5)
    ),
    max_leaves=20,
)
lines = st.lists(st.one_of(st.text(max_size=40), st.sampled_from(MARKERS)), max_size=12)


@pytest.mark.parametrize(("fact_class", "result_type"), FACTS + SECTION_FACTS)
@settings(max_examples=100, suppress_health_check=[HealthCheck.too_slow])
@given(output=lines)
def test_process_never_raises_on_text(fact_class, result_type, output):
    assert isinstance(fact_class().process(output), result_type)


@pytest.mark.parametrize(("fact_class", "result_type"), FACTS)
@settings(max_examples=100, suppress_health_check=[HealthCheck.too_slow])
@given(marker=st.sampled_from(MARKERS), document=st.one_of(json_values, shaped_json))
def test_process_never_raises_on_json(fact_class, result_type, marker, document):
    result = fact_class().process([marker, json.dumps(document)])
    assert isinstance(result, result_type)
    # pyinfra's CLI serialises results through to_json(); that must work for any result too.
    json.dumps(result, default=lambda value: value.to_json())


def test_nft_ruleset_that_is_not_json_is_unreadable_with_a_reason():
    broken = NftRuleset().process(['{"nftables": [', "Error: cache initialization failed"])
    assert isinstance(broken, RulesetUnreadable) and "no JSON" in broken.reason
    not_a_ruleset = NftRuleset().process(["[1, 2]"])
    assert isinstance(not_a_ruleset, RulesetUnreadable) and "without an nftables list" in not_a_ruleset.reason
