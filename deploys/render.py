"""Render a template from templates/: templates only loop and print values computed in Python."""

from __future__ import annotations

import os
from functools import cache
from pathlib import Path

from jinja2 import Environment, FileSystemBytecodeCache, FileSystemLoader, StrictUndefined

TEMPLATES = Path(__file__).resolve().parent.parent / "templates"
# Compiled templates, keyed by jinja2 on name and source checksum: an edited template is recompiled.
BYTECODE_DIR = Path(__file__).resolve().parent.parent / ".cache" / "jinja2"


def _bytecode_cache() -> FileSystemBytecodeCache | None:
    """jinja2's compile costs ~10 ms per run; None (compile every time) where the cache cannot be written."""
    try:
        BYTECODE_DIR.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    if not os.access(BYTECODE_DIR, os.W_OK):
        return None  # jinja2 would fail the render when it stores the compiled template
    return FileSystemBytecodeCache(str(BYTECODE_DIR))


@cache
def _environment() -> Environment:
    return Environment(
        loader=FileSystemLoader(TEMPLATES), undefined=StrictUndefined, keep_trailing_newline=True,
        trim_blocks=True, lstrip_blocks=True, autoescape=False, bytecode_cache=_bytecode_cache(),
    )


def render(name: str, **context) -> str:
    """Render templates/<name> with `context`; a missing variable is an error, never an empty string."""
    return _environment().get_template(name).render(**context)
