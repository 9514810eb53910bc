"""A generated per-pixel classification task, a tiny segmentation network and its scores.

Used by the prototype-memory demo: images of noisy striped shapes whose class is the stripe orientation
(horizontal = 1, vertical = 2, background = 0), all at the same mean brightness, so a pixel's class can
only be read from its neighbourhood's texture.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn


def make_striped_shapes(num_images: int, size: int = 32, noise: float = 0.8, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Images [n, 1, size, size] and masks [n, size, size] with one to three striped rectangles each."""
    rng = np.random.default_rng(seed)
    images = rng.normal(0.0, noise, size=(num_images, size, size)).astype(np.float32)
    masks = np.zeros((num_images, size, size), dtype=np.int64)
    rows, cols = np.mgrid[0:size, 0:size]
    for index in range(num_images):
        for _ in range(rng.integers(1, 4)):
            height, width = rng.integers(size // 4, size // 2 + 1, size=2)
            top, left = rng.integers(0, size - height + 1), rng.integers(0, size - width + 1)
            class_id = int(rng.integers(1, 3))
            period = int(rng.integers(3, 6))
            along = rows if class_id == 1 else cols  # horizontal stripes vary along rows
            stripes = np.where((along // (period // 2 + 1)) % 2 == 0, 1.0, -1.0)
            box = (slice(top, top + height), slice(left, left + width))
            images[index][box] += stripes[box]
            masks[index][box] = class_id
    return torch.from_numpy(images[:, None]), torch.from_numpy(masks)


class TinySegNet(nn.Module):
    """Dilated 3x3 convolutions at full resolution; a 1x1 classifier and a 1x1 projection head."""

    def __init__(self, num_classes: int = 3, width: int = 24, embed_dim: int = 16, in_channels: int = 1):
        super().__init__()
        layers, channels = [], in_channels
        for dilation in (1, 2, 1):
            layers += [nn.Conv2d(channels, width, 3, padding=dilation, dilation=dilation), nn.BatchNorm2d(width), nn.ReLU()]
            channels = width
        self.body = nn.Sequential(*layers)
        self.classifier = nn.Conv2d(width, num_classes, 1)
        self.projection = nn.Sequential(nn.Conv2d(width, width, 1), nn.ReLU(), nn.Conv2d(width, embed_dim, 1))

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """(logits [B, C, H, W], projected features [B, embed_dim, H, W])."""
        hidden = self.body(images)
        return self.classifier(hidden), self.projection(hidden)


def mean_iou(predicted: Tensor, target: Tensor, num_classes: int) -> float:
    """Mean over classes present in ``target`` or ``predicted`` of |P ∩ T| / |P ∪ T|."""
    confusion = torch.bincount(target.reshape(-1) * num_classes + predicted.reshape(-1), minlength=num_classes**2)
    confusion = confusion.reshape(num_classes, num_classes).double()
    intersection = confusion.diag()
    union = confusion.sum(0) + confusion.sum(1) - intersection
    present = union > 0
    return float((intersection[present] / union[present]).mean())


def centroid_margin(features: Tensor, labels: Tensor, num_classes: int) -> float:
    """Class separation of features [N, D]: mean of cos(own centroid) − max cos(other centroids).

    Ranges over [−2, 2]; higher means each feature sits closer to its class centre than to any other.
    """
    unit = F.normalize(features.float(), dim=1)
    centroids = F.normalize(torch.stack([unit[labels == c].mean(0) for c in range(num_classes)]), dim=1)
    cosine = unit @ centroids.T
    own = cosine.gather(1, labels[:, None]).squeeze(1)
    others = cosine.masked_fill(F.one_hot(labels, num_classes).bool(), float("-inf")).max(1).values
    return float((own - others).mean())
