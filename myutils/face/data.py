"""The face-feature folder of seed 004, split by person, as (video feature, pose, frontal feature) pairs.

Folder layout (written by the face-alignment step, or by ``scripts/make_face_feature_data.py``)::

    front_feature.npy     [N, D] float   frontal-face features (InsightFace: D = 512, L2-normalised)
    front_metadata.json   {"metadata": [{"person_name": ..., ...}, ...], "poses": [[yaw, pitch, roll], ...], ...}
    video_feature.npy     [M, D] float   video-frame features at any head pose
    video_metadata.json   same fields; "poses" (degrees) is required here

A sample pairs one frontal and one video feature of the same person (every such pair, as the seed):
``src`` = video feature, ``pose`` = its angles, ``tgt`` = the frontal feature, ``label`` = person index.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from myutils.cli import InputError
from myutils.training.log import write_json_atomic

FEATURE_FILES = {"front": "front_feature.npy", "video": "video_feature.npy"}
METADATA_FILES = {"front": "front_metadata.json", "video": "video_metadata.json"}


@dataclass
class FaceFeatureFolder:
    """Arrays of one folder; ``*_person`` index into ``person_names`` (sorted)."""

    person_names: list[str]
    front_features: np.ndarray
    front_person: np.ndarray
    video_features: np.ndarray
    video_poses: np.ndarray
    video_person: np.ndarray

    @property
    def feature_dim(self) -> int:
        return int(self.front_features.shape[1])

    @property
    def pose_dim(self) -> int:
        return int(self.video_poses.shape[1])


def read_features(path: Path, allow_non_finite: bool = False) -> np.ndarray:
    """A 2-D float32 feature file; NaN/Inf rows are an error unless ``allow_non_finite``."""
    if not path.is_file():
        raise FileNotFoundError(f"missing data file: {path}")
    try:
        array = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as error:
        raise InputError(f"{path} is not a .npy array file: {error}") from error
    if array.ndim != 2 or not np.issubdtype(array.dtype, np.number):
        raise InputError(f"{path} must hold a numeric 2-D [num_samples, feature_dim] array, got shape {array.shape}")
    bad_rows = np.flatnonzero(~np.isfinite(array).all(axis=1))
    if bad_rows.size and not allow_non_finite:
        raise InputError(f"{path} has NaN/Inf in {bad_rows.size} rows (first: row {bad_rows[0]})")
    return array.astype(np.float32, copy=False)


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"missing data file: {path}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InputError(f"{path} is not a JSON file: {error}") from error
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected a JSON object with 'metadata' and 'poses'")
    return data


def _poses(data: dict, path: Path, num_rows: int, allow_non_finite: bool = False) -> np.ndarray:
    if "poses" not in data:
        raise InputError(f"{path}: missing field 'poses' ([yaw, pitch, roll] in degrees per feature row)")
    try:
        poses = np.asarray(data["poses"], dtype=np.float32)
    except (TypeError, ValueError) as error:
        raise InputError(f"{path}: 'poses' must be rows of numbers ({error})") from error
    if poses.ndim != 2 or poses.shape[0] != num_rows or not (allow_non_finite or np.isfinite(poses).all()):
        raise InputError(f"{path}: 'poses' must be {num_rows} finite rows of angles, got shape {poses.shape}")
    return poses


def read_poses(path: Path, num_rows: int) -> np.ndarray:
    """The ``poses`` of a metadata file (``[num_rows, pose_dim]``, degrees); non-finite rows are kept."""
    return _poses(_read_json(path), path, num_rows, allow_non_finite=True)


def read_metadata(path: Path, num_rows: int, need_poses: bool) -> tuple[list[str], np.ndarray | None]:
    """Person names (one per feature row) and, with ``need_poses``, the ``[num_rows, 3]`` poses in degrees."""
    data = _read_json(path)
    entries = data.get("metadata")
    if not isinstance(entries, list):
        raise InputError(f"{path}: missing field 'metadata' (a list with one entry per feature row)")
    if len(entries) != num_rows:
        raise InputError(f"{path}: 'metadata' has {len(entries)} entries but the feature file has {num_rows} rows")
    names = []
    for row, entry in enumerate(entries):
        if not isinstance(entry, dict) or not isinstance(entry.get("person_name"), str):
            raise InputError(f"{path}: metadata[{row}] has no string field 'person_name'")
        names.append(entry["person_name"])
    return names, (_poses(data, path, num_rows) if need_poses else None)


def load_face_feature_folder(data_dir: str | os.PathLike) -> FaceFeatureFolder:
    """Read and check a folder; persons with only frontal or only video features are dropped (printed)."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise FileNotFoundError(f"data directory not found: {data_dir}")
    front = read_features(data_dir / FEATURE_FILES["front"])
    video = read_features(data_dir / FEATURE_FILES["video"])
    if front.shape[1] != video.shape[1]:
        raise InputError(f"feature dimensions differ: front {front.shape[1]}, video {video.shape[1]}")
    front_names, _ = read_metadata(data_dir / METADATA_FILES["front"], len(front), need_poses=False)
    video_names, video_poses = read_metadata(data_dir / METADATA_FILES["video"], len(video), need_poses=True)

    persons = sorted(set(front_names) & set(video_names))
    unpaired = sorted(set(front_names) ^ set(video_names))
    if unpaired:
        print(f"Skipping {len(unpaired)} persons with only frontal or only video features (e.g. {unpaired[0]!r})")
    if not persons:
        raise InputError(f"{data_dir}: no person has both frontal and video features")
    index = {name: i for i, name in enumerate(persons)}
    front_keep = np.array([name in index for name in front_names])
    video_keep = np.array([name in index for name in video_names])
    return FaceFeatureFolder(
        person_names=persons,
        front_features=front[front_keep],
        front_person=np.array([index[n] for n in front_names if n in index], dtype=np.int64),
        video_features=video[video_keep],
        video_poses=video_poses[video_keep],
        video_person=np.array([index[n] for n in video_names if n in index], dtype=np.int64),
    )


def write_face_feature_folder(
    out_dir: str | os.PathLike,
    front_features: np.ndarray,
    front_metadata: dict,
    video_features: np.ndarray,
    video_metadata: dict,
) -> Path:
    """Write the four files of the layout (metadata dicts hold 'metadata' and 'poses')."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for kind, features, metadata in [("front", front_features, front_metadata), ("video", video_features, video_metadata)]:
        np.save(out_dir / FEATURE_FILES[kind], features.astype(np.float32))
        header = {"num_samples": int(features.shape[0]), "feature_dim": int(features.shape[1])}
        write_json_atomic({**header, **metadata}, out_dir / METADATA_FILES[kind])
    return out_dir


def split_persons(
    num_persons: int, ratios: Sequence[float] = (0.6, 0.3, 0.1), seed: int = 42
) -> tuple[list[int], list[int], list[int]]:
    """Shuffle person indices with ``seed`` and cut them into train / val / test (each non-empty)."""
    if len(ratios) != 3 or abs(sum(ratios) - 1.0) > 1e-6 or min(ratios) <= 0:
        raise InputError(f"split ratios must be three positive numbers summing to 1, got {list(ratios)}")
    if num_persons < 3:
        raise InputError(f"need at least 3 persons to split into train / val / test, got {num_persons}")
    order = list(range(num_persons))
    random.Random(seed).shuffle(order)
    n_train = min(max(1, round(ratios[0] * num_persons)), num_persons - 2)
    n_val = min(max(1, round(ratios[1] * num_persons)), num_persons - n_train - 1)
    return (
        sorted(order[:n_train]),
        sorted(order[n_train : n_train + n_val]),
        sorted(order[n_train + n_val :]),
    )


class FacePairDataset(Dataset):
    """All (frontal, video) pairs of the given persons; items are dicts of tensors."""

    def __init__(self, folder: FaceFeatureFolder, persons: Sequence[int]):
        self.folder = folder
        self.persons = sorted(persons)
        self.front_indices = np.flatnonzero(np.isin(folder.front_person, self.persons))
        self.video_indices = np.flatnonzero(np.isin(folder.video_person, self.persons))
        pairs = []
        for person in self.persons:
            fronts = self.front_indices[folder.front_person[self.front_indices] == person]
            videos = self.video_indices[folder.video_person[self.video_indices] == person]
            pairs.append(np.stack(np.meshgrid(fronts, videos, indexing="ij"), axis=-1).reshape(-1, 2))
        self.pairs = np.concatenate(pairs).astype(np.int64)
        self.labels = folder.video_person[self.pairs[:, 1]]

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        front_index, video_index = self.pairs[index]
        return {
            "src": torch.from_numpy(self.folder.video_features[video_index]),
            "pose": torch.from_numpy(self.folder.video_poses[video_index]),
            "tgt": torch.from_numpy(self.folder.front_features[front_index]),
            "label": torch.tensor(self.labels[index]),
        }

    def pair_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """(video features, frontal features) of every pair, row-aligned."""
        return self.folder.video_features[self.pairs[:, 1]], self.folder.front_features[self.pairs[:, 0]]


class PersonBatchSampler(Sampler[list[int]]):
    """Batches of ``batch_size // samples_per_person`` groups, each of up to ``samples_per_person`` samples of one person.

    Triplet mining needs several samples of a person in one batch; uniform shuffling rarely gives that.
    Every sample appears once per epoch; the order depends only on ``(seed, epoch)``, so a resumed run
    sees the same batches as an uninterrupted one. A last batch of a single person's group joins the
    batch before it, so no batch is ever one sample (BatchNorm cannot train on one) or one person.
    """

    def __init__(self, labels: Sequence[int], batch_size: int, samples_per_person: int = 4, seed: int = 0):
        if samples_per_person < 2 or batch_size < 2 * samples_per_person:
            raise InputError(
                f"need samples_per_person >= 2 and batch_size >= 2 * samples_per_person for triplets "
                f"(got batch_size={batch_size}, samples_per_person={samples_per_person})"
            )
        self.labels = np.asarray(labels)
        self.samples_per_person = samples_per_person
        self.persons_per_batch = batch_size // samples_per_person
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _batches(self) -> list[list[int]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        chunks = []
        for person in np.unique(self.labels):
            indices = rng.permutation(np.flatnonzero(self.labels == person))
            # near-equal chunks (5 → 3 + 2, not 4 + 1) so that no chunk is a lone sample without a positive
            chunks += np.array_split(indices, -(-len(indices) // self.samples_per_person))
        order = rng.permutation(len(chunks))
        starts = self._batch_starts(len(chunks))
        return [
            np.concatenate([chunks[c] for c in order[a:b]]).tolist() for a, b in zip(starts[:-1], starts[1:], strict=True)
        ]

    def _batch_starts(self, num_chunks: int) -> list[int]:
        starts = list(range(0, num_chunks, self.persons_per_batch)) + [num_chunks]
        if len(starts) > 2 and starts[-1] - starts[-2] == 1:  # a lone group at the end joins the previous batch
            del starts[-2]
        return starts

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self._batches())

    def __len__(self) -> int:
        num_chunks = sum(-(-int(n) // self.samples_per_person) for n in np.unique(self.labels, return_counts=True)[1])
        return len(self._batch_starts(num_chunks)) - 1


def rank_identity_dimensions(side: np.ndarray, frontal: np.ndarray, k: int) -> tuple[list[int], np.ndarray]:
    """The ``k`` dimensions whose side-view and frontal values correlate most (Pearson, over row pairs).

    Returns ``(dims best first, correlation per dimension)``; constant dimensions rank last.
    """
    side = side - side.mean(axis=0)
    frontal = frontal - frontal.mean(axis=0)
    denominator = np.sqrt((side**2).sum(axis=0) * (frontal**2).sum(axis=0))
    with np.errstate(invalid="ignore", divide="ignore"):
        correlation = np.where(denominator > 0, (side * frontal).sum(axis=0) / denominator, -np.inf)
    order = np.argsort(-correlation, kind="stable")
    return order[:k].tolist(), correlation
