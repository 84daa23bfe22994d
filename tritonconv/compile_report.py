"""Compile report: build every autotune config ahead of time and check what it costs.

Triton compiles for a GPU without one being present, so this runs on any
machine: each (kernel family, config, dtype) is compiled for a target arch and
its PTX is assembled again with ``ptxas -v`` to read registers and spills. A
config passes when it

    * compiles (Triton to PTX to cubin),
    * does not spill (0 bytes spill stores and loads),
    * fits the arch's shared memory (Triton's own figure, ``metadata.shared``),
    * uses the tensor-core instruction its dtype should use on that arch:
      fp16/bf16 need wgmma on sm_90 (mma.sync on sm_80/86/89); fp32, which runs
      as TF32 by default (torch.backends.cudnn.allow_tf32), needs a tensor-core
      instruction of either kind; fp64 and fp32-ieee need none (the report
      still says whether the f64 mma.sync is used).

Configs the runtime pruner (``configs.prune_gemm_configs``) removes for a large
problem on that arch can never be launched there. They are still compiled and
reported, with status "pruned" instead of "FAIL", and they do not affect the
exit status: the goal is that every config that can actually run builds, does
not spill and uses tensor cores. ``ok`` is the strict result of the checks for
every row; ``status`` is "ok", "FAIL" (a launchable config failed) or "pruned".

Representative problem. A kernel's code depends on how Triton specializes its
integer arguments at launch: an int equal to 1 becomes the constexpr 1 and an
int divisible by 16 gets a divisibility hint, which is what lets loads along a
stride-1 axis become 16-byte vectors. Rather than compiling a general "every
int is i32" kernel that no launch would ever produce, each family describes
one representative launch (for fprop: a ResNet-50 3x3 layer, channels_last)
and the report applies Triton's launch-time rules to it (``specialize``).
Other launches specialize differently (stride 2, odd channel counts, NCHW);
the accumulator, the pipelined tiles and the MMA instruction stay the same,
the address arithmetic and load vectorization do not, so the numbers are
those of the fast layout. What follows the reduction changes register
pressure as much as the tile does, which is why fprop_kernel is registered
three times (see FAMILIES).

Usage::

    python -m tritonconv.compile_report --arch sm_90 --arch sm_80
    python -m tritonconv.compile_report --arch sm_90 --subset --json

Adding a kernel family is one ``KernelFamily`` entry in ``FAMILIES``: the jit
function, its config list, and a function that returns the representative
launch's arguments through ``specialize``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import glob
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
from .kernels import _common, fprop
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

SignatureFn = Callable[[Dtype, triton.Config], Tuple[Dict[str, str], Dict[str, Any], Dict[str, list]]]


def _gemm_runtime_configs(configs: List[triton.Config], elem_bytes: int, shared_limit: int) -> List[triton.Config]:
    """What the GEMM families' runtime pruner keeps for a problem large in M, N and K.

    A large problem means no tile is clamped, so a config removed here is never
    launched as listed on that arch (shared memory, the fp64 size cap); narrow
    problems may still launch a variant the pruner clamps to the problem size
    (e.g. BLOCK_K = 16 for C = 3), which the report does not compile.
    """
    big = 1 << 20
    return tc_configs.prune_gemm_configs(list(configs), big, big, big, elem_bytes, shared_limit)


@dataclasses.dataclass(frozen=True)
class KernelFamily:
    """One @triton.jit kernel and how to compile it for the report.

    The report assumes a tl.dot GEMM kernel whose configs carry BLOCK_M,
    BLOCK_N and BLOCK_K (all of fprop, dgrad and wgrad do).

    Attributes:
        name: the family's name in the report ("fprop").
        fn: the @triton.jit function (not the autotuned wrapper).
        configs_fn: () -> the autotune configs the launcher can choose from.
        signature_fn: (dtype, config) -> (signature, constexprs) or
            (signature, constexprs, attrs), all keyed by argument name, for a
            representative launch; build them with ``specialize``. The config's
            meta-parameters (BLOCK_M, ...) are added by the report.
        runtime_configs_fn: (configs, elem_bytes, shared_limit) -> the configs
            the runtime pruner keeps on an arch with that shared memory.
    """

    name: str
    fn: Any
    configs_fn: Callable[[], List[triton.Config]]
    signature_fn: SignatureFn
    runtime_configs_fn: Callable[[List[triton.Config], int, int], List[triton.Config]] = _gemm_runtime_configs


def gemm_tile_configs() -> List[triton.Config]:
    """The compiled-kernel config list built from configs.GEMM_TILES.

    ``configs.gemm_configs()`` returns the interpreter's single config when
    TRITON_INTERPRET=1 is set in this process, so the list is rebuilt here
    from the same table with the same fixed GROUP_M.
    """
    return [
        triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": 8}, num_warps=w, num_stages=s)
        for bm, bn, bk, w, s in tc_configs.GEMM_TILES
    ]


def specialize(fn, args: Dict[str, Any], constexprs: Dict[str, Any]):
    """Triton's launch-time specialization of ``fn`` for concrete arguments.

    Args:
        fn: the @triton.jit function.
        args: every runtime argument by name: a pointer as its Triton type
            ("*fp16"), an int or a float as its value.
        constexprs: the tl.constexpr arguments by name.

    Returns:
        (signature, constexprs, attrs) by argument name, following the rules
        JITFunction applies when it is called: an int equal to 1 is compiled as
        the constexpr 1; other ints are i32 (i64 past 2**31); an int divisible
        by 16 gets tt.divisibility = 16, and so does every pointer (PyTorch's
        allocations are at least 16-byte aligned).
    """
    signature: Dict[str, str] = {}
    consts: Dict[str, Any] = {}
    attrs: Dict[str, list] = {}
    divisible = [["tt.divisibility", 16]]
    for name in fn.arg_names:
        if name in constexprs:
            signature[name], consts[name] = "constexpr", constexprs[name]
            continue
        if name not in args:
            raise KeyError(f"{fn.__name__}: no value for argument {name!r} in the representative launch")
        value = args[name]
        if isinstance(value, str):
            signature[name], attrs[name] = value, divisible
        elif isinstance(value, float):
            signature[name] = "fp32"  # Triton never specializes a float argument
        elif isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{fn.__name__}: argument {name!r}: expected a pointer type string, an int or a float")
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


# Representative launches, channels_last (the fast layout).
# ResNet-50's first 3x3 layer (conv2_x) at batch 32: stride-1 channels,
# 16-divisible strides and channel counts.
FPROP_PROBLEM = dict(input_shape=(32, 64, 56, 56), weight_shape=(64, 64, 3, 3), stride=1, padding=1)
# ResNet-50's last 3x3 layer (conv5_x) at batch 8: the small output with a long
# reduction that the split-K family is for (fprop.accepts_splitk), in 4 chunks.
FPROP_SPLITK_PROBLEM = dict(input_shape=(8, 512, 7, 7), weight_shape=(512, 512, 3, 3), stride=1, padding=1)
FPROP_SPLITK = 4


def _fprop_signature(dtype: Dtype, config: triton.Config, *, problem: Dict[str, Any] = FPROP_PROBLEM,
                     residual: bool = False, activation: str = "none", split_k: int = 1):
    """fprop_kernel's arguments as conv2d_fprop passes them for ``problem``, with bias."""
    pb = problem_from_shapes(**problem)
    ptr = "*" + dtype.triton_ty
    x_s = _channels_last_strides(pb.input_shape)
    w_s = _channels_last_strides(pb.weight_shape)
    y_s = _channels_last_strides(pb.output_shape)
    r_s = y_s if residual else (0, 0, 0, 0)
    # split-K partial sums go to an fp32 (fp64) workspace; without split-K the launcher passes y
    ws_ptr = ("*fp64" if dtype.elem_bytes == 8 else "*fp32") if split_k > 1 else ptr
    args = dict(
        x_ptr=ptr, w_ptr=ptr, b_ptr=ptr, res_ptr=ptr, y_ptr=ptr, ws_ptr=ws_ptr,
        M=pb.N * pb.P * pb.Q, H=pb.H, W=pb.W, P=pb.P, Q=pb.Q, R=pb.R, S=pb.S,
        CG=pb.C_per_group, KG=pb.K_per_group, GROUPS=pb.groups, SPLIT_K=split_k,
        stride_h=pb.stride_h, stride_w=pb.stride_w, pad_h=pb.pad_h, pad_w=pb.pad_w,
        dil_h=pb.dil_h, dil_w=pb.dil_w,
        **dict(zip(("sxn", "sxc", "sxh", "sxw"), x_s)),
        **dict(zip(("swk", "swc", "swr", "sws"), w_s)),
        **dict(zip(("syn", "syk", "syp", "syq"), y_s)),
        **dict(zip(("srn", "srk", "srp", "srq"), r_s)),
        alpha=0.01,
    )
    meta = dict(
        HAS_BIAS=True, HAS_RESIDUAL=residual, ACTIVATION=_common.activation_code(activation),
        ACC_DTYPE=dtype.acc, INPUT_PRECISION=dtype.input_precision, PARTIAL=split_k > 1,
    )
    return specialize(fprop.fprop_kernel, args, {**meta, **config.kwargs})


# One fprop_kernel, three families, because what follows the reduction changes
# register pressure as much as the tile does:
#   fprop         bias only, as F.conv2d and nn.Conv2d launch it;
#   fprop_fused   bias + residual + erf GELU, the heaviest fused epilogue (a
#                 residual tile is live next to the accumulator); a config
#                 that fits it fits every epilogue;
#   fprop_splitk  split-K partial sums stored raw (PARTIAL), no epilogue.
FAMILIES: List[KernelFamily] = [
    KernelFamily("fprop", fprop.fprop_kernel, gemm_tile_configs, _fprop_signature),
    KernelFamily("fprop_fused", fprop.fprop_kernel, gemm_tile_configs,
                 functools.partial(_fprop_signature, residual=True, activation="gelu")),
    KernelFamily("fprop_splitk", fprop.fprop_kernel, gemm_tile_configs,
                 functools.partial(_fprop_signature, problem=FPROP_SPLITK_PROBLEM, split_k=FPROP_SPLITK)),
]

# ----------------------------------------------------------------------------
# Compiling one config
# ----------------------------------------------------------------------------

NO_PTXAS = "no usable ptxas"


def config_name(config: triton.Config) -> str:
    """'128x256x64 w8 s3' (BLOCK_M x BLOCK_N x BLOCK_K, warps, stages)."""
    kw = config.kwargs
    return f"{kw['BLOCK_M']}x{kw['BLOCK_N']}x{kw['BLOCK_K']} w{config.num_warps} s{config.num_stages}"


def _tile_key(config: triton.Config) -> Tuple:
    kw = config.kwargs
    return (kw["BLOCK_M"], kw["BLOCK_N"], kw["BLOCK_K"], config.num_warps, config.num_stages)


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


def ptxas_stats(ptx: str, capability: int, explicit_ptxas: Optional[str] = None) -> Dict[str, int]:
    """Registers and spill bytes from ``ptxas -v`` on ``ptx``.

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
            return {
                "registers": int(regs.group(1)),
                "spill_stores": int(spill.group(1)),
                "spill_loads": int(spill.group(2)),
                "ptxas": ptxas,
            }
    raise RuntimeError(f"{NO_PTXAS} for this PTX: " + "; ".join(errors))


def tensor_core_of(ptx: str) -> Tuple[str, Optional[str]]:
    """("wgmma" | "mma" | "none", the first such instruction) from PTX text."""
    for kind, pattern in (("wgmma", r"wgmma\.mma_async\S*"), ("mma", r"\bmma\.sync\S*")):
        m = re.search(pattern, ptx)
        if m:
            return kind, m.group(0)
    return "none", None


def _expected_tensor_core(dtype: Dtype, arch: Arch) -> Optional[Tuple[str, ...]]:
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


def _runtime_pruned(family: KernelFamily, config: triton.Config, dtype: Dtype, arch: Arch) -> Optional[str]:
    """Why the runtime pruner drops ``config`` on ``arch``, or None when it can launch there."""
    kept = family.runtime_configs_fn(family.configs_fn(), dtype.elem_bytes, arch.shared_limit)
    if _tile_key(config) in {_tile_key(c) for c in kept}:
        return None
    kw = config.kwargs
    estimate = tc_configs.shared_bytes(kw["BLOCK_M"], kw["BLOCK_N"], kw["BLOCK_K"], config.num_stages, dtype.elem_bytes)
    if estimate > arch.shared_limit:
        return f"runtime pruner: estimated shared {estimate} > {arch.shared_limit}"
    return "runtime pruner drops it (configs.prune_gemm_configs)"


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
        launchable (False when the runtime pruner removes it), ok (every check
        passed), status ("ok" / "FAIL" / "pruned"), reason (why not ok, and why
        pruned), error (compiler or ptxas message), compile_s.
    """
    fam = _family(family)
    dt, ar = DTYPES[dtype], ARCHS[arch]
    kw = config.kwargs
    rec: Dict[str, Any] = dict(
        kernel=fam.name, config=config_name(config), arch=arch, dtype=dtype,
        block_m=kw["BLOCK_M"], block_n=kw["BLOCK_N"], block_k=kw["BLOCK_K"],
        num_warps=config.num_warps, num_stages=config.num_stages,
        registers=None, spill_stores=None, spill_loads=None, spills=None,
        shared_bytes=None,
        shared_estimate=tc_configs.shared_bytes(kw["BLOCK_M"], kw["BLOCK_N"], kw["BLOCK_K"], config.num_stages,
                                                dt.elem_bytes),
        shared_limit=ar.shared_limit, tensor_core=None, mma_instr=None,
        launchable=True, ok=False, status="FAIL", reason=None, error=None, compile_s=None,
    )
    pruned = _runtime_pruned(fam, config, dt, ar)
    rec["launchable"] = pruned is None
    problems: List[str] = []
    t0 = time.perf_counter()
    try:
        if type(fam.fn).__name__ == "InterpretedFunction":
            raise RuntimeError("the kernel was imported under TRITON_INTERPRET=1 and cannot be compiled; "
                               "run the report in a process without it (run() does this for you)")
        spec = fam.signature_fn(dt, config)
        signature, constexprs = spec[0], spec[1]
        attrs = spec[2] if len(spec) > 2 else {}
        compiled = _triton_compile(fam.fn, signature, constexprs, attrs, ar.capability, _compile_options(config))
        rec["compile_s"] = round(time.perf_counter() - t0, 2)
        ptx = compiled.asm["ptx"]
        rec["shared_bytes"] = int(compiled.metadata.shared)
        rec["tensor_core"], rec["mma_instr"] = tensor_core_of(ptx)
        stats = ptxas_stats(ptx, ar.capability, ptxas)
        rec["registers"] = stats["registers"]
        rec["spill_stores"], rec["spill_loads"] = stats["spill_stores"], stats["spill_loads"]
        rec["spills"] = stats["spill_stores"] + stats["spill_loads"]
    except Exception as exc:  # one bad config must not stop the report
        msg = f"{type(exc).__name__}: {exc}".strip()
        rec["error"] = msg[:2000]
        problems.append(NO_PTXAS if NO_PTXAS in msg else "compile failed")
    else:
        if rec["spills"] > max_spill:
            problems.append(f"spills {rec['spills']} B ({rec['spill_stores']} stored, {rec['spill_loads']} loaded)")
        if rec["shared_bytes"] > ar.shared_limit:
            problems.append(f"shared {rec['shared_bytes']} > {ar.shared_limit}")
        expected = _expected_tensor_core(dt, ar)
        if expected and rec["tensor_core"] not in expected:
            problems.append(f"tensor cores: {rec['tensor_core']}, expected {' or '.join(expected)}")
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
    vol = lambda c: c.kwargs["BLOCK_M"] * c.kwargs["BLOCK_N"] * c.kwargs["BLOCK_K"]  # noqa: E731
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
                for cfg in fam_configs:
                    tasks.append((fam.name, _tile_key(cfg), dict(cfg.kwargs), dtype, arch))
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
        order = sorted(range(len(tasks)), key=lambda i: -(tasks[i][1][0] * tasks[i][1][1] * tasks[i][1][2]))
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
    ("status", "status"), ("reason", "reason"),
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
    return (f"{len(records)} compiled in {elapsed:.0f} s on {jobs} worker(s): {n_ok} ok, {n_fail} FAIL, "
            f"{n_pruned} pruned by the runtime (not launchable on that arch)")


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
