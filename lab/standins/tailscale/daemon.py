"""LAB STAND-IN for `tailscaled` (real tailscale cannot run in the lab sandbox).

Runs what `tailscale serve` needs for real: an HTTPS listener on each tailnet
address (config `tailscale_ips`, or TAILSCALE_STANDIN_BIND) at every HTTPS port
of the serve config, with the node's certificate. Each request is proxied to the
longest matching mount point's target with the mount prefix stripped
(`/router/v1/messages` -> `http://localhost:4000/v1/messages`), and responses
are streamed through chunk by chunk (SSE keeps flowing). The serve config,
prefs (`tailscale up/down`) and node config are re-read whenever they change.
A unix socket stands in for the LocalAPI: one JSON request line, one JSON
answer line (ops: ping, prefs, set_prefs, serve_get, serve_set); like the real
daemon it is the only writer of the state files and refuses writes from
non-root peers.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import ssl
import struct
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .state import (
    NodeConfig,
    Paths,
    handlers_for_port,
    https_ports,
    match_handler,
    read_json,
    set_want_running,
    upstream_path,
    want_running,
    write_json_atomic,
)

HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "trailers",
    "transfer-encoding",
    "upgrade",
    "host",
    "content-length",
    "expect",
}
POLL_SECONDS = 0.25


def log(message: str) -> None:
    sys.stderr.write(f"tailscaled (lab stand-in): {message}\n")
    sys.stderr.flush()


class ServeProxyHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    daemon: TailscaledStandin  # set per listener
    port: int

    def version_string(self) -> str:
        return "tailscale"

    def log_message(self, format: str, *args: Any) -> None:
        log(f"serve {self.client_address[0]} " + format % args)

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            body = b""
            while size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16):
                body += self.rfile.read(size)
                self.rfile.readline()
            while self.rfile.readline().strip():
                pass
            return body
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _plain(self, status: int, text: str) -> None:
        data = text.encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _proxy(self) -> None:
        body = self._body()
        split = urlsplit(self.path)
        matched = match_handler(handlers_for_port(self.daemon.serve_config, self.port), split.path)
        if matched is None or not matched[1].get("Proxy"):
            self._plain(404, "404 page not found\n")
            return
        mount, handler = matched
        target = urlsplit(handler["Proxy"])
        path = upstream_path(mount, split.path, target.path) + (f"?{split.query}" if split.query else "")
        headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
        headers.update(
            {
                "Host": target.netloc,
                "X-Forwarded-For": self.client_address[0],
                "X-Forwarded-Host": self.headers.get("Host", ""),
                "X-Forwarded-Proto": "https",
            }
        )
        if body or self.command in ("POST", "PUT", "PATCH"):
            headers["Content-Length"] = str(len(body))
        conn_class = http.client.HTTPSConnection if target.scheme == "https" else http.client.HTTPConnection
        upstream = conn_class(target.hostname or "127.0.0.1", target.port, timeout=600)
        try:
            upstream.request(self.command, path, body=body or None, headers=headers)
            resp = upstream.getresponse()
        except OSError as err:
            log(f"proxy error: {err}")
            upstream.close()
            self._plain(502, "")
            return
        try:
            self._relay(resp)
        finally:
            upstream.close()

    def _relay(self, resp: http.client.HTTPResponse) -> None:
        self.send_response(resp.status, resp.reason)
        for key, value in resp.getheaders():
            if key.lower() not in HOP_BY_HOP:
                self.send_header(key, value)
        no_body = self.command == "HEAD" or resp.status in (204, 304) or 100 <= resp.status < 200
        length = resp.getheader("Content-Length")
        if no_body:
            self.send_header("Content-Length", length or "0")
            self.end_headers()
            return
        if length is not None:
            self.send_header("Content-Length", length)
            self.end_headers()
            while data := resp.read1(65536):
                self.wfile.write(data)
                self.wfile.flush()
            return
        # Unknown length (SSE, NDJSON): re-chunk and flush every piece as it arrives.
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        while data := resp.read1(65536):
            self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
            self.wfile.flush()
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _proxy


class TLSServer(ThreadingHTTPServer):
    """TLS handshake in the per-connection thread, so one slow client cannot block accept()."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128
    tls: ssl.SSLContext

    def finish_request(self, request: Any, client_address: Any) -> None:
        try:
            request = self.tls.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError) as err:
            log(f"TLS handshake from {client_address[0]} failed: {err}")
            return
        super().finish_request(request, client_address)

    def handle_error(self, request: Any, client_address: Any) -> None:
        log(f"connection from {client_address[0]} ended with {sys.exc_info()[1]!r}")


class TailscaledStandin:
    def __init__(self, paths: Paths, bind_override: list[str] | None = None) -> None:
        self.paths = paths
        self.bind_override = bind_override
        self.serve_config: dict[str, Any] = {}
        self._listeners: dict[tuple[str, int], TLSServer] = {}
        self._failed: set[tuple[str, int]] = set()
        self._seen: tuple[Any, ...] | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()

    # -------------------------------------------------------- reconcile

    def _snapshot(self) -> tuple[Any, ...]:
        def stamp(path: Path) -> tuple[float, int] | None:
            try:
                st = path.stat()
                return (st.st_mtime_ns, st.st_size)
            except OSError:
                return None

        node = self._node()
        certs = node.cert_paths(self.paths.state_dir) if node else ()
        files = [self.paths.config, self.paths.serve_file, self.paths.prefs_file, *certs]
        return tuple(stamp(p) for p in files)

    def _node(self) -> NodeConfig | None:
        try:
            return NodeConfig.load(self.paths.config)
        except (OSError, ValueError, KeyError):
            return None

    def reconcile(self) -> None:
        with self._lock:
            self._reconcile()

    def _reconcile(self) -> None:
        snapshot = self._snapshot()
        if snapshot == self._seen and not self._failed:
            return
        if self._seen is not None and snapshot[3:] != self._seen[3:]:
            self._stop_listeners(list(self._listeners))  # new certificate: restart the listeners
        self._seen = snapshot
        node = self._node()
        self.serve_config = read_json(self.paths.serve_file, {}) or {}
        wanted: set[tuple[str, int]] = set()
        if node is not None and want_running(self.paths):
            addresses = self.bind_override or list(node.tailscale_ips)
            wanted = {(ip, port) for ip in addresses for port in https_ports(self.serve_config)}
        self._stop_listeners([k for k in self._listeners if k not in wanted])
        self._failed &= wanted
        for key in sorted(wanted - set(self._listeners)):
            assert node is not None
            self._start_listener(node, *key)

    def _stop_listeners(self, keys: list[tuple[str, int]]) -> None:
        for key in keys:
            server = self._listeners.pop(key)
            server.shutdown()
            server.server_close()
            log(f"stopped HTTPS listener on {key[0]}:{key[1]}")

    def _start_listener(self, node: NodeConfig, ip: str, port: int) -> None:
        cert, key = node.cert_paths(self.paths.state_dir)
        try:
            tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            tls.load_cert_chain(cert, key)
            handler = type("Handler", (ServeProxyHandler,), {"daemon": self, "port": port})
            server_class = TLSServer
            if ":" in ip:
                server_class = type("TLSServer6", (TLSServer,), {"address_family": socket.AF_INET6})
            server = server_class((ip, port), handler)
        except (OSError, ssl.SSLError) as err:
            if (ip, port) not in self._failed:
                log(f"cannot serve HTTPS on {ip}:{port} (will retry): {err}")
            self._failed.add((ip, port))
            return
        server.tls = tls
        self._failed.discard((ip, port))
        self._listeners[(ip, port)] = server
        threading.Thread(target=server.serve_forever, name=f"https-{ip}:{port}", daemon=True).start()
        log(f"serving HTTPS for {node.dns_name} on {ip}:{port}")

    # -------------------------------------------------------- LocalAPI socket

    def _open_socket(self) -> socket.socket:
        path = self.paths.socket
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists() or path.is_symlink():
            path.unlink()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(str(path))
        path.chmod(0o666)  # like the real socket: anyone may ask, only root may change things
        sock.listen(16)
        sock.settimeout(POLL_SECONDS)
        return sock

    def run(self) -> int:
        sock = self._open_socket()
        log(f"LAB STAND-IN tailscaled started; socket {self.paths.socket}, state {self.paths.state_dir}")
        self.reconcile()
        _sd_notify("READY=1")
        next_poll = time.monotonic() + POLL_SECONDS
        try:
            while not self._stop.is_set():
                try:
                    conn, _ = sock.accept()
                except TimeoutError:
                    pass
                else:
                    self._serve_local_api(conn)
                if time.monotonic() >= next_poll:
                    self.reconcile()
                    next_poll = time.monotonic() + POLL_SECONDS
        finally:
            sock.close()
            self.paths.socket.unlink(missing_ok=True)
            for server in self._listeners.values():
                server.shutdown()
                server.server_close()
        return 0

    def stop(self) -> None:
        self._stop.set()

    # -------------------------------------------------------- LocalAPI requests

    def _serve_local_api(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(2)
            try:
                request = json.loads(conn.makefile("rb").readline() or b"{}")
                answer = self.local_api(request, _peer_uid(conn))
                conn.sendall(json.dumps(answer).encode() + b"\n")
            except (OSError, ValueError) as err:
                log(f"LocalAPI request failed: {err}")

    def local_api(self, request: dict[str, Any], peer_uid: int) -> dict[str, Any]:
        op = request.get("op")
        if op == "ping":
            return {"ok": True}
        if op == "prefs":
            return {"WantRunning": want_running(self.paths)}
        if op == "serve_get":
            return {"config": read_json(self.paths.serve_file, {}) or {}}
        if op in ("set_prefs", "serve_set") and peer_uid != 0:
            what = "prefs write access denied" if op == "set_prefs" else "serve config denied"
            return {"error": f"Access denied: {what}"}
        if op == "set_prefs":
            set_want_running(self.paths, bool(request.get("WantRunning")))
        elif op == "serve_set" and isinstance(request.get("config"), dict):
            write_json_atomic(self.paths.serve_file, request["config"])
        else:
            return {"error": f"unsupported request {op!r}"}
        self.reconcile()  # apply now rather than at the next poll
        return {"ok": True}


def _peer_uid(conn: socket.socket) -> int:
    """The caller's uid from SO_PEERCRED (struct ucred: pid, uid, gid)."""
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", creds)[1]


def _sd_notify(message: str) -> None:
    """Tell systemd we are ready (Type=notify), like the real tailscaled."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.connect(address)
        sock.sendall(message.encode())


def main(argv: list[str] | None = None) -> int:
    import signal

    args = list(sys.argv[1:] if argv is None else argv)
    if "--cleanup" in args or "-cleanup" in args:
        return 0
    environ = dict(os.environ)
    for arg in args:  # real flags: --state=/var/lib/tailscale/tailscaled.state --socket=...
        name, _, value = arg.lstrip("-").partition("=")
        if name == "socket" and value:
            environ.setdefault("TAILSCALE_STANDIN_SOCKET", value)
        if name == "state" and value and "TAILSCALE_STANDIN_STATE_DIR" not in environ:
            environ["TAILSCALE_STANDIN_STATE_DIR"] = str(Path(value).parent)
    bind = [a for a in environ.get("TAILSCALE_STANDIN_BIND", "").split(",") if a]
    daemon = TailscaledStandin(Paths.from_env(environ), bind or None)
    signal.signal(signal.SIGTERM, lambda *_: daemon.stop())
    signal.signal(signal.SIGINT, lambda *_: daemon.stop())
    return daemon.run()


if __name__ == "__main__":
    sys.exit(main())
