"""`fastvit plot` (training curves) and `fastvit attention-map` (last-layer attention per head)."""

import json
from pathlib import Path

import numpy as np
import torch

from fastvit.errors import UserError

# metrics.jsonl key -> panel title, in panel order; a panel is drawn when some epoch has the key
CURVES = {"train_loss": "train loss", "test_acc1": "test top-1 (%)", "test_acc5": "test top-5 (%)",
          "lr": "learning rate"}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def _save(fig, out: Path) -> Path:
    try:
        fig.savefig(out, dpi=110)
    except OSError as e:
        raise UserError(f"cannot write {out}: {e.strerror or e}") from None
    finally:
        _pyplot().close(fig)
    return out


def read_metrics(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise UserError(f"{run_dir} has no metrics.jsonl (not a fastvit run dir, or no epoch finished yet)")
    try:
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except ValueError as e:
        raise UserError(f"{path}: not JSON lines ({e})") from None
    if not rows:
        raise UserError(f"{path} is empty: no epoch finished yet")
    return rows


def curves_figure(rows: list[dict], title: str):
    """One panel per metric in CURVES that the rows hold, against the epoch (integer ticks)."""
    from matplotlib.ticker import MaxNLocator

    plt = _pyplot()
    panels = [(key, name) for key, name in CURVES.items() if any(key in r for r in rows)]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4), squeeze=False, layout="constrained")
    for ax, (key, name) in zip(axes[0], panels, strict=True):
        ax.plot([r["epoch"] for r in rows if key in r], [r[key] for r in rows if key in r], marker="o", markersize=3)
        ax.set_title(name)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    return fig


def plot_run(run_dir: Path, out: Path | None = None) -> Path:
    rows = read_metrics(run_dir)
    out = Path(out) if out else Path(run_dir) / "curves.png"
    return _save(curves_figure(rows, str(run_dir)), out)


def head_attention(ckpt: str, image: Path, *, ema: bool = False) -> tuple[np.ndarray, torch.Tensor, str]:
    """(the image as the model saw it, uint8 (H, W) or (H, W, 3); CLS-to-patch attention per head of the
    last block, (heads, side, side); the arch)."""
    from PIL import Image

    from fastvit.evaluate import model_from_checkpoint

    model, state = model_from_checkpoint(ckpt, ema=ema)
    arch = state["config"]["arch"]
    if not hasattr(model, "last_attention"):
        raise UserError(f"{arch} has no CLS-token attention to show; use a vit or cait model")
    try:
        img = Image.open(image)
        img.load()
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read image {image}: {e}") from e
    size, chans = state["img_size"], state["in_chans"]
    pixels = np.array(img.convert("L" if chans == 1 else "RGB").resize((size, size), Image.BICUBIC))  # a copy
    x = torch.from_numpy(pixels).reshape(size, size, chans).permute(2, 0, 1)[None]  # (1, C, H, W)
    mean = torch.tensor(state["mean"]).view(1, -1, 1, 1)  # 0..1 scale, as training normalized
    std = torch.tensor(state["std"]).view(1, -1, 1, 1)
    with torch.no_grad():
        attn = model.last_attention((x.float() / 255 - mean) / std)  # (1, heads, N, N)
    n_patches = attn.shape[-1] - 1
    side = int(round(n_patches**0.5))
    if side * side != n_patches:
        raise UserError(f"the model's token count {attn.shape[-1]} is not CLS + a square grid")
    return pixels, attn[0, :, 0, 1:].reshape(-1, side, side), arch  # CLS attends to patches


def attention_figure(pixels: np.ndarray, maps: torch.Tensor):
    """The input, then each head's map over it. Image and map share the extent (0, size, size, 0): pixel
    i covers [i, i+1) and token cell j exactly its patch [j*p, (j+1)*p); nearest interpolation keeps the
    cells square. One colour scale for every head, shown by one colour bar."""
    plt = _pyplot()
    size = pixels.shape[0]
    extent = (0, size, size, 0)
    heads = maps.shape[0]
    cols = min(heads, 6)
    rows = 1 + (heads + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(2.2 * cols + 0.8, 2.2 * rows), squeeze=False,
                             layout="constrained")
    for ax in axes.flat:
        ax.axis("off")
    gray = "gray" if pixels.ndim == 2 else None
    axes[0, 0].imshow(pixels, cmap=gray, extent=extent, interpolation="nearest")
    axes[0, 0].set_title("input")
    low, high = float(maps.min()), float(maps.max())
    for h in range(heads):
        ax = axes[1 + h // cols, h % cols]
        ax.imshow(pixels, cmap=gray, extent=extent, interpolation="nearest")
        heat = ax.imshow(maps[h].numpy(), cmap="inferno", alpha=0.6, vmin=low, vmax=high, extent=extent,
                         interpolation="nearest")
        ax.set_title(f"head {h}")
    fig.colorbar(heat, ax=axes[1:].ravel().tolist(), label="CLS attention", shrink=0.9)
    return fig


def attention_map(ckpt: str, image: Path, out: Path | None = None, *, ema: bool = False) -> Path:
    """CLS-to-patch attention of every head of the last block, overlaid on the input image."""
    pixels, maps, _ = head_attention(ckpt, image, ema=ema)
    out = Path(out) if out else Path(image).with_name(Path(image).stem + "_attention.png")
    return _save(attention_figure(pixels, maps), out)
