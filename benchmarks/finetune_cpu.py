"""The gani22-finetune train transform alone on the CPU: torch executor vs fused numba executor, images/s.

    OMP_WAIT_POLICY=PASSIVE python -m benchmarks.finetune_cpu [--batch 256] [--rounds 9]

A 256-image 32x32x3 uint8 batch through `build_train_transform("gani22-finetune", policy="cifar10")`
(crop pad 4 + flip, AutoAugment, normalization, erasing, Mixup/CutMix, smoothing), at 1 torch + 1
numba thread, then 2 + 2. The executors alternate round by round and the medians are compared, so
load from other processes on a shared machine hits both alike. The first (warm-up) call of the fused
executor loads the numba kernels from the cache (or compiles them once, ~45 s on a busy 2-core VM).
"""

import argparse
import os
import statistics
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # read when torch loads

import numba  # noqa: E402
import torch  # noqa: E402

from benchmarks.conftest import CIFAR_MEAN, CIFAR_STD  # noqa: E402
from fastvit.loaders.augment import build_train_transform  # noqa: E402


def measure(batch: int, rounds: int, calls: int, threads: int) -> dict[str, float]:
    torch.set_num_threads(threads)
    numba.set_num_threads(threads)
    images = torch.randint(0, 256, (batch, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    labels = torch.arange(batch) % 10
    transforms = {name: build_train_transform("gani22-finetune", img_size=32, mean=CIFAR_MEAN, std=CIFAR_STD,
                                              num_classes=10, policy="cifar10", executor=name)
                  for name in ("torch", "fused")}
    generator = torch.Generator().manual_seed(0)
    for t in transforms.values():
        t(images, labels, generator)  # warm-up (kernel load / compile)
    times = {name: [] for name in transforms}
    for _ in range(rounds):
        for name, t in transforms.items():
            start = time.perf_counter()
            for _ in range(calls):
                t(images, labels, generator)
            times[name].append((time.perf_counter() - start) / calls)
    return {name: batch / statistics.median(v) for name, v in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--calls", type=int, default=10, help="transform calls per timed round")
    args = parser.parse_args()
    print(f"load average (1 min) before: {os.getloadavg()[0]:.2f}")
    for threads in (1, 2):
        rate = measure(args.batch, args.rounds, args.calls, threads)
        print(f"{threads} torch + {threads} numba threads: torch {rate['torch']:,.0f} img/s, "
              f"fused {rate['fused']:,.0f} img/s, fused / torch {rate['fused'] / rate['torch']:.2f}x")
    print(f"load average (1 min) after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
