"""LAB STAND-IN for Tailscale: paths, node config, prefs and the serve config.

Stand-in because real tailscale cannot run in the lab sandbox; see ``__init__``.
The serve config is kept in real `ipn.ServeConfig` JSON shape
(``{"TCP": {"443": {"HTTPS": true}}, "Web": {"host:443": {"Handlers": {"/router":
{"Proxy": "http://localhost:4000"}}}}}``) in ``<state dir>/serve.json`` so it
survives restarts; the CLI writes it, the daemon watches it.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

VERSION = "1.90.6"
DEFAULT_CONFIG = "/etc/tailscale-standin.json"
DEFAULT_STATE_DIR = "/var/lib/tailscale"
DEFAULT_SOCKET = "/var/run/tailscale/tailscaled.sock"
DEFAULT_HTTPS_PORT = 443


@dataclass(frozen=True)
class Paths:
    config: Path
    state_dir: Path
    socket: Path

    @property
    def serve_file(self) -> Path:
        return self.state_dir / "serve.json"

    @property
    def prefs_file(self) -> Path:
        return self.state_dir / "standin-prefs.json"

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> Paths:
        env = os.environ if environ is None else environ
        return cls(
            config=Path(env.get("TAILSCALE_STANDIN_CONFIG", DEFAULT_CONFIG)),
            state_dir=Path(env.get("TAILSCALE_STANDIN_STATE_DIR", DEFAULT_STATE_DIR)),
            socket=Path(env.get("TAILSCALE_STANDIN_SOCKET", DEFAULT_SOCKET)),
        )


@dataclass(frozen=True)
class NodeConfig:
    """What the lab writes to /etc/tailscale-standin.json."""

    hostname: str
    tailnet: str  # the MagicDNS suffix, e.g. "tail1234.ts.net"
    dns_name: str  # without trailing dot, e.g. "p620.tail1234.ts.net"
    tailscale_ips: tuple[str, ...]
    interface: str = "tailscale0"
    user_login: str = "lab@example.com"
    cert_file: str = ""
    key_file: str = ""

    @classmethod
    def load(cls, path: Path) -> NodeConfig:
        data = json.loads(path.read_text())
        hostname, tailnet = data["hostname"], data["tailnet"].rstrip(".")
        return cls(
            hostname=hostname,
            tailnet=tailnet,
            dns_name=(data.get("dns_name") or f"{hostname}.{tailnet}").rstrip("."),
            tailscale_ips=tuple(data.get("tailscale_ips") or ()),
            interface=data.get("interface", "tailscale0"),
            user_login=data.get("user_login", "lab@example.com"),
            cert_file=data.get("cert_file", ""),
            key_file=data.get("key_file", ""),
        )

    def cert_paths(self, state_dir: Path) -> tuple[Path, Path]:
        """Real tailscaled keeps certs as <state dir>/certs/<domain>.crt/.key."""
        certs = state_dir / "certs"
        return (
            Path(self.cert_file or certs / f"{self.dns_name}.crt"),
            Path(self.key_file or certs / f"{self.dns_name}.key"),
        )


def read_json(path: Path, default: Any) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return default


def write_json_atomic(path: Path, data: Any) -> None:
    """Write-then-rename so the daemon never reads a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def want_running(paths: Paths) -> bool:
    """The lab's node starts logged in and up; `tailscale down` flips this."""
    return bool(read_json(paths.prefs_file, {}).get("WantRunning", True))


def set_want_running(paths: Paths, running: bool) -> None:
    write_json_atomic(paths.prefs_file, {"WantRunning": running})


# ---------------------------------------------------------------- serve config (pure)


def clean_mount(path: str) -> str:
    path = "/" + path.strip().lstrip("/")
    return path.rstrip("/") or "/"


def normalize_target(target: str) -> str:
    """`4000` / `localhost:4000` / `http://localhost:4000` -> a proxy URL, like the real CLI."""
    target = target.strip()
    if target.isdigit():
        return f"http://127.0.0.1:{target}"
    if "://" not in target:
        return f"http://{target}"
    return target


def serve_set(config: dict[str, Any], host: str, port: int, mount: str, proxy: str) -> dict[str, Any]:
    new = copy.deepcopy(config)
    new.setdefault("TCP", {})[str(port)] = {"HTTPS": True}
    web = new.setdefault("Web", {}).setdefault(f"{host}:{port}", {"Handlers": {}})
    web.setdefault("Handlers", {})[clean_mount(mount)] = {"Proxy": proxy}
    return new


def serve_off(config: dict[str, Any], host: str, port: int, mount: str) -> dict[str, Any]:
    new = copy.deepcopy(config)
    key = f"{host}:{port}"
    handlers = new.get("Web", {}).get(key, {}).get("Handlers", {})
    handlers.pop(clean_mount(mount), None)
    if not handlers:
        new.get("Web", {}).pop(key, None)
        new.get("TCP", {}).pop(str(port), None)
    return {k: v for k, v in new.items() if v}


def https_ports(config: dict[str, Any]) -> list[int]:
    return sorted(int(port) for port, handler in (config.get("TCP") or {}).items() if handler.get("HTTPS"))


def handlers_for_port(config: dict[str, Any], port: int) -> dict[str, dict[str, Any]]:
    for hostport, web in (config.get("Web") or {}).items():
        if hostport.rsplit(":", 1)[-1] == str(port):
            return dict(web.get("Handlers") or {})
    return {}


def match_handler(handlers: dict[str, dict[str, Any]], path: str) -> tuple[str, dict[str, Any]] | None:
    """Longest mount point that is `path` itself or a `/`-separated prefix of it."""
    best = None
    for mount, handler in handlers.items():
        covers = mount == "/" or path == mount or path.startswith(mount.rstrip("/") + "/")
        if covers and (best is None or len(mount) > len(best[0])):
            best = (mount, handler)
    return best


def upstream_path(mount: str, request_path: str, proxy_url_path: str) -> str:
    """Strip the mount point like tailscale serve: /router/v1/messages -> <proxy path>/v1/messages."""
    rest = request_path[len(mount.rstrip("/")) :] if mount != "/" else request_path
    rest = rest if rest.startswith("/") else "/" + rest
    return (proxy_url_path.rstrip("/") + rest) or "/"


def serve_urls(config: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(public URL, mount, proxy) for the human-readable `serve status` and `serve` output."""
    rows = []
    for hostport, web in sorted((config.get("Web") or {}).items()):
        host, port = hostport.rsplit(":", 1)
        base = f"https://{host}" if port == "443" else f"https://{host}:{port}"
        for mount, handler in sorted((web.get("Handlers") or {}).items()):
            rows.append((base + ("" if mount == "/" else mount), mount, handler.get("Proxy", "")))
    return rows


# ---------------------------------------------------------------- status (pure)


def _node_id(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()


def status_json(node: NodeConfig, running: bool) -> dict[str, Any]:
    """`tailscale status --json` in the real ipnstate.Status shape (the fields people read)."""
    digest = _node_id(node.dns_name)
    never = "0001-01-01T00:00:00Z"
    self_node = {
        "ID": str(int(digest[:12], 16)),
        "PublicKey": f"nodekey:{digest[:64]}",
        "HostName": node.hostname,
        "DNSName": f"{node.dns_name}.",
        "OS": "linux",
        "UserID": 1,
        "TailscaleIPs": list(node.tailscale_ips),
        "AllowedIPs": [ip + ("/128" if ":" in ip else "/32") for ip in node.tailscale_ips],
        "Addrs": [],
        "CurAddr": "",
        "Relay": "",
        "RxBytes": 0,
        "TxBytes": 0,
        "Created": "2025-12-01T00:00:00Z",
        "LastWrite": never,
        "LastSeen": never,
        "LastHandshake": never,
        "Online": running,
        "ExitNode": False,
        "ExitNodeOption": False,
        "Active": False,
        "InNetworkMap": True,
        "InMagicSock": False,
        "InEngine": False,
        "CapMap": {"https": None},
    }
    return {
        "Version": f"{VERSION}-standin",
        "TUN": True,
        "BackendState": "Running" if running else "Stopped",
        "HaveNodeKey": True,
        "AuthURL": "",
        "TailscaleIPs": list(node.tailscale_ips) if running else None,
        "Self": self_node,
        "Health": [] if running else ["Tailscale is stopped."],
        "MagicDNSSuffix": node.tailnet,
        "CurrentTailnet": {"Name": node.user_login, "MagicDNSSuffix": node.tailnet, "MagicDNSEnabled": True},
        "CertDomains": [node.dns_name],
        "Peer": {},
        "User": {"1": {"ID": 1, "LoginName": node.user_login, "DisplayName": "Lab", "ProfilePicURL": ""}},
        "ClientVersion": None,
    }
