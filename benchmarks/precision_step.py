"""One training step of a model under each precision / compile variant, images/s (a quick probe, not a suite);
with --record, the eager-vs-compiled measurement that `--compile auto` reads on a CPU.

    T=2 python -m benchmarks.precision_step vit fp32,amp,pure,compile,compile_amp
    T=2 python -m benchmarks.precision_step vit --record [--batch 128] [--precision bf16] [--drloc]

fp32: eager fp32; amp: bf16 autocast; pure: weights and inputs in bf16; compile: torch.compile of the
model; compile_amp: both. Batch 128 of 32x32x3, fused AdamW; two warm-up steps (incl. the compile), 4 timed;
attention backends as auto chooses them (measured per shape, fastvit.choices).
--record times fastvit's supervised step (train.Supervised, 32 px, 10 classes) eager and compiled, median
of 4 interleaved rounds after warm-up, and stores the choice (compiled only if COMPILE_MARGIN faster) in the
choices cache under the key
`train.run` looks up for the same arch, image size, batch, precision, CPU and thread count (T).
--drloc adds L_drloc (l1, 64 pairs, on the final grid: the CLI's `--drloc`) to every variant and
records under the key of `--drloc` runs.
"""

import argparse
import itertools
import os
import time

import torch

from fastvit import choices, hostmem, models
from fastvit.objectives.drloc import Drloc
from fastvit.train import Supervised, autocast

BATCH = 128
IMG = 32


def make_step(arch: str, variant: str, batch: int = BATCH, drloc: bool = False):
    # as train.run does on a CPU: without it the eager step re-faults its activations every step and a
    # record read compiled 1.45x faster (vit fp32, batch 256); with it eager was the faster (NOTES)
    hostmem.retain_freed_memory()
    torch.manual_seed(0)
    model = models.create(arch, img_size=IMG, num_classes=10)
    x, y = torch.randn(batch, 3, IMG, IMG), torch.randint(0, 10, (batch,))
    if "pure" in variant:
        model, x = model.to(torch.bfloat16), x.to(torch.bfloat16)
    hg, wg, dim = model.grid_shape
    objective = Supervised(model, Drloc([dim], grid_sizes=[(hg, wg)]) if drloc else None)
    counter = itertools.count()  # L_drloc's step: new pairs every step, one compiled graph for all
    opt = torch.optim.AdamW(objective.parameters(), lr=1e-3, fused=True)
    forward = torch.compile(objective) if "compile" in variant else objective
    precision = "bf16" if "amp" in variant else "fp32"

    def step():
        with autocast(x.device, precision):
            loss, _ = forward(x, y, **Supervised.step_inputs(0.5, 0, next(counter), x.device))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def images_per_s(arch: str, variant: str, steps: int = 4, drloc: bool = False) -> float:
    step = make_step(arch, variant, drloc=drloc)
    step()
    step()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    return BATCH * steps / (time.perf_counter() - t0)


def record_compile(arch: str, batch: int, precision: str, drloc: bool = False) -> dict:
    key_fields = {"arch": arch, "img_size": IMG, "batch": batch, "objective": "drloc" if drloc else "supervised"}
    variant = "amp" if precision == "bf16" else ""
    candidates = {"eager": make_step(arch, variant, batch, drloc),
                  "compiled": make_step(arch, f"compile{variant}", batch, drloc)}
    return choices.fastest(choices.compile_key("cpu", key_fields, precision), candidates, "cpu", baseline="eager",
                           margin=choices.COMPILE_MARGIN)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.precision_step")
    p.add_argument("arch")
    p.add_argument("variants", nargs="?", default="fp32,amp", help="comma-separated (see the module docstring)")
    p.add_argument("--record", action="store_true", help="measure eager vs compiled and cache it for --compile auto")
    p.add_argument("--batch", type=int, default=BATCH)
    p.add_argument("--precision", default="fp32", choices=("fp32", "bf16"))
    p.add_argument("--drloc", action="store_true", help="add L_drloc to the step (and record for --drloc runs)")
    args = p.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("T", "1")))
    if args.record:
        record = record_compile(args.arch, args.batch, args.precision, args.drloc)
        print(f"{args.arch} batch {args.batch} {args.precision}: {record} -> {choices.cache_path()}", flush=True)
        return
    for variant in args.variants.split(","):
        print(f"{args.arch} {variant}: {images_per_s(args.arch, variant, drloc=args.drloc):.1f} img/s", flush=True)


if __name__ == "__main__":
    main()
