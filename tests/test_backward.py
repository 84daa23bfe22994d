"""Backward kernels (dgrad, wgrad, bias grad) and conv_transpose2d, against PyTorch in float64."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from conftest import DispatchedOps
import tritonconv
from tritonconv import spec
from tritonconv.kernels import router
from tritonconv.kernels.wgrad import conv2d_bias_grad, conv2d_wgrad

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

# gradients reduce over more terms than the forward, so fp16 is a little looser
GRAD_TOL = {torch.float64: 1e-12, torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 5e-2}
if DEVICE == "cuda":
    GRAD_TOL[torch.float32] = 5e-3  # TF32, as F.conv2d would use


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    assert out.shape == ref.shape, (out.shape, ref.shape)
    out, ref = out.detach().double().cpu(), ref.detach().double().cpu()
    assert torch.isfinite(out).all(), "non-finite values (unwritten output?)"
    denom = ref.norm().item()
    return (out - ref).norm().item() / (denom if denom > 0 else 1.0)




# (N, C, H, W, K, R, S, stride, padding, dilation, groups)
CASES = [
    pytest.param(2, 3, 7, 9, 5, 3, 3, 1, 1, 1, 1, id="C3-3x3"),
    pytest.param(2, 4, 9, 8, 6, 3, 3, 2, 1, 1, 1, id="stride2"),
    pytest.param(1, 5, 11, 7, 3, 3, 2, (2, 3), (1, 0), (1, 2), 1, id="per-dim"),
    pytest.param(2, 6, 8, 8, 6, 3, 3, 1, 2, 2, 6, id="depthwise-dilated"),
    pytest.param(2, 4, 9, 9, 8, 3, 3, 2, 1, 1, 4, id="depthwise-multiplier"),
    pytest.param(1, 6, 7, 7, 9, 1, 1, 1, 0, 1, 3, id="grouped-1x1"),
    pytest.param(2, 3, 10, 10, 4, 2, 2, 3, 0, 1, 1, id="stride>kernel"),
    pytest.param(1, 17, 5, 5, 33, 3, 3, 1, 1, 1, 1, id="just-over-block"),
    pytest.param(3, 2, 6, 5, 2, 3, 3, 2, 2, 3, 1, id="dilation>stride"),
]


def _run_both(x, w, b, args, gy_seed=0):
    """Gradients of tritonconv.conv2d and of float64 F.conv2d for the same data."""
    xs, ws = x.clone().requires_grad_(), w.clone().requires_grad_()
    bs = b.clone().requires_grad_() if b is not None else None
    y = tritonconv.conv2d(xs, ws, bs, *args)
    g = torch.Generator(device="cpu").manual_seed(gy_seed)
    gy = torch.randn(y.shape, generator=g, dtype=torch.float64).to(DEVICE)
    y.backward(gy.to(y.dtype))
    xr, wr = x.double().requires_grad_(), w.double().requires_grad_()
    br = b.double().requires_grad_() if b is not None else None
    ref = F.conv2d(xr, wr, br, *args)
    ref.backward(gy.to(y.dtype).double())
    return (xs.grad, ws.grad, bs.grad if b is not None else None), (xr.grad, wr.grad, br.grad if b is not None else None)


@pytest.mark.parametrize("N,C,H,W,K,R,S,stride,padding,dilation,groups", CASES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_conv2d_gradients_match_pytorch(N, C, H, W, K, R, S, stride, padding, dilation, groups, dtype):
    torch.manual_seed(1)
    x = torch.randn(N, C, H, W, dtype=dtype, device=DEVICE)
    w = torch.randn(K, C // groups, R, S, dtype=dtype, device=DEVICE)
    b = torch.randn(K, dtype=dtype, device=DEVICE)
    got, ref = _run_both(x, w, b, (stride, padding, dilation, groups))
    for name, gt, rf in zip(("grad_input", "grad_weight", "grad_bias"), got, ref):
        assert rel_err(gt, rf) < GRAD_TOL[dtype], name


@pytest.mark.parametrize("layout", ["channels_last", "channels_last_weight", "sliced"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32, torch.bfloat16])
def test_gradients_other_layouts_and_dtypes(layout, dtype):
    torch.manual_seed(2)
    x = torch.randn(2, 8, 9, 10, dtype=dtype, device=DEVICE)
    w = torch.randn(6, 8, 3, 3, dtype=dtype, device=DEVICE)
    if layout == "channels_last":
        x = x.to(memory_format=torch.channels_last)
    elif layout == "channels_last_weight":
        w = w.to(memory_format=torch.channels_last)
    else:
        x = torch.randn(2, 16, 9, 12, dtype=dtype, device=DEVICE)[:, ::2, :, 1:11]
    got, ref = _run_both(x, w, None, (2, 1, 1, 1))
    assert got[2] is None
    assert rel_err(got[0], ref[0]) < GRAD_TOL[dtype]
    assert rel_err(got[1], ref[1]) < GRAD_TOL[dtype]


def test_unbatched_and_same_padding_gradients():
    torch.manual_seed(3)
    x = torch.randn(3, 6, 7, dtype=torch.float64, device=DEVICE)
    w = torch.randn(4, 3, 2, 4, dtype=torch.float64, device=DEVICE)  # even kernel: asymmetric 'same'
    got, ref = _run_both(x, w, None, (1, "same", (2, 1), 1))
    assert rel_err(got[0], ref[0]) < 1e-12
    assert rel_err(got[1], ref[1]) < 1e-12


def test_grouped_weight_gradient_of_an_unbatched_channels_last_input():
    """Found by a randomized run of test_conv2d's property test with gradients: an unbatched input
    channels_last as seen batched (strides (4, 1, 8, 4) for (1, 4, 1, 2)), groups=2, a 1x2 kernel.
    There PyTorch's CPU conv2d (torch 2.11 and 2.13) gives a wrong weight gradient, so the
    reference is the sum itself: dw[k, c, 0, s] = dy[k] * x[2k + c, 0, s]."""
    torch.manual_seed(0)
    x = torch.randn(4, 1, 2, device=DEVICE)[None].to(memory_format=torch.channels_last)[0].requires_grad_()
    w = torch.randn(2, 2, 1, 2, device=DEVICE).to(memory_format=torch.channels_last).requires_grad_()
    y = tritonconv.conv2d(x, w, None, 1, "valid", 1, 2)
    gy = torch.randn_like(y)
    gx, gw = torch.autograd.grad(y, (x, w), gy)
    xd, gyd = x.detach().double(), gy.double()
    ref_w = torch.stack([gyd[k, 0, 0] * xd[2 * k:2 * k + 2] for k in range(2)])  # (K, C/groups, 1, S)
    ref_x = torch.stack([gyd[c // 2, 0, 0] * w.detach().double()[c // 2, c % 2] for c in range(4)])  # (C, 1, S)
    assert rel_err(gw, ref_w) < GRAD_TOL[torch.float32]
    assert rel_err(gx, ref_x) < GRAD_TOL[torch.float32]


def test_gradcheck_small_float64():
    torch.manual_seed(4)
    x = torch.randn(1, 2, 4, 4, dtype=torch.float64, device=DEVICE, requires_grad=True)
    w = torch.randn(4, 1, 2, 3, dtype=torch.float64, device=DEVICE, requires_grad=True)
    b = torch.randn(4, dtype=torch.float64, device=DEVICE, requires_grad=True)
    fn = lambda x, w, b: torch.ops.tritonconv.conv2d(x, w, b, [2, 1], [1, 1], [1, 2], 2)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x, w, b), eps=1e-6, atol=1e-8, fast_mode=True)


def test_double_backward_gradgradcheck():
    torch.manual_seed(5)
    x = torch.randn(1, 2, 3, 3, dtype=torch.float64, device=DEVICE, requires_grad=True)
    w = torch.randn(2, 2, 2, 2, dtype=torch.float64, device=DEVICE, requires_grad=True)
    fn = lambda x, w: torch.ops.tritonconv.conv2d(x, w, None, [2, 2], [1, 1], [1, 1], 1)  # noqa: E731
    assert torch.autograd.gradgradcheck(fn, (x, w), eps=1e-6, atol=1e-8, fast_mode=True)


ALL_FAMILIES = sorted(set(router.FORWARD) | set(router.INPUT_GRAD) | set(router.WEIGHT_GRAD))


@pytest.mark.filterwarnings("error::RuntimeWarning")  # the interpreter's integer division by zero
@pytest.mark.parametrize("family", [None, *ALL_FAMILIES])
@pytest.mark.parametrize("R,padding,groups", [(3, 1, 1), (3, 1, 2), (1, 0, 2)], ids=["3x3", "3x3-groups2", "1x1-groups2"])
def test_zero_input_channels_forward_and_backward(R, padding, groups, family):
    """C = 0, routed or forced onto each family: the forward is the bias, and the backward gives
    dx and dw empty and db the sum of dy; no division by the empty channel count on the host
    (the wgrad's split) nor in a kernel (the reduction's first step)."""
    torch.manual_seed(0)
    x = torch.randn(2, 0, 5, 6, device=DEVICE).to(memory_format=torch.channels_last).requires_grad_()
    w = torch.randn(4, 0, R, R, device=DEVICE, requires_grad=True)
    b = torch.randn(4, device=DEVICE, requires_grad=True)
    dy = torch.randn(2, 4, 5, 6, device=DEVICE)
    with router.force(family):
        y = tritonconv.conv2d(x, w, b, padding=padding, groups=groups)
        y.backward(dy)
    assert rel_err(y, b.detach().view(1, -1, 1, 1).expand(2, 4, 5, 6)) == 0
    assert x.grad.shape == x.shape and w.grad.shape == w.shape
    assert rel_err(b.grad, dy.sum((0, 2, 3))) < GRAD_TOL[torch.float32]


# 25: chunks of 16 pixels (the interpreter's BLOCK_K), the last six past the 297 pixels, empty (the
# kernel's one step there loads nothing)
@pytest.mark.parametrize("split_k", [1, 2, 3, 7, 25])
def test_wgrad_split_k_is_correct_and_bitwise_deterministic(split_k):
    torch.manual_seed(6)
    x = torch.randn(3, 5, 9, 11, dtype=torch.float32, device=DEVICE)
    w = torch.randn(6, 5, 3, 3, dtype=torch.float32, device=DEVICE)
    pb = spec.conv2d_problem(x, w, None, 1, 1, 1, 1)
    dy = torch.randn(pb.output_shape, dtype=torch.float32, device=DEVICE)
    first = conv2d_wgrad(dy, x, pb, split_k=split_k)
    second = conv2d_wgrad(dy, x, pb, split_k=split_k)
    assert torch.equal(first, second), "wgrad must be bitwise reproducible"
    xr = x.double().requires_grad_()
    wr = w.double().requires_grad_()
    F.conv2d(xr, wr, None, 1, 1).backward(dy.double())
    assert rel_err(first, wr.grad) < GRAD_TOL[torch.float32]


@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
@pytest.mark.parametrize("split", [1, 2, 5, 64])
def test_bias_grad_split_is_correct_and_bitwise_deterministic(split, layout):
    """Pixel chunks that do not divide N*P*Q evenly (3*7*9 = 189 pixels, 64-pixel steps),
    and more chunks than steps (64: the surplus programs must store zeros, not garbage)."""
    torch.manual_seed(16)
    dy = torch.randn(3, 21, 7, 9, dtype=torch.float32, device=DEVICE)
    if layout == "nhwc":
        dy = dy.contiguous(memory_format=torch.channels_last)
    first = conv2d_bias_grad(dy, split=split)
    second = conv2d_bias_grad(dy, split=split)
    assert torch.equal(first, second), "bias grad must be bitwise reproducible"
    assert rel_err(first, dy.double().sum(dim=(0, 2, 3))) < GRAD_TOL[torch.float32]


def test_wgrad_default_split_is_deterministic_through_autograd():
    torch.manual_seed(7)
    x = torch.randn(4, 3, 16, 16, device=DEVICE)
    w = torch.randn(4, 3, 3, 3, device=DEVICE, requires_grad=True)
    grads = []
    for _ in range(2):
        w.grad = None
        tritonconv.conv2d(x, w, None, 1, 1).sum().backward()
        grads.append(w.grad.clone())
    assert torch.equal(grads[0], grads[1])


# (N, Cin_t, H, W, Cout_t, R, S, stride, padding, output_padding, groups, dilation)
TRANSPOSE_CASES = [
    pytest.param(2, 4, 5, 6, 3, 3, 3, 2, 1, 1, 1, 1, id="upsample2"),
    pytest.param(1, 6, 4, 4, 6, 4, 4, 2, 1, 0, 6, 1, id="depthwise"),
    pytest.param(2, 4, 5, 5, 6, 3, 2, (2, 3), (0, 1), (1, 2), 2, 1, id="grouped-per-dim"),
    pytest.param(1, 3, 5, 4, 2, 3, 3, 1, 1, 1, 1, 2, id="output_padding>=stride"),
    pytest.param(2, 5, 3, 3, 17, 1, 1, 1, 0, 0, 1, 1, id="1x1"),
]


@pytest.mark.parametrize("N,Ci,H,W,Co,R,S,stride,padding,output_padding,groups,dilation", TRANSPOSE_CASES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_conv_transpose2d_forward_and_gradients(N, Ci, H, W, Co, R, S, stride, padding, output_padding, groups,
                                                dilation, dtype):
    torch.manual_seed(8)
    args = (stride, padding, output_padding, groups, dilation)
    x = torch.randn(N, Ci, H, W, dtype=dtype, device=DEVICE, requires_grad=True)
    w = torch.randn(Ci, Co // groups, R, S, dtype=dtype, device=DEVICE, requires_grad=True)
    b = torch.randn(Co, dtype=dtype, device=DEVICE, requires_grad=True)
    y = tritonconv.conv_transpose2d(x, w, b, *args)
    refs = [t.detach().double().requires_grad_() for t in (x, w, b)]
    yr = F.conv_transpose2d(*refs, *args)
    assert y.shape == yr.shape and y.dtype == dtype
    assert rel_err(y, yr) < GRAD_TOL[dtype]
    gy = torch.randn_like(y)
    y.backward(gy)
    yr.backward(gy.double())
    for name, t, r in zip(("input", "weight", "bias"), (x, w, b), refs):
        assert rel_err(t.grad, r.grad) < GRAD_TOL[dtype], name


def test_conv_transpose2d_unbatched_channels_last_and_op():
    torch.manual_seed(9)
    x = torch.randn(2, 4, 5, 7, device=DEVICE).to(memory_format=torch.channels_last)
    w = torch.randn(4, 3, 3, 3, device=DEVICE)
    y = torch.ops.tritonconv.conv_transpose2d(x, w, None, [2, 2], [1, 1], [1, 0], 1, [1, 1])
    ref = F.conv_transpose2d(x.double(), w.double(), None, 2, 1, (1, 0))
    assert rel_err(y, ref) < GRAD_TOL[torch.float32]
    # the layout of aten's float32 result (its CUDA float64 result is contiguous whatever the input's)
    same_dtype = F.conv_transpose2d(x, w, None, 2, 1, (1, 0))
    assert y.is_contiguous(memory_format=torch.channels_last) == same_dtype.is_contiguous(memory_format=torch.channels_last)
    y3 = tritonconv.conv_transpose2d(x[0].contiguous(), w, None, 2, 1, (1, 0))
    assert y3.shape == ref.shape[1:]
    assert rel_err(y3, ref[0]) < GRAD_TOL[torch.float32]


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(stride=2, output_padding=2), "output padding must be smaller"),
        (dict(output_padding=-1), "negative output_padding"),
        (dict(stride=0), "non-positive stride"),
        (dict(groups=3), "groups"),
    ],
)
def test_conv_transpose2d_bad_arguments(kwargs, match):
    x = torch.randn(1, 4, 5, 5, device=DEVICE)
    w = torch.randn(4, 2, 3, 3, device=DEVICE)
    with pytest.raises(ValueError, match=match) as info:
        tritonconv.conv_transpose2d(x, w, **kwargs)
    assert isinstance(info.value, RuntimeError)


def test_only_needed_gradients_are_computed():
    x = torch.randn(1, 3, 6, 6, device=DEVICE)
    w = torch.randn(4, 3, 3, 3, device=DEVICE, requires_grad=True)
    spy = DispatchedOps()
    with spy:
        tritonconv.conv2d(x, w).sum().backward()
    assert any("conv2d_grad_weight" in op for op in spy.ops)
    assert not any("conv2d_grad_input" in op for op in spy.ops), "dgrad ran for an input without grad"
    assert not any("conv2d_grad_bias" in op for op in spy.ops)


class _SmallCNN(nn.Module):
    def __init__(self, conv):
        super().__init__()
        self.conv = conv
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.c2 = nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=2)
        self.c3 = nn.Conv2d(8, 6, 1)
        self.up = nn.ConvTranspose2d(6, 4, 2, stride=2)
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        cv = self.conv
        x = F.relu(cv.conv2d(x, self.c1.weight, self.c1.bias, 1, 1))
        x = F.relu(cv.conv2d(x, self.c2.weight, self.c2.bias, 2, 1, 1, 2))
        x = F.relu(cv.conv2d(x, self.c3.weight, self.c3.bias))
        x = cv.conv_transpose2d(x, self.up.weight, self.up.bias, 2)
        return self.head(x.mean(dim=(2, 3)))


def test_small_cnn_trains_like_pytorch_without_aten_convolution():
    torch.manual_seed(10)
    ours = _SmallCNN(tritonconv).to(DEVICE, torch.float64)
    theirs = _SmallCNN(F).to(DEVICE, torch.float64)
    theirs.load_state_dict(ours.state_dict())
    opt_ours = torch.optim.SGD(ours.parameters(), lr=0.1, momentum=0.9)
    opt_theirs = torch.optim.SGD(theirs.parameters(), lr=0.1, momentum=0.9)
    data = torch.randn(4, 3, 8, 8, dtype=torch.float64, device=DEVICE)
    target = torch.tensor([0, 1, 2, 1], device=DEVICE)
    losses_ours, losses_theirs = [], []
    spy = DispatchedOps()
    for _ in range(4):
        with spy:
            loss = F.cross_entropy(ours(data), target)
            opt_ours.zero_grad()
            loss.backward()
        opt_ours.step()
        losses_ours.append(loss.item())
        ref_loss = F.cross_entropy(theirs(data), target)
        opt_theirs.zero_grad()
        ref_loss.backward()
        opt_theirs.step()
        losses_theirs.append(ref_loss.item())
    assert losses_ours == pytest.approx(losses_theirs, rel=1e-9, abs=1e-12)
    assert losses_ours[-1] < losses_ours[0], "the loss should go down"
    aten_convs = [op for op in spy.ops if op.startswith("aten.") and "conv" in op]
    assert not aten_convs, f"aten convolution ran: {sorted(set(aten_convs))}"
    assert any(op.startswith("tritonconv.conv2d_grad_weight") for op in spy.ops)
    assert any(op.startswith("tritonconv.conv2d_grad_input") for op in spy.ops)
    assert any(op.startswith("tritonconv.conv_transpose2d") for op in spy.ops)
