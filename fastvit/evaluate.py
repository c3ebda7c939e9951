"""`fastvit eval`: rebuild a model from a checkpoint and measure top-1/top-5 on a test split."""

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


def evaluate_checkpoint(path, *, dataset=None, data_dir=None, cache_dir=None, device="auto",
                        batch_size=256, precision="fp32", ema=False) -> dict:
    from fastvit import train
    from fastvit.config import Config
    from fastvit.loaders import augment

    model, state = model_from_checkpoint(path, ema=ema)
    cfg = state["config"]
    if cfg["command"] == "pretrain":
        raise UserError(f"{path} is a pretrain checkpoint (no classifier); fine-tune it first")
    dataset = dataset or cfg["dataset"]
    d, dev = distributed.init(device)
    cache = Config(cache_dir=cache_dir).resolved_cache_dir()
    _, test_path = loaders.ensure_prepared(dataset, data_dir=Path(data_dir) if data_dir else None, cache_dir=cache)
    meta = loaders.read_meta(test_path)
    if meta["num_classes"] != state["num_classes"]:
        raise UserError(f"{dataset} has {meta['num_classes']} classes, the checkpoint's model "
                        f"{state['num_classes']}")
    run_cfg = Config(batch_size=max(1, batch_size // 2), num_workers=2)
    batches, dist = train.make_eval_batches(run_cfg, test_path, state["img_size"], dev, d)
    eval_tf = augment.build_eval_transform(img_size=state["img_size"], mean=state["mean"], std=state["std"])
    result = train.evaluate(model.to(dev), batches(), eval_tf, precision, dist)
    return {"checkpoint": str(path), "dataset": dataset, "images": meta["count"], **result}
