"""Segmentation metrics against shapes with known distances and against medpy; losses, ramp-up, EMA."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from medpy.metric import binary as medpy

from myutils.segmentation.losses import dice_loss, pseudo_label_loss, sigmoid_rampup, update_ema
from myutils.segmentation.metrics import binary_metrics, case_metrics, summarize


def test_concentric_squares_have_the_distances_of_their_geometry():
    """A 10x10 square 3 px inside a 16x16 one: every inner border pixel is 3 from the outer border; an
    outer border pixel (r, c) is sqrt(dr² + dc²) from the inner square (dr, dc: its offsets outside it)."""
    inner, outer = np.zeros((20, 20), bool), np.zeros((20, 20), bool)
    inner[5:15, 5:15], outer[2:18, 2:18] = True, True
    rows, cols = np.nonzero(outer & ~np.pad(np.ones((14, 14), bool), 3))  # the outer square's one-pixel ring
    dr = np.maximum.reduce([5 - rows, np.zeros_like(rows), rows - 14])
    dc = np.maximum.reduce([5 - cols, np.zeros_like(cols), cols - 14])
    outer_to_inner = np.hypot(dr, dc)
    inner_to_outer = np.full(36, 3.0)  # the inner ring has 36 pixels
    metrics = binary_metrics(inner, outer)
    assert metrics["asd"] == pytest.approx(3.0)  # one-sided: from the prediction's surface
    assert metrics["hd95"] == pytest.approx(np.percentile(np.hstack([inner_to_outer, outer_to_inner]), 95))
    assert binary_metrics(outer, inner)["asd"] == pytest.approx(outer_to_inner.mean())
    assert metrics["dice"] == pytest.approx(2 * 100 / (100 + 256)) and metrics["jaccard"] == pytest.approx(100 / 256)


def test_shifted_cube_with_anisotropic_spacing():
    """A cube shifted by 2 voxels along an axis of spacing 2.5: every distance is at most 5 mm."""
    a, b = np.zeros((12, 12, 12), bool), np.zeros((12, 12, 12), bool)
    a[2:8, 2:8, 2:8], b[4:10, 2:8, 2:8] = True, True
    metrics = binary_metrics(a, b, spacing=(2.5, 1.0, 1.0))
    assert metrics["hd95"] == pytest.approx(5.0)
    assert metrics["hd95"] == pytest.approx(medpy.hd95(a, b, voxelspacing=(2.5, 1.0, 1.0)))


@pytest.mark.parametrize("dims", [2, 3])
def test_random_blobs_equal_medpy(dims):
    rng = np.random.default_rng(dims)
    shape = (40, 36) if dims == 2 else (20, 18, 16)
    for _ in range(3):
        from scipy import ndimage

        a = ndimage.gaussian_filter(rng.standard_normal(shape), 2) > 0.1
        b = ndimage.gaussian_filter(rng.standard_normal(shape), 2) > 0.1
        spacing = (1.0,) * dims if dims == 2 else (1.5, 1.0, 0.7)
        ours = binary_metrics(a, b, spacing)
        assert ours["dice"] == pytest.approx(medpy.dc(a, b))
        assert ours["jaccard"] == pytest.approx(medpy.jc(a, b))
        assert ours["hd95"] == pytest.approx(medpy.hd95(a, b, voxelspacing=spacing))
        assert ours["asd"] == pytest.approx(medpy.asd(a, b, voxelspacing=spacing))


def test_empty_masks_are_scored_not_rewarded():
    label = np.zeros((10, 10), bool)
    label[2:5, 2:5] = True
    empty = binary_metrics(np.zeros_like(label), label)
    assert empty["dice"] == 0.0 and empty["hd95"] == pytest.approx(math.hypot(9, 9))  # the worst, not SS-Net's 0
    assert binary_metrics(np.zeros_like(label), np.zeros_like(label)) == {"dice": 1.0, "jaccard": 1.0, "hd95": 0.0, "asd": 0.0}


def test_case_metrics_are_per_foreground_class_and_summaries_average_cases():
    label = np.zeros((8, 8), int)
    label[1:4, 1:4], label[5:7, 5:7] = 1, 2
    prediction = label.copy()
    prediction[5:7, 5:7] = 0
    per_class = case_metrics(prediction, label, 3)
    assert set(per_class) == {1, 2} and per_class[1]["dice"] == 1.0 and per_class[2]["dice"] == 0.0
    summary = summarize([per_class, case_metrics(label, label, 3)])
    assert summary["dice_class2"] == 0.5 and summary["dice"] == pytest.approx((1.0 + 0.5) / 2)


def test_dice_loss_equals_the_formula_and_ignores_pixels():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 5, 4, generator=gen)
    labels = torch.randint(0, 3, (2, 5, 4), generator=gen)
    labels[0, 0] = 255
    p, valid = logits.softmax(1).numpy(), (labels != 255).numpy()
    expected = []
    for c in range(3):
        pc, yc = p[:, c][valid], (labels.numpy() == c)[valid]
        expected.append(1 - (2 * (pc * yc).sum() + 1e-5) / ((pc**2).sum() + yc.sum() + 1e-5))
    assert dice_loss(logits, labels).item() == pytest.approx(float(np.mean(expected)), rel=1e-5)
    perfect = 50.0 * F.one_hot(labels.clamp_max(2), 3).movedim(-1, 1).float()
    assert dice_loss(perfect, labels).item() < 1e-4


def test_pseudo_labels_keep_only_confident_teacher_pixels():
    teacher = torch.tensor([[[[5.0, 0.0]], [[0.0, 0.1]]]])  # pixel 0 confident class 0, pixel 1 not
    student = torch.randn(1, 2, 1, 2)
    loss, kept = pseudo_label_loss(student, teacher, threshold=0.9)
    expected = F.cross_entropy(student[..., 0], torch.tensor([[0]])) / 2  # averaged over both pixels
    assert kept == 0.5 and loss.item() == pytest.approx(expected.item(), rel=1e-6)


def test_sigmoid_rampup_and_ema():
    assert sigmoid_rampup(0, 100) == pytest.approx(math.exp(-5)) and sigmoid_rampup(100, 100) == 1.0
    assert sigmoid_rampup(50, 100) == pytest.approx(math.exp(-5 * 0.25)) and sigmoid_rampup(7, 0) == 1.0
    student, teacher = torch.nn.BatchNorm1d(2), torch.nn.BatchNorm1d(2)
    with torch.no_grad():
        student.weight.fill_(3.0)
        student.running_mean.fill_(1.0)
        student.num_batches_tracked.fill_(7)
    update_ema(teacher, student, decay=0.99, iteration=9)  # alpha = min(1 - 1/10, 0.99) = 0.9
    assert torch.allclose(teacher.weight, torch.full((2,), 0.9 * 1.0 + 0.1 * 3.0))
    assert torch.allclose(teacher.running_mean, torch.full((2,), 0.1))
    assert teacher.num_batches_tracked.item() == 7
