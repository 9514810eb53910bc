"""MOT evaluation against motmetrics and by hand; the simulated detector's degradations."""

import numpy as np
import pytest

from myutils.synthetic.scenes import generate_scene
from myutils.synthetic.simulated_detector import DIFFICULTY_LEVELS, simulate_detections, simulate_embeddings
from myutils.tracking.mot_metrics import combine_summaries, evaluate_mot
from myutils.tracking.tracker import TrackerConfig, track_detections


def row(frame, identity, left, top, w=10.0, h=10.0):
    return [frame, identity, left, top, w, h, 1, 1, 1, -1]


def test_clear_mot_and_idf1_by_hand():
    ground_truth = np.array([row(f, 1, 0, 0) for f in range(1, 5)] + [row(f, 2, 50, 0) for f in range(1, 5)])
    results = np.array(
        [row(1, 7, 0, 0), row(2, 7, 1, 0), row(3, 8, 0, 0), row(4, 8, 0, 0)]  # object 1: one switch (7 -> 8)
        + [
            row(1, 9, 50, 0),
            row(2, 9, 58, 0),
        ]  # object 2: IoU 2/18 in frame 2 -> FP + miss; frames 3-4 missed
        + [row(4, 5, 200, 200)]  # a false positive
    )
    summary = evaluate_mot(ground_truth, results)
    assert (summary.num_matches, summary.num_switches, summary.num_false_positives, summary.num_misses) == (
        5,
        1,
        2,
        3,
    )
    assert summary.mota == pytest.approx(1 - (3 + 2 + 1) / 8)
    # IDF1: best mapping 1->7 (2 frames) or 1->8 (2), 2->9 (1 valid frame) -> IDTP 3
    assert summary.num_id_true_positives == 3
    assert summary.idf1 == pytest.approx(2 * 3 / (8 + 7))
    assert summary.motp == pytest.approx((1 + 90 / 110 + 1 + 1 + 1) / 5)
    assert summary.mostly_tracked == 1 and summary.mostly_lost == 0  # object 2 matched 1 of 4 frames
    ignored = ground_truth.copy()
    ignored[ground_truth[:, 1] == 2, 6] = 0  # "consider" flag 0: object 2 does not count
    assert evaluate_mot(ignored, results).num_objects == 4
    with pytest.raises(ValueError, match="duplicate"):
        evaluate_mot(ground_truth, np.array([row(1, 3, 0, 0), row(1, 3, 50, 0)]))


def motmetrics_numbers(ground_truth: np.ndarray, results: np.ndarray) -> dict:
    """The same evaluation with motmetrics 1.4.0 (np.asfarray is shimmed by the calling test)."""
    mm = pytest.importorskip("motmetrics")
    accumulator = mm.MOTAccumulator(auto_id=False)
    for frame in range(1, int(max(ground_truth[:, 0].max(), results[:, 0].max())) + 1):
        gt, hyp = ground_truth[ground_truth[:, 0] == frame], results[results[:, 0] == frame]
        distances = mm.distances.iou_matrix(gt[:, 2:6], hyp[:, 2:6], max_iou=0.5)
        accumulator.update(gt[:, 1].astype(int), hyp[:, 1].astype(int), distances, frameid=frame)
    names = [
        "mota",
        "motp",
        "idf1",
        "idp",
        "idr",
        "num_switches",
        "num_false_positives",
        "num_misses",
        "mostly_tracked",
        "mostly_lost",
    ]
    frame = mm.metrics.create().compute(accumulator, metrics=names, name="seq")
    return {name: float(frame[name].iloc[0]) for name in names}


@pytest.mark.parametrize("difficulty", ["medium", "hard"])
def test_evaluation_equals_motmetrics_on_a_tracked_scene(difficulty, monkeypatch):
    # motmetrics 1.4.0 calls np.asfarray, which NumPy 2 removed: a shim for this test only
    monkeypatch.setattr(np, "asfarray", lambda a, dtype=np.float64: np.asarray(a, dtype=dtype), raising=False)
    scene = generate_scene(num_frames=120, num_objects=8, seed=4, difficulty=difficulty)
    detections = simulate_detections(scene.ground_truth, scene.width, scene.height, difficulty, seed=4)
    results = track_detections(detections.rows, TrackerConfig(n_init=1, high_score=0.3), num_frames=120)
    results[::9, 1] += 100  # extra identity switches and fragments to count
    ours = evaluate_mot(scene.ground_truth, results)
    reference = motmetrics_numbers(scene.ground_truth, results)
    assert ours.num_switches == reference["num_switches"] > 0
    assert ours.num_false_positives == reference["num_false_positives"]
    assert ours.num_misses == reference["num_misses"]
    assert (ours.mostly_tracked, ours.mostly_lost) == (reference["mostly_tracked"], reference["mostly_lost"])
    for name in ("mota", "idf1", "idp", "idr"):
        assert getattr(ours, name) == pytest.approx(reference[name], abs=1e-12)
    assert ours.motp == pytest.approx(1.0 - reference["motp"])  # motmetrics reports the mean 1 - IoU


def test_combined_summary_equals_evaluating_the_concatenation():
    scene = generate_scene(num_frames=60, num_objects=5, seed=1)
    detections = simulate_detections(scene.ground_truth, scene.width, scene.height, "medium", seed=1)
    results = track_detections(detections.rows, num_frames=60)
    first_gt, first_results = scene.ground_truth[:, 0] <= 30, results[:, 0] <= 30
    halves = [(first_gt, first_results), (~first_gt, ~first_results)]
    parts = [evaluate_mot(scene.ground_truth[g], results[r]) for g, r in halves]
    # the halves share no frames, so shifting the second half's ids apart makes one joint sequence
    shifted_gt, shifted_results = scene.ground_truth.copy(), results.copy()
    shifted_gt[~halves[0][0], 1] += 1000
    shifted_results[~halves[0][1], 1] += 1000
    joint = evaluate_mot(shifted_gt, shifted_results)
    combined = combine_summaries(parts)
    assert combined.mota == pytest.approx(joint.mota) and combined.idf1 == pytest.approx(joint.idf1)
    assert combined.num_switches == joint.num_switches and combined.motp == pytest.approx(joint.motp)


def test_simulated_detector_degrades_with_difficulty_and_is_deterministic():
    scene = generate_scene(num_frames=150, num_objects=8, seed=2)
    counts = {}
    for difficulty in DIFFICULTY_LEVELS:
        detections = simulate_detections(scene.ground_truth, scene.width, scene.height, difficulty, seed=0)
        again = simulate_detections(scene.ground_truth, scene.width, scene.height, difficulty, seed=0)
        assert np.array_equal(detections.rows, again.rows)
        true_positive = detections.identities > 0
        counts[difficulty] = (true_positive.sum(), (~true_positive).sum())
        scores = detections.rows[:, 6]
        assert scores[~true_positive].mean() < scores[true_positive & (detections.visibility > 0.8)].mean()
        right = detections.rows[:, 2] + detections.rows[:, 4]
        assert (detections.rows[:, 2] >= 0).all() and (right <= scene.width + 1e-9).all()
        half_hidden = scores[true_positive & (detections.visibility < 0.5)]
        assert half_hidden.mean() < scores[true_positive & (detections.visibility > 0.8)].mean() - 0.15
    assert counts["easy"][0] > counts["medium"][0] > counts["hard"][0]  # more misses
    assert counts["easy"][1] < counts["medium"][1] < counts["hard"][1]  # more false positives


def test_simulated_embeddings_separate_identities():
    scene = generate_scene(num_frames=60, num_objects=6, seed=3)
    detections = simulate_detections(scene.ground_truth, scene.width, scene.height, "medium", seed=3)
    embeddings = simulate_embeddings(detections, "medium", seed=3)
    assert np.allclose(np.linalg.norm(embeddings, axis=1), 1.0)
    similarity = embeddings @ embeddings.T
    same = detections.identities[:, None] == detections.identities[None, :]
    real = (detections.identities[:, None] > 0) & (detections.identities[None, :] > 0)
    assert similarity[same & real].mean() > 0.6 > 0.2 > similarity[~same & real].mean()
