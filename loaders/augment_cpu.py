"""Fused CPU executor for the pad-crop train transform (paper A's ``gani22-finetune``, and ``basic``).

On the CPU the batched torch path of ``augment.TrainTransform`` spends its time in per-op dispatch
(~1,500 small aten calls per batch of 256: index_select / index_copy / gather per op group). Here one
numba kernel runs, per image and in one pass over ``prange(B)``: pad + random crop + flip -> float32
-> AutoAugment op slot 1 -> slot 2 -> normalization -> RandomErasing, and writes the float32 output.

The random draws stay in torch, made by the torch path's own draw functions (``random_crop_params``,
``autoaugment_params``, ``random_erasing_params``) with the caller's generator in the same order, so a
seed gives the same batch on both paths. The ops reproduce ``augment_ops`` in float32, operation by
operation; the sampling grid of the geometric ops is computed by ``affine_grid_coefficients``, the same
function ``augment_ops.affine`` uses, so nearest-neighbour indices agree exactly. Remaining differences
are float32 rounding (a few ulp, e.g. summation order of a mean) which can flip a floor (equalize,
posterize) or a threshold (solarize) on rare pixels. Mixup / CutMix stays in torch after the kernel.

Choosing the executor: ``TrainTransform(..., executor=)`` or, if that is None, the environment
variable ``FASTVIT_AUGMENT``:
- ``auto`` (default): the fused executor for CPU batches the kernel supports, the torch path otherwise
  (CUDA tensors; RandomResizedCrop, color jitter, RandAugment);
- ``torch``: always the torch path (reference, comparisons);
- ``fused``: always the fused executor; a batch or recipe it cannot run is a UserError naming why.

Threads: the kernel uses min(torch.get_num_threads(), numba's thread pool) threads, so a process
limited to one torch thread (``--deterministic``) also runs the kernel on one. The result does not
depend on the thread count (images are independent).
"""

from __future__ import annotations

import numba
import numpy as np
import torch
from numba import njit, prange

from fastvit.errors import UserError

from . import augment_policies as P

EXECUTORS = ("auto", "torch", "fused")

# kernel op codes (independent of the order of the policy op lists)
_INVERT, _AUTOCONTRAST, _EQUALIZE, _SOLARIZE, _POSTERIZE = 0, 1, 2, 3, 4
_COLOR, _CONTRAST, _BRIGHTNESS, _SHARPNESS, _NEAREST, _BILINEAR = 5, 6, 7, 8, 9, 10
_PIXEL_CODES = {"invert": _INVERT, "autocontrast": _AUTOCONTRAST, "equalize": _EQUALIZE, "solarize": _SOLARIZE,
                "posterize": _POSTERIZE, "color": _COLOR, "contrast": _CONTRAST, "brightness": _BRIGHTNESS,
                "sharpness": _SHARPNESS}
_GEOMETRIC_CODES = {"nearest": _NEAREST, "bilinear": _BILINEAR}


def _op_codes(names: list[str], modes: dict[str, str]) -> torch.Tensor:
    codes = [_PIXEL_CODES[n] if n in _PIXEL_CODES else _GEOMETRIC_CODES[modes[n]] for n in names]
    return torch.tensor(codes, dtype=torch.int32)


_AA_CODES = _op_codes(P.AUTOAUGMENT_OPS, P._AA_MODES)

F32 = np.float32
_ZERO, _ONE, _HALF, _MAX = F32(0.0), F32(1.0), F32(0.5), F32(255.0)
_LUMA_R, _LUMA_G, _LUMA_B = F32(0.299), F32(0.587), F32(0.114)
_THIRTEENTH, _FOUR = F32(1.0 / 13.0), F32(4.0)


# ---------------------------------------------------------------------------------------------------
# per-image ops on a float32 [C, S, S] buffer (the same float32 operations as augment_ops)


@njit(cache=True, fastmath=False)
def _clamp(v):
    return min(max(v, _ZERO), _MAX)


@njit(cache=True, fastmath=False)
def _fma(a, b, c):
    """float32 a*b + c rounded once, as torch's addcmul / lerp kernels (FMA): the float64 product of two
    float32 values is exact."""
    return F32(np.float64(a) * np.float64(b) + np.float64(c))


@njit(cache=True, fastmath=False)
def _lerp(start, end, weight):
    """torch.lerp on float32 scalars (both branches fused multiply-adds)."""
    diff = end - start
    if abs(weight) < _HALF:
        return _fma(weight, diff, start)
    return _fma(-diff, _ONE - weight, end)


@njit(cache=True, fastmath=False)
def _pixel_op(img, tmp, code, v):
    c, h, w = img.shape
    if code == _INVERT:
        for k in range(c):
            for i in range(h):
                for j in range(w):
                    img[k, i, j] = _MAX - img[k, i, j]
    elif code == _SOLARIZE:
        for k in range(c):
            for i in range(h):
                for j in range(w):
                    if img[k, i, j] >= v:
                        img[k, i, j] = _MAX - img[k, i, j]
    elif code == _POSTERIZE:
        step = F32(2.0 ** (8.0 - v))
        for k in range(c):
            for i in range(h):
                for j in range(w):
                    img[k, i, j] = F32(np.floor(img[k, i, j] / step)) * step
    elif code == _BRIGHTNESS:
        for k in range(c):
            for i in range(h):
                for j in range(w):
                    img[k, i, j] = _clamp(img[k, i, j] * v)
    elif code == _AUTOCONTRAST:
        for k in range(c):
            lo, hi = img[k, 0, 0], img[k, 0, 0]
            for i in range(h):
                for j in range(w):
                    lo, hi = min(lo, img[k, i, j]), max(hi, img[k, i, j])
            scale, shift = _ONE, _ZERO
            if hi > lo:
                scale = _MAX / max(hi - lo, F32(1e-6))
                shift = -lo * scale
            for i in range(h):
                for j in range(w):
                    img[k, i, j] = _clamp(_fma(img[k, i, j], scale, shift))
    elif code == _EQUALIZE:
        hist = np.empty(256, np.int64)
        lut = np.empty(256, np.float32)
        n = h * w
        for k in range(c):
            hist[:] = 0
            for i in range(h):
                for j in range(w):
                    hist[int(_clamp(img[k, i, j]))] += 1
            last = 255
            while hist[last] == 0:
                last -= 1
            step = (n - hist[last]) // 255
            before = 0
            for q in range(256):
                lut[q] = min((before + step // 2) // step, 255) if step > 0 else q
                before += hist[q]
            for i in range(h):
                for j in range(w):
                    img[k, i, j] = lut[int(_clamp(img[k, i, j]))]
    elif code == _COLOR:
        if c == 3:
            keep = _ONE - v
            for i in range(h):
                for j in range(w):
                    gray = img[0, i, j] * _LUMA_R + img[1, i, j] * _LUMA_G + img[2, i, j] * _LUMA_B
                    base = gray * keep
                    for k in range(3):
                        img[k, i, j] = _clamp(_fma(img[k, i, j], v, base))
    elif code == _CONTRAST:
        means = np.empty(c, np.float32)
        for k in range(c):
            total = 0.0
            for i in range(h):
                for j in range(w):
                    total += img[k, i, j]
            means[k] = F32(total / (h * w))
        mean = means[0] if c == 1 else means[0] * _LUMA_R + means[1] * _LUMA_G + means[2] * _LUMA_B
        base = mean * (_ONE - v)
        for k in range(c):
            for i in range(h):
                for j in range(w):
                    img[k, i, j] = _clamp(_fma(img[k, i, j], v, base))
    elif code == _SHARPNESS:
        if h < 3 or w < 3:
            return
        keep = _ONE - v
        for k in range(c):
            for i in range(h):
                for j in range(w):
                    tmp[k, i, j] = _clamp(img[k, i, j])
            for i in range(1, h - 1):
                for j in range(1, w - 1):
                    box = _ZERO
                    for di in range(-1, 2):
                        box += (img[k, i + di, j - 1] + img[k, i + di, j]) + img[k, i + di, j + 1]
                    smooth = (box + _FOUR * img[k, i, j]) * _THIRTEENTH
                    tmp[k, i, j] = _clamp(_fma(img[k, i, j], v, smooth * keep))
        img[:] = tmp


@njit(cache=True, fastmath=False)
def _affine(img, out, code, coef, xo, yo, fill):
    """grid_sample(img - fill, grid, zeros padding, align_corners=False) + fill, as augment_ops.affine."""
    c, h, w = img.shape
    half_w, half_h = F32(w / 2.0), F32(h / 2.0)
    for i in range(h):
        row_x = coef[1] * yo[i] + coef[2]
        row_y = coef[4] * yo[i] + coef[5]
        for j in range(w):
            ix = (coef[0] * xo[j] + row_x + _ONE) * half_w - _HALF
            iy = (coef[3] * xo[j] + row_y + _ONE) * half_h - _HALF
            if code == _NEAREST:
                # grid_sample rounds half to even
                x0, y0 = np.floor(ix), np.floor(iy)
                dx, dy = ix - x0, iy - y0
                xi = int(x0) + (1 if dx > _HALF or (dx == _HALF and int(x0) % 2 != 0) else 0)
                yi = int(y0) + (1 if dy > _HALF or (dy == _HALF and int(y0) % 2 != 0) else 0)
                inside = 0 <= xi < w and 0 <= yi < h
                for k in range(c):
                    out[k, i, j] = (img[k, yi, xi] - fill[k]) + fill[k] if inside else fill[k]
            else:
                fx, fy = np.floor(ix), np.floor(iy)
                x0, y0 = int(fx), int(fy)
                we, ws = ix - F32(fx), iy - F32(fy)
                ww, wn = _ONE - we, _ONE - ws
                for k in range(c):
                    acc = _ZERO
                    for yy, wy in ((y0, wn), (y0 + 1, ws)):
                        if 0 <= yy < h:
                            for xx, wx in ((x0, ww), (x0 + 1, we)):
                                if 0 <= xx < w:
                                    # grid_sample accumulates the 4 taps nw, ne, sw, se by FMA
                                    acc = _fma(img[k, yy, xx] - fill[k], wy * wx, acc)
                    out[k, i, j] = acc + fill[k]


@njit(parallel=True, cache=True, fastmath=False)
def _fused_kernel(src, pad, top, left, flip, ops, vals, coefs, xo, yo, fill, scale, shift,
                  erase_box, erase_slot, noise, out):
    """src uint8 [B, C, H, W] -> out float32 [B, C, S, S]; see fused_pad_crop_batch for the parameters."""
    b_n, c, h, w = src.shape
    s = out.shape[2]
    for b in prange(b_n):
        img = np.empty((c, s, s), np.float32)
        tmp = np.empty((c, s, s), np.float32)
        for k in range(c):
            for i in range(s):
                r = top[b] + i - pad
                for j in range(s):
                    col = left[b] + (s - 1 - j if flip[b] else j) - pad
                    img[k, i, j] = F32(src[b, k, r, col]) if 0 <= r < h and 0 <= col < w else _ZERO
        for slot in range(ops.shape[1]):
            code = ops[b, slot]
            if code < 0:
                continue
            if code == _NEAREST or code == _BILINEAR:
                _affine(img, tmp, code, coefs[b, slot], xo, yo, fill)
                img[:] = tmp
            else:
                _pixel_op(img, tmp, code, vals[b, slot])
        e_top, e_left, e_h, e_w = erase_box[b, 0], erase_box[b, 1], erase_box[b, 2], erase_box[b, 3]
        slot = erase_slot[b]
        for k in range(c):
            for i in range(s):
                for j in range(s):
                    y = _fma(img[k, i, j], scale[k], shift[k])
                    if slot >= 0 and e_top <= i < e_top + e_h and e_left <= j < e_left + e_w:
                        y = noise[slot, k, i, j] if noise.shape[0] > 0 else _ZERO
                    out[b, k, i, j] = y


@njit(cache=True, fastmath=False)
def _mix_weight(s, r, q, cut, lam, box):
    """Weight of a mixed sample's own pixel (r, q): its Mixup lam, or CutMix's 0 inside the box, 1 outside."""
    if not cut[s]:
        return lam[s]
    inside = box[s, 0] <= r < box[s, 0] + box[s, 2] and box[s, 1] <= q < box[s, 1] + box[s, 3]
    return _ZERO if inside else _ONE


@njit(parallel=True, cache=True, fastmath=False)
def _mix_kernel(x, slot_of, cut, lam, box):
    """In place Mixup / CutMix of x [B, C, S, S] with the mirrored batch, as augment.mixup_cutmix_:
    sample i (slot_of[i] >= 0) becomes lerp(x[B-1-i], x[i], weight); weight = lam (Mixup) or 0 inside
    the CutMix box and 1 outside. Pairs (i, B-1-i) are one iteration, so both read the old values."""
    b_n, c, h, w = x.shape
    for p in prange((b_n + 1) // 2):
        i, j = p, b_n - 1 - p
        si, sj = slot_of[i], slot_of[j]
        if si < 0 and (sj < 0 or j == i):
            continue
        for k in range(c):
            for r in range(h):
                for q in range(w):
                    own, other = x[i, k, r, q], x[j, k, r, q]
                    if si >= 0:
                        wi = _mix_weight(si, r, q, cut, lam, box)
                        x[i, k, r, q] = _lerp(other, own, wi)
                    if sj >= 0 and j != i:
                        wj = _mix_weight(sj, r, q, cut, lam, box)
                        x[j, k, r, q] = _lerp(own, other, wj)


# ---------------------------------------------------------------------------------------------------
# dispatch


def unsupported_reason(params, images: torch.Tensor) -> str | None:
    """Why the fused executor cannot run `params` (an AugmentParams) on `images`; None if it can."""
    if images.device.type != "cpu":
        return f"it runs on the CPU only (the batch is on {images.device})"
    if params.crop != "pad":
        return f"crop={params.crop!r} (RandomResizedCrop) is not fused; only crop='pad'"
    if params.color_jitter > 0:
        return "color jitter is not fused"
    if params.rand_magnitude is not None:
        return "RandAugment is not fused (only AutoAugment)"
    return None


def resolve_executor(executor: str | None) -> str:
    """The executor argument, else $FASTVIT_AUGMENT, else 'auto'; validated."""
    import os

    name = executor if executor is not None else (os.environ.get("FASTVIT_AUGMENT", "auto").strip().lower() or "auto")
    if name not in EXECUTORS:
        raise UserError(f"augmentation executor {name!r} is invalid (argument or FASTVIT_AUGMENT); "
                        f"choose one of: {', '.join(EXECUTORS)}")
    return name


def fused_pad_crop_batch(x: torch.Tensor, params, *, img_size: int, normalize,
                         generator: torch.Generator | None) -> torch.Tensor:
    """The transform up to (not including) Mixup / CutMix, for a uint8 CPU batch already at `fit_to_size`.

    Draws exactly what the torch path draws, in its order: crop offsets and flips, the AutoAugment
    slots, the erasing boxes (and "pixel" noise). Returns float32 [B, C, img_size, img_size], normalized.
    """
    from . import augment as A  # augment imports this module lazily

    x = x.contiguous()
    b, c, h, w = x.shape
    s = img_size
    top, left, flip = A.random_crop_params(b, h, w, s, padding=params.padding, flip_p=params.flip_p,
                                           generator=generator)
    if flip is None:
        flip = torch.zeros(b, dtype=torch.bool)
    ops = torch.full((b, 2), -1, dtype=torch.int32)
    vals = torch.zeros(b, 2)
    coefs = torch.zeros(b, 2, 6)
    _, xo, yo = P.O.affine_grid_coefficients(torch.eye(2, 3).view(1, 2, 3), s, s, mode="bilinear")
    if params.policy:
        for slot, (op, value) in enumerate(P.autoaugment_params(b, params.policy, generator=generator)):
            ops[:, slot] = torch.where(op >= 0, _AA_CODES[op.clamp(min=0)], -1)
            vals[:, slot] = value
            coefs[:, slot] = P.geometric_coefficients(op, value, s, s, P.AUTOAUGMENT_OPS, P._AA_MODES)
    erase_box = torch.zeros(b, 4, dtype=torch.int64)
    erase_slot = torch.full((b,), -1, dtype=torch.int64)
    noise = torch.zeros(0, c, s, s)
    if params.erase_p > 0:
        idx, e_top, e_left, e_h, e_w, e_noise = A.random_erasing_params(
            (b, c, s, s), p=params.erase_p, max_area=params.erase_max_area, min_aspect=params.erase_min_aspect,
            mode=params.erase_mode, generator=generator)
        erase_box[idx] = torch.stack([e_top, e_left, e_h, e_w], dim=1)
        erase_slot[idx] = torch.arange(idx.numel())
        if e_noise is not None:
            noise = e_noise.contiguous()
    scale, shift = normalize.coefficients(c, "cpu")
    fill = torch.full((c,), 128.0)
    out = torch.empty(b, c, s, s)
    _run(_fused_kernel, x.numpy(), params.padding, top.numpy(), left.numpy(), flip.numpy(), ops.numpy(),
         vals.numpy(), coefs.numpy(), xo.numpy(), yo.numpy(), fill.numpy(), scale.reshape(c).numpy(),
         shift.reshape(c).numpy(), erase_box.numpy(), erase_slot.numpy(), noise.numpy(), out.numpy())
    return out


def fused_mixup_cutmix_(x: torch.Tensor, labels: torch.Tensor, params, *, num_classes: int,
                        generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
    """augment.mixup_cutmix_ (same draws, same float32 arithmetic) with the blend done by one numba pass."""
    from . import augment as A

    targets, draws = A.mixup_cutmix_params(
        x.shape, labels, num_classes=num_classes, mixup_alpha=params.mixup_alpha, cutmix_alpha=params.cutmix_alpha,
        prob=params.mix_prob, switch_prob=params.switch_prob, label_smoothing=params.label_smoothing,
        generator=generator, device=x.device)
    if draws is None:
        return x, targets
    slot_of = torch.full((x.shape[0],), -1, dtype=torch.int64)
    slot_of[draws.idx] = torch.arange(draws.idx.numel())
    box = torch.stack([draws.top, draws.left, draws.height, draws.width], dim=1)
    _run(_mix_kernel, x.numpy(), slot_of.numpy(), draws.cut.numpy(), draws.lam.float().numpy(), box.numpy())
    return x, targets


def fused_train_batch(images: torch.Tensor, labels: torch.Tensor, params, *, img_size: int, normalize,
                      num_classes: int, generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
    """TrainTransform.__call__ for a supported CPU batch already at `fit_to_size`: (images, targets)."""
    x = fused_pad_crop_batch(images, params, img_size=img_size, normalize=normalize, generator=generator)
    if not params.soft_targets:
        return x, labels
    return fused_mixup_cutmix_(x, labels, params, num_classes=num_classes, generator=generator)


def _run(kernel, *args) -> None:
    """kernel(*args) on min(torch threads, numba's pool) threads: follows torch.set_num_threads."""
    threads = max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS))
    previous = numba.get_num_threads()
    numba.set_num_threads(threads)
    try:
        kernel(*args)
    finally:
        numba.set_num_threads(previous)
