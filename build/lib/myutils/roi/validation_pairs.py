"""The seed's association-validation layout: pairs of labelled frames of one scene.

::

    root/now/pic/<k>.jpg   root/now/lable/<k>.json   (``label/`` is accepted too)
    root/pre/pic/<k>.jpg   root/pre/lable/<k>.json

Each JSON is ``{"annotations": [{"id": int, "class_id": int, "bbox": {"cx", "cy", "w", "h"}}]}``
with boxes normalised to the image size.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from myutils.cli import InputError
from myutils.data.image_io import is_image_file

LABEL_DIR_NAMES = ("lable", "label")  # the seed's spelling first


@dataclass(frozen=True)
class ValidationPair:
    key: str
    now_image: Path
    now_label: Path
    pre_image: Path
    pre_label: Path


@dataclass(frozen=True)
class FrameLabels:
    ids: np.ndarray  # [N] int
    boxes_cxcywh: np.ndarray  # [N, 4] normalised


def label_dir(role_dir: Path) -> Path:
    for name in LABEL_DIR_NAMES:
        if (role_dir / name).is_dir():
            return role_dir / name
    raise FileNotFoundError(f"no label folder in {role_dir} (expected one of {', '.join(LABEL_DIR_NAMES)})")


def _sort_key(stem: str) -> tuple:
    return (0, int(stem), "") if stem.isdigit() else (1, 0, stem)


def list_validation_pairs(root: str | os.PathLike) -> list[ValidationPair]:
    """Every key ``k`` with an image and a label in both ``now`` and ``pre`` (sorted numerically)."""
    root = Path(root)
    for role in ("now", "pre"):
        if not (root / role / "pic").is_dir():
            raise FileNotFoundError(f"{root / role / 'pic'} not found: expected the {{now,pre}}/pic + lable layout")
    images = {role: {p.stem: p for p in (root / role / "pic").iterdir() if is_image_file(p)} for role in ("now", "pre")}
    labels = {role: {p.stem: p for p in label_dir(root / role).glob("*.json")} for role in ("now", "pre")}
    keys = set(images["now"]) & set(images["pre"]) & set(labels["now"]) & set(labels["pre"])
    if not keys:
        raise InputError(f"no complete validation pairs in {root}")
    return [
        ValidationPair(k, images["now"][k], labels["now"][k], images["pre"][k], labels["pre"][k])
        for k in sorted(keys, key=_sort_key)
    ]


def read_frame_labels(path: str | os.PathLike) -> FrameLabels:
    """Ids and normalised ``cx, cy, w, h`` boxes of one label file; clear errors for malformed entries."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        annotations = data["annotations"]
        ids = [int(a["id"]) for a in annotations]
        boxes = [[float(a["bbox"][k]) for k in ("cx", "cy", "w", "h")] for a in annotations]
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
        raise InputError(f"{path}: malformed label file ({error!r}); expected annotations with id and bbox cx/cy/w/h") from error
    return FrameLabels(np.asarray(ids, dtype=np.int64), np.asarray(boxes, dtype=np.float64).reshape(-1, 4))


def cxcywh_to_xyxy_pixels(boxes: np.ndarray, width: int, height: int) -> np.ndarray:
    """Normalised ``cx, cy, w, h`` -> pixel ``x1, y1, x2, y2`` clipped to the image."""
    cx, cy, w, h = (boxes * [width, height, width, height]).T
    xyxy = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)
    return np.clip(xyxy, 0, [width, height, width, height]).reshape(-1, 4)
