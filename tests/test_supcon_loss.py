"""SupConLoss against pytorch-metric-learning and against a direct per-anchor computation."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from pytorch_metric_learning.losses import SupConLoss as PMLSupConLoss

from loss import SupConLoss


def random_features(batch, views, dim, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(batch, views, dim, generator=generator), dim=-1)


def _log_sum_exp(values):
    top = max(values)
    return top + math.log(sum(math.exp(v - top) for v in values))


def loop_supcon(features, labels, temperature, base_temperature, anchor_views, weights=None):
    """Textbook per-anchor formula (no vectorisation), in float64.

    ``weights[i][j]`` is the positive weight of sample j for sample i (default: same label), as in
    HobbitLong/SupContrast's ``mask``: each positive's log-probability is weighted, then divided by
    the weights' sum.
    """
    batch, views, _ = features.shape
    flat = features.transpose(0, 1).reshape(batch * views, -1).double()
    sample = [a % batch for a in range(batch * views)]
    if weights is None:
        weights = [[float(labels[i] == labels[j]) for j in range(batch)] for i in range(batch)]
    losses = []
    for i in range(batch * anchor_views):
        others = [a for a in range(batch * views) if a != i]
        positives = [(p, weights[sample[i]][sample[p]]) for p in others if weights[sample[i]][sample[p]] > 0]
        if not positives:
            continue
        log_denominator = _log_sum_exp([float(flat[i] @ flat[a]) / temperature for a in others])
        weighted = sum(w * (float(flat[i] @ flat[p]) / temperature - log_denominator) for p, w in positives)
        losses.append(-(temperature / base_temperature) * weighted / sum(w for _, w in positives))
    return sum(losses) / len(losses)


@pytest.mark.parametrize("views", [1, 2, 3])
def test_equals_pytorch_metric_learning(views):
    features = random_features(24, views, 16)
    labels = torch.randint(0, 6, (24,), generator=torch.Generator().manual_seed(1))
    ours = SupConLoss(temperature=0.1)(features, labels)
    flat = features.transpose(0, 1).reshape(24 * views, -1)
    reference = PMLSupConLoss(temperature=0.1)(flat, labels.repeat(views))
    assert ours.item() == pytest.approx(reference.item(), rel=1e-5)


def test_anchors_without_positives_are_dropped_like_pml():
    features = random_features(6, 1, 8)
    labels = torch.tensor([0, 0, 1, 2, 3, 3])  # samples 2 and 3 have no positive
    ours = SupConLoss(0.2)(features, labels)
    reference = PMLSupConLoss(temperature=0.2)(features[:, 0], labels)
    assert ours.item() == pytest.approx(reference.item(), rel=1e-5)
    assert ours.item() == pytest.approx(loop_supcon(features, labels, 0.2, 0.2, 1), rel=1e-5)


def test_no_positive_at_all_is_zero_with_finite_gradient():
    features = random_features(5, 1, 8).requires_grad_(True)
    loss = SupConLoss()(features, torch.arange(5))
    loss.backward()
    assert loss.item() == 0.0 and torch.isfinite(features.grad).all()


def test_contrast_mode_one_and_base_temperature_match_the_formula():
    features = random_features(10, 2, 8, seed=3)
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 3, 4])
    ours = SupConLoss(0.5, contrast_mode="one", base_temperature=0.07)(features, labels)
    assert ours.item() == pytest.approx(loop_supcon(features, labels, 0.5, 0.07, anchor_views=1), rel=1e-5)
    all_mode = SupConLoss(0.5, contrast_mode="all")(features, labels)
    assert all_mode.item() == pytest.approx(loop_supcon(features, labels, 0.5, 0.5, anchor_views=2), rel=1e-5)


def test_mask_labels_and_simclr_agree():
    features = random_features(8, 2, 8, seed=4)
    labels = torch.tensor([0, 1, 0, 1, 2, 2, 3, 3])
    loss = SupConLoss(0.1)
    mask = (labels[:, None] == labels[None, :]).float()
    assert loss(features, mask=mask).item() == pytest.approx(loss(features, labels).item(), rel=1e-6)
    assert loss(features).item() == pytest.approx(loss(features, torch.arange(8)).item(), rel=1e-6)


def test_soft_mask_weights_positives_like_the_reference():
    features = random_features(6, 2, 8, seed=6)
    generator = torch.Generator().manual_seed(2)
    soft = torch.rand(6, 6, generator=generator) * (torch.rand(6, 6, generator=generator) > 0.4)  # some exact 0
    soft.fill_diagonal_(1.0)  # a sample's other view is a full positive: every anchor has a positive
    ours = SupConLoss(0.2)(features, mask=soft)
    expected = loop_supcon(features, None, 0.2, 0.2, anchor_views=2, weights=soft.tolist())
    assert ours.item() == pytest.approx(expected, rel=1e-5)
    binary = SupConLoss(0.2)(features, mask=(soft > 0).float())
    assert abs(ours.item() - binary.item()) > 1e-3  # the weights matter: a soft mask is not a bool mask
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        SupConLoss()(features, mask=soft * 2)


def test_single_class_batch_is_zero_like_pytorch_metric_learning():
    features = random_features(8, 2, 16, seed=7).requires_grad_(True)
    labels = torch.zeros(8, dtype=torch.long)  # no negative anywhere: nothing to contrast
    ours = SupConLoss(0.1)(features, labels)
    flat = features.detach().transpose(0, 1).reshape(16, -1)
    assert PMLSupConLoss(temperature=0.1)(flat, labels.repeat(2)).item() == 0.0
    ours.backward()
    assert ours.item() == 0.0 and torch.equal(features.grad, torch.zeros_like(features))
    # a full-weight soft mask is the same batch; one partial weight makes it contrastive again
    assert SupConLoss(0.1)(features.detach(), mask=torch.ones(8, 8)).item() == 0.0
    partial = torch.ones(8, 8)
    partial[0, 1] = partial[1, 0] = 0.5
    assert SupConLoss(0.1)(features.detach(), mask=partial).item() > 0.0


def test_tiny_temperature_is_stable_where_plain_exp_overflows():
    features = random_features(16, 2, 32, seed=5)
    labels = torch.arange(16) % 4
    temperature = 1e-3  # logits up to 1000: exp overflows float32 (and float64) without max subtraction
    flat = features.transpose(0, 1).reshape(32, -1)
    assert torch.isinf(torch.exp(flat @ flat.T / temperature).sum(1)).all()
    leaf = features.clone().requires_grad_(True)
    loss = SupConLoss(temperature)(leaf, labels)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(leaf.grad).all()
    assert loss.item() == pytest.approx(loop_supcon(features, labels, temperature, temperature, 2), rel=1e-5)


def test_math_is_float32_under_autocast():
    features = random_features(16, 2, 32, seed=5)
    labels = torch.arange(16) % 4
    loss = SupConLoss(temperature=0.05)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under_autocast = loss(features.bfloat16(), labels)
    assert under_autocast.dtype == torch.float32
    # same value as float32 math on the bf16-rounded inputs (bf16 matmuls would differ by ~1e-2)
    assert under_autocast.item() == pytest.approx(loss(features.bfloat16().float(), labels).item(), rel=1e-6)


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="views"):
        SupConLoss()(torch.randn(4, 8), torch.arange(4))
    with pytest.raises(ValueError, match="labels"):
        SupConLoss()(random_features(4, 2, 8), torch.arange(3))
    with pytest.raises(ValueError, match="not both"):
        SupConLoss()(random_features(4, 2, 8), torch.arange(4), torch.eye(4))
    with pytest.raises(ValueError, match="contrast_mode"):
        SupConLoss(contrast_mode="some")
