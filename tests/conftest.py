"""Shared test setup: device, interpreter, output poisoning, tolerances.

Without a GPU the real kernels run on CPU tensors through Triton's interpreter,
which Triton only enables if TRITON_INTERPRET=1 is set before it is imported;
that is why this file sets it before anything imports triton or tritonconv.
With CUDA the kernels are compiled and the tests run on CUDA tensors.

Helpers (import them with ``from conftest import ...``):
  DEVICE, CUDA            where the tests run
  TOL, tol(dtype)         relative-error tolerance per dtype
  DTYPES                  dtypes to parametrize over (all four run under the interpreter too)
  rel_err(out, ref)       ||out - ref|| / ||ref|| in float64
  assert_matches(out, ref, dtype)
  DispatchedOps            a dispatch mode recording the name of every op that reaches it
"""

from __future__ import annotations

import ctypes
import functools
import os
import sys
import threading
import zlib

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

CUDA = torch.cuda.is_available()
# The tests check results, not speed: on CUDA each launch compiles one config instead of
# autotuning a dozen, and the router runs the most specialised family (tritonconv.configs.TUNE;
# under the interpreter that is so anyway). The sweeps and `tritonconv tune` tune as usual.
# Read when tritonconv is imported, below; a test of tuning itself sets configs.TUNE.
os.environ.setdefault("TRITONCONV_TUNE", "0")
if not CUDA:
    if "triton" in sys.modules and os.environ.get("TRITON_INTERPRET") != "1":
        raise pytest.UsageError("triton was imported before tests/conftest.py could set TRITON_INTERPRET=1")
    os.environ.setdefault("TRITON_INTERPRET", "1")

import tritonconv  # noqa: E402  (after TRITON_INTERPRET is set)
from tritonconv import plans  # noqa: E402
from tritonconv.kernels import router  # noqa: E402
from tritonconv.kernels._common import set_poison_outputs  # noqa: E402

if not CUDA and not tritonconv.INTERPRETER:
    raise pytest.UsageError(
        "no CUDA device and Triton's interpreter is off (TRITON_INTERPRET="
        f"{os.environ.get('TRITON_INTERPRET')!r}); unset it or set it to 1 to run the tests on CPU"
    )

DEVICE = torch.device("cuda" if CUDA else "cpu")


def _interpret_on_a_fresh_thread(call):
    """Triton's interpreted launch (``GridExecutor.__call__``), run on a thread of its own.

    CPython 3.11 and 3.12 keep a thread's Python frames in 16 KiB chunks and free a chunk as
    soon as the frame that opened it returns (python/cpython#142183; 3.13 and 3.14 releases
    since March 2026 keep one spare). When the interpreter's hot calls (a tl op, the semantic
    layer, numpy) go back and forth across a chunk's edge, every call maps and unmaps 16 KiB.
    Where the edge falls depends on how deep the launch is called: under pytest and hypothesis
    one launch of the depthwise dgrad made 1.37 million mmap/munmap pairs and took 22 s, the
    same launch 4 s from a plain test (Python 3.11.7, Triton 3.9). A new thread's frames start
    in its first chunk, which CPython never frees, and a launch's frames stay inside it. The
    whole suite, one run each on this 2-core machine: 12 min 5 s before, 10 min 18 s after.

    The caller's grad and inference modes go with it (torch keeps both per thread; the launch
    copies storages, whose checks read them). Nothing else per thread matters here: autocast,
    dispatch and function modes and functorch's transforms are already suspended or unwrapped
    inside the custom ops that launch, and tritonconv's own thread-local settings are read on
    the caller's side. The launch's exception, if any, is raised in the caller; an exception
    that interrupts the wait (pytest-timeout's signal, Ctrl-C) is raised in the launch too, so
    that it stops before the next test's launch patches the same interpreter."""
    @functools.wraps(call)
    def run(self, *args, **kwargs):
        grad, inference = torch.is_grad_enabled(), torch.is_inference_mode_enabled()
        outcome = {}

        def launch():
            try:
                with torch.inference_mode(inference), torch.set_grad_enabled(grad):
                    outcome["value"] = call(self, *args, **kwargs)
            except BaseException as exc:  # noqa: BLE001  (handed to the caller's thread)
                outcome["error"] = exc

        worker = threading.Thread(target=launch, name="triton-interpreter", daemon=True)
        worker.start()
        try:
            worker.join()
        except BaseException as exc:
            ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(worker.ident), ctypes.py_object(type(exc)))
            worker.join()
            raise
        if "error" in outcome:
            raise outcome.pop("error")
        return outcome.get("value")

    run.on_a_fresh_thread = True
    return run


if tritonconv.INTERPRETER:
    from triton.runtime import interpreter as _interpreter

    _interpreter.GridExecutor.__call__ = _interpret_on_a_fresh_thread(_interpreter.GridExecutor.__call__)

# The kernel computes fp32 in TF32 exactly when F.conv2d does (cuDNN's flag, on CUDA).
FP32_TF32 = CUDA and torch.backends.cudnn.allow_tf32

# Relative error (Frobenius norm) allowed against float64 F.conv2d on the same
# (already rounded) inputs: output rounding plus accumulation order. The largest
# errors the suite sees under the interpreter are fp64 6e-16, fp32 2e-7 and fp16
# 2.3e-4 (20x margin or more). TF32 rounds the fp32 operands to a 10-bit mantissa
# inside the product, which the reference (on the unrounded operands) sees as
# ~5e-4 error; bf16 outputs carry an 8-bit mantissa. Hence their wider bounds.
TOL = {
    torch.float64: 1e-12,
    torch.float32: 5e-3 if FP32_TF32 else 1e-5,
    torch.float16: 5e-3,
    torch.bfloat16: 3e-2,
}

DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]


def tol(dtype: torch.dtype) -> float:
    return TOL[dtype]


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """||out - ref|| / ||ref|| in float64; the absolute error when ref is all zeros."""
    out64, ref64 = out.detach().to(torch.float64), ref.detach().to(torch.float64)
    diff = torch.linalg.vector_norm(out64 - ref64).item()
    denom = torch.linalg.vector_norm(ref64).item()
    return diff / denom if denom > 0 else diff


def assert_matches(out: torch.Tensor, ref: torch.Tensor, dtype: torch.dtype) -> None:
    """Same shape, every element written (finite), and within dtype's tolerance."""
    assert out.shape == ref.shape, f"shape {tuple(out.shape)} != reference {tuple(ref.shape)}"
    assert out.dtype == dtype, f"output dtype {out.dtype}, expected {dtype}"
    assert out.device.type == ref.device.type
    assert torch.isfinite(out).all(), f"{(~torch.isfinite(out)).sum().item()} non-finite (unwritten?) elements"
    err = rel_err(out, ref)
    assert err <= tol(dtype), f"relative error {err:.3e} > {tol(dtype):.0e} for {dtype}"


# The property tests (hypothesis) draw the same examples every run, so that CI's time and verdict
# are fixed. A longer hunt, e.g. before a release: TRITONCONV_FUZZ=10 python -m pytest -k property
# draws ten times each test's examples at random (another seed each run; pytest's
# --hypothesis-seed=N repeats one).
FUZZ = float(os.environ.get("TRITONCONV_FUZZ", "0") or 0)


def property_settings(max_examples: int, **kwargs):
    """hypothesis settings for a property test: ``max_examples`` drawn the same way every run, or,
    with TRITONCONV_FUZZ set, that many times more drawn at random; no deadline (the interpreter is
    slow) and no example database. ``kwargs``: more settings (suppress_health_check)."""
    from hypothesis import settings

    return settings(max_examples=max(1, round(max_examples * FUZZ)) if FUZZ > 0 else max_examples,
                    derandomize=FUZZ <= 0, deadline=None, database=None, **kwargs)


class DispatchedOps(TorchDispatchMode):
    """Records (``.ops``) every op that reaches the dispatcher below autograd."""

    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(str(func))
        return func(*args, **(kwargs or {}))


def pytest_configure(config):
    # F.conv2d (the reference) warns that it copies the input for an even 'same'; expected here.
    config.addinivalue_line(
        "filterwarnings", "ignore:Using padding='same' with even kernel lengths:UserWarning"
    )


@pytest.fixture
def device() -> torch.device:
    return DEVICE


@pytest.fixture(autouse=True)
def poison_outputs():
    """Every kernel output starts as NaN, so an element the kernel skips fails the test."""
    old = set_poison_outputs(True)
    yield
    set_poison_outputs(old)


@pytest.fixture(autouse=True)
def fresh_plans():
    """No launch plan (tritonconv.plans) carries over from another test: a test that counts its
    launches or patches a launcher sees the full path on its first call with each key. Nor does
    a family the router dropped for not being deterministic."""
    plans.clear()
    router._dropped.clear()
    yield
    plans.clear()
    router._dropped.clear()


@pytest.fixture(autouse=True)
def seed(request):
    """Fresh random data per test, reproducible per test id."""
    torch.manual_seed(zlib.crc32(request.node.nodeid.encode()))
