"""Supervised contrastive loss (Khosla et al. 2020, "Supervised Contrastive Learning").

Semantics follow HobbitLong/SupContrast's ``SupConLoss``; the one deliberate difference is
how anchors without any positive are treated (see :class:`SupConLoss`).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from myutils.cli import InputError


class SupConLoss(nn.Module):
    r"""Supervised contrastive loss over ``V`` views of ``B`` samples.

    With anchors :math:`i` (all ``B·V`` views, or view 0 only for ``contrast_mode="one"``),
    contrast set :math:`A(i)` (every view except :math:`i` itself) and positives
    :math:`P(i) \subset A(i)` (views with the same label, or ``mask[i, p] = 1``):

    .. math::
        \ell_i = -\frac{\tau}{\tau_{base}} \frac{1}{|P(i)|} \sum_{p \in P(i)}
                 \log \frac{\exp(z_i \cdot z_p / \tau)}{\sum_{a \in A(i)} \exp(z_i \cdot z_a / \tau)},
        \qquad L = \operatorname{mean}_{i : |P(i)| > 0} \ell_i

    Anchors without a positive (a single-view sample whose class appears nowhere else in the
    batch) carry no signal and are dropped from the mean, as in pytorch-metric-learning; when no
    anchor has a positive the loss is a zero that keeps the graph. With ``labels`` and ``mask``
    both ``None`` each sample is its own class (SimCLR). The row max is subtracted from the logits
    (detached) for stability, and the math runs in float32 even under autocast.

    Args:
        temperature: :math:`\tau`.
        contrast_mode: ``"all"`` (every view is an anchor) or ``"one"`` (view 0 only).
        base_temperature: :math:`\tau_{base}`; ``None`` means ``temperature`` (then the loss equals
            pytorch-metric-learning's ``SupConLoss`` on the concatenated views).
    """

    def __init__(self, temperature: float = 0.1, contrast_mode: str = "all", base_temperature: float | None = None):
        super().__init__()
        if temperature <= 0:
            raise InputError(f"temperature must be positive, got {temperature}")
        if contrast_mode not in ("all", "one"):
            raise InputError(f"contrast_mode must be 'all' or 'one', got {contrast_mode!r}")
        self.temperature = temperature
        self.contrast_mode = contrast_mode
        self.base_temperature = temperature if base_temperature is None else base_temperature

    def forward(
        self, features: torch.Tensor, labels: torch.Tensor | None = None, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``features [B, V, D]`` (L2-normalised), ``labels [B]`` or ``mask [B, B]`` (1 = same class)."""
        if features.dim() != 3:
            raise InputError(f"features must be [batch, views, dim], got shape {tuple(features.shape)}")
        if labels is not None and mask is not None:
            raise InputError("give labels or mask, not both")
        batch, views, _ = features.shape
        with torch.autocast(device_type=features.device.type, enabled=False):
            features = features.float()
            class_mask = self._class_mask(batch, labels, mask, features.device)
            # view-major order: row v*B + b is view v of sample b
            contrast = features.transpose(0, 1).reshape(batch * views, -1)
            anchor = contrast[:batch] if self.contrast_mode == "one" else contrast
            n_anchor = anchor.shape[0]

            logits = anchor @ contrast.T / self.temperature
            logits = logits - logits.max(dim=1, keepdim=True).values.detach()
            not_self = torch.ones_like(logits, dtype=torch.bool)
            not_self[torch.arange(n_anchor), torch.arange(n_anchor)] = False
            positives = class_mask.repeat(n_anchor // batch, views) & not_self

            log_denominator = torch.logsumexp(logits.masked_fill(~not_self, -torch.inf), dim=1, keepdim=True)
            log_prob = logits - log_denominator
            n_positive = positives.sum(dim=1)
            has_positive = n_positive > 0
            mean_log_prob_pos = (log_prob * positives).sum(dim=1) / n_positive.clamp(min=1)
            losses = -(self.temperature / self.base_temperature) * mean_log_prob_pos
            if not has_positive.any():
                return (losses * 0.0).sum()
            return losses[has_positive].mean()

    @staticmethod
    def _class_mask(batch: int, labels, mask, device) -> torch.Tensor:
        if labels is not None:
            labels = labels.reshape(-1).to(device)
            if labels.numel() != batch:
                raise InputError(f"got {labels.numel()} labels for {batch} samples")
            return labels[:, None] == labels[None, :]
        if mask is not None:
            if mask.shape != (batch, batch):
                raise InputError(f"mask must be [{batch}, {batch}], got {tuple(mask.shape)}")
            return mask.to(device).bool()
        return torch.eye(batch, dtype=torch.bool, device=device)
