"""The preflight: is this the host the inventory describes? Judged before the apply changes anything.

`request(host)` is the fact the site declares in the host's one state read; `judge` compares what it
read with the inventory (pure: one function per rule, each returning findings); `refuse` stops the
apply with every failed finding. `python -m checks preflight` prints the same findings as a table.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Literal

from deploys.ollama import OLLAMA_UNIT, distro_family
from deploys.router import UNIT as ROUTER_UNIT
from facts.host_state import FactRequest
from facts.network import NetworkInterface, interface_named, interface_with_address
from facts.preflight import HostPreflight, PreflightFacts
from inventory.derive import served_models, total_vram_gb
from inventory.model import Acceleration, Host, Inventory

Status = Literal["PASS", "FAIL", "SKIP"]
GB = 1_000_000_000
GIB = 1024**3
# A GPU's VRAM as tools measure it may differ from its marketing figure (GiB vs GB, memory the firmware
# reserves): the inventory's figure matches when the measured total is within this share of it.
VRAM_TOLERANCE = 0.10
# Distribution families the deploy installs packages for (deploys/ollama.py INSTALL_COMMANDS).
SUPPORTED_FAMILIES = ("debian", "fedora", "arch")
OLLAMA_REGISTRY = "registry.ollama.ai"


@dataclass(frozen=True)
class Finding:
    host: str
    check: str
    expected: str
    observed: str
    status: Status
    reason: str = ""  # FAIL: what is wrong and what to do; SKIP: why it was not judged


def _judged(host: Host, check: str, expected: str, observed: str, ok: bool, reason: str) -> Finding:
    return Finding(host.name, check, expected, observed, "PASS" if ok else "FAIL", "" if ok else reason)


def _skipped(host: Host, check: str, expected: str, reason: str) -> Finding:
    return Finding(host.name, check, expected, "-", "SKIP", reason)


# --- what the host is asked ------------------------------------------------------------------


def manifest_path(models_dir: str, model: str) -> str:
    """Where Ollama keeps a pulled model's manifest: manifests/<registry>/<namespace>/<model>/<tag>."""
    name, _, tag = model.rpartition(":") if ":" in model.rsplit("/", 1)[-1] else (model, "", "latest")
    parts = name.split("/")
    if len(parts) == 1:
        parts = [OLLAMA_REGISTRY, "library", *parts]
    elif len(parts) == 2:
        parts = [OLLAMA_REGISTRY, *parts]
    return str(PurePosixPath(models_dir, "manifests", *parts, tag))


def request(host: Host) -> FactRequest:
    """The preflight's fact, with the host's models directory, model manifests and ports."""
    if host.server is None:
        return FactRequest.of(HostPreflight)
    ollama = host.server.ollama
    models_dir = str(ollama.models_dir)
    return FactRequest.of(HostPreflight, models_dir=models_dir,
                          paths=tuple(manifest_path(models_dir, m) for m in served_models(host.server)),
                          ports=(host.server.router.port, ollama.port))


# --- the rules ---------------------------------------------------------------------------------


def _names(interfaces: Iterable[NetworkInterface]) -> str:
    return ", ".join(i.name for i in interfaces if i.name != "lo") or "none"


def check_interface(host: Host, facts: PreflightFacts, role: str, names: list[str], address: str | None,
                    key: str) -> list[Finding]:
    """The named interfaces exist, and one of them carries the named address."""
    check = f"{role} interface {', '.join(names)}" + (f" carries {address}" if address else "")
    expected = f"{', '.join(names)}" + (f" with {address}" if address else "")
    if facts.interfaces is None:
        return [_skipped(host, check, expected, "ip -j addr gave nothing")]
    found = [interface_named(facts.interfaces, name) for name in names]
    missing = [name for name, interface in zip(names, found) if interface is None]
    carrier = interface_with_address(facts.interfaces, address) if address else None
    if missing:
        hint = (f"the host has {address} on {carrier.name}: set network.{key} to {carrier.name}"
                if carrier else f"set network.{key} to one of the host's interfaces")
        return [_judged(host, check, expected, f"no {', '.join(missing)} (the host has: "
                        f"{_names(facts.interfaces)})", False,
                        f"{host.name} has no interface {', '.join(missing)}: {hint} (see `ip -br addr` on "
                        f"{host.name}), or rename the interface on the host")]
    if address and (carrier is None or carrier.name not in names):
        where = f"on {carrier.name}" if carrier else "on no interface"
        return [_judged(host, check, expected, f"{address} {where}", False,
                        f"{host.name} does not carry {address} on {', '.join(names)} ({address} is {where}): "
                        f"fix network.{key} or the address in the inventory, or the host's network configuration")]
    return [_judged(host, check, expected, expected, True, "")]


def check_network(host: Host, facts: PreflightFacts) -> list[Finding]:
    network = host.network
    findings = []
    if network.lan_interfaces:
        address = str(network.lan_address) if network.lan_address else None
        findings += check_interface(host, facts, "LAN", list(network.lan_interfaces), address, "lan_interfaces")
    if network.tailnet_interface:
        address = str(network.tailnet_address) if network.tailnet_address else None
        findings += check_interface(host, facts, "tailnet", [network.tailnet_interface], address,
                                    "tailnet_interface")
    return findings


def uses_tailscale(host: Host) -> bool:
    return bool(host.network.tailnet_interface) or bool(
        host.server and host.server.exposure.tailscale_serve.enabled)


def check_tailscale(host: Host, facts: PreflightFacts) -> list[Finding]:
    if not uses_tailscale(host):
        return []
    node = facts.tailscale
    wanted = host.network.tailnet_dns_name
    expected = "Running" + (f" as {wanted}" if wanted else "")
    if not node.installed:
        return [_judged(host, "tailscale is up", expected, "not installed", False,
                        f"install tailscale on {host.name} and run `tailscale up`")]
    if not node.running:
        observed = node.backend_state or (node.reason or "no answer")
        return [_judged(host, "tailscale is up", expected, observed, False,
                        f"tailscale is not up on {host.name} ({observed}): `systemctl start tailscaled` and "
                        "`tailscale up` there, then re-apply")]
    findings = [_judged(host, "tailscale is up", "Running", "Running", True, "")]
    if wanted:
        findings.append(_judged(host, "tailnet DNS name", wanted, node.dns_name or "none", node.dns_name == wanted,
                                f"{host.name}'s tailnet name is {node.dns_name}, the inventory says {wanted}: "
                                "fix network.tailnet_dns_name (see `tailscale status --json`, Self.DNSName)"))
    return findings


def wanted_devices(acceleration: Acceleration) -> list[str]:
    """The device nodes (globs) a GPU stack needs, each of which must match a character device."""
    return {Acceleration.rocm: ["/dev/kfd", "/dev/dri/renderD*"],
            Acceleration.cuda: ["/dev/nvidia0", "/dev/nvidiactl"],
            Acceleration.vulkan: ["/dev/dri/renderD*"],
            Acceleration.cpu: []}[acceleration]


def _matches(path: str, pattern: str) -> bool:
    return PurePosixPath(path).match(pattern) if "*" in pattern else path == pattern


def check_gpu(host: Host, facts: PreflightFacts) -> list[Finding]:
    server = host.server
    if server is None or server.ollama.acceleration is Acceleration.cpu:
        return []
    acceleration = server.ollama.acceleration.value
    wanted = wanted_devices(server.ollama.acceleration)
    chars = [path for path, kind in facts.devices.items() if kind == "character special file"]
    missing = [pattern for pattern in wanted if not any(_matches(path, pattern) for path in chars)]
    findings = [_judged(host, f"GPU visible to {acceleration}", ", ".join(wanted),
                        ", ".join(sorted(chars)) or "no GPU device nodes", not missing,
                        f"{', '.join(missing)} missing on {host.name}: the {acceleration} driver is not loaded "
                        f"({'amdgpu' if acceleration == 'rocm' else 'nvidia' if acceleration == 'cuda' else 'the GPU'}"
                        " kernel module) or the GPU is not there; fix the host, or set server.ollama.acceleration "
                        "to what it has")]
    findings.append(check_vram(host, facts))
    return findings


def check_vram(host: Host, facts: PreflightFacts) -> Finding:
    server = host.server
    assert server is not None
    wanted = total_vram_gb(server)
    check = "GPU VRAM matches server.gpus"
    expected = f"{wanted:g} GB ±{VRAM_TOLERANCE:.0%}"
    devices = facts.gpu.devices
    if not devices or any(d.total_bytes is None for d in devices):
        reason = facts.gpu.reason or "a device's VRAM is unknown"
        return _skipped(host, check, expected, f"VRAM is not measurable: {reason}")
    total = sum(d.total_bytes or 0 for d in devices)
    # A GPU sold as "24 GB" has 24 GiB: compare the inventory's figure with both units.
    ok = any(abs(total / unit - wanted) <= VRAM_TOLERANCE * wanted for unit in (GB, GIB))
    observed = f"{total / GIB:.1f} GiB on {len(devices)} device(s)"
    return _judged(host, check, expected, observed, ok,
                   f"{host.name} has {observed}, the inventory's server.gpus add up to {wanted:g} GB: "
                   "fix server.gpus (and the models that must fit), or check that the right GPU is visible")


def check_disk(inv: Inventory, host: Host, facts: PreflightFacts) -> list[Finding]:
    server = host.server
    if server is None:
        return []
    models_dir = str(server.ollama.models_dir)
    to_pull = [m for m in served_models(server) if manifest_path(models_dir, m) not in facts.present]
    # The inventory has no download size per model; its VRAM size (weights plus context) bounds it above.
    need = sum(inv.models[m].vram_gb for m in to_pull if m in inv.models)
    check = f"free space at {models_dir}"
    expected = f">= {need:g} GB for {', '.join(to_pull) or 'no model to pull'} (sized by models.*.vram_gb)"
    if facts.disk is None:
        return [_skipped(host, check, expected, "df gave no answer")]
    free = facts.disk.available_bytes / GB
    return [_judged(host, check, expected, f"{free:.1f} GB free on {facts.disk.path}", free >= need,
                    f"{models_dir} on {host.name} has {free:.1f} GB free, the models not yet pulled need up to "
                    f"{need:g} GB (their vram_gb): free space there, or set server.ollama.models_dir to a "
                    "larger file system")]


def check_init(host: Host, facts: PreflightFacts) -> list[Finding]:
    observed = facts.init or "unknown"
    return [_judged(host, "systemd is the init", "systemd", observed, facts.systemd_booted,
                    f"{host.name} runs {observed} as PID 1, not systemd: the deploy installs systemd units; "
                    "use a systemd distribution (Debian, Ubuntu, Fedora)")]


def check_distribution(host: Host, facts: PreflightFacts) -> list[Finding]:
    release = facts.os_release
    name = release.get("PRETTY_NAME") or release.get("ID") or "unknown"
    family = distro_family(release)
    ok = family in SUPPORTED_FAMILIES
    if release.get("ID") == "nixos":
        todo = ("NixOS is configured declaratively and its /etc and /usr are not writable this way: "
                "use services.ollama and a NixOS module instead of this deploy, or a supported distribution")
    else:
        todo = f"the deploy supports the {', '.join(SUPPORTED_FAMILIES)} families: use one of them"
    return [_judged(host, "supported distribution", " / ".join(SUPPORTED_FAMILIES) + " family",
                    f"{name} ({family or 'unknown family'})", ok, f"{host.name} runs {name}: {todo}")]


def check_ports(host: Host, facts: PreflightFacts) -> list[Finding]:
    server = host.server
    if server is None:
        return []
    findings = []
    for what, port, unit in (("router", server.router.port, ROUTER_UNIT), ("Ollama", server.ollama.port, OLLAMA_UNIT)):
        check = f"{what} port {port} free or ours"
        expected = f"free or {unit}"
        if facts.listeners is None:
            findings.append(_skipped(host, check, expected, "ss gave nothing"))
            continue
        others = sorted({f"{', '.join(s.processes) or 'unknown process'}"
                         f" ({facts.unit_of_pid.get(pid, 'no unit') if pid else 'pid unknown'})"
                         for s in facts.listeners if s.port == port
                         for pid in (s.pids or (0,)) if facts.unit_of_pid.get(pid) != unit})
        ours = any(s.port == port for s in facts.listeners)
        observed = "; ".join(others) if others else (unit if ours else "free")
        findings.append(_judged(host, check, expected, observed, not others,
                                f"port {port} on {host.name} is taken by {'; '.join(others)}: stop it "
                                f"(`ss -tlnp 'sport = :{port}'` shows it) or choose another port for the {what} "
                                "in the inventory"))
    return findings


def judge(inv: Inventory, host: Host, facts: PreflightFacts) -> list[Finding]:
    if facts.unread:
        return [_skipped(host, "preflight probe", "complete", facts.unread)]
    findings = [_skipped(host, "preflight probe", "complete", problem) for problem in facts.problems]
    findings += check_distribution(host, facts) + check_init(host, facts)
    findings += check_network(host, facts) + check_tailscale(host, facts)
    findings += check_gpu(host, facts) + check_disk(inv, host, facts) + check_ports(host, facts)
    return findings


def refusal(host: Host, findings: list[Finding]) -> str | None:
    """The apply's message when any finding failed: host, what is wrong, what to do; None to go on."""
    failed = [f for f in findings if f.status == "FAIL"]
    if not failed:
        return None
    lines = [f"preflight: {host.name} is not the host the inventory describes; nothing was changed on it:"]
    lines += [f"  {host.name}: {f.check}: {f.reason}" for f in failed]
    lines.append("  (re-check with: python -m checks preflight; the apply runs it before its first change)")
    return "\n".join(lines)


def refuse_if_wrong(inv: Inventory, host: Host, facts: PreflightFacts) -> None:
    """Stop the apply before any operation: pyinfra ends the run, disconnecting, with our exit status 2."""
    message = refusal(host, judge(inv, host, facts))
    if message:
        print(message, file=sys.stderr, flush=True)
        raise SystemExit(2)
