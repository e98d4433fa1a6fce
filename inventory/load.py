"""Load an inventory YAML file into the typed model, with errors a human can act on.

Every error names file:line:column, the key path, and what to do; no traceback.
"""

from __future__ import annotations

import difflib
import hashlib
import os
import pickle
import sys
import warnings
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ValidationError

from inventory.model import Inventory
from inventory.rules import problems

if TYPE_CHECKING:
    from ruamel.yaml.comments import CommentedMap

DEFAULT_INVENTORY = Path("inventory/homelab.yaml")
INVENTORY_ENV = "LLM_ROUTER_INVENTORY"
# load_inventory(cache=True): one validated inventory per inventory file, the most recent few.
CACHE_DIR = Path(__file__).resolve().parent.parent / ".cache" / "inventory"
CACHE_ENTRIES = 32


@dataclass(frozen=True)
class Diagnostic:
    file: Path
    line: int  # 1-based
    column: int  # 1-based
    path: str  # dotted key path, "" for the document
    message: str

    def __str__(self) -> str:
        where = f" at {self.path}" if self.path else ""
        return f"{self.file}:{self.line}:{self.column}: error{where}: {self.message}"


class InventoryError(Exception):
    """The inventory cannot be used. `diagnostics` lists every problem found."""

    def __init__(self, diagnostics: list[Diagnostic]):
        self.diagnostics = diagnostics
        super().__init__("\n".join(map(str, diagnostics)))


def inventory_path_from_env() -> Path:
    return Path(os.environ.get(INVENTORY_ENV) or DEFAULT_INVENTORY)


def load_inventory(path: Path | str, cache: bool = False) -> Inventory:
    """The validated inventory at `path`.

    `cache`: keep the validated model per inventory file (.cache/inventory) and reuse it while the
    file, our model code and pydantic are unchanged; a re-run then skips parsing the YAML and
    building pydantic's validators (~60 ms of every pyinfra run, see inventory/hosts.py).
    """
    path = Path(path)
    text = _read(path)
    cache_file = _cache_file(path) if cache else None
    key = _cache_key(text) if cache_file else ""
    inventory = _cached(cache_file, key) if cache_file else None
    if inventory is None:
        document = _parse_yaml(path, text)
        _refuse_alias_expansion(path, document)
        try:
            inventory = Inventory.model_validate(_plain(document))
        except ValidationError as exc:
            raise InventoryError(_diagnostics(path, document, exc)) from None
        # The cross-field rules judge the validated inventory, each problem at its key in the YAML.
        found = problems(inventory)
        if found:
            raise InventoryError([_at(path, document, problem.loc, problem.message, point_at_key=False)
                                  for problem in found])
        if cache_file:
            _store(cache_file, key, inventory)
    inventory._source = path.resolve()
    return inventory


# --- cache of validated inventories -------------------------------------------------


def _cache_file(path: Path) -> Path:
    return CACHE_DIR / f"{hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:32]}.pickle"


def _cache_key(text: str) -> str:
    """Everything validation depends on: the YAML, our model code, pydantic's and Python's versions."""
    digest = hashlib.sha256(text.encode())
    for source in sorted(Path(__file__).parent.glob("*.py")):
        digest.update(source.read_bytes())
    digest.update(f"{version('pydantic')} {version('pydantic_core')} {sys.version}".encode())
    return digest.hexdigest()


def _cached(cache_file: Path, key: str) -> Inventory | None:
    # A pickle runs code as it loads: the cache lives in this checkout, 0700, as trusted as the code.
    try:
        cached_key, inventory = pickle.loads(cache_file.read_bytes())
    except (OSError, pickle.UnpicklingError, EOFError, AttributeError, ImportError, TypeError, ValueError):
        return None  # absent, unreadable or from other code: validate again
    return inventory if cached_key == key and isinstance(inventory, Inventory) else None


def _store(cache_file: Path, key: str, inventory: Inventory) -> None:
    """Best effort (a read-only checkout still works); written whole or not at all."""
    temp = cache_file.with_suffix(f".{os.getpid()}.tmp")
    try:
        CACHE_DIR.mkdir(mode=0o700, parents=True, exist_ok=True)
        with open(os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as handle:
            pickle.dump((key, inventory), handle, protocol=pickle.HIGHEST_PROTOCOL)
        temp.replace(cache_file)
        # Tests and lab variants write inventories to fresh paths: keep the newest entries only.
        entries = sorted(CACHE_DIR.glob("*.pickle"), key=lambda entry: entry.stat().st_mtime, reverse=True)
        for stale in entries[CACHE_ENTRIES:]:
            stale.unlink(missing_ok=True)
    except OSError:
        temp.unlink(missing_ok=True)


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InventoryError([Diagnostic(path, 1, 1, "", "file not found; pass the path of an inventory "
                                         f"YAML file (or set {INVENTORY_ENV})")]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InventoryError([Diagnostic(path, 1, 1, "", f"cannot read the file: {exc}")]) from None


def _parse_yaml(path: Path, text: str) -> CommentedMap:
    # Imported here: a cached inventory needs no YAML parser.
    from ruamel.yaml import YAML
    from ruamel.yaml.comments import CommentedMap
    from ruamel.yaml.constructor import DuplicateKeyError
    from ruamel.yaml.error import MarkedYAMLError, ReusedAnchorWarning, YAMLError

    yaml = YAML(typ="rt")
    try:
        with warnings.catch_warnings():
            # YAML lets a later anchor of the same name replace an earlier one; ruamel would print a
            # multi-line Python warning for it in the middle of our diagnostics.
            warnings.simplefilter("ignore", ReusedAnchorWarning)
            document = yaml.load(text)
    except DuplicateKeyError as exc:
        mark = exc.problem_mark
        raise InventoryError([Diagnostic(path, mark.line + 1, mark.column + 1, "",
                                         f"{_one_line(exc.problem)}; each key (host names included) may appear "
                                         "only once in a mapping")]) from None
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        hint = ""
        if "\t" in text and "'\\t'" in str(exc):
            hint = "; YAML indentation must use spaces, not tabs"
        problem = _one_line(exc.problem or exc.context or "invalid YAML")
        line, column = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        raise InventoryError([Diagnostic(path, line, column, "", f"YAML syntax error: {problem}{hint}")]) from None
    except (YAMLError, ValueError, RecursionError) as exc:
        raise InventoryError([Diagnostic(path, 1, 1, "", f"YAML error: {_one_line(str(exc))}")]) from None
    if document is None:
        raise InventoryError([Diagnostic(path, 1, 1, "", "the inventory is empty; start from "
                                         "inventory/homelab.yaml")])
    if not isinstance(document, CommentedMap):
        raise InventoryError([Diagnostic(path, 1, 1, "", "the inventory must be a mapping with `hosts:` at the "
                                         "top level")])
    return document


# A real inventory expands to a few hundred values; anchors and aliases that expand to far more are a
# "billion laughs" document, which would take unbounded time and memory to turn into plain values.
MAX_EXPANDED_VALUES = 100_000


def _refuse_alias_expansion(path: Path, document: CommentedMap) -> None:
    """Refuse a document whose aliases expand without bound, or refer to themselves, before expanding it.

    ruamel builds each anchored value once and shares it wherever an alias names it, so the loaded
    document is small; counting what each value expands to is linear in that shared graph.
    """
    expanded: dict[int, int] = {}
    in_progress: set[int] = set()

    def size(node: Any) -> int:
        if not isinstance(node, (dict, list)):
            return 1
        key = id(node)
        if key in expanded:
            return expanded[key]
        if key in in_progress:
            raise InventoryError([_diagnostic_at(path, node, "a YAML alias refers to the value it is part of; "
                                                 "anchors (&name) may only be used after their value ends")])
        in_progress.add(key)
        total = 1 + sum(size(child) for child in (node.values() if isinstance(node, dict) else node))
        in_progress.discard(key)
        expanded[key] = min(total, MAX_EXPANDED_VALUES + 1)  # capped: big numbers stay cheap
        return expanded[key]

    if size(document) <= MAX_EXPANDED_VALUES:
        return
    # Point at the innermost value that is still too large: where the aliases pile up.
    node: Any = document
    while True:
        children = list(node.values() if isinstance(node, dict) else node)
        largest = max(children, key=size, default=None)
        if largest is None or size(largest) <= MAX_EXPANDED_VALUES:
            break
        node = largest
    raise InventoryError([_diagnostic_at(path, node, f"YAML anchors and aliases here expand to more than "
                                         f"{MAX_EXPANDED_VALUES:,} values (a \"billion laughs\" document); "
                                         "write the values out instead of nesting aliases")])


def _diagnostic_at(path: Path, node: Any, message: str) -> Diagnostic:
    position = getattr(node, "lc", None)
    line, column = (position.line + 1, position.col + 1) if position is not None and position.line is not None \
        else (1, 1)
    return Diagnostic(path, line, column, "", message)


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _plain(node: Any) -> Any:
    """ruamel's round-trip containers (dict and list subclasses) -> plain Python values, only for validation."""
    if isinstance(node, dict):
        return {str(k) if not isinstance(k, (str, int, float, bool)) else k: _plain(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_plain(v) for v in node]
    if isinstance(node, str):
        return str(node)  # drop ruamel scalar-string subclasses
    return node


# --- pydantic errors -> positions -------------------------------------------------


def _diagnostics(path: Path, document: CommentedMap, exc: ValidationError) -> list[Diagnostic]:
    found = []
    for error in exc.errors():
        loc = tuple(error["loc"])
        if _is_injected_host_name(document, loc):
            continue  # the key itself was reported; the copy we injected adds nothing
        found.append(_at(path, document, loc, _message(loc, error), error["type"] == "extra_forbidden"))
    return found


def _is_injected_host_name(document: CommentedMap, loc: tuple) -> bool:
    if len(loc) != 3 or loc[0] != "hosts" or loc[2] != "name":
        return False
    hosts = document.get("hosts")
    host = hosts.get(loc[1]) if isinstance(hosts, dict) else None
    return not (isinstance(host, dict) and "name" in host)


def _message(loc: tuple, error: dict) -> str:
    kind = error["type"]
    if kind == "extra_forbidden":
        key = loc[-1]
        model = _model_at(loc[:-1])
        allowed = sorted(model.model_fields) if model else []
        if model and "name" in allowed and loc[:1] == ("hosts",) and len(loc) == 3:
            allowed.remove("name")
        close = difflib.get_close_matches(str(key), allowed, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        listing = f" Allowed keys here: {', '.join(allowed)}." if allowed else ""
        return f"unknown key {key!r}{hint}.{listing}"
    if kind == "missing":
        return f"missing required key {loc[-1]!r}"
    message = error["msg"]
    for prefix in ("Value error, ", "Assertion failed, "):
        message = message.removeprefix(prefix)
    if kind in ("list_type", "set_type", "frozen_set_type"):
        return f"expected a list, e.g. [a, b] (got {error.get('input')!r})"
    if kind == "string_type" and isinstance(error.get("input"), (int, float, bool)):
        message = f"{message}: YAML read {error['input']!r} as a {type(error['input']).__name__}; put it in quotes"
    if kind == "string_pattern_mismatch":
        message = f"{message} (got {error.get('input')!r})"
    return message


def _model_at(loc: tuple) -> type[BaseModel] | None:
    """The pydantic model class a key path lands on, for listing the allowed keys."""
    model: Any = Inventory
    for part in loc:
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            return None
        field = model.model_fields.get(str(part))
        if field is None:
            continue  # a dict key (host name) or a union tag: stay on the container's value type
        model = _inner_model(field.annotation)
    return model if isinstance(model, type) and issubclass(model, BaseModel) else None


def _inner_model(annotation: Any) -> Any:
    from typing import get_args

    stack = [annotation]
    while stack:
        current = stack.pop(0)
        if isinstance(current, type) and issubclass(current, BaseModel):
            return current
        stack.extend(get_args(current))
    return None


def _walk(document: Any, loc: tuple) -> tuple[Any, list]:
    """Follow loc through the YAML (ruamel's dict and list subclasses); returns the deepest node and the
    (container, key) steps taken."""
    node, steps = document, []
    for part in loc:
        if (isinstance(node, dict) and part in node
                or isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node)):
            steps.append((node, part))
            node = node[part]
        # anything else is a pydantic-internal element (union tag, validator name): skip it
    return node, steps


def _at(path: Path, document: CommentedMap, loc: tuple, message: str, point_at_key: bool) -> Diagnostic:
    node, steps = _walk(document, loc)
    line, column = 0, 0
    if steps:
        container, key = steps[-1]
        if isinstance(container, dict):
            if point_at_key or isinstance(node, (dict, list)):
                line, column = container.lc.key(key)
            else:
                line, column = container.lc.value(key)
        else:
            line, column = container.lc.item(key)
    dotted = ".".join(str(p) for p in loc if not (isinstance(p, str) and ("[" in p or p in ("url", "upload"))))
    return Diagnostic(path, line + 1, column + 1, dotted, message)
