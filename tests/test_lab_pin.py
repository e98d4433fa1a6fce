"""`python -m inventory pin` proven against a release server in the lab.

The lab builds the Ollama stand-in release as the project publishes a real one (tarballs and
sha256sum.txt, lab/standins/ollama/build.py). A copy of the lab inventory with its hashes zeroed is
refused by the apply before it connects; pinned from that release (its directory, and an https URL
whose certificate the lab's CA signed) it holds the release's hashes, and an apply with it converges.
"""

from __future__ import annotations

import functools
import http.server
import os
import re
import shutil
import ssl
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from inventory.derive import ollama_archives
from inventory.load import load_inventory
from inventory.pin import PLACEHOLDER_SHA256, SUMS_FILE
from lab import core
from lab.standin_hooks import CA_DIR
from lab.standins.tailscale.ca import ensure_ca, ensure_node_cert
from lab.variants import write_variant
from tests.conftest import LAB_INVENTORY, REPO_ROOT, run_apply

pytestmark = pytest.mark.lab


def release_dir() -> Path:
    inv = load_inventory(LAB_INVENTORY)
    return inv.resolve_path(inv.hosts["p620"].server.ollama.source.local_dir)


def release_sums(directory: Path) -> dict[str, str]:
    """The release's sha256sum.txt read here, independently of inventory/pin.py."""
    sums = {}
    for line in (directory / SUMS_FILE).read_text().splitlines():
        digest, name = line.split()
        sums[name.removeprefix("./")] = digest
    return sums


@functools.cache
def absolute_lab_inventory() -> Path:
    """The lab inventory with its relative paths made absolute, so a copy elsewhere finds the same files."""
    return write_variant(LAB_INVENTORY, Path(tempfile.mkdtemp(prefix="lab-pin-")) / "lab.yaml")


def lab_text(digest_as: str = "{digest}") -> str:
    """The lab inventory (absolute paths) with each archive hash written as `digest_as`."""
    text = absolute_lab_inventory().read_text()
    for digest in dict(ollama_archives(load_inventory(LAB_INVENTORY).hosts["p620"].server.ollama)).values():
        assert text.count(digest) == 1
        text = text.replace(digest, digest_as.format(digest=digest))
    return text


def zeroed_copy(tmp_path: Path, name: str) -> Path:
    """A copy with every archive hash the example inventory's quoted placeholder."""
    copy = tmp_path / name
    copy.write_text(lab_text(f'"{PLACEHOLDER_SHA256}"'))
    return copy


def pin(inventory: Path, source: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    version = load_inventory(LAB_INVENTORY).hosts["p620"].server.ollama.version
    return subprocess.run([sys.executable, "-m", "inventory", "pin", "ollama", version, "--inventory", str(inventory),
                           "--from", source], cwd=REPO_ROOT, env={**os.environ, **(env or {})},
                          capture_output=True, text=True, timeout=60, check=False)


def ssh_logins(host: str) -> int:
    """Public-key logins sshd has accepted on a lab host (pyinfra connects this way)."""
    journal = core.run(host, ["journalctl", "-o", "cat", "-t", "sshd", "--no-pager"]).stdout
    return len(re.findall(r"^Accepted publickey", journal, re.MULTILINE))


@pytest.fixture
def https_release(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """The release directory over HTTPS on loopback, with a `localhost` certificate the lab's CA signed."""
    lab_ca, lab_ca_key = ensure_ca(CA_DIR)
    signer = tmp_path / "ca"
    signer.mkdir()
    shutil.copy(lab_ca, signer / "ca.crt")
    shutil.copy(lab_ca_key, signer / "ca.key")  # ensure_node_cert signs with the CA in its directory
    cert = ensure_node_cert(signer, "localhost")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert.cert, cert.key)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(release_dir()))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"https://localhost:{server.server_address[1]}/{SUMS_FILE}", lab_ca
    finally:
        server.shutdown()
        server.server_close()


def test_pin_from_the_lab_release_then_the_apply_converges(deployed, tmp_path, https_release):
    release = release_dir()
    published = release_sums(release)
    zeroed = zeroed_copy(tmp_path, "zeroed.yaml")

    logins = {host: ssh_logins(host) for host in ("p620", "razer")}
    refused = run_apply(inventory=zeroed, timeout=120)
    assert refused.returncode == 2, refused.output[-3000:]
    assert "the sha256 is a placeholder" in refused.output
    version = load_inventory(LAB_INVENTORY).hosts["p620"].server.ollama.version
    assert f"python -m inventory pin ollama {version} --inventory {zeroed}" in refused.output
    assert {host: ssh_logins(host) for host in logins} == logins, "the refused apply connected to a host"

    done = pin(zeroed, str(release))
    assert done.returncode == 0, done.stderr
    pinned = dict(ollama_archives(load_inventory(zeroed).hosts["p620"].server.ollama))
    assert pinned == {name: published[name] for name in pinned}
    assert zeroed.read_text() == lab_text('"{digest}"')  # only the hash values changed, back to the pins

    url, lab_ca = https_release
    over_https = zeroed_copy(tmp_path, "https.yaml")
    untrusted = pin(over_https, url, {"SSL_CERT_FILE": os.devnull})
    assert untrusted.returncode == 2 and "certificate verify failed" in untrusted.stderr
    done = pin(over_https, url, {"SSL_CERT_FILE": str(lab_ca)})
    assert done.returncode == 0, done.stderr
    assert dict(ollama_archives(load_inventory(over_https).hosts["p620"].server.ollama)) == pinned

    converged = run_apply(inventory=zeroed)
    assert converged.returncode == 0, converged.output[-6000:]
    assert converged.changed == 0, converged.output[-6000:]
    assert {host: ssh_logins(host) for host in logins} != logins  # the control: an apply does log in
