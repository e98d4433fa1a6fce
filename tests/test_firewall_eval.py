"""checks/nft_eval.py (and the fact it reads, facts/firewall.py) against what the kernel really does.

Every scenario in tests/fixtures/nft/ has its source (.nft, or .iptables for
iptables-nft), the JSON ruleset nft printed for it, and the kernel's answer to real TCP
connections from peers behind enp1s0, tailscale0 and wan0 and from loopback
(<name>.kernel.json, written by tests/fixtures/nft/netns_lab.py). The pure tests replay
those captures; the netns tests (root only) redo the whole thing live.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from checks.nft_eval import (
    Packet,
    Ruleset,
    TableRef,
    admitted_interfaces,
    evaluate,
    tables,
    xt_match,
)
from facts.firewall import NFT, NftRuleset
from facts.sections import encode
from tests.fixtures.nft import netns_lab

FIXTURES = Path(__file__).parent / "fixtures" / "nft"
SCENARIOS = sorted(path.name.removesuffix(".kernel.json") for path in FIXTURES.glob("*.kernel.json"))
INTERFACES = ("lo", "enp1s0", "tailscale0", "wan0")



def ruleset(name: str) -> dict:
    return json.loads((FIXTURES / f"{name}.json").read_text())


def kernel_probes(name: str) -> list[dict]:
    return json.loads((FIXTURES / f"{name}.kernel.json").read_text())["probes"]


def family_of(probe: dict) -> str:
    return "ip6" if ":" in probe["daddr"] else "ip"


def packet_of(probe: dict) -> Packet:
    return Packet(
        probe["iifname"], probe["port"], family=family_of(probe), daddr=probe["daddr"], saddr=probe["saddr"]
    )


# Where the evaluator must admit it cannot tell, and why. Everywhere else it must be certain.
def expected_uncertain(scenario: str, probe: dict) -> bool:
    ipv4 = family_of(probe) == "ip"
    if scenario == "ufw_style":
        # xt conntrack matches (ESTABLISHED accept, INVALID drop) come before everything but lo;
        # the iptables (ip family) table does not see IPv6 at all.
        return ipv4 and probe["iifname"] != "lo"
    if scenario == "unknown_expr":
        # `ip ttl` and `meta mark` are not modelled; `tcp dport 9999 ip ttl 1` is decided by
        # the port, and `ip ttl` never matches an IPv6 packet.
        return (ipv4 and probe["port"] == 4000 and probe["iifname"] == "wan0") or (
            probe["port"] == 11434 and probe["iifname"] != "lo"
        )
    if scenario == "other_families_hooks":
        # nft 1.0.6 does not print the netdev ingress chain's device; for IPv6 the ip6
        # table drops 4000 anyway, so both ways agree.
        return ipv4 and probe["port"] == 4000
    return False


# Where the guess (unknown rules assumed not to apply) is known to be wrong.
def guess_may_be_wrong(scenario: str, probe: dict) -> bool:
    if scenario == "unknown_expr":
        return probe["port"] == 4000  # `ip ttl != 0 drop` does apply
    if scenario == "other_families_hooks":
        return probe["iifname"] == "wan0"  # the ingress chain is bound to wan0
    return False


def assert_matches_kernel(scenario: str, parsed: Ruleset, probes: list[dict]) -> None:
    mismatches = []
    for probe in probes:
        decision = evaluate(parsed, packet_of(probe))
        where = f"{probe['iifname']} -> {probe['daddr']}:{probe['port']} (kernel: {probe['detail']})"
        if decision.uncertain != expected_uncertain(scenario, probe):
            mismatches.append(f"{where}: uncertain={decision.uncertain}: {decision.explain()}")
        elif decision.accepted is not None and decision.accepted != probe["admitted"]:
            mismatches.append(f"{where}: evaluator says {decision.explain()}")
        elif not guess_may_be_wrong(scenario, probe) and decision.guess.accepted != probe["admitted"]:
            mismatches.append(f"{where}: guess wrong: {decision.explain()}")
    assert not mismatches, "\n".join(mismatches)


def test_every_scenario_was_captured():
    sources = {path.stem for path in netns_lab.scenario_sources()}
    assert sources == set(SCENARIOS)
    assert len(SCENARIOS) >= 15


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_evaluator_agrees_with_kernel(scenario):
    assert_matches_kernel(scenario, Ruleset.parse(ruleset(scenario)), kernel_probes(scenario))


# -- the API on hand-written router scenarios (the deployed table: test_firewall_deployed_table.py) --


@pytest.mark.parametrize("scenario", ["llm_router", "llm_router_named_set"])
def test_router_scenario_opens_router_on_three_interfaces_and_ollama_on_loopback(scenario):
    router = admitted_interfaces(ruleset(scenario), 4000, INTERFACES)
    ollama = admitted_interfaces(ruleset(scenario), 11434, INTERFACES)
    ssh = admitted_interfaces(ruleset(scenario), 22, INTERFACES)

    assert (router.accepted, router.dropped, router.uncertain) == (
        ["lo", "enp1s0", "tailscale0"],
        ["wan0"],
        [],
    )
    assert ollama.accepted == ["lo"]
    assert ssh.accepted == list(INTERFACES)
    assert "tcp dport 4000" in router.decisions["wan0"].decided_by
    assert "llm_router input" in router.decisions["wan0"].decided_by


def test_router_scenario_drops_lan_address_reached_through_wan():
    routed = admitted_interfaces(
        ruleset("llm_router"), 4000, ["wan0"], daddr="192.168.50.1", saddr="203.0.113.2"
    )
    assert routed.dropped == ["wan0"]


def test_inet_table_covers_ipv6_but_an_ip_table_leaves_it_open():
    ours = admitted_interfaces(ruleset("llm_router"), 4000, INTERFACES, family="ip6")
    assert ours.accepted == ["lo", "enp1s0", "tailscale0"]
    naive_v6 = admitted_interfaces(
        ruleset("daddr_only"), 11434, INTERFACES, family="ip6", daddr="2001:db8:113::1"
    )
    assert naive_v6.accepted == list(INTERFACES)
    assert naive_v6.decisions["wan0"].decided_by == "no base chain on the input path"


def test_address_based_rules_let_lan_address_through_wan():
    naive = ruleset("daddr_only")
    assert admitted_interfaces(naive, 4000, ["wan0"], daddr="192.168.50.1").accepted == ["wan0"]
    assert admitted_interfaces(naive, 4000, ["wan0"], daddr="203.0.113.1").dropped == ["wan0"]
    unknown_address = admitted_interfaces(naive, 4000, ["wan0"])
    assert unknown_address.uncertain == ["wan0"]
    assert "ip daddr 192.168.50.0/24" in " ".join(unknown_address.decisions["wan0"].unevaluated)


def test_accept_in_our_table_does_not_override_a_drop_policy_elsewhere():
    admission = admitted_interfaces(ruleset("distro_drop_plus_router"), 4000, INTERFACES)
    assert admission.accepted == ["lo"]
    assert admission.decisions["enp1s0"].decided_by == "inet filter input: policy drop"
    assert admission.decisions["wan0"].decided_by.startswith("inet llm_router input rule")


def test_second_base_chain_drop_is_final_and_reject_counts_as_drop():
    chains = ruleset("two_base_chains")
    assert admitted_interfaces(chains, 4000, INTERFACES).dropped == ["wan0"]
    ollama = admitted_interfaces(chains, 11434, INTERFACES)
    assert ollama.dropped == ["tailscale0"]
    assert "reject" in ollama.decisions["tailscale0"].decided_by


def test_goto_return_lands_on_the_base_chain_policy_not_the_next_rule():
    decision = admitted_interfaces(ruleset("jump_goto"), 11434, ["tailscale0"]).decisions["tailscale0"]
    assert decision.accepted is False
    assert decision.decided_by == "inet jg input: policy drop"
    assert any("goto ollama" in step or "policy drop" in step for step in decision.guess.trace)


def test_jump_return_continues_with_the_next_rule():
    decision = admitted_interfaces(ruleset("jump_goto"), 4000, ["wan0"]).decisions["wan0"]
    assert decision.accepted is True
    assert "iifname wan0 accept" in decision.decided_by


def test_ip6_only_table_applies_to_ipv6_packets_only():
    rules = ruleset("other_families_hooks")
    ipv4 = admitted_interfaces(rules, 4000, ["enp1s0"], family="ip")
    ipv6 = admitted_interfaces(rules, 4000, ["enp1s0"], family="ip6")
    assert ipv4.decisions["enp1s0"].guess.accepted is True
    assert ipv6.decisions["enp1s0"].guess.accepted is False
    assert "ip6 v6only input" in ipv6.decisions["enp1s0"].guess.decided_by


def test_unknown_expression_is_reported_not_guessed_away():
    decision = admitted_interfaces(ruleset("unknown_expr"), 4000, ["wan0"]).decisions["wan0"]
    assert decision.accepted is None
    assert decision.unevaluated == (
        "inet odd input rule #3: tcp dport 4000 iifname wan0 ip ttl != 0 drop [not evaluated: ip ttl != 0]",
    )
    assert "uncertain" in decision.explain()
    # A rule whose known part already fails is not reported: `tcp dport 9999 ip ttl 1 drop`.
    assert not any("9999" in rule for rule in decision.unevaluated)


def test_empty_and_debian_default_rulesets_admit_everything():
    for scenario in ("empty", "debian_default"):
        assert admitted_interfaces(ruleset(scenario), 4000, INTERFACES).accepted == list(INTERFACES)
    assert admitted_interfaces(ruleset("empty"), 4000, ["wan0"]).decisions["wan0"].decided_by == (
        "no base chain on the input path"
    )


def test_tables_lists_family_and_name():
    assert tables(ruleset("other_families_hooks")) == [
        TableRef("ip6", "v6only"),
        TableRef("ip", "early"),
        TableRef("netdev", "edge"),
    ]
    assert tables(ruleset("empty")) == []


def test_explain_names_the_deciding_rule_per_interface():
    text = admitted_interfaces(ruleset("firewalld_style"), 4000, INTERFACES).explain()
    lines = text.splitlines()
    assert lines[0] == "tcp/4000 on lo: accepted (inet firewalld filter_INPUT rule #13: iifname lo accept)"
    assert "filter_IN_home_allow" in lines[1]
    assert "filter_IN_trusted" in lines[2]
    assert "dropped" in lines[3] and "reject" in lines[3]


# -- small synthetic rulesets for what the captures do not pin down ----------------------


def single_chain(*rules: list[dict], policy: str = "accept") -> dict:
    chain = {"family": "inet", "table": "t", "name": "input", "type": "filter", "hook": "input", "prio": 0}
    objects: list[dict] = [{"table": {"family": "inet", "name": "t"}}, {"chain": {**chain, "policy": policy}}]
    for handle, expr in enumerate(rules, start=2):
        objects.append(
            {"rule": {"family": "inet", "table": "t", "chain": "input", "handle": handle, "expr": expr}}
        )
    return {"nftables": objects}


def iifname_is(value, op="=="):
    return {"match": {"op": op, "left": {"meta": {"key": "iifname"}}, "right": value}}


def test_unknown_statement_could_end_the_chain_either_way():
    rules = single_chain([{"queue": {"num": 1}}])
    decision = admitted_interfaces(rules, 4000, ["wan0"]).decisions["wan0"]
    assert decision.accepted is None
    assert {outcome.accepted for outcome in decision.outcomes} == {True, False}


def test_unresolvable_iif_index_is_unknown():
    rules = single_chain(
        [{"match": {"op": "==", "left": {"meta": {"key": "iif"}}, "right": 7}}, {"drop": None}]
    )
    assert admitted_interfaces(rules, 4000, ["wan0"]).uncertain == ["wan0"]


def test_udp_only_rule_does_not_touch_tcp():
    udp_drop = {
        "match": {"op": "!=", "left": {"payload": {"protocol": "udp", "field": "dport"}}, "right": 53}
    }
    assert admitted_interfaces(single_chain([udp_drop, {"drop": None}]), 4000, ["wan0"]).accepted == ["wan0"]


@given(st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789.-_", min_size=1, max_size=15))
def test_router_port_is_open_exactly_on_the_named_interfaces(name):
    """`iifname != { ... } drop` is an exact match: lo0, enp1s0.10, tailscale01 stay out."""
    decision = admitted_interfaces(ruleset("llm_router"), 4000, [name]).decisions[name]
    assert decision.accepted is (name in {"lo", "tailscale0", "enp1s0"})


@given(st.sampled_from(["tail", "tailscale0", "tailx", "tai", "enp1s0", "enp", "en", "wlan0", "wan0", "lo"]))
def test_wildcard_is_a_prefix_match(name):
    decision = admitted_interfaces(ruleset("wildcard_iifname"), 4000, [name]).decisions[name]
    assert decision.accepted is (name == "lo" or name.startswith(("tail", "enp", "wlan")))


# -- the pyinfra fact ------------------------------------------------------------------------



def test_fact_output_feeds_the_evaluator():
    fact = NftRuleset()
    parsed = fact.process([encode(NFT, 0, json.dumps(ruleset("llm_router")).encode())])
    assert admitted_interfaces(parsed, 11434, INTERFACES).accepted == ["lo"]


# -- live: the same scenarios in network namespaces ----------------------------------------

LAB_UNAVAILABLE = netns_lab.lab_available()


@pytest.fixture(scope="module")
def live_lab():
    with netns_lab.netns_lab() as lab:
        yield lab


@pytest.mark.skipif(LAB_UNAVAILABLE is not None, reason=f"netns lab: {LAB_UNAVAILABLE}")
@pytest.mark.parametrize("source", netns_lab.scenario_sources(), ids=lambda path: path.stem)
def test_evaluator_agrees_with_live_kernel(live_lab, source):
    live_lab.load(source)
    live_ruleset = live_lab.ruleset_json()
    probes = [vars(result) for result in live_lab.probe(netns_lab.probes_for())]
    assert_matches_kernel(source.stem, Ruleset.parse(live_ruleset), probes)


# -- rulesets captured on the lab's firewalld and ufw hosts (tests/test_lab_firewalls.py) --------------

LAB_RULESETS = Path(__file__).parent / "fixtures" / "lab_rulesets"


def lab_ruleset(name: str) -> dict:
    """`nft -j list ruleset` of p620 after the deploy, on a host running `name` (firewalld 1.3.3, ufw 0.36.2)."""
    return json.loads((LAB_RULESETS / f"{name}.json").read_text())


@pytest.mark.parametrize("family", ["ip", "ip6"])
def test_firewalld_host_is_judged_with_certainty(family):
    """firewalld's rpfilter (`meta nfproto ipv6 fib saddr . mark . iif oif missing drop`) and its
    `icmpv6 type` rules no longer make every IPv6 answer uncertain; the active probes agreed."""
    rules = lab_ruleset("firewalld")
    router = admitted_interfaces(rules, 4000, INTERFACES, family=family)
    assert router.uncertain == []
    assert {name for name, d in router.decisions.items() if d.accepted} == {"lo", "enp1s0", "tailscale0"}
    ollama = admitted_interfaces(rules, 11434, INTERFACES, family=family)
    assert ollama.uncertain == []
    assert {name for name, d in ollama.decisions.items() if d.accepted} == {"lo"}


def test_reverse_path_check_passes_a_peer_packet_but_other_fib_lookups_stay_unknown():
    def chain_with(expr: list) -> dict:
        return {"nftables": [
            {"table": {"family": "inet", "name": "t", "handle": 1}},
            {"chain": {"family": "inet", "table": "t", "name": "in", "handle": 1, "type": "filter",
                       "hook": "prerouting", "prio": -300, "policy": "accept"}},
            {"rule": {"family": "inet", "table": "t", "chain": "in", "handle": 2, "expr": expr}},
        ]}

    missing = {"match": {"op": "==", "left": {"fib": {"result": "oif", "flags": ["saddr", "iif"]}}, "right": False}}
    assert evaluate(chain_with([missing, {"drop": None}]), Packet("enp1s0", 4000)).accepted is True
    found = {"match": {"op": "!=", "left": {"fib": {"result": "oif", "flags": ["saddr", "iif"]}}, "right": False}}
    assert evaluate(chain_with([found, {"drop": None}]), Packet("enp1s0", 4000)).accepted is False
    other = {"match": {"op": "==", "left": {"fib": {"result": "oif", "flags": ["daddr"]}}, "right": "eth0"}}
    assert evaluate(chain_with([other, {"drop": None}]), Packet("enp1s0", 4000)).accepted is None
    icmp = {"match": {"op": "==", "left": {"payload": {"protocol": "icmpv6", "field": "type"}}, "right": "nd-redirect"}}
    assert evaluate(chain_with([icmp, {"drop": None}]), Packet("enp1s0", 4000, family="ip6")).accepted is True
    assert evaluate(chain_with([icmp, {"drop": None}]), Packet("enp1s0", 4000, proto="icmpv6", family="ip6")
                    ).accepted is None


@pytest.mark.parametrize("family", ["ip", "ip6"])
def test_ufw_host_is_judged_with_certainty_from_iptables_nft_save_options(family):
    """ufw on iptables-nft: `xt match conntrack/addrtype/comment/rt` are read from iptables-nft-save
    (which the fact captures with the JSON); the active probes agreed with every answer."""
    rules = lab_ruleset("ufw")
    interfaces = (*INTERFACES, "other-if")
    admitted = {}
    for port in (4000, 11434, 22):
        admission = admitted_interfaces(rules, port, interfaces, family=family)
        assert admission.uncertain == [], (port, admission.uncertain)
        admitted[port] = {name for name, d in admission.decisions.items() if d.accepted}
    assert admitted == {4000: {"lo", "enp1s0", "tailscale0"}, 11434: {"lo"}, 22: set(interfaces)}


def test_without_iptables_nft_save_the_ufw_xt_matches_stay_uncertain():
    rules = {key: value for key, value in lab_ruleset("ufw").items() if key != "iptables_nft_save"}
    assert admitted_interfaces(rules, 4000, ("enp1s0",)).uncertain == ["enp1s0"]


@pytest.mark.parametrize("argv,expected", [
    (("-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED", "-j", "ACCEPT"), False),
    (("-m", "conntrack", "--ctstate", "INVALID", "-j", "DROP"), False),
    (("-m", "conntrack", "--ctstate", "NEW", "-j", "ACCEPT"), True),
    (("-m", "conntrack", "!", "--ctstate", "NEW", "-j", "DROP"), False),
    (("-m", "conntrack", "--ctstatus", "DNAT", "-j", "ACCEPT"), None),
    (("-m", "addrtype", "--dst-type", "LOCAL", "-j", "RETURN"), True),
    (("-m", "addrtype", "--dst-type", "BROADCAST", "-j", "RETURN"), False),
    (("-m", "addrtype", "--src-type", "LOCAL", "-j", "RETURN"), None),
    (("-p", "tcp", "--dport", "22", "-m", "comment", "--comment", "'dapp_OpenSSH'", "-j", "ACCEPT"), True),
    (("-m", "rt", "--rt-type", "0", "-j", "DROP"), False),
    (("-m", "recent", "--update", "-j", "DROP"), None),
])
def test_xt_matches_from_their_iptables_options(argv, expected):
    name = argv[argv.index("-m") + 1]
    assert xt_match(name, argv, Packet("enp1s0", 4000)) is expected
    assert xt_match(name, None, Packet("enp1s0", 4000)) is None
