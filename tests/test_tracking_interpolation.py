"""Gap interpolation of tracker results: linear by hand, Gaussian smoothing against the truth."""

import numpy as np
import pytest

from myutils.tracking.interpolation import interpolate_tracks
from myutils.tracking.mot_metrics import evaluate_mot


def rows_at(track_id, frames, left, top=50.0, w=20.0, h=40.0, score=0.9):
    return np.array([[f, track_id, x, top, w, h, score, -1, -1, -1] for f, x in zip(frames, left, strict=True)])


def test_linear_fills_short_gaps_only():
    track = rows_at(1, [1, 2, 6, 20], [0.0, 10.0, 50.0, 190.0])
    other = rows_at(2, [1, 3], [300.0, 320.0], score=0.4)
    out = interpolate_tracks(np.vstack([track, other]), max_gap=2, method="linear")
    assert out[out[:, 1] == 1][:, 0].tolist() == [1, 2, 6, 20]  # frames 3..5 are a gap of 3 > 2
    out = interpolate_tracks(np.vstack([track, other]), max_gap=3, method="linear")
    one, two = out[out[:, 1] == 1], out[out[:, 1] == 2]
    assert one[:, 0].tolist() == [1, 2, 3, 4, 5, 6, 20]  # 7..19 (13 frames) stay a gap
    assert one[2:5, 2].tolist() == pytest.approx([20.0, 30.0, 40.0])
    assert two[:, 0].tolist() == [1, 2, 3] and two[1, 2] == pytest.approx(310.0) and two[1, 6] == pytest.approx(0.4)
    assert out[:, 0].tolist() == sorted(out[:, 0].tolist())  # frame order, as MOT files are written
    assert np.array_equal(interpolate_tracks(track, 10, "none"), track)


def test_gaussian_smoothing_removes_jitter_and_keeps_a_straight_walk():
    rng = np.random.default_rng(0)
    frames = np.arange(1, 61)
    truth = 100.0 + 4.0 * frames
    exact = interpolate_tracks(rows_at(1, frames, truth), max_gap=5, method="gaussian", sigma=3.0)
    assert np.allclose(exact[:, 2], truth)  # a locally linear fit reproduces constant speed, ends included
    noisy = rows_at(1, frames, truth + rng.normal(0, 3.0, size=len(frames)))
    smoothed = interpolate_tracks(noisy, max_gap=5, method="gaussian", sigma=3.0)
    assert np.abs(smoothed[:, 2] - truth).mean() < 0.5 * np.abs(noisy[:, 2] - truth).mean()


def test_interpolation_recovers_missed_boxes_of_a_tracked_object():
    frames = np.arange(1, 42)
    ground_truth = rows_at(1, frames, 10.0 + 3 * frames)
    ground_truth[:, 6:9] = [1, 1, 1]
    kept = (frames % 5) != 0  # every fifth box missed by the detector
    results = rows_at(7, frames[kept], 10.0 + 3 * frames[kept])
    before, after = evaluate_mot(ground_truth, results), evaluate_mot(ground_truth, interpolate_tracks(results, 2))
    assert before.num_misses == 8 and after.num_misses == 0 and after.hota > before.hota


def test_bad_settings():
    with pytest.raises(ValueError, match="interpolation"):
        interpolate_tracks(rows_at(1, [1, 3], [0.0, 1.0]), 2, "cubic")
    with pytest.raises(ValueError, match="sigma"):
        interpolate_tracks(rows_at(1, [1, 3], [0.0, 1.0]), 2, "gaussian", sigma=0)
