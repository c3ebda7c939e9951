"""Fused attention (FlashAttention-2 style, Triton) and the backend dispatcher every model calls.

Layers, bottom up:
  1. `@triton.jit` kernels: `_attn_fwd_kernel` (online softmax, saves the log-sum-exp),
     `_attn_bwd_dq_kernel` (one program per query block: delta, dQ, and optionally dS and the
     per-row dscale terms), `_attn_bwd_dkdv_kernel` (one program per key block: dK, dV). When one
     query block covers every query (N <= 128 on CUDA: Swin windows, ViT's 65 tokens) the dQ program
     also finishes dK and dV and the backward is a single kernel.
     No atomics: every output element has exactly one writer; cross-program sums are written as
     partials (dscale per (b, h, row); dS per (b, h), or summed in registers over up to 8 batches that
     share a window's bias) and reduced by torch, so gradients are bitwise deterministic.
  2. Launchers `attention_forward` / `attention_backward`: shapes, strides, grids, block sizes
     (autotuned per head dim and token count on CUDA over candidates pruned by an sm_90 spill rule, or
     one pinned config per shape after `set_deterministic(True)`; fixed blocks under the CPU
     interpreter), and the dot precision (`dot_precision`: IEEE fp32, or TF32 when torch allows it).
  3. `torch.library` custom ops `fastvit::attention_fwd` / `fastvit::attention_bwd` with fake
     implementations and autograd, so `torch.compile` traces through the kernel as one opaque node.
  4. Backends (`triton`, `xformers`, `sdpa` and its pinned CUDA kernels, `math`, `math_fp32`) that each answer
     `not_supported_reasons`, the dispatcher `select_backend` (auto: measured, cached by
     fastvit.choices), and the public `attention`.
"""

import contextlib
import functools
import importlib.metadata
import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from packaging.version import Version

from fastvit.errors import UserError

try:
    import triton
    import triton.language as tl
except ImportError:  # torch-only installs (e.g. macOS) still get sdpa and math
    triton = None

BACKENDS = ("triton", "xformers", "sdpa", "sdpa_flash", "sdpa_efficient", "sdpa_cudnn", "math", "math_fp32")
# auto measures every eligible backend; this order is its fallback where it cannot measure (under
# torch.compile tracing without a cached choice, --deterministic runs, unknown shapes)
PRIORITY = BACKENDS
MAX_HEAD_DIM = 128
XFORMERS_MIN_VERSION = Version("0.0.35")
_CPU_BLOCK = 64  # interpreter block size: large blocks mean fewer interpreted loop iterations
# Backward modes (module knobs so benchmarks can A/B them on a GPU; see `attention_backward`):
FUSED_BWD_MAX_N = 64  # one backward kernel when N_Q <= this (ptxas: N_Q = 65 -> 128-row tiles spill on sm_90)
DS_GROUP_MAX = 8  # batches sharing a window's bias whose dS one program sums in registers (1 = off)


def _empty(shape, dtype, device):
    """Allocation of every kernel output (tests swap in a NaN-filled version to catch unwritten entries)."""
    return torch.empty(shape, dtype=dtype, device=device)


# --------------------------------------------------------------------------------------------------
# Triton kernels
# --------------------------------------------------------------------------------------------------
if triton is not None:
    _LOG2E = tl.constexpr(1.4426950408889634)  # scores are kept in base 2: exp(x) = exp2(x * log2(e))

    @triton.jit
    def _attn_fwd_kernel(
        Q, K, V, Bias, Scale, Out, Lse,
        stride_qb, stride_qh, stride_qm, stride_qd,  # Q: (B, H, N_Q, D)
        stride_kb, stride_kh, stride_kn, stride_kd,  # K: (B, H, N_K, D)
        stride_vb, stride_vh, stride_vn, stride_vd,  # V: (B, H, N_K, D)
        stride_bb, stride_bh, stride_bm, stride_bn,  # Bias: (NB, H, N_Q, N_K), 0 on broadcast dims
        stride_ob, stride_oh, stride_om, stride_od,  # Out: (B, H, N_Q, D); Lse: (B, H, N_Q) contiguous fp32
        H, NB, N_Q, N_K, scale_value,
        HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
        HAS_BIAS: tl.constexpr, PER_HEAD_SCALE: tl.constexpr, DOT_PRECISION: tl.constexpr,
    ):
        tl.static_assert(BLOCK_D >= HEAD_DIM)
        tl.static_assert(BLOCK_M >= 16 and BLOCK_N >= 16 and BLOCK_D >= 16)  # tl.dot minimum
        # Grid: (B * H, cdiv(N_Q, BLOCK_M)); B * H on axis 0 because axis 1 is capped at 65535.
        pid_bh = tl.program_id(0).to(tl.int64)
        pid_m = tl.program_id(1)
        b = pid_bh // H
        h = pid_bh % H
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_n = tl.arange(0, BLOCK_N)
        offs_d = tl.arange(0, BLOCK_D)
        row_ok = offs_m < N_Q
        d_ok = offs_d < HEAD_DIM

        q_ptrs = Q + b * stride_qb + h * stride_qh + offs_m[:, None] * stride_qm + offs_d[None, :] * stride_qd
        q = tl.load(q_ptrs, mask=row_ok[:, None] & d_ok[None, :], other=0.0)  # (BLOCK_M, BLOCK_D)
        if PER_HEAD_SCALE:
            scale = tl.load(Scale + h).to(tl.float32)
        else:
            scale = scale_value
        k_base = K + b * stride_kb + h * stride_kh
        v_base = V + b * stride_vb + h * stride_vh
        bias_base = Bias + (b % NB) * stride_bb + h * stride_bh  # windowed bias: batch b reads bias[b % NB]

        # Online softmax in base 2: s2 = (scale * q.k + bias) * log2(e); m = running max, l = running sum.
        m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
        l_i = tl.zeros([BLOCK_M], tl.float32)
        acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
        for start_n in range(0, N_K, BLOCK_N):
            cols = start_n + offs_n
            col_ok = cols < N_K
            k = tl.load(k_base + cols[:, None] * stride_kn + offs_d[None, :] * stride_kd,
                        mask=col_ok[:, None] & d_ok[None, :], other=0.0)  # (BLOCK_N, BLOCK_D)
            v = tl.load(v_base + cols[:, None] * stride_vn + offs_d[None, :] * stride_vd,
                        mask=col_ok[:, None] & d_ok[None, :], other=0.0)  # (BLOCK_N, BLOCK_D)
            s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * (scale * _LOG2E)  # (BLOCK_M, BLOCK_N)
            if HAS_BIAS:
                bias = tl.load(bias_base + offs_m[:, None] * stride_bm + cols[None, :] * stride_bn,
                               mask=row_ok[:, None] & col_ok[None, :], other=0.0)
                s += bias.to(tl.float32) * _LOG2E
            s = tl.where(col_ok[None, :], s, float("-inf"))  # padded keys get no weight
            # m_new >= m_i; alpha rescales what was accumulated under the old max. While every key seen so
            # far is -inf (masked), m_new = -inf: subtract 0 instead, so p = alpha = 0, never -inf - -inf.
            m_new = tl.maximum(m_i, tl.max(s, 1))
            m_sub = tl.where(m_new == float("-inf"), 0.0, m_new)
            alpha = tl.exp2(m_i - m_sub)
            p = tl.exp2(s - m_sub[:, None])
            l_i = l_i * alpha + tl.sum(p, 1)
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
            m_i = m_new

        # A row whose every key is -inf has l = 0: output 0 (as torch's SDPA) and lse2 = +inf, so that the
        # backward's p = exp2(s2 - lse2) is 0 there and its gradients are 0 too.
        seen = l_i > 0
        l_div = tl.where(seen, l_i, 1.0)
        acc = acc / l_div[:, None]
        # lse2 = log2(sum_j exp2(s2_j)): the backward recomputes p = exp2(s2 - lse2) without a max pass.
        lse2 = tl.where(seen, m_i + tl.log2(l_div), float("inf"))
        tl.store(Lse + pid_bh * N_Q + offs_m, lse2, mask=row_ok)
        out_ptrs = Out + b * stride_ob + h * stride_oh + offs_m[:, None] * stride_om + offs_d[None, :] * stride_od
        tl.store(out_ptrs, acc.to(Out.dtype.element_ty), mask=row_ok[:, None] & d_ok[None, :])

    @triton.jit
    def _attn_bwd_dq_kernel(
        Q, K, V, Bias, Scale, Out, DOut, Lse, Delta, DQ, DK, DV, DS, DScaleRows,
        stride_qb, stride_qh, stride_qm, stride_qd,  # Q: (B, H, N_Q, D)
        stride_kb, stride_kh, stride_kn, stride_kd,  # K: (B, H, N_K, D)
        stride_vb, stride_vh, stride_vn, stride_vd,  # V: (B, H, N_K, D)
        stride_bb, stride_bh, stride_bm, stride_bn,  # Bias: (NB, H, N_Q, N_K), 0 on broadcast dims
        stride_ob, stride_oh, stride_om, stride_od,  # Out: (B, H, N_Q, D)
        stride_gb, stride_gh, stride_gm, stride_gd,  # DOut: (B, H, N_Q, D)
        stride_dqb, stride_dqh, stride_dqm, stride_dqd,  # DQ: (B, H, N_Q, D)
        stride_dkb, stride_dkh, stride_dkn, stride_dkd,  # DK, DV: (B, H, N_K, D), same strides (FUSED_DKDV)
        # Lse, Delta, DScaleRows: (B, H, N_Q) contiguous fp32
        # DS: (cdiv(N_GROUPS, DS_GROUP), NB, H, N_Q, N_K) contiguous fp32, dS summed over DS_GROUP batches
        H, NB, N_GROUPS, N_Q, N_K, scale_value,
        HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
        HAS_BIAS: tl.constexpr, PER_HEAD_SCALE: tl.constexpr, STORE_DS: tl.constexpr, DS_GROUP: tl.constexpr,
        STORE_DSCALE: tl.constexpr, FUSED_DKDV: tl.constexpr, DOT_PRECISION: tl.constexpr,
    ):
        tl.static_assert(BLOCK_D >= HEAD_DIM)
        tl.static_assert(BLOCK_M >= 16 and BLOCK_N >= 16 and BLOCK_D >= 16)
        # Grid: (cdiv(N_GROUPS, DS_GROUP) * NB * H, cdiv(N_Q, BLOCK_M)), N_GROUPS = B // NB. Axis 0 is
        # (chunk, w, h); the program handles batches b = (chunk * DS_GROUP + g) * NB + w for g < DS_GROUP,
        # which all read bias[w], in a fixed order: their dS sum stays in registers (DS_GROUP > 1 requires
        # N_K <= BLOCK_N, one key block). With DS_GROUP = 1 axis 0 is simply b * H + h.
        # FUSED_DKDV (N_Q <= BLOCK_M: one query block holds every query) also finishes dK and dV here, per
        # key block, so the dK/dV kernel and its second pass over q, dO, lse, delta are skipped.
        pid = tl.program_id(0).to(tl.int64)
        pid_m = tl.program_id(1)
        h = pid % H
        w = (pid // H) % NB
        chunk = pid // (H * NB)
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_n = tl.arange(0, BLOCK_N)
        offs_d = tl.arange(0, BLOCK_D)
        d_ok = offs_d < HEAD_DIM
        if PER_HEAD_SCALE:
            scale = tl.load(Scale + h).to(tl.float32)
        else:
            scale = scale_value
        bias_base = Bias + w * stride_bb + h * stride_bh
        ds_sum = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)

        for g in range(DS_GROUP):
            group = chunk * DS_GROUP + g
            # The last chunk may be partial: past the end, point at the last group (every load stays in
            # bounds) and mask q, dO, O and every store; q = dO = 0 make those rows' dS exactly 0.
            b = tl.minimum(group, N_GROUPS - 1) * NB + w
            pid_bh = b * H + h
            row_ok = (offs_m < N_Q) & (group < N_GROUPS)
            md_ok = row_ok[:, None] & d_ok[None, :]
            q_ptrs = Q + b * stride_qb + h * stride_qh + offs_m[:, None] * stride_qm + offs_d[None, :] * stride_qd
            do_ptrs = DOut + b * stride_gb + h * stride_gh + offs_m[:, None] * stride_gm + offs_d[None, :] * stride_gd
            o_ptrs = Out + b * stride_ob + h * stride_oh + offs_m[:, None] * stride_om + offs_d[None, :] * stride_od
            q = tl.load(q_ptrs, mask=md_ok, other=0.0)  # (BLOCK_M, BLOCK_D)
            do = tl.load(do_ptrs, mask=md_ok, other=0.0)  # (BLOCK_M, BLOCK_D)
            o = tl.load(o_ptrs, mask=md_ok, other=0.0)  # (BLOCK_M, BLOCK_D)
            # delta_i = sum_d dO_id O_id = sum_j P_ij dP_ij (softmax Jacobian term); the dK/dV kernel reads it.
            delta = tl.sum(do.to(tl.float32) * o.to(tl.float32), 1)  # (BLOCK_M,)
            if not FUSED_DKDV:
                tl.store(Delta + pid_bh * N_Q + offs_m, delta, mask=row_ok)
            lse = tl.load(Lse + pid_bh * N_Q + offs_m, mask=row_ok, other=0.0)
            k_base = K + b * stride_kb + h * stride_kh
            v_base = V + b * stride_vb + h * stride_vh

            # dS_ij = P_ij (dP_ij - delta_i) with dP = dO V^T;  dQ = scale * dS K;  dscale = sum dS * (q.k).
            dq = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
            dscale_rows = tl.zeros([BLOCK_M], tl.float32)
            for start_n in range(0, N_K, BLOCK_N):
                cols = start_n + offs_n
                col_ok = cols < N_K
                k = tl.load(k_base + cols[:, None] * stride_kn + offs_d[None, :] * stride_kd,
                            mask=col_ok[:, None] & d_ok[None, :], other=0.0)  # (BLOCK_N, BLOCK_D)
                v = tl.load(v_base + cols[:, None] * stride_vn + offs_d[None, :] * stride_vd,
                            mask=col_ok[:, None] & d_ok[None, :], other=0.0)  # (BLOCK_N, BLOCK_D)
                # (BLOCK_M, BLOCK_N): q.k before scale
                raw = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION)
                s = raw * (scale * _LOG2E)
                if HAS_BIAS:
                    bias = tl.load(bias_base + offs_m[:, None] * stride_bm + cols[None, :] * stride_bn,
                                   mask=row_ok[:, None] & col_ok[None, :], other=0.0)
                    s += bias.to(tl.float32) * _LOG2E
                p = tl.where(col_ok[None, :], tl.exp2(s - lse[:, None]), 0.0)
                dp = tl.dot(do, tl.trans(v), input_precision=DOT_PRECISION)  # (BLOCK_M, BLOCK_N)
                ds = p * (dp - delta[:, None])
                dq += tl.dot(ds.to(k.dtype), k, input_precision=DOT_PRECISION)
                if FUSED_DKDV:  # padded query rows have dO = q = 0: no mask needed on p or dS
                    dv = tl.dot(tl.trans(p.to(do.dtype)), do, input_precision=DOT_PRECISION)  # (BLOCK_N, BLOCK_D)
                    dk = tl.dot(tl.trans(ds.to(q.dtype)), q, input_precision=DOT_PRECISION) * scale
                    dkv_offs = (b * stride_dkb + h * stride_dkh + cols[:, None] * stride_dkn
                                + offs_d[None, :] * stride_dkd)
                    dkv_ok = col_ok[:, None] & d_ok[None, :] & (group < N_GROUPS)
                    tl.store(DK + dkv_offs, dk.to(DK.dtype.element_ty), mask=dkv_ok)
                    tl.store(DV + dkv_offs, dv.to(DV.dtype.element_ty), mask=dkv_ok)
                if STORE_DS:
                    if DS_GROUP == 1:
                        tl.store(DS + pid * N_Q * N_K + offs_m[:, None] * N_K + cols[None, :], ds,
                                 mask=row_ok[:, None] & col_ok[None, :])
                    else:
                        ds_sum += ds
                if STORE_DSCALE:
                    dscale_rows += tl.sum(ds * raw, 1)

            dq = dq * scale
            dq_ptrs = DQ + b * stride_dqb + h * stride_dqh + offs_m[:, None] * stride_dqm + offs_d[None, :] * stride_dqd
            tl.store(dq_ptrs, dq.to(DQ.dtype.element_ty), mask=md_ok)
            if STORE_DSCALE:
                tl.store(DScaleRows + pid_bh * N_Q + offs_m, dscale_rows, mask=row_ok)

        if STORE_DS and DS_GROUP > 1:
            tl.store(DS + pid * N_Q * N_K + offs_m[:, None] * N_K + offs_n[None, :], ds_sum,
                     mask=(offs_m < N_Q)[:, None] & (offs_n < N_K)[None, :])

    @triton.jit
    def _attn_bwd_dkdv_kernel(
        Q, K, V, Bias, Scale, DOut, Lse, Delta, DK, DV,
        stride_qb, stride_qh, stride_qm, stride_qd,  # Q: (B, H, N_Q, D)
        stride_kb, stride_kh, stride_kn, stride_kd,  # K: (B, H, N_K, D)
        stride_vb, stride_vh, stride_vn, stride_vd,  # V: (B, H, N_K, D)
        stride_bb, stride_bh, stride_bm, stride_bn,  # Bias: (NB, H, N_Q, N_K), 0 on broadcast dims
        stride_gb, stride_gh, stride_gm, stride_gd,  # DOut: (B, H, N_Q, D)
        stride_dkb, stride_dkh, stride_dkn, stride_dkd,  # DK, DV: (B, H, N_K, D), same strides
        # Lse, Delta: (B, H, N_Q) contiguous fp32
        H, NB, N_Q, N_K, scale_value,
        HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
        HAS_BIAS: tl.constexpr, PER_HEAD_SCALE: tl.constexpr, DOT_PRECISION: tl.constexpr,
    ):
        tl.static_assert(BLOCK_D >= HEAD_DIM)
        tl.static_assert(BLOCK_M >= 16 and BLOCK_N >= 16 and BLOCK_D >= 16)
        # Grid: (B * H, cdiv(N_K, BLOCK_N)); each program owns one key block and walks every query block.
        pid_bh = tl.program_id(0).to(tl.int64)
        pid_n = tl.program_id(1)
        b = pid_bh // H
        h = pid_bh % H
        offs_m = tl.arange(0, BLOCK_M)
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        offs_d = tl.arange(0, BLOCK_D)
        col_ok = offs_n < N_K
        d_ok = offs_d < HEAD_DIM
        nd_ok = col_ok[:, None] & d_ok[None, :]

        k_ptrs = K + b * stride_kb + h * stride_kh + offs_n[:, None] * stride_kn + offs_d[None, :] * stride_kd
        v_ptrs = V + b * stride_vb + h * stride_vh + offs_n[:, None] * stride_vn + offs_d[None, :] * stride_vd
        k = tl.load(k_ptrs, mask=nd_ok, other=0.0)  # (BLOCK_N, BLOCK_D)
        v = tl.load(v_ptrs, mask=nd_ok, other=0.0)  # (BLOCK_N, BLOCK_D)
        if PER_HEAD_SCALE:
            scale = tl.load(Scale + h).to(tl.float32)
        else:
            scale = scale_value
        q_base = Q + b * stride_qb + h * stride_qh
        do_base = DOut + b * stride_gb + h * stride_gh
        bias_base = Bias + (b % NB) * stride_bb + h * stride_bh

        # Transposed tiles (keys on rows): dV = P^T dO;  dK = scale * dS^T Q.
        dk = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
        dv = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
        for start_m in range(0, N_Q, BLOCK_M):
            rows = start_m + offs_m
            row_ok = rows < N_Q
            md_ok = row_ok[:, None] & d_ok[None, :]
            q = tl.load(q_base + rows[:, None] * stride_qm + offs_d[None, :] * stride_qd,
                        mask=md_ok, other=0.0)  # (BLOCK_M, BLOCK_D)
            do = tl.load(do_base + rows[:, None] * stride_gm + offs_d[None, :] * stride_gd,
                         mask=md_ok, other=0.0)  # (BLOCK_M, BLOCK_D)
            lse = tl.load(Lse + pid_bh * N_Q + rows, mask=row_ok, other=0.0)
            delta = tl.load(Delta + pid_bh * N_Q + rows, mask=row_ok, other=0.0)
            # (BLOCK_N, BLOCK_M): the transposed base-2 scores
            s_t = tl.dot(k, tl.trans(q), input_precision=DOT_PRECISION) * (scale * _LOG2E)
            if HAS_BIAS:  # loaded row-major (coalesced), transposed in registers
                bias = tl.load(bias_base + rows[:, None] * stride_bm + offs_n[None, :] * stride_bn,
                               mask=row_ok[:, None] & col_ok[None, :], other=0.0)  # (BLOCK_M, BLOCK_N)
                s_t += tl.trans(bias).to(tl.float32) * _LOG2E
            # Padded query rows need no mask: their q = dO = 0 and lse = delta = 0 keep p finite and
            # make their dV and dK terms exactly zero.
            p_t = tl.exp2(s_t - lse[None, :])
            dv += tl.dot(p_t.to(do.dtype), do, input_precision=DOT_PRECISION)
            dp_t = tl.dot(v, tl.trans(do), input_precision=DOT_PRECISION)  # (BLOCK_N, BLOCK_M)
            ds_t = p_t * (dp_t - delta[None, :])
            dk += tl.dot(ds_t.to(q.dtype), q, input_precision=DOT_PRECISION)

        dk = dk * scale
        offs = b * stride_dkb + h * stride_dkh + offs_n[:, None] * stride_dkn + offs_d[None, :] * stride_dkd
        tl.store(DK + offs, dk.to(DK.dtype.element_ty), mask=nd_ok)
        tl.store(DV + offs, dv.to(DV.dtype.element_ty), mask=nd_ok)


# --------------------------------------------------------------------------------------------------
# Launchers
# --------------------------------------------------------------------------------------------------
def _pow2_block(n):
    """Smallest power of two >= n, at least 16 (tl.dot's minimum)."""
    return max(16, 1 << (max(n, 1) - 1).bit_length())


# H100 candidates (BLOCK_M, BLOCK_N, num_warps, num_stages); pruned per call by token count and head dim.
# 8-warp variants of the 64x64 tile keep the fused / grouped backward from spilling (ptxas, sm_90).
_GPU_CANDIDATES = (
    (16, 16, 2, 2), (16, 16, 4, 2), (32, 32, 2, 2), (32, 64, 4, 2), (64, 32, 4, 2), (64, 64, 4, 2),
    (64, 64, 4, 3), (64, 64, 8, 2), (128, 32, 4, 3), (128, 64, 8, 3), (64, 128, 8, 2),
)


def _prune(configs, named_args, program_block, accumulators, **kwargs):
    """Keep configs whose blocks fit the (padded) token counts without being tiny next to them (>= 32
    when N > 32), and whose fp32 accumulators fit ~64 registers per thread (beyond that the tile
    spills and is never the fastest). A grouped dS sum (DS_GROUP > 1) needs all keys in one block."""
    args = {**named_args, **kwargs}
    cap = {"BLOCK_M": _pow2_block(args["N_Q"]), "BLOCK_N": _pow2_block(args["N_K"])}
    floor = {name: min(32, c) for name, c in cap.items()}
    if args.get("DS_GROUP", 1) > 1:
        floor["BLOCK_N"] = cap["BLOCK_N"]
    fused = args.get("FUSED_DKDV", False)
    if fused:
        floor["BLOCK_M"] = cap["BLOCK_M"]
    spill_rule = args.get("SPILL_RULE", True)
    kept = [
        c for c in configs
        if all(floor[name] <= c.kwargs[name] <= cap[name] for name in cap)
        and (not spill_rule or _fits_registers(c, args, program_block, accumulators))
    ]
    if spill_rule and args.get("DOT_PRECISION") == "ieee" and _element_bytes(args) == 4 and args["BLOCK_D"] >= 64:
        # IEEE fp32 dots run on FMA units with both operand tiles in registers: at head dim 64 every
        # candidate reaches 255 registers and spills (sm_90 report, T2T 197 tokens: fwd 4-480 B, dQ 76-380 B,
        # dK/dV 628-860 B); 8 warps spill least. TF32 (tensor cores) spills in none of them.
        kept = [c for c in kept if c.num_warps == 8] or kept
    if kept:
        return kept
    # nothing fits the budget: the smallest legal tiles, with 8 warps unless 4 fit
    smallest = [triton.Config({"BLOCK_M": floor["BLOCK_M"], "BLOCK_N": floor["BLOCK_N"]}, num_warps=w, num_stages=2)
                for w in (4, 8)]
    return [next((c for c in smallest if _fits_registers(c, args, program_block, accumulators)), smallest[1])]


def _element_bytes(args):
    """Bytes per q/k/v element of a launch (the autotuner passes the tensors; reports pass ELEMENT_BYTES)."""
    if "ELEMENT_BYTES" in args:
        return args["ELEMENT_BYTES"]
    return args["Q"].element_size() if "Q" in args else 2


def _fits_registers(config, args, program_block, accumulators):
    """The sm_90 spill rule, fitted to `python -m benchmarks.attention --sm90-report --unpruned` (ptxas,
    triton 3.8): a config is kept when its fp32 accumulators fit ~64 registers per thread and its score
    tiles (S, P; the fused backward also holds dP, dS and dK/dV partials: twice that) ~32 registers per
    thread at 16-bit inputs, half that at fp32 inputs (IEEE or TF32: fp32 operand tiles). Measured spills
    it removes: the fused 64x64 backward at 4 warps (bf16: 132-152 B; fp32: 15 KB, 12 B at 8 warps), the
    fp32 64x64 forward at 4 warps (40 B); kept configs measured 0 spills."""
    threads = 32 * config.num_warps
    bm, bn = config.kwargs["BLOCK_M"], config.kwargs["BLOCK_N"]
    tile_cost = bm * bn * max(1, _element_bytes(args) // 2) * (2 if args.get("FUSED_DKDV", False) else 1)
    return config.kwargs[program_block] * args["BLOCK_D"] * accumulators <= 64 * threads and tile_cost <= 32 * threads


@functools.cache
def _tuned_kernels():
    """Autotuned wrappers, built on first CUDA use (the autotuner needs a driver)."""
    key = ["N_Q", "N_K", "HEAD_DIM", "HAS_BIAS", "PER_HEAD_SCALE"]

    def tune(kernel, program_block, accumulators, extra_key=()):
        configs = [triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=w, num_stages=s)
                   for bm, bn, w, s in _GPU_CANDIDATES]
        prune = functools.partial(_prune, program_block=program_block, accumulators=accumulators)
        tuner = triton.autotune(configs, key=key + list(extra_key), prune_configs_by={"early_config_prune": prune})
        return tuner(kernel)

    return {
        "fwd": tune(_attn_fwd_kernel, "BLOCK_M", 1),
        "dq": tune(_attn_bwd_dq_kernel, "BLOCK_M", 1, ("STORE_DS", "STORE_DSCALE", "DS_GROUP", "FUSED_DKDV")),
        "dkdv": tune(_attn_bwd_dkdv_kernel, "BLOCK_N", 2),
    }


def _cpu_blocks(n_q, n_k):
    return {"BLOCK_M": min(_CPU_BLOCK, _pow2_block(n_q)), "BLOCK_N": min(_CPU_BLOCK, _pow2_block(n_k))}


_deterministic = False  # set_deterministic: one pinned config per shape on CUDA instead of the autotuner


def set_deterministic(enabled: bool) -> None:
    """Pin the CUDA launch config per shape (True) or autotune (False, the default).

    The autotuner times the candidates and keeps the fastest, which can differ between runs and GPUs;
    the blocks decide the order of the online-softmax and dK/dV reductions, so results differ in the last
    bits. Pinned, every shape gets `pinned_config`: a fixed choice, the same reduction order every run."""
    global _deterministic
    _deterministic = bool(enabled)


def pinned_config(name, args):
    """The config `set_deterministic(True)` launches kernel `name` ("fwd", "dq", "dkdv") with: of the
    candidates `_prune` keeps for these arguments (token counts, head dim, dtype, flags), the first in
    `_GPU_CANDIDATES` order, i.e. the smallest tiles and fewest warps that fit the shape without spilling
    (e.g. 16x16/2 warps for Swin's 16-token windows, 32x32/2 warps for N = 65 or 197 at head dim <= 64)."""
    tuned = _tuned_kernels()[name]
    return tuned.early_config_prune(tuned.configs, args)[0]


def _launch(name, raw_kernel, args, consts, programs, program_len, program_block):
    """Launch on grid (programs, cdiv(program_len, block)): autotuned (or pinned) on CUDA, fixed blocks when
    interpreted."""
    if args[0].is_cuda:
        if _deterministic:
            config = pinned_config(name, {**consts, "ELEMENT_BYTES": args[0].element_size()})
            grid = (programs, triton.cdiv(program_len, config.kwargs[program_block]))
            raw_kernel[grid](*args, **consts, **config.kwargs, num_warps=config.num_warps,
                             num_stages=config.num_stages)
            return
        grid = lambda meta: (programs, triton.cdiv(program_len, meta[program_block]))
        _tuned_kernels()[name][grid](*args, **consts)
    else:
        blocks = _cpu_blocks(consts["N_Q"], consts["N_K"])
        raw_kernel[(programs, triton.cdiv(program_len, blocks[program_block]))](*args, **consts, **blocks)


def _fused_dkdv(n_q, cuda, element_bytes=2):
    """True if one query block covers N_Q (<= FUSED_BWD_MAX_N), so the dQ program can also finish dK and
    dV: one backward kernel, one read of q, k, v, O, dO (Swin windows of 16 and 49 tokens). fp32 inputs
    fuse only up to 32 queries on CUDA: the fused 64-row fp32 tile spills even at 8 warps (sm_90 report)."""
    limit = FUSED_BWD_MAX_N if not cuda or element_bytes <= 2 else min(FUSED_BWD_MAX_N, 32)
    return n_q <= limit and (cuda or _cpu_blocks(n_q, 1)["BLOCK_M"] >= n_q)


def _ds_group(n_groups, n_k, cuda, element_bytes=2):
    """Batches per dQ program whose dS are summed in registers for dbias. Needs every key in one block
    (windowed Swin attention: N_K = 16 or 49); cuts the dS buffer (and its torch reduction) by that factor.
    fp32 inputs group only up to 32 keys on CUDA: at Swin-T's 49 the extra fp32 tile spills (sm_90 report,
    TF32: 44-72 B grouped, 0 ungrouped)."""
    key_block = _pow2_block(n_k) if cuda else _cpu_blocks(1, n_k)["BLOCK_N"]
    if key_block < n_k or key_block > 64 or (cuda and element_bytes > 2 and key_block > 32):
        return 1
    return max(1, min(DS_GROUP_MAX, n_groups))


def dot_precision(dtype, device_type, tf32=None):
    """tl.dot's input_precision for inputs of `dtype`: "tf32" for fp32 inputs on CUDA when `tf32` is True,
    or, with tf32=None, when torch allows TF32 matmuls (`torch.backends.cuda.matmul.allow_tf32`), which
    the run's precision choice sets; otherwise "ieee" (full fp32, ~1e-6 relative error, no tensor cores;
    the interpreter always computes fp32). fp16/bf16 operands run on tensor cores whatever this says."""
    if dtype != torch.float32:
        return "tf32"
    if tf32 is None:
        tf32 = torch.backends.cuda.matmul.allow_tf32
    return "tf32" if tf32 and device_type == "cuda" else "ieee"


def _common_consts(q, k, bias, scale, scale_value, precision):
    B, H, n_q, d = q.shape
    return {
        "H": H, "NB": bias.shape[0] if bias is not None else 1, "N_Q": n_q, "N_K": k.shape[2],
        "scale_value": scale_value, "HEAD_DIM": d, "BLOCK_D": _pow2_block(d),
        "HAS_BIAS": bias is not None, "PER_HEAD_SCALE": scale is not None,
        "DOT_PRECISION": precision or dot_precision(q.dtype, q.device.type),
    }


def _bias_strides(bias):
    return bias.stride() if bias is not None else (0, 0, 0, 0)


def _aligned_bias(bias):
    """bias with a row stride that is a multiple of 16 elements (a padded copy if needed, e.g. Swin's 49x49
    windows): Triton then knows rows are 16-element aligned and vectorizes the bias loads (ptxas, sm_90:
    207 -> 125 registers in the forward). Broadcast rows (stride 0) already qualify. The copy is small
    (nb * H * N_Q * N_K elements, read once per call)."""
    if bias is None or (bias.stride(2) % 16 == 0 and bias.stride(3) == 1):
        return bias
    nb, H, n_q, n_k = bias.shape
    padded = _empty((nb, H, n_q, (n_k + 15) // 16 * 16), bias.dtype, bias.device)[..., :n_k]
    return padded.copy_(bias)  # the padding columns are never read (masked)


def attention_forward(q, k, v, bias, scale, scale_value, precision=None):
    """out (B, H, N_Q, D) in q's dtype and lse2 (B, H, N_Q) fp32 = log2-sum-exp2 of the base-2 scores
    (+inf for a row whose every key is -inf; its output is 0).

    bias: None or (NB, H, N_Q, N_K) (expanded view, NB divides B); scale: None or (H,) fp32, else scale_value.
    precision: tl.dot input precision "ieee" / "tf32" (None: `dot_precision(q.dtype, q.device.type)`).
    """
    B, H, n_q, d = q.shape
    bias = _aligned_bias(bias)
    out = _empty((B, H, n_q, d), q.dtype, q.device)
    lse = _empty((B, H, n_q), torch.float32, q.device)
    dummy = q  # stands in for absent optional pointers; never dereferenced (constexpr-guarded)
    args = (q, k, v, bias if bias is not None else dummy, scale if scale is not None else dummy, out, lse,
            *q.stride(), *k.stride(), *v.stride(), *_bias_strides(bias), *out.stride())
    consts = _common_consts(q, k, bias, scale, scale_value, precision)
    _launch("fwd", _attn_fwd_kernel, args, consts, B * H, n_q, "BLOCK_M")
    return out, lse


def attention_backward(do, q, k, v, out, lse, bias, scale, scale_value, bias_grad, scale_grad, precision=None):
    """dq, dk, dv, plus if bias_grad ds (chunks, NB, H, N_Q, N_K) fp32, partial sums of dS whose sum over
    dim 0 is dbias, and if scale_grad dscale_rows (B, H, N_Q) fp32, whose sum over (0, 2) is dscale.
    precision: as `attention_forward` (pass the forward's)."""
    B, H, n_q, d = q.shape
    n_k = k.shape[2]
    nb = bias.shape[0] if bias is not None else 1
    bias = _aligned_bias(bias)
    group = _ds_group(B // nb, n_k, q.is_cuda, q.element_size()) if bias_grad else 1
    chunks = triton.cdiv(B // nb, group)
    dq = _empty(q.shape, q.dtype, q.device)
    dk = _empty(k.shape, k.dtype, k.device)
    dv = _empty(v.shape, v.dtype, v.device)
    fused = _fused_dkdv(n_q, q.is_cuda, q.element_size())
    delta = _empty((B, H, n_q), torch.float32, q.device) if not fused else None
    ds = _empty((chunks, nb, H, n_q, n_k), torch.float32, q.device) if bias_grad else None
    dscale_rows = _empty((B, H, n_q), torch.float32, q.device) if scale_grad else None
    dummy = q
    bias_ptr = bias if bias is not None else dummy
    scale_ptr = scale if scale is not None else dummy
    consts = _common_consts(q, k, bias, scale, scale_value, precision)

    dq_args = (q, k, v, bias_ptr, scale_ptr, out, do, lse, delta if delta is not None else dummy, dq, dk, dv,
               ds if ds is not None else dummy, dscale_rows if dscale_rows is not None else dummy,
               *q.stride(), *k.stride(), *v.stride(), *_bias_strides(bias), *out.stride(), *do.stride(),
               *dq.stride(), *dk.stride())
    dq_consts = {**consts, "N_GROUPS": B // nb, "STORE_DS": bias_grad, "DS_GROUP": group,
                 "STORE_DSCALE": scale_grad, "FUSED_DKDV": fused}
    _launch("dq", _attn_bwd_dq_kernel, dq_args, dq_consts, chunks * nb * H, n_q, "BLOCK_M")
    if fused:
        return dq, dk, dv, ds, dscale_rows
    # Stream order makes delta (written by the dq kernel) visible to the dk/dv kernel.
    dkdv_args = (q, k, v, bias_ptr, scale_ptr, do, lse, delta, dk, dv,
                 *q.stride(), *k.stride(), *v.stride(), *_bias_strides(bias), *do.stride(), *dk.stride())
    _launch("dkdv", _attn_bwd_dkdv_kernel, dkdv_args, consts, B * H, n_k, "BLOCK_N")
    return dq, dk, dv, ds, dscale_rows


# --------------------------------------------------------------------------------------------------
# Custom ops + autograd (what torch.compile sees)
# --------------------------------------------------------------------------------------------------
@torch.library.custom_op("fastvit::attention_fwd", mutates_args=())
def _attention_fwd_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None,
                      scale: torch.Tensor | None, scale_value: float,
                      precision: str) -> tuple[torch.Tensor, torch.Tensor]:
    scale32 = scale.float().contiguous() if scale is not None else None
    return attention_forward(q, k, v, bias, scale32, scale_value, precision)


@_attention_fwd_op.register_fake
def _(q, k, v, bias, scale, scale_value, precision):
    return q.new_empty(q.shape), q.new_empty(q.shape[:3], dtype=torch.float32)


@torch.library.custom_op("fastvit::attention_bwd", mutates_args=())
def _attention_bwd_op(
    do: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor,
    lse: torch.Tensor, bias: torch.Tensor | None, scale: torch.Tensor | None, scale_value: float,
    bias_grad: bool, scale_grad: bool, precision: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """dq, dk, dv, dbias (NB, H, N_Q, N_K) or empty, dscale (H,) or empty."""
    scale32 = scale.float().contiguous() if scale is not None else None
    dq, dk, dv, ds, dscale_rows = attention_backward(do, q, k, v, out, lse, bias, scale32, scale_value,
                                                     bias_grad, scale_grad, precision)
    dbias = q.new_empty(0)  # outputs may not alias each other: one fresh empty per absent gradient
    if bias_grad:  # batch b = i * nb + w reads bias[w]: the rest of the sum over i, deterministic
        dbias = ds.sum(0).to(bias.dtype)  # (chunks, nb, H, N_Q, N_K) -> (nb, H, N_Q, N_K)
    dscale = dscale_rows.sum((0, 2)).to(scale.dtype) if scale_grad else q.new_empty(0)  # (H,)
    return dq, dk, dv, dbias, dscale


@_attention_bwd_op.register_fake
def _(do, q, k, v, out, lse, bias, scale, scale_value, bias_grad, scale_grad, precision):
    dbias = bias.new_empty(bias.shape) if bias_grad else q.new_empty(0)
    dscale = scale.new_empty(scale.shape) if scale_grad else q.new_empty(0)
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape), dbias, dscale


def _setup_context(ctx, inputs, output):
    q, k, v, bias, scale, scale_value, precision = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse, bias, scale)
    ctx.scale_value, ctx.precision = scale_value, precision
    ctx.bias_grad = bias is not None and ctx.needs_input_grad[3]
    ctx.scale_grad = scale is not None and ctx.needs_input_grad[4]
    ctx.mark_non_differentiable(lse)


def _backward(ctx, dout, _dlse):
    q, k, v, out, lse, bias, scale = ctx.saved_tensors
    dq, dk, dv, dbias, dscale = _attention_bwd_op(dout, q, k, v, out, lse, bias, scale, ctx.scale_value,
                                                  ctx.bias_grad, ctx.scale_grad, ctx.precision)
    return dq, dk, dv, dbias if ctx.bias_grad else None, dscale if ctx.scale_grad else None, None, None


_attention_fwd_op.register_autograd(_backward, setup_context=_setup_context)


# --------------------------------------------------------------------------------------------------
# Backends and dispatch
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class AttentionInputs:
    """What a backend needs to know to accept or refuse a call, and what auto-dispatch measures
    (no tensors: cheap, hashable, testable)."""

    device_type: str
    dtype: torch.dtype
    head_dim: int
    value_dim: int
    has_bias: bool
    per_head_scale: bool
    n_q: int = 0  # token counts: 0 when unknown
    n_k: int = 0
    batch: int = 0  # B and H: 0 when unknown (then auto takes the first eligible backend, unmeasured)
    heads: int = 0
    bias_shape: tuple = ()  # the bias as (nb, H or 1, N_Q or 1, N_K or 1): its broadcast kind

    @classmethod
    def from_tensors(cls, q, k, v, bias=None, scale=None):
        bias_shape = () if bias is None else (1,) * (4 - bias.dim()) + tuple(bias.shape)
        return cls(q.device.type, q.dtype, q.shape[-1], v.shape[-1], bias is not None,
                   isinstance(scale, torch.Tensor), q.shape[2], k.shape[2], q.shape[0], q.shape[1], bias_shape)

    def describe(self) -> str:
        """The shape as a short, stable string (the key of a run's recorded choices)."""
        bias = "x".join(map(str, self.bias_shape)) if self.has_bias else "none"
        return (f"{self.device_type} {str(self.dtype).removeprefix('torch.')} B{self.batch} H{self.heads} "
                f"N{self.n_q}x{self.n_k} D{self.head_dim}/{self.value_dim} bias {bias}"
                f"{' per-head-scale' if self.per_head_scale else ''}")


def _windowed_bias(bias, B, H, n_q, n_k):
    """View bias as (nb, H, N_Q, N_K) with nb dividing B (stride 0 on broadcast dims; no copy)."""
    shape = (1,) * (4 - bias.dim()) + tuple(bias.shape)
    if (bias.dim() > 4 or B % shape[0]
            or any(s not in (1, full) for s, full in zip(shape[1:], (H, n_q, n_k), strict=True))):
        raise UserError(f"attention bias of shape {tuple(bias.shape)} does not broadcast to "
                        f"(B, H, N_Q, N_K) = {(B, H, n_q, n_k)}; its leading dim must be 1, B or a divisor "
                        "of B (windowed)")
    return bias.reshape(shape).expand(shape[0], H, n_q, n_k)


def _interpreting():
    """True if the Triton kernels were built for the CPU interpreter (TRITON_INTERPRET=1 at import)."""
    from triton.runtime.interpreter import InterpretedFunction

    return isinstance(_attn_fwd_kernel, InterpretedFunction)


@functools.cache
def _xformers_version():
    try:
        return Version(importlib.metadata.version("xformers"))
    except importlib.metadata.PackageNotFoundError:
        return None


_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


class TritonBackend:
    """The kernel above: CUDA (autotuned), or CPU through the interpreter when forced (tests)."""

    name = "triton"
    auto_devices = ("cuda",)

    def not_supported_reasons(self, inp):
        reasons = []
        if triton is None:
            return ["triton is not installed"]
        if inp.device_type == "cpu":
            if not _interpreting():
                reasons.append("CPU tensors need TRITON_INTERPRET=1 set before fastvit.kernels is imported")
            if inp.dtype == torch.bfloat16:  # numpy has no bfloat16: the interpreter's results are garbage
                reasons.append("the Triton CPU interpreter computes bfloat16 wrongly (use float32/float16 on CPU)")
        elif inp.device_type != "cuda":
            reasons.append(f"needs CUDA tensors (or CPU with TRITON_INTERPRET=1), got {inp.device_type}")
        if inp.dtype not in _FLOAT_DTYPES:
            reasons.append(f"dtype {inp.dtype} is not float16, bfloat16 or float32")
        if inp.head_dim > MAX_HEAD_DIM:
            reasons.append(f"head dim {inp.head_dim} > {MAX_HEAD_DIM}")
        if inp.value_dim != inp.head_dim:
            reasons.append(f"value head dim {inp.value_dim} differs from query/key head dim {inp.head_dim}")
        return reasons

    def __call__(self, q, k, v, bias, scale):
        B, H, n_q, d = q.shape
        if bias is not None:
            bias = _windowed_bias(bias, B, H, n_q, k.shape[2])
        scale_value = 0.0
        if isinstance(scale, torch.Tensor):
            scale = scale.reshape(-1).expand(H)  # (H,)
        else:
            scale_value = d**-0.5 if scale is None else float(scale)
            scale = None
        out, _ = _attention_fwd_op(q, k, v, bias, scale, scale_value, dot_precision(q.dtype, q.device.type))
        return out


class XformersBackend:
    """xformers.ops.memory_efficient_attention (CUDA). A dense bias is materialized with an 8-aligned row
    stride (its kernels require it); a per-head scale is folded into q."""

    name = "xformers"
    auto_devices = ("cuda",)

    def not_supported_reasons(self, inp):
        reasons = []
        version = _xformers_version()
        if version is None:
            reasons.append("xformers is not installed (pip install 'fastvit[xformers]')")
        elif version < XFORMERS_MIN_VERSION:
            reasons.append(f"xformers {version} is older than {XFORMERS_MIN_VERSION}")
        if inp.device_type != "cuda":
            reasons.append(f"needs CUDA tensors, got {inp.device_type}")
        if inp.dtype not in _FLOAT_DTYPES:
            reasons.append(f"dtype {inp.dtype} is not float16, bfloat16 or float32")
        return reasons

    def __call__(self, q, k, v, bias, scale):
        import xformers.ops as xops

        B, H, n_q, d = q.shape
        n_k = k.shape[2]
        q, scale = _fold_per_head_scale(q, scale)
        attn_bias = None
        if bias is not None:
            windowed = _windowed_bias(bias, B, H, n_q, n_k)  # (nb, H, N_Q, N_K)
            nb = windowed.shape[0]
            padded = q.new_empty(B // nb, nb, H, n_q, (n_k + 7) // 8 * 8)
            padded[..., :n_k] = windowed  # broadcast over the B // nb batch groups
            attn_bias = padded.flatten(0, 1)[..., :n_k]  # (B, H, N_Q, N_K), row stride a multiple of 8
        # xformers layout is (B, N, H, D): a transposed view, no copy.
        out = xops.memory_efficient_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                              attn_bias=attn_bias, scale=scale)
        return out.transpose(1, 2)


class SdpaBackend:
    """torch.nn.functional.scaled_dot_product_attention: every device and dtype. A windowed bias is
    expanded to (B, H, N_Q, N_K) (fused SDPA kernels take 4-D inputs only); a per-head scale is folded
    into q."""

    name = "sdpa"
    auto_devices = ("cuda", "cpu", "mps", "xpu")

    def not_supported_reasons(self, inp):
        return [] if inp.dtype.is_floating_point else [f"dtype {inp.dtype} is not floating point"]

    def __call__(self, q, k, v, bias, scale):
        B, H, n_q, _ = q.shape
        q, scale = _fold_per_head_scale(q, scale)
        if bias is not None:
            windowed = _windowed_bias(bias, B, H, n_q, k.shape[2])  # (nb, H, N_Q, N_K)
            nb = windowed.shape[0]
            if nb not in (1, B):  # (B // nb, nb, H, N_Q, N_K) -> (B, H, N_Q, N_K): copies
                windowed = windowed.expand(B // nb, *windowed.shape).flatten(0, 1)
            bias = windowed.to(q.dtype)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=scale)


class SdpaKernelBackend(SdpaBackend):
    """SDPA pinned to one of its CUDA kernels (torch.nn.attention.sdpa_kernel), so auto can time each:
    FlashAttention-2 (half precision, no bias), memory-efficient (any float, bias) and cuDNN."""

    auto_devices = ("cuda",)
    _HALF = (torch.float16, torch.bfloat16)

    def __init__(self, name, kernel, half_only, takes_bias):
        self.name, self.kernel, self.half_only, self.takes_bias = name, kernel, half_only, takes_bias

    def not_supported_reasons(self, inp):
        reasons = [] if inp.device_type == "cuda" else [f"needs CUDA tensors, got {inp.device_type}"]
        if self.half_only and inp.dtype not in self._HALF:
            reasons.append(f"dtype {inp.dtype} is not float16 or bfloat16")
        elif not inp.dtype.is_floating_point:
            reasons.append(f"dtype {inp.dtype} is not floating point")
        if inp.has_bias and not self.takes_bias:
            reasons.append("takes no additive bias")
        return reasons  # finer limits (head dims, alignment, arch) refuse at run time: auto times them out

    def __call__(self, q, k, v, bias, scale):
        from torch.nn.attention import SDPBackend, sdpa_kernel

        with sdpa_kernel(getattr(SDPBackend, self.kernel)):
            return super().__call__(q, k, v, bias, scale)


class MathBackend:
    """Plain torch in the input dtype; materializes the (B, H, N_Q, N_K) scores (`math_attention`)."""

    name = "math"
    auto_devices = ("cuda", "cpu", "mps", "xpu")

    def not_supported_reasons(self, inp):
        return [] if inp.dtype.is_floating_point else [f"dtype {inp.dtype} is not floating point"]

    def __call__(self, q, k, v, bias, scale):
        return math_attention(q, k, v, bias, scale)


class MathFp32SoftmaxBackend(MathBackend):
    """`math` with fp16/bf16 matmuls and the softmax (and bias add) in fp32. On a CPU, torch 2.13's bf16
    softmax over short rows is slow: fwd+bwd at N = 16-17 ran 2-2.7x faster through fp32, casts included
    (at N = 65 it ran 3x slower), so auto measures both per shape."""

    name = "math_fp32"

    def not_supported_reasons(self, inp):
        if inp.dtype not in (torch.float16, torch.bfloat16):
            return [f"dtype {inp.dtype}: only fp16/bf16 inputs have a lower-precision softmax to replace"]
        return []

    def __call__(self, q, k, v, bias, scale):
        return math_attention(q, k, v, bias, scale, softmax_dtype=torch.float32)


def math_attention(q, k, v, bias=None, scale=None, softmax_dtype=None):
    """`reference.attention` arranged for speed, with SDPA's answer for fully masked rows (output 0, no
    gradient) where the reference gives NaN. softmax_dtype: the dtype of the bias add and the softmax
    (default: q's); the probabilities return to v's dtype for the second matmul.

    The scale multiplies q (N*D products) rather than the scores (N*N): on a CPU in bf16 the scores'
    multiply, forward and backward, was 5% of a profiled ViT step (65 tokens, head dim 16). A row is fully
    masked when its bias row is all -inf (q k^T is finite): the bias, shared over the batch, is checked,
    such a row gets a finite bias, and its probabilities or its output (whichever is smaller) are
    zeroed, so no NaN is made and none flows back.
    """
    q, scale = _fold_per_head_scale(q, q.shape[-1] ** -0.5 if scale is None else scale)
    if scale != 1.0:
        q = q * scale
    scores = q @ k.transpose(-2, -1)  # (B, H, N_Q, N_K)
    softmax_dtype = softmax_dtype or scores.dtype
    if bias is None:
        return torch.softmax(scores.to(softmax_dtype), dim=-1).to(v.dtype) @ v
    bias = bias.to(softmax_dtype)
    dead = (bias == float("-inf")).all(-1, keepdim=True)  # (..., N_Q, 1): the bias's shape, not the batch's
    keep = ~dead
    # scores + bias in softmax_dtype: with a wider bias the add is also the cast
    probs = torch.softmax(_per_window(torch.add, scores, bias.masked_fill(dead, 0.0)), dim=-1).to(v.dtype)
    if scores.shape[-1] <= v.shape[-1]:
        return _per_window(torch.mul, probs, keep) @ v
    return _per_window(torch.mul, probs @ v, keep)


def _per_window(op, x, y):
    """op(x, y) for x (B, ...) and a y that broadcasts to it or is windowed: (nb, ...) with nb dividing B,
    batch b reading y[b % nb]."""
    if y.dim() == 4 and y.shape[0] not in (1, x.shape[0]):
        return op(x.unflatten(0, (-1, y.shape[0])), y).flatten(0, 1)
    return op(x, y)


def _fold_per_head_scale(q, scale):
    """For backends taking a float scale: q * scale[h] and scale 1 (autograd carries dscale)."""
    if isinstance(scale, torch.Tensor):
        return q * scale.reshape(-1, 1, 1).to(q.dtype), 1.0  # (H, 1, 1) broadcasts over (B, H, N, D)
    return q, scale


_BACKENDS = {b.name: b for b in (
    TritonBackend(), XformersBackend(), SdpaBackend(),
    SdpaKernelBackend("sdpa_flash", "FLASH_ATTENTION", half_only=True, takes_bias=False),
    SdpaKernelBackend("sdpa_efficient", "EFFICIENT_ATTENTION", half_only=False, takes_bias=True),
    SdpaKernelBackend("sdpa_cudnn", "CUDNN_ATTENTION", half_only=True, takes_bias=True),
    MathBackend(), MathFp32SoftmaxBackend())}
assert tuple(_BACKENDS) == BACKENDS

_chosen: dict[str, str] = {}  # inputs.describe() -> auto's choice in this process (fast path, no I/O)
_recorders: list[dict] = []  # open `record_choices` blocks


@contextlib.contextmanager
def record_choices():
    """Collect {inputs.describe(): backend name} of every eager dispatch inside the block (what a run
    records as its attention choices)."""
    made = {}
    _recorders.append(made)
    try:
        yield made
    finally:
        _recorders.remove(made)


def preset_choices(made: dict[str, str]) -> None:
    """Take these auto choices as made (a resumed run keeps the backends it started with)."""
    _chosen.update({shape: name for shape, name in made.items() if name in _BACKENDS})


def _eligible(inputs):
    """(backends auto may use for inputs, in PRIORITY order; refusal lines of the others)."""
    eligible, refusals = [], []
    for name in PRIORITY:
        impl = _BACKENDS[name]
        if inputs.device_type not in impl.auto_devices:
            refusals.append(f"{name}: not auto-selected on {inputs.device_type}")
            continue
        reasons = impl.not_supported_reasons(inputs)
        if reasons:
            refusals.append(f"{name}: {', '.join(reasons)}")
        else:
            eligible.append(impl)
    return eligible, refusals


def _probe_tensors(inputs):
    """Random leaf tensors of inputs' shapes on its device (a private generator: the run's RNG is untouched)."""
    device = torch.device(inputs.device_type)
    gen = torch.Generator(device).manual_seed(0)

    def rand(*shape, dtype=inputs.dtype):
        return torch.randn(shape, generator=gen, device=device, dtype=dtype).requires_grad_()

    B, H = inputs.batch, inputs.heads
    q = rand(B, H, inputs.n_q, inputs.head_dim)
    k = rand(B, H, inputs.n_k, inputs.head_dim)
    v = rand(B, H, inputs.n_k, inputs.value_dim)
    bias = rand(*inputs.bias_shape) if inputs.has_bias else None
    scale = rand(H, dtype=torch.float32) if inputs.per_head_scale else None
    grad = torch.randn((B, H, inputs.n_q, inputs.value_dim), generator=gen, device=device, dtype=inputs.dtype)
    return (q, k, v, bias, scale), grad


def _forward_backward(impl, tensors, grad):
    """One training use of impl: forward and backward to every input."""
    with torch.enable_grad():
        impl(*tensors).backward(grad)
    for t in tensors:
        if t is not None:
            t.grad = None


def measured_choice(inputs, eligible, timer=None):
    """The fastest of `eligible` for inputs: from the disk cache, else forward+backward timed in interleaved
    rounds (choices.fastest; eagerly, on random tensors of the same shapes, under the caller's autocast
    state) and cached."""
    from fastvit import choices

    key = _choice_key(inputs.describe(), inputs.device_type, [b.name for b in eligible])
    record = choices.lookup(key)
    if record is None or record.get("choice") not in _BACKENDS:
        tensors, grad = _probe_tensors(inputs)
        candidates = {impl.name: functools.partial(_forward_backward, impl, tensors, grad) for impl in eligible}
        record = choices.fastest(key, candidates, inputs.device_type, timer)
    return record["choice"]


def _choice_key(shape: str, device_type: str, eligible: list[str]) -> str:
    from fastvit import choices

    return choices.make_key("attention", device_type, inputs=shape, eligible=eligible)


@torch.compiler.assume_constant_result
def _traced_choice(shape: str) -> str:
    """Under torch.compile tracing: a choice made eagerly before (a constant: no guard on the cache), else ''."""
    return _chosen.get(shape, "")


@torch.compiler.assume_constant_result
def _cached_choice(shape: str, device_type: str, eligible: str) -> str:
    """Under torch.compile tracing: the choice measured on this machine before (disk cache; eligible: names,
    comma-separated), else ''. Without it a module compiled before any eager call took PRIORITY's first
    eligible backend: sdpa, whose CPU backward made a bf16 vit step 2.8 s against 0.86 s eager (AMX Xeon)."""
    from fastvit import choices

    if not choices.may_measure():  # deterministic runs take the fallback, as eagerly
        return ""
    record = choices.lookup(_choice_key(shape, device_type, eligible.split(",")))
    return record["choice"] if record and record.get("choice") in _BACKENDS else ""


def _chose(shape: str, name: str):
    for made in _recorders:
        made[shape] = name
    return _BACKENDS[name]


def select_backend(inputs, backend=None, timer=None):
    """The backend that runs `inputs`: `backend` (or $FASTVIT_ATTN) if given, else auto: the fastest
    backend for these inputs as measured on this machine (`measured_choice`, cached on disk). Where auto
    cannot measure it takes the first eligible backend in PRIORITY: unknown batch/heads, deterministic
    runs (timing is noise), and under torch.compile tracing without an eager choice of the same shape
    before it, in this process or in the disk cache (train.run makes those with a probe forward before
    compiling). Raises UserError."""
    name = backend or os.environ.get("FASTVIT_ATTN") or "auto"
    shape = inputs.describe()
    if name != "auto":
        if name not in _BACKENDS:
            raise UserError(f"unknown attention backend {name!r}; choose from auto, {', '.join(BACKENDS)}")
        reasons = _BACKENDS[name].not_supported_reasons(inputs)
        if reasons:
            raise UserError(f"attention backend {name!r} cannot run these inputs: {'; '.join(reasons)}")
        return _BACKENDS[name] if torch.compiler.is_compiling() else _chose(shape, name)
    if torch.compiler.is_compiling():
        traced = _traced_choice(shape)
        if traced:
            return _BACKENDS[traced]
    elif shape in _chosen:
        return _chose(shape, _chosen[shape])
    eligible, refusals = _eligible(inputs)
    if not eligible:
        raise UserError(f"no attention backend can run these inputs ({'; '.join(refusals)})")
    if torch.compiler.is_compiling():
        names = ",".join(b.name for b in eligible)
        cached = _cached_choice(shape, inputs.device_type, names) if inputs.batch and inputs.heads else ""
        return _BACKENDS[cached] if cached else eligible[0]
    from fastvit import choices

    if len(eligible) == 1 or not inputs.batch or not inputs.heads or not choices.may_measure():
        return _chose(shape, eligible[0].name)  # not remembered: eligibility is cheap to re-check
    _chosen[shape] = measured_choice(inputs, eligible, timer)
    return _chose(shape, _chosen[shape])


def attention(q, k, v, bias=None, scale=None, backend=None):
    """Non-causal multi-head attention, dispatched to the best backend.

    Layout (SDPA's): q (B, H, N_Q, D), k (B, H, N_K, D), v (B, H, N_K, D); returns (B, H, N_Q, D) in
    q's dtype.
    Any token counts (the kernel masks the last block); head dim <= 128 on the Triton path.

    bias: additive, broadcastable to (B, H, N_Q, N_K) (e.g. (H, N, N) relative-position bias), or
      "windowed" (nb, H or 1, N_Q, N_K) with nb dividing B, where batch b reads bias[b % nb] (Swin folds
      windows into the batch as its fastest-varying part and passes relative-position bias + shift
      mask this way). Gradients flow to the bias (summed over the dims it broadcasts over).
    scale: None (D ** -0.5), a float, or a tensor of H elements (per-head, learnable: gets a gradient).
    backend: one of BACKENDS or "auto" (default: $FASTVIT_ATTN, else auto: the eligible backend
      measured fastest for this (device, dtype, shape, bias, scale kind) on this machine, cached in
      fastvit.choices). A forced backend that cannot run raises UserError listing why.

    Equivalent plain torch (windowed bias: view B as (B // nb, nb) first):
        scale = q.shape[-1] ** -0.5 if scale is None else scale   # tensor: scale.view(H, 1, 1)
        out = torch.softmax(q @ k.transpose(-2, -1) * scale + bias, dim=-1) @ v
    Precision: fp32 accumulation on every backend that can; the Triton path computes fp32 inputs in
    full IEEE fp32, or in TF32 on tensor cores when `torch.backends.cuda.matmul.allow_tf32` is set
    (`dot_precision`), and fp16/bf16 inputs on tensor cores with fp32 softmax statistics. A row whose
    every key is masked (-inf bias) gives 0 and zero gradients on the triton and sdpa backends.
    """
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise UserError(f"attention takes (B, H, N, D) tensors; got q {tuple(q.shape)}, k {tuple(k.shape)}, "
                        f"v {tuple(v.shape)}")
    if k.shape[:2] != q.shape[:2] or v.shape[:3] != k.shape[:3] or k.shape[3] != q.shape[3]:
        raise UserError(f"attention shapes disagree: q {tuple(q.shape)}, k {tuple(k.shape)}, "
                        f"v {tuple(v.shape)}; need q (B, H, N_Q, D), k (B, H, N_K, D), v (B, H, N_K, D_v)")
    if not q.dtype == k.dtype == v.dtype:
        raise UserError(f"attention q, k, v dtypes differ: {q.dtype}, {k.dtype}, {v.dtype}")
    if isinstance(scale, torch.Tensor) and scale.numel() not in (1, q.shape[1]):
        raise UserError(f"per-head attention scale has {scale.numel()} elements; need 1 or H = {q.shape[1]}")
    impl = select_backend(AttentionInputs.from_tensors(q, k, v, bias, scale), backend)
    return impl(q, k, v, bias, scale)


__all__ = ["BACKENDS", "AttentionInputs", "attention", "attention_backward", "attention_forward",
           "dot_precision", "pinned_config", "preset_choices", "record_choices", "select_backend",
           "set_deterministic"]
