"""Model zoo: `create(name, img_size=..., num_classes=...)`, `names()`, `default_img_size`, `grid_shape`.

Every model is a `backbone.Backbone`, so it has
- `forward(x) -> logits` (pooled features when built with num_classes=0),
- `forward_features(x) -> (pooled (B, num_features), grid (B, Hg, Wg, C))`: the grid L_drloc samples,
- `forward_head(pooled) -> logits`, `reset_classifier(num_classes)`,
- `no_weight_decay() -> set[str]` (parameter names without weight decay),
- attributes `num_features`, `grid_dims` (per-stage channel dims; last = grid C), `grid_shape`
  ((Hg, Wg, C) at the construction size).
ViT, CaiT and Swin add `last_attention(x)` (ViT: (B, H, 1+N, 1+N); CaiT: the CLS row (B, H, 1, 1+N);
Swin: last block's windows (B*nW, H, N, N)); Swin adds `forward_stages(x)`.

The grid: ViT / CaiT: final-normed patch tokens; Swin: last-stage tokens before the final norm;
CvT / T2T: last-stage grid (T2T: final-normed) average-pooled 3x3/2/1 (14x14 -> 7x7 at 224 px);
ResNet: layer4. Variants named `*_tiny` are small test/demo configs (see their docstrings).
"""

from fastvit.models import cait, cvt, resnet, swin, t2t, vit  # noqa: F401  (registers their variants)
from fastvit.models.registry import create, default_img_size, grid_shape, names

__all__ = ["create", "default_img_size", "grid_shape", "names"]
