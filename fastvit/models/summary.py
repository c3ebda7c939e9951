"""Model table for the README: parameters, forward GFLOPs per image, tokens per stage; CPU training speed.

    python -m fastvit.models.summary                      # the table for every paper model
    python -m fastvit.models.summary --throughput vit_tiny vit swin   # + img/s, fp32, batch 128, CPU

FLOPs are counted by `torch.utils.flop_counter.FlopCounterMode` with the `math` attention backend (so
every attention matmul is an ordinary counted matmul); one multiply-add counts as 2 FLOPs, so these are
twice the "FLOPs" (MACs) that the Swin/CvT/T2T papers quote. Elementwise ops (softmax, norms, GELU)
are not counted.
"""

from __future__ import annotations

import argparse
import os
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from fastvit import models
from fastvit.models.cait import CaiT
from fastvit.models.cvt import CvT
from fastvit.models.resnet import ResNet
from fastvit.models.swin import SwinTransformer
from fastvit.models.t2t import T2TViT
from fastvit.models.vit import VisionTransformer

PAPER_MODELS = [("vit", 32), ("swin", 32), ("cait", 32), ("vit", 64), ("swin", 64), ("cait", 64),
                ("swin_t", 224), ("cvt_13", 224), ("t2t_vit_14", 224), ("resnet50", 224)]


def _stage_modules(model: torch.nn.Module) -> list[torch.nn.Module]:
    """Modules whose output token count is a 'stage' of the architecture."""
    if isinstance(model, (VisionTransformer, CaiT)):
        return [model.patch_embed]
    if isinstance(model, (SwinTransformer, CvT)):
        return list(model.stages) if isinstance(model, CvT) else [model.patch_embed, *model.stages[:-1]]
    if isinstance(model, ResNet):
        return list(model.layers)
    if isinstance(model, T2TViT):
        t2t = model.tokens_to_token
        return [t2t.attention1, t2t.attention2, t2t.project]
    raise TypeError(f"no stage description for {type(model).__name__}")


def tokens_per_stage(model: torch.nn.Module, img_size: int, in_chans: int = 3) -> list[int]:
    """Token count entering each stage's attention for one img_size input (CLS tokens not counted)."""
    counts = []

    channels_first = isinstance(model, ResNet)

    def hook(_module, _inputs, out):
        # (B, H, W, C) grids, (B, C, H, W) feature maps (ResNet) or (B, N, C) sequences
        if out.dim() == 4:
            counts.append(out.shape[2] * out.shape[3] if channels_first else out.shape[1] * out.shape[2])
        else:
            counts.append(out.shape[1])

    handles = [m.register_forward_hook(hook) for m in _stage_modules(model)]
    try:
        with torch.no_grad():
            model(torch.zeros(1, in_chans, img_size, img_size))
    finally:
        for h in handles:
            h.remove()
    return counts


def forward_flops(model: torch.nn.Module, img_size: int, in_chans: int = 3) -> int:
    """FLOPs (2 per multiply-add) of one forward pass on one image."""
    previous = os.environ.get("FASTVIT_ATTN")
    os.environ["FASTVIT_ATTN"] = "math"
    try:
        counter = FlopCounterMode(display=False)
        with counter:  # (not under no_grad: its module tracker needs autograd)
            model(torch.zeros(1, in_chans, img_size, img_size))
    finally:
        if previous is None:
            os.environ.pop("FASTVIT_ATTN")
        else:
            os.environ["FASTVIT_ATTN"] = previous
    return counter.get_total_flops()


def describe(name: str, img_size: int, num_classes: int = 10) -> dict:
    """Params (with a num_classes head), forward GFLOPs per image, tokens per stage."""
    model = models.create(name, img_size=img_size, num_classes=num_classes).eval()
    return {
        "arch": name,
        "img_size": img_size,
        "params": sum(p.numel() for p in model.parameters()),
        "gflops": forward_flops(model, img_size) / 1e9,
        "tokens": tokens_per_stage(model, img_size),
    }


def train_throughput(name: str, img_size: int = 32, batch: int = 128, steps: int = 5, warmup: int = 2) -> float:
    """Training images/s (forward + backward + AdamW step, fp32) on the CPU with the current thread count."""
    torch.manual_seed(0)
    model = models.create(name, img_size=img_size, num_classes=10).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, img_size, img_size, generator=g)
    y = torch.randint(0, 10, (batch,), generator=g)
    for i in range(warmup + steps):
        if i == warmup:
            start = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return batch * steps / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--throughput", nargs="*", metavar="ARCH", help="also time training at 32 px")
    args = parser.parse_args(argv)
    print("| arch | img | params | GFLOPs/img (fwd) | tokens per stage |")
    print("|---|---|---|---|---|")
    for name, size in PAPER_MODELS:
        classes = 1000 if size == 224 else 10
        d = describe(name, size, classes)
        tokens = " → ".join(str(t) for t in d["tokens"])
        print(f"| {name} | {size} | {d['params'] / 1e6:.2f}M | {d['gflops']:.3f} | {tokens} |", flush=True)
    for name in args.throughput or []:
        rate = train_throughput(name)
        print(f"{name}: {rate:.1f} img/s (train, fp32, batch 128, 32 px, {torch.get_num_threads()} threads)",
              flush=True)


if __name__ == "__main__":
    main()
