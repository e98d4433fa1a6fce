"""Writing into a lab host's upper layer before it is mounted (the host has not booted yet).

Used by the overlay trees and the before-boot hooks (lab/overlay.py) and by lab/containers.py.
"""

from __future__ import annotations

import os
from pathlib import Path


def ensure_upper_dir(upper: Path, lower: Path, relative: Path) -> Path:
    """Create `relative` inside the upper layer; each new directory copies the mode and owner of its
    twin in the lower layer, so the merged view keeps e.g. /root at 0700 and /etc at 0755."""
    current_upper, current_lower = upper, lower
    for part in relative.parts:
        current_upper, current_lower = current_upper / part, current_lower / part
        if current_upper.is_dir():
            continue
        current_upper.mkdir()
        if current_lower.is_dir() and not current_lower.is_symlink():
            stat = current_lower.stat()
            os.chown(current_upper, stat.st_uid, stat.st_gid)
            current_upper.chmod(stat.st_mode & 0o7777)
        else:
            current_upper.chmod(0o755)
    return current_upper


def write_upper_file(
    upper: Path, lower: Path, path: str, content: bytes | str, mode: int = 0o644, uid: int = 0, gid: int = 0
) -> Path:
    """Write `path` (absolute inside the host) into an upper layer that is not mounted yet."""
    relative = Path(path.lstrip("/"))
    ensure_upper_dir(upper, lower, relative.parent)
    target = upper / relative
    if target.is_symlink() or target.exists():
        target.unlink()
    target.write_bytes(content.encode() if isinstance(content, str) else content)
    os.chown(target, uid, gid)
    target.chmod(mode)
    return target
