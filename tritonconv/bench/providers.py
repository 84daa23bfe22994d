"""What a sweep measures: cases (one layer in one mode, dtype and layout) and providers.

A provider turns a case and one set of input tensors into a zero-argument
callable, the thing that is timed. Every provider computes the same thing for
a mode:

    ================  ====================================  ==================
    mode              computes                              flops
    ================  ====================================  ==================
    forward           y = conv2d(x, w)                      problem.flops
    grad_input        dx from dy (y's gradient) and w       problem.flops
    grad_weight       dw from dy and x                      problem.flops
    forward_backward  y, then dx and dw from dy             3 * problem.flops
    ================  ====================================  ==================

    ==========  ================================================================
    provider    how
    ==========  ================================================================
    tritonconv  forward as a tritonconv.nn.Conv2d runs it in inference: its
                weight packed once (nn.inference_weight: taps-major for a
                depthwise layer), tritonconv.functional.conv2d (no dispatcher
                without autograd); conv2d_grad_input / _grad_weight as a
                backward pass runs them (tritonconv.ops.call); autograd for
                forward_backward (autotuned)
    cudnn       F.conv2d and aten.convolution_backward with
                torch.backends.cudnn.benchmark = True
    inductor    the same aten calls under torch.compile(mode=
                "max-autotune-no-cudagraphs"), with Inductor's conv autotuning
                restricted to its Triton template (max_autotune_conv_backends=
                "TRITON") where this torch has that setting
    im2col      tritonconv.reference.conv2d_im2col (materialised column
                matrix, one bmm); gradients through autograd
    unfold      tritonconv.reference.conv2d_unfold (nn.Unfold, one matmul)
    aten-cpu    F.conv2d / aten.convolution_backward on the CPU (the CPU
                baseline when there is no GPU)
    ==========  ================================================================

A provider that cannot run a case says why (``unsupported``) and the sweep
records that as the row's status.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from .. import functional
from .. import nn as tnn
from .. import ops as tc_ops
from ..kernels._common import INTERPRETER
from .presets import Layer

__all__ = [
    "MODES",
    "MODE_FLOPS",
    "DTYPES",
    "LAYOUTS",
    "Case",
    "Inputs",
    "make_inputs",
    "Provider",
    "PROVIDERS",
    "get_provider",
    "default_providers",
    "reference_outputs",
    "rel_err",
    "tolerance",
    "tensor_bytes",
    "tritonconv_calls",
    "each_family_thunk",
]

MODES = ("forward", "grad_input", "grad_weight", "forward_backward")
MODE_FLOPS = {"forward": 1, "grad_input": 1, "grad_weight": 1, "forward_backward": 3}
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
LAYOUTS = ("channels_last", "nchw")


@dataclass(frozen=True)
class Case:
    """One layer at batch N, in one mode, dtype and layout, on one device."""

    preset: str
    layer: Layer
    N: int
    mode: str
    dtype: str  # a key of DTYPES
    layout: str  # channels_last | nchw
    device: str  # cuda | cpu

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    @property
    def problem(self):
        return self.layer.problem(self.N)

    @property
    def flops(self) -> int:
        return MODE_FLOPS[self.mode] * self.problem.flops

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.layout == "channels_last" else torch.contiguous_format

    def input_bytes(self) -> int:
        """Bytes of the tensors a call reads (x and w, and dy for the gradient modes)."""
        pb, size = self.problem, torch.empty((), dtype=self.torch_dtype).element_size()
        elems = {"x": math.prod(pb.input_shape), "w": math.prod(pb.weight_shape), "dy": math.prod(pb.output_shape)}
        used = {"forward": ("x", "w"), "grad_input": ("dy", "w"), "grad_weight": ("dy", "x"),
                "forward_backward": ("x", "w", "dy")}[self.mode]
        return size * sum(elems[k] for k in used)

    def seed(self, index: int) -> int:
        """A seed per (layer, N, dtype, layout, input set): every provider sees the same data."""
        text = f"{self.layer.shape_key}|{self.N}|{self.dtype}|{self.layout}|{index}"
        return sum((i + 1) * ord(ch) for i, ch in enumerate(text)) % (2**31 - 1)


@dataclass
class Inputs:
    x: torch.Tensor  # (N, C, H, W)
    w: torch.Tensor  # (K, C/groups, R, S)
    dy: torch.Tensor  # (N, K, P, Q), the output's gradient


def make_inputs(case: Case, index: int = 0) -> Inputs:
    """Random inputs for a case, the same for every provider (seeded), in the case's layout.

    The weight is scaled by 1/sqrt(fan-in) so outputs stay near unit size and
    fp16 does not overflow on the long reductions of late layers.
    """
    pb, dtype, fmt = case.problem, case.torch_dtype, case.memory_format
    gen = torch.Generator(device=case.device).manual_seed(case.seed(index))

    def randn(shape, scale=1.0):
        t = torch.randn(shape, generator=gen, device=case.device, dtype=torch.float32)
        if scale != 1.0:
            t.mul_(scale)
        return t.to(dtype).contiguous(memory_format=fmt)

    fan_in = pb.C_per_group * pb.R * pb.S
    return Inputs(
        x=randn(pb.input_shape),
        w=randn(pb.weight_shape, 1.0 / math.sqrt(fan_in)),
        dy=randn(pb.output_shape),
    )


def tensor_bytes(out: Any) -> int:
    if isinstance(out, torch.Tensor):
        return out.numel() * out.element_size()
    if isinstance(out, (tuple, list)):
        return sum(tensor_bytes(o) for o in out)
    return 0


def _as_tuple(out: Any) -> Tuple[torch.Tensor, ...]:
    return tuple(out) if isinstance(out, (tuple, list)) else (out,)


# --------------------------------------------------------------------------- correctness


def reference_outputs(case: Case, inputs: Inputs) -> Tuple[torch.Tensor, ...]:
    """The mode's result in float64 from aten (cuDNN or the CPU), for relative errors."""
    x, w, dy = inputs.x.double(), inputs.w.double(), inputs.dy.double()
    stride, padding, dilation, groups = case.layer.conv_args()
    if case.mode == "forward":
        return (F.conv2d(x, w, None, stride, padding, dilation, groups),)
    mask = {"grad_input": [True, False, False], "grad_weight": [False, True, False],
            "forward_backward": [True, True, False]}[case.mode]
    dx, dw, _ = torch.ops.aten.convolution_backward(dy, x, w, None, stride, padding, dilation, False, [0, 0],
                                                    groups, mask)
    return {"grad_input": (dx,), "grad_weight": (dw,), "forward_backward": (dx, dw)}[case.mode]


def rel_err(out: Any, ref: Sequence[torch.Tensor]) -> float:
    """max over outputs of ||out - ref|| / ||ref|| (float64); inf for a non-finite or missing output."""
    outs = _as_tuple(out)
    if len(outs) != len(ref):
        return float("inf")
    worst = 0.0
    for o, r in zip(outs, ref):
        if o is None or tuple(o.shape) != tuple(r.shape):
            return float("inf")
        o64 = o.detach().to(torch.float64)
        if not torch.isfinite(o64).all():
            return float("inf")
        denom = torch.linalg.vector_norm(r).item()
        err = torch.linalg.vector_norm(o64 - r).item()
        worst = max(worst, err / denom if denom > 0 else err)
    return worst


def tolerance(case: Case) -> float:
    """Relative error above which a result is reported as a mismatch (not timed as ok).

    Loose on purpose (a few times the test suite's): this flags wrong results,
    the tests check accuracy. fp32 runs as TF32 on CUDA by default.
    """
    if case.dtype == "fp32":
        return 1e-2 if case.device == "cuda" else 1e-4
    return {"fp16": 1e-2, "bf16": 5e-2}[case.dtype]


# --------------------------------------------------------------------------- providers


def _autograd_grads(conv: Callable, case: Case, inputs: Inputs) -> Callable[[], Any]:
    """A timed call for the gradient modes through autograd, for providers without grad ops."""
    x = inputs.x.detach().requires_grad_(case.mode in ("grad_input", "forward_backward"))
    w = inputs.w.detach().requires_grad_(case.mode in ("grad_weight", "forward_backward"))
    dy = inputs.dy
    if case.mode == "forward_backward":
        return lambda: torch.autograd.grad(conv(x, w), (x, w), dy)
    # grad_input / grad_weight alone: the forward (and its graph) is built once, outside the timing
    y = conv(x, w)
    wrt = x if case.mode == "grad_input" else w
    return lambda: torch.autograd.grad(y, wrt, dy, retain_graph=True)[0]


class Provider:
    """Base class: ``bind`` a case and one input set to a zero-argument timed call."""

    name = ""
    note = ""
    # measured layer by layer with the other quick providers (the sweep's order); False for one
    # whose per-layer setup is slow (Inductor compiles each layer), measured after them
    quick = True

    def unsupported(self, case: Case) -> Optional[str]:
        """Why this provider cannot run the case, or None."""
        return None

    def session(self):
        """A context active while this provider's calls are compiled and timed."""
        return contextlib.nullcontext()

    def prepare(self, case: Case) -> None:
        """Called once per case before its input sets are bound."""

    def bind(self, case: Case, inputs: Inputs) -> Callable[[], Any]:
        raise NotImplementedError


class TritonConv(Provider):
    name = "tritonconv"
    note = "forward as tritonconv.nn.Conv2d in inference, gradient ops as a backward pass runs them (autotuned)"

    def unsupported(self, case):
        if case.device == "cpu" and not INTERPRETER:
            return "unsupported: CPU tensors need Triton's interpreter (TRITON_INTERPRET=1)"
        if case.device == "cuda" and INTERPRETER:
            return "unsupported: Triton's interpreter is on; kernels run on CPU tensors only"
        return None

    def bind(self, case, inputs):
        ops = torch.ops.tritonconv
        args = case.layer.conv_args()
        x, w, dy = inputs.x, inputs.w, inputs.dy
        if case.mode == "forward":
            # as a tritonconv.nn module runs it in inference: its weight packed once (taps-major
            # for a depthwise layer), no dispatcher for a call without autograd (ops.call)
            wk = tnn.inference_weight(w, x, args[3])
            return lambda: functional.conv2d(x, wk, None, *args)
        # the gradient ops as a backward pass runs them (ops.call: no dispatcher without autograd)
        if case.mode == "grad_input":
            size = list(x.shape)
            return lambda: tc_ops.call("conv2d_grad_input", (dy, w), dy, w, size, *args)
        if case.mode == "grad_weight":
            size = list(w.shape)
            return lambda: tc_ops.call("conv2d_grad_weight", (dy, x), dy, x, size, *args)
        return _autograd_grads(lambda a, b: ops.conv2d(a, b, None, *args), case, inputs)


def _router():
    """The kernel-family router, where this version of tritonconv has one."""
    try:
        from ..kernels import router
    except ImportError:
        return None
    return router


_DIRECTIONS = {"forward": ("forward",), "grad_input": ("input_grad",), "grad_weight": ("weight_grad",),
               "forward_backward": ("forward", "input_grad", "weight_grad")}


def tritonconv_calls(case: Case, inputs: Inputs, each_family: bool = False) -> None:
    """Call each tritonconv op a mode uses once, directly (no autograd).

    For tuning (every kernel launched once) and precompiling. With
    ``each_family``, an op whose problem several kernel families accept is
    called once per family the router would time for these tensors
    (``routed_candidates``), with that family pinned (the router's ``force``),
    so that each is launched and none is timed against the others. A family
    that raises does not keep the others from launching: the first error is
    raised after them, naming its family.
    """
    ops = torch.ops.tritonconv
    args = case.layer.conv_args()
    x, w, dy = inputs.x, inputs.w, inputs.dy
    wk = tnn.inference_weight(w, x, args[3]) if case.mode == "forward" else w  # as TritonConv.bind
    calls = {
        "forward": lambda: ops.conv2d(x, wk, None, *args),
        "input_grad": lambda: ops.conv2d_grad_input(dy, w, list(x.shape), *args),
        "weight_grad": lambda: ops.conv2d_grad_weight(dy, x, list(w.shape), *args),
    }
    router = _router() if each_family else None
    failed = []
    for direction in _DIRECTIONS[case.mode]:
        if router is None:
            calls[direction]()
            continue
        table = {"forward": router.FORWARD, "input_grad": router.INPUT_GRAD,
                 "weight_grad": router.WEIGHT_GRAD}[direction]
        tensors = {"forward": (x, wk, None, None), "input_grad": (dy, w, None), "weight_grad": (dy, x)}[direction]
        if hasattr(router, "routed_candidates"):
            families = router.routed_candidates(table, direction, case.problem, tensors)
        else:
            families = router.candidates(table, case.problem)
        for family in families:
            try:
                with router.force(family):
                    calls[direction]()
            except Exception as err:
                failed.append((f"{direction} family {family}", err))
    if failed:
        where, err = failed[0]
        more = f" (and {len(failed) - 1} more)" if len(failed) > 1 else ""
        raise RuntimeError(f"{where}: {type(err).__name__}: {err}{more}") from err


def each_family_thunk(case: Case) -> Callable[[], None]:
    """``tritonconv_calls(case, ..., each_family=True)`` on fresh inputs, as a thunk for
    ``precompile``, named after the layer and mode (precompile's error examples show the name)."""
    def calls() -> None:
        tritonconv_calls(case, make_inputs(case, 0), each_family=True)

    calls.__name__ = f"{case.layer.name} {case.mode}"
    return calls


def _aten_bind(case: Case, inputs: Inputs, compile_fn: Optional[Callable] = None) -> Callable[[], Any]:
    """F.conv2d / aten.convolution_backward, optionally through ``compile_fn``."""
    stride, padding, dilation, groups = case.layer.conv_args()

    def forward(x, w):
        return F.conv2d(x, w, None, stride, padding, dilation, groups)

    def grad(dy, x, w):
        mask = [case.mode == "grad_input", case.mode == "grad_weight", False]
        out = torch.ops.aten.convolution_backward(dy, x, w, None, stride, padding, dilation, False, [0, 0],
                                                  groups, mask)
        return out[0] if case.mode == "grad_input" else out[1]

    wrap = compile_fn or (lambda f: f)
    if case.mode == "forward":
        f = wrap(forward)
        return lambda: f(inputs.x, inputs.w)
    if case.mode in ("grad_input", "grad_weight"):
        g = wrap(grad)
        return lambda: g(inputs.dy, inputs.x, inputs.w)
    return _autograd_grads(wrap(forward), case, inputs)


class CuDNN(Provider):
    name = "cudnn"
    note = "torch.backends.cudnn.benchmark=True"

    def unsupported(self, case):
        return None if case.device == "cuda" else "unsupported: needs CUDA"

    @contextlib.contextmanager
    def session(self):
        old = torch.backends.cudnn.benchmark
        torch.backends.cudnn.benchmark = True
        try:
            yield
        finally:
            torch.backends.cudnn.benchmark = old

    def bind(self, case, inputs):
        return _aten_bind(case, inputs)


class AtenCPU(Provider):
    name = "aten-cpu"
    note = "F.conv2d on the CPU"

    def unsupported(self, case):
        return None if case.device == "cpu" else "unsupported: the CPU baseline (use cudnn on CUDA)"

    def bind(self, case, inputs):
        return _aten_bind(case, inputs)


class Inductor(Provider):
    """torch.compile(mode="max-autotune-no-cudagraphs"), conv autotuning on Triton templates.

    Dynamo is reset per case, so each layer compiles on its own (and no
    recompile limit is hit); all input sets of a case share one compile.
    Inductor lowers the gradient modes' aten.convolution_backward itself in
    recent torch (Triton templates under their own backend settings, which
    default to ATEN on CUDA) and falls back to aten (cuDNN) in older ones.
    """

    name = "inductor"
    MODE = "max-autotune-no-cudagraphs"
    quick = False

    def __init__(self):
        self._compiled: Dict[str, Callable] = {}
        self.patch: Dict[str, Any] = {}
        try:
            import torch._inductor.config as cfg

            if hasattr(cfg, "max_autotune_conv_backends"):
                self.patch["max_autotune_conv_backends"] = "TRITON"
        except Exception:  # pragma: no cover - torch without inductor
            pass
        settings = ", ".join(f"{k}={v}" for k, v in self.patch.items())
        self.note = f"torch.compile(mode={self.MODE!r}); " + (
            settings or "this torch has no max_autotune_conv_backends setting")

    def unsupported(self, case):
        return None if case.device == "cuda" else "unsupported: needs CUDA (Inductor's Triton code)"

    @contextlib.contextmanager
    def session(self):
        import torch._inductor.config as cfg

        with cfg.patch(self.patch):
            yield

    def prepare(self, case):
        torch._dynamo.reset()
        self._compiled = {}

    def _compile(self, fn):
        # one compiled function per case and role, shared by every input set
        key = fn.__name__
        if key not in self._compiled:
            self._compiled[key] = torch.compile(fn, mode=self.MODE, dynamic=False)
        return self._compiled[key]

    def bind(self, case, inputs):
        return _aten_bind(case, inputs, self._compile)


class _Reference(Provider):
    fn: Callable = None  # type: ignore[assignment]

    def bind(self, case, inputs):
        stride, padding, dilation, groups = case.layer.conv_args()
        conv = type(self).fn

        def forward(x, w):
            return conv(x, w, None, stride, padding, dilation, groups)

        if case.mode == "forward":
            return lambda: forward(inputs.x, inputs.w)
        return _autograd_grads(forward, case, inputs)


class Im2col(_Reference):
    name = "im2col"
    note = "tritonconv.reference.conv2d_im2col"

    @staticmethod
    def fn(*args):
        from .. import reference

        return reference.conv2d_im2col(*args)


class Unfold(_Reference):
    name = "unfold"
    note = "tritonconv.reference.conv2d_unfold"

    @staticmethod
    def fn(*args):
        from .. import reference

        return reference.conv2d_unfold(*args)


PROVIDERS: Dict[str, Callable[[], Provider]] = {
    "tritonconv": TritonConv,
    "cudnn": CuDNN,
    "inductor": Inductor,
    "im2col": Im2col,
    "unfold": Unfold,
    "aten-cpu": AtenCPU,
}


def get_provider(name: str) -> Provider:
    try:
        return PROVIDERS[name]()
    except KeyError:
        raise KeyError(f"unknown provider {name!r}; choose from {', '.join(PROVIDERS)}") from None


def default_providers(device: str) -> List[str]:
    """tritonconv first (the others' rows carry the speedup over it), the slowest to set up last."""
    if device == "cuda":
        return ["tritonconv", "cudnn", "im2col", "unfold", "inductor"]
    return ["tritonconv", "im2col", "unfold", "aten-cpu"]
