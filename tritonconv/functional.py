"""The functional API: the same signatures as torch.nn.functional.

These wrappers only resolve what the aten schema cannot express ('same' /
'valid' padding strings, an asymmetric 'same'), then call the registered ops,
so autograd, torch.compile and torch.export see ``torch.ops.tritonconv.*``;
a call the dispatcher would only pass on (no autograd, tracing, mode or
autocast: ``ops.direct_ok``) runs on the op's implementation directly.
"""

from __future__ import annotations

from typing import Optional, Union

import torch
import torch.nn.functional as F

from . import ops as _ops  # registers torch.ops.tritonconv
from . import spec

__all__ = ["conv2d", "conv_transpose2d"]


def conv2d(
    input: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor] = None,
    stride: spec.IntPair = 1,
    padding: Union[str, spec.IntPair] = 0,
    dilation: spec.IntPair = 1,
    groups: int = 1,
    *,
    activation: Optional[str] = None,
    residual: Optional[torch.Tensor] = None,
    negative_slope: float = 0.01,
) -> torch.Tensor:
    """2-D convolution, a drop-in for ``torch.nn.functional.conv2d``, with an optional fused epilogue.

    Accepts everything F.conv2d does: int or pair stride/padding/dilation,
    padding='same' or 'valid', groups, optional bias, unbatched (C, H, W) input.

    With ``activation`` and/or ``residual`` it computes
    ``act(conv2d(input, weight) + bias + residual)`` in one kernel (the add and
    the activation happen before the single store). Activations: "relu",
    "silu", "gelu" (erf), "gelu_tanh", "leaky_relu" (``negative_slope``),
    "hardswish", "sigmoid". ``residual`` has the output's shape or broadcasts
    to it (a per-channel or per-row term, say), as in ``conv + residual``.
    """
    spec.check_argument_types(input, weight, bias, groups)
    stride_p, dilation_p = spec.pair(stride, "stride"), spec.pair(dilation, "dilation")
    if isinstance(padding, str):
        # validate the string form here: the op below only sees the resolved ints
        spec.conv2d_problem(spec.as_batched(input), weight, bias, stride, padding, dilation, groups)
        before, after = spec.resolve_padding(padding, tuple(weight.shape[2:]), stride_p, dilation_p)
        if before != after:
            # 'same' with an even effective kernel: F.conv2d pads one extra row /
            # column at the bottom / right; the aten schema only has symmetric
            # padding, so add that extra row / column first.
            extra_h, extra_w = after[0] - before[0], after[1] - before[1]
            input = F.pad(input, (0, extra_w, 0, extra_h))
        padding = before
    conv_args = (list(stride_p), list(spec.pair(padding, "padding")), list(dilation_p), groups)
    if activation is None and residual is None:
        return _ops.call("conv2d", (input, weight, bias), input, weight, bias, *conv_args)
    if isinstance(residual, torch.Tensor):
        residual = _broadcast_residual(input, weight, conv_args, residual)
    return _ops.call(
        "conv2d_fused", (input, weight, bias, residual),
        input, weight, bias, *conv_args, activation or "none", float(negative_slope), residual,
    )


def _broadcast_residual(input, weight, conv_args, residual: torch.Tensor) -> torch.Tensor:
    """A residual that broadcasts to the conv's output shape, expanded to it: stride-0 dimensions,
    no copy, which the kernel reads as they are. Any other shape is left for the op to refuse."""
    problem = spec.conv2d_problem(spec.as_batched(input), weight, None, *conv_args)
    out_shape = problem.output_shape if input.dim() == 4 else problem.output_shape[1:]
    if tuple(residual.shape) == out_shape:
        return residual
    try:
        broadcast = tuple(torch.broadcast_shapes(residual.shape, out_shape))
    except RuntimeError:
        return residual
    return residual.expand(out_shape) if broadcast == out_shape else residual


def conv_transpose2d(
    input: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor] = None,
    stride: spec.IntPair = 1,
    padding: spec.IntPair = 0,
    output_padding: spec.IntPair = 0,
    groups: int = 1,
    dilation: spec.IntPair = 1,
) -> torch.Tensor:
    """Transposed 2-D convolution, a drop-in for ``torch.nn.functional.conv_transpose2d``."""
    spec.check_argument_types(input, weight, bias, groups)
    return _ops.call(
        "conv_transpose2d", (input, weight, bias), input, weight, bias,
        list(spec.pair(stride, "stride")), list(spec.pair(padding, "padding")),
        list(spec.pair(output_padding, "output_padding")), groups, list(spec.pair(dilation, "dilation")),
    )
