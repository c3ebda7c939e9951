"""The fused numba CPU executor (loaders/augment_cpu.py) against the batched torch path and augment_ops."""

import pytest
import torch

from fastvit.errors import UserError
from fastvit.loaders import augment as A
from fastvit.loaders import augment_cpu as C
from fastvit.loaders import augment_ops as O
from fastvit.loaders import augment_policies as P

MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2470, 0.2435, 0.2616)
# float32 summation order (e.g. the mean of `contrast` on non-integer values) can flip a later floor
# (equalize, posterize) or threshold (solarize) on a rare pixel: at most this fraction of the outputs
# may differ by more than 1e-3 between the two executors (measured: none, max diff 7e-7)
TIE_FRACTION = 1e-4


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def images(b=16, c=3, h=32, w=32, seed=0):
    """uint8 images with a random value range per image (so autocontrast / equalize have work to do)."""
    g = gen(seed)
    lo = torch.randint(0, 100, (b, 1, 1, 1), generator=g)
    hi = torch.randint(150, 256, (b, 1, 1, 1), generator=g)
    x = lo + (torch.rand(b, c, h, w, generator=g) * (hi - lo + 1)).long()
    x[0] = 77  # a flat image: autocontrast and equalize leave it alone
    return x.clamp(0, 255).to(torch.uint8)


def stats_kw(c):
    return dict(mean=MEAN if c == 3 else MEAN[:1], std=STD if c == 3 else STD[:1])


def both(x, y, seed, recipe="gani22-finetune", *, img_size=32, **params):
    kw = dict(img_size=img_size, num_classes=10, **stats_kw(x.shape[1]), **params)
    ref = A.build_train_transform(recipe, executor="torch", **kw)(x, y, gen(seed))
    out = A.build_train_transform(recipe, executor="fused", **kw)(x, y, gen(seed))
    return out, ref


def assert_close(out, ref):
    d = (out - ref).abs()
    assert out.shape == ref.shape and out.dtype == ref.dtype
    assert float((d > 1e-3).float().mean()) <= TIE_FRACTION, float(d.max())
    assert bool(torch.isfinite(out).all())


# ---------------------------------------------------------------------------------------------------
# whole transform: same seed, same batch


@pytest.mark.parametrize("c", [1, 3])
@pytest.mark.parametrize("policy", ["cifar10", "svhn", "imagenet"])
def test_fused_recipe_equals_torch_path_for_the_same_seed(policy, c):
    x, y = images(b=64, c=c, seed=3), torch.randint(0, 10, (64,), generator=gen(1))
    (out, target), (ref, ref_target) = both(x, y, 5, policy=policy)
    assert_close(out, ref)
    assert torch.equal(target, ref_target)
    assert not torch.equal(out, A.Normalize(**stats_kw(c))(x))  # it did augment


@pytest.mark.parametrize("params", [
    dict(),  # the recipe as is: erase "mean", mixup + cutmix
    dict(erase_mode="pixel", erase_p=1.0),
    dict(mixup_alpha=0.0, mix_prob=1.0),  # cutmix only
    dict(cutmix_alpha=0.0, mix_prob=1.0, mixup_alpha=0.4),  # mixup only, Beta(0.4)
    dict(mixup_alpha=0, cutmix_alpha=0, label_smoothing=0, erase_p=0),  # integer targets
    dict(mixup_alpha=0, cutmix_alpha=0),  # smoothed one-hot only
    dict(mix_prob=0.3, switch_prob=0.7, mixup_alpha=2.0, cutmix_alpha=0.5, label_smoothing=0.2),
], ids=["recipe", "erase-pixel", "cutmix", "mixup", "no-mixing", "smoothing-only", "other-probs"])
def test_fused_erasing_and_mixing_variants_equal_torch_path(params):
    x, y = images(b=33, seed=4), torch.arange(33) % 10  # odd batch: the middle sample pairs with itself
    (out, target), (ref, ref_target) = both(x, y, 6, **params)
    assert_close(out, ref)
    assert torch.equal(target, ref_target) and target.dtype == ref_target.dtype


def test_basic_recipe_and_no_op_policy_are_bit_identical():
    x, y = images(b=16), torch.zeros(16, dtype=torch.long)
    out, ref = both(x, y, 2, "basic")
    assert torch.equal(out[0], ref[0]) and torch.equal(out[1], y)
    # AutoAugment slots that draw "no op" for every sample: crop + normalize only
    top, left, flip = A.random_crop_params(16, 32, 32, 32, padding=4, flip_p=0.5, generator=gen(1))
    none = [(torch.full((16,), -1), torch.randn(16, generator=gen(2)))] * 2
    scale, shift = A.Normalize(MEAN, STD).coefficients(3, "cpu")
    fused = C.apply_pad_crop(x, size=32, padding=4, top=top, left=left, flip=flip, slots=none, erase=None,
                             scale=scale.view(3), shift=shift.view(3))
    expected = A.Normalize(MEAN, STD)(A.crop_flip(torch.nn.functional.pad(x, (4, 4, 4, 4)), top, left, 32, flip))
    assert torch.equal(fused, expected)


@pytest.mark.parametrize("shape, img_size", [((1, 28, 28), 32), ((3, 17, 23), 32), ((3, 32, 32), 24)])
def test_fused_odd_input_sizes(shape, img_size):
    x = images(b=24, c=shape[0], h=shape[1], w=shape[2], seed=7)
    y = torch.arange(24) % 10
    (out, target), (ref, ref_target) = both(x, y, 8, img_size=img_size)
    assert out.shape == (24, shape[0], img_size, img_size)
    assert_close(out, ref)
    assert torch.equal(target, ref_target)


def test_fused_crop_of_non_square_images_equals_random_crop():
    # the kernel crops H != W directly (TrainTransform fits to a square first)
    x = images(b=20, h=17, w=23, seed=9)
    ref = A.random_crop(x, 16, padding=4, flip_p=0.5, generator=gen(3)).float()
    top, left, flip = A.random_crop_params(20, 17, 23, 16, padding=4, flip_p=0.5, generator=gen(3))
    out = C.apply_pad_crop(x, size=16, padding=4, top=top, left=left, flip=flip, slots=[], erase=None,
                           scale=torch.ones(3), shift=torch.zeros(3))
    assert torch.equal(out, ref)


def test_fused_output_does_not_depend_on_the_thread_count():
    x, y = images(b=32, seed=11), torch.arange(32) % 10
    t = A.build_train_transform("gani22-finetune", executor="fused", img_size=32, mean=MEAN, std=STD, num_classes=10)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = t(x, y, gen(4))
        torch.set_num_threads(2)
        two = t(x, y, gen(4))
    finally:
        torch.set_num_threads(before)
    assert torch.equal(one[0], two[0]) and torch.equal(one[1], two[1])


# ---------------------------------------------------------------------------------------------------
# each AutoAugment op forced on every sample, random magnitudes, against augment_ops


def _forced_values(name, b, g):
    """Random per-sample parameters of op `name` over its whole AutoAugment range (both signs)."""
    u, sign = torch.rand(b, generator=g), torch.where(torch.rand(b, generator=g) < 0.5, -1.0, 1.0)
    top = P.autoaugment_magnitude(name, 9)
    if name in ("color", "contrast", "brightness", "sharpness"):
        return 1.0 + sign * u * top
    if name in ("shear_x", "shear_y", "translate_x", "translate_y", "rotate"):
        return sign * u * top
    if name == "posterize":
        return torch.randint(0, 9, (b,), generator=g).float()
    if name == "solarize":
        return torch.where(u < 0.1, 256.0, u * 256.0)
    return torch.zeros(b)


def _reference_op(x, name, value, fill):
    h, w = x.shape[-2:]
    if name in P.GEOMETRIC_OPS:
        return O.affine(x, P.GEOMETRIC_OPS[name](value, h, w), fill=fill, mode=P._AA_MODES[name])
    return P.PIXEL_OPS[name](x, value)


@pytest.mark.parametrize("c", [1, 3])
@pytest.mark.parametrize("name", P.AUTOAUGMENT_OPS)
def test_each_autoaugment_op_matches_augment_ops(name, c):
    b, size = 24, 20
    x = images(b=b, c=c, h=size, w=size, seed=P.AUTOAUGMENT_OPS.index(name))
    value = _forced_values(name, b, gen(13))
    op = torch.full((b,), P.AUTOAUGMENT_OPS.index(name))
    zeros = torch.zeros(b, dtype=torch.long)
    out = C.apply_pad_crop(x, size=size, padding=0, top=zeros, left=zeros, flip=None, slots=[(op, value)],
                           erase=None, scale=torch.ones(c), shift=torch.zeros(c), fill=128.0)
    ref = _reference_op(x.float(), name, value, 128.0)
    assert (out - ref).abs().max() <= 1e-3
    if name not in ("color",) or c == 3:  # color is the identity on one channel
        assert not torch.equal(out, x.float())


def test_two_slots_compose_in_order():
    b = 16
    x = images(b=b, seed=21)
    first, second = P.AUTOAUGMENT_OPS.index("rotate"), P.AUTOAUGMENT_OPS.index("equalize")
    slots = [(torch.full((b,), first), _forced_values("rotate", b, gen(1))),
             (torch.full((b,), second), torch.zeros(b))]
    zeros = torch.zeros(b, dtype=torch.long)
    out = C.apply_pad_crop(x, size=32, padding=0, top=zeros, left=zeros, flip=None, slots=slots, erase=None,
                           scale=torch.ones(3), shift=torch.zeros(3))
    ref = O.equalize(_reference_op(x.float(), "rotate", slots[0][1], 128.0))
    assert (out - ref).abs().max() <= 1e-3


# ---------------------------------------------------------------------------------------------------
# dispatch


def test_executor_choice_env_var_and_errors(monkeypatch):
    x, y = images(b=8), torch.arange(8)
    kw = dict(img_size=32, mean=MEAN, std=STD, num_classes=10)
    calls = []
    real = C.fused_train_batch
    monkeypatch.setattr(C, "fused_train_batch", lambda *a, **k: calls.append(1) or real(*a, **k))
    t = A.build_train_transform("gani22-finetune", **kw)
    monkeypatch.delenv("FASTVIT_AUGMENT", raising=False)
    auto = t(x, y, gen(1))
    assert len(calls) == 1  # auto: CPU + supported recipe -> fused
    monkeypatch.setenv("FASTVIT_AUGMENT", "torch")
    forced_torch = t(x, y, gen(1))
    assert len(calls) == 1
    assert_close(auto[0], forced_torch[0])
    # unsupported recipes: auto falls back to torch, fused names the reason
    monkeypatch.setenv("FASTVIT_AUGMENT", "auto")
    A.build_train_transform("drloc21", **kw)(x, y, gen(1))
    assert len(calls) == 1
    monkeypatch.setenv("FASTVIT_AUGMENT", "fused")
    with pytest.raises(UserError, match="cannot run this transform: crop='resized'"):
        A.build_train_transform("drloc21", **kw)(x, y, gen(1))
    with pytest.raises(UserError, match="color jitter is not fused"):
        A.build_train_transform("basic", color_jitter=0.4, **kw)(x, y, gen(1))
    with pytest.raises(UserError, match="RandAugment is not fused"):
        A.build_train_transform("basic", rand_magnitude=9.0, **kw)(x, y, gen(1))
    monkeypatch.setenv("FASTVIT_AUGMENT", "fast")
    with pytest.raises(UserError, match="executor 'fast' is invalid.*choose one of: auto, torch, fused"):
        t(x, y, gen(1))
    with pytest.raises(UserError, match="executor 'numba' is invalid"):
        A.build_train_transform("basic", executor="numba", **kw)
    # an explicit argument wins over the environment
    assert len(calls) == 1
    A.build_train_transform("gani22-finetune", executor="fused", **kw)(x, y, gen(1))
    assert len(calls) == 2


def test_unsupported_reason_names_the_device():
    params = A.AugmentParams(policy="cifar10")
    assert C.unsupported_reason(params, torch.zeros(1, 3, 8, 8, dtype=torch.uint8)) is None
    meta = torch.zeros(1, 3, 8, 8, dtype=torch.uint8, device="meta")
    assert C.unsupported_reason(params, meta) == "it runs on the CPU only (the batch is on meta)"
