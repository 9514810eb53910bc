"""YOLOv7 weights whose detection head predicts a known grid of boxes, for tests of the detector path.

The head's convs get zero weights, so every cell of the stride-32 level predicts the same
offsets: with zero x/y logits a box centred on each cell, ``((gx + 0.5) * 32, (gy + 0.5) * 32)``
in letterboxed input pixels, of the planted size, objectness and class probability. Every other
anchor and level has objectness ~1e-13. The backbone is a seeded random network with calibrated
BatchNorm, so the SPPCSPC map (and ROI features) still vary over the image.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from myutils.cli import InputError
from myutils.detection.detector import random_yolov7
from myutils.detection.yolov7 import DEFAULT_ANCHORS, IDetect, YOLOv7

PLANTED_LEVEL = 2  # stride 32
NEVER = -30.0  # logit of a probability of about 1e-13


@dataclass(frozen=True)
class PlantedAnchor:
    """One anchor of the stride-32 level made to fire in every cell."""

    anchor: int  # 0..2
    class_id: int
    width: float  # input pixels, below 4 x the anchor's width (the decoder's range)
    height: float
    objectness: float  # probability in (0, 1)
    class_probability: float


def _logit(p: float) -> float:
    return math.log(p / (1 - p))


def _size_logit(size: float, anchor_size: float) -> float:
    """The logit t with ``(2 sigmoid(t))^2 * anchor_size == size``."""
    half_root = math.sqrt(size / anchor_size) / 2
    if not 0 < half_root < 1:
        raise InputError(f"a planted size {size} must lie in (0, 4 x {anchor_size}) for this anchor")
    return _logit(half_root)


@torch.no_grad()
def planted_yolov7(num_classes: int, planted: Sequence[PlantedAnchor], seed: int = 0,
                   calibration_size: int = 128) -> YOLOv7:
    """A training-form YOLOv7 (random calibrated backbone) whose head fires ``planted`` in every cell."""
    model = random_yolov7(num_classes, seed, calibration_size)
    detect = model.detect
    anchors_px = torch.tensor(DEFAULT_ANCHORS[PLANTED_LEVEL], dtype=torch.float64).view(-1, 2)
    for level, conv in enumerate(detect.m):
        conv.weight.zero_()
        bias = conv.bias.view(detect.num_anchors, detect.num_outputs)
        bias.zero_()
        bias[:, 4] = NEVER
        bias[:, 5:] = NEVER
        if isinstance(detect, IDetect):  # identity implicit layers: the bias alone decides
            detect.im[level].implicit.fill_(1.0)
        if level != PLANTED_LEVEL:
            continue
        for spec in planted:
            if not 0 <= spec.class_id < num_classes:
                raise InputError(f"planted class {spec.class_id} is not one of {num_classes} classes")
            row = bias[spec.anchor]
            row[2] = _size_logit(spec.width, float(anchors_px[spec.anchor, 0]))
            row[3] = _size_logit(spec.height, float(anchors_px[spec.anchor, 1]))
            row[4] = _logit(spec.objectness)
            row[5 + spec.class_id] = _logit(spec.class_probability)
    return model.eval()
