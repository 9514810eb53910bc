"""Generated face features with a known pose distortion, in the seed's folder layout.

Each person has a unit identity vector ``f``. A face seen at pose ``(yaw, pitch, roll)`` in degrees yields
``x = L2norm(distort(f, pose) + noise · ε / sqrt(dim))``; frontal images are the same map at near-zero
poses. Roll has no effect (alignment removes it). Every family leaves the planted identity dimensions
untouched (pose-invariant) and takes a ``strength``; ``y = yaw / 90``, ``q = pitch / 90``:

- ``residual``: ``f + y · c · U Vᵀ f + offset · q · u`` with orthonormal ``[dim, rank]`` bases ``Vᵀ U = 0``,
  ``c = strength · sqrt(dim / rank)`` (the distortion is ``strength`` times as long as ``f`` at a ±90°
  profile) and a fixed unit direction ``u``. This is the form DREAM (Cao et al. 2018) assumes, a
  yaw-gated residual; its exact inverse is ``x − y · c · U Vᵀ x − shift``.
- ``mixing``: ``R_pitch(q) R_yaw(y) f``, rotations shared by all persons that mix every non-identity
  dimension: ``R_yaw(y)`` turns each of ``(dim − identity dims) / 2`` random orthogonal planes by
  ``y · φ_k`` with ``φ_k ~ N(0, strength²)`` (radians), so the cosine to ``f`` falls like
  ``exp(−(strength · y)² / 2)``; ``R_pitch`` does the same on other random planes with ``q · ψ_k``.
  Nothing is added: identity information is moved between dimensions, not buried.
- ``nonlinear``: ``f + s · (g(f, y, q) − g(f, 0, 0))`` with a fixed random MLP
  ``g = W2 tanh(W1 f + P [y, q] + b)`` (64 units, fewer in small dimensions); ``s`` makes the distortion ``strength`` times as
  long as ``f`` at a ±90° profile on average. Non-linear in the pose and in the feature.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

from myutils.cli import InputError
from myutils.face.data import (
    FEATURE_FILES,
    METADATA_FILES,
    write_face_feature_folder,
)

POSE_RANGES = {"yaw": 90.0, "pitch": 30.0, "roll": 20.0}  # video poses: uniform in ±range (degrees)
FRONTAL_POSE_STD = 3.0  # degrees
DEFAULT_STRENGTH = {"residual": 6.0, "mixing": 3.0, "nonlinear": 6.0}
NONLINEAR_HIDDEN = 64


def _free_basis(feature_dim: int, identity_dims: np.ndarray, columns: int, rng: np.random.Generator) -> np.ndarray:
    """An orthonormal ``[feature_dim, columns]`` basis with zero rows on the identity dimensions."""
    free = np.setdiff1d(np.arange(feature_dim), identity_dims)
    if columns > len(free):
        raise InputError(f"the distortion needs {columns} free dimensions, only {len(free)} are not identity dims")
    basis = np.zeros((feature_dim, columns))
    basis[free] = np.linalg.qr(rng.standard_normal((len(free), columns)))[0]
    return basis


def _scaled_pose(poses: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return poses[:, :1] / 90.0, poses[:, 1:2] / 90.0


class ResidualDistortion:
    """``f + y · c · U Vᵀ f + offset · q · u`` (module docstring)."""

    def __init__(self, feature_dim: int, identity_dims: np.ndarray, strength: float, rng: np.random.Generator,
                 rank: int = 8, offset: float = 0.5):
        basis = _free_basis(feature_dim, identity_dims, 2 * rank + 1, rng)
        self.out_basis, self.in_basis, self.offset_direction = basis[:, :rank], basis[:, rank:-1], basis[:, -1]
        self.gain = strength * math.sqrt(feature_dim / rank)
        self.offset = offset

    def __call__(self, identity: np.ndarray, poses: np.ndarray) -> np.ndarray:
        yaw, pitch = _scaled_pose(poses)
        residual = (identity @ self.in_basis) @ self.out_basis.T
        return identity + yaw * self.gain * residual + pitch * self.offset * self.offset_direction


class PlaneRotation:
    """Turns each plane (column pair of an orthonormal basis) by ``amount · angle_k``, per row of ``amount``."""

    def __init__(self, basis: np.ndarray, angle_std: float, rng: np.random.Generator):
        self.first, self.second = basis[:, 0::2], basis[:, 1::2]
        self.angles = rng.normal(0.0, angle_std, size=self.first.shape[1])

    def __call__(self, features: np.ndarray, amount: np.ndarray) -> np.ndarray:
        a, b = features @ self.first, features @ self.second
        cos, sin = np.cos(amount * self.angles), np.sin(amount * self.angles)
        # features minus their component in the planes, plus the rotated component
        return features + (a * cos - b * sin - a) @ self.first.T + (a * sin + b * cos - b) @ self.second.T


class MixingDistortion:
    """``R_pitch(q) R_yaw(y) f``: pose-dependent rotations of the non-identity dimensions (module docstring)."""

    def __init__(self, feature_dim: int, identity_dims: np.ndarray, strength: float, rng: np.random.Generator):
        planes = (feature_dim - len(identity_dims)) // 2
        self.yaw = PlaneRotation(_free_basis(feature_dim, identity_dims, 2 * planes, rng), strength, rng)
        self.pitch = PlaneRotation(_free_basis(feature_dim, identity_dims, 2 * planes, rng), strength, rng)

    def __call__(self, identity: np.ndarray, poses: np.ndarray) -> np.ndarray:
        yaw, pitch = _scaled_pose(poses)
        return self.pitch(self.yaw(identity, yaw), pitch)


class NonlinearDistortion:
    """``f + s · (g(f, y, q) − g(f, 0, 0))`` with a fixed random tanh MLP ``g`` (module docstring)."""

    def __init__(self, feature_dim: int, identity_dims: np.ndarray, strength: float, rng: np.random.Generator,
                 hidden: int = NONLINEAR_HIDDEN):
        hidden = min(hidden, feature_dim - len(identity_dims))  # the output directions are orthonormal
        self.feature_in = rng.standard_normal((feature_dim, hidden))  # W1ᵀ: W1 f ~ N(0, 1) for a unit f
        self.pose_in = rng.standard_normal((2, hidden)) * 1.5
        self.bias = rng.standard_normal(hidden) * 0.5
        self.out = _free_basis(feature_dim, identity_dims, hidden, rng).T * rng.uniform(0.5, 1.5, size=(hidden, 1))
        self.scale = 1.0
        probe = rng.standard_normal((512, feature_dim))
        probe /= np.linalg.norm(probe, axis=1, keepdims=True)
        profile = np.column_stack([rng.choice([-90.0, 90.0], size=512), rng.uniform(-30, 30, 512), np.zeros(512)])
        self.scale = strength / np.linalg.norm(self(probe, profile) - probe, axis=1).mean()

    def __call__(self, identity: np.ndarray, poses: np.ndarray) -> np.ndarray:
        pose = np.hstack(_scaled_pose(poses))
        hidden = identity @ self.feature_in + self.bias
        change = np.tanh(hidden + pose @ self.pose_in) - np.tanh(hidden)
        return identity + self.scale * change @ self.out


FAMILIES = {"residual": ResidualDistortion, "mixing": MixingDistortion, "nonlinear": NonlinearDistortion}


def make_distortion(family: str, feature_dim: int, num_identity_dims: int, strength: float | None,
                    rng: np.random.Generator, **options):
    """The distortion of ``family`` with planted identity dimensions (``.identity_dims``, sorted)."""
    if family not in FAMILIES:
        raise InputError(f"unknown distortion family {family!r}; choose one of {sorted(FAMILIES)}")
    if not 0 <= num_identity_dims < feature_dim - 2:
        raise InputError(f"need 0 <= num_identity_dims < feature_dim - 2, got {num_identity_dims} and {feature_dim}")
    identity_dims = np.sort(rng.choice(feature_dim, size=num_identity_dims, replace=False))
    strength = DEFAULT_STRENGTH[family] if strength is None else strength
    distortion = FAMILIES[family](feature_dim, identity_dims, strength, rng, **options)
    distortion.identity_dims = identity_dims
    return distortion


def _observe(distortion, identity: np.ndarray, poses: np.ndarray, noise: float, rng) -> np.ndarray:
    features = distortion(identity, poses) + noise * rng.standard_normal(identity.shape) / math.sqrt(identity.shape[1])
    return (features / np.linalg.norm(features, axis=1, keepdims=True)).astype(np.float32)


def generate_face_features(
    num_persons: int = 1000,
    fronts_per_person: int = 1,
    frames_per_person: int = 4,
    feature_dim: int = 512,
    num_identity_dims: int = 20,
    family: str = "residual",
    strength: float | None = None,
    pose_rank: int = 8,
    offset: float = 0.5,
    noise: float = 0.3,
    seed: int = 0,
) -> dict:
    """Features, poses and metadata of generated persons (see module docstring); nothing is written.

    ``strength`` None takes the family's default (``DEFAULT_STRENGTH``); ``pose_rank`` and ``offset``
    are parameters of the ``residual`` family only.
    """
    if min(num_persons, fronts_per_person, frames_per_person) < 1:
        raise InputError("num_persons, fronts_per_person and frames_per_person must be >= 1")
    rng = np.random.default_rng(seed)
    options = {"rank": pose_rank, "offset": offset} if family == "residual" else {}
    distortion = make_distortion(family, feature_dim, num_identity_dims, strength, rng, **options)
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
        "family": family, "seed": seed, "strength": DEFAULT_STRENGTH[family] if strength is None else strength,
        "noise": noise, "identity_dims": distortion.identity_dims.tolist(),
        **({"pose_rank": pose_rank, "offset": offset} if family == "residual" else {}),
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
