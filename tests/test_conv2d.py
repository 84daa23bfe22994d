"""Forward conv2d: tritonconv.conv2d and torch.ops.tritonconv.conv2d against F.conv2d.

Every comparison is against F.conv2d computed in float64 on the same (already
rounded) inputs, by relative error with a per-dtype tolerance (conftest.TOL).
Kernel outputs are poisoned with NaN before the launch (conftest), so an output
element the kernel never writes fails the finiteness check.

The router sends each problem to the most specialised forward family that
accepts it (depthwise, small-C, 1x1 GEMM, ..., the general implicit GEMM), so
the hand-picked cases run twice: as routed (both entry points), and forced onto
every family that accepts them. They cover the edges: block boundaries under
the interpreter (implicit / small-C / 1x1: BLOCK_M=64, BLOCK_N=32, BLOCK_K=16;
depthwise: 32 pixels x 16 channels), C=3, depthwise, strides, dilation, 'same'.
A property-based test at the end covers combinations.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Tuple, Union

import pytest
import torch
import torch.nn.functional as F
import triton
import triton.language as tl
from hypothesis import HealthCheck, given
from hypothesis import strategies as st

import tritonconv
from tritonconv import reference, spec
from tritonconv.kernels import router
from tritonconv.kernels._common import mma
from conftest import CUDA, DEVICE, DTYPES, assert_matches, property_settings, rel_err, tol

IntPair = Union[int, Tuple[int, int]]


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


@dataclass(frozen=True)
class Case:
    """One conv problem: input (N, C, H, W), weight (K, C/groups, R, S)."""

    N: int
    C: int
    H: int
    W: int
    K: int
    R: int
    S: int
    stride: IntPair = 1
    padding: Union[str, IntPair] = 0
    dilation: IntPair = 1
    groups: int = 1
    bias: bool = True

    def kwargs(self):
        return dict(stride=self.stride, padding=self.padding, dilation=self.dilation, groups=self.groups)


def make_inputs(case: Case, dtype=torch.float32, device=DEVICE):
    x = torch.randn(case.N, case.C, case.H, case.W, dtype=dtype, device=device)
    w = torch.randn(case.K, case.C // case.groups, case.R, case.S, dtype=dtype, device=device)
    b = torch.randn(case.K, dtype=dtype, device=device) if case.bias else None
    return x, w, b


def f64(t):
    return None if t is None else t.to(torch.float64)


def reference_conv(x, w, b, case: Case):
    """F.conv2d in float64 on the same inputs."""
    return F.conv2d(f64(x), f64(w), f64(b), **case.kwargs())


def run_functional(x, w, b, case: Case):
    return tritonconv.conv2d(x, w, b, **case.kwargs())


def run_op(x, w, b, case: Case):
    """The registered op takes aten's conv2d schema: int lists, symmetric int padding."""
    assert not isinstance(case.padding, str), "the op has no padding strings; use run_functional"
    return torch.ops.tritonconv.conv2d(
        x, w, b, list(_pair(case.stride)), list(_pair(case.padding)), list(_pair(case.dilation)), case.groups
    )


ENTRY_POINTS = {"functional": run_functional, "op": run_op}


def same_layout(out: torch.Tensor, ref: torch.Tensor) -> None:
    """out is laid out in memory like ref (strides of size-1 dims don't matter).

    An empty tensor has no layout to compare (F.conv2d's N = 0 output is always
    contiguous on CPU, whatever the inputs' layout), so only its shape is checked.
    """
    assert out.shape == ref.shape
    if ref.numel() == 0:
        return
    for fmt in (torch.contiguous_format, torch.channels_last):
        if ref.dim() == 4:
            assert out.is_contiguous(memory_format=fmt) == ref.is_contiguous(memory_format=fmt), (
                f"is_contiguous({fmt}) differs: out strides {out.stride()}, F.conv2d strides {ref.stride()}"
            )
    out_s = [s for s, n in zip(out.stride(), out.shape) if n > 1]
    ref_s = [s for s, n in zip(ref.stride(), ref.shape) if n > 1]
    assert out_s == ref_s, f"out strides {out.stride()} != F.conv2d strides {ref.stride()} for shape {tuple(ref.shape)}"


def problem_of(case: Case) -> spec.Conv2dProblem:
    """The problem the op sees (shapes only: meta tensors)."""
    x = torch.empty(case.N, case.C, case.H, case.W, device="meta")
    w = torch.empty(case.K, case.C // case.groups, case.R, case.S, device="meta")
    if case.padding == "same":  # the functional API pads the extra row / column itself
        before, after = spec.resolve_padding("same", (case.R, case.S), (1, 1), _pair(case.dilation))
        x = torch.empty(x.shape[0], case.C, case.H + after[0] - before[0], case.W + after[1] - before[1], device="meta")
        return spec.conv2d_problem(x, w, None, case.stride, before, case.dilation, case.groups)
    return spec.conv2d_problem(x, w, None, **case.kwargs())


def families_of(case: Case):
    return router.candidates(router.FORWARD, problem_of(case))


def family_params(cases: dict):
    """(case, family) for every forward family that accepts each case."""
    return [
        pytest.param(case, family, id=f"{name}-{family}")
        for name, case in cases.items()
        for family in families_of(case)
    ]


def one_case_per_family(cases: dict):
    """(case, family) with, for each forward family, the first case it accepts."""
    params = []
    for family in router.FORWARD:
        for name, case in cases.items():
            if family in families_of(case):
                params.append(pytest.param(case, family, id=f"{family}-{name}"))
                break
    return params


class forced_family:
    """Pin the router to ``family`` and check that family's launcher really ran."""

    def __init__(self, monkeypatch, family: str):
        accepts, launcher = router.FORWARD[family]
        self.calls = 0

        def spy(*args, **kwargs):
            self.calls += 1
            return launcher(*args, **kwargs)

        monkeypatch.setitem(router.FORWARD, family, (accepts, spy))
        self.family, self.force = family, router.force(family)

    def __enter__(self):
        self.force.__enter__()
        return self

    def __exit__(self, *exc):
        self.force.__exit__(*exc)
        if exc[0] is None:
            assert self.calls >= 1, f"family {self.family!r} was forced but never launched"


# --------------------------------------------------------------------------- the article's example

ARTICLE = Case(N=4, C=3, H=5, W=5, K=16, R=3, S=3, stride=2, padding=1, bias=True)

ARTICLE_IMPLS = {
    "functional": run_functional,
    "op": run_op,
    "im2col": lambda x, w, b, c: reference.conv2d_im2col(x, w, b, **c.kwargs()),
    "unfold": lambda x, w, b, c: reference.conv2d_unfold(x, w, b, **c.kwargs()),
}


@pytest.mark.parametrize("impl", list(ARTICLE_IMPLS))
def test_article_example(impl):
    """Batch 4, 3 -> 16 channels, 5x5 input, 3x3 kernel, padding 1, stride 2, with bias."""
    x, w, b = make_inputs(ARTICLE)
    out = ARTICLE_IMPLS[impl](x, w, b, ARTICLE)
    assert out.shape == (4, 16, 3, 3)
    assert_matches(out, reference_conv(x, w, b, ARTICLE), torch.float32)


# --------------------------------------------------------------------------- hand-picked problems

CASES = {
    "all_ones": Case(1, 1, 1, 1, 1, 1, 1),
    "primes": Case(2, 5, 7, 11, 13, 3, 5, padding=(1, 2)),
    "C17_K33_over_blocks": Case(2, 17, 6, 6, 33, 3, 3, padding=1),
    "C33_reduction_remainder": Case(2, 33, 5, 5, 8, 3, 3, padding=1),
    "Cg8_RSC72": Case(2, 8, 6, 6, 9, 3, 3, padding=1),  # the widest small-C problem
    "Cg9_RSC81": Case(2, 9, 6, 6, 9, 3, 3, padding=1),  # one channel past it
    "C64_deep_reduction": Case(1, 64, 4, 5, 10, 3, 3, padding=1),  # R*S*C = 576, few pixels
    "grouped_deep_reduction": Case(1, 120, 4, 4, 6, 3, 3, groups=2),  # R*S*C/groups = 540
    "M65_over_block_m": Case(1, 4, 5, 13, 8, 1, 1),
    "M147_three_m_tiles": Case(3, 5, 9, 9, 7, 3, 3),
    "K65_three_n_tiles": Case(1, 16, 4, 4, 65, 1, 1),
    "1x1_C17_K33_M65": Case(1, 17, 5, 13, 33, 1, 1),
    "1x1_grouped_dilated": Case(2, 12, 5, 5, 9, 1, 1, dilation=2, groups=3),
    "1x1_padded": Case(1, 17, 4, 4, 6, 1, 1, padding=1),  # border pixels are pure bias
    "1x1_stride2": Case(2, 18, 7, 7, 6, 1, 1, stride=2),
    "C3_stem_7x7_s2": Case(2, 3, 15, 15, 8, 7, 7, stride=2, padding=3),
    "depthwise": Case(2, 8, 7, 7, 8, 3, 3, padding=1, groups=8),
    "depthwise_multiplier2": Case(2, 6, 7, 7, 12, 3, 3, padding=1, groups=6),
    "depthwise_5x5_s2": Case(1, 5, 9, 9, 10, 5, 5, stride=2, padding=2, groups=5),
    "depthwise_C17_M33": Case(1, 17, 3, 11, 17, 3, 3, padding=1, groups=17),  # past 16 channels, 32 pixels
    "depthwise_9x9_81_taps": Case(1, 4, 10, 10, 4, 9, 9, padding=4, groups=4),
    "depthwise_10x9_90_taps": Case(1, 4, 10, 10, 4, 10, 9, padding=4, groups=4),
    "depthwise_dilated_per_dim": Case(1, 4, 9, 7, 4, 3, 3, stride=(2, 1), padding=(1, 2), dilation=(2, 1), groups=4),
    "grouped": Case(2, 12, 6, 6, 18, 3, 3, padding=1, groups=3),
    "grouped_over_blocks": Case(1, 34, 5, 5, 66, 3, 3, padding=1, groups=2),
    "stride3_kernel1": Case(2, 4, 10, 10, 6, 1, 1, stride=3),
    "stride_3x4_kernel2": Case(2, 4, 11, 11, 6, 2, 2, stride=(3, 4)),
    "dilation2_padding2": Case(2, 4, 9, 9, 6, 3, 3, padding=2, dilation=2),
    "dilation_per_dim": Case(1, 3, 10, 12, 5, 3, 3, padding=(1, 3), dilation=(2, 3)),
    "stride_pad_dil_per_dim": Case(2, 4, 9, 8, 6, 3, 2, stride=(1, 2), padding=(2, 0), dilation=(1, 2)),
    "stride_pad_dil_per_dim_C20": Case(1, 20, 9, 8, 6, 3, 2, stride=(1, 2), padding=(2, 0), dilation=(1, 2)),
    "padding_wider_than_kernel": Case(1, 3, 4, 4, 5, 2, 2, padding=3),
    "kernel_equals_input": Case(2, 6, 5, 7, 4, 5, 7),
    "height_one": Case(2, 3, 1, 9, 4, 1, 3, padding=(0, 1)),
    "no_bias": Case(2, 5, 6, 6, 7, 3, 3, padding=1, bias=False),
    "no_bias_C20": Case(2, 20, 6, 6, 7, 3, 3, padding=1, bias=False),
    "no_bias_grouped": Case(2, 12, 6, 6, 18, 3, 3, padding=1, groups=3, bias=False),
    "no_bias_depthwise_s2": Case(1, 8, 8, 8, 8, 3, 3, stride=2, padding=1, groups=8, bias=False),
    "no_bias_1x1": Case(2, 10, 4, 4, 7, 1, 1, bias=False),
}


@pytest.mark.parametrize("entry", list(ENTRY_POINTS))
@pytest.mark.parametrize("case", list(CASES.values()), ids=list(CASES))
def test_matches_reference(case, entry):
    """As routed: the most specialised family that accepts the problem."""
    x, w, b = make_inputs(case)
    out = ENTRY_POINTS[entry](x, w, b, case)
    assert_matches(out, reference_conv(x, w, b, case), torch.float32)


@pytest.mark.parametrize("case, family", family_params(CASES))
def test_every_family(case, family, monkeypatch):
    """Each family that accepts a problem computes it right, not only the one the router picks."""
    x, w, b = make_inputs(case)
    with forced_family(monkeypatch, family):
        out = run_functional(x, w, b, case)
    assert_matches(out, reference_conv(x, w, b, case), torch.float32)


def test_every_family_is_exercised():
    """The hand-picked cases reach every forward family the router has."""
    reached = {family for case in CASES.values() for family in families_of(case)}
    assert reached == set(router.FORWARD), f"no case for {set(router.FORWARD) - reached}"


def test_op_schema_defaults():
    """aten's schema defaults (stride 1, padding 0, dilation 1, groups 1) apply to the op."""
    x, w, b = make_inputs(Case(2, 4, 6, 6, 5, 3, 3))
    assert_matches(torch.ops.tritonconv.conv2d(x, w), F.conv2d(f64(x), f64(w)), torch.float32)
    assert_matches(torch.ops.tritonconv.conv2d(x, w, b), F.conv2d(f64(x), f64(w), f64(b)), torch.float32)


STRING_PADDING = {
    "same_odd_kernel": Case(2, 4, 7, 7, 6, 3, 3, padding="same"),
    "same_odd_kernel_dilated": Case(1, 3, 8, 8, 5, 3, 3, padding="same", dilation=2),
    "same_even_kernel": Case(2, 4, 7, 8, 6, 4, 4, padding="same"),  # pads 1 top/left, 2 bottom/right
    "same_even_1x2": Case(2, 3, 5, 6, 4, 1, 2, padding="same"),
    "same_even_dilated_asym": Case(2, 4, 9, 9, 6, 4, 2, padding="same", dilation=(1, 3)),  # (1, 2) per side
    "same_even_dilated_sym": Case(1, 3, 8, 8, 5, 2, 2, padding="same", dilation=2),  # 2x2 dilated 2 is odd
    "same_even_grouped_no_bias": Case(2, 6, 6, 6, 9, 2, 3, padding="same", groups=3, bias=False),
    "same_explicit_stride1": Case(1, 3, 6, 6, 4, 4, 3, stride=(1, 1), padding="same"),
    "valid": Case(2, 4, 7, 7, 6, 3, 3, padding="valid"),
    "valid_strided": Case(2, 4, 8, 8, 6, 3, 3, stride=2, padding="valid", bias=False),
}


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
@pytest.mark.parametrize("case", list(STRING_PADDING.values()), ids=list(STRING_PADDING))
def test_padding_strings(case, channels_last):
    """padding='same' / 'valid' (functional only: the op's schema has int padding, like aten).
    An even 'same' pads the input first; the output keeps F.conv2d's memory format."""
    x, w, b = make_inputs(case)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    out = run_functional(x, w, b, case)
    ref = reference_conv(x, w, b, case)
    if case.padding == "same":
        assert out.shape[-2:] == x.shape[-2:]
    assert_matches(out, ref, torch.float32)
    same_layout(out, F.conv2d(x, w, b, **case.kwargs()))


# --------------------------------------------------------------------------- empty and unbatched


@pytest.mark.parametrize("entry", list(ENTRY_POINTS))
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
def test_batch_zero(entry, channels_last):
    case = Case(0, 4, 6, 6, 5, 3, 3, stride=2, padding=1)
    x, w, b = make_inputs(case)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    out = ENTRY_POINTS[entry](x, w, b, case)
    ref = F.conv2d(x, w, b, **case.kwargs())
    assert out.shape == ref.shape == (0, 5, 3, 3)
    assert out.dtype == x.dtype and out.device == x.device


def test_batch_zero_on_every_forward_launcher():
    """N = 0 straight to each forward family's launcher (the router returns before them): the
    empty output, and no division by the empty problem's tile count (split-K's choice did)."""
    for C, groups in ((64, 1), (8, 8)):  # a reduction long enough for split-K; a depthwise layer
        x = torch.randn(0, C, 6, 6, device=DEVICE)
        w = torch.randn(8, C // groups, 3, 3, device=DEVICE)
        pb = spec.conv2d_problem(x, w, None, 1, 1, 1, groups)
        ran = []
        for name, (accepts, launcher) in router.FORWARD.items():
            if accepts(pb):
                out = launcher(x, w, None, pb)
                assert out.shape == (0, 8, 6, 6), name
                ran.append(name)
        assert ("splitk" in ran) == (groups == 1) and ("depthwise" in ran) == (groups == C), ran


ZERO_CHANNELS = {
    f"{name}-{'bias' if bias else 'no_bias'}": Case(2, 0, 5, 6, 4, R, S, padding=pad, groups=groups, bias=bias)
    for name, R, S, pad, groups in [("3x3", 3, 3, 1, 1), ("3x3_groups2", 3, 3, 1, 2), ("1x1", 1, 1, 0, 1)]
    for bias in (True, False)
}


@pytest.mark.parametrize("case, family", family_params(ZERO_CHANNELS))
def test_zero_input_channels(case, family, monkeypatch):
    """C = 0: an empty reduction, so the output is the bias (or zeros), shape (N, K, P, Q).

    Compared with the mathematical answer, not F.conv2d: on CPU F.conv2d returns
    a tensor of shape (N, 0, P, Q) here, dropping the K output channels.
    """
    x, w, b = make_inputs(case)
    with forced_family(monkeypatch, family):
        outs = [run_functional(x, w, b, case), run_op(x, w, b, case)]
    expected = torch.zeros(2, 4, 5, 6, dtype=torch.float64, device=DEVICE)
    if case.bias:
        expected += f64(b).view(1, -1, 1, 1)
    for out in outs:
        assert_matches(out, expected, torch.float32)


UNBATCHED = {
    "plain": Case(1, 4, 7, 6, 5, 3, 3, padding=1),
    "grouped_strided": Case(1, 6, 9, 9, 9, 3, 2, stride=2, padding=(1, 0), groups=3, bias=False),
    "same_even": Case(1, 3, 6, 7, 4, 2, 4, padding="same"),
    "valid": Case(1, 3, 6, 7, 4, 3, 3, padding="valid"),
}


@pytest.mark.parametrize("entry", list(ENTRY_POINTS))
@pytest.mark.parametrize("weight_channels_last", [False, True], ids=["w_nchw", "w_channels_last"])
@pytest.mark.parametrize("case", list(UNBATCHED.values()), ids=list(UNBATCHED))
def test_unbatched(case, entry, weight_channels_last):
    """3-D (C, H, W) input gives 3-D (K, P, Q) output, laid out as F.conv2d's."""
    if entry == "op" and isinstance(case.padding, str):
        pytest.skip("the op's schema takes int padding only (like aten.conv2d)")
    x, w, b = make_inputs(case)
    x = x[0]
    if weight_channels_last:
        w = w.to(memory_format=torch.channels_last)
    out = ENTRY_POINTS[entry](x, w, b, case)
    assert out.dim() == 3
    assert_matches(out, reference_conv(x, w, b, case), torch.float32)
    same_layout(out, F.conv2d(x, w, b, **case.kwargs()))


# --------------------------------------------------------------------------- layouts


def _layout(name: str, x: torch.Tensor, w: torch.Tensor):
    """Apply a named memory layout to (x, w), keeping their values and shapes."""
    cl = torch.channels_last
    if name == "nchw":
        return x.contiguous(), w.contiguous()
    if name == "x_channels_last":
        return x.to(memory_format=cl), w
    if name == "w_channels_last":
        return x, w.to(memory_format=cl)
    if name == "both_channels_last":
        return x.to(memory_format=cl), w.to(memory_format=cl)
    if name == "x_channel_slice":  # x[:, ::2] of a tensor with twice the channels
        big = torch.zeros(x.shape[0], 2 * x.shape[1], *x.shape[2:], dtype=x.dtype, device=x.device)
        big[:, ::2] = x
        return big[:, ::2], w
    if name == "x_spatial_slice_channels_last":  # an interior crop of a channels_last tensor
        N, C, H, W = x.shape
        big = torch.zeros(N, C, H + 3, W + 2, dtype=x.dtype, device=x.device).to(memory_format=cl)
        big[:, :, 1:-2, 2:] = x
        return big[:, :, 1:-2, 2:], w
    if name == "w_transposed":  # (K, C, R, S) as a transposed view of a (K, C, S, R) tensor
        return x, w.transpose(2, 3).contiguous().transpose(2, 3)
    if name == "x_expanded_batch":  # one image broadcast over the batch: stride 0 on N
        return x[:1].expand_as(x), w
    if name == "w_expanded":  # one value per output channel: stride 0 on C, R and S
        return x, w[:, :1, :1, :1].expand_as(w)
    raise AssertionError(name)


LAYOUTS = [
    "nchw", "x_channels_last", "w_channels_last", "both_channels_last",
    "x_channel_slice", "x_spatial_slice_channels_last", "w_transposed", "x_expanded_batch", "w_expanded",
]

# One case per forward family (as routed), plus the layouts F.conv2d finds ambiguous
# (C = 1 input, 1x1 weight), where the output's memory format must still match.
LAYOUT_CASES = {
    "implicit_strided": Case(2, 18, 7, 6, 10, 3, 3, stride=(1, 2), padding=1),
    "smallc_grouped_strided": Case(2, 6, 9, 8, 9, 3, 2, stride=(2, 1), padding=1, groups=3),
    "depthwise_multiplier2": Case(2, 6, 7, 7, 12, 3, 3, padding=1, groups=6),
    "gemm1x1": Case(2, 12, 5, 5, 6, 1, 1),
    "splitk_deep": Case(1, 64, 3, 4, 6, 3, 3, padding=1),
    "one_input_channel": Case(2, 1, 6, 6, 4, 3, 3, padding=1),
}


@pytest.mark.parametrize("entry", list(ENTRY_POINTS))
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("case", list(LAYOUT_CASES.values()), ids=list(LAYOUT_CASES))
def test_layouts(case, layout, entry):
    """Any strides in, right values out, in the memory format F.conv2d picks for that layout."""
    x, w, b = make_inputs(case)
    x, w = _layout(layout, x, w)
    out = ENTRY_POINTS[entry](x, w, b, case)
    assert_matches(out, reference_conv(x, w, b, case), torch.float32)
    same_layout(out, F.conv2d(x, w, b, **case.kwargs()))


BIAS_CASES = {
    "implicit": CASES["C17_K33_over_blocks"],
    "smallc_grouped": CASES["grouped"],
    "depthwise_multiplier2": CASES["depthwise_multiplier2"],
    "gemm1x1": CASES["1x1_C17_K33_M65"],
    "deep_reduction": CASES["C64_deep_reduction"],
}


@pytest.mark.parametrize("case, family", one_case_per_family(BIAS_CASES))
def test_strided_bias(case, family, monkeypatch):
    """A bias that is a strided view (every other element of a buffer, or a column of a
    (K, 2) parameter) is read through its stride, like any other operand."""
    x, w, _ = make_inputs(case)
    b = torch.randn(case.K, 2, device=DEVICE)[:, 0]
    assert b.stride() == (2,)
    with forced_family(monkeypatch, family):
        out = run_functional(x, w, b, case)
    assert_matches(out, reference_conv(x, w, b, case), torch.float32)


def test_layouts_did_what_they_say():
    """Guard for the layout helper itself: each layout is really the one named."""
    x, w, _ = make_inputs(LAYOUT_CASES["smallc_grouped_strided"])
    cl = torch.channels_last
    assert _layout("x_channels_last", x, w)[0].is_contiguous(memory_format=cl)
    assert _layout("w_channels_last", x, w)[1].is_contiguous(memory_format=cl)
    xs = _layout("x_channel_slice", x, w)[0]
    assert not xs.is_contiguous() and not xs.is_contiguous(memory_format=cl) and torch.equal(xs, x)
    xs = _layout("x_spatial_slice_channels_last", x, w)[0]
    assert not xs.is_contiguous() and not xs.is_contiguous(memory_format=cl) and torch.equal(xs, x)
    wt = _layout("w_transposed", x, w)[1]
    assert not wt.is_contiguous() and torch.equal(wt, w)
    assert _layout("x_expanded_batch", x, w)[0].stride(0) == 0
    assert _layout("w_expanded", x, w)[1].stride()[1:] == (0, 0, 0)


@pytest.mark.skipif(not CUDA or torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_tensors_on_a_gpu_that_is_not_the_current_one():
    """Triton launches on the current device; the router makes the tensors' device current for
    the call (as aten's device guard does for F.conv2d), and leaves the current device as it was."""
    assert torch.cuda.current_device() == 0
    case = CASES["C17_K33_over_blocks"]
    x, w, b = make_inputs(case, device="cuda:1")
    x, w = x.requires_grad_(), w.requires_grad_()
    out = run_functional(x, w, b, case)
    gy = torch.randn_like(out)
    gx, gw = torch.autograd.grad(out, (x, w), gy)
    assert torch.cuda.current_device() == 0
    assert out.device == gx.device == gw.device == x.device
    xr, wr = x.detach().double().requires_grad_(), w.detach().double().requires_grad_()
    ref = reference_conv(xr, wr, b, case)
    rx, rw = torch.autograd.grad(ref, (xr, wr), gy.double())
    assert_matches(out.detach(), ref.detach(), torch.float32)
    assert rel_err(gx, rx) < tol(torch.float32) and rel_err(gw, rw) < tol(torch.float32)


# --------------------------------------------------------------------------- dtypes

DTYPE_CASES = {  # one per forward family, as routed
    "article": ARTICLE,
    "grouped_over_blocks": CASES["grouped_over_blocks"],
    "depthwise_multiplier2": CASES["depthwise_multiplier2"],
    "1x1_C17_K33_M65": CASES["1x1_C17_K33_M65"],
    "C64_deep_reduction": CASES["C64_deep_reduction"],
}


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
@pytest.mark.parametrize("case", list(DTYPE_CASES.values()), ids=list(DTYPE_CASES))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_dtypes(dtype, case, channels_last):
    """Output dtype is the input dtype; values within the dtype's tolerance of fp64."""
    x, w, b = make_inputs(case, dtype)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    out = run_functional(x, w, b, case)
    assert_matches(out, reference_conv(x, w, b, case), dtype)
    same_layout(out, F.conv2d(x, w, b, **case.kwargs()))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_output_layout_of_float64_on_cuda_is_contiguous(dtype):
    """aten's CUDA conv returns float64 contiguous whatever the inputs' layout (cuDNN's NHWC is
    off for it; an H100 showed it, 2026-11-26), and channels_last for the other dtypes; on the CPU
    it follows the input. Fake CUDA tensors: this runs without a GPU."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        for device in ("cuda", "cpu"):
            x = torch.empty(2, 4, 5, 5, dtype=dtype, device=device)
            x_cl = torch.empty(2, 5, 5, 4, dtype=dtype, device=device).permute(0, 3, 1, 2)  # channels_last
            w = torch.empty(3, 4, 3, 3, dtype=dtype, device=device)
            nchw = device == "cuda" and dtype == torch.float64
            assert spec.output_memory_format(x_cl, w) == (torch.contiguous_format if nchw else torch.channels_last)
            assert spec.output_memory_format(x, w) == torch.contiguous_format


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_dtypes_op(dtype):
    case = CASES["C17_K33_over_blocks"]
    x, w, b = make_inputs(case, dtype)
    out = run_op(x, w, b, case)
    assert_matches(out, reference_conv(x, w, b, case), dtype)


@triton.jit
def _dot16(a_ptr, b_ptr, c_ptr, WIDEN: tl.constexpr):
    """One 16x16x16 tile: through ``mma`` with WIDEN, else a bare tl.dot."""
    o = tl.arange(0, 16)
    a = tl.load(a_ptr + o[:, None] * 16 + o[None, :])
    b = tl.load(b_ptr + o[:, None] * 16 + o[None, :])
    acc = tl.zeros((16, 16), dtype=tl.float32)
    if WIDEN:
        acc = mma(a, b, acc, "ieee", tl.float32)
    else:
        acc = tl.dot(a, b, acc, out_dtype=tl.float32)
    tl.store(c_ptr + o[:, None] * 16 + o[None, :], acc)


@pytest.mark.skipif(CUDA, reason="the interpreter's bf16 tl.dot")
def test_bf16_widening_is_still_needed():
    """``_common.WIDEN_BF16_DOT`` works around the interpreter's bf16 tl.dot, which multiplies
    the raw bits (triton-lang/triton#11584). A bare bf16 tl.dot there is still wrong, and the
    same kernel with ``mma`` is right. When the first assertion fails, upstream fixed it: the
    widening can go."""
    torch.manual_seed(0)
    a, b = torch.randn(16, 16).bfloat16(), torch.randn(16, 16).bfloat16()
    ref = a.double() @ b.double()  # bf16 products are exact in fp32: only the fp32 sum rounds
    errs = {}
    for widen in (False, True):
        c = torch.full((16, 16), float("nan"))
        _dot16[(1,)](a, b, c, WIDEN=widen)
        errs[widen] = rel_err(c, ref)
    assert not errs[False] <= 1e-3, f"a bare bf16 tl.dot is now right under the interpreter ({errs[False]:.1e})"
    assert errs[True] < 1e-6, errs[True]


# --------------------------------------------------------------------------- property-based


@st.composite
def conv_problems(draw):
    """A random valid conv problem, small enough for the interpreter."""
    groups = draw(st.sampled_from([1, 1, 2, 3]))
    Cg = draw(st.sampled_from([1, 2, 3, 5, 9, 12]))  # both sides of the small-C limit (8)
    Kg = draw(st.integers(1, 5))
    R, S = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    dilation = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    padding_kind = draw(st.sampled_from(["int", "pair", "same", "valid"]))
    stride = (1, 1) if padding_kind == "same" else (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    if padding_kind == "int":
        padding = draw(st.integers(0, 2))
    elif padding_kind == "pair":
        padding = (draw(st.integers(0, 3)), draw(st.integers(0, 3)))
    else:
        padding = padding_kind
    pad = _pair(padding) if not isinstance(padding, str) else (0, 0)
    eff = (dilation[0] * (R - 1) + 1, dilation[1] * (S - 1) + 1)
    H = max(1, eff[0] - 2 * pad[0]) + draw(st.integers(0, 6))
    W = max(1, eff[1] - 2 * pad[1]) + draw(st.integers(0, 6))
    case = Case(
        N=draw(st.integers(0, 3)), C=Cg * groups, H=H, W=W, K=Kg * groups, R=R, S=S,
        stride=stride, padding=padding, dilation=dilation, groups=groups, bias=draw(st.booleans()),
    )
    return case


@property_settings(40, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(
    case=conv_problems(),
    unbatched=st.booleans(),
    x_channels_last=st.booleans(),
    w_channels_last=st.booleans(),
    use_op=st.booleans(),
    dtype=st.sampled_from([torch.float32, torch.float64]),
    family=st.sampled_from([None, *router.FORWARD]),
    seed=st.integers(0, 2**31 - 1),
)
def test_property_random_problems(case, unbatched, x_channels_last, w_channels_last, use_op, dtype, family, seed):
    """Random valid problems, as routed or forced onto a family (where that family accepts them)."""
    if unbatched:
        case = replace(case, N=1)
    torch.manual_seed(seed)
    x, w, b = make_inputs(case, dtype)
    if x_channels_last:
        x = x.to(memory_format=torch.channels_last)
    if w_channels_last:
        w = w.to(memory_format=torch.channels_last)
    if unbatched:
        x = x[0]
    run = run_op if use_op and not isinstance(case.padding, str) else run_functional
    with router.force(family):
        out = run(x, w, b, case)
    ref = reference_conv(x, w, b, case)
    if ref.numel() == 0:
        assert out.shape == ref.shape and out.dtype == dtype
    else:
        assert_matches(out, ref, dtype)
    same_layout(out, F.conv2d(x, w, b, **case.kwargs()))
