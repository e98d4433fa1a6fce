"""Issue 6 end to end: the real Claude Code CLI on razer and p620, switched per repository."""

from __future__ import annotations

import shlex
import time

import pytest

from lab import core as lab_core

pytestmark = pytest.mark.lab

USER = "olaf"


def as_user(host: str, script: str, timeout: float = 240):
    """A login shell as the client user (profile.d gives the lab CA to Claude Code, as a user has it)."""
    return lab_core.run(host, ["bash", "-lc", script], user=USER, timeout=timeout)


def router_log_lines(since: float, needle: str) -> int:
    done = lab_core.run("p620", ["sh", "-c", (f"journalctl -u llm-router --since @{int(since)} -o cat "
                                             f"| grep -c {shlex.quote(needle)} || true")])
    return int(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("host", ["razer", "p620"])
def test_use_ollama_then_use_claude_with_the_real_cli(deployed, host):
    repo = f"~/demo-{host}-{int(time.time())}"
    started = time.time() - 1
    switched = as_user(host, f"mkdir -p {repo} && cd {repo} && git init -q && claude-router use-ollama && "
                             "claude-router status")
    assert switched.returncode == 0, switched.stderr
    assert "router" in switched.stdout.lower()

    answer = as_user(host, f"cd {repo} && DISABLE_TELEMETRY=1 timeout 180 claude -p 'say hi'")
    assert answer.returncode == 0, answer.stdout + answer.stderr
    assert "Ollama stand-in" in answer.stdout
    # The router saw this client's own key (its alias is in the router's log line).
    assert router_log_lines(started, f"client={host}") >= 1

    back = as_user(host, f"cd {repo} && claude-router use-claude && claude-router status && "
                         "ls -A .claude 2>/dev/null | tr '\\n' ' '")
    assert back.returncode == 0, back.stderr
    # settings.local.json did not exist before use-ollama: it is gone again.
    assert "settings.local.json" not in back.stdout

    time.sleep(1.1)  # journal timestamps are per second
    marker = time.time()
    as_user(host, f"cd {repo} && DISABLE_TELEMETRY=1 timeout 60 claude -p 'say hi' || true")
    assert router_log_lines(marker, f"client={host}") == 0, "a cloud repository must not reach the router"
