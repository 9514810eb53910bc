"""Using a trained mapper: load a checkpoint, map features with their poses, map a whole feature file.

``load_trained_model(path)`` rebuilds the network of any checkpoint the trainer wrote (SENet, the
residual-MLP baseline or DREAM) in eval mode; ``map_features`` maps arrays in batches; ``map_feature_file`` is
the job of ``scripts/map_face_features.py``: a ``[N, D]`` feature file and the ``poses`` of its metadata
in, ``[N, D]`` L2-normalised mapped features out, row for row.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from myutils.cli import InputError
from myutils.face.data import read_features, read_poses
from myutils.face.networks import Mapper, build_mapper
from myutils.files import atomic_output
from myutils.training.checkpoint import load_checkpoint
from myutils.training.precision import autocast, resolve_device


def load_trained_model(path: str | Path, device: str | torch.device = "cpu") -> Mapper:
    """A mapper from any checkpoint the SENet trainer wrote, in eval mode."""
    state = load_checkpoint(path, map_location=device)
    if "model_config" not in state or "model_state_dict" not in state:
        raise InputError(f"{path} is not a checkpoint of the SENet trainer (no model_config / model_state_dict)")
    model = build_mapper(state["model_config"])
    model.load_state_dict(state["model_state_dict"])
    return model.to(device).eval()


@torch.no_grad()
def map_features(model, features: np.ndarray, poses: np.ndarray, device, use_amp: bool = False,
                 batch_size: int = 4096, progress: bool = False) -> torch.Tensor:
    """``front_features`` (not normalised) of arrays of features and poses, in eval mode, as a float CPU tensor."""
    model.eval()
    device = torch.device(device)
    outputs = []
    starts = range(0, len(features), batch_size)
    for start in tqdm(starts, desc="mapping", unit="batch", disable=not progress, dynamic_ncols=True):
        src = torch.from_numpy(np.ascontiguousarray(features[start : start + batch_size])).to(device)
        pose = torch.from_numpy(np.ascontiguousarray(poses[start : start + batch_size])).to(device)
        with autocast(device, use_amp):
            outputs.append(model(src, pose)[0].float().cpu())
    if not outputs:
        return torch.empty(0, model.config["image_dim"])
    return torch.cat(outputs)


def map_feature_file(
    model_path: str | os.PathLike, features_path: str | os.PathLike, metadata_path: str | os.PathLike,
    output_path: str | os.PathLike, batch_size: int = 4096, device: str | None = "auto", use_amp: bool = False,
    progress: bool = True,
) -> dict:
    """Map every row of ``features_path`` with the poses of ``metadata_path``; write ``output_path`` (.npy).

    Rows whose feature or pose holds NaN/Inf are not mapped: they are NaN in the output (so rows stay
    aligned with the metadata) and counted in ``num_skipped``. The file is written atomically.
    """
    features_path, metadata_path, output_path = Path(features_path), Path(metadata_path), Path(output_path)
    for path, flag in [(model_path, "--model"), (features_path, "--features"), (metadata_path, "--metadata")]:
        if not Path(path).is_file():
            raise FileNotFoundError(f"{flag} {path}: no such file")
    if output_path.suffix != ".npy":
        raise InputError(f"--output {output_path}: expected a .npy path")
    features = read_features(features_path, allow_non_finite=True)
    poses = read_poses(metadata_path, len(features))
    device = resolve_device(device)
    model = load_trained_model(model_path, device)
    image_dim, pose_dim = model.config["image_dim"], model.config["pose_dim"]
    if features.shape[1] != image_dim or poses.shape[1] != pose_dim:
        raise InputError(f"{model_path} maps {image_dim}-d features with {pose_dim} pose angles; "
                         f"{features_path} has {features.shape[1]}-d features and {metadata_path} {poses.shape[1]} angles")
    valid = np.isfinite(features).all(axis=1) & np.isfinite(poses).all(axis=1)
    start = time.perf_counter()
    mapped = np.full(features.shape, np.nan, dtype=np.float32)
    if valid.any():
        front = map_features(model, features[valid], poses[valid], device, use_amp, batch_size, progress)
        mapped[valid] = F.normalize(front, dim=1).numpy()
    seconds = time.perf_counter() - start
    with atomic_output(output_path) as tmp, open(tmp, "wb") as handle:
        np.save(handle, mapped)
    return {"output": str(output_path), "num_rows": len(features), "num_mapped": int(valid.sum()),
            "num_skipped": int((~valid).sum()), "feature_dim": image_dim, "device": str(device),
            "architecture": model.config.get("architecture", "senet"), "seconds": seconds}
