"""Project commands that are not a pyinfra run: `python -m deploys <command> [options]`.

    wheelhouse   the router's pinned LiteLLM wheels for an offline install (install_source: wheelhouse)

`python -m deploys <command> --help` describes each one. The deploy itself is
`pyinfra inventory/hosts.py deploys/site.py`.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from deploys import wheelhouse

COMMANDS: dict[str, Callable[[list[str]], int]] = {"wheelhouse": wheelhouse.main}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] in (["-h"], ["--help"]):
        print(__doc__)
        return 0
    if not argv or argv[0] not in COMMANDS:
        print(__doc__, file=sys.stderr)
        return 2
    return COMMANDS[argv[0]](argv[1:])


if __name__ == "__main__":
    sys.exit(main())
