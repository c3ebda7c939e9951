"""Dense relative localization loss L_drloc (Liu et al., NeurIPS 2021; SPEC section 2).

From a model's final token grid (B, Hg, Wg, C), sample m position pairs per image, and let a small MLP
predict each pair's offset (rows, cols) from the two embeddings. The sampling, gather and offset
targets are one kernel: `fastvit.kernels.drloc_pairs`.

Two ways to compute the head's first layer, Linear(2C, 512) on concat(e1, e2), give the same numbers:
  "gather"   gather 2m embeddings into (B, m, 2C), then the Linear: B*m*2C*512 multiply-adds;
  "project"  split the weight as [W_a | W_b], project all k = Hg*Wg tokens once, x W_a^T and x W_b^T
             (B*k*C*1024 multiply-adds), then gather and add the halves: h = (x W_a^T)[p1] + (x W_b^T)[p2].
Project does fewer FLOPs exactly when k < m, and it never writes the (B, m, 2C) pair tensor.
The measurements behind the "auto" rule are in NOTES.md (benchmarks/drloc.py).
"""

import torch
import torch.nn.functional as F
from torch import nn

from fastvit.errors import UserError
from fastvit.kernels.drloc_pairs import drloc_pair_sum, drloc_pairs
from fastvit.models.layers import ReLU

MODES = ("l1", "ce", "cbr")
PATHS = ("auto", "gather", "project")
HIDDEN = 512  # width of the head MLP (SPEC 2.5)
_CBR_LOG_VAR_WEIGHT = 1e-3  # weight of log(var) in the variance-aware loss
_CBR_VAR_EPS = 1e-8
_SCALE_SEED_STRIDE = 0x9E3779B97F4A7C15  # odd 64-bit constant: distinct scales get unrelated Philox keys


def scale_seed(seed, scale: int):
    """The Philox key that scale `scale` samples with: scale 0 keeps `seed`, others get their own stream.

    seed: an int, or an int64 tensor (what a compiled step passes); the result has the same type.
    """
    if scale == 0:
        return seed
    return seed ^ ((scale * _SCALE_SEED_STRIDE) & (2**63 - 1))


def drloc_lambda(epoch: float, lam: float, warmup_epochs: float, total_epochs: float) -> float:
    """Weight of L_drloc at a (fractional) epoch: linear 0 -> lam over the warm-up, then linear to 0 at the end.

    The schedule of the paper's public code (SPEC 2.6); 0 from `total_epochs` on.
    """
    if lam < 0 or warmup_epochs < 0 or total_epochs <= 0:
        raise UserError(
            f"drloc_lambda needs lam >= 0, warmup_epochs >= 0 and total_epochs > 0, got lam={lam}, "
            f"warmup_epochs={warmup_epochs}, total_epochs={total_epochs}"
        )
    if epoch >= total_epochs:
        return 0.0
    if epoch < warmup_epochs:
        return lam * max(epoch, 0.0) / warmup_epochs
    return lam * (total_epochs - epoch) / (total_epochs - warmup_epochs)


class DrlocHead(nn.Module):
    """The offset predictor of one scale (SPEC 2.5).

    mode "l1":  Linear(2C, 512)-ReLU-Linear(512, 512)-ReLU-Linear(512, 2) regresses (rows, cols) offsets.
    mode "ce":  trunk Linear(2C, 512)-ReLU-Linear(512, 512)-ReLU-Linear(512, 512), then one Linear(512, n)
                classifier per axis, n = size if use_abs else 2 * size - 1 (size = Hg for rows, Wg for cols).
    mode "cbr": the "ce" network; the softmax's expected offset with a variance-aware regression loss.
    """

    def __init__(self, in_dim: int, *, mode: str = "l1", grid_size: tuple[int, int], use_abs: bool = True):
        super().__init__()
        if mode not in MODES:
            raise UserError(f"unknown drloc mode {mode!r}; choose from {', '.join(MODES)}")
        self.in_dim, self.mode, self.use_abs = in_dim, mode, use_abs
        self.grid_size = (int(grid_size[0]), int(grid_size[1]))
        self.fc1 = nn.Linear(2 * in_dim, HIDDEN)
        out_dim = 2 if mode == "l1" else HIDDEN
        self.trunk = nn.Sequential(ReLU(), nn.Linear(HIDDEN, HIDDEN), ReLU(), nn.Linear(HIDDEN, out_dim))
        if mode != "l1":
            self.num_classes = tuple(size if use_abs else 2 * size - 1 for size in self.grid_size)
            self.row_head = nn.Linear(HIDDEN, self.num_classes[0])
            self.col_head = nn.Linear(HIDDEN, self.num_classes[1])

    def forward(self, pairs: torch.Tensor):
        """pairs (B, m, 2C) -> l1: offsets (B, m, 2); ce/cbr: (row logits (B, m, n_r), col logits (B, m, n_c))."""
        return self.forward_hidden(self.fc1(pairs))

    def forward_hidden(self, hidden: torch.Tensor):
        """The head from the first layer's output (B, m, 512) on."""
        x = self.trunk(hidden)
        if self.mode == "l1":
            return x
        return self.row_head(x), self.col_head(x)

    def project(self, grid: torch.Tensor) -> torch.Tensor:
        """grid (B, Hg, Wg, C) -> (B, Hg, Wg, 1024) = [x W_a^T | x W_b^T], the first layer's two halves."""
        w_a, w_b = self.fc1.weight.split(self.in_dim, dim=1)  # (512, C) each
        return F.linear(grid, torch.cat([w_a, w_b], dim=0))  # (B, Hg, Wg, 2 * 512)

    def loss(self, out, targets: torch.Tensor) -> torch.Tensor:
        """Scalar loss of the head's output against float (B, m, 2) targets, computed in float32."""
        if self.mode == "l1":
            return (out.float() - targets).abs().mean()
        total = targets.new_zeros(())
        for logits, target in zip(out, targets.unbind(-1), strict=True):
            logits = logits.float()
            if self.mode == "ce":
                total = total + F.cross_entropy(logits.flatten(0, 1), target.flatten().long())
                continue
            # cbr: expected offset under the softmax, weighted by its inverse variance
            probs = logits.softmax(-1)
            labels = torch.arange(logits.shape[-1], device=logits.device, dtype=probs.dtype)
            pred = (probs * labels).sum(-1)  # (B, m)
            var = (probs * (labels - pred.unsqueeze(-1)) ** 2).sum(-1) + _CBR_VAR_EPS
            log_var = var.log()
            total = total + (torch.exp(-log_var) * (pred - target) ** 2 + _CBR_LOG_VAR_WEIGHT * log_var).mean()
        return total


class Drloc(nn.Module):
    """L_drloc over one or more token grids (Swin multiscale: one head per stage), losses summed.

    Usage: `loss = Drloc([768], grid_sizes=[(7, 7)])([grid], seed=cfg.seed, offset=global_step)`,
    weighted by `drloc_lambda(epoch, ...)`. Scale i samples with `scale_seed(seed, i)` at counter `offset`,
    so a step's positions depend only on (seed, step): exact under resume and across backends.
    seed and offset: ints, or int64 0-dim tensors on the grid's device (a compiled step: one graph for
    every step).
    path: "gather", "project" (see the module docstring) or "auto" (project when Hg*Wg < num_pairs).
    backend: passed to `fastvit.kernels.drloc_pairs` (None: triton on CUDA, torch otherwise).
    """

    def __init__(
        self, in_dims: list[int], *, mode: str = "l1", num_pairs: int = 64, use_abs: bool = True,
        grid_sizes: list[tuple[int, int]], path: str = "auto", backend: str | None = None,
    ):
        super().__init__()
        if len(in_dims) != len(grid_sizes) or not in_dims:
            raise UserError(
                f"Drloc needs one grid size per input dim, got {len(in_dims)} dims and {len(grid_sizes)} sizes"
            )
        if path not in PATHS:
            raise UserError(f"unknown drloc path {path!r}; choose from {', '.join(PATHS)}")
        if num_pairs < 1:
            raise UserError(f"drloc num_pairs must be >= 1, got {num_pairs}")
        self.num_pairs, self.use_abs, self.path, self.backend = int(num_pairs), use_abs, path, backend
        self.heads = nn.ModuleList(
            DrlocHead(dim, mode=mode, grid_size=size, use_abs=use_abs)
            for dim, size in zip(in_dims, grid_sizes, strict=True)
        )

    def uses_projection(self, head: DrlocHead) -> bool:
        """Whether this head's first layer runs as "project" (see the module docstring)."""
        if self.path != "auto":
            return self.path == "project"
        return head.grid_size[0] * head.grid_size[1] < self.num_pairs

    def forward(self, grids: list[torch.Tensor], *, seed: int | torch.Tensor, offset: int | torch.Tensor):
        if len(grids) != len(self.heads):
            raise UserError(f"Drloc has {len(self.heads)} heads but got {len(grids)} grids")
        total = None
        for i, (grid, head) in enumerate(zip(grids, self.heads, strict=True)):
            expected = (*head.grid_size, head.in_dim)
            if grid.dim() != 4 or tuple(grid.shape[1:]) != expected:
                raise UserError(
                    f"Drloc scale {i} expects grids of shape (B, {expected[0]}, {expected[1]}, {expected[2]}), "
                    f"got {tuple(grid.shape)}"
                )
            sample = dict(seed=scale_seed(seed, i), offset=offset, use_abs=self.use_abs, backend=self.backend)
            if self.uses_projection(head):
                hidden, targets, _ = drloc_pair_sum(head.project(grid), self.num_pairs, **sample)
                out = head.forward_hidden(hidden + head.fc1.bias.to(hidden.dtype))
            else:
                pairs, targets, _ = drloc_pairs(grid, self.num_pairs, **sample)
                out = head(pairs)
            loss = head.loss(out, targets)
            total = loss if total is None else total + loss
        return total
