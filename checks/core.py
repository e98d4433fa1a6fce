"""Acceptance checks as pure functions of observed facts.

`observe.py` gathers the facts over SSH; everything here is pure, so each check
has unit tests for PASS and FAIL built from plain fact values.
"""

from __future__ import annotations

import ipaddress
from dataclasses import asdict, dataclass, field
from typing import Literal

from checks.nft_eval import admitted_interfaces
from deploys.router import UNIT as ROUTER_UNIT
from facts.files import PathState
from facts.firewall import RulesetUnreadable
from facts.gpu import GpuInventory
from facts.host_state import Undeclared
from facts.network import NetworkInterface
from facts.ollama import OllamaState
from facts.sockets import ListeningSocket, listeners_on_port
from facts.tailscale import TailscaleServe, serve_route_for_path, service_routes_for_path
from facts.units import UnitState, unit_state
from inventory.derive import router_interfaces, served_models
from inventory.model import Host, Inventory

Status = Literal["PASS", "FAIL", "SKIP", "STARTING"]
GB = 1_000_000_000
ROUTER_STARTUP_S = 180  # a router that does not listen this long after its start has failed to start


@dataclass(frozen=True)
class Result:
    host: str
    check: str
    expected: str
    observed: str
    status: Status
    reason: str = ""  # for FAIL: what is wrong and what to do; for SKIP: why

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class ServerFacts:
    """What observe.py saw on a gpu_server (None: could not be observed)."""

    sockets: tuple[ListeningSocket, ...] | None = None
    interfaces: tuple[NetworkInterface, ...] | None = None
    ruleset: dict | RulesetUnreadable | None = None
    serve: TailscaleServe | None = None
    ollama: OllamaState | None = None
    gpu: GpuInventory | None = None
    units: dict[str, UnitState] = field(default_factory=dict)
    paths: dict[str, PathState] = field(default_factory=dict)
    security_exposure: float | None = None
    caddy_answer: int | None = None  # HTTP status through Caddy, when Caddy is chosen
    uptime_s: float | None = None  # the host's clock for how long a unit has been starting


@dataclass
class ClientFacts:
    url: str = ""
    with_key: int | None = None  # HTTP status of /v1/messages with the client's own key
    without_key: int | None = None
    error: str = ""
    paths: dict[str, PathState] = field(default_factory=dict)


def _result(host: str, check: str, expected: str, observed: str, ok: bool, fail_reason: str) -> Result:
    return Result(host, check, expected, observed, "PASS" if ok else "FAIL", "" if ok else fail_reason)


def _skip(host: str, check: str, expected: str, reason: str) -> Result:
    return Result(host, check, expected, "-", "SKIP", reason)


def _addresses(sockets: tuple[ListeningSocket, ...]) -> str:
    return ", ".join(f"{s.address}:{s.port}" for s in sockets) or "nothing listening"


# --- listening sockets --------------------------------------------------------------


def check_ollama_bind(host: Host, facts: ServerFacts) -> Result:
    server = host.server
    assert server is not None
    expected = f"127.0.0.1:{server.ollama.port} only"
    if facts.sockets is None:
        return _skip(host.name, "ollama listens on loopback only", expected, "ss did not answer")
    found = listeners_on_port(facts.sockets, server.ollama.port)
    ok = bool(found) and all(s.is_loopback for s in found)
    reason = ("Ollama is not listening: systemctl status ollama" if not found else
              "Ollama listens beyond loopback: it has no authentication; set OLLAMA_HOST=127.0.0.1 "
              "(re-apply the deploy)")
    return _result(host.name, "ollama listens on loopback only", expected, _addresses(found), ok, reason)


def check_router_bind(host: Host, facts: ServerFacts) -> Result:
    server = host.server
    assert server is not None
    bind = ipaddress.ip_address(str(server.router.bind))
    expected = f"{bind}:{server.router.port}"
    if facts.sockets is None:
        return _skip(host.name, "router listens", expected, "ss did not answer")
    found = listeners_on_port(facts.sockets, server.router.port)
    if bind.is_unspecified:
        ok = any(s.is_wildcard for s in found)
    else:
        ok = any(ipaddress.ip_address(s.address) == bind for s in found if not s.is_wildcard)
    # The router's unit is active as soon as its process runs (Type=exec); it listens some 30 s later.
    unit = unit_state(facts.units, ROUTER_UNIT)
    seconds = unit.starting_for_s(facts.uptime_s) if unit is not None and unit.is_running else None
    if not found and seconds is not None and seconds < ROUTER_STARTUP_S:
        return Result(host.name, "router listens", expected, f"not yet, started {seconds:.0f} s ago", "STARTING",
                      f"the router is still starting ({seconds:.0f} s): run the checks again shortly")
    return _result(host.name, "router listens", expected, _addresses(found), ok,
                   "the router is not listening where the inventory says: systemctl status llm-router; "
                   "journalctl -u llm-router")


# --- firewall -----------------------------------------------------------------------


# Stands for every interface the host does not have yet (a VPN, a new NIC): it must be refused too.
OTHER_INTERFACE = "other-if"


def _interface_names(facts: ServerFacts, host: Host) -> list[str]:
    names = {i.name for i in facts.interfaces or ()}
    names.update(router_interfaces(host))
    names.update(("lo", OTHER_INTERFACE))
    return sorted(names)


def _shown(names: list[str]) -> str:
    return ", ".join("any other interface" if n == OTHER_INTERFACE else n for n in names)


def check_firewall_port(host: Host, facts: ServerFacts, port: int, expected_ifaces: list[str], what: str) -> Result:
    check = f"firewall admits {what} port {port}"
    expected = ", ".join(sorted(expected_ifaces))
    if facts.ruleset is None:
        return _result(host.name, check, expected, "no nftables ruleset", False,
                       "nft -j list ruleset gave nothing: the firewall is not loaded; re-apply the deploy")
    if isinstance(facts.ruleset, RulesetUnreadable):
        return _result(host.name, check, expected, "unreadable nftables ruleset", False, facts.ruleset.reason)
    names = _interface_names(facts, host)
    # IPv4 and IPv6 both: an `ip`-family table leaves IPv6 wide open.
    admissions = [admitted_interfaces(facts.ruleset, port, names, family=family) for family in ("ip", "ip6")]
    admitted = sorted({name for a in admissions for name in a.accepted})
    observed = _shown(admitted) or "none"
    for admission in admissions:
        if admission.uncertain:
            unsure = sorted(admission.uncertain)
            return _result(host.name, check, expected, f"{observed} (uncertain on {', '.join(unsure)})", False,
                           "rules the evaluator cannot judge: " + admission.decisions[unsure[0]].explain())
    admission = next((a for a in admissions if set(a.accepted) != set(admitted)), admissions[0])
    extra = sorted(set(admitted) - set(expected_ifaces))
    missing = sorted(set(expected_ifaces) - set(admitted))
    reason = []
    if extra:
        reason.append(f"also open on {_shown(extra)}: is table inet llm_router loaded? re-apply the deploy")
    if missing:
        reason.append(f"closed on {', '.join(missing)}: {admission.decisions[missing[0]].explain()}")
    return _result(host.name, check, expected, observed, not extra and not missing, "; ".join(reason))


def check_firewall(host: Host, facts: ServerFacts) -> list[Result]:
    server = host.server
    assert server is not None
    return [
        check_firewall_port(host, facts, server.router.port, router_interfaces(host), "router"),
        check_firewall_port(host, facts, server.ollama.port, ["lo"], "ollama"),
    ]


def check_probe(host: Host, vantage: str, target: str, port: int, expected: str, observed: str) -> Result:
    return _result(host.name, f"probe {vantage} -> {target}:{port}", expected, observed, observed == expected,
                   f"from {vantage} the router port is {observed}, expected {expected}")


# --- publication --------------------------------------------------------------------


def check_publication(host: Host, facts: ServerFacts) -> list[Result]:
    server = host.server
    assert server is not None
    results = []
    serve = server.exposure.tailscale_serve
    if serve.enabled:
        expected = f"https {serve.https_port} {serve.path} -> http://localhost:{server.router.port}"
        if facts.serve is None or not facts.serve.installed:
            results.append(_result(host.name, "tailscale serve", expected, "tailscale not installed", False,
                                   "install and log in to tailscale, then re-apply"))
        else:
            route = serve_route_for_path(facts.serve, serve.path, serve.https_port)
            observed = f"{route.path} -> {route.proxy}" if route else "no route"
            ok = route is not None and route.proxy in (f"http://localhost:{server.router.port}",
                                                       f"http://127.0.0.1:{server.router.port}")
            fix = "systemctl restart llm-router-tailscale-serve (or re-apply)"
            reason = f"the {serve.path} mapping is missing: {fix}"
            if route is None and facts.serve.services:
                # tailscale 1.92 can hold only Tailscale Services: say what is served, and where.
                elsewhere = service_routes_for_path(facts.serve, serve.path, serve.https_port)
                observed = "; ".join(f"{r.service}: https://{r.host}{r.path} -> {r.proxy}" for r in elsewhere) \
                    or f"no route; only Tailscale Services: {', '.join(facts.serve.services)}"
                reason = (f"{serve.path} is not served on this node's name "
                          f"({host.network.tailnet_dns_name or 'its tailnet name'}), which the clients use: {fix}")
            results.append(_result(host.name, "tailscale serve", expected, observed, ok, reason))
    if server.exposure.caddy.enabled:
        results.append(_result(host.name, "caddy serves the router", "HTTP 401 without a key",
                               str(facts.caddy_answer), facts.caddy_answer == 401,
                               "Caddy does not proxy to the router: systemctl status caddy"))
    return results


# --- VRAM ---------------------------------------------------------------------------


def check_vram_fit(inv: Inventory, host: Host, facts: ServerFacts) -> Result:
    server = host.server
    assert server is not None
    check = "persistent models fit VRAM"
    need = max((inv.models[m].vram_gb for m in server.ollama.persistent_models), default=0.0)
    expected = f"{need:g} GB + {server.vram_headroom_gb:g} GB headroom <= total VRAM"
    if facts.gpu is None or not facts.gpu.devices:
        reason = facts.gpu.reason if facts.gpu and facts.gpu.reason else "no GPU visible"
        return _skip(host.name, check, expected, f"{reason} (no GPU tool or amdgpu sysfs on this host)")
    if facts.gpu.total_bytes is None:  # unified memory (GB10): unknown, never judged as 0 GB
        return _skip(host.name, check, expected, facts.gpu.reason or "the GPU tool reports no VRAM total")
    total_gb = facts.gpu.total_bytes / GB
    ok = need + server.vram_headroom_gb <= total_gb
    return _result(host.name, check, expected, f"{total_gb:.1f} GB total", ok,
                   "the GPU has less VRAM than the inventory assumes: fix server.gpus or the model catalogue")


def check_gpu_offload(host: Host, facts: ServerFacts) -> Result:
    check = "loaded model fully on GPU"
    if facts.ollama is None or not facts.ollama.reachable:
        return _result(host.name, check, "size_vram == size", "Ollama unreachable", False,
                       "Ollama does not answer on loopback: systemctl status ollama")
    if not facts.ollama.loaded:
        return _skip(host.name, check, "size_vram == size", "no model loaded after the warm-up request")
    partial = [m for m in facts.ollama.loaded if not m.fully_on_gpu]
    observed = ", ".join(f"{m.name} {m.size_vram}/{m.size}" for m in facts.ollama.loaded)
    return _result(host.name, check, "size_vram == size", observed, not partial,
                   "part of the model runs on the CPU: lower context_length or num_parallel, or free VRAM")


def check_models_installed(host: Host, facts: ServerFacts) -> Result:
    server = host.server
    assert server is not None
    wanted = served_models(server)
    check = "models pulled"
    if facts.ollama is None or not facts.ollama.reachable:
        return _result(host.name, check, ", ".join(wanted), "Ollama unreachable", False,
                       "Ollama does not answer on loopback: systemctl status ollama")
    have = {m.name for m in facts.ollama.installed}
    missing = [m for m in wanted if m not in have]
    return _result(host.name, check, ", ".join(wanted), ", ".join(sorted(have)) or "none", not missing,
                   f"not pulled yet: {', '.join(missing)}; see systemctl status ollama-model-loader")


def check_idle(host: Host, facts: ServerFacts, baseline_used: list[int | None] | None,
               tolerance_bytes: int) -> list[Result]:
    """Idle means no model loaded (Ollama's /api/ps) and, where VRAM is measured, VRAM back to the
    baseline; only devices measured both times are compared."""
    results = []
    check = "idle: VRAM back to baseline"
    if facts.ollama is not None and facts.ollama.reachable:
        loaded = ", ".join(m.name for m in facts.ollama.loaded) or "none"
        results.append(_result(host.name, "idle: no model loaded", "none", loaded, not facts.ollama.loaded,
                               "a model is still loaded after keep_alive: check OLLAMA_KEEP_ALIVE and "
                               "clients holding it with keep_alive -1"))
    else:
        results.append(_result(host.name, "idle: no model loaded", "none", "Ollama unreachable", False,
                               "Ollama does not answer on loopback: systemctl status ollama"))
    used = [d.used_bytes for d in facts.gpu.devices] if facts.gpu is not None else []
    pairs = [(u, b) for u, b in zip(used, baseline_used or []) if u is not None and b is not None]
    if baseline_used is None:
        results.append(_skip(host.name, check, "baseline",
                             "no baseline recorded: run `python -m checks baseline` first"))
    elif not used:
        reason = facts.gpu.reason if facts.gpu is not None and facts.gpu.reason else "no GPU visible"
        results.append(_skip(host.name, check, "baseline", f"{reason}: idle judged by the loaded models only"))
    elif len(used) != len(baseline_used):
        results.append(_result(host.name, check, f"{len(baseline_used)} GPUs", f"{len(used)} GPUs", False,
                               "the GPUs differ from the baseline's: record it again with `python -m checks "
                               "baseline`"))
    elif not pairs:
        reason = facts.gpu.reason if facts.gpu is not None and facts.gpu.reason else "VRAM use not reported"
        results.append(_skip(host.name, check, "baseline", f"{reason}: idle judged by the loaded models only"))
    else:
        ok = all(u <= b + tolerance_bytes for u, b in pairs)
        results.append(_result(host.name, check, " ".join(f"{b / GB:.2f}" for _, b in pairs) + " GB",
                               " ".join(f"{u / GB:.2f}" for u, _ in pairs) + " GB", ok,
                               "VRAM is still in use after keep_alive: `ollama ps`, or another process"))
    return results


# --- services, files ----------------------------------------------------------------


def check_units(host: Host, facts_units: dict[str, UnitState], names: list[str],
                uptime_s: float | None = None) -> list[Result]:
    """Each unit enabled and active; one still starting (right after a boot) is STARTING, not FAIL."""
    results = []
    for name in names:
        unit = unit_state(facts_units, name)
        check = f"{name} enabled and active"
        observed = f"{unit.active_state or ''}/{unit.unit_file_state or ''}" if unit else "not found"
        if unit is not None and unit.is_starting and unit.is_enabled:
            seconds = unit.starting_for_s(uptime_s)
            since = f"for {seconds:.0f} s" if seconds is not None else "for an unknown time"
            results.append(Result(host.name, check, "active/enabled", f"{observed} {since}", "STARTING",
                                  f"still starting ({since}): run the checks again shortly; "
                                  f"journalctl -u {name} if it stays so"))
            continue
        ok = unit is not None and unit.is_active and unit.is_enabled
        results.append(_result(host.name, check, "active/enabled", observed, ok,
                               f"systemctl status {name}; journalctl -u {name}"))
    return results


def check_file_mode(host: Host, paths: dict[str, PathState], path: str, mode: str, user: str, group: str | None,
                    what: str) -> Result:
    if path not in paths:
        raise Undeclared(f"{path} was not read from the host: add it to the paths observe.py reads")
    state = paths[path]
    expected = f"{mode} {user}" + (f":{group}" if group else "")
    observed = "absent" if state.kind == "absent" else f"{state.mode} {state.user}:{state.group}"
    ok = state.kind == "file" and state.mode == mode and state.user == user and (group is None or
                                                                                  state.group == group)
    return _result(host.name, f"{what} mode and owner", expected, observed, ok,
                   f"{path} must be {expected}: chmod {mode} {path}; chown {user} {path} (or re-apply)")


def check_security(host: Host, exposure: float | None, threshold: float) -> Result:
    expected = f"<= {threshold:g}"
    if exposure is None:
        return _skip(host.name, "router unit exposure (systemd-analyze security)", expected,
                     "systemd-analyze security gave no score")
    return _result(host.name, "router unit exposure (systemd-analyze security)", expected, f"{exposure:.1f}",
                   exposure <= threshold, "the router unit lost hardening: compare it with the deploy's template")


# --- clients ------------------------------------------------------------------------


def check_client(host: Host, facts: ClientFacts) -> list[Result]:
    if facts.error:
        return [_result(host.name, "client request with its key", "HTTP 200", facts.error, False, facts.error)]
    if facts.with_key == facts.without_key and facts.with_key not in (200, 401):
        # Same non-answer either way (000: no connection, 502: the front cannot reach the router):
        # one failure says it; judging the key check on it would only repeat it.
        observed = "no connection" if facts.with_key == 0 else f"HTTP {facts.with_key}"
        return [
            _result(host.name, "client request with its key", f"HTTP 200 from {facts.url}", observed, False,
                    f"the router does not answer at {facts.url}: systemctl status llm-router on the server, "
                    "and tailscale serve status for remote clients"),
            _skip(host.name, "client request without a key", "HTTP 401", "the router did not answer at all"),
        ]
    return [
        _result(host.name, "client request with its key", f"HTTP 200 from {facts.url}", str(facts.with_key),
                facts.with_key == 200, "the router refused the client's key or is unreachable: "
                "claude-router status; re-apply to refresh the key"),
        _result(host.name, "client request without a key", "HTTP 401", str(facts.without_key),
                facts.without_key == 401, "the router answers without a key: its auth hook is not active"),
    ]


def summary_exit_code(results: list[Result]) -> int:
    return 1 if any(r.status == "FAIL" for r in results) else 0
