"""The ``tritonconv`` command.

    tritonconv check            kernels vs F.conv2d on built-in problems, as a table
    tritonconv bench ...        performance sweeps (see ``tritonconv bench --help``)
    tritonconv tune ...         fill the persistent tuning cache ahead of time
    tritonconv compile-report   compile every kernel config for sm_80 / sm_90, no GPU needed

Commands that run kernels use the GPU when there is one; otherwise they run the
very same kernels on the CPU through Triton's interpreter. The interpreter must
be switched on before Triton is imported, so without a GPU the command
re-executes itself once with ``TRITON_INTERPRET=1``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import List, Optional

_RUNS_KERNELS = {"check", "bench", "tune"}


def _ensure_device_or_interpreter(argv: List[str]) -> None:
    """Re-exec under the interpreter when there is no GPU and it is not on yet."""
    import torch

    if torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1":
        return
    env = dict(os.environ, TRITON_INTERPRET="1")
    print("tritonconv: no CUDA device; running the kernels through Triton's interpreter (CPU)", file=sys.stderr)
    sys.stdout.flush()
    os.execve(sys.executable, [sys.executable, "-m", "tritonconv.cli", *argv], env)


# (name, N, C, H, W, K, R, S, stride, padding, dilation, groups, bias)
CHECK_PROBLEMS = [
    ("article example", 4, 3, 5, 5, 16, 3, 3, 2, 1, 1, 1, True),
    ("3x3 same", 2, 8, 9, 9, 12, 3, 3, 1, 1, 1, 1, True),
    ("stem 7x7/2, C=3", 1, 3, 15, 15, 8, 7, 7, 2, 3, 1, 1, False),
    ("1x1", 2, 17, 7, 7, 33, 1, 1, 1, 0, 1, 1, True),
    ("1x1 stride 2", 2, 16, 8, 8, 24, 1, 1, 2, 0, 1, 1, False),
    ("depthwise 3x3", 2, 16, 8, 8, 16, 3, 3, 1, 1, 1, 16, True),
    ("depthwise 3x3/2, x2", 1, 8, 9, 9, 16, 3, 3, 2, 1, 1, 8, False),
    ("grouped 3x3", 2, 12, 7, 7, 18, 3, 3, 1, 1, 1, 3, True),
    ("dilated 3x3", 1, 6, 11, 11, 6, 3, 3, 1, 2, 2, 1, False),
    ("asymmetric 5x3", 1, 5, 12, 9, 7, 5, 3, (2, 1), (2, 0), (1, 2), 1, True),
    ("stride > kernel", 2, 4, 10, 10, 5, 2, 2, 3, 0, 1, 1, True),
]


def _check(args) -> int:
    import torch
    import torch.nn.functional as F

    import tritonconv
    from tritonconv.kernels._common import set_poison_outputs

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtypes = [torch.float32, torch.float16, torch.bfloat16, torch.float64]
    tol = {torch.float64: 1e-12, torch.float32: 5e-3 if device == "cuda" else 1e-5,
           torch.float16: 5e-3, torch.bfloat16: 3e-2}
    set_poison_outputs(True)  # unwritten outputs show up as NaN, never as plausible numbers

    def rel(out, ref):
        out, ref = out.detach().double().cpu(), ref.detach().double().cpu()
        if not torch.isfinite(out).all():
            return float("inf")
        n = ref.norm().item()
        return (out - ref).norm().item() / (n if n > 0 else 1.0)

    mode = "CUDA: " + torch.cuda.get_device_name() if device == "cuda" else "CPU through Triton's interpreter"
    print(f"tritonconv {tritonconv.__version__} check on {mode}")
    print("relative error ||out - ref|| / ||ref|| against F.conv2d in float64\n")
    head = f"{'problem':<22} {'dtype':<9} {'layout':<13} {'forward':>9} {'grad_in':>9} {'grad_w':>9} {'tol':>7}  ok"
    print(head)
    print("-" * len(head))
    failures = 0
    gen = torch.Generator().manual_seed(args.seed)
    problems = CHECK_PROBLEMS[: args.limit] if args.limit else CHECK_PROBLEMS
    start = time.perf_counter()
    for name, N, C, H, W, K, R, S, stride, pad, dil, groups, has_bias in problems:
        for dtype in dtypes:
            for layout in ("nchw", "channels_last"):
                x = torch.randn(N, C, H, W, generator=gen).to(device, dtype)
                w = torch.randn(K, C // groups, R, S, generator=gen).to(device, dtype)
                b = torch.randn(K, generator=gen).to(device, dtype) if has_bias else None
                if layout == "channels_last":
                    x = x.to(memory_format=torch.channels_last)
                conv_args = (stride, pad, dil, groups)
                xg, wg = x.clone().requires_grad_(), w.clone().requires_grad_()
                y = tritonconv.conv2d(xg, wg, b, *conv_args)
                gy = torch.randn(y.shape, generator=gen).to(device, dtype)
                y.backward(gy)
                xr, wr = x.double().requires_grad_(), w.double().requires_grad_()
                ref = F.conv2d(xr, wr, b.double() if b is not None else None, *conv_args)
                ref.backward(gy.double())
                errs = (rel(y, ref), rel(xg.grad, xr.grad), rel(wg.grad, wr.grad))
                # F.conv2d's layout in this dtype (float64 on CUDA is contiguous whatever the input's)
                aten = F.conv2d(x, w, b, *conv_args)
                layout_ok = y.is_contiguous(memory_format=torch.channels_last) == aten.is_contiguous(
                    memory_format=torch.channels_last)
                ok = all(e < tol[dtype] for e in errs) and y.dtype == dtype and layout_ok
                failures += not ok
                dt = str(dtype).replace("torch.", "")
                print(f"{name:<22} {dt:<9} {layout:<13} {errs[0]:>9.1e} {errs[1]:>9.1e} {errs[2]:>9.1e} "
                      f"{tol[dtype]:>7.0e}  {'yes' if ok else 'NO'}", flush=True)
    total = len(problems) * len(dtypes) * 2
    print(f"\n{total - failures} passed, {failures} failed  ({time.perf_counter() - start:.1f} s)")
    return 1 if failures else 0


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="tritonconv", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p_check = sub.add_parser("check", help="run the kernels against F.conv2d on built-in problems")
    p_check.add_argument("--seed", type=int, default=0)
    p_check.add_argument("--limit", type=int, default=0, help="only the first N problems")
    for name, help_ in (("bench", "performance sweeps against cuDNN, Inductor and im2col"),
                        ("tune", "fill the persistent tuning cache for a preset"),
                        ("compile-report", "compile every config for a GPU architecture; no GPU needed")):
        sub.add_parser(name, help=help_, add_help=False)
    if argv and argv[0] in ("bench", "tune", "compile-report"):
        command, rest = argv[0], argv[1:]
    else:
        ns = parser.parse_args(argv)
        command, rest = ns.command, None
    if command in _RUNS_KERNELS:
        _ensure_device_or_interpreter(argv)
    if command == "check":
        return _check(ns)
    if command == "bench":
        from tritonconv import bench

        return bench.main(rest)
    if command == "tune":
        from tritonconv import tuning

        return tuning.main(rest)
    from tritonconv import compile_report

    return compile_report.main(rest)


if __name__ == "__main__":
    sys.exit(main())
