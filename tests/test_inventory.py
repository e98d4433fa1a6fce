"""The inventory contract: the examples load, and every bad inventory gives one clear, located error."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from inventory import load
from inventory.derive import (
    alias_table,
    largest_resident_set,
    ollama_archives,
    ollama_environment,
    resolve_alias,
    router_interfaces,
    router_route,
)
from inventory.load import InventoryError, load_inventory
from inventory.model import Inventory

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = [REPO / "inventory" / "homelab.yaml", REPO / "inventory" / "lab.yaml"]

MINIMAL = """\
models:
  qwen3.6:27b:
    vram_gb: 17
    capabilities: [completion, tools]
  gemma4:26b:
    vram_gb: 18
    capabilities: [completion, tools]
  tiny:1b:
    vram_gb: 1
hosts:
  p620:
    roles: [gpu_server, client]
    ssh:
      hostname: p620.lan
    network:
      lan_interfaces: [enp1s0]
      tailnet_dns_name: p620.tail1234.ts.net
    server:
      gpus:
        - name: RX 7900 XTX
          vram_gb: 24
      ollama:
        version: 0.13.5
        artifacts:
          ollama-linux-amd64.tar.zst: "%(sha)s"
          ollama-linux-amd64-rocm.tar.zst: "%(sha)s"
        acceleration: rocm
        bind: 127.0.0.1
        max_loaded_models: 1
        persistent_models: [qwen3.6:27b]
        on_demand_models: [gemma4:26b, tiny:1b]
      router:
        port: 4000
        aliases:
          claude-sonnet-4-6: qwen3.6:27b
          claude-haiku-*: qwen3.6:27b
          small: tiny:1b
    client:
      router: p620
      users:
        - name: olaf
  razer:
    roles: [client]
    ssh:
      hostname: razer.lan
    client:
      router: p620
      users:
        - name: olaf
""".replace("%(sha)s", "a" * 64)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "inv.yaml"
    path.write_text(text)
    return path


def position(text: str, needle: str, skip: int = 0) -> tuple[int, int]:
    """1-based line:column of `needle` (plus `skip` characters) in `text`."""
    index = (text.rindex(needle[5:]) if needle.startswith("last:") else text.index(needle)) + skip
    line = text.count("\n", 0, index) + 1
    column = index - (text.rfind("\n", 0, index) + 1) + 1
    return line, column


def test_minimal_loads(tmp_path):
    inv = load_inventory(write(tmp_path, MINIMAL))
    assert isinstance(inv, Inventory)
    assert [h.name for h in inv.servers] == ["p620"]
    assert [h.name for h in inv.clients] == ["p620", "razer"]


# homelab.yaml ships placeholder hashes, which `check` reports (tests/test_inventory_pin.py).
@pytest.mark.parametrize("path", EXAMPLES[1:], ids=lambda p: p.name)
def test_examples_load_and_check_exits_zero(path):
    load_inventory(path)
    done = subprocess.run([sys.executable, "-m", "inventory", "check", str(path)], cwd=REPO, check=False,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "OK" in done.stdout


def test_homelab_is_the_reference_setup():
    inv = load_inventory(EXAMPLES[0])
    p620, razer = inv.hosts["p620"], inv.hosts["razer"]
    assert p620.is_server and p620.is_client and not razer.is_server
    server = p620.server
    assert server.gpus[0].vram_gb == 24 and server.ollama.acceleration.value == "rocm"
    assert server.ollama.persistent_models == ["qwen3.6:27b"]
    assert server.ollama.on_demand_models == ["gemma4:26b"]
    assert server.ollama.max_loaded_models == 1 and server.ollama.keep_alive == "5m"
    assert resolve_alias(server, "claude-sonnet-4-6") == "qwen3.6:27b"
    assert resolve_alias(server, "claude-opus-4-6") == "gemma4:26b"
    assert resolve_alias(server, "claude-haiku-4-5-20251001") == "qwen3.6:27b"
    assert resolve_alias(server, "qwen3.6") == "qwen3.6:27b"
    assert router_route(inv, p620).url == "http://127.0.0.1:4000"
    assert router_route(inv, razer).url == "https://p620.tail1234.ts.net/router"
    assert router_interfaces(p620) == ["lo", "tailscale0", "enp1s0"]
    assert router_route(inv, razer).caddy_ca_of is None


def test_caddy_route_names_the_ca_to_trust():
    inv = load_inventory(EXAMPLES[0])
    exposure = inv.hosts["p620"].server.exposure
    caddy_front = exposure.model_copy(update={
        "tailscale_serve": exposure.tailscale_serve.model_copy(update={"enabled": False}),
        "caddy": exposure.caddy.model_copy(update={"enabled": True, "site_names": ["llm.home.arpa"],
                                                   "https_port": 8443}),
    })
    server = inv.hosts["p620"].server.model_copy(update={"exposure": caddy_front})
    hosts = {**inv.hosts, "p620": inv.hosts["p620"].model_copy(update={"server": server})}
    inv = inv.model_copy(update={"hosts": hosts})
    route = router_route(inv, inv.hosts["razer"])
    assert (route.url, route.caddy_ca_of) == ("https://llm.home.arpa:8443/router", "p620")
    # The server itself goes over loopback: no CA involved.
    assert router_route(inv, inv.hosts["p620"]).caddy_ca_of is None


def test_schema_file_is_current():
    """The example's yaml-language-server header points at schema.json: keep it generated."""
    done = subprocess.run([sys.executable, "-m", "inventory", "schema"], cwd=REPO, capture_output=True, text=True, check=False)
    assert done.returncode == 0
    assert json.loads(done.stdout) == json.loads((REPO / "inventory" / "schema.json").read_text()), (
        "run: python -m inventory schema > inventory/schema.json")
    assert "yaml-language-server: $schema=./schema.json" in EXAMPLES[0].read_text()


def test_diagram_shows_who_reaches_what():
    done = subprocess.run([sys.executable, "-m", "inventory", "diagram", str(EXAMPLES[0])], cwd=REPO, check=False,
                          capture_output=True, text=True)
    assert done.returncode == 0
    assert "127.0.0.1:11434" in done.stdout
    assert "razer" in done.stdout and "https://p620.tail1234.ts.net/router" in done.stdout
    assert "every other interface: refused" in done.stdout


# --- bad inventories: (id, text, needle where the error must point, skip, words in the message) ----

def replace(old: str, new: str, count: int = 1) -> str:
    assert old in MINIMAL, old
    return MINIMAL.replace(old, new, count)


BAD = [
    ("yaml-syntax", replace("    roles: [client]", "    roles: [client"), "    ssh:\n      hostname: razer", 7,
     "YAML syntax error"),
    ("tab-indent", replace("      hostname: p620.lan", "\thostname: p620.lan"), "\thostname", 0, "tabs"),
    ("unknown-key", replace("        port: 4000", "        prot: 4000"), "prot: 4000", 0, "did you mean 'port'"),
    ("unknown-top-key", "hostz: {}\n" + MINIMAL, "hostz", 0, "unknown key 'hostz'"),
    ("wrong-type-port", replace("        port: 4000", "        port: four"), "four", 0, "valid integer"),
    ("wrong-type-roles", replace("    roles: [client]", "    roles: client"), "client\n    ssh:\n      hostname: razer",
     0, "expected a list"),
    ("unknown-role", replace("    roles: [client]", "    roles: [klient]"), "[klient]", 1, "'gpu_server' or 'client'"),
    ("duplicate-host", MINIMAL + "  razer:  # again\n    roles: [client]\n", "razer:  # again", 0, "only once"),
    ("duplicate-key", replace("        port: 4000", "        port: 4000\n        port: 4001"), "port: 4001", 0,
     "only once"),
    ("ollama-public-bind", replace("bind: 127.0.0.1", "bind: 0.0.0.0"), "ollama:", 0, "not a loopback"),
    ("ollama-lan-bind", replace("bind: 127.0.0.1", "bind: 192.168.1.20"), "ollama:", 0, "not a loopback"),
    ("port-clash", replace("        port: 4000", "        port: 11434"), "port: 11434", 6, "already used"),
    ("ssh-port-clash", replace("        port: 4000", "        port: 22"), "port: 22", 6, "already used"),
    ("alias-unknown-model", replace("          small: tiny:1b", "          small: tiny:2b"), "tiny:2b", 0, "does not serve"),
    ("model-not-in-catalogue", replace("[gemma4:26b, tiny:1b]", "[gemma4:26b, tiny:1b, huge:70b]"), "huge:70b", 0,
     "catalogue"),
    ("model-over-vram", replace("    vram_gb: 18\n", "    vram_gb: 30\n"), "vram_gb: 30", 9,
     "needs 30 GB"),
    ("resident-set-over-vram", replace("max_loaded_models: 1", "max_loaded_models: 2"), "max_loaded_models: 2",
     19, "resident together"),
    ("claude-alias-without-tools", replace("          small: tiny:1b", "          claude-small: tiny:1b"),
     "claude-small: tiny:1b", 14, "'tools' capability"),
    ("claude-alias-small-context",
     replace("  tiny:1b:\n    vram_gb: 1\n", "  tiny:1b:\n    vram_gb: 1\n    context_length: 32768\n"
             "    capabilities: [completion, tools]\n").replace("          small: tiny:1b", "          claude-small: tiny:1b"),
     "claude-small: tiny:1b", 14, "context_length 32768; raise the model's context_length to 65536"),
    ("secret-pasted-inline", replace("        port: 4000", "        master_key: sk-abcdefghijklmnopqrstuvwxyz0123456789"),
     "sk-abc", 0, "secret VALUE"),
    ("secret-pasted-client", replace("      router: p620\n      users:\n        - name: olaf\n  razer",
                                     "      router: p620\n      key: Zm9vYmFyYmF6cXV4cXV1eGZvb2JhcmJhenF1eHF1dXhmb28K\n"
                                     "      users:\n        - name: olaf\n  razer"), "Zm9v", 0, "secret VALUE"),
    ("client-no-router", replace("    client:\n      router: p620\n      users:\n        - name: olaf\n",
                                 "    client:\n      router: p510\n      users:\n        - name: olaf\n"),
     "router: p510", 8, "no reachable router"),
    ("client-no-tailnet", replace("      hostname: razer.lan\n", "      hostname: razer.lan\n    network:\n"
                                  "      tailnet_interface: null\n"), "last:router: p620", 8,
     "no reachable router"),
    ("role-without-section", replace("    roles: [client]", "    roles: [client, gpu_server]"), "razer:", 0,
     "needs a 'server:'"),
    ("sha-not-hex", replace('"%s"' % ("a" * 64), '"xyz"'), '"xyz"', 0, "should match pattern"),
    ("rocm-without-addon", replace('          ollama-linux-amd64-rocm.tar.zst: "%s"\n' % ("a" * 64), ""), "ollama:", 0,
     "ROCm add-on"),
    ("context-too-small", replace("        bind: 127.0.0.1", "        bind: 127.0.0.1\n        context_length: 8192"),
     "8192", 0, "greater than or equal to 65536"),
    ("unquoted-number-as-string", replace("        version: 0.13.5", "        version: 13"), "13\n", 0,
     "put it in quotes"),
    ("default-model-unknown", replace("      router: p620\n      users:\n        - name: olaf\n  razer",
                                      "      router: p620\n      default_model: claude-nope\n      users:\n"
                                      "        - name: olaf\n  razer"), "claude-nope", 0, "not a name"),
    ("host-name-invalid", replace("  razer:", "  Razer_1:"), "Razer_1", 0, "pattern"),
]


@pytest.mark.parametrize("case_id,text,needle,skip,words", BAD, ids=[case[0] for case in BAD])
def test_bad_inventory_gives_one_located_error(tmp_path, case_id, text, needle, skip, words):
    path = write(tmp_path, text)
    with pytest.raises(InventoryError) as caught:
        load_inventory(path)
    diagnostics = caught.value.diagnostics
    assert len(diagnostics) == 1, [str(d) for d in diagnostics]
    diagnostic = diagnostics[0]
    assert words in diagnostic.message, str(diagnostic)
    assert (diagnostic.line, diagnostic.column) == position(text, needle, skip), str(diagnostic)
    # The CLI prints the same on stderr as file:line:column and exits non-zero, without a traceback.
    done = subprocess.run([sys.executable, "-m", "inventory", "check", str(path)], cwd=REPO, check=False,
                          capture_output=True, text=True)
    assert done.returncode != 0
    assert f"{path}:{diagnostic.line}:{diagnostic.column}:" in done.stderr
    assert "Traceback" not in done.stderr


def test_empty_file(tmp_path):
    with pytest.raises(InventoryError, match=r"inv.yaml:1:1: error: the inventory is empty"):
        load_inventory(write(tmp_path, "# nothing here\n"))


def test_not_a_mapping(tmp_path):
    with pytest.raises(InventoryError, match="must be a mapping"):
        load_inventory(write(tmp_path, "- a\n- b\n"))


def test_missing_file(tmp_path):
    with pytest.raises(InventoryError, match="file not found"):
        load_inventory(tmp_path / "nope.yaml")


def test_relative_paths_resolve_against_the_inventory(tmp_path):
    inv = load_inventory(write(tmp_path, MINIMAL))
    assert inv.secrets_path == tmp_path / "secrets"


def test_derived_values(tmp_path):
    inv = load_inventory(write(tmp_path, MINIMAL))
    server = inv.hosts["p620"].server
    env = ollama_environment(server.ollama)
    assert env["OLLAMA_HOST"] == "127.0.0.1:11434"
    assert env["OLLAMA_MAX_LOADED_MODELS"] == "1" and env["OLLAMA_CONTEXT_LENGTH"] == "65536"
    assert [name for name, _ in ollama_archives(server.ollama)] == [
        "ollama-linux-amd64.tar.zst", "ollama-linux-amd64-rocm.tar.zst"]
    assert largest_resident_set(inv, server) == (["gemma4:26b"], 18)
    assert alias_table(server)["tiny:1b"] == "tiny:1b"  # native names served too
    assert resolve_alias(server, "claude-haiku-4-5-20251001") == "qwen3.6:27b"
    assert resolve_alias(server, "claude-opus-4-6") is None


def test_cpu_server_skips_vram_rules(tmp_path):
    text = replace("        acceleration: rocm", "        acceleration: cpu").replace("max_loaded_models: 1",
                                                                                   "max_loaded_models: 3")
    load_inventory(write(tmp_path, text))


# --- hypothesis: any mutation loads or raises InventoryError, never anything else ---------

LINES = MINIMAL.splitlines(keepends=True)
JUNK = st.sampled_from(["", ":", "- ", "\t", "  ", "{", "]", "null", "0.0.0.0", "-1", "99999", "claude-*",
                        "&a", "*a", "!!binary x", "'", '"', "#", "~", "yes", "\x00", "é", "\n", "[]", "{}"])


def alias_ladder(depth: int, width: int) -> list[str]:
    """Top-level keys whose values alias the one before, `width` times each: width**depth values expanded."""
    lines = ['l0: &l0 ["lol"]\n']
    lines += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * width)}]\n" for i in range(1, depth + 1)]
    return lines


@st.composite
def mutated(draw):
    lines = list(LINES)
    for _ in range(draw(st.integers(1, 4))):
        index = draw(st.integers(0, len(lines) - 1))
        action = draw(st.sampled_from(["delete", "duplicate", "insert", "truncate", "swap", "aliases"]))
        if action == "aliases":
            lines[index:index] = alias_ladder(draw(st.integers(1, 9)), draw(st.integers(1, 9)))
        elif action == "delete" and len(lines) > 1:
            del lines[index]
        elif action == "duplicate":
            lines.insert(index, lines[index])
        elif action == "insert":
            line = lines[index]
            cut = draw(st.integers(0, len(line)))
            lines[index] = line[:cut] + draw(JUNK) + line[cut:]
        elif action == "truncate":
            lines[index] = lines[index][: draw(st.integers(0, len(lines[index])))] + "\n"
        else:
            other = draw(st.integers(0, len(lines) - 1))
            lines[index], lines[other] = lines[other], lines[index]
    return "".join(lines)


# The deadline bounds each mutation's load: an alias ladder expanded naively takes minutes and gigabytes.
@settings(max_examples=300, deadline=5000, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=mutated())
def test_mutations_load_or_raise_our_error(tmp_path, text):
    path = tmp_path / "mutated.yaml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    try:
        load_inventory(path)
    except InventoryError as exc:
        for diagnostic in exc.diagnostics:
            assert diagnostic.line >= 1 and diagnostic.column >= 1
            assert diagnostic.message


BILLION_LAUGHS = """\
# nine values, nine times nine, ... nine to the ninth
hosts: {}
""" + "".join(alias_ladder(9, 9))


def test_a_billion_laughs_inventory_is_refused_at_its_line_without_expanding_it(tmp_path):
    path = tmp_path / "laughs.yaml"
    path.write_text(BILLION_LAUGHS)
    # A child process with 1 GiB of address space and 60 s: an expansion would hit either bound.
    limit = "import resource; resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30)); "
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", limit + "from inventory.__main__ import main; "
                           f"raise SystemExit(main(['check', {str(path)!r}]))"],
                          cwd=REPO, capture_output=True, text=True, timeout=60, check=False)
    print(f"billion laughs refused in {time.perf_counter() - started:.2f} s (process start included)")
    assert done.returncode == 1, done.stderr
    # Each list counts itself: l0 expands to 2 values, l(n) to 1 + 9 * l(n-1); so l4 to 13,942 and l5
    # (line 8, its value at column 5) to 125,479, the innermost value above 100,000.
    assert done.stderr.startswith(f"{path}:8:5: error: YAML anchors and aliases here expand to more than 100,000")
    assert "Traceback" not in done.stderr


def test_an_alias_cycle_is_refused_not_followed(tmp_path):
    from ruamel.yaml.comments import CommentedMap

    from inventory.load import _refuse_alias_expansion
    cycle = CommentedMap(name="x")
    cycle["self"] = cycle  # ruamel does not build these today; the guard must not recurse if it ever does
    with pytest.raises(InventoryError, match="refers to the value it is part of"):
        _refuse_alias_expansion(tmp_path / "cycle.yaml", CommentedMap(hosts=cycle))


def test_caddy_refuses_magicdns_names_it_would_not_serve_with_its_own_ca():
    from pydantic import ValidationError

    from inventory.model import Caddy
    with pytest.raises(ValidationError, match="tailscaled"):
        Caddy(enabled=True, site_names=["p620.tail1234.ts.net"])
    assert Caddy(enabled=True, site_names=["llm.home.arpa"]).site_names == ["llm.home.arpa"]


# --- the validated-inventory cache (load_inventory(cache=True), used by inventory/hosts.py) ---------


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setattr(load, "CACHE_DIR", tmp_path / "cache")
    return tmp_path / "cache"


def forbid_parsing(monkeypatch):
    def parse(*_args):
        raise AssertionError("parsed although the cache holds this inventory")
    monkeypatch.setattr(load, "_parse_yaml", parse)


def test_cache_returns_the_validated_inventory_without_parsing_again(tmp_path, cache_dir, monkeypatch):
    path = write(tmp_path, MINIMAL)
    fresh = load_inventory(path, cache=True)
    assert [p.stat().st_mode & 0o777 for p in cache_dir.iterdir()] == [0o600]
    assert cache_dir.stat().st_mode & 0o777 == 0o700
    forbid_parsing(monkeypatch)
    cached = load_inventory(path, cache=True)
    assert cached == fresh and cached is not fresh
    assert cached.resolve_path(Path("keys/id")) == (tmp_path / "keys/id").resolve()


def test_cache_is_refreshed_when_the_file_changes(tmp_path, cache_dir):
    path = write(tmp_path, MINIMAL)
    assert load_inventory(path, cache=True).hosts["p620"].server.router.port == 4000
    path.write_text(MINIMAL.replace("port: 4000", "port: 4100"))
    assert load_inventory(path, cache=True).hosts["p620"].server.router.port == 4100
    assert len(list(cache_dir.iterdir())) == 1  # one entry per inventory file, replaced


def test_cache_is_refreshed_when_our_model_code_or_pydantic_changes(tmp_path, cache_dir, monkeypatch):
    before = load._cache_key(MINIMAL)
    code = tmp_path / "code"
    shutil.copytree(Path(load.__file__).parent, code, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(load, "__file__", str(code / "load.py"))
    assert load._cache_key(MINIMAL) == before  # same code elsewhere: same key
    (code / "model.py").write_text((code / "model.py").read_text() + "\n# changed\n")
    assert load._cache_key(MINIMAL) != before
    monkeypatch.undo()
    monkeypatch.setattr(load, "version", lambda name: "0.0-other")
    assert load._cache_key(MINIMAL) != before


def test_a_damaged_cache_entry_is_validated_again(tmp_path, cache_dir):
    path = write(tmp_path, MINIMAL)
    fresh = load_inventory(path, cache=True)
    (entry,) = cache_dir.iterdir()
    entry.write_bytes(b"not a pickle")
    assert load_inventory(path, cache=True) == fresh


def test_an_invalid_inventory_is_never_cached(tmp_path, cache_dir):
    path = write(tmp_path, MINIMAL.replace("port: 4000", "port: 99999"))
    for _ in range(2):
        with pytest.raises(InventoryError, match="router.port"):
            load_inventory(path, cache=True)
    assert not cache_dir.exists()


def test_cache_keeps_the_newest_entries_only(tmp_path, cache_dir, monkeypatch):
    monkeypatch.setattr(load, "CACHE_ENTRIES", 2)
    paths = []
    for index in range(3):
        paths.append(tmp_path / f"inv{index}.yaml")
        paths[-1].write_text(MINIMAL)
        load_inventory(paths[-1], cache=True)
        for entry in cache_dir.iterdir():  # mtimes apart, oldest first
            os.utime(entry, (entry.stat().st_mtime - 10, entry.stat().st_mtime - 10))
    assert len(list(cache_dir.iterdir())) == 2
    forbid_parsing(monkeypatch)
    load_inventory(paths[2], cache=True)
    load_inventory(paths[1], cache=True)
    with pytest.raises(AssertionError, match="parsed"):
        load_inventory(paths[0], cache=True)  # the oldest was dropped
