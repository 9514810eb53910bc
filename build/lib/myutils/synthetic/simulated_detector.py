"""A simulated detector (and appearance embedder) driven by ground truth, for tracker benchmarks.

It degrades MOTChallenge ground truth the way real detectors do: box jitter proportional to
the box size, random misses, runs of several consecutive misses (occlusion runs), misses and
low scores for heavily hidden objects, and false positives with lower scores. Three
difficulty levels set how much of each. Every tracker then sees exactly the same detections.

The simulated appearance gives each identity a random unit vector and each detection a noisy
copy (noisier when the object is partly hidden); false positives get random vectors. It is a
labelled stand-in for a trained appearance encoder, not a model of one.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from myutils.cli import InputError

DIFFICULTY_LEVELS = {
    # jitter: box noise std as a fraction of w/h; miss_rate: independent misses;
    # run_rate/run_length: chance per object and frame to start a run of missed frames and its length range;
    # false_positives: mean count per frame; min_visibility: less visible objects are never detected;
    # embedding_noise: std of the appearance noise (relative to the unit identity vector)
    "easy": {
        "jitter": 0.03,
        "miss_rate": 0.03,
        "run_rate": 0.005,
        "run_length": (3, 8),
        "false_positives": 0.3,
        "min_visibility": 0.15,
        "embedding_noise": 0.35,
    },
    "medium": {
        "jitter": 0.05,
        "miss_rate": 0.06,
        "run_rate": 0.01,
        "run_length": (4, 12),
        "false_positives": 1.0,
        "min_visibility": 0.25,
        "embedding_noise": 0.5,
    },
    "hard": {
        "jitter": 0.08,
        "miss_rate": 0.1,
        "run_rate": 0.02,
        "run_length": (5, 20),
        "false_positives": 2.0,
        "min_visibility": 0.35,
        "embedding_noise": 0.7,
    },
}


@dataclass
class SimulatedDetections:
    """MOT detection rows ``[N, 10]`` (``frame, -1, left, top, w, h, score, -1, -1, -1``) in frame order,
    with the true identity (0 for false positives) and visibility of each row."""

    rows: np.ndarray
    identities: np.ndarray
    visibility: np.ndarray


def simulate_detections(
    ground_truth: np.ndarray, width: int, height: int, difficulty: str = "medium", seed: int = 0
) -> SimulatedDetections:
    """Detections for every frame of ``ground_truth`` (MOT gt rows with visibility in column 8)."""
    if difficulty not in DIFFICULTY_LEVELS:
        raise InputError(f"difficulty must be one of {sorted(DIFFICULTY_LEVELS)}, got {difficulty!r}")
    params = DIFFICULTY_LEVELS[difficulty]
    rng = np.random.default_rng(seed)
    ground_truth = np.asarray(ground_truth, dtype=np.float64)
    num_frames = int(ground_truth[:, 0].max()) if len(ground_truth) else 0
    missed_until: dict[int, int] = {}  # identity -> last frame of its current occlusion run
    rows, identities, visibility = [], [], []
    for frame in range(1, num_frames + 1):
        for _, identity, left, top, w, h, _, _, seen, _ in ground_truth[ground_truth[:, 0] == frame]:
            identity = int(identity)
            if rng.random() < params["run_rate"]:
                low, high = params["run_length"]
                missed_until[identity] = frame + int(rng.integers(low, high + 1)) - 1
            if missed_until.get(identity, 0) >= frame or seen < params["min_visibility"]:
                continue
            if rng.random() < params["miss_rate"]:
                continue
            box = _jitter(left, top, w, h, params["jitter"], rng)
            # partly hidden objects score lower: below ~35 % visibility they drop into the low-score band (< 0.5)
            score = np.clip(rng.normal(0.85, 0.07) * (0.35 + 0.65 * seen), 0.05, 0.99)
            _append(rows, identities, visibility, frame, box, score, identity, seen, width, height)
        for _ in range(rng.poisson(params["false_positives"])):
            w, h = rng.uniform(20, 100), rng.uniform(20, 110)
            box = np.array([rng.uniform(0, width - w), rng.uniform(0, height - h), w, h])
            _append(rows, identities, visibility, frame, box, rng.uniform(0.1, 0.65), 0, 0.0, width, height)
    return SimulatedDetections(
        np.asarray(rows, dtype=np.float64).reshape(-1, 10),
        np.asarray(identities, dtype=int),
        np.asarray(visibility, dtype=np.float64),
    )


def simulate_embeddings(
    detections: SimulatedDetections, difficulty: str = "medium", dim: int = 128, seed: int = 0
) -> np.ndarray:
    """Unit embeddings ``[N, dim]``: identity vector + noise growing as the object is hidden; random for FPs."""
    noise_std = DIFFICULTY_LEVELS[difficulty]["embedding_noise"]
    rng = np.random.default_rng(seed)
    identities = detections.identities
    prototypes = {int(i): _unit(rng.normal(size=dim)) for i in np.unique(identities) if i > 0}
    embeddings = np.empty((len(identities), dim))
    for k, identity in enumerate(identities):
        noise = rng.normal(size=dim) / np.sqrt(dim)
        if identity > 0:
            std = noise_std * (1.0 + (1.0 - detections.visibility[k]))
            embeddings[k] = _unit(prototypes[int(identity)] + std * noise)
        else:
            embeddings[k] = _unit(noise)
    return embeddings


def _jitter(
    left: float, top: float, w: float, h: float, amount: float, rng: np.random.Generator
) -> np.ndarray:
    x0, y0 = left + rng.normal(0, amount * w), top + rng.normal(0, amount * h)
    x1, y1 = left + w + rng.normal(0, amount * w), top + h + rng.normal(0, amount * h)
    return np.array([x0, y0, max(x1 - x0, 2.0), max(y1 - y0, 2.0)])


def _append(rows, identities, visibility, frame, box, score, identity, seen, width, height) -> None:
    left, top = np.clip(box[0], 0, width - 2), np.clip(box[1], 0, height - 2)
    right, bottom = np.clip(box[0] + box[2], left + 2, width), np.clip(box[1] + box[3], top + 2, height)
    rows.append([frame, -1, left, top, right - left, bottom - top, float(score), -1, -1, -1])
    identities.append(identity)
    visibility.append(seen)


def _unit(vector: np.ndarray) -> np.ndarray:
    return vector / np.linalg.norm(vector)
