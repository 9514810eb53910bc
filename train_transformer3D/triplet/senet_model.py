"""Dual-branch SENet that maps a pose-varied face feature toward the person's frontal feature.

Layout (seed 004, with the original's ``num_layers`` crash and fusion-weight offset fixed)::

    cat(src, pose · pose_scale)
      → num_layers × [Linear → BatchNorm1d → ReLU → Dropout]   widths hidden_dim, …, hidden_dim, image_dim
      → dual-branch SE:  identity = x + MLP_id(SE_id(x))      (residual keeps the input)
                         pose     = MLP_pose(SE_pose(x))
                         fused    = α · identity + (1 − α) · pose,  α = sigmoid(learnable logit)
      → front_features    = src + γ · fused,  γ = learnable gain starting at 0
      → identity_features = L2norm(Linear → BN → ReLU → Dropout → Linear → BN (front_features))

SE on a vector x: ``w = sigmoid(W2 · ReLU(W1 · s))`` with ``s = x`` (per sample) or the batch mean
(``use_batch_stat``), output ``x ⊙ w``.

The gain γ is our addition (ReZero, Bachlechner et al. 2020; DREAM's residual ``f + Υ·R(f)`` is the same
idea): the fused branch outputs are BatchNorm-scaled, about ten times the norm of an L2-normalised
input, so without it an untrained mapper buries ``src``; with it training starts from the identity map.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from myutils.cli import InputError

# Euler angles arrive in degrees (up to ±90); scaling them to about ±1 keeps them from
# swamping the ~0.04-per-dimension values of an L2-normalised 512-d feature in the first layer.
DEFAULT_POSE_SCALE = 1.0 / 90.0


def fc_block(in_dim: int, out_dim: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(nn.Linear(in_dim, out_dim), nn.BatchNorm1d(out_dim), nn.ReLU(inplace=True), nn.Dropout(dropout))


class SEBlock(nn.Module):
    """Squeeze-and-excitation on feature vectors: rescale each channel by a learned gate in (0, 1)."""

    def __init__(self, channels: int, reduction: int = 16, use_batch_stat: bool = False):
        super().__init__()
        squeezed = max(1, channels // reduction)
        self.use_batch_stat = use_batch_stat
        self.excite = nn.Sequential(
            nn.Linear(channels, squeezed, bias=False),
            nn.ReLU(inplace=True),
            nn.Linear(squeezed, channels, bias=False),
            nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        squeeze = x.mean(dim=0, keepdim=True) if self.use_batch_stat else x
        return x * self.excite(squeeze)


class DualBranchSE(nn.Module):
    """Identity branch (residual, preserves the input) and pose branch (learns the change), fused by α."""

    def __init__(
        self, dim: int, reduction: int, fusion_alpha: float, use_batch_stat: bool = False, dropout: float = 0.1
    ):
        super().__init__()
        if not 0.0 < fusion_alpha < 1.0:
            raise InputError(
                f"fusion_alpha must be strictly between 0 and 1 (got {fusion_alpha}): "
                "it is sigmoid(logit), which never reaches 0 or 1"
            )
        self.identity_se = SEBlock(dim, reduction, use_batch_stat)
        self.identity_mlp = nn.Sequential(fc_block(dim, dim, dropout), nn.Linear(dim, dim))
        self.pose_se = SEBlock(dim, reduction, use_batch_stat)
        self.pose_mlp = nn.Sequential(fc_block(dim, dim, dropout), nn.Linear(dim, dim), nn.BatchNorm1d(dim))
        # The logit of α, so that sigmoid(logit) is exactly the requested starting weight
        # (the original stored α itself as the logit and started at sigmoid(0.7) = 0.668).
        self.fusion_logit = nn.Parameter(torch.tensor(math.log(fusion_alpha / (1.0 - fusion_alpha))))

    @property
    def fusion_alpha(self) -> torch.Tensor:
        return torch.sigmoid(self.fusion_logit)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x + self.identity_mlp(self.identity_se(x))
        pose = self.pose_mlp(self.pose_se(x))
        alpha = self.fusion_alpha.to(x.dtype)
        return alpha * identity + (1.0 - alpha) * pose


class SENetTripletNetwork(nn.Module):
    """Maps ``(src [B, image_dim], pose [B, pose_dim] in degrees)`` to ``(front_features, identity_features)``."""

    def __init__(
        self,
        image_dim: int = 512,
        pose_dim: int = 3,
        hidden_dim: int = 1024,
        num_layers: int = 3,
        se_reduction: int = 16,
        fusion_alpha: float = 0.7,
        use_batch_stat: bool = False,
        dropout: float = 0.1,
        pose_scale: float = DEFAULT_POSE_SCALE,
    ):
        super().__init__()
        for name, value in [("image_dim", image_dim), ("pose_dim", pose_dim), ("hidden_dim", hidden_dim),
                            ("num_layers", num_layers), ("se_reduction", se_reduction)]:
            if value < 1:
                raise InputError(f"{name} must be >= 1 (got {value})")
        self.config = {
            "image_dim": image_dim, "pose_dim": pose_dim, "hidden_dim": hidden_dim, "num_layers": num_layers,
            "se_reduction": se_reduction, "fusion_alpha": fusion_alpha, "use_batch_stat": use_batch_stat,
            "dropout": dropout, "pose_scale": pose_scale,
        }
        self.pose_scale = pose_scale
        # num_layers blocks in all: the first takes the input, the last projects to image_dim.
        widths = [image_dim + pose_dim] + [hidden_dim] * (num_layers - 1) + [image_dim]
        self.encoder = nn.Sequential(*[fc_block(a, b, dropout) for a, b in zip(widths[:-1], widths[1:], strict=True)])
        self.dual_branch = DualBranchSE(image_dim, se_reduction, fusion_alpha, use_batch_stat, dropout)
        self.residual_gain = nn.Parameter(torch.zeros(()))
        self.identity_head = nn.Sequential(
            fc_block(image_dim, image_dim, dropout), nn.Linear(image_dim, image_dim), nn.BatchNorm1d(image_dim)
        )
        self.apply(_init_weights)

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> SENetTripletNetwork:
        return cls(**config)

    def forward(self, src: torch.Tensor, pose: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if src.shape[-1] != self.config["image_dim"] or pose.shape[-1] != self.config["pose_dim"]:
            raise InputError(
                f"expected src [B, {self.config['image_dim']}] and pose [B, {self.config['pose_dim']}], "
                f"got {tuple(src.shape)} and {tuple(pose.shape)}"
            )
        hidden = self.encoder(torch.cat([src, pose * self.pose_scale], dim=1))
        front_features = src + self.residual_gain * self.dual_branch(hidden)
        identity_features = F.normalize(self.identity_head(front_features), dim=1)
        return front_features, identity_features

    def get_fusion_alpha(self) -> float:
        """The identity-branch weight α exactly as the forward pass uses it."""
        return float(self.dual_branch.fusion_alpha.detach())


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.BatchNorm1d):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
