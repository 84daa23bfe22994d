"""tritonconv.nn modules, convert() with and without fusion, and the fused epilogue op."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import tritonconv
import tritonconv.nn as tnn

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
TOL = {torch.float64: 1e-11, torch.float32: 1e-5 if DEVICE == "cpu" else 5e-3}


def rel_err(out, ref):
    out, ref = out.detach().double().cpu(), ref.detach().double().cpu()
    assert out.shape == ref.shape
    assert torch.isfinite(out).all()
    return ((out - ref).norm() / ref.norm().clamp_min(1e-30)).item()


# ----------------------------------------------------------------------------- test networks


class Bottleneck(nn.Module):
    def __init__(self, cin, mid, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, mid, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.conv2 = nn.Conv2d(mid, mid, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(mid, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        out += identity
        return self.relu(out)


class TinyResNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 7, stride=2, padding=3, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.layer1 = Bottleneck(8, 4, 16, 1)
        self.layer2 = Bottleneck(16, 8, 16, 2)
        self.fc = nn.Linear(16, 5)

    def forward(self, x):
        x = self.layer2(self.layer1(self.stem(x)))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class TinyUNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.enc1 = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.SiLU())
        self.down = nn.Conv2d(8, 12, 3, stride=2, padding=1)
        self.mid = nn.Sequential(nn.Conv2d(12, 12, 3, padding=1, padding_mode="reflect"), nn.GELU())
        self.up = nn.ConvTranspose2d(12, 8, 2, stride=2)
        self.dec = nn.Sequential(nn.Conv2d(16, 8, 3, padding=1), nn.BatchNorm2d(8), nn.LeakyReLU(0.1))
        self.out = nn.Conv2d(8, 2, 1)

    def forward(self, x):
        e = self.enc1(x)
        m = self.mid(F.hardswish(self.down(e)))
        d = self.dec(torch.cat([self.up(m), e], dim=1))
        return torch.sigmoid(self.out(d))


def _randomize_bn(model):
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)


def _pair(model_cls, dtype):
    torch.manual_seed(0)
    ref = model_cls().to(DEVICE, dtype).eval()
    _randomize_bn(ref)
    ours = model_cls().to(DEVICE, dtype).eval()
    ours.load_state_dict(ref.state_dict())
    return ref, ours


def _count(model, cls):
    return sum(type(m) is cls for m in model.modules())


@pytest.mark.parametrize("model_cls", [TinyResNet, TinyUNet])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("fuse", [False, True])
def test_converted_model_matches_original(model_cls, dtype, fuse):
    ref, ours = _pair(model_cls, dtype)
    n_convs = _count(ref, nn.Conv2d) + _count(ref, nn.ConvTranspose2d)
    converted = tritonconv.convert(ours, fuse=fuse)
    assert _count(converted, nn.Conv2d) == 0 and _count(converted, nn.ConvTranspose2d) == 0
    n_ours = _count(converted, tnn.Conv2d) + _count(converted, tnn.ConvTranspose2d)
    if fuse:
        assert 0 < n_ours <= n_convs
        assert _count(converted, nn.BatchNorm2d) == 0, "every eval BatchNorm after a conv should be folded"
        assert any(m.activation is not None for m in converted.modules() if isinstance(m, tnn.Conv2d))
    else:
        assert converted is ours and n_ours == n_convs
    x = torch.randn(2, 3, 16, 16, device=DEVICE, dtype=dtype)
    with torch.no_grad():
        assert rel_err(converted(x), ref(x)) < TOL[dtype]


def test_fuse_resnet_folds_residual_and_relu_into_the_epilogue():
    ref, ours = _pair(TinyResNet, torch.float64)
    fused = tritonconv.convert(ours, fuse=True)
    convs = [m for m in fused.modules() if isinstance(m, tnn.Conv2d)]
    # stem, 3 per bottleneck, 2 downsample convs
    assert len(convs) == 1 + 3 + 3 + 2
    code = fused.code
    assert "add" not in code, "the residual adds should be fused away:\n" + code
    assert sum(m.activation == "relu" for m in convs) == 1 + 3 * 2


def test_convert_shares_parameters_and_state_dict_round_trips():
    torch.manual_seed(1)
    model = TinyUNet().to(DEVICE)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    params = {id(p) for p in model.parameters()}
    tritonconv.convert(model)
    assert {id(p) for p in model.parameters()} == params
    sd = model.state_dict()
    assert sd.keys() == before.keys()
    assert all(torch.equal(sd[k], before[k]) for k in sd)
    plain = TinyUNet().to(DEVICE)
    plain.load_state_dict(sd)  # tritonconv -> torch.nn
    back = tritonconv.convert(TinyUNet().to(DEVICE))
    back.load_state_dict(plain.state_dict())  # torch.nn -> tritonconv
    x = torch.randn(1, 3, 8, 8, device=DEVICE)
    with torch.no_grad():
        assert rel_err(back(x), plain(x)) < TOL[torch.float32]


def test_module_constructors_match_torch_nn():
    a = tnn.Conv2d(4, 6, (3, 5), stride=2, padding=(1, 2), dilation=1, groups=2, bias=False, device=DEVICE)
    b = nn.Conv2d(4, 6, (3, 5), stride=2, padding=(1, 2), dilation=1, groups=2, bias=False, device=DEVICE)
    assert isinstance(a, nn.Conv2d) and a.state_dict().keys() == b.state_dict().keys()
    b.load_state_dict(a.state_dict())
    x = torch.randn(2, 4, 9, 9, device=DEVICE)
    assert rel_err(a(x), b(x)) < TOL[torch.float32]
    t = tnn.ConvTranspose2d(6, 4, 3, stride=2, padding=1, output_padding=1, device=DEVICE)
    u = nn.ConvTranspose2d(6, 4, 3, stride=2, padding=1, output_padding=1, device=DEVICE)
    u.load_state_dict(t.state_dict())
    y = torch.randn(2, 6, 5, 5, device=DEVICE)
    assert rel_err(t(y), u(y)) < TOL[torch.float32]
    assert rel_err(t(y, output_size=[9, 10]), u(y, output_size=[9, 10])) < TOL[torch.float32]


@pytest.mark.parametrize("padding_mode", ["zeros", "reflect", "replicate", "circular"])
@pytest.mark.parametrize("padding", [1, "same"])
def test_every_padding_mode(padding_mode, padding):
    torch.manual_seed(2)
    ref = nn.Conv2d(3, 5, 3, padding=padding, padding_mode=padding_mode, device=DEVICE, dtype=torch.float64)
    ours = tnn.Conv2d(3, 5, 3, padding=padding, padding_mode=padding_mode, device=DEVICE, dtype=torch.float64)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(2, 3, 7, 6, device=DEVICE, dtype=torch.float64, requires_grad=True)
    y, yr = ours(x), ref(x)
    assert rel_err(y, yr) < 1e-12
    gx, gw = torch.autograd.grad(y.sum(), (x, ours.weight))
    gxr, gwr = torch.autograd.grad(yr.sum(), (x, ref.weight))
    assert rel_err(gx, gxr) < 1e-12 and rel_err(gw, gwr) < 1e-12


def test_convert_warns_and_skips_what_it_cannot_serve():
    model = nn.Sequential(nn.Conv2d(3, 4, 3).to(DEVICE), nn.Conv2d(4, 4, 3).to(DEVICE))
    model[1].to(torch.complex64)
    with pytest.warns(UserWarning, match=r"1 \(dtype torch.complex64"):
        tritonconv.convert(model)
    assert type(model[0]) is tnn.Conv2d and type(model[1]) is nn.Conv2d


def test_fuse_falls_back_to_sequential_order_when_untraceable():
    class Dynamic(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())

        def forward(self, x):
            if x.sum() > 0:  # data-dependent control flow: fx cannot trace this
                return self.body(x)
            return -self.body(x)

    torch.manual_seed(3)
    ref = Dynamic().to(DEVICE, torch.float64).eval()
    _randomize_bn(ref)
    ours = Dynamic().to(DEVICE, torch.float64).eval()
    ours.load_state_dict(ref.state_dict())
    with pytest.warns(UserWarning, match="could not trace"):
        fused = tritonconv.convert(ours, fuse=True)
    assert type(fused.body[0]) is tnn.Conv2d and fused.body[0].activation == "relu"
    assert type(fused.body[1]) is nn.Identity and type(fused.body[2]) is nn.Identity
    x = torch.randn(1, 3, 6, 6, device=DEVICE, dtype=torch.float64)
    with torch.no_grad():
        assert rel_err(fused(x), ref(x)) < 1e-11


def test_fused_module_with_broadcast_residual():
    torch.manual_seed(4)
    conv = tnn.Conv2d(3, 4, 3, padding=1, device=DEVICE, dtype=torch.float64)
    conv.activation = "silu"
    x = torch.randn(2, 3, 5, 5, device=DEVICE, dtype=torch.float64)
    r = torch.randn(1, 4, 1, 5, device=DEVICE, dtype=torch.float64)
    ref = F.silu(F.conv2d(x, conv.weight, conv.bias, padding=1) + r)
    assert rel_err(conv(x, r), ref) < 1e-12


@pytest.mark.parametrize("shape", [(1, 4, 1, 5), (4, 1, 1), (5,)], ids=["row", "channel", "column"])
def test_functional_residual_broadcasts_like_an_add(shape):
    """``conv2d(..., residual=r)`` takes what ``conv + r`` takes; autograd sums r's gradient over
    the broadcast dimensions."""
    torch.manual_seed(4)
    kw = dict(dtype=torch.float64, device=DEVICE)
    x = torch.randn(2, 3, 5, 5, **kw)
    w, b = torch.randn(4, 3, 3, 3, **kw), torch.randn(4, **kw)
    r = torch.randn(shape, **kw, requires_grad=True)
    y = tritonconv.conv2d(x, w, b, padding=1, activation="gelu", residual=r)
    ref = F.gelu(F.conv2d(x, w, b, padding=1) + r)
    assert rel_err(y, ref) < 1e-12
    gy = torch.randn_like(ref)
    (got,), (want,) = torch.autograd.grad(y, r, gy), torch.autograd.grad(ref, r, gy)
    assert got.shape == r.shape and rel_err(got, want) < 1e-11
    with pytest.raises(ValueError, match="residual has size"):
        tritonconv.conv2d(x, w, b, padding=1, residual=torch.randn(3, 1, 1, **kw))


ACTIVATIONS = {
    "relu": F.relu, "silu": F.silu, "gelu": F.gelu, "gelu_tanh": lambda z: F.gelu(z, approximate="tanh"),
    "leaky_relu": lambda z: F.leaky_relu(z, 0.2), "hardswish": F.hardswish, "sigmoid": torch.sigmoid,
}


@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
@pytest.mark.parametrize("with_residual", [False, True])
def test_fused_epilogue_and_its_gradient(activation, with_residual):
    torch.manual_seed(5)
    kw = dict(dtype=torch.float64, device=DEVICE)
    x = torch.randn(2, 4, 6, 5, **kw).to(memory_format=torch.channels_last).requires_grad_()
    w = torch.randn(6, 2, 3, 3, **kw).requires_grad_()
    b = torch.randn(6, **kw).requires_grad_()
    r = torch.randn(2, 6, 3, 3, **kw).requires_grad_() if with_residual else None
    y = tritonconv.conv2d(x, w, b, 2, 1, 1, 2, activation=activation, residual=r, negative_slope=0.2)
    z = F.conv2d(x, w, b, 2, 1, 1, 2)
    pre = z + r if with_residual else z
    ref = ACTIVATIONS[activation](pre)
    # the values against the activation on the CPU: aten's CUDA hardswish multiplies by 1.0f / 6.0f,
    # a float32 constant, so its float64 result is 3e-8 off (the fused kernel's is not)
    assert rel_err(y, ACTIVATIONS[activation](pre.detach().cpu()).to(y.device)) < 1e-12
    inputs = (x, w, b) + ((r,) if with_residual else ())
    gy = torch.randn_like(ref)
    for got, want in zip(torch.autograd.grad(y, inputs, gy), torch.autograd.grad(ref, inputs, gy)):
        assert rel_err(got, want) < 1e-11


def test_fused_op_registration_and_errors():
    x = torch.randn(1, 3, 5, 5, device=DEVICE)
    w = torch.randn(4, 3, 3, 3, device=DEVICE)
    torch.library.opcheck(torch.ops.tritonconv.conv2d_fused, (x, w, None, [1, 1], [1, 1], [1, 1], 1, "silu", 0.01,
                                                              torch.randn(1, 4, 5, 5, device=DEVICE)))
    with pytest.raises(ValueError, match="unknown activation"):
        tritonconv.conv2d(x, w, activation="swish")
    with pytest.raises(ValueError, match="residual has size"):
        tritonconv.conv2d(x, w, residual=torch.randn(1, 4, 5, 5, device=DEVICE))


def test_fused_double_backward():
    torch.manual_seed(6)
    x = torch.randn(1, 2, 4, 4, dtype=torch.float64, device=DEVICE, requires_grad=True)
    w = torch.randn(2, 2, 2, 2, dtype=torch.float64, device=DEVICE, requires_grad=True)
    fn = lambda x, w: tritonconv.conv2d(x, w, None, 1, 1, activation="silu")  # noqa: E731
    assert torch.autograd.gradgradcheck(fn, (x, w), eps=1e-6, atol=1e-8, fast_mode=True)


def test_packed_weight_is_cached_until_the_parameter_changes():
    torch.manual_seed(7)
    conv = tnn.Conv2d(4, 6, 3, padding=1, device=DEVICE)
    x = torch.randn(2, 4, 5, 5, device=DEVICE).to(memory_format=torch.channels_last)
    with torch.no_grad():
        y1 = conv(x)
        packed = conv._packed_weight[-1]
        assert packed.is_contiguous(memory_format=torch.channels_last)
        conv(x)
        assert conv._packed_weight[-1] is packed, "inference must reuse the pack"
        conv.weight.mul_(2)  # an in-place update bumps the version: repack
        y2 = conv(x)
        assert conv._packed_weight[-1] is not packed
    ref = F.conv2d(x, conv.weight, conv.bias, 1, 1)
    assert rel_err(y2, ref) < TOL[torch.float32]
    assert rel_err(y1 * 1, F.conv2d(x, conv.weight / 2, conv.bias, 1, 1)) < TOL[torch.float32]
    assert y2.is_contiguous(memory_format=torch.channels_last)
    # NCHW input: no pack, so the output's layout is exactly torch.nn.Conv2d's
    y3 = conv(x.contiguous())
    assert y3.is_contiguous() and rel_err(y3, ref) < TOL[torch.float32]
    # training: gradients flow to the parameter through the pack
    conv(x).sum().backward()
    assert conv.weight.grad is not None and torch.isfinite(conv.weight.grad).all()


@pytest.mark.parametrize("groups", [1, 4], ids=["channels_last_pack", "depthwise_pack"])
def test_packed_weight_follows_a_swapped_storage(groups):
    """``weight.data = ...`` and ``module.to()`` give the parameter another storage without moving
    its version counter: the pack made from the old one must not be reused (it was: rel err 1.0
    after a swap, and a dtype error after ``.double()``), also where the new storage reuses a freed
    one's address."""
    torch.manual_seed(9)
    conv = tnn.Conv2d(4, 8, 3, padding=1, groups=groups, device=DEVICE)
    x = torch.randn(2, 4, 5, 5, device=DEVICE).to(memory_format=torch.channels_last)

    def check(y, weight, bias, inp):
        ref = F.conv2d(inp.double(), weight.double(), bias.double(), 1, 1, 1, groups)
        assert rel_err(y, ref) < TOL[y.dtype]

    with torch.no_grad():
        conv(x)
        conv.weight.data = torch.randn_like(conv.weight)  # version unchanged, storage new
        check(conv(x), conv.weight, conv.bias, x)
        for _ in range(3):  # swap in and free storages of one size: the allocator hands addresses back
            conv.weight.data = torch.randn_like(conv.weight)
        check(conv(x), conv.weight, conv.bias, x)
        conv.double()  # module.to(): param.data = fn(param)
        check(conv(x.double()), conv.weight, conv.bias, x.double())


@pytest.mark.parametrize("groups", [1, 4], ids=["channels_last_pack", "depthwise_pack"])
def test_a_pack_made_in_inference_mode_serves_a_frozen_layer_in_training(groups):
    """A frozen layer (weight without grad) packs once, even with autograd on; a pack first made
    under torch.inference_mode must then still be saved for backward (an inference tensor raised
    'Inference tensors cannot be saved for backward')."""
    torch.manual_seed(10)
    conv = tnn.Conv2d(4, 8, 3, padding=1, groups=groups, device=DEVICE)
    conv.weight.requires_grad_(False)
    x = torch.randn(2, 4, 5, 5, device=DEVICE).to(memory_format=torch.channels_last)
    with torch.inference_mode():
        conv(x)
    xg = x.clone().requires_grad_()
    conv(xg).backward(torch.ones(2, 8, 5, 5, device=DEVICE))
    xd = x.double().requires_grad_()
    F.conv2d(xd, conv.weight.double(), conv.bias.double(), 1, 1, 1, groups).backward(
        torch.ones(2, 8, 5, 5, dtype=torch.float64, device=DEVICE))
    assert rel_err(xg.grad, xd.grad) < TOL[torch.float32]


def test_a_module_with_a_pack_saves_and_copies_without_it():
    """torch.save of the whole module and copy.deepcopy after a call: the pack is a cache, left
    out (its StorageWeakRef cannot be pickled, and a copied one was not freed right)."""
    import copy
    import io

    model = tritonconv.convert(torch.nn.Sequential(torch.nn.Conv2d(4, 8, 3, padding=1),
                                                   torch.nn.Conv2d(8, 8, 3, padding=1, groups=8))).to(DEVICE).eval()
    x = torch.randn(2, 4, 5, 5, device=DEVICE).to(memory_format=torch.channels_last)
    with torch.no_grad():
        y = model(x)
        assert all("_packed_weight" in m.__dict__ for m in model)
        buf = io.BytesIO()
        torch.save(model, buf)
        buf.seek(0)
        for other in (copy.deepcopy(model), torch.load(buf, weights_only=False)):
            assert not any("_packed_weight" in m.__dict__ for m in other)
            assert torch.equal(other(x), y)
            assert all("_packed_weight" in m.__dict__ for m in other), "the copy packs on first use"


@pytest.mark.parametrize("groups", [1, 4], ids=["channels_last_pack", "depthwise_pack"])
def test_functional_call_gradients_and_per_sample_gradients(groups):
    """torch.func.functional_call under grad and vmap(grad) (MAML, per-sample gradients) after
    the module's pack cache is full: the gradients flow through the packing, as torch.nn's do."""
    from torch.func import functional_call, grad, vmap

    torch.manual_seed(12)
    conv = tnn.Conv2d(4, 8, 3, padding=1, groups=groups, device=DEVICE).double()
    ref = nn.Conv2d(4, 8, 3, padding=1, groups=groups, device=DEVICE).double()
    ref.load_state_dict(conv.state_dict())
    x = torch.randn(2, 4, 5, 5, dtype=torch.float64, device=DEVICE).to(memory_format=torch.channels_last)
    params = {k: v.detach() for k, v in conv.named_parameters()}
    with torch.no_grad():
        conv(x)  # the cache holds the plain weight's pack
    loss = lambda m: lambda p, xs: functional_call(m, p, (xs,)).square().sum()  # noqa: E731
    got, want = grad(loss(conv))(params, x), grad(loss(ref))(params, x)
    per_got = vmap(grad(lambda p, xi: loss(conv)(p, xi[None])), in_dims=(None, 0))(params, x)
    per_want = vmap(grad(lambda p, xi: loss(ref)(p, xi[None])), in_dims=(None, 0))(params, x)
    for k in params:
        assert rel_err(got[k], want[k]) < TOL[torch.float64]
        assert rel_err(per_got[k], per_want[k]) < TOL[torch.float64]


def test_a_compiled_module_saves_whole():
    """torch.nn.Module's own __getstate__ leaves out what module.compile() set; ours calls it."""
    import io

    conv = tnn.Conv2d(4, 8, 3, padding=1, device=DEVICE)
    conv.compile()
    buf = io.BytesIO()
    torch.save(conv, buf)
    buf.seek(0)
    assert isinstance(torch.load(buf, weights_only=False), tnn.Conv2d)


def test_forget_packed_weights_after_writes_through_data():
    """An in-place write through weight.data moves no version counter the cache can see;
    forget_packed_weights drops the packs so the next call sees it."""
    conv = tnn.Conv2d(4, 8, 3, padding=1, device=DEVICE)
    x = torch.randn(2, 4, 5, 5, device=DEVICE).to(memory_format=torch.channels_last)
    with torch.no_grad():
        conv(x)
        conv.weight.data.mul_(2)
        tnn.forget_packed_weights(conv)
        y = conv(x)
    assert rel_err(y, F.conv2d(x, conv.weight, conv.bias, 1, 1)) < TOL[torch.float32]


@pytest.mark.parametrize("groups", [1, 4], ids=["channels_last_pack", "depthwise_pack"])
def test_vmap_over_channels_last_input_and_model_ensembles(groups):
    """vmap cannot ask a tensor for its memory format: under torch.func the module takes its
    weight as it is (any strides work). Over channels_last inputs, and over stacked parameters
    (an ensemble), as torch.nn's modules."""
    from torch.func import functional_call, stack_module_state, vmap

    torch.manual_seed(13)
    mods = [tnn.Conv2d(4, 4, 3, padding=1, groups=groups, device=DEVICE).double() for _ in range(2)]
    refs = [nn.Conv2d(4, 4, 3, padding=1, groups=groups, device=DEVICE).double() for _ in range(2)]
    for m, r in zip(mods, refs):
        r.load_state_dict(m.state_dict())
    x = torch.randn(3, 1, 4, 5, 5, dtype=torch.float64, device=DEVICE)
    x_cl = torch.stack([t.to(memory_format=torch.channels_last) for t in x])
    got = vmap(lambda xi: mods[0](xi))(x_cl)
    assert rel_err(got, vmap(lambda xi: refs[0](xi))(x_cl)) < TOL[torch.float64]
    params, buffers = stack_module_state(mods)
    ens = vmap(lambda p, b: functional_call(mods[0], (p, b), (x_cl[0],)))(params, buffers)
    want = torch.stack([r(x_cl[0]) for r in refs])
    assert rel_err(ens, want) < TOL[torch.float64]


def test_depthwise_weight_is_kept_taps_major():
    """A depthwise module keeps its weight with each tap's channels contiguous (vector loads in
    the depthwise kernels); the result, the gradient and the output layout are unchanged."""
    from tritonconv.kernels import depthwise

    torch.manual_seed(8)
    conv = tnn.Conv2d(16, 32, 3, padding=1, groups=16, device=DEVICE)  # channel multiplier 2
    x = torch.randn(2, 16, 6, 7, device=DEVICE).to(memory_format=torch.channels_last)
    ref = F.conv2d(x.double(), conv.weight.double(), conv.bias.double(), 1, 1, 1, 16)
    with torch.no_grad():
        y = conv(x)
        packed = conv._packed_weight[-1]
        assert depthwise.is_packed(packed) and not depthwise.is_packed(conv.weight)
        assert torch.equal(packed, conv.weight)
        conv(x)
        assert conv._packed_weight[-1] is packed
    assert rel_err(y, ref) < TOL[torch.float32] and y.is_contiguous(memory_format=torch.channels_last)
    xg = x.detach().requires_grad_()
    conv(xg).backward(torch.ones(ref.shape, device=DEVICE))
    xd, wd = x.double().requires_grad_(), conv.weight.detach().double().requires_grad_()
    F.conv2d(xd, wd, None, 1, 1, 1, 16).backward(torch.ones(ref.shape, dtype=torch.float64, device=DEVICE))
    assert rel_err(conv.weight.grad, wd.grad) < TOL[torch.float32]
    assert rel_err(xg.grad, xd.grad) < TOL[torch.float32]


@pytest.mark.parametrize("family", ["depthwise", "implicit"])
def test_every_family_reads_a_taps_major_weight(family):
    from tritonconv.kernels import depthwise, router

    x = torch.randn(2, 8, 5, 6, device=DEVICE).to(memory_format=torch.channels_last)
    w = depthwise.pack_weight(torch.randn(8, 1, 3, 3, device=DEVICE))
    with router.force(family):
        y = tritonconv.conv2d(x, w, None, 1, 1, 1, 8)
    assert rel_err(y, F.conv2d(x.double(), w.double(), None, 1, 1, 1, 8)) < TOL[torch.float32]


def test_conv_transpose2d_phase_weights_are_built_once_in_inference(monkeypatch):
    """ConvTranspose2d's forward is the tap_tma dgrad, which builds a flipped weight per stride
    phase: in inference once per parameter version (any input size), in training per call."""
    from tritonconv.kernels import dgrad, router

    builds = []  # the phase weights built, per phase
    real = dgrad._build_phase_weights
    monkeypatch.setattr(dgrad, "_build_phase_weights",
                        lambda w, pb, reached: builds.extend(reached) or real(w, pb, reached))
    torch.manual_seed(8)
    up = tnn.ConvTranspose2d(16, 8, 3, stride=2, padding=1, output_padding=1, device=DEVICE)
    x = torch.randn(2, 16, 4, 5, device=DEVICE).to(memory_format=torch.channels_last)
    uses_tap_tma = dgrad.tap_tma_usable(x, up.weight, tritonconv.spec.conv_transpose2d_problem(
        x, up.weight, up.bias, 2, 1, 1))
    if not uses_tap_tma:
        pytest.skip("no TMA here (sm_80): the phase weights are not built")

    def ref(inp):
        return F.conv_transpose2d(inp.double(), up.weight.double(), up.bias.double(), 2, 1, 1)

    x_big = torch.randn(1, 16, 6, 3, device=DEVICE).to(memory_format=torch.channels_last)
    with torch.no_grad(), router.force("tap_tma"):
        y1 = up(x)
        first = len(builds)
        assert first == 4  # a 3x3 kernel at stride 2 reaches all 4 phases
        y2 = up(x)
        y3 = up(x_big)  # another image size: the same taps, the same phase weights
        assert len(builds) == first and torch.equal(y1, y2)
        assert rel_err(y1, ref(x)) < TOL[torch.float32] and rel_err(y3, ref(x_big)) < TOL[torch.float32]
        up.weight.mul_(-1)  # an in-place update bumps the version: rebuilt
        y4 = up(x)
        assert len(builds) == 2 * first and rel_err(y4, ref(x)) < TOL[torch.float32]
        up.half()  # new storage behind the same parameter (its version does not move): rebuilt
        y5 = up(x.half())
        assert len(builds) == 3 * first and y5.dtype == torch.float16 and rel_err(y5, ref(x.half())) < 5e-3
        up.float()
    builds.clear()
    with router.force("tap_tma"):
        up(x).sum().backward()  # training: the weight changes every step, so nothing is kept
        up(x)
    assert len(builds) == 2 * first and up.weight.grad is not None
    assert id(up.weight) not in dgrad._phase_weight_cache  # and what inference kept is dropped
    with torch.inference_mode():  # inference tensors have no version counter: never kept
        frozen = tnn.ConvTranspose2d(16, 8, 3, stride=2, padding=1, output_padding=1, device=DEVICE)
        with router.force("tap_tma"):
            y6 = frozen(x)
        assert id(frozen.weight) not in dgrad._phase_weight_cache
    assert y6.shape == y1.shape
