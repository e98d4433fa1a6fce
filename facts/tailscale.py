"""Tailscale node status and ``tailscale serve`` configuration.

Both commands print the CLI's output as one section (facts/sections.py) with its exit
status, rather than relying on ``requires_command``, so the result can say *why* it is
empty: status 127 (sh's "command not found") means the CLI is not installed, and a
stopped daemon's error message is kept (stderr is merged).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pyinfra.api import FactBase
from typing_extensions import override

from facts._util import JsonDataclass, parse_json_lines, to_int
from facts.sections import Section, SectionFact, framed, section

TAILSCALE = "tailscale"  # the section holding the CLI's output
NOT_INSTALLED = "tailscale is not installed"
_COMMAND_NOT_FOUND = 127  # POSIX sh's exit status for a command it cannot find


def _tailscale_command(arguments: str) -> str:
    return framed(TAILSCALE, f"tailscale {arguments} 2>&1")


def _cli_output(output: list[str]) -> Section | str:
    """The CLI's section of the command's output, or why there is none to parse."""
    cli = section(output, TAILSCALE)
    if cli.status == _COMMAND_NOT_FOUND:
        return NOT_INSTALLED
    return cli.problem or cli


def _problem(lines: list[str]) -> str | None:
    """Why the CLI's output is not usable: the first line the CLI printed."""
    stripped = [line.strip() for line in lines if line.strip()]
    if not stripped:
        return "tailscale printed nothing"
    return "tailscale printed invalid JSON" if stripped[0].startswith(("{", "[")) else stripped[0]


@dataclass(frozen=True)
class TailscaleNode(JsonDataclass):
    """``backend_state`` is tailscaled's state (``Running``, ``Stopped``, ``NeedsLogin`` ...);
    ``dns_name`` is the MagicDNS name without its trailing dot."""

    installed: bool
    backend_state: str | None
    dns_name: str | None
    tailscale_ips: tuple[str, ...]
    online: bool | None
    reason: str | None = None

    @property
    def running(self) -> bool:
        return self.backend_state == "Running"


def parse_tailscale_status(lines: list[str]) -> TailscaleNode:
    """Parse ``tailscale status --json`` (see ipnstate.Status)."""
    data = parse_json_lines(lines)
    if not isinstance(data, dict):
        return TailscaleNode(True, None, None, (), None, _problem(lines))
    me = data.get("Self") if isinstance(data.get("Self"), dict) else {}
    dns_name = me.get("DNSName")
    ips = data.get("TailscaleIPs") or me.get("TailscaleIPs")
    online = me.get("Online")
    backend_state = data.get("BackendState")
    return TailscaleNode(
        installed=True,
        backend_state=backend_state if isinstance(backend_state, str) else None,
        dns_name=(dns_name.rstrip(".") or None) if isinstance(dns_name, str) else None,
        tailscale_ips=tuple(ip for ip in ips if isinstance(ip, str)) if isinstance(ips, list) else (),
        online=online if isinstance(online, bool) else None,
    )


@dataclass(frozen=True)
class ServeRoute(JsonDataclass):
    """One ``tailscale serve`` web handler: ``https://host:port/path`` -> ``proxy``.

    ``proxy`` is None for handlers that serve a directory or text instead; ``service`` names the
    Tailscale Service (``svc:name``) the route belongs to, None for the node's own name."""

    port: int
    https: bool
    host: str
    path: str
    proxy: str | None
    funnel: bool
    service: str | None = None


@dataclass(frozen=True)
class TailscaleServe(JsonDataclass):
    """``services``: every Tailscale Service configured here (``svc:name``), web routes or not."""

    installed: bool
    routes: tuple[ServeRoute, ...]
    reason: str | None = None
    services: tuple[str, ...] = ()


def _mapping(config: dict[str, Any], key: str) -> dict[str, Any]:
    value = config.get(key)
    return value if isinstance(value, dict) else {}


def _serve_config_routes(config: dict[str, Any], service: str | None = None,
                         funnel: dict[str, Any] | None = None) -> list[ServeRoute]:
    """Routes of one ipn.ServeConfig (or one of its ServiceConfigs): ``TCP`` says which ports
    speak HTTPS, ``Web`` holds the handlers per ``host:port``, ``AllowFunnel`` the public ones."""
    tcp, web = _mapping(config, "TCP"), _mapping(config, "Web")
    funnel = _mapping(config, "AllowFunnel") if funnel is None else funnel
    routes = []
    for host_port, site in web.items():
        host, _, port_text = str(host_port).rpartition(":")
        port = to_int(port_text)
        if port is None or not isinstance(site, dict) or not isinstance(site.get("Handlers"), dict):
            continue
        listener = tcp.get(str(port)) if isinstance(tcp.get(str(port)), dict) else {}
        for path, handler in site["Handlers"].items():
            proxy = handler.get("Proxy") if isinstance(handler, dict) else None
            routes.append(
                ServeRoute(
                    port=port,
                    https=bool(listener.get("HTTPS")),
                    host=host,
                    path=str(path),
                    proxy=proxy if isinstance(proxy, str) else None,
                    funnel=funnel.get(host_port) is True,
                    service=service,
                )
            )
    return routes


def parse_tailscale_serve(lines: list[str]) -> TailscaleServe:
    """Parse ``tailscale serve status --json``.

    An empty configuration prints ``{}`` or, on some versions, ``null``. Foreground
    sessions (``tailscale serve`` without ``--bg``) are nested under ``Foreground``;
    Tailscale Services (``tailscale serve --service=svc:name``, 1.86+) under ``Services``, which
    can be the only key (1.92).
    """
    data = parse_json_lines(lines)
    if data is None and [line.strip() for line in lines if line.strip()] == ["null"]:
        return TailscaleServe(True, ())
    if not isinstance(data, dict):
        return TailscaleServe(True, (), _problem(lines))
    routes = _serve_config_routes(data)
    for session in _mapping(data, "Foreground").values():
        if isinstance(session, dict):
            routes.extend(_serve_config_routes(session))
    services = _mapping(data, "Services")
    for name, config in services.items():
        if isinstance(config, dict):
            routes.extend(_serve_config_routes(config, str(name), _mapping(data, "AllowFunnel")))
    return TailscaleServe(True, tuple(routes), services=tuple(str(name) for name in services))


def serve_route_for_path(serve: TailscaleServe, path: str, port: int = 443,
                         service: str | None = None) -> ServeRoute | None:
    """The route serving ``path`` on ``port`` (the router's ``/router`` on 443) on the node's own
    name, or of Tailscale Service ``service``."""
    return next((route for route in serve.routes
                 if route.path == path and route.port == port and route.service == service), None)


def service_routes_for_path(serve: TailscaleServe, path: str, port: int = 443) -> tuple[ServeRoute, ...]:
    """Routes of any Tailscale Service serving ``path`` on ``port``."""
    return tuple(route for route in serve.routes
                 if route.service is not None and route.path == path and route.port == port)


class TailscaleStatus(FactBase[TailscaleNode]):
    """
    Returns this node's tailscale state: backend state, MagicDNS name, tailscale IPs, online.

    .. code:: python

        TailscaleNode(installed=True, backend_state="Running", dns_name="p620.tail1234.ts.net",
                      tailscale_ips=("100.64.0.1", "fd7a:115c:a1e0::1"), online=True)
    """

    @override
    @staticmethod
    def default() -> TailscaleNode:
        return TailscaleNode(False, None, None, (), None, "tailscale printed nothing")

    @override
    def command(self) -> str:
        return _tailscale_command("status --json")

    @override
    def process(self, output: list[str]) -> TailscaleNode:
        cli = _cli_output(output)
        if isinstance(cli, str):
            return TailscaleNode(cli != NOT_INSTALLED, None, None, (), None, cli)
        return parse_tailscale_status(list(cli.lines))


class TailscaleServeStatus(SectionFact[TailscaleServe]):
    """
    Returns the ``tailscale serve`` routes (port, host, path, proxy target, funnel).

    .. code:: python

        TailscaleServe(installed=True, routes=(ServeRoute(port=443, https=True, host="p620.tail1234.ts.net",
                       path="/router", proxy="http://127.0.0.1:4000", funnel=False),))
    """

    @override
    @staticmethod
    def default() -> TailscaleServe:
        return TailscaleServe(False, (), "tailscale printed nothing")

    @override
    def command(self) -> str:
        return _tailscale_command("serve status --json")

    @override
    def process(self, output: list[str]) -> TailscaleServe:
        cli = _cli_output(output)
        if isinstance(cli, str):
            return TailscaleServe(cli != NOT_INSTALLED, (), cli)
        return parse_tailscale_serve(list(cli.lines))
