"""The label-free objective of the ROI encoder.

Two noisy views ``v1, v2`` of each ROI feature map ``x`` (with probability ``drop_prob`` zero
about ``drop_fraction`` of the elements, then add ``N(0, noise_std^2)``) are embedded as
``z1, z2``. The teacher ``t`` is the spatial mean of ``x`` (512-d). With in-batch cosine
similarity matrices whose diagonal is removed,

    L = beta * NT-Xent(z1, z2; tau=0.2) + (1 - beta) * 1/2 [KL(P_t || P_z1) + KL(P_t || P_z2)],
    P_t = softmax_row(cos(t_i, t_j) / 0.07),   P_z = softmax_row(cos(z_i, z_j) / 0.2),

(KL averaged over rows: "batchmean"). NT-Xent is SimCLR's: for each of the 2B views, the
other view of the same ROI against all 2B - 1 other views (under torchrun: against the views
of every rank's batch, so the negatives are those of the global batch; the KL term stays per rank),

    l_i = -log( exp(s_{i,p(i)} / tau) / sum_{k != i} exp(s_{i,k} / tau) ).

beta is 0.9 for the first ``warmup_epochs``, then falls linearly to 0.5 at 80 % of training.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from myutils.training.distributed import all_gather_with_grad, rank_and_world_size


def noisy_view(
    x: torch.Tensor, drop_prob: float = 0.1, drop_fraction: float = 0.2, noise_std: float = 0.05
) -> torch.Tensor:
    """A random view of ``x [B, ...]``: per sample, with probability ``drop_prob`` zero a random
    ``drop_fraction`` of its elements; then add Gaussian noise to everything."""
    batch_shape = (x.shape[0],) + (1,) * (x.ndim - 1)
    dropped = torch.rand(batch_shape, device=x.device) < drop_prob
    keep = (torch.rand_like(x, dtype=torch.float32) >= drop_fraction) | ~dropped
    return x * keep + noise_std * torch.randn_like(x)


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.2) -> torch.Tensor:
    """SimCLR's NT-Xent (inputs are normalised here); under torchrun the negatives are every rank's views.

    Each rank's 2B local views are the anchors; the candidates are the 2 W B views of all W
    ranks, gathered with gradient. The mean of the per-rank losses (what DDP's gradient
    averaging optimises) is then exactly NT-Xent over the global batch of W B pairs.
    """
    local1, local2 = F.normalize(z1.float(), dim=1), F.normalize(z2.float(), dim=1)
    all1, all2 = all_gather_with_grad(local1), all_gather_with_grad(local2)
    rank, _ = rank_and_world_size()
    batch, total = z1.shape[0], all1.shape[0]
    anchors = torch.cat([local1, local2])
    logits = anchors @ torch.cat([all1, all2]).T / temperature
    # column of each anchor itself and of its other view among the 2 * total candidates
    rows = torch.arange(batch, device=logits.device) + rank * batch
    own = torch.cat([rows, rows + total])
    positives = torch.cat([rows + total, rows])
    logits[torch.arange(2 * batch, device=logits.device), own] = float("-inf")
    return F.cross_entropy(logits, positives)


def _off_diagonal_logits(embeddings: torch.Tensor, temperature: float) -> torch.Tensor:
    """Cosine similarities / temperature ``[B, B-1]``: row i without its self-similarity."""
    e = F.normalize(embeddings.float(), dim=1)
    sims = e @ e.T / temperature
    batch = sims.shape[0]
    off_diagonal = ~torch.eye(batch, dtype=torch.bool, device=sims.device)
    return sims[off_diagonal].view(batch, batch - 1)


def similarity_kl(
    teacher: torch.Tensor, student: torch.Tensor, teacher_temperature: float = 0.07, student_temperature: float = 0.2
) -> torch.Tensor:
    """KL(P_teacher || P_student) of the row-wise in-batch similarity distributions (batchmean)."""
    teacher_log_p = F.log_softmax(_off_diagonal_logits(teacher, teacher_temperature), dim=1)
    student_log_p = F.log_softmax(_off_diagonal_logits(student, student_temperature), dim=1)
    return F.kl_div(student_log_p, teacher_log_p, reduction="batchmean", log_target=True)


def beta_schedule(epoch: int, total_epochs: int, warmup_epochs: int = 10,
                  start: float = 0.9, end: float = 0.5, end_fraction: float = 0.8) -> float:
    """Weight of NT-Xent at 0-based ``epoch``: ``start`` in warm-up, linear to ``end`` at ``end_fraction``."""
    end_epoch = end_fraction * total_epochs
    if epoch < warmup_epochs:
        return start
    if epoch >= end_epoch or end_epoch <= warmup_epochs:
        return end
    progress = (epoch - warmup_epochs) / (end_epoch - warmup_epochs)
    return start + (end - start) * progress


def roi_contrastive_loss(
    z1: torch.Tensor, z2: torch.Tensor, roi_features: torch.Tensor, beta: float,
    temperature: float = 0.2, teacher_temperature: float = 0.07,
) -> dict[str, torch.Tensor]:
    """``{"loss", "nt_xent", "kl"}`` for embeddings of two views and the ROI maps ``[B, C, H, W]``.

    A batch of one has no negatives and no neighbours: the loss is a zero that keeps the graph
    (so DDP still sees every parameter).
    """
    if z1.shape[0] < 2:
        zero = 0.0 * (z1.sum() + z2.sum())
        return {"loss": zero, "nt_xent": zero.detach(), "kl": zero.detach()}
    teacher = roi_features.float().mean(dim=(2, 3))
    contrastive = nt_xent(z1, z2, temperature)
    kl = 0.5 * (similarity_kl(teacher, z1, teacher_temperature, temperature)
                + similarity_kl(teacher, z2, teacher_temperature, temperature))
    return {"loss": beta * contrastive + (1 - beta) * kl, "nt_xent": contrastive.detach(), "kl": kl.detach()}
