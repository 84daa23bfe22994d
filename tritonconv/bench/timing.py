"""Timing a call on a GPU: its device time, and its host time, each measured for itself.

``triton.testing.do_bench`` zeroes a 256 MB buffer before every call (to flush L2), records a
CUDA event, makes the call and records another. The flush also gives the host a head start:
while the GPU zeroes (about 0.1 ms on an H100), the host issues the call's launches. A call whose
host time is longer than that keeps the GPU waiting between the two events, and its time is then
the host's. On the H100 of 2026-11-26 that is what made five ResNet-50 rows bimodal: their
20th percentile sat at cuDNN's time and their median at two to three times it
(perf/results/2026-11-26_H100_1e4bdcc/NOTES.md), with the host taking 56-94 us per call.

``device_bench`` keeps do_bench's protocol (warm-up, the flush before every call, events around
it, the same quantiles) and adds one step: after the flush, a spin kernel
(``torch.cuda._sleep``) long enough to cover twice the call's host time, so the GPU is still busy
when the call's first launch arrives. What the events enclose is then the call's device time
whatever its host time. The host time is measured apart: the wall time of single calls, each
followed by a synchronisation (so a full launch queue never blocks inside one).

Both numbers go into the sweep's rows (``median_ms`` and ``host_us``): the first compares
kernels, the second says what a call costs the host. An eager model pays the larger of the two
per call, about; ``perf/resnet50.py`` measures that end to end.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

__all__ = ["BenchResult", "device_bench", "quantile", "spin_cycles"]

# the spin covers this multiple of the call's host time, plus a margin for the flush's and the
# events' own launches
SPIN_HOST_FACTOR = 2.0
SPIN_MARGIN_US = 20.0
HOST_SAMPLES = 20


@dataclass
class BenchResult:
    median_ms: float
    p20_ms: float
    p80_ms: float
    host_us: float  # median host time of one call
    spin_us: float  # the spin before each timed call
    reps: int


def quantile(sorted_values: Sequence[float], q: float) -> float:
    """Linear interpolation between the closest ranks (as torch.quantile's default)."""
    pos = q * (len(sorted_values) - 1)
    lo, hi = math.floor(pos), math.ceil(pos)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def minor_faults() -> int:
    """The process's minor page faults so far, every thread's (0 where ``resource`` is missing).
    Host-side diagnostics count them around a call: CPython 3.11 and 3.12 fault once each time
    they map a 16 KiB chunk of frames anew (perf/host_cost.py's doc)."""
    try:
        import resource
    except ImportError:  # not on Windows
        return 0
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


_cycles_per_us: dict = {}


def spin_cycles(us: float, cuda: Any) -> int:
    """The ``cuda._sleep`` argument that spins for about ``us`` microseconds on the current
    device (its clock measured once per device with events: the spin counts SM clock cycles)."""
    device = cuda.current_device()
    rate = _cycles_per_us.get(device)
    if rate is None:
        probe = 1_000_000
        start, end = cuda.Event(enable_timing=True), cuda.Event(enable_timing=True)
        for _ in range(2):  # the first spin pays for loading the kernel
            start.record()
            cuda._sleep(probe)
            end.record()
            cuda.synchronize()
        rate = _cycles_per_us[device] = probe / max(start.elapsed_time(end) * 1e3, 1e-3)
    return max(1, int(us * rate))


def device_bench(fn: Callable[[], Any], warmup_ms: float = 25, rep_ms: float = 100,
                 cuda: Optional[Any] = None, flush: Optional[Callable[[], Any]] = None,
                 clock: Callable[[], float] = time.perf_counter) -> BenchResult:
    """Device time of ``fn`` (median, p20, p80 in ms) as do_bench measures it, with a spin before
    every timed call so that the call's host time never shows in it; and fn's host time (us).

    Args:
        fn: the call; it must not synchronise with the device (its host time would include the
            spin, and the result would say so: host_us near spin_us).
        warmup_ms, rep_ms: as do_bench's warmup and rep; the repetitions are counted from the
            time of one flush, spin and call together, so a measurement takes about rep_ms.
        cuda: the ``torch.cuda`` module (tests pass a stand-in).
        flush: empties L2; Triton's benchmark buffer zeroed, as do_bench does, by default.
        clock: the host clock, in seconds.

    Returns:
        A ``BenchResult``.
    """
    if cuda is None:
        import torch

        cuda = torch.cuda
    if flush is None:
        from triton import runtime

        driver = runtime.driver.active
        buffer = driver.get_empty_cache_for_benchmark()

        def flush():
            driver.clear_cache(buffer)

    fn()
    cuda.synchronize()
    host = []
    for _ in range(HOST_SAMPLES):
        start = clock()
        fn()
        host.append((clock() - start) * 1e6)
        cuda.synchronize()
    host.sort()
    host_us = quantile(host, 0.5)
    spin_us = SPIN_HOST_FACTOR * quantile(host, 0.9) + SPIN_MARGIN_US
    spin = spin_cycles(spin_us, cuda)

    # the time of one timed iteration, flush and spin included, as do_bench estimates its own
    start, end = cuda.Event(enable_timing=True), cuda.Event(enable_timing=True)
    start.record()
    for _ in range(5):
        flush()
        cuda._sleep(spin)
        fn()
    end.record()
    cuda.synchronize()
    iteration_ms = max(start.elapsed_time(end) / 5, 1e-3)
    for _ in range(max(1, int(warmup_ms / iteration_ms))):
        fn()
    reps = max(1, int(rep_ms / iteration_ms))
    starts = [cuda.Event(enable_timing=True) for _ in range(reps)]
    ends = [cuda.Event(enable_timing=True) for _ in range(reps)]
    for i in range(reps):
        flush()
        cuda._sleep(spin)
        starts[i].record()
        fn()
        ends[i].record()
    cuda.synchronize()
    times = sorted(s.elapsed_time(e) for s, e in zip(starts, ends))
    return BenchResult(quantile(times, 0.5), quantile(times, 0.2), quantile(times, 0.8), host_us, spin_us, reps)
