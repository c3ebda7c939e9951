"""Photometric random ops with per-sample parameters on float32 0..255 batches (`_` variants in place).

A probability-p op runs on the whole batch and each sample keeps its result or its input
(torch.where): fixed shapes, no host sync, at the price of computing the op for every sample.
"""

from __future__ import annotations

import math

import torch

from . import ops as O
from .draws import per_sample, rand, uniform
from .policies import apply_op_slot

# ColorJitter's ops, in torchvision's numbering (its order permutation indexes these)
JITTER_OPS = ["brightness", "contrast", "color", "hue"]


def _own_float(x: torch.Tensor) -> torch.Tensor:
    """A float32 copy the caller may modify (uint8 input converts, float input is cloned)."""
    return x.float() if x.dtype == torch.uint8 else x.clone()


def color_jitter_(x: torch.Tensor, brightness: float, contrast: float, saturation: float, hue: float,
                  *, p: float | torch.Tensor = 1.0, generator) -> torch.Tensor:
    """In place `color_jitter` on a float 0..255 batch; p may be a per-sample [B] tensor."""
    factors, shift, apply, order, enabled = jitter_draws(x.shape[0], x.shape[1], (brightness, contrast,
                                                         saturation, hue), p, generator, x.device)
    return jitter_apply_(x, factors, shift, apply, order, enabled)


def jitter_draws(n: int, channels: int, strength, p, generator, device):
    """ColorJitter's draws for n samples: (3 factors [n] for brightness, contrast, saturation; hue shift [n];
    apply bool [n]; order int64 [n, 4], each sample's op order as torchvision's; enabled per op)."""
    strength = list(strength)
    if channels == 1:
        strength[2] = strength[3] = 0.0  # saturation and hue do not exist on one channel
    u = torch.rand(5, n, generator=generator, device=device)
    factors = [(u[i] * (2 * s) + (1 - s)).clamp_(min=0.0) for i, s in enumerate(strength[:3])]
    shift = u[3] * (2 * strength[3]) - strength[3]
    apply = u[4] < per_sample(p, n, device)
    order = torch.argsort(torch.rand(n, 4, generator=generator, device=device), dim=1)
    return factors, shift, apply, order, tuple(s > 0 for s in strength)


def jitter_apply_(x: torch.Tensor, factors, shift, apply, order, enabled) -> torch.Tensor:
    """In place: the four ColorJitter ops in each sample's order, on the samples that apply it.

    Slot s runs op order[:, s] of each sample (one of the four, batched by `apply_op_slot`); ops of
    strength 0 are left out of the slot, so e.g. hue costs nothing when it is off.
    """
    values = torch.stack([*factors, shift])  # (4, n): each op's parameter
    active = [name for name, on in zip(JITTER_OPS, enabled, strict=True) if on]
    # op k of JITTER_OPS -> its index in `active` (-1: strength 0, never applied)
    index = torch.tensor([active.index(n) if n in active else -1 for n in JITTER_OPS], device=x.device)
    for slot in range(4):
        op = order[:, slot]
        value = values.gather(0, op.view(1, -1)).view(-1)
        x.copy_(apply_op_slot(x, torch.where(apply, index[op], -1), value, active))
    return x


def color_jitter(x: torch.Tensor, brightness: float = 0.4, contrast: float = 0.4, saturation: float = 0.4,
                 hue: float = 0.0, *, p: float = 1.0,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """ColorJitter with probability p: factors ~ U[max(0, 1-s), 1+s], hue shift ~ U[-hue, hue] turns,
    applied in a random order per sample. Saturation and hue are identities on 1-channel images."""
    return color_jitter_(_own_float(x), brightness, contrast, saturation, hue, p=p, generator=generator)


def where_drawn_(x: torch.Tensor, p, fn, generator) -> torch.Tensor:
    """In place: fn(x) on the samples drawn with probability p (a number or a per-sample [B] tensor)."""
    b = x.shape[0]
    hit = rand(b, generator, x.device) < per_sample(p, b, x.device)
    return x.copy_(torch.where(hit.view(b, 1, 1, 1), fn(x), x))


def random_grayscale(x: torch.Tensor, *, p: float = 0.2,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """RandomGrayscale: luma replicated over the channels with probability p (identity on 1 channel)."""
    x = _own_float(x)
    return x if x.shape[1] == 1 else where_drawn_(x, p, O.grayscale, generator)


def random_gaussian_blur(x: torch.Tensor, *, p: float | torch.Tensor = 0.5,
                         sigma: tuple[float, float] = (0.1, 2.0),
                         generator: torch.Generator | None = None) -> torch.Tensor:
    """Gaussian blur with probability p and sigma ~ U(sigma) per sample (kernel radius ceil(3*sigma_max))."""
    x = _own_float(x)
    s = uniform(x.shape[0], sigma[0], sigma[1], generator, x.device)
    radius = math.ceil(3.0 * sigma[1])
    return where_drawn_(x, p, lambda xs: O.gaussian_blur(xs, s, radius=radius), generator)


def random_solarize(x: torch.Tensor, *, p: float | torch.Tensor = 0.2, threshold: float = 128.0,
                    generator: torch.Generator | None = None) -> torch.Tensor:
    """Solarize (invert pixels >= threshold) with probability p."""
    return where_drawn_(_own_float(x), p, lambda xs: O.solarize(xs, threshold), generator)
