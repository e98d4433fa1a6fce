"""What the host's firewall tools say: our nftables table loaded, ufw's status, firewalld's zones."""

from __future__ import annotations

import shlex
from dataclasses import dataclass

from typing_extensions import override

from facts.sections import ExitStatusFact, Section, SectionFact


class NftTableLoaded(ExitStatusFact):
    """Whether the kernel has this nftables table (False too when nft is missing)."""

    @override
    def command(self, family: str, table: str) -> str:
        return f"nft list table {shlex.quote(family)} {shlex.quote(table)} >/dev/null"


@dataclass(frozen=True)
class UfwState:
    active: bool
    status: str  # `ufw status verbose`, when ufw is enabled


class UfwStatus(SectionFact[UfwState]):
    @override
    def command(self) -> str:
        # ufw is active only with ENABLED=yes; asking ufw itself costs ~50 ms of Python per apply.
        return "grep -qs '^ENABLED=yes' /etc/ufw/ufw.conf && ufw status verbose"

    @override
    def process_section(self, section: Section) -> UfwState:
        text = section.text if section.ok else ""
        return UfwState("Status: active" in text, text)


@dataclass(frozen=True)
class ZonePort:
    """The firewalld zone of an interface and whether the port is open there now and permanently."""

    zone: str
    runtime: bool
    permanent: bool


class FirewalldZonePorts(SectionFact[dict[str, ZonePort]]):
    """For each interface, its zone and the port's state in it; nothing when firewalld is not running.

    An interface bound to no zone is in the default zone (firewalld's own rule)."""

    default = dict

    @override
    def command(self, port: int, interfaces: tuple[str, ...]) -> str:
        quoted = " ".join(shlex.quote(i) for i in interfaces)
        return (f"systemctl is-active -q firewalld.service || exit 0; for i in {quoted}; do "
                f"z=$(firewall-cmd --get-zone-of-interface=\"$i\" 2>/dev/null) || z=$(firewall-cmd --get-default-zone)"
                f" || exit 1; echo \"$i $z $(firewall-cmd --zone=\"$z\" --query-port={int(port)}/tcp) "
                f"$(firewall-cmd --permanent --zone=\"$z\" --query-port={int(port)}/tcp)\"; done")

    @override
    def process_section(self, section: Section) -> dict[str, ZonePort]:
        if not section.ok:
            return {}
        zones = {}
        for line in section.lines:
            words = line.split()
            if len(words) == 4:
                zones[words[0]] = ZonePort(words[1], words[2] == "yes", words[3] == "yes")
        return zones
