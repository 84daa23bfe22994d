"""torch.library registration: schemas, fake implementations, autograd.

This module knows nothing of tile sizes: it validates once (``spec``), then
calls the launchers in ``kernels``. The forward schemas are aten's own, so
``torch.ops.tritonconv.conv2d`` is a drop-in for ``aten::conv2d`` and
``torch.ops.tritonconv.conv_transpose2d`` for ``aten::conv_transpose2d.input``.

Autograd is expressed with tritonconv ops only:

    ===================  ====================================================
    op                   gradients
    ===================  ====================================================
    conv2d               grad_input (dgrad), grad_weight (wgrad), grad_bias
    conv2d_grad_input    w.r.t. dy: conv2d;         w.r.t. w: grad_weight
    conv2d_grad_weight   w.r.t. dy: conv2d;         w.r.t. x: grad_input
    conv2d_grad_bias     w.r.t. dy: broadcast (no conv)
    conv_transpose2d     w.r.t. x: conv2d; w.r.t. w: grad_weight; bias: grad_bias
    conv2d_fused         act'(z) * dy, then as conv2d (z from the output where
                         the activation allows, else recomputed by conv2d)
    ===================  ====================================================

so a training step runs no aten convolution, and double backward works
because every gradient op is itself differentiable.

Going through the dispatcher costs more host time than the rest of a call with a launch plan:
on a CPU of CI's kind, the kernel launch itself left out (``perf/host_cost.py``), a planned
forward took 16-17 us run directly, 26-32 us through the op without autograd and 49-52 us with
it (the custom op's autograd layer) when first measured; the machine's figures vary from day to
day (the README has a second set). For a call that runs under no tracing, dispatch or function mode, functorch transform,
autocast or profiler, on plain tensors on a CPU or CUDA device, the dispatcher does nothing
but that autograd. ``call`` runs such calls on the implementations directly (``direct_ok``), or,
where autograd must record the call, through an ``autograd.Function`` with the op's own
setup_context and backward (23-25 us); under a torch.func transform, through an
``autograd.Function`` that torch.func accepts (``_transform_function``: a custom op's own
autograd fails there, upstream); everything else goes through the op.
``tritonconv.functional`` (so ``tritonconv.nn``) and the backward formulas below use it;
``torch.ops.tritonconv.*`` called directly always dispatches.
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

import torch
import torch.autograd.forward_ad as forward_ad

from . import plans, spec
from .kernels._common import activation_code
from .kernels import router
from .kernels.wgrad import conv2d_bias_grad

__all__ = [
    "call",
    "direct_ok",
    "conv2d",
    "conv2d_fused",
    "conv_transpose2d",
    "conv2d_grad_input",
    "conv2d_grad_weight",
    "conv2d_grad_bias",
    "aten_decompositions",
    "torch_activation",
]

_CONV_ARGS = "SymInt[2] stride, SymInt[2] padding, SymInt[2] dilation, SymInt groups"


def _memo(op_name: str, tensors: tuple, *args) -> Optional[tuple]:
    """The op layer's key for a call of ``op_name`` that gives the router ``tensors`` as they are
    (``router.replay_memo``): the op, its other arguments ``args`` and what the plan key holds of
    the tensors and the call's state. None where the call must take the full path: plans off,
    forward-mode AD tangents to refuse (``_refuse_tangents``), a tensor not strided, or an
    argument of a kind the schema does not give (it gives ints, lists of ints, and the fused op's
    activation and slope), which the full path's validation words."""
    if not plans.ENABLED or forward_ad._current_level >= 0:
        return None
    for t in tensors:
        if t is not None and t.layout is not torch.strided:  # no strides to key: the full path refuses it
            return None
    values = []
    for v in args:
        if type(v) is int or type(v) is str:
            values.append(v)
        elif type(v) is float:
            values.append((float, v))  # 1.0 == 1: a float where an int belongs is another key
        elif type(v) in (list, tuple, torch.Size) and all(type(i) is int for i in v):
            values.append(tuple(v))
        else:
            return None
    return (op_name, tuple(values), plans.tensor_key(tensors)) + router.call_state(tensors[0])


def _as_routed(input: torch.Tensor, bias: Optional[torch.Tensor]) -> bool:
    """Whether the router takes a forward's (or conv_transpose2d's) input and bias as they are, so
    that the memo's tensors are the router's: a batched input (``spec.as_batched`` leaves it) and
    a bias that ``router._dense`` leaves (dense: stride 1)."""
    return input.dim() == 4 and (bias is None or (bias.layout is torch.strided and bias.stride() == (1,)))


def _replayed(op_name: str, tensors: tuple, *args) -> tuple:
    """(memo key, output) of a call of ``op_name`` whose router tensors are ``tensors``: the output
    of the plan a call with the same memo key was routed to (``_memo``, ``router.replay_memo``), or
    None where the full path must run, which then takes the key (None where there is none)."""
    memo_key = _memo(op_name, tensors, *args)
    return memo_key, (None if memo_key is None else router.replay_memo(memo_key, tensors))


def _problem(input, weight, bias, stride, padding, dilation, groups) -> spec.Conv2dProblem:
    return spec.conv2d_problem(spec.as_batched(input), weight, bias, stride, padding, dilation, groups)


def _unbatch_like(out: torch.Tensor, input: torch.Tensor) -> torch.Tensor:
    return out.squeeze(0) if input.dim() == 3 else out


def _check_grad_output(
    grad_output: torch.Tensor, problem: spec.Conv2dProblem, allow_cropped: bool = False
) -> spec.Conv2dProblem:
    """Check grad_output against the conv's output size; return the problem to launch.

    With ``allow_cropped``, grad_output may lack trailing rows / columns, which
    then count as zero: conv_transpose2d's output_padding can leave the forward
    view one position short, and wgrad must reduce over what is there only.
    """
    shape = tuple(grad_output.shape)
    N, K, P, Q = problem.output_shape
    cropped_ok = allow_cropped and len(shape) == 4 and shape[:2] == (N, K) and shape[2] <= P and shape[3] <= Q
    if shape == problem.output_shape:
        return problem
    if not cropped_ok:
        raise spec.ConvValueError(
            f"grad_output has size {list(shape)}, but the convolution's output has size {[N, K, P, Q]}"
        )
    return dataclasses.replace(problem, P=shape[2], Q=shape[3])


def _needs_grad(ctx, count: int):
    """The first ``count`` of ctx.needs_input_grad; arguments left at their default may be missing."""
    flags = tuple(ctx.needs_input_grad)[:count]
    return flags + (False,) * (count - len(flags))


_DIRECT, _FUNCTION, _OP, _TRANSFORM = 0, 1, 2, 3


def _route(tensors: Sequence[Optional[torch.Tensor]]) -> int:
    """_DIRECT where the dispatcher would only pass the call on to the implementation; _FUNCTION
    where it would also record autograd and nothing else; _TRANSFORM under a torch.func
    transform (``_TRANSFORM_FUNCTIONS``); _OP otherwise (see ``direct_ok``)."""
    if torch.compiler.is_compiling():
        return _OP
    if torch._C._functorch.peek_interpreter_stack() is not None:
        # first: under a mode, the profiler or autocast too, the op's own autograd fails there
        return _TRANSFORM if _served_transforms() else _OP
    if (torch._C._len_torch_dispatch_stack()
            or torch._C._len_torch_function_stack() or torch._C._is_any_autocast_enabled()
            or torch.autograd.profiler._is_profiler_enabled or torch._C._get_tracing_state() is not None):
        return _OP
    grad = torch.is_grad_enabled()
    dual = forward_ad._current_level >= 0  # inside a forward-mode AD level: tangents ride on tensors
    route = _DIRECT
    for t in tensors:
        if t is None:
            continue
        if type(t) is not torch.Tensor and type(t) is not torch.nn.Parameter:
            return _OP
        if t.is_cuda:
            if torch._C._dispatch_keys(t) not in _plain_keys("cuda"):
                return _OP
        elif not t.is_cpu or torch._C._dispatch_keys(t) not in _plain_keys("cpu"):
            return _OP
        if (grad and t.requires_grad) or (dual and forward_ad.unpack_dual(t).tangent is not None):
            route = _FUNCTION
    return route


def _served_transforms() -> bool:
    """Whether every active functorch level is one ``_transform_function`` serves (grad and vjp,
    jvp, vmap); functionalize, say, goes through the op."""
    from torch._C._functorch import TransformType

    served = (TransformType.Grad, TransformType.Jvp, TransformType.Vmap)
    return all(level.key() in served for level in torch._C._functorch.get_interpreter_stack() or ())


_plain_keyset: dict = {}


def _plain_keys(device_type: str) -> tuple:
    """The dispatch keys of an ordinary tensor on a ``device_type`` device (the same on every
    index), and of an inference tensor (made under torch.inference_mode: no autograd keys). Any
    other key (Negative, Conjugate, ZeroTensor, a legacy-vmap Batched tensor, Functionalize,
    nested...) asks for the dispatcher."""
    keys = _plain_keyset.get(device_type)
    if keys is None:
        with torch.inference_mode():
            inference = torch._C._dispatch_keys(torch.empty(0, device=device_type))
        keys = _plain_keyset[device_type] = (torch._C._dispatch_keys(torch.empty(0, device=device_type)), inference)
    return keys


def direct_ok(*tensors: Optional[torch.Tensor]) -> bool:
    """Whether the dispatcher would only pass these tensors on to the implementation: no autograd
    to record (grad mode off, or nothing requires grad), no torch.compile / export tracing, no
    dispatch or function mode (fake tensors, FlopCounterMode), no functorch transform (vmap,
    grad), no autocast, no profiler (which would lose the op's name), no torch.jit tracing,
    plain tensors or Parameters (no subclass, no dispatch key beyond an ordinary tensor's: not
    negated or conjugated views, zero tensors, batched or nested ones), on a CPU or CUDA
    device (not meta)."""
    return _route(tensors) == _DIRECT


def call(op_name: str, tensors: Sequence[Optional[torch.Tensor]], *args):
    """``torch.ops.tritonconv.<op_name>(*args)``: on its implementation directly where
    ``direct_ok(*tensors)``; where only autograd stands in the way, through an
    ``autograd.Function`` with the op's own setup_context and backward (the custom op's autograd
    layer costs some 25 us more per call on CI's CPU), and a jvp for forward-mode AD, which the
    op has not; otherwise through the op. ``tensors`` are the tensor arguments among ``args``."""
    route = _route(tensors)
    if route == _DIRECT:
        return _IMPLS[op_name](*args)
    if route == _FUNCTION:
        return _FUNCTIONS[op_name].apply(*args)
    if route == _TRANSFORM:
        return _TRANSFORM_FUNCTIONS[op_name].apply(*(_Static(a) if isinstance(a, (list, tuple)) else a for a in args))
    return getattr(torch.ops.tritonconv, op_name)(*args)


# --------------------------------------------------------------------------- conv2d


@torch.library.custom_op(
    "tritonconv::conv2d",
    mutates_args=(),
    schema="(Tensor input, Tensor weight, Tensor? bias=None, SymInt[2] stride=1, SymInt[2] padding=0, "
    "SymInt[2] dilation=1, SymInt groups=1) -> Tensor",
)
def conv2d(
    input: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor] = None,
    stride: Sequence[int] = (1, 1),
    padding: Sequence[int] = (0, 0),
    dilation: Sequence[int] = (1, 1),
    groups: int = 1,
) -> torch.Tensor:
    return _conv2d(input, weight, bias, stride, padding, dilation, groups)


def _refuse_tangents(*tensors) -> None:
    """An op's implementation reached with forward-mode AD tangents on its inputs came through
    torch.ops (a custom op has no forward AD formula): refuse, rather than drop the tangents."""
    if forward_ad._current_level >= 0 and any(
            isinstance(t, torch.Tensor) and forward_ad.unpack_dual(t).tangent is not None for t in tensors):
        raise NotImplementedError(
            "torch.ops.tritonconv ops have no forward-mode AD formula; call tritonconv.functional "
            "(or the tritonconv.nn modules), which compute the jvp")


def _conv2d(input, weight, bias, stride, padding, dilation, groups):
    memo_key = out = None
    if _as_routed(input, bias):
        memo_key, out = _replayed("conv2d", (input, weight, bias, None), stride, padding, dilation, groups)
    if out is not None:
        return out
    _refuse_tangents(input, weight, bias)
    problem = _problem(input, weight, bias, stride, padding, dilation, groups)
    return _unbatch_like(router.forward(spec.as_batched(input), weight, bias, problem, memo_key=memo_key), input)


@conv2d.register_fake
def _(input, weight, bias=None, stride=(1, 1), padding=(0, 0), dilation=(1, 1), groups=1):
    problem = _problem(input, weight, bias, stride, padding, dilation, groups)
    fmt = spec.output_memory_format(spec.as_batched(input), weight)
    out = torch.empty(problem.output_shape, dtype=input.dtype, device=input.device, memory_format=fmt)
    return _unbatch_like(out, input)


def _conv2d_setup_context(ctx, inputs, output):
    input, weight, bias, stride, padding, dilation, groups = inputs
    ctx.save_for_backward(input, weight)
    ctx.has_bias = bias is not None
    ctx.conv_args = (list(stride), list(padding), list(dilation), groups)


def _conv2d_backward(ctx, grad_output):
    input, weight = ctx.saved_tensors
    args = ctx.conv_args
    need_input, need_weight, need_bias = _needs_grad(ctx, 3)
    x, gy = spec.as_batched(input), spec.as_batched(grad_output)
    grad_input = grad_weight = grad_bias = None
    if need_input:
        grad_input = _unbatch_like(call("conv2d_grad_input", (gy, weight), gy, weight, list(x.shape), *args), input)
    if need_weight:
        grad_weight = call("conv2d_grad_weight", (gy, x), gy, x, list(weight.shape), *args)
    if need_bias and ctx.has_bias:
        grad_bias = call("conv2d_grad_bias", (gy,), gy)
    return grad_input, grad_weight, grad_bias, None, None, None, None


conv2d.register_autograd(_conv2d_backward, setup_context=_conv2d_setup_context)


# --------------------------------------------------------------------------- grad_input (dgrad)


def _grad_input_format(grad_output, weight):
    return spec.output_memory_format(grad_output, weight)


@torch.library.custom_op(
    "tritonconv::conv2d_grad_input",
    mutates_args=(),
    schema=f"(Tensor grad_output, Tensor weight, SymInt[4] input_size, {_CONV_ARGS}) -> Tensor",
)
def conv2d_grad_input(grad_output, weight, input_size, stride, padding, dilation, groups):
    """The gradient of conv2d w.r.t. its (batched) input of size ``input_size``."""
    return _conv2d_grad_input(grad_output, weight, input_size, stride, padding, dilation, groups)


def _conv2d_grad_input(grad_output, weight, input_size, stride, padding, dilation, groups):
    memo_key, out = _replayed("conv2d_grad_input", (grad_output, weight, None), input_size, stride, padding,
                              dilation, groups)
    if out is not None:
        return out
    _refuse_tangents(grad_output, weight)
    problem = spec.problem_from_shapes(input_size, tuple(weight.shape), stride, padding, dilation, groups)
    _check_grad_output(grad_output, problem)
    return router.input_grad(grad_output, weight, problem, memory_format=_grad_input_format(grad_output, weight),
                             memo_key=memo_key)


@conv2d_grad_input.register_fake
def _(grad_output, weight, input_size, stride, padding, dilation, groups):
    problem = spec.problem_from_shapes(input_size, tuple(weight.shape), stride, padding, dilation, groups)
    _check_grad_output(grad_output, problem)
    # as the op allocates it (alloc_output): a size-1 dim's stride then matches too, which
    # new_empty(...).contiguous(memory_format) would leave as NCHW's
    return torch.empty(problem.input_shape, dtype=grad_output.dtype, device=grad_output.device,
                       memory_format=_grad_input_format(grad_output, weight))


def _grad_input_setup_context(ctx, inputs, output):
    grad_output, weight, input_size, stride, padding, dilation, groups = inputs
    ctx.save_for_backward(grad_output, weight)
    ctx.conv_args = (list(stride), list(padding), list(dilation), groups)


def _grad_input_backward(ctx, ggx):
    grad_output, weight = ctx.saved_tensors
    args = ctx.conv_args
    d_gy = d_w = None
    need_gy, need_w = _needs_grad(ctx, 2)
    if need_gy:
        d_gy = call("conv2d", (ggx, weight), ggx, weight, None, *args)
    if need_w:
        d_w = call("conv2d_grad_weight", (grad_output, ggx), grad_output, ggx, list(weight.shape), *args)
    return d_gy, d_w, None, None, None, None, None


conv2d_grad_input.register_autograd(_grad_input_backward, setup_context=_grad_input_setup_context)


# --------------------------------------------------------------------------- grad_weight (wgrad)


def _grad_weight_format(grad_output, input):
    return spec.output_memory_format(input, grad_output)


@torch.library.custom_op(
    "tritonconv::conv2d_grad_weight",
    mutates_args=(),
    schema=f"(Tensor grad_output, Tensor input, SymInt[4] weight_size, {_CONV_ARGS}) -> Tensor",
)
def conv2d_grad_weight(grad_output, input, weight_size, stride, padding, dilation, groups):
    """The gradient of conv2d w.r.t. its weight of size ``weight_size`` (deterministic).

    grad_output may lack trailing output rows / columns (they count as zero).
    """
    return _conv2d_grad_weight(grad_output, input, weight_size, stride, padding, dilation, groups)


def _conv2d_grad_weight(grad_output, input, weight_size, stride, padding, dilation, groups):
    memo_key, out = _replayed("conv2d_grad_weight", (grad_output, input), weight_size, stride, padding,
                              dilation, groups)
    if out is not None:
        return out
    _refuse_tangents(grad_output, input)
    problem = spec.problem_from_shapes(tuple(input.shape), weight_size, stride, padding, dilation, groups)
    problem = _check_grad_output(grad_output, problem, allow_cropped=True)
    return router.weight_grad(grad_output, input, problem, memory_format=_grad_weight_format(grad_output, input),
                              memo_key=memo_key)


@conv2d_grad_weight.register_fake
def _(grad_output, input, weight_size, stride, padding, dilation, groups):
    problem = spec.problem_from_shapes(tuple(input.shape), weight_size, stride, padding, dilation, groups)
    _check_grad_output(grad_output, problem, allow_cropped=True)
    return torch.empty(problem.weight_shape, dtype=grad_output.dtype, device=grad_output.device,
                       memory_format=_grad_weight_format(grad_output, input))


def _grad_weight_setup_context(ctx, inputs, output):
    grad_output, input, weight_size, stride, padding, dilation, groups = inputs
    ctx.save_for_backward(grad_output, input)
    ctx.conv_args = (list(stride), list(padding), list(dilation), groups)


def _grad_weight_backward(ctx, ggw):
    grad_output, input = ctx.saved_tensors
    args = ctx.conv_args
    d_gy = d_x = None
    need_gy, need_x = _needs_grad(ctx, 2)
    if need_gy:
        d_gy = call("conv2d", (input, ggw), input, ggw, None, *args)
    if need_x:
        d_x = call("conv2d_grad_input", (grad_output, ggw), grad_output, ggw, list(input.shape), *args)
    return d_gy, d_x, None, None, None, None, None


conv2d_grad_weight.register_autograd(_grad_weight_backward, setup_context=_grad_weight_setup_context)


# --------------------------------------------------------------------------- grad_bias


@torch.library.custom_op("tritonconv::conv2d_grad_bias", mutates_args=(), schema="(Tensor grad_output) -> Tensor")
def conv2d_grad_bias(grad_output):
    """The gradient of conv2d w.r.t. its bias: dy summed over (n, p, q)."""
    return _conv2d_grad_bias(grad_output)


def _conv2d_grad_bias(grad_output):
    _refuse_tangents(grad_output)
    return conv2d_bias_grad(grad_output)


@conv2d_grad_bias.register_fake
def _(grad_output):
    return grad_output.new_empty((grad_output.shape[1],))


def _grad_bias_setup_context(ctx, inputs, output):
    ctx.grad_output_shape = inputs[0].shape


def _grad_bias_backward(ctx, ggb):
    return ggb.view(1, -1, 1, 1).expand(ctx.grad_output_shape)


conv2d_grad_bias.register_autograd(_grad_bias_backward, setup_context=_grad_bias_setup_context)


# --------------------------------------------------------------------------- conv_transpose2d


def _transpose_problem(input, weight, bias, stride, padding, output_padding, groups, dilation):
    return spec.conv_transpose2d_problem(
        spec.as_batched(input), weight, bias, stride, padding, output_padding, groups, dilation
    )


@torch.library.custom_op(
    "tritonconv::conv_transpose2d",
    mutates_args=(),
    schema="(Tensor input, Tensor weight, Tensor? bias=None, SymInt[2] stride=1, SymInt[2] padding=0, "
    "SymInt[2] output_padding=0, SymInt groups=1, SymInt[2] dilation=1) -> Tensor",
)
def conv_transpose2d(input, weight, bias=None, stride=(1, 1), padding=(0, 0), output_padding=(0, 0),
                     groups=1, dilation=(1, 1)):
    return _conv_transpose2d(input, weight, bias, stride, padding, output_padding, groups, dilation)


def _conv_transpose2d(input, weight, bias, stride, padding, output_padding, groups, dilation):
    memo_key = out = None
    if _as_routed(input, bias):  # router.input_grad densifies a bias as router.forward does
        memo_key, out = _replayed("conv_transpose2d", (input, weight, bias), stride, padding, output_padding,
                                  groups, dilation)
    if out is not None:
        return out
    _refuse_tangents(input, weight, bias)
    problem = _transpose_problem(input, weight, bias, stride, padding, output_padding, groups, dilation)
    x = spec.as_batched(input)
    out = router.input_grad(x, weight, problem, bias=bias, memory_format=spec.output_memory_format(x, weight),
                            memo_key=memo_key)
    return _unbatch_like(out, input)


@conv_transpose2d.register_fake
def _(input, weight, bias=None, stride=(1, 1), padding=(0, 0), output_padding=(0, 0), groups=1, dilation=(1, 1)):
    problem = _transpose_problem(input, weight, bias, stride, padding, output_padding, groups, dilation)
    x = spec.as_batched(input)
    out = torch.empty(problem.input_shape, dtype=input.dtype, device=input.device,
                      memory_format=spec.output_memory_format(x, weight))
    return _unbatch_like(out, input)


def _transpose_setup_context(ctx, inputs, output):
    input, weight, bias, stride, padding, output_padding, groups, dilation = inputs
    ctx.save_for_backward(input, weight)
    ctx.has_bias = bias is not None
    ctx.conv_args = (list(stride), list(padding), list(dilation), groups)


def _transpose_backward(ctx, grad_output):
    input, weight = ctx.saved_tensors
    args = ctx.conv_args
    need_input, need_weight, need_bias = _needs_grad(ctx, 3)
    x, gy = spec.as_batched(input), spec.as_batched(grad_output)
    grad_input = grad_weight = grad_bias = None
    if need_input:
        # the forward conv of gy; output_padding can add one row/column of
        # positions that no input pixel reached, which are cut off here
        gx = call("conv2d", (gy, weight), gy, weight, None, *args)
        grad_input = _unbatch_like(gx[:, :, : x.shape[2], : x.shape[3]], input)
    if need_weight:
        # in the forward view, x is the conv's output gradient and gy its input
        grad_weight = call("conv2d_grad_weight", (x, gy), x, gy, list(weight.shape), *args)
    if need_bias and ctx.has_bias:
        grad_bias = call("conv2d_grad_bias", (gy,), gy)
    return grad_input, grad_weight, grad_bias, None, None, None, None, None


conv_transpose2d.register_autograd(_transpose_backward, setup_context=_transpose_setup_context)


# --------------------------------------------------------------------------- conv2d_fused


def _activation_grad(z: torch.Tensor, activation: str, alpha: float) -> torch.Tensor:
    """d act(z) / dz with PyTorch's own conventions at the kinks; differentiable (double backward)."""
    if activation == "relu":
        return (z > 0).to(z.dtype)
    if activation == "leaky_relu":
        return torch.where(z > 0, torch.ones_like(z), torch.full_like(z, alpha))
    if activation == "sigmoid":
        s = torch.sigmoid(z)
        return s * (1 - s)
    if activation == "silu":
        s = torch.sigmoid(z)
        return s * (1 + z * (1 - s))
    if activation == "gelu":
        cdf = 0.5 * (1 + torch.erf(z * 0.7071067811865476))
        pdf = torch.exp(-0.5 * z * z) * 0.3989422804014327
        return cdf + z * pdf
    if activation == "gelu_tanh":
        k = 0.7978845608028654
        t = torch.tanh(k * (z + 0.044715 * z * z * z))
        return 0.5 * (1 + t) + 0.5 * z * (1 - t * t) * k * (1 + 3 * 0.044715 * z * z)
    if activation == "hardswish":
        mid = z / 3 + 0.5
        return torch.where(z < -3, torch.zeros_like(z), torch.where(z <= 3, mid, torch.ones_like(z)))
    return torch.ones_like(z)


def _check_fused(input, problem, activation, residual):
    activation_code(activation)
    if residual is not None:
        expected = problem.output_shape if input.dim() == 4 else problem.output_shape[1:]
        if tuple(residual.shape) != tuple(expected):
            raise spec.ConvValueError(
                f"residual has size {list(residual.shape)}, but the convolution's output has size {list(expected)}"
            )
        if residual.dtype != input.dtype or residual.device != input.device:
            raise spec.ConvTypeError(
                f"residual ({residual.dtype}, {residual.device}) must match input ({input.dtype}, {input.device})"
            )


@torch.library.custom_op(
    "tritonconv::conv2d_fused",
    mutates_args=(),
    schema="(Tensor input, Tensor weight, Tensor? bias=None, SymInt[2] stride=1, SymInt[2] padding=0, "
    "SymInt[2] dilation=1, SymInt groups=1, str activation='none', float alpha=0.01, Tensor? residual=None) "
    "-> Tensor",
)
def conv2d_fused(input, weight, bias=None, stride=(1, 1), padding=(0, 0), dilation=(1, 1), groups=1,
                 activation="none", alpha=0.01, residual=None):
    """act(conv2d(input, weight) + bias + residual) in one kernel."""
    return _conv2d_fused(input, weight, bias, stride, padding, dilation, groups, activation, alpha, residual)


def _conv2d_fused(input, weight, bias, stride, padding, dilation, groups, activation, alpha, residual):
    memo_key = out = None
    if _as_routed(input, bias):
        memo_key, out = _replayed("conv2d_fused", (input, weight, bias, residual), stride, padding, dilation,
                                  groups, activation, alpha)
    if out is not None:
        return out
    _refuse_tangents(input, weight, bias, residual)
    problem = _problem(input, weight, bias, stride, padding, dilation, groups)
    _check_fused(input, problem, activation, residual)
    out = router.forward(spec.as_batched(input), weight, bias, problem, activation=activation, alpha=alpha,
                         residual=spec.as_batched(residual) if residual is not None else None, memo_key=memo_key)
    return _unbatch_like(out, input)


@conv2d_fused.register_fake
def _(input, weight, bias=None, stride=(1, 1), padding=(0, 0), dilation=(1, 1), groups=1,
      activation="none", alpha=0.01, residual=None):
    problem = _problem(input, weight, bias, stride, padding, dilation, groups)
    _check_fused(input, problem, activation, residual)
    fmt = spec.output_memory_format(spec.as_batched(input), weight)
    out = torch.empty(problem.output_shape, dtype=input.dtype, device=input.device, memory_format=fmt)
    return _unbatch_like(out, input)


# activations whose derivative can be read off the output, so backward needs no recompute
_GRAD_FROM_OUTPUT = {"none", "relu", "sigmoid"}


def _fused_setup_context(ctx, inputs, output):
    input, weight, bias, stride, padding, dilation, groups, activation, alpha, residual = inputs
    ctx.conv_args = (list(stride), list(padding), list(dilation), groups)
    ctx.activation, ctx.alpha = activation, alpha
    from_output = activation in _GRAD_FROM_OUTPUT or (activation == "leaky_relu" and alpha > 0)
    ctx.from_output = from_output
    ctx.has_bias, ctx.has_residual = bias is not None, residual is not None
    ctx.save_for_backward(input, weight, bias, residual, output if from_output else None)


def _fused_backward(ctx, grad_output):
    input, weight, bias, residual, output = ctx.saved_tensors
    args = ctx.conv_args
    act = ctx.activation
    if act == "none":
        gz = grad_output
    elif ctx.from_output:
        if act == "sigmoid":
            gz = grad_output * output * (1 - output)
        else:  # relu, leaky_relu with a positive slope: sign(output) == sign(z)
            gz = grad_output * _activation_grad(output, act, ctx.alpha)
    else:
        # recompute the pre-activation with tritonconv's own (differentiable) conv
        z = call("conv2d", (input, weight, bias), input, weight, bias, *args)
        if residual is not None:
            z = z + residual
        gz = grad_output * _activation_grad(z, act, ctx.alpha)
    need_input, need_weight, need_bias = _needs_grad(ctx, 3)
    need_residual = _needs_grad(ctx, 10)[9]
    x, g4 = spec.as_batched(input), spec.as_batched(gz)
    grad_input = grad_weight = grad_bias = grad_residual = None
    if need_input:
        grad_input = _unbatch_like(call("conv2d_grad_input", (g4, weight), g4, weight, list(x.shape), *args), input)
    if need_weight:
        grad_weight = call("conv2d_grad_weight", (g4, x), g4, x, list(weight.shape), *args)
    if need_bias and ctx.has_bias:
        grad_bias = call("conv2d_grad_bias", (g4,), g4)
    if need_residual and ctx.has_residual:
        grad_residual = gz
    return grad_input, grad_weight, grad_bias, None, None, None, None, None, None, grad_residual


conv2d_fused.register_autograd(_fused_backward, setup_context=_fused_setup_context)


# the implementations ``call`` runs directly, by op name
_IMPLS = {
    "conv2d": _conv2d,
    "conv2d_grad_input": _conv2d_grad_input,
    "conv2d_grad_weight": _conv2d_grad_weight,
    "conv2d_grad_bias": _conv2d_grad_bias,
    "conv_transpose2d": _conv_transpose2d,
    "conv2d_fused": _conv2d_fused,
}
# their setup_context and backward, as registered on the ops above
_AUTOGRAD = {
    "conv2d": (_conv2d_setup_context, _conv2d_backward),
    "conv2d_grad_input": (_grad_input_setup_context, _grad_input_backward),
    "conv2d_grad_weight": (_grad_weight_setup_context, _grad_weight_backward),
    "conv2d_grad_bias": (_grad_bias_setup_context, _grad_bias_backward),
    "conv_transpose2d": (_transpose_setup_context, _transpose_backward),
    "conv2d_fused": (_fused_setup_context, _fused_backward),
}


# Forward-mode AD (jvp): every op is linear in each tensor argument but the fused activation, so
# the output's tangent is the op applied to one argument's tangent at a time, the others at
# their values; the fused activation multiplies by its derivative at the pre-activation z.


def _linear_terms(op_name: str, first: int, second: int, bias: Optional[int], args, tangents, like) -> list:
    """The tangent's terms for an op linear in args[first] and in args[second] (and adding
    args[bias] per channel): the op on one argument's tangent at a time, the bias's tangent."""
    terms = []
    for i in (first, second):
        if tangents[i] is not None:
            swapped = list(args)
            swapped[i] = tangents[i]
            if bias is not None:
                swapped[bias] = None
            terms.append(call(op_name, [swapped[first], swapped[second]], *swapped))
    if bias is not None and tangents[bias] is not None:
        terms.append(_per_channel(tangents[bias], like))
    return terms


def _bilinear_jvp(op_name: str, first: int, second: int, bias: Optional[int] = None):
    """jvp of an op linear in args[first] and in args[second] (and adding args[bias] per channel)."""
    def jvp(ctx, *tangents):
        terms = _linear_terms(op_name, first, second, bias, ctx.jvp_args, tangents, ctx.jvp_out)
        return _total(terms, ctx.jvp_out)

    return jvp


def _total(terms: list, like: torch.Tensor) -> torch.Tensor:
    return sum(terms[1:], terms[0]) if terms else torch.zeros_like(like)


def _per_channel(b: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """b (channels,) broadcast over an output shaped like ``like`` ((N,) C, H, W)."""
    return b.view(-1, 1, 1).expand(like.shape[-3:]).expand_as(like)


def _grad_bias_jvp(ctx, t_grad_output):
    return call("conv2d_grad_bias", [t_grad_output], t_grad_output)


def _fused_jvp(ctx, *tangents):
    """conv2d_fused's: conv2d's tangent plus the residual's, times act'(z) at the pre-activation."""
    input, weight, bias, stride, padding, dilation, groups, activation, alpha, residual = ctx.jvp_args
    # conv2d's arguments are the first seven of conv2d_fused's
    terms = _linear_terms("conv2d", 0, 1, 2, ctx.jvp_args[:7], tangents[:7], ctx.jvp_out)
    if tangents[9] is not None:
        terms.append(tangents[9])
    t_z = _total(terms, ctx.jvp_out)
    if activation == "none":
        return t_z
    conv_args = (stride, padding, dilation, groups)
    z = call("conv2d", [input, weight, bias], input, weight, bias, *conv_args)
    if residual is not None:
        z = z + residual
    return _activation_grad(z, activation, alpha) * t_z


_JVP = {
    "conv2d": _bilinear_jvp("conv2d", 0, 1, bias=2),
    "conv2d_grad_input": _bilinear_jvp("conv2d_grad_input", 0, 1),
    "conv2d_grad_weight": _bilinear_jvp("conv2d_grad_weight", 0, 1),
    "conv2d_grad_bias": _grad_bias_jvp,
    "conv_transpose2d": _bilinear_jvp("conv_transpose2d", 0, 1, bias=2),
    "conv2d_fused": _fused_jvp,
}


def _function(op_name: str) -> type:
    """An autograd.Function computing op ``op_name`` by its implementation, with the op's autograd
    and a jvp. Its forward takes ctx and calls the setup itself: with a separate
    ``setup_context``, ``Function.apply`` binds the arguments through ``inspect.signature`` on
    every call (30 us)."""
    impl = _IMPLS[op_name]
    setup, backward = _AUTOGRAD[op_name]

    def forward(ctx, *args):
        out = impl(*args)
        setup(ctx, args, out)
        if forward_ad._current_level >= 0:  # the jvp may run: keep the values it needs
            # (a stand-in with the output's shape: output -> grad_fn -> ctx would be a cycle)
            ctx.jvp_args, ctx.jvp_out = args, out.new_zeros(()).expand(out.shape)
        return out

    return type(f"{op_name}_function", (torch.autograd.Function,), {
        "forward": staticmethod(forward),
        "backward": staticmethod(backward),
        "jvp": staticmethod(_JVP[op_name]),
    })


# what ``call`` runs where only autograd stands between a call and the implementation
_FUNCTIONS = {name: _function(name) for name in _IMPLS}


class _Static:
    """A list argument (stride, a size) passed to a ``_transform_function`` as one opaque leaf:
    torch.func's generated vmap rule for a jvp pairs the inputs' pytree leaves with the
    tangents, one per input, so a list's ints would count as inputs of their own."""

    __slots__ = ("value",)

    def __init__(self, value):
        self.value = value


def _unwrap(args) -> tuple:
    return tuple(a.value if type(a) is _Static else a for a in args)


def _transform_function(op_name: str) -> type:
    """An autograd.Function for op ``op_name`` under torch.func transforms (grad, vjp, jacrev,
    jvp, jacfwd, hessian, vmap, and their nestings). A custom op's own autograd cannot serve
    there: torch.func wants an autograd.Function with a separate ``setup_context``, which
    ``register_autograd`` does not generate (pytorch/pytorch#168393, #179652). The forward runs
    the op (below the transforms' levels: plain tensors, or vmap's batched ones, which the op's
    batching rule takes, see "vmap" below); setup_context, backward and jvp are the op's own,
    whose ops come back here; vmap rules are generated from them. List arguments arrive as
    ``_Static``."""
    setup, backward = _AUTOGRAD[op_name]
    op = getattr(torch.ops.tritonconv, op_name)

    def forward(*args):
        return op(*_unwrap(args))

    def setup_context(ctx, inputs, output):
        inputs = _unwrap(inputs)
        setup(ctx, inputs, output)
        # what the jvp reads, through save_for_forward (torch.func re-batches only saved tensors):
        # the tensor arguments, and the others as they are
        where = [i for i, a in enumerate(inputs) if isinstance(a, torch.Tensor)]
        ctx.save_for_forward(*(inputs[i] for i in where))
        ctx.jvp_where, ctx.jvp_shape = where, tuple(output.shape)
        ctx.jvp_static = tuple(None if isinstance(a, torch.Tensor) else a for a in inputs)

    def jvp(ctx, *tangents):
        args = list(ctx.jvp_static)
        saved = ctx.saved_tensors
        for i, t in zip(ctx.jvp_where, saved):
            args[i] = t
        ctx.jvp_args, ctx.jvp_out = tuple(args), saved[0].new_zeros(()).expand(ctx.jvp_shape)
        return _JVP[op_name](ctx, *tangents)

    return type(f"{op_name}_transform_function", (torch.autograd.Function,), {
        "forward": staticmethod(forward),
        "setup_context": staticmethod(setup_context),
        "backward": staticmethod(backward),
        "jvp": staticmethod(jvp),
        "generate_vmap_rule": True,
    })


_TRANSFORM_FUNCTIONS = {name: _transform_function(name) for name in _IMPLS}


# --------------------------------------------------------------------------- vmap
#
# torch.func.vmap (model ensembles, per-sample gradients through vmap of grad) calls the ops on
# batched tensors. Without a rule, PyTorch runs them once per sample and warns of the slowdown.
# These rules run one call instead:
#   - the batch folded into N, where only the activations carry it;
#   - the batch folded into the groups, where the weight (or bias) carries it: sample b's
#     channels become groups b*groups ... (b+1)*groups - 1 of one grouped conv.
# The rules run with vmap's level still on functorch's stack (only its batching key excluded),
# where ``call`` would take the transform Function: they call the ops through the dispatcher.


def _op(name: str):
    return getattr(torch.ops.tritonconv, name)


def _first(t: Optional[torch.Tensor], dim: Optional[int], size: int) -> Optional[torch.Tensor]:
    """``t`` with its vmapped dimension first; a tensor without one, expanded to ``size``."""
    if t is None:
        return None
    return t.movedim(dim, 0) if dim is not None else t.expand(size, *t.shape)


def _fold_n(t: torch.Tensor) -> torch.Tensor:
    """(B, N, ...) -> (B*N, ...)."""
    return t.reshape(t.shape[0] * t.shape[1], *t.shape[2:])


def _fold_channels(t: torch.Tensor) -> torch.Tensor:
    """(B, N, C, H, W) -> (N, B*C, H, W): sample b's channels at b*C ... (b+1)*C - 1, in
    channels_last (the copy this takes is made in the layout the kernels prefer)."""
    B, N, C, H, W = t.shape
    return t.permute(1, 3, 4, 0, 2).reshape(N, H, W, B * C).permute(0, 3, 1, 2)


def _samples_as(y: torch.Tensor, fmt: torch.memory_format) -> torch.Tensor:
    """(B, N, C, H, W) with each sample dense in ``fmt``: as the unbatched op lays out its result
    (a sample of a folded call's result is neither format, and ``.view`` fails on it; F.conv2d's
    own vmap rule leaves it so). No copy where the samples are so already."""
    if fmt == torch.channels_last:
        return y.permute(0, 1, 3, 4, 2).contiguous().permute(0, 1, 4, 2, 3)
    return y.contiguous()


def _unfold_samples(y: torch.Tensor, B: int, fmt: torch.memory_format) -> torch.Tensor:
    """(N, B*K, ...) from a folded-channels call -> (B, N, K, ...), each sample dense in ``fmt``."""
    return _samples_as(y.unflatten(1, (B, y.shape[1] // B)).movedim(1, 0), fmt)


def _dims(in_dims, count: int) -> tuple:
    """The first ``count`` of ``in_dims`` (None for arguments left at their default)."""
    return (tuple(in_dims) + (None,) * count)[:count]


def _vmap_conv(B: int, dims: tuple, input, weight, bias, run, residual=None, bias_apart_ok: bool = True):
    """One call, not B, of a conv op on batched tensors; ``dims`` are the vmapped dimensions of
    (input, weight, bias, residual), ``run(x, w, b, residual, m)`` calls the op with m times its
    groups. The per-sample input is 3-D (C, H, W) or 4-D (N, C, H, W). Returns (output, 0)."""
    xd, wd, bd, rd = _dims(dims, 4)
    x = _first(input, xd, B)
    per_sample_3d = x.dim() == 4
    # per-sample biases alone, where nothing nonlinear follows them: the shared weight's one
    # conv, and each sample's bias added to its images
    bias_apart = wd is None and bd is not None and bias_apart_ok
    if wd is None and (bd is None or bias_apart):
        # one conv over the samples' images: (B, N, C, H, W) as (B*N, C, H, W)
        fold = (lambda t: t) if per_sample_3d else _fold_n
        r = None if residual is None else fold(_first(residual, rd, B))
        y = run(fold(x), weight, None if bias_apart else bias, r, 1)
        if not per_sample_3d:
            y = _samples_as(y.unflatten(0, (B, x.shape[1])), spec.output_memory_format(x[0], weight))
        if bias_apart:
            b = _first(bias, bd, B)
            y = y + b.view(B, *(() if per_sample_3d else (1,)), b.shape[1], 1, 1)
        return y, 0
    # per-sample weights: one grouped conv with B times the groups
    r = None if residual is None else _first(residual, rd, B)
    if per_sample_3d:
        x, r = x.unsqueeze(1), None if r is None else r.unsqueeze(1)
    w, b = _first(weight, wd, B), _first(bias, bd, B)
    y = run(_fold_channels(x), w.flatten(0, 1), None if b is None else b.flatten(),
            None if r is None else _fold_channels(r), B)
    y = _unfold_samples(y, B, spec.output_memory_format(x[0], w[0]))  # (B, N, K, P, Q)
    return (y.squeeze(1) if per_sample_3d else y), 0


@conv2d.register_vmap
def _(info, in_dims, input, weight, bias=None, stride=(1, 1), padding=(0, 0), dilation=(1, 1), groups=1):
    return _vmap_conv(info.batch_size, _dims(in_dims, 3), input, weight, bias,
                      lambda x, w, b, r, m: _op("conv2d")(x, w, b, stride, padding, dilation, groups * m))


@conv2d_fused.register_vmap
def _(info, in_dims, input, weight, bias=None, stride=(1, 1), padding=(0, 0), dilation=(1, 1), groups=1,
      activation="none", alpha=0.01, residual=None):
    dims = _dims(in_dims, 10)
    return _vmap_conv(info.batch_size, dims[:3] + dims[9:], input, weight, bias,
                      lambda x, w, b, r, m: _op("conv2d_fused")(x, w, b, stride, padding, dilation, groups * m,
                                                                activation, alpha, r),
                      residual, bias_apart_ok=activation == "none")


@conv_transpose2d.register_vmap
def _(info, in_dims, input, weight, bias=None, stride=(1, 1), padding=(0, 0), output_padding=(0, 0), groups=1,
      dilation=(1, 1)):
    # per-sample weights are (C_in, C_out / groups, R, S) each: folded as conv2d's are
    return _vmap_conv(info.batch_size, _dims(in_dims, 3), input, weight, bias,
                      lambda x, w, b, r, m: _op("conv_transpose2d")(x, w, b, stride, padding, output_padding,
                                                                    groups * m, dilation))


@conv2d_grad_input.register_vmap
def _(info, in_dims, grad_output, weight, input_size, stride, padding, dilation, groups):
    # a conv of grad_output with the weight: batched as the forward is, its input's size following
    _, C, H, W = input_size
    return _vmap_conv(info.batch_size, _dims(in_dims, 2), grad_output, weight, None,
                      lambda dy, w, b, r, m: _op("conv2d_grad_input")(dy, w, [dy.shape[0], m * C, H, W], stride,
                                                                      padding, dilation, groups * m))


@conv2d_grad_weight.register_vmap
def _(info, in_dims, grad_output, input, weight_size, stride, padding, dilation, groups):
    # per-sample gradients: sample b's weight gradient is group block b of one grouped wgrad
    B = info.batch_size
    gd, xd = _dims(in_dims, 7)[:2]
    dy, x = _first(grad_output, gd, B), _first(input, xd, B)
    K, Cg, R, S = weight_size
    dw = _op("conv2d_grad_weight")(_fold_channels(dy), _fold_channels(x), [B * K, Cg, R, S], stride, padding,
                                   dilation, groups * B)
    return _samples_as(dw.unflatten(0, (B, K)), _grad_weight_format(dy[0], x[0])), 0


@conv2d_grad_bias.register_vmap
def _(info, in_dims, grad_output):
    B = info.batch_size
    dy = _first(grad_output, in_dims[0], B)  # (B, N, K, P, Q)
    dys = _fold_channels(dy)
    return _op("conv2d_grad_bias")(dys).unflatten(0, (B, dy.shape[2])), 0


# --------------------------------------------------------------------------- autocast

_AUTOCAST_OPS = ("conv2d", "conv2d_fused", "conv_transpose2d")
_autocast_lib = torch.library.Library("tritonconv", "FRAGMENT")


def _register_autocast(opname: str, device_type: str) -> None:
    """Cast floating inputs to the autocast dtype, as aten's conv does under autocast.

    torch.library.register_autocast fixes one dtype at registration; aten's
    convs follow whatever dtype the active ``torch.autocast`` asks for, so this
    reads it at call time. Like aten, float64 tensors are left alone.
    """
    key = "Autocast" + torch._C._dispatch_key_for_device(device_type)
    dispatch_key = getattr(torch._C.DispatchKey, key)
    op = getattr(torch.ops.tritonconv, opname).default

    def cast(value, dtype):
        if (isinstance(value, torch.Tensor) and value.is_floating_point() and value.dtype != torch.float64
                and value.device.type == device_type):
            return value.to(dtype)
        return value

    def autocast_impl(*args):
        dtype = torch.get_autocast_dtype(device_type)
        with torch._C._ExcludeDispatchKeyGuard(torch._C.DispatchKeySet(dispatch_key)):
            return op(*(cast(a, dtype) for a in args))

    if op.has_kernel_for_dispatch_key(dispatch_key):
        op.py_kernels.pop(dispatch_key, None)
    op.py_impl(dispatch_key)(autocast_impl)  # seen by torch.compile's Python dispatcher
    _autocast_lib.impl(opname, lambda _keyset, *args: autocast_impl(*args), key, with_keyset=True)


for _name in _AUTOCAST_OPS:
    for _device in ("cuda", "cpu"):
        _register_autocast(_name, _device)


# --------------------------------------------------------------------------- decompositions


def torch_activation(y: torch.Tensor, activation: str, slope: float) -> torch.Tensor:
    """The epilogue's activations in plain PyTorch: for ``aten_decompositions``, and for the
    modules' unfused fallback (TorchScript compiles it too)."""
    if activation == "none":
        return y
    if activation == "relu":
        return torch.nn.functional.relu(y)
    if activation == "silu":
        return torch.nn.functional.silu(y)
    if activation == "gelu":
        return torch.nn.functional.gelu(y)
    if activation == "gelu_tanh":
        return torch.nn.functional.gelu(y, approximate="tanh")
    if activation == "leaky_relu":
        return torch.nn.functional.leaky_relu(y, slope)
    if activation == "hardswish":
        return torch.nn.functional.hardswish(y)
    if activation == "sigmoid":
        return torch.sigmoid(y)
    raise ValueError("unknown activation " + activation)


def _aten_conv2d(input, weight, bias=None, stride=(1, 1), padding=(0, 0), dilation=(1, 1), groups=1):
    return torch.ops.aten.conv2d.default(input, weight, bias, stride, padding, dilation, groups)


def _aten_conv2d_fused(input, weight, bias=None, stride=(1, 1), padding=(0, 0), dilation=(1, 1), groups=1,
                       activation="none", alpha=0.01, residual=None):
    y = torch.ops.aten.conv2d.default(input, weight, bias, stride, padding, dilation, groups)
    return torch_activation(y if residual is None else y + residual, activation, alpha)


def _aten_conv_transpose2d(input, weight, bias=None, stride=(1, 1), padding=(0, 0), output_padding=(0, 0),
                           groups=1, dilation=(1, 1)):
    return torch.ops.aten.conv_transpose2d.input(input, weight, bias, stride, padding, output_padding, groups,
                                                 dilation)


def aten_decompositions() -> dict:
    """``torch.ops.tritonconv``'s forward ops written as aten's (``conv2d``, ``conv2d_fused``'s conv,
    add and activation, ``conv_transpose2d``), for ``ExportedProgram.run_decompositions``: a
    program exported from a converted model then has aten convolutions only, for what takes
    those and not Python custom ops (``torch.onnx.export``, AOTInductor, ExecuTorch)::

        ep = torch.export.export(tritonconv.convert(model).eval(), (x,))
        ep = ep.run_decompositions(tritonconv.ops.aten_decompositions())

    The backward ops (``conv2d_grad_*``) stay: an exported training graph keeps them."""
    ops = torch.ops.tritonconv
    return {ops.conv2d.default: _aten_conv2d, ops.conv2d_fused.default: _aten_conv2d_fused,
            ops.conv_transpose2d.default: _aten_conv_transpose2d}
