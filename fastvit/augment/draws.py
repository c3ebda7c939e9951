"""Per-sample random draws from an explicit generator, on the batch's device (no host sync)."""

from __future__ import annotations

import torch


def rand(n: int, generator: torch.Generator | None, device) -> torch.Tensor:
    """n uniform floats in [0, 1) on `device`."""
    return torch.rand(n, generator=generator, device=device)


def uniform(n: int, lo: float, hi: float, generator, device) -> torch.Tensor:
    """n uniform floats in [lo, hi) on `device`."""
    return rand(n, generator, device).mul_(hi - lo).add_(lo)


def randint_below(high: torch.Tensor, generator) -> torch.Tensor:
    """One integer in [0, high[i]) per entry of the int tensor `high` (every entry >= 1)."""
    u = torch.rand(high.shape, generator=generator, device=high.device)
    return (u * high).long().clamp_(max=high - 1)


def per_sample(value, n: int, device) -> torch.Tensor:
    """A scalar or a [n] tensor as a float32 [n] tensor on `device`."""
    if isinstance(value, torch.Tensor):
        return value.to(device=device, dtype=torch.float32).expand(n)
    return torch.full((n,), float(value), device=device)
