"""Attention entry point with backend dispatch.

Placeholder until the Triton kernel lands: `sdpa` and `math` backends only.
"""

import os

import torch
import torch.nn.functional as F

from fastvit.kernels import reference

BACKENDS = ("sdpa", "math")


def attention(q, k, v, bias=None, scale=None, backend=None):
    """softmax(q k^T * scale + bias) v for q, k, v of shape (B, H, N, D).

    bias: additive, broadcastable to (B, H, N, N); or "windowed": (nb, H or 1, N, N) with nb dividing B,
      where batch b reads bias[b % nb] (Swin: windows are the fastest-varying part of the batch).
    scale: float, or a (H,) tensor (per-head).
    backend: force one of BACKENDS (else FASTVIT_ATTN, else the best available).
    """
    backend = backend or os.environ.get("FASTVIT_ATTN") or "sdpa"
    if backend not in BACKENDS:
        raise ValueError(f"unknown attention backend {backend!r}; choose from {', '.join(BACKENDS)}")
    B = q.shape[0]
    if q.dim() == 4 and bias is not None and bias.dim() == 4 and bias.shape[0] not in (1, B):
        nb = bias.shape[0]  # windowed bias: view the batch as (B // nb, nb) and broadcast
        out = attention(*(t.unflatten(0, (B // nb, nb)) for t in (q, k, v)), bias, scale, backend)
        return out.flatten(0, 1)
    if backend == "math":
        return reference.attention(q, k, v, bias, scale)
    if isinstance(scale, torch.Tensor):
        q = q * scale.view(-1, 1, 1).to(q.dtype)  # fold the per-head scale into q
        scale = 1.0
    return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=scale)
