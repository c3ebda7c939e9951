"""ResNet-50 (He et al. 2016), the CNN baseline of paper B: bottleneck blocks (3, 4, 6, 3), v1.5 layout
(stride on the 3x3 conv), BatchNorm, torchvision's default init. The L_drloc grid is the
layer4 output, (B, 7, 7, 2048) at 224 px. drop_path adds stochastic depth on the residual branches
(0 = the classic network).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from fastvit.models.backbone import Backbone, make_head
from fastvit.models.layers import DropPath, check_image, linear_rates
from fastvit.models.registry import build_with, register
from fastvit.models.vit import check_img_size


class Bottleneck(nn.Module):
    """1x1 reduce -> 3x3 (stride s) -> 1x1 expand (x4), each conv + BN; ReLU after the residual sum."""

    def __init__(self, in_dim: int, width: int, stride: int, drop_path: float):
        super().__init__()
        out_dim = 4 * width
        self.conv1 = nn.Conv2d(in_dim, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out_dim, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_dim)
        self.relu = nn.ReLU(inplace=True)
        self.drop_path = DropPath(drop_path)
        self.downsample = None
        if stride != 1 or in_dim != out_dim:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_dim, out_dim, 1, stride=stride, bias=False), nn.BatchNorm2d(out_dim)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        return self.relu(self.drop_path.residual(shortcut, self.bn3(self.conv3(y))))


class ResNet(Backbone):
    """ResNet; `forward_features` returns (global average pool, layer4 grid (B, H/32, W/32, C))."""

    def __init__(
        self,
        *,
        img_size: int,
        num_classes: int,
        in_chans: int = 3,
        depths: tuple[int, ...] = (3, 4, 6, 3),
        widths: tuple[int, ...] = (64, 128, 256, 512),
        drop_path: float = 0.0,
        arch: str = "resnet50",
    ):
        super().__init__()
        check_img_size(arch, img_size, 32, "multiples of 32")
        self.arch = arch
        self.in_chans = in_chans
        self.stem = nn.Sequential(
            nn.Conv2d(in_chans, 64, 7, stride=2, padding=3, bias=False),
            nn.BatchNorm2d(64),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, stride=2, padding=1),
        )
        rates = linear_rates(drop_path, sum(depths))
        layers, in_dim, i = [], 64, 0
        for stage, (depth, width) in enumerate(zip(depths, widths, strict=True)):
            blocks = []
            for j in range(depth):
                stride = 2 if j == 0 and stage > 0 else 1
                blocks.append(Bottleneck(in_dim, width, stride, rates[i]))
                in_dim, i = 4 * width, i + 1
            layers.append(nn.Sequential(*blocks))
        self.layers = nn.ModuleList(layers)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        self.num_features = in_dim
        self.grid_dims = [4 * w for w in widths]
        self.grid = (img_size // 32, img_size // 32)
        self.head = make_head(in_dim, num_classes)

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        check_image(x, self.in_chans, 32, self.arch)
        x = self.stem(x)
        for layer in self.layers:
            x = layer(x)
        return x.mean(dim=(2, 3)), x.permute(0, 2, 3, 1)  # grid (B, H/32, W/32, C)


@register(default_img_size=224)
def resnet50(*, img_size: int, num_classes: int, in_chans: int = 3, drop_path: float = 0.0, **overrides):
    """ResNet-50 baseline (paper B): bottlenecks (3, 4, 6, 3), widths (64, 128, 256, 512) x4."""
    config = dict(img_size=img_size, num_classes=num_classes, in_chans=in_chans, drop_path=drop_path)
    return build_with(ResNet, "resnet50", {**config, "arch": "resnet50"}, overrides)


@register(default_img_size=32)
def resnet_tiny(*, img_size: int, num_classes: int, in_chans: int = 3, drop_path: float = 0.0, **overrides):
    """Test ResNet: one bottleneck per stage, widths (8, 16, 32, 64), otherwise as `resnet50`."""
    config = dict(
        img_size=img_size, num_classes=num_classes, in_chans=in_chans, drop_path=drop_path,
        depths=(1, 1, 1, 1), widths=(8, 16, 32, 64), arch="resnet_tiny",
    )
    return build_with(ResNet, "resnet_tiny", config, overrides)
