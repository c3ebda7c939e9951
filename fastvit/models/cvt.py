"""CvT (Wu et al. 2021), the CvT-13 configuration used by paper B.

Three stages, each a strided conv token embedding + LayerNorm, then pre-norm blocks whose q/k/v come
from convolutional projections (depthwise 3x3 conv + BatchNorm + linear; k and v at stride 2, which
shrinks the key sequence 4x). As in paper B's code there is no CLS token: the classifier reads the
mean of the final-normed last-stage tokens. The L_drloc grid is the last-stage grid (14x14 at 224 px)
average-pooled 3x3 / stride 2 / pad 1 (count_include_pad=False) to 7x7, before the final norm.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from fastvit.kernels import attention
from fastvit.models.backbone import Backbone, make_head
from fastvit.models.layers import (
    DropPath,
    Mlp,
    check_image,
    linear_rates,
    trunc_normal_init,
)
from fastvit.models.registry import build_with, register
from fastvit.models.vit import check_img_size


def drloc_pool(grid: torch.Tensor) -> torch.Tensor:
    """(B, H, W, C) -> (B, ceil(H/2), ceil(W/2), C): paper B's 3x3 / stride 2 average pool of the grid."""
    pooled = F.avg_pool2d(grid.permute(0, 3, 1, 2), 3, stride=2, padding=1, count_include_pad=False)
    return pooled.permute(0, 2, 3, 1)


class ConvProjection(nn.Module):
    """Depthwise 3x3 conv (stride s) + BatchNorm, then Linear: (B, C, H, W) -> (B, H/s * W/s, C)."""

    def __init__(self, dim: int, stride: int, bias: bool):
        super().__init__()
        self.conv = nn.Conv2d(dim, dim, 3, stride=stride, padding=1, groups=dim, bias=False)
        self.bn = nn.BatchNorm2d(dim)
        self.linear = nn.Linear(dim, dim, bias=bias)

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        return self.linear(self.bn(self.conv(img)).flatten(2).transpose(1, 2))  # (B, N', C)


class ConvAttention(nn.Module):
    """Multi-head attention with conv projections; keys/values at stride `kv_stride`."""

    def __init__(self, dim: int, num_heads: int, kv_stride: int = 2, qkv_bias: bool = True):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.q = ConvProjection(dim, 1, qkv_bias)
        self.k = ConvProjection(dim, kv_stride, qkv_bias)
        self.v = ConvProjection(dim, kv_stride, qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, H, W, C = x.shape
        img = x.permute(0, 3, 1, 2)  # (B, C, H, W)

        def heads(t):  # (B, N, C) -> (B, heads, N, head_dim)
            return t.reshape(B, -1, self.num_heads, self.head_dim).transpose(1, 2)

        out = attention(heads(self.q(img)), heads(self.k(img)), heads(self.v(img)), scale=self.scale)
        return self.proj(out.transpose(1, 2).reshape(B, H, W, C))  # (B, H, W, C)


class CvTBlock(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, drop_path: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = ConvAttention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.drop_path.residual(x, self.attn(self.norm1(x)))
        return self.drop_path.residual(x, self.mlp(self.norm2(x)))


class CvTStage(nn.Module):
    """Conv token embedding (kernel k, stride s, pad k//2) + LayerNorm, then blocks; (B, H, W, C) layout."""

    def __init__(self, in_dim, dim, kernel, stride, depth, num_heads, mlp_ratio, rates):
        super().__init__()
        self.embed = nn.Conv2d(in_dim, dim, kernel, stride=stride, padding=kernel // 2)
        self.norm = nn.LayerNorm(dim)
        self.blocks = nn.ModuleList(CvTBlock(dim, num_heads, mlp_ratio, rates[i]) for i in range(depth))

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        x = self.norm(self.embed(img).permute(0, 2, 3, 1))  # (B, H', W', C)
        for block in self.blocks:
            x = block(x)
        return x


class CvT(Backbone):
    """CvT without CLS token; `forward_features` returns (mean of normed tokens, pooled last-stage grid)."""

    def __init__(
        self,
        *,
        img_size: int,
        num_classes: int,
        in_chans: int = 3,
        dims: tuple[int, ...] = (64, 192, 384),
        kernels: tuple[int, ...] = (7, 3, 3),
        strides: tuple[int, ...] = (4, 2, 2),
        depths: tuple[int, ...] = (1, 2, 10),
        num_heads: tuple[int, ...] = (1, 3, 6),
        mlp_ratio: float = 4.0,
        drop_path: float = 0.0,  # stochastic depth of the last block; linear from 0 over all blocks
        arch: str = "cvt_13",
    ):
        super().__init__()
        self.multiple = 1
        for s in strides:
            self.multiple *= s
        check_img_size(arch, img_size, self.multiple, f"multiples of {self.multiple}")
        self.arch = arch
        self.in_chans = in_chans
        self.num_features = dims[-1]
        self.grid_dims = [dims[-1]]
        g = -(-(img_size // self.multiple) // 2)  # after the 3x3 / stride 2 pooling
        self.grid = (g, g)
        rates = linear_rates(drop_path, sum(depths))
        stages, start, prev = [], 0, in_chans
        for dim, k, s, d, h in zip(dims, kernels, strides, depths, num_heads, strict=True):
            stages.append(CvTStage(prev, dim, k, s, d, h, mlp_ratio, rates[start : start + d]))
            start, prev = start + d, dim
        self.stages = nn.ModuleList(stages)
        self.norm = nn.LayerNorm(self.num_features)
        self.apply(trunc_normal_init)
        self.head = make_head(self.num_features, num_classes)

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        check_image(x, self.in_chans, self.multiple, self.arch)
        for stage in self.stages:
            x = stage(x)
            last = x
            x = x.permute(0, 3, 1, 2)  # (B, C, H, W) for the next conv embedding
        return self.norm(last).mean(dim=(1, 2)), drloc_pool(last)


@register(default_img_size=224)
def cvt_13(*, img_size: int, num_classes: int, in_chans: int = 3, drop_path: float = 0.0, **overrides):
    """CvT-13 (paper B): dims (64, 192, 384), embed kernels (7, 3, 3) strides (4, 2, 2), heads (1, 3, 6),
    depths (1, 2, 10), mlp ratio 4, conv q/k/v projections (k/v stride 2)."""
    config = dict(img_size=img_size, num_classes=num_classes, in_chans=in_chans, drop_path=drop_path)
    return build_with(CvT, "cvt_13", {**config, "arch": "cvt_13"}, overrides)


@register(default_img_size=32)
def cvt_tiny(*, img_size: int, num_classes: int, in_chans: int = 3, drop_path: float = 0.0, **overrides):
    """Test CvT: dims (16, 32, 64), heads (1, 2, 2), depths (1, 1, 1), otherwise as `cvt_13`."""
    config = dict(
        img_size=img_size, num_classes=num_classes, in_chans=in_chans, drop_path=drop_path,
        dims=(16, 32, 64), num_heads=(1, 2, 2), depths=(1, 1, 1), arch="cvt_tiny",
    )
    return build_with(CvT, "cvt_tiny", config, overrides)
