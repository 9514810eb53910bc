"""Generated segmentation cases in SS-Net's h5 layouts (and a PNG folder layout), for tests, demo and bench.

Difficulty is meant to be realistic rather than toy-like: every structure is textured (smoothed noise
times its intensity), intensities of neighbouring structures are close, and each case has its own gain,
offset, smooth multiplicative bias field and noise level, so a network trained on a few labelled cases
meets intensity drift on the others.

* 2-D, ACDC-like (4 classes): a short-axis "heart" per slice: left-ventricle cavity (3), myocardium ring
  (2), right-ventricle crescent (1), in a textured body; two frames per patient (the second contracted),
  a few slices per frame shrinking toward the apex.
* 3-D, LA-like (2 classes): an atrium ellipsoid with vein tubes and an appendage (1) among textured
  tissue and bright distractor blobs of similar intensity (0).
"""

from __future__ import annotations

from pathlib import Path

import cv2
import h5py
import numpy as np
from scipy import ndimage

from myutils.segmentation.data import LA_FOLDER


def smooth_noise(shape: tuple[int, ...], sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Zero-mean, unit-std Gaussian-filtered noise (texture)."""
    field = ndimage.gaussian_filter(rng.standard_normal(shape), sigma)
    return (field - field.mean()) / (field.std() + 1e-8)


def bias_field(shape: tuple[int, ...], strength: float, rng: np.random.Generator) -> np.ndarray:
    """A smooth multiplicative field around 1 (MRI-like intensity non-uniformity)."""
    return 1.0 + strength * smooth_noise(shape, max(shape) / 4, rng)


def ellipse(grid: list[np.ndarray], centre, radii, angle: float = 0.0) -> np.ndarray:
    """Boolean ellipse/ellipsoid; ``angle`` rotates the first two axes."""
    offsets = [g - c for g, c in zip(grid, centre, strict=True)]
    cos, sin = np.cos(angle), np.sin(angle)
    offsets[0], offsets[1] = cos * offsets[0] + sin * offsets[1], -sin * offsets[0] + cos * offsets[1]
    return sum((o / r) ** 2 for o, r in zip(offsets, radii, strict=True)) <= 1.0


def case_appearance(rng: np.random.Generator, drift: bool = True) -> dict[str, float]:
    """Per-case acquisition: gain, offset, bias-field strength and noise level (``drift=False``: one clean look)."""
    if not drift:
        return {"gain": 1.0, "offset": 0.0, "bias": 0.0, "noise": 0.04}
    return {"gain": rng.uniform(0.7, 1.3), "offset": rng.uniform(-0.2, 0.2), "bias": rng.uniform(0.05, 0.25),
            "noise": rng.uniform(0.06, 0.16)}


def render(regions: list[tuple[np.ndarray, float]], shape, look: dict[str, float], rng: np.random.Generator) -> np.ndarray:
    """Paint (mask, mean intensity) regions in order, each with its own texture, then apply the case's look."""
    image = 0.1 + 0.05 * smooth_noise(shape, 2.0, rng)
    for mask, intensity in regions:
        texture = 1.0 + 0.18 * smooth_noise(shape, rng.uniform(0.8, 2.0), rng)
        image = np.where(mask, intensity * texture, image)
    image = image * bias_field(shape, look["bias"], rng) * look["gain"] + look["offset"]
    return (image + look["noise"] * rng.standard_normal(shape)).astype(np.float32)


def cardiac_slice(size: int, geometry: dict, scale: float, look: dict, rng: np.random.Generator):
    """One short-axis slice: (image [size, size], label) with RV 1, myocardium 2, LV cavity 3."""
    grid = list(np.mgrid[0:size, 0:size].astype(np.float64))
    cy, cx, angle = geometry["cy"], geometry["cx"], geometry["angle"]
    lv_r, wall = geometry["lv"] * scale, geometry["wall"] * (1.0 + 0.3 * (1 - scale))
    body = ellipse(grid, (size / 2, size / 2), (0.44 * size, 0.40 * size), geometry["body_angle"])
    lv = ellipse(grid, (cy, cx), (lv_r, lv_r * geometry["lv_aspect"]), angle)
    myo = ellipse(grid, (cy, cx), (lv_r + wall, (lv_r + wall) * geometry["lv_aspect"]), angle) & ~lv
    rv_centre = (cy + np.sin(angle + geometry["rv_side"]) * (lv_r + wall) * 1.2,
                 cx + np.cos(angle + geometry["rv_side"]) * (lv_r + wall) * 1.2)
    rv = ellipse(grid, rv_centre, (1.0 * (lv_r + wall), 1.7 * lv_r), angle + geometry["rv_side"])
    rv &= ~ellipse(grid, (cy, cx), (lv_r + wall + 1.0, (lv_r + wall + 1.0) * geometry["lv_aspect"]), angle)
    label = np.zeros((size, size), dtype=np.uint8)
    label[rv], label[myo], label[lv] = 1, 2, 3
    i = geometry["intensities"]
    image = render([(body, i["body"]), (rv, i["rv"]), (myo, i["myo"]), (lv, i["lv"])], (size, size), look, rng)
    return image, label


def cardiac_volume(size: int, slices: int, rng: np.random.Generator, contracted: bool, geometry: dict, look: dict):
    """A frame: slices from base (full size) toward apex (smaller); the contracted frame has a smaller cavity."""
    scales = np.linspace(1.0, 0.55, slices) * (0.78 if contracted else 1.0)
    pairs = [cardiac_slice(size, geometry, scale, look, rng) for scale in scales]
    return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])


def cardiac_geometry(size: int, rng: np.random.Generator) -> dict:
    base = rng.uniform(0.32, 0.45)  # myocardium darker than the cavity, close to the body tissue
    return {
        "cy": size / 2 + rng.uniform(-0.08, 0.08) * size, "cx": size / 2 + rng.uniform(-0.08, 0.08) * size,
        "angle": rng.uniform(0, np.pi), "body_angle": rng.uniform(-0.3, 0.3), "lv": rng.uniform(0.09, 0.14) * size,
        "lv_aspect": rng.uniform(0.8, 1.2), "wall": rng.uniform(0.035, 0.06) * size, "rv_side": rng.uniform(-0.5, 0.5) + np.pi,
        "intensities": {"body": base + rng.uniform(0.05, 0.12), "myo": base, "lv": base + rng.uniform(0.35, 0.5),
                        "rv": base + rng.uniform(0.22, 0.4)},
    }


def _write_h5(path: Path, image: np.ndarray, label: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as handle:
        handle.create_dataset("image", data=image, compression="gzip")
        handle.create_dataset("label", data=label, compression="gzip")


def make_acdc_like(root: str | Path, train: int = 20, val: int = 4, test: int = 8, size: int = 64, slices: int = 6,
                   seed: int = 0, drift: bool = True) -> Path:
    """ACDC layout: ``data/slices/patientNNN_frameFF_slice_K.h5`` for training, ``data/patientNNN_frameFF.h5``
    volumes for validation/test, and ``train_slices.list``, ``val.list``, ``test.list``. ``drift=False``
    gives every case the same clean acquisition (an easy task, for tests that check learning)."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    lists = {"train_slices.list": [], "val.list": [], "test.list": []}
    for index in range(train + val + test):
        patient = f"patient{index + 1:03d}"
        geometry, look = cardiac_geometry(size, rng), case_appearance(rng, drift)
        for frame, contracted in (("frame01", False), ("frame02", True)):
            case = f"{patient}_{frame}"
            image, label = cardiac_volume(size, slices, rng, contracted, geometry, look)
            if index < train:
                for k in range(slices):
                    _write_h5(root / "data" / "slices" / f"{case}_slice_{k + 1}.h5", image[k], label[k])
                    lists["train_slices.list"].append(f"{case}_slice_{k + 1}")
            else:
                _write_h5(root / "data" / f"{case}.h5", image, label)
                lists["val.list" if index < train + val else "test.list"].append(case)
    for name, entries in lists.items():
        (root / name).write_text("\n".join(entries) + "\n", encoding="utf-8")
    return root


def atrium_volume(shape: tuple[int, int, int], rng: np.random.Generator):
    """(image [W, H, D], label): atrium ellipsoid + veins + appendage (1), distractor blobs (0)."""
    grid = list(np.mgrid[0 : shape[0], 0 : shape[1], 0 : shape[2]].astype(np.float64))
    centre = [s / 2 + rng.uniform(-0.1, 0.1) * s for s in shape]
    radii = [rng.uniform(0.16, 0.24) * s for s in shape]
    atrium = ellipse(grid, centre, radii, rng.uniform(0, np.pi))
    for _ in range(int(rng.integers(2, 5))):  # pulmonary-vein-like tubes leaving the atrium
        direction = rng.standard_normal(3)
        direction /= np.linalg.norm(direction)
        for t in np.linspace(0.6, 1.6, 10):
            point = [c + t * r * d for c, r, d in zip(centre, radii, direction, strict=True)]
            atrium |= ellipse(grid, point, [rng.uniform(1.5, 2.5)] * 3)
    appendage = [c + 0.9 * r * s for c, r, s in zip(centre, radii, rng.choice([-1, 1], 3), strict=True)]
    atrium |= ellipse(grid, appendage, [0.5 * r for r in radii])
    distractors = np.zeros(shape, dtype=bool)
    for _ in range(int(rng.integers(2, 4))):
        point = [rng.uniform(0.1, 0.9) * s for s in shape]
        distractors |= ellipse(grid, point, [rng.uniform(0.06, 0.12) * s for s in shape])
    distractors &= ~ndimage.binary_dilation(atrium, iterations=2)
    tissue = ellipse(grid, [s / 2 for s in shape], [0.47 * s for s in shape])
    level = rng.uniform(0.3, 0.4)
    image = render([(tissue, level), (distractors, level + rng.uniform(0.25, 0.4)),
                    (atrium, level + rng.uniform(0.3, 0.45))], shape, case_appearance(rng), rng)
    return image, atrium.astype(np.uint8)


def make_la_like(root: str | Path, train: int = 16, test: int = 4, shape: tuple[int, int, int] = (64, 64, 48),
                 seed: int = 0) -> Path:
    """LA layout: ``2018LA_Seg_Training Set/caseNN/mri_norm2.h5`` with ``train.list`` and ``test.list``."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    names = [f"case{index + 1:03d}" for index in range(train + test)]
    for name in names:
        _write_h5(root / LA_FOLDER / name / "mri_norm2.h5", *atrium_volume(tuple(shape), rng))
    (root / "train.list").write_text("\n".join(names[:train]) + "\n", encoding="utf-8")
    (root / "test.list").write_text("\n".join(names[train:]) + "\n", encoding="utf-8")
    return root


def make_folder_like(root: str | Path, labelled: int = 2, unlabelled: int = 4, val: int = 2, size: int = 64,
                     seed: int = 0) -> Path:
    """PNG layout: ``train/images`` (all) with ``train/masks`` for the first ``labelled``; ``val`` with masks."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    counts = {"train": labelled + unlabelled, "val": val}
    for split, count in counts.items():
        for index in range(count):
            image, label = cardiac_slice(size, cardiac_geometry(size, rng), 1.0, case_appearance(rng), rng)
            pixels = np.clip(image * 255.0, 0, 255).astype(np.uint8)
            for folder, array in (("images", pixels), ("masks", label)):
                if folder == "masks" and split == "train" and index >= labelled:
                    continue  # unlabelled training images have no mask
                path = root / split / folder / f"img{index:03d}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                cv2.imencode(".png", array)[1].tofile(str(path))
    return root
