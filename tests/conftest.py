"""Suite-wide guards: a test must not leave process-wide torch state changed for the next one."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _grad_mode_is_left_enabled():
    yield
    # Library code runs in-process here (flops, engine, eval): a global set_grad_enabled(False)
    # in it would silently break every later backward pass.
    assert torch.is_grad_enabled(), "the test left autograd disabled process-wide"
    torch.set_grad_enabled(True)
