"""Generated face features with a known, learnable pose distortion, in the seed's folder layout.

Each person has a unit identity vector ``f``. A face seen at pose (yaw, pitch, roll) in degrees yields::

    x = L2norm( f + (yaw / 90) · c · U Vᵀ f  +  offset · (pitch / 90) · u  +  noise · ε / sqrt(dim) )

``U``, ``V`` are orthonormal ``[dim, rank]`` bases with ``Vᵀ U = 0`` and zero rows on the planted identity
dimensions (which therefore stay pose-invariant), ``c = strength · sqrt(dim / rank)`` makes the distortion
``strength`` times as long as ``f`` at a ±90° profile, and ``u`` is a fixed unit direction. This is the
form DREAM (Cao et al. 2018) assumes, a yaw-gated residual of the frontal feature, and its exact inverse
``f ∝ x − (yaw / 90) · c · U Vᵀ x − shift`` is what a mapper has to learn. Roll has no effect (alignment
removes it). Frontal images are the same map at near-zero poses.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

from myutils.cli import InputError
from train_transformer3D.triplet.face_feature_data import (
    FEATURE_FILES,
    METADATA_FILES,
    write_face_feature_folder,
)

POSE_RANGES = {"yaw": 90.0, "pitch": 30.0, "roll": 20.0}  # video poses: uniform in ±range (degrees)
FRONTAL_POSE_STD = 3.0  # degrees


class PoseDistortion:
    """The known map from an identity vector and a head pose to the observed feature."""

    def __init__(
        self, feature_dim: int, num_identity_dims: int, rank: int, strength: float, offset: float,
        rng: np.random.Generator,
    ):
        if not 0 <= num_identity_dims < feature_dim - 2 * rank:
            raise InputError(
                f"need 0 <= num_identity_dims < feature_dim - 2 * pose_rank, got {num_identity_dims}, "
                f"{feature_dim}, {rank}"
            )
        self.identity_dims = np.sort(rng.choice(feature_dim, size=num_identity_dims, replace=False))
        other_dims = np.setdiff1d(np.arange(feature_dim), self.identity_dims)
        basis = np.zeros((feature_dim, 2 * rank + 1))
        basis[other_dims] = np.linalg.qr(rng.standard_normal((len(other_dims), 2 * rank + 1)))[0]
        self.out_basis, self.in_basis, self.offset_direction = basis[:, :rank], basis[:, rank:-1], basis[:, -1]
        self.gain = strength * math.sqrt(feature_dim / rank)
        self.offset = offset

    def __call__(self, identity: np.ndarray, poses: np.ndarray) -> np.ndarray:
        """Noise-free distorted features ``[N, dim]`` of identity vectors ``[N, dim]`` at poses ``[N, 3]``."""
        yaw, pitch = poses[:, :1] / 90.0, poses[:, 1:2] / 90.0
        residual = (identity @ self.in_basis) @ self.out_basis.T
        return identity + yaw * self.gain * residual + pitch * self.offset * self.offset_direction


def _observe(distortion: PoseDistortion, identity: np.ndarray, poses: np.ndarray, noise: float, rng) -> np.ndarray:
    features = distortion(identity, poses) + noise * rng.standard_normal(identity.shape) / math.sqrt(identity.shape[1])
    return (features / np.linalg.norm(features, axis=1, keepdims=True)).astype(np.float32)


def generate_face_features(
    num_persons: int = 60,
    fronts_per_person: int = 2,
    frames_per_person: int = 20,
    feature_dim: int = 512,
    num_identity_dims: int = 20,
    pose_rank: int = 8,
    strength: float = 6.0,
    offset: float = 0.5,
    noise: float = 0.3,
    seed: int = 0,
) -> dict:
    """Features, poses and metadata of generated persons (see module docstring); nothing is written."""
    if min(num_persons, fronts_per_person, frames_per_person) < 1:
        raise InputError("num_persons, fronts_per_person and frames_per_person must be >= 1")
    rng = np.random.default_rng(seed)
    distortion = PoseDistortion(feature_dim, num_identity_dims, pose_rank, strength, offset, rng)
    identities = rng.standard_normal((num_persons, feature_dim))
    identities /= np.linalg.norm(identities, axis=1, keepdims=True)
    names = [f"person_{i:04d}" for i in range(num_persons)]

    front_person = np.repeat(np.arange(num_persons), fronts_per_person)
    front_poses = rng.normal(0.0, FRONTAL_POSE_STD, size=(len(front_person), 3))
    video_person = np.repeat(np.arange(num_persons), frames_per_person)
    limits = np.array(list(POSE_RANGES.values()))
    video_poses = rng.uniform(-limits, limits, size=(len(video_person), 3))

    def metadata(persons: np.ndarray, poses: np.ndarray, kind: str) -> dict:
        entries = [
            {"person_name": names[p], "image_path": f"synthetic/{names[p]}/{kind}_{i:05d}.jpg", "image_size": [112, 112]}
            for i, p in enumerate(persons)
        ]
        return {"metadata": entries, "poses": np.round(poses, 3).tolist()}

    generator = {
        "seed": seed, "pose_rank": pose_rank, "strength": strength, "offset": offset, "noise": noise,
        "identity_dims": distortion.identity_dims.tolist(),
    }
    return {
        "front_features": _observe(distortion, identities[front_person], front_poses, noise, rng),
        "front_metadata": {**metadata(front_person, front_poses, "front"), "generator": generator},
        "video_features": _observe(distortion, identities[video_person], video_poses, noise, rng),
        "video_metadata": {**metadata(video_person, video_poses, "video"), "generator": generator},
        "identity_dims": distortion.identity_dims.tolist(),
    }


def make_face_feature_data(out_dir: str | os.PathLike, overwrite: bool = False, **params) -> dict:
    """Generate persons (``params`` of :func:`generate_face_features`) and write the folder layout.

    Refuses to replace existing data files unless ``overwrite``.
    """
    out_dir = Path(out_dir)
    existing = [out_dir / name for name in [*FEATURE_FILES.values(), *METADATA_FILES.values()] if (out_dir / name).exists()]
    if existing and not overwrite:
        raise FileExistsError(f"{existing[0]} already exists; pass overwrite=True (--overwrite) to replace the data")
    data = generate_face_features(**params)
    write_face_feature_folder(
        out_dir, data["front_features"], data["front_metadata"], data["video_features"], data["video_metadata"]
    )
    return {
        "out_dir": str(out_dir),
        "num_front": len(data["front_features"]),
        "num_video": len(data["video_features"]),
        "feature_dim": int(data["front_features"].shape[1]),
        "identity_dims": data["identity_dims"],
    }
