"""Batched on-device augmentation with per-sample randomness.

Every op takes a whole batch ``[B, C, H, W]`` (C = 1 or 3) on its device and draws each sample's
parameters from an explicit ``torch.Generator`` living on that device, so a run is reproducible and
the same seed gives the same batch on the same device. Loaders deliver uint8; geometric ops that only
move pixels (crop, flip, pad) stay in uint8, the batch is converted to float32 once, photometric ops
work on float32 in the 0..255 range (no rounding between ops), and normalization is one fused
multiply-add at the end.

Public entry points used by the training loop:
- ``build_train_transform(recipe, img_size=, mean=, std=, num_classes=, **params)``
- ``build_eval_transform(img_size=, mean=, std=)``
- ``fit_to_size(x, img_size)``
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from fastvit.errors import UserError

# ---------------------------------------------------------------------------------------------------
# helpers


def _check_images(x: torch.Tensor) -> None:
    if x.dim() != 4 or x.shape[1] not in (1, 3):
        raise UserError(f"images must be a [B, C, H, W] batch with C = 1 or 3, got shape {tuple(x.shape)}")
    if x.dtype != torch.uint8:
        raise UserError(f"images must be uint8 (as the loaders deliver them), got {x.dtype}")


def _rand(n: int, generator: torch.Generator | None, device) -> torch.Tensor:
    """n uniform floats in [0, 1) on `device`."""
    return torch.rand(n, generator=generator, device=device)


def _uniform(n: int, lo: float, hi: float, generator, device) -> torch.Tensor:
    return _rand(n, generator, device).mul_(hi - lo).add_(lo)


def _randint_below(high: torch.Tensor, generator) -> torch.Tensor:
    """One integer in [0, high[i]) per entry of the int tensor `high` (every entry >= 1)."""
    u = torch.rand(high.shape, generator=generator, device=high.device)
    return (u * high).long().clamp_(max=high - 1)


def _per_sample(value, n: int, device) -> torch.Tensor:
    """A scalar or a [n] tensor as a float32 [n] tensor on `device`."""
    if isinstance(value, torch.Tensor):
        return value.to(device=device, dtype=torch.float32).expand(n)
    return torch.full((n,), float(value), device=device)


def to_float(x: torch.Tensor) -> torch.Tensor:
    """uint8 batch -> float32 in 0..255 (a float batch is returned as is)."""
    return x.float() if x.dtype == torch.uint8 else x


# ---------------------------------------------------------------------------------------------------
# sizing and normalization


def fit_to_size(x: torch.Tensor, img_size: int, *, pad_ratio: float = 1.25) -> torch.Tensor:
    """Bring a uint8 batch to ``img_size`` x ``img_size``, keeping uint8.

    - Same size: returned unchanged (no copy).
    - Smaller by at most a factor ``pad_ratio`` on each side (e.g. 28-px Fashion-MNIST for a
      32-px model): zero-padded, centred (the extra pixel, if odd, goes to the bottom/right).
    - Otherwise (e.g. 32-px CIFAR for a 224-px model, or larger images): resized bicubic, as paper
      B does (antialiased when shrinking), rounded and clamped back to uint8.
    """
    _check_images(x)
    h, w = x.shape[-2:]
    if h == w == img_size:
        return x
    if h <= img_size and w <= img_size and img_size <= pad_ratio * min(h, w):
        top, left = (img_size - h) // 2, (img_size - w) // 2
        return F.pad(x, (left, img_size - w - left, top, img_size - h - top))
    shrink = h > img_size or w > img_size
    y = F.interpolate(x.float(), size=(img_size, img_size), mode="bicubic", align_corners=False,
                      antialias=shrink)
    return y.round_().clamp_(0, 255).to(torch.uint8)


class Normalize:
    """(x / 255 - mean) / std as one fused multiply-add on float32, for x in 0..255."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        mean_t = torch.as_tensor(mean, dtype=torch.float64).flatten()
        std_t = torch.as_tensor(std, dtype=torch.float64).flatten()
        if mean_t.numel() not in (1, 3) or std_t.numel() not in (1, 3):
            raise UserError(f"mean and std need 1 or 3 values, got {mean_t.numel()} and {std_t.numel()}")
        if bool((std_t <= 0).any()):
            raise UserError(f"std must be positive, got {std_t.tolist()}")
        self.mean, self.std = mean_t, std_t
        self._cache: dict = {}

    def coefficients(self, channels: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        """(scale, shift) as [1, C, 1, 1] float32 so that normalized = x * scale + shift."""
        key = (channels, str(device))
        if key not in self._cache:
            mean, std = self.mean, self.std
            if channels == 1 and mean.numel() == 3:
                raise UserError("1-channel images need a 1-value mean/std, got 3 values")
            mean, std = mean.expand(channels), std.expand(channels)
            scale = (1.0 / (255.0 * std)).float().view(1, channels, 1, 1).to(device)
            shift = (-mean / std).float().view(1, channels, 1, 1).to(device)
            self._cache[key] = (scale, shift)
        return self._cache[key]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        scale, shift = self.coefficients(x.shape[1], x.device)
        if x.dtype == torch.uint8:
            return torch.addcmul(shift, x.float(), scale)
        return x.mul_(scale).add_(shift)


# ---------------------------------------------------------------------------------------------------
# geometric ops that only move pixels (uint8 or float)


def crop_flip(x: torch.Tensor, top: torch.Tensor, left: torch.Tensor, size: int,
              flip: torch.Tensor | None = None) -> torch.Tensor:
    """Per-sample ``size`` x ``size`` crops at (top[i], left[i]), mirrored where flip[i]; one gather.

    The crop must lie inside the image (pad first for padded crops).
    """
    b, c, h, w = x.shape
    ar = torch.arange(size, device=x.device)
    rows = top.view(b, 1) + ar  # (B, size)
    cols = left.view(b, 1) + ar  # (B, size)
    if flip is not None:
        cols = torch.where(flip.view(b, 1), cols.flip(1), cols)
    idx = (rows.view(b, size, 1) * w + cols.view(b, 1, size)).view(b, 1, size * size)
    out = x.reshape(b, c, h * w).gather(2, idx.expand(b, c, size * size))
    return out.view(b, c, size, size)


def random_crop(x: torch.Tensor, size: int, *, padding: int = 4, flip_p: float = 0.0,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """RandomCrop(size, padding) with zero padding, plus a horizontal flip with probability flip_p.

    Offsets are uniform over every position of the padded image (as torchvision's RandomCrop).
    """
    b, _, h, w = x.shape
    if padding:
        x = F.pad(x, (padding, padding, padding, padding))
        h, w = h + 2 * padding, w + 2 * padding
    if h < size or w < size:
        raise UserError(f"random crop of {size} px does not fit a {h}x{w} padded image")
    dev = x.device
    top = torch.randint(0, h - size + 1, (b,), generator=generator, device=dev)
    left = torch.randint(0, w - size + 1, (b,), generator=generator, device=dev)
    flip = _rand(b, generator, dev) < flip_p if flip_p > 0 else None
    return crop_flip(x, top, left, size, flip)


def random_hflip(x: torch.Tensor, *, p: float = 0.5,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """Mirror each sample left-right with probability p."""
    flip = _rand(x.shape[0], generator, x.device) < p
    return torch.where(flip.view(-1, 1, 1, 1), x.flip(3), x)


# ---------------------------------------------------------------------------------------------------
# recipes


@dataclasses.dataclass
class AugmentParams:
    """Every knob of the train transform; a recipe is a set of defaults, ``**params`` override them."""

    crop: str = "pad"  # "pad": RandomCrop with `padding`; "resized": RandomResizedCrop
    padding: int = 4  # px of zero padding around the image for crop="pad"
    flip_p: float = 0.5  # probability of a horizontal flip

    def validate(self) -> None:
        if self.crop not in ("pad",):
            raise UserError(f"unknown crop {self.crop!r}; choose one of: pad")
        if not 0.0 <= self.flip_p <= 1.0:
            raise UserError(f"flip_p must be in [0, 1], got {self.flip_p}")


RECIPES: dict[str, dict] = {
    # random crop pad 4 + flip (the demo)
    "basic": {},
}


class TrainTransform:
    """callable(images uint8 [B,C,H,W], labels int64 [B], generator) -> (images, targets).

    images: float32 [B, C, img_size, img_size], normalized. targets: the int64 labels.
    """

    def __init__(self, params: AugmentParams, *, img_size: int, mean, std, num_classes: int):
        params.validate()
        self.params, self.img_size, self.num_classes = params, img_size, num_classes
        self.normalize = Normalize(mean, std)

    def __call__(self, images: torch.Tensor, labels: torch.Tensor,
                 generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
        p, g = self.params, generator
        x = fit_to_size(images, self.img_size)
        x = random_crop(x, self.img_size, padding=p.padding, flip_p=p.flip_p, generator=g)
        return self.normalize(x), labels


def build_train_transform(recipe: str, *, img_size: int, mean: Sequence[float], std: Sequence[float],
                          num_classes: int, **params) -> Callable:
    """The train-time augmentation of a recipe (SPEC).

    recipe: "basic" (random crop, pad 4, + flip).
    img_size: output side in pixels; inputs of another size go through `fit_to_size` first.
    mean, std: per-channel normalization in 0..1 units (1 or 3 values).
    num_classes: size of soft targets.
    params: override any `AugmentParams` field; an unknown key is a UserError.
    """
    if recipe not in RECIPES:
        raise UserError(f"unknown augmentation recipe {recipe!r}; choose one of: {', '.join(RECIPES)}")
    fields = {f.name for f in dataclasses.fields(AugmentParams)}
    unknown = sorted(set(params) - fields)
    if unknown:
        raise UserError(f"unknown augmentation parameter(s) {', '.join(unknown)}; "
                        f"valid: {', '.join(sorted(fields))}")
    merged = {**RECIPES[recipe], **params}
    return TrainTransform(AugmentParams(**merged), img_size=img_size, mean=mean, std=std,
                          num_classes=num_classes)


def build_eval_transform(*, img_size: int, mean: Sequence[float], std: Sequence[float]) -> Callable:
    """callable(images uint8 [B,C,H,W]) -> float32 [B, C, img_size, img_size]: fit_to_size + normalize."""
    normalize = Normalize(mean, std)

    def transform(images: torch.Tensor) -> torch.Tensor:
        return normalize(fit_to_size(images, img_size))

    return transform
