"""Race check: every tile config of the TMA families, pinned in turn, at real layer sizes.

    PYTHONPATH=$PWD python perf/race_check.py --out OUTDIR [--time-budget 60] [--cases ...]
        [--csv SWEEP_CSV --run-id THAT_SWEEPS_RUN_ID]

On the H100 of 2026-11-26, fprop_tap_tma with 128x128x64 tiles and 3 stages gave wrong tiles,
different on every call, where its reduction loop took 2 to 8 steps, and right ones at 1 and at
9 or more; the autotuner had picked that config for those layers
(perf/results/2026-11-26_H100_84cd0fb/NOTES.md). The sweep checks only the config the autotuner
picks, once. This script runs, per case (a kernel family forced on one ResNet-50 layer at batch
32, fp16, channels_last), every config the family's pruner keeps for that problem, each pinned
alone, three calls on the same inputs with NaN-poisoned outputs and launch plans off, and
reports per config:

- ``rel_err``: the worst of the three against float64 aten;
- ``same bits``: whether the three outputs are bitwise equal (every family is deterministic:
  a difference is a race);
- ``ms``: on a GPU, the config's kernel time (``configs.kernel_time``: a CUDA graph of its
  launches, outputs not poisoned). Where a case runs with the rule off and on, a second table
  sets each synced tile's time beside the same tile's unsynced one: what the sync costs.

The cases include the short reductions of 2026-11-26's failure (a 1x1 at stride 1, which the
router leaves to the plain GEMMs, forced through the kernel directly), to test its diagnosis: the
next step's ldmatrix rewriting the A registers of wgmmas still in flight (triton#9433;
configs.WGMMA_RS_HAZARD: before Triton 3.9 the tap-TMA pruners make such tiles wait for each
step's wgmmas, " sync"). With the rule off the note says which configs it would sync: if the
diagnosis is right, the failures are all among them; with the rule on the same case runs them
synced, and they should be right. The H100 check at 283a32b found exactly that, and tap_tma
takes short reductions again (fprop.TAP_TMA_MIN_STEPS); a case the router now runs follows.

Each config is a long-format row of the sweep's CSV (``--csv``, default OUTDIR/race_check.csv;
the GPU check passes its results.csv): kernel ``race_check``, the layer's shape fields, status
``ok``, ``differs``, ``wrong``, ``error`` or ``skipped``, the kernel time as median_ms, the case and
config in the note. OUTDIR/race_check.md is rendered from those rows as read back from the CSV
(``report.render_race``, the same section the report puts in summary.md). The report shows one
run: rows meant for a sweep's report need that sweep's ``--run-id``. Exits 1 if a config, run as the runtime would run it
(the rule on; a case the router leaves to another family only where this Triton syncs it), gave different bits or
a wrong result.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

# (name, what runs, ResNet-50 layer, whether the router can run it: it leaves an unpadded 1x1 at
# stride 1 to the plain GEMMs, but the kernel can be launched directly; whether the wgmma
# register-hazard rule is on (configs.WGMMA_RS_HAZARD: on Triton < 3.9 it syncs the tiles that
# need it; off, the tiles run as they did on 2026-11-26); optionally a batch of its own)
CASES = [  # most telling first: a budget may stop the list
    # tap_tma on a stream-K grid, new after d080a04: programs wait for each other's partial tiles
    ("tap_tma_streamk fwd, 3x3 C512 7x7 (stream-K grid)", "fprop_tap_tma_streamk", "layer4.1.conv2", True, True),
    # what the sync costs where one program or two share an SM: ResNet-50's 3x3s on 14x14 and 7x7
    # outputs run 8-wide tiles, all synced on Triton 3.6, at 0.70-0.84x cuDNN (e2a622a); the C64
    # 56x56 pair below, with several programs per SM to hide each step's wait, paid 0-6 %
    ("tap_tma fwd, 3x3 C512 7x7 (72 steps)", "fprop_tap_tma", "layer4.1.conv2", True, True),
    ("tap_tma fwd, 3x3 C512 7x7 (72 steps), rule off", "fprop_tap_tma", "layer4.1.conv2", True, False),
    ("tap_tma fwd, 3x3 C256 14x14 (36 steps)", "fprop_tap_tma", "layer3.1.conv2", True, True),
    ("tap_tma fwd, 3x3 C256 14x14 (36 steps), rule off", "fprop_tap_tma", "layer3.1.conv2", True, False),
    # short reductions go to tap_tma again since the 1x1 C256 14x14 cases below confirmed the
    # cause (283a32b): ResNet's downsampling 1x1s, where the router now times it (84cd0fb saw the
    # 8-step one go wrong, before the rule)
    ("tap_tma fwd, 1x1/2 C256 56x56 (4 steps)", "fprop_tap_tma", "layer2.0.downsample.0", True, True),
    ("tap_tma fwd, 1x1/2 C512 28x28 (8 steps)", "fprop_tap_tma", "layer3.0.downsample.0", True, True),
    # wgrad's tap-TMA kernel reads dy's box through registers too: 8-wide steps of BLOCK_K 32 and
    # 64 had the same hazard on Triton 3.6; never run at a layer size on a GPU (cut off at 283a32b)
    ("tap_tma wgrad, 3x3 C64 56x56", "wgrad_tap_tma", "layer1.0.conv2", True, True),
    ("tap_tma fwd, 3x3 C64 56x56 (9 steps)", "fprop_tap_tma", "layer1.0.conv2", True, True),
    # the same with the rule off: what the synced tiles above cost (their times side by side)
    ("tap_tma fwd, 3x3 C64 56x56 (9 steps), rule off", "fprop_tap_tma", "layer1.0.conv2", True, False),
    # the diagnosis of 84cd0fb's failure, confirmed at 283a32b: wrong tiles with the rule off, none with it on
    ("tap_tma fwd, 1x1 C256 14x14 (4 steps), rule off", "fprop_tap_tma", "layer3.0.conv3", False, False),
    ("tap_tma fwd, 1x1 C256 14x14 (4 steps), rule on", "fprop_tap_tma", "layer3.0.conv3", False, True),
    # the same at N=8: 128 programs of 128x128 tiles, one per SM at most; the probes of
    # 2026-11-26 saw no failure there (N=8, padding 1), and failures from N=16 (two per SM)
    ("tap_tma fwd, 1x1 C256 14x14 (4 steps), N=8, rule off", "fprop_tap_tma", "layer3.0.conv3", False, False, 8),
    ("gemm1x1_tma fwd, C256 14x14 (4 steps)", "gemm1x1_tma", "layer3.0.conv3", True, True),
    ("implicit_tma fwd, 1x1/2 C512 (8 steps)", "fprop_tma", "layer3.0.downsample.0", True, True),
    ("tap_tma_splitk fwd, 3x3 C512 7x7 (72 steps in chunks)", "fprop_tap_tma_splitk", "layer4.1.conv2", True, True),
    ("gemm1x1_tma fwd, C64 56x56 (1 step)", "gemm1x1_tma", "layer1.0.conv3", True, True),
    ("tap_tma wgrad, 3x3 C64 56x56, rule off", "wgrad_tap_tma", "layer1.0.conv2", True, False),
]


def _args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="perf/out/race_check")
    p.add_argument("--csv", default="", help="append the rows to this CSV (default: OUT/race_check.csv)")
    p.add_argument("--run-id", default=None, help="the rows' run id (default: $TRITONCONV_RUN_ID or a new one)")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--time-budget", type=float, default=0, help="seconds; start no case after it")
    p.add_argument("--cases", default="", help="comma-separated indices into CASES, or name prefixes, each the "
                   "first case whose name starts with it, e.g. gemm1x1_tma (default: all)")
    return p.parse_args(argv)


def _case(item: str) -> tuple:
    """The case an item of --cases names: an index into CASES, or the first case whose name starts with it."""
    if item.isdigit():
        return CASES[int(item)]
    found = next((case for case in CASES if case[0].startswith(item)), None)
    if found is None:
        raise SystemExit(f"race_check: no case is {item!r}; cases: " + "; ".join(c[0] for c in CASES))
    return found


def main(argv=None) -> int:
    args = _args(argv)
    os.environ["TRITONCONV_TUNE"] = "0"  # every prune hook then keeps one config: configs.tuned, pinned below
    os.environ.setdefault("TRITONCONV_PLANS", "0")
    import torch
    import torch.nn.functional as F
    import triton

    from tritonconv import configs, plans
    from tritonconv.bench import precompile, presets, report, sweep
    from tritonconv.kernels import _common, fprop, gemm1x1, wgrad

    device = "cuda" if torch.cuda.is_available() and not _common.INTERPRETER else "cpu"
    if device == "cpu" and not _common.INTERPRETER:
        print("race_check: needs a CUDA device (or TRITON_INTERPRET=1, to check this script)", file=sys.stderr)
        return 2
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    _common.set_poison_outputs(True)
    layers = {layer.name: layer for layer in presets.get_preset("resnet50").layers}
    picked = [_case(item) for item in args.cases.split(",") if item] if args.cases else CASES
    autotuners = [fprop._fprop_tap_tma_tuned, fprop._fprop_tap_tma_streamk_tuned, fprop._fprop_tma_tuned,
                  gemm1x1._gemm1x1_tma_tuned, wgrad._wgrad_tap_tma_tuned]
    launchers = {
        "fprop_tap_tma": fprop.conv2d_fprop_tap_tma,
        "fprop_tap_tma_splitk": fprop.conv2d_fprop_tap_tma_splitk,
        "fprop_tap_tma_streamk": fprop.conv2d_fprop_tap_tma_streamk,
        "fprop_tma": fprop.conv2d_fprop_tma,
        "gemm1x1_tma": gemm1x1.conv2d_fprop_1x1_tma,
        # the weight gradient for the case's dy (below), in place of the forward
        "wgrad_tap_tma": lambda x, w, b, pb: wgrad.conv2d_wgrad_tap_tma(state["dy"], x, pb),
    }
    # the tap-TMA kernels' pruners (configs.SpatialTilePruneHook): their pixel span, for the hazard
    # rule, and the forms they launch a tile in; the other kernels have no such rule
    tap_prune = fprop._fprop_tap_tma_tuned.early_config_prune
    hooks = {"fprop_tap_tma": tap_prune, "fprop_tap_tma_splitk": tap_prune,
             "fprop_tap_tma_streamk": fprop._fprop_tap_tma_streamk_tuned.early_config_prune,
             "wgrad_tap_tma": wgrad._wgrad_tap_tma_tuned.early_config_prune}
    state = {"dy": None, "hook": None}
    cap = 90 if device == "cuda" else None
    real_tuned, rs_rule = configs.tuned, configs.WGMMA_RS_HAZARD
    pinned = {"name": None, "seen": None}
    flagged = set()  # configs the register-hazard rule syncs on this Triton (listed with it off)

    def launched_name(c, hazard=None):
        """The config's name as the tap-TMA pruner runs it after this hook: " sync" added where the
        register-hazard rule (``hazard``: this Triton's, or forced) makes its steps wait. The cases'
        channel counts are multiples of 64, so no one-row tile selects A (K_ALIGN) here."""
        hook = state["hook"]
        hit = hook is not None and configs.register_a_hazard(c, hook.span, 2, cap, hazard=hazard)
        return configs.config_name(configs.synced(c) if hit else c)

    def forms_of(c):
        """The names the pruner runs a kept config under: its forms (configs.SpatialTilePruneHook.launched:
        as it is, or synced, and beside a synced tile transposed where the kernel takes it). The pruner
        then calls this hook again on those forms, each of which runs as it is named. The cases'
        channel counts are multiples of 64 (K_ALIGN)."""
        hook = state["hook"]
        if hook is None:
            return [configs.config_name(c)]
        args = {hook.k_align_arg: 64} if hook.k_align_arg else {}
        return [configs.config_name(form) for form in hook.launched(c, 2, cap, args)]

    def tuned(kept):
        if pinned["seen"] is not None:  # listing: what the pruner keeps for this problem
            pinned["seen"].extend(name for c in kept for name in forms_of(c))
            flagged.update(configs.config_name(c) for c in kept if launched_name(c, rs_rule) != configs.config_name(c))
        return [c for c in kept if pinned["name"] in forms_of(c)] or real_tuned(kept)

    configs.tuned = tuned
    info = sweep.run_info(args.run_id)
    sink = sweep.CsvSink(Path(args.csv) if args.csv else out_dir / "race_check.csv")
    bad, start = [], time.perf_counter()

    def add_row(name, kernel, layer, pb, cfg, status, rel_err=None, same=None, ms=None, remark="", counted=False):
        """One config's row, appended to the CSV at once (a run cut off by its caller's timeout keeps
        its rows), and the markdown rendered again from all rows so far."""
        row = {**info.base_row(), "kernel": report.RACE_KERNEL, "provider": "tritonconv",
               "mode": "grad_weight" if kernel.startswith("wgrad") else "forward", "preset": "resnet50",
               "layer": layer, "N": pb.N, "C": pb.C, "H": pb.H, "W": pb.W, "K": pb.K, "R": pb.R, "S": pb.S,
               "P": pb.P, "Q": pb.Q, "stride_h": pb.stride_h, "stride_w": pb.stride_w, "pad_h": pb.pad_h,
               "pad_w": pb.pad_w, "dil_h": pb.dil_h, "dil_w": pb.dil_w, "groups": pb.groups, "dtype": "fp16",
               "layout": "channels_last", "status": status, "median_ms": ms, "rel_err": rel_err,
               "timer": "configs.kernel_time (CUDA graph of 20 calls, median of 10 replays)" if device == "cuda"
               else f"none ({sweep.INTERPRETER_LABEL})",
               "note": report.race_note(name, cfg, same, counted, remark), "timestamp": sweep.utc_timestamp()}
        sink.write(row)
        (out_dir / "race_check.md").write_text("\n".join(report.render_race(written())) + "\n")

    def written():
        """This run's rows as the CSV holds them (what the report will render)."""
        return [r for r in report.load_rows(sink.path)
                if r.get("run_id") == info.run_id and r.get("kernel") == report.RACE_KERNEL]

    def out_of_time() -> bool:
        return bool(args.time_budget) and time.perf_counter() - start > args.time_budget

    try:
        for name, kernel, layer_name, routable, rule, *batch in picked:
            layer = layers[layer_name]
            pb = layer.problem(batch[0] if batch else args.batch)
            if out_of_time():
                add_row(name, kernel, layer_name, pb, "-", "skipped: time budget")
                continue
            if kernel.endswith("streamk") and not configs.STREAM_K:  # the check's smoke found it hang or fail
                add_row(name, kernel, layer_name, pb, "-", "skipped: stream-K off (TRITONCONV_STREAM_K=0)")
                continue
            stride, padding, dilation, groups = layer.conv_args()
            gen = torch.Generator(device=device).manual_seed(7)
            x = torch.randn(pb.input_shape, generator=gen, device=device).half().contiguous(
                memory_format=torch.channels_last)
            w = (torch.randn(pb.weight_shape, generator=gen, device=device) / (pb.C_per_group * pb.R * pb.S) ** 0.5
                 ).half().contiguous(memory_format=torch.channels_last)
            ref = F.conv2d(x.double(), w.double(), None, stride, padding, dilation, groups)
            if kernel.startswith("wgrad"):
                state["dy"] = torch.randn(ref.shape, generator=gen, device=device).half().contiguous(
                    memory_format=torch.channels_last)
                ref = torch.nn.grad.conv2d_weight(x.double(), pb.weight_shape, state["dy"].double(), stride, padding,
                                                  dilation, groups)
            state["hook"] = hooks.get(kernel)
            launch = launchers[kernel]
            configs.WGMMA_RS_HAZARD = rs_rule if rule else False
            pinned["seen"], pinned["name"] = [], None
            flagged.clear()
            for t in autotuners:
                t.cache.clear()
            launch(x, w, None, pb)  # lists the configs kept (and runs the smallest)
            # a kernel with one config (the interpreter's) is never pruned: it runs that one
            names, pinned["seen"] = list(dict.fromkeys(pinned["seen"])) or ["(its only config)"], None
            for cfg in names:
                if out_of_time():
                    add_row(name, kernel, layer_name, pb, cfg, "skipped: time budget")
                    continue
                pinned["name"] = cfg
                for t in autotuners:
                    t.cache.clear()
                try:
                    outs = [launch(x, w, None, pb) for _ in range(3)]
                    if device == "cuda":
                        torch.cuda.synchronize()
                except Exception as err:  # a config that fails to build or launch is a row
                    add_row(name, kernel, layer_name, pb, cfg, f"error: {precompile.error_text(err)}")
                    continue
                # the worst of the three, a NaN worst of all
                err = max((((o.double() - ref).norm() / ref.norm()).item() for o in outs),
                          key=lambda e: (math.isnan(e), e))
                same = all(plans.same_bits(outs[0], o) for o in outs[1:])
                remarks = [] if routable else ["left to another family by the router"]
                if cfg in flagged and not rule:
                    remarks.append(f"run as is here, synced on Triton {triton.__version__} "
                                   "(register hazard, triton#9433)")
                ms = None
                if device == "cuda":  # its kernels' time, without the poisoning fill of each output
                    _common.set_poison_outputs(False)
                    try:
                        ms = configs.kernel_time(lambda: launch(x, w, None, pb))
                    except Exception as timing_err:
                        remarks.append(f"timing failed: {type(timing_err).__name__}")
                    finally:
                        _common.set_poison_outputs(True)
                status = "ok" if same and err <= 1e-2 else (
                    "differs: three calls gave different bits" if not same else "wrong: rel_err above 1e-2")
                # counted in the verdict where the runtime would run this: the rule on, and the router
                # taking the case or this Triton syncing it (on 3.9+ such a case's "rule on" is its control)
                counted = bool(rule and (routable or rs_rule))
                if counted and status != "ok":
                    bad.append((name, cfg))
                add_row(name, kernel, layer_name, pb, cfg, status, err, same, ms, "; ".join(remarks), counted)
                print(f"{name} | {cfg} | {err:.1e} | same bits: {same}", flush=True)
    finally:
        configs.tuned, configs.WGMMA_RS_HAZARD = real_tuned, rs_rule
    print("\n".join(report.render_race(written())))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
