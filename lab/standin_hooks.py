"""Before-boot hooks that put the stand-ins on lab hosts (see lab/standins/README.md).

Every host on the tailnet gets the tailscale stand-in (CLI, daemon, enabled unit) with a
certificate for its MagicDNS name signed by the lab CA; every host trusts that CA, the way
real tailnet clients trust tailscale's Let's Encrypt certificates.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from lab.config import CACHE_DIR, LabHost
from lab.standins.tailscale.ca import ensure_ca, ensure_node_cert
from lab.standins.tailscale.install import install_into
from lab.upper_layer import ensure_upper_dir, write_upper_file

CA_DIR = CACHE_DIR / "tailnet-ca"
CA_IN_HOST = "/usr/local/share/ca-certificates/lab-tailnet-ca.crt"
SYSTEM_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"


def trust_lab_ca(upper: Path, base: Path) -> None:
    ca_cert, _ = ensure_ca(CA_DIR)
    pem = ca_cert.read_text()
    write_upper_file(upper, base, CA_IN_HOST, pem)
    # What update-ca-certificates would produce, without running anything in the container.
    bundle = (base / SYSTEM_BUNDLE.lstrip("/")).read_text() if (base / SYSTEM_BUNDLE.lstrip("/")).exists() else ""
    write_upper_file(upper, base, SYSTEM_BUNDLE, bundle + pem)
    # Claude Code (Bun) and Node read their own CA list plus this variable.
    profile = f"export NODE_EXTRA_CA_CERTS={CA_IN_HOST}\n"
    write_upper_file(upper, base, "/etc/profile.d/lab-tailnet-ca.sh", profile)
    write_upper_file(upper, base, "/etc/environment", f"NODE_EXTRA_CA_CERTS={CA_IN_HOST}\n")


def install_tailscale(host: LabHost, upper: Path, base: Path) -> None:
    trust_lab_ca(upper, base)
    if not (host.tailnet_interface and host.tailnet_dns_name and host.tailnet_address):
        return
    hostname, _, tailnet = host.tailnet_dns_name.partition(".")
    install_into(upper, {"hostname": hostname, "tailnet": tailnet, "dns_name": host.tailnet_dns_name,
                         "tailscale_ips": [host.tailnet_address], "interface": host.tailnet_interface})
    wants = ensure_upper_dir(upper, base, Path("etc/systemd/system/multi-user.target.wants"))
    link = wants / "tailscaled.service"
    if not link.is_symlink():
        link.symlink_to("/usr/lib/systemd/system/tailscaled.service")
    cert = ensure_node_cert(CA_DIR, host.tailnet_dns_name)
    certs = ensure_upper_dir(upper, base, Path("var/lib/tailscale/certs"))
    for source, suffix, mode in ((cert.cert, ".crt", 0o644), (cert.key, ".key", 0o600)):
        target = certs / f"{host.tailnet_dns_name}{suffix}"
        shutil.copyfile(source, target)
        target.chmod(mode)
