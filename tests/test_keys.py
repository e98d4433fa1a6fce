"""Client keys and workstation secrets: hashes document, rotation state machine, secret files."""

from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path

import pytest

from deploys import keys, secrets
from deploys.keys import ClientKey, RotationError
from deploys.secrets import SecretError
from hostfiles import router_auth
from inventory.load import load_inventory

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def inv(tmp_path: Path):
    """The lab inventory, with its secrets directory redirected into tmp_path."""
    source = (REPO / "inventory" / "lab.yaml").read_text()
    source = source.replace("secrets_dir: ../.cache/lab/secrets", "secrets_dir: secrets")
    path = tmp_path / "inventory.yaml"
    path.write_text(source)
    # Relative paths (ssh keys, wheelhouse) are only resolved, never opened, by these tests.
    return load_inventory(path)


# --- hashes document ----------------------------------------------------------------


def test_hashes_document_holds_sha256_of_each_key_and_no_plaintext():
    doc = keys.hashes_document({"razer": ["sk-new", "sk-old"], "p620": ["sk-p620"]})
    text = keys.render_hashes(doc)
    assert doc == {"clients": {
        "p620": [hashlib.sha256(b"sk-p620").hexdigest()],
        "razer": sorted([hashlib.sha256(b"sk-new").hexdigest(), hashlib.sha256(b"sk-old").hexdigest()]),
    }}
    for plain in ("sk-new", "sk-old", "sk-p620"):
        assert plain not in text


def test_hashes_text_is_stable_whatever_the_order():
    one = keys.render_hashes(keys.hashes_document({"a": ["k1", "k2"], "b": ["k3"]}))
    two = keys.render_hashes(keys.hashes_document({"b": ["k3"], "a": ["k2", "k1"]}))
    assert one == two


def test_auth_hook_accepts_our_document_and_matches_our_hashes():
    hook = router_auth
    ring = {"razer": ClientKey("sk-new", "sk-old"), "p620": ClientKey("sk-p")}
    table = hook.parse_key_hashes(keys.render_hashes(keys.accepted_hashes(ring, final=False)))
    assert hook.match_client(table, hook.key_hash("sk-old")) == "razer"
    assert hook.match_client(table, hook.key_hash("sk-new")) == "razer"
    final = hook.parse_key_hashes(keys.render_hashes(keys.accepted_hashes(ring, final=True)))
    assert hook.match_client(final, hook.key_hash("sk-old")) is None
    assert hook.match_client(final, hook.key_hash("sk-new")) == "razer"
    assert hook.match_client(final, hook.key_hash("sk-p")) == "p620"


def test_the_hook_reads_the_hashes_where_the_deploy_writes_them(monkeypatch):
    monkeypatch.delenv("LLM_ROUTER_KEY_HASHES_FILE", raising=False)
    assert str(router_auth.key_hashes_path()) == keys.KEY_HASHES_FILE == "/etc/llm-router/client-keys.json"
    monkeypatch.setenv("LLM_ROUTER_KEY_HASHES_FILE", "/elsewhere/keys.json")
    assert str(router_auth.key_hashes_path()) == "/elsewhere/keys.json"


# --- rotation state machine -----------------------------------------------------------


def test_rotation_accepts_old_and_new_during_the_apply_and_only_new_after():
    steady = ClientKey("sk-old")
    rotating = steady.rotate(lambda: "sk-new")
    assert rotating == ClientKey("sk-new", "sk-old")
    assert set(rotating.accepted()) == {"sk-new", "sk-old"}
    assert rotating.finished().accepted() == ("sk-new",)


def test_rotation_in_progress_is_resumed_not_stacked():
    rotating = ClientKey("sk-new", "sk-old")
    again = rotating.rotate(lambda: "sk-third")
    # Stacking would drop sk-old while a client may still hold it.
    assert again == rotating


def test_accepted_hashes_final_drops_previous_keys_only():
    ring = {"razer": ClientKey("n", "o"), "p620": ClientKey("p")}
    during = keys.accepted_hashes(ring, final=False)["clients"]
    after = keys.accepted_hashes(ring, final=True)["clients"]
    assert len(during["razer"]) == 2 and len(after["razer"]) == 1
    assert during["p620"] == after["p620"]


@pytest.mark.parametrize(("value", "expected"), [
    (None, set()), ("", set()), ("razer", {"razer"}), ("razer, p620", {"razer", "p620"}),
    ("all", {"razer", "p620"}), (["razer"], {"razer"}),
])
def test_parse_rotate_request(value, expected):
    assert keys.parse_rotate_request(value, ["p620", "razer"]) == expected


def test_parse_rotate_request_refuses_unknown_clients():
    with pytest.raises(RotationError, match="blade"):
        keys.parse_rotate_request("razer,blade", ["p620", "razer"])


def test_start_rotation_on_the_workstation_keeps_the_old_key_as_previous(inv):
    razer = inv.hosts["razer"]
    first = keys.load_client_key(inv, razer)
    rotated = keys.start_rotation(inv, razer, generate=lambda: "sk-" + "n" * 64)
    assert rotated.previous == first.current and rotated.current == "sk-" + "n" * 64
    assert secrets.read_secret(inv, "router-key-razer") == rotated.current
    assert secrets.read_secret(inv, "router-key-razer.previous") == first.current
    # A second start (e.g. after a dry run) resumes the same rotation.
    assert keys.start_rotation(inv, razer, generate=lambda: "sk-" + "x" * 64) == rotated
    assert stat.S_IMODE(os.stat(inv.secrets_path / "router-key-razer.previous").st_mode) == 0o600


def test_server_hashes_cover_the_servers_clients(inv):
    p620, razer = inv.hosts["p620"], inv.hosts["razer"]
    assert [h.name for h in keys.clients_of(inv, p620)] == ["p620", "razer"]
    ring = {"p620": keys.load_client_key(inv, p620), "razer": keys.load_client_key(inv, razer)}
    doc = json.loads(keys.render_hashes(keys.accepted_hashes(ring, final=False)))
    assert doc["clients"]["razer"] == [keys.key_hash(ring["razer"].current)]
    assert doc["clients"]["p620"] == [keys.key_hash(ring["p620"].current)]


# --- workstation secret files -------------------------------------------------------------


def test_ensure_secret_creates_0600_in_0700_and_returns_the_same_value_again(inv):
    value = secrets.ensure_secret(inv, "litellm-master-key")
    assert value.startswith("sk-") and len(value) >= 3 + 64
    path = inv.secrets_path / "litellm-master-key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(inv.secrets_path.stat().st_mode) == 0o700
    assert secrets.ensure_secret(inv, "litellm-master-key") == value


def test_new_keys_differ_and_carry_48_random_bytes():
    a, b = secrets.new_key(), secrets.new_key()
    assert a != b
    import base64
    assert len(base64.urlsafe_b64decode(a[3:] + "==")) == 48


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644, 0o660])
def test_a_secret_others_can_read_is_refused(inv, mode):
    secrets.ensure_secret(inv, "router-key-razer")
    path = inv.secrets_path / "router-key-razer"
    path.chmod(mode)
    with pytest.raises(SecretError, match="chmod 600"):
        secrets.ensure_secret(inv, "router-key-razer")


def test_a_loose_secrets_directory_is_refused(inv):
    secrets.ensure_secret(inv, "router-key-razer")
    inv.secrets_path.chmod(0o755)
    with pytest.raises(SecretError, match="chmod 700"):
        secrets.ensure_secret(inv, "router-key-razer")


def test_a_symlinked_secret_is_refused(inv, tmp_path):
    secrets.secrets_dir(inv)
    target = tmp_path / "elsewhere"
    target.write_text("sk-x\n")
    target.chmod(0o600)
    (inv.secrets_path / "router-key-razer").symlink_to(target)
    with pytest.raises(SecretError, match="regular file"):
        secrets.ensure_secret(inv, "router-key-razer")


def test_missing_secret_without_generator_names_the_file_not_a_value(inv):
    with pytest.raises(SecretError, match="anthropic-key"):
        secrets.ensure_secret(inv, "anthropic-key", None)


def test_errors_never_contain_the_value(inv):
    value = secrets.ensure_secret(inv, "router-key-razer")
    (inv.secrets_path / "router-key-razer").chmod(0o644)
    with pytest.raises(SecretError) as error:
        secrets.ensure_secret(inv, "router-key-razer")
    assert value not in str(error.value)


def test_remove_secret(inv):
    secrets.ensure_secret(inv, "router-key-razer.previous")
    assert secrets.remove_secret(inv, "router-key-razer.previous") is True
    assert secrets.remove_secret(inv, "router-key-razer.previous") is False
