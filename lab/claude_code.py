"""The Claude Code CLI for lab clients, installed the way a user has it (not the deploy's job).

The npm package ships its native linux-x64 binary in a platform package; it is fetched once on the control
machine with `npm pack` and offered to client containers as an extra read-only overlay layer holding
/usr/local/bin/claude (where `npm install -g` links it), so `up` copies nothing.
"""

from __future__ import annotations

import subprocess
import tarfile
import tempfile
from pathlib import Path

from lab.config import CACHE_DIR

CLAUDE_CODE_VERSION = "2.1.330"
PLATFORM_PACKAGE = "@anthropic-ai/claude-code-linux-x64"
INSTALLED_PATH = "usr/local/bin/claude"


def layer_path(version: str = CLAUDE_CODE_VERSION) -> Path:
    return CACHE_DIR / "layers" / f"claude-code-{version}"


def tarball_name(version: str) -> str:
    # npm pack's file name for a scoped package: scope and name joined by '-', '@' dropped.
    return f"{PLATFORM_PACKAGE.lstrip('@').replace('/', '-')}-{version}.tgz"


def ensure_layer(version: str = CLAUDE_CODE_VERSION) -> Path:
    """The overlay layer with the claude binary, fetching the npm package on first use."""
    layer = layer_path(version)
    if (layer / INSTALLED_PATH).is_file():
        return layer
    download_dir = CACHE_DIR / "claude"
    download_dir.mkdir(parents=True, exist_ok=True)
    tarball = download_dir / tarball_name(version)
    if not tarball.exists():
        subprocess.run(
            ["npm", "pack", "--silent", f"{PLATFORM_PACKAGE}@{version}"],
            cwd=download_dir,
            check=True,
            capture_output=True,
        )
    partial = Path(tempfile.mkdtemp(prefix="claude-", dir=download_dir))
    with tarfile.open(tarball) as archive:
        member = archive.getmember("package/claude")
        source = archive.extractfile(member)
        assert source is not None
        target = partial / INSTALLED_PATH
        target.parent.mkdir(parents=True)
        with target.open("wb") as output:
            while chunk := source.read(1 << 20):
                output.write(chunk)
    target.chmod(0o755)
    for directory in (partial / "usr/local/bin", partial / "usr/local", partial / "usr", partial):
        directory.chmod(0o755)
    layer.parent.mkdir(parents=True, exist_ok=True)
    partial.rename(layer)
    return layer
