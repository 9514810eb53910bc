"""Training augmentation presets (colour-agnostic by default), the evaluation transform, and a preview tool.

The same item can be dyed any colour, so the default training views destroy colour cues (grey,
channel shuffle, hue rotation, colour jitter, channel dropout) while keeping shape and texture,
plus geometric changes, occlusion and texture enhancement. Two lighter presets and two switches
cover domains where some of that is wrong: ``standard`` (crop, flip, light colour jitter),
``light`` (crop only), ``hflip=False`` for text, digits and logos, ``colour_ops=False`` where
colour is the signal. Every transform uses albumentations 2.x argument names inside
``Compose(strict=True)``, so a wrong name is an error instead of a silently ignored argument.

Example::

    python augment_images.py demo_data/garments/train/tshirt_stripes/0000.png \
        --grid 5 5 --output preview_augmentations.jpg --augment standard --no_hflip
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
from PIL import Image

from myutils.cli import InputError, non_negative_int, positive_int, run
from myutils.data.image_io import read_image_rgb, size_pair, write_image_rgb
from myutils.training.seeding import worker_seed

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


AUGMENT_PRESETS = ("colour_agnostic", "standard", "light")
COLOUR_OPS = ("ToGray", "ChannelShuffle", "HueSaturationValue", "ChannelDropout")  # removed by colour_ops=False


def _colour_agnostic(height: int, width: int, hflip: bool, colour_ops: bool) -> list[A.BasicTransform]:
    hole = (0.08, 0.2)
    steps: list[A.BasicTransform] = [
        # geometric: crop/scale, then rotation/shear/translation
        A.RandomResizedCrop(size=(height, width), scale=(0.7, 1.0), ratio=(0.8, 1.25)),
        *([A.HorizontalFlip(p=0.5)] if hflip else []),
        A.Affine(
            scale=(0.9, 1.1), translate_percent=(-0.05, 0.05), rotate=(-15, 15), shear=(-5, 5),
            border_mode=cv2.BORDER_CONSTANT, fill=0, p=0.5,
        ),
    ]
    if colour_ops:  # one strong colour-destroying operation, then mild jitter on top
        steps += [
            A.OneOf(
                [
                    A.ToGray(num_output_channels=3, p=1.0),
                    A.ChannelShuffle(p=1.0),
                    A.HueSaturationValue(hue_shift_limit=(-180, 180), sat_shift_limit=(-40, 40),
                                         val_shift_limit=(-20, 20), p=1.0),
                    A.ChannelDropout(channel_drop_range=(1, 1), fill=0, p=1.0),
                ],
                p=0.8,
            ),
            A.ColorJitter(brightness=(0.7, 1.3), contrast=(0.7, 1.3), saturation=(0.5, 1.5), hue=(-0.5, 0.5), p=0.5),
        ]
    else:
        steps.append(A.RandomBrightnessContrast(brightness_limit=(-0.3, 0.3), contrast_limit=(-0.3, 0.3), p=0.5))
    return steps + [
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


def _standard(height: int, width: int, hflip: bool, colour_ops: bool) -> list[A.BasicTransform]:
    jitter = (A.ColorJitter(brightness=(0.7, 1.3), contrast=(0.7, 1.3), saturation=(0.7, 1.3), hue=(-0.05, 0.05), p=0.8)
              if colour_ops else
              A.RandomBrightnessContrast(brightness_limit=(-0.3, 0.3), contrast_limit=(-0.3, 0.3), p=0.8))
    return [
        A.RandomResizedCrop(size=(height, width), scale=(0.25, 1.0), ratio=(0.75, 4 / 3)),
        *([A.HorizontalFlip(p=0.5)] if hflip else []),
        jitter,
    ]


def _light(height: int, width: int, hflip: bool, colour_ops: bool) -> list[A.BasicTransform]:
    return [A.RandomResizedCrop(size=(height, width), scale=(0.6, 1.0), ratio=(0.75, 4 / 3))]


_PRESET_BUILDERS = {"colour_agnostic": _colour_agnostic, "standard": _standard, "light": _light}


def require_preset(preset: str) -> None:
    """A clear error for an augmentation preset that does not exist."""
    if preset not in _PRESET_BUILDERS:
        raise InputError(f"unknown augmentation preset {preset!r}; choose from {', '.join(AUGMENT_PRESETS)}")


def training_augmentations(
    img_size: int | Sequence[int], preset: str = "colour_agnostic", hflip: bool = True, colour_ops: bool = True
) -> list[A.BasicTransform]:
    """The augmentation steps of a preset (uint8 RGB in, uint8 RGB out).

    - ``colour_agnostic`` (default): resized crop (70-100 %), flip, affine; one colour-destroying
      op (grey, channel shuffle, full hue rotation, channel dropout) 80 % of the time plus colour
      jitter; gamma; sharpen/emboss/CLAHE; coarse or grid dropout.
    - ``standard``: resized crop (25-100 %), flip, light colour jitter (80 %).
    - ``light``: resized crop (60-100 %) only.

    ``hflip=False`` drops the horizontal flip (text, digits, logos); ``colour_ops=False`` drops
    every op that changes hue or saturation (:data:`COLOUR_OPS` and colour jitter; brightness and
    contrast jitter stay).
    """
    require_preset(preset)
    height, width = size_pair(img_size)
    return _PRESET_BUILDERS[preset](height, width, hflip, colour_ops)


def normalize_to_tensor(mean: Sequence[float], std: Sequence[float]) -> A.Compose:
    return A.Compose([A.Normalize(mean=tuple(mean), std=tuple(std)), ToTensorV2()], strict=True)


class A2ClothingTransform:
    """Training augmentation: uint8 RGB ``[H, W, 3]`` → normalised float tensor ``[3, h, w]``.

    ``preset``, ``hflip`` and ``colour_ops`` select the steps (:func:`training_augmentations`).
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
        preset: str = "colour_agnostic",
        hflip: bool = True,
        colour_ops: bool = True,
    ):
        self.augment = A.Compose(training_augmentations(img_size, preset, hflip, colour_ops), strict=True, seed=seed)
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


PIL_INTERPOLATION = {"nearest": Image.Resampling.NEAREST, "bilinear": Image.Resampling.BILINEAR,
                     "bicubic": Image.Resampling.BICUBIC, "lanczos": Image.Resampling.LANCZOS,
                     "box": Image.Resampling.BOX, "hamming": Image.Resampling.HAMMING}


class EvalTransform:
    """timm's evaluation preprocessing: resize, centre crop, normalise (uint8 RGB → ``[3, h, w]``).

    As ``timm.data.create_transform(is_training=False)`` with the model's data config: the image is
    resized with ``interpolation`` (PIL, antialiased) so that it covers ``img_size / crop_pct``
    (shorter side for a square target), then the centre ``img_size`` crop is taken. ``crop_pct=1``
    keeps the whole shorter side. The defaults reproduce a plain square resize of square images.
    """

    def __init__(
        self,
        img_size: int | Sequence[int],
        mean: Sequence[float],
        std: Sequence[float],
        interpolation: str = "bilinear",
        crop_pct: float = 1.0,
    ):
        if interpolation not in PIL_INTERPOLATION:
            raise InputError(f"unknown interpolation {interpolation!r}; choose from {sorted(PIL_INTERPOLATION)}")
        if not 0 < crop_pct <= 1:
            raise InputError(f"crop_pct must be in (0, 1], got {crop_pct}")
        self.size = size_pair(img_size)
        self.resample = PIL_INTERPOLATION[interpolation]
        self.scale_size = tuple(int(np.floor(side / crop_pct)) for side in self.size)
        self.to_tensor = normalize_to_tensor(mean, std)

    @classmethod
    def from_config(cls, config: dict) -> EvalTransform:
        """The transform a model's ``config`` (``EmbeddingModel.config``) asks for."""
        return cls(config["img_size"], config["mean"], config["std"], config.get("interpolation", "bilinear"),
                   config.get("crop_pct", 1.0))

    def resize_and_crop(self, image: np.ndarray) -> np.ndarray:
        """The uint8 ``[h, w, 3]`` crop the network sees (before normalisation)."""
        height, width = image.shape[:2]
        scale = max(self.scale_size[0] / height, self.scale_size[1] / width)
        if self.scale_size[0] == self.scale_size[1]:  # shorter side to scale_size exactly, as torchvision does
            short, long = sorted((height, width))
            resized = (self.scale_size[0], int(self.scale_size[0] * long / short))
            new_h, new_w = resized if height <= width else resized[::-1]
        else:
            new_h, new_w = round(height * scale), round(width * scale)
        pil = Image.fromarray(image).resize((new_w, new_h), self.resample)
        crop_h, crop_w = self.size
        top, left = int(round((new_h - crop_h) / 2.0)), int(round((new_w - crop_w) / 2.0))
        return np.asarray(pil.crop((left, top, left + crop_w, top + crop_h)))

    def __call__(self, image: np.ndarray) -> torch.Tensor:
        return self.to_tensor(image=self.resize_and_crop(image))["image"]


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
    preset: str = "colour_agnostic",
    hflip: bool = True,
    colour_ops: bool = True,
) -> Path:
    """Write a ``rows × cols`` grid of augmented versions of one image (the first cell is the original).

    ``preset``, ``hflip`` and ``colour_ops`` are the training options (:func:`training_augmentations`).
    """
    image = read_image_rgb(image_path)
    if image is None:
        raise InputError(f"cannot read image: {image_path}")
    rows, cols = grid_size
    if rows < 1 or cols < 1:
        raise InputError(f"grid_size must be positive, got {grid_size}")
    transform = A2ClothingTransform(img_size, seed=seed, preset=preset, hflip=hflip, colour_ops=colour_ops)
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
    parser = argparse.ArgumentParser(description="Preview the training augmentation of one image (any preset).")
    parser.add_argument("image", help="path of the image to augment")
    parser.add_argument("--grid", type=positive_int, nargs=2, default=(5, 5), metavar=("ROWS", "COLS"),
                        help="grid of augmented copies; the first cell is the original (default: 5 5)")
    parser.add_argument("--output", default="preview_augmentations.jpg",
                        help="where to write the grid image (default: preview_augmentations.jpg)")
    parser.add_argument("--img_size", type=positive_int, default=224, help="side length of each cell in pixels (default: 224)")
    parser.add_argument("--seed", type=non_negative_int, default=0, help="augmentation seed, for a reproducible grid (default: 0)")
    add_augmentation_arguments(parser)
    parser.add_argument("--show", action="store_true", help="also open the grid in a matplotlib window")
    return parser.parse_args(argv)


def add_augmentation_arguments(parser: argparse.ArgumentParser) -> None:
    """``--augment``, ``--no_hflip`` and ``--no_colour_ops``, shared by this preview and ``train.py``."""
    parser.add_argument("--augment", choices=AUGMENT_PRESETS, default=None,
                        help="training augmentation preset: colour_agnostic (default; grey, channel shuffle, hue "
                             "rotation, channel dropout, jitter, geometry, occlusion, texture), standard (crop, flip, "
                             "light colour jitter) or light (crop only)")
    parser.add_argument("--no_hflip", action="store_true",
                        help="no horizontal flip (text, digits, logos: mirrored is another class)")
    parser.add_argument("--no_colour_ops", action="store_true",
                        help="no op that changes hue or saturation (grey, channel shuffle/dropout, hue rotation, "
                             "colour jitter): for data where colour is the signal")


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    path = preview_augmentations(args.image, tuple(args.grid), args.output, args.show, args.img_size, args.seed,
                                 args.augment or "colour_agnostic", not args.no_hflip, not args.no_colour_ops)
    print(f"wrote {path}")


if __name__ == "__main__":
    run(main)
