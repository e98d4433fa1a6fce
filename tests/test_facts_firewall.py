"""NftRuleset: nft's JSON and iptables-nft-save's text, each in its own section."""

import json
import shutil
import subprocess

from facts.firewall import NFT, NftRuleset
from facts.sections import encode, split_sections


def test_fact_reads_the_json_and_the_iptables_nft_save_sections():
    fact = NftRuleset()
    saved = ["*filter", ":INPUT DROP [0:0]", "-A INPUT -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
             "COMMIT"]
    parsed = fact.process([encode(NFT, 0, json.dumps({"nftables": []}).encode()),
                           encode("iptables-nft-save", 0, "".join(f"{line}\n" for line in saved).encode()),
                           encode("ip6tables-nft-save", 0, b"")])
    assert parsed == {"nftables": [], "iptables_nft_save": {"ip": "\n".join(saved), "ip6": ""}}
    assert fact.process([encode(NFT, 0, json.dumps({"nftables": []}).encode())]) == {"nftables": []}
    assert fact.process([]) is None


def test_fact_command_frames_nft_and_both_saves(tmp_path):
    """Run with fake tools: each part lands in its own section with its own exit status."""
    for tool, script in (("nft", 'echo \'{"nftables": []}\''), ("iptables-nft-save", "echo '*filter'"),
                         ("ip6tables-nft-save", "exit 1")):
        (tmp_path / tool).write_text(f"#!/bin/sh\n{script}\n")
        (tmp_path / tool).chmod(0o755)
    (tmp_path / "base64").symlink_to(shutil.which("base64"))
    output = subprocess.run(["/bin/sh", "-c", NftRuleset().command()], env={"PATH": str(tmp_path)},
                            capture_output=True, text=True, check=True).stdout.splitlines()
    sections = split_sections(output)
    assert {key: (section.status, section.lines) for key, section in sections.items()} == {
        "nft": (0, ('{"nftables": []}',)), "iptables-nft-save": (0, ("*filter",)), "ip6tables-nft-save": (1, ())}
    assert NftRuleset().process(output) == {"nftables": [], "iptables_nft_save": {"ip": "*filter", "ip6": ""}}
