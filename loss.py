"""Supervised contrastive loss (Khosla et al. 2020, "Supervised Contrastive Learning").

Semantics follow HobbitLong/SupContrast's ``SupConLoss`` (soft masks included); anchors without
any positive and batches without any negative are treated as pytorch-metric-learning treats them
(see :class:`SupConLoss`).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from myutils.cli import InputError


class SupConLoss(nn.Module):
    r"""Supervised contrastive loss over ``V`` views of ``B`` samples.

    With anchors :math:`i` (all ``B·V`` views, or view 0 only for ``contrast_mode="one"``),
    contrast set :math:`A(i)` (every view except :math:`i` itself) and positive weights
    :math:`w_{ip}` (1 for views with the same label; ``mask[i, p]`` when a mask is given, which may
    be soft, e.g. label-smoothed or similarity-derived, values in [0, 1]):

    .. math::
        \ell_i = -\frac{\tau}{\tau_{base}} \frac{1}{\sum_p w_{ip}} \sum_{p \in A(i)} w_{ip}
                 \log \frac{\exp(z_i \cdot z_p / \tau)}{\sum_{a \in A(i)} \exp(z_i \cdot z_a / \tau)},
        \qquad L = \operatorname{mean}_{i : \sum_p w_{ip} > 0} \ell_i

    As in the reference, a soft mask weights each positive's log-probability and divides by the
    sum of the weights. Two degenerate cases follow pytorch-metric-learning:

    - anchors without a positive (a single-view sample whose class appears nowhere else in the
      batch) carry no signal and are dropped from the mean;
    - a batch without any negative pair (every sample of one class; with a soft mask, every
      weight 1) has nothing to contrast: the loss is 0 (the reference would give ``log(B·V - 1)``-sized values whose gradient only
      equalises the positives' similarities).

    In both "nothing to learn" cases the result is a zero that keeps the graph (a zero gradient).
    With ``labels`` and ``mask`` both ``None`` each sample is its own class (SimCLR).

    Numerics: the denominator is a ``logsumexp`` over the contrast set, which subtracts each row's
    maximum (over the contrast set, self excluded) before exponentiating, so logits of any size are
    stable (the reference subtracts a max that includes the self-similarity, which underflows the
    whole row at very low temperatures). All math runs in float32 even under autocast.

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
        """``features [B, V, D]`` (L2-normalised), ``labels [B]`` or ``mask [B, B]`` (1 = same class, may be soft)."""
        if features.dim() != 3:
            raise InputError(f"features must be [batch, views, dim], got shape {tuple(features.shape)}")
        if labels is not None and mask is not None:
            raise InputError("give labels or mask, not both")
        batch, views, _ = features.shape
        with torch.autocast(device_type=features.device.type, enabled=False):
            features = features.float()
            positive_weight = self._positive_weights(batch, labels, mask, features.device)
            # view-major order: row v*B + b is view v of sample b
            contrast = features.transpose(0, 1).reshape(batch * views, -1)
            anchor = contrast[:batch] if self.contrast_mode == "one" else contrast
            n_anchor = anchor.shape[0]

            logits = anchor @ contrast.T / self.temperature
            not_self = torch.ones_like(logits, dtype=torch.bool)
            not_self[torch.arange(n_anchor), torch.arange(n_anchor)] = False
            weights = positive_weight.repeat(n_anchor // batch, views) * not_self

            log_denominator = torch.logsumexp(logits.masked_fill(~not_self, -torch.inf), dim=1, keepdim=True)
            log_prob = logits - log_denominator
            weight_sum = weights.sum(dim=1)
            has_positive = weight_sum > 0
            has_negative = ((weights < 1) & not_self).any()  # a soft positive is partly a negative
            mean_log_prob_pos = (log_prob * weights).sum(dim=1) / weight_sum.clamp(min=torch.finfo(torch.float32).tiny)
            losses = -(self.temperature / self.base_temperature) * mean_log_prob_pos
            if not (has_positive.any() and has_negative):
                return (logits * 0.0).sum()
            return losses[has_positive].mean()

    @staticmethod
    def _positive_weights(batch: int, labels, mask, device) -> torch.Tensor:
        """``[B, B]`` float weight of sample j as a positive of sample i (self included; removed later)."""
        if labels is not None:
            labels = labels.reshape(-1).to(device)
            if labels.numel() != batch:
                raise InputError(f"got {labels.numel()} labels for {batch} samples")
            return (labels[:, None] == labels[None, :]).float()
        if mask is not None:
            if mask.shape != (batch, batch):
                raise InputError(f"mask must be [{batch}, {batch}], got {tuple(mask.shape)}")
            mask = mask.to(device).float()
            if bool(((mask < 0) | (mask > 1)).any()):
                raise InputError("mask values must lie in [0, 1]")
            return mask
        return torch.eye(batch, device=device)
