"""Shared fixtures of the pytest-benchmark suites (`pytest benchmarks --benchmark-only`)."""

import os

# Triton runs on CPU tensors only through its interpreter, and only if this is set before import.
os.environ.setdefault("TRITON_INTERPRET", "1")
# OpenMP threads that spin while waiting for a descheduled sibling burn the cores they wait for: on a
# busy machine that made the batched augmentation 15x slower with 2 threads (195 vs 3,460 images/s).
# Passive waiting costs nothing measurable on an idle machine. Read when torch loads, so set it first.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from benchmarks.reference_train import cifar_like_arrays  # noqa: E402

# The machine these numbers are quoted for has 2 cores; fix the thread count so runs compare.
torch.set_num_threads(2)


@pytest.fixture(scope="session")
def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@pytest.fixture(scope="session")
def cifar_like() -> tuple[np.ndarray, np.ndarray]:
    """10,240 random 32x32x3 uint8 images and labels 0..9 (reference_train.cifar_like_arrays)."""
    return cifar_like_arrays()


@pytest.fixture(scope="session")
def rates() -> dict[str, float]:
    """images/s measured so far in the session, so a benchmark can report its ratio to a baseline."""
    return {}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def record_rate(benchmark, rates: dict, key: str, images_per_round: int, baseline: str | None = None) -> float:
    """Turn the benchmark's median round time into images/s in extra_info (and the ratio to a baseline
    measured earlier in the session, when there is one)."""
    rate = images_per_round / benchmark.stats.stats.median
    rates[key] = rate
    benchmark.extra_info["images_per_s"] = round(rate, 1)
    benchmark.extra_info["threads"] = torch.get_num_threads()
    # other processes on the machine skew every figure here; record how busy it was
    benchmark.extra_info["load_average_1min"] = round(os.getloadavg()[0], 2)
    if baseline is not None:
        benchmark.extra_info["baseline"] = baseline
        benchmark.extra_info["baseline_images_per_s"] = round(rates[baseline], 1) if baseline in rates else None
        benchmark.extra_info["ratio"] = round(rate / rates[baseline], 2) if baseline in rates else None
    return rate
