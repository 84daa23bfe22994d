"""The sweep: measure every (preset layer, mode, dtype, layout) for every provider.

Order of work, chosen so that a sweep stopped by its time budget has the most
useful part done: per (preset, dtype, layout, mode) chunk, first compile every
tritonconv kernel the chunk needs in parallel (``precompile``), then layer by
layer the providers quick to set up (``Provider.quick``): tritonconv first (the
other rows carry the speedup over it), then cuDNN and the im2col baselines, so
that every layer reached has its comparison (the H100 check at 283a32b spent a
forward stage tuning tritonconv over 18 layers and, provider by provider, timed
no baseline); then Inductor, the slowest to set up (a compile per layer), over
all the chunk's layers.

Per measurement:

1. the provider's call is bound to one or more input sets (several when a
   layer's inputs are smaller than L2, cycled call by call, on top of the L2
   flush that ``triton.testing.do_bench`` does before every call);
2. the first call compiles / autotunes and its result is checked against
   float64 aten (``rel_err``; above a loose tolerance the row's status is
   ``mismatch``, so a fast wrong result never counts as a speedup);
3. one more call measures extra device memory: the peak allocated during the
   call beyond what was allocated before it and beyond what it returns;
4. ``timing.device_bench`` times it: do_bench's protocol (median, 20th and 80th
   percentiles, an L2 flush before every call) with a spin kernel after each flush that covers
   the call's host time, so the times are the device's; the call's host time is measured apart
   (``host_us``). See ``timing`` for why.

Without CUDA the kernels run through Triton's interpreter and the timer is
``time.perf_counter``; every row then says "interpreter timings, not
performance". Each row is appended to the CSV as soon as it is measured.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import datetime as _dt
import math
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import torch

from .. import plans
from ..kernels._common import INTERPRETER
from . import presets as presets_mod
from . import providers as prov
from . import timing
from .precompile import compiled_kernels, precompile
from .report import (FAMILIES_NOTE, FIRST_CALL_NOTE, HINTED_NOTE, ROUTER_NOTE, TILES_NOTE,
                     format_router_timings, format_tiles)

__all__ = ["COLUMNS", "INTERPRETER_LABEL", "RunInfo", "CsvSink", "run_info", "main", "tune_presets"]

INTERPRETER_LABEL = "interpreter timings, not performance"
# the timer of CUDA rows: do_bench's protocol with a spin that hides the host (bench.timing)
CUDA_TIMER = "do_bench+spin"

COLUMNS = [
    "kernel", "provider", "mode", "preset", "layer", "count",
    "N", "C", "H", "W", "K", "R", "S", "P", "Q",
    "stride_h", "stride_w", "pad_h", "pad_w", "dil_h", "dil_w", "groups",
    "dtype", "layout", "status",
    "median_ms", "p20_ms", "p80_ms", "host_us", "flops", "tflops", "peak_tflops", "pct_peak",
    "extra_mem_bytes", "speedup_tritonconv", "rel_err", "input_sets",
    "timer", "note", "gpu", "torch", "triton", "tritonconv", "commit", "timestamp", "run_id",
]


# --------------------------------------------------------------------------- environment


@dataclass
class RunInfo:
    device: str  # cuda | cpu
    gpu: str
    torch: str
    triton: str
    tritonconv: str
    commit: str
    run_id: str
    timer: str
    interpreter: bool

    def base_row(self) -> Dict[str, Any]:
        return {"gpu": self.gpu, "torch": self.torch, "triton": self.triton, "tritonconv": self.tritonconv,
                "commit": self.commit, "run_id": self.run_id, "timer": self.timer}


def git_commit(start: Optional[Path] = None) -> str:
    """$TRITONCONV_COMMIT, else the short commit of the checkout the package lives in
    ("-dirty" when it has changes), else "unknown" (an installed package, a copied tree)."""
    env = os.environ.get("TRITONCONV_COMMIT")
    if env:
        return env
    root = start or Path(__file__).resolve().parents[2]
    try:
        sha = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=10)
        if sha.returncode != 0:
            return "unknown"
        status = subprocess.run(["git", "-C", str(root), "status", "--porcelain"], capture_output=True,
                                text=True, timeout=10)
        return sha.stdout.strip() + ("-dirty" if status.stdout.strip() else "")
    except Exception:
        return "unknown"


def run_info(run_id: Optional[str] = None) -> RunInfo:
    import triton

    from .. import __version__

    cuda = torch.cuda.is_available() and not INTERPRETER
    run_id = run_id or os.environ.get("TRITONCONV_RUN_ID") or (
        _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ") + f"-{os.getpid()}")
    return RunInfo(
        device="cuda" if cuda else "cpu",
        gpu=torch.cuda.get_device_name() if cuda else "cpu (Triton interpreter)",
        torch=torch.__version__,
        triton=triton.__version__,
        tritonconv=__version__,
        commit=git_commit(),
        run_id=run_id,
        timer=CUDA_TIMER if cuda else f"perf_counter ({INTERPRETER_LABEL})",
        interpreter=not cuda,
    )


def utc_timestamp() -> str:
    """Now, as the CSV rows' timestamp: ISO 8601 in UTC to the second."""
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


# --------------------------------------------------------------------------- CSV


class CsvSink:
    """Appends rows to a long-format CSV, one write per row (a killed sweep keeps its rows).

    A file whose header differs (written by another version of this harness)
    is moved aside to ``<name>.<mtime>.csv`` with a message, never mixed.
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists() and self.path.stat().st_size > 0:
            with open(self.path, newline="") as f:
                header = next(csv.reader(f), [])
            if header != COLUMNS:
                aside = self.path.with_suffix(f".{int(self.path.stat().st_mtime)}.csv")
                self.path.rename(aside)
                print(f"tritonconv bench: {self.path} has other columns; moved it to {aside}", file=sys.stderr)

    def write(self, row: Dict[str, Any]) -> None:
        new = not self.path.exists() or self.path.stat().st_size == 0
        with open(self.path, "a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
            if new:
                writer.writeheader()
            writer.writerow({k: _fmt(row.get(k)) for k in COLUMNS})


def _fmt(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, float):
        if math.isnan(value):
            return ""
        return f"{value:.6g}"
    return value


def case_row(case: prov.Case, provider: str, info: RunInfo) -> Dict[str, Any]:
    """The identifying half of a row: what was measured, where, with what."""
    pb, layer = case.problem, case.layer
    row = info.base_row()
    row.update(
        kernel="conv2d", provider=provider, mode=case.mode, preset=case.preset, layer=layer.name,
        count=layer.count, N=pb.N, C=pb.C, H=pb.H, W=pb.W, K=pb.K, R=pb.R, S=pb.S, P=pb.P, Q=pb.Q,
        stride_h=pb.stride_h, stride_w=pb.stride_w, pad_h=pb.pad_h, pad_w=pb.pad_w,
        dil_h=pb.dil_h, dil_w=pb.dil_w, groups=pb.groups, dtype=case.dtype, layout=case.layout,
        flops=case.flops, timestamp=utc_timestamp(),
    )
    return row


# --------------------------------------------------------------------------- timing


def time_call(fn: Callable[[], Any], info: RunInfo, opts) -> Tuple[float, float, float, Optional[float]]:
    """(median, p20, p80) in ms and the host us per call: ``timing.device_bench`` on CUDA;
    perf_counter under the interpreter (no separate host time: it is all host)."""
    if info.device == "cuda":
        res = timing.device_bench(fn, warmup_ms=opts.warmup_ms, rep_ms=opts.rep_ms)
        return res.median_ms, res.p20_ms, res.p80_ms, res.host_us
    times = []
    for _ in range(max(1, opts.reps)):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    times.sort()
    return timing.quantile(times, 0.5), timing.quantile(times, 0.2), timing.quantile(times, 0.8), None


def measure_peak(dtype: str, info: RunInfo, opts) -> float:
    """Measured matmul TFLOP/s for a dtype (fp32: TF32 exactly when cuDNN convs use it)."""
    tdtype = prov.DTYPES[dtype]
    n = 8192 if info.device == "cuda" else 256
    a = torch.randn(n, n, device=info.device).to(tdtype)
    b = torch.randn(n, n, device=info.device).to(tdtype)
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = bool(torch.backends.cudnn.allow_tf32)
    try:
        ms = time_call(lambda: torch.mm(a, b), info, opts)[0]
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old
    return 2 * n**3 / (ms * 1e-3) / 1e12


def extra_memory(fn: Callable[[], Any], info: RunInfo) -> Optional[int]:
    """Peak device memory during one call beyond what was allocated before it and what it returns."""
    if info.device != "cuda":
        return None
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    out = fn()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated()
    extra = peak - base - prov.tensor_bytes(out)
    del out
    return max(int(extra), 0)


def input_sets_for(case: prov.Case, info: RunInfo, opts) -> int:
    """How many input sets to cycle through: enough to cover twice the L2 when a set is smaller."""
    if info.device != "cuda" or not opts.rotate:
        return 1
    size = case.input_bytes()
    if size >= opts.l2_bytes:
        return 1
    return int(min(opts.max_sets, max(2, math.ceil(2 * opts.l2_bytes / max(size, 1)))))


def _status_of(err: BaseException) -> str:
    if isinstance(err, torch.cuda.OutOfMemoryError) or "out of memory" in str(err).lower():
        return "oom"
    text = " ".join(str(err).split())
    return f"error: {type(err).__name__}: {text[:200]}"


def _free(info: RunInfo) -> None:
    if info.device == "cuda":
        try:
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
        except Exception:  # a sticky CUDA error: the next measurement reports it
            pass


class _Sweep:
    def __init__(self, info: RunInfo, opts, sink: CsvSink):
        self.info, self.opts, self.sink = info, opts, sink
        self.peaks: Dict[str, float] = {}
        self.refs: Dict[prov.Case, Tuple[torch.Tensor, ...]] = {}
        self.tc_median: Dict[prov.Case, float] = {}
        self.rows: List[Dict[str, Any]] = []

    def out_of_time(self) -> bool:
        return self.opts.deadline is not None and time.monotonic() > self.opts.deadline

    def peak(self, dtype: str) -> float:
        if dtype not in self.peaks:
            try:
                self.peaks[dtype] = measure_peak(dtype, self.info, self.opts)
            except Exception:
                self.peaks[dtype] = float("nan")
        return self.peaks[dtype]

    def emit(self, row: Dict[str, Any]) -> None:
        self.sink.write(row)
        self.rows.append(row)

    def reference(self, case: prov.Case) -> Tuple[torch.Tensor, ...]:
        if case not in self.refs:
            self.refs[case] = prov.reference_outputs(case, prov.make_inputs(case, 0))
        return self.refs[case]

    def measure(self, provider: prov.Provider, case: prov.Case) -> Dict[str, Any]:
        info, opts = self.info, self.opts
        row = case_row(case, provider.name, info)
        row["note"] = provider.note + (f"; {INTERPRETER_LABEL}" if info.interpreter else "")
        reason = provider.unsupported(case)
        if reason:
            row["status"] = reason
            return row
        n_sets = input_sets_for(case, info, opts)
        row["input_sets"] = n_sets
        calls = []
        unplanned_before = plans.reasons() if provider.name == "tritonconv" else None
        try:
            provider.prepare(case)
            calls = [provider.bind(case, prov.make_inputs(case, i)) for i in range(n_sets)]
            with _families_recorded(provider, row):
                out = calls[0]()  # compiles / autotunes (and the router picks each op's family)
                if info.device == "cuda":
                    torch.cuda.synchronize()
            err = prov.rel_err(out, self.reference(case))
            del out
            row["rel_err"] = err
            row["extra_mem_bytes"] = extra_memory(calls[0], info)
            state = {"i": 0}

            def rotating():
                fn = calls[state["i"] % n_sets]
                state["i"] += 1
                return fn()

            median, p20, p80, host_us = time_call(rotating if n_sets > 1 else calls[0], info, opts)
        except Exception as exc:  # a provider that fails is a row, not a crash
            row["status"] = _status_of(exc)
            calls = []
            _free(info)
            return row
        finally:
            calls = []
        row.update(median_ms=median, p20_ms=p20, p80_ms=p80, host_us=host_us)
        if unplanned_before is not None:
            new = {why: n - unplanned_before.get(why, 0) for why, n in plans.reasons().items()
                   if n > unplanned_before.get(why, 0)}
            if new:  # its calls took the full path: host_us is that path's
                row["note"] = "; ".join(filter(None, [row.get("note"), NO_PLAN_NOTE + ", ".join(
                    f"{why} ({n} key{'s' if n > 1 else ''})" for why, n in new.items())]))
        tflops = case.flops / (median * 1e-3) / 1e12 if median > 0 else float("nan")
        peak = self.peak(case.dtype)
        row.update(tflops=tflops, peak_tflops=peak, pct_peak=100.0 * tflops / peak if peak == peak and peak else None)
        tol = prov.tolerance(case)
        row["status"] = "ok" if err <= tol else f"mismatch: rel_err {err:.2e} > {tol:.0e}"
        if provider.name == "tritonconv" and row["status"] == "ok":
            self.tc_median[case] = median
        elif case in self.tc_median and median > 0:
            row["speedup_tritonconv"] = median / self.tc_median[case]
        return row

    def skipped(self, provider: prov.Provider, case: prov.Case, why: str) -> Dict[str, Any]:
        row = case_row(case, provider.name, self.info)
        row.update(status=why, note=provider.note + (f"; {INTERPRETER_LABEL}" if self.info.interpreter else ""))
        return row


@contextlib.contextmanager
def _families_recorded(provider: prov.Provider, row: Dict[str, Any]):
    """For tritonconv, add the kernel family each op ran on to the row's note
    ("families: forward=implicit_tma"), so a sweep shows which family won each layer, and what
    each candidate family took where the router timed them in this process ("router ms:
    forward[tap_tma=0.41 implicit_tma=0.52]"), so it shows each family's effect too, and the
    tiles each kernel's autotuner launched ("tiles: fprop_tap_tma=128x128x64 w8 s3"), the
    candidates' included; and, on CUDA, what the call took and the kernels it compiled ("first
    call: 6.1 s, 12 kernels compiled": tuning's cost, and the specialisations precompile missed),
    with the tile choices that came untimed from an earlier run's (tuning's hints)."""
    router = prov._router() if provider.name == "tritonconv" else None
    if router is None or not hasattr(router, "recording"):
        yield
        return
    from .. import tuning

    compiled_before, hinted_before, start = compiled_kernels(), tuning.hints_used(), time.perf_counter()
    with router.recording(timings=True) as seen, tuning.recording_configs() as tiles:
        yield
    took, compiled_after = time.perf_counter() - start, compiled_kernels()
    hinted = tuning.hints_used() - hinted_before
    parts = [row.get("note")]
    if seen:
        ran = ", ".join(f"{direction}={family}" for direction, family in dict.fromkeys((d, f) for d, f, _ in seen))
        parts.append(FAMILIES_NOTE + ran)
        timed = {direction: t for direction, _, t in reversed(seen) if t}  # the first timing per direction
        if timed:
            parts.append(ROUTER_NOTE + format_router_timings(timed))
    if tiles:
        parts.append(TILES_NOTE + format_tiles(tiles))
    if compiled_before is not None and compiled_after is not None:
        parts.append(f"{FIRST_CALL_NOTE}{took:.1f} s, {compiled_after - compiled_before} kernels compiled"
                     + (f", {hinted} {HINTED_NOTE}" if hinted else ""))
    row["note"] = "; ".join(part for part in parts if part)


# in a tritonconv row's note: the keys its calls were first to leave without a launch plan
# (plans.py), and why (a key an earlier row left so is counted there, not again)
NO_PLAN_NOTE = "no launch plan: "


def _split(text: str) -> List[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _chunks(opts, device: str) -> Iterable[Tuple[str, List[prov.Case]]]:
    for preset_name in opts.presets:
        preset = presets_mod.get_preset(preset_name)
        layers = [layer for layer in preset.layers if not opts.layers or layer.name in opts.layers]
        layers = layers[: opts.limit] if opts.limit else layers
        if not layers:
            continue
        N = opts.batch or preset.batch
        for dtype in opts.dtypes:
            for layout in opts.layouts:
                for mode in opts.modes:
                    cases = [prov.Case(preset.name, layer, N, mode, dtype, layout, device) for layer in layers]
                    yield f"{preset.name} N={N} {dtype} {layout} {mode}", cases


def _progress(total: int, desc: str, opts):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="meas", dynamic_ncols=True, mininterval=0.5,
                disable=opts.quiet, file=sys.stderr)


def _precompile_chunk(cases: List[prov.Case], opts) -> None:
    """Compile every tritonconv kernel (and autotune candidate) a chunk will launch."""
    if INTERPRETER or opts.no_precompile:
        return
    from tqdm.auto import tqdm

    with tqdm(total=len(cases), desc="compiling tritonconv kernels", unit="layer", disable=opts.quiet,
              file=sys.stderr, dynamic_ncols=True) as bar:
        stats = precompile([prov.each_family_thunk(c) for c in cases], workers=opts.workers,
                           progress=bar.update)
    print(f"  precompile: {stats}", file=sys.stderr)
    _free_any()


def _free_any() -> None:
    if torch.cuda.is_available() and not INTERPRETER:
        torch.cuda.empty_cache()


def run_sweep(opts, info: RunInfo) -> List[Dict[str, Any]]:
    sink = CsvSink(opts.csv)
    sweep = _Sweep(info, opts, sink)
    providers = [prov.get_provider(name) for name in opts.providers]
    chunks = list(_chunks(opts, info.device))
    total = sum(len(cases) for _, cases in chunks) * len(providers)
    with _progress(total, "sweep", opts) as bar:
        for label, cases in chunks:
            if "tritonconv" in opts.providers and not sweep.out_of_time():
                _precompile_chunk(cases, opts)
            def one(provider, case):
                bar.set_description(f"{label} {provider.name} {case.layer.name}"[:70])
                if sweep.out_of_time():
                    row = sweep.skipped(provider, case, "skipped: time budget")
                else:
                    row = sweep.measure(provider, case)
                sweep.emit(row)
                bar.update(1)

            quick = [p for p in providers if p.quick]
            for case in cases:
                for provider in quick:
                    with provider.session():
                        one(provider, case)
            if quick:
                _free(info)
            for provider in (p for p in providers if not p.quick):
                with provider.session():
                    for case in cases:
                        one(provider, case)
                _free(info)
            sweep.refs.clear()
            _free(info)
    return sweep.rows


# --------------------------------------------------------------------------- options


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tritonconv bench",
        description="Sweep preset layers against cuDNN, Inductor and the im2col baselines; write CSV, "
                    "markdown and a plot. Without CUDA: the smoke preset through Triton's interpreter.",
    )
    p.add_argument("--preset", default="", help="comma-separated presets (default: resnet50 on CUDA, smoke on CPU)")
    p.add_argument("--list", action="store_true", help="list presets and their layers, then exit")
    p.add_argument("--batch", type=int, default=0, help="N (default: each preset's own)")
    p.add_argument("--dtype", default="", help="comma-separated fp16,bf16,fp32 (default fp16 on CUDA, fp32 on CPU)")
    p.add_argument("--layout", default="channels_last", help="comma-separated channels_last,nchw")
    p.add_argument("--modes", default="forward", help="comma-separated " + ",".join(prov.MODES) + " (or 'all')")
    p.add_argument("--providers", default="", help="comma-separated " + ",".join(prov.PROVIDERS)
                   + " (default: all that run on this machine)")
    p.add_argument("--layers", default="", help="comma-separated layer names (default: all of the preset)")
    p.add_argument("--limit", type=int, default=0, help="only the first N layers of each preset")
    p.add_argument("--out", default="perf/out", help="output directory (default perf/out)")
    p.add_argument("--csv", default="", help="CSV to append to (default OUT/results.csv)")
    p.add_argument("--run-id", default="", help="tag for this run's rows (default $TRITONCONV_RUN_ID or a timestamp); "
                   "the summary covers the latest run id in the CSV")
    p.add_argument("--time-budget", type=float, default=0, help="seconds; start no measurement after that "
                   "(the rest become 'skipped: time budget' rows)")
    p.add_argument("--warmup-ms", type=float, default=25, help="do_bench warm-up per measurement (ms, default 25)")
    p.add_argument("--rep-ms", type=float, default=100, help="do_bench timed repetitions per measurement "
                   "(ms, default 100)")
    p.add_argument("--reps", type=int, default=0, help="timed calls per measurement under the interpreter "
                   "(default 2)")
    p.add_argument("--no-rotate", dest="rotate", action="store_false", help="one input set even when smaller than L2")
    p.add_argument("--max-sets", type=int, default=8, help="most input sets to rotate through")
    p.add_argument("--l2-mb", type=float, default=0, help="L2 size in MB (default: the device's, else 50)")
    p.add_argument("--workers", type=int, default=0, help="parallel compile threads (default: CPU count)")
    p.add_argument("--no-precompile", action="store_true", help="do not compile tritonconv kernels in parallel first")
    p.add_argument("--no-report", action="store_true", help="only append to the CSV")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def _validate(opts) -> None:
    """Unknown names stop the command with the list of known ones."""
    for name, attr, allowed in (("dtype", "dtypes", prov.DTYPES), ("layout", "layouts", prov.LAYOUTS),
                                ("mode", "modes", prov.MODES), ("provider", "providers", prov.PROVIDERS),
                                ("preset", "presets", presets_mod.PRESETS)):
        bad = [v for v in getattr(opts, attr, []) if v not in allowed]
        if bad:
            raise SystemExit(f"tritonconv: unknown {name} {bad}; choose from {', '.join(allowed)}")
    if opts.layers:
        known = {layer.name for p in opts.presets for layer in presets_mod.get_preset(p).layers}
        unknown = [name for name in opts.layers if name not in known]
        if unknown:
            raise SystemExit(f"tritonconv: no layer {unknown} in presets {opts.presets} (see --list)")


def parse_options(argv: Optional[Sequence[str]], device: str):
    opts = _parser().parse_args(list(argv) if argv is not None else None)
    opts.presets = _split(opts.preset) or (["resnet50"] if device == "cuda" else ["smoke"])
    opts.dtypes = _split(opts.dtype) or (["fp16"] if device == "cuda" else ["fp32"])
    opts.layouts = _split(opts.layout)
    opts.modes = list(prov.MODES) if opts.modes.strip() == "all" else _split(opts.modes)
    opts.providers = _split(opts.providers) or prov.default_providers(device)
    opts.layers = _split(opts.layers)
    _validate(opts)
    if "tritonconv" in opts.providers:  # first, so the other rows can carry the speedup over it
        opts.providers.remove("tritonconv")
        opts.providers.insert(0, "tritonconv")
    opts.out = Path(opts.out)
    opts.csv = Path(opts.csv) if opts.csv else opts.out / "results.csv"
    opts.reps = opts.reps or 2
    opts.deadline = time.monotonic() + opts.time_budget if opts.time_budget > 0 else None
    if opts.l2_mb > 0:
        opts.l2_bytes = int(opts.l2_mb * 2**20)
    elif device == "cuda":
        props = torch.cuda.get_device_properties(torch.cuda.current_device())
        opts.l2_bytes = int(getattr(props, "L2_cache_size", 0) or 50 * 2**20)
    else:
        opts.l2_bytes = 50 * 2**20
    return opts


def _list_presets() -> int:
    for preset in presets_mod.PRESETS.values():
        print(f"{preset.name}: {preset.description} (default N={preset.batch}, {len(preset.layers)} distinct convs, "
              f"{sum(layer.count for layer in preset.layers)} in the network)")
        for layer in preset.layers:
            print(f"    {layer.name:<40} C={layer.C:<5} {layer.H}x{layer.W} K={layer.K:<5} {layer.R}x{layer.S} "
                  f"stride={layer.stride[0]} pad={layer.padding[0]} groups={layer.groups} x{layer.count}")
    return 0


def _reexec_under_interpreter(argv: Sequence[str]) -> int:
    """No GPU and the interpreter is off: run this command again with TRITON_INTERPRET=1.

    The interpreter must be on before triton is imported, so this needs a new
    process. A subprocess (not exec) keeps ``main`` a function that returns.
    """
    if os.environ.get("_TRITONCONV_BENCH_REEXEC"):
        print("tritonconv bench: no CUDA device and Triton's interpreter did not switch on", file=sys.stderr)
        return 2
    print("tritonconv bench: no CUDA device; running through Triton's interpreter (CPU)", file=sys.stderr)
    env = dict(os.environ, TRITON_INTERPRET="1", _TRITONCONV_BENCH_REEXEC="1")
    return subprocess.call([sys.executable, "-m", "tritonconv.bench", *argv], env=env)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``tritonconv bench``: run a sweep, append to the CSV, render the markdown and the plot."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--list" in argv:
        return _list_presets()
    if not torch.cuda.is_available() and not INTERPRETER:
        return _reexec_under_interpreter(argv)
    device = "cuda" if torch.cuda.is_available() and not INTERPRETER else "cpu"
    opts = parse_options(argv, device)
    info = run_info(opts.run_id or None)
    if info.interpreter:
        print(f"tritonconv bench: Triton interpreter on the CPU: {INTERPRETER_LABEL}", file=sys.stderr)
        heavy = [p for p in opts.presets if p != "smoke"]
        if heavy:
            print(f"tritonconv bench: warning: presets {heavy} are real network sizes; the interpreter will take "
                  "very long (use --limit, --batch 1 or the smoke preset)", file=sys.stderr)
    print(f"tritonconv bench: {info.gpu}; torch {info.torch}, triton {info.triton}, tritonconv {info.tritonconv}, "
          f"commit {info.commit}; run {info.run_id}; writing {opts.csv}", file=sys.stderr)
    rows = run_sweep(opts, info)
    ok = sum(1 for r in rows if r.get("status") == "ok")
    print(f"tritonconv bench: {len(rows)} rows ({ok} ok) appended to {opts.csv}", file=sys.stderr)
    if opts.no_report:
        return 0
    from . import report

    paths = report.render(opts.csv, opts.out, run_id=info.run_id)
    print(Path(paths["summary"]).read_text())
    for name, path in paths.items():
        print(f"tritonconv bench: wrote {path}", file=sys.stderr)
    return 0


# --------------------------------------------------------------------------- tune


def tune_presets(args) -> int:
    """The work of ``tritonconv tune``: precompile, then launch each layer once so it is tuned
    and the choice saved by the launchers' tuning-cache hooks."""
    from .. import tuning

    device = "cuda" if torch.cuda.is_available() and not INTERPRETER else "cpu"
    opts = argparse.Namespace(
        presets=_split(args.preset), batch=args.batch, dtypes=_split(args.dtype), layouts=_split(args.layout),
        modes=list(prov.MODES) if args.modes.strip() == "all" else _split(args.modes),
        layers=_split(args.layers), limit=0, workers=args.workers, no_precompile=args.no_precompile, quiet=False,
    )
    _validate(opts)
    chunks = list(_chunks(opts, device))
    where = torch.cuda.get_device_name() if device == "cuda" else "cpu (Triton interpreter)"
    print(f"tritonconv tune: {where}; cache {tuning.cache_dir()}", file=sys.stderr)
    with tuning.hints_off():  # tune means time every candidate, not take an earlier run's choice
        failures = _tune_chunks(chunks, opts, device)
    tuning._list(tuning.cache_dir())
    return 1 if failures else 0


def _tune_chunks(chunks, opts, device: str) -> int:
    from tqdm.auto import tqdm

    failures = 0
    for label, cases in chunks:
        _precompile_chunk(cases, opts)
        for case in tqdm(cases, desc=f"tuning {label}"[:60], unit="layer", file=sys.stderr, dynamic_ncols=True):
            try:
                prov.tritonconv_calls(case, prov.make_inputs(case, 0))
                if device == "cuda":
                    torch.cuda.synchronize()
            except Exception as err:
                failures += 1
                print(f"  {case.layer.name}: {_status_of(err)}", file=sys.stderr)
            _free_any()
    return failures
