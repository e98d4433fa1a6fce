"""Benchmark of the lab: `up` from the cached image, `down`, the cold image build, memory per container.

Prints figures, asserts nothing. Target: up and down under 5 s each for 2 hosts.
Runs its own instance (prefix `lrb-`, subnets 10.215.x) so a lab already up is left alone.

    .venv/bin/python -m bench.lab_bench [--rounds N] [--cold]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # also runnable as a plain script

from lab import core
from lab.config import FALLBACK_HOSTS, LabConfig
from lab.containers import Container
from lab.image import BUILD_RECORD, build_tarball, debian_mirror, recipe, recipe_hash
from lab.topology import build_topology

BENCH_INSTANCE = LabConfig(
    prefix="lrb-",
    lan_subnet="10.215.1.0/24",
    tailnet_subnet="100.86.215.0/24",
    public_subnet="10.215.3.0/24",
    hosts=FALLBACK_HOSTS,
)


def memory_figures(container: Container) -> dict[str, float]:
    """MiB charged to the container's memory cgroup, and its anonymous (process) part."""
    figures: dict[str, float] = {}
    for cgroup in container.cgroups:
        stat_file = cgroup / "memory.stat"
        if not stat_file.exists():
            continue
        stats = dict(line.split() for line in stat_file.read_text().splitlines())
        anonymous = stats.get("total_rss") or stats.get("anon")
        if anonymous is not None:
            figures["anon_mib"] = int(anonymous) / 2**20
    charged = container.memory_bytes()
    if charged is not None:
        figures["charged_mib"] = charged / 2**20
    return figures


def cold_build_seconds() -> float:
    """A full debootstrap + pack under a scratch key; the tarball is deleted again, the cache keeps its own."""
    mirror = debian_mirror()
    with tempfile.TemporaryDirectory() as scratch:
        started = time.monotonic()
        tarball = build_tarball(mirror, recipe_hash(recipe(mirror)) + "-bench", Path(scratch) / "build.log")
        elapsed = time.monotonic() - started
        tarball.unlink()
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--cold", action="store_true", help="also time a full image build (~2 min)")
    args = parser.parse_args()

    missing = core.missing_capabilities()
    if missing:
        print("lab bench: cannot run here; missing: " + "; ".join(missing))
        return 1
    config = BENCH_INSTANCE
    hosts = len(build_topology(config).hosts)
    core.down(config)
    core.up(config)  # warm-up: builds/extracts the image and the Claude Code layer if needed
    core.down(config)

    up_times, down_times, memory = [], [], {}
    for _ in range(args.rounds):
        started = time.monotonic()
        core.up(config)
        up_times.append(time.monotonic() - started)
        time.sleep(2)  # let the hosts settle before reading memory
        memory = {
            container.node.name: memory_figures(container)
            for container in core.containers(build_topology(config))
        }
        started = time.monotonic()
        core.down(config)
        down_times.append(time.monotonic() - started)

    def describe(times: list[float]) -> str:
        return f"median {statistics.median(times):.2f} s (min {min(times):.2f}, max {max(times):.2f}, n={len(times)})"

    print(f"lab up   ({hosts} hosts, cached image): {describe(up_times)}   target < 5 s")
    print(f"lab down ({hosts} hosts):               {describe(down_times)}   target < 5 s")
    for name, figures in memory.items():
        shown = ", ".join(f"{key} {value:.0f} MiB" for key, value in figures.items()) or "n/a"
        print(f"memory {name}: {shown}")
    if args.cold:
        print(f"cold image build: {cold_build_seconds():.0f} s")
    elif BUILD_RECORD.exists():
        record = json.loads(BUILD_RECORD.read_text())
        when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(record["at"]))
        print(
            f"cold image build: {record['build_seconds']:.0f} s (last build, {when}; --cold to measure now)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
