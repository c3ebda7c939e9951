"""The papers' training steps, the end-to-end benchmarks' baseline, served from a process of their own.

    with ReferenceProcess("train_vit") as ref:
        before = ref.rate(4)   # images/s of 4 reference steps
        ...                    # fastvit's run, in this process
        after = ref.rate(4)

Why a process of its own: `fastvit.train.run` sets process-wide malloc options (fastvit.hostmem) that the
papers' code does not, so a baseline measured after it in the same process runs faster than the papers'
code does, and one measured before it is minutes away from fastvit's figure. A spawned interpreter keeps
glibc's defaults and stays warm while fastvit runs, so the baseline can bracket fastvit's run: on a VM
whose speed drifts by tens of percent within minutes, both sides then see the same machine.

The steps: a torch DataLoader with 2 workers running the per-image PIL augmentations
(benchmarks/reference_pipeline.py), Mixup/CutMix on the batch (fine-tuning) or 2 + 8 multi-crop views
(DINO), paper A's ViT or Swin as its code computes them (benchmarks/reference_models.py), eager fp32,
AdamW (foreach, torch's default). `supervised_step` also runs paper B's pipeline (pipeline="drloc21":
timm's RandomResizedCrop to 224 + RandAugment + pixel erasing, ImageNet stats, timm's Mixup) for Swin-T
with L_drloc; the ReferenceProcess targets all use paper A's.
"""

from __future__ import annotations

import itertools
import multiprocessing
import time
import traceback

import numpy as np
import torch

from benchmarks.reference_models import SWIN_T, PlainDrloc, PlainSwin, PlainViT
from benchmarks.reference_pipeline import drloc21_loader, finetune_loader, multicrop_loader

BATCH = 256
PRETRAIN_BATCH = 64  # paper A's SSL reference was measured at batch 64 here
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)  # CIFAR-10 per-channel statistics, 0-1 scale
CIFAR_STD = (0.2470, 0.2435, 0.2616)
IMAGENET_MEAN = (0.485, 0.456, 0.406)  # timm's IMAGENET_DEFAULT_MEAN / STD: paper B's code uses them on every dataset
IMAGENET_STD = (0.229, 0.224, 0.225)
# supervised_step's pipelines, named after the fastvit recipes they are the baseline of: (loader, mean, std)
PIPELINES = {"gani22-finetune": (finetune_loader, CIFAR_MEAN, CIFAR_STD),
             "drloc21": (drloc21_loader, IMAGENET_MEAN, IMAGENET_STD)}  # its loader crops to 224 by default
TARGETS = ("train_vit", "train_swin", "pretrain_vit")
ANSWER_TIMEOUT_S = 900  # a few steps take seconds to a minute on 2 cores; this is a hang


def cifar_like_arrays(n: int = 10_240) -> tuple[np.ndarray, np.ndarray]:
    """n random 32x32x3 uint8 images and labels 0..9: CIFAR-10's shape without its files (every op here
    costs the same on noise as on photos). Seeded: the benchmark process and the reference process
    build the same set."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)
    return images, rng.integers(0, 10, size=n).astype(np.int64)


def soft_ce(logits, targets):
    return torch.sum(-targets * torch.log_softmax(logits, dim=-1), dim=-1).mean()


def reference_model(arch: str):
    """The frozen paper model behind fastvit's `arch`: vit and swin (paper A, 32 px), swin_t (paper B, 224 px)."""
    if arch == "swin_t":
        return PlainSwin(**SWIN_T, num_classes=10, drop_path=0.1)
    return {"vit": PlainViT, "swin": PlainSwin}[arch](num_classes=10, drop_path=0.1)


def supervised_step(arch: str, images, labels, batch: int = BATCH, device="cpu", num_workers: int = 2,
                    drloc: bool = False, pipeline: str = "gani22-finetune"):
    """One supervised training step of the papers' code (returns the step and its batch size).

    pipeline: "gani22-finetune" (paper A's fine-tuning at the images' own size, CIFAR stats) or "drloc21"
    (paper B's: the images cropped and resized to 224 by the transform itself, ImageNet stats, timm's Mixup).
    drloc: paper B's L_drloc on the final grid at lambda 0.5.
    """
    if pipeline not in PIPELINES:
        raise ValueError(f"unknown reference pipeline {pipeline!r}; one of {', '.join(PIPELINES)}")
    loader, mean, std = PIPELINES[pipeline]
    batches = loader(images, labels, batch_size=batch, num_classes=10, mean=mean, std=std, num_workers=num_workers,
                     seed=0)
    torch.manual_seed(0)
    model = reference_model(arch).to(device)
    params = list(model.parameters())
    if drloc:
        drloc_loss = PlainDrloc(model.num_features).to(device)
        params += list(drloc_loss.parameters())
    opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.05)

    def step():
        x, targets = next(batches)
        x, targets = x.to(device, non_blocking=True), targets.to(device, non_blocking=True)
        if drloc:
            grid = model.forward_grid(x)
            loss = soft_ce(model.head(grid.flatten(1, 2).mean(dim=1)), targets) + 0.5 * drloc_loss(grid)
        else:
            loss = soft_ce(model(x), targets)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step, batch


def pretrain_step(images, labels, batch: int = PRETRAIN_BATCH, device="cpu", num_workers: int = 2):
    """One DINO step of paper A's pretraining: 2 x 32 px + 8 x 16 px views, teacher + student (returns the
    step and its batch size, in source images)."""
    from fastvit.objectives.dino import DINO, momentum_schedule

    views = multicrop_loader(images, labels, batch_size=batch, mean=CIFAR_MEAN, std=CIFAR_STD,
                             global_size=32, local_size=16, n_local=8, num_workers=num_workers, seed=0)
    torch.manual_seed(0)
    dino = DINO(reference_model("vit"), total_epochs=100).to(device)
    opt = torch.optim.AdamW([p for p in dino.parameters() if p.requires_grad], lr=1e-4, weight_decay=0.04)
    step_index = itertools.count()

    def step():
        dino([v.to(device, non_blocking=True) for v in next(views)], 0.0).backward()
        torch.nn.utils.clip_grad_norm_(dino.student.parameters(), 3.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        dino.update_teacher(momentum_schedule(next(step_index), 1000))

    return step, batch


def build_step(target: str, images, labels):
    if target == "pretrain_vit":
        return pretrain_step(images, labels)
    return supervised_step(target.removeprefix("train_"), images, labels)


def _serve(conn, target: str, threads: int, n_images: int) -> None:
    """The reference process: build the step, run one warm-up step, then answer each request for n steps
    with their images/s, until asked for 0."""
    try:
        torch.set_num_threads(threads)
        step, batch = build_step(target, *cifar_like_arrays(n_images))
        step()  # loader workers started, buffers allocated
        conn.send(("ready", None))
        while n := conn.recv():
            t0 = time.perf_counter()
            for _ in range(n):
                step()
            conn.send(("rate", n * batch / (time.perf_counter() - t0)))
    except Exception:  # the parent raises it with the child's traceback
        conn.send(("error", traceback.format_exc()))
    finally:
        conn.close()


class ReferenceProcess:
    """A spawned process that holds one reference step warm; `rate(n)` times n steps there."""

    def __init__(self, target: str, threads: int | None = None, n_images: int = 10_240):
        if target not in TARGETS:
            raise ValueError(f"unknown reference target {target!r}; one of {', '.join(TARGETS)}")
        ctx = multiprocessing.get_context("spawn")
        self._conn, child = ctx.Pipe()
        # not a daemon: the reference's DataLoader starts worker processes of its own
        self._proc = ctx.Process(target=_serve, args=(child, target, threads or torch.get_num_threads(), n_images),
                                 name=f"reference-{target}")
        self._proc.start()
        child.close()
        self._receive("ready")

    def _receive(self, kind: str):
        if not self._conn.poll(ANSWER_TIMEOUT_S):
            self.close()
            raise RuntimeError(f"the reference process gave no answer in {ANSWER_TIMEOUT_S} s")
        try:
            got, value = self._conn.recv()
        except EOFError:
            self._proc.join(timeout=5)
            code = self._proc.exitcode
            raise RuntimeError(f"the reference process exited (code {code}) before it answered") from None
        if got == "error":
            raise RuntimeError(f"the reference process failed:\n{value}")
        assert got == kind, (got, kind)
        return value

    def rate(self, steps: int) -> float:
        """images/s of `steps` reference steps, timed in the reference process."""
        if steps < 1:
            raise ValueError("steps must be >= 1")
        self._conn.send(steps)
        return self._receive("rate")

    def close(self) -> None:
        if self._proc.is_alive():
            try:
                self._conn.send(0)
            except (BrokenPipeError, OSError):
                pass
            self._proc.join(timeout=30)
            if self._proc.is_alive():
                self._proc.terminate()
                self._proc.join()
        self._conn.close()

    def __enter__(self) -> ReferenceProcess:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
