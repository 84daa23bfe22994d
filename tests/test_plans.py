"""Launch plans (tritonconv.plans): a replayed call computes what the full path computes, for
every kernel family and direction, on new data and on views at other offsets; a call whose
launches don't explain its output keeps the full path. Under the interpreter the plans replay
through JITFunction.run; on CUDA through the compiled kernels."""

from __future__ import annotations

import functools
import inspect
import sys
import types
import warnings

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given
from hypothesis import strategies as st

from conftest import DEVICE, assert_matches, property_settings, rel_err, tol
import tritonconv
from tritonconv import plans, spec
from tritonconv.kernels import router


@pytest.fixture(autouse=True)
def plans_on():
    plans.clear()
    with plans.enabled_as(True):
        yield
    plans.clear()


def _plans_of(direction, family):
    return [v for k, v in plans._plans.items() if k[0] == direction and k[3] == family]


def _randn(shape, dtype, channels_last=False, scale=1.0):
    t = (torch.randn(shape, device=DEVICE) * scale).to(dtype)
    return t.contiguous(memory_format=torch.channels_last) if channels_last and t.dim() == 4 else t


def _forbid(monkeypatch, table, family):
    """Make ``family``'s launcher fail if called: a replayed call must not reach it."""
    accepts, _ = table[family]

    def launcher(*args, **kwargs):
        raise AssertionError(f"{family}'s launcher ran: the plan was not replayed")

    monkeypatch.setitem(table, family, (accepts, launcher))


# (family, N, C, H, W, K, R, stride, padding, groups, dtype, channels_last)
FORWARD_CASES = [
    ("implicit", 2, 8, 9, 9, 16, 3, 1, 1, 1, torch.float32, False),
    ("implicit_tma", 2, 16, 7, 7, 16, 3, 2, 1, 1, torch.float16, True),
    ("tap_tma", 2, 16, 8, 8, 16, 3, 1, 1, 1, torch.float16, True),
    ("splitk", 1, 64, 4, 4, 16, 3, 1, 1, 1, torch.float32, False),
    ("smallc", 2, 3, 11, 11, 8, 3, 2, 1, 1, torch.float32, False),
    ("smallc_rows", 2, 3, 11, 11, 8, 7, 2, 3, 1, torch.float32, True),  # padded copies (derive steps)
    ("gemm1x1", 2, 16, 6, 6, 8, 1, 1, 0, 1, torch.float32, False),
    ("gemm1x1", 2, 16, 6, 6, 8, 1, 2, 0, 1, torch.float32, True),  # strided: x's view is every other pixel
    ("gemm1x1_tma", 2, 16, 6, 6, 16, 1, 1, 0, 1, torch.float16, True),
    ("depthwise", 2, 8, 7, 7, 8, 3, 1, 1, 8, torch.float32, False),
]


def _case_id(case) -> str:
    return case if isinstance(case, str) else case[0] + (f"-stride-{case[7]}" if case[7] != 1 else "")


@pytest.mark.parametrize("case", FORWARD_CASES, ids=_case_id)
def test_forward_replay_matches_reference(case, monkeypatch):
    family, N, C, H, W, K, R, stride, pad, groups, dtype, cl = case
    args = ([stride, stride], [pad, pad], [1, 1], groups)
    x = _randn((N, C, H, W), dtype, cl)
    w = _randn((K, C // groups, R, R), dtype, cl, scale=(C // groups * R * R) ** -0.5)
    bias = _randn((K,), dtype)
    with router.force(family):
        first = torch.ops.tritonconv.conv2d(x, w, bias, *args)
    assert_matches(first, F.conv2d(x.double(), w.double(), bias.double(), *args), dtype)
    made = _plans_of("forward", family)
    assert len(made) == 1 and isinstance(made[0], plans.Plan), f"no plan for {family}"

    # new data, same key: the plan runs it, not the launcher
    x2, w2, b2 = torch.randn_like(x), torch.randn_like(w) * (C // groups * R * R) ** -0.5, torch.randn_like(bias)
    _forbid(monkeypatch, router.FORWARD, family)
    with router.force(family):
        second = torch.ops.tritonconv.conv2d(x2, w2, b2, *args)
    assert second.stride() == first.stride()
    assert_matches(second, F.conv2d(x2.double(), w2.double(), b2.double(), *args), dtype)


def test_replay_reads_views_at_other_offsets(monkeypatch):
    """Same sizes and strides, another place in a larger storage: the plan rebuilds its views
    from the new tensor's offset."""
    args = ([1, 1], [1, 1], [1, 1], 1)
    x = torch.randn(2, 8, 9, 9, device=DEVICE)
    w = torch.randn(16, 8, 3, 3, device=DEVICE) / 8
    with router.force("implicit"):
        torch.ops.tritonconv.conv2d(x, w, None, *args)
    big = torch.randn(6, 8, 9, 9, device=DEVICE)
    x2 = big[4:6]  # offset 4*8*9*9 elements: 16-byte aligned like x
    wbig = torch.randn(48, 8, 3, 3, device=DEVICE) / 8
    w2 = wbig[32:48]
    _forbid(monkeypatch, router.FORWARD, "implicit")
    with router.force("implicit"):
        out = torch.ops.tritonconv.conv2d(x2, w2, None, *args)
    assert_matches(out, F.conv2d(x2.double(), w2.double(), None, *args), torch.float32)


def test_a_key_change_makes_a_new_plan():
    x = torch.randn(2, 8, 9, 9, device=DEVICE)
    w = torch.randn(16, 8, 3, 3, device=DEVICE)
    torch.ops.tritonconv.conv2d(x, w, None, [1, 1], [1, 1], [1, 1], 1)
    torch.ops.tritonconv.conv2d(x, w, None, [1, 1], [0, 0], [1, 1], 1)  # another padding
    x_cl = x.contiguous(memory_format=torch.channels_last)  # other strides
    out = torch.ops.tritonconv.conv2d(x_cl, w, None, [1, 1], [1, 1], [1, 1], 1)
    assert plans.stats()["plans"] == 3
    assert_matches(out, F.conv2d(x.double(), w.double(), None, 1, 1), torch.float32)


def test_the_tf32_switch_is_part_of_the_key(monkeypatch):
    """An fp32 call's kernels take TF32 or not from cuDNN's allow_tf32 as it is at the call (as
    F.conv2d does): a plan recorded under one setting must not replay under the other. On the
    CPU no call takes TF32, so the router's and the launcher's reading of it are stood in for."""
    from tritonconv.kernels import fprop

    monkeypatch.setattr(router, "input_precision_for",
                        lambda t: "tf32" if t.dtype == torch.float32 and torch.backends.cudnn.allow_tf32 else "ieee")
    read = []  # the setting each full-path launch read
    monkeypatch.setattr(fprop, "input_precision_for",
                        lambda t: read.append(torch.backends.cudnn.allow_tf32) or "ieee")
    x = torch.randn(2, 8, 9, 9, device=DEVICE)
    w = torch.randn(16, 8, 3, 3, device=DEVICE)
    outs = []
    with router.force("implicit"):
        for allow in (True, True, False, False, True):
            with torch.backends.cudnn.flags(allow_tf32=allow):
                outs.append(torch.ops.tritonconv.conv2d(x, w, None, [1, 1], [1, 1], [1, 1], 1))
    assert read == [True, False], "each setting's first call takes the full path; the rest replay"
    assert plans.stats()["plans"] == 2
    for out in outs:
        assert_matches(out, F.conv2d(x.double(), w.double(), None, 1, 1), torch.float32)


def test_a_new_leaky_relu_slope_is_not_replayed_with_the_old_one():
    """The slope is a kernel argument, not a tensor: a plan holds the recorded call's value, so
    each slope gets its own plan (a replay had computed slope 0.5 with 0.01: rel err 0.42)."""
    x = torch.randn(2, 8, 9, 9, device=DEVICE)
    w = torch.randn(16, 8, 3, 3, device=DEVICE)
    for slope in (0.01, 0.01, 0.5, 0.5):
        out = tritonconv.conv2d(x, w, None, 1, 1, activation="leaky_relu", negative_slope=slope)
        assert_matches(out, F.leaky_relu(F.conv2d(x.double(), w.double(), None, 1, 1), slope), torch.float32)
    assert plans.stats()["plans"] == 2


def test_plans_are_kept_for_the_most_recently_used_keys(monkeypatch):
    """Past MAX_PLANS keys the least recently used plan goes; its key, met again, records anew."""
    monkeypatch.setattr(plans, "MAX_PLANS", 2)
    w = torch.randn(8, 4, 3, 3, device=DEVICE)
    xs = [torch.randn(1, 4, h, 5, device=DEVICE) for h in (5, 6, 7)]  # three keys
    for x in xs:
        torch.ops.tritonconv.conv2d(x, w, None, [1, 1], [1, 1], [1, 1], 1)
    assert len(plans._plans) == 2
    assert [k[1].H for k in plans._plans] == [6, 7], "the oldest (H=5) went"
    out = torch.ops.tritonconv.conv2d(xs[0], w, None, [1, 1], [1, 1], [1, 1], 1)
    assert [k[1].H for k in plans._plans] == [7, 5]
    assert_matches(out, F.conv2d(xs[0].double(), w.double(), None, 1, 1), torch.float32)
    torch.ops.tritonconv.conv2d(xs[2], w, None, [1, 1], [1, 1], [1, 1], 1)  # H=7 used: the newest now
    torch.ops.tritonconv.conv2d(xs[1], w, None, [1, 1], [1, 1], [1, 1], 1)
    assert [k[1].H for k in plans._plans] == [7, 6], "the least recently used (H=5) went"


def test_a_call_rerouted_after_a_drop_keeps_its_slope(monkeypatch):
    """Where a family is dropped, the call goes to the next one with its scalars, and the dropped
    family's plans for the problem go too (a re-routed call's plan once held no slope, and the
    next slope replayed the first: max abs err 3.98)."""
    x, w = torch.randn(1, 4, 5, 5, device=DEVICE), torch.randn(4, 4, 3, 3, device=DEVICE)
    real, fail = plans.same_bits, [0]
    # one plan check a call: with Triton 3.6's launcher unrolled, a plan whose check fails is built
    # once more through Triton's own (plans.build), which would take the second failure
    # (H200, Triton 3.6, 67e2351: the router then saw the same bits and dropped nothing)
    monkeypatch.setattr(plans, "DIRECT", False)

    def same_bits(a, b):  # the next two checks disagree: a family whose two calls differ
        if fail[0] > 0:
            fail[0] -= 1
            return False
        return real(a, b)

    monkeypatch.setattr(plans, "same_bits", same_bits)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", router.UnstableKernelWarning)
        for slope in (0.1, 0.5):
            fail[0] = 2
            y = tritonconv.conv2d(x, w, None, 1, 1, activation="leaky_relu", negative_slope=slope)
            assert_matches(y, F.leaky_relu(F.conv2d(x.double(), w.double(), None, 1, 1), slope), torch.float32)
    assert len(next(iter(router.dropped().values()))) == 2
    assert [k[6] for k, p in plans._plans.items() if isinstance(p, plans.Plan)] == [(0.5,)]


def test_output_not_explained_by_the_launches_keeps_the_full_path(monkeypatch):
    """A launcher that changes its output with a torch op after its kernel: the replay would
    miss it, so the check refuses the plan and every call runs the launcher."""
    accepts, launch = router.FORWARD["implicit"]
    calls = []

    def launcher(*a, **k):
        calls.append(1)
        return launch(*a, **k).add_(1.0)

    monkeypatch.setitem(router.FORWARD, "implicit", (accepts, launcher))
    args = ([1, 1], [1, 1], [1, 1], 1)
    for _ in range(3):
        x = torch.randn(2, 8, 9, 9, device=DEVICE)
        w = torch.randn(16, 8, 3, 3, device=DEVICE) / 8
        with router.force("implicit"):
            out = torch.ops.tritonconv.conv2d(x, w, None, *args)
        assert_matches(out, F.conv2d(x.double(), w.double(), None, *args) + 1.0, torch.float32)
    # the first call runs the launcher twice: its plan failed the check, and a second full call
    # (same bits: deterministic) tells a shortcut the plan can't take from a race
    assert len(calls) == 4
    assert plans.stats() == {"plans": 0, "unplannable": 1}


def test_tensors_sharing_a_storage_keep_the_full_path():
    buf = torch.randn(16 * 8 * 9 + 16, device=DEVICE)
    w = buf[: 16 * 8 * 9].view(16, 8, 3, 3)
    bias = buf[16 * 8 * 9:]
    x = torch.randn(2, 8, 9, 9, device=DEVICE)
    for _ in range(2):
        out = torch.ops.tritonconv.conv2d(x, w, bias, [1, 1], [1, 1], [1, 1], 1)
        assert_matches(out, F.conv2d(x.double(), w.double(), bias.double(), 1, 1), torch.float32)
    assert plans.stats() == {"plans": 0, "unplannable": 1}


def test_replayed_calls_still_report_their_family():
    x = torch.randn(2, 8, 9, 9, device=DEVICE)
    w = torch.randn(16, 8, 3, 3, device=DEVICE)
    with router.recording() as seen:
        for _ in range(3):
            torch.ops.tritonconv.conv2d(x, w, None, [1, 1], [1, 1], [1, 1], 1)
    assert len(seen) == 3 and len(set(seen)) == 1, seen


def test_plans_off_makes_none():
    x = torch.randn(2, 8, 9, 9, device=DEVICE)
    w = torch.randn(16, 8, 3, 3, device=DEVICE)
    with plans.enabled_as(False):
        for _ in range(2):
            torch.ops.tritonconv.conv2d(x, w, None, [1, 1], [1, 1], [1, 1], 1)
    assert plans.stats() == {"plans": 0, "unplannable": 0}


# Backward: which families replay is a fact of their launchers (a torch reduction or a weight
# repack outside the kernels keeps the full path); either way both calls must be right.
@pytest.mark.parametrize("family", ["implicit", "tap_tma", "depthwise"])
def test_grad_input_twice(family):
    groups = 8 if family == "depthwise" else 1
    dtype, cl = (torch.float16, True) if family == "tap_tma" else (torch.float32, False)
    args = ([1, 1], [1, 1], [1, 1], groups)
    for _ in range(2):
        dy = _randn((2, 16, 8, 8), dtype, cl)
        w = _randn((16, 16 // groups, 3, 3), dtype, cl, scale=0.2)
        with router.force(family):
            gx = torch.ops.tritonconv.conv2d_grad_input(dy, w, [2, 16, 8, 8], *args)
        ref = torch.nn.grad.conv2d_input((2, 16, 8, 8), w.double(), dy.double(), 1, 1, 1, groups)
        assert rel_err(gx, ref) <= tol(dtype)


@pytest.mark.parametrize("family", ["implicit", "tap_tma", "gemm1x1", "gemm1x1_tma", "depthwise"])
def test_grad_weight_twice(family):
    groups = 8 if family == "depthwise" else 1
    R = 1 if family.startswith("gemm1x1") else 3
    pad = R // 2
    dtype, cl = (torch.float16, True) if family in ("tap_tma", "gemm1x1_tma") else (torch.float32, False)
    args = ([1, 1], [pad, pad], [1, 1], groups)
    for _ in range(2):
        dy = _randn((2, 16, 8, 8), dtype, cl)
        x = _randn((2, 16, 8, 8), dtype, cl)
        with router.force(family):
            gw = torch.ops.tritonconv.conv2d_grad_weight(dy, x, [16, 16 // groups, R, R], *args)
        ref = torch.nn.grad.conv2d_weight(x.double(), (16, 16 // groups, R, R), dy.double(), 1, pad, 1, groups)
        assert rel_err(gw, ref) <= tol(dtype)


@pytest.mark.parametrize("family", ["implicit", "gemm1x1", "depthwise", "smallc_pad"])
def test_split_weight_grads_replay(family, monkeypatch):
    """A wgrad split over the pixels sums its partials with a kernel (``wgrad.sum_partials``), not
    torch: the plan replays both launches (and smallc_pad's padded copy of x), and a second call
    with new tensors comes back right without the launcher."""
    groups = 16 if family == "depthwise" else 1
    C = 3 if family == "smallc_pad" else 16
    R = 1 if family == "gemm1x1" else 3
    args = ([1, 1], [R // 2, R // 2], [1, 1], groups)
    shape = (16, C // groups, R, R)

    # the fewest images that still split (wgrad.choose_split_k: chunks of 1024 pixels or more;
    # the depthwise kernel's own rule wants more): the interpreter runs each call three times
    N = 4 if family == "depthwise" else 2

    def tensors():
        return _randn((N, 16, 32, 32), torch.float32, True), _randn((N, C, 32, 32), torch.float32, True)

    from tritonconv.kernels import depthwise, smallc, wgrad

    for module in (wgrad, depthwise, smallc):  # a GPU's SMs: the split that fills them (none for one "SM")
        monkeypatch.setattr(module, "sm_count", lambda device: 132)
    dy, x = tensors()
    with router.force(family):
        torch.ops.tritonconv.conv2d_grad_weight(dy, x, list(shape), *args)
    (plan,) = _plans_of("weight_grad", family)
    assert isinstance(plan, plans.Plan), plan.why
    launches = [step for step in plan.launches if type(step) is not plans._Derive]
    assert len(launches) == 2, "expected the split kernel and the sum of its partials"
    _forbid(monkeypatch, router.WEIGHT_GRAD, family)
    dy, x = tensors()
    with router.force(family):
        gw = torch.ops.tritonconv.conv2d_grad_weight(dy, x, list(shape), *args)
    ref = torch.nn.grad.conv2d_weight(x.double(), shape, dy.double(), 1, R // 2, 1, groups)
    assert rel_err(gw, ref) <= tol(torch.float32)


def test_an_empty_launch_hook_chain_is_no_hook():
    """Triton 3.6-3.9 default their launch hooks to an empty HookChain, never None: taking that for
    a profiler's hook refused every plan on the H100 (2026-11-26). Only a chain with calls counts."""
    knobs = pytest.importorskip("triton.knobs")
    chain = knobs.HookChain()
    assert not plans._hook_set(chain) and not plans._hook_set(None)
    chain.add(lambda metadata: None)
    assert plans._hook_set(chain)
    assert plans._hook_set(lambda metadata: None)  # a plain function, as older Triton took
    rt = knobs.runtime
    assert not plans._hook_set(rt.launch_enter_hook) and not plans._hook_set(rt.launch_exit_hook)


def test_keys_without_a_plan_say_why(monkeypatch):
    accepts, launch = router.FORWARD["implicit"]
    monkeypatch.setitem(router.FORWARD, "implicit", (accepts, lambda *a, **k: launch(*a, **k).add_(1.0)))
    x = torch.randn(2, 8, 9, 9, device=DEVICE)
    w = torch.randn(16, 8, 3, 3, device=DEVICE)
    with router.force("implicit"):
        torch.ops.tritonconv.conv2d(x, w, None, [1, 1], [1, 1], [1, 1], 1)
    assert plans.reasons() == {"the replay's output differs from the call's": 1}


def _unstable(monkeypatch, table, family):
    """Make ``family`` give other bits on every call, as a kernel with a race would."""
    accepts, launch = table[family]
    calls = iter(range(1, 1000))
    monkeypatch.setitem(table, family, (accepts, lambda *a, **k: launch(*a, **k).add_(next(calls) * 1e-3)))


def test_a_family_that_is_not_deterministic_is_dropped(monkeypatch):
    """Two identical calls with different bits: the router warns, drops the family for the problem
    and answers from the next candidate, which then gets the plan."""
    x, w = _randn((2, 16, 9, 9), torch.float32, True), _randn((16, 16, 3, 3), torch.float32, True, scale=0.2)
    args = ([1, 1], [1, 1], [1, 1], 1)
    pb = spec.conv2d_problem(x, w, None, *args)
    names = router.routed_candidates(router.FORWARD, "forward", pb, (x, w, None, None))
    if len(names) < 2:
        pytest.skip(f"one candidate family here: {names}")
    first, second = names[:2]  # tap_tma, implicit_tma (untimed: the tests turn tuning off)
    _unstable(monkeypatch, router.FORWARD, first)
    ref = F.conv2d(x.double(), w.double(), None, *args)
    with pytest.warns(router.UnstableKernelWarning, match=f"{first} kernels gave different results") as caught:
        with router.recording() as ran:
            y = torch.ops.tritonconv.conv2d(x, w, None, *args)
    # the warning points at the caller's line (Triton 3.6's interpreter warns too, inside the block)
    (unstable,) = [w for w in caught if issubclass(w.category, router.UnstableKernelWarning)]
    assert unstable.filename == __file__
    assert_matches(y, ref, torch.float32)
    assert ran == [("forward", second)]  # the family that gave the answer, once
    assert list(router.dropped().values()) == [{first}]
    (plan,) = plans._plans.values()
    assert isinstance(plan, plans.Plan) and plan.family == second, getattr(plan, "why", plan)
    _forbid(monkeypatch, router.FORWARD, first)
    with router.recording() as ran, warnings.catch_warnings():  # the plan answers, with no warning
        warnings.simplefilter("error", router.UnstableKernelWarning)
        y = torch.ops.tritonconv.conv2d(x, w, None, *args)
    assert ran == [("forward", second)]
    assert_matches(y, ref, torch.float32)


def test_a_dropped_family_supersedes_nothing(monkeypatch):
    """The depthwise forward supersedes the others that take a depthwise layer with one channel a
    group (``router.SUPERSEDES_DEPTHWISE``): dropped for not being deterministic, it leaves those
    to answer, rather than no family at all."""
    x, w = _randn((2, 8, 7, 7), torch.float32, True), _randn((8, 1, 3, 3), torch.float32)
    args = ([1, 1], [1, 1], [1, 1], 8)
    pb = spec.conv2d_problem(x, w, None, *args)
    assert router.routed_candidates(router.FORWARD, "forward", pb, (x, w, None, None)) == ["depthwise"]
    _unstable(monkeypatch, router.FORWARD, "depthwise")
    with pytest.warns(router.UnstableKernelWarning, match="depthwise kernels gave different results"):
        with router.recording() as ran:
            y = torch.ops.tritonconv.conv2d(x, w, None, *args)
    assert_matches(y, F.conv2d(x.double(), w.double(), None, *args), torch.float32)
    assert ran == [("forward", "smallc")]
    assert list(router.dropped().values()) == [{"depthwise"}]


def test_a_forced_family_that_is_not_deterministic_raises(monkeypatch):
    """Forced, the family stays (it is what the caller asked for), so each call checks it again
    and raises rather than answer."""
    x, w = _randn((2, 16, 9, 9), torch.float32, True), _randn((16, 16, 3, 3), torch.float32, True)
    _unstable(monkeypatch, router.FORWARD, "tap_tma")
    for _ in range(2):
        with router.force("tap_tma"), pytest.raises(RuntimeError, match="forced tap_tma family gave different"):
            torch.ops.tritonconv.conv2d(x, w, None, [1, 1], [1, 1], [1, 1], 1)


def _kernels_of(plan):
    """The names of the kernels a plan launches, in order (its derive steps left out): from the
    plan, since a compiled launch's runner (a CUDA plan's) has no name."""
    assert len(plan.kernels) == sum(type(step) is not plans._Derive for step in plan.launches)
    return list(plan.kernels)


def test_work_before_the_kernels_reruns_for_each_call(monkeypatch):
    """Work a launcher does before its kernels: smallc_pad's channel-padded copies of x and w, in
    torch (``plans.derive``), dgrad tap_tma's per-phase weights, by a kernel of their own (one
    launch per phase). The replay redoes both for new tensors; a stale copy from the recorded
    call would give the first call's answer."""
    x = _randn((2, 3, 11, 11), torch.float32, True)
    w = _randn((8, 3, 3, 3), torch.float32, True, scale=0.2)
    dy = _randn((2, 16, 4, 4), torch.float16, True)
    wt = _randn((16, 16, 3, 3), torch.float16, True, scale=0.1)
    args = ([2, 2], [1, 1], [1, 1], 1)
    with router.force("smallc_pad"):
        torch.ops.tritonconv.conv2d(x, w, None, *args)
    with router.force("tap_tma"):
        torch.ops.tritonconv.conv2d_grad_input(dy, wt, [2, 16, 8, 8], *args)
    made = _plans_of("forward", "smallc_pad") + _plans_of("input_grad", "tap_tma")
    assert len(made) == 2 and all(isinstance(p, plans.Plan) for p in made), [getattr(p, "why", p) for p in made]
    assert any(type(step) is plans._Derive for step in made[0].launches)
    assert _kernels_of(made[1]).count("phase_weight_kernel") == 1  # stride 2: four phases, one launch

    _forbid(monkeypatch, router.FORWARD, "smallc_pad")
    _forbid(monkeypatch, router.INPUT_GRAD, "tap_tma")
    x2, w2 = torch.randn_like(x), torch.randn_like(w) * 0.2
    dy2, wt2 = torch.randn_like(dy), torch.randn_like(wt) * 0.1
    with router.force("smallc_pad"):
        y = torch.ops.tritonconv.conv2d(x2, w2, None, *args)
    with router.force("tap_tma"):
        gx = torch.ops.tritonconv.conv2d_grad_input(dy2, wt2, [2, 16, 8, 8], *args)
    assert_matches(y, F.conv2d(x2.double(), w2.double(), None, *args), torch.float32)
    ref = torch.nn.grad.conv2d_input((2, 16, 8, 8), wt2.double(), dy2.double(), 2, 1, 1, 1)
    assert rel_err(gx, ref) <= tol(torch.float16)


@pytest.mark.parametrize("family", ["tap_tma", "gemm1x1", "tap_tma_phased"])
@pytest.mark.parametrize("with_bias", [False, True])
def test_unreached_phases_replay(with_bias, family, monkeypatch):
    """A 1x1 stride-2 dgrad (and conv_transpose2d, with its bias) leaves three of four phases of
    dx to a fill kernel: the plan replays it into a poisoned output, so the second call, with new
    tensors, must come back right without the launcher. (gemm1x1 reads w transposed in place;
    tap_tma_phased stores the three phases from its one kernel, w read in place.)"""
    def call(x, w, b):
        return tritonconv.conv_transpose2d(x, w, b, 2, 0, 1) if with_bias else \
            torch.ops.tritonconv.conv2d_grad_input(x, w, [2, 32, 8, 8], [2, 2], [0, 0], [1, 1], 1)

    def reference(x, w, b):
        return F.conv_transpose2d(x.double(), w.double(), None if b is None else b.double(), 2, 0, 1)

    x, w = _randn((2, 16, 4, 4), torch.float16, True), _randn((16, 32, 1, 1), torch.float16, True)
    b = _randn((32,), torch.float16) if with_bias else None
    with router.force(family):
        call(x, w, b)
    (plan,) = _plans_of("input_grad", family)
    assert isinstance(plan, plans.Plan), plan.why
    _forbid(monkeypatch, router.INPUT_GRAD, family)
    x2, w2 = torch.randn_like(x), torch.randn_like(w)
    b2 = torch.randn_like(b) if with_bias else None
    with router.force(family):
        y = call(x2, w2, b2)
    assert rel_err(y, reference(x2, w2, b2)) <= tol(torch.float16)


def test_flipped_copy_replays_from_the_new_weight(monkeypatch):
    """tap_tma_copy builds a flipped copy of w each call (no cache block open) and runs the forward
    kernel on it: the plan replays both, so a call with a new weight reads its copy, not the first."""
    def grad_input(dy, w):
        with router.force("tap_tma_copy"):
            return torch.ops.tritonconv.conv2d_grad_input(dy, w, [2, 16, 6, 6], [1, 1], [1, 1], [1, 1], 1)

    dy = _randn((2, 16, 6, 6), torch.float16, True)
    grad_input(dy, _randn((16, 16, 3, 3), torch.float16, True, scale=0.1))
    (plan,) = _plans_of("input_grad", "tap_tma_copy")
    assert isinstance(plan, plans.Plan), plan.why
    tma = DEVICE.type == "cpu" or torch.cuda.get_device_capability()[0] >= 9  # else the implicit dgrad, no copy
    assert _kernels_of(plan) == (["phase_weight_kernel", "fprop_tap_tma_kernel"] if tma else ["dgrad_kernel"])
    _forbid(monkeypatch, router.INPUT_GRAD, "tap_tma_copy")
    dy2, w2 = torch.randn_like(dy), _randn((16, 16, 3, 3), torch.float16, True, scale=0.1)
    gx = grad_input(dy2, w2)
    ref = torch.nn.grad.conv2d_input((2, 16, 6, 6), w2.double(), dy2.double(), 1, 1, 1, 1)
    assert rel_err(gx, ref) <= tol(torch.float16)


def test_kernels_inside_a_derive_step_are_its_own(monkeypatch):
    """With the phase-weight cache on (tritonconv.nn.ConvTranspose2d in inference) dgrad tap_tma
    takes its phase weights from a derive step, which on a cache miss launches their kernels
    itself: the plan reruns the step and must not record those launches as well."""
    from tritonconv.kernels import dgrad

    def grad_input(dy, w):
        with dgrad.cached_phase_weights(), router.force("tap_tma"):
            return torch.ops.tritonconv.conv2d_grad_input(dy, w, [2, 16, 8, 8], [2, 2], [1, 1], [1, 1], 1)

    dy = _randn((2, 16, 4, 4), torch.float16, True)
    grad_input(dy, _randn((16, 16, 3, 3), torch.float16, True, scale=0.1))
    (plan,) = _plans_of("input_grad", "tap_tma")
    assert isinstance(plan, plans.Plan), plan.why
    assert any(type(step) is plans._Derive for step in plan.launches)
    assert "phase_weight_kernel" not in _kernels_of(plan)
    _forbid(monkeypatch, router.INPUT_GRAD, "tap_tma")
    w2 = _randn((16, 16, 3, 3), torch.float16, True, scale=0.1)  # a new weight: a cache miss, rebuilt
    gx = grad_input(dy, w2)
    ref = torch.nn.grad.conv2d_input((2, 16, 8, 8), w2.double(), dy.double(), 2, 1, 1, 1)
    assert rel_err(gx, ref) <= tol(torch.float16)


class _Captured:
    """Stands in for a plan's runner: keeps each launch's arguments instead of running them."""

    def __init__(self):
        self.calls = []

    def run(self, *args, **kwargs):  # the interpreted form: runner.run(*vals, grid=..., warmup=False)
        self.calls.append(args)

    def __call__(self, *args):  # the compiled form: run(g0, g1, g2, stream, function, packed, 3 x None, *vals)
        self.calls.append(args[9:])


def _call_for(case):
    """(direction, family, the tensors as the router gets them, the call) for a compiled-replay case."""
    if case == "dgrad tap_tma, stride 2":  # phase views of dx: arguments at offsets into the output
        dy = _randn((2, 16, 4, 4), torch.float16, True)
        w = _randn((16, 16, 3, 3), torch.float16, True)
        return "input_grad", "tap_tma", (dy, w, None), lambda dy, w: torch.ops.tritonconv.conv2d_grad_input(
            dy, w, [2, 16, 8, 8], [2, 2], [1, 1], [1, 1], 1)
    if case == "dgrad tap_tma, 1x1 stride 2":  # three phases no tap reaches: filled by a kernel
        dy = _randn((2, 16, 4, 4), torch.float16, True)
        w = _randn((16, 32, 1, 1), torch.float16, True)
        return "input_grad", "tap_tma", (dy, w, None), lambda dy, w: torch.ops.tritonconv.conv2d_grad_input(
            dy, w, [2, 32, 8, 8], [2, 2], [0, 0], [1, 1], 1)
    if case == "dgrad gemm1x1, 1x1 stride 2":  # w read transposed: a pointer into w with w's strides swapped
        dy = _randn((2, 16, 4, 4), torch.float16, True)
        w = _randn((16, 32, 1, 1), torch.float16, True)
        return "input_grad", "gemm1x1", (dy, w, None), lambda dy, w: torch.ops.tritonconv.conv2d_grad_input(
            dy, w, [2, 32, 8, 8], [2, 2], [0, 0], [1, 1], 1)
    family, N, C, H, W, K, R, stride, pad, groups, dtype, cl = case
    x = _randn((N, C, H, W), dtype, cl)
    w = _randn((K, C // groups, R, R), dtype, cl)
    args = ([stride, stride], [pad, pad], [1, 1], groups)
    return "forward", family, (x, w, None, None), lambda x, w: torch.ops.tritonconv.conv2d(x, w, None, *args)


# derive steps: smallc_pad's and smallc_rows' padded copies of x and w (a 3x3 here, rows of 16
# columns; FORWARD_CASES' 7x7 has 32), dgrad tap_tma's phase weights
COMPILED_CASES = FORWARD_CASES + [("smallc_pad", 2, 3, 11, 11, 8, 3, 2, 1, 1, torch.float32, True),
                                  ("smallc_rows", 2, 3, 11, 11, 8, 3, 1, 1, 1, torch.float16, True),
                                  "dgrad tap_tma, stride 2", "dgrad tap_tma, 1x1 stride 2",
                                  "dgrad gemm1x1, 1x1 stride 2"]


@pytest.mark.skipif(DEVICE.type == "cuda", reason="on CUDA the plans are compiled, and the tests above run them")
@pytest.mark.parametrize("case", COMPILED_CASES, ids=_case_id)
def test_compiled_replay_passes_the_addresses_of_the_interpreted_views(case, monkeypatch):
    """A compiled launch gets each pointer as an int and each descriptor on an ``_Address``:
    they must be exactly where the views the interpreter gets start, for inputs at other
    offsets too. (The GPU runs of the tests above check the compiled replay end to end.)"""
    direction, family, tensors, call = _call_for(case)
    x, w = tensors[0], tensors[1]
    with router.force(family):
        call(x, w)
    (plan,) = _plans_of(direction, family)
    assert isinstance(plan, plans.Plan), plan.why
    interpreted, compiled = _Captured(), _Captured()
    twin = plans.Plan(tuple(step if type(step) is plans._Derive else ((compiled, "function", "packed"),) + step[1:]
                            for step in plan.launches),
                      plan.new, plan.out, plan.device, plan.family, None, (), False)
    plan.launches = tuple(step if type(step) is plans._Derive else (interpreted,) + step[1:]
                          for step in plan.launches)
    dtype = x.dtype
    stream = type("Active", (), {"get_current_stream": lambda self, index: 0})()
    monkeypatch.setattr(plans, "driver", type("Driver", (), {"active": stream})())
    monkeypatch.setattr(torch.cuda, "current_device", lambda: plan.device.index)
    # inputs at an offset into larger storages, as a model's views would be
    xs = torch.zeros(x.numel() * 3, dtype=dtype)
    x2 = xs[x.numel() // 16 * 16 + 16:].as_strided(x.shape, x.stride())
    x2.copy_(x)
    derived = []  # each replay's derived tensors (the list its derive steps fill)
    real_run = plans._Derive.run

    def run(step, spaces):
        into = spaces[2]
        if not derived or derived[-1] is not into:
            derived.append(into)
        real_run(step, spaces)

    monkeypatch.setattr(plans._Derive, "run", run)
    out_i, out_c = plan.replay((x2, w) + tensors[2:]), twin.replay((x2, w) + tensors[2:])
    assert out_c.shape == out_i.shape and out_c.stride() == out_i.stride()
    n_launches = sum(type(step) is not plans._Derive for step in plan.launches)
    assert len(compiled.calls) == len(interpreted.calls) == n_launches
    pairs = [(out_i, out_c)] + (list(zip(*derived)) if derived else [])

    def same_place(view, address):
        """The two replays share the inputs; each has its own output and derived tensors
        (compared by offset into them), and scratch (not compared)."""
        storage = view.untyped_storage().data_ptr()
        for mine, twins in pairs:
            if storage == mine.untyped_storage().data_ptr():
                return address - twins.untyped_storage().data_ptr() == view.data_ptr() - storage
        if storage in (xs.untyped_storage().data_ptr(), w.untyped_storage().data_ptr()):
            return address == view.data_ptr()
        return None

    placed = []
    for vals_i, vals_c in zip(interpreted.calls, compiled.calls):
        assert len(vals_i) == len(vals_c)
        for v_i, v_c in zip(vals_i, vals_c):
            if isinstance(v_i, torch.Tensor):
                assert type(v_c) is int
                placed.append(same_place(v_i, v_c))
            elif plans._is_descriptor(v_i):
                assert isinstance(v_c.base, plans._Address)
                assert (v_c.shape, v_c.strides, v_c.block_shape) == (v_i.shape, v_i.strides, v_i.block_shape)
                placed.append(same_place(v_i.base, v_c.base.data_ptr()))
            else:
                assert v_c == v_i or (v_c is None and v_i is None)
    assert False not in placed
    assert placed.count(True) >= 3  # x, w and the output at least


class PyCUtensorMap:
    """Stands in for Triton 3.6's encoded TMA descriptor (``_unroll`` knows it by its type's name)."""

    def __init__(self, address, meta):
        self.key = (address, meta)

    def __eq__(self, other):
        return type(other) is PyCUtensorMap and other.key == self.key

    __hash__ = None


def _encode(arg, metadata):
    """Triton 3.6's make_tensordesc_arg, with a stand-in for the map it encodes through the driver."""
    if metadata is None:  # a descriptor the kernel did not lower to TMA: pointer, shape, strides...
        return [arg.base, *arg.shape, *arg.strides, arg.padding == "nan", *arg.shape, *arg.strides]
    return [PyCUtensorMap(arg.base.data_ptr(), metadata), *arg.shape, *arg.strides]


# A launcher module of Triton 3.6's shape, for a Triton that is not 3.6 (CI's): the C launcher's
# leading argument format, the descriptor wrapper as a closure named ``inner`` over the C launcher,
# the descriptors' positions and their metadata, and CudaLauncher.__call__'s signature.
_LAUNCHER_36 = """
_BASE_ARGS_FORMAT = "iiiKKppOOOOOO"
_BASE_ARGS_FORMAT_LEN = len(_BASE_ARGS_FORMAT)


def wrap_handle_tensordesc(launcher, signature, tensordesc_meta):
    tensordesc_indices = {i for i, sig in enumerate(signature.values()) if sig.startswith("tensordesc")}
    if not tensordesc_indices:
        return launcher

    def inner(*args):
        expanded, k = list(args[:_BASE_ARGS_FORMAT_LEN]), 0
        for i, arg in enumerate(args[_BASE_ARGS_FORMAT_LEN:]):
            if i in tensordesc_indices:
                expanded += make_tensordesc_arg(arg, tensordesc_meta[k])
                k += 1
            else:
                expanded.append(arg)
        return launcher(*expanded)

    return inner


class CudaLauncher:
    def __call__(self, gridX, gridY, gridZ, stream, function, *args):
        self.launch(gridX, gridY, gridZ, stream, function, self.launch_cooperative_grid, self.launch_pdl, None,
                    None, *args)
"""


def _launcher_36(monkeypatch, c_launch, signature, metas, source=None):
    """A CudaLauncher of Triton 3.6's shape around ``c_launch``: Triton's own where 3.6 is
    installed (the GPU machine's), its make_tensordesc_arg swapped for ``_encode``; else, or
    where ``source`` is given, one built from ``_LAUNCHER_36`` (or ``source``)."""
    try:
        from triton.backends.nvidia import driver as module
    except ImportError:  # pragma: no cover
        module = None
    if source is not None or getattr(module, "_BASE_ARGS_FORMAT", None) != "iiiKKppOOOOOO":
        source = source or _LAUNCHER_36
        name = f"tritonconv_test_launcher_36_{abs(hash(source))}"
        module = sys.modules.get(name)
        if module is None:
            module = types.ModuleType(name)
            exec(compile(source, f"<{name}>", "exec"), module.__dict__)
            monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.setattr(module, "make_tensordesc_arg", _encode, raising=False)
    launcher = object.__new__(module.CudaLauncher)
    launcher.__dict__.update(launch=module.wrap_handle_tensordesc(c_launch, signature, metas), num_ctas=1,
                             global_scratch_size=0, global_scratch_align=1, profile_scratch_size=0,
                             profile_scratch_align=1, launch_cooperative_grid="coop", launch_pdl="pdl")
    return launcher


def _append(into, i, *args):
    into.append((i, args))


def _captured_launches(case, monkeypatch):
    """A case's plan (interpreted) and, per launch, the argument values a compiled replay passes."""
    direction, family, tensors, call = _call_for(case)
    with router.force(family):
        call(tensors[0], tensors[1])
    (plan,) = _plans_of(direction, family)
    assert isinstance(plan, plans.Plan), plan.why
    captured = _Captured()
    twin = plans.Plan(tuple(step if type(step) is plans._Derive else ((captured, 7, ("packed",)),) + step[1:]
                            for step in plan.launches),
                      plan.new, plan.out, plan.device, plan.family, None, (), False)
    stream = type("Active", (), {"get_current_stream": lambda self, index: 0})()
    monkeypatch.setattr(plans, "driver", type("Driver", (), {"active": stream})())
    monkeypatch.setattr(torch.cuda, "current_device", lambda: plan.device.index)
    twin.replay(tensors[:2] + tensors[2:])
    steps = [step for step in plan.launches if type(step) is not plans._Derive]
    assert len(captured.calls) == len(steps)
    return plan, tensors, list(zip(steps, captured.calls))


def _unroll_all(plan, launches, got, monkeypatch, source=None):
    """Per launch of ``plan``: Triton 3.6's launcher around a recording C launcher, its ``_unroll``ed
    twin (None where not unrolled) and its number of descriptors."""
    pairs = []
    for i, ((_, grid, values, fills), vals) in enumerate(launches):
        descs = [pos for pos, v in enumerate(vals) if plans._is_descriptor(v)]
        signature = {f"a{pos}": "tensordesc<fp16[16, 16]>" if pos in descs else "i32" for pos in range(len(vals))}
        # where a launch has several descriptors, every second one not lowered to TMA
        metas = [None if k % 2 else ("tma", i, k) for k in range(len(descs))]
        # a partial, not a Python function: it stands in for the compiled C launcher
        launcher = _launcher_36(monkeypatch, functools.partial(_append, got, i), signature, metas, source)
        compiled = type("Compiled", (), {"run": launcher, "function": 7 + i, "packed_metadata": ("packed", i)})()
        pairs.append((launcher, plans._unroll(compiled, grid, _call_values(vals, fills), list(fills)), len(descs)))
    return pairs


def _call_values(vals, fills):
    """A compiled replay's values as the recorded call had them: its pointers as things with a data_ptr()."""
    pointers = {pos for pos, _, template in fills if template is None}
    return [plans._Address(v) if pos in pointers else v for pos, v in enumerate(vals)]


@pytest.mark.skipif(DEVICE.type == "cuda", reason="the compiled plans on a GPU check their own unrolling")
@pytest.mark.parametrize("case", COMPILED_CASES, ids=_case_id)
def test_an_unrolled_launch_passes_what_triton_3_6_s_launcher_passes(case, monkeypatch):
    """Where Triton's launcher has 3.6's shape, a plan keeps each launch as the C launcher's own
    argument list (``_Direct``) and fills in pointers and encoded descriptors per replay: the C
    launcher must get what Triton's CudaLauncher and descriptor wrapper would give it, replay
    after replay, with each descriptor encoded once per address."""
    plan, tensors, launches = _captured_launches(case, monkeypatch)
    got, steps = [], []
    unrolled = _unroll_all(plan, launches, got, monkeypatch)
    pairs = iter(unrolled)
    directs = []
    for step in plan.launches:
        if type(step) is plans._Derive:  # torch work before a launch (a padded copy): replayed as it is
            steps.append(step)
            continue
        launcher, direct, _ = next(pairs)
        assert isinstance(direct, plans._Direct), "Triton 3.6's launcher not unrolled"
        directs.append(direct)
        _, grid, values, fills = step
        steps.append(((launcher, direct.args[4], direct.args[9]), grid, values, fills))  # Triton's path
        steps.append((direct, grid, values, fills))  # then the unrolled one, into the same tensors
    both = plans.Plan(tuple(steps), plan.new, plan.out, plan.device, plan.family, None, (), False)
    xs = torch.zeros(tensors[0].numel() * 3, dtype=tensors[0].dtype)

    def replay(offset):
        got.clear()
        x2 = xs[offset:].as_strided(tensors[0].shape, tensors[0].stride())
        x2.copy_(tensors[0])
        both.replay((x2,) + tuple(tensors[1:]))
        assert [i for i, _ in got] == [i for i in range(len(launches)) for _ in range(2)]
        for (_, theirs), (_, mine) in zip(got[0::2], got[1::2]):
            assert len(mine) == len(theirs)
            for a, b in zip(mine, theirs):
                b = b.data_ptr() if isinstance(b, plans._Address) else b
                assert a == b or (a is None and b is None), (a, b)

    for offset in (0, 16, 0):  # the input at two addresses, then the first again
        replay(offset)
    input_maps = [(src[0], maps) for direct in directs for _, src, maps in direct.slots
                  if maps is not None and src[0][0] == plans._IN]
    # one map per address met: x moved once, the weight never
    assert sorted({(root, len(maps.maps)) for root, maps in input_maps}) == sorted(
        {(root, 2 if root == (plans._IN, 0) else 1) for root, _ in input_maps})
    for _, maps in input_maps:  # met again: from the cache, not encoded anew
        maps.make = None
    replay(16)
    n_desc = sum(n for _, _, n in unrolled)
    lowered = sum(maps is not None for direct in directs for _, _, maps in direct.slots)
    assert (lowered > 0) == (n_desc > 0)


# Triton 3.6's launcher with what another Triton might change: the leading arguments' order, or a
# wrapper that passes one more argument than it expands
_LAUNCHER_PDL_FIRST = _LAUNCHER_36.replace("self.launch_cooperative_grid, self.launch_pdl",
                                           "self.launch_pdl, self.launch_cooperative_grid")
_LAUNCHER_ONE_MORE = _LAUNCHER_36.replace("return launcher(*expanded)", "return launcher(*expanded, None)")


@pytest.mark.skipif(DEVICE.type == "cuda", reason="the compiled plans on a GPU check their own unrolling")
def test_a_launcher_not_of_triton_3_6_s_shape_is_not_unrolled(monkeypatch):
    """Another Triton's launcher (other leading arguments, a wrapper that passes something else, a
    kernel with scratch to allocate) keeps Triton's path: ``_unroll`` gives None, not a guess."""
    case = next(c for c in FORWARD_CASES if c[0] == "gemm1x1_tma")  # two TMA descriptors
    plan, _, launches = _captured_launches(case, monkeypatch)
    (((_, grid, _, fills), vals),) = launches
    (launcher, direct, n_desc), = _unroll_all(plan, launches, [], monkeypatch)
    assert isinstance(direct, plans._Direct) and n_desc == 2
    for source in (_LAUNCHER_PDL_FIRST, _LAUNCHER_ONE_MORE):
        assert source != _LAUNCHER_36
        ((_, direct, _),) = _unroll_all(plan, launches, [], monkeypatch, source)
        assert direct is None
    call_values = _call_values(vals, fills)
    compiled = type("Compiled", (), {"run": launcher, "function": 7, "packed_metadata": ("packed",)})()
    launcher.global_scratch_size = 256  # CudaLauncher would allocate it per launch
    assert plans._unroll(compiled, grid, call_values, list(fills)) is None
    launcher.global_scratch_size = 0
    module = inspect.getmodule(type(launcher))
    monkeypatch.setattr(module, "_BASE_ARGS_FORMAT", "iiiKKppOOOOOOO")  # not 3.6's leading arguments
    assert plans._unroll(compiled, grid, call_values, list(fills)) is None


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32, torch.float64])
def test_an_address_is_where_the_view_starts(dtype):
    """``_address`` (what a compiled replay passes) against the view the interpreter gets, for views
    at offsets into a call's tensor and into a fresh buffer, in element sizes 2, 4 and 8."""
    x = torch.randn(4, 6, 5, 7, device=DEVICE).to(dtype)[1:]  # an input that is itself a view
    out = torch.empty(3, 40, device=DEVICE, dtype=dtype)
    roots = plans._Roots([x])
    views = [x, x[1:, 2:], x[:, :, 3::2, 1:], out, out[1:, 5:], out.t()[7:]]
    sources = [roots.source(v) for v in views]
    new_x = torch.randn(9, 6, 5, 7, device=DEVICE).to(dtype)[5:]  # same sizes and strides, another offset
    bufs = [torch.empty(n, dtype=dt, device=DEVICE) for n, dt in roots.new]
    for src in sources:
        assert plans._address(src, ([new_x], bufs, [])) == plans._materialise(src, ([new_x], bufs, [])).data_ptr()
    assert len({plans._address(src, ([new_x], bufs, [])) for src in sources}) == len(views)


@pytest.mark.parametrize("case", COMPILED_CASES, ids=_case_id)
def test_a_plan_holds_none_of_the_call_s_tensors(case):
    """A plan outlives the call that recorded it: it must not keep that call's tensors alive (a
    derive step's function closing over the input would hold a whole activation)."""
    import gc
    import weakref

    direction, family, tensors, call = _call_for(case)
    with router.force(family):
        out = call(tensors[0], tensors[1])
    assert any(isinstance(p, plans.Plan) for p in plans._plans.values())
    refs = [weakref.ref(t) for t in (tensors[0], tensors[1], out)]
    del tensors, out, call
    gc.collect()
    assert all(r() is None for r in refs), "a plan keeps a tensor of the call that recorded it"


# --------------------------------------------------------------------------- property-based

ACTIVATIONS_FOR_PLANS = [None, "relu", "leaky_relu", "gelu", "sigmoid"]


@st.composite
def call_sequences(draw):
    """One small conv problem, then a few calls on it: each with new data, and some with another
    epilogue, slope, bias or residual, a view at another offset, or channels_last input: what
    a plan's key must tell apart (or its replay must read afresh)."""
    groups = draw(st.sampled_from([1, 2]))
    C, K = groups * draw(st.sampled_from([2, 8, 16])), groups * draw(st.sampled_from([4, 8]))
    R = draw(st.sampled_from([1, 3]))
    stride, pad = draw(st.integers(1, 2)), draw(st.integers(0, R // 2))
    N, H, W = draw(st.integers(1, 2)), draw(st.integers(R, 7)), draw(st.integers(R, 7))
    fields = {
        "activation": st.sampled_from(ACTIVATIONS_FOR_PLANS),
        "slope": st.sampled_from([0.01, 0.2, 0.5]),
        "bias": st.booleans(),
        "residual": st.booleans(),
        "offset": st.sampled_from([0, 8, 1]),  # elements: 8 keeps fp16 and fp32 16-byte aligned
        "channels_last": st.booleans(),
        "dtype": st.sampled_from([torch.float32, torch.float16]),
    }
    # a base call, then calls that each change one field of it (or none): the same plan key but
    # for that field, so a key that misses a field replays the wrong plan
    base = draw(st.fixed_dictionaries(fields))
    if draw(st.booleans()):  # half the sequences on the one epilogue with a value of its own
        base["activation"] = "leaky_relu"
    calls = [base]
    for name in draw(st.lists(st.sampled_from([None, *fields]), min_size=1, max_size=4)):
        calls.append(dict(base) if name is None else {**base, name: draw(fields[name])})
    return (N, C, H, W, K, R, stride, pad, groups), calls


@property_settings(25, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(problem_calls=call_sequences(), seed=st.integers(0, 2**31 - 1))
def test_property_replays_match_the_reference_call_after_call(problem_calls, seed):
    """Every call of a sequence on one problem, with plans on, against float64 F.conv2d, then
    its backward: a replay that reused anything of the recorded call's but its key (a value,
    a view's offset) shows up as a wrong output."""
    (N, C, H, W, K, R, stride, pad, groups), calls = problem_calls
    torch.manual_seed(seed)
    for call in calls:
        dtype = call["dtype"]
        store = torch.randn(N * C * H * W + call["offset"], device=DEVICE).to(dtype)
        x = store[call["offset"]:].view(N, C, H, W)
        if call["channels_last"]:
            x = x.contiguous(memory_format=torch.channels_last)
        w = (torch.randn(K, C // groups, R, R, device=DEVICE) * (C // groups * R * R) ** -0.5).to(dtype)
        b = torch.randn(K, device=DEVICE).to(dtype) if call["bias"] else None
        ref = F.conv2d(x.double(), w.double(), None if b is None else b.double(), stride, pad, 1, groups)
        res = torch.randn(ref.shape, device=DEVICE).to(dtype) if call["residual"] else None
        act, slope = call["activation"], call["slope"]
        out = tritonconv.conv2d(x, w, b, stride, pad, 1, groups, activation=act, residual=res,
                                negative_slope=slope)
        if res is not None:
            ref = ref + res.double()
        ref = {None: lambda t: t, "relu": F.relu, "leaky_relu": lambda t: F.leaky_relu(t, slope),
               "gelu": F.gelu, "sigmoid": torch.sigmoid}[act](ref)
        assert_matches(out, ref, dtype)
        # the backward's plans (dgrad, wgrad) on the same sequence
        dy = torch.randn(ref.shape, device=DEVICE).to(dtype)
        gx = torch.ops.tritonconv.conv2d_grad_input(dy, w, list(x.shape), [stride] * 2, [pad] * 2, [1, 1], groups)
        gw = torch.ops.tritonconv.conv2d_grad_weight(dy, x, list(w.shape), [stride] * 2, [pad] * 2, [1, 1], groups)
        xr, wr = x.double().requires_grad_(), w.double().requires_grad_()
        rx, rw = torch.autograd.grad(F.conv2d(xr, wr, None, stride, pad, 1, groups), (xr, wr), dy.double())
        assert rel_err(gx, rx) < tol(dtype) and rel_err(gw, rw) < tol(dtype)
    assert plans.stats()["plans"] >= 1


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_a_call_met_before_skips_validation_and_routing(dtype, monkeypatch):
    """The op layer keys a call by its op, arguments and tensors (``ops._memo``); met again, the
    call replays the plan the router chose for it without building and checking the problem or
    routing it. Other arguments are another key: validated, and refused where wrong."""
    from tritonconv import ops

    x = _randn((2, 8, 9, 9), dtype)
    w = _randn((16, 8, 3, 3), dtype, scale=0.1)
    b = _randn((16,), dtype)
    args = ([1, 1], [1, 1], [1, 1], 1)
    y = tritonconv.functional.conv2d(x, w, b, 1, 1)
    dy = torch.randn_like(y)
    torch.ops.tritonconv.conv2d_grad_input(dy, w, list(x.shape), *args)
    torch.ops.tritonconv.conv2d_grad_weight(dy, x, list(w.shape), *args)
    assert len(plans.memo) == 3 and plans.stats()["plans"] == 3

    def full_path(*a, **k):
        raise AssertionError("the full path ran for a call met before")

    for name in ("_problem", "_check_grad_output"):
        monkeypatch.setattr(ops, name, full_path)
    monkeypatch.setattr(spec, "problem_from_shapes", full_path)
    monkeypatch.setattr(router, "_route", full_path)
    x2, w2, b2, dy2 = torch.randn_like(x), torch.randn_like(w) * 0.1, torch.randn_like(b), torch.randn_like(dy)
    x64, w64, dy64 = x2.double(), w2.double(), dy2.double()
    assert_matches(tritonconv.functional.conv2d(x2, w2, b2, 1, 1), F.conv2d(x64, w64, b2.double(), 1, 1), dtype)
    assert_matches(torch.ops.tritonconv.conv2d_grad_input(dy2, w2, list(x.shape), *args),
                   torch.nn.grad.conv2d_input(x.shape, w64, dy64, 1, 1), dtype)
    assert_matches(torch.ops.tritonconv.conv2d_grad_weight(dy2, x2, list(w.shape), *args),
                   torch.nn.grad.conv2d_weight(x64, w.shape, dy64, 1, 1), dtype)
    monkeypatch.undo()

    # the same tensors with other arguments: validated as any new call
    with pytest.raises(spec.ConvValueError):
        tritonconv.functional.conv2d(x, w, b, 1, 1, 1, 3)  # 8 channels in 3 groups
    with pytest.raises(spec.ConvValueError):
        torch.ops.tritonconv.conv2d_grad_input(dy, w, [2, 8, 7, 7], *args)  # dy is not that input's output
    assert_matches(tritonconv.functional.conv2d(x, w, b, 1, 0),
                   F.conv2d(x.double(), w.double(), b.double(), 1, 0), dtype)


def test_tangents_are_refused_or_carried_after_a_call_met_before():
    """Inside a forward-mode AD level the memo is not used: the op still refuses tangents it has
    no formula for, and tritonconv.functional still computes the jvp."""
    import torch.autograd.forward_ad as fwAD

    x = _randn((2, 8, 9, 9), torch.float32)
    w = _randn((16, 8, 3, 3), torch.float32, scale=0.1)
    tritonconv.functional.conv2d(x, w, None, 1, 1)
    torch.ops.tritonconv.conv2d(x, w, None, [1, 1], [1, 1], [1, 1], 1)
    assert plans.memo
    t = torch.randn_like(x)
    with fwAD.dual_level():
        dual = fwAD.make_dual(x, t)
        with pytest.raises(NotImplementedError, match="forward-mode AD"):
            torch.ops.tritonconv.conv2d(dual, w, None, [1, 1], [1, 1], [1, 1], 1)
        out = tritonconv.functional.conv2d(dual, w, None, 1, 1)
        primal, tangent = fwAD.unpack_dual(out)
    assert_matches(primal, F.conv2d(x.double(), w.double(), None, 1, 1), torch.float32)
    assert_matches(tangent, F.conv2d(t.double(), w.double(), None, 1, 1), torch.float32)


def test_fused_calls_met_before_replay_with_their_own_epilogue(monkeypatch):
    """The fused op's memo key holds its activation and slope; a residual is one of its tensors.
    A call met before replays without the problem being built again."""
    from tritonconv import ops

    x = _randn((2, 8, 9, 9), torch.float32)
    w = _randn((16, 8, 3, 3), torch.float32, scale=0.1)
    b = _randn((16,), torch.float32)
    res = _randn((2, 16, 9, 9), torch.float32)
    epilogues = (("relu", 0.01), ("leaky_relu", 0.2), ("leaky_relu", 0.3))
    for first in (True, False):
        if not first:  # every epilogue met before: no problem is built
            monkeypatch.setattr(ops, "_problem", lambda *a: pytest.fail("the full path ran for a call met before"))
        for act, slope in epilogues:
            x2, res2 = torch.randn_like(x), torch.randn_like(res)
            out = tritonconv.conv2d(x2, w, b, 1, 1, activation=act, residual=res2, negative_slope=slope)
            z = F.conv2d(x2.double(), w.double(), b.double(), 1, 1) + res2.double()
            assert_matches(out, F.relu(z) if act == "relu" else F.leaky_relu(z, slope), torch.float32)
    assert len(plans.memo) == 3


def test_unbatched_inputs_and_strided_biases_take_the_full_path():
    """The router batches a 3-D input and makes a strided bias dense before keying its plan: the
    op layer makes no memo key for them (``ops._as_routed``), and every call is right."""
    w = _randn((16, 8, 3, 3), torch.float32, scale=0.1)
    b = _randn((16,), torch.float32)
    strided_b = _randn((32,), torch.float32)[::2]
    x = _randn((2, 8, 9, 9), torch.float32)
    for _ in range(2):
        x3 = torch.randn(8, 9, 9, device=DEVICE)
        assert_matches(tritonconv.conv2d(x3, w, b, 1, 1), F.conv2d(x3.double(), w.double(), b.double(), 1, 1),
                       torch.float32)
        assert_matches(tritonconv.conv2d(x, w, strided_b, 1, 1),
                       F.conv2d(x.double(), w.double(), strided_b.double(), 1, 1), torch.float32)
    assert not plans.memo


def test_a_transposed_conv_met_before_skips_its_problem(monkeypatch):
    """conv_transpose2d keys its calls too: met again, a call replays without building the
    transposed problem; another output_padding is another key, validated as any new call."""
    from tritonconv import ops

    x = _randn((2, 8, 5, 5), torch.float32)
    w = _randn((8, 4, 3, 3), torch.float32, scale=0.2)
    b = _randn((4,), torch.float32)
    tritonconv.conv_transpose2d(x, w, b, stride=2, padding=1, output_padding=1)
    assert len(plans.memo) == 1
    monkeypatch.setattr(ops, "_transpose_problem", lambda *a: pytest.fail("the full path ran for a call met before"))
    x2 = torch.randn_like(x)
    assert_matches(tritonconv.conv_transpose2d(x2, w, b, stride=2, padding=1, output_padding=1),
                   F.conv_transpose2d(x2.double(), w.double(), b.double(), 2, 1, 1), torch.float32)
    monkeypatch.undo()
    with pytest.raises(ValueError):
        tritonconv.conv_transpose2d(x, w, b, stride=2, padding=1, output_padding=2)  # not below the stride


def test_threads_calling_at_once_each_get_their_own_results():
    """Threads running convs at once (a server's workers): each call's output and gradients are
    its own, on first calls (recorded, autotuned) and replays alike. Triton's Autotuner keeps a
    call on itself between statements, and its interpreter patches triton.language for the kernel
    it runs: without ``_common.LAUNCH_LOCK`` the interpreted threads fail here."""
    import threading

    old_interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)  # switch threads often: interleave inside the launch paths
    problems = [((2, 8, 7, 7), (16, 8, 3, 3), 1, 1, 1), ((1, 4, 9, 9), (8, 4, 1, 1), 1, 0, 1),
                ((2, 8, 8, 8), (8, 1, 3, 3), 1, 1, 8), ((1, 3, 10, 10), (8, 3, 3, 3), 2, 1, 1)]
    failures = []

    def worker(index):
        g = torch.Generator(device=DEVICE).manual_seed(index)
        try:
            for rep in range(3):
                for xs, ws, stride, pad, groups in problems:
                    x = torch.randn(xs, generator=g, device=DEVICE, dtype=torch.float64)
                    if (rep + index) % 2:
                        x = x.to(memory_format=torch.channels_last)
                    w = torch.randn(ws, generator=g, device=DEVICE, dtype=torch.float64)
                    xg, wg = x.clone().requires_grad_(), w.clone().requires_grad_()
                    y = tritonconv.conv2d(xg, wg, None, stride, pad, 1, groups)
                    dy = torch.randn(y.shape, generator=g, device=DEVICE, dtype=torch.float64)
                    dx, dw = torch.autograd.grad(y, (xg, wg), dy)
                    xr, wr = x.clone().requires_grad_(), w.clone().requires_grad_()
                    ref = F.conv2d(xr, wr, None, stride, pad, 1, groups)
                    ref_dx, ref_dw = torch.autograd.grad(ref, (xr, wr), dy)
                    for name, out, want in (("y", y, ref), ("dx", dx, ref_dx), ("dw", dw, ref_dw)):
                        if not rel_err(out, want) <= tol(torch.float64):
                            failures.append((index, rep, xs, name, rel_err(out, want)))
        except Exception as err:  # noqa: BLE001  (reported by the test's thread)
            failures.append((index, f"{type(err).__name__}: {err}"))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(3)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(old_interval)
    assert not failures, failures[:5]
    assert plans.stats()["plans"] >= 3 * len(problems), plans.stats()  # the replays were planned
