"""Model zoo: `create(name, img_size=..., num_classes=...)`, `names()`, `default_img_size`, `grid_shape`.

Every model has
- `forward(x) -> logits` (pooled features when built with num_classes=0),
- `forward_features(x) -> (pooled (B, num_features), grid (B, Hg, Wg, C))`: the grid L_drloc samples,
- `forward_head(pooled) -> logits`, `reset_classifier(num_classes)`,
- `no_weight_decay() -> set[str]` (parameter names without weight decay),
- attributes `num_features`, `grid_dims` (per-stage channel dims; last = grid C), `grid_shape`
  ((Hg, Wg, C) at the construction size).
ViT and CaiT add `last_attention(x)`; Swin adds `forward_stages(x)`.
"""

from fastvit.models import cait, cvt, resnet, swin, t2t, vit  # noqa: F401  (registers their variants)
from fastvit.models.registry import create, default_img_size, grid_shape, names

__all__ = ["create", "default_img_size", "grid_shape", "names"]
