"""TorchScript: ``torch.jit.script`` of tritonconv's modules and of converted models, as of
torch.nn's (whose convs script), running tritonconv's ops."""

from __future__ import annotations

import io

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import tritonconv
import tritonconv.nn as tnn
from conftest import DEVICE, DispatchedOps, rel_err
from test_nn import TinyResNet, TinyUNet, _pair

F64 = torch.float64
# torch 2.13 deprecates TorchScript in favour of torch.compile and torch.export (which tritonconv's
# ops serve too: test_ecosystem.py); models scripted before still script with tritonconv's convs
pytestmark = pytest.mark.filterwarnings(r"ignore:`torch\.jit\.\w+` is deprecated:DeprecationWarning")


def _ran_ours(mode: DispatchedOps) -> bool:
    """Whether a tritonconv op reached the dispatcher and no aten convolution did."""
    return any("tritonconv" in op for op in mode.ops) and not any("convolution" in op for op in mode.ops)


def _scripted(module: nn.Module) -> torch.jit.ScriptModule:
    """``module`` scripted, then saved and loaded back (what a deployment does with it)."""
    buffer = io.BytesIO()
    torch.jit.save(torch.jit.script(module), buffer)
    buffer.seek(0)
    return torch.jit.load(buffer, map_location=DEVICE)


@pytest.mark.parametrize("kwargs", [
    dict(kernel_size=3, padding=1),
    dict(kernel_size=3, padding=(2, 1), dilation=(1, 2), stride=(2, 1)),
    dict(kernel_size=3, padding="same", dilation=2),
    dict(kernel_size=(4, 3), padding="same"),  # even: the extra row at the bottom, as F.conv2d
    dict(kernel_size=3, padding="valid", groups=3),
    dict(kernel_size=3, padding=(1, 2), padding_mode="reflect"),
    dict(kernel_size=3, padding=1, padding_mode="circular", stride=2, bias=False),
], ids=["pad1", "strided", "same", "same-even", "valid-grouped", "reflect", "circular"])
def test_scripted_conv2d_matches_torch_nn(kwargs):
    ref = nn.Conv2d(3, 6, **kwargs).to(DEVICE, F64)
    ours = tnn.Conv2d(3, 6, **kwargs).to(DEVICE, F64)
    ours.load_state_dict(ref.state_dict())
    scripted = _scripted(ours)
    x = torch.randn(2, 3, 9, 8, device=DEVICE, dtype=F64)
    with DispatchedOps() as mode:
        y = scripted(x)
    assert _ran_ours(mode), mode.ops
    assert rel_err(y, ref(x)) < 1e-12
    assert rel_err(scripted(x[0]), ref(x[0])) < 1e-12, "unbatched (C, H, W) input"


@pytest.mark.parametrize("residual_shape", [None, (2, 4, 6, 5), (4, 1, 1), (3, 2, 4, 6, 5)],
                         ids=["none", "full", "per-channel", "broadcasts-the-output"])
def test_scripted_fused_epilogue(residual_shape):
    conv = tnn.Conv2d(3, 4, 3, padding=1, device=DEVICE, dtype=F64)
    conv.activation, conv.negative_slope = "leaky_relu", 0.2
    scripted = _scripted(conv)
    x = torch.randn(2, 3, 6, 5, device=DEVICE, dtype=F64)
    r = None if residual_shape is None else torch.randn(residual_shape, device=DEVICE, dtype=F64)
    y = F.conv2d(x, conv.weight, conv.bias, padding=1)
    ref = F.leaky_relu(y if r is None else y + r, 0.2)
    with DispatchedOps() as mode:
        out = scripted(x, r)
    assert _ran_ours(mode), mode.ops
    fused = residual_shape is None or len(residual_shape) <= 4
    assert any("conv2d_fused" in op for op in mode.ops) == fused
    assert rel_err(out, ref) < 1e-12


def test_scripted_conv_transpose2d_with_output_size():
    ref = nn.ConvTranspose2d(4, 3, 3, stride=2, padding=1, groups=1).to(DEVICE, F64)
    ours = tnn.ConvTranspose2d(4, 3, 3, stride=2, padding=1).to(DEVICE, F64)
    ours.load_state_dict(ref.state_dict())
    scripted = _scripted(ours)
    x = torch.randn(2, 4, 5, 6, device=DEVICE, dtype=F64)
    for size in (None, [10, 12]):
        with DispatchedOps() as mode:
            y = scripted(x, size)
        assert _ran_ours(mode), mode.ops
        assert rel_err(y, ref(x, size)) < 1e-12


@pytest.mark.parametrize("model_cls", [TinyResNet, TinyUNet])
def test_scripted_converted_model_trains_like_the_original(model_cls):
    ref, ours = _pair(model_cls, F64)
    ref.train()
    scripted = _scripted(tritonconv.convert(ours).train())
    x = torch.randn(2, 3, 12, 12, device=DEVICE, dtype=F64)
    ref_out, out = ref(x), scripted(x)
    assert rel_err(out, ref_out) < 1e-11
    weight = torch.randn_like(out)  # a loss whose gradient is not the same everywhere
    grads = torch.autograd.grad((out * weight).sum(), list(scripted.parameters()))
    ref_grads = torch.autograd.grad((ref_out * weight).sum(), list(ref.parameters()))
    # as one vector: a bias before a training-mode BatchNorm has a zero gradient, rounding apart
    assert rel_err(torch.cat([g.flatten() for g in grads]), torch.cat([g.flatten() for g in ref_grads])) < 1e-11


def test_scripted_fused_model():
    ref, ours = _pair(TinyResNet, F64)
    fused = tritonconv.convert(ours, fuse=True)
    scripted = _scripted(fused)
    x = torch.randn(2, 3, 12, 12, device=DEVICE, dtype=F64)
    with torch.no_grad(), DispatchedOps() as mode:
        out = scripted(x)
    assert sum("conv2d_fused" in op for op in mode.ops) == sum(
        m.activation is not None for m in fused.modules() if isinstance(m, tnn.Conv2d))
    with torch.no_grad():
        assert rel_err(out, ref(x)) < 1e-11
