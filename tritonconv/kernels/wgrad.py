"""Gradient w.r.t. the weight (wgrad) and the bias, as implicit GEMMs with split-K.

The wgrad mapping, per group g and per tap (r, s) (a program handles one of each):

    ==========  ==========================  ===========================================
    GEMM        conv                        index decomposition
    ==========  ==========================  ===========================================
    M           K / groups output channels  row -> k = g * K/groups + row
    N_gemm      C / groups input channels   col -> c = g * C/groups + col
    K_gemm      N * P * Q output pixels     kk -> (n, p, q), q fastest; split in
                                            SPLIT_K contiguous chunks
    A[row, kk]  dy[n, k, p, q]
    B[kk, col]  x[n, c, h, w]               h = p*stride_h - pad_h + r*dil_h  (0 outside)
                                            w = q*stride_w - pad_w + s*dil_w
    C[row, col] dw[k, c, r, s]
    ==========  ==========================  ===========================================

Split-K: the reduction over N*P*Q is long when the weight is small and the image
large, so it is cut into SPLIT_K chunks that run as separate programs. Each
chunk writes its own fp32 partial (no atomics), and the partials are summed in
a fixed order afterwards, so the gradient is bitwise reproducible run to run.

grad_bias is a plain column sum of dy over (n, p, q), in a kernel of its own,
split over pixel chunks the same way and with the same fixed-order guarantee.
"""

from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from .. import configs, tuning
from ..spec import Conv2dProblem
from ._common import (
    INTERPRETER,
    TensorDescriptor,
    acc_dtype_for,
    alloc_output,
    alloc_partials,
    check_device,
    check_pixel_count,
    dense_view,
    input_precision_for,
    mma,
    mma_barrier,
    phase_view,
    phase_view_fits,
    sm_count,
    split_range,
    next_box,
    tap_phase,
    tap_tma_box,
    tap_tma_box_of,
    tap_tma_boxes,
    tile_pid,
    unravel4,
    unravel3,
    unravel3_next,
)

__all__ = ["conv2d_wgrad", "conv2d_bias_grad", "conv2d_wgrad_tap_tma", "wgrad_kernel", "wgrad_tap_tma_kernel",
           "bias_grad_kernel", "choose_split_k", "wgrad_workspace", "finish_wgrad", "bias_grad_splits",
           "sum_partials", "sum_partials_kernel", "partials_strides",
           "accepts_tap_tma", "tap_tma_usable"]


@triton.jit
def wgrad_pid(pid, KG, CG, GROUPS, R, S, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUP_M: tl.constexpr):
    """(split, group, r, s, pid_m, pid_n) of a wgrad program: one tap of one group's
    (K/groups x C/groups) weight-gradient tile grid, for one split of the reduction."""
    outer, pid_m, pid_n = tile_pid(pid, KG, CG, BLOCK_M, BLOCK_N, GROUP_M)
    taps = R * S
    rs = outer % taps
    return outer // (taps * GROUPS), (outer // taps) % GROUPS, rs // S, rs % S, pid_m, pid_n


@triton.jit
def wgrad_kernel(
    # pointers
    dy_ptr,  # (N, K, P, Q), any strides
    x_ptr,  # (N, C, H, W), any strides
    out_ptr,  # (SPLIT_K, K, C/groups, R, S): fp32 partials, or dw itself when SPLIT_K == 1
    # problem sizes
    N, H, W, P, Q, R, S,
    CG, KG,
    GROUPS,
    SPLIT_K,
    # conv parameters
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
    # strides, in elements
    sdyn, sdyk, sdyp, sdyq,
    sxn, sxc, sxh, sxw,
    sos, sok, soc, sor, sos_,  # out: split, k, c, r, s
    # meta-parameters
    ACC_DTYPE: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):
    # -- program-id mapping: (split, group, tap, M-tile, N-tile)
    split, g, r, s, pid_m, pid_n = wgrad_pid(tl.program_id(0), KG, CG, GROUPS, R, S, BLOCK_M, BLOCK_N, GROUP_M)

    # -- this split's share of the reduction, in whole BLOCK_K steps
    start, stop = split_range(split, N * P * Q, SPLIT_K, BLOCK_K)

    # -- pointer setup
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    mask_m = offs_m < KG
    mask_n = offs_n < CG
    k_out = g * KG + offs_m
    c_in = g * CG + offs_n
    dy_cols = dy_ptr + k_out.to(tl.int64) * sdyk
    x_cols = x_ptr + c_in.to(tl.int64) * sxc

    # -- reduction loop over output pixels (n, p, q), decoded for the first step and carried on
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC_DTYPE)
    n, p, q = unravel3(start + offs_k, P, Q)
    step_n, step_p, step_q = unravel3(BLOCK_K, P, Q)
    # at least one step, and the compiler told so (_common.split_steps says why it matters): an
    # empty chunk's one step loads nothing (k_ok)
    end = tl.maximum(stop, start + 1)
    tl.assume(end > start)
    for k0 in range(start, end, BLOCK_K):
        kk = k0 + offs_k
        k_ok = kk < stop
        h = p * stride_h - pad_h + r * dil_h
        w = q * stride_w - pad_w + s * dil_w
        pix_ok = k_ok & (h >= 0) & (h < H) & (w >= 0) & (w < W)
        dy_off = n.to(tl.int64) * sdyn + p.to(tl.int64) * sdyp + q.to(tl.int64) * sdyq
        a = tl.load(dy_cols[:, None] + dy_off[None, :], mask=mask_m[:, None] & k_ok[None, :], other=0.0)
        x_off = n.to(tl.int64) * sxn + h.to(tl.int64) * sxh + w.to(tl.int64) * sxw
        b = tl.load(x_off[:, None] + x_cols[None, :], mask=pix_ok[:, None] & mask_n[None, :], other=0.0)
        acc = mma(a, b, acc, INPUT_PRECISION, ACC_DTYPE)
        n, p, q = unravel3_next(n, p, q, step_n, step_p, step_q, P, Q)

    # -- epilogue: this split's partial (or the gradient itself) for tap (r, s)
    out = out_ptr + split.to(tl.int64) * sos + r * sor + s * sos_
    out_ptrs = out + k_out.to(tl.int64)[:, None] * sok + offs_n.to(tl.int64)[None, :] * soc
    tl.store(out_ptrs, acc.to(out_ptr.dtype.element_ty), mask=mask_m[:, None] & mask_n[None, :])


_wgrad_tuned = triton.autotune(
    configs=configs.gemm_configs(),
    key=["N", "H", "W", "P", "Q", "CG", "KG", "GROUPS", "R", "S", "SPLIT_K", "stride_h", "stride_w", "sdyk", "sxc"],
    do_bench=configs.capture_safe_bench,
    prune_configs_by={
        "early_config_prune": configs.gemm_prune_hook(
            m_fn=lambda a: a["KG"], n_fn=lambda a: a["CG"],
            k_fn=lambda a: triton.cdiv(a["N"] * a["P"] * a["Q"], a["SPLIT_K"]), tensor_arg="dy_ptr",
            max_block_n=configs.MAX_BLOCK_N_BOTH_GATHERED,
            uncapped=configs.UNCAPPED_TILES["wgrad_kernel"],
            spilling=configs.SPILLING_TILES.get("wgrad_kernel", ()),
        )
    },
)(wgrad_kernel)


@triton.jit
def bias_grad_kernel(
    dy_ptr,  # (N, K, P, Q), any strides
    out_ptr,  # (SPLIT_PIX, K): fp32 partials, or db itself when SPLIT_PIX == 1
    N, K, P, Q,
    SPLIT_PIX,
    sdyn, sdyk, sdyp, sdyq,
    sos, sok,  # out: split, k
    ACC_DTYPE: tl.constexpr,
    BLOCK_PIX: tl.constexpr, BLOCK_CH: tl.constexpr,
):
    # -- program-id mapping: (channel block, pixel chunk). Chunks are whole
    #    BLOCK_PIX steps, so each pixel is summed by exactly one program.
    offs_ch = tl.program_id(0) * BLOCK_CH + tl.arange(0, BLOCK_CH)
    split = tl.program_id(1)
    ch_ok = offs_ch < K
    start, stop = split_range(split, N * P * Q, SPLIT_PIX, BLOCK_PIX)

    # -- this chunk's pixels, summed in a fixed order
    acc = tl.zeros((BLOCK_PIX, BLOCK_CH), dtype=ACC_DTYPE)
    for k0 in range(start, stop, BLOCK_PIX):
        kk = k0 + tl.arange(0, BLOCK_PIX)
        q = kk % Q
        p = (kk // Q) % P
        n = kk // (P * Q)
        off = n.to(tl.int64) * sdyn + p.to(tl.int64) * sdyp + q.to(tl.int64) * sdyq
        ptrs = dy_ptr + off[:, None] + offs_ch.to(tl.int64)[None, :] * sdyk
        acc += tl.load(ptrs, mask=(kk < stop)[:, None] & ch_ok[None, :], other=0.0).to(ACC_DTYPE)
    out = out_ptr + split.to(tl.int64) * sos + offs_ch.to(tl.int64) * sok
    tl.store(out, tl.sum(acc, axis=0).to(out_ptr.dtype.element_ty), mask=ch_ok)


def choose_split_k(problem: Conv2dProblem, device: torch.device) -> int:
    """How many chunks to cut wgrad's N*P*Q reduction into.

    Enough programs to fill the GPU about twice (counting 64x64 output tiles),
    but never chunks shorter than 1024 pixels (each chunk's partial costs a
    write and a read of the weight-sized workspace) and at most 32 chunks.
    """
    pb = problem
    npq = pb.N * pb.P * pb.Q
    tiles = pb.groups * pb.R * pb.S * triton.cdiv(pb.K_per_group, 64) * triton.cdiv(pb.C_per_group, 64)
    if tiles == 0:  # C = 0: dw is empty
        return 1
    want = triton.cdiv(2 * sm_count(device), tiles)
    return max(1, min(want, 32, npq // 1024))


def wgrad_workspace(dy: torch.Tensor, problem: Conv2dProblem, memory_format, split_k: Optional[int],
                    pixels: int):
    """dw, the split count, and where a wgrad kernel stores: dw itself (no split) or fp32 (fp64)
    partials (split, K, C/groups, R, S), laid out per split as dw is (KRSC for a channels_last
    dw: the kernels' tiles store rows of c contiguous, and ``sum_partials`` reads what it writes
    in one order). Strides as (split, k, c, r, s), the split's 0 without one. ``pixels``, the
    reduction's length, bounds the split."""
    pb = problem
    dw = alloc_output(pb.weight_shape, dy.dtype, dy.device, memory_format)
    split = max(1, int(split_k)) if split_k is not None else choose_split_k(pb, dy.device)
    split = min(split, max(1, pixels))
    if split == 1:
        return dw, split, dw, (0, *dw.stride())
    out = _partials(split, pb.weight_shape, memory_format, lambda shape: alloc_partials(shape, dy))
    return dw, split, out, out.stride()


def _partials(split: int, weight_shape, memory_format, alloc) -> torch.Tensor:
    """(split, K, C/groups, R, S) partials from ``alloc(shape)``, each split laid out as a
    gradient in ``memory_format`` is (KRSC for channels_last)."""
    K, CG, R, S = weight_shape
    if memory_format == torch.channels_last:
        return alloc((split, K, R, S, CG)).permute(0, 1, 4, 2, 3)
    return alloc((split, K, CG, R, S))


def partials_strides(split: int, weight_shape, memory_format=torch.channels_last) -> tuple:
    """The strides of the partials ``wgrad_workspace`` allocates (the compile report's launches)."""
    return _partials(split, weight_shape, memory_format, lambda shape: torch.empty(shape, device="meta")).stride()


@triton.jit
def sum_partials_kernel(
    # pointers
    src_ptr,  # (split, D0, D1, D2, D3) fp32 / fp64 partials, any strides
    dst_ptr,  # (D0, D1, D2, D3), any strides
    # sizes
    split, numel, D1, D2, D3,
    # strides, in elements: src's (split first), dst's
    ss, s0, s1, s2, s3,
    t0, t1, t2, t3,
    # meta-parameters
    BLOCK: tl.constexpr,
):
    """dst = the partials summed over the split, one after the other: a fixed order, so bitwise
    deterministic (float atomics are not)."""
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < numel
    i0, i1, i2, i3 = unravel4(offs, D1, D2, D3)
    # int64 offsets: split x a large weight's partials can pass 2**31 elements
    i0, i1, i2, i3 = i0.to(tl.int64), i1.to(tl.int64), i2.to(tl.int64), i3.to(tl.int64)
    src = src_ptr + i0 * s0 + i1 * s1 + i2 * s2 + i3 * s3
    acc = tl.zeros((BLOCK,), dtype=src_ptr.dtype.element_ty)
    for _ in range(split):  # the pointer steps by ss: no split * ss product to overflow
        acc += tl.load(src, mask=mask, other=0.0)
        src += ss
    tl.store(dst_ptr + i0 * t0 + i1 * t1 + i2 * t2 + i3 * t3, acc.to(dst_ptr.dtype.element_ty), mask=mask)


def sum_partials(dst: torch.Tensor, partials: torch.Tensor) -> torch.Tensor:
    """``dst.copy_(partials.sum(dim=0))`` as a kernel (``sum_partials_kernel``), so that a launch
    plan replays it, summing in a fixed order (bitwise deterministic).

    Args:
        dst: up to 4 dimensions, any strides; written in its own dtype.
        partials: (split, *dst.shape), fp32 or fp64, any strides.

    Returns:
        dst.
    """
    assert partials.dim() == dst.dim() + 1 <= 5 and tuple(partials.shape[1:]) == tuple(dst.shape)
    numel = dst.numel()
    if numel == 0:
        return dst
    # in dst's memory order (its largest stride first), so that the kernel's consecutive
    # elements are consecutive in dst, and in partials laid out as dst is (wgrad_workspace)
    order = sorted(range(dst.dim()), key=lambda d: -dst.stride(d))
    pad = 4 - dst.dim()
    sizes = (1,) * pad + tuple(dst.shape[d] for d in order)
    src_strides = (0,) * pad + tuple(partials.stride(d + 1) for d in order)
    dst_strides = (0,) * pad + tuple(dst.stride(d) for d in order)
    block = 256
    tuning.launch_direct(sum_partials_kernel, (triton.cdiv(numel, block),),
        partials, dst, partials.shape[0], numel, *sizes[1:], partials.stride(0), *src_strides, *dst_strides,
        BLOCK=block,
    )
    return dst


def finish_wgrad(dw: torch.Tensor, out: torch.Tensor, split: int) -> torch.Tensor:
    """dw from the kernel's partials (a no-op when it stored dw itself)."""
    if split > 1:
        sum_partials(dw, out)
    return dw


def conv2d_wgrad(
    dy: torch.Tensor,
    x: torch.Tensor,
    problem: Conv2dProblem,
    memory_format: torch.memory_format = torch.contiguous_format,
    split_k: Optional[int] = None,
) -> torch.Tensor:
    """Launch wgrad: dw = conv2d's weight gradient.

    Args:
        dy: (N, K, P, Q), the output gradient; any strides.
        x: (N, C, H, W), the forward input; any strides.
        problem: the forward conv.
        memory_format: layout of the returned gradient (follow the weight's).
        split_k: number of reduction chunks; None picks one (``choose_split_k``).

    Returns:
        dw (K, C/groups, R, S) in dy's dtype, bitwise deterministic.
    """
    check_device(dy, x)
    pb = problem
    npq = pb.N * pb.P * pb.Q
    check_pixel_count(npq, "output (N*P*Q)")
    dw, split, out, out_strides = wgrad_workspace(dy, pb, memory_format, split_k, npq)
    if dw.numel() == 0:
        return dw
    if npq == 0:
        return dw.zero_()
    CG, KG = pb.C_per_group, pb.K_per_group

    def grid(meta):
        tiles = triton.cdiv(KG, meta["BLOCK_M"]) * triton.cdiv(CG, meta["BLOCK_N"])
        return (split * pb.groups * pb.R * pb.S * tiles,)

    tuning.launch(_wgrad_tuned, "wgrad", dy.device, grid,
        dy, x, out,
        pb.N, pb.H, pb.W, pb.P, pb.Q, pb.R, pb.S, CG, KG, pb.groups, split,
        pb.stride_h, pb.stride_w, pb.pad_h, pb.pad_w, pb.dil_h, pb.dil_w,
        *dy.stride(), *x.stride(), *out_strides,
        ACC_DTYPE=acc_dtype_for(dy.dtype),
        INPUT_PRECISION=input_precision_for(dy),
    )
    return finish_wgrad(dw, out, split)


def bias_grad_splits(npq: int, channel_blocks: int, device: torch.device) -> int:
    """How many pixel chunks the bias gradient's sum is cut into.

    One program per channel block alone leaves most of a GPU idle (a 64-channel
    layer is 2 programs), so the pixels are split until the GPU is filled about
    twice, keeping chunks of at least 2048 pixels so the partials stay small.
    """
    want = triton.cdiv(2 * sm_count(device), channel_blocks)
    return max(1, min(want, triton.cdiv(npq, 2048), 256))


def conv2d_bias_grad(dy: torch.Tensor, split: Optional[int] = None) -> torch.Tensor:
    """Launch the bias gradient: db[k] = sum of dy[:, k] over (n, p, q).

    The pixels are cut into chunks (``bias_grad_splits``) whose fp32 partial
    sums are added in a fixed order afterwards: bitwise deterministic.

    Args:
        dy: (N, K, P, Q), any strides.
        split: number of pixel chunks; None picks one (``bias_grad_splits``).

    Returns:
        db (K,) in dy's dtype.
    """
    check_device(dy)
    if dy.is_cuda and dy.get_device() != torch.cuda.current_device():
        with torch.cuda.device(dy.device):  # Triton launches on the current device (router._route)
            return conv2d_bias_grad(dy, split)
    N, K, P, Q = dy.shape
    check_pixel_count(N * P * Q, "output gradient (N*P*Q)")
    db = alloc_output((K,), dy.dtype, dy.device)
    if K == 0:
        return db
    npq = N * P * Q
    if npq == 0:
        return db.zero_()
    block_ch = 16 if INTERPRETER else 32
    if split is None:
        split = bias_grad_splits(npq, triton.cdiv(K, block_ch), dy.device)
    split = max(1, min(int(split), npq))
    if split == 1:
        out, out_strides = db, (0, 1)
    else:
        out = alloc_partials((split, K), dy)
        out_strides = out.stride()
    tuning.launch_direct(bias_grad_kernel, (triton.cdiv(K, block_ch), split),
        dy, out, N, K, P, Q, split, *dy.stride(), *out_strides,
        ACC_DTYPE=acc_dtype_for(dy.dtype), BLOCK_PIX=64, BLOCK_CH=block_ch,
    )
    if split > 1:
        sum_partials(db, out)
    return db


# --------------------------------------------------------------------------- Hopper: TMA boxes of dy and x
#
# For tap (r, s), a spatial tile of output pixels of dy and the tile of x that
# the tap reads for it are two TMA boxes: dy's of a 4-D (N, P, Q, K) descriptor
# over NHWC dy, x's of its phase view (N, H/sh, sh, W/sw, sw*C) (_common.phase_view;
# at stride 1 simply x shifted by (r*dil_h - pad_h, s*dil_w - pad_w)). Zero fill
# does all the masking: x outside the image is the padding, dy past the last row
# or column multiplies it by zero. The reduction walks spatial tiles instead of
# runs of pixels (BLOCK_K = BOX_N * BOX_H * BOX_W pixels per step, split per BLOCK_K to leave
# the fewest outside the output: _common.tap_tma_boxes; one-row steps keep one row):
#
#     A[row, kk]  dy[n, p, q, k]      kk -> (n0 + kk // (BOX_H*BOX_W), p0 + kk // BOX_W % BOX_H,
#                                            q0 + kk % BOX_W), one box per step
#     B[kk, col]  x[n, p*sh + r*dil_h - pad_h, q*sw + s*dil_w - pad_w, c]
#
# Channels past a group's share (the next group's, or the next column phase's)
# only reach rows and columns of the tile that the store masks out. Split-K and
# its partials are as above.

TAP_TMA_BLOCK_W = configs.SPATIAL_TILE_WIDTH  # the spatial steps' BLOCK_W: boxes up to 8 columns wide
# 16-bit only: tl.dot takes A as dy's box transposed, and only 16-bit wgmma reads a
# transposed operand (the 1x1 wgrad TMA kernel has the same limit).
TAP_TMA_DTYPES = (torch.float16, torch.bfloat16)


def accepts_tap_tma(problem: Conv2dProblem) -> bool:
    """Any kernel size, padding, dilation and groups, at a stride that divides H and W (x's
    phase view); stride 1 always."""
    return phase_view_fits(problem)


def tap_tma_usable(dy: torch.Tensor, x: torch.Tensor, problem: Conv2dProblem) -> bool:
    """NHWC dy and x, 16-bit, on sm_90+ (or the interpreter), every group's first channel 16-byte
    aligned in both (a TMA box starts 16-byte aligned in its inner dimension)."""
    pb = problem
    if TensorDescriptor is None or not accepts_tap_tma(pb) or dy.dtype not in TAP_TMA_DTYPES:
        return False
    if dy.is_cuda and torch.cuda.get_device_capability(dy.device)[0] < 9:
        return False
    esize = dy.element_size()
    if pb.K_per_group * esize % 16 or pb.C_per_group * esize % 16:
        return False
    return all(t.is_contiguous(memory_format=torch.channels_last) and t.data_ptr() % 16 == 0 for t in (dy, x))


@triton.jit
def wgrad_tap_tma_kernel(
    # descriptors and pointers
    dy_desc,  # dy as an (N, P, Q, K) tensor (NHWC): [BOX_N, BOX_H, BOX_W, BLOCK_M] boxes
    x_desc,  # x's phase view (N, H/sh, sh, W/sw, sw*C): [BOX_N, BOX_H, 1, BOX_W, BLOCK_N] boxes
    out_ptr,  # (SPLIT_K, K, C/groups, R, S): fp32 partials, or dw itself when SPLIT_K == 1
    dy_ptr,  # (N, K, P, Q): never read (the descriptors load it); its dtype keys the tuning
    # problem sizes
    N, C, P, Q, R, S,
    CG, KG, GROUPS, SPLIT_K,
    # conv parameters
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
    # strides, in elements
    sos, sok, soc, sor, sos_,  # out: split, k, c, r, s
    # meta-parameters
    ACC_DTYPE: tl.constexpr, INPUT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    BLOCK_W: tl.constexpr,
    BOXES: tl.constexpr = 0,  # _common.tap_tma_boxes(N, P, Q): the box per BLOCK_K; 0: one image, BLOCK_W wide
    SYNC_MMA: tl.constexpr = False,  # finish each step's wgmmas before the next (configs.WGMMA_RS_HAZARD)
):
    # the box, as the descriptors' pre-hook takes it
    BOX: tl.constexpr = tap_tma_box_of(BLOCK_K, BLOCK_W, BOXES)
    BOX_N: tl.constexpr = BOX[0]
    BOX_H: tl.constexpr = BOX[1]
    BOX_W: tl.constexpr = BOX[2]

    # -- program-id mapping: (split, group, tap, M-tile, N-tile)
    split, g, r, s, pid_m, pid_n = wgrad_pid(tl.program_id(0), KG, CG, GROUPS, R, S, BLOCK_M, BLOCK_N, GROUP_M)

    # -- this split's share of the spatial tiles (n0, p0, q0)
    tiles_h = tl.cdiv(P, BOX_H)
    tiles_w = tl.cdiv(Q, BOX_W)
    start, stop = split_range(split, tl.cdiv(N, BOX_N) * tiles_h * tiles_w, SPLIT_K, 1)
    k_col = g * KG + pid_m * BLOCK_M
    shift_h, phase_h = tap_phase(r, dil_h, pad_h, stride_h)
    shift_w, phase_w = tap_phase(s, dil_w, pad_w, stride_w)
    c_col = phase_w * C + g * CG + pid_n * BLOCK_N

    # -- reduction loop: two boxes per step, no addresses, no masks. The first box's origin
    # (n0, p0, q0) is decoded once and then carried from box to box (``next_box``), not
    # decoded per step: three integer divisions a step, in the chain ahead of its TMA loads
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC_DTYPE)
    n0 = (start // (tiles_h * tiles_w)) * BOX_N
    p0 = ((start // tiles_w) % tiles_h) * BOX_H
    q0 = (start % tiles_w) * BOX_W
    # at least one step, and the compiler told so (_common.split_steps says why it matters): an
    # empty chunk lies past the last image, and its one step's boxes are TMA's zeros
    end = tl.maximum(stop, start + 1)
    tl.assume(end > start)
    for _ in range(start, end):
        a = dy_desc.load([n0, p0, q0, k_col]).reshape(BLOCK_K, BLOCK_M)
        b = x_desc.load([n0, p0 + shift_h, phase_h, q0 + shift_w, c_col]).reshape(BLOCK_K, BLOCK_N)
        acc = mma(a.T, b, acc, INPUT_PRECISION, ACC_DTYPE)
        if SYNC_MMA:
            acc = mma_barrier(acc)
        n0, p0, q0 = next_box(n0, p0, q0, P, Q, BOX_N, BOX_H, BOX_W)

    # -- epilogue: this split's partial (or the gradient itself) for tap (r, s)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    out = out_ptr + split.to(tl.int64) * sos + r * sor + s * sos_
    out_ptrs = out + (g * KG + offs_m).to(tl.int64)[:, None] * sok + offs_n.to(tl.int64)[None, :] * soc
    tl.store(out_ptrs, acc.to(out_ptr.dtype.element_ty), mask=(offs_m < KG)[:, None] & (offs_n < CG)[None, :])


def _set_tap_tma_blocks(nargs):
    """Autotune pre-hook: each reduction step is a [BOX_N, BOX_H, BOX_W] spatial box of both tensors."""
    bn, bh, bw = tap_tma_box(nargs["BLOCK_K"], nargs["BLOCK_W"], nargs.get("BOXES", 0))
    nargs["dy_desc"].block_shape = [bn, bh, bw, nargs["BLOCK_M"]]
    nargs["x_desc"].block_shape = [bn, bh, 1, bw, nargs["BLOCK_N"]]


def tap_tma_configs(interpreter=None):
    """8-pixel-wide reduction steps, and one-row steps (configs.WGRAD_TAP_TMA_ROW_TILES, compiled
    only), each with the pre-hook that shapes the descriptors' boxes."""
    return [triton.Config(c.kwargs, num_warps=c.num_warps, num_stages=c.num_stages, pre_hook=_set_tap_tma_blocks)
            for c in configs.spatial_tile_configs(configs.WGRAD_TAP_TMA_ROW_TILES, "BLOCK_K", interpreter)]


_wgrad_tap_tma_tuned = triton.autotune(
    configs=tap_tma_configs(),
    key=["N", "P", "Q", "R", "S", "CG", "KG", "GROUPS", "SPLIT_K", "stride_h", "stride_w", "pad_h", "pad_w",
         "dil_h", "dil_w"],
    do_bench=configs.capture_safe_bench,
    prune_configs_by={
        "early_config_prune": configs.SpatialTilePruneHook(
            m_fn=lambda a: a["KG"], n_fn=lambda a: a["CG"],
            k_fn=lambda a: triton.cdiv(a["N"] * a["P"] * a["Q"], a["SPLIT_K"]), tensor_arg="dy_ptr", span="BLOCK_K",
            gathered=False, max_block_m=configs.MAX_BLOCK_M_TRANSPOSED_A,
        )
    },
)(wgrad_tap_tma_kernel)


def conv2d_wgrad_tap_tma(dy: torch.Tensor, x: torch.Tensor, problem: Conv2dProblem,
                         memory_format: torch.memory_format = torch.contiguous_format,
                         split_k: Optional[int] = None) -> torch.Tensor:
    """wgrad with TMA boxes of dy and x (Hopper); ``conv2d_wgrad`` where they can't
    apply (``tap_tma_usable``).

    Args/Returns: as ``conv2d_wgrad``.
    """
    pb = problem
    npq = pb.N * pb.P * pb.Q
    if not tap_tma_usable(dy, x, pb) or npq == 0 or pb.K == 0 or pb.C == 0:
        return conv2d_wgrad(dy, x, pb, memory_format, split_k)
    check_device(dy, x)
    check_pixel_count(npq, "output (N*P*Q)")
    dw, split, out, out_strides = wgrad_workspace(dy, pb, memory_format, split_k, npq)
    dy_desc = TensorDescriptor.from_tensor(dense_view(dy, (pb.N, pb.P, pb.Q, pb.K)), [1, 2, TAP_TMA_BLOCK_W, 16])
    x_desc = TensorDescriptor.from_tensor(phase_view(x, pb.stride_h, pb.stride_w), [1, 2, 1, TAP_TMA_BLOCK_W, 16])
    CG, KG = pb.C_per_group, pb.K_per_group

    def grid(meta):
        tiles = triton.cdiv(KG, meta["BLOCK_M"]) * triton.cdiv(CG, meta["BLOCK_N"])
        return (split * pb.groups * pb.R * pb.S * tiles,)

    tuning.launch(_wgrad_tap_tma_tuned, "wgrad_tap_tma", dy.device, grid,
        dy_desc, x_desc, out, dy,
        pb.N, pb.C, pb.P, pb.Q, pb.R, pb.S, CG, KG, pb.groups, split,
        pb.stride_h, pb.stride_w, pb.pad_h, pb.pad_w, pb.dil_h, pb.dil_w, *out_strides,
        ACC_DTYPE=acc_dtype_for(dy.dtype), INPUT_PRECISION=input_precision_for(dy),
        BOXES=tap_tma_boxes(pb.N, pb.P, pb.Q),
    )
    return finish_wgrad(dw, out, split)
