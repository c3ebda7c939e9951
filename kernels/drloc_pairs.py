"""L_drloc pair sampling. Placeholder (plain torch) until the Triton kernel lands."""

import torch

from fastvit.kernels import reference


def drloc_pairs(grid, num_pairs, *, seed, offset=0, use_abs=True, positions=None):
    """Sample `num_pairs` token pairs per image of grid (B, Hg, Wg, C).

    Returns pairs (B, m, 2C), targets (B, m, 2) float, positions (B, m, 4) int64 (r1, c1, r2, c2).
    """
    B, Hg, Wg, _ = grid.shape
    if positions is None:
        gen = torch.Generator(device="cpu").manual_seed(int(seed) * 1_000_003 + int(offset))
        rows = torch.randint(0, Hg, (B, num_pairs, 2), generator=gen)
        cols = torch.randint(0, Wg, (B, num_pairs, 2), generator=gen)
        positions = torch.stack([rows[..., 0], cols[..., 0], rows[..., 1], cols[..., 1]], -1).to(grid.device)
    pairs, targets = reference.drloc_pairs(grid, positions, use_abs)
    return pairs, targets, positions
