"""Per-client router keys: created on first apply, rotated without a failed request, revoked by removal.

Each client host has its own key in the workstation's secrets directory
(`derive.client_key_name(host)`, e.g. `router-key-razer`). The router's server
holds only sha256 hashes of them, in a JSON file its auth hook re-reads when it
changes (see hostfiles/router_auth.py), so key changes need no restart.

Rotation (`--data rotate_keys=razer`, a comma list, or `all`) is a small state
machine over two workstation files per client:

    steady      router-key-razer                          server accepts: current
    rotating    router-key-razer (new) + .previous (old)  server accepts: current and previous
    finished    router-key-razer (new)                    server accepts: current

The rotation starts while the deploy is being built (the old key moves to
`.previous`, a new one is written), the server's first operation accepts both
hashes, clients receive the new key, and `finish_rotation` - the last deploy of
the site - drops the old hash on the server and then removes `.previous`, but
only if no host failed during the apply. An interrupted rotation (a failed
apply, or a `--dry` run, which builds the deploy too) leaves `.previous` in
place; the next apply resumes it with the same new key, so the keys a dry run
shows are the keys the apply deploys. Revocation: remove the client from the
inventory; its hashes are no longer in the file.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from pyinfra import host as current_host
from pyinfra import logger, state
from pyinfra.api import deploy
from pyinfra.operations import python

from deploys import ops
from deploys.secrets import ensure_secret, new_key, read_secret, remove_secret, write_secret
from hostfiles import router_names
from inventory.derive import client_key_name
from inventory.model import Host, Inventory

ROTATE_KEYS_DATA = "rotate_keys"  # pyinfra --data rotate_keys=razer,p620 | all
PREVIOUS_SUFFIX = ".previous"

ROUTER_ETC = router_names.ETC_DIR
KEY_HASHES_FILE = router_names.KEY_HASHES_FILE
# The router's service group may read the hashes (never the keys themselves); root writes them.
ROUTER_GROUP = router_names.SERVICE_USER
KEY_HASHES_MODE = "640"


class RotationError(ValueError):
    """A rotation request names hosts that are not clients of this inventory."""


# --- pure values ------------------------------------------------------------------


def key_hash(key: str) -> str:
    """What the server stores for a key: sha256 hex (keys are 48 random bytes: no salt/KDF needed)."""
    return hashlib.sha256(key.encode()).hexdigest()


def hashes_document(accepted: Mapping[str, Iterable[str]]) -> dict:
    """{"clients": {client: [sha256, ...]}} for the keys each client may present (no plaintext)."""
    return {"clients": {client: sorted({key_hash(k) for k in keys}) for client, keys in sorted(accepted.items())}}


def render_hashes(document: dict) -> str:
    """Stable JSON text, so an unchanged key set is an unchanged file."""
    return json.dumps(document, indent=2, sort_keys=True) + "\n"


def parse_rotate_request(value: object, clients: Iterable[str]) -> frozenset[str]:
    """`--data rotate_keys=...` -> client names. '' / None: none; 'all': every client; else a comma list."""
    known = frozenset(clients)
    if value is None or value is False or value == "":
        return frozenset()
    items = value if isinstance(value, (list, tuple, set, frozenset)) else str(value).split(",")
    names = frozenset(str(item).strip() for item in items if str(item).strip())
    if names == {"all"}:
        return known
    unknown = sorted(names - known)
    if unknown:
        raise RotationError(f"{ROTATE_KEYS_DATA}: {', '.join(unknown)} is not a client host of this inventory "
                            f"(clients: {', '.join(sorted(known)) or 'none'}; or 'all')")
    return names


@dataclass(frozen=True)
class ClientKey:
    """One client's keys: `previous` is set while a rotation is in progress."""

    current: str
    previous: str | None = None

    @property
    def rotating(self) -> bool:
        return self.previous is not None

    def accepted(self) -> tuple[str, ...]:
        """Keys the server accepts during an apply: both while rotating."""
        return (self.current,) if self.previous is None else (self.current, self.previous)

    def rotate(self, generate: Callable[[], str]) -> ClientKey:
        """Start a rotation; one already in progress is resumed (the same new key), never stacked."""
        if self.rotating:
            return self
        return ClientKey(current=generate(), previous=self.current)

    def finished(self) -> ClientKey:
        return ClientKey(current=self.current)


def accepted_hashes(keys: Mapping[str, ClientKey], final: bool) -> dict:
    """The hashes document during the apply (final=False) or after it (final=True)."""
    return hashes_document({
        client: (key.finished() if final else key).accepted() for client, key in keys.items()
    })


def clients_of(inv: Inventory, server: Host) -> list[Host]:
    """Client hosts whose router is `server`, in inventory order."""
    return [h for h in inv.clients if h.client is not None and h.client.router == server.name]


# --- the workstation side -----------------------------------------------------------


def previous_name(host: Host) -> str:
    return client_key_name(host) + PREVIOUS_SUFFIX


def load_client_key(inv: Inventory, host: Host) -> ClientKey:
    """The client's key files; the current key is created on first use."""
    return ClientKey(current=ensure_secret(inv, client_key_name(host)), previous=read_secret(inv, previous_name(host)))


def start_rotation(inv: Inventory, host: Host, generate: Callable[[], str] = new_key) -> ClientKey:
    """Move the current key to `.previous` and write a new current key (crash-safe order)."""
    key = load_client_key(inv, host)
    rotated = key.rotate(generate)
    if rotated is not key:
        # .previous first: if we stop in between, both files hold the old key, which is harmless.
        write_secret(inv, previous_name(host), key.current)
        write_secret(inv, client_key_name(host), rotated.current)
    return rotated


# Keys are read (and rotations started) once per pyinfra run, before any host's deploy uses them:
# pyinfra builds the deploy once per host, in an order we do not control, and each host's data
# holds its own copy of the inventory, so the secrets directory identifies the key ring.
_keyrings: dict[str, dict[str, ClientKey]] = {}


def keyring(inv: Inventory) -> dict[str, ClientKey]:
    """client host name -> its keys, with the rotations this run asked for already started."""
    ring = _keyrings.get(str(inv.secrets_path))
    if ring is None:
        requested = parse_rotate_request(current_host.data.get(ROTATE_KEYS_DATA), (h.name for h in inv.clients))
        for name in sorted(requested):
            client = inv.hosts[name]
            assert client.client is not None
            missing = [h for h in (name, client.client.router) if not _in_this_run(h)]
            if missing:
                # Otherwise a client would get a key its router does not know, or keep one it drops.
                raise RotationError(f"rotating {name}'s key needs {' and '.join(missing)} in this run "
                                    "(drop --limit/--exclude, or include them)")
        ring = {}
        for client in inv.clients:
            ring[client.name] = (start_rotation(inv, client) if client.name in requested
                                 else load_client_key(inv, client))
        for name in sorted(n for n, k in ring.items() if k.rotating):
            # Names only: values never reach the log.
            logger.info(f"--> Router key of {name}: rotating (old and new accepted until the apply ends)")
        _keyrings[str(inv.secrets_path)] = ring
    return ring


def _in_this_run(name: str) -> bool:
    pyinfra_host = state.inventory.get_host(name, None)
    return pyinfra_host is not None and state.is_host_in_limit(pyinfra_host)


def client_key(inv: Inventory, host: Host) -> str:
    """The key a client deploy installs for `host` (the new one during a rotation)."""
    return keyring(inv)[host.name].current


def server_keys(inv: Inventory, server: Host, final: bool = False) -> str:
    """The hashes file for `server`: its clients' accepted keys."""
    ring = keyring(inv)
    return render_hashes(accepted_hashes({h.name: ring[h.name] for h in clients_of(inv, server)}, final))


def managed_paths() -> list[str]:
    return [ROUTER_ETC, KEY_HASHES_FILE]


# --- operations ---------------------------------------------------------------------


def hashes_file(inv: Inventory, server: Host, final: bool = False, **op_args):
    """The hashes file operation (content never diffed: hashes only, but still nobody's business)."""
    return ops.file(KEY_HASHES_FILE, server_keys(inv, server, final), mode=KEY_HASHES_MODE, user="root",
                    group=ROUTER_GROUP, secret=True, **op_args)


def _no_host_failed() -> bool:
    return not state.failed_hosts


def _forget_previous_keys(inv: Inventory, names: list[str]) -> None:
    for name in names:
        client = inv.hosts[name]
        if remove_secret(inv, previous_name(client)):
            logger.info(f"--> Router key of {name}: rotation finished, old key removed")


@deploy("Finish router key rotation")
def finish_rotation(inv: Inventory, host: Host) -> None:
    """Last deploy of the site: on each server, drop the old hashes, then forget the old keys.

    Both steps are skipped if any host failed during the apply, so a client
    that did not get its new key keeps working with the old one; the next
    apply resumes the rotation.
    """
    if host.server is None:
        return
    ring = keyring(inv)
    rotating = [h.name for h in clients_of(inv, host) if ring[h.name].rotating]
    if not rotating:
        return
    ops.declare(paths=managed_paths())
    hashes_file(inv, host, final=True, name=f"Router keys: stop accepting old keys of {', '.join(rotating)}",
                _if=_no_host_failed)
    python.call(function=_forget_previous_keys, inv=inv, names=rotating,
                name=f"Router keys: remove old keys of {', '.join(rotating)} on the workstation",
                _if=_no_host_failed)
