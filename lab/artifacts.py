"""What the lab's deploy uploads from the workstation, prepared once and reused.

- the Ollama stand-in, packaged like the official release (tarballs + sha256sum.txt), into the
  `source.local_dir` that inventory/lab.yaml names; its sha256s must equal the inventory's pins,
  exactly as a user's download must equal the release's published sums;
- the LiteLLM wheelhouse (pinned litellm[proxy] + prisma) for the router's offline install.
"""

from __future__ import annotations

from pathlib import Path

from inventory.derive import ollama_archives
from inventory.load import load_inventory
from lab.config import INVENTORY_PATH
from lab.standins.ollama.build import build_release


class ArtifactMismatch(RuntimeError):
    pass


def prepare_artifacts(inventory_path: Path = INVENTORY_PATH) -> None:
    inv = load_inventory(inventory_path)
    for host in inv.servers:
        server = host.server
        assert server is not None
        ollama = server.ollama
        if ollama.source.kind == "upload":
            sums = build_release(inv.resolve_path(ollama.source.local_dir), ollama.version)
            for name, pinned in ollama_archives(ollama):
                if sums.get(name) != pinned:
                    raise ArtifactMismatch(
                        f"{inventory_path}: the stand-in's {name} has sha256 {sums.get(name)} but the inventory pins "
                        f"{pinned}; after changing lab/standins/ollama, update the pin in {inventory_path}")
        if server.router.install_source == "wheelhouse" and server.router.wheelhouse_dir is not None:
            from deploys.wheelhouse import build

            build(server.router.litellm_version, server.router.prisma_version,
                  inv.resolve_path(server.router.wheelhouse_dir))
