#!/usr/bin/python3
"""claude-router: switch one repository's Claude Code between the local LLM router and the cloud.

Stdlib only (Debian 12 python3 3.11); one self-contained file so the deploy installs it with a copy.

Install contract (what deploys/client.py installs and writes)
---------------------------------------------------------------
* ``hostfiles/claude_router.py`` -> ``/usr/local/bin/claude-router`` (root:root 0755).
* ``/usr/local/bin/claude-router-key`` -> symlink to ``claude-router`` (or a second copy). The program
  looks at the name it was started as: ``claude-router-key`` behaves like ``claude-router key``.
  This is the apiKeyHelper command.
* ``hostfiles/claude_commands/{use-ollama,use-claude,use-default}.md`` -> ``~USER/.claude/commands/``.
* ``/etc/claude-router/config.json`` (0644, NO secrets), read at every run; override its path with
  ``$CLAUDE_ROUTER_CONFIG``::

      {
        "router_url": "http://localhost:4000",          # or "https://p620.<tailnet>.ts.net/router"
        "default_model": "claude-sonnet-4-6",            # alias the router serves
        "models": ["claude-sonnet-4-6", "..."],          # allowed --model aliases ([] = any)
        "small_fast_model": "claude-haiku-4-5",          # optional, default: default_model
        "opus_model": "claude-opus-4-6",                 # optional slots, default: the chosen model
        "sonnet_model": "claude-sonnet-4-6",
        "context_tokens": {"claude-sonnet-4-6": 65536},  # optional: each alias's model context
        "key_file": "~/.config/claude-router/key",       # per-user router key (0600), "~" = the user
        "anthropic_key_file": null,                      # optional: "~/.config/anthropic/key"
        "anthropic_key_command": null,                   # optional argv list, stdout = Anthropic key
        "extra_router_urls": [],                         # optional: other URLs of the same router
        "disable_nonessential_traffic": true,            # optional, default true
        "helper_command": "/usr/local/bin/claude-router-key"  # optional; null = do not write
      }                                                  #   apiKeyHelper into settings.local.json

* the router key, one line, in ``key_file`` of each user (0600, owned by the user).
* ``apiKeyHelper``: ``use-ollama`` writes it into the repository's settings.local.json itself
  (``helper_command``), so a repository on the router always sends the router key and every other
  repository keeps the user's normal Claude Code login. Register it in the user's
  ``~/.claude/settings.json`` too ONLY when the user's Anthropic key comes from ``anthropic_key_file``
  or ``anthropic_key_command``: run, as the user (files must stay the user's),
  ``claude-router register-helper`` (prints ``changed`` or ``unchanged``; other keys are kept;
  ``unregister-helper`` removes it only if it is ours). From Python:
  ``register_api_key_helper(settings_path, command) -> bool``.
  Why: Claude Code 2.1.330, given an apiKeyHelper that prints nothing, reports "apiKeyHelper failed:
  did not return a value" and sends an empty ``Authorization: Bearer`` (verified against a fake API
  without a login); an empty answer is not a documented fallback to the subscription login.

Per-repository state
--------------------
``use-ollama`` merges its override into ``<root>/.claude/settings.local.json`` (machine-local; Claude
Code never shares it) and records what it wrote, the values it replaced and the file's original bytes
in ``<root>/.claude/claude-router.json``. ``use-default`` puts the file back byte for byte when nobody
touched it since, otherwise undoes only our keys. ``use-claude`` does the same and, only when another
settings source (repo settings.json, ~/.claude/settings.json, $ANTHROPIC_BASE_URL) still routes to the
router, pins ``ANTHROPIC_BASE_URL`` to the cloud in settings.local.json. In a git repository both files
are added to ``.git/info/exclude`` (never removed: excluding a missing file is harmless).

Exit codes: 0 ok, 2 user-facing error (one line on stderr, never a traceback), 1 key helper could not
read the router key of a repository that uses the router.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Where the deploy installs this program and its files: deploys/client.py reads these names from here.
PROGRAM = "claude-router"
PROGRAM_FILE = f"/usr/local/bin/{PROGRAM}"
DEFAULT_HELPER_COMMAND = f"/usr/local/bin/{PROGRAM}-key"  # a symlink to PROGRAM_FILE
DEFAULT_CONFIG_PATH = "/etc/claude-router/config.json"
DEFAULT_KEY_FILE = "~/.config/claude-router/key"
CONFIG_ENV_VAR = "CLAUDE_ROUTER_CONFIG"
CLOUD_BASE_URL = "https://api.anthropic.com"
SETTINGS_LOCAL = Path(".claude") / "settings.local.json"
SETTINGS_SHARED = Path(".claude") / "settings.json"
STATE_FILE = Path(".claude") / "claude-router.json"
STATE_VERSION = 1


class RouterError(Exception):
    """A problem the user must fix; reported as one line on stderr with exit code 2."""


# --------------------------------------------------------------------------------------------- config


@dataclass(frozen=True)
class RouterConfig:
    router_url: str
    default_model: str
    models: tuple[str, ...] = ()
    small_fast_model: str | None = None
    opus_model: str | None = None
    sonnet_model: str | None = None
    # The context (tokens) of the model behind each alias: use-ollama sizes the session to it.
    context_tokens: tuple[tuple[str, int], ...] = ()
    key_file: str = DEFAULT_KEY_FILE
    anthropic_key_file: str | None = None
    anthropic_key_command: tuple[str, ...] | None = None
    extra_router_urls: tuple[str, ...] = ()
    disable_nonessential_traffic: bool = True
    helper_command: str | None = DEFAULT_HELPER_COMMAND
    # CA certificate of a private router front (Caddy `tls internal`); None: a publicly trusted one.
    ca_file: str | None = None
    path: str = DEFAULT_CONFIG_PATH

    @property
    def router_urls(self) -> tuple[str, ...]:
        return (self.router_url, *self.extra_router_urls)


def config_path(environ: dict[str, str]) -> str:
    return environ.get(CONFIG_ENV_VAR) or DEFAULT_CONFIG_PATH


def parse_config(raw: Any, path: str) -> RouterConfig:
    """Validate the decoded config.json; pure."""
    if not isinstance(raw, dict):
        raise RouterError(f"{path}: expected a JSON object")

    def string(name: str, required: bool) -> str | None:
        value = raw.get(name)
        if value is None and not required:
            return None
        if not isinstance(value, str) or not value:
            raise RouterError(f"{path}: {name!r} must be a non-empty string")
        return value

    def string_list(name: str) -> tuple[str, ...] | None:
        value = raw.get(name)
        if value is None:
            return None
        if not isinstance(value, list) or not all(isinstance(item, str) and item for item in value):
            raise RouterError(f"{path}: {name!r} must be a list of non-empty strings")
        return tuple(value)

    traffic = raw.get("disable_nonessential_traffic", True)
    if not isinstance(traffic, bool):
        raise RouterError(f"{path}: 'disable_nonessential_traffic' must be true or false")
    contexts = raw.get("context_tokens") or {}
    if not isinstance(contexts, dict) or not all(
        isinstance(k, str) and type(v) is int and v > 0 for k, v in contexts.items()
    ):
        raise RouterError(f"{path}: 'context_tokens' must map aliases to positive token counts")
    key_command = string_list("anthropic_key_command")
    if key_command == ():
        raise RouterError(f"{path}: 'anthropic_key_command' must not be empty")
    return RouterConfig(
        router_url=string("router_url", True) or "",
        default_model=string("default_model", True) or "",
        models=string_list("models") or (),
        small_fast_model=string("small_fast_model", False),
        opus_model=string("opus_model", False),
        sonnet_model=string("sonnet_model", False),
        context_tokens=tuple(sorted(contexts.items())),
        key_file=string("key_file", False) or RouterConfig.key_file,
        anthropic_key_file=string("anthropic_key_file", False),
        anthropic_key_command=key_command,
        extra_router_urls=string_list("extra_router_urls") or (),
        disable_nonessential_traffic=traffic,
        helper_command=(
            string("helper_command", False) if "helper_command" in raw else DEFAULT_HELPER_COMMAND
        ),
        ca_file=string("ca_file", False),
        path=path,
    )


def load_config(environ: dict[str, str]) -> RouterConfig:
    path = config_path(environ)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RouterError(f"config {path} not found (installed by the client deploy)") from None
    except OSError as error:
        raise RouterError(f"cannot read config {path}: {error.strerror}") from None
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as error:
        raise RouterError(f"config {path} is not valid JSON ({error.msg} at line {error.lineno})") from None
    return parse_config(raw, path)


# ------------------------------------------------------------------------------------------ pure logic


def normalize_url(url: str) -> str:
    return url.strip().rstrip("/").lower()


def is_router_url(url: str | None, config: RouterConfig) -> bool:
    if not url:
        return False
    return normalize_url(url) in {normalize_url(known) for known in config.router_urls}


# Claude Code 2.1.330, measured against a recording endpoint (tests/test_lab_claude_session.py):
# - it compacts when a request's prompt would pass CLAUDE_AUTOCOMPACT_PCT_OVERRIDE percent of
#   (CLAUDE_CODE_AUTO_COMPACT_WINDOW - min(CLAUDE_CODE_MAX_OUTPUT_TOKENS, 20000)), counting from the
#   usage the backend reported last; it checks between the steps of a turn too;
# - it raises CLAUDE_CODE_AUTO_COMPACT_WINDOW below 100,000 to 100,000 (a note on stderr), and a name
#   it does not know (qwen3.6) gets a 1M window, a claude-* name 200k: the window is pinned instead;
# - the first system block, "x-anthropic-billing-header: cc_version=...", changes within a session
#   (it hashes the first prompt, which compaction replaces): CLAUDE_CODE_ATTRIBUTION_HEADER=0 drops
#   it, so the prompt's prefix, and the backend's cache of it, survives.
AUTO_COMPACT_WINDOW_MIN = 100_000
OUTPUT_RESERVE_CAP = 20_000  # Claude Code reserves min(max output, this) of the window for the answer
OUTPUT_CAP_MAX = 32_000  # Claude Code's own cap for a 200k model
# A cold start: the model read from disk (20 GB at ~150 MB/s) and a full prompt evaluated.
COLD_LOAD_TIMEOUT_MS = 900_000
BASH_CHARS_PER_TOKEN = 3  # code and logs tokenize at about 3 characters a token


@dataclass(frozen=True)
class SessionSizing:
    """How use-ollama keeps a Claude Code session inside a model's context (tokens).

    The prompt may use ``context - output``: the rest is the answer's. Compaction starts a
    ``step`` below that, room for one step's tool results (each capped at half a step) or the
    summary request that compaction sends with the whole conversation.
    """

    context: int

    @property
    def output(self) -> int:
        return min(OUTPUT_CAP_MAX, self.context // 8)

    @property
    def step(self) -> int:
        return self.context // 4

    @property
    def window(self) -> int:
        return max(self.context, AUTO_COMPACT_WINDOW_MIN)

    @property
    def compact_percent(self) -> int:
        usable = self.window - min(self.output, OUTPUT_RESERVE_CAP)
        return (self.context - self.output - self.step) * 100 // usable

    @property
    def compact_at(self) -> int:
        """The prompt size (tokens) at which Claude Code compacts with these settings."""
        return self.compact_percent * (self.window - min(self.output, OUTPUT_RESERVE_CAP)) // 100

    @property
    def tool_result_tokens(self) -> int:
        return self.step // 2

    def env(self) -> dict[str, str]:
        return {
            "CLAUDE_CODE_MAX_OUTPUT_TOKENS": str(self.output),
            "CLAUDE_CODE_AUTO_COMPACT_WINDOW": str(self.window),
            "CLAUDE_AUTOCOMPACT_PCT_OVERRIDE": str(self.compact_percent),
            "CLAUDE_CODE_FILE_READ_MAX_OUTPUT_TOKENS": str(self.tool_result_tokens),
            "MAX_MCP_OUTPUT_TOKENS": str(self.tool_result_tokens),
            "BASH_MAX_OUTPUT_LENGTH": str(self.tool_result_tokens * BASH_CHARS_PER_TOKEN),
        }


def model_slots(config: RouterConfig, model: str) -> dict[str, str]:
    """Claude Code's model slots -> the alias each asks the router for."""
    return {
        "ANTHROPIC_MODEL": model,
        "ANTHROPIC_DEFAULT_OPUS_MODEL": config.opus_model or model,
        "ANTHROPIC_DEFAULT_SONNET_MODEL": config.sonnet_model or model,
        "ANTHROPIC_DEFAULT_HAIKU_MODEL": config.small_fast_model or config.default_model,
        "CLAUDE_CODE_SUBAGENT_MODEL": model,
    }


def session_sizing(config: RouterConfig, model: str) -> SessionSizing | None:
    """Sized to the smallest context behind any slot (a session switches slots with /model)."""
    contexts = dict(config.context_tokens)
    known = [contexts[alias] for alias in set(model_slots(config, model).values()) if alias in contexts]
    return SessionSizing(min(known)) if known else None


def router_override(config: RouterConfig, model: str) -> dict[str, dict[str, Any]]:
    """The keys use-ollama writes: {"top": {key: value}, "env": {key: value}}.

    Every model slot points at an alias the router serves, so /model, subagents and the background
    (haiku-class) model never ask the router for a model name it does not know.
    """
    env: dict[str, Any] = {"ANTHROPIC_BASE_URL": config.router_url, **model_slots(config, model)}
    sizing = session_sizing(config, model)
    if sizing is not None:
        env.update(sizing.env())
    env["API_TIMEOUT_MS"] = str(COLD_LOAD_TIMEOUT_MS)
    env["CLAUDE_CODE_ATTRIBUTION_HEADER"] = "0"
    if config.disable_nonessential_traffic:
        # A repository on the private router should not phone home for telemetry/updates.
        env["CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC"] = "1"
    if config.ca_file:
        # Claude Code (Bun) trusts its bundled roots plus this file, not the system store.
        env["NODE_EXTRA_CA_CERTS"] = config.ca_file
    top: dict[str, Any] = {"model": model}
    if config.helper_command:
        # Repository-level apiKeyHelper: the router key reaches the router even when the user's
        # ~/.claude/settings.json has no helper (cloud repositories keep their normal login).
        top["apiKeyHelper"] = config.helper_command
    return {"top": top, "env": env}


def cloud_override() -> dict[str, dict[str, Any]]:
    return {"top": {}, "env": {"ANTHROPIC_BASE_URL": CLOUD_BASE_URL}}


_MISSING = object()


def apply_override(settings: dict[str, Any], override: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Merge ``override`` into ``settings`` in place; return the undo record (pure w.r.t. the disk).

    The record holds what we wrote and the previous values we replaced, so undo_override() can
    remove exactly our keys later.
    """
    env_existed = "env" in settings
    env = settings.setdefault("env", {})
    if not isinstance(env, dict):
        raise RouterError("'env' in settings.local.json is not a JSON object; fix it first")
    record: dict[str, Any] = {"written": {"top": {}, "env": {}}, "replaced": {"top": {}, "env": {}}}
    for section, target in (("top", settings), ("env", env)):
        for key, value in override[section].items():
            previous = target.get(key, _MISSING)
            if previous is not _MISSING:
                record["replaced"][section][key] = previous
            target[key] = value
            record["written"][section][key] = value
    record["created_env"] = not env_existed
    return record


def undo_override(settings: dict[str, Any], record: dict[str, Any]) -> dict[str, Any]:
    """Remove what apply_override() wrote (only keys still holding our value); restore replaced ones."""
    env = settings.get("env")
    for section in ("top", "env"):
        target = settings if section == "top" else env
        if not isinstance(target, dict):
            continue
        written: dict[str, Any] = record.get("written", {}).get(section, {})
        replaced: dict[str, Any] = record.get("replaced", {}).get(section, {})
        for key, value in written.items():
            if key not in target or target[key] != value:
                continue  # someone changed it since: theirs now, leave it
            if key in replaced:
                target[key] = replaced[key]
            else:
                del target[key]
    if record.get("created_env") and isinstance(env, dict) and not env:
        del settings["env"]
    return settings


def dump_settings(settings: dict[str, Any]) -> bytes:
    return (json.dumps(settings, indent=2, ensure_ascii=False) + "\n").encode("utf-8")


def parse_settings_bytes(data: bytes, path: Path) -> dict[str, Any]:
    try:
        value = json.loads(data.decode("utf-8")) if data.strip() else {}
    except UnicodeDecodeError:
        raise RouterError(f"{path} is not UTF-8 text; fix or remove it (left untouched)") from None
    except json.JSONDecodeError as error:
        raise RouterError(
            f"{path} is not valid JSON ({error.msg} at line {error.lineno} column {error.colno}); "
            "fix or remove it (left untouched)"
        ) from None
    if not isinstance(value, dict):
        raise RouterError(f"{path} must hold a JSON object; fix or remove it (left untouched)")
    return value


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ---------------------------------------------------------------------------------------------- disk


def repository_root(cwd: Path) -> Path:
    """``git rev-parse --show-toplevel`` from cwd, else cwd itself."""
    try:
        result = subprocess.run(
            ["git", "rev-parse", "--show-toplevel"],
            cwd=cwd,
            capture_output=True,
            text=True,
            check=False,
        )
    except OSError:  # git missing: a plain directory
        return cwd
    if result.returncode == 0 and result.stdout.strip():
        return Path(result.stdout.strip())
    return cwd


def read_optional(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as error:
        raise RouterError(f"cannot read {path}: {error.strerror}") from None


def atomic_write(path: Path, data: bytes, default_mode: int = 0o644) -> None:
    """Write via a temp file in the same directory + rename; keep the mode of the file replaced."""
    if path.is_symlink():
        path = path.resolve()  # update the link's target, keep the link
    try:
        mode = path.stat().st_mode & 0o7777
    except FileNotFoundError:
        mode = default_mode
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as error:
        raise RouterError(f"cannot write {path}: {error.strerror}") from None
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fchmod(stream.fileno(), mode)
            os.fsync(stream.fileno())
        os.replace(temp_name, path)
    except OSError as error:
        try:
            os.unlink(temp_name)
        except OSError:
            pass
        raise RouterError(f"cannot write {path}: {error.strerror}") from None


def remove_file(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass
    except OSError as error:
        raise RouterError(f"cannot remove {path}: {error.strerror}") from None


@dataclass
class Repository:
    root: Path
    state: dict[str, Any] | None = None
    local_bytes: bytes | None = None

    @property
    def local_path(self) -> Path:
        return self.root / SETTINGS_LOCAL

    @property
    def state_path(self) -> Path:
        return self.root / STATE_FILE

    @classmethod
    def open(cls, cwd: Path) -> Repository:
        root = repository_root(cwd)
        repo = cls(root=root)
        repo.local_bytes = read_optional(repo.local_path)
        state_bytes = read_optional(repo.state_path)
        if state_bytes is not None:
            state = parse_settings_bytes(state_bytes, repo.state_path)
            if state.get("version") != STATE_VERSION:
                raise RouterError(f"{repo.state_path}: unknown state version; remove it by hand")
            repo.state = state
        return repo

    def restored_bytes(self) -> bytes | None:
        """settings.local.json content with our override undone (None = the file should not exist)."""
        current = self.local_bytes
        if self.state is None:
            return current
        if current is not None and sha256(current) == self.state.get("written_sha256"):
            # Untouched since we wrote it: give back the original bytes exactly.
            original = self.state.get("original")
            return None if original is None else base64.b64decode(original)
        if current is None:
            return None  # removed by the user: nothing of ours left
        settings = parse_settings_bytes(current, self.local_path)
        if undo_override(settings, self.state) == parse_settings_bytes(current, self.local_path):
            return current  # none of our keys left: keep the user's bytes as they are
        if not settings and self.state.get("original") is None:
            return None
        return dump_settings(settings)

    def write_override(self, override: dict[str, dict[str, Any]], backend: str) -> None:
        base = self.restored_bytes()
        settings = parse_settings_bytes(base, self.local_path) if base is not None else {}
        record = apply_override(settings, override)
        new_bytes = dump_settings(settings)
        original_state = {
            "original": None if base is None else base64.b64encode(base).decode("ascii"),
            "claude_dir_existed": (
                self.state["claude_dir_existed"] if self.state else self.local_path.parent.is_dir()
            ),
        }
        state = {
            "version": STATE_VERSION,
            "backend": backend,
            **original_state,
            **record,
            "written_sha256": sha256(new_bytes),
        }
        # State first: if we die between the two writes, undo still knows the original.
        atomic_write(self.state_path, dump_settings(state), default_mode=0o600)
        atomic_write(self.local_path, new_bytes)
        exclude_from_git(self.root)
        self.state, self.local_bytes = state, new_bytes

    def remove_override(self) -> bool:
        """Undo our override; return whether there was one."""
        if self.state is None:
            return False
        restored = self.restored_bytes()
        if restored is None:
            remove_file(self.local_path)
        elif restored != self.local_bytes:
            atomic_write(self.local_path, restored)
        remove_file(self.state_path)
        if not self.state.get("claude_dir_existed", True):
            try:
                self.local_path.parent.rmdir()  # only if empty: we created it
            except OSError:
                pass
        self.state, self.local_bytes = None, restored
        return True


def exclude_from_git(root: Path) -> None:
    """Keep machine-local files out of commits (best effort: never fails the switch)."""
    try:
        result = subprocess.run(
            ["git", "rev-parse", "--git-path", "info/exclude"],
            cwd=root,
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            return
        exclude = Path(result.stdout.strip())
        exclude = exclude if exclude.is_absolute() else root / exclude
        existing = exclude.read_text(encoding="utf-8") if exclude.exists() else ""
        lines = existing.splitlines()
        wanted = [f"/{SETTINGS_LOCAL.as_posix()}", f"/{STATE_FILE.as_posix()}"]
        missing = [line for line in wanted if line not in lines]
        if missing:
            exclude.parent.mkdir(parents=True, exist_ok=True)
            prefix = "" if not existing or existing.endswith("\n") else "\n"
            with exclude.open("a", encoding="utf-8") as stream:
                stream.write(prefix + "".join(line + "\n" for line in missing))
    except OSError:
        pass


def settings_env_value(path: Path, name: str) -> str | None:
    """env.<name> of a settings file; unreadable or broken files count as not setting it."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    env = value.get("env") if isinstance(value, dict) else None
    found = env.get(name) if isinstance(env, dict) else None
    return found if isinstance(found, str) and found else None


def settings_top_value(path: Path, name: str) -> str | None:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    found = value.get(name) if isinstance(value, dict) else None
    return found if isinstance(found, str) and found else None


def effective_env(root: Path, home: Path, environ: dict[str, str], name: str) -> tuple[str | None, str]:
    """Value of an env var as Claude Code resolves it from settings files, and where it came from.

    Claude Code's precedence: settings.local.json > repo settings.json > ~/.claude/settings.json, and a
    settings ``env`` value beats the shell. The apiKeyHelper runs WITHOUT the settings env applied
    (verified on 2.1.x), so it must read the files itself.
    """
    sources = (
        (root / SETTINGS_LOCAL, str(SETTINGS_LOCAL)),
        (root / SETTINGS_SHARED, str(SETTINGS_SHARED)),
        (home / ".claude" / "settings.json", "~/.claude/settings.json"),
    )
    for path, label in sources:
        value = settings_env_value(path, name)
        if value:
            return value, label
    if environ.get(name):
        return environ[name], f"${name}"
    return None, "default"


def home_dir(environ: dict[str, str]) -> Path:
    return Path(environ.get("HOME") or os.path.expanduser("~"))


def expand_user(path: str, environ: dict[str, str]) -> Path:
    if path == "~" or path.startswith("~/"):
        return home_dir(environ) / path[2:]
    return Path(path)


# ----------------------------------------------------------------------------------------- api key


def router_key(config: RouterConfig, environ: dict[str, str]) -> str:
    path = expand_user(config.key_file, environ)
    try:
        key = path.read_text(encoding="utf-8").strip()
    except OSError as error:
        raise RouterError(f"router key {path}: {error.strerror}") from None
    if not key:
        raise RouterError(f"router key {path} is empty")
    return key


def anthropic_key(config: RouterConfig, environ: dict[str, str]) -> str | None:
    """The user's own Anthropic key, or None to let Claude Code use its own login."""
    if config.anthropic_key_command:
        result = subprocess.run(
            list(config.anthropic_key_command), capture_output=True, text=True, check=False
        )
        if result.returncode != 0:
            raise RouterError(f"anthropic_key_command failed with exit code {result.returncode}")
        return result.stdout.strip() or None
    if config.anthropic_key_file:
        path = expand_user(config.anthropic_key_file, environ)
        try:
            return path.read_text(encoding="utf-8").strip() or None
        except FileNotFoundError:
            return None
        except OSError as error:
            raise RouterError(f"anthropic key {path}: {error.strerror}") from None
    return None


def start_directory(environ: dict[str, str]) -> Path:
    # Claude Code runs the helper in the project directory; honour CLAUDE_PROJECT_DIR when it is set.
    project = environ.get("CLAUDE_PROJECT_DIR")
    return Path(project) if project and Path(project).is_dir() else Path.cwd()


def command_key(environ: dict[str, str]) -> int:
    """apiKeyHelper: stdout carries the key and nothing else."""
    try:
        config = load_config(environ)
    except RouterError as error:
        print(f"{PROGRAM}-key: {error}; using Claude Code's own login", file=sys.stderr)
        return 0
    root = repository_root(start_directory(environ))
    base_url, _source = effective_env(root, home_dir(environ), environ, "ANTHROPIC_BASE_URL")
    if is_router_url(base_url, config):
        try:
            key: str | None = router_key(config, environ)
        except RouterError as error:
            print(f"{PROGRAM}-key: {error}", file=sys.stderr)
            return 1  # never hand a cloud credential to the router
    else:
        try:
            key = anthropic_key(config, environ)
        except RouterError as error:
            print(f"{PROGRAM}-key: {error}; using Claude Code's own login", file=sys.stderr)
            key = None
    if key:
        sys.stdout.write(key + "\n")
    return 0


# ---------------------------------------------------------------------------------------- commands


def command_use_ollama(environ: dict[str, str], model: str | None) -> int:
    config = load_config(environ)
    chosen = model or config.default_model
    if config.models and chosen not in config.models:
        raise RouterError(f"unknown model alias {chosen!r}; the router serves: {', '.join(config.models)}")
    repo = Repository.open(Path.cwd())
    repo.write_override(router_override(config, chosen), backend="router")
    print(f"{repo.root}: Claude Code now uses the router {config.router_url} with model {chosen}")
    print("Start a new claude session in this repository for the switch to take effect.")
    return 0


def command_use_default(environ: dict[str, str]) -> int:
    repo = Repository.open(Path.cwd())
    had_override = repo.remove_override()
    detail = "override removed" if had_override else "no override was set"
    print(f"{repo.root}: {detail}; Claude Code uses its normal settings")
    return 0


def command_use_claude(environ: dict[str, str]) -> int:
    config = load_config(environ)
    repo = Repository.open(Path.cwd())
    repo.remove_override()
    base_url, source = effective_env(repo.root, home_dir(environ), environ, "ANTHROPIC_BASE_URL")
    if is_router_url(base_url, config):
        # Another source still routes to the router: pin this repository to the cloud.
        repo.write_override(cloud_override(), backend="cloud")
        print(f"{repo.root}: {source} points at the router; pinned this repository to {CLOUD_BASE_URL}")
    else:
        print(f"{repo.root}: Claude Code uses the cloud ({base_url or CLOUD_BASE_URL})")
    print("Start a new claude session in this repository for the switch to take effect.")
    return 0


# The settings use-ollama writes that decide where a session goes and how big it grows.
STATUS_ENV = (
    "ANTHROPIC_DEFAULT_OPUS_MODEL", "ANTHROPIC_DEFAULT_SONNET_MODEL", "ANTHROPIC_DEFAULT_HAIKU_MODEL",
    "CLAUDE_CODE_SUBAGENT_MODEL", "CLAUDE_CODE_MAX_OUTPUT_TOKENS", "CLAUDE_CODE_AUTO_COMPACT_WINDOW",
    "CLAUDE_AUTOCOMPACT_PCT_OVERRIDE", "CLAUDE_CODE_FILE_READ_MAX_OUTPUT_TOKENS", "MAX_MCP_OUTPUT_TOKENS",
    "BASH_MAX_OUTPUT_LENGTH", "API_TIMEOUT_MS", "CLAUDE_CODE_ATTRIBUTION_HEADER",
)


def describe(repo: Repository, config: RouterConfig | None, environ: dict[str, str]) -> list[str]:
    home = home_dir(environ)
    base_url, source = effective_env(repo.root, home, environ, "ANTHROPIC_BASE_URL")
    on_router = config is not None and is_router_url(base_url, config)
    origin = "claude-router override" if repo.state is not None and source == str(SETTINGS_LOCAL) else source
    if on_router:
        backend = "router"
    elif base_url is None or normalize_url(base_url) == normalize_url(CLOUD_BASE_URL):
        backend = "cloud"
    else:
        backend = "other endpoint"
    model, model_source = effective_env(repo.root, home, environ, "ANTHROPIC_MODEL")
    if model is None:
        for path, label in (
            (repo.local_path, str(SETTINGS_LOCAL)),
            (repo.root / SETTINGS_SHARED, str(SETTINGS_SHARED)),
        ):
            model = settings_top_value(path, "model")
            if model:
                model_source = label
                break
    lines = [
        f"repository: {repo.root}",
        f"backend: {backend} ({origin})",
        f"url: {base_url or CLOUD_BASE_URL}",
        f"model: {model or 'Claude Code default'}" + (f" ({model_source})" if model else ""),
    ]
    for name in STATUS_ENV:
        value, value_source = effective_env(repo.root, home, environ, name)
        if value is not None:
            lines.append(f"{name}: {value} ({value_source})")
    percent, _ = effective_env(repo.root, home, environ, "CLAUDE_AUTOCOMPACT_PCT_OVERRIDE")
    window, _ = effective_env(repo.root, home, environ, "CLAUDE_CODE_AUTO_COMPACT_WINDOW")
    output, _ = effective_env(repo.root, home, environ, "CLAUDE_CODE_MAX_OUTPUT_TOKENS")
    if percent and window and output and percent.isdigit() and window.isdigit() and output.isdigit():
        usable = int(window) - min(int(output), OUTPUT_RESERVE_CAP)
        lines.append(f"compacts at: {int(percent) * usable // 100} tokens of prompt")
    if config is None:
        lines.append("config: missing")
        return lines
    if on_router and model:
        sizing = session_sizing(config, model)
        if sizing is not None:
            lines.append(f"model context: {sizing.context} tokens (smallest behind the slots)")
    key_path = expand_user(config.key_file, environ)
    lines.append(f"router key: {key_path} ({'present' if key_path.is_file() else 'missing'})")
    if config.anthropic_key_command:
        lines.append(f"anthropic key: command {' '.join(config.anthropic_key_command)}")
    elif config.anthropic_key_file:
        anthropic_path = expand_user(config.anthropic_key_file, environ)
        lines.append(
            f"anthropic key: {anthropic_path} ({'present' if anthropic_path.is_file() else 'missing'})"
        )
    else:
        lines.append("anthropic key: Claude Code login")
    return lines


def command_status(environ: dict[str, str]) -> int:
    repo = Repository.open(Path.cwd())
    if repo.local_bytes is not None:
        try:
            parse_settings_bytes(repo.local_bytes, repo.local_path)
        except RouterError as error:  # Claude Code ignores such a file too: say so, then report
            print(f"{PROGRAM}: warning: {error}", file=sys.stderr)
    try:
        config: RouterConfig | None = load_config(environ)
    except RouterError as error:
        print(f"{PROGRAM}: {error}", file=sys.stderr)
        config = None
    print("\n".join(describe(repo, config, environ)))
    return 0


# ------------------------------------------------------------------------------ user settings helper


def register_api_key_helper(settings_path: Path, command: str = DEFAULT_HELPER_COMMAND) -> bool:
    """Set ``apiKeyHelper`` in a user's ~/.claude/settings.json, keeping every other key.

    Returns True when the file changed. Raises RouterError for a broken file (left untouched).
    """
    current = read_optional(settings_path)
    settings = parse_settings_bytes(current, settings_path) if current is not None else {}
    if settings.get("apiKeyHelper") == command:
        return False
    settings["apiKeyHelper"] = command
    if current is None:
        try:
            settings_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as error:
            raise RouterError(f"cannot create {settings_path.parent}: {error.strerror}") from None
    atomic_write(settings_path, dump_settings(settings), default_mode=0o600)
    return True


def unregister_api_key_helper(settings_path: Path, command: str = DEFAULT_HELPER_COMMAND) -> bool:
    """Remove ``apiKeyHelper`` only if it is ours; returns True when the file changed."""
    current = read_optional(settings_path)
    if current is None:
        return False
    settings = parse_settings_bytes(current, settings_path)
    if settings.get("apiKeyHelper") != command:
        return False
    del settings["apiKeyHelper"]
    atomic_write(settings_path, dump_settings(settings))
    return True


# ------------------------------------------------------------------------------------------------ cli

USAGE = f"""usage: {PROGRAM} COMMAND
  use-ollama [--model ALIAS]   route this repository to the local LLM router
  use-claude                   route this repository to the Anthropic cloud
  use-default                  remove claude-router's override from this repository
  status                       show the backend, URL, model and key files of this repository
  key                          print the API key for this repository (the apiKeyHelper)
  register-helper [--settings PATH] [--command CMD]
  unregister-helper [--settings PATH] [--command CMD]
"""


def parse_options(args: list[str], allowed: set[str]) -> dict[str, str]:
    options: dict[str, str] = {}
    index = 0
    while index < len(args):
        arg = args[index]
        name, has_value, value = arg.partition("=")
        if name not in allowed:
            raise RouterError(f"unexpected argument {arg!r} (see {PROGRAM} --help)")
        if not has_value:
            index += 1
            if index >= len(args):
                raise RouterError(f"{name} needs a value")
            value = args[index]
        options[name] = value
        index += 1
    return options


def main(argv: list[str] | None = None, environ: dict[str, str] | None = None) -> int:
    argv = list(sys.argv if argv is None else argv)
    environ = dict(os.environ if environ is None else environ)
    invoked_as = Path(argv[0]).name if argv else PROGRAM
    args = argv[1:]
    if invoked_as.startswith(f"{PROGRAM}-key"):
        return command_key(environ)
    if not args:
        print(USAGE, end="", file=sys.stderr)
        return 2
    if args[0] in {"-h", "--help", "help"}:
        print(USAGE, end="")
        return 0
    command, rest = args[0], args[1:]
    try:
        if command == "key":
            return command_key(environ)
        if command == "use-ollama":
            if len(rest) == 1 and not rest[0].startswith("-"):
                rest = ["--model", rest[0]]  # `/use-ollama ALIAS` from the slash command
            return command_use_ollama(environ, parse_options(rest, {"--model"}).get("--model"))
        if command in {"use-claude", "use-default", "status"}:
            if rest:
                raise RouterError(f"{command} takes no arguments")
            handler = {"use-claude": command_use_claude, "use-default": command_use_default}
            return handler.get(command, command_status)(environ)
        if command in {"register-helper", "unregister-helper"}:
            options = parse_options(rest, {"--settings", "--command"})
            settings_path = Path(options.get("--settings") or home_dir(environ) / ".claude" / "settings.json")
            helper = options.get("--command", DEFAULT_HELPER_COMMAND)
            action = register_api_key_helper if command == "register-helper" else unregister_api_key_helper
            print("changed" if action(settings_path, helper) else "unchanged")
            return 0
        raise RouterError(f"unknown command {command!r} (see {PROGRAM} --help)")
    except RouterError as error:
        print(f"{PROGRAM}: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
