"""The lab: the reference topology (p620, razer, LAN, tailnet, public) on one Linux machine, with
systemd-nspawn containers and network namespaces. `python -m lab up|down|status|ssh|exec`."""

from lab.config import LabConfig, load_config
from lab.core import (
    LabError,
    down,
    exec_command,
    install_file,
    missing_capabilities,
    run,
    ssh_command,
    status,
    up,
)

__all__ = [
    "LabConfig",
    "LabError",
    "down",
    "exec_command",
    "install_file",
    "load_config",
    "missing_capabilities",
    "run",
    "ssh_command",
    "status",
    "up",
]
