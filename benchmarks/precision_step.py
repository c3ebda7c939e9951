"""One training step of a model under each precision / compile variant, images/s (a quick probe, not a suite).

    T=2 python -m benchmarks.precision_step vit fp32,amp,pure,compile,compile_amp

fp32: eager fp32; amp: bf16 autocast; pure: weights and inputs in bf16; compile: torch.compile of the
model; compile_amp: both. Batch 128 of 32x32x3, AdamW; two warm-up steps (incl. the compile), 4 timed.
"""

import os
import sys
import time

import torch

from fastvit import models

BATCH = 128


def images_per_s(arch: str, variant: str, steps: int = 4) -> float:
    torch.manual_seed(0)
    model = models.create(arch, img_size=32, num_classes=10)
    x, y = torch.randn(BATCH, 3, 32, 32), torch.randint(0, 10, (BATCH,))
    if "pure" in variant:
        model, x = model.to(torch.bfloat16), x.to(torch.bfloat16)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    forward = torch.compile(model) if "compile" in variant else model

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled="amp" in variant):
            loss = torch.nn.functional.cross_entropy(forward(x).float(), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()
    step()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    return BATCH * steps / (time.perf_counter() - t0)


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2:
        sys.exit("usage: python -m benchmarks.precision_step ARCH VARIANT[,VARIANT...]")
    torch.set_num_threads(int(os.environ.get("T", "1")))
    for variant in argv[1].split(","):
        print(f"{argv[0]} {variant}: {images_per_s(argv[0], variant):.1f} img/s", flush=True)


if __name__ == "__main__":
    main()
