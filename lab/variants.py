"""Variants of an inventory file for rehearsals, tests and benchmarks.

A variant is written elsewhere than its source, so every relative path in it
(secrets, SSH key, known_hosts, artifact dirs) is made absolute first.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ruamel.yaml import YAML


def _absolute(base: Path, value: str) -> str:
    path = Path(value).expanduser()
    return str(path if path.is_absolute() else (base / path).resolve())


def write_variant(source: Path, dest: Path, edit: Callable[[dict], None] | None = None) -> Path:
    """Copy `source` to `dest` with relative paths made absolute, after `edit(document)` changed it."""
    yaml = YAML()
    data = yaml.load(source.read_text())
    base = source.parent
    if "secrets_dir" in data:
        data["secrets_dir"] = _absolute(base, data["secrets_dir"])
    for host in data["hosts"].values():
        for key in ("key", "known_hosts"):
            if host.get("ssh", {}).get(key):
                host["ssh"][key] = _absolute(base, host["ssh"][key])
        server = host.get("server") or {}
        source_section = server.get("ollama", {}).get("source") or {}
        if source_section.get("local_dir"):
            source_section["local_dir"] = _absolute(base, source_section["local_dir"])
        if server.get("router", {}).get("wheelhouse_dir"):
            server["router"]["wheelhouse_dir"] = _absolute(base, server["router"]["wheelhouse_dir"])
    if edit is not None:
        edit(data)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with dest.open("w") as f:
        yaml.dump(data, f)
    return dest
