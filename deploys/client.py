"""Client: `claude-router`, its apiKeyHelper, slash commands and the user's router key.

The program, its contract and the paths it shares with this deploy live in
hostfiles/claude_router.py; this deploy installs it, writes the non-secret
/etc/claude-router/config.json and, per user, the key (0600), the slash commands
(hostfiles/claude_commands/) and the apiKeyHelper registration.
"""

from __future__ import annotations

import hashlib
import json
import shlex
from pathlib import Path

from pyinfra import host, logger, state
from pyinfra.api import FileUploadCommand, deploy, operation

import hostfiles
from deploys import keys, ops
from deploys.exposure import CADDY_ROOT_CA, caddy_root_ca_copy
from deploys.router_config import catalogue_entry
from deploys.secrets import read_secret
from facts.files import JsonKeyEquals
from facts.host_state import FactRequest
from hostfiles import claude_router
from inventory.derive import exact_aliases, resolve_alias, router_route
from inventory.model import ClientUser, Host, Inventory

PROGRAM = claude_router.PROGRAM_FILE
KEY_HELPER = claude_router.DEFAULT_HELPER_COMMAND
CONFIG_FILE = claude_router.DEFAULT_CONFIG_PATH
CONFIG_DIR = str(Path(CONFIG_FILE).parent)
KEY_FILE = claude_router.DEFAULT_KEY_FILE
ANTHROPIC_KEY_FILE = "~/.config/claude-router/anthropic-key"
COMMANDS = ("use-ollama.md", "use-claude.md", "use-default.md")
# Debian's update-ca-certificates picks up *.crt here; the name says which server's Caddy it is.
CA_DIR = "/usr/local/share/ca-certificates"


def caddy_ca_path(server_name: str) -> str:
    return f"{CA_DIR}/llm-router-{server_name}-caddy.crt"


def client_config(inv: Inventory, host_model: Host) -> dict:
    """The world-readable config claude-router reads: URLs and aliases, never a secret."""
    assert host_model.client is not None
    server = inv.hosts[host_model.client.router].server
    assert server is not None
    names = exact_aliases(server)
    default = host_model.client.default_model

    def slot(family: str) -> str:
        # The inventory's own alias for a Claude Code slot (claude-opus-4-6), else the default model.
        return next((n for n in names if family in n), default)

    route = router_route(inv, host_model)
    config = {
        "router_url": route.url,
        "default_model": default,
        "models": names,
        "small_fast_model": slot("haiku"),
        "opus_model": slot("opus"),
        "sonnet_model": slot("sonnet"),
        "context_tokens": {
            name: catalogue_entry(inv, server, resolve_alias(server, name) or name).context_length for name in names
        },
        "key_file": KEY_FILE,
        "anthropic_key_file": ANTHROPIC_KEY_FILE,
        "extra_router_urls": [],
        "disable_nonessential_traffic": True,
        "helper_command": KEY_HELPER,
    }
    if route.caddy_ca_of:
        # Claude Code (Bun) does not read the system store: use-ollama points NODE_EXTRA_CA_CERTS here.
        config["ca_file"] = caddy_ca_path(route.caddy_ca_of)
    return config


def user_paths(user: ClientUser) -> dict[str, str]:
    home = user.home_dir
    key = home / KEY_FILE.removeprefix("~/")  # what claude-router reads as "~/..." for this user
    return {
        "claude_dir": str(home / ".claude"),
        "commands_dir": str(home / ".claude" / "commands"),
        "config_dir": str(home / ".config"),
        "key_dir": str(key.parent),
        "key": str(key),
        "anthropic_key": str(home / ANTHROPIC_KEY_FILE.removeprefix("~/")),
        "settings": str(home / ".claude" / "settings.json"),
    }


def helper_registered(user: ClientUser) -> FactRequest:
    """Whether the user's settings.json already names our apiKeyHelper."""
    return FactRequest.of(JsonKeyEquals, path=user_paths(user)["settings"], key="apiKeyHelper", value=KEY_HELPER)


def declare(inv: Inventory, host_model: Host) -> None:
    assert host_model.client is not None
    paths = [PROGRAM, KEY_HELPER, CONFIG_DIR, CONFIG_FILE, caddy_ca_path(host_model.client.router)]
    for user in host_model.client.users:
        p = user_paths(user)
        paths += [p["claude_dir"], p["commands_dir"], p["config_dir"], p["key_dir"], p["key"], p["anthropic_key"]]
        paths += [f"{p['commands_dir']}/{name}" for name in COMMANDS]
    ops.declare(paths=paths, users=[u.name for u in host_model.client.users],
                facts=tuple(helper_registered(u) for u in host_model.client.users if u.anthropic_key))


@operation()
def api_key_helper_registered(user: ClientUser):
    if ops.snapshot().value(helper_registered(user)):
        host.noop(f"{user.name}'s Claude Code uses {KEY_HELPER}")
        return
    # Merged by the program itself, as the user: other settings are kept, a broken file is refused.
    settings = shlex.quote(user_paths(user)["settings"])
    yield f"runuser -u {shlex.quote(user.name)} -- {PROGRAM} register-helper --settings {settings} --command {KEY_HELPER}"


def _sha256(path: Path) -> str | None:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else None


@operation()
def caddy_ca_trusted(server_name: str, local_copy: Path):
    """The server's Caddy root CA in the system store (update-ca-certificates).

    The certificate comes from the workstation copy that the server's deploy exports earlier in the
    same apply (Caddy creates its CA at first start), so the upload reads that file only when it runs.
    """
    target = caddy_ca_path(server_name)
    current = ops.snapshot().path(target)
    local_sha = _sha256(local_copy)
    server_state = ops.cached_snapshot(server_name)
    server_sha = server_state.path(CADDY_ROOT_CA).sha256 if server_state is not None else None
    expected = server_sha or local_sha
    if expected is not None and current.sha256 == expected == local_sha:
        host.noop(f"{target} is {server_name}'s Caddy root CA")
        return
    if state.config.DIFF:
        host.log(f"Will trust {server_name}'s Caddy root CA as {target}"
                 + ("" if local_sha == expected else " (exported from the server during this apply)"), logger.info)
    temp = shlex.quote(f"{target}.llm-router-new")
    yield f"install -d -m 755 {CA_DIR} && rm -f {temp}"
    yield FileUploadCommand(str(local_copy), f"{target}.llm-router-new")
    yield (f"openssl x509 -noout -in {temp} && chmod 644 {temp} && mv -f {temp} {shlex.quote(target)} && "
           "update-ca-certificates >/dev/null")


@operation()
def caddy_ca_untrusted(server_name: str):
    target = caddy_ca_path(server_name)
    if ops.snapshot().path(target).kind == "absent":
        host.noop(f"no Caddy root CA of {server_name} trusted")
        return
    yield f"rm -f {shlex.quote(target)} && update-ca-certificates --fresh >/dev/null"


@deploy("Claude Code client")
def client(inv: Inventory, host_model: Host) -> None:
    assert host_model.client is not None
    declare(inv, host_model)
    ops.file(PROGRAM, hostfiles.content("claude_router.py"), mode="755", name="claude-router")
    ops.link(KEY_HELPER, PROGRAM, name="claude-router-key (apiKeyHelper)")
    ops.directory(CONFIG_DIR, mode="755", name=CONFIG_DIR)
    ops.file(CONFIG_FILE, json.dumps(client_config(inv, host_model), indent=2) + "\n", mode="644",
             name=f"{CONFIG_FILE} (router URL and aliases)")
    route = router_route(inv, host_model)
    if route.caddy_ca_of:
        caddy_ca_trusted(route.caddy_ca_of, caddy_root_ca_copy(inv, route.caddy_ca_of),
                         name=f"Trust {route.caddy_ca_of}'s Caddy root CA")
    else:
        caddy_ca_untrusted(host_model.client.router, name=f"No Caddy root CA of {host_model.client.router}")
    key = keys.client_key(inv, host_model)
    for user in host_model.client.users:
        p = user_paths(user)
        group = user.name  # Debian's useradd gives each user a group of the same name
        # The user's own ~/.claude and ~/.config are only created if missing, never re-moded.
        for directory, mode in ((p["claude_dir"], None), (p["commands_dir"], None), (p["config_dir"], None),
                                (p["key_dir"], "700")):
            ops.directory(directory, mode=mode, user=user.name, group=group, name=f"{user.name}: {directory}")
        for name in COMMANDS:
            ops.file(f"{p['commands_dir']}/{name}", hostfiles.content(f"claude_commands/{name}"),
                     user=user.name, group=group, name=f"{user.name}: /{Path(name).stem}")
        ops.file(p["key"], key + "\n", mode="600", user=user.name, group=group, secret=True,
                 name=f"{user.name}: router key")
        if user.anthropic_key:
            anthropic = read_secret(inv, user.anthropic_key)
            if anthropic is None:
                raise ValueError(f"{host_model.name}: secret {user.anthropic_key!r} for {user.name} is missing "
                                 f"from {inv.secrets_path}")
            ops.file(p["anthropic_key"], anthropic + "\n", mode="600", user=user.name, group=group, secret=True,
                     name=f"{user.name}: Anthropic key")
            # Global only with a cloud key to hand out: Claude Code 2.1.x treats an empty helper answer
            # as a failure, not as "use your own login". Router repos get the helper per repository.
            api_key_helper_registered(user, name=f"{user.name}: apiKeyHelper in ~/.claude/settings.json")
