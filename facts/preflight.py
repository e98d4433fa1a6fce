"""What the preflight compares with the inventory, read in one command (one section per probe).

The probes reuse the parsers of the facts that already read the same things (interfaces,
tailscale, GPU VRAM, listening sockets); each runs inside its own section (facts/sections.py),
so the whole fact fits in the host's one state read (facts/host_state.py).
"""

from __future__ import annotations

import shlex
from collections.abc import Iterable
from dataclasses import dataclass

from typing_extensions import override

from facts.gpu import GpuInventory, GpuVram
from facts.network import NetworkInterface, parse_ip_addr
from facts.sections import Section, SectionFact, framed, missing, split_sections
from facts.sockets import ListeningSocket, parse_ss_listeners
from facts.tailscale import TailscaleNode, TailscaleStatus

OS_RELEASE, INIT, INTERFACES, TAILSCALE, DEVICES, GPU, DISK, PRESENT, LISTENERS, CGROUPS = (
    "os-release", "init", "interfaces", "tailscale-status", "devices", "gpu", "disk", "present", "listeners",
    "cgroups")
# Device nodes a GPU stack opens: ROCm (/dev/kfd and the render nodes), CUDA, and Vulkan (render nodes).
DEVICE_GLOBS = ("/dev/kfd", "/dev/dri/renderD*", "/dev/nvidia0", "/dev/nvidiactl")


@dataclass(frozen=True)
class DiskSpace:
    """Free bytes of the file system holding ``path`` (the nearest existing parent of the asked path)."""

    path: str
    available_bytes: int


@dataclass(frozen=True)
class PreflightFacts:
    """None (or empty) where a probe gave nothing; ``problems`` says which probe failed and why."""

    os_release: dict[str, str]
    init: str | None  # the name of PID 1 (/proc/1/comm)
    systemd_booted: bool  # /run/systemd/system exists: systemd is the running service manager
    interfaces: tuple[NetworkInterface, ...] | None
    tailscale: TailscaleNode
    devices: dict[str, str]  # device path -> its file type as stat prints it ("character special file")
    gpu: GpuInventory
    disk: DiskSpace | None
    present: frozenset[str]  # which of the asked paths exist
    listeners: tuple[ListeningSocket, ...] | None
    unit_of_pid: dict[int, str]  # a listening process -> the systemd unit whose cgroup holds it
    problems: tuple[str, ...] = ()  # probes that gave nothing (their facts read as empty)
    unread: str | None = None  # why nothing at all could be read (the fact's own command failed)

    @classmethod
    def nothing(cls, reason: str) -> PreflightFacts:
        return cls({}, None, False, None, TailscaleStatus.default(), {}, GpuVram.default(), None, frozenset(),
                   None, {}, unread=reason)


def parse_os_release(lines: Iterable[str]) -> dict[str, str]:
    """``KEY=value`` lines, shell quoting removed (os-release(5))."""
    values = {}
    for line in lines:
        key, separator, value = line.strip().partition("=")
        if not separator or not key or key.startswith("#"):
            continue
        try:
            words = shlex.split(value)
        except ValueError:
            continue
        values[key] = " ".join(words)
    return values


def parse_devices(lines: Iterable[str]) -> dict[str, str]:
    """``TYPE|PATH`` lines from ``stat -c '%F|%n'``."""
    found = {}
    for line in lines:
        kind, separator, path = line.rpartition("|")
        if separator and path.startswith("/dev/"):
            found[path] = kind
    return found


def parse_disk(lines: Iterable[str]) -> DiskSpace | None:
    """``df -PB1 PATH`` then the path itself: the data row's 4th column is the available bytes."""
    rows = [line.split() for line in lines if line.strip()]
    data = [row for row in rows if len(row) >= 6 and row[3].isdigit()]
    if not data or not rows[-1]:
        return None
    return DiskSpace(path=" ".join(rows[-1]), available_bytes=int(data[-1][3]))


def parse_cgroups(lines: Iterable[str]) -> dict[int, str]:
    """``PID /system.slice/x.service`` lines -> {pid: unit}; the unit is the cgroup's last part."""
    units = {}
    for line in lines:
        pid, _, path = line.strip().partition(" ")
        unit = path.rstrip("/").rsplit("/", 1)[-1]
        if pid.isdigit() and "." in unit:
            units[int(pid)] = unit
    return units


def preflight_command(models_dir: str, paths: Iterable[str], ports: Iterable[int]) -> str:
    ports = sorted(set(ports))
    sport = " or ".join(f"sport = :{port}" for port in ports) or "sport = :0"
    listeners = f"ss -Htlnp '( {sport} )'"
    probes = {
        OS_RELEASE: "cat /etc/os-release 2>/dev/null || cat /usr/lib/os-release",
        INIT: "cat /proc/1/comm; if [ -d /run/systemd/system ]; then echo systemd-booted; fi",
        INTERFACES: "ip -j addr",
        TAILSCALE: TailscaleStatus().command(),
        DEVICES: f"for p in {' '.join(DEVICE_GLOBS)}; do if [ -e \"$p\" ]; then stat -c '%F|%n' \"$p\"; fi; done",
        GPU: GpuVram().command(),
        # models_dir may not exist yet: measure the file system it will be created on.
        DISK: (f"p={shlex.quote(models_dir)}; while [ ! -e \"$p\" ]; do p=$(dirname \"$p\"); done; "
               "df -PB1 \"$p\" && printf '%s\\n' \"$p\""),
        PRESENT: ("for p in " + " ".join(shlex.quote(p) for p in paths) + "; do if [ -e \"$p\" ]; then "
                  "printf '%s\\n' \"$p\"; fi; done") if paths else "true",
        # ss runs once: both sections read its answer, so the owners are those of the listeners reported.
        LISTENERS: 'if [ -n "$listening" ]; then printf \'%s\\n\' "$listening"; fi; exit "$listening_status"',
        CGROUPS: ("for pid in $(printf '%s\\n' \"$listening\" | grep -o 'pid=[0-9]*' | cut -d= -f2 | sort -u); do "
                  "printf '%s %s\\n' \"$pid\" \"$(tail -n 1 /proc/$pid/cgroup | cut -d: -f3)\"; done"),
    }
    sections = "; ".join(framed(key, command) for key, command in probes.items())
    return f"listening=$({listeners} 2>/dev/null); listening_status=$?; {sections}"


def parse_preflight(section: Section) -> PreflightFacts:
    if not section.ok:
        return PreflightFacts.nothing(section.problem or f"the preflight probe exited {section.status}")
    sections = split_sections(list(section.lines))
    problems: list[str] = []

    def probe(key: str) -> Section:
        found = sections.get(key) or missing(key)
        if found.status is None:
            problems.append(f"{key}: {found.problem}")
        return found

    init = probe(INIT)
    interfaces = probe(INTERFACES)
    listeners = probe(LISTENERS)
    disk = probe(DISK)
    init_lines = [line.strip() for line in init.lines if line.strip()]
    return PreflightFacts(
        os_release=parse_os_release(probe(OS_RELEASE).lines),
        init=next((line for line in init_lines if line != "systemd-booted"), None),
        systemd_booted="systemd-booted" in init_lines,
        interfaces=parse_ip_addr(list(interfaces.lines)) if interfaces.ok else None,
        tailscale=TailscaleStatus().process(list(probe(TAILSCALE).lines)),
        devices=parse_devices(probe(DEVICES).lines),
        gpu=GpuVram().process(list(probe(GPU).lines)),
        disk=parse_disk(disk.lines) if disk.ok else None,
        present=frozenset(line for line in probe(PRESENT).lines if line),
        listeners=parse_ss_listeners(listeners.lines) if listeners.ok else None,
        unit_of_pid=parse_cgroups(probe(CGROUPS).lines),
        problems=tuple(problems),
    )


class HostPreflight(SectionFact[PreflightFacts]):
    """
    Returns what the preflight judges: distribution, init, interfaces, tailscale, GPU device nodes and
    VRAM, free space for the models, which of the given paths exist, and who listens on the given ports.

    + models_dir: where Ollama keeps models (free space is measured there, or at its nearest parent)
    + paths: paths whose existence matters (the models' manifests)
    + ports: TCP ports the stack listens on
    """

    @override
    def command(self, models_dir: str = "/", paths: tuple[str, ...] = (), ports: tuple[int, ...] = ()) -> str:
        return preflight_command(models_dir, paths, ports)

    @override
    def process_section(self, section: Section) -> PreflightFacts:
        return parse_preflight(section)
