"""Forward conv for few input channels per group (the RGB stem, C/groups <= 8).

    ==========  ===========================  ==========================================
    GEMM        conv                         index decomposition
    ==========  ===========================  ==========================================
    M           N * P * Q  output pixels     m -> (n, p, q), once per tile
    N_gemm      K / groups                   j -> k = g * K/groups + j
    K_gemm      R * S * C/groups, flattened  kk -> (r, s, c), c fastest, per element
    A[m, kk]    x[n, c, h, w]                h = p*stride_h - pad_h + r*dil_h  (0 outside)
    B[kk, j]    w[k, c, r, s]
    padded      K_gemm = R*S*C_PITCH          A[m, kk] = xp[n, h, w, c], B[kk, j] = wp[k, r, s, c]
    ==========  ===========================  ==========================================

The general kernel walks (tap, channel block): with C = 3 and BLOCK_K = 16 each
tile would be 13/16 padding. Flattening the reduction over (r, s, c) fills
every BLOCK_K column with real work, at the price of decomposing kk per element.

Padded variant (``smallc_pad``, C <= 8, groups == 1). With C = 3 every A element
is a lone 2-byte gather: no vector loads, and no cp.async (it moves 4 bytes or
more), so the reduction is not software-pipelined (compile-report: async False).
This variant first copies x into an NHWC buffer with C padded to C_PITCH = 4 or 8
zeroed channels, and the weight into KRSC with the same pitch. Then kk -> (r, s, c)
with c = kk % C_PITCH, and every C_PITCH run of kk is one aligned vector of
C_PITCH channels (8 bytes for fp16 RGB), which cp.async can pipeline; the weight
is contiguous along kk. It costs one copy of x (C_PITCH/C times its size) and
C_PITCH/C more MMA work; the router times it against the gather on the GPU.
"""

from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from .. import configs, plans, tuning
from ..spec import Conv2dProblem
from ._common import conv_epilogue, input_precision_for, mma, prepare_forward, tile_pid

__all__ = ["conv2d_fprop_smallc", "conv2d_fprop_smallc_pad", "smallc_fprop_kernel", "accepts", "accepts_pad",
           "MAX_C"]

MAX_C = 8


def accepts(problem: Conv2dProblem) -> bool:
    return problem.C_per_group <= MAX_C


_PITCHES = (4, 8)  # 8 and 16 bytes of fp16: a vector load per pitch


def accepts_pad(problem: Conv2dProblem) -> bool:
    """The padded variant: one group of at most MAX_C channels, and an image whose padded copy
    the kernel can index in int32."""
    return problem.groups == 1 and problem.C <= MAX_C and problem.H * problem.W * _PITCHES[-1] < 2**31


def _pitch(C: int) -> int:
    return next(p for p in _PITCHES if p >= C)


@triton.jit
def smallc_fprop_kernel(
    # pointers
    x_ptr,  # (N, C, H, W), any strides
    w_ptr,  # (K, C/groups, R, S), any strides
    b_ptr,  # (K,); unused unless HAS_BIAS
    res_ptr,  # (N, K, P, Q); unused unless HAS_RESIDUAL
    y_ptr,  # (N, K, P, Q), any strides
    # problem sizes
    M, H, W, P, Q, R, S, CG, KG, GROUPS,
    # conv parameters
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
    # strides, in elements
    sxn, sxc, sxh, sxw,
    swk, swc, swr, sws,
    syn, syk, syp, syq,
    srn, srk, srp, srq,
    alpha,
    # meta-parameters
    HAS_BIAS: tl.constexpr, HAS_RESIDUAL: tl.constexpr, ACTIVATION: tl.constexpr,
    ACC_DTYPE: tl.constexpr, INPUT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    C_PITCH: tl.constexpr = 0,  # > 0: x is (N, H, W, C_PITCH) dense and w (K, R, S, C_PITCH) dense, zero-padded
):
    # -- program-id mapping: (group, M-tile, N-tile)
    g, pid_m, pid_n = tile_pid(tl.program_id(0), M, KG, BLOCK_M, BLOCK_N, GROUP_M)

    # -- pixel setup, once per tile
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    mask_m = offs_m < M
    mask_n = offs_n < KG
    q = offs_m % Q
    p = (offs_m // Q) % P
    n = (offs_m // (P * Q)).to(tl.int64)
    h0 = p * stride_h - pad_h
    w0 = q * stride_w - pad_w
    k_out = g * KG + offs_n
    if C_PITCH > 0:
        # dense padded copies: the pitch is a constexpr, so each C_PITCH run of kk is one
        # aligned vector in x and the weight is contiguous along kk
        RSC = R * S * C_PITCH
        x_rows = x_ptr + n * H * W * C_PITCH
        w_cols = w_ptr + k_out.to(tl.int64) * RSC
    else:
        RSC = R * S * CG
        x_rows = x_ptr + n * sxn + (g * CG).to(tl.int64) * sxc
        w_cols = w_ptr + k_out.to(tl.int64) * swk

    # -- reduction over the flattened (r, s, c)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC_DTYPE)
    for k0 in range(0, RSC, BLOCK_K):
        kk = k0 + offs_k
        if C_PITCH > 0:
            c = kk % C_PITCH
            rs = kk // C_PITCH
        else:
            c = kk % CG
            rs = kk // CG
        r = rs // S
        s = rs % S
        kk_ok = kk < RSC
        h = h0[:, None] + (r * dil_h)[None, :]
        w = w0[:, None] + (s * dil_w)[None, :]
        ok = mask_m[:, None] & kk_ok[None, :] & (h >= 0) & (h < H) & (w >= 0) & (w < W)
        if C_PITCH > 0:
            a_off = (h * W + w) * C_PITCH + c[None, :]  # within one image: int32 (accepts_pad)
            b_off = kk
        else:
            a_off = h.to(tl.int64) * sxh + w.to(tl.int64) * sxw + c.to(tl.int64)[None, :] * sxc
            b_off = c.to(tl.int64) * swc + r.to(tl.int64) * swr + s.to(tl.int64) * sws
        a = tl.load(x_rows[:, None] + a_off, mask=ok, other=0.0)
        b = tl.load(w_cols[None, :] + b_off[:, None], mask=kk_ok[:, None] & mask_n[None, :], other=0.0)
        acc = mma(a, b, acc, INPUT_PRECISION, ACC_DTYPE)

    # -- epilogue
    y_rows = n * syn + p.to(tl.int64) * syp + q.to(tl.int64) * syq
    r_rows = n * srn + p.to(tl.int64) * srp + q.to(tl.int64) * srq
    conv_epilogue(acc, b_ptr, res_ptr, y_ptr, y_rows, r_rows, k_out, syk, srk, mask_m, mask_n, alpha,
                  HAS_BIAS, HAS_RESIDUAL, ACTIVATION)


def _autotuned(key):
    return triton.autotune(
        configs=configs.gemm_configs(configs.SMALLC_TILES),
        key=key,
        do_bench=configs.capture_safe_bench,
        prune_configs_by={
            "early_config_prune": configs.gemm_prune_hook(
                m_fn=lambda a: a["M"], n_fn=lambda a: a["KG"], k_fn=lambda a: a["R"] * a["S"] * a["CG"],
                tensor_arg="x_ptr",
            )
        },
    )(smallc_fprop_kernel)


_SHAPE_KEY = ["M", "H", "W", "CG", "KG", "R", "S", "stride_h", "stride_w", "dil_h", "dil_w", "syk",
              "HAS_RESIDUAL", "ACTIVATION"]  # the epilogue changes what the pruner keeps
_smallc_tuned = _autotuned(_SHAPE_KEY + ["GROUPS", "sxc"])
# the padded variant, tuned on its own: its loads and reduction length differ (CG is the pitch)
_smallc_pad_tuned = _autotuned(_SHAPE_KEY + ["C_PITCH"])


def conv2d_fprop_smallc(
    x: torch.Tensor,
    w: torch.Tensor,
    bias: Optional[torch.Tensor],
    problem: Conv2dProblem,
    out: Optional[torch.Tensor] = None,
    activation: str = "none",
    alpha: float = 0.01,
    residual: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Launch the small-C forward; the same contract as ``fprop.conv2d_fprop``.

    Args:
        x, w, bias, problem, out, activation, alpha, residual: as for ``conv2d_fprop``.

    Returns:
        y (N, K, P, Q) in x's dtype.
    """
    pb = problem
    fw = prepare_forward(x, w, bias, residual, pb, out, activation)
    if fw.out.numel() == 0:
        return fw.out
    _launch(_smallc_tuned, "smallc", x, w, fw, pb, pb.C_per_group, pb.groups, alpha,
            INPUT_PRECISION=input_precision_for(x))
    return fw.out


def _launch(tuned, name, x, w, fw, pb: Conv2dProblem, CG: int, groups: int, alpha: float, **meta) -> None:
    """One launch of smallc_fprop_kernel: x and w as (N, C, H, W) and (K, C/groups, R, S) views,
    CG the channels per group it reduces over (the pitch for the padded copies)."""
    M, KG = pb.N * pb.P * pb.Q, pb.K // groups

    def grid(m):
        return (groups * triton.cdiv(M, m["BLOCK_M"]) * triton.cdiv(KG, m["BLOCK_N"]),)

    tuning.launch(tuned, name, x.device, grid,
        x, w, fw.bias, fw.residual, fw.out,
        M, pb.H, pb.W, pb.P, pb.Q, pb.R, pb.S, CG, KG, groups,
        pb.stride_h, pb.stride_w, pb.pad_h, pb.pad_w, pb.dil_h, pb.dil_w,
        *x.stride(), *w.stride(), *fw.out.stride(), *fw.res_strides, float(alpha), **fw.epilogue, **meta,
    )


def _padded(t: torch.Tensor, pitch: int) -> torch.Tensor:
    """(N, H, W, pitch) dense, the channels past t's zero, from t (N, C, H, W)."""
    return torch.nn.functional.pad(t.permute(0, 2, 3, 1), (0, pitch - t.shape[1])).contiguous()


def conv2d_fprop_smallc_pad(
    x: torch.Tensor,
    w: torch.Tensor,
    bias: Optional[torch.Tensor],
    problem: Conv2dProblem,
    out: Optional[torch.Tensor] = None,
    activation: str = "none",
    alpha: float = 0.01,
    residual: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Launch the padded small-C forward (see the module docstring); the same contract as
    ``fprop.conv2d_fprop``. Problems it does not take (``accepts_pad``) go to the gather.

    Args:
        x, w, bias, problem, out, activation, alpha, residual: as for ``conv2d_fprop``.

    Returns:
        y (N, K, P, Q) in x's dtype.
    """
    pb = problem
    if not accepts_pad(pb):
        return conv2d_fprop_smallc(x, w, bias, pb, out, activation, alpha, residual)
    fw = prepare_forward(x, w, bias, residual, pb, out, activation)
    if fw.out.numel() == 0:
        return fw.out
    pitch = _pitch(pb.C)
    # (N, H, W, C_PITCH) and (K, R, S, C_PITCH), dense, the extra channels zero; passed as
    # NCHW-shaped views, as the gather takes x and w (torch work a launch plan reruns per call)
    xp, wp = plans.derive(lambda x, w: (_padded(x, pitch), _padded(w, pitch)), x, w)
    _launch(_smallc_pad_tuned, "smallc_pad", xp.permute(0, 3, 1, 2), wp.permute(0, 3, 1, 2), fw, pb, pitch, 1,
            alpha, INPUT_PRECISION=input_precision_for(x), C_PITCH=pitch)
    return fw.out
