"""Fused kernels (Triton) with plain-torch references; installed as `fastvit.kernels`."""

from fastvit.kernels.attention import attention
from fastvit.kernels.drloc_pairs import drloc_pairs

__all__ = ["attention", "drloc_pairs"]
