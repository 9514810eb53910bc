"""Whole-case prediction: slice by slice for a 2-D network (SS-Net's ``test_single_volume``), sliding
windows with averaged softmax for a 3-D one (SS-Net's ``test_single_case``)."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

from myutils.segmentation.data import zoom_to

LogitsFn = Callable[[Tensor], Tensor]  # [B, 1, *patch] -> [B, C, *patch]


def window_starts(size: int, patch: int, stride: int) -> list[int]:
    """SS-Net's window positions: ``min(stride·i, size − patch)`` for ``i`` up to ``ceil((size − patch)/stride)``."""
    count = math.ceil((size - patch) / stride) + 1
    return sorted({min(stride * i, size - patch) for i in range(count)})


@torch.no_grad()
def sliding_window_probabilities(logits_fn: LogitsFn, image: np.ndarray, patch: tuple[int, ...],
                                 strides: tuple[int, ...], num_classes: int, device: torch.device) -> np.ndarray:
    """Softmax probabilities [C, *image.shape], each voxel the mean over the windows covering it; the
    volume is zero-padded (centred) to at least the patch size, as SS-Net does."""
    pad = [(max(p - s, 0) // 2, max(p - s, 0) - max(p - s, 0) // 2) for p, s in zip(patch, image.shape, strict=True)]
    padded = torch.from_numpy(np.pad(image.astype(np.float32), pad)).to(device)
    scores = torch.zeros((num_classes, *padded.shape), device=device)
    counts = torch.zeros(padded.shape, device=device)
    grids = [window_starts(s, p, st) for s, p, st in zip(padded.shape, patch, strides, strict=True)]
    for corner in np.stack(np.meshgrid(*grids, indexing="ij"), -1).reshape(-1, len(patch)):
        window = tuple(slice(int(c), int(c) + p) for c, p in zip(corner, patch, strict=True))
        probabilities = logits_fn(padded[window][None, None]).float().softmax(1)[0]
        scores[(slice(None), *window)] += probabilities
        counts[window] += 1
    crop = tuple(slice(before, before + s) for (before, _), s in zip(pad, image.shape, strict=True))
    return (scores[(slice(None), *crop)] / counts[crop]).cpu().numpy()


@torch.no_grad()
def predict_slices(logits_fn: LogitsFn, image: np.ndarray, patch: tuple[int, int], device: torch.device) -> np.ndarray:
    """Class map of a 2-D image [H, W] or of each slice of a volume [D, H, W]: each slice zoomed to the patch
    size (bilinear), predicted, the class map zoomed back (nearest)."""
    slices = image[None] if image.ndim == 2 else image
    prediction = np.zeros(slices.shape, dtype=np.int64)
    for index, plane in enumerate(slices):
        resized = torch.from_numpy(zoom_to(plane.astype(np.float32), patch, order=1)).to(device)
        classes = logits_fn(resized[None, None]).argmax(1)[0].cpu().numpy()
        prediction[index] = zoom_to(classes, plane.shape, order=0)
    return prediction[0] if image.ndim == 2 else prediction


def predict_case(logits_fn: LogitsFn, image: np.ndarray, patch: tuple[int, ...], strides: tuple[int, ...],
                 num_classes: int, device: torch.device) -> np.ndarray:
    """The class map of one evaluation case with the patch's dimensionality deciding 2-D or 3-D inference."""
    if len(patch) == 2:
        return predict_slices(logits_fn, image, patch, device)
    return sliding_window_probabilities(logits_fn, image, patch, strides, num_classes, device).argmax(0)
