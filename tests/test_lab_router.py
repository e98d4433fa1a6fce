"""The router deploy and client keys against the lab (p620 + razer in systemd-nspawn).

After the site apply: the router answers the Anthropic and OpenAI APIs with the
master key and with client keys, refuses missing and wrong keys, re-applies as
a no-op, restarts only itself when an alias changes, refuses a broken change
before it reaches the running router, rolls back a change that fails after the
swap, and rotates a client key under a request loop without a failed request.
Key strings are grepped for in pyinfra's output (`--dry --diff` included),
process lists, unit files and the journal.

Keys never travel on a command line here either: remote probes read them from
stdin. Variants of the lab inventory are written with absolute paths.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from ruamel.yaml import YAML

from deploys import router as deploy_router
from inventory.load import load_inventory
from lab import core
from lab.variants import write_variant
from tests.conftest import LAB_INVENTORY, ApplyResult, run_apply

pytestmark = pytest.mark.lab

REPO = Path(__file__).resolve().parent.parent
SERVER = "p620"
CLIENT = "razer"
ROUTER = "http://127.0.0.1:4000"
ROUTER_FROM_CLIENT = f"http://{load_inventory(LAB_INVENTORY).hosts[SERVER].network.tailnet_address}:4000"
CLIENT_KEY_FILE = "/home/olaf/.config/claude-router/key"


# --- inventory variants and applies ---------------------------------------------------------


def write_inventory(path: Path, router_updates: dict | None = None, aliases: dict | None = None) -> Path:
    """The lab inventory with absolute paths, optionally other router settings or aliases."""

    def edit(document: dict) -> None:
        router = document["hosts"][SERVER]["server"].setdefault("router", {})
        router.update(router_updates or {})
        if aliases is not None:
            router["aliases"] = aliases

    return write_variant(LAB_INVENTORY, path, edit)


@dataclass
class Applies:
    """The site applied to the lab as a user runs it; every output is kept for the secrets test."""

    outputs: list[str]

    def __call__(self, inventory: Path, *args: str, timeout: float = 1200) -> ApplyResult:
        result = run_apply(*args, inventory=inventory, timeout=timeout)
        self.outputs.append(result.output)
        return result


@pytest.fixture(scope="module")
def applies(apply) -> Applies:
    return Applies([])


@pytest.fixture(scope="module")
def base_inventory(tmp_path_factory) -> Path:
    return write_inventory(tmp_path_factory.mktemp("router") / "inventory.yaml")


@pytest.fixture(scope="module")
def deployed_router(applies: Applies, base_inventory: Path) -> Path:
    result = applies(base_inventory)
    assert result.returncode == 0, result.output[-6000:]
    return base_inventory


def secret(inventory: Path, name: str) -> str:
    return (load_inventory(inventory).secrets_path / name).read_text().strip()


# --- remote probes (keys via stdin) -----------------------------------------------------------

PROBE = r"""
import json, sys, urllib.error, urllib.request
job = json.loads(sys.stdin.read())
results = []
for call in job["calls"]:
    headers = {"content-type": "application/json"}
    if call.get("key"):
        headers["authorization"] = "Bearer " + call["key"]
    body = json.dumps(call["body"]).encode() if call.get("body") is not None else None
    request = urllib.request.Request(job["base"] + call["path"], data=body, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            results.append({"status": response.status, "body": response.read().decode()})
    except urllib.error.HTTPError as error:
        results.append({"status": error.code, "body": error.read().decode()})
    except OSError as error:
        results.append({"status": 0, "body": str(error)})
print(json.dumps(results))
"""


def remote(host: str, command: list[str], stdin: str = "", timeout: float = 180,
           user: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(core.exec_command(host, command, user=user), input=stdin, capture_output=True,
                          text=True, timeout=timeout, check=False)


def calls(*requests: dict, host: str = SERVER, base: str = ROUTER) -> list[dict]:
    done = remote(host, ["python3", "-c", PROBE], json.dumps({"base": base, "calls": list(requests)}))
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def messages_request(key: str | None, model: str = "claude-sonnet-4-6", stream: bool = False) -> dict:
    body = {"model": model, "max_tokens": 64, "messages": [{"role": "user", "content": "say hi"}]}
    if stream:
        body["stream"] = True
    return {"path": "/v1/messages", "key": key, "body": body}


def unit_property(host: str, unit: str, prop: str) -> str:
    return remote(host, ["systemctl", "show", "-p", prop, "--value", unit]).stdout.strip()


LOOP = r"""
import json, os, sys, time, urllib.error, urllib.request
base, key_file, stop_file, deadline = sys.argv[1], sys.argv[2], sys.argv[3], time.time() + float(sys.argv[4])
results = []
while time.time() < deadline and not os.path.exists(stop_file):
    key = open(key_file).read().strip()
    request = urllib.request.Request(base + "/v1/chat/completions", headers={
        "content-type": "application/json", "authorization": "Bearer " + key},
        data=json.dumps({"model": "qwen3.6", "messages": [{"role": "user", "content": "hi"}]}).encode())
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            status = response.status
    except urllib.error.HTTPError as error:
        status = error.code
    except OSError:
        status = 0
    results.append([round(time.time(), 2), status])
    time.sleep(0.2)
print(json.dumps(results))
"""


@dataclass
class RequestLoop:
    """Requests in a loop on a lab host, each with the key file's current content."""

    host: str
    process: subprocess.Popen
    stop_file: str
    user: str | None

    def stop(self) -> list[list]:
        remote(self.host, ["touch", self.stop_file], user=self.user)
        out, err = self.process.communicate(timeout=120)
        remote(self.host, ["rm", "-f", self.stop_file], user=self.user)
        assert self.process.returncode == 0, err
        return json.loads(out)


def start_loop(host: str, base: str, key_file: str, max_seconds: int = 900, user: str | None = None) -> RequestLoop:
    """`user`: run as that user (the client's own key file, as its apiKeyHelper reads it)."""
    stop_file = f"/tmp/router-loop-stop-{os.getpid()}"
    remote(host, ["rm", "-f", stop_file], user=user)
    process = subprocess.Popen(
        core.exec_command(host, ["python3", "-c", LOOP, base, key_file, stop_file, str(max_seconds)], user=user),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(2)
    return RequestLoop(host, process, stop_file, user)


def master_key_file_loop(inventory: Path) -> RequestLoop:
    """A loop on p620 with the master key (root-only file on the server)."""
    return start_loop(SERVER, ROUTER, deploy_router.MASTER_KEY_FILE)


# --- through the router ---------------------------------------------------------------------


def test_master_key_serves_anthropic_openai_and_models(deployed_router):
    master = secret(deployed_router, "litellm-master-key")
    plain, streamed, chat, models = calls(
        messages_request(master),
        messages_request(master, stream=True),
        {"path": "/v1/chat/completions", "key": master,
         "body": {"model": "qwen3.6", "messages": [{"role": "user", "content": "say hi"}]}},
        {"path": "/v1/models", "key": master},
    )
    assert plain["status"] == 200, plain
    message = json.loads(plain["body"])
    assert message["type"] == "message" and message["content"][0]["type"] == "text"
    assert message["content"][0]["text"].strip()
    assert streamed["status"] == 200, streamed
    events = [line.split(":", 1)[1].strip() for line in streamed["body"].splitlines() if line.startswith("event:")]
    assert events[0] == "message_start" and events[-1] == "message_stop", events
    for expected in ("content_block_start", "content_block_delta", "content_block_stop", "message_delta"):
        assert expected in events, events
    assert chat["status"] == 200 and json.loads(chat["body"])["choices"][0]["message"]["content"]
    assert models["status"] == 200
    ids = {m["id"] for m in json.loads(models["body"])["data"]}
    assert {"claude-sonnet-4-6", "qwen3.6", "qwen3.6:27b"} <= ids


def test_missing_and_wrong_keys_get_401(deployed_router):
    missing, wrong, wrong_models = calls(messages_request(None), messages_request("sk-" + "x" * 64),
                                         {"path": "/v1/models", "key": "sk-wrong"})
    assert (missing["status"], wrong["status"], wrong_models["status"]) == (401, 401, 401)


def test_client_keys_work_and_are_only_hashes_on_the_server(deployed_router):
    razer_key = secret(deployed_router, "router-key-razer")
    p620_key = secret(deployed_router, "router-key-p620")
    from_razer, from_p620 = calls(messages_request(razer_key), messages_request(p620_key))
    assert from_razer["status"] == 200 and from_p620["status"] == 200
    stored = json.loads(remote(SERVER, ["cat", "/etc/llm-router/client-keys.json"]).stdout)
    assert hashlib.sha256(razer_key.encode()).hexdigest() in stored["clients"]["razer"]
    listing = remote(SERVER, ["stat", "-c", "%a %U %G", "/etc/llm-router/client-keys.json"]).stdout.split()
    assert listing == ["640", "root", "llm-router"]
    assert remote(SERVER, ["stat", "-c", "%a %U", deploy_router.MASTER_KEY_FILE]).stdout.split() == ["600", "root"]
    # The router's log names the client (alias), never its key.
    journal = remote(SERVER, ["journalctl", "-u", "llm-router", "-n", "200", "--no-pager", "-o", "cat"]).stdout
    assert "client=razer" in journal


def test_second_apply_reports_no_changes(applies, deployed_router):
    again = applies(deployed_router)
    assert again.returncode == 0, again.output[-4000:]
    assert again.converged, again.output[-6000:]


def test_changing_one_alias_restarts_only_the_router(applies, deployed_router, tmp_path):
    base = load_inventory(deployed_router).hosts[SERVER].server.router
    changed_aliases = {**base.aliases, "claude-opus-4-6": "qwen3.6:27b"}
    router_before = unit_property(SERVER, "llm-router", "InvocationID")
    ollama_before = unit_property(SERVER, "ollama", "InvocationID")
    master = secret(deployed_router, "litellm-master-key")
    # Venvs of earlier versions: once the new router serves, only its venv and the one it replaced stay.
    venv = remote(SERVER, ["readlink", deploy_router.CURRENT_LINK]).stdout.strip()
    stale, replaced = (f"{deploy_router.INSTALL_ROOT}/venv-0.0.0-{name}" for name in ("stale", "replaced"))
    remote(SERVER, ["sh", "-c", f"mkdir -p {stale}/bin {replaced}/bin && ln -sfn {replaced} {deploy_router.CURRENT_LINK}"])
    try:
        result = applies(write_inventory(tmp_path / "alias.yaml", aliases=changed_aliases))
        assert result.returncode == 0, result.output[-6000:]
        assert unit_property(SERVER, "llm-router", "InvocationID") != router_before
        assert unit_property(SERVER, "ollama", "InvocationID") == ollama_before
        (answer,) = calls(messages_request(master, model="claude-opus-4-6"))
        assert answer["status"] == 200 and "qwen3.6:27b" in answer["body"], answer
        assert remote(SERVER, ["readlink", deploy_router.CURRENT_LINK]).stdout.strip() == venv
        venvs = remote(SERVER, ["sh", "-c", f"ls -d {deploy_router.INSTALL_ROOT}/venv-*"]).stdout.split()
        assert sorted(venvs) == sorted([venv, replaced])
    finally:
        remote(SERVER, ["rm", "-rf", stale, replaced])
        restored = applies(deployed_router)
        assert restored.returncode == 0, restored.output[-6000:]


def stage_for_activation(inventory: Path, staged: dict[str, str]) -> str:
    """Put files in the staging area, with the trial-run unit the deploy would upload; the venv."""
    for name, content in staged.items():
        core.install_file(SERVER, f"{deploy_router.STAGED_DIR}/{name}", content)
    venv = remote(SERVER, ["readlink", deploy_router.CURRENT_LINK]).stdout.strip()
    inv = load_inventory(inventory)
    host = inv.hosts[SERVER]
    cpus = int(remote(SERVER, ["nproc"]).stdout)
    trial = deploy_router.render_unit(inv, host, cpus, venv=venv, config_file=f"{deploy_router.NEXT_DIR}/config.yaml",
                                      bind="127.0.0.1", port=deploy_router.check_port(host.server.router))
    core.install_file(SERVER, deploy_router.CHECK_UNIT_SOURCE, trial)
    return venv


def activate(venv: str) -> subprocess.CompletedProcess:
    return remote(SERVER, [deploy_router.ACTIVATE_SCRIPT, venv, "4000", "4001", deploy_router.CHECK_UNIT_SOURCE,
                           "120"], timeout=400)


def test_unavailable_pin_is_refused_before_anything_changes(applies, deployed_router, tmp_path):
    router_before = unit_property(SERVER, "llm-router", "InvocationID")
    result = applies(write_inventory(tmp_path / "pin.yaml", router_updates={"litellm_version": "1.0.0"}))
    assert result.returncode != 0
    assert "no litellm 1.0.0 wheel" in result.output
    assert unit_property(SERVER, "llm-router", "InvocationID") == router_before


def test_broken_change_is_refused_before_it_reaches_the_running_router(applies, deployed_router):
    """A config LiteLLM cannot start with (its auth hook names a missing function) fails the trial
    run; the live router is never stopped and requests keep succeeding during and after."""
    config_before = remote(SERVER, ["cat", deploy_router.CONFIG_FILE]).stdout
    broken = config_before.replace("llm_router_auth.user_api_key_auth", "llm_router_auth.no_such_function")
    assert broken != config_before
    router_before = unit_property(SERVER, "llm-router", "InvocationID")
    venv = stage_for_activation(deployed_router, {"config.yaml": broken})
    loop = master_key_file_loop(deployed_router)
    try:
        done = activate(venv)
    finally:
        statuses = [status for _, status in loop.stop()]
    assert done.returncode == 1
    assert "trial run of the new router" in done.stderr and "running router is unchanged" in done.stderr
    assert "no_such_function" in done.stderr, done.stderr  # LiteLLM's own error, from the trial's log
    assert len(statuses) >= 5 and set(statuses) == {200}, statuses
    assert unit_property(SERVER, "llm-router", "InvocationID") == router_before
    assert remote(SERVER, ["cat", deploy_router.CONFIG_FILE]).stdout == config_before
    assert remote(SERVER, ["ls", "-A", deploy_router.STAGED_DIR]).stdout.strip() == ""
    again = applies(deployed_router)
    assert again.converged, again.output[-4000:]


def test_failed_restart_after_the_swap_is_rolled_back(deployed_router):
    """A unit that passes the trial run but exits at once after the swap: the previous one comes back."""
    unit_before = remote(SERVER, ["cat", deploy_router.UNIT_FILE]).stdout
    broken = unit_before.replace("ExecStart=", "ExecStart=/bin/sh -c 'echo broken on purpose >&2; exit 3' #", 1)
    other = f"{deploy_router.INSTALL_ROOT}/venv-0.0.0-other"
    remote(SERVER, ["mkdir", "-p", f"{other}/bin"])
    try:
        done = activate(stage_for_activation(deployed_router, {deploy_router.UNIT: broken}))
        assert remote(SERVER, ["test", "-d", other]).returncode == 0  # a failed change removes no venv
    finally:
        remote(SERVER, ["rm", "-rf", other])
    assert done.returncode == 1
    assert "restoring the previous version" in done.stderr and "broken on purpose" in done.stderr, done.stderr
    assert "the previous router is serving again" in done.stderr, done.stderr
    assert remote(SERVER, ["cat", deploy_router.UNIT_FILE]).stdout == unit_before
    master = secret(deployed_router, "litellm-master-key")
    assert calls(messages_request(master))[0]["status"] == 200


def test_rotation_under_a_request_loop_sees_no_failure(applies, deployed_router):
    old = secret(deployed_router, "router-key-razer")
    p620_before = secret(deployed_router, "router-key-p620")
    secrets_dir = load_inventory(deployed_router).secrets_path
    # A dry run with diffs first: it shows changed secrets without their content, and the apply
    # that follows deploys the key it prepared.
    dry = applies(deployed_router, "--dry", "--diff", "--data", "rotate_keys=razer")
    prepared = secret(deployed_router, "router-key-razer")
    assert prepared != old and (secrets_dir / "router-key-razer.previous").exists()
    assert "content not shown" in dry.output
    loop = start_loop(CLIENT, ROUTER_FROM_CLIENT, CLIENT_KEY_FILE, user="olaf")
    try:
        result = applies(deployed_router, "--data", "rotate_keys=razer")
    finally:
        samples = loop.stop()
    assert result.returncode == 0, result.output[-6000:]
    statuses = [status for _, status in samples]
    assert len(statuses) >= 5 and set(statuses) == {200}, statuses
    new = secret(deployed_router, "router-key-razer")
    assert new == prepared and not (secrets_dir / "router-key-razer.previous").exists()
    assert remote(CLIENT, ["cat", CLIENT_KEY_FILE]).stdout.strip() == new
    assert secret(deployed_router, "router-key-p620") == p620_before
    old_result, new_result, p620_result = calls(messages_request(old), messages_request(new),
                                                messages_request(p620_before))
    assert (old_result["status"], new_result["status"], p620_result["status"]) == (401, 200, 200)
    stored = remote(SERVER, ["cat", "/etc/llm-router/client-keys.json"]).stdout
    assert hashlib.sha256(old.encode()).hexdigest() not in stored


def test_revoked_client_gets_401(applies, deployed_router, tmp_path):
    yaml = YAML(typ="rt")
    document = yaml.load(deployed_router.read_text())
    razer_key = secret(deployed_router, "router-key-razer")
    del document["hosts"][CLIENT]
    revoked = tmp_path / "revoked.yaml"
    with revoked.open("w") as handle:
        yaml.dump(document, handle)
    try:
        result = applies(revoked)
        assert result.returncode == 0, result.output[-6000:]
        assert calls(messages_request(razer_key))[0]["status"] == 401
    finally:
        assert applies(deployed_router).returncode == 0
    assert calls(messages_request(razer_key))[0]["status"] == 200


# --- secrets nowhere --------------------------------------------------------------------------

FIND_KEYS = r"""
import json, subprocess, sys
keys = json.loads(sys.stdin.read())
sources = {
    "ps": subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout,
    "journal": subprocess.run(["journalctl", "--no-pager", "-o", "cat"], capture_output=True, text=True).stdout,
    "units": subprocess.run(["sh", "-c", "cat /etc/systemd/system/*.service /run/systemd/system/*.service "
                             "2>/dev/null; systemctl show -p Environment llm-router"],
                            capture_output=True, text=True).stdout,
    "config": subprocess.run(["sh", "-c", "cat /etc/llm-router/*.yaml /etc/llm-router/*.json"],
                             capture_output=True, text=True).stdout,
}
print(json.dumps({name: [i for i, key in enumerate(keys) if key in text] for name, text in sources.items()}))
"""


def test_keys_appear_nowhere(applies, deployed_router):
    # Every apply of this module so far (at least the fixture's; the rotation test adds --dry --diff).
    assert applies.outputs
    secrets_dir = load_inventory(deployed_router).secrets_path
    keys = [p.read_text().strip() for p in sorted(secrets_dir.iterdir())
            if p.name == "litellm-master-key" or p.name.startswith("router-key-")]
    assert len(keys) >= 3
    for output in applies.outputs:
        for key in keys:
            assert key not in output
    for host in (SERVER, CLIENT):
        done = remote(host, ["python3", "-c", FIND_KEYS], json.dumps(keys))
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout) == {"ps": [], "journal": [], "units": [], "config": []}

