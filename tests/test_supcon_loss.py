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


def loop_supcon(features, labels, temperature, base_temperature, anchor_views):
    """Textbook per-anchor formula (no vectorisation, no stabilisation), in float64."""
    batch, views, _ = features.shape
    flat = features.transpose(0, 1).reshape(batch * views, -1).double()
    flat_labels = labels.repeat(views)
    losses = []
    for i in range(batch * anchor_views):
        others = [a for a in range(batch * views) if a != i]
        positives = [p for p in others if flat_labels[p] == flat_labels[i]]
        if not positives:
            continue
        log_denominator = math.log(sum(math.exp(float(flat[i] @ flat[a]) / temperature) for a in others))
        log_probs = [float(flat[i] @ flat[p]) / temperature - log_denominator for p in positives]
        losses.append(-(temperature / base_temperature) * sum(log_probs) / len(log_probs))
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


def test_large_logits_are_stable_and_float32_under_autocast():
    features = random_features(16, 2, 32, seed=5)
    labels = torch.arange(16) % 4
    loss = SupConLoss(temperature=0.01)  # logits up to 100: exp overflows without max subtraction in fp16
    expected = loss(features, labels)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under_autocast = loss(features.bfloat16(), labels)
    assert torch.isfinite(expected) and under_autocast.dtype == torch.float32
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
