"""fastvit.hostmem: after retain_freed_memory(), repeated CPU training steps stop faulting their
activations back in. Each side runs in its own process, since malloc settings are process-wide."""

import platform
import subprocess
import sys

import pytest

STEPS = """
import resource, sys, torch
from fastvit import hostmem, models
torch.set_num_threads(1)
applied = hostmem.retain_freed_memory() if sys.argv[1] == "retain" else None
torch.manual_seed(0)
model = models.create("vit", img_size=32, num_classes=10)
x, y = torch.randn(64, 3, 32, 32), torch.randint(0, 10, (64,))
def step():
    torch.nn.functional.cross_entropy(model(x), y).backward()
step(); step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(3):
    step()
print(applied, (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 3)
"""


def faults_per_step(mode: str) -> tuple[str, float]:
    out = subprocess.run([sys.executable, "-c", STEPS, mode], capture_output=True, text=True, check=True)
    applied, faults = out.stdout.split()
    return applied, float(faults)


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt settings are glibc's")
def test_retained_memory_stops_per_step_page_faults():
    _, default = faults_per_step("default")
    applied, retained = faults_per_step("retain")
    assert applied == "True"
    # glibc's defaults hand the step's activations back to the kernel: thousands of faults per step
    assert default > 2000, default
    assert retained < default / 20, (retained, default)


def test_retain_is_idempotent():
    from fastvit import hostmem

    first = hostmem.retain_freed_memory()
    assert hostmem.retain_freed_memory() is first
    assert first is (platform.libc_ver()[0] == "glibc")
