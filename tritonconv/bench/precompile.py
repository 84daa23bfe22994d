"""Compile every autotune candidate in parallel before anything is timed.

Autotuning a shape compiles each surviving config (one to two seconds each)
and then times it; a ResNet-50 sweep is hundreds of compiles, serial by
default. Here the compiles run first, on a thread pool, so that tuning and
timing later find every kernel already built.

How, without a second copy of any launcher's argument list:

1. ``intercept_launches`` temporarily replaces the ``run`` method of every
   autotuned kernel in ``tritonconv.kernels`` on the instance, so calling the
   ordinary ops records each launch's exact arguments instead of launching.
   The ops allocate their outputs as usual; nothing is computed. Where the
   ops route a problem among several kernel families, the thunks pin each
   family in turn (``providers.tritonconv_calls(each_family=True)``), so
   every family that would be timed is compiled and no timing runs on the
   intercepted, empty launches.
2. For each recorded launch: the config already chosen (the autotuner's
   cache, filled from the persistent tuning cache) or else every config the
   autotuner's own pruning keeps, is handed to ``JITFunction.warmup``, which
   specialises exactly like a launch and compiles without running.
3. Those warmups run inside ``triton.AsyncCompileMode`` with a
   ``ThreadPoolExecutor`` (Triton's API for exactly this: ``warmup`` then
   submits the compile to the pool and returns at once; leaving the mode
   waits for all of them and installs the kernels in the JIT function's
   cache). How much the threads overlap is for the GPU check's log to show:
   it prints the precompile's wall time.
   ``AsyncCompileMode(executor, ignore_errors=...)`` is the same in triton
   3.6 and 3.9 (its internals differ). Where it is missing or fails, the
   warmups run serially, which costs nothing extra: tuning would have
   compiled the same kernels.

A config that fails to compile here fails again, the same way, when the
autotuner times it, and is skipped there as usual. Under Triton's interpreter
there is nothing to compile and ``precompile`` returns at once.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

from ..configs import config_name
from ..kernels._common import INTERPRETER
from ..tuning import autotune_key, hinted_config

__all__ = ["PrecompileStats", "error_text", "autotuners", "compiled_kernels", "intercept_launches", "autotune_key",
           "precompile"]


@dataclass
class PrecompileStats:
    launches: int = 0  # launches recorded
    compiles: int = 0  # (launch, config) warmups issued
    errors: int = 0  # warmups that raised while being issued (serial mode: compile errors)
    seconds: float = 0.0
    mode: str = "none"
    # the first few distinct errors, "Type: message" -> [count, where it first happened]: the GPU
    # check of 2026-11-26 counted 16 errors in 52 launches and could not say what they were
    examples: Dict[str, List[Any]] = field(default_factory=dict)

    def error(self, where: str, err: Exception) -> None:
        """Count an error; keep its message (up to 3 distinct ones), where it first happened and how
        often it recurred."""
        self.errors += 1
        text = error_text(err)
        if text in self.examples:
            self.examples[text][0] += 1
        elif len(self.examples) < 3:
            self.examples[text] = [1, where]

    def __str__(self) -> str:
        errors = f", {self.errors} errors" if self.errors else ""
        first = "; ".join(f"{n}x {text} (first: {where})" for text, (n, where) in self.examples.items())
        return (f"{self.compiles} kernel compiles for {self.launches} launches in {self.seconds:.1f} s "
                f"({self.mode}{errors}){'; ' + first if first else ''}")


def error_text(err: BaseException, limit: int = 160) -> str:
    """One line for ``err``: "Type: message". Triton's CompilationError opens its text with the
    source location ("at 45:12:") and the offending source, and names the error last
    (``error_message``), so the line is that, or else the last non-empty line of the text."""
    message = getattr(err, "error_message", None)
    if not isinstance(message, str) or not message.strip():
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        message = lines[-1] if lines else ""
    message = " ".join(message.split())
    return f"{type(err).__name__}: {message[:limit]}" if message else type(err).__name__


def autotuners() -> Dict[str, Any]:
    """Every ``triton.autotune`` kernel defined at module level in ``tritonconv.kernels``,
    by "module.attribute" (found, not listed, so new kernel families are covered)."""
    import importlib
    import pkgutil

    from triton.runtime.autotuner import Autotuner

    from .. import kernels

    found: Dict[str, Any] = {}
    for info in pkgutil.iter_modules(kernels.__path__):
        try:
            module = importlib.import_module(f"{kernels.__name__}.{info.name}")
        except Exception:  # a module that does not import is not ours to compile
            continue
        for attr, value in vars(module).items():
            if isinstance(value, Autotuner) and all(value is not v for v in found.values()):
                found[f"{info.name}.{attr}"] = value
    return found


def compiled_kernels() -> Optional[int]:
    """How many compiled kernels the @jit functions of ``tritonconv.kernels`` hold in memory, all
    devices and specialisations together; None under the interpreter (nothing is compiled) or
    where this Triton keeps them otherwise. The sweep counts the kernels a layer's first call
    compiles: after ``precompile``, every one of them is a specialisation the precompile did not
    foresee, compiled serially while tuning. A diagnostic: it never raises."""
    if INTERPRETER:
        return None
    try:
        import sys

        from triton.runtime.autotuner import Autotuner
        from triton.runtime.jit import JITFunction

        functions: Dict[int, Any] = {}
        prefix = __name__.rsplit(".", 2)[0] + ".kernels."
        for name, module in list(sys.modules.items()):  # the kernel modules loaded so far: no imports
            if not name.startswith(prefix) or module is None:
                continue
            for value in vars(module).values():
                fn = value.fn if isinstance(value, Autotuner) else value
                if isinstance(fn, JITFunction):
                    functions[id(fn)] = fn
        # device_caches[device][0] is the kernel cache (key -> compiled kernel) in Triton 3.2 to 3.9
        return sum(len(caches[0]) for fn in functions.values() for caches in fn.device_caches.values())
    except Exception:
        return None


def _fake_run(on_launch, autotuner, *args, grid=None, warmup=False, **kwargs):
    on_launch(autotuner, args, dict(kwargs, grid=grid))
    return None


@contextlib.contextmanager
def intercept_launches(on_launch: Callable[[Any, Tuple, Dict], None], tuners: Optional[Iterable[Any]] = None):
    """Within the block, launches of the autotuned kernels call ``on_launch(autotuner, args, kwargs)``
    (``kwargs`` includes ``grid``) instead of running, and launch plans are off. The ops still
    allocate their outputs."""
    from .. import plans, tuning

    tuners = list(tuners) if tuners is not None else list(autotuners().values())
    for tuner in tuners:
        # kernel[grid](...) calls self.run(...): an instance attribute shadows the method
        tuner.run = functools.partial(_fake_run, on_launch, tuner)
    try:
        # no launch plan from calls that launch nothing: each key would be remembered as not
        # plannable ("no launches"), and a later real call of it would keep the full path
        # nor a hint taken: the launch that runs takes it (and counts it); _configs_for compiles it
        with plans.enabled_as(False), tuning.intercepted():
            yield
    finally:
        for tuner in tuners:
            tuner.__dict__.pop("run", None)


def _configs_for(tuner: Any, args: Tuple, kwargs: Dict) -> List[Any]:
    """The configs a launch would compile: the cached choice, else a hint's (tuning's
    TRITONCONV_TUNE_HINTS), else what pruning keeps."""
    if len(tuner.configs) <= 1:
        return list(tuner.configs)
    cached = tuner.cache.get(autotune_key(tuner, args, kwargs))
    if cached is not None:
        return [cached]
    launch_kwargs = {k: v for k, v in kwargs.items() if k != "grid"}
    hinted = hinted_config(tuner, args, launch_kwargs)
    if hinted is not None:
        return [hinted]
    tuner.nargs = dict(zip(tuner.arg_names, args))
    try:
        return list(tuner.prune_configs(launch_kwargs))
    finally:
        tuner.nargs = None


def _as_launched(tuner: Any, args: Tuple, kwargs: Dict, config: Any) -> Tuple[Tuple, Dict]:
    """The arguments as the autotuner launches them with ``config``: after its pre_hook.

    The TMA families set their descriptors' block shapes in the pre_hook, and
    a descriptor's block shape is part of the kernel's signature, so without
    it the warmup would build a kernel no launch uses. The hook runs on copies
    of the descriptors: one recorded launch serves every config.
    """
    if config.pre_hook is None:
        return args, kwargs
    names = list(tuner.arg_names)
    named = {**dict(zip(names, args)), **kwargs}
    named = {k: copy.copy(v) if hasattr(v, "block_shape") else v for k, v in named.items()}
    config.pre_hook({**named, **config.all_kwargs()})
    return tuple(named[n] for n in names[:len(args)]), {k: named[k] for k in kwargs}


def _async_mode(workers: int):
    """(executor, AsyncCompileMode) or None where this triton has no async compile."""
    from concurrent.futures import ThreadPoolExecutor

    import triton

    AsyncCompileMode = getattr(triton, "AsyncCompileMode", None)  # exported by triton 3.6 and 3.9
    if AsyncCompileMode is None:
        return None
    executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="tritonconv-compile")
    try:
        mode = AsyncCompileMode(executor, ignore_errors=True)
    except Exception:
        executor.shutdown(wait=False)
        return None
    return executor, mode


def precompile(thunks: Iterable[Callable[[], Any]], workers: int = 0, parallel: bool = True,
               progress: Optional[Callable[[int], None]] = None) -> PrecompileStats:
    """Compile the kernels (and candidate configs) that ``thunks`` would launch.

    Args:
        thunks: callables that call tritonconv ops on tensors of the shapes to
            tune (they may allocate; nothing is launched while they run).
        workers: compile threads (0: os.cpu_count()).
        parallel: False compiles serially (what tuning would do anyway).
        progress: called with 1 after each thunk.

    Returns:
        counts and the wall time; never raises for a kernel that fails to compile.
    """
    stats = PrecompileStats()
    thunks = list(thunks)
    if INTERPRETER:
        stats.mode = "interpreter: nothing to compile"
        return stats
    start = time.perf_counter()
    workers = workers or os.cpu_count() or 1
    pool = _async_mode(workers) if parallel and workers > 1 else None
    stats.mode = f"parallel, {workers} threads" if pool else "serial"

    def on_launch(tuner, args, kwargs):
        stats.launches += 1
        for config in _configs_for(tuner, args, kwargs):
            try:
                launch_args, launch_kwargs = _as_launched(tuner, args, kwargs, config)
                tuner.fn.warmup(*launch_args, **launch_kwargs, **config.all_kwargs())
                stats.compiles += 1
            except Exception as err:
                stats.error(f"{tuner.fn.__name__} {config_name(config)}", err)

    def run_thunks():
        with intercept_launches(on_launch):
            for thunk in thunks:
                try:
                    thunk()
                except Exception as err:  # e.g. out of memory for the inputs: the sweep reports it
                    stats.error(getattr(thunk, "__name__", "a call"), err)
                if progress is not None:
                    progress(1)

    if pool is None:
        run_thunks()
    else:
        executor, mode = pool
        try:
            with executor:
                with mode:  # leaving it waits for every compile and installs the kernels
                    run_thunks()
        except Exception as err:  # the async path broke: fall back, tuning will compile the rest
            stats.mode = f"serial after parallel failed ({type(err).__name__}: {err})"
            stats.launches = stats.compiles = stats.errors = 0
            stats.examples.clear()
            run_thunks()
    stats.seconds = time.perf_counter() - start
    return stats
