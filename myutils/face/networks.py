"""Face-feature mappers: the dual-branch SENet of seed 004 and the plain residual-MLP baseline.

SENet layout (seed 004, with the original's ``num_layers`` crash and fusion-weight offset fixed)::

    cat(src, pose · pose_scale)
      → (num_layers − 1) × [Linear → Norm → ReLU → Dropout] to hidden_dim, then Linear to image_dim
      → dual-branch SE:  identity = x + MLP_id(SE_id(x))      (residual keeps the input)
                         pose     = Norm(MLP_pose(SE_pose(x)))
                         fused    = α · identity + (1 − α) · pose,  α = sigmoid(learnable logit)
      → front_features    = src + γ · fused,  γ = learnable gain starting at 0
      → identity_features = L2norm(Linear → Norm → ReLU → Dropout → Linear → Norm (front_features))

SE on a vector x: ``w = sigmoid(W2 · ReLU(W1 · s))`` with ``s = x`` (per sample) or the batch mean
(``use_batch_stat``), output ``x ⊙ w``. Norm is none (default), BatchNorm1d (the seed's) or LayerNorm.

Where the defaults differ from the seed, a measurement in ``bench/senet_bench.py --ablations`` showed
the seed's choice hurting (docs/senet.md has the table); each is an option:

- ``norm`` none (seed BatchNorm1d): BatchNorm makes each sample's output depend on the person groups
  that share its batch and differ between training and eval; it costs rank-1 where rank-1 is not
  saturated and cosine to the target on two of the three families. Without it a one-sample batch is
  harmless too.
- ``dropout`` 0 (seed 0.1): dropout noise on a regression output; slightly lower rank-1 or cosine on
  every family.
- ``relu_projection`` False (seed True): the seed ends the encoder with BN → ReLU → Dropout, so the
  branches only see non-negative features; a plain Linear projection fits better.
- ``detach_identity_head`` True (seed False): the triplet loss trains the identity head on
  ``front_features.detach()``; its gradient through the mapper pulls ``front_features`` toward the
  head's metric and away from the frontal target.
- γ (ours, ReZero, Bachlechner et al. 2020; DREAM's residual ``f + Υ·R(f)`` is the same idea): the fused
  branch is normalisation-scaled, about ten times the norm of an L2-normalised input, so without it an
  untrained mapper buries ``src``; with it training starts from the identity map. The trainer gives γ
  and α's logit their own learning rates: Adam moves a scalar by about ``lr`` per step.

The baseline (:class:`ResidualMLPMapper`) is ``L2norm(x + MLP([x, pose · pose_scale]))``; the published
anchor (:class:`DREAMMapper`, Cao et al., CVPR 2018) is ``L2norm(x + Υ(yaw) · R(x))``.
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
NORMS = ("batch", "layer", "none")
ARCHITECTURES = ("senet", "residual_mlp", "dream")
DREAM_GATE_SHARPNESS, DREAM_GATE_YAW = 10.0, 45.0  # Υ(yaw) = sigmoid(10 · (|yaw| / 45° − 1))
# Options added after the first release and the values that release had (its checkpoints lack them).
FIRST_RELEASE_OPTIONS = {"norm": "batch", "use_se": True, "residual_gain": True, "relu_projection": True,
                         "detach_identity_head": False, "dropout": 0.1}


def norm_layer(kind: str, dim: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm1d(dim)
    if kind == "layer":
        return nn.LayerNorm(dim)
    if kind == "none":
        return nn.Identity()
    raise InputError(f"unknown norm {kind!r}; choose one of {NORMS}")


def fc_block(in_dim: int, out_dim: int, dropout: float, norm: str = "batch") -> nn.Sequential:
    return nn.Sequential(nn.Linear(in_dim, out_dim), norm_layer(norm, out_dim), nn.ReLU(inplace=True), nn.Dropout(dropout))


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
        self, dim: int, reduction: int, fusion_alpha: float, use_batch_stat: bool = False, dropout: float = 0.0,
        norm: str = "batch", use_se: bool = True,
    ):
        super().__init__()
        if not 0.0 < fusion_alpha < 1.0:
            raise InputError(
                f"fusion_alpha must be strictly between 0 and 1 (got {fusion_alpha}): "
                "it is sigmoid(logit), which never reaches 0 or 1"
            )
        self.identity_se = SEBlock(dim, reduction, use_batch_stat) if use_se else nn.Identity()
        self.identity_mlp = nn.Sequential(fc_block(dim, dim, dropout, norm), nn.Linear(dim, dim))
        self.pose_se = SEBlock(dim, reduction, use_batch_stat) if use_se else nn.Identity()
        self.pose_mlp = nn.Sequential(fc_block(dim, dim, dropout, norm), nn.Linear(dim, dim), norm_layer(norm, dim))
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


def _check_dims(model: nn.Module, src: torch.Tensor, pose: torch.Tensor) -> None:
    if src.shape[-1] != model.config["image_dim"] or pose.shape[-1] != model.config["pose_dim"]:
        raise InputError(
            f"expected src [B, {model.config['image_dim']}] and pose [B, {model.config['pose_dim']}], "
            f"got {tuple(src.shape)} and {tuple(pose.shape)}"
        )


def _check_positive(**values: int) -> None:
    for name, value in values.items():
        if value < 1:
            raise InputError(f"{name} must be >= 1 (got {value})")


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
        dropout: float = 0.0,
        pose_scale: float = DEFAULT_POSE_SCALE,
        norm: str = "none",
        use_se: bool = True,
        residual_gain: bool = True,
        relu_projection: bool = False,
        detach_identity_head: bool = True,
    ):
        super().__init__()
        _check_positive(image_dim=image_dim, pose_dim=pose_dim, hidden_dim=hidden_dim, num_layers=num_layers,
                        se_reduction=se_reduction)
        if not 0.0 <= dropout < 1.0:
            raise InputError(f"dropout must be in [0, 1) (got {dropout})")
        self.config = {
            "architecture": "senet", "image_dim": image_dim, "pose_dim": pose_dim, "hidden_dim": hidden_dim,
            "num_layers": num_layers, "se_reduction": se_reduction, "fusion_alpha": fusion_alpha,
            "use_batch_stat": use_batch_stat, "dropout": dropout, "pose_scale": pose_scale, "norm": norm,
            "use_se": use_se, "residual_gain": residual_gain, "relu_projection": relu_projection,
            "detach_identity_head": detach_identity_head,
        }
        self.pose_scale = pose_scale
        self.detach_identity_head = detach_identity_head
        # num_layers layers in all: the first takes the input, the last projects to image_dim.
        widths = [image_dim + pose_dim] + [hidden_dim] * (num_layers - 1) + [image_dim]
        blocks = [fc_block(a, b, dropout, norm) for a, b in zip(widths[:-2], widths[1:-1], strict=True)]
        projection = fc_block(widths[-2], image_dim, dropout, norm) if relu_projection else nn.Linear(widths[-2], image_dim)
        self.encoder = nn.Sequential(*blocks, projection)
        self.dual_branch = DualBranchSE(image_dim, se_reduction, fusion_alpha, use_batch_stat, dropout, norm, use_se)
        self.residual_gain = nn.Parameter(torch.zeros(())) if residual_gain else None
        self.identity_head = nn.Sequential(
            fc_block(image_dim, image_dim, dropout, norm), nn.Linear(image_dim, image_dim), norm_layer(norm, image_dim)
        )
        self.apply(_init_weights)

    def forward(self, src: torch.Tensor, pose: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        _check_dims(self, src, pose)
        hidden = self.encoder(torch.cat([src, pose * self.pose_scale], dim=1))
        fused = self.dual_branch(hidden)
        front_features = src + (fused if self.residual_gain is None else self.residual_gain * fused)
        head_input = front_features.detach() if self.detach_identity_head else front_features
        identity_features = F.normalize(self.identity_head(head_input), dim=1)
        return front_features, identity_features

    def get_fusion_alpha(self) -> float:
        """The identity-branch weight α exactly as the forward pass uses it."""
        return float(self.dual_branch.fusion_alpha.detach())


def _relu_mlp(widths: list[int]) -> nn.Sequential:
    """Linear layers of the given widths with ReLU between them (none after the last)."""
    layers: list[nn.Module] = []
    for a, b in zip(widths[:-1], widths[1:], strict=True):
        layers += [nn.Linear(a, b), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers[:-1])


class ResidualMLPMapper(nn.Module):
    """``L2norm(x + MLP([x, pose · pose_scale]))``: the plain pose-conditioned residual baseline.

    ``num_layers`` Linear layers with ReLU between them; returns the mapped feature twice (it is its
    own identity feature, so the trainer's objective applies unchanged). No fusion weight: α is NaN.
    """

    def __init__(self, image_dim: int = 512, pose_dim: int = 3, hidden_dim: int = 1024, num_layers: int = 3,
                 pose_scale: float = DEFAULT_POSE_SCALE):
        super().__init__()
        _check_positive(image_dim=image_dim, pose_dim=pose_dim, hidden_dim=hidden_dim, num_layers=num_layers)
        self.config = {"architecture": "residual_mlp", "image_dim": image_dim, "pose_dim": pose_dim,
                       "hidden_dim": hidden_dim, "num_layers": num_layers, "pose_scale": pose_scale}
        self.pose_scale = pose_scale
        self.mlp = _relu_mlp([image_dim + pose_dim] + [hidden_dim] * (num_layers - 1) + [image_dim])

    def forward(self, src: torch.Tensor, pose: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        _check_dims(self, src, pose)
        mapped = F.normalize(src + self.mlp(torch.cat([src, pose * self.pose_scale], dim=1)), dim=1)
        return mapped, mapped

    def get_fusion_alpha(self) -> float:
        return float("nan")


class DREAMMapper(nn.Module):
    """DREAM's residual (Cao et al., CVPR 2018): ``L2norm(x + Υ(yaw) · R(x))``, ``Υ = sigmoid(10 · (|yaw|/45° − 1))``.

    ``R`` is ``num_layers`` Linear layers of ``hidden_dim`` with ReLU between them, applied to the feature
    alone; the pose enters only through the fixed soft yaw gate (the first pose angle, in degrees), which
    is 0.5 at 45° and near 0 for frontal faces. Returns the mapped feature twice, like the baseline.
    """

    def __init__(self, image_dim: int = 512, pose_dim: int = 3, hidden_dim: int = 1024, num_layers: int = 3):
        super().__init__()
        _check_positive(image_dim=image_dim, pose_dim=pose_dim, hidden_dim=hidden_dim, num_layers=num_layers)
        self.config = {"architecture": "dream", "image_dim": image_dim, "pose_dim": pose_dim,
                       "hidden_dim": hidden_dim, "num_layers": num_layers}
        self.residual = _relu_mlp([image_dim] + [hidden_dim] * (num_layers - 1) + [image_dim])

    def forward(self, src: torch.Tensor, pose: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        _check_dims(self, src, pose)
        gate = torch.sigmoid(DREAM_GATE_SHARPNESS * (pose[:, :1].abs() / DREAM_GATE_YAW - 1.0))
        mapped = F.normalize(src + gate * self.residual(src), dim=1)
        return mapped, mapped

    def get_fusion_alpha(self) -> float:
        return float("nan")


Mapper = SENetTripletNetwork | ResidualMLPMapper | DREAMMapper


def build_mapper(config: dict[str, Any]) -> Mapper:
    """The network a checkpoint's ``model_config`` describes (older SENet configs: first-release options)."""
    config = dict(config)
    architecture = config.pop("architecture", None)
    if architecture == "residual_mlp":
        return ResidualMLPMapper(**config)
    if architecture == "dream":
        return DREAMMapper(**config)
    if architecture is None:
        config = {**FIRST_RELEASE_OPTIONS, **config}
    elif architecture != "senet":
        raise InputError(f"unknown mapper architecture {architecture!r}; choose one of {ARCHITECTURES}")
    return SENetTripletNetwork(**config)


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, (nn.BatchNorm1d, nn.LayerNorm)):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
