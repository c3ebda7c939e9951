"""`fastvit plot` (training curves) and `fastvit attention-map` (last-layer attention per head)."""

import json
from pathlib import Path

import numpy as np
import torch

from fastvit.errors import UserError


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def plot_run(run_dir: Path, out: Path | None = None) -> Path:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise UserError(f"{run_dir} has no metrics.jsonl (not a fastvit run dir, or no epoch finished yet)")
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if not rows:
        raise UserError(f"{path} is empty: no epoch finished yet")
    plt = _pyplot()
    epochs = [r["epoch"] for r in rows]
    panels = [("train_loss", "train loss"), ("test_acc1", "test top-1 (%)"), ("lr", "learning rate")]
    panels = [(k, t) for k, t in panels if any(k in r for r in rows)]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 3.4), squeeze=False)
    for ax, (key, title) in zip(axes[0], panels, strict=True):
        ax.plot([e for e, r in zip(epochs, rows, strict=True) if key in r], [r[key] for r in rows if key in r],
                marker="o", markersize=3)
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    fig.suptitle(str(run_dir))
    fig.tight_layout()
    out = Path(out) if out else Path(run_dir) / "curves.png"
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def attention_map(ckpt: str, image: Path, out: Path | None = None, *, ema: bool = False) -> Path:
    """CLS-to-patch attention of every head of the last block, overlaid on the input image."""
    from PIL import Image

    from fastvit.evaluate import model_from_checkpoint

    model, state = model_from_checkpoint(ckpt, ema=ema)
    if not hasattr(model, "last_attention"):
        raise UserError(f"{state['config']['arch']} has no CLS-token attention to show; use a vit or cait model")
    try:
        img = Image.open(image)
        img.load()
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read image {image}: {e}") from e
    size, chans = state["img_size"], state["in_chans"]
    img = img.convert("L" if chans == 1 else "RGB").resize((size, size), Image.BICUBIC)
    pixels = torch.as_tensor(np.asarray(img)).reshape(size, size, chans).permute(2, 0, 1)[None]  # (1, C, H, W)
    mean = torch.tensor(state["mean"]).view(1, -1, 1, 1)  # 0..1 scale, as training normalized
    std = torch.tensor(state["std"]).view(1, -1, 1, 1)
    with torch.no_grad():
        attn = model.last_attention((pixels.float() / 255 - mean) / std)  # (1, heads, N, N)
    n_patches = attn.shape[-1] - 1
    side = int(round(n_patches**0.5))
    if side * side != n_patches:
        raise UserError(f"the model's token count {attn.shape[-1]} is not CLS + a square grid")
    maps = attn[0, :, 0, 1:].reshape(-1, side, side)  # (heads, side, side): CLS attends to patches
    plt = _pyplot()
    heads = maps.shape[0]
    cols = min(heads, 6)
    rows = 1 + (heads + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(2.2 * cols, 2.2 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    axes[0, 0].imshow(np.asarray(img), cmap="gray" if chans == 1 else None)
    axes[0, 0].set_title("input")
    for h in range(heads):
        ax = axes[1 + h // cols, h % cols]
        ax.imshow(np.asarray(img), cmap="gray" if chans == 1 else None)
        ax.imshow(maps[h].numpy(), cmap="inferno", alpha=0.6, extent=(0, size, size, 0),
                  interpolation="bilinear")
        ax.set_title(f"head {h}")
    fig.tight_layout()
    out = Path(out) if out else Path(image).with_name(Path(image).stem + "_attention.png")
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
