"""Forward convolution (fprop) as an implicit GEMM.

The conv-to-GEMM mapping, per group g (a program handles exactly one group):

    ==========  ===========================  ==========================================
    GEMM        conv                         index decomposition
    ==========  ===========================  ==========================================
    M           N * P * Q  output pixels     m -> (n, p, q),  q fastest
    N_gemm      K / groups output channels   j -> k = g * K/groups + j
    K_gemm      R * S * C/groups             (r, s) taps outer, c = C/groups inner
    A[m, kk]    x[n, c, h, w]                h = p*stride_h - pad_h + r*dil_h  (0 outside)
                                             w = q*stride_w - pad_w + s*dil_w
    B[kk, j]    w[k, c, r, s]
    C[m, j]     y[n, k, p, q]                (+ bias[k] in the epilogue)
    ==========  ===========================  ==========================================

Layouts: any strides are accepted and passed through, so NCHW, NHWC
(channels_last) and sliced views run without a copy. NHWC input and KRSC
weight (channels_last weight) are the fast layouts: the reduction's inner
dimension c is then contiguous in both operands.

Reduction loop order: one flat loop over (r, s, c-block), c-block fastest. A
flat loop (rather than three nested ones) lets Triton software-pipeline the
loads across tap boundaries; the (r, s) that an iteration belongs to is two
scalar divisions away.

The column matrix A is never materialised: each (BLOCK_M, BLOCK_K) tile is
gathered from x through the index map above, with masks for padding and edges.

On Hopper the weight needs no gather at all: a KRSC weight is a row-major
(K, R*S*C/groups) matrix whose B tiles a TMA descriptor loads (W_DESC,
``conv2d_fprop_tma``), which frees the registers its addresses took. A tile's
columns past its tap's channels are harmless: they meet A's masked columns.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import triton
import triton.language as tl

from .. import configs, plans, tuning
from ..spec import Conv2dProblem
from ._common import (
    MAX_PIXELS,
    TMA_DTYPES,
    TensorDescriptor,
    alloc_partials,
    conv_epilogue,
    dense_view,
    input_precision_for,
    mma,
    mma_barrier,
    persistent_programs,
    phase_view,
    phase_view_fits,
    prepare_forward,
    sm_count,
    stream_k_flags,
    stream_k_gather,
    stream_k_hand_off,
    stream_k_share,
    stream_k_step,
    tap_tma_box,
    tap_tma_box_of,
    tap_tma_boxes,
    split_steps,
    tap_phase,
    tap_phase_next,
    tap_step_of,
    next_tap_step,
    tile_pid,
)

__all__ = ["conv2d_fprop", "conv2d_fprop_splitk", "conv2d_fprop_tma", "conv2d_fprop_tap_tma",
           "conv2d_fprop_tap_tma_splitk", "conv2d_fprop_tap_tma_streamk", "accepts_tap_tma_streamk", "fprop_kernel",
           "fprop_tap_tma_kernel", "splitk_reduce_kernel", "accepts_splitk", "accepts_tap_tma", "weight_tma_usable",
           "input_tma_usable", "tap_tma_steps", "TAP_TMA_MIN_STEPS"]


@triton.jit
def fprop_kernel(
    # pointers
    x_ptr,  # (N, C, H, W), any strides
    w_ptr,  # (K, C/groups, R, S), any strides
    w_desc,  # TMA descriptor of w as a (K, R*S*C/groups) row-major matrix (KRSC); unused unless W_DESC
    b_ptr,  # (K,); unused unless HAS_BIAS
    res_ptr,  # (N, K, P, Q), any strides; unused unless HAS_RESIDUAL
    y_ptr,  # (N, K, P, Q), any strides
    ws_ptr,  # (SPLIT_K, M, K) fp32 / fp64 partial sums; unused unless PARTIAL
    # problem sizes
    M,  # N * P * Q
    H, W, P, Q, R, S,
    CG, KG,  # channels per group: input, output
    GROUPS,
    SPLIT_K,  # the reduction is cut into SPLIT_K chunks (1: no split)
    # conv parameters
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
    # strides, in elements
    sxn, sxc, sxh, sxw,
    swk, swc, swr, sws,
    syn, syk, syp, syq,
    srn, srk, srp, srq,
    # epilogue
    alpha: tl.float64,  # leaky_relu slope; fp64, so that an fp64 conv gets it unrounded
    # meta-parameters
    HAS_BIAS: tl.constexpr,
    HAS_RESIDUAL: tl.constexpr,
    ACTIVATION: tl.constexpr,
    ACC_DTYPE: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
    PARTIAL: tl.constexpr,  # store raw partial sums to ws_ptr (split-K) instead of the epilogue
    W_DESC: tl.constexpr,  # load the weight tiles through w_desc (TMA, sm_90) instead of pointers
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):
    # -- program-id mapping: (split, group, M-tile, N-tile); every program has real work
    outer, pid_m, pid_n = tile_pid(tl.program_id(0), M, KG, BLOCK_M, BLOCK_N, GROUP_M)
    split = outer // GROUPS
    g = outer % GROUPS

    # -- pointer setup. Row (pixel) offsets are int64: n * sxn alone can pass
    #    2**31 for large batches, and pointers are 64-bit anyway.
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    mask_m = offs_m < M
    mask_n = offs_n < KG
    q = offs_m % Q
    p = (offs_m // Q) % P
    n = offs_m // (P * Q)
    h0 = p * stride_h - pad_h
    w0 = q * stride_w - pad_w
    x_rows = x_ptr + n.to(tl.int64) * sxn + (g * CG).to(tl.int64) * sxc
    x_taps = x_rows + h0.to(tl.int64) * sxh + w0.to(tl.int64) * sxw  # before the image where padded: masked
    k_out = g * KG + offs_n
    w_cols = w_ptr + k_out.to(tl.int64) * swk

    # -- reduction loop over (r, s, c-block): this split's contiguous share of it
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC_DTYPE)
    c_blocks = tl.cdiv(CG, BLOCK_K)
    total = R * S * c_blocks
    start, stop = split_steps(split, total, SPLIT_K)
    # at least one step, and the compiler told so (split_steps says why it matters):
    # split_chunks leaves no chunk empty, but for C/groups = 0, whose one step loads nothing
    # (c_ok: zeros, as is the empty sum)
    stop = tl.maximum(stop, start + 1)
    tl.assume(stop > start)
    # the first step's tap (r, s) and channel block c0, decoded once; each step carries them
    # on to the next (as _tap_tma_acc does: no integer division in the loop)
    c0, rs, r, s = tap_step_of(start, CG, S, BLOCK_K)
    for _ in range(start, stop):
        c = c0 + offs_k
        h = h0 + r * dil_h
        w = w0 + s * dil_w
        row_ok = mask_m & (h >= 0) & (h < H) & (w >= 0) & (w < W)
        c_ok = c < CG
        # the tap's offset is one scalar for every row (x_taps: the rows at tap (0, 0))
        tap = (r * dil_h).to(tl.int64) * sxh + (s * dil_w).to(tl.int64) * sxw
        a_ptrs = (x_taps + tap)[:, None] + c.to(tl.int64)[None, :] * sxc
        a = tl.load(a_ptrs, mask=row_ok[:, None] & c_ok[None, :], other=0.0)
        if W_DESC:
            # One TMA tile of KRSC rows. Its columns past this tap's C/groups (the
            # next tap's weights, or zero fill) meet A's masked, zero columns; its
            # rows past this group's K/groups only reach masked-out outputs.
            b = w_desc.load([g * KG + pid_n * BLOCK_N, rs * CG + c0]).T
        else:
            b_ptrs = (w_cols + r.to(tl.int64) * swr + s.to(tl.int64) * sws)[None, :] \
                + c.to(tl.int64)[:, None] * swc
            b = tl.load(b_ptrs, mask=c_ok[:, None] & mask_n[None, :], other=0.0)
        acc = mma(a, b, acc, INPUT_PRECISION, ACC_DTYPE)
        # -- the next step: the next channel block, or the next tap's first (s, then r)
        c0, rs, r, s, _, _ = next_tap_step(c0, rs, r, s, CG, S, BLOCK_K)

    if PARTIAL:
        # split-K: raw partial sums; splitk_reduce_kernel sums them in order and runs the epilogue
        K = GROUPS * KG
        ws = ws_ptr + (split * M).to(tl.int64) * K + offs_m.to(tl.int64)[:, None] * K + k_out[None, :]
        tl.store(ws, acc, mask=mask_m[:, None] & mask_n[None, :])
        return

    # -- epilogue: act(acc + bias + residual), cast, one store in the output's own layout
    n64, p64, q64 = n.to(tl.int64), p.to(tl.int64), q.to(tl.int64)
    y_rows = n64 * syn + p64 * syp + q64 * syq
    r_rows = n64 * srn + p64 * srp + q64 * srq
    conv_epilogue(acc, b_ptr, res_ptr, y_ptr, y_rows, r_rows, k_out, syk, srk, mask_m, mask_n, alpha,
                  HAS_BIAS, HAS_RESIDUAL, ACTIVATION)


@triton.jit
def splitk_reduce_kernel(
    ws_ptr,  # (SPLIT_K, M, K) partial sums
    b_ptr, res_ptr, y_ptr,
    M, P, Q, K, SPLIT_K,
    syn, syk, syp, syq,
    srn, srk, srp, srq,
    alpha: tl.float64,  # leaky_relu slope; fp64, so that an fp64 conv gets it unrounded
    HAS_BIAS: tl.constexpr, HAS_RESIDUAL: tl.constexpr, ACTIVATION: tl.constexpr, ACC_DTYPE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """Sum split-K partials in a fixed order (deterministic), then the usual epilogue."""
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    k_out = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_m = offs_m < M
    mask_n = k_out < K
    ptrs = ws_ptr + offs_m.to(tl.int64)[:, None] * K + k_out[None, :]
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC_DTYPE)
    for split in range(0, SPLIT_K):
        acc += tl.load(ptrs + (split * M).to(tl.int64) * K, mask=mask_m[:, None] & mask_n[None, :], other=0.0)
    q = (offs_m % Q).to(tl.int64)
    p = ((offs_m // Q) % P).to(tl.int64)
    n = (offs_m // (P * Q)).to(tl.int64)
    conv_epilogue(acc, b_ptr, res_ptr, y_ptr, n * syn + p * syp + q * syq, n * srn + p * srp + q * srq, k_out,
                  syk, srk, mask_m, mask_n, alpha, HAS_BIAS, HAS_RESIDUAL, ACTIVATION)


_FPROP_KEY = ["M", "H", "W", "CG", "KG", "GROUPS", "SPLIT_K", "R", "S", "stride_h", "stride_w", "dil_h", "dil_w",
              "sxc", "syk", "HAS_RESIDUAL", "ACTIVATION"]  # the epilogue changes what the pruner keeps


def _fprop_prune_hook():
    return configs.gemm_prune_hook(m_fn=lambda a: a["M"], n_fn=lambda a: a["KG"], k_fn=lambda a: a["CG"],
                                   tensor_arg="x_ptr", uncapped=configs.UNCAPPED_TILES["fprop_kernel"])


_fprop_tuned = triton.autotune(
    configs=configs.gemm_configs(),
    key=_FPROP_KEY,
    do_bench=configs.capture_safe_bench,
    prune_configs_by={"early_config_prune": _fprop_prune_hook()},
)(fprop_kernel)


# --------------------------------------------------------------------------- Hopper: TMA weight loads


def weight_tma_usable(w: torch.Tensor, problem: Conv2dProblem, flipped: bool = False) -> bool:
    """The weight as a TMA-loadable (K, R*S*C/groups) row-major matrix: a KRSC (channels_last)
    weight on sm_90+ (or Triton's interpreter), its base and every tap's first column 16-byte
    aligned (a TMA box starts 16-byte aligned in its inner dimension), hence C/groups * elem % 16 == 0.
    ``flipped``: w is instead a stride-1 dgrad's conv weight, (C, K/groups, R, S) in this forward's
    terms (fprop_tap_tma_kernel's W_FLIPPED), as a (C, R*S*K/groups) row-major matrix."""
    pb = problem
    if TensorDescriptor is None or w.dtype not in TMA_DTYPES or pb.K == 0 or pb.C_per_group == 0:
        return False
    if w.is_cuda and torch.cuda.get_device_capability(w.device)[0] < 9:
        return False
    rows, inner = (pb.C, pb.K_per_group) if flipped else (pb.K, pb.C_per_group)
    if tuple(w.shape) != (rows, inner, pb.R, pb.S):
        return False
    krsc = (pb.R * pb.S * inner, 1, pb.S * inner, inner)
    if any(size > 1 and st != want for size, st, want in zip(w.shape, w.stride(), krsc)):
        return False
    return inner * w.element_size() % 16 == 0 and w.data_ptr() % 16 == 0


def _set_weight_tma_block(nargs):
    """Autotune pre-hook: the weight descriptor loads (BLOCK_N, BLOCK_K) tiles."""
    nargs["w_desc"].block_shape = [nargs["BLOCK_N"], nargs["BLOCK_K"]]


_fprop_tma_tuned = triton.autotune(
    configs=[triton.Config(c.kwargs, num_warps=c.num_warps, num_stages=c.num_stages, pre_hook=_set_weight_tma_block)
             for c in configs.gemm_configs()],
    key=_FPROP_KEY,
    do_bench=configs.capture_safe_bench,
    prune_configs_by={"early_config_prune": _fprop_prune_hook()},
)(fprop_kernel)


def accepts_splitk(problem: Conv2dProblem) -> bool:
    """Split-K pays off when the output is small (late layers at small batch) and the reduction long."""
    pb = problem
    return pb.N * pb.P * pb.Q <= 4096 and pb.R * pb.S * pb.C_per_group >= 512


def split_chunks(split_k: int, problem: Conv2dProblem) -> int:
    """``split_k`` as the forward kernels run it: at least 1, and no more chunks than the
    reduction has steps at the largest BLOCK_K of any config (MAX_BLOCK_K), so that none is empty
    whatever config runs (_common.split_steps)."""
    pb = problem
    return max(1, min(int(split_k), pb.R * pb.S * triton.cdiv(pb.C_per_group, configs.MAX_BLOCK_K)))


def choose_split_k(problem: Conv2dProblem, device: torch.device) -> int:
    """Chunks of the forward reduction: enough programs to fill the GPU twice, at least 2, at most 16,
    and no chunk shorter than 4 reduction steps of 64 channels."""
    pb = problem
    sms = sm_count(device)
    tiles = max(1, pb.groups * triton.cdiv(pb.N * pb.P * pb.Q, 64) * triton.cdiv(pb.K_per_group, 64))  # N = 0: 1
    steps = pb.R * pb.S * triton.cdiv(pb.C_per_group, 64)
    return max(2, min(triton.cdiv(2 * sms, tiles), 16, steps // 4))


def conv2d_fprop(
    x: torch.Tensor,
    w: torch.Tensor,
    bias: Optional[torch.Tensor],
    problem: Conv2dProblem,
    out: Optional[torch.Tensor] = None,
    activation: str = "none",
    alpha: float = 0.01,
    residual: Optional[torch.Tensor] = None,
    split_k: int = 1,
    weight_tma: bool = False,
) -> torch.Tensor:
    """Launch the forward implicit-GEMM conv, with an optional fused epilogue.

    Computes ``act(conv(x, w) + bias + residual)`` with one store per element.

    Args:
        x: input (N, C, H, W), any strides, validated by ``spec.conv2d_problem``.
        w: weight (K, C/groups, R, S), any strides.
        bias: (K,) or None.
        problem: the validated problem description.
        out: optional preallocated output (N, K, P, Q); any strides.
        activation: a name from ``_common.ACTIVATIONS`` ("none" by default).
        alpha: the leaky_relu slope.
        residual: optional (N, K, P, Q) tensor added before the activation; any strides.
        split_k: cut the reduction into this many chunks, summed afterwards in a fixed
            order (deterministic); for small outputs with long reductions.
        weight_tma: load the weight through a TMA descriptor; the caller checks
            ``weight_tma_usable`` first.

    Returns:
        y (N, K, P, Q) in x's dtype, channels_last exactly when F.conv2d's would be.
    """
    pb = problem
    fw = prepare_forward(x, w, bias, residual, pb, out, activation)
    out = fw.out
    if out.numel() == 0:
        return out
    M = pb.N * pb.P * pb.Q  # checked by prepare_forward
    KG, CG = pb.K_per_group, pb.C_per_group
    split = split_chunks(split_k, pb)
    ws = None
    if split > 1:
        ws = alloc_partials((split, M, pb.K), x)

    if weight_tma:
        tuned, name = _fprop_tma_tuned, "fprop_tma"
        w_desc = TensorDescriptor.from_tensor(dense_view(w, (pb.K, pb.R * pb.S * pb.C_per_group)), [16, 16])
    else:
        tuned, name, w_desc = _fprop_tuned, "fprop", w

    def grid(meta):
        return (split * pb.groups * triton.cdiv(M, meta["BLOCK_M"]) * triton.cdiv(KG, meta["BLOCK_N"]),)

    tuning.launch(tuned, name, x.device, grid,
        x, w, w_desc, fw.bias, fw.residual, out, ws if ws is not None else out,
        M, pb.H, pb.W, pb.P, pb.Q, pb.R, pb.S, CG, KG, pb.groups, split,
        pb.stride_h, pb.stride_w, pb.pad_h, pb.pad_w, pb.dil_h, pb.dil_w,
        *x.stride(), *w.stride(), *out.stride(), *fw.res_strides,
        float(alpha),
        **fw.epilogue,
        INPUT_PRECISION=input_precision_for(x),
        PARTIAL=ws is not None,
        W_DESC=weight_tma,
    )
    if ws is not None:
        _reduce_partials(ws, fw, out, pb, M, split, alpha)
    return out


def _reduce_partials(ws, fw, out, pb: Conv2dProblem, M: int, split: int, alpha: float) -> None:
    """Sum the (split, M, K) partials in order into ``out``, with the epilogue (splitk_reduce_kernel)."""
    block_m, block_n = 64, 32
    tuning.launch_direct(splitk_reduce_kernel, (triton.cdiv(M, block_m), triton.cdiv(pb.K, block_n)),
        ws, fw.bias, fw.residual, out, M, pb.P, pb.Q, pb.K, split, *out.stride(), *fw.res_strides,
        float(alpha), **fw.epilogue, BLOCK_M=block_m, BLOCK_N=block_n,
    )


def conv2d_fprop_splitk(x, w, bias, problem: Conv2dProblem, out=None, activation="none", alpha=0.01,
                        residual=None) -> torch.Tensor:
    """The split-K forward family: ``conv2d_fprop`` with ``choose_split_k`` chunks, its weight
    loaded by TMA where it can be (as implicit_tma: on ResNet-50's late layers on the H100 that
    was 4% to 2x faster than pointer loads, 2026-11-26)."""
    return conv2d_fprop(x, w, bias, problem, out, activation, alpha, residual,
                        split_k=choose_split_k(problem, x.device), weight_tma=weight_tma_usable(w, problem))


def conv2d_fprop_tma(x, w, bias, problem: Conv2dProblem, out=None, activation="none", alpha=0.01,
                     residual=None) -> torch.Tensor:
    """The general implicit GEMM with TMA weight loads (Hopper); pointer loads where TMA can't apply.

    Args/Returns: as ``conv2d_fprop``.
    """
    return conv2d_fprop(x, w, bias, problem, out, activation, alpha, residual,
                        weight_tma=weight_tma_usable(w, problem))


# --------------------------------------------------------------------------- Hopper: TMA for both operands
#
# The input a tap reads for a spatial tile of output pixels is a tile of input
# pixels, shifted by the tap's offset: at stride 1, one TMA box of NHWC x. TMA
# zero-fills the coordinates outside the image, which is exactly the padding, so
# the gather, its addresses and its masks all disappear from the reduction loop.
# The price: M is tiled in spatial boxes (BLOCK_M = BOX_N * BOX_H * BOX_W, below)
# instead of runs of consecutive pixels, so image edges can waste part of a tile.
#
# Strided layers (ResNet's 3x3 and 1x1 stride-2 convs, ConvNeXt's 2x2 downsampling)
# take the same box, [BOX_N, BOX_H, 1, BOX_W, BLOCK_K], from x's phase view
# (_common.phase_view), where H and W are multiples of the stride. Stride 1 is the
# same view with unit phases, so one kernel serves both.
#
#     A[m, kk]  x[n, h, w, c]   m -> (n, p, q) = (n0 + m // (BOX_H*BOX_W), p0 + m // BOX_W % BOX_H,
#                                                 q0 + m % BOX_W)
#                               h = p*sh + r*dil_h - pad_h = sh*(p + shift_h) + phase_h
#                               w = q*sw + s*dil_w - pad_w = sw*(q + shift_w) + phase_w
#     B[kk, j]  as in fprop_kernel with W_DESC: a TMA tile of the KRSC weight
#
# The box is BOX_N images of BOX_H x BOX_W output pixels, BLOCK_M in all, split per BLOCK_M to
# leave the fewest of its rows outside the output (_common.tap_tma_boxes: a 56x56 output at
# BLOCK_M = 128 takes 2 images of 8x8, where 16x8 boxes of one image left 1/8 of the rows out).
# One-row tiles (BLOCK_W = BLOCK_M: the wgmma then reads A straight from shared memory) keep
# their one-row boxes.

TAP_TMA_BLOCK_W = configs.SPATIAL_TILE_WIDTH  # the spatial tiles' BLOCK_W: boxes up to 8 columns wide


# The shortest reduction tap_tma runs: one step (any problem with channels to reduce). On an H100
# (Triton 3.6, 84cd0fb) the kernel gave wrong tiles, different from run to run, on 1x1 convs whose
# loop took 2 to 8 steps (C = 128 to 512 at BLOCK_K = 64, 128x128x64 tiles, 3 stages), and for a
# while problems under 9 steps went to other families. The cause, found in the SASS since, is the
# wgmma register hazard (configs.WGMMA_RS_HAZARD, triton#9433), which the tap-TMA pruners now sync
# where Triton has it, and the next H100 check confirmed it (283a32b, perf/race_check.py on that
# 1x1 at ResNet-50 size, 4 steps): with the rule off, 128x128x64 w8 s3 gave rel_err 2e-2 and other
# bits per call again; with it on, every tile was right with the same bits. The compile report
# finds no hazard in a synced build (Triton 3.6, every tap-TMA config, fp16 and bf16). So short
# reductions are tap_tma's again: the router times it against the other families (a strided 1x1,
# ConvNeXt's 2x2 downsample), dgrad runs its phases on it, and the router's determinism guard
# stays. Raise this again if a GPU shows a short reduction going wrong.
TAP_TMA_MIN_STEPS = 1


def tap_tma_steps(problem: Conv2dProblem) -> int:
    """The reduction steps of fprop_tap_tma_kernel at BLOCK_K = 64 (its fewest): taps x channel blocks."""
    return problem.R * problem.S * triton.cdiv(problem.C_per_group, 64)


def accepts_tap_tma(problem: Conv2dProblem) -> bool:
    """The problems a shifted input box can serve: any kernel size, padding, dilation and groups;
    at stride 1, or at a stride that divides H and W (x's phase view); and a reduction of at
    least ``TAP_TMA_MIN_STEPS`` steps."""
    return phase_view_fits(problem) and tap_tma_steps(problem) >= TAP_TMA_MIN_STEPS


def input_tma_usable(x: torch.Tensor, w: torch.Tensor, problem: Conv2dProblem, flipped: bool = False) -> bool:
    """Both operands TMA-loadable: NHWC-contiguous x (its channel blocks then start 16-byte
    aligned, as C/groups is), a KRSC weight (``weight_tma_usable``, ``flipped`` as there), and
    the spatially tiled M within int32 for the largest tile."""
    pb = problem
    if not accepts_tap_tma(pb) or x.dtype not in TMA_DTYPES or not weight_tma_usable(w, pb, flipped):
        return False
    if not x.is_contiguous(memory_format=torch.channels_last) or x.data_ptr() % 16:
        return False
    return spatial_tiles_fit(pb.N, pb.P, pb.Q)


def spatial_tiles_fit(N: int, P: int, Q: int) -> bool:
    """Whether N images of P x Q output pixels, tiled spatially by the largest configured
    tile, keep the tile-padded pixel count within the kernel's int32 indices."""
    boxes = tap_tma_boxes(N, P, Q)

    def padded(c):
        bn, bh, bw = tap_tma_box(c.kwargs["BLOCK_M"], c.kwargs["BLOCK_W"], boxes)
        return triton.cdiv(N, bn) * triton.cdiv(P, bh) * triton.cdiv(Q, bw) * c.kwargs["BLOCK_M"]

    return max(padded(c) for c in _fprop_tap_tma_tuned.configs) < MAX_PIXELS


@triton.jit
def _tap_tma_origin(pid_m, tiles_h, tiles_w, BOX_N: tl.constexpr, BOX_H: tl.constexpr, BOX_W: tl.constexpr):
    """(n0, p0, q0): the first image, output row and column of spatial M-tile ``pid_m``'s box."""
    return (pid_m // (tiles_h * tiles_w)) * BOX_N, ((pid_m // tiles_w) % tiles_h) * BOX_H, (pid_m % tiles_w) * BOX_W


@triton.jit
def _tap_tma_acc(
    x_desc, w_desc, g, n0, p0, q0, pid_n, k_lo, k_hi,
    C, R, S, CG, KG, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, w_tap0, w_tap_row, w_tap_col,
    ACC_DTYPE: tl.constexpr, INPUT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, EVEN_K: tl.constexpr,
    SYNC_MMA: tl.constexpr, W_FLIPPED: tl.constexpr, TRANSPOSED: tl.constexpr = False,
    rot=0, ROTATE: tl.constexpr = False,
):
    """Reduction steps [k_lo, k_hi) of one output tile: (r, s, c-block), c-block fastest, as in
    fprop_kernel, from a TMA box of x per step and a TMA tile of w. With W_FLIPPED, tap (r, s)
    reads w's tap w_tap0 - r*w_tap_row - s*w_tap_col: a stride-1 dgrad's flipped taps
    (R*S - 1, S, 1), or one stride phase's (dgrad.py's phased kernel). With TRANSPOSED, each step
    computes acc^T += w's tile times the box transposed, and the tile is transposed once at the
    end: the box is then the wgmma's B operand, which the wgmma reads from shared memory as TMA
    wrote it; as A it goes through registers (configs.TRANSPOSED_MIN_BLOCK_N says why it matters).
    With ROTATE, the steps [0, k_hi - k_lo) of the whole reduction start at step ``rot`` and wrap
    round past the last tap to the first (configs.ROTATED_FORMS says why).

    The step's tap and channel block are decoded once, before the loop, and then carried from
    step to step (``next_tap_step``, ``tap_phase_next``): decoding them in every step took two
    integer divisions per step (by the channel blocks and by S; four at stride 2), 40 of a
    64x64x64 w4 s4 step's 152 sm_90 SASS instructions on Triton 3.9 (51 of 162 on 3.6), all
    in one dependent chain ahead of the step's TMA loads."""
    offs_k = tl.arange(0, BLOCK_K)
    if TRANSPOSED:
        acc = tl.zeros((BLOCK_N, BLOCK_M), dtype=ACC_DTYPE)
    else:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC_DTYPE)
    # -- the first step's tap (r, s) and channel block c0; then only carries. int32: a stream-K
    # share's bounds come as int64, but a tile's steps are few, and 32-bit divisions are cheaper
    k_lo = k_lo.to(tl.int32)
    c0, rs, r, s = tap_step_of(k_lo + rot, CG, S, BLOCK_K)
    shift_h, phase_h = tap_phase(r, dil_h, pad_h, stride_h)
    shift_w, phase_w = tap_phase(s, dil_w, pad_w, stride_w)
    row_shift_w, row_phase_w = tap_phase(0, dil_w, pad_w, stride_w)  # where each row of taps starts
    top_shift_h, top_phase_h = tap_phase(0, dil_h, pad_h, stride_h)  # the first row's (ROTATE's wrap)
    dil_qh, dil_rh = dil_h // stride_h, dil_h % stride_h  # a tap's step in the phase view
    dil_qw, dil_rw = dil_w // stride_w, dil_w % stride_w
    for _ in range(k_lo, k_hi):
        a = x_desc.load([n0, p0 + shift_h, phase_h, q0 + shift_w, phase_w * C + g * CG + c0])
        a = a.reshape(BLOCK_M, BLOCK_K)
        # Channels past this group's C/groups are the next group's (or the next column
        # phase's; past the row, TMA's zeros); the weight tile's matching columns hold the
        # next tap's weights. Where BLOCK_K divides C/groups no box reaches past them, and
        # without the mask A goes from shared memory to the MMA with no select in registers.
        if not EVEN_K:
            a = tl.where((c0 + offs_k < CG)[None, :], a, tl.zeros_like(a))
        if W_FLIPPED:
            # a dgrad's conv of dy (dgrad.py): w is the conv's own KRSC weight, (C, K/groups, R, S) in
            # this forward's terms, read in place: the flipped tap's [BLOCK_K, BLOCK_N] tile,
            # rows this step's channels of dy (past them, the next group's or TMA's zeros, against A's
            # zero columns), columns dx's channels (past them, the next tap's: masked outputs)
            b = w_desc.load([g * CG + c0, (w_tap0 - r * w_tap_row - s * w_tap_col) * KG + pid_n * BLOCK_N])
        else:
            b = w_desc.load([g * KG + pid_n * BLOCK_N, rs * CG + c0]).T
        if TRANSPOSED:
            acc = mma(b.T, a.T, acc, INPUT_PRECISION, ACC_DTYPE)
        else:
            acc = mma(a, b, acc, INPUT_PRECISION, ACC_DTYPE)
        if SYNC_MMA:
            acc = mma_barrier(acc)
        # -- the next step: the next channel block, or the next tap's first (s, then r)
        c0, rs, r, s, next_tap, next_row = next_tap_step(c0, rs, r, s, CG, S, BLOCK_K)
        shift_w, phase_w = tap_phase_next(shift_w, phase_w, dil_qw, dil_rw, stride_w, next_tap)
        shift_w = tl.where(next_row, row_shift_w, shift_w)
        phase_w = tl.where(next_row, row_phase_w, phase_w)
        shift_h, phase_h = tap_phase_next(shift_h, phase_h, dil_qh, dil_rh, stride_h, next_row)
        if ROTATE:
            # past the last row of taps, a rotated reduction goes on from the first
            wrap = r == R
            r = tl.where(wrap, 0, r)
            rs = tl.where(wrap, 0, rs)
            shift_h = tl.where(wrap, top_shift_h, shift_h)
            phase_h = tl.where(wrap, top_phase_h, phase_h)
    if TRANSPOSED:
        acc = acc.T
    return acc


@triton.jit
def _tap_tma_rows(n0, p0, q0, N, P, Q, BLOCK_M: tl.constexpr, BOX_H: tl.constexpr, BOX_W: tl.constexpr):
    """(n, p, q) of the tile's BLOCK_M rows (int64), and which of them lie inside the output."""
    offs_m = tl.arange(0, BLOCK_M)
    n = n0 + offs_m // (BOX_H * BOX_W)
    p = p0 + (offs_m // BOX_W) % BOX_H
    q = q0 + offs_m % BOX_W
    return n.to(tl.int64), p.to(tl.int64), q.to(tl.int64), (n < N) & (p < P) & (q < Q)


@triton.jit
def _tap_tma_store(
    acc, g, n0, p0, q0, pid_n, N, P, Q, KG,
    b_ptr, res_ptr, y_ptr, syn, syk, syp, syq, srn, srk, srp, srq, alpha,
    HAS_BIAS: tl.constexpr, HAS_RESIDUAL: tl.constexpr, ACTIVATION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BOX_H: tl.constexpr, BOX_W: tl.constexpr,
):
    """The epilogue: the tile's pixels inside the output, one store."""
    n, p, q, mask_m = _tap_tma_rows(n0, p0, q0, N, P, Q, BLOCK_M, BOX_H, BOX_W)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    conv_epilogue(acc, b_ptr, res_ptr, y_ptr, n * syn + p * syp + q * syq, n * srn + p * srp + q * srq,
                  g * KG + offs_n, syk, srk, mask_m, offs_n < KG, alpha,
                  HAS_BIAS, HAS_RESIDUAL, ACTIVATION)


@triton.jit
def fprop_tap_tma_kernel(
    # descriptors and pointers
    x_desc,  # x as an (N, H/sh, sh, W/sw, sw*C) phase view of NHWC: [BOX_N, BOX_H, 1, BOX_W, BLOCK_K] boxes
    w_desc,  # w as a (K, R*S*C/groups) row-major matrix (KRSC): [BLOCK_N, BLOCK_K] tiles; with W_FLIPPED,
             # a stride-1 dgrad's weight as a (C, R*S*K/groups) one: [BLOCK_K, BLOCK_N] tiles
    b_ptr,  # (K,); unused unless HAS_BIAS
    res_ptr,  # (N, K, P, Q), any strides; unused unless HAS_RESIDUAL
    y_ptr,  # (N, K, P, Q), any strides
    ws_ptr,  # fp32: (SPLIT_K, N*P*Q, K) partial sums if PARTIAL, (programs, BLOCK_M*BLOCK_N) if STREAM_K
    flags_ptr,  # (programs,) int32, zero between launches; unused unless STREAM_K
    # problem sizes
    N, C, P, Q, R, S,
    CG, KG, GROUPS,
    SPLIT_K,  # the reduction is cut into SPLIT_K chunks (1: no split)
    # conv parameters
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
    # strides, in elements
    syn, syk, syp, syq,
    srn, srk, srp, srq,
    alpha: tl.float64,  # leaky_relu slope; fp64, so that an fp64 conv gets it unrounded
    # meta-parameters
    HAS_BIAS: tl.constexpr, HAS_RESIDUAL: tl.constexpr, ACTIVATION: tl.constexpr,
    ACC_DTYPE: tl.constexpr, INPUT_PRECISION: tl.constexpr,
    PARTIAL: tl.constexpr,  # store raw partial sums to ws_ptr (split-K) instead of the epilogue
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    BLOCK_W: tl.constexpr,
    K_ALIGN: tl.constexpr = 1,  # k_align(C/groups): EVEN_K where BLOCK_K divides it
    BOXES: tl.constexpr = 0,  # _common.tap_tma_boxes(N, P, Q): the box per BLOCK_M; 0: one image, BLOCK_W wide
    SYNC_MMA: tl.constexpr = False,  # finish each step's wgmmas before the next (configs.WGMMA_RS_HAZARD)
    STREAM_K: tl.constexpr = False,  # at most one program per SM, sharing out (tile, step) pairs evenly
    W_FLIPPED: tl.constexpr = False,  # w_desc is a stride-1 dgrad's weight, its taps flipped (see _tap_tma_acc)
    TRANSPOSED: tl.constexpr = False,  # each step the tile's transpose, w times the box: see _tap_tma_acc
    ROTATE: tl.constexpr = False,  # without split-K or stream-K, each M-tile's reduction starts elsewhere
):
    # the box, as the descriptor's pre-hook and the grid take it
    BOX: tl.constexpr = tap_tma_box_of(BLOCK_M, BLOCK_W, BOXES)
    BOX_N: tl.constexpr = BOX[0]
    BOX_H: tl.constexpr = BOX[1]
    BOX_W: tl.constexpr = BOX[2]
    EVEN_K: tl.constexpr = K_ALIGN % BLOCK_K == 0

    # -- tiles: (group, spatial M-tile, N-tile); an M-tile is the box at (n0, p0, q0)
    tiles_h = tl.cdiv(P, BOX_H)
    tiles_w = tl.cdiv(Q, BOX_W)
    tiles_m = tl.cdiv(N, BOX_N) * tiles_h * tiles_w
    steps = R * S * tl.cdiv(CG, BLOCK_K)
    if STREAM_K:
        # -- every program takes an equal share of all (tile, step) pairs (_common.stream_k_share);
        # int64: tiles * steps * programs can pass 2**31
        total = (GROUPS * tiles_m * tl.cdiv(KG, BLOCK_N)).to(tl.int64) * steps
        pid = tl.program_id(0)
        it, end = stream_k_share(pid, total)
        while it < end:  # backwards, last pair first (see _common)
            tile, k_lo, k_hi = stream_k_step(it, end, steps)
            g, pid_m, pid_n = tile_pid(tile, tiles_m * BLOCK_M, KG, BLOCK_M, BLOCK_N, GROUP_M)
            n0, p0, q0 = _tap_tma_origin(pid_m, tiles_h, tiles_w, BOX_N, BOX_H, BOX_W)
            acc = _tap_tma_acc(x_desc, w_desc, g, n0, p0, q0, pid_n, k_lo, k_hi, C, R, S, CG, KG,
                               stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, R * S - 1, S, 1,
                               ACC_DTYPE, INPUT_PRECISION, BLOCK_M, BLOCK_N, BLOCK_K, EVEN_K, SYNC_MMA, W_FLIPPED,
                               TRANSPOSED)
            if k_hi < steps:
                stream_k_hand_off(acc, ws_ptr, flags_ptr, pid, BLOCK_M, BLOCK_N)
            else:
                if k_lo > 0:
                    acc = stream_k_gather(acc, ws_ptr, flags_ptr, tile, steps, total, BLOCK_M, BLOCK_N)
                _tap_tma_store(acc, g, n0, p0, q0, pid_n, N, P, Q, KG, b_ptr, res_ptr, y_ptr,
                               syn, syk, syp, syq, srn, srk, srp, srq, alpha, HAS_BIAS, HAS_RESIDUAL, ACTIVATION,
                               BLOCK_M, BLOCK_N, BOX_H, BOX_W)
            end -= k_hi - k_lo
    else:
        # -- program-id mapping: (split, group, spatial M-tile, N-tile), and this split's steps
        outer, pid_m, pid_n = tile_pid(tl.program_id(0), tiles_m * BLOCK_M, KG, BLOCK_M, BLOCK_N, GROUP_M)
        split = outer // GROUPS
        g = outer % GROUPS
        n0, p0, q0 = _tap_tma_origin(pid_m, tiles_h, tiles_w, BOX_N, BOX_H, BOX_W)
        start, stop = split_steps(split, steps, SPLIT_K)
        # at least one step, and the compiler told so (split_steps says why it matters):
        # split_chunks leaves no chunk empty, and C/groups is at least 1 here (input_tma_usable)
        stop = tl.maximum(stop, start + 1)
        tl.assume(stop > start)
        # ROTATE: the M-tiles' first steps spread evenly over the reduction (configs.ROTATED_FORMS)
        ROTATED: tl.constexpr = ROTATE and not PARTIAL
        rot = 0
        if ROTATED:
            rot = ((pid_m.to(tl.int64) * steps) // tiles_m).to(tl.int32)
        acc = _tap_tma_acc(x_desc, w_desc, g, n0, p0, q0, pid_n, start, stop, C, R, S, CG, KG,
                           stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, R * S - 1, S, 1,
                           ACC_DTYPE, INPUT_PRECISION, BLOCK_M, BLOCK_N, BLOCK_K, EVEN_K, SYNC_MMA, W_FLIPPED,
                           TRANSPOSED, rot, ROTATED)
        if PARTIAL:
            # split-K: raw partial sums by pixel index m = (n*P + p)*Q + q, as splitk_reduce_kernel reads them
            n, p, q, mask_m = _tap_tma_rows(n0, p0, q0, N, P, Q, BLOCK_M, BOX_H, BOX_W)
            offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
            K = GROUPS * KG
            rows = ((n * P + p) * Q + q) * K
            ws = ws_ptr + split.to(tl.int64) * N * P * Q * K + rows[:, None] + (g * KG + offs_n)[None, :]
            tl.store(ws, acc, mask=mask_m[:, None] & (offs_n < KG)[None, :])
        else:
            _tap_tma_store(acc, g, n0, p0, q0, pid_n, N, P, Q, KG, b_ptr, res_ptr, y_ptr,
                           syn, syk, syp, syq, srn, srk, srp, srq, alpha, HAS_BIAS, HAS_RESIDUAL, ACTIVATION,
                           BLOCK_M, BLOCK_N, BOX_H, BOX_W)


def k_align(cg: int) -> int:
    """The largest power of two up to 64 that divides C/groups: a BLOCK_K that divides it never
    takes a box past the group's channels, so the kernel needs no mask on A (EVEN_K)."""
    return math.gcd(cg, 64) if cg > 0 else 1


def _set_tap_tma_blocks(nargs):
    """Autotune pre-hook: the input box is the config's spatial tile, the weight tile (BLOCK_N, BLOCK_K)
    ((BLOCK_K, BLOCK_N) for a dgrad's flipped weight)."""
    box_n, box_h, box_w = tap_tma_box(nargs["BLOCK_M"], nargs["BLOCK_W"], nargs.get("BOXES", 0))
    nargs["x_desc"].block_shape = [box_n, box_h, 1, box_w, nargs["BLOCK_K"]]
    w_tile = [nargs["BLOCK_N"], nargs["BLOCK_K"]]
    nargs["w_desc"].block_shape = w_tile[::-1] if nargs.get("W_FLIPPED") else w_tile
    if nargs.get("STREAM_K"):
        # the partial-tile scratch: a slot per program (the launcher passes an empty tensor)
        partials = nargs["ws_ptr"]
        need = nargs["flags_ptr"].numel() * nargs["BLOCK_M"] * nargs["BLOCK_N"]
        if partials.numel() < need:
            partials.resize_(need)


def tap_tma_configs(interpreter=None, pre_hook=None):
    """8-wide spatial tiles, and one-row tiles (configs.TAP_TMA_ROW_TILES, compiled only), each
    with the pre-hook that shapes the descriptors' boxes (``pre_hook``: another kernel's, for
    its own argument names; dgrad's phased kernel)."""
    return [triton.Config(c.kwargs, num_warps=c.num_warps, num_stages=c.num_stages,
                          pre_hook=pre_hook or _set_tap_tma_blocks)
            for c in configs.spatial_tile_configs(configs.TAP_TMA_ROW_TILES, "BLOCK_M", interpreter)]


def tap_tma_streamk_configs(interpreter=None):
    """The stream-K variant's configs: configs.STREAM_K_TILES as 8-wide spatial tiles (the
    interpreter's one config), with STREAM_K on and the pre-hook."""
    return [triton.Config(c.kwargs, num_warps=c.num_warps, num_stages=c.num_stages, pre_hook=_set_tap_tma_blocks)
            for c in configs.gemm_configs(configs.STREAM_K_TILES, interpreter=interpreter,
                                          BLOCK_W=configs.SPATIAL_TILE_WIDTH, STREAM_K=True)]


_TAP_TMA_KEY = ["N", "P", "Q", "R", "S", "CG", "KG", "GROUPS", "SPLIT_K", "stride_h", "stride_w", "pad_h", "pad_w",
                "dil_h", "dil_w", "syk", "HAS_RESIDUAL", "ACTIVATION", "W_FLIPPED"]
_TAP_TMA_PRUNE = configs.SpatialTilePruneHook(
    m_fn=lambda a: a["N"] * a["P"] * a["Q"], n_fn=lambda a: a["KG"], k_fn=lambda a: a["CG"],
    tensor_arg="y_ptr", span="BLOCK_M", k_align_arg="K_ALIGN", gathered=False, transposable=True, rotatable=True,
)

_fprop_tap_tma_tuned = triton.autotune(
    configs=tap_tma_configs(), key=_TAP_TMA_KEY, do_bench=configs.capture_safe_bench,
    prune_configs_by={"early_config_prune": _TAP_TMA_PRUNE},
)(fprop_tap_tma_kernel)
# the stream-K variant, tuned on its own (only the layers whose tiles fill the SMs badly ask for it)
_fprop_tap_tma_streamk_tuned = triton.autotune(
    configs=tap_tma_streamk_configs(), key=_TAP_TMA_KEY, do_bench=configs.capture_safe_bench,
    prune_configs_by={"early_config_prune": _TAP_TMA_PRUNE},
)(fprop_tap_tma_kernel)


def conv2d_fprop_tap_tma(x, w, bias, problem: Conv2dProblem, out=None, activation="none", alpha=0.01,
                         residual=None, split_k: int = 1, stream_k: bool = False,
                         weight_flipped: bool = False) -> torch.Tensor:
    """The forward with TMA loads of both operands (Hopper); where they can't apply
    (``input_tma_usable``), the implicit GEMM (``conv2d_fprop``, split the same way, its weight
    by TMA where ``weight_tma_usable``).

    Args/Returns: as ``conv2d_fprop``, ``split_k`` included; with ``stream_k``, the stream-K grid
    (``_common.stream_k_share``; ``split_k`` is then 1). With ``weight_flipped``, w is a stride-1
    dgrad's conv weight, (C, K/groups, R, S) for this forward of dy, read in place with its taps
    flipped (fprop_tap_tma_kernel's W_FLIPPED); the caller checks ``input_tma_usable(..., flipped=True)``,
    there is no fallback for it.
    """
    pb = problem
    split = split_chunks(split_k, pb)
    assert split == 1 or not stream_k, "stream-K shares out the whole reduction: no split with it"
    if not input_tma_usable(x, w, pb, weight_flipped):
        if weight_flipped:
            raise ValueError("a flipped dgrad weight needs TMA loads of both operands (input_tma_usable)")
        return conv2d_fprop(x, w, bias, pb, out, activation, alpha, residual, split_k=split,
                            weight_tma=weight_tma_usable(w, pb))
    fw = prepare_forward(x, w, bias, residual, pb, out, activation)
    out = fw.out
    if out.numel() == 0:
        return out
    M = pb.N * pb.P * pb.Q
    ws = alloc_partials((split, M, pb.K), x) if split > 1 else None
    x_desc = TensorDescriptor.from_tensor(phase_view(x, pb.stride_h, pb.stride_w), [1, 8, 1, TAP_TMA_BLOCK_W, 16])
    w_rows = pb.C if weight_flipped else pb.K
    w_cols = pb.R * pb.S * (pb.K_per_group if weight_flipped else pb.C_per_group)
    w_desc = TensorDescriptor.from_tensor(dense_view(w, (w_rows, w_cols)), [16, 16])
    KG = pb.K_per_group

    boxes = tap_tma_boxes(pb.N, pb.P, pb.Q)
    programs = persistent_programs(x.device) if stream_k else None  # a device query: host time per call

    def grid(meta):
        bn, bh, bw = tap_tma_box(meta["BLOCK_M"], meta["BLOCK_W"], boxes)
        tiles_m = triton.cdiv(pb.N, bn) * triton.cdiv(pb.P, bh) * triton.cdiv(pb.Q, bw)
        tiles = pb.groups * tiles_m * triton.cdiv(KG, meta["BLOCK_N"])
        if meta.get("STREAM_K"):
            return (min(tiles * pb.R * pb.S * triton.cdiv(pb.C_per_group, meta["BLOCK_K"]), programs),)
        return (split * tiles,)

    if stream_k:
        # the partial tiles (sized by the pre-hook per config) and the flags, which a launch
        # plan fetches per call (the buffer depends on the stream), as gemm1x1_tma's stream-K
        ws = torch.empty(0, dtype=torch.float32, device=x.device)
        device = x.device  # not x: the plan keeps this function, and must not keep the call's tensors
        flags = plans.derive(lambda: stream_k_flags(device, programs))
        tuned, name = _fprop_tap_tma_streamk_tuned, "fprop_tap_tma_streamk"
    else:
        flags = out  # unused
        tuned, name = _fprop_tap_tma_tuned, "fprop_tap_tma"
    tuning.launch(tuned, name, x.device, grid,
        x_desc, w_desc, fw.bias, fw.residual, out, ws if ws is not None else out, flags,
        pb.N, pb.C, pb.P, pb.Q, pb.R, pb.S, pb.C_per_group, KG, pb.groups, split,
        pb.stride_h, pb.stride_w, pb.pad_h, pb.pad_w, pb.dil_h, pb.dil_w,
        *out.stride(), *fw.res_strides, float(alpha),
        **fw.epilogue, INPUT_PRECISION=input_precision_for(x), PARTIAL=split > 1,
        K_ALIGN=k_align(pb.C_per_group), BOXES=boxes, W_FLIPPED=weight_flipped,
    )
    if split > 1:
        _reduce_partials(ws, fw, out, pb, M, split, alpha)
    return out


def conv2d_fprop_tap_tma_splitk(x, w, bias, problem: Conv2dProblem, out=None, activation="none", alpha=0.01,
                                residual=None, weight_flipped: bool = False) -> torch.Tensor:
    """The split-K forward with TMA boxes of the input per tap (``conv2d_fprop_tap_tma`` with
    ``choose_split_k`` chunks): for small outputs with long reductions, where tap_tma's tiles
    alone would leave SMs idle (ResNet-50's 7x7 layers at batch 32: 64 tiles of 128x128 for
    132 SMs). Where the input can't be TMA-loaded, the split-K implicit GEMM (a flipped dgrad
    weight raises instead).

    Args/Returns: as ``conv2d_fprop``; ``weight_flipped`` as for ``conv2d_fprop_tap_tma``.
    """
    return conv2d_fprop_tap_tma(x, w, bias, problem, out, activation, alpha, residual,
                                split_k=choose_split_k(problem, x.device), weight_flipped=weight_flipped)


# Stream-K pays where one program per tile leaves SMs idle for the whole reduction: ResNet-50's
# layer3 and layer4 3x3s at batch 32 have 6272 and 1568 output pixels, 98 and 56 tiles of 128x128
# (tap_tma's boxes) for an H100's 132 SMs (the H100 check of d080a04: 0.71x and 0.58-0.60x cuDNN on
# tap_tma and tap_tma_splitk). The bound is a guess, not yet measured: layer2's 3x3s (25088 pixels,
# 196 tiles, 1.5 waves) might gain too, and every problem it admits costs the router a timing.
TAP_TMA_STREAMK_MAX_PIXELS = 8192


def accepts_tap_tma_streamk(problem: Conv2dProblem) -> bool:
    """tap_tma's problems with at most TAP_TMA_STREAMK_MAX_PIXELS output pixels, while stream-K
    is on (configs.STREAM_K)."""
    pb = problem
    return configs.STREAM_K and accepts_tap_tma(pb) and pb.N * pb.P * pb.Q <= TAP_TMA_STREAMK_MAX_PIXELS

def conv2d_fprop_tap_tma_streamk(x, w, bias, problem: Conv2dProblem, out=None, activation="none", alpha=0.01,
                                 residual=None, weight_flipped: bool = False) -> torch.Tensor:
    """tap_tma on a stream-K grid (``conv2d_fprop_tap_tma`` with ``stream_k``): one program per
    SM, each taking an equal share of all (tile, reduction step) pairs, a tile cut between
    programs summed by its last one in program order (deterministic), with no workspace pass
    as split-K's. Where the input can't be TMA-loaded, the implicit GEMM (a flipped dgrad weight
    raises instead).

    Args/Returns: as ``conv2d_fprop``; ``weight_flipped`` as for ``conv2d_fprop_tap_tma``.
    """
    return conv2d_fprop_tap_tma(x, w, bias, problem, out, activation, alpha, residual, stream_k=True,
                                weight_flipped=weight_flipped)
