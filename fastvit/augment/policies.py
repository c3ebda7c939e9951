"""AutoAugment (CIFAR10, SVHN, ImageNet policies) and RandAugment, batched with per-sample choices.

Each sample draws its own sub-policy / ops, magnitudes and signs from the generator; then each op slot
runs as fixed-shape batched ops with per-sample parameters (`apply_op_slot`): no host sync, no
data-dependent shapes. All geometric ops of a slot that share an interpolation mode run as one
`grid_sample` with per-sample affine matrices.

Ops, magnitudes and fills follow the implementations the two papers trained with:
- AutoAugment: the sub-policy tables of Cubuk et al. (2019) with the 10-bin magnitude ranges of the
  widely used PIL implementation paper A's code relies on: shear 0..0.3 (bicubic), translate 0..150/331
  of the image side and rotate 0..30 degrees (nearest), enhance factors 1 +- 0..0.9, posterize 8..4
  bits, solarize threshold 256..0; fill grey 128. Shear, translate and the enhance factors get a random
  sign; rotations do not: that code always rotates counter-clockwise (PIL's rotate(+degrees)).
- RandAugment: timm's ``rand-m9-mstd0.5-inc1`` (paper B via Swin): 2 ops drawn uniformly with
  replacement from the 15 "increasing" ops, each applied with probability 0.5, magnitude
  N(9, 0.5) clipped to [0, 10] drawn per sample and op; fill = the dataset mean colour; the geometric
  ops resample with the crop's interpolation, as timm's create_transform passes it on (bicubic in
  paper B's code).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from fastvit.errors import UserError

from . import ops as O

# ---------------------------------------------------------------------------------------------------
# op registry: geometric ops give an output->input matrix from (value [n], h, w)

GEOMETRIC_OPS = {
    "shear_x": lambda v, h, w: O.shear_x_matrix(v),
    "shear_y": lambda v, h, w: O.shear_y_matrix(v),
    # value = fraction of the image side
    "translate_x": lambda v, h, w: O.translate_matrix(v * w, 0.0),
    "translate_y": lambda v, h, w: O.translate_matrix(0.0, v * h),
    "rotate": lambda v, h, w: O.rotate_matrix(v, h, w),
}
# ImageEnhance blends: factor * x + (1 - factor) * degenerate; "color" is also ColorJitter's saturation
BLEND_OPS = ("brightness", "contrast", "color", "sharpness")
PIXEL_OPS = ("invert", "autocontrast", "equalize", "solarize", "solarize_add", "posterize", "hue")

_IDENTITY = torch.eye(2, 3)


_SOLARIZE_OPS = ("solarize", "invert", "solarize_add")


def _level_maps(x: torch.Tensor, picked: dict, value: torch.Tensor, rows) -> torch.Tensor:
    """The blends, solarize / invert / solarize_add and autocontrast of one slot as one fused pass:
    out = clamp(x >= t ? a2 * x + b2 : a1 * x + b1 + c * D, 0, 255) with per-sample (per-channel for
    autocontrast) coefficients and degenerate image D (luma for color, SMOOTH for sharpness). A sample
    that picked none of them gets a1 = 1, b1 = c = 0, t = +inf: exactly x."""
    b = x.shape[0]
    col = lambda v: v.view(b, 1, 1, 1)
    a1, b1 = torch.ones_like(x[:, :, :1, :1]), torch.zeros_like(x[:, :, :1, :1])  # (b, C, 1, 1)
    for n in BLEND_OPS:
        if n in picked:
            a1 = torch.where(rows(picked[n]), col(value), a1)
    if "contrast" in picked:  # blend with the mean luma: a constant per sample
        b1 = torch.where(rows(picked["contrast"]), (1.0 - col(value)) * O.mean_luma(x), b1)
    if "autocontrast" in picked:
        scale, shift = O.autocontrast_coefficients(x)
        a1 = torch.where(rows(picked["autocontrast"]), scale, a1)
        b1 = torch.where(rows(picked["autocontrast"]), shift, b1)
    if "solarize_add" in picked:
        b1 = torch.where(rows(picked["solarize_add"]), col(value), b1)
    lower = b1
    images = [n for n in ("color", "sharpness") if n in picked]
    if images:
        degenerate = O.rgb_to_gray(x) if "color" in picked else O.smooth(x)
        if len(images) == 2:
            degenerate = torch.where(rows(picked["color"]), degenerate, O.smooth(x))
        hit = picked[images[0]] | picked[images[-1]]
        lower = torch.addcmul(b1, degenerate, torch.where(col(hit), 1.0 - col(value), 0.0))
    out = torch.addcmul(lower, x, a1)
    if any(n in picked for n in _SOLARIZE_OPS):
        threshold = torch.full_like(value, math.inf)
        if "solarize" in picked:
            threshold = torch.where(picked["solarize"], value, threshold)
        if "invert" in picked:
            threshold = torch.where(picked["invert"], -math.inf, threshold)
        if "solarize_add" in picked:  # below 128: + value (b1 above); from 128 on: unchanged
            threshold = torch.where(picked["solarize_add"], 128.0, threshold)
            upper_scale = torch.where(col(picked["solarize_add"]), 1.0, -1.0)
            upper = torch.addcmul(torch.where(col(picked["solarize_add"]), 0.0, 255.0), x, upper_scale)
        else:
            upper = 255.0 - x
        out = torch.where(x >= col(threshold), upper, out)
    return out.clamp_(0, 255)


def apply_op_slot(x: torch.Tensor, op: torch.Tensor, value: torch.Tensor, names: list[str], *,
                  fill=128.0, modes: dict[str, str] | None = None) -> torch.Tensor:
    """Sample i through op ``names[op[i]]`` with parameter value[i] (op -1: none); a new batch.

    No host sync and fixed shapes: every kind of op runs once on the whole batch with per-sample
    parameters at which it is the identity for the samples that did not pick it (a blend factor 1, a
    solarize threshold +inf, an autocontrast scale 1), or is selected per sample with torch.where
    (geometric ops, hue, and posterize / equalize as one per-plane table lookup of the floored levels;
    posterize bits are whole numbers, as both policies draw them), so each sample gets exactly its own op. Geometric ops
    share one per-sample matrix and grid, one grid_sample per interpolation mode; the blends, solarize,
    invert and autocontrast as one fused pass of per-sample level maps (`_level_maps`).
    modes: interpolation per geometric op name ("nearest" | "bilinear" | "bicubic").
    names: from GEOMETRIC_OPS, BLEND_OPS and PIXEL_OPS ("hue": torchvision's adjust_hue, value in turns).
    """
    unknown = set(names) - set(GEOMETRIC_OPS) - set(BLEND_OPS) - set(PIXEL_OPS)
    if unknown:
        raise ValueError(f"apply_op_slot: unknown op(s) {sorted(unknown)}")
    b, c, h, w = x.shape
    picked = {n: op == i for i, n in enumerate(names)}  # bool [b] per op
    if c == 1:  # saturation and hue are identities on one channel
        picked.pop("color", None)
        picked.pop("hue", None)
    rows = lambda mask: mask.view(b, 1, 1, 1)
    none = torch.zeros_like(op, dtype=torch.bool)

    geometric = [n for n in picked if n in GEOMETRIC_OPS]
    if geometric:
        # one matrix per sample, one grid, one grid_sample per interpolation mode in use
        matrix, hit = _IDENTITY.to(x.device).expand(b, 2, 3), none
        by_mode = {}
        for n in geometric:
            matrix = torch.where(picked[n].view(b, 1, 1), GEOMETRIC_OPS[n](value, h, w), matrix)
            hit = hit | picked[n]
            by_mode[modes[n]] = by_mode.get(modes[n], none) | picked[n]
        grid = O.affine_grid(matrix, h, w, nearest=by_mode.get("nearest", none))
        fill_t = O.fill_column(fill, x)
        shifted = x - fill_t  # zero padding of x - fill puts exactly `fill` outside the image
        sampled = None
        for mode in sorted(by_mode):
            out = F.grid_sample(shifted, grid, mode=mode, padding_mode="zeros", align_corners=False)
            sampled = out if sampled is None else torch.where(rows(by_mode[mode]), out, sampled)
        sampled = sampled + fill_t
        if "bicubic" in by_mode:
            sampled = sampled.clamp_(0, 255)
        x = torch.where(rows(hit), sampled, x)

    if any(n in picked for n in (*BLEND_OPS, *_SOLARIZE_OPS, "autocontrast")):
        x = _level_maps(x, picked, value, rows)
    tables = [n for n in ("posterize", "equalize") if n in picked]
    if tables:  # both are tables of the floored levels: one lookup for the two
        levels = O.floored_levels(x)
        hit = picked[tables[0]] | picked[tables[-1]]
        lut = torch.arange(256, device=x.device).expand(b, 256)
        if "posterize" in picked:  # keep the top `bits` bits (other ops' values may be far out of 0..8)
            keep = torch.pow(2.0, 8.0 - torch.where(picked["posterize"], value, 8.0)).long().view(b, 1)
            lut = torch.where(picked["posterize"].view(b, 1), lut // keep * keep, lut)
        lut = lut.repeat_interleave(c, dim=0)  # (b*C, 256): one table per plane
        if "equalize" in picked:
            lut = torch.where(picked["equalize"].repeat_interleave(c).view(b * c, 1),
                              O.equalize_lut(levels, h * w), lut)
        x = torch.where(rows(hit), O.apply_lut(lut, levels, x), x)
    if "hue" in picked:
        x = torch.where(rows(picked["hue"]), O.adjust_hue(x, torch.where(picked["hue"], value, 0.0)), x)
    return x


# ---------------------------------------------------------------------------------------------------
# AutoAugment

# (op1, p1, magnitude bin 1, op2, p2, magnitude bin 2), 25 sub-policies per dataset (Cubuk et al.)
_AUTOAUGMENT_POLICIES = {
    "cifar10": [
        ("invert", .1, 7, "contrast", .2, 6), ("rotate", .7, 2, "translate_x", .3, 9),
        ("sharpness", .8, 1, "sharpness", .9, 3), ("shear_y", .5, 8, "translate_y", .7, 9),
        ("autocontrast", .5, 8, "equalize", .9, 2), ("shear_y", .2, 7, "posterize", .3, 7),
        ("color", .4, 3, "brightness", .6, 7), ("sharpness", .3, 9, "brightness", .7, 9),
        ("equalize", .6, 5, "equalize", .5, 1), ("contrast", .6, 7, "sharpness", .6, 5),
        ("color", .7, 7, "translate_x", .5, 8), ("equalize", .3, 7, "autocontrast", .4, 8),
        ("translate_y", .4, 3, "sharpness", .2, 6), ("brightness", .9, 6, "color", .2, 8),
        ("solarize", .5, 2, "invert", .0, 3), ("equalize", .2, 0, "autocontrast", .6, 0),
        ("equalize", .2, 8, "equalize", .6, 4), ("color", .9, 9, "equalize", .6, 6),
        ("autocontrast", .8, 4, "solarize", .2, 8), ("brightness", .1, 3, "color", .7, 0),
        ("solarize", .4, 5, "autocontrast", .9, 3), ("translate_y", .9, 9, "translate_y", .7, 9),
        ("autocontrast", .9, 2, "solarize", .8, 3), ("equalize", .8, 8, "invert", .1, 3),
        ("translate_y", .7, 9, "autocontrast", .9, 1),
    ],
    "svhn": [
        ("shear_x", .9, 4, "invert", .2, 3), ("shear_y", .9, 8, "invert", .7, 5),
        ("equalize", .6, 5, "solarize", .6, 6), ("invert", .9, 3, "equalize", .6, 3),
        ("equalize", .6, 1, "rotate", .9, 3), ("shear_x", .9, 4, "autocontrast", .8, 3),
        ("shear_y", .9, 8, "invert", .4, 5), ("shear_y", .9, 5, "solarize", .2, 6),
        ("invert", .9, 6, "autocontrast", .8, 1), ("equalize", .6, 3, "rotate", .9, 3),
        ("shear_x", .9, 4, "solarize", .3, 3), ("shear_y", .8, 8, "invert", .7, 4),
        ("equalize", .9, 5, "translate_y", .6, 6), ("invert", .9, 4, "equalize", .6, 7),
        ("contrast", .3, 3, "rotate", .8, 4), ("invert", .8, 5, "translate_y", .0, 2),
        ("shear_y", .7, 6, "solarize", .4, 8), ("invert", .6, 4, "rotate", .8, 4),
        ("shear_y", .3, 7, "translate_x", .9, 3), ("shear_x", .1, 6, "invert", .6, 5),
        ("solarize", .7, 2, "translate_y", .6, 7), ("shear_y", .8, 4, "invert", .8, 8),
        ("shear_x", .7, 9, "translate_y", .8, 3), ("shear_y", .8, 5, "autocontrast", .7, 3),
        ("shear_x", .7, 2, "invert", .1, 5),
    ],
    "imagenet": [
        ("posterize", .4, 8, "rotate", .6, 9), ("solarize", .6, 5, "autocontrast", .6, 5),
        ("equalize", .8, 8, "equalize", .6, 3), ("posterize", .6, 7, "posterize", .6, 6),
        ("equalize", .4, 7, "solarize", .2, 4), ("equalize", .4, 4, "rotate", .8, 8),
        ("solarize", .6, 3, "equalize", .6, 7), ("posterize", .8, 5, "equalize", 1., 2),
        ("rotate", .2, 3, "solarize", .6, 8), ("equalize", .6, 8, "posterize", .4, 6),
        ("rotate", .8, 8, "color", .4, 0), ("rotate", .4, 9, "equalize", .6, 2),
        ("equalize", .0, 7, "equalize", .8, 8), ("invert", .6, 4, "equalize", 1., 8),
        ("color", .6, 4, "contrast", 1., 8), ("rotate", .8, 8, "color", 1., 2),
        ("color", .8, 8, "solarize", .8, 7), ("sharpness", .4, 7, "invert", .6, 8),
        ("shear_x", .6, 5, "equalize", 1., 9), ("color", .4, 0, "equalize", .6, 3),
        ("equalize", .4, 7, "solarize", .2, 4), ("solarize", .6, 5, "autocontrast", .6, 5),
        ("invert", .6, 4, "equalize", 1., 8), ("color", .6, 4, "contrast", 1., 8),
        ("equalize", .8, 8, "equalize", .6, 3),
    ],
}

AUTOAUGMENT_OPS = ["shear_x", "shear_y", "translate_x", "translate_y", "rotate", "color", "posterize",
                   "solarize", "contrast", "sharpness", "brightness", "autocontrast", "equalize", "invert"]
_AA_MODES = {"shear_x": "bicubic", "shear_y": "bicubic", "translate_x": "nearest",
             "translate_y": "nearest", "rotate": "nearest"}
_AA_SIGNED = {"shear_x", "shear_y", "translate_x", "translate_y"}  # rotate: counter-clockwise only, as that code
_AA_ENHANCE = {"color", "contrast", "sharpness", "brightness"}


def autoaugment_magnitude(name: str, bin_: int) -> float:
    """The unsigned parameter of op `name` at magnitude bin 0..9 (enhance ops: the factor's offset)."""
    t = bin_ / 9.0
    if name in ("shear_x", "shear_y"):
        return 0.3 * t
    if name in ("translate_x", "translate_y"):
        return 150.0 / 331.0 * t  # fraction of the side
    if name == "rotate":
        return 30.0 * t
    if name in _AA_ENHANCE:
        return 0.9 * t
    if name == "posterize":
        return float(round(8.0 - 4.0 * t))
    if name == "solarize":
        return 256.0 * (1.0 - t)
    return 0.0


_TABLE_CACHE: dict = {}


def autoaugment_tables(policy: str, device=None) -> tuple[torch.Tensor, ...]:
    """(op index [S, 2] into AUTOAUGMENT_OPS, probability [S, 2], unsigned magnitude [S, 2], signed [K],
    enhance [K]) for a policy of S sub-policies; K = len(AUTOAUGMENT_OPS). Cached per device."""
    key = (policy, str(device))
    if key not in _TABLE_CACHE:
        _TABLE_CACHE[key] = _build_autoaugment_tables(policy, device)
    return _TABLE_CACHE[key]


def _build_autoaugment_tables(policy: str, device) -> tuple[torch.Tensor, ...]:
    if policy not in _AUTOAUGMENT_POLICIES:
        raise UserError(f"unknown AutoAugment policy {policy!r}; choose one of: "
                        f"{', '.join(_AUTOAUGMENT_POLICIES)}")
    rows = _AUTOAUGMENT_POLICIES[policy]
    ops = [[AUTOAUGMENT_OPS.index(r[0]), AUTOAUGMENT_OPS.index(r[3])] for r in rows]
    probs = [[r[1], r[4]] for r in rows]
    mags = [[autoaugment_magnitude(r[0], r[2]), autoaugment_magnitude(r[3], r[5])] for r in rows]
    signed = [n in _AA_SIGNED for n in AUTOAUGMENT_OPS]
    enhance = [n in _AA_ENHANCE for n in AUTOAUGMENT_OPS]
    return tuple(torch.tensor(t, device=device) for t in (ops, probs, mags, signed, enhance))


def autoaugment_params(b: int, policy: str, *, generator: torch.Generator | None,
                       device=None) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Each sample's draws for `autoaugment_`: per op slot, (op index [b] into AUTOAUGMENT_OPS, -1 = no op;
    value [b], the op's signed parameter). Consumes the generator exactly as `autoaugment_` does."""
    ops, probs, mags, signed, enhance = autoaugment_tables(policy, device)
    sub, us = autoaugment_draws(b, ops.shape[0], generator=generator, device=device)
    slots = []
    for slot, u in enumerate(us):
        op, p, mag = ops[sub, slot], probs[sub, slot], mags[sub, slot]
        sign = torch.where(u[1] < 0.5, -1.0, 1.0)
        value = torch.where(signed[op] | enhance[op], mag * sign, mag)
        value = torch.where(enhance[op], 1.0 + value, value)
        slots.append((torch.where(u[0] < p, op, -1), value))
    return slots


def autoaugment_draws(b: int, subpolicies: int, *, generator: torch.Generator | None, device=None):
    """The generator calls of `autoaugment_params`, in its order: (sub-policy [b], per op slot u [2, b]:
    apply?, sign)."""
    sub = torch.randint(0, subpolicies, (b,), generator=generator, device=device)
    return sub, [torch.rand(2, b, generator=generator, device=device) for _ in range(2)]


def autoaugment_(x: torch.Tensor, policy: str, *, generator: torch.Generator | None,
                 fill=128.0) -> torch.Tensor:
    """In place on a float 0..255 batch: each sample runs one random sub-policy of `policy`."""
    for op, value in autoaugment_params(x.shape[0], policy, generator=generator, device=x.device):
        x.copy_(apply_op_slot(x, op, value, AUTOAUGMENT_OPS, fill=fill, modes=_AA_MODES))
    return x


def autoaugment(x: torch.Tensor, policy: str = "cifar10", *, generator: torch.Generator | None = None,
                fill=128.0) -> torch.Tensor:
    """AutoAugment with `policy` ("cifar10" | "svhn" | "imagenet") on a uint8 or float 0..255 batch.

    Returns a new float32 batch in 0..255. fill: colour of the area uncovered by geometric ops.
    """
    return autoaugment_(x.float() if x.dtype == torch.uint8 else x.clone(), policy, generator=generator,
                        fill=fill)


# ---------------------------------------------------------------------------------------------------
# RandAugment (timm "increasing" op set)

RANDAUGMENT_OPS = ["autocontrast", "equalize", "invert", "rotate", "posterize", "solarize", "solarize_add",
                   "color", "contrast", "brightness", "sharpness", "shear_x", "shear_y", "translate_x",
                   "translate_y"]


def randaugment_values(m: torch.Tensor, sign: torch.Tensor) -> torch.Tensor:
    """Parameter of every RANDAUGMENT_OPS entry at magnitude m in [0, 10]: [len(ops), B]."""
    t = m / 10.0
    zero = torch.zeros_like(m)
    per_op = {
        "autocontrast": zero, "equalize": zero, "invert": zero,
        "rotate": 30.0 * t * sign,
        "posterize": 4.0 - torch.floor(4.0 * t),  # bits kept: 4 down to 0
        "solarize": 256.0 - torch.floor(256.0 * t),  # threshold: 256 down to 0
        "solarize_add": torch.floor(110.0 * t),
        "color": 1.0 + 0.9 * t * sign, "contrast": 1.0 + 0.9 * t * sign,
        "brightness": 1.0 + 0.9 * t * sign, "sharpness": 1.0 + 0.9 * t * sign,
        "shear_x": 0.3 * t * sign, "shear_y": 0.3 * t * sign,
        "translate_x": 0.45 * t * sign, "translate_y": 0.45 * t * sign,
    }
    return torch.stack([per_op[n] for n in RANDAUGMENT_OPS])


def randaugment_(x: torch.Tensor, *, generator: torch.Generator | None, magnitude: float = 9.0,
                 magnitude_std: float = 0.5, num_ops: int = 2, p: float = 0.5, fill=128.0,
                 interpolation: str = "bicubic") -> torch.Tensor:
    """In place on a float 0..255 batch: `num_ops` random ops per sample, each applied with prob `p`; the
    geometric ops resample with `interpolation` (timm: the crop's, bicubic in paper B's code)."""
    b, dev = x.shape[0], x.device
    modes = dict.fromkeys(GEOMETRIC_OPS, interpolation)
    for _ in range(num_ops):
        op = torch.randint(0, len(RANDAUGMENT_OPS), (b,), generator=generator, device=dev)
        u = torch.rand(2, b, generator=generator, device=dev)
        m = torch.full((b,), float(magnitude), device=dev)
        if magnitude_std > 0:
            m = m + magnitude_std * torch.randn(b, generator=generator, device=dev)
        m = m.clamp_(0.0, 10.0)
        sign = torch.where(u[1] < 0.5, -1.0, 1.0)
        value = randaugment_values(m, sign).gather(0, op.view(1, b)).view(b)
        op = torch.where(u[0] < p, op, -1)
        x.copy_(apply_op_slot(x, op, value, RANDAUGMENT_OPS, fill=fill, modes=modes))
    return x


def randaugment(x: torch.Tensor, *, generator: torch.Generator | None = None, magnitude: float = 9.0,
                magnitude_std: float = 0.5, num_ops: int = 2, p: float = 0.5, fill=128.0,
                interpolation: str = "bicubic") -> torch.Tensor:
    """RandAugment (timm rand-m{magnitude}-mstd{magnitude_std}-inc1) on a uint8 or float 0..255 batch.

    Returns a new float32 batch in 0..255; magnitude 0 with magnitude_std 0 is the identity except for
    the magnitude-free ops (autocontrast, equalize, invert), as in timm.
    """
    return randaugment_(x.float() if x.dtype == torch.uint8 else x.clone(), generator=generator,
                        magnitude=magnitude, magnitude_std=magnitude_std, num_ops=num_ops, p=p, fill=fill,
                        interpolation=interpolation)
