"""Ollama on a gpu_server: pinned release, system user, hardened unit, background model loader.

Everything the host gets is computed by pure functions (unit contexts, the
install script, the model list) so tests can check it without a host; the
`ollama` deploy only wires those values into our batched-state operations.

Layout on the host:
    /opt/ollama/<version>-<archive set hash>/   one extracted release, never modified
    /opt/ollama/current -> that directory     upgrade and rollback switch this link
    /usr/local/bin/ollama -> /opt/ollama/current/bin/ollama
    /etc/systemd/system/ollama.service        rendered from templates/ollama/ollama.service.j2
    /etc/ollama/models.list                   what the model loader pulls
    /usr/local/lib/llm-router/ollama-model-loader   hostfiles/ollama_model_loader.sh
    /etc/systemd/system/ollama-model-loader.service
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
import shlex
from pathlib import Path

from pyinfra import host as current_host
from pyinfra.api import FileUploadCommand, deploy, operation
from pyinfra.api.exceptions import OperationError
from pyinfra.facts.server import LinuxDistribution

import hostfiles
from deploys import ops
from deploys.render import render
from facts.files import DirectoryEntries
from facts.host_state import FactRequest
from inventory.derive import ollama_archives, ollama_environment
from inventory.model import Acceleration, Host, Inventory, Ollama

INSTALL_ROOT = "/opt/ollama"
CURRENT_LINK = f"{INSTALL_ROOT}/current"
BIN_LINK = "/usr/local/bin/ollama"
STATE_DIR = "/var/lib/ollama"  # the ollama user's home: Ollama keeps its key pair in ~/.ollama
CONFIG_DIR = "/etc/ollama"
MODELS_LIST = f"{CONFIG_DIR}/models.list"
LIBEXEC_DIR = "/usr/local/lib/llm-router"
LOADER_SCRIPT = f"{LIBEXEC_DIR}/ollama-model-loader"
UNIT_DIR = "/etc/systemd/system"
OLLAMA_UNIT = "ollama.service"
LOADER_UNIT = "ollama-model-loader.service"
OLLAMA_USER = "ollama"
# Release directories kept on disk: the wanted one, the one `current` pointed to before (rollback),
# then the newest others up to this many. Real releases are GBs (the ROCm add-on alone).
KEEP_RELEASES = 3
# Release directories on the host, newest first (read in the same snapshot).
RELEASES = FactRequest.of(DirectoryEntries, path=INSTALL_ROOT)

# Groups owning the GPU device nodes (only those that exist on the host are added).
GPU_GROUPS: dict[Acceleration, tuple[str, ...]] = {
    Acceleration.rocm: ("render", "video"),  # /dev/kfd and /dev/dri/renderD* are group render
    Acceleration.cuda: ("video",),
    Acceleration.vulkan: ("render", "video"),  # Mesa Vulkan opens /dev/dri/renderD*
    Acceleration.cpu: (),
}

# Device cgroup entries the unit allows (DevicePolicy=closed denies the rest).
GPU_DEVICES: dict[Acceleration, tuple[str, ...]] = {
    Acceleration.rocm: ("/dev/kfd rw", "char-drm rw"),
    # /dev/nvidia0.., /dev/nvidiactl and /dev/nvidia-modeset share the nvidia-frontend major.
    Acceleration.cuda: ("char-nvidia-frontend rw", "char-nvidia-uvm rw", "char-nvidia-caps rw"),
    Acceleration.vulkan: ("char-drm rw",),
    Acceleration.cpu: (),
}

# Commands the install needs -> the package that provides them, per distribution family.
# Only missing commands are installed (the snapshot's `commands` set says which).
PACKAGES: dict[str, dict[str, tuple[str, ...]]] = {
    "debian": {"curl": ("curl", "ca-certificates"), "zstd": ("zstd",), "tar": ("tar",),
               "sha256sum": ("coreutils",)},
    "fedora": {"curl": ("curl", "ca-certificates"), "zstd": ("zstd",), "tar": ("tar",),
               "sha256sum": ("coreutils",)},
    "arch": {"curl": ("curl", "ca-certificates"), "zstd": ("zstd",), "tar": ("tar",),
             "sha256sum": ("coreutils",)},
}
INSTALL_COMMANDS: dict[str, str] = {
    # Without network the package lists may be stale: try first, refresh only on failure.
    "debian": "export DEBIAN_FRONTEND=noninteractive; apt-get install -y --no-install-recommends {pkgs}"
              " || {{ apt-get update && apt-get install -y --no-install-recommends {pkgs}; }}",
    "fedora": "dnf install -y {pkgs}",
    "arch": "pacman -S --needed --noconfirm {pkgs}",
}


# --- pure values ------------------------------------------------------------------


def release_id(ollama: Ollama) -> str:
    """`<version>-<12 hex>`: the hash covers every archive's name and sha256, so a new add-on
    or a re-published archive gets its own directory."""
    archive_set = "".join(f"{name} {digest}\n" for name, digest in ollama_archives(ollama))
    return f"{ollama.version}-{hashlib.sha256(archive_set.encode()).hexdigest()[:12]}"


def release_dir(ollama: Ollama) -> str:
    return f"{INSTALL_ROOT}/{release_id(ollama)}"


def needed_commands(ollama: Ollama) -> tuple[str, ...]:
    """Commands the release install runs on the host."""
    archives = [name for name, _ in ollama_archives(ollama)]
    needed = ["sha256sum", "tar"]
    if any(name.endswith(".tar.zst") for name in archives):
        needed.append("zstd")  # GNU tar --zstd runs the zstd binary
    if ollama.source.kind == "url":
        needed.append("curl")
    return tuple(needed)


def distro_family(os_release: dict[str, str]) -> str | None:
    """debian / fedora / arch from /etc/os-release's ID and ID_LIKE, None when unknown."""
    ids = [os_release.get("ID", "").lower(), *os_release.get("ID_LIKE", "").lower().split()]
    for family, members in (("debian", {"debian", "ubuntu"}), ("fedora", {"fedora", "rhel", "centos"}),
                            ("arch", {"arch", "archlinux"})):
        if members & set(ids):
            return family
    return None


def package_install_command(family: str, missing_commands: list[str]) -> str:
    table = PACKAGES[family]
    packages: list[str] = []
    for command in missing_commands:
        packages.extend(p for p in table[command] if p not in packages)
    return INSTALL_COMMANDS[family].format(pkgs=" ".join(shlex.quote(p) for p in packages))


def _archive_extract_flag(name: str) -> str:
    return "--zstd" if name.endswith(".tar.zst") else "-z"


def install_script(ollama: Ollama, stage: str, fetch_urls: dict[str, str] | None = None) -> str:
    """Shell script: (download,) verify every archive, extract them in order, move into place.

    Runs only when the release directory is absent. Archives are already in
    `<stage>/archives` (uploaded) unless `fetch_urls` gives a URL per file.
    A checksum mismatch exits non-zero before anything is extracted, naming the
    file and both hashes; `current` is switched by a later operation, so it
    stays untouched.
    """
    target = release_dir(ollama)
    q_stage, q_target = shlex.quote(stage), shlex.quote(target)
    lines = ["set -eu", f"cd {q_stage}/archives"]
    for name, digest in ollama_archives(ollama):
        q_name = shlex.quote(name)
        if fetch_urls is not None:
            url = shlex.quote(fetch_urls[name])
            lines.append(
                f"curl --fail --silent --show-error --location --proto =https --retry 3 -o {q_name} {url}"
                f" || {{ echo 'ollama: download of {name} failed' >&2; exit 1; }}"
            )
    for name, digest in ollama_archives(ollama):
        q_name = shlex.quote(name)
        lines.append(
            f"if ! printf '%s  %s\\n' {digest} {q_name} | sha256sum -c --quiet --strict - >/dev/null 2>&1; then "
            f"actual=$(sha256sum < {q_name} | cut -d' ' -f1); "
            f"echo \"ollama: sha256 mismatch for {name}: expected {digest}, actual $actual;"
            f" nothing installed, {CURRENT_LINK} unchanged\" >&2; "
            f"rm -rf {q_stage}; exit 1; fi"
        )
    lines.append(f"mkdir {q_stage}/root")
    for name, _ in ollama_archives(ollama):
        lines.append(
            f"tar {_archive_extract_flag(name)} --no-same-owner -xf {shlex.quote(name)} -C {q_stage}/root"
        )
    # rename(2) within one file system: the release directory appears complete or not at all.
    lines += [f"chmod 755 {q_stage}/root", f"mv -T {q_stage}/root {q_target}", f"rm -rf {q_stage}"]
    return "\n".join(lines)


def _quote_environment(key: str, value: str) -> str:
    """One `Environment=` assignment, quoted for systemd (`%` is a specifier, `\\` and `"` escape)."""
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%")
    return f'"{key}={escaped}"'


def read_write_paths(ollama: Ollama) -> list[str]:
    paths = [STATE_DIR, str(ollama.models_dir)]
    return sorted(set(paths))


def _hardening(private_devices: bool) -> list[tuple[str, str]]:
    """Sandboxing shared by both units (what `systemd-analyze security` asks for)."""
    return [
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("PrivateDevices", "yes" if private_devices else "no"),
        ("NoNewPrivileges", "yes"),
        ("ProtectKernelTunables", "yes"),
        ("ProtectKernelModules", "yes"),
        ("ProtectKernelLogs", "yes"),
        ("ProtectControlGroups", "yes"),
        ("ProtectClock", "yes"),
        ("ProtectHostname", "yes"),
        ("ProtectProc", "invisible"),
        ("RestrictNamespaces", "yes"),
        ("RestrictRealtime", "yes"),
        ("RestrictSUIDSGID", "yes"),
        ("LockPersonality", "yes"),
        ("RemoveIPC", "yes"),
        ("SystemCallArchitectures", "native"),
        ("SystemCallFilter", "@system-service"),
        ("SystemCallErrorNumber", "EPERM"),
        # AF_NETLINK: Go's interface enumeration; no raw or packet sockets.
        ("RestrictAddressFamilies", "AF_UNIX AF_INET AF_INET6 AF_NETLINK"),
        ("CapabilityBoundingSet", ""),
        ("AmbientCapabilities", ""),
        ("UMask", "0027"),
    ]


def ollama_unit_context(ollama: Ollama) -> dict[str, list[tuple[str, str]]]:
    """Every line of ollama.service, as (key, value) pairs per section. The template only prints."""
    bind = ipaddress.ip_address(str(ollama.bind))
    if not bind.is_loopback:
        # The model validates this too; the unit is the last line of defence for an auth-less API.
        raise ValueError(f"refusing to render ollama.service with a non-loopback bind {bind}")
    env = ollama_environment(ollama)
    if not ipaddress.ip_address(env["OLLAMA_HOST"].rsplit(":", 1)[0].strip("[]")).is_loopback:
        raise ValueError(f"OLLAMA_HOST {env['OLLAMA_HOST']} is not loopback")
    gpu = ollama.acceleration is not Acceleration.cpu
    service: list[tuple[str, str]] = [
        ("Type", "exec"),
        ("User", OLLAMA_USER),
        ("Group", OLLAMA_USER),
        ("ExecStart", f"{CURRENT_LINK}/bin/ollama serve"),
        *(("Environment", _quote_environment(k, v)) for k, v in env.items()),
        ("Environment", _quote_environment("HOME", STATE_DIR)),
        ("WorkingDirectory", STATE_DIR),
        ("Restart", "always"),
        ("RestartSec", "3"),
        ("OOMScoreAdjust", str(ollama.oom_score_adjust)),
        ("Nice", str(ollama.nice)),
        ("IOSchedulingClass", ollama.io_scheduling_class),
        ("IOSchedulingPriority", str(ollama.io_scheduling_priority)),
        ("LimitNOFILE", "65536"),
        ("ReadWritePaths", " ".join(read_write_paths(ollama))),
        # GPU acceleration needs the real device nodes: PrivateDevices stays off and the
        # device cgroup admits exactly the GPU's nodes (plus /dev/null & co, always allowed).
        *_hardening(private_devices=not gpu),
        ("DevicePolicy", "closed"),
        *(("DeviceAllow", device) for device in GPU_DEVICES[ollama.acceleration]),
    ]
    # ROCm and CUDA JIT-compile kernels into writable+executable memory: no MemoryDenyWriteExecute.
    return {
        "unit": [
            ("Description", f"Ollama {ollama.version} ({ollama.acceleration.value}), loopback only"),
            ("Documentation", "https://github.com/ollama/ollama/blob/main/docs/linux.md"),
            ("After", "network-online.target"),
            ("Wants", "network-online.target"),
        ],
        "service": service,
        "install": [("WantedBy", "multi-user.target")],
    }


def loader_unit_context(ollama: Ollama) -> dict[str, list[tuple[str, str]]]:
    """ollama-model-loader.service: a oneshot that pulls the listed models in the background."""
    env = ollama_environment(ollama)
    return {
        "unit": [
            ("Description", "Pull the inventory's Ollama models (background; see its status line)"),
            ("After", OLLAMA_UNIT),
            ("Requires", OLLAMA_UNIT),
        ],
        "service": [
            ("Type", "oneshot"),
            # The script reports progress with systemd-notify --status=...; accepted from any
            # process of the unit (systemd-notify runs as a child, not the main process).
            ("NotifyAccess", "all"),
            ("User", OLLAMA_USER),
            ("Group", OLLAMA_USER),
            ("ExecStart", f"{LOADER_SCRIPT} {MODELS_LIST}"),
            ("Environment", _quote_environment("OLLAMA_HOST", env["OLLAMA_HOST"])),
            ("Environment", _quote_environment("HOME", STATE_DIR)),
            ("Environment", _quote_environment("LOADER_PRUNE", "1" if ollama.prune_models else "0")),
            ("Environment", _quote_environment("LOADER_ATTEMPTS", "6")),
            ("Environment", _quote_environment("LOADER_FIRST_DELAY_S", "5")),
            ("Environment", _quote_environment("LOADER_MAX_DELAY_S", "300")),
            # Multi-GB pulls: no start timeout; the retries are bounded by the script.
            ("TimeoutStartSec", "infinity"),
            ("Nice", str(ollama.nice)),
            ("IOSchedulingClass", "idle"),
            *_hardening(private_devices=True),
            ("DevicePolicy", "closed"),
        ],
        "install": [("WantedBy", "multi-user.target")],
    }


def render_unit(template: str, context: dict[str, list[tuple[str, str]]]) -> str:
    return render(f"ollama/{template}", **context)


def render_ollama_unit(ollama: Ollama) -> str:
    return render_unit("ollama.service.j2", ollama_unit_context(ollama))


def render_loader_unit(ollama: Ollama) -> str:
    return render_unit("ollama-model-loader.service.j2", loader_unit_context(ollama))


def _with_tag(model: str) -> str:
    """`ollama list` shows untagged names with `:latest`."""
    return model if ":" in model.rsplit("/", 1)[-1] else f"{model}:latest"


def models_list(ollama: Ollama) -> str:
    """The loader's input: one `<kind> <model>` line each, persistent first."""
    lines = ["# Managed by llm-router-deploy (deploys/ollama.py): models ollama-model-loader pulls."]
    lines += [f"persistent {_with_tag(m)}" for m in ollama.persistent_models]
    lines += [f"on-demand {_with_tag(m)}" for m in ollama.on_demand_models]
    return "\n".join(lines) + "\n"


def loader_script() -> str:
    return hostfiles.content("ollama_model_loader.sh")


def stale_releases(listing: list[str], wanted: str, previous: str, keep: int = KEEP_RELEASES) -> list[str]:
    """Release directories to delete. `listing`: names in INSTALL_ROOT, newest first (`ls -1t`)."""
    releases = [name for name in listing if re.fullmatch(r"\d+\.\d+\.\d+\S*-[0-9a-f]{12}", name)]
    kept = list(dict.fromkeys(name for name in (wanted, previous) if name))
    for name in releases:
        if len(kept) >= keep:
            break
        if name not in kept:
            kept.append(name)
    return [name for name in releases if name not in kept]


def managed_paths(ollama: Ollama) -> list[str]:
    return [
        INSTALL_ROOT, release_dir(ollama), CURRENT_LINK, BIN_LINK, STATE_DIR, str(ollama.models_dir),
        CONFIG_DIR, MODELS_LIST, LIBEXEC_DIR, LOADER_SCRIPT,
        f"{UNIT_DIR}/{OLLAMA_UNIT}", f"{UNIT_DIR}/{LOADER_UNIT}",
    ]


# --- operations that ops.py does not have -----------------------------------------


@operation()
def commands_present(commands: tuple[str, ...]):
    """Install the packages providing missing commands (distribution family from os-release)."""
    snap = ops.snapshot()
    missing = sorted(c for c in commands if not snap.has_command(c))
    if not missing:
        current_host.noop(f"{', '.join(sorted(commands))} present")
        return
    distribution = current_host.get_fact(LinuxDistribution) or {}
    family = distro_family(distribution.get("release_meta") or {})
    if family is None:
        raise OperationError(
            f"missing {', '.join(missing)} and no package table for {distribution.get('name') or 'this distribution'}"
        )
    yield package_install_command(family, missing)


@operation()
def release(ollama: Ollama, upload_dir: str | None = None):
    """The pinned release in its versioned directory; nothing at all when it is already there."""
    target = release_dir(ollama)
    current = ops.snapshot().path(target)
    if current.kind == "dir":
        current_host.noop(f"{target} is installed")
        return
    if current.kind != "absent":
        raise OperationError(f"{target} exists and is a {current.kind}, not a release directory")
    stage = f"{INSTALL_ROOT}/.incoming-{release_id(ollama)}"
    archives = [name for name, _ in ollama_archives(ollama)]
    yield f"rm -rf {shlex.quote(stage)} && install -d -m 700 {shlex.quote(stage)}/archives"
    fetch_urls = None
    if upload_dir is None:
        base = ollama.source.base_url.format(version=ollama.version)  # type: ignore[union-attr]
        fetch_urls = {name: base + name for name in archives}
    else:
        for name in archives:
            local = Path(upload_dir) / name
            if not local.is_file():
                raise OperationError(f"release archive {local} not found on this workstation")
            yield FileUploadCommand(str(local), f"{stage}/archives/{name}")
    yield install_script(ollama, stage, fetch_urls)


@operation()
def old_releases_removed(ollama: Ollama):
    """Delete release directories beyond KEEP_RELEASES (never the wanted one or the rollback target)."""
    snap = ops.snapshot()
    listing = list(snap.get(DirectoryEntries, path=INSTALL_ROOT))
    previous = snap.path(CURRENT_LINK).target.rsplit("/", 1)[-1] if snap.path(CURRENT_LINK).kind == "link" else ""
    stale = stale_releases(listing, release_id(ollama), previous)
    if not stale:
        current_host.noop(f"at most {KEEP_RELEASES} releases in {INSTALL_ROOT}")
        return
    yield "rm -rf " + " ".join(shlex.quote(f"{INSTALL_ROOT}/{name}") for name in stale)


@operation()
def background_job(name: str, start: bool):
    """Enable a oneshot unit; restart it without waiting when asked or when its last run failed."""
    current = ops.snapshot().unit(name)
    q = shlex.quote(name)
    enabled = current is not None and current.is_enabled
    failed = current is not None and current.has_failed
    if not enabled:
        yield f"systemctl enable {q}"
    if start or failed:
        # --no-block: the apply returns while multi-GB pulls continue.
        yield f"systemctl restart --no-block {q}"
    if enabled and not (start or failed):
        current_host.noop(f"{name} is {(current.active_state or '') if current else 'unknown'}")


# --- the deploy -------------------------------------------------------------------


def declare(inv: Inventory, host: Host) -> None:
    """Register everything this deploy manages in the host's batched snapshot (before any operation)."""
    if host.server is None:
        raise ValueError(f"{host.name} is not a gpu_server")
    config = host.server.ollama
    ops.declare(paths=managed_paths(config), units=(OLLAMA_UNIT, LOADER_UNIT), users=(OLLAMA_USER,),
                commands=needed_commands(config),
                facts=(RELEASES,))


@deploy("Ollama")
def ollama(inv: Inventory, host: Host) -> None:
    declare(inv, host)  # idempotent; the site declares every component first
    assert host.server is not None
    config = host.server.ollama

    # 1. Release: tools, versioned directory, links.
    commands_present(needed_commands(config), name="tools for the release archives")
    ops.directory(INSTALL_ROOT, name=INSTALL_ROOT)
    upload_dir = None
    if config.source.kind == "upload":
        upload_dir = str(inv.resolve_path(config.source.local_dir))
    release(config, upload_dir, name=f"release {release_id(config)}")
    current_link = ops.link(CURRENT_LINK, release_dir(config), name=CURRENT_LINK)
    ops.link(BIN_LINK, f"{CURRENT_LINK}/bin/ollama", name=BIN_LINK)
    old_releases_removed(config, name=f"releases beyond the newest {KEEP_RELEASES}")

    # 2. User and directories.
    ops.system_user(OLLAMA_USER, home=STATE_DIR, groups=GPU_GROUPS[config.acceleration],
                    name=f"system user {OLLAMA_USER}")
    ops.directory(STATE_DIR, mode="750", user=OLLAMA_USER, group=OLLAMA_USER, name=STATE_DIR)
    ops.directory(str(config.models_dir), mode="750", user=OLLAMA_USER, group=OLLAMA_USER,
                  name=f"models dir {config.models_dir}")

    # 3. The service: restarted only when what it runs (unit, environment, release) changed.
    unit_file = ops.file(f"{UNIT_DIR}/{OLLAMA_UNIT}", render_ollama_unit(config), name=f"{OLLAMA_UNIT} file")
    loader_unit_file = ops.file(f"{UNIT_DIR}/{LOADER_UNIT}", render_loader_unit(config),
                                name=f"{LOADER_UNIT} file")
    ops.unit(OLLAMA_UNIT, restart=ops.changed(unit_file, current_link),
             daemon_reload=ops.changed(unit_file, loader_unit_file), name=OLLAMA_UNIT)

    # 4. Models: pulled in the background by a oneshot reading /etc/ollama/models.list.
    ops.directory(CONFIG_DIR, name=CONFIG_DIR)
    model_list_file = ops.file(MODELS_LIST, models_list(config), name=MODELS_LIST)
    ops.directory(LIBEXEC_DIR, name=LIBEXEC_DIR)
    script_file = ops.file(LOADER_SCRIPT, loader_script(), mode="755", name=LOADER_SCRIPT)
    background_job(LOADER_UNIT, start=ops.changed(model_list_file, script_file, loader_unit_file, unit_file),
                   name=LOADER_UNIT)
