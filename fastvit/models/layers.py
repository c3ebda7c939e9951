"""Layers shared by the architectures: patch embedding, attention, MLP, stochastic depth, LayerScale, ReLU.

Every attention here goes through `fastvit.kernels.attention`, so the backend (triton / sdpa / math)
is chosen in one place. Parameter names follow the usual ViT layout (`qkv`, `proj`, `fc1`, `fc2`,
`norm1`, `norm2`) so that `no_weight_decay` and checkpoint surgery stay predictable.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from fastvit.kernels import attention


def trunc_normal_init(module: nn.Module) -> None:
    """ViT/Swin/CaiT init: Linear weights ~ N(0, 0.02) truncated to [-2, 2], zero bias; norms (1, 0).

    The bounds are absolute (+-100 sigma), exactly as the papers' code calls timm's trunc_normal_(std=.02):
    in effect a plain normal. Tokens, position embeddings and rel-pos tables use the same draw.
    """
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, (nn.LayerNorm, nn.BatchNorm2d, nn.GroupNorm)):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def linear_rates(last: float, n: int) -> list[float]:
    """Stochastic-depth rates rising linearly from 0 to `last` over n blocks (floats: meta-device safe)."""
    return [last * i / (n - 1) if n > 1 else 0.0 for i in range(n)]


def check_image(x: torch.Tensor, in_chans: int, multiple: int, arch: str) -> tuple[int, int]:
    """ValueError naming both shapes unless x is (B, in_chans, H, W) with H and W multiples of `multiple`."""
    if x.dim() != 4 or x.shape[1] != in_chans or x.shape[2] % multiple or x.shape[3] % multiple:
        raise ValueError(
            f"{arch}: expected input (B, {in_chans}, H, W) with H and W multiples of {multiple}, "
            f"got {tuple(x.shape)}"
        )
    return x.shape[2], x.shape[3]


class DropPath(nn.Module):
    """Stochastic depth: zero the residual branch of a whole sample with probability p (scaled by 1/(1-p)).

    Blocks call `residual(x, branch)`, which adds the dropped branch to the stream in one op.
    """

    def __init__(self, p: float = 0.0):
        super().__init__()
        self.p = p

    def _scale(self, x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        # one Bernoulli draw per sample, broadcast over tokens and channels; draws from the global
        # generator, which the training loop seeds (per-module generators would not survive DDP/compile).
        # 1/keep in the stream's dtype: in bf16 it would round 1/0.9 to 1.109 and bias every kept branch
        keep = 1.0 - self.p
        mask = torch.empty((x.shape[0],) + (1,) * (x.dim() - 1), dtype=dtype, device=x.device)
        return mask.bernoulli_(keep).div_(keep)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        return x * self._scale(x, x.dtype)

    def residual(self, x: torch.Tensor, branch: torch.Tensor) -> torch.Tensor:
        """x + self(branch). One addcmul, not a mul, a div and an add: the separate ops cost 7.8 vs 4.4 ms
        fwd+bwd at (256, 65, 192); the bf16 vit step with drop_path 0.1 went 884 -> ~850 ms (Xeon, AMX)."""
        if self.p == 0.0 or not self.training:
            return x + branch
        return torch.addcmul(x, branch, self._scale(branch, torch.promote_types(x.dtype, branch.dtype)))

    def extra_repr(self) -> str:
        return f"p={self.p}"


class _ReLUFromOutput(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        out = x.clamp_min(0)
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx, grad):
        (out,) = ctx.saved_tensors
        return grad * out.sign()  # out >= 0: sign is the 0/1 derivative, with no bool tensor in between


class ReLU(nn.Module):
    """ReLU whose backward reads the saved float output, never a saved bool mask.

    Why: with nn.ReLU, torch.compile's partitioner saves the `x <= 0` mask as a bool tensor, and inductor's
    CPU code for storing and loading bool tensors (torch 2.13) is ~16x slower than eager; it made a compiled
    L_drloc step slower than eager (NOTES, #16). The values and the gradient are nn.ReLU's exactly.
    """

    def forward(self, x):
        return _ReLUFromOutput.apply(x)


class LayerScale(nn.Module):
    """Per-channel learnable scale of a residual branch (CaiT), initialised to a small constant."""

    def __init__(self, dim: int, init: float):
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), init))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class Mlp(nn.Module):
    """Linear -> GELU -> Linear."""

    def __init__(self, dim: int, hidden: int, out: int | None = None):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, out or dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class PatchEmbed(nn.Module):
    """Non-overlapping conv patch embedding: (B, C, H, W) -> (B, H/p, W/p, D), optionally normalised."""

    def __init__(self, in_chans: int, dim: int, patch: int, norm: bool = False, eps: float = 1e-5):
        super().__init__()
        self.patch = patch
        self.proj = nn.Conv2d(in_chans, dim, kernel_size=patch, stride=patch)
        self.norm = nn.LayerNorm(dim, eps=eps) if norm else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(x).permute(0, 2, 3, 1))  # (B, Hg, Wg, D)


class Attention(nn.Module):
    """Multi-head self-attention through `fastvit.kernels.attention`, with an optional additive bias."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def _qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim)
        # unbind on the (B, N, 3, ...) layout: backward stacks dq, dk, dv straight into qkv's layout, where
        # unbind(0) of a permuted (3, B, H, N, D) view stacked them and then copied through the permute
        # (CPU, bf16: 14-34% faster fwd+bwd; the copy was 7% of a profiled Swin step)
        return tuple(t.transpose(1, 2) for t in qkv.unbind(2))  # 3 x (B, heads, N, head_dim)

    def forward(self, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        B, N, C = x.shape
        q, k, v = self._qkv(x)
        out = attention(q, k, v, bias=bias, scale=self.scale)  # (B, heads, N, head_dim)
        return self.proj(out.transpose(1, 2).reshape(B, N, C))

    def attention_map(self, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        """softmax(q k^T * scale + bias), (B, heads, N, N): for visualisation, not for training."""
        q, k, _ = self._qkv(x)
        scores = (q @ k.transpose(-2, -1)) * self.scale  # (B, heads, N, N)
        if bias is not None:
            nb = bias.shape[0]
            # windowed bias (nb, H|1, N, N): batch b reads bias[b % nb]
            scores = (scores.unflatten(0, (-1, nb)) + bias).flatten(0, 1)
        return scores.softmax(dim=-1)


class Block(nn.Module):
    """Pre-norm transformer block: x + DropPath(Attn(LN(x))), then x + DropPath(Mlp(LN(x)))."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float,
        qkv_bias: bool = True,
        drop_path: float = 0.0,
        eps: float = 1e-6,
    ):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = Attention(dim, num_heads, qkv_bias)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        x = self.drop_path.residual(x, self.attn(self.norm1(x), bias))
        return self.drop_path.residual(x, self.mlp(self.norm2(x)))


def resize_pos_embed(pos: torch.Tensor, grid: tuple[int, int], size: tuple[int, int]) -> torch.Tensor:
    """Bicubic resize of a (1, Hg*Wg, D) patch position embedding from `grid` to `size` (no CLS row)."""
    if tuple(grid) == tuple(size):
        return pos
    D = pos.shape[-1]
    img = pos.reshape(1, grid[0], grid[1], D).permute(0, 3, 1, 2)  # (1, D, Hg, Wg)
    img = F.interpolate(img, size=size, mode="bicubic", align_corners=False)
    return img.permute(0, 2, 3, 1).reshape(1, size[0] * size[1], D)  # (1, H'*W', D)
