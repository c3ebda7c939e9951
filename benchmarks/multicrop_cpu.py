"""MultiCrop alone on the CPU: batched torch executor vs fused numba executor, images/s.

    OMP_WAIT_POLICY=PASSIVE python -m benchmarks.multicrop_cpu [--batch 256] [--rounds 15]

Paper A's views (2 x 32 px + 8 x 16 px) of a 256-image 32x32x3 uint8 batch, at 1 torch + 1 numba
thread, then 2 + 2. The executors alternate round by round and the medians are compared, so load
from other processes on a shared machine hits both alike. Also times what computing the resampling
weights in torch (`resample_weights`, as the torch executor does) would add to a fused batch; the
fused kernel computes its taps itself.
"""

import argparse
import os
import statistics
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # read when torch loads

import numba  # noqa: E402
import torch  # noqa: E402

from benchmarks.conftest import CIFAR_MEAN, CIFAR_STD  # noqa: E402
from fastvit.loaders.augment import MultiCrop, resample_weights  # noqa: E402


def weights_cost(batch: int, generator: torch.Generator) -> float:
    """Seconds to build one batch's dense resampling weights in torch (global + local views)."""
    start = time.perf_counter()
    for copies, side, size in ((2, 32, 32), (8, 32, 16)):
        n = copies * batch
        length = torch.randint(8, side + 1, (2 * n,), generator=generator)
        resample_weights(side - length, length, torch.full((2 * n,), side), size, mode="bicubic",
                         antialias=length > size, reverse=torch.rand(2 * n, generator=generator) < 0.5)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    images = torch.randint(0, 256, (args.batch, 3, 32, 32), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(0))
    multicrop = MultiCrop(32, 16, n_local=8, mean=CIFAR_MEAN, std=CIFAR_STD)
    generator = torch.Generator().manual_seed(0)
    print(f"batch {args.batch}, {args.rounds} alternating rounds, load average {os.getloadavg()[0]:.2f}")
    for threads in (1, 2):
        torch.set_num_threads(threads)
        numba.set_num_threads(threads)
        times: dict[str, list[float]] = {"torch": [], "fused": []}
        for r in range(args.rounds + 1):  # round 0 warms up (and compiles / loads the numba cache)
            for executor in times:
                os.environ["FASTVIT_AUGMENT"] = executor
                start = time.perf_counter()
                multicrop(images, generator)
                if r:
                    times[executor].append(time.perf_counter() - start)
        rate = {k: args.batch / statistics.median(v) for k, v in times.items()}
        extra = statistics.median(weights_cost(args.batch, generator) for _ in range(5))
        print(f"threads {threads}+{threads}: torch {rate['torch']:.0f} img/s, fused {rate['fused']:.0f} img/s, "
              f"x{rate['fused'] / rate['torch']:.2f}; torch-built weights would add "
              f"{1e3 * extra:.1f} ms to a {1e3 * args.batch / rate['fused']:.1f} ms fused batch")


if __name__ == "__main__":
    main()
