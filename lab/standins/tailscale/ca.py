"""Lab CA and node certificates for the LAB STAND-IN tailscaled (uses the `openssl` binary).

Real tailscale gets Let's Encrypt certificates for `<host>.<tailnet>.ts.net`;
the lab has no internet, so a lab CA signs them instead and the lab installs
`ca.crt` into the clients' trust store. Cached: existing files are reused and
only a missing (or CA-mismatched) node certificate is (re)issued.

    python -m lab.standins.tailscale.ca OUTDIR p620.tail1234.ts.net [more names...]
"""

from __future__ import annotations

import argparse
import secrets
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

CA_SUBJECT = "/O=llm-router-deploy lab/CN=llm-router-deploy lab CA (stand-in for Let's Encrypt)"


@dataclass(frozen=True)
class NodeCert:
    cert: Path
    key: Path


def _openssl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["openssl", *args], check=True, capture_output=True, text=True)


def ensure_ca(outdir: Path) -> tuple[Path, Path]:
    """Create (once) ca.key + ca.crt in outdir; return (ca_cert, ca_key)."""
    outdir.mkdir(parents=True, exist_ok=True)
    ca_cert, ca_key = outdir / "ca.crt", outdir / "ca.key"
    if not (ca_cert.is_file() and ca_key.is_file()):
        _openssl(
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            str(ca_key),
            "-out",
            str(ca_cert),
            "-days",
            "3650",
            "-subj",
            CA_SUBJECT,
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        )
        ca_key.chmod(0o600)
    return ca_cert, ca_key


def _valid(cert: Path, ca_cert: Path) -> bool:
    try:
        _openssl("verify", "-CAfile", str(ca_cert), str(cert))
        return True
    except subprocess.CalledProcessError:
        return False


def ensure_node_cert(outdir: Path, dns_name: str) -> NodeCert:
    """Issue (once) `<dns_name>.crt/.key` signed by the lab CA, with the name as DNS SAN."""
    ca_cert, ca_key = ensure_ca(outdir)
    cert, key = outdir / f"{dns_name}.crt", outdir / f"{dns_name}.key"
    if cert.is_file() and key.is_file() and _valid(cert, ca_cert):
        return NodeCert(cert, key)
    with tempfile.TemporaryDirectory() as tmp:
        csr, ext = Path(tmp) / "node.csr", Path(tmp) / "ext.cnf"
        ext.write_text(
            f"subjectAltName=DNS:{dns_name}\n"
            "basicConstraints=critical,CA:FALSE\n"
            "keyUsage=critical,digitalSignature\n"
            "extendedKeyUsage=serverAuth\n"
            "subjectKeyIdentifier=hash\n"
            "authorityKeyIdentifier=keyid,issuer\n"
        )
        _openssl(
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(csr),
            "-subj",
            f"/CN={dns_name}",
        )
        _openssl(
            "x509",
            "-req",
            "-in",
            str(csr),
            "-CA",
            str(ca_cert),
            "-CAkey",
            str(ca_key),
            "-set_serial",
            str(secrets.randbits(120)),
            "-days",
            "825",
            "-extfile",
            str(ext),
            "-out",
            str(cert),
        )
    key.chmod(0o600)
    return NodeCert(cert, key)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Lab CA + node certificates for the tailscale stand-in")
    parser.add_argument("outdir", type=Path)
    parser.add_argument("dns_names", nargs="*", help="e.g. p620.tail1234.ts.net")
    args = parser.parse_args(argv)
    ca_cert, _ = ensure_ca(args.outdir)
    print(ca_cert)
    for name in args.dns_names:
        print(ensure_node_cert(args.outdir, name).cert)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
