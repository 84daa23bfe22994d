"""Every kernel family, forced in turn, on the problems it accepts, against float64 PyTorch."""

from __future__ import annotations

import contextlib

import pytest
import torch
import torch.nn.functional as F
import triton
import triton.language as tl
from hypothesis import HealthCheck, event, given
from hypothesis import strategies as st

import tritonconv
from tritonconv import configs, plans, spec
from tritonconv.kernels._common import INTERPRETER
from tritonconv.kernels import _common, depthwise, fprop, router

from conftest import property_settings

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# TMA kernels run on sm_90+ and in the interpreter; elsewhere their launchers fall back
TMA = DEVICE == "cpu" or torch.cuda.get_device_capability()[0] >= 9


def _expected(kernel: str) -> str:
    """The kernel a launch is expected to run: a TMA kernel's fallback where TMA is unavailable."""
    return kernel if TMA else {"gemm1x1_wgrad_tma": "gemm1x1_wgrad", "fprop_tma": "fprop",
                               "fprop_tap_tma": "fprop", "gemm1x1_tma": "gemm1x1"}.get(kernel, kernel)
TOL = {torch.float64: 1e-12, torch.float32: 1e-5 if DEVICE == "cpu" else 5e-3, torch.float16: 5e-3,
       torch.bfloat16: 3e-2}


def rel_err(out, ref):
    out, ref = out.detach().double().cpu(), ref.detach().double().cpu()
    assert out.shape == ref.shape
    assert torch.isfinite(out).all(), "unwritten (NaN-poisoned) output"
    n = ref.norm().item()
    return (out - ref).norm().item() / (n if n > 0 else 1.0)


# (N, C, H, W, K, R, S, stride, padding, dilation, groups)
PROBLEMS = {
    "depthwise": [
        (2, 8, 9, 9, 8, 3, 3, 1, 1, 1, 8),
        (1, 6, 11, 10, 12, 5, 5, 2, 2, 1, 6),  # channel multiplier 2
        (1, 3, 9, 9, 3, 7, 7, 1, 3, 1, 3),  # ConvNeXt's 7x7
        (1, 4, 9, 7, 4, 3, 3, (2, 1), (1, 2), (2, 1), 4),
        (1, 3, 6, 6, 3, 2, 2, 3, 0, 1, 3),  # stride > kernel
    ],
    "smallc": [
        (2, 3, 15, 15, 8, 7, 7, 2, 3, 1, 1),  # the RGB stem
        (1, 1, 9, 8, 5, 3, 3, 1, 1, 1, 1),
        (2, 6, 7, 7, 9, 3, 3, 1, 1, 2, 3),  # grouped, 2 channels per group
        (1, 8, 6, 9, 17, 2, 3, (1, 2), (0, 1), 1, 1),
    ],
    "smallc_pad": [  # x and w copied with channels padded to 4 or 8; grouped problems go to smallc
        (2, 3, 15, 15, 8, 7, 7, 2, 3, 1, 1),  # the RGB stem: pitch 4
        (1, 1, 9, 8, 5, 3, 3, 1, 1, 1, 1),
        (1, 5, 7, 6, 9, 3, 2, 1, (2, 0), 2, 1),  # pitch 8, dilated
        (1, 8, 6, 9, 17, 2, 3, (1, 2), (0, 1), 1, 1),  # already a pitch: copied all the same
    ],
    "smallc_rows": [  # the padded copies, one kernel row a step: BLOCK_K = S*C_PITCH to a power of two
        (2, 3, 15, 15, 8, 7, 7, 2, 3, 1, 1),  # the RGB stem: rows of 28 columns in 32
        (1, 3, 13, 11, 6, 3, 3, 2, 1, 1, 1),  # MobileNetV2's stem: 12 in 16
        (1, 3, 12, 12, 5, 4, 4, 4, 0, 1, 1),  # ConvNeXt's patchify stem: 16, no padding
        (1, 1, 9, 8, 5, 3, 1, 1, (1, 0), 1, 1),  # one tap a row: 4 columns in 16
        (1, 5, 7, 9, 9, 3, 2, (1, 2), (2, 1), (2, 3), 1),  # pitch 8, dilated: taps 3 pixels apart
        (1, 8, 6, 9, 17, 2, 3, (1, 2), (0, 1), 1, 1),  # already a pitch
        (1, 3, 9, 9, 70, 3, 3, 2, 1, 1, 1),  # 70 output channels: several column tiles
    ],
    "gemm1x1": [
        (2, 17, 7, 7, 33, 1, 1, 1, 0, 1, 1),
        (1, 12, 5, 6, 9, 1, 1, 1, 0, 1, 3),
        (3, 40, 4, 4, 20, 1, 1, 1, 0, 1, 1),
        # strided: the GEMM over every s-th pixel (ResNet's downsampling 1x1)
        (2, 16, 8, 6, 24, 1, 1, 2, 0, 1, 1),
        (1, 12, 7, 9, 8, 1, 1, (3, 2), 0, (1, 2), 2),  # odd image, rows 0, 3, 6 and columns 0-8 by 2; grouped
        (1, 8, 2, 5, 8, 1, 1, 3, 0, 1, 1),  # an image shorter than the stride: one output row
    ],
    "gemm1x1_tma": [  # TMA where the layout allows (channels_last, 16-byte rows), pointer loads otherwise
        (2, 16, 7, 7, 24, 1, 1, 1, 0, 1, 1),
        (1, 48, 5, 6, 36, 1, 1, 1, 0, 1, 3),  # grouped: 16 channels per group
        (2, 12, 3, 5, 20, 1, 1, 1, 0, 1, 1),  # fp16 rows of 24 bytes: falls back
        (2, 32, 9, 9, 72, 1, 1, 1, 0, 1, 1),  # 3 x 3 tiles: each persistent program loops over several
    ],
    "splitk": [
        (2, 64, 5, 5, 20, 3, 3, 1, 1, 1, 1),
        (1, 72, 6, 5, 16, 3, 3, 2, 1, 1, 1),
        (1, 128, 3, 3, 8, 3, 3, 1, 1, 1, 2),
    ],
    "tap_tma_splitk": [  # tap_tma's boxes, the reduction split (fprop.choose_split_k: 2 chunks on a CPU)
        (3, 64, 5, 5, 24, 3, 3, 1, 1, 1, 1),
        (5, 64, 3, 3, 24, 3, 3, 1, 1, 1, 1),  # 3x3 outputs: boxes of 4 images, the second past image 4
        (1, 128, 6, 8, 16, 3, 3, 2, 1, 1, 2),  # stride 2, grouped
        (2, 60, 5, 5, 16, 3, 3, 1, 1, 1, 1),  # 120-byte fp16 pixel rows: no TMA, the implicit split-K
    ],
    "tap_tma": [  # TMA boxes of x's phase view per tap (zero-filled outside: the padding) + TMA weight
        (2, 16, 9, 10, 24, 3, 3, 1, 1, 1, 1),  # 9x10 output: partial 8x8 tiles at the edges
        (1, 32, 7, 7, 16, 3, 3, 1, 2, 2, 2),  # dilation 2, grouped: boxes cross into the next group's channels
        (1, 8, 6, 5, 12, 5, 5, 1, 2, 1, 1),  # C=8 < BLOCK_K, 5x5
        (2, 24, 6, 6, 9, 3, 3, 1, 0, 1, 3),  # unpadded, 8 channels per group
        (2, 9, 7, 7, 10, 3, 3, 1, 1, 1, 1),  # 9 channels: no 16-byte pixel rows, falls back
        (1, 16, 7, 9, 16, 3, 5, 1, (1, 2), (2, 1), 1),  # R != S, pad_h != pad_w, dil_h != dil_w
        # strided: boxes of the phase view (N, H/sh, sh, W/sw, sw*C)
        (2, 16, 10, 12, 24, 3, 3, 2, 1, 1, 1),  # ResNet's 3x3 stride 2: rows of phase 1 at shift -1
        (1, 32, 12, 9, 16, 3, 3, (3, 1), (2, 1), (1, 2), 2),  # stride 3 x 1, dilated, grouped: last group + phase 2
        (1, 16, 12, 10, 16, 3, 3, 2, 3, 3, 1),  # dilation 3 at stride 2: each tap a phase and a row on (tap_phase_next)
        # small outputs: several images per box (_common.tap_tma_boxes)
        (5, 16, 3, 3, 24, 3, 3, 1, 1, 1, 1),  # 3x3 output: boxes of 4 images of 4x4, the second past image 4
        (3, 16, 4, 6, 8, 3, 3, 2, 1, 1, 1),  # 2x3 output at stride 2: boxes of 4 images of 2x8
    ],
    "implicit_tma": [  # TMA weight loads where the weight is KRSC with 16-byte rows, pointer loads otherwise
        (2, 16, 7, 7, 24, 3, 3, 1, 1, 1, 1),
        (1, 32, 6, 6, 24, 3, 3, 2, 1, 1, 2),  # grouped: tiles cross into the next group's rows
        (1, 8, 9, 9, 12, 3, 3, 1, 2, 2, 1),  # 8 channels: BLOCK_K = 16 crosses into the next tap's weights
        (2, 9, 7, 7, 10, 3, 3, 2, 1, 1, 1),  # rows of 81 elements: falls back
    ],
    "implicit": [
        (2, 9, 7, 7, 10, 3, 3, 2, 1, 1, 1),
        (1, 16, 6, 6, 8, 1, 1, 2, 0, 1, 1),
    ],
}


# Strided layers with short reductions (the forward tap_tma declined them until the wgmma register
# hazard was found and synced, fprop.TAP_TMA_MIN_STEPS): dgrad and wgrad run them on tap_tma too
SHORT_REDUCTIONS = [
    pytest.param((1, 32, 8, 6, 16, 1, 1, 2, 0, 1, 1), id="1x1-stride-2-downsample"),  # ResNet's: one phase
    pytest.param((1, 16, 8, 8, 24, 2, 2, 2, 0, 1, 1), id="2x2-stride-2"),  # ConvNeXt's: every tap its own phase
]
TAP_TMA = [pytest.param(p, id=f"tap_tma-{i}") for i, p in enumerate(PROBLEMS["tap_tma"])]

# tap_tma dgrad runs one forward conv of dy per stride phase of dx, so it takes any problem:
# the forward's, and some no forward tap_tma takes
DGRAD_TAP_TMA = TAP_TMA + SHORT_REDUCTIONS + [
    pytest.param((1, 16, 9, 7, 8, 3, 3, 2, 1, 1, 1), id="odd-image-stride-2"),  # phases of 5 and 4 rows
    pytest.param((2, 16, 8, 8, 24, 1, 1, 2, 0, 1, 1), id="1x1-stride-2"),  # 3 of 4 phases reached by no tap
    pytest.param((1, 16, 6, 6, 8, 3, 3, 1, 3, 1, 1), id="pad-past-kernel"),  # a negative forward padding
    pytest.param((1, 32, 10, 9, 16, 3, 3, 2, 2, 2, 2), id="stride-2-dilation-2"),  # gcd 2: phases a=1 get no tap
    pytest.param((1, 8, 9, 11, 8, 5, 4, 3, (1, 2), 1, 1), id="stride-3"),
]


def _nhwc_fp16(problem, seed):
    """x and w for ``problem`` (N, C, H, W, K, R, S, stride, padding, dilation, groups), fp16 and
    channels_last, with the conv's arguments and its Conv2dProblem."""
    N, C, H, W, K, R, S, stride, padding, dilation, groups = problem
    torch.manual_seed(seed)
    x = torch.randn(N, C, H, W, dtype=torch.float16, device=DEVICE).to(memory_format=torch.channels_last)
    w = torch.randn(K, C // groups, R, S, dtype=torch.float16, device=DEVICE).to(memory_format=torch.channels_last)
    args = (stride, padding, dilation, groups)
    return x, w, args, spec.conv2d_problem(x, w, None, *args)


def _problems_for(family):
    return [pytest.param(family, *p, id=f"{family}-{i}") for i, p in enumerate(PROBLEMS[family])]


ALL = [p for fam in PROBLEMS for p in _problems_for(fam)]


@pytest.mark.parametrize("family,N,C,H,W,K,R,S,stride,padding,dilation,groups", ALL)
@pytest.mark.parametrize("dtype,layout", [(torch.float64, "nchw"), (torch.float32, "channels_last"),
                                          (torch.float16, "channels_last"), (torch.bfloat16, "channels_last")])
def test_forward_family(family, N, C, H, W, K, R, S, stride, padding, dilation, groups, dtype, layout):
    torch.manual_seed(0)
    x = torch.randn(N, C, H, W, dtype=dtype, device=DEVICE)
    w = torch.randn(K, C // groups, R, S, dtype=dtype, device=DEVICE)
    b = torch.randn(K, dtype=dtype, device=DEVICE)
    if layout == "channels_last":
        x, w = x.to(memory_format=torch.channels_last), w.to(memory_format=torch.channels_last)
    args = (stride, padding, dilation, groups)
    pb = spec.conv2d_problem(x, w, b, *args)
    assert family in router.candidates(router.FORWARD, pb)
    ref = F.conv2d(x.double(), w.double(), b.double(), *args)
    residual = torch.randn(ref.shape, dtype=dtype, device=DEVICE)
    with router.force(family):
        y = tritonconv.conv2d(x, w, b, *args)
        y_fused = tritonconv.conv2d(x, w, b, *args, activation="gelu", residual=residual)
    assert y.dtype == dtype
    assert y.is_contiguous(memory_format=torch.channels_last) == (layout == "channels_last")
    assert rel_err(y, ref) < TOL[dtype]
    assert rel_err(y_fused, F.gelu(ref + residual.double())) < TOL[dtype]


@pytest.mark.parametrize("family", ["depthwise", "implicit"])
@pytest.mark.parametrize("case", range(len(PROBLEMS["depthwise"])))
def test_backward_families_on_depthwise_problems(family, case):
    N, C, H, W, K, R, S, stride, padding, dilation, groups = PROBLEMS["depthwise"][case]
    torch.manual_seed(1)
    x = torch.randn(N, C, H, W, dtype=torch.float64, device=DEVICE, requires_grad=True)
    w = torch.randn(K, 1, R, S, dtype=torch.float64, device=DEVICE, requires_grad=True)
    args = (stride, padding, dilation, groups)
    with router.force(family):
        y = tritonconv.conv2d(x, w, None, *args)
        gy = torch.randn_like(y)
        gx, gw = torch.autograd.grad(y, (x, w), gy)
    ref = F.conv2d(x, w, None, *args)
    gxr, gwr = torch.autograd.grad(ref, (x, w), gy)
    assert rel_err(gx, gxr) < 1e-12
    assert rel_err(gw, gwr) < 1e-12


def test_depthwise_conv_transpose2d_with_bias():
    torch.manual_seed(2)
    x = torch.randn(2, 6, 5, 5, dtype=torch.float64, device=DEVICE)
    w = torch.randn(6, 1, 4, 4, dtype=torch.float64, device=DEVICE)
    b = torch.randn(6, dtype=torch.float64, device=DEVICE)
    with router.force("depthwise"):
        y = tritonconv.conv_transpose2d(x, w, b, 2, 1, 0, 6)
    assert rel_err(y, F.conv_transpose2d(x, w, b, 2, 1, 0, 6)) < 1e-12


@pytest.fixture(params=[32, 64], ids=["4x8", "8x8"])
def depthwise_patches(monkeypatch, request):
    """The depthwise forward's and dgrad's autotuners holding only a patch tile (TILE_W > 0) of
    ``request.param`` pixels: the interpreter's tile made that patch, or the compiled patch tile
    of that many pixels with the fewest channels."""
    if INTERPRETER:
        (cfg,) = configs.depthwise_configs(interpreter=True, patches=True)
        cfg = triton.Config({**cfg.kwargs, "BLOCK_M": request.param, "TILE_W": configs.DEPTHWISE_PATCH_WIDTH},
                            num_warps=cfg.num_warps, num_stages=cfg.num_stages)
    else:
        cfg = min((c for c in configs.depthwise_configs(patches=True)
                   if c.kwargs["TILE_W"] and c.kwargs["BLOCK_M"] == request.param), key=lambda c: c.kwargs["BLOCK_N"])
    _pin_depthwise_tile(monkeypatch, cfg)
    return cfg


def _pin_depthwise_tile(monkeypatch, cfg):
    """The depthwise forward's and dgrad's autotuners holding ``cfg`` alone, nothing cached."""
    for tuned in (depthwise._fprop_tuned, depthwise._dgrad_tuned):
        monkeypatch.setattr(tuned, "configs", [cfg])
        monkeypatch.setattr(tuned, "cache", {})


def _depthwise_forward_and_dgrad(problem, seed):
    """The depthwise family's forward (with bias and ReLU) and input gradient on ``problem``,
    fp32 channels_last, and their float64 references: (y, ref, gx, gx_ref)."""
    N, C, H, W, K, R, S, stride, padding, dilation, groups = problem
    torch.manual_seed(seed)
    x = torch.randn(N, C, H, W, device=DEVICE).to(memory_format=torch.channels_last).requires_grad_()
    w = torch.randn(K, 1, R, S, device=DEVICE)
    b = torch.randn(K, device=DEVICE)
    args = (stride, padding, dilation, groups)
    with router.force("depthwise"), plans.enabled_as(False):
        y = tritonconv.conv2d(x, w, b, *args, activation="relu")
        gy = torch.randn_like(y)
        (gx,) = torch.autograd.grad(y, (x,), gy)
    xr = x.detach().double().requires_grad_()
    ref = F.relu(F.conv2d(xr, w.double(), b.double(), *args))
    (gxr,) = torch.autograd.grad(ref, (xr,), gy.double())
    return y, ref, gx, gxr


@pytest.mark.parametrize("case", range(len(PROBLEMS["depthwise"])))
def test_depthwise_patches(case, depthwise_patches):
    """Patch tiles (depthwise.pixel_tile): pixels past the image's bottom or right edge in the
    last patches of a row or column, computed and not stored; forward with its epilogue, and the
    input gradient, which tiles the input's pixels."""
    y, ref, gx, gxr = _depthwise_forward_and_dgrad(PROBLEMS["depthwise"][case], seed=11)
    assert rel_err(y, ref) < TOL[torch.float32]
    assert rel_err(gx, gxr) < TOL[torch.float32]


@pytest.mark.parametrize("tile_w", [0, configs.DEPTHWISE_PATCH_WIDTH], ids=["flat", "patch"])
@pytest.mark.parametrize("case", range(len(PROBLEMS["depthwise"])))
def test_depthwise_kernel_rows_unrolled(case, tile_w, monkeypatch):
    """The forward's and dgrad's UNROLL_R tiles (configs.DEPTHWISE_UNROLL_TILES), flat and as a
    patch, the forward with its epilogue: the same sums as the looped rows. (The 7x7 case unrolls
    49 taps, and the strided dgrads branch over rows, which the runtime's pruner would not
    launch; the arithmetic is the same.)"""
    if INTERPRETER:
        (cfg,) = configs.depthwise_configs(interpreter=True, patches=True, unrolled=True)
        cfg = triton.Config({**cfg.kwargs, "TILE_W": tile_w, "UNROLL_R": True}, num_warps=cfg.num_warps,
                            num_stages=cfg.num_stages)
    else:
        cfg = next(c for c in configs.depthwise_configs(patches=True, unrolled=True)
                   if c.kwargs["UNROLL_R"] and c.kwargs["TILE_W"] == tile_w)
    _pin_depthwise_tile(monkeypatch, cfg)
    y, ref, gx, gxr = _depthwise_forward_and_dgrad(PROBLEMS["depthwise"][case], seed=13)
    assert rel_err(y, ref) < TOL[torch.float32]
    assert rel_err(gx, gxr) < TOL[torch.float32]


# the depthwise problems, and stride-1 ones with one channel a group whose flipped taps a symmetric
# kernel would hide: R != S, uneven padding and dilation, a padding past the kernel
DEPTHWISE_REUSE_PROBLEMS = PROBLEMS["depthwise"] + [
    (2, 4, 9, 11, 4, 2, 5, 1, (0, 4), (2, 1), 4),
    (1, 6, 7, 8, 6, 3, 1, 1, (4, 0), (1, 3), 6),
]


def _reuse_tile(rows: int, width: int) -> triton.Config:
    """A REUSE_ROWS patch of ``rows`` x ``width`` pixels: the interpreter's channel block, or 64
    channels at 4 warps compiled."""
    if INTERPRETER:
        (cfg,) = configs.depthwise_configs(interpreter=True, patches=True, unrolled=True, reuse=True)
        kwargs, warps, stages = cfg.kwargs, cfg.num_warps, cfg.num_stages
    else:
        kwargs, warps, stages = dict(BLOCK_N=64, UNROLL_R=False), 4, configs.DEPTHWISE_STAGES
    return triton.Config({**kwargs, "BLOCK_M": rows * width, "TILE_W": width, "REUSE_ROWS": True},
                         num_warps=warps, num_stages=stages)


@pytest.mark.parametrize("rows,width", [(4, 8), (2, 16), (8, 4)], ids=["4x8", "2x16", "8x4"])
@pytest.mark.parametrize("case", range(len(PROBLEMS["depthwise"]) + 2))
def test_depthwise_reusing_input_rows(case, rows, width, monkeypatch):
    """The REUSE_ROWS tiles (configs.DEPTHWISE_REUSE_TILES): a patch's input rows loaded once and
    summed into each output row whose taps read them, the rows' taps resolved from the row stride
    and dilation: the forward with bias, residual and GELU, at strides 1 to 3, dilation 2, channel
    multiplier 2 and a 7x7 (which the runtime's pruner would not launch; the arithmetic is the
    same), patches past the image's edges included; and the input gradient, which reuses rows
    at stride 1 with one channel a group (the forward conv of dy, w flipped) and elsewhere runs
    the tile as a patch."""
    N, C, H, W, K, R, S, stride, padding, dilation, groups = DEPTHWISE_REUSE_PROBLEMS[case]
    _pin_depthwise_tile(monkeypatch, _reuse_tile(rows, width))
    torch.manual_seed(14)
    x = torch.randn(N, C, H, W, device=DEVICE).to(memory_format=torch.channels_last)
    w = torch.randn(K, 1, R, S, device=DEVICE)
    b = torch.randn(K, device=DEVICE)
    args = (stride, padding, dilation, groups)
    res = torch.randn_like(F.conv2d(x, w, None, *args))
    with router.force("depthwise"), plans.enabled_as(False):
        y = tritonconv.conv2d(x, w, b, *args, activation="gelu", residual=res)
    ref = F.gelu(F.conv2d(x.double(), w.double(), b.double(), *args) + res.double())
    assert y.is_contiguous(memory_format=torch.channels_last) and rel_err(y, ref) < TOL[torch.float32]
    _, _, gx, gxr = _depthwise_forward_and_dgrad(DEPTHWISE_REUSE_PROBLEMS[case], seed=15)
    assert rel_err(gx, gxr) < TOL[torch.float32]
    if (stride, groups) == (1, C):  # the dgrad reused rows: into NCHW dx as well
        torch.manual_seed(17)
        w = torch.randn(K, 1, R, S, device=DEVICE)
        pb = spec.problem_from_shapes((N, C, H, W), (K, 1, R, S), stride, padding, dilation, groups)
        dy = torch.randn(pb.output_shape, device=DEVICE)
        with router.force("depthwise"):
            dx = router.input_grad(dy, w, pb, memory_format=torch.contiguous_format)
        ref = torch.nn.grad.conv2d_input((N, C, H, W), w.double(), dy.double(), stride, padding, dilation, groups)
        assert dx.is_contiguous() and rel_err(dx, ref) < TOL[torch.float32]


def test_depthwise_reuse_and_wgrad_tap_pruning():
    """Where the pruner times the REUSE_ROWS tiles: 16-bit kernels of at most 9 taps on sm_90, a
    patch reading at most DEPTHWISE_REUSE_MAX_ROWS input rows, the dgrad only where its launcher
    says UNIT_PHASE; looped patches not in a strided bf16 forward; and the wgrad's fp64 tiles of
    at most MAX_WGRAD_ACC_FP64 accumulator values a thread over the group's taps."""
    why = configs.direct_pruned_because
    assert why(64, 64, 4, 2, tile_w=16, taps_per_row=3, capability=90, taps=9, reuse=True) is None
    assert "9" in why(64, 64, 4, 2, tile_w=16, taps_per_row=5, capability=90, taps=25, reuse=True)
    assert "sm_90" in why(64, 64, 4, 2, tile_w=16, taps_per_row=3, capability=80, taps=9, reuse=True)
    assert why(64, 64, 4, 4, tile_w=16, taps_per_row=3, capability=90, taps=9, reuse=True) is not None  # fp32
    # an 8-row patch: 10 input rows at stride 1, 17 at stride 2
    assert why(128, 64, 8, 2, tile_w=16, taps_per_row=3, capability=90, taps=9, reuse=True) is None
    assert "17 input rows" in why(128, 64, 8, 2, tile_w=16, taps_per_row=3, capability=90, taps=9, reuse=True,
                                  row_step=(2, 1))
    assert "dgrad" in why(64, 64, 4, 2, tile_w=16, taps_per_row=3, capability=90, taps=9, reuse=True, reuse_ok=False)
    assert "bf16" in why(64, 32, 4, 2, tile_w=8, taps_per_row=3, capability=90, taps=9, strided_bf16=True)
    assert why(64, 32, 4, 2, tile_w=0, taps_per_row=3, capability=90, taps=9, strided_bf16=True) is None
    hook = depthwise._dgrad_tuned.early_config_prune
    assert hook.reuse_ok(dict(UNIT_PHASE=True)) and not hook.reuse_ok(dict(UNIT_PHASE=False))
    assert depthwise._fprop_tuned.early_config_prune.reuse_ok({})
    assert configs.wgrad_pruned_because(16, 64, 4, 8, taps=9) is not None  # 8 a thread x 9 taps in fp64
    assert configs.wgrad_pruned_because(8, 64, 4, 8, taps=9) is None  # 4 x 9 = MAX_WGRAD_ACC_FP64
    assert configs.wgrad_pruned_because(16, 64, 4, 4, taps=9) is None  # fp32
    x = torch.empty(1, dtype=torch.float64)
    kept = depthwise._wgrad_tuned.early_config_prune(
        configs.depthwise_configs(configs.DEPTHWISE_WGRAD_TILES, interpreter=False), dict(dy_ptr=x), TAPS=9)
    assert kept and all(configs.acc_per_thread(c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.num_warps) <= 4
                        for c in kept)


def test_depthwise_conv_transpose2d_reusing_rows_with_a_bias(monkeypatch):
    """conv_transpose2d at stride 1 on the depthwise dgrad's REUSE_ROWS tile: its bias from the
    forward's epilogue the tile borrows, a padding past the kernel's (negative in the forward of
    dy) and a dilation."""
    _pin_depthwise_tile(monkeypatch, _reuse_tile(4, 8))
    torch.manual_seed(16)
    x = torch.randn(2, 6, 7, 9, device=DEVICE)
    w = torch.randn(6, 1, 3, 3, device=DEVICE)
    b = torch.randn(6, device=DEVICE)
    for padding, dilation in [(1, 1), (3, 1), (1, 2)]:
        with router.force("depthwise"), plans.enabled_as(False):
            y = tritonconv.conv_transpose2d(x, w, b, 1, padding, 0, 6, dilation)
        ref = F.conv_transpose2d(x.double(), w.double(), b.double(), 1, padding, 0, 6, dilation)
        assert y.shape == ref.shape and rel_err(y, ref) < TOL[torch.float32]


def test_depthwise_patches_with_a_bias_in_conv_transpose2d(depthwise_patches):
    """conv_transpose2d on the depthwise dgrad adds the bias in its epilogue: on a patch tile, at
    stride 2 (four phases, a 4x4 kernel's two rows each)."""
    torch.manual_seed(12)
    x = torch.randn(2, 6, 5, 7, device=DEVICE)
    w = torch.randn(6, 1, 4, 4, device=DEVICE)
    b = torch.randn(6, device=DEVICE)
    with router.force("depthwise"), plans.enabled_as(False):
        y = tritonconv.conv_transpose2d(x, w, b, 2, 1, 1, 6)
    ref = F.conv_transpose2d(x.double(), w.double(), b.double(), 2, 1, 1, 6)
    assert rel_err(y, ref) < TOL[torch.float32]


def test_depthwise_patches_are_dropped_where_they_pad_or_spill(monkeypatch):
    """The forward's prune hook: a patch tile only where it pads the image by at most
    MAX_PATCH_WASTE, and for kernels of at most DEPTHWISE_PATCH_MAX_S taps a row."""
    compiled = configs.depthwise_configs(interpreter=False, patches=True)
    flat = [c for c in compiled if not c.kwargs["TILE_W"]]
    assert len(flat) == len(configs.DEPTHWISE_TILES) and compiled[:len(flat)] == flat
    assert configs.patch_waste(64, 8, 56, 56) == 0 and configs.patch_waste(64, 0, 7, 7) == 0
    assert configs.patch_waste(64, 8, 14, 14) == pytest.approx(1 - 196 / 256)
    monkeypatch.setattr(configs, "TUNE", True)  # every surviving config, not the smallest alone
    x = torch.empty(1, dtype=torch.float16)

    def kept(P, Q, S, dgrad=False):
        # the dgrad's image is a stride phase of dx, HP x WP; the forward's its output, P x Q
        if dgrad:
            return {c.kwargs["TILE_W"]
                    for c in depthwise._dgrad_tuned.early_config_prune(compiled, dict(dy_ptr=x, HP=P, WP=Q), S=S)}
        return {c.kwargs["TILE_W"] for c in depthwise._fprop_tuned.early_config_prune(compiled, dict(x_ptr=x, P=P, Q=Q), S=S)}

    assert kept(56, 56, 3) == {0, configs.DEPTHWISE_PATCH_WIDTH}
    assert kept(112, 112, 5) == {0, configs.DEPTHWISE_PATCH_WIDTH}
    assert kept(14, 14, 3) == {0}  # 8 x 8 patches: 23 % padding
    assert kept(56, 56, 9) == {0}  # past 7 taps a row, no patch (configs.DEPTHWISE_PATCH_MAX_S_SM90_16BIT)
    assert kept(56, 56, 3, dgrad=True) == {0, configs.DEPTHWISE_PATCH_WIDTH}
    assert kept(14, 14, 3, dgrad=True) == {0} and kept(56, 56, 9, dgrad=True) == {0}
    # 7 taps a row: patches spill below sm_90, and in fp32 (configs.max_patch_taps)
    assert configs.direct_pruned_because(64, 32, 4, 2, tile_w=8, taps_per_row=7, capability=90) is None
    assert "7 taps a row" in configs.direct_pruned_because(64, 32, 4, 2, tile_w=8, taps_per_row=7, capability=80)
    assert "7 taps a row" in configs.direct_pruned_because(64, 32, 4, 4, tile_w=8, taps_per_row=7, capability=90)
    assert configs.direct_pruned_because(64, 32, 4, 4, tile_w=0, taps_per_row=7, capability=80) is None


@pytest.mark.parametrize("split_k", [1, 3, 8])
def test_depthwise_wgrad_split_is_deterministic(split_k):
    torch.manual_seed(3)
    x = torch.randn(2, 8, 10, 10, device=DEVICE)
    w = torch.randn(8, 1, 3, 3, device=DEVICE)
    pb = spec.conv2d_problem(x, w, None, 1, 1, 1, 8)
    dy = torch.randn(pb.output_shape, device=DEVICE)
    a = depthwise.conv2d_wgrad_depthwise(dy, x, pb, split_k=split_k)
    b = depthwise.conv2d_wgrad_depthwise(dy, x, pb, split_k=split_k)
    assert torch.equal(a, b)
    xr, wr = x.double(), w.double().requires_grad_()
    F.conv2d(xr, wr, None, 1, 1, 1, 8).backward(dy.double())
    assert rel_err(a, wr.grad) < TOL[torch.float32]


@pytest.mark.parametrize("R,S,taps16,taps32", [
    pytest.param(3, 3, 9, 9, id="3x3-one-group"),  # every tap in one program: dy read once
    pytest.param(5, 5, 5, 4, id="5x5"),  # a row each in 16-bit; in fp32 groups of 4 across rows
    pytest.param(7, 7, 7, 4, id="7x7"),  # ConvNeXt's; fp32: 13 groups, the last one tap and 3 padding
    pytest.param(2, 3, 6, 6, id="2x3"),
    pytest.param(1, 11, 9, 4, id="1x11-last-group-padded"),  # 16-bit: taps 9 and 10, then 7 past the kernel
    pytest.param(2, 10, 9, 4, id="2x10-groups-across-rows"),
])
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
@pytest.mark.parametrize("split_k", [1, 3])
def test_depthwise_wgrad_sums_a_group_of_taps_a_program(R, S, taps16, taps32, dtype, split_k):
    """The depthwise wgrad sums a group of taps per program, dy loaded once for them
    (depthwise.wgrad_taps: the kernel up to 9 taps; past that a row in 16-bit, else 9, and 4 in
    wider types, groups running across rows and the last one padded): every tap's dw right,
    stride, dilation and channel multiplier 2 included, none written past the kernel."""
    taps = depthwise.wgrad_taps(R, S, torch.empty(0, dtype=dtype).element_size())
    assert taps == (taps16 if dtype == torch.float16 else taps32)
    torch.manual_seed(33)
    x = torch.randn(2, 6, 13, 14, device=DEVICE, dtype=dtype)
    w = torch.randn(12, 1, R, S, device=DEVICE, dtype=dtype)
    args = ((2, 1), (R // 2, S // 2), (1, 2), 6)
    pb = spec.conv2d_problem(x, w, None, *args)
    dy = torch.randn(pb.output_shape, device=DEVICE, dtype=dtype)
    dw = depthwise.conv2d_wgrad_depthwise(dy, x, pb, split_k=split_k)
    xr, wr = x.double(), w.double().requires_grad_()
    F.conv2d(xr, wr, None, *args).backward(dy.double())
    assert rel_err(dw, wr.grad) < TOL[dtype]


def test_tma_path_is_taken_where_the_layout_allows():
    from tritonconv.kernels import gemm1x1

    x = torch.randn(2, 16, 5, 5, device=DEVICE).to(memory_format=torch.channels_last)
    w = torch.randn(24, 16, 1, 1, device=DEVICE)
    pb = spec.conv2d_problem(x, w, None)
    if DEVICE == "cuda" and torch.cuda.get_device_capability()[0] < 9:
        assert not gemm1x1.tma_usable(x, w, pb)
        pytest.skip("TMA needs sm_90 or newer")
    assert gemm1x1.tma_usable(x, w, pb)
    assert not gemm1x1.tma_usable(x.contiguous(), w, pb), "NCHW input has no row-major (N*H*W, C) view"
    assert not gemm1x1.tma_usable(x[:, :, :, :].double(), w.double(), pb), "fp64 has no TMA path"


def test_router_prefers_the_specialised_family():
    def first(shape_x, shape_w, *args):
        pb = spec.problem_from_shapes(shape_x, shape_w, *args)
        return router.candidates(router.FORWARD, pb)[0]

    assert first((1, 32, 8, 8), (32, 1, 3, 3), 1, 1, 1, 32) == "depthwise"
    assert first((1, 3, 32, 32), (16, 3, 7, 7), 2, 3, 1, 1) == "smallc"  # untimed, no copy of x
    pb = spec.problem_from_shapes((1, 3, 32, 32), (16, 3, 7, 7), 2, 3, 1, 1)
    # all timed on a GPU
    assert router.candidates(router.FORWARD, pb)[:3] == ["smallc", "smallc_pad", "smallc_rows"]
    pb = spec.problem_from_shapes((1, 6, 32, 32), (16, 3, 7, 7), 2, 3, 1, 2)
    assert "smallc_pad" not in router.candidates(router.FORWARD, pb)  # grouped: no padded copy
    assert first((1, 64, 8, 8), (128, 64, 1, 1), 1, 0, 1, 1) == "gemm1x1_tma"
    # a strided 1x1: the pointer GEMM over every other pixel, tap_tma's boxes of x's phase view
    # (one step: short reductions are tap_tma's again), on its stream-K grid too (16 pixels), the TMA weight
    pb = spec.problem_from_shapes((1, 64, 8, 8), (128, 64, 1, 1), 2, 0, 1, 1)
    assert router.candidates(router.FORWARD, pb) == ["gemm1x1", "tap_tma", "tap_tma_streamk", "implicit_tma",
                                                     "implicit"]
    pb = spec.problem_from_shapes((1, 64, 7, 7), (128, 64, 1, 1), 2, 0, 1, 1)  # 7 rows: no phase view
    assert router.candidates(router.FORWARD, pb) == ["gemm1x1", "implicit_tma", "implicit"]
    assert first((1, 64, 8, 8), (128, 64, 1, 1), 1, 1, 1, 1) == "tap_tma"  # padded: TMA zero-fills, no plain GEMM
    assert first((1, 512, 7, 7), (512, 512, 3, 3), 1, 1, 1, 1) == "splitk"
    pb = spec.problem_from_shapes((32, 512, 7, 7), (512, 512, 3, 3), 1, 1, 1, 1)  # ResNet-50's last 3x3
    assert router.candidates(router.FORWARD, pb) == ["splitk", "tap_tma_splitk", "tap_tma", "tap_tma_streamk",
                                                     "implicit_tma", "implicit"]
    assert first((4, 64, 56, 56), (64, 64, 3, 3), 1, 1, 1, 1) == "tap_tma"
    pb = spec.problem_from_shapes((4, 64, 56, 56), (64, 64, 3, 3), 1, 1, 1, 1)
    assert router.candidates(router.FORWARD, pb) == ["tap_tma", "implicit_tma", "implicit"]  # all timed on a GPU
    pb = spec.problem_from_shapes((32, 64, 56, 56), (64, 64, 3, 3), 2, 1, 1, 1)
    assert router.candidates(router.FORWARD, pb) == ["tap_tma", "implicit_tma", "implicit"]
    pb = spec.problem_from_shapes((32, 64, 57, 57), (64, 64, 3, 3), 2, 1, 1, 1)
    assert router.candidates(router.FORWARD, pb) == ["implicit_tma", "implicit"]
    pb = spec.problem_from_shapes((4, 64, 56, 56), (256, 64, 1, 1), 1, 0, 1, 1)
    assert router.candidates(router.WEIGHT_GRAD, pb) == ["gemm1x1_tma", "tap_tma", "gemm1x1", "implicit"]
    with pytest.raises(ValueError, match="unknown kernel family"):
        with router.force("nope"):
            pass


@pytest.fixture
def tap_tma_row_tiles(monkeypatch):
    """The tap-TMA autotuners holding only a one-row tile (BLOCK_W = BLOCK_M for the forward,
    BLOCK_K for wgrad's reduction steps): compiled runs time these against the 8-wide tiles;
    the interpreter's single config is 8 wide."""
    from tritonconv.kernels import fprop

    from tritonconv.kernels import wgrad

    def one_row(autotuner, configs_fn, span):
        if INTERPRETER:  # the interpreter's single config, made one row wide
            (cfg,) = configs_fn(interpreter=True)
            cfg = triton.Config({**cfg.kwargs, "BLOCK_W": cfg.kwargs[span]}, num_warps=cfg.num_warps,
                                num_stages=cfg.num_stages, pre_hook=cfg.pre_hook)
        else:  # the smallest compiled one-row tile: it fits fp32's shared memory
            cfg = [c for c in configs_fn() if c.kwargs["BLOCK_W"] > configs.SPATIAL_TILE_WIDTH][-1]
        monkeypatch.setattr(autotuner, "configs", [cfg])
        monkeypatch.setattr(autotuner, "cache", {})
        return cfg

    one_row(wgrad._wgrad_tap_tma_tuned, wgrad.tap_tma_configs, "BLOCK_K")
    return one_row(fprop._fprop_tap_tma_tuned, fprop.tap_tma_configs, "BLOCK_M")


@pytest.mark.parametrize("problem", PROBLEMS["tap_tma"], ids=[f"tap_tma-{i}" for i in range(len(PROBLEMS["tap_tma"]))])
def test_tap_tma_one_row_tiles(problem, tap_tma_row_tiles):
    """One-row tiles: each M-tile is BLOCK_M pixels of one output row, the pixels past the row
    end computed and not stored; forward, dgrad (a forward conv of dy per phase), and wgrad
    (16-bit) with one-row reduction steps, the pixels past the row end TMA's zeros."""
    from tritonconv import tuning

    N, C, H, W, K, R, S, stride, padding, dilation, groups = problem
    torch.manual_seed(11)
    x = torch.randn(N, C, H, W, device=DEVICE).to(memory_format=torch.channels_last)
    w = torch.randn(K, C // groups, R, S, device=DEVICE).to(memory_format=torch.channels_last)
    b = torch.randn(K, device=DEVICE)
    args = (stride, padding, dilation, groups)
    pb = spec.conv2d_problem(x, w, b, *args)
    dy = torch.randn(pb.output_shape, device=DEVICE).to(memory_format=torch.channels_last)
    with router.force("tap_tma"), tuning.recording_configs() as tiles:
        y = router.forward(x, w, b, pb)
        dx = router.input_grad(dy, w, pb, memory_format=torch.channels_last)
        dw = router.weight_grad(dy.half(), x.half(), pb, memory_format=torch.channels_last)
    xr, wr = x.double().requires_grad_(), w.double().requires_grad_()
    ref = F.conv2d(xr, wr, b.double(), *args)
    ref.backward(dy.double())
    assert rel_err(y, ref) < TOL[torch.float32] and rel_err(dx, xr.grad) < TOL[torch.float32]
    wh = w.double().requires_grad_()  # dw from the fp16-rounded x and dy
    F.conv2d(x.half().double(), wh, None, *args).backward(dy.half().double())
    assert rel_err(dw, wh.grad) < TOL[torch.float16]
    if "fprop_tap_tma" in tiles:  # the layouts allowed TMA: the row tiles ran
        assert tiles["fprop_tap_tma"].endswith(" rows"), tiles
    else:
        assert C // groups * 4 % 16, f"TMA should have run: {tiles}"
    if C // groups * 2 % 16 == 0 and K // groups * 2 % 16 == 0:
        assert tiles.get("wgrad_tap_tma", "").endswith(" rows"), tiles


@pytest.mark.parametrize("N,P,Q,block_m,box", [
    (32, 56, 56, 128, (2, 8, 8)),  # 8x8 divides 56x56: no row outside the output (16x8 boxes: 1/8)
    (32, 28, 28, 128, (8, 4, 4)),
    (32, 14, 14, 128, (32, 2, 2)),
    (1, 56, 56, 128, (1, 16, 8)),  # one image: the plain box
    (32, 56, 56, 256, (4, 8, 8)),
])
def test_tap_tma_boxes_fill_the_tile(N, P, Q, block_m, box):
    """_common.tap_tma_boxes picks, per BLOCK_M, the box with the fewest rows outside the output
    (ResNet-50's sizes at batch 32 lose none), and tap_tma_box decodes it as the kernel does."""
    boxes = _common.tap_tma_boxes(N, P, Q)
    assert _common.tap_tma_box(block_m, 8, boxes) == box
    assert _common.tap_tma_box(block_m, block_m, boxes) == (1, 1, block_m)  # a one-row tile keeps its row
    assert _common.tap_tma_box(block_m, 8, 0) == (1, block_m // 8, 8)  # no code: one image, 8 wide


def test_tap_tma_boxes_choose_the_best_filled_box_for_every_span():
    """Against a brute force over every power-of-two split of each span (at most 8 columns): the
    chosen box leaves no more pixels outside the output than any other, and among equals has the
    fewest images, then the most columns."""
    def padded(size, block):
        return -(-size // block) * block

    for N in (1, 2, 3, 5, 8, 32):
        for P in (1, 2, 5, 7, 9, 14, 17, 28, 56, 112):
            for Q in (1, 3, 7, 10, 14, 19, 56):
                boxes = _common.tap_tma_boxes(N, P, Q)
                for span in _common.TAP_TMA_SPANS:
                    splits = [(span // (bw * bh), bh, bw) for bw in (1, 2, 4, 8) for bh in (1, 2, 4, 8, 16, 32, 64, 128, 256)
                              if bw * bh <= span]
                    best = min(splits, key=lambda b: (padded(N, b[0]) * padded(P, b[1]) * padded(Q, b[2]), b[0], -b[2]))
                    assert _common.tap_tma_box(span, 8, boxes) == best, (N, P, Q, span)
    boxes = _common.tap_tma_boxes(32, 7, 7)  # ResNet-50's 7x7 layers: 1/8 of the rows outside, not 5/8
    assert _common.tap_tma_box(128, 8, boxes) == (16, 1, 8)
    assert _common.tap_tma_box(32, 8, _common.tap_tma_boxes(32, 14, 14)) == (8, 2, 2)  # a wgrad step of 32 pixels


def test_tap_tma_prune_keeps_row_tiles_for_wide_rows_only(monkeypatch):
    """One-row tiles are candidates where output rows fill 3/4 of them; where the pruning
    clamps a tile's span below its width, the width follows."""
    from tritonconv.kernels import fprop, wgrad

    monkeypatch.setattr(configs, "TUNE", True)  # the hook's full verdict, not the untuned pick
    fwd, wg = fprop._fprop_tap_tma_tuned.early_config_prune, wgrad._wgrad_tap_tma_tuned.early_config_prune
    assert isinstance(fwd, configs.SpatialTilePruneHook) and isinstance(wg, configs.SpatialTilePruneHook)
    compiled = fprop.tap_tma_configs(interpreter=False)
    rows = [c for c in compiled if c.kwargs["BLOCK_W"] > configs.SPATIAL_TILE_WIDTH]
    assert len(rows) == len(configs.TAP_TMA_ROW_TILES) and all(configs.config_name(c).endswith(" rows") for c in rows)
    assert all(c.kwargs["BLOCK_W"] == c.kwargs["BLOCK_M"] for c in rows)
    y = torch.empty(32, 64, 56, 56).to(memory_format=torch.channels_last)

    def widths(Q):
        return {c.kwargs["BLOCK_W"] for c in fwd(compiled, dict(y_ptr=y, N=32, P=56, Q=Q, KG=64, CG=64))}

    assert widths(56) == {8, 64}  # 56 of 64 pixels used; of 128, too few
    assert widths(112) == {8, 64, 128} and widths(28) == {8}
    assert widths(224) == {8, 64, 128, 256}  # VGG-16's first rows: 224 of 256 pixels used
    assert configs.row_efficiency(56, 64) == 0.875 and configs.row_efficiency(100, 64) == 100 / 128

    dy = torch.empty(1, 64, 14, 14).to(memory_format=torch.channels_last)
    steps = wgrad.tap_tma_configs(interpreter=False)
    kept = wg(steps, dict(dy_ptr=dy, N=1, P=14, Q=14, KG=64, CG=64, SPLIT_K=8))  # 25 pixels per split: BLOCK_K 32
    assert kept and all(c.kwargs["BLOCK_W"] <= c.kwargs["BLOCK_K"] <= 32 for c in kept)
    assert any(c.kwargs["BLOCK_W"] == 16 for c in kept)  # a 16-pixel row step: 14 of 16 used


def test_smallc_pad_copies_the_stem_and_hands_groups_to_the_gather(launched):
    """The padded variant runs on channel-padded copies (any input layout) and gives what the
    gather gives; a grouped problem, which it does not take, goes to the gather."""
    from tritonconv.kernels import smallc

    torch.manual_seed(8)
    x = torch.randn(2, 3, 11, 13, dtype=torch.float64, device=DEVICE)
    w = torch.randn(8, 3, 7, 7, dtype=torch.float64, device=DEVICE)
    pb = spec.conv2d_problem(x, w, None, 2, 3)
    ref = F.conv2d(x, w, None, 2, 3)
    with router.force("smallc_pad"):
        y_pad = tritonconv.conv2d(x, w, None, 2, 3)
    with router.force("smallc"):
        y_gather = tritonconv.conv2d(x, w, None, 2, 3)
    assert launched == ["smallc_pad", "smallc"]
    assert rel_err(y_pad, ref) < 1e-12 and rel_err(y_gather, ref) < 1e-12
    assert smallc._pitch(3) == 4 and smallc._pitch(5) == 8 and smallc._pitch(8) == 8

    launched.clear()
    xg, wg = torch.randn(1, 6, 7, 7, dtype=torch.float64, device=DEVICE), torch.randn(4, 3, 3, 3, dtype=torch.float64,
                                                                                        device=DEVICE)
    pbg = spec.conv2d_problem(xg, wg, None, 1, 1, 1, 2)
    assert not smallc.accepts_pad(pbg) and smallc.accepts_pad(pb)
    y = smallc.conv2d_fprop_smallc_pad(xg, wg, None, pbg)
    assert launched == ["smallc"] and rel_err(y, F.conv2d(xg, wg, None, 1, 1, 1, 2)) < 1e-12


def test_smallc_rows_steps_a_kernel_row_and_hands_wide_rows_to_the_gather(launched):
    """The rows kernel's BLOCK_K is one kernel row (S taps of C_PITCH channels, to a power of two,
    at least 16), each width with its own autotuner, where the precompile finds it; kernel rows
    past MAX_ROW_BLOCK_K columns, and groups, go to the gather."""
    from tritonconv.bench import precompile
    from tritonconv.kernels import smallc

    assert [smallc.row_block_k(S, 4) for S in (1, 3, 4, 7, 8, 9, 16)] == [16, 16, 16, 32, 32, 64, 64]
    assert smallc.row_block_k(2, 8) == 16 and smallc.row_block_k(5, 8) == 64
    found = precompile.autotuners().values()
    assert all(any(t is tuned for t in found) for tuned in smallc.ROWS_TUNED.values())
    assert all(c.kwargs["BLOCK_K"] == bk for bk, tuned in smallc.ROWS_TUNED.items() for c in tuned.configs)

    torch.manual_seed(9)
    x = torch.randn(1, 3, 9, 21, dtype=torch.float64, device=DEVICE)
    w = torch.randn(4, 3, 1, 17, dtype=torch.float64, device=DEVICE)  # 17 taps a row: 68 columns
    pb = spec.conv2d_problem(x, w, None, 1, (0, 2))
    assert smallc.accepts_pad(pb) and not smallc.accepts_rows(pb)
    y = smallc.conv2d_fprop_smallc_rows(x, w, None, pb)
    assert launched == ["smallc"] and rel_err(y, F.conv2d(x, w, None, 1, (0, 2))) < 1e-12

    launched.clear()
    w = w[:, :, :, :16]  # 16 taps: 64 columns, the widest row step
    pb = spec.conv2d_problem(x, w, None, 1, (0, 2))
    with router.force("smallc_rows"):
        y = tritonconv.conv2d(x, w, None, 1, (0, 2))
    assert launched == ["smallc_rows_k64"] and rel_err(y, F.conv2d(x, w, None, 1, (0, 2))) < 1e-12

    launched.clear()
    xg, wg = torch.randn(1, 6, 7, 7, dtype=torch.float64, device=DEVICE), torch.randn(4, 3, 3, 3, dtype=torch.float64,
                                                                                        device=DEVICE)
    pbg = spec.conv2d_problem(xg, wg, None, 1, 1, 1, 2)
    assert not smallc.accepts_rows(pbg)
    y = smallc.conv2d_fprop_smallc_rows(xg, wg, None, pbg)
    assert launched == ["smallc"] and rel_err(y, F.conv2d(xg, wg, None, 1, 1, 1, 2)) < 1e-12


def _assert_split_wgrad(launcher, dy, x, w, pb, conv_args, split_k):
    """A wgrad launcher with ``split_k`` chunks, for a contiguous and a channels_last gradient
    (whose partials are laid out KRSC, wgrad.wgrad_workspace): the same bits twice, the layout
    asked for, and float64 autograd's gradient (fp16 tolerance); ``conv_args`` are F.conv2d's
    after the weight."""
    wr = w.double().requires_grad_()
    F.conv2d(x.double(), wr, None, *conv_args).backward(dy.double())
    for fmt in (torch.contiguous_format, torch.channels_last):
        a = launcher(dy, x, pb, memory_format=fmt, split_k=split_k)
        b = launcher(dy, x, pb, memory_format=fmt, split_k=split_k)
        assert torch.equal(a, b) and a.is_contiguous(memory_format=fmt)
        assert rel_err(a, wr.grad) < TOL[torch.float16]


# the small-C wgrad's problems: smallc_pad's, and a grouped one it hands on to the general wgrad
WGRAD_SMALLC = [pytest.param(p, "smallc_wgrad", id=f"smallc_pad-{i}") for i, p in enumerate(PROBLEMS["smallc_pad"])] + [
    pytest.param(PROBLEMS["smallc"][2], "wgrad", id="grouped-hands-on"),
    pytest.param((2, 3, 9, 9, 70, 1, 1, 2, 0, 1, 1), "smallc_wgrad", id="1x1-stride-2-K-past-a-tile"),
]


@pytest.mark.parametrize("problem,kernel", WGRAD_SMALLC)
@pytest.mark.parametrize("dtype,layout", [(torch.float64, "nchw"), (torch.float32, "channels_last"),
                                          (torch.float16, "channels_last"), (torch.bfloat16, "nchw")])
def test_weight_grad_smallc_pad(problem, kernel, dtype, layout, launched):
    """wgrad over the flattened (r, s, padded c) columns of a channel-padded copy of x: the padding
    channels' columns are computed and dropped, any dy strides, the weight's layout followed."""
    N, C, H, W, K, R, S, stride, padding, dilation, groups = problem
    torch.manual_seed(14)
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    x = torch.randn(N, C, H, W, dtype=dtype, device=DEVICE).to(memory_format=fmt)
    w = torch.randn(K, C // groups, R, S, dtype=dtype, device=DEVICE)
    args = (stride, padding, dilation, groups)
    pb = spec.conv2d_problem(x, w, None, *args)
    dy = torch.randn(pb.output_shape, dtype=dtype, device=DEVICE).to(memory_format=fmt)
    with router.force("smallc_pad"):
        dw = router.weight_grad(dy, x, pb, memory_format=fmt)
    assert launched == [kernel]
    wr = w.double().requires_grad_()
    F.conv2d(x.double(), wr, None, *args).backward(dy.double())
    assert dw.dtype == dtype and dw.is_contiguous(memory_format=fmt)
    assert rel_err(dw, wr.grad) < TOL[dtype]


@pytest.mark.parametrize("split_k", [1, 3, 7, 40])
def test_weight_grad_smallc_pad_split_is_correct_and_deterministic(split_k):
    """The stem's reduction, 2 images of 8x8 output pixels, in chunks of whole 16-pixel steps
    (the interpreter's BLOCK_K): 3 chunks of 48, 48 and 32; 7 of 32, the last 3 empty; 40 of 16,
    the last 32 empty (they must store zero partials, which are poisoned)."""
    from tritonconv.kernels.smallc import choose_wgrad_split, conv2d_wgrad_smallc_pad

    torch.manual_seed(15)
    x = torch.randn(2, 3, 15, 15, dtype=torch.float16, device=DEVICE)
    w = torch.randn(16, 3, 7, 7, dtype=torch.float16, device=DEVICE)
    pb = spec.conv2d_problem(x, w, None, 2, 3)
    dy = torch.randn(pb.output_shape, dtype=torch.float16, device=DEVICE)
    _assert_split_wgrad(conv2d_wgrad_smallc_pad, dy, x, w, pb, (2, 3), split_k)
    assert choose_wgrad_split(pb, torch.device("cpu")) == 1  # 128 pixels: no chunk of 1024


def test_weight_grad_smallc_split_fills_an_h100_on_the_stem(monkeypatch):
    """ResNet-50's stem at batch 32 on 132 SMs: one or two column tiles, so the split fills the GPU
    (the bound), and a small image keeps its chunks at 1024 pixels or more."""
    from tritonconv.kernels import smallc

    monkeypatch.setattr(smallc, "sm_count", lambda device: 132)
    x = torch.empty(32, 3, 224, 224, device="meta")
    w = torch.empty(64, 3, 7, 7, device="meta")
    stem = spec.conv2d_problem(x, w, None, 2, 3)
    assert smallc.choose_wgrad_split(stem, torch.device("cuda")) == smallc.MAX_WGRAD_SPLIT
    small = spec.conv2d_problem(torch.empty(2, 3, 32, 32, device="meta"), w, None, 2, 3)  # 512 pixels
    assert smallc.choose_wgrad_split(small, torch.device("cuda")) == 1


@pytest.fixture
def launched(monkeypatch):
    """The names of the tuned kernels launched (``tuning.launch``), in order."""
    from tritonconv import tuning

    names = []
    real = tuning.launch

    def spy(autotuner, name, *args, **kwargs):
        names.append(name)
        return real(autotuner, name, *args, **kwargs)

    monkeypatch.setattr(tuning, "launch", spy)
    return names


# wgrad of 1x1 convs: (problem, dtype, layout, the kernel expected to run)
WGRAD_1X1 = [
    pytest.param("gemm1x1", PROBLEMS["gemm1x1"][0], torch.float32, "channels_last", "gemm1x1_wgrad", id="nhwc"),
    pytest.param("gemm1x1", PROBLEMS["gemm1x1"][1], torch.float64, "nchw", "gemm1x1_wgrad",
                 id="nchw-batch1-grouped"),  # batch 1: NCHW pixels are linear too
    pytest.param("gemm1x1", PROBLEMS["gemm1x1"][2], torch.float16, "nchw", "wgrad", id="nchw-falls-back"),
    pytest.param("gemm1x1_tma", PROBLEMS["gemm1x1_tma"][0], torch.float16, "channels_last", "gemm1x1_wgrad_tma",
                 id="tma"),
    pytest.param("gemm1x1_tma", (1, 48, 5, 6, 48, 1, 1, 1, 0, 1, 3), torch.float16, "channels_last",
                 "gemm1x1_wgrad_tma", id="tma-grouped"),
    pytest.param("gemm1x1_tma", PROBLEMS["gemm1x1_tma"][2], torch.float16, "channels_last", "gemm1x1_wgrad",
                 id="tma-unaligned-falls-back"),
    pytest.param("gemm1x1_tma", (1, 48, 5, 6, 24, 1, 1, 1, 0, 1, 6), torch.float16, "channels_last", "gemm1x1_wgrad",
                 id="tma-groups-of-4-outputs-fall-back"),  # K rows 48 bytes, but a group starts 8 bytes in
    pytest.param("gemm1x1_tma", PROBLEMS["gemm1x1_tma"][0], torch.float32, "channels_last", "gemm1x1_wgrad",
                 id="tma-fp32-falls-back"),
]


@pytest.mark.parametrize("family,problem,dtype,layout,kernel", WGRAD_1X1)
def test_weight_grad_1x1_family(family, problem, dtype, layout, kernel, launched):
    N, C, H, W, K, R, S, stride, padding, dilation, groups = problem
    torch.manual_seed(4)
    x = torch.randn(N, C, H, W, dtype=dtype, device=DEVICE)
    w = torch.randn(K, C // groups, R, S, dtype=dtype, device=DEVICE, requires_grad=True)
    if layout == "channels_last":
        x = x.to(memory_format=torch.channels_last)
    args = (stride, padding, dilation, groups)
    pb = spec.conv2d_problem(x, w, None, *args)
    assert family in router.candidates(router.WEIGHT_GRAD, pb)
    dy = torch.randn(pb.output_shape, dtype=dtype, device=DEVICE)
    if layout == "channels_last":
        dy = dy.to(memory_format=torch.channels_last)
    with router.force(family):
        gw = router.weight_grad(dy, x, pb)
    assert _expected(kernel) in launched, launched
    wr = w.detach().double().requires_grad_()
    F.conv2d(x.double(), wr, None, *args).backward(dy.double())
    assert gw.dtype == dtype
    assert rel_err(gw, wr.grad) < TOL[dtype]


@pytest.mark.parametrize("launcher", ["conv2d_wgrad_1x1", "conv2d_wgrad_1x1_tma"])
@pytest.mark.parametrize("split_k", [1, 3, 7, 13])
def test_weight_grad_1x1_split_is_correct_and_deterministic(launcher, split_k):
    """98 pixels in chunks of whole BLOCK_K steps. Under the interpreter (16-pixel steps): 3 chunks
    of 48, 48 and 2 pixels; 7 of 16 with the last 2; 13 of 16, the last 6 empty (they must
    store zero partials, which are poisoned)."""
    from tritonconv.kernels import gemm1x1

    torch.manual_seed(5)
    x = torch.randn(2, 32, 7, 7, dtype=torch.float16, device=DEVICE).to(memory_format=torch.channels_last)
    w = torch.randn(48, 16, 1, 1, dtype=torch.float16, device=DEVICE)
    pb = spec.conv2d_problem(x, w, None, 1, 0, 1, 2)
    dy = torch.randn(pb.output_shape, dtype=torch.float16, device=DEVICE).to(memory_format=torch.channels_last)
    _assert_split_wgrad(getattr(gemm1x1, launcher), dy, x, w, pb, (1, 0, 1, 2), split_k)


@pytest.mark.parametrize("family", ["gemm1x1", "gemm1x1_tma"])
@pytest.mark.parametrize("residual_layout,flat", [("channels_last", True), ("nchw", False), ("per-channel", True)])
def test_1x1_kernels_take_flat_pixel_rows_where_every_tensor_has_them(family, residual_layout, flat, monkeypatch,
                                                                      launched):
    """Where x, y and the residual all have flat pixels (pixel m at m times the W stride), the 1x1
    kernels index them without dividing m by W and H*W (FLAT_ROWS); one tensor that has not
    (an NCHW residual beside channels_last x and y) keeps the division for all. Both are right,
    on the kernel forced (the TMA one where it runs)."""
    from tritonconv.kernels import gemm1x1

    decided = []
    real = gemm1x1.flat_rows
    monkeypatch.setattr(gemm1x1, "flat_rows", lambda *a: decided.append(real(*a)) or decided[-1])
    torch.manual_seed(5)
    x = torch.randn(2, 16, 5, 7, dtype=torch.float16, device=DEVICE).to(memory_format=torch.channels_last)
    w = torch.randn(24, 16, 1, 1, dtype=torch.float16, device=DEVICE).to(memory_format=torch.channels_last)
    b = torch.randn(24, dtype=torch.float16, device=DEVICE)
    residual = {"channels_last": torch.randn(2, 24, 5, 7, dtype=torch.float16, device=DEVICE).to(
                    memory_format=torch.channels_last),
                "nchw": torch.randn(2, 24, 5, 7, dtype=torch.float16, device=DEVICE),
                "per-channel": torch.randn(1, 24, 1, 1, dtype=torch.float16, device=DEVICE)}[residual_layout]
    with router.force(family):
        y = tritonconv.conv2d(x, w, b, activation="relu", residual=residual)
    assert decided == [flat]
    assert launched == [_expected(family)]
    ref = F.relu(F.conv2d(x.double(), w.double(), b.double()) + residual.double())
    assert rel_err(y, ref) < TOL[torch.float16]


def test_flat_rows():
    """flat_rows: pixel m of x, y and the residual (where the epilogue adds one) at m times the
    tensor's W stride, for every pixel; never where one tensor's pixels are laid out otherwise."""
    from tritonconv.kernels._common import prepare_forward
    from tritonconv.kernels.gemm1x1 import flat_rows

    x = torch.empty(2, 3, 4, 5, device=DEVICE)
    w = torch.empty(6, 3, 1, 1, device=DEVICE)
    pb = spec.conv2d_problem(x, w, None, 1, 0, 1, 1)
    cl = x.to(memory_format=torch.channels_last)
    plain = prepare_forward(cl, w, None, None, pb, None, "none")
    assert flat_rows(cl, plain.out, plain)  # channels_last: pixel m at m * C
    assert not flat_rows(x, plain.out, plain)  # NCHW: images C*H*W apart
    assert flat_rows(x[:1], plain.out[:1], plain)  # one NCHW image: pixel m at m
    assert not flat_rows(cl[:, :, ::2, ::2], plain.out, plain)  # a strided 1x1's view of x
    assert not flat_rows(cl[:, :, :1, :1], plain.out, plain)  # pixels at 60, not at x's W stride
    assert flat_rows(None, plain.out, plain)  # the TMA kernel reads x through its descriptor
    nchw_res = prepare_forward(cl, w, None, torch.empty(2, 6, 4, 5, device=DEVICE), pb, None, "none")
    assert not flat_rows(cl, nchw_res.out, nchw_res)
    per_image = torch.empty(1, 6, 4, 5, device=DEVICE).to(memory_format=torch.channels_last).expand(2, 6, 4, 5)
    batch_res = prepare_forward(cl, w, None, per_image, pb, None, "none")
    assert not flat_rows(cl, batch_res.out, batch_res)  # every image the same: m * 6 misses it
    # without a residual, the launchers pass x as a stand-in: not looked at, NCHW as it may be
    from_nchw = prepare_forward(x, w, None, None, pb, plain.out, "none")
    assert not from_nchw.epilogue["HAS_RESIDUAL"] and flat_rows(cl, from_nchw.out, from_nchw)


def test_pixel_stride():
    from tritonconv.kernels.gemm1x1 import pixel_stride

    x = torch.empty(2, 3, 4, 5)
    assert pixel_stride(x) is None  # NCHW: images are C*H*W apart, not H*W
    assert pixel_stride(x[:1]) == 1
    assert pixel_stride(x.to(memory_format=torch.channels_last)) == 3
    assert pixel_stride(x[:, :, :, :3]) is None  # rows are 5 apart, 3 pixels wide
    assert pixel_stride(x[:, :, :1, :1]) == 60  # one pixel per image: images are the pixels
    assert pixel_stride(x[:1, :, :1, :]) == 1
    assert pixel_stride(torch.empty(1, 3, 1, 1)) == 1
    assert pixel_stride(torch.ones(1, 1, 1, 1).expand(2, 3, 4, 5)) == 0  # every pixel the same element


@pytest.mark.parametrize("problem,dtype,kernel", [
    pytest.param(PROBLEMS["implicit_tma"][0], torch.float16, "fprop_tma", id="tma"),
    pytest.param(PROBLEMS["implicit_tma"][2], torch.float32, "fprop_tma", id="tma-next-tap"),
    pytest.param(PROBLEMS["implicit_tma"][3], torch.float16, "fprop", id="unaligned-falls-back"),
    pytest.param(PROBLEMS["implicit_tma"][0], torch.float64, "fprop", id="fp64-falls-back"),
])
def test_weight_tma_is_taken_where_the_weight_allows(problem, dtype, kernel, launched):
    _check_tma_kernel("implicit_tma", problem, dtype, kernel, launched)


@pytest.mark.parametrize("problem,dtype,kernel", [
    pytest.param(PROBLEMS["tap_tma"][0], torch.float16, "fprop_tap_tma", id="edges"),
    pytest.param(PROBLEMS["tap_tma"][1], torch.float32, "fprop_tap_tma", id="dilated-grouped"),
    pytest.param((1, 4, 6, 6, 8, 3, 3, 1, 1, 1, 1), torch.float16, "fprop", id="8-byte-channel-blocks-fall-back"),
    pytest.param(PROBLEMS["tap_tma"][4], torch.float16, "fprop", id="9-channels-falls-back-twice"),
    pytest.param(PROBLEMS["tap_tma"][6], torch.float16, "fprop_tap_tma", id="stride-2"),
    pytest.param(PROBLEMS["tap_tma"][7], torch.float32, "fprop_tap_tma", id="stride-3x1-grouped"),
])
def test_input_tma_is_taken_where_both_operands_allow(problem, dtype, kernel, launched):
    _check_tma_kernel("tap_tma", problem, dtype, kernel, launched)


def test_tap_tma_takes_strides_that_divide_the_image():
    """The phase view (N, H/sh, sh, W/sw, sw*C) exists only where the stride divides H and W."""
    from tritonconv.kernels.fprop import accepts_tap_tma

    def problem(H, W, stride):
        return spec.problem_from_shapes((1, 16, H, W), (8, 16, 3, 3), stride=stride, padding=1)

    assert accepts_tap_tma(problem(9, 7, 1)) and accepts_tap_tma(problem(8, 6, 2))
    assert accepts_tap_tma(problem(9, 8, (3, 2))) and accepts_tap_tma(problem(8, 8, 4))
    assert not accepts_tap_tma(problem(9, 8, 2)) and not accepts_tap_tma(problem(8, 9, 2))


def _check_tma_kernel(family, problem, dtype, kernel, launched):
    N, C, H, W, K, R, S, stride, padding, dilation, groups = problem
    x = torch.randn(N, C, H, W, dtype=dtype, device=DEVICE).to(memory_format=torch.channels_last)
    w = torch.randn(K, C // groups, R, S, dtype=dtype, device=DEVICE).to(memory_format=torch.channels_last)
    with router.force(family):
        y = tritonconv.conv2d(x, w, None, stride, padding, dilation, groups)
    assert launched == [_expected(kernel)]
    assert rel_err(y, F.conv2d(x.double(), w.double(), None, stride, padding, dilation, groups)) < TOL[dtype]
    from tritonconv.kernels.fprop import input_tma_usable, weight_tma_usable

    pb = spec.conv2d_problem(x, w, None, stride, padding, dilation, groups)
    if kernel == "fprop_tma" and TMA:  # an NCHW-contiguous weight has no row-major (K, R*S*C) view
        assert not weight_tma_usable(w.contiguous(), pb)
    if kernel == "fprop_tap_tma" and TMA:  # NCHW x has no (N, H, W, C) boxes
        assert not input_tma_usable(x.contiguous(), w, pb) and input_tma_usable(x, w, pb)


def test_router_records_the_family_that_runs():
    """Families that need a layout are candidates only for tensors that have it, so the
    recorded family is the one that ran; nested recordings are kept apart."""
    torch.manual_seed(6)
    x = torch.randn(2, 16, 6, 6, device=DEVICE).to(memory_format=torch.channels_last)
    w1 = torch.randn(32, 16, 1, 1, device=DEVICE).to(memory_format=torch.channels_last)
    w3 = torch.randn(8, 16, 3, 3, device=DEVICE)
    with router.recording() as outer:
        with router.recording() as inner:  # equal to outer (both empty) when it closes
            pass
        tritonconv.conv2d(x, w1)  # NHWC, 64-byte rows
        tritonconv.conv2d(x.contiguous(), w1.contiguous())  # NCHW: no TMA view
        tritonconv.conv2d(x, w3, None, 1, 1)  # an NCHW weight has no KRSC rows
        tritonconv.conv2d(x, w3.to(memory_format=torch.channels_last), None, 1, 1)  # stride 1: both operands
    tma_1x1, tma_krsc = ("gemm1x1_tma", "tap_tma") if TMA else ("gemm1x1", "implicit")
    if DEVICE == "cpu":  # on a GPU the router times the candidates and takes the fastest
        assert outer == [("forward", tma_1x1), ("forward", "gemm1x1"), ("forward", "implicit"), ("forward", tma_krsc)]
    assert inner == [] and len(outer) == 4


@pytest.mark.parametrize("problem", DGRAD_TAP_TMA)
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_input_grad_tap_tma_as_a_forward_conv(problem, dtype, launched):
    """dgrad as the forward tap_tma kernel on dy and each stride phase's flipped, group-transposed taps."""
    N, C, H, W, K, R, S, stride, padding, dilation, groups = problem
    torch.manual_seed(7)
    x = torch.randn(N, C, H, W, dtype=dtype, device=DEVICE).to(memory_format=torch.channels_last)
    w = torch.randn(K, C // groups, R, S, dtype=dtype, device=DEVICE).to(memory_format=torch.channels_last)
    args = (stride, padding, dilation, groups)
    pb = spec.conv2d_problem(x, w, None, *args)
    dy = torch.randn(pb.output_shape, dtype=dtype, device=DEVICE).to(memory_format=torch.channels_last)
    with router.force("tap_tma"):
        dx = router.input_grad(dy, w, pb, memory_format=torch.channels_last)
    from tritonconv.kernels import dgrad
    from tritonconv.kernels.dgrad import tap_tma_usable

    usable = tap_tma_usable(dy, w, pb)
    assert usable == (TMA and (K // groups) * dy.element_size() % 16 == 0)
    reached = sum(phase.forward is not None for phase in dgrad._phases(pb))  # the others are zero-filled
    # per phase: a plain 1x1 conv (its output the input's size) on the 1x1 GEMM; any other phase, a
    # stride-1 forward conv however short its reduction, on tap_tma
    def kernel(fw):
        if (fw.R, fw.S, fw.pad_h, fw.pad_w, fw.P, fw.Q) == (1, 1, 0, 0, fw.H, fw.W):
            return "gemm1x1_tma"
        return "fprop_tap_tma"

    phases = [kernel(ph.forward) for ph in dgrad._phases(pb) if ph.forward is not None]
    assert len(phases) == reached and launched == (phases if usable else ["dgrad"])
    xr = x.double().requires_grad_()
    F.conv2d(xr, w.double(), None, *args).backward(dy.double())
    assert dx.is_contiguous(memory_format=torch.channels_last)
    assert rel_err(dx, xr.grad) < TOL[dtype]


@pytest.mark.parametrize("problem", [
    pytest.param((2, 16, 9, 10, 24, 3, 3, 1, 1, 1, 1), id="3x3"),
    pytest.param((1, 32, 7, 7, 16, 3, 3, 1, 2, 2, 2), id="dilated-grouped"),  # tiles past a group's rows
    pytest.param((1, 16, 7, 9, 16, 3, 5, 1, (1, 2), (2, 1), 1), id="3x5-uneven"),
    pytest.param((1, 16, 6, 6, 8, 3, 3, 1, 3, 1, 1), id="pad-past-kernel"),  # a negative forward padding
    pytest.param((2, 24, 6, 6, 24, 3, 3, 1, 0, 1, 3), id="8-channels-per-group"),  # BLOCK_K past them
])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_input_grad_reads_a_krsc_weight_in_place_at_stride_1(problem, dtype, launched):
    """At stride 1 the tap_tma dgrad reads a KRSC weight in place, its taps flipped (W_FLIPPED), where
    it otherwise builds the flipped, group-transposed copy: the same products in the same order, so
    the same bits as from the copy (an NCHW weight, which has no in-place read), and dx right."""
    from tritonconv.kernels import dgrad

    N, C, H, W, K, R, S, stride, padding, dilation, groups = problem
    torch.manual_seed(11)
    w = torch.randn(K, C // groups, R, S, dtype=dtype, device=DEVICE)
    krsc = w.to(memory_format=torch.channels_last)
    args = (stride, padding, dilation, groups)
    pb = spec.conv2d_problem(torch.empty(N, C, H, W, dtype=dtype, device=DEVICE), w, None, *args)
    dy = torch.randn(pb.output_shape, dtype=dtype, device=DEVICE).to(memory_format=torch.channels_last)
    phases = dgrad._phases(pb)
    assert dgrad._weight_in_place(dy, krsc, pb, phases, "") == (TMA and dtype != torch.float32)  # 16-bit only
    assert not dgrad._weight_in_place(dy, w, pb, phases, "")  # KCRS: no (C, R*S*K/groups) rows
    with router.force("tap_tma"):
        in_place = router.input_grad(dy, krsc, pb, memory_format=torch.channels_last)
        copied = router.input_grad(dy, w, pb, memory_format=torch.channels_last)
    assert launched == ([_expected("fprop_tap_tma")] * 2 if TMA else ["dgrad"] * 2)
    assert torch.equal(in_place, copied)
    x = torch.zeros(N, C, H, W, dtype=torch.float64, device=DEVICE, requires_grad=True)
    F.conv2d(x, w.double(), None, *args).backward(dy.double())
    assert rel_err(in_place, x.grad) < TOL[dtype]


@pytest.mark.parametrize("problem", [
    pytest.param((2, 16, 9, 10, 24, 3, 3, 1, 1, 1, 1), id="3x3"),
    pytest.param((1, 32, 7, 7, 16, 3, 3, 1, 2, 2, 2), id="dilated-grouped"),
])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_input_grad_tap_tma_copy_reads_a_flipped_copy(problem, dtype, launched, monkeypatch):
    """tap_tma_copy: the stride-1 dgrad from a flipped copy of w where tap_tma reads it in place,
    a candidate beside it; the same products in the same order (the same bits in the interpreter's
    one config), one copy of w built per call (no cache block open), and dx right."""
    from tritonconv.kernels import dgrad

    N, C, H, W, K, R, S, stride, padding, dilation, groups = problem
    torch.manual_seed(12)
    w = torch.randn(K, C // groups, R, S, dtype=dtype, device=DEVICE).to(memory_format=torch.channels_last)
    args = (stride, padding, dilation, groups)
    pb = spec.conv2d_problem(torch.empty(N, C, H, W, dtype=dtype, device=DEVICE), w, None, *args)
    dy = torch.randn(pb.output_shape, dtype=dtype, device=DEVICE).to(memory_format=torch.channels_last)
    assert dgrad.accepts_tap_tma_copy(pb) and dgrad.tap_tma_copy_usable(dy, w, pb) == TMA
    routed = router.routed_candidates(router.INPUT_GRAD, "input_grad", pb, (dy, w))
    assert ("tap_tma_copy" in routed) == TMA
    if TMA:  # after tap_tma: the in-place read stays the untimed choice
        assert routed.index("tap_tma") < routed.index("tap_tma_copy")
    builds = []
    real = dgrad._build_phase_weights
    monkeypatch.setattr(dgrad, "_build_phase_weights", lambda *a: builds.append(a[0]) or real(*a))
    with router.force("tap_tma"):
        in_place = router.input_grad(dy, w, pb, memory_format=torch.channels_last)
    assert not builds
    with router.force("tap_tma_copy"):
        copied = router.input_grad(dy, w, pb, memory_format=torch.channels_last)
    assert len(builds) == (1 if TMA else 0) and all(b is w for b in builds)
    assert launched == ([_expected("fprop_tap_tma")] * 2 if TMA else ["dgrad"] * 2)
    assert torch.equal(in_place, copied)
    x = torch.zeros(N, C, H, W, dtype=torch.float64, device=DEVICE, requires_grad=True)
    F.conv2d(x, w.double(), None, *args).backward(dy.double())
    assert rel_err(copied, x.grad) < TOL[dtype]


@pytest.mark.parametrize("problem,dtype,layout", [
    pytest.param((1, 16, 8, 8, 16, 3, 3, 2, 1, 1, 1), torch.float16, "channels_last", id="stride-2"),
    pytest.param((1, 16, 8, 8, 16, 1, 1, 1, 0, 1, 1), torch.float16, "channels_last", id="1x1"),
    pytest.param((1, 16, 8, 8, 16, 3, 3, 1, 1, 1, 1), torch.float32, "channels_last", id="fp32"),
    pytest.param((1, 16, 8, 8, 16, 3, 3, 1, 1, 1, 1), torch.float16, "kcrs", id="kcrs-weight"),
])
def test_input_grad_tap_tma_copy_only_where_tap_tma_reads_in_place(problem, dtype, layout):
    """Where tap_tma's dgrad copies w anyway (a strided conv's phases, a 1x1 conv's transposed copy
    for the 1x1 GEMM, a float32 or KCRS weight), tap_tma_copy would be the same launches: the
    router does not time it there."""
    from tritonconv.kernels import dgrad

    if not TMA:
        pytest.skip("no TMA here: tap_tma reads no weight in place, and tap_tma_copy is never timed")
    N, C, H, W, K, R, S, stride, padding, dilation, groups = problem
    w = torch.randn(K, C // groups, R, S, dtype=dtype, device=DEVICE)
    if layout == "channels_last":
        w = w.to(memory_format=torch.channels_last)
    pb = spec.conv2d_problem(torch.empty(N, C, H, W, dtype=dtype, device=DEVICE), w, None,
                             stride, padding, dilation, groups)
    dy = torch.randn(pb.output_shape, dtype=dtype, device=DEVICE).to(memory_format=torch.channels_last)
    assert not dgrad.tap_tma_copy_usable(dy, w, pb)
    assert "tap_tma_copy" not in router.routed_candidates(router.INPUT_GRAD, "input_grad", pb, (dy, w))


@pytest.mark.parametrize("problem,kernels", [
    pytest.param((2, 32, 6, 6, 64, 1, 1, 1, 0, 1, 1), ["gemm1x1_tma"], id="1x1"),
    pytest.param((1, 32, 8, 6, 16, 1, 1, 2, 0, 1, 1), ["gemm1x1_tma"], id="1x1-stride-2"),  # 3 phases zero
    pytest.param((2, 16, 10, 12, 24, 3, 3, 2, 1, 1, 1), ["gemm1x1_tma"] + ["fprop_tap_tma"] * 3,
                 id="3x3-stride-2"),  # phase (0, 0) one tap, the others 2 or 4 steps
    pytest.param((1, 16, 7, 7, 16, 3, 3, 1, 1, 1, 1), ["fprop_tap_tma"], id="3x3"),  # 9 steps
])
def test_input_grad_phases_run_on_the_kernel_that_suits_them(problem, kernels, launched):
    """A phase that is a plain 1x1 conv runs on the 1x1 GEMM, the others on tap_tma, short
    reductions too (fprop.TAP_TMA_MIN_STEPS: their wrong tiles on an H100 were the register hazard,
    synced since)."""
    x, w, args, pb = _nhwc_fp16(problem, seed=17)
    dy = torch.randn(pb.output_shape, dtype=torch.float16, device=DEVICE).to(memory_format=torch.channels_last)
    with router.force("tap_tma"):
        dx = router.input_grad(dy, w, pb, memory_format=torch.channels_last)
    assert launched == ([_expected(k) for k in kernels] if TMA else ["dgrad"])
    xr = x.double().requires_grad_()
    F.conv2d(xr, w.double(), None, *args).backward(dy.double())
    assert rel_err(dx, xr.grad) < TOL[torch.float16]


def _phase_count(problem) -> int:
    """dx's stride phases for ``problem`` (N, C, H, W, K, R, S, stride, ...)."""
    H, W, stride = problem[2], problem[3], problem[7]
    sh, sw = (stride, stride) if isinstance(stride, int) else stride
    return min(sh, H) * min(sw, W)


# beyond DGRAD_TAP_TMA's: dx's channels past one column tile (the interpreter's BLOCK_N is 32), so a
# phase's tiles run over pid_n and GROUP_M's bands as well
DGRAD_PHASED = [p for p in DGRAD_TAP_TMA if 1 < _phase_count(p.values[0]) <= 4] + [
    pytest.param((3, 72, 13, 11, 24, 3, 3, 2, 1, 1, 1), id="72-channels-odd-image"),
]


@pytest.mark.parametrize("problem", DGRAD_PHASED)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_input_grad_tap_tma_phased_in_one_launch(problem, dtype, launched):
    """tap_tma_phased: every stride phase of dx in one launch, w read in place, tap (t, u) of phase
    (a, b) being w's tap (r_last - t*step_h, s_last - u*step_w); phases no tap reaches stored as
    the bias. The same products as tap_tma's per-phase launches on the flipped copies, in the same
    order where both run the same tiles, as the interpreter's one config does: the same bits
    there (on a GPU each launch tunes its own tiles); dx right against float64."""
    from tritonconv.kernels import dgrad

    N, C, H, W, K, R, S, stride, padding, dilation, groups = problem
    torch.manual_seed(29)
    w = torch.randn(K, C // groups, R, S, dtype=dtype, device=DEVICE).to(memory_format=torch.channels_last)
    b = torch.randn(C, dtype=dtype, device=DEVICE)
    args = (stride, padding, dilation, groups)
    pb = spec.conv2d_problem(torch.empty(N, C, H, W, dtype=dtype, device=DEVICE), w, None, *args)
    dy = torch.randn(pb.output_shape, dtype=dtype, device=DEVICE).to(memory_format=torch.channels_last)
    assert dgrad.accepts_tap_tma_phased(pb) and "tap_tma_phased" in router.candidates(router.INPUT_GRAD, pb)
    usable = dgrad.tap_tma_phased_usable(dy, w, pb)
    assert usable == (TMA and (K // groups) * dy.element_size() % 16 == 0
                      and (C // groups) * w.element_size() % 16 == 0)
    with router.force("tap_tma_phased"):
        phased = router.input_grad(dy, w, pb, bias=b, memory_format=torch.channels_last)
    if usable:
        assert launched == ["dgrad_phased"]
    if DEVICE == "cpu":
        with router.force("tap_tma"):
            per_phase = router.input_grad(dy, w, pb, bias=b, memory_format=torch.channels_last)
        assert torch.equal(phased, per_phase)
    x = torch.zeros(N, C, H, W, dtype=torch.float64, device=DEVICE, requires_grad=True)
    F.conv2d(x, w.double(), None, *args).backward(dy.double())
    assert phased.is_contiguous(memory_format=torch.channels_last)
    assert rel_err(phased, x.grad + b.double()[None, :, None, None]) < TOL[dtype]


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize("with_bias", [False, True])
def test_input_grad_tap_tma_phased_into_either_layout(memory_format, with_bias, launched):
    """dx in the layout asked for (NCHW: a phase's rows and columns strided by the stride times
    W and 1), with and without conv_transpose2d's bias."""
    from tritonconv.kernels import dgrad

    x, w, args, pb = _nhwc_fp16((2, 48, 9, 10, 32, 3, 3, 2, 1, 1, 1), seed=32)
    dy = torch.randn(pb.output_shape, dtype=torch.float16, device=DEVICE).to(memory_format=torch.channels_last)
    b = torch.randn(pb.C, dtype=torch.float16, device=DEVICE) if with_bias else None
    dx = dgrad.conv2d_dgrad_tap_tma_phased(dy, w, pb, b, memory_format)
    assert launched == [_expected_phased()] and dx.is_contiguous(memory_format=memory_format)
    xr = x.double().requires_grad_()
    F.conv2d(xr, w.double(), None, *args).backward(dy.double())
    ref = xr.grad + (b.double()[None, :, None, None] if with_bias else 0)
    assert rel_err(dx, ref) < TOL[torch.float16]


@pytest.mark.parametrize("problem", [
    pytest.param((2, 16, 8, 8, 24, 1, 1, 2, 0, 1, 1), id="1x1-stride-2"),  # 3 of 4 phases reached by no tap
    pytest.param((1, 32, 10, 9, 16, 3, 3, 2, 2, 2, 2), id="stride-2-dilation-2"),  # phases a=1, two groups
])
def test_input_grad_tap_tma_phased_phases_no_tap_reaches_hold_the_bias(problem, launched):
    """A phase no tap reaches runs one step of the phased kernel on boxes out of both operands'
    bounds: its pixels are exactly the bias even where dy holds inf and w NaN (a box read in bounds,
    either one, would give NaN there)."""
    from tritonconv.kernels import dgrad

    x, w, args, pb = _nhwc_fp16(problem, seed=33)
    dy = torch.full(pb.output_shape, float("inf"), dtype=torch.float16, device=DEVICE)
    dy = dy.to(memory_format=torch.channels_last)
    w = torch.full_like(w, float("nan"))
    b = torch.randn(pb.C, dtype=torch.float16, device=DEVICE)
    dx = dgrad.conv2d_dgrad_tap_tma_phased(dy, w, pb, b, torch.channels_last)
    assert launched == [_expected_phased()]
    # which pixels of dx a tap reaches: float64's dx of ones is positive there, zero elsewhere
    xr = x.double().requires_grad_()
    F.conv2d(xr, torch.ones_like(w, dtype=torch.float64), None, *args).backward(torch.ones_like(dy, dtype=torch.float64))
    reached = xr.grad != 0
    assert 0 < reached.sum() < reached.numel()
    assert torch.equal(dx.masked_select(~reached), b[None, :, None, None].expand_as(dx).masked_select(~reached))


@pytest.mark.parametrize("problem,dtype,layout,why", [
    pytest.param((1, 16, 8, 8, 16, 3, 3, 2, 1, 1, 1), torch.float32, "channels_last", "fp32", id="fp32"),
    pytest.param((1, 16, 8, 8, 16, 3, 3, 2, 1, 1, 1), torch.float16, "kcrs", "weight", id="kcrs-weight"),
    pytest.param((1, 16, 9, 9, 16, 3, 3, 3, 1, 1, 1), torch.float16, "channels_last", "phases", id="stride-3"),
])
def test_input_grad_tap_tma_phased_hands_on_what_it_cannot_take(problem, dtype, layout, why, launched):
    """The phased kernel reads a 16-bit KRSC w in place and has 4 phase slots: an fp32 (TF32) dgrad,
    a KCRS weight and a stride-3 conv's 9 phases go to tap_tma's per-phase launches (the launcher's
    fallback, called directly: the router does not even make the family a candidate for them)."""
    from tritonconv.kernels import dgrad

    N, C, H, W, K, R, S, stride, padding, dilation, groups = problem
    torch.manual_seed(30)
    w = torch.randn(K, C // groups, R, S, dtype=dtype, device=DEVICE)
    if layout == "channels_last":
        w = w.to(memory_format=torch.channels_last)
    args = (stride, padding, dilation, groups)
    pb = spec.conv2d_problem(torch.empty(N, C, H, W, dtype=dtype, device=DEVICE), w, None, *args)
    dy = torch.randn(pb.output_shape, dtype=dtype, device=DEVICE).to(memory_format=torch.channels_last)
    assert dgrad.accepts_tap_tma_phased(pb) == (why != "phases")
    assert not dgrad.tap_tma_phased_usable(dy, w, pb) or why == "phases"
    assert "tap_tma_phased" not in router.routed_candidates(router.INPUT_GRAD, "input_grad", pb, (dy, w))
    dx = dgrad.conv2d_dgrad_tap_tma_phased(dy, w, pb, memory_format=torch.channels_last)
    assert "dgrad_phased" not in launched and launched  # tap_tma's launches (or its own fallback's)
    x = torch.zeros(N, C, H, W, dtype=torch.float64, device=DEVICE, requires_grad=True)
    F.conv2d(x, w.double(), None, *args).backward(dy.double())
    assert rel_err(dx, x.grad) < TOL[dtype]


@pytest.mark.parametrize("stride,padding,output_padding,dilation,groups", [
    pytest.param(2, 1, 1, 1, 1, id="stride-2-output-padding"),  # dx one row and column past the phases of dy
    pytest.param(2, 0, 1, 3, 1, id="dilation-3"),  # every phase reached, taps 3 rows apart in dx
    pytest.param((2, 1), (1, 0), (1, 0), (1, 2), 2, id="2x1-grouped"),  # two phases, two groups
])
def test_conv_transpose2d_on_tap_tma_phased(stride, padding, output_padding, dilation, groups, launched):
    """conv_transpose2d is the dgrad: its phases (output_padding's extra rows among them) and its
    bias from the one phased launch."""
    torch.manual_seed(31)
    x = torch.randn(2, 16, 5, 4, dtype=torch.float16, device=DEVICE).to(memory_format=torch.channels_last)
    w = torch.randn(16, 32 // groups, 3, 3, dtype=torch.float16, device=DEVICE).to(memory_format=torch.channels_last)
    b = torch.randn(32, dtype=torch.float16, device=DEVICE)
    with router.force("tap_tma_phased"):
        y = tritonconv.conv_transpose2d(x, w, b, stride, padding, output_padding, groups, dilation)
    ref = F.conv_transpose2d(x.double(), w.double(), b.double(), stride, padding, output_padding, groups, dilation)
    assert launched == [_expected_phased()]
    assert y.shape == ref.shape and rel_err(y, ref) < TOL[torch.float16]


def _expected_phased() -> str:
    """The kernel tap_tma_phased runs: its own where TMA is (sm_90, the interpreter), else the
    implicit dgrad (tap_tma's dgrad falls back to it)."""
    return "dgrad_phased" if TMA else "dgrad"


def test_input_grad_tap_tma_phased_slots():
    """The slots of ResNet-50's 3x3 stride-2 dgrad: the 4-tap phase (1, 1) first, then the 2-tap
    ones, the one-tap (0, 0) last; each with w's tap for its tap (0, 0) (the last one reaching it)
    and the padding of its forward conv of dy; and a 1x1 stride-2's three tapless phases, whose one
    step reads dy from its row P on and w's tap R*S: past both."""
    from tritonconv.kernels import dgrad

    pb = spec.problem_from_shapes((32, 128, 56, 56), (128, 128, 3, 3), stride=2, padding=1)
    slots, sizes, dil_h, dil_w, w_tap_row, w_tap_col = dgrad._phased_slots(pb)
    rows = [slots[i:i + 7] for i in range(0, len(slots), 7)]
    # (a, b, na, nb, pad_h, pad_w, tap0): phase 1 takes taps 0 and 2, phase 0 tap 1 (w's 3x3 row-major)
    assert rows == [(1, 1, 2, 2, 0, 0, 8), (0, 1, 1, 2, 0, 0, 5), (1, 0, 2, 1, 0, 0, 7), (0, 0, 1, 1, 0, 0, 4)]
    assert sizes == ((28, 28),) * 4 and (dil_h, dil_w, w_tap_row, w_tap_col) == (1, 1, 6, 2)
    down = spec.problem_from_shapes((1, 8, 7, 7), (8, 8, 1, 1), stride=2)
    rows = [dgrad._phased_slots(down)[0][i:i + 7] for i in range(0, 28, 7)]
    assert rows[0] == (0, 0, 1, 1, 0, 0, 0) and all(r[2:] == (0, 0, -4, 0, 1) for r in rows[1:])
    assert dgrad._phased_slots(down)[1] == ((4, 4), (4, 3), (3, 4), (3, 3))


@pytest.mark.skipif(DEVICE != "cuda", reason="layer sizes: too slow for the interpreter, and the failure was the GPU's")
@pytest.mark.parametrize("family,problem", [
    pytest.param("tap_tma", (32, 1024, 14, 14, 256, 1, 1, 1, 0, 1, 1), id="resnet50-layer3.1.conv1"),
    pytest.param("tap_tma", (32, 256, 56, 56, 512, 1, 1, 2, 0, 1, 1), id="resnet50-layer2.0.downsample"),
    pytest.param("tap_tma", (32, 128, 56, 56, 128, 3, 3, 2, 1, 1, 1), id="resnet50-layer2.0.conv2"),
    pytest.param("gemm1x1", (32, 1024, 14, 14, 256, 1, 1, 1, 0, 1, 1), id="gemm1x1-resnet50-layer3.1.conv1"),
    pytest.param("gemm1x1", (32, 256, 56, 56, 512, 1, 1, 2, 0, 1, 1), id="gemm1x1-resnet50-layer2.0.downsample"),
    pytest.param("tap_tma_splitk", (32, 512, 7, 7, 512, 3, 3, 1, 1, 1, 1), id="splitk-resnet50-layer4.1.conv2"),
    pytest.param("tap_tma_splitk", (32, 512, 14, 14, 512, 3, 3, 2, 1, 1, 1), id="splitk-resnet50-layer4.0.conv2"),
    pytest.param("tap_tma_streamk", (32, 512, 7, 7, 512, 3, 3, 1, 1, 1, 1), id="streamk-resnet50-layer4.1.conv2"),
    pytest.param("tap_tma_streamk", (32, 256, 28, 28, 256, 3, 3, 2, 1, 1, 1), id="streamk-resnet50-layer3.0.conv2"),
    pytest.param("tap_tma_phased", (32, 128, 56, 56, 128, 3, 3, 2, 1, 1, 1), id="phased-resnet50-layer2.0.conv2"),
    pytest.param("tap_tma_phased", (32, 512, 14, 14, 512, 3, 3, 2, 1, 1, 1), id="phased-resnet50-layer4.0.conv2"),
    pytest.param("tap_tma_phased", (32, 256, 56, 56, 512, 1, 1, 2, 0, 1, 1), id="phased-resnet50-layer2.0.downsample"),
])
def test_input_grad_tap_tma_at_layer_sizes(family, problem):
    """ResNet-50's 1x1 and strided dgrads through the tap_tma family (and the dgrad families that
    came after it), several calls each, every one checked: tap_tma's kernel gave wrong tiles
    (1e-2 off, different per call) on the first two, at 2 to 4 reduction steps per phase, on an H100."""
    N, C, H, W, K, R, S, stride, padding, dilation, groups = problem
    torch.manual_seed(18)
    x = torch.randn(N, C, H, W, dtype=torch.float16, device=DEVICE).to(memory_format=torch.channels_last)
    w = (torch.randn(K, C, R, S, device=DEVICE) / (C * R * S) ** 0.5).half().to(memory_format=torch.channels_last)
    args = (stride, padding, dilation, groups)
    pb = spec.conv2d_problem(x, w, None, *args)
    dy = torch.randn(pb.output_shape, dtype=torch.float16, device=DEVICE).to(memory_format=torch.channels_last)
    xr = x.double().requires_grad_()
    F.conv2d(xr, w.double(), None, *args).backward(dy.double())
    for _ in range(3):  # every output starts as NaN (conftest), an unwritten element shows
        with router.force(family), router.recording() as seen:
            dx = router.input_grad(dy, w, pb, memory_format=torch.channels_last)
        assert seen == [("input_grad", family)] and rel_err(dx, xr.grad) < 1e-3


def test_tap_tma_takes_short_reductions():
    """Steps of 64 channels (taps x channel blocks) no longer limit tap_tma: the H100's wrong tiles
    at 2 and 4 steps were the wgmma register hazard, synced where Triton has it. A problem with
    no reduction at all (C = 0) is no tap_tma's."""
    from tritonconv.kernels.fprop import accepts_tap_tma, tap_tma_steps

    def problem(C, R, padding=0, stride=1):
        return spec.problem_from_shapes((1, C, 8, 8), (16, C, R, R), stride=stride, padding=padding)

    assert [tap_tma_steps(problem(C, R)) for C, R in [(16, 3), (256, 1), (1024, 1), (96, 2), (192, 2)]] == \
        [9, 4, 16, 8, 12]
    assert accepts_tap_tma(problem(16, 3)) and accepts_tap_tma(problem(192, 2))
    assert accepts_tap_tma(problem(256, 1, padding=1)) and accepts_tap_tma(problem(96, 2, stride=2))
    assert accepts_tap_tma(problem(64, 1))  # one step (unpadded: gemm1x1 supersedes it in the router)
    assert not accepts_tap_tma(problem(0, 3))


def test_tap_tma_steps_count_its_largest_block_k():
    """The guard counts steps of 64 channels: no tap_tma config may take larger blocks (fewer steps).
    (Moot while the limit is one step; it holds the guard's meaning should the limit be raised.)"""
    from tritonconv.kernels import fprop

    assert max(c.kwargs["BLOCK_K"] for c in fprop.tap_tma_configs(interpreter=False)) <= 64


@pytest.mark.parametrize("output_padding,dilation,kernel", [
    pytest.param(1, 1, "gemm1x1_tma", id="phase-as-large-as-dy"),  # 8 rows: 4 even ones, from 4 of dy
    pytest.param(2, 3, "fprop_tap_tma", id="phase-larger-than-dy"),  # 9 rows: 5 even ones, from 4 of dy
    pytest.param((2, 0), (3, 1), "fprop_tap_tma", id="larger-in-rows-only"),
])
def test_a_phase_larger_than_dy_is_no_1x1_gemm(output_padding, dilation, kernel, launched):
    """conv_transpose2d, 1x1, stride 2: dx's even rows are a 1x1 conv of dy (the odd ones, no
    tap's: zero). With output_padding there can be one more of them than dy has rows; the 1x1
    GEMM maps output pixels one to one onto input pixels and cannot write it, tap_tma can (its box
    reaches past dy, which TMA zero-fills)."""
    torch.manual_seed(19)
    x = torch.randn(1, 16, 4, 4, dtype=torch.float16, device=DEVICE).to(memory_format=torch.channels_last)
    w = torch.randn(16, 8, 1, 1, dtype=torch.float16, device=DEVICE).to(memory_format=torch.channels_last)
    with router.force("tap_tma"):
        y = tritonconv.conv_transpose2d(x, w, None, 2, 0, output_padding, 1, dilation)
    ref = F.conv_transpose2d(x.double(), w.double(), None, 2, 0, output_padding, 1, dilation)
    assert y.shape == ref.shape and rel_err(y, ref) < TOL[torch.float16]
    assert launched == ([_expected(kernel)] if TMA else ["dgrad"])


@pytest.mark.parametrize("dims", [1, 3, 4])
def test_sum_partials_is_torch_sum_in_a_fixed_order(dims):
    """wgrad.sum_partials (split wgrads, the bias gradient, depthwise wgrad) into strided views."""
    from tritonconv.kernels.wgrad import sum_partials

    shape = (5, 3, 4, 2)[:dims]
    partials = torch.randn(7, *shape, dtype=torch.float32, device=DEVICE)
    partials = partials.transpose(0, 1).contiguous().transpose(0, 1)  # split not outermost in memory
    base = torch.full((2 * shape[0], *shape[1:]), float("nan"), dtype=torch.float16, device=DEVICE)
    dst = base[1::2]  # a view with a stride of 2 in its first dimension
    if dims == 4:
        dst = dst.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)[:, :, :, :]  # channels_last-like
    sum_partials(dst, partials)
    assert torch.isfinite(dst).all()
    assert rel_err(dst, partials.double().sum(0)) < 1e-3
    if dims != 4:
        assert torch.isnan(base[0::2]).all()  # nothing written outside the view


def test_conv_transpose2d_with_bias_through_tap_tma(launched):
    torch.manual_seed(8)
    x = torch.randn(2, 16, 7, 6, dtype=torch.float16, device=DEVICE).to(memory_format=torch.channels_last)
    w = torch.randn(16, 24, 3, 3, dtype=torch.float16, device=DEVICE).to(memory_format=torch.channels_last)
    b = torch.randn(24, dtype=torch.float16, device=DEVICE)
    with router.force("tap_tma"):
        y = tritonconv.conv_transpose2d(x, w, b, 1, 1)
    assert launched == (["fprop_tap_tma"] if TMA else ["dgrad"])
    assert rel_err(y, F.conv_transpose2d(x.double(), w.double(), b.double(), 1, 1)) < TOL[torch.float16]


@pytest.mark.parametrize("problem", SHORT_REDUCTIONS + [
    pytest.param((2, 16, 5, 6, 8, 1, 1, 1, 1, 1, 1), id="padded-1x1"),  # no plain GEMM takes it
])
def test_forward_tap_tma_takes_short_reductions(problem, launched):
    """Reductions of a few steps (fprop.TAP_TMA_MIN_STEPS) run on the forward tap_tma kernel, as the
    router now times it there: every pixel written, right against float64."""
    x, w, args, pb = _nhwc_fp16(problem, seed=21)
    assert "tap_tma" in router.routed_candidates(router.FORWARD, "forward", pb, (x, w, None, None)) or not TMA
    with router.force("tap_tma"):
        y = tritonconv.conv2d(x, w, None, *args)
    assert launched == (["fprop_tap_tma"] if TMA else ["fprop"])
    assert rel_err(y, F.conv2d(x.double(), w.double(), None, *args)) < TOL[torch.float16]


@pytest.mark.parametrize("problem", TAP_TMA + SHORT_REDUCTIONS)
def test_weight_grad_tap_tma(problem, launched):
    """wgrad from TMA boxes of dy and of x shifted per tap (zero fill: padding and edges), strided
    layers through x's phase view."""
    N, C, H, W, K, R, S, stride, padding, dilation, groups = problem
    torch.manual_seed(9)
    x = torch.randn(N, C, H, W, dtype=torch.float16, device=DEVICE).to(memory_format=torch.channels_last)
    w = torch.randn(K, C // groups, R, S, dtype=torch.float16, device=DEVICE)
    args = (stride, padding, dilation, groups)
    pb = spec.conv2d_problem(x, w, None, *args)
    dy = torch.randn(pb.output_shape, dtype=torch.float16, device=DEVICE).to(memory_format=torch.channels_last)
    with router.force("tap_tma"):
        dw = router.weight_grad(dy, x, pb)
    from tritonconv.kernels.wgrad import tap_tma_usable

    aligned = (K // groups) * 2 % 16 == 0 and (C // groups) * 2 % 16 == 0
    assert tap_tma_usable(dy, x, pb) == (TMA and aligned)
    assert launched == (["wgrad_tap_tma"] if TMA and aligned else ["wgrad"])
    assert not tap_tma_usable(dy.contiguous(), x, pb) and not tap_tma_usable(dy.float(), x.float(), pb)
    wr = w.double().requires_grad_()
    F.conv2d(x.double(), wr, None, *args).backward(dy.double())
    assert rel_err(dw, wr.grad) < TOL[torch.float16]


def test_tma_views_ignore_the_strides_of_size_1_dims(launched):
    """A tensor with size-1 dims is channels_last-contiguous whatever those dims' strides are
    (an NCHW (N, C, 1, 1) tensor is one); TMA wants every stride 16-byte aligned, so the
    descriptors' views spell their strides out (_common.dense_view)."""
    torch.manual_seed(13)
    x = torch.randn(2, 16, 1, 1, dtype=torch.float16, device=DEVICE)  # NCHW-contiguous, strides (16, 1, 1, 1)
    w = torch.randn(1, 16, 3, 3, dtype=torch.float16, device=DEVICE).to(memory_format=torch.channels_last)
    assert x.is_contiguous(memory_format=torch.channels_last) and x.stride()[2:] == (1, 1)
    with router.force("tap_tma"):
        y = tritonconv.conv2d(x, w, None, 1, 1)  # K = 1: the weight's (K, R*S*C) view too
    assert rel_err(y, F.conv2d(x.double(), w.double(), None, 1, 1)) < TOL[torch.float16]
    xs = torch.randn(2, 16, 3, 3, dtype=torch.float16, device=DEVICE).to(memory_format=torch.channels_last)
    ws = torch.randn(8, 16, 3, 3, dtype=torch.float16, device=DEVICE)
    pb = spec.conv2d_problem(xs, ws, None, 1, 0, 1, 1)
    dy = torch.randn(pb.output_shape, dtype=torch.float16, device=DEVICE)  # (2, 8, 1, 1), NCHW strides
    with router.force("tap_tma"):
        dw = router.weight_grad(dy, xs, pb)
    assert launched == (["fprop_tap_tma", "wgrad_tap_tma"] if TMA else ["fprop", "wgrad"])
    wr = ws.double().requires_grad_()
    F.conv2d(xs.double(), wr, None, 1, 0).backward(dy.double())
    assert rel_err(dw, wr.grad) < TOL[torch.float16]


@pytest.mark.parametrize("split_k", [1, 2, 5, 16])
def test_weight_grad_tap_tma_split_is_correct_and_deterministic(split_k):
    """9x10 output in 2x8 spatial steps (interpreter): 5 rows x 2 columns of tiles per image, 20 in
    all; 16 chunks of 2 leave 6 empty (they must store zero partials, which are poisoned)."""
    from tritonconv.kernels.wgrad import conv2d_wgrad_tap_tma

    torch.manual_seed(10)
    x = torch.randn(2, 16, 9, 10, dtype=torch.float16, device=DEVICE).to(memory_format=torch.channels_last)
    w = torch.randn(24, 16, 3, 3, dtype=torch.float16, device=DEVICE)
    pb = spec.conv2d_problem(x, w, None, 1, 1, 1, 1)
    dy = torch.randn(pb.output_shape, dtype=torch.float16, device=DEVICE).to(memory_format=torch.channels_last)
    _assert_split_wgrad(conv2d_wgrad_tap_tma, dy, x, w, pb, (1, 1), split_k)


def test_routed_candidates_drop_what_cannot_run_or_is_superseded():
    """What the router would time on a GPU for given tensors (under the interpreter it runs the first)."""
    x = torch.randn(32, 64, 8, 8, dtype=torch.float16, device=DEVICE).to(memory_format=torch.channels_last)
    w1 = torch.randn(256, 64, 1, 1, dtype=torch.float16, device=DEVICE).to(memory_format=torch.channels_last)
    w3 = torch.randn(64, 64, 3, 3, dtype=torch.float16, device=DEVICE).to(memory_format=torch.channels_last)

    def fwd(x, w, stride=1, padding=0):
        pb = spec.conv2d_problem(x, w, None, stride, padding, 1, 1)
        return router.routed_candidates(router.FORWARD, "forward", pb, (x, w, None, None))

    tma = ["gemm1x1_tma"] if TMA else []
    # 1x1: the plain GEMMs supersede the implicit families (and a 64-long reduction is no split-K's)
    assert fwd(x, w1) == tma + ["gemm1x1"]
    assert fwd(x.contiguous(), w1) == ["gemm1x1"]  # NCHW: no TMA view of x
    # 3x3: M = 2048 with a 576-long reduction, so split-K is timed too (and 2048 output pixels:
    # few tiles for a GPU's SMs, so tap_tma's stream-K grid would be too); in 16-bit, from
    # TIMED_MIN_PIXELS, the GPU checks' pairwise winners supersede (SUPERSEDES_TIMED_16BIT)
    assert router.TIMED_MIN_PIXELS <= 2048
    assert fwd(x, w3, 1, 1) == ["splitk"] + (["tap_tma_splitk", "tap_tma", "implicit_tma"] if TMA else ["implicit"])
    x32, w32 = x.float(), w3.float()
    assert fwd(x32, w32, 1, 1) == ["splitk"] + (["tap_tma_splitk", "tap_tma", "tap_tma_streamk", "implicit_tma"]
                                                if TMA else []) + ["implicit"]
    # fewer pixels than the checks measured: everything timed (split-K and stream-K are for these);
    # the bound is the smallest layer measured, 7x7 at batch 32
    assert fwd(x[:8], w3, 1, 1) == ["splitk"] + (["tap_tma_splitk", "tap_tma", "tap_tma_streamk", "implicit_tma"]
                                                 if TMA else []) + ["implicit"]
    at_bound = torch.randn(32, 64, 7, 7, dtype=torch.float16, device=DEVICE).to(memory_format=torch.channels_last)
    below = torch.randn(1, 64, 1, 1567, dtype=torch.float16, device=DEVICE).to(memory_format=torch.channels_last)
    assert "implicit" not in fwd(at_bound, w3, 1, 1) and "implicit" in fwd(below, w3, 1, 1)
    # a 1x1 with a long reduction at 7x7: the 1x1 GEMMs, not splitk, in 16-bit
    x7 = torch.randn(32, 512, 7, 7, dtype=torch.float16, device=DEVICE).to(memory_format=torch.channels_last)
    w7 = torch.randn(128, 512, 1, 1, dtype=torch.float16, device=DEVICE).to(memory_format=torch.channels_last)
    assert fwd(x7, w7) == tma + ["gemm1x1"] and fwd(x7.float(), w7.float()) == tma + ["gemm1x1", "splitk"]
    assert fwd(x, w3.contiguous(), 2, 1) == ["splitk", "implicit"]  # stride 2, NCHW weight: no TMA family
    # a strided 1x1 has no TMA GEMM: the pointer GEMM replaces the implicit one only, the TMA families stay
    # (512 output pixels: stream-K's too)
    assert fwd(x, w1, 2) == ["gemm1x1"] + (["tap_tma", "tap_tma_streamk", "implicit_tma"] if TMA else [])
    pb = spec.conv2d_problem(x, w1, None, 1, 0, 1, 1)
    dy = torch.randn(pb.output_shape, dtype=torch.float16, device=DEVICE).to(memory_format=torch.channels_last)
    assert router.routed_candidates(router.WEIGHT_GRAD, "weight_grad", pb, (dy, x)) == tma + ["gemm1x1"]
    # dgrad of a 1x1: the GEMM on w transposed in place and tap_tma's (a transposed copy, then the
    # TMA GEMM) are both timed; the implicit dgrad is superseded. A 3x3's keeps its own.
    def dgrad(w, stride=1, padding=0):
        pb = spec.conv2d_problem(x, w, None, stride, padding, 1, 1)
        dy = torch.randn(pb.output_shape, dtype=torch.float16, device=DEVICE).to(memory_format=torch.channels_last)
        return router.routed_candidates(router.INPUT_GRAD, "input_grad", pb, (dy, w))

    assert dgrad(w1) == ["gemm1x1"] + (["tap_tma"] if TMA else [])
    # strided, 16-bit, KRSC: every phase in one launch too (the three tapless ones stored as zeros)
    assert dgrad(w1, 2) == ["gemm1x1"] + (["tap_tma", "tap_tma_phased"] if TMA else [])
    # (2048 pixels, 576-long phase reductions: tap_tma's split-K too; w read in place by tap_tma, so
    # its flipped copy is timed beside it)
    assert dgrad(w3, 1, 1) == (["tap_tma_splitk", "tap_tma", "tap_tma_streamk", "tap_tma_copy"] if TMA
                               else []) + ["implicit"]
    # the wgrad of a 3x3: tap_tma's TMA boxes, not the implicit GEMM, in 16-bit
    pb = spec.conv2d_problem(x, w3, None, 1, 1, 1, 1)
    dy = torch.randn(pb.output_shape, dtype=torch.float16, device=DEVICE).to(memory_format=torch.channels_last)
    assert router.routed_candidates(router.WEIGHT_GRAD, "weight_grad", pb, (dy, x)) == (["tap_tma"] if TMA
                                                                                         else ["implicit"])
    with router.force("implicit"):
        assert fwd(x, w1) == ["implicit"]
    # depthwise, one channel a group: the direct forward supersedes smallc and the implicit GEMM,
    # until it is dropped for the problem (then they are timed again); the backward, never timed
    # on a GPU, times both; a channel multiplier of 2 too
    xd = torch.randn(2, 32, 8, 8, dtype=torch.float16, device=DEVICE).to(memory_format=torch.channels_last)
    wd = torch.randn(32, 1, 3, 3, dtype=torch.float16, device=DEVICE)
    pb = spec.conv2d_problem(xd, wd, None, 2, 1, 1, 32)
    dy = torch.randn(pb.output_shape, dtype=torch.float16, device=DEVICE).to(memory_format=torch.channels_last)
    assert router.routed_candidates(router.FORWARD, "forward", pb, (xd, wd, None, None)) == ["depthwise"]
    others = router.routed_candidates(router.FORWARD, "forward", pb, (xd, wd, None, None), dropped={"depthwise"})
    assert others[:1] == ["smallc"] and "implicit" in others
    assert router.routed_candidates(router.INPUT_GRAD, "input_grad", pb, (dy, wd)) == ["depthwise", "implicit"]
    assert router.routed_candidates(router.WEIGHT_GRAD, "weight_grad", pb, (dy, xd)) == ["depthwise", "implicit"]
    w2 = torch.randn(64, 1, 3, 3, dtype=torch.float16, device=DEVICE)
    pb2 = spec.conv2d_problem(xd, w2, None, 2, 1, 1, 32)
    assert router.routed_candidates(router.FORWARD, "forward", pb2, (xd, w2, None, None))[:2] == ["depthwise", "smallc"]


# dgrad of unpadded 1x1 convs on the 1x1 GEMM, w read transposed in place:
# (N, C, H, W, K, stride, dtype, layout)
DGRAD_1X1 = [
    pytest.param((2, 16, 6, 5, 24, 1), torch.float32, "channels_last", id="nhwc"),
    pytest.param((1, 24, 7, 8, 16, 2), torch.float16, "channels_last", id="stride-2-odd-size"),  # 3 phases zero
    pytest.param((2, 8, 5, 7, 12, (2, 3)), torch.float64, "nchw", id="nchw-stride-2x3"),
    pytest.param((1, 12, 3, 5, 96, 1), torch.float32, "channels_last", id="long-reduction"),  # over K = 96
    # w a transposed view (its K contiguous), so w.transpose(0, 1) is the dense one
    pytest.param((2, 16, 4, 6, 24, 2), torch.float32, "weight-transposed", id="weight-a-view"),
]


@pytest.mark.parametrize("problem,dtype,layout", DGRAD_1X1)
def test_input_grad_1x1_on_the_gemm(problem, dtype, layout, launched, monkeypatch):
    """The input gradient of a 1x1 conv is dy times w transposed at the strided pixels, zero at the
    others: one GEMM launch (no copy of w), one zero fill per phase no tap reaches."""
    from tritonconv.kernels import dgrad, gemm1x1

    N, C, H, W, K, stride = problem
    fmt = torch.contiguous_format if layout == "nchw" else torch.channels_last
    torch.manual_seed(21)
    x = torch.randn(N, C, H, W, dtype=dtype, device=DEVICE).to(memory_format=fmt)
    if layout == "weight-transposed":
        w = torch.randn(C, K, dtype=dtype, device=DEVICE).t()[:, :, None, None]
        assert w.stride()[:2] == (1, K)
    else:
        w = torch.randn(K, C, 1, 1, dtype=dtype, device=DEVICE).to(memory_format=fmt)
    pb = spec.conv2d_problem(x, w, None, stride, 0, 1, 1)
    dy = torch.randn(pb.output_shape, dtype=dtype, device=DEVICE).to(memory_format=fmt)
    assert gemm1x1.accepts_dgrad(pb) and router.candidates(router.INPUT_GRAD, pb)[0] == "gemm1x1"
    fills = []
    real = dgrad._fill_phase
    monkeypatch.setattr(dgrad, "_fill_phase", lambda out, bias: (fills.append(out.shape), real(out, bias)))
    with router.force("gemm1x1"):
        dx = router.input_grad(dy, w, pb, memory_format=fmt)
    sh, sw = pb.stride_h, pb.stride_w
    assert launched == ["gemm1x1_dgrad"] and len(fills) == min(sh, H) * min(sw, W) - 1
    xr = x.double().requires_grad_()
    F.conv2d(xr, w.double(), None, stride).backward(dy.double())
    assert dx.is_contiguous(memory_format=fmt) and rel_err(dx, xr.grad) < TOL[dtype]


@pytest.mark.parametrize("stride,output_padding", [(1, 0), (2, 1), ((2, 3), (0, 2))])
def test_conv_transpose2d_1x1_with_bias_on_the_gemm(stride, output_padding, launched):
    """conv_transpose2d of a 1x1 kernel: its output's strided pixels from the GEMM plus bias, the
    others bias alone."""
    torch.manual_seed(22)
    x = torch.randn(2, 16, 5, 4, dtype=torch.float32, device=DEVICE)
    w = torch.randn(16, 8, 1, 1, dtype=torch.float32, device=DEVICE)
    b = torch.randn(8, dtype=torch.float32, device=DEVICE)
    with router.force("gemm1x1"):
        y = tritonconv.conv_transpose2d(x, w, b, stride, 0, output_padding)
    ref = F.conv_transpose2d(x.double(), w.double(), b.double(), stride, 0, output_padding)
    assert launched == ["gemm1x1_dgrad"] and y.shape == ref.shape and rel_err(y, ref) < TOL[torch.float32]


def test_input_grad_1x1_gemm_takes_only_what_it_computes():
    """Not padded, not grouped, and a strided phase the size of dy: a phase one row larger
    (conv_transpose2d's output_padding with dilation) goes to the other families."""
    from tritonconv.kernels import gemm1x1

    def problem(C=8, K=8, stride=1, padding=0, dilation=1, groups=1, H=8):
        return spec.problem_from_shapes((1, C, H, H), (K, C // groups, 1, 1), stride, padding, dilation, groups)

    assert gemm1x1.accepts_dgrad(problem()) and gemm1x1.accepts_dgrad(problem(stride=2, H=7))
    assert not gemm1x1.accepts_dgrad(problem(padding=1))
    assert not gemm1x1.accepts_dgrad(problem(groups=2))
    big = spec.conv_transpose2d_problem(torch.empty(1, 8, 4, 4), torch.empty(8, 8, 1, 1), None, 2, 0, 2, 1, 3)
    assert (big.H, big.P) == (9, 4) and not gemm1x1.accepts_dgrad(big)
    assert router.candidates(router.INPUT_GRAD, big) == ["tap_tma", "tap_tma_streamk", "tap_tma_phased", "implicit"]


def _forced_dgrad(family: str, problem, seed: int) -> spec.Conv2dProblem:
    """dx of ``problem`` (N, C, H, W, K, R, stride, padding; fp16, NHWC) with ``family`` forced,
    checked against float64 autograd; returns the problem."""
    N, C, H, W, K, R, stride, padding = problem
    x, w, args, pb = _nhwc_fp16((N, C, H, W, K, R, R, stride, padding, 1, 1), seed=seed)
    dy = torch.randn(pb.output_shape, dtype=torch.float16, device=DEVICE).to(memory_format=torch.channels_last)
    with router.force(family):
        dx = router.input_grad(dy, w, pb, memory_format=torch.channels_last)
    xr = x.double().requires_grad_()
    F.conv2d(xr, w.double(), None, *args).backward(dy.double())
    assert rel_err(dx, xr.grad) < TOL[torch.float16]
    return pb


@pytest.mark.parametrize("problem,kernels,split", [
    # stride 1: one phase, 9 taps of 64 channels
    pytest.param((1, 16, 5, 5, 64, 3, 1, 1), ["fprop_tap_tma"], [True], id="3x3"),
    # stride 2 at 256 channels: the one-tap phase a 1x1 GEMM, the 2- and 4-tap ones split
    pytest.param((1, 16, 6, 6, 256, 3, 2, 1), ["gemm1x1_tma"] + ["fprop_tap_tma"] * 3, [False, True, True, True],
                 id="3x3-stride-2"),
])
def test_input_grad_tap_tma_splitk_splits_the_phases_that_suit_it(problem, kernels, split, launched, monkeypatch):
    """dgrad's tap_tma_splitk: each phase whose forward conv of dy split-K suits (fprop.accepts_splitk:
    small, with a long reduction) on tap_tma's split-K forward, the others as tap_tma runs them."""
    from tritonconv.kernels import dgrad

    split_calls = []
    real = dgrad.conv2d_fprop_tap_tma_splitk
    monkeypatch.setattr(dgrad, "conv2d_fprop_tap_tma_splitk",
                        lambda *a, **k: split_calls.append(a[3]) or real(*a, **k))
    pb = _forced_dgrad("tap_tma_splitk", problem, seed=23)
    assert dgrad.accepts_tap_tma_splitk(pb) and router.candidates(router.INPUT_GRAD, pb)[0] == "tap_tma_splitk"
    if not TMA:
        pytest.skip("no TMA here (sm_80): the dgrad fell back to the implicit GEMM, right as checked")
    reached = [ph.forward for ph in dgrad._phases(pb) if ph.forward is not None]
    assert launched == kernels and split_calls == [f for f, s in zip(reached, split) if s]


@pytest.mark.parametrize("problem,kernels", [
    pytest.param((1, 16, 5, 5, 24, 3, 1, 1), ["fprop_tap_tma_streamk"], id="3x3"),
    # stride 2: the one-tap phase a 1x1 GEMM, the 2- and 4-tap ones on the stream-K grid
    pytest.param((2, 16, 6, 6, 32, 3, 2, 1), ["gemm1x1_tma"] + ["fprop_tap_tma_streamk"] * 3, id="3x3-stride-2"),
])
def test_input_grad_tap_tma_stream_k_runs_its_phases_on_the_grid(problem, kernels, launched, monkeypatch):
    """dgrad's tap_tma_streamk: each phase (not a plain 1x1 one) on tap_tma's stream-K forward."""
    from tritonconv.kernels import dgrad

    monkeypatch.setattr(configs, "STREAM_K", True)
    pb = _forced_dgrad("tap_tma_streamk", problem, seed=24)
    assert dgrad.accepts_tap_tma_streamk(pb) and "tap_tma_streamk" in router.candidates(router.INPUT_GRAD, pb)
    assert not dgrad.accepts_tap_tma_streamk(spec.problem_from_shapes((128, 16, 9, 9), (16, 16, 3, 3), 1, 1))
    if not TMA:
        pytest.skip("no TMA here (sm_80): the dgrad fell back to the implicit GEMM, right as checked")
    assert launched == kernels


def test_input_grad_tap_tma_splitk_takes_only_small_phases_with_long_reductions():
    """dgrad's tap_tma_splitk accepts a problem with a phase fprop.accepts_splitk takes: at most
    4096 pixels and a reduction of at least 512 (taps x K/groups), not a plain 1x1 phase."""
    from tritonconv.kernels import dgrad

    def problem(K, N=1, H=8, R=3, stride=1):
        return spec.problem_from_shapes((N, 16, H, H), (K, 16, R, R), stride, R // 2)

    assert dgrad.accepts_tap_tma_splitk(problem(64))  # 9 taps x 64 = 576 >= 512
    assert not dgrad.accepts_tap_tma_splitk(problem(32))  # 288: too short to split
    assert not dgrad.accepts_tap_tma_splitk(problem(64, N=128))  # 8192 pixels: the tiles fill the GPU
    assert not dgrad.accepts_tap_tma_splitk(problem(512, R=1))  # a 1x1's phase is the plain GEMM's
    assert not dgrad.accepts_tap_tma_splitk(problem(64, stride=2))  # phases of 64 to 256


@pytest.mark.parametrize("stride,dilation,groups,launches,per_group,layout", [
    pytest.param(2, 1, 1, 1, (8, 8), "krsc", id="stride-2"),  # 4 phases, one launch
    pytest.param(3, 1, 2, 3, (8, 8), "krsc", id="stride-3-grouped"),  # 9 phases, 4 + 4 + 1
    pytest.param((2, 3), 1, 1, 2, (8, 8), "krsc", id="stride-2x3"),  # 6 phases: 4 + 2
    pytest.param((2, 3), 2, 1, 1, (8, 8), "krsc", id="stride-2x3-dilated"),  # dilation 2: only even rows, 3 phases
    # past one of the kernel's tiles (dgrad.PHASE_WEIGHT_TILE) in C/groups and K/groups: a second,
    # ragged c-block and k-block in each group; and the weight in aten's KCRS as well
    pytest.param(2, 1, 2, 1, "past-a-tile", "krsc", id="tiles-grouped"),
    pytest.param(2, 1, 2, 1, "past-a-tile", "kcrs", id="tiles-grouped-kcrs"),
])
def test_phase_weights_are_the_flipped_transposed_taps(stride, dilation, groups, launches, per_group, layout,
                                                       monkeypatch):
    """dgrad's per-phase weights, w_ab[g*C/g + c, k, t, u] = w[g*K/g + k, c, r(t), s(u)] with the
    phase's taps in reverse, four phases per launch of phase_weight_kernel, each a KRSC view of one
    buffer starting 16 bytes aligned."""
    from tritonconv import tuning
    from tritonconv.kernels import dgrad

    if per_group == "past-a-tile":
        per_group = tuple(n + 6 for n in dgrad.PHASE_WEIGHT_TILE)
    (C, K), R, S = (n * groups for n in per_group), 3, 4
    w = torch.randn(K, C // groups, R, S, dtype=torch.float16, device=DEVICE)
    if layout == "krsc":
        w = w.to(memory_format=torch.channels_last)
    pb = spec.problem_from_shapes((1, C, 13, 14), tuple(w.shape), stride, 2, dilation, groups)
    reached = [ph for ph in dgrad._phases(pb) if ph.forward is not None]
    calls = []
    real = tuning.launch_direct
    monkeypatch.setattr(tuning, "launch_direct",
                        lambda fn, grid, *a, **k: calls.append(grid) or real(fn, grid, *a, **k))
    built = dgrad._build_phase_weights(w, pb, reached)
    assert len(calls) == launches and sum(g[1] for g in calls) == len(reached)
    wg = w.view(groups, K // groups, C // groups, R, S)
    for ph, got in zip(reached, built):
        ref = wg[:, :, :, list(ph.taps_h)[::-1]][..., list(ph.taps_w)[::-1]].transpose(1, 2)
        assert got.shape == (C, K // groups, len(ph.taps_h), len(ph.taps_w))
        assert got.is_contiguous(memory_format=torch.channels_last) and got.data_ptr() % 16 == 0
        assert torch.equal(got, ref.reshape(got.shape))


# per phase reached, the forward kernel that runs it (dgrad._phase_forward): 16 channels, so
# every phase's reduction is its taps, too few for tap_tma
@pytest.mark.parametrize("kernel,stride,padding,output_padding,kernels", [
    # odd rows and columns: bias alone (no tap reaches them); the even ones a plain 1x1 conv
    pytest.param(1, 2, 0, 1, ["gemm1x1_tma"], id="1x1-stride-2"),
    # ResNet's decoder mirror: 4 phases, 4 launches
    pytest.param(3, 2, 1, 1, ["gemm1x1_tma"] + ["fprop_tap_tma"] * 3, id="3x3-stride-2"),
    pytest.param(4, (2, 3), (1, 0), (0, 2), ["fprop_tap_tma"] * 6, id="4x4-stride-2x3"),
])
def test_strided_conv_transpose2d_with_bias_through_tap_tma(kernel, stride, padding, output_padding, kernels,
                                                             launched):
    """conv_transpose2d is dgrad: one forward conv per phase of its output, bias everywhere."""
    torch.manual_seed(12)
    x = torch.randn(2, 16, 5, 4, dtype=torch.float16, device=DEVICE).to(memory_format=torch.channels_last)
    w = torch.randn(16, 8, kernel, kernel, dtype=torch.float16, device=DEVICE).to(memory_format=torch.channels_last)
    b = torch.randn(8, dtype=torch.float16, device=DEVICE)
    with router.force("tap_tma"):
        y = tritonconv.conv_transpose2d(x, w, b, stride, padding, output_padding)
    from tritonconv.kernels import dgrad

    pb = spec.conv_transpose2d_problem(x, w, b, stride, padding, output_padding, 1, 1)
    reached = sum(phase.forward is not None for phase in dgrad._phases(pb))  # the others: bias alone
    assert reached < len(dgrad._phases(pb)) if kernel == 1 else reached == len(dgrad._phases(pb))
    assert len(kernels) == reached and launched == ([_expected(k) for k in kernels] if TMA else ["dgrad"])
    ref = F.conv_transpose2d(x.double(), w.double(), b.double(), stride, padding, output_padding)
    assert y.shape == ref.shape and rel_err(y, ref) < TOL[torch.float16]


@pytest.mark.parametrize("output_padding,dilation", [(1, 2), ((0, 1), (1, 2))])
def test_conv_transpose2d_output_padding_through_tap_tma(output_padding, dilation, launched):
    """Stride 1 with output_padding (legal with dilation > 1): dx has rows and columns beyond
    P + dil*(R-1) - 2*pad, which the forward conv must still write (poisoned otherwise)."""
    torch.manual_seed(11)
    x = torch.randn(1, 16, 5, 6, dtype=torch.float16, device=DEVICE).to(memory_format=torch.channels_last)
    w = torch.randn(16, 8, 3, 3, dtype=torch.float16, device=DEVICE).to(memory_format=torch.channels_last)
    b = torch.randn(8, dtype=torch.float16, device=DEVICE)
    with router.force("tap_tma"):
        y = tritonconv.conv_transpose2d(x, w, b, 1, 0, output_padding, 1, dilation)
    assert launched == (["fprop_tap_tma"] if TMA else ["dgrad"])
    ref = F.conv_transpose2d(x.double(), w.double(), b.double(), 1, 0, output_padding, 1, dilation)
    assert y.shape == ref.shape and rel_err(y, ref) < TOL[torch.float16]


@pytest.fixture
def fake_gpu_router(monkeypatch, tmp_path):
    """The router's GPU branch, run here by pretending: a fresh choice table, a named device,
    a tuning cache of the test's own, and candidates timed by a scripted clock
    (``set_times``). Yields a dict of what happened: the timings taken and the candidate checks."""
    from tritonconv import configs as tc_configs, tuning

    monkeypatch.setenv(tuning.ENV_DIR, str(tmp_path / "tuning-cache"))
    tuning.reset_state()
    monkeypatch.setattr(router, "_choice", {})
    monkeypatch.setattr(router, "_timings", {})
    monkeypatch.setattr(router, "_on_gpu", lambda t: True)
    monkeypatch.setattr(router, "_device_name", lambda t: "Fake GPU")
    # these tests count the router's own work per call; a launch plan would skip it (on CUDA they are on)
    monkeypatch.setattr(plans, "ENABLED", False)
    # and they time three candidates (_three_candidate_problem): tap_tma's stream-K family, a fourth
    # on a small output, accepts nothing with stream-K off
    monkeypatch.setattr(tc_configs, "STREAM_K", False)
    seen = {"times": [], "timed": 0, "checks": 0}

    def bench(fn, quantiles=None):
        fn()
        seen["timed"] += 1
        return seen["times"].pop(0)

    monkeypatch.setattr(tc_configs, "capture_safe_bench", bench)
    # the router times a candidate with kernel_time (a CUDA graph where CUDA is there): script it
    # too, keeping what the router asked of it (its L2 flush a stand-in: there is no device)
    seen["asked"] = []
    monkeypatch.setattr(tc_configs, "l2_flush", lambda: "the route's flush")
    monkeypatch.setattr(tc_configs, "kernel_time",
                        lambda call, *args, **kwargs: seen["asked"].append(kwargs) or bench(call))
    real = router.routed_candidates

    def checked(*args):
        seen["checks"] += 1
        return real(*args)

    monkeypatch.setattr(router, "routed_candidates", checked)
    yield seen
    tuning.reset_state()


def _three_candidate_problem():
    """A stride-1 3x3 forward: tap_tma, implicit_tma and implicit where TMA runs (interpreter, sm_90)."""
    x = torch.randn(1, 16, 6, 6, device=DEVICE).to(memory_format=torch.channels_last)
    w = torch.randn(24, 16, 3, 3, device=DEVICE).to(memory_format=torch.channels_last)
    pb = spec.conv2d_problem(x, w, None, 1, 1, 1, 1)
    names = router.routed_candidates(router.FORWARD, "forward", pb, (x, w, None, None))
    if len(names) != 3:
        pytest.skip(f"candidates here: {names}")
    return x, w, pb, names


def test_router_times_the_candidates_once_and_reuses_the_choice(fake_gpu_router, launched):
    """Every candidate is launched and timed once, the fastest is remembered per problem and
    layout, and a later call goes straight to it (no candidate checks on the per-call path)."""
    x, w, pb, names = _three_candidate_problem()
    fake_gpu_router.update(times=[3.0, 1.0, 2.0], checks=0)  # the second candidate is the fastest
    with router.recording() as rec:
        y1 = router.forward(x, w, None, pb)
        launched.clear()
        y2 = router.forward(x, w, None, pb)
    assert rec == [("forward", names[1])] * 2 and fake_gpu_router["checks"] == 1
    assert fake_gpu_router["timed"] == 3
    # each timed as the sweeps time (configs.ROUTER_COLD), with the one flush of the route
    flush = "the route's flush" if configs.ROUTER_COLD else None
    assert fake_gpu_router["asked"] == [dict(cold=configs.ROUTER_COLD, flush=flush)] * 3
    assert len(launched) == 1 and torch.equal(y1, y2)
    assert rel_err(y2, F.conv2d(x.double(), w.double(), None, 1, 1)) < TOL[torch.float32]


def test_router_chooses_the_dgrad_apart_where_phase_weights_are_kept(fake_gpu_router):
    """Inside a cached_phase_weights block a family that copies w (tap_tma_copy) pays for the copy
    once, elsewhere every call: the router times the candidates in each case apart and keeps both
    choices, neither answering for the other."""
    from tritonconv.kernels import dgrad

    torch.manual_seed(13)
    w = torch.randn(16, 16, 3, 3, dtype=torch.float16, device=DEVICE).to(memory_format=torch.channels_last)
    pb = spec.conv2d_problem(torch.empty(1, 16, 6, 6, dtype=torch.float16, device=DEVICE), w, None, 1, 1, 1, 1)
    dy = torch.randn(pb.output_shape, dtype=torch.float16, device=DEVICE).to(memory_format=torch.channels_last)
    names = router.routed_candidates(router.INPUT_GRAD, "input_grad", pb, (dy, w, None))
    if "tap_tma_copy" not in names:
        pytest.skip(f"candidates here: {names}")

    def fastest(family):  # the scripted times of one round of candidates, ``family``'s the least
        return [1.0 if name == family else 2.0 + i for i, name in enumerate(names)]

    def call():
        return router.input_grad(dy, w, pb, memory_format=torch.channels_last)

    fake_gpu_router.update(times=fastest("tap_tma"))
    with router.recording() as rec:
        call()
        fake_gpu_router["times"] = fastest("tap_tma_copy")
        with dgrad.cached_phase_weights():
            call()
            call()
        call()
    assert [name for _, name in rec] == ["tap_tma", "tap_tma_copy", "tap_tma_copy", "tap_tma"]
    assert fake_gpu_router["timed"] == 2 * len(names)


def test_router_reports_what_each_candidate_took(fake_gpu_router, monkeypatch):
    """recording(timings=True) gives the candidates' times with the family that ran, on the call
    that timed them and on later calls in the process; a choice read from the cache has none."""
    from tritonconv import tuning

    x, w, pb, names = _three_candidate_problem()
    fake_gpu_router.update(times=[3.0, 1.0, 2.0])
    with router.recording(timings=True) as rec, router.recording() as plain:
        router.forward(x, w, None, pb)
        router.forward(x, w, None, pb)
    want = ("forward", names[1], {names[0]: 3.0, names[1]: 1.0, names[2]: 2.0})
    assert rec == [want, want] and plain == [("forward", names[1])] * 2
    rec[0][2].clear()  # each record is a copy
    with router.recording(timings=True) as again:
        router.forward(x, w, None, pb)
    assert again == [want]

    monkeypatch.setattr(router, "_choice", {})  # a new process: the choice comes from the cache
    monkeypatch.setattr(router, "_timings", {})
    tuning.reset_state()
    with router.recording(timings=True) as cached:
        router.forward(x, w, None, pb)
    assert cached == [("forward", names[1], None)]


def test_router_keeps_a_choice_timed_warm_where_cold_was_asked_in_memory_only(fake_gpu_router, monkeypatch):
    """Where the L2 flush could not be captured (configs.WARM_FALLBACKS counts it), the candidates
    were timed with their operands in L2: the choice serves this process, but is not saved for a
    later one, which times them again."""
    from tritonconv import tuning

    x, w, pb, names = _three_candidate_problem()
    timed_warm = configs.kernel_time  # the fixture's scripted timer

    def falls_back(call, *args, **kwargs):
        configs.WARM_FALLBACKS += 1
        return timed_warm(call, *args, **kwargs)

    monkeypatch.setattr(configs, "WARM_FALLBACKS", configs.WARM_FALLBACKS)
    monkeypatch.setattr(configs, "kernel_time", falls_back)
    fake_gpu_router.update(times=[3.0, 1.0, 2.0])
    with router.recording() as rec:
        router.forward(x, w, None, pb)
        router.forward(x, w, None, pb)
    assert rec == [("forward", names[1])] * 2 and fake_gpu_router["timed"] == 3
    assert not tuning.cache_path(tuning.ROUTER, "Fake GPU").exists()
    monkeypatch.setattr(router, "_choice", {})  # a new process
    monkeypatch.setattr(router, "_timings", {})
    tuning.reset_state()
    monkeypatch.setattr(configs, "kernel_time", timed_warm)
    fake_gpu_router.update(times=[1.0, 3.0, 2.0], timed=0)
    with router.recording() as rec:
        router.forward(x, w, None, pb)
    assert rec == [("forward", names[0])] and fake_gpu_router["timed"] == 3
    assert tuning.cache_path(tuning.ROUTER, "Fake GPU").exists()


def test_router_choice_survives_the_process(fake_gpu_router, launched, monkeypatch):
    """The choice is saved in the tuning cache: a 'new process' (the router's memory and the
    cache's state cleared) runs the saved family with no timing and no candidate checks."""
    from tritonconv import tuning

    x, w, pb, names = _three_candidate_problem()
    fake_gpu_router.update(times=[3.0, 2.0, 1.0], checks=0)  # the third candidate wins
    router.forward(x, w, None, pb)
    assert tuning.cache_path(tuning.ROUTER, "Fake GPU").exists()

    monkeypatch.setattr(router, "_choice", {})
    monkeypatch.setattr(router, "_timings", {})
    tuning.reset_state()
    fake_gpu_router.update(timed=0, checks=0)
    launched.clear()
    with router.recording() as rec:
        y = router.forward(x, w, None, pb)
    assert rec == [("forward", names[2])] and launched == ["fprop"]
    assert fake_gpu_router["timed"] == 0 and fake_gpu_router["checks"] == 0
    assert rel_err(y, F.conv2d(x.double(), w.double(), None, 1, 1)) < TOL[torch.float32]

    # the same problem in another layout is another key: its candidates are timed afresh
    xn = x.contiguous()
    others = router.routed_candidates(router.FORWARD, "forward", pb, (xn, w, None, None))
    assert len(others) >= 2, others  # implicit_tma and implicit (no TMA boxes of NCHW x)
    fake_gpu_router.update(times=[2.0, 1.0, 0.5][:len(others)], timed=0)
    with router.recording() as rec:
        router.forward(xn, w, None, pb)
    assert fake_gpu_router["timed"] == len(others) and rec == [("forward", others[-1])]
    assert len(tuning.load_choices("Fake GPU")) == 2


@pytest.mark.parametrize("damage", ["corrupt", "stale", "unknown_family"])
def test_router_choice_file_damaged_is_ignored_and_retimed(fake_gpu_router, launched, monkeypatch, damage):
    """A corrupt or stale router file warns and the problem is timed again (never a crash); an
    entry naming a family the router no longer has is skipped."""
    import json

    from tritonconv import tuning

    x, w, pb, names = _three_candidate_problem()
    fake_gpu_router["times"] = [3.0, 2.0, 1.0]
    router.forward(x, w, None, pb)
    path = tuning.cache_path(tuning.ROUTER, "Fake GPU")
    data = json.loads(path.read_text())
    if damage == "corrupt":
        path.write_text("{not json")
    elif damage == "stale":
        data["signature"] = "0" * 32
        path.write_text(json.dumps(data))
    else:
        data["entries"][0]["family"] = "retired_family"
        path.write_text(json.dumps(data))

    monkeypatch.setattr(router, "_choice", {})
    monkeypatch.setattr(router, "_timings", {})
    tuning.reset_state()
    fake_gpu_router.update(times=[1.0, 2.0, 3.0], timed=0)
    with pytest.warns(tuning.StaleCacheWarning) if damage != "unknown_family" else contextlib.nullcontext():
        with router.recording() as rec:
            y = router.forward(x, w, None, pb)
    assert fake_gpu_router["timed"] == 3 and rec == [("forward", names[0])]
    assert rel_err(y, F.conv2d(x.double(), w.double(), None, 1, 1)) < TOL[torch.float32]
    assert tuning.load_choices("Fake GPU")  # the retimed choice replaced the damaged file


def test_router_choice_file_bad_entries_are_skipped_not_the_file(fake_gpu_router, launched, monkeypatch):
    """Entries this code could not have written (wrong shapes or types) are skipped one by one;
    the file's good choice still holds, with no warning and no timing."""
    import json
    import warnings

    from tritonconv import tuning

    x, w, pb, names = _three_candidate_problem()
    fake_gpu_router["times"] = [3.0, 2.0, 1.0]
    router.forward(x, w, None, pb)
    path = tuning.cache_path(tuning.ROUTER, "Fake GPU")
    data = json.loads(path.read_text())
    good = data["entries"][0]
    data["entries"] = [
        {"key": ["forward", [1, 2], good["key"][2], "none"], "family": "implicit"},  # too few fields
        {"key": ["forward", [True] * 16, good["key"][2], "none"], "family": "implicit"},  # bools
        {"key": ["forward", good["key"][1]], "family": "implicit"},  # too short
        {"key": good["key"], "family": 3},  # not a name
        {"key": [{"a": 1}], "family": "implicit"},  # not a key
        good,
    ]
    path.write_text(json.dumps(data))

    monkeypatch.setattr(router, "_choice", {})
    monkeypatch.setattr(router, "_timings", {})
    tuning.reset_state()
    fake_gpu_router.update(timed=0, checks=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", tuning.StaleCacheWarning)
        with router.recording() as rec:
            router.forward(x, w, None, pb)
    assert rec == [("forward", names[2])] and fake_gpu_router["timed"] == 0


@st.composite
def conv_problems_with_tma_rows(draw):
    """(N, C, H, W, K, R, S, stride, padding, dilation, groups): strides that do and do not divide
    the image, channel counts with and without 16-byte rows (the TMA families' condition),
    depthwise (C/groups = 1), paddings up to past the kernel's reach."""
    groups = draw(st.sampled_from([1, 1, 2, 3]))
    Cg, Kg = draw(st.sampled_from([1, 3, 8, 16, 16, 24])), draw(st.sampled_from([2, 8, 16, 16]))
    R, S = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    dilation = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    padding = (draw(st.integers(0, dilation[0] * (R - 1) + 1)), draw(st.integers(0, dilation[1] * (S - 1) + 1)))
    H = max(1, dilation[0] * (R - 1) + 1 - 2 * padding[0]) + draw(st.integers(0, 7))
    W = max(1, dilation[1] * (S - 1) + 1 - 2 * padding[1]) + draw(st.integers(0, 7))
    if draw(st.booleans()):  # the stride divides the image: x has a phase view
        H, W = -(-H // stride[0]) * stride[0], -(-W // stride[1]) * stride[1]
    return draw(st.integers(1, 2)), Cg * groups, H, W, Kg * groups, R, S, stride, padding, dilation, groups


@property_settings(40, suppress_health_check=[HealthCheck.too_slow])
@given(
    problem=conv_problems_with_tma_rows(),
    dtype=st.sampled_from([torch.float16, torch.float32, torch.bfloat16]),
    channels_last=st.booleans(),
    family=st.sampled_from([None, *sorted(set(router.FORWARD) | set(router.INPUT_GRAD) | set(router.WEIGHT_GRAD))]),
    seed=st.integers(0, 2**31 - 1),
)
def test_property_families_forward_and_backward(problem, dtype, channels_last, family, seed):
    """Forward, dgrad and wgrad on random problems, routed or forced onto a family (which runs
    the problems it accepts in the layouts it takes, and hands the rest on), against float64
    autograd. ``hypothesis --hypothesis-show-statistics`` lists the kernels that ran."""
    from tritonconv import tuning

    N, C, H, W, K, R, S, stride, padding, dilation, groups = problem
    torch.manual_seed(seed)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(N, C, H, W, dtype=dtype, device=DEVICE).to(memory_format=fmt)
    w = torch.randn(K, C // groups, R, S, dtype=dtype, device=DEVICE).to(memory_format=fmt)
    args = (stride, padding, dilation, groups)
    pb = spec.conv2d_problem(x, w, None, *args)
    dy = torch.randn(pb.output_shape, dtype=dtype, device=DEVICE).to(memory_format=fmt)
    ran = []
    real = tuning.launch
    with pytest.MonkeyPatch.context() as mp, router.force(family):
        mp.setattr(tuning, "launch", lambda tuner, name, *a, **k: ran.append(name) or real(tuner, name, *a, **k))
        y = router.forward(x, w, None, pb)
        dx = router.input_grad(dy, w, pb, memory_format=fmt)
        dw = router.weight_grad(dy, x, pb, memory_format=fmt)
    for name in ran:
        event(f"kernel {name}")
    xr, wr = x.double().requires_grad_(), w.double().requires_grad_()
    ref = F.conv2d(xr, wr, None, *args)
    ref.backward(dy.double())
    assert rel_err(y, ref) < TOL[dtype]
    assert rel_err(dx, xr.grad) < TOL[dtype] and rel_err(dw, wr.grad) < TOL[dtype]


def _pin_gemm1x1_tma(monkeypatch, variant: str, **grid) -> None:
    """gemm1x1_tma's autotuner holding only one config with the meta-parameter ``variant``
    ("STREAM_K" or "FLATTEN") on: the interpreter's tile, or the smallest compiled tile of that
    kind; ``grid`` sets the other grid meta-parameters (PERSISTENT)."""
    from tritonconv.kernels import gemm1x1

    if INTERPRETER:
        (base,) = configs.persistent_gemm_configs(interpreter=True, stream_k=True, flatten=True)
    else:
        base = [c for c in configs.persistent_gemm_configs(interpreter=False, stream_k=True, flatten=True)
                if c.kwargs[variant]][-1]
    cfg = triton.Config({**base.kwargs, **grid, variant: True}, num_warps=base.num_warps,
                        num_stages=base.num_stages, pre_hook=gemm1x1._set_tma_blocks)
    monkeypatch.setattr(gemm1x1._gemm1x1_tma_tuned, "configs", [cfg])
    monkeypatch.setattr(gemm1x1._gemm1x1_tma_tuned, "cache", {})


@pytest.mark.parametrize("variant,grid", [("STREAM_K", dict(PERSISTENT=False)), ("FLATTEN", dict(PERSISTENT=True))])
@pytest.mark.parametrize("residual_layout", ["channels_last", "nchw"])
def test_gemm1x1_tma_grids_store_flat_and_divided_rows(variant, grid, residual_layout, monkeypatch, launched):
    """gemm1x1_tma's stream-K and persistent grids share the plain grid's epilogue: flat pixel
    rows with a channels_last residual, rows divided by W and H*W with an NCHW one; both right."""
    _pin_gemm1x1_tma(monkeypatch, variant, **grid)
    torch.manual_seed(6)
    x = torch.randn(2, 64, 7, 7, device=DEVICE).half().to(memory_format=torch.channels_last)
    w = (torch.randn(48, 64, 1, 1, device=DEVICE) / 8).half().to(memory_format=torch.channels_last)
    b = torch.randn(48, device=DEVICE).half()
    residual = torch.randn(2, 48, 7, 7, device=DEVICE).half()
    if residual_layout == "channels_last":
        residual = residual.to(memory_format=torch.channels_last)
    with router.force("gemm1x1_tma"), plans.enabled_as(False):
        y = tritonconv.conv2d(x, w, b, activation="relu", residual=residual)
    assert launched == [_expected("gemm1x1_tma")]
    ref = F.relu(F.conv2d(x.double(), w.double(), b.double()) + residual.double())
    assert rel_err(y, ref) < TOL[torch.float16]


@pytest.fixture
def gemm1x1_stream_k(monkeypatch):
    """gemm1x1_tma's autotuner holding only a stream-K config, and a way to set the
    interpreter's program count."""
    from tritonconv.kernels import gemm1x1

    _pin_gemm1x1_tma(monkeypatch, "STREAM_K", PERSISTENT=False)
    return lambda programs: monkeypatch.setattr(_common, "INTERPRETER_PROGRAMS", programs)


@pytest.mark.parametrize("programs", [1, 3, 5, 16, 64])
@pytest.mark.parametrize("problem", [
    (2, 64, 7, 7, 48, 1, 1, 1, 0, 1, 1),  # 4 tiles of 4 steps (interpreter tiles): cuts inside tiles
    (1, 96, 5, 6, 40, 1, 1, 1, 0, 1, 1),  # 2 tiles of 6 steps, a ragged last tile
    (2, 64, 4, 4, 64, 1, 1, 1, 0, 1, 2),  # grouped: a tile grid per group
])
def test_gemm1x1_tma_stream_k(problem, programs, gemm1x1_stream_k, launched):
    """Stream-K: programs share out every (tile, reduction step) pair, so a tile may be summed
    by several programs; its finisher adds their partial tiles in program order. The result
    must match float64, repeat bit for bit, and leave the flags down for the next launch.
    (Under the interpreter the program count is set here; on a GPU it is the SM count.)"""
    from tritonconv.kernels import gemm1x1

    gemm1x1_stream_k(programs)
    N, C, H, W, K, R, S, stride, padding, dilation, groups = problem
    torch.manual_seed(programs)
    x = torch.randn(N, C, H, W, device=DEVICE).half().to(memory_format=torch.channels_last)
    w = (torch.randn(K, C // groups, 1, 1, device=DEVICE) / C ** 0.5).half().to(memory_format=torch.channels_last)
    b = torch.randn(K, device=DEVICE).half()
    args = ([1, 1], [0, 0], [1, 1], groups)
    with router.force("gemm1x1_tma"), plans.enabled_as(False):
        first = torch.ops.tritonconv.conv2d(x, w, b, *args)
        again = torch.ops.tritonconv.conv2d(x, w, b, *args)
    assert launched == ["gemm1x1_tma"] * 2
    assert rel_err(first, F.conv2d(x.double(), w.double(), b.double(), 1, 0, 1, groups)) < TOL[torch.float16]
    assert torch.equal(first, again)
    assert not any(int(f.abs().sum()) for f in _common._flag_buffers.values()), "flags left raised"
    # a launch plan replays it: the scratch is allocated afresh, the flags fetched per call
    plans.clear()
    with router.force("gemm1x1_tma"), plans.enabled_as(True):
        torch.ops.tritonconv.conv2d(x, w, b, *args)
        replayed = torch.ops.tritonconv.conv2d(x, w, b, *args)
    assert launched == ["gemm1x1_tma"] * 3, "the second call should have replayed the plan"
    assert torch.equal(replayed, first)
    assert not any(int(f.abs().sum()) for f in _common._flag_buffers.values()), "flags left raised"
    plans.clear()


@pytest.fixture
def tap_tma_stream_k(monkeypatch):
    """Stream-K on (whatever TRITONCONV_STREAM_K says), and a way to set the interpreter's program
    count for the stream-K grids; on a GPU the count is the SMs, so only the first value runs."""
    monkeypatch.setattr(configs, "STREAM_K", True)

    def programs(count):
        if DEVICE == "cuda" and count != 1:
            pytest.skip("on a GPU the program count is the SM count: one run covers it")
        monkeypatch.setattr(_common, "INTERPRETER_PROGRAMS", count)

    return programs


@pytest.mark.parametrize("programs", [1, 3, 5, 16, 64])
@pytest.mark.parametrize("problem", [
    (2, 32, 6, 6, 24, 3, 3, 1, 1, 1, 1),  # 18 steps (9 taps x 2 channel blocks) per tile, cut inside tiles
    (1, 64, 8, 8, 32, 3, 3, 2, 1, 1, 2),  # stride 2 (x's phase view), grouped: a tile grid per group
    (2, 24, 5, 7, 40, 3, 3, 1, 1, 1, 1),  # 24 channels: the second block of each tap half past them; K past a tile
])
def test_tap_tma_stream_k(problem, programs, tap_tma_stream_k, launched):
    """tap_tma on a stream-K grid: every (tile, step) pair shared out, a tile cut between programs
    summed by its finisher in program order, through the fused epilogue. It must match float64,
    repeat bit for bit, leave the flags down, and replay from a launch plan."""
    tap_tma_stream_k(programs)
    N, C, H, W, K, R, S, stride, padding, dilation, groups = problem
    torch.manual_seed(programs)
    x = torch.randn(N, C, H, W, device=DEVICE).half().to(memory_format=torch.channels_last)
    w = (torch.randn(K, C // groups, R, S, device=DEVICE) / (C * R * S) ** 0.5).half().to(
        memory_format=torch.channels_last)
    b = torch.randn(K, device=DEVICE).half()
    args = (stride, padding, dilation, groups)
    pb = spec.conv2d_problem(x, w, b, *args)
    r = torch.randn(pb.output_shape, device=DEVICE).half().to(memory_format=torch.channels_last)
    assert fprop.accepts_tap_tma_streamk(pb)

    def call():
        return tritonconv.conv2d(x, w, b, *args, activation="silu", residual=r)

    with router.force("tap_tma_streamk"), plans.enabled_as(False):
        first, again = call(), call()
    assert launched == ["fprop_tap_tma_streamk"] * 2
    ref = F.silu(F.conv2d(x.double(), w.double(), b.double(), *args) + r.double())
    assert rel_err(first, ref) < TOL[torch.float16]
    assert torch.equal(first, again)
    assert not any(int(f.abs().sum()) for f in _common._flag_buffers.values()), "flags left raised"
    plans.clear()
    with router.force("tap_tma_streamk"), plans.enabled_as(True):
        call()
        replayed = call()
    assert launched == ["fprop_tap_tma_streamk"] * 3, "the second call should have replayed the plan"
    assert torch.equal(replayed, first)
    assert not any(int(f.abs().sum()) for f in _common._flag_buffers.values()), "flags left raised"
    plans.clear()


@triton.jit
def _stream_k_schedule_kernel(out_ptr, total, steps, MAX_SEGMENTS: tl.constexpr):
    """Each program's stream-K segments, (tile, k_lo, k_hi) in the order the kernels walk them
    (_common.stream_k_share and stream_k_step, in the loop gemm1x1_tma's and tap_tma's kernels
    have: a copy of it, so this checks the helpers, not those loops), the first MAX_SEGMENTS."""
    pid = tl.program_id(0)
    it, end = _common.stream_k_share(pid, total)
    i = 0
    while it < end:
        tile, k_lo, k_hi = _common.stream_k_step(it, end, steps)
        slot = out_ptr + (pid * MAX_SEGMENTS + i) * 3
        kept = i < MAX_SEGMENTS
        tl.store(slot, tile, mask=kept)
        tl.store(slot + 1, k_lo, mask=kept)
        tl.store(slot + 2, k_hi, mask=kept)
        end -= k_hi - k_lo
        i += 1


@pytest.mark.parametrize("tiles, steps, programs", [
    (98, 36, 132),  # ResNet-50's layer3.1.conv2 at 128x128 tiles on an H100: cuts in most tiles
    (64, 72, 132),  # layer4.1.conv2: every tile cut between two or three programs
    (7, 5, 3), (4, 4, 16), (1, 9, 4), (10, 3, 10), (5, 7, 1),
])
def test_stream_k_schedule_never_waits_in_series(tiles, steps, programs):
    """The order of a stream-K program's work: the partial tile it hands off comes first and the
    tile it finishes (waiting for the others' partials) last, so no program waits for one that is
    still waiting itself. With shares walked forwards, each program's first tile waited for the
    previous program's last: on an H100 (aebf6ce) the shares then ran one after another, 8-17x
    slower. Also: every (tile, step) pair is done once, each program hands off at most once, and
    the programs a finisher waits for (stream_k_gather's range) are the ones that hand its tile off."""
    total = tiles * steps
    most = 2 + -(-total // programs) // steps + 1  # segments a share can touch
    out = torch.full((programs, most, 3), -1, dtype=torch.int32, device=DEVICE)
    _stream_k_schedule_kernel[(programs,)](out, total, steps, MAX_SEGMENTS=most)
    done = torch.zeros(tiles, steps, dtype=torch.int32)
    handed = {}  # tile -> the programs handing off a partial of it
    for pid, segments in enumerate(out.cpu().tolist()):
        segments = [tuple(seg) for seg in segments if seg[0] >= 0]
        for i, (tile, k_lo, k_hi) in enumerate(segments):
            assert 0 <= k_lo < k_hi <= steps
            done[tile, k_lo:k_hi] += 1
            if k_hi < steps:  # a hand-off: the program's first piece of work, before any wait
                assert i == 0, f"program {pid} hands off tile {tile} after other work: {segments}"
                handed.setdefault(tile, []).append(pid)
            elif k_lo > 0:  # a finisher that waits: the program's last piece of work
                assert i == len(segments) - 1, f"program {pid} waits for tile {tile} before its other work"
                start = tile * steps
                first = ((start + 1) * programs + total - 1) // total - 1  # as stream_k_gather computes it
                assert sorted(handed.get(tile, [])) == list(range(first, pid))
    assert torch.equal(done, torch.ones_like(done)), "a (tile, step) pair done twice or never"


@triton.jit
def _carried_steps_kernel(out_ptr, R, S, CG, dil_h, pad_h, stride_h, dil_w, pad_w, stride_w, start, steps,
                          P, Q, tiles_h, tiles_w, BLOCK_K: tl.constexpr,
                          BOX_N: tl.constexpr, BOX_H: tl.constexpr, BOX_W: tl.constexpr, STEP: tl.constexpr):
    """Three walks, each carried as the kernels carry it and decoded beside it, from step ``start``:
    the tap-TMA reduction's steps (tap, channel block and the phase view's (shift, phase) of the
    tap's row and column: _common.next_tap_step and tap_phase_next, as in fprop._tap_tma_acc), the
    spatial boxes (_common.next_box, wgrad_tap_tma_kernel's) and STEP-pixel steps
    (_common.unravel3_next, wgrad_kernel's). Row i of each walk: carried values, then decoded."""
    # -- 1: reduction steps, (rs, c0, shift_h, phase_h, shift_w, phase_w)
    c_blocks = tl.cdiv(CG, BLOCK_K)
    rs = start // c_blocks
    c0 = (start - rs * c_blocks) * BLOCK_K
    r = rs // S
    s = rs - r * S
    shift_h, phase_h = _common.tap_phase(r, dil_h, pad_h, stride_h)
    shift_w, phase_w = _common.tap_phase(s, dil_w, pad_w, stride_w)
    row_shift_w, row_phase_w = _common.tap_phase(0, dil_w, pad_w, stride_w)
    dil_qh, dil_rh = dil_h // stride_h, dil_h % stride_h
    dil_qw, dil_rw = dil_w // stride_w, dil_w % stride_w
    for it in range(start, steps):
        want_rs = it // c_blocks
        want_h, want_ph = _common.tap_phase(want_rs // S, dil_h, pad_h, stride_h)
        want_w, want_pw = _common.tap_phase(want_rs % S, dil_w, pad_w, stride_w)
        row = out_ptr + 12 * (it - start)
        tl.store(row + 0, rs)
        tl.store(row + 1, c0)
        tl.store(row + 2, shift_h)
        tl.store(row + 3, phase_h)
        tl.store(row + 4, shift_w)
        tl.store(row + 5, phase_w)
        tl.store(row + 6, want_rs)
        tl.store(row + 7, (it - want_rs * c_blocks) * BLOCK_K)
        tl.store(row + 8, want_h)
        tl.store(row + 9, want_ph)
        tl.store(row + 10, want_w)
        tl.store(row + 11, want_pw)
        c0, rs, r, s, next_tap, next_row = _common.next_tap_step(c0, rs, r, s, CG, S, BLOCK_K)
        shift_w, phase_w = _common.tap_phase_next(shift_w, phase_w, dil_qw, dil_rw, stride_w, next_tap)
        shift_w = tl.where(next_row, row_shift_w, shift_w)
        phase_w = tl.where(next_row, row_phase_w, phase_w)
        shift_h, phase_h = _common.tap_phase_next(shift_h, phase_h, dil_qh, dil_rh, stride_h, next_row)
    # -- 2: boxes start, start + 1, ... (as many as steps - start), (n0, p0, q0)
    boxes = out_ptr + 12 * (steps - start)
    n0 = (start // (tiles_h * tiles_w)) * BOX_N
    p0 = ((start // tiles_w) % tiles_h) * BOX_H
    q0 = (start % tiles_w) * BOX_W
    for t in range(start, steps):
        row = boxes + 6 * (t - start)
        tl.store(row, n0)
        tl.store(row + 1, p0)
        tl.store(row + 2, q0)
        tl.store(row + 3, (t // (tiles_h * tiles_w)) * BOX_N)
        tl.store(row + 4, ((t // tiles_w) % tiles_h) * BOX_H)
        tl.store(row + 5, (t % tiles_w) * BOX_W)
        n0, p0, q0 = _common.next_box(n0, p0, q0, P, Q, BOX_N, BOX_H, BOX_W)
    # -- 3: STEP pixels a step from pixel ``start``, (n, p, q) of each
    pixels = boxes + 6 * (steps - start)
    offs = tl.arange(0, STEP)
    n, p, q = _common.unravel3(start + offs, P, Q)
    step_n, step_p, step_q = _common.unravel3(STEP, P, Q)
    for i in range(0, steps - start):
        want_n, want_p, want_q = _common.unravel3(start + i * STEP + offs, P, Q)
        row = pixels + i * 6 * STEP + offs
        tl.store(row, n)
        tl.store(row + STEP, p)
        tl.store(row + 2 * STEP, q)
        tl.store(row + 3 * STEP, want_n)
        tl.store(row + 4 * STEP, want_p)
        tl.store(row + 5 * STEP, want_q)
        n, p, q = _common.unravel3_next(n, p, q, step_n, step_p, step_q, P, Q)


# Each case: a kernel (R, S), channels per group against BLOCK_K = 16, the rows' and the columns'
# (dilation, padding, stride), the step the walks start at, an output (P, Q) and its box
CARRIED_STEPS = [
    pytest.param((3, 3), 48, (1, 1, 1), (1, 1, 1), 0, (7, 7), (2, 8, 8), id="3x3-three-blocks"),
    pytest.param((3, 3), 40, (3, 3, 2), (1, 0, 2), 5, (9, 10), (1, 8, 8), id="dilation-past-stride-mid-tap"),
    pytest.param((5, 4), 24, (2, 2, 2), (5, 4, 2), 7, (3, 3), (4, 4, 4), id="uneven-blocks"),
    pytest.param((3, 5), 16, (1, 2, 3), (2, 1, 3), 2, (2, 3), (4, 2, 8), id="stride-3"),
    pytest.param((7, 7), 8, (7, 0, 3), (4, -3, 1), 11, (14, 14), (1, 1, 8), id="negative-padding"),
    pytest.param((3, 3), 33, (2, 1, 1), (1, 1, 2), 4, (12, 13), (2, 8, 8), id="33-channels"),
]


@pytest.mark.parametrize("taps, CG, rows, cols, start, out, box", CARRIED_STEPS)
def test_carried_steps_match_decoded_steps(taps, CG, rows, cols, start, out, box):
    """The loops decode their first step's tap, channel block, box or pixels and carry the rest from
    step to step (the divisions that saved were a third of a tap-TMA step's instructions): every
    carried step must be the one decoding gives, from a start inside a tap (split-K's and stream-K's
    chunks), with several channel blocks per tap and a last one short of BLOCK_K, dilations past the
    stride (the phase carrying into the shift), negative padding (dgrad's forward convs), boxes past
    an image's edge or over several images, and 16-pixel steps longer or shorter than a row or an image."""
    (R, S), (P, Q), (bn, bh, bw), step = taps, out, box, 16
    steps = R * S * -(-CG // 16)
    tiles_h, tiles_w = -(-P // bh), -(-Q // bw)
    n = steps - start
    buf = torch.full((12 * n + 6 * n + 6 * n * step,), -99, dtype=torch.int32, device=DEVICE)
    _carried_steps_kernel[(1,)](buf, R, S, CG, *rows, *cols, start, steps, P, Q, tiles_h, tiles_w,
                                BLOCK_K=16, BOX_N=bn, BOX_H=bh, BOX_W=bw, STEP=step)
    got = buf.cpu()
    walk = got[:12 * n].view(n, 2, 6)
    assert torch.equal(walk[:, 0], walk[:, 1]), walk
    assert walk[-1, 1, 0] == R * S - 1  # to the last tap
    assert bool((walk[:, 1, 1] > 0).any()) == (CG > 16)  # and channel blocks past the first where a tap has them
    dil_h, pad_h, stride_h = rows
    assert [divmod(int(rs) // S * dil_h - pad_h, stride_h) for rs in walk[:, 1, 0]] == \
        [(int(v[2]), int(v[3])) for v in walk[:, 1]]  # the decoded reference is tap_phase's floor division
    boxes = got[12 * n:18 * n].view(n, 2, 3)
    assert torch.equal(boxes[:, 0], boxes[:, 1]), boxes
    pixels = got[18 * n:].view(n, 2, 3, step)
    assert torch.equal(pixels[:, 0], pixels[:, 1]), pixels
    assert pixels[-1, 0, 0, -1] >= 2  # the carried walk crossed into a third image


def test_tap_tma_stream_k_is_for_small_outputs(monkeypatch):
    """The stream-K grid is a candidate where tiles are few (ResNet-50's layer3 and layer4 3x3s at
    batch 32), not for large outputs, which fill the SMs with tiles; a 1x1 has the plain GEMMs."""
    monkeypatch.setattr(configs, "STREAM_K", True)

    def problem(N, C, HW, K, R, stride=1):
        x = torch.empty(N, C, HW, HW, device="meta")
        return spec.conv2d_problem(x, torch.empty(K, C, R, R, device="meta"), None, stride, R // 2)

    assert fprop.accepts_tap_tma_streamk(problem(32, 512, 7, 512, 3))  # layer4.1.conv2: 1568 pixels
    assert fprop.accepts_tap_tma_streamk(problem(32, 256, 28, 256, 3, 2))  # layer3.0.conv2: 6272
    assert not fprop.accepts_tap_tma_streamk(problem(32, 64, 56, 64, 3))  # layer1: 100352
    assert "tap_tma_streamk" in router.SUPERSEDES["gemm1x1_tma"]


def test_stream_k_configs_can_be_left_out():
    """TRITONCONV_STREAM_K=0 (the GPU check's fallback if stream-K misbehaves on a card) removes the
    stream-K configs and tap_tma's stream-K family; by default gemm1x1_tma's compiled list has them,
    and the family takes a small 3x3."""
    import os
    import subprocess
    import sys

    listed = configs.persistent_gemm_configs(interpreter=False, stream_k=True)
    assert sum(bool(c.kwargs["STREAM_K"]) for c in listed) == len(configs.STREAM_K_TILES)
    code = ("from tritonconv import configs, spec; from tritonconv.kernels import fprop; "
            "print(sum(bool(c.kwargs['STREAM_K']) for c in "
            "configs.persistent_gemm_configs(interpreter=False, stream_k=True)), "
            "fprop.accepts_tap_tma_streamk(spec.problem_from_shapes((1, 16, 8, 8), (16, 16, 3, 3), 1, 1)))")
    for flag, want in (("0", "0 False"), ("1", f"{len(configs.STREAM_K_TILES)} True")):
        env = {**os.environ, "TRITONCONV_STREAM_K": flag, "TRITON_INTERPRET": "1"}
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == want


def test_gemm1x1_tma_flattened_persistent_loop(monkeypatch, launched):
    """The persistent grid with its tile loop flattened (FLATTEN: the pipeliner overlaps the next
    tile's loads with this tile's epilogue on a GPU; the interpreter runs the same loop)."""
    from tritonconv.kernels import gemm1x1

    _pin_gemm1x1_tma(monkeypatch, "FLATTEN", PERSISTENT=True)
    monkeypatch.setattr(_common, "INTERPRETER_PROGRAMS", 3)
    torch.manual_seed(4)
    x = torch.randn(2, 32, 9, 9, device=DEVICE).half().to(memory_format=torch.channels_last)
    w = (torch.randn(72, 32, 1, 1, device=DEVICE) / 32 ** 0.5).half().to(memory_format=torch.channels_last)
    with router.force("gemm1x1_tma"), plans.enabled_as(False):
        y = torch.ops.tritonconv.conv2d(x, w, None, [1, 1], [0, 0], [1, 1], 1)
    assert launched == ["gemm1x1_tma"]
    assert rel_err(y, F.conv2d(x.double(), w.double())) < TOL[torch.float16]


# Offsets past int32 from strides that fit it: a batch stride of 2**30 + 64 elements (an int32
# argument, which Triton does not widen) puts image 2 past 2**31, where n * stride wraps unless
# the kernel widens n first (the interpreter wraps int32 as a GPU does). The storage is 4 GiB of
# fp16 that nothing touches but the three images (torch.empty maps it, the OS backs what is
# written). Inputs (and a fused residual) only: an output as large would take the interpreter
# hours to compute.
_WIDE_BATCH_STRIDE = 2**30 + 64
_WIDE_PROBLEMS = [  # (C, K, kernel size, stride, padding, groups)
    (8, 16, 3, 1, 1, 1), (8, 16, 1, 1, 0, 1), (8, 16, 3, 2, 1, 1), (8, 16, 1, 2, 0, 1), (8, 8, 3, 1, 1, 8),
    (8, 16, 3, 1, 1, 2),
]
# what must have run among the families forced: every kernel that takes a strided input
# by pointer (the TMA kernels want NHWC-contiguous input, and hand such views on)
_WIDE_KERNELS = {
    "forward": {"fprop", "fprop_tma", "depthwise_fprop", "smallc", "smallc_pad", "smallc_rows_k16", "gemm1x1"},
    "grad_input": {"dgrad", "gemm1x1_dgrad", "depthwise_dgrad"},
    "grad_weight": {"wgrad", "depthwise_wgrad", "smallc_wgrad"},
}


@pytest.mark.parametrize("direction", list(_WIDE_KERNELS))
@pytest.mark.parametrize("channels_last", [True, False], ids=["nhwc", "nchw"])
def test_batch_stride_past_int32_on_every_family(direction, channels_last, launched):
    N, H, W = 3, 6, 6
    store = torch.empty(2 * _WIDE_BATCH_STRIDE + 2 * 16 * H * W, dtype=torch.float16, device=DEVICE)

    def view(C, P, Q, offset):  # (N, C, P, Q) at ``offset`` in each image's slot of the storage
        strides = (_WIDE_BATCH_STRIDE, 1, Q * C, C) if channels_last else (_WIDE_BATCH_STRIDE, P * Q, Q, 1)
        t = store.as_strided((N, C, P, Q), strides, offset)
        t.copy_(torch.randn(N, C, P, Q, device=DEVICE, dtype=torch.float16))
        return t

    table = {"forward": router.FORWARD, "grad_input": router.INPUT_GRAD, "grad_weight": router.WEIGHT_GRAD}[direction]
    for C, K, ks, stride, pad, groups in _WIDE_PROBLEMS:
        x = view(C, H, W, 0)
        w = torch.randn(K, C // groups, ks, ks, device=DEVICE, dtype=torch.float16) / (C // groups * ks * ks) ** 0.5
        args = ([stride] * 2, [pad] * 2, [1, 1], groups)
        x64, w64 = x.double().requires_grad_(), w.double().requires_grad_()
        ref = F.conv2d(x64, w64, None, *args)
        dy = view(K, ref.shape[2], ref.shape[3], 16 * H * W)  # the second half of each image's slot
        ref_dx, ref_dw = torch.autograd.grad(ref, (x64, w64), dy.double())
        problem = spec.conv2d_problem(x, w, None, *args)
        for family in router.candidates(table, problem):
            with router.force(family):
                if direction == "forward":
                    out, expected = torch.ops.tritonconv.conv2d(x, w, None, *args), ref
                    # a residual with the same batch stride: the fused epilogue's loads
                    fused = torch.ops.tritonconv.conv2d_fused(x, w, None, *args, "none", 0.0, dy)
                    assert rel_err(fused, ref + dy.double()) < TOL[torch.float16], (family, C, K, ks, stride, groups)
                elif direction == "grad_input":
                    out, expected = torch.ops.tritonconv.conv2d_grad_input(dy, w, list(x.shape), *args), ref_dx
                else:
                    out, expected = torch.ops.tritonconv.conv2d_grad_weight(dy, x, list(w.shape), *args), ref_dw
            assert rel_err(out, expected) < TOL[torch.float16], (family, C, K, ks, stride, groups)
    assert _WIDE_KERNELS[direction] <= set(launched), sorted(set(launched))


def _pin_tap_tma_tiles(monkeypatch, **extra) -> None:
    """The tap-TMA forward (plain and stream-K) and phased dgrad autotuners holding one config
    each, their first listed (the interpreter's tile on CPU) with ``extra`` meta-parameters set
    (and none of the forms an earlier pin in the test set)."""
    from tritonconv.kernels import dgrad

    for tuner in (fprop._fprop_tap_tma_tuned, fprop._fprop_tap_tma_streamk_tuned, dgrad._dgrad_phased_tuned):
        base = tuner.configs[0]
        kwargs = {k: v for k, v in base.kwargs.items() if k not in ("SYNC_MMA", "TRANSPOSED", "ROTATE")}
        pinned = triton.Config({**kwargs, **extra}, num_warps=base.num_warps, num_stages=base.num_stages,
                               pre_hook=base.pre_hook)
        monkeypatch.setattr(tuner, "configs", [pinned])
        monkeypatch.setattr(tuner, "cache", {})


# (family forced, direction, problem (N, C, H, W, K, R, S, stride, padding, dilation, groups), kernels launched)
_TRANSPOSED_CASES = [
    ("tap_tma", "forward", (2, 32, 6, 6, 24, 3, 3, 1, 1, 1, 1), ["fprop_tap_tma"]),
    ("tap_tma", "forward", (1, 48, 8, 8, 32, 3, 3, 2, 1, 1, 2), ["fprop_tap_tma"]),  # stride 2, grouped
    ("tap_tma", "forward", (2, 24, 5, 7, 40, 3, 3, 1, 1, 1, 1), ["fprop_tap_tma"]),  # channels BLOCK_K does not divide
    ("tap_tma_splitk", "forward", (1, 64, 4, 4, 32, 3, 3, 1, 1, 1, 1), ["fprop_tap_tma"]),
    ("tap_tma_streamk", "forward", (2, 32, 6, 6, 24, 3, 3, 1, 1, 1, 1), ["fprop_tap_tma_streamk"]),
    ("tap_tma", "grad_input", (2, 24, 6, 6, 32, 3, 3, 1, 1, 1, 1), ["fprop_tap_tma"]),  # the flipped weight in place
    ("tap_tma_phased", "grad_input", (1, 16, 8, 8, 24, 3, 3, 2, 1, 1, 1), ["dgrad_phased"]),
]


def _pinned_tap_tma_case(family, direction, problem, kernels, launched, monkeypatch, dtype=torch.float16,
                         **extra):
    """The tap-TMA launchers' tiles pinned with ``extra`` (``_pin_tap_tma_tiles``), ``family``
    forced: two calls' results (launch plans off) and float64's, with a fused epilogue in the
    forward; the launched kernels checked."""
    monkeypatch.setattr(configs, "STREAM_K", True)
    _pin_tap_tma_tiles(monkeypatch, **extra)
    N, C, H, W, K, R, S, stride, padding, dilation, groups = problem
    gen = torch.Generator(device=DEVICE).manual_seed(11)
    x = torch.randn(N, C, H, W, device=DEVICE, generator=gen).to(dtype).to(memory_format=torch.channels_last)
    w = (torch.randn(K, C // groups, R, S, device=DEVICE, generator=gen) / (C // groups * R * S) ** 0.5).to(
        dtype).to(memory_format=torch.channels_last)
    args = ([stride] * 2, [padding] * 2, [dilation] * 2, groups)
    ref = F.conv2d(x.double(), w.double(), None, *args)
    if direction == "forward":
        b = torch.randn(K, device=DEVICE, generator=gen).to(dtype)
        r = torch.randn(ref.shape, device=DEVICE, generator=gen).to(dtype).to(memory_format=torch.channels_last)

        def call():
            return tritonconv.conv2d(x, w, b, *args, activation="relu", residual=r)

        expected = F.relu(ref + b.double()[:, None, None] + r.double())
    else:
        dy = torch.randn(ref.shape, device=DEVICE, generator=gen).to(dtype).to(memory_format=torch.channels_last)

        def call():
            return torch.ops.tritonconv.conv2d_grad_input(dy, w, list(x.shape), *args)

        xr = x.double().requires_grad_()
        (expected,) = torch.autograd.grad(F.conv2d(xr, w.double(), None, *args), xr, dy.double())
    del launched[:]
    with router.force(family), plans.enabled_as(False):
        first, again = call(), call()
    assert launched[:len(kernels)] == kernels and len(launched) == 2 * len(kernels), launched
    return first, again, expected


@pytest.mark.parametrize("family,direction,problem,kernels", _TRANSPOSED_CASES)
def test_tap_tma_transposed_tiles(family, direction, problem, kernels, monkeypatch, launched):
    """TRANSPOSED (configs.TRANSPOSED_MIN_BLOCK_N): each step computes the tile's transpose, w's
    tile times the input box transposed, transposed back once for the epilogue. Every tap-TMA
    launcher that runs _tap_tma_acc, against float64, with a fused epilogue where the direction
    has one, and the same bits on a second call."""
    first, again, expected = _pinned_tap_tma_case(family, direction, problem, kernels, launched, monkeypatch,
                                                  TRANSPOSED=True)
    assert rel_err(first, expected) < TOL[torch.float16]
    assert torch.equal(first, again)


# (family forced, direction, problem, kernels launched, whether the launch rotates: split-K and
# stream-K launches take no ROTATE). Each rotating problem has two M-tiles at least (the
# interpreter's 64-pixel span): the second starts half-way through the reduction
_ROTATED_CASES = [
    ("tap_tma", "forward", (2, 32, 6, 6, 24, 3, 3, 1, 1, 1, 1), ["fprop_tap_tma"], True),
    ("tap_tma", "forward", (2, 48, 16, 16, 32, 3, 3, 2, 1, 1, 2), ["fprop_tap_tma"], True),  # stride 2, grouped
    ("tap_tma", "forward", (2, 24, 5, 7, 40, 3, 3, 1, 1, 1, 1), ["fprop_tap_tma"], True),  # an uneven channel block
    ("tap_tma", "forward", (2, 16, 9, 9, 16, 3, 2, 1, 2, 2, 1), ["fprop_tap_tma"], True),  # dilated, 3x2 taps
    ("tap_tma", "grad_input", (2, 24, 6, 6, 32, 3, 3, 1, 1, 1, 1), ["fprop_tap_tma"], True),  # w flipped in place
    ("tap_tma_splitk", "forward", (1, 64, 4, 4, 32, 3, 3, 1, 1, 1, 1), ["fprop_tap_tma"], False),
    ("tap_tma_streamk", "forward", (2, 32, 6, 6, 24, 3, 3, 1, 1, 1, 1), ["fprop_tap_tma_streamk"], False),
]


@pytest.mark.parametrize("transposed", [False, True], ids=["", "transposed"])
@pytest.mark.parametrize("family,direction,problem,kernels,rotates", _ROTATED_CASES)
def test_tap_tma_rotated_tiles(family, direction, problem, kernels, rotates, transposed, monkeypatch, launched):
    """ROTATE (configs.ROTATED_FORMS): each M-tile's reduction starts at its own step and wraps
    round past the last tap. Against float64 and the same bits on a second call, in fp16; in
    float32 (the forward: the dgrad reads w in place in 16-bit only), other bits than the same
    tile unrotated, whose sums run in another order (the rotation took effect; 16-bit outputs
    round most such differences away), except where the launch takes no rotation (split-K,
    stream-K): there the unrotated bits."""
    # a pinned tile runs as pinned (one config: no pruner forms); on a GPU whose Triton has the
    # register hazard, the untransposed one synced, as the pruner would run it
    form = {"TRANSPOSED": True} if transposed else {"SYNC_MMA": True} if DEVICE == "cuda" and configs.WGMMA_RS_HAZARD \
        else {}
    first, again, expected = _pinned_tap_tma_case(family, direction, problem, kernels, launched, monkeypatch,
                                                  ROTATE=True, **form)
    assert rel_err(first, expected) < TOL[torch.float16]
    assert torch.equal(first, again)
    if direction == "forward":
        wide = [_pinned_tap_tma_case(family, direction, problem, kernels, launched, monkeypatch, torch.float32,
                                     **rotate, **form)[0] for rotate in ({"ROTATE": True}, {})]
        assert torch.equal(*wide) is not rotates


@pytest.mark.parametrize("problem", [
    (2, 48, 7, 7, 40, 1, 1, 1, 0, 1, 1),  # 98 pixels: two M-tiles, 3 steps of 16 channels
    (2, 80, 7, 7, 32, 1, 1, 1, 0, 1, 2),  # grouped: 40 channels a group, 3 steps, the last uneven
])
def test_gemm1x1_tma_rotated_tiles(problem, monkeypatch, launched):
    """ROTATE on the 1x1 GEMM's TMA kernel (configs.ROTATED_FORMS): against float64 with a fused
    epilogue and the same bits on a second call in fp16; in float32, other bits than the same
    tile unrotated (the rotation took effect)."""
    from tritonconv.kernels import gemm1x1

    N, C, H, W, K, R, S, stride, padding, dilation, groups = problem

    def run(dtype, **extra):
        base = gemm1x1._gemm1x1_tma_tuned.configs[0]
        kwargs = {k: v for k, v in base.kwargs.items() if k != "ROTATE"}
        monkeypatch.setattr(gemm1x1._gemm1x1_tma_tuned, "configs", [triton.Config(
            {**kwargs, **extra}, num_warps=base.num_warps, num_stages=base.num_stages, pre_hook=base.pre_hook)])
        monkeypatch.setattr(gemm1x1._gemm1x1_tma_tuned, "cache", {})
        gen = torch.Generator(device=DEVICE).manual_seed(5)
        x = torch.randn(N, C, H, W, device=DEVICE, generator=gen).to(dtype).to(memory_format=torch.channels_last)
        w = (torch.randn(K, C // groups, 1, 1, device=DEVICE, generator=gen) / (C // groups) ** 0.5).to(
            dtype).to(memory_format=torch.channels_last)
        b = torch.randn(K, device=DEVICE, generator=gen).to(dtype)
        del launched[:]
        with router.force("gemm1x1_tma"), plans.enabled_as(False):
            outs = [tritonconv.conv2d(x, w, b, 1, 0, 1, groups, activation="relu") for _ in range(2)]
        assert launched == [_expected("gemm1x1_tma")] * 2, launched
        expected = F.relu(F.conv2d(x.double(), w.double(), b.double(), 1, 0, 1, groups))
        return outs, expected

    (first, again), expected = run(torch.float16, ROTATE=True)
    assert rel_err(first, expected) < TOL[torch.float16]
    assert torch.equal(first, again)
    if TMA:
        rotated, plain = run(torch.float32, ROTATE=True)[0][0], run(torch.float32)[0][0]
        assert not torch.equal(rotated, plain)


def test_split_k_forwards_never_run_an_empty_chunk():
    """The forward kernels run at least one reduction step and tell the compiler so (fprop.py;
    where the loop might run none, ptxas serialized their wgmmas: _common.split_steps): an empty
    chunk would then sum a step of the next one. The launchers cut at most as many chunks as the
    reduction has steps at the largest BLOCK_K of any config (fprop.split_chunks), and
    split_steps' even cut leaves none empty at any BLOCK_K up to that. A split asked beyond that
    still gives the float64 result."""
    from tritonconv.kernels import fprop

    assert all(c.kwargs["BLOCK_K"] <= configs.MAX_BLOCK_K for tuned in (
        fprop._fprop_tuned, fprop._fprop_tma_tuned, fprop._fprop_tap_tma_tuned) for c in tuned.configs)
    assert all(c.kwargs["BLOCK_K"] <= configs.MAX_BLOCK_K for c in fprop.tap_tma_configs(interpreter=False))
    pb = spec.problem_from_shapes((1, 48, 5, 5), (16, 24, 3, 3), (1, 1), (1, 1), (1, 1), 2)
    fewest = 9 * triton.cdiv(24, configs.MAX_BLOCK_K)  # 9 taps of one channel block at BLOCK_K 64
    assert fprop.split_chunks(100, pb) == fewest and fprop.split_chunks(0, pb) == 1 and fprop.split_chunks(4, pb) == 4
    # split_steps' cut, as the kernels compute it: every step once, no chunk empty
    for steps in range(fewest, 200):
        for split in range(1, fewest + 1):
            bounds = [(i * steps // split, (i + 1) * steps // split) for i in range(split)]
            assert all(stop > start for start, stop in bounds) and bounds[0][0] == 0 and bounds[-1][1] == steps
            assert all(bounds[i][1] == bounds[i + 1][0] for i in range(split - 1))
    x = torch.randn(1, 48, 5, 5, device=DEVICE).half().to(memory_format=torch.channels_last)
    w = (torch.randn(16, 24, 3, 3, device=DEVICE) / 14).half().to(memory_format=torch.channels_last)
    ref = F.conv2d(x.double(), w.double(), None, 1, 1, 1, 2)
    for launch in (fprop.conv2d_fprop, fprop.conv2d_fprop_tap_tma):
        out = launch(x, w, None, pb, split_k=100)
        assert rel_err(out, ref) < TOL[torch.float16]
