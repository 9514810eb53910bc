"""Segmentation objectives: soft Dice + cross-entropy on labelled pixels, mean-teacher consistency or
confidence-thresholded pseudo-labels on unlabelled ones, the sigmoid ramp-up and the EMA teacher update."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def dice_loss(logits: Tensor, labels: Tensor, ignore_index: int = 255, smooth: float = 1e-5) -> Tensor:
    """SS-Net's multi-class soft Dice: mean over classes of ``1 − (2 Σ p·y + s) / (Σ p² + Σ y² + s)``
    with softmax ``p`` and one-hot ``y`` over the batch; ``ignore_index`` pixels take no part."""
    probabilities = logits.float().softmax(dim=1)
    valid = (labels != ignore_index).unsqueeze(1)
    one_hot = F.one_hot(labels.masked_fill(~valid.squeeze(1), 0), logits.shape[1]).movedim(-1, 1).float()
    probabilities, one_hot = probabilities * valid, one_hot * valid
    dims = [0, *range(2, logits.dim())]
    intersection = (probabilities * one_hot).sum(dims)
    denominator = (probabilities * probabilities).sum(dims) + (one_hot * one_hot).sum(dims)
    return (1.0 - (2.0 * intersection + smooth) / (denominator + smooth)).mean()


def supervised_loss(logits: Tensor, labels: Tensor, ignore_index: int = 255) -> tuple[Tensor, Tensor]:
    """(cross-entropy, soft Dice) of labelled logits [B, C, *S] against labels [B, *S]."""
    return F.cross_entropy(logits.float(), labels, ignore_index=ignore_index), dice_loss(logits, labels, ignore_index)


def sigmoid_rampup(iteration: float, rampup_length: float) -> float:
    """Laine & Aila's ramp-up ``exp(−5 (1 − t)²)`` with ``t = iteration / rampup_length`` clipped to [0, 1]."""
    if rampup_length <= 0:
        return 1.0
    t = min(max(iteration, 0.0), rampup_length) / rampup_length
    return float(math.exp(-5.0 * (1.0 - t) ** 2))


def consistency_mse(student_logits: Tensor, teacher_logits: Tensor) -> Tensor:
    """Mean-teacher consistency: mean squared difference of the softmax maps (teacher constant)."""
    return F.mse_loss(student_logits.float().softmax(1), teacher_logits.detach().float().softmax(1))


def pseudo_label_loss(student_logits: Tensor, teacher_logits: Tensor, threshold: float) -> tuple[Tensor, float]:
    """Cross-entropy toward the teacher's argmax where its softmax probability reaches ``threshold``,
    averaged over all unlabelled pixels (FixMatch's normalisation); also the fraction of pixels kept."""
    confidence, pseudo = teacher_logits.detach().float().softmax(1).max(1)
    keep = confidence >= threshold
    per_pixel = F.cross_entropy(student_logits.float(), pseudo, reduction="none")
    return (per_pixel * keep).sum() / max(keep.numel(), 1), float(keep.float().mean()) if keep.numel() else 0.0


@torch.no_grad()
def update_ema(teacher: nn.Module, student: nn.Module, decay: float, iteration: int) -> None:
    """Mean teacher: ``θ_t ← α θ_t + (1 − α) θ_s`` with ``α = min(1 − 1/(iteration + 1), decay)``; floating
    buffers (BatchNorm statistics) follow the same average, integer buffers are copied."""
    alpha = min(1.0 - 1.0 / (iteration + 1), decay)
    for teacher_param, student_param in zip(teacher.parameters(), student.parameters(), strict=True):
        teacher_param.mul_(alpha).add_(student_param.detach(), alpha=1.0 - alpha)
    for teacher_buffer, student_buffer in zip(teacher.buffers(), student.buffers(), strict=True):
        if teacher_buffer.dtype.is_floating_point:
            teacher_buffer.mul_(alpha).add_(student_buffer, alpha=1.0 - alpha)
        else:
            teacher_buffer.copy_(student_buffer)
