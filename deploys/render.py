"""Render a template from templates/: templates only loop and print values computed in Python."""

from __future__ import annotations

from functools import cache
from pathlib import Path

from jinja2 import Environment, FileSystemLoader, StrictUndefined

TEMPLATES = Path(__file__).resolve().parent.parent / "templates"


@cache
def _environment() -> Environment:
    return Environment(
        loader=FileSystemLoader(TEMPLATES), undefined=StrictUndefined, keep_trailing_newline=True,
        trim_blocks=True, lstrip_blocks=True, autoescape=False,
    )


def render(name: str, **context) -> str:
    """Render templates/<name> with `context`; a missing variable is an error, never an empty string."""
    return _environment().get_template(name).render(**context)
