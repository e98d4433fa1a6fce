"""LAB STAND-IN for Ollama: the deterministic "model" (no weights exist in the lab).

Rules, so tests and LiteLLM round trips are predictable:
- last message is a `tool` result -> text quoting that result;
- `tools` given and the last user message says `call tool NAME` -> a tool call to NAME,
  arguments built from the tool's JSON schema (required properties get fixed values), or
  `call tool NAME {JSON}` -> those arguments; `call tool NAME xN ...` repeats the call until N
  tool results follow that message (a turn of N steps, as an agent's loop makes);
- otherwise -> "Hello from the Ollama stand-in (model NAME)."
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import Any

FIXED_STRING_ARGUMENT = "lab-standin"
THINKING_TEXT = "The stand-in considers the request."
_CALL_TOOL = re.compile(r"call tool\s+([A-Za-z0-9_.\-]+)(?:\s+x(\d+))?(?:\s+(\{.*?\})(?=\s*$|\s+end\b))?",
                        re.IGNORECASE | re.DOTALL)
# A quoted tool result is cut here: a reply is short, whatever the tool returned.
QUOTE_LIMIT = 200


@dataclass(frozen=True)
class Reply:
    content: str
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    thinking: str | None = None


def message_text(message: dict[str, Any]) -> str:
    content = message.get("content", "")
    return content if isinstance(content, str) else json.dumps(content)


def arguments_from_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """Fill every required property with a fixed value of its JSON-schema type."""
    properties = schema.get("properties") or {}
    arguments: dict[str, Any] = {}
    for name in schema.get("required") or []:
        prop = properties.get(name) or {}
        if prop.get("enum"):
            arguments[name] = prop["enum"][0]
            continue
        kind = prop.get("type", "string")
        kind = kind[0] if isinstance(kind, list) and kind else kind
        arguments[name] = {
            "integer": 1,
            "number": 1,
            "boolean": True,
            "array": [],
            "object": {},
        }.get(kind, FIXED_STRING_ARGUMENT)
    return arguments


def _tool_call(tool: dict[str, Any], index: int, given: dict[str, Any] | None = None) -> dict[str, Any]:
    function = tool.get("function") or {}
    name = function.get("name", "")
    arguments = given if given is not None else arguments_from_schema(function.get("parameters") or {})
    call_id = (
        "call_" + hashlib.sha256(f"{name}:{json.dumps(arguments, sort_keys=True)}".encode()).hexdigest()[:8]
    )
    return {"id": call_id, "function": {"index": index, "name": name, "arguments": arguments}}


def compose_reply(
    model: str, messages: list[dict[str, Any]], tools: list[dict[str, Any]], think: bool
) -> Reply:
    thinking = THINKING_TEXT if think else None
    last = messages[-1] if messages else {}
    user_index = next((i for i in range(len(messages) - 1, -1, -1) if messages[i].get("role") == "user"), None)
    wanted = _CALL_TOOL.search(message_text(messages[user_index])) if tools and user_index is not None else None
    results_since = sum(1 for m in messages[(user_index or 0) + 1:] if m.get("role") == "tool")
    if wanted and results_since < int(wanted.group(2) or 1):
        by_name = {(t.get("function") or {}).get("name"): t for t in tools}
        tool = by_name.get(wanted.group(1))
        if tool is None:
            return Reply(f"No tool named {wanted.group(1)} is available.", thinking=thinking)
        try:
            given = json.loads(wanted.group(3)) if wanted.group(3) else None
        except ValueError:
            given = None
        return Reply("", [_tool_call(tool, 0, given if isinstance(given, dict) else None)], thinking)
    if last.get("role") == "tool":
        return Reply(f'The tool returned: "{message_text(last)[:QUOTE_LIMIT]}"', thinking=thinking)
    return Reply(f"Hello from the Ollama stand-in (model {model}).", thinking=thinking)


def token_count(text: str) -> int:
    """A crude, deterministic token count (words and punctuation)."""
    return len(re.findall(r"\w+|[^\w\s]", text))


def prompt_pieces(messages: list[dict[str, Any]], tools: list[dict[str, Any]]) -> list[str]:
    """The prompt in the order chat templates (Qwen's, Gemma's) render it: the leading system
    message, the tool definitions, then each message (role, text, tool calls) in turn. Two
    requests share a cache prefix as far as these agree."""
    def piece(m: dict[str, Any]) -> str:
        calls = m.get("tool_calls")
        return f"<{m.get('role')}>{message_text(m)}" + (json.dumps(calls) if calls else "")

    lead = 1 if messages and messages[0].get("role") == "system" else 0
    pieces = [piece(m) for m in messages[:lead]] + ([json.dumps(tools)] if tools else [])
    return pieces + [piece(m) for m in messages[lead:]]


def prompt_tokens(messages: list[dict[str, Any]], tools: list[dict[str, Any]]) -> int:
    count = sum(token_count(message_text(m)) + 4 for m in messages)
    return count + (token_count(json.dumps(tools)) if tools else 0)


def content_pieces(text: str) -> list[str]:
    """Split a reply into streaming pieces (one word plus its trailing space each)."""
    return re.findall(r"\S+\s*", text) or ([text] if text else [])
