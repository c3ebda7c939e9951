"""Data pipeline throughput: fastvit's loader + batched augmentation vs the papers' PIL DataLoader.

    pytest benchmarks/bench_data.py --benchmark-only --benchmark-json runs/bench_data.json

Each pair measures images/s on 32x32x3 uint8 data (CIFAR-10's shape) with batches of 256:
- paper A fine-tuning (`gani22-finetune`: random crop pad 4, flip, AutoAugment CIFAR10, erasing .25,
  Mixup/CutMix .5, smoothing .1): `ResidentLoader` + `build_train_transform` in this process, against
  a torch DataLoader with 2 workers running the same augmentations per image with PIL
  (`benchmarks/reference_pipeline.py`) plus batch Mixup/CutMix;
- paper A's DINO multi-crop (2 x 32 px + 8 x 16 px views): `ResidentLoader` + `MultiCrop` against the
  PIL multi-crop DataLoader.
Each benchmark writes `images_per_s` to extra_info; the fastvit ones also `ratio` (to the reference
measured just before them; the references run first in file order). Torch uses 2 threads (conftest);
the reference uses 2 worker processes plus the main process for Mixup/CutMix. Each reference's
DataLoader lives only inside its own test: idle workers refill their prefetch queue, which would steal
the cores from whatever is timed next. (Interleaving the two sides round by round fails for the same
reason, so on a shared machine compare figures from one run and look at `load_average_1min`.)
"""

import torch

from benchmarks.conftest import record_rate, sync
from benchmarks.reference_pipeline import finetune_loader, multicrop_loader
from benchmarks.reference_train import CIFAR_MEAN, CIFAR_STD
from fastvit.augment import MultiCrop, build_train_transform
from fastvit.loaders.pipeline import FFCVLoader, ResidentLoader

BATCH = 256
# Batches per timed round. A round spans at least the DataLoader's prefetch depth (2 workers x 2
# batches) and a warm-up round drains what the workers produced before timing, so the reference is
# timed in its steady state, not on batches it prepared while nobody was looking.
ROUND_BATCHES = 4
REFERENCE_MULTICROP_BATCH = 64  # per-image PIL work does not depend on it; keeps rounds short


def endless(loader):
    """Batches across epochs, so a timed round never pays an epoch's start-up."""
    while True:
        yield from loader


def test_reference_finetune_pil_dataloader(benchmark, cifar_like, rates, device):
    images, labels = cifar_like
    batches = finetune_loader(images, labels, batch_size=BATCH, num_classes=10, mean=CIFAR_MEAN,
                              std=CIFAR_STD, num_workers=2, seed=0)
    next(batches)  # start the workers outside the timing

    def run():
        for _ in range(ROUND_BATCHES):
            x, targets = next(batches)
            x, targets = x.to(device), targets.to(device)
        sync(device)
        return x, targets

    x, targets = benchmark.pedantic(run, rounds=3, iterations=1, warmup_rounds=1)
    assert x.shape == (BATCH, 3, 32, 32) and targets.shape == (BATCH, 10)
    record_rate(benchmark, rates, "reference_finetune", ROUND_BATCHES * BATCH)


def test_fastvit_finetune_resident_batched(benchmark, cifar_like, rates, device):
    images, labels = cifar_like
    loader = ResidentLoader(torch.from_numpy(images), torch.from_numpy(labels), batch_size=BATCH,
                            device=device, seed=0)
    batches = endless(loader)
    transform = build_train_transform("gani22-finetune", img_size=32, mean=CIFAR_MEAN, std=CIFAR_STD,
                                      num_classes=10, policy="cifar10")
    generator = torch.Generator(device=device).manual_seed(0)

    def run():
        for _ in range(ROUND_BATCHES):
            images, labels = next(batches)
            x, targets = transform(images, labels, generator)
        sync(device)
        return x, targets

    x, targets = benchmark.pedantic(run, rounds=5, iterations=1, warmup_rounds=1)
    assert x.shape == (BATCH, 3, 32, 32) and targets.shape == (BATCH, 10)
    record_rate(benchmark, rates, "fastvit_finetune", ROUND_BATCHES * BATCH, baseline="reference_finetune")


def test_reference_multicrop_pil_dataloader(benchmark, cifar_like, rates, device):
    images, labels = cifar_like
    batches = multicrop_loader(images, labels, batch_size=REFERENCE_MULTICROP_BATCH, mean=CIFAR_MEAN,
                               std=CIFAR_STD, global_size=32, local_size=16, n_local=8, num_workers=2, seed=0)
    next(batches)

    def run():
        for _ in range(ROUND_BATCHES):
            views = [v.to(device) for v in next(batches)]
        sync(device)
        return views

    views = benchmark.pedantic(run, rounds=3, iterations=1, warmup_rounds=1)
    assert [v.shape[-1] for v in views] == [32, 32] + [16] * 8
    record_rate(benchmark, rates, "reference_multicrop", ROUND_BATCHES * REFERENCE_MULTICROP_BATCH)


def test_fastvit_multicrop_resident_batched(benchmark, cifar_like, rates, device):
    images, labels = cifar_like
    loader = ResidentLoader(torch.from_numpy(images), torch.from_numpy(labels), batch_size=BATCH,
                            device=device, seed=0)
    batches = endless(loader)
    multicrop = MultiCrop(32, 16, n_local=8, mean=CIFAR_MEAN, std=CIFAR_STD)
    generator = torch.Generator(device=device).manual_seed(0)

    def run():
        images, _ = next(batches)
        views = multicrop(images, generator)
        sync(device)
        return views

    views = benchmark.pedantic(run, rounds=5, iterations=1, warmup_rounds=1)
    assert [v.shape[-1] for v in views] == [32, 32] + [16] * 8
    record_rate(benchmark, rates, "fastvit_multicrop", BATCH, baseline="reference_multicrop")


def test_resident_loader_alone(benchmark, cifar_like, rates, device):
    """The loader's own cost per image (a gather on the device), for scale."""
    images, labels = cifar_like
    loader = ResidentLoader(torch.from_numpy(images), torch.from_numpy(labels), batch_size=BATCH,
                            device=device, seed=0)

    def run():
        count = 0
        for images, _ in loader:
            count += len(images)
        sync(device)
        return images, count

    images, count = benchmark.pedantic(run, rounds=5, iterations=1, warmup_rounds=1)
    assert images.shape == (BATCH, 3, 32, 32) and images.dtype == torch.uint8 and count == len(loader) * BATCH
    record_rate(benchmark, rates, "resident_loader", len(loader) * BATCH)


def test_ffcv_loader_alone(benchmark, cifar_like, rates, tmp_path_factory):
    """FFCV's loader over the same data stored raw in a .beton (decode = copy; 2 numba threads), for
    the choice between the loaders: the ffcv loader is for data that does not fit the device."""
    from fastvit.loaders.beton import write_split
    from fastvit.loaders.sources.common import Split

    images, labels = cifar_like
    path = tmp_path_factory.mktemp("bench") / "cifar-like-train.beton"
    threads = torch.get_num_threads()
    write_split(path, Split(labels=labels, images=images), dataset="cifar-like", split_name="train",
                classes=[str(i) for i in range(10)], progress=False)
    torch.set_num_threads(threads)
    loader = FFCVLoader(path, batch_size=BATCH, num_workers=2, seed=0)

    def run():
        count = 0
        for batch, _ in loader:
            count += len(batch)
        return batch, count

    batch, count = benchmark.pedantic(run, rounds=3, iterations=1, warmup_rounds=1)
    assert batch.shape == (BATCH, 3, 32, 32) and batch.dtype == torch.uint8 and count == len(loader) * BATCH
    record_rate(benchmark, rates, "ffcv_loader", count, baseline="resident_loader")
