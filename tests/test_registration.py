"""torch.ops.tritonconv.conv2d as a registered op: opcheck, torch.compile, torch.export, autograd."""

from __future__ import annotations

import shutil

import pytest
import torch
import torch.nn.functional as F

import tritonconv
from conftest import CUDA, DEVICE, assert_matches

f64 = torch.float64
op = torch.ops.tritonconv.conv2d


def _t(*shape, dtype=torch.float32, requires_grad=False, channels_last=False):
    t = torch.randn(*shape, dtype=dtype, device=DEVICE)
    if channels_last:
        t = t.to(memory_format=torch.channels_last)
    return t.requires_grad_(requires_grad)


# id -> builder of the op's positional arguments (aten's conv2d schema)
OPCHECK_CASES = {
    "bias": lambda: (_t(2, 3, 6, 6), _t(4, 3, 3, 3), _t(4), [1, 1], [1, 1], [1, 1], 1),
    "no_bias_strided": lambda: (_t(2, 3, 7, 6), _t(4, 3, 3, 2), None, [2, 1], [0, 1], [1, 2], 1),
    "grad_input_weight_bias": lambda: (
        _t(2, 4, 5, 5, dtype=f64, requires_grad=True), _t(6, 4, 3, 3, dtype=f64, requires_grad=True),
        _t(6, dtype=f64, requires_grad=True), [1, 1], [1, 1], [1, 1], 1),
    "grad_input_only_grouped": lambda: (
        _t(2, 6, 5, 5, dtype=f64, requires_grad=True), _t(9, 2, 3, 3, dtype=f64), None, [1, 1], [0, 0], [1, 1], 3),
    "grad_weight_only_depthwise": lambda: (
        _t(1, 4, 6, 6, dtype=f64), _t(8, 1, 3, 3, dtype=f64, requires_grad=True), _t(8, dtype=f64),
        [2, 2], [1, 1], [1, 1], 4),
    "channels_last_input": lambda: (
        _t(2, 4, 6, 6, channels_last=True, requires_grad=True), _t(5, 4, 3, 3), _t(5), [1, 1], [1, 1], [1, 1], 1),
    "channels_last_weight": lambda: (
        _t(2, 4, 6, 6), _t(5, 4, 3, 3, channels_last=True, requires_grad=True), None, [1, 1], [1, 1], [1, 1], 1),
    "unbatched": lambda: (
        _t(3, 6, 6, dtype=f64, requires_grad=True), _t(4, 3, 2, 2, dtype=f64, requires_grad=True), _t(4, dtype=f64),
        [1, 1], [1, 1], [2, 2], 1),
}


@pytest.mark.parametrize("case", list(OPCHECK_CASES))
def test_opcheck(case):
    """Schema, fake (meta) implementation, autograd registration and AOT dispatch all agree."""
    args = OPCHECK_CASES[case]()
    result = torch.library.opcheck(op, args)
    assert result and all(v == "SUCCESS" for v in result.values()), result


@pytest.mark.parametrize("which", ["grad_input", "grad_weight"])
def test_gradient_fake_impls_give_the_ops_strides(which):
    """The gradient ops' fake impls allocate as the ops do, so a size-1 dim (one input channel,
    channels_last) gets the real op's stride too: new_empty(...).contiguous(memory_format) kept
    NCHW's for it, (9, 9, 3, 1) against the op's (9, 1, 3, 1)."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    dy = _t(2, 4, 5, 5, channels_last=True)
    x, w = _t(2, 1, 5, 5, channels_last=True), _t(4, 1, 3, 3, channels_last=True)
    conv = ([1, 1], [1, 1], [1, 1], 1)
    if which == "grad_input":
        call = lambda g, t: torch.ops.tritonconv.conv2d_grad_input(g, t, [2, 1, 5, 5], *conv)  # noqa: E731
        other = w
    else:
        call = lambda g, t: torch.ops.tritonconv.conv2d_grad_weight(g, t, [4, 1, 3, 3], *conv)  # noqa: E731
        other = x
    real = call(dy, other)
    with FakeTensorMode() as mode:
        fake = call(mode.from_tensor(dy), mode.from_tensor(other))
    assert fake.shape == real.shape and fake.stride() == real.stride() and fake.dtype == real.dtype


class TinyNet(torch.nn.Module):
    """conv -> relu -> conv (grouped, strided) through the registered op."""

    def __init__(self):
        super().__init__()
        self.w1 = torch.nn.Parameter(torch.randn(8, 3, 3, 3))
        self.b1 = torch.nn.Parameter(torch.randn(8))
        self.w2 = torch.nn.Parameter(torch.randn(6, 4, 2, 2))

    def forward(self, x):
        y = torch.relu(op(x, self.w1, self.b1, [1, 1], [1, 1], [1, 1], 1))
        return op(y, self.w2, None, [2, 2], [0, 0], [1, 1], 2) * 0.5

    def reference(self, x):
        """The same net with F.conv2d in float64."""
        w1, b1, w2 = (p.detach().to(f64) for p in (self.w1, self.b1, self.w2))
        y = torch.relu(F.conv2d(x.to(f64), w1, b1, padding=1))
        return F.conv2d(y, w2, None, stride=2, groups=2) * 0.5


def _net_and_input():
    net = TinyNet().to(DEVICE)
    x = torch.randn(2, 3, 8, 8, device=DEVICE)
    return net, x


@pytest.fixture
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def test_compile_fullgraph_aot_eager(fresh_dynamo):
    """The op traces as one node (no graph break) and runs forward and backward compiled."""
    net, x = _net_and_input()
    compiled = torch.compile(net, backend="aot_eager", fullgraph=True)
    x_eager, x_comp = x.clone().requires_grad_(), x.clone().requires_grad_()
    out_eager, out_comp = net(x_eager), compiled(x_comp)
    assert_matches(out_comp, net.reference(x), torch.float32)
    assert torch.allclose(out_comp, out_eager, rtol=1e-6, atol=1e-6)
    out_comp.sum().backward()
    out_eager.sum().backward()
    assert torch.allclose(x_comp.grad, x_eager.grad, rtol=1e-6, atol=1e-6)


def test_compile_dynamic_shapes(fresh_dynamo):
    """The fake implementation works with symbolic sizes: new batch / image sizes, one compile."""
    net, _ = _net_and_input()
    compiled = torch.compile(net, backend="aot_eager", fullgraph=True, dynamic=True)
    with torch.no_grad():
        for shape in [(2, 3, 8, 8), (3, 3, 10, 9), (1, 3, 6, 12)]:
            x = torch.randn(*shape, device=DEVICE)
            assert_matches(compiled(x), net.reference(x), torch.float32)


@pytest.mark.skipif(not CUDA and shutil.which("c++") is None and shutil.which("g++") is None,
                    reason="inductor's CPU backend needs a C++ compiler")
def test_compile_inductor(fresh_dynamo):
    """Inductor keeps the op as an extern call and fuses around it (inference: compiles fastest)."""
    net, x = _net_and_input()
    compiled = torch.compile(net, backend="inductor", fullgraph=True)
    with torch.no_grad():
        out_comp, out_eager = compiled(x), net(x)
    assert_matches(out_comp, net.reference(x), torch.float32)
    assert torch.allclose(out_comp, out_eager, rtol=1e-5, atol=1e-5)


def test_export(tmp_path):
    """torch.export keeps the op as a node; the exported program (also after a save/load
    round trip) matches eager, with a dynamic batch dimension."""
    net, x = _net_and_input()
    batch = torch.export.Dim("batch", min=1, max=16)
    ep = torch.export.export(net, (x,), dynamic_shapes={"x": {0: batch}})
    targets = [n.target for n in ep.graph.nodes if n.op == "call_function"]
    assert targets.count(torch.ops.tritonconv.conv2d.default) == 2, targets
    path = tmp_path / "net.pt2"
    torch.export.save(ep, path)
    loaded = torch.export.load(path)
    with torch.no_grad():
        for x_run in (x, torch.randn(5, 3, 8, 8, device=DEVICE)):
            ref = net.reference(x_run)
            assert_matches(ep.module()(x_run), ref, torch.float32)
            assert_matches(loaded.module()(x_run), ref, torch.float32)


# --------------------------------------------------------------------------- autograd

GRAD_CASES = {
    "bias": ((2, 3, 6, 6), (4, 3, 3, 3), True, dict(padding=1)),
    "grouped_strided_dilated": ((2, 6, 9, 8), (9, 2, 3, 2), True, dict(stride=(2, 1), padding=(1, 2), dilation=(1, 2), groups=3)),
    "depthwise_no_bias": ((1, 4, 7, 7), (8, 1, 3, 3), False, dict(padding=1, groups=4)),
    "unbatched": ((3, 5, 5), (4, 3, 3, 3), True, dict(padding=1)),
    "same_even": ((2, 3, 6, 7), (4, 3, 2, 4), True, dict(padding="same")),
    "channels_last": ((2, 4, 6, 6), (5, 4, 3, 3), True, dict(stride=2, padding=1)),
}


@pytest.mark.parametrize("entry", ["functional", "op"])
@pytest.mark.parametrize("case", list(GRAD_CASES), ids=list(GRAD_CASES))
def test_backward_matches_conv2d(case, entry):
    """Gradients through the op (float64) match F.conv2d's for input, weight and bias."""
    x_shape, w_shape, has_bias, kwargs = GRAD_CASES[case]
    if entry == "op" and isinstance(kwargs.get("padding"), str):
        pytest.skip("the op's schema takes int padding only (like aten.conv2d)")
    cl = case == "channels_last"
    x = _t(*x_shape, dtype=f64, channels_last=cl)
    w = _t(*w_shape, dtype=f64, channels_last=cl)
    b = _t(w_shape[0], dtype=f64) if has_bias else None
    leaves = [t for t in (x, w, b) if t is not None]

    def grads(conv):
        ins = [t.detach().clone().requires_grad_() for t in leaves]
        out = conv(*ins, *([] if has_bias else [None]))
        gy = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=f64).to(DEVICE)
        out.backward(gy)
        return out, [t.grad for t in ins]

    if entry == "functional":
        out, got = grads(lambda x, w, b: tritonconv.conv2d(x, w, b, **kwargs))
    else:
        pair = lambda v: [v, v] if isinstance(v, int) else list(v)  # noqa: E731
        args = [pair(kwargs.get(k, d)) for k, d in (("stride", 1), ("padding", 0), ("dilation", 1))]
        out, got = grads(lambda x, w, b: op(x, w, b, *args, kwargs.get("groups", 1)))
    ref_out, expected = grads(lambda x, w, b: F.conv2d(x, w, b, **kwargs))
    assert_matches(out, ref_out, f64)
    for name, g, e in zip(["input", "weight", "bias"], got, expected):
        assert g is not None, f"no gradient for {name}"
        assert g.shape == e.shape, name
        assert_matches(g, e, f64)
