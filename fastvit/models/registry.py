"""Model registry: one tiny registered function per variant (timm style), looked up by name.

A variant function takes `img_size, num_classes, in_chans, drop_path` and keyword overrides of its
config, and returns an `nn.Module` with the interface documented in `fastvit.models`.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn as nn

from fastvit.errors import UserError


@dataclass(frozen=True)
class _Entry:
    build: Callable[..., nn.Module]
    default_img_size: int  # 32 for paper A small-image archs, 224 for paper B archs


_REGISTRY: dict[str, _Entry] = {}


def register(default_img_size: int) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Register a variant function under its own name."""

    def deco(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if fn.__name__ in _REGISTRY:
            raise RuntimeError(f"model {fn.__name__!r} registered twice")
        _REGISTRY[fn.__name__] = _Entry(fn, default_img_size)
        return fn

    return deco


def names() -> list[str]:
    """Every registered model name, sorted."""
    return sorted(_REGISTRY)


def family(name: str) -> str | None:
    """The arch family of a variant: the name of the module defining it (swin, vit, cait, cvt, t2t, resnet);
    None for an unknown name."""
    entry = _REGISTRY.get(name)
    return entry.build.__module__.rsplit(".", 1)[-1] if entry else None


def _entry(name: str) -> _Entry:
    if name not in _REGISTRY:
        raise UserError(f"unknown model {name!r}; choose from: {', '.join(names())}")
    return _REGISTRY[name]


def build_with(cls: type[nn.Module], arch: str, config: dict, overrides: dict) -> nn.Module:
    """Construct `cls(**config)` after applying `overrides`; unknown override keys are a UserError."""
    # create() sets these itself; overriding them through **overrides would be ambiguous
    fixed = {"self", "arch", "img_size", "num_classes", "in_chans", "drop_path"}
    accepted = set(inspect.signature(cls.__init__).parameters) - fixed
    unknown = sorted(set(overrides) - accepted)
    if unknown:
        raise UserError(
            f"{arch}: unknown option(s) {', '.join(unknown)}; valid: {', '.join(sorted(accepted))}"
        )
    return cls(**{**config, **overrides})


def create(
    name: str,
    *,
    img_size: int,
    num_classes: int,
    in_chans: int = 3,
    drop_path: float = 0.0,
    **overrides,
) -> nn.Module:
    """Build model `name` for square `img_size` inputs with a `num_classes`-way head (0: no head).

    drop_path is the stochastic-depth rate (of the last block for linearly increasing schedules);
    overrides replace entries of the variant's config (e.g. `depth=4`).
    """
    return _entry(name).build(
        img_size=img_size, num_classes=num_classes, in_chans=in_chans, drop_path=drop_path, **overrides
    )


def default_img_size(name: str) -> int:
    """Input size the variant was designed for: 32 (paper A small-image archs) or 224 (paper B)."""
    return _entry(name).default_img_size


def grid_shape(name: str, img_size: int, **overrides) -> tuple[int, int, int]:
    """(Hg, Wg, C) of the final token grid `forward_features` returns for `img_size` inputs."""
    with torch.device("meta"):  # no memory, no init cost: only the shapes are needed
        model = create(name, img_size=img_size, num_classes=0, **overrides)
    return model.grid_shape
