"""Paper A's ViT and Swin as their released code computes them, for the benchmarks' reference: the
baseline must not speed up when fastvit's own models do (it used to be `fastvit.models` on `math`).

ViT, from the structure of timm's ViT that paper A's `models/vit.py` follows: qkv Linear reshaped and
permuted to (3, B, H, N, d), scores q kᵀ scaled after the product, softmax, (attn v) transposed back,
pre-norm blocks with per-sample stochastic depth, the position embedding resized with paper A's
`interpolate_pos_encoding` (bicubic by a scale factor, +0.1) for other input sizes.
Swin, from the original Swin code paper A's `models/swin.py` follows: torch.roll for the shift, window
partition / reverse as view + permute copies, q scaled before q kᵀ, the relative-position table gathered
every call, the shift mask (-100) added per window, patch merging by strided slices and a concatenation.
Swin-T (paper B's `swin_t`, 224 px) is the same Swin with `SWIN_T`'s sizes; `PlainDrloc` is paper B's
L_drloc as its code computes it: positions drawn with torch.randint per image, flat-index gathers, the
two embeddings concatenated, the MLP, an L1 loss.
Parameter names equal fastvit's `vit` / `swin` / `swin_t`, so `load_state_dict` moves weights between them.
"""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


def init_linears(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


class DropPath(nn.Module):
    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x):
        if self.p == 0.0 or not self.training:
            return x
        keep = torch.rand((x.shape[0],) + (1,) * (x.dim() - 1), dtype=x.dtype, device=x.device) < 1 - self.p
        return x / (1 - self.p) * keep


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads, self.scale = heads, (dim // heads) ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = ((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(B, N, C))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: float, drop_path: float):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim, eps=1e-6), nn.LayerNorm(dim, eps=1e-6)
        self.attn, self.mlp = Attention(dim, heads), Mlp(dim, int(dim * mlp_ratio))
        self.drop_path = DropPath(drop_path)

    def forward(self, x):
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class PatchEmbed(nn.Module):
    def __init__(self, in_chans: int, dim: int, patch: int):
        super().__init__()
        self.patch = patch
        self.proj = nn.Conv2d(in_chans, dim, kernel_size=patch, stride=patch)

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)


class PlainViT(nn.Module):
    """Paper A's 32-px ViT: patch 4, embed 192, depth 9, 12 heads, mlp ratio 2 (SPEC); head on CLS."""

    def __init__(self, img_size: int = 32, num_classes: int = 10, in_chans: int = 3, patch: int = 4,
                 dim: int = 192, depth: int = 9, heads: int = 12, mlp_ratio: float = 2.0, drop_path: float = 0.0):
        super().__init__()
        self.num_features = dim
        self.patch_embed = PatchEmbed(in_chans, dim, patch)
        n = (img_size // patch) ** 2
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, n + 1, dim))
        rates = torch.linspace(0, drop_path, depth).tolist()
        self.blocks = nn.ModuleList(Block(dim, heads, mlp_ratio, r) for r in rates)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, num_classes) if num_classes else nn.Identity()
        init_linears(self)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)

    def reset_classifier(self, num_classes: int) -> None:
        self.head = nn.Linear(self.num_features, num_classes) if num_classes else nn.Identity()

    def pos_embed_for(self, n_patches: int, w: int, h: int) -> torch.Tensor:
        n = self.pos_embed.shape[1] - 1
        if n_patches == n and w == h:
            return self.pos_embed
        side, dim = int(math.sqrt(n)), self.pos_embed.shape[-1]
        w0, h0 = w // self.patch_embed.patch + 0.1, h // self.patch_embed.patch + 0.1
        grid = self.pos_embed[:, 1:].reshape(1, side, side, dim).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, scale_factor=(w0 / side, h0 / side), mode="bicubic")
        return torch.cat([self.pos_embed[:, :1], grid.permute(0, 2, 3, 1).reshape(1, -1, dim)], dim=1)

    def forward(self, x):
        B, _, w, h = x.shape
        t = self.patch_embed(x)
        t = torch.cat([self.cls_token.expand(B, -1, -1), t], dim=1)
        t = t + self.pos_embed_for(t.shape[1] - 1, w, h)
        for block in self.blocks:
            t = block(t)
        return self.head(self.norm(t)[:, 0])


def window_partition(x, ws: int):
    B, H, W, C = x.shape
    return x.view(B, H // ws, ws, W // ws, ws, C).permute(0, 1, 3, 2, 4, 5).reshape(-1, ws * ws, C)


def window_reverse(windows, ws: int, H: int, W: int):
    B = windows.shape[0] // (H * W // ws // ws)
    return windows.view(B, H // ws, W // ws, ws, ws, -1).permute(0, 1, 3, 2, 4, 5).reshape(B, H, W, -1)


class WindowAttention(nn.Module):
    def __init__(self, dim: int, heads: int, ws: int):
        super().__init__()
        self.heads, self.scale = heads, (dim // heads) ** -0.5
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        coords = torch.stack(torch.meshgrid(torch.arange(ws), torch.arange(ws), indexing="ij")).flatten(1)
        rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (ws - 1)
        self.register_buffer("index", rel[..., 0] * (2 * ws - 1) + rel[..., 1], persistent=False)

    def forward(self, x, table, mask):
        B_, N, C = x.shape
        qkv = self.qkv(x).reshape(B_, N, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0] * self.scale, qkv[1], qkv[2]
        attn = q @ k.transpose(-2, -1)
        attn = attn + table[self.index.view(-1)].view(N, N, -1).permute(2, 0, 1).unsqueeze(0)
        if mask is not None:
            nW = mask.shape[0]
            attn = attn.view(B_ // nW, nW, self.heads, N, N) + mask.unsqueeze(1).unsqueeze(0)
            attn = attn.view(-1, self.heads, N, N)
        return self.proj((attn.softmax(dim=-1) @ v).transpose(1, 2).reshape(B_, N, C))


class SwinBlock(nn.Module):
    def __init__(self, dim: int, heads: int, grid: int, window: int, shifted: bool, mlp_ratio: float,
                 drop_path: float, eps: float):
        super().__init__()
        self.ws = min(window, grid)
        self.shift = self.ws // 2 if shifted and grid > window else 0
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window - 1) ** 2, heads))
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)
        self.norm1, self.norm2 = nn.LayerNorm(dim, eps=eps), nn.LayerNorm(dim, eps=eps)
        self.attn, self.mlp = WindowAttention(dim, heads, self.ws), Mlp(dim, int(dim * mlp_ratio))
        self.drop_path = DropPath(drop_path)
        mask = None
        if self.shift:
            img = torch.zeros(1, grid, grid, 1)
            bands = (slice(0, -self.ws), slice(-self.ws, -self.shift), slice(-self.shift, None))
            for n, (h, w) in enumerate((h, w) for h in bands for w in bands):
                img[:, h, w, :] = n
            ids = window_partition(img, self.ws).squeeze(-1)  # (nW, N)
            mask = (ids[:, None, :] != ids[:, :, None]).float() * -100.0
        self.register_buffer("mask", mask, persistent=False)

    def forward(self, x):  # (B, H, W, C)
        B, H, W, C = x.shape
        y = self.norm1(x)
        if self.shift:
            y = torch.roll(y, shifts=(-self.shift, -self.shift), dims=(1, 2))
        y = self.attn(window_partition(y, self.ws), self.relative_position_bias_table, self.mask)
        y = window_reverse(y, self.ws, H, W)
        if self.shift:
            y = torch.roll(y, shifts=(self.shift, self.shift), dims=(1, 2))
        x = x + self.drop_path(y)
        return x + self.drop_path(self.mlp(self.norm2(x)))


class PatchMerging(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.norm = nn.LayerNorm(4 * dim, eps=eps)
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, x):
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], dim=-1)
        return self.reduction(self.norm(x))


class SwinStage(nn.Module):
    def __init__(self, dim, depth, heads, grid, window, mlp_ratio, rates, downsample, eps):
        super().__init__()
        self.blocks = nn.ModuleList(SwinBlock(dim, heads, grid, window, i % 2 == 1, mlp_ratio, rates[i], eps)
                                    for i in range(depth))
        self.downsample = PatchMerging(dim, eps) if downsample else nn.Identity()

    def forward(self, x):
        for block in self.blocks:
            x = block(x)
        return self.downsample(x)


class SwinPatchEmbed(PatchEmbed):
    def __init__(self, in_chans: int, dim: int, patch: int, eps: float):
        super().__init__(in_chans, dim, patch)
        self.norm = nn.LayerNorm(dim, eps=eps)

    def forward(self, x):
        return self.norm(self.proj(x).permute(0, 2, 3, 1))


# paper B's Swin-T at 224 px (its LayerNorms keep torch's default eps)
SWIN_T = dict(img_size=224, patch=4, dim=96, depths=(2, 2, 6, 2), heads=(3, 6, 12, 24), window=7, mlp_ratio=4.0,
              eps=1e-5)


class PlainSwin(nn.Module):
    """Paper A's 32-px Swin: patch 2, embed 96, depths (2, 6, 4), heads (3, 6, 12), window 4, mlp ratio 2,
    LayerNorm eps 1e-6; `PlainSwin(**SWIN_T)` is paper B's Swin-T."""

    def __init__(self, img_size: int = 32, num_classes: int = 10, in_chans: int = 3, patch: int = 2,
                 dim: int = 96, depths=(2, 6, 4), heads=(3, 6, 12), window: int = 4, mlp_ratio: float = 2.0,
                 drop_path: float = 0.0, eps: float = 1e-6):
        super().__init__()
        self.patch_embed = SwinPatchEmbed(in_chans, dim, patch, eps)
        rates = torch.linspace(0, drop_path, sum(depths)).tolist()
        side, stages = img_size // patch, []
        for i, (depth, h) in enumerate(zip(depths, heads, strict=True)):
            start = sum(depths[:i])
            stages.append(SwinStage(dim * 2**i, depth, h, side >> i, window, mlp_ratio,
                                    rates[start:start + depth], downsample=i < len(depths) - 1, eps=eps))
        self.stages = nn.ModuleList(stages)
        self.num_features = dim * 2 ** (len(depths) - 1)
        self.norm = nn.LayerNorm(self.num_features, eps=eps)
        self.head = nn.Linear(self.num_features, num_classes) if num_classes else nn.Identity()
        init_linears(self)

    def forward_grid(self, x):
        """The normed final token grid (B, Hg, Wg, C): what the classifier pools and L_drloc samples."""
        x = self.patch_embed(x)
        for stage in self.stages:
            x = stage(x)
        return self.norm(x)

    def forward(self, x):
        return self.head(self.forward_grid(x).flatten(1, 2).mean(dim=1))


class PlainDrloc(nn.Module):
    """Paper B's L_drloc, l1 mode: m random pairs per image of the (B, Hg, Wg, C) grid, their concatenated
    embeddings through Linear(2C, 512)-ReLU-Linear(512, 512)-ReLU-Linear(512, 2) against |row, col| offsets."""

    def __init__(self, in_dim: int, num_pairs: int = 64, hidden: int = 512):
        super().__init__()
        self.num_pairs = num_pairs
        self.mlp = nn.Sequential(nn.Linear(2 * in_dim, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                                 nn.Linear(hidden, 2))

    def forward(self, grid):
        B, Hg, Wg, C = grid.shape
        pos = torch.stack([torch.randint(size, (B, self.num_pairs, 2), device=grid.device)
                           for size in (Hg, Wg)], dim=-1)  # (B, m, 2 points, row/col)
        flat = (torch.arange(B, device=grid.device).view(B, 1, 1) * Hg + pos[..., 0]) * Wg + pos[..., 1]
        tokens = grid.reshape(B * Hg * Wg, C)[flat]  # (B, m, 2, C)
        pred = self.mlp(tokens.flatten(2))
        target = (pos[:, :, 0] - pos[:, :, 1]).abs().to(pred.dtype)
        return (pred - target).abs().mean()
