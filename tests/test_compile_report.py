"""compile_report: ahead-of-time compilation of kernel configs, no GPU needed.

The suite runs with TRITON_INTERPRET=1 on CPU machines (conftest.py), and under
it @triton.jit kernels are interpreted functions that cannot be compiled, so the
report itself runs in a subprocess with TRITON_INTERPRET removed.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import triton

from tritonconv import compile_report as cr
from tritonconv import configs as tc

REPO = Path(__file__).resolve().parents[1]

# A mid-size tile that must build cleanly everywhere: no spills, tensor cores
# (wgmma for fp16 on sm_90, TF32 mma.sync for fp32 on sm_80).
CLEAN_CONFIG = "64x64x64 w4 s4"

RECORD_KEYS = {
    "kernel", "config", "arch", "dtype", "registers", "spills", "spill_stores", "spill_loads",
    "shared_bytes", "shared_limit", "tensor_core", "tma_loads", "mma_async", "mma_a", "launchable", "ok", "status", "reason",
    "error",
}


def run_report(*args: str, timeout: float = 150):
    """(exit status, records) of ``python -m tritonconv.compile_report --json ARGS``."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    cmd = [sys.executable, "-m", "tritonconv.compile_report", "--json", "--no-progress", "--jobs", "2", *args]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    try:
        records = json.loads(proc.stdout)
    except json.JSONDecodeError:
        pytest.fail(f"no JSON on stdout (exit {proc.returncode}); stderr:\n{proc.stderr[-4000:]}")
    for r in records:
        if r.get("error") and cr.NO_PTXAS in r["error"]:
            pytest.skip(f"no ptxas that accepts Triton's PTX for {r['arch']}: {r['error'][:300]}")
        if r.get("error") and "compatible backends" in r["error"]:
            pytest.skip(f"this Triton build has no CUDA backend: {r['error'][:300]}")
    return proc.returncode, records


@pytest.fixture(scope="module")
def clean_report():
    return run_report("--family", "fprop", "--arch", "sm_90,sm_80", "--dtype", "fp16,fp32", "--only", CLEAN_CONFIG)


def _record(records, arch, dtype):
    found = [r for r in records if r["arch"] == arch and r["dtype"] == dtype and r["config"] == CLEAN_CONFIG]
    assert len(found) == 1, f"expected one {arch} {dtype} {CLEAN_CONFIG} record, got {found}"
    return found[0]


@pytest.mark.parametrize("arch, dtype, tensor_core", [("sm_90", "fp16", "wgmma"), ("sm_80", "fp32", "mma")])
def test_config_builds_without_spills_on_tensor_cores(clean_report, arch, dtype, tensor_core):
    _, records = clean_report
    r = _record(records, arch, dtype)
    assert r["error"] is None, r["error"]
    assert r["registers"] > 0
    assert r["spills"] == 0, f"{r['spills']} bytes spilled"
    assert 0 < r["shared_bytes"] <= r["shared_limit"]
    assert r["tensor_core"] == tensor_core, r["mma_instr"]
    assert r["ok"] and r["status"] == "ok", r["reason"]


def test_json_records_and_exit_status(clean_report):
    rc, records = clean_report
    assert len(records) == 4  # 2 archs x 2 dtypes x 1 config
    for r in records:
        missing = RECORD_KEYS - set(r)
        assert not missing, f"record lacks {sorted(missing)}"
        assert r["kernel"] == "fprop"
        assert re.fullmatch(r"\d+x\d+x\d+ w\d+ s\d+", r["config"])
        assert r["tensor_core"] in ("wgmma", "mma", "none")
        assert r["spills"] == r["spill_stores"] + r["spill_loads"]
    assert rc == (1 if cr.failures(records) else 0)


def test_pruned_config_is_reported_but_does_not_fail():
    # fp32 128x256x64 with 3 stages needs 288 KiB of shared memory: the runtime
    # pruner never launches it on sm_90, so the report marks it and exits 0.
    rc, records = run_report("--family", "fprop", "--arch", "sm_90", "--dtype", "fp32", "--only", "128x256x64 w8 s3")
    assert len(records) == 1
    r = records[0]
    assert r["status"] == "pruned" and not r["launchable"]
    assert r["shared_bytes"] > r["shared_limit"]
    assert "runtime pruner" in r["reason"]
    assert rc == 0


def test_representative_launch_is_specialized_like_triton():
    """Channels_last strides of 1 become constexprs and 16-divisible ints get hints,
    as JITFunction does at launch (this is what makes the loads vectorize)."""
    fam = next(f for f in cr.FAMILIES if f.name == "fprop")
    signature, constexprs, attrs = fam.signature(cr.DTYPES["bf16"], fam.configs_fn()[0])
    assert signature["x_ptr"] == "*bf16" and "x_ptr" in attrs
    for unit_stride in ("sxc", "swc", "syk"):
        assert signature[unit_stride] == "constexpr" and constexprs[unit_stride] == 1
    assert signature["sxh"] == "i32" and attrs["sxh"] == [["tt.divisibility", 16]]
    assert signature["H"] == "i32" and "H" not in attrs  # 56 is not a multiple of 16
    assert constexprs["BLOCK_M"] == 128 and constexprs["INPUT_PRECISION"] == "ieee"
    assert signature["alpha"] == "fp64"  # floats are never specialized; the epilogues annotate alpha fp64


def test_subset_brackets_the_config_space():
    configs = cr.gemm_tile_configs()
    subset = [cr.config_name(c) for c in cr.representative_configs(configs)]
    assert 2 <= len(subset) < len(configs)
    assert subset[0] == cr.config_name(configs[0])
    smallest = min(configs, key=lambda c: c.kwargs["BLOCK_M"] * c.kwargs["BLOCK_N"] * c.kwargs["BLOCK_K"])
    assert cr.config_name(smallest) in subset


def test_tma_descriptor_types_follow_the_config():
    """The TMA family's descriptors are typed by the block shapes its pre-hook sets."""
    fam = next(f for f in cr.FAMILIES if f.name == "gemm1x1_tma")
    cfg = next(c for c in fam.configs_fn() if cr.config_name(c) == "128x64x32 w8 s4")
    signature, _, attrs = fam.signature(cr.DTYPES["fp16"], cfg)
    assert signature["a_desc"] == "tensordesc<fp16[128, 32]>" and signature["b_desc"] == "tensordesc<fp16[64, 32]>"
    assert "a_desc" not in attrs
    assert fam.runs("fp16", "sm_90") and not fam.runs("fp16", "sm_80") and not fam.runs("fp64", "sm_90")


# One config of every family, fp16 on sm_90: a GEMM tile (smallc's at 8 warps, the small-C wgrad's
# wide one), a stream-K tile (gemm1x1_tma's and tap_tma's), a depthwise forward and dgrad tile, a
# depthwise wgrad tile (its own list), and a tile of the small-C rows kernel for 7x7 rows
# (BLOCK_K 32) and for 3x3 rows (16).
EVERY_FAMILY = ("64x64x64 w4 s4", "64x64x64 w8 s4", "64x128x32 w4 s4", "128x64x64 w8 s4 stream-k", "32x64 w4 s2",
                "16x64 w4 s2", "128x64x32 w4 s4", "256x64x16 w8 s3")


# the families that still decode each step's indices with divisions (see smallc.py; not its rows kernel)
DECODED_PER_STEP = {"smallc", "smallc_fused", "smallc_pad", "smallc_pad_fused", "smallc_wgrad"}


@pytest.fixture(scope="module")
def every_family_report():
    only = [arg for name in EVERY_FAMILY for arg in ("--only", name)]
    return run_report("--arch", "sm_90", "--dtype", "fp16", *only)


def test_every_family_builds(every_family_report):
    rc, records = every_family_report
    # every family once, the tap-TMA families and dgrad_phased twice ("64x64x64 w4 s4" also names one
    # of their one-row tiles),
    # gemm1x1_tma twice (a stream-K tile too), tap_tma's stream-K grid once, the depthwise forward
    # and dgrad twice (the tile as a patch too)
    # the 8-wide tiles with A in registers the pruner also launches transposed (on any Triton:
    # configs.TRANSPOSED_MIN_BLOCK_N), and so does the report: those records are checked apart,
    # neither their operands in registers nor their wgmmas serialized
    swapped = [r for r in records if r["config"].endswith(" transposed")]
    assert swapped
    for r in swapped:
        assert r["kernel"].startswith("fprop_tap_tma") or r["kernel"] == "dgrad_phased", r["kernel"]
        assert (r["mma_a"], r["mma_async"], r["a_hazards"], r["serialized"]) == ("smem", True, 0, False), r
    records = [r for r in records if r not in swapped]
    counts = {name: sum(r["kernel"] == name for r in records) for name in {r["kernel"] for r in records}}
    assert sorted(counts) == sorted(f.name for f in cr.FAMILIES)
    twice = {name for name in counts if name.startswith("fprop_tap_tma") and name != "fprop_tap_tma_streamk"}
    twice |= {"gemm1x1_tma", "dgrad_phased"} | {name for name in counts if name.startswith(("depthwise_fprop", "depthwise_dgrad"))}
    assert all(n == (2 if name in twice else 1) for name, n in counts.items()), counts
    for r in records:
        fam = cr._family(r["kernel"])
        assert r["error"] is None, (r["kernel"], r["error"])
        assert r["spills"] == 0, f"{r['kernel']}: {r['spills']} bytes spilled"
        assert r["tensor_core"] == ("wgmma" if fam.uses_dot else "none"), (r["kernel"], r["mma_instr"])
        if fam.uses_tma:
            # pipelined: the first stages' copies are issued before the loop, one per operand in it,
            # and a wgmma stays in flight while the next tile's is issued
            assert r["tma_loads"] > 2, (r["kernel"], r["tma_loads"])
            # (but for tiles that wait for each step's wgmmas: configs.WGMMA_RS_HAZARD, Triton < 3.9)
            assert r["mma_async"] == (not r["config"].endswith(" sync")), (r["kernel"], r["config"])
        else:
            assert r["tma_loads"] == 0, (r["kernel"], r["tma_loads"])
        assert r["status"] == "ok", (r["kernel"], r["reason"])
        if fam.uses_dot and cr.cuobjdump_tools():  # the SASS was read for writes to a wgmma's A registers in flight
            assert r["a_hazards"] == 0, r["kernel"]
            # the reduction loops carry their step's tap, channels or pixels on from the last
            # step's: no integer division in a step (they were a third of the tap-TMA step);
            # but the small-C kernels, whose registers that cost more than the divisions saved
            assert (r["step_instructions"] or 0) > 0, (r["kernel"], "no MMA loop found in the SASS")
            assert r["step_divisions"] == 0 or r["kernel"] in DECODED_PER_STEP, (r["kernel"], r["step_divisions"])
    assert rc == 0
    if not cr.cuobjdump_tools():
        pytest.skip("no cuobjdump: the builds passed, but their SASS was not read for register hazards")


PTX_PIPELINED = """
    cp.async.bulk.tensor.4d.shared::cluster.global.mbarrier::complete_tx::bytes [%r1], [%rd2, {%r3, %r4, %r5, %r6}], [%r7];
    wgmma.mma_async.sync.aligned.m64n64k16.f32.f16.f16 {%f1}, %rd8, %rd9, p, 1, 1, 0, 1;
    wgmma.wait_group.sync.aligned 1;
    cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes [%r10], [%rd11, {%r12, %r13}], [%r14];
    wgmma.wait_group.sync.aligned 0;
"""


def test_ptx_readers_count_tma_copies_and_in_flight_wgmma():
    assert cr.tma_loads_of(PTX_PIPELINED) == 2
    assert cr.mma_async_of(PTX_PIPELINED) is True
    serial = PTX_PIPELINED.replace("aligned 1;", "aligned 0;")
    assert cr.mma_async_of(serial) is False
    assert cr.tma_loads_of("ld.global.v4.b32 {%r1, %r2, %r3, %r4}, [%rd1];") == 0
    assert cr.mma_async_of("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%f1}, {%r1}, {%r2}, {%f2};") is None
    assert cr.wgmma_a_of(PTX_PIPELINED) == "smem"
    rs = "wgmma.mma_async.sync.aligned.m64n64k16.f32.f16.f16 {%r1,%r2}, {%r3,%r4,%r5,%r6}, %rd7, %p1, 1, 1, 0;"
    assert cr.wgmma_a_of(rs) == "regs" and cr.wgmma_a_of(rs + "\n" + PTX_PIPELINED) == "both"
    assert cr.wgmma_a_of("ld.global.b32 %r1, [%rd1];") is None


# A loop of two k16 wgmmas reading A from registers, each left in flight by the wait after it
# (the pattern Triton 3.6 emits for fprop_tap_tma): the next step's ldmatrix rewrites R92 while
# the HGMMA reading it may not have run.
SASS_RS_LOOP = """
        /*2000*/                   SYNCS.PHASECHK.TRANS64.TRYWAIT P0, [UR10+0x14020], R8 ;
        /*2010*/                   LDSM.16.M88.4 R88, [R13+UR9+0xc000] ;
        /*2020*/                   LDSM.16.M88.4 R92, [R16+UR9+0xc000] ;
        /*2030*/                   WARPGROUP.ARRIVE ;
        /*2040*/                   HGMMA.64x128x16.F32 R24, R88, gdesc[UR8], R24, gsb0 ;
        /*2050*/                   WARPGROUP.DEPBAR.LE gsb0, 0x1 ;
        /*2060*/                   WARPGROUP.ARRIVE ;
        /*2070*/                   HGMMA.64x128x16.F32 R24, R92, gdesc[UR8], R24, gsb0 ;
        /*2080*/                   WARPGROUP.DEPBAR.LE gsb0, 0x1 ;
        /*2090*/                   IADD3 R7, R7, 0x1, RZ ;
        /*20a0*/              @!P1 BRA 0x2000 ;
        /*20b0*/                   WARPGROUP.DEPBAR.LE gsb0, 0x0 ;
"""


def test_sass_reader_counts_the_mma_loop_and_its_divisions():
    """mma_loop_of reads one step of the innermost loop issuing MMAs: its instructions, and the
    integer divisions among them (each starts with an I2F.RP); none without an MMA loop."""
    assert cr.mma_loop_of(SASS_RS_LOOP) == (11, 0)
    divided = SASS_RS_LOOP.replace("IADD3 R7, R7, 0x1, RZ ;", "I2F.RP R20, R18 ;")
    assert cr.mma_loop_of(divided) == (11, 1)
    assert cr.mma_loop_of(SASS_RS_LOOP.replace("HGMMA", "IMAD")) is None
    # outside the loop: the one instruction after it; a division before the loop counts there
    assert cr.outside_mma_loop(SASS_RS_LOOP) == (1, 0)
    before = "        /*1ff0*/                   I2F.U32.RP R20, R18 ;\n"
    assert cr.outside_mma_loop(before + divided) == (2, 1)
    assert cr.outside_mma_loop(SASS_RS_LOOP.replace("HGMMA", "IMAD")) is None
    # a persistent kernel's tile loop around the MMA loop: the innermost is the step, the rest outside
    nested = ("        /*1ff0*/                   IMAD R3, R3, 0x2, RZ ;\n" + SASS_RS_LOOP
              + "        /*20c0*/              @!P2 BRA 0x1ff0 ;\n")
    assert cr.mma_loop_of(nested) == (11, 0) and cr.outside_mma_loop(nested) == (3, 0)
    hmma = "\n".join(f"        /*{0x100 + 16 * i:04x}*/  {t} ;" for i, t in enumerate(
        ["LDSM.16.M88.4 R4, [R2]", "I2F.U32.RP R9, R8", "HMMA.16816.F32 R12, R4, R8, R12", "@P0 BRA 0x100"]))
    assert cr.mma_loop_of(hmma) == (4, 1)


def test_sass_reader_finds_writes_to_a_registers_of_a_wgmma_in_flight():
    assert cr.wgmma_register_hazards(SASS_RS_LOOP) == ["0x2020 LDSM.16.M88.4 R92, [R16+UR9+0xc000]"]
    # waiting for every wgmma before the loop closes, or reading A from shared memory: none
    drained = SASS_RS_LOOP.replace("/*2080*/                   WARPGROUP.DEPBAR.LE gsb0, 0x1",
                                   "/*2080*/                   WARPGROUP.DEPBAR.LE gsb0, 0x0")
    assert cr.wgmma_register_hazards(drained) == []
    ss = SASS_RS_LOOP.replace("R24, R92, gdesc[UR8]", "R24, gdesc[UR4], gdesc[UR8]")
    assert cr.wgmma_register_hazards(ss) == []
    # the same instructions outside a loop (an unconditional branch back is a wait loop's
    # return, not a loop): nothing comes round again
    assert cr.wgmma_register_hazards(SASS_RS_LOOP.replace("@!P1 BRA 0x2000", "@!P1 BRA 0x20b0")) == []
    assert cr.wgmma_register_hazards(SASS_RS_LOOP.replace("@!P1 BRA 0x2000", "BRA 0x2000")) == []
    # a predicated HGMMA reads its registers all the same; a 64-bit write covers two of them
    predicated = SASS_RS_LOOP.replace("HGMMA.64x128x16.F32 R24, R92", "@P2 HGMMA.64x128x16.F32 R24, R92")
    assert cr.wgmma_register_hazards(predicated) == ["0x2020 LDSM.16.M88.4 R92, [R16+UR9+0xc000]"]
    wide = SASS_RS_LOOP.replace("LDSM.16.M88.4 R92, [R16+UR9+0xc000]", "IMAD.WIDE.U32 R94, R3, 0x4, RZ")
    assert cr.wgmma_register_hazards(wide) == ["0x2020 IMAD.WIDE.U32 R94, R3, 0x4, RZ"]
    assert cr._written_registers("SHFL.IDX PT, R93, R4, 0x1, 0x1f") == [93]
    assert cr._written_registers("@!P0 CS2R R92, SRZ") == [92, 93]
    assert cr._written_registers("ISETP.GE.AND P0, PT, R92, R3, PT") == []
    built = dict(spills=0, spill_stores=0, spill_loads=0, shared_bytes=65536, tensor_core="wgmma",
                 tma_loads=8, mma_async=True, a_hazards=3)
    problems = cr.check_built(cr._family("fprop_tap_tma"), built, cr.DTYPES["fp16"], cr.ARCHS["sm_90"])
    assert len(problems) == 1 and "A registers of a wgmma in flight" in problems[0]


@pytest.mark.parametrize("hazard", [True, False])
def test_tap_tma_register_a_tiles_wait_for_their_wgmmas_where_triton_has_the_hazard(hazard, monkeypatch):
    """Before Triton 3.9 (configs.WGMMA_RS_HAZARD) a tap-TMA tile whose A goes through registers
    with several wgmmas per step (k16 in 16-bit, k8 in tf32) runs with SYNC_MMA; one-row tiles (A
    from shared memory), one wgmma per step, fp64 and other archs stay as they are."""
    monkeypatch.setattr(tc, "WGMMA_RS_HAZARD", hazard)

    def cfg(bm, bk, bw, stages=3, **extra):
        return triton.Config(dict(BLOCK_M=bm, BLOCK_N=128, BLOCK_K=bk, GROUP_M=8, BLOCK_W=bw, **extra), num_warps=8,
                             num_stages=stages)

    why = tc.register_a_hazard
    assert (why(cfg(128, 64, 8), "BLOCK_M", 2, 90) is not None) is hazard
    assert (why(cfg(128, 32, 8), "BLOCK_M", 2, 90) is not None) is hazard
    assert (why(cfg(128, 64, 128), "BLOCK_M", 2, 90, a_selected=True) is not None) is hazard
    assert why(cfg(128, 64, 8, SYNC_MMA=True), "BLOCK_M", 2, 90) is None  # already waits
    assert why(cfg(128, 16, 8), "BLOCK_M", 2, 90) is None  # one wgmma per step
    assert why(cfg(128, 64, 128), "BLOCK_M", 2, 90) is None  # one-row tile
    assert (why(cfg(128, 64, 8), "BLOCK_M", 4, 90) is not None) is hazard  # tf32: k8 wgmmas, 8 a step
    assert why(cfg(128, 8, 8), "BLOCK_M", 4, 90) is None  # tf32, one k8 wgmma per step
    assert why(cfg(128, 64, 8), "BLOCK_M", 8, 90) is None  # fp64: no wgmma
    assert why(cfg(128, 64, 8), "BLOCK_M", 2, 80) is None  # no wgmma
    assert why(cfg(128, 64, 8), "BLOCK_M", 2, None) is None  # interpreter
    assert why(cfg(128, 64, 8, stages=1), "BLOCK_M", 2, 90) is None  # nothing in flight
    assert tc.config_name(tc.synced(cfg(128, 64, 8))) == "128x128x64 w8 s3 sync"
    # transposed, the input box is the wgmma's B operand, from shared memory; unless A's channels
    # are selected in registers
    assert why(cfg(128, 64, 8, TRANSPOSED=True), "BLOCK_M", 2, 90) is None
    assert (why(cfg(128, 64, 8, TRANSPOSED=True), "BLOCK_M", 2, 90, a_selected=True) is not None) is hazard
    assert tc.config_name(tc.transposed(cfg(128, 64, 8))) == "128x128x64 w8 s3 transposed"


def test_tap_tma_prune_hook_syncs_the_register_a_tiles(monkeypatch):
    from tritonconv.kernels import fprop

    monkeypatch.setattr(tc, "WGMMA_RS_HAZARD", True)
    monkeypatch.setattr(tc, "TUNE", True)  # every config the rules keep, not the tests' one
    monkeypatch.setattr(tc, "device_capability", lambda t: 90)
    monkeypatch.setattr(tc, "max_shared_memory", lambda index: 227 * 1024)
    hook = fprop._fprop_tap_tma_tuned.early_config_prune
    y = torch.empty(0, dtype=torch.float16)
    args = dict(y_ptr=y, N=32, P=56, Q=56, KG=256, CG=256, K_ALIGN=64)
    configs = fprop.tap_tma_configs(interpreter=False)
    kept = hook(configs, args)
    names = [tc.config_name(c) for c in kept]
    assert "128x128x64 w8 s3 sync" in names and "128x64x16 w4 s4" in names  # one k16 wgmma: as it is
    assert "64x128x64 w8 s4 rows" in names  # 56-wide rows, A from shared memory: as it is
    assert all(tc.register_a_hazard(c, "BLOCK_M", 2, 90) is None for c in kept)
    # beside each synced tile, its transposed form, where BLOCK_N can be the wgmma's M
    synced = [n[:-len(" sync")] for n in names if n.endswith(" sync")]
    assert synced and sorted(n[:-len(" transposed")] for n in names if n.endswith(" transposed")) == sorted(
        n for n in synced if int(n.split("x")[1]) >= tc.TRANSPOSED_MIN_BLOCK_N)
    assert "128x32x64 w8 s4 sync" in names and "128x32x64 w8 s4 transposed" not in names
    # channels BLOCK_K does not divide: a one-row tile selects A in registers, and waits too; so
    # would a transposed one, which is then not offered
    selected = [tc.config_name(c) for c in hook(configs, {**args, "K_ALIGN": 8})]
    assert "64x128x64 w8 s4 rows sync" in selected and not any("transposed" in n for n in selected)
    # TRITONCONV_TUNE=0: one config, untimed, whatever forms its tile has (the synced one)
    monkeypatch.setattr(tc, "TUNE", False)
    wide = [c for c in configs if c.kwargs["BLOCK_N"] >= tc.TRANSPOSED_MIN_BLOCK_N and c.kwargs["BLOCK_K"] > 16
            and c.kwargs["BLOCK_W"] == tc.SPATIAL_TILE_WIDTH]
    (only,) = hook(wide, args)
    assert only.kwargs.get("SYNC_MMA") and not only.kwargs.get("TRANSPOSED")
    monkeypatch.setattr(tc, "TUNE", True)
    monkeypatch.setattr(tc, "WGMMA_RS_HAZARD", False)
    # a Triton without the hazard (3.9, whose ptxas serializes those tiles' wgmmas instead): the
    # tiles as they are, each beside its transposed form where it has one
    unsynced = [tc.config_name(c) for c in hook(configs, args)]
    assert not any(n.endswith(" sync") for n in unsynced)
    assert sorted(n for n in unsynced if n.endswith(" transposed")) == sorted(
        n for n in names if n.endswith(" transposed"))


def test_tap_tma_pruner_offers_rotated_forms_only_when_asked(monkeypatch):
    """configs.ROTATED_FORMS: beside every form the tap-TMA forward's and gemm1x1_tma's pruners
    launch a tile in, the same rotated, after the tile's other forms (TRITONCONV_TUNE=0 keeps an
    unrotated one); not for a split-K launch, a stream-K tile or a kernel without ROTATE (wgrad's);
    with the switch off, none."""
    from tritonconv.kernels import fprop, gemm1x1, wgrad

    monkeypatch.setattr(tc, "TUNE", True)
    monkeypatch.setattr(tc, "device_capability", lambda t: 90)
    monkeypatch.setattr(tc, "max_shared_memory", lambda index: 227 * 1024)
    y = torch.empty(0, dtype=torch.float16)
    args = dict(y_ptr=y, N=32, P=7, Q=7, KG=512, CG=512, K_ALIGN=64, SPLIT_K=1)
    configs = fprop.tap_tma_configs(interpreter=False)
    hook = fprop._fprop_tap_tma_tuned.early_config_prune
    for hazard in (True, False):
        monkeypatch.setattr(tc, "WGMMA_RS_HAZARD", hazard)
        monkeypatch.setattr(tc, "ROTATED_FORMS", False)
        plain = [tc.config_name(c) for c in hook(configs, args)]
        assert plain and not any(n.endswith(" rotated") for n in plain)
        monkeypatch.setattr(tc, "ROTATED_FORMS", True)
        names = [tc.config_name(c) for c in hook(configs, args)]
        assert sorted(names) == sorted(plain + [n + " rotated" for n in plain]) and names[0] == plain[0]
        assert [tc.config_name(c) for c in hook(configs, {**args, "SPLIT_K": 3})] == plain
        streamk = fprop._fprop_tap_tma_streamk_tuned
        assert not any(c.kwargs.get("ROTATE") for c in streamk.early_config_prune(streamk.configs, args))
    wgrad_hook = wgrad._wgrad_tap_tma_tuned.early_config_prune
    assert not wgrad_hook.rotatable
    # the 1x1 GEMM on TMA: every kept tile rotated too, but its stream-K ones
    gemm_prune = gemm1x1._gemm1x1_tma_tuned.early_config_prune
    gemm_configs = tc.persistent_gemm_configs(stream_k=True, flatten=True, interpreter=False)
    gemm_args = dict(y_ptr=y, M=1568, CG=2048, KG=512)
    monkeypatch.setattr(tc, "ROTATED_FORMS", False)
    plain = [tc.config_name(c) for c in gemm_prune(gemm_configs, gemm_args)]
    rotated = [n for n in plain if "stream-k" not in n]
    assert rotated and len(rotated) < len(plain) and not any(n.endswith(" rotated") for n in plain)
    monkeypatch.setattr(tc, "ROTATED_FORMS", True)
    names = [tc.config_name(c) for c in gemm_prune(gemm_configs, gemm_args)]
    assert sorted(names) == sorted(plain + [n + " rotated" for n in rotated])
    monkeypatch.setattr(tc, "TUNE", False)
    (only,) = hook(configs, args)
    assert not only.kwargs.get("ROTATE")
    (only,) = gemm_prune(gemm_configs, gemm_args)
    assert not only.kwargs.get("ROTATE")
    assert tc.config_name(tc.rotated(tc.transposed(configs[0]))).endswith(" transposed rotated")


def test_tma_family_without_tma_copies_fails():
    """A tensor-descriptor family whose PTX came out with plain loads is a failure, not a silent slowdown."""
    fam, plain = cr._family("fprop_tap_tma"), cr._family("fprop")
    built = dict(spills=0, spill_stores=0, spill_loads=0, shared_bytes=65536, tensor_core="wgmma",
                 tma_loads=0, mma_async=True)
    dt, sm90 = cr.DTYPES["fp16"], cr.ARCHS["sm_90"]
    assert cr.check_built(plain, built, dt, sm90) == []
    problems = cr.check_built(fam, built, dt, sm90)
    assert len(problems) == 1 and "no TMA copies" in problems[0]
    assert cr.check_built(fam, {**built, "tma_loads": 8}, dt, sm90) == []


def test_ptxas_serialization_warning_is_read():
    """ptxas's warning that it serialized a kernel's wgmmas gives the record's reason; its other
    warnings none."""
    why = "non wgmma instructions defining accumulator registers of a wgmma between start and end of the pipeline stage"
    log = ("ptxas info    : Used 168 registers, used 1 barriers\n"
           "ptxas /tmp/k.ptx, line 2114; warning : Potential Performance Loss: wgmma.mma_async instructions are "
           f"serialized due to {why} in the function 'fprop_tap_tma_kernel'\n")
    assert cr._PTXAS_SERIALIZED.search(log).group(1) == why
    assert cr._PTXAS_SERIALIZED.search(log.replace(" in the function 'fprop_tap_tma_kernel'", "")).group(1) == why
    assert cr._PTXAS_SERIALIZED.search("ptxas info    : Used 168 registers, used 1 barriers\n") is None


def test_serialized_wgmmas_fail():
    """A config whose wgmmas ptxas serialized (each waiting for the one before) is a failure: none
    is left on Triton 3.6 or 3.9, and the cause each time was a loop that might run no step."""
    fam = cr._family("fprop_tap_tma")
    built = dict(spills=0, spill_stores=0, spill_loads=0, shared_bytes=65536, tensor_core="wgmma",
                 tma_loads=8, mma_async=True, a_hazards=0, serialized=False, serialized_reason=None)
    dt, sm90 = cr.DTYPES["fp16"], cr.ARCHS["sm_90"]
    assert cr.check_built(fam, built, dt, sm90) == []
    why = "non wgmma instructions defining accumulator registers of a wgmma between start and end of the pipeline stage"
    problems = cr.check_built(fam, {**built, "serialized": True, "serialized_reason": why}, dt, sm90)
    assert problems == [f"ptxas serialized the wgmmas ({why})"]


def test_subset_covers_every_family_within_a_ci_budget():
    """``--subset --arch sm_90`` compiles a few configs of every family: about a second each on one
    core, so the task count bounds a 2-core CI run to a few minutes."""
    tasks = cr._tasks(["sm_90"], list(cr.SUBSET_DTYPES), cr.FAMILIES, True, [])
    assert {t[0] for t in tasks} == {f.name for f in cr.FAMILIES}
    base = [t for t in tasks if not t[2].get("TRANSPOSED")]
    assert len(base) <= 260  # 249 with the 43 families of this writing
    # the transposed forms of the 8-wide tiles with A in registers: 30 of this writing
    assert 0 < len(tasks) - len(base) <= 40


# The runtime pruner (configs.prune_gemm_configs), whose rules come from the report's numbers.

def _names(configs):
    return {cr.config_name(c) for c in configs}


BIG = 1 << 20


def test_heavy_epilogue_drops_tiles_with_128_accumulators_per_thread():
    configs = cr.gemm_tile_configs()
    plain = tc.prune_gemm_configs(configs, BIG, BIG, BIG, 2, 227 * 1024, capability=90)
    heavy = tc.prune_gemm_configs(configs, BIG, BIG, BIG, 2, 227 * 1024, capability=90, heavy_epilogue=True)
    assert {"128x256x64 w8 s3", "256x128x64 w8 s3"} <= _names(plain)
    assert _names(plain) - _names(heavy) == {"128x256x64 w8 s3", "256x128x64 w8 s3"}
    assert all(tc.acc_per_thread(c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.num_warps) <= 64 for c in heavy)


@pytest.mark.skipif(tc.PLAIN_GEMM_ACC_LIMITED, reason="before Triton 3.9 the plain GEMMs' 128 spill on sm_80")
def test_sm_80_keeps_128_accumulators_per_thread_for_plain_gemms_only():
    configs = cr.gemm_tile_configs()
    big = {"128x256x64 w8 s3", "256x128x64 w8 s3"}
    implicit = tc.prune_gemm_configs(configs, BIG, BIG, BIG, 2, 163 * 1024, capability=80)
    plain = tc.prune_gemm_configs(configs, BIG, BIG, BIG, 2, 163 * 1024, capability=80, gathered=False)
    assert not big & _names(implicit) and big <= _names(plain)


@pytest.mark.skipif(not tc.PLAIN_GEMM_ACC_LIMITED, reason="Triton 3.9's ptxas fits the plain GEMMs' 128")
def test_sm_80_keeps_64_accumulators_per_thread_before_triton_3_9():
    """With Triton 3.6's ptxas the 1x1 family's 128x256 and 256x128 16-bit tiles sat at 255
    registers and spilled on sm_80: there every GEMM keeps 64 accumulators a thread at most."""
    configs = cr.gemm_tile_configs()
    plain = tc.prune_gemm_configs(configs, BIG, BIG, BIG, 2, 163 * 1024, capability=80, gathered=False)
    assert not {"128x256x64 w8 s3", "256x128x64 w8 s3"} & _names(plain)
    assert all(tc.acc_per_thread(c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.num_warps) <= 64 for c in plain)


def test_listed_tiles_launch_uncapped_below_sm_90_only():
    """A kernel's ``uncapped`` tiles (configs.register_cap) take maxnreg 255 on sm_80, for their
    element size only; on sm_90, and every other tile, ptxas chooses. The compile report builds
    them as the runtime launches them (``as_launched``)."""
    configs = cr.gemm_tile_configs()
    uncapped = (tc.TileKey(64, 128, 64, 8, 4, 2),)

    def capped(capability, elem_bytes):
        kept = tc.prune_gemm_configs(configs, BIG, BIG, BIG, elem_bytes, 163 * 1024, capability=capability,
                                     uncapped=uncapped)
        return {cr.config_name(c): c.maxnreg for c in kept if getattr(c, "maxnreg", None)}

    assert capped(80, 2) == {"64x128x64 w8 s4 maxnreg 255": tc.UNCAPPED_MAXNREG}
    assert capped(90, 2) == {} and capped(80, 4) == {} and capped(None, 2) == {}

    wgrad = next(f for f in cr.FAMILIES if f.name == "wgrad")
    tile = next(c for c in wgrad.configs_fn() if cr.config_name(c) == "64x128x64 w8 s4")
    assert cr.as_launched(wgrad, tile, cr.DTYPES["fp16"], cr.ARCHS["sm_80"]).maxnreg == tc.UNCAPPED_MAXNREG
    assert getattr(cr.as_launched(wgrad, tile, cr.DTYPES["fp16"], cr.ARCHS["sm_90"]), "maxnreg", None) is None
    assert getattr(cr.as_launched(wgrad, tile, cr.DTYPES["fp32"], cr.ARCHS["sm_80"]), "maxnreg", None) is None


def test_listed_spilling_tiles_are_dropped_below_sm_90_only():
    """A kernel's ``spilling`` tiles (configs.SPILLING_TILES: fp32 tiles Triton 3.6 spills on
    sm_80 at any register limit) are dropped on sm_80, for their element size only; the runtime's
    hooks carry the lists, which only a Triton before 3.9 fills, and the report prunes alike."""
    configs = cr.gemm_tile_configs()
    spilling = (tc.TileKey(64, 64, 64, 4, 4, 4),)

    def kept(capability, elem_bytes):
        return _names(tc.prune_gemm_configs(configs, BIG, BIG, BIG, elem_bytes, 163 * 1024, capability=capability,
                                            spilling=spilling))

    assert "64x64x64 w4 s4" in _names(configs)
    assert "64x64x64 w4 s4" not in kept(80, 4)
    assert "64x64x64 w4 s4" in kept(90, 4) and "64x64x64 w4 s4" in kept(80, 2) and "64x64x64 w4 s4" in kept(None, 4)
    assert "SPILLING_TILES" in tc.pruned_because(64, 64, 64, 4, 4, 4, 1 << 30, 80, spilling=spilling)

    from tritonconv.kernels import smallc, wgrad

    assert bool(tc.SPILLING_TILES) == (tc.TRITON_VERSION < (3, 9))
    assert wgrad._wgrad_tuned.early_config_prune.rules["spilling"] == tc.SPILLING_TILES.get("wgrad_kernel", ())
    for tuned in (smallc._smallc_tuned, smallc._smallc_pad_tuned):
        assert tuned.early_config_prune.rules["spilling"] == tc.SPILLING_TILES.get("smallc_fprop_kernel", ())
    fp32, sm80, sm90 = cr.DTYPES["fp32"], cr.ARCHS["sm_80"], cr.ARCHS["sm_90"]
    for name in ("wgrad", "wgrad_splitk"):
        family = cr._family(name)
        tile = next(c for c in family.configs_fn() if cr.config_name(c) == "64x64x64 w4 s4")
        why = cr._runtime_pruned(family, tile, fp32, sm80)
        assert (why is not None and "SPILLING_TILES" in why) == (tc.TRITON_VERSION < (3, 9)), (name, why)
        assert cr._runtime_pruned(family, tile, fp32, sm90) is None


def test_an_uncapped_tile_builds_without_spills_on_sm_80():
    """wgrad's 64x128x64 w8 s4 in fp16 spilled 24 B at the 128 registers ptxas 12.9 chose for
    it (Triton 3.9); with its register limit lifted it spills nothing."""
    rc, records = run_report("--family", "wgrad", "--arch", "sm_80", "--dtype", "fp16", "--only", "64x128x64 w8 s4")
    (r,) = records
    assert r["config"] == "64x128x64 w8 s4 maxnreg 255"
    assert r["error"] is None, r["error"]
    assert r["spills"] == 0 and r["status"] == "ok", r["reason"]
    assert rc == 0


def test_wgmma_rule_for_16_bit_types_on_sm_90():
    configs = tc.gemm_configs([(32, 64, 32, 4, 4), (64, 32, 32, 2, 4), (64, 64, 32, 4, 4)], interpreter=False)
    kept = tc.prune_gemm_configs(configs, BIG, BIG, BIG, 2, 227 * 1024, capability=90)
    assert _names(kept) == {"64x64x32 w4 s4"}
    # fp32, or sm_80, keeps them all
    assert len(tc.prune_gemm_configs(configs, BIG, BIG, BIG, 4, 227 * 1024, capability=90)) == 3
    assert len(tc.prune_gemm_configs(configs, BIG, BIG, BIG, 2, 163 * 1024, capability=80)) == 3
    # M below 64 clamps BLOCK_M anyway: nothing is dropped for it
    small_m = tc.prune_gemm_configs(configs, 20, BIG, BIG, 2, 227 * 1024, capability=90)
    assert {c.kwargs["BLOCK_M"] for c in small_m} == {32}


def test_fp64_keeps_small_accumulators_only():
    kept = tc.prune_gemm_configs(cr.gemm_tile_configs(), BIG, BIG, BIG, 8, 163 * 1024, capability=80)
    assert kept and all(tc.acc_per_thread(c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.num_warps) <= tc.MAX_ACC_FP64
                        for c in kept)


def test_shared_estimate_counts_the_buffers_triton_allocates():
    # fp16 128x256x64 with 3 stages: 2 buffers (98304 B) below sm_90, 3 on sm_90 (the report's figures)
    assert tc.shared_bytes(128, 256, 64, 3, 2, capability=80) == 98304
    assert tc.shared_bytes(128, 256, 64, 3, 2, capability=90) == 147456
    assert tc.shared_bytes(128, 256, 64, 3, 2) == 147456  # no device: the larger figure
    assert tc.shared_bytes(64, 32, 32, 5, 8, capability=90) == 98304  # fp64 runs mma.sync on sm_90: 4 buffers


def test_pruning_keeps_pre_hooks_and_never_returns_nothing():
    def hook(nargs):
        pass

    configs = [triton.Config(c.kwargs, num_warps=c.num_warps, num_stages=c.num_stages, pre_hook=hook)
               for c in cr.gemm_tile_configs()]
    kept = tc.prune_gemm_configs(configs, BIG, BIG, BIG, 2, 227 * 1024, capability=90)
    assert kept and all(c.pre_hook is hook for c in kept)
    nothing_fits = tc.prune_gemm_configs(configs, BIG, BIG, BIG, 8, 1024, capability=80, heavy_epilogue=True)
    assert len(nothing_fits) == 1 and nothing_fits[0].pre_hook is hook


def test_prune_hook_reads_the_epilogue_from_launch_kwargs(monkeypatch):
    monkeypatch.setattr(tc, "TUNE", True)  # the tests' one-config mode (conftest) would hide the rules
    hook = tc.gemm_prune_hook(m_fn=lambda a: a["M"], n_fn=lambda a: a["KG"], k_fn=lambda a: a["CG"], tensor_arg="x_ptr")
    x = torch.empty(1, dtype=torch.float16)  # off CUDA: no capability, no shared-memory limit
    args = dict(x_ptr=x, M=BIG, KG=BIG, CG=BIG)
    configs = cr.gemm_tile_configs()
    assert hook.gemm_sizes(args) == (BIG, BIG, BIG)
    assert len(hook(configs, args, HAS_RESIDUAL=False, ACTIVATION=0)) == len(configs)
    assert len(hook(configs, args, HAS_RESIDUAL=False, ACTIVATION=1)) == len(configs) - 2
    assert len(hook(configs, args, HAS_RESIDUAL=True, ACTIVATION=0, PARTIAL=True)) == len(configs)
    assert hook(configs[:1], args, HAS_RESIDUAL=True) == configs[:1]  # one config (the interpreter's): untouched


def test_wgrad_drops_tiles_wider_than_128_in_n():
    """wgrad gathers its B operand (x) too: 128x256 spilled on sm_90, 256x128 did not."""
    kept = _names(tc.prune_gemm_configs(cr.gemm_tile_configs(), BIG, BIG, BIG, 2, 227 * 1024, capability=90,
                                        max_block_n=tc.MAX_BLOCK_N_BOTH_GATHERED))
    assert "128x256x64 w8 s3" not in kept and "256x128x64 w8 s3" in kept
    wgrad = next(f for f in cr.FAMILIES if f.name == "wgrad")
    assert wgrad.prune.rules["max_block_n"] == tc.MAX_BLOCK_N_BOTH_GATHERED
    why = cr._runtime_pruned(wgrad, cr.gemm_tile_configs()[0], cr.DTYPES["fp16"], cr.ARCHS["sm_90"])
    assert why is not None and "BLOCK_N 256 > 128" in why


def test_tap_tma_wgrad_drops_tiles_taller_than_128_in_m():
    """wgrad_tap_tma feeds dy's box to wgmma transposed: 256x128 spilled on sm_90, 128x256 did not."""
    fam = next(f for f in cr.FAMILIES if f.name == "wgrad_tap_tma")
    assert fam.prune.rules["max_block_m"] == tc.MAX_BLOCK_M_TRANSPOSED_A
    kept = _names(cr.runtime_configs(fam, cr.DTYPES["fp16"], cr.ARCHS["sm_90"]))
    assert not {"256x128x64 w8 s3", "256x128x64 w8 s3 sync"} & kept
    assert ("128x256x64 w8 s3 sync" if tc.WGMMA_RS_HAZARD else "128x256x64 w8 s3") in kept


def test_prune_hook_reads_a_tma_descriptor_tensor():
    from triton.tools.tensor_descriptor import TensorDescriptor

    hook = tc.gemm_prune_hook(m_fn=lambda a: a["M"], n_fn=lambda a: a["N"], k_fn=lambda a: a["K"], tensor_arg="a_desc")
    desc = TensorDescriptor.from_tensor(torch.empty(64, 64, dtype=torch.float64), [16, 16])
    kept = hook(cr.gemm_tile_configs(), dict(a_desc=desc, M=BIG, N=BIG, K=BIG))
    assert kept and all(tc.acc_per_thread(c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.num_warps) <= tc.MAX_ACC_FP64
                        for c in kept), "the descriptor's fp64 element size must reach the pruner"


def test_depthwise_pruner_keeps_tiles_that_fit():
    """The depthwise forward's and dgrad's pruner, by element size and taps a row."""
    configs = cr.depthwise_patch_configs()
    acc = {id(c): tc.acc_per_thread(c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.num_warps) for c in configs}
    assert any(n > 16 for n in acc.values())
    # 16-bit keeps the wide tile (32 values a thread) for kernels of up to 5 taps a row, 7 as a
    # patch on sm_90 (configs.max_patch_taps); 32-bit never
    assert tc.prune_direct_configs(configs, 2, taps_per_row=5, capability=90) == configs
    assert tc.prune_direct_configs(configs, 2, taps_per_row=7, capability=90) == [
        c for c in configs if acc[id(c)] <= 16 or c.kwargs["TILE_W"]]
    assert tc.direct_pruned_because(128, 32, 4, 2, tile_w=8, taps_per_row=7, capability=90) is None
    assert "32 values/thread" in tc.direct_pruned_because(128, 32, 4, 2, tile_w=8, taps_per_row=7, capability=80)
    assert "32 values/thread" in tc.direct_pruned_because(128, 32, 4, 2, tile_w=0, taps_per_row=7, capability=90)
    assert tc.prune_direct_configs(configs, 4, capability=90) == [c for c in configs if acc[id(c)] <= 16]
    kept = tc.prune_direct_configs(configs, 8)
    assert kept and all(acc[id(c)] <= 8 for c in kept)


def test_depthwise_pruner_fp16_forward_below_sm90(monkeypatch):
    """On a Triton whose sm_80 builds spill them (FP16_FORWARD_SPILLS: before 3.9), an fp16
    forward below sm_90 drops the looped patches at a row stride above 1 and the looped flat
    tile of 32 values a thread at stride 1; the dgrad, sm_90, bf16 (its own rule) and a Triton
    without the spills keep theirs. The runtime's hook and the report decide alike."""
    from tritonconv.kernels import depthwise

    why = tc.direct_pruned_because
    assert "strided fp16" in why(64, 32, 4, 2, tile_w=8, taps_per_row=3, capability=80, taps=9, row_step=(2, 1),
                                 fp16_below_sm90=True)
    assert why(64, 32, 4, 2, tile_w=8, taps_per_row=3, capability=80, taps=9, fp16_below_sm90=True) is None
    assert "32 values/thread" in why(128, 32, 4, 2, taps_per_row=3, capability=80, taps=9, fp16_below_sm90=True)
    assert why(128, 32, 4, 2, taps_per_row=3, capability=80, taps=9, row_step=(2, 1), fp16_below_sm90=True) is None
    assert why(64, 32, 4, 2, taps_per_row=3, capability=80, taps=9, fp16_below_sm90=True) is None  # 16 a thread
    assert why(128, 32, 4, 2, taps_per_row=3, capability=80, taps=9) is None  # without the flag: kept
    monkeypatch.setattr(tc, "TUNE", True)
    x16 = torch.empty(1, dtype=torch.float16)
    monkeypatch.setattr(tc, "device_capability", lambda t: 80)
    configs = cr.depthwise_unrolled_configs()
    for spills in (True, False):
        monkeypatch.setattr(tc, "FP16_FORWARD_SPILLS", spills)
        for stride_h in (1, 2):
            args = dict(x_ptr=x16, dy_ptr=x16, P=56, Q=56, HP=56, WP=56, stride_h=stride_h)
            fwd = depthwise._fprop_tuned.early_config_prune(configs, args, R=3, S=3)
            dgrad = depthwise._dgrad_tuned.early_config_prune(configs, args, R=3, S=3)
            wide_flat = [c for c in fwd if not c.kwargs["TILE_W"]
                         and tc.acc_per_thread(c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.num_warps) > 16]
            patches = [c for c in fwd if c.kwargs["TILE_W"]]
            assert bool(wide_flat) == (not spills or stride_h > 1), (spills, stride_h)
            assert bool(patches) == (not spills or stride_h == 1), (spills, stride_h)
            assert any(c.kwargs["TILE_W"] for c in dgrad) and any(
                tc.acc_per_thread(c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.num_warps) > 16 for c in dgrad)
    monkeypatch.setattr(tc, "FP16_FORWARD_SPILLS", True)
    fp16, bf16, sm80, sm90 = cr.DTYPES["fp16"], cr.DTYPES["bf16"], cr.ARCHS["sm_80"], cr.ARCHS["sm_90"]
    wide = next(c for c in configs if not c.kwargs["TILE_W"] and not c.kwargs["UNROLL_R"]
                and tc.acc_per_thread(c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.num_warps) > 16)
    assert "fp16 forward" in cr._runtime_pruned(cr._family("depthwise_fprop"), wide, fp16, sm80)
    assert cr._runtime_pruned(cr._family("depthwise_fprop"), wide, fp16, sm90) is None
    assert cr._runtime_pruned(cr._family("depthwise_fprop"), wide, bf16, sm80) is None


def test_a_fixed_block_k_survives_the_pruner():
    """The small-C rows kernel's BLOCK_K is one kernel row (smallc.row_block_k): the pruner neither
    clamps it nor, where no tile fits, falls back to a tile of another (which would skip the
    row's last columns)."""
    configs = tc.smallc_row_configs(64, interpreter=False)
    kept = tc.prune_gemm_configs(configs, 4096, 64, 64, 8, 100_000, capability=80, fixed_block_k=64)
    assert len(kept) == 1 and kept[0].kwargs["BLOCK_K"] == 64  # fp64: every tile too big, the fallback
    assert tc.prune_gemm_configs(configs, 4096, 64, 64, 8, 100_000, capability=80)[0].kwargs["BLOCK_K"] == 16
    kept = tc.prune_gemm_configs(tc.smallc_row_configs(32, interpreter=False), 4096, 64, 16, 2, 1 << 30,
                                 fixed_block_k=32)
    assert kept and all(c.kwargs["BLOCK_K"] == 32 for c in kept)  # a 1-row kernel: K = 16 < BLOCK_K
    from tritonconv.kernels import smallc

    assert all(tuned.early_config_prune.rules["fixed_block_k"] == bk for bk, tuned in smallc.ROWS_TUNED.items())


def test_depthwise_unrolled_rows_are_for_small_kernels(monkeypatch):
    """The forward's and dgrad's unrolled kernel rows (UNROLL_R): candidates for kernels of at most
    DEPTHWISE_UNROLL_MAX_TAPS taps, and for the dgrad at a row stride of 1 only."""
    from tritonconv.kernels import depthwise

    both, looped = cr.depthwise_unrolled_configs(), cr.depthwise_patch_configs()
    unrolled = [c for c in both if c.kwargs["UNROLL_R"]]
    assert len(unrolled) == 2 * len(tc.DEPTHWISE_UNROLL_TILES) and both[len(looped):] == unrolled
    assert [tc.config_name(c) for c in both[:len(looped)]] == [tc.config_name(c) for c in looped]  # looped first
    assert all(" unrolled" in tc.config_name(c) for c in unrolled)
    assert tc.prune_direct_configs(both, 2, 3, 90, taps=9) == both
    kept = tc.prune_direct_configs(both, 2, 5, 90, taps=25)
    assert kept and not any(c.kwargs["UNROLL_R"] for c in kept)
    assert "unrolled with 25 taps" in tc.direct_pruned_because(64, 32, 4, 2, 0, 5, 90, unrolled=True, taps=25)
    with pytest.raises(ValueError, match="patches"):
        tc.depthwise_configs(interpreter=False, unrolled=True)
    # the runtime's hooks: the forward takes every kernel row, a dgrad's phases at stride 2 do not
    monkeypatch.setattr(tc, "TUNE", True)  # every config the rules keep, not the tests' one
    x = torch.empty(1, dtype=torch.float16)
    for stride_h in (1, 2):
        for tuned in (depthwise._fprop_tuned, depthwise._dgrad_tuned):
            args = dict(x_ptr=x, dy_ptr=x, P=56, Q=56, HP=56, WP=56, stride_h=stride_h)
            kept = tuned.early_config_prune(both, args, R=3, S=3)
            expect = stride_h == 1 or tuned is depthwise._fprop_tuned
            assert any(c.kwargs["UNROLL_R"] for c in kept) == expect, (tuned.fn.__name__, stride_h)
    # below sm_90 none; and the report says so as the runtime decides
    assert "sm_90" in tc.direct_pruned_because(64, 32, 4, 2, 0, 3, 80, unrolled=True, taps=9)
    assert tc.direct_pruned_because(64, 32, 4, 2, 0, 3, 90, unrolled=True, taps=9) is None
    fp16, sm90, sm80 = cr.DTYPES["fp16"], cr.ARCHS["sm_90"], cr.ARCHS["sm_80"]
    cfg = unrolled[0]
    assert cr._runtime_pruned(cr._family("depthwise_dgrad"), cfg, fp16, sm90) is None
    assert "stride phase" in cr._runtime_pruned(cr._family("depthwise_dgrad_s2"), cfg, fp16, sm90)
    assert cr._runtime_pruned(cr._family("depthwise_fprop"), cfg, fp16, sm90) is None
    for family in ("depthwise_fprop", "depthwise_dgrad"):
        assert "sm_90" in cr._runtime_pruned(cr._family(family), cfg, fp16, sm80)


def test_depthwise_patches_the_report_drops_as_the_runtime_does():
    """A 7x7 patch launches on sm_90 in 16-bit only (configs.max_patch_taps); a 3x3 patch anywhere."""
    fam7, fam3 = cr._family("depthwise_fprop_7x7"), cr._family("depthwise_fprop")
    patch = next(c for c in cr.depthwise_patch_configs() if c.kwargs["TILE_W"])
    dt, arch = cr.DTYPES, cr.ARCHS
    assert cr._runtime_pruned(fam7, patch, dt["fp16"], arch["sm_90"]) is None
    assert "7 taps a row" in cr._runtime_pruned(fam7, patch, dt["fp16"], arch["sm_80"])
    assert "7 taps a row" in cr._runtime_pruned(fam7, patch, dt["fp32"], arch["sm_90"])
    assert cr._runtime_pruned(fam3, patch, dt["fp32"], arch["sm_80"]) is None


def test_one_config_mode_keeps_the_smallest_surviving_tile(monkeypatch):
    """TRITONCONV_TUNE=0 (the tests on CUDA): the hooks' rules still apply, then one config."""
    hook = tc.gemm_prune_hook(m_fn=lambda a: a["M"], n_fn=lambda a: a["KG"], k_fn=lambda a: a["CG"], tensor_arg="x_ptr")
    args = dict(x_ptr=torch.empty(1, dtype=torch.float64), M=BIG, KG=BIG, CG=BIG)
    configs = cr.gemm_tile_configs()
    monkeypatch.setattr(tc, "TUNE", True)
    every = hook(configs, args)
    monkeypatch.setattr(tc, "TUNE", False)
    one = hook(configs, args)
    assert len(every) > 1 and len(one) == 1 and one[0].kwargs in [c.kwargs for c in every]
    assert min(c.kwargs["BLOCK_M"] * c.kwargs["BLOCK_N"] * c.kwargs["BLOCK_K"] for c in every) == \
        one[0].kwargs["BLOCK_M"] * one[0].kwargs["BLOCK_N"] * one[0].kwargs["BLOCK_K"]


# Every @jit function of the kernels, its cache_key and the global constexprs it reads, hashed
# in the order argv[1] names (a subprocess: the hashes are computed once per process).
_HASH_SCRIPT = r"""
import importlib, json, pkgutil, sys
from triton.language.core import constexpr
from triton.runtime.jit import JITFunction
from tritonconv import kernels

found = {}
for info in pkgutil.iter_modules(kernels.__path__):
    module = importlib.import_module(f"tritonconv.kernels.{info.name}")
    for value in vars(module).values():
        if isinstance(value, JITFunction):
            found[f"{value.__module__}.{value.__name__}"] = value
names = sorted(found, reverse=sys.argv[1] == "reverse")
keys = {name: found[name].cache_key for name in names}
constexprs = sorted(f"{name}: {var}" for name in names
                    for (var, _), (val, _) in found[name].used_global_vals.items() if isinstance(val, constexpr))
print(json.dumps({"keys": keys, "constexprs": constexprs}))
"""


def test_kernel_hashes_do_not_depend_on_which_kernel_is_hashed_first():
    """A kernel's cache_key (Triton's compile cache, and the tuning cache's signature) is the
    same whichever kernel a process hashes first. Triton before 3.9 (3.6 on the GPU machine)
    merges a callee's global constexprs into its caller's hash only where the callee was hashed
    earlier, so a helper that reads a global constexpr made every kernel's key depend on the
    order (the H100 check at 283a32b re-tuned fprop_tap_tma in every stage): no @jit function
    of ours reads one."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    runs = {}
    for order in ("forward", "reverse"):
        proc = subprocess.run([sys.executable, "-c", _HASH_SCRIPT, order], cwd=REPO, env=env, capture_output=True,
                              text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr[-3000:]
        runs[order] = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(runs["forward"]["keys"]) >= 20
    assert runs["forward"]["constexprs"] == [] and runs["reverse"]["constexprs"] == []
    assert runs["forward"]["keys"] == runs["reverse"]["keys"]
