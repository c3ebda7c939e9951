"""Swin Transformer (Liu et al. 2021): shifted-window attention with a learned relative-position bias.

The relative-position bias (1, heads, N, N) and the shifted-window mask (nW, 1, N, N) are summed to one
(nW, heads, N, N) additive bias and handed to `fastvit.kernels.attention`, which reads bias[b % nW] for
batch row b; windows are therefore the fastest-varying part of the batch (B * nW). The fused kernel
then computes the gradient of the bias, i.e. of the relative-position table.

Any grid size works at forward: a window larger than the grid is clamped to the grid (no shift then)
and the relative-position table is indexed for the smaller window; a grid that is not a multiple of
the window is zero-padded and the padded keys are masked out.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from fastvit.models.backbone import Backbone, make_head
from fastvit.models.layers import (
    Attention,
    DropPath,
    Mlp,
    PatchEmbed,
    check_image,
    linear_rates,
    trunc_normal_init,
)
from fastvit.models.registry import build_with, register
from fastvit.models.vit import check_img_size

MASKED = -100.0  # added to masked logits: exp(-100) underflows to 0 in fp32 and stays finite in fp16


def relative_index(wh: int, ww: int, window: int, device: torch.device | None = None) -> torch.Tensor:
    """(N, N) indices into a ((2*window-1)^2, heads) table for a wh x ww window (wh, ww <= window)."""
    rows, cols = torch.meshgrid(torch.arange(wh, device=device), torch.arange(ww, device=device), indexing="ij")
    coords = torch.stack([rows.flatten(), cols.flatten()])  # (2, N)
    rel = coords[:, :, None] - coords[:, None, :] + (window - 1)  # (2, N, N) in [0, 2*window-2]
    return rel[0] * (2 * window - 1) + rel[1]


def window_mask(
    H: int, W: int, wh: int, ww: int, sh: int, sw: int, device: torch.device | None = None
) -> torch.Tensor | None:
    """(nW, 1, N, N) additive mask for a (H, W) grid padded to window multiples and rolled by (-sh, -sw).

    A query may attend only to keys of the same label: tokens that came from the same side of the
    cyclic shift, and never to padding. None when nothing needs masking.
    """
    Hp, Wp = -(-H // wh) * wh, -(-W // ww) * ww
    if (sh, sw) == (0, 0) and (Hp, Wp) == (H, W):
        return None
    labels = torch.zeros(Hp, Wp, dtype=torch.long, device=device)
    # after the roll, the last `window` rows/cols mix wrapped-around content: three bands per axis
    row_bands = (slice(0, Hp - wh), slice(Hp - wh, Hp - sh), slice(Hp - sh, Hp)) if sh else (slice(0, Hp),)
    col_bands = (slice(0, Wp - ww), slice(Wp - ww, Wp - sw), slice(Wp - sw, Wp)) if sw else (slice(0, Wp),)
    for i, rb in enumerate(row_bands):
        for j, cb in enumerate(col_bands):
            labels[rb, cb] = 3 * i + j
    pad = torch.zeros(Hp, Wp, dtype=torch.bool, device=device)
    pad[H:, :] = True
    pad[:, W:] = True
    labels = torch.where(pad.roll((-sh, -sw), dims=(0, 1)), -1, labels)
    win = labels.view(Hp // wh, wh, Wp // ww, ww).permute(0, 2, 1, 3).reshape(-1, wh * ww)  # (nW, N)
    mask = (win[:, :, None] != win[:, None, :]).float() * MASKED  # (nW, N, N)
    return mask.unsqueeze(1)  # (nW, 1, N, N)


def window_order(Hp: int, Wp: int, wh: int, ww: int, sh: int, sw: int,
                 device: torch.device | None = None) -> torch.Tensor:
    """(2, Hp * Wp): row 0 lists the tokens of a (Hp, Wp) grid rolled by (-sh, -sw) in window order
    (window, then row and column inside it); row 1 is its inverse, back to grid order."""
    grid = torch.arange(Hp * Wp, device=device).view(Hp, Wp).roll((-sh, -sw), dims=(0, 1))
    order = grid.view(Hp // wh, wh, Wp // ww, ww).permute(0, 2, 1, 3).reshape(-1)
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(order.numel(), device=device)
    return torch.stack([order, inverse])


class _PermuteTokens(torch.autograd.Function):
    """x (B, T, C) -> x[:, order] for a permutation `order`, whose gradient is the gather by `inverse`:
    index_select's own backward is a scatter-add into zeros. One gather each way replaces the roll
    (two copies per shifted axis) and the window-partition copy, forward and backward."""

    @staticmethod
    def forward(ctx, x, order, inverse):
        ctx.save_for_backward(inverse)
        return x.index_select(1, order)

    @staticmethod
    def backward(ctx, grad):
        (inverse,) = ctx.saved_tensors
        return grad.index_select(1, inverse), None, None


def window_geometry(H: int, W: int, window: int, shifted: bool) -> tuple[int, int, int, int]:
    """(wh, ww, sh, sw): window clamped to the grid; no shift along an axis the window covers."""
    wh, ww = min(window, H), min(window, W)
    sh = wh // 2 if shifted and H > window else 0
    sw = ww // 2 if shifted and W > window else 0
    return wh, ww, sh, sw


class SwinBlock(nn.Module):
    """(Shifted-)window attention block on a (B, H, W, C) grid."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        window: int,
        shifted: bool,
        mlp_ratio: float,
        drop_path: float,
        grid: tuple[int, int] | None = None,  # native (H, W): its index and mask are built once
        eps: float = 1e-5,
    ):
        super().__init__()
        self.window = window
        self.shifted = shifted
        self.grid = grid
        if grid is not None:
            # non-persistent buffers: follow .to(device), stay out of the state dict, and give
            # torch.compile constants instead of per-step index/mask construction
            wh, ww, sh, sw = window_geometry(*grid, window, shifted)
            self.register_buffer("native_index", relative_index(wh, ww, window), persistent=False)
            self.register_buffer("native_mask", window_mask(*grid, wh, ww, sh, sw), persistent=False)
            Hp, Wp = -(-grid[0] // wh) * wh, -(-grid[1] // ww) * ww
            self.register_buffer("native_order", window_order(Hp, Wp, wh, ww, sh, sw), persistent=False)
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = Attention(dim, num_heads, qkv_bias=True)
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window - 1) ** 2, num_heads))
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.drop_path = DropPath(drop_path)

    def _windows(self, x: torch.Tensor, attention_map: bool = False) -> torch.Tensor:
        B, H, W, C = x.shape
        wh, ww, sh, sw = window_geometry(H, W, self.window, self.shifted)
        Hp, Wp = -(-H // wh) * wh, -(-W // ww) * ww
        if (Hp, Wp) != (H, W):
            x = F.pad(x, (0, 0, 0, Wp - W, 0, Hp - H))  # (B, Hp, Wp, C)
        if (H, W) == self.grid:
            idx, mask, order = self.native_index, self.native_mask, self.native_order
        else:  # another input size (e.g. DINO local crops): build them for this grid
            idx = relative_index(wh, ww, self.window, x.device)
            mask = window_mask(H, W, wh, ww, sh, sw, x.device)
            order = window_order(Hp, Wp, wh, ww, sh, sw, x.device)
        # rolled and partitioned in one gather; the window index varies fastest within the batch: row
        # b*nW + w reads bias[w]
        win = _PermuteTokens.apply(x.reshape(B, Hp * Wp, C), order[0], order[1]).view(-1, wh * ww, C)
        bias = self.relative_position_bias_table[idx].permute(2, 0, 1).unsqueeze(0)  # (1, heads, N, N)
        if mask is not None:
            bias = bias + mask.to(bias.dtype)  # (nW, heads, N, N)
        bias = bias.to(x.dtype)
        if attention_map:
            return self.attn.attention_map(win, bias)  # (B * nW, heads, N, N)
        out = self.attn(win, bias)  # (B * nW, N, C)
        out = _PermuteTokens.apply(out.reshape(B, Hp * Wp, C), order[1], order[0]).view(B, Hp, Wp, C)
        return out[:, :H, :W]  # (B, H, W, C)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.drop_path.residual(x, self._windows(self.norm1(x)))
        return self.drop_path.residual(x, self.mlp(self.norm2(x)))

    def attention_map(self, x: torch.Tensor) -> torch.Tensor:
        return self._windows(self.norm1(x), attention_map=True)


class PatchMerging(nn.Module):
    """2x2 neighbourhood concat -> LayerNorm(4C) -> Linear(4C, 2C): (B, H, W, C) -> (B, H/2, W/2, 2C)."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.norm = nn.LayerNorm(4 * dim, eps=eps)
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, H, W, C = x.shape
        # channel order (dh, dw) = (0,0), (1,0), (0,1), (1,1), the order of the original Swin weights
        x = x.view(B, H // 2, 2, W // 2, 2, C).permute(0, 1, 3, 4, 2, 5).reshape(B, H // 2, W // 2, 4 * C)
        return self.reduction(self.norm(x))


class SwinStage(nn.Module):
    """Blocks alternating regular / shifted windows, then an optional patch merging."""

    def __init__(self, dim, depth, num_heads, window, mlp_ratio, rates, downsample, grid, eps=1e-5):
        super().__init__()
        self.blocks = nn.ModuleList(
            SwinBlock(dim, num_heads, window, i % 2 == 1, mlp_ratio, rates[i], grid, eps) for i in range(depth)
        )
        self.downsample = PatchMerging(dim, eps) if downsample else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return self.downsample(x)


class SwinTransformer(Backbone):
    """Swin; `forward_features` returns (mean-pooled normed tokens, last-stage grid before the final norm)."""

    no_decay = ("relative_position_bias_table",)

    def __init__(
        self,
        *,
        img_size: int,
        num_classes: int,
        in_chans: int = 3,
        patch_size: int | None = None,  # None: 2 up to 32 px, 4 up to 64 px, 8 above
        embed_dim: int = 96,
        depths: tuple[int, ...] = (2, 6, 4),
        num_heads: tuple[int, ...] = (3, 6, 12),
        window_size: int = 4,
        mlp_ratio: float = 2.0,
        drop_path: float = 0.0,  # stochastic depth of the last block; linear from 0 over all blocks
        eps: float = 1e-5,  # of every LayerNorm: paper A's Swin 1e-6, paper B's Swin-T 1e-5
        arch: str = "swin",
    ):
        super().__init__()
        if len(depths) != len(num_heads):
            raise ValueError(f"depths {depths} and num_heads {num_heads} differ in length")
        if patch_size is None:
            patch_size = 2 if img_size <= 32 else (4 if img_size <= 64 else 8)
            sizes = "multiples of {} up to 32 px, of {} up to 64 px, of {} above (or set patch_size)"
            scale = 2 ** (len(depths) - 1)
            rule = sizes.format(2 * scale, 4 * scale, 8 * scale)
        else:
            rule = f"multiples of {patch_size * 2 ** (len(depths) - 1)}"
        self.multiple = patch_size * 2 ** (len(depths) - 1)  # patch, then one halving per merge
        check_img_size(arch, img_size, self.multiple, rule)
        self.arch = arch
        self.in_chans = in_chans
        self.patch_size = patch_size
        self.window_size = window_size
        dims = [embed_dim * 2**i for i in range(len(depths))]
        self.num_features = dims[-1]
        # stage outputs are taken after each merge, as in the L_drloc code: (2C_0, 2C_1, ..., C_last)
        self.grid_dims = [2 * d for d in dims[:-1]] + [dims[-1]]
        g = img_size // patch_size // 2 ** (len(depths) - 1)
        self.grid = (g, g)
        self.patch_embed = PatchEmbed(in_chans, embed_dim, patch_size, norm=True, eps=eps)
        rates = linear_rates(drop_path, sum(depths))
        starts = [sum(depths[:i]) for i in range(len(depths))]
        side = img_size // patch_size  # stage i runs on a (side / 2^i)^2 grid
        self.stages = nn.ModuleList(
            SwinStage(
                dims[i], depths[i], num_heads[i], window_size, mlp_ratio,
                rates[starts[i] : starts[i] + depths[i]], downsample=i < len(depths) - 1,
                grid=(side >> i, side >> i), eps=eps,
            )
            for i in range(len(depths))
        )
        self.norm = nn.LayerNorm(self.num_features, eps=eps)
        self.apply(trunc_normal_init)
        self.head = make_head(self.num_features, num_classes)

    def forward_stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Per-stage grids (B, H_i, W_i, grid_dims[i]), each after its stage's patch merging."""
        check_image(x, self.in_chans, self.multiple, self.arch)
        x = self.patch_embed(x)  # (B, H/p, W/p, C)
        grids = []
        for stage in self.stages:
            x = stage(x)
            grids.append(x)
        return grids

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        grid = self.forward_stages(x)[-1]  # (B, Hg, Wg, C), before the final norm
        return self.norm(grid).mean(dim=(1, 2)), grid

    @torch.no_grad()
    def last_attention(self, x: torch.Tensor) -> torch.Tensor:
        """Window attention of the last block, (B * nW, heads, N, N), windows fastest within the batch."""
        check_image(x, self.in_chans, self.multiple, self.arch)
        x = self.patch_embed(x)
        for stage in self.stages[:-1]:
            x = stage(x)
        last = self.stages[-1]
        for block in last.blocks[:-1]:
            x = block(x)
        return last.blocks[-1].attention_map(x)


def _swin(arch: str, config: dict, overrides: dict, **common) -> nn.Module:
    return build_with(SwinTransformer, arch, {**config, **common, "arch": arch}, overrides)


SWIN_T = dict(embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24), mlp_ratio=4.0)


@register(default_img_size=32)
def swin(*, img_size: int, num_classes: int, in_chans: int = 3, drop_path: float = 0.0, **overrides):
    """Paper A Swin: embed 96, depths (2, 6, 4), heads (3, 6, 12), window 4, mlp ratio 2, patch 2/4/8
    (up to 32 px / up to 64 px / above)."""
    config = dict(embed_dim=96, depths=(2, 6, 4), num_heads=(3, 6, 12), window_size=4, mlp_ratio=2.0, eps=1e-6)
    return _swin("swin", config, overrides, img_size=img_size, num_classes=num_classes,
                 in_chans=in_chans, drop_path=drop_path)


@register(default_img_size=32)
def swin_tiny(*, img_size: int, num_classes: int, in_chans: int = 3, drop_path: float = 0.0, **overrides):
    """Test/demo Swin: embed 32, depths (2, 2, 2), heads (1, 2, 4), window 4, mlp ratio 2, patch as `swin`."""
    config = dict(embed_dim=32, depths=(2, 2, 2), num_heads=(1, 2, 4), window_size=4, mlp_ratio=2.0, eps=1e-6)
    return _swin("swin_tiny", config, overrides, img_size=img_size, num_classes=num_classes,
                 in_chans=in_chans, drop_path=drop_path)


@register(default_img_size=224)
def swin_t(*, img_size: int, num_classes: int, in_chans: int = 3, drop_path: float = 0.0, **overrides):
    """Swin-T (paper B): patch 4, window 7, embed 96, depths (2, 2, 6, 2), heads (3, 6, 12, 24), mlp 4."""
    config = dict(SWIN_T, patch_size=4, window_size=7)
    return _swin("swin_t", config, overrides, img_size=img_size, num_classes=num_classes,
                 in_chans=in_chans, drop_path=drop_path)


@register(default_img_size=32)
def swin_t_p2_w4(*, img_size: int, num_classes: int, in_chans: int = 3, drop_path: float = 0.0, **overrides):
    """Swin-T for 32-px input (SPEC: small-image variant): as `swin_t` with patch 2 and window 4."""
    config = dict(SWIN_T, patch_size=2, window_size=4)
    return _swin("swin_t_p2_w4", config, overrides, img_size=img_size, num_classes=num_classes,
                 in_chans=in_chans, drop_path=drop_path)
