"""A usable YOLOv7 detector: letterbox, one forward pass, NMS, boxes in original pixels.

The same forward pass also yields the SPPCSPC feature map, so appearance features for the
detected boxes cost only an ROI align on top of detection.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import batched_nms

from myutils.cli import InputError
from myutils.detection.letterbox import Letterbox, image_to_tensor, letterbox_image
from myutils.detection.yolov7 import YOLOv7, num_classes_from_state_dict
from myutils.detection.yolov7_checkpoint import load_yolov7_state_dict
from myutils.training.precision import resolve_device

RANDOM_WEIGHTS_WARNING = (
    "YOLOv7 has no weights (--yolo_weights not given): features come from a randomly initialised "
    "network. That is fine for tests and demos on synthetic data, useless for real data."
)


def xywh_to_xyxy(boxes: torch.Tensor) -> torch.Tensor:
    cx, cy, w, h = boxes.unbind(-1)
    return torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=-1)


def non_max_suppression(
    prediction: torch.Tensor, conf_threshold: float = 0.25, iou_threshold: float = 0.45, max_detections: int = 300
) -> list[torch.Tensor]:
    """Per image ``[K, 6]`` rows ``x1, y1, x2, y2, score, class`` from decoded YOLO output ``[B, N, 5 + nc]``.

    score = objectness x best class probability; class-aware NMS (torchvision ``batched_nms``).
    """
    results = []
    for pred in prediction:
        pred = pred[pred[:, 4] > conf_threshold]
        if pred.shape[0] == 0:
            results.append(pred.new_zeros((0, 6)))
            continue
        class_scores = pred[:, 5:] * pred[:, 4:5] if pred.shape[1] > 5 else pred[:, 4:5]
        scores, classes = class_scores.max(dim=1)
        keep = scores > conf_threshold
        boxes, scores, classes = xywh_to_xyxy(pred[keep, :4]), scores[keep], classes[keep]
        kept = batched_nms(boxes.float(), scores.float(), classes, iou_threshold)[:max_detections]
        results.append(torch.cat([boxes[kept], scores[kept, None], classes[kept, None].to(boxes.dtype)], dim=1))
    return results


@dataclass
class Detections:
    """Detections of one image: boxes in ORIGINAL pixels and the SPPCSPC map of the same pass."""

    boxes: torch.Tensor  # [N, 4] xyxy
    scores: torch.Tensor  # [N]
    classes: torch.Tensor  # [N] int64
    features: torch.Tensor  # [1, 512, h, w]
    letterbox: Letterbox


def calibrate_batchnorm(model: nn.Module, images: torch.Tensor) -> None:
    """Set every BatchNorm's running statistics from one batch (a data-free stand-in for training).

    A randomly initialised YOLOv7 with identity BatchNorm statistics shrinks its activations
    by orders of magnitude over 50 layers; normalising each layer keeps random features usable.
    """
    saved = {}
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            saved[module] = module.momentum
            module.momentum = None  # cumulative average: exactly this batch's statistics
            module.reset_running_stats()
    was_training = model.training
    model.train()
    with torch.no_grad():
        model(images)
    model.train(was_training)
    for module, momentum in saved.items():
        module.momentum = momentum


def random_yolov7(num_classes: int, seed: int, calibration_size: int = 256) -> YOLOv7:
    """A deterministic random YOLOv7 whose features keep their scale (see :func:`calibrate_batchnorm`)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = YOLOv7(num_classes)
        # smooth colour noise: a data-free calibration batch with image-like statistics
        coarse = torch.rand(4, 3, 12, 12)
        images = F.interpolate(coarse, size=calibration_size, mode="bilinear", align_corners=False)
        images = (images + 0.1 * torch.rand_like(images)).clamp(0, 1)
        calibrate_batchnorm(model, images)
    return model


def build_yolov7(weights: str | os.PathLike | None, num_classes: int = 80, seed: int = 0) -> YOLOv7:
    """YOLOv7 from a local checkpoint (official ``yolov7.pt`` or a state dict), or random with a warning."""
    if weights is None:
        warnings.warn(RANDOM_WEIGHTS_WARNING, stacklevel=3)
        return random_yolov7(num_classes, seed)
    state_dict = load_yolov7_state_dict(weights)
    model = YOLOv7(num_classes_from_state_dict(state_dict))
    model.load_state_dict({key: value.float() for key, value in state_dict.items()}, strict=True)
    return model


class YOLOv7Detector:
    """``detector(image_rgb_uint8) -> Detections``; ``detector.backbone_features(image)`` for the map alone."""

    def __init__(
        self,
        weights: str | os.PathLike | None = None,
        img_size: int = 640,
        conf_threshold: float = 0.25,
        iou_threshold: float = 0.45,
        device: str | torch.device | None = None,
        num_classes: int = 80,
        seed: int = 0,
    ):
        self.device = device if isinstance(device, torch.device) else resolve_device(device)
        self.img_size = img_size
        self.conf_threshold = conf_threshold
        self.iou_threshold = iou_threshold
        self.model = build_yolov7(weights, num_classes, seed).to(self.device).eval()

    def _prepare(self, image: np.ndarray) -> tuple[torch.Tensor, Letterbox]:
        if image.dtype != np.uint8:
            raise InputError(f"expected an RGB uint8 image, got dtype {image.dtype}")
        padded, letterbox = letterbox_image(image, self.img_size)
        return image_to_tensor(padded).to(self.device), letterbox

    @torch.no_grad()
    def __call__(self, image: np.ndarray) -> Detections:
        tensor, letterbox = self._prepare(image)
        prediction, features = self.model(tensor)
        rows = non_max_suppression(prediction, self.conf_threshold, self.iou_threshold)[0]
        return Detections(
            boxes=letterbox.to_original(rows[:, :4]),
            scores=rows[:, 4],
            classes=rows[:, 5].long(),
            features=features,
            letterbox=letterbox,
        )

    @torch.no_grad()
    def backbone_features(self, image: np.ndarray) -> tuple[torch.Tensor, Letterbox]:
        """The SPPCSPC map ``[1, 512, S/32, S/32]`` of one image (layers 0..51 only) and its letterbox."""
        tensor, letterbox = self._prepare(image)
        return self.model.forward_backbone(tensor), letterbox
