"""Axis-aligned box formats and pairwise IoU on NumPy arrays (the tracker's and the MOT metrics' geometry).

Formats: ``xyxy`` = (left, top, right, bottom); ``tlwh`` = (left, top, width, height) as in
MOTChallenge files; ``xyah`` = (centre x, centre y, aspect = width / height, height) and
``xywh`` = (centre x, centre y, width, height), the Kalman filter's two measurement spaces.
"""

from __future__ import annotations

import numpy as np


def tlwh_to_xyxy(boxes: np.ndarray) -> np.ndarray:
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return np.concatenate([boxes[:, :2], boxes[:, :2] + boxes[:, 2:]], axis=1)


def xyxy_to_tlwh(boxes: np.ndarray) -> np.ndarray:
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)


def xyxy_to_xyah(boxes: np.ndarray) -> np.ndarray:
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    out = xyxy_to_xywh(boxes)
    out[:, 2] /= out[:, 3]
    return out


def xyah_to_xyxy(boxes: np.ndarray) -> np.ndarray:
    boxes = np.array(boxes, dtype=np.float64).reshape(-1, 4)
    boxes[:, 2] *= boxes[:, 3]
    return xywh_to_xyxy(boxes)


def xyxy_to_xywh(boxes: np.ndarray) -> np.ndarray:
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    out = np.empty(boxes.shape)
    out[:, 2:] = boxes[:, 2:] - boxes[:, :2]
    out[:, :2] = boxes[:, :2] + out[:, 2:] / 2
    return out


def xywh_to_xyxy(boxes: np.ndarray) -> np.ndarray:
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    out = np.empty(boxes.shape)
    out[:, :2] = boxes[:, :2] - boxes[:, 2:] / 2
    out[:, 2:] = out[:, :2] + boxes[:, 2:]
    return out


def iou_matrix(boxes_a: np.ndarray, boxes_b: np.ndarray) -> np.ndarray:
    """IoU of every box in ``boxes_a [N, 4]`` with every box in ``boxes_b [M, 4]`` (xyxy) -> ``[N, M]``
    (0 where both boxes are empty)."""
    a = np.asarray(boxes_a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(boxes_b, dtype=np.float64).reshape(-1, 4)
    sides = np.minimum(a[:, None, 2:], b[None, :, 2:]) - np.maximum(a[:, None, :2], b[None, :, :2])
    np.maximum(sides, 0, out=sides)
    intersection = sides[..., 0] * sides[..., 1]
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b
    union -= intersection
    return intersection / np.maximum(union, 1e-12, out=union)
