"""Batched on-device augmentation, one implementation for every device (no host sync per batch).

Every op takes a whole batch ``[B, C, H, W]`` (C = 1 or 3) on its device and draws each sample's
parameters from an explicit ``torch.Generator`` on that device, so a run is reproducible and the same
seed gives the same batch on the same device. Ops that choose per sample (AutoAugment's sub-policies,
a probability-p op, erasing, mixing) run as fixed-shape batched ops with per-sample parameters and
masks: no `nonzero`, no group sizes read back, no data-dependent shapes.

Modules, in dependency order: `ops` (deterministic PIL-equivalent ops), `draws` (per-sample random
draws), `policies` (AutoAugment, RandAugment, `apply_op_slot`), `crops` (sizing, crops, flips,
RandomResizedCrop), `photometric` (ColorJitter, grayscale, blur, solarize), `mixing` (RandomErasing,
Mixup / CutMix), `transforms` (the recipes' train / eval transforms), `multicrop` (DINO views).
"""

from .crops import (
    crop_flip,
    fit_to_size,
    random_crop,
    random_hflip,
    random_resized_crop,
    resample_boxes,
    resample_weights,
    resized_crop_boxes,
)
from .mixing import (
    mixup_cutmix,
    mixup_cutmix_,
    random_erasing,
    random_erasing_,
    sample_beta,
    smooth_one_hot,
)
from .multicrop import MultiCrop
from .photometric import color_jitter, random_gaussian_blur, random_grayscale, random_solarize
from .policies import autoaugment, randaugment
from .transforms import RECIPES, VARIANTS, AugmentParams, Normalize, build_eval_transform, build_train_transform

__all__ = [
    "AugmentParams", "MultiCrop", "Normalize", "RECIPES", "autoaugment", "build_eval_transform",
    "build_train_transform", "color_jitter", "crop_flip", "fit_to_size", "mixup_cutmix", "mixup_cutmix_",
    "randaugment", "random_crop", "random_erasing", "random_erasing_", "random_gaussian_blur",
    "random_grayscale", "random_hflip", "random_resized_crop", "random_solarize", "resample_boxes",
    "resample_weights", "resized_crop_boxes", "sample_beta", "smooth_one_hot", "VARIANTS",
]
