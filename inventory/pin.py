"""`python -m inventory pin ollama VERSION --inventory FILE [--from URL|DIR|FILE]`.

Reads an Ollama release's sha256sum.txt and writes the version and the sha256 of every archive each
server's acceleration needs (`inventory.derive.ollama_archives`) into the inventory, in place: only
those values change in the file; comments, order, quoting and layout stay as the user wrote them.
Also the guard the apply runs before connecting: an archive whose sha256 is still the all-zero
placeholder of the example inventory is refused with the pin command to run.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from inventory.derive import ollama_archives
from inventory.load import Diagnostic, InventoryError, load_inventory
from inventory.model import ArtifactSourceUrl, Inventory

SUMS_FILE = "sha256sum.txt"
# What the example inventory ships until a release is pinned; the apply refuses it (refuse_placeholders).
PLACEHOLDER_SHA256 = "0" * 64
FETCH_TIMEOUT_S = 30
MAX_SUMS_BYTES = 1 << 20  # a release's list is a few KB; anything near this is not a sha256sum.txt
VERSION = re.compile(r"\d+\.\d+\.\d+")
# `sha256sum` output: HASH, a space, ' ' (text) or '*' (binary) mode, the name (the release's may start "./").
SUMS_LINE = re.compile(r"([0-9A-Fa-f]{64}) [ *](?:\./)?(\S+)")
OTHER_EXTENSION = {".tar.zst": ".tgz", ".tgz": ".tar.zst"}


class PinError(Exception):
    """Refused: one line saying what is wrong and what to do."""


@dataclass(frozen=True)
class Change:
    host: str
    what: str  # "version" or an archive name
    old: str
    new: str

    def __str__(self) -> str:
        shown = 12 if self.what != "version" else None  # a hash's prefix identifies it to a reader
        if self.old == self.new:
            return f"{self.host}: {self.what} {self.new[:shown]} (unchanged)"
        return f"{self.host}: {self.what} {self.old[:shown]} -> {self.new[:shown]}"


def pin_command(version: str, inventory: Path | str) -> str:
    return f"python -m inventory pin ollama {version} --inventory {inventory}"


def release_sums_url(version: str) -> str:
    """The sums file next to the release archives the hosts download by default."""
    base = ArtifactSourceUrl.model_fields["base_url"].default
    return base.format(version=version) + SUMS_FILE


# --- the release's sums -------------------------------------------------------------


def read_sums(version: str, source: str | None) -> tuple[str, str]:
    """(where it came from, text) of the release's sha256sum.txt."""
    if source is None or source.startswith("https://"):
        url = source or release_sums_url(version)
        return url, _fetch(url, version)
    if "://" in source:
        raise PinError(f"--from {source}: only https:// URLs are read (the hashes decide what the hosts run); "
                       "or pass a local directory or file")
    path = Path(source).expanduser()
    if path.is_dir():
        path = path / SUMS_FILE
    try:
        data = path.read_bytes()[:MAX_SUMS_BYTES + 1]
    except OSError as exc:
        raise PinError(f"--from {source}: cannot read {path}: {exc.strerror or exc}; pass the release's "
                       f"{SUMS_FILE} or the directory holding it") from None
    return str(path), _text(data, str(path))


def _fetch(url: str, version: str) -> str:
    # Imported here: the apply imports this module for its guard only, and every pyinfra run pays imports.
    import ssl
    import urllib.error
    import urllib.request

    # create_default_context verifies the certificate and the name (honouring SSL_CERT_FILE/SSL_CERT_DIR).
    context = ssl.create_default_context()
    offline = f"; offline? fetch {SUMS_FILE} elsewhere and pass --from FILE"
    try:
        with urllib.request.urlopen(url, timeout=FETCH_TIMEOUT_S, context=context) as response:
            data = response.read(MAX_SUMS_BYTES + 1)
    except urllib.error.HTTPError as exc:
        raise PinError(f"{url}: HTTP {exc.code} {exc.reason}; is v{version} a published Ollama release "
                       "(https://github.com/ollama/ollama/releases)?") from None
    except urllib.error.URLError as exc:
        raise PinError(f"cannot fetch {url}: {_one_line(exc.reason)}{offline}") from None
    except (OSError, ValueError) as exc:  # timeouts, resets, a malformed URL
        raise PinError(f"cannot fetch {url}: {_one_line(exc) or type(exc).__name__}{offline}") from None
    return _text(data, url)


def _text(data: bytes, where: str) -> str:
    if len(data) > MAX_SUMS_BYTES:
        raise PinError(f"{where}: larger than {MAX_SUMS_BYTES} bytes, not a {SUMS_FILE}")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise PinError(f"{where}: not text, not a {SUMS_FILE}") from None


def parse_sums(text: str, where: str) -> dict[str, str]:
    """{archive name: lower-case sha256} from `HASH  NAME`, `HASH  ./NAME` or `HASH *NAME` lines."""
    sums: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        match = SUMS_LINE.fullmatch(line.rstrip("\r"))
        if match is None:
            raise PinError(f"{where}:{number}: not a sha256sum line (expected `HASH  NAME`): {line[:80]!r}; "
                           f"pass the release's {SUMS_FILE}")
        digest, name = match.group(1).lower(), match.group(2)
        if sums.get(name, digest) != digest:
            raise PinError(f"{where}:{number}: {name} is listed twice with different hashes; "
                           f"pass the release's {SUMS_FILE} as published")
        sums[name] = digest
    if not sums:
        raise PinError(f"{where}: no `HASH  NAME` lines; pass the release's {SUMS_FILE}")
    return sums


# --- where the values are in the user's file ---------------------------------------


def _parse(text: str) -> Any:
    from ruamel.yaml import YAML

    return YAML(typ="rt").load(text)


def _value_position(mapping: Any, key: str) -> tuple[int, int]:
    """0-based (line, column) of the value of `key` in the user's text."""
    if key not in (mapping.lc.data or {}):  # it comes from a `<<:` merge: its text is elsewhere
        raise PinError(f"{key!r} is written through a YAML merge (<<:), which pin does not edit; "
                       "write it in the ollama section itself")
    return mapping.lc.value(key)


def _ollama_node(document: Any, host: str) -> Any:
    return document["hosts"][host]["server"]["ollama"]


def _has_ollama_section(document: Any) -> bool:
    """Whether any host's YAML has a server.ollama mapping (read when validation failed, to say why)."""
    hosts = document.get("hosts") if isinstance(document, dict) else None
    servers = [host.get("server") for host in hosts.values() if isinstance(host, dict)] if isinstance(hosts, dict) \
        else []
    return any(isinstance(server, dict) and isinstance(server.get("ollama"), dict) for server in servers)


# --- editing in place -----------------------------------------------------------------


def _splice(text: str, edits: dict[tuple[int, int], tuple[str, str]], where: Path) -> str:
    """Replace each scalar at (line, column) whose text is `old` (plain or quoted) by `new`.

    Editing the characters of the scalar, rather than dumping the document again, is what keeps every
    other byte of the user's file: a dump would re-indent, re-wrap and re-space what it did not change.
    """
    lines = text.split("\n")  # YAML's line breaks (str.splitlines would also split on \f, \v, ...)
    for (line, column), (old, new) in sorted(edits.items(), reverse=True):  # right to left within a line
        source = lines[line]
        quote = source[column:column + 1]
        if quote in ("'", '"') and source.startswith(f"{quote}{old}{quote}", column):
            start, end = column + 1, column + 1 + len(old)
        elif source.startswith(old, column):
            start, end = column, column + len(old)
            if not isinstance(_parse(f"k: {new}\n")["k"], str):
                new = f'"{new}"'  # plain, it would read as a number: quote it
        else:
            raise PinError(f"{where}:{line + 1}:{column + 1}: cannot edit {old!r} in place (write it as a plain "
                           "or quoted scalar on one line)")
        lines[line] = source[:start] + new + source[end:]
    return "\n".join(lines)


def _write(path: Path, text: str) -> None:
    """Replace the file whole (never half-written), keeping its mode."""
    import shutil
    import tempfile

    target = path.resolve()
    descriptor, temp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    try:
        with open(descriptor, "w", encoding="utf-8", newline="") as handle:
            handle.write(text)
        shutil.copymode(target, temp)
        os.replace(temp, target)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def pin_ollama(path: Path, version: str, source: str | None) -> tuple[str, list[Change]]:
    """Pin every server's Ollama to `version`; returns (where the sums came from, the changes)."""
    if not VERSION.fullmatch(version):
        raise PinError(f"version {version!r} is not X.Y.Z; pass the release number, e.g. 0.13.5 for "
                       "https://github.com/ollama/ollama/releases/tag/v0.13.5")
    try:
        text = path.read_text(encoding="utf-8")
        inventory = load_inventory(path)
    except (OSError, UnicodeDecodeError) as exc:
        raise PinError(f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}") from None
    except InventoryError as exc:
        document = _parse_or_none(text)
        if document is not None and not _has_ollama_section(document):
            raise _no_ollama(path) from None
        more = f" (and {len(exc.diagnostics) - 1} more)" if len(exc.diagnostics) > 1 else ""
        raise PinError(f"{exc.diagnostics[0]}{more}; fix the inventory first "
                       f"(python -m inventory check {path})") from None
    if not inventory.servers:
        raise _no_ollama(path)
    where, sums_text = read_sums(version, source)
    sums = parse_sums(sums_text, where)

    document = _parse(text)
    edits: dict[tuple[int, int], tuple[str, str]] = {}
    changes: list[Change] = []
    for host in inventory.servers:
        assert host.server is not None
        ollama = host.server.ollama
        node = _ollama_node(document, host.name)
        edits[_value_position(node, "version")] = (ollama.version, version)
        changes.append(Change(host.name, "version", ollama.version, version))
        for name, digest in ollama_archives(ollama):
            if name not in sums:
                raise _missing(name, host.name, ollama.acceleration.value, version, where, sums)
            edits[_value_position(node["artifacts"], name)] = (digest, sums[name])
            changes.append(Change(host.name, name, digest, sums[name]))

    pinned = _splice(text, {at: edit for at, edit in edits.items() if edit[0] != edit[1]}, path)
    if pinned != text:
        _write(path, pinned)
    return where, changes


def _parse_or_none(text: str) -> Any:
    from ruamel.yaml.error import YAMLError

    try:
        return _parse(text)
    except (YAMLError, ValueError, RecursionError):
        return None


def _no_ollama(path: Path) -> PinError:
    return PinError(f"{path} has no hosts.<name>.server.ollama section, so there is nothing to pin; "
                    "pin an inventory with a gpu_server host (see inventory/homelab.yaml)")


def _missing(name: str, host: str, acceleration: str, version: str, where: str, sums: dict[str, str]) -> PinError:
    hint = f"pick a release that ships it, or change hosts.{host}.server.ollama.acceleration"
    for extension, other in OTHER_EXTENSION.items():
        if name.endswith(extension) and name.removesuffix(extension) + other in sums:
            hint = (f"this release ships {name.removesuffix(extension) + other} instead: rename the key in "
                    f"hosts.{host}.server.ollama.artifacts and pin again")
    return PinError(f"release v{version} ({where}) has no {name}, which {host} needs for acceleration "
                    f"{acceleration}; {hint}")


def _one_line(value: object) -> str:
    return " ".join(str(value).split())


# --- the apply's guard ------------------------------------------------------------------


def placeholder_diagnostics(inventory: Inventory, path: Path) -> list[Diagnostic]:
    """Every archive the apply would install whose sha256 is the placeholder, at its line."""
    found = [(host, name) for host in inventory.servers if host.server
             for name, digest in ollama_archives(host.server.ollama) if digest == PLACEHOLDER_SHA256]
    if not found:
        return []
    document = _parse(path.read_text(encoding="utf-8"))  # only now: a pinned inventory needs no YAML parse
    diagnostics = []
    for host, name in found:
        assert host.server is not None
        try:
            line, column = _value_position(_ollama_node(document, host.name)["artifacts"], name)
        except PinError:
            line, column = 0, 0  # written through a merge: the message still names the key path
        diagnostics.append(Diagnostic(
            path, line + 1, column + 1, f"hosts.{host.name}.server.ollama.artifacts.{name}",
            f"the sha256 is a placeholder, which the host's download can never match; pin a release with: "
            f"{pin_command(host.server.ollama.version, path)}"))
    return diagnostics


def refuse_placeholders(inventory: Inventory, path: Path) -> None:
    found = placeholder_diagnostics(inventory, path)
    if found:
        raise InventoryError(found)


# --- command line -------------------------------------------------------------------------


def add_parser(commands: Any) -> None:
    pin = commands.add_parser("pin", help="pin a release: version and archive sha256s, written in place")
    pin.add_argument("software", choices=["ollama"])
    pin.add_argument("version", help="release number X.Y.Z, e.g. 0.13.5")
    pin.add_argument("--inventory", type=Path, required=True, help="the inventory file to edit in place")
    pin.add_argument("--from", dest="source", metavar="URL|DIR|FILE", default=None,
                     help=f"the release's {SUMS_FILE}: an https:// URL, a directory holding it, or the file "
                          f"(default: {release_sums_url('VERSION')})")


def run(args: argparse.Namespace) -> int:
    try:
        where, changes = pin_ollama(args.inventory, args.version, args.source)
    except PinError as exc:
        print(f"pin: {exc}", file=sys.stderr)
        return 2
    for change in changes:
        print(change)
    print(f"pinned ollama {args.version} from {where} in {args.inventory}; "
          f"next: python -m inventory check {args.inventory}")
    return 0
