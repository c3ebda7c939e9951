"""No host sync per batch: every recipe's transform, and the issue's proof through `fastvit.train.run`.

Counted with tests/host_syncs.py on the CPU: the calls counted there are the ones that stall the host
on a GPU (nonzero, bincount, .item(), .tolist(), boolean-mask indexing, ...).
"""

import pytest
import torch

import fastvit.augment as A
from fastvit import config, train
from tests.host_syncs import count_host_syncs

MEAN, STD = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)


def batch(b=32, c=3, side=32):
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (b, c, side, side), dtype=torch.uint8, generator=g), torch.arange(b) % 10


@pytest.mark.parametrize("recipe, params, c, side, img_size", [
    ("basic", {}, 3, 32, 32),
    ("basic", {}, 1, 28, 32),
    ("gani22-finetune", {}, 3, 32, 32),
    ("gani22-finetune", {}, 1, 28, 32),
    ("gani22-finetune", {"policy": "svhn"}, 3, 32, 32),
    ("gani22-finetune", {"policy": "imagenet", "erase_mode": "pixel"}, 3, 32, 32),
    ("gani22-finetune", {"mix_mode": "pair", "erase_mode": "mean", "erase_aspect": "log"}, 3, 32, 32),
    ("drloc21", {}, 3, 32, 32),
    ("drloc21", {"color_jitter": 0.4, "mix_mode": "pair"}, 3, 32, 32),
    ("drloc21", {}, 3, 32, 64),  # upsampling crops
    ("drloc21", {}, 1, 28, 32),
])
def test_train_transforms_do_not_sync(recipe, params, c, side, img_size):
    x, y = batch(c=c, side=side)
    mean, std = (MEAN, STD) if c == 3 else ((0.3,), (0.3,))
    t = A.build_train_transform(recipe, img_size=img_size, mean=mean, std=std, num_classes=10, **params)
    evaluate = A.build_eval_transform(img_size=img_size, mean=mean, std=std)
    g = torch.Generator().manual_seed(1)
    with count_host_syncs() as c_:
        out, _ = t(x, y, g)
        evaluate(x)
    assert out.shape[-1] == img_size
    assert c_.total == 0, c_.by_name


def test_paper_b_eval_transform_does_not_sync():
    x, _ = batch(b=4)
    evaluate = A.build_eval_transform(img_size=224, mean=MEAN, std=STD, resize=256)
    with count_host_syncs() as c_:
        evaluate(x)
    assert c_.total == 0, c_.by_name


@pytest.mark.parametrize("c, side, sizes", [(3, 32, (32, 16)), (1, 28, (28, 12)), (3, 24, (32, 16))])
def test_multicrop_does_not_sync(c, side, sizes):
    x, _ = batch(b=8, c=c, side=side)
    mean, std = (MEAN, STD) if c == 3 else ((0.3,), (0.3,))
    mc = A.MultiCrop(*sizes, n_local=4, mean=mean, std=std)
    with count_host_syncs() as c_:
        views = mc(x, torch.Generator().manual_seed(2))
    assert len(views) == 6
    assert c_.total == 0, c_.by_name


# issue #15's three runs and issue #12's L_drloc run: (command, flags)
RUNS = {
    "swin-drloc-none": ("train", dict(arch="swin_tiny", drloc=True, augment="none")),
    "vit-gani22-finetune": ("train", dict(arch="vit_tiny", augment="gani22-finetune")),
    "swin-drloc21": ("train", dict(arch="swin_tiny", augment="drloc21", img_size=32)),
    "pretrain-vit-p8": ("pretrain", dict(arch="vit_tiny_p8", n_local=2)),
}


def syncs_of_a_run(command, flags, steps, out, fmnist_dir, cache_dir):
    cfg = config.build(dict(dataset="fashion-mnist", data_dir=str(fmnist_dir), cache_dir=str(cache_dir),
                            out=str(out), epochs=1, steps_per_epoch=steps, batch_size=16, log_every=10_000,
                            warmup_epochs=0.0, **flags), command=command)
    with count_host_syncs() as c:
        train.run(cfg)
    return c.by_name


@pytest.mark.slow
@pytest.mark.parametrize("run", list(RUNS))
def test_sixteen_more_steps_add_no_host_sync(run, tmp_path, fmnist_dir, cache_dir):
    command, flags = RUNS[run]
    short = syncs_of_a_run(command, flags, 16, tmp_path / "short", fmnist_dir, cache_dir)
    long = syncs_of_a_run(command, flags, 32, tmp_path / "long", fmnist_dir, cache_dir)
    # setup, evaluation and checkpointing sync a fixed number of times; the steps add none
    assert sum(short.values()) > 0, "the counter saw nothing at all: it is not counting"
    assert dict(long) == dict(short), {k: long[k] - short[k] for k in set(long) | set(short)}
