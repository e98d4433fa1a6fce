"""Gather the facts the checks judge, over the same SSH connections pyinfra uses."""

from __future__ import annotations

import json
import logging
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pyinfra.api import Config, State
from pyinfra.api import Inventory as PyinfraInventory
from pyinfra.api.connect import connect_all, disconnect_all
from pyinfra.api.facts import get_fact
from pyinfra.api.host import Host as PyinfraHost

from checks.core import ClientFacts, ServerFacts
from deploys import client as client_deploy
from deploys.nodelay import set_nodelay
from facts.firewall import NftRuleset
from facts.gpu import GpuVram
from facts.host_state import FactRequest, HostState
from facts.network import NetworkInterfaces
from facts.ollama import OllamaStatus
from facts.sockets import ListeningSockets
from facts.system import Uptime
from facts.tailscale import TailscaleServeStatus
from inventory.derive import router_route
from inventory.hosts import pyinfra_host_data
from inventory.model import Host, Inventory

REPO = Path(__file__).resolve().parent.parent


@contextmanager
def connected(inv: Inventory) -> Iterator[dict[str, PyinfraHost]]:
    """pyinfra hosts for every inventory host, connected (failed hosts are left out)."""
    logging.getLogger("pyinfra").setLevel(logging.WARNING)
    inventory = PyinfraInventory(([(h.name, pyinfra_host_data(inv, h)) for h in inv.hosts.values()], {}))
    state = State(inventory, Config())
    connect_all(state)
    try:
        hosts = {h.name: h for h in inventory.get_active_hosts()}
        for h in hosts.values():
            set_nodelay(h)
        yield hosts
    finally:
        disconnect_all(state)


def fact(host: PyinfraHost, cls, **kwargs):
    return get_fact(host.state, host, cls, kwargs=kwargs)


def run(host: PyinfraHost, command: str) -> tuple[bool, str]:
    ok, output = host.run_shell_command(command, print_output=False, print_input=False)
    return ok, output.stdout


def warm_up(host: PyinfraHost, model: Host) -> None:
    """One small request so Ollama has the persistent model loaded when /api/ps is read."""
    server = model.server
    assert server is not None
    if not server.ollama.persistent_models:
        return
    body = json.dumps({"model": server.ollama.persistent_models[0], "stream": False,
                       "messages": [{"role": "user", "content": "hi"}], "options": {"num_predict": 4}})
    run(host, f"curl -s -m 120 -o /dev/null http://127.0.0.1:{server.ollama.port}/api/chat "
              f"-d {shlex.quote(body)}")


SECURITY_RE = re.compile(r"Overall exposure level for \S+: ([0-9.]+)")


def security_exposure(host: PyinfraHost, unit: str) -> float | None:
    _, out = run(host, f"systemd-analyze security --no-pager {shlex.quote(unit)} 2>/dev/null | tail -n 3")
    match = SECURITY_RE.search(out)
    return float(match.group(1)) if match else None


def observe_server(host: PyinfraHost, model: Host, paths: list[str], units: list[str], warm: bool = True) -> ServerFacts:
    server = model.server
    assert server is not None
    if warm:
        warm_up(host, model)
    state = fact(host, HostState, paths=tuple(paths), units=tuple(units), facts=(FactRequest.of(Uptime),))
    facts = ServerFacts(
        sockets=fact(host, ListeningSockets),
        interfaces=fact(host, NetworkInterfaces),
        ruleset=fact(host, NftRuleset),
        serve=fact(host, TailscaleServeStatus) if server.exposure.tailscale_serve.enabled else None,
        ollama=fact(host, OllamaStatus, address=f"127.0.0.1:{server.ollama.port}"),
        gpu=fact(host, GpuVram),
        units=state.units,
        paths=state.paths,
        security_exposure=security_exposure(host, "llm-router.service"),
        uptime_s=state.get(Uptime),
    )
    if server.exposure.caddy.enabled and server.exposure.caddy.site_names:
        caddy = server.exposure.caddy
        _, code = run(host, f"curl -sk -o /dev/null -w '%{{http_code}}' -m 10 "
                            f"https://{caddy.site_names[0]}:{caddy.https_port}{caddy.path}/v1/models")
        facts.caddy_answer = int(code) if code.strip().isdigit() else None
    return facts


def client_request_script(url: str, key_file: str, model: str) -> str:
    """Status codes of /v1/messages with the client's key, then without; the key never enters argv."""
    body = json.dumps({"model": model, "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]})
    curl = ("curl -s -o /dev/null -w '%{http_code}\\n' -m 60 -H 'content-type: application/json' "
            f"-H 'anthropic-version: 2023-06-01' -d {shlex.quote(body)} {shlex.quote(url + '/v1/messages')}")
    return (f"umask 077; h=$(mktemp); trap 'rm -f \"$h\"' EXIT; "
            f"printf 'x-api-key: %s\\n' \"$(cat {shlex.quote(key_file)})\" > \"$h\"; "
            f"{curl} -H @\"$h\"; {curl}")


def observe_client(host: PyinfraHost, inv: Inventory, model: Host) -> ClientFacts:
    assert model.client is not None
    url = router_route(inv, model).url
    user = model.client.users[0]
    paths = client_deploy.user_paths(user)
    _, out = run(host, client_request_script(url, paths["key"], model.client.default_model))
    codes = [line.strip() for line in out.splitlines() if line.strip()]
    state = fact(host, HostState, paths=(paths["key"],))
    if len(codes) != 2 or not all(c.isdigit() for c in codes):
        return ClientFacts(url=url, error=f"request failed: {out.strip() or 'no output'}", paths=state.paths)
    return ClientFacts(url=url, with_key=int(codes[0]), without_key=int(codes[1]), paths=state.paths)


def probe(argv: list[str], target: str, port: int) -> str:
    """From a vantage point: 'open' (TCP connected), 'refused' (reset or timeout) or 'error: ...'."""
    if argv and argv[0] in ("python", "python3"):
        argv = [sys.executable, *argv[1:]]
    # bash's /dev/tcp needs nothing installed at the vantage point.
    script = f"timeout 3 bash -c 'exec 3<>/dev/tcp/{target}/{port}' 2>/dev/null && echo open || echo refused"
    try:
        done = subprocess.run([*argv, "sh", "-c", script], cwd=REPO, capture_output=True, text=True, timeout=20,
                              check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"error: {exc}"
    answer = done.stdout.strip().splitlines()
    return answer[-1] if answer and answer[-1] in ("open", "refused") else f"error: {done.stderr.strip()[:200]}"
