"""Client: `claude-router`, its apiKeyHelper, slash commands and the user's router key.

The program and its contract live in templates/client/claude_router.py; this
deploy installs it, writes the non-secret /etc/claude-router/config.json and,
per user, the key (0600), the slash commands and the apiKeyHelper registration.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path

from pyinfra import host
from pyinfra.api import deploy, operation

from deploys import keys, ops
from deploys.render import TEMPLATES
from deploys.secrets import read_secret
from inventory.derive import exact_aliases, router_route
from inventory.model import ClientUser, Host, Inventory

PROGRAM = "/usr/local/bin/claude-router"
KEY_HELPER = "/usr/local/bin/claude-router-key"
CONFIG_DIR = "/etc/claude-router"
CONFIG_FILE = f"{CONFIG_DIR}/config.json"
KEY_FILE = "~/.config/claude-router/key"
ANTHROPIC_KEY_FILE = "~/.config/claude-router/anthropic-key"
COMMANDS = ("use-ollama.md", "use-claude.md", "use-default.md")
CLIENT_TEMPLATES = TEMPLATES / "client"


def client_config(inv: Inventory, host_model: Host) -> dict:
    """The world-readable config claude-router reads: URLs and aliases, never a secret."""
    assert host_model.client is not None
    server = inv.hosts[host_model.client.router].server
    assert server is not None
    names = exact_aliases(server)
    small = next((n for n in names if "haiku" in n), host_model.client.default_model)
    return {
        "router_url": router_route(inv, host_model).url,
        "default_model": host_model.client.default_model,
        "models": names,
        "small_fast_model": small,
        "key_file": KEY_FILE,
        "anthropic_key_file": ANTHROPIC_KEY_FILE,
        "extra_router_urls": [],
        "disable_nonessential_traffic": True,
        "helper_command": KEY_HELPER,
    }


def user_paths(user: ClientUser) -> dict[str, str]:
    home = user.home_dir
    return {
        "claude_dir": str(home / ".claude"),
        "commands_dir": str(home / ".claude" / "commands"),
        "config_dir": str(home / ".config"),
        "key_dir": str(home / ".config" / "claude-router"),
        "key": str(home / ".config" / "claude-router" / "key"),
        "anthropic_key": str(home / ".config" / "claude-router" / "anthropic-key"),
        "settings": str(home / ".claude" / "settings.json"),
    }


def helper_probe(user: ClientUser) -> str:
    """Exit 0 when the user's settings.json already names our apiKeyHelper."""
    check = "import json,sys; sys.exit(0 if json.load(open(sys.argv[1])).get('apiKeyHelper') == sys.argv[2] else 1)"
    return f"python3 -c {shlex.quote(check)} {shlex.quote(user_paths(user)['settings'])} {KEY_HELPER}"


def declare(inv: Inventory, host_model: Host) -> None:
    assert host_model.client is not None
    paths = [PROGRAM, KEY_HELPER, CONFIG_DIR, CONFIG_FILE]
    for user in host_model.client.users:
        p = user_paths(user)
        paths += [p["claude_dir"], p["commands_dir"], p["config_dir"], p["key_dir"], p["key"], p["anthropic_key"]]
        paths += [f"{p['commands_dir']}/{name}" for name in COMMANDS]
    ops.declare(paths=paths, users=[u.name for u in host_model.client.users],
                probes={f"helper:{u.name}": helper_probe(u) for u in host_model.client.users if u.anthropic_key})


@operation()
def api_key_helper_registered(user: ClientUser):
    probe = ops.snapshot().probes.get(f"helper:{user.name}")
    if probe is not None and probe.status == 0:
        host.noop(f"{user.name}'s Claude Code uses {KEY_HELPER}")
        return
    # Merged by the program itself, as the user: other settings are kept, a broken file is refused.
    settings = shlex.quote(user_paths(user)["settings"])
    yield f"runuser -u {shlex.quote(user.name)} -- {PROGRAM} register-helper --settings {settings} --command {KEY_HELPER}"


@deploy("Claude Code client")
def client(inv: Inventory, host_model: Host) -> None:
    assert host_model.client is not None
    declare(inv, host_model)
    ops.file(PROGRAM, (CLIENT_TEMPLATES / "claude_router.py").read_text(), mode="755", name="claude-router")
    ops.link(KEY_HELPER, PROGRAM, name="claude-router-key (apiKeyHelper)")
    ops.directory(CONFIG_DIR, mode="755", name=CONFIG_DIR)
    ops.file(CONFIG_FILE, json.dumps(client_config(inv, host_model), indent=2) + "\n", mode="644",
             name=f"{CONFIG_FILE} (router URL and aliases)")
    key = keys.client_key(inv, host_model)
    for user in host_model.client.users:
        p = user_paths(user)
        group = user.name  # Debian's useradd gives each user a group of the same name
        # The user's own ~/.claude and ~/.config are only created if missing, never re-moded.
        for directory, mode in ((p["claude_dir"], None), (p["commands_dir"], None), (p["config_dir"], None),
                                (p["key_dir"], "700")):
            ops.directory(directory, mode=mode, user=user.name, group=group, name=f"{user.name}: {directory}")
        for name in COMMANDS:
            ops.file(f"{p['commands_dir']}/{name}", (CLIENT_TEMPLATES / "commands" / name).read_text(),
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
