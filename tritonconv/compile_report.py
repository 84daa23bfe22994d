"""Compile report: build every autotune config ahead of time and check what it costs.

Triton compiles for a GPU without one being present, so this runs on any
machine: each (kernel family, config, dtype) is compiled for a target arch and
its PTX is assembled again with ``ptxas -v`` to read registers and spills. A
config passes when it

    * compiles (Triton to PTX to cubin),
    * does not spill (0 bytes spill stores and loads),
    * fits the arch's shared memory (Triton's own figure, ``metadata.shared``),
    * for a tl.dot kernel, uses the tensor-core instruction its dtype should
      use on that arch: fp16/bf16 need wgmma on sm_90 (mma.sync on
      sm_80/86/89); fp32, which runs as TF32 by default
      (torch.backends.cudnn.allow_tf32), needs a tensor-core instruction of
      either kind; fp64 and fp32-ieee need none (the report still says whether
      the f64 mma.sync is used). The depthwise kernels have no tl.dot and need none,
    * for a tensor-descriptor (TMA) family, issues TMA copies
      (cp.async.bulk.tensor) rather than plain loads.

Two more columns say whether the reduction is software-pipelined, without
failing anything: ``tma`` counts the TMA copies in the PTX (a pipelined loop
issues its first stages before the loop, so the count grows with num_stages),
and ``async`` says whether a wgmma stays in flight while the next is issued;
``A from`` says whether the wgmmas read A from shared memory as loaded or
from registers (a shared-to-register copy per step first). From the SASS:
``step instr`` and ``step div``, the instructions of one step of the innermost
MMA loop and the integer divisions among them (``mma_loop_of``); ``other instr``
and ``other div``, the same outside that loop (``outside_mma_loop``: what a tile
costs besides its steps, which counts where a reduction is a few steps long, as a
1x1 layer's is); and ``A hazards``, writes to the A registers of a wgmma in
flight (these fail). ``serial`` says where ptxas serialized the wgmmas, each
waiting for the one before (from its warning; this fails too).

Configs a family's runtime pruner (``configs.prune_gemm_configs``,
``configs.prune_direct_configs``) removes on that arch, for that dtype and
that epilogue, can never be launched there. They are still compiled and
reported, with status "pruned" instead of "FAIL", and they do not affect the
exit status: the goal is that every config that can actually run builds, does
not spill and uses tensor cores. ``ok`` is the strict result of the checks for
every row; ``status`` is "ok", "FAIL" (a launchable config failed) or "pruned".
The pruner is asked about each config as listed (``runtime_configs``).

Representative problem. A kernel's code depends on how Triton specializes its
integer arguments at launch: an int equal to 1 becomes the constexpr 1 and an
int divisible by 16 gets a divisibility hint, which is what lets loads along a
stride-1 axis become 16-byte vectors. Rather than compiling a general "every
int is i32" kernel that no launch would ever produce, each family describes
one representative launch (ResNet-50, MobileNetV2 and ConvNeXt layers,
channels_last) and the report applies Triton's launch-time rules to it
(``specialize``). Other launches specialize differently (odd channel counts,
NCHW); the accumulator, the pipelined tiles and the MMA instruction stay the
same, the address arithmetic and load vectorization do not, so the numbers
are those of the fast layout. What follows the reduction changes register
pressure as much as the tile does, which is why a kernel with a fused
epilogue is registered twice (see FAMILIES).

Families: fprop, fprop_fused, fprop_splitk, fprop_tma, fprop_tma_fused, fprop_tma_splitk,
fprop_tap_tma, fprop_tap_tma_fused, fprop_tap_tma_s2, fprop_tap_tma_small, fprop_tap_tma_splitk,
fprop_tap_tma_streamk, fprop_tap_tma_dgrad (fprop.py;
TMA on sm_90 only); dgrad_phased (TMA, sm_90 only), dgrad, dgrad_s2 (dgrad.py); wgrad, wgrad_splitk, wgrad_tap_tma, wgrad_tap_tma_s2 (wgrad.py; TMA on sm_90 only); gemm1x1, gemm1x1_fused, gemm1x1_dgrad, gemm1x1_tma (with persistent-
grid variants), gemm1x1_wgrad, gemm1x1_wgrad_splitk, gemm1x1_wgrad_tma
(gemm1x1.py; TMA on sm_90 only); smallc, smallc_fused, smallc_pad, smallc_pad_fused, smallc_rows, smallc_rows_fused,
smallc_rows_3x3, smallc_wgrad (smallc.py);
depthwise_{fprop,dgrad,wgrad}, their _7x7 variants, and depthwise_fprop_s2 and depthwise_dgrad_s2 (depthwise.py).

Usage::

    python -m tritonconv.compile_report --arch sm_90 --arch sm_80     # everything
    python -m tritonconv.compile_report --arch sm_90 --subset --json  # CI

The full report for sm_90 and sm_80 is about 3,200 compiles (3,193 at 43e1825; 1,500 took 12 to
20 minutes on 2 cores with an empty Triton cache, TRITON_CACHE_DIR, and 4 with a warm one).
``--subset`` compiles the first, largest, smallest and median config of every
family in fp16 and fp32, 249 compiles for sm_90 (195 took 160 s on 2 cores with an
empty Triton cache, 2026-11-26). CI compiles one config of every family for sm_90 in fp16
(tests/test_compile_report.py::test_every_family_builds) and bounds the
subset's size.

Adding a kernel family is one ``KernelFamily`` entry in ``FAMILIES``: the jit
function, its config list, a function that returns a representative launch's
arguments, and the launcher's prune hook.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import glob
import inspect
import io
import json as _json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import torch
import triton
import triton.language as tl

from . import configs as tc_configs
from .kernels import _common, depthwise, dgrad, fprop, gemm1x1, smallc, wgrad
from .spec import problem_from_shapes

__all__ = [
    "ARCHS",
    "DTYPES",
    "FAMILIES",
    "KernelFamily",
    "compile_one",
    "config_name",
    "main",
    "run",
    "specialize",
]

# ----------------------------------------------------------------------------
# Targets and dtypes (data)
# ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Arch:
    capability: int
    shared_limit: int  # bytes of dynamic shared memory one block may opt in to
    has_wgmma: bool


# Shared-memory limits are the per-block opt-in maxima the driver reports as
# max_shared_mem, which is what configs.max_shared_memory gives the runtime pruner.
ARCHS: Dict[str, Arch] = {
    "sm_80": Arch(80, 163 * 1024, has_wgmma=False),  # A100
    "sm_86": Arch(86, 99 * 1024, has_wgmma=False),  # RTX 30xx, A10, A40
    "sm_89": Arch(89, 99 * 1024, has_wgmma=False),  # L4, L40, RTX 40xx
    "sm_90": Arch(90, 227 * 1024, has_wgmma=True),  # H100, H200
}


@dataclasses.dataclass(frozen=True)
class Dtype:
    name: str
    triton_ty: str  # element type in a Triton signature ("*fp16" for a pointer)
    elem_bytes: int
    acc: Any  # ACC_DTYPE, as _common.acc_dtype_for gives it
    input_precision: str  # INPUT_PRECISION, as _common.input_precision_for gives it
    tensor_core: Optional[str]  # "fast": wgmma where the arch has it, else mma; "any": either; None


DTYPES: Dict[str, Dtype] = {
    "fp16": Dtype("fp16", "fp16", 2, tl.float32, "ieee", "fast"),
    "bf16": Dtype("bf16", "bf16", 2, tl.float32, "ieee", "fast"),
    # torch's default (cudnn.allow_tf32 = True) makes fp32 convs TF32.
    "fp32": Dtype("fp32", "fp32", 4, tl.float32, "tf32", "any"),
    # fp32 with allow_tf32 = False: FMA, no tensor cores. Not in the default set.
    "fp32-ieee": Dtype("fp32-ieee", "fp32", 4, tl.float32, "ieee", None),
    "fp64": Dtype("fp64", "fp64", 8, tl.float64, "ieee", None),
}
DEFAULT_DTYPES = ("fp16", "bf16", "fp32", "fp64")
SUBSET_DTYPES = ("fp16", "fp32")

# ----------------------------------------------------------------------------
# Kernel families (the registry)
# ----------------------------------------------------------------------------

LaunchFn = Callable[[Dtype, triton.Config], Tuple[Dict[str, Any], Dict[str, Any]]]


@dataclasses.dataclass(frozen=True)
class KernelFamily:
    """One @triton.jit kernel, one representative launch of it, and its configs.

    Attributes:
        name: the family's name in the report ("fprop").
        fn: the @triton.jit function (not the autotuned wrapper).
        configs_fn: () -> the configs the launcher's autotuner chooses from, as
            compiled for a GPU (never the interpreter's single config).
        launch_fn: (dtype, config) -> (args, constexprs) of a representative
            launch, by argument name: each runtime argument as ``specialize``
            takes it (a pointer or descriptor as its Triton type string, an int
            or float as its value) and the launcher's constexprs. The config's
            meta-parameters (BLOCK_M, ...) are added by the report.
        prune: the ``early_config_prune`` the launcher's autotuner applies (a
            ``configs.GemmPruneHook`` or ``configs.DirectPruneHook``), or None
            when the family launches every config. The report applies its rules
            to the representative launch (``runtime_configs``).
        uses_dot: the kernel's reduction is a tl.dot, so the dtype's tensor-core
            instruction is required; False for direct kernels (depthwise).
        uses_tma: the kernel loads through tensor descriptors, so its PTX must
            hold TMA copies (cp.async.bulk.tensor); a build that lowered them to
            plain loads would still be correct, and silently slow.
        dtypes, archs: the DTYPES / ARCHS keys the family runs with (None: all);
            e.g. TMA descriptors exist only on sm_90 and for 16/32-bit types.
    """

    name: str
    fn: Any
    configs_fn: Callable[[], List[triton.Config]]
    launch_fn: LaunchFn
    prune: Optional[Any] = None
    uses_dot: bool = True
    uses_tma: bool = False
    dtypes: Optional[Tuple[str, ...]] = None
    archs: Optional[Tuple[str, ...]] = None

    def signature(self, dtype: Dtype, config: triton.Config):
        """(signature, constexprs, attrs) of the representative launch with ``config``, as ``specialize`` gives."""
        args, constexprs = self.launch_fn(dtype, config)
        return specialize(self.fn, args, {**constexprs, **config.kwargs})

    def runs(self, dtype: str, arch: str) -> bool:
        return (self.dtypes is None or dtype in self.dtypes) and (self.archs is None or arch in self.archs)


def gemm_tile_configs() -> List[triton.Config]:
    """The GEMM families' compiled config list (configs.GEMM_TILES), whatever TRITON_INTERPRET says."""
    return tc_configs.gemm_configs(interpreter=False)


def persistent_tile_configs() -> List[triton.Config]:
    """GEMM tiles with and without a persistent grid, and the stream-K ones
    (configs.persistent_gemm_configs, as gemm1x1_tma tunes them)."""
    return tc_configs.persistent_gemm_configs(interpreter=False, stream_k=True, flatten=True)


def tap_tma_tile_configs() -> List[triton.Config]:
    """GEMM tiles with the tap-TMA family's spatial tile width (fprop.TAP_TMA_BLOCK_W), and its
    one-row tiles (configs.TAP_TMA_ROW_TILES)."""
    return [triton.Config(c.kwargs, num_warps=c.num_warps, num_stages=c.num_stages)
            for c in fprop.tap_tma_configs(interpreter=False)]


def wgrad_tap_tma_tile_configs() -> List[triton.Config]:
    """GEMM tiles with the tap-TMA wgrad's spatial step width (wgrad.TAP_TMA_BLOCK_W), and its
    one-row steps (configs.WGRAD_TAP_TMA_ROW_TILES)."""
    return [triton.Config(c.kwargs, num_warps=c.num_warps, num_stages=c.num_stages)
            for c in wgrad.tap_tma_configs(interpreter=False)]


def smallc_tile_configs() -> List[triton.Config]:
    """The small-C family's compiled config list (configs.SMALLC_TILES)."""
    return tc_configs.gemm_configs(tc_configs.SMALLC_TILES, interpreter=False)


def smallc_row_tile_configs(problem: Dict[str, Any]) -> List[triton.Config]:
    """The rows kernel's compiled config list for ``problem``'s kernel rows (configs.smallc_row_configs)."""
    pb = problem_from_shapes(**problem)
    return tc_configs.smallc_row_configs(smallc.row_block_k(pb.S, smallc._pitch(pb.C)), interpreter=False)


def smallc_wgrad_tile_configs() -> List[triton.Config]:
    """The small-C wgrad's compiled config list (configs.SMALLC_WGRAD_TILES)."""
    return tc_configs.gemm_configs(tc_configs.SMALLC_WGRAD_TILES, interpreter=False)


def depthwise_tile_configs() -> List[triton.Config]:
    """The depthwise wgrad's compiled config list (configs.DEPTHWISE_WGRAD_TILES)."""
    return tc_configs.depthwise_configs(tc_configs.DEPTHWISE_WGRAD_TILES, interpreter=False)


def depthwise_patch_configs() -> List[triton.Config]:
    """Each depthwise tile flat, and as a patch (TILE_W)."""
    return tc_configs.depthwise_configs(interpreter=False, patches=True)


def depthwise_unrolled_configs() -> List[triton.Config]:
    """The depthwise forward's and dgrad's: ``depthwise_patch_configs``, then some with the kernel
    rows unrolled (UNROLL_R)."""
    return tc_configs.depthwise_configs(interpreter=False, patches=True, unrolled=True)


def depthwise_reuse_configs() -> List[triton.Config]:
    """The depthwise forward's and dgrad's: ``depthwise_unrolled_configs``, then those reusing a
    patch's input rows (REUSE_ROWS)."""
    return tc_configs.depthwise_configs(interpreter=False, patches=True, unrolled=True, reuse=True)


_FLOAT_TYPES = {"float64": "fp64", "fp64": "fp64", "float32": "fp32", "fp32": "fp32", "float16": "fp16",
                "fp16": "fp16", "bfloat16": "bf16", "bf16": "bf16"}


def _float_type(annotation: Any) -> str:
    """A float argument's Triton type: its annotated dtype (``alpha: tl.float64``, a string where
    the module has ``from __future__ import annotations``), else fp32, as JITFunction types it."""
    return _FLOAT_TYPES.get(str(annotation).strip().removeprefix("tl."), "fp32")


def specialize(fn, args: Dict[str, Any], constexprs: Dict[str, Any]):
    """Triton's launch-time specialization of ``fn`` for concrete arguments.

    Args:
        fn: the @triton.jit function.
        args: every runtime argument by name: a pointer as its Triton type
            ("*fp16"), a host tensor descriptor as its type
            ("tensordesc<fp16[64, 32]>"), an int or a float as its value.
        constexprs: the tl.constexpr arguments by name.

    Returns:
        (signature, constexprs, attrs) by argument name, following the rules
        JITFunction applies when it is called: an int equal to 1 is compiled as
        the constexpr 1; other ints are i32 (i64 past 2**31); an int divisible
        by 16 gets tt.divisibility = 16, and so does every pointer (PyTorch's
        allocations are at least 16-byte aligned); a descriptor gets none.
    """
    signature: Dict[str, str] = {}
    consts: Dict[str, Any] = {}
    attrs: Dict[str, list] = {}
    divisible = [["tt.divisibility", 16]]
    # constexprs with a default the launcher may leave out (a JITFunction's or an InterpretedFunction's .fn)
    params = inspect.signature(fn.fn).parameters.values()
    defaults = {p.name: p.default for p in params
                if p.default is not inspect.Parameter.empty and "constexpr" in str(p.annotation)}
    annotations = {p.name: p.annotation for p in params}
    for name in fn.arg_names:
        if name in constexprs or name in defaults:
            signature[name], consts[name] = "constexpr", constexprs.get(name, defaults.get(name))
            continue
        if name not in args:
            raise KeyError(f"{fn.__name__}: no value for argument {name!r} in the representative launch")
        value = args[name]
        if isinstance(value, str) and value.startswith("tensordesc<"):
            signature[name] = value
        elif isinstance(value, str):
            signature[name], attrs[name] = value, divisible
        elif isinstance(value, float):
            # Triton never specializes a float argument: fp32, or the dtype the kernel annotates
            # it with (the epilogues' fp64 alpha)
            signature[name] = _float_type(annotations.get(name))
        elif isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{fn.__name__}: argument {name!r}: expected a type string, an int or a float")
        elif value == 1:
            signature[name], consts[name] = "constexpr", 1
        else:
            signature[name] = "i32" if -(2**31) <= value < 2**31 else "i64"
            if value % 16 == 0:
                attrs[name] = divisible
    extra = set(args) | set(constexprs)
    unknown = sorted(extra - set(fn.arg_names))
    if unknown:
        raise KeyError(f"{fn.__name__} has no argument(s) {unknown}")
    return signature, consts, attrs


def _channels_last_strides(shape: Sequence[int]) -> Tuple[int, ...]:
    return torch.empty(tuple(shape), device="meta").to(memory_format=torch.channels_last).stride()


def _contiguous_strides(shape: Sequence[int]) -> Tuple[int, ...]:
    return torch.empty(tuple(shape), device="meta").stride()


def _named(names: str, values: Sequence[int]) -> Dict[str, int]:
    return dict(zip(names.split(), values))


def _ptr(dtype: Dtype) -> str:
    return "*" + dtype.triton_ty


def _partials_ptr(dtype: Dtype) -> str:
    """Split-K partial sums are fp32, fp64 for fp64 (as the launchers allocate them)."""
    return "*fp64" if dtype.elem_bytes == 8 else "*fp32"


# Representative launches, channels_last (the fast layout) throughout: the
# activations NHWC, the weights KRSC, as a model converted to channels_last
# passes them. Sizes are ResNet-50's, MobileNetV2's and ConvNeXt-T's at batch 32.
#
# ResNet-50's first 3x3 layer (conv2_x): stride-1 channels, 16-divisible strides and channel counts.
FPROP_PROBLEM = dict(input_shape=(32, 64, 56, 56), weight_shape=(64, 64, 3, 3), stride=1, padding=1)
# ResNet-50's last 3x3 layer (conv5_x) at batch 8: the small output with a long
# reduction that the split-K family is for (fprop.accepts_splitk), in 4 chunks.
FPROP_SPLITK_PROBLEM = dict(input_shape=(8, 512, 7, 7), weight_shape=(512, 512, 3, 3), stride=1, padding=1)
FPROP_SPLITK = 4
# ResNet-50's first strided 3x3 (conv3_x, block 1, torchvision v1.5): dgrad runs 4 stride phases.
# ResNet-50's last 3x3 layer at batch 32: a 7x7 output, 2 or 4 images per tap_tma box.
SMALL_OUTPUT_PROBLEM = dict(input_shape=(32, 512, 7, 7), weight_shape=(512, 512, 3, 3), stride=1, padding=1)
STRIDE2_PROBLEM = dict(input_shape=(32, 128, 56, 56), weight_shape=(128, 128, 3, 3), stride=2, padding=1)
WGRAD_SPLITK = 4
# ResNet-50's bottleneck reduction 1x1, 256 -> 64 at 56x56 (conv2_x).
GEMM1X1_PROBLEM = dict(input_shape=(32, 256, 56, 56), weight_shape=(64, 256, 1, 1), stride=1, padding=0)
# The RGB stem: 3 -> 64, 7x7, stride 2, at 224x224.
SMALLC_PROBLEM = dict(input_shape=(32, 3, 224, 224), weight_shape=(64, 3, 7, 7), stride=2, padding=3)
# MobileNetV2's stem (3x3/2, 32 channels): the rows kernel's steps are 16 columns wide there, 32 on the 7x7
SMALLC_3X3_PROBLEM = dict(input_shape=(32, 3, 224, 224), weight_shape=(32, 3, 3, 3), stride=2, padding=1)
# MobileNetV2's 3x3 depthwise at 144 channels, 56x56, and ConvNeXt-T's 7x7 depthwise at 96 channels.
DEPTHWISE_PROBLEM = dict(input_shape=(32, 144, 56, 56), weight_shape=(144, 1, 3, 3), stride=1, padding=1,
                         groups=144)
DEPTHWISE_7X7_PROBLEM = dict(input_shape=(32, 96, 56, 56), weight_shape=(96, 1, 7, 7), stride=1, padding=3,
                             groups=96)
# MobileNetV2's first stride-2 depthwise (features.2): its dgrad runs four stride phases, where a
# stride of 1 folds the phase arithmetic away.
DEPTHWISE_S2_PROBLEM = dict(input_shape=(32, 96, 112, 112), weight_shape=(96, 1, 3, 3), stride=2, padding=1,
                            groups=96)
DEPTHWISE_SPLIT = 4


def _epilogue(dtype: Dtype, residual: bool, activation: str) -> Dict[str, Any]:
    return dict(HAS_BIAS=True, HAS_RESIDUAL=residual, ACTIVATION=_common.activation_code(activation),
                ACC_DTYPE=dtype.acc)


def _fprop_launch(dtype: Dtype, config: triton.Config, *, problem: Dict[str, Any] = FPROP_PROBLEM,
                  residual: bool = False, activation: str = "none", split_k: int = 1):
    """fprop_kernel's arguments as conv2d_fprop passes them for ``problem``, with bias."""
    pb = problem_from_shapes(**problem)
    ptr = _ptr(dtype)
    y_s = _channels_last_strides(pb.output_shape)
    args = dict(
        x_ptr=ptr, w_ptr=ptr, b_ptr=ptr, res_ptr=ptr, y_ptr=ptr,
        # the launcher passes w itself where it loads the weight by pointers; see _fprop_tma_launch
        w_desc=ptr,
        # split-K partial sums go to an fp32 (fp64) workspace; without split-K the launcher passes y
        ws_ptr=_partials_ptr(dtype) if split_k > 1 else ptr,
        M=pb.N * pb.P * pb.Q, H=pb.H, W=pb.W, P=pb.P, Q=pb.Q, R=pb.R, S=pb.S,
        CG=pb.C_per_group, KG=pb.K_per_group, GROUPS=pb.groups, SPLIT_K=split_k,
        stride_h=pb.stride_h, stride_w=pb.stride_w, pad_h=pb.pad_h, pad_w=pb.pad_w,
        dil_h=pb.dil_h, dil_w=pb.dil_w,
        **_named("sxn sxc sxh sxw", _channels_last_strides(pb.input_shape)),
        **_named("swk swc swr sws", _channels_last_strides(pb.weight_shape)),
        **_named("syn syk syp syq", y_s),
        **_named("srn srk srp srq", y_s if residual else (0, 0, 0, 0)),
        alpha=0.01,
    )
    meta = dict(_epilogue(dtype, residual, activation), INPUT_PRECISION=dtype.input_precision, PARTIAL=split_k > 1,
                W_DESC=False)
    return args, meta


def _fprop_tma_launch(dtype: Dtype, config: triton.Config, **kw):
    """fprop_kernel's arguments as conv2d_fprop_tma passes them: the weight through a descriptor
    of (BLOCK_N, BLOCK_K) tiles (fprop._set_weight_tma_block)."""
    args, meta = _fprop_launch(dtype, config, **kw)
    cfg = config.kwargs
    args["w_desc"] = f"tensordesc<{dtype.triton_ty}[{cfg['BLOCK_N']}, {cfg['BLOCK_K']}]>"
    return args, dict(meta, W_DESC=True)


def _fprop_tap_tma_launch(dtype: Dtype, config: triton.Config, *, problem: Dict[str, Any] = FPROP_PROBLEM,
                          residual: bool = False, activation: str = "none", split_k: int = 1,
                          stream_k: bool = False, weight_flipped: bool = False):
    """fprop_tap_tma_kernel's arguments as conv2d_fprop_tap_tma passes them, with bias: boxes of
    x's phase view [BOX_N, BOX_H, 1, BOX_W, BLOCK_K] (_common.tap_tma_boxes for the problem), the
    weight's tiles [BLOCK_N, BLOCK_K] ([BLOCK_K, BLOCK_N] of a stride-1 dgrad's weight read in
    place, ``weight_flipped``) (fprop._set_tap_tma_blocks); split-K's or stream-K's fp32 scratch
    and stream-K's flags."""
    pb = problem_from_shapes(**problem)
    kw = config.kwargs
    y_s = _channels_last_strides(pb.output_shape)
    boxes = _common.tap_tma_boxes(pb.N, pb.P, pb.Q)
    box_n, box_h, box_w = _common.tap_tma_box(kw["BLOCK_M"], kw["BLOCK_W"], boxes)
    box = f"{box_n}, {box_h}, 1, {box_w}, {kw['BLOCK_K']}"
    args = dict(
        x_desc=f"tensordesc<{dtype.triton_ty}[{box}]>",
        w_desc=(f"tensordesc<{dtype.triton_ty}[{kw['BLOCK_K']}, {kw['BLOCK_N']}]>" if weight_flipped
                else f"tensordesc<{dtype.triton_ty}[{kw['BLOCK_N']}, {kw['BLOCK_K']}]>"),
        b_ptr=_ptr(dtype), res_ptr=_ptr(dtype), y_ptr=_ptr(dtype),
        ws_ptr="*fp32" if stream_k else _partials_ptr(dtype) if split_k > 1 else _ptr(dtype),
        flags_ptr="*i32" if stream_k else _ptr(dtype),
        N=pb.N, C=pb.C, P=pb.P, Q=pb.Q, R=pb.R, S=pb.S, CG=pb.C_per_group, KG=pb.K_per_group, GROUPS=pb.groups,
        SPLIT_K=split_k, stride_h=pb.stride_h, stride_w=pb.stride_w,
        pad_h=pb.pad_h, pad_w=pb.pad_w, dil_h=pb.dil_h, dil_w=pb.dil_w,
        **_named("syn syk syp syq", y_s),
        **_named("srn srk srp srq", y_s if residual else (0, 0, 0, 0)),
        alpha=0.01,
    )
    return args, dict(_epilogue(dtype, residual, activation), INPUT_PRECISION=dtype.input_precision,
                      PARTIAL=split_k > 1, K_ALIGN=fprop.k_align(pb.C_per_group), BOXES=boxes,
                      W_FLIPPED=weight_flipped)


def tap_tma_streamk_tile_configs() -> List[triton.Config]:
    """The tap-TMA stream-K variant's tiles (configs.STREAM_K_TILES, 8-wide spatial tiles)."""
    return [triton.Config(c.kwargs, num_warps=c.num_warps, num_stages=c.num_stages)
            for c in fprop.tap_tma_streamk_configs(interpreter=False)]


def _dgrad_phased_launch(dtype: Dtype, config: triton.Config, *, problem: Dict[str, Any] = STRIDE2_PROBLEM):
    """dgrad_phased_kernel's arguments as conv2d_dgrad_tap_tma_phased passes them, with
    conv_transpose2d's bias: boxes of dy [BOX_N, BOX_H, 1, BOX_W, BLOCK_K] for the widest phase
    (_common.tap_tma_boxes), w's tiles [BLOCK_K, BLOCK_N] read in place, the phase slots."""
    pb = problem_from_shapes(**problem)
    kw = config.kwargs
    slots, sizes, dil_h, dil_w, w_tap_row, w_tap_col = dgrad._phased_slots(pb)
    boxes = _common.tap_tma_boxes(pb.N, max(p for p, _ in sizes), max(q for _, q in sizes))
    box_n, box_h, box_w = _common.tap_tma_box(kw["BLOCK_M"], kw["BLOCK_W"], boxes)
    fields = [f"{f}_{i}" for i in range(dgrad.PHASED_MAX_PHASES) for f in dgrad._PHASE_SLOT_FIELDS]
    dx_s = _channels_last_strides(pb.input_shape)
    args = dict(
        dy_desc=f"tensordesc<{dtype.triton_ty}[{box_n}, {box_h}, 1, {box_w}, {kw['BLOCK_K']}]>",
        w_desc=f"tensordesc<{dtype.triton_ty}[{kw['BLOCK_K']}, {kw['BLOCK_N']}]>",
        b_ptr=_ptr(dtype), dx_ptr=_ptr(dtype),
        N=pb.N, H=pb.H, W=pb.W, K=pb.K, CG=pb.C_per_group, KG=pb.K_per_group, GROUPS=pb.groups,
        stride_h=pb.stride_h, stride_w=pb.stride_w, dil_h=dil_h, dil_w=dil_w, w_tap_row=w_tap_row,
        w_tap_col=w_tap_col, **dict(zip(fields, slots)),
        **_named("sdxn sdxc sdxh sdxw", dx_s), sdx_ph=dx_s[2] * pb.stride_h, sdx_pw=dx_s[3] * pb.stride_w,
    )
    return args, dict(HAS_BIAS=True, ACC_DTYPE=dtype.acc, INPUT_PRECISION=dtype.input_precision,
                      K_ALIGN=fprop.k_align(pb.K_per_group), BOXES=boxes)


def _dgrad_launch(dtype: Dtype, config: triton.Config, *, problem: Dict[str, Any] = FPROP_PROBLEM):
    """dgrad_kernel's arguments as conv2d_dgrad passes them in a conv's backward (no bias)."""
    pb = problem_from_shapes(**problem)
    args = dict(
        dy_ptr=_ptr(dtype), w_ptr=_ptr(dtype), b_ptr=_ptr(dtype), dx_ptr=_ptr(dtype),
        N=pb.N, H=pb.H, W=pb.W, P=pb.P, Q=pb.Q, R=pb.R, S=pb.S,
        CG=pb.C_per_group, KG=pb.K_per_group, GROUPS=pb.groups, **_common.stride_phases(pb)._asdict(),
        stride_h=pb.stride_h, stride_w=pb.stride_w, pad_h=pb.pad_h, pad_w=pb.pad_w, dil_h=pb.dil_h, dil_w=pb.dil_w,
        **_named("sdyn sdyk sdyp sdyq", _channels_last_strides(pb.output_shape)),
        **_named("swk swc swr sws", _channels_last_strides(pb.weight_shape)),
        **_named("sdxn sdxc sdxh sdxw", _channels_last_strides(pb.input_shape)),
    )
    return args, dict(HAS_BIAS=False, ACC_DTYPE=dtype.acc, INPUT_PRECISION=dtype.input_precision)


def _wgrad_launch(dtype: Dtype, config: triton.Config, *, problem: Dict[str, Any] = FPROP_PROBLEM,
                  split_k: int = 1):
    """wgrad_kernel's arguments as conv2d_wgrad passes them: split-K partials in fp32 (fp64),
    KRSC as the gradient, or with no split the channels_last weight gradient itself."""
    pb = problem_from_shapes(**problem)
    if split_k > 1:
        out_ptr, out_s = _partials_ptr(dtype), wgrad.partials_strides(split_k, pb.weight_shape)
    else:
        out_ptr, out_s = _ptr(dtype), (0, *_channels_last_strides(pb.weight_shape))
    args = dict(
        dy_ptr=_ptr(dtype), x_ptr=_ptr(dtype), out_ptr=out_ptr,
        N=pb.N, H=pb.H, W=pb.W, P=pb.P, Q=pb.Q, R=pb.R, S=pb.S,
        CG=pb.C_per_group, KG=pb.K_per_group, GROUPS=pb.groups, SPLIT_K=split_k,
        stride_h=pb.stride_h, stride_w=pb.stride_w, pad_h=pb.pad_h, pad_w=pb.pad_w, dil_h=pb.dil_h, dil_w=pb.dil_w,
        **_named("sdyn sdyk sdyp sdyq", _channels_last_strides(pb.output_shape)),
        **_named("sxn sxc sxh sxw", _channels_last_strides(pb.input_shape)),
        **_named("sos sok soc sor sos_", out_s),
    )
    return args, dict(ACC_DTYPE=dtype.acc, INPUT_PRECISION=dtype.input_precision)


def _wgrad_tap_tma_launch(dtype: Dtype, config: triton.Config, *, problem: Dict[str, Any] = FPROP_PROBLEM,
                          split_k: int = WGRAD_SPLITK):
    """wgrad_tap_tma_kernel's arguments as conv2d_wgrad_tap_tma passes them: boxes of dy
    [BOX_N, BOX_H, BOX_W, BLOCK_M] and of x's phase view [BOX_N, BOX_H, 1, BOX_W, BLOCK_N]
    (_common.tap_tma_boxes for the problem; wgrad._set_tap_tma_blocks), fp32 partials."""
    pb = problem_from_shapes(**problem)
    kw = config.kwargs
    boxes = _common.tap_tma_boxes(pb.N, pb.P, pb.Q)
    bn, bh, bw = _common.tap_tma_box(kw["BLOCK_K"], kw["BLOCK_W"], boxes)
    if split_k > 1:
        out_ptr, out_s = _partials_ptr(dtype), wgrad.partials_strides(split_k, pb.weight_shape)
    else:
        out_ptr, out_s = _ptr(dtype), (0, *_channels_last_strides(pb.weight_shape))
    args = dict(
        dy_desc=f"tensordesc<{dtype.triton_ty}[{bn}, {bh}, {bw}, {kw['BLOCK_M']}]>",
        x_desc=f"tensordesc<{dtype.triton_ty}[{bn}, {bh}, 1, {bw}, {kw['BLOCK_N']}]>",
        out_ptr=out_ptr, dy_ptr=_ptr(dtype),
        N=pb.N, C=pb.C, P=pb.P, Q=pb.Q, R=pb.R, S=pb.S, CG=pb.C_per_group, KG=pb.K_per_group, GROUPS=pb.groups,
        SPLIT_K=split_k, stride_h=pb.stride_h, stride_w=pb.stride_w,
        pad_h=pb.pad_h, pad_w=pb.pad_w, dil_h=pb.dil_h, dil_w=pb.dil_w,
        **_named("sos sok soc sor sos_", out_s),
    )
    return args, dict(ACC_DTYPE=dtype.acc, INPUT_PRECISION=dtype.input_precision, BOXES=boxes)


def _gemm1x1_launch(dtype: Dtype, config: triton.Config, *, problem: Dict[str, Any] = GEMM1X1_PROBLEM,
                    residual: bool = False, activation: str = "none"):
    """gemm1x1_fprop_kernel's arguments as conv2d_fprop_1x1 passes them, with bias."""
    pb = problem_from_shapes(**problem)
    ptr = _ptr(dtype)
    y_s = _channels_last_strides(pb.output_shape)
    w_s = _channels_last_strides(pb.weight_shape)
    args = dict(
        x_ptr=ptr, w_ptr=ptr, b_ptr=ptr, res_ptr=ptr, y_ptr=ptr,
        M=pb.N * pb.P * pb.Q, H=pb.P, W=pb.Q, CG=pb.C_per_group, KG=pb.K_per_group, GROUPS=pb.groups,
        **_named("sxn sxc sxh sxw", _channels_last_strides(pb.input_shape)),
        swk=w_s[0], swc=w_s[1],
        **_named("syn syk syh syw", y_s),
        **_named("srn srk srh srw", y_s if residual else (0, 0, 0, 0)),
        alpha=0.01,
    )
    # channels_last x, y and residual: flat pixels (gemm1x1.flat_rows)
    return args, dict(_epilogue(dtype, residual, activation), INPUT_PRECISION=dtype.input_precision, FLAT_ROWS=True)


def _gemm1x1_dgrad_launch(dtype: Dtype, config: triton.Config, *, problem: Dict[str, Any] = GEMM1X1_PROBLEM):
    """gemm1x1_fprop_kernel's arguments as dgrad.conv2d_dgrad_1x1 passes them in ``problem``'s
    backward (no bias): dy as the input, w (K, C, 1, 1) read transposed (swk = 1, swc = C), dx as
    the output."""
    pb = problem_from_shapes(**problem)
    args, constexprs = _gemm1x1_launch(
        dtype, config, problem=dict(input_shape=pb.output_shape, weight_shape=(pb.C, pb.K, 1, 1), stride=1, padding=0))
    w_s = _channels_last_strides(pb.weight_shape)
    args.update(swk=w_s[1], swc=w_s[0])
    # rows divided by W and H*W (FLAT_ROWS off), as a strided conv's dgrad stores them into dx's
    # phase view dx[:, :, ::s, ::s] (gemm1x1.flat_rows): the other families compile the flat rows
    return args, dict(constexprs, HAS_BIAS=False, FLAT_ROWS=False)


def _gemm1x1_tma_launch(dtype: Dtype, config: triton.Config, *, problem: Dict[str, Any] = GEMM1X1_PROBLEM):
    """gemm1x1_tma_kernel's arguments as conv2d_fprop_1x1_tma passes them, with bias.

    The host TensorDescriptors' types carry the block shapes, which the
    autotuner's pre-hook (gemm1x1._set_tma_blocks) sets from the config:
    [BLOCK_M, BLOCK_K] for x as an (N*H*W, C) matrix, [BLOCK_N, BLOCK_K] for w as (K, C/groups).
    """
    pb = problem_from_shapes(**problem)
    kw = config.kwargs
    y_s = _channels_last_strides(pb.output_shape)
    args = dict(
        a_desc=f"tensordesc<{dtype.triton_ty}[{kw['BLOCK_M']}, {kw['BLOCK_K']}]>",
        b_desc=f"tensordesc<{dtype.triton_ty}[{kw['BLOCK_N']}, {kw['BLOCK_K']}]>",
        b_ptr=_ptr(dtype), res_ptr=_ptr(dtype), y_ptr=_ptr(dtype),
        partials_ptr="*fp32", flags_ptr="*i32",  # stream-K's scratch (always fp32: TMA takes no fp64)
        M=pb.N * pb.H * pb.W, H=pb.H, W=pb.W, CG=pb.C_per_group, KG=pb.K_per_group, GROUPS=pb.groups,
        **_named("syn syk syh syw", y_s), srn=0, srk=0, srh=0, srw=0,
        alpha=0.01,
    )
    return args, dict(_epilogue(dtype, False, "none"), INPUT_PRECISION=dtype.input_precision, FLAT_ROWS=True)


def _wgrad_1x1_out(dtype: Dtype, pb, split_k: int) -> Tuple[str, Tuple[int, int, int]]:
    """Where the 1x1 wgrad kernels store, as the launchers pass it: (split, K, C/groups) fp32 (fp64)
    partials, or with no split the channels_last weight gradient itself."""
    if split_k > 1:
        return _partials_ptr(dtype), _contiguous_strides((split_k, pb.K, pb.C_per_group))
    w_s = _channels_last_strides(pb.weight_shape)
    return _ptr(dtype), (0, w_s[0], w_s[1])


def _gemm1x1_wgrad_launch(dtype: Dtype, config: triton.Config, *, problem: Dict[str, Any] = GEMM1X1_PROBLEM,
                          split_k: int = 1):
    """gemm1x1_wgrad_kernel's arguments as conv2d_wgrad_1x1 passes them for NHWC dy and x."""
    pb = problem_from_shapes(**problem)
    out_ptr, out_s = _wgrad_1x1_out(dtype, pb, split_k)
    args = dict(
        dy_ptr=_ptr(dtype), x_ptr=_ptr(dtype), out_ptr=out_ptr,
        NPIX=pb.N * pb.H * pb.W, CG=pb.C_per_group, KG=pb.K_per_group, GROUPS=pb.groups, SPLIT_K=split_k,
        sdym=pb.K, sdyk=1, sxm=pb.C, sxc=1,
        **_named("sos sok soc", out_s),
    )
    return args, dict(ACC_DTYPE=dtype.acc, INPUT_PRECISION=dtype.input_precision)


def _gemm1x1_wgrad_tma_launch(dtype: Dtype, config: triton.Config, *, problem: Dict[str, Any] = GEMM1X1_PROBLEM,
                              split_k: int = WGRAD_SPLITK):
    """gemm1x1_wgrad_tma_kernel's arguments as conv2d_wgrad_1x1_tma passes them: both descriptors
    load [BLOCK_K, channels] tiles (gemm1x1._set_wgrad_tma_blocks)."""
    pb = problem_from_shapes(**problem)
    kw = config.kwargs
    out_ptr, out_s = _wgrad_1x1_out(dtype, pb, split_k)
    args = dict(
        a_desc=f"tensordesc<{dtype.triton_ty}[{kw['BLOCK_K']}, {kw['BLOCK_M']}]>",
        b_desc=f"tensordesc<{dtype.triton_ty}[{kw['BLOCK_K']}, {kw['BLOCK_N']}]>",
        out_ptr=out_ptr, dy_ptr=_ptr(dtype),
        NPIX=pb.N * pb.H * pb.W, CG=pb.C_per_group, KG=pb.K_per_group, GROUPS=pb.groups, SPLIT_K=split_k,
        **_named("sos sok soc", out_s),
    )
    return args, dict(ACC_DTYPE=dtype.acc, INPUT_PRECISION=dtype.input_precision)


def _smallc_launch(dtype: Dtype, config: triton.Config, *, problem: Dict[str, Any] = SMALLC_PROBLEM,
                   residual: bool = False, activation: str = "none"):
    """smallc_fprop_kernel's arguments as conv2d_fprop_smallc passes them, with bias."""
    pb = problem_from_shapes(**problem)
    ptr = _ptr(dtype)
    y_s = _channels_last_strides(pb.output_shape)
    args = dict(
        x_ptr=ptr, w_ptr=ptr, b_ptr=ptr, res_ptr=ptr, y_ptr=ptr,
        M=pb.N * pb.P * pb.Q, H=pb.H, W=pb.W, P=pb.P, Q=pb.Q, R=pb.R, S=pb.S,
        CG=pb.C_per_group, KG=pb.K_per_group, GROUPS=pb.groups,
        stride_h=pb.stride_h, stride_w=pb.stride_w, pad_h=pb.pad_h, pad_w=pb.pad_w, dil_h=pb.dil_h, dil_w=pb.dil_w,
        **_named("sxn sxc sxh sxw", _channels_last_strides(pb.input_shape)),
        **_named("swk swc swr sws", _channels_last_strides(pb.weight_shape)),
        **_named("syn syk syp syq", y_s),
        **_named("srn srk srp srq", y_s if residual else (0, 0, 0, 0)),
        alpha=0.01,
    )
    return args, dict(_epilogue(dtype, residual, activation), INPUT_PRECISION=dtype.input_precision)


def _smallc_pad_launch(dtype: Dtype, config: triton.Config, *, problem: Dict[str, Any] = SMALLC_PROBLEM, **kw):
    """smallc_fprop_kernel's arguments as conv2d_fprop_smallc_pad passes them: x and w copied with
    their channels padded to the pitch (smallc._pitch), dense NHWC / KRSC."""
    pb = problem_from_shapes(**problem)
    pitch = smallc._pitch(pb.C)
    args, constexprs = _smallc_launch(dtype, config, problem=problem, **kw)
    padded = dict(input_shape=(pb.N, pitch, pb.H, pb.W), weight_shape=(pb.K, pitch, pb.R, pb.S))
    args.update(CG=pitch, **_named("sxn sxc sxh sxw", _channels_last_strides(padded["input_shape"])),
                **_named("swk swc swr sws", _channels_last_strides(padded["weight_shape"])))
    return args, dict(constexprs, C_PITCH=pitch)


def _smallc_rows_launch(dtype: Dtype, config: triton.Config, *, problem: Dict[str, Any] = SMALLC_PROBLEM,
                        residual: bool = False, activation: str = "none"):
    """smallc_rows_kernel's arguments as conv2d_fprop_smallc_rows passes them, with bias: x and w
    copied with their channels padded to the pitch, dense NHWC / KRSC."""
    pb = problem_from_shapes(**problem)
    ptr = _ptr(dtype)
    y_s = _channels_last_strides(pb.output_shape)
    args = dict(
        x_ptr=ptr, w_ptr=ptr, b_ptr=ptr, res_ptr=ptr, y_ptr=ptr,
        M=pb.N * pb.P * pb.Q, H=pb.H, W=pb.W, P=pb.P, Q=pb.Q, R=pb.R, S=pb.S, K=pb.K,
        stride_h=pb.stride_h, stride_w=pb.stride_w, pad_h=pb.pad_h, pad_w=pb.pad_w, dil_h=pb.dil_h, dil_w=pb.dil_w,
        **_named("syn syk syp syq", y_s),
        **_named("srn srk srp srq", y_s if residual else (0, 0, 0, 0)),
        alpha=0.01,
    )
    return args, dict(_epilogue(dtype, residual, activation), INPUT_PRECISION=dtype.input_precision,
                      C_PITCH=smallc._pitch(pb.C))


def _smallc_wgrad_launch(dtype: Dtype, config: triton.Config, *, problem: Dict[str, Any] = SMALLC_PROBLEM):
    """smallc_wgrad_kernel's arguments as conv2d_wgrad_smallc_pad passes them on the stem: x copied
    with its channels padded to the pitch (dense NHWC), fp32 (fp64) partials of the split the
    launcher picks for it on an H100 (smallc.MAX_WGRAD_SPLIT)."""
    pb = problem_from_shapes(**problem)
    split = smallc.MAX_WGRAD_SPLIT
    args = dict(
        dy_ptr=_ptr(dtype), x_ptr=_ptr(dtype), out_ptr=_partials_ptr(dtype),
        N=pb.N, H=pb.H, W=pb.W, P=pb.P, Q=pb.Q, R=pb.R, S=pb.S, C=pb.C, K=pb.K, SPLIT_K=split,
        stride_h=pb.stride_h, stride_w=pb.stride_w, pad_h=pb.pad_h, pad_w=pb.pad_w, dil_h=pb.dil_h, dil_w=pb.dil_w,
        **_named("sdyn sdyk sdyp sdyq", _channels_last_strides(pb.output_shape)),
        **_named("sos sok soc sor sos_", wgrad.partials_strides(split, pb.weight_shape)),
    )
    return args, dict(ACC_DTYPE=dtype.acc, INPUT_PRECISION=dtype.input_precision, C_PITCH=smallc._pitch(pb.C))


def _depthwise_weight_strides(pb) -> Tuple[int, int, int]:
    """(swk, swr, sws): the depthwise launchers pass w.stride(0), w.stride(2), w.stride(3), here of
    the taps-major weight a module keeps (``depthwise.pack_weight``): swk = 1, so the kernel's
    weight loads are vectors."""
    return 1, pb.S * pb.K, pb.K


def _depthwise_fprop_launch(dtype: Dtype, config: triton.Config, *, problem: Dict[str, Any] = DEPTHWISE_PROBLEM,
                            residual: bool = False, activation: str = "none"):
    """depthwise_fprop_kernel's arguments as conv2d_fprop_depthwise passes them, with bias."""
    pb = problem_from_shapes(**problem)
    ptr = _ptr(dtype)
    y_s = _channels_last_strides(pb.output_shape)
    args = dict(
        x_ptr=ptr, w_ptr=ptr, b_ptr=ptr, res_ptr=ptr, y_ptr=ptr,
        M=pb.N * pb.P * pb.Q, H=pb.H, W=pb.W, P=pb.P, Q=pb.Q, K=pb.K, MULT=pb.K // pb.C,
        stride_h=pb.stride_h, stride_w=pb.stride_w, pad_h=pb.pad_h, pad_w=pb.pad_w, dil_h=pb.dil_h, dil_w=pb.dil_w,
        **_named("sxn sxc sxh sxw", _channels_last_strides(pb.input_shape)),
        **_named("swk swr sws", _depthwise_weight_strides(pb)),
        **_named("syn syk syp syq", y_s),
        **_named("srn srk srp srq", y_s if residual else (0, 0, 0, 0)),
        alpha=0.01,
    )
    return args, dict(_epilogue(dtype, residual, activation), R=pb.R, S=pb.S, STRIDE_H=pb.stride_h, DIL_H=pb.dil_h)


def _depthwise_dgrad_launch(dtype: Dtype, config: triton.Config, *, problem: Dict[str, Any] = DEPTHWISE_PROBLEM):
    """depthwise_dgrad_kernel's arguments as conv2d_dgrad_depthwise passes them in a backward (no bias)."""
    pb = problem_from_shapes(**problem)
    HP, WP, step_r, _ = _common.stride_phases(pb)
    args = dict(
        dy_ptr=_ptr(dtype), w_ptr=_ptr(dtype), b_ptr=_ptr(dtype), dx_ptr=_ptr(dtype),
        M=pb.N * HP * WP, H=pb.H, W=pb.W, P=pb.P, Q=pb.Q, C=pb.C, MULT=pb.K // pb.C, HP=HP, WP=WP,
        stride_h=pb.stride_h, stride_w=pb.stride_w, pad_h=pb.pad_h, pad_w=pb.pad_w, dil_h=pb.dil_h, dil_w=pb.dil_w,
        step_r=step_r,
        **_named("sdyn sdyk sdyp sdyq", _channels_last_strides(pb.output_shape)),
        **_named("swk swr sws", _depthwise_weight_strides(pb)),
        **_named("sdxn sdxc sdxh sdxw", _channels_last_strides(pb.input_shape)),
    )
    return args, dict(R=pb.R, S=pb.S, HAS_BIAS=False, ACC_DTYPE=dtype.acc, DIL_H=pb.dil_h,
                      UNIT_PHASE=depthwise.unit_phase(pb))


def _depthwise_wgrad_launch(dtype: Dtype, config: triton.Config, *, problem: Dict[str, Any] = DEPTHWISE_PROBLEM,
                            split: int = DEPTHWISE_SPLIT):
    """depthwise_wgrad_kernel's arguments as conv2d_wgrad_depthwise passes them: fp32 (fp64) partials."""
    pb = problem_from_shapes(**problem)
    args = dict(
        dy_ptr=_ptr(dtype), x_ptr=_ptr(dtype), out_ptr=_partials_ptr(dtype),
        N=pb.N, H=pb.H, W=pb.W, P=pb.P, Q=pb.Q, K=pb.K, MULT=pb.K // pb.C, SPLIT=split,
        stride_h=pb.stride_h, stride_w=pb.stride_w, pad_h=pb.pad_h, pad_w=pb.pad_w, dil_h=pb.dil_h, dil_w=pb.dil_w,
        **_named("sdyn sdyk sdyp sdyq", _channels_last_strides(pb.output_shape)),
        **_named("sxn sxc sxh sxw", _channels_last_strides(pb.input_shape)),
        **_named("sos sok sor sos_", _contiguous_strides((split, pb.K, pb.R, pb.S))),
    )
    return args, dict(R=pb.R, S=pb.S, TAPS=depthwise.wgrad_taps(pb.R, pb.S, dtype.elem_bytes), ACC_DTYPE=dtype.acc)


def _prune_of(tuned) -> Any:
    """The early_config_prune an autotuned launcher applies (configs.GemmPruneHook / DirectPruneHook)."""
    return tuned.early_config_prune


_p = functools.partial
_GELU = dict(residual=True, activation="gelu")

# The registry. What follows the reduction changes register pressure as much
# as the tile does, so a kernel with a fused epilogue is registered twice:
# bias only, as F.conv2d and nn.Conv2d launch it, and "_fused" with bias +
# residual + erf GELU, the heaviest epilogue (a residual tile is live next to
# the accumulator): a config that fits it fits every epilogue. The runtime
# pruner treats the two differently (configs.heavy_epilogue).
FAMILIES: List[KernelFamily] = [
    # forward, general implicit GEMM (fprop.py)
    KernelFamily("fprop", fprop.fprop_kernel, gemm_tile_configs, _fprop_launch, _prune_of(fprop._fprop_tuned)),
    KernelFamily("fprop_fused", fprop.fprop_kernel, gemm_tile_configs, _p(_fprop_launch, **_GELU),
                 _prune_of(fprop._fprop_tuned)),
    # split-K partial sums stored raw (PARTIAL): no epilogue in this kernel
    KernelFamily("fprop_splitk", fprop.fprop_kernel, gemm_tile_configs,
                 _p(_fprop_launch, problem=FPROP_SPLITK_PROBLEM, split_k=FPROP_SPLITK), _prune_of(fprop._fprop_tuned)),
    # the same with TMA weight loads (sm_90), plain and with the heaviest epilogue
    KernelFamily("fprop_tma", fprop.fprop_kernel, gemm_tile_configs, _fprop_tma_launch,
                 _prune_of(fprop._fprop_tma_tuned), dtypes=("fp16", "bf16", "fp32"), archs=("sm_90",), uses_tma=True),
    KernelFamily("fprop_tma_fused", fprop.fprop_kernel, gemm_tile_configs, _p(_fprop_tma_launch, **_GELU),
                 _prune_of(fprop._fprop_tma_tuned), dtypes=("fp16", "bf16", "fp32"), archs=("sm_90",), uses_tma=True),
    # the split-K family loads its weight by TMA too where it can (fprop.conv2d_fprop_splitk)
    KernelFamily("fprop_tma_splitk", fprop.fprop_kernel, gemm_tile_configs,
                 _p(_fprop_tma_launch, problem=FPROP_SPLITK_PROBLEM, split_k=FPROP_SPLITK),
                 _prune_of(fprop._fprop_tma_tuned), dtypes=("fp16", "bf16", "fp32"), archs=("sm_90",), uses_tma=True),
    # TMA boxes of the input per tap as well (sm_90): stride 1 (the strides specialise to 1),
    # and stride 2 through the phase view (runtime strides)
    KernelFamily("fprop_tap_tma", fprop.fprop_tap_tma_kernel, tap_tma_tile_configs, _fprop_tap_tma_launch,
                 _prune_of(fprop._fprop_tap_tma_tuned), dtypes=("fp16", "bf16", "fp32"), archs=("sm_90",), uses_tma=True),
    KernelFamily("fprop_tap_tma_fused", fprop.fprop_tap_tma_kernel, tap_tma_tile_configs,
                 _p(_fprop_tap_tma_launch, **_GELU), _prune_of(fprop._fprop_tap_tma_tuned),
                 dtypes=("fp16", "bf16", "fp32"), archs=("sm_90",), uses_tma=True),
    KernelFamily("fprop_tap_tma_s2", fprop.fprop_tap_tma_kernel, tap_tma_tile_configs,
                 _p(_fprop_tap_tma_launch, problem=STRIDE2_PROBLEM), _prune_of(fprop._fprop_tap_tma_tuned),
                 dtypes=("fp16", "bf16", "fp32"), archs=("sm_90",), uses_tma=True),
    # a 7x7 output: boxes of several images (_common.tap_tma_boxes); and its split-K partials
    KernelFamily("fprop_tap_tma_small", fprop.fprop_tap_tma_kernel, tap_tma_tile_configs,
                 _p(_fprop_tap_tma_launch, problem=SMALL_OUTPUT_PROBLEM), _prune_of(fprop._fprop_tap_tma_tuned),
                 dtypes=("fp16", "bf16", "fp32"), archs=("sm_90",), uses_tma=True),
    KernelFamily("fprop_tap_tma_splitk", fprop.fprop_tap_tma_kernel, tap_tma_tile_configs,
                 _p(_fprop_tap_tma_launch, problem=SMALL_OUTPUT_PROBLEM, split_k=FPROP_SPLITK),
                 _prune_of(fprop._fprop_tap_tma_tuned), dtypes=("fp16", "bf16", "fp32"), archs=("sm_90",),
                 uses_tma=True),
    KernelFamily("fprop_tap_tma_streamk", fprop.fprop_tap_tma_kernel, tap_tma_streamk_tile_configs,
                 _p(_fprop_tap_tma_launch, problem=SMALL_OUTPUT_PROBLEM, stream_k=True),
                 _prune_of(fprop._fprop_tap_tma_streamk_tuned), dtypes=("fp16", "bf16", "fp32"), archs=("sm_90",),
                 uses_tma=True),
    # a stride-1 dgrad as tap_tma's forward of dy, the weight read in place (dgrad._weight_in_place):
    # ResNet-50's last 3x3 at batch 32, its dy 7x7 like the forward's output
    # (16-bit only, as dgrad._weight_in_place takes it: a float32 build reorders B in registers)
    KernelFamily("fprop_tap_tma_dgrad", fprop.fprop_tap_tma_kernel, tap_tma_tile_configs,
                 _p(_fprop_tap_tma_launch, problem=SMALL_OUTPUT_PROBLEM, weight_flipped=True),
                 _prune_of(fprop._fprop_tap_tma_tuned), dtypes=("fp16", "bf16"), archs=("sm_90",),
                 uses_tma=True),
    # a strided dgrad's phases in one launch, w read in place (16-bit: dgrad.tap_tma_phased_usable):
    # ResNet-50's layer2.0.conv2 (4 phases of 1, 2, 2 and 4 taps)
    KernelFamily("dgrad_phased", dgrad.dgrad_phased_kernel, tap_tma_tile_configs, _dgrad_phased_launch,
                 _prune_of(dgrad._dgrad_phased_tuned), dtypes=("fp16", "bf16"), archs=("sm_90",), uses_tma=True),
    # input gradient (dgrad.py): stride 1, and stride 2 (4 phases, taps stepping by 2)
    KernelFamily("dgrad", dgrad.dgrad_kernel, gemm_tile_configs, _dgrad_launch, _prune_of(dgrad._dgrad_tuned)),
    KernelFamily("dgrad_s2", dgrad.dgrad_kernel, gemm_tile_configs, _p(_dgrad_launch, problem=STRIDE2_PROBLEM),
                 _prune_of(dgrad._dgrad_tuned)),
    # weight gradient (wgrad.py): no split (stores the weight dtype), and split-K fp32 partials
    KernelFamily("wgrad", wgrad.wgrad_kernel, gemm_tile_configs, _wgrad_launch, _prune_of(wgrad._wgrad_tuned)),
    KernelFamily("wgrad_splitk", wgrad.wgrad_kernel, gemm_tile_configs, _p(_wgrad_launch, split_k=WGRAD_SPLITK),
                 _prune_of(wgrad._wgrad_tuned)),
    # TMA boxes of dy and the shifted x (sm_90, 16-bit), split-K: stride 1, and stride 2 (x's phase view)
    KernelFamily("wgrad_tap_tma", wgrad.wgrad_tap_tma_kernel, wgrad_tap_tma_tile_configs, _wgrad_tap_tma_launch,
                 _prune_of(wgrad._wgrad_tap_tma_tuned), dtypes=("fp16", "bf16"), archs=("sm_90",), uses_tma=True),
    KernelFamily("wgrad_tap_tma_s2", wgrad.wgrad_tap_tma_kernel, wgrad_tap_tma_tile_configs,
                 _p(_wgrad_tap_tma_launch, problem=STRIDE2_PROBLEM), _prune_of(wgrad._wgrad_tap_tma_tuned),
                 dtypes=("fp16", "bf16"), archs=("sm_90",), uses_tma=True),
    # 1x1 forward as a plain GEMM (gemm1x1.py), pointer loads and (sm_90) TMA loads
    KernelFamily("gemm1x1", gemm1x1.gemm1x1_fprop_kernel, gemm_tile_configs, _gemm1x1_launch,
                 _prune_of(gemm1x1._gemm1x1_tuned)),
    KernelFamily("gemm1x1_fused", gemm1x1.gemm1x1_fprop_kernel, gemm_tile_configs, _p(_gemm1x1_launch, **_GELU),
                 _prune_of(gemm1x1._gemm1x1_tuned)),
    KernelFamily("gemm1x1_dgrad", gemm1x1.gemm1x1_fprop_kernel, gemm_tile_configs, _gemm1x1_dgrad_launch,
                 _prune_of(gemm1x1._gemm1x1_dgrad_tuned)),
    KernelFamily("gemm1x1_tma", gemm1x1.gemm1x1_tma_kernel, persistent_tile_configs, _gemm1x1_tma_launch,
                 _prune_of(gemm1x1._gemm1x1_tma_tuned), dtypes=("fp16", "bf16", "fp32"), archs=("sm_90",), uses_tma=True),
    # 1x1 weight gradient as a plain GEMM (gemm1x1.py): no split, split-K, and (sm_90, 16-bit) TMA split-K
    KernelFamily("gemm1x1_wgrad", gemm1x1.gemm1x1_wgrad_kernel, gemm_tile_configs, _gemm1x1_wgrad_launch,
                 _prune_of(gemm1x1._gemm1x1_wgrad_tuned)),
    KernelFamily("gemm1x1_wgrad_splitk", gemm1x1.gemm1x1_wgrad_kernel, gemm_tile_configs,
                 _p(_gemm1x1_wgrad_launch, split_k=WGRAD_SPLITK), _prune_of(gemm1x1._gemm1x1_wgrad_tuned)),
    KernelFamily("gemm1x1_wgrad_tma", gemm1x1.gemm1x1_wgrad_tma_kernel, gemm_tile_configs, _gemm1x1_wgrad_tma_launch,
                 _prune_of(gemm1x1._gemm1x1_wgrad_tma_tuned), dtypes=("fp16", "bf16"), archs=("sm_90",), uses_tma=True),
    # few input channels (smallc.py): the RGB stem
    KernelFamily("smallc", smallc.smallc_fprop_kernel, smallc_tile_configs, _smallc_launch,
                 _prune_of(smallc._smallc_tuned)),
    KernelFamily("smallc_fused", smallc.smallc_fprop_kernel, smallc_tile_configs, _p(_smallc_launch, **_GELU),
                 _prune_of(smallc._smallc_tuned)),
    # the same on channel-padded copies (C_PITCH): vector loads, so the reduction pipelines
    KernelFamily("smallc_pad", smallc.smallc_fprop_kernel, smallc_tile_configs, _smallc_pad_launch,
                 _prune_of(smallc._smallc_pad_tuned)),
    KernelFamily("smallc_pad_fused", smallc.smallc_fprop_kernel, smallc_tile_configs,
                 _p(_smallc_pad_launch, **_GELU), _prune_of(smallc._smallc_pad_tuned)),
    # one kernel row a step on the padded copies (smallc_rows_kernel), its BLOCK_K set by the row:
    # 28 columns in 32 on the 7x7 stem, 12 in 16 on the 3x3
    KernelFamily("smallc_rows", smallc.smallc_rows_kernel, _p(smallc_row_tile_configs, SMALLC_PROBLEM),
                 _smallc_rows_launch, _prune_of(smallc.ROWS_TUNED[32])),
    KernelFamily("smallc_rows_fused", smallc.smallc_rows_kernel, _p(smallc_row_tile_configs, SMALLC_PROBLEM),
                 _p(_smallc_rows_launch, **_GELU), _prune_of(smallc.ROWS_TUNED[32])),
    KernelFamily("smallc_rows_3x3", smallc.smallc_rows_kernel, _p(smallc_row_tile_configs, SMALLC_3X3_PROBLEM),
                 _p(_smallc_rows_launch, problem=SMALLC_3X3_PROBLEM), _prune_of(smallc.ROWS_TUNED[16])),
    KernelFamily("smallc_wgrad", smallc.smallc_wgrad_kernel, smallc_wgrad_tile_configs, _smallc_wgrad_launch,
                 _prune_of(smallc._smallc_wgrad_tuned)),
    # depthwise direct kernels (depthwise.py): no tl.dot; fprop and dgrad prune fp64 tiles
    KernelFamily("depthwise_fprop", depthwise.depthwise_fprop_kernel, depthwise_reuse_configs,
                 _depthwise_fprop_launch, _prune_of(depthwise._fprop_tuned), uses_dot=False),
    # MobileNetV2's stride-2 3x3 (the tiles reusing input rows then read 9 input rows for 4 output rows)
    KernelFamily("depthwise_fprop_s2", depthwise.depthwise_fprop_kernel, depthwise_reuse_configs,
                 _p(_depthwise_fprop_launch, problem=DEPTHWISE_S2_PROBLEM), _prune_of(depthwise._fprop_tuned),
                 uses_dot=False),
    # (not the tiles reusing input rows: the pruner keeps them to 3x3 and smaller, and a 7x7's spill
    # kilobytes and take ptxas 20 s each)
    KernelFamily("depthwise_fprop_7x7", depthwise.depthwise_fprop_kernel, depthwise_unrolled_configs,
                 _p(_depthwise_fprop_launch, problem=DEPTHWISE_7X7_PROBLEM), _prune_of(depthwise._fprop_tuned),
                 uses_dot=False),
    KernelFamily("depthwise_dgrad", depthwise.depthwise_dgrad_kernel, depthwise_reuse_configs,
                 _depthwise_dgrad_launch, _prune_of(depthwise._dgrad_tuned), uses_dot=False),
    KernelFamily("depthwise_dgrad_7x7", depthwise.depthwise_dgrad_kernel, depthwise_unrolled_configs,
                 _p(_depthwise_dgrad_launch, problem=DEPTHWISE_7X7_PROBLEM), _prune_of(depthwise._dgrad_tuned),
                 uses_dot=False),
    KernelFamily("depthwise_dgrad_s2", depthwise.depthwise_dgrad_kernel, depthwise_reuse_configs,
                 _p(_depthwise_dgrad_launch, problem=DEPTHWISE_S2_PROBLEM), _prune_of(depthwise._dgrad_tuned),
                 uses_dot=False),
    KernelFamily("depthwise_wgrad", depthwise.depthwise_wgrad_kernel, depthwise_tile_configs,
                 _depthwise_wgrad_launch, _prune_of(depthwise._wgrad_tuned), uses_dot=False),
    KernelFamily("depthwise_wgrad_7x7", depthwise.depthwise_wgrad_kernel, depthwise_tile_configs,
                 _p(_depthwise_wgrad_launch, problem=DEPTHWISE_7X7_PROBLEM), _prune_of(depthwise._wgrad_tuned),
                 uses_dot=False),
]

# ----------------------------------------------------------------------------
# Compiling one config
# ----------------------------------------------------------------------------

NO_PTXAS = "no usable ptxas"


config_name = tc_configs.config_name


def _tile_key(config: triton.Config) -> Tuple:
    kw = config.kwargs
    return (kw["BLOCK_M"], kw["BLOCK_N"], kw.get("BLOCK_K"), config.num_warps, config.num_stages,
            bool(kw.get("PERSISTENT", False)), kw.get("BLOCK_W"), bool(kw.get("STREAM_K", False)),
            bool(kw.get("FLATTEN", False)), kw.get("TILE_W"), bool(kw.get("UNROLL_R", False)),
            bool(kw.get("REUSE_ROWS", False)))


def _tile_volume(tile: Tuple) -> int:
    return tile[0] * tile[1] * (tile[2] or 1)


def _compile_options(config: triton.Config) -> Dict[str, Any]:
    options = {"num_warps": config.num_warps, "num_stages": config.num_stages}
    for name, default in (("num_ctas", 1), ("maxnreg", None)):
        value = getattr(config, name, default)
        if value != default:
            options[name] = value
    return options


def _triton_compile(fn, signature, constexprs, attrs, capability: int, options):
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    # Key constexprs and attrs by argument path ((index,)): every Triton 3.3+
    # accepts that; 3.9 also takes names.
    index = {name: (i,) for i, name in enumerate(fn.arg_names)}
    src = ASTSource(
        fn=fn,
        signature=signature,
        constexprs={index[k]: v for k, v in constexprs.items()},
        attrs={index[k]: v for k, v in attrs.items()},
    )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*TRITON_DEFAULT_FP_FUSION.*")
        # Triton prints the whole PTX to stdout when ptxas fails; keep stdout for the report.
        with contextlib.redirect_stdout(io.StringIO()):
            return triton.compile(src, target=GPUTarget("cuda", capability, 32), options=options)


def _ptxas_candidates(capability: int, explicit: Optional[str] = None) -> List[str]:
    """ptxas binaries to try, best first: the one Triton itself uses for this arch first."""
    found: List[str] = []
    if explicit:
        found.append(explicit)
    try:  # the one Triton assembles this arch with; its signature and result vary across 3.x
        from triton.backends.nvidia import compiler as nv

        try:
            tool = nv.get_ptxas(capability)
        except TypeError:
            tool = nv.get_ptxas()
        found.append(tool[0] if isinstance(tool, tuple) else getattr(tool, "path", tool))
    except Exception:
        pass
    try:
        from triton import knobs

        for tool in ("ptxas_blackwell", "ptxas") if capability >= 90 else ("ptxas", "ptxas_blackwell"):
            with contextlib.suppress(Exception):
                found.append(getattr(knobs.nvidia, tool).path)
    except Exception:
        pass
    bin_dir = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")
    found += sorted(glob.glob(os.path.join(bin_dir, "ptxas*")), reverse=capability >= 90)
    found += [p for p in (shutil.which("ptxas"), "/usr/local/cuda/bin/ptxas") if p]
    found += sorted(glob.glob("/usr/local/cuda-*/bin/ptxas"), reverse=True)
    unique = []
    for path in found:
        if path and os.path.isfile(path) and os.access(path, os.X_OK) and path not in unique:
            unique.append(path)
    return unique


_PTXAS_GOOD: Dict[int, str] = {}  # per process: the ptxas that last worked for a capability


# ptxas's warning when it makes each wgmma of a loop wait for the one before (C7510, C7515): the
# tensor cores then idle between them, as if the kernel synced every k16 slice. On sm_90 in fp16
# it hit 33 launchable configs with Triton 3.6 and 70 with 3.9, each for one cause, a loop that
# might run no step (_common.split_steps); since those loops run at least one, none (check_built
# fails one).
_PTXAS_SERIALIZED = re.compile(r"wgmma\.mma_async instructions are serialized due to (.*?)(?: in the function|$)",
                               re.MULTILINE)


def ptxas_stats(ptx: str, capability: int, explicit_ptxas: Optional[str] = None) -> Dict[str, int]:
    """Registers and spill bytes from ``ptxas -v`` on ``ptx``, and ptxas's reason where it
    serialized the wgmmas (``wgmma_serialized``, else None).

    The flags match the ones Triton 3.9 assembles with (-lineinfo,
    --regAllocOptLevel=2), so the counts are those of the cubin it built.
    Raises RuntimeError starting with NO_PTXAS when no ptxas accepts the PTX
    (e.g. one too old for the PTX version Triton emits).
    """
    gpu_name = f"sm_{capability}a" if capability >= 90 else f"sm_{capability}"
    candidates = _ptxas_candidates(capability, explicit_ptxas)
    if capability in _PTXAS_GOOD and _PTXAS_GOOD[capability] in candidates:
        candidates.remove(_PTXAS_GOOD[capability])
        candidates.insert(0, _PTXAS_GOOD[capability])
    if not candidates:
        raise RuntimeError(f"{NO_PTXAS}: none found (Triton's bundled one, PATH, /usr/local/cuda*)")
    errors = []
    with tempfile.TemporaryDirectory(prefix="tritonconv-ptxas-") as tmp:
        src = os.path.join(tmp, "kernel.ptx")
        with open(src, "w") as f:
            f.write(ptx)
        for ptxas in candidates:
            cmd = [ptxas, "-lineinfo", "-v", "--regAllocOptLevel=2", f"--gpu-name={gpu_name}", src,
                   "-o", os.path.join(tmp, "kernel.cubin")]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0 and "regAllocOptLevel" in proc.stderr + proc.stdout:
                cmd.remove("--regAllocOptLevel=2")  # an older ptxas without the option
                proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                errors.append(f"{ptxas}: {((proc.stderr or proc.stdout).strip().splitlines() or [''])[0]}")
                continue
            log = proc.stderr + proc.stdout
            regs = re.search(r"Used (\d+) registers", log)
            spill = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", log)
            if regs is None or spill is None:
                errors.append(f"{ptxas}: could not parse -v output")
                continue
            _PTXAS_GOOD[capability] = ptxas
            serial = _PTXAS_SERIALIZED.search(log)
            return {
                "wgmma_serialized": serial.group(1).strip() if serial else None,
                "registers": int(regs.group(1)),
                "spill_stores": int(spill.group(1)),
                "spill_loads": int(spill.group(2)),
                "ptxas": ptxas,
                "sass": _disassemble(os.path.join(tmp, "kernel.cubin"), ptxas)
                if "wgmma" in ptx or "mma.sync" in ptx else None,
            }
    raise RuntimeError(f"{NO_PTXAS} for this PTX: " + "; ".join(errors))


def cuobjdump_tools(ptxas: Optional[str] = None) -> List[str]:
    """cuobjdump binaries, best first: beside ``ptxas``, in Triton's bundle, on PATH."""
    tools = ([os.path.join(os.path.dirname(ptxas), "cuobjdump")] if ptxas else []) + [
        os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump"),
        shutil.which("cuobjdump") or ""]
    return [t for t in dict.fromkeys(tools) if t and os.path.isfile(t) and os.access(t, os.X_OK)]


def _disassemble(cubin: str, ptxas: str) -> Optional[str]:
    """The cubin's SASS from cuobjdump (``cuobjdump_tools``); None where there is none or it fails."""
    for tool in cuobjdump_tools(ptxas):
        proc = subprocess.run([tool, "-sass", cubin], capture_output=True, text=True)
        if proc.returncode == 0 and proc.stdout:
            return proc.stdout
    return None


# --------------------------------------------------------------------------- wgmma register hazards
#
# A wgmma that reads its A operand from registers (Hopper's "RS" form) reads them while it runs,
# after it is issued, and the PTX ISA makes writing them before a wgmma.wait_group has retired
# that wgmma undefined behaviour. Triton 3.6 pipelines such a loop with its k-slices' wgmmas
# left in flight (wait_group N, N = slices - 1) while the next iteration's ldmatrix already
# rewrites their registers (triton-lang/triton#9433). On the H100 that gave fprop_tap_tma wrong,
# run-to-run different tiles (perf/results/2026-11-26_H100_84cd0fb/NOTES.md). The check reads
# the SASS of each loop that issues HGMMAs, twice round (the second pass sees what the back
# edge carries): every HGMMA adds its A registers to the open group, the group's last HGMMA
# (gsb0) commits it, WARPGROUP.DEPBAR.LE gsb0, N leaves the N newest groups in flight, and any
# other instruction that writes a register of a group in flight is a hazard.

_SASS_INSTR = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(.*?)\s*;")
_SASS_PREDICATE = re.compile(r"^@!?U?P[T0-9]+\s+")
_NO_DEST = ("HGMMA", "ST", "BRA", "SYNCS", "WARPGROUP", "BAR", "UTMA", "RED", "EXIT", "RET", "CALL",
            "NOP", "MEMBAR", "FENCE", "DEPBAR", "ISETP", "FSETP", "HSETP", "DSETP", "PLOP", "UISETP")


def _written_registers(text: str) -> List[int]:
    """General registers an instruction writes: its first register operand after any predicate
    destinations (SHFL's), 1, 2 or 4 wide by its opcode."""
    body = _SASS_PREDICATE.sub("", text)
    parts = body.split(None, 1)
    if len(parts) < 2 or parts[0].startswith(_NO_DEST):
        return []
    op = parts[0]
    operands = [o.strip() for o in parts[1].split(",")]
    while operands and re.fullmatch(r"!?U?P[T0-9]+", operands[0]):
        operands = operands[1:]
    m = re.fullmatch(r"R(\d+)", operands[0]) if operands else None
    if not m:
        return []
    types = op.split(".")[1:]
    if ".128" in op or (op.startswith("LDSM") and types[-1] == "4"):
        width = 4
    elif (".64" in op or ".WIDE" in op or (op.startswith("LDSM") and types[-1] == "2")
          or op.startswith(("DADD", "DMUL", "DFMA", "DMNMX")) or (op.startswith("CS2R") and ".32" not in op)
          or (op.startswith(("F2F", "I2F", "F2I")) and types and types[0] in ("F64", "S64", "U64"))):
        width = 2
    else:
        width = 1
    return list(range(int(m.group(1)), int(m.group(1)) + width))


def _sass_loops(sass: str) -> List[List[Tuple[int, str]]]:
    """Each loop of ``sass`` as its (address, instruction) list, predicates stripped. A loop closes
    with a predicated branch back; an unconditional one back is the return from an out-of-line
    wait loop into the middle of the code."""
    instrs = [(int(m.group(1), 16), m.group(2)) for m in _SASS_INSTR.finditer(sass)]
    index = {addr: i for i, (addr, _) in enumerate(instrs)}
    loops = []
    for i, (addr, text) in enumerate(instrs):
        branch = re.match(r"@!?P[T0-9]+\s+BRA\s+(0x[0-9a-f]+)", text)
        target = int(branch.group(1), 16) if branch else None
        if target is not None and target < addr and target in index:
            loops.append([(at, _SASS_PREDICATE.sub("", t)) for at, t in instrs[index[target]: i + 1]])
    return loops


# An integer division or remainder by a value not known at compile time: the reciprocal
# sequence nvcc and Triton emit for it starts with one I2F.RP (I2F.U32.RP for unsigned); a
# division and a remainder by the same value share one. A 64-bit division is a call to a
# subroutine instead, which this does not count (the kernels' loops have none).
_SASS_DIVISION = re.compile(r"^I2F(\.\w+)*\.RP\b")


def mma_loop_of(sass: str) -> Optional[Tuple[int, int]]:
    """(instructions, integer divisions) of one step of the reduction: the innermost loop that
    issues tensor-core MMAs (HGMMA, HMMA), where the kernel spends its time; None without one.
    What the loop does besides the MMAs (index arithmetic, waits, barriers) is issued by every
    warp in every step: a tap-TMA step took 152 instructions (Triton 3.9) of which 40 were two
    divisions, until the loop carried its tap from step to step (_common.next_tap_step)."""
    body = _mma_loop_body(sass)
    if body is None:
        return None
    return len(body), sum(bool(_SASS_DIVISION.match(t)) for _, t in body)


def _mma_loop_body(sass: str) -> Optional[List[Tuple[int, str]]]:
    """The innermost loop of ``sass`` that issues tensor-core MMAs (HGMMA, HMMA), or None."""
    bodies = [body for body in _sass_loops(sass) if any(t.startswith(("HGMMA", "HMMA")) for _, t in body)]
    return min(bodies, key=len) if bodies else None


def outside_mma_loop(sass: str) -> Optional[Tuple[int, int]]:
    """(instructions, integer divisions) of the kernel outside the loop ``mma_loop_of`` reads: the
    tile's setup, the pipeline's first and last stages, the epilogue (once per tile, where a
    program computes one), counted as written, not as run; None without an MMA loop. The 1x1
    GEMM's 128x128x64 tile had 1348 of them (sm_90, Triton 3.6) against 124 a step, and 4 steps on a 256-channel
    layer, until its pixel rows stopped dividing by W and H*W (gemm1x1.flat_rows): 774."""
    body = _mma_loop_body(sass)
    if body is None:
        return None
    inside = {at for at, _ in body}
    outside = [_SASS_PREDICATE.sub("", t) for at, t in
               ((int(m.group(1), 16), m.group(2)) for m in _SASS_INSTR.finditer(sass)) if at not in inside]
    return len(outside), sum(bool(_SASS_DIVISION.match(t)) for t in outside)


def wgmma_register_hazards(sass: str) -> List[str]:
    """Instructions ("0x21a0 LDSM.16.M88.4 R100, [...]") that write the A registers of an HGMMA
    still in flight, in any loop of ``sass``; [] where there are none."""
    found: List[str] = []
    for body in _sass_loops(sass):
        if not any(t.startswith("HGMMA") for _, t in body):
            continue
        in_flight: List[set] = []
        group: set = set()
        for lap in range(2):
            for at, t in body:
                if t.startswith("HGMMA"):
                    operands = [o.strip() for o in t.split(None, 1)[1].split(",")]
                    reg = re.match(r"R(\d+)$", operands[1]) if len(operands) > 1 else None
                    if reg:  # an m64nNk16 (k8 tf32, k32 8-bit) A fragment: 4 registers
                        group |= set(range(int(reg.group(1)), int(reg.group(1)) + 4))
                    if "gsb0" in t:
                        in_flight.append(group)
                        group = set()
                    continue
                wait = re.search(r"WARPGROUP\.DEPBAR\.LE\s+gsb0,\s*(0x[0-9a-f]+|\d+)", t)
                if wait:
                    keep = int(wait.group(1), 0)
                    in_flight = in_flight[max(0, len(in_flight) - keep):] if keep else []
                    continue
                hit = set(_written_registers(t)) & set().union(group, *in_flight)
                if hit and lap == 1:
                    found.append(f"{at:#06x} {t}")
    return sorted(set(found))


def tma_loads_of(ptx: str) -> int:
    """How many TMA loads (cp.async.bulk.tensor, global to shared) the PTX issues, counted statically;
    a TMA store (shared to global) is not counted."""
    return len(re.findall(r"\bcp\.async\.bulk\.tensor\.\d+d\.shared::\w+\.global\b", ptx))


def mma_async_of(ptx: str) -> Optional[bool]:
    """Whether a wgmma stays in flight while the next one is issued: some ``wgmma.wait_group N``
    with N >= 1, which is what Triton's software pipelining of a dot emits. False when every wait
    drains all groups (load, multiply, wait, in turn); None without wgmma."""
    waits = [int(n) for n in re.findall(r"wgmma\.wait_group\.sync\.aligned\s+(\d+)", ptx)]
    if not waits:
        return None
    return max(waits) >= 1


def wgmma_a_of(ptx: str) -> Optional[str]:
    """Where the wgmmas read their A operand: "smem" (a shared-memory descriptor, straight from
    what the loads wrote), "regs" (a register fragment, loaded from shared memory first: what a
    select or a reshape Triton cannot fold into the descriptor costs), "both", or None without wgmma."""
    kinds = {"regs" if a.startswith("{") else "smem"
             for a in re.findall(r"wgmma\.mma_async\S*\s+\{[^}]*\},\s*(\{|%\w+)", ptx)}
    if not kinds:
        return None
    return kinds.pop() if len(kinds) == 1 else "both"


def tensor_core_of(ptx: str) -> Tuple[str, Optional[str]]:
    """("wgmma" | "mma" | "none", the first such instruction) from PTX text."""
    for kind, pattern in (("wgmma", r"wgmma\.mma_async\S*"), ("mma", r"\bmma\.sync\S*")):
        m = re.search(pattern, ptx)
        if m:
            return kind, m.group(0)
    return "none", None


def _expected_tensor_core(family: KernelFamily, dtype: Dtype, arch: Arch) -> Optional[Tuple[str, ...]]:
    if not family.uses_dot:
        return None
    if dtype.tensor_core == "fast":
        return ("wgmma",) if arch.has_wgmma else ("mma",)
    if dtype.tensor_core == "any":
        return ("wgmma", "mma")
    return None


def _family(name_or_family) -> KernelFamily:
    if isinstance(name_or_family, KernelFamily):
        return name_or_family
    for fam in FAMILIES:
        if fam.name == name_or_family:
            return fam
    raise KeyError(f"unknown kernel family {name_or_family!r}; known: {[f.name for f in FAMILIES]}")


def _shared_estimate(config: triton.Config, dtype: Dtype, arch: Arch) -> Optional[int]:
    """The runtime pruner's shared-memory figure for a GEMM config (configs.shared_bytes); None for others."""
    kw = config.kwargs
    if "BLOCK_K" not in kw:
        return None
    return tc_configs.shared_bytes(kw["BLOCK_M"], kw["BLOCK_N"], kw["BLOCK_K"], config.num_stages, dtype.elem_bytes,
                                   arch.capability)


def runtime_configs(family: KernelFamily, dtype: Dtype, arch: Arch) -> List[triton.Config]:
    """The configs the family's runtime pruner keeps for its representative launch on ``arch``.

    The pruner is the launcher's own (``family.prune``), fed the launch's GEMM
    sizes, epilogue flags, the dtype's element size and the arch's capability
    and shared memory. Each GEMM size is first raised to the config list's
    largest tile in that dimension: a launch narrower than a tile runs a clamped
    copy of it (e.g. BLOCK_N = 64 for 64 output channels), which is another
    kernel; with the sizes raised, the verdict is about each config as listed,
    and a config is "pruned" only for reasons that hold however large the layer.
    """
    configs = family.configs_fn()
    if family.prune is None:
        return configs
    if isinstance(family.prune, tc_configs.WgradTapsPruneHook):
        _, constexprs = family.launch_fn(dtype, configs[0])
        return [c for c in configs if not tc_configs.wgrad_pruned_because(
            c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.num_warps, dtype.elem_bytes, constexprs["TAPS"])] or configs[:1]
    if isinstance(family.prune, tc_configs.DirectPruneHook):
        # not the patch-waste rule (configs.MAX_PATCH_WASTE): it depends on the layer's image size
        args, constexprs = family.launch_fn(dtype, configs[0])
        S = constexprs.get("S", 1)
        return tc_configs.prune_direct_configs(configs, dtype.elem_bytes, S, arch.capability,
                                               taps=constexprs.get("R", 1) * S,
                                               rows_skipped=family.prune.rows_skipped(args),
                                               row_step=family.prune.row_step(args),
                                               reuse_ok=family.prune.reuse_ok({**args, **constexprs}),
                                               strided_bf16=family.prune.strided_bf16(args, dtype.name == "bf16"),
                                               fp16_below_sm90=family.prune.fp16_below_sm90(dtype.name == "fp16",
                                                                                             arch.capability))
    first = configs[0]
    args, constexprs = family.launch_fn(dtype, first)
    m, n, k = family.prune.gemm_sizes({**args, **constexprs, **first.kwargs})
    m = max(m, max(c.kwargs["BLOCK_M"] for c in configs))
    n = max(n, max(c.kwargs["BLOCK_N"] for c in configs))
    k = max(k, max(c.kwargs["BLOCK_K"] for c in configs))
    kept = tc_configs.prune_gemm_configs(list(configs), m, n, k, dtype.elem_bytes, arch.shared_limit,
                                         capability=arch.capability,
                                         heavy_epilogue=tc_configs.heavy_epilogue(constexprs),
                                         **family.prune.rules)
    return [as_launched(family, c, dtype, arch) for c in kept]


def as_launched(family: KernelFamily, config: triton.Config, dtype: Dtype, arch: Arch) -> triton.Config:
    """``config`` as the runtime launches it on ``arch``: a tap-TMA tile with the wgmma register
    hazard of this Triton (configs.register_a_hazard) with SYNC_MMA; a tile its kernel lists as
    ``uncapped`` with that register limit below sm_90 (configs.register_cap); anything else as it is."""
    return launched_forms(family, config, dtype, arch)[0]


def launched_forms(family: KernelFamily, config: triton.Config, dtype: Dtype, arch: Arch) -> List[triton.Config]:
    """``as_launched``'s config first, then any other form the runtime's pruner launches the tile in
    beside it: a tap-TMA tile synced for the register hazard is offered transposed too, where its
    kernel takes TRANSPOSED (configs.SpatialTilePruneHook.launched); with configs.ROTATED_FORMS,
    the forms of the tap-TMA forward and of gemm1x1_tma rotated too."""
    prune = family.prune
    if isinstance(prune, tc_configs.SpatialTilePruneHook):
        args, constexprs = family.launch_fn(dtype, config)
        return prune.launched(config, dtype.elem_bytes, arch.capability, {**args, **constexprs})
    forms = prune.launched(config) if isinstance(prune, tc_configs.RotatablePruneHook) else [config]
    if isinstance(prune, tc_configs.GemmPruneHook) and "BLOCK_K" in config.kwargs:
        cap = tc_configs.register_cap(_tile_key(config)[:5], dtype.elem_bytes, arch.capability, prune.uncapped)
        if cap is not None and getattr(config, "maxnreg", None) != cap:
            return [tc_configs.with_maxnreg(form, cap) for form in forms]
    return forms


def _runtime_pruned(family: KernelFamily, config: triton.Config, dtype: Dtype, arch: Arch) -> Optional[str]:
    """Why the runtime pruner drops ``config`` on ``arch``, or None when it can launch there."""
    if family.prune is None:
        return None
    if _tile_key(config) in {_tile_key(c) for c in runtime_configs(family, dtype, arch)}:
        return None
    kw = config.kwargs
    if isinstance(family.prune, tc_configs.WgradTapsPruneHook):
        _, constexprs = family.launch_fn(dtype, config)
        why = tc_configs.wgrad_pruned_because(kw["BLOCK_M"], kw["BLOCK_N"], config.num_warps, dtype.elem_bytes,
                                              constexprs["TAPS"])
        return f"runtime pruner: {why or 'drops it (configs.WgradTapsPruneHook)'}"
    if isinstance(family.prune, tc_configs.DirectPruneHook):
        args, constexprs = family.launch_fn(dtype, config)
        S = constexprs.get("S", 1)
        why = tc_configs.direct_pruned_because(kw["BLOCK_M"], kw["BLOCK_N"], config.num_warps, dtype.elem_bytes,
                                               kw.get("TILE_W", 0), S, arch.capability, kw.get("UNROLL_R", False),
                                               constexprs.get("R", 1) * S, family.prune.rows_skipped(args),
                                               kw.get("REUSE_ROWS", False), family.prune.row_step(args),
                                               family.prune.reuse_ok({**args, **constexprs}),
                                               family.prune.strided_bf16(args, dtype.name == "bf16"),
                                               family.prune.fp16_below_sm90(dtype.name == "fp16", arch.capability))
        return f"runtime pruner: {why or 'drops it (configs.prune_direct_configs)'}"
    _, constexprs = family.launch_fn(dtype, config)
    why = tc_configs.pruned_because(kw["BLOCK_M"], kw["BLOCK_N"], kw["BLOCK_K"], config.num_warps, config.num_stages,
                                    dtype.elem_bytes, arch.shared_limit, arch.capability,
                                    tc_configs.heavy_epilogue(constexprs),
                                    **{k: v for k, v in family.prune.rules.items() if k != "fixed_block_k"})
    return f"runtime pruner: {why or 'drops it (configs.prune_gemm_configs)'}"


def check_built(fam: KernelFamily, rec: Dict[str, Any], dtype: Dtype, arch: Arch, max_spill: int = 0) -> List[str]:
    """What is wrong with a config that compiled, from its record's figures: [] when nothing is."""
    problems = []
    if rec["spills"] > max_spill:
        problems.append(f"spills {rec['spills']} B ({rec['spill_stores']} stored, {rec['spill_loads']} loaded)")
    if rec["shared_bytes"] > arch.shared_limit:
        problems.append(f"shared {rec['shared_bytes']} > {arch.shared_limit}")
    expected = _expected_tensor_core(fam, dtype, arch)
    if expected and rec["tensor_core"] not in expected:
        problems.append(f"tensor cores: {rec['tensor_core']}, expected {' or '.join(expected)}")
    if fam.uses_tma and not rec["tma_loads"]:
        problems.append("no TMA copies (cp.async.bulk.tensor) in a tensor-descriptor kernel")
    if rec.get("a_hazards"):
        problems.append(f"{rec['a_hazards']} write(s) to the A registers of a wgmma in flight (triton#9433)")
    if rec.get("serialized"):
        # each k16 slice waiting for the one before: the tile's MMAs at a fraction of their rate. Each
        # one found so far (_PTXAS_SERIALIZED) came from a loop that might run no step; none is left
        # on Triton 3.6 or 3.9, so one is a regression
        problems.append(f"ptxas serialized the wgmmas ({rec['serialized_reason']})")
    return problems


def compile_one(family, config: triton.Config, dtype: str, arch: str, ptxas: Optional[str] = None,
                max_spill: int = 0) -> Dict[str, Any]:
    """Compile one config of one family for one dtype and arch, and check it.

    Args:
        family: a KernelFamily or its name.
        config: a triton.Config from the family's configs_fn.
        dtype: a key of DTYPES ("fp16", "bf16", "fp32", "fp32-ieee", "fp64").
        arch: a key of ARCHS ("sm_80", "sm_90", ...).
        ptxas: a ptxas binary to try before the ones found automatically.
        max_spill: spill bytes (stores + loads) still counted as ok; 0 by default.

    Returns:
        A JSON-ready dict: kernel, config, arch, dtype, block_m/n/k, num_warps,
        num_stages, registers, spill_stores, spill_loads, spills (bytes,
        stores + loads), shared_bytes (Triton's), shared_estimate (configs.shared_bytes),
        shared_limit, tensor_core ("wgmma" / "mma" / "none"), mma_instr,
        tma_loads (TMA copies in the PTX), mma_async (a wgmma left in flight
        across the next one, see mma_async_of; None without wgmma), mma_a
        (where the wgmmas read A: "smem" / "regs" / "both", see wgmma_a_of), a_hazards
        (writes to the A registers of a wgmma in flight, in the SASS; see
        wgmma_register_hazards; None without wgmma or without cuobjdump), serialized (ptxas made
        each wgmma wait for the one before, its reason in serialized_reason: a failure; None
        without wgmma), step_instructions and
        step_divisions (SASS instructions and integer divisions in one step of the MMA loop, see
        mma_loop_of; None without tensor-core MMAs or without cuobjdump), other_instructions and
        other_divisions (the same outside that loop, see outside_mma_loop),
        launchable (False when the runtime pruner removes it), ok (every check
        passed), status ("ok" / "FAIL" / "pruned"), reason (why not ok, and why
        pruned), error (compiler or ptxas message), compile_s.
    """
    fam = _family(family)
    dt, ar = DTYPES[dtype], ARCHS[arch]
    config = as_launched(fam, config, dt, ar)
    kw = config.kwargs
    rec: Dict[str, Any] = dict(
        kernel=fam.name, config=config_name(config), arch=arch, dtype=dtype,
        block_m=kw["BLOCK_M"], block_n=kw["BLOCK_N"], block_k=kw.get("BLOCK_K"),
        num_warps=config.num_warps, num_stages=config.num_stages,
        registers=None, spill_stores=None, spill_loads=None, spills=None,
        shared_bytes=None,
        shared_estimate=_shared_estimate(config, dt, ar),
        shared_limit=ar.shared_limit, tensor_core=None, mma_instr=None, tma_loads=None, mma_async=None, mma_a=None,
        a_hazards=None, serialized=None, serialized_reason=None, step_instructions=None, step_divisions=None,
        other_instructions=None,
        other_divisions=None, launchable=True, ok=False, status="FAIL", reason=None, error=None, compile_s=None,
    )
    pruned = _runtime_pruned(fam, config, dt, ar)
    rec["launchable"] = pruned is None
    problems: List[str] = []
    t0 = time.perf_counter()
    try:
        if type(fam.fn).__name__ == "InterpretedFunction":
            raise RuntimeError("the kernel was imported under TRITON_INTERPRET=1 and cannot be compiled; "
                               "run the report in a process without it (run() does this for you)")
        signature, constexprs, attrs = fam.signature(dt, config)
        compiled = _triton_compile(fam.fn, signature, constexprs, attrs, ar.capability, _compile_options(config))
        rec["compile_s"] = round(time.perf_counter() - t0, 2)
        ptx = compiled.asm["ptx"]
        rec["shared_bytes"] = int(compiled.metadata.shared)
        rec["tensor_core"], rec["mma_instr"] = tensor_core_of(ptx)
        rec["tma_loads"], rec["mma_async"], rec["mma_a"] = tma_loads_of(ptx), mma_async_of(ptx), wgmma_a_of(ptx)
        stats = ptxas_stats(ptx, ar.capability, ptxas)
        if stats.get("sass") is not None:
            if "wgmma" in ptx:
                rec["a_hazards"] = len(wgmma_register_hazards(stats["sass"]))
            rec["step_instructions"], rec["step_divisions"] = mma_loop_of(stats["sass"]) or (None, None)
            rec["other_instructions"], rec["other_divisions"] = outside_mma_loop(stats["sass"]) or (None, None)
        rec["registers"] = stats["registers"]
        if "wgmma" in ptx:
            rec["serialized"] = stats.get("wgmma_serialized") is not None
            rec["serialized_reason"] = stats.get("wgmma_serialized")
        rec["spill_stores"], rec["spill_loads"] = stats["spill_stores"], stats["spill_loads"]
        rec["spills"] = stats["spill_stores"] + stats["spill_loads"]
    except Exception as exc:  # one bad config must not stop the report
        msg = f"{type(exc).__name__}: {exc}".strip()
        rec["error"] = msg[:2000]
        problems.append(NO_PTXAS if NO_PTXAS in msg else "compile failed")
    else:
        problems += check_built(fam, rec, dt, ar, max_spill)
    rec["ok"] = not problems
    rec["status"] = "pruned" if pruned else ("ok" if rec["ok"] else "FAIL")
    reasons = ([pruned] if pruned else []) + problems
    rec["reason"] = "; ".join(reasons) or None
    return rec


# ----------------------------------------------------------------------------
# The report
# ----------------------------------------------------------------------------


def _compile_task(family_name: str, tile: Tuple, kwargs: Dict[str, Any], dtype: str, arch: str,
                  ptxas: Optional[str], max_spill: int) -> Dict[str, Any]:
    """Worker entry point: rebuild the config from plain data and compile it."""
    config = triton.Config(dict(kwargs), num_warps=tile[3], num_stages=tile[4])
    return compile_one(family_name, config, dtype, arch, ptxas=ptxas, max_spill=max_spill)


def _worker_init() -> None:
    # Anything the compiler writes to fd 1 goes to stderr, so --json stdout stays parseable.
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())


@contextlib.contextmanager
def _without_interpreter():
    """Start worker processes without TRITON_INTERPRET: with it Triton builds
    interpreted functions at import, which cannot be compiled."""
    old = os.environ.pop("TRITON_INTERPRET", None)
    try:
        yield
    finally:
        if old is not None:
            os.environ["TRITON_INTERPRET"] = old


def representative_configs(configs: Sequence[triton.Config]) -> List[triton.Config]:
    """A few configs that bracket a list: the first, the largest and the smallest
    tile (BLOCK_M * BLOCK_N * BLOCK_K, first listed on ties), and the median one."""
    if len(configs) <= 3:
        return list(configs)
    vol = lambda c: _tile_volume(_tile_key(c))  # noqa: E731
    by_size = sorted(range(len(configs)), key=lambda i: (vol(configs[i]), i))
    picks = [0, max(range(len(configs)), key=lambda i: (vol(configs[i]), -i)), by_size[0], by_size[len(by_size) // 2]]
    return [configs[i] for i in sorted(set(picks))]


def _as_list(value, default: Sequence[str]) -> List[str]:
    if value is None:
        return list(default)
    if isinstance(value, str):
        value = [value]
    out: List[str] = []
    for item in value:
        out += [v.strip() for v in item.split(",") if v.strip()]
    return out


def _tasks(archs, dtypes, families, subset, only):
    tasks = []
    for fam in families:
        fam_configs = fam.configs_fn()
        if subset:
            fam_configs = representative_configs(fam_configs)
        if only:
            fam_configs = [c for c in fam_configs if any(o in config_name(c) for o in only)]
        for arch in archs:
            for dtype in dtypes:
                if not fam.runs(dtype, arch):
                    continue
                for cfg in fam_configs:
                    tasks.append((fam.name, _tile_key(cfg), dict(cfg.kwargs), dtype, arch))
                    for form in launched_forms(fam, cfg, DTYPES[dtype], ARCHS[arch])[1:]:  # transposed
                        tasks.append((fam.name, _tile_key(form), dict(form.kwargs), dtype, arch))
    return tasks


def run(
    arch="sm_90",
    dtypes: Optional[Iterable[str]] = None,
    families: Optional[Iterable] = None,
    subset: bool = False,
    jobs: Optional[int] = None,
    json: bool = False,
    only: Optional[Iterable[str]] = None,
    ptxas: Optional[str] = None,
    max_spill: int = 0,
    progress: Optional[bool] = None,
    file=None,
) -> List[Dict[str, Any]]:
    """Compile every (family, config, dtype) for each arch and print the report.

    Args:
        arch: "sm_90", "sm_80,sm_90" or a list of them.
        dtypes: DTYPES keys; default fp16, bf16, fp32, fp64 (fp16 and fp32 with subset).
        families: KernelFamily objects or names; default all of FAMILIES.
        subset: only ``representative_configs`` of each family (a CI-sized run).
        jobs: worker processes (default: CPU count); compilation is CPU-bound.
        json: print a JSON list of records instead of a table.
        only: keep configs whose name ("64x64x64 w4 s4") contains one of these strings.
        ptxas: a ptxas binary to try first.
        max_spill: spill bytes still counted as ok (default 0: any spill fails).
        progress: show a tqdm bar on stderr (default: when stderr is a terminal).
        file: where to print (default stdout).

    Returns:
        The records (see compile_one), in family, arch, dtype, config order.
    """
    archs = _as_list(arch, ["sm_90"])
    dtypes = _as_list(dtypes, SUBSET_DTYPES if subset else DEFAULT_DTYPES)
    for a in archs:
        if a not in ARCHS:
            raise ValueError(f"unknown arch {a!r}; known: {sorted(ARCHS)}")
    for d in dtypes:
        if d not in DTYPES:
            raise ValueError(f"unknown dtype {d!r}; known: {sorted(DTYPES)}")
    fams = [_family(f) for f in (families or FAMILIES)]
    for fam in fams:  # workers rebuild families by name from this module
        if fam is not _family(fam.name):
            raise ValueError(f"family {fam.name!r} is not the one registered in FAMILIES; register it there")
    tasks = _tasks(archs, dtypes, fams, subset, list(only or []))
    jobs = max(1, min(jobs or os.cpu_count() or 1, len(tasks) or 1))

    import multiprocessing

    from tqdm import tqdm

    t0 = time.perf_counter()
    results: List[Optional[Dict[str, Any]]] = [None] * len(tasks)
    bar = tqdm(total=len(tasks), desc="compile-report", unit="cfg", file=sys.stderr,
               disable=(not sys.stderr.isatty()) if progress is None else not progress)
    # Fresh (spawned) workers: they import the kernels without TRITON_INTERPRET,
    # whatever this process was started with.
    with _without_interpreter():
        pool = ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=_worker_init)
        # Biggest tiles first: they take longest, so the pool drains evenly.
        order = sorted(range(len(tasks)), key=lambda i: -_tile_volume(tasks[i][1]))
        futures = {pool.submit(_compile_task, *tasks[i], ptxas, max_spill): i for i in order}
    with pool:
        for fut in as_completed(futures):
            i = futures[fut]
            try:
                results[i] = fut.result()
            except Exception as exc:  # a worker died (e.g. the compiler crashed)
                fam, tile, kwargs, dtype, arch_name = tasks[i]
                cfg = triton.Config(kwargs, num_warps=tile[3], num_stages=tile[4])
                results[i] = dict(kernel=fam, config=config_name(cfg), arch=arch_name, dtype=dtype, ok=False,
                                  launchable=True, status="FAIL", reason="worker crashed",
                                  error=f"{type(exc).__name__}: {exc}")
            bar.update(1)
    bar.close()
    records = [r for r in results if r is not None]
    elapsed = time.perf_counter() - t0
    out = file or sys.stdout
    if json:
        _json.dump(records, out, indent=1)
        out.write("\n")
        print(_summary(records, elapsed, jobs), file=sys.stderr)
    else:
        print(format_table(records), file=out)
        print(_summary(records, elapsed, jobs), file=out)
    return records


def failures(records: Iterable[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """Records of configs the runtime can launch that failed a check."""
    return [r for r in records if r.get("launchable", True) and not r.get("ok")]


_COLUMNS = (
    ("kernel", "kernel"), ("arch", "arch"), ("dtype", "dtype"), ("config", "config"),
    ("registers", "regs"), ("spills", "spills"), ("shared_bytes", "shared"), ("tensor_core", "tc"),
    ("tma_loads", "tma"), ("mma_async", "async"), ("mma_a", "A from"), ("a_hazards", "A hazards"),
    ("serialized", "serial"),
    ("step_instructions", "step instr"), ("step_divisions", "step div"),
    ("other_instructions", "other instr"), ("other_divisions", "other div"), ("status", "status"), ("reason", "reason"),
)


def format_table(records: Sequence[Dict[str, Any]]) -> str:
    rows = [[h for _, h in _COLUMNS]]
    for r in records:
        rows.append(["-" if r.get(k) is None else str(r.get(k)) for k, _ in _COLUMNS])
        if r.get("error") and r.get("status") != "ok":
            rows[-1][-1] = (rows[-1][-1] + ": " + r["error"].splitlines()[0])[:160]
    widths = [max(len(row[i]) for row in rows) for i in range(len(_COLUMNS) - 1)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row[:-1], widths)) + "  " + row[-1] for row in rows]
    return "\n".join(line.rstrip() for line in lines)


def _summary(records: Sequence[Dict[str, Any]], elapsed: float, jobs: int) -> str:
    n_ok = sum(r["status"] == "ok" for r in records)
    n_pruned = sum(r["status"] == "pruned" for r in records)
    n_fail = len(failures(records))
    n_serial = sum(bool(r.get("serialized")) and r.get("launchable", True) for r in records)
    return (f"{len(records)} compiled in {elapsed:.0f} s on {jobs} worker(s): {n_ok} ok, {n_fail} FAIL, "
            f"{n_pruned} pruned by the runtime (not launchable on that arch)"
            + (f"; {n_serial} launchable with their wgmmas serialized by ptxas (serial)" if n_serial else ""))


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``tritonconv compile-report``: exit 1 when a launchable config fails a check."""
    parser = argparse.ArgumentParser(
        prog="tritonconv compile-report",
        description="Compile every kernel config ahead of time (no GPU needed) and report registers, "
        "spills, shared memory and tensor-core use.",
    )
    parser.add_argument("--arch", action="append", metavar="SM",
                        help=f"target, repeatable or comma-separated: {', '.join(ARCHS)} (default sm_90)")
    parser.add_argument("--dtype", action="append", metavar="DT",
                        help=f"repeatable or comma-separated: {', '.join(DTYPES)} "
                        f"(default {','.join(DEFAULT_DTYPES)}; {','.join(SUBSET_DTYPES)} with --subset)")
    parser.add_argument("--family", action="append", metavar="NAME",
                        help=f"kernel family, repeatable: {', '.join(f.name for f in FAMILIES)} (default all)")
    parser.add_argument("--subset", action="store_true",
                        help="only the first, largest, median and smallest config of each family (CI)")
    parser.add_argument("--only", action="append", metavar="TEXT",
                        help="only configs whose name contains TEXT, e.g. '64x64x64 w4 s4' (repeatable)")
    parser.add_argument("--jobs", "-j", type=int, default=None, help="worker processes (default: CPU count)")
    parser.add_argument("--json", action="store_true", help="print a JSON list of records on stdout")
    parser.add_argument("--ptxas", default=None, help="ptxas binary to try before the ones found automatically")
    parser.add_argument("--max-spill", type=int, default=0, metavar="BYTES",
                        help="spill bytes (stores + loads) still counted as ok (default 0)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    try:
        records = run(
            arch=args.arch, dtypes=args.dtype, families=_as_list(args.family, [f.name for f in FAMILIES]),
            subset=args.subset, jobs=args.jobs, json=args.json, only=args.only, ptxas=args.ptxas,
            max_spill=args.max_spill, progress=False if args.no_progress else None,
        )
    except (ValueError, KeyError) as exc:
        parser.error(str(exc))
    if not records:
        print("no configs matched", file=sys.stderr)
        return 2
    return 1 if failures(records) else 0


if __name__ == "__main__":
    # Re-enter through the package so worker processes unpickle
    # tritonconv.compile_report functions, not __main__'s copies.
    from tritonconv.compile_report import main as _main

    sys.exit(_main())
