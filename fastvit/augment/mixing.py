"""Erasing and mixing on the normalized batch: RandomErasing, Mixup / CutMix, label smoothing.

Every op works on the whole batch with per-sample draws and masks (an unerased or unmixed sample
gets an empty box or weight 1): fixed shapes, no host sync.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import torch

from fastvit.errors import UserError

ERASE_MIN_AREA, ERASE_TRIES = 0.02, 10  # RandomErasing's smallest area fraction and box draws per sample


def box_mask(top, left, h, w, height: int, width: int) -> torch.Tensor:
    """[B, 1, H, W] bool: True inside each sample's box (h or w 0: empty)."""
    rows = torch.arange(height, device=top.device).view(1, height)
    cols = torch.arange(width, device=top.device).view(1, width)
    in_rows = (rows >= top.view(-1, 1)) & (rows < (top + h).view(-1, 1))  # (B, H)
    in_cols = (cols >= left.view(-1, 1)) & (cols < (left + w).view(-1, 1))  # (B, W)
    return (in_rows.unsqueeze(2) & in_cols.unsqueeze(1)).unsqueeze(1)


# ---------------------------------------------------------------------------------------------------
# RandomErasing


ERASE_MODES = ("mean", "pixel", "constant")
ERASE_ASPECTS = ("log", "uniform")


def random_erasing_(x: torch.Tensor, *, p: float = 0.25, min_area: float = ERASE_MIN_AREA, max_area: float = 0.4,
                    min_aspect: float = 0.3, mode: str = "mean", fill=None, aspect: str = "log",
                    generator: torch.Generator | None = None, tries: int = ERASE_TRIES) -> torch.Tensor:
    """In place RandomErasing on a normalized batch: with probability p, one rectangle per sample.

    Area ~ U(min_area, max_area) of the image; aspect h/w in [min_aspect, 1/min_aspect], log-uniform
    (aspect "log", timm's) or uniform (aspect "uniform", Zhong et al.'s code as paper A runs it); the
    first of `tries` draws that fits is used (none fits: nothing erased). Fill: "mean" = 0 (the dataset
    mean after normalization), "pixel" = N(0, 1) per pixel and channel, or "constant" = the
    per-channel values `fill` written into the normalized tensor as they are (paper A writes the
    dataset mean in 0..1 units).
    """
    if mode == "constant" and fill is None:
        raise UserError("erase mode 'constant' needs the fill values")
    top, left, h, w, noise = random_erasing_params(
        x.shape, p=p, min_area=min_area, max_area=max_area, min_aspect=min_aspect, mode=mode, aspect=aspect,
        generator=generator, device=x.device, tries=tries)
    mask = box_mask(top, left, h, w, x.shape[2], x.shape[3])  # (B, 1, H, W)
    if mode == "mean":
        return x.masked_fill_(mask, 0.0)
    if mode == "constant":
        values = torch.as_tensor(fill, dtype=x.dtype).flatten().to(x.device)
        noise = values.expand(x.shape[1]).view(1, -1, 1, 1)
    return x.copy_(torch.where(mask, noise, x))


def random_erasing_params(shape, *, p: float = 0.25, min_area: float = ERASE_MIN_AREA, max_area: float = 0.4,
                          min_aspect: float = 0.3, mode: str = "mean", aspect: str = "log",
                          generator: torch.Generator | None = None, device=None, tries: int = ERASE_TRIES
                          ) -> tuple[torch.Tensor, ...]:
    """`random_erasing_`'s draws for a batch of `shape` [B, C, H, W]: (top, left, h, w [B], h = w = 0 for a
    sample not erased; noise [B, C, H, W] for mode "pixel" else None)."""
    if mode not in ERASE_MODES:
        raise UserError(f"unknown erase mode {mode!r}; choose one of: {', '.join(ERASE_MODES)}")
    if aspect not in ERASE_ASPECTS:
        raise UserError(f"unknown erase aspect {aspect!r}; choose one of: {', '.join(ERASE_ASPECTS)}")
    b, c, height, width = shape
    dev = device
    area_u = torch.rand(b, tries, generator=generator, device=dev)
    aspect_u = torch.rand(b, tries, generator=generator, device=dev)
    if aspect == "log":
        la = math.log(min_aspect)
        ratio = torch.exp(aspect_u * (-2 * la) + la)
    else:
        ratio = aspect_u * (1 / min_aspect - min_aspect) + min_aspect
    u = torch.stack([torch.rand(b, generator=generator, device=dev) for _ in range(3)])  # erase?, top, left
    area = area_u * (max_area - min_area) + min_area
    area = area * (height * width)
    h = torch.sqrt(area * ratio).round().long()
    w = torch.sqrt(area / ratio).round().long()
    ok = (h < height) & (w < width) & (h > 0) & (w > 0)
    first = torch.argmax(ok.int(), dim=1, keepdim=True)
    h, w = h.gather(1, first).view(b), w.gather(1, first).view(b)
    erase = ok.any(dim=1) & (u[0] < p)
    h, w = torch.where(erase, h, 0), torch.where(erase, w, 0)
    top = (u[1] * (height - h + 1)).long().clamp_(max=height - h)  # as draws.randint_below
    left = (u[2] * (width - w + 1)).long().clamp_(max=width - w)
    noise = torch.randn(shape, generator=generator, device=dev) if mode == "pixel" else None
    return top, left, h, w, noise


def random_erasing(x: torch.Tensor, **kwargs) -> torch.Tensor:
    """`random_erasing_` on a copy."""
    return random_erasing_(x.clone(), **kwargs)


# ---------------------------------------------------------------------------------------------------
# Mixup / CutMix


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


@dataclasses.dataclass
class MixDraws:
    """`mixup_cutmix_`'s draws: [B] per sample ("pair" mode) or [1] for the whole batch ("batch" mode)."""

    inside: torch.Tensor  # float32: weight of the sample's own pixels inside its box
    outside: torch.Tensor  # float32: ... and outside it (1 and 1: not mixed)
    top: torch.Tensor  # int64: CutMix box (all four 0 when CutMix is off)
    left: torch.Tensor
    height: torch.Tensor
    width: torch.Tensor


MIX_MODES = ("batch", "batch-flip", "pair")


def mixup_cutmix_(x: torch.Tensor, labels: torch.Tensor, *, num_classes: int, mixup_alpha: float = 1.0,
                  cutmix_alpha: float = 1.0, prob: float = 1.0, switch_prob: float = 0.5,
                  label_smoothing: float = 0.0, mode: str = "pair", generator: torch.Generator | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """In place Mixup / CutMix; returns (x, soft targets [B, num_classes] = lam*y + (1-lam)*y_partner, smoothed).

    mode "pair": per sample with the mirrored batch (sample i pairs with B-1-i): each sample is mixed
        with probability `prob`, with its own lam and its own choice of CutMix (probability
        `switch_prob` when both alphas > 0) or Mixup.
    mode "batch": as paper A's mix functions: one draw per batch of mixed-or-not, CutMix-or-Mixup and lam
        (and one CutMix box), and the partner of sample i is sample perm[i] of a random permutation.
    mode "batch-flip": as timm's Mixup in batch mode (paper B): the same draws, and the partner of sample i
        is B-1-i, the batch flipped (timm's x.flip(0)), so pairs are mutual and no sample meets itself
        unless it is the middle one of an odd batch.
    Mixup: lam ~ Beta(mixup_alpha), x = lam*x + (1-lam)*partner. CutMix: lam ~ Beta(cutmix_alpha), a box
    of side sqrt(1-lam) times the image's, centred uniformly and clipped, is pasted from the partner,
    and lam is corrected to the kept area (as timm).
    """
    if mode not in MIX_MODES:
        raise UserError(f"unknown mix mode {mode!r}; choose one of: {', '.join(MIX_MODES)}")
    b, _, height, width = x.shape
    if mode == "pair":
        draw = mixup_cutmix_params
    else:
        draw = functools.partial(mixup_cutmix_batch_params, flip=mode == "batch-flip")
    targets, draws, partner = draw(
        x.shape, labels, num_classes=num_classes, mixup_alpha=mixup_alpha, cutmix_alpha=cutmix_alpha, prob=prob,
        switch_prob=switch_prob, label_smoothing=label_smoothing, generator=generator, device=x.device)
    if draws is None:
        return x, targets
    col = lambda v: v.view(-1, 1, 1, 1)
    box = box_mask(draws.top, draws.left, draws.height, draws.width, height, width)  # (B or 1, 1, H, W)
    weight = torch.where(box, col(draws.inside), col(draws.outside))
    # lerp at weight 1 (0) returns its end (start) exactly: unmixed samples and pasted pixels are copies
    return x.copy_(torch.lerp(x[partner], x, weight)), targets


def mixup_cutmix_params(shape, labels: torch.Tensor, *, num_classes: int, mixup_alpha: float = 1.0,
                        cutmix_alpha: float = 1.0, prob: float = 1.0, switch_prob: float = 0.5,
                        label_smoothing: float = 0.0, generator: torch.Generator | None = None, device=None
                        ) -> tuple[torch.Tensor, MixDraws | None, torch.Tensor]:
    """`mixup_cutmix_`'s per-sample ("pair") draws for a batch of `shape`: (soft targets [B, num_classes],
    the per-sample draws or None when both alphas are 0, the partner index [B] = B-1-i)."""
    b, _, height, width = shape
    dev = device
    y = smooth_one_hot(labels, num_classes, label_smoothing)
    partner = torch.arange(b - 1, -1, -1, device=dev)
    if mixup_alpha <= 0 and cutmix_alpha <= 0:
        return y, None, partner
    u = torch.rand(2, b, generator=generator, device=dev)
    mixed = u[0] < prob
    if mixup_alpha > 0 and cutmix_alpha > 0:
        use_cut = u[1] < switch_prob
    else:
        use_cut = torch.full((b,), cutmix_alpha > 0, device=dev)
    lam_mix = sample_beta(mixup_alpha, b, generator=generator, device=dev) if mixup_alpha > 0 else None
    lam_cut = sample_beta(cutmix_alpha, b, generator=generator, device=dev) if cutmix_alpha > 0 else None
    return _mix_draws(y, partner, mixed, use_cut, lam_mix, lam_cut, height, width, generator)


def mixup_cutmix_batch_params(shape, labels: torch.Tensor, *, num_classes: int, mixup_alpha: float = 1.0,
                              cutmix_alpha: float = 1.0, prob: float = 1.0, switch_prob: float = 0.5,
                              label_smoothing: float = 0.0, generator: torch.Generator | None = None,
                              device=None, flip: bool = False) -> tuple[torch.Tensor, MixDraws | None, torch.Tensor]:
    """`mixup_cutmix_`'s per-batch ("batch", "batch-flip") draws: as `mixup_cutmix_params`, every draw made
    once for the batch ([1] tensors, broadcast over it) and the partner index a random permutation [B], or
    with flip B-1-i."""
    b, _, height, width = shape
    dev = device
    y = smooth_one_hot(labels, num_classes, label_smoothing)
    if mixup_alpha <= 0 and cutmix_alpha <= 0:
        return y, None, torch.arange(b, device=dev)
    if flip:
        partner = torch.arange(b - 1, -1, -1, device=dev)
    else:
        partner = torch.randperm(b, generator=generator, device=dev)
    u = torch.rand(2, 1, generator=generator, device=dev)
    mixed = u[0] < prob
    if mixup_alpha > 0 and cutmix_alpha > 0:
        use_cut = u[1] < switch_prob
    else:
        use_cut = torch.full((1,), cutmix_alpha > 0, device=dev)
    lam_mix = sample_beta(mixup_alpha, 1, generator=generator, device=dev) if mixup_alpha > 0 else None
    lam_cut = sample_beta(cutmix_alpha, 1, generator=generator, device=dev) if cutmix_alpha > 0 else None
    return _mix_draws(y, partner, mixed, use_cut, lam_mix, lam_cut, height, width, generator)


def _mix_draws(y, partner, mixed, use_cut, lam_mix, lam_cut, height: int, width: int, generator):
    """(targets, MixDraws, partner) from the draws of either mode (n = B per sample, or 1 per batch)."""
    n, dev = mixed.shape[0], mixed.device
    lam = lam_cut if lam_mix is None else lam_mix
    zeros = torch.zeros(n, dtype=torch.long, device=dev)
    box = (zeros, zeros, zeros, zeros)
    if lam_cut is not None:
        cut = torch.sqrt(1.0 - lam_cut)
        ch, cw = (cut * height).long(), (cut * width).long()
        cy = torch.randint(0, height, (n,), generator=generator, device=dev)
        cx = torch.randint(0, width, (n,), generator=generator, device=dev)
        y0, y1 = (cy - ch // 2).clamp(0, height), (cy + ch // 2).clamp(0, height)
        x0, x1 = (cx - cw // 2).clamp(0, width), (cx + cw // 2).clamp(0, width)
        lam_box = 1.0 - ((y1 - y0) * (x1 - x0)).float() / (height * width)
        lam = torch.where(use_cut, lam_box, lam)
        box = (y0, x0, y1 - y0, x1 - x0)
    lam = torch.where(mixed, lam, 1.0).view(-1, 1)  # (n, 1)
    targets = lam * y + (1.0 - lam) * y[partner]
    # own-pixel weights: Mixup lam everywhere; CutMix 0 inside the box, 1 outside; unmixed 1 everywhere
    lam_pixels = lam_mix if lam_mix is not None else torch.ones(n, device=dev)
    inside = torch.where(mixed, torch.where(use_cut, 0.0, lam_pixels), 1.0)
    outside = torch.where(mixed & ~use_cut, lam_pixels, 1.0)
    return targets, MixDraws(inside, outside, *box), partner


def mixup_cutmix(x: torch.Tensor, labels: torch.Tensor, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    """`mixup_cutmix_` on a copy."""
    return mixup_cutmix_(x.clone(), labels, **kwargs)
