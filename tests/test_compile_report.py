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

from tritonconv import compile_report as cr

REPO = Path(__file__).resolve().parents[1]

# A mid-size tile that must build cleanly everywhere: no spills, tensor cores
# (wgmma for fp16 on sm_90, TF32 mma.sync for fp32 on sm_80).
CLEAN_CONFIG = "64x64x64 w4 s4"

RECORD_KEYS = {
    "kernel", "config", "arch", "dtype", "registers", "spills", "spill_stores", "spill_loads",
    "shared_bytes", "shared_limit", "tensor_core", "launchable", "ok", "status", "reason", "error",
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
    signature, constexprs, attrs = fam.signature_fn(cr.DTYPES["bf16"], fam.configs_fn()[0])
    assert signature["x_ptr"] == "*bf16" and "x_ptr" in attrs
    for unit_stride in ("sxc", "swc", "syk"):
        assert signature[unit_stride] == "constexpr" and constexprs[unit_stride] == 1
    assert signature["sxh"] == "i32" and attrs["sxh"] == [["tt.divisibility", 16]]
    assert signature["H"] == "i32" and "H" not in attrs  # 56 is not a multiple of 16
    assert constexprs["BLOCK_M"] == 128 and constexprs["INPUT_PRECISION"] == "ieee"
    assert signature["alpha"] == "fp32"  # floats are never specialized


def test_subset_brackets_the_config_space():
    configs = cr.gemm_tile_configs()
    subset = [cr.config_name(c) for c in cr.representative_configs(configs)]
    assert 2 <= len(subset) < len(configs)
    assert subset[0] == cr.config_name(configs[0])
    smallest = min(configs, key=lambda c: c.kwargs["BLOCK_M"] * c.kwargs["BLOCK_N"] * c.kwargs["BLOCK_K"])
    assert cr.config_name(smallest) in subset
