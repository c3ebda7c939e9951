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

    bias: additive, broadcastable to (B, H, N, N); scale: float, or a (H,) tensor (per-head).
    backend: force one of BACKENDS (else FASTVIT_ATTN, else the best available).
    """
    backend = backend or os.environ.get("FASTVIT_ATTN") or "sdpa"
    if backend not in BACKENDS:
        raise ValueError(f"unknown attention backend {backend!r}; choose from {', '.join(BACKENDS)}")
    if backend == "math":
        return reference.attention(q, k, v, bias, scale)
    if isinstance(scale, torch.Tensor):
        q = q * scale.view(1, -1, 1, 1).to(q.dtype)  # fold the per-head scale into q
        scale = 1.0
    return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=scale)
