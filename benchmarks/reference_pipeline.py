"""The papers' data pipelines, for comparison: per-sample PIL augmentation in torch DataLoader workers.

This is how the public code of both papers feeds a model (torchvision / timm transforms on one PIL image
at a time, in worker processes, then batch Mixup/CutMix in the main process). torchvision and timm cannot
be installed beside this torch, so their transforms are written here with the same PIL calls and sampling
rules. It is the baseline of `benchmarks/bench_data.py` and of the end-to-end training benchmark:
keep it faithful, never tuned down.

- `FinetuneTransform`: paper A's fine-tuning (SPEC section 4): RandomCrop(32, padding 4), flip,
  AutoAugment CIFAR10 policy (the DeepVoltaire PIL implementation the papers' repositories use),
  ToTensor, Normalize, RandomErasing (Zhong et al.: p .25, area 0.02-0.4, aspect >= 0.3, mean fill).
- `Drloc21Transform`: paper B's training (SPEC section 2.9, timm's create_transform as its Swin-based code
  calls it): RandomResizedCrop(224, bicubic) from the 32-px images, flip, `RandAugment`
  rand-m9-mstd0.5-inc1, ToTensor, Normalize (ImageNet stats), RandomErasing (p .25, pixel mode).
- `mixup_cutmix`: the batch Mixup/CutMix of paper A (alpha 1 / 1, prob .5, switch .5, smoothing .1,
  random-permutation partners) and, with `DRLOC21_MIXING`, timm's Mixup of paper B (alpha .8 / 1,
  prob 1, switch .5, smoothing .1, the flipped batch as partners).
- `MultiCropTransform`: DINO's multi-crop as paper A uses it (SPEC section 3).
- `finetune_loader` / `drloc21_loader` / `multicrop_loader`: the DataLoaders around them.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from PIL import Image, ImageEnhance, ImageFilter, ImageOps
from torch.utils.data import DataLoader, Dataset

# ---------------------------------------------------------------------------------------------------
# AutoAugment, CIFAR10 policy (Cubuk et al. 2019), per image with PIL
# ---------------------------------------------------------------------------------------------------

GRAY = (128, 128, 128)  # fill of uncovered pixels after shear / translate / rotate


def _sign() -> int:
    return random.choice((-1, 1))


def _signed(op):
    """AutoAugment's ops draw their own sign when they run: op(img, m) -> op(img, +-m)."""
    return lambda img, m: op(img, m * _sign())


# The geometric ops take a signed magnitude; the fill and resampling differ between the papers' AutoAugment
# code (gray, bicubic shear, nearest translate) and timm's RandAugment (the mean colour, bicubic throughout).
def _shear_x(img, m, fill=GRAY, resample=Image.BICUBIC):
    return img.transform(img.size, Image.AFFINE, (1, m, 0, 0, 1, 0), resample, fillcolor=fill)


def _shear_y(img, m, fill=GRAY, resample=Image.BICUBIC):
    return img.transform(img.size, Image.AFFINE, (1, 0, 0, m, 1, 0), resample, fillcolor=fill)


def _translate_x(img, m, fill=GRAY, resample=Image.NEAREST):  # m: a fraction of the width
    return img.transform(img.size, Image.AFFINE, (1, 0, m * img.size[0], 0, 1, 0), resample, fillcolor=fill)


def _translate_y(img, m, fill=GRAY, resample=Image.NEAREST):  # m: a fraction of the height
    return img.transform(img.size, Image.AFFINE, (1, 0, 0, 0, 1, m * img.size[1]), resample, fillcolor=fill)


def _rotate(img, m):
    # Rotate on an RGBA copy and composite over gray, so the corners come out gray, not black. Always
    # counter-clockwise: the papers' AutoAugment code draws no sign for rotate, unlike the others.
    rotated = img.convert("RGBA").rotate(m)
    background = Image.new("RGBA", rotated.size, (*GRAY, 128))
    return Image.composite(rotated, background, rotated).convert(img.mode)


def _enhance(enhancer):
    return lambda img, offset: enhancer(img).enhance(1 + offset)


def _posterize(img, bits):
    if bits < 1:  # timm at magnitude 10: the PIL of the papers' time kept no bit (black); this PIL refuses 0
        return img.point([0] * 256 * len(img.getbands()))
    return ImageOps.posterize(img, int(bits))  # 8 bits: unchanged, as timm's `bits >= 8` shortcut


def _solarize(img, threshold):
    return ImageOps.solarize(img, threshold)


def _autocontrast(img, _m):
    return ImageOps.autocontrast(img)


def _equalize(img, _m):
    return ImageOps.equalize(img)


def _invert(img, _m):
    return ImageOps.invert(img)


AUTOAUGMENT_OPS = {
    # name: (op(img, magnitude), magnitudes of levels 0..9)
    "shearX": (_signed(_shear_x), np.linspace(0, 0.3, 10)),
    "shearY": (_signed(_shear_y), np.linspace(0, 0.3, 10)),
    "translateX": (_signed(_translate_x), np.linspace(0, 150 / 331, 10)),
    "translateY": (_signed(_translate_y), np.linspace(0, 150 / 331, 10)),
    "rotate": (_rotate, np.linspace(0, 30, 10)),
    "color": (_signed(_enhance(ImageEnhance.Color)), np.linspace(0.0, 0.9, 10)),
    "posterize": (_posterize, np.round(np.linspace(8, 4, 10)).astype(int)),
    "solarize": (_solarize, np.linspace(256, 0, 10)),
    "contrast": (_signed(_enhance(ImageEnhance.Contrast)), np.linspace(0.0, 0.9, 10)),
    "sharpness": (_signed(_enhance(ImageEnhance.Sharpness)), np.linspace(0.0, 0.9, 10)),
    "brightness": (_signed(_enhance(ImageEnhance.Brightness)), np.linspace(0.0, 0.9, 10)),
    "autocontrast": (_autocontrast, [0] * 10),
    "equalize": (_equalize, [0] * 10),
    "invert": (_invert, [0] * 10),
}

# The 25 sub-policies found on reduced CIFAR-10: (p1, op1, level1, p2, op2, level2).
CIFAR10_POLICY = (
    (0.1, "invert", 7, 0.2, "contrast", 6),
    (0.7, "rotate", 2, 0.3, "translateX", 9),
    (0.8, "sharpness", 1, 0.9, "sharpness", 3),
    (0.5, "shearY", 8, 0.7, "translateY", 9),
    (0.5, "autocontrast", 8, 0.9, "equalize", 2),
    (0.2, "shearY", 7, 0.3, "posterize", 7),
    (0.4, "color", 3, 0.6, "brightness", 7),
    (0.3, "sharpness", 9, 0.7, "brightness", 9),
    (0.6, "equalize", 5, 0.5, "equalize", 1),
    (0.6, "contrast", 7, 0.6, "sharpness", 5),
    (0.7, "color", 7, 0.5, "translateX", 8),
    (0.3, "equalize", 7, 0.4, "autocontrast", 8),
    (0.4, "translateY", 3, 0.2, "sharpness", 6),
    (0.9, "brightness", 6, 0.2, "color", 8),
    (0.5, "solarize", 2, 0.0, "invert", 3),
    (0.2, "equalize", 0, 0.6, "autocontrast", 0),
    (0.2, "equalize", 8, 0.6, "equalize", 4),
    (0.9, "color", 9, 0.6, "equalize", 6),
    (0.8, "autocontrast", 4, 0.2, "solarize", 8),
    (0.1, "brightness", 3, 0.7, "color", 0),
    (0.4, "solarize", 5, 0.9, "autocontrast", 3),
    (0.9, "translateY", 9, 0.7, "translateY", 9),
    (0.9, "autocontrast", 2, 0.8, "solarize", 3),
    (0.8, "equalize", 8, 0.1, "invert", 3),
    (0.7, "translateY", 9, 0.9, "autocontrast", 1),
)


def cifar10_autoaugment(img: Image.Image) -> Image.Image:
    """One uniformly chosen sub-policy; each of its two ops applied with its own probability."""
    p1, op1, level1, p2, op2, level2 = random.choice(CIFAR10_POLICY)
    for p, name, level in ((p1, op1, level1), (p2, op2, level2)):
        if random.random() < p:
            op, magnitudes = AUTOAUGMENT_OPS[name]
            img = op(img, magnitudes[level])
    return img


# ---------------------------------------------------------------------------------------------------
# RandAugment, timm's "rand-m9-mstd0.5-inc1" (paper B, through the Swin code), per image with PIL
# ---------------------------------------------------------------------------------------------------


def _solarize_add(img, add, threshold=128):
    lut = [min(255, level + add) if level < threshold else level for level in range(256)]
    return img.point(lut * len(img.getbands()))


def _rotate_filled(img, degrees, fill, resample):
    return img.rotate(degrees, resample=resample, fillcolor=fill)


RAND_INCREASING = {
    # timm's "increasing" op set (inc1): name -> (op(img, argument), the argument at magnitude m of 10
    # before its sign, whether a sign is drawn). timm's clips (factor >= 0.1, solarize <= 256, add <= 128)
    # cannot bind at m <= 10, so they are left out.
    "AutoContrast": (_autocontrast, None, False),
    "Equalize": (_equalize, None, False),
    "Invert": (_invert, None, False),
    "Rotate": (_rotate_filled, lambda m: m / 10 * 30, True),  # degrees
    "PosterizeIncreasing": (_posterize, lambda m: 4 - int(m / 10 * 4), False),  # bits kept: 4 down to 0
    "SolarizeIncreasing": (_solarize, lambda m: 256 - int(m / 10 * 256), False),  # threshold: 256 down to 0
    "SolarizeAdd": (_solarize_add, lambda m: int(m / 10 * 110), False),  # added to levels below 128
    "ColorIncreasing": (_enhance(ImageEnhance.Color), lambda m: m / 10 * 0.9, True),  # factor 1 +- this
    "ContrastIncreasing": (_enhance(ImageEnhance.Contrast), lambda m: m / 10 * 0.9, True),
    "BrightnessIncreasing": (_enhance(ImageEnhance.Brightness), lambda m: m / 10 * 0.9, True),
    "SharpnessIncreasing": (_enhance(ImageEnhance.Sharpness), lambda m: m / 10 * 0.9, True),
    "ShearX": (_shear_x, lambda m: m / 10 * 0.3, True),
    "ShearY": (_shear_y, lambda m: m / 10 * 0.3, True),
    "TranslateXRel": (_translate_x, lambda m: m / 10 * 0.45, True),  # fraction of the side
    "TranslateYRel": (_translate_y, lambda m: m / 10 * 0.45, True),
}
GEOMETRIC = ("Rotate", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel")  # these take fill and resample


class RandAugment:
    """timm's RandAugment with the hparams paper B's create_transform gives it: per image `num_ops` ops
    drawn uniformly with replacement (numpy's RNG, as timm) from the 15 increasing ops, each applied with
    probability p at its own magnitude N(magnitude, std) clipped to [0, 10], the signed ops with a
    random sign; the geometric ops resample with `resample` and fill with `fill` (timm's img_mean).
    Plain data only, so that it pickles for DataLoader workers that are spawned."""

    def __init__(self, fill: Sequence[int], magnitude: float = 9.0, std: float = 0.5, num_ops: int = 2,
                 p: float = 0.5, resample=Image.BICUBIC):
        self.magnitude, self.std, self.num_ops, self.p = magnitude, std, num_ops, p
        self.fill, self.resample = tuple(fill), resample

    def draw_magnitude(self) -> float:
        """timm's AugmentOp: Gaussian noise on the magnitude, then clipped to [0, 10]."""
        m = random.gauss(self.magnitude, self.std) if self.std > 0 else self.magnitude
        return max(0.0, min(10.0, m))

    def apply(self, img: Image.Image, name: str, magnitude: float, sign: int = 1) -> Image.Image:
        """Op `name` at `magnitude` (already clipped); sign +-1 (the unsigned ops ignore it)."""
        op, level, signed = RAND_INCREASING[name]
        argument = 0 if level is None else level(magnitude) * (sign if signed else 1)
        if name in GEOMETRIC:
            return op(img, argument, fill=self.fill, resample=self.resample)
        return op(img, argument)

    def __call__(self, img: Image.Image) -> Image.Image:
        for name in np.random.choice(list(RAND_INCREASING), self.num_ops):
            if random.random() > self.p:  # timm's test: applied when random() <= p
                continue
            magnitude = self.draw_magnitude()
            signed = RAND_INCREASING[name][2]
            sign = -1 if signed and random.random() > 0.5 else 1  # drawn after the magnitude, as timm
            img = self.apply(img, name, magnitude, sign)
        return img


# ---------------------------------------------------------------------------------------------------
# torchvision-style transforms on one PIL image
# ---------------------------------------------------------------------------------------------------


def random_crop_padded(img: Image.Image, size: int, padding: int) -> Image.Image:
    """RandomCrop(size, padding): zero-pad every side, then a uniformly placed size x size crop."""
    img = ImageOps.expand(img, border=padding, fill=0)
    left, top = random.randint(0, img.width - size), random.randint(0, img.height - size)
    return img.crop((left, top, left + size, top + size))


def random_hflip(img: Image.Image, p: float = 0.5) -> Image.Image:
    return img.transpose(Image.FLIP_LEFT_RIGHT) if random.random() < p else img


def random_resized_crop(img: Image.Image, size: int, scale, ratio=(3 / 4, 4 / 3)) -> Image.Image:
    """torchvision's RandomResizedCrop: up to 10 tries at a box of random area and aspect, else the
    largest center box of clamped aspect; resized with bicubic (as paper A's DINO code asks)."""
    width, height = img.size
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * random.uniform(*scale)
        aspect = math.exp(random.uniform(*log_ratio))
        w, h = round(math.sqrt(target_area * aspect)), round(math.sqrt(target_area / aspect))
        if 0 < w <= width and 0 < h <= height:
            top, left = random.randint(0, height - h), random.randint(0, width - w)
            break
    else:
        in_ratio = width / height
        if in_ratio < ratio[0]:
            w, h = width, round(width / ratio[0])
        elif in_ratio > ratio[1]:
            w, h = round(height * ratio[1]), height
        else:
            w, h = width, height
        top, left = (height - h) // 2, (width - w) // 2
    return img.crop((left, top, left + w, top + h)).resize((size, size), Image.BICUBIC)


def color_jitter(img: Image.Image, brightness: float, contrast: float, saturation: float, hue: float):
    """torchvision's ColorJitter: the four adjustments in a random order, factors uniform in
    [1 - s, 1 + s] (hue: a shift uniform in [-hue, hue] of the HSV hue channel)."""
    adjustments = []
    if brightness:
        f = random.uniform(1 - brightness, 1 + brightness)
        adjustments.append(lambda im: ImageEnhance.Brightness(im).enhance(f))
    if contrast:
        c = random.uniform(1 - contrast, 1 + contrast)
        adjustments.append(lambda im: ImageEnhance.Contrast(im).enhance(c))
    if saturation:
        s = random.uniform(1 - saturation, 1 + saturation)
        adjustments.append(lambda im: ImageEnhance.Color(im).enhance(s))
    if hue:
        shift = random.uniform(-hue, hue)
        adjustments.append(lambda im: _shift_hue(im, shift))
    random.shuffle(adjustments)
    for adjust in adjustments:
        img = adjust(img)
    return img


def _shift_hue(img: Image.Image, shift: float) -> Image.Image:
    h, s, v = img.convert("HSV").split()
    hue = np.asarray(h, dtype=np.uint8) + np.uint8(round(shift * 255) % 256)  # wraps around, as hue does
    return Image.merge("HSV", (Image.fromarray(hue, "L"), s, v)).convert("RGB")


def to_normalized_tensor(img: Image.Image, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """ToTensor + Normalize: uint8 HWC -> float32 CHW in [0, 1] -> (x - mean) / std."""
    x = torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1).float().div_(255)  # (C, H, W)
    return x.sub_(mean[:, None, None]).div_(std[:, None, None])


def random_erasing_(x: torch.Tensor, p: float, fill: Sequence[float] | str, min_area=0.02, max_area=0.4,
                    min_aspect=0.3, tries: int = 100, log_aspect: bool = False) -> torch.Tensor:
    """Zhong et al.'s RandomErasing on a normalized CHW tensor: up to `tries` tries at a box of random area
    and aspect (uniform, or log-uniform with log_aspect) that fits. Paper A's code: 100 tries, uniform
    aspect, the raw per-channel `fill` values; timm's (paper B): 10 tries, log-uniform aspect and fill
    "pixel", per-pixel N(0, 1) noise."""
    if random.random() >= p:
        return x
    channels, height, width = x.shape
    low, high = min_aspect, 1 / min_aspect
    for _ in range(tries):
        target = random.uniform(min_area, max_area) * height * width
        if log_aspect:
            aspect = math.exp(random.uniform(math.log(low), math.log(high)))
        else:
            aspect = random.uniform(low, high)
        h, w = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if w < width and h < height:
            top, left = random.randint(0, height - h), random.randint(0, width - w)
            if isinstance(fill, str):  # "pixel": torch's RNG, seeded per worker by the DataLoader
                x[:, top : top + h, left : left + w] = torch.empty(channels, h, w, dtype=x.dtype).normal_()
            else:
                x[:, top : top + h, left : left + w] = torch.tensor(fill, dtype=x.dtype)[:, None, None]
            return x
    return x


# ---------------------------------------------------------------------------------------------------
# the recipes
# ---------------------------------------------------------------------------------------------------


class FinetuneTransform:
    """Paper A fine-tuning, one PIL image -> normalized float32 [C, size, size]."""

    def __init__(self, size: int, mean: Sequence[float], std: Sequence[float], erase_p: float = 0.25):
        self.size, self.erase_p, self.fill = size, erase_p, list(mean)
        self.mean, self.std = torch.tensor(mean), torch.tensor(std)

    def __call__(self, img: Image.Image) -> torch.Tensor:
        img = random_crop_padded(random_hflip(img), self.size, padding=4)  # the papers' order
        img = cifar10_autoaugment(img)
        x = to_normalized_tensor(img, self.mean, self.std)
        return random_erasing_(x, self.erase_p, self.fill)


class Drloc21Transform:
    """Paper B's training transform, one PIL image -> normalized float32 [C, size, size]: timm's
    create_transform as its build_transform calls it: RandomResizedCrop(size, scale .08-1, bicubic) straight
    from the dataset's images (32 px on CIFAR: no separate upsampling; at size <= 32 RandomCrop(size,
    padding 4) instead, as its build_transform), flip, RandAugment
    rand-m9-mstd0.5-inc1, ToTensor, Normalize, RandomErasing (p .25, pixel mode, area .02-1/3, 10 tries).
    No ColorJitter: timm skips it when RandAugment is on."""

    def __init__(self, size: int, mean: Sequence[float], std: Sequence[float], erase_p: float = 0.25):
        self.size, self.erase_p = size, erase_p
        self.mean, self.std = torch.tensor(mean), torch.tensor(std)
        # timm's img_mean hparam: the normalization mean in 0..255, rounded
        self.randaugment = RandAugment(fill=[min(255, round(255 * m)) for m in mean])

    def __call__(self, img: Image.Image) -> torch.Tensor:
        if self.size <= 32:  # its build_transform swaps the crop for RandomCrop(size, padding 4) there
            img = random_hflip(random_crop_padded(img, self.size, padding=4))
        else:
            img = random_hflip(random_resized_crop(img, self.size, scale=(0.08, 1.0)))
        img = self.randaugment(img)
        x = to_normalized_tensor(img, self.mean, self.std)
        return random_erasing_(x, self.erase_p, "pixel", max_area=1 / 3, tries=10, log_aspect=True)


class MultiCropTransform:
    """DINO's multi-crop as paper A configures it: 2 global + n_local local views, each normalized."""

    def __init__(self, global_size: int, local_size: int, mean, std, n_local: int = 8,
                 global_scale=(0.7, 1.0), local_scale=(0.2, 0.5)):
        self.global_size, self.local_size, self.n_local = global_size, local_size, n_local
        self.global_scale, self.local_scale = global_scale, local_scale
        self.mean, self.std = torch.tensor(mean), torch.tensor(std)

    def _view(self, img, size, scale, blur_p, solarize_p) -> torch.Tensor:
        img = random_hflip(random_resized_crop(img, size, scale))
        if random.random() < 0.8:
            img = color_jitter(img, 0.4, 0.4, 0.2, 0.1)
        if random.random() < 0.2:
            img = img.convert("L").convert("RGB")
        if random.random() < blur_p:
            img = img.filter(ImageFilter.GaussianBlur(radius=random.uniform(0.1, 2.0)))
        if random.random() < solarize_p:
            img = ImageOps.solarize(img, 128)
        return to_normalized_tensor(img, self.mean, self.std)

    def __call__(self, img: Image.Image) -> list[torch.Tensor]:
        views = [
            self._view(img, self.global_size, self.global_scale, blur_p=1.0, solarize_p=0.0),
            self._view(img, self.global_size, self.global_scale, blur_p=0.1, solarize_p=0.2),
        ]
        views += [
            self._view(img, self.local_size, self.local_scale, blur_p=0.5, solarize_p=0.0)
            for _ in range(self.n_local)
        ]
        return views


def mixup_cutmix(x: torch.Tensor, labels: torch.Tensor, *, num_classes: int, rng: np.random.Generator,
                 mixup_alpha=1.0, cutmix_alpha=1.0, prob=0.5, switch_prob=0.5, smoothing=0.1,
                 partners: str = "permutation"):
    """The papers' batch mixing: with probability `prob` the batch is mixed with its partners, by CutMix
    (probability `switch_prob`, box area 1 - lam, clipped, lam corrected to the clipped area) or Mixup,
    lam ~ Beta(alpha, alpha). Partners: a random permutation (paper A's training loop) or "flip", the
    batch reversed (timm's Mixup in batch mode, paper B). Paper A mixes the two label-smoothed losses with
    weights lam, 1 - lam; the same thing as one loss on these mixed smoothed one-hot targets (timm's)."""
    off, on = smoothing / num_classes, 1 - smoothing + smoothing / num_classes
    one_hot = torch.full((len(labels), num_classes), off).scatter_(1, labels[:, None], on)
    if partners not in ("permutation", "flip"):
        raise ValueError(f"partners must be 'permutation' or 'flip', got {partners!r}")
    if partners == "flip" and len(labels) % 2:
        raise ValueError(f"timm's Mixup needs an even batch, got {len(labels)}")
    if rng.random() >= prob:
        return x, one_hot
    if partners == "flip":
        partner = torch.arange(len(labels) - 1, -1, -1)
    else:
        partner = torch.from_numpy(rng.permutation(len(labels)))
    if rng.random() < switch_prob:
        lam = rng.beta(cutmix_alpha, cutmix_alpha)
        height, width = x.shape[-2:]
        cut_h, cut_w = int(height * math.sqrt(1 - lam)), int(width * math.sqrt(1 - lam))
        cy, cx = rng.integers(height), rng.integers(width)
        top, bottom = np.clip(cy - cut_h // 2, 0, height), np.clip(cy + cut_h // 2, 0, height)
        left, right = np.clip(cx - cut_w // 2, 0, width), np.clip(cx + cut_w // 2, 0, width)
        x[:, :, top:bottom, left:right] = x[partner, :, top:bottom, left:right]
        lam = 1 - (bottom - top) * (right - left) / (height * width)
    else:
        lam = rng.beta(mixup_alpha, mixup_alpha)
        x = lam * x + (1 - lam) * x[partner]
    lam = float(lam)
    return x, one_hot * lam + one_hot[partner] * (1 - lam)


# timm's Mixup as paper B's code builds it (batch mode, prob 1, label smoothing .1)
DRLOC21_MIXING = dict(mixup_alpha=0.8, cutmix_alpha=1.0, prob=1.0, switch_prob=0.5, smoothing=0.1, partners="flip")


# ---------------------------------------------------------------------------------------------------
# DataLoaders
# ---------------------------------------------------------------------------------------------------


class ArrayDataset(Dataset):
    """uint8 [N, H, W, C] images as PIL images through a per-sample transform."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform):
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        return self.transform(Image.fromarray(self.images[i])), int(self.labels[i])


def _seed_worker(worker_id: int) -> None:
    # DataLoader seeds torch and `random` per worker; numpy too, so every op is seeded.
    np.random.seed(torch.initial_seed() % 2**32)


def _loader(dataset, batch_size, num_workers, seed) -> DataLoader:
    return DataLoader(
        dataset, batch_size=batch_size, shuffle=True, drop_last=True, num_workers=num_workers,
        persistent_workers=num_workers > 0, worker_init_fn=_seed_worker, pin_memory=torch.cuda.is_available(),
        generator=torch.Generator().manual_seed(seed),
    )


def _forever(loader: DataLoader) -> Iterator:
    if len(loader) == 0:  # drop_last: an endless loop that yields nothing otherwise
        raise ValueError(f"{len(loader.dataset)} images make no full batch of {loader.batch_size}")
    while True:
        yield from loader


def _mixed_batches(transform, images, labels, *, batch_size, num_classes, num_workers, seed, **mixing):
    loader = _loader(ArrayDataset(images, labels, transform), batch_size, num_workers, seed)
    rng = np.random.default_rng(seed)
    for x, y in _forever(loader):
        yield mixup_cutmix(x, y, num_classes=num_classes, rng=rng, **mixing)


def finetune_loader(images: np.ndarray, labels: np.ndarray, *, batch_size: int, num_classes: int,
                    mean, std, num_workers: int = 2, seed: int = 0) -> Iterator:
    """Endless (images float32 [B, C, H, W], soft targets [B, num_classes]) batches, paper A fine-tuning."""
    return _mixed_batches(FinetuneTransform(images.shape[1], mean, std), images, labels, batch_size=batch_size,
                          num_classes=num_classes, num_workers=num_workers, seed=seed)


def drloc21_loader(images: np.ndarray, labels: np.ndarray, *, batch_size: int, num_classes: int, mean, std,
                   size: int = 224, num_workers: int = 2, seed: int = 0) -> Iterator:
    """Endless (images float32 [B, C, size, size], soft targets [B, num_classes]) batches, paper B's
    training: `Drloc21Transform` per image, timm's Mixup on the batch."""
    return _mixed_batches(Drloc21Transform(size, mean, std), images, labels, batch_size=batch_size,
                          num_classes=num_classes, num_workers=num_workers, seed=seed, **DRLOC21_MIXING)


def multicrop_loader(images: np.ndarray, labels: np.ndarray, *, batch_size: int, mean, std,
                     global_size: int, local_size: int, n_local: int = 8, num_workers: int = 2,
                     seed: int = 0) -> Iterator:
    """Endless lists of 2 + n_local view batches (float32 [B, C, size, size]), DINO multi-crop."""
    transform = MultiCropTransform(global_size, local_size, mean, std, n_local=n_local)
    for views, _ in _forever(_loader(ArrayDataset(images, labels, transform), batch_size, num_workers, seed)):
        yield views
