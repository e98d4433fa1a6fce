"""Secrets on the workstation: files in the inventory's gitignored secrets directory.

A secret is created once (mode 0600 in a 0700 directory) and read on every
apply. Files that others could read are refused instead of used: a key that
leaked to another local user is no longer a secret, and silently fixing the
mode would hide that. Values are returned, never logged or put in messages.

Secrets are created while pyinfra builds the deploy, so a `--dry` run creates
missing ones too: the apply that follows then deploys exactly the values the
dry run planned with.
"""

from __future__ import annotations

import os
import secrets as random_source
import stat
from collections.abc import Callable
from pathlib import Path

from inventory.model import Inventory

# 48 random bytes = 64 url-safe characters after the prefix.
KEY_BYTES = 48
KEY_PREFIX = "sk-"


class SecretError(Exception):
    """A secret file cannot be used safely (mode, owner, type or content)."""


def new_key() -> str:
    """A fresh API key: `sk-` and 48 random bytes, url-safe base64 (no padding)."""
    return KEY_PREFIX + random_source.token_urlsafe(KEY_BYTES)


def secrets_dir(inv: Inventory, create: bool = True) -> Path:
    """The secrets directory, created 0700 if absent; refused if group or others can enter it."""
    path = inv.secrets_path
    if create and not path.exists():
        # Parents are ordinary directories (e.g. .cache/lab); only the last one is private.
        path.parent.mkdir(parents=True, exist_ok=True)
        path.mkdir(mode=0o700)
    if path.exists():
        check_private(path, want_dir=True)
    return path


def check_private(path: Path, want_dir: bool = False) -> None:
    """Raise SecretError unless `path` is a plain file (or directory) only its owner can use."""
    info = os.lstat(path)
    kind_ok = stat.S_ISDIR(info.st_mode) if want_dir else stat.S_ISREG(info.st_mode)
    if not kind_ok:
        raise SecretError(f"{path} must be a {'directory' if want_dir else 'regular file'} "
                          "(symlinks and other types are refused)")
    if info.st_uid != os.geteuid():
        raise SecretError(f"{path} is owned by uid {info.st_uid}, not by the user running the deploy "
                          f"(uid {os.geteuid()}); fix with: chown $(id -u) {path}")
    loose = stat.S_IMODE(info.st_mode) & 0o077
    if loose:
        wanted = "700" if want_dir else "600"
        raise SecretError(f"{path} has mode {stat.S_IMODE(info.st_mode):03o}: group/others may read it. "
                          f"If that was intended for nobody, fix with: chmod {wanted} {path} "
                          "(and consider the secret leaked: rotate it)")


def secret_path(inv: Inventory, name: str) -> Path:
    if not name or "/" in name or name in (".", ".."):
        raise SecretError(f"secret name {name!r} must be a plain file name")
    return inv.secrets_path / name


def read_secret(inv: Inventory, name: str) -> str | None:
    """The secret's value, or None if the file does not exist."""
    path = secret_path(inv, name)
    if not path.exists() and not path.is_symlink():
        return None
    secrets_dir(inv, create=False)
    check_private(path)
    value = path.read_text(encoding="utf-8").strip()
    if not value or "\n" in value:
        raise SecretError(f"{path} must hold exactly one non-empty line")
    return value


def write_secret(inv: Inventory, name: str, value: str) -> Path:
    """Write (or replace) a secret atomically: a 0600 temp file renamed over the target."""
    if not value or "\n" in value:
        raise SecretError(f"refusing to write an empty or multi-line value to secret {name!r}")
    path = secret_path(inv, name)
    secrets_dir(inv)
    temp = path.with_name(f".{path.name}.tmp")
    if temp.exists() or temp.is_symlink():
        temp.unlink()
    # O_EXCL + 0600 at creation: the value is never in a file others could open, not even briefly.
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, (value + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temp, path)
    return path


def remove_secret(inv: Inventory, name: str) -> bool:
    """Delete a secret file; True if it existed."""
    path = secret_path(inv, name)
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    return True


def ensure_secret(inv: Inventory, name: str, generate: Callable[[], str] | None = new_key) -> str:
    """The secret `name`, created with `generate()` if absent (None: absence is an error)."""
    value = read_secret(inv, name)
    if value is not None:
        return value
    if generate is None:
        raise SecretError(f"secret {name!r} is missing: put it in {secret_path(inv, name)} (mode 0600)")
    value = generate()
    try:
        # O_EXCL: two deploys racing to create the same key cannot both win with different values.
        secrets_dir(inv)
        fd = os.open(secret_path(inv, name), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return ensure_secret(inv, name, None)
    try:
        os.write(fd, (value + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    return value
