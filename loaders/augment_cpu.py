"""Fused CPU executor for the pad-crop train transform (paper A's ``gani22-finetune``, and ``basic``).

On the CPU the batched torch path of ``augment.TrainTransform`` spends its time in per-op dispatch
(~900 top-level aten calls per batch of 256: index_select / index_copy / gather per op group). Here
one numba kernel runs, per image and in one pass over ``prange(B)``: pad + random crop + flip ->
float32 -> AutoAugment op slot 1 -> slot 2 -> normalization -> RandomErasing, and writes the float32
output; a second kernel, over the mirrored pairs (i, B-1-i), does Mixup / CutMix and the soft targets.

The random draws stay in torch, with the caller's generator, as the same calls in the same order and
shapes as the torch path (``random_crop_params``, ``autoaugment_params``, ``random_erasing_params``,
``mixup_cutmix_params``), so a seed gives the same batch on both paths. What is computed from the draws
(table lookups, boxes, lambda, targets, the affine sampling grid) and the ops themselves follow the
torch path's float32 operations one by one, including where torch's kernels use a fused multiply-add
(addcmul, lerp, bilinear grid_sample: ``_fma``); exp and cos/sin are taken from torch. Nearest-neighbour
indices therefore agree exactly. Remaining differences are float32 summation order (the mean of
``contrast``, a few ulp), which could flip a later floor (equalize, posterize) or threshold (solarize)
on a rare pixel.

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
from numba.extending import intrinsic

from fastvit.errors import UserError

from . import augment_policies as P

EXECUTORS = ("auto", "torch", "fused")

# kernel op codes (independent of the order of the policy op lists)
_INVERT, _AUTOCONTRAST, _EQUALIZE, _SOLARIZE, _POSTERIZE = 0, 1, 2, 3, 4
_COLOR, _CONTRAST, _BRIGHTNESS, _SHARPNESS = 5, 6, 7, 8
# geometric ops with AutoAugment's interpolation: shears bilinear, translations and rotation nearest
_SHEAR_X, _SHEAR_Y, _TRANSLATE_X, _TRANSLATE_Y, _ROTATE = 9, 10, 11, 12, 13
_CODES = {"invert": _INVERT, "autocontrast": _AUTOCONTRAST, "equalize": _EQUALIZE, "solarize": _SOLARIZE,
          "posterize": _POSTERIZE, "color": _COLOR, "contrast": _CONTRAST, "brightness": _BRIGHTNESS,
          "sharpness": _SHARPNESS, "shear_x": _SHEAR_X, "shear_y": _SHEAR_Y, "translate_x": _TRANSLATE_X,
          "translate_y": _TRANSLATE_Y, "rotate": _ROTATE}
assert all(P._AA_MODES[n] == ("bilinear" if n.startswith("shear") else "nearest") for n in P.GEOMETRIC_OPS)
# AUTOAUGMENT_OPS index -> kernel op code
_AA_CODES = np.array([_CODES[n] for n in P.AUTOAUGMENT_OPS], dtype=np.int64)

F32 = np.float32
_ZERO, _ONE, _HALF, _MAX = F32(0.0), F32(1.0), F32(0.5), F32(255.0)
_LUMA_R, _LUMA_G, _LUMA_B = F32(0.299), F32(0.587), F32(0.114)
_THIRTEENTH, _FOUR = F32(1.0 / 13.0), F32(4.0)


# ---------------------------------------------------------------------------------------------------
# per-image ops on a float32 [C, S, S] buffer (the same float32 operations as augment_ops)


@njit(cache=True, fastmath=False)
def _clamp(v):
    return min(max(v, _ZERO), _MAX)


@intrinsic
def _fma(typingctx, a, b, c):
    """float32 a*b + c rounded once (llvm.fma), as torch's addcmul / lerp / grid_sample kernels compute."""
    f32 = numba.types.float32
    if not (a == f32 and b == f32 and c == f32):
        return None  # float32 only: a float64 argument would change the rounding

    def codegen(context, builder, signature, args):
        return builder.fma(*args)

    return f32(f32, f32, f32), codegen


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
def _floor_int(v):
    """floor of a float32 as an int without a libm call (|v| is a pixel coordinate: no overflow)."""
    n = int(v)
    return n - 1 if v < n else n


@njit(cache=True, fastmath=False)
def _round_half_even(v):
    n = _floor_int(v)
    d = v - F32(n)
    if d > _HALF or (d == _HALF and (n & 1) != 0):
        n += 1
    return n


@njit(cache=True, fastmath=False)
def _geometric_coefficients(coef, code, v, cos, sin, s):
    """coef[0:6] = augment_ops.affine_grid_coefficients of the op's PIL AFFINE matrix on an s x s image, by
    the same float32 operations as GEOMETRIC_OPS + affine (cos, sin = torch's cos / sin of the rotation
    in radians), so that nearest-neighbour indices agree exactly."""
    size = F32(s)
    zero, one = _ZERO, _ONE
    a, b, c, d, e, f = one, zero, zero, zero, one, zero
    if code == _SHEAR_X:
        b = v
    elif code == _SHEAR_Y:
        d = v
    elif code == _TRANSLATE_X:
        c = v * size
    elif code == _TRANSLATE_Y:
        f = v * size
    else:  # rotate about the centre
        centre = F32(s / 2.0)
        a, b, d, e = cos, sin, -sin, cos
        c = (centre - cos * centre) - sin * centre
        f = (centre + sin * centre) - cos * centre
    if code != _SHEAR_X and code != _SHEAR_Y:  # affine's nearest-mode nudge
        c, f = c + F32(1e-4), f + F32(1e-4)
    two = F32(2.0)
    coef[0] = a
    coef[1] = b * size / size
    coef[2] = ((a + b * size / size) + two * c / size) - one
    coef[3] = d * size / size
    coef[4] = e
    coef[5] = ((d * size / size + e) + two * f / size) - one


@njit(cache=True, fastmath=False)
def _affine(img, out, shifted, nearest, coef, xo, yo, fill):
    """grid_sample(img - fill, grid, zeros padding, align_corners=False) + fill, as augment_ops.affine,
    with the grid gx = coef0*xo + (coef1*yo + coef2), gy likewise, unnormalized as grid_sample does.
    shifted: scratch of img's shape (receives img - fill)."""
    c, h, w = img.shape
    for k in range(c):
        for i in range(h):
            for j in range(w):
                shifted[k, i, j] = img[k, i, j] - fill[k]
    half_w, half_h = F32(w / 2.0), F32(h / 2.0)
    a0, a1, a2, a3, a4, a5 = coef[0], coef[1], coef[2], coef[3], coef[4], coef[5]
    col_x, col_y = np.empty(w, np.float32), np.empty(w, np.float32)
    for j in range(w):
        col_x[j], col_y[j] = a0 * xo[j], a3 * xo[j]
    for i in range(h):
        row_x = a1 * yo[i] + a2
        row_y = a4 * yo[i] + a5
        if nearest:
            for j in range(w):
                xi = _round_half_even((col_x[j] + row_x + _ONE) * half_w - _HALF)
                yi = _round_half_even((col_y[j] + row_y + _ONE) * half_h - _HALF)
                if 0 <= xi < w and 0 <= yi < h:
                    for k in range(c):
                        out[k, i, j] = shifted[k, yi, xi] + fill[k]
                else:
                    for k in range(c):
                        out[k, i, j] = fill[k]
            continue
        for j in range(w):
            ix = (col_x[j] + row_x + _ONE) * half_w - _HALF
            iy = (col_y[j] + row_y + _ONE) * half_h - _HALF
            x0, y0 = _floor_int(ix), _floor_int(iy)
            we, ws = ix - F32(x0), iy - F32(y0)
            ww, wn = _ONE - we, _ONE - ws
            w_nw, w_ne, w_sw, w_se = wn * ww, wn * we, ws * ww, ws * we
            # grid_sample accumulates the taps nw, ne, sw, se by FMA; taps outside the image add 0
            if 0 <= x0 and x0 + 1 < w and 0 <= y0 and y0 + 1 < h:
                for k in range(c):
                    acc = _fma(shifted[k, y0, x0 + 1], w_ne, shifted[k, y0, x0] * w_nw)
                    acc = _fma(shifted[k, y0 + 1, x0], w_sw, acc)
                    out[k, i, j] = _fma(shifted[k, y0 + 1, x0 + 1], w_se, acc) + fill[k]
                continue
            in_w, in_e = 0 <= x0 < w, 0 <= x0 + 1 < w
            in_n, in_s = 0 <= y0 < h, 0 <= y0 + 1 < h
            for k in range(c):
                acc = _ZERO
                if in_n and in_w:
                    acc = _fma(shifted[k, y0, x0], w_nw, acc)
                if in_n and in_e:
                    acc = _fma(shifted[k, y0, x0 + 1], w_ne, acc)
                if in_s and in_w:
                    acc = _fma(shifted[k, y0 + 1, x0], w_sw, acc)
                if in_s and in_e:
                    acc = _fma(shifted[k, y0 + 1, x0 + 1], w_se, acc)
                out[k, i, j] = acc + fill[k]


@njit(parallel=True, cache=True, fastmath=False)
def _fused_kernel(src, pad, top, left, flip, ops, vals, cos, sin, codes, xo, yo, fill, scale, shift,
                  erase_idx, erase_top, erase_left, erase_h, erase_w, noise, out):
    """src uint8 [B, C, H, W] -> out float32 [B, C, S, S]; see apply_pad_crop for the parameters."""
    b_n, c, h, w = src.shape
    s = out.shape[2]
    erase_slot = _slots(erase_idx, b_n)
    for b in prange(b_n):
        img = np.zeros((c, s, s), np.float32)
        tmp = np.empty((c, s, s), np.float32)
        scratch = np.empty((c, s, s), np.float32)
        coef = np.empty(6, np.float32)
        # crop column j reads source column x0 + j (x0 - j when flipped); only the in-image span is copied
        if flip[b]:
            x0 = left[b] - pad + s - 1
            j_lo, j_hi = max(0, x0 - (w - 1)), min(s, x0 + 1)
        else:
            x0 = left[b] - pad
            j_lo, j_hi = max(0, -x0), min(s, w - x0)
        for k in range(c):
            for i in range(max(0, pad - top[b]), min(s, h + pad - top[b])):
                r = top[b] + i - pad
                if flip[b]:
                    for j in range(j_lo, j_hi):
                        img[k, i, j] = F32(src[b, k, r, x0 - j])
                else:
                    for j in range(j_lo, j_hi):
                        img[k, i, j] = F32(src[b, k, r, x0 + j])
        for slot in range(ops.shape[0]):
            if ops[slot, b] < 0:
                continue
            code = codes[ops[slot, b]]
            if code >= _SHEAR_X:
                _geometric_coefficients(coef, code, vals[slot, b], cos[slot, b], sin[slot, b], s)
                _affine(img, tmp, scratch, code >= _TRANSLATE_X, coef, xo, yo, fill)
                img[:] = tmp
            else:
                _pixel_op(img, tmp, code, vals[slot, b])
        # flat rows and unsigned indices: no negative-index wraparound, so the loop vectorizes
        flat_in, flat_out = img.reshape(c, s * s), out[b].reshape(c, s * s)
        for k in range(c):
            sc, sh, row_in, row_out = scale[k], shift[k], flat_in[k], flat_out[k]
            for q in range(np.uint64(s * s)):
                row_out[q] = _fma(row_in[q], sc, sh)
        slot = erase_slot[b]
        if slot >= 0:
            e_top, e_left, e_h, e_w = erase_top[slot], erase_left[slot], erase_h[slot], erase_w[slot]
            for k in range(c):
                for i in range(e_top, e_top + e_h):
                    for j in range(e_left, e_left + e_w):
                        out[b, k, i, j] = noise[slot, k, i, j] if noise.shape[0] > 0 else _ZERO


@njit(cache=True, fastmath=False)
def _slots(idx, n):
    """[n] int64: k where idx[k] == i, else -1."""
    slot = np.full(n, -1, np.int64)
    for k in range(idx.shape[0]):
        slot[idx[k]] = k
    return slot


@njit(cache=True, fastmath=False)
def _blend(out, start, end, s, cut, lam, box_top, box_left, box_h, box_w):
    """out = lerp(start, end, weight) for mixed sample slot s: CutMix's weight 0 inside the box and 1
    outside makes exact copies; Mixup's weight is one lam per sample."""
    c, h, w = out.shape
    if cut[s]:
        top, left, bottom, right = box_top[s], box_left[s], box_top[s] + box_h[s], box_left[s] + box_w[s]
        for k in range(c):
            for r in range(h):
                for q in range(w):
                    out[k, r, q] = start[k, r, q] if top <= r < bottom and left <= q < right else end[k, r, q]
        return
    wgt = lam[s]
    low, rest = abs(wgt) < _HALF, _ONE - wgt
    for k in range(c):
        for r in range(h):
            for q in range(w):
                diff = end[k, r, q] - start[k, r, q]
                out[k, r, q] = _fma(wgt, diff, start[k, r, q]) if low else _fma(-diff, rest, end[k, r, q])


@njit(parallel=True, cache=True, fastmath=False)
def _mix_kernel(x, labels, on, off, prob, switch, both, has_mix, has_cut, u, lam_mix, lam_cut, cy, cx, targets):
    """In place Mixup / CutMix of x [B, C, S, S] with the mirrored batch, and the soft targets [B, K],
    from the raw draws of augment.mixup_cutmix_params (u [2, B], Beta draws, box centres cy, cx) with
    its float32 arithmetic: mixed sample i becomes torch.lerp(x[B-1-i], x[i], weight), weight = its
    Mixup lam, or CutMix's 0 inside the box and 1 outside (lam corrected to the kept area)."""
    b_n, _, h, w = x.shape
    mixed = np.empty(b_n, np.bool_)
    use_cut = np.empty(b_n, np.bool_)
    top, left = np.zeros(b_n, np.int64), np.zeros(b_n, np.int64)
    box_h, box_w = np.zeros(b_n, np.int64), np.zeros(b_n, np.int64)
    lam = np.empty(b_n, np.float32)
    for i in range(b_n):
        mixed[i] = u[0, i] < prob
        use_cut[i] = u[1, i] < switch if both else has_cut
        lam[i] = lam_mix[i] if has_mix else lam_cut[i]
        if has_cut:
            side = np.sqrt(_ONE - lam_cut[i])
            half_h, half_w = int(side * F32(h)) // 2, int(side * F32(w)) // 2
            y0, y1 = min(max(cy[i] - half_h, 0), h), min(max(cy[i] + half_h, 0), h)
            x0, x1 = min(max(cx[i] - half_w, 0), w), min(max(cx[i] + half_w, 0), w)
            top[i], left[i], box_h[i], box_w[i] = y0, x0, y1 - y0, x1 - x0
            if use_cut[i]:
                lam[i] = _ONE - F32((y1 - y0) * (x1 - x0)) / F32(h * w)
        if not mixed[i]:
            lam[i] = _ONE
    for i in range(b_n):
        keep, give = lam[i], _ONE - lam[i]
        for k in range(targets.shape[1]):
            mine = on if labels[i] == k else off
            theirs = on if labels[b_n - 1 - i] == k else off
            targets[i, k] = keep * mine + give * theirs
    weight = lam_mix if has_mix else np.zeros(b_n, np.float32)
    for p in prange((b_n + 1) // 2):
        i, j = p, b_n - 1 - p
        if j == i or not (mixed[i] or mixed[j]):
            continue  # the middle sample of an odd batch is mixed with itself: unchanged
        own, other = x[i].copy(), x[j].copy()
        if mixed[i]:
            _blend(x[i], other, own, i, use_cut, weight, top, left, box_h, box_w)
        if mixed[j]:
            _blend(x[j], own, other, j, use_cut, weight, top, left, box_h, box_w)


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

    b, c, h, w = x.shape
    top, left, flip = A.random_crop_params(b, h, w, img_size, padding=params.padding, flip_p=params.flip_p,
                                           generator=generator)
    slots = _autoaugment_params(b, params.policy, generator) if params.policy else []
    erase = None
    if params.erase_p > 0:
        erase = _random_erasing_params((b, c, img_size, img_size), params, generator)
    scale, shift = normalize.coefficients(c, "cpu")
    return apply_pad_crop(x, size=img_size, padding=params.padding, top=top, left=left, flip=flip, slots=slots,
                          erase=erase, scale=scale.view(c), shift=shift.view(c))


def _autoaugment_params(b: int, policy: str, generator) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """augment_policies.autoaugment_params: the same draws (`autoaugment_draws`), the table lookups in numba."""
    ops, probs, mags, signed, enhance = P.autoaugment_tables(policy)
    sub, us = P.autoaugment_draws(b, ops.shape[0], generator=generator)
    slots = []
    for slot, u in enumerate(us):
        op, value = torch.empty(b, dtype=torch.long), torch.empty(b)
        _autoaugment_slot(sub.numpy(), slot, u.numpy(), ops.numpy(), probs.numpy(), mags.numpy(), signed.numpy(),
                          enhance.numpy(), op.numpy(), value.numpy())
        slots.append((op, value))
    return slots


@njit(cache=True, fastmath=False)
def _autoaugment_slot(sub, slot, u, ops, probs, mags, signed, enhance, op_out, value_out):
    for i in range(sub.shape[0]):
        op, mag = ops[sub[i], slot], mags[sub[i], slot]
        value = mag
        if signed[op] or enhance[op]:
            value = mag * (F32(-1.0) if u[1, i] < _HALF else _ONE)
        if enhance[op]:
            value = _ONE + value
        op_out[i] = op if u[0, i] < probs[sub[i], slot] else -1
        value_out[i] = value


def _random_erasing_params(shape, params, generator) -> tuple[torch.Tensor, ...]:
    """augment.random_erasing_params: the same draws (`random_erasing_draws`), the box arithmetic in numba."""
    from . import augment as A

    b, c, height, width = shape
    lo, hi = A.ERASE_MIN_AREA, params.erase_max_area
    area_u, aspect, u = A.random_erasing_draws(b, min_aspect=params.erase_min_aspect, generator=generator)
    box = torch.empty(4, b, dtype=torch.long)
    n = _erasing_boxes(area_u.numpy(), aspect.numpy(), u.numpy(), F32(hi - lo), F32(lo), F32(params.erase_p),
                       height, width, box.numpy())
    idx = torch.from_numpy(np.flatnonzero(box[2].numpy()))
    noise = None
    if params.erase_mode == "pixel" and n:
        noise = torch.randn((n, c, height, width), generator=generator)
    return idx, box[0][idx], box[1][idx], box[2][idx], box[3][idx], noise


@njit(cache=True, fastmath=False)
def _erasing_boxes(area_u, aspect, u, span, low, p, height, width, box):
    """box [4, b] = top, left, h, w (h = w = 0: not erased) with random_erasing_params' float32 arithmetic;
    returns the number of erased samples."""
    n = 0
    pixels = F32(height * width)
    for i in range(area_u.shape[0]):
        h = w = 0
        for t in range(area_u.shape[1]):
            area = (area_u[i, t] * span + low) * pixels
            th = _round_half_even(np.sqrt(area * aspect[i, t]))
            tw = _round_half_even(np.sqrt(area / aspect[i, t]))
            if 0 < th < height and 0 < tw < width:
                h, w = th, tw
                break
        if not u[0, i] < p:
            h = w = 0
        n += h > 0
        box[2, i], box[3, i] = h, w
        box[0, i] = min(int(u[1, i] * F32(height - h + 1)), height - h)
        box[1, i] = min(int(u[2, i] * F32(width - w + 1)), width - w)
    return n


_GRID_CACHE: dict = {}


def apply_pad_crop(x: torch.Tensor, *, size: int, padding: int, top: torch.Tensor, left: torch.Tensor,
                   flip: torch.Tensor | None, slots, erase, scale: torch.Tensor, shift: torch.Tensor,
                   fill: float = 128.0) -> torch.Tensor:
    """One kernel pass with given draws: uint8 x [B, C, H, W] (CPU) -> float32 [B, C, size, size].

    Per image: crop (top[i], left[i]) of x zero-padded by `padding` (mirrored where flip[i]), then each
    AutoAugment slot (op [B] into AUTOAUGMENT_OPS, -1 = none; value [B], as `autoaugment_params`
    gives) with geometric fill `fill`, then x * scale[c] + shift[c], then erasing (None, or
    `random_erasing_params`' (idx, top, left, h, w, noise)).
    """
    x = x.contiguous()
    b, c = x.shape[:2]
    s = size
    if flip is None:
        flip = torch.zeros(b, dtype=torch.bool)
    ops = torch.stack([op.long() for op, _ in slots]) if slots else torch.zeros(0, b, dtype=torch.long)
    vals = torch.stack([v.float() for _, v in slots]) if slots else torch.zeros(0, b)
    # rotate_matrix's cos / sin, computed by torch on the same [B] tensors as the torch path
    radians = [torch.deg2rad(-v) for v in vals]
    cos = torch.stack([torch.cos(r) for r in radians]) if slots else vals
    sin = torch.stack([torch.sin(r) for r in radians]) if slots else vals
    if s not in _GRID_CACHE:
        _GRID_CACHE[s] = P.O.affine_grid_coefficients(torch.eye(2, 3).view(1, 2, 3), s, s, mode="bilinear")[1:]
    xo, yo = _GRID_CACHE[s]
    none = torch.zeros(0, dtype=torch.int64)
    idx, e_top, e_left, e_h, e_w, noise = erase if erase is not None else (none,) * 5 + (None,)
    noise = torch.zeros(0, c, s, s) if noise is None else noise.float().contiguous()
    out = torch.empty(b, c, s, s)
    _run(_fused_kernel, x.numpy(), padding, top.long().numpy(), left.long().numpy(), flip.bool().numpy(),
         ops.numpy(), vals.numpy(), cos.numpy(), sin.numpy(), _AA_CODES, xo.numpy(), yo.numpy(),
         torch.full((c,), float(fill)).numpy(),
         scale.float().contiguous().numpy(), shift.float().contiguous().numpy(), idx.long().numpy(),
         e_top.long().numpy(), e_left.long().numpy(), e_h.long().numpy(), e_w.long().numpy(), noise.numpy(),
         out.numpy())
    return out


def fused_mixup_cutmix_(x: torch.Tensor, labels: torch.Tensor, params, *, num_classes: int,
                        generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
    """augment.mixup_cutmix_ on a CPU batch: the same draws from the generator (order and shapes of
    `mixup_cutmix_params`), the rest (boxes, lam, targets, blend) in one numba pass."""
    from . import augment as A

    p, b = params, x.shape[0]
    if p.mixup_alpha <= 0 and p.cutmix_alpha <= 0:
        return x, A.smooth_one_hot(labels, num_classes, p.label_smoothing)
    u = torch.rand(2, b, generator=generator)
    empty = torch.zeros(0)
    lam_mix = A.sample_beta(p.mixup_alpha, b, generator=generator) if p.mixup_alpha > 0 else empty
    lam_cut = A.sample_beta(p.cutmix_alpha, b, generator=generator) if p.cutmix_alpha > 0 else empty
    none = torch.zeros(0, dtype=torch.long)
    height, width = x.shape[2:]
    cy = torch.randint(0, height, (b,), generator=generator) if p.cutmix_alpha > 0 else none
    cx = torch.randint(0, width, (b,), generator=generator) if p.cutmix_alpha > 0 else none
    off = p.label_smoothing / num_classes  # as smooth_one_hot: float32 of the float64 values
    targets = torch.empty(b, num_classes)
    _run(_mix_kernel, x.numpy(), labels.long().contiguous().numpy(), F32(1.0 - p.label_smoothing + off), F32(off),
         F32(p.mix_prob), F32(p.switch_prob), p.mixup_alpha > 0 and p.cutmix_alpha > 0, p.mixup_alpha > 0,
         p.cutmix_alpha > 0, u.numpy(), lam_mix.float().numpy(), lam_cut.float().numpy(), cy.numpy(), cx.numpy(),
         targets.numpy())
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
