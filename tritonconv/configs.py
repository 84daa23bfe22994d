"""Autotune config spaces and their pruning, in one place.

Config lists are data. Each family of configs says where it comes from; the
pruning functions say what they remove and why. Under Triton's interpreter
exactly one config exists (the interpreter cannot time anything), chosen to
keep the number of interpreted programs small.
"""

from __future__ import annotations

import functools
from typing import Dict, List, Sequence, Tuple

import torch
import triton

from .kernels._common import INTERPRETER

__all__ = [
    "GEMM_TILES",
    "gemm_configs",
    "prune_gemm_configs",
    "max_shared_memory",
    "INTERPRETER_CONFIG",
    "capture_safe_bench",
]

# (BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages)
GEMM_TILES: Tuple[Tuple[int, int, int, int, int], ...] = (
    # Large tiles for big layers; these are the Triton matmul tutorial's fp16
    # choices, which also suit the implicit GEMM's long reduction.
    (128, 256, 64, 8, 3),
    (256, 128, 64, 8, 3),
    (128, 128, 64, 8, 3),
    (128, 128, 32, 4, 4),
    (128, 64, 64, 4, 4),
    (64, 128, 64, 4, 4),
    (128, 64, 32, 4, 4),
    (64, 64, 64, 4, 4),
    # Narrow N for layers with few output channels per group (stems, heads, grouped convs).
    (128, 32, 64, 4, 4),
    (64, 32, 32, 2, 5),
    (128, 16, 32, 4, 4),
    # Narrow K for layers with few input channels per group (C = 3 stems, grouped convs).
    (128, 64, 16, 4, 4),
    (64, 64, 16, 4, 4),
    # Small M for late layers at small batch (7x7 images).
    (32, 128, 64, 4, 4),
    (32, 64, 32, 2, 5),
)

# The interpreter runs one numpy operation per Triton operation per program,
# so fewer, larger programs are much faster there; 16 keeps K-padding waste low
# for the small channel counts the tests use.
INTERPRETER_CONFIG = dict(BLOCK_M=64, BLOCK_N=32, BLOCK_K=16, GROUP_M=8)


def gemm_configs(tiles: Sequence[Tuple[int, int, int, int, int]] = GEMM_TILES, **extra) -> List[triton.Config]:
    """Configs for an implicit-GEMM kernel; ``extra`` adds fixed meta-parameters."""
    if INTERPRETER:
        return [triton.Config({**INTERPRETER_CONFIG, **extra}, num_warps=4, num_stages=1)]
    return [
        triton.Config(
            {"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": 8, **extra},
            num_warps=warps,
            num_stages=stages,
        )
        for bm, bn, bk, warps, stages in tiles
    ]


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


def shared_bytes(bm: int, bn: int, bk: int, stages: int, elem_bytes: int) -> int:
    """Shared memory a pipelined GEMM tile loop needs: one A and one B tile per stage."""
    return (bm * bk + bk * bn) * elem_bytes * max(stages, 1)


def prune_gemm_configs(
    configs: List[triton.Config], gemm_m: int, gemm_n: int, gemm_k: int, elem_bytes: int, shared_limit: int
) -> List[triton.Config]:
    """Drop configs that cannot pay off for a (gemm_m, gemm_n, gemm_k) problem.

    Removes, in order of reasoning:
      * tiles wider than the problem in M, N or K (beyond the next power of two,
        and at least 16 for tl.dot): they only compute masked-out zeros;
      * configs whose pipelined tiles exceed the device's shared memory;
      * for fp64 (8-byte elements), the largest tiles, which would spill.
    If nothing survives, the config with the smallest shared-memory footprint
    is kept so that every problem still runs.
    """
    if len(configs) <= 1:
        return configs
    m_cap, n_cap, k_cap = _pow2_at_least(gemm_m), _pow2_at_least(gemm_n), _pow2_at_least(gemm_k)
    kept = []
    seen = set()
    for cfg in configs:
        bm, bn, bk = cfg.kwargs["BLOCK_M"], cfg.kwargs["BLOCK_N"], cfg.kwargs["BLOCK_K"]
        # clamp tile sizes to the problem, then drop duplicates the clamping creates
        bm, bn, bk = min(bm, m_cap), min(bn, n_cap), min(bk, k_cap)
        if shared_bytes(bm, bn, bk, cfg.num_stages, elem_bytes) > shared_limit:
            continue
        if elem_bytes >= 8 and bm * bn > 64 * 64:
            continue
        sig = (bm, bn, bk, cfg.num_warps, cfg.num_stages)
        if sig in seen:
            continue
        seen.add(sig)
        kwargs = dict(cfg.kwargs, BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk)
        kept.append(triton.Config(kwargs, num_warps=cfg.num_warps, num_stages=cfg.num_stages, pre_hook=cfg.pre_hook))
    if not kept:
        smallest = min(
            configs,
            key=lambda c: shared_bytes(c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.kwargs["BLOCK_K"], 1, elem_bytes),
        )
        kept = [triton.Config(dict(smallest.kwargs, BLOCK_M=32, BLOCK_N=32, BLOCK_K=16), num_warps=4, num_stages=2,
                              pre_hook=smallest.pre_hook)]
    return kept


def elem_bytes_of(t: torch.Tensor) -> int:
    return t.element_size()


def gemm_prune_hook(m_fn, n_fn, k_fn, tensor_arg: str):
    """Build an ``early_config_prune`` for @triton.autotune from GEMM-size functions.

    ``m_fn`` / ``n_fn`` / ``k_fn`` take the kernel's named arguments and return the
    GEMM's M, N and K; ``tensor_arg`` names an input whose dtype sets element size.
    """

    def prune(configs: List[triton.Config], named_args: Dict, **kwargs) -> List[triton.Config]:
        args = {**named_args, **kwargs}
        t = args[tensor_arg]
        limit = max_shared_memory(t.device.index or 0) if t.is_cuda else 1 << 30
        return prune_gemm_configs(configs, m_fn(args), n_fn(args), k_fn(args), t.element_size(), limit)

    return prune


def capture_safe_bench(kernel_call, quantiles):
    """The autotuner's benchmarker, refusing to run while a CUDA graph is being captured.

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

    return driver.active.get_benchmarker()(kernel_call, quantiles=quantiles)
