"""Build the LAB STAND-IN Ollama release, laid out like the official Linux release.

Why: the real tarballs cannot be downloaded in the lab sandbox, but the deploy's
download -> sha256 verify -> extract path must run. Output (same names and
layout as https://github.com/ollama/ollama/releases):

- ``ollama-linux-amd64.tar.zst``: ``bin/ollama`` (a ``#!/usr/bin/python3`` launcher)
  and ``lib/ollama/standin/`` (this package's stdlib-only implementation);
- ``ollama-linux-amd64-rocm.tar.zst``: the add-on extracted over it,
  ``lib/ollama/rocm/`` marker files (the stand-in then reports a ROCm GPU);
- ``sha256sum.txt``: ``<sha256>  ./<file>`` lines for both.

Reproducible: fixed mtimes/owners/modes, sorted entries, single-threaded zstd.

    python -m lab.standins.ollama.build OUTDIR --version 0.13.5
"""

from __future__ import annotations

import argparse
import hashlib
import io
import subprocess
import tarfile
from pathlib import Path

from inventory.pin import SUMS_FILE  # the release's sums file: one name, the one `inventory pin` reads

from .models import DEFAULT_VERSION

PACKAGE_DIR = Path(__file__).resolve().parent
MAIN_TARBALL = "ollama-linux-amd64.tar.zst"
ROCM_TARBALL = "ollama-linux-amd64-rocm.tar.zst"
# 2025-12-01T00:00:00Z: every entry gets this mtime so the bytes never depend on the build time.
FIXED_MTIME = 1764547200
IMPLEMENTATION_FILES = ("__init__.py", "models.py", "replies.py", "server.py", "cli.py", "catalogue.json")

LAUNCHER = """#!/usr/bin/python3
# LAB STAND-IN for the ollama binary (the real release cannot be fetched in the
# lab sandbox). The implementation lives in ../lib/ollama/standin/.
import os
import sys

sys.dont_write_bytecode = True  # the extracted release stays byte-for-byte as shipped
_root = os.path.dirname(os.path.dirname(os.path.realpath(__file__)))
sys.path.insert(0, os.path.join(_root, "lib", "ollama"))
from standin.cli import main  # noqa: E402

sys.exit(main())
"""

MAIN_MARKER = """LAB STAND-IN: this is not the real Ollama release.
The real tarball cannot be fetched in the lab sandbox; bin/ollama runs the
stdlib-only Python stand-in in lib/ollama/standin/ with Ollama's API shape.
"""

ROCM_MARKER = """LAB STAND-IN ROCm add-on: marker files only, no GPU libraries.
Its presence (lib/ollama/rocm/) makes the Ollama stand-in report a ROCm GPU
(size_vram == size in /api/ps, "100% GPU" in `ollama ps`).
"""


def _tar_zst(entries: list[tuple[str, bytes | None, int]]) -> bytes:
    """entries: (path, content or None for a directory, mode) -> zstd-compressed tar bytes."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for path, content, mode in sorted(entries):
            info = tarfile.TarInfo(path)
            info.mtime, info.uid, info.gid, info.uname, info.gname = FIXED_MTIME, 0, 0, "root", "root"
            info.mode = mode
            if content is None:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            else:
                info.size = len(content)
                tar.addfile(info, io.BytesIO(content))
    return subprocess.run(
        ["zstd", "-q", "-19", "--single-thread", "-c"],
        input=raw.getvalue(),
        stdout=subprocess.PIPE,
        check=True,
    ).stdout


def main_entries(version: str) -> list[tuple[str, bytes | None, int]]:
    entries: list[tuple[str, bytes | None, int]] = [
        ("bin", None, 0o755),
        ("bin/ollama", LAUNCHER.encode(), 0o755),
        ("lib", None, 0o755),
        ("lib/ollama", None, 0o755),
        ("lib/ollama/STANDIN-README.txt", MAIN_MARKER.encode(), 0o644),
        ("lib/ollama/standin", None, 0o755),
        ("lib/ollama/standin/VERSION", f"{version}\n".encode(), 0o644),
    ]
    entries += [
        (f"lib/ollama/standin/{name}", (PACKAGE_DIR / name).read_bytes(), 0o644)
        for name in IMPLEMENTATION_FILES
    ]
    return entries


def rocm_entries() -> list[tuple[str, bytes | None, int]]:
    return [
        ("lib", None, 0o755),
        ("lib/ollama", None, 0o755),
        ("lib/ollama/rocm", None, 0o755),
        ("lib/ollama/rocm/STANDIN-README.txt", ROCM_MARKER.encode(), 0o644),
        ("lib/ollama/rocm/libggml-hip.so", b"LAB STAND-IN placeholder, not a shared library\n", 0o644),
    ]


def build_release(outdir: Path, version: str = DEFAULT_VERSION) -> dict[str, str]:
    """Write both tarballs and sha256sum.txt into outdir; return {tarball name: sha256}."""
    outdir.mkdir(parents=True, exist_ok=True)
    sums: dict[str, str] = {}
    for name, entries in ((MAIN_TARBALL, main_entries(version)), (ROCM_TARBALL, rocm_entries())):
        data = _tar_zst(entries)
        (outdir / name).write_bytes(data)
        sums[name] = hashlib.sha256(data).hexdigest()
    (outdir / SUMS_FILE).write_text("".join(f"{digest}  ./{name}\n" for name, digest in sorted(sums.items())))
    return sums


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("outdir", type=Path)
    parser.add_argument("--version", default=DEFAULT_VERSION)
    args = parser.parse_args(argv)
    for name, digest in build_release(args.outdir, args.version).items():
        print(f"{digest}  {args.outdir / name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
