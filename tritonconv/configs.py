"""Autotune config spaces and their pruning, in one place.

Config lists are data. Each family of configs says where it comes from; the
pruning functions say what they remove and why. Under Triton's interpreter
exactly one config exists (the interpreter cannot time anything), chosen to
keep the number of interpreted programs small.
"""

from __future__ import annotations

import functools
import os
import warnings
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple

import torch
import triton

from .kernels._common import INTERPRETER

__all__ = [
    "GEMM_TILES",
    "SMALLC_TILES",
    "SMALLC_ROW_TILES",
    "SMALLC_WGRAD_TILES",
    "DEPTHWISE_TILES",
    "DEPTHWISE_WGRAD_TILES",
    "gemm_configs",
    "smallc_row_configs",
    "persistent_gemm_configs",
    "depthwise_configs",
    "patch_waste",
    "prune_gemm_configs",
    "pruned_because",
    "UNCAPPED_TILES",
    "SPILLING_TILES",
    "TileKey",
    "register_cap",
    "with_maxnreg",
    "gemm_prune_hook",
    "heavy_epilogue",
    "prune_direct_configs",
    "DirectPruneHook",
    "TUNE",
    "tuned",
    "WgradTapsPruneHook",
    "wgrad_pruned_because",
    "shared_bytes",
    "acc_per_thread",
    "max_shared_memory",
    "INTERPRETER_CONFIG",
    "capture_safe_bench",
    "config_name",
    "spatial_tile_configs",
    "SpatialTilePruneHook",
    "row_efficiency",
]

# (BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages)
#
# What each tile costs on sm_80 and sm_90 (registers, spills, shared memory,
# wgmma) is measured by ``python -m tritonconv.compile_report``; what shaped
# the list:
#   * wgmma needs a warpgroup (4 warps) and BLOCK_M >= 64, so there are no
#     2-warp or BLOCK_M = 32 tiles; the pruner clamps BLOCK_M for small M anyway;
#   * the accumulator takes BLOCK_M*BLOCK_N / (32*num_warps) registers per
#     thread. 128 of them fit beside wgmma, whose operands stay in shared
#     memory, but spill beside mma.sync's register operands (sm_80) or a fused
#     epilogue's residual tile, so the two 128-per-thread tiles run only on
#     sm_90 without a heavy epilogue (prune_gemm_configs), and 128x128 tiles
#     use 8 warps (64 per thread);
#   * the implicit GEMM gathers its operands through per-element 64-bit
#     addresses, which costs registers in proportion to the tile per thread:
#     fp32 (TF32) 128x64, 64x128 and 128x32 tiles spilled at 4 warps, hence 8.
GEMM_TILES: Tuple[Tuple[int, int, int, int, int], ...] = (
    # Large tiles for big layers; the first three are the Triton matmul
    # tutorial's fp16 choices, which also suit the implicit GEMM's long reduction.
    (128, 256, 64, 8, 3),
    (256, 128, 64, 8, 3),
    (128, 128, 64, 8, 3),
    (128, 128, 32, 8, 4),
    (128, 64, 64, 8, 4),
    (64, 128, 64, 8, 4),
    (128, 64, 32, 8, 4),
    (64, 64, 64, 4, 4),
    # Narrow N for layers with few output channels per group (stems, heads, grouped convs).
    (128, 32, 64, 8, 4),
    (64, 32, 32, 4, 5),
    (128, 16, 32, 4, 4),
    # Narrow K for layers with few input channels per group (grouped convs).
    (128, 64, 16, 4, 4),
    (64, 64, 16, 4, 4),
)

# The small-C family (smallc.py) flattens its R*S*C reduction and decomposes
# every (pixel, kk) element of the A tile, so the A tile's index tensors cost
# registers in proportion to BLOCK_M*BLOCK_K per thread: 128x128x64 and larger
# spill at 8 warps, and so did 32 A elements per thread (64x64x64 at 4 warps,
# 128x32x64 at 8: 168-576 B with Triton 3.6, 254 registers with 3.9), hence at
# most 16. The reduction is short (147 for the 7x7 RGB stem) and the output
# narrow (64 channels), so BLOCK_K <= 64 and BLOCK_N <= 64.
SMALLC_TILES: Tuple[Tuple[int, int, int, int, int], ...] = (
    (128, 64, 32, 8, 4),
    (128, 64, 16, 8, 4),
    (64, 64, 64, 8, 4),
    (64, 64, 32, 4, 4),
    (64, 64, 16, 4, 4),
    (128, 32, 32, 8, 4),
    (64, 32, 32, 4, 5),
)

# The small-C rows kernel (smallc.smallc_rows_kernel) takes one kernel row per reduction step, so
# its BLOCK_K is not a choice: the row's S*C_PITCH columns rounded up to a power of two
# (smallc.row_block_k: 32 for a 7x7 RGB stem, 16 for 3x3 and 4x4). Its A tile decodes no column
# in the loop (a step adds each pixel's row pointer to offsets set up once), so its index tensors
# are few and it can afford the wider tiles SMALLC_TILES avoids; the output is narrow (32-96
# channels on the stems), so BLOCK_N <= 128.
SMALLC_ROW_TILES: Tuple[Tuple[int, int, int, int], ...] = (
    (128, 64, 4, 4),
    (128, 64, 8, 4),
    (256, 64, 8, 3),
    (64, 64, 4, 4),
    (128, 32, 4, 4),
    (256, 32, 8, 4),
    (128, 128, 8, 3),
    (64, 32, 4, 5),
)


def smallc_row_configs(block_k: int, tiles: Sequence[Tuple[int, int, int, int]] = SMALLC_ROW_TILES, *,
                       interpreter: Optional[bool] = None) -> List[triton.Config]:
    """The rows kernel's configs for rows of ``block_k`` columns (the interpreter's single config
    with that BLOCK_K under the interpreter)."""
    return gemm_configs([(bm, bn, block_k, warps, stages) for bm, bn, warps, stages in tiles],
                        interpreter=interpreter, BLOCK_K=block_k)


# The small-C wgrad (smallc.py): M is K (64 for the stem), N the flattened taps (R*S*C_PITCH,
# 196 for a 7x7 RGB stem), so the tiles are wide in N and short in M; its reduction is split
# into many short chunks (smallc.choose_wgrad_split), so stages beyond 3 or 4 buy little.
SMALLC_WGRAD_TILES: Tuple[Tuple[int, int, int, int, int], ...] = (
    (64, 128, 32, 4, 4),
    (64, 128, 64, 4, 3),
    (64, 256, 32, 8, 3),
    (64, 64, 32, 4, 4),  # 64x64x64 w4 s4 spills in fp32 on sm_80 (the compile report)
    (128, 128, 32, 8, 3),
)

# The tap-TMA kernels (fprop.py, wgrad.py) take their pixels in spatial tiles of
# (span // BLOCK_W) output rows of BLOCK_W pixels, the span being BLOCK_M for the forward and
# BLOCK_K (a reduction step) for wgrad. 8-wide tiles fit any image, but Triton cannot fold
# the box's (rows, 8) -> span reshape into the shared-memory descriptor, so the wgmma's A goes
# through registers (compile-report: "A from regs"). One-row tiles (BLOCK_W = span) need no
# reshape and the wgmma reads A from shared memory as TMA wrote it, at the price of the
# pixels past each row's end; so they are candidates only where the output's rows fill
# ROW_MIN_EFFICIENCY of their tiles (SpatialTilePruneHook). These are big tiles of GEMM_TILES;
# wgrad's include BLOCK_K = 32 and 16, which suit rows of 28 and 14 pixels.
TAP_TMA_ROW_TILES: Tuple[Tuple[int, int, int, int, int], ...] = (
    # rows of 112 to 256 pixels and more (VGG-16's 224 and 112, decoders' large images: the
    # largest 3x3 layers, issue 6's 60 %-of-peak bar): GEMM_TILES' two largest, A from shared
    # memory and the wgmmas left in flight with Triton 3.6 as with 3.9, 154 to 189 registers and
    # 144 KiB of shared memory in 16-bit (compile report, sm_90; fp32's 288 KiB is pruned)
    (128, 256, 64, 8, 3),
    (256, 128, 64, 8, 3),
    (128, 128, 64, 8, 3),
    (128, 64, 64, 8, 4),
    (64, 128, 64, 8, 4),
    # rows of 56 pixels (ResNet's 56x56 stage) into 64 channels: the 8-wide tiles the H100 picked
    # there at 283a32b all ran synced on Triton 3.6 (WGMMA_RS_HAZARD); this one reads A from
    # shared memory, its wgmmas pipelined
    (64, 64, 64, 4, 4),
)
WGRAD_TAP_TMA_ROW_TILES: Tuple[Tuple[int, int, int, int, int], ...] = (
    # rows of 112 to 256 pixels and more (VGG-16's 224 and 112, decoders' large images: the
    # largest 3x3 layers, issue 6's 60 %-of-peak bar): GEMM_TILES' two largest, A from shared
    # memory and the wgmmas left in flight with Triton 3.6 as with 3.9, 154 to 189 registers and
    # 144 KiB of shared memory in 16-bit (compile report, sm_90; fp32's 288 KiB is pruned)
    (128, 256, 64, 8, 3),
    (256, 128, 64, 8, 3),
    (128, 128, 64, 8, 3),
    (128, 64, 64, 8, 4),
    (128, 128, 32, 8, 4),
    (128, 64, 32, 8, 4),
    (128, 64, 16, 4, 4),
)
SPATIAL_TILE_WIDTH = 8  # the tap-TMA kernels' default BLOCK_W
ROW_MIN_EFFICIENCY = 0.75

# The interpreter runs one numpy operation per Triton operation per program,
# so fewer, larger programs are much faster there; 16 keeps K-padding waste low
# for the small channel counts the tests use.
INTERPRETER_CONFIG = dict(BLOCK_M=64, BLOCK_N=32, BLOCK_K=16, GROUP_M=8)


def gemm_configs(tiles: Sequence[Tuple[int, int, int, int, int]] = GEMM_TILES, *, interpreter: Optional[bool] = None,
                 **extra) -> List[triton.Config]:
    """Configs for an implicit-GEMM kernel; ``extra`` adds fixed meta-parameters.

    ``interpreter`` (default: whether Triton's interpreter is on) gives the
    interpreter's single config; the compile report passes False to get the
    compiled list whatever the environment.
    """
    if INTERPRETER if interpreter is None else interpreter:
        return [triton.Config({**INTERPRETER_CONFIG, **extra}, num_warps=4, num_stages=1)]
    return [
        triton.Config(
            {"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": 8, **extra},
            num_warps=warps,
            num_stages=stages,
        )
        for bm, bn, bk, warps, stages in tiles
    ]


# The persistent grid (one program per SM, each looping over output tiles) is a
# candidate, not a rule: whether it beats one program per tile (launch and tail
# effects against lost latency hiding) depends on the layer, so the autotuner
# times it for the first (largest) tiles, where a wave of programs is fewest.
PERSISTENT_TILES = 4
# Stream-K (one program per SM, each taking an equal share of all (tile, reduction step)
# pairs; _common.stream_k_share) is timed for the large tiles whose waves quantise worst:
# 128x128 and its halves, in gemm1x1_tma's list and as tap_tma_streamk's own (8-wide spatial
# tiles). Each program may leave one partial tile in a scratch slot, so the tile area sets
# the scratch (64 KB of fp32 per SM at 128x128).
STREAM_K_TILES: Tuple[Tuple[int, int, int, int, int], ...] = (
    (128, 128, 64, 8, 3),
    (128, 128, 32, 8, 4),
    (128, 64, 64, 8, 4),
    (64, 128, 64, 8, 4),
)
# The largest BLOCK_K of any GEMM-like config (the interpreter's too): a split-K forward cuts its
# reduction into no more chunks than it has steps at this BLOCK_K (fprop.split_chunks).
MAX_BLOCK_K = max([t[2] for t in GEMM_TILES + TAP_TMA_ROW_TILES + STREAM_K_TILES]
                  + [INTERPRETER_CONFIG["BLOCK_K"]])

# A persistent loop can also be flattened (tl.range(..., flatten=True)): the software pipeliner
# then overlaps the next tile's first loads with this tile's epilogue, which matters where the
# reduction is a few steps long (1x1 layers with 64-256 input channels). It costs about one more
# pipeline stage of shared memory, which the pruner counts. Timed for two mid-size tiles (the
# largest ones are at 254 registers already).
FLATTEN_TILES: Tuple[Tuple[int, int, int, int, int], ...] = (
    (128, 128, 64, 8, 3),
    (128, 64, 64, 8, 4),
)

# TRITONCONV_STREAM_K=0 (read at import) leaves stream-K out: its configs out of gemm1x1_tma's
# autotune list, and the tap_tma_streamk family out of the router's candidates (it accepts
# nothing). The GPU check sets it for its sweeps if the stream-K smoke test fails or hangs on the card.
STREAM_K = os.environ.get("TRITONCONV_STREAM_K", "1") != "0"


def persistent_gemm_configs(tiles: Sequence[Tuple[int, int, int, int, int]] = GEMM_TILES, *,
                            interpreter: Optional[bool] = None, stream_k: bool = False, flatten: bool = False,
                            **extra) -> List[triton.Config]:
    """``gemm_configs`` with a PERSISTENT meta-parameter: every tile with one program per
    tile, and the first PERSISTENT_TILES also as a persistent grid. The interpreter's one
    config is persistent, so that tests walk the kernel's tile loop. With ``flatten``, every
    config also has a FLATTEN meta-parameter, true for persistent, flattened FLATTEN_TILES;
    with ``stream_k``, a STREAM_K one, true for STREAM_K_TILES,
    which come last (unless TRITONCONV_STREAM_K=0)."""
    if stream_k:
        extra = dict(extra, STREAM_K=False)
    if flatten:
        extra = dict(extra, FLATTEN=False)
    if INTERPRETER if interpreter is None else interpreter:
        return gemm_configs(tiles, interpreter=True, PERSISTENT=True, **extra)
    found = (gemm_configs(tiles, interpreter=False, PERSISTENT=False, **extra)
             + gemm_configs(tiles[:PERSISTENT_TILES], interpreter=False, PERSISTENT=True, **extra))
    if flatten:
        found += gemm_configs(FLATTEN_TILES, interpreter=False, **dict(extra, PERSISTENT=True, FLATTEN=True))
    if stream_k and STREAM_K:
        found += gemm_configs(STREAM_K_TILES, interpreter=False, **dict(extra, PERSISTENT=False, STREAM_K=True))
    return found


# The depthwise family's direct kernels (no tl.dot), as (BLOCK_M pixels,
# BLOCK_N channels, num_warps): channel-wide tiles, because in NHWC the channel
# axis is contiguous and each tap is then one vector load per pixel row. Each
# thread holds BLOCK_M*BLOCK_N / (32*num_warps) accumulator values, and the
# compiler keeps one kernel row of tap loads (S of them) in flight next to
# them: at 16 values per thread a 7x7 kernel builds without spilling in
# 16/32-bit, at 32 it spills, hence 8 warps for the 64x64 and 128x32 tiles.
# fp64 needs 8 values per thread: the 8x256 tile at 8 warps (prune_direct_configs).
# One tile, the last, holds 32 values a thread, in 16-bit only (the wgrad, whose loop unrolls no
# taps, takes it in every dtype: it builds without spilling in all four on sm_80 and sm_90): what
# a tile costs besides its taps (the pixel decode, the epilogue) and each tap's weights are then
# shared by twice the outputs. The
# forward's SASS (sm_90, fp16, the compile report's layers), instructions per output value, taps
# + the rest: 3x3, 64x32 w4 as a patch 9 x 4.25 + 15.75 = 54, 128x32 w4 as a patch 9 x 3.75 + 11.0
# = 44.75; 7x7, 49 x 4.11 + 17.75 = 219 and 49 x 3.52 + 11.09 = 184. It builds without spilling
# in fp16 and bf16 for 3x3 and 5x5 kernels on sm_80 and sm_90, flat and as a patch (136-232
# registers, forward and dgrad, Triton 3.9 and 3.6 on sm_90), and for 7x7 as a patch on sm_90
# (194); a 7x7 flat spills, and so does fp32 on sm_80. Hence up to DEPTHWISE_WIDE_MAX_S taps a
# row, or as a patch up to ``max_patch_taps``.
DEPTHWISE_TILES: Tuple[Tuple[int, int, int], ...] = (
    (32, 64, 4),
    (64, 32, 4),
    (16, 128, 4),
    (64, 64, 8),
    (128, 32, 8),
    (32, 128, 8),
    (8, 256, 4),
    (8, 256, 8),
    (128, 32, 4),
)
DEPTHWISE_STAGES = 2
# The depthwise wgrad (depthwise.depthwise_wgrad_kernel) keeps an accumulator tile per tap of its
# group, up to depthwise.WGRAD_MAX_TAPS (a 3x3's nine): tiles of at most 8 values a thread, where
# DEPTHWISE_TILES hold 16 to 32.
DEPTHWISE_WGRAD_TILES: Tuple[Tuple[int, int, int], ...] = (
    (16, 64, 4),
    (8, 128, 4),
    (32, 64, 8),
    (16, 128, 8),
    (8, 256, 8),
    # 4 values a thread, the tiles fp64 keeps (MAX_WGRAD_ACC_FP64)
    (16, 32, 4),
    (8, 64, 4),
    (16, 64, 8),
)
DEPTHWISE_WIDE_MAX_S = 5
# The forward and dgrad may also unroll the kernel rows (UNROLL_R), not only each row's taps:
# every tap's loads are then issued before the first multiply, R*S of them in flight a thread
# instead of S, and the weights and addresses of all taps are set up once (the 3x3 forward, as
# above: 64x32 w4 as a patch 50.5 instructions a value at 122 registers, 128x32 w4 41.0 at 190;
# the 3x3 dgrad at stride 1, 64x32 w4 as a patch: 800 instructions a tile against 842 looped, at
# 124 registers against 72). For kernels of at most DEPTHWISE_UNROLL_MAX_TAPS taps (a 7x7
# unrolled would hold 49 taps' loads), and for the dgrad at a row stride of 1 only: its stride
# phases take some rows each, each unrolled row then behind a branch, and nothing is hoisted.
# On sm_90 only: on sm_80 ptxas builds the dgrad's 64x32 patch in bf16 at 64 registers with 32 B
# spilled (Triton 3.9), and nothing says hoisting pays there.
# These tiles, flat and as patches, are candidates beside the looped ones, for the GPU to time.
DEPTHWISE_UNROLL_TILES: Tuple[Tuple[int, int, int], ...] = ((64, 32, 4), (128, 32, 4))
DEPTHWISE_UNROLL_MAX_TAPS = 9
# The forward and the stride-1 dgrad (its forward conv of dy, w flipped) may also reuse a patch's
# input rows across its output rows (REUSE_ROWS, depthwise._fprop_rows_reused): each input row's S
# shifts loaded and converted once and multiplied into every output row whose taps read it, an
# accumulator per output row. sm_90 SASS, 3x3 at stride 1, fp16, whole kernel, instructions an
# output value: forward 31.5 for 4x16 patches of 64 channels at 4 warps (172 registers), 33.5 for
# 8x16 at 8 warps and for 8x8; dgrad 29.8 and 31.5; where the best tile above takes 41.0 and the
# patch tiles 45 to 54. (An 8x16 patch of 64 channels at 4 warps, 64 values a thread, took 25.8
# at 252 registers and spilled in the bf16 dgrad.) Kernels of at most DEPTHWISE_UNROLL_MAX_TAPS
# taps (a 7x7's 49 weight vectors and loads spill kilobytes), 16-bit (32 values a thread and
# more: MAX_DIRECT_ACC), sm_90. A patch reads (rows - 1)*stride_h + (R - 1)*dil_h + 1 input rows;
# past DEPTHWISE_REUSE_MAX_ROWS (an 8-row patch's 17 at stride 2, where that 4-warp 8x16 tile
# spilled 72 bytes) the reuse is not timed: such a patch holds more rows' loads than it saves.
# (BLOCK_M, BLOCK_N, warps, TILE_W): patches of BLOCK_M // TILE_W rows by TILE_W columns.
DEPTHWISE_REUSE_MAX_ROWS = 10
DEPTHWISE_REUSE_TILES: Tuple[Tuple[int, int, int, int], ...] = (
    (64, 64, 4, 16),
    (128, 64, 8, 16),
    (64, 128, 8, 16),
    (64, 64, 4, 8),
)
# The forward and dgrad also take each tile of 32 pixels or more as a patch, TILE_W pixels wide
# (depthwise.pixel_tile): the taps re-read fewer pixels (the halo's) than with a flat tile that
# spans part of one row, but a patch pads an image whose sides it does not divide.
# (8 wide as the tap-TMA kernels' spatial tiles are, BLOCK_W. The tiles of 8 and 16 pixels are
# the channel-wide ones, 8x256 and 16x128: as patches they would be one or two rows of 8, close to
# a run's shape, and not worth a config each.)
DEPTHWISE_PATCH_WIDTH = 8
DEPTHWISE_PATCH_MIN_PIXELS = 32
# Patches are for kernels of up to 5 taps a row, and of 7 (ConvNeXt's 7x7) on sm_90 in 16-bit.
# With 7 taps, ptxas builds a patch at 139-148 registers without spilling on sm_90 in fp16 and
# bf16 (Triton 3.6 and 3.9), but below sm_90 (Triton 3.9) it holds most at 80 registers with 16 B
# spilled, and a register limit does not help: at 120 or 128, 8-104 B spill, at 255 it takes 159
# (the compile report; the flat tiles build at 111-187 without spilling). In fp32 on sm_90, Triton
# 3.9 spills 8 B in one. Past 7 taps a row no patch was built.
DEPTHWISE_PATCH_MAX_S = 5
DEPTHWISE_PATCH_MAX_S_SM90_16BIT = 7
# Under the interpreter: a narrow channel block, since the tests' depthwise layers have few channels.
DEPTHWISE_INTERPRETER_CONFIG = dict(BLOCK_M=32, BLOCK_N=16)


def depthwise_configs(tiles: Sequence[Tuple[int, int, int]] = DEPTHWISE_TILES, *,
                      interpreter: Optional[bool] = None, patches: bool = False, unrolled: bool = False,
                      reuse: bool = False, **extra) -> List[triton.Config]:
    """Configs for the depthwise direct kernels; ``extra`` adds fixed meta-parameters. With
    ``patches`` (the kernels with a TILE_W), each tile flat (TILE_W = 0) and, from
    DEPTHWISE_PATCH_MIN_PIXELS up, as a patch DEPTHWISE_PATCH_WIDTH wide as well. With
    ``unrolled`` (the forward and dgrad, which have UNROLL_R), those with the kernel rows looped,
    then DEPTHWISE_UNROLL_TILES with them unrolled, flat and as patches. With ``reuse`` (REUSE_ROWS,
    the forward and the stride-1 dgrad), DEPTHWISE_REUSE_TILES after them."""
    if unrolled and not patches:
        raise ValueError("the unrolled tiles are the forward's and dgrad's, whose kernels take patches: "
                         "pass patches=True too")
    if reuse and not unrolled:
        raise ValueError("the row-reusing tiles are the forward's and dgrad's, whose kernels unroll rows: "
                         "pass unrolled=True too")
    if unrolled:
        extra = dict(extra, UNROLL_R=False)
    if reuse:
        extra = dict(extra, REUSE_ROWS=False)
    if INTERPRETER if interpreter is None else interpreter:
        flat = dict(TILE_W=0) if patches else {}
        return [triton.Config({**DEPTHWISE_INTERPRETER_CONFIG, **flat, **extra}, num_warps=4, num_stages=1)]

    def listed(m, c, w, **tile_w):
        return triton.Config({"BLOCK_M": m, "BLOCK_N": c, **tile_w, **extra}, num_warps=w,
                             num_stages=DEPTHWISE_STAGES)

    if not patches:
        return [listed(*tile) for tile in tiles]
    # the flat tiles first: TRITONCONV_TUNE=0 takes the first of the smallest
    found = ([listed(*tile, TILE_W=0) for tile in tiles]
             + [listed(*tile, TILE_W=DEPTHWISE_PATCH_WIDTH) for tile in tiles if tile[0] >= DEPTHWISE_PATCH_MIN_PIXELS])
    if unrolled:
        found += [triton.Config({**c.kwargs, "UNROLL_R": True}, num_warps=c.num_warps, num_stages=c.num_stages)
                  for c in depthwise_configs(DEPTHWISE_UNROLL_TILES, interpreter=False, patches=True, **extra)]
    if reuse:
        found += [triton.Config({"BLOCK_M": m, "BLOCK_N": c, "TILE_W": tw, **extra, "REUSE_ROWS": True},
                                num_warps=w, num_stages=DEPTHWISE_STAGES) for m, c, w, tw in DEPTHWISE_REUSE_TILES]
    return found


def pixel_tiles(images: int, height: int, width: int, block_m: int, tile_w: int) -> int:
    """How many pixel tiles of BLOCK_M pixels ``depthwise.pixel_tile`` cuts ``images`` height x
    width images into: flat runs (TILE_W = 0), or patches of block_m // tile_w rows by tile_w."""
    if tile_w == 0:
        return triton.cdiv(images * height * width, block_m)
    return images * triton.cdiv(height, block_m // tile_w) * triton.cdiv(width, tile_w)


def patch_waste(block_m: int, tile_w: int, height: int, width: int) -> float:
    """The fraction of a depthwise launch's pixel slots that fall outside a height x width image
    (``depthwise.pixel_tile``): 0 for a flat tile (TILE_W = 0), whose only padding is the last tile's."""
    if tile_w == 0 or height * width == 0:
        return 0.0
    return 1 - height * width / (pixel_tiles(1, height, width, block_m, tile_w) * block_m)


# A patch that pads the image by more than this is dropped: a flat tile of the same size does the
# same work with almost none (14 x 14 in 8 x 8 patches: 23 % of the slots padding). For the
# dgrad the image is a stride phase of dx, cdiv(H, stride_h) x cdiv(W, stride_w): the rows and
# columns some phases lack at an odd H or W are not counted.
MAX_PATCH_WASTE = 0.125


@functools.lru_cache(maxsize=None)
def max_shared_memory(device_index: int) -> int:
    """Bytes of shared memory a block may use on this CUDA device."""
    try:
        from triton.runtime import driver

        return int(driver.active.utils.get_device_properties(device_index)["max_shared_mem"])
    except Exception:  # pragma: no cover - depends on the driver present
        return 99 * 1024  # the smallest of sm_80 / sm_86 / sm_89 / sm_90


def _pow2_at_least(n: int, floor: int = 16) -> int:
    return max(floor, triton.next_power_of_2(max(int(n), 1)))


def shared_bytes(bm: int, bn: int, bk: int, stages: int, elem_bytes: int, capability: Optional[int] = None) -> int:
    """Shared memory a pipelined GEMM tile loop needs: one A and one B tile per buffer.

    Triton's mma.sync pipeline (below sm_90, and fp64 everywhere) keeps
    num_stages - 1 buffers in shared memory: the compile report reads e.g.
    98304 B, not 147456 B, for fp16 128x256x64 with 3 stages on sm_80. The
    wgmma pipeline (sm_90, 16/32-bit) keeps num_stages. Without a capability
    the larger figure is returned. Not counted: the epilogue's layout-conversion
    scratch, which reuses these buffers and exceeds them only for BLOCK_K = 16
    tiles (by at most 8 KiB in the report), and TMA's barriers (8 B each).
    """
    wgmma_pipeline = capability is None or (capability >= 90 and elem_bytes <= 4)
    buffers = max(stages, 1) if wgmma_pipeline else max(stages - 1, 1)
    return (bm * bk + bk * bn) * elem_bytes * buffers


# (major, minor) of the Triton in use: some rules below hold for the versions measured (3.6 on the
# GPU machine, 3.9 in CI) and are assumed for those between
TRITON_VERSION = tuple(int(v) for v in triton.__version__.split(".")[:2] if v.isdigit())


def acc_per_thread(bm: int, bn: int, num_warps: int) -> int:
    """Accumulator values each thread holds: the tile spread over 32 * num_warps threads."""
    return bm * bn // (32 * num_warps)


# Accumulator values per thread beyond which a tile spills (compile report, sm_80 and sm_90):
# with a fused epilogue (the residual tile is live next to the accumulator) 128 spills, 64 does not;
MAX_ACC_HEAVY_EPILOGUE = 64
# below sm_90 mma.sync holds its A and B fragments in registers too: next to an implicit GEMM's gather
# addressing, 128 sit at 255 registers and spill in dgrad, wgrad and split-K fprop (a plain GEMM, the
# 1x1 family, has room with Triton 3.9: 238-251 registers; with Triton 3.6 and its ptxas, its 128x256
# and 256x128 16-bit tiles sit at 255 and spill 20-56 B, so before 3.9, 3.7 and 3.8 unmeasured, the
# plain GEMMs take the same limit);
MAX_ACC_MMA_SYNC = 64
PLAIN_GEMM_ACC_LIMITED = TRITON_VERSION < (3, 9)
# fp64 takes two registers per value, and 32 values per thread already spill with 64-deep K tiles.
MAX_ACC_FP64 = 16
# wgrad gathers both operands per element (dy and x along the pixel axis), so the x tile's BLOCK_K x
# BLOCK_N int64 addresses sit beside the accumulator: fp16 128x256x64 at 8 warps spills 64 B on sm_90,
# 256x128x64 does not (the compile report). Its hook passes this as max_block_n.
MAX_BLOCK_N_BOTH_GATHERED = 128
# The TMA wgrad (wgrad_tap_tma) feeds wgmma dy's box transposed: its 256x128x64 tile spilled
# 536 B on sm_90, 128x256x64 did not (compile report). Its hook passes this as max_block_m.
MAX_BLOCK_M_TRANSPOSED_A = 128


# Below sm_90, ptxas holds some tiles to fewer registers than one CTA per SM would have, so that
# another CTA fits beside it, and spills doing so: with Triton 3.9 and its ptxas 12.9 for sm_80,
# 13 of the 948 configs the compile report builds spilled 8-48 B at 128 registers (80 for a 4-warp
# 1x1 tile), in fprop_kernel, wgrad_kernel and gemm1x1_fprop_kernel. Allowed UNCAPPED_MAXNREG
# (PTX .maxnreg) they take 97-156 and spill nothing; their neighbours at 128 spill nothing as they
# are. So each of those kernels' prune hooks lists its spilling tiles as ``uncapped``, (BLOCK_M,
# BLOCK_N, BLOCK_K, warps, stages, element bytes) each, and launches them with that limit below
# sm_90 only: sm_90's builds are left as they were timed. A listed tile takes the limit whatever
# its epilogue or split (fprop's fp32 128x64x32 spilled with the fused epilogue only; without it
# the limit takes it from 128 registers to 152). Whether one CTA without a spill beats two with
# one on an A100 is not measured (no A100 here); the report's standard is no spill. The lists
# come from Triton 3.9's ptxas and serve every Triton. With Triton 3.6's, sm_80 has three spilling
# configs left, all fp32, whatever the limit: SPILLING_TILES drops them there.
UNCAPPED_MAXNREG = 255


class TileKey(NamedTuple):
    """A tile (BLOCK_M, BLOCK_N, BLOCK_K, warps, stages) for one element size, as the rules below
    sm_90 list them (UNCAPPED_TILES, SPILLING_TILES)."""

    block_m: int
    block_n: int
    block_k: int
    num_warps: int
    num_stages: int
    elem_bytes: int


# by kernel: each one's prune hook takes its list as ``uncapped``
UNCAPPED_TILES: Dict[str, Tuple[TileKey, ...]] = {
    # fp32 128x64x32 with a fused epilogue, fp32 128x32x64 storing split-K partials
    "fprop_kernel": (TileKey(128, 64, 32, 8, 4, 4), TileKey(128, 32, 64, 8, 4, 4)),
    "wgrad_kernel": (TileKey(64, 128, 64, 8, 4, 2), TileKey(128, 32, 64, 8, 4, 4)),
    # the 4-warp tile with a fused epilogue; the 8-warp ones as dgrad's (the weight read transposed)
    "gemm1x1_fprop_kernel": (TileKey(64, 64, 16, 4, 4, 2), TileKey(128, 64, 64, 8, 4, 2),
                             TileKey(128, 32, 64, 8, 4, 4)),
}
# by kernel: tiles that spill below sm_90 whatever their register limit, dropped there. Before
# Triton 3.9 (compile report, sm_80, Triton 3.6.0 and its ptxas; 3.9 builds all three clean):
# fp32 64x64x64 w4 s4 in wgrad_kernel (168 registers, 48 B, as wgrad and as wgrad_splitk;
# 40-48 B at every limit), fp32 128x64x32 w8 s4 in smallc_fprop_kernel (128 registers, 16 B
# with a fused epilogue; without one it builds clean, dropped all the same).
SPILLING_TILES: Dict[str, Tuple[TileKey, ...]] = {
    "wgrad_kernel": (TileKey(64, 64, 64, 4, 4, 4),),
    "smallc_fprop_kernel": (TileKey(128, 64, 32, 8, 4, 4),),
} if TRITON_VERSION < (3, 9) else {}


def pruned_because(bm: int, bn: int, bk: int, num_warps: int, num_stages: int, elem_bytes: int, shared_limit: int,
                   capability: Optional[int] = None, heavy_epilogue: bool = False, gathered: bool = True,
                   gemm_m: Optional[int] = None, max_block_n: Optional[int] = None,
                   max_block_m: Optional[int] = None, spilling: Tuple[TileKey, ...] = ()) -> Optional[str]:
    """Why ``prune_gemm_configs`` drops a tile (already clamped to the problem), or None when it keeps it.

    The arguments are those of ``prune_gemm_configs``; ``gemm_m`` None means
    a problem large in M.
    """
    shared = shared_bytes(bm, bn, bk, num_stages, elem_bytes, capability)
    if shared > shared_limit:
        return f"estimated shared {shared} > {shared_limit}"
    if max_block_n is not None and bn > max_block_n:
        return f"BLOCK_N {bn} > {max_block_n}: a gathered B tile's addresses spill beside the accumulator"
    if max_block_m is not None and bm > max_block_m:
        return f"BLOCK_M {bm} > {max_block_m}: the transposed A tile spills beside the accumulator"
    if capability is not None and capability < 90 and TileKey(bm, bn, bk, num_warps, num_stages, elem_bytes) in spilling:
        return f"spills below sm_90 with Triton {triton.__version__} whatever its register limit (SPILLING_TILES)"
    acc = acc_per_thread(bm, bn, num_warps)
    if elem_bytes >= 8 and acc > MAX_ACC_FP64:
        return f"fp64 accumulator {acc} values/thread > {MAX_ACC_FP64}"
    if heavy_epilogue and acc > MAX_ACC_HEAVY_EPILOGUE:
        return f"accumulator {acc} values/thread > {MAX_ACC_HEAVY_EPILOGUE} with a residual or activation epilogue"
    if ((gathered or PLAIN_GEMM_ACC_LIMITED) and capability is not None and capability < 90
            and acc > MAX_ACC_MMA_SYNC):
        return (f"accumulator {acc} values/thread > {MAX_ACC_MMA_SYNC} below sm_90 (mma.sync"
                + ("" if gathered else f"; a plain GEMM's on Triton {triton.__version__}") + ")")
    wgmma_only = elem_bytes == 2 and capability is not None and capability >= 90 and (gemm_m is None or gemm_m >= 64)
    if wgmma_only and (bm < 64 or num_warps < 4):
        return "no wgmma (needs BLOCK_M >= 64 and 4 warps) for a 16-bit type on sm_90+"
    return None


def prune_gemm_configs(
    configs: List[triton.Config],
    gemm_m: int,
    gemm_n: int,
    gemm_k: int,
    elem_bytes: int,
    shared_limit: int,
    capability: Optional[int] = None,
    heavy_epilogue: bool = False,
    gathered: bool = True,
    max_block_n: Optional[int] = None,
    max_block_m: Optional[int] = None,
    uncapped: Tuple[TileKey, ...] = (),
    fixed_block_k: Optional[int] = None,
    spilling: Tuple[TileKey, ...] = (),
) -> List[triton.Config]:
    """Drop configs that cannot pay off for a (gemm_m, gemm_n, gemm_k) problem.

    Args:
        configs: the autotune configs (BLOCK_M, BLOCK_N, BLOCK_K in kwargs).
        gemm_m, gemm_n, gemm_k: the GEMM's sizes for this launch.
        elem_bytes: the operands' element size (2, 4 or 8).
        shared_limit: bytes of shared memory a block may use on the device.
        capability: the device's compute capability as an int (80, 90, ...);
            None (no GPU) applies no arch-specific rule.
        heavy_epilogue: whether the accumulator is followed by a residual add
            or an activation (HAS_RESIDUAL or ACTIVATION != 0).
        gathered: whether the kernel gathers its operands through per-element
            addresses (the implicit GEMMs); False for a plain GEMM (gemm1x1).
        max_block_n: the widest BLOCK_N kept, for a kernel whose B operand is
            gathered per element too (wgrad: MAX_BLOCK_N_BOTH_GATHERED).
        max_block_m: the tallest BLOCK_M kept (wgrad_tap_tma: MAX_BLOCK_M_TRANSPOSED_A).
        uncapped: tiles launched with maxnreg = UNCAPPED_MAXNREG below sm_90
            (``register_cap``; ``UNCAPPED_TILES``).
        fixed_block_k: for a kernel whose BLOCK_K the problem sets (smallc_rows: one kernel
            row a step), that BLOCK_K, kept as it is: neither clamped nor replaced by the
            fallback tile's.
        spilling: tiles dropped below sm_90 (``SPILLING_TILES``).

    Removes, in order of reasoning:
      * tiles wider than the problem in M, N or K (beyond the next power of two,
        and at least 16 for tl.dot): they only compute masked-out zeros, so
        they are clamped to the problem and the duplicates this makes dropped;
      * below sm_90, the kernel's ``spilling`` tiles;
      * configs whose pipelined tiles exceed the device's shared memory
        (``shared_bytes``, which counts the buffers Triton allocates on that arch);
      * tiles wider than ``max_block_n`` or taller than ``max_block_m``, when given;
      * for fp64 (8-byte elements), tiles with more than MAX_ACC_FP64
        accumulator values per thread, which spill;
      * with a heavy epilogue, tiles with more than MAX_ACC_HEAVY_EPILOGUE
        accumulator values per thread, which spill once the residual is live;
      * below sm_90, for a gathering kernel (for any before Triton 3.9:
        PLAIN_GEMM_ACC_LIMITED), tiles with more than MAX_ACC_MMA_SYNC
        accumulator values per thread, which spill beside mma.sync's register
        operands and the gather's addresses;
      * for 16-bit dtypes on sm_90+, tiles that cannot use wgmma (BLOCK_M < 64
        or fewer than 4 warps), unless the problem's M is below 64 so that
        clamping makes a small BLOCK_M unavoidable.
    ``pruned_because`` says which rule drops a tile. If nothing survives, a
    small 64x32x16 tile (clamped to the problem) is kept so that every problem
    still runs. Each kept config keeps its pre_hook (the TMA family sets its
    descriptors' block shapes there).
    """
    if len(configs) <= 1:
        return configs
    m_cap, n_cap, k_cap = _pow2_at_least(gemm_m), _pow2_at_least(gemm_n), _pow2_at_least(gemm_k)
    kept = []
    seen = set()
    for cfg in configs:
        # clamp tile sizes to the problem, then drop duplicates the clamping creates
        bm = min(cfg.kwargs["BLOCK_M"], m_cap)
        bn = min(cfg.kwargs["BLOCK_N"], n_cap)
        bk = fixed_block_k or min(cfg.kwargs["BLOCK_K"], k_cap)
        sig = (bm, bn, bk, cfg.num_warps, cfg.num_stages)
        # other meta-parameters (e.g. PERSISTENT) make a different kernel of the same tile
        variant = tuple(sorted((k, v) for k, v in cfg.kwargs.items() if k not in ("BLOCK_M", "BLOCK_N", "BLOCK_K")))
        # a flattened persistent loop holds about one more stage in shared memory (FLATTEN_TILES)
        stages = cfg.num_stages + (1 if cfg.kwargs.get("FLATTEN") else 0)
        if (sig, variant) in seen or pruned_because(bm, bn, bk, cfg.num_warps, stages, elem_bytes, shared_limit,
                                                     capability, heavy_epilogue, gathered, gemm_m, max_block_n,
                                                     max_block_m, spilling):
            continue
        seen.add((sig, variant))
        kwargs = dict(cfg.kwargs, BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk)
        kept.append(triton.Config(kwargs, num_warps=cfg.num_warps, num_stages=cfg.num_stages, pre_hook=cfg.pre_hook,
                                  maxnreg=register_cap(sig, elem_bytes, capability, uncapped)))
    if not kept:
        first = configs[0]
        kwargs = dict(first.kwargs, BLOCK_M=min(64, m_cap), BLOCK_N=min(32, n_cap), BLOCK_K=fixed_block_k or 16)
        kept = [triton.Config(kwargs, num_warps=4, num_stages=2, pre_hook=first.pre_hook)]
    return kept


def register_cap(tile: Tuple[int, int, int, int, int], elem_bytes: int, capability: Optional[int],
                 uncapped: Tuple[TileKey, ...]) -> Optional[int]:
    """The maxnreg a tile (BLOCK_M, BLOCK_N, BLOCK_K, warps, stages) launches with: UNCAPPED_MAXNREG
    below sm_90 where the kernel lists it as ``uncapped`` for this element size, else None (ptxas
    chooses)."""
    if capability is not None and capability < 90 and TileKey(*tile, elem_bytes) in uncapped:
        return UNCAPPED_MAXNREG
    return None


def with_maxnreg(cfg: triton.Config, maxnreg: Optional[int]) -> triton.Config:
    """``cfg`` with that register limit (None: ptxas chooses), everything else kept."""
    return triton.Config(dict(cfg.kwargs), num_warps=cfg.num_warps, num_stages=cfg.num_stages,
                         num_ctas=getattr(cfg, "num_ctas", 1), maxnreg=maxnreg, pre_hook=cfg.pre_hook)


# fp64 tap loads and accumulators take two registers per value: at 16 values per thread a 7x7
# depthwise kernel spills (compile report), at 8 it does not.
MAX_DIRECT_ACC_FP64 = 8
# ... and past this many in 32-bit, or in 16-bit for kernels of more than DEPTHWISE_WIDE_MAX_S taps a
# row (more than max_patch_taps as a patch)
MAX_DIRECT_ACC = 16
# Triton before 3.9 (3.6, the GPU machine's) builds two kinds of the depthwise forward's looped
# tiles with spills below sm_90 in fp16 (compile report, sm_80, Triton 3.6.0 and its ptxas): the
# patches of a strided forward, at 80 registers with 8 B spilled (as bf16's everywhere:
# ``strided_bf16``), and at stride 1 the flat tile of 32 values a thread (128x32 at 4 warps: 168
# registers, 8 B). Triton 3.9 builds both without spilling on sm_80, and 3.6 on sm_90.
FP16_FORWARD_SPILLS = TRITON_VERSION < (3, 9)


def max_patch_taps(elem_bytes: int, capability: Optional[int]) -> int:
    """The most taps a row a depthwise kernel may unroll over a patch tile (DEPTHWISE_PATCH_MAX_S);
    without a capability (the interpreter) as on sm_90. Measured on sm_80 and sm_90 only: newer
    GPUs are taken for sm_90."""
    sm90 = capability is None or capability >= 90
    return DEPTHWISE_PATCH_MAX_S_SM90_16BIT if sm90 and elem_bytes == 2 else DEPTHWISE_PATCH_MAX_S


def direct_pruned_because(bm: int, bn: int, num_warps: int, elem_bytes: int, tile_w: int = 0,
                          taps_per_row: int = 1, capability: Optional[int] = None, unrolled: bool = False,
                          taps: int = 1, rows_skipped: bool = False, reuse: bool = False,
                          row_step: Tuple[int, int] = (1, 1), reuse_ok: bool = True,
                          strided_bf16: bool = False, fp16_below_sm90: bool = False) -> Optional[str]:
    """Why ``prune_direct_configs`` drops a depthwise tile, or None when it keeps it. ``row_step``:
    the conv's (stride_h, dil_h), which set the input rows a REUSE_ROWS patch reads; ``reuse_ok``:
    whether the kernel reuses rows for the launch at all (the dgrad: at stride 1, one channel a
    group; elsewhere its REUSE_ROWS tiles are patches like the others, and not timed twice);
    ``strided_bf16``: a bf16 forward at a row stride above 1; ``fp16_below_sm90``: an fp16
    forward below sm_90 on a Triton that spills its looped tiles there (FP16_FORWARD_SPILLS)."""
    acc = acc_per_thread(bm, bn, num_warps)
    looped = not unrolled and not reuse
    if strided_bf16 and tile_w and looped:
        # ptxas settles these at 80 registers and spills 16 bytes (sm_90, Triton 3.9; fp16 does not)
        return "a looped patch in a strided bf16 forward (spills at ptxas's 80 registers)"
    if fp16_below_sm90 and looped and row_step[0] > 1 and tile_w:
        return (f"Triton {triton.__version__} below sm_90: a looped patch in a strided fp16 forward "
                "(spills at ptxas's 80 registers)")
    if fp16_below_sm90 and looped and row_step[0] == 1 and not tile_w and acc > MAX_DIRECT_ACC:
        return (f"Triton {triton.__version__} below sm_90: a looped flat tile of {acc} values/thread "
                f"> {MAX_DIRECT_ACC} in a stride-1 fp16 forward (spills)")
    if reuse:
        if not reuse_ok:
            return "input rows reused: the dgrad's at stride 1 with one channel a group only"
        if taps > DEPTHWISE_UNROLL_MAX_TAPS:
            return f"input rows reused with {taps} taps > {DEPTHWISE_UNROLL_MAX_TAPS} (their weights and loads spill)"
        rows = (bm // tile_w - 1) * row_step[0] + (taps // taps_per_row - 1) * row_step[1] + 1
        if rows > DEPTHWISE_REUSE_MAX_ROWS:
            return f"input rows reused: {rows} input rows > {DEPTHWISE_REUSE_MAX_ROWS}"
        if capability is not None and capability < 90:
            return "input rows reused: sm_90 and newer only (not timed below)"
    if elem_bytes >= 8 and acc > MAX_DIRECT_ACC_FP64:
        return f"fp64 accumulator {acc} values/thread > {MAX_DIRECT_ACC_FP64}"
    wide_taps = max_patch_taps(elem_bytes, capability) if tile_w else DEPTHWISE_WIDE_MAX_S
    if acc > MAX_DIRECT_ACC and (elem_bytes != 2 or taps_per_row > wide_taps):
        return (f"accumulator {acc} values/thread > {MAX_DIRECT_ACC} with {elem_bytes}-byte elements and "
                f"{taps_per_row} taps a row (only 16-bit, up to {wide_taps})")
    if tile_w and taps_per_row > max_patch_taps(elem_bytes, capability):
        return f"a patch with {taps_per_row} taps a row > {max_patch_taps(elem_bytes, capability)}"
    if unrolled and taps > DEPTHWISE_UNROLL_MAX_TAPS:
        return f"kernel rows unrolled with {taps} taps > {DEPTHWISE_UNROLL_MAX_TAPS}"
    if unrolled and rows_skipped:
        return "kernel rows unrolled where a stride phase skips some (a branch each: no load is hoisted)"
    if unrolled and capability is not None and capability < 90:
        return "kernel rows unrolled: sm_90 and newer only (not timed below; a dgrad tile spills on sm_80)"
    return None


def prune_direct_configs(configs: List[triton.Config], elem_bytes: int, taps_per_row: int = 1,
                         capability: Optional[int] = None, taps: Optional[int] = None,
                         rows_skipped: bool = False, row_step: Tuple[int, int] = (1, 1),
                         reuse_ok: bool = True, strided_bf16: bool = False,
                         fp16_below_sm90: bool = False) -> List[triton.Config]:
    """Drop the depthwise direct kernels' tiles that spill: for fp64, more than
    MAX_DIRECT_ACC_FP64 accumulator values per thread; more than MAX_DIRECT_ACC but in 16-bit for
    kernels of at most DEPTHWISE_WIDE_MAX_S taps a row (``max_patch_taps`` as a patch); patches (TILE_W) for kernels of more taps
    a row (``taps_per_row``, the S the kernel unrolls) than ``max_patch_taps``; the forward's and
    dgrad's unrolled kernel rows (UNROLL_R) for kernels of more than DEPTHWISE_UNROLL_MAX_TAPS
    ``taps`` (R*S; S without it), where ``rows_skipped`` (a dgrad at a row stride above 1, whose
    stride phases take some kernel rows each), and below sm_90; the REUSE_ROWS tiles where the
    kernel would not reuse rows (``reuse_ok``), for kernels of more than DEPTHWISE_UNROLL_MAX_TAPS
    taps, patches reading more than DEPTHWISE_REUSE_MAX_ROWS input rows (``row_step``), and below
    sm_90; looped patches in a strided bf16 forward (``strided_bf16``), and with
    ``fp16_below_sm90`` (FP16_FORWARD_SPILLS) in a strided fp16 one, with the looped flat tiles of
    more than MAX_DIRECT_ACC values a thread at stride 1. Keeps the first config if none survives."""
    if len(configs) <= 1:
        return configs
    taps = taps_per_row if taps is None else taps
    kept = [c for c in configs
            if not direct_pruned_because(c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.num_warps, elem_bytes,
                                         c.kwargs.get("TILE_W", 0), taps_per_row, capability,
                                         c.kwargs.get("UNROLL_R", False), taps, rows_skipped,
                                         c.kwargs.get("REUSE_ROWS", False), row_step, reuse_ok, strided_bf16,
                                         fp16_below_sm90)]
    return kept or configs[:1]


def elem_bytes_of(t: torch.Tensor) -> int:
    return t.element_size()


def heavy_epilogue(launch_args: Dict) -> bool:
    """Whether a launch's epilogue keeps more than the accumulator live: a residual or an activation.

    Reads the kernels' constexpr launch kwargs; a split-K partial (PARTIAL)
    stores the raw accumulator whatever the epilogue flags say.
    """
    if launch_args.get("PARTIAL", False):
        return False
    return bool(launch_args.get("HAS_RESIDUAL", False)) or int(launch_args.get("ACTIVATION", 0) or 0) != 0


def device_capability(t: torch.Tensor) -> Optional[int]:
    """The compute capability of a CUDA tensor's device as an int (90 for sm_90); None off CUDA."""
    if not t.is_cuda:
        return None
    major, minor = torch.cuda.get_device_capability(t.device)
    return 10 * major + minor


# Tests check results, not speed: with TRITONCONV_TUNE=0 (tests/conftest.py sets it) every
# prune hook keeps a single config, the smallest tile that survives the rules above, so a
# CUDA test compiles one kernel per shape instead of autotuning a dozen (Triton 3.6 still
# times that one config once; 3.9 does not), the router runs the most specialised family
# without timing the others, and nothing goes to the tuning cache. Read at import; the
# interpreter has one config per kernel anyway. The sweeps and `tritonconv tune` tune.
TUNE = os.environ.get("TRITONCONV_TUNE", "1") != "0"


def _tile_volume(cfg: triton.Config) -> int:
    return cfg.kwargs["BLOCK_M"] * cfg.kwargs["BLOCK_N"] * cfg.kwargs.get("BLOCK_K", 1)


def tuned(kept: List[triton.Config]) -> List[triton.Config]:
    """``kept`` for the autotuner to time; with TRITONCONV_TUNE=0, its smallest tile alone."""
    return kept if TUNE or len(kept) <= 1 else [min(kept, key=_tile_volume)]


# The depthwise wgrad keeps an accumulator tile per tap of its group (depthwise.wgrad_taps, up to
# 9): in fp64, two registers a value and a tap's loads as wide, 9 taps of 8 values a thread spill
# (compile report, sm_80 and sm_90, Triton 3.6 and 3.9) and of 4 do not.
MAX_WGRAD_ACC_FP64 = 36


def wgrad_pruned_because(bm: int, bn: int, num_warps: int, elem_bytes: int, taps: int) -> Optional[str]:
    """Why ``WgradTapsPruneHook`` drops a depthwise wgrad tile summing ``taps`` taps, or None."""
    acc = acc_per_thread(bm, bn, num_warps) * taps
    if elem_bytes >= 8 and acc > MAX_WGRAD_ACC_FP64:
        return f"fp64 accumulators {acc} values/thread ({taps} taps) > {MAX_WGRAD_ACC_FP64}"
    return None


class WgradTapsPruneHook:
    """An ``early_config_prune`` for the depthwise wgrad: ``wgrad_pruned_because`` for the element
    size of the argument ``tensor_arg`` and the launch's TAPS (the first config if none survives),
    then ``tuned``."""

    def __init__(self, tensor_arg: str):
        self.tensor_arg = tensor_arg

    def __call__(self, configs: List[triton.Config], named_args: Dict, **kwargs) -> List[triton.Config]:
        args = {**named_args, **kwargs}
        elem_bytes, taps = args[self.tensor_arg].element_size(), int(args.get("TAPS", 1))
        kept = [c for c in configs
                if not wgrad_pruned_because(c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.num_warps, elem_bytes, taps)]
        return tuned(kept or configs[:1])


class GemmPruneHook:
    """An ``early_config_prune`` for @triton.autotune, from GEMM-size functions.

    ``m_fn`` / ``n_fn`` / ``k_fn`` take the kernel's named arguments and return the
    GEMM's M, N and K; ``tensor_arg`` names an argument whose dtype sets the element
    size and whose device sets the shared-memory limit and compute capability (for a
    TMA descriptor, those of the tensor it describes). The epilogue flags come from the launch's constexpr kwargs (``heavy_epilogue``).
    ``gathered``, ``max_block_n``, ``max_block_m`` and ``fixed_block_k`` describe the kernel's
    operands (see ``prune_gemm_configs``); ``rules`` holds them as keyword arguments.
    Under the interpreter (CPU tensors) there is a single config, returned untouched.
    The compile report reuses ``gemm_sizes`` and ``rules`` so that it prunes as the runtime does.
    """

    def __init__(self, m_fn, n_fn, k_fn, tensor_arg: str, gathered: bool = True, max_block_n: Optional[int] = None,
                 max_block_m: Optional[int] = None, uncapped: Tuple[TileKey, ...] = (),
                 fixed_block_k: Optional[int] = None, spilling: Tuple[TileKey, ...] = ()):
        self.m_fn, self.n_fn, self.k_fn, self.tensor_arg = m_fn, n_fn, k_fn, tensor_arg
        self.rules = dict(gathered=gathered, max_block_n=max_block_n, max_block_m=max_block_m,
                          fixed_block_k=fixed_block_k, spilling=tuple(spilling))
        self.uncapped = tuple(uncapped)

    def gemm_sizes(self, args: Dict) -> Tuple[int, int, int]:
        """(M, N, K) of the GEMM a launch with these named arguments computes."""
        return int(self.m_fn(args)), int(self.n_fn(args)), int(self.k_fn(args))

    def __call__(self, configs: List[triton.Config], named_args: Dict, **kwargs) -> List[triton.Config]:
        args = {**named_args, **kwargs}
        t = args[self.tensor_arg]
        t = getattr(t, "base", t)  # a TMA TensorDescriptor: the tensor it describes
        limit = max_shared_memory(t.device.index or 0) if t.is_cuda else 1 << 30
        return tuned(prune_gemm_configs(configs, *self.gemm_sizes(args), t.element_size(), limit,
                                        capability=device_capability(t), heavy_epilogue=heavy_epilogue(args),
                                        uncapped=self.uncapped, **self.rules))


def spatial_tile_configs(row_tiles: Sequence[Tuple[int, int, int, int, int]], span: str,
                         interpreter: Optional[bool] = None) -> List[triton.Config]:
    """A tap-TMA kernel's configs: GEMM_TILES with 8-wide spatial tiles, then (compiled only:
    the interpreter has a single config) ``row_tiles`` as one-row tiles, BLOCK_W = the config's
    ``span`` ("BLOCK_M" or "BLOCK_K")."""
    rows = [] if (INTERPRETER if interpreter is None else interpreter) else [
        triton.Config({**c.kwargs, "BLOCK_W": c.kwargs[span]}, num_warps=c.num_warps, num_stages=c.num_stages)
        for c in gemm_configs(row_tiles, interpreter=False)]
    return gemm_configs(interpreter=interpreter, BLOCK_W=SPATIAL_TILE_WIDTH) + rows


def row_efficiency(width: int, tile: int) -> float:
    """The share of one-row tiles' pixels inside output rows of ``width`` pixels, each row cut
    into cdiv(width, tile) tiles (56 pixels in 64-pixel tiles: 0.875; in 128: 0.44)."""
    return width / (triton.cdiv(width, tile) * tile) if width > 0 else 0.0


# Hopper's wgmma reads a register A operand while it runs, after it is issued. Triton before
# 3.9 (3.6 is on the GPU machine) pipelines a loop whose A goes through registers with its k16
# slices' wgmmas left in flight while the next step's ldmatrix rewrites their registers
# (triton-lang/triton#9433). On the H100 that gave fprop_tap_tma wrong tiles that changed from
# run to run (perf/results/2026-11-26_H100_84cd0fb/NOTES.md). The compile report reads the SASS
# for exactly that (compile_report.wgmma_register_hazards): with Triton 3.6 and its ptxas, 58 of
# 1181 sm_90 configs have it, all in the tap-TMA kernels' spatial tiles, 8-wide, with BLOCK_K of
# 32 or 64 and 16-bit data (every 3.6 failure seen on the H100 among them); with Triton 3.9, none.
# Which of those configs ptxas happens to allocate safely depends on the epilogue and the
# problem, so before 3.9 the tap-TMA pruners run every tile whose A goes through registers with
# more than one wgmma per step as SYNC_MMA: each step waits for its own wgmmas
# (_common.mma_barrier), which the SASS check finds clean. The loads stay pipelined; what is
# lost is the overlap of one step's wgmmas with the next step's start. tf32 (its wgmmas k8) was
# exempt, no tf32 tile having had the hazard, until the full sm_90 report of ada6b98 on Triton 3.6
# found it in four of the stream-K kernel's fp32 tiles (3 to 7 writes each): now a tf32 tile with
# more than one k8 wgmma per step waits too.
WGMMA_RS_HAZARD = TRITON_VERSION < (3, 9)

# Where a spatial tile would wait so (a Triton with the hazard), the tap-TMA pruners also offer it
# TRANSPOSED (fprop._tap_tma_acc): the step computes the tile's transpose, w's tile times the
# input box transposed, so the box is the wgmma's B operand, read from shared memory as TMA wrote
# it (Triton folds the box's reshape into the shared-memory view there, which it does not for an
# A operand), and the weight tile A. Both operands come from shared memory: no ldmatrix, nothing
# in registers for a later step to overwrite, and the wgmmas stay in flight. Triton 3.6's PTX for
# 64x64x64 w4 s4 in fp16, per step: TMA wait, four wgmmas, wait_group 1 (synced: TMA wait,
# ldmatrix, TMA wait, four wgmmas, wait_group 0); sm_90 SASS 97 instructions a step against 111,
# 58 registers against 74, 64 KiB of shared memory against 56 (the compile report). The epilogue
# transposes the accumulator once, through shared memory. The weight tile, now the wgmma's M,
# needs BLOCK_N >= TRANSPOSED_MIN_BLOCK_N. The autotuner times both: on an H200 (Triton 3.6, fp16,
# layer4.1.conv2 at batch 32) the transposed tiles took 0.63-0.91x the synced ones' kernel time
# (perf/results/2026-11-28_H200_67e2351).
# Triton 3.9 has no register hazard. Its ptxas did serialize those tiles' wgmmas (8 of the 13
# 8-wide fp16 tiles on sm_90, each k16 slice waiting for the one before), but for another cause,
# since fixed (a loop that might run no step: _common.split_steps); now none. The transposed forms
# stay on offer beside them from 3.9 too: on the H200 (Triton 3.6, layer4.1.conv2) the best
# transposed tile beat the best unsynced one, 0.0216 against 0.0258 ms of kernel time (no ldmatrix,
# both operands from shared memory). The autotuner chooses, at up to 8 more configs a layer.
TRANSPOSED_MIN_BLOCK_N = 64  # a wgmma's M: 64 rows a warpgroup

# The programs of a tap-TMA forward all walk the reduction in one order, tap by tap: those of an
# N-tile ask for the same weight tile at about the same time, step after step. Where the weight
# is not in L2 (a model reads each layer's weight once a pass; the sweeps flush L2 before each
# call), every step's tile is one fetch from HBM that all of them wait for, and a few pipeline
# stages of 0.2-0.3 us steps may not cover its latency. A hypothesis, not a measurement: on the
# H200 of 2026-11-28 (Triton 3.6, fp16), layer4.1.conv2's forward at batch 32 (72 steps, a 4.7 MB
# weight) took 0.0216 ms on its best tile replayed from a CUDA graph, L2 warm (the race check),
# and 0.028 ms in the sweep, L2 flushed; cuDNN 0.022 flushed. ROTATE (fprop._tap_tma_acc) starts
# M-tile m's reduction at step m * steps // tiles_m and wraps round past the last tap, so the
# programs fetch different tiles at once and each finds most of its tiles already brought into
# L2 by the M-tile ahead of it. The sum's terms stay the same, their order differs from tile to
# tile (fixed for each: same bits from call to call). The 1x1 GEMM on TMA (gemm1x1.py) rotates
# the same way, where its layers are long reductions over few M-tiles (layer4.1.conv1: 32 steps,
# 52 tiles of 128x128). Until a GPU has timed it, the pruners of the tap-TMA forward and of
# gemm1x1_tma offer rotated forms only with TRITONCONV_ROTATE=1 (perf/race_check.py's rotated
# cases set it): beside each form they launch a tile in, the same rotated, where the launch is
# neither split-K nor stream-K.
ROTATED_FORMS = os.environ.get("TRITONCONV_ROTATE", "0") == "1"


def register_a_hazard(cfg: triton.Config, span: str, elem_bytes: int, capability: Optional[int],
                      a_selected: bool = False, hazard: Optional[bool] = None) -> Optional[str]:
    """Why ``cfg`` of a tap-TMA kernel would leave wgmmas reading registers in flight into the
    next step on this Triton (see WGMMA_RS_HAZARD, which ``hazard`` overrides), or None. A goes
    through registers in every spatial tile narrower than its span (the box's reshape), and in a
    one-row tile too where the kernel selects A's channels (``a_selected``). The exemption is
    what the Triton 3.6 SASS showed, not a proof: one wgmma per step (BLOCK_K = 16 in 16-bit, 8
    in tf32, the wgmma's k) waits for itself; the compile report checks every build."""
    hazard = WGMMA_RS_HAZARD if hazard is None else hazard
    if not hazard or capability is None or capability < 90 or elem_bytes not in (2, 4):
        return None
    kw = cfg.kwargs
    if kw["BLOCK_W"] >= kw[span] and not a_selected:
        return None  # one-row tile: A straight from shared memory
    if kw.get("TRANSPOSED") and not a_selected:
        return None  # the input is the wgmma's B operand: both operands from shared memory
    mma_k = 32 // elem_bytes  # k16 wgmmas in 16-bit, k8 in tf32
    if kw["BLOCK_K"] <= mma_k or cfg.num_stages <= 1 or kw.get("SYNC_MMA"):
        return None
    return (f"Triton {triton.__version__}: A through registers with {kw['BLOCK_K'] // mma_k} wgmmas per step in "
            "flight (triton#9433)")


def synced(cfg: triton.Config) -> triton.Config:
    """``cfg`` run with SYNC_MMA (see WGMMA_RS_HAZARD)."""
    return triton.Config({**cfg.kwargs, "SYNC_MMA": True}, num_warps=cfg.num_warps, num_stages=cfg.num_stages,
                         pre_hook=cfg.pre_hook)


def transposed(cfg: triton.Config) -> triton.Config:
    """``cfg`` run TRANSPOSED (see TRANSPOSED_MIN_BLOCK_N)."""
    return triton.Config({**cfg.kwargs, "TRANSPOSED": True}, num_warps=cfg.num_warps, num_stages=cfg.num_stages,
                         pre_hook=cfg.pre_hook)


def rotated(cfg: triton.Config) -> triton.Config:
    """``cfg`` run with ROTATE (see ROTATED_FORMS)."""
    return triton.Config({**cfg.kwargs, "ROTATE": True}, num_warps=cfg.num_warps, num_stages=cfg.num_stages,
                         pre_hook=cfg.pre_hook)


class SpatialTilePruneHook(GemmPruneHook):
    """``GemmPruneHook`` for the tap-TMA kernels, after dropping one-row configs (BLOCK_W wider
    than SPATIAL_TILE_WIDTH) whose tiles the output's rows (the argument ``Q``) fill less than
    ROW_MIN_EFFICIENCY of. Where the pruning clamps the span (BLOCK_M or BLOCK_K) below BLOCK_W,
    BLOCK_W follows it. On a Triton with the wgmma register hazard (WGMMA_RS_HAZARD), a kept
    tile that has it runs with SYNC_MMA (``synced``), and, for a kernel that takes TRANSPOSED
    (``transposable``) where BLOCK_N is at least TRANSPOSED_MIN_BLOCK_N, also transposed, the
    autotuner choosing. With ROTATED_FORMS, for a kernel that takes ROTATE (``rotatable``), each
    of those forms rotated too, where the launch is neither split-K nor stream-K. The compile
    report prunes as for any GEMM:
    a one-row tile can launch wherever rows are wide enough. ``row_fn``: the output's row width
    from the launch's arguments, for a kernel with no ``Q``."""

    def __init__(self, m_fn, n_fn, k_fn, tensor_arg: str, span: str, k_align_arg: Optional[str] = None,
                 row_fn: Optional[Callable[[Dict], int]] = None, transposable: bool = False,
                 rotatable: bool = False, **rules):
        super().__init__(m_fn, n_fn, k_fn, tensor_arg, **rules)
        self.span = span
        self.k_align_arg = k_align_arg  # the kernel selects A's channels where BLOCK_K does not divide it
        self.row_fn = row_fn or (lambda a: a["Q"])
        self.transposable = transposable
        self.rotatable = rotatable

    def __call__(self, configs: List[triton.Config], named_args: Dict, **kwargs) -> List[triton.Config]:
        args = {**named_args, **kwargs}
        Q = self.row_fn(args)
        fit = [c for c in configs if c.kwargs["BLOCK_W"] <= SPATIAL_TILE_WIDTH
               or row_efficiency(Q, c.kwargs["BLOCK_W"]) >= ROW_MIN_EFFICIENCY]
        kept = super().__call__(fit or configs[:1], named_args, **kwargs)
        kept = [c if c.kwargs["BLOCK_W"] <= c.kwargs[self.span] else
                triton.Config({**c.kwargs, "BLOCK_W": c.kwargs[self.span]}, num_warps=c.num_warps,
                              num_stages=c.num_stages, pre_hook=c.pre_hook)
                for c in kept]
        if len(configs) <= 1:
            return kept
        t = args[self.tensor_arg]
        t = getattr(t, "base", t)
        capability = device_capability(t) if isinstance(t, torch.Tensor) else None
        forms = [form for c in kept for form in self.launched(c, t.element_size(), capability, args)]
        # TRITONCONV_TUNE=0: the one tile kept, as it is first launched (synced), untimed
        return forms if len(forms) == len(kept) else tuned(forms)

    def rotates_launch(self, args: Dict) -> bool:
        """Whether rotated forms are offered for a launch with these named arguments (ROTATED_FORMS)."""
        return ROTATED_FORMS and self.rotatable and int(args.get("SPLIT_K", 1)) == 1

    def launched(self, cfg: triton.Config, elem_bytes: int, capability: Optional[int],
                 args: Dict) -> List[triton.Config]:
        """How a kept ``cfg`` is launched: as it is, or, where it has the register hazard, synced;
        where its A would go through registers with several wgmmas a step (the hazard's tiles,
        on any Triton: see TRANSPOSED_MIN_BLOCK_N), transposed too where this kernel takes it and
        BLOCK_N allows; with ROTATED_FORMS, each of those rotated too, after them, where the
        kernel and the launch take it."""
        forms = [synced(cfg)] if self.register_a_hazard(cfg, elem_bytes, capability, args) else [cfg]
        if (self.transposable and cfg.kwargs["BLOCK_N"] >= TRANSPOSED_MIN_BLOCK_N
                and self.register_a_hazard(cfg, elem_bytes, capability, args, hazard=True)):
            swapped = transposed(cfg)
            if not self.register_a_hazard(swapped, elem_bytes, capability, args, hazard=True):
                forms.append(swapped)
        if self.rotates_launch(args) and not cfg.kwargs.get("STREAM_K"):
            forms += [rotated(form) for form in forms]
        return forms

    def register_a_hazard(self, cfg: triton.Config, elem_bytes: int, capability: Optional[int],
                          args: Dict, hazard: Optional[bool] = None) -> Optional[str]:
        """``register_a_hazard`` for this kernel's span and the launch's channel alignment
        (``hazard``: as there, this Triton's rule by default)."""
        selected = self.k_align_arg is not None and int(args.get(self.k_align_arg, 1)) % cfg.kwargs["BLOCK_K"] != 0
        return register_a_hazard(cfg, self.span, elem_bytes, capability, selected, hazard=hazard)


class RotatablePruneHook(GemmPruneHook):
    """``GemmPruneHook`` for a GEMM kernel that takes ROTATE (gemm1x1_tma): with ROTATED_FORMS,
    beside each kept tile that is not stream-K, the same rotated (``launched``), the autotuner
    choosing; TRITONCONV_TUNE=0 keeps an unrotated one."""

    k_align_arg = None  # as SpatialTilePruneHook's: this kernel never selects A's channels

    def __call__(self, configs: List[triton.Config], named_args: Dict, **kwargs) -> List[triton.Config]:
        kept = super().__call__(configs, named_args, **kwargs)
        if not ROTATED_FORMS or len(configs) <= 1:
            return kept
        forms = [form for c in kept for form in self.launched(c)]
        return forms if len(forms) == len(kept) else tuned(forms)

    def launched(self, cfg: triton.Config, elem_bytes: int = 2, capability: Optional[int] = None,
                 args: Optional[Dict] = None) -> List[triton.Config]:
        """How a kept ``cfg`` is launched: as it is, and with ROTATED_FORMS rotated too, unless
        stream-K (the other arguments: as SpatialTilePruneHook.launched's, unused)."""
        return [cfg, rotated(cfg)] if ROTATED_FORMS and not cfg.kwargs.get("STREAM_K") else [cfg]


class DirectPruneHook:
    """An ``early_config_prune`` for the depthwise direct kernels: ``prune_direct_configs`` for
    the element size and device of the argument ``tensor_arg`` and the launch's R and S, and
    without the patches (TILE_W > 0) that pad the image of sides ``extent_args`` by more than
    MAX_PATCH_WASTE. ``phased``: the kernel runs stride phases (the dgrad), which skip kernel rows
    where the launch's stride_h is above 1."""

    def __init__(self, tensor_arg: str, extent_args: Optional[Tuple[str, str]] = None, phased: bool = False):
        self.tensor_arg = tensor_arg
        self.extent_args = extent_args
        self.phased = phased

    @staticmethod
    def row_step(args: Dict) -> Tuple[int, int]:
        """(stride_h, dil_h) of a launch with these named arguments."""
        return int(args.get("stride_h", 1)), int(args.get("dil_h", 1))

    def reuse_ok(self, args: Dict) -> bool:
        """Whether the kernel reuses input rows (REUSE_ROWS) for a launch with these named
        arguments: the forward always, the dgrad where its launcher says UNIT_PHASE."""
        return not self.phased or bool(args.get("UNIT_PHASE", False))

    def strided_bf16(self, args: Dict, bf16: bool) -> bool:
        """A bf16 forward launch (not the dgrad's phases) at a row stride above 1."""
        return bf16 and not self.phased and int(args.get("stride_h", 1)) > 1

    def fp16_below_sm90(self, fp16: bool, capability: Optional[int]) -> bool:
        """An fp16 forward launch (not the dgrad's) below sm_90 on a Triton whose builds of the
        looped tiles spill there (FP16_FORWARD_SPILLS)."""
        return FP16_FORWARD_SPILLS and fp16 and not self.phased and capability is not None and capability < 90

    def rows_skipped(self, args: Dict) -> bool:
        """Whether a launch with these named arguments may skip kernel rows in some program: a
        row stride above 1 (with a dilation that is a multiple of it every row still reaches
        every phase, but the kernel's branch is there all the same, so that case is counted
        too)."""
        return self.phased and int(args.get("stride_h", 1)) > 1

    def __call__(self, configs: List[triton.Config], named_args: Dict, **kwargs) -> List[triton.Config]:
        args = {**named_args, **kwargs}
        if self.extent_args is not None:
            height, width = (int(args[a]) for a in self.extent_args)
            configs = [c for c in configs if patch_waste(c.kwargs["BLOCK_M"], c.kwargs.get("TILE_W", 0),
                                                         height, width) <= MAX_PATCH_WASTE] or configs[:1]
        t = args[self.tensor_arg]
        S = int(args.get("S", 1))
        capability = device_capability(t)
        return tuned(prune_direct_configs(configs, t.element_size(), S, capability,
                                          taps=int(args.get("R", 1)) * S, rows_skipped=self.rows_skipped(args),
                                          row_step=self.row_step(args), reuse_ok=self.reuse_ok(args),
                                          strided_bf16=self.strided_bf16(args, t.dtype == torch.bfloat16),
                                          fp16_below_sm90=self.fp16_below_sm90(t.dtype == torch.float16, capability)))


def gemm_prune_hook(m_fn, n_fn, k_fn, tensor_arg: str, gathered: bool = True,
                    max_block_n: Optional[int] = None, max_block_m: Optional[int] = None,
                    uncapped: Tuple[TileKey, ...] = (), fixed_block_k: Optional[int] = None,
                    spilling: Tuple[TileKey, ...] = ()) -> GemmPruneHook:
    """Build an ``early_config_prune`` for @triton.autotune from GEMM-size functions (see GemmPruneHook)."""
    return GemmPruneHook(m_fn, n_fn, k_fn, tensor_arg, gathered, max_block_n, max_block_m, uncapped, fixed_block_k,
                         spilling)


def config_name(config: triton.Config) -> str:
    """'128x256x64 w8 s3' (BLOCK_M x BLOCK_N x BLOCK_K, warps, stages); '64x32 w4 s2' without a BLOCK_K;
    ' persistent' appended for a persistent-grid variant, ' stream-k' for a stream-K one, ' rows'
    for a one-row tap-TMA tile, ' sync' for one whose steps wait for their wgmmas (SYNC_MMA),
    ' transposed' for one that computes the tile's transpose (TRANSPOSED), ' rotated' for one whose
    M-tiles start their reductions at different steps (ROTATE),
    ' patch 8x8' for a depthwise tile that is a patch of 8 rows by 8 columns (TILE_W), ' unrolled'
    for one whose kernel rows are unrolled (UNROLL_R), ' reuse' for one that reuses its input rows
    across its output rows (REUSE_ROWS),
    ' maxnreg 255' for one launched with that register limit (``register_cap``)."""
    kw = config.kwargs
    dims = [kw["BLOCK_M"], kw["BLOCK_N"]] + ([kw["BLOCK_K"]] if "BLOCK_K" in kw else [])
    name = f"{'x'.join(map(str, dims))} w{config.num_warps} s{config.num_stages}"
    return (name + (" persistent" if kw.get("PERSISTENT") else "") + (" flat" if kw.get("FLATTEN") else "")
            + (" stream-k" if kw.get("STREAM_K") else "")
            + (" rows" if kw.get("BLOCK_W", 0) > SPATIAL_TILE_WIDTH else "") + (" sync" if kw.get("SYNC_MMA") else "")
            + (" transposed" if kw.get("TRANSPOSED") else "") + (" rotated" if kw.get("ROTATE") else "")
            + (f" patch {kw['BLOCK_M'] // kw['TILE_W']}x{kw['TILE_W']}" if kw.get("TILE_W") else "")
            + (" unrolled" if kw.get("UNROLL_R") else "") + (" reuse" if kw.get("REUSE_ROWS") else "")
            + (f" maxnreg {config.maxnreg}" if getattr(config, "maxnreg", None) else ""))


# How long the autotuner times each candidate config: triton.testing.do_bench's own defaults (25
# ms of warm-up, 100 ms of repeats, with an L2 flush before each) cost some 0.13 s per config
# whatever the kernel, and a ResNet-50 layer times a dozen or more (its families' pruned tiles):
# the H100 check at 283a32b, starting with nothing tuned, spent its 132 s forward stage tuning 18
# layers. A conv kernel here runs from about 10 us to a few ms; 25 ms of repeats still gives the
# median of some 200 runs of a 20 us kernel (each after its flush) and of 8 or more of a 3 ms one.
# TRITONCONV_TUNE_REP_MS sets it (the warm-up is a fifth of it); read when a shape is tuned.
TUNE_REP_MS = 25.0


def tune_rep_ms() -> float:
    """Milliseconds of repeats per autotune candidate: TRITONCONV_TUNE_REP_MS, else TUNE_REP_MS."""
    raw = os.environ.get("TRITONCONV_TUNE_REP_MS")
    if raw is None:
        return TUNE_REP_MS
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not value > 0:
        raise ValueError(f"TRITONCONV_TUNE_REP_MS must be a number of milliseconds above 0, not {raw!r}")
    return value


def capture_safe_bench(kernel_call, quantiles):
    """The autotuner's benchmarker (``triton.testing.do_bench`` for ``tune_rep_ms()``), refusing to run
    while a CUDA graph is being captured.

    Timing a kernel synchronises the stream, which breaks a capture with an
    obscure CUDA error; say what to do instead.
    """
    if torch.cuda.is_available() and torch.cuda.is_current_stream_capturing():
        raise RuntimeError(
            "tritonconv would autotune a new problem shape during CUDA graph capture. Run the model "
            "once outside the capture for every input shape first (that tunes each layer), or fill "
            "the tuning cache ahead of time with 'tritonconv tune'."
        )
    from triton.runtime import driver

    rep = tune_rep_ms()
    return driver.active.get_benchmarker()(kernel_call, warmup=max(1.0, rep / 5), rep=rep, quantiles=quantiles)


# The router times the families with L2 emptied before each call (``kernel_time(cold=True)``), as
# the autotuner (do_bench) times the tiles within a family and the sweeps time the layers; the
# sweeps' numbers are what the families are chosen for. The flush empties the activations too, as
# the sweeps' does; in a model a layer's weight at least was last read a whole pass before
# (ResNet-50's weights, 50 MB in fp16, are about an H100's L2). Timed with its operands in L2
# instead, as the router did until 2026-11-28, layer4.1.conv2's dgrad took 0.026 ms on tap_tma
# (the router's ms, H200) and 0.040 ms in the same run's sweep; its forward's best tile 0.0216
# and 0.028 (perf/results/2026-11-28_H200_*): the families the router weighed were not timed as
# they are measured. TRITONCONV_ROUTER_TIMING=warm (read at import) keeps the operands in L2.
ROUTER_COLD = os.environ.get("TRITONCONV_ROUTER_TIMING", "cold") != "warm"
# how many kernel_time calls asked for cold timing were timed warm, the flush failing: the router
# does not keep a choice on disk that it made so
WARM_FALLBACKS = 0
_warned_warm = False


def l2_flush() -> Callable[[], Any]:
    """A call that empties L2 on the current device: do_bench's own, Triton's benchmark buffer (256
    MiB) zeroed. One for all the candidates of a choice (``router._route``): each timed alike."""
    from triton.runtime import driver

    active = driver.active
    buffer = active.get_empty_cache_for_benchmark()
    return lambda: active.clear_cache(buffer)


def kernel_time(call: Callable[[], Any], calls: int = 20, reps: int = 10, cold: bool = False,
                cuda: Any = None, flush: Optional[Callable[[], Any]] = None) -> float:
    """Milliseconds of GPU time per ``call()``, its host cost left out: ``calls`` calls captured
    into a CUDA graph, the graph replayed ``reps`` times, the median taken. The router compares
    kernel families with it: timed call by call, a family whose launcher costs more Python
    would lose on host time that a model run from a graph (or with launch plans) never pays.

    With ``cold``, also a graph of ``flush(); call()`` pairs (``flush``: by default ``l2_flush``)
    and one of the flushes alone, each rep replaying both: the median of the reps' differences,
    but never below the warm time (where the flushes' jitter swamps a short call). Where the
    flushes alone cannot be captured or run, the call is timed warm (``WARM_FALLBACKS``, and a
    warning once a process). Where the call cannot be captured, the autotuner's benchmarker
    (``capture_safe_bench``, which flushes L2 too, but times the host where it is slower than
    the flush) times it instead. ``cuda``: the ``torch.cuda`` module (tests pass a stand-in)."""
    global WARM_FALLBACKS, _warned_warm
    cuda = torch.cuda if cuda is None else cuda
    if not cuda.is_available():
        return capture_safe_bench(call, quantiles=None)
    if cuda.is_current_stream_capturing():
        return capture_safe_bench(call, quantiles=None)  # raises with the explanation
    flushes = None
    if cold:
        try:
            flush = l2_flush() if flush is None else flush
            flushes = _graph_of(cuda, [flush], calls)
        except Exception as err:
            cuda.synchronize()
            WARM_FALLBACKS += 1
            if not _warned_warm:
                _warned_warm = True
                warnings.warn(f"tritonconv: a CUDA graph of L2 flushes failed ({type(err).__name__}: {err}); "
                              "the router times kernel families with their operands in L2", RuntimeWarning)
    try:
        stream = cuda.Stream()
        stream.wait_stream(cuda.current_stream())
        with cuda.stream(stream):
            call()
        cuda.current_stream().wait_stream(stream)
        warm = _graph_of(cuda, [call], calls)
        chilled = _graph_of(cuda, [flush, call], calls) if flushes is not None else None
        times, differences = [], []
        for _ in range(reps):
            times.append(_replay_ms(cuda, warm))
            if chilled is not None:
                differences.append(_replay_ms(cuda, chilled) - _replay_ms(cuda, flushes))
        del warm, chilled, flushes
        warm_ms = sorted(times)[len(times) // 2] / calls
        if not differences:
            return warm_ms
        return max(sorted(differences)[len(differences) // 2] / calls, warm_ms)
    except Exception:  # a family that can't be captured is timed the plain way
        cuda.synchronize()
        return capture_safe_bench(call, quantiles=None)


def _graph_of(cuda: Any, steps: Sequence[Callable[[], Any]], calls: int) -> Any:
    """A CUDA graph of ``steps``, in order, ``calls`` times over, replayed once (its first replay
    loads what it needs)."""
    graph = cuda.CUDAGraph()
    # thread_local: another thread's allocations and synchronisations meanwhile (a server's
    # other workers) neither fail nor break this capture, as the default "global" mode makes them
    with cuda.graph(graph, capture_error_mode="thread_local"):
        for _ in range(calls):
            for step in steps:
                step()
    graph.replay()
    return graph


def _replay_ms(cuda: Any, graph: Any) -> float:
    """Milliseconds of one replay of ``graph``, between two events."""
    start, end = cuda.Event(enable_timing=True), cuda.Event(enable_timing=True)
    start.record()
    graph.replay()
    end.record()
    end.synchronize()
    return start.elapsed_time(end)
