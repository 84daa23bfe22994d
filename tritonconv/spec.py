"""The conv problem: argument normalisation, output size and validation.

Every public entry point (the torch ops, their fake implementations, the
functional wrappers, the modules) goes through this module once, before any
kernel launch. Kernels and launchers receive a validated :class:`Conv2dProblem`
and never re-check or re-derive sizes.

Errors mirror ``torch.nn.functional.conv2d``: the same conditions are rejected,
with messages that say what is wrong. The exception classes subclass both the
Pythonic type (``ValueError`` / ``TypeError``) and ``RuntimeError`` (what
PyTorch raises), so callers catching either keep working.
"""

from __future__ import annotations

import functools

from dataclasses import dataclass
from typing import Optional, Sequence, Tuple, Union

import torch

__all__ = [
    "ConvValueError",
    "ConvTypeError",
    "Conv2dProblem",
    "SUPPORTED_DTYPES",
    "pair",
    "resolve_padding",
    "conv2d_problem",
    "problem_from_shapes",
    "conv_transpose2d_problem",
    "output_memory_format",
    "as_batched",
    "check_argument_types",
]

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)

IntPair = Union[int, Sequence[int]]


class ConvValueError(ValueError, RuntimeError):
    """A conv argument has an invalid value (shape, size, padding, ...)."""


class ConvTypeError(TypeError, RuntimeError):
    """A conv argument has an unsupported type or dtype, or devices disagree."""


@dataclass(frozen=True)
class Conv2dProblem:
    """One 2-D convolution, in the forward (fprop) view.

    ``x`` is (N, C, H, W), ``w`` is (K, C // groups, R, S), ``y`` is (N, K, P, Q).
    ``pad_h`` / ``pad_w`` are the top / left padding; the bottom / right padding
    is implied by P and Q (it may be one larger, for 'same' with an even kernel).
    """

    N: int
    C: int
    H: int
    W: int
    K: int
    R: int
    S: int
    P: int
    Q: int
    stride_h: int
    stride_w: int
    pad_h: int
    pad_w: int
    dil_h: int
    dil_w: int
    groups: int

    @property
    def C_per_group(self) -> int:
        return self.C // self.groups

    @property
    def K_per_group(self) -> int:
        return self.K // self.groups

    @property
    def input_shape(self) -> Tuple[int, int, int, int]:
        return (self.N, self.C, self.H, self.W)

    @property
    def weight_shape(self) -> Tuple[int, int, int, int]:
        return (self.K, self.C_per_group, self.R, self.S)

    @property
    def output_shape(self) -> Tuple[int, int, int, int]:
        return (self.N, self.K, self.P, self.Q)

    @property
    def flops(self) -> int:
        """Multiply-adds counted as two flops, as is usual for conv benchmarks."""
        return 2 * self.N * self.P * self.Q * self.K * self.C_per_group * self.R * self.S


def pair(value: IntPair, name: str) -> Tuple[int, int]:
    """Normalise an int or a 1- or 2-element sequence of ints to a pair."""
    if isinstance(value, bool):
        raise ConvTypeError(f"{name} must be an int or a pair of ints, got {value!r}")
    if isinstance(value, int):
        return (value, value)
    if isinstance(value, torch.SymInt):
        return (value, value)
    if isinstance(value, (list, tuple, torch.Size)):
        items = list(value)
        if len(items) == 1:
            items = items * 2
        if len(items) != 2:
            raise ConvValueError(
                f"expected {name} to be a single integer value or a list of 2 values to match "
                f"the convolution dimensions, but got {name}={list(value)}"
            )
        for item in items:
            if isinstance(item, bool) or not isinstance(item, (int, torch.SymInt)):
                raise ConvTypeError(f"{name} must contain ints, got {list(value)}")
        return (items[0], items[1])
    raise ConvTypeError(f"{name} must be an int or a pair of ints, got {type(value).__name__} {value!r}")


def resolve_padding(
    padding: Union[str, IntPair],
    kernel_size: Tuple[int, int],
    stride: Tuple[int, int],
    dilation: Tuple[int, int],
) -> Tuple[Tuple[int, int], Tuple[int, int]]:
    """Turn ``padding`` (ints, pairs, 'same' or 'valid') into (before, after) padding.

    Returns ``((top, left), (bottom, right))``. For 'same' with an even effective
    kernel the extra row/column goes after, as in F.conv2d.
    """
    if isinstance(padding, str):
        if padding == "valid":
            return (0, 0), (0, 0)
        if padding == "same":
            if stride != (1, 1):
                raise ConvValueError("padding='same' is not supported for strided convolutions")
            before, after = [], []
            for k, d in zip(kernel_size, dilation):
                total = d * (k - 1)
                before.append(total // 2)
                after.append(total - total // 2)
            return (before[0], before[1]), (after[0], after[1])
        raise ConvValueError(f"Invalid padding string: {padding!r} (expected 'same' or 'valid')")
    pad = pair(padding, "padding")
    return pad, pad


def as_batched(input: torch.Tensor) -> torch.Tensor:
    """conv2d accepts unbatched (C, H, W) input; everything below sees (1, C, H, W)."""
    if isinstance(input, torch.Tensor) and input.dim() == 3:
        return input.unsqueeze(0)
    return input


def _check_tensor(t: torch.Tensor, name: str) -> None:
    if not isinstance(t, torch.Tensor):
        raise ConvTypeError(f"{name} must be a Tensor, got {type(t).__name__}")
    if t.dtype not in SUPPORTED_DTYPES:
        raise ConvTypeError(
            f"{name} has dtype {t.dtype}; tritonconv supports float16, bfloat16, float32 and float64"
        )
    if t.layout != torch.strided:
        raise ConvTypeError(f"{name} must be a dense (strided) tensor, got layout {t.layout}")


def check_argument_types(input, weight, bias, groups) -> None:
    """The Python-level type checks F.conv2d makes before anything else (TypeError, not a schema error)."""
    for name, t in (("input", input), ("weight", weight)):
        if not isinstance(t, torch.Tensor):
            raise ConvTypeError(f"{name} must be a Tensor, got {type(t).__name__}")
    if bias is not None and not isinstance(bias, torch.Tensor):
        raise ConvTypeError(f"bias must be a Tensor or None, got {type(bias).__name__}")
    if isinstance(groups, bool) or not isinstance(groups, (int, torch.SymInt)):
        raise ConvTypeError(f"groups must be an int, got {type(groups).__name__} {groups!r}")


def _check_common(
    input: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]
) -> None:
    _check_tensor(input, "input")
    _check_tensor(weight, "weight")
    if bias is not None:
        _check_tensor(bias, "bias")
    if input.dtype != weight.dtype:
        raise ConvTypeError(f"input dtype ({input.dtype}) and weight dtype ({weight.dtype}) should be the same")
    if input.device != weight.device:
        raise ConvTypeError(f"input ({input.device}) and weight ({weight.device}) should be on the same device")
    if bias is not None:
        if bias.dtype != input.dtype:
            raise ConvTypeError(f"input dtype ({input.dtype}) and bias dtype ({bias.dtype}) should be the same")
        if bias.device != input.device:
            raise ConvTypeError(f"input ({input.device}) and bias ({bias.device}) should be on the same device")


def _check_ndim(input_shape: Sequence[int], weight_shape: Sequence[int], op: str) -> None:
    if len(input_shape) != 4:
        raise ConvValueError(
            f"expected 3-D (unbatched) or 4-D (batched) input to {op}, but got input of size {list(input_shape)}"
        )
    if len(weight_shape) != 4:
        raise ConvValueError(f"expected a 4-D weight for {op}, but got weight of size {list(weight_shape)}")


def _check_sizes(input_shape: Sequence[int], weight_shape: Sequence[int]) -> None:
    """Empty tensors F.conv2d refuses: a kernel with no taps, and an image with no pixels unless the
    batch or the channels are empty too (then the output is empty, or all bias)."""
    R, S = weight_shape[2], weight_shape[3]
    if R < 1 or S < 1:
        raise ConvValueError(f"kernel size should be greater than zero, but got [{R}, {S}]")
    N, C, H, W = input_shape
    if (H < 1 or W < 1) and N > 0 and C > 0:
        raise ConvValueError(
            f"Only zero batch or zero channel inputs are supported, but got input shape: {list(input_shape)}"
        )


def _check_params(stride, pad_before, pad_after, dilation, groups) -> None:
    if isinstance(groups, bool) or not isinstance(groups, (int, torch.SymInt)):
        raise ConvTypeError(f"groups must be an int, got {groups!r}")
    if min(stride) < 1:
        raise ConvValueError(f"non-positive stride is not supported (stride={list(stride)})")
    if min(dilation) < 1:
        raise ConvValueError(f"non-positive dilation is not supported (dilation={list(dilation)})")
    if min(pad_before) < 0 or min(pad_after) < 0:
        raise ConvValueError(f"negative padding is not supported (padding={list(pad_before)})")
    if groups < 1:
        raise ConvValueError(f"non-positive groups is not supported (groups={groups})")


def _out_size(size: int, before: int, after: int, k: int, stride: int, dil: int) -> int:
    return (size + before + after - dil * (k - 1) - 1) // stride + 1


def conv2d_problem(
    input: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor] = None,
    stride: IntPair = 1,
    padding: Union[str, IntPair] = 0,
    dilation: IntPair = 1,
    groups: int = 1,
) -> Conv2dProblem:
    """Validate conv2d arguments and describe the problem.

    ``input`` must already be 4-D (callers use ``as_batched``). Only shapes,
    dtypes and devices are read, so fake and meta tensors work too.
    """
    _check_common(input, weight, bias)
    problem = problem_from_shapes(tuple(input.shape), tuple(weight.shape), stride, padding, dilation, groups)
    if bias is not None and (bias.dim() != 1 or bias.shape[0] != problem.K):
        raise ConvValueError(
            f"Given weight of size {list(weight.shape)}, expected bias to be 1-dimensional with {problem.K} "
            f"elements, but got bias of size {list(bias.shape)} instead"
        )
    return problem


def problem_from_shapes(
    input_shape: Sequence[int],
    weight_shape: Sequence[int],
    stride: IntPair = 1,
    padding: Union[str, IntPair] = 0,
    dilation: IntPair = 1,
    groups: int = 1,
) -> Conv2dProblem:
    """The shape half of ``conv2d_problem``: sizes and conv parameters only.

    Memoised (every conv call validates, and a model repeats a few dozen problems); arguments
    that can't be hashed (symbolic sizes while tracing) are validated afresh. Invalid arguments
    raise every time: an exception is never cached."""
    try:
        key = (tuple(input_shape), tuple(weight_shape), _hashable(stride), _hashable(padding),
               _hashable(dilation), groups)
        hash(key)
    except TypeError:
        return _problem_from_shapes(input_shape, weight_shape, stride, padding, dilation, groups)
    return _cached_problem(*key)


def _hashable(v):
    return tuple(v) if isinstance(v, (list, tuple)) else v


@functools.lru_cache(maxsize=4096)
def _cached_problem(input_shape, weight_shape, stride, padding, dilation, groups) -> Conv2dProblem:
    return _problem_from_shapes(input_shape, weight_shape, stride, padding, dilation, groups)


def _problem_from_shapes(input_shape, weight_shape, stride, padding, dilation, groups) -> Conv2dProblem:
    _check_ndim(input_shape, weight_shape, "conv2d")
    _check_sizes(input_shape, weight_shape)
    stride, dilation = pair(stride, "stride"), pair(dilation, "dilation")
    K, Cg, R, S = weight_shape
    (pad_h, pad_w), (pad_b, pad_r) = resolve_padding(padding, (R, S), stride, dilation)
    _check_params(stride, (pad_h, pad_w), (pad_b, pad_r), dilation, groups)
    N, C, H, W = input_shape
    if K < 1 or K % groups != 0:
        raise ConvValueError(
            f"Given groups={groups}, expected weight to be at least {groups} at dimension 0 and divisible "
            f"by groups, but got weight of size {list(weight_shape)}"
        )
    if C != Cg * groups:
        raise ConvValueError(
            f"Given groups={groups}, weight of size {list(weight_shape)}, expected input{list(input_shape)} "
            f"to have {Cg * groups} channels, but got {C} channels instead"
        )
    eff_r, eff_s = dilation[0] * (R - 1) + 1, dilation[1] * (S - 1) + 1
    if H + pad_h + pad_b < eff_r or W + pad_w + pad_r < eff_s:
        raise ConvValueError(
            f"Calculated padded input size per channel: ({H + pad_h + pad_b} x {W + pad_w + pad_r}). "
            f"Kernel size: ({eff_r} x {eff_s}) (dilation included). Kernel size can't be greater "
            f"than actual input size"
        )
    P = _out_size(H, pad_h, pad_b, R, stride[0], dilation[0])
    Q = _out_size(W, pad_w, pad_r, S, stride[1], dilation[1])
    return Conv2dProblem(
        N=N, C=C, H=H, W=W, K=K, R=R, S=S, P=P, Q=Q,
        stride_h=stride[0], stride_w=stride[1], pad_h=pad_h, pad_w=pad_w,
        dil_h=dilation[0], dil_w=dilation[1], groups=groups,
    )


def conv_transpose2d_problem(
    input: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor] = None,
    stride: IntPair = 1,
    padding: IntPair = 0,
    output_padding: IntPair = 0,
    groups: int = 1,
    dilation: IntPair = 1,
) -> Conv2dProblem:
    """Validate conv_transpose2d arguments and describe the *forward* conv it inverts.

    ``input`` here is the transposed conv's input, which plays the role of the
    forward conv's output (N, K, P, Q); ``weight`` is (C_in, C_out/groups, R, S)
    as in F.conv_transpose2d, i.e. (K, C/groups, R, S) in the forward view.
    The returned problem's input size (H, W) is the transposed conv's output size.
    """
    _check_common(input, weight, bias)
    _check_ndim(tuple(input.shape), tuple(weight.shape), "conv_transpose2d")
    _check_sizes(tuple(input.shape), tuple(weight.shape))
    stride, dilation = pair(stride, "stride"), pair(dilation, "dilation")
    pad, out_pad = pair(padding, "padding"), pair(output_padding, "output_padding")
    _check_params(stride, pad, pad, dilation, groups)
    if min(out_pad) < 0:
        raise ConvValueError(f"negative output_padding is not supported (output_padding={list(out_pad)})")
    for op, s, d in zip(out_pad, stride, dilation):
        if op >= s and op >= d:
            raise ConvValueError(
                f"output padding must be smaller than either stride or dilation, but got "
                f"output_padding={list(out_pad)}, stride={list(stride)}, dilation={list(dilation)}"
            )
    N, K, P, Q = input.shape
    Kw, Cg, R, S = weight.shape
    if Kw != K:
        raise ConvValueError(
            f"Given transposed=1, weight of size {list(weight.shape)}, expected input{list(input.shape)} "
            f"to have {Kw} channels, but got {K} channels instead"
        )
    if K < groups or K % groups != 0:
        raise ConvValueError(
            f"Given groups={groups}, expected weight to be divisible by {groups} at dimension 0, "
            f"but got weight of size {list(weight.shape)} instead"
        )
    C = Cg * groups
    if bias is not None and (bias.dim() != 1 or bias.shape[0] != C):
        raise ConvValueError(
            f"Given transposed=1, weight of size {list(weight.shape)}, expected bias to be 1-dimensional "
            f"with {C} elements, but got bias of size {list(bias.shape)} instead"
        )
    H = (P - 1) * stride[0] - 2 * pad[0] + dilation[0] * (R - 1) + out_pad[0] + 1
    W = (Q - 1) * stride[1] - 2 * pad[1] + dilation[1] * (S - 1) + out_pad[1] + 1
    if H < 1 or W < 1:
        raise ConvValueError(
            f"conv_transpose2d output size would be ({H} x {W}), which is not positive: "
            f"input {list(input.shape)}, weight {list(weight.shape)}, stride {list(stride)}, padding {list(pad)}"
        )
    return Conv2dProblem(
        N=N, C=C, H=H, W=W, K=K, R=R, S=S, P=P, Q=Q,
        stride_h=stride[0], stride_w=stride[1], pad_h=pad[0], pad_w=pad[1],
        dil_h=dilation[0], dil_w=dilation[1], groups=groups,
    )


def output_memory_format(input: torch.Tensor, weight: torch.Tensor) -> torch.memory_format:
    """The memory format F.conv2d gives its output: channels_last if input or weight is, except
    float64 on CUDA, which aten computes in contiguous format whatever the inputs' (its
    ``cudnn_conv_suggest_memory_format`` turns NHWC off for float64, and its own CUDA kernels are
    NCHW), as it returns the gradients.

    torch's own test of that (``suggest_memory_format``) is Python written for symbolic shapes,
    some 10 us a call; for plain tensors the answer is remembered by sizes and strides."""
    if input.dtype == torch.float64 and input.device.type == "cuda":
        return torch.contiguous_format
    if type(input) in _PLAIN and type(weight) in _PLAIN:
        return _memory_format_of(tuple(input.shape), input.stride(), tuple(weight.shape), weight.stride())
    return _suggested_format(input, weight)


_PLAIN = (torch.Tensor, torch.nn.Parameter)


def _suggested_format(input, weight) -> torch.memory_format:
    from torch._prims_common import suggest_memory_format

    if suggest_memory_format(input) == torch.channels_last or suggest_memory_format(weight) == torch.channels_last:
        return torch.channels_last
    return torch.contiguous_format


@functools.lru_cache(maxsize=4096)
def _memory_format_of(input_shape, input_stride, weight_shape, weight_stride) -> torch.memory_format:
    return _suggested_format(torch.empty_strided(input_shape, input_stride, device="meta"),
                             torch.empty_strided(weight_shape, weight_stride, device="meta"))


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)

