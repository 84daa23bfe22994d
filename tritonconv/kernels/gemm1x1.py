"""1x1 unpadded forward conv: a plain GEMM with no index arithmetic in the loop.

    ==========  ======================  =====================================
    GEMM        conv                    index decomposition
    ==========  ======================  =====================================
    M           N * P * Q pixels        m -> (n, p, q), once per tile; none
                                        where the pixels are flat (FLAT_ROWS)
    N_gemm      K / groups              j -> k = g * K/groups + j
    K_gemm      C / groups              c, walked by pointer increments
    A[m, c]     x[n, c, s_h*p, s_w*q]   (stride 1: P, Q = H, W)
    B[c, j]     w[k, c, 0, 0]
    C[m, j]     y[n, k, p, q]           (+ bias, + residual, activation)
    ==========  ======================  =====================================

With P = H and Q = W every output pixel reads exactly its own input pixel, so
the pixel offsets are computed once per tile and the reduction loop only
advances two pointers by BLOCK_K channels: the same inner loop as a dense
matmul. NHWC input and KRSC weight make both operands contiguous along c.
Where every tensor's pixels are flat (``flat_rows``: pixel m at offset m * the W
stride, as in any channels_last tensor), even that decomposition goes: its
divisions by W and H*W were 43% of the 1x1 tile's instructions outside the loop
(sm_90 SASS, Triton 3.6, 128x128x64: 1348 -> 774), and a 1x1 layer's reduction
is only a few steps (4 of 64 channels on a 256-channel layer).

A stride s (ResNet's downsampling 1x1, stride 2) only thins the pixels: output
pixel (p, q) reads input pixel (s*p, s*q), so the pointer kernel runs the same
GEMM over the strided view x[:, :, ::s_h, ::s_w], whose P x Q pixels it indexes
like any other strides (``accepts_strided``). The TMA kernels need (N*H*W, C)
as one row-major matrix, so they take stride 1 only (``accepts``).

The input gradient of such a conv (one group) is the same pointer kernel on dy
(``dgrad_1x1_phase``): A[m, k] = dy[n, k, p, q], B[k, c] = w[k, c, 0, 0] (w read
transposed, in place), C[m, c] = dx[n, c, s_h*p, s_w*q]; N_gemm is C and
K_gemm is K. dx's other pixels, which no tap reaches, are zero (``dgrad``).
"""

from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from .. import configs, plans, tuning
from ..spec import Conv2dProblem
from ._common import (
    TMA_DTYPES,
    ForwardLaunch,
    TensorDescriptor,
    acc_dtype_for,
    check_device,
    check_pixel_count,
    conv_epilogue,
    dense_view,
    input_precision_for,
    mma,
    persistent_programs,
    prepare_forward,
    pixel_rows,
    split_range,
    stream_k_flags,
    stream_k_gather,
    stream_k_hand_off,
    stream_k_share,
    stream_k_step,
    tile_pid,
)
from .wgrad import conv2d_wgrad, finish_wgrad, wgrad_workspace

__all__ = ["accepts", "accepts_dgrad", "accepts_strided", "conv2d_fprop_1x1", "conv2d_fprop_1x1_tma",
           "conv2d_wgrad_1x1", "conv2d_wgrad_1x1_tma", "dgrad_1x1_phase", "gemm1x1_fprop_kernel",
           "flat_rows", "gemm1x1_tma_kernel", "gemm1x1_wgrad_kernel", "gemm1x1_wgrad_tma_kernel", "pixel_stride",
           "tma_usable",
           "wgrad_accepts_layout", "wgrad_tma_usable"]


def accepts(problem: Conv2dProblem) -> bool:
    """The problems the TMA forward and both weight gradients compute: 1x1 kernel, stride 1, no
    padding, and so an output the input's size (which a dgrad phase, ``dgrad._phases``, need not
    have). The pointer forward takes more: ``accepts_strided``."""
    pb = problem
    return (pb.R, pb.S, pb.stride_h, pb.stride_w, pb.pad_h, pb.pad_w) == (1, 1, 1, 1, 0, 0) \
        and (pb.P, pb.Q) == (pb.H, pb.W)


def accepts_strided(problem: Conv2dProblem) -> bool:
    """The problems the pointer kernel (``conv2d_fprop_1x1``) computes: 1x1 kernel, no padding,
    any stride (and any dilation, which a 1x1 kernel never uses), and the output F.conv2d gives
    them, one pixel per pixel of x[:, :, ::stride_h, ::stride_w]: output pixel (p, q) reads input
    pixel (stride_h * p, stride_w * q), inside the image. (A dgrad phase with output_padding can
    have one more row than that; ``accepts`` turns it away too.)"""
    pb = problem
    return (pb.R, pb.S, pb.pad_h, pb.pad_w) == (1, 1, 0, 0) \
        and (pb.P, pb.Q) == (triton.cdiv(pb.H, pb.stride_h), triton.cdiv(pb.W, pb.stride_w))


@triton.jit
def gemm1x1_fprop_kernel(
    # pointers
    x_ptr,  # (N, C, H, W), any strides: the pixels read, a strided view of x for stride > 1
    w_ptr,  # (K, C/groups, 1, 1), any strides
    b_ptr,  # (K,); unused unless HAS_BIAS
    res_ptr,  # (N, K, H, W); unused unless HAS_RESIDUAL
    y_ptr,  # (N, K, H, W), any strides
    # problem sizes (H, W: the output's P, Q, which x's strided view has too)
    M, H, W, CG, KG, GROUPS,
    # strides, in elements
    sxn, sxc, sxh, sxw,
    swk, swc,
    syn, syk, syh, syw,
    srn, srk, srh, srw,
    alpha: tl.float64,  # leaky_relu slope; fp64, so that an fp64 conv gets it unrounded
    # meta-parameters
    HAS_BIAS: tl.constexpr, HAS_RESIDUAL: tl.constexpr, ACTIVATION: tl.constexpr,
    ACC_DTYPE: tl.constexpr, INPUT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    FLAT_ROWS: tl.constexpr = False,  # x, y and the residual have flat pixels (flat_rows): m * their W stride
):
    # -- program-id mapping: (group, M-tile, N-tile)
    g, pid_m, pid_n = tile_pid(tl.program_id(0), M, KG, BLOCK_M, BLOCK_N, GROUP_M)

    # -- pixel offsets, once per tile (int64: n * sxn can pass 2**31)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    mask_m = offs_m < M
    mask_n = offs_n < KG
    x_rows, y_rows, r_rows = pixel_rows(offs_m, H, W, sxn, sxh, sxw, syn, syh, syw, srn, srh, srw, FLAT_ROWS)
    k_out = g * KG + offs_n
    a_ptrs = (x_ptr + x_rows + (g * CG).to(tl.int64) * sxc)[:, None] + offs_k.to(tl.int64)[None, :] * sxc
    b_ptrs = (w_ptr + k_out.to(tl.int64) * swk)[None, :] + offs_k.to(tl.int64)[:, None] * swc

    # -- reduction loop: a dense matmul's, at least one step, and the compiler told so
    # (_common.split_steps says why it matters): for C/groups = 0 one of masked loads
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC_DTYPE)
    c_end = tl.maximum(CG, 1)
    tl.assume(c_end > 0)
    for c0 in range(0, c_end, BLOCK_K):
        c_ok = offs_k < CG - c0
        a = tl.load(a_ptrs, mask=mask_m[:, None] & c_ok[None, :], other=0.0)
        b = tl.load(b_ptrs, mask=c_ok[:, None] & mask_n[None, :], other=0.0)
        acc = mma(a, b, acc, INPUT_PRECISION, ACC_DTYPE)
        a_ptrs += BLOCK_K * sxc
        b_ptrs += BLOCK_K * swc

    # -- epilogue
    conv_epilogue(acc, b_ptr, res_ptr, y_ptr, y_rows, r_rows, k_out, syk, srk, mask_m, mask_n, alpha,
                  HAS_BIAS, HAS_RESIDUAL, ACTIVATION)


def _fprop_autotuner():
    """An autotuner of gemm1x1_fprop_kernel (a tuning of its own: see ``_gemm1x1_dgrad_tuned``)."""
    return triton.autotune(
        configs=configs.gemm_configs(),
        # the epilogue: see pruning; FLAT_ROWS: the tile's work outside its few steps differs
        key=["M", "H", "W", "CG", "KG", "GROUPS", "sxc", "syk", "HAS_RESIDUAL", "ACTIVATION", "FLAT_ROWS"],
        do_bench=configs.capture_safe_bench,
        prune_configs_by={
            "early_config_prune": configs.gemm_prune_hook(
                m_fn=lambda a: a["M"], n_fn=lambda a: a["KG"], k_fn=lambda a: a["CG"], tensor_arg="x_ptr",
                gathered=False,
                uncapped=configs.UNCAPPED_TILES["gemm1x1_fprop_kernel"],
            )
        },
    )(gemm1x1_fprop_kernel)


_gemm1x1_tuned = _fprop_autotuner()


# The dgrad of a 1x1 conv (``dgrad_1x1_phase``) reads B from w transposed, with its columns
# along w's contiguous channels, where a forward reads B's rows along them: the best tiles can
# differ. Their keys can be equal (layer3.1.conv1's dgrad, 256 -> 1024 channels at 14x14, has
# the key of layer3.0.conv3's forward), so the dgrad has an autotuner of its own.
_gemm1x1_dgrad_tuned = _fprop_autotuner()


def conv2d_fprop_1x1(
    x: torch.Tensor,
    w: torch.Tensor,
    bias: Optional[torch.Tensor],
    problem: Conv2dProblem,
    out: Optional[torch.Tensor] = None,
    activation: str = "none",
    alpha: float = 0.01,
    residual: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Launch the 1x1 GEMM forward; the same contract as ``fprop.conv2d_fprop``.

    Args:
        x, w, bias, problem, out, activation, alpha, residual: as for ``conv2d_fprop``;
            ``problem`` must satisfy ``accepts_strided``.

    Returns:
        y (N, K, P, Q) in x's dtype.
    """
    return _fprop_1x1(x, w, bias, problem, out=out, activation=activation, alpha=alpha, residual=residual,
                      tuned=_gemm1x1_tuned, name="gemm1x1")


def accepts_dgrad(problem: Conv2dProblem) -> bool:
    """The conv problems whose input gradient ``dgrad.conv2d_dgrad_1x1`` computes: a 1x1 conv the
    forward takes (``accepts_strided``: dx's pixels at multiples of the stride are one each of
    dy's), in one group (per group, w transposed is no strided view of w)."""
    return accepts_strided(problem) and problem.groups == 1


def dgrad_1x1_phase(dy: torch.Tensor, w: torch.Tensor, bias: Optional[torch.Tensor], forward: Conv2dProblem,
                    out: torch.Tensor) -> torch.Tensor:
    """dx's pixels at multiples of the stride, as the forward GEMM of dy with w transposed:
    out[n, c, i, j] = sum_k dy[n, k, i, j] * w[k, c, 0, 0] (+ bias[c], conv_transpose2d's).

    Args:
        dy: (N, K, P, Q), any strides.
        w: (K, C, 1, 1), the conv's weight (one group), any strides: read in place, transposed.
        bias: (C,) or None.
        forward: the forward conv of dy this is (``dgrad._phases``: C and K swapped, stride 1);
            it must satisfy ``accepts_strided``.
        out: (N, C, P, Q), any strides: dx's view ``dx[:, :, ::stride_h, ::stride_w]``.

    Returns:
        out.
    """
    return _fprop_1x1(dy, w.transpose(0, 1), bias, forward, out=out, tuned=_gemm1x1_dgrad_tuned, name="gemm1x1_dgrad")


def _fprop_1x1(x: torch.Tensor, w: torch.Tensor, bias: Optional[torch.Tensor], problem: Conv2dProblem, *,
               out: Optional[torch.Tensor], tuned, name: str, activation: str = "none", alpha: float = 0.01,
               residual: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The 1x1 GEMM forward on one of its autotuners.

    Args:
        x, w, bias, problem, out, activation, alpha, residual: as for ``conv2d_fprop_1x1``.
        tuned: the autotuner of gemm1x1_fprop_kernel to launch (the forward's or the dgrad's).
        name: its name in the tuning cache (``tuning.launch``).

    Returns:
        y (N, K, P, Q) in x's dtype.
    """
    pb = problem
    if not accepts_strided(pb):
        raise ValueError(f"the 1x1 family does not compute {pb}")
    fw = prepare_forward(x, w, bias, residual, pb, out, activation)
    out = fw.out
    if out.numel() == 0:
        return out
    # the pixels the output reads, (N, C, P, Q): x itself at stride 1 (see the module's doc)
    x_read = x[:, :, ::pb.stride_h, ::pb.stride_w]
    M = pb.N * pb.P * pb.Q
    KG, CG = pb.K_per_group, pb.C_per_group

    def grid(meta):
        return (pb.groups * triton.cdiv(M, meta["BLOCK_M"]) * triton.cdiv(KG, meta["BLOCK_N"]),)

    tuning.launch(tuned, name, x.device, grid,
        x_read, w, fw.bias, fw.residual, out,
        M, pb.P, pb.Q, CG, KG, pb.groups,
        *x_read.stride(), w.stride(0), w.stride(1), *out.stride(), *fw.res_strides, float(alpha),
        **fw.epilogue, INPUT_PRECISION=input_precision_for(x), FLAT_ROWS=flat_rows(x_read, out, fw),
    )
    return out


def flat_rows(x: Optional[torch.Tensor], out: torch.Tensor, fw: ForwardLaunch) -> bool:
    """Whether pixel m = (n, h, w) of ``x`` (None: not indexed by pixels), of ``out`` and of the
    residual (``fw``'s, where the epilogue adds one) is at m times the tensor's W stride, so
    that the kernels can take m * stride for n * sn + h * sh + w * sw (FLAT_ROWS)."""
    tensors = (x, out, fw.residual if fw.epilogue["HAS_RESIDUAL"] else None)
    return all(t is None or pixel_stride(t) == t.stride(3) for t in tensors)


# --------------------------------------------------------------------------- Hopper: TMA loads


def tma_usable(x: torch.Tensor, w: torch.Tensor, problem: Conv2dProblem) -> bool:
    """TMA needs a 2-D view of both operands with 16-byte aligned rows and bases, on sm_90+.

    That is NHWC-contiguous input (x as an (N*H*W, C) matrix) and a weight
    whose (K, C/groups) view is row-major; both hold for channels_last models.
    """
    if TensorDescriptor is None or x.dtype not in TMA_DTYPES or not accepts(problem):
        return False
    if x.is_cuda and torch.cuda.get_device_capability(x.device)[0] < 9:
        return False
    if not x.is_contiguous(memory_format=torch.channels_last):
        return False
    if w.stride(0) != problem.C_per_group or w.stride(1) != 1:
        return False
    esize = x.element_size()
    return all(v * esize % 16 == 0 for v in (problem.C, problem.C_per_group)) and \
        x.data_ptr() % 16 == 0 and w.data_ptr() % 16 == 0


def _set_tma_blocks(nargs):
    """Autotune pre-hook: the descriptors' block shapes follow the config's tile sizes, and a
    stream-K config gets its partial-tile scratch (a slot per program, one per flag; the
    launcher passes an empty tensor, so the other configs allocate nothing)."""
    bm, bn, bk = nargs["BLOCK_M"], nargs["BLOCK_N"], nargs["BLOCK_K"]
    nargs["a_desc"].block_shape = [bm, bk]
    nargs["b_desc"].block_shape = [bn, bk]
    if nargs.get("STREAM_K"):
        partials = nargs["partials_ptr"]
        need = nargs["flags_ptr"].numel() * bm * bn
        if partials.numel() < need:
            partials.resize_(need)


@triton.jit
def _gemm1x1_tma_acc(
    g, pid_m, pid_n, k_lo, k_hi, a_desc, b_desc, CG, KG,
    ACC_DTYPE: tl.constexpr, INPUT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    rot=0, ROTATE: tl.constexpr = False,
):
    """Reduction steps [k_lo, k_hi) (of BLOCK_K channels) of one output tile, from TMA tiles;
    with ROTATE, from step k_lo + rot on, wrapping round at k_hi (configs.ROTATED_FORMS).

    Out-of-bounds reads are zero-filled; columns past this group's C/groups in A meet zero rows
    of B (B's width is C/groups), and rows of B past this group's K/groups only feed
    masked-out columns."""
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC_DTYPE)
    for k in range(k_lo * BLOCK_K, k_hi * BLOCK_K, BLOCK_K):
        c0 = k
        if ROTATE:
            c0 = k + rot * BLOCK_K
            c0 = tl.where(c0 >= k_hi * BLOCK_K, c0 - (k_hi - k_lo) * BLOCK_K, c0)
        a = a_desc.load([pid_m * BLOCK_M, g * CG + c0])
        b = b_desc.load([g * KG + pid_n * BLOCK_N, c0])
        acc = mma(a, b.T, acc, INPUT_PRECISION, ACC_DTYPE)
    return acc


@triton.jit
def _gemm1x1_store(
    acc, g, pid_m, pid_n, b_ptr, res_ptr, y_ptr,
    M, H, W, KG,
    syn, syk, syh, syw, srn, srk, srh, srw,
    alpha,
    HAS_BIAS: tl.constexpr, HAS_RESIDUAL: tl.constexpr, ACTIVATION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, FLAT_ROWS: tl.constexpr,
):
    """The epilogue of one output tile: pixel rows to offsets (pixel_rows), then conv_epilogue."""
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    _, y_rows, r_rows = pixel_rows(offs_m, H, W, 0, 0, 0, syn, syh, syw, srn, srh, srw, FLAT_ROWS)
    conv_epilogue(acc, b_ptr, res_ptr, y_ptr, y_rows, r_rows,
                  g * KG + offs_n, syk, srk, offs_m < M, offs_n < KG, alpha, HAS_BIAS, HAS_RESIDUAL, ACTIVATION)


@triton.jit
def _gemm1x1_tma_tile(
    tile, a_desc, b_desc, b_ptr, res_ptr, y_ptr,
    M, H, W, CG, KG,
    syn, syk, syh, syw, srn, srk, srh, srw,
    alpha,
    HAS_BIAS: tl.constexpr, HAS_RESIDUAL: tl.constexpr, ACTIVATION: tl.constexpr,
    ACC_DTYPE: tl.constexpr, INPUT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    FLAT_ROWS: tl.constexpr, ROTATE: tl.constexpr,
):
    """One (group, M-tile, N-tile) output tile of gemm1x1_tma_kernel, its whole reduction; with
    ROTATE, M-tile m's starts at step m * steps // M-tiles (configs.ROTATED_FORMS)."""
    g, pid_m, pid_n = tile_pid(tile, M, KG, BLOCK_M, BLOCK_N, GROUP_M)
    # at least one step, and the compiler told so (_common.split_steps says why it matters): for
    # C/groups = 0 one step past the channels, which TMA fills with zeros
    steps = tl.maximum(tl.cdiv(CG, BLOCK_K), 1)
    tl.assume(steps > 0)
    rot = 0
    if ROTATE:
        rot = ((pid_m.to(tl.int64) * steps) // tl.cdiv(M, BLOCK_M)).to(tl.int32)
    acc = _gemm1x1_tma_acc(g, pid_m, pid_n, 0, steps, a_desc, b_desc, CG, KG,
                           ACC_DTYPE, INPUT_PRECISION, BLOCK_M, BLOCK_N, BLOCK_K, rot, ROTATE)
    _gemm1x1_store(acc, g, pid_m, pid_n, b_ptr, res_ptr, y_ptr, M, H, W, KG,
                   syn, syk, syh, syw, srn, srk, srh, srw, alpha,
                   HAS_BIAS, HAS_RESIDUAL, ACTIVATION, BLOCK_M, BLOCK_N, FLAT_ROWS)


@triton.jit
def gemm1x1_tma_kernel(
    # descriptors and pointers
    a_desc,  # x as an (N*H*W, C) row-major matrix (NHWC input)
    b_desc,  # w as a (K, C/groups) row-major matrix
    b_ptr,  # (K,); unused unless HAS_BIAS
    res_ptr,  # (N, K, H, W); unused unless HAS_RESIDUAL
    y_ptr,  # (N, K, H, W), any strides
    partials_ptr,  # (programs, BLOCK_M * BLOCK_N) fp32 scratch (TMA takes no fp64); unused unless STREAM_K
    flags_ptr,  # (programs,) int32, zero between launches; unused unless STREAM_K
    # problem sizes
    M, H, W, CG, KG, GROUPS,
    # strides, in elements
    syn, syk, syh, syw,
    srn, srk, srh, srw,
    alpha: tl.float64,  # leaky_relu slope; fp64, so that an fp64 conv gets it unrounded
    # meta-parameters
    HAS_BIAS: tl.constexpr, HAS_RESIDUAL: tl.constexpr, ACTIVATION: tl.constexpr,
    ACC_DTYPE: tl.constexpr, INPUT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    PERSISTENT: tl.constexpr,  # a grid of at most one program per SM, each looping over tiles
    STREAM_K: tl.constexpr,  # a grid of at most one program per SM sharing out (tile, step) pairs evenly
    FLATTEN: tl.constexpr,  # PERSISTENT: flatten the tile loop, so the next tile's loads overlap this epilogue
    FLAT_ROWS: tl.constexpr = False,  # y and the residual have flat pixels (flat_rows): m * their W stride
    ROTATE: tl.constexpr = False,  # not STREAM_K: each M-tile's reduction starts elsewhere (configs.ROTATED_FORMS)
):
    if STREAM_K:
        _gemm1x1_tma_stream_k(a_desc, b_desc, b_ptr, res_ptr, y_ptr, partials_ptr, flags_ptr,
                              M, H, W, CG, KG, GROUPS, syn, syk, syh, syw, srn, srk, srh, srw, alpha,
                              HAS_BIAS, HAS_RESIDUAL, ACTIVATION, ACC_DTYPE, INPUT_PRECISION,
                              BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M, FLAT_ROWS)
    elif PERSISTENT:
        # program p computes tiles p, p + programs, ...: consecutive programs still
        # take consecutive tiles, so the GROUP_M ordering keeps its L2 reuse
        num_tiles = GROUPS * tl.cdiv(M, BLOCK_M) * tl.cdiv(KG, BLOCK_N)
        for tile in tl.range(tl.program_id(0), num_tiles, tl.num_programs(0), flatten=FLATTEN):
            _gemm1x1_tma_tile(tile, a_desc, b_desc, b_ptr, res_ptr, y_ptr, M, H, W, CG, KG,
                              syn, syk, syh, syw, srn, srk, srh, srw, alpha,
                              HAS_BIAS, HAS_RESIDUAL, ACTIVATION, ACC_DTYPE, INPUT_PRECISION,
                              BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M, FLAT_ROWS, ROTATE)
    else:
        _gemm1x1_tma_tile(tl.program_id(0), a_desc, b_desc, b_ptr, res_ptr, y_ptr, M, H, W, CG, KG,
                          syn, syk, syh, syw, srn, srk, srh, srw, alpha,
                          HAS_BIAS, HAS_RESIDUAL, ACTIVATION, ACC_DTYPE, INPUT_PRECISION,
                          BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M, FLAT_ROWS, ROTATE)


# Stream-K: _common.stream_k_share and its helpers say how the work is shared out and summed.


@triton.jit
def _gemm1x1_tma_stream_k(
    a_desc, b_desc, b_ptr, res_ptr, y_ptr, partials_ptr, flags_ptr,
    M, H, W, CG, KG, GROUPS,
    syn, syk, syh, syw, srn, srk, srh, srw,
    alpha,
    HAS_BIAS: tl.constexpr, HAS_RESIDUAL: tl.constexpr, ACTIVATION: tl.constexpr,
    ACC_DTYPE: tl.constexpr, INPUT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    FLAT_ROWS: tl.constexpr,
):
    steps = tl.cdiv(CG, BLOCK_K)
    # int64: tiles * steps * programs can pass 2**31 for a large layer
    total = (GROUPS * tl.cdiv(M, BLOCK_M) * tl.cdiv(KG, BLOCK_N)).to(tl.int64) * steps
    pid = tl.program_id(0)
    it, end = stream_k_share(pid, total)
    while it < end:  # backwards, last pair first (see _common)
        tile, k_lo, k_hi = stream_k_step(it, end, steps)
        g, pid_m, pid_n = tile_pid(tile, M, KG, BLOCK_M, BLOCK_N, GROUP_M)
        acc = _gemm1x1_tma_acc(g, pid_m, pid_n, k_lo, k_hi, a_desc, b_desc, CG, KG,
                               ACC_DTYPE, INPUT_PRECISION, BLOCK_M, BLOCK_N, BLOCK_K)
        if k_hi < steps:
            stream_k_hand_off(acc, partials_ptr, flags_ptr, pid, BLOCK_M, BLOCK_N)
        else:
            if k_lo > 0:
                acc = stream_k_gather(acc, partials_ptr, flags_ptr, tile, steps, total, BLOCK_M, BLOCK_N)
            _gemm1x1_store(acc, g, pid_m, pid_n, b_ptr, res_ptr, y_ptr, M, H, W, KG,
                           syn, syk, syh, syw, srn, srk, srh, srw, alpha,
                           HAS_BIAS, HAS_RESIDUAL, ACTIVATION, BLOCK_M, BLOCK_N, FLAT_ROWS)
        end -= k_hi - k_lo


_gemm1x1_tma_tuned = triton.autotune(
    configs=[triton.Config(c.kwargs, num_warps=c.num_warps, num_stages=c.num_stages, pre_hook=_set_tma_blocks)
             for c in configs.persistent_gemm_configs(stream_k=True, flatten=True)],
    key=["M", "H", "W", "CG", "KG", "GROUPS", "syk", "HAS_RESIDUAL", "ACTIVATION", "FLAT_ROWS"],
    do_bench=configs.capture_safe_bench,
    prune_configs_by={
        "early_config_prune": configs.RotatablePruneHook(
            m_fn=lambda a: a["M"], n_fn=lambda a: a["KG"], k_fn=lambda a: a["CG"], tensor_arg="y_ptr", gathered=False
        )
    },
)(gemm1x1_tma_kernel)


def conv2d_fprop_1x1_tma(x, w, bias, problem: Conv2dProblem, out=None, activation="none", alpha=0.01,
                         residual=None) -> torch.Tensor:
    """The 1x1 family with TMA operand loads (Hopper); falls back to pointer loads where TMA can't apply.

    Args/Returns: as ``conv2d_fprop_1x1``.
    """
    if not tma_usable(x, w, problem):
        return conv2d_fprop_1x1(x, w, bias, problem, out, activation, alpha, residual)
    pb = problem
    fw = prepare_forward(x, w, bias, residual, pb, out, activation)
    out = fw.out
    if out.numel() == 0:
        return out
    M = pb.N * pb.H * pb.W
    KG, CG = pb.K_per_group, pb.C_per_group
    a_desc = TensorDescriptor.from_tensor(dense_view(x, (M, pb.C)), [16, 16])
    b_desc = TensorDescriptor.from_tensor(dense_view(w, (pb.K, CG)), [16, 16])

    programs = persistent_programs(x.device)

    def grid(meta):
        tiles = pb.groups * triton.cdiv(M, meta["BLOCK_M"]) * triton.cdiv(KG, meta["BLOCK_N"])
        if meta["STREAM_K"]:
            return (min(tiles * triton.cdiv(CG, meta["BLOCK_K"]), programs),)
        return (min(tiles, programs) if meta["PERSISTENT"] else tiles,)

    # stream-K's scratch: the partial tiles (sized by _set_tma_blocks for a stream-K config;
    # each slot is written before it is read), and the flags, which a launch plan fetches per
    # call (the buffer depends on the stream)
    partials = torch.empty(0, dtype=torch.float32, device=x.device)
    device = x.device  # not x: the plan keeps this function, and must not keep the call's tensors
    flags = plans.derive(lambda: stream_k_flags(device, programs))
    tuning.launch(_gemm1x1_tma_tuned, "gemm1x1_tma", x.device, grid,
        a_desc, b_desc, fw.bias, fw.residual, out, partials, flags,
        M, pb.H, pb.W, CG, KG, pb.groups, *out.stride(), *fw.res_strides, float(alpha),
        **fw.epilogue, INPUT_PRECISION=input_precision_for(x), FLAT_ROWS=flat_rows(None, out, fw),
    )
    return out


# --------------------------------------------------------------------------- wgrad of a 1x1 conv
#
# The weight gradient of a 1x1, stride-1, unpadded conv is a plain GEMM too:
#
#     ==========  ======================  =====================================
#     GEMM        conv                    index decomposition
#     ==========  ======================  =====================================
#     M           K / groups              row -> k = g * K/groups + row
#     N_gemm      C / groups              col -> c = g * C/groups + col
#     K_gemm      N * H * W pixels        m, walked by pointer increments; split
#                                         in SPLIT_K contiguous chunks
#     A[row, m]   dy[n, k, h, w]          (dy transposed: pixels are its rows)
#     B[m, col]   x[n, c, h, w]
#     C[row, col] dw[k, c, 0, 0]
#     ==========  ======================  =====================================
#
# Walking pixels by a pointer increment needs every pixel m at offset m * stride
# in both tensors ("pixel-linear"): channels_last tensors are, and so is any
# layout at batch 1. Other layouts take the implicit-GEMM wgrad. Split-K and its
# fixed-order sum of fp32 partials are wgrad.py's (bitwise deterministic).


def pixel_stride(t: torch.Tensor) -> Optional[int]:
    """The stride s with pixel m = (n, h, w) of ``t`` (N, C, H, W) at offset m * s, or None if none exists."""
    N, _, H, W = t.shape
    stride, span = None, 1  # span: pixels covered by the dims inside the current one
    for size, st in ((W, t.stride(3)), (H, t.stride(2)), (N, t.stride(0))):
        if size == 1:
            continue  # a single-element dim's stride is never used
        if stride is None:
            stride = st
        elif st != stride * span:
            return None
        span *= size
    return 1 if stride is None else stride


def wgrad_accepts_layout(dy: torch.Tensor, x: torch.Tensor) -> bool:
    """Whether the 1x1 wgrad GEMM can walk both tensors' pixels by pointer increments."""
    return pixel_stride(dy) is not None and pixel_stride(x) is not None


@triton.jit
def gemm1x1_wgrad_kernel(
    # pointers
    dy_ptr,  # (N, K, H, W), pixel-linear: pixel m at m * sdym
    x_ptr,  # (N, C, H, W), pixel-linear: pixel m at m * sxm
    out_ptr,  # (SPLIT_K, K, C/groups): fp32 partials, or dw itself when SPLIT_K == 1
    # problem sizes
    NPIX,  # N * H * W: the GEMM's reduction (K_gemm); BLOCK_M tiles K/groups
    CG, KG, GROUPS, SPLIT_K,
    # strides, in elements
    sdym, sdyk,
    sxm, sxc,
    sos, sok, soc,  # out: split, k, c
    # meta-parameters
    ACC_DTYPE: tl.constexpr, INPUT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):
    # -- program-id mapping: (split, group, M-tile, N-tile)
    outer, pid_m, pid_n = tile_pid(tl.program_id(0), KG, CG, BLOCK_M, BLOCK_N, GROUP_M)
    split = outer // GROUPS
    g = outer % GROUPS

    # -- this split's pixels, in whole BLOCK_K steps
    start, stop = split_range(split, NPIX, SPLIT_K, BLOCK_K)

    # -- pointer setup (int64: m * sxm can pass 2**31)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    mask_m = offs_m < KG
    mask_n = offs_n < CG
    k_out = g * KG + offs_m
    pix = (start + offs_k).to(tl.int64)
    a_ptrs = dy_ptr + k_out.to(tl.int64)[:, None] * sdyk + pix[None, :] * sdym
    b_ptrs = x_ptr + pix[:, None] * sxm + (g * CG + offs_n).to(tl.int64)[None, :] * sxc

    # -- reduction loop: a dense matmul's, at least one step, and the compiler told so
    # (_common.split_steps says why it matters): an empty chunk's one step loads nothing (k_ok)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC_DTYPE)
    end = tl.maximum(stop, start + 1)
    tl.assume(end > start)
    for k0 in range(start, end, BLOCK_K):
        k_ok = offs_k < stop - k0
        a = tl.load(a_ptrs, mask=mask_m[:, None] & k_ok[None, :], other=0.0)
        b = tl.load(b_ptrs, mask=k_ok[:, None] & mask_n[None, :], other=0.0)
        acc = mma(a, b, acc, INPUT_PRECISION, ACC_DTYPE)
        a_ptrs += BLOCK_K * sdym
        b_ptrs += BLOCK_K * sxm

    # -- epilogue: this split's partial (or the gradient itself)
    out = out_ptr + split.to(tl.int64) * sos + k_out.to(tl.int64)[:, None] * sok + offs_n.to(tl.int64)[None, :] * soc
    tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=mask_m[:, None] & mask_n[None, :])


def _wgrad_prune_hook(tensor_arg: str):
    """The 1x1 wgrad GEMMs' pruning: M = K/groups, N = C/groups, K = one split's pixels; not gathered."""
    return configs.gemm_prune_hook(
        m_fn=lambda a: a["KG"], n_fn=lambda a: a["CG"], k_fn=lambda a: triton.cdiv(a["NPIX"], a["SPLIT_K"]),
        tensor_arg=tensor_arg, gathered=False,
    )


_gemm1x1_wgrad_tuned = triton.autotune(
    configs=configs.gemm_configs(),
    key=["NPIX", "CG", "KG", "GROUPS", "SPLIT_K", "sdym", "sxm"],
    do_bench=configs.capture_safe_bench,
    prune_configs_by={"early_config_prune": _wgrad_prune_hook("dy_ptr")},
)(gemm1x1_wgrad_kernel)


def conv2d_wgrad_1x1(dy: torch.Tensor, x: torch.Tensor, problem: Conv2dProblem,
                     memory_format: torch.memory_format = torch.contiguous_format,
                     split_k: Optional[int] = None) -> torch.Tensor:
    """Launch the 1x1 wgrad GEMM; the same contract as ``wgrad.conv2d_wgrad``, which it falls back to
    for layouts whose pixels are not pixel-linear (``wgrad_accepts_layout``).

    Args:
        dy, x, problem, memory_format, split_k: as for ``conv2d_wgrad``; ``problem`` must satisfy ``accepts``.

    Returns:
        dw (K, C/groups, 1, 1) in dy's dtype, bitwise deterministic.
    """
    pb = problem
    if not accepts(pb):
        raise ValueError(f"the 1x1 family does not compute {pb}")
    if not wgrad_accepts_layout(dy, x):
        return conv2d_wgrad(dy, x, pb, memory_format, split_k)
    check_device(dy, x)
    check_pixel_count(pb.N * pb.H * pb.W, "output (N*H*W)")
    M = pb.N * pb.H * pb.W
    if M == 0 or pb.K == 0 or pb.C == 0:
        return conv2d_wgrad(dy, x, pb, memory_format, split_k)  # its empty-problem handling
    dw, split, out, out_strides = wgrad_workspace(dy, pb, memory_format, split_k, M)  # strides[:3]: r = s = 1
    KG, CG = pb.K_per_group, pb.C_per_group

    def grid(meta):
        return (split * pb.groups * triton.cdiv(KG, meta["BLOCK_M"]) * triton.cdiv(CG, meta["BLOCK_N"]),)

    tuning.launch(_gemm1x1_wgrad_tuned, "gemm1x1_wgrad", dy.device, grid,
        dy, x, out, M, CG, KG, pb.groups, split,
        pixel_stride(dy), dy.stride(1), pixel_stride(x), x.stride(1), *out_strides[:3],
        ACC_DTYPE=acc_dtype_for(dy.dtype), INPUT_PRECISION=input_precision_for(dy),
    )
    return finish_wgrad(dw, out, split)


# TMA for the 1x1 wgrad: dy and x as (N*H*W, K) and (N*H*W, C) row-major matrices
# (NHWC). 16-bit only: tl.dot takes A as dy's tile transposed, and only 16-bit
# wgmma reads a transposed operand from shared memory.
WGRAD_TMA_DTYPES = (torch.float16, torch.bfloat16)


def wgrad_tma_usable(dy: torch.Tensor, x: torch.Tensor, problem: Conv2dProblem) -> bool:
    """Both operands as 2-D row-major (pixels, channels) views on sm_90+, with 16-byte aligned
    bases and every group's first channel 16-byte aligned (a TMA box starts 16-byte aligned in
    its inner dimension): K/groups and C/groups * elem % 16 == 0."""
    pb = problem
    if TensorDescriptor is None or dy.dtype not in WGRAD_TMA_DTYPES or not accepts(pb):
        return False
    if (pb.K_per_group * dy.element_size()) % 16 or (pb.C_per_group * dy.element_size()) % 16:
        return False
    if dy.is_cuda and torch.cuda.get_device_capability(dy.device)[0] < 9:
        return False
    esize = dy.element_size()
    for t in (dy, x):
        if not t.is_contiguous(memory_format=torch.channels_last) or t.data_ptr() % 16 or t.shape[1] * esize % 16:
            return False
    return True


def _set_wgrad_tma_blocks(nargs):
    """Autotune pre-hook: both descriptors load (BLOCK_K pixels, channels) tiles."""
    nargs["a_desc"].block_shape = [nargs["BLOCK_K"], nargs["BLOCK_M"]]
    nargs["b_desc"].block_shape = [nargs["BLOCK_K"], nargs["BLOCK_N"]]


@triton.jit
def gemm1x1_wgrad_tma_kernel(
    # descriptors and pointers
    a_desc,  # dy as an (N*H*W, K) row-major matrix (NHWC)
    b_desc,  # x as an (N*H*W, C) row-major matrix (NHWC)
    out_ptr,  # (SPLIT_K, K, C/groups): fp32 partials, or dw itself when SPLIT_K == 1
    dy_ptr,  # (N, K, H, W): never read (the descriptors load it); its dtype keys the tuning
    # problem sizes
    NPIX, CG, KG, GROUPS, SPLIT_K,
    # strides, in elements
    sos, sok, soc,
    # meta-parameters
    ACC_DTYPE: tl.constexpr, INPUT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):
    # -- program-id mapping: (split, group, M-tile, N-tile)
    outer, pid_m, pid_n = tile_pid(tl.program_id(0), KG, CG, BLOCK_M, BLOCK_N, GROUP_M)
    split = outer // GROUPS
    g = outer % GROUPS

    # -- reduction: TMA tiles of this split's pixels. Chunks are whole BLOCK_K
    #    steps, so no tile crosses into the next chunk; rows past N*H*W are
    #    zero-filled. Channels past this group's share (the next group's, or
    #    zero-fill) only reach rows and columns the store masks out.
    start, stop = split_range(split, NPIX, SPLIT_K, BLOCK_K)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC_DTYPE)
    for k0 in range(start, stop, BLOCK_K):
        a = a_desc.load([k0, g * KG + pid_m * BLOCK_M])
        b = b_desc.load([k0, g * CG + pid_n * BLOCK_N])
        acc = mma(a.T, b, acc, INPUT_PRECISION, ACC_DTYPE)

    # -- epilogue: this split's partial (or the gradient itself)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    k_out = g * KG + offs_m
    out = out_ptr + split.to(tl.int64) * sos + k_out.to(tl.int64)[:, None] * sok + offs_n.to(tl.int64)[None, :] * soc
    tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=(offs_m < KG)[:, None] & (offs_n < CG)[None, :])


_gemm1x1_wgrad_tma_tuned = triton.autotune(
    configs=[triton.Config(c.kwargs, num_warps=c.num_warps, num_stages=c.num_stages, pre_hook=_set_wgrad_tma_blocks)
             for c in configs.gemm_configs()],
    key=["NPIX", "CG", "KG", "GROUPS", "SPLIT_K"],
    do_bench=configs.capture_safe_bench,
    prune_configs_by={"early_config_prune": _wgrad_prune_hook("dy_ptr")},
)(gemm1x1_wgrad_tma_kernel)


def conv2d_wgrad_1x1_tma(dy: torch.Tensor, x: torch.Tensor, problem: Conv2dProblem,
                         memory_format: torch.memory_format = torch.contiguous_format,
                         split_k: Optional[int] = None) -> torch.Tensor:
    """The 1x1 wgrad GEMM with TMA operand loads (Hopper); falls back to ``conv2d_wgrad_1x1`` where
    TMA can't apply (``wgrad_tma_usable``).

    Args/Returns: as ``conv2d_wgrad_1x1``.
    """
    pb = problem
    M = pb.N * pb.H * pb.W
    if not wgrad_tma_usable(dy, x, pb) or M == 0 or pb.K == 0 or pb.C == 0:
        return conv2d_wgrad_1x1(dy, x, pb, memory_format, split_k)
    check_device(dy, x)
    check_pixel_count(M, "output (N*H*W)")
    dw, split, out, out_strides = wgrad_workspace(dy, pb, memory_format, split_k, M)  # strides[:3]: r = s = 1
    KG, CG = pb.K_per_group, pb.C_per_group
    a_desc = TensorDescriptor.from_tensor(dense_view(dy, (M, pb.K)), [16, 16])
    b_desc = TensorDescriptor.from_tensor(dense_view(x, (M, pb.C)), [16, 16])

    def grid(meta):
        return (split * pb.groups * triton.cdiv(KG, meta["BLOCK_M"]) * triton.cdiv(CG, meta["BLOCK_N"]),)

    tuning.launch(_gemm1x1_wgrad_tma_tuned, "gemm1x1_wgrad_tma", dy.device, grid,
        a_desc, b_desc, out, dy, M, CG, KG, pb.groups, split, *out_strides[:3],
        ACC_DTYPE=acc_dtype_for(dy.dtype), INPUT_PRECISION=input_precision_for(dy),
    )
    return finish_wgrad(dw, out, split)
