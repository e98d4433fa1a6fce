"""What lab hosts get before they boot: overlay trees and before-boot hooks (see lab/README.md).

- Trees: `lab/overlay/<selector>/` is copied into a host's upper layer at `up`, where selector is `all`, a
  role (`gpu_server`, `client`) or a host name, applied in that order. Modes and symlinks are kept (drop a
  `multi-user.target.wants/x.service` symlink to enable a unit); owner is root.
- Hooks: every function in BEFORE_BOOT_HOOKS (and any passed to `register_before_boot`) is called as
  `hook(host: LabHost, upper: Path, base: Path)` for every host with its (not yet mounted) upper layer;
  lab/upper_layer.py writes there with the right parent modes.
- After boot: `lab.install_file(host, path, content, mode)` writes into a running host.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

from lab.config import LabHost
from lab.firewall_hooks import enable_server_firewall
from lab.standin_hooks import install_tailscale
from lab.upper_layer import ensure_upper_dir

OVERLAY_DIR = Path(__file__).resolve().parent / "overlay"
IGNORED_NAMES = {".keep", ".gitkeep", "README.md"}

BeforeBootHook = Callable[[LabHost, Path, Path], object]
# Run for every host before it boots, in this order: the tailscale stand-in (and the lab CA) on every
# host, then the gpu_server's firewalld or ufw when LAB_SERVER_FIREWALL asks for one.
BEFORE_BOOT_HOOKS: tuple[BeforeBootHook, ...] = (install_tailscale, enable_server_firewall)
_registered_hooks: list[BeforeBootHook] = []


def register_before_boot(hook: BeforeBootHook) -> None:
    """Run `hook(host, upper, base)` for every host of the next `up` in this process."""
    _registered_hooks.append(hook)


def before_boot_hooks() -> list[BeforeBootHook]:
    return [*_registered_hooks, *BEFORE_BOOT_HOOKS]


def overlay_selectors(host: LabHost) -> list[str]:
    return ["all", *sorted(host.roles), host.name]


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
