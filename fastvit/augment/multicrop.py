"""DINO multi-crop views for paper A's pretraining (SPEC section 3), batched per view size."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import torch

from fastvit.errors import UserError

from . import ops as O
from .crops import resample_boxes, resized_crop_boxes
from .draws import per_sample, rand, uniform
from .photometric import jitter_apply_, jitter_draws
from .transforms import Normalize


@dataclasses.dataclass
class ViewDraws:
    """Every random draw of one view size, per (view, sample) in view-major order: entry v*B + i is
    view v of image i. Drawn by `MultiCrop.draw`, applied by `MultiCrop.apply`."""

    top: torch.Tensor  # int64 [n]: RandomResizedCrop box
    left: torch.Tensor  # int64 [n]
    height: torch.Tensor  # int64 [n]
    width: torch.Tensor  # int64 [n]
    flip: torch.Tensor  # bool [n]
    jitter: torch.Tensor  # float32 [4, n]: brightness, contrast, saturation factors, hue shift (turns)
    jitter_on: torch.Tensor  # bool [n]: ColorJitter applied
    jitter_order: torch.Tensor  # int64 [n, 4]: op k of slot s is jitter_order[:, s] (0..3 as in `jitter`)
    jitter_enabled: tuple[bool, bool, bool, bool]  # op strength > 0 (saturation and hue off on 1 channel)
    gray: torch.Tensor | None  # bool [n]; None for 1-channel images (no draw)
    sigma: torch.Tensor  # float32 [n]: blur sigma
    blur: torch.Tensor  # bool [n]
    solarize: torch.Tensor | None  # bool [n]; None: no solarize draw for this view size


class MultiCrop:
    """2 global + n_local local views per image, batched per view size.

    All views: RandomResizedCrop (bicubic) + flip 0.5, ColorJitter(0.4, 0.4, 0.2, 0.1) with p 0.8,
    grayscale p 0.2; Gaussian blur sigma ~ U(0.1, 2) with p 1.0 (global 1), 0.1 (global 2), 0.5
    (locals); solarize p 0.2 on global 2 only; then normalization.

    Every random parameter is drawn first (`draw`, from the caller's generator), then applied with
    fixed-shape batched ops (`apply`): a probability-p op runs on every view and each view keeps its
    result or its input, so nothing is read back to the host.
    """

    def __init__(self, global_size: int, local_size: int, n_local: int = 8,
                 global_scale: tuple[float, float] = (0.7, 1.0),
                 local_scale: tuple[float, float] = (0.2, 0.5),
                 *, mean: Sequence[float], std: Sequence[float], interpolation: str = "bicubic",
                 jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.2, 0.1), jitter_p: float = 0.8,
                 gray_p: float = 0.2, blur_p: tuple[float, float, float] = (1.0, 0.1, 0.5),
                 sigma: tuple[float, float] = (0.1, 2.0), solarize_p: float = 0.2):
        if n_local < 0:
            raise UserError(f"n_local must be >= 0, got {n_local}")
        if interpolation not in ("bilinear", "bicubic"):
            raise UserError(f"unknown interpolation {interpolation!r}; choose one of: bilinear, bicubic")
        self.global_size, self.local_size, self.n_local = global_size, local_size, n_local
        self.global_scale, self.local_scale = global_scale, local_scale
        self.interpolation, self.jitter, self.jitter_p, self.gray_p = interpolation, jitter, jitter_p, gray_p
        self.blur_p, self.sigma, self.solarize_p = blur_p, sigma, solarize_p
        self.normalize = Normalize(mean, std)

    def draw(self, shape: torch.Size, copies: int, scale, blur_p: torch.Tensor,
             solarize_p: torch.Tensor | None, generator, device) -> ViewDraws:
        """The draws of `copies` views of each image of a batch of `shape`, in the generator order the
        ops consume them: boxes, flip, jitter, grayscale, sigma, blur, solarize."""
        b, c, height, width = shape
        n = copies * b
        top, left, h, w = resized_crop_boxes(n, height, width, scale=scale, ratio=(3 / 4, 4 / 3),
                                             generator=generator, device=device)
        flip = rand(n, generator, device) < 0.5
        factors, shift, jitter_on, order, enabled = jitter_draws(n, c, self.jitter, self.jitter_p, generator, device)
        gray = rand(n, generator, device) < per_sample(self.gray_p, n, device) if c == 3 else None
        sigma = uniform(n, self.sigma[0], self.sigma[1], generator, device)
        blur = rand(n, generator, device) < blur_p
        solarize = None if solarize_p is None else rand(n, generator, device) < solarize_p
        return ViewDraws(top, left, h, w, flip, torch.stack([*factors, shift]), jitter_on, order,
                         enabled, gray, sigma, blur, solarize)

    def apply(self, x: torch.Tensor, d: ViewDraws, size: int) -> torch.Tensor:
        """The views of `d` from the uint8 batch x: [copies*B, C, size, size], normalized."""
        copies = d.top.shape[0] // x.shape[0]
        src = x.float().repeat(copies, 1, 1, 1)  # (copies*B, C, H, W), view-major
        v = resample_boxes(src, d.top, d.left, d.height, d.width, size, interpolation=self.interpolation,
                           flip=d.flip)
        jitter_apply_(v, d.jitter[:3], d.jitter[3], d.jitter_on, d.jitter_order, d.jitter_enabled)
        rows = lambda mask: mask.view(-1, 1, 1, 1)
        if d.gray is not None:
            v = torch.where(rows(d.gray), O.grayscale(v), v)
        v = torch.where(rows(d.blur), O.gaussian_blur(v, d.sigma, radius=math.ceil(3.0 * self.sigma[1])), v)
        if d.solarize is not None:
            v = torch.where(rows(d.solarize), O.solarize(v, 128.0), v)
        return self.normalize(v)

    def __call__(self, images: torch.Tensor, generator: torch.Generator | None) -> list[torch.Tensor]:
        """images uint8 [B,C,H,W] -> [global 1, global 2, local 1..n]: float32 normalized views."""
        O.check_images(images)
        b, dev = images.shape[0], images.device
        per_view = lambda values: torch.tensor(values, device=dev).repeat_interleave(b)  # (views*B,)
        d = self.draw(images.shape, 2, self.global_scale, per_view(self.blur_p[:2]),
                      per_view([0.0, self.solarize_p]), generator, dev)
        views = list(self.apply(images, d, self.global_size).split(b))
        if self.n_local:
            d = self.draw(images.shape, self.n_local, self.local_scale,
                          per_view([self.blur_p[2]] * self.n_local), None, generator, dev)
            views += list(self.apply(images, d, self.local_size).split(b))
        return views
