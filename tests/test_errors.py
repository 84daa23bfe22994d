"""Bad arguments are rejected with F.conv2d's conditions, clear messages, and before any launch.

spec.ConvValueError / ConvTypeError subclass ValueError / TypeError *and*
RuntimeError (what PyTorch raises), so both kinds of caller keep working; the
tests check both. Every call runs with Triton's launch entry points replaced by
a sentinel that fails the test if reached: validation must happen before any
kernel launch.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, event, given
from hypothesis import strategies as st

from triton.runtime.interpreter import InterpretedFunction
from triton.runtime.jit import JITFunction

import tritonconv
from conftest import CUDA, DEVICE, property_settings, rel_err


def _launch_sentinel(*args, **kwargs):
    raise AssertionError("a kernel was launched: validation must reject this before any launch")


@pytest.fixture
def no_launch(monkeypatch):
    """Make every Triton kernel launch fail the test, compiled (JITFunction) or interpreted.

    Patched at Triton's launch entry points rather than at tritonconv's launchers,
    so it holds whichever kernel family the router would pick.
    """
    monkeypatch.setattr(JITFunction, "run", _launch_sentinel)
    monkeypatch.setattr(InterpretedFunction, "run", _launch_sentinel)


def test_no_launch_guard_is_effective(no_launch):
    """The sentinel really sits on the launch path (else the tests below prove nothing)."""
    for C, K, R, groups in [(2, 3, 3, 1), (20, 6, 3, 1), (4, 4, 3, 4), (12, 5, 1, 1)]:  # a problem per family
        x, w = torch.randn(1, C, 4, 4, device=DEVICE), torch.randn(K, C // groups, R, R, device=DEVICE)
        with pytest.raises(AssertionError, match="kernel was launched"):
            tritonconv.conv2d(x, w, groups=groups)
        with pytest.raises(AssertionError, match="kernel was launched"):
            torch.ops.tritonconv.conv2d(x, w, groups=groups)


def _t(*shape, dtype=torch.float32, device=DEVICE):
    return torch.randn(*shape, device=device).to(dtype)


def _x():
    return _t(2, 4, 6, 6)


def _w():
    return _t(8, 4, 3, 3)


def _to_list(v):
    return [v, v] if isinstance(v, int) else list(v)


def call_functional(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    return tritonconv.conv2d(input, weight, bias, stride, padding, dilation, groups)


def call_op(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """The op as aten.conv2d is called: int lists (a single int is written as a pair)."""
    return torch.ops.tritonconv.conv2d(
        input, weight, bias, _to_list(stride), _to_list(padding), _to_list(dilation), groups
    )


ENTRY_POINTS = {"functional": call_functional, "op": call_op}

# id -> (arguments builder, exception class, regex the message must match)
BAD_ARGS = {
    "input_2d": (lambda: dict(input=_t(6, 6), weight=_w()), ValueError, r"3-D \(unbatched\) or 4-D .*\[6, 6\]"),
    "input_5d": (lambda: dict(input=_t(1, 2, 4, 6, 6), weight=_w()), ValueError, r"3-D \(unbatched\) or 4-D .*\[1, 2, 4, 6, 6\]"),
    "weight_3d": (lambda: dict(input=_x(), weight=_t(4, 3, 3)), ValueError, r"4-D weight.*\[4, 3, 3\]"),
    "unbatched_weight_3d": (lambda: dict(input=_t(4, 6, 6), weight=_t(4, 3, 3)), ValueError, r"4-D weight"),
    "channel_mismatch": (lambda: dict(input=_x(), weight=_t(8, 3, 3, 3)), ValueError, r"to have 3 channels, but got 4"),
    "groups_not_dividing_out_channels": (
        lambda: dict(input=_t(2, 6, 6, 6), weight=_t(8, 2, 3, 3), groups=3), ValueError, r"divisible by groups"),
    "groups_channel_mismatch": (
        lambda: dict(input=_x(), weight=_w(), groups=2), ValueError, r"groups=2.*to have 8 channels, but got 4"),
    "stride_0": (lambda: dict(input=_x(), weight=_w(), stride=0), ValueError, r"non-positive stride"),
    "stride_negative_w": (lambda: dict(input=_x(), weight=_w(), stride=(1, -1)), ValueError, r"non-positive stride.*-1"),
    "dilation_0": (lambda: dict(input=_x(), weight=_w(), dilation=0), ValueError, r"non-positive dilation"),
    "dilation_negative_h": (lambda: dict(input=_x(), weight=_w(), dilation=(-2, 1)), ValueError, r"non-positive dilation"),
    "groups_0": (lambda: dict(input=_x(), weight=_w(), groups=0), ValueError, r"non-positive groups"),
    "groups_negative": (lambda: dict(input=_x(), weight=_w(), groups=-2), ValueError, r"non-positive groups"),
    "padding_negative": (lambda: dict(input=_x(), weight=_w(), padding=-1), ValueError, r"negative padding"),
    "padding_negative_w": (lambda: dict(input=_x(), weight=_w(), padding=(1, -2)), ValueError, r"negative padding"),
    "kernel_larger_than_input": (
        lambda: dict(input=_x(), weight=_t(8, 4, 7, 7)), ValueError, r"Kernel size can't be greater than actual input size"),
    "kernel_larger_than_padded_input": (
        lambda: dict(input=_t(2, 4, 3, 6), weight=_t(8, 4, 7, 3), padding=1), ValueError, r"padded input size.*\(5 x 8\)"),
    "dilated_kernel_larger_than_input": (
        lambda: dict(input=_x(), weight=_w(), dilation=3), ValueError, r"Kernel size: \(7 x 7\)"),
    "weight_dtype_mismatch": (
        lambda: dict(input=_x(), weight=_t(8, 4, 3, 3, dtype=torch.float64)), TypeError, r"weight dtype \(torch.float64\)"),
    "bias_dtype_mismatch": (
        lambda: dict(input=_x(), weight=_w(), bias=_t(8, dtype=torch.float16)), TypeError, r"bias dtype \(torch.float16\)"),
    "bias_wrong_size": (lambda: dict(input=_x(), weight=_w(), bias=_t(7)), ValueError, r"bias .* with 8 elements.*\[7\]"),
    "bias_2d": (lambda: dict(input=_x(), weight=_w(), bias=_t(1, 8)), ValueError, r"bias to be 1-dimensional.*\[1, 8\]"),
    "integer_dtype": (
        lambda: dict(input=_x().to(torch.int32), weight=_w().to(torch.int32)), TypeError, r"input has dtype torch.int32"),
    "integer_weight": (
        lambda: dict(input=_x(), weight=_w().to(torch.int64)), TypeError, r"weight has dtype torch.int64"),
    "integer_bias": (
        lambda: dict(input=_x(), weight=_w(), bias=_t(8).to(torch.int64)), TypeError, r"bias has dtype torch.int64"),
    "stride_3_elements": (
        lambda: dict(input=_x(), weight=_w(), stride=(1, 1, 1)), ValueError, r"stride.*list of 2 values.*\[1, 1, 1\]"),
    "padding_3_elements": (
        lambda: dict(input=_x(), weight=_w(), padding=(1, 1, 1)), ValueError, r"padding.*list of 2 values"),
    "dilation_3_elements": (
        lambda: dict(input=_x(), weight=_w(), dilation=(1, 1, 1)), ValueError, r"dilation.*list of 2 values"),
    "sparse_input": (lambda: dict(input=_x().to_sparse(), weight=_w()), TypeError, r"dense \(strided\)"),
    "kernel_size_0": (lambda: dict(input=_x(), weight=_t(8, 4, 0, 3)), ValueError, r"kernel size should be greater than zero"),
    "empty_image": (
        lambda: dict(input=_t(2, 4, 0, 6), weight=_w(), padding=2), ValueError, r"Only zero batch or zero channel inputs"),
}


# with launch plans on (CUDA's default) a call is keyed before it is validated (ops._memo): the
# same errors must come out
@pytest.mark.parametrize("planned", [False, True], ids=["plans_as_default", "plans_on"])
@pytest.mark.parametrize("entry", list(ENTRY_POINTS))
@pytest.mark.parametrize("name", list(BAD_ARGS))
def test_bad_arguments(name, entry, planned, no_launch):
    from tritonconv import plans

    build, exc, pattern = BAD_ARGS[name]
    with plans.enabled_as(planned or plans.ENABLED), pytest.raises(exc, match=pattern) as info:
        ENTRY_POINTS[entry](**build())
    assert isinstance(info.value, RuntimeError), "PyTorch callers catch RuntimeError: keep subclassing it"


# Arguments the op's schema cannot even express: only the functional API sees them.
FUNCTIONAL_ONLY = {
    "same_with_stride_2": (dict(stride=2, padding="same"), ValueError, r"padding='same' is not supported for strided"),
    "same_with_stride_1_2": (dict(stride=(1, 2), padding="same"), ValueError, r"padding='same' is not supported for strided"),
    "unknown_padding_string": (dict(padding="full"), ValueError, r"Invalid padding string: 'full'"),
    "padding_string_case": (dict(padding="SAME"), ValueError, r"Invalid padding string"),
    "float_padding": (dict(padding=0.5), TypeError, r"padding must be an int or a pair of ints"),
    "float_in_padding_pair": (dict(padding=(0.5, 1)), TypeError, r"padding must contain ints"),
    "float_stride": (dict(stride=1.5), TypeError, r"stride must be an int"),
    "bool_stride": (dict(stride=True), TypeError, r"stride must be an int"),
    "string_dilation": (dict(dilation="1"), TypeError, r"dilation must be an int"),
}


@pytest.mark.parametrize("name", list(FUNCTIONAL_ONLY))
def test_bad_arguments_functional_only(name, no_launch):
    kwargs, exc, pattern = FUNCTIONAL_ONLY[name]
    with pytest.raises(exc, match=pattern) as info:
        tritonconv.conv2d(_x(), _w(), None, **kwargs)
    assert isinstance(info.value, RuntimeError)


@pytest.mark.parametrize(
    "kwargs",
    [dict(padding=0.5), dict(padding="same"), dict(groups=1.0)],
    ids=["float_padding", "string_padding", "float_groups"],
)
def test_op_schema_rejects_wrong_types(kwargs, no_launch):
    """The dispatcher checks argument types against the schema before any Python runs: a
    RuntimeError naming the argument, as torch.ops.aten.conv2d.default raises. (Padding
    strings are for the functional API; aten has a separate conv2d.padding overload.)"""
    args = dict(stride=[1, 1], padding=[0, 0], dilation=[1, 1], groups=1)
    args.update(kwargs)
    (bad_name,) = kwargs
    with pytest.raises(RuntimeError, match=rf"argument '{bad_name}'"):
        torch.ops.tritonconv.conv2d(_x(), _w(), None, args["stride"], args["padding"], args["dilation"], args["groups"])
    with pytest.raises(RuntimeError, match=rf"argument '{bad_name}'"):
        torch.ops.aten.conv2d.default(_x(), _w(), None, args["stride"], args["padding"], args["dilation"], args["groups"])


@pytest.mark.parametrize(
    "kwargs",
    [dict(groups=1.0), dict(input="not a tensor"), dict(weight=[[1.0]])],
    ids=["float_groups", "str_input", "list_weight"],
)
def test_functional_rejects_wrong_types_with_type_error(kwargs, no_launch):
    """F.conv2d raises TypeError for these; so should the drop-in.

    spec has ConvTypeError checks for exactly these (``groups must be an int``,
    ``input must be a Tensor``), but tritonconv.conv2d only runs spec before the
    op when padding is a string; otherwise the dispatcher's schema check fires
    first and raises a bare RuntimeError.
    """
    args = dict(input=_x(), weight=_w(), groups=1)
    args.update(kwargs)
    with pytest.raises(TypeError, match=r"groups|input|weight") as info:
        tritonconv.conv2d(**args)
    assert isinstance(info.value, RuntimeError)


# --------------------------------------------------------------------------- devices


@pytest.mark.skipif(not CUDA, reason="a device mismatch needs a CUDA device besides the CPU")
@pytest.mark.parametrize("entry", list(ENTRY_POINTS))
@pytest.mark.parametrize("which", ["weight", "bias"])
def test_device_mismatch(entry, which, no_launch):
    x, w, b = _x(), _w(), _t(8)
    if which == "weight":
        w = w.cpu()
    else:
        b = b.cpu()
    with pytest.raises(TypeError, match=r"should be on the same device") as info:
        ENTRY_POINTS[entry](x, w, b)
    assert isinstance(info.value, RuntimeError)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
@pytest.mark.parametrize("entry", list(ENTRY_POINTS))
def test_device_mismatch_two_gpus(entry, no_launch):
    x, w = _t(2, 4, 6, 6, device="cuda:0"), _t(8, 4, 3, 3, device="cuda:1")
    with pytest.raises(TypeError, match=r"should be on the same device"):
        ENTRY_POINTS[entry](x, w)


_INTERPRETER_OFF_SCRIPT = textwrap.dedent(
    """
    import json, torch, tritonconv
    x, w = torch.randn(1, 2, 4, 4), torch.randn(3, 2, 3, 3)
    result = {"interpreter": tritonconv.INTERPRETER}
    for name, call in [("functional", lambda: tritonconv.conv2d(x, w)),
                       ("op", lambda: torch.ops.tritonconv.conv2d(x, w))]:
        try:
            call()
            result[name] = None
        except Exception as e:
            result[name] = [type(e).__name__, isinstance(e, RuntimeError), str(e)]
    print("RESULT" + json.dumps(result))
    """
)


@pytest.mark.skipif(CUDA, reason="with CUDA, Triton would compile for the GPU instead of failing on CPU tensors")
def test_cpu_tensor_without_interpreter_says_how_to_fix():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run(
        [sys.executable, "-c", _INTERPRETER_OFF_SCRIPT], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (line,) = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT")]
    result = json.loads(line[len("RESULT"):])
    assert result["interpreter"] is False
    for name in ("functional", "op"):
        assert result[name] is not None, f"{name}: a CPU tensor ran without the interpreter"
        _, is_runtime_error, message = result[name]
        assert is_runtime_error, result[name]
        assert "TRITON_INTERPRET" in message and "CUDA" in message, message


@pytest.mark.parametrize("direction", ["forward 1x1", "forward 3x3", "weight_grad", "bias_grad"])
def test_pixel_counts_past_int32_raise_before_any_launch(direction):
    """The kernels index pixels in int32: 2**31 output pixels must be refused, not wrapped around.
    An expanded tensor has the shape without the memory."""
    from tritonconv.kernels.wgrad import conv2d_bias_grad

    x = torch.zeros(1, device=DEVICE).expand(2**15, 1, 2**8, 2**8)
    w = torch.ones(1, 1, 1, 1, device=DEVICE)
    calls = {
        "forward 1x1": lambda: tritonconv.conv2d(x, w),
        "forward 3x3": lambda: tritonconv.conv2d(x, torch.ones(1, 1, 3, 3, device=DEVICE), padding=1),
        "weight_grad": lambda: torch.ops.tritonconv.conv2d_grad_weight(x, x, [1, 1, 1, 1], [1, 1], [0, 0], [1, 1], 1),
        "bias_grad": lambda: conv2d_bias_grad(x),
    }
    with pytest.raises(ValueError, match="pixels; tritonconv supports fewer than"):
        calls[direction]()


# ----------------------------------------------------------------------------
# Differential: tritonconv raises exactly where F.conv2d / F.conv_transpose2d do
# ----------------------------------------------------------------------------

# A valid problem, then at most one change that may or may not make it invalid.
MUTATIONS = (
    "none", "stride_0", "stride_negative", "stride_1_element", "stride_3_elements", "dilation_0", "padding_negative",
    "padding_3_elements", "padding_same", "padding_same_strided", "padding_valid", "padding_unknown", "groups_0",
    "groups_not_dividing", "weight_channels_off", "out_channels_0", "kernel_height_0", "image_height_0",
    "image_width_1", "input_channels_0", "unbatched", "input_2d", "input_5d", "weight_3d", "kernel_wider_than_input",
    "bias_too_long", "bias_2d", "input_float32", "output_padding_large", "output_padding_negative",
)


@st.composite
def conv_calls(draw, mutation):
    """(op, args) for F.conv2d or F.conv_transpose2d's positional signature, in float64: a random
    valid problem with ``mutation`` applied."""
    g, cg, kg = draw(st.integers(1, 3)), draw(st.integers(1, 3)), draw(st.integers(1, 3))
    transposed = draw(st.booleans())
    R, S = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    pair = st.tuples(st.integers(1, 3), st.integers(1, 3))
    stride, dilation = list(draw(pair)), list(draw(pair))
    padding = list(draw(st.tuples(st.integers(0, 2), st.integers(0, 2))))
    # big enough for the dilated kernel, so that most unchanged problems are valid
    H = max(1, dilation[0] * (R - 1) + 1 - 2 * padding[0]) + draw(st.integers(0, 3))
    W = max(1, dilation[1] * (S - 1) + 1 - 2 * padding[1]) + draw(st.integers(0, 3))
    x_shape = [draw(st.integers(0, 2)), cg * g, H, W]
    w_shape = [cg * g, kg, R, S] if transposed else [kg * g, cg, R, S]
    output_padding = list(draw(st.tuples(st.integers(0, 2), st.integers(0, 2))))
    groups, bias_len, bias_dims = g, (kg if transposed else w_shape[0] // g) * g, 1
    bias = draw(st.booleans())
    x_dtype = torch.float64
    if mutation == "stride_0":
        stride[0] = 0
    elif mutation == "stride_negative":
        stride[1] = -1
    elif mutation == "stride_1_element":
        stride = stride[:1]
    elif mutation == "stride_3_elements":
        stride = stride + [1]
    elif mutation == "dilation_0":
        dilation[1] = 0
    elif mutation == "padding_negative":
        padding[0] = -1
    elif mutation == "padding_3_elements":
        padding = padding + [0]
    elif mutation in ("padding_same", "padding_valid", "padding_unknown"):
        padding = {"padding_same": "same", "padding_valid": "valid", "padding_unknown": "full"}[mutation]
    elif mutation == "padding_same_strided":
        padding, stride = "same", [2, 1]
    elif mutation == "groups_0":
        groups = 0
    elif mutation == "groups_not_dividing":
        groups = g + 1
    elif mutation == "weight_channels_off":
        w_shape[1] += 1
    elif mutation == "out_channels_0":
        w_shape[0] = 0
    elif mutation == "kernel_height_0":
        w_shape[2] = 0
    elif mutation == "image_height_0":
        x_shape[2] = 0
    elif mutation == "image_width_1":
        x_shape[3] = 1
    elif mutation == "input_channels_0":
        x_shape[1] = 0
    elif mutation == "unbatched":
        x_shape = x_shape[1:]
    elif mutation == "input_2d":
        x_shape = x_shape[2:]
    elif mutation == "input_5d":
        x_shape = x_shape + [1]
    elif mutation == "weight_3d":
        w_shape = w_shape[:3]
    elif mutation == "kernel_wider_than_input":
        w_shape[3] = x_shape[3] + 2 * padding[1] + 1
    elif mutation == "bias_too_long":
        bias, bias_len = True, bias_len + 1
    elif mutation == "bias_2d":
        bias, bias_dims = True, 2
    elif mutation == "input_float32":
        x_dtype = torch.float32
    elif mutation == "output_padding_large":
        output_padding[0] = max(stride[0], dilation[0])
    elif mutation == "output_padding_negative":
        output_padding[1] = -1
    if transposed and isinstance(padding, str):
        transposed = False  # conv_transpose2d has no padding strings
    seed = draw(st.integers(0, 2**31 - 1))
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(x_shape, generator=gen, dtype=torch.float64).to(DEVICE, x_dtype)
    w = torch.randn(w_shape, generator=gen, dtype=torch.float64).to(DEVICE)
    b = torch.randn([1] * (bias_dims - 1) + [bias_len], generator=gen, dtype=torch.float64).to(DEVICE) if bias else None
    if transposed:
        return "conv_transpose2d", (x, w, b, stride, padding, output_padding, groups, dilation)
    return "conv2d", (x, w, b, stride, padding, dilation, groups)


def _outcome(fn):
    try:
        return fn(), None
    except Exception as exc:  # noqa: BLE001  (any exception is an outcome to compare)
        return None, exc


@pytest.mark.parametrize("mutation", MUTATIONS)
@given(data=st.data())
@property_settings(15, suppress_health_check=[HealthCheck.too_slow])
def test_property_rejects_exactly_what_pytorch_rejects(mutation, data):
    """On random valid argument sets, unchanged or with one change that may break them, tritonconv
    raises a RuntimeError exactly where PyTorch raises, and otherwise returns PyTorch's result.

    One deliberate difference: for an empty batch PyTorch skips some checks (zero dilation,
    output_padding >= stride, a transposed output of size 0) and returns an empty tensor;
    tritonconv checks the arguments the same way whatever the batch, so where it raises and
    PyTorch does not, the same arguments with a batch of one must make PyTorch raise too."""
    op, args = data.draw(conv_calls(mutation), label="call")
    ref, ref_exc = _outcome(lambda: getattr(F, op)(*args))
    out, exc = _outcome(lambda: getattr(tritonconv, op)(*args))
    event(f"{op} {mutation}: {'ok' if ref_exc is None else 'raises'}")
    if exc is not None:
        assert isinstance(exc, RuntimeError), f"{type(exc).__name__} is not a RuntimeError: {exc}"
    if ref_exc is None and exc is not None and args[0].dim() == 4 and args[0].shape[0] == 0:
        x1 = torch.zeros((1, *args[0].shape[1:]), dtype=args[0].dtype, device=DEVICE)
        _, batch_one_exc = _outcome(lambda: getattr(F, op)(x1, *args[1:]))
        assert batch_one_exc is not None, f"tritonconv raised {exc!r} where PyTorch accepts the arguments"
        return
    assert (exc is None) == (ref_exc is None), f"PyTorch: {ref_exc!r}; tritonconv: {exc!r}"
    if exc is None:
        assert out.shape == ref.shape and out.dtype == ref.dtype
        if ref.numel():
            assert rel_err(out, ref) < 1e-12
