"""Colour-agnostic augmentation for garment/equipment retrieval, and a preview tool.

The same item can be dyed any colour, so the training views destroy colour cues (grey,
channel shuffle, hue rotation, colour jitter, channel dropout) while keeping shape and
texture, plus geometric changes, occlusion and texture enhancement. Every transform uses
albumentations 2.x argument names inside ``Compose(strict=True)``, so a wrong name is an error
instead of a silently ignored argument.

Example::

    python augment_images.py demo_data/garments/train/tshirt_stripes/0000.png \
        --grid 5 5 --output preview_augmentations.jpg
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from pathlib import Path

import albumentations as A
import cv2
import numpy as np
import torch
from albumentations.pytorch import ToTensorV2

from myutils.cli import InputError, non_negative_int, positive_int, run
from myutils.data.image_io import read_image_rgb, write_image_rgb
from myutils.training.seeding import worker_seed

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _size_pair(img_size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(img_size, int):
        return img_size, img_size
    height, width = img_size
    return int(height), int(width)


def colour_agnostic_augmentations(img_size: int | Sequence[int]) -> list[A.BasicTransform]:
    """The augmentation steps of :class:`A2ClothingTransform` (uint8 RGB in, uint8 RGB out)."""
    height, width = _size_pair(img_size)
    hole = (0.08, 0.2)
    return [
        # geometric: crop/scale, then rotation/shear/translation
        A.RandomResizedCrop(size=(height, width), scale=(0.7, 1.0), ratio=(0.8, 1.25)),
        A.HorizontalFlip(p=0.5),
        A.Affine(
            scale=(0.9, 1.1), translate_percent=(-0.05, 0.05), rotate=(-15, 15), shear=(-5, 5),
            border_mode=cv2.BORDER_CONSTANT, fill=0, p=0.5,
        ),
        # colour: one strong colour-destroying operation, then mild jitter on top
        A.OneOf(
            [
                A.ToGray(num_output_channels=3, p=1.0),
                A.ChannelShuffle(p=1.0),
                A.HueSaturationValue(hue_shift_limit=(-180, 180), sat_shift_limit=(-40, 40), val_shift_limit=(-20, 20), p=1.0),
                A.ChannelDropout(channel_drop_range=(1, 1), fill=0, p=1.0),
            ],
            p=0.8,
        ),
        A.ColorJitter(brightness=(0.7, 1.3), contrast=(0.7, 1.3), saturation=(0.5, 1.5), hue=(-0.5, 0.5), p=0.5),
        A.RandomGamma(gamma_limit=(80, 120), p=0.2),
        # texture: make patterns and edges stand out when colour is gone
        A.OneOf(
            [
                A.Sharpen(alpha=(0.2, 0.5), lightness=(0.5, 1.0), p=1.0),
                A.Emboss(alpha=(0.2, 0.5), strength=(0.2, 0.7), p=1.0),
                A.CLAHE(clip_limit=(1.0, 4.0), tile_grid_size=(8, 8), p=1.0),
            ],
            p=0.3,
        ),
        # occlusion: the item is often partly hidden
        A.OneOf(
            [
                A.CoarseDropout(num_holes_range=(1, 4), hole_height_range=hole, hole_width_range=hole, fill=0, p=1.0),
                A.GridDropout(ratio=0.3, unit_size_range=(max(2, height // 8), max(3, height // 4)), fill=0, p=1.0),
            ],
            p=0.3,
        ),
    ]


def normalize_to_tensor(mean: Sequence[float], std: Sequence[float]) -> A.Compose:
    return A.Compose([A.Normalize(mean=tuple(mean), std=tuple(std)), ToTensorV2()], strict=True)


class A2ClothingTransform:
    """Training augmentation: uint8 RGB ``[H, W, 3]`` → normalised float tensor ``[3, h, w]``.

    ``mean``/``std`` should come from the timm model's data config (``EmbeddingModel.config``);
    ``tf_efficientnetv2_*`` expects 0.5/0.5, not ImageNet's. :meth:`set_seed` makes the stream of
    random augmentations reproducible (NumPy's global seed has no effect on albumentations 2.x).
    """

    def __init__(
        self,
        img_size: int | Sequence[int] = 224,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        seed: int | None = None,
    ):
        self.augment = A.Compose(colour_agnostic_augmentations(img_size), strict=True, seed=seed)
        self.to_tensor = normalize_to_tensor(mean, std)

    def set_seed(self, seed: int) -> None:
        self.augment.set_random_seed(seed)

    def augment_image(self, image: np.ndarray) -> np.ndarray:
        """The augmented uint8 image (before normalisation), e.g. for previews."""
        return self.augment(image=image)["image"]

    def __call__(self, image: np.ndarray) -> torch.Tensor:
        return self.to_tensor(image=self.augment_image(image))["image"]


class MultiViewTransform:
    """``n_views`` independent augmentations of one image, stacked: ``[n_views, 3, h, w]``."""

    def __init__(self, transform: A2ClothingTransform, n_views: int = 2):
        if n_views < 1:
            raise InputError(f"n_views must be at least 1, got {n_views}")
        self.transform = transform
        self.n_views = n_views

    def set_seed(self, seed: int) -> None:
        self.transform.set_seed(seed)

    def __call__(self, image: np.ndarray) -> torch.Tensor:
        return torch.stack([self.transform(image) for _ in range(self.n_views)])


class EvalTransform:
    """Deterministic resize + normalisation matching :class:`A2ClothingTransform`'s output."""

    def __init__(self, img_size: int | Sequence[int], mean: Sequence[float], std: Sequence[float]):
        height, width = _size_pair(img_size)
        self.pipeline = A.Compose(
            [A.Resize(height=height, width=width), A.Normalize(mean=tuple(mean), std=tuple(std)), ToTensorV2()],
            strict=True,
        )

    def __call__(self, image: np.ndarray) -> torch.Tensor:
        return self.pipeline(image=image)["image"]


def seed_worker_augmentation(worker_id: int, base_seed: int, rank: int) -> None:
    """DataLoader ``worker_init_fn`` (via ``functools.partial``): a distinct augmentation stream per worker."""
    dataset = torch.utils.data.get_worker_info().dataset
    dataset.transform.set_seed(worker_seed(base_seed, worker_id, rank))


def preview_augmentations(
    image_path: str | os.PathLike,
    grid_size: tuple[int, int] = (5, 5),
    output_path: str | os.PathLike = "preview_augmentations.jpg",
    show: bool = True,
    img_size: int = 224,
    seed: int = 0,
) -> Path:
    """Write a ``rows × cols`` grid of augmented versions of one image (the first cell is the original)."""
    image = read_image_rgb(image_path)
    if image is None:
        raise InputError(f"cannot read image: {image_path}")
    rows, cols = grid_size
    if rows < 1 or cols < 1:
        raise InputError(f"grid_size must be positive, got {grid_size}")
    transform = A2ClothingTransform(img_size, seed=seed)
    original = cv2.resize(image, (img_size, img_size), interpolation=cv2.INTER_AREA)
    tiles = [original] + [transform.augment_image(image) for _ in range(rows * cols - 1)]
    grid = np.concatenate([np.concatenate(tiles[r * cols : (r + 1) * cols], axis=1) for r in range(rows)], axis=0)
    output_path = Path(output_path)
    write_image_rgb(output_path, grid)
    if show:
        import matplotlib.pyplot as plt

        plt.figure(figsize=(2 * cols, 2 * rows))
        plt.imshow(grid)
        plt.axis("off")
        plt.show()
    return output_path


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Preview the colour-agnostic training augmentation of one image.")
    parser.add_argument("image", help="path of the image to augment")
    parser.add_argument("--grid", type=positive_int, nargs=2, default=(5, 5), metavar=("ROWS", "COLS"),
                        help="grid of augmented copies; the first cell is the original (default: 5 5)")
    parser.add_argument("--output", default="preview_augmentations.jpg",
                        help="where to write the grid image (default: preview_augmentations.jpg)")
    parser.add_argument("--img_size", type=positive_int, default=224, help="side length of each cell in pixels (default: 224)")
    parser.add_argument("--seed", type=non_negative_int, default=0, help="augmentation seed, for a reproducible grid (default: 0)")
    parser.add_argument("--show", action="store_true", help="also open the grid in a matplotlib window")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    path = preview_augmentations(args.image, tuple(args.grid), args.output, args.show, args.img_size, args.seed)
    print(f"wrote {path}")


if __name__ == "__main__":
    run(main)
