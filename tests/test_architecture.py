"""The import rules ARCHITECTURE.md states, read from the source (every import, lazy ones included)."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PRODUCTION = ("inventory", "facts", "deploys", "hostfiles", "checks")
# What the router's programs find on the server besides the standard library (LiteLLM's venv).
SERVER_VENV = {"litellm", "fastapi", "starlette", "yaml"}
HOST_NAMES_MODULE = "llm_router_names"  # hostfiles/router_names.py as it is named on the server


def imports_of(path: Path) -> set[str]:
    """Absolute module names a file imports anywhere (relative imports resolved within its package)."""
    tree = ast.parse(path.read_text(), str(path))
    package = path.relative_to(REPO).parent.parts
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ".".join(package[: len(package) - node.level + 1])
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module or ""
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return found


def sources(folder: str) -> list[Path]:
    return sorted((REPO / folder).rglob("*.py"))


def offending(paths: list[Path], forbidden: tuple[str, ...]) -> list[str]:
    return [f"{path.relative_to(REPO)} imports {name}"
            for path in paths for name in sorted(imports_of(path))
            if any(name == f or name.startswith(f + ".") for f in forbidden)]


def test_the_import_reader_sees_lazy_and_relative_imports(tmp_path):
    # Without this, every rule below would pass on a reader that finds nothing.
    assert "deploys.components.components_for" in imports_of(REPO / "deploys" / "site.py")
    probe = REPO / "facts" / "_probe_for_test_architecture.py"
    probe.write_text("def f():\n    from deploys import ops\n\nfrom .units import UnitState\n")
    try:
        found = imports_of(probe)
    finally:
        probe.unlink()
    assert {"deploys", "deploys.ops", "facts.units", "facts.units.UnitState"} <= found


def test_facts_never_import_deploys_or_checks():
    assert offending(sources("facts"), ("deploys", "checks", "lab", "bench", "tests")) == []


@pytest.mark.parametrize("folder", PRODUCTION)
def test_production_code_never_imports_lab_bench_or_tests(folder):
    assert offending(sources(folder), ("lab", "bench", "tests")) == []


def test_inventory_layers_import_only_downwards():
    layers = {"model": ("inventory",), "derive": ("inventory.rules", "inventory.load", "inventory.hosts"),
              "rules": ("inventory.load", "inventory.hosts")}
    problems = []
    for name, forbidden in layers.items():
        problems += offending([REPO / "inventory" / f"{name}.py"], forbidden)
    # model.py imports nothing of ours at all.
    problems += offending([REPO / "inventory" / "model.py"], PRODUCTION + ("lab", "bench", "tests"))
    assert problems == []


def test_host_programs_use_only_the_standard_library_and_the_routers_venv():
    allowed = set(sys.stdlib_module_names) | SERVER_VENV | {"hostfiles", HOST_NAMES_MODULE, "__future__"}
    problems = [f"{path.relative_to(REPO)} imports {name}"
                for path in sources("hostfiles") for name in imports_of(path)
                if name.split(".")[0] not in allowed]
    assert problems == []


def test_templates_hold_only_jinja():
    assert sorted(p.relative_to(REPO).as_posix() for p in (REPO / "templates").rglob("*")
                  if p.is_file() and p.suffix != ".j2") == []
