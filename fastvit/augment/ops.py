"""Deterministic per-sample image ops on batches, PIL-equivalent, for the batched augmentations.

Every op takes a float32 batch ``x [n, C, H, W]`` with values in 0..255 (C = 1 or 3) and per-sample
parameters (a Python number, or a tensor ``[n]``), and returns a float32 batch without modifying
its input (ops that are identities for 1-channel images return the input itself); nothing is
rounded between ops. Each op mirrors a PIL operation (named in its docstring) up to that rounding:
PIL works on uint8 and rounds or truncates after every op, these do not. No op reads device data back
to the host: shapes never depend on pixel values.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from fastvit.errors import UserError

# ITU-R 601-2 luma, as PIL's convert("L") and torchvision's rgb_to_grayscale
_LUMA = (0.299, 0.587, 0.114)


def _col(v, x: torch.Tensor) -> torch.Tensor | float:
    """A per-sample parameter as a [n, 1, 1, 1] tensor broadcastable over x (numbers pass through)."""
    if isinstance(v, torch.Tensor):
        return v.to(device=x.device, dtype=x.dtype).reshape(-1, 1, 1, 1)
    return float(v)


def _factor(v, x: torch.Tensor) -> torch.Tensor:
    """A per-sample factor as a tensor broadcastable over x: [n, 1, 1, 1], or 0-d for a number."""
    if isinstance(v, torch.Tensor):
        return v.to(device=x.device, dtype=x.dtype).reshape(-1, 1, 1, 1)
    return torch.tensor(float(v), device=x.device, dtype=x.dtype)


def fill_column(fill, x: torch.Tensor) -> torch.Tensor:
    """A fill colour (number or per-channel sequence) as [1, C, 1, 1]."""
    t = torch.as_tensor(fill, dtype=x.dtype, device=x.device).flatten()
    return t[: x.shape[1]].expand(x.shape[1]).reshape(1, -1, 1, 1) if t.numel() > 1 else t.reshape(1, 1, 1, 1)


# ---------------------------------------------------------------------------------------------------
# batch conventions


def check_images(x: torch.Tensor) -> None:
    """A uint8 [B, C, H, W] batch with C = 1 or 3 (what the loaders deliver), else a UserError."""
    if x.dim() != 4 or x.shape[1] not in (1, 3):
        raise UserError(f"images must be a [B, C, H, W] batch with C = 1 or 3, got shape {tuple(x.shape)}")
    if x.dtype != torch.uint8:
        raise UserError(f"images must be uint8 (as the loaders deliver them), got {x.dtype}")


def to_float(x: torch.Tensor) -> torch.Tensor:
    """uint8 batch -> float32 in 0..255 (a float batch is returned as is)."""
    return x.float() if x.dtype == torch.uint8 else x


# ---------------------------------------------------------------------------------------------------
# pixel-value ops (PIL ImageOps)


def invert(x: torch.Tensor) -> torch.Tensor:
    """ImageOps.invert: 255 - x."""
    return 255.0 - x


def solarize(x: torch.Tensor, threshold) -> torch.Tensor:
    """ImageOps.solarize: pixels >= threshold are inverted (threshold 256: identity)."""
    return torch.where(x >= _col(threshold, x), 255.0 - x, x)


def solarize_add(x: torch.Tensor, addition, threshold=128) -> torch.Tensor:
    """timm's SolarizeAdd: pixels below threshold get `addition` added, clipped at 255."""
    return torch.where(x < _col(threshold, x), (x + _col(addition, x)).clamp_(max=255.0), x)


def posterize(x: torch.Tensor, bits) -> torch.Tensor:
    """ImageOps.posterize: keep the top `bits` bits of each (floored) value; bits 8: identity, 0: black."""
    step = torch.pow(2.0, 8.0 - _col(bits, x)) if isinstance(bits, torch.Tensor) else 2.0 ** (8 - bits)
    return torch.floor(x / step) * step


def equalize(x: torch.Tensor) -> torch.Tensor:
    """ImageOps.equalize, per image and channel, on the floored values (PIL's lookup-table algorithm)."""
    levels = floored_levels(x)
    return apply_lut(equalize_lut(levels, x.shape[-2] * x.shape[-1]), levels, x)


def floored_levels(x: torch.Tensor) -> torch.Tensor:
    """The floored 0..255 values as the int64 [n*C, H*W] indices a lookup table takes."""
    n, c, h, w = x.shape
    return x.detach().reshape(n * c, h * w).clamp(0, 255).long()  # clamp on floats: fast


def equalize_lut(levels: torch.Tensor, pixels: int) -> torch.Tensor:
    """[planes, 256] int64: each plane's ImageOps.equalize table, from `floored_levels`."""
    planes, dev = levels.shape[0], levels.device
    # a fixed-size scatter, not bincount (whose output size depends on the data: a host sync)
    ones = torch.ones((), dtype=torch.long, device=dev).expand_as(levels)
    hist = torch.zeros(planes, 256, dtype=torch.long, device=dev).scatter_add_(1, levels, ones)
    # PIL: step = (number of pixels - count of the last occupied bin) // 255
    last = 255 - torch.argmax((hist.flip(1) > 0).long(), dim=1)
    step = (pixels - hist.gather(1, last.view(planes, 1))) // 255  # (planes, 1)
    before = torch.cumsum(hist, dim=1) - hist  # pixels strictly below each value
    lut = ((before + step // 2) // step.clamp(min=1)).clamp_(max=255)
    return torch.where(step > 0, lut, torch.arange(256, device=dev).view(1, 256))


def apply_lut(lut: torch.Tensor, levels: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Per-plane tables [planes, 256] looked up at `floored_levels(x)`: a float batch shaped like x."""
    return lut.gather(1, levels).to(x.dtype).view(x.shape)


def autocontrast(x: torch.Tensor) -> torch.Tensor:
    """ImageOps.autocontrast (cutoff 0): stretch each channel's [min, max] to [0, 255]; flat: identity."""
    scale, shift = autocontrast_coefficients(x)
    return torch.addcmul(shift, x, scale).clamp_(0, 255)  # (x - lo) * scale in one pass


def autocontrast_coefficients(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, shift) [n, C, 1, 1] such that autocontrast(x) = clamp(x * scale + shift, 0, 255)."""
    lo = x.amin(dim=(2, 3), keepdim=True)
    hi = x.amax(dim=(2, 3), keepdim=True)
    flat = hi <= lo
    scale = torch.where(flat, 1.0, 255.0 / (hi - lo).clamp(min=1e-6))
    shift = torch.where(flat, 0.0, -lo * scale)
    return scale, shift


# ---------------------------------------------------------------------------------------------------
# blends (PIL ImageEnhance: out = degenerate + factor * (x - degenerate), clipped)


def rgb_to_gray(x: torch.Tensor) -> torch.Tensor:
    """convert("L") luma, [n, 1, H, W] (a 1-channel batch is its own luma)."""
    if x.shape[1] == 1:
        return x
    r, g, b = x.unbind(1)
    return (r * _LUMA[0] + g * _LUMA[1] + b * _LUMA[2]).unsqueeze(1)


def adjust_brightness(x: torch.Tensor, factor) -> torch.Tensor:
    """ImageEnhance.Brightness: blend with black."""
    return blend(x, 0.0, factor)


def mean_luma(x: torch.Tensor) -> torch.Tensor:
    """Each image's mean luma, [n, 1, 1, 1]: ImageEnhance.Contrast's degenerate (PIL rounds it; this does not)."""
    # the mean luma is the luma of the channel means: no full grey image needed
    means = x.mean(dim=(2, 3))  # (n, C)
    if x.shape[1] == 3:
        means = means @ torch.tensor(_LUMA, device=x.device, dtype=x.dtype).view(3, 1)  # (n, 1)
    return means.view(-1, 1, 1, 1)


def smooth(x: torch.Tensor) -> torch.Tensor:
    """ImageFilter.SMOOTH (3x3, centre 5, others 1, / 13); as in PIL, the one-pixel border is the input."""
    h, w = x.shape[-2:]
    if h < 3 or w < 3:
        return x
    # SMOOTH = (box3x3 sum + 4 * centre) / 13; separable sums of shifted views beat avg_pool2d and a
    # depthwise conv several times on CPU
    rows = x[..., :-2] + x[..., 1:-1]
    rows += x[..., 2:]  # (n, C, H, W-2)
    box = rows[..., :-2, :] + rows[..., 1:-1, :]
    box += rows[..., 2:, :]  # (n, C, H-2, W-2)
    out = x.clone()
    out[:, :, 1:-1, 1:-1] = box.add_(x[:, :, 1:-1, 1:-1], alpha=4.0).mul_(1.0 / 13.0)
    return out


def blend(x: torch.Tensor, degenerate: torch.Tensor | float, factor) -> torch.Tensor:
    """ImageEnhance's blend: degenerate + factor * (x - degenerate), clipped to 0..255.

    Computed as factor * x + (1 - factor) * degenerate, so factor 1 returns x exactly (for x in 0..255).
    """
    f = _factor(factor, x)
    return torch.addcmul(degenerate * (1.0 - f), x, f).clamp_(0, 255)


def adjust_contrast(x: torch.Tensor, factor) -> torch.Tensor:
    """ImageEnhance.Contrast: blend with the image's mean luma (PIL rounds that mean; this does not)."""
    return blend(x, mean_luma(x), factor)


def adjust_saturation(x: torch.Tensor, factor) -> torch.Tensor:
    """ImageEnhance.Color: blend with the luma image; identity on 1-channel images."""
    if x.shape[1] == 1:
        return x
    return blend(x, rgb_to_gray(x), factor)


def adjust_sharpness(x: torch.Tensor, factor) -> torch.Tensor:
    """ImageEnhance.Sharpness: blend with `smooth` (so the one-pixel border keeps the input)."""
    return blend(x, smooth(x), factor)


def adjust_hue(x: torch.Tensor, shift) -> torch.Tensor:
    """torchvision's adjust_hue: rotate the HSV hue by `shift` turns (in [-0.5, 0.5]); 1 channel: identity.

    Works in 0..255 directly: with v = max, v*s = max - min = delta, each channel is
    v - delta * clamp(min(k, 4 - k), 0, 1) with k = (n + hue*6) mod 6, n = 5, 3, 1 for R, G, B.
    """
    if x.shape[1] == 1:
        return x
    r, g, b = x[:, 0:1], x[:, 1:2], x[:, 2:3]
    maxc = x.amax(dim=1, keepdim=True)  # (n, 1, H, W)
    delta = maxc - x.amin(dim=1, keepdim=True)
    inv = delta.clamp(min=1e-6).reciprocal_()  # grey pixels: every difference below is 0
    # hue in sixths of a turn, from whichever channel is the maximum
    hue6 = torch.where(maxc == r, (g - b) * inv,
                       torch.where(maxc == g, (b - r) * inv + 2.0, (r - g) * inv + 4.0))
    hue6 = hue6 + 6.0 * _col(shift, x) + torch.tensor([5.0, 3.0, 1.0], device=x.device).view(1, 3, 1, 1)
    k = hue6 - torch.floor(hue6 * (1.0 / 6.0)) * 6.0  # mod 6, (n, 3, H, W); faster than remainder
    return maxc - delta * torch.minimum(k, 4.0 - k).clamp_(0.0, 1.0)


def grayscale(x: torch.Tensor) -> torch.Tensor:
    """Luma replicated over the channels (RandomGrayscale's output); identity on 1 channel."""
    return rgb_to_gray(x).expand_as(x).clone() if x.shape[1] == 3 else x


# ---------------------------------------------------------------------------------------------------
# geometry: PIL Image.transform(AFFINE) semantics, one grid_sample per call


def affine(x: torch.Tensor, matrix: torch.Tensor, *, fill=0.0, mode: str = "nearest") -> torch.Tensor:
    """Image.transform(size, AFFINE, data=matrix[i], resample=mode, fillcolor=fill) per sample.

    matrix: [n, 2, 3] (a, b, c, d, e, f) mapping output pixel coordinates to input ones,
        u = a*X + b*Y + c, v = d*X + e*Y + f, with pixel i covering [i, i+1) (PIL's convention:
        the output pixel centre is X = x + 0.5). Outside the input: `fill` (number or per channel).
    mode: "nearest" | "bilinear" | "bicubic".
    """
    h, w = x.shape[-2:]
    grid = affine_grid(matrix.to(x.device), h, w, nearest=mode == "nearest")
    fill_t = fill_column(fill, x)
    # sampling x - fill with zero padding puts exactly `fill` outside the image
    out = F.grid_sample(x - fill_t, grid, mode=mode, padding_mode="zeros", align_corners=False)
    out = out + fill_t
    return out.clamp_(0, 255) if mode == "bicubic" else out


def affine_grid(matrix: torch.Tensor, h: int, w: int, *, nearest: bool | torch.Tensor) -> torch.Tensor:
    """The [n, H, W, 2] grid_sample grid (align_corners=False) of `affine`'s output->input matrices.

    nearest: the samples (a bool, or a per-sample [n] mask) sampled with mode "nearest", whose
    positions get nudged so that grid_sample's rounding agrees with PIL's floor.
    """
    n = matrix.shape[0]
    m = matrix.to(dtype=torch.float32)
    a, b, cc = m[:, 0, 0], m[:, 0, 1], m[:, 0, 2]
    d, e, ff = m[:, 1, 0], m[:, 1, 1], m[:, 1, 2]
    # PIL takes floor(u), grid_sample rounds u - 1/2 half-to-even: nudge exact ties upwards
    nudge = torch.where(nearest, 1e-4, 0.0) if isinstance(nearest, torch.Tensor) else 1e-4 * nearest
    cc, ff = cc + nudge, ff + nudge
    # normalized coords (align_corners=False): X = (xn + 1) * w / 2 and u = (un + 1) * w / 2
    # the grid by broadcasting: affine_grid's bmm with 3x2 matrices is slow on CPU
    dev = m.device
    xo = ((torch.arange(w, device=dev, dtype=torch.float32) * 2.0 + 1.0) / w - 1.0).view(1, 1, w)
    yo = ((torch.arange(h, device=dev, dtype=torch.float32) * 2.0 + 1.0) / h - 1.0).view(1, h, 1)
    col = lambda v: v.view(n, 1, 1)  # (n, 1, 1) per-sample coefficient
    gx = col(a) * xo + (col(b * h / w) * yo + col(a + b * h / w + 2.0 * cc / w - 1.0))
    gy = col(d * w / h) * xo + (col(e) * yo + col(d * w / h + e + 2.0 * ff / h - 1.0))
    return torch.stack([gx, gy], dim=3)  # (n, H, W, 2)


def _matrix(a, b, c, d, e, f) -> torch.Tensor:
    """[n, 2, 3] from six [n] tensors or numbers (at least one a tensor)."""
    ref = next(t for t in (a, b, c, d, e, f) if isinstance(t, torch.Tensor))
    parts = [t if isinstance(t, torch.Tensor) else torch.full_like(ref, float(t)) for t in (a, b, c, d, e, f)]
    return torch.stack(parts, dim=1).view(-1, 2, 3)


def rotate_matrix(degrees: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Image.rotate(degrees) (counter-clockwise about the image centre) as an output->input matrix."""
    t = torch.deg2rad(-degrees.float())
    cos, sin = torch.cos(t), torch.sin(t)
    cx, cy = w / 2.0, h / 2.0
    return _matrix(cos, sin, cx - cos * cx - sin * cy, -sin, cos, cy + sin * cx - cos * cy)


def shear_x_matrix(factor: torch.Tensor) -> torch.Tensor:
    """AFFINE data (1, factor, 0, 0, 1, 0)."""
    return _matrix(1.0, factor, 0.0, 0.0, 1.0, 0.0)


def shear_y_matrix(factor: torch.Tensor) -> torch.Tensor:
    """AFFINE data (1, 0, 0, factor, 1, 0)."""
    return _matrix(1.0, 0.0, 0.0, factor, 1.0, 0.0)


def translate_matrix(dx, dy) -> torch.Tensor:
    """AFFINE data (1, 0, dx, 0, 1, dy): the content moves by (-dx, -dy) pixels."""
    return _matrix(1.0, 0.0, dx, 0.0, 1.0, dy)


# ---------------------------------------------------------------------------------------------------
# blur


def gaussian_kernels(sigma: torch.Tensor, radius: int) -> torch.Tensor:
    """[n, 2*radius+1] normalized 1-D Gaussian kernels, one per sigma."""
    t = torch.arange(-radius, radius + 1, device=sigma.device, dtype=torch.float32)
    k = torch.exp(-0.5 * (t.view(1, -1) / sigma.float().view(-1, 1)) ** 2)
    return k / k.sum(dim=1, keepdim=True)


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor, *, radius: int | None = None) -> torch.Tensor:
    """Separable Gaussian blur with a per-sample sigma [n] (reflect padding, as scipy's "mirror").

    radius defaults to ceil(3 * max sigma) (read back from the device: pass it to avoid that host sync),
    capped so the padding fits the image.
    """
    n, c, h, w = x.shape
    if radius is None:
        radius = math.ceil(3.0 * float(sigma.max()))
    radius = max(0, min(radius, h - 1, w - 1))
    if radius == 0 or n == 0:
        return x.clone()
    k = gaussian_kernels(sigma, radius)  # (n, K)
    size = 2 * radius + 1
    k = k.repeat_interleave(c, dim=0)  # (n*C, K): one kernel per plane
    planes = x.reshape(1, n * c, h, w)
    planes = F.pad(planes, (0, 0, radius, radius), mode="reflect")
    planes = F.conv2d(planes, k.view(n * c, 1, size, 1), groups=n * c)
    planes = F.pad(planes, (radius, radius, 0, 0), mode="reflect")
    planes = F.conv2d(planes, k.view(n * c, 1, 1, size), groups=n * c)
    return planes.view(n, c, h, w)
