"""Procedurally drawn garments for demos and tests: the class is shape × pattern, colour is random.

Every image shows one garment silhouette (t-shirt, trousers, dress, skirt, cap, bag) filled with
a two-colour pattern (stripes, dots, checks) on a random background, with random position,
scale, rotation and pattern phase. Colours are drawn independently per image, so a model can
only retrieve the right class by ignoring colour: the situation the colour-agnostic
augmentation is built for.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from myutils.cli import InputError
from myutils.data.image_io import write_image_rgb


def _arc(cx: float, cy: float, rx: float, ry: float, start: float, stop: float, n: int = 12) -> list:
    angles = np.linspace(np.radians(start), np.radians(stop), n)
    return [(cx + rx * np.cos(a), cy - ry * np.sin(a)) for a in angles]


# outlines in unit coordinates (x right, y down), roughly filling [0.1, 0.9]²
SHAPES: dict[str, list[tuple[float, float]]] = {
    "tshirt": [(0.3, 0.15), (0.42, 0.12), (0.5, 0.18), (0.58, 0.12), (0.7, 0.15), (0.92, 0.36), (0.8, 0.46),
               (0.72, 0.38), (0.72, 0.88), (0.28, 0.88), (0.28, 0.38), (0.2, 0.46), (0.08, 0.36)],
    "trousers": [(0.3, 0.1), (0.7, 0.1), (0.8, 0.9), (0.58, 0.9), (0.5, 0.4), (0.42, 0.9), (0.2, 0.9)],
    "dress": [(0.4, 0.1), (0.6, 0.1), (0.62, 0.35), (0.86, 0.9), (0.14, 0.9), (0.38, 0.35)],
    "skirt": [(0.32, 0.28), (0.68, 0.28), (0.9, 0.78), (0.1, 0.78)],
    "cap": _arc(0.5, 0.62, 0.3, 0.36, 0, 180) + [(0.1, 0.62), (0.1, 0.7), (0.9, 0.7), (0.9, 0.62)],
    "bag": [(0.15, 0.42), (0.3, 0.42)] + _arc(0.5, 0.42, 0.2, 0.3, 180, 0) + [(0.7, 0.42), (0.85, 0.42),
           (0.85, 0.88), (0.15, 0.88)],
}
PATTERNS = ("stripes", "dots", "checks")
GENERATOR_VERSION = 1  # bump whenever a change here draws different images for the same arguments


def _pattern_mask(pattern: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """Boolean ``[size, size]`` map of the pattern's second colour."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    period = rng.uniform(0.12, 0.2)
    phase_x, phase_y = rng.uniform(0, period, 2)
    if pattern == "stripes":
        angle = rng.uniform(0, np.pi)
        along = x * np.cos(angle) + y * np.sin(angle) + phase_x
        return np.mod(along, period) < period / 2
    if pattern == "dots":
        dx = np.mod(x + phase_x, period) - period / 2
        dy = np.mod(y + phase_y, period) - period / 2
        return dx**2 + dy**2 < (period * 0.3) ** 2
    if pattern == "checks":
        return (np.floor((x + phase_x) / period) + np.floor((y + phase_y) / period)) % 2 == 0
    raise InputError(f"unknown pattern {pattern!r}; choose from {PATTERNS}")


def render_garment(shape: str, pattern: str, rng: np.random.Generator, img_size: int = 64) -> np.ndarray:
    """One RGB uint8 image ``[img_size, img_size, 3]`` of ``shape`` filled with ``pattern``."""
    if shape not in SHAPES:
        raise InputError(f"unknown shape {shape!r}; choose from {sorted(SHAPES)}")
    scale = 2  # draw at twice the size, then downsample: smooth edges
    size = img_size * scale
    outline = np.asarray(SHAPES[shape], dtype=np.float32) - 0.5
    angle = np.radians(rng.uniform(-15, 15))
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]], dtype=np.float32)
    outline = outline @ rotation.T * rng.uniform(0.75, 1.0) + 0.5 + rng.uniform(-0.08, 0.08, 2)
    mask = np.zeros((size, size), dtype=np.uint8)
    cv2.fillPoly(mask, [np.round(outline * size).astype(np.int32)], 1)

    background, colour_a, colour_b = rng.integers(0, 256, (3, 3))
    image = np.empty((size, size, 3), dtype=np.uint8)
    image[:] = background
    second = _pattern_mask(pattern, size, rng)
    image[(mask == 1) & ~second] = colour_a
    image[(mask == 1) & second] = colour_b
    return cv2.resize(image, (img_size, img_size), interpolation=cv2.INTER_AREA)


def garment_class_names(shapes: Sequence[str] | None = None, patterns: Sequence[str] | None = None) -> list[str]:
    return [f"{shape}_{pattern}" for shape in (shapes or SHAPES) for pattern in (patterns or PATTERNS)]


def generate_garment_dataset(
    root: str | os.PathLike,
    images_per_class: int = 30,
    img_size: int = 64,
    seed: int = 0,
    shapes: Sequence[str] | None = None,
    patterns: Sequence[str] | None = None,
) -> list[str]:
    """Write ``root/<shape>_<pattern>/NNNN.png`` for every class; returns the class names."""
    if images_per_class < 1:
        raise InputError(f"images_per_class must be positive, got {images_per_class}")
    rng = np.random.default_rng(seed)
    names = garment_class_names(shapes, patterns)
    for name in names:
        shape, pattern = name.rsplit("_", 1)
        for i in range(images_per_class):
            write_image_rgb(Path(root) / name / f"{i:04d}.png", render_garment(shape, pattern, rng, img_size))
    return names
