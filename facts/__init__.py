"""Custom pyinfra facts for llm-router-deploy.

Every fact module follows pyinfra's own conventions: one ``FactBase`` subclass per
remote command, ``requires_command`` where a single binary is mandatory, and a
``process()`` that delegates to a pure ``parse_*`` function so the parsing is
unit-tested without a host. Results are frozen dataclasses; a missing tool or an
unreachable service gives an empty/``None`` result with a ``reason``, never an
exception.
"""
