"""Image reading that works with non-ASCII paths and reports unreadable files instead of crashing."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from myutils.cli import InputError

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"})


def size_pair(size: int | Sequence[int]) -> tuple[int, int]:
    """``(height, width)`` from a side length or a pair."""
    if isinstance(size, int):
        return size, size
    height, width = size
    return int(height), int(width)


def is_image_file(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def read_image_rgb(path: str | os.PathLike) -> np.ndarray | None:
    """Read an image as RGB uint8 ``[H, W, 3]``; ``None`` when missing, empty or undecodable.

    ``cv2.imread`` fails on non-ASCII paths on some platforms, so the bytes are read
    with NumPy and decoded with ``cv2.imdecode``.
    """
    try:
        data = np.fromfile(str(path), dtype=np.uint8)
    except OSError:
        return None
    if data.size == 0:
        return None
    image = cv2.imdecode(data, cv2.IMREAD_COLOR)
    if image is None:
        return None
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def write_image_rgb(path: str | os.PathLike, image: np.ndarray) -> None:
    """Write an RGB uint8 image (any path, unicode included); the format follows the suffix."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ok, encoded = cv2.imencode(path.suffix or ".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    if not ok:
        raise InputError(f"could not encode image for {path}")
    encoded.tofile(str(path))
