"""Routing each conv problem to the kernel families built for its shape.

    ==========  ===============================================  ==========================
    direction   families, most specialised first                  accepts
    ==========  ===============================================  ==========================
    forward     depthwise  (direct, no tl.dot)                   groups == C, R*S <= 81
                smallc     (flattened R*S*C reduction)           C/groups <= 8
                smallc_pad (smallc on channel-padded copies)     C <= 8, groups == 1
                smallc_rows (smallc_pad, a kernel row a step)    C <= 8, groups == 1, S*C_PITCH <= 64
                gemm1x1_tma  (plain GEMM, TMA loads, sm_90)      1x1, stride 1, no padding, NHWC
                gemm1x1    (plain GEMM; at stride s, every s-th pixel)  1x1, no padding
                splitk     (implicit GEMM, reduction split; TMA weight on sm_90) N*P*Q <= 4096, R*S*C/g >= 512
                tap_tma_splitk (tap_tma, reduction split; sm_90)  as splitk and tap_tma; NHWC x, KRSC w
                tap_tma    (TMA input boxes per tap + weight, sm_90) stride 1 or dividing H, W; NHWC x, KRSC w
                tap_tma_streamk (tap_tma on a stream-K grid; sm_90)  as tap_tma, N*P*Q <= fprop.TAP_TMA_STREAMK_MAX_PIXELS
                implicit_tma (TMA weight loads, sm_90)           everything; KRSC weight for TMA
                implicit   (general implicit GEMM, fprop.py)     everything
    grad_input  depthwise
                gemm1x1    (plain GEMM on dy, w read transposed)  1x1, no padding, one group
                tap_tma_splitk (tap_tma, phases split as splitk's) a phase splitk takes, not a 1x1 one; NHWC dy
                tap_tma    (per stride phase, a forward conv of dy on gemm1x1_tma, tap_tma or implicit_tma; sm_90) everything; NHWC dy
                tap_tma_streamk (tap_tma, phases on its stream-K grid) a phase stream-K takes, as forward; NHWC dy
                tap_tma_phased (every phase in one launch, w in place) stride > 1, <= 4 phases; NHWC dy, KRSC w, 16-bit
                tap_tma_copy (tap_tma on a flipped copy of w)     stride 1, where tap_tma reads w in place
                implicit   (phase-decomposed dgrad)              everything
    grad_weight depthwise
                smallc_pad (flattened R*S*C_PITCH columns, padded x) C <= 8, groups == 1
                gemm1x1_tma  (plain GEMM, TMA loads, sm_90)      1x1, stride 1, no padding, NHWC, 16-bit
                gemm1x1    (plain GEMM, split-K)                 1x1, stride 1, no padding, pixel-linear
                tap_tma    (TMA boxes of dy and shifted x, sm_90) as forward's tap_tma; NHWC dy and x, 16-bit
                implicit   (split-K implicit GEMM wgrad)         everything
    ==========  ===============================================  ==========================

Each family autotunes its own tiles. When more than one family accepts a
problem on a GPU, the router times every candidate once per problem key (the
shape, dtype and layouts; ``configs.kernel_time``, from a CUDA graph with L2
emptied before each call: ``configs.ROUTER_COLD``) and remembers the fastest, in memory and in the
tuning cache on disk (``tuning.save_choice``), so a later process on the same
GPU model goes straight to it; under Triton's interpreter, which cannot time anything, the most specialised family runs.
A family another one supersedes for the problem is not timed beside it (``SUPERSEDES`` and
the tables after it: a plain GEMM over the implicit ones for a 1x1; where the GPU checks timed
two side by side and one always won, the other, on problems like those measured: the tables'
comments say which). ``force(name)``
pins a family, for tests and experiments. A family whose launcher needs a layout (TMA's
16-byte rows, pixel-linear strides) is a candidate only for tensors that have it
(``LAYOUT_OK``); forced, it checks the layout itself and hands other tensors on to the next
family.

Every family is deterministic, so the same call twice gives the same bits. Where the first
call of a key fails its launch plan's check (``plans.build`` replays the kernels and
compares), the full path runs once more (one extra call, once per key; with plans on, and not
during a CUDA graph capture): a family whose two outputs differ has a race, and its output is
not to be trusted. The router warns (``UnstableKernelWarning``), drops that family for the
problem (``dropped``), saves the next choice, and computes the call on the next candidate (the
next fastest where they were timed). A forced family that does it raises, on every call. (On
an H100, tap_tma on short reductions did, 2026-11-26.)
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
import threading
import warnings
from typing import Callable, Collection, Dict, List, Optional, Tuple

import torch

from .. import configs, plans, tuning
from ..spec import Conv2dProblem
from . import depthwise, dgrad, gemm1x1, smallc, wgrad
from ._common import INTERPRETER, input_precision_for, thread_setting
from .dgrad import conv2d_dgrad
from .fprop import (
    accepts_splitk,
    accepts_tap_tma,
    accepts_tap_tma_streamk,
    conv2d_fprop,
    conv2d_fprop_splitk,
    conv2d_fprop_tap_tma,
    conv2d_fprop_tap_tma_splitk,
    conv2d_fprop_tap_tma_streamk,
    conv2d_fprop_tma,
    input_tma_usable,
    weight_tma_usable,
)
from .wgrad import conv2d_wgrad

__all__ = ["forward", "input_grad", "weight_grad", "candidates", "routed_candidates", "force", "recording",
           "FORWARD", "INPUT_GRAD", "WEIGHT_GRAD", "LAYOUT_OK", "SUPERSEDES", "SUPERSEDES_STRIDED",
           "SUPERSEDES_INPUT_GRAD", "SUPERSEDES_DEPTHWISE", "SUPERSEDES_TIMED_16BIT", "TIMED_MIN_PIXELS",
           "UnstableKernelWarning", "dropped"]

# name -> (accepts(problem), launcher), most specialised first
FORWARD: Dict[str, Tuple[Callable, Callable]] = {
    "depthwise": (depthwise.accepts, depthwise.conv2d_fprop_depthwise),
    # the gather first: untimed (tests, the interpreter) the stem runs without a copy of x
    "smallc": (smallc.accepts, smallc.conv2d_fprop_smallc),
    "smallc_pad": (smallc.accepts_pad, smallc.conv2d_fprop_smallc_pad),
    "smallc_rows": (smallc.accepts_rows, smallc.conv2d_fprop_smallc_rows),
    "gemm1x1_tma": (gemm1x1.accepts, gemm1x1.conv2d_fprop_1x1_tma),
    "gemm1x1": (gemm1x1.accepts_strided, gemm1x1.conv2d_fprop_1x1),
    "splitk": (accepts_splitk, conv2d_fprop_splitk),
    "tap_tma_splitk": (lambda pb: accepts_splitk(pb) and accepts_tap_tma(pb), conv2d_fprop_tap_tma_splitk),
    "tap_tma": (accepts_tap_tma, conv2d_fprop_tap_tma),
    # after tap_tma, which accepts all it does: never the untimed choice (tests, the interpreter); timed
    # on a GPU, but not in 16-bit from TIMED_MIN_PIXELS output pixels (SUPERSEDES_TIMED_16BIT)
    "tap_tma_streamk": (accepts_tap_tma_streamk, conv2d_fprop_tap_tma_streamk),
    "implicit_tma": (lambda pb: True, conv2d_fprop_tma),
    "implicit": (lambda pb: True, conv2d_fprop),
}
INPUT_GRAD: Dict[str, Tuple[Callable, Callable]] = {
    "depthwise": (depthwise.accepts, depthwise.conv2d_dgrad_depthwise),
    "gemm1x1": (gemm1x1.accepts_dgrad, dgrad.conv2d_dgrad_1x1),
    "tap_tma_splitk": (dgrad.accepts_tap_tma_splitk, dgrad.conv2d_dgrad_tap_tma_splitk),
    "tap_tma": (dgrad.accepts_tap_tma, dgrad.conv2d_dgrad_tap_tma),
    # after tap_tma, as in FORWARD: never the untimed choice
    "tap_tma_streamk": (dgrad.accepts_tap_tma_streamk, dgrad.conv2d_dgrad_tap_tma_streamk),
    "tap_tma_phased": (dgrad.accepts_tap_tma_phased, dgrad.conv2d_dgrad_tap_tma_phased),
    # after tap_tma: the in-place read stays the untimed choice
    "tap_tma_copy": (dgrad.accepts_tap_tma_copy, dgrad.conv2d_dgrad_tap_tma_copy),
    "implicit": (lambda pb: True, conv2d_dgrad),
}
WEIGHT_GRAD: Dict[str, Tuple[Callable, Callable]] = {
    "depthwise": (depthwise.accepts, depthwise.conv2d_wgrad_depthwise),
    "smallc_pad": (smallc.accepts_pad, smallc.conv2d_wgrad_smallc_pad),
    "gemm1x1_tma": (gemm1x1.accepts, gemm1x1.conv2d_wgrad_1x1_tma),
    "tap_tma": (wgrad.accepts_tap_tma, wgrad.conv2d_wgrad_tap_tma),
    "gemm1x1": (gemm1x1.accepts, gemm1x1.conv2d_wgrad_1x1),
    "implicit": (lambda pb: True, conv2d_wgrad),
}

# Families that serve a problem only for some tensor layouts (TMA's 16-byte rows on
# sm_90, evenly strided pixels). Their launchers check this themselves and fall back
# to the next family; the router checks first, so that it neither times a fallback
# against the kernel it falls back to nor reports a family that did not run.
# (direction, family) -> usable(tensors, problem), tensors as _route receives them.
LAYOUT_OK: Dict[Tuple[str, str], Callable[[tuple, Conv2dProblem], bool]] = {
    ("forward", "gemm1x1_tma"): lambda t, pb: gemm1x1.tma_usable(t[0], t[1], pb),
    ("forward", "tap_tma"): lambda t, pb: input_tma_usable(t[0], t[1], pb),
    ("forward", "tap_tma_splitk"): lambda t, pb: input_tma_usable(t[0], t[1], pb),
    ("forward", "tap_tma_streamk"): lambda t, pb: input_tma_usable(t[0], t[1], pb),
    ("forward", "implicit_tma"): lambda t, pb: weight_tma_usable(t[1], pb),
    ("input_grad", "tap_tma"): lambda t, pb: dgrad.tap_tma_usable(t[0], t[1], pb),
    ("input_grad", "tap_tma_splitk"): lambda t, pb: dgrad.tap_tma_usable(t[0], t[1], pb),
    ("input_grad", "tap_tma_streamk"): lambda t, pb: dgrad.tap_tma_usable(t[0], t[1], pb),
    ("input_grad", "tap_tma_phased"): lambda t, pb: dgrad.tap_tma_phased_usable(t[0], t[1], pb),
    ("input_grad", "tap_tma_copy"): lambda t, pb: dgrad.tap_tma_copy_usable(t[0], t[1], pb),
    ("weight_grad", "gemm1x1_tma"): lambda t, pb: gemm1x1.wgrad_tma_usable(t[0], t[1], pb),
    ("weight_grad", "gemm1x1"): lambda t, pb: gemm1x1.wgrad_accepts_layout(t[0], t[1]),
    ("weight_grad", "tap_tma"): lambda t, pb: wgrad.tap_tma_usable(t[0], t[1], pb),
}

# A plain-GEMM family computes the problems it accepts with the same loads as the
# implicit-GEMM families minus their index arithmetic, so where one of them can run,
# timing those is tuning time spent for nothing (a 1x1 layer would otherwise time
# five families). Split-K stays a candidate: for small M it fills the GPU better.
SUPERSEDES: Dict[str, Tuple[str, ...]] = {
    "gemm1x1_tma": ("tap_tma", "tap_tma_splitk", "tap_tma_streamk", "implicit_tma", "implicit"),
    "gemm1x1": ("tap_tma", "tap_tma_splitk", "tap_tma_streamk", "implicit_tma", "implicit"),
}
# A strided 1x1 (ResNet's downsampling) has no gemm1x1_tma: gemm1x1 reads its pixels by pointer,
# so it supersedes only the implicit GEMM's pointer loads, and the TMA families are timed against it.
SUPERSEDES_STRIDED: Dict[str, Tuple[str, ...]] = {"gemm1x1": ("implicit",)}
# A 1x1 dgrad on gemm1x1 reads w transposed in place, by pointer; tap_tma's runs gemm1x1_tma on a
# transposed copy of w (a launch of its own): either can be faster, so both are timed.
SUPERSEDES_INPUT_GRAD: Dict[str, Tuple[str, ...]] = {"gemm1x1": ("implicit",)}
# Where the GPU checks timed two families side by side and one was faster every time, the other
# is not timed beside it (perf/results/, H100, channels_last, N = 32, the checks of 2026-11-26 and
# 27 after the first, whose router timed the host as well; one layer, dtype and check a
# comparison; details.md's families column). The comparisons are fp16 but two bf16 ones; the
# rules take bf16 too (the same kernels), and layers larger than those measured (the losers there
# are the pointer-load twins of the winners, and split-K and stream-K, which exist for layers of
# few tiles); not smaller ones (TIMED_MIN_PIXELS):
# - the depthwise forward with one channel a group (MobileNetV2's, ConvNeXt-T's 7x7): the direct
#   kernel against smallc (one channel a group is a small C) and the implicit GEMM (a grouped GEMM
#   of one column a group), 10 of 10 each, 15x to 31x and 34x to 84x faster. (The dgrad and wgrad
#   of a depthwise layer were never timed on a GPU: there both are still timed.)
SUPERSEDES_DEPTHWISE: Dict[str, Tuple[str, ...]] = {"depthwise": ("smallc", "implicit")}
# - in 16-bit, on the layers swept (1,568 output pixels and more: TIMED_MIN_PIXELS): the
#   forward's implicit_tma against the implicit GEMM (58 of 58, 1.02x to 2.1x), tap_tma against its
#   stream-K grid (18 of 18, 1.05x to 26x), gemm1x1 and gemm1x1_tma against splitk (19 of 19 and 14
#   of 14, 1.3x to 4.3x); the wgrad's tap_tma against the implicit GEMM (12 of 12, 1.6x to 2.4x).
#   Not splitk against tap_tma_splitk (14 of 15) nor any dgrad pair: each lost somewhere.
SUPERSEDES_TIMED_16BIT: Dict[str, Dict[str, Tuple[str, ...]]] = {
    "forward": {"implicit_tma": ("implicit",), "tap_tma": ("tap_tma_streamk",), "gemm1x1": ("splitk",),
                "gemm1x1_tma": ("splitk",)},
    "weight_grad": {"tap_tma": ("implicit",)},
}
# Fewer output pixels than the layers measured: fewer tiles than SMs, where split-K and stream-K
# are for; there every family is timed.
TIMED_MIN_PIXELS = 1568

_forced = threading.local()
_choice: Dict[tuple, str] = {}
# what each candidate took (ms) where this process timed them, by the same key as _choice
_timings: Dict[tuple, Dict[str, float]] = {}
# (list, with_timings) of each open ``recording()`` block; process-wide, because autograd runs
# CUDA backward ops on a thread of its own
_records: List[Tuple[list, bool]] = []
_records_lock = threading.Lock()
# (direction, problem, layout key, variant) -> the families found not deterministic on it
_dropped: Dict[tuple, set] = {}


class UnstableKernelWarning(RuntimeWarning):
    """A kernel family gave two different results for the same call (see the module's doc)."""


class _Unstable(Exception):
    pass


def dropped() -> Dict[tuple, set]:
    """The families dropped for a problem because two identical calls gave different bits."""
    return {k: set(v) for k, v in _dropped.items()}


@contextlib.contextmanager
def recording(timings: bool = False):
    """Collect (direction, family) for every problem routed inside the block (the family that
    ran, after any timing of candidates), e.g. for the benchmark to say which family won.

    With ``timings``, (direction, family, {candidate: ms}) instead: what each candidate family
    took when the router timed them for this problem in this process (its own tuned tiles,
    the winner included), or None where nothing was timed (one candidate, a forced family, the
    interpreter, or a choice read from the tuning cache)."""
    seen: list = []
    with _records_lock:
        _records.append((seen, timings))
    try:
        yield seen
    finally:
        with _records_lock:  # by identity: two blocks' lists may be equal
            del _records[next(i for i, (s, _) in enumerate(_records) if s is seen)]


def _record(direction: str, name: str, timed: Optional[Dict[str, float]] = None) -> None:
    if _records:
        with _records_lock:
            for seen, with_timings in _records:
                seen.append((direction, name, dict(timed) if timed else None) if with_timings else (direction, name))


@contextlib.contextmanager
def force(name: Optional[str]):
    """Run every problem the family ``name`` accepts on it (None: route normally)."""
    known = set(FORWARD) | set(INPUT_GRAD) | set(WEIGHT_GRAD)
    if name is not None and name not in known:
        raise ValueError(f"unknown kernel family {name!r}; expected one of {sorted(known)}")
    with thread_setting(_forced, "name", name):
        yield


def candidates(table: Dict[str, Tuple[Callable, Callable]], problem: Conv2dProblem) -> List[str]:
    """The families of ``table`` that accept ``problem``, most specialised first."""
    forced = getattr(_forced, "name", None)
    names = [name for name, (accepts, _) in table.items() if accepts(problem)]
    if forced in names:
        return [forced]
    return names


def _layout_key(*tensors) -> tuple:
    # 16-byte alignment too: the TMA families' LAYOUT_OK depends on it, so a view at an odd
    # offset must not reuse a choice made for an aligned tensor. Plain data (the dtype's
    # name), so that the tuning cache can save it.
    return tuple((str(t.dtype), tuple(t.stride()), t.data_ptr() % 16 == 0) if t is not None else None
                 for t in tensors)


_TABLES = {"forward": FORWARD, "input_grad": INPUT_GRAD, "weight_grad": WEIGHT_GRAD}


def _load_choices(device: str) -> None:
    """Bring the tuning cache's saved choices for ``device`` into ``_choice`` (once per process).
    An entry naming a family that no longer accepts its problem is skipped."""
    choices = tuning.router_choices_once(device)  # {} after the first call: this is the per-call path
    if not choices:
        return
    n_fields = len(dataclasses.fields(Conv2dProblem))
    for raw, name in choices.items():
        if len(raw) != 4:
            continue
        direction, fields, layout, variant = raw
        if not isinstance(fields, tuple) or len(fields) != n_fields or any(type(f) is not int for f in fields):
            continue  # not a problem this code wrote (ints, not bools)
        problem = Conv2dProblem(*fields)
        table = _TABLES.get(direction, {})
        if name in table and table[name][0](problem):
            _choice.setdefault((direction, problem, layout, variant, device), name)


def routed_candidates(table, direction: str, problem: Conv2dProblem, tensors: tuple,
                      dropped: Collection[str] = ()) -> List[str]:
    """The families ``_route`` chooses among for these tensors: ``candidates``, less those whose
    layout the tensors lack (``LAYOUT_OK``), those ``dropped`` for the problem (not deterministic
    there), and those a remaining family supersedes (``SUPERSEDES``; ``SUPERSEDES_STRIDED`` for a
    strided 1x1, ``SUPERSEDES_INPUT_GRAD`` for dgrad; ``SUPERSEDES_DEPTHWISE`` for a depthwise
    forward with one channel a group; ``SUPERSEDES_TIMED_16BIT`` in 16-bit from
    ``TIMED_MIN_PIXELS`` output pixels): a dropped family supersedes nothing. A forced family
    stays alone (and falls back by itself)."""
    names = candidates(table, problem)
    if getattr(_forced, "name", None) in names:
        return names
    names = [n for n in names if n not in dropped
             and LAYOUT_OK.get((direction, n), lambda t, pb: True)(tensors, problem)]
    if direction == "input_grad":
        tables = [SUPERSEDES_INPUT_GRAD]
    else:
        tables = [SUPERSEDES if gemm1x1.accepts(problem) else SUPERSEDES_STRIDED]
    pb = problem
    if direction == "forward" and pb.groups == pb.C == pb.K:
        tables.append(SUPERSEDES_DEPTHWISE)
    if tensors[0].element_size() == 2 and pb.N * pb.P * pb.Q >= TIMED_MIN_PIXELS:
        tables.append(SUPERSEDES_TIMED_16BIT.get(direction, {}))
    superseded = {d for n in names for t in tables for d in t.get(n, ())}
    return [n for n in names if n not in superseded]


def _on_gpu(t: torch.Tensor) -> bool:
    """Whether candidates are timed: a CUDA tensor, Triton compiling (not interpreting), and
    tuning on (``configs.TUNE``: tests turn it off, and run the most specialised family)."""
    return configs.TUNE and not INTERPRETER and t.is_cuda


def _device_name(t: torch.Tensor) -> str:
    return torch.cuda.get_device_name(t.device)


def call_state(lead: torch.Tensor) -> tuple:
    """What besides the problem, the tensors and the variant can change a call's launches: the
    forced family, whether tuning is on, and the precision (an fp32 call's kernels take TF32 or
    not from cuDNN's allow_tf32 as it is at the call, and a plan replays the recorded call's
    kernels). Part of every plan's key."""
    return getattr(_forced, "name", None), configs.TUNE, input_precision_for(lead)


def replay_memo(memo_key: tuple, tensors: tuple) -> Optional[torch.Tensor]:
    """``replay`` of the plan that the call with caller key ``memo_key`` was routed to, on
    ``tensors`` (the tensors that call gave the router), or None: no such call yet, no plan, or it
    can't run now. ``memo_key`` must determine the plan key, ``call_state`` included: the op
    layer's (``ops._memo``) is the op, its other arguments and ``plans.tensor_key`` of strided
    tensors; what the problem's validation and the routing decide, which this skips, depends on
    nothing else."""
    plan_key = plans.memo.get(memo_key)
    return None if plan_key is None else replay(plan_key, tensors)


def replay(plan_key: tuple, tensors: tuple) -> Optional[torch.Tensor]:
    """The output of ``plan_key``'s plan on ``tensors``, or None where it has none or it can't run
    now (the caller takes the full path, which also records a plan where there is none)."""
    plan = plans.lookup(plan_key)
    if plan is None:
        return None
    try:
        out = plan.replay(tensors)
    except Exception as err:  # never fail a call for its shortcut: the full path decides
        plans.forget(plan_key, f"replay failed: {type(err).__name__}: {str(err)[:160]}")
        return None
    if out is not None:
        if _records:
            _record(plan_key[0], plan.family, plan.timings)
        if plan.configs and tuning.config_recording():
            tuning.note_configs(plan.configs)
    return out


def _route(table, direction: str, problem: Conv2dProblem, tensors: tuple, variant: str,
           run: Callable[[Callable], torch.Tensor], scalars: tuple = (), memo_key: Optional[tuple] = None):
    """Run ``problem`` on the family of ``table`` chosen for it; ``variant`` is what else, beyond
    the problem and the tensors' layouts, can change which family is fastest (the epilogue, the
    output's memory format), so it is part of the remembered choice's key. ``scalars`` are the
    call's other values the kernels take as they are (leaky_relu's slope): a plan is recorded
    per value, as it replays the recorded call's.

    A call whose key has a launch plan (``plans``) replays it and skips the rest; the first call
    with a key records one, on the family chosen for it. ``memo_key``, the caller's own key for
    the call, is remembered with the plan key (``replay_memo``)."""
    lead = tensors[0]
    if lead.is_cuda and lead.get_device() != torch.cuda.current_device():
        # Triton launches on the current device (and times there), and no device guard set it
        # as aten's ops have one: run the call with the tensors' device current, as F.conv2d does
        with torch.cuda.device(lead.device):
            return _route(table, direction, problem, tensors, variant, run, scalars, memo_key)
    forced = getattr(_forced, "name", None)
    plan_key = None
    if plans.ENABLED:
        plan_key = (direction, problem, variant) + call_state(tensors[0]) + (scalars, plans.tensor_key(tensors))
        if memo_key is not None:
            plans.remember(memo_key, plan_key)
        out = replay(plan_key, tensors)
        if out is not None:
            return out
    pinned = forced in table and table[forced][0](problem)
    timed = _on_gpu(tensors[0]) and not pinned
    drop_key = (direction, problem, _layout_key(*tensors), variant)
    key = device = None
    if timed:
        # the choice depends only on what the key holds (LAYOUT_OK reads dtypes, strides,
        # alignment and the device), so a known problem skips the candidate checks
        device = _device_name(tensors[0])
        key = drop_key + (device,)
        _load_choices(device)
        name = _choice.get(key)
        if name is not None and name not in _dropped.get(drop_key, ()):
            return _run_trusted(plan_key, tensors, run, table, direction, problem, variant, key, name,
                                _timings.get(key), scalars)
    names = routed_candidates(table, direction, problem, tensors, _dropped.get(drop_key, ()))
    if not names:
        raise RuntimeError(f"tritonconv: no kernel family left for {direction} of {problem}: "
                           f"{sorted(_dropped[drop_key])} gave different results for identical calls")
    if len(names) == 1 or not timed:
        if timed:
            _choice[key] = names[0]
            if drop_key in _dropped:  # a later process must not start on the dropped family again
                _save_choice(key, names[0])
        return _run_trusted(plan_key, tensors, run, table, direction, problem, variant, key, names[0], None,
                            scalars)
    timings = {}
    fallbacks = configs.WARM_FALLBACKS
    # one L2 flush for every candidate (a 256 MiB buffer: allocated once, so all are timed alike;
    # where it cannot be, kernel_time tries for itself and falls back to warm, counted)
    flush = None
    if configs.ROUTER_COLD:
        with contextlib.suppress(Exception):
            flush = configs.l2_flush()
    for cand in names:
        launcher = table[cand][1]
        run(launcher)  # the family's own autotuning happens here, once
        timings[cand] = configs.kernel_time(lambda: run(launcher), cold=configs.ROUTER_COLD, flush=flush)
    del flush
    name = min(timings, key=timings.get)
    _choice[key], _timings[key] = name, timings
    if configs.WARM_FALLBACKS == fallbacks:  # a choice timed warm where cold was asked stays in memory
        _save_choice(key, name)
    return _run_trusted(plan_key, tensors, run, table, direction, problem, variant, key, name, timings, scalars)


def _save_choice(key: tuple, name: str) -> None:
    """``tuning.save_choice`` for the router's key (direction, problem, layouts, variant, device)."""
    direction, problem, layouts, variant, device = key
    tuning.save_choice(device, (direction, dataclasses.astuple(problem), layouts, variant), name)


_OWN_DIRS = tuple(os.path.dirname(m.__file__) + os.sep for m in (torch,)) + (
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep,)


def _user_stacklevel() -> int:
    """The ``stacklevel`` of the first caller outside tritonconv and torch (for a warning to
    point at the user's line), or 1 where there is none (autograd's backward thread)."""
    frame, level = sys._getframe(1), 1
    while frame is not None and frame.f_code.co_filename.startswith(_OWN_DIRS):
        frame, level = frame.f_back, level + 1
    return level if frame is not None else 1


def _run_trusted(plan_key, tensors: tuple, run: Callable[[Callable], torch.Tensor], table, direction: str,
                 problem: Conv2dProblem, variant: str, key: Optional[tuple], name: str,
                 timings: Optional[Dict[str, float]], scalars: tuple = ()) -> torch.Tensor:
    """``_run_planned`` on family ``name`` (recorded for ``recording`` once it has run); where that
    finds the family not deterministic, the family is dropped for the problem and the call routed
    again (see the module's doc)."""
    try:
        out = _run_planned(plan_key, tensors, run, table[name][1], name, timings)
    except _Unstable:
        pass
    else:
        _record(direction, name, timings)
        return out
    plans.discard(plan_key)  # the next family records its own plan; a forced one checks again
    if getattr(_forced, "name", None) == name:
        raise RuntimeError(f"tritonconv: the forced {name} family gave different results for two identical "
                           f"{direction} calls of {problem}: its kernels are not deterministic there")
    drop_key = (direction, problem, _layout_key(*tensors), variant)
    _dropped.setdefault(drop_key, set()).add(name)
    # and its plans for the problem, recorded by calls with other scalars (a slope) or tensors
    plans.discard_where(lambda k, plan: k[:3] == (direction, problem, variant) and plan.family == name)
    warnings.warn(f"tritonconv: the {name} kernels gave different results for two identical {direction} calls "
                  f"of {problem}; they are not used for it from now on", UnstableKernelWarning,
                  stacklevel=_user_stacklevel())
    if key is not None:
        _choice.pop(key, None)
        rest = {n: t for n, t in (timings or {}).items() if n not in _dropped[drop_key]}
        if key in _timings:
            _timings[key] = rest
        if rest:  # the next fastest of those timed: no need to time them again
            _choice[key] = min(rest, key=rest.get)
            _save_choice(key, _choice[key])
    return _route(table, direction, problem, tensors, variant, run, scalars)


def _run_planned(plan_key, tensors: tuple, run: Callable[[Callable], torch.Tensor], launcher: Callable,
                 family: str, timings: Optional[Dict[str, float]]) -> torch.Tensor:
    """``run(launcher)``; the first time for ``plan_key``, recording its launches into a plan.
    Raises ``_Unstable`` where the plan's check failed and a second full call disagrees too."""
    if plan_key is None or plans.known(plan_key) or (tensors[0].is_cuda and torch.cuda.is_current_stream_capturing()):
        return run(launcher)
    with plans.recording() as launches:
        out = run(launcher)
    if plans.build(plan_key, launches, tensors, out, family, timings) is None and plans.why(plan_key) == plans.DIFFERS:
        # the replay ran this call's kernels again and got other bits: either torch work outside
        # them (the plan can't hold it; a missed shortcut), or kernels that are not deterministic
        if not plans.same_bits(out, run(launcher)):
            raise _Unstable(family)
    return out


def _dense(bias: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """The epilogues read bias[k] at b_ptr + k: a strided or expanded bias is made dense (K elements)."""
    return bias if bias is None or bias.stride() == (1,) else bias.contiguous()


def forward(x, w, bias, problem: Conv2dProblem, activation="none", alpha=0.01, residual=None,
            memo_key: Optional[tuple] = None) -> torch.Tensor:
    """conv2d forward (with the fused epilogue) on the best family for ``problem`` (``memo_key``: see ``_route``)."""
    bias = _dense(bias)
    return _route(
        FORWARD, "forward", problem, (x, w, bias, residual), activation,
        lambda launch: launch(x, w, bias, problem, activation=activation, alpha=alpha, residual=residual),
        (alpha,), memo_key,
    )


def input_grad(dy, w, problem: Conv2dProblem, bias=None, memory_format=torch.contiguous_format,
               memo_key: Optional[tuple] = None) -> torch.Tensor:
    """dgrad (and conv_transpose2d's forward) on the best family for ``problem`` (``memo_key``: see
    ``_route``); chosen apart where the phase weights are kept (``dgrad.phase_weights_kept``: the
    families that copy w pay for the copy once there, each call elsewhere)."""
    bias = _dense(bias)
    variant = str(memory_format) + (", phase weights kept" if dgrad.phase_weights_kept() else "")
    return _route(
        INPUT_GRAD, "input_grad", problem, (dy, w, bias), variant,
        lambda launch: launch(dy, w, problem, bias=bias, memory_format=memory_format), memo_key=memo_key,
    )


def weight_grad(dy, x, problem: Conv2dProblem, memory_format=torch.contiguous_format,
                memo_key: Optional[tuple] = None) -> torch.Tensor:
    """wgrad on the best family for ``problem`` (every family is deterministic; ``memo_key``: see ``_route``)."""
    return _route(
        WEIGHT_GRAD, "weight_grad", problem, (dy, x), str(memory_format),
        lambda launch: launch(dy, x, problem, memory_format=memory_format), memo_key=memo_key,
    )
