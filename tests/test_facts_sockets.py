import os
import shutil
import socket
import subprocess

import pytest

from facts.sockets import (
    ListeningSocket,
    ListeningSockets,
    listeners_on_port,
    parse_local_address,
    parse_process_column,
    parse_ss_listeners,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:11434", ("127.0.0.1", 11434, None)),
        ("0.0.0.0:4000", ("0.0.0.0", 4000, None)),
        ("*:4000", ("*", 4000, None)),
        ("[::]:22", ("::", 22, None)),
        ("[::1]:631", ("::1", 631, None)),
        ("127.0.0.53%lo:53", ("127.0.0.53", 53, "lo")),
        ("10.77.0.2%eth0:9000", ("10.77.0.2", 9000, "eth0")),
        ("[fe80::1]%enp1s0:22", ("fe80::1", 22, "enp1s0")),
        ("[fe80::1%enp1s0]:22", ("fe80::1", 22, "enp1s0")),
        ("0.0.0.0:*", None),
        ("noport", None),
        (":80", None),
    ],
)
def test_parse_local_address(text, expected):
    assert parse_local_address(text) == expected


def test_parse_process_column_dedupes_names_and_keeps_all_pids():
    text = 'users:(("litellm",pid=2215,fd=16),("litellm",pid=2210,fd=16),("python3",pid=7,fd=3))'
    assert parse_process_column(text) == (("litellm", "python3"), (2215, 2210, 7))
    assert parse_process_column("") == ((), ())


def test_rows_without_process_column_are_kept():
    (row,) = parse_ss_listeners(["LISTEN 0      128    0.0.0.0:2024 0.0.0.0:*"])
    assert row == ListeningSocket("0.0.0.0", 2024, None, (), ())


def test_wildcard_and_loopback_properties():
    rows = parse_ss_listeners(
        [
            "LISTEN 0 128 127.0.0.1:11434 0.0.0.0:*",
            "LISTEN 0 128 [::1]:631 [::]:*",
            "LISTEN 0 128 *:4000 *:*",
            "LISTEN 0 128 [::]:22 [::]:*",
            "LISTEN 0 128 192.168.1.20:4000 0.0.0.0:*",
        ]
    )
    assert [(row.is_loopback, row.is_wildcard) for row in rows] == [
        (True, False),
        (True, False),
        (False, True),
        (False, True),
        (False, False),
    ]


def test_listeners_on_port_filters_by_port_only():
    rows = parse_ss_listeners(
        [
            "LISTEN 0 128 127.0.0.1:4000 0.0.0.0:*",
            "LISTEN 0 128 127.0.0.1:11434 0.0.0.0:*",
            "LISTEN 0 128 [::]:4000 [::]:*",
        ]
    )
    assert [(row.address, row.port) for row in listeners_on_port(rows, 4000)] == [
        ("127.0.0.1", 4000),
        ("::", 4000),
    ]
    assert listeners_on_port(rows, 22) == ()


@pytest.mark.skipif(shutil.which("ss") is None, reason="ss not installed")
def test_real_ss_output_shows_our_loopback_listener():
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        output = subprocess.run(
            ListeningSockets().command().split(), capture_output=True, text=True, check=True
        )
        rows = listeners_on_port(parse_ss_listeners(output.stdout.splitlines()), port)
    assert [(row.address, row.port) for row in rows] == [("127.0.0.1", port)]
    # ss only names the owner when it may read our /proc entry (always true for root or the same user).
    assert os.getpid() in rows[0].pids
