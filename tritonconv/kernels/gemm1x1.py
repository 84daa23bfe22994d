"""1x1, stride 1, unpadded forward conv: a plain GEMM with no index arithmetic in the loop.

    ==========  ======================  =====================================
    GEMM        conv                    index decomposition
    ==========  ======================  =====================================
    M           N * H * W pixels        m -> (n, h, w), once per tile
    N_gemm      K / groups              j -> k = g * K/groups + j
    K_gemm      C / groups              c, walked by pointer increments
    A[m, c]     x[n, c, h, w]
    B[c, j]     w[k, c, 0, 0]
    C[m, j]     y[n, k, h, w]           (+ bias, + residual, activation)
    ==========  ======================  =====================================

With P = H and Q = W every output pixel reads exactly its own input pixel, so
the pixel offsets are computed once per tile and the reduction loop only
advances two pointers by BLOCK_K channels: the same inner loop as a dense
matmul. NHWC input and KRSC weight make both operands contiguous along c.
"""

from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from .. import configs
from ..spec import Conv2dProblem, output_memory_format
from ._common import (
    acc_dtype_for,
    activation_code,
    alloc_output,
    check_device,
    conv_epilogue,
    grouped_pid,
    input_precision_for,
)

__all__ = ["conv2d_fprop_1x1", "gemm1x1_fprop_kernel", "accepts"]


def accepts(problem: Conv2dProblem) -> bool:
    """The problems this family computes: 1x1 kernel, stride 1, no padding."""
    pb = problem
    return (pb.R, pb.S, pb.stride_h, pb.stride_w, pb.pad_h, pb.pad_w) == (1, 1, 1, 1, 0, 0)


@triton.jit
def gemm1x1_fprop_kernel(
    # pointers
    x_ptr,  # (N, C, H, W), any strides
    w_ptr,  # (K, C/groups, 1, 1), any strides
    b_ptr,  # (K,); unused unless HAS_BIAS
    res_ptr,  # (N, K, H, W); unused unless HAS_RESIDUAL
    y_ptr,  # (N, K, H, W), any strides
    # problem sizes
    M, H, W, CG, KG, GROUPS,
    # strides, in elements
    sxn, sxc, sxh, sxw,
    swk, swc,
    syn, syk, syh, syw,
    srn, srk, srh, srw,
    alpha,
    # meta-parameters
    HAS_BIAS: tl.constexpr, HAS_RESIDUAL: tl.constexpr, ACTIVATION: tl.constexpr,
    ACC_DTYPE: tl.constexpr, INPUT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):
    # -- program-id mapping: (group, M-tile, N-tile)
    pid = tl.program_id(0)
    num_pid_m = tl.cdiv(M, BLOCK_M)
    num_pid_n = tl.cdiv(KG, BLOCK_N)
    tiles = num_pid_m * num_pid_n
    g = pid // tiles
    pid_m, pid_n = grouped_pid(pid % tiles, num_pid_m, num_pid_n, GROUP_M)

    # -- pixel offsets, once per tile (int64: n * sxn can pass 2**31)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    mask_m = offs_m < M
    mask_n = offs_n < KG
    w_ = (offs_m % W).to(tl.int64)
    h_ = ((offs_m // W) % H).to(tl.int64)
    n_ = (offs_m // (H * W)).to(tl.int64)
    k_out = g * KG + offs_n
    a_ptrs = (x_ptr + n_ * sxn + h_ * sxh + w_ * sxw + (g * CG).to(tl.int64) * sxc)[:, None] \
        + offs_k.to(tl.int64)[None, :] * sxc
    b_ptrs = (w_ptr + k_out.to(tl.int64) * swk)[None, :] + offs_k.to(tl.int64)[:, None] * swc

    # -- reduction loop: a dense matmul's
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC_DTYPE)
    for c0 in range(0, CG, BLOCK_K):
        c_ok = offs_k < CG - c0
        a = tl.load(a_ptrs, mask=mask_m[:, None] & c_ok[None, :], other=0.0)
        b = tl.load(b_ptrs, mask=c_ok[:, None] & mask_n[None, :], other=0.0)
        acc = tl.dot(a, b, acc, input_precision=INPUT_PRECISION)
        a_ptrs += BLOCK_K * sxc
        b_ptrs += BLOCK_K * swc

    # -- epilogue
    y_rows = n_ * syn + h_ * syh + w_ * syw
    r_rows = n_ * srn + h_ * srh + w_ * srw
    conv_epilogue(acc, b_ptr, res_ptr, y_ptr, y_rows, r_rows, k_out, syk, srk, mask_m, mask_n, alpha,
                  HAS_BIAS, HAS_RESIDUAL, ACTIVATION)


_gemm1x1_tuned = triton.autotune(
    configs=configs.gemm_configs(),
    key=["M", "H", "W", "CG", "KG", "GROUPS", "sxc", "syk"],
    do_bench=configs.capture_safe_bench,
    prune_configs_by={
        "early_config_prune": configs.gemm_prune_hook(
            m_fn=lambda a: a["M"], n_fn=lambda a: a["KG"], k_fn=lambda a: a["CG"], tensor_arg="x_ptr"
        )
    },
)(gemm1x1_fprop_kernel)


def conv2d_fprop_1x1(
    x: torch.Tensor,
    w: torch.Tensor,
    bias: Optional[torch.Tensor],
    problem: Conv2dProblem,
    out: Optional[torch.Tensor] = None,
    activation: str = "none",
    alpha: float = 0.01,
    residual: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Launch the 1x1 GEMM forward; the same contract as ``fprop.conv2d_fprop``.

    Args:
        x, w, bias, problem, out, activation, alpha, residual: as for ``conv2d_fprop``;
            ``problem`` must satisfy ``accepts``.

    Returns:
        y (N, K, H, W) in x's dtype.
    """
    check_device(x, w, bias, residual)
    pb = problem
    if not accepts(pb):
        raise ValueError(f"the 1x1 family does not compute {pb}")
    if out is None:
        out = alloc_output(pb.output_shape, x.dtype, x.device, output_memory_format(x, w))
    if out.numel() == 0:
        return out
    M = pb.N * pb.H * pb.W
    KG, CG = pb.K_per_group, pb.C_per_group
    res_strides = residual.stride() if residual is not None else (0, 0, 0, 0)

    def grid(meta):
        return (pb.groups * triton.cdiv(M, meta["BLOCK_M"]) * triton.cdiv(KG, meta["BLOCK_N"]),)

    _gemm1x1_tuned[grid](
        x, w, bias if bias is not None else w, residual if residual is not None else x, out,
        M, pb.H, pb.W, CG, KG, pb.groups,
        *x.stride(), w.stride(0), w.stride(1), *out.stride(), *res_strides, float(alpha),
        HAS_BIAS=bias is not None, HAS_RESIDUAL=residual is not None, ACTIVATION=activation_code(activation),
        ACC_DTYPE=acc_dtype_for(x.dtype), INPUT_PRECISION=input_precision_for(x),
    )
    return out
