"""The lightweight ROI appearance encoder: ``[B, 512, H, W]`` ROI features -> 128-d unit embeddings.

Blocks (about 2.06 M parameters with the defaults):

- ``DSC``: two parallel bias-free branches (1x1 512->256, depthwise 5x5, 1x1 256->512), summed,
  BatchNorm, then SiLU ("reinforce" path) or Hardswish ("normal" path);
- ``SqueezeExcite``: global average pool, 512->128, ReLU, 128->512, Hardsigmoid, channel scaling;
- ``ResidualMixBlock`` (RMB): ``x_f = SE(DSC_reinforce(x))``, ``x_n = DSC_normal(x)``,
  ``x_cat = SiLU(Conv1x1(cat[x_f, x_n]))``, ``fuse = a x_f + (1-a) x_n`` (a = 0.5 in warm-up and
  at inference, a ~ U(0, 1) per sample afterwards), output = shake-shake mix of ``x_cat`` and
  ``fuse`` (random per-sample forward and backward coefficients in training, 0.5/0.5 at inference);
- head: spatial mean -> Linear 512->512 (no bias) -> LayerNorm -> SiLU -> Dropout -> Linear 512->128
  -> L2 normalisation.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from myutils.cli import InputError
from myutils.training.checkpoint import load_checkpoint


@dataclass(frozen=True)
class ROIEncoderConfig:
    in_channels: int = 512
    branch_channels: int = 256
    kernel_size: int = 5
    se_channels: int = 128
    hidden_dim: int = 512
    embedding_dim: int = 128
    dropout: float = 0.2


class DSC(nn.Module):
    """Two summed depthwise-separable branches, BatchNorm and an activation."""

    def __init__(self, channels: int, branch_channels: int, kernel_size: int, activation: nn.Module):
        super().__init__()

        def branch() -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(channels, branch_channels, 1, bias=False),
                nn.Conv2d(branch_channels, branch_channels, kernel_size, padding=kernel_size // 2,
                          groups=branch_channels, bias=False),
                nn.Conv2d(branch_channels, channels, 1, bias=False),
            )

        self.branch_a, self.branch_b = branch(), branch()
        self.bn = nn.BatchNorm2d(channels)
        self.act = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.branch_a(x) + self.branch_b(x)))


class SqueezeExcite(nn.Module):
    def __init__(self, channels: int, hidden: int):
        super().__init__()
        self.fc = nn.Sequential(nn.Linear(channels, hidden), nn.ReLU(), nn.Linear(hidden, channels), nn.Hardsigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.fc(x.mean(dim=(2, 3)))[:, :, None, None]


def shake_shake(x1: torch.Tensor, x2: torch.Tensor, training: bool) -> torch.Tensor:
    """``alpha x1 + (1 - alpha) x2`` forward, gradients weighted by an independent ``beta`` (per sample)."""
    if not training:
        return 0.5 * (x1 + x2)
    shape = (x1.shape[0],) + (1,) * (x1.ndim - 1)
    alpha = torch.rand(shape, device=x1.device, dtype=x1.dtype)
    beta = torch.rand(shape, device=x1.device, dtype=x1.dtype)
    # value: alpha-mix; gradient: beta-mix (the detached term carries the difference)
    return beta * x1 + (1 - beta) * x2 + ((alpha - beta) * (x1 - x2)).detach()


class ResidualMixBlock(nn.Module):
    def __init__(self, config: ROIEncoderConfig):
        super().__init__()
        c = config.in_channels
        self.reinforce = DSC(c, config.branch_channels, config.kernel_size, nn.SiLU())
        self.se = SqueezeExcite(c, config.se_channels)
        self.normal = DSC(c, config.branch_channels, config.kernel_size, nn.Hardswish())
        self.mix = nn.Conv2d(2 * c, c, 1, bias=True)
        self.act = nn.SiLU()
        self.warmup = True  # fixed a = 0.5 until the trainer says warm-up is over

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_f = self.se(self.reinforce(x))
        x_n = self.normal(x)
        x_cat = self.act(self.mix(torch.cat([x_f, x_n], dim=1)))
        if self.training and not self.warmup:
            a = torch.rand((x.shape[0], 1, 1, 1), device=x.device, dtype=x_f.dtype)
        else:
            a = 0.5
        fuse = a * x_f + (1 - a) * x_n
        return shake_shake(x_cat, fuse, self.training)


class ROIEncoder(nn.Module):
    """ROI feature maps ``[B, C, H, W]`` (any H, W) -> unit embeddings ``[B, embedding_dim]``."""

    def __init__(self, config: ROIEncoderConfig | None = None):
        super().__init__()
        self.config = config or ROIEncoderConfig()
        c = self.config
        self.rmb = ResidualMixBlock(c)
        self.head = nn.Sequential(
            nn.Linear(c.in_channels, c.hidden_dim, bias=False),
            nn.LayerNorm(c.hidden_dim),
            nn.SiLU(),
            nn.Dropout(c.dropout),
            nn.Linear(c.hidden_dim, c.embedding_dim),
        )

    def set_warmup(self, warmup: bool) -> None:
        """During warm-up the RMB fuses its paths 50/50; afterwards with a random weight."""
        self.rmb.warmup = warmup

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != self.config.in_channels:
            raise InputError(f"expected ROI features [B, {self.config.in_channels}, H, W], got {tuple(x.shape)}")
        pooled = self.rmb(x).mean(dim=(2, 3))
        return F.normalize(self.head(pooled).float(), dim=1)


def encoder_checkpoint_state(encoder: ROIEncoder) -> dict:
    """What ``load_roi_encoder`` needs: plain config data and the state dict."""
    return {"encoder_config": asdict(encoder.config), "encoder": encoder.state_dict()}


def load_roi_encoder(checkpoint_path: str | os.PathLike, device: str | torch.device = "cpu") -> ROIEncoder:
    """An :class:`ROIEncoder` in eval mode from a checkpoint written by ``main_train.py``."""
    checkpoint = load_checkpoint(checkpoint_path, map_location="cpu")
    if "encoder" not in checkpoint or "encoder_config" not in checkpoint:
        raise InputError(f"{checkpoint_path} is not an ROI encoder checkpoint (needs 'encoder' and 'encoder_config')")
    encoder = ROIEncoder(ROIEncoderConfig(**checkpoint["encoder_config"]))
    encoder.load_state_dict(checkpoint["encoder"], strict=True)
    return encoder.to(device).eval()
