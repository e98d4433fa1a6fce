"""Which interfaces may reach a TCP port: an evaluator for ``nft -j list ruleset``.

The model, kept deliberately small:

* A :class:`Packet` is the first packet (SYN) of a new connection arriving on interface
  ``iifname`` for a local address: conntrack state ``new``, not NATed, ``fib daddr type local``.
* It crosses every *base chain* on its way in, ordered by hook (``ingress`` then
  ``prerouting`` then ``input``) and priority, keeping only the chains whose family sees
  it (``inet`` always, ``ip``/``ip6`` by address family, ``netdev`` at ingress).
* In each base chain the rules run in order. ``accept`` ends that base chain only (the
  packet goes on to the next one); ``drop``/``reject`` are final; ``jump`` comes back
  to the next rule when the called chain returns or runs out; ``goto`` comes back to
  the caller of the current chain; running out of a base chain applies its policy.
* A match the evaluator does not understand is *unknown*, never false: the rule is
  followed both ways (matched / not matched), and an unknown statement is followed as
  continue, accept and drop. The :class:`Decision` lists every possible :class:`Outcome`;
  it is certain only when they all agree, otherwise ``accepted is None`` and
  ``unevaluated`` names the rules that made it so.

Supported expressions are listed in :data:`SUPPORTED_EXPRESSIONS`.
"""

from __future__ import annotations

import ipaddress
import json
import shlex
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal, TypeVar

from pyinfra.api import FactBase
from typing_extensions import override

from facts._util import JsonDataclass
from facts.sections import framed, missing, split_sections

Json = Any
Tri = bool | None  # three-valued logic: None means "cannot tell"
_T = TypeVar("_T")

SUPPORTED_EXPRESSIONS = (
    "meta iifname / iif (names, sets, named sets @x, wildcards eth*)",
    "meta l4proto, meta nfproto, meta protocol, meta pkttype",
    "ip protocol, ip6 nexthdr, ip saddr/daddr, ip6 saddr/daddr (addresses, prefixes, ranges, sets)",
    "tcp/udp/th dport (values, ranges, sets, <, >, <=, >=)",
    "ct state (a new connection), ct direction, ct status dnat/snat (never set: no NAT modelled)",
    "fib daddr type (local on the way in); fib saddr . iif oif missing (reverse path: never missing)",
    "icmp/icmpv6/igmp/udplite/dccp/esp/ah/comp header fields (absent from a tcp packet)",
    "operators ==, !=, in, <, >, <=, >=",
    "verdicts accept, drop, reject, jump, goto, return, continue; vmap (inline and named maps)",
    "ignored statements: counter, log, mangle (meta/ct mark set), set updates, notrack",
    "iptables-nft xt: targets LOG/NFLOG/MARK/CONNMARK/TRACE ignored, REJECT as reject",
    ("iptables-nft xt matches, from iptables-nft-save's options: conntrack --ctstate, addrtype --dst-type, "
     "comment, rt (no routing header)"),
)

HOOK_ORDER = ("ingress", "prerouting", "input")
MAX_CALL_DEPTH = 32  # the kernel refuses rulesets deeper than 16 jumps
MAX_LIVE_PATHS = 32

_PROTOCOL_NUMBERS = {"icmp": 1, "igmp": 2, "tcp": 6, "udp": 17, "ipv6-icmp": 58, "icmpv6": 58, "sctp": 132}
_IGNORED_STATEMENTS = {"counter", "log", "mangle", "set", "notrack", "flow", "comment"}
_NON_TERMINAL_XT_TARGETS = {"LOG", "NFLOG", "ULOG", "MARK", "CONNMARK", "CLASSIFY", "TRACE", "AUDIT"}
_VERDICTS = {"accept", "drop", "reject", "jump", "goto", "return", "continue"}
# Headers nft matches only in packets of their own protocol (tcp/udp/sctp are handled with dport).
_OTHER_L4_HEADERS = {"icmp", "icmpv6", "igmp", "udplite", "dccp", "esp", "ah", "comp"}


# --------------------------------------------------------------------------------------
# pyinfra fact
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RulesetUnreadable(JsonDataclass):
    """What nft printed was not a ruleset: why, for the check to say."""

    reason: str


class NftRuleset(FactBase[dict | RulesetUnreadable | None]):
    """The whole nftables ruleset as ``nft -j`` prints it (libnftables JSON schema).

    Returns ``None`` when ``nft`` prints nothing (no ruleset could be read), and
    ``RulesetUnreadable`` when it prints something that is not a JSON ruleset.

    .. code:: python

        {"nftables": [{"metainfo": {...}}, {"table": {...}}, {"chain": {...}}, {"rule": {...}}]}
    """

    @override
    def requires_command(self, *args, **kwargs) -> str:
        return "nft"

    @override
    def command(self) -> str:
        # nft -j prints iptables-nft's xt matches by name only; iptables-nft-save prints their options.
        saves = " ".join(f"{framed(tool, tool)};" for tool in IPTABLES_SAVE_FAMILIES)
        return (f"{framed(NFT, 'nft -j list ruleset')}; "
                f"if command -v iptables-nft-save >/dev/null; then {saves} fi")

    @override
    def process(self, output: list[str]) -> dict | RulesetUnreadable | None:
        sections = split_sections(output)
        nft = sections.get(NFT) or missing(NFT)
        if nft.status is None:
            return RulesetUnreadable(f"nft -j list ruleset: {nft.problem}") if output else None
        text = nft.text.strip()
        if not nft.ok:
            printed = f": {text.splitlines()[0][:80]!r}" if text else ""
            return RulesetUnreadable(f"nft -j list ruleset failed (exit status {nft.status}){printed}")
        if not text:
            return None
        try:
            ruleset = json.loads(text)
        except ValueError as error:
            return RulesetUnreadable(f"nft -j printed no JSON ({error}): {text.splitlines()[0][:80]!r}")
        if not isinstance(ruleset, dict) or not isinstance(ruleset.get("nftables"), list):
            return RulesetUnreadable(f"nft -j printed JSON without an nftables list: {text[:80]!r}")
        saves = {family: sections[tool].text for tool, family in IPTABLES_SAVE_FAMILIES.items()
                 if tool in sections and sections[tool].status is not None}
        if saves:
            ruleset[IPTABLES_SAVE_KEY] = saves
        return ruleset


NFT = "nft"  # the section holding `nft -j list ruleset`
# The sections holding iptables-nft-save's text, and the nft family each one describes.
IPTABLES_SAVE_FAMILIES = {"iptables-nft-save": "ip", "ip6tables-nft-save": "ip6"}
# Extra key in the fact's dict (beside "nftables"): iptables-nft-save text per family, if any.
IPTABLES_SAVE_KEY = "iptables_nft_save"


def iptables_rules(save_text: str) -> dict[tuple[str, str], list[tuple[str, ...]]]:
    """`-A CHAIN ...` lines of iptables-save output as {(table, chain): [argv after the chain name]}."""
    rules: dict[tuple[str, str], list[tuple[str, ...]]] = {}
    table = ""
    for line in save_text.splitlines():
        if line.startswith("*"):
            table = line[1:].strip()
        elif line.startswith("-A "):
            try:
                words = shlex.split(line)
            except ValueError:
                continue
            rules.setdefault((table, words[1]), []).append(tuple(words[2:]))
    return rules


def with_xt_options(rules: dict[tuple[str, str, str], list[Rule]], saves: Mapping[str, str]
                    ) -> dict[tuple[str, str, str], list[Rule]]:
    """Attach iptables-nft-save's options to the rules of each iptables-nft chain.

    Both list a chain's rules in the kernel's order; a chain whose rule counts differ is left alone."""
    result = dict(rules)
    for family, text in saves.items():
        for (table, chain), options in iptables_rules(text).items():
            key = (family, table, chain)
            nft_rules = rules.get(key, [])
            if len(nft_rules) == len(options):
                result[key] = [replace(rule, xt_options=argv) for rule, argv in zip(nft_rules, options)]
    return result


# --------------------------------------------------------------------------------------
# The ruleset, indexed
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TableRef:
    family: str
    name: str

    def __str__(self) -> str:
        return f"{self.family} {self.name}"


@dataclass(frozen=True)
class Rule:
    family: str
    table: str
    chain: str
    handle: int | None
    exprs: tuple[Json, ...]
    comment: str | None = None
    # The iptables-nft-save argv of this rule (`-p tcp -m conntrack --ctstate NEW -j ACCEPT`), if known.
    xt_options: tuple[str, ...] | None = None

    def __str__(self) -> str:
        text = " ".join(describe_expr(expr) for expr in self.exprs)
        if self.comment:
            text += f' comment "{self.comment}"'
        return f"{self.family} {self.table} {self.chain} rule #{self.handle}: {text}"


@dataclass(frozen=True)
class Chain:
    family: str
    table: str
    name: str
    hook: str | None = None
    priority: int = 0
    policy: str = "accept"
    devices: tuple[str, ...] | None = None  # ingress chains; None when nft did not print them
    rules: tuple[Rule, ...] = ()

    @property
    def is_base(self) -> bool:
        return self.hook is not None

    def __str__(self) -> str:
        return f"{self.family} {self.table} {self.name}"


@dataclass(frozen=True)
class Ruleset:
    chains: Mapping[tuple[str, str, str], Chain]
    sets: Mapping[tuple[str, str, str], tuple[Json, ...]]  # sets and maps: their elements
    tables: tuple[TableRef, ...]

    @classmethod
    def parse(cls, ruleset: Mapping[str, Json]) -> Ruleset:
        objects = [obj for obj in ruleset.get("nftables", []) if isinstance(obj, dict)]
        tables: list[TableRef] = []
        chains: dict[tuple[str, str, str], dict[str, Json]] = {}
        rules: dict[tuple[str, str, str], list[Rule]] = {}
        sets: dict[tuple[str, str, str], tuple[Json, ...]] = {}
        for obj in objects:
            kind, body = next(iter(obj.items()))
            if kind == "table":
                tables.append(TableRef(body["family"], body["name"]))
            elif kind == "chain":
                chains[(body["family"], body["table"], body["name"])] = body
            elif kind == "rule":
                key = (body["family"], body["table"], body["chain"])
                rules.setdefault(key, []).append(_parse_rule(body))
            elif kind in ("set", "map"):
                sets[(body["family"], body["table"], body["name"])] = tuple(body.get("elem", ()))
        saves = ruleset.get(IPTABLES_SAVE_KEY)
        if isinstance(saves, Mapping):
            rules = with_xt_options(rules, saves)
        return cls(
            chains={key: _parse_chain(body, rules.get(key, [])) for key, body in chains.items()},
            sets=sets,
            tables=tuple(tables),
        )

    def chain(self, family: str, table: str, name: str) -> Chain | None:
        return self.chains.get((family, table, name))

    def base_chains_for(self, packet: Packet) -> list[Chain]:
        """The base chains the packet crosses, in the order the kernel runs them."""
        on_path = [chain for chain in self.chains.values() if _sees_packet(chain, packet)]
        return sorted(on_path, key=lambda chain: (HOOK_ORDER.index(chain.hook or ""), chain.priority))


def _parse_rule(body: Mapping[str, Json]) -> Rule:
    return Rule(
        family=body["family"],
        table=body["table"],
        chain=body["chain"],
        handle=body.get("handle"),
        exprs=tuple(body.get("expr", ())),
        comment=body.get("comment"),
    )


def _parse_chain(body: Mapping[str, Json], rules: list[Rule]) -> Chain:
    devices = body.get("dev", body.get("devices"))
    if isinstance(devices, str):
        devices = [devices]
    return Chain(
        family=body["family"],
        table=body["table"],
        name=body["name"],
        hook=body.get("hook"),
        priority=int(body.get("prio", 0)),
        policy=body.get("policy", "accept"),
        devices=tuple(devices) if devices is not None else None,
        rules=tuple(rules),
    )


def _sees_packet(chain: Chain, packet: Packet) -> bool:
    if chain.hook not in HOOK_ORDER:
        return False
    if chain.hook == "ingress":
        return chain.family in ("netdev", "inet") and (
            chain.devices is None or packet.iifname in chain.devices
        )
    return chain.family == "inet" or chain.family == packet.family


def tables(ruleset: Mapping[str, Json]) -> list[TableRef]:
    """The tables of a ruleset, in listing order."""
    return list(Ruleset.parse(ruleset).tables)


# --------------------------------------------------------------------------------------
# Packet, outcomes, decisions
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Packet:
    """The first packet of a new connection to a local address."""

    iifname: str
    dport: int
    proto: str = "tcp"
    family: Literal["ip", "ip6"] = "ip"
    daddr: str | None = None  # None: any local address (matches on it are unknown)
    saddr: str | None = None


ExitKind = Literal["accept", "drop", "return"]


@dataclass(frozen=True)
class Assumption:
    """A rule the evaluator could not evaluate, and which way this path assumed it went."""

    rule: str
    applied: bool  # False: assumed not to match (the packet went on past it)

    def __str__(self) -> str:
        return f"{self.rule} (assumed {'to apply' if self.applied else 'not to apply'})"


@dataclass(frozen=True)
class Exit:
    """One way out of a chain. ``return`` means: back to the caller (or the policy)."""

    kind: ExitKind
    decided_by: str
    assumptions: tuple[Assumption, ...] = ()


@dataclass(frozen=True)
class Outcome:
    """One possible fate of the packet, with the base-chain steps that led to it."""

    accepted: bool
    trace: tuple[str, ...]
    assumptions: tuple[Assumption, ...] = ()

    @property
    def decided_by(self) -> str:
        return self.trace[-1] if self.trace else "no base chain on the input path"


@dataclass(frozen=True)
class Decision:
    packet: Packet
    outcomes: tuple[Outcome, ...]

    @property
    def accepted(self) -> bool | None:
        """True/False when every possible outcome agrees, None when it depends on unknowns."""
        fates = {outcome.accepted for outcome in self.outcomes}
        return fates.pop() if len(fates) == 1 else None

    @property
    def uncertain(self) -> bool:
        return self.accepted is None

    @property
    def unevaluated(self) -> tuple[str, ...]:
        """Rules the evaluator could not evaluate on this packet's path."""
        return _unique(a.rule for outcome in self.outcomes for a in outcome.assumptions)

    @property
    def guess(self) -> Outcome:
        """The outcome if every rule not evaluated did not apply (e.g. iptables-nft's
        ``-m conntrack --ctstate ESTABLISHED``, which a new connection never matches).
        Equal to the only outcome when the decision is certain; a hint, not a proof."""
        return min(self.outcomes, key=lambda outcome: sum(a.applied for a in outcome.assumptions))

    @property
    def decided_by(self) -> str:
        """The rule or policy that settled it (the guessed path when uncertain)."""
        return self.guess.decided_by

    def explain(self) -> str:
        if self.accepted is None:
            accept = "; ".join(o.decided_by for o in self.outcomes if o.accepted)
            drop = "; ".join(o.decided_by for o in self.outcomes if not o.accepted)
            guess = "accepted" if self.guess.accepted else "dropped"
            return (
                f"uncertain (probably {guess}): accepted via [{accept}] or dropped by [{drop}] "
                f"depending on rules not evaluated: {'; '.join(self.unevaluated)}"
            )
        if self.accepted:  # every base chain let it through: name each step
            return f"accepted ({' -> '.join(self.guess.trace) or self.guess.decided_by})"
        return f"dropped ({self.decided_by})"


@dataclass(frozen=True)
class Admission:
    """Per-interface decisions for one port."""

    port: int
    proto: str
    decisions: Mapping[str, Decision] = field(default_factory=dict)

    @property
    def accepted(self) -> list[str]:
        return [name for name, decision in self.decisions.items() if decision.accepted is True]

    @property
    def dropped(self) -> list[str]:
        return [name for name, decision in self.decisions.items() if decision.accepted is False]

    @property
    def uncertain(self) -> list[str]:
        return [name for name, decision in self.decisions.items() if decision.accepted is None]

    def explain(self) -> str:
        return "\n".join(
            f"{self.proto}/{self.port} on {name}: {decision.explain()}"
            for name, decision in self.decisions.items()
        )


def admitted_interfaces(
    ruleset: Mapping[str, Json],
    port: int,
    interfaces: Iterable[str],
    *,
    proto: str = "tcp",
    daddr: str | None = None,
    saddr: str | None = None,
    family: Literal["ip", "ip6"] = "ip",
) -> Admission:
    """Whether a new ``proto`` connection to ``port`` arriving on each interface is accepted."""
    parsed = Ruleset.parse(ruleset)
    decisions = {
        name: evaluate(parsed, Packet(name, port, proto, family, daddr, saddr)) for name in interfaces
    }
    return Admission(port, proto, decisions)


def evaluate(ruleset: Ruleset | Mapping[str, Json], packet: Packet) -> Decision:
    """Run the packet through every base chain on its path."""
    parsed = ruleset if isinstance(ruleset, Ruleset) else Ruleset.parse(ruleset)
    return Decision(packet, tuple(_Evaluator(parsed, packet).outcomes()))


# --------------------------------------------------------------------------------------
# Chain walking
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _LivePath:
    """A way the packet may still be alive after some base chains."""

    trace: tuple[str, ...] = ()
    assumptions: tuple[Assumption, ...] = ()


@dataclass(frozen=True)
class _Branch:
    """One possible effect of a rule. ``effect`` None: the rule lets the packet go on."""

    effect: Json | None
    assumption: Assumption | None = None


class _Evaluator:
    def __init__(self, ruleset: Ruleset, packet: Packet) -> None:
        self.ruleset = ruleset
        self.packet = packet

    def outcomes(self) -> Iterator[Outcome]:
        live = [_LivePath()]
        for chain in self.ruleset.base_chains_for(self.packet):
            survivors: list[_LivePath] = []
            for path in live:
                for step in self._base_chain_exits(chain, path.assumptions):
                    trace = (*path.trace, step.decided_by)
                    if step.kind == "drop":
                        yield Outcome(False, trace, step.assumptions)
                    else:
                        survivors.append(_LivePath(trace, step.assumptions))
            live = _bounded(survivors)
        for path in live:
            yield Outcome(True, path.trace, path.assumptions)

    def _base_chain_exits(self, chain: Chain, assumptions: tuple[Assumption, ...]) -> list[Exit]:
        exits = self._walk(chain, assumptions, depth=0)
        if chain.hook == "ingress" and chain.devices is None:
            # nft 1.0.6 does not print an ingress chain's device: it may not apply at all.
            reason = f"{chain}: ingress chain bound to a device nft did not print"
            exits = [_assume(exit_, Assumption(reason, True)) for exit_ in exits]
            unbound = (*assumptions, Assumption(reason, False))
            exits.append(Exit("accept", f"{chain}: not bound to {self.packet.iifname}", unbound))
        return [self._apply_policy(chain, exit_) for exit_ in exits]

    @staticmethod
    def _apply_policy(chain: Chain, exit_: Exit) -> Exit:
        if exit_.kind != "return":
            return exit_
        kind: ExitKind = "drop" if chain.policy == "drop" else "accept"
        return Exit(kind, f"{chain}: policy {chain.policy}", exit_.assumptions)

    def _walk(self, chain: Chain, assumptions: tuple[Assumption, ...], depth: int) -> list[Exit]:
        """Every way out of ``chain``; ``return`` exits continue in the caller."""
        if depth > MAX_CALL_DEPTH:
            reason = f"{chain}: jumps nested deeper than {MAX_CALL_DEPTH}"
            return [
                Exit(kind, reason, (*assumptions, Assumption(reason, kind != "return")))
                for kind in ("accept", "drop", "return")
            ]
        exits: list[Exit] = []
        for rule in chain.rules:
            continuing: list[tuple[Assumption, ...]] = []
            for branch in rule_branches(rule, self.packet, self.ruleset):
                taken = (*assumptions, branch.assumption) if branch.assumption else assumptions
                self._follow(rule, branch.effect, taken, depth, exits, continuing)
            if not continuing:
                return exits
            assumptions = _unique(assumption for taken in continuing for assumption in taken)
        exits.append(Exit("return", f"end of {chain}", assumptions))
        return exits

    def _follow(
        self,
        rule: Rule,
        effect: Json | None,
        assumptions: tuple[Assumption, ...],
        depth: int,
        exits: list[Exit],
        continuing: list[tuple[Assumption, ...]],
    ) -> None:
        """Apply one branch's effect: add exits, or record that the walk goes on."""
        verdict = _verdict_name(effect)
        if verdict in (None, "continue"):
            continuing.append(assumptions)
        elif verdict in ("accept", "drop", "reject"):
            exits.append(Exit("accept" if verdict == "accept" else "drop", str(rule), assumptions))
        elif verdict == "return":
            exits.append(Exit("return", str(rule), assumptions))
        elif verdict in ("jump", "goto"):
            target = self.ruleset.chain(rule.family, rule.table, effect[verdict]["target"])
            if target is None:
                reason = f"{rule} (unknown chain)"
                exits.append(Exit("drop", reason, (*assumptions, Assumption(reason, True))))
                return
            for sub_exit in self._walk(target, assumptions, depth + 1):
                if sub_exit.kind != "return":
                    exits.append(sub_exit)
                elif verdict == "jump":
                    continuing.append(sub_exit.assumptions)
                else:  # goto: returning from the target returns from this chain too
                    exits.append(Exit("return", sub_exit.decided_by, sub_exit.assumptions))


def _bounded(paths: list[_LivePath]) -> list[_LivePath]:
    """Merge live paths when unknowns multiply them; the trace of the first is kept."""
    if len(paths) <= MAX_LIVE_PATHS:
        return paths
    merged = _unique(assumption for path in paths for assumption in path.assumptions)
    return [_LivePath(paths[0].trace, merged)]


def _assume(exit_: Exit, assumption: Assumption) -> Exit:
    return Exit(exit_.kind, exit_.decided_by, (*exit_.assumptions, assumption))


def _unique(items: Iterable[_T]) -> tuple[_T, ...]:
    return tuple(dict.fromkeys(items))


def _verdict_name(effect: Json | None) -> str | None:
    if effect is None:
        return None
    return next(iter(effect))


# --------------------------------------------------------------------------------------
# Rules: matches, statements, verdicts
# --------------------------------------------------------------------------------------


def rule_branches(rule: Rule, packet: Packet, ruleset: Ruleset) -> list[_Branch]:
    """The possible effects of one rule on the packet (one branch when certain)."""
    matched: Tri = True
    unknown_parts: list[str] = []
    effect: Json | None = None
    effect_known = True
    unknown_statement = False
    for expr in rule.exprs:
        kind, body = next(iter(expr.items()))
        if kind == "match":
            result = match(body, packet, ruleset, rule)
            if result is False:
                return [_Branch(None)]
            if result is None:
                matched = None
                unknown_parts.append(describe_expr(expr))
        elif kind in _VERDICTS:
            effect = expr
            break
        elif kind == "vmap":
            effect, effect_known = _vmap_lookup(body, packet, ruleset, rule)
            if not effect_known:
                unknown_parts.append(describe_expr(expr))
            if effect is not None or not effect_known:
                break
        elif kind == "xt":
            xt_effect = _xt(body)
            if xt_effect == "match":
                result = xt_match(body.get("name", ""), rule.xt_options, packet)
                if result is False:
                    return [_Branch(None)]
                if result is None:
                    matched = None
                    unknown_parts.append(describe_expr(expr))
            elif xt_effect == "unknown":
                unknown_statement = True
                unknown_parts.append(describe_expr(expr))
            elif xt_effect == "reject":
                effect = {"reject": None}
                break
        elif kind in ("limit", "quota", "meter", "ct count"):
            matched = None  # these filter like matches, on state the evaluator cannot see
            unknown_parts.append(describe_expr(expr))
        elif kind not in _IGNORED_STATEMENTS:
            unknown_statement = True
            unknown_parts.append(describe_expr(expr))
    if not unknown_parts or (effect is None and not unknown_statement and effect_known):
        return [_Branch(effect)]  # nothing unknown, or nothing it could change
    reason = f"{rule} [not evaluated: {', '.join(unknown_parts)}]"
    if not effect_known or unknown_statement:
        possible: list[Json | None] = [None, {"accept": None}, {"drop": None}]
    else:
        possible = [effect] if matched is True else [None, effect]
    return [_Branch(option, Assumption(reason, option is not None)) for option in _unique_effects(possible)]


def _unique_effects(effects: list[Json | None]) -> list[Json | None]:
    seen: list[Json | None] = []
    for effect in effects:
        if effect not in seen:
            seen.append(effect)
    return seen


def _xt(body: Mapping[str, Json]) -> Literal["match", "ignore", "reject", "unknown"]:
    """iptables-nft extensions: nft does not print their options, only their names."""
    if body.get("type") == "match":
        return "match"
    name = body.get("name", "")
    if name in _NON_TERMINAL_XT_TARGETS:
        return "ignore"
    if name == "REJECT":
        return "reject"
    return "unknown"


def xt_options_of(name: str, argv: tuple[str, ...]) -> list[str] | None:
    """The options after `-m NAME` in an iptables argv (up to the next -m/-j/-g), or None if absent."""
    for index in range(len(argv) - 1):
        if argv[index] == "-m" and argv[index + 1] == name:
            options: list[str] = []
            for word in argv[index + 2:]:
                if word in ("-m", "-j", "-g"):
                    break
                options.append(word)
            if options and options[-1] == "!":
                options.pop()  # negates the next match or target, not this one
            return options
    return None


# addrtype --dst-type values a packet to one of this host's unicast addresses has.
_LOCAL_ADDRESS_TYPES = {"LOCAL", "UNICAST"}


def xt_match(name: str, argv: tuple[str, ...] | None, packet: Packet) -> Tri:
    """An iptables-nft match on the packet, read from its iptables-nft-save options; None if unknown."""
    options = xt_options_of(name, argv) if argv is not None else None
    if options is None:
        return None
    negated = options[:1] == ["!"]
    plain = options[1:] if negated else options
    if name == "comment":
        return True
    if name == "rt":
        return False  # needs an IPv6 routing header; the first SYN of a connection has none
    if name == "conntrack" and len(plain) == 2 and plain[0] == "--ctstate":
        return ("NEW" in plain[1].split(",")) != negated
    if name == "addrtype" and len(plain) >= 2 and plain[0] == "--dst-type" and set(plain[2:]) <= {
            "--limit-iface-in"}:
        return bool(_LOCAL_ADDRESS_TYPES & set(plain[1].split(","))) != negated
    return None


def _vmap_lookup(
    body: Mapping[str, Json], packet: Packet, ruleset: Ruleset, rule: Rule
) -> tuple[Json | None, bool]:
    """(verdict, known): the verdict mapped to the packet's key, None when no entry matches."""
    value = packet_value(body["key"], packet)
    if value is _UNKNOWN or value is _ABSENT:
        return None, value is _ABSENT
    entries = _elements(body["data"], ruleset, rule)
    if entries is None:
        return None, False
    for entry in entries:
        if not (isinstance(entry, list) and len(entry) == 2):
            return None, False
        hit = element_matches(_key_of(body["key"]), value, entry[0])
        if hit is None:
            return None, False
        if hit:
            return entry[1], True
    return None, True


# --------------------------------------------------------------------------------------
# Matches
# --------------------------------------------------------------------------------------


class _Marker:
    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


_UNKNOWN = _Marker("UNKNOWN")  # the evaluator cannot tell the packet's value
_ABSENT = _Marker("ABSENT")  # the header is not there: every match on it fails
_ROUTE_EXISTS = _Marker("ROUTE_EXISTS")  # a reverse-path lookup that finds a route back to the source


def packet_value(left: Json, packet: Packet) -> Any:
    """The packet's value for a match's left-hand side, or _UNKNOWN / _ABSENT."""
    if not isinstance(left, dict):
        return _UNKNOWN
    kind, body = next(iter(left.items()))
    if kind == "meta":
        return _meta_value(body.get("key"), packet)
    if kind == "payload":
        return _payload_value(body.get("protocol"), body.get("field"), packet)
    if kind == "ct":
        return {"state": "new", "direction": "original"}.get(body.get("key"), _UNKNOWN)
    if kind == "fib" and body.get("result") == "type" and body.get("flags") == ["daddr"]:
        return "local"  # the packet is for this host
    if kind == "fib" and body.get("result") == "oif" and {"saddr", "iif"} <= set(body.get("flags") or ()):
        # Reverse-path filter (firewalld's rpfilter, `fib saddr . iif oif missing drop`): the packets we
        # judge come from a peer reachable back through the interface they arrived on, so a route exists.
        return _ROUTE_EXISTS
    return _UNKNOWN


def _meta_value(key: str | None, packet: Packet) -> Any:
    values = {
        "iifname": packet.iifname,
        "iif": packet.iifname,
        "l4proto": packet.proto,
        "nfproto": "ipv4" if packet.family == "ip" else "ipv6",
        "protocol": packet.family,
        "pkttype": "host",
    }
    return values.get(key or "", _UNKNOWN)


def _payload_value(protocol: str | None, field_name: str | None, packet: Packet) -> Any:
    if protocol in ("ip", "ip6"):
        if protocol != packet.family:
            return _ABSENT
        if field_name in ("protocol", "nexthdr"):
            return packet.proto
        if field_name == "daddr":
            return packet.daddr if packet.daddr is not None else _UNKNOWN
        if field_name == "saddr":
            return packet.saddr if packet.saddr is not None else _UNKNOWN
        return _UNKNOWN
    if protocol in ("tcp", "udp", "sctp", "th"):
        if protocol != "th" and protocol != packet.proto:
            return _ABSENT
        return packet.dport if field_name == "dport" else _UNKNOWN
    if protocol in _OTHER_L4_HEADERS and _protocol_number(protocol) != _protocol_number(packet.proto):
        # nft matches a header field only in packets of that protocol (e.g. firewalld's `icmpv6 type`).
        return _ABSENT
    return _UNKNOWN


def _key_of(left: Json) -> str:
    """A short name for the left-hand side, used to pick the comparison (wildcards, ...)."""
    if isinstance(left, dict):
        kind, body = next(iter(left.items()))
        if kind == "meta":
            return str(body.get("key"))
        if kind == "payload":
            return f"{body.get('protocol')} {body.get('field')}"
        if kind == "ct":
            return f"ct {body.get('key')}"
    return "?"


def match(body: Mapping[str, Json], packet: Packet, ruleset: Ruleset, rule: Rule) -> Tri:
    left, right, op = body["left"], body["right"], body.get("op", "==")
    if left == {"ct": {"key": "status"}}:
        return _ct_status(op, right)
    value = packet_value(left, packet)
    if value is _ROUTE_EXISTS:
        # `oif missing` is `== false`; anything else about the route is beyond this model.
        return (op == "!=") if right is False and op in ("==", "!=") else None
    if value is _ABSENT:
        return False
    if value is _UNKNOWN:
        return None
    key = _key_of(left)
    if op in ("<", ">", "<=", ">="):
        return _compare(op, value, right)
    elements = _elements(right, ruleset, rule)
    if elements is None:
        return None
    found = _any_matches(key, value, elements)
    if op in ("==", "in"):
        return found
    if op == "!=":
        return None if found is None else not found
    return None


def _ct_status(op: str, right: Json) -> Tri:
    """Only dnat/snat are known: no NAT is modelled, so they are never set."""
    flags = right if isinstance(right, list) else [right]
    if all(flag in ("dnat", "snat") for flag in flags):
        return op == "!="
    return None


def _elements(right: Json, ruleset: Ruleset, rule: Rule) -> list[Json] | None:
    """The values a right-hand side stands for; None when it cannot be resolved."""
    if isinstance(right, str) and right.startswith("@"):
        named = ruleset.sets.get((rule.family, rule.table, right[1:]))
        return None if named is None else list(named)
    if isinstance(right, dict) and "set" in right:
        return list(right["set"])
    if isinstance(right, list):  # flag lists such as ct state established,related
        return right
    return [right]


def _any_matches(key: str, value: Any, elements: list[Json]) -> Tri:
    results = [element_matches(key, value, element) for element in elements]
    if any(result is True for result in results):
        return True
    return None if any(result is None for result in results) else False


def element_matches(key: str, value: Any, element: Json) -> Tri:
    """Whether ``value`` is ``element`` (a value, range, prefix or wildcard)."""
    if isinstance(element, dict):
        if "elem" in element:
            return element_matches(key, value, element["elem"].get("val"))
        if "range" in element:
            low, high = element["range"]
            return _in_range(value, low, high)
        if "prefix" in element:
            return _in_prefix(value, element["prefix"]["addr"], element["prefix"]["len"])
        return None
    if isinstance(element, list):  # a concatenation key; not modelled
        return None
    if key in ("iifname", "iif"):
        # nft prints an iif whose index it cannot resolve as a number
        return _interface_matches(value, element) if isinstance(element, str) else None
    if key in ("l4proto", "ip protocol", "ip6 nexthdr"):
        return _protocol_number(value) == _protocol_number(element)
    if key.endswith(("saddr", "daddr")):
        return _same_address(value, element)
    return value == element


def _interface_matches(name: str, pattern: str) -> bool:
    if pattern.endswith("\\*"):
        return name == pattern[:-2] + "*"
    if pattern.endswith("*"):
        return name.startswith(pattern[:-1])
    return name == pattern


def _protocol_number(protocol: Any) -> Any:
    return _PROTOCOL_NUMBERS.get(protocol, protocol) if isinstance(protocol, str) else protocol


def _same_address(value: str, element: Json) -> Tri:
    try:
        return ipaddress.ip_address(value) == ipaddress.ip_address(element)
    except ValueError:
        return None


def _in_prefix(value: str, addr: str, length: int) -> Tri:
    try:
        return ipaddress.ip_address(value) in ipaddress.ip_network(f"{addr}/{length}", strict=False)
    except ValueError:
        return None


def _in_range(value: Any, low: Json, high: Json) -> Tri:
    if isinstance(value, int) and isinstance(low, int) and isinstance(high, int):
        return low <= value <= high
    try:
        address = ipaddress.ip_address(value)
        return ipaddress.ip_address(low) <= address <= ipaddress.ip_address(high)
    except (TypeError, ValueError):
        return None


def _compare(op: str, value: Any, right: Json) -> Tri:
    if not (isinstance(value, int) and isinstance(right, int)):
        return None
    return {"<": value < right, ">": value > right, "<=": value <= right, ">=": value >= right}[op]


# --------------------------------------------------------------------------------------
# Rendering, for check messages
# --------------------------------------------------------------------------------------


def describe_expr(expr: Json) -> str:
    """A short nft-like rendering of one rule expression."""
    kind, body = next(iter(expr.items()))
    if kind == "match":
        op = "" if body.get("op") in ("==", "in") else f"{body.get('op')} "
        return f"{_describe_value(body['left'])} {op}{_describe_value(body['right'])}"
    if kind in ("jump", "goto"):
        return f"{kind} {body['target']}"
    if kind == "vmap":
        return f"{_describe_value(body['key'])} vmap {_describe_value(body['data'])}"
    if kind == "xt":
        return f"xt {body.get('type')} {body.get('name')}"
    if kind in _VERDICTS or kind in _IGNORED_STATEMENTS:
        return kind
    return json.dumps(expr, separators=(",", ":"))


def _describe_value(value: Json) -> str:
    if isinstance(value, dict):
        kind, body = next(iter(value.items()))
        if kind == "meta":
            key = body.get("key")
            return key if key in ("iifname", "iif", "oifname", "oif") else f"meta {key}"
        if kind == "payload":
            return f"{body.get('protocol')} {body.get('field')}"
        if kind == "ct":
            return f"ct {body.get('key')}"
        if kind == "fib":
            return f"fib {' . '.join(body.get('flags', []))} {body.get('result')}"
        if kind == "set":
            return "{ " + ", ".join(_describe_value(element) for element in body) + " }"
        if kind == "range":
            return f"{_describe_value(body[0])}-{_describe_value(body[1])}"
        if kind == "prefix":
            return f"{body['addr']}/{body['len']}"
        if kind == "elem":
            return _describe_value(body.get("val"))
        if kind in _VERDICTS:
            return describe_expr(value)
    if isinstance(value, list):
        if len(value) == 2 and isinstance(value[1], dict) and next(iter(value[1])) in _VERDICTS:
            return f"{_describe_value(value[0])} : {describe_expr(value[1])}"
        return ",".join(_describe_value(item) for item in value)
    return str(value)
