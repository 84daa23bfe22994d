"""Pieces every kernel family shares: program ordering, output allocation, modes.

Nothing here knows about torch.library; nothing here knows about tile sizes.
"""

from __future__ import annotations

import contextlib
import functools
import math
import threading
from typing import Dict, NamedTuple, Optional, Tuple

import torch
import triton
import triton.language as tl
from triton.runtime import driver

from ..spec import Conv2dProblem, output_memory_format

__all__ = [
    "INTERPRETER",
    "TMA_DTYPES",
    "TensorDescriptor",
    "grouped_pid",
    "tile_pid",
    "first_tap",
    "split_range",
    "split_steps",
    "sm_count",
    "stream_k_share",
    "stream_k_step",
    "stream_k_hand_off",
    "stream_k_gather",
    "persistent_programs",
    "stream_k_flags",
    "INTERPRETER_PROGRAMS",
    "unravel4",
    "dense_view",
    "phase_view",
    "phase_view_fits",
    "next_box",
    "tap_phase",
    "tap_phase_next",
    "tap_step_of",
    "next_tap_step",
    "unravel3",
    "unravel3_next",
    "thread_setting",
    "alloc_output",
    "alloc_partials",
    "check_pixel_count",
    "StridePhases",
    "stride_phases",
    "MAX_PIXELS",
    "acc_dtype_for",
    "input_precision_for",
    "check_device",
    "content_state",
    "set_poison_outputs",
    "WIDEN_BF16_DOT",
    "mma",
    "mma_barrier",
    "TAP_TMA_SPANS",
    "tap_tma_boxes",
    "tap_tma_box",
    "tap_tma_box_of",
    "ACTIVATIONS",
    "activation_code",
    "apply_activation",
    "pixel_rows",
    "conv_epilogue",
    "ForwardLaunch",
    "prepare_forward",
]


@triton.jit
def _probe():
    pass


# Triton decides at decoration time whether @triton.jit builds GPU code or an
# interpreted function (TRITON_INTERPRET=1); ask the decorated probe instead of
# re-reading the environment, so we agree with Triton even if it changed later.
INTERPRETER: bool = type(_probe).__name__ == "InterpretedFunction"

# Held around a launch that keeps state outside the call while it runs, so that threads
# launching at once do not see each other's (``tuning.launch``, ``tuning.launch_direct`` and an
# interpreted plan's replay):
# - Triton's Autotuner keeps the call's arguments on itself (``nargs``, which the config's
#   pre-hook reads to shape the TMA descriptors, then sets to None) and its choice
#   (``best_config``, which ``tuning.launch`` reads after). Another thread can run in between
#   (the C launch releases the GIL), and would have the hook shape its own descriptors with the
#   other call's tile, or find ``nargs`` gone.
# - Triton's interpreter patches triton.language for the kernel it runs: two interpreted
#   launches at once fail ("Did you forget to add @triton.jit ?"), so under it every launch holds it.
# Re-entrant: a launcher's ``derive`` step may launch. A planned replay on a GPU, which touches
# no such state, runs without it.
LAUNCH_LOCK = threading.RLock()


@triton.jit
def grouped_pid(pid, num_pid_m, num_pid_n, GROUP_M: tl.constexpr):
    """Map a linear program id to (pid_m, pid_n) in GROUP_M-row bands.

    Consecutive programs walk down a band of GROUP_M row-tiles before moving
    right, so the B tiles (weights) they share are still in L2 when reused.
    """
    width = GROUP_M * num_pid_n
    band = pid // width
    first_m = band * GROUP_M
    band_rows = tl.minimum(num_pid_m - first_m, GROUP_M)
    pid_m = first_m + ((pid % width) % band_rows)
    pid_n = (pid % width) // band_rows
    return pid_m, pid_n


@triton.jit
def first_tap(phase, pad, dil, stride, step, taps):
    """The first kernel tap that reaches stride phase ``phase`` of a dgrad's output (dx): the
    smallest t < step with (phase + pad - t*dil) % stride == 0, or ``taps`` if none is < taps.
    The others are t + step, t + 2*step, ... (step = stride / gcd(stride, dil))."""
    first = taps
    for t in range(0, step):
        hit = ((phase + pad - t * dil) % stride == 0) & (first == taps) & (t < taps)
        first = tl.where(hit, t, first)
    return first


@triton.jit
def tile_pid(pid, M, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUP_M: tl.constexpr):
    """Split a linear program id into (outer, pid_m, pid_n) over an M x N tile grid.

    ``outer`` counts whole tile grids (the conv group, or split * groups + group);
    within one grid the tiles run in GROUP_M bands (``grouped_pid``).
    """
    num_pid_m = tl.cdiv(M, BLOCK_M)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    tiles = num_pid_m * num_pid_n
    pid_m, pid_n = grouped_pid(pid % tiles, num_pid_m, num_pid_n, GROUP_M)
    return pid // tiles, pid_m, pid_n


try:  # host-side TMA tensor descriptors: Triton >= 3.4 (the GPU machine has 3.6, CI 3.9)
    from triton.tools.tensor_descriptor import TensorDescriptor
except ImportError:  # pragma: no cover
    TensorDescriptor = None

# dtypes the TMA paths take (fp64 has no wgmma; the families fall back to pointer loads)
TMA_DTYPES = (torch.float16, torch.bfloat16, torch.float32)

# Triton's interpreter keeps bfloat16 as its raw uint16 bits and its tl.dot multiplies those
# bits (triton-lang/triton#11584, not fixed upstream): values near 1e10 instead of the product.
# Widening the operands to fp32 first is exact (a bf16 value is an fp32 with a shorter
# mantissa, and their products fit fp32), so ``mma`` gives the sum a GPU's bf16 MMA adds up.
# The choice is made here, between two @jit functions, not inside one from a global constexpr:
# Triton before 3.9 (3.6 is on the GPU machine) hashes a callee's global constexprs into a
# kernel's cache_key only where that callee was hashed before the kernel, so with a global in
# ``mma`` every kernel's cache_key, and with it the tuning cache's signature and Triton's own
# compile cache, depended on which kernel a process hashed first (the H100 check of
# 2026-11-26 at 283a32b re-tuned fprop_tap_tma in every stage). Compiled for a GPU, ``mma`` is
# the bare tl.dot it was.
WIDEN_BF16_DOT = INTERPRETER


@triton.jit
def _mma_widened(a, b, acc, INPUT_PRECISION: tl.constexpr, ACC_DTYPE: tl.constexpr):
    """``acc + a @ b`` with bf16 operands widened to fp32 (the interpreter's ``mma``)."""
    if a.dtype == tl.bfloat16:
        a = a.to(tl.float32)
        b = b.to(tl.float32)
    return tl.dot(a, b, acc, input_precision=INPUT_PRECISION, out_dtype=ACC_DTYPE)


@triton.jit
def _mma_direct(a, b, acc, INPUT_PRECISION: tl.constexpr, ACC_DTYPE: tl.constexpr):
    """``acc + a @ b`` (the compiled ``mma``)."""
    return tl.dot(a, b, acc, input_precision=INPUT_PRECISION, out_dtype=ACC_DTYPE)


# every kernel's tl.dot: ``acc + a @ b``, bf16 operands widened under the interpreter
mma = _mma_widened if WIDEN_BF16_DOT else _mma_direct


@triton.jit
def mma_barrier(acc):
    """``acc`` through an empty inline asm: a use Triton cannot see through, so its software
    pipeliner waits for every wgmma writing ``acc`` before it (wgmma.wait_group 0) and none stays
    in flight into the next loop step. The tap-TMA kernels use it where a step's wgmmas read A
    from registers that the next step rewrites (configs.WGMMA_RS_HAZARD). No instruction is
    emitted for it; CUDA only (the interpreter has no inline asm)."""
    return tl.inline_asm_elementwise("", "=f,0", [acc], dtype=tl.float32, is_pure=False, pack=1)


@triton.jit
def split_steps(split, steps, SPLIT):
    """[start, stop) of chunk ``split`` when ``steps`` reduction steps are cut into SPLIT chunks
    as even as can be (their lengths differ by one at most): every step in exactly one chunk, and
    none empty where SPLIT <= steps, which the forward launchers ensure (fprop.split_chunks). Their
    kernels then run at least one step (``stop = max(stop, start + 1)``: a step more only where
    the reduction has none, C/groups = 0, whose loads are all masked) and tell the compiler so
    (``tl.assume``). Where the loop might run no step, LLVM lays out the path around it past the
    loop, zeroing the accumulator's registers there, and ptxas counts that as a write inside the
    wgmmas' pipeline stage: it serialized every wgmma of 17 forward configs on Triton 3.6 (sm_90,
    fp16, the split-K ones and the implicit GEMM's and tap_tma's 128x256 tiles; the compile
    report's serial column), each k16 slice waiting for the one before."""
    return ((split.to(tl.int64) * steps) // SPLIT).to(tl.int32), (((split + 1).to(tl.int64) * steps) // SPLIT).to(tl.int32)


@triton.jit
def split_range(split, total, SPLIT, STEP: tl.constexpr):
    """[start, stop) of chunk ``split`` when ``total`` items are cut into SPLIT chunks of whole
    STEP-item steps: every step lies in exactly one chunk, so no tile is summed twice; chunks
    past the end are empty (start >= stop) and their programs store zero partials."""
    chunk = tl.cdiv(tl.cdiv(total, SPLIT), STEP) * STEP
    start = split * chunk
    return start, tl.minimum(start + chunk, total)


# --------------------------------------------------------------------------- phase views (the TMA families)
#
# With H and W multiples of the stride, NHWC x is (N, H/sh, sh, W/sw, sw*C) without a
# copy: input row h = sh*hh + ph is (hh, ph), and column w = sw*ww + pw is ww with its
# channels at pw*C.. in the last dimension. What a tap reads for consecutive output rows
# and columns is then a box of consecutive (hh, ww) at one phase, and (hh, ww) outside
# the view is exactly the padding, which TMA zero-fills. Stride 1 has unit phases.


def dense_view(t: torch.Tensor, shape) -> torch.Tensor:
    """t's elements as a row-major tensor of ``shape``, for a tensor dense in that order (NHWC for
    a channels_last-contiguous activation, (K, R*S*C/groups) for a KRSC weight).

    Strides are spelled out rather than derived from t's: a size-1 dimension may carry any
    stride in a contiguous tensor, and TMA needs every stride but the last a multiple of 16
    bytes."""
    strides, step = [], 1
    for size in reversed(shape):
        strides.append(step)
        step *= size
    return t.as_strided(tuple(shape), tuple(reversed(strides)))


def phase_view_fits(problem: Conv2dProblem) -> bool:
    """Whether x has a phase view: the stride divides H and W (always at stride 1)."""
    return problem.H % problem.stride_h == 0 and problem.W % problem.stride_w == 0


def phase_view(x: torch.Tensor, stride_h: int, stride_w: int) -> torch.Tensor:
    """NHWC-contiguous x (N, C, H, W) as (N, H/sh, sh, W/sw, sw*C), a view."""
    N, C, H, W = x.shape
    if H % stride_h or W % stride_w:  # the rows past H // sh * sh would read as padding
        raise ValueError(f"a stride of ({stride_h}, {stride_w}) does not divide the {H}x{W} image")
    return dense_view(x, (N, H // stride_h, stride_h, W // stride_w, stride_w * C))


@triton.jit
def tap_phase(r, dil, pad, stride):
    """Tap r's input rows for output row p, as (p + shift) of phase ``phase`` in the phase view:
    r*dil - pad = stride*shift + phase with 0 <= phase < stride (floor division, written with
    non-negative operands only: integer division of negatives rounds differently in compiled
    Triton and in the interpreter). Any padding, negative included (dgrad's forward convs)."""
    lift = tl.cdiv(tl.maximum(pad, 0), stride)  # r*dil - pad + stride*lift >= 0
    offset = r * dil - pad + stride * lift
    return offset // stride - lift, offset % stride


@triton.jit
def next_box(n0, p0, q0, P, Q, BOX_N: tl.constexpr, BOX_H: tl.constexpr, BOX_W: tl.constexpr):
    """The origin of the spatial box after the one at (n0, p0, q0), boxes in (n, p, q) order over
    a (N, P, Q) output: along the row, then down, then on to the next images (a box starts
    inside the output, so q0 < Q and p0 < P hold exactly for the boxes there are)."""
    q0 += BOX_W
    next_row = q0 >= Q
    p0 += tl.where(next_row, BOX_H, 0)
    next_images = p0 >= P
    return n0 + tl.where(next_images, BOX_N, 0), tl.where(next_images, 0, p0), tl.where(next_row, 0, q0)


@triton.jit
def unravel3(kk, D1, D2):
    """Flat indices ``kk`` into a row-major (D0, D1, D2) array as (i0, i1, i2) (wgrad_kernel's
    output pixels (n, p, q), decoded for its first reduction step)."""
    return kk // (D1 * D2), (kk // D2) % D1, kk % D2


@triton.jit
def unravel3_next(i0, i1, i2, step0, step1, step2, D1, D2):
    """``unravel3(kk + step)`` from (i0, i1, i2) = ``unravel3(kk)`` and (step0, step1, step2) =
    ``unravel3(step)`` (worked out once, before the loop): added with carries, i2 + step2 passes
    D2 at most once and so does i1. Decoding every step took three integer divisions per element
    (wgrad_kernel's loop)."""
    i2 += step2
    carry2 = i2 >= D2
    i1 += step1 + carry2.to(tl.int32)
    carry1 = i1 >= D1
    return i0 + step0 + carry1.to(tl.int32), tl.where(carry1, i1 - D1, i1), tl.where(carry2, i2 - D2, i2)


@triton.jit
def tap_step_of(it, CG, S, BLOCK_K: tl.constexpr):
    """(c0, rs, r, s) of reduction step ``it`` in the forward's order (channel blocks of BLOCK_K
    fastest, then s, then r; rs = r*S + s): the first step of a loop that ``next_tap_step`` carries on."""
    c_blocks = tl.maximum(tl.cdiv(CG, BLOCK_K), 1)  # C/groups = 0: no step, and no division by 0
    rs = it // c_blocks
    r = rs // S
    return (it - rs * c_blocks) * BLOCK_K, rs, r, rs - r * S


@triton.jit
def next_tap_step(c0, rs, r, s, CG, S, BLOCK_K: tl.constexpr):
    """The reduction step after (tap (r, s), rs = r*S + s, channels c0..c0+BLOCK_K) in the
    forward's order, channel blocks fastest, then s, then r: (c0, rs, r, s) of the next step,
    carried instead of decoded from the step index (two integer divisions a step), and whether
    it moved to the next tap (``next_tap``) and to the next row of taps (``next_row``)."""
    c0 += BLOCK_K
    next_tap = c0 >= CG
    s += next_tap.to(tl.int32)
    next_row = s == S
    return (tl.where(next_tap, 0, c0), rs + next_tap.to(tl.int32), r + next_row.to(tl.int32),
            tl.where(next_row, 0, s), next_tap, next_row)


@triton.jit
def tap_phase_next(shift, phase, dil_q, dil_r, stride, go):
    """``tap_phase`` of tap r + 1 from that of tap r, where ``go`` (else unchanged), with
    (dil_q, dil_r) = divmod(dil, stride) worked out before the loop: the offset r*dil - pad
    grows by stride*dil_q + dil_r, so the phase carries into the shift at most once."""
    phase = phase + tl.where(go, dil_r, 0)
    carry = phase >= stride
    return shift + tl.where(go, dil_q, 0) + carry.to(tl.int32), tl.where(carry, phase - stride, phase)


@triton.jit
def unravel4(offs, D1, D2, D3):
    """Flat indices ``offs`` into a row-major (D0, D1, D2, D3) array as (i0, i1, i2, i3) (the
    elementwise kernels' index arithmetic: phase weights, sums of partials)."""
    i3 = offs % D3
    rest = offs // D3
    i2 = rest % D2
    rest = rest // D2
    return rest // D1, rest % D1, i2, i3


@contextlib.contextmanager
def thread_setting(local: threading.local, name: str, value):
    """Set ``local.<name>`` to ``value`` inside the block, for this thread, then restore it
    (the router's forced family, the phase-weight cache's switch)."""
    old = getattr(local, name, None)
    setattr(local, name, value)
    try:
        yield
    finally:
        setattr(local, name, old)


_POISON_OUTPUTS = False


def set_poison_outputs(enabled: bool) -> bool:
    """Fill every freshly allocated kernel output with NaN (for tests). Returns the old value."""
    global _POISON_OUTPUTS
    old, _POISON_OUTPUTS = _POISON_OUTPUTS, bool(enabled)
    return old


def alloc_output(shape, dtype, device, memory_format=torch.contiguous_format) -> torch.Tensor:
    """Allocate a kernel output; poisoned with NaN when tests ask for it."""
    out = torch.empty(shape, dtype=dtype, device=device, memory_format=memory_format)
    if _POISON_OUTPUTS:
        out.fill_(float("nan"))
    return out


# Pixel indices (N*P*Q and the like) are int32 inside the kernels, and the tile
# loops run up to a block or a split chunk past the last pixel.
MAX_PIXELS = 2**31 - 2**16


def check_pixel_count(count: int, what: str) -> None:
    """Refuse a problem whose pixel count would overflow the kernels' int32 pixel indices."""
    if count >= MAX_PIXELS:
        raise ValueError(f"conv2d {what} has {count} pixels; tritonconv supports fewer than {MAX_PIXELS}")


class StridePhases(NamedTuple):
    """A dgrad's stride phases (h mod stride_h, w mod stride_w) of dx: HP x WP pixels each, and
    the steps between the kernel rows (columns) that reach one (``first_tap``)."""
    HP: int
    WP: int
    step_r: int
    step_s: int


def stride_phases(problem: Conv2dProblem) -> StridePhases:
    """``problem``'s stride phases, its per-phase pixel count checked (``check_pixel_count``)."""
    pb = problem
    HP, WP = triton.cdiv(pb.H, pb.stride_h), triton.cdiv(pb.W, pb.stride_w)
    check_pixel_count(pb.N * HP * WP, "input, per stride phase,")
    return StridePhases(HP, WP, pb.stride_h // math.gcd(pb.stride_h, pb.dil_h),
                        pb.stride_w // math.gcd(pb.stride_w, pb.dil_w))


def alloc_partials(shape, like: torch.Tensor) -> torch.Tensor:
    """A split reduction's partial sums: fp32 (fp64 for fp64 inputs) on ``like``'s device.

    Poisoned like every output when tests ask for it, so a program that skips
    its store (an empty chunk must store zeros) turns the result into NaN.
    """
    dtype = torch.float64 if like.dtype == torch.float64 else torch.float32
    return alloc_output(shape, dtype, like.device)


def acc_dtype_for(dtype: torch.dtype):
    """fp32 accumulation for 16/32-bit inputs, fp64 for fp64."""
    return tl.float64 if dtype == torch.float64 else tl.float32


def input_precision_for(t: torch.Tensor) -> str:
    """TF32 for fp32 exactly when F.conv2d would use it (cuDNN's setting for convs, on CUDA)."""
    if t.dtype == torch.float32 and t.is_cuda and _cudnn_conv_tf32():
        return "tf32"
    return "ieee"


def _cudnn_conv_tf32() -> bool:
    """cuDNN's TF32 setting for convolutions: ``allow_tf32``; once a program has set the newer
    ``fp32_precision`` knobs (torch >= 2.9), reading the legacy flag raises, and the conv's own
    knob decides, else cuDNN's, else the global one ("none" defers to the next)."""
    try:
        return bool(torch.backends.cudnn.allow_tf32)
    except RuntimeError:
        knobs = (getattr(getattr(torch.backends.cudnn, "conv", None), "fp32_precision", "none"),
                 getattr(torch.backends.cudnn, "fp32_precision", "none"),
                 getattr(torch.backends, "fp32_precision", "none"))
        return next((k for k in knobs if k != "none"), "ieee") == "tf32"


def content_state(t: torch.Tensor) -> Optional[tuple]:
    """What something built from ``t``'s values (a packed weight) must be kept with, and checked
    against before each reuse: ``t``'s version counter (in-place writes), its storage's
    StorageImpl (``weight.data = ...`` and ``module.to()`` swap it without moving the version;
    keep ``StorageWeakRef(t.untyped_storage())`` beside the state and check it has not expired,
    so that a new storage at a freed one's address cannot match), its view (offset, dtype,
    device, sizes, strides), and the stream that builds and reads it (no cross-stream ordering
    to get wrong). None where nothing built from ``t`` may be kept: an inference tensor (no
    version counter), or during CUDA graph capture (what is built holds nothing until a replay).
    """
    if t.is_inference():
        return None
    stream = 0
    if t.is_cuda:
        if torch.cuda.is_current_stream_capturing():
            return None
        raw = getattr(torch._C, "_cuda_getCurrentRawStream", None)
        stream = raw(t.get_device()) if raw is not None else torch.cuda.current_stream(t.device).cuda_stream
    return (t._version, t.untyped_storage()._cdata, t.storage_offset(), t.dtype, t.device, t.shape, t.stride(),
            stream)


def sm_count(device: torch.device) -> int:
    """The device's streaming multiprocessors, which split-K and persistent grids size themselves
    by; 1 off CUDA (the interpreter runs programs one after another)."""
    return torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 1


# --------------------------------------------------------------------------- stream-K
#
# Stream-K (after Osama et al., "Stream-K: Work-centric Parallel Decomposition for Dense Matrix
# Multiplication on the GPU", 2023), for gemm1x1_tma and tap_tma. With one program per output
# tile, a layer with fewer tiles than SMs, or a few more, leaves SMs idle for the whole
# reduction: ResNet-50's 14x14 layers at batch 32 have 98 tiles of 128x128 for an H100's 132
# SMs. Here every program takes an equal share of all (tile, reduction step) pairs, so it may
# start or stop in the middle of a tile:
#
#     program p's pairs    [p * total // P, (p+1) * total // P),  total = tiles * steps
#     a tile's finisher    the program holding its last step: it adds the partial sums
#                          of the programs before it, in program order (deterministic),
#                          then stores the tile through the epilogue
#     the others           store their partial accumulator in partials[p] and raise
#                          flags[p]; the finisher waits for it, and lowers it again
#
# A program walks its share backwards, last pair first (stream_k_step): so the tile it stops
# inside, which it hands off, comes first, and the tile it starts inside, which it finishes,
# comes last. Walked forwards, a program would finish its first tile only after the program
# before it had handed off its last one, i.e. done its whole share: each program would wait
# for the one before it, and the launch would run one share after another (an H100 measured
# it 8-17x slower than tap_tma). A program stops inside at most one tile, so one partial slot
# per program is enough. The finisher only ever waits for programs with smaller ids, which
# are launched first (and all of them fit at once: P <= SMs), so it never waits for a program
# that cannot run; the interpreter runs programs in id order, so there every partial is ready
# when needed. The launchers keep P <= total (no empty share): an empty program between a
# tile's first and last would never hand off the partial its finisher waits for.


@triton.jit
def stream_k_share(pid, total):
    """[it, end): program ``pid``'s share of the ``total`` (tile, reduction step) pairs (int64)."""
    programs = tl.num_programs(0)
    return pid * total // programs, (pid + 1) * total // programs


@triton.jit
def stream_k_step(start, end, steps):
    """(tile, k_lo, k_hi): the tile of the last pair in [start, end) (what is left of a share,
    walked backwards), and the steps [k_lo, k_hi) of it that [start, end) holds (a tile has
    ``steps`` steps). The caller then takes k_hi - k_lo off ``end``."""
    tile = ((end - 1) // steps).to(tl.int32)
    first = tile.to(tl.int64) * steps
    return tile, tl.maximum(start - first, 0).to(tl.int32), (end - first).to(tl.int32)


@triton.jit
def _stream_k_slot(BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """Each accumulator element's offset in a program's partial-tile slot (row-major)."""
    return tl.arange(0, BLOCK_M)[:, None] * BLOCK_N + tl.arange(0, BLOCK_N)[None, :]


@triton.jit
def stream_k_hand_off(acc, partials_ptr, flags_ptr, pid, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """A program that stops inside a tile: its partial sum to its slot, then its flag up."""
    tl.store(partials_ptr + pid * (BLOCK_M * BLOCK_N) + _stream_k_slot(BLOCK_M, BLOCK_N), acc)
    tl.debug_barrier()  # every thread's stores come before the flag
    tl.atomic_xchg(flags_ptr + pid, 1, sem="release", scope="gpu")


@triton.jit
def stream_k_gather(acc, partials_ptr, flags_ptr, tile, steps, total, BLOCK_M: tl.constexpr,
                    BLOCK_N: tl.constexpr):
    """The tile's finisher (it holds the tile's last step, and did not start it): acc plus the
    partial sums of the programs that did its steps before, in program order, each waited for
    and its flag lowered again (ready for the next launch)."""
    programs = tl.num_programs(0)
    start = tile.to(tl.int64) * steps
    first = ((start + 1) * programs + total - 1) // total - 1  # the program holding the tile's step 0
    slot = _stream_k_slot(BLOCK_M, BLOCK_N)
    for q in range(first.to(tl.int32), tl.program_id(0)):
        while tl.atomic_add(flags_ptr + q, 0, sem="acquire", scope="gpu") == 0:
            pass
        tl.debug_barrier()
        acc += tl.load(partials_ptr + q * (BLOCK_M * BLOCK_N) + slot, cache_modifier=".cg")
        tl.atomic_xchg(flags_ptr + q, 0, sem="relaxed", scope="gpu")
    return acc


# programs of a persistent or stream-K grid under the interpreter: few, so that each program
# of a test loops over several tiles (tests vary it to move stream-K's cuts)
INTERPRETER_PROGRAMS = 2


def persistent_programs(device: torch.device) -> int:
    """How many programs a persistent or stream-K grid launches: one per SM on CUDA;
    INTERPRETER_PROGRAMS on the CPU (the interpreter)."""
    if device.type != "cuda":
        return INTERPRETER_PROGRAMS
    return sm_count(device)


def stream_k_flags(device: torch.device, programs: int) -> torch.Tensor:
    """Stream-K's flags for launches on the current stream: zero between launches (each
    finisher lowers the flags it waited for), so one buffer per device and stream is kept and
    reused (by every stream-K kernel: launches on one stream run one after another); the stream
    is part of the key because launches on two streams may overlap. During a CUDA graph
    capture, a fresh one, zeroed by the graph itself."""
    if device.type == "cuda":
        if torch.cuda.is_current_stream_capturing():
            return torch.zeros(programs, dtype=torch.int32, device=device)
        # the stream the kernel will be launched on, as Triton finds it (cheaper than torch's)
        key = (device, driver.active.get_current_stream(device.index))
    else:
        key = (device, 0)
    flags = _flag_buffers.get(key)
    if flags is None or flags.numel() < programs:
        flags = _flag_buffers[key] = torch.zeros(programs, dtype=torch.int32, device=device)
    return flags


_flag_buffers: dict = {}


def check_device(*tensors: torch.Tensor) -> None:
    """Kernels run on CUDA tensors, or on any tensor under Triton's interpreter."""
    if INTERPRETER:
        return
    for t in tensors:
        if t is not None and not t.is_cuda:
            raise RuntimeError(
                f"tritonconv kernels need CUDA tensors, got a tensor on {t.device}. To run on the CPU "
                "through Triton's interpreter, set TRITON_INTERPRET=1 in the environment before "
                "tritonconv (or triton) is imported."
            )


# Epilogue activations: name -> the ACTIVATION constexpr the kernels branch on.
ACTIVATIONS = {
    "none": 0,
    "relu": 1,
    "silu": 2,
    "gelu": 3,  # erf form, F.gelu's default
    "gelu_tanh": 4,  # F.gelu(approximate="tanh")
    "leaky_relu": 5,  # slope = alpha
    "hardswish": 6,
    "sigmoid": 7,
}


def activation_code(name: str) -> int:
    """The ACTIVATION constexpr for an activation name, with a clear error for unknown names."""
    try:
        return ACTIVATIONS[name]
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; expected one of {sorted(ACTIVATIONS)}") from None


@triton.jit
def apply_activation(z, ACTIVATION: tl.constexpr, alpha):
    """act(z) for the fused epilogue; z is the fp32 (fp64) accumulator, so no precision is lost."""
    if ACTIVATION == 1:
        z = tl.maximum(z, 0.0)
    elif ACTIVATION == 2:
        z = z / (1.0 + tl.exp(-z))
    elif ACTIVATION == 3:
        z = 0.5 * z * (1.0 + tl.math.erf(z * 0.7071067811865476))
    elif ACTIVATION == 4:
        # tanh(u) = 2 * sigmoid(2u) - 1, which needs no libdevice tanh
        u = 0.7978845608028654 * (z + 0.044715 * z * z * z)
        z = 0.5 * z * (1.0 + (2.0 / (1.0 + tl.exp(-2.0 * u)) - 1.0))
    elif ACTIVATION == 5:
        # the kernels take alpha as fp64 (a Python float is fp32 to Triton otherwise, and an fp64
        # conv's slope would be off by 1e-8): an fp64 accumulator uses it as is, an fp32 one rounds it
        if z.dtype == tl.float64:
            z = tl.where(z >= 0.0, z, z * alpha)
        else:
            z = tl.where(z >= 0.0, z, z * tl.cast(alpha, z.dtype))
    elif ACTIVATION == 6:
        z = z * tl.minimum(tl.maximum(z + 3.0, 0.0), 6.0) / 6.0
    elif ACTIVATION == 7:
        z = 1.0 / (1.0 + tl.exp(-z))
    return z


@triton.jit
def pixel_rows(offs_m, H, W, sxn, sxh, sxw, syn, syh, syw, srn, srh, srw, FLAT: tl.constexpr):
    """The int64 offsets of pixels ``offs_m`` (m = (n * H + h) * W + w) in three tensors, with
    strides (sn, sh, sw) each. FLAT: the launcher found every one flat (``gemm1x1.flat_rows``),
    so the offset is m * sw, with no divisions by W and H * W."""
    if FLAT:
        m = offs_m.to(tl.int64)
        return m * sxw, m * syw, m * srw
    w_ = (offs_m % W).to(tl.int64)
    h_ = ((offs_m // W) % H).to(tl.int64)
    n_ = (offs_m // (H * W)).to(tl.int64)
    return n_ * sxn + h_ * sxh + w_ * sxw, n_ * syn + h_ * syh + w_ * syw, n_ * srn + h_ * srh + w_ * srw


@triton.jit
def conv_epilogue(
    acc,  # (BLOCK_M, BLOCK_N) accumulator, ACC dtype
    b_ptr, res_ptr, y_ptr,
    y_rows, res_rows,  # (BLOCK_M,) int64 element offsets of each output pixel in y / residual
    k_out,  # (BLOCK_N,) output channels
    syk, srk,  # channel strides of y / residual
    mask_m, mask_n,
    alpha,
    HAS_BIAS: tl.constexpr, HAS_RESIDUAL: tl.constexpr, ACTIVATION: tl.constexpr,
):
    """act(acc + bias + residual), cast and stored once; shared by every forward family."""
    mask = mask_m[:, None] & mask_n[None, :]
    if HAS_BIAS:
        bias = tl.load(b_ptr + k_out, mask=mask_n, other=0.0)
        acc += bias.to(acc.dtype)[None, :]
    if HAS_RESIDUAL:
        res = tl.load(res_ptr + res_rows[:, None] + k_out.to(tl.int64)[None, :] * srk, mask=mask, other=0.0)
        acc += res.to(acc.dtype)
    acc = apply_activation(acc, ACTIVATION, alpha)
    tl.store(y_ptr + y_rows[:, None] + k_out.to(tl.int64)[None, :] * syk, acc.to(y_ptr.dtype.element_ty), mask=mask)


class ForwardLaunch(NamedTuple):
    """What every forward launcher hands its kernel besides the problem's sizes (``prepare_forward``)."""

    out: torch.Tensor  # y (N, K, P, Q) in F.conv2d's layout, or the caller's preallocated output
    bias: torch.Tensor  # b_ptr: the bias, or any tensor when HAS_BIAS is False (never read)
    residual: torch.Tensor  # res_ptr: the residual, or any tensor when HAS_RESIDUAL is False
    res_strides: Tuple[int, int, int, int]  # the residual's strides, zeros without one
    epilogue: Dict  # the constexprs HAS_BIAS, HAS_RESIDUAL, ACTIVATION, ACC_DTYPE


def prepare_forward(x: torch.Tensor, w: torch.Tensor, bias: Optional[torch.Tensor],
                    residual: Optional[torch.Tensor], problem: Conv2dProblem, out: Optional[torch.Tensor],
                    activation: str) -> ForwardLaunch:
    """The prologue every forward family shares: device check, output allocation, epilogue arguments.

    Args:
        x, w, bias, residual: the forward's tensors (bias and residual may be None).
        problem: the validated problem.
        out: a preallocated output, or None to allocate one in F.conv2d's memory format.
        activation: the epilogue activation's name (``ACTIVATIONS``).

    Returns:
        A ``ForwardLaunch``; the caller returns ``.out`` untouched when it is empty.
    """
    check_device(x, w, bias, residual)
    if problem.K:
        check_pixel_count(problem.N * problem.P * problem.Q, "output (N*P*Q)")
    if out is None:
        out = alloc_output(problem.output_shape, x.dtype, x.device, output_memory_format(x, w))
    epilogue = dict(HAS_BIAS=bias is not None, HAS_RESIDUAL=residual is not None,
                    ACTIVATION=activation_code(activation), ACC_DTYPE=acc_dtype_for(x.dtype))
    return ForwardLaunch(
        out=out,
        bias=bias if bias is not None else w,
        residual=residual if residual is not None else x,
        res_strides=tuple(residual.stride()) if residual is not None else (0, 0, 0, 0),
        epilogue=epilogue,
    )


# The tap-TMA kernels' spatial boxes (fprop.py's forward, wgrad.py's weight gradient): a tile's
# span of pixels (BLOCK_M in the forward, a reduction step's BLOCK_K in wgrad) is a box of BOX_N
# images of BOX_H x BOX_W pixels. Its pixels are only rows of the GEMM operand (the channels in
# each are what TMA streams), so how the span splits into images, rows and columns costs nothing
# by itself; the split decides how many of its rows fall outside the output (zero-filled, yet
# computed). tap_tma_boxes picks the split per span for an output size, the kernels decode it.
TAP_TMA_SPANS = (16, 32, 64, 128, 256)  # the spans tap_tma_boxes encodes a box for
TAP_TMA_MAX_BOX_W = 8  # columns of a box at most (configs.SPATIAL_TILE_WIDTH)


def _padded(size: int, block: int) -> int:
    """``size`` items rounded up to whole blocks of ``block``."""
    return triton.cdiv(size, block) * block


@functools.lru_cache(maxsize=None)  # the launchers ask per call (a few hundred us of search, once per size)
def tap_tma_boxes(N: int, P: int, Q: int) -> int:
    """The tap-TMA kernels' BOXES for N images of P x Q output pixels: per span of
    TAP_TMA_SPANS, the box of BOX_N images of BOX_H x BOX_W pixels (powers of two, BOX_W at
    most TAP_TMA_MAX_BOX_W, product the span) with the largest share of its pixels inside the
    output; on a tie, fewer images (their rows share the taps' overlapping boxes in L2), then
    wider. Encoded 8 bits per span: log2 BOX_W, then log2 BOX_H in the upper 4 bits.
    ResNet-50 at N = 32, span 128: 56x56 -> 2 images of 8x8, 28x28 -> 8 of 4x4, 14x14 -> 32 of
    2x2, all inside; 7x7 -> 16 of 1x8, 1/8 outside (16x8 boxes of one image: 5/8)."""
    code = 0
    for i, bm in enumerate(TAP_TMA_SPANS):
        best = None
        for lw in range(0, TAP_TMA_MAX_BOX_W.bit_length()):
            for lh in range(0, (bm >> lw).bit_length()):
                bw, bh = 1 << lw, 1 << lh
                bn = bm // (bw * bh)
                # the output's share of the boxes' pixels is N*P*Q over the padded volume: the
                # smallest padded volume fills best (integers: a tie is a tie)
                rank = (-_padded(Q, bw) * _padded(P, bh) * _padded(N, bn), -bn, bw)
                if best is None or rank > best[0]:
                    best = (rank, lw, lh)
        code |= (best[1] | best[2] << 4) << (8 * i)
    return code


def tap_tma_box(span: int, block_w: int, boxes: int = 0):
    """(BOX_N, BOX_H, BOX_W): images, rows and columns of a tap-TMA kernel's box for a config's
    span and BLOCK_W and a ``tap_tma_boxes`` code. Without a code (0), for one-row tiles
    (BLOCK_W = span) and spans the code has no entry for: one image's span // BLOCK_W rows of
    BLOCK_W. The launchers' pre-hooks and grids call it, and the kernels too, as
    ``tap_tma_box_of``: hence no global in here (a constexpr function may read none), and
    TAP_TMA_SPANS's entries written as what they are, the powers of two from 16 to 256, the
    span 2**(i + 4) at entry i."""
    if boxes == 0 or block_w == span or span < 16 or span > 256 or (span & (span - 1)) != 0:
        return 1, span // block_w, block_w
    at = 8 * (span.bit_length() - 5)
    box_w, box_h = 1 << ((boxes >> at) & 15), 1 << ((boxes >> (at + 4)) & 15)
    return span // (box_w * box_h), box_h, box_w


# in a kernel: BOX: tl.constexpr = tap_tma_box_of(BLOCK_M, BLOCK_W, BOXES), then BOX[0] .. BOX[2]
tap_tma_box_of = triton.constexpr_function(tap_tma_box)
assert TAP_TMA_SPANS == tuple(16 << i for i in range(5)), "tap_tma_box decodes these spans by their bits"
