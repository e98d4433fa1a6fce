"""deploys/op_order.py gives exactly pyinfra's operation order numbers, from the same call site."""

from __future__ import annotations

from types import SimpleNamespace

import pyinfra
import pytest
from pyinfra.api.util import get_operation_order_from_stack

from deploys import op_order


def both(state):
    # One line: both functions see the same caller frames and line numbers.
    return get_operation_order_from_stack(state), op_order.operation_order_from_frames(state)


def nested(depth: int, state):
    return both(state) if depth == 0 else nested(depth - 1, state)


@pytest.mark.parametrize("is_cli", [False, True])
@pytest.mark.parametrize("deploy_file", [None, __file__, "/nowhere/site.py"])
@pytest.mark.parametrize("depth", [0, 3])
def test_frame_order_equals_pyinfras(monkeypatch, is_cli, deploy_file, depth):
    monkeypatch.setattr(pyinfra, "is_cli", is_cli)
    state = SimpleNamespace(current_deploy_filename=deploy_file, current_op_file_number=7)
    original, fast = nested(depth, state)
    assert fast == original
    if deploy_file != "/nowhere/site.py":  # found (or not asked): the test's own frames are in it
        assert len(fast) > depth


def test_install_replaces_only_pyinfras_reference():
    pyinfra_operation = op_order.pyinfra_operation
    before = pyinfra_operation.get_operation_order_from_stack
    try:
        assert op_order.install() is True
        assert pyinfra_operation.get_operation_order_from_stack is op_order.operation_order_from_frames
        assert op_order.install() is True  # twice is fine
    finally:
        pyinfra_operation.get_operation_order_from_stack = before
