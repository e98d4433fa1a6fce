"""`python -m inventory pin ollama`: only the version and hash lines change, and the apply refuses placeholders
before it connects."""

from __future__ import annotations

import datetime
import difflib
import functools
import http.server
import ipaddress
import os
import socket
import ssl
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from inventory.__main__ import main
from inventory.load import load_inventory
from inventory.pin import placeholder_diagnostics, release_sums_url

REPO = Path(__file__).resolve().parent.parent
HOMELAB = REPO / "inventory" / "homelab.yaml"
BASE = "ollama-linux-amd64.tar.zst"
ROCM = "ollama-linux-amd64-rocm.tar.zst"
BASE_SHA = "ab" * 32
ROCM_SHA = "1" * 64  # all digits: written plain, YAML would read it as a number
ZEROS = "0" * 64
# The lines of inventory/homelab.yaml the pin rewrites, as written there, and as they must read after.
OLD_LINES = [
    "        version: 0.13.5\n",
    f'          {BASE}: "{ZEROS}"\n',
    f'          {ROCM}: "{ZEROS}"\n',
]
NEW_LINES = [
    "        version: 0.14.0\n",
    f'          {BASE}: "{BASE_SHA}"\n',
    f'          {ROCM}: "{ROCM_SHA}"\n',
]


def sums_text(prefix: str = "", mode: str = " ", names: tuple[str, ...] = (BASE, ROCM)) -> str:
    listed = {"ollama-darwin.tgz": "cd" * 32, BASE: BASE_SHA, ROCM: ROCM_SHA, "ollama-windows-amd64.zip": "ef" * 32}
    return "".join(f"{digest} {mode}{prefix}{name}\n" for name, digest in listed.items()
                   if name in names or not name.startswith("ollama-linux"))


def homelab_copy(tmp_path: Path) -> Path:
    copy = tmp_path / "mine.yaml"
    copy.write_text(HOMELAB.read_text())
    return copy


def changed_lines(before: str, after: str) -> tuple[list[str], list[str]]:
    """(removed, added) lines of the unified diff."""
    diff = list(difflib.unified_diff(before.splitlines(keepends=True), after.splitlines(keepends=True), n=0))
    removed = [line[1:] for line in diff[2:] if line.startswith("-")]
    added = [line[1:] for line in diff[2:] if line.startswith("+")]
    return removed, added


def pin(inventory: Path, source: str | Path, version: str = "0.14.0") -> int:
    return main(["pin", "ollama", version, "--inventory", str(inventory), "--from", str(source)])


def line_of(text: str, needle: str) -> int:
    """1-based number of the only line containing needle."""
    found = [number for number, line in enumerate(text.splitlines(), start=1) if needle in line]
    assert len(found) == 1, found
    return found[0]


# --- the edit -------------------------------------------------------------------------------


def test_pinning_homelab_from_a_sums_file_changes_only_the_version_and_hash_lines(tmp_path, capsys):
    inventory = homelab_copy(tmp_path)
    sums = tmp_path / "sha256sum.txt"
    sums.write_text(sums_text())
    before = inventory.read_text()

    assert pin(inventory, sums) == 0

    after = inventory.read_text()
    assert changed_lines(before, after) == (OLD_LINES, NEW_LINES)
    expected = before
    for old, new in zip(OLD_LINES, NEW_LINES, strict=True):
        assert expected.count(old) == 1
        expected = expected.replace(old, new)
    assert after == expected
    out = capsys.readouterr().out
    assert "p620: version 0.13.5 -> 0.14.0" in out
    assert f"p620: {BASE} 000000000000 -> abababababab" in out
    assert f"p620: {ROCM} 000000000000 -> 111111111111" in out
    pinned = load_inventory(inventory).hosts["p620"].server.ollama
    assert pinned.version == "0.14.0" and dict(pinned.artifacts) == {BASE: BASE_SHA, ROCM: ROCM_SHA}


def test_pinning_again_changes_nothing(tmp_path, capsys):
    inventory = homelab_copy(tmp_path)
    sums = tmp_path / "sha256sum.txt"
    sums.write_text(sums_text())
    assert pin(inventory, sums) == 0
    pinned = inventory.read_text()
    mtime = inventory.stat().st_mtime_ns
    capsys.readouterr()

    assert pin(inventory, sums) == 0

    assert inventory.read_text() == pinned and inventory.stat().st_mtime_ns == mtime
    assert f"p620: {ROCM} 111111111111 (unchanged)" in capsys.readouterr().out


def test_from_a_directory_with_dot_slash_names(tmp_path):
    inventory = homelab_copy(tmp_path)
    release = tmp_path / "release"
    release.mkdir()
    (release / "sha256sum.txt").write_text(sums_text(prefix="./"))
    before = inventory.read_text()

    assert pin(inventory, release) == 0

    assert changed_lines(before, inventory.read_text()) == (OLD_LINES, NEW_LINES)


def test_binary_mode_lines_and_crlf_are_read(tmp_path):
    inventory = homelab_copy(tmp_path)
    sums = tmp_path / "sums.txt"
    sums.write_bytes(sums_text(mode="*", prefix="./").replace("\n", "\r\n").encode())
    before = inventory.read_text()

    assert pin(inventory, sums) == 0

    assert changed_lines(before, inventory.read_text()) == (OLD_LINES, NEW_LINES)


def test_quoting_style_is_kept_and_a_plain_value_that_would_read_as_a_number_is_quoted(tmp_path):
    text = HOMELAB.read_text()
    text = text.replace("version: 0.13.5", "version: '0.13.5'")
    text = text.replace(f'{BASE}: "{ZEROS}"', f"{BASE}: {'e' * 64}   # plain")
    text = text.replace(f'{ROCM}: "{ZEROS}"', f"{ROCM}: {'f' * 64}")
    inventory = tmp_path / "mine.yaml"
    inventory.write_text(text)
    sums = tmp_path / "sha256sum.txt"
    sums.write_text(sums_text())

    assert pin(inventory, sums) == 0

    assert changed_lines(text, inventory.read_text()) == (
        ["        version: '0.13.5'\n", f"          {BASE}: {'e' * 64}   # plain\n", f"          {ROCM}: {'f' * 64}\n"],
        ["        version: '0.14.0'\n", f"          {BASE}: {BASE_SHA}   # plain\n", f'          {ROCM}: "{ROCM_SHA}"\n'],
    )
    assert load_inventory(inventory).hosts["p620"].server.ollama.artifacts[ROCM] == ROCM_SHA


def test_the_default_source_is_the_release_page():
    assert release_sums_url("0.14.0") == "https://github.com/ollama/ollama/releases/download/v0.14.0/sha256sum.txt"


# --- refusals: one line, exit 2, the file untouched ---------------------------------------------


@pytest.mark.parametrize(("version", "sums", "needle"), [
    ("0.14.0", sums_text(names=(BASE,)),
     f"release v0.14.0 (SUMS) has no {ROCM}, which p620 needs for acceleration rocm; pick a release that ships it"),
    ("0.14.0", sums_text().replace(f"{ROCM}", ROCM.replace(".tar.zst", ".tgz")),
     f"this release ships {ROCM.replace('.tar.zst', '.tgz')} instead: rename the key"),
    ("0.14.0", sums_text() + "<html>Not Found</html>\n",
     "SUMS:5: not a sha256sum line (expected `HASH  NAME`): '<html>Not Found</html>'"),
    ("0.14.0", sums_text() + f"{'9' * 64}  {BASE}\n", f"SUMS:5: {BASE} is listed twice with different hashes"),
    ("0.14.0", "\n", "SUMS: no `HASH  NAME` lines"),
    ("v0.14.0", sums_text(), "version 'v0.14.0' is not X.Y.Z"),
    ("0.14", sums_text(), "version '0.14' is not X.Y.Z"),
])
def test_refused_with_what_to_do_and_the_file_untouched(tmp_path, capsys, version, sums, needle):
    inventory = homelab_copy(tmp_path)
    source = tmp_path / "sha256sum.txt"
    source.write_text(sums)
    before = inventory.read_text()

    assert pin(inventory, source, version) == 2

    err = capsys.readouterr().err
    assert err.startswith("pin: ") and err.count("\n") == 1, err
    assert needle.replace("SUMS", str(source)) in err
    assert inventory.read_text() == before


def test_an_inventory_without_an_ollama_section_is_refused(tmp_path, capsys):
    inventory = tmp_path / "clients.yaml"
    inventory.write_text("hosts:\n  razer:\n    roles: [client]\n    ssh: {hostname: razer.lan}\n"
                         "    client: {router: p620, users: [{name: olaf}]}\n")
    sums = tmp_path / "sha256sum.txt"
    sums.write_text(sums_text())

    assert pin(inventory, sums) == 2

    assert f"pin: {inventory} has no hosts.<name>.server.ollama section" in capsys.readouterr().err


def test_an_invalid_inventory_is_refused_at_its_first_error(tmp_path, capsys):
    inventory = homelab_copy(tmp_path)
    inventory.write_text(inventory.read_text().replace("keep_alive: 5m", "keep_alive: soon"))

    assert pin(inventory, tmp_path) == 2

    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{inventory}:{line_of(inventory.read_text(), 'keep_alive')}:" in err
    assert f"fix the inventory first (python -m inventory check {inventory})" in err


# --- over HTTPS -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def release_server(tmp_path_factory):
    """An HTTPS server on 127.0.0.1 serving /v0.14.0/sha256sum.txt, with a certificate from a throwaway CA."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    root = tmp_path_factory.mktemp("release")
    now = datetime.datetime.now(datetime.UTC)

    def certificate(subject: str, key, issuer: str, issuer_key, ca: bool) -> x509.Certificate:
        builder = (x509.CertificateBuilder()
                   .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
                   .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(hours=1))
                   .not_valid_after(now + datetime.timedelta(hours=1))
                   .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
                   .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
                   .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
                                  critical=False))
        if ca:
            builder = builder.add_extension(x509.KeyUsage(
                digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                key_encipherment=False, data_encipherment=False, key_agreement=False, encipher_only=False,
                decipher_only=False), critical=True)
        else:
            builder = (builder
                       .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                                      critical=False)
                       .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False))
        return builder.sign(issuer_key, hashes.SHA256())

    ca_key, server_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_cert = certificate("pin test CA", ca_key, "pin test CA", ca_key, ca=True)
    server_cert = certificate("127.0.0.1", server_key, "pin test CA", ca_key, ca=False)
    (root / "ca.pem").write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    (root / "server.pem").write_bytes(server_cert.public_bytes(serialization.Encoding.PEM) + server_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    (root / "www" / "v0.14.0").mkdir(parents=True)
    (root / "www" / "v0.14.0" / "sha256sum.txt").write_text(sums_text(prefix="./"))

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=root / "www"))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(root / "server.pem")
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"https://127.0.0.1:{server.server_address[1]}", root / "ca.pem"
    server.shutdown()
    server.server_close()


def run_pin(inventory: Path, url: str, ca: Path | None, version: str = "0.14.0") -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("SSL_CERT_FILE", "SSL_CERT_DIR")}
    if ca is not None:
        env["SSL_CERT_FILE"] = str(ca)  # ssl.create_default_context() loads it through OpenSSL's default paths
    return subprocess.run([sys.executable, "-m", "inventory", "pin", "ollama", version, "--inventory", str(inventory),
                           "--from", url], cwd=REPO, env=env, capture_output=True, text=True, timeout=60, check=False)


def test_from_an_https_url(tmp_path, release_server):
    base_url, ca = release_server
    inventory = homelab_copy(tmp_path)
    before = inventory.read_text()

    done = run_pin(inventory, f"{base_url}/v0.14.0/sha256sum.txt", ca)

    assert done.returncode == 0, done.stderr
    assert changed_lines(before, inventory.read_text()) == (OLD_LINES, NEW_LINES)
    assert f"pinned ollama 0.14.0 from {base_url}/v0.14.0/sha256sum.txt in {inventory}" in done.stdout


@pytest.mark.parametrize(("path", "trusted", "needle"), [
    ("/v0.14.0/sha256sum.txt", False, "certificate verify failed"),
    ("/v0.99.0/sha256sum.txt", True, "HTTP 404"),
])
def test_an_untrusted_server_or_a_missing_release_is_one_line_and_exit_2(tmp_path, release_server, path, trusted,
                                                                         needle):
    base_url, ca = release_server
    inventory = homelab_copy(tmp_path)
    before = inventory.read_text()

    done = run_pin(inventory, base_url + path, ca if trusted else None)

    assert done.returncode == 2
    assert done.stderr.startswith("pin: ") and done.stderr.count("\n") == 1, done.stderr
    assert needle in done.stderr and "Traceback" not in done.stderr
    assert inventory.read_text() == before


# --- placeholders: check reports them, the apply refuses them before connecting ------------------


def test_placeholders_are_found_at_their_lines_only_where_they_are():
    text = HOMELAB.read_text()
    found = placeholder_diagnostics(load_inventory(HOMELAB), HOMELAB)

    assert [(d.line, d.path) for d in found] == [
        (line_of(text, f"{BASE}:"), f"hosts.p620.server.ollama.artifacts.{BASE}"),
        (line_of(text, f"{ROCM}:"), f"hosts.p620.server.ollama.artifacts.{ROCM}"),
    ]
    assert all(f"pin a release with: python -m inventory pin ollama 0.13.5 --inventory {HOMELAB}" in d.message
               for d in found)
    lab = REPO / "inventory" / "lab.yaml"
    assert placeholder_diagnostics(load_inventory(lab), lab) == []


def test_check_reports_placeholders_and_passes_once_pinned(tmp_path, capsys):
    inventory = homelab_copy(tmp_path)
    text = inventory.read_text()

    assert main(["check", str(inventory)]) == 1
    err = capsys.readouterr().err
    assert f"{inventory}:{line_of(text, f'{BASE}:')}:" in err and f"{inventory}:{line_of(text, f'{ROCM}:')}:" in err

    sums = tmp_path / "sha256sum.txt"
    sums.write_text(sums_text())
    assert pin(inventory, sums) == 0
    assert main(["check", str(inventory)]) == 0


@pytest.fixture
def ssh_listeners():
    """Two TCP listeners standing in for the hosts' SSH ports; counts the connections they get."""
    sockets = [socket.create_server(("127.0.0.1", 0)) for _ in range(2)]
    accepted: list[int] = []

    def serve(listener: socket.socket) -> None:
        while True:
            try:
                connection, _ = listener.accept()
            except OSError:
                return
            accepted.append(listener.getsockname()[1])
            connection.close()  # no SSH here: the client fails at once

    for listener in sockets:
        threading.Thread(target=serve, args=(listener,), daemon=True).start()
    yield [listener.getsockname()[1] for listener in sockets], accepted
    for listener in sockets:
        listener.close()


def apply(inventory: Path) -> subprocess.CompletedProcess:
    """The apply as the README runs it."""
    return subprocess.run([sys.executable, "-m", "pyinfra", "-y", "inventory/hosts.py", "deploys/site.py"],
                          cwd=REPO, env={**os.environ, "LLM_ROUTER_INVENTORY": str(inventory)},
                          capture_output=True, text=True, timeout=120, check=False)


def test_apply_refuses_placeholders_before_connecting(tmp_path, ssh_listeners):
    (p620_port, razer_port), accepted = ssh_listeners
    text = HOMELAB.read_text()
    text = text.replace("hostname: p620.lan", f"hostname: 127.0.0.1\n      port: {p620_port}")
    text = text.replace("hostname: razer.lan", f"hostname: 127.0.0.1\n      port: {razer_port}")
    text = text.replace("      key: ~/.ssh/id_ed25519\n", "")
    inventory = tmp_path / "mine.yaml"
    inventory.write_text(text)

    refused = apply(inventory)

    assert refused.returncode == 2, refused.stdout + refused.stderr
    rocm_line = line_of(text, f"{ROCM}:")
    rocm_column = text.splitlines()[rocm_line - 1].index('"') + 1
    assert (f"{inventory}:{rocm_line}:{rocm_column}: error at hosts.p620.server.ollama.artifacts.{ROCM}: "
            "the sha256 is a placeholder") in refused.stderr
    assert f"pin a release with: python -m inventory pin ollama 0.13.5 --inventory {inventory}" in refused.stderr
    assert accepted == []

    # The control: pinned, the same apply gets past the guard and does connect to both hosts.
    sums = tmp_path / "sha256sum.txt"
    sums.write_text(sums_text())
    assert pin(inventory, sums) == 0
    connected = apply(inventory)
    assert connected.returncode != 0 and "placeholder" not in connected.stderr
    assert sorted(set(accepted)) == sorted({p620_port, razer_port}), connected.stdout + connected.stderr
