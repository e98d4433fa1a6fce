"""LAB STAND-IN for the `tailscale` command line (real tailscale cannot run in the lab).

Like the real CLI, every verb but `version` talks to tailscaled over its unix
socket (a one-JSON-line "LocalAPI", see daemon.py); tailscaled alone writes the
state files, and refuses writes from non-root callers as the real one does.
"""

from __future__ import annotations

import json
import signal
import socket
import sys
from typing import Any

from .state import (
    DEFAULT_HTTPS_PORT,
    VERSION,
    NodeConfig,
    Paths,
    normalize_target,
    serve_off,
    serve_set,
    serve_urls,
    status_json,
)

NOT_RUNNING = (
    "failed to connect to local tailscaled; it doesn't appear to be running "
    "(sudo systemctl start tailscaled ?)"
)


class UsageError(Exception):
    pass


class LocalApiError(Exception):
    pass


class LocalApi:
    def __init__(self, socket_path: str) -> None:
        self.socket_path = socket_path

    def call(self, op: str, **args: Any) -> dict[str, Any]:
        """One request line, one answer line; raises LocalApiError for errors."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(10)
        try:
            sock.connect(self.socket_path)
            sock.sendall(json.dumps({"op": op, **args}).encode() + b"\n")
            answer = json.loads(sock.makefile("rb").readline() or b"{}")
        except (OSError, ValueError):
            raise LocalApiError(NOT_RUNNING) from None
        finally:
            sock.close()
        if "error" in answer:
            raise LocalApiError(answer["error"])
        return answer

    def running(self) -> bool:
        return bool(self.call("prefs")["WantRunning"])

    def serve_config(self) -> dict[str, Any]:
        return self.call("serve_get")["config"]

    def set_serve_config(self, config: dict[str, Any]) -> None:
        self.call("serve_set", config=config)


def _flag_value(args: list[str], name: str) -> tuple[str | None, list[str]]:
    """Pop `--name=value` or `--name value` (Go flag style, also `-name`)."""
    rest, value, i = [], None, 0
    while i < len(args):
        arg = args[i]
        bare = arg.lstrip("-")
        if arg.startswith("-") and bare == name and i + 1 < len(args):
            value, i = args[i + 1], i + 2
            continue
        if arg.startswith("-") and bare.startswith(name + "="):
            value = bare.split("=", 1)[1]
        else:
            rest.append(arg)
        i += 1
    return value, rest


def cmd_status(api: LocalApi, node: NodeConfig, args: list[str]) -> int:
    running = api.running()
    if "--json" in args or "-json" in args:
        print(json.dumps(status_json(node, running), indent=2))
        return 0
    if not running:
        print("Tailscale is stopped.")
        return 1
    for ip in node.tailscale_ips[:1]:
        print(f"{ip:<15} {node.hostname:<20} {node.user_login.split('@')[0] + '@':<12} linux   -")
    return 0


def cmd_ip(node: NodeConfig, args: list[str]) -> int:
    ips = list(node.tailscale_ips)
    if "-4" in args:
        ips = [ip for ip in ips if ":" not in ip][:1]
    elif "-6" in args:
        ips = [ip for ip in ips if ":" in ip][:1]
    print("\n".join(ips))
    return 0


def _print_serve(config: dict) -> None:
    for url, mount, proxy in serve_urls(config):
        print(f"{url}\n|-- proxy {proxy}\n")


def cmd_serve(api: LocalApi, node: NodeConfig, args: list[str]) -> int:
    config = api.serve_config()
    if args[:1] == ["status"]:
        if "--json" in args or "-json" in args:
            print(json.dumps(config, indent=2))
            return 0
        if not config.get("Web"):
            print("No serve config")
            return 0
        for url, mount, proxy in serve_urls(config):
            print(f"{url} (tailnet only)\n|-- proxy {proxy}\n")
        return 0
    if args[:1] == ["reset"]:
        api.set_serve_config({})
        return 0
    https, args = _flag_value(args, "https")
    mount, args = _flag_value(args, "set-path")
    background = any(a.lstrip("-") in ("bg", "bg=true") for a in args)
    args = [a for a in args if a.lstrip("-") not in ("bg", "bg=true", "yes", "y", "yes=true")]
    if len(args) != 1 or args[0].startswith("-"):
        raise UsageError("usage: tailscale serve [--bg] [--https=PORT] [--set-path=PATH] <target|off>")
    port = int(https) if https else DEFAULT_HTTPS_PORT
    mount = mount or "/"
    if args[0] == "off":
        api.set_serve_config(serve_off(config, node.dns_name, port, mount))
        return 0
    new = serve_set(config, node.dns_name, port, mount, normalize_target(args[0]))
    api.set_serve_config(new)
    print("Available within your tailnet:\n")
    _print_serve({"Web": {f"{node.dns_name}:{port}": new["Web"][f"{node.dns_name}:{port}"]}})
    if background:
        print("Serve started and running in the background.")
        print(f"To disable the proxy, run: tailscale serve --https={port} --set-path={mount} off")
        return 0
    # Foreground mode, as the real CLI: serve until interrupted, then remove the handler.
    print("Press Ctrl+C to exit.", flush=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        signal.pause()
    except (KeyboardInterrupt, SystemExit):
        pass
    api.set_serve_config(serve_off(api.serve_config(), node.dns_name, port, mount))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    paths = Paths.from_env()
    verb, rest = (args[0], args[1:]) if args else ("help", [])
    if verb in ("version", "--version", "-version"):
        print(f"{VERSION}\n  tailscale commit: lab-standin\n  LAB STAND-IN: not the real tailscale")
        return 0
    if verb in ("help", "-h", "--help"):
        print(
            "LAB STAND-IN tailscale: status [--json] | ip [-4|-6] | up | down | version | "
            "serve [--bg] [--https=PORT] [--set-path=PATH] <target|off> | serve status [--json] | serve reset"
        )
        return 0
    api = LocalApi(str(paths.socket))
    try:
        api.call("ping")
        node = NodeConfig.load(paths.config)
    except LocalApiError as err:
        print(err, file=sys.stderr)
        return 1
    except (OSError, ValueError, KeyError) as err:
        print(f"tailscale stand-in: cannot read node config {paths.config}: {err}", file=sys.stderr)
        return 1
    try:
        if verb == "status":
            return cmd_status(api, node, rest)
        if verb == "ip":
            return cmd_ip(node, rest)
        if verb in ("up", "down"):
            api.call("set_prefs", WantRunning=verb == "up")
            return 0
        if verb == "serve":
            if not api.running():
                print("Tailscale is stopped.", file=sys.stderr)
                return 1
            return cmd_serve(api, node, rest)
    except UsageError as err:
        print(err, file=sys.stderr)
        return 2
    except LocalApiError as err:
        print(err, file=sys.stderr)
        return 1
    print(f"tailscale: unknown subcommand: {verb}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
