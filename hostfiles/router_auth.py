"""LiteLLM `custom_auth` hook of the LLM router: the master key plus per-client keys, no database.

Deployed next to the router's config.yaml (LiteLLM loads `llm_router_auth.user_api_key_auth`
from the config's directory). Without a database LiteLLM itself can only check the master
key and answers any other key with 400 "No connected db."; this hook replaces that check:

- the master key comes from the environment (LITELLM_MASTER_KEY, set by the launcher from
  a systemd credential) and gets the proxy-admin role;
- client keys are checked against a JSON file of sha256 hashes (no plaintext client key on
  the server): {"clients": {"razer": ["<sha256 hex>", ...], ...}}, at $LLM_ROUTER_KEY_HASHES_FILE
  (default /etc/llm-router/client-keys.json, root:llm-router 0640). Several hashes per client
  allow rotation (old and new accepted during an apply). The file is re-read when it
  changes (inode, size or mtime), so rotation and revocation need no restart; a missing or
  broken file refuses every client key (fail closed) and keeps the master key working;
- a client key may use only the model APIs, not LiteLLM's admin routes;
- every refusal raises ProxyException(code=401), which LiteLLM sends as a 401.

Each accepted request logs one line with the client's alias (`llm_router_auth: client=razer
...`) and carries it as key_alias/user_id, so LiteLLM's own logging and spend figures see it.
Stdlib only besides LiteLLM, which is imported at the first request (so the pure parts import
without it); this file is copied to the host as is, as /etc/llm-router/llm_router_auth.py. The
names it shares with the deploy come from llm_router_names (hostfiles/router_names.py), which the
router process finds in libexec, the directory of its main script (hostfiles/router_speedups.py).
Importing this module changes nothing in LiteLLM: the speed-ups are the launcher's business.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING

if __package__:  # imported from this repository (hostfiles.router_auth)
    from hostfiles import router_names as names
else:  # loaded by LiteLLM on the server, by path
    import llm_router_names as names  # type: ignore[import-not-found, no-redef]

if TYPE_CHECKING:
    from fastapi import Request
    from litellm.proxy._types import ProxyException, UserAPIKeyAuth

# The hashes are read directly (0640 root:llm-router), not as a systemd credential:
# credentials are copied once at start, so a rotation would need a restart.
MASTER_ALIAS = "master"

# Routes a client key may call: the model APIs Claude Code and OpenAI-compatible tools use.
# Not LiteLLM's admin routes, nor its provider pass-through routes (/anthropic/..., /openai/...).
CLIENT_ROUTE_PREFIXES: tuple[str, ...] = (
    "/v1/messages",  # and /v1/messages/count_tokens
    "/messages",
    "/v1/responses",
    "/responses",
    "/v1/chat/completions",
    "/chat/completions",
    "/v1/completions",
    "/completions",
    "/v1/embeddings",
    "/embeddings",
    "/v1/models",
    "/models",
    "/v1/model/info",
    "/model/info",
)

_log = logging.getLogger("llm_router_auth")
if not _log.handlers:
    # Own handler on stderr (the journal): one line per request whatever LiteLLM's log level is.
    _handler = logging.StreamHandler(sys.stderr)
    _handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
    _log.addHandler(_handler)
    _log.setLevel(logging.INFO)
    _log.propagate = False


def key_hash(key: str) -> str:
    """The sha256 hex digest stored for a key (keys are 48+ random bytes, so no salt/KDF needed)."""
    return hashlib.sha256(key.encode()).hexdigest()


def parse_key_hashes(text: str) -> dict[str, tuple[str, ...]]:
    """{"clients": {name: [sha256 hex, ...]}} -> {name: (hash, ...)}; raises ValueError if malformed."""
    document = json.loads(text)
    clients = document.get("clients") if isinstance(document, dict) else None
    if not isinstance(clients, dict):
        raise ValueError('expected {"clients": {"<name>": ["<sha256 hex>", ...]}}')  # noqa: TRY004 (bad file)
    table: dict[str, tuple[str, ...]] = {}
    for name, hashes in clients.items():
        if not isinstance(name, str) or not isinstance(hashes, list):
            raise ValueError(f"client {name!r}: expected a list of sha256 hex digests")  # noqa: TRY004
        for digest in hashes:
            if not (isinstance(digest, str) and len(digest) == 64 and all(c in "0123456789abcdef" for c in digest)):
                raise ValueError(f"client {name!r}: {digest!r} is not a lower-case sha256 hex digest")
        table[name] = tuple(hashes)
    return table


def match_client(table: dict[str, tuple[str, ...]], presented_hash: str) -> str | None:
    """The client whose hashes include presented_hash. Compares against every hash (constant time)."""
    found: str | None = None
    for name, hashes in table.items():
        for digest in hashes:
            if hmac.compare_digest(digest, presented_hash):
                found = name
    return found


def key_hashes_path() -> Path:
    return Path(os.environ.get(names.KEY_HASHES_FILE_ENV) or names.KEY_HASHES_FILE)


class KeyHashesFile:
    """The hashes file, re-parsed only when its identity (inode, size, mtime) changes."""

    # A plain class, not a dataclass: LiteLLM loads this file without registering it in
    # sys.modules, which dataclasses need.
    def __init__(self, path: Path) -> None:
        self.path = path
        self._stamp: tuple[int, int, int] | None = None
        self._table: dict[str, tuple[str, ...]] = {}
        self._lock = threading.Lock()

    def table(self) -> dict[str, tuple[str, ...]]:
        try:
            st = self.path.stat()
        except OSError:
            # Missing file: no client key is valid (fail closed), the master key still is.
            if self._stamp is not None:
                _log.warning("key hashes file %s is gone: client keys refused", self.path)
            self._stamp, self._table = None, {}
            return {}
        stamp = (st.st_ino, st.st_size, st.st_mtime_ns)
        if stamp != self._stamp:
            with self._lock:
                if stamp != self._stamp:
                    try:
                        self._table = parse_key_hashes(self.path.read_text())
                    except (OSError, ValueError) as err:
                        # Fail closed on a broken file rather than keep stale (maybe revoked) keys.
                        _log.error("key hashes file %s unreadable (%s): client keys refused", self.path, err)
                        self._table = {}
                    self._stamp = stamp
        return self._table


_key_hashes = KeyHashesFile(key_hashes_path())


def _unauthorized(message: str) -> ProxyException:
    from litellm.proxy._types import ProxyErrorTypes, ProxyException

    return ProxyException(message=message, type=ProxyErrorTypes.auth_error, param="api_key", code=401)


def _route(request: Request) -> str:
    path = request.url.path
    root = request.scope.get("root_path") or ""
    return path[len(root):] if root and path.startswith(root) else path


def client_may_call(route: str) -> bool:
    return any(route == p or route.startswith(p + "/") for p in CLIENT_ROUTE_PREFIXES)


async def user_api_key_auth(request: Request, api_key: str) -> UserAPIKeyAuth:
    """LiteLLM custom_auth entry point: `api_key` is the presented key, 'Bearer ' already stripped."""
    from litellm.proxy._types import LitellmUserRoles, UserAPIKeyAuth  # loaded already: a dict lookup

    route = _route(request)
    if not api_key:
        raise _unauthorized("Authentication Error: no API key given")
    master_key = os.environ.get(names.MASTER_KEY_ENV, "")
    if master_key and hmac.compare_digest(api_key.encode(), master_key.encode()):
        return UserAPIKeyAuth(
            api_key=api_key,
            user_role=LitellmUserRoles.PROXY_ADMIN,
            key_alias=MASTER_ALIAS,
            key_name=MASTER_ALIAS,
            user_id=MASTER_ALIAS,
        )
    presented = key_hash(api_key)
    client = match_client(_key_hashes.table(), presented)
    if client is None:
        _log.info("refused: unknown or revoked key route=%s", route)
        raise _unauthorized("Authentication Error: invalid or revoked API key")
    if not client_may_call(route):
        _log.info("refused: client=%s may not call route=%s", client, route)
        raise _unauthorized(f"Authentication Error: a client key may not call {route}")
    # Short hash prefix: tells old from new key during a rotation, reveals nothing usable.
    _log.info("client=%s key=%s route=%s", client, presented[:8], route)
    return UserAPIKeyAuth(
        api_key=presented,
        token=presented,
        user_role=LitellmUserRoles.INTERNAL_USER,
        key_alias=client,
        key_name=client,
        user_id=client,
        metadata={"client": client},
    )
