"""Class-folder datasets: ``root/<class_name>/<images>``, every sub-folder a class."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from myutils.cli import InputError
from myutils.data.image_io import is_image_file, read_image_rgb


@dataclass(frozen=True)
class ImageRecord:
    path: str
    label: int


def require_data_root(root: str | os.PathLike) -> Path:
    """``root`` as a ``Path``; a clear error when it is missing or not a directory."""
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"data root does not exist: {root}")
    if not root.is_dir():
        raise NotADirectoryError(f"data root is not a directory: {root}")
    return root


def list_class_folders(root: str | os.PathLike) -> list[str]:
    """Sorted names of the sub-folders of ``root`` (hidden ones excluded); clear errors for a bad root."""
    root = require_data_root(root)
    classes = sorted(entry.name for entry in root.iterdir() if entry.is_dir() and not entry.name.startswith("."))
    if not classes:
        raise InputError(f"no class folders found in {root} (expected root/<class_name>/<images>)")
    return classes


def _image_files(folder: Path) -> list[str]:
    """Image files below ``folder`` (recursive), sorted."""
    return sorted(
        str(Path(dirpath) / name) for dirpath, _, names in os.walk(folder) for name in names if is_image_file(name)
    )


def scan_image_folder(
    root: str | os.PathLike, class_names: Sequence[str] | None = None
) -> tuple[list[ImageRecord], list[str]]:
    """All image files below ``root/<class>/`` with integer labels.

    A folder without any image file is not a class. ``class_names`` fixes the label order (for a
    validation or query folder that must share the gallery's labels); folders not in it are ignored.
    """
    root = Path(root)
    files = {name: _image_files(root / name) for name in list_class_folders(root)}
    files = {name: paths for name, paths in files.items() if paths}
    names = list(class_names) if class_names is not None else sorted(files)
    index = {name: i for i, name in enumerate(names)}
    records = [ImageRecord(path, index[name]) for name, paths in files.items() if name in index for path in paths]
    if not records:
        raise InputError(f"no images found below {root}")
    records.sort(key=lambda record: (record.label, record.path))
    return records, names


def split_per_class(
    records: Sequence[ImageRecord], val_fraction: float, seed: int
) -> tuple[list[ImageRecord], list[ImageRecord]]:
    """Hold out ``val_fraction`` of each class (at least one image, never a class's only image)."""
    if not 0.0 <= val_fraction < 1.0:
        raise InputError(f"val_fraction must be in [0, 1), got {val_fraction}")
    rng = np.random.default_rng(seed)
    by_label: dict[int, list[ImageRecord]] = {}
    for record in records:
        by_label.setdefault(record.label, []).append(record)
    train, val = [], []
    for label in sorted(by_label):
        items = by_label[label]
        order = rng.permutation(len(items))
        n_val = 0 if val_fraction == 0 or len(items) < 2 else max(1, round(len(items) * val_fraction))
        n_val = min(n_val, len(items) - 1)
        val.extend(items[i] for i in order[:n_val])
        train.extend(items[i] for i in order[n_val:])
    return train, val


class ImageFolderDataset(Dataset):
    """Images of a class folder; unreadable images are skipped and reported, never fatal.

    ``transform`` maps an RGB uint8 array to a tensor (or a tuple of views). An unreadable file
    yields ``(None, label, index)``; :func:`collate_skip_none` drops it from the batch and returns
    its index, so the caller can name the file (this works with worker processes too).
    """

    def __init__(self, records: Sequence[ImageRecord], transform: Callable[[np.ndarray], object]):
        self.records = list(records)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.records)

    @property
    def labels(self) -> list[int]:
        return [record.label for record in self.records]

    def __getitem__(self, index: int):
        record = self.records[index]
        image = read_image_rgb(record.path)
        return (None if image is None else self.transform(image)), record.label, index


def collate_skip_none(batch):
    """Default collation of the readable items.

    Returns ``(inputs, labels, indices, skipped_indices)``; ``inputs`` is ``None`` when every item
    failed, ``skipped_indices`` (a long tensor) are the dataset indices of the unreadable images.
    """
    kept = [item for item in batch if item[0] is not None]
    skipped = torch.tensor([item[2] for item in batch if item[0] is None], dtype=torch.long)
    if not kept:
        return None, torch.empty(0, dtype=torch.long), torch.empty(0, dtype=torch.long), skipped
    inputs, labels, indices = torch.utils.data.default_collate(kept)
    return inputs, labels, indices, skipped
