"""Recipes are data: each resolves to the numbers of SPEC.md; explicit values override them."""

import pytest

from fastvit import config
from fastvit.errors import UserError


def test_gani22_finetune_is_spec_section_4():
    c = config.build({}, recipe="gani22-finetune")
    assert (c.lr, c.weight_decay, c.warmup_epochs, c.warmup_lr, c.min_lr) == (1e-3, 0.05, 10, 1e-6, 1e-6)
    assert (c.epochs, c.batch_size, c.repeats, c.label_smoothing, c.drop_path) == (100, 256, 3, 0.1, 0.1)
    assert c.augment == "gani22-finetune" and not c.drloc


def test_gani22_pretrain_is_spec_section_3():
    c = config.build({}, recipe="gani22-pretrain", command="pretrain")
    assert c.scaled_lr(world_size=1) == pytest.approx(1e-4)  # 1e-4 x 256 / 256
    assert c.scaled_lr(world_size=4) == pytest.approx(4e-4)
    assert (c.warmup_epochs, c.min_lr, c.weight_decay, c.weight_decay_end) == (30, 1e-6, 0.04, 0.4)
    assert (c.grad_clip, c.drop_path, c.epochs, c.n_local, c.dino_out_dim) == (3.0, 0.1, 200, 8, 1024)
    assert (c.global_scale, c.local_scale) == ((0.7, 1.0), (0.2, 0.5))
    assert (c.teacher_momentum, c.warmup_teacher_temp, c.teacher_temp, c.warmup_teacher_temp_epochs) == (
        0.996, 0.04, 0.07, 10)
    assert c.freeze_last_layer == 1


def test_drloc21_is_spec_section_2():
    c = config.build({"batch_size": 128, "arch": "swin_t"}, recipe="drloc21")  # drop path 0.2: Swin only
    assert c.scaled_lr(world_size=1) == pytest.approx(5e-4 * 128 / 512)
    assert (c.warmup_epochs, c.weight_decay, c.grad_clip, c.drop_path, c.label_smoothing) == (20, 0.05, 5.0, 0.2, 0.1)
    assert c.drloc and c.drloc_mode == "l1" and c.drloc_pairs == 64 and c.drloc_abs
    assert c.drloc_warmup_epochs == 20 and c.augment == "drloc21"


@pytest.mark.parametrize("arch,lam", [("swin", 0.5), ("swin_t", 0.5), ("t2t_vit_14", 0.1), ("cvt_13", 0.1),
                                      ("vit", 0.1), ("cait", 0.1)])
def test_drloc_lambda_per_arch(arch, lam):
    assert config.build({"arch": arch}).drloc_weight() == lam
    assert config.build({"arch": arch, "drloc_lambda": 0.3}).drloc_weight() == 0.3


def test_explicit_values_override_the_recipe():
    c = config.build({"epochs": 3, "drloc_abs": False}, recipe="drloc21")
    assert c.epochs == 3 and c.drloc_abs is False and c.grad_clip == 5.0


def test_augment_overrides_use_the_augment_parameter_names():
    c = config.build({"erasing_prob": 0.0, "mixup_alpha": 0.2, "label_smoothing": 0.0})
    # the erasing, jitter and mixing values resolved from the augment recipe ("basic") travel with them
    assert c.augment_overrides() == {"erase_p": 0.0, "mixup_alpha": 0.2, "label_smoothing": 0.0,
                                     "mix_mode": "batch", "erase_mode": "mean", "erase_aspect": "log",
                                     "erase_tries": 10, "color_jitter": 0.0}


@pytest.mark.parametrize("dataset,policy", [("svhn", "svhn"), ("tiny-imagenet", "imagenet"), ("cinic10", "imagenet"),
                                            ("cifar100", "cifar10")])
def test_finetune_autoaugment_policy_follows_the_dataset(dataset, policy):
    assert config.build({"dataset": dataset}, recipe="gani22-finetune").augment_overrides()["policy"] == policy
    assert "policy" not in config.build({"dataset": dataset}).augment_overrides()  # basic: no AutoAugment


@pytest.mark.parametrize("values,needle", [({"epochs": 0}, "--epochs must be positive"),
                                           ({"drop_path": 1.5}, "--drop-path"),
                                           ({"precision": "fp64"}, "--precision"),
                                           ({"ema": 1.0}, "--ema")])
def test_invalid_values(values, needle):
    with pytest.raises(UserError, match=needle):
        config.build(values)


def test_every_recipe_sets_only_known_fields():
    for name in config.recipe_names():
        assert set(config.load_recipe(name)) <= set(config.FIELDS)
