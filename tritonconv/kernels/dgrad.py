"""Gradient w.r.t. the input (dgrad) as an implicit GEMM; also conv_transpose2d's forward.

The mapping, per group g and per stride phase (a, b) = (h mod stride_h, w mod stride_w):

    ==========  ==================================  =====================================
    GEMM        conv                                index decomposition
    ==========  ==================================  =====================================
    M           N * H/stride_h * W/stride_w pixels  m -> (n, i, j),  h = a + i*stride_h
                of one phase                                         w = b + j*stride_w
    N_gemm      C / groups input channels           col -> c = g * C/groups + col
    K_gemm      K/groups * (valid taps of phase)    (r, s) taps outer, k inner
    A[m, kk]    dy[n, k, p, q]                      p = i + (a + pad_h - r*dil_h) / stride_h
                                                    q = j + (b + pad_w - s*dil_w) / stride_w
    B[kk, col]  w[k, c, r, s]
    C[m, col]   dx[n, c, h, w]                      (+ bias[c] for conv_transpose2d)
    ==========  ==================================  =====================================

Why phases: dx[h] receives dy[p] from tap r only when h + pad_h - r*dil_h is a
multiple of stride_h. All pixels of one phase a share the same set of valid
taps, r = r0, r0 + r_step, ... with r_step = stride_h / gcd(stride_h, dil_h).
A program handles one phase and loops over exactly those taps, so no work is
spent on taps that land between output positions: no zero-inserted
(upsampled) dy, no materialised matrix and no atomics.

Layouts: any strides; NHWC dy and KRSC-contiguous-in-k weight are the fast
layouts (k contiguous in both operands).
"""

from __future__ import annotations

import functools
import math
import threading
import weakref
from typing import Callable, Dict, List, NamedTuple, Optional, Tuple

import torch
import triton
import triton.language as tl
from torch.multiprocessing.reductions import StorageWeakRef

from .. import configs, plans, tuning
from ..spec import Conv2dProblem
from ._common import (
    TMA_DTYPES,
    TensorDescriptor,
    acc_dtype_for,
    alloc_output,
    check_device,
    content_state,
    dense_view,
    first_tap,
    input_precision_for,
    mma,
    phase_view,
    stride_phases,
    tap_tma_box,
    tap_tma_box_of,
    tap_tma_boxes,
    thread_setting,
    tile_pid,
)
from . import gemm1x1
from . import fprop
from .fprop import accepts_splitk, conv2d_fprop_tap_tma, conv2d_fprop_tap_tma_splitk, conv2d_fprop_tap_tma_streamk
from .fprop import _tap_tma_acc, _tap_tma_origin, _tap_tma_store, spatial_tiles_fit

__all__ = ["accepts_tap_tma", "accepts_tap_tma_splitk", "accepts_tap_tma_streamk", "accepts_tap_tma_phased",
           "accepts_tap_tma_copy", "conv2d_dgrad_tap_tma", "conv2d_dgrad_tap_tma_splitk",
           "conv2d_dgrad_tap_tma_streamk", "conv2d_dgrad_tap_tma_phased", "conv2d_dgrad_tap_tma_copy",
           "tap_tma_phased_usable", "tap_tma_copy_usable", "dgrad_phased_kernel",
           "tap_tma_usable", "conv2d_dgrad", "conv2d_dgrad_1x1", "dgrad_kernel",
           "phase_fill_kernel", "phase_weight_kernel", "cached_phase_weights", "phase_weights_kept",
           "forget_phase_weights"]


@triton.jit
def dgrad_kernel(
    # pointers
    dy_ptr,  # (N, K, P, Q), any strides
    w_ptr,  # (K, C/groups, R, S), any strides
    b_ptr,  # (C,); unused unless HAS_BIAS (conv_transpose2d)
    dx_ptr,  # (N, C, H, W), any strides
    # problem sizes
    N, H, W, P, Q, R, S,
    CG, KG,  # channels per group: input (GEMM N), output (reduced over)
    GROUPS,
    HP, WP,  # pixels per phase along h and w: cdiv(H, stride_h), cdiv(W, stride_w)
    # conv parameters
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
    step_r, step_s,  # tap steps within a phase: stride / gcd(stride, dil)
    # strides, in elements
    sdyn, sdyk, sdyp, sdyq,
    swk, swc, swr, sws,
    sdxn, sdxc, sdxh, sdxw,
    # meta-parameters
    HAS_BIAS: tl.constexpr,
    ACC_DTYPE: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):
    # -- program-id mapping: (group, phase, M-tile, N-tile)
    M = N * HP * WP
    outer, pid_m, pid_n = tile_pid(tl.program_id(0), M, CG, BLOCK_M, BLOCK_N, GROUP_M)
    phases = stride_h * stride_w
    g = outer // phases
    phase = outer % phases
    a_h = phase // stride_w
    a_w = phase % stride_w

    # -- the taps this phase receives from: r = r0 + i*step_r < R (likewise s)
    r0 = first_tap(a_h, pad_h, dil_h, stride_h, step_r, R)
    s0 = first_tap(a_w, pad_w, dil_w, stride_w, step_s, S)
    num_r = tl.cdiv(R - r0, step_r)
    num_s = tl.cdiv(S - s0, step_s)

    # -- pointer setup (int64 pixel offsets: n * sdyn can pass 2**31)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    j = offs_m % WP
    i = (offs_m // WP) % HP
    n = offs_m // (HP * WP)
    h = a_h + i * stride_h
    w = a_w + j * stride_w
    mask_m = (offs_m < M) & (h < H) & (w < W)
    mask_n = offs_n < CG
    dy_rows = dy_ptr + n.to(tl.int64) * sdyn + (g * KG).to(tl.int64) * sdyk
    c_in = g * CG + offs_n
    w_cols = w_ptr + (g * KG).to(tl.int64) * swk + offs_n.to(tl.int64) * swc  # c within the group

    # -- reduction loop over (valid r, valid s, k-block). Tap (r, s) reads dy at (i + dp, j + dq):
    # exact divisions, r and s were chosen so that these are multiples; each next tap of the
    # phase moves them by -delta = -step * dil / stride. The step's tap and k-block are carried
    # from step to step, no integer division in the loop (as the forward's loops).
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC_DTYPE)
    k_blocks = tl.cdiv(KG, BLOCK_K)
    dp0 = (a_h + pad_h - r0 * dil_h) // stride_h
    dq0 = (a_w + pad_w - s0 * dil_w) // stride_w
    delta_h = step_r * dil_h // stride_h
    delta_w = step_s * dil_w // stride_w
    dy_taps = dy_rows + i.to(tl.int64) * sdyp + j.to(tl.int64) * sdyq  # tap offsets added per step
    k0 = 0
    r = r0
    s = s0
    dp = dp0
    dq = dq0
    ts = 0  # s's index among the phase's num_s taps
    for _ in range(0, num_r * num_s * k_blocks):
        k = k0 + offs_k
        p = i + dp
        q = j + dq
        row_ok = mask_m & (p >= 0) & (p < P) & (q >= 0) & (q < Q)
        k_ok = k < KG
        a_ptrs = (dy_taps + dp.to(tl.int64) * sdyp + dq.to(tl.int64) * sdyq)[:, None] \
            + k.to(tl.int64)[None, :] * sdyk
        a = tl.load(a_ptrs, mask=row_ok[:, None] & k_ok[None, :], other=0.0)
        b_ptrs = (w_cols + r.to(tl.int64) * swr + s.to(tl.int64) * sws)[None, :] + k.to(tl.int64)[:, None] * swk
        b = tl.load(b_ptrs, mask=k_ok[:, None] & mask_n[None, :], other=0.0)
        acc = mma(a, b, acc, INPUT_PRECISION, ACC_DTYPE)
        # -- the next step: the next k-block, or the phase's next tap (s, then r)
        k0 += BLOCK_K
        next_tap = k0 >= KG
        k0 = tl.where(next_tap, 0, k0)
        ts += next_tap.to(tl.int32)
        s += tl.where(next_tap, step_s, 0)
        dq -= tl.where(next_tap, delta_w, 0)
        next_row = ts == num_s
        ts = tl.where(next_row, 0, ts)
        s = tl.where(next_row, s0, s)
        dq = tl.where(next_row, dq0, dq)
        r += tl.where(next_row, step_r, 0)
        dp -= tl.where(next_row, delta_h, 0)

    # -- epilogue: every pixel of the phase is written, zeros where no tap lands
    if HAS_BIAS:
        bias = tl.load(b_ptr + c_in, mask=mask_n, other=0.0)
        acc += bias.to(ACC_DTYPE)[None, :]
    dx_rows = dx_ptr + n.to(tl.int64) * sdxn + h.to(tl.int64) * sdxh + w.to(tl.int64) * sdxw
    dx_ptrs = dx_rows[:, None] + c_in.to(tl.int64)[None, :] * sdxc
    tl.store(dx_ptrs, acc.to(dx_ptr.dtype.element_ty), mask=mask_m[:, None] & mask_n[None, :])


_dgrad_tuned = triton.autotune(
    configs=configs.gemm_configs(),
    key=["N", "H", "W", "CG", "KG", "GROUPS", "R", "S", "stride_h", "stride_w", "dil_h", "dil_w", "sdyk", "sdxc"],
    do_bench=configs.capture_safe_bench,
    prune_configs_by={
        "early_config_prune": configs.gemm_prune_hook(
            m_fn=lambda a: a["N"] * a["HP"] * a["WP"], n_fn=lambda a: a["CG"], k_fn=lambda a: a["KG"],
            tensor_arg="dy_ptr",
        )
    },
)(dgrad_kernel)


def conv2d_dgrad(
    dy: torch.Tensor,
    w: torch.Tensor,
    problem: Conv2dProblem,
    bias: Optional[torch.Tensor] = None,
    memory_format: torch.memory_format = torch.contiguous_format,
) -> torch.Tensor:
    """Launch dgrad: dx = conv2d's input gradient (or conv_transpose2d of dy).

    Args:
        dy: (N, K, P, Q), the forward conv's output gradient; any strides.
        w: (K, C/groups, R, S), any strides.
        problem: the forward conv this is the gradient of.
        bias: optional (C,), added to every pixel (conv_transpose2d's bias).
        memory_format: layout of the returned tensor.

    Returns:
        dx (N, C, H, W) in dy's dtype.
    """
    check_device(dy, w, bias)
    pb = problem
    dx = alloc_output(pb.input_shape, dy.dtype, dy.device, memory_format)
    if dx.numel() == 0:
        return dx
    HP, WP, step_r, step_s = stride_phases(pb)
    M = pb.N * HP * WP
    CG, KG = pb.C_per_group, pb.K_per_group

    def grid(meta):
        tiles = triton.cdiv(M, meta["BLOCK_M"]) * triton.cdiv(CG, meta["BLOCK_N"])
        return (pb.groups * pb.stride_h * pb.stride_w * tiles,)

    tuning.launch(_dgrad_tuned, "dgrad", dy.device, grid,
        dy, w, bias if bias is not None else w, dx,
        pb.N, pb.H, pb.W, pb.P, pb.Q, pb.R, pb.S, CG, KG, pb.groups, HP, WP,
        pb.stride_h, pb.stride_w, pb.pad_h, pb.pad_w, pb.dil_h, pb.dil_w, step_r, step_s,
        *dy.stride(), *w.stride(), *dx.stride(),
        HAS_BIAS=bias is not None,
        ACC_DTYPE=acc_dtype_for(dy.dtype),
        INPUT_PRECISION=input_precision_for(dy),
    )
    return dx


# --------------------------------------------------------------------------- Hopper: each stride phase a forward conv
#
# Each stride phase of dx is a forward conv of dy. For h = a + sh*i (phase a),
# the taps reaching it are r = r0 + t*step (t < n_a), step = sh / gcd(sh, dil),
# and dy's row for tap t is i + e - t*delta, e = (a + pad - r0*dil) / sh and
# delta = dil / gcd(sh, dil) (the same in w). Flipping t makes that a forward conv:
#
#     dx[n, c, a + sh*i, b + sw*j] = conv2d(dy, w_ab)[n, c, i, j]
#     w_ab[g*C/g + c, k, t, u] = w[g*K/g + k, c, r0 + (n_a-1-t)*step, s0 + (n_b-1-u)*step_w]
#     stride 1, dilation (delta_h, delta_w), padding ((n_a-1)*delta_h - e_a, ...)
#
# so the forward's tap_tma kernel (both operands by TMA, no gather) serves it,
# one launch per phase, each storing into dx's strided phase view. At stride 1
# there is one phase: all taps, delta = dil, padding dil*(R-1) - pad. A phase no
# tap reaches (a 1x1 stride-2 conv's odd rows) is zero (or conv_transpose2d's
# bias). The padding may be negative (a box starting inside dy): TMA does not
# mind. Building the w_ab is one copy of the weight per call, small next to the
# activations; at stride 1 with a KRSC weight there is none: w_00 is w with its taps
# flipped and each tap's (K/groups, C/groups) block transposed, so the kernel reads w
# in place, a [BLOCK_K, BLOCK_N] tile of tap (R-1-r, S-1-s) where the forward reads a
# [BLOCK_N, BLOCK_K] one of tap (r, s) (fprop_tap_tma_kernel's W_FLIPPED,
# ``_weight_in_place``): one launch less, and no 2 * weight bytes through memory.
#
# Each phase runs on the forward kernel that suits it (``_phase_forward``): the 1x1
# GEMM where the phase is a plain 1x1 conv (a 1x1 conv's dgrad, the one-tap phases
# of a 3x3 stride-2 one), the tap_tma kernel where it takes the phase (``fprop.accepts_tap_tma``,
# ``fprop.input_tma_usable``), the implicit GEMM with a TMA weight otherwise; in the
# tap_tma_splitk family, tap_tma's split-K where ``fprop.accepts_splitk`` takes the phase. All
# of them store into a strided view and load A and B by TMA or fall back by themselves; the
# in-place weight goes only where tap_tma takes it (``_weight_in_place``), with no fallback.
#
# An unpadded 1x1 conv in one group has a dgrad family of its own (``conv2d_dgrad_1x1``): its
# one reached phase is the pointer 1x1 GEMM on dy with w read transposed in place, no w_ab.


def accepts_tap_tma(problem: Conv2dProblem) -> bool:
    """Every problem: each stride phase of dx is a stride-1 forward conv of dy (``_phases``);
    whether the tensors allow TMA is ``tap_tma_usable``'s question."""
    return True


def tap_tma_usable(dy: torch.Tensor, w: torch.Tensor, problem: Conv2dProblem) -> bool:
    """What ``fprop.input_tma_usable`` would say of the forward convs dgrad becomes: NHWC dy,
    16-byte aligned groups of K/groups channels, sm_90+ (or the interpreter). w_ab are built KRSC."""
    pb = problem
    if TensorDescriptor is None or dy.dtype not in TMA_DTYPES:
        return False
    if dy.is_cuda and torch.cuda.get_device_capability(dy.device)[0] < 9:
        return False
    if not dy.is_contiguous(memory_format=torch.channels_last) or dy.data_ptr() % 16:
        return False
    return pb.K_per_group > 0 and pb.K_per_group * dy.element_size() % 16 == 0 \
        and spatial_tiles_fit(pb.N, pb.H, pb.W)


class _Phase(NamedTuple):
    a: int  # dx rows a, a + stride_h, ...
    b: int  # dx columns b, b + stride_w, ...
    taps_h: range  # the kernel rows that reach them (empty: the phase is zero)
    taps_w: range
    forward: Optional[Conv2dProblem]  # the forward conv of dy that computes the phase


def _phase_taps(a: int, size: int, pad: int, dil: int, stride: int) -> Tuple[range, int, int]:
    """The taps of a ``size``-tap kernel reaching phase a, dy's offset e for the first, and delta."""
    step = stride // math.gcd(stride, dil)
    taps = range(0)
    for r0 in range(min(step, size)):
        if (a + pad - r0 * dil) % stride == 0:
            taps = range(r0, size, step)
            break
    e = (a + pad - taps.start * dil) // stride if taps else 0
    return taps, e, dil // math.gcd(stride, dil)


def _phases(problem: Conv2dProblem) -> List[_Phase]:
    """dx's stride phases (those with pixels), each with its taps and its forward conv of dy."""
    pb = problem
    phases = []
    for a in range(min(pb.stride_h, pb.H)):
        th, eh, delta_h = _phase_taps(a, pb.R, pb.pad_h, pb.dil_h, pb.stride_h)
        for b in range(min(pb.stride_w, pb.W)):
            tw, ew, delta_w = _phase_taps(b, pb.S, pb.pad_w, pb.dil_w, pb.stride_w)
            forward = None
            if th and tw:
                forward = Conv2dProblem(
                    N=pb.N, C=pb.K, H=pb.P, W=pb.Q, K=pb.C, R=len(th), S=len(tw),
                    P=len(range(a, pb.H, pb.stride_h)), Q=len(range(b, pb.W, pb.stride_w)),
                    stride_h=1, stride_w=1, pad_h=(len(th) - 1) * delta_h - eh, pad_w=(len(tw) - 1) * delta_w - ew,
                    dil_h=delta_h, dil_w=delta_w, groups=pb.groups,
                )
            phases.append(_Phase(a, b, th, tw, forward))
    return phases


PHASE_WEIGHT_TILE = (64, 64)  # phase_weight_kernel's (BLOCK_C, BLOCK_KG)
PHASES_PER_LAUNCH = 4  # phase_weight_kernel's slots, fixed by its signature: a stride-2 conv's phases in one launch


@triton.jit
def _slot(slot, v0, v1, v2, v3):
    """The value of phase slot ``slot`` (0 to 3) among four scalar arguments."""
    return tl.where(slot == 0, v0, tl.where(slot == 1, v1, tl.where(slot == 2, v2, v3)))


@triton.jit
def phase_weight_kernel(
    # pointers
    w_ptr,  # (K, C/groups, R, S), any strides
    out_ptr,  # the phases' w_ab one after another, each (C, K/groups, NA, NB) KRSC-contiguous:
              # element (c, k, t, u) of a phase at off + ((c*NA + t)*NB + u)*KG + k
    # sizes
    C, KG, CG,
    # per phase slot (the program's axis 1): its offset in out, NA x NB taps from kernel row r0
    # and column s0 (rows r0, r0 + step_h, ...; the steps are the same in every phase,
    # stride / gcd(stride, dilation)); NA = 0 for a slot with no phase
    off_0, na_0, nb_0, r0_0, s0_0,
    off_1, na_1, nb_1, r0_1, s0_1,
    off_2, na_2, nb_2, r0_2, s0_2,
    off_3, na_3, nb_3, r0_3, s0_3,
    step_h, step_w,
    # strides, in elements
    swk, swc, swr, sws,
    # meta-parameters
    BLOCK_C: tl.constexpr, BLOCK_KG: tl.constexpr,
):
    """w_ab[g*C/g + c, k, t, u] = w[g*K/g + k, c, r0 + (NA-1-t)*step_h, s0 + (NB-1-u)*step_w].

    A program moves one tap's (BLOCK_C, BLOCK_KG) tile of one group: read along c (contiguous in
    a KRSC weight), written along k (contiguous in w_ab), Triton turning the tile round in shared
    memory in between (one element per thread along k would read each from its own sector)."""
    slot = tl.program_id(1)
    off = _slot(slot, off_0, off_1, off_2, off_3)
    NA = _slot(slot, na_0, na_1, na_2, na_3)
    NB = _slot(slot, nb_0, nb_1, nb_2, nb_3)
    r0 = _slot(slot, r0_0, r0_1, r0_2, r0_3)
    s0 = _slot(slot, s0_0, s0_1, s0_2, s0_3)

    # -- program-id mapping: (tap, group, c-block, k-block); programs past this slot's taps
    # (a launch's slots differ in taps) have nothing to do
    c_blocks = tl.cdiv(CG, BLOCK_C)
    k_blocks = tl.cdiv(KG, BLOCK_KG)
    tiles = (C // CG) * c_blocks * k_blocks
    pid = tl.program_id(0)
    tap = pid // tiles
    t = tap // tl.maximum(NB, 1)
    u = tap - t * NB
    g = (pid % tiles) // (c_blocks * k_blocks)
    offs_c = (pid % (c_blocks * k_blocks)) // k_blocks * BLOCK_C + tl.arange(0, BLOCK_C)  # within group g
    offs_k = (pid % k_blocks) * BLOCK_KG + tl.arange(0, BLOCK_KG)
    k_end = tl.where(tap < NA * NB, KG, 0)
    mask = (offs_c < CG)[:, None] & (offs_k < k_end)[None, :]

    # -- the tile: from tap (r, s) of w, to tap (t, u) of w_ab
    r = r0 + (NA - 1 - t) * step_h
    s = s0 + (NB - 1 - u) * step_w
    # int64: a large weight's strides times its indices can pass 2**31
    src = (g * KG + offs_k).to(tl.int64)[None, :] * swk + offs_c.to(tl.int64)[:, None] * swc \
        + r.to(tl.int64) * swr + s.to(tl.int64) * sws
    dst = off + (((g * CG + offs_c).to(tl.int64)[:, None] * NA + t) * NB + u) * KG + offs_k[None, :]
    tl.store(out_ptr + dst, tl.load(w_ptr + src, mask=mask), mask=mask)


def _build_phase_weights(w: torch.Tensor, problem: Conv2dProblem, reached: List[_Phase]) -> List[torch.Tensor]:
    """w_ab (C, K/groups, n_a, n_b) of each phase in ``reached``, KRSC: the phase's taps of w,
    flipped and transposed per group. Views of one buffer that ``phase_weight_kernel`` fills,
    PHASES_PER_LAUNCH phases per launch (kernels, which a launch plan replays, where the same in
    torch took five ops and a copy of host time per phase). Every view starts 16 bytes aligned
    where tap_tma takes the weight (``tap_tma_usable``: K/groups channels fill 16-byte rows)."""
    pb = problem
    sizes = [pb.C * pb.K_per_group * len(ph.taps_h) * len(ph.taps_w) for ph in reached]
    offsets = [sum(sizes[:i]) for i in range(len(sizes))]
    buf = alloc_output((sum(sizes),), w.dtype, w.device)  # poisoned under the tests: a slot unwritten shows
    views = [buf[o:o + n].view(pb.C, len(ph.taps_h), len(ph.taps_w), pb.K_per_group).permute(0, 3, 1, 2)
             for ph, o, n in zip(reached, offsets, sizes)]
    if buf.numel() == 0:
        return views
    block_c, block_kg = PHASE_WEIGHT_TILE
    tiles = pb.groups * triton.cdiv(pb.C_per_group, block_c) * triton.cdiv(pb.K_per_group, block_kg)
    for i in range(0, len(reached), PHASES_PER_LAUNCH):
        chunk = range(i, min(i + PHASES_PER_LAUNCH, len(reached)))
        slots = []
        for j in chunk:
            ph = reached[j]
            slots += [offsets[j], len(ph.taps_h), len(ph.taps_w), ph.taps_h.start, ph.taps_w.start]
        slots += [0] * 5 * (PHASES_PER_LAUNCH - len(chunk))
        taps = max(len(reached[j].taps_h) * len(reached[j].taps_w) for j in chunk)
        tuning.launch_direct(phase_weight_kernel, (taps * tiles, len(chunk)),
            w, buf, pb.C, pb.K_per_group, pb.C_per_group, *slots,
            reached[0].taps_h.step, reached[0].taps_w.step, *w.stride(), BLOCK_C=block_c, BLOCK_KG=block_kg,
        )
    return views


# Inference through a module (tritonconv.nn.ConvTranspose2d, whose forward is this dgrad)
# should build the phase weights once, not per call (issue 6: packed weights are cached
# per parameter until it changes). The module opens ``cached_phase_weights()`` when its
# weight cannot change under the call; they are then kept per weight tensor (by identity,
# which the op dispatch preserves) and dropped with it, and rebuilt when its version
# counter or its storage moves (an optimizer step or load_state_dict; ``module.to()``,
# ``weight.data = ...``), or the stream does (no cross-stream ordering to get wrong).
# As with any version-tracked cache, an in-place write through ``weight.data`` is not
# seen. Not kept: during CUDA graph capture (the tensors would hold nothing until a
# replay), for inference-mode tensors (no version counter). Training, whose weight
# changes every step, builds them per call.
_cache_phase_weights = threading.local()
_phase_weight_cache: Dict[int, Tuple[Callable[[], Optional[torch.Tensor]], "StorageWeakRef", tuple,
                                     List[torch.Tensor]]] = {}


def cached_phase_weights():
    """Inside the block, each weight's phase weights are kept until the weight changes or dies."""
    return thread_setting(_cache_phase_weights, "on", True)


def phase_weights_kept() -> bool:
    """Whether a ``cached_phase_weights`` block is open on this thread: the router times the dgrad
    families apart there (a copy of w then costs nothing after the first call, where training pays
    it every step), under a key of their own (``router.input_grad``)."""
    return bool(getattr(_cache_phase_weights, "on", False))


def forget_phase_weights(w: torch.Tensor) -> None:
    """Drop what the cache holds for ``w`` (a module leaving inference, or moving its weight)."""
    _phase_weight_cache.pop(id(w), None)


def _cacheable(w: torch.Tensor) -> bool:
    """Whether ``w``'s phase weights are kept: the block is open and ``content_state`` allows it."""
    return phase_weights_kept() and content_state(w) is not None


def _phase_weights(w: torch.Tensor, problem: Conv2dProblem, phases: List[_Phase]) -> List[torch.Tensor]:
    """``_build_phase_weights`` of every phase a tap reaches, from the cache when it is on and current."""
    reached = [ph for ph in phases if ph.forward is not None]
    content = content_state(w) if getattr(_cache_phase_weights, "on", False) else None
    if content is None:
        return _build_phase_weights(w, problem, reached)
    # what the phase weights depend on: w's contents (content_state), and the taps of each
    # phase (not the image size: inputs of any size share them)
    storage = w.untyped_storage()
    state = content + (problem.groups, tuple((ph.taps_h, ph.taps_w) for ph in reached))
    key = id(w)
    entry = _phase_weight_cache.get(key)
    if entry is not None and entry[0]() is w and not entry[1].expired() and entry[2] == state:
        return entry[3]
    with torch.no_grad():
        built = _build_phase_weights(w, problem, reached)
    _phase_weight_cache[key] = (weakref.ref(w, lambda _: _phase_weight_cache.pop(key, None)),
                                StorageWeakRef(storage), state, built)
    return built


@triton.jit
def phase_fill_kernel(
    # pointers
    y_ptr,  # (N, C, P, Q), any strides: a phase view of dx
    b_ptr,  # (C,); unused unless HAS_BIAS
    # sizes
    M, C, P, Q,  # M = N * P * Q
    # strides, in elements
    syn, syc, syp, syq,
    # meta-parameters
    HAS_BIAS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """A phase of dx no tap reaches: zeros, or conv_transpose2d's bias."""
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    n = offs_m // (P * Q)
    p = (offs_m // Q) % P
    q = offs_m % Q
    if HAS_BIAS:
        v = tl.load(b_ptr + offs_c, mask=offs_c < C, other=0.0).to(y_ptr.dtype.element_ty)
    else:
        v = tl.zeros((BLOCK_C,), dtype=y_ptr.dtype.element_ty)
    # int64 offsets: a phase view of a large dx spans more than 2**31 elements of its storage
    row = n.to(tl.int64) * syn + p.to(tl.int64) * syp + q.to(tl.int64) * syq
    ptrs = y_ptr + row[:, None] + offs_c.to(tl.int64)[None, :] * syc
    mask = (offs_m < M)[:, None] & (offs_c < C)[None, :]
    tl.store(ptrs, tl.broadcast_to(v[None, :], (BLOCK_M, BLOCK_C)), mask=mask)


def _fill_phase(out: torch.Tensor, bias: Optional[torch.Tensor]) -> None:
    """Fill ``out`` with zeros, or with ``bias`` per channel, by ``phase_fill_kernel``: a kernel,
    not ``out.zero_()``, so that a launch plan replays it (torch work on the output would leave
    the replay's phase unwritten).

    Args:
        out: (N, C, P, Q), any strides (a phase view of dx).
        bias: (C,) or None.
    """
    N, C, P, Q = out.shape
    M = N * P * Q
    if M == 0 or C == 0:
        return
    block_m, block_c = 64, 64
    tuning.launch_direct(phase_fill_kernel, (triton.cdiv(M, block_m), triton.cdiv(C, block_c)),
                         out, out if bias is None else bias, M, C, P, Q, *out.stride(),
                         HAS_BIAS=bias is not None, BLOCK_M=block_m, BLOCK_C=block_c)


def _reached(dx: torch.Tensor, problem: Conv2dProblem, phases: List[_Phase], bias: Optional[torch.Tensor]):
    """Each of ``phases`` a tap reaches, with its view of dx, in order; the others filled on the
    way (``_fill_phase``: zeros, or conv_transpose2d's bias)."""
    for phase in phases:
        out = dx[:, :, phase.a::problem.stride_h, phase.b::problem.stride_w]
        if phase.forward is None:
            _fill_phase(out, bias)
        else:
            yield phase, out


def _phase_forward(forward: Conv2dProblem, variant: str = "") -> Callable[..., torch.Tensor]:
    """The forward launcher for one phase's conv of dy (see above): the 1x1 GEMM for a plain 1x1
    conv, else tap_tma's, which hands a phase it does not take (``fprop.input_tma_usable``) on to
    implicit_tma by itself; with ``variant`` "splitk" or "streamk", tap_tma's split-K or
    stream-K launch where the phase suits it (``fprop.accepts_splitk``, ``fprop.accepts_tap_tma_streamk``)."""
    if gemm1x1.accepts(forward):
        return gemm1x1.conv2d_fprop_1x1_tma
    if variant == "splitk" and accepts_splitk(forward):
        return conv2d_fprop_tap_tma_splitk
    if variant == "streamk" and fprop.accepts_tap_tma_streamk(forward):
        return conv2d_fprop_tap_tma_streamk
    return conv2d_fprop_tap_tma


def _some_phase_takes(problem: Conv2dProblem, accepts: Callable[[Conv2dProblem], bool]) -> bool:
    """Whether a phase of the dgrad, other than a plain 1x1 one, has a forward conv ``accepts`` takes."""
    return any(ph.forward is not None and not gemm1x1.accepts(ph.forward) and accepts(ph.forward)
               for ph in _phases(problem))


def accepts_tap_tma_splitk(problem: Conv2dProblem) -> bool:
    """The dgrads with a phase that split-K suits (``fprop.accepts_splitk`` of its forward conv of
    dy: a small phase of dx, a long reduction): ResNet-50's 7x7 layers at batch 32, whose dgrad at
    one program per tile leaves SMs idle as their forward does."""
    return _some_phase_takes(problem, accepts_splitk)


def accepts_tap_tma_streamk(problem: Conv2dProblem) -> bool:
    """The dgrads with a phase that tap_tma's stream-K grid takes (``fprop.accepts_tap_tma_streamk``:
    a phase of at most ``fprop.TAP_TMA_STREAMK_MAX_PIXELS``): ResNet-50's layer3 and layer4 3x3s at
    batch 32."""
    return _some_phase_takes(problem, fprop.accepts_tap_tma_streamk)


def conv2d_dgrad_tap_tma_splitk(dy: torch.Tensor, w: torch.Tensor, problem: Conv2dProblem,
                                bias: Optional[torch.Tensor] = None,
                                memory_format: torch.memory_format = torch.contiguous_format) -> torch.Tensor:
    """``conv2d_dgrad_tap_tma`` with the phases that suit it on tap_tma's split-K forward.

    Args/Returns: as ``conv2d_dgrad``.
    """
    return conv2d_dgrad_tap_tma(dy, w, problem, bias, memory_format, variant="splitk")


def conv2d_dgrad_tap_tma_streamk(dy: torch.Tensor, w: torch.Tensor, problem: Conv2dProblem,
                                 bias: Optional[torch.Tensor] = None,
                                 memory_format: torch.memory_format = torch.contiguous_format) -> torch.Tensor:
    """``conv2d_dgrad_tap_tma`` with the phases that suit it on tap_tma's stream-K grid.

    Args/Returns: as ``conv2d_dgrad``.
    """
    return conv2d_dgrad_tap_tma(dy, w, problem, bias, memory_format, variant="streamk")


def _weight_in_place(dy: torch.Tensor, w: torch.Tensor, problem: Conv2dProblem, phases: List[_Phase],
                     variant: str) -> bool:
    """Whether the dgrad's forward conv reads w in place, its taps flipped (fprop_tap_tma_kernel's
    W_FLIPPED), instead of a flipped copy (``_phase_weights``): at stride 1 (one phase, every tap),
    on a tap-TMA launcher (not the 1x1 GEMM), with w KRSC and 16-byte aligned as TMA wants it, in
    a 16-bit dtype. The in-place tile is N-major; the wgmma takes that from shared memory for
    16-bit types only: a float32 (TF32) build turns it round in registers and loses its pipelining
    (compile report, fprop_tap_tma_dgrad fp32: no wgmma left in flight, 82 -> 119 registers)."""
    pb = problem
    if pb.stride_h != 1 or pb.stride_w != 1 or len(phases) != 1 or phases[0].forward is None:
        return False
    if w.element_size() != 2:
        return False
    forward = phases[0].forward
    return (_phase_forward(forward, variant) is not gemm1x1.conv2d_fprop_1x1_tma
            and fprop.input_tma_usable(dy, w, forward, flipped=True))


def conv2d_dgrad_tap_tma(dy: torch.Tensor, w: torch.Tensor, problem: Conv2dProblem,
                         bias: Optional[torch.Tensor] = None,
                         memory_format: torch.memory_format = torch.contiguous_format,
                         variant: str = "", in_place: bool = True) -> torch.Tensor:
    """dgrad as forward convs of dy, one launch per stride phase of dx (``_phases``), each on the
    kernel that suits it (``_phase_forward``), at stride 1 reading w in place (``_weight_in_place``),
    else flipped copies of it; ``conv2d_dgrad`` where the layouts don't allow TMA (``tap_tma_usable``).

    Args/Returns: as ``conv2d_dgrad``, and
        variant: "" for tap_tma's own launch per phase, "splitk" or "streamk" for tap_tma's split-K
            or stream-K launch on the phases that suit it (``_phase_forward``).
        in_place: False for a flipped copy of w even where the kernel could read w in place
            (the tap_tma_copy family).
    """
    pb = problem
    if not tap_tma_usable(dy, w, pb):
        return conv2d_dgrad(dy, w, pb, bias, memory_format)
    check_device(dy, w, bias)
    dx = alloc_output(pb.input_shape, dy.dtype, dy.device, memory_format)
    if dx.numel() == 0:
        return dx
    phases = _phases(pb)
    if in_place and _weight_in_place(dy, w, pb, phases, variant):
        for phase, out in _reached(dx, pb, phases, bias):  # the one phase: dx itself
            _phase_forward(phase.forward, variant)(dy, w, bias, phase.forward, out=out, weight_flipped=True)
        return dx
    if _cacheable(w):  # the cache's lookup is host work a launch plan must redo for each call
        weights = iter(plans.derive(lambda w: _phase_weights(w, pb, phases), w))
    else:  # kernels into new tensors: the plan records and replays them
        weights = iter(_phase_weights(w, pb, phases))
    for phase, out in _reached(dx, pb, phases, bias):
        _phase_forward(phase.forward, variant)(dy, next(weights), bias, phase.forward, out=out)
    return dx


# The stride-1 dgrad has two ways to its weight: in place, its taps flipped (W_FLIPPED), or from a
# flipped copy (``_phase_weights``), which the forward's own loop reads as it reads a conv's weight.
# Their builds are alike (the compile report: within 3 sm_90 SASS instructions a step), but at
# BLOCK_N 128 the in-place [BLOCK_K, BLOCK_N] tile takes two TMA copies a stage (64 columns each,
# the 128-byte swizzle's width) where the forward's takes one. On an H200 (Triton 3.6, fp16,
# channels_last, N=32) layer4.1.conv2's dgrad on tap_tma took 0.040 ms
# (perf/results/2026-11-28_H200_7785cad_backward), and the same GEMM's forward 0.028 in the call
# before (2026-11-28_H200_67e2351); the copy against the in-place read was never timed. So the
# copy is a family of its own, timed beside the in-place read, its copy inside each timed call
# (one more launch and 2 * weight bytes through memory, which training pays once a step), but
# in a ``cached_phase_weights`` block, which keeps the copy: there the router chooses apart
# (``phase_weights_kept``).


def accepts_tap_tma_copy(problem: Conv2dProblem) -> bool:
    """Stride-1 dgrads, where ``conv2d_dgrad_tap_tma`` may read w in place (whether it does, for
    these tensors, is ``tap_tma_copy_usable``'s question)."""
    return problem.stride_h == 1 and problem.stride_w == 1


def tap_tma_copy_usable(dy: torch.Tensor, w: torch.Tensor, problem: Conv2dProblem) -> bool:
    """Where tap_tma's dgrad reads w in place (``_weight_in_place``); elsewhere it copies w
    anyway, and this family would be the same launches."""
    return tap_tma_usable(dy, w, problem) and _weight_in_place(dy, w, problem, _phases(problem), "")


def conv2d_dgrad_tap_tma_copy(dy: torch.Tensor, w: torch.Tensor, problem: Conv2dProblem,
                              bias: Optional[torch.Tensor] = None,
                              memory_format: torch.memory_format = torch.contiguous_format) -> torch.Tensor:
    """``conv2d_dgrad_tap_tma`` from a flipped copy of w where it would read w in place.

    Args/Returns: as ``conv2d_dgrad``.
    """
    return conv2d_dgrad_tap_tma(dy, w, problem, bias, memory_format, in_place=False)


def conv2d_dgrad_1x1(dy: torch.Tensor, w: torch.Tensor, problem: Conv2dProblem,
                     bias: Optional[torch.Tensor] = None,
                     memory_format: torch.memory_format = torch.contiguous_format) -> torch.Tensor:
    """dgrad of an unpadded 1x1 conv in one group (``gemm1x1.accepts_dgrad``) on the 1x1 GEMM,
    which reads w in place, transposed: one launch at stride 1, where tap_tma's phase takes two
    (the transposed copy of w, then gemm1x1_tma). A strided conv's other phases, which no tap
    reaches, are zero (or conv_transpose2d's bias).

    Args/Returns: as ``conv2d_dgrad``.
    """
    pb = problem
    if not gemm1x1.accepts_dgrad(pb):
        raise ValueError(f"the 1x1 dgrad does not compute {pb}")
    check_device(dy, w, bias)
    dx = alloc_output(pb.input_shape, dy.dtype, dy.device, memory_format)
    if dx.numel() == 0:
        return dx
    for phase, out in _reached(dx, pb, _phases(pb), bias):  # phase (0, 0), dy's size (accepts_strided)
        gemm1x1.dgrad_1x1_phase(dy, w, bias, phase.forward, out)
    return dx


# --------------------------------------------------------------------------- Hopper: every stride phase in one launch
#
# tap_tma's dgrad above launches once per stride phase, after a launch that builds the phases'
# weights: five launches for a 3x3 stride-2 conv, each phase's grid small (ResNet-50's
# layer2.0.conv2 at batch 32: 196 tiles of 128x128 a phase for an H100's 132 SMs, a wave and a
# half), the one-tap phase a reduction of two steps, and every launch its own ramp and tail
# (0.65x cuDNN at the ninth H100 check, 0c9c62e). The phased kernel runs all the phases of a
# conv with at most PHASED_MAX_PHASES of them (a stride of at most 2 each way, or up to 4 one way) as
# one grid, the phases with the most taps first, and reads w in place as the stride-1 dgrad
# does: phase (a, b)'s tap (t, u) of its forward conv of dy is w's tap
# (r_last - t*step_h, s_last - u*step_w), with (r_last, s_last) the last tap reaching the phase,
# which _tap_tma_acc's W_FLIPPED read takes as w_tap0 = r_last*S + s_last, w_tap_row = step_h*S
# and w_tap_col = step_w. A phase no tap reaches stores its zeros (or the bias): no fill launch.
# It runs one step on boxes out of both operands' bounds, which TMA fills with zeros (dy's rows
# past its last, w's tap R*S): a loop that might run no step has LLVM zero the accumulator
# after it, and ptxas then serialized every wgmma of the kernel (8 of its 27 sm_90 fp16 configs
# on Triton 3.9, 2 on 3.6: the compile report's `serial` column). Zeros from both operands, not
# one: 0 * inf is NaN, and a phase no tap reaches is zero whatever dy and w hold. 16-bit only,
# as the in-place read at stride 1 (``_weight_in_place``).

PHASED_MAX_PHASES = 4  # dgrad_phased_kernel's phase slots (_slot)
_PHASE_SLOT_FIELDS = ("a", "b", "na", "nb", "pad_h", "pad_w", "tap0")
# the slot fields the autotune key holds: the taps and paddings shape each phase's work; a and b
# follow from them and the stride (the phases' order), tap0 only says where w's taps are read
_PHASE_TUNING_FIELDS = ("na", "nb", "pad_h", "pad_w")


def accepts_tap_tma_phased(problem: Conv2dProblem) -> bool:
    """Strided dgrads of at most PHASED_MAX_PHASES stride phases (at stride 1, tap_tma's one launch
    is the same kernel)."""
    pb = problem
    phases = min(pb.stride_h, pb.H) * min(pb.stride_w, pb.W)
    return (pb.stride_h, pb.stride_w) != (1, 1) and phases <= PHASED_MAX_PHASES


def tap_tma_phased_usable(dy: torch.Tensor, w: torch.Tensor, problem: Conv2dProblem) -> bool:
    """``tap_tma_usable``, with w read in place: a 16-bit KRSC weight whose (K, R*S*C/groups) rows
    TMA can load (``fprop.weight_tma_usable``)."""
    return (w.element_size() == 2 and tap_tma_usable(dy, w, problem)
            and fprop.weight_tma_usable(w, problem))


@functools.lru_cache(maxsize=256)  # host work per call otherwise: the launchers ask for every call
def _phased_slots(problem: Conv2dProblem) -> Tuple[Tuple[int, ...], Tuple[Tuple[int, int], ...], int, int, int, int]:
    """dgrad_phased_kernel's slot arguments for ``problem`` (``_PHASE_SLOT_FIELDS`` per slot, slot
    after slot), the slots' (rows, columns) of dx, the phases' dilation in dy (delta_h, delta_w),
    and w_tap_row, w_tap_col. Slots run longest reduction first; an unused one has no rows."""
    pb = problem
    phases = sorted(_phases(pb), key=lambda ph: -len(ph.taps_h) * len(ph.taps_w))
    slots, sizes = [], []
    for ph in phases:
        fw = ph.forward
        if fw is None:  # no tap: one step of zeros (or the bias), dy's rows from P on, w's tap R*S
            slots += [ph.a, ph.b, 0, 0, -pb.P, 0, pb.R * pb.S]
        else:
            tap0 = ph.taps_h[-1] * pb.S + ph.taps_w[-1]
            slots += [ph.a, ph.b, len(ph.taps_h), len(ph.taps_w), fw.pad_h, fw.pad_w, tap0]
        sizes.append((len(range(ph.a, pb.H, pb.stride_h)), len(range(ph.b, pb.W, pb.stride_w))))
    for _ in range(PHASED_MAX_PHASES - len(phases)):
        slots += [pb.H, pb.W, 0, 0, 0, 0, 0]
        sizes.append((0, 0))
    step_h = pb.stride_h // math.gcd(pb.stride_h, pb.dil_h)
    step_w = pb.stride_w // math.gcd(pb.stride_w, pb.dil_w)
    return (tuple(slots), tuple(sizes), pb.dil_h // math.gcd(pb.stride_h, pb.dil_h),
            pb.dil_w // math.gcd(pb.stride_w, pb.dil_w), step_h * pb.S, step_w)


@triton.jit
def _phase_tiles(a, extent, stride, BOX: tl.constexpr):
    """Boxes of BOX along one side of a stride phase of dx that starts at ``a`` (none past it)."""
    return tl.cdiv(tl.cdiv(extent - a, stride), BOX)


@triton.jit
def dgrad_phased_kernel(
    # descriptors and pointers
    dy_desc,  # dy as an (N, P, 1, Q, K) NHWC view (the phase view at stride 1): [BOX_N, BOX_H, 1, BOX_W, BLOCK_K] boxes
    w_desc,  # w as the (K, R*S*C/groups) matrix of a KRSC weight, read in place: [BLOCK_K, BLOCK_N] tiles
    b_ptr,  # (C,) conv_transpose2d's bias; unused unless HAS_BIAS
    dx_ptr,  # (N, C, H, W), any strides
    # sizes: dx's N, H, W; dy's channels K; per group, dx's channels CG and dy's KG (the reduction)
    N, H, W, K,
    CG, KG, GROUPS,
    # the conv: its stride; its phases' dilation in dy, and w's taps between a phase's neighbours
    stride_h, stride_w, dil_h, dil_w, w_tap_row, w_tap_col,
    # per phase slot (_phased_slots): dx's first row a and column b, taps na x nb, the forward
    # conv of dy's padding, and w's tap for its tap (0, 0); a slot with a = H has no rows
    a_0, b_0, na_0, nb_0, pad_h_0, pad_w_0, tap0_0,
    a_1, b_1, na_1, nb_1, pad_h_1, pad_w_1, tap0_1,
    a_2, b_2, na_2, nb_2, pad_h_2, pad_w_2, tap0_2,
    a_3, b_3, na_3, nb_3, pad_h_3, pad_w_3, tap0_3,
    # strides, in elements: dx's, and a phase's rows and columns in dx (stride_h * sdxh, stride_w * sdxw)
    sdxn, sdxc, sdxh, sdxw, sdx_ph, sdx_pw,
    # meta-parameters
    HAS_BIAS: tl.constexpr, ACC_DTYPE: tl.constexpr, INPUT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    BLOCK_W: tl.constexpr,
    K_ALIGN: tl.constexpr = 1,  # fprop.k_align(K/groups): EVEN_K where BLOCK_K divides it
    BOXES: tl.constexpr = 0,  # _common.tap_tma_boxes(N, the widest phase's rows and columns)
    SYNC_MMA: tl.constexpr = False,  # as fprop_tap_tma_kernel's
    TRANSPOSED: tl.constexpr = False,  # as fprop_tap_tma_kernel's
):
    """dx of every stride phase, one grid: each program a tile of one phase's forward conv of dy
    (fprop_tap_tma_kernel's loop and epilogue), the phases' tiles one after another by slot."""
    # the box, as the descriptor's pre-hook and the grid take it
    BOX: tl.constexpr = tap_tma_box_of(BLOCK_M, BLOCK_W, BOXES)
    BOX_N: tl.constexpr = BOX[0]
    BOX_H: tl.constexpr = BOX[1]
    BOX_W: tl.constexpr = BOX[2]
    EVEN_K: tl.constexpr = K_ALIGN % BLOCK_K == 0

    # -- the slot: where the program id falls among the slots' tiles
    per_box = tl.cdiv(N, BOX_N) * GROUPS * tl.cdiv(CG, BLOCK_N)  # tiles per box position in a phase
    end_0 = per_box * _phase_tiles(a_0, H, stride_h, BOX_H) * _phase_tiles(b_0, W, stride_w, BOX_W)
    end_1 = end_0 + per_box * _phase_tiles(a_1, H, stride_h, BOX_H) * _phase_tiles(b_1, W, stride_w, BOX_W)
    end_2 = end_1 + per_box * _phase_tiles(a_2, H, stride_h, BOX_H) * _phase_tiles(b_2, W, stride_w, BOX_W)
    pid = tl.program_id(0)
    slot = (pid >= end_0).to(tl.int32) + (pid >= end_1).to(tl.int32) + (pid >= end_2).to(tl.int32)
    a = _slot(slot, a_0, a_1, a_2, a_3)
    b = _slot(slot, b_0, b_1, b_2, b_3)
    na = _slot(slot, na_0, na_1, na_2, na_3)
    nb = _slot(slot, nb_0, nb_1, nb_2, nb_3)
    pad_h = _slot(slot, pad_h_0, pad_h_1, pad_h_2, pad_h_3)
    pad_w = _slot(slot, pad_w_0, pad_w_1, pad_w_2, pad_w_3)
    tap0 = _slot(slot, tap0_0, tap0_1, tap0_2, tap0_3)

    # -- the tile within the phase: (group, spatial M-tile, N-tile), as fprop_tap_tma_kernel's
    P = tl.cdiv(H - a, stride_h)
    Q = tl.cdiv(W - b, stride_w)
    tiles_h = tl.cdiv(P, BOX_H)
    tiles_w = tl.cdiv(Q, BOX_W)
    tiles_m = tl.cdiv(N, BOX_N) * tiles_h * tiles_w
    g, pid_m, pid_n = tile_pid(pid - _slot(slot, 0, end_0, end_1, end_2), tiles_m * BLOCK_M, CG,
                               BLOCK_M, BLOCK_N, GROUP_M)
    n0, p0, q0 = _tap_tma_origin(pid_m, tiles_h, tiles_w, BOX_N, BOX_H, BOX_W)
    # at least one step: a phase no tap reaches runs one on boxes past both operands (_phased_slots)
    steps = tl.maximum(na * nb * tl.cdiv(KG, BLOCK_K), 1)
    tl.assume(steps > 0)
    # the phase's forward conv of dy: stride 1, taps na x nb (its first step a tensor, as _tap_tma_acc
    # takes it; S at least 1, which tap_step_of divides by, for a tapless phase's step)
    acc = _tap_tma_acc(dy_desc, w_desc, g, n0, p0, q0, pid_n, steps * 0, steps, K, na, tl.maximum(nb, 1), KG, CG,
                       1, 1, pad_h, pad_w, dil_h, dil_w, tap0, w_tap_row, w_tap_col,
                       ACC_DTYPE, INPUT_PRECISION, BLOCK_M, BLOCK_N, BLOCK_K, EVEN_K, SYNC_MMA, True, TRANSPOSED)
    # -- the phase's pixels of dx: rows a, a + stride_h, ..., columns b, b + stride_w, ...
    first = a.to(tl.int64) * sdxh + b.to(tl.int64) * sdxw
    _tap_tma_store(acc, g, n0, p0, q0, pid_n, N, P, Q, CG, b_ptr, dx_ptr, dx_ptr + first,
                   sdxn, sdxc, sdx_ph, sdx_pw, 0, 0, 0, 0, 0.0,
                   HAS_BIAS, False, 0, BLOCK_M, BLOCK_N, BOX_H, BOX_W)


def _set_phased_blocks(nargs):
    """Autotune pre-hook: dy's box is the config's spatial tile, w's tile (BLOCK_K, BLOCK_N) (as
    fprop's for a flipped weight, under this kernel's argument names)."""
    box_n, box_h, box_w = tap_tma_box(nargs["BLOCK_M"], nargs["BLOCK_W"], nargs.get("BOXES", 0))
    nargs["dy_desc"].block_shape = [box_n, box_h, 1, box_w, nargs["BLOCK_K"]]
    nargs["w_desc"].block_shape = [nargs["BLOCK_K"], nargs["BLOCK_N"]]


# fprop_tap_tma_kernel's key in this kernel's terms (its bias, in the key as the epilogue it is)
_PHASED_KEY = (["N", "H", "W", "CG", "KG", "GROUPS", "stride_h", "stride_w", "dil_h", "dil_w", "sdxc", "HAS_BIAS"]
               + [f"{field}_{i}" for i in range(PHASED_MAX_PHASES) for field in _PHASE_TUNING_FIELDS])
_dgrad_phased_tuned = triton.autotune(
    configs=fprop.tap_tma_configs(pre_hook=_set_phased_blocks), key=_PHASED_KEY, do_bench=configs.capture_safe_bench,
    prune_configs_by={"early_config_prune": configs.SpatialTilePruneHook(
        m_fn=lambda a: a["N"] * a["H"] * a["W"], n_fn=lambda a: a["CG"], k_fn=lambda a: a["KG"],
        tensor_arg="dx_ptr", span="BLOCK_M", k_align_arg="K_ALIGN", gathered=False,
        row_fn=lambda a: triton.cdiv(a["W"], a["stride_w"]), transposable=True,
    )},
)(dgrad_phased_kernel)


def conv2d_dgrad_tap_tma_phased(dy: torch.Tensor, w: torch.Tensor, problem: Conv2dProblem,
                                bias: Optional[torch.Tensor] = None,
                                memory_format: torch.memory_format = torch.contiguous_format) -> torch.Tensor:
    """A strided dgrad's stride phases in one launch, w read in place (dgrad_phased_kernel);
    ``conv2d_dgrad_tap_tma`` where the tensors don't allow it (``tap_tma_phased_usable``) or the
    problem has more phases than the kernel's slots.

    Args/Returns: as ``conv2d_dgrad``.
    """
    pb = problem
    if not (accepts_tap_tma_phased(pb) and tap_tma_phased_usable(dy, w, pb)):
        return conv2d_dgrad_tap_tma(dy, w, pb, bias, memory_format)
    check_device(dy, w, bias)
    dx = alloc_output(pb.input_shape, dy.dtype, dy.device, memory_format)
    if dx.numel() == 0:
        return dx
    slots, sizes, dil_h, dil_w, w_tap_row, w_tap_col = _phased_slots(pb)
    dy_desc = TensorDescriptor.from_tensor(phase_view(dy, 1, 1), [1, 8, 1, fprop.TAP_TMA_BLOCK_W, 16])
    w_desc = TensorDescriptor.from_tensor(dense_view(w, (pb.K, pb.R * pb.S * pb.C_per_group)), [16, 16])
    boxes = tap_tma_boxes(pb.N, max(p for p, _ in sizes), max(q for _, q in sizes))  # phase (0, 0)'s

    def grid(meta):
        bn, bh, bw = tap_tma_box(meta["BLOCK_M"], meta["BLOCK_W"], boxes)
        boxed = sum(triton.cdiv(p, bh) * triton.cdiv(q, bw) for p, q in sizes)
        return (triton.cdiv(pb.N, bn) * boxed * pb.groups * triton.cdiv(pb.C_per_group, meta["BLOCK_N"]),)

    sdx = dx.stride()
    tuning.launch(_dgrad_phased_tuned, "dgrad_phased", dy.device, grid,
        dy_desc, w_desc, bias if bias is not None else dx, dx,
        pb.N, pb.H, pb.W, pb.K, pb.C_per_group, pb.K_per_group, pb.groups,
        pb.stride_h, pb.stride_w, dil_h, dil_w, w_tap_row, w_tap_col, *slots,
        *sdx, sdx[2] * pb.stride_h, sdx[3] * pb.stride_w,
        HAS_BIAS=bias is not None, ACC_DTYPE=acc_dtype_for(dy.dtype), INPUT_PRECISION=input_precision_for(dy),
        K_ALIGN=fprop.k_align(pb.K_per_group), BOXES=boxes,
    )
    return dx
