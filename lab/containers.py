"""One systemd-nspawn container per lab host: real systemd as PID 1 on an overlay of the shared base.

This machine's PID 1 is not systemd, so nspawn runs as a plain background process (own session, log
file), in a cgroup of its own, inside a private mount namespace that holds the host's overlay mount:
when the container's last process ends the mount goes with it, so nothing can be left mounted.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from lab.config import CACHE_DIR, LabConfig
from lab.overlay import apply_overlays
from lab.topology import Node, Topology, hosts_file
from lab.upper_layer import ensure_upper_dir, write_upper_file

CONTAINER_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
CGROUP_ROOT = Path("/sys/fs/cgroup")
FIRST_CLIENT_UID = 1000


def cgroup_hierarchies(root: Path = CGROUP_ROOT) -> list[Path]:
    """The hierarchies a container's processes are placed in: the unified one on a pure cgroup2 machine,
    else systemd's named hierarchy and the unified one (hybrid), plus memory and pids for accounting."""
    if (root / "cgroup.controllers").exists():
        return [root]
    return [
        root / name
        for name in ("systemd", "unified", "memory", "pids")
        if (root / name / "cgroup.procs").exists()
    ]


def passwd_entries(
    users: tuple[str, ...], existing_passwd: str, existing_group: str
) -> list[tuple[str, int]]:
    """(user, uid) for each client user, uid = gid = the next ids free in both passwd and group."""
    taken = {
        int(line.split(":")[2])
        for line in (existing_passwd + existing_group).splitlines()
        if line.count(":") >= 2
    }
    entries = []
    uid = FIRST_CLIENT_UID
    for user in users:
        while uid in taken:
            uid += 1
        entries.append((user, uid))
        taken.add(uid)
    return entries


@dataclass
class Container:
    config: LabConfig
    node: Node

    @property
    def machine(self) -> str:
        return self.config.prefix + self.node.name

    @property
    def directory(self) -> Path:
        return self.config.state_dir / "hosts" / self.node.name

    @property
    def upper(self) -> Path:
        return self.directory / "upper"

    @property
    def log_path(self) -> Path:
        return CACHE_DIR / f"{self.machine}.log"

    @property
    def pid_file(self) -> Path:
        return self.directory / "nspawn.pid"

    @property
    def cgroups(self) -> list[Path]:
        return [hierarchy / self.config.cgroup_name / self.node.name for hierarchy in cgroup_hierarchies()]

    # --- before boot -------------------------------------------------------------------------------

    def prepare(self, topology: Topology, base: Path, lab_public_key: str) -> list[str]:
        """A fresh upper layer: hostname, /etc/hosts, new SSH host key, lab key for root, client users,
        then the `lab/overlay` trees. Returns the known_hosts lines for this host."""
        shutil.rmtree(self.directory, ignore_errors=True)
        for name in ("upper", "work", "root"):
            (self.directory / name).mkdir(parents=True)
        upper, host = self.upper, self.node.host
        assert host is not None
        write_upper_file(upper, base, "/etc/hostname", f"{host.name}\n")
        write_upper_file(upper, base, "/etc/hosts", hosts_file(topology, host.name))
        # debootstrap copied this machine's resolver; the lab has no DNS, names come from /etc/hosts.
        write_upper_file(upper, base, "/etc/resolv.conf", "# lab: no DNS server; names are in /etc/hosts\n")

        key_dir = ensure_upper_dir(upper, base, Path("etc/ssh"))
        key_path = key_dir / "ssh_host_ed25519_key"
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"root@{host.name}", "-f", str(key_path)],
            check=True,
        )
        # VERBOSE logs one "Starting session: command" line per remote command: bench counts them.
        write_upper_file(upper, base, "/etc/ssh/sshd_config.d/lab-log.conf", "LogLevel VERBOSE\n")
        if host.ssh_port != 22:
            write_upper_file(upper, base, "/etc/ssh/sshd_config.d/lab-port.conf", f"Port {host.ssh_port}\n")
        write_upper_file(upper, base, "/root/.ssh/authorized_keys", lab_public_key, 0o600)
        (upper / "root/.ssh").chmod(0o700)

        self._add_client_users(base, lab_public_key)
        apply_overlays(host, upper, base)

        host_key = (key_dir / "ssh_host_ed25519_key.pub").read_text().split()[:2]
        names = [interface.address for interface in self.node.interfaces]
        names += [host.name] + ([host.tailnet_dns_name] if host.tailnet_dns_name else [])
        port_names = names if host.ssh_port == 22 else [f"[{name}]:{host.ssh_port}" for name in names]
        return [f"{name} {' '.join(host_key)}" for name in port_names]

    def _add_client_users(self, base: Path, lab_public_key: str) -> None:
        users = self.node.host.client_users if self.node.host else ()
        if not users:
            return
        files = {name: (base / "etc" / name).read_text() for name in ("passwd", "group", "shadow", "gshadow")}
        entries = passwd_entries(users, files["passwd"], files["group"])
        for user, uid in entries:
            files["passwd"] += f"{user}:x:{uid}:{uid}:{user}:/home/{user}:/bin/bash\n"
            files["group"] += f"{user}:x:{uid}:\n"
            files["shadow"] += f"{user}:*:19000:0:99999:7:::\n"  # no password; the lab key logs in
            files["gshadow"] += f"{user}:!::\n"
        for name, content in files.items():
            mode = 0o644 if name in ("passwd", "group") else 0o640
            shadow_gid = (base / "etc" / name).stat().st_gid
            write_upper_file(self.upper, base, f"/etc/{name}", content, mode, gid=shadow_gid)
        for user, uid in entries:
            home = self.upper / "home" / user
            ensure_upper_dir(self.upper, base, Path("home"))
            shutil.copytree(base / "etc/skel", home, symlinks=True)
            (home / ".ssh").mkdir(mode=0o700)
            (home / ".ssh/authorized_keys").write_text(lab_public_key)
            (home / ".local/bin").mkdir(parents=True)
            for path in [home, *home.rglob("*")]:
                os.lchown(path, uid, uid)
            home.chmod(0o750)

    # --- lifetime ----------------------------------------------------------------------------------

    def start(self, lower_layers: list[Path]) -> None:
        lowerdir = ":".join(str(layer) for layer in lower_layers)
        paths = [lowerdir, str(self.upper), str(self.directory)]
        if any(char in path for path in paths for char in ",="):
            raise ValueError(f"overlay paths must not contain ',' or '=': {paths}")
        for cgroup in self.cgroups:
            cgroup.mkdir(parents=True, exist_ok=True)
        join_cgroups = "".join(
            f"echo $$ > {shlex.quote(str(cgroup / 'cgroup.procs'))}\n" for cgroup in self.cgroups
        )
        nspawn = [
            "systemd-nspawn",
            "--quiet",
            "--boot",
            f"--directory={self.directory / 'root'}",
            f"--machine={self.machine}",
            f"--hostname={self.node.name}",
            "--register=no",
            "--keep-unit",
            "--capability=CAP_NET_ADMIN",
            f"--network-namespace-path=/run/netns/{self.node.namespace}",
            "--console=read-only",
            "--resolv-conf=off",
            "--timezone=off",
            "--link-journal=no",
        ]
        mount = (
            f"mount -t overlay overlay -o lowerdir={lowerdir},upperdir={self.upper},"
            f"workdir={self.directory / 'work'} {self.directory / 'root'}"
        )
        inner = f"{mount} && exec {shlex.join(nspawn)}"
        script = f"{join_cgroups}exec unshare --mount --propagation private sh -c {shlex.quote(inner)}\n"
        with self.log_path.open("ab") as log:
            process = subprocess.Popen(
                ["sh", "-c", script],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.pid_file.write_text(f"{process.pid}\n")

    def nspawn_pid(self) -> int | None:
        """The running nspawn of this host (checked against its command line, not just the pid file)."""
        try:
            pid = int(self.pid_file.read_text())
            command_line = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError):
            return None
        if b"systemd-nspawn" in command_line and f"--machine={self.machine}".encode() in command_line:
            return pid
        return None

    def leader_pid(self) -> int | None:
        """PID (as the machine sees it) of the container's systemd."""
        pid = self.nspawn_pid()
        if pid is None:
            return None
        try:
            children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        except OSError:
            return None
        return int(children[0]) if children else None

    def is_running(self) -> bool:
        return self.leader_pid() is not None

    def exec_command(self, command: list[str], user: str | None = None) -> list[str]:
        """The command line that runs `command` inside the container, as root or as `user`."""
        leader = self.leader_pid()
        if leader is None:
            raise RuntimeError(f"lab host {self.node.name} is not running")
        environment = [
            "env",
            "-i",
            f"PATH={CONTAINER_PATH}",
            "LANG=C.UTF-8",
            f"TERM={os.environ.get('TERM', 'dumb')}",
        ]
        if user and user != "root":
            # setpriv --reset-env sets HOME, USER and SHELL as login does; the shell then changes to HOME.
            inner = [
                "setpriv",
                "--reuid",
                user,
                "--regid",
                user,
                "--init-groups",
                "--reset-env",
                "sh",
                "-c",
                'cd "$HOME" 2>/dev/null; exec "$@"',
                "sh",
                *command,
            ]
            return ["nsenter", "-t", str(leader), "-a", "-w", "-r", *environment, *inner]
        return ["nsenter", "-t", str(leader), "-a", "-w", "-r", *environment, "HOME=/root", *command]

    def wait_ready(self, deadline: float) -> str:
        """Wait until `systemctl is-system-running --wait` answers; returns its answer."""
        while time.monotonic() < deadline:
            if self.leader_pid() is not None:
                remaining = max(1.0, deadline - time.monotonic())
                try:
                    result = subprocess.run(
                        self.exec_command(["systemctl", "is-system-running", "--wait"]),
                        check=False,
                        capture_output=True,
                        text=True,
                        timeout=remaining,
                    )
                except subprocess.TimeoutExpired:
                    break
                state = result.stdout.strip()
                if state and state not in ("offline", "initializing", "starting"):
                    return state
            elif not _process_alive(int(self.pid_file.read_text())):
                raise RuntimeError(f"lab host {self.node.name} exited during boot; see {self.log_path}")
            time.sleep(0.05)
        raise TimeoutError(f"lab host {self.node.name} did not finish booting; see {self.log_path}")

    def cgroup_pids(self) -> list[int]:
        pids: set[int] = set()
        for cgroup in self.cgroups:
            if cgroup.is_dir():
                for procs in cgroup.rglob("cgroup.procs"):
                    try:
                        pids.update(int(pid) for pid in procs.read_text().split())
                    except OSError:
                        pass
        return sorted(pids)

    def stop(self, timeout: float = 10.0) -> None:
        """Kill the container (it is throwaway), then remove its cgroups and upper layer. Idempotent."""
        leader = self.leader_pid()
        nspawn = self.nspawn_pid()
        if leader is not None:
            # Killing PID 1 of a PID namespace kills every process in it at once.
            _kill(leader)
        deadline = time.monotonic() + timeout
        while nspawn is not None and _process_alive(nspawn) and time.monotonic() < deadline:
            time.sleep(0.02)
        if nspawn is not None and _process_alive(nspawn):
            _kill(nspawn)
        for pid in self.cgroup_pids():  # anything that escaped the PID namespace (e.g. a dead nspawn)
            _kill(pid)
        while self.cgroup_pids() and time.monotonic() < deadline:
            time.sleep(0.02)
        for cgroup in self.cgroups:
            _remove_cgroup_tree(cgroup)
        propagate = Path("/run/systemd/nspawn/propagate") / self.machine
        shutil.rmtree(propagate, ignore_errors=True)
        shutil.rmtree(self.directory, ignore_errors=True)

    def memory_bytes(self) -> int | None:
        for cgroup in self.cgroups:
            for name in ("memory.current", "memory.usage_in_bytes"):
                path = cgroup / name
                if path.exists():
                    return int(path.read_text())
        return None


def _process_alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def remove_empty_cgroup_parents(config: LabConfig) -> None:
    """The per-instance cgroup (e.g. /sys/fs/cgroup/systemd/lab-lrd) once its hosts' cgroups are gone."""
    for hierarchy in cgroup_hierarchies():
        try:
            (hierarchy / config.cgroup_name).rmdir()
        except OSError:  # absent, or still holds a host of this instance
            pass


def _remove_cgroup_tree(cgroup: Path) -> None:
    if not cgroup.is_dir():
        return
    for directory in sorted(
        (path for path in cgroup.rglob("*") if path.is_dir()), key=lambda p: len(p.parts), reverse=True
    ):
        directory.rmdir()
    cgroup.rmdir()
