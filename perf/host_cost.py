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
"""

from __future__ import annotations

import argparse
import os
import sys
import time


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--calls", type=int, default=3000)
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
    print(f"| route | host us per call |\n| --- | --- |")
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
    return 0


class _NoLaunch:
    """Stands in for a plan's interpreted runner: the launch, and only it, is skipped."""

    @staticmethod
    def run(*args, **kwargs):
        return None


if __name__ == "__main__":
    sys.exit(main())
