"""`python -m deploys <command>`: the project commands outside a pyinfra run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def deploys_command(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "deploys", *args], cwd=REPO, capture_output=True, text=True,
                          check=False, timeout=60)


def test_wheelhouse_command_reaches_the_wheelhouse_with_its_options(tmp_path):
    # A refused pin fails before any download: the options arrived and the wheelhouse judged them.
    done = deploys_command("wheelhouse", "--version", "1.107.0", "--dest", str(tmp_path / "wheels"))
    assert done.returncode == 1
    assert "wheelhouse: litellm 1.107.0 was a compromised release" in done.stderr
    assert not (tmp_path / "wheels").exists()


def test_an_unknown_command_lists_the_commands():
    done = deploys_command("wheelhose")
    assert done.returncode == 2
    assert "wheelhouse" in done.stderr and done.stdout == ""
