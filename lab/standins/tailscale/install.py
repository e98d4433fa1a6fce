"""Install the LAB STAND-IN tailscale into a root filesystem (a lab container's tree).

Stand-in because the real tailscale package cannot be fetched or run in the lab
sandbox. Layout mirrors the Debian package: /usr/bin/tailscale,
/usr/sbin/tailscaled (both `#!/usr/bin/python3` launchers),
/usr/lib/systemd/system/tailscaled.service, /etc/default/tailscaled; the code
goes to /usr/lib/tailscale-standin/tailscale_standin/.

    python -m lab.standins.tailscale.install ROOT [--config node.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

PACKAGE_DIR = Path(__file__).resolve().parent
CODE_FILES = ("__init__.py", "state.py", "cli.py", "daemon.py")

LAUNCHER = """#!/usr/bin/python3
# LAB STAND-IN for {program} (real tailscale cannot run in the lab sandbox).
# Implementation: /usr/lib/tailscale-standin/tailscale_standin/{module}.py
import os
import sys

sys.dont_write_bytecode = True  # leave the installed tree as installed
_usr = os.path.dirname(os.path.dirname(os.path.realpath(__file__)))
sys.path.insert(0, os.path.join(_usr, "lib", "tailscale-standin"))
from tailscale_standin.{module} import main  # noqa: E402

sys.exit(main())
"""

DEFAULTS = '# LAB STAND-IN: same variables as the real /etc/default/tailscaled\nPORT="41641"\nFLAGS=""\n'


def install_into(root: Path, node_config: dict[str, Any] | None = None) -> list[Path]:
    """Write the stand-in into `root`; with node_config also /etc/tailscale-standin.json."""
    files: dict[str, tuple[str | bytes, int]] = {
        "usr/bin/tailscale": (LAUNCHER.format(program="the tailscale CLI", module="cli"), 0o755),
        "usr/sbin/tailscaled": (LAUNCHER.format(program="tailscaled", module="daemon"), 0o755),
        "usr/lib/systemd/system/tailscaled.service": (
            (PACKAGE_DIR / "tailscaled.service").read_text(),
            0o644,
        ),
        "etc/default/tailscaled": (DEFAULTS, 0o644),
    }
    for name in CODE_FILES:
        files[f"usr/lib/tailscale-standin/tailscale_standin/{name}"] = (
            (PACKAGE_DIR / name).read_bytes(),
            0o644,
        )
    if node_config is not None:
        files["etc/tailscale-standin.json"] = (json.dumps(node_config, indent=2) + "\n", 0o644)
    written = []
    for rel, (content, mode) in sorted(files.items()):
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, str):
            path.write_text(content)
        else:
            path.write_bytes(content)
        path.chmod(mode)
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Install the tailscale stand-in into a root tree")
    parser.add_argument("root", type=Path)
    parser.add_argument(
        "--config", type=Path, help="node config JSON to install as /etc/tailscale-standin.json"
    )
    args = parser.parse_args(argv)
    config = json.loads(args.config.read_text()) if args.config else None
    for path in install_into(args.root, config):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
