"""The article's baselines (explicit im2col and nn.Unfold, each then one matmul) vs F.conv2d.

Both run in plain PyTorch, so they are checked in float64 at fp64 tolerance.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tritonconv import reference, spec
from conftest import DEVICE, assert_matches

f64 = torch.float64

# (N, C, H, W, K, R, S, conv kwargs, bias); N=None means unbatched (C, H, W) input
CASES = {
    "plain": (2, 3, 7, 7, 5, 3, 3, dict(), True),
    "article": (4, 3, 5, 5, 16, 3, 3, dict(stride=2, padding=1), True),
    "primes_no_bias": (3, 5, 11, 7, 13, 3, 5, dict(padding=(2, 1)), False),
    "grouped": (2, 6, 8, 8, 9, 3, 3, dict(padding=1, groups=3), True),
    "depthwise_multiplier": (2, 4, 7, 9, 8, 3, 3, dict(padding=1, groups=4), False),
    "strided": (2, 4, 11, 10, 6, 3, 3, dict(stride=(2, 3)), True),
    "stride_gt_kernel": (2, 4, 10, 10, 6, 1, 2, dict(stride=3), True),
    "dilated": (2, 3, 10, 11, 4, 3, 2, dict(padding=(2, 1), dilation=(2, 3)), True),
    "same_odd": (2, 3, 7, 6, 4, 3, 5, dict(padding="same"), True),
    "same_even": (2, 3, 7, 6, 4, 4, 2, dict(padding="same"), True),
    "same_even_dilated": (1, 4, 9, 8, 6, 2, 4, dict(padding="same", dilation=(3, 1), groups=2), False),
    "valid": (2, 3, 7, 6, 4, 3, 3, dict(padding="valid", stride=2), True),
    "unbatched": (None, 4, 7, 7, 6, 3, 3, dict(padding=1, groups=2), True),
    "unbatched_same_even": (None, 3, 6, 6, 2, 2, 2, dict(padding="same"), False),
    "batch_zero": (0, 3, 5, 5, 4, 3, 3, dict(padding=1), True),
}

BASELINES = {"im2col": reference.conv2d_im2col, "unfold": reference.conv2d_unfold}


def _inputs(N, C, H, W, K, R, S, kwargs, bias):
    x = torch.randn(*(() if N is None else (N,)), C, H, W, dtype=f64, device=DEVICE)
    w = torch.randn(K, C // kwargs.get("groups", 1), R, S, dtype=f64, device=DEVICE)
    b = torch.randn(K, dtype=f64, device=DEVICE) if bias else None
    return x, w, b


@pytest.mark.parametrize("baseline", list(BASELINES))
@pytest.mark.parametrize("case", list(CASES.values()), ids=list(CASES))
def test_baseline_matches_conv2d(case, baseline):
    N, C, H, W, K, R, S, kwargs, bias = case
    x, w, b = _inputs(*case)
    out = BASELINES[baseline](x, w, b, **kwargs)
    ref = F.conv2d(x, w, b, **kwargs)
    if ref.numel() == 0:
        assert out.shape == ref.shape and out.dtype == f64
    else:
        assert_matches(out, ref, f64)


@pytest.mark.parametrize("baseline", list(BASELINES))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
def test_baseline_keeps_dtype(baseline, dtype):
    x = torch.randn(2, 4, 6, 6, device=DEVICE).to(dtype)
    w = torch.randn(5, 4, 3, 3, device=DEVICE).to(dtype)
    out = BASELINES[baseline](x, w, None, padding=1)
    assert out.dtype == dtype
    assert_matches(out, F.conv2d(x.double(), w.double(), None, padding=1), dtype)


@pytest.mark.parametrize(
    "N, C, H, W, R, S, kwargs",
    [
        (2, 6, 7, 8, 3, 2, dict(stride=(2, 1), padding=1, dilation=(1, 2), groups=3)),
        (1, 4, 5, 5, 4, 4, dict(padding="same")),
        (3, 1, 4, 4, 1, 1, dict()),
    ],
    ids=["grouped_strided_dilated", "same_even", "1x1"],
)
def test_im2col_matrix(N, C, H, W, R, S, kwargs):
    """im2col is (G, N*P*Q, Cg*R*S); row (n, p, q) holds that pixel's receptive field in (c, r, s)
    order, i.e. F.unfold's columns regrouped."""
    groups = kwargs.get("groups", 1)
    x = torch.randn(N, C, H, W, dtype=f64, device=DEVICE)
    w = torch.randn(2 * groups, C // groups, R, S, dtype=f64, device=DEVICE)
    pb = spec.conv2d_problem(x, w, None, **kwargs)
    before, after = spec.resolve_padding(kwargs.get("padding", 0), (R, S), (pb.stride_h, pb.stride_w),
                                         (pb.dil_h, pb.dil_w))
    cols = reference.im2col(x, pb, before, after)
    Cg = C // groups
    assert cols.shape == (groups, N * pb.P * pb.Q, Cg * R * S)

    xp = F.pad(x, (before[1], after[1], before[0], after[0]))
    unf = F.unfold(xp, (R, S), dilation=(pb.dil_h, pb.dil_w), stride=(pb.stride_h, pb.stride_w))
    assert unf.shape == (N, C * R * S, pb.P * pb.Q)
    expected = unf.view(N, groups, Cg * R * S, pb.P * pb.Q).permute(1, 0, 3, 2).reshape(cols.shape)
    assert torch.equal(cols, expected)
