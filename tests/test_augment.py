"""Batched augmentation: identities, statistics over many samples, PIL references, seeding."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import fastvit.augment as A
from fastvit.augment import ops as O
from fastvit.augment import policies as P
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
    with pytest.raises(UserError, match="images must be a \\[B, C, H, W\\] batch with C = 1 or 3, got shape"):
        A.build_eval_transform(img_size=32, mean=MEAN, std=STD)(images(c=2))


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


# ---------------------------------------------------------------------------------------------------
# deterministic ops vs PIL


def natural_images(n=4, size=32, channels=3, seed=0):
    """Smooth images with edges (upsampled noise), range inside 20..235, as uint8 numpy [n, H, W, C]."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        base = rng.integers(20, 236, (size // 4, size // 4, channels), dtype=np.uint8)
        mode = "RGB" if channels == 3 else "L"
        img = Image.fromarray(base if channels == 3 else base[..., 0], mode).resize((size, size), Image.BICUBIC)
        arr = np.asarray(img)
        out.append(arr if channels == 3 else arr[..., None])
    return np.stack(out)


def to_batch(arr):
    return torch.from_numpy(np.ascontiguousarray(arr)).permute(0, 3, 1, 2).float()


def pil_batch(arr, fn):
    """Apply a PIL function image by image; back to a float64 [n, C, H, W] tensor."""
    from PIL import Image

    outs = []
    for a in arr:
        img = Image.fromarray(a if a.shape[2] == 3 else a[..., 0])
        r = np.asarray(fn(img)).astype(np.float64)
        outs.append(r if r.ndim == 3 else r[..., None])
    return torch.from_numpy(np.stack(outs)).permute(0, 3, 1, 2)


@pytest.mark.parametrize("channels", [3, 1])
def test_pixel_ops_match_pil_exactly(channels):
    from PIL import ImageOps

    arr = natural_images(channels=channels)
    arr[:, 0, 0] = 0  # a black pixel so thresholds and histograms see both ends
    x = to_batch(arr)
    cases = {
        "invert": (O.invert(x), ImageOps.invert),
        "solarize": (O.solarize(x, 100), lambda im: ImageOps.solarize(im, 100)),
        "solarize_per_sample": (O.solarize(x, torch.tensor([100.0, 150, 200, 256])),
                                None),
        "posterize": (O.posterize(x, 3), lambda im: ImageOps.posterize(im, 3)),
        "equalize": (O.equalize(x), ImageOps.equalize),
        # PIL truncates the stretched values
        "autocontrast": (torch.floor(O.autocontrast(x) + 1e-3), ImageOps.autocontrast),
    }
    for name, (ours, ref_fn) in cases.items():
        if ref_fn is None:
            refs = [pil_batch(arr[i:i + 1], lambda im, t=t: ImageOps.solarize(im, t))
                    for i, t in enumerate([100, 150, 200, 256])]
            ref = torch.cat(refs)
        else:
            ref = pil_batch(arr, ref_fn)
        assert (ours.double() - ref).abs().max() == 0, name


def test_posterize_per_sample_bits_and_zero_bits():
    x = to_batch(natural_images())
    bits = torch.tensor([8.0, 4.0, 1.0, 0.0])
    y = O.posterize(x, bits)
    assert torch.equal(y[0], x[0])
    for i, b in enumerate([4, 1, 0]):
        assert torch.equal(y[i + 1], (x[i + 1].long() & (0xFF << (8 - b)) & 0xFF).float())


def test_equalize_and_autocontrast_leave_flat_images_alone():
    x = torch.full((2, 3, 8, 8), 77.0)
    assert torch.equal(O.equalize(x), x)
    assert torch.equal(O.autocontrast(x), x)


@pytest.mark.parametrize("channels", [3, 1])
def test_enhance_ops_match_pil_within_one_level(channels):
    from PIL import ImageEnhance

    arr = natural_images(channels=channels)
    x = to_batch(arr)
    ops = {"color": (O.adjust_saturation, ImageEnhance.Color),
           "contrast": (O.adjust_contrast, ImageEnhance.Contrast),
           "brightness": (O.adjust_brightness, ImageEnhance.Brightness),
           "sharpness": (O.adjust_sharpness, ImageEnhance.Sharpness)}
    for name, (ours, pil_cls) in ops.items():
        for f in (0.1, 0.6, 1.9):
            ref = pil_batch(arr, lambda im, c=pil_cls, f=f: c(im).enhance(f))
            # PIL rounds (or truncates) uint8 after the blend; these ops keep floats
            diff = (ours(x, torch.full((4,), f)).round().double() - ref).abs()
            assert diff.max() <= 1, (name, f)
        assert torch.equal(ours(x, 1.0), x), f"{name} at factor 1 is the identity"


def test_grayscale_matches_pil_convert_l():
    arr = natural_images()
    ref = pil_batch(arr, lambda im: im.convert("L"))
    # PIL's fixed-point luma can round a .5 the other way
    diff = (O.rgb_to_gray(to_batch(arr)).round().double() - ref).abs()
    assert diff.max() <= 1 and (diff == 0).double().mean() > 0.99
    g = O.grayscale(to_batch(arr))
    assert g.shape == (4, 3, 32, 32) and torch.equal(g[:, 0], g[:, 2])


def test_affine_nearest_matches_pil_transform_exactly():
    from PIL import Image

    arr = natural_images()
    x = to_batch(arr)
    fill = (128, 128, 128)
    deg = torch.tensor([10.0, -27.0, 45.0, 90.0])
    ours = O.affine(x, O.rotate_matrix(deg, 32, 32), fill=128)
    ref = torch.cat([pil_batch(arr[i:i + 1], lambda im, d=float(d): im.rotate(d, fillcolor=fill))
                     for i, d in enumerate(deg)])
    assert (ours.double() - ref).abs().max() == 0
    # translations by whole and half pixels (PIL takes floor at exact ties) and nearest shears
    for data in [(1, 0, 5.0, 0, 1, 0), (1, 0, 0, 0, 1, -7.3), (1, 0, 14.5, 0, 1, 14.5), (1, -0.2, 0, 0, 1, 0),
                 (1, 0, 0, 0.3, 1, 0)]:
        m = torch.tensor(data, dtype=torch.float32).view(1, 2, 3).expand(4, 2, 3)
        ours = O.affine(x, m, fill=(10, 20, 30))
        ref = pil_batch(arr, lambda im, d=data: im.transform(im.size, Image.AFFINE, d, Image.NEAREST,
                                                             fillcolor=(10, 20, 30)))
        assert (ours.double() - ref).abs().max() == 0, data


def test_affine_bilinear_matches_pil_away_from_the_edge():
    from PIL import Image

    arr = natural_images()
    x = to_batch(arr)
    for s in (0.3, -0.2):
        ours = O.affine(x, O.shear_x_matrix(torch.full((4,), s)), fill=128, mode="bilinear")
        ref = pil_batch(arr, lambda im, s=s: im.transform(im.size, Image.AFFINE, (1, s, 0, 0, 1, 0),
                                                          Image.BILINEAR, fillcolor=(128,) * 3))
        # PIL and grid_sample treat the last half pixel at the image edge differently: compare where
        # the source column u = X + s*Y lies at least one pixel inside
        xs = torch.arange(32).view(1, 32) + 0.5
        ys = torch.arange(32).view(32, 1) + 0.5
        u = xs + s * ys
        inner = (u >= 1.0) & (u <= 31.0)
        diff = (ours.round().double() - ref).abs()[:, :, inner]
        assert diff.max() <= 1


def test_affine_identity_and_fill():
    x = to_batch(natural_images())
    eye = torch.eye(2, 3).expand(4, 2, 3)
    for mode in ("nearest", "bilinear", "bicubic"):
        assert (O.affine(x, eye, mode=mode) - x).abs().max() < 1e-3
    far = O.affine(x, O.translate_matrix(torch.full((4,), 100.0), 0.0), fill=(1, 2, 3))
    assert torch.equal(far, torch.tensor([1.0, 2, 3]).view(1, 3, 1, 1).expand(4, 3, 32, 32))


def test_adjust_hue_matches_colorsys():
    import colorsys

    arr = natural_images(n=2, size=8)
    x = to_batch(arr)
    for shift in (0.0, 0.1, -0.37):
        y = O.adjust_hue(x, shift)
        ref = np.empty(arr.shape, dtype=np.float64)
        for idx in np.ndindex(arr.shape[:3]):
            h, s, v = colorsys.rgb_to_hsv(*(arr[idx] / 255.0))
            ref[idx] = np.array(colorsys.hsv_to_rgb((h + shift) % 1.0, s, v)) * 255
        assert (y.double() - torch.from_numpy(ref).permute(0, 3, 1, 2)).abs().max() < 1e-3
    one = to_batch(natural_images(channels=1))
    assert torch.equal(O.adjust_hue(one, 0.3), one)
    assert torch.equal(O.adjust_saturation(one, 0.3), one)


def test_gaussian_blur_matches_scipy_per_sample_sigma():
    from scipy import ndimage

    x = to_batch(natural_images(n=3, size=16))
    sigma = torch.tensor([0.1, 0.8, 2.0])
    y = O.gaussian_blur(x, sigma, radius=6)
    for i, s in enumerate(sigma.tolist()):
        ref = ndimage.gaussian_filter(x[i].double().numpy(), sigma=(0, s, s), mode="mirror", radius=(0, 6, 6))
        assert np.abs(y[i].double().numpy() - ref).max() < 1e-3
    # a tiny sigma is (numerically) the identity
    assert (O.gaussian_blur(x, torch.full((3,), 0.05), radius=3) - x).abs().max() < 1e-3


# ---------------------------------------------------------------------------------------------------
# AutoAugment / RandAugment


def noise_images(b, size=24, c=3, lo=20, hi=236, seed=0):
    # >= 256 pixels per channel, else PIL's equalize is the identity (its step rounds to 0)
    return torch.randint(lo, hi, (b, c, size, size), generator=gen(seed)).float()


def test_autoaugment_magnitude_bins():
    assert [P.autoaugment_magnitude("posterize", i) for i in range(10)] == [8, 8, 7, 7, 6, 6, 5, 5, 4, 4]
    assert P.autoaugment_magnitude("solarize", 0) == 256 and P.autoaugment_magnitude("solarize", 9) == 0
    assert P.autoaugment_magnitude("translate_x", 9) == pytest.approx(150 / 331)
    assert P.autoaugment_magnitude("rotate", 9) == pytest.approx(30)
    assert P.autoaugment_magnitude("shear_y", 3) == pytest.approx(0.1)
    assert P.autoaugment_magnitude("contrast", 9) == pytest.approx(0.9)
    for policy in ("cifar10", "svhn", "imagenet"):
        ops, probs, mags, _, _ = P.autoaugment_tables(policy)
        assert ops.shape == probs.shape == mags.shape == (25, 2)
    with pytest.raises(UserError, match="unknown AutoAugment policy 'mnist'; choose one of: cifar10, svhn"):
        P.autoaugment(noise_images(2), "mnist")


def _single_op(img, name, value, *, fill, mode):
    """One op on one image [1, C, H, W], written per op for the reference loops below."""
    v = torch.tensor([float(value)])
    h, w = img.shape[-2:]
    geometric = {"shear_x": lambda: O.shear_x_matrix(v), "shear_y": lambda: O.shear_y_matrix(v),
                 "translate_x": lambda: O.translate_matrix(v * w, 0.0),
                 "translate_y": lambda: O.translate_matrix(0.0, v * h),
                 "rotate": lambda: O.rotate_matrix(v, h, w)}
    if name in geometric:
        return O.affine(img, geometric[name](), fill=fill, mode=mode[name])
    simple = {"invert": O.invert, "autocontrast": O.autocontrast, "equalize": O.equalize}
    if name in simple:
        return simple[name](img)
    fn = {"solarize": O.solarize, "solarize_add": O.solarize_add, "posterize": O.posterize,
          "color": O.adjust_saturation, "contrast": O.adjust_contrast, "brightness": O.adjust_brightness,
          "sharpness": O.adjust_sharpness}[name]
    return fn(img, float(value))


@pytest.mark.parametrize("channels", [3, 1])
def test_apply_op_slot_gives_each_sample_exactly_its_op(channels):
    # every op of both policies (and ColorJitter's hue) on two samples each, plus untouched samples
    names = list(dict.fromkeys(P.RANDAUGMENT_OPS + P.AUTOAUGMENT_OPS)) + ["hue"]
    op = torch.tensor(list(range(len(names))) * 2 + [-1] * 4)
    b = op.numel()
    x = to_batch(natural_images(n=b, size=16, channels=channels, seed=3))
    value = torch.rand(b, generator=gen(2)) * 0.2 + 0.1  # shear / translate / hue / blend-offset sized
    big = {"rotate": 20.0, "posterize": 3.0, "solarize": 120.0, "solarize_add": 40.0}
    value = torch.tensor([big.get(names[k], 1.0 if names[k] in P.BLEND_OPS else 0.0) if k >= 0 else 0.0
                          for k in op.tolist()]) + value
    value[op == names.index("posterize")] = torch.tensor([3.0, 6.0])  # bits are whole numbers in both policies
    modes = {"shear_x": "bilinear", "shear_y": "nearest", "translate_x": "nearest", "translate_y": "bilinear",
             "rotate": "bilinear"}
    fill = (125.0, 123.0, 114.0)[:channels]
    out = P.apply_op_slot(x, op, value, names, fill=fill, modes=modes)
    for i, k in enumerate(op.tolist()):
        if k < 0:
            assert torch.equal(out[i], x[i]), "no op: the sample is untouched"
            continue
        img = x[i:i + 1]
        if names[k] == "hue":
            ref = O.adjust_hue(img, float(value[i]))
        else:
            ref = _single_op(img, names[k], float(value[i]), fill=fill, mode=modes)
        assert (out[i:i + 1] - ref).abs().max() < 1e-3, names[k]
    with pytest.raises(ValueError, match="unknown op\\(s\\) \\['blur'\\]"):
        P.apply_op_slot(x, op, value, ["blur"])


@pytest.mark.parametrize("policy", ["cifar10", "svhn", "imagenet"])
def test_autoaugment_equals_a_per_image_loop_with_the_same_draws(policy):
    b = 48
    x = to_batch(natural_images(n=b, size=16, seed=1))
    out = P.autoaugment(x, policy, generator=gen(7))
    # reference: the same random stream consumed image by image
    g = gen(7)
    ops, probs, mags, _, _ = P.autoaugment_tables(policy)
    sub = torch.randint(0, 25, (b,), generator=g)
    ref = x.clone()
    # paper A's PIL code: bicubic shear, nearest translate and rotate; rotate never negated
    modes = {"shear_x": "bicubic", "shear_y": "bicubic", "translate_x": "nearest", "translate_y": "nearest",
             "rotate": "nearest"}
    for slot in range(2):
        u = torch.rand(2, b, generator=g)
        for i in range(b):
            s = int(sub[i])
            if u[0, i] >= probs[s, slot]:
                continue
            name = P.AUTOAUGMENT_OPS[int(ops[s, slot])]
            sign = -1.0 if u[1, i] < 0.5 else 1.0
            mag = float(mags[s, slot])
            if name in ("color", "contrast", "brightness", "sharpness"):
                value = 1.0 + sign * mag
            elif name in modes and name != "rotate":
                value = sign * mag
            else:
                value = mag
            ref[i:i + 1] = _single_op(ref[i:i + 1], name, value, fill=128.0, mode=modes)
    assert (out - ref).abs().max() < 1e-3
    assert not torch.equal(out, x)


def test_autoaugment_applies_sub_policies_at_their_probabilities():
    b = 2000
    x = noise_images(b)
    out = P.autoaugment(x, "cifar10", generator=gen(3))
    changed = (out != x).flatten(1).any(1).double().mean()
    # prediction from the table: an op changes a noise image unless its magnitude makes it the identity
    ops, probs, mags, _, _ = P.autoaugment_tables("cifar10")
    names = [[P.AUTOAUGMENT_OPS[int(o)] for o in row] for row in ops]

    def active(name, mag):
        if name in ("color", "contrast", "brightness", "sharpness", "shear_x", "shear_y", "translate_x",
                    "translate_y", "rotate"):
            return mag > 0
        return not ((name == "solarize" and mag >= 256) or (name == "posterize" and mag >= 8))

    p_unchanged = [np.prod([1 - float(probs[s, k]) * active(names[s][k], float(mags[s, k])) for k in range(2)])
                   for s in range(25)]
    assert abs(float(changed) - (1 - np.mean(p_unchanged))) < 0.04


def test_randaugment_levels_match_timm():
    m = torch.tensor([9.0, 0.0, 10.0])
    v = P.randaugment_values(m, torch.ones(3))
    row = {n: v[i].tolist() for i, n in enumerate(P.RANDAUGMENT_OPS)}
    assert row["rotate"] == pytest.approx([27.0, 0.0, 30.0])
    assert row["posterize"] == [1.0, 4.0, 0.0]  # 4 - int(4 m / 10)
    assert row["solarize"] == [26.0, 256.0, 0.0]  # 256 - int(256 m / 10)
    assert row["solarize_add"] == [99.0, 0.0, 110.0]
    assert row["contrast"] == pytest.approx([1.81, 1.0, 1.9])
    assert row["shear_x"] == pytest.approx([0.27, 0.0, 0.3])
    assert row["translate_y"] == pytest.approx([0.405, 0.0, 0.45])
    neg = P.randaugment_values(torch.tensor([9.0]), -torch.ones(1))
    assert neg[P.RANDAUGMENT_OPS.index("brightness"), 0] == pytest.approx(0.19)


@pytest.mark.parametrize("interpolation", ["bicubic", "bilinear"])
def test_randaugment_equals_a_per_image_loop_with_the_same_draws(interpolation):
    b, fill = 48, (125.0, 123.0, 114.0)
    x = to_batch(natural_images(n=b, size=16, seed=2))
    out = P.randaugment(x, generator=gen(11), magnitude=9, magnitude_std=0.5, fill=fill, interpolation=interpolation)
    g = gen(11)
    ref = x.clone()
    modes = dict.fromkeys(P.GEOMETRIC_OPS, interpolation)
    for _ in range(2):
        op = torch.randint(0, len(P.RANDAUGMENT_OPS), (b,), generator=g)
        u = torch.rand(2, b, generator=g)
        m = (9.0 + 0.5 * torch.randn(b, generator=g)).clamp(0, 10)
        for i in range(b):
            if u[0, i] >= 0.5:
                continue
            sign = -1.0 if u[1, i] < 0.5 else 1.0
            value = P.randaugment_values(m[i:i + 1], torch.tensor([sign]))[int(op[i]), 0]
            ref[i:i + 1] = _single_op(ref[i:i + 1], P.RANDAUGMENT_OPS[int(op[i])], value, fill=fill, mode=modes)
    assert (out - ref).abs().max() < 1e-3


def test_randaugment_probability_and_zero_strength():
    x = noise_images(2000)
    out = P.randaugment(x, generator=gen(4))
    # two ops, each applied with p = 0.5, each changes a noise image at magnitude ~9
    changed = (out != x).flatten(1).any(1).double().mean()
    assert abs(float(changed) - 0.75) < 0.04
    assert torch.equal(P.randaugment(x, generator=gen(4), p=0.0), x)
    # at magnitude 0 only the magnitude-free ops (and 4-bit posterize) change anything
    small = noise_images(400)
    out0 = P.randaugment(small, generator=gen(5), magnitude=0, magnitude_std=0, num_ops=1, p=1.0)
    g = gen(5)
    op = torch.randint(0, len(P.RANDAUGMENT_OPS), (400,), generator=g)
    moving = {P.RANDAUGMENT_OPS.index(n) for n in ("autocontrast", "equalize", "invert", "posterize")}
    same = (out0 - small).abs().flatten(1).amax(1) < 1e-3  # grid_sample at identity is exact to ~1e-5
    for i in range(400):
        assert bool(same[i]) == (int(op[i]) not in moving)


# ---------------------------------------------------------------------------------------------------
# RandomResizedCrop


@pytest.mark.parametrize("mode", ["bilinear", "bicubic"])
def test_resample_boxes_equals_torchvision_crop_then_resize(mode):
    b = 12
    g = gen(2)
    x = images(b=b, h=24, w=30)
    top = torch.randint(0, 8, (b,), generator=g)
    left = torch.randint(0, 8, (b,), generator=g)
    h = torch.randint(3, 17, (b,), generator=g)
    w = torch.randint(3, 23, (b,), generator=g)
    flip = torch.rand(b, generator=g) < 0.5
    for size in (8, 16, 40):  # shrinking (antialiased), mixed, enlarging
        out = A.resample_boxes(x, top, left, h, w, size, interpolation=mode, flip=flip)
        for i in range(b):
            crop = x[i:i + 1, :, top[i]:top[i] + h[i], left[i]:left[i] + w[i]].double()
            ref = F.interpolate(crop, size=(size, size), mode=mode, align_corners=False,
                                antialias=bool(h[i] > size or w[i] > size))
            ref = ref.clamp(0, 255)[0]
            if flip[i]:
                ref = ref.flip(2)
            assert (out[i].double() - ref).abs().max() < 1e-3, (size, i)


def test_random_resized_crop_full_box_is_identity():
    x = images(b=4)
    for mode in ("bilinear", "bicubic"):
        y = A.random_resized_crop(x, 32, scale=(1.0, 1.0), ratio=(1.0, 1.0), interpolation=mode,
                                  generator=gen())
        assert (y - x.float()).abs().max() < 1e-3


def test_resized_crop_boxes_follow_scale_and_ratio():
    n, hgt, wid = 4000, 32, 32
    top, left, h, w = A.resized_crop_boxes(n, hgt, wid, scale=(0.2, 0.5), ratio=(3 / 4, 4 / 3),
                                           generator=gen(1), device="cpu")
    assert bool(((top >= 0) & (left >= 0) & (top + h <= hgt) & (left + w <= wid)).all())
    area = (h * w).double() / (hgt * wid)
    aspect = w.double() / h.double()
    # whole-pixel rounding widens the ranges slightly
    assert area.min() > 0.2 - 0.05 and area.max() < 0.5 + 0.05
    assert aspect.min() > 0.75 * 0.85 and aspect.max() < 4 / 3 / 0.85
    assert abs(float(area.mean()) - 0.35) < 0.01
    # offsets uniform over the free range: mean relative position ~ 1/2
    rel = top.double() / (hgt - h).clamp(min=1).double()
    assert abs(float(rel[hgt - h > 0].mean()) - 0.5) < 0.03
    # no box fits (area 100%, aspect 2..3 on a square image): centre crop with the aspect clamped
    top, left, h, w = A.resized_crop_boxes(5, 32, 32, scale=(1.0, 1.0), ratio=(2.0, 3.0), generator=gen(),
                                           device="cpu")
    assert w.tolist() == [32] * 5 and h.tolist() == [16] * 5 and top.tolist() == [8] * 5


# ---------------------------------------------------------------------------------------------------
# random photometric ops


def test_color_jitter_zero_strength_and_p_zero_are_identity():
    x = images(b=8).float()
    assert torch.equal(A.color_jitter(x, 0, 0, 0, 0, generator=gen()), x)
    assert torch.equal(A.color_jitter(x, 0.4, 0.4, 0.4, 0.1, p=0.0, generator=gen()), x)


def test_color_jitter_brightness_factors_are_uniform_in_range():
    b, s = 4000, 0.4
    x = torch.full((b, 3, 2, 2), 100.0)
    y = A.color_jitter(x, brightness=s, contrast=0, saturation=0, hue=0, generator=gen(2))
    f = (y[:, 0, 0, 0] / 100.0).double()
    assert f.min() >= 1 - s - 1e-6 and f.max() <= 1 + s + 1e-6
    assert abs(float(f.mean()) - 1.0) < 0.01
    assert abs(float(f.var()) - (2 * s) ** 2 / 12) < 0.005


def test_color_jitter_hue_shift_range_and_probability():
    import colorsys

    b, hue = 3000, 0.1
    x = torch.tensor([200.0, 60.0, 40.0]).view(1, 3, 1, 1).expand(b, 3, 2, 2).clone()
    y = A.color_jitter(x, 0, 0, 0, hue, p=0.8, generator=gen(3))
    h0 = colorsys.rgb_to_hsv(200 / 255, 60 / 255, 40 / 255)[0]
    shifts = []
    for px in y[:, :, 0, 0].double().numpy() / 255:
        d = (colorsys.rgb_to_hsv(*px)[0] - h0 + 0.5) % 1.0 - 0.5
        shifts.append(d)
    shifts = np.array(shifts)
    moved = np.abs(shifts) > 1e-6
    assert abs(moved.mean() - 0.8) < 0.03
    assert np.abs(shifts).max() <= hue + 1e-4
    assert abs(shifts[moved].var() - (2 * hue) ** 2 / 12) < 0.0005


def test_color_jitter_on_one_channel_only_touches_brightness_and_contrast():
    x = to_batch(natural_images(n=64, size=8, channels=1))
    y = A.color_jitter(x, 0, 0, 0.9, 0.4, generator=gen())
    assert torch.equal(y, x)
    assert not torch.equal(A.color_jitter(x, 0.4, 0.4, 0.9, 0.4, generator=gen()), x)


def test_color_jitter_order_is_random_per_sample():
    # brightness then contrast differs from contrast then brightness once values clip
    x = to_batch(natural_images(n=400, size=8))
    y = A.color_jitter(x, 0.8, 0.8, 0, 0, generator=gen(5))
    g = gen(5)
    u = torch.rand(5, 400, generator=g)
    fb, fc = u[0] * 1.6 + 0.2, u[1] * 1.6 + 0.2
    bc = O.adjust_contrast(O.adjust_brightness(x, fb), fc)
    cb = O.adjust_brightness(O.adjust_contrast(x, fc), fb)
    first = (y - bc).abs().flatten(1).amax(1) < 1e-3
    second = (y - cb).abs().flatten(1).amax(1) < 1e-3
    assert bool((first | second).all())
    distinct = (bc - cb).abs().flatten(1).amax(1) > 1e-3
    frac_first = first[distinct & ~second].double().sum() / distinct.double().sum()
    assert abs(float(frac_first) - 0.5) < 0.08


def test_random_grayscale_probability_and_output():
    x = to_batch(natural_images(n=2000, size=4, seed=3))
    y = A.random_grayscale(x, p=0.2, generator=gen(1))
    gray = (y[:, 0] == y[:, 1]).flatten(1).all(1) & (y[:, 1] == y[:, 2]).flatten(1).all(1)
    assert abs(float(gray.double().mean()) - 0.2) < 0.03
    assert torch.equal(y[gray], O.grayscale(x[gray]))
    assert torch.equal(y[~gray], x[~gray])
    one = x[:, :1]
    assert torch.equal(A.random_grayscale(one, p=1.0, generator=gen()), one)


def test_random_gaussian_blur_sigma_range_and_probability():
    b = 600
    x = to_batch(natural_images(n=b, size=12, seed=4))
    y = A.random_gaussian_blur(x, p=0.5, sigma=(0.1, 2.0), generator=gen(6))
    g = gen(6)
    sigma = torch.rand(b, generator=g) * 1.9 + 0.1
    hit = torch.rand(b, generator=g) < 0.5
    ref = O.gaussian_blur(x, sigma, radius=6)
    assert torch.equal(y[~hit], x[~hit])
    assert (y[hit] - ref[hit]).abs().max() < 1e-3
    assert abs(float(hit.double().mean()) - 0.5) < 0.05
    # blurring lowers the total variation, more for a larger sigma
    tv = (y[hit].diff(dim=3).abs().mean((1, 2, 3)) / x[hit].diff(dim=3).abs().mean((1, 2, 3))).double()
    corr = np.corrcoef(tv.numpy(), sigma[hit].double().numpy())[0, 1]
    assert tv.max() <= 1.0 + 1e-6 and corr < -0.8


def test_random_solarize_probability_and_threshold():
    x = to_batch(natural_images(n=2000, size=4, seed=5))
    y = A.random_solarize(x, p=0.2, generator=gen(8))
    hit = (y != x).flatten(1).any(1)
    assert abs(float(hit.double().mean()) - 0.2) < 0.03
    assert torch.equal(y[hit], O.solarize(x[hit], 128))


# ---------------------------------------------------------------------------------------------------
# erasing, mixing


def _box_of(mask):
    """Bounding box (h, w) of a 2-D bool mask and whether the mask fills it."""
    rows, cols = mask.any(1).nonzero().view(-1), mask.any(0).nonzero().view(-1)
    h, w = int(rows[-1] - rows[0] + 1), int(cols[-1] - cols[0] + 1)
    return h, w, int(mask.sum()) == h * w


def test_random_erasing_mean_fill_probability_area_and_aspect():
    b = 3000
    x = torch.ones(b, 3, 16, 16)
    y = A.random_erasing(x, p=0.25, max_area=0.4, min_aspect=0.3, mode="mean", generator=gen(1))
    zero = y == 0
    erased = zero.flatten(1).any(1)
    assert abs(float(erased.double().mean()) - 0.25) < 0.03
    assert bool((zero[:, 0] == zero[:, 1]).all() & (zero[:, 0] == zero[:, 2]).all())
    areas, aspects = [], []
    for i in erased.nonzero().view(-1).tolist():
        h, w, full = _box_of(zero[i, 0])
        assert full
        areas.append(h * w / 256)
        aspects.append(h / w)
    # whole-pixel rounding moves the limits by up to about one pixel row/column
    assert min(areas) >= 0.01 and max(areas) <= 0.4 + 0.06
    assert 0.15 < np.mean(areas) < 0.25  # ~ U(0.02, 0.4) on average, a little below from the tries
    assert min(aspects) >= 0.3 * 0.75 and max(aspects) <= (1 / 0.3) / 0.75
    assert torch.equal(A.random_erasing(x, p=0.0, generator=gen()), x)


def test_random_erasing_pixel_fill_is_standard_normal():
    x = torch.full((400, 3, 16, 16), 1000.0)
    y = A.random_erasing(x, p=1.0, mode="pixel", generator=gen(2))
    noise = y[y != 1000.0].double()
    assert noise.numel() > 10000
    assert abs(float(noise.mean())) < 0.03 and abs(float(noise.std()) - 1.0) < 0.03
    with pytest.raises(UserError, match="unknown erase mode 'zeros'; choose one of: mean, pixel"):
        A.random_erasing(x, mode="zeros", generator=gen())


@pytest.mark.parametrize("alpha", [0.2, 0.8, 1.0, 2.0])
def test_sample_beta_matches_scipy(alpha):
    from scipy import stats

    s = A.sample_beta(alpha, 20000, generator=gen(int(alpha * 10))).double().numpy()
    assert s.min() >= 0 and s.max() <= 1
    # float32 rounds a visible share of small-alpha draws near 1 to exactly 1.0, so test the lower
    # half (where float32 is fine) against the conditional law, and the symmetry
    low = s[s < 0.5]
    assert abs(low.size / s.size - 0.5) < 0.015
    ks = stats.kstest(low, lambda v: 2 * stats.beta(alpha, alpha).cdf(v))
    assert ks.statistic < 1.63 / np.sqrt(low.size)  # p = 0.01


def _two_class_batch(b, size=8):
    x = torch.rand(b, 3, size, size, generator=gen(9)) * 4 - 2
    labels = (torch.arange(b) >= b // 2).long()  # every sample's partner (B-1-i) has the other label
    return x, labels


def test_mixup_mixes_images_and_targets_with_beta_lambda():
    from scipy import stats

    b = 2000
    x, labels = _two_class_batch(b)
    y, t = A.mixup_cutmix(x, labels, num_classes=2, mixup_alpha=0.8, cutmix_alpha=0.0, prob=1.0,
                          generator=gen(3))
    lam = t[torch.arange(b), labels]
    ref = lam.view(b, 1, 1, 1) * x + (1 - lam.view(b, 1, 1, 1)) * x.flip(0)
    assert (y - ref).abs().max() < 1e-5
    assert torch.allclose(t.sum(1), torch.ones(b))
    assert stats.kstest(lam.double().numpy(), stats.beta(0.8, 0.8).cdf).statistic < 1.63 / np.sqrt(b)


def test_cutmix_pastes_a_box_and_corrects_lambda():
    b = 1000
    x, labels = _two_class_batch(b)
    y, t = A.mixup_cutmix(x, labels, num_classes=2, mixup_alpha=0.0, cutmix_alpha=1.0, prob=1.0,
                          label_smoothing=0.0, generator=gen(4))
    own = (y == x).all(1)
    other = (y == x.flip(0)).all(1)
    assert bool((own | other).all())
    lam = t[torch.arange(b), labels]
    assert torch.allclose(1 - other.flatten(1).double().mean(1), lam.double(), atol=1e-6)
    for i in torch.nonzero(other.flatten(1).any(1)).view(-1)[:50].tolist():
        assert _box_of(other[i])[2], "the pasted region is one rectangle"
    # lam ~ U(0, 1) before the box is clipped at the border, so the mean kept area is above 1/2
    assert 0.5 < float(lam.mean()) < 0.85


def test_mix_probability_switch_and_smoothing():
    b = 4000
    x, labels = _two_class_batch(b, size=16)
    y, t = A.mixup_cutmix(x, labels, num_classes=2, mixup_alpha=1.0, cutmix_alpha=1.0, prob=0.5,
                          switch_prob=0.5, label_smoothing=0.1, generator=gen(5))
    untouched = (y == x).flatten(1).all(1)
    pasted = ((y == x) | (y == x.flip(0))).flatten(1).all(1) & ~untouched
    assert abs(float(untouched.double().mean()) - 0.5) < 0.04  # (a few cutmix boxes clip to nothing)
    mixed = ~untouched
    assert abs(float((pasted & mixed).double().sum() / mixed.double().sum()) - 0.5) < 0.04
    # smoothing: 1 - 0.1 + 0.05 on the label, 0.05 elsewhere, before mixing
    assert torch.allclose(t[untouched], A.smooth_one_hot(labels[untouched], 2, 0.1))
    assert torch.allclose(t.sum(1), torch.ones(b)) and float(t.min()) >= 0.05 - 1e-6


def test_mixing_disabled_returns_smoothed_one_hot_and_same_images():
    x, labels = _two_class_batch(8)
    y, t = A.mixup_cutmix(x, labels, num_classes=5, mixup_alpha=0, cutmix_alpha=0, label_smoothing=0.2,
                          generator=gen())
    assert torch.equal(y, x)
    expect = torch.full((8, 5), 0.04)
    expect[torch.arange(8), labels] = 0.84
    assert torch.allclose(t, expect)


# ---------------------------------------------------------------------------------------------------
# recipes and MultiCrop


def test_gani22_finetune_recipe_outputs_and_overrides():
    x, y = images(b=64, c=1, h=28, w=28), torch.randint(0, 10, (64,), generator=gen())
    t = A.build_train_transform("gani22-finetune", img_size=32, mean=(0.286,), std=(0.353,), num_classes=10)
    out, target = t(x, y, gen(1))
    assert out.shape == (64, 1, 32, 32) and out.dtype == torch.float32 and bool(torch.isfinite(out).all())
    assert target.shape == (64, 10) and target.dtype == torch.float32
    assert torch.allclose(target.sum(1), torch.ones(64)) and float(target.min()) >= 0.01 - 1e-6
    again, _ = t(x, y, gen(1))
    other, _ = t(x, y, gen(2))
    assert torch.equal(out, again) and not torch.equal(out, other)
    plain = A.build_train_transform("gani22-finetune", img_size=32, mean=(0.286,), std=(0.353,),
                                    num_classes=10, mixup_alpha=0, cutmix_alpha=0, label_smoothing=0)
    assert torch.equal(plain(x, y, gen(1))[1], y)


def test_gani22_finetune_with_its_random_ops_off_is_the_basic_recipe():
    x, y = images(b=16), torch.zeros(16, dtype=torch.long)
    off = A.build_train_transform("gani22-finetune", img_size=32, mean=MEAN, std=STD, num_classes=10, policy=None,
                                  erase_p=0, mixup_alpha=0, cutmix_alpha=0, label_smoothing=0)
    basic = A.build_train_transform("basic", img_size=32, mean=MEAN, std=STD, num_classes=10)
    assert torch.equal(off(x, y, gen(3))[0], basic(x, y, gen(3))[0])


@pytest.mark.parametrize("variants, erase, mix", [
    ((), dict(mode="constant", fill=MEAN, aspect="uniform", tries=100), dict(mode="batch")),  # paper A's code
    (("timm-erasing", "pair-mixing"), dict(mode="mean"), dict(mode="pair")),  # fastvit's earlier choices
])
def test_gani22_finetune_composes_crop_autoaugment_erasing_and_mixing_in_order(variants, erase, mix):
    x, y = images(b=16), torch.arange(16) % 10
    overrides = {k: v for name in variants for k, v in A.VARIANTS[name].items()}
    t = A.build_train_transform("gani22-finetune", img_size=32, mean=MEAN, std=STD, num_classes=10,
                                policy="svhn", erase_p=0.5, **overrides)
    out, target = t(x, y, gen(4))
    g = gen(4)
    ref = A.random_crop(x, 32, padding=4, flip_p=0.5, generator=g).float()
    ref = P.autoaugment_(ref, "svhn", generator=g)
    ref = A.random_erasing_(A.Normalize(MEAN, STD)(ref), p=0.5, max_area=0.4, min_aspect=0.3, generator=g,
                            **erase)
    ref, ref_target = A.mixup_cutmix_(ref, y, num_classes=10, mixup_alpha=1.0, cutmix_alpha=1.0, prob=0.5,
                                      switch_prob=0.5, label_smoothing=0.1, generator=g, **mix)
    assert (out - ref).abs().max() < 1e-5
    assert torch.allclose(target, ref_target)


def test_drloc21_recipe_upsamples_and_mixes():
    x, y = images(b=16), torch.randint(0, 100, (16,), generator=gen())
    t = A.build_train_transform("drloc21", img_size=64, mean=MEAN, std=STD, num_classes=100)
    out, target = t(x, y, gen(5))
    assert out.shape == (16, 3, 64, 64) and target.shape == (16, 100)
    assert torch.allclose(target.sum(1), torch.ones(16))
    off = A.build_train_transform("drloc21", img_size=64, mean=MEAN, std=STD, num_classes=100, color_jitter=0,
                                  rand_magnitude=None, erase_p=0, mixup_alpha=0, cutmix_alpha=0,
                                  label_smoothing=0)
    out, target = off(x, y, gen(6))
    g = gen(6)
    ref = A.Normalize(MEAN, STD)(A.random_resized_crop(x, 64, flip_p=0.5, generator=g))
    assert torch.equal(target, y) and (out - ref).abs().max() < 1e-5
    # RandAugment fills uncovered areas with the dataset mean colour, in 0..255
    rand_only = A.build_train_transform("drloc21", img_size=64, mean=MEAN, std=STD, num_classes=100,
                                        color_jitter=0, erase_p=0, mixup_alpha=0, cutmix_alpha=0,
                                        label_smoothing=0)
    out, _ = rand_only(x, y, gen(7))
    g = gen(7)
    ref = A.random_resized_crop(x, 64, flip_p=0.5, generator=g)
    ref = A.Normalize(MEAN, STD)(P.randaugment_(ref, generator=g, fill=(125.0, 123.0, 114.0)))
    assert (out - ref).abs().max() < 1e-5


def test_recipe_parameter_errors():
    kw = dict(img_size=32, mean=MEAN, std=STD, num_classes=10)
    with pytest.raises(UserError, match="augmentation policy='foo' is invalid; choose one of: None, cifar10"):
        A.build_train_transform("gani22-finetune", policy="foo", **kw)
    with pytest.raises(UserError, match="augmentation flip_p must be in \\[0, 1\\], got 2"):
        A.build_train_transform("basic", flip_p=2, **kw)
    with pytest.raises(UserError, match="augmentation crop='center' is invalid; choose one of: pad, resized"):
        A.build_train_transform("basic", crop="center", **kw)
    with pytest.raises(UserError, match="rand_magnitude must be in \\[0, 10\\]"):
        A.build_train_transform("drloc21", rand_magnitude=12, **kw)


def test_multicrop_views_shapes_and_seeding():
    mc = A.MultiCrop(32, 16, n_local=3, mean=MEAN, std=STD)
    x = images(b=8)
    views = mc(x, gen(1))
    assert [tuple(v.shape) for v in views] == [(8, 3, 32, 32)] * 2 + [(8, 3, 16, 16)] * 3
    assert all(v.dtype == torch.float32 and bool(torch.isfinite(v).all()) for v in views)
    again, other = mc(x, gen(1)), mc(x, gen(2))
    assert all(torch.equal(a, b) for a, b in zip(views, again, strict=True))
    assert not torch.equal(views[0], other[0])
    gray = A.MultiCrop(28, 12, n_local=2, mean=(0.5,), std=(0.5,))(images(b=4, c=1, h=28, w=28), gen())
    assert [tuple(v.shape) for v in gray] == [(4, 1, 28, 28)] * 2 + [(4, 1, 12, 12)] * 2
    assert len(A.MultiCrop(32, 16, n_local=0, mean=MEAN, std=STD)(x, gen())) == 2


def test_multicrop_routes_solarize_to_global_two_and_blur_to_global_one():
    x = torch.full((64, 3, 32, 32), 230, dtype=torch.uint8)
    x[:, :, :, :16] = 20  # a bright and a dark half
    solar = A.MultiCrop(32, 16, n_local=2, mean=(0.0,) * 3, std=(1.0,) * 3, jitter_p=0.0, gray_p=0.0,
                        blur_p=(0.0, 0.0, 0.0), solarize_p=1.0)(x, gen(1))
    top = [float(v.max()) * 255 for v in solar]
    assert top[1] < 128 and top[0] > 200 and top[2] > 200 and top[3] > 200
    blur = A.MultiCrop(32, 16, n_local=2, mean=(0.0,) * 3, std=(1.0,) * 3, jitter_p=0.0, gray_p=0.0,
                       blur_p=(1.0, 0.0, 0.0), solarize_p=0.0, sigma=(1.5, 2.0))(x, gen(2))
    steps = [float(v.diff(dim=3).abs().amax(dim=(1, 2, 3)).mean()) * 255 for v in blur]
    assert steps[0] < 0.5 * steps[1] and steps[1] > 150  # global 2 keeps the sharp 20 -> 230 edge


@pytest.mark.parametrize("name", ["random_crop", "random_hflip", "random_resized_crop", "color_jitter",
                                  "random_grayscale", "random_gaussian_blur", "random_solarize",
                                  "random_erasing", "mixup_cutmix", "autoaugment", "randaugment"])
def test_same_seed_same_batch_different_seed_different_batch(name):
    x = images(b=32, h=16, w=16)
    labels = torch.arange(32) % 10
    calls = {
        "random_crop": lambda g: A.random_crop(x, 16, padding=4, flip_p=0.5, generator=g),
        "random_hflip": lambda g: A.random_hflip(x, generator=g),
        "random_resized_crop": lambda g: A.random_resized_crop(x, 16, generator=g),
        "color_jitter": lambda g: A.color_jitter(x, 0.4, 0.4, 0.4, 0.1, generator=g),
        "random_grayscale": lambda g: A.random_grayscale(x, p=0.5, generator=g),
        "random_gaussian_blur": lambda g: A.random_gaussian_blur(x, generator=g),
        "random_solarize": lambda g: A.random_solarize(x, p=0.5, generator=g),
        "random_erasing": lambda g: A.random_erasing(x.float(), p=0.5, generator=g),
        "mixup_cutmix": lambda g: A.mixup_cutmix(x.float(), labels, num_classes=10, generator=g)[0],
        "autoaugment": lambda g: P.autoaugment(x, "imagenet", generator=g),
        "randaugment": lambda g: P.randaugment(x, generator=g),
    }
    a, b, c = calls[name](gen(1)), calls[name](gen(1)), calls[name](gen(2))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


@pytest.mark.parametrize("op", [
    lambda x, g: A.random_grayscale(x, p=0.0, generator=g),
    lambda x, g: A.random_solarize(x, p=0.0, generator=g),
    lambda x, g: A.random_solarize(x, p=1.0, threshold=256, generator=g),
    lambda x, g: A.random_gaussian_blur(x, p=0.0, generator=g),
    lambda x, g: A.random_hflip(x.float(), p=0.0, generator=g),
    lambda x, g: A.random_erasing(x.float(), p=0.0, generator=g),
], ids=["grayscale", "solarize-p0", "solarize-256", "blur", "hflip", "erasing"])
def test_random_ops_at_zero_strength_are_the_identity(op):
    x = images(b=16)
    assert torch.equal(op(x, gen()), x.float())


@pytest.mark.parametrize("channels", [3, 1])
def test_multicrop_apply_equals_a_per_view_loop_with_the_same_draws(channels):
    # every op on about half the views, so each one's selection is checked both ways
    mc = A.MultiCrop(32, 16, n_local=2, mean=MEAN[:channels], std=STD[:channels], jitter_p=0.5, gray_p=0.5,
                     blur_p=(0.5, 0.5, 0.5), solarize_p=0.5)
    x = torch.from_numpy(natural_images(n=6, size=24, channels=channels, seed=5)).permute(0, 3, 1, 2).contiguous()
    solarize_p = torch.full((12,), 0.5)
    for size, copies, scale, solar in ((32, 2, mc.global_scale, solarize_p), (16, 2, mc.local_scale, None)):
        d = mc.draw(x.shape, copies, scale, torch.full((12,), 0.5), solar, gen(8), "cpu")
        out = mc.apply(x, d, size)
        src = x.repeat(copies, 1, 1, 1).double()
        for i in range(12):
            t, l, h, w = (int(v[i]) for v in (d.top, d.left, d.height, d.width))
            v = F.interpolate(src[i:i + 1, :, t:t + h, l:l + w], size=(size, size), mode="bicubic",
                              align_corners=False, antialias=h > size or w > size).clamp(0, 255).float()
            if d.flip[i]:
                v = v.flip(3)
            if d.jitter_on[i]:
                for k in d.jitter_order[i].tolist():
                    f = d.jitter[k, i:i + 1]
                    v = [O.adjust_brightness, O.adjust_contrast, O.adjust_saturation, O.adjust_hue][k](v, f)
            if d.gray is not None and d.gray[i]:
                v = O.grayscale(v)
            if d.blur[i]:
                v = O.gaussian_blur(v, d.sigma[i:i + 1], radius=6)
            if d.solarize is not None and d.solarize[i]:
                v = O.solarize(v, 128.0)
            ref = A.Normalize(MEAN[:channels], STD[:channels])(v)
            assert (out[i:i + 1] - ref).abs().max() < 1e-3, (size, i)


# ---------------------------------------------------------------------------------------------------
# the papers' variants (issue #14): per-batch mixing, paper A's erasing, drloc21 without jitter, eval crop


def test_batch_mixup_is_one_lambda_and_a_random_permutation():
    b = 64
    x = torch.rand(b, 3, 8, 8, generator=gen(9)) * 4 - 2
    labels = torch.arange(b) % 10
    y, t = A.mixup_cutmix(x, labels, num_classes=10, mixup_alpha=0.8, cutmix_alpha=0.0, prob=1.0, mode="batch",
                          generator=gen(3))
    g = gen(3)  # the same draws, replayed: permutation, (mix?, switch), lam
    perm = torch.randperm(b, generator=g)
    torch.rand(2, 1, generator=g)
    lam = float(A.sample_beta(0.8, 1, generator=g))
    ref = lam * x.double() + (1 - lam) * x.double()[perm]
    assert (y.double() - ref).abs().max() < 1e-5
    one_hot = F.one_hot(labels, 10).double()
    assert (t.double() - (lam * one_hot + (1 - lam) * one_hot[perm])).abs().max() < 1e-6
    assert sorted(perm.tolist()) == list(range(b)) and perm.tolist() != list(range(b - 1, -1, -1))


def test_batch_flip_mixing_is_timms_batch_mode_with_the_flipped_batch_as_partners():
    b = 6
    x = torch.rand(b, 3, 8, 8, generator=gen(9)) * 4 - 2
    labels = torch.arange(b) % 10
    for cutmix in (False, True):
        y, t = A.mixup_cutmix(x, labels, num_classes=10, mixup_alpha=0.0 if cutmix else 0.8,
                              cutmix_alpha=1.0 if cutmix else 0.0, prob=1.0, mode="batch-flip", generator=gen(3))
        g = gen(3)  # replayed: no permutation drawn; (mix?, switch), lam, and the box centre for CutMix
        torch.rand(2, 1, generator=g)
        lam = float(A.sample_beta(1.0 if cutmix else 0.8, 1, generator=g))
        flipped = x.double().flip(0)  # timm's x.flip(0): sample i meets B-1-i
        ref = x.double().clone()
        if cutmix:
            cut = np.sqrt(1.0 - lam)
            cy, cx = int(torch.randint(0, 8, (1,), generator=g)), int(torch.randint(0, 8, (1,), generator=g))
            ch = cw = int(cut * 8)
            y0, y1, x0, x1 = max(cy - ch // 2, 0), min(cy + ch // 2, 8), max(cx - cw // 2, 0), min(cx + cw // 2, 8)
            ref[:, :, y0:y1, x0:x1] = flipped[:, :, y0:y1, x0:x1]
            lam = 1.0 - (y1 - y0) * (x1 - x0) / 64
        else:
            ref = lam * ref + (1 - lam) * flipped
        assert (y.double() - ref).abs().max() < 1e-5
        one_hot = F.one_hot(labels, 10).double()
        assert (t.double() - (lam * one_hot + (1 - lam) * one_hot.flip(0))).abs().max() < 1e-6


def test_the_drloc21_recipe_mixes_with_the_flipped_batch_and_resamples_randaugment_bicubic():
    params = A.AugmentParams(**A.RECIPES["drloc21"])
    assert (params.mix_mode, params.interpolation) == ("batch-flip", "bicubic")


def test_batch_cutmix_pastes_one_box_with_one_lambda_per_batch():
    untouched = 0
    for seed in range(200):
        x = torch.rand(8, 1, 16, 16, generator=gen(seed))
        labels = torch.arange(8)
        y, t = A.mixup_cutmix(x, labels, num_classes=8, mixup_alpha=1.0, cutmix_alpha=1.0, prob=0.5,
                              switch_prob=1.0, mode="batch", generator=gen(seed))
        g = gen(seed)  # replay: permutation, (mix?, switch), Mixup lam, CutMix lam, box centre
        perm = torch.randperm(8, generator=g)
        mixed = float(torch.rand(2, 1, generator=g)[0, 0]) < 0.5
        torch.rand(1, generator=g)
        cut = np.sqrt(1.0 - float(torch.rand(1, generator=g)))
        cy, cx = int(torch.randint(0, 16, (1,), generator=g)), int(torch.randint(0, 16, (1,), generator=g))
        ch = cw = int(cut * 16)
        y0, y1, x0, x1 = max(cy - ch // 2, 0), min(cy + ch // 2, 16), max(cx - cw // 2, 0), min(cx + cw // 2, 16)
        ref = x.clone()
        if mixed:
            ref[:, :, y0:y1, x0:x1] = x[perm][:, :, y0:y1, x0:x1]
        else:
            untouched += 1
        lam = 1.0 - (y1 - y0) * (x1 - x0) / 256 if mixed else 1.0
        one_hot = F.one_hot(labels, 8).double()
        assert torch.equal(y, ref)
        assert (t.double() - (lam * one_hot + (1 - lam) * one_hot[perm])).abs().max() < 1e-6
    assert abs(untouched / 200 - 0.5) < 0.12  # whole batches are mixed with probability 0.5


def test_paper_a_erasing_uniform_aspect_constant_fill_matches_a_float64_loop():
    b, side, tries, fill = 3000, 16, 100, (0.4914, 0.4822, 0.4465)
    x = torch.full((b, 3, side, side), 100.0)
    y = A.random_erasing(x, p=0.5, max_area=0.4, min_aspect=0.3, mode="constant", fill=fill, aspect="uniform",
                         tries=tries, generator=gen(1))
    g = gen(1)  # Zhong et al.'s algorithm per sample in float64, on the same uniform draws
    area_u, aspect_u = torch.rand(b, tries, generator=g).double(), torch.rand(b, tries, generator=g).double()
    u = [torch.rand(b, generator=g).double() for _ in range(3)]
    same, aspects = 0, []
    for i in range(b):
        ref = torch.zeros(side, side, dtype=torch.bool)
        for k in range(tries):
            area = (float(area_u[i, k]) * (0.4 - 0.02) + 0.02) * side * side
            r = float(aspect_u[i, k]) * (1 / 0.3 - 0.3) + 0.3
            h, w = round(np.sqrt(area * r)), round(np.sqrt(area / r))
            if 0 < h < side and 0 < w < side:
                if float(u[0][i]) < 0.5:
                    top, left = int(float(u[1][i]) * (side - h + 1)), int(float(u[2][i]) * (side - w + 1))
                    ref[top:top + h, left:left + w] = True
                    aspects.append(h / w)
                break
        got = y[i, 0] != 100.0
        same += bool(torch.equal(got, ref))
        assert torch.equal(y[i][:, got], torch.tensor(fill).view(3, 1).expand(3, int(got.sum())))
    assert same >= 0.995 * b  # float32 vs float64 rounding may move a box edge at an exact .5
    # uniform in [0.3, 3.33] (mean 1.82) and not log-uniform (mean 1.26), up to pixel rounding
    assert 1.65 < np.mean(aspects) < 2.0


def test_drloc21_runs_no_color_jitter_with_randaugment_and_keeps_it_as_a_variant():
    x, y = images(b=16), torch.randint(0, 100, (16,), generator=gen())
    kw = dict(img_size=32, mean=MEAN, std=STD, num_classes=100, erase_p=0, mixup_alpha=0, cutmix_alpha=0,
              label_smoothing=0)
    # RandAugment resamples with the crop's interpolation, as timm's create_transform hands it on; at 32 px
    # paper B's build_transform crops with RandomCrop(32, padding 4)
    for interpolation in ("bicubic", "bilinear"):
        out, _ = A.build_train_transform("drloc21", **kw, interpolation=interpolation)(x, y, gen(7))
        g = gen(7)
        ref = A.random_crop(x, 32, padding=4, flip_p=0.5, generator=g).float()
        ref = P.randaugment_(ref, generator=g, fill=(125.0, 123.0, 114.0), interpolation=interpolation)
        assert (out - A.Normalize(MEAN, STD)(ref)).abs().max() < 1e-5, interpolation
    jitter, _ = A.build_train_transform("drloc21", **kw, **A.VARIANTS["jitter-with-randaugment"])(x, y, gen(7))
    g = gen(7)
    ref = A.random_crop(x, 32, padding=4, flip_p=0.5, generator=g).float()
    ref = A.color_jitter(ref, 0.4, 0.4, 0.4, 0.0, generator=g)
    ref = A.Normalize(MEAN, STD)(P.randaugment_(ref, generator=g, fill=(125.0, 123.0, 114.0)))
    assert (jitter - ref).abs().max() < 1e-5


@pytest.mark.parametrize("img_size,crop", [(16, "pad"), (32, "pad"), (64, "resized"), (224, "resized")])
def test_drloc21_crops_as_paper_b_build_transform_by_image_size(img_size, crop):
    # its build_transform: RandomResizedCrop(size) above 32 px, RandomCrop(size, padding 4) at 32 px and below
    x, y = images(b=4), torch.zeros(4, dtype=torch.long)
    kw = dict(img_size=img_size, mean=MEAN, std=STD, num_classes=10, erase_p=0, mixup_alpha=0, cutmix_alpha=0,
              label_smoothing=0, rand_magnitude=None)
    out, _ = A.build_train_transform("drloc21", **kw)(x, y, gen(5))
    g = gen(5)
    if crop == "pad":
        ref = A.random_crop(A.fit_to_size(x, img_size), img_size, padding=4, flip_p=0.5, generator=g).float()
    else:
        ref = A.random_resized_crop(x, img_size, flip_p=0.5, interpolation="bicubic", generator=g)
    assert out.shape == (4, 3, img_size, img_size)
    assert (out - A.Normalize(MEAN, STD)(ref)).abs().max() < 1e-5
    forced, _ = A.build_train_transform("drloc21", **kw, **A.VARIANTS["resized-crop-at-32px"])(x, y, gen(5))
    g = gen(5)
    rrc = A.Normalize(MEAN, STD)(A.random_resized_crop(x, img_size, flip_p=0.5, interpolation="bicubic", generator=g))
    assert (forced - rrc).abs().max() < 1e-5


def test_eval_resize_then_centre_crop_matches_pil():
    from PIL import Image

    arr = natural_images(n=2, size=32)
    t = A.build_eval_transform(img_size=224, mean=MEAN, std=STD, resize=256)
    out = t(torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous())
    assert out.shape == (2, 3, 224, 224)
    ref = pil_batch(arr, lambda im: im.resize((256, 256), Image.BICUBIC).crop((16, 16, 240, 240)))
    levels = out.double() * torch.tensor(STD, dtype=torch.float64).view(1, 3, 1, 1) * 255 + torch.tensor(
        MEAN, dtype=torch.float64).view(1, 3, 1, 1) * 255
    diff = (levels - ref).abs()
    # the same kernel (a = -0.5); PIL rounds to uint8 between its two separable passes, this once at the end
    assert diff.max() < 1 + 1e-3 and float(diff.mean()) < 0.3
    with pytest.raises(UserError, match="eval resize 200 must be at least the image size 224"):
        A.build_eval_transform(img_size=224, mean=MEAN, std=STD, resize=200)
