"""Hook points for other parts of the lab to put files on hosts.

- Before boot: a tree under `lab/overlay/<selector>/` is copied into a host's upper layer at `up`, where
  selector is `all`, a role (`gpu_server`, `client`) or a host name, applied in that order. Modes and
  symlinks are kept (drop a `multi-user.target.wants/x.service` symlink to enable a unit); owner is root.
- Before boot, from Python: a hook `function(host: LabHost, upper: Path, base: Path)` named in
  BEFORE_BOOT_HOOKS ("module:function") or passed to `register_before_boot` is called for every host with
  its (not yet mounted) upper layer; `write_upper_file` writes there with the right parent modes.
- After boot: `lab.install_file(host, path, content, mode)` writes into a running host.
"""

from __future__ import annotations

import importlib
import os
import shutil
from collections.abc import Callable
from pathlib import Path

from lab.config import LabHost

OVERLAY_DIR = Path(__file__).resolve().parent / "overlay"
IGNORED_NAMES = {".keep", ".gitkeep", "README.md"}

BeforeBootHook = Callable[[LabHost, Path, Path], object]
# "module:function" hooks run for every host before it boots, e.g. installing a stand-in.
BEFORE_BOOT_HOOKS: list[str] = ["lab.standin_hooks:install_tailscale", "lab.firewall_hooks:enable_server_firewall"]
_registered_hooks: list[BeforeBootHook] = []


def register_before_boot(hook: BeforeBootHook) -> None:
    """Run `hook(host, upper, base)` for every host of the next `up` in this process."""
    _registered_hooks.append(hook)


def before_boot_hooks() -> list[BeforeBootHook]:
    hooks = list(_registered_hooks)
    for name in BEFORE_BOOT_HOOKS:
        module_name, function_name = name.split(":")
        hooks.append(getattr(importlib.import_module(module_name), function_name))
    return hooks


def overlay_selectors(host: LabHost) -> list[str]:
    return ["all", *sorted(host.roles), host.name]


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


def copy_overlay_tree(source: Path, upper: Path, lower: Path) -> list[str]:
    """Copy a `lab/overlay/<selector>` tree into the upper layer; returns the host paths written."""
    written = []
    for directory, subdirectories, files in os.walk(source):
        relative_dir = Path(directory).relative_to(source)
        for name in sorted(files) + [d for d in subdirectories if (Path(directory) / d).is_symlink()]:
            if name in IGNORED_NAMES:
                continue
            origin = Path(directory) / name
            relative = relative_dir / name
            ensure_upper_dir(upper, lower, relative_dir)
            target = upper / relative
            if target.is_symlink() or target.is_file():
                target.unlink()
            if origin.is_symlink():
                target.symlink_to(os.readlink(origin))
                os.lchown(target, 0, 0)
            else:
                shutil.copyfile(origin, target)
                os.chown(target, 0, 0)
                target.chmod(origin.stat().st_mode & 0o7777)
            written.append("/" + str(relative))
    return written


def apply_overlays(host: LabHost, upper: Path, lower: Path, overlay_dir: Path = OVERLAY_DIR) -> list[str]:
    """The overlay trees for this host, then the before-boot hooks; returns the tree files written."""
    written = []
    for selector in overlay_selectors(host):
        source = overlay_dir / selector
        if source.is_dir():
            written += copy_overlay_tree(source, upper, lower)
    for hook in before_boot_hooks():
        hook(host, upper, lower)
    return written
