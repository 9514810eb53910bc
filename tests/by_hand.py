"""Reference computations for the tests, written out without the project's code paths."""

from __future__ import annotations

import cv2
import numpy as np
import torch
from torchvision.ops import roi_align


def letterbox_by_hand(image: np.ndarray, size: int) -> tuple[torch.Tensor, float, int, int]:
    """YOLOv7's square letterbox: scale to fit, INTER_LINEAR, centred grey (114) padding.

    Returns the ``[1, 3, size, size]`` tensor in [0, 1] and the geometry ``(scale, left, top)``.
    """
    height, width = image.shape[:2]
    scale = min(size / height, size / width)
    new_w, new_h = round(width * scale), round(height * scale)
    left, top = (size - new_w) // 2, (size - new_h) // 2
    canvas = np.full((size, size, 3), 114, np.uint8)
    canvas[top : top + new_h, left : left + new_w] = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    return torch.from_numpy(canvas).permute(2, 0, 1)[None].float() / 255, scale, left, top


def roi_features_by_hand(image: np.ndarray, boxes_xyxy, model, size: int) -> torch.Tensor:
    """torchvision ``roi_align`` (10x10, 1/32, sampling 2, aligned) of original-pixel boxes on the
    SPPCSPC map of the letterboxed image."""
    tensor, scale, left, top = letterbox_by_hand(image, size)
    boxes = torch.as_tensor(np.asarray(boxes_xyxy), dtype=torch.float32) * scale
    boxes = boxes + torch.tensor([left, top, left, top], dtype=torch.float32)
    with torch.no_grad():
        features = model.forward_backbone(tensor)
        return roi_align(features, [boxes], output_size=10, spatial_scale=1 / 32, sampling_ratio=2, aligned=True)
