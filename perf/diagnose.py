"""Where does a layer's time go? One short GPU run that separates the kernels from the host.

    PYTHONPATH=$PWD python perf/diagnose.py --preset resnet50 --layers layer1.0.conv2,layer3.1.conv1 \
        --out OUTDIR [--batch 32] [--dtype fp16] [--families implicit,gemm1x1] [--mode grad_input]

Per layer and kernel family (each family the router would time for the layer, forced in turn,
then the router's own choice, then cuDNN), on random channels_last inputs:

- ``rel_err``: against F.conv2d (or its gradient, ``--mode grad_input`` / ``grad_weight``) in
  float64, of the first call (the full path, which builds the launch plan) and of a call after the
  timed ones (a plan replay), the caching allocator's free blocks poisoned with NaN before each, so
  an element the op leaves unwritten shows up;
- ``bench``: ``triton.testing.do_bench`` median (L2 flushed before each call, as the sweep times),
  and its 20th to 80th percentiles (the sweep found some layers bimodal, 2026-11-26);
- ``loop``: 50 calls back to back between two events, per call (host and device overlap);
- ``graph``: the same 50 calls replayed from a CUDA graph, per call, the median of 10 replays
  (no host cost at all; ``configs.kernel_time`` with the operands left in L2: the router's timer
  flushes L2 before each call, ``configs.ROUTER_COLD``);
- ``kernels``: the device time of the kernels one call launches (torch.profiler), and how many;
- ``host_us``: Python time to issue one call (no synchronisation inside the timed loop);
  for the "functional" route, also where that time goes: the top functions of a cProfile of
  300 calls, by own time (on the H100 of 2026-11-26 a call cost 56-94 us there, and do_bench's
  L2 flush hides only part of that: its timings turned bimodal);
- ``config``: the tile each tuned kernel ran.

"routed" is the op called through the dispatcher (launch plans on, ``tritonconv.plans``);
"functional" is what a module calls, ``tritonconv.functional.conv2d``, which skips the dispatcher
for a call without autograd (``tritonconv.ops.call``); "routed, full path" is the op with plans
off, so every call runs the router, the launcher and Triton's launch.

Then the PTX that Triton cached for the run (TRITON_CACHE_DIR, set to OUTDIR/triton-cache
unless given): per kernel, its wgmma, mma.sync and fp32 fma instruction counts, which says
whether the tensor cores did the work. Prints two tables; writes OUTDIR/diagnose.md.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from pathlib import Path


def _args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="resnet50")
    p.add_argument("--layers", default="layer1.0.conv2,layer3.1.conv1")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--dtype", default="fp16")
    p.add_argument("--families", default="", help="comma-separated (default: the router's candidates)")
    p.add_argument("--mode", default="forward", choices=("forward", "grad_input", "grad_weight"),
                   help="the op to diagnose: the forward, or one gradient op as a backward pass calls it")
    p.add_argument("--out", default="perf/out/diagnose")
    p.add_argument("--time-budget", type=float, default=0, help="seconds; stop starting layers after it")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = _args(argv)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("TRITON_CACHE_DIR", str((out_dir / "triton-cache").resolve()))

    import torch
    import torch.nn.functional as F

    import tritonconv.functional
    from tritonconv import configs, ops, plans, tuning
    from tritonconv.bench import presets
    from tritonconv.bench.providers import DTYPES
    from tritonconv.kernels import router

    cuda = torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET", "0") != "1"
    device = "cuda" if cuda else "cpu"
    dtype = DTYPES[args.dtype]
    layers = presets.get_preset(args.preset).select([n for n in args.layers.split(",") if n])
    start = time.perf_counter()
    rows = []
    profiles = []  # (layer, text): where a "functional" call's host time goes

    def measure(fn):
        """(bench, loop, graph, kernels, n_kernels, host_us) in ms / us; None where not on CUDA."""
        fn()
        if not cuda:
            t = time.perf_counter()
            fn()
            return None, None, None, None, None, (time.perf_counter() - t) * 1e6
        from triton.testing import do_bench

        torch.cuda.synchronize()
        bench = tuple(do_bench(fn, warmup=10, rep=50, quantiles=[0.5, 0.2, 0.8]))
        n = 50
        e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize()
        t = time.perf_counter()
        e0.record()
        for _ in range(n):
            fn()
        e1.record()
        host_us = (time.perf_counter() - t) / n * 1e6
        torch.cuda.synchronize()
        loop = e0.elapsed_time(e1) / n
        graph = configs.kernel_time(fn, calls=n)  # a CUDA graph of n calls, replayed, operands in L2
        kernels = n_kernels = None
        try:
            from torch.profiler import ProfilerActivity, profile

            reps = 10
            with profile(activities=[ProfilerActivity.CUDA]) as prof:
                for _ in range(reps):
                    fn()
                torch.cuda.synchronize()
            events = [e for e in prof.events() if getattr(e, "device_type", None) is not None
                      and str(e.device_type).endswith("CUDA")]
            kernels = sum(e.device_time for e in events) / 1e3 / reps
            n_kernels = len(events) / reps
            names = sorted({e.name[:60] for e in events})
            print(f"    kernels: {', '.join(names)}")
        except Exception as err:
            print(f"    profiler failed: {type(err).__name__}: {str(err)[:120]}")
        return bench, loop, graph, kernels, n_kernels, host_us

    for layer in layers:
        if args.time_budget and time.perf_counter() - start > args.time_budget:
            print(f"time budget spent: {layer.name} and later layers skipped")
            break
        stride, padding, dilation, groups = layer.conv_args()
        pb = layer.problem(args.batch)
        gen = torch.Generator(device=device).manual_seed(1234)
        x = torch.randn(pb.input_shape, generator=gen, device=device).to(dtype).contiguous(
            memory_format=torch.channels_last)
        w = (torch.randn(pb.weight_shape, generator=gen, device=device) / (pb.C_per_group * pb.R * pb.S) ** 0.5
             ).to(dtype).contiguous(memory_format=torch.channels_last)
        dy = torch.randn(pb.output_shape, generator=gen, device=device).to(dtype).contiguous(
            memory_format=torch.channels_last)
        conv = (stride, padding, dilation, groups)
        # per mode: the router's table and direction, the op, its tensors and extra arguments, the reference
        if args.mode == "forward":
            table, direction, op, tensors, extra = router.FORWARD, "forward", "conv2d", (x, w, None), ()
            ref = F.conv2d(x.double(), w.double(), None, *conv)
        else:
            grad_x = args.mode == "grad_input"
            table, direction = (router.INPUT_GRAD, "input_grad") if grad_x else (router.WEIGHT_GRAD, "weight_grad")
            op, tensors = ("conv2d_grad_input", (dy, w)) if grad_x else ("conv2d_grad_weight", (dy, x))
            extra = (list(x.shape if grad_x else w.shape),)
            ref = torch.ops.aten.convolution_backward(
                dy.double(), x.double(), w.double(), None, stride, padding, dilation, False, [0, 0], groups,
                [grad_x, not grad_x, False])[0 if grad_x else 1]
        flops = pb.flops
        route_tensors = {"forward": (x, w, None, None), "input_grad": (dy, w, None), "weight_grad": (dy, x)}
        fams = [f for f in args.families.split(",") if f] or router.routed_candidates(
            table, direction, pb, route_tensors[direction])
        print(f"{layer.name} {args.mode}: {pb} ({flops / 1e9:.2f} GFLOP), families {fams}", flush=True)

        def rel_err(call):
            if cuda:  # NaN into the allocator's free blocks, so an unwritten output element shows
                torch.empty(ref.numel() * 2 + 4096, dtype=dtype, device=device).fill_(float("nan"))
            y = call()
            return ((y.double() - ref).norm() / ref.norm()).item()

        for fam in fams + ["routed", "functional", "routed, full path", "cudnn"]:
            if fam == "cudnn":
                torch.backends.cudnn.benchmark = True

                def fn():
                    if args.mode == "forward":
                        return F.conv2d(x, w, None, *conv)
                    grad_x = args.mode == "grad_input"
                    return torch.ops.aten.convolution_backward(
                        dy, x, w, None, stride, padding, dilation, False, [0, 0], groups,
                        [grad_x, not grad_x, False])[0 if grad_x else 1]
            elif fam == "functional":  # what modules and backward formulas call: no dispatcher without autograd
                if args.mode == "forward":
                    def fn():
                        return tritonconv.functional.conv2d(x, w, None, *conv)
                else:
                    def fn():
                        return ops.call(op, tensors, *tensors, *extra, *conv)
            else:
                def fn():
                    return getattr(torch.ops.tritonconv, op)(*tensors, *extra, *conv)
            try:
                ctx = router.force(fam if fam in fams else None)
                # "routed, full path": launch plans off, so every call runs the router and launcher
                with ctx, plans.enabled_as(plans.ENABLED and fam != "routed, full path"), \
                        tuning.recording_configs() as cfgs:
                    with router.recording() as ran:
                        err = rel_err(fn)
                    numbers = measure(fn)
                    err_replay = rel_err(fn)
                cfg = ", ".join(f"{k}={v}" for k, v in cfgs.items())  # names once the block has closed
                family = ran[0][1] if ran else fam
            except Exception as e:
                print(f"  {fam}: error {type(e).__name__}: {str(e)[:200]}", flush=True)
                continue
            routed = fam.startswith("routed") or fam == "functional"
            row = dict(layer=layer.name, family=f"{fam}: {family}" if routed else family,
                       rel_err=err, rel_err_replay=err_replay, config=cfg, flops=flops)
            row.update(zip(("bench", "loop", "graph", "kernels", "n_kernels", "host_us"), numbers))
            rows.append(row)
            print("  " + _fmt_row(row), flush=True)
            if fam == "functional" and cuda:  # (under the interpreter it would profile the interpreter)
                profiles.append((layer.name, _host_profile(fn, cuda)))

    plan_line = f"launch plans: {plans.stats()}; keys without one, by reason: {plans.reasons() or 'none'}"
    ptx = _ptx_table(Path(os.environ["TRITON_CACHE_DIR"]))
    text = _report(rows, ptx, device, plan_line, args.mode, profiles)
    (out_dir / "diagnose.md").write_text(text)
    print()
    print(text)
    return 0


def _ms(v):
    return "-" if v is None else f"{v:.4f}"


def _fmt_row(r) -> str:
    tflops = "-" if not r.get("kernels") else f"{r['flops'] / (r['kernels'] * 1e-3) / 1e12:.0f}"
    host = "-" if r.get("host_us") is None else f"{r['host_us']:.0f}"
    nk = "-" if r.get("n_kernels") is None else f"{r['n_kernels']:g}"
    bench = r.get("bench")
    bench = _ms(bench) if not isinstance(bench, tuple) else f"{bench[0]:.4f} ({bench[1]:.4f}-{bench[2]:.4f})"
    return (f"| {r['layer']} | {r['family']} | {r['rel_err']:.1e} | {r['rel_err_replay']:.1e} | {bench} | {_ms(r.get('loop'))} | "
            f"{_ms(r.get('graph'))} | {_ms(r.get('kernels'))} | {nk} | {tflops} | {host} | {r['config']} |")


_PTX_OPS = {"wgmma": re.compile(r"\bwgmma\.mma_async"), "mma.sync": re.compile(r"\bmma\.sync"),
            "fma.f32": re.compile(r"\bfma\.rn\.f32"), "cp.async.bulk.tensor": re.compile(r"cp\.async\.bulk\.tensor")}


def _ptx_table(cache: Path):
    """(kernel, warps/stages, instruction counts) for every PTX file in Triton's cache."""
    found = []
    for path in sorted(cache.rglob("*.ptx")) if cache.exists() else []:
        text = path.read_text(errors="replace")
        entry = re.search(r"\.entry\s+(\w+)", text)
        counts = {k: len(rx.findall(text)) for k, rx in _PTX_OPS.items()}
        found.append((entry.group(1) if entry else path.stem, path.parent.name[:8], counts))
    return found


def _host_profile(fn, cuda: bool, calls: int = 300, top: int = 14) -> str:
    """The ``top`` functions by own time over ``calls`` calls of ``fn`` under cProfile (which
    slows every Python call alike: read it for shares, not for microseconds)."""
    import cProfile
    import io
    import pstats

    fn()
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(calls):
        fn()
    prof.disable()
    if cuda:
        import torch

        torch.cuda.synchronize()
    out = io.StringIO()
    stats = pstats.Stats(prof, stream=out)
    stats.sort_stats("tottime").print_stats(top)
    text = out.getvalue()
    body = text[text.find("ncalls"):] if "ncalls" in text else text
    root = str(Path(__file__).resolve().parent.parent) + "/"
    lines = (re.sub(r"/\S*/site-packages/", "", line).replace(root, "").rstrip()[:160] for line in body.splitlines())
    return "\n".join(line for line in lines if line.strip())


def _report(rows, ptx, device, plan_line="", mode="forward", profiles=()) -> str:
    lines = ["# Where the time goes", "",
             f"mode: {mode}; device: {device}; ms per call; rel_err of the first call, then of a later one "
             "(a plan replay); kernels = the device time of the kernels one call launches "
             "(profiler), TFLOP/s from it; host_us = Python time to issue one call.", "",
             "| layer | family | rel_err | rel_err, later | bench (p20-p80) | loop | graph | kernels | n | TFLOP/s | host_us "
             "| config |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    lines += [_fmt_row(r) for r in rows]
    if plan_line:
        lines += ["", plan_line]
    lines += ["", "## PTX in Triton's cache", "",
              "| kernel | cache dir | " + " | ".join(_PTX_OPS) + " |",
              "| --- | --- | " + " | ".join("---" for _ in _PTX_OPS) + " |"]
    lines += [f"| {name} | {d} | " + " | ".join(str(c[k]) for k in _PTX_OPS) + " |" for name, d, c in ptx]
    for layer, text in profiles:
        lines += ["", f"## Host time of a functional call, {layer} (cProfile, by own time)", "", "```", text, "```"]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
