"""The train and eval transforms of each recipe, composed from the batched ops.

- ``build_train_transform(recipe, img_size=, mean=, std=, num_classes=, **params)``: recipes "basic",
  "gani22-finetune" (paper A) and "drloc21" (paper B) -> callable(images, labels, generator)
- ``build_eval_transform(img_size=, mean=, std=)`` -> callable(images)

Loaders deliver uint8; geometric ops that only move pixels (crop, flip, pad) stay in uint8, the batch
is converted to float32 once, photometric ops work on float32 in the 0..255 range (no rounding between
ops), and normalization is one fused multiply-add, before erasing and mixing. Every random parameter is
drawn per sample from the caller's generator on the batch's device; no step reads device data back to
the host.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from fastvit.errors import UserError

from . import policies as P
from .crops import fit_to_size, random_crop, random_resized_crop
from .mixing import ERASE_ASPECTS, ERASE_MODES, MIX_MODES, mixup_cutmix_, random_erasing_
from .ops import check_images, to_float
from .photometric import color_jitter_


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
# recipes


@dataclasses.dataclass
class AugmentParams:
    """Every knob of the train transform; a recipe is a set of defaults, ``**params`` override them."""

    crop: str = "pad"  # "pad": RandomCrop with `padding` (after fit_to_size); "resized": RandomResizedCrop
    crop_small: str | None = None  # the crop at img_size <= 32 px, when set (paper B's code: "pad")
    padding: int = 4  # px of zero padding around the image for crop="pad"
    scale: tuple[float, float] = (0.08, 1.0)  # RandomResizedCrop area fraction range
    ratio: tuple[float, float] = (3 / 4, 4 / 3)  # RandomResizedCrop aspect range
    interpolation: str = "bicubic"  # RandomResizedCrop and RandAugment resampling: "bilinear" | "bicubic"
    flip_p: float = 0.5  # probability of a horizontal flip
    color_jitter: float = 0.0  # ColorJitter brightness = contrast = saturation strength (hue 0)
    policy: str | None = None  # AutoAugment policy: "cifar10" | "svhn" | "imagenet" | None
    rand_magnitude: float | None = None  # RandAugment magnitude (0..10); None: no RandAugment
    rand_mstd: float = 0.5  # RandAugment magnitude noise std
    rand_ops: int = 2  # RandAugment ops per image
    erase_p: float = 0.0  # RandomErasing probability
    # "mean" (0: the dataset mean after normalization) | "pixel" (N(0,1) noise after normalization) |
    # "constant" (the dataset mean in 0..1 units written into the normalized tensor: paper A's code)
    erase_mode: str = "mean"
    erase_max_area: float = 0.4  # largest erased fraction of the image
    erase_min_aspect: float = 0.3  # erased box aspect in [min, 1/min]
    erase_aspect: str = "log"  # aspect distribution: "log" (log-uniform, timm) | "uniform" (paper A's code)
    erase_tries: int = 10  # box draws per sample before giving up (paper A's code: 100)
    label_smoothing: float = 0.0
    mixup_alpha: float = 0.0  # Beta(a, a) for Mixup; 0 disables
    cutmix_alpha: float = 0.0  # Beta(a, a) for CutMix; 0 disables
    mix_prob: float = 1.0  # probability that a sample is mixed
    switch_prob: float = 0.5  # probability of CutMix rather than Mixup when both are enabled
    # "batch": one draw per batch and a random partner permutation (paper A's code) | "batch-flip": the same
    # draws, partner B-1-i (timm's batch mode, paper B) | "pair": per sample, partner B-1-i
    mix_mode: str = "batch"

    def validate(self) -> None:
        choices = {"crop": ("pad", "resized"), "crop_small": (None, "pad", "resized"),
                   "interpolation": ("bilinear", "bicubic"),
                   "policy": (None, "cifar10", "svhn", "imagenet"), "erase_mode": ERASE_MODES,
                   "erase_aspect": ERASE_ASPECTS, "mix_mode": MIX_MODES}
        for name, valid in choices.items():
            if getattr(self, name) not in valid:
                raise UserError(f"augmentation {name}={getattr(self, name)!r} is invalid; choose one of: "
                                f"{', '.join(str(v) for v in valid)}")
        for name in ("flip_p", "erase_p", "label_smoothing", "mix_prob", "switch_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise UserError(f"augmentation {name} must be in [0, 1], got {getattr(self, name)}")
        if self.erase_tries < 1:
            raise UserError(f"augmentation erase_tries must be >= 1, got {self.erase_tries}")
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
    # paper A fine-tuning (SPEC section 4), as its code runs it: Zhong et al.'s RandomErasing (uniform
    # aspect, the dataset mean written into the normalized tensor, 100 tries), per-batch Mixup/CutMix
    "gani22-finetune": dict(policy="cifar10", erase_p=0.25, erase_mode="constant", erase_aspect="uniform",
                            erase_tries=100, erase_max_area=0.4, label_smoothing=0.1, mixup_alpha=1.0,
                            cutmix_alpha=1.0, mix_prob=0.5, switch_prob=0.5),
    # paper B (SPEC section 2.9), timm's ImageNet recipe as Swin uses it: timm applies no ColorJitter
    # when RandAugment is on; at 32 px and below its build_transform swaps the RandomResizedCrop for
    # RandomCrop(size, padding 4)
    "drloc21": dict(crop="resized", crop_small="pad", interpolation="bicubic", color_jitter=0.0, rand_magnitude=9.0,
                    rand_mstd=0.5, erase_p=0.25, erase_mode="pixel", erase_max_area=1 / 3,
                    label_smoothing=0.1, mixup_alpha=0.8, cutmix_alpha=1.0, mix_prob=1.0, switch_prob=0.5,
                    mix_mode="batch-flip"),
}

# fastvit's earlier choices, kept as named variants: overrides on top of a recipe
VARIANTS: dict[str, dict] = {
    "pair-mixing": dict(mix_mode="pair"),  # per-sample Mixup/CutMix with the mirrored batch
    "timm-erasing": dict(erase_mode="mean", erase_aspect="log", erase_tries=10),  # fill 0, log-uniform aspect
    "jitter-with-randaugment": dict(color_jitter=0.4),  # drloc21 with ColorJitter 0.4 before RandAugment
    "resized-crop-at-32px": dict(crop_small=None),  # drloc21's RandomResizedCrop at every size, 32 px too
}


class TrainTransform:
    """callable(images uint8 [B,C,H,W], labels int64 [B], generator) -> (images, targets).

    images: float32 [B, C, img_size, img_size], normalized. targets: the int64 labels, or float32
    soft targets [B, num_classes] when the params mix samples or smooth labels.
    """

    def __init__(self, params: AugmentParams, *, img_size: int, mean, std, num_classes: int):
        params.validate()
        self.params, self.img_size, self.num_classes = params, img_size, num_classes
        self.normalize = Normalize(mean, std)
        # RandAugment fills uncovered areas with the dataset mean colour (as timm)
        self.mean_fill = [min(255.0, round(255.0 * m)) for m in self.normalize.mean.tolist()]
        self.erase_fill = self.normalize.mean.tolist()  # erase_mode "constant": the mean in 0..1 units

    def __call__(self, images: torch.Tensor, labels: torch.Tensor,
                 generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
        p, g = self.params, generator
        check_images(images)
        if (p.crop_small if p.crop_small and self.img_size <= 32 else p.crop) == "pad":
            x = fit_to_size(images, self.img_size)
            x = random_crop(x, self.img_size, padding=p.padding, flip_p=p.flip_p, generator=g)
        else:
            x = random_resized_crop(images, self.img_size, scale=p.scale, ratio=p.ratio,
                                    interpolation=p.interpolation, flip_p=p.flip_p, generator=g)
        if p.color_jitter > 0 or p.policy or p.rand_magnitude is not None:
            x = to_float(x)  # the one uint8 -> float conversion; the ops below work in place
            if p.color_jitter > 0:
                color_jitter_(x, p.color_jitter, p.color_jitter, p.color_jitter, 0.0, generator=g)
            if p.policy:
                P.autoaugment_(x, p.policy, generator=g, fill=128.0)
            if p.rand_magnitude is not None:
                P.randaugment_(x, generator=g, magnitude=p.rand_magnitude, magnitude_std=p.rand_mstd,
                               num_ops=p.rand_ops, fill=self.mean_fill, interpolation=p.interpolation)
        x = self.normalize(x)
        if p.erase_p > 0:
            random_erasing_(x, p=p.erase_p, max_area=p.erase_max_area, min_aspect=p.erase_min_aspect,
                            mode=p.erase_mode, fill=self.erase_fill, aspect=p.erase_aspect,
                            tries=p.erase_tries, generator=g)
        return self._mix(x, labels, g)

    def _mix(self, x: torch.Tensor, labels: torch.Tensor, g) -> tuple[torch.Tensor, torch.Tensor]:
        p = self.params
        if not p.soft_targets:
            return x, labels
        return mixup_cutmix_(x, labels, num_classes=self.num_classes, mixup_alpha=p.mixup_alpha,
                             cutmix_alpha=p.cutmix_alpha, prob=p.mix_prob, switch_prob=p.switch_prob,
                             label_smoothing=p.label_smoothing, mode=p.mix_mode, generator=g)


def build_train_transform(recipe: str, *, img_size: int, mean: Sequence[float], std: Sequence[float],
                          num_classes: int, **params) -> TrainTransform:
    """The train-time augmentation of a recipe (SPEC).

    recipe: "basic" (random crop, pad 4, + flip), "gani22-finetune" (paper A, SPEC section 4; pass
        policy="svhn" / "imagenet" for SVHN / Tiny-ImageNet and CINIC), "drloc21" (paper B, SPEC 2.9).
    img_size: output side in pixels; with crop="pad" inputs of another size go through `fit_to_size`
        first, with crop="resized" the crop is resampled straight to img_size.
    mean, std: per-channel normalization in 0..1 units (1 or 3 values).
    num_classes: width of the soft targets.
    params: override any `AugmentParams` field (e.g. mixup_alpha=0, label_smoothing=0); an unknown
        key is a UserError.
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
                          num_classes=num_classes)


def build_eval_transform(*, img_size: int, mean: Sequence[float], std: Sequence[float],
                         resize: int | None = None) -> Callable:
    """callable(images uint8 [B,C,H,W]) -> float32 [B, C, img_size, img_size], normalized.

    resize None: `fit_to_size` (pad or resize straight to img_size). resize N: paper B's eval of 224-px
    models (timm's, resize 256 -> centre crop 224): resize to N x N bicubic as PIL does (torch's
    antialiased kernel, a = -0.5), rounded to uint8, then the centre img_size x img_size crop.
    """
    normalize = Normalize(mean, std)
    if resize is not None and resize < img_size:
        raise UserError(f"eval resize {resize} must be at least the image size {img_size}")

    def transform(images: torch.Tensor) -> torch.Tensor:
        if resize is None:
            return normalize(fit_to_size(images, img_size))
        check_images(images)
        x = F.interpolate(images.float(), size=(resize, resize), mode="bicubic", align_corners=False,
                          antialias=True).round_().clamp_(0, 255).to(torch.uint8)
        top = int(round((resize - img_size) / 2.0))  # timm's CenterCrop
        return normalize(x[:, :, top:top + img_size, top:top + img_size])

    return transform
