"""The test harness's own machinery (tests/conftest.py), where it changes how kernels run."""

import threading

import pytest
import torch
import triton
import triton.language as tl

import tritonconv
from conftest import DEVICE


@triton.jit
def _doubles_kernel(out_ptr, n, FAIL: tl.constexpr):
    tl.static_assert(not FAIL, "the kernel's own assertion")
    offs = tl.arange(0, 16)
    tl.store(out_ptr + offs, offs.to(tl.float32) * 2, mask=offs < n)


@pytest.mark.skipif(not tritonconv.INTERPRETER, reason="the interpreter's launch only")
def test_an_interpreted_launch_runs_on_a_thread_of_its_own_and_reports_back():
    """conftest's workaround for CPython's frame-chunk thrashing: the launch leaves the caller's
    thread, with the caller's grad and inference modes; its stores and its errors come back."""
    from triton.runtime.interpreter import GridExecutor

    assert getattr(GridExecutor.__call__, "on_a_fresh_thread", False)
    seen = []
    _doubles_kernel.add_pre_run_hook(lambda *args, **kwargs: seen.append(
        (threading.current_thread(), torch.is_grad_enabled(), torch.is_inference_mode_enabled())))
    try:
        for mode, grad, inference in ((torch.no_grad, False, False), (torch.enable_grad, True, False),
                                      (torch.inference_mode, False, True)):
            out = torch.full((16,), float("nan"), device=DEVICE)
            with mode():
                _doubles_kernel[(1,)](out, 10, FAIL=False)
            thread, *modes = seen.pop()
            assert thread is not threading.current_thread() and modes == [grad, inference], mode
            assert torch.equal(out[:10], torch.arange(10, dtype=torch.float32) * 2) and out[10:].isnan().all()
        with pytest.raises(Exception, match="the kernel's own assertion"):
            _doubles_kernel[(1,)](out, 10, FAIL=True)
    finally:
        _doubles_kernel.pre_run_hooks.clear()


def test_property_settings_fixed_by_default_and_scaled_at_random_with_fuzz(monkeypatch):
    """The property tests' settings: each one's examples, the same every run; with
    TRITONCONV_FUZZ = f, f times as many, drawn at random."""
    import conftest

    monkeypatch.setattr(conftest, "FUZZ", 0.0)
    fixed = conftest.property_settings(40)
    assert fixed.max_examples == 40 and fixed.derandomize and fixed.deadline is None and fixed.database is None
    monkeypatch.setattr(conftest, "FUZZ", 2.5)
    fuzz = conftest.property_settings(40)
    assert fuzz.max_examples == 100 and not fuzz.derandomize
