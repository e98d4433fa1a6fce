"""LAB STAND-IN for Tailscale (https://tailscale.com), not the real thing.

Why: the lab has no internet and no coordination server, so real tailscale can
neither be installed nor join a tailnet. The lab wires a `tailscale0` segment
itself; this package provides what the deploy touches on top of it:

- ``cli``: a `tailscale` command (status [--json], ip, up, down, version,
  serve --bg ..., serve status [--json], serve reset) with the real JSON shapes;
- ``daemon``: a `tailscaled` that runs a REAL HTTPS listener on the tailnet
  address(es) for `tailscale serve`, proxying each mount point to its target with
  the prefix stripped and streaming responses (SSE) through;
- ``ca``: a lab CA and the node's `<host>.<tailnet>.ts.net` certificate (openssl);
- ``install``: writes the launchers, package and `tailscaled.service` into a root.

Stdlib only (the lab containers have python3 but no pip packages).
"""
