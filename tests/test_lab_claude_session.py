"""Issue 17: a Claude Code session stays inside the local model's context with use-ollama's settings.

The real Claude Code CLI on razer talks to p620's router; LiteLLM translates each request and the
Ollama stand-in logs what it receives: an INFO line per prompt (its context, its tokens, and each
piece's tokens and hash) and, for a prompt over the context, real Ollama's WARN "truncating input
prompt" line. A session of `claude -p` then `--continue` turns, each adding a large prompt and large
tool results, never sends a prompt over the context with the settings, and does without them.
"""

from __future__ import annotations

import itertools
import json
import re
import shlex
import time
from dataclasses import dataclass

import pytest

from hostfiles.claude_router import SessionSizing
from lab import core as lab_core

pytestmark = pytest.mark.lab

USER = "olaf"
TURNS = 6
# A turn: ~3000 words of prompt, then two Bash steps that each print ~20 kB of two-letter words: 3 bytes a
# token, as code tokenizes, more than the 4 Claude Code estimates before it sends.
FILLER = " ".join(f"note{i}" for i in range(3000))
STEP = json.dumps({"command": "cat big.txt", "description": "print the file"})
PROMPT = f"{FILLER} call tool Bash x2 {STEP} end"
_PROMPT_LINE = re.compile(r'msg="prompt" model=(\S+) limit=(\d+) prompt=(\d+) pieces=(\S*)')
_TRUNCATED = re.compile(r'msg="truncating input prompt" limit=(\d+) prompt=(\d+)')


@dataclass(frozen=True)
class Request:
    limit: int
    tokens: int
    pieces: tuple[tuple[int, str], ...]


def as_user(script: str, timeout: float = 300):
    return lab_core.run("razer", ["bash", "-lc", script], user=USER, timeout=timeout)


def ollama_lines(since: float) -> list[str]:
    done = lab_core.run("p620", ["sh", "-c", f"journalctl -u ollama --since @{int(since)} -o cat"], timeout=60)
    return done.stdout.splitlines()


def requests_in(lines: list[str]) -> list[Request]:
    found = []
    for line in lines:
        match = _PROMPT_LINE.search(line)
        if match:
            pieces = tuple((int(t), h) for t, h in (p.split(":") for p in match.group(4).split(",") if p))
            found.append(Request(int(match.group(2)), int(match.group(3)), pieces))
    return found


def shared_prefix(previous: Request, current: Request) -> int:
    """Tokens of `current` that repeat `previous` as an exact prefix (whole pieces): what Ollama's
    cache of the previous prompt can reuse."""
    shared = 0
    for (tokens, digest), (_, before) in zip(current.pieces, previous.pieces, strict=False):
        if digest != before:
            break
        shared += tokens
    return shared


def piece_tokens(request: Request) -> int:
    return sum(tokens for tokens, _ in request.pieces)


def run_session(repo: str, label: str, turns_wanted: int = TURNS) -> tuple[list[list[Request]], list[str]]:
    """Turns of one session; the stand-in's requests of each turn and its truncation lines."""
    started = time.time()
    before = ollama_lines(started - 1)  # --since is per second: skip what was there already
    turns: list[list[Request]] = []
    seen = len(requests_in(before))
    for turn in range(turns_wanted):
        resume = "--continue " if turn else ""
        done = as_user(f"cd {repo} && DISABLE_TELEMETRY=1 timeout 280 claude {resume}-p {shlex.quote(PROMPT)} "
                       "--allowedTools Bash --output-format json")
        assert done.returncode == 0, f"{label} turn {turn}: {done.stdout[-800:]} {done.stderr[-800:]}"
        requests = requests_in(ollama_lines(started - 1))
        turns.append(requests[seen:])
        seen = len(requests)
    truncated = [line for line in ollama_lines(started - 1)[len(before):] if _TRUNCATED.search(line)]
    return turns, truncated


def report(label: str, turns: list[list[Request]]) -> None:
    """Per turn, each request as Ollama got it: its tokens / the context, and the share of it that
    repeats the previous request's prompt as an exact prefix (a * marks the whole previous prompt)."""
    previous: Request | None = None
    print(f"\n{label}: tokens/context (share repeating the previous prompt as a prefix, * = all of it)")
    for number, requests in enumerate(turns):
        cells = []
        for request in requests:
            shared = shared_prefix(previous, request) if previous else 0
            whole = "*" if previous and shared == piece_tokens(previous) else ""
            cells.append(f"{request.tokens}/{request.limit} ({shared / piece_tokens(request):.0%}{whole})")
            previous = request
        print(f"  turn {number}: " + ", ".join(cells))


def test_session_stays_inside_the_context_with_the_settings_and_overflows_without(deployed):
    repo = f"~/session-{int(time.time())}"
    setup = as_user(f"mkdir -p {repo} && cd {repo} && git init -q && "
                    "python3 -c \"import random, string; random.seed(7); l=string.ascii_lowercase;"
                    "open('big.txt','w').write('\\n'.join(' '.join(random.choice(l) + random.choice(l) "
                    "for _ in range(12)) for _ in range(560)))\" && claude-router use-ollama && claude-router status")
    assert setup.returncode == 0, setup.stderr
    sizing = SessionSizing(65536)  # the lab's models run with 64k (inventory/lab.yaml)
    for name, value in sizing.env().items():
        assert f"{name}: {value}" in setup.stdout, setup.stdout
    assert f"compacts at: {sizing.compact_at} tokens" in setup.stdout

    sized, sized_truncated = run_session(repo, "with the settings")
    report("with use-ollama's settings", sized)
    requests = [r for turn in sized for r in turn]
    assert len(requests) >= 3 * TURNS, "every turn reaches the model (a prompt and two tool steps)"
    assert sized_truncated == [], sized_truncated
    # Ollama's context holds the prompt and the answer: the prompt leaves room for max_tokens.
    assert max(r.tokens for r in requests) <= requests[0].limit - sizing.output, "no room for the answer"
    # With the attribution header off, even the request after a compaction reuses the system
    # prompt and the tool definitions (the first two pieces) of the one before.
    head = sum(tokens for tokens, _ in requests[0].pieces[:2])
    assert min(shared_prefix(a, b) for a, b in itertools.pairwise(requests)) >= head

    # Measured, not asserted: the same with Claude Code's attribution header (cc_version=...) on.
    as_user(f"cd {repo} && python3 -c \"import json; p='.claude/settings.local.json';"
            "s=json.load(open(p)); s['env'].pop('CLAUDE_CODE_ATTRIBUTION_HEADER'); json.dump(s, open(p, 'w'))\"")
    attributed, _ = run_session(repo, "with the attribution header", 3)
    report("sized, attribution header on", attributed)

    # The same session without the sizing: only the slots, URL, key helper and timeout stay.
    unsized = as_user(f"cd {repo} && python3 -c \"import json; p='.claude/settings.local.json';"
                      f"s=json.load(open(p)); [s['env'].pop(k) for k in {sorted(sizing.env())!r}];"
                      "s['env']['CLAUDE_CODE_ATTRIBUTION_HEADER'] = '0';"
                      "json.dump(s, open(p, 'w'))\"")
    assert unsized.returncode == 0, unsized.stderr
    plain, plain_truncated = run_session(repo, "without the settings")
    report("without the sizing settings", plain)
    assert plain_truncated, "without the settings the session must outgrow the context"
    assert max(r.tokens for turn in plain for r in turn) > plain[0][0].limit
