"""Batched on-device augmentation with per-sample randomness.

Every op takes a whole batch ``[B, C, H, W]`` (C = 1 or 3) on its device and draws each sample's
parameters from an explicit ``torch.Generator`` living on that device, so a run is reproducible and
the same seed gives the same batch on the same device. Loaders deliver uint8; geometric ops that only
move pixels (crop, flip, pad) stay in uint8, the batch is converted to float32 once, photometric ops
work on float32 in the 0..255 range (no rounding between ops), and normalization is one fused
multiply-add at the end.

Public entry points used by the training loop:
- ``build_train_transform(recipe, img_size=, mean=, std=, num_classes=, **params)``: recipes "basic",
  "gani22-finetune" (paper A) and "drloc21" (paper B) -> callable(images, labels, generator)
- ``build_eval_transform(img_size=, mean=, std=)`` -> callable(images)
- ``MultiCrop(global_size, local_size, n_local, ..., mean=, std=)``: DINO views for paper A pretraining
- ``fit_to_size(x, img_size)``

Functional ops (module level, each with a ``generator`` keyword): random_crop, random_hflip,
random_resized_crop, color_jitter, random_grayscale, random_gaussian_blur, random_solarize,
random_erasing, mixup_cutmix (+ sample_beta, smooth_one_hot). Deterministic PIL-equivalent ops live in
``augment_ops``; AutoAugment / RandAugment in ``augment_policies``. Ops that choose different
operations per sample group the samples by op and run each op once on its group (no Python loop over
samples); ops that touch few samples (erasing, mixing, probability-p ops) gather just those samples.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from fastvit.errors import UserError

from . import augment_cpu
from . import augment_ops as O
from . import augment_policies as P
from .multicrop_cpu import multicrop_views

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
        """uint8 -> a new float32 batch; a float32 batch is normalized in place."""
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
    top, left, flip = random_crop_params(x.shape[0], x.shape[2], x.shape[3], size, padding=padding,
                                         flip_p=flip_p, generator=generator, device=x.device)
    if padding:
        x = F.pad(x, (padding, padding, padding, padding))
    return crop_flip(x, top, left, size, flip)


def random_crop_params(b: int, h: int, w: int, size: int, *, padding: int, flip_p: float,
                       generator: torch.Generator | None, device=None
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """`random_crop`'s draws: (top, left) int64 [b] in the padded image, flip bool [b] (None if flip_p 0)."""
    h, w = h + 2 * padding, w + 2 * padding
    if h < size or w < size:
        raise UserError(f"random crop of {size} px does not fit a {h}x{w} padded image")
    top = torch.randint(0, h - size + 1, (b,), generator=generator, device=device)
    left = torch.randint(0, w - size + 1, (b,), generator=generator, device=device)
    flip = _rand(b, generator, device) < flip_p if flip_p > 0 else None
    return top, left, flip


def random_hflip(x: torch.Tensor, *, p: float = 0.5,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """Mirror each sample left-right with probability p."""
    flip = _rand(x.shape[0], generator, x.device) < p
    return torch.where(flip.view(-1, 1, 1, 1), x.flip(3), x)


def random_resized_crop(x: torch.Tensor, size: int, *, scale: tuple[float, float] = (0.08, 1.0),
                        ratio: tuple[float, float] = (3 / 4, 4 / 3), interpolation: str = "bicubic",
                        flip_p: float = 0.0, generator: torch.Generator | None = None) -> torch.Tensor:
    """RandomResizedCrop(size, scale, ratio) + horizontal flip (prob flip_p), batched.

    Boxes are drawn as torchvision does (10 tries of area ~ U(scale), log-aspect ~ U(log ratio), then
    a centre crop of clamped aspect); each box is resampled to size x size with `interpolation`
    ("bilinear" | "bicubic") exactly as torchvision resizes the crop (`resample_boxes`).
    Returns float32 in 0..255.
    """
    if interpolation not in ("bilinear", "bicubic"):
        raise UserError(f"unknown interpolation {interpolation!r}; choose one of: bilinear, bicubic")
    top, left, h, w = resized_crop_boxes(x.shape[0], x.shape[2], x.shape[3], scale=scale, ratio=ratio,
                                         generator=generator, device=x.device)
    flip = _rand(x.shape[0], generator, x.device) < flip_p if flip_p > 0 else None
    return resample_boxes(x, top, left, h, w, size, interpolation=interpolation, flip=flip)


def resized_crop_boxes(n: int, height: int, width: int, *, scale, ratio, generator, device,
                       tries: int = 10) -> tuple[torch.Tensor, ...]:
    """Per-sample RandomResizedCrop boxes (top, left, h, w) as int64 [n] tensors."""
    area = float(height * width)
    target = torch.rand(n, tries, generator=generator, device=device) * (scale[1] - scale[0]) + scale[0]
    target = target * area
    lo, hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(torch.rand(n, tries, generator=generator, device=device) * (hi - lo) + lo)
    w = torch.sqrt(target * aspect).round().long()
    h = torch.sqrt(target / aspect).round().long()
    ok = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = torch.argmax(ok.int(), dim=1, keepdim=True)  # first valid try
    any_ok = ok.any(dim=1)
    # fallback: the whole image with its aspect clamped into `ratio`, centred
    in_ratio = width / height
    if in_ratio < ratio[0]:
        fw, fh = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        fw, fh = int(round(height * ratio[1])), height
    else:
        fw, fh = width, height
    w = torch.where(any_ok, w.gather(1, first).view(n), fw)
    h = torch.where(any_ok, h.gather(1, first).view(n), fh)
    top = torch.where(any_ok, _randint_below(height - h + 1, generator), (height - fh) // 2)
    left = torch.where(any_ok, _randint_below(width - w + 1, generator), (width - fw) // 2)
    return top, left, h, w


def _cubic(t: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """Keys' cubic convolution kernel with parameter a (torch: -0.75, PIL and antialiased torch: -0.5)."""
    t = t.abs()
    near = ((a + 2.0) * t - (a + 3.0)) * t * t + 1.0
    far = ((a * t - 5.0 * a) * t + 8.0 * a) * t - 4.0 * a
    return torch.where(t <= 1.0, near, torch.where(t < 2.0, far, 0.0))


def resample_weights(start: torch.Tensor, length: torch.Tensor, in_size: torch.Tensor, out: int, *,
                     mode: str, antialias: torch.Tensor, reverse: torch.Tensor | None = None) -> torch.Tensor:
    """[n, out, max(in_size)] matrices resampling input[start : start+length] to `out` pixels, one per row.

    Exactly F.interpolate(crop, align_corners=False) semantics: without antialias, taps past the crop
    edge are clamped to it (and bicubic uses a = -0.75); with antialias (torch's / PIL's resize when
    shrinking) the kernel widens by the shrink factor, uses a = -0.5, and taps outside the crop are
    dropped and the rest renormalized. reverse[i]: output pixels in mirrored order (a flip for free).
    """
    n, dev = start.shape[0], start.device
    length = length.float().view(n, 1, 1)
    scale = length / out  # input pixels per output pixel
    aa = antialias.view(n, 1, 1)
    support = 2.0 if mode == "bicubic" else 1.0
    stretch = torch.where(aa, scale.clamp(min=1.0), 1.0)
    taps = 2 * math.ceil(support * float(stretch.max())) + 1
    pos = torch.arange(out, device=dev, dtype=torch.float32).view(1, out, 1)
    if reverse is not None:
        pos = torch.where(reverse.view(n, 1, 1), out - 1 - pos, pos)  # (n, out, 1)
    centre = (pos + 0.5) * scale
    j = torch.floor(centre - support * stretch + 0.5) + torch.arange(taps, device=dev).view(1, 1, taps)
    t = (j + 0.5 - centre) / stretch  # (n, out, taps)
    if mode == "bicubic":
        w = _cubic(t, torch.where(aa, -0.5, -0.75))
    else:
        w = (1.0 - t.abs()).clamp_(min=0.0)
    if bool(antialias.any()):
        w = torch.where(aa & ((j < 0) | (j >= length)), 0.0, w)
    w = w / w.sum(dim=2, keepdim=True)
    idx = torch.minimum(j.clamp(min=0.0), length - 1.0).long() + start.view(n, 1, 1)
    idx = torch.minimum(idx, in_size.view(n, 1, 1) - 1)
    size = int(in_size.max())
    return torch.zeros(n, out, size, device=dev).scatter_add_(2, idx, w)


def resample_boxes(x: torch.Tensor, top, left, h, w, size: int, *, interpolation: str = "bicubic",
                   flip: torch.Tensor | None = None) -> torch.Tensor:
    """Resample box i of sample i (rows top..top+h, cols left..left+w) to size x size; float32 0..255.

    Equals F.interpolate(x[i, :, top:top+h, left:left+w], size, mode=interpolation, antialias=(the box is
    larger than `size` on a side)), as torchvision's RandomResizedCrop, then mirrored where flip[i].
    Separable: two batched matmuls with per-sample [size, side] weight matrices (fast on CPU and GPU).
    """
    n, c, height, width = x.shape
    dev = x.device
    aa = (h > size) | (w > size)
    sizes = torch.tensor([height, width], device=dev).repeat_interleave(n)
    no_flip = torch.zeros(n, dtype=torch.bool, device=dev)
    weights = resample_weights(torch.cat([top, left]), torch.cat([h, w]), sizes, size, mode=interpolation,
                               antialias=torch.cat([aa, aa]),
                               reverse=None if flip is None else torch.cat([no_flip, flip]))
    wy, wx = weights[:n, :, :height], weights[n:, :, :width]  # (n, size, H), (n, size, W)
    # rows first with the (broadcast) row weights, then columns: no transposed copies
    cols = torch.matmul(wy.unsqueeze(1), to_float(x))  # (n, C, size, W)
    out = torch.bmm(cols.view(n, c * size, width), wx.transpose(1, 2)).view(n, c, size, size)
    return out.clamp_(0, 255) if interpolation == "bicubic" else out


# ---------------------------------------------------------------------------------------------------
# photometric ops with random per-sample parameters (float32 0..255; the `_` variants work in place)


def _color_jitter_(x: torch.Tensor, brightness: float, contrast: float, saturation: float, hue: float,
                   *, p: float | torch.Tensor = 1.0, generator) -> torch.Tensor:
    """In place `color_jitter` on a float 0..255 batch; p may be a per-sample [B] tensor."""
    factors, shift, apply, order, enabled = _jitter_draws(x.shape[0], x.shape[1], (brightness, contrast,
                                                          saturation, hue), p, generator, x.device)
    return _jitter_apply_(x, factors, shift, apply, order, enabled)


def _jitter_draws(n: int, channels: int, strength, p, generator, device):
    """ColorJitter's draws for n samples: (3 factors [n] for brightness, contrast, saturation; hue shift [n];
    apply bool [n]; order int64 [n, 4], each sample's op order as torchvision's; enabled per op)."""
    strength = list(strength)
    if channels == 1:
        strength[2] = strength[3] = 0.0  # saturation and hue do not exist on one channel
    u = torch.rand(5, n, generator=generator, device=device)
    factors = [(u[i] * (2 * s) + (1 - s)).clamp_(min=0.0) for i, s in enumerate(strength[:3])]
    shift = u[3] * (2 * strength[3]) - strength[3]
    apply = u[4] < _per_sample(p, n, device)
    order = torch.argsort(torch.rand(n, 4, generator=generator, device=device), dim=1)
    return factors, shift, apply, order, tuple(s > 0 for s in strength)


def _jitter_apply_(x: torch.Tensor, factors, shift, apply, order, enabled) -> torch.Tensor:
    """In place: the four ColorJitter ops in each sample's order, on the samples that apply it."""
    fns = [lambda xs, idx: O.adjust_brightness(xs, factors[0][idx]),
           lambda xs, idx: O.adjust_contrast(xs, factors[1][idx]),
           lambda xs, idx: O.adjust_saturation(xs, factors[2][idx]),
           lambda xs, idx: O.adjust_hue(xs, shift[idx])]
    enabled = torch.tensor(enabled, device=x.device)
    for slot in range(4):
        op = order[:, slot]
        O.apply_grouped(x, torch.where(apply & enabled[op], op, -1), fns)
    return x


def color_jitter(x: torch.Tensor, brightness: float = 0.4, contrast: float = 0.4, saturation: float = 0.4,
                 hue: float = 0.0, *, p: float = 1.0,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """ColorJitter with probability p: factors ~ U[max(0, 1-s), 1+s], hue shift ~ U[-hue, hue] turns,
    applied in a random order per sample. Saturation and hue are identities on 1-channel images."""
    return _color_jitter_(_own_float(x), brightness, contrast, saturation, hue, p=p, generator=generator)


def _apply_where(x: torch.Tensor, p, fn, generator) -> torch.Tensor:
    """In place: fn on the samples drawn with probability p (a number or a per-sample [B] tensor)."""
    b = x.shape[0]
    hit = _rand(b, generator, x.device) < _per_sample(p, b, x.device)
    return O.apply_grouped(x, torch.where(hit, 0, -1), [fn])


def random_grayscale(x: torch.Tensor, *, p: float = 0.2,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """RandomGrayscale: luma replicated over the channels with probability p (identity on 1 channel)."""
    x = _own_float(x)
    return x if x.shape[1] == 1 else _apply_where(x, p, lambda xs, idx: O.grayscale(xs), generator)


def random_gaussian_blur(x: torch.Tensor, *, p: float | torch.Tensor = 0.5,
                         sigma: tuple[float, float] = (0.1, 2.0),
                         generator: torch.Generator | None = None) -> torch.Tensor:
    """Gaussian blur with probability p and sigma ~ U(sigma) per sample (kernel radius ceil(3*sigma_max))."""
    x = _own_float(x)
    s = _uniform(x.shape[0], sigma[0], sigma[1], generator, x.device)
    radius = math.ceil(3.0 * sigma[1])
    return _apply_where(x, p, lambda xs, idx: O.gaussian_blur(xs, s[idx], radius=radius), generator)


def random_solarize(x: torch.Tensor, *, p: float | torch.Tensor = 0.2, threshold: float = 128.0,
                    generator: torch.Generator | None = None) -> torch.Tensor:
    """Solarize (invert pixels >= threshold) with probability p."""
    return _apply_where(_own_float(x), p, lambda xs, idx: O.solarize(xs, threshold), generator)


def _own_float(x: torch.Tensor) -> torch.Tensor:
    """A float32 copy the caller may modify (uint8 input converts, float input is cloned)."""
    return x.float() if x.dtype == torch.uint8 else x.clone()


# ---------------------------------------------------------------------------------------------------
# erasing and mixing (on the normalized batch)

ERASE_MIN_AREA, ERASE_TRIES = 0.02, 10  # RandomErasing's smallest area fraction and box draws per sample


def random_erasing_(x: torch.Tensor, *, p: float = 0.25, min_area: float = ERASE_MIN_AREA, max_area: float = 0.4,
                    min_aspect: float = 0.3, mode: str = "mean", generator: torch.Generator | None = None,
                    tries: int = ERASE_TRIES) -> torch.Tensor:
    """In place RandomErasing on a normalized batch: with probability p, one rectangle per sample.

    Area ~ U(min_area, max_area) of the image, log-aspect ~ U(log min_aspect, -log min_aspect); the first
    of `tries` draws that fits is used (none fits: nothing erased). Fill: "mean" = 0 (the dataset mean
    after normalization) or "pixel" = N(0, 1) per pixel and channel.
    """
    idx, top, left, h, w, noise = random_erasing_params(
        x.shape, p=p, min_area=min_area, max_area=max_area, min_aspect=min_aspect, mode=mode,
        generator=generator, device=x.device, tries=tries)
    if idx.numel() == 0:
        return x
    sub = x.index_select(0, idx)
    mask = _box_mask(top, left, h, w, x.shape[2], x.shape[3])  # (n, 1, H, W)
    if noise is None:
        sub.masked_fill_(mask, 0.0)
    else:
        sub = torch.where(mask, noise, sub)
    return x.index_copy_(0, idx, sub)


def random_erasing_params(shape, *, p: float = 0.25, min_area: float = ERASE_MIN_AREA, max_area: float = 0.4,
                          min_aspect: float = 0.3, mode: str = "mean", generator: torch.Generator | None = None,
                          device=None, tries: int = ERASE_TRIES) -> tuple[torch.Tensor, ...]:
    """`random_erasing_`'s draws for a batch of `shape` [B, C, H, W]: (idx [n] of the erased samples,
    their top, left, h, w [n], noise [n, C, H, W] for mode "pixel" else None). One host sync."""
    if mode not in ("mean", "pixel"):
        raise UserError(f"unknown erase mode {mode!r}; choose one of: mean, pixel")
    b, c, height, width = shape
    dev = device
    area_u, aspect, u = random_erasing_draws(b, tries=tries, min_aspect=min_aspect, generator=generator,
                                             device=dev)
    area = area_u * (max_area - min_area) + min_area
    area = area * (height * width)
    h = torch.sqrt(area * aspect).round().long()
    w = torch.sqrt(area / aspect).round().long()
    ok = (h < height) & (w < width) & (h > 0) & (w > 0)
    first = torch.argmax(ok.int(), dim=1, keepdim=True)
    h, w = h.gather(1, first).view(b), w.gather(1, first).view(b)
    erase = ok.any(dim=1) & (u[0] < p)
    h, w = torch.where(erase, h, 0), torch.where(erase, w, 0)
    top = (u[1] * (height - h + 1)).long().clamp_(max=height - h)  # as _randint_below
    left = (u[2] * (width - w + 1)).long().clamp_(max=width - w)
    # only the erased samples are touched (index_select / index_copy): most of the batch is not
    idx = erase.nonzero().view(-1)  # host sync
    noise = None
    if mode == "pixel" and idx.numel():
        noise = torch.randn((idx.numel(), c, height, width), generator=generator, device=dev)
    return idx, top[idx], left[idx], h[idx], w[idx], noise


def random_erasing_draws(b: int, *, tries: int = ERASE_TRIES, min_aspect: float, generator, device=None):
    """The generator calls of `random_erasing_params`, in its order: (area fraction u [b, tries], aspect
    [b, tries] (log-uniform in [min_aspect, 1/min_aspect]), u [3, b] for erase?, top, left). Shared with
    the fused CPU executor, which derives the boxes from them in numba."""
    area_u = torch.rand(b, tries, generator=generator, device=device)
    la = math.log(min_aspect)
    aspect = torch.exp(torch.rand(b, tries, generator=generator, device=device) * (-2 * la) + la)
    u = torch.stack([torch.rand(b, generator=generator, device=device) for _ in range(3)])
    return area_u, aspect, u


def random_erasing(x: torch.Tensor, **kwargs) -> torch.Tensor:
    """`random_erasing_` on a copy."""
    return random_erasing_(x.clone(), **kwargs)


def _box_mask(top, left, h, w, height: int, width: int) -> torch.Tensor:
    """[B, 1, H, W] bool: True inside each sample's box (h or w 0: empty)."""
    rows = torch.arange(height, device=top.device).view(1, height)
    cols = torch.arange(width, device=top.device).view(1, width)
    in_rows = (rows >= top.view(-1, 1)) & (rows < (top + h).view(-1, 1))  # (B, H)
    in_cols = (cols >= left.view(-1, 1)) & (cols < (left + w).view(-1, 1))  # (B, W)
    return (in_rows.unsqueeze(2) & in_cols.unsqueeze(1)).unsqueeze(1)


def sample_beta(alpha: float, n: int, *, generator: torch.Generator | None, device=None,
                tries: int = 8) -> torch.Tensor:
    """n draws of Beta(alpha, alpha) from `generator` (torch.distributions takes no generator).

    Beta = G1 / (G1 + G2) with Gamma(alpha) draws by Marsaglia-Tsang (alpha < 1 boosted through
    Gamma(alpha + 1) * U^(1/alpha)); `tries` vectorized proposals, each accepted with prob > 0.95.
    """
    if alpha == 1.0:
        return torch.rand(n, generator=generator, device=device)
    a = alpha + 1.0 if alpha < 1.0 else alpha
    d = a - 1.0 / 3.0
    c = 1.0 / math.sqrt(9.0 * d)
    z = torch.randn(tries, 2 * n, generator=generator, device=device)
    u = torch.rand(tries, 2 * n, generator=generator, device=device)
    v = (1.0 + c * z) ** 3
    ok = (v > 0) & (torch.log(u) < 0.5 * z * z + d - d * v + d * torch.log(v.clamp(min=1e-12)))
    first = torch.argmax(ok.int(), dim=0, keepdim=True)
    g = d * v.gather(0, first).view(2 * n)
    g = torch.where(ok.any(dim=0), g, d)  # all proposals rejected (< 1e-10): the mode
    if alpha < 1.0:
        g = g * torch.rand(2 * n, generator=generator, device=device) ** (1.0 / alpha)
    g1, g2 = g[:n], g[n:]
    return g1 / (g1 + g2).clamp(min=1e-30)


def smooth_one_hot(labels: torch.Tensor, num_classes: int, smoothing: float = 0.0) -> torch.Tensor:
    """[B, num_classes] float32: 1 - smoothing + smoothing/K on the label, smoothing/K elsewhere."""
    off = smoothing / num_classes
    out = torch.full((labels.shape[0], num_classes), off, device=labels.device)
    return out.scatter_(1, labels.view(-1, 1), 1.0 - smoothing + off)


def mixup_cutmix_(x: torch.Tensor, labels: torch.Tensor, *, num_classes: int, mixup_alpha: float = 1.0,
                  cutmix_alpha: float = 1.0, prob: float = 1.0, switch_prob: float = 0.5,
                  label_smoothing: float = 0.0, generator: torch.Generator | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """In place per-sample Mixup / CutMix with the mirrored batch (sample i pairs with B-1-i).

    Each sample is mixed with probability `prob`; with both alphas > 0 it uses CutMix with probability
    `switch_prob`, else Mixup. Mixup: lam ~ Beta(mixup_alpha), x = lam*x + (1-lam)*partner. CutMix:
    lam ~ Beta(cutmix_alpha), a box of side sqrt(1-lam) times the image's, centred uniformly and
    clipped, is pasted from the partner, and lam is corrected to the kept area (as timm).
    Returns (x, soft targets [B, num_classes] = lam*y + (1-lam)*y_partner, smoothed).
    """
    targets, draws = mixup_cutmix_params(
        x.shape, labels, num_classes=num_classes, mixup_alpha=mixup_alpha, cutmix_alpha=cutmix_alpha, prob=prob,
        switch_prob=switch_prob, label_smoothing=label_smoothing, generator=generator, device=x.device)
    if draws is None:
        return x, targets
    b, _, height, width = x.shape
    idx = draws.idx
    own, partner = x.index_select(0, idx), x.index_select(0, b - 1 - idx)
    n = idx.numel()
    # weight of the sample's own pixels: lam everywhere (Mixup) or 0 inside the box and 1 outside (CutMix)
    cut_i, lam_i = draws.cut.view(n, 1, 1, 1), draws.lam.view(n, 1, 1, 1)
    inside = torch.where(cut_i, 0.0, lam_i)
    outside = torch.where(cut_i, 1.0, lam_i)
    if draws.has_box:
        box = _box_mask(draws.top, draws.left, draws.height, draws.width, height, width)  # (n, 1, H, W)
        weight = torch.where(box, inside, outside)
    else:
        weight = outside
    return x.index_copy_(0, idx, torch.lerp(partner, own, weight)), targets


@dataclasses.dataclass
class MixDraws:
    """`mixup_cutmix_`'s per-sample draws for the n mixed samples (sample idx[k] pairs with B-1-idx[k])."""

    idx: torch.Tensor  # int64 [n]
    cut: torch.Tensor  # bool [n]: CutMix (else Mixup)
    lam: torch.Tensor  # float32 [n]: Mixup weight of the sample's own pixels (0 when Mixup is off)
    top: torch.Tensor  # int64 [n]: CutMix box (all four 0 when CutMix is off)
    left: torch.Tensor
    height: torch.Tensor
    width: torch.Tensor
    has_box: bool  # CutMix enabled


def mixup_cutmix_params(shape, labels: torch.Tensor, *, num_classes: int, mixup_alpha: float = 1.0,
                        cutmix_alpha: float = 1.0, prob: float = 1.0, switch_prob: float = 0.5,
                        label_smoothing: float = 0.0, generator: torch.Generator | None = None, device=None
                        ) -> tuple[torch.Tensor, MixDraws | None]:
    """`mixup_cutmix_`'s draws for a batch of `shape`: (soft targets [B, num_classes], the draws of the
    mixed samples or None when no sample is mixed). One host sync."""
    b, _, height, width = shape
    dev = device
    y = smooth_one_hot(labels, num_classes, label_smoothing)
    if mixup_alpha <= 0 and cutmix_alpha <= 0:
        return y, None
    u = torch.rand(2, b, generator=generator, device=dev)
    mixed = u[0] < prob
    if mixup_alpha > 0 and cutmix_alpha > 0:
        use_cut = u[1] < switch_prob
    else:
        use_cut = torch.full((b,), cutmix_alpha > 0, device=dev)
    lam_mix = sample_beta(mixup_alpha, b, generator=generator, device=dev) if mixup_alpha > 0 else None
    lam_cut = sample_beta(cutmix_alpha, b, generator=generator, device=dev) if cutmix_alpha > 0 else None
    lam = lam_cut if lam_mix is None else lam_mix
    if lam_cut is not None:
        cut = torch.sqrt(1.0 - lam_cut)
        ch, cw = (cut * height).long(), (cut * width).long()
        cy = torch.randint(0, height, (b,), generator=generator, device=dev)
        cx = torch.randint(0, width, (b,), generator=generator, device=dev)
        y0, y1 = (cy - ch // 2).clamp(0, height), (cy + ch // 2).clamp(0, height)
        x0, x1 = (cx - cw // 2).clamp(0, width), (cx + cw // 2).clamp(0, width)
        lam_box = 1.0 - ((y1 - y0) * (x1 - x0)).float() / (height * width)
        lam = torch.where(use_cut, lam_box, lam)
    lam = torch.where(mixed, lam, 1.0)
    targets = lam.view(b, 1) * y + (1.0 - lam.view(b, 1)) * y.flip(0)
    # blend only the mixed samples; both sources are read before anything is written back
    idx = mixed.nonzero().view(-1)  # host sync
    if idx.numel() == 0:
        return targets, None
    n = idx.numel()
    zeros = torch.zeros(n, dtype=torch.long, device=dev)
    if lam_cut is not None:
        box = (y0[idx], x0[idx], (y1 - y0)[idx], (x1 - x0)[idx])
    else:
        box = (zeros, zeros, zeros, zeros)
    lam_i = lam_mix[idx] if lam_mix is not None else torch.zeros(n, device=dev)
    return targets, MixDraws(idx, use_cut[idx], lam_i, *box, has_box=lam_cut is not None)


def mixup_cutmix(x: torch.Tensor, labels: torch.Tensor, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    """`mixup_cutmix_` on a copy."""
    return mixup_cutmix_(x.clone(), labels, **kwargs)


# ---------------------------------------------------------------------------------------------------
# recipes


@dataclasses.dataclass
class AugmentParams:
    """Every knob of the train transform; a recipe is a set of defaults, ``**params`` override them."""

    crop: str = "pad"  # "pad": RandomCrop with `padding` (after fit_to_size); "resized": RandomResizedCrop
    padding: int = 4  # px of zero padding around the image for crop="pad"
    scale: tuple[float, float] = (0.08, 1.0)  # RandomResizedCrop area fraction range
    ratio: tuple[float, float] = (3 / 4, 4 / 3)  # RandomResizedCrop aspect range
    interpolation: str = "bicubic"  # RandomResizedCrop resampling: "bilinear" | "bicubic"
    flip_p: float = 0.5  # probability of a horizontal flip
    color_jitter: float = 0.0  # ColorJitter brightness = contrast = saturation strength (hue 0)
    policy: str | None = None  # AutoAugment policy: "cifar10" | "svhn" | "imagenet" | None
    rand_magnitude: float | None = None  # RandAugment magnitude (0..10); None: no RandAugment
    rand_mstd: float = 0.5  # RandAugment magnitude noise std
    rand_ops: int = 2  # RandAugment ops per image
    erase_p: float = 0.0  # RandomErasing probability
    erase_mode: str = "mean"  # "mean" (dataset mean) | "pixel" (N(0,1) noise after normalization)
    erase_max_area: float = 0.4  # largest erased fraction of the image
    erase_min_aspect: float = 0.3  # erased box aspect in [min, 1/min]
    label_smoothing: float = 0.0
    mixup_alpha: float = 0.0  # Beta(a, a) for Mixup; 0 disables
    cutmix_alpha: float = 0.0  # Beta(a, a) for CutMix; 0 disables
    mix_prob: float = 1.0  # probability that a sample is mixed
    switch_prob: float = 0.5  # probability of CutMix rather than Mixup when both are enabled

    def validate(self) -> None:
        choices = {"crop": ("pad", "resized"), "interpolation": ("bilinear", "bicubic"),
                   "policy": (None, "cifar10", "svhn", "imagenet"), "erase_mode": ("mean", "pixel")}
        for name, valid in choices.items():
            if getattr(self, name) not in valid:
                raise UserError(f"augmentation {name}={getattr(self, name)!r} is invalid; choose one of: "
                                f"{', '.join(str(v) for v in valid)}")
        for name in ("flip_p", "erase_p", "label_smoothing", "mix_prob", "switch_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise UserError(f"augmentation {name} must be in [0, 1], got {getattr(self, name)}")
        for name in ("padding", "color_jitter", "mixup_alpha", "cutmix_alpha", "rand_mstd", "rand_ops"):
            if getattr(self, name) < 0:
                raise UserError(f"augmentation {name} must be >= 0, got {getattr(self, name)}")
        if not (0 < self.scale[0] <= self.scale[1] <= 1 and 0 < self.ratio[0] <= self.ratio[1]):
            raise UserError(f"augmentation scale {self.scale} must satisfy 0 < lo <= hi <= 1 and "
                            f"ratio {self.ratio} 0 < lo <= hi")
        if self.rand_magnitude is not None and not 0 <= self.rand_magnitude <= 10:
            raise UserError(f"augmentation rand_magnitude must be in [0, 10], got {self.rand_magnitude}")
        if not (0.02 < self.erase_max_area <= 1 and 0 < self.erase_min_aspect <= 1):
            raise UserError("augmentation erase_max_area must be in (0.02, 1] and erase_min_aspect in (0, 1]")

    @property
    def soft_targets(self) -> bool:
        mixing = (self.mixup_alpha > 0 or self.cutmix_alpha > 0) and self.mix_prob > 0
        return mixing or self.label_smoothing > 0


RECIPES: dict[str, dict] = {
    # random crop pad 4 + flip (the demo)
    "basic": {},
    # paper A fine-tuning (SPEC section 4)
    "gani22-finetune": dict(policy="cifar10", erase_p=0.25, erase_mode="mean", erase_max_area=0.4,
                            label_smoothing=0.1, mixup_alpha=1.0, cutmix_alpha=1.0, mix_prob=0.5,
                            switch_prob=0.5),
    # paper B (SPEC section 2.9), timm's ImageNet recipe as Swin uses it
    "drloc21": dict(crop="resized", interpolation="bicubic", color_jitter=0.4, rand_magnitude=9.0,
                    rand_mstd=0.5, erase_p=0.25, erase_mode="pixel", erase_max_area=1 / 3,
                    label_smoothing=0.1, mixup_alpha=0.8, cutmix_alpha=1.0, mix_prob=1.0, switch_prob=0.5),
}


class TrainTransform:
    """callable(images uint8 [B,C,H,W], labels int64 [B], generator) -> (images, targets).

    images: float32 [B, C, img_size, img_size], normalized. targets: the int64 labels, or float32
    soft targets [B, num_classes] when the params mix samples or smooth labels.
    """

    def __init__(self, params: AugmentParams, *, img_size: int, mean, std, num_classes: int,
                 executor: str | None = None):
        params.validate()
        if executor is not None:
            augment_cpu.resolve_executor(executor)  # an unknown name fails here, not at the first batch
        self.params, self.img_size, self.num_classes = params, img_size, num_classes
        # None: $FASTVIT_AUGMENT at each call (see augment_cpu)
        self.executor = executor
        self.normalize = Normalize(mean, std)
        # RandAugment fills uncovered areas with the dataset mean colour (as timm)
        self.mean_fill = [min(255.0, round(255.0 * m)) for m in self.normalize.mean.tolist()]

    def __call__(self, images: torch.Tensor, labels: torch.Tensor,
                 generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
        p, g = self.params, generator
        _check_images(images)
        if self._fused(images):
            return augment_cpu.fused_train_batch(fit_to_size(images, self.img_size), labels, p,
                                                 img_size=self.img_size, normalize=self.normalize,
                                                 num_classes=self.num_classes, generator=g)
        if p.crop == "pad":
            x = fit_to_size(images, self.img_size)
            x = random_crop(x, self.img_size, padding=p.padding, flip_p=p.flip_p, generator=g)
        else:
            x = random_resized_crop(images, self.img_size, scale=p.scale, ratio=p.ratio,
                                    interpolation=p.interpolation, flip_p=p.flip_p, generator=g)
        if p.color_jitter > 0 or p.policy or p.rand_magnitude is not None:
            x = to_float(x)  # the one uint8 -> float conversion; the ops below work in place
            if p.color_jitter > 0:
                _color_jitter_(x, p.color_jitter, p.color_jitter, p.color_jitter, 0.0, generator=g)
            if p.policy:
                P.autoaugment_(x, p.policy, generator=g, fill=128.0)
            if p.rand_magnitude is not None:
                P.randaugment_(x, generator=g, magnitude=p.rand_magnitude, magnitude_std=p.rand_mstd,
                               num_ops=p.rand_ops, fill=self.mean_fill)
        x = self.normalize(x)
        if p.erase_p > 0:
            random_erasing_(x, p=p.erase_p, max_area=p.erase_max_area, min_aspect=p.erase_min_aspect,
                            mode=p.erase_mode, generator=g)
        return self._mix(x, labels, g)

    def _mix(self, x: torch.Tensor, labels: torch.Tensor, g) -> tuple[torch.Tensor, torch.Tensor]:
        p = self.params
        if not p.soft_targets:
            return x, labels
        return mixup_cutmix_(x, labels, num_classes=self.num_classes, mixup_alpha=p.mixup_alpha,
                             cutmix_alpha=p.cutmix_alpha, prob=p.mix_prob, switch_prob=p.switch_prob,
                             label_smoothing=p.label_smoothing, generator=g)

    def _fused(self, images: torch.Tensor) -> bool:
        """Whether this batch goes through the fused numba executor (augment_cpu); fused-but-unsupported
        is a UserError."""
        executor = augment_cpu.resolve_executor(self.executor)
        if executor == "torch" or (executor == "auto" and images.device.type != "cpu"):
            return False
        why = augment_cpu.unsupported_reason(self.params, images)
        if why is not None and executor == "fused":
            raise UserError(f"the fused CPU augmentation executor cannot run this transform: {why} "
                            "(use FASTVIT_AUGMENT=torch or auto)")
        return why is None


def build_train_transform(recipe: str, *, img_size: int, mean: Sequence[float], std: Sequence[float],
                          num_classes: int, executor: str | None = None, **params) -> TrainTransform:
    """The train-time augmentation of a recipe (SPEC).

    recipe: "basic" (random crop, pad 4, + flip), "gani22-finetune" (paper A, SPEC section 4; pass
        policy="svhn" / "imagenet" for SVHN / Tiny-ImageNet and CINIC), "drloc21" (paper B, SPEC 2.9).
    img_size: output side in pixels; with crop="pad" inputs of another size go through `fit_to_size`
        first, with crop="resized" the crop is resampled straight to img_size.
    mean, std: per-channel normalization in 0..1 units (1 or 3 values).
    num_classes: width of the soft targets.
    params: override any `AugmentParams` field (e.g. mixup_alpha=0, label_smoothing=0); an unknown
        key is a UserError.
    executor: "auto" | "torch" | "fused" (None: $FASTVIT_AUGMENT, default auto); "auto" runs CPU batches
        of pad-crop recipes without color jitter / RandAugment through the fused numba kernel
        (`augment_cpu`), everything else through the batched torch ops.
    Returns callable(images uint8 [B,C,H,W], labels int64 [B], generator) -> (images float32
    [B,C,img_size,img_size] normalized, targets int64 [B] or float32 [B, num_classes]).
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
                          num_classes=num_classes, executor=executor)


def build_eval_transform(*, img_size: int, mean: Sequence[float], std: Sequence[float]) -> Callable:
    """callable(images uint8 [B,C,H,W]) -> float32 [B, C, img_size, img_size]: fit_to_size + normalize."""
    normalize = Normalize(mean, std)

    def transform(images: torch.Tensor) -> torch.Tensor:
        return normalize(fit_to_size(images, img_size))

    return transform


# ---------------------------------------------------------------------------------------------------
# DINO multi-crop (paper A pretraining, SPEC section 3)


def _use_fused(device: torch.device) -> bool:
    """Whether MultiCrop runs the fused numba executor (FASTVIT_AUGMENT; auto: on CPU tensors)."""
    mode = augment_cpu.resolve_executor(None)
    if mode == "fused" and device.type != "cpu":
        raise UserError(f"FASTVIT_AUGMENT=fused runs on the CPU, but the images are on {device}; "
                        "use torch or auto")
    return mode == "fused" or (mode == "auto" and device.type == "cpu")


@dataclasses.dataclass
class ViewDraws:
    """Every random draw of one view size, per (view, sample) in view-major order: entry v*B + i is
    view v of image i. Drawn by `MultiCrop.draw`; the torch and the fused CPU executors apply them."""

    top: torch.Tensor  # int64 [n]: RandomResizedCrop box
    left: torch.Tensor  # int64 [n]
    height: torch.Tensor  # int64 [n]
    width: torch.Tensor  # int64 [n]
    flip: torch.Tensor  # bool [n]
    jitter: torch.Tensor  # float32 [4, n]: brightness, contrast, saturation factors, hue shift (turns)
    jitter_on: torch.Tensor  # bool [n]: ColorJitter applied
    jitter_order: torch.Tensor  # int64 [n, 4]: op k of slot s is jitter_order[:, s] (0..3 as in `jitter`)
    jitter_enabled: tuple[bool, bool, bool, bool]  # op strength > 0 (saturation and hue off on 1 channel)
    gray: torch.Tensor | None  # bool [n]; None for 1-channel images (no draw)
    sigma: torch.Tensor  # float32 [n]: blur sigma
    blur: torch.Tensor  # bool [n]
    solarize: torch.Tensor | None  # bool [n]; None: no solarize draw for this view size


class MultiCrop:
    """2 global + n_local local views per image, batched per view size.

    All views: RandomResizedCrop (bicubic) + flip 0.5, ColorJitter(0.4, 0.4, 0.2, 0.1) with p 0.8,
    grayscale p 0.2; Gaussian blur sigma ~ U(0.1, 2) with p 1.0 (global 1), 0.1 (global 2), 0.5
    (locals); solarize p 0.2 on global 2 only; then normalization.

    Every random parameter is drawn first (`draw`, in torch from the caller's generator), then applied
    by one of two executors with the same result: batched torch ops (any device) or the fused numba
    kernel of `multicrop_cpu` (CPU tensors; one pass per view and image). FASTVIT_AUGMENT=torch|fused|auto
    picks one (auto: fused on the CPU, torch elsewhere).
    """

    def __init__(self, global_size: int, local_size: int, n_local: int = 8,
                 global_scale: tuple[float, float] = (0.7, 1.0),
                 local_scale: tuple[float, float] = (0.2, 0.5),
                 *, mean: Sequence[float], std: Sequence[float], interpolation: str = "bicubic",
                 jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.2, 0.1), jitter_p: float = 0.8,
                 gray_p: float = 0.2, blur_p: tuple[float, float, float] = (1.0, 0.1, 0.5),
                 sigma: tuple[float, float] = (0.1, 2.0), solarize_p: float = 0.2):
        if n_local < 0:
            raise UserError(f"n_local must be >= 0, got {n_local}")
        if interpolation not in ("bilinear", "bicubic"):
            raise UserError(f"unknown interpolation {interpolation!r}; choose one of: bilinear, bicubic")
        self.global_size, self.local_size, self.n_local = global_size, local_size, n_local
        self.global_scale, self.local_scale = global_scale, local_scale
        self.interpolation, self.jitter, self.jitter_p, self.gray_p = interpolation, jitter, jitter_p, gray_p
        self.blur_p, self.sigma, self.solarize_p = blur_p, sigma, solarize_p
        self.normalize = Normalize(mean, std)

    def draw(self, shape: torch.Size, copies: int, scale, blur_p: torch.Tensor,
             solarize_p: torch.Tensor | None, generator, device) -> ViewDraws:
        """The draws of `copies` views of each image of a batch of `shape`, in the generator order the
        ops consume them: boxes, flip, jitter, grayscale, sigma, blur, solarize."""
        b, c, height, width = shape
        n = copies * b
        top, left, h, w = resized_crop_boxes(n, height, width, scale=scale, ratio=(3 / 4, 4 / 3),
                                             generator=generator, device=device)
        flip = _rand(n, generator, device) < 0.5
        factors, shift, jitter_on, order, enabled = _jitter_draws(n, c, self.jitter, self.jitter_p, generator, device)
        gray = _rand(n, generator, device) < _per_sample(self.gray_p, n, device) if c == 3 else None
        sigma = _uniform(n, self.sigma[0], self.sigma[1], generator, device)
        blur = _rand(n, generator, device) < blur_p
        solarize = None if solarize_p is None else _rand(n, generator, device) < solarize_p
        return ViewDraws(top, left, h, w, flip, torch.stack([*factors, shift]), jitter_on, order,
                         enabled, gray, sigma, blur, solarize)

    def apply_torch(self, x: torch.Tensor, d: ViewDraws, size: int) -> torch.Tensor:
        """The views of `d` from the uint8 batch x with batched torch ops: [copies*B, C, size, size]."""
        copies = d.top.shape[0] // x.shape[0]
        src = x.float().repeat(copies, 1, 1, 1)  # (copies*B, C, H, W), view-major
        v = resample_boxes(src, d.top, d.left, d.height, d.width, size, interpolation=self.interpolation,
                           flip=d.flip)
        _jitter_apply_(v, d.jitter[:3], d.jitter[3], d.jitter_on, d.jitter_order, d.jitter_enabled)
        if d.gray is not None:
            O.apply_grouped(v, torch.where(d.gray, 0, -1), [lambda xs, idx: O.grayscale(xs)])
        radius = math.ceil(3.0 * self.sigma[1])
        O.apply_grouped(v, torch.where(d.blur, 0, -1),
                        [lambda xs, idx: O.gaussian_blur(xs, d.sigma[idx], radius=radius)])
        if d.solarize is not None:
            O.apply_grouped(v, torch.where(d.solarize, 0, -1), [lambda xs, idx: O.solarize(xs, 128.0)])
        return self.normalize(v)

    def apply_fused(self, x: torch.Tensor, d: ViewDraws, size: int) -> torch.Tensor:
        """`apply_torch` as one numba kernel on the CPU (`multicrop_cpu.multicrop_views`)."""
        scale, shift = self.normalize.coefficients(x.shape[1], "cpu")
        return multicrop_views(x, d, size, radius=math.ceil(3.0 * self.sigma[1]),
                               bicubic=self.interpolation == "bicubic", scale=scale.view(-1),
                               shift=shift.view(-1))

    def __call__(self, images: torch.Tensor, generator: torch.Generator | None) -> list[torch.Tensor]:
        """images uint8 [B,C,H,W] -> [global 1, global 2, local 1..n]: float32 normalized views."""
        _check_images(images)
        b, dev = images.shape[0], images.device
        apply = self.apply_fused if _use_fused(dev) else self.apply_torch
        per_view = lambda values: torch.tensor(values, device=dev).repeat_interleave(b)  # (views*B,)
        d = self.draw(images.shape, 2, self.global_scale, per_view(self.blur_p[:2]),
                      per_view([0.0, self.solarize_p]), generator, dev)
        views = list(apply(images, d, self.global_size).split(b))
        if self.n_local:
            d = self.draw(images.shape, self.n_local, self.local_scale,
                          per_view([self.blur_p[2]] * self.n_local), None, generator, dev)
            views += list(apply(images, d, self.local_size).split(b))
        return views
