"""Plain-torch references of every kernel: the ground truth the tests compare against."""

import torch


def attention(q, k, v, bias=None, scale=None):
    """softmax(q @ k^T * scale + bias) @ v, computed in the input dtype (upcast for float64 checks)."""
    # q, k, v: (..., H, N, D); bias broadcastable to (..., H, N, N); scale float or (H,)
    if scale is None:
        scale = q.shape[-1] ** -0.5
    scores = q @ k.transpose(-2, -1)  # (B, H, N, N)
    if isinstance(scale, torch.Tensor):
        scores = scores * scale.view(-1, 1, 1).to(scores.dtype)
    else:
        scores = scores * scale
    if bias is not None:
        scores = scores + bias.to(scores.dtype)
    return torch.softmax(scores, dim=-1) @ v


def drloc_pairs(grid, positions, use_abs=True):
    """Gather token pairs at `positions` (B, m, 4) = (r1, c1, r2, c2) and their offsets."""
    # grid: (B, Hg, Wg, C) -> pairs (B, m, 2C), targets (B, m, 2) float
    B, Hg, Wg, C = grid.shape
    flat = grid.reshape(B, Hg * Wg, C)
    pos = positions.long()
    i1 = (pos[..., 0] * Wg + pos[..., 1]).unsqueeze(-1).expand(-1, -1, C)
    i2 = (pos[..., 2] * Wg + pos[..., 3]).unsqueeze(-1).expand(-1, -1, C)
    pairs = torch.cat([flat.gather(1, i1), flat.gather(1, i2)], dim=-1)
    delta = (pos[..., 0:2] - pos[..., 2:4]).to(grid.dtype if grid.is_floating_point() else torch.float32)
    if use_abs:
        targets = delta.abs()
    else:
        targets = delta + torch.tensor([Hg - 1, Wg - 1], dtype=delta.dtype, device=delta.device)
    return pairs, targets
