"""pyinfra's operation order, read from the call stack without `inspect.stack()`.

pyinfra orders operations by the line numbers of the call stack at each operation
call (`pyinfra.api.util.get_operation_order_from_stack`). It builds them with
`inspect.stack()`, which also resolves every frame's module and reads source lines:
~1.5 ms per operation, about a tenth of a no-op re-apply here. The same numbers
come straight from the frames. Installed by deploys/site.py (the smallest hook:
one function reference in pyinfra's operation module); worth offering upstream.
"""

from __future__ import annotations

import importlib
import sys

import pyinfra
from pyinfra.api.util import PYINFRA_INSTALL_DIR, get_operation_order_from_stack

# The module (pyinfra.api also exports a function named `operation`).
pyinfra_operation = importlib.import_module("pyinfra.api.operation")


def operation_order_from_frames(state) -> list[int]:
    """What get_operation_order_from_stack returns, for the same caller."""
    frames = []
    frame = sys._getframe(1)  # the caller, as inspect.stack() inside pyinfra's function starts there too
    while frame is not None:
        frames.append(frame)
        frame = frame.f_back
    frames.reverse()

    start = 0
    if state.current_deploy_filename:
        # Like pyinfra: from the first frame of the deploy file on; not found, pyinfra keeps only
        # its own innermost frame, which it then leaves out: nothing.
        start = next((index for index, frame in enumerate(frames)
                      if frame.f_code.co_filename == state.current_deploy_filename), len(frames))

    line_numbers = [state.current_op_file_number] if pyinfra.is_cli else []
    line_numbers += [frame.f_lineno for frame in frames[start:]
                     if not frame.f_code.co_filename.startswith(PYINFRA_INSTALL_DIR)]
    return line_numbers


def install() -> bool:
    """Use the frame-based order in pyinfra's operation wrapper; False if pyinfra changed shape."""
    if getattr(pyinfra_operation, "get_operation_order_from_stack", None) is not get_operation_order_from_stack:
        return pyinfra_operation.get_operation_order_from_stack is operation_order_from_frames
    pyinfra_operation.get_operation_order_from_stack = operation_order_from_frames
    return True
