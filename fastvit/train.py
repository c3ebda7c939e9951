"""The training loop: supervised (+ L_drloc) and DINO self-supervised pretraining, top to bottom.

Run:  fastvit train --arch vit_tiny --dataset fashion-mnist --epochs 4        (see README for figures)
      torchrun --nproc_per_node=2 -m fastvit train ...   (global batch = --batch-size x processes)

Sections: setup -> data -> model/objective -> optimizer/compile/DDP -> resume -> helpers -> the loop.
Hot-path rule: no host-device sync inside a step except on logging/checkpoint steps.
"""

import contextlib
import json
import os
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from fastvit import augment, checkpoint, choices, config, distributed, hostmem, knn, loaders, models, pretrained
from fastvit.augment import MultiCrop
from fastvit.config import Config
from fastvit.errors import UserError
from fastvit.kernels.attention import preset_choices, record_choices, set_deterministic
from fastvit.objectives.dino import DINO, cancel_last_layer_grads, momentum_schedule
from fastvit.objectives.drloc import Drloc, drloc_lambda
from fastvit.schedules import cosine_schedule


class TrainingError(RuntimeError):
    """The run cannot go on (non-finite loss or state); the message names the step and the newest finite
    checkpoint (or says there is none)."""


RUN_FILES = ("config.json", "last.pt", "metrics.jsonl")  # any of these: the folder holds a run
NAN_HINT = "lower --lr, add --grad-clip, or use --precision fp32"


# ----------------------------------------------------------------------------------------------
# objectives: model + loss in one module, so DDP sees every trained parameter


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """CE against int labels or soft targets [B, classes] (mixup / label smoothing already applied)."""
    if targets.dtype == torch.long:
        return F.cross_entropy(logits.float(), targets)
    return torch.sum(-targets * F.log_softmax(logits.float(), dim=-1), dim=-1).mean()


class Supervised(nn.Module):
    """Cross-entropy on the logits, plus lambda * L_drloc on the final token grid(s) when enabled.

    drloc_weight (float32), seed and offset (int64): 0-dim tensors on the model's device, so that under
    torch.compile every step runs the same graph (Python numbers would be specialised: a recompile per
    value) and nothing is read back to the host. `step_inputs` makes them; Python numbers work eagerly.
    """

    def __init__(self, model: nn.Module, drloc: nn.Module | None = None, multiscale: bool = False):
        super().__init__()
        self.model, self.drloc, self.multiscale = model, drloc, multiscale

    @staticmethod
    def step_inputs(drloc_weight: float, seed: int, step: int, device) -> dict[str, torch.Tensor]:
        """forward's per-step keyword inputs as device scalars: fills from host numbers, never a read-back."""
        return {"drloc_weight": torch.full((), drloc_weight, dtype=torch.float32, device=device),
                "seed": torch.full((), seed, dtype=torch.int64, device=device),
                "offset": torch.full((), step, dtype=torch.int64, device=device)}

    def forward(self, x, targets, drloc_weight: torch.Tensor | None = None, seed: torch.Tensor | None = None,
                offset: torch.Tensor | None = None):
        if self.drloc is None:
            logits = self.model(x)
            return soft_cross_entropy(logits, targets), logits.new_zeros(())
        if self.multiscale:  # Swin: one grid per stage; pooled as forward_features pools the last one
            grids = self.model.forward_stages(x)
            pooled = self.model.norm(grids[-1]).mean(dim=(1, 2))
        else:
            pooled, grid = self.model.forward_features(x)
            grids = [grid]
        logits = self.model.forward_head(pooled)
        aux = self.drloc(grids, seed=seed, offset=offset)
        return soft_cross_entropy(logits, targets) + drloc_weight * aux, aux.detach()


# ----------------------------------------------------------------------------------------------
# optimizer parameter groups


def param_groups(module: nn.Module, no_decay_names: set[str], exclude: str = "1d-and-tables") -> list[dict]:
    """AdamW groups by --wd-exclude: "1d-and-tables" keeps decay off norms, biases, embeddings and tables
    (model.no_weight_decay()); "1d" off biases and 1-D tensors only (paper A's DINO); "none" decays all."""
    decay, no_decay = [], []
    for name, p in module.named_parameters():
        if not p.requires_grad:
            continue
        excluded = {"none": False, "1d": p.ndim <= 1 or name.endswith(".bias"),
                    "1d-and-tables": p.ndim <= 1 or name in no_decay_names}[exclude]
        (no_decay if excluded else decay).append(p)
    groups = [{"params": decay, "decay": True}, {"params": no_decay, "weight_decay": 0.0, "decay": False}]
    return [g for g in groups if g["params"]]


def clip_gradients_(params, max_norm: float, mode: str) -> None:
    """Clip in place, no host sync: the global norm, or each tensor's own norm (paper A's DINO clip_gradients:
    grad *= min(1, max_norm / (‖grad‖ + 1e-6)) per parameter tensor)."""
    if mode == "global":
        nn.utils.clip_grad_norm_(params, max_norm, foreach=True)
        return
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    norms = torch.stack(torch._foreach_norm(grads))  # (n_tensors,)
    torch._foreach_mul_(grads, list((max_norm / (norms + 1e-6)).clamp(max=1.0).unbind()))


def lr_schedule(cfg: Config, steps_per_epoch: int, world_size: int):
    """The per-step lr over cfg.schedule_length() epochs (training may stop before its end: paper B)."""
    scale = 1.0 if cfg.lr_base_batch is None else cfg.batch_size * world_size / cfg.lr_base_batch
    floor_scale = scale if cfg.lr_scale_all else 1.0  # paper B scales the floor and warm-up start too
    return cosine_schedule(cfg.lr * scale, cfg.min_lr * floor_scale, cfg.schedule_length() * steps_per_epoch,
                           round(cfg.warmup_epochs * steps_per_epoch), cfg.warmup_lr * floor_scale,
                           cosine_from_step_0=cfg.cosine_from == "step-0")


def prefixed_no_decay(module: nn.Module, prefix: str) -> set[str]:
    names = module.no_weight_decay() if hasattr(module, "no_weight_decay") else set()
    return {f"{prefix}{n}" for n in names}


# ----------------------------------------------------------------------------------------------
# data


IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # timm's IMAGENET_DEFAULT_*


def resolve_img_size(cfg: Config, data_size: int) -> int:
    if cfg.img_size is not None:
        return cfg.img_size
    size = models.default_img_size(cfg.arch)
    # paper A runs its small-image archs at 64 px on 64-px data (Tiny-ImageNet)
    return 64 if size == 32 and data_size == 64 else size


def normalization(cfg: Config, meta: dict) -> tuple[list[float], list[float]]:
    """(mean, std) in 0..1 units: the dataset's (its sidecar, 0-255 scale), or ImageNet's for RGB data (paper B)."""
    if cfg.norm_stats == "imagenet" and meta["channels"] == 3:
        return list(IMAGENET_MEAN), list(IMAGENET_STD)
    return [m / 255 for m in meta["mean"]], [s / 255 for s in meta["std"]]


def make_eval_transform(eval_crop_pct: float | None, test_meta: dict, img_size: int, mean, std):
    """The test images' transform: with eval_crop_pct, paper B's resize to img_size / pct then centre crop
    (256 -> 224); test splits that FFCV decodes are centre-cropped at decode time already (make_eval_batches)."""
    decoded = test_meta["storage"] == "jpeg" or test_meta.get("variable_size")
    resize = None if eval_crop_pct is None or decoded else int(img_size / eval_crop_pct)
    return augment.build_eval_transform(img_size=img_size, mean=mean, std=std, resize=resize)


def make_train_loader(cfg: Config, path: Path, meta: dict, img_size: int, device, d):
    """Resident (whole uint8 split on the device) when it fits, else FFCV; --subset needs resident."""
    common = dict(batch_size=cfg.batch_size, device=device, shuffle=True, drop_last=True, seed=cfg.seed,
                  rank=d.rank, world_size=d.world_size, repeats=cfg.repeats)
    if cfg.subset is not None:
        if cfg.loader == "ffcv":
            raise UserError("--subset works with the resident loader only (use --loader resident or auto)")
        images, labels = load_split(path, cfg.subset, device)
        return loaders.ResidentLoader(images, labels, **common)
    if meta["storage"] == "jpeg" or meta.get("variable_size"):  # decoded to img_size by FFCV
        if cfg.loader == "resident":
            raise UserError(f"{path.name} holds JPEG images of varying size: use --loader ffcv or auto")
        return loaders.make_loader("ffcv", path, img_size=img_size, num_workers=cfg.num_workers, **common)
    ffcv_only = {} if cfg.loader == "resident" else {"num_workers": cfg.num_workers}
    return loaders.make_loader(cfg.loader, path, **ffcv_only, **common)


def make_eval_batches(cfg: Config, path: Path, img_size: int, device, d):
    """(callable giving the test split's batches, the Dist to sum counts over, or None if each rank sees all)."""
    meta = loaders.read_meta(path)
    batch_size = 2 * cfg.batch_size
    if meta["storage"] == "jpeg" or meta.get("variable_size"):
        # FFCV's center crop (resize 256 -> crop 224 style); every rank evaluates the whole split
        loader = loaders.FFCVLoader(path, batch_size=batch_size, device=device, shuffle=False, drop_last=False,
                                    img_size=img_size, num_workers=cfg.num_workers)
        return lambda: iter(loader), None
    images, labels = load_split(path, None, device)
    images = images.permute(0, 3, 1, 2).contiguous()  # (N, C, H, W), once
    return lambda: resident_eval_batches(images, labels, batch_size, d), d


def load_split(path: Path, subset: int | None, device: torch.device):
    """The split as uint8 NHWC + int64 labels on the device (the resident layout)."""
    images, labels = loaders.load_arrays(path)
    if subset is not None:
        images, labels = images[:subset], labels[:subset]
    return torch.as_tensor(images).to(device), torch.as_tensor(labels).to(device)


def resident_eval_batches(images, labels, batch_size, d):
    """This rank's strided share of a resident test set, (uint8 NCHW, labels) batches."""
    mine = torch.arange(d.rank, len(images), d.world_size, device=images.device)
    for i in range(0, len(mine), batch_size):
        idx = mine[i : i + batch_size]
        yield images[idx], labels[idx]


@torch.no_grad()
def evaluate(model, batches, eval_tf, precision, d=None) -> dict:
    """Top-1/top-5 over (uint8 NCHW images, labels) batches; counts summed over ranks when d is given."""
    model.eval()
    counts = None  # correct@1, correct@5, n: kept on the device, read once at the end
    for images, labels in batches:
        x = eval_tf(images)
        with autocast(x.device, precision):
            logits = model(x).float()
        hit = logits.topk(min(5, logits.shape[1]), dim=1).indices == labels[:, None]
        batch = torch.stack([hit[:, 0].sum(), hit.any(1).sum(), torch.tensor(len(labels), device=x.device)])
        counts = batch.double() if counts is None else counts + batch
    if d is not None:
        distributed.all_reduce_sum(counts, d)
    model.train()
    c1, c5, n = counts.tolist()
    return {"test_acc1": 100 * c1 / n, "test_acc5": 100 * c5 / n}


def autocast(device: torch.device, precision: str):
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)


# ----------------------------------------------------------------------------------------------
# the run


def run(cfg: Config) -> dict:
    """Train (or pretrain) as cfg says; returns the last epoch's metrics."""
    d, device = distributed.init(cfg.device)
    if device.type == "cpu":
        hostmem.retain_freed_memory()  # activations are host memory: stop re-faulting them every step
    pretrain = cfg.command == "pretrain"
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True)
        torch.set_num_threads(1)  # CPU GEMM reductions then run in one fixed order
    set_deterministic(cfg.deterministic)  # Triton attention: one pinned launch config per shape, not autotuned
    torch.manual_seed(cfg.seed + d.rank)  # stochastic depth; init below re-seeds identically on all ranks
    run_dir = run_dir_path(cfg)  # an existing run without --resume is refused before any work

    # ---- data
    train_path, test_path = loaders.ensure_prepared(
        cfg.dataset, data_dir=Path(cfg.data_dir) if cfg.data_dir else None, cache_dir=cfg.resolved_cache_dir()
    )
    meta = loaders.read_meta(train_path)
    num_classes, in_chans = meta["num_classes"], meta["channels"]
    img_size = resolve_img_size(cfg, meta["height"])
    mean, std = normalization(cfg, meta)
    if cfg.subset is not None and cfg.subset > meta["count"]:
        raise UserError(f"--subset {cfg.subset} is more than the {meta['count']} training images of {cfg.dataset}")

    # ---- model, data, objective: all built and checked before anything is written
    if cfg.cuda_graphs is True and device.type != "cuda":
        raise UserError("--cuda-graphs needs a CUDA device")
    if cfg.attn != "auto":
        os.environ["FASTVIT_ATTN"] = cfg.attn  # read by every attention call; a backend that cannot run says why
    torch.manual_seed(cfg.seed)  # identical init on every rank
    model = models.create(cfg.arch, img_size=img_size, num_classes=0 if pretrain else num_classes,
                          in_chans=in_chans, drop_path=cfg.arch_drop_path()).to(device)
    if cfg.drloc and cfg.drloc_multiscale and not hasattr(model, "forward_stages"):
        raise UserError(f"--drloc-multiscale needs a multi-stage arch (swin, swin_t); {cfg.arch} has one grid")
    init = pretrained.match_backbone(model, cfg.init) if cfg.init else None  # refused here, before any write
    loader = make_train_loader(cfg, train_path, meta, img_size, device, d)
    eval_batches, eval_dist = make_eval_batches(cfg, test_path, img_size, device, d)
    steps_per_epoch = min(len(loader), cfg.steps_per_epoch or len(loader))
    eval_tf = make_eval_transform(cfg.eval_crop_pct, loaders.read_meta(test_path), img_size, mean, std)
    gen = torch.Generator(device=device).manual_seed(cfg.seed * 1_000_003 + d.rank)  # augmentation
    knn_splits = None
    if pretrain:
        local_size = local_crop_size(cfg, img_size)
        global_scale, local_scale = cfg.multicrop_scales()
        views_tf = MultiCrop(global_size=img_size, local_size=local_size, n_local=cfg.n_local,
                             global_scale=global_scale, local_scale=local_scale, mean=mean, std=std)
        objective = DINO(model, out_dim=cfg.dino_out_dim, n_local=cfg.n_local,
                         total_epochs=max(cfg.epochs, cfg.schedule_length()), teacher_temp=cfg.teacher_temp,
                         warmup_teacher_temp=cfg.warmup_teacher_temp,
                         warmup_teacher_temp_epochs=cfg.warmup_teacher_temp_epochs,
                         teacher_drop_path=cfg.teacher_drop_path).to(device)
        no_decay = prefixed_no_decay(model, "student.backbone.")
        # the k-NN monitor's labelled bank (train split) and scored split (test), decoded once
        knn_splits = (knn.LabelledSplit(train_path, cfg.knn_bank, img_size, device, 2 * cfg.batch_size),
                      knn.LabelledSplit(test_path, cfg.knn_test, img_size, device, 2 * cfg.batch_size)
                      ) if cfg.knn_every > 0 else None
    else:
        no_augment = eval_tf_with_labels(eval_tf, num_classes, cfg.label_smoothing)
        train_tf = (no_augment if cfg.augment == "none" else augment.build_train_transform(
            cfg.augment, img_size=img_size, mean=mean, std=std, num_classes=num_classes,
            **cfg.augment_overrides()))
        drloc = build_drloc(cfg, model, img_size, in_chans, device) if cfg.drloc else None
        objective = Supervised(model, drloc, cfg.drloc_multiscale).to(device)
        no_decay = prefixed_no_decay(model, "model.")

    # ---- resume, part 1: read and check the checkpoint (nothing written yet)
    resume_state = resume_checkpoint(cfg, run_dir)  # None: no --resume, or no checkpoint saved yet

    # ---- speed choices (auto = measured on this machine, cached: fastvit.choices), recorded in the run
    example = (dino_example(cfg, img_size, local_size, in_chans, device) if pretrain else
               supervised_example(cfg, img_size, in_chans, num_classes, device))
    # the step's attention input shapes: DINO batches the global views together and the local ones together
    probe_shapes = ([(2 * cfg.batch_size, in_chans, img_size, img_size),
                     (cfg.n_local * cfg.batch_size, in_chans, local_size, local_size)] if pretrain else
                    [(cfg.batch_size, in_chans, img_size, img_size)])
    # rank 0 measures; every rank then runs what it chose (one numeric recipe per run)
    key_fields = speed_key_fields(cfg, img_size)
    resolved = None
    if d.is_main:
        previous = read_resolved(Path(cfg.resume)) if cfg.resume else None  # a resumed run keeps its choices
        resolved = resolve_speed_choices(cfg, device, objective, model, example, probe_shapes, key_fields, previous)
    resolved = distributed.broadcast_object(resolved, d)
    if not d.is_main:
        resolved = resolve_speed_choices(cfg, device, objective, model, example, probe_shapes, key_fields, resolved)
    precision = resolved["precision"]
    if resume_state is not None:  # restored after the speed measurements, which run the model
        objective.load_state_dict(resume_state["objective"])
        loader.load_state_dict(resume_state["loader"])
    derived = config.derived(cfg, loader.num_samples, d.world_size, steps_per_epoch)
    stale = prepare_run_dir(cfg, d, run_dir, {"derived": derived, "resolved": resolved})
    log = Logger(run_dir, d, tensorboard=True)
    log.info(f"fastvit {cfg.command}: {cfg.arch} @ {img_size}px on {cfg.dataset} ({loader.num_samples} train "
             f"images, {num_classes} classes), {type(loader).__name__}, device {device}, {d.world_size} "
             f"process(es), run dir {run_dir}; {describe_resolved(resolved)}")
    if init is not None:
        init.load_into(model, log.info)
    if stale:
        log.info(f"removed {len(stale)} temp file(s) of interrupted checkpoint writes in {run_dir}")

    # ---- optimizer, precision, compile, DDP
    # one fused kernel over all parameters: on a CPU 4x faster than foreach (vit 10.8 vs 47.5 ms per step)
    fused = device.type in ("cuda", "cpu")
    lr = cfg.scaled_lr(d.world_size)
    opt = torch.optim.AdamW(param_groups(objective, no_decay, cfg.wd_exclude), lr=lr, weight_decay=cfg.weight_decay,
                            betas=(cfg.beta1, cfg.beta2), fused=fused or None)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    # schedules are pure functions of the step (resuming needs only the step counter), over the schedule
    # length, which may run past the last trained epoch (paper B: 100 of 300)
    total_steps = cfg.schedule_length() * steps_per_epoch
    lr_at = lr_schedule(cfg, steps_per_epoch, d.world_size)
    wd_end = cfg.weight_decay if cfg.weight_decay_end is None else cfg.weight_decay_end
    wd_at = cosine_schedule(cfg.weight_decay, wd_end, total_steps)
    ema = WeightEMA(model, cfg.ema) if cfg.ema else None
    trained = list(objective.parameters())  # what gradient clipping walks, listed once
    step_module = objective
    if d.enabled:
        step_module = nn.parallel.DistributedDataParallel(
            objective, device_ids=[device.index] if device.type == "cuda" else None)
    if resolved["compile"]:
        step_module = torch.compile(step_module, mode="reduce-overhead" if resolved["cuda_graphs"] else None)

    # ---- resume, part 2: optimizer, scaler, EMA, random streams, counters
    start = {"epoch": 0, "step": 0, "best_acc1": 0.0, "epoch_sums": None}
    last_good = None  # (path, step) of the newest checkpoint known to hold finite state
    if cfg.resume and resume_state is None:
        log.truncate_metrics(0)
        log.info(f"--resume {run_dir}: no checkpoint there yet (the run stopped before its first save); "
                 "starting it from step 0")
    if resume_state is not None:
        state = resume_state
        opt.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        if ema is not None:
            ema.load_state_dict(state["ema"])
        gen.set_state(state["rng"]["augment"].to(gen.get_state().device))
        torch.set_rng_state(state["rng"]["torch"])
        if device.type == "cuda":
            torch.cuda.set_rng_state(state["rng"]["cuda"], device)
        start = {k: state[k] for k in start}
        last_good = (run_dir / "last.pt", start["step"])
        log.truncate_metrics(start["epoch"])
        log.info(f"resumed from {run_dir / 'last.pt'} at epoch {start['epoch']}, step {start['step']}")

    def save(path_name: str, epoch: int, step: int, best: float, epoch_sums) -> None:
        nonlocal last_good
        state = {
            "objective": objective.state_dict(),  # uncompiled, unwrapped names
            "model": model.state_dict(),
            "optimizer": opt.state_dict(),
            "scaler": scaler.state_dict(),
            "ema": ema.state_dict() if ema is not None else None,
            "loader": loader.state_dict(),
            "rng": {"augment": gen.get_state(), "torch": torch.get_rng_state(),
                    "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None},
            "epoch": epoch, "step": step, "best_acc1": best, "epoch_sums": epoch_sums,
            "config": cfg.to_dict(), "resolved": resolved, "img_size": img_size, "num_classes": num_classes,
            "in_chans": in_chans, "mean": mean, "std": std,
        }
        if pretrain:
            state["teacher_backbone"] = objective.teacher_backbone_state_dict()
        # every rank checks (the state is the same on all), so all stop together
        bad = checkpoint.nonfinite_tensors({k: state[k] for k in ("objective", "optimizer", "ema")})
        if bad:
            raise TrainingError(f"the training state holds NaN/Inf after step {step} ({len(bad)} tensors, e.g. "
                                f"{bad[0]}); stopping without saving it. {newest_finite(last_good)} ({NAN_HINT})")
        if d.is_main:
            checkpoint.save(state, run_dir / path_name)
        if path_name == "last.pt":
            last_good = (run_dir / path_name, step)

    # ---- the loop
    step, best_acc1, metrics = start["step"], start["best_acc1"], {}
    pace = RunPace(step, cfg.epochs * steps_per_epoch)  # the run stops at --epochs; schedules may be longer
    nonfinite_at = torch.full((), -1, dtype=torch.long, device=device)  # first bad step, checked on syncs
    epoch_t = torch.zeros((), dtype=torch.float32, device=device)  # fractional epoch, filled each step
    for epoch in range(start["epoch"], cfg.epochs):
        resumed_mid_epoch = epoch == start["epoch"] and start["epoch_sums"] is not None
        loader.set_epoch(epoch)  # keeps a resumed mid-epoch position
        sums = (start["epoch_sums"] if resumed_mid_epoch else torch.zeros(3, dtype=torch.float64)).to(device)
        t0, images_seen = time.perf_counter(), 0
        lr_now = lr_at(max(step - 1, 0))  # the epoch line's lr when a resumed epoch has no batch left
        batches = loader if loader.next_batch < steps_per_epoch else ()  # resumed at this epoch's end
        # a context manager, so the bar is closed before an error message is printed
        with tqdm(total=steps_per_epoch, initial=loader.next_batch, disable=not d.is_main,
                  desc=f"epoch {epoch + 1}/{cfg.epochs}", mininterval=1.0, dynamic_ncols=True) as bar:
            for images, labels in batches:
                lr_now, wd_now = lr_at(step), wd_at(step)
                for group in opt.param_groups:
                    group["lr"] = lr_now
                    if group["decay"]:
                        group["weight_decay"] = wd_now
                epoch_f = step / steps_per_epoch
                epoch_t.fill_(epoch_f)  # DINO's τ_t input: a device tensor, so the compiled step never recompiles
                # augmentation stays in fp32 outside autocast: under it a conv (sharpness) or matmul would
                # hand bf16 images to the ops after it, and the reference-checked numerics would change
                if pretrain:
                    views = views_tf(images, gen)
                else:
                    x, targets = train_tf(images, labels, gen)
                    lam = drloc_lambda(epoch_f, cfg.drloc_weight(), cfg.drloc_warmup_epochs,
                                       cfg.schedule_length()) if cfg.drloc else 0.0
                with autocast(device, precision):
                    if pretrain:
                        loss = step_module(views, epoch_t)
                        aux = loss.new_zeros(())
                    else:
                        # lambda, seed, step as device scalars: no recompile per step, no host sync
                        loss, aux = step_module(x, targets, **Supervised.step_inputs(lam, cfg.seed, step, device))
                scaler.scale(loss).backward()
                if cfg.grad_clip or pretrain:
                    scaler.unscale_(opt)
                if pretrain:
                    cancel_last_layer_grads(objective.student.head, epoch, cfg.freeze_last_layer)
                if cfg.grad_clip:
                    clip_gradients_(trained, cfg.grad_clip, cfg.clip_mode)
                scaler.step(opt)
                scaler.update()
                opt.zero_grad(set_to_none=True)
                if pretrain:
                    objective.update_teacher(momentum_schedule(step, total_steps, base=cfg.teacher_momentum))
                if ema is not None:
                    ema.update(model)
                loss = loss.detach()
                nonfinite_at = torch.where((nonfinite_at < 0) & ~torch.isfinite(loss), step, nonfinite_at)
                sums += torch.stack([loss.double(), aux.double(), torch.ones((), dtype=torch.float64, device=device)])
                step += 1
                images_seen += len(images) * d.world_size
                bar.update(1)
                if step % cfg.log_every == 0:  # a host sync: only on logging steps
                    check_finite(nonfinite_at, last_good)
                    rate, loss_now = images_seen / (time.perf_counter() - t0), loss.item()
                    bar.set_postfix({"loss": f"{loss_now:.4f}", "lr": f"{lr_now:.2e}",
                                     **pace.postfix(step, len(images) * d.world_size)})
                    log.scalars(step, {"train/loss": loss_now, "train/lr": lr_now, "train/images_per_s": rate})
                if cfg.save_every and step % cfg.save_every == 0:
                    check_finite(nonfinite_at, last_good)
                    save("last.pt", epoch, step, best_acc1, sums.cpu())
                if loader.next_batch >= steps_per_epoch:  # --steps-per-epoch ends the pass early
                    break
        check_finite(nonfinite_at, last_good)
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
        loss_sum, aux_sum, n = distributed.all_reduce_sum(sums, d).tolist()
        metrics = {"epoch": epoch + 1, "step": step, "train_loss": loss_sum / max(n, 1), "lr": lr_now,
                   "images_per_s": images_seen / seconds, "seconds": seconds}
        if cfg.drloc:
            metrics["drloc_loss"] = aux_sum / max(n, 1)
        if not pretrain and ((epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs):
            eval_model = ema.module if ema is not None else model
            metrics.update(evaluate(eval_model, eval_batches(), eval_tf, precision, eval_dist))
        if pretrain and knn_splits and ((epoch + 1) % cfg.knn_every == 0 or epoch + 1 == cfg.epochs):
            metrics.update(knn.knn_accuracy(objective.teacher.backbone, *knn_splits, eval_tf, precision,
                                            show_progress=d.is_main))
        log.epoch(metrics)
        # best.pt before last.pt: a kill between the two resumes before this epoch's end and redoes it
        if metrics.get("test_acc1", -1.0) > best_acc1:
            best_acc1 = metrics["test_acc1"]
            save("best.pt", epoch + 1, step, best_acc1, None)
        save("last.pt", epoch + 1, step, best_acc1, None)
    if "test_acc1" in metrics:
        log.info(f"done: test top-1 {metrics['test_acc1']:.2f}% after {metrics['epoch']} epochs (best "
                 f"{best_acc1:.2f}%); checkpoints in {run_dir}")
    log.close()
    distributed.barrier(d)
    return metrics


# ----------------------------------------------------------------------------------------------
# helpers


def supervised_example(cfg: Config, img_size: int, in_chans: int, num_classes: int, device):
    """Random (x, targets, lambda, seed, step) like one training batch (the precision measurement's input), at most
    choices.PROBE_BATCH images."""
    def example():
        b = min(cfg.batch_size, choices.PROBE_BATCH)
        return (torch.randn(b, in_chans, img_size, img_size, device=device),
                torch.randint(0, num_classes, (b,), device=device),
                *Supervised.step_inputs(0.1, cfg.seed, 0, device).values())  # lambda, seed, step as the loop passes
    return example


def local_crop_size(cfg: Config, img_size: int) -> int:
    return cfg.local_size or (96 if img_size >= 224 else img_size // 2)


def speed_key_fields(cfg: Config, img_size: int) -> dict:
    """What this run's cached speed choices are keyed by, besides the machine and the precision; a
    `benchmarks/precision_step.py --record` measurement is stored under the same fields."""
    fields = {"arch": cfg.arch, "img_size": img_size, "batch": cfg.batch_size,
              "objective": "dino" if cfg.command == "pretrain" else "drloc" if cfg.drloc else "supervised"}
    if cfg.command == "pretrain":  # the DINO step's other shapes: its local views and its head
        fields.update(n_local=cfg.n_local, local_size=local_crop_size(cfg, img_size), out_dim=cfg.dino_out_dim)
    return fields


def dino_example(cfg: Config, img_size: int, local_size: int, in_chans: int, device):
    def example():
        b = min(cfg.batch_size, choices.PROBE_BATCH)
        views = [torch.randn(b, in_chans, s, s, device=device) for s in [img_size] * 2 + [local_size] * cfg.n_local]
        return views, 0.0
    return example


def resolve_speed_choices(cfg: Config, device, objective, model, example, probe_shapes, key_fields,
                          previous: dict | None) -> dict:
    """precision, compile and the attention backend per shape: what auto means here (fastvit.choices).
    `previous` (a resumed run's config.json record, or rank 0's choices on the other ranks) is kept as is.
    Attention is chosen on first use of a shape; one eager no-grad forward per input shape of the step
    (probe_shapes) makes those choices now, before compile traces and before the run dir records them."""
    if previous:
        preset_choices(previous.get("attention", {}))
        chose = {"precision": previous["precision"], "how": previous.get("precision_how", "kept")}
    else:
        probe_fields = {**key_fields, "batch": min(cfg.batch_size, choices.PROBE_BATCH)}
        chose = choices.resolve_precision(cfg.precision, device, lambda p: choices.training_step(objective, example, p),
                                          probe_fields)
    precision = chose["precision"]
    tf32 = device.type == "cuda" and precision != "fp32" and not cfg.deterministic
    if device.type == "cuda":  # TF32 for the fp32 matmuls left (all of them under "tf32"), unless asked not to
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = tf32
    comp = ({"compile": previous["compile"], "how": previous.get("compile_how", "kept")} if previous else
            choices.resolve_compile(cfg.compile, device, key_fields, precision))
    was_training = model.training
    model.eval()  # no drop path: the probe draws nothing from the run's RNG
    with torch.no_grad(), autocast(device, precision), record_choices() as made:
        for shape in probe_shapes:
            model(torch.zeros(shape, device=device))
    model.train(was_training)
    return {"precision": precision, "precision_how": chose["how"], "tf32": tf32, "compile": comp["compile"],
            "compile_how": comp["how"], "attention": made,
            "cuda_graphs": comp["compile"] and device.type == "cuda" and cfg.cuda_graphs is not False}


def describe_resolved(resolved: dict) -> str:
    counts = {}
    for name in resolved["attention"].values():
        counts[name] = counts.get(name, 0) + 1
    attn = ", ".join(f"{name} x{n}" for name, n in counts.items()) or "none"
    return (f"precision {resolved['precision']} ({resolved['precision_how']}), compile "
            f"{'on' if resolved['compile'] else 'off'} ({resolved['compile_how']}), attention per shape: {attn} "
            "(config.json: resolved)")


def read_resolved(run_dir: Path) -> dict | None:
    try:
        return json.loads((run_dir / "config.json").read_text()).get("resolved")
    except (OSError, ValueError):
        return None


def build_drloc(cfg: Config, model: nn.Module, img_size: int, in_chans: int, device) -> nn.Module:
    with torch.no_grad():  # one tiny forward tells the grid shape(s) the heads will see
        probe = torch.zeros(1, in_chans, img_size, img_size, device=device)
        model.eval()
        grids = model.forward_stages(probe) if cfg.drloc_multiscale else [model.forward_features(probe)[1]]
        model.train()
    return Drloc([g.shape[-1] for g in grids], mode=cfg.drloc_mode, num_pairs=cfg.drloc_pairs,
                 use_abs=cfg.drloc_abs, grid_sizes=[tuple(g.shape[1:3]) for g in grids])


def eval_tf_with_labels(eval_tf, num_classes: int, label_smoothing: float):
    """--augment none: the eval transform; label smoothing still applies (soft targets, as the recipes')."""
    if not label_smoothing:
        return lambda images, labels, generator: (eval_tf(images), labels)
    off = label_smoothing / num_classes

    def transform(images, labels, generator):
        targets = torch.full((len(labels), num_classes), off, device=labels.device)
        return eval_tf(images), targets.scatter_(1, labels[:, None], 1.0 - label_smoothing + off)

    return transform


def check_finite(nonfinite_at: torch.Tensor, last_good: tuple[Path, int] | None) -> None:
    bad = int(nonfinite_at.item())
    if bad >= 0:
        gave_it = last_good is not None and last_good[1] == bad  # saved after step bad-1: its weights made the NaN
        note = "; its weights gave that loss: resume it with --resume-new-schedule and a lower --lr" if gave_it else ""
        raise TrainingError(f"the loss became NaN/Inf at step {bad}; stopping. {newest_finite(last_good)}{note} "
                            f"({NAN_HINT})")


def newest_finite(last_good: tuple[Path, int] | None) -> str:
    if last_good is None:
        return "No checkpoint was saved before it: there is none to resume from"
    path, step = last_good
    return f"The newest finite checkpoint is {path} (saved after {step} steps)"


def run_dir_path(cfg: Config) -> Path:
    """The run directory; a folder that already holds a run is refused unless it is being resumed."""
    if cfg.resume:
        return Path(cfg.resume)
    run_dir = Path(cfg.out or f"runs/{cfg.arch}-{cfg.dataset}-{time.strftime('%Y%m%d-%H%M%S')}")
    existing = [name for name in RUN_FILES if (run_dir / name).exists()]
    if existing:
        raise UserError(f"{run_dir} already holds a run ({', '.join(existing)}): continue it with --resume "
                        f"{run_dir}, or choose another --out")
    return run_dir


def resume_checkpoint(cfg: Config, run_dir: Path) -> dict | None:
    """--resume: last.pt, checked against the config (None when the run stopped before its first save)."""
    if not cfg.resume or not (run_dir / "last.pt").exists():
        return None
    state = checkpoint.load(run_dir / "last.pt")
    saved = state["config"]
    conflicts = config.resume_conflicts(saved, cfg.to_dict(), cfg.resume_new_schedule)
    conflicts += [(k, saved[k], getattr(cfg, k)) for k in ("command", "recipe") if saved.get(k) != getattr(cfg, k)]
    if conflicts:
        listed = "; ".join(f"{name} {before} in last.pt, {now} now" for name, before, now in conflicts)
        raise UserError(f"--resume {run_dir}: last.pt was saved by another configuration ({listed})")
    return state


def prepare_run_dir(cfg: Config, d, run_dir: Path, recorded: dict) -> list[Path]:
    """Create the run dir and write config.json, the config plus `recorded` (derived and resolved values),
    only now that every check passed; returns the stale temp files of killed writes it removed."""
    stale = []
    if d.is_main:
        created = not run_dir.exists()
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
            stale = checkpoint.remove_stale_temps(run_dir)
            text = json.dumps({**cfg.to_dict(), **recorded}, indent=2) + "\n"
            checkpoint.write_text_atomic(run_dir / "config.json", text)
        except OSError as e:
            if created:  # leave no empty run dir behind (a full disk, say)
                with contextlib.suppress(OSError):
                    run_dir.rmdir()
            raise UserError(f"cannot write the run directory {run_dir}: {e.strerror}") from e
    distributed.barrier(d)
    return stale


class RunPace:
    """The progress line's img/s (over the last logging interval) and the whole run's ETA, from wall
    time and step counts alone: called on logging steps, which have just synced with the device."""

    def __init__(self, step: int, total_steps: int):
        self.total_steps = total_steps
        self.last = (step, time.perf_counter())  # (step, time) of the previous log, or of the start
        self.first_log = None

    def postfix(self, step: int, images_per_step: int) -> dict:
        now = time.perf_counter()
        recent = (step - self.last[0]) / max(now - self.last[1], 1e-9)  # steps/s
        if self.first_log is None:
            self.first_log, rate = (step, now), recent
        else:  # from the first log on: compile and warm-up left out, evaluations counted in
            rate = (step - self.first_log[0]) / max(now - self.first_log[1], 1e-9)
        self.last = (step, now)
        return {"img/s": f"{recent * images_per_step:.0f}",
                "run ETA": tqdm.format_interval((self.total_steps - step) / max(rate, 1e-9))}


class WeightEMA:
    """Exponential moving average of the model's floating-point state, updated with fused foreach ops."""

    def __init__(self, model: nn.Module, decay: float):
        import copy

        self.decay, self.module = decay, copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        mine = [t for t in self.module.state_dict().values() if t.is_floating_point()]
        theirs = [t for t in model.state_dict().values() if t.is_floating_point()]
        torch._foreach_lerp_(mine, theirs, 1.0 - self.decay)

    def state_dict(self):
        return self.module.state_dict()

    def load_state_dict(self, state):
        self.module.load_state_dict(state)


class Logger:
    """Rank 0 writes metrics.jsonl (one line per epoch), TensorBoard events and console lines."""

    def __init__(self, run_dir: Path, d, tensorboard: bool):
        self.run_dir, self.active = run_dir, d.is_main
        self.writer = None
        if self.active and tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(run_dir / "tb"))

    def info(self, line: str) -> None:
        if self.active:
            tqdm.write(line)

    def scalars(self, step: int, values: dict) -> None:
        if self.writer is not None:
            for k, v in values.items():
                self.writer.add_scalar(k, v, step)

    def epoch(self, metrics: dict) -> None:
        if not self.active:
            return
        try:
            with open(self.run_dir / "metrics.jsonl", "a") as f:
                f.write(json.dumps(metrics) + "\n")
        except OSError as e:
            raise UserError(f"cannot write {self.run_dir / 'metrics.jsonl'}: {e.strerror}") from e
        self.scalars(metrics["step"], {f"epoch/{k}": v for k, v in metrics.items() if k not in ("epoch", "step")})
        shown = ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in metrics.items())
        self.info(shown)

    def truncate_metrics(self, epochs_done: int) -> None:
        """On resume, drop lines of epochs the checkpoint does not cover (they will be redone)."""
        path = self.run_dir / "metrics.jsonl"
        if self.active and path.exists():
            lines = [ln for ln in path.read_text().splitlines() if epoch_of(ln) <= epochs_done]
            try:
                checkpoint.write_text_atomic(path, "".join(ln + "\n" for ln in lines))
            except OSError as e:
                raise UserError(f"cannot write {path}: {e.strerror}") from e

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def epoch_of(line: str) -> float:
    """The epoch of a metrics.jsonl line; a line a kill cut short counts as not done."""
    try:
        return json.loads(line)["epoch"]
    except (ValueError, KeyError, TypeError):
        return float("inf")
