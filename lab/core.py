"""up / down / status / exec / ssh of one lab instance."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

from lab import network
from lab.claude_code import ensure_layer as ensure_claude_code_layer
from lab.config import CACHE_DIR, KNOWN_HOSTS_PATH, LAB_KEY_PATH, LabConfig, load_config
from lab.containers import Container, remove_empty_cgroup_parents
from lab.image import ensure_rootfs
from lab.topology import Node, Topology, build_topology, ssh_address

BOOT_TIMEOUT_SECONDS = 120.0
REQUIRED_COMMANDS = ("systemd-nspawn", "ip", "nft", "unshare", "nsenter", "ssh", "ssh-keygen", "zstd", "tar")


class LabError(RuntimeError):
    """A condition the user can fix (not root, a missing tool, a clashing route)."""


def missing_capabilities() -> list[str]:
    """What this machine lacks to run the lab; empty when it can."""
    missing = []
    if os.geteuid() != 0:
        missing.append("root (the lab creates network namespaces, mounts and containers)")
    for command in REQUIRED_COMMANDS:
        if shutil.which(command) is None:
            missing.append(f"the {command} command")
    try:
        filesystems = Path("/proc/filesystems").read_text()
    except OSError:
        filesystems = ""
    if "\toverlay\n" not in filesystems:
        missing.append("overlayfs in the kernel")
    return missing


def require_capabilities() -> None:
    missing = missing_capabilities()
    if missing:
        raise LabError(
            "the lab cannot run here; missing: "
            + "; ".join(missing)
            + ". Run as root on Linux with systemd-container, iproute2 and nftables installed."
        )


def containers(topology: Topology) -> list[Container]:
    return [Container(topology.config, node) for node in topology.hosts]


def ensure_lab_key() -> str:
    """The lab's SSH key pair (created once); returns the public key line."""
    if not LAB_KEY_PATH.exists():
        LAB_KEY_PATH.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [
                "ssh-keygen",
                "-q",
                "-t",
                "ed25519",
                "-N",
                "",
                "-C",
                "llm-router-deploy-lab",
                "-f",
                str(LAB_KEY_PATH),
            ],
            check=True,
        )
    return LAB_KEY_PATH.with_suffix(".pub").read_text()


def merge_known_hosts(existing: str, new_lines: list[str]) -> str:
    """Replace the entries of the names in `new_lines`, keep everyone else's."""
    new_names = {line.split()[0] for line in new_lines}
    kept = [line for line in existing.splitlines() if line.strip() and line.split()[0] not in new_names]
    return "\n".join(kept + new_lines) + "\n"


def _state_file(config: LabConfig) -> Path:
    return config.state_dir / "state.json"


def is_up(topology: Topology) -> bool:
    present = set(network.present_namespaces(topology))
    return present == set(topology.namespaces) and all(
        container.is_running() for container in containers(topology)
    )


@contextmanager
def _locked(name: str) -> Iterator[None]:
    """One `up`/`down` per instance at a time (e.g. a pytest session and a user's CLI), one image build."""
    lock_dir = CACHE_DIR / "locks"
    lock_dir.mkdir(parents=True, exist_ok=True)
    with (lock_dir / f"{name}.lock").open("w") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        yield


def up(config: LabConfig | None = None) -> dict[str, object]:
    """Bring the lab up (or keep a running one). Returns whether it was reused, timings in seconds and
    each host's `systemctl is-system-running` answer."""
    require_capabilities()
    config = config or load_config()
    with _locked(config.prefix):
        return _up(config)


def _up(config: LabConfig) -> dict[str, object]:
    topology = build_topology(config)
    timings: dict[str, float] = {}
    if is_up(topology):
        return {"reused": True, "timings": timings, "states": {}}
    _down(config)  # whatever half of an earlier lab is left
    clashes = network.clashing_routes(topology)
    if clashes:
        raise LabError(
            f"the lab's subnets overlap routes of this machine ({', '.join(clashes)}); "
            "choose others with LAB_LAN_SUBNET / LAB_TAILNET_SUBNET / LAB_PUBLIC_SUBNET"
        )
    has_clients = any(node.host is not None and "client" in node.host.roles for node in topology.hosts)
    with _locked("image"):
        base, image_timings = ensure_rootfs()
        claude_layer = ensure_claude_code_layer() if has_clients else None
    timings.update(image_timings)

    started = time.monotonic()
    config.state_dir.mkdir(parents=True, exist_ok=True)
    _state_file(config).write_text(
        json.dumps(
            {
                "namespaces": list(topology.namespaces),
                "hosts": [node.name for node in topology.hosts],
                "control_interface": topology.control_interface.name,
            }
        )
    )
    try:
        public_key = ensure_lab_key()
        network.create(topology)
        known_hosts: list[str] = []
        for container in containers(topology):
            known_hosts += container.prepare(topology, base, public_key)
            container.start(_layers(container, base, claude_layer))
        existing = KNOWN_HOSTS_PATH.read_text() if KNOWN_HOSTS_PATH.exists() else ""
        KNOWN_HOSTS_PATH.write_text(merge_known_hosts(existing, known_hosts))
        deadline = time.monotonic() + BOOT_TIMEOUT_SECONDS
        with ThreadPoolExecutor(max_workers=len(topology.hosts) or 1) as pool:
            states = list(pool.map(lambda container: container.wait_ready(deadline), containers(topology)))
    except BaseException:
        _down(config)
        raise
    timings["up_seconds"] = time.monotonic() - started
    host_states = {container.node.name: state for container, state in zip(containers(topology), states)}
    return {"reused": False, "timings": timings, "states": host_states}


def _layers(container: Container, base: Path, claude_layer: Path | None) -> list[Path]:
    host = container.node.host
    if claude_layer is not None and host is not None and "client" in host.roles:
        return [claude_layer, base]
    return [base]


def reboot(name: str, config: LabConfig | None = None) -> str:
    """Shut a host down cleanly and boot it again on the same upper layer (state survives, as on a
    real reboot); returns its `systemctl is-system-running` answer."""
    config = config or load_config()
    topology = build_topology(config)
    node = topology.node(name)
    if node.kind != "host":
        raise LabError(f"{name} is a peer: only hosts boot")
    container = Container(config, node)
    with _locked(config.prefix):
        nspawn = container.nspawn_pid()
        if nspawn is None:
            raise LabError(f"lab host {name} is not running")
        subprocess.run(container.exec_command(["systemctl", "poweroff"]), check=False, capture_output=True)
        deadline = time.monotonic() + BOOT_TIMEOUT_SECONDS
        while container.nspawn_pid() is not None and time.monotonic() < deadline:
            time.sleep(0.05)
        if container.nspawn_pid() is not None:
            raise LabError(f"lab host {name} did not power off; see {container.log_path}")
        with _locked("image"):
            base, _ = ensure_rootfs()
            claude_layer = ensure_claude_code_layer() if node.host and "client" in node.host.roles else None
        container.start(_layers(container, base, claude_layer))
        return container.wait_ready(time.monotonic() + BOOT_TIMEOUT_SECONDS)


def down(config: LabConfig | None = None) -> None:
    """Remove everything of this instance; safe to run any number of times."""
    require_capabilities()
    config = config or load_config()
    with _locked(config.prefix):
        _down(config)


def _down(config: LabConfig) -> None:
    topology = build_topology(config)
    recorded: dict[str, list[str]] = {}
    if _state_file(config).exists():
        recorded = json.loads(_state_file(config).read_text())
    host_names = {node.name for node in topology.hosts} | set(recorded.get("hosts", []))
    hosts_dir = config.state_dir / "hosts"
    if hosts_dir.is_dir():
        host_names |= {path.name for path in hosts_dir.iterdir()}
    by_name = {node.name: node for node in topology.hosts}
    with ThreadPoolExecutor(max_workers=max(1, len(host_names))) as pool:
        list(
            pool.map(
                lambda name: Container(
                    config, by_name.get(name) or Node(name, "host", config.prefix + name, ())
                ).stop(),
                sorted(host_names),
            )
        )
    remove_empty_cgroup_parents(config)
    network.destroy(topology)
    present = network.existing_namespaces()
    for namespace in recorded.get("namespaces", []):
        if namespace in present:
            network.ip("netns", "del", namespace, check=False)
    shutil.rmtree(config.state_dir, ignore_errors=True)


def status(config: LabConfig | None = None) -> dict[str, object]:
    config = config or load_config()
    topology = build_topology(config)
    present = set(network.present_namespaces(topology)) if os.geteuid() == 0 else set()

    def describe(node: Node) -> dict[str, object]:
        entry: dict[str, object] = {
            "name": node.name,
            "namespace": node.namespace,
            "present": node.namespace in present,
            "interfaces": [
                {"name": i.name, "segment": i.segment, "address": i.cidr} for i in node.interfaces
            ],
        }
        if node.routes:
            entry["routes"] = [{"destination": r.destination, "via": r.via} for r in node.routes]
        if node.kind == "host":
            container = Container(config, node)
            entry["running"] = container.is_running()
            entry["ssh"] = {
                "hostname": ssh_address(node),
                "port": node.host.ssh_port if node.host else 22,
                "user": "root",
                "key": str(LAB_KEY_PATH),
                "known_hosts": str(KNOWN_HOSTS_PATH),
            }
            entry["roles"] = sorted(node.host.roles) if node.host else []
            entry["client_users"] = list(node.host.client_users) if node.host else []
            entry["tailnet_dns_name"] = node.host.tailnet_dns_name if node.host else None
            entry["log"] = str(container.log_path)
        return entry

    return {
        "prefix": config.prefix,
        "up": bool(present) and is_up(topology),
        "subnets": {
            "lan": config.lan_subnet,
            "tailnet": config.tailnet_subnet,
            "public": config.public_subnet,
        },
        "control": {
            "interface": topology.control_interface.name,
            "address": topology.control_interface.cidr,
            "routes": [{"destination": r.destination, "via": r.via} for r in topology.control_routes],
        },
        "hosts": [describe(node) for node in topology.hosts],
        "peers": [describe(node) for node in topology.nodes if node.kind != "host"],
    }


def exec_command(
    name: str, command: list[str], config: LabConfig | None = None, user: str | None = None
) -> list[str]:
    """The command line running `command` inside host or peer `name`."""
    config = config or load_config()
    topology = build_topology(config)
    node = topology.node(name)
    if node.kind == "host":
        return Container(config, node).exec_command(command or ["bash", "-l"], user=user)
    if user:
        raise LabError("peers have no users; run commands in them as root")
    return ["ip", "netns", "exec", node.namespace, *(command or ["bash"])]


def ssh_command(
    host: str, command: list[str], config: LabConfig | None = None, user: str = "root"
) -> list[str]:
    """ssh as pyinfra does it: the lab key, the lab known_hosts file, no host key prompts."""
    config = config or load_config()
    node = build_topology(config).node(host)
    if node.kind != "host" or node.host is None:
        raise LabError(f"{host} is a peer, not a host: use `python -m lab exec {host} -- CMD`")
    return [
        "ssh",
        "-i",
        str(LAB_KEY_PATH),
        "-o",
        "IdentitiesOnly=yes",
        "-o",
        "StrictHostKeyChecking=no",
        "-o",
        f"UserKnownHostsFile={KNOWN_HOSTS_PATH}",
        "-o",
        "LogLevel=ERROR",
        "-o",
        "ConnectTimeout=5",
        "-p",
        str(node.host.ssh_port),
        f"{user}@{ssh_address(node)}",
        *command,
    ]


def install_file(
    host: str,
    path: str,
    content: bytes | str,
    mode: int = 0o644,
    owner: str = "root",
    config: LabConfig | None = None,
) -> None:
    """Put a file on a running lab host (parents created, replaced atomically)."""
    config = config or load_config()
    node = build_topology(config).node(host)
    if node.kind != "host":
        raise LabError(f"{host} is not a lab host")
    script = (
        'set -e; mkdir -p "$(dirname "$1")"; cat > "$1.lab-new"; chown "$2" "$1.lab-new"; '
        'chmod "$3" "$1.lab-new"; mv -f "$1.lab-new" "$1"'
    )
    command = Container(config, node).exec_command(["sh", "-c", script, "sh", path, owner, f"{mode:o}"])
    data = content.encode() if isinstance(content, str) else content
    result = subprocess.run(command, check=False, input=data, capture_output=True)
    if result.returncode != 0:
        raise LabError(f"installing {path} on {host} failed: {result.stderr.decode().strip()}")


def run(
    name: str,
    command: list[str],
    config: LabConfig | None = None,
    user: str | None = None,
    timeout: float | None = 60,
) -> subprocess.CompletedProcess[str]:
    """Run a command in a host or peer and capture its output (for tests and helpers)."""
    return subprocess.run(
        exec_command(name, command, config, user),
        check=False,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
