"""Vision Transformer (Dosovitskiy et al.) in the small-image configuration of paper A.

Conv patch embedding, a CLS token, a learnable position embedding (bicubic-resized when the input
size differs, e.g. DINO's half-size local crops), pre-norm blocks, classifier on the CLS token.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from fastvit.errors import UserError
from fastvit.models.backbone import Backbone, make_head
from fastvit.models.layers import (
    Block,
    PatchEmbed,
    check_image,
    linear_rates,
    resize_pos_embed,
    trunc_normal_init,
)
from fastvit.models.registry import build_with, register


def small_image_patch(img_size: int, base: int) -> int:
    """Patch size that scales with the image: `base` up to 32 px, 2*base up to 64 px, 4*base above."""
    if img_size <= 32:
        return base
    return 2 * base if img_size <= 64 else 4 * base


def check_img_size(arch: str, img_size: int, multiple: int, rule: str) -> None:
    """UserError in one line unless `img_size` is a positive multiple of `multiple`."""
    if img_size <= 0 or img_size % multiple:
        raise UserError(f"{arch}: img_size {img_size} does not work; sizes that work: {rule}")


def resolve_patch(arch: str, img_size: int, patch_size: int | None) -> int:
    """The patch size (given, or paper A's 4 / 8 / 16 by image size), checked against img_size."""
    patch = patch_size or small_image_patch(img_size, 4)
    rule = (f"multiples of {patch_size}" if patch_size
            else "multiples of 4 up to 32, of 8 up to 64, of 16 above (or set patch_size)")
    check_img_size(arch, img_size, patch, rule)
    return patch


class VisionTransformer(Backbone):
    """ViT with CLS token; `forward_features` returns (CLS feature, patch-token grid after the final norm)."""

    no_decay = ("pos_embed", "cls_token")

    def __init__(
        self,
        *,
        img_size: int,
        num_classes: int,
        in_chans: int = 3,
        patch_size: int | None = None,  # None: 4 up to 32 px, 8 up to 64 px, 16 above
        embed_dim: int = 192,
        depth: int = 9,
        num_heads: int = 12,
        mlp_ratio: float = 2.0,
        qkv_bias: bool = True,
        drop_path: float = 0.0,  # stochastic depth of the last block; linear from 0 over depth
        eps: float = 1e-6,
        arch: str = "vit",
    ):
        super().__init__()
        patch = resolve_patch(arch, img_size, patch_size)
        self.arch = arch
        self.in_chans = in_chans
        self.patch_size = patch
        self.grid = (img_size // patch, img_size // patch)
        self.num_features = embed_dim
        self.grid_dims = [embed_dim]
        self.patch_embed = PatchEmbed(in_chans, embed_dim, patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + self.grid[0] * self.grid[1], embed_dim))
        rates = linear_rates(drop_path, depth)
        self.blocks = nn.ModuleList(
            Block(embed_dim, num_heads, mlp_ratio, qkv_bias, rate, eps) for rate in rates
        )
        self.norm = nn.LayerNorm(embed_dim, eps=eps)
        self.apply(trunc_normal_init)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        self.head = make_head(embed_dim, num_classes)

    def _tokens(self, x: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        check_image(x, self.in_chans, self.patch_size, self.arch)
        t = self.patch_embed(x)  # (B, Hg, Wg, D)
        B, Hg, Wg, D = t.shape
        t = t.flatten(1, 2) + resize_pos_embed(self.pos_embed[:, 1:], self.grid, (Hg, Wg))  # (B, N, D)
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(B, -1, -1)  # (B, 1, D)
        return torch.cat([cls, t], dim=1), Hg, Wg  # (B, 1 + N, D)

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, C, H, W) -> pooled CLS feature (B, D), patch-token grid (B, H/p, W/p, D)."""
        t, Hg, Wg = self._tokens(x)
        for block in self.blocks:
            t = block(t)
        t = self.norm(t)
        return t[:, 0], t[:, 1:].reshape(t.shape[0], Hg, Wg, -1)  # grid (B, Hg, Wg, D)

    @torch.no_grad()
    def last_attention(self, x: torch.Tensor) -> torch.Tensor:
        """Softmax attention of the last block, (B, heads, 1 + N, 1 + N); token 0 is CLS."""
        t, _, _ = self._tokens(x)
        for block in self.blocks[:-1]:
            t = block(t)
        last = self.blocks[-1]
        return last.attn.attention_map(last.norm1(t))


def _vit(arch: str, config: dict, overrides: dict, **common) -> nn.Module:
    return build_with(VisionTransformer, arch, {**config, **common, "arch": arch}, overrides)


@register(default_img_size=32)
def vit(*, img_size: int, num_classes: int, in_chans: int = 3, drop_path: float = 0.0, **overrides):
    """Paper A ViT: embed 192, depth 9, heads 12 (head dim 16), mlp ratio 2, patch 4/8/16 (<=32/<=64/>64 px)."""
    config = dict(embed_dim=192, depth=9, num_heads=12, mlp_ratio=2.0)
    return _vit("vit", config, overrides, img_size=img_size, num_classes=num_classes,
                in_chans=in_chans, drop_path=drop_path)


@register(default_img_size=32)
def vit_tiny(*, img_size: int, num_classes: int, in_chans: int = 3, drop_path: float = 0.0, **overrides):
    """Demo/test ViT: embed 96, depth 6, heads 3 (head dim 32), mlp ratio 2, patch as `vit`."""
    config = dict(embed_dim=96, depth=6, num_heads=3, mlp_ratio=2.0)
    return _vit("vit_tiny", config, overrides, img_size=img_size, num_classes=num_classes,
                in_chans=in_chans, drop_path=drop_path)


@register(default_img_size=32)
def vit_tiny_p8(*, img_size: int, num_classes: int, in_chans: int = 3, drop_path: float = 0.0, **overrides):
    """The CPU demo's ViT: `vit_tiny` with patch 8 (4x4 tokens + CLS at 32 px, ~3x cheaper than patch 4)."""
    config = dict(embed_dim=96, depth=6, num_heads=3, mlp_ratio=2.0, patch_size=8)
    return _vit("vit_tiny_p8", config, overrides, img_size=img_size, num_classes=num_classes,
                in_chans=in_chans, drop_path=drop_path)
