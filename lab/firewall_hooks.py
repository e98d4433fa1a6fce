"""Before-boot hook: the gpu_server runs firewalld or ufw, the way a Fedora or Ubuntu admin has it.

`LAB_SERVER_FIREWALL=firewalld|ufw python -m lab up` (unset: no host firewall, the default lab). Both are
in the base image, off (lab/image.py); this turns one on for hosts with the gpu_server role only:

- firewalld: enabled with the stock default zone `public` (ssh and dhcpv6-client, everything else
  rejected) for the LAN and wan0, and the tailnet interface bound to the stock `internal` zone, so the
  deploy has two zones to open the router port in.
- ufw: at first boot `ufw allow OpenSSH` then `ufw --force enable` (default deny incoming, allow
  outgoing), run by a oneshot exactly as an admin types it, so ufw writes its own rule files.

One lab-only allowance on both: https (443) on the tailnet interface. Real tailscaled answers
`tailscale serve` in userspace before packets reach the host firewall; the lab's tailscale stand-in
listens on the kernel interface instead, where the host firewall would refuse it.
"""

from __future__ import annotations

from pathlib import Path

from lab.config import LabHost, server_firewall
from lab.upper_layer import ensure_upper_dir, write_upper_file

FIREWALLD_UNIT = "/lib/systemd/system/firewalld.service"
# What `systemctl enable firewalld` creates: the wants link and its D-Bus alias.
FIREWALLD_LINKS = (
    "etc/systemd/system/multi-user.target.wants/firewalld.service",
    "etc/systemd/system/dbus-org.fedoraproject.FirewallD1.service",
)

# The stock internal zone (firewalld 1.3, /usr/lib/firewalld/zones/internal.xml) with the tailnet
# interface bound to it and the lab's https allowance.
FIREWALLD_INTERNAL_ZONE = """\
<?xml version="1.0" encoding="utf-8"?>
<zone>
  <short>Internal</short>
  <description>For use on internal networks (lab: the tailnet; https is tailscale serve).</description>
  <interface name="{interface}"/>
  <service name="ssh"/>
  <service name="mdns"/>
  <service name="samba-client"/>
  <service name="dhcpv6-client"/>
  <service name="https"/>
  <forward/>
</zone>
"""

UFW_SETUP_UNIT = "lab-ufw-setup.service"
UFW_SETUP_DONE = "/var/lib/lab/ufw-setup-done"
# After ufw.service (which loads nothing while ENABLED=no) and before sshd: the admin's setup is in
# place by the time anything logs in, and only once (the marker survives reboots in the upper layer).
UFW_SETUP = """\
[Unit]
Description=Lab: enable ufw the way an Ubuntu admin does (allow OpenSSH, then enable)
After=ufw.service
Before=ssh.service
ConditionPathExists=!{done}

[Service]
Type=oneshot
ExecStart=/usr/sbin/ufw allow OpenSSH
{tailnet_https}ExecStart=/usr/sbin/ufw --force enable
ExecStart=/bin/sh -c 'mkdir -p {done_dir} && touch {done}'

[Install]
WantedBy=multi-user.target
"""


def _link(upper: Path, base: Path, relative: str, target: str) -> None:
    link = ensure_upper_dir(upper, base, Path(relative).parent) / Path(relative).name
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(target)


def enable_server_firewall(host: LabHost, upper: Path, base: Path) -> None:
    firewall = server_firewall()
    if firewall is None or "gpu_server" not in host.roles:
        return
    if firewall == "firewalld":
        for relative in FIREWALLD_LINKS:
            _link(upper, base, relative, FIREWALLD_UNIT)
        if host.tailnet_interface:
            write_upper_file(upper, base, "/etc/firewalld/zones/internal.xml",
                             FIREWALLD_INTERNAL_ZONE.format(interface=host.tailnet_interface))
    elif firewall == "ufw":
        tailnet_https = (f"ExecStart=/usr/sbin/ufw allow in on {host.tailnet_interface} to any port 443 proto tcp "
                         "comment 'lab: tailscale serve'\n" if host.tailnet_interface else "")
        unit = UFW_SETUP.format(done=UFW_SETUP_DONE, done_dir=Path(UFW_SETUP_DONE).parent, tailnet_https=tailnet_https)
        write_upper_file(upper, base, f"/etc/systemd/system/{UFW_SETUP_UNIT}", unit)
        _link(upper, base, f"etc/systemd/system/multi-user.target.wants/{UFW_SETUP_UNIT}",
              f"/etc/systemd/system/{UFW_SETUP_UNIT}")
