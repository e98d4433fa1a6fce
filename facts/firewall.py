"""The host's nftables ruleset as a pyinfra fact (``nft -j list ruleset`` plus iptables-nft-save's options).

Only the checks read it: checks/nft_eval.py evaluates which interfaces may reach a port.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from pyinfra.api import FactBase
from typing_extensions import override

from facts._util import JsonDataclass


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
        saves = " ".join(f"echo '{IPTABLES_MARKER}{family}'; {tool} 2>/dev/null;"
                         for family, tool in (("ip", "iptables-nft-save"), ("ip6", "ip6tables-nft-save")))
        return f"nft -j list ruleset && if command -v iptables-nft-save >/dev/null; then {saves} fi"

    @override
    def process(self, output: list[str]) -> dict | RulesetUnreadable | None:
        json_lines: list[str] = []
        saves: dict[str, list[str]] = {}
        current = json_lines
        for line in output:
            if line.startswith(IPTABLES_MARKER):
                current = saves.setdefault(line[len(IPTABLES_MARKER):].strip(), [])
            else:
                current.append(line)
        text = "\n".join(json_lines).strip()
        if not text:
            return None
        try:
            ruleset = json.loads(text)
        except ValueError as error:
            return RulesetUnreadable(f"nft -j printed no JSON ({error}): {text.splitlines()[0][:80]!r}")
        if not isinstance(ruleset, dict) or not isinstance(ruleset.get("nftables"), list):
            return RulesetUnreadable(f"nft -j printed JSON without an nftables list: {text[:80]!r}")
        if saves:
            ruleset[IPTABLES_SAVE_KEY] = {family: "\n".join(lines) for family, lines in saves.items()}
        return ruleset


IPTABLES_MARKER = "#! iptables-nft-save "
# Extra key in the fact's dict (beside "nftables"): iptables-nft-save text per family, if any.
IPTABLES_SAVE_KEY = "iptables_nft_save"
