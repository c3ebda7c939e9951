"""The recipes' augmentation and eval as each paper's code ran them (issue #14 items 4, 7, 9, 10): config fields
shown by --print-config, overridden by flags, passed to fastvit.augment's builders."""

import contextlib
import io
import json

import numpy as np
import pytest
import torch

from fastvit import augment, config, train
from fastvit.augment import mixing
from fastvit.cli import main
from fastvit.errors import UserError
from tests.cli_runner import printed

RESIDENT_RGB = {"storage": "raw", "channels": 3, "mean": [125.3, 123.0, 113.9], "std": [63.0, 62.1, 66.7]}
IMAGENET = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
AUGMENT_KEYS = ("erase_mode", "erase_aspect", "erase_tries", "mix_mode", "color_jitter", "norm_stats", "eval_crop_pct")



def shown(c: dict) -> tuple:
    return tuple(c[k] for k in AUGMENT_KEYS)


@pytest.mark.parametrize("recipe", ["drloc21", "drloc21-annealed"])
def test_print_config_shows_paper_b_augmentation_and_eval(recipe):
    # timm's pixel erasing (log aspect, 10 tries), batch mixing with flipped partners, no jitter under
    # RandAugment, ImageNet mean/std, eval resize 256 -> crop 224; no crop at 32 px (its build_transform:
    # resize_im = size > 32)
    assert shown(printed("train", "--recipe", recipe, "--arch", "swin_t")) == (
        "pixel", "log", 10, "batch-flip", 0.0, "imagenet", 0.875)
    assert printed("train", "--recipe", recipe, "--arch", "swin_t_p2_w4")["eval_crop_pct"] is None
    assert printed("train", "--recipe", recipe, "--arch", "swin_t_p2_w4", "--img-size", "224")["eval_crop_pct"] == 0.875


def test_print_config_shows_paper_a_finetune_augmentation():
    c = printed("finetune", "--recipe", "gani22-finetune", "--init", "x.pt")
    assert shown(c) == ("constant", "uniform", 100, "batch", 0.0, "dataset", None)


def test_without_a_recipe_the_basic_augmentation_values_are_shown():
    assert shown(printed("train")) == ("mean", "log", 10, "batch", 0.0, "dataset", None)


def test_explicit_flags_override_the_recipe():
    a = printed("finetune", "--recipe", "gani22-finetune", "--init", "x.pt", "--mix-mode", "pair",
                "--erase-mode", "mean", "--erase-aspect", "log", "--erase-tries", "10")
    assert shown(a)[:4] == ("mean", "log", 10, "pair")
    b = printed("train", "--recipe", "drloc21", "--arch", "swin_t", "--color-jitter", "0.4", "--norm-stats", "dataset",
                "--eval-crop-pct", "0.9", "--erase-mode", "constant")
    assert (b["color_jitter"], b["norm_stats"], b["eval_crop_pct"], b["erase_mode"]) == (
        0.4, "dataset", 0.9, "constant")


def test_the_earlier_choices_are_augment_variants_through_flags():
    # fastvit.augment.VARIANTS names the earlier behaviour; the same values reach the builder from flags
    pair = config.build({"mix_mode": "pair"}, recipe="gani22-finetune")
    timm = config.build({"erase_mode": "mean", "erase_aspect": "log", "erase_tries": 10}, recipe="gani22-finetune")
    jitter = config.build({"color_jitter": 0.4, "arch": "swin_t"}, recipe="drloc21")
    for cfg, variant in ((pair, "pair-mixing"), (timm, "timm-erasing"), (jitter, "jitter-with-randaugment")):
        assert augment.VARIANTS[variant].items() <= cfg.augment_overrides().items()


def test_invalid_values_are_refused_by_message(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["train", "--mix-mode", "mirror", "--print-config"])
    assert exit_.value.code == 2 and "invalid choice: 'mirror'" in capsys.readouterr().err
    with pytest.raises(UserError, match=r"--eval-crop-pct must be in \(0, 1\], got 1.2"):
        config.build({"eval_crop_pct": 1.2})
    with pytest.raises(UserError, match="--erase-aspect 'normal' is not one of log, uniform"):
        config.build({"erase_aspect": "normal"})


def test_config_choices_are_the_augment_choices():
    assert config.MIX_MODES == mixing.MIX_MODES
    assert config.ERASE_MODES == mixing.ERASE_MODES and config.ERASE_ASPECTS == mixing.ERASE_ASPECTS


@pytest.mark.parametrize("recipe,expected", [
    ("gani22-finetune", dict(erase_mode="constant", erase_aspect="uniform", erase_tries=100, mix_mode="batch")),
    ("drloc21", dict(erase_mode="pixel", color_jitter=0.0, mix_mode="batch-flip", rand_magnitude=9.0)),
])
def test_train_transform_gets_the_recipe_values(recipe, expected):
    cfg = config.build({"arch": "vit_tiny"}, recipe=recipe)
    tf = augment.build_train_transform(cfg.augment, img_size=32, mean=(0.5,) * 3, std=(0.25,) * 3, num_classes=10,
                                       **cfg.augment_overrides())
    assert {k: getattr(tf.params, k) for k in expected} == expected
    pair = config.build({"arch": "vit_tiny", "mix_mode": "pair", "erase_tries": 3}, recipe=recipe)
    tf = augment.build_train_transform(pair.augment, img_size=32, mean=(0.5,) * 3, std=(0.25,) * 3, num_classes=10,
                                       **pair.augment_overrides())
    assert (tf.params.mix_mode, tf.params.erase_tries) == ("pair", 3)


def pil_reference(images: np.ndarray, resize: int, crop: int, mean, std) -> torch.Tensor:
    """PIL's bicubic resize to resize x resize, the centre crop, then (x / 255 - mean) / std in float64."""
    from PIL import Image

    top = (resize - crop) // 2
    out = [np.asarray(Image.fromarray(im).resize((resize, resize), Image.BICUBIC).crop(
        (top, top, top + crop, top + crop)), dtype=np.float64) for im in images]
    x = torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2) / 255
    return (x - torch.tensor(mean, dtype=torch.float64).view(1, 3, 1, 1)) / torch.tensor(
        std, dtype=torch.float64).view(1, 3, 1, 1)


def smooth_images(n: int, size: int) -> np.ndarray:
    """uint8 [n, size, size, 3] with structure at every scale, so a wrong crop or offset shows."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    rng = np.random.default_rng(3)
    planes = [127 + 100 * np.sin(2 * np.pi * (rng.uniform(1, 3) * xx + rng.uniform(1, 3) * yy + rng.uniform()))
              for _ in range(3 * n)]
    return np.stack(planes).reshape(n, 3, size, size).transpose(0, 2, 3, 1).round().astype(np.uint8)


def test_a_224_px_drloc21_run_evaluates_on_resize_256_then_centre_crop_224():
    out = io.StringIO()  # the config as the CLI resolves it for a 224-px run
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        main(["train", "--recipe", "drloc21", "--arch", "swin_t", "--dataset", "cifar10", "--print-config"])
    values = {k: v for k, v in json.loads(out.getvalue()).items() if k not in ("command", "recipe", "derived")}
    cfg = config.build(values)
    mean, std = train.normalization(cfg, RESIDENT_RGB)
    assert (mean, std) == IMAGENET
    tf = train.make_eval_transform(cfg.eval_crop_pct, RESIDENT_RGB, 224, mean, std)
    arr = smooth_images(2, 32)  # CIFAR-sized test images, resident on the device
    got = tf(torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous())
    assert got.shape == (2, 3, 224, 224) and got.dtype == torch.float32
    ref = pil_reference(arr, 256, 224, *IMAGENET)
    # in 0..255 levels: the same a = -0.5 kernel; PIL rounds between its two passes, fastvit once at the end
    levels = (got.double() - ref).abs() * torch.tensor(IMAGENET[1], dtype=torch.float64).view(1, 3, 1, 1) * 255
    assert float(levels.max()) < 1 + 1e-3 and float(levels.mean()) < 0.3
    # resizing straight to 224 (no crop) is far from it: the check can tell the two apart
    straight = pil_reference(arr, 224, 224, *IMAGENET)
    assert float(((straight - ref).abs() * 0.229 * 255).mean()) > 5


def test_eval_without_crop_and_on_ffcv_decoded_splits_is_the_plain_transform():
    x = torch.from_numpy(smooth_images(2, 224)).permute(0, 3, 1, 2).contiguous()
    plain = augment.build_eval_transform(img_size=224, mean=IMAGENET[0], std=IMAGENET[1])(x)
    jpeg = dict(RESIDENT_RGB, storage="jpeg")  # FFCV centre-crops these at decode time (make_eval_batches)
    for pct, meta in ((None, RESIDENT_RGB), (0.875, jpeg)):
        tf = train.make_eval_transform(pct, meta, 224, *IMAGENET)
        assert torch.equal(tf(x), plain)
    assert not torch.equal(train.make_eval_transform(0.875, RESIDENT_RGB, 224, *IMAGENET)(x), plain)


def test_imagenet_stats_apply_to_rgb_data_only():
    cfg = config.build({"norm_stats": "imagenet"})
    assert train.normalization(cfg, RESIDENT_RGB) == IMAGENET
    gray = {"storage": "raw", "channels": 1, "mean": [72.9], "std": [90.0]}  # Fashion-MNIST keeps its own
    assert train.normalization(cfg, gray) == ([72.9 / 255], [90.0 / 255])
    assert train.normalization(config.build({}), RESIDENT_RGB) == (
        [m / 255 for m in RESIDENT_RGB["mean"]], [s / 255 for s in RESIDENT_RGB["std"]])
