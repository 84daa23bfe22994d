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
  launches, outputs not poisoned), which finds the operands in L2; and ``flushed ms``, its time
  with L2 flushed before each call (``bench.timing.device_bench``, as the sweeps time). Where a
  case runs with the rule off and on, a second table sets each synced tile's time beside the same
  tile's unsynced one: what the sync costs. A case that offers the rotated forms too
  (configs.ROTATED_FORMS) gets each form's times beside its rotated twin's in a third. A case
  with ``stages`` times its tiles at deeper pipelines too (num_stages no config offers), each a
  row of its own named by its stages.

Each case ends with a row of cuDNN's times for the same convolution (``cudnn.benchmark`` on; its
result checked against float64 too, its bits not compared): the baseline under the same two timers.

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
import copy
import math
import os
import sys
import time
from pathlib import Path
from typing import NamedTuple, Optional, Tuple


class Case(NamedTuple):
    name: str
    kernel: str  # what runs: a key of main()'s launchers
    layer: str  # the ResNet-50 layer
    # whether the router can run it: it leaves an unpadded 1x1 at stride 1 to the plain GEMMs, but
    # the kernel can be launched directly
    routable: bool = True
    # whether the wgmma register-hazard rule is on (configs.WGMMA_RS_HAZARD: on Triton < 3.9 it
    # syncs the tiles that need it; off, the tiles run as they did on 2026-11-26)
    rule: bool = True
    batch: Optional[int] = None  # a batch of its own (default --batch)
    rotate: bool = False  # the rotated forms too (configs.ROTATED_FORMS), each after its twin
    tiles: Tuple[str, ...] = ()  # only the forms of these tiles (names start with one), () all
    # these tiles at these pipeline depths too (num_stages), each beside its own: deeper than any
    # config offers, timed here only
    stages: Tuple[int, ...] = ()


# layer4.1.conv2's best tiles on the H200 of 2026-11-28 (forward and dgrad), for the cases that
# time each tile twice over
LAYER4_TILES = ("64x128x64 w8 s4", "128x128x64 w8 s3", "128x64x64 w8 s4", "64x64x64 w4 s4")

CASES = [Case(*case) for case in [  # most telling first: a budget may stop the list
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
]] + [
    # the sweeps' tap_tma forward of layer4.1.conv2 took 0.028 ms with L2 flushed, its tile's kernel
    # time 0.0216 ms, cuDNN 0.022 flushed (H200, 2026-11-28): do the programs wait on cold weights
    # fetched in lockstep? Each tile as the pruner launches it and rotated, under both timers
    Case("tap_tma fwd, 3x3 C512 7x7 (72 steps), rotated", "fprop_tap_tma", "layer4.1.conv2", rotate=True,
         tiles=LAYER4_TILES),
    # its dgrad, a stride-1 forward of dy, took 0.040 ms flushed against cuDNN's 0.021: the
    # flipped weight read in place (the runtime's way) against the forward's kernel on a flipped
    # copy of w (KRSC), tile for tile
    Case("tap_tma dgrad, 3x3 C512 7x7 (w flipped in place), rotated", "dgrad_tap_tma", "layer4.1.conv2",
         rotate=True, tiles=LAYER4_TILES),
    Case("tap_tma dgrad, 3x3 C512 7x7 (w flipped copy)", "dgrad_tap_tma_copy", "layer4.1.conv2",
         tiles=LAYER4_TILES),
    # the lowest forward layer on the H200 (0.69x): layer4.0.conv2, the same GEMM at stride 2 (x's
    # phase view, 6.4 MB of it cold), which the router gave to split-K (1.02x ahead of tap_tma)
    Case("tap_tma fwd, 3x3/2 C512 14x14 (72 steps), rotated", "fprop_tap_tma", "layer4.0.conv2", rotate=True,
         tiles=LAYER4_TILES),
    Case("tap_tma_splitk fwd, 3x3/2 C512 14x14 (72 steps in chunks)", "fprop_tap_tma_splitk", "layer4.0.conv2",
         tiles=LAYER4_TILES),
    # the 1x1 GEMM's long reduction over few M-tiles, 0.77x cuDNN on the H200: rotated the same way
    Case("gemm1x1_tma fwd, C2048 7x7 (32 steps), rotated", "gemm1x1_tma", "layer4.1.conv1", rotate=True,
         tiles=("64x64x64 w4 s4", "128x128x64 w8 s3", "64x128x64 w8 s4")),
    # the other answer to cold weights: a deeper pipeline, each step's loads issued further ahead
    # (72 steps of about 0.3 us against a fetch from HBM; 3 or 4 stages offered). Its forward and
    # its dgrad, each tile at 4, 5 and 6 stages (all build for sm_90, 128x128x64 at 6 in 192 KiB of
    # shared memory; a tile that failed to build or launch would be an error row)
    Case("tap_tma fwd, 3x3 C512 7x7 (72 steps), deeper pipelines", "fprop_tap_tma", "layer4.1.conv2",
         tiles=LAYER4_TILES, stages=(4, 5, 6)),
    Case("tap_tma dgrad, 3x3 C512 7x7 (w flipped in place), deeper pipelines", "dgrad_tap_tma", "layer4.1.conv2",
         tiles=LAYER4_TILES, stages=(4, 5, 6)),
]


class Pinner:
    """``configs.tuned`` while the race check runs, which every pruner calls with the configs it
    keeps: with ``seen`` a list, it lists there the forms the case's pruner (``hook``) launches the
    kept tiles in (those of ``tiles`` only, where given) and lets the real ``tuned`` choose; with
    ``name`` set, it keeps that form alone; with ``every``, every form of ``tiles`` (to precompile
    them all at once). ``flagged``: the listed configs the register-hazard rule syncs on this
    Triton (``rs_rule``), for the cases that run with the rule off."""

    def __init__(self, configs, real_tuned, capability: Optional[int], rs_rule: bool):
        self.configs, self.real_tuned, self.capability, self.rs_rule = configs, real_tuned, capability, rs_rule
        self.hook = None  # the case's configs.SpatialTilePruneHook (None: a kernel without forms)
        self.tiles: Tuple[str, ...] = ()
        self.stages: Tuple[int, ...] = ()
        self.staged: set = set()  # the names of the deeper tiles made so far, and of their forms
        self.name: Optional[str] = None
        self.seen: Optional[list] = None
        self.every = False
        self.flagged: set = set()

    def launched_name(self, c, hazard=None) -> str:
        """The config's name as the tap-TMA pruner runs it after this hook: " sync" added where the
        register-hazard rule (``hazard``: this Triton's, or forced) makes its steps wait. The cases'
        channel counts are multiples of 64, so no one-row tile selects A (K_ALIGN) here."""
        cf, span = self.configs, getattr(self.hook, "span", None)
        hit = span is not None and cf.register_a_hazard(c, span, 2, self.capability, hazard=hazard)
        return cf.config_name(cf.synced(c) if hit else c)

    def forms_of(self, c) -> list:
        """The names the pruner runs a kept config under: its forms (configs.SpatialTilePruneHook.launched:
        as it is, or synced, and beside a synced tile transposed where the kernel takes it; with
        configs.ROTATED_FORMS, each rotated too). The pruner then calls this hook again on those
        forms. The cases' channel counts are multiples of 64 (K_ALIGN)."""
        cf, hook = self.configs, self.hook
        if hook is None:
            return [cf.config_name(c)]
        args = {hook.k_align_arg: 64} if hook.k_align_arg else {}
        return [cf.config_name(form) for form in hook.launched(c, 2, self.capability, args)]

    def wanted(self, name: str) -> bool:
        return not self.tiles or name.startswith(self.tiles) or name in self.staged

    def deeper(self, kept) -> list:
        """The wanted tiles of ``kept`` (tiles, not their forms) at each depth of ``stages`` they do
        not have; their names and their forms' go into ``staged``."""
        cf, out = self.configs, []
        for c in kept:
            if any(c.kwargs.get(flag) for flag in ("SYNC_MMA", "TRANSPOSED", "ROTATE")) \
                    or not self.wanted(cf.config_name(c)):
                continue
            for stages in self.stages:
                if stages != c.num_stages:
                    deep = copy.copy(c)
                    deep.kwargs, deep.num_stages = dict(c.kwargs), stages
                    self.staged.update([cf.config_name(deep), *self.forms_of(deep)])
                    out.append(deep)
        return out

    def __call__(self, kept):
        cf = self.configs
        # a deeper tile is made again from its own plain form (the pruner's second call, where the
        # tile runs as it is): once
        kept, names = list(kept), {cf.config_name(c) for c in kept}
        for deep in self.deeper(kept):
            if cf.config_name(deep) not in names:
                names.add(cf.config_name(deep))
                kept.append(deep)
        if self.every:  # the tiles of ``tiles``, then (called again on those) their forms
            return [c for c in kept if any(self.wanted(name) for name in self.forms_of(c))] or kept[:1]
        if self.seen is not None:  # listing: what the pruner keeps for this problem
            self.seen.extend(name for c in kept for name in self.forms_of(c) if self.wanted(name))
            self.flagged.update(cf.config_name(c) for c in kept
                                if self.launched_name(c, self.rs_rule) != cf.config_name(c))
            kept = [c for c in kept if cf.config_name(c) not in self.staged]  # the real tuned: offered ones
        # the pinned form itself where the pruner offers its forms; before, the tile it is a form of
        # (a form's own forms may name another: its rotated twin)
        exact = [c for c in kept if cf.config_name(c) == self.name]
        return exact or [c for c in kept if self.name in self.forms_of(c)] or self.real_tuned(kept)


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
    from tritonconv.bench import precompile, presets, report, sweep, timing
    from tritonconv.kernels import _common, dgrad, fprop, gemm1x1, wgrad

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
        # the gradients for the case's dy (below), in place of the forward: the weight's, and the
        # input's, a stride-1 dgrad as the runtime runs it on tap_tma (w flipped in place), or as
        # the forward's kernel on a flipped copy of w (the forward conv of dy, dgrad._phases)
        "wgrad_tap_tma": lambda x, w, b, pb: wgrad.conv2d_wgrad_tap_tma(state["dy"], x, pb),
        "dgrad_tap_tma": lambda x, w, b, pb: dgrad.conv2d_dgrad_tap_tma(state["dy"], w, pb,
                                                                         memory_format=torch.channels_last),
        "dgrad_tap_tma_copy": lambda x, w, b, pb: fprop.conv2d_fprop_tap_tma(state["dy"], state["w_flipped"], None,
                                                                              dgrad._phases(pb)[0].forward),
    }
    # the tap-TMA kernels' pruners (configs.SpatialTilePruneHook): their pixel span, for the hazard
    # rule, and the forms they launch a tile in; gemm1x1_tma's (configs.RotatablePruneHook) has
    # rotated forms and no span; the other kernels have no forms
    tap_prune = fprop._fprop_tap_tma_tuned.early_config_prune
    hooks = {"fprop_tap_tma": tap_prune, "fprop_tap_tma_splitk": tap_prune,
             "fprop_tap_tma_streamk": fprop._fprop_tap_tma_streamk_tuned.early_config_prune,
             "wgrad_tap_tma": wgrad._wgrad_tap_tma_tuned.early_config_prune,
             "dgrad_tap_tma": tap_prune, "dgrad_tap_tma_copy": tap_prune,
             "gemm1x1_tma": gemm1x1._gemm1x1_tma_tuned.early_config_prune}  # its rotated forms only
    state = {"dy": None, "w_flipped": None}
    real_tuned, rs_rule, rotate_rule = configs.tuned, configs.WGMMA_RS_HAZARD, configs.ROTATED_FORMS
    pinned = Pinner(configs, real_tuned, 90 if device == "cuda" else None, rs_rule)
    configs.tuned = pinned
    info = sweep.run_info(args.run_id)
    sink = sweep.CsvSink(Path(args.csv) if args.csv else out_dir / "race_check.csv")
    bad, start = [], time.perf_counter()

    def add_row(name, kernel, layer, pb, cfg, status, rel_err=None, same=None, ms=None, remark="", counted=False,
                flushed=None):
        """One config's row, appended to the CSV at once (a run cut off by its caller's timeout keeps
        its rows), and the markdown rendered again from all rows so far."""
        mode = "grad_weight" if kernel.startswith("wgrad") else "grad_input" if kernel.startswith("dgrad") else "forward"
        row = {**info.base_row(), "kernel": report.RACE_KERNEL,
               "provider": "cudnn" if cfg == report.RACE_BASELINE else "tritonconv", "mode": mode, "preset": "resnet50",
               "layer": layer, "N": pb.N, "C": pb.C, "H": pb.H, "W": pb.W, "K": pb.K, "R": pb.R, "S": pb.S,
               "P": pb.P, "Q": pb.Q, "stride_h": pb.stride_h, "stride_w": pb.stride_w, "pad_h": pb.pad_h,
               "pad_w": pb.pad_w, "dil_h": pb.dil_h, "dil_w": pb.dil_w, "groups": pb.groups, "dtype": "fp16",
               "layout": "channels_last", "status": status, "median_ms": ms, "rel_err": rel_err,
               "timer": "configs.kernel_time (CUDA graph of 20 calls, median of 10 replays)" if device == "cuda"
               else f"none ({sweep.INTERPRETER_LABEL})",
               "note": report.race_note(name, cfg, same, counted, remark, flushed), "timestamp": sweep.utc_timestamp()}
        sink.write(row)
        (out_dir / "race_check.md").write_text("\n".join(report.render_race(written())) + "\n")

    def written():
        """This run's rows as the CSV holds them (what the report will render)."""
        return [r for r in report.load_rows(sink.path)
                if r.get("run_id") == info.run_id and r.get("kernel") == report.RACE_KERNEL]

    def out_of_time() -> bool:
        return bool(args.time_budget) and time.perf_counter() - start > args.time_budget

    def timed(call, remarks):
        """(kernel time, time with L2 flushed) of ``call`` on a GPU, outputs not poisoned; (None, None)
        elsewhere, or where the timing fails (said in ``remarks``)."""
        if device != "cuda":
            return None, None
        _common.set_poison_outputs(False)
        try:
            return configs.kernel_time(call), timing.device_bench(call, warmup_ms=10, rep_ms=50).median_ms
        except Exception as timing_err:
            remarks.append(f"timing failed: {type(timing_err).__name__}")
            return None, None
        finally:
            _common.set_poison_outputs(True)

    def worst_error(outs, ref):
        """The worst rel_err of ``outs`` against float64's ``ref``, a NaN worst of all."""
        return max((((o.double() - ref).norm() / ref.norm()).item() for o in outs), key=lambda e: (math.isnan(e), e))

    try:
        for name, kernel, layer_name, routable, rule, batch, rotate, tiles, stages in picked:
            layer = layers[layer_name]
            pb = layer.problem(batch or args.batch)
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
            # cuDNN's run of the same gradient or forward (aten's on the CPU), for the baseline row
            cudnn = lambda: F.conv2d(x, w, None, stride, padding, dilation, groups)  # noqa: E731
            if kernel.startswith(("wgrad", "dgrad")):
                dy = state["dy"] = torch.randn(ref.shape, generator=gen, device=device).half().contiguous(
                    memory_format=torch.channels_last)
                wanted_grad = [kernel.startswith("dgrad"), kernel.startswith("wgrad"), False]
                grads = torch.ops.aten.convolution_backward
                ref = grads(dy.double(), x.double(), w.double(), None, stride, padding, dilation, False, [0, 0],
                            groups, wanted_grad)[wanted_grad.index(True)]
                cudnn = lambda: grads(dy, x, w, None, stride, padding, dilation, False, [0, 0],  # noqa: E731
                                      groups, wanted_grad)[wanted_grad.index(True)]
                # w's taps flipped and its two channel axes swapped, KRSC: the forward weight of dy's conv
                state["w_flipped"] = w.flip(2, 3).transpose(0, 1).contiguous(memory_format=torch.channels_last)
            pinned.hook, pinned.tiles, pinned.stages = hooks.get(kernel), tiles, stages
            pinned.staged.clear()
            launch = launchers[kernel]
            configs.WGMMA_RS_HAZARD = rs_rule if rule else False
            configs.ROTATED_FORMS = rotate
            pinned.seen, pinned.name = [], None
            pinned.flagged.clear()
            for t in autotuners:
                t.cache.clear()
            launch(x, w, None, pb)  # lists the configs kept (and runs the smallest)
            # a kernel with one config (the interpreter's) is never pruned: it runs that one
            names, pinned.seen = list(dict.fromkeys(pinned.seen)) or ["(its only config)"], None
            if not rule:  # the transposed forms have no hazard to switch off: the rule-on case times them
                names = [n for n in names if " transposed" not in n] or names
            # every form built at once, on all cores (pinned one by one, each would compile alone)
            for t in autotuners:
                t.cache.clear()
            pinned.every = True
            try:
                built = precompile.precompile([lambda: launch(x, w, None, pb)])
            finally:
                pinned.every = False
            print(f"{name}: precompiled {built.compiles} configs in {built.seconds:.1f} s ({built.mode})", flush=True)
            for cfg in names:
                if out_of_time():
                    add_row(name, kernel, layer_name, pb, cfg, "skipped: time budget")
                    continue
                pinned.name = cfg
                for t in autotuners:
                    t.cache.clear()
                try:
                    outs = [launch(x, w, None, pb) for _ in range(3)]
                    if device == "cuda":
                        torch.cuda.synchronize()
                except Exception as err:  # a config that fails to build or launch is a row
                    add_row(name, kernel, layer_name, pb, cfg, f"error: {precompile.error_text(err)}")
                    continue
                err = worst_error(outs, ref)
                same = all(plans.same_bits(outs[0], o) for o in outs[1:])
                remarks = [] if routable else ["left to another family by the router"]
                if cfg in pinned.flagged and not rule:
                    remarks.append(f"run as is here, synced on Triton {triton.__version__} "
                                   "(register hazard, triton#9433)")
                ms, flushed = timed(lambda: launch(x, w, None, pb), remarks)
                status = "ok" if same and err <= 1e-2 else (
                    "differs: three calls gave different bits" if not same else "wrong: rel_err above 1e-2")
                # counted in the verdict where the runtime would run this: the rule on, and the router
                # taking the case or this Triton syncing it (on 3.9+ such a case's "rule on" is its control)
                counted = bool(rule and (routable or rs_rule))
                if counted and status != "ok":
                    bad.append((name, cfg))
                add_row(name, kernel, layer_name, pb, cfg, status, err, same, ms, "; ".join(remarks), counted,
                        flushed)
                print(f"{name} | {cfg} | {err:.1e} | same bits: {same}", flush=True)
            if out_of_time():
                continue
            # the baseline: cuDNN under the same timers (aten on the CPU, untimed)
            torch.backends.cudnn.benchmark = True
            remarks = [] if device == "cuda" else ["aten on the CPU, not cuDNN"]
            try:
                err = worst_error([cudnn()], ref)
                ms, flushed = timed(cudnn, remarks)
            except Exception as err_:
                add_row(name, kernel, layer_name, pb, report.RACE_BASELINE, f"error: {precompile.error_text(err_)}")
                continue
            add_row(name, kernel, layer_name, pb, report.RACE_BASELINE, "ok" if err <= 1e-2 else
                    "wrong: rel_err above 1e-2", err, None, ms, "; ".join(remarks), False, flushed)
    finally:
        configs.tuned, configs.WGMMA_RS_HAZARD, configs.ROTATED_FORMS = real_tuned, rs_rule, rotate_rule
    print("\n".join(report.render_race(written())))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
