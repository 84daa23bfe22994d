"""Tables and plots, rendered from the sweep's CSV and nothing else.

    python -m tritonconv.bench.report perf/out/results.csv --out perf/out [--run-id ID | --all-runs]

writes ``summary.md`` (targets, issue 6's bars, geometric-mean speedups per preset and per
mode, whole-network conv time, the router's timings of the kernel families,
the tiles chosen, the tuning cost of tritonconv's first calls, the
end-to-end network, the race check's rows, problems), ``details.md`` (every
layer) and ``plot.png`` (tritonconv's speedup over each provider, per layer).

Which rows: by default those of the CSV's latest run id (the last row's), so
a CSV that several sweeps appended to reports the newest; a sweep split over
several processes shares one run id (``--run-id`` / $TRITONCONV_RUN_ID).
Where the same measurement appears twice, the later row wins.

Speedup of tritonconv over a provider = provider median / tritonconv median,
for the same layer, mode, dtype, layout and batch, both with status ok;
the geometric mean is over the layers where both are ok, and every table
says over how many of the preset's layers that is.
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
from collections import OrderedDict, defaultdict
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

__all__ = ["load_rows", "select_rows", "speedups", "geomean", "render", "render_markdown", "render_plot",
           "render_race", "race_note", "race_fields", "RACE_KERNEL", "TARGETS", "main"]

INTERPRETER_LABEL = "interpreter timings, not performance"
# how a tritonconv row's note names the kernel family each op ran on (sweep.py writes it)
FAMILIES_NOTE = "families: "
# and what each candidate family took where the router timed them: "router ms: forward[a=0.41 b=0.52]"
ROUTER_NOTE = "router ms: "
# and the tiles each kernel's autotuner launched: "tiles: fprop_tap_tma=128x128x64 w8 s3, wgrad=..."
TILES_NOTE = "tiles: "
# and, on CUDA, what its first call took and compiled: "first call: 6.1 s, 12 kernels compiled",
# with ", 3 tile choices from an earlier run (hints)" where tuning's hints spared their tuning
FIRST_CALL_NOTE = "first call: "
HINTED_NOTE = "tile choices from an earlier run (hints)"
# perf/race_check.py's rows share the sweep's CSV under this kernel name: one row per (case, config
# pinned), the case and the config in the note (``race_note``), the kernel time in median_ms
RACE_KERNEL = "race_check"
# a config counts in the race check's verdict where the runtime would run it as the row ran
RACE_COUNTED = "counted"

# (what, preset, mode, dtype, layout, N) -> {provider: target geomean speedup of tritonconv}
TARGETS = [
    ("ResNet-50 forward, fp16, channels_last, batch 32", "resnet50", "forward", "fp16", "channels_last", 32,
     {"cudnn": 1.0, "inductor": 1.3}),
]

# Issue 6's bars, per preset, in fp16 and in bf16, channels_last, batch 32 (an H100's): the
# forward's and forward+backward's geometric-mean speedup over cuDNN, the lowest layer's (any mode
# measured), and the share of the measured tensor-core peak on the largest 3x3 layers (one group, at
# least LARGEST_3X3_MIN_C input channels: not an RGB stem; within LARGEST_3X3_SHARE of the preset's
# largest 3x3 FLOP count: VGG-16's 3.7 GFLOP an image, every one of ResNet-50's)
BAR_PRESETS = ("resnet50", "mobilenetv2", "convnext_t")
BAR_PEAK_PRESETS = ("resnet50", "vgg16")  # the presets with dense 3x3 layers: not MobileNetV2's, ConvNeXt-T's
BAR_DTYPES = ("fp16", "bf16")
BAR_LAYOUT, BAR_N = "channels_last", 32
BAR_FORWARD, BAR_FORWARD_BACKWARD, BAR_LOWEST_LAYER, BAR_PCT_PEAK = 1.0, 0.9, 0.7, 60.0
LARGEST_3X3_SHARE, LARGEST_3X3_MIN_C = 0.8, 16
BAR_MODES = ("forward", "grad_input", "grad_weight", "forward_backward")

SHAPE_FIELDS = ("N", "C", "H", "W", "K", "R", "S", "stride_h", "stride_w", "pad_h", "pad_w", "dil_h", "dil_w",
                "groups")
NUMERIC = ("count", "median_ms", "p20_ms", "p80_ms", "host_us", "flops", "tflops", "peak_tflops", "pct_peak",
           "extra_mem_bytes", "speedup_tritonconv", "rel_err", "input_sets") + SHAPE_FIELDS + ("P", "Q")


# --------------------------------------------------------------------------- rows


def _num(value: str) -> Optional[float]:
    if value is None or value == "":
        return None
    try:
        return float(value)
    except ValueError:
        return None


def load_rows(path) -> List[Dict[str, Any]]:
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        for key in NUMERIC:
            if key in row:
                row[key] = _num(row[key])
    return rows


def _identity(row) -> Tuple:
    # a race-check row is one config of one case: several per layer
    race = race_fields(row) if row.get("kernel") == RACE_KERNEL else {}
    return (row.get("kernel"), row.get("provider"), row.get("mode"), row.get("preset"), row.get("layer"),
            row.get("dtype"), row.get("layout")) + tuple(row.get(k) for k in SHAPE_FIELDS) + (
            race.get("case"), race.get("config"))


def select_rows(rows: List[Dict[str, Any]], run_id: Optional[str] = None, all_runs: bool = False):
    """The rows of one run (the given id, else the last row's), later duplicates winning."""
    if not rows:
        return []
    if not all_runs:
        run_id = run_id or rows[-1].get("run_id")
        rows = [r for r in rows if r.get("run_id") == run_id]
    latest: "OrderedDict[Tuple, Dict]" = OrderedDict()
    for row in rows:
        key = _identity(row)
        latest.pop(key, None)
        latest[key] = row
    return list(latest.values())


def _ok(row) -> bool:
    return row.get("status") == "ok" and (row.get("median_ms") or 0) > 0


def geomean(values: Iterable[float]) -> Optional[float]:
    values = [v for v in values if v and v > 0]
    if not values:
        return None
    return math.exp(sum(math.log(v) for v in values) / len(values))


def _group_key(row) -> Tuple:
    n = row.get("N")
    return (row.get("preset"), int(n) if n is not None else None, row.get("mode"), row.get("dtype"),
            row.get("layout"))


def _conv_rows(rows):
    return [r for r in rows if r.get("kernel") == "conv2d"]


def speedups(rows) -> Dict[Tuple, Dict[str, Dict[str, Any]]]:
    """group (preset, N, mode, dtype, layout) -> provider -> {"ratios": {layer: ratio}, "layers": n}."""
    by_group: Dict[Tuple, Dict[str, Dict[str, Dict]]] = defaultdict(lambda: defaultdict(dict))
    for row in _conv_rows(rows):
        by_group[_group_key(row)][row["provider"]][row["layer"]] = row
    out: Dict[Tuple, Dict[str, Dict[str, Any]]] = {}
    for group, provs in by_group.items():
        layers = set()
        for per_layer in provs.values():
            layers.update(per_layer)
        tc = provs.get("tritonconv", {})
        out[group] = {}
        for name, per_layer in provs.items():
            if name == "tritonconv":
                continue
            ratios = {
                layer: row["median_ms"] / tc[layer]["median_ms"]
                for layer, row in per_layer.items()
                if _ok(row) and layer in tc and _ok(tc[layer])
            }
            out[group][name] = {"ratios": ratios, "layers": len(layers)}
    return out


def _providers_in(rows) -> List[str]:
    seen = []
    for row in rows:
        if row.get("provider") not in seen and row.get("provider") != "tritonconv":
            seen.append(row.get("provider"))
    return seen


# --------------------------------------------------------------------------- markdown


def _fmt_x(value: Optional[float]) -> str:
    return f"{value:.2f}x" if value is not None else "n/a"


def _fmt_ms(value: Optional[float]) -> str:
    if value is None:
        return "-"
    return f"{value:.3f}" if value < 100 else f"{value:.1f}"


def _cell(entry: Optional[Dict[str, Any]]) -> str:
    if not entry:
        return "-"
    g = geomean(entry["ratios"].values())
    return f"{_fmt_x(g)} ({len(entry['ratios'])}/{entry['layers']})"


def _table(header: Sequence[str], body: List[Sequence[str]]) -> List[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in body]
    return lines


def _is_interpreter(rows) -> bool:
    return any("interpreter" in str(r.get("timer", "")) or "interpreter" in str(r.get("gpu", "")) for r in rows)


def _environment(rows) -> List[str]:
    first = (_conv_rows(rows) or rows)[0]  # the sweep's timer, not the race check's
    stamps = sorted(r.get("timestamp", "") for r in rows if r.get("timestamp"))
    span = f"{stamps[0]} to {stamps[-1]}" if stamps else "?"
    return [f"- device: **{first.get('gpu')}**; torch {first.get('torch')}, triton {first.get('triton')}, "
            f"tritonconv {first.get('tritonconv')}, commit `{first.get('commit')}`",
            f"- run `{first.get('run_id')}`, {span}; timer: {first.get('timer')}"]


def _partial(verdict: str, measured: int, layers: int) -> str:
    return verdict + (f" (on {measured} of {layers} layers)" if measured < layers else "")


def _targets(groups) -> List[str]:
    lines = ["## Targets", ""]
    body = []
    for what, preset, mode, dtype, layout, N, goals in TARGETS:
        entry = groups.get((preset, N, mode, dtype, layout), {})
        for provider, goal in goals.items():
            e = entry.get(provider)
            g = geomean(e["ratios"].values()) if e else None
            if g is None:
                verdict = "not measured"
            else:
                verdict = _partial("met" if g >= goal else "not met", len(e["ratios"]), e["layers"])
            body.append((what, f"vs {provider}", _fmt_x(g), f"{goal:.1f}x", verdict))
    lines += _table(("case", "speedup of tritonconv", "geomean", "target", "verdict"), body)
    return lines + [""]


def _largest_3x3(rows, key) -> Tuple[List[dict], int]:
    """tritonconv's rows of group ``key`` for its largest dense 3x3 layers (LARGEST_3X3_SHARE of the
    largest's FLOPs), those measured, and how many such layers the group has."""
    dense = [r for r in _conv_rows(rows) if _group_key(r) == key and r.get("provider") == "tritonconv"
             and r.get("R") == 3 and r.get("S") == 3 and r.get("groups") == 1
             and (r.get("C") or 0) >= LARGEST_3X3_MIN_C and r.get("flops")]
    if not dense:
        return [], 0
    top = max(r["flops"] for r in dense)
    largest = [r for r in dense if r["flops"] >= LARGEST_3X3_SHARE * top]
    return [r for r in largest if _ok(r) and r.get("pct_peak") is not None], len(largest)


def _bars(rows, groups) -> List[str]:
    """Issue 6's bars, where this run measured them, and which it did not (BAR_PRESETS and the
    rest above)."""
    body: List[Tuple] = []
    unmeasured: Dict[str, List[str]] = OrderedDict(
        (what, []) for what in ("forward vs cudnn, geomean", "forward_backward vs cudnn, geomean",
                                "lowest layer vs cudnn", "% of peak, largest 3x3 layers (lowest)"))
    for preset in BAR_PRESETS:
        for dtype in BAR_DTYPES:
            def cudnn(mode):
                return groups.get((preset, BAR_N, mode, dtype, BAR_LAYOUT), {}).get("cudnn")

            for mode, goal in (("forward", BAR_FORWARD), ("forward_backward", BAR_FORWARD_BACKWARD)):
                e = cudnn(mode)
                g = geomean(e["ratios"].values()) if e else None
                what = f"{mode} vs cudnn, geomean"
                if g is None:
                    unmeasured[what].append(f"{preset} {dtype}")
                    continue
                body.append((what, preset, dtype, _fmt_x(g), f">= {goal:.1f}x",
                             _partial("met" if g >= goal else "not met", len(e["ratios"]), e["layers"])))
            entries = {mode: e for mode in BAR_MODES for e in [cudnn(mode)] if e}
            worst = min(((ratio, layer, mode) for mode, e in entries.items() for layer, ratio in e["ratios"].items()),
                        default=None)
            if worst is None:
                unmeasured["lowest layer vs cudnn"].append(f"{preset} {dtype}")
                continue
            ratio, layer, mode = worst
            body.append(("lowest layer vs cudnn", preset, dtype, f"{_fmt_x(ratio)} ({layer}, {mode})",
                         f">= {BAR_LOWEST_LAYER:.1f}x",
                         _partial("met" if ratio >= BAR_LOWEST_LAYER else "not met",
                                  sum(len(e["ratios"]) for e in entries.values()),
                                  sum(e["layers"] for e in entries.values()))))
    for preset in BAR_PEAK_PRESETS:
        for dtype in BAR_DTYPES:
            what = "% of peak, largest 3x3 layers (lowest)"
            measured, layers = _largest_3x3(rows, (preset, BAR_N, "forward", dtype, BAR_LAYOUT))
            if not measured:
                unmeasured[what].append(f"{preset} {dtype}")
                continue
            low = min(measured, key=lambda r: r["pct_peak"])
            met = all(r["pct_peak"] >= BAR_PCT_PEAK for r in measured)
            body.append((what, preset, dtype, f"{low['pct_peak']:.0f} % ({low['layer']})", f">= {BAR_PCT_PEAK:.0f} %",
                         _partial("met" if met else "not met", len(measured), layers)))
    lines = ["## Issue 6's bars", "",
             f"Against cuDNN, {BAR_LAYOUT}, batch {BAR_N}, per preset and dtype: the forward and "
             "forward+backward geometric means, the lowest layer in any mode measured, and the forward's "
             "share of the measured matmul peak on each preset's largest dense 3x3 layers (within "
             f"{LARGEST_3X3_SHARE:.0%} of its largest 3x3's FLOPs).", ""]
    if not body:  # a sweep of other presets, batches or layouts (the interpreter's smoke preset)
        return lines[:2] + [f"None measured here: they are for {', '.join(BAR_PRESETS)} (and the peak's for "
                            f"{', '.join(BAR_PEAK_PRESETS)}) at batch {BAR_N}, {BAR_LAYOUT}, "
                            f"{' or '.join(BAR_DTYPES)}.", ""]
    lines += _table(("bar", "preset", "dtype", "measured", "target", "verdict"), body)
    if any(unmeasured.values()):
        lines += ["", "Not measured here: " + "; ".join(f"{what}: {', '.join(which)}"
                                                   for what, which in unmeasured.items() if which) + "."]
    return lines + [""]


def _per_group(groups, providers) -> List[str]:
    lines = ["## Geometric-mean speedup of tritonconv, per preset", "",
             "provider median / tritonconv median, geometric mean over layers where both ran "
             "(in parentheses: layers in the mean / layers in the preset).", ""]
    body = []
    for (preset, N, mode, dtype, layout), entry in sorted(groups.items(), key=lambda kv: tuple(map(str, kv[0]))):
        body.append((preset, N, mode, dtype, layout, *(_cell(entry.get(p)) for p in providers)))
    lines += _table(("preset", "N", "mode", "dtype", "layout", *(f"vs {p}" for p in providers)), body)
    return lines + [""]


def _per_mode(groups, providers) -> List[str]:
    pooled: Dict[Tuple, Dict[str, Dict[str, Any]]] = defaultdict(dict)
    for (preset, N, mode, dtype, layout), entry in groups.items():
        for p, e in entry.items():
            slot = pooled[(mode, dtype, layout)].setdefault(p, {"ratios": {}, "layers": 0})
            slot["ratios"].update({(preset, N, k): v for k, v in e["ratios"].items()})
            slot["layers"] += e["layers"]
    lines = ["## Geometric-mean speedup of tritonconv, per mode (all presets pooled)", ""]
    body = [(mode, dtype, layout, *(_cell(entry.get(p)) for p in providers))
            for (mode, dtype, layout), entry in sorted(pooled.items())]
    lines += _table(("mode", "dtype", "layout", *(f"vs {p}" for p in providers)), body)
    return lines + [""]


def _network_time(rows) -> List[str]:
    """Count-weighted sum of layer medians: the network's conv time per provider, where complete."""
    per: Dict[Tuple, Dict[str, List]] = defaultdict(lambda: defaultdict(list))
    layers: Dict[Tuple, set] = defaultdict(set)
    for row in _conv_rows(rows):
        g = _group_key(row)
        layers[g].add(row["layer"])
        if _ok(row):
            per[g][row["provider"]].append(row["median_ms"] * (row.get("count") or 1))
    if not per:
        return []
    providers = ["tritonconv"] + _providers_in(rows)
    lines = ["## Whole-network conv time (sum of count x layer median, ms)", "",
             "Only where a provider ran every layer of the preset; otherwise the number of layers it ran.", ""]
    body = []
    for g in sorted(per, key=lambda k: tuple(map(str, k))):
        cells = []
        for p in providers:
            times = per[g].get(p, [])
            cells.append(_fmt_ms(sum(times)) if len(times) == len(layers[g]) else f"({len(times)}/{len(layers[g])})")
        body.append((*map(str, g), *cells))
    lines += _table(("preset", "N", "mode", "dtype", "layout", *providers), body)
    return lines + [""]


def _e2e(rows) -> List[str]:
    e2e = [r for r in rows if r.get("kernel") not in ("conv2d", RACE_KERNEL)]
    if not e2e:
        return []
    lines = ["## End to end", "", "A whole network, every conv from the provider: a training step (forward_backward), "
             "that step replayed from a CUDA graph (forward_backward_cudagraph: no host time), "
             "eager inference under no_grad (forward), that inference replayed from a CUDA graph "
             "(forward_cudagraph), and eager inference with BatchNorm folded into the convs, "
             "each provider's way (forward_bn_folded).", ""]
    by_case: Dict[Tuple, Dict[str, Dict]] = defaultdict(dict)
    for r in e2e:
        by_case[(r.get("kernel"), r.get("mode"), r.get("dtype"), r.get("layout"), r.get("N"))][r["provider"]] = r
    body = []
    for (kernel, mode, dtype, layout, N), provs in by_case.items():
        tc = provs.get("tritonconv")
        for p, r in provs.items():
            speed = None
            if p != "tritonconv" and tc and _ok(tc) and _ok(r):
                speed = r["median_ms"] / tc["median_ms"]
            body.append((kernel, mode, dtype, layout, int(N) if N else "", p, r.get("status"),
                         _fmt_ms(r.get("median_ms")), _fmt_x(speed) if p != "tritonconv" else "", r.get("note", "")))
    lines += _table(("network", "mode", "dtype", "layout", "N", "provider", "status", "median ms",
                     "tritonconv speedup", "note"), body)
    return lines + [""]


def _peaks(rows) -> List[str]:
    peaks = {}
    for r in rows:
        if r.get("peak_tflops"):
            peaks[r.get("dtype")] = r["peak_tflops"]
    if not peaks:
        return []
    text = ", ".join(f"{d} {v:.4g}" for d, v in sorted(peaks.items()))
    return [f"- measured matmul peak, TFLOP/s (the basis of % of peak): {text}", ""]


def _problems(rows) -> List[str]:
    rows = [r for r in rows if r.get("kernel") != RACE_KERNEL]  # the race check has its own verdict
    bad = [r for r in rows if r.get("status") != "ok"]
    if not bad:
        return ["## Status", "", "Every measurement ran (status ok).", ""]
    counts: Dict[Tuple[str, str], int] = defaultdict(int)
    examples: Dict[Tuple[str, str], str] = {}
    for r in bad:
        status = str(r.get("status"))
        kind = status.split(":")[0]
        counts[(r.get("provider"), kind)] += 1
        examples.setdefault((r.get("provider"), kind), f"{r.get('layer')} {r.get('mode')} {r.get('dtype')}: {status}")
    lines = ["## Status", "", f"{len(bad)} of {len(rows)} rows are not ok (they are in the CSV, not in the means).",
             ""]
    body = [(p, k, n, examples[(p, k)][:160].replace("|", "/")) for (p, k), n in sorted(counts.items())]
    lines += _table(("provider", "status", "rows", "example"), body)
    return lines + [""]


def render_markdown(rows) -> str:
    rows = list(rows)
    if not rows:
        return "# tritonconv benchmark\n\nNo rows.\n"
    interp = _is_interpreter(rows)
    title = "# tritonconv benchmark" + (f" ({INTERPRETER_LABEL})" if interp else "")
    lines = [title, ""]
    if interp:
        lines += [f"> **{INTERPRETER_LABEL}.** These numbers come from Triton's CPU interpreter and measure "
                  "nothing about GPU speed; they show that the harness runs end to end.", ""]
    lines += _environment(rows) + _peaks(rows)
    groups = speedups(rows)
    providers = _providers_in(_conv_rows(rows))
    lines += _targets(groups)
    lines += _bars(rows, groups)
    lines += _per_group(groups, providers)
    lines += _per_mode(groups, providers)
    lines += _network_time(rows)
    lines += _router_section(rows)
    lines += _tiles_section(rows)
    lines += _first_calls_section(rows)
    lines += _e2e(rows)
    lines += render_race(rows)
    lines += _problems(rows)
    lines += ["Per-layer numbers: `details.md`; plot: `plot.png`; raw rows: the CSV."]
    if interp:
        lines += ["", f"_{INTERPRETER_LABEL}_"]
    return "\n".join(lines) + "\n"


# a race-check row's time with L2 flushed before each call (bench.timing.device_bench), beside
# its kernel time from a CUDA graph's replays, which find the operands in L2 (median_ms)
RACE_FLUSHED = "flushed ms"
# the race check's baseline row per case (the config field): cuDNN through PyTorch, its times only
RACE_BASELINE = "cuDNN"


def race_note(case: str, config: str, same_bits: Optional[bool], counted: bool, remark: str = "",
              flushed_ms: Optional[float] = None) -> str:
    """A race-check row's note: "case: ...; config: ...; same bits: yes; counted; flushed ms: 0.0281;
    <remark>"."""
    if "; " in case or "; " in config:
        raise ValueError(f"a race-check case or config may not contain '; ' (the note's separator): "
                         f"{case!r}, {config!r}")
    parts = [f"case: {case}", f"config: {config}"]
    if same_bits is not None:
        parts.append(f"same bits: {'yes' if same_bits else 'no'}")
    if counted:
        parts.append(RACE_COUNTED)
    if flushed_ms is not None:
        parts.append(f"{RACE_FLUSHED}: {flushed_ms:.4f}")
    return "; ".join(parts + ([remark] if remark else []))


def race_fields(row: Dict[str, Any]) -> Dict[str, Any]:
    """{case, config, same_bits (True/False/None), counted, flushed_ms (None where not timed so),
    remark} from a race-check row's note."""
    out: Dict[str, Any] = {"case": None, "config": None, "same_bits": None, "counted": False, "flushed_ms": None,
                           "remark": ""}
    remark = []
    for part in str(row.get("note") or "").split("; "):
        key, sep, value = part.partition(": ")
        if sep and key in ("case", "config"):
            out[key] = value
        elif sep and key == "same bits":
            out["same_bits"] = value == "yes"
        elif sep and key == RACE_FLUSHED:
            out["flushed_ms"] = float(value)
        elif part == RACE_COUNTED:
            out["counted"] = True
        elif part:
            remark.append(part)
    out["remark"] = "; ".join(remark)
    return out


def _cell_text(text: str, limit: int = 160) -> str:
    """``text`` fit for one markdown table cell: one line, no column bars."""
    return " ".join(str(text).split())[:limit].replace("|", "/")


def _race_case_base(case: str) -> str:
    """The case without its register-hazard rule, so a tile's runs with the rule off and on pair up."""
    return case.replace(", rule off", "").replace(", rule on", "")


def render_race(rows) -> List[str]:
    """The race check's section (perf/race_check.py), from its rows: every config's worst rel_err
    of three calls, whether the calls gave the same bits and the config's kernel time; the verdict
    over the configs the runtime would run so; and, where a tile ran with the register-hazard rule
    off and on, what the sync costs."""
    race = [r for r in rows if r.get("kernel") == RACE_KERNEL]
    if not race:
        return []
    first = race[0]
    batches = sorted({int(r["N"]) for r in race if r.get("N")})
    lines = ["## Race check (perf/race_check.py): every config of the TMA families, three calls each", "",
             f"{first.get('gpu')}; torch {first.get('torch')}, triton {first.get('triton')}; ResNet-50 layers at "
             f"N={'/'.join(map(str, batches)) or '?'} (a case names its own), {first.get('dtype')}, "
             f"{first.get('layout')}; launch plans off; ms: {first.get('timer')}.", ""]
    body, bad, timed, turned, baseline = [], [], defaultdict(dict), defaultdict(dict), {}
    for r in race:
        f = race_fields(r)
        status = str(r.get("status") or "")
        same = {True: "yes", False: "**no**", None: ""}[f["same_bits"]]
        err = f"{r['rel_err']:.1e}" if isinstance(r.get("rel_err"), float) else (status if status != "ok" else "")
        ms, flushed = r.get("median_ms"), f["flushed_ms"]
        body.append((f["case"], f["config"], _cell_text(err), same, f"{ms:.4f}" if isinstance(ms, float) else "",
                     f"{flushed:.4f}" if flushed is not None else "", _cell_text(f["remark"])))
        if f["counted"] and status.split(":")[0] in ("differs", "wrong"):
            bad.append(f"{f['case']} {f['config']}")
        if f["config"] == RACE_BASELINE:
            baseline[f["case"]] = (ms, flushed)
            continue
        if isinstance(ms, float) and ms > 0 and f["config"]:
            config = f["config"].removesuffix(" rotated")
            turned[(f["case"], config)][config != f["config"]] = (ms, flushed)
            if config != f["config"]:
                continue
            form = "sync" if config.endswith(" sync") else "transposed" if config.endswith(" transposed") else "as is"
            base = config.removesuffix(" sync").removesuffix(" transposed")
            timed[(_race_case_base(f["case"]), base)][form] = ms
    lines += _table(("case", "config", "rel_err (worst of 3)", "same bits", "ms", RACE_FLUSHED, "note"), body)
    lines += ["", f"{len(bad)} config(s) run as the runtime runs them (register-hazard rule on) gave different bits "
              "or a wrong result" + (": " + ", ".join(bad) if bad else ".")]
    paired = [(case, cfg, t) for (case, cfg), t in timed.items() if "sync" in t and len(t) >= 2]
    if paired:
        def ms_of(t, form):
            return f"{t[form]:.4f}" if form in t else ""

        def ratio(num, den):
            return f"{num / den:.2f}x" if num and den else ""

        lines += ["", "What the sync costs (configs.WGMMA_RS_HAZARD): the same tile unsynced (rule off: timing only, "
                  "it may race), synced (as the runtime runs it on this Triton), and transposed (the form the "
                  "pruner offers beside the synced one, configs.TRANSPOSED_MIN_BLOCK_N; no wait, no race).", ""]
        lines += _table(("case", "config", "ms unsynced", "ms synced", "ms transposed", "synced / unsynced",
                         "transposed / synced"),
                        [(case, cfg, ms_of(t, "as is"), ms_of(t, "sync"), ms_of(t, "transposed"),
                          ratio(t["sync"], t.get("as is")), ratio(t.get("transposed"), t["sync"]))
                         for case, cfg, t in paired])
    lines += _race_rotation(turned, baseline)
    return lines + [""]


def _race_rotation(turned: Dict[Tuple[str, str], Dict[bool, Tuple]], baseline: Dict[str, Tuple]) -> List[str]:
    """The race check's table of each tile form beside itself rotated (configs.ROTATED_FORMS):
    kernel times (L2 warm) and times with L2 flushed, and the case's cuDNN row where it has one."""
    pairs = [(case, config, t) for (case, config), t in turned.items() if len(t) == 2]
    if not pairs:
        return []

    def cell(value):
        return f"{value:.4f}" if isinstance(value, float) else ""

    def ratio(num, den):
        return f"{num / den:.2f}x" if isinstance(num, float) and isinstance(den, float) and den > 0 else ""

    rows = []
    for case, config, t in pairs:
        (ms, flushed), (ms_r, flushed_r) = t[False], t[True]
        base_ms, base_flushed = baseline.get(case, (None, None))
        rows.append((case, config, cell(ms), cell(ms_r), ratio(ms_r, ms), cell(flushed), cell(flushed_r),
                     ratio(flushed_r, flushed), cell(base_flushed), ratio(base_flushed, min(
                         (v for v in (flushed, flushed_r) if isinstance(v, float)), default=None))))
    return ["", "What rotation does (configs.ROTATED_FORMS): each tile form beside itself rotated, its kernel "
            "time (a CUDA graph's replays: the operands stay in L2) and its time with L2 flushed before "
            "each call (as the sweeps time); the last columns: the case's cuDNN row flushed, and its "
            "time over the better of the two forms' (above 1: the tile is ahead).", ""] + _table(
        ("case", "config", "ms", "ms rotated", "rotated / not", f"{RACE_FLUSHED}", f"{RACE_FLUSHED} rotated",
         "rotated / not, flushed", f"cuDNN {RACE_FLUSHED}", "cuDNN / better form, flushed"), rows)


def families_of(row: Optional[Dict[str, Any]]) -> str:
    """The kernel families a tritonconv row ran on, from its note ("families: forward=gemm1x1"), or "-"."""
    note = (row or {}).get("note") or ""
    for part in note.split(";"):
        part = part.strip()
        if part.startswith(FAMILIES_NOTE):
            return part[len(FAMILIES_NOTE):].replace("input_grad=", "dgrad=").replace("weight_grad=", "wgrad=")
    return "-"


def format_router_timings(timed: Dict[str, Dict[str, float]]) -> str:
    """{direction: {family: ms}} -> "forward[tap_tma=0.412 implicit=0.53] weight_grad[...]", fastest first."""
    return " ".join(
        f"{direction}[" + " ".join(f"{family}={ms:.4g}" for family, ms in sorted(t.items(), key=lambda kv: kv[1])) + "]"
        for direction, t in timed.items())


def format_tiles(tiles: Dict[str, str]) -> str:
    """{kernel: config name} -> "fprop_tap_tma=128x128x64 w8 s3, wgrad=64x64x64 w4 s4"."""
    return ", ".join(f"{kernel}={name}" for kernel, name in tiles.items())


def tiles_of(row: Optional[Dict[str, Any]]) -> Dict[str, str]:
    """{kernel: config name} from a tritonconv row's note, {} without tiles."""
    note = (row or {}).get("note") or ""
    for part in note.split(";"):
        part = part.strip()
        if part.startswith(TILES_NOTE):
            pairs = [item.partition("=") for item in part[len(TILES_NOTE):].split(",")]
            return {k.strip(): v.strip() for k, sep, v in pairs if sep}
    return {}


def _tiles_section(rows) -> List[str]:
    """Per kernel and dtype, how many layers' tritonconv rows launched each config: the data for
    trimming a config space (every config costs tuning time on each new shape)."""
    counts: Dict[Tuple[str, str], Dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for r in _conv_rows(rows):
        if r.get("provider") == "tritonconv" and _ok(r):
            for kernel, name in tiles_of(r).items():
                counts[(kernel, r.get("dtype"))][name] += 1
    if not counts:
        return []
    lines = ["## Tiles the autotuners chose", "",
             "Per kernel and dtype: each config launched, with the number of layer rows that launched it "
             "(the losing candidates too, on the row whose first call the router timed them in).", ""]
    body = [(kernel, dtype, ", ".join(f"{name} ({n})" for name, n in sorted(per.items(), key=lambda kv: -kv[1])))
            for (kernel, dtype), per in sorted(counts.items(), key=lambda kv: tuple(map(str, kv[0])))]
    lines += _table(("kernel", "dtype", "configs (rows)"), body)
    return lines + [""]


def first_call_of(row: Optional[Dict[str, Any]]) -> Optional[Tuple[float, int, int]]:
    """(seconds, kernels compiled, tile choices from hints) of a tritonconv row's first call, from
    its note; None without."""
    note = (row or {}).get("note") or ""
    for part in note.split(";"):
        part = part.strip()
        if part.startswith(FIRST_CALL_NOTE):
            seconds, _, rest = part[len(FIRST_CALL_NOTE):].partition(" s, ")
            kernels, _, hinted = rest.partition(" kernels compiled")
            hinted = hinted.strip(", ").split(" ")[0]
            if _num(seconds) is not None and kernels.isdigit():
                return float(seconds), int(kernels), int(hinted) if hinted.isdigit() else 0
    return None


def _first_calls_section(rows) -> List[str]:
    """Per sweep group, what tritonconv's first calls took (tuning, and the router timing the
    families) and the kernels they compiled: where a check's minutes go, and, after the
    precompile, how many specialisations it missed."""
    groups: Dict[Tuple, List[Tuple[str, float, int, int]]] = defaultdict(list)
    for r in _conv_rows(rows):
        first = first_call_of(r) if r.get("provider") == "tritonconv" else None
        if first is not None:
            groups[_group_key(r)].append((r.get("layer"), *first))
    if not groups:
        return []
    lines = ["## Tuning cost: tritonconv's first call per layer", "",
             "Seconds of each layer's first call (autotuning, the router timing the families, compiling what the "
             "precompile did not), the kernels compiled in it, and the tile choices taken untimed from an earlier "
             "run's (TRITONCONV_TUNE_HINTS: not tuned for this code).", ""]
    body = []
    for g in sorted(groups, key=lambda k: tuple(map(str, k))):
        per = groups[g]
        slowest = max(per, key=lambda t: t[1])
        body.append((*map(str, g), len(per), f"{sum(t[1] for t in per):.1f}", f"{slowest[1]:.1f} ({slowest[0]})",
                     sum(t[2] for t in per), sum(t[3] for t in per)))
    lines += _table(("preset", "N", "mode", "dtype", "layout", "layers", "seconds", "slowest layer",
                     "kernels compiled", "choices from hints"), body)
    return lines + [""]


def router_timings_of(row: Optional[Dict[str, Any]]) -> Dict[str, Dict[str, float]]:
    """{direction: {family: ms}} from a tritonconv row's note, {} where the router timed nothing."""
    note = (row or {}).get("note") or ""
    out: Dict[str, Dict[str, float]] = {}
    for part in note.split(";"):
        part = part.strip()
        if not part.startswith(ROUTER_NOTE):
            continue
        for chunk in part[len(ROUTER_NOTE):].split("]"):
            direction, _, inner = chunk.strip().partition("[")
            pairs = [item.split("=") for item in inner.split()]
            times = {p[0]: _num(p[1]) for p in pairs if len(p) == 2 and _num(p[1]) is not None}
            if direction and times:
                out[direction] = times
    return out


def _alternatives(row: Optional[Dict[str, Any]]) -> str:
    """ " (implicit_tma 1.3x, implicit 1.5x)": how much slower each other timed family was."""
    parts = []
    for direction, times in router_timings_of(row).items():
        best = min(times.values())
        others = [f"{family} {ms / best:.2f}x" for family, ms in sorted(times.items(), key=lambda kv: kv[1])[1:]
                  if best > 0]
        if others:
            parts.append(_short_direction(direction) + ": " + ", ".join(others))
    return f" ({'; '.join(parts)})" if parts else ""


def _short_direction(direction: str) -> str:
    return {"input_grad": "dgrad", "weight_grad": "wgrad"}.get(direction, direction)


def _router_section(rows) -> List[str]:
    """Per preset and direction, each candidate family: layers it won, layers it was timed on, and
    the geometric mean of its time over the fastest family's there (1.00x = it always won)."""
    stats: Dict[Tuple, Dict[str, list]] = defaultdict(lambda: {"won": [], "ratios": []})
    for r in _conv_rows(rows):
        if r.get("provider") != "tritonconv" or not _ok(r):
            continue
        for direction, times in router_timings_of(r).items():
            best = min(times.values())
            for family, ms in times.items():
                slot = stats[(*_group_key(r), direction, family)]
                slot["ratios"].append(ms / best if best > 0 else float("nan"))
                slot["won"].append(ms == best)
    if not stats:
        return []
    lines = ["## Kernel families: the router's timings", "",
             "Where several families can run a layer, the router times each (its own tuned tiles) and keeps "
             "the fastest. Per family: layers it won / layers it was timed on, and the geometric mean of its "
             "time over the fastest family's on those layers.", ""]
    body = []
    for key in sorted(stats, key=lambda k: tuple(map(str, k))):
        preset, N, mode, dtype, layout, direction, family = key
        slot = stats[key]
        mean = geomean(slot["ratios"])
        body.append((preset, N, mode, dtype, layout, _short_direction(direction), family,
                     f"{sum(slot['won'])}/{len(slot['won'])}", _fmt_x(mean) if mean else "-"))
    lines += _table(("preset", "N", "mode", "dtype", "layout", "op", "family", "won", "time / fastest"), body)
    return lines + [""]


def _host_cell(tc, cudnn) -> str:
    """tritonconv's host us per call, and cuDNN's in parentheses (CUDA rows only: the timer
    measures them apart from the device time, see bench.timing)."""
    def us(r):
        return f"{r['host_us']:.0f}" if r is not None and r.get("host_us") else None

    mine, theirs = us(tc), us(cudnn)
    if mine is None:
        return "-"
    return mine + (f" ({theirs})" if theirs else "")


def render_details(rows) -> str:
    rows = _conv_rows(rows)
    interp = _is_interpreter(rows)
    lines = ["# tritonconv benchmark: every layer" + (f" ({INTERPRETER_LABEL})" if interp else ""), ""]
    providers = _providers_in(rows)
    by_group: Dict[Tuple, Dict[str, Dict[str, Dict]]] = defaultdict(lambda: defaultdict(dict))
    order: Dict[Tuple, List[str]] = defaultdict(list)
    for r in rows:
        g = _group_key(r)
        by_group[g][r["layer"]][r["provider"]] = r
        if r["layer"] not in order[g]:
            order[g].append(r["layer"])
    for g in sorted(by_group, key=lambda k: tuple(map(str, k))):
        preset, N, mode, dtype, layout = g
        lines += [f"## {preset}, N={N}, {mode}, {dtype}, {layout}", ""]
        header = ("layer", "shape", "x", "tritonconv ms", "host us (cudnn)", "TFLOP/s", "% peak", "extra MB",
                  "families",
                  *(f"{p} ms (speedup)" for p in providers))
        body = []
        for layer in order[g]:
            per = by_group[g][layer]
            any_row = next(iter(per.values()))
            shape = (f"C{int(any_row['C'])} {int(any_row['H'])}x{int(any_row['W'])} -> K{int(any_row['K'])} "
                     f"{int(any_row['R'])}x{int(any_row['S'])}/{int(any_row['stride_h'])}"
                     + (f" g{int(any_row['groups'])}" if any_row.get("groups", 1) != 1 else ""))
            tc = per.get("tritonconv")

            def ms(r):
                if r is None:
                    return "-"
                return _fmt_ms(r.get("median_ms")) if _ok(r) else str(r.get("status"))[:40].replace("|", "/")

            cells = []
            for p in providers:
                r = per.get(p)
                cell = ms(r)
                if r is not None and _ok(r) and tc is not None and _ok(tc):
                    cell += f" ({r['median_ms'] / tc['median_ms']:.2f}x)"
                cells.append(cell)
            extra = tc.get("extra_mem_bytes") if tc else None
            body.append((layer, shape, int(any_row.get("count") or 1), ms(tc), _host_cell(tc, per.get("cudnn")),
                         f"{tc['tflops']:.3g}" if tc and _ok(tc) and tc.get("tflops") else "-",
                         f"{tc['pct_peak']:.3g}" if tc and _ok(tc) and tc.get("pct_peak") else "-",
                         f"{extra / 2**20:.1f}" if extra is not None else "-",
                         families_of(tc) + _alternatives(tc), *cells))
        lines += _table(header, body) + [""]
    if interp:
        lines += [f"_{INTERPRETER_LABEL}_"]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- plot


def render_plot(rows, path) -> Optional[Path]:
    """One panel per (preset, N, mode, dtype, layout): tritonconv's speedup per layer over
    each provider (log scale; above 1 = tritonconv faster). None if matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import matplotlib.ticker
    except Exception:
        return None
    rows = list(rows)
    interp = _is_interpreter(rows)
    groups = speedups(rows)
    targets = [(t[1], t[5], t[2], t[3], t[4]) for t in TARGETS]
    keys = sorted(groups, key=lambda k: (k not in targets, tuple(map(str, k))))[:8]
    keys = [k for k in keys if any(e["ratios"] for e in groups[k].values())] or keys[:1]
    panels = max(1, len(keys))
    fig, axes = plt.subplots(panels, 1, figsize=(12, 3.6 * panels), squeeze=False)
    for ax, key in zip(axes[:, 0], keys or [None]):
        if key is None:
            ax.text(0.5, 0.5, "no measurements", ha="center", va="center")
            ax.axis("off")
            continue
        entry = groups[key]
        providers = [p for p in entry if entry[p]["ratios"]]
        layers: List[str] = []
        for r in _conv_rows(rows):
            if _group_key(r) == key and r["layer"] not in layers:
                layers.append(r["layer"])
        width = 0.8 / max(1, len(providers))
        for i, p in enumerate(providers):
            xs = [j + i * width for j, layer in enumerate(layers) if layer in entry[p]["ratios"]]
            ys = [entry[p]["ratios"][layer] for layer in layers if layer in entry[p]["ratios"]]
            g = geomean(ys)
            ax.bar(xs, ys, width=width, label=f"vs {p} (geomean {_fmt_x(g)})")
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.set_yscale("log")
        ax.yaxis.set_major_locator(matplotlib.ticker.LogLocator(base=10, subs=(1.0, 1.5, 2.0, 3.0, 5.0, 7.0)))
        ax.yaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%gx"))
        ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(layers))])
        ax.set_xticklabels(layers, rotation=60, ha="right", fontsize=7)
        preset, N, mode, dtype, layout = key
        ax.set_title(f"{preset} N={N} {mode} {dtype} {layout}: tritonconv speedup (>1: faster)"
                     + (f"  [{INTERPRETER_LABEL}]" if interp else ""), fontsize=9)
        if providers:
            ax.legend(fontsize=7, loc="best")
        else:
            ax.text(0.5, 0.5, "no speedups to show (no provider ran beside tritonconv)", ha="center",
                    va="center", transform=ax.transAxes)
        ax.grid(axis="y", which="both", alpha=0.3)
    if interp:
        fig.suptitle(INTERPRETER_LABEL.upper(), color="red")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# --------------------------------------------------------------------------- entry points


def render(csv_path, out_dir, run_id: Optional[str] = None, all_runs: bool = False) -> Dict[str, Path]:
    """Write summary.md, details.md and plot.png for one run of the CSV; return their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = select_rows(load_rows(csv_path), run_id, all_runs)
    paths = {"summary": out_dir / "summary.md", "details": out_dir / "details.md"}
    paths["summary"].write_text(render_markdown(rows))
    paths["details"].write_text(render_details(rows))
    plot = render_plot(rows, out_dir / "plot.png")
    if plot is None:
        print("tritonconv bench: matplotlib is not installed; no plot (pip install matplotlib)", file=sys.stderr)
    else:
        paths["plot"] = plot
    return paths


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tritonconv.bench.report",
                                description="Render summary.md, details.md and plot.png from a sweep CSV.")
    p.add_argument("csv", help="the sweep's CSV")
    p.add_argument("--out", default="", help="output directory (default: the CSV's)")
    p.add_argument("--run-id", default="", help="report this run id (default: the last row's)")
    p.add_argument("--all-runs", action="store_true", help="report every run in the CSV (later rows win)")
    args = p.parse_args(list(argv) if argv is not None else None)
    out = Path(args.out) if args.out else Path(args.csv).parent
    paths = render(args.csv, out, args.run_id or None, args.all_runs)
    print(paths["summary"].read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
