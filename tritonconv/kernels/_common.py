"""Pieces every kernel family shares: program ordering, output allocation, modes.

Nothing here knows about torch.library; nothing here knows about tile sizes.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

__all__ = [
    "INTERPRETER",
    "grouped_pid",
    "alloc_output",
    "acc_dtype_for",
    "input_precision_for",
    "check_device",
    "set_poison_outputs",
]


@triton.jit
def _probe():
    pass


# Triton decides at decoration time whether @triton.jit builds GPU code or an
# interpreted function (TRITON_INTERPRET=1); ask the decorated probe instead of
# re-reading the environment, so we agree with Triton even if it changed later.
INTERPRETER: bool = type(_probe).__name__ == "InterpretedFunction"


@triton.jit
def grouped_pid(pid, num_pid_m, num_pid_n, GROUP_M: tl.constexpr):
    """Map a linear program id to (pid_m, pid_n) in GROUP_M-row bands.

    Consecutive programs walk down a band of GROUP_M row-tiles before moving
    right, so the B tiles (weights) they share are still in L2 when reused.
    """
    width = GROUP_M * num_pid_n
    band = pid // width
    first_m = band * GROUP_M
    band_rows = tl.minimum(num_pid_m - first_m, GROUP_M)
    pid_m = first_m + ((pid % width) % band_rows)
    pid_n = (pid % width) // band_rows
    return pid_m, pid_n


_POISON_OUTPUTS = False


def set_poison_outputs(enabled: bool) -> bool:
    """Fill every freshly allocated kernel output with NaN (for tests). Returns the old value."""
    global _POISON_OUTPUTS
    old, _POISON_OUTPUTS = _POISON_OUTPUTS, bool(enabled)
    return old


def alloc_output(shape, dtype, device, memory_format=torch.contiguous_format) -> torch.Tensor:
    """Allocate a kernel output; poisoned with NaN when tests ask for it."""
    out = torch.empty(shape, dtype=dtype, device=device, memory_format=memory_format)
    if _POISON_OUTPUTS:
        out.fill_(float("nan"))
    return out


def acc_dtype_for(dtype: torch.dtype):
    """fp32 accumulation for 16/32-bit inputs, fp64 for fp64."""
    return tl.float64 if dtype == torch.float64 else tl.float32


def input_precision_for(t: torch.Tensor) -> str:
    """TF32 for fp32 exactly when F.conv2d would use it (cuDNN's allow_tf32, on CUDA)."""
    if t.dtype == torch.float32 and t.is_cuda and torch.backends.cudnn.allow_tf32:
        return "tf32"
    return "ieee"


def check_device(*tensors: torch.Tensor) -> None:
    """Kernels run on CUDA tensors, or on any tensor under Triton's interpreter."""
    if INTERPRETER:
        return
    for t in tensors:
        if t is not None and not t.is_cuda:
            raise RuntimeError(
                f"tritonconv kernels need CUDA tensors, got a tensor on {t.device}. To run on the CPU "
                "through Triton's interpreter, set TRITON_INTERPRET=1 in the environment before "
                "tritonconv (or triton) is imported."
            )
