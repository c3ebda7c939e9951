"""Backbone initialisations for `fastvit finetune --init` and `fastvit eval --knn`: fastvit's own pretrain
checkpoints and paper A's released SSL checkpoints, matched to the model by parameter name.

Formats (told apart by their keys; both read with `torch.load(weights_only=True)`, no code executed):
- fastvit `pretrain` (last.pt / best.pt): its sha256 is checked; the EMA teacher's backbone is
  `state["teacher_backbone"]`, already under fastvit's names.
- paper A's `train_ssl.py` (checkpoint.pth): `{"student", "teacher", "optimizer", "epoch", "args",
  "view_pred_loss", ...}`; the teacher's keys are `backbone.*` (its projection head `head.*`), the DDP-wrapped
  student's `module.backbone.*`. `args` is an argparse.Namespace, the one class allowed beyond weights.
  Its ViT names equal fastvit's. Its Swin: `layers.i.*` for fastvit's `stages.i.*`, the relative-position
  table inside `attn` (fastvit: on the block), a persistent `relative_position_index` buffer (fastvit
  computes it); the patch merging closes layer i (as fastvit's stage i; a checkpoint holding it at the start
  of layer i + 1, timm >= 0.6's layout, is recognised too). Its CaiT: patch embedding Rearrange
  'b c (h p1) (w p2) -> b (h w) (p1 p2 c)' + Linear (`patch_embed.1`, fastvit: a Conv2d `patch_embed.proj`),
  LayerScale `gamma_1/2` (fastvit: `ls1/ls2.gamma`), class-attention blocks `blocks_token_only.i`
  (fastvit: `class_blocks.i`).
"""

import argparse
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn

from fastvit import checkpoint
from fastvit.errors import UserError
from fastvit.models import registry

PAPER_A = "paper A train_ssl.py"
FASTVIT = "fastvit pretrain"


def read_raw(path: str | Path) -> dict:
    """The checkpoint's top-level dict, loaded weights-only on the CPU."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist")
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):  # paper A saves its args
            raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated zip, wrong format, disallowed pickle content
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"checkpoint {path} is corrupt or of an unknown format ({first[:120]})") from e
    if not isinstance(raw, dict):
        raise UserError(f"checkpoint {path} holds a {type(raw).__name__}, not a checkpoint dict")
    return raw


def checkpoint_format(raw: dict) -> str | None:
    if checkpoint.DIGEST_KEY in raw:
        return FASTVIT
    if isinstance(raw.get("teacher"), dict) or isinstance(raw.get("student"), dict):
        return PAPER_A
    return None


# ---------------------------------------------------------------- paper A's names -> fastvit's


def paper_a_backbone(raw: dict) -> tuple[dict, str]:
    """The teacher's (else the student's) backbone tensors with the wrapper prefixes removed, and which."""
    which = "teacher" if isinstance(raw.get("teacher"), dict) else "student"
    out = {}
    for key, value in raw[which].items():
        key = key.removeprefix("module.")  # DDP (the student; a teacher with BatchNorm)
        if key.startswith("backbone.") and isinstance(value, torch.Tensor):  # the rest is the projection head
            out[key.removeprefix("backbone.")] = value
    return out, which


def swin_names(sd: dict) -> dict:
    layer_of_merge = [int(m[1]) for k in sd if (m := re.match(r"layers\.(\d+)\.downsample\.", k))]
    shift = -1 if layer_of_merge and min(layer_of_merge) > 0 else 0  # merge opening layer i + 1 (timm >= 0.6)
    out = {}
    for key, value in sd.items():
        m = re.match(r"layers\.(\d+)\.(.*)", key)
        if not m:
            out[key] = value
            continue
        i, rest = int(m[1]), m[2]
        if rest.startswith("downsample."):
            out[f"stages.{i + shift}.{rest}"] = value
        elif rest.endswith(".attn.relative_position_index") or rest.endswith(".attn_mask"):
            continue  # buffers fastvit computes from the window geometry
        else:
            rest = rest.replace(".attn.relative_position_bias_table", ".relative_position_bias_table")
            out[f"stages.{i}.{rest}"] = value
    return out


def cait_names(sd: dict, in_chans: int) -> dict:
    out = {}
    for key, value in sd.items():
        key = re.sub(r"^blocks_token_only\.", "class_blocks.", key)
        key = re.sub(r"\.gamma_([12])$", r".ls\1.gamma", key)
        if key == "patch_embed.1.weight" and value.ndim == 2 and value.shape[1] % in_chans == 0:
            dim, fan_in = value.shape
            patch = math.isqrt(fan_in // in_chans)
            if patch * patch * in_chans == fan_in:
                # Linear over (p1 p2 c)-ordered patch pixels == Conv2d weight [dim, c, p1, p2]
                key, value = "patch_embed.proj.weight", value.view(dim, patch, patch, in_chans).permute(0, 3, 1, 2)
        elif key == "patch_embed.1.bias":
            key = "patch_embed.proj.bias"
        out[key] = value.contiguous()
    return out


def to_fastvit_names(sd: dict, model: nn.Module) -> dict:
    family = registry.family(getattr(model, "arch", ""))
    if family == "swin":
        return swin_names(sd)
    if family == "cait":
        return cait_names(sd, model.in_chans)
    return sd  # vit: the same names


# ---------------------------------------------------------------- matching


@dataclass
class BackboneInit:
    """Tensors of a checkpoint's backbone that match the model by name and shape, and why the others do not."""

    path: str
    source: str  # e.g. "fastvit pretrain teacher"
    loaded: dict
    total: int
    not_loaded: list[str] = field(default_factory=list)

    def load_into(self, model: nn.Module, info: Callable[[str], None]) -> None:
        model.load_state_dict(self.loaded, strict=False)
        info(f"init from {self.path} ({self.source}): loaded {len(self.loaded)}/{self.total} tensors by name")
        for line in self.not_loaded:
            info(f"  not loaded: {line}")


def match_backbone(model: nn.Module, path: str | Path) -> BackboneInit:
    """Read `path` (either format), convert its backbone to fastvit's names and match it to `model`.
    UserError when it is no backbone checkpoint or when not one tensor matches."""
    raw = read_raw(path)
    fmt = checkpoint_format(raw)
    if fmt == FASTVIT:
        state = checkpoint.load(path)  # verifies the sha256
        if "teacher_backbone" not in state:
            raise UserError(f"{path} is not a pretrain checkpoint (no teacher_backbone); "
                            "make one with `fastvit pretrain`")
        source, weights = f"{FASTVIT} teacher", state["teacher_backbone"]
    elif fmt == PAPER_A:
        backbone, which = paper_a_backbone(raw)
        source, weights = f"{PAPER_A} {which}", to_fastvit_names(backbone, model)
    else:
        raise UserError(f"{path} is neither a fastvit pretrain checkpoint nor paper A's train_ssl.py checkpoint "
                        f"(top-level keys: {', '.join(map(str, list(raw)[:8]))})")
    target = model.state_dict()
    loaded, not_loaded = {}, []
    for name, tensor in target.items():
        if name not in weights:
            not_loaded.append(f"{name}: not in the checkpoint (kept its fresh init)")
        elif weights[name].shape != tensor.shape:
            not_loaded.append(f"{name}: shape {tuple(weights[name].shape)} in the checkpoint, "
                              f"{tuple(tensor.shape)} in the model (kept its fresh init)")
        else:
            loaded[name] = weights[name]
    not_loaded += [f"{name}: not a parameter of {type(model).__name__}" for name in weights if name not in target]
    if not loaded:
        raise UserError(f"{path} ({source}): none of its {len(weights)} backbone tensors matches "
                        f"{getattr(model, 'arch', type(model).__name__)} by name and shape; is it another arch?")
    return BackboneInit(str(path), source, loaded, len(target), not_loaded)
