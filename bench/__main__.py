"""`python -m bench`: deploy speed and router overhead on the lab. Prints figures; asserts nothing.

Measures, each as median and spread of --runs runs:
  apply from clean (fresh containers), no-op re-apply, dry run with diffs,
  remote commands per host for a no-op (counted from sshd's VERBOSE log in the lab hosts),
  the floor (one SSH call per host running the batched state command, nothing else),
for 2 hosts (inventory/lab.yaml) and for 8 (six more clients, in a second lab instance);
then router overhead and throughput through the router vs direct to the Ollama stand-in,
at 1 and 8 concurrent requests, with the default workers and with one worker.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import paramiko
from ruamel.yaml import YAML

from lab import core as lab_core
from lab.artifacts import prepare_artifacts
from lab.config import LAB_KEY_PATH, lab_inventory_path
from lab.variants import write_variant

REPO = Path(__file__).resolve().parent.parent
LAB_INVENTORY = lab_inventory_path()
BENCH_DIR = REPO / ".cache" / "bench"
STATE_DUMP_ENV = "LLM_ROUTER_STATE_DUMP"  # deploys/ops.py writes each host's state command here


def spread(values: list[float]) -> str:
    if not values:
        return "n/a"
    return (f"median {statistics.median(values):.3f} s  min {min(values):.3f}  max {max(values):.3f}  "
            f"(n={len(values)})")


def lab_env(inventory: Path, prefix: str | None = None, subnets: dict[str, str] | None = None) -> dict[str, str]:
    env = {**os.environ, "LLM_ROUTER_INVENTORY": str(inventory), "LAB_INVENTORY": str(inventory)}
    if prefix:
        env["LAB_PREFIX"] = prefix
    env.update(subnets or {})
    return env


def apply(env: dict[str, str], *args: str) -> tuple[float, str]:
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "pyinfra", "-y", "inventory/hosts.py", "deploys/site.py", *args],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=1800, check=False)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"apply failed:\n{(done.stdout + done.stderr)[-4000:]}")
    return elapsed, done.stdout


def lab(env: dict[str, str], verb: str) -> None:
    subprocess.run([sys.executable, "-m", "lab", verb], cwd=REPO, env=env, check=True, capture_output=True,
                   timeout=900)


def host_names(inventory: Path) -> list[str]:
    return list(YAML(typ="safe").load(inventory.read_text())["hosts"])


def count_remote_commands(env: dict[str, str], hosts: list[str], since: float) -> dict[str, int]:
    """sshd logs one 'Starting session: command' line per exec request at LogLevel VERBOSE."""
    counts = {}
    for name in hosts:
        done = subprocess.run(
            [sys.executable, "-m", "lab", "exec", name, "--", "sh", "-c",
             f"journalctl -q -o cat --since @{int(since)} _COMM=sshd | grep -c 'Starting session: command' || true"],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=60, check=False)
        counts[name] = int(done.stdout.strip().splitlines()[-1]) if done.stdout.strip() else -1
    return counts


def floor(env: dict[str, str], inventory: Path) -> float:
    """One SSH call per host, in parallel, running the batched state command the no-op needs."""
    commands = json.loads((BENCH_DIR / "state-commands.json").read_text())
    data = YAML(typ="safe").load(inventory.read_text())["hosts"]
    key = paramiko.Ed25519Key.from_private_key_file(str(LAB_KEY_PATH))
    errors: list[str] = []

    def one(name: str) -> None:
        client = paramiko.SSHClient()
        client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
        client.connect(data[name]["ssh"]["hostname"], username="root", pkey=key, look_for_keys=False,
                       allow_agent=False)
        client.get_transport().sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        _, stdout, _ = client.exec_command(commands[name])
        stdout.read()
        if stdout.channel.recv_exit_status() != 0:
            errors.append(name)
        client.close()

    start = time.perf_counter()
    threads = [threading.Thread(target=one, args=(name,)) for name in commands]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise SystemExit(f"floor command failed on {errors}")
    return time.perf_counter() - start


def deploy_figures(label: str, env: dict[str, str], inventory: Path, runs: int, clean: bool) -> dict[str, float]:
    print(f"\n== deploy, {label}")
    hosts = host_names(inventory)
    figures: dict[str, float] = {}
    if clean:
        times = []
        for _ in range(runs):
            lab(env, "down")
            lab(env, "up")
            times.append(apply(env)[0])
        print(f"apply from clean:      {spread(times)}")
        figures["clean"] = statistics.median(times)
    else:
        apply(env)
    noop, dry = [], []
    counts: dict[str, int] = {}
    # The no-op runs record each host's state command here; start empty so the floor runs exactly
    # this inventory's hosts (not those of an earlier 8-host run).
    (BENCH_DIR / "state-commands.json").unlink(missing_ok=True)
    for _ in range(runs):
        since = time.time()
        elapsed, _ = apply({**env, STATE_DUMP_ENV: str(BENCH_DIR / "state-commands.json")})
        noop.append(elapsed)
        time.sleep(1.1)  # journald timestamps are per second: keep runs apart
        counts = count_remote_commands(env, hosts, since)
    for _ in range(runs):
        dry.append(apply(env, "--dry", "--diff")[0])
    floors = [floor(env, inventory) for _ in range(runs)]
    print(f"no-op re-apply:        {spread(noop)}")
    print(f"dry run with diffs:    {spread(dry)}")
    print(f"floor (1 SSH call/host): {spread(floors)}")
    print(f"remote commands per host for a no-op: {counts}")
    figures.update(noop=statistics.median(noop), dry=statistics.median(dry), floor=statistics.median(floors),
                   commands=max(counts.values(), default=-1))
    return figures


# --- router -------------------------------------------------------------------------

LOAD_SCRIPT = r"""
import json, sys, threading, time, urllib.request
url, key, body, concurrency, count, limit = sys.argv[1], open(sys.argv[2]).read().strip(), sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), float(sys.argv[6])
headers = {"content-type": "application/json", "x-api-key": key, "anthropic-version": "2023-06-01"}
latencies, errors, lock = [], [0], threading.Lock()
deadline = time.monotonic() + limit
remaining = [count]
def worker():
    while True:
        with lock:
            if remaining[0] <= 0 or time.monotonic() > deadline:
                return
            remaining[0] -= 1
        start = time.perf_counter()
        try:
            with urllib.request.urlopen(urllib.request.Request(url, body.encode(), headers), timeout=60) as r:
                r.read()
            with lock:
                latencies.append(time.perf_counter() - start)
        except Exception:
            with lock:
                errors[0] += 1
begin = time.perf_counter()
threads = [threading.Thread(target=worker) for _ in range(concurrency)]
[t.start() for t in threads]; [t.join() for t in threads]
print(json.dumps({"latencies": latencies, "errors": errors[0], "elapsed": time.perf_counter() - begin}))
"""


def load(url: str, key_file: str, body: dict, concurrency: int, count: int, limit: float) -> dict:
    done = lab_core.run("p620", ["python3", "-c", LOAD_SCRIPT, url, key_file, json.dumps(body), str(concurrency),
                                 str(count), str(limit)], timeout=limit + 120)
    if done.returncode != 0:
        raise SystemExit(f"load generator failed: {done.stderr[-2000:]}")
    return json.loads(done.stdout)


# One Anthropic request through the router's alias, and the same question to Ollama directly.
ROUTED_BODY = {"model": "claude-sonnet-4-6", "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]}
DIRECT_BODY = {"model": "qwen3.6:27b", "stream": False, "messages": [{"role": "user", "content": "hi"}]}


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))] if ordered else float("nan")


def report(label: str, result: dict) -> float:
    lat = result["latencies"]
    rps = len(lat) / result["elapsed"] if result["elapsed"] else 0.0
    print(f"{label:<34} n={len(lat):<4} errors={result['errors']:<3} p50 {percentile(lat, 50) * 1000:7.1f} ms  "
          f"p95 {percentile(lat, 95) * 1000:7.1f} ms  {rps:6.1f} req/s")
    return rps


def router_figures(env: dict[str, str], count: int, limit: float) -> None:
    from deploys.router import MASTER_KEY_FILE

    print("\n== router overhead (requests from p620 itself, to 127.0.0.1)")
    messages, direct = ROUTED_BODY, DIRECT_BODY
    # The stand-in ignores the key header; any readable file does for the direct runs.
    seq_direct = load("http://127.0.0.1:11434/api/chat", "/etc/hostname", direct, 1, count, limit)
    seq_router = load("http://127.0.0.1:4000/v1/messages", MASTER_KEY_FILE, messages, 1, count, limit)
    report("direct to Ollama, sequential", seq_direct)
    report("through the router, sequential", seq_router)
    overhead = (percentile(seq_router["latencies"], 50) - percentile(seq_direct["latencies"], 50)) * 1000
    print(f"sequential overhead p50: {overhead:.1f} ms")
    conc_direct = load("http://127.0.0.1:11434/api/chat", "/etc/hostname", direct, 8, count * 2, limit)
    report("direct to Ollama, 8 concurrent", conc_direct)
    default_rps = report("router, 8 concurrent, default workers",
                         load("http://127.0.0.1:4000/v1/messages", MASTER_KEY_FILE, messages, 8, count * 2, limit))
    one_worker = write_variant(LAB_INVENTORY, BENCH_DIR / "lab-1worker.yaml",
                               lambda data: data["hosts"]["p620"]["server"]["router"].__setitem__("workers", 1))
    try:
        apply({**env, "LLM_ROUTER_INVENTORY": str(one_worker)})
        single_rps = report("router, 8 concurrent, 1 worker",
                            load("http://127.0.0.1:4000/v1/messages", MASTER_KEY_FILE, messages, 8, count * 2, limit))
    finally:
        apply(env)
    print(f"default workers / 1 worker at 8 concurrent: {default_rps / single_rps if single_rps else 0:.2f}x "
          f"({os.cpu_count()} cores)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--requests", type=int, default=150, help="requests per router measurement (bounded)")
    parser.add_argument("--time-limit", type=float, default=60, help="seconds per router measurement")
    parser.add_argument("--skip", action="append", default=[], choices=["clean", "eight", "router"])
    args = parser.parse_args(argv)
    BENCH_DIR.mkdir(parents=True, exist_ok=True)
    prepare_artifacts()
    env2 = lab_env(LAB_INVENTORY)
    lab(env2, "up")
    two = deploy_figures("2 hosts", env2, LAB_INVENTORY, args.runs, clean="clean" not in args.skip)
    if "router" not in args.skip:
        router_figures(env2, args.requests, args.time_limit)
    eight = None
    if "eight" not in args.skip:
        inventory8, env8 = eight_host_lab()
        try:
            lab(env8, "up")
            eight = deploy_figures("8 hosts", env8, inventory8, args.runs, clean="clean" not in args.skip)
        finally:
            lab(env8, "down")
    print("\n== ratios")
    print(f"no-op/floor: {two['noop'] / two['floor']:.2f}")
    print(f"dry/no-op: {two['dry'] / two['noop']:.2f}")
    if eight:
        if "clean" in two and "clean" in eight:
            print(f"8 hosts/2 hosts (apply from clean): {eight['clean'] / two['clean']:.2f}")
        print(f"8 hosts/2 hosts (no-op): {eight['noop'] / two['noop']:.2f}")
        print(f"no-op/floor (8 hosts): {eight['noop'] / eight['floor']:.2f}")
    print(f"remote commands per host for a no-op: {two['commands']} (2 hosts)"
          + (f", {eight['commands']} (8 hosts)" if eight else ""))
    return 0


def eight_host_lab() -> tuple[Path, dict[str, str]]:
    """lab.yaml plus six clients, in a second lab instance with its own prefix and subnets."""
    subnets = {"LAB_LAN_SUBNET": "10.214.1.0/24", "LAB_TAILNET_SUBNET": "100.86.214.0/24",
               "LAB_PUBLIC_SUBNET": "10.214.3.0/24"}

    def eight(data: dict) -> None:
        data["secrets_dir"] = str((BENCH_DIR / "secrets8").resolve())
        for host in data["hosts"].values():
            for section, key in (("ssh", "hostname"), ("network", "lan_address"), ("network", "tailnet_address")):
                if host.get(section, {}).get(key):
                    host[section][key] = str(host[section][key]).replace("10.213.", "10.214.").replace(
                        "100.86.213.", "100.86.214.")
        razer = data["hosts"]["razer"]
        for i in range(2, 8):
            clone = json.loads(json.dumps(razer))
            address = f"100.86.214.{10 + i}"
            clone["ssh"]["hostname"] = address
            clone["network"]["tailnet_address"] = address
            clone["network"]["tailnet_dns_name"] = f"razer{i}.tail-lab.ts.net"
            data["hosts"][f"razer{i}"] = clone
        data.pop("checks", None)

    path = write_variant(LAB_INVENTORY, BENCH_DIR / "lab8.yaml", eight)
    return path, lab_env(path, prefix="lrb8-", subnets=subnets)


if __name__ == "__main__":
    sys.exit(main())
