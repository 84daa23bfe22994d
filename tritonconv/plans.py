"""Launch plans: a conv call's kernel launches, replayed without the Python that chose them.

Deciding what to launch for a conv costs far more host time than the launch itself: the
problem is validated, the router looks up its family, the launcher derives views, TMA
descriptors and the grid, Triton's autotuner finds its config and Triton's binder
specialises some forty arguments. On an H100 that came to 140-400 us per call, against
10-40 us of kernel (perf/results/2026-11-26_H100_03b3fce/NOTES.md). None of it changes
between two calls with the same key: shapes, strides, dtypes, 16-byte alignment of every
tensor, the conv's arguments, the epilogue and the device.

So the router (``kernels.router._route``) records, the first time it meets a key, every
kernel the call launches (``record``, called by ``tuning.launch`` and ``tuning.launch_direct``),
and describes each tensor argument by where it comes from: a view of one of the call's
tensors, of the output, or of a scratch buffer, by storage offset, sizes and strides. TMA
descriptors are kept as templates whose base is such a view. A later call with the same key
allocates a fresh output (and scratch), works out each argument's address in the new tensors
(compiled launchers take a pointer as an int, and read a descriptor's base only for its address),
and hands the compiled kernels their arguments directly (``CompiledKernel.run``, the call
``JITFunction.run`` ends with in Triton 3.6 to 3.9), which costs a few microseconds a launch.
With Triton 3.6's launcher, a plan goes one step further and calls the C launcher itself, its
TMA descriptors encoded once per address (``_unroll``, below). A plan key holds the validated
problem, so making one costs the validation it saves; the op layer (``ops._memo``) keys a call
by its op, its other arguments and its tensors instead, and ``memo`` maps that key to the plan
key of the call's first time (``remember``): a call met before skips the problem and the routing.
Under the interpreter, which reads tensors through their views, the views themselves are rebuilt.

A plan is trusted only after it has proved itself: right after the recorded call, it runs
once more on the same tensors, into an output and scratch poisoned with 0xFF bytes (NaN for
floats), and must give the same bits. Torch work a launcher does on the call's tensors before
its kernels (a weight repacked, an input padded) replays only where the launcher wraps it in
``derive``, which the plan then reruns per call. Other torch work (on the output, say: the
launchers do their fills and sums of partials as kernels for this reason), a tensor cached
between calls outside ``derive``, or a kernel that is not deterministic makes that check fail
(``DIFFERS``), and the key keeps the full path; so does a plan that cannot be built (arguments
aliasing each other, views across dtypes). A failed check is a missed shortcut, never a wrong
result: the call's own output is returned. The router (``kernels.router``) also reads a failed
check as a question: it runs the full path once more, and drops a family whose kernels give
other bits again.

On by default on CUDA; off under Triton's interpreter, where it saves nothing, unless
``TRITONCONV_PLANS=1`` (the tests use it: the interpreter replays the same records through
``JITFunction.run``); ``TRITONCONV_PLANS=0`` turns it off everywhere.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import threading
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from triton.runtime import driver

try:  # Triton 3.4+; before it, plans stand aside (the full path runs)
    from triton import knobs as _knobs
except ImportError:  # pragma: no cover - older Triton
    _knobs = None

from .kernels import _common
from .kernels._common import INTERPRETER

__all__ = ["ENABLED", "DIFFERS", "enabled_as", "tensor_key", "lookup", "known", "why", "discard", "same_bits",
           "forget", "memo", "remember", "discard_where", "recording", "is_recording", "record", "derive", "build",
           "clear", "stats", "reasons", "launch_forms", "Plan"]

ENABLED = os.environ.get("TRITONCONV_PLANS", "0" if INTERPRETER else "1") != "0"
# Triton 3.6's launcher unrolled per compiled launch (``_Direct``); TRITONCONV_DIRECT_LAUNCH=0
# keeps Triton's own launcher (to compare the two)
DIRECT = os.environ.get("TRITONCONV_DIRECT_LAUNCH", "1") != "0"
# the check a new plan fails when its replay's bits differ from the call's (see ``build``)
DIFFERS = "the replay's output differs from the call's"

class _Unplannable:
    """A key that keeps the full path, and why."""

    __slots__ = ("why",)

    def __init__(self, why: str):
        self.why = why


_plans: Dict[tuple, Any] = {}  # key -> Plan, or _Unplannable; least recently used first
# A plan holds no tensors, only its launches' arguments, but a process that keeps meeting new
# shapes (images of every size) would keep one per shape and layer for good: past MAX_PLANS
# keys the least recently used is dropped (met again, it records its plan anew).
MAX_PLANS = 4096
# a caller's own key for a call (its memo key) -> the call's plan key (``remember``,
# ``kernels.router.replay_memo``)
memo: Dict[tuple, tuple] = {}
_local = threading.local()
_signatures: Dict[Any, Tuple[Tuple[str, Any], ...]] = {}

# where an argument comes from: its root ("in", i): the call's i-th tensor; ("new", j): the j-th
# buffer allocated afresh per call (the output's storage is one of them); ("derived", k): the k-th
# tensor the call's ``derive`` steps returned
_IN, _NEW, _DERIVED = 0, 1, 2


@contextlib.contextmanager
def enabled_as(on: bool):
    """Turn plans on or off inside the block (tests, benchmarks of the full path)."""
    global ENABLED
    old, ENABLED = ENABLED, bool(on)
    try:
        yield
    finally:
        ENABLED = old


def tensor_key(tensors: Sequence[Optional[torch.Tensor]]) -> tuple:
    """What of the call's tensors a plan depends on: sizes, strides, dtype, device and whether the
    data is 16-byte aligned (Triton specialises pointers on it)."""
    return tuple(None if t is None else (t.shape, t.stride(), t.dtype, t.get_device(), t.data_ptr() % 16 == 0)
                 for t in tensors)


def lookup(key: tuple):
    """The validated plan for ``key``, or None (unknown, or known not to be plannable: ``known``)."""
    plan = _plans.get(key)
    if type(plan) is not Plan:
        return None
    if len(_plans) > MAX_PLANS // 2:  # near the cap, a plan in use moves to the newest end
        _plans.pop(key, None)
        _plans[key] = plan
    return plan


def known(key: tuple) -> bool:
    return key in _plans


def why(key: tuple) -> Optional[str]:
    """Why ``key`` has no plan (None: it has one, or is unknown)."""
    plan = _plans.get(key)
    return plan.why if type(plan) is _Unplannable else None


def discard(key: tuple) -> None:
    """Forget ``key`` altogether: its next call records a plan again (on another family)."""
    _plans.pop(key, None)


def discard_where(condition) -> None:
    """Forget every plan for which ``condition(key, plan)`` holds (their keys record anew)."""
    for key, plan in list(_plans.items()):
        if type(plan) is Plan and condition(key, plan):
            _plans.pop(key, None)


def forget(key: tuple, why: str = "its plan failed to replay") -> None:
    """Mark ``key`` not plannable."""
    _keep(key, _Unplannable(why))


def _keep(key: tuple, entry: Any) -> None:
    """``_plans[key] = entry``, as the newest key, within MAX_PLANS keys."""
    _plans.pop(key, None)
    _plans[key] = entry
    while len(_plans) > MAX_PLANS:
        try:
            del _plans[next(iter(_plans))]
        except (RuntimeError, StopIteration, KeyError):  # another thread changed it meanwhile
            break


def remember(memo_key: tuple, key: tuple) -> None:
    """``memo[memo_key] = key``: a caller's own key for a call (one it can make for less than the
    plan key, which it must determine) and the call's plan key. Past MAX_PLANS entries the memo
    starts afresh."""
    if len(memo) >= MAX_PLANS:
        memo.clear()
    memo[memo_key] = key


def clear() -> None:
    _plans.clear()
    memo.clear()


def stats() -> Dict[str, int]:
    """How many keys have a plan, and how many were found not plannable."""
    bad = sum(1 for p in _plans.values() if type(p) is _Unplannable)
    return {"plans": len(_plans) - bad, "unplannable": bad}


def launch_forms() -> Dict[str, int]:
    """The compiled launches of the plans kept, by how a replay issues them: ``unrolled``, with
    Triton 3.6's launcher unrolled (``_Direct``), or ``triton``, through Triton's launcher."""
    counts = {"unrolled": 0, "triton": 0}
    for p in list(_plans.values()):
        if type(p) is Plan and not p.interpreted:
            for step in p.launches:
                if type(step) is not _Derive:
                    counts["unrolled" if type(step[0]) is _Direct else "triton"] += 1
    return counts


def reasons() -> Dict[str, int]:
    """Why the keys without a plan have none: {reason: number of keys}."""
    counts: Dict[str, int] = {}
    for p in _plans.values():
        if type(p) is _Unplannable:
            counts[p.why] = counts.get(p.why, 0) + 1
    return counts


def _hook_set(hook: Any) -> bool:
    """Whether a Triton launch hook would do anything: Triton 3.6 to 3.9 default to an empty
    ``HookChain`` (never None), which the launcher calls for nothing; a profiler adds to it."""
    return hook is not None and bool(getattr(hook, "calls", True))


# --------------------------------------------------------------------------- recording


@contextlib.contextmanager
def recording():
    """Collect every launch ``record`` sees on this thread inside the block."""
    prev = getattr(_local, "launches", None)
    launches: List[tuple] = []
    _local.launches = launches
    try:
        yield launches
    finally:
        _local.launches = prev


def is_recording() -> bool:
    """Whether this thread is inside ``recording()`` (checked before building a record's arguments)."""
    return getattr(_local, "launches", None) is not None


def record(fn: Any, grid: Any, args: tuple, kwargs: Dict[str, Any], compiled: Any,
           config_of: Optional[Tuple[str, Any]] = None) -> None:
    """Note one launch of the jitted ``fn`` (``kwargs`` including the config's) while recording;
    ``compiled`` is what ``JITFunction.run`` returned (the CompiledKernel on a GPU);
    ``config_of``: (kernel name, triton.Config) for ``tuning.recording_configs``."""
    launches = getattr(_local, "launches", None)
    if launches is not None:
        launches.append((fn, grid, args, dict(kwargs), compiled, config_of))


class _Derivation:
    """A ``derive`` step as recorded: the function, its tensors, what it returned."""

    __slots__ = ("fn", "args", "results")

    def __init__(self, fn, args, results):
        self.fn, self.args, self.results = fn, args, results


def derive(fn: Callable[..., Any], *tensors: Optional[torch.Tensor]) -> Any:
    """``fn(*tensors)``: torch work a launcher does before its kernels (a weight repacked, an input
    padded) that a replay must redo for its own tensors. ``fn`` returns a tensor or a tuple or list
    of them, and reads nothing but ``tensors`` and what the plan's key fixes (the problem, the
    shapes); it must not hold the call's tensors (the plan keeps it). While recording, the step is
    noted, so the plan reruns ``fn`` on the replay's tensors and its kernels read the new results.
    A step that writes into the output fails the plan's check, and the key keeps the full path;
    one that depends on other state (a global setting, the current stream) is not caught by the
    check, which reruns it right away: such state is the launcher's to make part of ``fn``."""
    launches = getattr(_local, "launches", None)
    _local.launches = None  # kernels fn launches are its own: the replay reruns fn, not them
    try:
        results = fn(*tensors)
    finally:
        _local.launches = launches
    if launches is not None:
        launches.append(_Derivation(fn, tensors, results))
    return results


class _Derive:
    """A plan's ``derive`` step: reruns ``fn`` on its arguments' sources."""

    __slots__ = ("fn", "sources", "sequence")

    def __init__(self, fn, sources, sequence):
        self.fn, self.sources, self.sequence = fn, sources, sequence

    def run(self, spaces: tuple) -> None:
        """Append ``fn``'s results to the derived tensors, ``spaces[_DERIVED]``."""
        results = self.fn(*(None if src is None else _materialise(src, spaces) for src in self.sources))
        if self.sequence:
            spaces[_DERIVED].extend(results)
        else:
            spaces[_DERIVED].append(results)


def _signature(fn: Any) -> Tuple[Tuple[str, Any], ...]:
    sig = _signatures.get(fn)
    if sig is None:
        params = inspect.signature(fn.fn).parameters.values()
        sig = _signatures[fn] = tuple((p.name, p.default) for p in params)
    return sig


def _bind(fn: Any, args: tuple, kwargs: Dict[str, Any]) -> Dict[str, Any]:
    """Every parameter of ``fn`` with its value, in signature order, as Triton's binder makes
    them (the launcher takes them all; it skips the constexprs)."""
    bound = {}
    for i, (name, default) in enumerate(_signature(fn)):
        if i < len(args):
            bound[name] = args[i]
        elif name in kwargs:
            bound[name] = kwargs[name]
        elif default is not inspect.Parameter.empty:
            bound[name] = default
        else:
            raise _NotPlannable(f"no value for {name}")
    return bound


class _NotPlannable(Exception):
    pass


def _is_descriptor(v: Any) -> bool:
    return type(v).__name__ == "TensorDescriptor" and hasattr(v, "base")


class _Roots:
    """The storages a call's arguments live in: the call's tensors', new ones (output, scratch), and
    those its ``derive`` steps returned."""

    def __init__(self, tensors: Sequence[Optional[torch.Tensor]]):
        self.by_ptr: Dict[int, Tuple[int, int]] = {}
        self.base_offset: Dict[Tuple[int, int], int] = {}
        self.dtype: Dict[Tuple[int, int], torch.dtype] = {}
        self.new: List[Tuple[int, torch.dtype]] = []  # (elements, dtype) of each new storage
        self.n_derived = 0
        for i, t in enumerate(tensors):
            if t is None:
                continue
            if t.untyped_storage().data_ptr() in self.by_ptr:
                raise _NotPlannable("two of the call's tensors share a storage")
            self._add(t, (_IN, i), t.storage_offset())

    def _add(self, t: torch.Tensor, root: Tuple[int, int], base_offset: int) -> Tuple[int, int]:
        """Make ``t``'s storage the root ``root``, its offset ``base_offset``."""
        self.by_ptr[t.untyped_storage().data_ptr()] = root
        self.base_offset[root] = base_offset
        self.dtype[root] = t.dtype
        return root

    def add_derived(self, t: torch.Tensor) -> None:
        """The next tensor a ``derive`` step returned; its storage is a root unless already one
        (a view of an input, say)."""
        root = (_DERIVED, self.n_derived)
        self.n_derived += 1
        if t.untyped_storage().data_ptr() not in self.by_ptr:
            self._add(t, root, t.storage_offset())

    def source(self, t: torch.Tensor) -> tuple:
        """(root, sizes, strides, offset from the root's own offset) of tensor ``t``."""
        storage = t.untyped_storage()
        root = self.by_ptr.get(storage.data_ptr())
        if root is None:
            if storage.nbytes() % t.element_size():
                raise _NotPlannable("a storage that is not whole elements")
            root = self._add(t, (_NEW, len(self.new)), 0)
            self.new.append((storage.nbytes() // t.element_size(), t.dtype))
        if self.dtype[root] != t.dtype:
            raise _NotPlannable("views of one storage in two dtypes")
        return (root, tuple(t.shape), tuple(t.stride()), t.storage_offset() - self.base_offset[root])


def _materialise(src: tuple, spaces: tuple) -> torch.Tensor:
    """The view ``src`` describes, in ``spaces`` = (the call's tensors, fresh buffers, derived tensors)."""
    (kind, index), size, stride, delta = src
    base = spaces[kind][index]
    if delta == 0 and base.shape == size and base.stride() == stride:
        return base
    return base.as_strided(size, stride, base.storage_offset() + delta)


def _address(src: tuple, spaces: tuple) -> int:
    """``_materialise(src, spaces).data_ptr()`` without making the view (views of a root share its dtype)."""
    (kind, index), _, _, delta = src
    base = spaces[kind][index]
    return base.data_ptr() + delta * base.element_size()


class _Address:
    """A compiled launch's stand-in for a descriptor's base tensor: Triton's launchers read only its
    ``data_ptr()`` (to fill the TMA descriptor, or as a pointer where the descriptor is not lowered)."""

    __slots__ = ("ptr",)

    def __init__(self, ptr: int):
        self.ptr = ptr

    def data_ptr(self) -> int:
        return self.ptr


def _with_base(template: Any, base: Any) -> Any:
    """A copy of the descriptor ``template`` on ``base`` (``copy.copy`` costs several times more,
    and the dataclass's own constructor re-validates what the recorded call already did)."""
    desc = object.__new__(type(template))
    desc.__dict__.update(template.__dict__)
    desc.base = base
    return desc


# ----------------------------------------------------------------- Triton 3.6's launcher, unrolled
#
# On the H100 (Triton 3.6) a tritonconv training step of ResNet-50 made 223 launches and spent
# 44 ms on the host, cuDNN's 23 (perf/results/2026-11-27_H100_e2a622a/NOTES.md). Per launch,
# Triton's CudaLauncher.__call__ builds two closures and asks each for a scratch buffer, and for
# a kernel with TMA descriptors its wrapper (``inner``) walks every argument again, calling
# ``make_tensordesc_arg`` for each descriptor, which encodes a fresh CUtensorMap
# (``fill_tma_descriptor``) and expands it with the shape and strides. Under cProfile that
# wrapper alone took 2.4 ms of a step for 111 launches, besides 1.7 ms in the encoding.
#
# None of it changes between replays but the addresses. So where the launcher has exactly
# Triton 3.6's shape, a plan keeps the C launcher's whole argument list per launch, and a replay
# writes into it the grid's stream, each pointer, and each descriptor's CUtensorMap, encoded once
# per base address (``_DescMaps``; a training loop's caching allocator hands the same addresses
# out step after step). The list is checked once, when the plan is made, against what Triton's
# own CudaLauncher and wrapper pass for the same call (``_unroll``): any difference, or a
# launcher of another shape (Triton 3.9's), keeps Triton's path, as does a plan whose unrolled
# replay fails ``build``'s check (it is made again without), and TRITONCONV_DIRECT_LAUNCH=0.

_MAPS_KEPT = 64  # encoded descriptors kept per descriptor argument (addresses met)


class _DescMaps:
    """One descriptor argument's CUtensorMaps by base address: Triton's ``make_tensordesc_arg``
    of the template on that base, whose first entry (the map) is all that depends on it."""

    __slots__ = ("template", "meta", "make", "maps")

    def __init__(self, template: Any, meta: Any, make: Callable):
        self.template, self.meta, self.make, self.maps = template, meta, make, {}

    def get(self, address: int) -> Any:
        tma_map = self.maps.get(address)
        if tma_map is None:
            if len(self.maps) >= _MAPS_KEPT:
                self.maps.clear()
            tma_map = self.maps[address] = self.make(_with_base(self.template, _Address(address)), self.meta)[0]
        return tma_map


class _Direct:
    """A compiled launch as the C launcher takes it: ``args`` with the stream (index 3) and each
    ``slots`` entry, (index, source, _DescMaps or None for a pointer), filled in per replay."""

    __slots__ = ("launch", "args", "slots")

    def __init__(self, launch: Callable, args: list, slots: tuple):
        self.launch, self.args, self.slots = launch, args, slots


# Triton 3.6's CudaLauncher: the C launcher's leading arguments (grid, stream, function,
# cooperative, pdl, global and profile scratch, kernel metadata, launch metadata, two hooks)
_BASE_FORMAT_36 = "iiiKKppOOOOOO"
_WRAPPER_CELLS_36 = ("launcher", "tensordesc_indices", "tensordesc_meta")


def _launcher_parts(compiled: Any) -> Optional[tuple]:
    """(C launch, descriptor positions, their metadata, make_tensordesc_arg, the launcher object)
    where ``compiled.run`` is Triton 3.6's CudaLauncher with no scratch to allocate; else None."""
    launcher = compiled.run  # the CudaLauncher itself (a CompiledKernel makes one per kernel)
    module = inspect.getmodule(type(launcher))
    if module is None or getattr(module, "_BASE_ARGS_FORMAT", None) != _BASE_FORMAT_36:
        return None
    if getattr(launcher, "global_scratch_size", 1) or getattr(launcher, "profile_scratch_size", 1):
        return None
    params = tuple(inspect.signature(type(launcher).__call__).parameters)
    if params != ("self", "gridX", "gridY", "gridZ", "stream", "function", "args"):
        return None
    launch = launcher.launch
    if not inspect.isfunction(launch):  # no descriptor: the C launcher itself
        return launch, frozenset(), (), None, launcher
    code = launch.__code__
    make = getattr(module, "make_tensordesc_arg", None)
    if (code.co_name != "inner" or code.co_freevars != tuple(sorted(_WRAPPER_CELLS_36)) or make is None
            or tuple(inspect.signature(make).parameters) != ("arg", "metadata")):
        return None
    cells = {name: cell.cell_contents for name, cell in zip(code.co_freevars, launch.__closure__)}
    return cells["launcher"], frozenset(cells["tensordesc_indices"]), tuple(cells["tensordesc_meta"]), make, launcher


def _unroll(compiled: Any, grid: tuple, call_values: list, fills: list) -> Optional[_Direct]:
    """The ``_Direct`` form of a compiled launch whose argument values were ``call_values`` (the
    recorded call's, tensors included) and whose ``fills`` name the per-call ones; None where the
    launcher is not Triton 3.6's, or where the unrolled list differs from what its wrapper passes
    the C launcher for the recorded call."""
    parts = _launcher_parts(compiled)
    if parts is None:
        return None
    c_launch, desc_positions, desc_meta, make, launcher = parts
    head = [grid[0], grid[1], grid[2], None, compiled.function, launcher.launch_cooperative_grid,
            launcher.launch_pdl, None, None, compiled.packed_metadata, None, None, None]
    filled = {pos: (src, template) for pos, src, template in fills}
    args, slots, expected_ptrs = list(head), [], {}
    k = 0  # descriptors so far
    for pos, value in enumerate(call_values):
        if pos in desc_positions:
            src, template = filled.get(pos, (None, None))
            if template is None:
                return None
            meta = desc_meta[k] if k < len(desc_meta) else None
            k += 1
            expanded = list(make(_with_base(template, _Address(value.base.data_ptr())), meta))
            expected_ptrs[len(args)] = value.base.data_ptr()
            slots.append((len(args), src, None if meta is None else _DescMaps(template, meta, make)))
            expanded[0] = None
            args.extend(expanded)
        elif pos in filled:
            src, template = filled[pos]
            if template is not None:
                return None
            expected_ptrs[len(args)] = value.data_ptr()
            slots.append((len(args), src, None))
            args.append(None)
        else:
            args.append(value)
    # what Triton's CudaLauncher and its wrapper hand the C launcher for the recorded call: the
    # launcher's own __call__ on a copy whose C launcher records instead of launching
    seen = []
    probe = object.__new__(type(launcher))
    probe.__dict__.update(launcher.__dict__)
    probe.launch = lambda *a: seen.append(a)
    if desc_positions:  # the wrapper itself, around the recorder: a twin of its closure
        code = launcher.launch.__code__
        cells = dict(launcher=probe.launch, tensordesc_indices=set(desc_positions), tensordesc_meta=list(desc_meta))
        probe.launch = type(launcher.launch)(code, launcher.launch.__globals__, code.co_name, None,
                                             tuple(_cell(cells[name]) for name in code.co_freevars))
    type(launcher).__call__(probe, grid[0], grid[1], grid[2], 0, compiled.function, compiled.packed_metadata,
                            None, None, None, *call_values)
    (passed,) = seen
    if len(passed) != len(args) or passed[3] != 0:
        return None
    slot_maps = {index: maps for index, _, maps in slots}
    for i, (mine, theirs) in enumerate(zip(args, passed)):
        if i == 3:
            continue  # the stream: the replay's
        if i in slot_maps and slot_maps[i] is not None:  # a descriptor's map, encoded per address
            ok = type(theirs).__name__ == "PyCUtensorMap"
        elif i in slot_maps:  # a pointer
            ptr = theirs if type(theirs) is int else getattr(theirs, "data_ptr", lambda: None)()
            ok = ptr == expected_ptrs[i]
        else:
            ok = mine is theirs or (type(mine) is type(theirs) and mine == theirs)
        if not ok:
            return None
    return _Direct(c_launch, args, tuple(slots))


def _cell(value: Any):
    """A closure cell holding ``value`` (for a function made from another's code)."""
    return (lambda: value).__closure__[0]


class Plan:
    """A validated record of one call's launches; ``replay`` repeats them for new tensors."""

    __slots__ = ("launches", "new", "out", "device", "family", "timings", "configs", "interpreted", "kernels")

    def __init__(self, launches, new, out, device, family, timings, configs, interpreted, kernels=()):
        # in order, the kernel launches, (runner, grid, values, fills) with fills = ((position,
        # source, template)...), and the _Derive steps
        self.launches = launches
        # the names of the kernels launched, in order (a compiled runner keeps no name)
        self.kernels = kernels
        self.new = new  # (elements, dtype, (sizes, strides) or None) per fresh storage: see _fresh
        self.out = out  # the output's source
        self.device = device  # torch.device the buffers go on
        self.family, self.timings, self.configs = family, timings, configs
        self.interpreted = interpreted

    def replay(self, inputs: Sequence[Optional[torch.Tensor]], poison: bool = False) -> Optional[torch.Tensor]:
        """The output for ``inputs`` (tensors with this plan's key), or None where the plan can't
        run now (a launch hook is set, another current device): the caller takes the full path."""
        device = self.device
        if not self.interpreted:
            if _knobs is None:
                return None
            rt = _knobs.runtime
            if _hook_set(rt.launch_enter_hook) or _hook_set(rt.launch_exit_hook):
                return None  # the full path builds the hooks' launch metadata
            if torch.cuda.current_device() != device.index:
                return None
        bufs = [torch.empty(n, dtype=dt, device=device) if shaped is None
                else torch.empty_strided(shaped[0], shaped[1], dtype=dt, device=device)
                for n, dt, shaped in self.new]
        if poison or _common._POISON_OUTPUTS:  # the tests' poisoned outputs, as alloc_output makes them
            for b, (n, _, _) in zip(bufs, self.new):
                b.as_strided((n,), (1,), 0).view(torch.uint8).fill_(0xFF)
        spaces = (inputs, bufs, [])  # the derive steps fill the last
        # The interpreter reads tensors through their views. Compiled kernels take a pointer
        # argument as an int, and a descriptor's base by its data_ptr(): no views to make, and
        # no pointer check by the driver per argument.
        interpreted = self.interpreted
        stream = None if interpreted else driver.active.get_current_stream(device.index)
        for step in self.launches:
            if type(step) is _Derive:
                step.run(spaces)
                continue
            runner, grid, values, fills = step
            if type(runner) is _Direct:
                args = runner.args.copy()
                args[3] = stream
                for index, ((kind, root), _, _, delta), maps in runner.slots:
                    base = spaces[kind][root]
                    address = base.data_ptr() + delta * base.element_size()
                    args[index] = address if maps is None else maps.get(address)
                runner.launch(*args)
                continue
            vals = list(values)
            for pos, src, template in fills:
                if interpreted:
                    arg = base = _materialise(src, spaces)
                else:
                    arg = _address(src, spaces)
                    base = _Address(arg)
                vals[pos] = arg if template is None else _with_base(template, base)
            if interpreted:
                with _common.LAUNCH_LOCK:  # Triton's interpreter runs one kernel at a time
                    runner.run(*vals, grid=grid, warmup=False)
            else:
                run, function, packed = runner
                run(grid[0], grid[1], grid[2], stream, function, packed, None, None, None, *vals)
        return _materialise(self.out, spaces)


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether two tensors hold the same bits (NaNs included), shapes and dtypes equal."""
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if a.numel() == 0:
        return True
    if a.is_complex() or a.dtype == torch.bool:
        return bool(torch.equal(a, b))
    as_int = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[a.element_size()]
    return bool(torch.equal(a.view(as_int), b.view(as_int)))


def build(key: tuple, launches: List[tuple], inputs: Sequence[Optional[torch.Tensor]], out: Any,
          family: str, timings: Optional[Dict[str, float]] = None) -> Optional[Plan]:
    """Make, check and remember the plan for ``key`` from a recorded call; None (and the key
    remembered as not plannable) where it can't be made or fails its check. Never raises."""
    why = ""
    for unroll in (True, False) if DIRECT else (False,):
        plan = None
        try:
            plan = _make(launches, inputs, out, family, timings, unroll)
            replayed = plan.replay(inputs, poison=True)
            if replayed is None:
                raise _NotPlannable("a launch hook is set or another device is current")
            if not same_bits(out, replayed):
                raise _NotPlannable(DIFFERS)
        except Exception as err:  # any failure: this key keeps the full path
            why = str(err) if isinstance(err, _NotPlannable) else f"{type(err).__name__}: {str(err)[:160]}"
            if plan is not None and any(type(step) is not _Derive and type(step[0]) is _Direct
                                        for step in plan.launches):
                continue  # once more, through Triton's own launcher
            break
        _keep(key, plan)
        return plan
    _keep(key, _Unplannable(why))
    return None


def _make(launches, inputs, out, family, timings, unroll: bool = False) -> Plan:
    if not isinstance(out, torch.Tensor) or not launches:
        raise _NotPlannable("no tensor output or no launches")
    roots = _Roots(inputs)
    # the output first: its storage is new (one of the call's own would alias an input)
    out_src = roots.source(out)
    if out_src[0][0] != _NEW:
        raise _NotPlannable("the output is a view of an input")
    interpreted = INTERPRETER or not out.is_cuda
    recorded, configs, kernels = [], [], []
    for step in launches:
        if type(step) is _Derivation:
            if any(a is not None and not isinstance(a, torch.Tensor) for a in step.args):
                raise _NotPlannable("a derive step with an argument that is not a tensor")
            sources = tuple(None if a is None else roots.source(a) for a in step.args)
            sequence = isinstance(step.results, (tuple, list))
            results = step.results if sequence else (step.results,)
            if not all(isinstance(r, torch.Tensor) for r in results):
                raise _NotPlannable("a derive step that returned something other than tensors")
            for r in results:
                roots.add_derived(r)
            recorded.append(_Derive(step.fn, sources, sequence))
            continue
        fn, grid, args, kwargs, compiled, config_of = step
        bound = _bind(fn, args, kwargs)
        if callable(grid):
            grid = grid(bound)
        grid = tuple(grid) + (1,) * (3 - len(grid))
        values, fills = list(bound.values()), []
        call_values = list(values)
        for pos, v in enumerate(values):
            if isinstance(v, torch.Tensor):
                fills.append((pos, roots.source(v), None))
            elif _is_descriptor(v):
                if not isinstance(v.base, torch.Tensor):
                    raise _NotPlannable("a descriptor without a tensor base")
                template = _with_base(v, None)
                fills.append((pos, roots.source(v.base), template))
        for pos, _, _ in fills:
            values[pos] = None  # no reference to this call's tensors stays in the plan
        if interpreted:
            runner = fn
        else:
            if compiled is None or not hasattr(compiled, "packed_metadata"):
                raise _NotPlannable("no compiled kernel")
            runner = (compiled.run, compiled.function, compiled.packed_metadata)
            try:
                direct = _unroll(compiled, grid, call_values, fills) if unroll else None
            except Exception:  # anything unexpected in Triton's launcher: keep Triton's path
                direct = None
            if direct is not None:
                runner = direct
        recorded.append((runner, grid, tuple(values), tuple(fills)))
        kernels.append(_kernel_name(fn))
        if config_of is not None:
            configs.append(config_of)
    return Plan(tuple(recorded), _fresh(roots.new, out_src), out_src, out.device, family, timings, tuple(configs),
                interpreted, tuple(kernels))


def _kernel_name(fn) -> str:
    """The Python name of a launched kernel: an autotuner wraps a JITFunction, which wraps it."""
    while not hasattr(fn, "__name__") and hasattr(fn, "fn"):
        fn = fn.fn
    return getattr(fn, "__name__", type(fn).__name__)


def _extent(size: tuple, stride: tuple) -> int:
    """Elements of the storage ``torch.empty_strided(size, stride)`` allocates."""
    return 0 if 0 in size else 1 + sum((n - 1) * st for n, st in zip(size, stride))


def _fresh(new: List[Tuple[int, torch.dtype]], out_src: tuple) -> tuple:
    """The plan's fresh storages, the output's as the output itself where it is the whole of its
    storage (one ``empty_strided`` then does for an ``empty`` and an ``as_strided`` per call)."""
    (_, out_index), size, stride, delta = out_src
    fresh = []
    for j, (n, dt) in enumerate(new):
        whole = j == out_index and delta == 0 and n == _extent(size, stride) and n > 0
        fresh.append((n, dt, (size, stride) if whole else None))
    return tuple(fresh)
