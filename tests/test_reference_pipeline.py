"""benchmarks.reference_pipeline, paper B's side: timm's RandAugment (rand-m9-mstd0.5-inc1), RandomErasing in
pixel mode and batch Mixup as paper B's code configures them, checked against direct PIL / torch computations of
timm's rules, and one reference Swin-T + L_drloc step through them."""

import math
import pickle
import random

import numpy as np
import pytest
import torch
from PIL import Image, ImageEnhance, ImageOps

from benchmarks.reference_pipeline import (
    DRLOC21_MIXING,
    RAND_INCREASING,
    Drloc21Transform,
    RandAugment,
    drloc21_loader,
    mixup_cutmix,
    random_erasing_,
)
from benchmarks.reference_train import IMAGENET_MEAN, IMAGENET_STD, supervised_step

FILL = (124, 116, 104)  # timm's img_mean: round(255 * ImageNet mean)
BICUBIC = Image.BICUBIC


def noise_image(seed=0, size=32):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8))


def _solarize_add(img, add):  # timm: levels below 128 get + add, capped at 255
    return img.point([min(255, v + add) if v < 128 else v for v in range(256)] * 3)


def _affine(data):
    return lambda img: img.transform(img.size, Image.AFFINE, data, BICUBIC, fillcolor=FILL)


def _enhanced(enhancer):  # factor 1 +- (m / 10) * 0.9
    return lambda m, s: lambda img: enhancer(img).enhance(1 + s * {9: 0.81, 10: 0.9, 0: 0.0}[m])


# timm's argument of each increasing op at magnitude 9 and at the clipped ends 10 and 0, written out by hand;
# s is the drawn sign. Geometric ops: bicubic (interpolation="bicubic") and fill img_mean.
EXPECTED = {
    "AutoContrast": lambda m, s: ImageOps.autocontrast,
    "Equalize": lambda m, s: ImageOps.equalize,
    "Invert": lambda m, s: ImageOps.invert,
    "Rotate": lambda m, s: lambda img: img.rotate(s * {9: 27.0, 10: 30.0, 0: 0.0}[m], resample=BICUBIC,
                                                  fillcolor=FILL),
    # 0 bits (m 10): black, as the PIL of the papers' time computed it (today's PIL refuses 0 bits)
    "PosterizeIncreasing": lambda m, s: lambda img: (ImageOps.posterize(img, {9: 1, 0: 4}[m]) if m != 10
                                                     else Image.new("RGB", img.size)),
    "SolarizeIncreasing": lambda m, s: lambda img: ImageOps.solarize(img, {9: 26, 10: 0, 0: 256}[m]),
    "SolarizeAdd": lambda m, s: lambda img: _solarize_add(img, {9: 99, 10: 110, 0: 0}[m]),
    "ColorIncreasing": _enhanced(ImageEnhance.Color),
    "ContrastIncreasing": _enhanced(ImageEnhance.Contrast),
    "BrightnessIncreasing": _enhanced(ImageEnhance.Brightness),
    "SharpnessIncreasing": _enhanced(ImageEnhance.Sharpness),
    "ShearX": lambda m, s: _affine((1, s * {9: 0.27, 10: 0.3, 0: 0}[m], 0, 0, 1, 0)),
    "ShearY": lambda m, s: _affine((1, 0, 0, s * {9: 0.27, 10: 0.3, 0: 0}[m], 1, 0)),
    "TranslateXRel": lambda m, s: _affine((1, 0, s * {9: 0.405, 10: 0.45, 0: 0}[m] * 32, 0, 1, 0)),
    "TranslateYRel": lambda m, s: _affine((1, 0, 0, 0, 1, s * {9: 0.405, 10: 0.45, 0: 0}[m] * 32)),
}


def test_the_op_set_is_timms_increasing_set():
    assert list(RAND_INCREASING) == list(EXPECTED)
    assert {n for n, (_, _, signed) in RAND_INCREASING.items() if signed} == {
        "Rotate", "ColorIncreasing", "ContrastIncreasing", "BrightnessIncreasing", "SharpnessIncreasing",
        "ShearX", "ShearY", "TranslateXRel", "TranslateYRel"}


@pytest.mark.parametrize("name", list(EXPECTED))
@pytest.mark.parametrize("magnitude", [9, 10, 0])
def test_each_randaugment_op_is_timms_pil_call_with_its_sign_and_fill(name, magnitude):
    ra = RandAugment(fill=FILL)
    img = noise_image(magnitude)
    for sign in (1, -1):
        got = np.asarray(ra.apply(img, name, float(magnitude), sign))
        want = np.asarray(EXPECTED[name](magnitude, sign)(img))
        assert got.shape == (32, 32, 3) and np.array_equal(got, want), (name, magnitude, sign)


def test_geometric_ops_fill_with_the_mean_colour_and_flip_with_the_sign():
    ra, img = RandAugment(fill=FILL), noise_image(1)
    sheared = np.asarray(ra.apply(img, "ShearX", 9.0, 1))  # input x = x + 0.27 y: the bottom right is outside
    assert tuple(sheared[-1, -1]) == FILL and tuple(sheared[0, -1]) != FILL
    assert tuple(np.asarray(ra.apply(img, "ShearX", 9.0, -1))[-1, 0]) == FILL
    assert tuple(np.asarray(ra.apply(img, "Rotate", 9.0, 1))[0, 0]) == FILL
    moved = np.asarray(ra.apply(img, "TranslateXRel", 10.0, 1))  # 14.4 px: the content moves left
    assert (moved[:, -14:] == FILL).all() and (moved[:, :17] != FILL).any(axis=-1).all()


def test_a_call_draws_two_ops_with_replacement_then_apply_magnitude_and_sign_as_timm():
    img = noise_image(2)
    for seed in range(30):
        ra = RandAugment(fill=FILL)
        np.random.seed(seed)
        random.seed(seed)
        got = np.asarray(ra(img))
        # timm: np.random.choice(ops, 2) (replace=True); per op: random() > p skips it, gauss magnitude
        # clipped to [0, 10], then the sign: negative when random() > 0.5 (signed ops only)
        np.random.seed(seed)
        random.seed(seed)
        want = img
        for name in np.random.choice(list(EXPECTED), 2, replace=True):
            if random.random() > 0.5:
                continue
            m = min(10.0, max(0.0, random.gauss(9, 0.5)))
            s = -1 if RAND_INCREASING[name][2] and random.random() > 0.5 else 1
            want = ra.apply(want, name, m, s)
        assert np.array_equal(got, np.asarray(want)), seed


def test_the_magnitude_noise_is_clipped_to_0_10():
    random.seed(0)
    high = [RandAugment(FILL, magnitude=9.8).draw_magnitude() for _ in range(4000)]
    low = [RandAugment(FILL, magnitude=0.2).draw_magnitude() for _ in range(4000)]
    assert max(high) == 10.0 and min(low) == 0.0 and 0 <= min(high) and max(low) <= 10
    # P(N(9.8, 0.5) > 10) = P(Z > 0.4) = 0.345: that share sits exactly at the bound
    assert 0.31 < high.count(10.0) / 4000 < 0.38 and 0.31 < low.count(0.0) / 4000 < 0.38
    nine = np.array([RandAugment(FILL).draw_magnitude() for _ in range(4000)])
    assert abs(nine.mean() - 9) < 0.03 and 0.45 < nine.std() < 0.52
    assert RandAugment(FILL, std=0.0).draw_magnitude() == 9.0


def test_drloc21_transform_makes_224_px_float32_from_32_px_and_normalizes_with_imagenet_stats():
    t = Drloc21Transform(224, IMAGENET_MEAN, IMAGENET_STD)
    assert (t.randaugment.fill, t.randaugment.resample) == (FILL, BICUBIC)
    assert pickle.loads(pickle.dumps(t)).randaugment.fill == FILL  # for DataLoader workers that are spawned
    random.seed(0)
    np.random.seed(0)
    x = t(noise_image(3))
    assert x.shape == (3, 224, 224) and x.dtype == torch.float32
    t = Drloc21Transform(224, IMAGENET_MEAN, IMAGENET_STD, erase_p=0.0)
    t.randaugment.p = 0.0  # ops forced off: crop, flip and normalization of a constant image
    colour = (200, 100, 30)
    x = t(Image.new("RGB", (32, 32), colour))
    want = (torch.tensor(colour) / 255 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    torch.testing.assert_close(x, want[:, None, None].expand(3, 224, 224), rtol=0, atol=1e-6)


def test_drloc21_transform_at_32_px_crops_with_zero_padding_as_paper_b_build_transform():
    t = Drloc21Transform(32, IMAGENET_MEAN, IMAGENET_STD, erase_p=0.0)
    t.randaugment.p = 0.0
    colour = (200, 100, 30)
    mean, std = torch.tensor(IMAGENET_MEAN)[:, None], torch.tensor(IMAGENET_STD)[:, None]
    image, pad = ((torch.tensor(colour)[:, None] / 255 - mean) / std), (-mean / std)
    random.seed(1)
    padded = 0
    for _ in range(40):
        x = t(Image.new("RGB", (32, 32), colour)).flatten(1)  # (3, 32 * 32)
        assert x.shape == (3, 1024)
        is_image = (x - image).abs().amax(0) < 1e-5
        is_pad = (x - pad).abs().amax(0) < 1e-5
        assert bool((is_image | is_pad).all())  # a crop of the image in its zero border, nothing resampled
        padded += int(is_pad.any())
    # offsets uniform over 9 x 9 positions: 80 in 81 show some border (a RandomResizedCrop of a constant
    # image never does)
    assert padded >= 30


def test_pixel_erasing_writes_normal_noise_in_one_box_of_the_allowed_area_and_aspect():
    torch.manual_seed(0)
    random.seed(0)
    tall = 0
    for _ in range(300):
        x = torch.full((3, 224, 224), 7.0)
        random_erasing_(x, 1.0, "pixel", max_area=1 / 3, tries=10, log_aspect=True)
        changed = x != 7.0
        rows, cols = changed.any(dim=(0, 2)).nonzero()[:, 0], changed.any(dim=(0, 1)).nonzero()[:, 0]
        h, w = len(rows), len(cols)
        assert rows[-1] - rows[0] + 1 == h and cols[-1] - cols[0] + 1 == w  # one contiguous box ...
        box = x[:, rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
        assert changed.sum() == 3 * h * w  # ... all of it, in every channel, and nothing outside
        assert 0.02 * 224 * 224 - (h + w) <= h * w <= 224 * 224 / 3 + (h + w)  # area 0.02 - 1/3, rounded sides
        assert 0.3 * w - 1.5 <= h <= w / 0.3 + 1.5
        assert abs(box.mean()) < 0.1 and abs(box.std() - 1) < 0.05  # N(0, 1) noise (>= 3000 values)
        tall += h > w
    assert 0.4 < tall / 300 < 0.6  # log-uniform aspect: as many tall as wide boxes (uniform aspect: ~80% tall)
    x = torch.zeros(3, 8, 8)
    assert torch.equal(random_erasing_(x, 0.0, "pixel", tries=10, log_aspect=True), torch.zeros(3, 8, 8))


def test_drloc21_mixing_always_mixes_with_the_flipped_batch_and_its_box_corrected_lam():
    b, h, w, classes, smoothing = 8, 16, 16, 10, 0.1
    labels = torch.tensor([0, 1, 2, 3, 4, 5, 6, 7])
    smooth = torch.full((b, classes), smoothing / classes).scatter_(1, labels[:, None], 1 - smoothing + 0.01)
    seen = {"cutmix": 0, "mixup": 0, "clipped": 0}
    for seed in range(60):
        x = torch.arange(b, dtype=torch.float32).view(b, 1, 1, 1).expand(b, 3, h, w).clone()
        mixed, targets = mixup_cutmix(x, labels, num_classes=classes, rng=np.random.default_rng(seed),
                                      **DRLOC21_MIXING)
        # timm's draws: mixed if rand < prob (1.0: always), CutMix if rand < .5, lam ~ Beta, box centre
        draws = np.random.default_rng(seed)
        draws.random()  # mixed when below prob, which is 1.0: always
        if draws.random() < 0.5:
            lam = draws.beta(1.0, 1.0)
            cut_h, cut_w = int(h * math.sqrt(1 - lam)), int(w * math.sqrt(1 - lam))
            cy, cx = draws.integers(h), draws.integers(w)
            y0, y1 = np.clip([cy - cut_h // 2, cy + cut_h // 2], 0, h)
            x0, x1 = np.clip([cx - cut_w // 2, cx + cut_w // 2], 0, w)
            inside = torch.zeros(h, w, dtype=torch.bool)
            inside[y0:y1, x0:x1] = True
            for i in range(b):  # the partner of sample i is b-1-i, inside the box only
                assert (mixed[i][:, inside] == b - 1 - i).all() and (mixed[i][:, ~inside] == i).all()
            lam = 1 - (y1 - y0) * (x1 - x0) / (h * w)
            seen["cutmix"] += 1
            seen["clipped"] += (y1 - y0) * (x1 - x0) < cut_h * cut_w
            empty = (y1 - y0) * (x1 - x0) == 0  # lam near 1: a box of side < 2 px halves to nothing, as in timm
        else:
            lam = draws.beta(0.8, 0.8)
            want = lam * torch.arange(8.0) + (1 - lam) * torch.arange(7.0, -1, -1)
            torch.testing.assert_close(mixed[:, 0, 0, 0], want)
            seen["mixup"] += 1
            empty = False
        torch.testing.assert_close(targets, lam * smooth + (1 - lam) * smooth.flip(0))
        torch.testing.assert_close(targets.sum(dim=1), torch.ones(b))
        assert torch.equal(targets, smooth) == empty  # prob 1: unmixed only where the CutMix box is empty
    assert seen["cutmix"] > 15 and seen["mixup"] > 15 and seen["clipped"] > 3
    with pytest.raises(ValueError, match="even batch"):
        mixup_cutmix(torch.zeros(3, 3, 4, 4), torch.tensor([0, 1, 2]), num_classes=3, rng=np.random.default_rng(0),
                     **DRLOC21_MIXING)


def test_drloc21_loader_yields_224_px_batches_and_soft_targets_from_32_px_images():
    images = np.random.default_rng(0).integers(0, 256, size=(4, 32, 32, 3), dtype=np.uint8)
    x, targets = next(drloc21_loader(images, np.array([1, 2, 3, 4]), batch_size=2, num_classes=10,
                                     mean=IMAGENET_MEAN, std=IMAGENET_STD, num_workers=0))
    assert x.shape == (2, 3, 224, 224) and x.dtype == torch.float32 and targets.shape == (2, 10)
    torch.testing.assert_close(targets.sum(dim=1), torch.ones(2))


def test_supervised_step_runs_paper_b_pipeline_for_swin_t_with_drloc_on_32_px_images():
    images = np.random.default_rng(0).integers(0, 256, size=(2, 32, 32, 3), dtype=np.uint8)
    step, batch = supervised_step("swin_t", images, np.array([1, 2]), batch=2, num_workers=0, drloc=True,
                                  pipeline="drloc21")
    step()  # Swin-T takes 224 px only: the pipeline itself brought the 32-px images there
    assert batch == 2
    with pytest.raises(ValueError, match="unknown reference pipeline 'timm'; one of gani22-finetune, drloc21"):
        supervised_step("swin_t", images, np.array([1, 2]), batch=2, num_workers=0, pipeline="timm")
