"""The article's baselines: conv2d as one explicit im2col plus one matmul.

The project started from an article that builds the column matrix (every
receptive field flattened into a row) and multiplies it by the flattened
kernel, once by hand and once with ``nn.Unfold``. Both are kept here,
generalised to stride, padding (ints, pairs, 'same', 'valid'), dilation,
groups and bias, and vectorised: the only Python loops are over nothing
per-element. They *materialise* the column matrix of N*P*Q x C*R*S elements;
that memory and traffic is what the implicit-GEMM kernels avoid.

They run on any device and dtype torch supports, and serve as baselines in
perf/ and as cross-checks in tests.
"""

from __future__ import annotations

from typing import Optional, Union

import torch
import torch.nn.functional as F

from . import spec

__all__ = ["im2col", "conv2d_im2col", "conv2d_unfold"]


def _prepare(input, weight, bias, stride, padding, dilation, groups):
    """Validate like F.conv2d and pad the input explicitly (both sides)."""
    unbatched = isinstance(input, torch.Tensor) and input.dim() == 3
    x = spec.as_batched(input)
    problem = spec.conv2d_problem(x, weight, bias, stride, padding, dilation, groups)
    R, S = weight.shape[2:]
    before, after = spec.resolve_padding(padding, (R, S), (problem.stride_h, problem.stride_w),
                                         (problem.dil_h, problem.dil_w))
    return x, problem, before, after, unbatched


def im2col(x: torch.Tensor, problem: spec.Conv2dProblem, before, after) -> torch.Tensor:
    """The column matrix, materialised: (groups, N*P*Q, C/groups*R*S).

    Row m = (n, p, q) holds the receptive field of output pixel (p, q) of image
    n, flattened in (c, r, s) order, the order of ``weight.reshape(K, -1)``.
    """
    pb = problem
    xp = F.pad(x, (before[1], after[1], before[0], after[0])).contiguous()
    sN, sC, sH, sW = xp.stride()
    # A strided view (N, C, R, S, P, Q): element [n, c, r, s, p, q] is
    # xp[n, c, p*stride_h + r*dil_h, q*stride_w + s*dil_w]; no copy yet.
    windows = xp.as_strided(
        (pb.N, pb.C, pb.R, pb.S, pb.P, pb.Q),
        (sN, sC, sH * pb.dil_h, sW * pb.dil_w, sH * pb.stride_h, sW * pb.stride_w),
    )
    cols = windows.reshape(pb.N, pb.groups, pb.C_per_group, pb.R, pb.S, pb.P, pb.Q)
    cols = cols.permute(1, 0, 5, 6, 2, 3, 4)  # (G, N, P, Q, Cg, R, S)
    return cols.reshape(pb.groups, pb.N * pb.P * pb.Q, pb.C_per_group * pb.R * pb.S)  # the copy


def conv2d_im2col(
    input: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor] = None,
    stride: spec.IntPair = 1,
    padding: Union[str, spec.IntPair] = 0,
    dilation: spec.IntPair = 1,
    groups: int = 1,
) -> torch.Tensor:
    """conv2d = explicit im2col (materialised) @ flattened weight, per group."""
    x, pb, before, after, unbatched = _prepare(input, weight, bias, stride, padding, dilation, groups)
    cols = im2col(x, pb, before, after)  # (G, NPQ, Cg*R*S)
    wmat = weight.reshape(pb.groups, pb.K_per_group, -1).transpose(1, 2)  # (G, Cg*R*S, Kg)
    out = torch.bmm(cols, wmat)  # (G, NPQ, Kg)
    out = out.reshape(pb.groups, pb.N, pb.P, pb.Q, pb.K_per_group).permute(1, 0, 4, 2, 3)
    out = out.reshape(pb.N, pb.K, pb.P, pb.Q)
    if bias is not None:
        out = out + bias.view(1, -1, 1, 1)
    return out.squeeze(0) if unbatched else out


def conv2d_unfold(
    input: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor] = None,
    stride: spec.IntPair = 1,
    padding: Union[str, spec.IntPair] = 0,
    dilation: spec.IntPair = 1,
    groups: int = 1,
) -> torch.Tensor:
    """conv2d = nn.Unfold (the column matrix, materialised) @ flattened weight, per group."""
    x, pb, before, after, unbatched = _prepare(input, weight, bias, stride, padding, dilation, groups)
    if before != after:  # asymmetric 'same': unfold pads symmetrically only
        x = F.pad(x, (0, after[1] - before[1], 0, after[0] - before[0]))
    cols = F.unfold(x, (pb.R, pb.S), dilation=(pb.dil_h, pb.dil_w), padding=before,
                    stride=(pb.stride_h, pb.stride_w))  # (N, C*R*S, P*Q), (c, r, s) order
    cols = cols.view(pb.N, pb.groups, pb.C_per_group * pb.R * pb.S, pb.P * pb.Q)
    wmat = weight.reshape(pb.groups, pb.K_per_group, -1)  # (G, Kg, Cg*R*S)
    out = torch.matmul(wmat, cols)  # (N, G, Kg, P*Q)
    out = out.reshape(pb.N, pb.K, pb.P, pb.Q)
    if bias is not None:
        out = out + bias.view(1, -1, 1, 1)
    return out.squeeze(0) if unbatched else out
