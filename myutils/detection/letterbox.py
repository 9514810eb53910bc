"""Letterbox resizing (keep aspect ratio, pad to a square) and the box mapping it implies."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch

from myutils.cli import InputError

PAD_VALUE = 114  # grey padding, as YOLOv7 is trained with


@dataclass(frozen=True)
class Letterbox:
    """Geometry of one letterboxed image: ``input = original * scale + (pad_left, pad_top)``."""

    scale: float
    pad_left: int
    pad_top: int
    input_width: int
    input_height: int
    original_width: int
    original_height: int

    def to_input(self, boxes_xyxy: torch.Tensor) -> torch.Tensor:
        """Original-image boxes ``[N, 4]`` xyxy -> letterboxed-input pixels."""
        offset = boxes_xyxy.new_tensor([self.pad_left, self.pad_top, self.pad_left, self.pad_top])
        return boxes_xyxy * self.scale + offset

    def to_original(self, boxes_xyxy: torch.Tensor) -> torch.Tensor:
        """Letterboxed-input boxes -> original-image pixels, clipped to the image."""
        offset = boxes_xyxy.new_tensor([self.pad_left, self.pad_top, self.pad_left, self.pad_top])
        boxes = (boxes_xyxy - offset) / self.scale
        limits = boxes.new_tensor([self.original_width, self.original_height] * 2)
        return torch.minimum(boxes.clamp(min=0), limits)


def letterbox_image(image: np.ndarray, size: int) -> tuple[np.ndarray, Letterbox]:
    """Resize an ``[H, W, 3]`` image to fit ``size x size`` keeping its aspect ratio, padding with grey."""
    if image.ndim != 3 or image.shape[2] != 3:
        raise InputError(f"expected an RGB image [H, W, 3], got shape {image.shape}")
    if size <= 0 or size % 32:
        raise InputError(f"input size must be a positive multiple of 32 (the network stride), got {size}")
    height, width = image.shape[:2]
    scale = min(size / height, size / width)
    new_w, new_h = max(1, round(width * scale)), max(1, round(height * scale))
    if (new_w, new_h) != (width, height):  # INTER_LINEAR both ways, as YOLOv7's inference letterbox
        image = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    pad_left, pad_top = (size - new_w) // 2, (size - new_h) // 2
    canvas = np.full((size, size, 3), PAD_VALUE, dtype=np.uint8)
    canvas[pad_top : pad_top + new_h, pad_left : pad_left + new_w] = image
    return canvas, Letterbox(scale, pad_left, pad_top, size, size, width, height)


def image_to_tensor(image: np.ndarray) -> torch.Tensor:
    """RGB uint8 ``[H, W, 3]`` -> float ``[1, 3, H, W]`` in [0, 1] (YOLOv7's input convention)."""
    return images_to_tensor([image])


def images_to_tensor(images: list[np.ndarray]) -> torch.Tensor:
    """Equal-sized RGB uint8 images -> float ``[B, 3, H, W]`` in [0, 1]."""
    batch = torch.from_numpy(np.ascontiguousarray(np.stack(images)))
    return batch.permute(0, 3, 1, 2).float().div_(255.0)
