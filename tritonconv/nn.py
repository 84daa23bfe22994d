"""Modules and model conversion.

``Conv2d`` and ``ConvTranspose2d`` subclass the torch.nn modules: same
constructor, same parameters, same state_dict keys, so checkpoints move
between them unchanged. ``convert(model)`` swaps a model's convs for them in
place; ``convert(model, fuse=True)`` also folds eval-mode BatchNorm into the
conv and fuses a following activation and residual add into its epilogue.
"""

from __future__ import annotations

import contextlib
import operator
import warnings
from typing import Dict, List, Optional, Tuple

import torch
import torch.autograd.forward_ad as forward_ad
import torch.nn.functional as F
from torch.multiprocessing.reductions import StorageWeakRef

from . import functional, spec
from .ops import torch_activation
from .kernels import depthwise, dgrad
from .kernels._common import INTERPRETER, content_state

__all__ = ["Conv2d", "ConvTranspose2d", "convert", "forget_packed_weights"]


class Conv2d(torch.nn.Conv2d):
    """``torch.nn.Conv2d`` computed by tritonconv, with an optional fused epilogue.

    ``forward(input, residual=None)`` returns ``act(conv(input) + bias + residual)``;
    ``activation`` (None by default) and ``negative_slope`` are plain attributes,
    set by ``convert(fuse=True)`` or by hand. Every ``padding_mode`` works.
    """

    activation: Optional[str] = None
    negative_slope: float = 0.01
    # TorchScript reads these once, when it compiles the module (class defaults included)
    __constants__ = list(torch.nn.Conv2d.__constants__) + ["activation", "negative_slope"]

    def forward(self, input: torch.Tensor, residual: Optional[torch.Tensor] = None) -> torch.Tensor:
        if torch.jit.is_scripting():
            return self._scripted_forward(input, residual)
        padding = self.padding
        if self.padding_mode != "zeros":
            input = F.pad(input, self._reversed_padding_repeated_twice, mode=self.padding_mode)
            padding = 0
        args = (self.stride, padding, self.dilation, self.groups)
        weight = self._kernel_weight(input)
        if residual is not None:
            out_shape = _output_shape(input, self.weight, args)
            if torch.broadcast_shapes(residual.shape, out_shape) != out_shape:
                # the add would broadcast the conv's output itself: not an epilogue
                y = functional.conv2d(input, weight, self.bias, *args) + residual
                activation = "none" if self.activation is None else self.activation
                return torch_activation(y, activation, self.negative_slope)
        # a residual that broadcasts to the output is expanded by functional.conv2d
        return functional.conv2d(
            input, weight, self.bias, *args,
            activation=self.activation, residual=residual, negative_slope=self.negative_slope,
        )

    def _scripted_forward(self, input: torch.Tensor, residual: Optional[torch.Tensor]) -> torch.Tensor:
        """``forward`` as TorchScript compiles it (``torch.jit.script``; eager calls never come here):
        the registered ops, called the way ``functional.conv2d`` calls them, with the weight as it
        is (no packed copy is kept: the kernels take any strides, some families only a KRSC weight)."""
        pads = self._reversed_padding_repeated_twice  # (left, right, top, bottom), string padding resolved
        padding = [pads[2], pads[0]]
        if self.padding_mode != "zeros":
            input = F.pad(input, pads, mode=self.padding_mode)
            padding = [0, 0]
        elif pads[1] != pads[0] or pads[3] != pads[2]:
            # 'same' with an even effective kernel: the extra row / column goes at the bottom / right
            input = F.pad(input, [0, pads[1] - pads[0], 0, pads[3] - pads[2]])
        activation = "none"
        if self.activation is not None:  # a constant: TorchScript compiles one branch
            activation = self.activation
        if residual is None and activation == "none":
            return torch.ops.tritonconv.conv2d(input, self.weight, self.bias, self.stride, padding, self.dilation,
                                               self.groups)
        if residual is not None:
            out_shape = _scripted_output_shape(input, self.weight, self.stride, padding, self.dilation)
            if not _broadcasts_to(residual.shape, out_shape):
                # the add would broadcast the conv's output itself: not an epilogue
                y = torch.ops.tritonconv.conv2d(input, self.weight, self.bias, self.stride, padding, self.dilation,
                                                self.groups) + residual
                return torch_activation(y, activation, self.negative_slope)
            residual = residual.expand(out_shape)
        return torch.ops.tritonconv.conv2d_fused(input, self.weight, self.bias, self.stride, padding, self.dilation,
                                                 self.groups, activation, float(self.negative_slope), residual)

    def __getstate__(self):
        # the packed weight is the module's cache, not its state: torch.save, pickle and deepcopy
        # leave it out (its StorageWeakRef cannot be copied), and the copy packs on first use
        state = super().__getstate__()  # torch.nn.Module's: leaves out what module.compile() set
        state.pop("_packed_weight", None)
        return state

    def _kernel_weight(self, input: torch.Tensor) -> torch.Tensor:
        """The weight as the kernels like it, packed once per parameter version: KRSC
        (channels_last), or taps-major for a depthwise layer (``depthwise.pack_weight``).

        Only for channels_last input, whose output is channels_last anyway, so
        packing never changes the output's memory format. In training (the
        weight needs a gradient) the pack is part of the graph and happens once
        per forward, i.e. once per step; otherwise it is cached until the
        parameter changes (``_common.content_state``: its version counter, its storage, which
        ``weight.data = ...`` and ``module.to()`` swap, its view and the stream) or is replaced.
        Not seen: in-place writes through ``weight.data`` (``w.data.mul_(2)``: ``.data`` has a
        version counter of its own); after such a write, call ``forget_packed_weights(model)``.
        """
        w = self.weight
        if torch._C._functorch.peek_interpreter_stack() is not None:
            return w  # under torch.func (vmap cannot ask for a memory format); any strides work
        pack = _packing(w, input, self.groups)
        if pack is None:
            return w
        if (torch.compiler.is_compiling() or (torch.is_grad_enabled() and w.requires_grad)
                or (forward_ad._current_level >= 0 and forward_ad.unpack_dual(w).tangent is not None)):
            return pack(w)  # part of the graph: gradients and tangents flow through the pack
        state = content_state(w)
        if state is None:  # an inference tensor, or a CUDA graph capture: nothing is kept
            return pack(w.detach())
        state += (pack,)
        cached = self.__dict__.get("_packed_weight")
        if cached is not None and cached[0] is w and not cached[1].expired() and cached[2] == state:
            return cached[3]
        # a normal tensor even when made under torch.inference_mode: a later call with autograd
        # on (a frozen layer in training) saves it for backward, which an inference tensor refuses
        with torch.inference_mode(False):
            packed = pack(w.detach())
        self.__dict__["_packed_weight"] = (w, StorageWeakRef(w.untyped_storage()), state, packed)
        return packed

    def extra_repr(self) -> str:
        s = super().extra_repr()
        if self.activation is not None:
            s += f", activation={self.activation!r}"
            if self.activation == "leaky_relu":
                s += f", negative_slope={self.negative_slope}"
        return s


class ConvTranspose2d(torch.nn.ConvTranspose2d):
    """``torch.nn.ConvTranspose2d`` computed by tritonconv (forward is the dgrad kernel)."""

    def _apply(self, fn, *args, **kwargs):
        # .to() / .cuda() / .half(): the weights built from the old tensor are dropped now,
        # not held (on the old device) until the next call notices
        dgrad.forget_phase_weights(self.weight)
        return super()._apply(fn, *args, **kwargs)

    def forward(self, input: torch.Tensor, output_size: Optional[List[int]] = None) -> torch.Tensor:
        if self.padding_mode != "zeros":
            raise ValueError("Only 'zeros' padding mode is supported for ConvTranspose2d")
        output_padding = self._output_padding(
            input, output_size, self.stride, self.padding, self.kernel_size, 2, self.dilation
        )
        if torch.jit.is_scripting():  # TorchScript: the registered op, nothing kept between calls
            return torch.ops.tritonconv.conv_transpose2d(input, self.weight, self.bias, self.stride, self.padding,
                                                         output_padding, self.groups, self.dilation)
        # Where the weight cannot change under the call (inference), the kernels keep what they
        # build from it until its version moves; in training they rebuild it per step.
        w = self.weight
        pack_once = not torch.compiler.is_compiling() and not (torch.is_grad_enabled() and w.requires_grad)
        if not pack_once:
            dgrad.forget_phase_weights(w)  # training: what inference kept is stale by the next step
        with dgrad.cached_phase_weights() if pack_once else contextlib.nullcontext():
            return functional.conv_transpose2d(
                input, w, self.bias, self.stride, self.padding, output_padding, self.groups, self.dilation
            )


def forget_packed_weights(model: torch.nn.Module) -> None:
    """Drop what every tritonconv module in ``model`` keeps built from its weight (the packed
    weight, the transposed conv's phase weights): after in-place writes through ``weight.data``,
    which no version counter sees. The next call builds them again."""
    for m in model.modules():
        if isinstance(m, Conv2d):
            m.__dict__.pop("_packed_weight", None)
        elif isinstance(m, ConvTranspose2d):
            dgrad.forget_phase_weights(m.weight)


def _channels_last(w: torch.Tensor) -> torch.Tensor:
    return w.contiguous(memory_format=torch.channels_last)


def _packing(weight: torch.Tensor, input: torch.Tensor, groups: int):
    """How Conv2d packs ``weight`` for ``input`` (a function of the weight), or None: the weight
    is fine as it is, or the input is not channels_last (see ``Conv2d._kernel_weight``)."""
    if input.dim() != 4 or not input.is_contiguous(memory_format=torch.channels_last):
        return None
    if depthwise.accepts_layer(input.shape[1], groups, weight.shape[2], weight.shape[3]):
        return None if depthwise.is_packed(weight) else depthwise.pack_weight
    return None if weight.is_contiguous(memory_format=torch.channels_last) else _channels_last


def inference_weight(weight: torch.Tensor, input: torch.Tensor, groups: int = 1) -> torch.Tensor:
    """``weight`` as a ``Conv2d`` keeps it for inference on ``input`` (packed, or as it is): what a
    benchmark of the module's forward should pass to ``tritonconv.functional.conv2d``."""
    pack = _packing(weight, input, groups)
    return weight if pack is None else pack(weight.detach())


def _output_shape(input, weight, args) -> Tuple[int, ...]:
    pb = spec.conv2d_problem(spec.as_batched(input), weight, None, *args)
    return pb.output_shape if input.dim() == 4 else pb.output_shape[1:]


def _scripted_output_shape(input: torch.Tensor, weight: torch.Tensor, stride: List[int], padding: List[int],
                           dilation: List[int]) -> List[int]:
    """The conv's output size, in TorchScript (``_output_shape`` validates the problem too)."""
    shape: List[int] = [input.shape[0]] if input.dim() == 4 else []
    shape.append(weight.shape[0])
    for i in range(2):
        shape.append(spec._out_size(input.shape[input.dim() - 2 + i], padding[i], padding[i], weight.shape[2 + i],
                                    stride[i], dilation[i]))
    return shape


def _broadcasts_to(shape: List[int], target: List[int]) -> bool:
    """Whether ``torch.broadcast_shapes(shape, target) == target`` (in TorchScript)."""
    if len(shape) > len(target):
        return False
    for i in range(1, len(shape) + 1):
        if shape[-i] != 1 and shape[-i] != target[-i]:
            return False
    return True


_SWAPS = {torch.nn.Conv2d: Conv2d, torch.nn.ConvTranspose2d: ConvTranspose2d}


def _why_unservable(module: torch.nn.Module) -> Optional[str]:
    w = module.weight
    if w.dtype not in spec.SUPPORTED_DTYPES:
        return f"dtype {w.dtype} is not supported"
    if w.device.type != "cuda" and not INTERPRETER:
        return f"its weight is on {w.device} (tritonconv needs CUDA, or TRITON_INTERPRET=1 for the CPU)"
    if w.device.type == "meta":
        return "its weight is on the meta device"
    return None


def _swap_convs(model: torch.nn.Module) -> torch.nn.Module:
    """Swap the class of every exact torch.nn.Conv2d / ConvTranspose2d, keeping its parameters."""
    skipped = []
    for name, module in model.named_modules():
        new_cls = _SWAPS.get(type(module))
        if new_cls is None:
            continue
        why = _why_unservable(module)
        if why:
            skipped.append(f"{name or '<root>'} ({why})")
            continue
        module.__class__ = new_cls  # same object, same parameters, hooks and state_dict
    if skipped:
        warnings.warn("tritonconv.convert left these modules unconverted: " + "; ".join(skipped), stacklevel=3)
    return model


def convert(model: torch.nn.Module, *, fuse: bool = False) -> torch.nn.Module:
    """Run a model's convolutions on tritonconv.

    Every ``torch.nn.Conv2d`` and ``torch.nn.ConvTranspose2d`` (exact types;
    subclasses are user code and stay as they are) becomes a tritonconv module
    in place, sharing its parameters. Modules tritonconv cannot serve (an
    unsupported dtype, a CPU weight without the interpreter) stay untouched,
    with a warning naming them.

    ``fuse=True`` is for inference. It traces the model with torch.fx and
    rewrites ``conv -> [eval BatchNorm2d] -> [+ residual] -> [activation]``
    chains into one fused conv: BatchNorm folded into weight and bias, the
    residual add and ReLU / SiLU / GELU / LeakyReLU / Hardswish / Sigmoid in
    the epilogue. It returns the rewritten ``torch.fx.GraphModule`` (use the
    return value). If the model cannot be traced, it fuses by module order
    inside ``nn.Sequential`` containers instead, where that order is exact.
    """
    if not fuse:
        return _swap_convs(model)
    if model.training:
        warnings.warn("convert(fuse=True) is for inference; BatchNorm in training mode is not folded", stacklevel=2)
    try:
        gm = torch.fx.symbolic_trace(model)
    except Exception as err:  # dynamic control flow and friends
        warnings.warn(f"torch.fx could not trace the model ({type(err).__name__}: {err}); "
                      "fusing by module order inside nn.Sequential only", stacklevel=2)
        _fuse_sequentials(model)
        return _swap_convs(model)
    _fuse_graph(gm)
    return _swap_convs(gm)


# --------------------------------------------------------------------------- fusion helpers

_ACT_MODULES = {
    torch.nn.ReLU: "relu", torch.nn.SiLU: "silu", torch.nn.GELU: "gelu", torch.nn.LeakyReLU: "leaky_relu",
    torch.nn.Hardswish: "hardswish", torch.nn.Sigmoid: "sigmoid",
}
_ACT_FUNCTIONS = {
    F.relu: "relu", torch.relu: "relu", F.silu: "silu", F.gelu: "gelu", F.leaky_relu: "leaky_relu",
    F.hardswish: "hardswish", torch.sigmoid: "sigmoid", F.sigmoid: "sigmoid",
}
_ACT_METHODS = {"relu": "relu", "relu_": "relu", "sigmoid": "sigmoid", "sigmoid_": "sigmoid"}
_ADDS = {operator.add, operator.iadd, torch.add}


def _module_activation(module: torch.nn.Module) -> Optional[Tuple[str, float]]:
    name = _ACT_MODULES.get(type(module))
    if name is None:
        return None
    if name == "gelu" and getattr(module, "approximate", "none") == "tanh":
        name = "gelu_tanh"
    return name, float(getattr(module, "negative_slope", 0.01))


def _node_activation(node: torch.fx.Node, modules: Dict[str, torch.nn.Module]) -> Optional[Tuple[str, float]]:
    """(activation, slope) if ``node`` applies a supported activation to its first argument."""
    if node.op == "call_module":
        module = modules.get(node.target)
        return _module_activation(module) if module is not None else None
    if node.op == "call_function" and node.target in _ACT_FUNCTIONS:
        name = _ACT_FUNCTIONS[node.target]
        extra = list(node.args[1:]) + [v for k, v in node.kwargs.items() if k != "inplace"]
        if name == "leaky_relu":
            slope = node.kwargs.get("negative_slope", node.args[1] if len(node.args) > 1 else 0.01)
            return (name, float(slope)) if isinstance(slope, (int, float)) else None
        if name == "gelu":
            approx = node.kwargs.get("approximate", node.args[1] if len(node.args) > 1 else "none")
            return ("gelu_tanh" if approx == "tanh" else "gelu", 0.01) if approx in ("none", "tanh") else None
        if any(not isinstance(v, bool) for v in extra):
            return None
        return name, 0.01
    if node.op == "call_method" and node.target in _ACT_METHODS and len(node.args) == 1:
        return _ACT_METHODS[node.target], 0.01
    return None


def _fold_batchnorm(conv: torch.nn.Conv2d, bn: torch.nn.BatchNorm2d) -> Tuple[torch.Tensor, torch.Tensor]:
    """Weight and bias of conv followed by eval-mode bn, computed in float64."""
    w = conv.weight.detach().double()
    b = conv.bias.detach().double() if conv.bias is not None else torch.zeros(w.shape[0], dtype=torch.float64,
                                                                               device=w.device)
    mean, var = bn.running_mean.double(), bn.running_var.double()
    gamma = bn.weight.detach().double() if bn.weight is not None else torch.ones_like(mean)
    beta = bn.bias.detach().double() if bn.bias is not None else torch.zeros_like(mean)
    scale = gamma / torch.sqrt(var + bn.eps)
    return (w * scale.view(-1, 1, 1, 1)).to(conv.weight.dtype), ((b - mean) * scale + beta).to(conv.weight.dtype)


def _fused_module(conv: torch.nn.Conv2d, bn: Optional[torch.nn.BatchNorm2d], act: Optional[Tuple[str, float]]):
    fused = Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                   conv.dilation, conv.groups, bias=conv.bias is not None or bn is not None,
                   padding_mode=conv.padding_mode, device="meta")
    if bn is not None:
        weight, bias = _fold_batchnorm(conv, bn)
        fused.weight = torch.nn.Parameter(weight, requires_grad=False)
        fused.bias = torch.nn.Parameter(bias, requires_grad=False)
    else:
        fused.weight = conv.weight
        fused.bias = conv.bias
    if act is not None:
        fused.activation, fused.negative_slope = act
    return fused


def _foldable_bn(module) -> bool:
    return (isinstance(module, torch.nn.BatchNorm2d) and not module.training
            and module.track_running_stats and module.running_mean is not None)


def _fuse_graph(gm: torch.fx.GraphModule) -> None:
    modules = dict(gm.named_modules())
    for node in list(gm.graph.nodes):
        if node.op != "call_module" or type(modules.get(node.target)) is not torch.nn.Conv2d:
            continue
        conv = modules[node.target]
        if _why_unservable(conv):
            continue
        tail, bn, residual, act = node, None, None, None
        users = list(tail.users)
        if len(users) == 1 and users[0].op == "call_module" and _foldable_bn(modules.get(users[0].target)):
            bn, tail = modules[users[0].target], users[0]
            users = list(tail.users)
        if (len(users) == 1 and users[0].op == "call_function" and users[0].target in _ADDS
                and len(users[0].args) == 2 and not users[0].kwargs):
            other = [a for a in users[0].args if a is not tail]
            if len(other) == 1 and isinstance(other[0], torch.fx.Node):
                residual, tail = other[0], users[0]
                users = list(tail.users)
        if len(users) == 1:
            act = _node_activation(users[0], modules)
            if act is not None:
                tail = users[0]
        if tail is node:
            continue  # a lone conv: _swap_convs converts it
        fused = _fused_module(conv, bn, act)
        name = node.target.replace(".", "_") + "_fused"
        gm.add_submodule(name, fused)
        modules[name] = fused
        with gm.graph.inserting_after(tail):
            new = gm.graph.call_module(name, (node.args[0],) if residual is None else (node.args[0], residual))
        tail.replace_all_uses_with(new)
        gm.graph.eliminate_dead_code()
    gm.graph.lint()
    gm.recompile()
    gm.delete_all_unused_submodules()


def _fuse_sequentials(model: torch.nn.Module) -> None:
    """Module-order fusion inside nn.Sequential: conv [bn] [act] -> one fused conv."""
    for seq in [m for m in model.modules() if isinstance(m, torch.nn.Sequential)]:
        names = list(seq._modules)
        i = 0
        while i < len(names):
            conv = seq._modules[names[i]]
            if type(conv) is not torch.nn.Conv2d or _why_unservable(conv):
                i += 1
                continue
            j, bn, act = i + 1, None, None
            if j < len(names) and _foldable_bn(seq._modules[names[j]]):
                bn, j = seq._modules[names[j]], j + 1
            if j < len(names) and _module_activation(seq._modules[names[j]]) is not None:
                act, j = _module_activation(seq._modules[names[j]]), j + 1
            if bn is not None or act is not None:
                seq._modules[names[i]] = _fused_module(conv, bn, act)
                for k in range(i + 1, j):
                    seq._modules[names[k]] = torch.nn.Identity()
            i = j

