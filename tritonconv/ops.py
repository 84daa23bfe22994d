"""torch.library registration: schemas, fake implementations, autograd.

This module knows nothing of tile sizes: it validates once (``spec``), then
calls the launchers in ``kernels``. The schemas are aten's own, so
``torch.ops.tritonconv.conv2d`` is a drop-in for ``torch.ops.aten.conv2d``.
"""

from __future__ import annotations

from typing import List, Optional, Sequence

import torch

from . import spec
from .kernels.fprop import conv2d_fprop

__all__ = ["conv2d"]

_CONV2D_SCHEMA = (
    "(Tensor input, Tensor weight, Tensor? bias=None, SymInt[2] stride=1, SymInt[2] padding=0, "
    "SymInt[2] dilation=1, SymInt groups=1) -> Tensor"
)


def _problem(input, weight, bias, stride, padding, dilation, groups) -> spec.Conv2dProblem:
    return spec.conv2d_problem(spec.as_batched(input), weight, bias, stride, padding, dilation, groups)


@torch.library.custom_op("tritonconv::conv2d", mutates_args=(), schema=_CONV2D_SCHEMA)
def conv2d(
    input: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor] = None,
    stride: Sequence[int] = (1, 1),
    padding: Sequence[int] = (0, 0),
    dilation: Sequence[int] = (1, 1),
    groups: int = 1,
) -> torch.Tensor:
    problem = _problem(input, weight, bias, stride, padding, dilation, groups)
    out = conv2d_fprop(spec.as_batched(input), weight, bias, problem)
    return out.squeeze(0) if input.dim() == 3 else out


@conv2d.register_fake
def _conv2d_fake(input, weight, bias=None, stride=(1, 1), padding=(0, 0), dilation=(1, 1), groups=1):
    problem = _problem(input, weight, bias, stride, padding, dilation, groups)
    fmt = spec.output_memory_format(spec.as_batched(input), weight)
    out = torch.empty(problem.output_shape, dtype=input.dtype, device=input.device, memory_format=fmt)
    return out.squeeze(0) if input.dim() == 3 else out


def _conv2d_setup_context(ctx, inputs, output):
    input, weight, bias, stride, padding, dilation, groups = inputs
    ctx.save_for_backward(input, weight)
    ctx.has_bias = bias is not None
    ctx.conv_args = (list(stride), list(padding), list(dilation), groups)


def _conv2d_backward(ctx, grad_output):
    input, weight = ctx.saved_tensors
    stride, padding, dilation, groups = ctx.conv_args
    need_input, need_weight, need_bias = ctx.needs_input_grad[:3]
    unbatched = input.dim() == 3
    x = spec.as_batched(input)
    gy = spec.as_batched(grad_output)
    grad_input, grad_weight, grad_bias = torch.ops.aten.convolution_backward(
        gy, x, weight, [weight.shape[0]] if ctx.has_bias else None,
        stride, padding, dilation, False, [0, 0], groups,
        [need_input, need_weight, need_bias and ctx.has_bias],
    )
    if unbatched and grad_input is not None:
        grad_input = grad_input.squeeze(0)
    return grad_input, grad_weight, grad_bias, None, None, None, None


conv2d.register_autograd(_conv2d_backward, setup_context=_conv2d_setup_context)
