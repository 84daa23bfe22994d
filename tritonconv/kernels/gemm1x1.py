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

from .. import configs, tuning
from ..spec import Conv2dProblem, output_memory_format
from ._common import (
    acc_dtype_for,
    activation_code,
    alloc_output,
    check_device,
    conv_epilogue,
    tile_pid,
    input_precision_for,
)

__all__ = ["conv2d_fprop_1x1", "conv2d_fprop_1x1_tma", "gemm1x1_fprop_kernel", "gemm1x1_tma_kernel", "accepts",
           "tma_usable"]


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
    g, pid_m, pid_n = tile_pid(tl.program_id(0), M, KG, BLOCK_M, BLOCK_N, GROUP_M)

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
    key=["M", "H", "W", "CG", "KG", "GROUPS", "sxc", "syk", "HAS_RESIDUAL", "ACTIVATION"],  # epilogue: see pruning
    do_bench=configs.capture_safe_bench,
    prune_configs_by={
        "early_config_prune": configs.gemm_prune_hook(
            m_fn=lambda a: a["M"], n_fn=lambda a: a["KG"], k_fn=lambda a: a["CG"], tensor_arg="x_ptr", gathered=False
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

    tuning.launch(_gemm1x1_tuned, "gemm1x1", x.device, grid,
        x, w, bias if bias is not None else w, residual if residual is not None else x, out,
        M, pb.H, pb.W, CG, KG, pb.groups,
        *x.stride(), w.stride(0), w.stride(1), *out.stride(), *res_strides, float(alpha),
        HAS_BIAS=bias is not None, HAS_RESIDUAL=residual is not None, ACTIVATION=activation_code(activation),
        ACC_DTYPE=acc_dtype_for(x.dtype), INPUT_PRECISION=input_precision_for(x),
    )
    return out


# --------------------------------------------------------------------------- Hopper: TMA loads

try:  # host-side tensor descriptors: Triton >= 3.4 (the GPU machine has 3.6, CI 3.9)
    from triton.tools.tensor_descriptor import TensorDescriptor
except ImportError:  # pragma: no cover
    TensorDescriptor = None

TMA_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def tma_usable(x: torch.Tensor, w: torch.Tensor, problem: Conv2dProblem) -> bool:
    """TMA needs a 2-D view of both operands with 16-byte aligned rows and bases, on sm_90+.

    That is NHWC-contiguous input (x as an (N*H*W, C) matrix) and a weight
    whose (K, C/groups) view is row-major; both hold for channels_last models.
    """
    if TensorDescriptor is None or x.dtype not in TMA_DTYPES or not accepts(problem):
        return False
    if x.is_cuda and torch.cuda.get_device_capability(x.device)[0] < 9:
        return False
    if not x.is_contiguous(memory_format=torch.channels_last):
        return False
    if w.stride(0) != problem.C_per_group or w.stride(1) != 1:
        return False
    esize = x.element_size()
    return all(v * esize % 16 == 0 for v in (problem.C, problem.C_per_group)) and \
        x.data_ptr() % 16 == 0 and w.data_ptr() % 16 == 0


def _set_tma_blocks(nargs):
    """Autotune pre-hook: the descriptors' block shapes follow the config's tile sizes."""
    bm, bn, bk = nargs["BLOCK_M"], nargs["BLOCK_N"], nargs["BLOCK_K"]
    nargs["a_desc"].block_shape = [bm, bk]
    nargs["b_desc"].block_shape = [bn, bk]


@triton.jit
def gemm1x1_tma_kernel(
    # descriptors and pointers
    a_desc,  # x as an (N*H*W, C) row-major matrix (NHWC input)
    b_desc,  # w as a (K, C/groups) row-major matrix
    b_ptr,  # (K,); unused unless HAS_BIAS
    res_ptr,  # (N, K, H, W); unused unless HAS_RESIDUAL
    y_ptr,  # (N, K, H, W), any strides
    # problem sizes
    M, H, W, CG, KG, GROUPS,
    # strides, in elements
    syn, syk, syh, syw,
    srn, srk, srh, srw,
    alpha,
    # meta-parameters
    HAS_BIAS: tl.constexpr, HAS_RESIDUAL: tl.constexpr, ACTIVATION: tl.constexpr,
    ACC_DTYPE: tl.constexpr, INPUT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):
    # -- program-id mapping: (group, M-tile, N-tile)
    g, pid_m, pid_n = tile_pid(tl.program_id(0), M, KG, BLOCK_M, BLOCK_N, GROUP_M)

    # -- reduction: TMA tiles. Out-of-bounds reads are zero-filled; columns past
    #    this group's C/groups in A meet zero rows of B (B's width is C/groups),
    #    and rows of B past this group's K/groups only feed masked-out columns.
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC_DTYPE)
    for c0 in range(0, CG, BLOCK_K):
        a = a_desc.load([pid_m * BLOCK_M, g * CG + c0])
        b = b_desc.load([g * KG + pid_n * BLOCK_N, c0])
        acc = tl.dot(a, b.T, acc, input_precision=INPUT_PRECISION)

    # -- epilogue
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    w_ = (offs_m % W).to(tl.int64)
    h_ = ((offs_m // W) % H).to(tl.int64)
    n_ = (offs_m // (H * W)).to(tl.int64)
    conv_epilogue(acc, b_ptr, res_ptr, y_ptr, n_ * syn + h_ * syh + w_ * syw, n_ * srn + h_ * srh + w_ * srw,
                  g * KG + offs_n, syk, srk, offs_m < M, offs_n < KG, alpha, HAS_BIAS, HAS_RESIDUAL, ACTIVATION)


_gemm1x1_tma_tuned = triton.autotune(
    configs=[triton.Config(c.kwargs, num_warps=c.num_warps, num_stages=c.num_stages, pre_hook=_set_tma_blocks)
             for c in configs.gemm_configs()],
    key=["M", "H", "W", "CG", "KG", "GROUPS", "syk", "HAS_RESIDUAL", "ACTIVATION"],
    do_bench=configs.capture_safe_bench,
    prune_configs_by={
        "early_config_prune": configs.gemm_prune_hook(
            m_fn=lambda a: a["M"], n_fn=lambda a: a["KG"], k_fn=lambda a: a["CG"], tensor_arg="y_ptr", gathered=False
        )
    },
)(gemm1x1_tma_kernel)


def conv2d_fprop_1x1_tma(x, w, bias, problem: Conv2dProblem, out=None, activation="none", alpha=0.01,
                         residual=None) -> torch.Tensor:
    """The 1x1 family with TMA operand loads (Hopper); falls back to pointer loads where TMA can't apply.

    Args/Returns: as ``conv2d_fprop_1x1``.
    """
    if not tma_usable(x, w, problem):
        return conv2d_fprop_1x1(x, w, bias, problem, out, activation, alpha, residual)
    check_device(x, w, bias, residual)
    pb = problem
    if out is None:
        out = alloc_output(pb.output_shape, x.dtype, x.device, output_memory_format(x, w))
    if out.numel() == 0:
        return out
    M = pb.N * pb.H * pb.W
    KG, CG = pb.K_per_group, pb.C_per_group
    a_desc = TensorDescriptor.from_tensor(x.permute(0, 2, 3, 1).reshape(M, pb.C), [16, 16])
    b_desc = TensorDescriptor.from_tensor(w.reshape(pb.K, CG), [16, 16])
    res_strides = residual.stride() if residual is not None else (0, 0, 0, 0)

    def grid(meta):
        return (pb.groups * triton.cdiv(M, meta["BLOCK_M"]) * triton.cdiv(KG, meta["BLOCK_N"]),)

    tuning.launch(_gemm1x1_tma_tuned, "gemm1x1_tma", x.device, grid,
        a_desc, b_desc, bias if bias is not None else w, residual if residual is not None else x, out,
        M, pb.H, pb.W, CG, KG, pb.groups, *out.stride(), *res_strides, float(alpha),
        HAS_BIAS=bias is not None, HAS_RESIDUAL=residual is not None, ACTIVATION=activation_code(activation),
        ACC_DTYPE=acc_dtype_for(x.dtype), INPUT_PRECISION=input_precision_for(x),
    )
    return out
