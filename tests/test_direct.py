"""Calls that skip the dispatcher (``tritonconv.ops.call``): ``tritonconv.functional`` (so the
modules) runs a call on the op's implementation directly only where the dispatcher would do
nothing but pass it on, and the result is then what the op gives; where it would only record
autograd, through an autograd.Function with the op's own backward; under a torch.func
transform, through one that torch.func accepts. Under tracing, a dispatch or function mode,
autocast, the profiler or on a tensor subclass, the call must go through ``torch.ops.tritonconv``."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from conftest import DEVICE, DispatchedOps, assert_matches
import tritonconv
from tritonconv import functional, ops

ARGS = ([1, 1], [1, 1], [1, 1], 1)


@pytest.fixture
def direct_calls(monkeypatch):
    """Counts the implementations ``call`` runs directly, by op name (the ops themselves call
    the implementations by another route, so only direct calls are counted)."""
    counts = {}
    for name, impl in list(ops._IMPLS.items()):
        def counted(*args, _name=name, _impl=impl):
            counts[_name] = counts.get(_name, 0) + 1
            return _impl(*args)
        monkeypatch.setitem(ops._IMPLS, name, counted)
    return counts


def _data():
    x = torch.randn(2, 8, 7, 7, device=DEVICE)
    w = torch.randn(16, 8, 3, 3, device=DEVICE) / 8
    b = torch.randn(16, device=DEVICE)
    return x, w, b


def test_a_plain_call_runs_directly_and_equals_the_op(direct_calls):
    x, w, b = _data()
    out = functional.conv2d(x, w, b, 1, 1)
    assert direct_calls == {"conv2d": 1}
    assert torch.equal(out, torch.ops.tritonconv.conv2d(x, w, b, *ARGS))
    assert_matches(out, F.conv2d(x.double(), w.double(), b.double(), 1, 1), torch.float32)


def test_parameters_under_no_grad_run_directly(direct_calls):
    conv = tritonconv.nn.Conv2d(8, 16, 3, padding=1).to(DEVICE)
    x, _, _ = _data()
    with torch.no_grad():
        out = conv(x)
    assert direct_calls == {"conv2d": 1}
    assert_matches(out, F.conv2d(x.double(), conv.weight.double(), conv.bias.double(), 1, 1), torch.float32)


def test_inference_tensors_run_directly(direct_calls):
    """Tensors made under torch.inference_mode have no autograd dispatch keys: still plain."""
    with torch.inference_mode():
        x, w, b = _data()
        out = functional.conv2d(x, w, b, 1, 1)
    assert direct_calls == {"conv2d": 1}
    assert_matches(out, F.conv2d(x.double(), w.double(), b.double(), 1, 1), torch.float32)


def test_the_fused_epilogue_and_transpose_run_directly(direct_calls):
    x, w, b = _data()
    res = torch.randn(2, 16, 7, 7, device=DEVICE)
    fused = functional.conv2d(x, w, b, 1, 1, activation="relu", residual=res)
    assert_matches(fused, torch.relu(F.conv2d(x.double(), w.double(), b.double(), 1, 1) + res.double()),
                   torch.float32)
    wt = torch.randn(8, 4, 3, 3, device=DEVICE) / 8
    up = functional.conv_transpose2d(x, wt, None, 2, 1, 1)
    assert_matches(up, F.conv_transpose2d(x.double(), wt.double(), None, 2, 1, 1), torch.float32)
    assert direct_calls == {"conv2d_fused": 1, "conv_transpose2d": 1}


def test_autograd_goes_through_a_function_and_its_backward_runs_directly(direct_calls):
    """The forward records the op's backward through an autograd.Function (not the op's
    dispatcher); the backward's gradient ops (grad mode off in the engine) run directly."""
    x, w, b = _data()
    x.requires_grad_()
    w.requires_grad_()
    b.requires_grad_()
    out = functional.conv2d(x, w, b, 1, 1)
    assert direct_calls == {}
    assert type(out.grad_fn).__name__ == "conv2d_functionBackward"
    with torch.no_grad():
        assert torch.equal(out, torch.ops.tritonconv.conv2d(x, w, b, *ARGS))
    out.backward(torch.ones_like(out))
    assert direct_calls == {"conv2d_grad_input": 1, "conv2d_grad_weight": 1, "conv2d_grad_bias": 1}
    xd, wd, bd = (t.detach().double().requires_grad_() for t in (x, w, b))
    F.conv2d(xd, wd, bd, 1, 1).backward(torch.ones(out.shape, dtype=torch.float64, device=DEVICE))
    for ours, ref in ((x.grad, xd.grad), (w.grad, wd.grad), (b.grad, bd.grad)):
        assert_matches(ours, ref, torch.float32)


def test_double_backward_records_the_gradient_ops():
    """With create_graph the gradient ops are recorded (through their own Functions)."""
    x, w, _ = _data()
    x.requires_grad_()
    w.requires_grad_()
    (gx,) = torch.autograd.grad(functional.conv2d(x, w, None, 1, 1).square().sum(), x, create_graph=True)
    (gw,) = torch.autograd.grad(gx.sum(), w)
    xd, wd = x.detach().double().requires_grad_(), w.detach().double().requires_grad_()
    (gxd,) = torch.autograd.grad(F.conv2d(xd, wd, None, 1, 1).square().sum(), xd, create_graph=True)
    (gwd,) = torch.autograd.grad(gxd.sum(), wd)
    assert_matches(gw, gwd, torch.float32)


@pytest.mark.parametrize("requires_grad", [False, True])
def test_a_dispatch_mode_sees_the_op(direct_calls, requires_grad):
    x, w, b = _data()
    w.requires_grad_(requires_grad)
    with DispatchedOps() as mode:
        out = functional.conv2d(x, w, b, 1, 1)
    assert direct_calls == {}
    assert "tritonconv.conv2d.default" in mode.ops
    if requires_grad:
        assert "conv2d_function" not in type(out.grad_fn).__name__
    assert_matches(out, F.conv2d(x.double(), w.double(), b.double(), 1, 1), torch.float32)


def test_the_profiler_sees_the_op(direct_calls):
    x, w, b = _data()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        functional.conv2d(x, w, b, 1, 1)
    assert direct_calls == {}
    assert "tritonconv::conv2d" in {e.key for e in prof.key_averages()}


def test_meta_tensors_get_the_fake_implementation(direct_calls):
    x = torch.empty(2, 8, 7, 7, device="meta")
    w = torch.empty(16, 8, 3, 3, device="meta")
    out = functional.conv2d(x, w, None, 2, 1)
    assert direct_calls == {}
    assert out.device.type == "meta" and out.shape == (2, 16, 4, 4)


class _Marked(torch.Tensor):
    pass


@pytest.mark.parametrize("where", [
    "subclass", "autocast", "function mode", "vmap", "grad and requires_grad", "no_grad", "inference_mode",
])
def test_direct_ok(where):
    x, w, _ = _data()
    if where == "subclass":
        assert not ops.direct_ok(x.as_subclass(_Marked), w)
    elif where == "autocast":
        with torch.autocast(DEVICE.type, dtype=torch.bfloat16):
            assert not ops.direct_ok(x, w)
    elif where == "function mode":
        with torch.overrides.TorchFunctionMode():
            assert not ops.direct_ok(x, w)
    elif where == "vmap":
        seen = []
        torch.vmap(lambda t: (seen.append(ops.direct_ok(t, w)), t * 2)[1])(x)
        assert seen == [False]
    elif where == "grad and requires_grad":
        assert not ops.direct_ok(x, torch.nn.Parameter(w))
    elif where == "no_grad":
        with torch.no_grad():
            assert ops.direct_ok(x, torch.nn.Parameter(w), None)
    else:
        with torch.inference_mode():
            assert ops.direct_ok(x, torch.nn.Parameter(w), None)
    assert ops.direct_ok(x, w, None)  # and outside the block, plain tensors without grad do


@pytest.mark.parametrize("fn", ["conv2d", "fused", "transpose"])
def test_gradcheck_through_the_functions(fn):
    """First derivatives of the autograd.Function path, and for conv2d the second (through the
    gradient ops' own Functions), in float64 against finite differences (tiny: interpreted)."""
    torch.manual_seed(3)
    x = torch.randn(1, 2, 4, 4, device=DEVICE, dtype=torch.float64, requires_grad=True)
    if fn == "transpose":
        w = torch.randn(2, 3, 2, 2, device=DEVICE, dtype=torch.float64, requires_grad=True)
        f = lambda x, w: functional.conv_transpose2d(x, w, None, 2, 1, 1)  # noqa: E731
    else:
        w = torch.randn(3, 2, 2, 2, device=DEVICE, dtype=torch.float64, requires_grad=True)
        act = "silu" if fn == "fused" else None
        f = lambda x, w: functional.conv2d(x, w, None, 1, 1, activation=act)  # noqa: E731
    assert "_function" in type(f(x, w).grad_fn).__name__
    assert torch.autograd.gradcheck(f, (x, w), eps=1e-6, atol=1e-8, fast_mode=True)
    if fn == "conv2d":
        assert torch.autograd.gradgradcheck(f, (x, w), eps=1e-6, atol=1e-8, fast_mode=True)


def _jvp(f, primals, tangents):
    import torch.autograd.forward_ad as fwAD

    with fwAD.dual_level():
        duals = [p if t is None else fwAD.make_dual(p, t) for p, t in zip(primals, tangents)]
        return fwAD.unpack_dual(f(*duals)).tangent


@pytest.mark.parametrize("fn", ["conv2d", "fused", "transpose"])
@pytest.mark.parametrize("which", ["input", "weight", "bias", "residual", "all"])
def test_forward_mode_ad_matches_torch(fn, which):
    """Forward-mode AD (dual tensors) through tritonconv.functional: the jvp of each argument
    against torch's own, in float64. (The custom op has no jvp; see the next test.)"""
    torch.manual_seed(5)
    d = dict(device=DEVICE, dtype=torch.float64)
    x, b, r = torch.randn(2, 4, 5, 5, **d), torch.randn(6, **d), torch.randn(2, 6, 5, 5, **d)
    w = torch.randn(4, 6, 3, 3, **d) if fn == "transpose" else torch.randn(6, 4, 3, 3, **d)
    if fn == "transpose":
        r = torch.randn(2, 6, 9, 9, **d)
        ours = lambda x, w, b, r: functional.conv_transpose2d(x, w, b, 2, 1, 0) + r  # noqa: E731
        ref = lambda x, w, b, r: F.conv_transpose2d(x, w, b, 2, 1, 0) + r  # noqa: E731
    elif fn == "fused":
        ours = lambda x, w, b, r: functional.conv2d(x, w, b, 1, 1, activation="gelu", residual=r)  # noqa: E731
        ref = lambda x, w, b, r: F.gelu(F.conv2d(x, w, b, 1, 1) + r)  # noqa: E731
    else:
        ours = lambda x, w, b, r: functional.conv2d(x, w, b, 1, 1) + r  # noqa: E731
        ref = lambda x, w, b, r: F.conv2d(x, w, b, 1, 1) + r  # noqa: E731
    names = ["input", "weight", "bias", "residual"]
    tangents = [torch.randn_like(t) if which in (name, "all") else None for name, t in zip(names, (x, w, b, r))]
    got, want = _jvp(ours, (x, w, b, r), tangents), _jvp(ref, (x, w, b, r), tangents)
    assert got is not None and want is not None
    assert_matches(got, want, torch.float64)


def test_forward_mode_ad_through_the_op_is_refused_not_dropped():
    x, w, _ = _data()
    with pytest.raises(NotImplementedError, match="forward-mode AD"):
        _jvp(lambda x: torch.ops.tritonconv.conv2d(x, w, None, *ARGS), (x,), (torch.randn_like(x),))


def test_forward_over_reverse():
    """The jvp of a gradient (a Hessian-vector product's building block) runs the gradient ops'
    own jvps."""
    import torch.autograd.forward_ad as fwAD

    torch.manual_seed(6)
    d = dict(device=DEVICE, dtype=torch.float64)
    x, w, tx = torch.randn(2, 3, 5, 5, **d), torch.randn(4, 3, 3, 3, **d), torch.randn(2, 3, 5, 5, **d)
    tangents = []
    for conv in (functional.conv2d, F.conv2d):
        with fwAD.dual_level():
            wq = w.clone().requires_grad_()
            y = conv(fwAD.make_dual(x, tx), wq, None, 1, 1)
            (g,) = torch.autograd.grad(y.square().sum(), wq, create_graph=True)
            tangents.append(fwAD.unpack_dual(g).tangent.detach())
    assert_matches(tangents[0], tangents[1], torch.float64)


def test_jit_trace_records_the_op():
    """torch.jit.trace sees only what the dispatcher sees: a traced call must be the op (the
    direct path would leave the tracer an empty output and nothing that computes it)."""
    x, w, b = _data()
    traced = torch.jit.trace(lambda x: functional.conv2d(x, w, b, 1, 1), (x,), check_trace=False)
    assert "tritonconv::conv2d" in str(traced.graph)
    x2 = torch.randn_like(x)
    assert_matches(traced(x2), F.conv2d(x2.double(), w.double(), b.double(), 1, 1), torch.float32)


def test_tensors_with_extra_dispatch_keys_take_the_op():
    """A negated view (z.conj().imag), a zero tensor, or a legacy-vmap batched gradient carry
    dispatch keys the dispatcher must see: read directly, their storage would be wrong."""
    x, w, _ = _data()
    z = torch.complex(torch.randn_like(x), x)
    neg = z.conj().imag  # the negative bit: the values are -x
    assert neg.is_neg() and not ops.direct_ok(neg, w)
    assert_matches(functional.conv2d(neg, w, None, 1, 1), F.conv2d(-x.double(), w.double(), None, 1, 1),
                   torch.float32)
    assert not ops.direct_ok(torch._efficientzerotensor(x.shape, device=DEVICE), w)
    # is_grads_batched runs the backward formulas on legacy-vmap BatchedTensors
    xg = x.clone().requires_grad_()
    y = functional.conv2d(xg, w, None, 1, 1)
    seeds = torch.randn(3, *y.shape, device=DEVICE)
    (gx,) = torch.autograd.grad(y, xg, seeds, is_grads_batched=True)
    ref = torch.stack([torch.nn.grad.conv2d_input(x.shape, w.double(), s.double(), 1, 1) for s in seeds])
    assert_matches(gx, ref, torch.float32)


# torch.func transforms, each as a function of (a conv function): tritonconv's result against
# F.conv2d's, both in float64 (a custom op's own autograd fails under them: pytorch#168393)
_B = 6


def _func_cases():
    torch.manual_seed(11)
    x = torch.randn(2, 4, 5, 5, dtype=torch.float64, device=DEVICE)
    w = torch.randn(_B, 4, 3, 3, dtype=torch.float64, device=DEVICE)
    b = torch.randn(_B, dtype=torch.float64, device=DEVICE)
    g = torch.func.grad
    return {
        "grad": lambda f: g(lambda x, w: f(x, w, b).square().sum(), argnums=(0, 1))(x, w),
        "vjp": lambda f: torch.func.vjp(lambda x, w: f(x, w, b), x, w)[1](torch.ones(2, _B, 5, 3, dtype=x.dtype,
                                                                                 device=DEVICE)),
        "jacrev": lambda f: torch.func.jacrev(lambda w: f(x[:1, :, :3, :3], w, b))(w),
        "jvp": lambda f: torch.func.jvp(lambda x: f(x, w, b), (x,), (torch.ones_like(x),)),
        "jacfwd": lambda f: torch.func.jacfwd(lambda b: f(x[:1], w, b))(b),
        "hessian": lambda f: torch.func.hessian(lambda b: f(x[:1, :, :3, :3], w, b).pow(3).sum())(b),
        "grad_of_grad": lambda f: g(lambda x: g(lambda x: f(x, w, b).pow(3).sum())(x).sum())(x),
        "per_sample_grads": lambda f: torch.func.vmap(g(lambda w, xi: f(xi[None], w, b).square().sum()),
                                                      in_dims=(None, 0))(w, x),
        "vmap": lambda f: torch.func.vmap(lambda xi: f(xi, w, b))(x[:, None]),
    }


# PyTorch's warning where an op without a vmap rule runs once per sample
_LOOPED = "There is a performance drop"


@pytest.mark.parametrize("transform", list(_func_cases()))
@pytest.mark.parametrize("fn", ["conv2d", "fused", "transpose"])
def test_torch_func_transforms(transform, fn):
    """grad, vjp, jacrev, jvp, jacfwd, hessian, grad of grad, per-sample grads (vmap of grad) and
    vmap through tritonconv.functional, against F.conv2d's (its fused and transposed forms too),
    with vmap on the ops' batching rules (ops.py), not once per sample."""
    import warnings

    import torch.nn.functional as Fn

    ours, ref = {
        "conv2d": (lambda x, w, b: functional.conv2d(x, w, b, (1, 2), 1),
                   lambda x, w, b: Fn.conv2d(x, w, b, (1, 2), 1)),
        "fused": (lambda x, w, b: functional.conv2d(x, w, b, (1, 2), 1, activation="silu"),
                  lambda x, w, b: Fn.silu(Fn.conv2d(x, w, b, (1, 2), 1))),
        # conv_transpose2d from 4 to _B channels, on w transposed to its (C_in, C_out, R, S)
        "transpose": (lambda x, w, b: functional.conv_transpose2d(x, w.transpose(0, 1), b, 1, 1)[..., :, ::2],
                      lambda x, w, b: Fn.conv_transpose2d(x, w.transpose(0, 1), b, 1, 1)[..., :, ::2]),
    }[fn]
    case = _func_cases()[transform]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = case(ours)
    want = case(ref)
    flat = lambda r: torch.cat([t.flatten() for t in (r if isinstance(r, tuple) else (r,))])  # noqa: E731
    assert_matches(flat(got), flat(want), torch.float64)
    assert not [w for w in caught if _LOOPED in str(w.message)]


def _vmap_cases():
    """(ours, F.conv2d's) for vmap over activations, over per-sample weights (model ensembles),
    over both, with a fused epilogue and residual, nested, under grad and jvp, and transposed."""
    torch.manual_seed(12)
    B, kw = 3, dict(dtype=torch.float64, device=DEVICE)
    x = torch.randn(B, 2, 4, 6, 7, **kw)
    w, b = torch.randn(6, 4, 3, 3, **kw), torch.randn(6, **kw)
    ws, bs = torch.randn(B, 6, 2, 3, 3, **kw), torch.randn(B, 6, **kw)
    res = torch.randn(B, 2, 6, 6, 7, **kw)
    v, g = torch.func.vmap, torch.func.grad
    def ours(x, w, b, stride=1, padding=0, dilation=1, groups=1, transposed=False, **epilogue):
        if transposed:
            return functional.conv_transpose2d(x, w, b, stride, padding, 0, groups, dilation)
        return functional.conv2d(x, w, b, stride, padding, dilation, groups, **epilogue)

    def ref(x, w, b, stride=1, padding=0, dilation=1, groups=1, transposed=False, activation="none", residual=None):
        if transposed:
            return F.conv_transpose2d(x, w, b, stride, padding, 0, groups, dilation)
        y = F.conv2d(x, w, b, stride, padding, dilation, groups)
        y = y if residual is None else y + residual
        return {"none": y, "relu": F.relu(y)}[activation]

    grouped = dict(padding=1, groups=2)
    cl = x.reshape(B * 2, 4, 6, 7).contiguous(memory_format=torch.channels_last).reshape(B, 2, 4, 6, 7)
    return {
        "activations": lambda c: v(lambda xi: c(xi, w, b, 2, 1))(x),
        "per-sample 3-D input": lambda c: v(lambda xi: c(xi, w, b, 1, 1))(x[:, 0]),
        "in_dims 2": lambda c: v(lambda xi: c(xi, w, b, 1, 1), in_dims=2, out_dims=1)(x.movedim(0, 2).contiguous()),
        "channels_last": lambda c: v(lambda xi: c(xi, w, b, 1, 1))(cl),
        "ensemble": lambda c: v(lambda wi, bi: c(x[0], wi, bi, **grouped))(ws, bs),
        "ensemble, 3-D input": lambda c: v(lambda wi: c(x[0, 0], wi, None, **grouped))(ws),
        "ensemble and activations": lambda c: v(lambda xi, wi, bi: c(xi, wi, bi, **grouped))(x, ws, bs),
        "bias only": lambda c: v(lambda bi: c(x[0], w, bi, 1, 1))(bs),
        "bias only, 3-D input": lambda c: v(lambda bi: c(x[0, 0], w, bi, 1, 1))(bs),
        "bias only, fused residual": lambda c: v(lambda bi, ri: c(x[0], w, bi, 1, 1, residual=ri))(bs, res),
        "bias only, fused relu": lambda c: v(lambda bi: c(x[0], w, bi, 1, 1, activation="relu"))(bs),
        "bias only, grads": lambda c: v(g(lambda bi, xi: c(xi, w, bi, 1, 1).square().sum(), argnums=(0, 1)))(bs, x),
        "weights at in_dims 1": lambda c: v(lambda wi: c(x[0], wi, None, **grouped), in_dims=1)(ws.movedim(0, 1)),
        # F.conv2d's own rule gives samples that .view cannot take: it reshapes
        "outputs viewed": lambda c: v(lambda wi: (lambda o: o.view(-1) if c is ours else o.reshape(-1))(
            c(x[0], wi, None, **grouped)))(ws),
        "the op with keywords": lambda c: v(lambda xi: (
            torch.ops.tritonconv.conv2d(xi, w, bias=b, padding=[1, 1]) if c is ours else F.conv2d(xi, w, b, padding=1)))(x),
        "fused residual": lambda c: v(lambda xi, ri: c(xi, w, b, 1, 1, activation="relu", residual=ri))(x, res),
        "fused residual, ensemble": lambda c: v(
            lambda xi, wi, ri: c(xi, wi, None, **grouped, activation="relu", residual=ri))(x, ws, res),
        "vmap of vmap": lambda c: v(lambda wi: v(lambda xi: c(xi, wi, None, **grouped))(x))(ws),
        "grad of vmap": lambda c: g(lambda ws: v(lambda wi, xi: c(xi, wi, None, **grouped))(ws, x).square().sum())(ws),
        "per-sample grads": lambda c: v(g(lambda w, b, xi: c(xi[None], w, b, 1, 1).square().sum(), argnums=(0, 1)),
                                        in_dims=(None, None, 0))(w, b, x[:, 0]),
        "ensemble grads": lambda c: v(g(lambda wi, bi, xi: c(xi, wi, bi, **grouped).square().sum(),
                                        argnums=(0, 1, 2)))(ws, bs, x),
        "jvp of vmap": lambda c: torch.func.jvp(lambda t: v(lambda xi: c(xi, w, b, 1, 1))(t), (x,),
                                                (torch.ones_like(x),)),
        # conv_transpose2d (its weight (C_in, C_out / groups, R, S): the forward weights' transpose)
        "transposed": lambda c: v(lambda xi: c(xi, w.transpose(0, 1), b, transposed=True, stride=2))(x),
        "transposed, ensemble grads": lambda c: v(g(
            lambda wi, bi, xi: c(xi, wi, bi, transposed=True, padding=1, groups=2).square().sum(),
            argnums=(0, 1, 2)))(ws.reshape(B, 2, 3, 2, 3, 3).transpose(1, 3).reshape(B, 4, 3, 3, 3), bs, x),
    }, ours, ref


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
def test_vmap_over_weights_gives_samples_laid_out_as_unbatched(channels_last):
    """Each sample of an ensemble's output, input gradient and weight gradient (per-sample weights
    folded into groups) has the strides the unbatched call gives, so ``.view`` works on it as
    there (F.conv2d's own rule leaves them interleaved: its samples cannot be viewed)."""
    torch.manual_seed(13)
    x = torch.randn(2, 4, 6, 7, dtype=torch.float64, device=DEVICE)
    ws = torch.randn(3, 6, 2, 3, 3, dtype=torch.float64, device=DEVICE)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    g = torch.func.grad
    for fn in (lambda wi: functional.conv2d(x, wi, None, 1, 1, 1, 2),
               lambda wi: g(lambda t: functional.conv2d(t, wi, None, 1, 1, 1, 2).square().sum())(x),
               lambda wi: g(lambda wk: functional.conv2d(x, wk, None, 1, 1, 1, 2).square().sum())(wi)):
        unbatched = fn(ws[0])
        got = torch.func.vmap(fn)(ws)
        assert all(got[i].stride() == unbatched.stride() for i in range(3)), (got.stride(), unbatched.stride())


def test_vmap_over_biases_alone_runs_one_plain_conv(monkeypatch):
    """Per-sample biases with a shared weight: one conv of the shared weight and a bias added per
    sample, not the grouped conv (B times the work) that per-sample weights need."""
    def grouped(*args):
        raise AssertionError("took the grouped path")

    monkeypatch.setattr(ops, "_fold_channels", grouped)
    torch.manual_seed(14)
    x = torch.randn(2, 4, 5, 6, dtype=torch.float64, device=DEVICE)
    w = torch.randn(6, 4, 3, 3, dtype=torch.float64, device=DEVICE)
    bs = torch.randn(3, 6, dtype=torch.float64, device=DEVICE)
    got = torch.func.vmap(lambda bi: functional.conv2d(x, w, bi, 1, 1))(bs)
    assert_matches(got, torch.func.vmap(lambda bi: F.conv2d(x, w, bi, 1, 1))(bs), torch.float64)


@pytest.mark.parametrize("case", list(_vmap_cases()[0]))
def test_vmap_batching_rules(case):
    """torch.func.vmap runs the convs on their batching rules (one call: the batch folded into N,
    or per-sample weights folded into the groups), not once per sample, and agrees with
    F.conv2d's."""
    import warnings

    cases, ours, ref = _vmap_cases()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = cases[case](ours)
    want = cases[case](ref)
    flat = lambda r: torch.cat([t.flatten() for t in (r if isinstance(r, tuple) else (r,))])  # noqa: E731
    assert_matches(flat(got), flat(want), torch.float64)
    assert not [w for w in caught if _LOOPED in str(w.message)], "ran once per sample"


@pytest.mark.parametrize("within", ["functionalize", "device", "profiler", "flop_counter"])
def test_torch_func_under_modes_and_functionalize(within):
    """torch.func.grad under a function or dispatch mode or the profiler takes the transform
    Function too (the op's autograd fails there); functionalize, which it does not serve, the op."""
    import contextlib

    from torch.utils.flop_counter import FlopCounterMode

    x, w, _ = _data()
    x, w = x.double(), w.double()
    if within == "functionalize":
        got = torch.func.functionalize(lambda t: functional.conv2d(t, w, None, 1, 1))(x)
        assert_matches(got, F.conv2d(x, w, None, 1, 1), torch.float64)
        return
    # each under torch.device too: a function mode of its own
    ctx = {"device": contextlib.nullcontext, "profiler": torch.profiler.profile,
           "flop_counter": lambda: FlopCounterMode(display=False)}[within]
    with ctx(), torch.device(DEVICE):
        got = torch.func.grad(lambda t: functional.conv2d(t, w, None, 1, 1).square().sum())(x)
    want = torch.func.grad(lambda t: F.conv2d(t, w, None, 1, 1).square().sum())(x)
    assert_matches(got, want, torch.float64)


def test_the_newer_tf32_knobs_are_read():
    """After torch's fp32_precision knobs are set, reading the legacy allow_tf32 raises; the conv
    knob decides then (a subprocess: the knobs are process-wide)."""
    import subprocess
    import sys

    code = ("import torch\n"
            "from tritonconv.kernels._common import _cudnn_conv_tf32\n"
            "assert _cudnn_conv_tf32() is True\n"
            "if hasattr(torch.backends.cudnn, 'conv'):\n"
            "    torch.backends.cudnn.conv.fp32_precision = 'ieee'\n"
            "    assert _cudnn_conv_tf32() is False\n"
            "    torch.backends.cudnn.conv.fp32_precision = 'tf32'\n"
            "    assert _cudnn_conv_tf32() is True\n"
            "print('ok')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr[-2000:]


def test_a_depthwise_module_keeps_a_dual_weight_s_tangent():
    """A dual weight (torch.func.functional_call) bypasses the module's packed-weight cache."""
    import torch.autograd.forward_ad as fwAD

    torch.manual_seed(9)
    conv = tritonconv.nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False, device=DEVICE).double()
    x = torch.randn(2, 8, 5, 5, device=DEVICE, dtype=torch.float64).to(memory_format=torch.channels_last)
    t = torch.randn_like(conv.weight)
    with torch.no_grad():
        conv(x)  # fills the cache with the plain weight's pack
    with fwAD.dual_level():
        wd = fwAD.make_dual(conv.weight.detach(), t)
        got = fwAD.unpack_dual(torch.func.functional_call(conv, {"weight": wd}, (x,))).tangent
    assert got is not None
    assert_matches(got, F.conv2d(x, t, None, 1, 1, 1, 8), torch.float64)
