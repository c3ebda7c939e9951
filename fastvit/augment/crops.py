"""Geometric random ops on uint8 or float batches: sizing, crops, flips, RandomResizedCrop resampling.

Ops that only move pixels (fit_to_size, crop, flip, pad) keep the input dtype; RandomResizedCrop
resamples to float32 in 0..255. Every draw comes from the caller's generator; shapes never depend on
the data (no host sync).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from fastvit.errors import UserError

from .draws import rand, randint_below
from .ops import check_images, to_float


def fit_to_size(x: torch.Tensor, img_size: int, *, pad_ratio: float = 1.25) -> torch.Tensor:
    """Bring a uint8 batch to ``img_size`` x ``img_size``, keeping uint8.

    - Same size: returned unchanged (no copy).
    - Smaller by at most a factor ``pad_ratio`` on each side (e.g. 28-px Fashion-MNIST for a
      32-px model): zero-padded, centred (the extra pixel, if odd, goes to the bottom/right).
    - Otherwise (e.g. 32-px CIFAR for a 224-px model, or larger images): resized bicubic, as paper
      B does (antialiased when shrinking), rounded and clamped back to uint8.
    """
    check_images(x)
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
    flip = rand(b, generator, device) < flip_p if flip_p > 0 else None
    return top, left, flip


def random_hflip(x: torch.Tensor, *, p: float = 0.5,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """Mirror each sample left-right with probability p."""
    flip = rand(x.shape[0], generator, x.device) < p
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
    flip = rand(x.shape[0], generator, x.device) < flip_p if flip_p > 0 else None
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
    top = torch.where(any_ok, randint_below(height - h + 1, generator), (height - fh) // 2)
    left = torch.where(any_ok, randint_below(width - w + 1, generator), (width - fw) // 2)
    return top, left, h, w


def _cubic(t: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """Keys' cubic convolution kernel with parameter a (torch: -0.75, PIL and antialiased torch: -0.5)."""
    t = t.abs()
    near = ((a + 2.0) * t - (a + 3.0)) * t * t + 1.0
    far = ((a * t - 5.0 * a) * t + 8.0 * a) * t - 4.0 * a
    return torch.where(t <= 1.0, near, torch.where(t < 2.0, far, 0.0))


def resample_weights(start: torch.Tensor, length: torch.Tensor, in_size: int, out: int, *,
                     mode: str, antialias: torch.Tensor, reverse: torch.Tensor | None = None) -> torch.Tensor:
    """[n, out, in_size] matrices resampling input[start : start+length] to `out` pixels, one per row.

    Exactly F.interpolate(crop, align_corners=False) semantics: without antialias, taps past the crop
    edge are clamped to it (and bicubic uses a = -0.75); with antialias (torch's / PIL's resize when
    shrinking) the kernel widens by the shrink factor, uses a = -0.5, and taps outside the crop are
    dropped and the rest renormalized. reverse[i]: output pixels in mirrored order (a flip for free).
    The tap count is the bound for a crop of the whole input (taps past a kernel's support weigh 0),
    so no shape depends on the boxes.
    """
    n, dev = start.shape[0], start.device
    length = length.float().view(n, 1, 1)
    scale = length / out  # input pixels per output pixel
    aa = antialias.view(n, 1, 1)
    support = 2.0 if mode == "bicubic" else 1.0
    stretch = torch.where(aa, scale.clamp(min=1.0), 1.0)
    taps = 2 * math.ceil(support * max(1.0, in_size / out)) + 1
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
    w = torch.where(aa & ((j < 0) | (j >= length)), 0.0, w)
    w = w / w.sum(dim=2, keepdim=True)
    idx = torch.minimum(j.clamp(min=0.0), length - 1.0).long() + start.view(n, 1, 1)
    idx = idx.clamp_(max=in_size - 1)
    return torch.zeros(n, out, in_size, device=dev).scatter_add_(2, idx, w)


def resample_boxes(x: torch.Tensor, top, left, h, w, size: int, *, interpolation: str = "bicubic",
                   flip: torch.Tensor | None = None) -> torch.Tensor:
    """Resample box i of sample i (rows top..top+h, cols left..left+w) to size x size; float32 0..255.

    Equals F.interpolate(x[i, :, top:top+h, left:left+w], size, mode=interpolation, antialias=(the box is
    larger than `size` on a side)), as torchvision's RandomResizedCrop, then mirrored where flip[i].
    Separable: two batched matmuls with per-sample [size, side] weight matrices (fast on CPU and GPU).
    """
    n, c, height, width = x.shape
    aa = (h > size) | (w > size)
    wy = resample_weights(top, h, height, size, mode=interpolation, antialias=aa)  # (n, size, H)
    wx = resample_weights(left, w, width, size, mode=interpolation, antialias=aa, reverse=flip)  # (n, size, W)
    # rows first with the (broadcast) row weights, then columns: no transposed copies
    cols = torch.matmul(wy.unsqueeze(1), to_float(x))  # (n, C, size, W)
    out = torch.bmm(cols.view(n, c * size, width), wx.transpose(1, 2)).view(n, c, size, size)
    return out.clamp_(0, 255) if interpolation == "bicubic" else out
