"""SS-Net's segmentation networks: a 2-D UNet and a 3-D VNet, each with the projection and prediction heads
that feed the class-wise memory.

``forward(x)`` returns ``(logits, projection, prediction)``: the class logits at the input resolution and,
per pixel of the last decoder features, ``projection = projection_head(features)`` (what the memory stores,
computed under ``no_grad`` by an eval-mode network) and ``prediction = prediction_head(projection)`` (what
the contrastive loss pulls toward the memory). Without heads (``embedding_dim=0``) both are None. The heads
are SS-Net's per-pixel ``Linear, BatchNorm1d, ReLU, Linear``, written as 1x1 convolutions (the same maps;
BatchNorm over all pixels of the batch).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

NETWORKS = ("unet", "vnet")


def _conv(dims: int):
    return nn.Conv2d if dims == 2 else nn.Conv3d


def _norm(dims: int):
    return nn.BatchNorm2d if dims == 2 else nn.BatchNorm3d


def make_head(dims: int, in_channels: int, embedding_dim: int) -> nn.Sequential:
    conv, norm = _conv(dims), _norm(dims)
    return nn.Sequential(conv(in_channels, embedding_dim, 1), norm(embedding_dim), nn.ReLU(inplace=True),
                         conv(embedding_dim, embedding_dim, 1))


class HeadsMixin(nn.Module):
    """The projection/prediction heads over the last decoder features."""

    def _build_heads(self, dims: int, feature_channels: int, embedding_dim: int) -> None:
        self.embedding_dim = embedding_dim
        if embedding_dim > 0:
            self.projection_head = make_head(dims, feature_channels, embedding_dim)
            self.prediction_head = make_head(dims, embedding_dim, embedding_dim)
        else:
            self.projection_head = self.prediction_head = None

    def _with_heads(self, logits: Tensor, features: Tensor) -> tuple[Tensor, Tensor | None, Tensor | None]:
        if self.projection_head is None:
            return logits, None, None
        projection = self.projection_head(features)
        return logits, projection, self.prediction_head(projection)


class ConvBlock2d(nn.Sequential):
    """SS-Net/PyMIC UNet block: (conv 3x3, BN, LeakyReLU) twice with dropout between."""

    def __init__(self, in_channels: int, out_channels: int, dropout: float):
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 3, padding=1), nn.BatchNorm2d(out_channels), nn.LeakyReLU(),
            nn.Dropout(dropout),
            nn.Conv2d(out_channels, out_channels, 3, padding=1), nn.BatchNorm2d(out_channels), nn.LeakyReLU(),
        )


class UpBlock2d(nn.Module):
    def __init__(self, in_channels: int, skip_channels: int, out_channels: int):
        super().__init__()
        self.reduce = nn.Conv2d(in_channels, skip_channels, 1)
        self.up = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True)
        self.conv = ConvBlock2d(2 * skip_channels, out_channels, 0.0)

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        return self.conv(torch.cat([skip, self.up(self.reduce(x))], dim=1))


class UNet2D(HeadsMixin):
    """SS-Net's UNet (PyMIC): channels base·(1, 2, 4, 8, 16), dropout (0.05, 0.1, 0.2, 0.3, 0.5); H and W
    must be multiples of 16."""

    def __init__(self, in_channels: int = 1, num_classes: int = 4, base_channels: int = 16, embedding_dim: int = 32):
        super().__init__()
        channels = [base_channels * 2**i for i in range(5)]
        dropouts = (0.05, 0.1, 0.2, 0.3, 0.5)
        self.encoder = nn.ModuleList([ConvBlock2d(in_channels, channels[0], dropouts[0])])
        for i in range(1, 5):
            self.encoder.append(nn.Sequential(nn.MaxPool2d(2), ConvBlock2d(channels[i - 1], channels[i], dropouts[i])))
        self.decoder = nn.ModuleList(UpBlock2d(channels[i], channels[i - 1], channels[i - 1]) for i in range(4, 0, -1))
        self.out_conv = nn.Conv2d(channels[0], num_classes, 3, padding=1)
        self._build_heads(2, channels[0], embedding_dim)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor | None, Tensor | None]:
        skips = []
        for block in self.encoder:
            x = block(x)
            skips.append(x)
        x = skips.pop()
        for block in self.decoder:
            x = block(x, skips.pop())
        return self._with_heads(self.out_conv(x), x)


def _vnet_stage(stages: int, in_channels: int, out_channels: int) -> nn.Sequential:
    layers = []
    for i in range(stages):
        layers += [nn.Conv3d(in_channels if i == 0 else out_channels, out_channels, 3, padding=1),
                   nn.BatchNorm3d(out_channels), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


def _resample3d(in_channels: int, out_channels: int, up: bool) -> nn.Sequential:
    conv = nn.ConvTranspose3d if up else nn.Conv3d
    return nn.Sequential(conv(in_channels, out_channels, 2, stride=2), nn.BatchNorm3d(out_channels), nn.ReLU(inplace=True))


class VNet3D(HeadsMixin):
    """SS-Net's VNet (batch norm, no residual): stages of 1, 2, 3, 3, 3 convolutions at n·(1, 2, 4, 8, 16)
    channels, strided-conv down and transposed-conv up with additive skips, dropout on the deepest and last
    features; each spatial size must be a multiple of 16."""

    def __init__(self, in_channels: int = 1, num_classes: int = 2, base_channels: int = 16, embedding_dim: int = 32,
                 dropout: bool = True):
        super().__init__()
        n = [base_channels * 2**i for i in range(5)]
        stages = (1, 2, 3, 3, 3)
        self.encoder = nn.ModuleList(_vnet_stage(stages[i], in_channels if i == 0 else n[i], n[i]) for i in range(5))
        self.down = nn.ModuleList(_resample3d(n[i], n[i + 1], up=False) for i in range(4))
        self.up = nn.ModuleList(_resample3d(n[i], n[i - 1], up=True) for i in range(4, 0, -1))
        self.decoder = nn.ModuleList(_vnet_stage(stages[i], n[i], n[i]) for i in range(3, -1, -1))
        self.dropout = nn.Dropout3d(0.5) if dropout else nn.Identity()
        self.out_conv = nn.Conv3d(n[0], num_classes, 1)
        self._build_heads(3, n[0], embedding_dim)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor | None, Tensor | None]:
        skips = []
        for i, stage in enumerate(self.encoder):
            x = stage(x)
            skips.append(x)
            if i < 4:
                x = self.down[i](x)
        x = self.dropout(skips.pop())
        for up, stage in zip(self.up, self.decoder, strict=True):
            x = stage(up(x) + skips.pop())
        x = self.dropout(x)
        return self._with_heads(self.out_conv(x), x)


def build_network(name: str, in_channels: int, num_classes: int, base_channels: int, embedding_dim: int) -> nn.Module:
    if name == "unet":
        return UNet2D(in_channels, num_classes, base_channels, embedding_dim)
    if name == "vnet":
        return VNet3D(in_channels, num_classes, base_channels, embedding_dim)
    raise ValueError(f"unknown network {name!r}; expected one of {NETWORKS}")
