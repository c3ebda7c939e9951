"""T2T-ViT (Yuan et al. 2021), the T2T-ViT-14 configuration used by paper B.

Tokens-to-token module: soft split (unfold 7x7 / stride 4 / pad 2), a token performer, re-structure to
an image, soft split (3x3 / 2 / 1), a token performer, soft split again, linear projection to the
embedding: 224 px -> 56 -> 28 -> 14 x 14 tokens. Then a ViT backbone (CLS token, fixed sinusoidal
position encoding, pre-norm blocks without qkv bias). Paper B's code uses the performer token
encoder (linear attention with positive random features): it is plain torch, not a softmax attention,
so it does not go through `fastvit.kernels.attention`; the 14 backbone blocks do.

The L_drloc grid: final-normed patch tokens (14x14 at 224 px) average-pooled 3x3 / 2 / 1 to 7x7.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from fastvit.models.backbone import Backbone, make_head
from fastvit.models.cvt import drloc_pool
from fastvit.models.layers import (
    Block,
    check_image,
    linear_rates,
    trunc_normal_init,
)
from fastvit.models.registry import build_with, register
from fastvit.models.vit import check_img_size


def sinusoid_encoding(n: int, dim: int) -> torch.Tensor:
    """(1, n, dim) fixed encoding: sin at even channels, cos at odd, wavelengths 10000^(2i/dim)."""
    pos = torch.arange(n, dtype=torch.float64)[:, None]
    freq = 10000.0 ** (-(torch.arange(dim) // 2 * 2).double() / dim)
    angles = pos * freq  # (n, dim)
    enc = torch.where(torch.arange(dim) % 2 == 0, angles.sin(), angles.cos())
    return enc.float().unsqueeze(0)


class TokenPerformer(nn.Module):
    """Single-head performer token encoder: y = v + proj(FAVOR+ attention), then y + Mlp(LN(y)).

    Softmax kernel approximated by m = emb/2 positive random features phi(x) = exp(w x - |x|^2/2)/sqrt(m)
    with a fixed orthogonal w (a buffer: saved in the state dict, never trained).
    """

    def __init__(self, dim: int, emb: int, kernel_ratio: float = 0.5):
        super().__init__()
        self.emb = emb
        self.norm1 = nn.LayerNorm(dim)
        self.kqv = nn.Linear(dim, 3 * emb)
        self.proj = nn.Linear(emb, emb)
        self.norm2 = nn.LayerNorm(emb)
        self.mlp = nn.Sequential(nn.Linear(emb, emb), nn.GELU(), nn.Linear(emb, emb))
        m = int(emb * kernel_ratio)
        self.register_buffer("w", nn.init.orthogonal_(torch.empty(m, emb)) * math.sqrt(m))

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        # (B, T, emb) -> (B, T, m), at least fp32: the exp overflows easily in half precision
        x = x.to(torch.promote_types(x.dtype, torch.float32))
        w = self.w.to(x.dtype)
        return torch.exp(x @ w.T - x.square().sum(-1, keepdim=True) / 2) / math.sqrt(w.shape[0])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k, q, v = self.kqv(self.norm1(x)).split(self.emb, dim=-1)  # 3 x (B, T, emb)
        kp, qp = self._features(k), self._features(q)  # (B, T, m)
        norm = qp @ kp.sum(dim=1).unsqueeze(-1)  # (B, T, 1): sum_j phi(q_i) . phi(k_j)
        y = (qp @ (kp.transpose(1, 2) @ v.to(kp.dtype))) / (norm + 1e-8)  # (B, T, emb)
        y = v + self.proj(y.to(v.dtype))  # v as the skip connection: the width changes dim -> emb
        return y + self.mlp(self.norm2(y))


class TokensToToken(nn.Module):
    """(B, C, H, W) -> (B, H/16 * W/16, embed_dim) tokens and their grid size."""

    def __init__(self, in_chans: int, embed_dim: int, token_dim: int = 64):
        super().__init__()
        self.attention1 = TokenPerformer(in_chans * 7 * 7, token_dim)
        self.attention2 = TokenPerformer(token_dim * 3 * 3, token_dim)
        self.project = nn.Linear(token_dim * 3 * 3, embed_dim)

    @staticmethod
    def _restructure(t: torch.Tensor, H: int, W: int) -> torch.Tensor:
        return t.transpose(1, 2).reshape(t.shape[0], -1, H, W)  # (B, T, C) -> (B, C, H, W)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        H, W = (x.shape[2] - 3) // 4 + 1, (x.shape[3] - 3) // 4 + 1  # unfold 7 / 4 / pad 2
        t = self.attention1(F.unfold(x, 7, padding=2, stride=4).transpose(1, 2))  # (B, H*W, emb)
        x = self._restructure(t, H, W)
        H, W = (H + 1) // 2, (W + 1) // 2  # unfold 3 / 2 / pad 1
        t = self.attention2(F.unfold(x, 3, padding=1, stride=2).transpose(1, 2))
        x = self._restructure(t, H, W)
        H, W = (H + 1) // 2, (W + 1) // 2
        return self.project(F.unfold(x, 3, padding=1, stride=2).transpose(1, 2)), H, W  # (B, H*W, D)


class T2TViT(Backbone):
    """T2T-ViT; `forward_features` returns (normed CLS token, pooled normed patch-token grid)."""

    no_decay = ("cls_token",)

    def __init__(
        self,
        *,
        img_size: int,
        num_classes: int,
        in_chans: int = 3,
        embed_dim: int = 384,
        depth: int = 14,
        num_heads: int = 6,
        mlp_ratio: float = 3.0,
        token_dim: int = 64,
        drop_path: float = 0.0,  # stochastic depth of the last block; linear from 0 over depth
        arch: str = "t2t_vit_14",
    ):
        super().__init__()
        check_img_size(arch, img_size, 16, "multiples of 16")
        self.arch = arch
        self.in_chans = in_chans
        self.num_features = embed_dim
        self.grid_dims = [embed_dim]
        g = -(-(img_size // 16) // 2)  # after the 3x3 / stride 2 pooling
        self.grid = (g, g)
        self.tokens_to_token = TokensToToken(in_chans, embed_dim, token_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.blocks = nn.ModuleList(
            Block(embed_dim, num_heads, mlp_ratio, qkv_bias=False, drop_path=rate, eps=1e-5)
            for rate in linear_rates(drop_path, depth)
        )
        self.norm = nn.LayerNorm(embed_dim)
        self.apply(trunc_normal_init)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        self.head = make_head(embed_dim, num_classes)

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        check_image(x, self.in_chans, 16, self.arch)
        t, Hg, Wg = self.tokens_to_token(x)  # (B, N, D)
        B, N, D = t.shape
        t = torch.cat([self.cls_token.expand(B, -1, -1), t], dim=1)  # (B, 1 + N, D)
        # the fixed encoding is a function of the length: any input size gets its own
        t = t + sinusoid_encoding(N + 1, D).to(t)
        for block in self.blocks:
            t = block(t)
        t = self.norm(t)
        return t[:, 0], drloc_pool(t[:, 1:].reshape(B, Hg, Wg, D))


@register(default_img_size=224)
def t2t_vit_14(*, img_size: int, num_classes: int, in_chans: int = 3, drop_path: float = 0.0, **overrides):
    """T2T-ViT-14 (paper B): performer T2T module (token dim 64), embed 384, depth 14, heads 6, mlp 3."""
    config = dict(img_size=img_size, num_classes=num_classes, in_chans=in_chans, drop_path=drop_path)
    return build_with(T2TViT, "t2t_vit_14", {**config, "arch": "t2t_vit_14"}, overrides)


@register(default_img_size=32)
def t2t_vit_tiny(*, img_size: int, num_classes: int, in_chans: int = 3, drop_path: float = 0.0, **overrides):
    """Test T2T-ViT: embed 64, depth 2, heads 2, mlp ratio 3, token dim 16, otherwise as `t2t_vit_14`."""
    config = dict(
        img_size=img_size, num_classes=num_classes, in_chans=in_chans, drop_path=drop_path,
        embed_dim=64, depth=2, num_heads=2, token_dim=16, arch="t2t_vit_tiny",
    )
    return build_with(T2TViT, "t2t_vit_tiny", config, overrides)
