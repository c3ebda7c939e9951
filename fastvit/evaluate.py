"""`fastvit eval`: rebuild a model from a checkpoint and measure top-1/top-5 on a test split (or, with
--knn, the k-NN accuracy of its backbone features)."""

import argparse
import sys
from pathlib import Path

import torch

from fastvit import checkpoint, distributed, loaders, models
from fastvit.errors import UserError


def model_from_checkpoint(path: str | Path, *, ema: bool = False) -> tuple[torch.nn.Module, dict]:
    """The trained model (eval mode, CPU) and the checkpoint's state."""
    state = checkpoint.load(path)
    if "config" not in state or "model" not in state:
        raise UserError(f"{path} is not a fastvit training checkpoint")
    cfg = state["config"]
    model = models.create(cfg["arch"], img_size=state["img_size"],
                          num_classes=0 if cfg["command"] == "pretrain" else state["num_classes"],
                          in_chans=state["in_chans"])
    weights = state["model"]
    if ema:
        if state.get("ema") is None:
            raise UserError(f"{path} holds no EMA weights (train with --ema DECAY)")
        weights = state["ema"]
    model.load_state_dict(weights)
    return model.eval(), state


def where_it_trained(cfg: dict, dataset, data_dir, cache_dir) -> tuple[str, str | None, Path]:
    """(dataset, data_dir, cache dir) to evaluate on: the run's own (its config's dataset, data_dir and
    cache_dir) for what the flags leave unset; another --dataset does not take the run's data_dir."""
    from fastvit.config import Config

    if dataset in (None, cfg["dataset"]):
        dataset, data_dir = cfg["dataset"], data_dir or cfg.get("data_dir")
    return dataset, data_dir, Config(cache_dir=cache_dir or cfg.get("cache_dir")).resolved_cache_dir()


def evaluate_checkpoint(path, *, dataset=None, data_dir=None, cache_dir=None, device="auto",
                        batch_size=256, precision="auto", ema=False) -> dict:
    from fastvit import train
    from fastvit.config import Config

    model, state = model_from_checkpoint(path, ema=ema)
    cfg = state["config"]
    if cfg["command"] == "pretrain":
        raise UserError(f"{path} is a pretrain checkpoint (no classifier); fine-tune it first")
    dataset, data_dir, cache = where_it_trained(cfg, dataset, data_dir, cache_dir)
    d, dev = distributed.init(device)
    _, test_path = loaders.ensure_prepared(dataset, data_dir=Path(data_dir) if data_dir else None, cache_dir=cache)
    meta = loaders.read_meta(test_path)
    if meta["num_classes"] != state["num_classes"]:
        raise UserError(f"{dataset} has {meta['num_classes']} classes, the checkpoint's model "
                        f"{state['num_classes']}")
    run_cfg = Config(batch_size=max(1, batch_size // 2), num_workers=2)
    batches, dist = train.make_eval_batches(run_cfg, test_path, state["img_size"], dev, d)
    # the run's eval crop (paper B: resize 256 -> centre crop 224); older checkpoints have none
    eval_tf = train.make_eval_transform(cfg.get("eval_crop_pct"), meta, state["img_size"], state["mean"], state["std"])
    if precision == "auto":  # the precision the run trained and evaluated in
        precision = state.get("resolved", {}).get("precision", "fp32")
    result = train.evaluate(model.to(dev), batches(), eval_tf, precision, dist)
    return {"checkpoint": str(path), "dataset": dataset, "images": meta["count"], **result}


def knn_checkpoint(path, *, dataset=None, data_dir=None, cache_dir=None, device="auto", batch_size=256,
                   precision="auto", bank=None, test=None) -> dict:
    """k-NN top-1/top-5 (fastvit.knn) of a checkpoint's backbone features on a dataset: a fastvit pretrain
    checkpoint's teacher backbone, a supervised one's model, or paper A's train_ssl.py teacher."""
    from fastvit import augment, knn, pretrained
    from fastvit.config import Config

    raw = pretrained.read_raw(path)
    fmt = pretrained.checkpoint_format(raw)
    if fmt == pretrained.FASTVIT:
        state = checkpoint.load(path)
        cfg = state["config"]
        arch, img_size = cfg["arch"], state["img_size"]
        dataset, data_dir, cache_dir = where_it_trained(cfg, dataset, data_dir, cache_dir)
    elif fmt == pretrained.PAPER_A:
        args = raw.get("args")
        if not isinstance(args, argparse.Namespace) or not hasattr(args, "arch") or not hasattr(args, "image_size"):
            raise UserError(f"{path}: paper A checkpoint without its args (arch, image_size)")
        arch, img_size = args.arch, args.image_size
        if dataset is None:
            raise UserError(f"{path} is paper A's checkpoint: give --dataset (it was trained on {args.dataset!r})"
                            if hasattr(args, "dataset") else f"{path} is paper A's checkpoint: give --dataset")
    else:
        raise UserError(f"{path} is neither a fastvit checkpoint nor paper A's train_ssl.py checkpoint")
    d, dev = distributed.init(device)
    cache = Config(cache_dir=cache_dir).resolved_cache_dir()
    train_path, test_path = loaders.ensure_prepared(dataset, data_dir=Path(data_dir) if data_dir else None,
                                                    cache_dir=cache)
    meta = loaders.read_meta(test_path)
    mean, std = [m / 255 for m in meta["mean"]], [s / 255 for s in meta["std"]]  # sidecar: 0-255 scale
    if fmt == pretrained.FASTVIT:
        pretrain = cfg["command"] == "pretrain"
        model = models.create(arch, img_size=img_size, num_classes=0 if pretrain else state["num_classes"],
                              in_chans=state["in_chans"])
        model.load_state_dict(state["teacher_backbone"] if pretrain else state["model"])
        mean, std = state["mean"], state["std"]
    else:
        model = models.create(arch, img_size=img_size, num_classes=0, in_chans=meta["channels"])
        pretrained.match_backbone(model, path).load_into(model, lambda line: print(line, file=sys.stderr))
    model = model.to(dev)
    eval_tf = augment.build_eval_transform(img_size=img_size, mean=mean, std=std)
    splits = [knn.LabelledSplit(p, n, img_size, dev, batch_size) for p, n in ((train_path, bank), (test_path, test))]
    if precision == "auto":  # a fastvit run's own precision (its k-NN monitor's), else fp32
        precision = state.get("resolved", {}).get("precision", "fp32") if fmt == pretrained.FASTVIT else "fp32"
    result = knn.knn_accuracy(model, *splits, eval_tf, precision)
    return {"checkpoint": str(path), "dataset": dataset, "bank": splits[0].count, "images": splits[1].count,
            **result}
