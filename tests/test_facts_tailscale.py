import json
import shutil
import stat
import subprocess
from pathlib import Path

from facts.host_state import FactRequest, parse_state, state_command
from facts.tailscale import (
    ServeRoute,
    TailscaleServe,
    TailscaleServeStatus,
    TailscaleStatus,
    parse_tailscale_serve,
    parse_tailscale_status,
    serve_route_for_path,
    service_routes_for_path,
)

SERVE = {
    "TCP": {"443": {"HTTPS": True}, "80": {"HTTP": True}},
    "Web": {
        "p620.tail1234.ts.net:443": {"Handlers": {"/router": {"Proxy": "http://127.0.0.1:4000"}}},
        "p620.tail1234.ts.net:80": {"Handlers": {"/router": {"Proxy": "http://127.0.0.1:4001"}}},
    },
}


def test_serve_https_flag_comes_from_the_tcp_listener():
    routes = parse_tailscale_serve([json.dumps(SERVE)]).routes
    assert [(route.port, route.https, route.proxy) for route in routes] == [
        (443, True, "http://127.0.0.1:4000"),
        (80, False, "http://127.0.0.1:4001"),
    ]


def test_serve_route_for_path_matches_port_and_path():
    serve = parse_tailscale_serve([json.dumps(SERVE)])
    assert serve_route_for_path(serve, "/router").proxy == "http://127.0.0.1:4000"
    assert serve_route_for_path(serve, "/router", port=80).proxy == "http://127.0.0.1:4001"
    assert serve_route_for_path(serve, "/other") is None
    assert serve_route_for_path(TailscaleServe(True, ()), "/router") is None


def test_a_service_route_is_not_the_nodes_route():
    """The deploy maps /router on the node's name: a Tailscale Service serving it does not count."""
    serve = parse_tailscale_serve([json.dumps({"Services": {"svc:llm-router": {
        "TCP": {"443": {"HTTPS": True}},
        "Web": {"llm-router.tail1234.ts.net:443": {"Handlers": {"/router": {"Proxy": "http://127.0.0.1:4000"}}}}}}})])
    assert serve_route_for_path(serve, "/router") is None
    assert serve_route_for_path(serve, "/router", service="svc:llm-router").host == "llm-router.tail1234.ts.net"
    assert [route.service for route in service_routes_for_path(serve, "/router")] == ["svc:llm-router"]


def test_serve_garbage_is_reported_not_raised():
    serve = parse_tailscale_serve(["error: unexpected response", "{"])
    assert serve == TailscaleServe(True, (), "error: unexpected response")
    assert parse_tailscale_serve([]) == TailscaleServe(True, (), "tailscale printed nothing")


def test_status_running_property_and_ip_fallback_to_self():
    node = parse_tailscale_status(
        [
            json.dumps(
                {
                    "BackendState": "Running",
                    "Self": {"DNSName": "razer.tail1234.ts.net.", "TailscaleIPs": ["100.90.80.70"]},
                }
            )
        ]
    )
    assert node.running and node.dns_name == "razer.tail1234.ts.net"
    assert node.tailscale_ips == ("100.90.80.70",)
    assert node.online is None


def test_status_ignores_an_ip_string_instead_of_a_list():
    node = parse_tailscale_status([json.dumps({"BackendState": "Running", "TailscaleIPs": "100.1.1.1"})])
    assert node.tailscale_ips == ()


def test_status_with_wrong_types_does_not_raise():
    node = parse_tailscale_status(
        [json.dumps({"BackendState": 3, "Self": "x", "TailscaleIPs": [1, "100.1.1.1"]})]
    )
    assert (node.backend_state, node.dns_name, node.tailscale_ips, node.running) == (
        None,
        None,
        ("100.1.1.1",),
        False,
    )


# --- the commands, run locally with and without a fake tailscale CLI -------------------------


def _run(command: str, bin_dir: Path) -> list[str]:
    if not (bin_dir / "base64").exists():
        (bin_dir / "base64").symlink_to(shutil.which("base64"))  # the framing's (facts/sections.py)
    result = subprocess.run(
        ["/bin/sh", "-c", command], env={"PATH": str(bin_dir)}, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0  # a failing tailscale must not fail the fact
    return result.stdout.splitlines()


def _fake_tailscale(bin_dir: Path, stdout: str, stderr: str = "", code: int = 0) -> None:
    script = bin_dir / "tailscale"
    script.write_text(f"#!/bin/sh\nprintf '%s' '{stdout}'\nprintf '%s\\n' '{stderr}' >&2\nexit {code}\n")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)


def test_commands_without_tailscale(tmp_path):
    assert (
        TailscaleStatus().process(_run(TailscaleStatus().command(), tmp_path)).reason
        == "tailscale is not installed"
    )
    serve = TailscaleServeStatus().process(_run(TailscaleServeStatus().command(), tmp_path))
    assert (serve.installed, serve.reason) == (False, "tailscale is not installed")


def test_command_keeps_the_daemon_error_and_succeeds(tmp_path):
    _fake_tailscale(tmp_path, "", "failed to connect to local tailscaled", code=1)
    node = TailscaleStatus().process(_run(TailscaleStatus().command(), tmp_path))
    assert (node.installed, node.reason) == (True, "failed to connect to local tailscaled")


def test_serve_command_reads_the_cli_json(tmp_path):
    _fake_tailscale(tmp_path, json.dumps(SERVE))
    serve = TailscaleServeStatus().process(_run(TailscaleServeStatus().command(), tmp_path))
    assert serve.routes[0] == ServeRoute(
        443, True, "p620.tail1234.ts.net", "/router", "http://127.0.0.1:4000", False
    )


def test_serve_status_reads_the_same_inside_the_batched_state(tmp_path):
    """HostState frames the fact's command (itself framed) in its own section."""
    _fake_tailscale(tmp_path, json.dumps(SERVE))
    snapshot = parse_state(_run(state_command(facts=(FactRequest.of(TailscaleServeStatus),)), tmp_path))
    assert snapshot.get(TailscaleServeStatus) == TailscaleServeStatus().process(
        _run(TailscaleServeStatus().command(), tmp_path))
    assert snapshot.get(TailscaleServeStatus).routes[0].proxy == "http://127.0.0.1:4000"
