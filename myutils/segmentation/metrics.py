"""Per-class overlap and surface-distance metrics of a segmentation, with medpy's definitions.

Surfaces are the foreground voxels removed by one binary erosion with the face-connected structure
(border voxels of the array count as surface); distances are Euclidean distance transforms (scipy), in
the units of ``spacing``. As ``medpy.metric.binary``:

    dice    = 2|P ∩ G| / (|P| + |G|)                  jaccard = |P ∩ G| / |P ∪ G|
    hd95    = 95th percentile of the distances from P's surface to G's and from G's surface to P's
    asd     = mean distance from P's surface to G's   (one-sided, medpy's ``asd(result, reference)``)

medpy raises on an empty P or G; here both empty score dice = jaccard = 1 and distances 0, and one empty
scores 0 and, for the distances, the array's diagonal (the largest possible distance). SS-Net's test code
gives an empty prediction HD95 = ASD = 0 instead, which rewards predicting nothing.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

METRICS = ("dice", "jaccard", "hd95", "asd")


def surface(mask: np.ndarray) -> np.ndarray:
    """The one-voxel border of a boolean mask (face connectivity)."""
    structure = ndimage.generate_binary_structure(mask.ndim, 1)
    return mask ^ ndimage.binary_erosion(mask, structure=structure, iterations=1)


def surface_distances(result: np.ndarray, reference: np.ndarray, spacing: Sequence[float] | None = None) -> np.ndarray:
    """Distance of every surface voxel of ``result`` to the nearest surface voxel of ``reference``."""
    distance_to_reference = ndimage.distance_transform_edt(~surface(reference), sampling=spacing)
    return distance_to_reference[surface(result)]


def binary_metrics(result: np.ndarray, reference: np.ndarray, spacing: Sequence[float] | None = None) -> dict[str, float]:
    """Dice, Jaccard, HD95 and ASD of one class (boolean masks of the same shape)."""
    result, reference = np.asarray(result, dtype=bool), np.asarray(reference, dtype=bool)
    if result.shape != reference.shape:
        raise ValueError(f"prediction shape {result.shape} differs from label shape {reference.shape}")
    predicted, actual = int(result.sum()), int(reference.sum())
    if predicted == 0 or actual == 0:
        both_empty = predicted == actual
        scale = np.ones(result.ndim) if spacing is None else np.asarray(spacing, dtype=float)
        worst = 0.0 if both_empty else float(np.linalg.norm((np.array(result.shape) - 1) * scale))
        return {"dice": float(both_empty), "jaccard": float(both_empty), "hd95": worst, "asd": worst}
    intersection = int((result & reference).sum())
    forward = surface_distances(result, reference, spacing)
    backward = surface_distances(reference, result, spacing)
    return {
        "dice": 2.0 * intersection / (predicted + actual),
        "jaccard": intersection / (predicted + actual - intersection),
        "hd95": float(np.percentile(np.hstack([forward, backward]), 95)),
        "asd": float(forward.mean()),
    }


def case_metrics(prediction: np.ndarray, label: np.ndarray, num_classes: int,
                 spacing: Sequence[float] | None = None) -> dict[int, dict[str, float]]:
    """``{class_id: metrics}`` for every foreground class 1..num_classes-1 of one case."""
    return {c: binary_metrics(prediction == c, label == c, spacing) for c in range(1, num_classes)}


def summarize(per_case: list[dict[int, dict[str, float]]]) -> dict[str, float]:
    """Means over cases: ``<metric>_class<c>`` per class and ``<metric>`` over classes (e.g. ``dice``)."""
    if not per_case:
        return {}
    summary: dict[str, float] = {}
    classes = sorted(per_case[0])
    for name in METRICS:
        per_class = [float(np.mean([case[c][name] for case in per_case])) for c in classes]
        summary[name] = float(np.mean(per_class))
        summary |= {f"{name}_class{c}": value for c, value in zip(classes, per_class, strict=True)}
    return summary
