"""Host time per conv call, by route: what the README's and ops.py's microsecond figures come from.

    python perf/host_cost.py                 # CPU: through Triton's interpreter, launches stubbed
    PYTHONPATH=$PWD python perf/host_cost.py # GPU: real launches (no synchronisation while timed)

One small channels_last problem, its launch plans recorded first (the routes below replay them),
then per route the mean host time of a call over many calls:

- ``torch.ops.tritonconv.conv2d``, without and with autograd (a weight that requires grad);
- ``tritonconv.functional.conv2d``, the same two (``tritonconv.ops.call``: the implementation
  directly, or an autograd.Function);
- a training step of one conv: forward, then ``autograd.grad`` for input and weight (dgrad and
  wgrad).

On the CPU the kernels run through the interpreter, whose cost would drown the host's, so the
plans' launches are replaced by no-ops after they are recorded: the numbers are then everything
but the launch itself (and the outputs are garbage, which nothing reads). On a GPU the launches
are real and only issued (the GPU runs behind), so the numbers include Triton's launcher.

``--depths N`` times each route again from 0 to N-1 extra Python frames deep (every
``--depth-step``-th): CPython 3.11 and 3.12 keep a thread's frames in 16 KiB chunks and free a
chunk when the frame that opened it returns (python/cpython#142183; 3.13 and 3.14 releases since
March 2026 keep one spare), so a call whose frames go back and forth across a chunk's edge maps
and unmaps 16 KiB each time, a minor page fault each (the table counts them). Where the edge
falls depends on how deep the caller is (a model's modules): the spread across depths shows
what the host pays for it. The sweep moves the caller's thread only; on CUDA autograd runs the
backward on a thread of its own, at a depth nothing here changes (perf/resnet50.py's profile
counts a step's faults on every thread). ``--calls 1000 --depths 160 --depth-step 4`` on this
project's CPU machine (Python 3.11.7, launches stubbed): the one-conv training step 118.9 us at
its best depth, 231.3 at its worst (1.9x, 10 faults a call there), 3 of 40 depths 1.3x or more;
``tritonconv.functional.conv2d`` with autograd 28.9 -> 121.3 us (4.2x, 12 faults a call).
"""

from __future__ import annotations

import argparse
import os
import sys
import time


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--calls", type=int, default=3000)
    p.add_argument("--depths", type=int, default=0,
                   help="also time each route from 0 to DEPTHS-1 extra frames deep (see the module's doc)")
    p.add_argument("--depth-step", type=int, default=2)
    p.add_argument("--depth-calls", type=int, default=200, help="calls timed at each depth")
    args = p.parse_args(argv)

    import torch

    cuda = torch.cuda.is_available()
    if not cuda:
        os.environ.setdefault("TRITON_INTERPRET", "1")
    os.environ.setdefault("TRITONCONV_PLANS", "1")
    # host time does not depend on the tiles: one config per kernel, no autotuning (GPU check time)
    os.environ.setdefault("TRITONCONV_TUNE", "0")
    import tritonconv
    from tritonconv import functional, plans

    device = "cuda" if cuda else "cpu"
    dtype = torch.float16 if cuda else torch.float32
    x = torch.randn(2, 16, 8, 8, device=device, dtype=dtype).to(memory_format=torch.channels_last)
    w = torch.randn(32, 16, 3, 3, device=device, dtype=dtype).to(memory_format=torch.channels_last)
    wp = torch.nn.Parameter(w.clone())
    xg = x.clone().requires_grad_()
    conv_args = ([1, 1], [1, 1], [1, 1], 1)

    def step():
        y = functional.conv2d(xg, wp, None, 1, 1)
        return torch.autograd.grad(y, (xg, wp), torch.ones_like(y))

    routes = [
        ("torch.ops.tritonconv.conv2d", lambda: torch.ops.tritonconv.conv2d(x, w, None, *conv_args)),
        ("torch.ops.tritonconv.conv2d, autograd", lambda: torch.ops.tritonconv.conv2d(x, wp, None, *conv_args)),
        ("tritonconv.functional.conv2d", lambda: functional.conv2d(x, w, None, 1, 1)),
        ("tritonconv.functional.conv2d, autograd", lambda: functional.conv2d(x, wp, None, 1, 1)),
        ("training step: forward, dgrad, wgrad", step),
    ]
    for _, fn in routes:  # tune, record and check every plan these routes use
        fn()
        fn()
    if cuda:
        torch.cuda.synchronize()
    else:
        for plan in plans._plans.values():
            if type(plan) is plans.Plan:
                plan.launches = tuple(s if type(s) is plans._Derive else (_NoLaunch,) + s[1:] for s in plan.launches)
    print(f"tritonconv {tritonconv.__version__}, torch {torch.__version__}, {device}"
          f"{'' if cuda else ' (interpreter; launches stubbed)'}; plans: {plans.stats()}"
          + (f"; launches: {plans.launch_forms()} (unrolled: Triton 3.6's launcher bypassed, "
             f"TRITONCONV_DIRECT_LAUNCH={'1' if plans.DIRECT else '0'})" if cuda else ""))
    print(f"\n| route | host us per call |\n| --- | --- |")
    for name, fn in routes:
        for _ in range(100):
            fn()
        start = time.perf_counter()
        for _ in range(args.calls):
            fn()
        took = (time.perf_counter() - start) / args.calls * 1e6
        if cuda:
            torch.cuda.synchronize()
        print(f"| {name} | {took:.1f} |")
    if args.depths > 0:
        depths = range(0, args.depths, max(1, args.depth_step))
        print(f"\nThe same routes from 0 to {depths[-1]} extra Python frames deep, in steps of {depths.step} "
              f"({args.depth_calls} calls each; Python {sys.version.split()[0]}): host us per call\n")
        print("| route | fewest | median | most | slowest at depth | its minor faults a call | depths 1.3x the fewest or more |\n"
              "| --- | --- | --- | --- | --- | --- | --- |")
        for name, fn in routes:
            measured = [_at_depth(depth, fn, args.depth_calls) for depth in depths]
            if cuda:
                torch.cuda.synchronize()
            took = [us for us, _ in measured]
            order = sorted(took)
            worst = max(range(len(took)), key=took.__getitem__)
            slow = sum(t >= 1.3 * order[0] for t in took)
            print(f"| {name} | {order[0]:.1f} | {order[len(order) // 2]:.1f} | {order[-1]:.1f} | "
                  f"{depths[worst]} | {measured[worst][1]:.1f} | {slow} of {len(took)} |")
    return 0


def _at_depth(depth: int, fn, calls: int):
    """(mean host us, mean minor page faults) of ``fn()`` called ``depth`` frames below this one.
    A frame chunk mapped anew faults once: a call that thrashes faults every time."""
    if depth > 0:
        return _at_depth(depth - 1, fn, calls)
    from tritonconv.bench.timing import minor_faults  # after main() has set up the environment

    faults = minor_faults()
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    took = (time.perf_counter() - start) / calls * 1e6
    return took, (minor_faults() - faults) / calls


class _NoLaunch:
    """Stands in for a plan's interpreted runner: the launch, and only it, is skipped."""

    @staticmethod
    def run(*args, **kwargs):
        return None


if __name__ == "__main__":
    sys.exit(main())
