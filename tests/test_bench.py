"""The performance harness: the smoke sweep end to end, the report, the presets, the tuning cache.

On a CPU machine the sweep runs through Triton's interpreter (conftest sets it
up), so these tests check plumbing and formats, never speed.
"""

from __future__ import annotations

import contextlib
import copy
import csv
import importlib.util
import json
import math
import os
import re
import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
import triton

from conftest import CUDA, rel_err

import tritonconv
from tritonconv import tuning
from tritonconv.bench import precompile, presets, report, sweep, timing
from tritonconv.kernels import router

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def tuning_cache_dir(tmp_path, monkeypatch):
    """Every test gets its own tuning-cache directory (on a GPU the sweeps tune and save)."""
    monkeypatch.setenv(tuning.ENV_DIR, str(tmp_path / "tuning-cache"))
    tuning.reset_state()
    yield tmp_path / "tuning-cache"
    tuning.reset_state()


def _read_csv(path):
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        return reader.fieldnames, list(reader)


# --------------------------------------------------------------------------- the smoke sweep


def test_smoke_sweep_writes_csv_markdown_and_plot(tmp_path):
    # every provider that runs here, plus one that cannot (a row with its reason, not a gap)
    runnable = ["tritonconv", "cudnn", "im2col", "unfold"] if CUDA else ["tritonconv", "im2col", "unfold", "aten-cpu"]
    cannot = "aten-cpu" if CUDA else "cudnn"
    out = tmp_path / "out"
    argv = ["--preset", "smoke", "--out", str(out), "--quiet", "--reps", "1", "--run-id", "smoke-test",
            "--providers", ",".join(runnable + [cannot]), "--dtype", "fp16" if CUDA else "fp32"]
    assert sweep.main(argv) == 0

    header, rows = _read_csv(out / "results.csv")
    assert header == sweep.COLUMNS
    layers = [layer.name for layer in presets.get_preset("smoke").layers]
    # layer by layer, each layer's providers in the order asked (tritonconv first): a sweep cut
    # by its time budget has whole comparisons for the layers it reached
    assert [(r["layer"], r["provider"]) for r in rows] == [(n, p) for n in layers for p in runnable + [cannot]]
    for name in runnable + [cannot]:
        got = {r["layer"]: r for r in rows if r["provider"] == name}
        assert sorted(got) == sorted(layers), f"{name}: rows for {sorted(got)}"
    for r in rows:
        assert r["run_id"] == "smoke-test" and r["kernel"] == "conv2d" and r["mode"] == "forward"
        assert r["gpu"] and r["torch"] == torch.__version__ and r["triton"] == triton.__version__
        assert r["tritonconv"] and r["commit"] and r["timestamp"]
        assert int(r["N"]) == 2 and int(r["C"]) > 0 and r["layout"] == "channels_last"
        if r["provider"] == cannot:
            assert r["status"].startswith("unsupported"), r["status"]
            continue
        assert r["status"] == "ok", (r["provider"], r["layer"], r["status"])
        median, p20, p80 = float(r["median_ms"]), float(r["p20_ms"]), float(r["p80_ms"])
        assert median > 0 and p20 <= median <= p80
        assert float(r["tflops"]) > 0 and float(r["rel_err"]) < 1e-2
        assert int(r["flops"]) == presets.get_preset("smoke").select([r["layer"]])[0].problem(2).flops
        if r["provider"] == "tritonconv":  # the note names the family the router ran, and its tiles
            direction, family = report.families_of(r).split("=")
            assert direction == "forward" and family in router.FORWARD, r["note"]
            tiles = report.tiles_of(r)
            assert tiles and all(re.fullmatch(r"\d+x\d+(x\d+)? w\d+ s\d+( persistent( flat)?| stream-k)?( rows)?", t)
                                 for t in tiles.values()), r["note"]
        else:
            ratio = float(r["speedup_tritonconv"])
            tc = next(t for t in rows if t["provider"] == "tritonconv" and t["layer"] == r["layer"])
            assert math.isclose(ratio, median / float(tc["median_ms"]), rel_tol=1e-3)

    summary = (out / "summary.md").read_text()
    assert "Geometric-mean speedup" in summary and "vs im2col" in summary and "| smoke |" in summary
    assert "## Tiles the autotuners chose" in summary
    details = (out / "details.md").read_text()
    assert details.count("| 3x3 |") == 1 and "| forward=" in details
    if not CUDA:
        assert "interpreter timings, not performance" in summary
        assert "interpreter timings, not performance" in rows[0]["timer"]
    if importlib.util.find_spec("matplotlib") is not None:
        png = (out / "plot.png").read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n"


def test_smoke_sweep_backward_modes_and_time_budget(tmp_path):
    out = tmp_path / "out"
    argv = ["--preset", "smoke", "--layers", "3x3", "--modes", "grad_input,grad_weight,forward_backward",
            "--providers", "tritonconv,unfold", "--out", str(out), "--quiet", "--reps", "1", "--no-report",
            "--dtype", "fp16" if CUDA else "fp32"]
    assert sweep.main(argv) == 0
    _, rows = _read_csv(out / "results.csv")
    assert sorted((r["provider"], r["mode"]) for r in rows) == sorted(
        (p, m) for p in ("tritonconv", "unfold") for m in ("grad_input", "grad_weight", "forward_backward"))
    assert all(r["status"] == "ok" for r in rows), [r["status"] for r in rows]
    fb = next(r for r in rows if r["provider"] == "tritonconv" and r["mode"] == "forward_backward")
    fwd_flops = presets.get_preset("smoke").select(["3x3"])[0].problem(2).flops
    assert int(fb["flops"]) == 3 * fwd_flops
    assert not (out / "summary.md").exists()

    # a spent time budget: every measurement becomes a 'skipped' row, none is dropped
    argv = ["--preset", "smoke", "--providers", "tritonconv,unfold", "--out", str(out), "--quiet",
            "--time-budget", "1e-9", "--run-id", "late"]
    assert sweep.main(argv) == 0
    _, rows = _read_csv(out / "results.csv")
    late = [r for r in rows if r["run_id"] == "late"]
    assert len(late) == 2 * len(presets.get_preset("smoke").layers)
    assert all(r["status"] == "skipped: time budget" for r in late)
    assert "not measured" in (out / "summary.md").read_text() or "(0/4)" in (out / "summary.md").read_text()


# --------------------------------------------------------------------------- the report


def _write_csv(path, rows):
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=sweep.COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    return path


def _row(provider, layer, median, **kw):
    row = {k: "" for k in sweep.COLUMNS}
    row.update(kernel="conv2d", provider=provider, mode="forward", preset="resnet50", layer=layer, count=1,
               N=32, C=64, H=56, W=56, K=64, R=3, S=3, P=56, Q=56, stride_h=1, stride_w=1, pad_h=1, pad_w=1,
               dil_h=1, dil_w=1, groups=1, dtype="fp16", layout="channels_last", status="ok", median_ms=median,
               p20_ms=median, p80_ms=median, gpu="Fake GPU", timer="do_bench", run_id="r2",
               timestamp="2026-01-01T00:00:00Z", commit="abc1234")
    row.update(kw)
    return row


class _FakeCuda:
    """A GPU timeline for ``timing.device_bench``: work starts when both the GPU is free and the
    host has issued it; events read the GPU's clock; each API call costs the host a little.
    Times in microseconds; the spin runs CYCLES_PER_US cycles a microsecond."""

    CYCLES_PER_US = 1500

    def __init__(self):
        self.host = self.gpu = 0.0

    def enqueue(self, us):
        self.host += 2
        self.gpu = max(self.gpu, self.host) + us
        return self.gpu

    def synchronize(self):
        self.host = max(self.host, self.gpu)

    def current_device(self):
        return 0

    def _sleep(self, cycles):
        self.enqueue(cycles / self.CYCLES_PER_US)

    def Event(self, enable_timing=False):
        fake = self

        class Event:
            def record(self):
                self.t = fake.enqueue(0)

            def elapsed_time(self, other):
                return (other.t - self.t) / 1e3

        return Event()


@pytest.mark.parametrize("spin", [True, False])
def test_device_bench_times_the_device_when_the_host_is_slower_than_the_flush(spin, monkeypatch):
    """A call whose host takes 150 us for a 10 us kernel, after a 100 us flush: do_bench's
    protocol (no spin) times 60 us, the host's share; with the spin, the kernel's 10 us."""
    gpu = _FakeCuda()
    monkeypatch.setattr(timing, "_cycles_per_us", {})
    if not spin:
        monkeypatch.setattr(timing, "SPIN_HOST_FACTOR", 0.0)
        monkeypatch.setattr(timing, "SPIN_MARGIN_US", 0.0)

    def call():
        gpu.host += 150
        gpu.enqueue(10)

    res = timing.device_bench(call, warmup_ms=1, rep_ms=20, cuda=gpu, flush=lambda: gpu.enqueue(100),
                              clock=lambda: gpu.host / 1e6)
    assert res.host_us == pytest.approx(152, abs=1)  # the call's host time, its launch included
    assert res.reps >= 20
    if spin:
        assert res.spin_us == pytest.approx(2 * 152 + timing.SPIN_MARGIN_US, abs=1)
        assert res.median_ms == pytest.approx(0.010, abs=1e-3)
        assert res.p20_ms == pytest.approx(0.010, abs=1e-3) and res.p80_ms == pytest.approx(0.010, abs=1e-3)
    else:
        assert res.median_ms > 0.05  # the failure the spin exists for


class _FakeGraphCuda(_FakeCuda):
    """_FakeCuda with CUDA graphs, for ``configs.kernel_time``: work issued while a graph captures
    is recorded, not run; a replay runs it all as one launch (no host time between its kernels)."""

    def __init__(self):
        super().__init__()
        self.capturing = None

    def enqueue(self, us):
        if self.capturing is not None:
            self.capturing.append(us)
            return self.gpu
        return super().enqueue(us)

    def is_available(self):
        return True

    def is_current_stream_capturing(self):
        return self.capturing is not None

    def Stream(self):
        return SimpleNamespace(wait_stream=lambda other: None)

    current_stream = Stream

    def stream(self, stream):
        return contextlib.nullcontext()

    def CUDAGraph(self):
        fake = self

        class Graph(list):
            def replay(self):
                fake.enqueue(sum(self))

        return Graph()

    @contextlib.contextmanager
    def graph(self, graph, capture_error_mode="global"):
        self.capturing = graph
        try:
            yield
        finally:
            self.capturing = None

    def Event(self, enable_timing=False):
        event = super().Event(enable_timing)
        event.synchronize = self.synchronize
        return event


def test_router_timer_empties_l2_before_each_call_and_takes_the_flushes_off(monkeypatch):
    """kernel_time(cold=True): a call that takes 30 us with L2 empty and 10 us after itself (its
    operands in L2) is timed at 30 us, a flush of 100 us before each inside the graph and taken
    off after; warm, back to back, 10 us. The host's 150 us a call shows in neither. A flush that
    cannot be captured: the call timed warm, counted, with a warning once; a call that cannot be
    captured: do_bench's way, the flush not blamed."""
    from tritonconv import configs

    gpu = _FakeGraphCuda()
    l2 = {"warm": False, "cold_us": 30}

    def flush():
        l2["warm"] = False
        gpu.enqueue(100)

    def call():
        gpu.host += 150
        gpu.enqueue(10 if l2["warm"] else l2["cold_us"])
        l2["warm"] = True

    assert configs.kernel_time(call, cold=True, cuda=gpu, flush=flush) == pytest.approx(0.030, abs=1e-6)
    # (the replay's own launch, 2 us in this fake, shared by its 20 calls: the cold timer takes it off too)
    assert configs.kernel_time(call, cold=False, cuda=gpu) == pytest.approx(0.0101, abs=1e-6)
    # never below the warm time: where the flushes' jitter would swamp a short call
    l2["cold_us"] = 5
    assert configs.kernel_time(call, cold=True, cuda=gpu, flush=flush) == pytest.approx(0.0101, abs=1e-6)
    l2["cold_us"] = 30

    def broken():
        raise RuntimeError("not capturable")

    monkeypatch.setattr(configs, "_warned_warm", False)
    fallbacks = configs.WARM_FALLBACKS
    with pytest.warns(RuntimeWarning, match="with their operands in L2"):
        assert configs.kernel_time(call, cold=True, cuda=gpu, flush=broken) == pytest.approx(0.0101, abs=1e-6)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert configs.kernel_time(call, cold=True, cuda=gpu, flush=broken) == pytest.approx(0.0101, abs=1e-6)
    assert configs.WARM_FALLBACKS == fallbacks + 2

    def uncapturable():
        if gpu.capturing is not None:
            raise RuntimeError("this family syncs")
        gpu.enqueue(30)

    benched = []
    monkeypatch.setattr(configs, "capture_safe_bench", lambda fn, quantiles: benched.append(fn) or 0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        monkeypatch.setattr(configs, "_warned_warm", False)
        assert configs.kernel_time(uncapturable, cold=True, cuda=gpu, flush=flush) == 0.5
    assert benched == [uncapturable] and configs.WARM_FALLBACKS == fallbacks + 2


def test_time_call_on_cuda_rows_uses_device_bench(monkeypatch):
    """The sweep's CUDA rows take device_bench's device time and host time."""
    seen = {}

    def fake_bench(fn, warmup_ms, rep_ms):
        seen.update(warmup_ms=warmup_ms, rep_ms=rep_ms)
        fn()
        return timing.BenchResult(0.02, 0.019, 0.021, 55.0, 130.0, 100)

    monkeypatch.setattr(timing, "device_bench", fake_bench)
    info = SimpleNamespace(device="cuda")
    opts = SimpleNamespace(warmup_ms=5, rep_ms=50, reps=3)
    calls = []
    assert sweep.time_call(lambda: calls.append(1), info, opts) == (0.02, 0.019, 0.021, 55.0)
    assert seen == {"warmup_ms": 5, "rep_ms": 50} and calls == [1]


def test_report_geomeans_targets_and_run_selection(tmp_path):
    rows = [
        _row("tritonconv", "a", 1.0, run_id="r1"),  # an older run: ignored
        _row("cudnn", "a", 9.0, run_id="r1"),
        _row("tritonconv", "a", 1.0), _row("tritonconv", "b", 2.0),
        _row("cudnn", "a", 1.0), _row("cudnn", "b", 2.0 * 1.44),  # geomean sqrt(1 * 1.44) = 1.2
        _row("inductor", "a", 1.1), _row("inductor", "b", 5.0, status="error: boom"),
        _row("im2col", "a", 3.0), _row("im2col", "b", 3.0),
        _row("im2col", "b", 8.0),  # the same measurement again: the later row wins
    ]
    path = _write_csv(tmp_path / "results.csv", rows)
    paths = report.render(path, tmp_path)
    selected = report.select_rows(report.load_rows(path))
    groups = report.speedups(selected)
    entry = groups[("resnet50", 32, "forward", "fp16", "channels_last")]
    assert math.isclose(report.geomean(entry["cudnn"]["ratios"].values()), 1.2, rel_tol=1e-9)
    assert entry["inductor"]["ratios"] == {"a": pytest.approx(1.1)}
    assert entry["im2col"]["ratios"] == {"a": pytest.approx(3.0), "b": pytest.approx(4.0)}
    summary = paths["summary"].read_text()
    target_lines = [line for line in summary.splitlines() if line.startswith("| ResNet-50 forward")]
    assert "1.20x" in target_lines[0] and "| met" in target_lines[0]
    assert "1.10x" in target_lines[1] and "not met (on 1 of 2 layers)" in target_lines[1]
    assert "1.20x (2/2)" in summary and "1.10x (1/2)" in summary
    assert "error" in summary  # the failed row is listed under Status
    assert "interpreter" not in summary


def test_report_states_issue_6s_bars(tmp_path):
    """summary.md's bars: forward and forward+backward geomeans over cuDNN per preset and dtype,
    the lowest layer over every mode, and the forward's share of peak on the largest dense 3x3
    layers (not an RGB stem, nor a grouped layer, however many FLOPs; not a preset outside the
    bars'), each with how many layers it stands on; and which bars the run did not measure."""
    rows = [
        _row("tritonconv", "a", 1.0, flops=100.0, pct_peak=65.0), _row("cudnn", "a", 1.2),
        _row("tritonconv", "b", 2.0, flops=90.0, pct_peak=55.0), _row("cudnn", "b", 1.5),
        _row("tritonconv", "z", 1.0, preset="vgg16", flops=90.0, pct_peak=0.0), _row("cudnn", "z", 1.0, preset="vgg16"),
        _row("tritonconv", "c", 1.0, R=1, S=1, flops=200.0, pct_peak=70.0), _row("cudnn", "c", 1.1),
        _row("tritonconv", "stem", 1.0, C=3, flops=1000.0, pct_peak=5.0), _row("cudnn", "stem", 1.0),
        _row("tritonconv", "grouped", 1.0, groups=2, flops=1000.0, pct_peak=6.0), _row("cudnn", "grouped", 1.0),
        _row("tritonconv", "e", 1.0, flops=95.0, pct_peak=1.0, status="error: wrong result"),  # not counted
        _row("cudnn", "e", 1.0),
        _row("tritonconv", "d", 1.0, mode="grad_input"), _row("cudnn", "d", 0.6, mode="grad_input"),
        _row("tritonconv", "a", 1.0, mode="forward_backward"), _row("cudnn", "a", 0.95, mode="forward_backward"),
        _row("tritonconv", "x", 1.0, preset="mobilenetv2", dtype="bf16", groups=64),
        _row("cudnn", "x", 1.3, preset="mobilenetv2", dtype="bf16", groups=64),
        _row("tritonconv", "y", 1.0, preset="mobilenetv2", dtype="bf16", status="skipped: time budget"),
        _row("cudnn", "y", 1.0, preset="mobilenetv2", dtype="bf16", status="skipped: time budget"),
        _row("tritonconv", "r", 1.0, preset="resnet18", flops=100.0, pct_peak=10.0), _row("cudnn", "r", 0.1,
                                                                                       preset="resnet18"),
    ]
    summary = report.render(_write_csv(tmp_path / "results.csv", rows), tmp_path)["summary"].read_text()
    bars = {tuple(c.strip() for c in line.strip("|").split("|")[:3]): line for line in summary.splitlines()
            if line.startswith("| ") and ("vs cudnn" in line or "% of peak" in line)}
    forward = bars[("forward vs cudnn, geomean", "resnet50", "fp16")]
    assert f"{(1.2 * 0.75 * 1.1 * 1.0 * 1.0) ** 0.2:.2f}x" in forward and "| not met (on 5 of 6 layers) |" in forward
    assert "| met |" in bars[("forward_backward vs cudnn, geomean", "resnet50", "fp16")]
    lowest = bars[("lowest layer vs cudnn", "resnet50", "fp16")]
    assert "0.60x (d, grad_input)" in lowest and "not met (on 7 of 8 layers)" in lowest
    peak = bars[("% of peak, largest 3x3 layers (lowest)", "resnet50", "fp16")]
    assert "55 % (b)" in peak and "| not met (on 2 of 3 layers) |" in peak  # a, b, e; not c, the stem, grouped
    mbv2 = bars[("forward vs cudnn, geomean", "mobilenetv2", "bf16")]
    assert "1.30x" in mbv2 and "| met (on 1 of 2 layers) |" in mbv2
    assert "1.30x (x, forward)" in bars[("lowest layer vs cudnn", "mobilenetv2", "bf16")]
    assert ("% of peak, largest 3x3 layers (lowest)", "mobilenetv2", "bf16") not in bars
    assert not any(key[1] == "resnet18" for key in bars)
    assert "0 % (z)" in bars[("% of peak, largest 3x3 layers (lowest)", "vgg16", "fp16")]  # a 0 % is a measurement
    assert ("Not measured here: forward vs cudnn, geomean: resnet50 bf16, mobilenetv2 fp16, convnext_t fp16, "
            "convnext_t bf16; forward_backward vs cudnn, geomean: resnet50 bf16, mobilenetv2 fp16, mobilenetv2 bf16, "
            "convnext_t fp16, convnext_t bf16; lowest layer vs cudnn: resnet50 bf16, mobilenetv2 fp16, "
            "convnext_t fp16, convnext_t bf16; % of peak, largest 3x3 layers (lowest): resnet50 bf16, "
            "vgg16 bf16.") in summary
    # a sweep of none of the bars' presets says so in a line
    other = report.render(_write_csv(tmp_path / "other.csv", [r for r in rows if r["preset"] == "resnet18"]),
                          tmp_path / "other")["summary"].read_text()
    assert "None measured here: they are for resnet50, mobilenetv2, convnext_t" in other
    assert "Not measured here" not in other and "| bar |" not in other


class _TimedRouter:
    """Stands in for the router on a GPU: its recording says what each candidate took."""

    @staticmethod
    @contextlib.contextmanager
    def recording(timings=False):
        assert timings, "the sweep asks for the candidates' timings"
        seen = []
        yield seen
        seen += [("forward", "tap_tma", {"tap_tma": 0.4, "implicit_tma": 0.5, "implicit": 0.6}),
                 ("input_grad", "implicit", None), ("forward", "tap_tma", {"tap_tma": 0.4})]


def test_router_timings_go_from_the_note_to_the_tables(tmp_path, monkeypatch):
    """The sweep writes the router's timings into the tritonconv row's note; details.md shows how
    much slower each other family was, and summary.md pools them per preset and family."""
    from tritonconv.bench import providers as prov

    monkeypatch.setattr(prov, "_router", lambda: _TimedRouter)
    monkeypatch.setattr(sweep, "compiled_kernels", lambda: None)  # no first-call note (CUDA's, tested below)
    row = {"note": "autotuned"}
    with sweep._families_recorded(SimpleNamespace(name="tritonconv"), row):
        pass
    assert row["note"] == ("autotuned; families: forward=tap_tma, input_grad=implicit; "
                           "router ms: forward[tap_tma=0.4 implicit_tma=0.5 implicit=0.6]")
    assert report.router_timings_of(row) == {"forward": {"tap_tma": 0.4, "implicit_tma": 0.5, "implicit": 0.6}}
    assert report.router_timings_of({"note": "families: forward=gemm1x1"}) == {}

    rows = [_row("tritonconv", "a", 0.4, note=row["note"]), _row("cudnn", "a", 0.5),
            _row("tritonconv", "b", 1.0, note="router ms: forward[implicit_tma=1 tap_tma=2]"), _row("cudnn", "b", 1.0),
            _row("tritonconv", "c", 1.0, note="families: forward=gemm1x1_tma; tiles: gemm1x1_tma=128x64x32 w8 s4 "
                 "persistent, gemm1x1=64x64x64 w4 s4"), _row("cudnn", "c", 1.0),
            _row("tritonconv", "d", 1.0, note="tiles: gemm1x1_tma=128x64x32 w8 s4 persistent"), _row("cudnn", "d", 1.0)]
    assert report.tiles_of(rows[4]) == {"gemm1x1_tma": "128x64x32 w8 s4 persistent", "gemm1x1": "64x64x64 w4 s4"}
    assert report.tiles_of(rows[4]) == report.tiles_of({"note": "tiles: " + report.format_tiles(report.tiles_of(rows[4]))})
    path = _write_csv(tmp_path / "results.csv", rows)
    paths = report.render(path, tmp_path)
    details = paths["details"].read_text()
    assert "forward=tap_tma, dgrad=implicit (forward: implicit_tma 1.25x, implicit 1.50x)" in details
    summary = paths["summary"].read_text()
    assert "## Kernel families: the router's timings" in summary
    section = summary.split("## Kernel families")[1].split("##")[0]
    # tap_tma: won a, lost b at 2x -> geomean sqrt(1 * 2); implicit_tma: lost a at 1.25x, won b
    assert "| 32 | forward | fp16 | channels_last | forward | tap_tma | 1/2 | 1.41x |" in section
    assert "| forward | implicit_tma | 1/2 | 1.12x |" in section
    assert "| forward | implicit | 0/1 | 1.50x |" in section
    assert "| gemm1x1_tma | fp16 | 128x64x32 w8 s4 persistent (2) |" in summary
    assert "| gemm1x1 | fp16 | 64x64x64 w4 s4 (1) |" in summary


def test_first_calls_go_from_the_note_to_the_tuning_cost_table(tmp_path, monkeypatch):
    """On CUDA a tritonconv row's note says what its first call took and how many kernels it
    compiled (after the precompile: the specialisations it missed); summary.md sums them."""
    from tritonconv.bench import providers as prov

    counts = iter([40, 52])  # kernels held before and after the call
    monkeypatch.setattr(prov, "_router", lambda: _TimedRouter)
    monkeypatch.setattr(sweep, "compiled_kernels", lambda: next(counts))
    row = {"note": "autotuned"}
    with sweep._families_recorded(SimpleNamespace(name="tritonconv"), row):
        pass
    assert re.search(r"; first call: \d+\.\d s, 12 kernels compiled$", row["note"]), row["note"]
    assert report.first_call_of(row)[1:] == (12, 0)
    monkeypatch.setattr(sweep, "compiled_kernels", lambda: None)  # the interpreter compiles nothing
    row = {"note": "autotuned"}
    with sweep._families_recorded(SimpleNamespace(name="tritonconv"), row):
        pass
    assert "first call" not in row["note"] and report.first_call_of(row) is None

    rows = [_row("tritonconv", "a", 0.4, note="families: forward=tap_tma; first call: 6.1 s, 12 kernels compiled"),
            _row("tritonconv", "b", 0.4, note="first call: 2.0 s, 0 kernels compiled, 3 " + report.HINTED_NOTE),
            _row("cudnn", "a", 0.5)]
    assert report.first_call_of(rows[1]) == (2.0, 0, 3)
    summary = report.render(_write_csv(tmp_path / "results.csv", rows), tmp_path)["summary"].read_text()
    assert "| resnet50 | 32 | forward | fp16 | channels_last | 2 | 8.1 | 6.1 (a) | 12 | 3 |" in summary


def test_compiled_kernels_counts_every_jit_functions_cache():
    """Outside the interpreter (no GPU needed: nothing is launched), compiled_kernels sums the
    kernel caches of every @jit function in tritonconv.kernels, autotuned or not."""
    import subprocess
    import sys

    code = """
from tritonconv.bench.precompile import compiled_kernels
from tritonconv.kernels import fprop
assert compiled_kernels() == 0, compiled_kernels()
fprop._fprop_tuned.fn.device_caches["fake"] = ({"a": 1, "b": 2}, {}, None, None, None)
fprop.splitk_reduce_kernel.device_caches["fake"] = ({"c": 3}, {}, None, None, None)
assert compiled_kernels() == 3, compiled_kernels()
print("ok")
"""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]
    assert (precompile.compiled_kernels() is None) == tritonconv.INTERPRETER  # the interpreter compiles nothing


def _race_row(case, config, status, ms, same=True, counted=True, remark="", flushed=None):
    ran = status == "ok" or status.startswith(("differs", "wrong"))
    return _row("tritonconv", "layer3.0.conv3", ms, kernel=report.RACE_KERNEL, p20_ms="", p80_ms="",
                status=status, rel_err=(2e-4 if status == "ok" else 2e-2) if ran else "",
                note=report.race_note(case, config, same if ran else None, counted, remark, flushed))


def test_race_check_rows_share_the_csv_and_render_their_own_section(tmp_path):
    """perf/race_check.py's rows (kernel race_check) go into the sweep's CSV: one row per config,
    its own table, verdict and sync-cost table, and none of them in the sweep's means or status."""
    rows = [  # the race check runs before the sweeps: its rows come first
        _race_row("c, rule off", "128x128x64 w8 s3", "differs: three calls gave different bits", 0.010,
                  same=False, counted=False, remark="declined by the router; run as is here"),
        _race_row("c, rule on", "128x128x64 w8 s3 sync", "ok", 0.012),
        _race_row("c, rule on", "128x128x64 w8 s3 transposed", "ok", 0.009),
        _race_row("c, rule on", "64x64x16 w4 s4", "wrong: rel_err above 1e-2", 0.020),
        _race_row("c, rule on", "64x32x32 w4 s5", "error: CompilationError: out of\nresources | smem", ""),
        _race_row("d", "-", "skipped: time budget", ""),
        # a case with rotated forms, and its cuDNN row
        _race_row("e", "64x128x64 w8 s4 transposed", "ok", 0.0216, flushed=0.0280),
        _race_row("e", "64x128x64 w8 s4 transposed rotated", "ok", 0.0220, flushed=0.0231),
        _race_row("e", "128x128x64 w8 s3 transposed rotated", "ok", 0.0250, flushed=0.0260),  # its twin not run
        _race_row("e", report.RACE_BASELINE, "ok", 0.0190, same=None, counted=False, flushed=0.0220),
        _row("tritonconv", "a", 1.0), _row("cudnn", "a", 1.5),
    ]
    race = len(rows) - 2
    for r in rows[:race]:
        r["timer"] = "configs.kernel_time"
    path = _write_csv(tmp_path / "results.csv", rows)
    selected = report.select_rows(report.load_rows(path))
    assert sum(r["kernel"] == report.RACE_KERNEL for r in selected) == race  # one per config, none merged
    groups = report.speedups(selected)
    assert groups[("resnet50", 32, "forward", "fp16", "channels_last")]["cudnn"]["ratios"] == {"a": pytest.approx(1.5)}
    summary = report.render(path, tmp_path)["summary"].read_text()
    section = summary.split("## Race check")[1].split("\n## ")[0]
    assert "| c, rule off | 128x128x64 w8 s3 | 2.0e-02 | **no** | 0.0100 |  | declined by the router; run as is here |" \
        in section
    assert "| c, rule on | 64x32x32 w4 s5 | error: CompilationError: out of resources / smem |" in section
    assert "| e | 64x128x64 w8 s4 transposed rotated | 2.0e-04 | yes | 0.0220 | 0.0231 |  |" in section
    assert "| e | cuDNN | 2.0e-04 |  | 0.0190 | 0.0220 |  |" in section
    # each form beside its rotated twin, under both timers, and the case's cuDNN row flushed over
    # the better of the two (a form whose twin did not run has no row)
    rotation = section.split("What rotation does")[1]
    assert "| e | 64x128x64 w8 s4 transposed | 0.0216 | 0.0220 | 1.02x | 0.0280 | 0.0231 | 0.82x | 0.0220 | 0.95x |" \
        in rotation
    assert "128x128x64 w8 s3" not in rotation
    assert "timer: do_bench\n" in summary  # the sweep's timer, not the race check's
    # a wrong or racing config the runtime runs counts; an error (the autotuner skips it) and a
    # config only run with the rule off do not
    assert "1 config(s) run as the runtime runs them" in section and ": c, rule on 64x64x16 w4 s4" in section
    assert "| c | 128x128x64 w8 s3 | 0.0100 | 0.0120 | 0.0090 | 1.20x | 0.75x |" in section
    assert "Every measurement ran (status ok)." in summary  # the race rows stay out of Status
    assert "## End to end" not in summary
    assert "race_check" not in (tmp_path / "details.md").read_text()


def test_race_note_round_trips():
    note = report.race_note("tap_tma fwd, 1x1 C256 14x14 (4 steps), rule off", "128x128x64 w8 s3 sync", False,
                            True, "declined by the router; timing failed: RuntimeError")
    assert report.race_fields({"note": note}) == {
        "case": "tap_tma fwd, 1x1 C256 14x14 (4 steps), rule off", "config": "128x128x64 w8 s3 sync",
        "same_bits": False, "counted": True, "flushed_ms": None,
        "remark": "declined by the router; timing failed: RuntimeError"}
    assert report.race_fields({"note": report.race_note("d", "-", None, False)})["same_bits"] is None
    flushed = report.race_note("e", "64x64x64 w4 s4 rotated", True, True, "a remark", flushed_ms=0.02814)
    assert report.race_fields({"note": flushed})["flushed_ms"] == pytest.approx(0.0281)
    assert report.race_fields({"note": flushed})["remark"] == "a remark"


@pytest.mark.skipif(CUDA, reason="the GPU check runs perf/race_check.py as a stage of its own, every config timed")
def test_race_check_script_writes_csv_rows_and_their_markdown(tmp_path, monkeypatch):
    """perf/race_check.py on one small case: a CSV row per config, with the layer's shape, and the
    markdown rendered from those rows."""
    monkeypatch.setenv("TRITONCONV_TUNE", "0")  # the script sets both for itself: keep them to this test
    monkeypatch.setenv("TRITONCONV_PLANS", "0")
    spec = importlib.util.spec_from_file_location("perf_race_check", ROOT / "perf" / "race_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    csv_path = tmp_path / "results.csv"
    # a case by the prefix of its name (as the GPU check's dry run picks it): one config here
    assert module.main(["--out", str(tmp_path), "--csv", str(csv_path), "--run-id", "race-1", "--batch", "1",
                        "--cases", "gemm1x1_tma"]) == 0
    case = next(i for i, c in enumerate(module.CASES) if c[0].startswith("gemm1x1_tma"))
    with pytest.raises(SystemExit, match="no case is 'nope'"):
        module._case("nope")
    rows = report.load_rows(csv_path)
    assert rows and all(r["kernel"] == report.RACE_KERNEL and r["run_id"] == "race-1" for r in rows)
    row = rows[0]
    assert (row["layer"], row["N"], row["C"], row["H"], row["K"], row["R"]) == ("layer3.0.conv3", 1, 256, 14, 1024, 1)
    assert row["status"] == "ok" and row["rel_err"] < 1e-2
    fields = report.race_fields(row)
    assert fields["case"] == module.CASES[case][0] and fields["same_bits"] is True and fields["counted"]
    assert (tmp_path / "race_check.md").read_text().strip() == "\n".join(report.render_race(rows)).strip()


def test_race_check_pins_each_form_the_pruner_lists_rotated_ones_included(monkeypatch):
    """perf/race_check.py's Pinner on the tap-TMA forward's real pruner, its compiled configs, as on
    an sm_90 with Triton 3.6's hazard rule and the rotated forms asked for: the listing holds each
    form of the case's tiles only (synced, transposed and both rotated), pinning a form then
    leaves exactly that one to launch, its rotated twin too, and precompiling leaves them all."""
    from tritonconv import configs as tc
    from tritonconv.kernels import fprop

    spec = importlib.util.spec_from_file_location("perf_race_check", ROOT / "perf" / "race_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(tc, "TUNE", False)  # as the script runs: the real tuned keeps one config
    monkeypatch.setattr(tc, "WGMMA_RS_HAZARD", True)
    monkeypatch.setattr(tc, "ROTATED_FORMS", True)
    monkeypatch.setattr(tc, "device_capability", lambda t: 90)
    monkeypatch.setattr(tc, "max_shared_memory", lambda index: 227 * 1024)
    pinner = module.Pinner(tc, tc.tuned, 90, True)
    monkeypatch.setattr(tc, "tuned", pinner)
    hook = fprop._fprop_tap_tma_tuned.early_config_prune
    pinner.hook, pinner.tiles = hook, module.LAYER4_TILES
    configs = fprop.tap_tma_configs(interpreter=False)
    args = dict(y_ptr=torch.empty(0, dtype=torch.float16), N=32, P=7, Q=7, KG=512, CG=512, K_ALIGN=64, SPLIT_K=1)
    pinner.seen = []
    hook(configs, args)
    names, pinner.seen = list(dict.fromkeys(pinner.seen)), None
    assert all(n.startswith(module.LAYER4_TILES) for n in names)
    expected = {f"{tile} {form}" for tile in module.LAYER4_TILES
                for form in ("sync", "transposed", "sync rotated", "transposed rotated")}
    assert set(names) == expected, sorted(set(names) ^ expected)
    for name in names:
        pinner.name = name
        assert [tc.config_name(c) for c in hook(configs, args)] == [name]
    # to precompile a case: all those forms at once
    pinner.name, pinner.every = None, True
    assert sorted(tc.config_name(c) for c in hook(configs, args)) == sorted(expected)
    # a case with deeper pipelines: each tile at 4, 5 and 6 stages too, in each of its forms, and
    # pinning one runs that config at those stages; the real tuned never sees them
    deep = next(c for c in module.CASES if c.stages)
    monkeypatch.setattr(tc, "ROTATED_FORMS", False)
    tiles = {tile.rsplit(" s", 1)[0]: int(tile.rsplit(" s", 1)[1]) for tile in deep.tiles}
    # with Triton 3.6's hazard rule (synced and transposed forms) and without it, as 3.9 runs them
    # (each tile as it is and transposed: the pruner's second call gets the plain forms, which the
    # Pinner would deepen again)
    for hazard, forms in ((True, ("sync", "transposed")), (False, ("", "transposed"))):
        monkeypatch.setattr(tc, "WGMMA_RS_HAZARD", hazard)
        pinner.stages, pinner.every, pinner.seen, pinner.name = deep.stages, False, [], None
        pinner.staged.clear()
        # listing, the real tuned gets the offered configs only (here one that keeps them all)
        real_tuned = pinner.real_tuned
        pinner.real_tuned = lambda kept: kept
        chosen = {tc.config_name(c) for c in hook(configs, args)}
        names, pinner.seen = list(dict.fromkeys(pinner.seen)), None
        expected = {f"{tile} s{stages} {form}".strip() for tile, own in tiles.items()
                    for stages in {own, *deep.stages} for form in forms}
        assert set(names) == expected, sorted(set(names) ^ expected)
        assert chosen and pinner.staged and not chosen & pinner.staged
        pinner.real_tuned = real_tuned
        for name in names:
            pinner.name = name
            assert [tc.config_name(c) for c in hook(configs, args)] == [name]
        pinner.name, pinner.every = None, True
        every = [tc.config_name(c) for c in hook(configs, args)]
        assert sorted(every) == sorted(expected)  # each once
    pinner.every, pinner.stages = False, ()
    monkeypatch.setattr(tc, "WGMMA_RS_HAZARD", True)
    monkeypatch.setattr(tc, "ROTATED_FORMS", True)
    # the 1x1 GEMM's pruner: its tiles as they are and rotated, no span, no hazard rule
    gemm = next(c for c in module.CASES if c.kernel == "gemm1x1_tma" and c.rotate)
    from tritonconv.kernels import gemm1x1

    pinner.hook, pinner.tiles, pinner.every, pinner.seen = gemm1x1._gemm1x1_tma_tuned.early_config_prune, \
        gemm.tiles, False, []
    pinner.flagged.clear()
    gemm_configs = tc.persistent_gemm_configs(stream_k=True, flatten=True, interpreter=False)
    gemm_args = dict(y_ptr=args["y_ptr"], M=1568, CG=2048, KG=512)
    pinner.hook(gemm_configs, gemm_args)
    names, pinner.seen = list(dict.fromkeys(pinner.seen)), None
    assert set(gemm.tiles) <= set(names) and {n + " rotated" for n in gemm.tiles} <= set(names)
    assert not pinner.flagged
    for name in names:
        pinner.name = name
        assert [tc.config_name(c) for c in pinner.hook(gemm_configs, gemm_args)] == [name]


def _touch_fresh_pages(pages: int = 1024) -> None:
    """Map fresh anonymous memory and write a byte a page: a minor page fault each (malloc might
    hand back pages touched before)."""
    import mmap

    with mmap.mmap(-1, pages * mmap.PAGESIZE) as memory:
        for page in range(pages):
            memory[page * mmap.PAGESIZE] = 1


def test_host_cost_script_times_each_route_and_its_spread_over_stack_depth(monkeypatch, capsys):
    """perf/host_cost.py (the GPU check's host stage): a row per route, and with --depths a row per
    route of its fewest, median and most us over the depths, each depth that many frames deeper."""
    import traceback

    monkeypatch.setenv("TRITONCONV_TUNE", "0")  # the script sets both for itself: keep them to this test
    monkeypatch.setenv("TRITONCONV_PLANS", "1")
    spec = importlib.util.spec_from_file_location("perf_host_cost", ROOT / "perf" / "host_cost.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    depths = []
    for depth in (0, 7):
        module._at_depth(depth, lambda: depths.append(len(traceback.extract_stack())), 1)
    assert depths[1] - depths[0] == 7
    _, faults = module._at_depth(0, _touch_fresh_pages, 2)
    assert faults >= 512
    from tritonconv import plans

    with plans.enabled_as(True):  # read when tritonconv is imported: the script's own setting comes too late here
        assert module.main(["--calls", "3", "--depths", "5", "--depth-step", "2", "--depth-calls", "2"]) == 0
    out = capsys.readouterr().out
    routes = re.findall(r"^\| ((?:torch|tritonconv|training)[^|]*) \| ([0-9.]+) \|$", out, re.M)
    assert len(routes) == 5 and all(float(us) > 0 for _, us in routes)
    spread = re.findall(r"^\| ([^|]+) \| ([0-9.]+) \| ([0-9.]+) \| ([0-9.]+) \| (\d+) \| ([0-9.]+) \| (\d+) of 3 \|$",
                        out, re.M)
    assert [r[0] for r in spread] == [r[0] for r in routes]
    for _, fewest, median, most, at, _, _ in spread:
        assert 0 < float(fewest) <= float(median) <= float(most) and int(at) in (0, 2, 4)
    assert "from 0 to 4 extra Python frames deep, in steps of 2" in out


# --------------------------------------------------------------------------- presets


def _perf_resnet50():
    spec = importlib.util.spec_from_file_location("perf_resnet50", ROOT / "perf" / "resnet50.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("wrong", [False, True])
def test_e2e_training_check_can_fail(wrong, monkeypatch):
    """perf/resnet50.py checks a training step's gradients against float64 (BN in eval mode, where
    that is well conditioned): conv gradients 10% off must come out as a mismatch, the right ones
    not. The "tritonconv" model here is the aten one, with hooks that spoil its conv gradients."""
    import types

    import tritonconv

    e2e = _perf_resnet50()
    torch.manual_seed(3)
    model = e2e.ResNet((1, 1, 1, 1), 8, 10).train()
    x, target = torch.randn(2, 3, 32, 32), torch.randint(0, 10, (2,))

    def convert(net):
        for m in net.modules():
            if wrong and isinstance(m, torch.nn.Conv2d):
                m.weight.register_hook(lambda g: g * 1.1)
        return net

    monkeypatch.setattr(tritonconv, "convert", convert)
    args = types.SimpleNamespace(dtype="fp32", warmup_ms=0, rep_ms=0, reps=1)
    row = {"note": "", "flops": 1}
    reference = e2e._reference_step(model, x, target)
    e2e._measure(row, model, "tritonconv", "train", x, target, reference, 0.0, args, "cpu")
    assert row["status"].startswith("mismatch") == wrong, row
    if not wrong:  # right, but the convs were aten's: the check after it says so
        assert row["rel_err"] < 1e-6 and row["status"] == "error: aten convolutions ran in the tritonconv run"


def test_e2e_profile_reports_issue_time_and_where_it_goes(tmp_path):
    """perf/resnet50.py --profile: per eager row, the host time to issue a step and the profiled
    functions by own time, the step's own function among them, appended to DIR/e2e_profile.md."""
    import types

    e2e = _perf_resnet50()

    def step():
        return torch.ones(64).cumsum(0).sum()

    args = types.SimpleNamespace(profile=str(tmp_path / "prof"), profile_steps=3)
    e2e._profile(step, "cpu", args, "train (training step), tritonconv", 1e6, top=5)
    e2e._profile(step, "cpu", args, "infer (inference), cudnn", 1e-9, top=5)
    text = (tmp_path / "prof" / "e2e_profile.md").read_text()
    first, second = text.split("## ")[1:]
    assert first.startswith("train (training step), tritonconv") and "the device is the bound" in first
    assert second.startswith("infer (inference), cudnn") and "host-bound" in second
    rows = [line for line in first.splitlines() if line.startswith("| ") and not line.startswith("| own")
            and not line.startswith("| ---")]
    assert len(rows) == 5
    assert any("(step)" in line and line.split(" | ")[2] == "1" for line in rows), rows  # 1 call a step

    e2e._profile(_touch_fresh_pages, "cpu", args, "train, faulting", 1.0, top=5)
    faults = [int(n) for n in re.findall(r"Minor page faults a step \(median, every thread\): (\d+)",
                                         (tmp_path / "prof" / "e2e_profile.md").read_text())]
    assert len(faults) == 3 and faults[2] >= 512 and faults[2] > faults[0]


@pytest.mark.parametrize("provider", ["tritonconv", "aten"])
def test_e2e_folded_mode_folds_batchnorm_each_providers_way(provider, monkeypatch):
    """perf/resnet50.py's folded mode: tritonconv's convert(fuse=True) leaves no BatchNorm and
    fuses the ReLUs into its convs; the baseline's torch.fx fuse leaves no BatchNorm either; both
    compute what the eval model computes, and the row says ok. On the device tritonconv runs on
    (a CPU model is one convert leaves alone where CUDA is there), float32 without TF32."""
    import types

    e2e = _perf_resnet50()
    device = "cuda" if CUDA else "cpu"
    if provider == "aten":
        provider = "cudnn" if CUDA else "aten-cpu"
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)  # both providers read it
    torch.manual_seed(4)
    model = e2e.ResNet((1, 1, 1, 1), 8, 10).eval().to(device)
    for m in model.modules():  # running statistics away from the identity, so folding shows
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    x = torch.randn(1, 3, 16, 16, device=device)
    folded = e2e._fold(copy.deepcopy(model), provider)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    if provider == "tritonconv":
        fused = [m for m in folded.modules() if getattr(m, "activation", "none") == "relu"]
        assert fused, "convert(fuse=True) put no ReLU into a conv's epilogue"
    with torch.no_grad():
        ref = model.double()(x.double())
    reference = [ref]
    row = {"note": "", "flops": 1}
    args = types.SimpleNamespace(dtype="fp32", warmup_ms=0, rep_ms=0, reps=1)
    e2e._measure(row, model.float(), provider, "folded", x, None, reference, 0.0, args, device)
    assert row["status"] == "ok" and row["rel_err"] < 1e-4, row


@pytest.mark.parametrize("provider", ["tritonconv", "aten"])
def test_e2e_graphed_training_step(provider, tmp_path):
    """perf/resnet50.py's train_graph mode: on a GPU, the training step replayed from a CUDA graph
    whose gradients (from a graph of the step with BN in eval mode) match float64; without one,
    a row that says graphs need a GPU, in the CSV mode the report shows."""
    import types

    e2e = _perf_resnet50()
    if not CUDA:
        out = tmp_path / "out"
        assert e2e.main(["--tiny", "--image", "16", "--batch", "1", "--dtype", "fp32", "--modes", "train_graph",
                         "--providers", "cudnn" if provider == "aten" else provider, "--out", str(out),
                         "--no-precompile"]) == 0
        (row,) = list(csv.DictReader(open(out / "results.csv")))
        assert (row["mode"], row["status"]) == ("forward_backward_cudagraph", "unsupported: CUDA graphs need a GPU")
        return
    provider = "cudnn" if provider == "aten" else provider
    torch.manual_seed(5)
    model = e2e.ResNet((1, 1, 1, 1), 8, 10).cuda().train()
    x, target = torch.randn(2, 3, 32, 32, device="cuda"), torch.randint(0, 10, (2,), device="cuda")
    reference = e2e._reference_step(model, x, target)
    row = {"note": "", "flops": 1}
    args = types.SimpleNamespace(dtype="fp32", warmup_ms=1, rep_ms=5, reps=1)
    with torch.backends.cudnn.flags(allow_tf32=False):
        e2e._measure(row, model, provider, "train_graph", x, target, reference, 0.0, args, "cuda")
    assert row["status"] == "ok", row
    assert row["rel_err"] < 5e-3 and row["median_ms"] > 0, row


def test_resnet50_preset_is_every_conv_of_the_e2e_model():
    module = _perf_resnet50()
    convs = module.conv_layers(module.resnet50())
    assert len(convs) == 53
    counts = {}
    for _, key in convs:
        counts[key] = counts.get(key, 0) + 1
    preset = presets.get_preset("resnet50")
    assert {layer.shape_key: layer.count for layer in preset.layers} == counts
    assert preset.select(["conv1"])[0].shape_key == (3, 224, 224, 64, 7, 7, (2, 2), (3, 3), (1, 1), 1)


@pytest.mark.parametrize("name", sorted(presets.PRESETS))
def test_presets_are_valid_distinct_convs(name):
    preset = presets.get_preset(name)
    keys = [layer.shape_key for layer in preset.layers]
    assert len(keys) == len(set(keys)) and len({layer.name for layer in preset.layers}) == len(keys)
    for layer in preset.layers:
        pb = layer.problem(preset.batch)
        assert pb.P > 0 and pb.Q > 0 and pb.flops > 0 and layer.count >= 1


def test_preset_contents():
    mobilenet = presets.get_preset("mobilenetv2").layers
    assert any(layer.groups == layer.C == layer.K and layer.R == 3 for layer in mobilenet)  # depthwise
    convnext = presets.get_preset("convnext_t").layers
    assert any(layer.R == 4 and layer.stride == (4, 4) for layer in convnext)
    assert any(layer.R == 2 and layer.stride == (2, 2) for layer in convnext)
    assert any(layer.R == 7 and layer.groups == layer.C for layer in convnext)
    vae = presets.get_preset("vae_decoder").layers
    assert max(layer.H for layer in vae) >= 256 and {128, 256, 512} <= {layer.C for layer in vae}
    assert sum(layer.count for layer in presets.get_preset("resnet18").layers) == 20
    assert sum(layer.count for layer in presets.get_preset("vgg16").layers) == 13


# --------------------------------------------------------------------------- tuning cache


class FakeAutotuner:
    """What the tuning cache reads of triton's Autotuner: cache, configs, keys, arg_names, fn."""

    def __init__(self, keys=("M", "N"), block_names=("BLOCK_M", "BLOCK_N"), source="kernel v1"):
        self.keys = list(keys)
        self.arg_names = ["x_ptr", "y_ptr", *self.keys]
        self.configs = [triton.Config({n: 16 for n in block_names}, num_warps=4, num_stages=2),
                        triton.Config({n: 32 for n in block_names}, num_warps=8, num_stages=3)]
        self.fn = SimpleNamespace(cache_key=source)
        self.cache = {}


KEY_A = (4096, 64, "torch.float16", "torch.float16")
KEY_B = (128, 7, "torch.bfloat16", "torch.bfloat16")


def _same(a, b):
    return a.all_kwargs() == b.all_kwargs()


def test_tuning_cache_round_trip(tuning_cache_dir):
    tuner = FakeAutotuner()
    tuner.cache[KEY_A] = triton.Config({"BLOCK_M": 128, "BLOCK_N": 64}, num_warps=8, num_stages=4)
    tuner.cache[KEY_B] = triton.Config({"BLOCK_M": 32, "BLOCK_N": 16}, num_warps=2, num_stages=5)
    assert tuning.save_entries(tuner, "fprop", "Fake GPU 80GB") == 2
    path = tuning.cache_path("fprop", "Fake GPU 80GB")
    assert path.parent == tuning_cache_dir and path.exists()
    data = json.loads(path.read_text())
    assert data["device_name"] == "Fake GPU 80GB" and len(data["entries"]) == 2

    fresh = FakeAutotuner()  # a later process
    fresh.cache[KEY_B] = triton.Config({"BLOCK_M": 64, "BLOCK_N": 64})  # tuned here: kept
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        keys = tuning.load_into(fresh, "fprop", "Fake GPU 80GB")
    assert keys == {KEY_A, KEY_B}
    assert _same(fresh.cache[KEY_A], tuner.cache[KEY_A])
    assert fresh.cache[KEY_B].kwargs == {"BLOCK_M": 64, "BLOCK_N": 64}
    # another GPU model, another file
    assert tuning.load_into(FakeAutotuner(), "fprop", "Other GPU") == set()

    # merging: a second save keeps the first's entries
    other = FakeAutotuner()
    other.cache[(1, 2, "torch.float32")] = triton.Config({"BLOCK_M": 16, "BLOCK_N": 16})
    tuning.save_entries(other, "fprop", "Fake GPU 80GB")
    assert len(json.loads(path.read_text())["entries"]) == 3


@pytest.mark.parametrize("content", ["{not json", json.dumps({"entries": "x"}), "\x00\x01",
                                     "BAD_ENTRY", "BAD_CONFIG"])
def test_tuning_cache_corrupt_file_warns_and_is_retuned(content):
    tuner = FakeAutotuner()
    tuner.cache[KEY_A] = triton.Config({"BLOCK_M": 128, "BLOCK_N": 64})
    tuning.save_entries(tuner, "dgrad", "Fake GPU")
    path = tuning.cache_path("dgrad", "Fake GPU")
    if content in ("BAD_ENTRY", "BAD_CONFIG"):
        data = json.loads(path.read_text())
        if content == "BAD_ENTRY":
            data["entries"].append({"key": [[1, 2]], "config": data["entries"][0]["config"]})
        else:
            data["entries"][0]["config"]["num_warps"] = "eight"
        content = json.dumps(data)
    path.write_text(content)
    fresh = FakeAutotuner()
    with pytest.warns(tuning.StaleCacheWarning, match="corrupt"):
        assert tuning.load_into(fresh, "dgrad", "Fake GPU") == set()
    assert fresh.cache == {}
    # the next save replaces the bad file
    fresh.cache[KEY_B] = triton.Config({"BLOCK_M": 32, "BLOCK_N": 32})
    assert tuning.save_entries(fresh, "dgrad", "Fake GPU") == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert tuning.load_into(FakeAutotuner(), "dgrad", "Fake GPU") == {KEY_B}


@pytest.mark.parametrize("change", ["keys", "source", "meta-parameters"])
def test_tuning_cache_stale_file_warns(change):
    tuner = FakeAutotuner()
    tuner.cache[KEY_A] = triton.Config({"BLOCK_M": 128, "BLOCK_N": 64})
    tuning.save_entries(tuner, "wgrad", "Fake GPU")
    newer = {"keys": FakeAutotuner(keys=("M", "N", "K")), "source": FakeAutotuner(source="kernel v2"),
             "meta-parameters": FakeAutotuner(block_names=("BLOCK_M", "BLOCK_N", "BLOCK_K"))}[change]
    with pytest.warns(tuning.StaleCacheWarning, match="stale"):
        assert tuning.load_into(newer, "wgrad", "Fake GPU") == set()
    assert newer.cache == {}


def test_tuning_cache_keeps_a_choice_its_pruner_added_a_constexpr_to():
    """The tap-TMA pruners add SYNC_MMA (a constexpr the kernel defaults) to some tiles on
    Triton before 3.9 (configs.synced): such a tuned choice is restored as it was chosen. A
    meta-parameter the kernel does not take still makes the file stale."""
    from tritonconv import configs

    def tap_tuner():
        tuner = FakeAutotuner()
        tuner.arg_names.append("SYNC_MMA")
        constexpr = lambda name: SimpleNamespace(name=name, is_constexpr=name.isupper())  # noqa: E731
        tuner.fn.params = [constexpr(n) for n in tuner.arg_names + ["BLOCK_M", "BLOCK_N"]]
        return tuner

    tuner = tap_tuner()
    tuner.cache[KEY_A] = configs.synced(triton.Config({"BLOCK_M": 128, "BLOCK_N": 64}, num_warps=8, num_stages=3))
    tuner.cache[KEY_B] = triton.Config({"BLOCK_M": 32, "BLOCK_N": 16}, num_warps=4, num_stages=4)
    assert tuning.save_entries(tuner, "fprop_tap_tma", "Fake GPU") == 2
    fresh = tap_tuner()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert tuning.load_into(fresh, "fprop_tap_tma", "Fake GPU") == {KEY_A, KEY_B}
    assert fresh.cache[KEY_A].kwargs == {"BLOCK_M": 128, "BLOCK_N": 64, "SYNC_MMA": True}
    assert _same(fresh.cache[KEY_B], tuner.cache[KEY_B])

    # an entry with a meta-parameter that is no constexpr of the kernel (unknown, or a run-time
    # argument such as a size): stale
    path = tuning.cache_path("fprop_tap_tma", "Fake GPU")
    good = path.read_text()
    for extra in ("BLOCK_Z", "x_ptr"):
        data = json.loads(good)
        data["entries"][0]["config"]["kwargs"][extra] = 4
        path.write_text(json.dumps(data))
        with pytest.warns(tuning.StaleCacheWarning, match="meta-parameters"):
            assert tuning.load_into(tap_tuner(), "fprop_tap_tma", "Fake GPU") == set()


def test_autotuner_times_each_config_for_tune_rep_ms(monkeypatch):
    """The autotuner's benchmarker asks do_bench for 25 ms of repeats (TRITONCONV_TUNE_REP_MS sets
    it, read when a shape is tuned: a bad value is a clear error then) and a fifth of it of
    warm-up (Triton's defaults, 25 + 100 ms per config, made tuning most of a GPU check)."""
    from triton.runtime import driver

    from tritonconv import configs

    seen = []

    def do_bench(fn, **kwargs):
        fn()
        seen.append(kwargs)
        return 0.5

    ran = []
    monkeypatch.setattr(driver, "_active", SimpleNamespace(get_benchmarker=lambda: do_bench))
    monkeypatch.delenv("TRITONCONV_TUNE_REP_MS", raising=False)
    assert configs.capture_safe_bench(lambda: ran.append(1), quantiles=(0.5, 0.2, 0.8)) == 0.5
    monkeypatch.setenv("TRITONCONV_TUNE_REP_MS", "40")
    assert configs.capture_safe_bench(lambda: ran.append(2), quantiles=None) == 0.5
    assert ran == [1, 2] and seen == [{"warmup": 5.0, "rep": 25.0, "quantiles": (0.5, 0.2, 0.8)},
                                      {"warmup": 8.0, "rep": 40.0, "quantiles": None}]
    for bad in ("abc", "0", "-3", "nan"):
        monkeypatch.setenv("TRITONCONV_TUNE_REP_MS", bad)
        with pytest.raises(ValueError, match="TRITONCONV_TUNE_REP_MS must be a number of milliseconds"):
            configs.capture_safe_bench(lambda: None, quantiles=None)


def test_tuning_launch_hooks_persist_across_processes(monkeypatch):
    from tritonconv import configs

    monkeypatch.setattr(tuning, "INTERPRETER", False)
    monkeypatch.setattr(configs, "TUNE", True)  # conftest turns tuning (and so the cache) off
    monkeypatch.setattr(tuning, "device_name", lambda index: f"Fake GPU {index}")
    device = SimpleNamespace(index=0)

    tuner = FakeAutotuner()
    before = tuning.before_launch(tuner, "fprop", device)  # nothing on disk yet
    assert before == 0
    tuner.cache[KEY_A] = triton.Config({"BLOCK_M": 64, "BLOCK_N": 32}, num_warps=4, num_stages=3)  # "tuned"
    tuning.after_launch(tuner, "fprop", device, before)
    assert tuning.cache_path("fprop", "Fake GPU 0").exists()
    # a launch that tuned nothing writes nothing
    path = tuning.cache_path("fprop", "Fake GPU 0")
    mtime = path.stat().st_mtime_ns
    tuning.after_launch(tuner, "fprop", device, tuning.before_launch(tuner, "fprop", device))
    assert path.stat().st_mtime_ns == mtime

    tuning.reset_state()  # a new process
    fresh = FakeAutotuner()
    assert tuning.before_launch(fresh, "fprop", device) == 1
    assert _same(fresh.cache[KEY_A], tuner.cache[KEY_A])
    fresh.cache.clear()
    assert tuning.before_launch(fresh, "fprop", device) == 0  # loaded once per device, not per launch
    assert tuning.before_launch(fresh, "fprop", SimpleNamespace(index=1)) == 0  # other device: its own file


class PruningAutotuner(FakeAutotuner):
    """A FakeAutotuner with triton's prune_configs (reading ``nargs``, as the real one does)."""

    def __init__(self, keep=None, **kw):
        super().__init__(**kw)
        self.keep, self.nargs = keep, None

    def prune_configs(self, kwargs):
        assert self.nargs is not None, "pruning reads the launch's arguments"
        return [c for i, c in enumerate(self.configs) if self.keep is None or i in self.keep]


def test_tuning_hints_reuse_a_stale_files_choices_untimed(monkeypatch):
    """TRITONCONV_TUNE_HINTS=1: a file stale because the kernel changed hands its choices on as
    hints, kept aside across processes; a hint runs only as a config the pruning keeps for the
    launch, and is never saved as tuned."""
    from tritonconv import configs

    monkeypatch.setattr(tuning, "INTERPRETER", False)
    monkeypatch.setattr(configs, "TUNE", True)
    monkeypatch.setattr(tuning, "device_name", lambda index: "Fake GPU")
    monkeypatch.setenv(tuning.HINTS_ENV, "1")
    device = SimpleNamespace(index=0)
    f16 = SimpleNamespace(dtype=torch.float16)
    args_a = (f16, f16, 4096, 64)  # autotune_key -> KEY_A
    key_c = (7, 7, "torch.float16", "torch.float16")

    old = FakeAutotuner(source="kernel v1")
    old.cache[KEY_A] = copy.copy(old.configs[1])
    old.cache[KEY_B] = triton.Config({"BLOCK_M": 64, "BLOCK_N": 64})  # not in the new config space
    tuning.save_entries(old, "fprop", "Fake GPU")

    tuning.reset_state()  # the next process runs the changed kernel
    new = PruningAutotuner(source="kernel v2")
    with pytest.warns(tuning.StaleCacheWarning, match="stale"):
        size = tuning.before_launch(new, "fprop", device)
    assert size == 0 and new.cache == {}
    assert tuning.autotune_key(new, args_a, {}) == KEY_A
    tuning._apply_hint(new, "fprop", args_a, {})
    assert new.cache[KEY_A] is new.configs[1] and tuning.hints_used() == 1  # the kernel's own config
    new.cache[key_c] = new.configs[0]  # tuned in this process
    tuning.after_launch(new, "fprop", device, size)
    saved = json.loads(tuning.cache_path("fprop", "Fake GPU").read_text())["entries"]
    assert [e["key"] for e in saved] == [list(key_c)]  # the hint is not a tuned choice

    tuning.reset_state()  # a later stage: the file is current now, the hints were kept aside
    later = PruningAutotuner(source="kernel v2", keep=[0])  # the pruning now drops the hinted tile
    assert tuning.before_launch(later, "fprop", device) == 1
    assert tuning.hinted_config(later, args_a, {}) is None
    later.keep = None
    assert tuning.hinted_config(later, args_a, {}) is later.configs[1]
    assert precompile._configs_for(later, args_a, {"grid": None}) == [later.configs[1]]  # compiles the hint alone
    assert tuning.hinted_config(later, (f16, f16, 128, 7), {}) is None  # KEY_B: a tile v2 does not have

    monkeypatch.setenv(tuning.HINTS_ENV, "0")  # off: stale choices are only a warning
    tuning.reset_state()
    off = PruningAutotuner(source="kernel v2")
    tuning.before_launch(off, "fprop", device)
    assert tuning.hinted_config(off, args_a, {}) is None


def test_tuning_hints_need_the_same_versions(monkeypatch):
    """A file written under another Triton is no hint: its tiles were timed with other code."""
    device, args_a = _hint_setup(monkeypatch)
    path = tuning.cache_path("fprop", "Fake GPU")
    data = json.loads(path.read_text())
    path.write_text(json.dumps(dict(data, triton="0.0.1")))
    new = PruningAutotuner(source="kernel v2")
    with pytest.warns(tuning.StaleCacheWarning):
        tuning.before_launch(new, "fprop", device)
    assert tuning.hinted_config(new, args_a, {}) is None
    assert not tuning._hints_path("fprop", "Fake GPU").exists()


class LaunchingAutotuner(PruningAutotuner):
    """Also launches as triton's Autotuner runs: a cached key's config as is, else "tunes" (takes
    the first config); a config in ``fails`` raises as one that does not compile would."""

    def __init__(self, fails=(), **kw):
        super().__init__(**kw)
        self.fails, self.ran, self.best_config, self.fn = list(fails), [], None, SimpleNamespace(cache_key=kw["source"])

    def __getitem__(self, grid):
        def run(*args, **kwargs):
            if tuning._intercepting:  # precompile's interception: recorded, not run
                return None
            key = tuning.autotune_key(self, args, kwargs)
            if key not in self.cache:
                self.cache[key] = self.configs[0]
            config = self.best_config = self.cache[key]
            if any(config is f for f in self.fails):
                raise RuntimeError("out of resources: shared memory")
            self.ran.append(config)
        return run


def _hint_setup(monkeypatch):
    from tritonconv import configs

    monkeypatch.setattr(tuning, "INTERPRETER", False)
    monkeypatch.setattr(configs, "TUNE", True)
    monkeypatch.setattr(tuning, "device_name", lambda index: "Fake GPU")
    monkeypatch.setenv(tuning.HINTS_ENV, "1")
    old = FakeAutotuner(source="kernel v1")
    old.cache[KEY_A] = copy.copy(old.configs[1])
    tuning.save_entries(old, "fprop", "Fake GPU")
    tuning.reset_state()
    f16 = SimpleNamespace(dtype=torch.float16)
    return SimpleNamespace(index=0), (f16, f16, 4096, 64)


def test_a_launch_runs_a_hint_once_it_runs_and_tunes_where_the_hint_fails(monkeypatch):
    device, args_a = _hint_setup(monkeypatch)
    new = LaunchingAutotuner(source="kernel v2")
    with pytest.warns(tuning.StaleCacheWarning):
        with tuning.intercepted():  # precompile's intercepted launches take no hint
            tuning.launch(new, "fprop", device, None, *args_a)
    assert tuning.hints_used() == 0 and KEY_A not in new.cache
    tuning.launch(new, "fprop", device, None, *args_a)
    assert new.ran[-1] is new.configs[1] and tuning.hints_used() == 1  # the hint, untimed
    on_disk = json.loads(tuning.cache_path("fprop", "Fake GPU").read_text())
    assert on_disk["signature"] != tuning.kernel_signature(new)  # nothing saved: the hint is no tuned choice

    tuning.reset_state()  # reset takes an untimed choice out of the cache with its bookkeeping
    assert KEY_A not in new.cache
    failing = LaunchingAutotuner(source="kernel v2")
    failing.fails = [failing.configs[1]]  # this source cannot compile the hinted tile
    with pytest.warns(tuning.StaleCacheWarning, match="hinted config for fprop failed"):
        tuning.launch(failing, "fprop", device, None, *args_a)
    assert failing.ran == [failing.configs[0]] and tuning.hints_used() == 0  # tuned instead, and saved
    saved = json.loads(tuning.cache_path("fprop", "Fake GPU").read_text())["entries"]
    assert [tuple(e["key"]) for e in saved] == [KEY_A]


def test_hints_merge_across_generations_and_need_the_same_config_space(monkeypatch):
    device, args_a = _hint_setup(monkeypatch)
    key_c = (7, 7, "torch.float16", "torch.float16")
    f16 = SimpleNamespace(dtype=torch.float16)
    v2 = PruningAutotuner(source="kernel v2")
    with pytest.warns(tuning.StaleCacheWarning):
        size = tuning.before_launch(v2, "fprop", device)
    v2.cache[key_c] = v2.configs[0]  # tuned by v2
    tuning.after_launch(v2, "fprop", device, size)

    tuning.reset_state()  # v3: v2's file is stale too; its choice joins v1's kept aside
    v3 = PruningAutotuner(source="kernel v3")
    with pytest.warns(tuning.StaleCacheWarning):
        tuning.before_launch(v3, "fprop", device)
    assert tuning.hinted_config(v3, args_a, {}) is v3.configs[1]
    assert tuning.hinted_config(v3, (f16, f16, 7, 7), {}) is v3.configs[0]

    tuning.reset_state()  # a kernel with a new tile: its shapes must be timed, not hinted
    wider = PruningAutotuner(source="kernel v4")
    wider.configs.append(triton.Config({"BLOCK_M": 64, "BLOCK_N": 64}, num_warps=8, num_stages=3))
    with pytest.warns(tuning.StaleCacheWarning):
        tuning.before_launch(wider, "fprop", device)
    assert tuning.hinted_config(wider, args_a, {}) is None and tuning.hinted_config(wider, (f16, f16, 7, 7), {}) is None


def test_a_hint_keeps_the_sync_the_tap_tma_pruner_adds(monkeypatch, device):
    """Where this Triton's register-hazard rule syncs a tile (SYNC_MMA), only the synced config
    can come from a hint: an earlier run's unsynced choice of the same tile is not taken."""
    from tritonconv import configs
    from tritonconv.kernels import fprop
    from tritonconv.spec import conv2d_problem

    tuner = fprop._fprop_tap_tma_tuned
    monkeypatch.setattr(tuner, "configs", fprop.tap_tma_configs(interpreter=False))
    monkeypatch.setattr(configs, "TUNE", True)
    monkeypatch.setattr(configs, "WGMMA_RS_HAZARD", True)
    monkeypatch.setattr(configs, "device_capability", lambda t: 90)
    x = torch.randn(2, 64, 16, 16, device=device, dtype=torch.float16).to(memory_format=torch.channels_last)
    w = torch.randn(64, 64, 3, 3, device=device, dtype=torch.float16).to(memory_format=torch.channels_last)
    seen = []
    with precompile.intercept_launches(lambda t, a, k: seen.append((a, k)), [tuner]):
        fprop.conv2d_fprop_tap_tma(x, w, None, conv2d_problem(x, w, None, 1, 1, 1, 1))
    args, kwargs = seen[0]
    key = tuning.autotune_key(tuner, args, kwargs)
    tuner.nargs = dict(zip(tuner.arg_names, args))
    kept = tuner.prune_configs({k: v for k, v in kwargs.items() if k != "grid"})
    tuner.nargs = None
    synced = next(c for c in kept if c.kwargs.get("SYNC_MMA"))
    bare = triton.Config({k: v for k, v in synced.kwargs.items() if k != "SYNC_MMA"}, num_warps=synced.num_warps,
                         num_stages=synced.num_stages)
    try:
        tuning._hints[id(tuner)] = {key: bare}
        assert tuning.hinted_config(tuner, args, kwargs) is None
        tuning._hints[id(tuner)] = {key: tuning.decode_config(tuning.encode_config(synced))}
        hinted = tuning.hinted_config(tuner, args, kwargs)
        assert hinted.kwargs.get("SYNC_MMA") is True and hinted.pre_hook is synced.pre_hook
        # the transposed form the pruner offers beside it is a choice a hint can name too
        swapped = next(c for c in kept if c.kwargs.get("TRANSPOSED"))
        tuning._hints[id(tuner)] = {key: tuning.decode_config(tuning.encode_config(swapped))}
        hinted = tuning.hinted_config(tuner, args, kwargs)
        assert hinted.kwargs.get("TRANSPOSED") is True and not hinted.kwargs.get("SYNC_MMA")
    finally:
        tuning._hints.pop(id(tuner), None)


def test_tuning_hooks_are_inert_with_tuning_off(monkeypatch):
    """TRITONCONV_TUNE=0 (the tests): the one untimed config is no tuned choice to save or load."""
    from tritonconv import configs

    monkeypatch.setattr(tuning, "INTERPRETER", False)
    monkeypatch.setattr(configs, "TUNE", False)
    monkeypatch.setattr(tuning, "device_name", lambda index: "Fake GPU")
    tuner = FakeAutotuner()
    assert tuning.before_launch(tuner, "fprop", SimpleNamespace(index=0)) == -1
    tuner.cache[KEY_A] = triton.Config({"BLOCK_M": 64, "BLOCK_N": 32})
    tuning.after_launch(tuner, "fprop", SimpleNamespace(index=0), -1)
    assert not tuning.cache_path("fprop", "Fake GPU").exists()


def test_tuning_hooks_are_inert_under_the_interpreter(monkeypatch):
    monkeypatch.setattr(tuning, "INTERPRETER", True)
    tuner = FakeAutotuner()
    assert tuning.before_launch(tuner, "fprop", SimpleNamespace(index=0)) == -1
    tuner.cache[KEY_A] = triton.Config({"BLOCK_M": 64, "BLOCK_N": 32})
    tuning.after_launch(tuner, "fprop", SimpleNamespace(index=0), -1)
    assert not tuning.cache_dir().exists()


def test_tuning_cache_with_a_real_autotuner_and_env_dir(tmp_path, monkeypatch):
    from tritonconv.kernels.fprop import _fprop_tuned

    moved = tmp_path / "elsewhere"
    monkeypatch.setenv(tuning.ENV_DIR, str(moved))
    assert tuning.cache_dir() == moved
    key = (123456789, 1, 1, 8, 8, 1, 3, 3, 1, 1, 1, 1, 1, 1, "torch.float16")
    chosen = triton.Config(dict(_fprop_tuned.configs[0].kwargs), num_warps=2, num_stages=2)
    _fprop_tuned.cache[key] = chosen
    try:
        tuning.save_entries(_fprop_tuned, "fprop", "Fake GPU", keys=[key])
        del _fprop_tuned.cache[key]
        assert tuning.load_into(_fprop_tuned, "fprop", "Fake GPU") == {key}
        assert _same(_fprop_tuned.cache[key], chosen)
    finally:
        _fprop_tuned.cache.pop(key, None)
    assert list(moved.glob("fprop__Fake-GPU__*.json"))
    assert tuning.main(["--list"]) == 0


# --------------------------------------------------------------------------- precompile plumbing


def test_tuning_cache_restores_a_tma_kernel_with_its_pre_hook():
    """The TMA families set descriptor block shapes in the configs' pre_hook: a loaded entry
    must carry it again, or the launch would run with the wrong block shapes."""
    from tritonconv.kernels.gemm1x1 import _gemm1x1_tma_tuned

    hook = _gemm1x1_tma_tuned.configs[0].pre_hook
    assert hook is not None
    key = (987654321, 7, 7, 64, 256, 1, 1, 0, 0, "torch.float16")
    chosen = triton.Config(dict(_gemm1x1_tma_tuned.configs[0].kwargs), num_warps=4, num_stages=3, pre_hook=hook)
    _gemm1x1_tma_tuned.cache[key] = chosen
    try:
        assert tuning.save_entries(_gemm1x1_tma_tuned, "gemm1x1_tma", "Fake GPU", keys=[key]) == 1
        del _gemm1x1_tma_tuned.cache[key]
        assert tuning.load_into(_gemm1x1_tma_tuned, "gemm1x1_tma", "Fake GPU") == {key}
        loaded = _gemm1x1_tma_tuned.cache[key]
        assert _same(loaded, chosen) and loaded.pre_hook is hook
    finally:
        _gemm1x1_tma_tuned.cache.pop(key, None)


def test_intercepted_launches_record_arguments_and_run_nothing(device):
    from tritonconv.kernels.fprop import _fprop_tuned, conv2d_fprop
    from tritonconv.spec import conv2d_problem

    x = torch.randn(2, 8, 10, 10, device=device).to(memory_format=torch.channels_last)
    w = torch.randn(16, 8, 3, 3, device=device)
    problem = conv2d_problem(x, w, None, 1, 1, 1, 1)
    seen = []
    with precompile.intercept_launches(lambda tuner, args, kwargs: seen.append((tuner, args, kwargs))):
        y = conv2d_fprop(x, w, None, problem)
    assert "run" not in vars(_fprop_tuned)  # restored
    assert len(seen) == 1 and seen[0][0] is _fprop_tuned and callable(seen[0][2]["grid"])
    assert torch.isnan(y).all()  # conftest poisons outputs: nothing was computed
    key = precompile.autotune_key(*seen[0])
    names = _fprop_tuned.keys
    expected = {"M": 2 * 10 * 10, "H": 10, "W": 10, "CG": 8, "KG": 16, "R": 3, "S": 3, "syk": y.stride(1)}
    assert {k: key[names.index(k)] for k in expected if k in names} == {k: v for k, v in expected.items() if k in names}
    assert len(key) > len(names) and all(k == "torch.float32" for k in key[len(names):])
    assert "fprop._fprop_tuned" in precompile.autotuners()
    if not CUDA:
        assert precompile.precompile([lambda: None]).mode.startswith("interpreter")


def test_a_hint_goes_through_a_real_autotuners_pruning(device):
    """hinted_config on a kernel's own autotuner and a recorded launch: the hint, read back from
    its file form, comes out as the config the autotuner's pruning keeps (with its pre-hook)."""
    from tritonconv.kernels.fprop import _fprop_tap_tma_tuned, conv2d_fprop_tap_tma
    from tritonconv.spec import conv2d_problem

    x = torch.randn(2, 16, 10, 10, device=device).to(memory_format=torch.channels_last)
    w = torch.randn(16, 16, 3, 3, device=device).to(memory_format=torch.channels_last)
    seen = []
    with precompile.intercept_launches(lambda tuner, args, kwargs: seen.append((tuner, args, kwargs))):
        conv2d_fprop_tap_tma(x, w, None, conv2d_problem(x, w, None, 1, 1, 1, 1))
    tuner, args, kwargs = seen[0]
    assert tuner is _fprop_tap_tma_tuned
    key = tuning.autotune_key(tuner, args, kwargs)
    tuner.nargs = dict(zip(tuner.arg_names, args))
    kept = tuner.prune_configs({k: v for k, v in kwargs.items() if k != "grid"})  # what a launch would time
    tuner.nargs = None
    own = kept[-1]
    try:
        tuning._hints[id(tuner)] = {key: tuning.decode_config(tuning.encode_config(own))}
        hinted = tuning.hinted_config(tuner, args, kwargs)
        assert tuning.encode_config(hinted) == tuning.encode_config(own) and hinted.pre_hook is own.pre_hook
        assert tuner.nargs is None
        tuning._hints[id(tuner)] = {key: triton.Config({**own.kwargs, "BLOCK_M": 8}, num_warps=own.num_warps,
                                                       num_stages=own.num_stages)}
        assert tuning.hinted_config(tuner, args, kwargs) is None  # a tile the kernel does not have
    finally:
        tuning._hints.pop(id(tuner), None)


def test_sweep_measures_slow_providers_after_the_quick_ones(tmp_path, monkeypatch):
    """A provider slow to set up (Provider.quick False: Inductor) runs after the quick ones have
    done every layer of the chunk, over all its layers; the quick ones go layer by layer."""
    from tritonconv.bench import providers

    monkeypatch.setattr(providers.Im2col, "quick", False)  # standing in for Inductor, which needs CUDA
    out = tmp_path / "out"
    assert sweep.main(["--preset", "smoke", "--out", str(out), "--quiet", "--reps", "1", "--limit", "2",
                       "--providers", "tritonconv,im2col,unfold", "--dtype", "fp16" if CUDA else "fp32",
                       "--no-report"]) == 0
    _, rows = _read_csv(out / "results.csv")
    layers = list(dict.fromkeys(r["layer"] for r in rows))
    assert len(layers) == 2
    assert [(r["layer"], r["provider"]) for r in rows] == (
        [(n, p) for n in layers for p in ("tritonconv", "unfold")] + [(n, "im2col") for n in layers])


def test_sweep_row_says_when_its_calls_got_no_launch_plan(tmp_path, monkeypatch):
    """A tritonconv row whose calls took the full path (no launch plan formed) says so and why in
    its note: its host_us is then the full path's, not a plan replay's."""
    from tritonconv import plans

    def refuse(key, *args, **kwargs):
        plans._keep(key, plans._Unplannable("refused here"))

    monkeypatch.setattr(plans, "build", refuse)
    out = tmp_path / "out"
    with plans.enabled_as(True):
        assert sweep.main(["--preset", "smoke", "--out", str(out), "--quiet", "--reps", "1", "--limit", "1",
                           "--providers", "tritonconv", "--dtype", "fp16" if CUDA else "fp32", "--no-report"]) == 0
    _, rows = _read_csv(out / "results.csv")
    assert len(rows) == 1 and rows[0]["status"] == "ok"
    assert rows[0]["note"].endswith(sweep.NO_PLAN_NOTE + "refused here (1 key)"), rows[0]["note"]


def test_intercepted_calls_leave_no_launch_plan(device):
    """A call whose launches are intercepted launches nothing: it must not leave its key marked
    not plannable, or the same call made for real later (the e2e run after its precompile) would
    keep the full path for good."""
    from tritonconv import functional as TF
    from tritonconv import plans

    x = torch.randn(2, 8, 10, 10, device=device).to(memory_format=torch.channels_last)
    w = torch.randn(16, 8, 3, 3, device=device)
    plans.clear()
    try:
        with plans.enabled_as(True):
            with precompile.intercept_launches(lambda tuner, args, kwargs: None):
                TF.conv2d(x, w, None, 1, 1)
            assert plans.stats() == {"plans": 0, "unplannable": 0}
            assert plans.ENABLED
            y = TF.conv2d(x, w, None, 1, 1)  # for real: its plan forms
            assert plans.stats() == {"plans": 1, "unplannable": 0}, plans.reasons()
        assert rel_err(y, F.conv2d(x.double(), w.double(), None, 1, 1)) < (1e-3 if CUDA else 1e-5)  # TF32 on a GPU
    finally:
        plans.clear()


def test_precompile_applies_the_tma_pre_hook_to_copies(device):
    """A warmup must see the descriptor block shape the config's launch will have."""
    from tritonconv.kernels.fprop import _fprop_tma_tuned, conv2d_fprop
    from tritonconv.spec import conv2d_problem

    x = torch.randn(2, 16, 6, 6, device=device).to(memory_format=torch.channels_last)
    w = torch.randn(32, 16, 3, 3, device=device).to(memory_format=torch.channels_last)
    seen = []
    with precompile.intercept_launches(lambda tuner, args, kwargs: seen.append((tuner, args, kwargs))):
        conv2d_fprop(x, w, None, conv2d_problem(x, w, None, 1, 1, 1, 1), weight_tma=True)
    tuner, args, kwargs = seen[0]
    assert tuner is _fprop_tma_tuned
    desc_at = tuner.arg_names.index("w_desc")
    before = list(args[desc_at].block_shape)
    config = triton.Config(dict(BLOCK_M=64, BLOCK_N=128, BLOCK_K=32, GROUP_M=8),
                           pre_hook=_fprop_tma_tuned.configs[0].pre_hook)
    launch_args, launch_kwargs = precompile._as_launched(tuner, args, kwargs, config)
    assert list(launch_args[desc_at].block_shape) == [128, 32]
    assert list(args[desc_at].block_shape) == before, "the recorded descriptor is shared by every config"
    assert launch_args[desc_at].base is args[desc_at].base and launch_kwargs.keys() == kwargs.keys()


def test_tune_command_runs_each_layer_once(capsys):
    args = SimpleNamespace(preset="smoke", batch=0, dtype="fp16" if CUDA else "fp32", layout="channels_last",
                           modes="forward", layers="3x3", workers=0, no_precompile=False)
    assert sweep.tune_presets(args) == 0
    assert "tuning cache:" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="no layer"):
        sweep.tune_presets(SimpleNamespace(**{**vars(args), "layers": "nope"}))


def test_each_family_calls_go_on_past_a_family_that_fails(monkeypatch):
    """The precompile pins each family in turn: one that raises must not keep the others from
    being compiled, and the error names it."""
    from tritonconv.bench import providers

    layer = next(l for l in presets.get_preset("smoke").layers if l.name == "3x3")
    case = providers.Case("smoke", layer, 2, "forward", "fp32", "channels_last", "cuda" if CUDA else "cpu")
    real_force, tried = router.force, []

    @contextlib.contextmanager
    def force(family):
        tried.append(family)
        if len(tried) == 1:
            raise ValueError("boom")
        with real_force(family):
            yield

    if len(router.candidates(router.FORWARD, case.problem)) < 2:
        pytest.skip("the smoke 3x3 layer has one candidate family here")
    monkeypatch.setattr(router, "force", force)
    thunk = providers.each_family_thunk(case)
    assert thunk.__name__ == "3x3 forward"
    with router.recording() as ran, pytest.raises(RuntimeError) as raised:
        thunk()
    assert str(raised.value) == f"forward family {tried[0]}: ValueError: boom"
    assert len(tried) >= 2 and [family for _, family in ran] == tried[1:]  # the others still ran


def test_precompile_stats_keep_the_first_distinct_errors():
    """Up to three distinct messages, each with where it first happened and how often it came."""
    stats = precompile.PrecompileStats()
    for where, err in [("a", ValueError("x")), ("b", KeyError("k")), ("c", ValueError("x")),
                       ("d", RuntimeError("at 1:2:\nsource\nr")), ("e", TypeError("t"))]:
        stats.error(where, err)
    assert stats.errors == 5
    assert stats.examples == {"ValueError: x": [2, "a"], "KeyError: 'k'": [1, "b"], "RuntimeError: r": [1, "d"]}
    assert str(stats).endswith("(none, 5 errors); 2x ValueError: x (first: a); 1x KeyError: 'k' (first: b); "
                               "1x RuntimeError: r (first: d)")


def test_error_text_names_a_compilation_error_by_its_message():
    """Triton's CompilationError opens with the source location and source; the line kept is the
    error itself."""
    from triton.compiler.errors import CompilationError

    class Node:
        lineno, col_offset = 3, 4

    err = CompilationError("def k():\n    a = 1\n    b = tl.dot(a, a)\n", Node(), "out of resources: shared memory 300000")
    assert str(err).startswith("at 3:4:")
    assert precompile.error_text(err) == "CompilationError: out of resources: shared memory 300000"
    assert precompile.error_text(RuntimeError("first\n\n  last line  \n")) == "RuntimeError: last line"
    assert precompile.error_text(KeyError()) == "KeyError"


def test_race_note_refuses_its_separator_in_a_name():
    with pytest.raises(ValueError, match="may not contain"):
        report.race_note("case; N=8", "128x128x64 w8 s3", True, True)
