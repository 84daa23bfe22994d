"""Depthwise conv (groups == C, any channel multiplier): direct kernels, no tl.dot.

A depthwise layer's GEMM view has K_gemm = R*S (9 for 3x3) and N_gemm = the
channel multiplier (usually 1): far too thin for tensor cores, so these
kernels compute the R*S taps directly, a loop over the kernel's rows with
each row's S taps unrolled at compile time, on a (pixels x channels) tile.
In NHWC the channel axis is contiguous, so every tap is one vectorised load
per pixel row.

    forward   y[n, k, p, q]  = sum_{r,s} x[n, k // mult, p*sh - ph + r*dh, q*sw - pw + s*dw] * w[k, 0, r, s]
    dgrad     dx[n, c, h, w] = sum_{j < mult} sum_{r,s: tap lands} dy[n, c*mult + j, p, q] * w[c*mult + j, 0, r, s]
                               with p = (h + ph - r*dh) / sh when that division is exact (likewise q),
                               one stride phase (h mod sh, w mod sw) a program, which loops over the
                               kernel rows r that land on it and no others (UNROLL_R: goes through
                               every row, branching past those that do not land); at stride 1 with
                               one channel a group, the forward conv of dy with w's taps flipped,
                               which REUSE_ROWS tiles run as the forward's
    wgrad     dw[k, 0, r, s] = sum_{n,p,q} dy[n, k, p, q] * x[n, k // mult, h, w], split over (n, p, q)
              in SPLIT chunks with fixed-order partial sums (deterministic), a program summing a
              group of taps (``wgrad_taps``: a 3x3's nine) from one load of dy per pixel block

mult = K / C is the channel multiplier. The forward's and dgrad's pixel tiles
(``pixel_tile``) are runs of the flat pixel order or 2-D patches of one image
(TILE_W, configs.DEPTHWISE_PATCH_WIDTH): every tap re-reads the tile shifted,
from L1 or L2, and a patch's shifted copies overlap more than a run's (at
stride 1, a 3x3 on an 8 x 8 patch reads 100 pixels for 64 outputs; on a run
of 32 pixels, 102 for 32). Only a row of taps is unrolled: with
all R*S unrolled the compiler hoists every tap's load ahead of the first
multiply, and a 7x7 kernel then spills kilobytes per thread on sm_90 (the
compile report). The family takes kernels up to MAX_TAPS taps (7x7 and 9x9
included); larger ones use the general implicit GEMM. The forward and the dgrad also have tiles
with the kernel rows unrolled (UNROLL_R, for kernels of at most configs.DEPTHWISE_UNROLL_MAX_TAPS
taps, the dgrad at stride 1): a 3x3's nine taps' loads are then all in flight at once, the
autotuner choosing. The forward's REUSE_ROWS tiles (``_fprop_rows_reused``) load a patch's input
rows once for all its output rows, an accumulator per output row.
"""

from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from .. import configs, tuning
from ..spec import Conv2dProblem
from ._common import (
    acc_dtype_for,
    alloc_output,
    alloc_partials,
    check_device,
    conv_epilogue,
    first_tap,
    prepare_forward,
    sm_count,
    split_range,
    stride_phases,
)
from .wgrad import sum_partials

__all__ = ["accepts", "accepts_layer", "pack_weight", "is_packed", "conv2d_fprop_depthwise", "conv2d_dgrad_depthwise",
           "conv2d_wgrad_depthwise", "MAX_TAPS"]

MAX_TAPS = 81


def accepts(problem: Conv2dProblem) -> bool:
    return accepts_layer(problem.C, problem.groups, problem.R, problem.S)


def accepts_layer(in_channels: int, groups: int, R: int, S: int) -> bool:
    """``accepts`` from a layer's constructor arguments (a module deciding how to keep its weight)."""
    return groups == in_channels and in_channels > 1 and R * S <= MAX_TAPS


# The kernels read a tap's weights for a block of channels, w[k0:k0+BLOCK_N, 0, r, s]. In the
# weight's own layouts (contiguous or channels_last, which for one input channel per group are
# the same) those lie R*S elements apart: BLOCK_N scalar loads per tap, most of a 3x3 kernel's
# load instructions (compile report, sm_90, fp16 at 144 channels: 24 scalar and 7 vector loads
# per kernel row, against 10 vector loads with the taps outermost). A module keeps its weight
# taps-major, (R, S, K) in memory, seen as (K, 1, R, S) with strides (1, 1, S*K, K); every
# family takes any strides, so this changes nothing else.
def pack_weight(w: torch.Tensor) -> torch.Tensor:
    """``w`` (K, 1, R, S) taps-major: the same values, each tap's channels contiguous."""
    return w.permute(2, 3, 0, 1).contiguous().permute(2, 3, 0, 1)


def is_packed(w: torch.Tensor) -> bool:
    K, _, R, S = w.shape
    return w.stride(0) == 1 and (R == 1 or w.stride(2) == S * K) and (S == 1 or w.stride(3) == K)


@triton.jit
def pixel_tile(pid, M, P, Q, BLOCK_M: tl.constexpr, TILE_W: tl.constexpr):
    """The pixels (n, p, q) of program ``pid`` and their mask, over M = N*P*Q pixels of N
    P x Q images (the forward's output; for the dgrad, one stride phase of dx).

    TILE_W == 0: BLOCK_M consecutive pixels of the flat (n, p, q) order, a row or less of a wide
    image. Otherwise a patch of one image, BLOCK_M // TILE_W rows by TILE_W columns, the patches
    in (n, row of patches, column of patches) order: an R x S kernel's taps then read the patch
    and its halo, (BLOCK_M // TILE_W + R - 1) x (TILE_W + S - 1) pixels at stride 1, where a
    flat tile shorter than a row reads R rows of BLOCK_M + S - 1 pixels (about 1.6 against 3.2
    pixels read a pixel written for a 3x3 on 8x8 and 32 x 1). A patch's n is never past the
    last image only because the grid (``_pixel_grid``) has exactly N * cdiv(P, BLOCK_M // TILE_W)
    * cdiv(Q, TILE_W) programs; M serves the flat tiles alone. n comes back int64: n times the
    image stride can pass 2**31.
    """
    if TILE_W == 0:
        offs_m = pid * BLOCK_M + tl.arange(0, BLOCK_M)
        q = offs_m % Q
        p = (offs_m // Q) % P
        n = offs_m // (P * Q)
        mask_m = offs_m < M
    else:
        TILE_H: tl.constexpr = BLOCK_M // TILE_W
        tiles_q = tl.cdiv(Q, TILE_W)
        tiles_p = tl.cdiv(P, TILE_H)
        i = tl.arange(0, BLOCK_M)
        q = (pid % tiles_q) * TILE_W + i % TILE_W
        p = (pid // tiles_q % tiles_p) * TILE_H + i // TILE_W
        n = pid // (tiles_q * tiles_p)  # one image: a scalar
        mask_m = (p < P) & (q < Q)
    return n.to(tl.int64), p, q, mask_m


@triton.jit
def _fprop_row(acc, r, x_pix, x_cols, w_rows, h0, w0, mask_m, mask_n, H, W, dil_h, dil_w, sxh, sxw, swr, sws,
               S: tl.constexpr, ACC_DTYPE: tl.constexpr):
    """acc plus kernel row r's S taps (unrolled) on the forward's (pixels x channels) tile."""
    h = h0 + r * dil_h
    row_ok = mask_m & (h >= 0) & (h < H)
    x_row = x_pix + h.to(tl.int64) * sxh
    for s in tl.static_range(S):
        w = w0 + s * dil_w
        ok = row_ok & (w >= 0) & (w < W)
        xv = tl.load((x_row + w.to(tl.int64) * sxw)[:, None] + x_cols[None, :], mask=ok[:, None] & mask_n[None, :],
                     other=0.0)
        wv = tl.load(w_rows + r * swr + s * sws, mask=mask_n, other=0.0)
        acc += xv.to(ACC_DTYPE) * wv.to(ACC_DTYPE)[None, :]
    return acc


@triton.jit
def _fprop_rows_reused(
    x_ptr, w_ptr, b_ptr, res_ptr, y_ptr,  # as depthwise_fprop_kernel's (w_ptr at tap (0, 0))
    pid_m, k_out, mask_n,  # the program's patch, its output channels and which exist
    H, W, P, Q, MULT,  # x's rows and columns, y's, the channel multiplier
    pad_h, stride_w, pad_w, dil_w,  # the conv, but for STRIDE_H and DIL_H
    sxn, sxc, sxh, sxw, swk, swr, sws, syn, syk, syp, syq, srn, srk, srp, srq,  # strides, in elements
    alpha,
    R: tl.constexpr, S: tl.constexpr, STRIDE_H: tl.constexpr, DIL_H: tl.constexpr,
    HAS_BIAS: tl.constexpr, HAS_RESIDUAL: tl.constexpr, ACTIVATION: tl.constexpr,
    ACC_DTYPE: tl.constexpr, TILE_H: tl.constexpr, TILE_W: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """The forward on a patch of TILE_H output rows by TILE_W columns (REUSE_ROWS), each input row
    the patch reads loaded once per kernel column and used for every output row whose taps read
    it: an accumulator per output row (a tuple), the rows' taps resolved at compile time from the
    row stride and dilation (STRIDE_H, DIL_H). A 3x3 at stride 1 on 4 output rows loads 6 input
    rows' 3 shifts, 4.5 loads and conversions an output value where the patch takes 9."""
    tiles_q = tl.cdiv(Q, TILE_W)
    tiles_p = tl.cdiv(P, TILE_H)
    q = (pid_m % tiles_q) * TILE_W + tl.arange(0, TILE_W)
    p0 = (pid_m // tiles_q % tiles_p) * TILE_H
    n = (pid_m // (tiles_q * tiles_p)).to(tl.int64)  # exactly N * tiles_p * tiles_q programs (_pixel_grid)
    mask_q = q < Q
    x_pix = x_ptr + n * sxn
    x_cols = (k_out // MULT).to(tl.int64) * sxc
    w_rows = w_ptr + k_out.to(tl.int64) * swk
    w0 = q * stride_w - pad_w
    IN_ROWS: tl.constexpr = (TILE_H - 1) * STRIDE_H + (R - 1) * DIL_H + 1
    accs = (tl.zeros((TILE_W, BLOCK_N), dtype=ACC_DTYPE),) * TILE_H
    for i in tl.static_range(IN_ROWS):
        h = p0 * STRIDE_H - pad_h + i
        # the row's bound folded into the columns' (a scalar mask the interpreter cannot & in)
        w_end = tl.where(h >= 0, tl.where(h < H, W, 0), 0)
        x_row = x_pix + h.to(tl.int64) * sxh
        for s in tl.static_range(S):
            w = w0 + s * dil_w
            ok = mask_q & (w >= 0) & (w < w_end)
            xv = tl.load((x_row + w.to(tl.int64) * sxw)[:, None] + x_cols[None, :],
                         mask=ok[:, None] & mask_n[None, :], other=0.0).to(ACC_DTYPE)
            summed = ()
            for j in tl.static_range(TILE_H):
                # output row p0 + j reads input row i through kernel row r = (i - j*STRIDE_H) / DIL_H
                if (i >= j * STRIDE_H) and ((i - j * STRIDE_H) % DIL_H == 0) and ((i - j * STRIDE_H) // DIL_H < R):
                    wv = tl.load(w_rows + ((i - j * STRIDE_H) // DIL_H) * swr + s * sws, mask=mask_n, other=0.0)
                    summed = summed + (accs[j] + xv * wv.to(ACC_DTYPE)[None, :],)
                else:
                    summed = summed + (accs[j],)
            accs = summed
    for j in tl.static_range(TILE_H):
        p = p0 + j
        y_rows = n * syn + p.to(tl.int64) * syp + q.to(tl.int64) * syq
        r_rows = n * srn + p.to(tl.int64) * srp + q.to(tl.int64) * srq
        conv_epilogue(accs[j], b_ptr, res_ptr, y_ptr, y_rows, r_rows, k_out, syk, srk, q < tl.where(p < P, Q, 0),
                      mask_n, alpha, HAS_BIAS, HAS_RESIDUAL, ACTIVATION)


@triton.jit
def depthwise_fprop_kernel(
    # pointers
    x_ptr,  # (N, C, H, W), any strides
    w_ptr,  # (K, 1, R, S), any strides; K = C * MULT
    b_ptr,  # (K,); unused unless HAS_BIAS
    res_ptr,  # (N, K, P, Q); unused unless HAS_RESIDUAL
    y_ptr,  # (N, K, P, Q), any strides
    # problem sizes
    M, H, W, P, Q, K, MULT,
    # conv parameters
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
    # strides, in elements
    sxn, sxc, sxh, sxw,
    swk, swr, sws,
    syn, syk, syp, syq,
    srn, srk, srp, srq,
    alpha: tl.float64,  # leaky_relu slope; fp64, so that an fp64 conv gets it unrounded
    # meta-parameters
    R: tl.constexpr, S: tl.constexpr,
    HAS_BIAS: tl.constexpr, HAS_RESIDUAL: tl.constexpr, ACTIVATION: tl.constexpr, ACC_DTYPE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, TILE_W: tl.constexpr,
    STRIDE_H: tl.constexpr, DIL_H: tl.constexpr,  # stride_h and dil_h, for REUSE_ROWS
    UNROLL_R: tl.constexpr = False,  # the kernel rows unrolled too (configs.DEPTHWISE_UNROLL_TILES)
    REUSE_ROWS: tl.constexpr = False,  # a patch's input rows loaded once for its output rows (_fprop_rows_reused)
):
    # -- program ids: (pixel tile, channel tile)
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    k_out = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = k_out < K
    if REUSE_ROWS:
        _fprop_rows_reused(x_ptr, w_ptr, b_ptr, res_ptr, y_ptr, pid_m, k_out, mask_n, H, W, P, Q, MULT, pad_h,
                           stride_w, pad_w, dil_w, sxn, sxc, sxh, sxw, swk, swr, sws, syn, syk, syp, syq,
                           srn, srk, srp, srq, alpha, R, S, STRIDE_H, DIL_H, HAS_BIAS, HAS_RESIDUAL, ACTIVATION,
                           ACC_DTYPE, BLOCK_M // TILE_W, TILE_W, BLOCK_N)
        return
    n, p, q, mask_m = pixel_tile(pid_m, M, P, Q, BLOCK_M, TILE_W)
    h0 = p * stride_h - pad_h
    w0 = q * stride_w - pad_w
    x_pix = x_ptr + n * sxn
    x_cols = (k_out // MULT).to(tl.int64) * sxc
    w_rows = w_ptr + k_out.to(tl.int64) * swk

    # -- the taps: each row's S taps unrolled, the kernel rows in a loop or unrolled as well
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC_DTYPE)
    if UNROLL_R:
        for r in tl.static_range(R):
            acc = _fprop_row(acc, r, x_pix, x_cols, w_rows, h0, w0, mask_m, mask_n, H, W, dil_h, dil_w, sxh, sxw,
                             swr, sws, S, ACC_DTYPE)
    else:
        for r in range(R):
            acc = _fprop_row(acc, r, x_pix, x_cols, w_rows, h0, w0, mask_m, mask_n, H, W, dil_h, dil_w, sxh, sxw,
                             swr, sws, S, ACC_DTYPE)

    # -- epilogue
    y_rows = n * syn + p.to(tl.int64) * syp + q.to(tl.int64) * syq
    r_rows = n * srn + p.to(tl.int64) * srp + q.to(tl.int64) * srq
    conv_epilogue(acc, b_ptr, res_ptr, y_ptr, y_rows, r_rows, k_out, syk, srk, mask_m, mask_n, alpha,
                  HAS_BIAS, HAS_RESIDUAL, ACTIVATION)


@triton.jit
def _dgrad_row(acc, r, dy_pix, dy_cols, w_rows, h_, w_, mask_m, mask_n, P, Q, stride_h, stride_w, pad_h, pad_w,
               dil_h, dil_w, sdyp, sdyq, swr, sws, S: tl.constexpr, ACC_DTYPE: tl.constexpr):
    """acc plus kernel row r's S taps (unrolled) on the dgrad's tile of one stride phase, r a row
    that reaches the phase."""
    p = (h_ + pad_h - r * dil_h) // stride_h  # exact: row r reaches this phase
    row_ok = mask_m & (p >= 0) & (p < P)
    dy_row = dy_pix + p.to(tl.int64) * sdyp
    for s in tl.static_range(S):
        pw = w_ + pad_w - s * dil_w
        q = pw // stride_w
        # q * stride_w == pw holds for the whole phase or for none of it
        ok = row_ok & (pw >= 0) & (q * stride_w == pw) & (q < Q)
        dyv = tl.load((dy_row + q.to(tl.int64) * sdyq)[:, None] + dy_cols[None, :], mask=ok[:, None] & mask_n[None, :],
                      other=0.0)
        wv = tl.load(w_rows + r * swr + s * sws, mask=mask_n, other=0.0)
        acc += dyv.to(ACC_DTYPE) * wv.to(ACC_DTYPE)[None, :]
    return acc


@triton.jit
def depthwise_dgrad_kernel(
    dy_ptr,  # (N, K, P, Q), any strides
    w_ptr,  # (K, 1, R, S), any strides
    b_ptr,  # (C,); unused unless HAS_BIAS (conv_transpose2d)
    dx_ptr,  # (N, C, H, W), any strides
    M, H, W, P, Q, C, MULT,  # M = N * HP * WP: the pixels of one stride phase
    HP, WP,  # pixels per stride phase along h and w: cdiv(H, stride_h), cdiv(W, stride_w)
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
    step_r,  # the kernel rows a phase receives from are r0, r0 + step_r, ...: stride_h / gcd(stride_h, dil_h)
    sdyn, sdyk, sdyp, sdyq,
    swk, swr, sws,
    sdxn, sdxc, sdxh, sdxw,
    R: tl.constexpr, S: tl.constexpr,
    HAS_BIAS: tl.constexpr, ACC_DTYPE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, TILE_W: tl.constexpr,
    DIL_H: tl.constexpr,  # dil_h, for REUSE_ROWS
    UNIT_PHASE: tl.constexpr,  # stride 1 both ways and one channel a group (MULT == 1): REUSE_ROWS applies
    UNROLL_R: tl.constexpr = False,  # the kernel rows unrolled too, as the forward's
    REUSE_ROWS: tl.constexpr = False,  # as the forward's, where UNIT_PHASE (else the patch it is)
):
    # -- program ids: (pixel tile of one stride phase, channel tile, phase). The pixels of phase
    # (a_h, a_w) are h = a_h + ih*stride_h, w = a_w + iw*stride_w, and whether a tap (r, s) lands
    # on a multiple of the stride is the same for all of them (dgrad.py): a phase loops over the
    # kernel rows that land only, where a tile of mixed phases would go through every row for a
    # stride_h-th of its pixels. Columns that do not land are still unrolled, their loads masked
    # off for every pixel. At stride 1 there is one phase.
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    phase = tl.program_id(2)
    if REUSE_ROWS and UNIT_PHASE:
        # at stride 1 with one channel a group, dx is the forward conv of dy with w's taps flipped
        # (dgrad.py): the forward's row-reusing patch, reading w backwards from its last tap, with
        # padding dil*(R-1) - pad (negative past the kernel: a read starting inside dy)
        c = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        _fprop_rows_reused(
            x_ptr=dy_ptr, w_ptr=w_ptr + (R - 1) * swr + (S - 1) * sws, b_ptr=b_ptr, res_ptr=dx_ptr, y_ptr=dx_ptr,
            pid_m=pid_m, k_out=c, mask_n=c < C, H=P, W=Q, P=H, Q=W, MULT=1,
            pad_h=dil_h * (R - 1) - pad_h, stride_w=1, pad_w=dil_w * (S - 1) - pad_w, dil_w=dil_w,
            sxn=sdyn, sxc=sdyk, sxh=sdyp, sxw=sdyq, swk=swk, swr=-swr, sws=-sws,
            syn=sdxn, syk=sdxc, syp=sdxh, syq=sdxw, srn=0, srk=0, srp=0, srq=0, alpha=0.0,
            R=R, S=S, STRIDE_H=1, DIL_H=DIL_H, HAS_BIAS=HAS_BIAS, HAS_RESIDUAL=False, ACTIVATION=0,
            ACC_DTYPE=ACC_DTYPE, TILE_H=BLOCK_M // TILE_W, TILE_W=TILE_W, BLOCK_N=BLOCK_N)
        return
    a_h = phase // stride_w
    a_w = phase % stride_w
    n, ih, iw, mask_m = pixel_tile(pid_m, M, HP, WP, BLOCK_M, TILE_W)
    h_ = a_h + ih * stride_h
    w_ = a_w + iw * stride_w
    mask_m = mask_m & (h_ < H) & (w_ < W)
    c = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = c < C
    r0 = first_tap(a_h, pad_h, dil_h, stride_h, step_r, R)

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC_DTYPE)
    dy_pix = dy_ptr + n * sdyn
    for j in range(0, MULT):
        k = c * MULT + j
        dy_cols = k.to(tl.int64) * sdyk
        w_rows = w_ptr + k.to(tl.int64) * swk
        if UNROLL_R:
            # every row, those that do not reach the phase skipped by a branch the whole program
            # takes alike (at stride 1, where step_r specialises to 1, none: r0 folds to 0)
            for r in tl.static_range(R):
                if (r >= r0) & ((r - r0) % step_r == 0):
                    acc = _dgrad_row(acc, r, dy_pix, dy_cols, w_rows, h_, w_, mask_m, mask_n, P, Q, stride_h,
                                     stride_w, pad_h, pad_w, dil_h, dil_w, sdyp, sdyq, swr, sws, S, ACC_DTYPE)
        else:
            for r in range(r0, R, step_r):
                acc = _dgrad_row(acc, r, dy_pix, dy_cols, w_rows, h_, w_, mask_m, mask_n, P, Q, stride_h, stride_w,
                                 pad_h, pad_w, dil_h, dil_w, sdyp, sdyq, swr, sws, S, ACC_DTYPE)

    if HAS_BIAS:
        acc += tl.load(b_ptr + c, mask=mask_n, other=0.0).to(ACC_DTYPE)[None, :]
    rows = n * sdxn + h_.to(tl.int64) * sdxh + w_.to(tl.int64) * sdxw
    tl.store(dx_ptr + rows[:, None] + c.to(tl.int64)[None, :] * sdxc, acc.to(dx_ptr.dtype.element_ty),
             mask=mask_m[:, None] & mask_n[None, :])


@triton.jit
def _wgrad_tap(x_img, h0, w0, m_ok, x_cols, mask_n, t, H, W, dil_h, dil_w, sxh, sxw,
               R: tl.constexpr, S: tl.constexpr, ACC_DTYPE: tl.constexpr):
    """x at kernel tap t (flat, r*S + s) for pixels whose tap (0, 0) reads input row h0 and column
    w0 of the images at x_img: zero past the image, and for a t past the kernel's taps (a last
    group's padding)."""
    r = t // S
    h = h0 + r * dil_h
    w = w0 + (t - r * S) * dil_w
    # a tap past the kernel's reads no row (a scalar bound: the interpreter cannot & a scalar mask)
    ok = m_ok & (h >= 0) & (h < tl.where(t < R * S, H, 0)) & (w >= 0) & (w < W)
    xv = tl.load((x_img + h.to(tl.int64) * sxh + w.to(tl.int64) * sxw)[:, None] + x_cols[None, :],
                 mask=ok[:, None] & mask_n[None, :], other=0.0)
    return xv.to(ACC_DTYPE)


@triton.jit
def depthwise_wgrad_kernel(
    dy_ptr,  # (N, K, P, Q), any strides
    x_ptr,  # (N, C, H, W), any strides
    out_ptr,  # (SPLIT, K, R, S) partials (fp32 / fp64), or dw itself when SPLIT == 1
    N, H, W, P, Q, K, MULT, SPLIT,
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
    sdyn, sdyk, sdyp, sdyq,
    sxn, sxc, sxh, sxw,
    sos, sok, sor, sos_,
    R: tl.constexpr, S: tl.constexpr,
    TAPS: tl.constexpr,  # taps a program sums (wgrad_taps): consecutive in r*S + s order
    ACC_DTYPE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """dw partial sums over one split of the (n, p, q) pixels, for one group of TAPS taps and a
    tile of channels: each pixel block's dy is loaded once for all the group's taps (an
    accumulator each, a tuple), and its index arithmetic done once."""
    # -- program ids: (split * tap groups, channel tile)
    pid = tl.program_id(0)
    groups = tl.num_programs(0) // SPLIT
    t0 = (pid % groups) * TAPS
    split = pid // groups
    k = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = k < K
    dy_cols = k.to(tl.int64) * sdyk
    x_cols = (k // MULT).to(tl.int64) * sxc

    NPQ = N * P * Q
    start, stop = split_range(split, NPQ, SPLIT, BLOCK_M)
    accs = (tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC_DTYPE),) * TAPS
    for m0 in range(start, stop, BLOCK_M):
        m = m0 + tl.arange(0, BLOCK_M)
        q = m % Q
        p = (m // Q) % P
        n = (m // (P * Q)).to(tl.int64)
        m_ok = m < stop
        dyv = tl.load(dy_ptr + (n * sdyn + p.to(tl.int64) * sdyp + q.to(tl.int64) * sdyq)[:, None] + dy_cols[None, :],
                      mask=m_ok[:, None] & mask_n[None, :], other=0.0).to(ACC_DTYPE)
        x_img = x_ptr + n * sxn
        h0 = p * stride_h - pad_h
        w0 = q * stride_w - pad_w
        summed = ()
        for i in tl.static_range(TAPS):
            xv = _wgrad_tap(x_img, h0, w0, m_ok, x_cols, mask_n, t0 + i, H, W, dil_h, dil_w, sxh, sxw, R, S,
                            ACC_DTYPE)
            summed = summed + (accs[i] + dyv * xv,)
        accs = summed
    for i in tl.static_range(TAPS):
        t = t0 + i
        r = t // S
        ptrs = out_ptr + split.to(tl.int64) * sos + r * sor + (t - r * S) * sos_ + k.to(tl.int64) * sok
        tl.store(ptrs, tl.sum(accs[i], axis=0).to(out_ptr.dtype.element_ty), mask=k < tl.where(t < R * S, K, 0))


WGRAD_MAX_TAPS = 9
# fp32 and fp64 past 3x3: a 7x7's row of 7 accumulators spilled a few bytes in one tile or another
# on sm_90 (Triton 3.6 and 3.9, the compile report), 4 taps in none
WGRAD_WIDE_TAPS = 4


def wgrad_taps(R: int, S: int, elem_bytes: int = 2) -> int:
    """The taps a depthwise wgrad program sums (depthwise_wgrad_kernel's TAPS): the whole kernel
    up to WGRAD_MAX_TAPS taps (a 3x3's nine); past that, in 16-bit, a kernel row (5, 7 or 9 for
    the larger square kernels) or else WGRAD_MAX_TAPS, and in wider types WGRAD_WIDE_TAPS (groups
    then run across kernel rows, the last one padded). Each tap holds an accumulator tile."""
    if R * S <= WGRAD_MAX_TAPS:
        return R * S
    if elem_bytes > 2:
        return WGRAD_WIDE_TAPS
    return S if S <= WGRAD_MAX_TAPS else WGRAD_MAX_TAPS


# R and S are constexprs (the taps are unrolled): a 3x3 and a 7x7 layer of the same
# image size are different kernels and must not share a tuning result.
_KEY = ["M", "H", "W", "P", "Q", "MULT", "R", "S", "stride_h", "stride_w", "dil_h", "dil_w"]
_fprop_tuned = triton.autotune(
    configs=configs.depthwise_configs(patches=True, unrolled=True, reuse=True), key=_KEY + ["K", "sxc", "syk"],
    do_bench=configs.capture_safe_bench,
    prune_configs_by={"early_config_prune": configs.DirectPruneHook("x_ptr", ("P", "Q"))},
)(depthwise_fprop_kernel)
_dgrad_tuned = triton.autotune(
    configs=configs.depthwise_configs(patches=True, unrolled=True, reuse=True), key=_KEY + ["C", "sdyk", "sdxc"],
    do_bench=configs.capture_safe_bench,
    prune_configs_by={"early_config_prune": configs.DirectPruneHook("dy_ptr", ("HP", "WP"), phased=True)},
)(depthwise_dgrad_kernel)
_wgrad_tuned = triton.autotune(
    configs=configs.depthwise_configs(configs.DEPTHWISE_WGRAD_TILES),
    key=["N", "H", "W", "P", "Q", "K", "MULT", "SPLIT", "R", "S", "TAPS", "stride_h", "stride_w", "sdyk", "sxc"],
    do_bench=configs.capture_safe_bench,
    prune_configs_by={"early_config_prune": configs.WgradTapsPruneHook("dy_ptr")},
)(depthwise_wgrad_kernel)


def _pixel_grid(N: int, P: int, Q: int, channels: int, phases: int = 1):
    """(pixel tiles, channel tiles, phases): ``pixel_tile``'s flat tiles or patches, per config;
    exactly as many patches as the images hold (``pixel_tile`` relies on it)."""
    def grid(meta):
        return (configs.pixel_tiles(N, P, Q, meta["BLOCK_M"], meta["TILE_W"]),
                triton.cdiv(channels, meta["BLOCK_N"]), phases)
    return grid


def conv2d_fprop_depthwise(
    x: torch.Tensor,
    w: torch.Tensor,
    bias: Optional[torch.Tensor],
    problem: Conv2dProblem,
    out: Optional[torch.Tensor] = None,
    activation: str = "none",
    alpha: float = 0.01,
    residual: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Launch the depthwise forward; the same contract as ``fprop.conv2d_fprop``.

    Args:
        x, w, bias, problem, out, activation, alpha, residual: as for ``conv2d_fprop``;
            ``problem`` must satisfy ``accepts``.

    Returns:
        y (N, K, P, Q) in x's dtype.
    """
    pb = problem
    fw = prepare_forward(x, w, bias, residual, pb, out, activation)
    out = fw.out
    if out.numel() == 0:
        return out
    M = pb.N * pb.P * pb.Q
    tuning.launch(_fprop_tuned, "depthwise_fprop", x.device, _pixel_grid(pb.N, pb.P, pb.Q, pb.K),
        x, w, fw.bias, fw.residual, out,
        M, pb.H, pb.W, pb.P, pb.Q, pb.K, pb.K // pb.C,
        pb.stride_h, pb.stride_w, pb.pad_h, pb.pad_w, pb.dil_h, pb.dil_w,
        *x.stride(), w.stride(0), w.stride(2), w.stride(3), *out.stride(), *fw.res_strides, float(alpha),
        R=pb.R, S=pb.S, STRIDE_H=pb.stride_h, DIL_H=pb.dil_h, **fw.epilogue,
    )
    return out


def unit_phase(problem: Conv2dProblem) -> bool:
    """depthwise_dgrad_kernel's UNIT_PHASE: stride 1 both ways and one channel a group, where the
    dgrad is the forward conv of dy with w's taps flipped (its REUSE_ROWS tiles reuse rows)."""
    return problem.stride_h == problem.stride_w == 1 and problem.K == problem.C


def conv2d_dgrad_depthwise(
    dy: torch.Tensor,
    w: torch.Tensor,
    problem: Conv2dProblem,
    bias: Optional[torch.Tensor] = None,
    memory_format: torch.memory_format = torch.contiguous_format,
) -> torch.Tensor:
    """Launch the depthwise input gradient; the same contract as ``dgrad.conv2d_dgrad``."""
    check_device(dy, w, bias)
    pb = problem
    dx = alloc_output(pb.input_shape, dy.dtype, dy.device, memory_format)
    if dx.numel() == 0:
        return dx
    HP, WP, step_r, _ = stride_phases(pb)
    tuning.launch(_dgrad_tuned, "depthwise_dgrad", dy.device,
        _pixel_grid(pb.N, HP, WP, pb.C, pb.stride_h * pb.stride_w),
        dy, w, bias if bias is not None else w, dx,
        pb.N * HP * WP, pb.H, pb.W, pb.P, pb.Q, pb.C, pb.K // pb.C, HP, WP,
        pb.stride_h, pb.stride_w, pb.pad_h, pb.pad_w, pb.dil_h, pb.dil_w, step_r,
        *dy.stride(), w.stride(0), w.stride(2), w.stride(3), *dx.stride(),
        R=pb.R, S=pb.S, HAS_BIAS=bias is not None, ACC_DTYPE=acc_dtype_for(dy.dtype),
        DIL_H=pb.dil_h, UNIT_PHASE=unit_phase(pb),
    )
    return dx


def conv2d_wgrad_depthwise(
    dy: torch.Tensor,
    x: torch.Tensor,
    problem: Conv2dProblem,
    memory_format: torch.memory_format = torch.contiguous_format,
    split_k: Optional[int] = None,
) -> torch.Tensor:
    """Launch the depthwise weight gradient (deterministic); the contract of ``wgrad.conv2d_wgrad``."""
    check_device(dy, x)
    pb = problem
    dw = alloc_output(pb.weight_shape, dy.dtype, dy.device, memory_format)
    npq = pb.N * pb.P * pb.Q
    if dw.numel() == 0:
        return dw
    if npq == 0:
        return dw.zero_()
    taps = wgrad_taps(pb.R, pb.S, dy.element_size())
    groups = triton.cdiv(pb.R * pb.S, taps)
    if split_k is None:
        # a program per tap group and 64 channels without a split (3 for MobileNetV2's 144-channel
        # 3x3, 1 for its 32-channel one): the reduction is cut to fill the GPU twice, in up to 128
        # chunks of 128 pixels or more (each pixel taps times the work it was when a program
        # summed one tap, in up to 64 chunks of 2048 or more: MobileNetV2's last 3x3s, 1568 pixels
        # at batch 32, still get 12 chunks)
        programs = groups * triton.cdiv(pb.K, 64)
        split_k = min(triton.cdiv(2 * sm_count(dy.device), programs), 128, max(1, npq // 128))
    split = max(1, min(int(split_k), npq))
    if split == 1:
        out, strides = dw, (0, dw.stride(0), dw.stride(2), dw.stride(3))
    else:
        out = alloc_partials((split, pb.K, pb.R, pb.S), dy)
        strides = out.stride()
    def grid(meta):
        return (split * groups, triton.cdiv(pb.K, meta["BLOCK_N"]))

    tuning.launch(_wgrad_tuned, "depthwise_wgrad", dy.device, grid,
        dy, x, out,
        pb.N, pb.H, pb.W, pb.P, pb.Q, pb.K, pb.K // pb.C, split,
        pb.stride_h, pb.stride_w, pb.pad_h, pb.pad_w, pb.dil_h, pb.dil_w,
        *dy.stride(), *x.stride(), *strides,
        R=pb.R, S=pb.S, TAPS=taps, ACC_DTYPE=acc_dtype_for(dy.dtype),
    )
    if split > 1:
        sum_partials(dw.select(1, 0), out)  # (K, R, S) from (split, K, R, S), in a fixed order
    return dw
