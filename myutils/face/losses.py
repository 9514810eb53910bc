"""Losses of the SENet face-feature mapper: angle-aware triplet, identity preservation, frontal target.

Angle-aware triplet loss (seed 004, after "domain-aware triplet loss")::

    for each anchor a:  p = same identity with the LARGEST pose gap ‖θ_a − θ_p‖       (cross-pose positive)
                        n = other identity with pose gap < angle_threshold, most similar feature
                            (none that close: the other identity closest in pose)   (same-pose negative)
    w = (alpha if gap(a, p) > 45° else 1) · (beta if gap(a, n) < 15° else 1)
    L_triplet = mean_a  w · relu(‖f_a − f_p‖ − ‖f_a − f_n‖ + margin)

Identity preservation: ``L_id = mean((front[:, D] − src[:, D])²)`` over the identity dimensions D.
Frontal target (absent from the seed, after DREAM's mapping loss): ``L_tgt = 1 − cos(front, tgt)`` or
``mean_batch ‖front − tgt‖²``.  Objective: ``w_tri · L_triplet + w_id · L_id + w_tgt · L_tgt``; the seed's is
``w_tri = 1, w_tgt = 0``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from myutils.cli import InputError

LARGE_POSE_GAP = 45.0  # degrees: a positive this far away in pose gets weight alpha
SMALL_POSE_GAP = 15.0  # degrees: a negative this close in pose gets weight beta
TARGET_LOSSES = ("cosine", "mse")


@dataclass(frozen=True)
class Triplets:
    """Indices into the batch and the pose gaps (degrees) of each mined triplet."""

    anchor: torch.Tensor
    positive: torch.Tensor
    negative: torch.Tensor
    positive_gap: torch.Tensor
    negative_gap: torch.Tensor


def mine_angle_aware_triplets(
    features: torch.Tensor, labels: torch.Tensor, angles: torch.Tensor, angle_threshold: float
) -> Triplets:
    """One triplet per anchor that has both a positive and a negative in the batch (see module docstring)."""
    features = F.normalize(features.detach().float(), dim=1)
    pose_gap = torch.cdist(angles.float(), angles.float())
    same = labels[:, None] == labels[None, :]
    others = ~same
    same.fill_diagonal_(False)

    positive = pose_gap.masked_fill(~same, -1.0).argmax(dim=1)
    near = others & (pose_gap < angle_threshold)
    most_similar_near = (features @ features.T).masked_fill(~near, -torch.inf).argmax(dim=1)
    closest_in_pose = pose_gap.masked_fill(~others, torch.inf).argmin(dim=1)
    negative = torch.where(near.any(dim=1), most_similar_near, closest_in_pose)

    anchor = torch.nonzero(same.any(dim=1) & others.any(dim=1)).flatten()
    positive, negative = positive[anchor], negative[anchor]
    return Triplets(anchor, positive, negative, pose_gap[anchor, positive], pose_gap[anchor, negative])


def angle_weights(triplets: Triplets, alpha: float, beta: float) -> torch.Tensor:
    ones = torch.ones_like(triplets.positive_gap)
    weight = torch.where(triplets.positive_gap > LARGE_POSE_GAP, ones * alpha, ones)
    return torch.where(triplets.negative_gap < SMALL_POSE_GAP, weight * beta, weight)


class AngleAwareTripletLoss(nn.Module):
    """Weighted triplet loss on L2-normalised identity features with angle-aware mining."""

    def __init__(self, margin: float = 0.3, alpha: float = 2.0, beta: float = 1.0, angle_threshold: float = 30.0):
        super().__init__()
        self.margin, self.alpha, self.beta, self.angle_threshold = margin, alpha, beta, angle_threshold

    def forward(self, features: torch.Tensor, labels: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
        triplets = mine_angle_aware_triplets(features, labels, angles, self.angle_threshold)
        if triplets.anchor.numel() == 0:  # no identity with two samples, or a single identity
            return features.sum() * 0.0
        features = features.float()
        anchors = features[triplets.anchor]
        positive_distance = F.pairwise_distance(anchors, features[triplets.positive])
        negative_distance = F.pairwise_distance(anchors, features[triplets.negative])
        hinge = F.relu(positive_distance - negative_distance + self.margin)
        return (angle_weights(triplets, self.alpha, self.beta) * hinge).mean()


def identity_preserve_loss(
    front_features: torch.Tensor, src: torch.Tensor, identity_dims: Sequence[int] | torch.Tensor
) -> torch.Tensor:
    """MSE between the mapped and the input feature on the identity dimensions only."""
    dims = torch.as_tensor(identity_dims, dtype=torch.long, device=src.device)
    if dims.numel() == 0:
        return front_features.sum() * 0.0
    return F.mse_loss(front_features.float()[:, dims], src.float()[:, dims])


def target_alignment_loss(front_features: torch.Tensor, target: torch.Tensor, kind: str = "cosine") -> torch.Tensor:
    """How far the mapped feature is from the person's frontal feature."""
    if kind == "cosine":
        return 1.0 - F.cosine_similarity(front_features.float(), target.float(), dim=1).mean()
    if kind == "mse":  # summed over dimensions: a per-element mean would shrink the gradient by 1/dim
        return (front_features.float() - target.float()).pow(2).sum(dim=1).mean()
    raise InputError(f"unknown target loss {kind!r}; choose one of {TARGET_LOSSES}")


class SENetObjective(nn.Module):
    """``triplet_weight · triplet + identity_preserve_weight · identity + target_weight · target``, each term returned too."""

    def __init__(
        self,
        identity_dims: Sequence[int],
        identity_preserve_weight: float = 0.3,
        target_weight: float = 1.0,
        target_loss: str = "cosine",
        margin: float = 0.3,
        alpha: float = 2.0,
        beta: float = 1.0,
        angle_threshold: float = 30.0,
        triplet_weight: float = 1.0,
    ):
        super().__init__()
        if target_loss not in TARGET_LOSSES:
            raise InputError(f"unknown target loss {target_loss!r}; choose one of {TARGET_LOSSES}")
        self.triplet = AngleAwareTripletLoss(margin, alpha, beta, angle_threshold)
        self.register_buffer("identity_dims", torch.as_tensor(list(identity_dims), dtype=torch.long))
        self.identity_preserve_weight = identity_preserve_weight
        self.target_weight = target_weight
        self.target_loss = target_loss
        self.triplet_weight = triplet_weight

    def forward(
        self,
        front_features: torch.Tensor,
        identity_features: torch.Tensor,
        src: torch.Tensor,
        pose: torch.Tensor,
        target: torch.Tensor,
        labels: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        terms = {
            "triplet": self.triplet(identity_features, labels, pose),
            "identity": identity_preserve_loss(front_features, src, self.identity_dims),
            "target": target_alignment_loss(front_features, target, self.target_loss),
        }
        terms["total"] = (
            self.triplet_weight * terms["triplet"]
            + self.identity_preserve_weight * terms["identity"]
            + self.target_weight * terms["target"]
        )
        return terms
