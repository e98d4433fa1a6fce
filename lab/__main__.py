"""python -m lab up | down | status [--json] | ssh HOST [-- CMD] | exec NAME [--user USER] -- CMD | build

Environment: LAB_PREFIX and LAB_LAN_SUBNET / LAB_TAILNET_SUBNET / LAB_PUBLIC_SUBNET pick another instance;
LAB_INVENTORY another inventory; LAB_SERVER_FIREWALL=firewalld|ufw boots the gpu_server with that firewall
on, set up as a Fedora / Ubuntu admin has it (lab/firewall_hooks.py; unset: no host firewall).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from lab import core
from lab.artifacts import prepare_artifacts
from lab.config import lab_inventory_path
from lab.image import ensure_rootfs


def _print_status(report: dict) -> None:
    print(f"lab {report['prefix']!r}: {'up' if report['up'] else 'down'}")
    for host in report["hosts"]:
        interfaces = ", ".join(f"{i['name']} {i['address']}" for i in host["interfaces"])
        state = "running" if host["running"] else "stopped"
        print(f"  host {host['name']:8} {state:8} ssh root@{host['ssh']['hostname']}  [{interfaces}]")
    for peer in report["peers"]:
        interfaces = ", ".join(f"{i['segment']} {i['address']}" for i in peer["interfaces"])
        print(f"  peer {peer['name']:8} netns {peer['namespace']:12} [{interfaces}]")
    control = report["control"]
    print(f"  this machine: {control['interface']} {control['address']}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lab", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("up", help="build (once) and start the lab")
    commands.add_parser("down", help="stop the lab and remove everything it created")
    commands.add_parser("build", help="build the base image only")
    reboot_parser = commands.add_parser("reboot", help="shut a host down cleanly and boot it again")
    reboot_parser.add_argument("host")
    status_parser = commands.add_parser("status", help="hosts, peers, interfaces and addresses")
    status_parser.add_argument("--json", action="store_true")
    ssh_parser = commands.add_parser("ssh", help="ssh to a host the way pyinfra does")
    ssh_parser.add_argument("host")
    ssh_parser.add_argument("--user", default="root")
    ssh_parser.add_argument("remote_command", nargs="*")
    exec_parser = commands.add_parser("exec", help="run a command inside a host or a peer")
    exec_parser.add_argument("name")
    exec_parser.add_argument("--user")
    exec_parser.add_argument("exec_command", nargs="*")
    argv = sys.argv[1:] if argv is None else argv
    # Everything after the first "--" is the remote command, never options of ours.
    trailing: list[str] = []
    if "--" in argv:
        split = argv.index("--")
        argv, trailing = argv[:split], argv[split + 1 :]
    args = parser.parse_args(argv)

    try:
        if args.command == "up":
            started = time.monotonic()
            result = core.up()
            # What the lab's deploy uploads: the Ollama stand-in release and the LiteLLM wheelhouse.
            prepare_artifacts(lab_inventory_path())
            report = core.status()
            _print_status(report)
            verb = "already up" if result["reused"] else "up"
            states = ", ".join(f"{name}: {state}" for name, state in result["states"].items())
            print(f"lab {verb} in {time.monotonic() - started:.1f}s {states}")
            return 0
        if args.command == "down":
            started = time.monotonic()
            core.down()
            print(f"lab down in {time.monotonic() - started:.1f}s")
            return 0
        if args.command == "reboot":
            started = time.monotonic()
            state = core.reboot(args.host)
            print(f"{args.host} rebooted in {time.monotonic() - started:.1f}s: {state}")
            return 0
        if args.command == "build":
            core.require_capabilities()
            path, timings = ensure_rootfs()
            print(path, json.dumps(timings))
            return 0
        if args.command == "status":
            report = core.status()
            if args.json:
                print(json.dumps(report, indent=2))
            else:
                _print_status(report)
            return 0
        if args.command == "ssh":
            command = core.ssh_command(args.host, args.remote_command + trailing, user=args.user)
            os.execvp(command[0], command)
        if args.command == "exec":
            core.require_capabilities()
            command = core.exec_command(args.name, args.exec_command + trailing, user=args.user)
            os.execvp(command[0], command)
    except (core.LabError, KeyError, ValueError, RuntimeError, TimeoutError) as error:
        print(f"lab: {error.args[0] if error.args else error}", file=sys.stderr)
        return 2
    return 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BrokenPipeError:  # `status --json | head`
        sys.exit(0)
