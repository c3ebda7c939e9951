"""CaiT (Touvron et al. 2021) in the small-image configuration of paper A.

Self-attention blocks with talking-heads attention and LayerScale, then class-attention blocks in which
only the CLS token is updated. Talking heads mixes the logits across heads between QK^T and the softmax
(and the probabilities again after it), which no fused attention kernel supports: those blocks use the
plain-torch path below, materialising the (B, heads, N, N) scores. Class attention is ordinary
attention with one query and goes through `fastvit.kernels.attention`.

Position embeddings cover patch tokens only; an input with fewer patches (DINO local crops) uses the
first n embeddings, as paper A's code does.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from fastvit.kernels import attention
from fastvit.models.backbone import Backbone, make_head
from fastvit.models.layers import (
    DropPath,
    LayerScale,
    Mlp,
    PatchEmbed,
    check_image,
    trunc_normal_init,
)
from fastvit.models.registry import build_with, register
from fastvit.models.vit import resolve_patch


class TalkingHeadAttention(nn.Module):
    """softmax over keys of (W_l · scores) mixed across heads, then mixed again by W_w; plain torch."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj_l = nn.Linear(num_heads, num_heads)  # mixes logits across heads
        self.proj_w = nn.Linear(num_heads, num_heads)  # mixes probabilities across heads
        self.proj = nn.Linear(dim, dim)

    def attention_map(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mixed attention weights (B, heads, N, N) and values (B, heads, N, head_dim)."""
        B, N, C = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        scores = (q * self.scale) @ k.transpose(-2, -1)  # (B, heads, N, N)
        scores = self.proj_l(scores.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)  # head mix on last dim
        weights = scores.softmax(dim=-1)
        weights = self.proj_w(weights.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)  # (B, heads, N, N)
        return weights, v

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        weights, v = self.attention_map(x)
        return self.proj((weights @ v).transpose(1, 2).reshape(B, N, C))


class ClassAttention(nn.Module):
    """The CLS token attends to [CLS, patches]; only the CLS output is produced."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.k = nn.Linear(dim, dim, bias=qkv_bias)
        self.v = nn.Linear(dim, dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def _qkv(self, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        B, N, C = u.shape
        q = self.q(u[:, :1]).reshape(B, 1, self.num_heads, self.head_dim).transpose(1, 2)  # (B, h, 1, d)
        k = self.k(u).reshape(B, N, self.num_heads, self.head_dim).transpose(1, 2)  # (B, h, N, d)
        v = self.v(u).reshape(B, N, self.num_heads, self.head_dim).transpose(1, 2)  # (B, h, N, d)
        return q, k, v

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        B, N, C = u.shape
        out = attention(*self._qkv(u), scale=self.scale)  # (B, heads, 1, head_dim)
        return self.proj(out.transpose(1, 2).reshape(B, 1, C))

    def attention_map(self, u: torch.Tensor) -> torch.Tensor:
        q, k, _ = self._qkv(u)
        return ((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1)  # (B, heads, 1, N)


class LayerScaleBlock(nn.Module):
    """x + DropPath(gamma1 * TalkingHeads(LN(x))), then x + DropPath(gamma2 * Mlp(LN(x)))."""

    def __init__(self, dim, num_heads, mlp_ratio, drop_path, init_scale, eps):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = TalkingHeadAttention(dim, num_heads)
        self.ls1 = LayerScale(dim, init_scale)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.ls2 = LayerScale(dim, init_scale)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.drop_path.residual(x, self.ls1(self.attn(self.norm1(x))))
        return self.drop_path.residual(x, self.ls2(self.mlp(self.norm2(x))))


class ClassAttentionBlock(nn.Module):
    """Updates only the CLS token: cls + gamma1 * CA(LN([cls, x])), then cls + gamma2 * Mlp(LN(cls))."""

    def __init__(self, dim, num_heads, mlp_ratio, init_scale, eps):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = ClassAttention(dim, num_heads)
        self.ls1 = LayerScale(dim, init_scale)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.ls2 = LayerScale(dim, init_scale)

    def forward(self, x: torch.Tensor, cls: torch.Tensor) -> torch.Tensor:
        u = torch.cat([cls, x], dim=1)  # (B, 1 + N, D)
        cls = cls + self.ls1(self.attn(self.norm1(u)))
        return cls + self.ls2(self.mlp(self.norm2(cls)))


class CaiT(Backbone):
    """CaiT; `forward_features` returns (normed CLS token, normed patch-token grid)."""

    no_decay = ("pos_embed", "cls_token")

    def __init__(
        self,
        *,
        img_size: int,
        num_classes: int,
        in_chans: int = 3,
        patch_size: int | None = None,  # None: 4 up to 32 px, 8 up to 64 px, 16 above
        embed_dim: int = 192,
        depth: int = 24,
        num_heads: int = 4,
        mlp_ratio: float = 2.0,
        class_depth: int = 2,
        class_mlp_ratio: float = 4.0,
        init_scale: float = 1e-5,  # LayerScale init
        drop_path: float = 0.0,  # uniform over the self-attention blocks (CaiT's rule)
        eps: float = 1e-6,
        arch: str = "cait",
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
        self.pos_embed = nn.Parameter(torch.zeros(1, self.grid[0] * self.grid[1], embed_dim))
        self.blocks = nn.ModuleList(
            LayerScaleBlock(embed_dim, num_heads, mlp_ratio, drop_path, init_scale, eps) for _ in range(depth)
        )
        self.class_blocks = nn.ModuleList(
            ClassAttentionBlock(embed_dim, num_heads, class_mlp_ratio, init_scale, eps)
            for _ in range(class_depth)
        )
        self.norm = nn.LayerNorm(embed_dim, eps=eps)
        self.apply(trunc_normal_init)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        self.head = make_head(embed_dim, num_classes)

    def _patch_tokens(self, x: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        check_image(x, self.in_chans, self.patch_size, self.arch)
        n_max = self.pos_embed.shape[1]
        t = self.patch_embed(x)  # (B, Hg, Wg, D)
        B, Hg, Wg, D = t.shape
        if Hg * Wg > n_max:
            raise ValueError(
                f"{self.arch}: input {tuple(x.shape)} gives {Hg}x{Wg} patches but the model has "
                f"{n_max} position embeddings ({self.grid[0]}x{self.grid[1]}); use inputs up to "
                f"{self.grid[0] * self.patch_size} px"
            )
        return t.flatten(1, 2) + self.pos_embed[:, : Hg * Wg], Hg, Wg  # (B, N, D)

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        t, Hg, Wg = self._patch_tokens(x)
        for block in self.blocks:
            t = block(t)
        cls = self.cls_token.expand(t.shape[0], -1, -1)  # (B, 1, D)
        for block in self.class_blocks:
            cls = block(t, cls)
        t = self.norm(torch.cat([cls, t], dim=1))  # (B, 1 + N, D)
        return t[:, 0], t[:, 1:].reshape(t.shape[0], Hg, Wg, -1)  # grid (B, Hg, Wg, D)

    @torch.no_grad()
    def last_attention(self, x: torch.Tensor) -> torch.Tensor:
        """CLS attention of the last class-attention block, (B, heads, 1, 1 + N); key 0 is CLS.

        This is row 0 of the ViT map, so `a[:, :, 0, 1:]` is the CLS-to-patch attention for both archs.
        """
        t, _, _ = self._patch_tokens(x)
        for block in self.blocks:
            t = block(t)
        cls = self.cls_token.expand(t.shape[0], -1, -1)
        for block in self.class_blocks[:-1]:
            cls = block(t, cls)
        last = self.class_blocks[-1]
        return last.attn.attention_map(last.norm1(torch.cat([cls, t], dim=1)))


@register(default_img_size=32)
def cait(*, img_size: int, num_classes: int, in_chans: int = 3, drop_path: float = 0.0, **overrides):
    """Paper A CaiT: embed 192, depth 24, heads 4, mlp ratio 2, talking heads, LayerScale 1e-5,
    2 class-attention blocks (mlp ratio 4), patch 4 (8 at 64 px), uniform drop path."""
    config = dict(
        embed_dim=192, depth=24, num_heads=4, mlp_ratio=2.0, class_depth=2, class_mlp_ratio=4.0,
        init_scale=1e-5, img_size=img_size, num_classes=num_classes, in_chans=in_chans,
        drop_path=drop_path, arch="cait",
    )
    return build_with(CaiT, "cait", config, overrides)


@register(default_img_size=32)
def cait_tiny(*, img_size: int, num_classes: int, in_chans: int = 3, drop_path: float = 0.0, **overrides):
    """Test CaiT: embed 64, depth 2, heads 4, mlp ratio 2, 1 class-attention block, patch as `cait`."""
    config = dict(
        embed_dim=64, depth=2, num_heads=4, mlp_ratio=2.0, class_depth=1, class_mlp_ratio=4.0,
        init_scale=1e-5, img_size=img_size, num_classes=num_classes, in_chans=in_chans,
        drop_path=drop_path, arch="cait_tiny",
    )
    return build_with(CaiT, "cait_tiny", config, overrides)
