"""Fused CPU executor of `augment.MultiCrop`: one numba pass per (view, image).

The batched torch executor runs ~20 small ops per view size, each over the whole batch plus the
grouping (sort, index_select, index_copy) of every probability-p op; on the CPU that dispatch and
copying, not the arithmetic, is the cost. Here each (view, image) pair is one `prange` iteration that
resamples its box straight from the image (the batch as float32, converted once per view size) and
runs the photometric ops on that small tile while it is in cache: RandomResizedCrop (+ flip),
ColorJitter in the sample's order, grayscale, Gaussian blur, solarize, normalization.

The random parameters are drawn by `MultiCrop.draw` in torch, from the caller's generator, exactly as
the torch executor consumes them, so both executors give the same views for the same seed (up to
float32 summation order, see tests/test_multicrop_cpu.py).

FASTVIT_AUGMENT (torch | fused | auto, read by `augment_cpu.resolve_executor`) chooses the executor;
the kernel runs on min(torch threads, numba's pool) threads, as `augment_cpu`'s.
"""

from __future__ import annotations

import math

import numba
import numpy as np
import torch
from numba import prange

from fastvit.errors import UserError

# float32 constants: a float64 literal would promote float32 arithmetic to float64 in numba
_F0, _F1, _HALF = np.float32(0.0), np.float32(1.0), np.float32(0.5)
_F255, _F128 = np.float32(255.0), np.float32(128.0)
_LUMA_R, _LUMA_G, _LUMA_B = np.float32(0.299), np.float32(0.587), np.float32(0.114)


# ---------------------------------------------------------------------------------------------------
# kernels


@numba.njit(cache=True, fastmath=True)
def resample_taps(start, length, in_size, out, bicubic, antialias, reverse):
    """(idx int64 [out, T], weights float32 [out, T]): output pixel o = sum_k weights[o, k] * in[idx[o, k]].

    The taps of `augment.resample_weights` for one axis of one box (same formula: the kernel widened by
    the shrink factor under antialias with a = -0.5, else a = -0.75 and edge taps clamped; the weights
    renormalized), with this box's own tap count instead of the batch's largest. Divisions are
    multiplications by reciprocals here (within an ulp of torch's weights: 1/stretch is exact without
    antialias).
    """
    support = 2.0 if bicubic else 1.0
    scale = np.float32(length) / np.float32(out)
    stretch = max(scale, _F1) if antialias else _F1
    a = np.float32(-0.5) if antialias else np.float32(-0.75)
    inv_stretch = _F1 / stretch
    taps = 2 * math.ceil(support * stretch) + 1
    idx = np.empty((out, taps), np.int64)
    weights = np.empty((out, taps), np.float32)
    for o in range(out):
        pos = np.float32(out - 1 - o if reverse else o)
        centre = (pos + _HALF) * scale
        j0 = math.floor(centre - np.float32(support) * stretch + _HALF)
        total = _F0
        for k in range(taps):
            j = j0 + k
            t = abs((np.float32(j) + _HALF - centre) * inv_stretch)
            if bicubic:
                if t <= 1.0:
                    w = ((a + np.float32(2.0)) * t - (a + np.float32(3.0))) * t * t + _F1
                elif t < 2.0:
                    w = ((a * t - np.float32(5.0) * a) * t + np.float32(8.0) * a) * t - np.float32(4.0) * a
                else:
                    w = _F0
            else:
                w = max(_F1 - t, _F0)
            if antialias and (j < 0 or j >= length):
                w = _F0
            weights[o, k] = w
            total += w
            idx[o, k] = min(start + min(max(j, 0), length - 1), in_size - 1)
        inv_total = _F1 / total
        for k in range(taps):
            weights[o, k] *= inv_total
    return idx, weights


@numba.njit(cache=True, fastmath=True)
def _resample(img, top, left, height, width, flip, size, bicubic, out):
    """out [C, size, size] = the box of img [C, H, W] (float32) resampled, rows first as the torch path.

    Both passes run along contiguous memory (SIMD): the row pass over the box's columns, then the
    column pass on the transposed intermediate. Indices are cast to unsigned where they are computed:
    numba then skips its negative-index wraparound, which otherwise blocks vectorization (2-3x here).
    """
    c, h, w = img.shape
    antialias = height > size or width > size
    iy, wy = resample_taps(top, height, h, size, bicubic, antialias, False)
    ix, wx = resample_taps(left, width, w, size, bicubic, antialias, flip)
    x0 = ix.min()
    span = ix.max() - x0 + 1
    rows = np.empty((size, span), np.float32)  # (out row, box column)
    rows_t = np.empty((span, size), np.float32)
    cols_t = np.empty((size, size), np.float32)  # (out column, out row)
    for ch in range(c):
        rows[:] = _F0
        for o in range(size):
            for k in range(iy.shape[1]):
                wk = wy[o, k]
                y = np.uint64(iy[o, k])
                for x in range(span):
                    rows[o, x] += wk * img[ch, y, np.uint64(x0 + x)]
        for o in range(size):
            for x in range(span):
                rows_t[x, o] = rows[o, x]
        cols_t[:] = _F0
        for o in range(size):
            for k in range(ix.shape[1]):
                wk = wx[o, k]
                col = np.uint64(ix[o, k] - x0)
                for y in range(size):
                    cols_t[o, y] += wk * rows_t[col, y]
        for y in range(size):
            for o in range(size):
                v = cols_t[o, y]
                out[ch, y, o] = min(max(v, _F0), _F255) if bicubic else v


@numba.njit(cache=True, fastmath=True)
def _clip(v):
    return min(max(v, _F0), _F255)


@numba.njit(cache=True, fastmath=True)
def _brightness(x, f):
    c, h, w = x.shape
    for ch in range(c):
        for i in range(h):
            for j in range(w):
                x[ch, i, j] = _clip(x[ch, i, j] * f)


@numba.njit(cache=True, fastmath=True)
def _contrast(x, f):
    """Blend with the mean luma = the luma of the channel means (float64 sums: order-insensitive)."""
    c, h, w = x.shape
    means = np.empty(c, np.float32)
    for ch in range(c):
        s = 0.0
        for i in range(h):
            for j in range(w):
                s += x[ch, i, j]
        means[ch] = np.float32(s / (h * w))
    m = means[0] * _LUMA_R + means[1] * _LUMA_G + means[2] * _LUMA_B if c == 3 else means[0]
    base = m * (_F1 - f)
    for ch in range(c):
        for i in range(h):
            for j in range(w):
                x[ch, i, j] = _clip(base + x[ch, i, j] * f)


@numba.njit(cache=True, fastmath=True)
def _saturation(x, f):
    _, h, w = x.shape
    g = _F1 - f
    for i in range(h):
        r, gr, b = x[0, i], x[1, i], x[2, i]  # row views: the inner loop vectorizes
        for j in range(w):
            base = (r[j] * _LUMA_R + gr[j] * _LUMA_G + b[j] * _LUMA_B) * g
            r[j] = _clip(base + r[j] * f)
            gr[j] = _clip(base + gr[j] * f)
            b[j] = _clip(base + b[j] * f)


@numba.njit(cache=True, fastmath=True)
def _hue_channel(maxc, delta, hue6):
    """One channel of the rotated pixel; hue6 already offset by 5, 3 or 1 (R, G, B)."""
    k = hue6 - np.floor(hue6 * np.float32(1.0 / 6.0)) * np.float32(6.0)
    return maxc - delta * min(max(min(k, np.float32(4.0) - k), _F0), _F1)


@numba.njit(cache=True, fastmath=True)
def _hue(x, shift):
    """torchvision's adjust_hue in 0..255, as `augment_ops.adjust_hue` computes it (branch-free: SIMD)."""
    _, h, w = x.shape
    turn = np.float32(6.0) * shift
    for i in range(h):
        rr, gg, bb = x[0, i], x[1, i], x[2, i]
        for j in range(w):
            r, g, b = rr[j], gg[j], bb[j]
            maxc = max(r, max(g, b))
            delta = maxc - min(r, min(g, b))
            inv = _F1 / max(delta, np.float32(1e-6))
            from_r = (g - b) * inv
            from_g = (b - r) * inv + np.float32(2.0)
            from_b = (r - g) * inv + np.float32(4.0)
            hue6 = (from_r if maxc == r else (from_g if maxc == g else from_b)) + turn
            rr[j] = _hue_channel(maxc, delta, hue6 + np.float32(5.0))
            gg[j] = _hue_channel(maxc, delta, hue6 + np.float32(3.0))
            bb[j] = _hue_channel(maxc, delta, hue6 + np.float32(1.0))


@numba.njit(cache=True, fastmath=True)
def _grayscale(x):
    _, h, w = x.shape
    for i in range(h):
        r, g, b = x[0, i], x[1, i], x[2, i]
        for j in range(w):
            v = r[j] * _LUMA_R + g[j] * _LUMA_G + b[j] * _LUMA_B
            r[j] = g[j] = b[j] = v


@numba.njit(cache=True)
def _reflect(i, n):
    return -i if i < 0 else (2 * (n - 1) - i if i >= n else i)


@numba.njit(cache=True, fastmath=True)
def _blur_columns(plane, out, kernel, radius, lo):
    """out [h, w] = plane [h, w] convolved along its columns, reflect padding; taps lo..size-lo-1 only.
    Whole rows at a time, so the inner loop is SIMD."""
    h, w = plane.shape
    for i in range(h):
        dst = out[i]
        dst[:] = _F0
        for k in range(lo, kernel.shape[0] - lo):
            kk = kernel[k]
            src = plane[_reflect(i + k - radius, h)]
            for j in range(w):
                dst[j] += kk * src[j]


@numba.njit(cache=True, fastmath=True)
def _blur(x, sigma, radius):
    """Separable Gaussian blur, reflect padding, columns first (as `augment_ops.gaussian_blur`); the row
    pass runs on the transpose. Taps whose float32 weight underflows to 0 (small sigma) are skipped."""
    c, h, w = x.shape
    size = 2 * radius + 1
    kernel = np.empty(size, np.float32)
    total = _F0
    for k in range(size):
        t = np.float32(k - radius) / sigma
        kernel[k] = np.exp(np.float32(-0.5) * (t * t))
        total += kernel[k]
    for k in range(size):
        kernel[k] /= total
    lo = 0
    while kernel[lo] == 0.0:
        lo += 1
    tmp = np.empty((h, w), np.float32)
    tmp_t = np.empty((w, h), np.float32)
    out_t = np.empty((w, h), np.float32)
    for ch in range(c):
        _blur_columns(x[ch], tmp, kernel, radius, lo)
        for i in range(h):
            for j in range(w):
                tmp_t[j, i] = tmp[i, j]
        _blur_columns(tmp_t, out_t, kernel, radius, lo)
        for i in range(h):
            for j in range(w):
                x[ch, i, j] = out_t[j, i]


@numba.njit(parallel=True, cache=True, fastmath=True)
def _views_kernel(images, top, left, height, width, flip, jitter, jitter_on, order, enabled, gray,
                  sigma, blur, solarize, size, radius, bicubic, scale, shift, out):
    """out[t] (t = view * B + image): see `multicrop_views`."""
    b = images.shape[0]
    c = images.shape[1]
    for t in prange(out.shape[0]):
        x = out[t]
        _resample(images[t % b], top[t], left[t], height[t], width[t], flip[t], size, bicubic, x)
        if jitter_on[t]:
            for slot in range(4):
                op = order[t, slot]
                if not enabled[op]:
                    continue
                if op == 0:
                    _brightness(x, jitter[0, t])
                elif op == 1:
                    _contrast(x, jitter[1, t])
                elif op == 2:
                    _saturation(x, jitter[2, t])
                else:
                    _hue(x, jitter[3, t])
        if gray[t]:
            _grayscale(x)
        if blur[t] and radius > 0:
            _blur(x, sigma[t], radius)
        for ch in range(c):
            for i in range(size):
                for j in range(size):
                    v = x[ch, i, j]
                    if solarize[t] and v >= _F128:
                        v = _F255 - v
                    x[ch, i, j] = v * scale[ch] + shift[ch]


# ---------------------------------------------------------------------------------------------------
# host side


def multicrop_views(images: torch.Tensor, draws, size: int, *, radius: int, bicubic: bool,
                    scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """The views of one size, fused: float32 [copies*B, C, size, size], view-major (as `draws`).

    images: uint8 [B, C, H, W] on the CPU. draws: `augment.ViewDraws` for copies*B views. radius: the
    blur radius before capping to the view (ceil(3 * sigma max)). bicubic: else bilinear. scale,
    shift: [C] float32 normalization, normalized = x * scale + shift.
    """
    if images.device.type != "cpu":
        raise UserError(f"the fused multi-crop executor runs on the CPU, the images are on {images.device}")
    n = draws.top.shape[0]
    c = images.shape[1]
    out = torch.empty((n, c, size, size), dtype=torch.float32)
    no = np.zeros(n, dtype=np.bool_)
    # contiguous: C order whatever the loader's memory format (e.g. channels_last)
    args = (images.float().contiguous().numpy(), draws.top.numpy(), draws.left.numpy(), draws.height.numpy(),
            draws.width.numpy(), draws.flip.numpy(), draws.jitter.float().contiguous().numpy(),
            draws.jitter_on.numpy(), draws.jitter_order.contiguous().numpy(),
            np.array(draws.jitter_enabled, dtype=np.bool_), no if draws.gray is None else draws.gray.numpy(),
            draws.sigma.numpy(), draws.blur.numpy(), no if draws.solarize is None else draws.solarize.numpy(),
            size, max(0, min(radius, size - 1)), bicubic, scale.float().contiguous().numpy(),
            shift.float().contiguous().numpy(), out.numpy())
    # follow torch.set_num_threads (e.g. 1 thread under --deterministic); the output does not depend on it
    previous = numba.get_num_threads()
    numba.set_num_threads(max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS)))
    try:
        _views_kernel(*args)
    finally:
        numba.set_num_threads(previous)
    return out
