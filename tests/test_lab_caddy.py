"""Issue 5, the Caddy alternative: `tls internal` on p620's tailnet address, its root CA exported and trusted.

Runs on the deployed lab: switches p620 from tailscale serve to Caddy, proves razer (curl and the real
Claude Code CLI) reaches the router through Caddy, then switches back and checks nothing of Caddy is left.
"""

from __future__ import annotations

import hashlib
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest

from deploys.client import caddy_ca_path
from deploys.exposure import CADDY_ROOT_CA, CADDYFILE, caddy_root_ca_copy
from inventory.load import load_inventory
from lab.variants import write_variant
from tests.conftest import LAB_INVENTORY
from tests.test_lab_client import as_user, router_log_lines
from tests.test_lab_site import P620_LAN, P620_TAILNET, TAILNET_URL, in_lab, run_checks, tcp

pytestmark = pytest.mark.lab

# A name of the user's own DNS (Caddy would fetch *.ts.net certificates from tailscaled instead); the
# lab has no DNS server, so the fixture puts it in /etc/hosts, pointing at p620's tailnet address.
SITE = "llm.home.arpa"
CADDY_URL = f"https://{SITE}/router"
HOSTS_LINE = f"{P620_TAILNET} {SITE}  # test_lab_caddy"
RAZER_CA = caddy_ca_path("p620")


def caddy_front(data: dict) -> None:
    exposure = data["hosts"]["p620"]["server"]["exposure"]
    exposure["tailscale_serve"] = {"enabled": False}
    exposure["caddy"] = {"enabled": True, "site_names": [SITE]}


def sha256_on(host: str, path: str) -> str:
    return in_lab(host, f"sha256sum {shlex.quote(path)} 2>/dev/null | cut -d' ' -f1").stdout.strip()


def router_status_from_razer(url: str, with_key: bool) -> str:
    """HTTP status of /v1/messages from razer as the client user, verifying TLS with the system store."""
    body = '{"model":"claude-sonnet-4-6","max_tokens":8,"messages":[{"role":"user","content":"hi"}]}'
    key = ' -H "x-api-key: $(cat ~/.config/claude-router/key)"' if with_key else ""
    return as_user("razer", f"curl -s -o /dev/null -w '%{{http_code}}' -m 60 -H 'content-type: application/json' "
                            f"-H 'anthropic-version: 2023-06-01' -d '{body}'{key} {url}/v1/messages").stdout


@pytest.fixture(scope="module")
def caddy(deployed, apply, tmp_path_factory):
    for host in ("p620", "razer"):
        in_lab(host, f"grep -qxF '{HOSTS_LINE}' /etc/hosts || echo '{HOSTS_LINE}' >> /etc/hosts")
    caddyfile_before = sha256_on("p620", CADDYFILE)
    variant = write_variant(LAB_INVENTORY, tmp_path_factory.mktemp("caddy") / "caddy.yaml", caddy_front)
    result = apply(inventory=variant)
    assert result.returncode == 0, result.output[-6000:]
    yield variant, caddyfile_before
    restored = apply()
    for host in ("p620", "razer"):
        in_lab(host, "sed -i '/# test_lab_caddy$/d' /etc/hosts")
    assert restored.returncode == 0, restored.output[-4000:]


def test_caddy_listens_only_on_the_tailnet_address_and_serve_is_off(caddy):
    listeners = in_lab("p620", "ss -Htlnp | grep caddy | awk '{print $4}' | sort").stdout.split()
    assert listeners == [f"{P620_TAILNET}:443"]  # no :80 redirect listener, no admin API
    assert "/router" not in in_lab("p620", "tailscale serve status --json").stdout


def test_the_workstation_holds_caddys_root_ca_and_razer_trusts_it(caddy):
    variant, _ = caddy
    copy = caddy_root_ca_copy(load_inventory(variant), "p620")
    assert copy.read_text().startswith("-----BEGIN CERTIFICATE-----")
    assert hashlib.sha256(copy.read_bytes()).hexdigest() == sha256_on("p620", CADDY_ROOT_CA)
    assert sha256_on("razer", RAZER_CA) == sha256_on("p620", CADDY_ROOT_CA)
    # In the system bundle (curl, Python) and not trusted by Claude Code's own store: see the CLI test.
    bundle = in_lab("razer", "cat /etc/ssl/certs/ca-certificates.crt").stdout
    assert copy.read_text().strip() in bundle


def test_razer_reaches_the_router_through_caddy_with_its_key_only(caddy):
    assert router_status_from_razer(CADDY_URL, with_key=True) == "200"
    assert router_status_from_razer(CADDY_URL, with_key=False) == "401"


def test_caddy_answers_only_tailnet_peers(caddy):
    assert tcp("tailnet", P620_TAILNET, 443) == "open"
    # Linux would answer a peer that routes to the tailnet address through another interface.
    assert tcp("public", P620_TAILNET, 443) == "refused"
    assert tcp("public", P620_LAN, 443) == "refused"
    assert tcp("lan", P620_LAN, 443) == "refused"


def test_claude_code_reaches_the_router_through_caddy(caddy):
    repo = f"~/caddy-{int(time.time())}"
    started = time.time() - 1
    switched = as_user("razer", f"mkdir -p {repo} && cd {repo} && git init -q && claude-router use-ollama && "
                                "cat .claude/settings.local.json")
    assert switched.returncode == 0, switched.stderr
    assert CADDY_URL in switched.stdout and RAZER_CA in switched.stdout
    answer = as_user("razer", f"cd {repo} && DISABLE_TELEMETRY=1 timeout 180 claude -p 'say hi'")
    assert answer.returncode == 0, answer.stdout + answer.stderr
    assert "Ollama stand-in" in answer.stdout
    assert router_log_lines(started, "client=razer") >= 1


def test_checks_pass_with_caddy(caddy):
    variant, _ = caddy
    out = Path(variant).with_suffix(".json")
    done = subprocess.run([sys.executable, "-m", "checks", "--inventory", str(variant), "--json", str(out)],
                          cwd=Path(__file__).resolve().parent.parent, capture_output=True, text=True,
                          timeout=600, check=False)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "caddy serves the router" in done.stdout


def test_second_caddy_apply_reports_no_changes(caddy, apply):
    variant, _ = caddy
    again = apply(inventory=variant)
    assert again.converged, again.output[-4000:]


def test_back_to_tailscale_serve_leaves_nothing_of_caddy(caddy, apply):
    _, caddyfile_before = caddy
    result = apply()
    assert result.returncode == 0, result.output[-4000:]
    assert in_lab("p620", "systemctl is-active caddy; systemctl is-enabled caddy").stdout.split() == [
        "inactive", "disabled"]
    assert sha256_on("p620", CADDYFILE) == caddyfile_before  # Debian's own Caddyfile is back
    assert in_lab("razer", f"test -e {RAZER_CA}").returncode == 1
    assert "-caddy" not in in_lab("razer", "ls /etc/ssl/certs").stdout
    assert router_status_from_razer(TAILNET_URL, with_key=True) == "200"
    assert run_checks()[0] == 0
