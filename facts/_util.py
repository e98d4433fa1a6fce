"""Parsing helpers shared by several fact modules (kept pure and tiny)."""

from __future__ import annotations

import dataclasses
import json
from typing import Any


class JsonDataclass:
    """Mixin for fact result dataclasses: pyinfra's CLI (``pyinfra HOST fact ...``)
    serialises fact values through ``to_json()`` and knows no dataclasses."""

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[arg-type]  # subclasses are dataclasses


def parse_json_lines(lines: list[str]) -> Any | None:
    """Decode JSON printed across ``lines``, tolerating noise before it.

    Tools such as rocm-smi print ``WARNING:`` lines ahead of their JSON, so decoding
    starts at the first line that opens an object or array. Returns ``None`` when
    there is no decodable JSON.
    """
    for start, line in enumerate(lines):
        if line.lstrip().startswith(("{", "[")):
            text = "\n".join(lines[start:])
            try:
                return json.loads(text)
            except ValueError:
                # Trailing noise after the document: decode just the first value.
                try:
                    value, _ = json.JSONDecoder().raw_decode(text.lstrip())
                    return value
                except ValueError:
                    continue
    return None


def to_int(value: Any) -> int | None:
    """``int`` for ints and integral strings/floats, else ``None`` ("N/A", garbage, bools)."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return int(value) if value.is_integer() else None
    if isinstance(value, str):
        text = value.strip()
        try:
            return int(text)
        except ValueError:
            try:
                number = float(text)
            except ValueError:
                return None
            return int(number) if number.is_integer() else None
    return None
