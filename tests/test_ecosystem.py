"""tritonconv in the rest of PyTorch: autocast, torch.compile / export of converted models,
CUDA graphs, and DistributedDataParallel."""

from __future__ import annotations

import copy
import os

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import tritonconv
import tritonconv.nn as tnn

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
COMPILE_BACKEND = "inductor" if DEVICE == "cuda" else "aot_eager"
# float32 against aten's model: on a GPU both convs run TF32 (cuDNN's allow_tf32 is on by default),
# each rounding differently (6e-4 apart on an H100, 2026-11-26), as conftest's TOL allows
FP32_VS_ATEN = 1e-5 if DEVICE == "cpu" else 5e-3


def rel_err(out, ref):
    out, ref = out.detach().double().cpu(), ref.detach().double().cpu()
    assert out.shape == ref.shape
    assert torch.isfinite(out).all()
    return ((out - ref).norm() / ref.norm().clamp_min(1e-30)).item()


def _small_net():
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=2), nn.SiLU(),
        nn.ConvTranspose2d(8, 4, 2, stride=2),
    )


AUTOCAST_DTYPES = [torch.float16, torch.bfloat16]


@pytest.mark.parametrize("dtype", AUTOCAST_DTYPES)
def test_autocast_casts_like_aten(dtype):
    torch.manual_seed(0)
    x, w, b = torch.randn(2, 3, 6, 6, device=DEVICE), torch.randn(4, 3, 3, 3, device=DEVICE), torch.randn(4, device=DEVICE)
    with torch.autocast(DEVICE, dtype=dtype):
        y = tritonconv.conv2d(x, w, b, 1, 1)
        ref = F.conv2d(x, w, b, 1, 1)
        y_fused = tritonconv.conv2d(x, w, b, 1, 1, activation="relu")
        wt = torch.randn(3, 5, 3, 3, device=DEVICE)
        y_t = tritonconv.conv_transpose2d(x, wt, None, 2)
        ref_t = F.conv_transpose2d(x, wt, None, 2)
        y64 = tritonconv.conv2d(x.double(), w.double())
    assert y.dtype == ref.dtype == dtype
    assert y_fused.dtype == dtype and y_t.dtype == ref_t.dtype == dtype
    assert y64.dtype == torch.float64, "float64 is not cast, as in aten"
    exact = F.conv2d(x.to(dtype).double(), w.to(dtype).double(), b.to(dtype).double(), 1, 1)
    assert rel_err(y, exact) < (5e-3 if dtype == torch.float16 else 3e-2)
    assert rel_err(y_fused, F.relu(exact)) < (5e-3 if dtype == torch.float16 else 3e-2)


def test_compile_fullgraph_and_export_of_a_converted_model():
    torch.manual_seed(1)
    ref = _small_net().to(DEVICE).eval()
    model = tritonconv.convert(_small_net().to(DEVICE).eval())
    model.load_state_dict(ref.state_dict())
    x = torch.randn(2, 3, 8, 8, device=DEVICE)
    with torch.no_grad():
        expected = ref(x)
        compiled = torch.compile(model, backend=COMPILE_BACKEND, fullgraph=True)
        assert rel_err(compiled(x), expected) < FP32_VS_ATEN
        exported = torch.export.export(model, (x,))
        targets = {str(n.target) for n in exported.graph.nodes if n.op == "call_function"}
        assert any("tritonconv.conv2d" in t for t in targets), targets
        assert not any("aten.convolution" in t or "aten.conv2d" in t for t in targets), targets
        assert rel_err(exported.module()(x), expected) < FP32_VS_ATEN


class _Residual(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(channels, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)) + x)


@pytest.mark.parametrize("fuse", [False, True], ids=["converted", "fused"])
def test_exported_program_decomposes_to_aten_convolutions(fuse):
    """``ops.aten_decompositions``: an exported converted model (a fused one too: BN folded, the
    activation in the epilogue) rewritten onto aten's convs computes what the model computes,
    with no tritonconv op left (what torch.onnx.export and AOTInductor need)."""
    torch.manual_seed(3)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.SiLU(),
        nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=2), nn.LeakyReLU(0.2),
        nn.ConvTranspose2d(8, 4, 2, stride=2), nn.Conv2d(4, 4, 1), _Residual(4),
    ).to(DEVICE, torch.float64).eval()
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5), m.running_var.uniform_(0.5, 2.0)
    x = torch.randn(2, 3, 8, 8, device=DEVICE, dtype=torch.float64)
    with torch.no_grad():
        expected = net(x)
        model = tritonconv.convert(copy.deepcopy(net), fuse=fuse)
        exported = torch.export.export(model, (x,))
        ours = {str(n.target) for n in exported.graph.nodes if n.op == "call_function" and "tritonconv" in str(n.target)}
        assert ("tritonconv.conv2d_fused.default" in ours) == fuse, ours
        if fuse:  # the residual block's add and ReLU went into its conv's epilogue
            assert not any(n.target in (torch.ops.aten.add.Tensor, torch.ops.aten.relu.default)
                           for n in exported.graph.nodes), exported.graph
        decomposed = exported.run_decompositions(tritonconv.ops.aten_decompositions())
        targets = {str(n.target) for n in decomposed.graph.nodes if n.op == "call_function"}
        assert not any("tritonconv" in t for t in targets), targets
        assert {"aten.conv2d.default", "aten.conv_transpose2d.input"} <= targets, targets
        assert rel_err(decomposed.module()(x), expected) < 1e-12


def test_compile_fullgraph_of_a_converted_model_with_backward():
    torch.manual_seed(2)
    model = tritonconv.convert(_small_net().to(DEVICE).train())
    x = torch.randn(2, 3, 8, 8, device=DEVICE, requires_grad=True)
    compiled = torch.compile(model, backend=COMPILE_BACKEND, fullgraph=True)
    compiled(x).sum().backward()
    g_compiled = x.grad.clone()
    x.grad = None
    model(x).sum().backward()
    assert rel_err(g_compiled, x.grad) < 1e-5


@pytest.mark.skipif(DEVICE != "cuda", reason="CUDA graphs need a GPU")
def test_cuda_graph_capture_and_replay():
    torch.manual_seed(3)
    model = tritonconv.convert(_small_net().cuda().eval(), fuse=True)
    static_x = torch.randn(4, 3, 16, 16, device="cuda")
    with torch.no_grad():
        warm = model(static_x)  # tunes every layer outside the capture
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            model(static_x)
        torch.cuda.current_stream().wait_stream(side)
        with torch.cuda.graph(graph):
            static_y = model(static_x)
        new_x = torch.randn_like(static_x)
        static_x.copy_(new_x)
        graph.replay()
        torch.cuda.synchronize()
        assert torch.equal(static_y, model(new_x))
        assert warm.shape == static_y.shape


@pytest.mark.skipif(DEVICE != "cuda", reason="CUDA graphs need a GPU")
def test_cuda_graph_capture_refuses_to_tune(monkeypatch):
    from tritonconv import configs

    monkeypatch.setattr(configs, "TUNE", True)  # conftest turns tuning off for the other tests
    conv = tnn.Conv2d(16, 32, 3, padding=1, device="cuda", dtype=torch.float16)
    x = torch.randn(3, 16, 23, 29, device="cuda", dtype=torch.float16)  # a shape never tuned before
    graph = torch.cuda.CUDAGraph()
    with pytest.raises(RuntimeError, match="during CUDA graph capture"):
        with torch.cuda.graph(graph):
            conv(x)


# ----------------------------------------------------------------------------- DDP


def _ddp_worker(rank, world_size, init_file, out_dir):
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        torch.manual_seed(0)
        model = tritonconv.convert(_small_net().double())
        data = torch.randn(4, 3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
        ddp = DDP(model)
        shard = data[rank * 2:(rank + 1) * 2]
        ddp(shard).pow(2).mean().backward()
        if rank == 0:
            torch.save({n: p.grad for n, p in model.named_parameters()}, os.path.join(out_dir, "grads.pt"))
        # leave together: a rank tearing gloo down while the other is still in it can abort
        # ("terminate called without an active exception", seen once in CI)
        dist.barrier()
    finally:
        dist.destroy_process_group()


def test_ddp_gradients_match_a_single_process(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_ddp_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    ddp_grads = torch.load(tmp_path / "grads.pt")
    torch.manual_seed(0)
    model = tritonconv.convert(_small_net().double())
    data = torch.randn(4, 3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    # DDP averages the per-rank gradients of per-rank means: the mean over two equal halves
    loss = 0.5 * (model(data[:2]).pow(2).mean() + model(data[2:]).pow(2).mean())
    loss.backward()
    assert ddp_grads.keys() == dict(model.named_parameters()).keys()
    for name, p in model.named_parameters():
        assert rel_err(ddp_grads[name], p.grad) < 1e-12, name
