"""One training step of a model under each precision / compile variant, images/s (a quick probe, not a suite);
with --record, the eager-vs-compiled measurement that `--compile auto` reads on a CPU.

    T=2 python -m benchmarks.precision_step vit fp32,amp,pure,compile,compile_amp
    T=2 python -m benchmarks.precision_step vit --record [--batch 128] [--precision bf16] [--drloc | --dino]

fp32: eager fp32; amp: bf16 autocast; pure: weights and inputs in bf16; compile: torch.compile of the
model; compile_amp: both. Batch 128 of 32x32x3, fused AdamW; two warm-up steps (incl. the compile), 4 timed;
attention backends as auto chooses them (measured per shape, fastvit.choices).
--record times fastvit's supervised step (train.Supervised, 32 px, 10 classes) eager and compiled, median
of 4 interleaved rounds after warm-up, and stores the choice (compiled only if COMPILE_MARGIN faster) in the
choices cache under the key
`train.run` looks up for the same arch, image size, batch, precision, CPU and thread count (T).
--drloc adds L_drloc (l1, 64 pairs, on the final grid: the CLI's `--drloc`) to every variant and
records under the key of `--drloc` runs. --dino times `fastvit pretrain`'s step instead (the gani22-pretrain
recipe: DINO over 2 global + 8 local views of a batch of images, the teacher's EMA after the step) and
records under the key of pretraining runs with that recipe, arch and batch.
"""

import argparse
import functools
import itertools
import os
import time

import torch

from fastvit import choices, config, hostmem, models
from fastvit.objectives.dino import DINO
from fastvit.objectives.drloc import Drloc
from fastvit.train import Supervised, autocast, local_crop_size, speed_key_fields

BATCH = 128
IMG = 32


def as_variant(objective: torch.nn.Module, variant: str) -> tuple:
    """(the callable a step runs, its autocast precision) for a variant name."""
    return (torch.compile(objective) if "compile" in variant else objective), ("bf16" if "amp" in variant else "fp32")


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
    forward, precision = as_variant(objective, variant)

    def step():
        with autocast(x.device, precision):
            loss, _ = forward(x, y, **Supervised.step_inputs(0.5, 0, next(counter), x.device))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def pretrain_config(arch: str, batch: int) -> config.Config:
    return config.build({"arch": arch, "batch_size": batch, "img_size": IMG}, recipe="gani22-pretrain",
                        command="pretrain")


def make_dino_step(arch: str, variant: str, batch: int = BATCH):
    """fastvit pretrain's step on random views: the DINO objective, backward, AdamW, the teacher's EMA."""
    hostmem.retain_freed_memory()
    torch.manual_seed(0)
    cfg = pretrain_config(arch, batch)
    model = models.create(arch, img_size=IMG, num_classes=0, drop_path=cfg.arch_drop_path())
    dino = DINO(model, total_epochs=cfg.epochs, n_local=cfg.n_local, out_dim=cfg.dino_out_dim,
                teacher_drop_path=cfg.teacher_drop_path)
    local = local_crop_size(cfg, IMG)
    views = [torch.randn(batch, 3, IMG, IMG) for _ in range(2)] + [
        torch.randn(batch, 3, local, local) for _ in range(cfg.n_local)]
    epoch = torch.zeros(())  # a device tensor, as train.run passes it
    opt = torch.optim.AdamW([p for p in dino.parameters() if p.requires_grad], lr=1e-4, fused=True)
    forward, precision = as_variant(dino, variant)  # DINO compiled whole, as train.run compiles it

    def step():
        with autocast(views[0].device, precision):
            loss = forward(views, epoch)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        dino.update_teacher(cfg.teacher_momentum)

    return step


def images_per_s(arch: str, variant: str, steps: int = 4, drloc: bool = False, dino: bool = False) -> float:
    """Source images per second (for --dino: images, each seen as 10 views)."""
    step = make_dino_step(arch, variant) if dino else make_step(arch, variant, drloc=drloc)
    step()
    step()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    return BATCH * steps / (time.perf_counter() - t0)


def record_compile(arch: str, batch: int, precision: str, drloc: bool = False, dino: bool = False) -> dict:
    if dino:
        key_fields = speed_key_fields(pretrain_config(arch, batch), IMG)
        make = make_dino_step
    else:
        key_fields = speed_key_fields(config.build({"arch": arch, "batch_size": batch, "drloc": drloc}), IMG)
        make = functools.partial(make_step, drloc=drloc)
    variant = "amp" if precision == "bf16" else ""
    candidates = {"eager": make(arch, variant, batch), "compiled": make(arch, f"compile{variant}", batch)}
    return choices.fastest(choices.compile_key("cpu", key_fields, precision), candidates, "cpu", baseline="eager",
                           margin=choices.COMPILE_MARGIN)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.precision_step")
    p.add_argument("arch")
    p.add_argument("variants", nargs="?", default="fp32,amp", help="comma-separated (see the module docstring)")
    p.add_argument("--record", action="store_true", help="measure eager vs compiled and cache it for --compile auto")
    p.add_argument("--batch", type=int, default=BATCH)
    p.add_argument("--precision", default="fp32", choices=("fp32", "bf16"))
    group = p.add_mutually_exclusive_group()
    group.add_argument("--drloc", action="store_true", help="add L_drloc to the step (and record for --drloc runs)")
    group.add_argument("--dino", action="store_true", help="time (and record for) the pretraining step")
    args = p.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("T", "1")))
    if args.record:
        record = record_compile(args.arch, args.batch, args.precision, args.drloc, args.dino)
        what = "pretrain" if args.dino else "train"
        print(f"{args.arch} {what} batch {args.batch} {args.precision}: {record} -> {choices.cache_path()}",
              flush=True)
        return
    for variant in args.variants.split(","):
        rate = images_per_s(args.arch, variant, drloc=args.drloc, dino=args.dino)
        print(f"{args.arch} {variant}: {rate:.1f} img/s", flush=True)


if __name__ == "__main__":
    main()
