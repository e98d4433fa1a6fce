"""The host's nftables ruleset as a pyinfra fact (``nft -j list ruleset`` plus iptables-nft-save's options).

Only the checks read it: checks/nft_eval.py evaluates which interfaces may reach a port.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from pyinfra.api import FactBase
from typing_extensions import override

from facts._util import JsonDataclass
from facts.sections import framed, missing, split_sections


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
