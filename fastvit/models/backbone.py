"""`Backbone`: the interface every model of the zoo shares (see `fastvit.models`), written once.

A subclass sets `grid` ((Hg, Wg) at the construction size), `num_features`, `grid_dims` and `head`
(`make_head`), defines `forward_features(x) -> (pooled, grid)`, and names in `no_decay` the parameters
that skip weight decay beyond the 1-D ones.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from fastvit.errors import UserError
from fastvit.models.layers import trunc_normal_init


def no_decay_names(model: nn.Module, extra: tuple[str, ...] = ()) -> set[str]:
    """Names of parameters without weight decay: every 1-D tensor (norm weights, biases, LayerScale) plus
    those whose last name part is in `extra` (position embeddings, class tokens, rel-pos tables)."""
    return {n for n, p in model.named_parameters() if p.ndim <= 1 or n.split(".")[-1] in extra}


def make_head(dim: int, num_classes: int) -> nn.Module:
    """Linear classifier, or identity when num_classes == 0 (forward then returns pooled features)."""
    if num_classes < 0:
        raise UserError(f"num_classes must be >= 0 (0: no classifier), got {num_classes}")
    if num_classes == 0:
        return nn.Identity()
    head = nn.Linear(dim, num_classes)
    trunc_normal_init(head)
    return head


class Backbone(nn.Module):
    no_decay: tuple[str, ...] = ()  # last name parts of the >1-D parameters that skip weight decay

    @property
    def grid_shape(self) -> tuple[int, int, int]:
        return (*self.grid, self.num_features)

    def no_weight_decay(self) -> set[str]:
        return no_decay_names(self, self.no_decay)

    def reset_classifier(self, num_classes: int) -> None:
        # the new head goes where the model's weights are, in their dtype (the first one is never the head's)
        self.head = make_head(self.num_features, num_classes).to(next(self.parameters()))

    def forward_head(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.head(pooled)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x)[0])
