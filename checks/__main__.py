"""`python -m checks [baseline|idle|preflight] [--json FILE]`: is the deployment what the inventory says?

Without a verb: every acceptance check, one table, exit 1 on any FAIL.
`baseline` records idle VRAM per server; `idle` waits until keep_alive plus the
inventory's margin has passed and confirms VRAM is back to that baseline. `preflight` compares each
host with the inventory as the apply does before its first change.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from checks import core
from checks.observe import REPO, connected, fact, observe_client, observe_server, probe
from checks.preflight import preflight_results
from deploys import client as client_deploy
from deploys import keys
from deploys.router import MASTER_KEY_FILE
from facts.gpu import GpuVram
from facts.ollama import OllamaStatus
from inventory.load import InventoryError, inventory_path_from_env, load_inventory
from inventory.model import Inventory

BASELINE_DIR = REPO / ".cache" / "checks"
SERVER_UNITS = ["ollama.service", "llm-router.service"]
SERVE_UNIT = "llm-router-tailscale-serve.service"


def duration_seconds(text: str) -> int:
    """Ollama keep_alive ('5m', '30s', '1h', '0', '-1') in seconds; -1 means forever."""
    if text in ("-1",):
        return -1
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    for suffix in ("ms", "s", "m", "h"):
        if text.endswith(suffix):
            return int(float(text[: -len(suffix)]) * units[suffix])
    return int(text)


def all_checks(inv: Inventory) -> list[core.Result]:
    results: list[core.Result] = []
    with connected(inv) as hosts:
        for model in inv.hosts.values():
            if model.name not in hosts:
                results.append(core.Result(model.name, "ssh", "reachable", "unreachable", "FAIL",
                                           f"cannot connect to {model.ssh.hostname}:{model.ssh.port}"))
        for model in inv.clients:
            if model.name in hosts:
                observed = observe_client(hosts[model.name], inv, model)
                results += core.check_client(model, observed)
                for user in model.client.users:
                    results.append(core.check_file_mode(model, observed.paths, client_deploy.user_paths(user)["key"],
                                                        "600", user.name, None, f"{user.name}'s router key"))
        for model in inv.servers:
            if model.name not in hosts:
                continue
            server = model.server
            units = SERVER_UNITS + ([SERVE_UNIT] if server.exposure.tailscale_serve.enabled else [])
            facts = observe_server(hosts[model.name], model, [keys.KEY_HASHES_FILE, MASTER_KEY_FILE], units)
            results.append(core.check_ollama_bind(model, facts))
            results.append(core.check_router_bind(model, facts))
            results += core.check_firewall(model, facts)
            for name, vantage in inv.checks.vantage_points.items():
                for target in vantage.targets:
                    results.append(core.check_probe(model, name, str(target), server.router.port,
                                                    vantage.router_expected, probe(vantage.exec, str(target),
                                                                                   server.router.port)))
                    results.append(core.check_probe(model, name, str(target), server.ollama.port, "refused",
                                                    probe(vantage.exec, str(target), server.ollama.port)))
            results += core.check_publication(model, facts)
            results.append(core.check_models_installed(model, facts))
            results.append(core.check_vram_fit(inv, model, facts))
            results.append(core.check_gpu_offload(model, facts))
            results += core.check_units(model, facts.units, units, facts.uptime_s)
            results.append(core.check_file_mode(model, facts.paths, MASTER_KEY_FILE, "600", "root", "root",
                                                "master key"))
            results.append(core.check_file_mode(model, facts.paths, keys.KEY_HASHES_FILE, keys.KEY_HASHES_MODE,
                                                "root", keys.ROUTER_GROUP, "client key hashes"))
            results.append(core.check_security(model, facts.security_exposure, server.router.security_exposure_max))
    return results


def baseline(inv: Inventory) -> list[core.Result]:
    results = []
    BASELINE_DIR.mkdir(parents=True, exist_ok=True)
    with connected(inv) as hosts:
        for model in inv.servers:
            if model.name not in hosts:
                continue
            gpu = fact(hosts[model.name], GpuVram)
            # Unknown stays null (unified memory prints [N/A]): idle then compares only measured devices.
            used = [d.used_bytes for d in gpu.devices]
            (BASELINE_DIR / f"baseline-{model.name}.json").write_text(json.dumps({"used_bytes": used}))
            measured = any(u is not None for u in used)
            shown = " ".join("unknown" if u is None else f"{u / core.GB:.2f} GB" for u in used)
            reason = "" if measured else gpu.reason or ("VRAM use not reported" if used else "no GPU visible")
            results.append(core.Result(model.name, "baseline VRAM recorded", "-", shown or "no GPU visible",
                                       "PASS" if measured else "SKIP", reason))
    return results


def idle(inv: Inventory, max_wait: float) -> list[core.Result]:
    results = []
    with connected(inv) as hosts:
        for model in inv.servers:
            if model.name not in hosts:
                continue
            host = hosts[model.name]
            server = model.server
            keep = duration_seconds(server.ollama.keep_alive)
            address = f"127.0.0.1:{server.ollama.port}"
            state = fact(host, OllamaStatus, address=address)
            deadline = time.monotonic() + max_wait
            # Wait until every loaded model's expiry plus the margin has passed (bounded by --max-wait).
            while state.loaded and keep >= 0 and time.monotonic() < deadline:
                expiries = [datetime.fromisoformat(m.expires_at) for m in state.loaded if m.expires_at]
                latest = max(expiries, default=datetime.now(UTC))
                wait = (latest - datetime.now(UTC)).total_seconds() + inv.checks.idle_margin_s
                time.sleep(max(1.0, min(wait, deadline - time.monotonic(), 30.0)))
                state = fact(host, OllamaStatus, address=address)
            gpu = fact(host, GpuVram)
            path = BASELINE_DIR / f"baseline-{model.name}.json"
            base = json.loads(path.read_text())["used_bytes"] if path.exists() else None
            results += core.check_idle(model, core.ServerFacts(ollama=state, gpu=gpu), base, 512 * 1024 * 1024)
    return results


def table(results: list[core.Result]) -> str:
    headers = ("HOST", "CHECK", "EXPECTED", "OBSERVED", "STATUS")
    rows = [(r.host, r.check, r.expected, r.observed, r.status + (f" ({r.reason})" if r.reason else ""))
            for r in results]
    widths = [min(max(len(str(x)) for x in column), 48) for column in zip(headers, *rows)]

    def line(values) -> str:
        cells = [str(v) if i == len(values) - 1 else str(v)[:widths[i]].ljust(widths[i]) for i, v in enumerate(values)]
        return "  ".join(cells)

    return "\n".join([line(headers), *(line(row) for row in rows)])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m checks", description=__doc__)
    parser.add_argument("verb", nargs="?", choices=["all", "baseline", "idle", "preflight"], default="all")
    parser.add_argument("--inventory", type=Path, default=None, help="default: $LLM_ROUTER_INVENTORY")
    parser.add_argument("--json", type=Path, default=None, help="also write the results as JSON here")
    parser.add_argument("--max-wait", type=float, default=900, help="idle: longest wait in seconds")
    args = parser.parse_args(argv)
    path = args.inventory or inventory_path_from_env()
    try:
        inv = load_inventory(path)
    except InventoryError as exc:
        print(exc, file=sys.stderr)
        return 2
    if args.verb == "baseline":
        results = baseline(inv)
    elif args.verb == "idle":
        results = idle(inv, args.max_wait)
    elif args.verb == "preflight":
        results = preflight_results(inv, path)
    else:
        results = all_checks(inv)
    print(table(results))
    failed = sum(r.status == "FAIL" for r in results)
    print(f"\n{len(results)} checks: {sum(r.status == 'PASS' for r in results)} PASS, {failed} FAIL, "
          f"{sum(r.status == 'SKIP' for r in results)} SKIP"
          + (f", {starting} STARTING" if (starting := sum(r.status == 'STARTING' for r in results)) else ""))
    if args.json:
        args.json.write_text(json.dumps([r.as_dict() for r in results], indent=2))
    return core.summary_exit_code(results)


if __name__ == "__main__":
    sys.exit(main())
