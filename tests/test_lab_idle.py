"""The design's idle criterion, in the lab: `python -m checks idle` FAILs while a model is still
loaded and PASSes once the server's keep_alive has unloaded it.

The lab has no GPU (its Ollama stand-in reports a ROCm device, but no VRAM tool answers on the
host), so the VRAM half of idle SKIPs and says the verdict rests on the loaded models (/api/ps);
nothing here fakes VRAM figures.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lab import core
from lab.variants import write_variant
from tests.conftest import LAB_INVENTORY, REPO_ROOT, run_apply

pytestmark = pytest.mark.lab

KEEP_ALIVE_S = 15
MARGIN_S = 3
MODEL = "qwen3.6:27b"


def short_keep_alive(data: dict) -> None:
    data["hosts"]["p620"]["server"]["ollama"]["keep_alive"] = f"{KEEP_ALIVE_S}s"
    data["checks"]["idle_margin_s"] = MARGIN_S


def checks(inventory: Path, out: Path, *args: str, timeout: float = 120) -> tuple[int, dict[str, dict]]:
    """`python -m checks ARGS`: exit code and p620's results by check name."""
    done = subprocess.run([sys.executable, "-m", "checks", *args, "--json", str(out)],
                          cwd=REPO_ROOT, env={**os.environ, "LLM_ROUTER_INVENTORY": str(inventory)},
                          capture_output=True, text=True, timeout=timeout, check=False)
    assert out.exists(), done.stdout + done.stderr
    return done.returncode, {r["check"]: r for r in json.loads(out.read_text()) if r["host"] == "p620"}


def load_model() -> None:
    deadline = time.monotonic() + 60  # the apply just restarted Ollama with the new keep_alive
    while core.run("p620", ["curl", "-sS", "--fail", "http://127.0.0.1:11434/api/version"]).returncode != 0:
        assert time.monotonic() < deadline, "Ollama did not answer within 60 s of the apply"
        time.sleep(1)
    request = json.dumps({"model": MODEL, "prompt": "hello", "stream": False})
    answer = core.run("p620", ["curl", "-sS", "--fail", "http://127.0.0.1:11434/api/generate", "-d", request],
                      timeout=120)
    assert answer.returncode == 0, answer.stderr
    loaded = json.loads(core.run("p620", ["curl", "-sS", "http://127.0.0.1:11434/api/ps"]).stdout)["models"]
    assert [m["name"] for m in loaded] == [MODEL]


def test_checks_idle_fails_while_loaded_and_passes_once_keep_alive_unloaded_it(deployed, tmp_path):
    variant = write_variant(LAB_INVENTORY, tmp_path / "short-keep-alive.yaml", short_keep_alive)
    applied = run_apply(inventory=variant)
    assert applied.returncode == 0, applied.output[-6000:]
    try:
        load_model()
        loaded_at = time.monotonic()

        code, baseline = checks(variant, tmp_path / "baseline.json", "baseline")
        assert baseline["baseline VRAM recorded"]["status"] == "SKIP"  # no GPU visible in the lab

        code, still_loaded = checks(variant, tmp_path / "loaded.json", "idle", "--max-wait", "0")
        assert code == 1
        verdict = still_loaded["idle: no model loaded"]
        assert (verdict["status"], verdict["observed"]) == ("FAIL", MODEL)
        assert "still loaded after keep_alive" in verdict["reason"]
        vram = still_loaded["idle: VRAM back to baseline"]
        assert vram["status"] == "SKIP" and "idle judged by the loaded models only" in vram["reason"]

        code, idle = checks(variant, tmp_path / "idle.json", "idle", "--max-wait", "120", timeout=240)
        assert code == 0, idle
        verdict = idle["idle: no model loaded"]
        assert (verdict["status"], verdict["observed"]) == ("PASS", "none")
        assert time.monotonic() - loaded_at >= KEEP_ALIVE_S  # it waited for keep_alive, not less
    finally:
        restored = run_apply()
        assert restored.returncode == 0, restored.output[-6000:]
