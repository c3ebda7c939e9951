"""Batched augmentation: identities, statistics over many samples, PIL references, seeding."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from fastvit.loaders import augment as A

from fastvit.errors import UserError

MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2470, 0.2435, 0.2616)


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def images(b=16, c=3, h=32, w=32, seed=0):
    return torch.randint(0, 256, (b, c, h, w), dtype=torch.uint8, generator=gen(seed))


# ---------------------------------------------------------------------------------------------------
# sizing, normalization, eval


def test_fit_to_size_same_size_is_identity():
    x = images()
    assert A.fit_to_size(x, 32) is x


def test_fit_to_size_pads_28_to_32_centered():
    x = images(c=1, h=28, w=28)
    y = A.fit_to_size(x, 32)
    assert y.shape == (16, 1, 32, 32) and y.dtype == torch.uint8
    assert torch.equal(y[:, :, 2:30, 2:30], x)
    border = torch.ones(32, 32, dtype=torch.bool)
    border[2:30, 2:30] = False
    assert int(y[:, :, border].abs().sum()) == 0


def test_fit_to_size_resizes_32_to_224_bicubic():
    x = images(b=2)
    y = A.fit_to_size(x, 224)
    ref = F.interpolate(x.double(), size=(224, 224), mode="bicubic", align_corners=False)
    ref = ref.round().clamp(0, 255)
    assert y.dtype == torch.uint8 and y.shape == (2, 3, 224, 224)
    assert (y.double() - ref).abs().max() <= 1


def test_fit_to_size_shrinks_with_antialias():
    # a 2-px checkerboard averages to flat grey when shrunk 4x with antialiasing
    x = ((torch.arange(64).view(1, 64) + torch.arange(64).view(64, 1)) % 2 * 255).to(torch.uint8)
    y = A.fit_to_size(x.view(1, 1, 64, 64), 16)
    assert (y.float() - 127.5).abs().max() <= 2


def test_normalize_matches_reference_and_rejects_bad_stats():
    x = images()
    y = A.Normalize(MEAN, STD)(x)
    ref = (x.double() / 255 - torch.tensor(MEAN, dtype=torch.float64).view(1, 3, 1, 1)) / torch.tensor(
        STD, dtype=torch.float64).view(1, 3, 1, 1)
    assert y.dtype == torch.float32
    assert (y.double() - ref).abs().max() < 1e-5
    with pytest.raises(UserError, match="std must be positive"):
        A.Normalize(MEAN, (0.2, 0.0, 0.2))
    with pytest.raises(UserError, match="1-channel images need a 1-value mean"):
        A.Normalize(MEAN, STD)(images(c=1))


def test_eval_transform_pads_and_normalizes_grayscale():
    x = images(c=1, h=28, w=28)
    t = A.build_eval_transform(img_size=32, mean=(0.5,), std=(0.25,))
    y = t(x)
    assert y.shape == (16, 1, 32, 32) and y.dtype == torch.float32
    assert torch.allclose(y[:, :, 2:30, 2:30], (x.float() / 255 - 0.5) / 0.25, atol=1e-5)
    assert torch.allclose(y[:, :, 0, :], torch.full((16, 1, 32), -2.0))


# ---------------------------------------------------------------------------------------------------
# crop + flip


def test_random_crop_zero_padding_is_identity_without_flip():
    x = images()
    assert torch.equal(A.random_crop(x, 32, padding=0, generator=gen()), x)


def test_random_crop_matches_padded_slices_and_offsets_are_uniform():
    x = images(b=4000, c=1, h=8, w=8)
    g = gen(3)
    y = A.random_crop(x, 8, padding=2, flip_p=0.5, generator=g)
    # recover each sample's offset and flip by matching against every candidate
    xp = F.pad(x, (2, 2, 2, 2))
    found = torch.full((4000,), -1)
    for t in range(5):
        for l in range(5):
            for f in (0, 1):
                cand = xp[:, :, t:t + 8, l:l + 8]
                if f:
                    cand = cand.flip(3)
                hit = (cand == y).flatten(1).all(1) & (found < 0)
                found[hit] = (t * 5 + l) * 2 + f
    assert bool((found >= 0).all()), "every output is a padded crop, maybe mirrored"
    counts = torch.bincount(found // 2, minlength=25).double()
    # 25 equally likely offsets: chi-square with 24 dof stays below 51 (p = 0.001)
    chi2 = ((counts - 160) ** 2 / 160).sum()
    assert chi2 < 51
    flip_rate = (found % 2).double().mean()
    assert abs(flip_rate - 0.5) < 0.03


def test_random_hflip_probability():
    x = images(b=4000, c=1, h=2, w=4)
    y = A.random_hflip(x, p=0.3, generator=gen(1))
    flipped = (y == x.flip(3)).flatten(1).all(1) & ~(y == x).flatten(1).all(1)
    assert abs(flipped.double().mean() - 0.3) < 0.03
    assert torch.equal(A.random_hflip(x, p=0.0, generator=gen(1)), x)


# ---------------------------------------------------------------------------------------------------
# recipes: API, seeding


def test_basic_recipe_shapes_seeding_and_labels():
    x, y = images(b=32), torch.arange(32)
    t = A.build_train_transform("basic", img_size=32, mean=MEAN, std=STD, num_classes=10)
    a, ta = t(x, y, gen(5))
    b, _ = t(x, y, gen(5))
    c, _ = t(x, y, gen(6))
    assert a.shape == (32, 3, 32, 32) and a.dtype == torch.float32
    assert torch.equal(ta, y) and ta.dtype == torch.int64
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_basic_recipe_fits_28px_grayscale_to_32():
    x = images(b=8, c=1, h=28, w=28)
    t = A.build_train_transform("basic", img_size=32, mean=(0.286,), std=(0.353,), num_classes=10)
    out, _ = t(x, torch.zeros(8, dtype=torch.long), gen())
    assert out.shape == (8, 1, 32, 32)


def test_build_train_transform_rejects_unknown_recipe_and_params():
    with pytest.raises(UserError, match="unknown augmentation recipe 'nope'; choose one of: basic"):
        A.build_train_transform("nope", img_size=32, mean=MEAN, std=STD, num_classes=10)
    with pytest.raises(UserError, match="unknown augmentation parameter.*mixup_alfa"):
        A.build_train_transform("basic", img_size=32, mean=MEAN, std=STD, num_classes=10, mixup_alfa=1)
    with pytest.raises(UserError, match="images must be uint8"):
        A.build_eval_transform(img_size=32, mean=MEAN, std=STD)(images().float())


def test_pipeline_numpy_free_reference_of_basic_recipe():
    # the transform equals crop-then-normalize done by hand with the same draws
    x = images(b=8)
    g1, g2 = gen(9), gen(9)
    t = A.build_train_transform("basic", img_size=32, mean=MEAN, std=STD, num_classes=10)
    out, _ = t(x, torch.zeros(8, dtype=torch.long), g1)
    crop = A.random_crop(x, 32, padding=4, flip_p=0.5, generator=g2)
    ref = A.Normalize(MEAN, STD)(crop)
    assert torch.equal(out, ref)
    assert np.isfinite(out.numpy()).all()
