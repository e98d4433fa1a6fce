"""Every fact's process() must turn any output into its typed result, never raise."""

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from facts.files import DirectoryEntries, FileHasLine, FirstLineHas, JsonKeyEquals, Paths
from facts.firewall import IPTABLES_SAVE_FAMILIES, NFT, NftRuleset, RulesetUnreadable
from facts.firewall_backends import FirewalldZonePorts, NftTableLoaded, UfwState, UfwStatus
from facts.gpu import SOURCES as GPU_SOURCES
from facts.gpu import GpuInventory, GpuVram
from facts.network import NetworkInterfaces
from facts.ollama import NO_FETCHER, OllamaState, OllamaStatus
from facts.sections import MARKER, encode
from facts.sockets import ListeningSockets
from facts.system import CommandsOnPath, CpuCount, OnlineCpus
from facts.tailscale import TAILSCALE, TailscaleNode, TailscaleServe, TailscaleServeStatus, TailscaleStatus
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
# Every key a multi-command fact frames its parts under (facts/sections.py).
SECTION_KEYS = [*GPU_SOURCES, "version", "tags", "ps", NO_FETCHER, TAILSCALE, NFT, *IPTABLES_SAVE_FAMILIES]
exit_statuses = st.sampled_from([0, 1, 7, 127, 255])
framed_lines = st.one_of(
    st.builds(encode, st.sampled_from(SECTION_KEYS), exit_statuses, st.binary(max_size=40)),
    st.builds("{} {} {}".format, st.just(MARKER), st.sampled_from(SECTION_KEYS), st.text(max_size=12)),  # damaged
)

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
lines = st.lists(st.one_of(st.text(max_size=40), framed_lines), max_size=12)


@pytest.mark.parametrize(("fact_class", "result_type"), FACTS + SECTION_FACTS)
@settings(max_examples=100, suppress_health_check=[HealthCheck.too_slow])
@given(output=lines)
def test_process_never_raises_on_text(fact_class, result_type, output):
    assert isinstance(fact_class().process(output), result_type)


@pytest.mark.parametrize(("fact_class", "result_type"), FACTS)
@settings(max_examples=100, suppress_health_check=[HealthCheck.too_slow])
@given(key=st.sampled_from(SECTION_KEYS), status=exit_statuses, document=st.one_of(json_values, shaped_json))
def test_process_never_raises_on_json(fact_class, result_type, key, status, document):
    result = fact_class().process([encode(key, status, json.dumps(document).encode())])
    assert isinstance(result, result_type)
    # pyinfra's CLI serialises results through to_json(); that must work for any result too.
    json.dumps(result, default=lambda value: value.to_json())


def test_nft_ruleset_that_is_not_json_is_unreadable_with_a_reason():
    broken = NftRuleset().process([encode(NFT, 0, b'{"nftables": [\nError: cache initialization failed\n')])
    assert isinstance(broken, RulesetUnreadable) and "no JSON" in broken.reason
    not_a_ruleset = NftRuleset().process([encode(NFT, 0, b"[1, 2]\n")])
    assert isinstance(not_a_ruleset, RulesetUnreadable) and "without an nftables list" in not_a_ruleset.reason


def test_nft_ruleset_that_failed_or_is_missing_is_unreadable_with_a_reason():
    failed = NftRuleset().process([encode(NFT, 1, b"")])
    assert failed == RulesetUnreadable("nft -j list ruleset failed (exit status 1)")
    unframed = NftRuleset().process(["Error: Could not process rule: Operation not permitted"])
    assert unframed == RulesetUnreadable("nft -j list ruleset: no section nft in the output")
    cut = NftRuleset().process([encode(NFT, 0, b'{"nftables": []}')[:-3]])
    assert isinstance(cut, RulesetUnreadable) and "base64" in cut.reason
