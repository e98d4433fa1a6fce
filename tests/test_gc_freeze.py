"""deploys/gc_freeze.py: the collector stops rescanning what was loaded, once, and again at exit."""

from __future__ import annotations

import subprocess
import sys

CODE = """
import atexit, gc
from deploys import gc_freeze
before = atexit._ncallbacks()
assert gc.get_freeze_count() == 0
gc_freeze.install()
frozen = gc.get_freeze_count()
gc_freeze.install()
print(frozen > 1000, gc.get_freeze_count() == frozen, atexit._ncallbacks() - before)
"""


def test_install_freezes_what_is_loaded_once_and_registers_the_exit_freeze_once():
    # A fresh interpreter: freezing is process-wide and cannot be undone for the test process.
    done = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["True", "True", "1"]
