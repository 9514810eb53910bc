"""Segmentation data in the layouts SS-Net users have, labelled/unlabelled splits and the two-stream sampler.

Layouts (``root`` is ``--root_path``):

* ``acdc`` (2-D slices, SS-Net's ``BaseDataSets``): ``train_slices.list`` names slices
  ``data/slices/<name>.h5``; ``val.list`` / ``test.list`` name volumes ``data/<case>.h5``. Every h5 holds
  ``image`` (float) and ``label`` (class ids) of the same shape, [H, W] for a slice, [D, H, W] for a volume.
  Slices are grouped into cases by their name (``patient001_frame01_slice_3`` -> ``patient001``), so
  ``--labelnum 3`` labels every slice of the first three patients, as SS-Net's patients-to-slices table does.
* ``la`` (3-D volumes, SS-Net's ``LAHeart``): ``train.list`` / ``test.list`` name cases
  ``2018LA_Seg_Training Set/<name>/mri_norm2.h5`` with ``image`` and ``label`` [W, H, D].
* ``folder`` (2-D images): ``<split>/images/<stem>.png`` and ``<split>/masks/<stem>.png`` (class ids) for
  split ``train`` / ``val`` / ``test``; training images without a mask are unlabelled.

Files that cannot be read, lack ``image``/``label`` or whose shapes disagree are skipped and counted.
Augmentation draws from a generator seeded per sample by the sampler, so a batch depends only on the seed
and the iteration (exact resume, any number of DataLoader workers).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import h5py
import numpy as np
import torch
from scipy import ndimage
from torch.utils.data import Dataset, Sampler

from myutils.cli import InputError
from myutils.data.image_io import is_image_file

LAYOUTS = ("acdc", "la", "folder")
UNLABELLED = 255  # label value of a pixel without annotation (folder images without a mask)
LA_FOLDER = "2018LA_Seg_Training Set"
_SLICE_NAME = re.compile(r"^(?P<case>.*?)(?:_frame\d+)?_slice_?\d+$")


@dataclass(frozen=True)
class Item:
    """One training item (a 2-D slice or image, or a 3-D volume) or one evaluation case."""

    name: str
    image: Path
    mask: Path | None  # folder layout: the mask image; h5 layouts: None (the label is inside the h5)
    case: str


@dataclass
class Split:
    items: list[Item]
    skipped: list[str] = field(default_factory=list)  # "path: reason" of unusable files


def read_list(path: Path) -> list[str]:
    """Names from a list file: one per line, blank lines and ``#`` comments skipped, ``.h5`` dropped."""
    if not path.is_file():
        raise InputError(f"list file not found: {path}")
    names = []
    for line in path.read_text(encoding="utf-8").splitlines():
        name = line.split("#", 1)[0].strip()
        if name:
            names.append(name[:-3] if name.endswith(".h5") else name)
    return names


def case_of_slice(name: str) -> str:
    """The case (patient) a slice belongs to: ``patient001_frame01_slice_3`` -> ``patient001``."""
    match = _SLICE_NAME.match(name)
    return match.group("case") if match else name


def read_h5(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(image float32, label int64) of one h5 case."""
    with h5py.File(path, "r") as handle:
        return np.asarray(handle["image"][()], dtype=np.float32), np.asarray(handle["label"][()]).astype(np.int64)


def read_gray(path: Path) -> np.ndarray | None:
    data = np.fromfile(str(path), dtype=np.uint8)
    return cv2.imdecode(data, cv2.IMREAD_GRAYSCALE) if data.size else None


def read_item(item: Item) -> tuple[np.ndarray, np.ndarray]:
    """(image float32, label int64) of an item; a folder image without mask gets an all-UNLABELLED label."""
    if item.mask is None and item.image.suffix == ".h5":
        return read_h5(item.image)
    image = read_gray(item.image)
    if image is None:
        raise InputError(f"cannot decode image {item.image}")
    if item.mask is None:
        return image.astype(np.float32) / 255.0, np.full(image.shape, UNLABELLED, dtype=np.int64)
    mask = read_gray(item.mask)
    if mask is None:
        raise InputError(f"cannot decode mask {item.mask}")
    return image.astype(np.float32) / 255.0, mask.astype(np.int64)


def _problem(item: Item, ndim: int) -> str | None:
    """Why an item cannot be used, or None. Reads only the h5 headers (or decodes the images)."""
    try:
        if item.image.suffix == ".h5":
            with h5py.File(item.image, "r") as handle:
                if "image" not in handle or "label" not in handle:
                    return "missing 'image' or 'label' dataset"
                image_shape, label_shape = handle["image"].shape, handle["label"].shape
        else:
            image, mask = read_item(item)
            image_shape, label_shape = image.shape, mask.shape
    except (OSError, InputError) as error:
        return f"unreadable ({' '.join(str(error).split())})"
    if image_shape != label_shape:
        return f"image shape {image_shape} differs from label shape {label_shape}"
    if len(image_shape) != ndim:
        return f"expected {ndim}-D data, got shape {image_shape}"
    return None


def _checked(items: list[Item], ndim: int) -> Split:
    split = Split([])
    for item in items:
        problem = _problem(item, ndim)
        if problem is None:
            split.items.append(item)
        else:
            split.skipped.append(f"{item.image}: {problem}")
    return split


def training_items(root: Path, layout: str, list_name: str | None = None) -> Split:
    """The training items of a layout, in list (or name) order, unusable files skipped."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"data root does not exist: {root}")
    if layout == "acdc":
        names = read_list(root / (list_name or "train_slices.list"))
        items = [Item(n, root / "data" / "slices" / f"{n}.h5", None, case_of_slice(n)) for n in names]
        return _checked(items, ndim=2)
    if layout == "la":
        names = read_list(root / (list_name or "train.list"))
        return _checked([Item(n, root / LA_FOLDER / n / "mri_norm2.h5", None, n) for n in names], ndim=3)
    if layout == "folder":
        return _checked(_folder_items(root / "train", masks_required=False), ndim=2)
    raise InputError(f"unknown layout {layout!r}; expected one of {LAYOUTS}")


def evaluation_cases(root: Path, layout: str, list_name: str) -> Split:
    """Cases of a validation/test split: ACDC volumes [D, H, W], LA volumes, or folder images [H, W]."""
    root = Path(root)
    if layout == "acdc":
        return _checked([Item(n, root / "data" / f"{n}.h5", None, n) for n in read_list(root / list_name)], ndim=3)
    if layout == "la":
        return _checked([Item(n, root / LA_FOLDER / n / "mri_norm2.h5", None, n) for n in read_list(root / list_name)],
                        ndim=3)
    split_dir = root / list_name
    if not split_dir.is_dir():
        raise InputError(f"split folder not found: {split_dir}")
    return _checked(_folder_items(split_dir, masks_required=True), ndim=2)


def _folder_items(split_dir: Path, masks_required: bool) -> list[Item]:
    images_dir, masks_dir = split_dir / "images", split_dir / "masks"
    if not images_dir.is_dir():
        raise InputError(f"images folder not found: {images_dir}")
    masks = {p.stem: p for p in masks_dir.iterdir() if is_image_file(p)} if masks_dir.is_dir() else {}
    items = []
    for image in sorted(p for p in images_dir.iterdir() if is_image_file(p)):
        mask = masks.get(image.stem)
        if mask is None and masks_required:
            continue
        items.append(Item(image.stem, image, mask, image.stem))
    return items


def labelled_split(items: list[Item], labelnum: int | None) -> tuple[list[int], list[int]]:
    """Indices of labelled and unlabelled items: all items of the first ``labelnum`` cases (in order) are
    labelled, as SS-Net's ``labeled_idxs = range(labelnum)``; folder images without a mask are never labelled.
    ``labelnum=None``: every item that has a label."""
    has_label = [item.mask is not None or item.image.suffix == ".h5" for item in items]
    cases = list(dict.fromkeys(item.case for item, labelled in zip(items, has_label, strict=True) if labelled))
    if labelnum is not None and labelnum > len(cases):
        raise InputError(f"--labelnum {labelnum} is more than the {len(cases)} labelled cases in the training data")
    chosen = set(cases if labelnum is None else cases[:labelnum])
    labelled = [i for i, item in enumerate(items) if has_label[i] and item.case in chosen]
    labelled_set = set(labelled)
    return labelled, [i for i in range(len(items)) if i not in labelled_set]


# ----------------------------------------------------------------------------------- augmentation
def augment_2d(image: np.ndarray, label: np.ndarray, patch: tuple[int, int], rng: np.random.Generator,
               augment: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """SS-Net's ``RandomGenerator``: rot90 + flip (p 0.5), else a rotation in [-20, 20) degrees (p 0.25),
    then zoom to the patch size (bilinear image, nearest label)."""
    if augment:
        if rng.random() > 0.5:
            k, axis = int(rng.integers(0, 4)), int(rng.integers(0, 2))
            image, label = np.flip(np.rot90(image, k), axis), np.flip(np.rot90(label, k), axis)
        elif rng.random() > 0.5:
            angle = float(rng.integers(-20, 20))
            image = ndimage.rotate(image, angle, order=1, reshape=False, mode="nearest")
            label = ndimage.rotate(label, angle, order=0, reshape=False, mode="nearest")
    return zoom_to(image, patch, order=1), zoom_to(label, patch, order=0)


def zoom_to(array: np.ndarray, shape: tuple[int, ...], order: int) -> np.ndarray:
    if tuple(array.shape) == tuple(shape):
        return np.ascontiguousarray(array)
    factors = [target / size for target, size in zip(shape, array.shape, strict=True)]
    return ndimage.zoom(array, factors, order=order, mode="nearest", grid_mode=False)


def augment_3d(image: np.ndarray, label: np.ndarray, patch: tuple[int, int, int], rng: np.random.Generator,
               augment: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """SS-Net's LA pipeline: ``RandomRotFlip`` (rot90 in the first two axes and a flip), then ``RandomCrop``
    (zero padding where the volume is smaller than the patch)."""
    if augment:
        k, axis = int(rng.integers(0, 4)), int(rng.integers(0, 2))
        image, label = np.flip(np.rot90(image, k), axis), np.flip(np.rot90(label, k), axis)
    pad = [(max(p - s, 0) // 2, max(p - s, 0) - max(p - s, 0) // 2) for p, s in zip(patch, image.shape, strict=True)]
    if any(sum(widths) for widths in pad):
        image, label = np.pad(image, pad), np.pad(label, pad)
    starts = [int(rng.integers(0, s - p + 1)) if augment else (s - p) // 2
              for s, p in zip(image.shape, patch, strict=True)]
    window = tuple(slice(start, start + p) for start, p in zip(starts, patch, strict=True))
    return np.ascontiguousarray(image[window]), np.ascontiguousarray(label[window])


class TrainingSet(Dataset):
    """Training items as ``{"image": [1, *patch], "label": [*patch]}``; keys are ``(index, sample_seed)``."""

    def __init__(self, items: list[Item], patch_size: tuple[int, ...], augment: bool = True):
        self.items, self.patch_size, self.augment = items, tuple(patch_size), augment

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, key: tuple[int, int]) -> dict[str, torch.Tensor]:
        index, sample_seed = key
        image, label = read_item(self.items[index])
        rng = np.random.default_rng(sample_seed)
        transform = augment_2d if len(self.patch_size) == 2 else augment_3d
        image, label = transform(image, label, self.patch_size, rng, self.augment)
        return {"image": torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None],
                "label": torch.from_numpy(np.ascontiguousarray(label, dtype=np.int64))}


class TwoStreamBatchSampler(Sampler):
    """Batches of ``labelled_bs`` labelled then ``unlabelled_bs`` unlabelled indices, one per iteration.

    As SS-Net's sampler, each stream walks through shuffled passes of its indices; here the passes are
    seeded permutations, so iteration ``t`` of rank ``r`` always gets the same batch: global batch number
    ``t · world_size + r`` (ranks take disjoint parts of each pass) and per-sample augmentation seeds.
    """

    def __init__(self, labelled: list[int], unlabelled: list[int], labelled_bs: int, unlabelled_bs: int,
                 seed: int, num_iterations: int, start_iteration: int = 0, rank: int = 0, world_size: int = 1):
        if labelled_bs < 1 or not labelled:
            raise InputError("the labelled stream needs at least one index and a batch size of at least 1")
        if unlabelled_bs > 0 and not unlabelled:
            raise InputError("no unlabelled training items: use fewer --labelnum cases or the supervised method")
        self.streams = ((list(labelled), labelled_bs), (list(unlabelled), unlabelled_bs))
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.start, self.stop = start_iteration, num_iterations
        self._permutations: dict[tuple[int, int], np.ndarray] = {}  # (stream, pass) -> order, a few kept

    def __len__(self) -> int:
        return max(0, self.stop - self.start)

    def batch(self, iteration: int) -> list[tuple[int, int]]:
        batch_number = iteration * self.world_size + self.rank
        indices = []
        for stream, (pool, size) in enumerate(self.streams):
            indices += [self._at(pool, stream, batch_number * size + k) for k in range(size)]
        seeds = np.random.SeedSequence([self.seed, iteration, self.rank]).generate_state(len(indices))
        return [(index, int(sample_seed)) for index, sample_seed in zip(indices, seeds, strict=True)]

    def _at(self, pool: list[int], stream: int, position: int) -> int:
        shuffle, offset = divmod(position, len(pool))
        return pool[self._permutation(stream, len(pool), shuffle)[offset]]

    def _permutation(self, stream: int, size: int, shuffle: int) -> np.ndarray:
        key = (stream, shuffle)
        if key not in self._permutations:
            if len(self._permutations) > 8:
                self._permutations.clear()
            self._permutations[key] = np.random.default_rng([self.seed, stream, shuffle]).permutation(size)
        return self._permutations[key]

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for iteration in range(self.start, self.stop):
            yield self.batch(iteration)
