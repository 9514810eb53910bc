"""On-disk ROI feature shards: safetensors files (no pickle) plus a JSON index.

Layout of a feature folder::

    index.json              {"format": "roi-shards-v1", "shards": [...], "images": [...], "metadata": {...}}
    shard_00000.safetensors features [n, C, S, S] (fp16), boxes [n, 4] (xyxy, original pixels),
                            scores [n], identities [n] (-1 unknown), image_ids [n] (index into "images")

Features are read lazily through memory-mapped ``safe_open`` handles, so a data set larger than
RAM still trains with random access.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch.utils.data import Dataset

from myutils.cli import InputError
from myutils.training.log import write_json_atomic

INDEX_NAME = "index.json"
FORMAT = "roi-shards-v1"
FEATURE_DTYPE = torch.float16


class RoiShardWriter:
    """Accumulates ROI features per image and writes a shard every ``shard_size`` ROIs."""

    def __init__(self, out_dir: str | os.PathLike, shard_size: int = 4096, metadata: dict | None = None):
        if shard_size < 1:
            raise InputError(f"shard_size must be >= 1, got {shard_size}")
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        if (self.out_dir / INDEX_NAME).exists():
            raise FileExistsError(f"{self.out_dir} already holds ROI shards; choose a new output folder")
        self.shard_size = shard_size
        self.metadata = dict(metadata or {})
        self.images: list[str] = []
        self.shards: list[dict] = []
        self._pending: dict[str, list[torch.Tensor]] = {k: [] for k in ("features", "boxes", "scores", "identities", "image_ids")}
        self._pending_count = 0

    def add(self, image_name: str, features: torch.Tensor, boxes: torch.Tensor, scores: torch.Tensor,
            identities: torch.Tensor | None = None) -> None:
        """ROIs of one image: ``features [N, C, S, S]``, ``boxes [N, 4]``, ``scores [N]``, ``identities [N]``."""
        n = features.shape[0]
        if not (boxes.shape == (n, 4) and scores.shape == (n,)):
            raise InputError(f"{image_name}: features, boxes and scores disagree on the ROI count")
        image_id = len(self.images)
        self.images.append(str(image_name))
        if n == 0:
            return
        half = features.detach().to("cpu", FEATURE_DTYPE)
        if not torch.isfinite(half).all():
            raise InputError(f"{image_name}: ROI features overflow float16")
        identities = torch.full((n,), -1) if identities is None else torch.as_tensor(identities).reshape(n)
        self._pending["features"].append(half)
        self._pending["boxes"].append(boxes.detach().cpu().float())
        self._pending["scores"].append(scores.detach().cpu().float())
        self._pending["identities"].append(identities.long().cpu())
        self._pending["image_ids"].append(torch.full((n,), image_id, dtype=torch.long))
        self._pending_count += n
        if self._pending_count >= self.shard_size:
            self._flush()

    def _flush(self) -> None:
        if self._pending_count == 0:
            return
        tensors = {key: torch.cat(values).contiguous() for key, values in self._pending.items()}
        name = f"shard_{len(self.shards):05d}.safetensors"
        save_file(tensors, str(self.out_dir / name))
        self.shards.append({"file": name, "count": self._pending_count})
        self._pending = {key: [] for key in self._pending}
        self._pending_count = 0

    def close(self) -> Path:
        """Write the last shard and ``index.json``; returns the index path."""
        self._flush()
        index = {"format": FORMAT, "shards": self.shards, "images": self.images, "metadata": self.metadata,
                 "num_rois": sum(shard["count"] for shard in self.shards)}
        path = self.out_dir / INDEX_NAME
        write_json_atomic(index, path)
        return path


def read_roi_index(root: str | os.PathLike) -> dict:
    path = Path(root) / INDEX_NAME
    if not path.is_file():
        raise FileNotFoundError(f"no ROI feature index at {path} (run scripts/extract_roi_features.py first)")
    index = json.loads(path.read_text(encoding="utf-8"))
    if index.get("format") != FORMAT:
        raise InputError(f"{path}: unknown format {index.get('format')!r}, expected {FORMAT!r}")
    return index


class RoiFeatureDataset(Dataset):
    """ROIs of one or more feature folders with score >= ``min_confidence``.

    ``dataset[i]`` is ``(features float32 [C, S, S], i)``; the per-ROI metadata (``boxes``,
    ``scores``, ``identities``, ``image_names``) is held in memory.
    """

    def __init__(self, roots: str | os.PathLike | list, min_confidence: float = 0.0):
        roots = [roots] if isinstance(roots, (str, os.PathLike)) else list(roots)
        self.locations: list[tuple[str, int]] = []  # (shard path, row)
        boxes, scores, identities, self.image_names = [], [], [], []
        self.metadata: dict = {}  # extraction settings of the first folder (backbone, input size)
        for root in roots:
            index = read_roi_index(root)
            self.metadata = self.metadata or dict(index["metadata"])
            for shard in index["shards"]:
                path = str(Path(root) / shard["file"])
                with safe_open(path, framework="pt") as handle:
                    shard_scores = handle.get_tensor("scores")
                    keep = torch.nonzero(shard_scores >= min_confidence)[:, 0]
                    boxes.append(handle.get_tensor("boxes")[keep])
                    scores.append(shard_scores[keep])
                    identities.append(handle.get_tensor("identities")[keep])
                    image_ids = handle.get_tensor("image_ids")[keep]
                self.locations += [(path, int(row)) for row in keep]
                self.image_names += [index["images"][int(i)] for i in image_ids]
        if not self.locations:
            raise InputError(f"no ROIs with confidence >= {min_confidence} in {', '.join(map(str, roots))}")
        self.boxes = torch.cat(boxes)
        self.scores = torch.cat(scores)
        self.identities = torch.cat(identities)
        self._handles: dict[str, object] = {}  # opened lazily, per process (DataLoader workers)

    def __len__(self) -> int:
        return len(self.locations)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path, row = self.locations[index]
        handle = self._handles.get(path)
        if handle is None:
            handle = self._handles[path] = safe_open(path, framework="pt")
        return handle.get_slice("features")[row : row + 1][0].float(), index

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_handles"] = {}  # file handles do not cross process boundaries
        return state
