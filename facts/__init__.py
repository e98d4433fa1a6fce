"""Custom pyinfra facts for llm-router-deploy.

Every fact module follows pyinfra's own conventions: one ``FactBase`` subclass per
remote command, ``requires_command`` where a single binary is mandatory, and a
``process()`` that delegates to a pure ``parse_*`` function so the parsing is
unit-tested without a host. Results are frozen dataclasses; a missing tool or an
unreachable service gives an empty/``None`` result with a ``reason``, never an
exception.

``host_state.HostState`` runs many facts in one remote command: each is a
``sections.SectionFact`` (its command, and a parser that may read its exit status),
framed by ``sections.framed`` and parsed from its own section. A standalone fact
whose command runs several probes (gpu, ollama, tailscale, firewall) frames each
probe the same way and reads them back with ``sections.split_sections``.
"""
