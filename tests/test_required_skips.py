"""With LAB_REQUIRED=1 (./dev test, CI) a skipped test fails the session; without it, it stays a skip."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

SUITE = '''
import pytest

def test_passes():
    pass

def test_skips_for_a_missing_tool():
    pytest.skip("no such tool on this machine")
'''


@pytest.mark.parametrize("required, expected_status", [("1", 1), ("", 0)])
def test_a_skip_fails_the_session_only_when_the_lab_is_required(tmp_path, required, expected_status):
    shutil.copy(REPO / "tests" / "conftest.py", tmp_path / "conftest.py")
    (tmp_path / "test_suite.py").write_text(SUITE)
    env = {**os.environ, "LAB_REQUIRED": required, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == expected_status, done.stdout + done.stderr
    assert "1 passed, 1 skipped" in done.stdout
    named = "test_suite.py::test_skips_for_a_missing_tool was skipped (Skipped: no such tool on this machine)"
    assert (named in done.stdout) == (required == "1"), done.stdout
