"""A usable YOLOv7 detector: letterbox, one forward pass per batch of frames, NMS, boxes in original pixels.

Scoring and NMS follow the official ``detect.py``: candidates need objectness > threshold; the
score is objectness x class probability (objectness alone for one-class models); at most 30,000
candidates go into NMS (the best-scoring), class-aware unless ``agnostic``, and ``max_det``
detections per image come out. The same forward pass also yields the SPPCSPC feature map, so
appearance features for the detected boxes cost only an ROI align on top of detection.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import nms

from myutils.cli import InputError
from myutils.detection.letterbox import Letterbox, images_to_tensor, letterbox_image
from myutils.detection.yolov7 import YOLOv7
from myutils.detection.yolov7_checkpoint import load_yolov7_checkpoint
from myutils.training.precision import resolve_device

RANDOM_WEIGHTS_WARNING = (
    "YOLOv7 has no weights (--yolo_weights not given): features come from a randomly initialised "
    "network. That is fine for tests and demos on synthetic data, useless for real data."
)
MAX_NMS_CANDIDATES = 30_000  # official: boxes into torchvision.ops.nms
DEFAULT_MAX_DETECTIONS = 300  # official max_det
CLASS_OFFSET = 4096.0  # official max_wh: per-class NMS in one call, boxes of class c shifted by c * offset


def xywh_to_xyxy(boxes: torch.Tensor) -> torch.Tensor:
    cx, cy, w, h = boxes.unbind(-1)
    return torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=-1)


def nonempty_boxes(boxes_xyxy):
    """Which boxes ``[N, 4]`` (tensor or array) have a positive width and height."""
    return (boxes_xyxy[:, 2] > boxes_xyxy[:, 0]) & (boxes_xyxy[:, 3] > boxes_xyxy[:, 1])


def non_max_suppression(
    prediction: torch.Tensor,
    conf_threshold: float = 0.25,
    iou_threshold: float = 0.45,
    classes: Sequence[int] | None = None,
    agnostic: bool = False,
    max_detections: int = DEFAULT_MAX_DETECTIONS,
    max_candidates: int = MAX_NMS_CANDIDATES,
) -> list[torch.Tensor]:
    """Per image ``[K, 6]`` rows ``x1, y1, x2, y2, score, class`` from decoded YOLO output ``[B, N, 5 + nc]``.

    score = objectness x best class probability, or objectness alone when ``nc == 1``; rows of
    other ``classes`` dropped; the ``max_candidates`` best into NMS (per class unless
    ``agnostic``); at most ``max_detections`` kept, best first.
    """
    results = []
    for pred in prediction:
        pred = pred[pred[:, 4] > conf_threshold].float()
        num_classes = pred.shape[1] - 5
        class_scores = pred[:, 4:5] if num_classes <= 1 else pred[:, 5:] * pred[:, 4:5]
        scores, labels = class_scores.max(dim=1)
        keep = scores > conf_threshold
        if classes is not None:
            keep &= torch.isin(labels, torch.as_tensor(list(classes), device=labels.device))
        boxes, scores, labels = xywh_to_xyxy(pred[keep, :4]), scores[keep], labels[keep]
        if len(scores) > max_candidates:
            best = scores.argsort(descending=True)[:max_candidates]
            boxes, scores, labels = boxes[best], scores[best], labels[best]
        if not agnostic:  # classes apart by an offset (as official: 4096 px, more for larger boxes)
            offset = max(CLASS_OFFSET, float(boxes.max()) + 1 if len(boxes) else 0.0)
            kept = nms(boxes + labels[:, None].to(boxes.dtype) * offset, scores, iou_threshold)
        else:
            kept = nms(boxes, scores, iou_threshold)
        kept = kept[:max_detections]
        results.append(torch.cat([boxes[kept], scores[kept, None], labels[kept, None].float()], dim=1))
    return results


@dataclass
class Detections:
    """Detections of one image: boxes in ORIGINAL pixels and the SPPCSPC map of the same pass."""

    boxes: torch.Tensor  # [N, 4] xyxy
    scores: torch.Tensor  # [N]
    classes: torch.Tensor  # [N] int64
    features: torch.Tensor  # [1, 512, h, w]
    letterbox: Letterbox

    def nonempty(self) -> Detections:
        """Without the boxes of zero area (those lying in the letterbox padding, clipped to a line)."""
        keep = nonempty_boxes(self.boxes)
        return Detections(self.boxes[keep], self.scores[keep], self.classes[keep], self.features, self.letterbox)


class BackboneFeatures(NamedTuple):
    """The SPPCSPC map ``[1, 512, S/32, S/32]`` of one image and its letterbox geometry."""

    features: torch.Tensor
    letterbox: Letterbox


def smooth_random_images(batch: int, size: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """``[batch, 3, size, size]`` smooth colour noise in [0, 1]: data-free inputs with image-like statistics."""
    coarse = torch.rand(batch, 3, 12, 12, generator=generator)
    images = F.interpolate(coarse, size=size, mode="bilinear", align_corners=False)
    return (images + 0.1 * torch.rand(images.shape, generator=generator)).clamp(0, 1)


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
        calibrate_batchnorm(model, smooth_random_images(4, calibration_size))
    return model


def build_yolov7(
    weights: str | os.PathLike | None, num_classes: int = 80, seed: int = 0, log: Callable[[str], None] | None = print
) -> YOLOv7:
    """YOLOv7 from a local checkpoint in any form (official pickle or state dict), or random with a warning.

    ``log`` gets one line with the form, class count and parameter count found in the file.
    """
    if weights is None:
        warnings.warn(RANDOM_WEIGHTS_WARNING, stacklevel=3)
        return random_yolov7(num_classes, seed)
    loaded = load_yolov7_checkpoint(weights)
    if log is not None:
        log(loaded.summary(weights))
    return loaded.model


class YOLOv7Detector:
    """``detector(frame) -> Detections`` or ``detector([frames]) -> [Detections]`` (one forward per batch).

    ``detector.backbone_features(frame or frames)`` gives the SPPCSPC map alone (layers 0..51).
    ``half=True`` runs in fp16 (CUDA only, as the official ``--half``).
    """

    def __init__(
        self,
        weights: str | os.PathLike | None = None,
        img_size: int = 640,
        conf_threshold: float = 0.25,
        iou_threshold: float = 0.45,
        device: str | torch.device | None = None,
        num_classes: int = 80,
        seed: int = 0,
        classes: Sequence[int] | None = None,
        agnostic: bool = False,
        max_detections: int = DEFAULT_MAX_DETECTIONS,
        half: bool = False,
        log: Callable[[str], None] | None = print,
    ):
        self.device = device if isinstance(device, torch.device) else resolve_device(device)
        if half and self.device.type != "cuda":
            raise InputError(f"--half (fp16 inference) needs a CUDA device, not {self.device}")
        if img_size <= 0 or img_size % 32:
            raise InputError(f"--img_size must be a positive multiple of 32 (the network stride), got {img_size}")
        if classes is not None and (not classes or min(classes) < 0):
            raise InputError(f"--classes needs class ids >= 0, got {list(classes)}")
        self.img_size = img_size
        self.conf_threshold = conf_threshold
        self.iou_threshold = iou_threshold
        self.classes = None if classes is None else sorted(set(int(c) for c in classes))
        self.agnostic = agnostic
        self.max_detections = max_detections
        self.dtype = torch.float16 if half else torch.float32
        model = build_yolov7(weights, num_classes, seed, log)
        if self.classes is not None and self.classes[-1] >= model.num_classes:
            raise InputError(f"--classes {self.classes[-1]}: the weights have {model.num_classes} classes "
                             f"(ids 0..{model.num_classes - 1})")
        self.model = model.to(self.device, self.dtype).eval()

    @property
    def num_classes(self) -> int:
        return self.model.num_classes

    def _prepare(self, images: Sequence[np.ndarray]) -> tuple[torch.Tensor, list[Letterbox]]:
        padded, letterboxes = [], []
        for image in images:
            if not isinstance(image, np.ndarray) or image.dtype != np.uint8:
                raise InputError(f"expected RGB uint8 images, got {getattr(image, 'dtype', type(image))}")
            canvas, letterbox = letterbox_image(image, self.img_size)
            padded.append(canvas)
            letterboxes.append(letterbox)
        return images_to_tensor(padded).to(self.device, self.dtype), letterboxes

    @torch.no_grad()
    def __call__(self, images: np.ndarray | Sequence[np.ndarray]) -> Detections | list[Detections]:
        """Detections of one RGB uint8 frame, or a list of them for a list of frames (one forward pass)."""
        single = isinstance(images, np.ndarray) and images.ndim == 3
        batch = [images] if single else list(images)
        if not batch:
            return []
        tensor, letterboxes = self._prepare(batch)
        prediction, features = self.model(tensor)
        rows = non_max_suppression(prediction, self.conf_threshold, self.iou_threshold, self.classes,
                                   self.agnostic, self.max_detections)
        results = [
            Detections(
                boxes=letterbox.to_original(found[:, :4]),
                scores=found[:, 4],
                classes=found[:, 5].long(),
                features=features[i : i + 1],
                letterbox=letterbox,
            )
            for i, (found, letterbox) in enumerate(zip(rows, letterboxes, strict=True))
        ]
        return results[0] if single else results

    @torch.no_grad()
    def backbone_features(
        self, images: np.ndarray | Sequence[np.ndarray]
    ) -> BackboneFeatures | list[BackboneFeatures]:
        """The SPPCSPC map ``[1, 512, S/32, S/32]`` and letterbox of one frame (or a list, one pass)."""
        single = isinstance(images, np.ndarray) and images.ndim == 3
        batch = [images] if single else list(images)
        if not batch:
            return []
        tensor, letterboxes = self._prepare(batch)
        features = self.model.forward_backbone(tensor)
        results = [BackboneFeatures(features[i : i + 1], letterbox) for i, letterbox in enumerate(letterboxes)]
        return results[0] if single else results
