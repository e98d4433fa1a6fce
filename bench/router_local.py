"""`python -m bench.router_local`: LiteLLM router overhead on this machine, no lab. Prints figures; asserts nothing.

Starts the Ollama stand-in (its own process, on loopback) and the REAL LiteLLM proxy
from `.cache/litellm-venv` (deploys/wheelhouse.py builds it) the way the deploy runs it: the
config is `build_litellm_config(...)` of the lab inventory dumped to YAML, the auth hook,
the launcher and the speed-ups are hostfiles/'s files, the master key arrives as a credential
file, a client key is checked against a hashes file. Then it sends the lab bench's
request (`python -m bench`: POST /v1/messages, Anthropic format, non-streaming, a new
connection per request) sequentially and 8 at a time, direct to the stand-in and
through the router, and prints p50/p95, the sequential overhead and requests/s.

Variants compare settings A/B on the same machine: each `--variant` starts its own
router, and the rounds alternate between them so background load hits all alike.

    python -m bench.router_local                      # the deploy's config, 1 worker
    python -m bench.router_local --variant deploy \\
        --variant 'verbose:{"config": {"litellm_settings": {"set_verbose": true}}}' \\
        --variant 'two:{"workers": 2}' --rounds 5
    python -m bench.router_local --profile 20         # py-spy the worker for 20 s under load

A variant is `NAME` (the deploy's settings) or `NAME:JSON` with any of "config" (merged
into the config dict, a null value removes the key), "env" (added to the router's
environment, a null value removes the variable), "workers", "hook" (another auth hook
file), "args" (extra LiteLLM CLI arguments), "model_info" (merged into every deployment's model_info)
and "venv" (another LiteLLM venv, e.g. one with an extra package).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML

# The lab bench's load generator, unchanged (a process of its own, a new connection per request).
from bench.__main__ import DIRECT_BODY, LOAD_SCRIPT, ROUTED_BODY, percentile
from bench.local_router import LocalRouter, RouterNotLive, free_port, start_local_router, wait_live
from deploys.keys import hashes_document, render_hashes
from deploys.router_config import build_litellm_config
from inventory.load import load_inventory

REPO = Path(__file__).resolve().parent.parent
MODEL = "qwen3.6:27b"
START_TIMEOUT_S = 240


def wait_until_live(url: str, process: subprocess.Popen, log: Path, timeout: float) -> None:
    try:
        wait_live(url, process, log, timeout)
    except RouterNotLive as err:
        raise SystemExit(str(err)) from None


def post(url: str, body: dict[str, Any]) -> int:
    request = urllib.request.Request(url, json.dumps(body).encode(), {"content-type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as reply:
        reply.read()
        return reply.status


def merge(base: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """`patch` merged into a copy of `base`: nested dicts merge, None deletes, the rest replaces."""
    merged = dict(base)
    for key, value in patch.items():
        if value is None:
            merged.pop(key, None)
        elif isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = value
    return merged


@dataclass
class Variant:
    name: str
    config: dict[str, Any] = field(default_factory=dict)
    env: dict[str, str | None] = field(default_factory=dict)
    workers: int = 1
    hook: str | None = None
    args: list[str] = field(default_factory=list)
    model_info: dict[str, Any] = field(default_factory=dict)
    venv: str | None = None

    @classmethod
    def parse(cls, spec: str) -> Variant:
        name, _, text = spec.partition(":")
        return cls(name=name, **(json.loads(text) if text else {}))


@dataclass
class Router:
    variant: Variant
    local: LocalRouter

    @property
    def url(self) -> str:
        return self.local.url

    @property
    def process(self) -> subprocess.Popen:
        return self.local.process


def start_standin(root: Path) -> tuple[str, subprocess.Popen]:
    port = free_port()
    log = root / "ollama.log"
    env = {**os.environ, "OLLAMA_HOST": f"127.0.0.1:{port}", "OLLAMA_MODELS": str(root / "models"),
           "OLLAMA_KEEP_ALIVE": "60m"}
    with log.open("wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "lab.standins.ollama.cli", "serve"], cwd=REPO, env=env,
                                   stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    wait_until_live(f"{url}/api/version", process, log, 30)
    post(f"{url}/api/pull", {"model": MODEL, "stream": False})
    return url, process


def lab_inventory(ollama_port: int, root: Path):
    yaml = YAML()
    document = yaml.load((REPO / "inventory" / "lab.yaml").read_text())
    document["hosts"]["p620"]["server"]["ollama"]["port"] = ollama_port
    path = root / "inventory.yaml"
    with path.open("w") as handle:
        yaml.dump(document, handle)
    return load_inventory(path)


def start_router(variant: Variant, venv: Path, ollama_port: int, root: Path, master_key: str,
                 hashes_text: str) -> Router:
    base = root / variant.name
    base.mkdir(parents=True)
    inventory = lab_inventory(ollama_port, base)
    config = merge(build_litellm_config(inventory, "p620"), variant.config)
    for entry in config["model_list"]:
        entry["model_info"] = merge(entry["model_info"], variant.model_info)
    local = start_local_router(base, inventory, Path(variant.venv) if variant.venv else venv, master_key, hashes_text,
                               workers=variant.workers, config=config,
                               hook=Path(variant.hook) if variant.hook else None, extra_args=variant.args,
                               env=variant.env)
    return Router(variant, local)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and its children (a multi-worker supervisor's workers)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    pids = [pid]
    while pids:
        current = pids.pop()
        try:
            fields = Path(f"/proc/{current}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / ticks
            pids += [int(c) for c in Path(f"/proc/{current}/task/{current}/children").read_text().split()]
        except (OSError, IndexError, ValueError):
            continue
    return total


def load(url: str, key_file: Path, body: dict[str, Any], concurrency: int, count: int, limit: float) -> dict:
    done = subprocess.run([sys.executable, "-c", LOAD_SCRIPT, url, str(key_file), json.dumps(body),
                           str(concurrency), str(count), str(limit)],
                          capture_output=True, text=True, timeout=limit + 120, check=False)
    if done.returncode != 0:
        raise SystemExit(f"load generator failed: {done.stderr[-2000:]}")
    return json.loads(done.stdout)


@dataclass
class Figures:
    p50: list[float] = field(default_factory=list)
    p95: list[float] = field(default_factory=list)
    rps: list[float] = field(default_factory=list)
    cpu_ms: list[float] = field(default_factory=list)
    errors: int = 0

    def add(self, result: dict, cpu: float | None = None) -> None:
        latencies = result["latencies"]
        if cpu is not None and latencies:
            self.cpu_ms.append(cpu * 1000 / len(latencies))
        self.p50.append(percentile(latencies, 50) * 1000)
        self.p95.append(percentile(latencies, 95) * 1000)
        self.rps.append(len(latencies) / result["elapsed"] if result["elapsed"] else 0.0)
        self.errors += result["errors"]


def median_text(values: list[float], unit: str) -> str:
    if not values:
        return "n/a"
    return f"{statistics.median(values):7.1f} {unit} [{min(values):.1f}-{max(values):.1f}]"


def profile(router: Router, key_file: Path, seconds: int, out: Path) -> None:
    """py-spy (installed into .venv or the LiteLLM venv, or on PATH) on the worker, under sequential load."""
    pyspy = shutil.which("py-spy") or str(REPO / ".venv" / "bin" / "py-spy")
    pids = [router.process.pid]
    children = subprocess.run(["pgrep", "-P", str(router.process.pid)], capture_output=True, text=True, check=False)
    pids += [int(p) for p in children.stdout.split()]
    target = pids[-1]  # the single worker (no supervisor with one worker; the execve keeps the pid)
    recorder = subprocess.Popen([pyspy, "record", "--pid", str(target), "--duration", str(seconds), "--rate", "500",
                                 "--format", "raw", "--output", str(out), "--nonblocking", "--gil"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    time.sleep(1)
    load(f"{router.url}/v1/messages", key_file, ROUTED_BODY, 1, 100000, seconds)
    recorder.wait(timeout=seconds + 60)
    print(f"py-spy raw profile of pid {target}: {out} (collapsed stacks; `sort -k2 -n` or flamegraph.pl)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.router_local", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", action="append", default=[], help="NAME or NAME:JSON (see above)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (medians over them)")
    parser.add_argument("--requests", type=int, default=150, help="sequential requests per measurement")
    parser.add_argument("--time-limit", type=float, default=60, help="seconds per measurement")
    parser.add_argument("--concurrency", type=int, default=8, help="0 skips the concurrent measurement")
    parser.add_argument("--master-key", action="store_true",
                        help="send the master key (what the lab bench does) instead of a client key")
    parser.add_argument("--profile", type=int, default=0, metavar="SECONDS",
                        help="py-spy the first variant's worker for SECONDS under sequential load, then stop")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (logs, configs)")
    args = parser.parse_args(argv)
    variants = [Variant.parse(spec) for spec in args.variant] or [Variant("deploy")]

    from deploys import wheelhouse
    venv = wheelhouse.build_venv(wheelhouse.DEFAULT_VENV, wheelhouse.build(log=lambda *_: None).parent,
                                 log=lambda *_: None)
    root = Path(tempfile.mkdtemp(prefix="router-bench-"))
    master_key = "sk-" + secrets.token_urlsafe(48)
    client_key = "sk-" + secrets.token_urlsafe(48)
    key_file = root / "key"
    key_file.write_text((master_key if args.master_key else client_key) + "\n")
    hashes_text = render_hashes(hashes_document({"razer": [client_key], "p620": ["sk-" + secrets.token_urlsafe(48)]}))
    standin_url, standin = start_standin(root)
    routers: list[Router] = []
    try:
        ollama_port = int(standin_url.rsplit(":", 1)[1])
        routers = [start_router(v, venv, ollama_port, root, master_key, hashes_text) for v in variants]
        started = time.monotonic()
        for router in routers:
            wait_until_live(f"{router.url}/health/liveliness", router.process, router.local.log_file,
                            START_TIMEOUT_S)
        print(f"{len(routers)} router(s) live after {time.monotonic() - started:.0f}s; logs in {root}")
        for router in routers:  # warm up: imports on first request, connection pools
            load(f"{router.url}/v1/messages", key_file, ROUTED_BODY, 1, 20, args.time_limit)
        if args.profile:
            profile(routers[0], key_file, args.profile, root / "profile.txt")
            args.keep = True
            return 0
        direct_seq, direct_conc = Figures(), Figures()
        seq = {r.variant.name: Figures() for r in routers}
        conc = {r.variant.name: Figures() for r in routers}
        for round_number in range(args.rounds):
            order = routers if round_number % 2 == 0 else list(reversed(routers))
            direct_seq.add(load(f"{standin_url}/api/chat", key_file, DIRECT_BODY, 1, args.requests, args.time_limit))
            for router in order:
                before = cpu_seconds(router.process.pid)
                result = load(f"{router.url}/v1/messages", key_file, ROUTED_BODY, 1, args.requests, args.time_limit)
                seq[router.variant.name].add(result, cpu_seconds(router.process.pid) - before)
            if args.concurrency:
                direct_conc.add(load(f"{standin_url}/api/chat", key_file, DIRECT_BODY, args.concurrency,
                                     args.requests * 2, args.time_limit))
                for router in order:
                    before = cpu_seconds(router.process.pid)
                    result = load(f"{router.url}/v1/messages", key_file, ROUTED_BODY, args.concurrency,
                                  args.requests * 2, args.time_limit)
                    conc[router.variant.name].add(result, cpu_seconds(router.process.pid) - before)
        print(f"\n{args.rounds} rounds x {args.requests} sequential requests, medians over rounds [min-max], "
              f"{'master' if args.master_key else 'client'} key, {os.cpu_count()} cores")
        print(f"{'direct to the stand-in':<28} p50 {median_text(direct_seq.p50, 'ms')}  "
              f"p95 {median_text(direct_seq.p95, 'ms')}")
        for router in routers:
            figures = seq[router.variant.name]
            overheads = [p - d for p, d in zip(figures.p50, direct_seq.p50, strict=True)]
            print(f"{router.variant.name + ' (' + str(router.variant.workers) + 'w)':<28} "
                  f"p50 {median_text(figures.p50, 'ms')}  p95 {median_text(figures.p95, 'ms')}  "
                  f"overhead p50 {median_text(overheads, 'ms')}  router CPU/request {median_text(figures.cpu_ms, 'ms')}  "
                  f"errors {figures.errors}")
        if args.concurrency:
            print(f"\n{args.concurrency} concurrent, {args.requests * 2} requests")
            print(f"{'direct to the stand-in':<28} {median_text(direct_conc.rps, 'req/s')}  "
                  f"p50 {median_text(direct_conc.p50, 'ms')}")
            for router in routers:
                figures = conc[router.variant.name]
                print(f"{router.variant.name + ' (' + str(router.variant.workers) + 'w)':<28} "
                      f"{median_text(figures.rps, 'req/s')}  p50 {median_text(figures.p50, 'ms')}  "
                      f"router CPU/request {median_text(figures.cpu_ms, 'ms')}  errors {figures.errors}")
        return 0
    finally:
        for router in routers:
            router.local.stop()
        standin.terminate()
        standin.wait(timeout=10)
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
