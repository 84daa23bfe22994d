"""End to end: ResNet-50 with every conv from tritonconv vs cuDNN: a training step, and inference.

The network is torchvision's ResNet-50 (v1.5: stride on the 3x3), written out
here so that no torchvision is needed. Both variants share one set of weights:
the cuDNN one is the plain model, the tritonconv one is a deep copy passed
through ``tritonconv.convert`` (every nn.Conv2d becomes tritonconv's, which
runs forward, grad_input and grad_weight on Triton kernels). BatchNorm, ReLU,
pooling, the classifier and the loss are PyTorch's in both.

Modes (``--modes``, each a CSV row per provider; by default infer, graph, then train, the one
that tunes the backward kernels too, last: a time budget that runs out spares the others):

- ``train`` (mode forward_backward): ``loss = cross_entropy(model(x)); grads =
  autograd.grad(loss, params)``;
- ``infer`` (mode forward): the model in eval mode under ``torch.no_grad()``, as
  a user runs it eagerly (the calls need no autograd: tritonconv's skip the
  dispatcher, and launch plans replay their kernels);
- ``graph`` (mode forward_cudagraph): the same forward captured once in a CUDA
  graph and replayed, which takes the host out: what is left is the kernels.
- ``train_graph`` (mode forward_backward_cudagraph): the training step captured in a CUDA graph
  and replayed: its kernels without the host, which bounds eager training steps on a slow host
  (``torch.compile(mode="reduce-overhead")`` gives a model the same). Its rel_err is of a graph
  captured with BN in eval mode (see ``_reference_step``), the timed one is in training mode.
- ``folded`` (mode forward_bn_folded): eager inference again, each model with its BatchNorms
  folded into the convs as its own tools do it for inference: tritonconv's
  ``convert(fuse=True)`` (BN folded, and the residual add and ReLU in the conv's epilogue: one
  call per conv), and for cuDNN ``torch.fx.experimental.optimization.fuse`` (BN folded; ReLU
  and the adds stay separate ops). Eager inference is host-bound for both, so this measures
  what a user of each gets without torch.compile. Opt-in (not in the default ``--modes``):
  its fused epilogues are new autotuning keys.

With ``--profile DIR``, each eager row (train, infer, folded) is followed by a host profile of
the same step: the host time to issue one step (from an idle device, so that no queue of
earlier launches holds it up: where it is as long as the median step, the step is host-bound),
and the functions that take that time (cProfile, by own time), in ``DIR/e2e_profile.md``
(written anew by each run).

Each is timed with ``triton.testing.do_bench``. Before timing, the tritonconv
model runs once under a dispatch mode that counts aten convolutions (it must
see none), and every provider's outputs (loss and gradients for ``train``) are
compared with the same computation in float64 (rel_err). Rows go to the
sweep's CSV (kernel "resnet50_e2e", layer "network"), so
``tritonconv.bench.report`` shows them in the summary.

    PYTHONPATH=. python perf/resnet50.py --batch 32 --dtype fp16 --out perf/out
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode


# --------------------------------------------------------------------------- the network


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, in_ch: int, width: int, stride: int = 1):
        super().__init__()
        out_ch = width * self.expansion
        self.conv1 = nn.Conv2d(in_ch, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out_ch, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_ch)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or in_ch != out_ch:
            self.downsample = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False),
                                            nn.BatchNorm2d(out_ch))

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    def __init__(self, blocks: Sequence[int] = (3, 4, 6, 3), width: int = 64, num_classes: int = 1000):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        in_ch = width
        for i, n in enumerate(blocks):
            w = width * 2**i
            stage = []
            for b in range(n):
                stage.append(Bottleneck(in_ch, w, stride=2 if (b == 0 and i > 0) else 1))
                in_ch = w * Bottleneck.expansion
            setattr(self, f"layer{i + 1}", nn.Sequential(*stage))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_ch, num_classes)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def resnet50(num_classes: int = 1000) -> ResNet:
    return ResNet((3, 4, 6, 3), 64, num_classes)


def conv_layers(model: nn.Module, image: int = 224) -> List[Tuple[str, Tuple]]:
    """(module name, (C, H, W, K, R, S, stride, padding, dilation, groups)) for every conv a
    forward pass runs, in order; computed on the meta device (no memory, no time)."""
    model = copy.deepcopy(model).to("meta").eval()
    found: List[Tuple[str, Tuple]] = []
    hooks = []
    for name, mod in model.named_modules():
        if isinstance(mod, nn.Conv2d):
            def hook(m, inputs, output, name=name):
                _, C, H, W = inputs[0].shape
                found.append((name, (C, H, W, m.out_channels, *m.kernel_size, tuple(m.stride), tuple(m.padding),
                                     tuple(m.dilation), m.groups)))
            hooks.append(mod.register_forward_hook(hook))
    with torch.no_grad():
        model(torch.empty(1, 3, image, image, device="meta"))
    for h in hooks:
        h.remove()
    return found


class AtenConvCounter(TorchDispatchMode):
    """Counts aten convolution calls (forward and backward) made while active."""

    NAMES = ("convolution", "convolution_backward", "cudnn_convolution", "_convolution", "conv2d")

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.namespace == "aten" and func.__name__.split(".")[0] in self.NAMES:
            self.count += 1
        return func(*args, **(kwargs or {}))


# --------------------------------------------------------------------------- the measurement


def _step_fn(model: nn.Module, x: torch.Tensor, target: torch.Tensor):
    params = [p for p in model.parameters() if p.requires_grad]

    def step():
        loss = F.cross_entropy(model(x).float(), target)
        return (loss, *torch.autograd.grad(loss, params))

    return step


def _infer_fn(model: nn.Module, x: torch.Tensor):
    def infer():
        with torch.no_grad():
            return (model(x),)

    return infer


def _graphed_fn(fn):
    """``fn`` (no arguments, returns tensors) captured in a CUDA graph after warm-up runs on a side
    stream (which also tune), replayed into the same output tensors."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fn()

    def replay():
        graph.replay()
        return out

    return replay


def _reference_infer(model: nn.Module, x: torch.Tensor):
    ref_model = copy.deepcopy(model).double().eval()
    with torch.no_grad(), torch.backends.cudnn.flags(enabled=True, benchmark=False, deterministic=False,
                                                     allow_tf32=False):
        return [ref_model(x.double())]


# A training step's gradients are checked with BatchNorm in eval mode (its running statistics):
# in training mode BN's backward subtracts two batch means from the incoming gradient, and for
# a randomly initialised ResNet-50 what is left is small next to them. There cuDNN's own fp16
# step is 0.71 off float64 (2026-11-26, H100 and CPU alike), so no fp16 result could fail a check
# of it. With BN in eval mode the same convs, forward and backward, are compared at about 1e-2
# (aten fp16 on the CPU: 1.4e-2). The timed step runs BN in training mode.
def _reference_step(model: nn.Module, x: torch.Tensor, target: torch.Tensor):
    """The step in float64 on aten convolutions (the model's own weights, upcast), BN in eval mode."""
    ref_model = copy.deepcopy(model).double().eval()
    with torch.backends.cudnn.flags(enabled=True, benchmark=False, deterministic=False, allow_tf32=False):
        out = _step_fn(ref_model, x.double(), target)()
    return [t.detach() for t in out]


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double(), b.detach().double()
    if not torch.isfinite(a).all():
        return float("inf")
    d = torch.linalg.vector_norm(b).item()
    return torch.linalg.vector_norm(a - b).item() / (d if d > 0 else 1.0)


def _time(fn, device: str, warmup_ms: float, rep_ms: float, reps: int) -> Tuple[float, float, float]:
    if device == "cuda":
        from triton.testing import do_bench

        res = do_bench(fn, warmup=warmup_ms, rep=rep_ms, quantiles=[0.5, 0.2, 0.8])
        return float(res[0]), float(res[1]), float(res[2])
    times = []
    for _ in range(max(1, reps)):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    times.sort()
    mid = times[len(times) // 2]
    return mid, times[0], times[-1]


def _profile(fn, device: str, args, title: str, median_ms: float, top: int = 25) -> None:
    """Append to ``args.profile``/e2e_profile.md the host time to issue one step of ``fn`` and a
    cProfile of ``args.profile_steps`` steps, by own time (see the module's doc)."""
    import cProfile
    import io
    import pstats

    from tritonconv.bench.timing import minor_faults

    steps = max(1, getattr(args, "profile_steps", 10))
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    issue, faults = [], []
    for _ in range(steps):  # each step from an idle device: its launches never wait for queue space
        sync()
        f0 = minor_faults()
        t0 = time.perf_counter()
        fn()
        issue.append((time.perf_counter() - t0) * 1e3)
        faults.append(minor_faults() - f0)
    sync()
    issued_ms = sorted(issue)[len(issue) // 2]
    step_faults = sorted(faults)[len(faults) // 2]
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(steps):
        fn()
    prof.disable()
    sync()
    text = io.StringIO()
    stats = pstats.Stats(prof, stream=text)
    calls, total = stats.total_calls, stats.total_tt  # type: ignore[attr-defined]
    rows = sorted(stats.stats.items(), key=lambda kv: kv[1][2], reverse=True)[:top]  # type: ignore[attr-defined]
    out = Path(args.profile)
    out.mkdir(parents=True, exist_ok=True)
    lines = [f"## {title}", "",
             f"Host time to issue one step (median of {steps}): {issued_ms:.3f} ms (median step {median_ms:.3f} ms: "
             f"{'host-bound' if issued_ms >= 0.9 * median_ms else 'the device is the bound'}); "
             f"under cProfile, {steps} steps: {calls} calls, {total * 1e3 / steps:.3f} ms a step "
             f"(cProfile's own cost included). Minor page faults a step (median, every thread): "
             f"{step_faults} (CPython 3.11 and 3.12 map a 16 KiB chunk of frames anew, a fault each time, "
             f"where a call's frames go back and forth across a chunk's edge: perf/host_cost.py's doc).", "",
             "| own ms / step | total ms / step | calls / step | function |", "| --- | --- | --- | --- |"]
    for (file, line, name), (_, ncalls, tottime, cumtime, _) in rows:
        where = name if file == "~" else f"{_short_path(file)}:{line}({name})"
        lines.append(f"| {tottime * 1e3 / steps:.3f} | {cumtime * 1e3 / steps:.3f} | {ncalls / steps:g} | "
                     f"`{where.replace('|', '/')}` |")
    with open(out / "e2e_profile.md", "a") as f:
        f.write("\n".join(lines) + "\n\n")


def _short_path(file: str) -> str:
    """A profiled function's file, from its package on (tritonconv/..., torch/..., triton/...)."""
    parts = Path(file).parts
    for i in range(len(parts) - 1, -1, -1):
        if parts[i] in ("tritonconv", "torch", "triton", "perf"):
            return "/".join(parts[i:])
    return parts[-1] if parts else file


def _precompile(args, device: str, mode: str) -> None:
    """Compile (in parallel) and so speed up tuning of every tritonconv kernel a ``mode``
    ("forward" or "forward_backward") runs, through the ResNet-50 preset, whose layers are
    exactly this network's convs."""
    if device != "cuda" or args.no_precompile:
        return
    from tritonconv.bench import presets, providers
    from tritonconv.bench.precompile import precompile

    cases = [providers.Case("resnet50", layer, args.batch, mode, args.dtype, args.layout, device)
             for layer in presets.get_preset("resnet50").layers]
    stats = precompile([providers.each_family_thunk(c) for c in cases], workers=args.workers)
    print(f"resnet50: precompile: {stats}", file=sys.stderr)
    torch.cuda.empty_cache()


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--dtype", default="fp16", choices=("fp16", "bf16", "fp32"))
    p.add_argument("--layout", default="channels_last", choices=("channels_last", "nchw"))
    p.add_argument("--image", type=int, default=224)
    p.add_argument("--providers", default="cudnn,tritonconv", help="comma-separated: cudnn,tritonconv")
    p.add_argument("--modes", default="infer,graph,train",
                   help="comma-separated: train (forward+backward), infer (eval forward, no_grad), "
                        "graph (infer captured in a CUDA graph; CUDA only), train_graph (train captured "
                        "in a CUDA graph; CUDA only, not by default), folded (infer with BatchNorm "
                        "folded, each provider's way; not by default)")
    p.add_argument("--out", default="perf/out")
    p.add_argument("--csv", default="", help="CSV to append to (default OUT/results.csv)")
    p.add_argument("--run-id", default="")
    p.add_argument("--time-budget", type=float, default=0, help="seconds; measure nothing new after that")
    p.add_argument("--warmup-ms", type=float, default=50)
    p.add_argument("--rep-ms", type=float, default=500)
    p.add_argument("--reps", type=int, default=2, help="timed steps without CUDA")
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--no-precompile", action="store_true")
    p.add_argument("--profile", default="", metavar="DIR",
                   help="after each eager row, profile the host side of its step into DIR/e2e_profile.md")
    p.add_argument("--profile-steps", type=int, default=10)
    p.add_argument("--profile-top", type=int, default=25, help="functions per profile")
    p.add_argument("--tiny", action="store_true", help="a tiny ResNet (for the CPU interpreter): blocks 1,1,1,1, "
                   "width 8, 10 classes; use with --image 32 --batch 2")
    args = p.parse_args(list(argv) if argv is not None else None)

    import tritonconv
    from tritonconv.bench import presets, sweep
    from tritonconv.bench.providers import DTYPES

    device = "cuda" if torch.cuda.is_available() and not tritonconv.INTERPRETER else "cpu"
    if device == "cpu" and not tritonconv.INTERPRETER:
        print("resnet50: no CUDA device; run with TRITON_INTERPRET=1 (and --tiny) for the CPU", file=sys.stderr)
        return 2
    deadline = time.monotonic() + args.time_budget if args.time_budget > 0 else None
    dtype, fmt = DTYPES[args.dtype], (torch.channels_last if args.layout == "channels_last" else
                                      torch.contiguous_format)
    torch.manual_seed(0)
    model = (ResNet((1, 1, 1, 1), 8, 10) if args.tiny else resnet50())
    model = model.to(device=device, dtype=dtype, memory_format=fmt).train()
    num_classes = model.fc.out_features
    x = torch.randn(args.batch, 3, args.image, args.image, device=device, dtype=dtype).contiguous(memory_format=fmt)
    target = torch.randint(0, num_classes, (args.batch,), device=device)

    convs = conv_layers(model, args.image)
    if not args.tiny and args.image == 224:
        shapes = {layer.shape_key: layer for layer in presets.get_preset("resnet50").layers}
        flops = sum(shapes[(C, H, W, K, R, S, st, pad, dil, g)].problem(args.batch).flops
                    for _, (C, H, W, K, R, S, st, pad, dil, g) in convs)
    else:
        from tritonconv.spec import problem_from_shapes

        flops = sum(problem_from_shapes((args.batch, C, H, W), (K, C // g, R, S), st, pad, dil, g).flops
                    for _, (C, H, W, K, R, S, st, pad, dil, g) in convs)
    # the convs' forward flops; a training step runs 3x (forward, grad_input, grad_weight)

    if args.profile:  # this run's profiles only
        Path(args.profile).mkdir(parents=True, exist_ok=True)
        (Path(args.profile) / "e2e_profile.md").write_text("")
    info = sweep.run_info(args.run_id or None)
    sink = sweep.CsvSink(Path(args.csv) if args.csv else Path(args.out) / "results.csv")
    providers = [s.strip() for s in args.providers.split(",") if s.strip()]
    if device == "cpu":
        providers = ["aten-cpu" if pr == "cudnn" else pr for pr in providers]
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = set(modes) - set(_MODES)
    if unknown:
        print(f"resnet50: unknown modes {sorted(unknown)}; expected some of {list(_MODES)}", file=sys.stderr)
        return 2
    rows = []
    precompiled = set()  # the sweep modes whose kernels _precompile has compiled
    for mode in modes:
        csv_mode, what = _MODES[mode]
        reference = None  # the same computation in float64 on aten, for every provider's rel_err
        baseline_err = 0.0
        for provider in providers:
            row = info.base_row()
            row.update(kernel="resnet_tiny_e2e" if args.tiny else "resnet50_e2e", provider=provider,
                       mode=csv_mode, preset="resnet50", layer="network", count=1, N=args.batch, C=3,
                       H=args.image, W=args.image, K=num_classes,
                       dtype=args.dtype, layout=args.layout, flops=flops * (3 if mode in _TRAIN else 1),
                       timestamp=sweep.utc_timestamp(), note=f"{what}; {len(convs)} convs; "
                       + ("pooling, fc" if mode == "folded" and provider == "tritonconv"
                          else "ReLU, adds, pooling, fc" if mode == "folded" else "BN, ReLU, pooling, fc")
                       + (", loss" if mode in _TRAIN else "") + " from PyTorch"
                       + ("; rel_err of the step with BN in eval mode" if mode in _TRAIN else ""))
            if info.interpreter:
                row["note"] += f"; {sweep.INTERPRETER_LABEL}"
            if deadline is not None and time.monotonic() > deadline:
                row["status"] = "skipped: time budget"
            elif mode in _GRAPHED and device != "cuda":
                row["status"] = "unsupported: CUDA graphs need a GPU"
            else:
                try:
                    kernels = "forward_backward" if mode in _TRAIN else "forward"
                    if provider == "tritonconv" and not precompiled & {kernels, "forward_backward"}:
                        _precompile(args, device, kernels)
                        precompiled.add(kernels)
                    if reference is None:
                        reference = (_reference_step(model, x, target) if mode in _TRAIN
                                     else _reference_infer(model, x))
                    baseline_err = _measure(row, model, provider, mode, x, target, reference, baseline_err,
                                            args, device)
                except Exception as err:
                    row["status"] = sweep._status_of(err)
            sink.write(row)
            rows.append(row)
            if device == "cuda":
                torch.cuda.empty_cache()
            print(f"resnet50 {mode} {provider}: {row.get('status')} {row.get('median_ms', float('nan')):.3f} ms "
                  f"rel_err {row.get('rel_err', float('nan')):.2e}", file=sys.stderr)
    for mode in modes:
        by = {r["provider"]: r for r in rows if r.get("status") == "ok" and r["mode"] == _MODES[mode][0]}
        if "tritonconv" in by and len(by) > 1:
            for name, r in by.items():
                if name != "tritonconv":
                    print(f"resnet50 e2e {mode}: tritonconv {by['tritonconv']['median_ms']:.2f} ms vs {name} "
                          f"{r['median_ms']:.2f} ms: speedup {r['median_ms'] / by['tritonconv']['median_ms']:.2f}x")
    return 0


# mode -> (the CSV's mode, what a row measures)
_MODES = {
    "train": ("forward_backward", "training step"),
    "infer": ("forward", "inference, eager, no_grad"),
    "graph": ("forward_cudagraph", "inference replayed from a CUDA graph"),
    "train_graph": ("forward_backward_cudagraph", "training step replayed from a CUDA graph"),
    "folded": ("forward_bn_folded", "inference, eager, no_grad, BatchNorm folded into the convs "
               "(tritonconv: convert(fuse=True), residual and ReLU in the epilogue; cuDNN: torch.fx fuse)"),
}


_TRAIN = ("train", "train_graph")  # the modes that time a training step
_GRAPHED = ("graph", "train_graph")  # the modes replayed from a CUDA graph


def _fold(net: nn.Module, provider: str) -> nn.Module:
    """``net`` (in eval mode) with its BatchNorms folded, by the provider's own tool."""
    import tritonconv

    if provider == "tritonconv":
        return tritonconv.convert(net, fuse=True)
    from torch.fx.experimental.optimization import fuse

    return fuse(net)


def _measure(row, model, provider, mode, x, target, reference, baseline_err, args, device) -> float:
    """Fill ``row`` with ``provider``'s numbers for ``mode``; return the baseline error so far."""
    import tritonconv

    net = copy.deepcopy(model)
    if mode != "train":
        net.eval()
    if mode == "folded":
        net = _fold(net, provider)
    elif provider == "tritonconv":
        net = tritonconv.convert(net)
    old_bench = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = provider == "cudnn"
    try:
        fn = _step_fn(net, x, target) if mode in _TRAIN else _infer_fn(net, x)
        if mode in _TRAIN:
            net.eval()  # the check's BN mode (see _reference_step), before any step moves its statistics
            first = fn()  # tunes / picks algorithms
            net.train()
        else:
            first = fn()  # tunes / picks algorithms
        aten_convs = 0
        if provider == "tritonconv":
            with AtenConvCounter() as counter:
                fn()
            aten_convs = counter.count
            row["note"] += f"; aten convolutions in a tritonconv run: {aten_convs}"
        if mode == "graph":
            fn = _graphed_fn(_infer_fn(net, x.clone()))
            first = fn()
        elif mode == "train_graph":
            static_x = x.clone()
            net.eval()  # a graph of the checked step first (BN as in _reference_step), then the timed one
            first = _graphed_fn(_step_fn(net, static_x, target))()
            net.train()
            fn = _graphed_fn(_step_fn(net, static_x, target))
        if mode in _TRAIN:
            # the loss, and all parameter gradients as one vector (per-tensor errors of
            # BatchNorm's tiny gradients say more about conditioning than about convs)
            flat = [torch.cat([g.detach().double().flatten() for g in grads]) for grads in
                    (first[1:], reference[1:])]
            row["rel_err"] = max(_rel(first[0], reference[0]), _rel(*flat))
        else:
            row["rel_err"] = _rel(first[0], reference[0])
        del first
        median, p20, p80 = _time(fn, device, args.warmup_ms, args.rep_ms, args.reps)
        if getattr(args, "profile", "") and mode not in _GRAPHED:
            try:
                _profile(fn, device, args, f"{mode} ({_MODES[mode][1]}), {provider}", median,
                         getattr(args, "profile_top", 25))
            except Exception as err:  # the profile is extra: the timed row stands without it
                row["note"] += f"; host profile failed: {type(err).__name__}: {str(err)[:80]}"
        if provider == "tritonconv":
            # a key without a launch plan takes the full path on every call (some 10x the host
            # time): eager rows are host-bound, so say how many there are and why
            from tritonconv import plans

            why = "; ".join(f"{n}x {reason[:80]}" for reason, n in plans.reasons().items())
            stats = plans.stats()
            forms = plans.launch_forms()
            row["note"] += (f"; launch plans (process so far): {stats['plans']} keys planned, "
                            f"{stats['unplannable']} not" + (f" ({why})" if why else "")
                            + (f"; {forms['unrolled']} of their {sum(forms.values())} launches unrolled"
                               if sum(forms.values()) else ""))
    finally:
        torch.backends.cudnn.benchmark = old_bench
    # a mismatch: farther from float64 than the dtype's tolerance and than twice the
    # baseline's own error (a BatchNorm network in pure fp16 can be far from fp64 for both)
    tol = max({"fp16": 0.05, "bf16": 0.1, "fp32": 0.02}[args.dtype], 2 * baseline_err)
    if provider != "tritonconv":
        baseline_err = max(baseline_err, row["rel_err"])
    aten_free = aten_convs == 0
    if provider == "tritonconv" and row["rel_err"] > tol:
        row["status"] = f"mismatch: rel_err vs float64 {row['rel_err']:.2e} > {tol:.1e}"
    elif not aten_free:
        row["status"] = "error: aten convolutions ran in the tritonconv run"
    else:
        row["status"] = "ok"
    row.update(median_ms=median, p20_ms=p20, p80_ms=p80, tflops=row["flops"] / (median * 1e-3) / 1e12)
    return baseline_err


if __name__ == "__main__":
    sys.exit(main())
