"""The shared base image: one debootstrap of Debian bookworm, cached as a zstd tarball keyed by its recipe.

Lab containers have no internet and no apt mirror, so everything an apply needs is installed here.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from lab.config import CACHE_DIR

SUITE = "bookworm"
VARIANT = "minbase"

# The one package list of the lab. Changing it (or POST_BUILD_SCRIPT) changes the recipe hash and
# triggers one rebuild on the next `lab up`.
PACKAGES: tuple[str, ...] = (
    "systemd",
    "systemd-sysv",
    "dbus",
    "libpam-systemd",  # logind: SSH logins get a user session, as on a real host
    "openssh-server",
    "iproute2",
    "nftables",
    "procps",
    "python3",
    "python3-venv",
    "curl",
    "ca-certificates",
    "sudo",
    "git",
    "zstd",
    "xz-utils",
    "jq",
    "less",
    "iputils-ping",
    "netcat-openbsd",
    "openssl",
    "caddy",
    # Installed but off: a before-boot hook (lab/firewall_hooks.py, LAB_SERVER_FIREWALL) turns one on for
    # the gpu_server, to test the deploy against a Fedora-like (firewalld) or Ubuntu-like (ufw) host.
    "firewalld",
    "ufw",
)

# Runs inside the fresh root (chroot) after debootstrap. Host keys and machine-id are removed so every
# container gets its own; caddy is installed but left to the deploy to enable; firewalld and ufw are
# installed but off, so a default lab host runs no firewall of its own.
POST_BUILD_SCRIPT = """\
set -eu
rm -f /etc/ssh/ssh_host_*
: > /etc/machine-id
rm -f /var/lib/dbus/machine-id
systemctl disable caddy.service >/dev/null 2>&1 || true
systemctl disable firewalld.service >/dev/null 2>&1 || true
sed -i 's/^ENABLED=.*/ENABLED=no/' /etc/ufw/ufw.conf
systemctl mask systemd-firstboot.service >/dev/null 2>&1 || true
mkdir -p /etc/ssh/sshd_config.d
cat > /etc/ssh/sshd_config.d/lab.conf <<'EOF'
# lab: root logs in with the lab key only; one ed25519 host key, fresh per container.
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
HostKey /etc/ssh/ssh_host_ed25519_key
UseDNS no
EOF
apt-get clean
rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin
"""


def debian_mirror(sources_dir: Path = Path("/etc/apt")) -> str:
    """The Debian mirror this machine is configured with (deb822 .sources first, then sources.list)."""
    deb822_files = sorted((sources_dir / "sources.list.d").glob("*.sources"))
    for path in deb822_files:
        mirror = mirror_from_deb822(path.read_text())
        if mirror:
            return mirror
    one_line_files = [sources_dir / "sources.list", *sorted((sources_dir / "sources.list.d").glob("*.list"))]
    for path in one_line_files:
        if path.exists():
            mirror = mirror_from_sources_list(path.read_text())
            if mirror:
                return mirror
    return "http://deb.debian.org/debian"


def mirror_from_deb822(text: str) -> str | None:
    """The URI of the first deb stanza serving SUITE, e.g. 'http://deb.debian.org/debian'."""
    for stanza in text.split("\n\n"):
        fields: dict[str, str] = {}
        for line in stanza.splitlines():
            if line.startswith(("#", " ")) or ":" not in line:
                continue
            key, value = line.split(":", 1)
            fields[key.strip().lower()] = value.strip()
        if "deb" in fields.get("types", "").split() and SUITE in fields.get("suites", "").split():
            uris = fields.get("uris", "").split()
            if uris:
                return uris[0]
    return None


def mirror_from_sources_list(text: str) -> str | None:
    for line in text.splitlines():
        words = line.split("#", 1)[0].split()
        if not words or words[0] != "deb":
            continue
        words = [word for word in words[1:] if not word.startswith("[")]
        if len(words) >= 2 and words[1] == SUITE:
            return words[0]
    return None


def recipe(mirror: str) -> dict[str, object]:
    return {
        "suite": SUITE,
        "variant": VARIANT,
        "mirror": mirror,
        "packages": sorted(PACKAGES),
        "post_build": POST_BUILD_SCRIPT,
    }


def recipe_hash(recipe_data: dict[str, object]) -> str:
    encoded = json.dumps(recipe_data, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(encoded).hexdigest()[:16]


BUILD_RECORD = CACHE_DIR / "last-build.json"


def tarball_path(key: str) -> Path:
    return CACHE_DIR / "images" / f"bookworm-{key}.tar.zst"


def rootfs_path(key: str) -> Path:
    return CACHE_DIR / "base" / key


def build_tarball(mirror: str, key: str, log: Path) -> Path:
    """debootstrap into a temporary directory, run the post-build script, pack it as tar.zst."""
    if shutil.which("debootstrap") is None:
        raise RuntimeError("building the lab image needs debootstrap: apt-get install -y debootstrap")
    target = tarball_path(key)
    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="build-", dir=target.parent))
    root = work / "root"
    try:
        with log.open("ab") as log_file:
            subprocess.run(
                [
                    "debootstrap",
                    f"--variant={VARIANT}",
                    f"--include={','.join(PACKAGES)}",
                    SUITE,
                    str(root),
                    mirror,
                ],
                check=True,
                stdout=log_file,
                stderr=subprocess.STDOUT,
            )
            (root / "etc/apt/sources.list").write_text(f"deb {mirror} {SUITE} main\n")
            subprocess.run(
                ["chroot", str(root), "/bin/sh", "-c", POST_BUILD_SCRIPT],
                check=True,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C"},
            )
        partial = target.with_suffix(".partial")
        subprocess.run(
            [
                "tar",
                "--numeric-owner",
                "--xattrs",
                "--acls",
                "-I",
                "zstd -T0 -6",
                "-C",
                str(root),
                "-cf",
                str(partial),
                ".",
            ],
            check=True,
        )
        partial.rename(target)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return target


def ensure_rootfs(log: Path | None = None) -> tuple[Path, dict[str, float]]:
    """The extracted base root for the current recipe, building and extracting only what is missing.

    Returns the path and the seconds spent building/extracting (empty when everything was cached).
    """
    key = recipe_hash(recipe(debian_mirror()))
    rootfs = rootfs_path(key)
    timings: dict[str, float] = {}
    if rootfs.is_dir():
        return rootfs, timings
    tarball = tarball_path(key)
    if not tarball.exists():
        started = time.monotonic()
        build_tarball(debian_mirror(), key, log or CACHE_DIR / "build.log")
        timings["build_seconds"] = time.monotonic() - started
        # Kept for bench/lab_bench.py, which reports the cold build without rebuilding.
        BUILD_RECORD.write_text(
            json.dumps({"key": key, "build_seconds": timings["build_seconds"], "at": time.time()})
        )
    started = time.monotonic()
    rootfs.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f"{key}-", dir=rootfs.parent))
    subprocess.run(
        [
            "tar",
            "--numeric-owner",
            "--xattrs",
            "--acls",
            "-I",
            "zstd",
            "-C",
            str(partial),
            "-xf",
            str(tarball),
        ],
        check=True,
    )
    partial.chmod(0o755)
    partial.rename(rootfs)
    timings["extract_seconds"] = time.monotonic() - started
    return rootfs, timings


if __name__ == "__main__":
    path, spent = ensure_rootfs()
    print(path, spent)
