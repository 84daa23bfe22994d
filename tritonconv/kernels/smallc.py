"""Forward conv for few input channels per group (the RGB stem, C/groups <= 8).

    ==========  ===========================  ==========================================
    GEMM        conv                         index decomposition
    ==========  ===========================  ==========================================
    M           N * P * Q  output pixels     m -> (n, p, q), once per tile
    N_gemm      K / groups                   j -> k = g * K/groups + j
    K_gemm      R * S * C/groups, flattened  kk -> (r, s, c), c fastest, per element
    A[m, kk]    x[n, c, h, w]                h = p*stride_h - pad_h + r*dil_h  (0 outside)
    B[kk, j]    w[k, c, r, s]
    padded      K_gemm = R*S*C_PITCH          A[m, kk] = xp[n, h, w, c], B[kk, j] = wp[k, r, s, c]
    rows        K_gemm = R x SC, SC=S*C_PITCH  step r, column kk -> (s, c) once per tile
    ==========  ===========================  ==========================================

The general kernel walks (tap, channel block): with C = 3 and BLOCK_K = 16 each
tile would be 13/16 padding. Flattening the reduction over (r, s, c) fills
every BLOCK_K column with real work, at the price of decomposing kk per element.

Padded variant (``smallc_pad``, C <= 8, groups == 1). With C = 3 every A element
is a lone 2-byte gather: no vector loads, and no cp.async (it moves 4 bytes or
more), so the reduction is not software-pipelined (compile-report: async False).
This variant first copies x into an NHWC buffer with C padded to C_PITCH = 4 or 8
zeroed channels, and the weight into KRSC with the same pitch. Then kk -> (r, s, c)
with c = kk % C_PITCH, and every C_PITCH run of kk is one aligned vector of
C_PITCH channels (8 bytes for fp16 RGB), which cp.async can pipeline; the weight
is contiguous along kk. It costs one copy of x (C_PITCH/C times its size) and
C_PITCH/C more MMA work; the router times it against the gather on the GPU.

Rows variant (``smallc_rows``, on the same padded copies). Decoding kk per element costs the
padded variant 171 SASS instructions a step (128x64x32 tile, 8 warps, sm_90, Triton 3.9): each of a
thread's 16 A elements gets its own (r, s, c), h, w, bounds check and address. The rows kernel
orders the reduction by kernel row instead: one step is one row r, its BLOCK_K columns that
row's (s, c), S*C_PITCH of them rounded up to a power of two (``row_block_k``: 28 in 32 for a 7x7
RGB stem, 12 in 16 for a 3x3)::

    A[m, (r, j)] = xp[n, h0 + r*dil_h, w0 + s*dil_w, c]     j = s*C_PITCH + c, c fastest
                 = (xp + pixel m's row r)[s*dil_w*C_PITCH + c]

What depends on j alone (the column's offset within the row, whether w0 + s*dil_w lies in the
image) is computed once per tile, and a step only moves each pixel's row pointer and checks
h: 114 instructions a step for the same tile, no division (the compile report). Against the
padded variant's flattened BLOCK_K, a row pads its own tail: a 7x7 takes 7 steps of 32 both
ways; a 3x3 takes 3 steps of 16 for 2 of 32.

Weight gradient (``smallc_pad`` in the router's grad_weight table), on the same padded copy of x:

    ==========  ===========================  ==========================================
    GEMM        conv                         index decomposition
    ==========  ===========================  ==========================================
    M           K output channels            row -> k
    N_gemm      R * S * C_PITCH, flattened   col -> (r, s, c), c fastest, once per tile
    K_gemm      N * P * Q output pixels      kk -> (n, p, q), q fastest; split in SPLIT_K chunks
    A[row, kk]  dy[n, k, p, q]
    B[kk, col]  xp[n, h, w, c]               h = p*stride_h - pad_h + r*dil_h  (0 outside)
    C[row, col] dw[k, c, r, s]               stored where c < C
    ==========  ===========================  ==========================================

The general wgrad (wgrad.py) runs one program per tap with a K x C/groups tile: for the RGB stem
(K 64, C 3, 7x7) that is 49 taps of a tile 3 channels wide, each reading all of dy, some 2.5 GB
at batch 32 for a 9408-value gradient (1.6 ms on an H100, where cuDNN takes 0.17). Flattening the
taps into the tile's columns reads dy once per column tile, and the padded copy makes every
C_PITCH run of columns one vector load of x. The reduction is long and the tile grid tiny (one
or two tiles), so it is split into many chunks (``choose_wgrad_split``), each storing an fp32
partial that ``wgrad.finish_wgrad`` sums in a fixed order.
"""

from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from .. import configs, plans, tuning
from ..spec import Conv2dProblem
from . import wgrad
from ._common import (
    acc_dtype_for,
    check_device,
    check_pixel_count,
    conv_epilogue,
    input_precision_for,
    mma,
    prepare_forward,
    sm_count,
    split_range,
    tile_pid,
)

__all__ = ["conv2d_fprop_smallc", "conv2d_fprop_smallc_pad", "conv2d_fprop_smallc_rows", "conv2d_wgrad_smallc_pad",
           "smallc_fprop_kernel", "smallc_rows_kernel", "smallc_wgrad_kernel", "accepts", "accepts_pad",
           "accepts_rows", "row_block_k", "choose_wgrad_split", "MAX_C", "MAX_WGRAD_SPLIT", "ROWS_TUNED"]

MAX_C = 8


def accepts(problem: Conv2dProblem) -> bool:
    return problem.C_per_group <= MAX_C


_PITCHES = (4, 8)  # 8 and 16 bytes of fp16: a vector load per pitch


def accepts_pad(problem: Conv2dProblem) -> bool:
    """The padded variant: one group of at most MAX_C channels, and an image whose padded copy
    the kernel can index in int32."""
    return problem.groups == 1 and problem.C <= MAX_C and problem.H * problem.W * _PITCHES[-1] < 2**31


def _pitch(C: int) -> int:
    return next(p for p in _PITCHES if p >= C)


@triton.jit
def smallc_fprop_kernel(
    # pointers
    x_ptr,  # (N, C, H, W), any strides
    w_ptr,  # (K, C/groups, R, S), any strides
    b_ptr,  # (K,); unused unless HAS_BIAS
    res_ptr,  # (N, K, P, Q); unused unless HAS_RESIDUAL
    y_ptr,  # (N, K, P, Q), any strides
    # problem sizes
    M, H, W, P, Q, R, S, CG, KG, GROUPS,
    # conv parameters
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
    # strides, in elements
    sxn, sxc, sxh, sxw,
    swk, swc, swr, sws,
    syn, syk, syp, syq,
    srn, srk, srp, srq,
    alpha: tl.float64,  # leaky_relu slope; fp64, so that an fp64 conv gets it unrounded
    # meta-parameters
    HAS_BIAS: tl.constexpr, HAS_RESIDUAL: tl.constexpr, ACTIVATION: tl.constexpr,
    ACC_DTYPE: tl.constexpr, INPUT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    C_PITCH: tl.constexpr = 0,  # > 0: x is (N, H, W, C_PITCH) dense and w (K, R, S, C_PITCH) dense, zero-padded
):
    # -- program-id mapping: (group, M-tile, N-tile)
    g, pid_m, pid_n = tile_pid(tl.program_id(0), M, KG, BLOCK_M, BLOCK_N, GROUP_M)

    # -- pixel setup, once per tile
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    mask_m = offs_m < M
    mask_n = offs_n < KG
    q = offs_m % Q
    p = (offs_m // Q) % P
    n = (offs_m // (P * Q)).to(tl.int64)
    h0 = p * stride_h - pad_h
    w0 = q * stride_w - pad_w
    k_out = g * KG + offs_n
    if C_PITCH > 0:
        # dense padded copies: the pitch is a constexpr, so each C_PITCH run of kk is one
        # aligned vector in x and the weight is contiguous along kk
        RSC = R * S * C_PITCH
        x_rows = x_ptr + n * H * W * C_PITCH
        w_cols = w_ptr + k_out.to(tl.int64) * RSC
    else:
        RSC = R * S * CG
        x_rows = x_ptr + n * sxn + (g * CG).to(tl.int64) * sxc
        w_cols = w_ptr + k_out.to(tl.int64) * swk

    # -- reduction over the flattened (r, s, c), decoded per step. Carried from step to step
    # instead (_common.unravel3_next, as wgrad_kernel's pixels are) it saved 11 of 169 sm_90 instructions
    # a step on Triton 3.6 but took 9 more registers per thread: the stem's 128x64x32 w8 tile
    # would fit 2 programs per SM instead of 3, and its few steps lean on the others' to hide latency
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC_DTYPE)
    for k0 in range(0, RSC, BLOCK_K):
        kk = k0 + offs_k
        if C_PITCH > 0:
            c = kk % C_PITCH
            rs = kk // C_PITCH
        else:
            c = kk % CG
            rs = kk // CG
        r = rs // S
        s = rs % S
        kk_ok = kk < RSC
        h = h0[:, None] + (r * dil_h)[None, :]
        w = w0[:, None] + (s * dil_w)[None, :]
        ok = mask_m[:, None] & kk_ok[None, :] & (h >= 0) & (h < H) & (w >= 0) & (w < W)
        if C_PITCH > 0:
            a_off = (h * W + w) * C_PITCH + c[None, :]  # within one image: int32 (accepts_pad)
            b_off = kk
        else:
            a_off = h.to(tl.int64) * sxh + w.to(tl.int64) * sxw + c.to(tl.int64)[None, :] * sxc
            b_off = c.to(tl.int64) * swc + r.to(tl.int64) * swr + s.to(tl.int64) * sws
        a = tl.load(x_rows[:, None] + a_off, mask=ok, other=0.0)
        b = tl.load(w_cols[None, :] + b_off[:, None], mask=kk_ok[:, None] & mask_n[None, :], other=0.0)
        acc = mma(a, b, acc, INPUT_PRECISION, ACC_DTYPE)

    # -- epilogue
    y_rows = n * syn + p.to(tl.int64) * syp + q.to(tl.int64) * syq
    r_rows = n * srn + p.to(tl.int64) * srp + q.to(tl.int64) * srq
    conv_epilogue(acc, b_ptr, res_ptr, y_ptr, y_rows, r_rows, k_out, syk, srk, mask_m, mask_n, alpha,
                  HAS_BIAS, HAS_RESIDUAL, ACTIVATION)


def _autotuned(key):
    return triton.autotune(
        configs=configs.gemm_configs(configs.SMALLC_TILES),
        key=key,
        do_bench=configs.capture_safe_bench,
        prune_configs_by={
            "early_config_prune": configs.gemm_prune_hook(
                m_fn=lambda a: a["M"], n_fn=lambda a: a["KG"], k_fn=lambda a: a["R"] * a["S"] * a["CG"],
                tensor_arg="x_ptr", spilling=configs.SPILLING_TILES.get("smallc_fprop_kernel", ()),
            )
        },
    )(smallc_fprop_kernel)


_SHAPE_KEY = ["M", "H", "W", "CG", "KG", "R", "S", "stride_h", "stride_w", "dil_h", "dil_w", "syk",
              "HAS_RESIDUAL", "ACTIVATION"]  # the epilogue changes what the pruner keeps
_smallc_tuned = _autotuned(_SHAPE_KEY + ["GROUPS", "sxc"])
# the padded variant, tuned on its own: its loads and reduction length differ (CG is the pitch)
_smallc_pad_tuned = _autotuned(_SHAPE_KEY + ["C_PITCH"])


def conv2d_fprop_smallc(
    x: torch.Tensor,
    w: torch.Tensor,
    bias: Optional[torch.Tensor],
    problem: Conv2dProblem,
    out: Optional[torch.Tensor] = None,
    activation: str = "none",
    alpha: float = 0.01,
    residual: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Launch the small-C forward; the same contract as ``fprop.conv2d_fprop``.

    Args:
        x, w, bias, problem, out, activation, alpha, residual: as for ``conv2d_fprop``.

    Returns:
        y (N, K, P, Q) in x's dtype.
    """
    pb = problem
    fw = prepare_forward(x, w, bias, residual, pb, out, activation)
    if fw.out.numel() == 0:
        return fw.out
    _launch(_smallc_tuned, "smallc", x, w, fw, pb, pb.C_per_group, pb.groups, alpha,
            INPUT_PRECISION=input_precision_for(x))
    return fw.out


def _launch(tuned, name, x, w, fw, pb: Conv2dProblem, CG: int, groups: int, alpha: float, **meta) -> None:
    """One launch of smallc_fprop_kernel: x and w as (N, C, H, W) and (K, C/groups, R, S) views,
    CG the channels per group it reduces over (the pitch for the padded copies)."""
    M, KG = pb.N * pb.P * pb.Q, pb.K // groups

    def grid(m):
        return (groups * triton.cdiv(M, m["BLOCK_M"]) * triton.cdiv(KG, m["BLOCK_N"]),)

    tuning.launch(tuned, name, x.device, grid,
        x, w, fw.bias, fw.residual, fw.out,
        M, pb.H, pb.W, pb.P, pb.Q, pb.R, pb.S, CG, KG, groups,
        pb.stride_h, pb.stride_w, pb.pad_h, pb.pad_w, pb.dil_h, pb.dil_w,
        *x.stride(), *w.stride(), *fw.out.stride(), *fw.res_strides, float(alpha), **fw.epilogue, **meta,
    )


def _padded(t: torch.Tensor, pitch: int) -> torch.Tensor:
    """(N, H, W, pitch) dense, the channels past t's zero, from t (N, C, H, W)."""
    return torch.nn.functional.pad(t.permute(0, 2, 3, 1), (0, pitch - t.shape[1])).contiguous()


def conv2d_fprop_smallc_pad(
    x: torch.Tensor,
    w: torch.Tensor,
    bias: Optional[torch.Tensor],
    problem: Conv2dProblem,
    out: Optional[torch.Tensor] = None,
    activation: str = "none",
    alpha: float = 0.01,
    residual: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Launch the padded small-C forward (see the module docstring); the same contract as
    ``fprop.conv2d_fprop``. Problems it does not take (``accepts_pad``) go to the gather.

    Args:
        x, w, bias, problem, out, activation, alpha, residual: as for ``conv2d_fprop``.

    Returns:
        y (N, K, P, Q) in x's dtype.
    """
    pb = problem
    if not accepts_pad(pb):
        return conv2d_fprop_smallc(x, w, bias, pb, out, activation, alpha, residual)
    fw = prepare_forward(x, w, bias, residual, pb, out, activation)
    if fw.out.numel() == 0:
        return fw.out
    pitch = _pitch(pb.C)
    # (N, H, W, C_PITCH) and (K, R, S, C_PITCH), dense, the extra channels zero; passed as
    # NCHW-shaped views, as the gather takes x and w (torch work a launch plan reruns per call)
    xp, wp = plans.derive(lambda x, w: (_padded(x, pitch), _padded(w, pitch)), x, w)
    _launch(_smallc_pad_tuned, "smallc_pad", xp.permute(0, 3, 1, 2), wp.permute(0, 3, 1, 2), fw, pb, pitch, 1,
            alpha, INPUT_PRECISION=input_precision_for(x), C_PITCH=pitch)
    return fw.out


@triton.jit
def smallc_rows_kernel(
    # pointers
    x_ptr,  # (N, H, W, C_PITCH) dense, the channels past C zero
    w_ptr,  # (K, R, S, C_PITCH) dense, the channels past C zero
    b_ptr,  # (K,); unused unless HAS_BIAS
    res_ptr,  # (N, K, P, Q); unused unless HAS_RESIDUAL
    y_ptr,  # (N, K, P, Q), any strides
    # problem sizes
    M, H, W, P, Q, R, S, K,
    # conv parameters
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
    # strides, in elements
    syn, syk, syp, syq,
    srn, srk, srp, srq,
    alpha: tl.float64,  # leaky_relu slope; fp64, so that an fp64 conv gets it unrounded
    # meta-parameters
    HAS_BIAS: tl.constexpr, HAS_RESIDUAL: tl.constexpr, ACTIVATION: tl.constexpr,
    ACC_DTYPE: tl.constexpr, INPUT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    C_PITCH: tl.constexpr,
):
    # -- program-id mapping: (M-tile, N-tile)
    _, pid_m, pid_n = tile_pid(tl.program_id(0), M, K, BLOCK_M, BLOCK_N, GROUP_M)

    # -- pixel setup, once per tile
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    mask_m = offs_m < M
    mask_n = offs_n < K
    q = offs_m % Q
    p = (offs_m // Q) % P
    n = (offs_m // (P * Q)).to(tl.int64)
    h0 = p * stride_h - pad_h
    w0 = q * stride_w - pad_w

    # -- column setup, once per tile: a step is one kernel row, its columns kk -> (s, c), c fastest.
    # What depends on the column alone (the tap's offset from the pixel's leftmost one, whether
    # that input column lies in the image) is the same in every row, so the loop only moves each
    # pixel's row pointer and checks the row. The pitch is a constexpr, so each C_PITCH run of
    # columns is one aligned vector of a pixel's channels (8 bytes of fp16 RGB).
    SC = S * C_PITCH
    s = offs_k // C_PITCH
    c = offs_k % C_PITCH
    w_in = w0[:, None] + (s * dil_w)[None, :]
    col_ok = mask_m[:, None] & (offs_k < SC)[None, :] & (w_in >= 0) & (w_in < W)
    a_cols = (s * dil_w) * C_PITCH + c
    x_pix = x_ptr + n * H * W * C_PITCH + w0 * C_PITCH  # the pixel's leftmost tap in input row 0
    w_cols = w_ptr + offs_n.to(tl.int64) * (R * SC)
    b_ok = (offs_k < SC)[:, None] & mask_n[None, :]

    # -- reduction over the kernel rows
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC_DTYPE)
    # at least one (spec.py rejects an empty kernel), told to the compiler: a loop that might run no
    # step has LLVM zero the accumulator after it, where ptxas then serialized the wgmmas (the fp32
    # 128x128 tiles on Triton 3.6: the compile report's `serial`)
    tl.assume(R > 0)
    for r in range(0, R):
        h = h0 + r * dil_h
        x_row = x_pix + h * (W * C_PITCH)  # within one image: int32 (accepts_pad)
        a = tl.load(x_row[:, None] + a_cols[None, :], mask=col_ok & ((h >= 0) & (h < H))[:, None], other=0.0)
        b = tl.load(w_cols[None, :] + (r * SC + offs_k)[:, None], mask=b_ok, other=0.0)
        acc = mma(a, b, acc, INPUT_PRECISION, ACC_DTYPE)

    # -- epilogue
    y_rows = n * syn + p.to(tl.int64) * syp + q.to(tl.int64) * syq
    r_rows = n * srn + p.to(tl.int64) * srp + q.to(tl.int64) * srq
    conv_epilogue(acc, b_ptr, res_ptr, y_ptr, y_rows, r_rows, offs_n, syk, srk, mask_m, mask_n, alpha,
                  HAS_BIAS, HAS_RESIDUAL, ACTIVATION)


# A rows step's BLOCK_K is one kernel row's S*C_PITCH columns rounded up to a power of two; past
# this the tile is mostly one row's padding and the A tile's registers grow with it.
MAX_ROW_BLOCK_K = 64


def row_block_k(S: int, pitch: int) -> int:
    """The rows kernel's BLOCK_K for kernel rows of S taps of ``pitch`` channels: at least 16,
    tl.dot's smallest K."""
    return max(16, triton.next_power_of_2(S * pitch))


def accepts_rows(problem: Conv2dProblem) -> bool:
    """The rows kernel: what the padded variant takes, with kernel rows of at most
    MAX_ROW_BLOCK_K padded columns (up to 16 taps at a pitch of 4, 8 at 8)."""
    return accepts_pad(problem) and row_block_k(problem.S, _pitch(problem.C)) <= MAX_ROW_BLOCK_K


_ROWS_KEY = ["M", "H", "W", "K", "R", "S", "stride_h", "stride_w", "dil_h", "dil_w", "syk", "HAS_RESIDUAL",
             "ACTIVATION", "C_PITCH"]


def _rows_autotuned(block_k: int):
    """The rows kernel autotuned for rows of ``block_k`` columns: its configs all have that BLOCK_K,
    and the pruner keeps it (a narrower one would skip the row's last columns)."""
    return triton.autotune(
        configs=configs.smallc_row_configs(block_k),
        key=_ROWS_KEY,
        do_bench=configs.capture_safe_bench,
        prune_configs_by={
            "early_config_prune": configs.gemm_prune_hook(
                m_fn=lambda a: a["M"], n_fn=lambda a: a["K"], k_fn=lambda a: a["R"] * block_k, tensor_arg="x_ptr",
                fixed_block_k=block_k,
            )
        },
    )(smallc_rows_kernel)


# One autotuner (and tuning-cache file) per row width, BLOCK_K being set by the problem
# (configs.smallc_row_configs); module attributes, where the precompile finds autotuners.
_smallc_rows16_tuned = _rows_autotuned(16)
_smallc_rows32_tuned = _rows_autotuned(32)
_smallc_rows64_tuned = _rows_autotuned(MAX_ROW_BLOCK_K)
ROWS_TUNED = {16: _smallc_rows16_tuned, 32: _smallc_rows32_tuned, MAX_ROW_BLOCK_K: _smallc_rows64_tuned}


def conv2d_fprop_smallc_rows(
    x: torch.Tensor,
    w: torch.Tensor,
    bias: Optional[torch.Tensor],
    problem: Conv2dProblem,
    out: Optional[torch.Tensor] = None,
    activation: str = "none",
    alpha: float = 0.01,
    residual: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Launch the rows kernel on channel-padded copies of x and w (see the module docstring); the
    same contract as ``fprop.conv2d_fprop``. Problems it does not take (``accepts_rows``) go to
    the gather.

    Args:
        x, w, bias, problem, out, activation, alpha, residual: as for ``conv2d_fprop``.

    Returns:
        y (N, K, P, Q) in x's dtype.
    """
    pb = problem
    if not accepts_rows(pb):
        return conv2d_fprop_smallc(x, w, bias, pb, out, activation, alpha, residual)
    fw = prepare_forward(x, w, bias, residual, pb, out, activation)
    if fw.out.numel() == 0:
        return fw.out
    pitch = _pitch(pb.C)
    block_k = row_block_k(pb.S, pitch)
    # (N, H, W, C_PITCH) and (K, R, S, C_PITCH), dense, the extra channels zero: torch work a
    # launch plan reruns per call
    xp, wp = plans.derive(lambda x, w: (_padded(x, pitch), _padded(w, pitch)), x, w)
    M = pb.N * pb.P * pb.Q

    def grid(m):
        return (triton.cdiv(M, m["BLOCK_M"]) * triton.cdiv(pb.K, m["BLOCK_N"]),)

    tuning.launch(ROWS_TUNED[block_k], f"smallc_rows_k{block_k}", x.device, grid,
        xp, wp, fw.bias, fw.residual, fw.out,
        M, pb.H, pb.W, pb.P, pb.Q, pb.R, pb.S, pb.K,
        pb.stride_h, pb.stride_w, pb.pad_h, pb.pad_w, pb.dil_h, pb.dil_w,
        *fw.out.stride(), *fw.res_strides, float(alpha), **fw.epilogue,
        INPUT_PRECISION=input_precision_for(x), C_PITCH=pitch,
    )
    return fw.out


@triton.jit
def smallc_wgrad_kernel(
    # pointers
    dy_ptr,  # (N, K, P, Q), any strides
    x_ptr,  # (N, H, W, C_PITCH) dense, the channels past C zero
    out_ptr,  # (SPLIT_K, K, C, R, S): fp32 partials, or dw itself when SPLIT_K == 1
    # problem sizes
    N, H, W, P, Q, R, S, C, K,
    SPLIT_K,
    # conv parameters
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
    # strides, in elements
    sdyn, sdyk, sdyp, sdyq,
    sos, sok, soc, sor, sos_,  # out: split, k, c, r, s
    # meta-parameters
    ACC_DTYPE: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    C_PITCH: tl.constexpr,
):
    # -- program-id mapping: (split, M-tile, N-tile)
    RSC = R * S * C_PITCH
    split, pid_m, pid_n = tile_pid(tl.program_id(0), K, RSC, BLOCK_M, BLOCK_N, GROUP_M)

    # -- this split's share of the reduction, in whole BLOCK_K steps
    start, stop = split_range(split, N * P * Q, SPLIT_K, BLOCK_K)

    # -- column setup, once per tile: col -> (r, s, c); the pitch is a constexpr, so each
    # C_PITCH run of columns is one aligned vector of x's channels
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    mask_m = offs_m < K
    mask_n = offs_n < RSC
    c = offs_n % C_PITCH
    rs = offs_n // C_PITCH
    r = rs // S
    s = rs % S
    dy_rows = dy_ptr + offs_m.to(tl.int64) * sdyk
    image = H * W * C_PITCH

    # -- reduction loop over output pixels (n, p, q), decoded per step: carried instead
    # (_common.unravel3_next, as wgrad_kernel does) they took the stem's 64x128x64 w4 s3 tile
    # from 146 to 229 registers on Triton 3.6, and from 811 to 845 instructions a step
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC_DTYPE)
    for k0 in range(start, stop, BLOCK_K):
        kk = k0 + offs_k
        q = kk % Q
        p = (kk // Q) % P
        n = (kk // (P * Q)).to(tl.int64)  # n * an image's size can pass 2**31
        k_ok = kk < stop
        dy_off = n * sdyn + p.to(tl.int64) * sdyp + q.to(tl.int64) * sdyq
        a = tl.load(dy_rows[:, None] + dy_off[None, :], mask=mask_m[:, None] & k_ok[None, :], other=0.0)
        h = (p * stride_h - pad_h)[:, None] + (r * dil_h)[None, :]
        w = (q * stride_w - pad_w)[:, None] + (s * dil_w)[None, :]
        ok = k_ok[:, None] & mask_n[None, :] & (h >= 0) & (h < H) & (w >= 0) & (w < W)
        x_off = (h * W + w) * C_PITCH + c[None, :]  # within one image: int32 (accepts_pad)
        b = tl.load(x_ptr + n[:, None] * image + x_off, mask=ok, other=0.0)
        acc = mma(a, b, acc, INPUT_PRECISION, ACC_DTYPE)

    # -- epilogue: this split's partial (or the gradient itself); the padding channels are dropped
    out = out_ptr + split.to(tl.int64) * sos
    cols = c.to(tl.int64) * soc + r.to(tl.int64) * sor + s.to(tl.int64) * sos_
    out_ptrs = out + offs_m.to(tl.int64)[:, None] * sok + cols[None, :]
    tl.store(out_ptrs, acc.to(out_ptr.dtype.element_ty), mask=mask_m[:, None] & (mask_n & (c < C))[None, :])


_smallc_wgrad_tuned = triton.autotune(
    configs=configs.gemm_configs(configs.SMALLC_WGRAD_TILES),
    key=["N", "H", "W", "P", "Q", "R", "S", "C", "K", "SPLIT_K", "stride_h", "stride_w", "dil_h", "dil_w", "sdyk",
         "C_PITCH"],
    do_bench=configs.capture_safe_bench,
    prune_configs_by={
        "early_config_prune": configs.gemm_prune_hook(
            m_fn=lambda a: a["K"], n_fn=lambda a: a["R"] * a["S"] * a["C_PITCH"],
            k_fn=lambda a: triton.cdiv(a["N"] * a["P"] * a["Q"], a["SPLIT_K"]), tensor_arg="dy_ptr",
        )
    },
)(smallc_wgrad_kernel)

# Each chunk's partial is a weight-sized fp32 write and read, small for at most MAX_C channels:
# the split is bounded by the chunks' length (1024 pixels) more than by the workspace.
MAX_WGRAD_SPLIT = 128


def choose_wgrad_split(problem: Conv2dProblem, device: torch.device) -> int:
    """How many chunks to cut the small-C wgrad's N*P*Q reduction into: enough programs to fill
    the GPU about twice, counting 64 x 128 tiles of the K x R*S*C_PITCH gradient, in chunks of at
    least 1024 pixels, and at most MAX_WGRAD_SPLIT of them."""
    pb = problem
    npq = pb.N * pb.P * pb.Q
    tiles = triton.cdiv(pb.K, 64) * triton.cdiv(pb.R * pb.S * _pitch(pb.C), 128)
    want = triton.cdiv(2 * sm_count(device), tiles)
    return max(1, min(want, MAX_WGRAD_SPLIT, npq // 1024))


def conv2d_wgrad_smallc_pad(
    dy: torch.Tensor,
    x: torch.Tensor,
    problem: Conv2dProblem,
    memory_format: torch.memory_format = torch.contiguous_format,
    split_k: Optional[int] = None,
) -> torch.Tensor:
    """Launch the small-C wgrad on a channel-padded copy of x (see the module docstring); the same
    contract as ``wgrad.conv2d_wgrad``. Problems it does not take (``accepts_pad``) go there.

    Args:
        dy: (N, K, P, Q), the output gradient; any strides.
        x: (N, C, H, W), the forward input; any strides.
        problem: the forward conv.
        memory_format: layout of the returned gradient (follow the weight's).
        split_k: number of reduction chunks; None picks one (``choose_wgrad_split``).

    Returns:
        dw (K, C, R, S) in dy's dtype, bitwise deterministic.
    """
    pb = problem
    if not accepts_pad(pb):
        return wgrad.conv2d_wgrad(dy, x, pb, memory_format, split_k)
    check_device(dy, x)
    npq = pb.N * pb.P * pb.Q
    check_pixel_count(npq, "output (N*P*Q)")
    if split_k is None:
        split_k = choose_wgrad_split(pb, dy.device)
    dw, split, out, out_strides = wgrad.wgrad_workspace(dy, pb, memory_format, split_k, npq)
    if dw.numel() == 0:
        return dw
    if npq == 0:
        return dw.zero_()
    pitch = _pitch(pb.C)
    xp = plans.derive(lambda x: _padded(x, pitch), x)  # (N, H, W, C_PITCH): torch work a plan reruns
    RSC = pb.R * pb.S * pitch

    def grid(meta):
        return (split * triton.cdiv(pb.K, meta["BLOCK_M"]) * triton.cdiv(RSC, meta["BLOCK_N"]),)

    tuning.launch(_smallc_wgrad_tuned, "smallc_wgrad", dy.device, grid,
        dy, xp, out,
        pb.N, pb.H, pb.W, pb.P, pb.Q, pb.R, pb.S, pb.C, pb.K, split,
        pb.stride_h, pb.stride_w, pb.pad_h, pb.pad_w, pb.dil_h, pb.dil_w,
        *dy.stride(), *out_strides,
        ACC_DTYPE=acc_dtype_for(dy.dtype),
        INPUT_PRECISION=input_precision_for(dy),
        C_PITCH=pitch,
    )
    return wgrad.finish_wgrad(dw, out, split)
