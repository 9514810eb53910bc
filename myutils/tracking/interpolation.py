"""Offline post-processing of tracker results: filling short gaps of each track (what almost every
MOTChallenge leaderboard entry does after an online tracker).

- ``linear``: a track missing for at most ``max_gap`` frames between two reported frames gets boxes
  on the straight line between them (ByteTrack's and OC-SORT's linear interpolation);
- ``gaussian``: the same, then every coordinate of the whole track smoothed over time by a locally
  linear fit with Gaussian weights (a kernel-regression form of StrongSORT's Gaussian-smoothed
  interpolation, GSI): jitter of the detector's boxes is averaged out, turns stay.
Filled rows get the lower score of the two reported rows around the gap.
"""

from __future__ import annotations

import numpy as np

from myutils.cli import InputError

INTERPOLATION_METHODS = ("none", "linear", "gaussian")


def interpolate_tracks(
    rows: np.ndarray, max_gap: int, method: str = "linear", sigma: float = 3.0
) -> np.ndarray:
    """MOT result rows ``[N, >=7]`` with every gap of at most ``max_gap`` frames filled (see the module
    docstring); ``sigma`` is the Gaussian kernel's width in frames. Sorted by (frame, id)."""
    if method not in INTERPOLATION_METHODS:
        raise InputError(f"interpolation must be one of {INTERPOLATION_METHODS}, got {method!r}")
    if max_gap < 0 or sigma <= 0:
        raise InputError(f"need max_gap >= 0 and sigma > 0, got {max_gap} and {sigma}")
    rows = np.asarray(rows, dtype=np.float64).reshape(-1, np.shape(rows)[-1] if np.size(rows) else 10)
    if method == "none" or len(rows) == 0:
        return rows
    tracks = []
    for track_id in np.unique(rows[:, 1]):
        track = rows[rows[:, 1] == track_id]
        track = track[np.argsort(track[:, 0], kind="stable")]
        track = _fill_gaps(track, max_gap)
        if method == "gaussian":
            track[:, 2:6] = _gaussian_smooth(track[:, 0], track[:, 2:6], sigma)
        tracks.append(track)
    out = np.concatenate(tracks)
    return out[np.lexsort((out[:, 1], out[:, 0]))]


def _fill_gaps(track: np.ndarray, max_gap: int) -> np.ndarray:
    frames = track[:, 0]
    gaps = np.diff(frames) - 1
    filled = [track]
    for k in np.nonzero((gaps > 0) & (gaps <= max_gap))[0]:
        before, after = track[k], track[k + 1]
        steps = np.arange(1, int(gaps[k]) + 1)
        weight = (steps / (after[0] - before[0]))[:, None]
        new = np.repeat(before[None], len(steps), axis=0)
        new[:, 0] = before[0] + steps
        new[:, 2:6] = before[2:6] + weight * (after[2:6] - before[2:6])
        new[:, 6] = min(before[6], after[6])
        filled.append(new)
    track = np.concatenate(filled)
    return track[np.argsort(track[:, 0], kind="stable")]


def _gaussian_smooth(frames: np.ndarray, boxes: np.ndarray, sigma: float) -> np.ndarray:
    """Locally linear regression of each coordinate on time with Gaussian weights (no bias at the ends
    of a moving track, unlike a plain weighted mean); one piece per run of consecutive frames, so a
    long gap left unfilled does not pull the two pieces towards each other."""
    smoothed = boxes.copy()
    starts = np.concatenate([[0], np.nonzero(np.diff(frames) > 1)[0] + 1, [len(frames)]])
    for begin, end in zip(starts[:-1], starts[1:], strict=True):
        offset = frames[None, begin:end] - frames[begin:end, None]  # [at, from]
        weights = np.exp(-0.5 * (offset / sigma) ** 2)
        s0, s1, s2 = weights.sum(1), (weights * offset).sum(1), (weights * offset**2).sum(1)
        t0, t1 = weights @ boxes[begin:end], (weights * offset) @ boxes[begin:end]
        determinant = s0 * s2 - s1**2
        linear = determinant > 1e-9 * np.maximum(s0**2, 1e-12)
        level = np.where(
            linear[:, None], (s2[:, None] * t0 - s1[:, None] * t1) / np.where(linear, determinant, 1)[:, None],
            t0 / s0[:, None],
        )
        smoothed[begin:end] = level
    return smoothed
