"""Stand-ins for software the lab cannot fetch in its sandbox (no internet).

Each stand-in mimics the real program's interface closely enough for the
deploy's real code paths (download, verify, install, configure, query) to run
against it. They are stdlib-only Python because the lab containers have
python3 but no pip packages.

- ``ollama/``: the Ollama server, CLI and official Linux release tarballs.
- ``tailscale/``: the ``tailscale`` CLI and a ``tailscaled`` that serves HTTPS.
"""
