"""Tracker life cycle, ByteTrack's low-score round, appearance through a crossing, re-identification."""

import numpy as np
import pytest

from myutils.tracking.boxes import tlwh_to_xyxy
from myutils.tracking.mot_io import read_mot, write_mot
from myutils.tracking.mot_metrics import evaluate_mot
from myutils.tracking.tracker import Tracker, TrackerConfig, track_detections


def box_at(cx: float, cy: float = 200.0, w: float = 40.0, h: float = 80.0) -> np.ndarray:
    return np.array([[cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]])


def test_tentative_tracks_are_not_reported_and_die_at_first_miss():
    tracker = Tracker(TrackerConfig(n_init=3, max_age=4))
    reported = [tracker.update(box_at(100 + 5 * f), [0.9]) for f in range(3)]
    assert [len(r) for r in reported] == [0, 0, 1]  # confirmed at the third hit
    assert reported[2][0].track_id == 1
    assert np.allclose(reported[2][0].box_xyxy, box_at(110)[0])  # the matched detection's box
    # a one-frame false positive elsewhere: tentative, never reported, gone after its first miss
    assert [o.track_id for o in tracker.update(np.vstack([box_at(115), box_at(400)]), [0.9, 0.9])] == [1]
    assert len(tracker.tracks) == 2
    tracker.update(box_at(120), [0.9])
    assert len(tracker.tracks) == 1
    # the confirmed track survives max_age missed frames, then it is deleted
    for _ in range(4):
        assert tracker.update(np.zeros((0, 4)), np.zeros(0)) == []
    assert len(tracker.tracks) == 1
    tracker.update(np.zeros((0, 4)), np.zeros(0))
    assert tracker.tracks == []


def test_confirmed_track_continues_after_a_short_gap_with_the_same_id():
    tracker = Tracker(TrackerConfig(n_init=2))
    for f in range(5):
        tracker.update(box_at(100 + 5 * f), [0.9])
    for _ in range(3):
        tracker.update(np.zeros((0, 4)), np.zeros(0))
    reported = tracker.update(box_at(140), [0.9])  # where constant velocity puts it
    assert [o.track_id for o in reported] == [1]


def test_low_score_detections_extend_tracks_but_never_start_them():
    config = TrackerConfig(n_init=1, high_score=0.5, low_score=0.1, new_track_score=0.6)
    tracker = Tracker(config)
    tracker.update(box_at(100), [0.9])
    reported = tracker.update(np.vstack([box_at(103), box_at(400)]), [0.3, 0.3])  # occluded: low scores
    assert [(o.track_id, o.detection_index) for o in reported] == [(1, 0)]
    assert len(tracker.tracks) == 1
    assert tracker.update(box_at(106), [0.05]) == []  # below low_score: ignored


def crossing_with_bounce(num_frames: int = 40, noise: float = 0.1, seed: int = 0):
    """Two equal boxes meet and bounce back: constant velocity predicts each one in the other's place."""
    rng = np.random.default_rng(seed)
    prototypes = {1: np.eye(16)[0], 2: np.eye(16)[1]}
    ground_truth, detections, embeddings = [], [], []
    meet = 100 / 6.0
    for frame in range(1, num_frames + 1):
        t = frame - 1
        for identity, start, velocity in ((1, 100.0, 6.0), (2, 300.0, -6.0)):
            cx = start + velocity * t if t <= meet else start + velocity * (2 * meet - t)
            box = [cx - 20, 160, 40, 80]
            ground_truth.append([frame, identity, *box, 1, 1, 1, -1])
            detections.append([frame, -1, *box, 0.9, -1, -1, -1])
            embeddings.append(prototypes[identity] + noise * rng.normal(size=16))
    return np.array(ground_truth), np.array(detections), np.array(embeddings)


def test_appearance_keeps_identities_through_a_crossing_where_motion_alone_swaps():
    ground_truth, detections, embeddings = crossing_with_bounce()
    motion_only = evaluate_mot(ground_truth, track_detections(detections, TrackerConfig()))
    with_appearance_rows = track_detections(detections, TrackerConfig(), embeddings)
    with_appearance = evaluate_mot(ground_truth, with_appearance_rows)
    assert motion_only.num_switches >= 1  # the scenario really fools constant-velocity motion
    assert with_appearance.num_switches == 0
    # each identity keeps one track id over all of its reported frames
    for identity in (1, 2):
        frames = ground_truth[ground_truth[:, 1] == identity]
        ids = set()
        for row in with_appearance_rows:
            same_frame = frames[frames[:, 0] == row[0]]
            if len(same_frame) and np.allclose(row[2:6], same_frame[0, 2:6]):
                ids.add(int(row[1]))
        assert len(ids) == 1
    assert with_appearance.idf1 > motion_only.idf1


def test_lost_track_is_reidentified_by_appearance_far_from_its_prediction():
    config = TrackerConfig(n_init=2, max_age=40)
    look, other = np.eye(8)[0], np.eye(8)[3]
    for embeddings, expected_id in ((look[None], 1), (other[None], 2)):
        tracker = Tracker(config)
        for f in range(5):
            tracker.update(box_at(100 + 4 * f), [0.9], look[None])
        for _ in range(20):
            tracker.update(np.zeros((0, 4)), np.zeros(0), np.zeros((0, 8)))
        # it comes back at the other side of the image, far outside the motion gate
        tracker.update(box_at(500, cy=80), [0.9], embeddings)
        reported = tracker.update(box_at(502, cy=80), [0.9], embeddings)
        assert [o.track_id for o in reported] == [expected_id]
    # without appearance the same return is a new identity
    tracker = Tracker(config)
    for f in range(5):
        tracker.update(box_at(100 + 4 * f), [0.9])
    for _ in range(20):
        tracker.update(np.zeros((0, 4)), np.zeros(0))
    tracker.update(box_at(500, cy=80), [0.9])
    assert [o.track_id for o in tracker.update(box_at(502, cy=80), [0.9])] == [2]


def test_track_detections_equals_a_manual_loop_and_results_round_trip(tmp_path):
    ground_truth, detections, embeddings = crossing_with_bounce(noise=0.2, seed=3)
    rows = track_detections(detections, TrackerConfig(n_init=2), embeddings)
    tracker, manual = Tracker(TrackerConfig(n_init=2)), []
    for frame in range(1, int(detections[:, 0].max()) + 1):
        in_frame = detections[:, 0] == frame
        for obj in tracker.update(
            tlwh_to_xyxy(detections[in_frame, 2:6]), detections[in_frame, 6], embeddings[in_frame]
        ):
            manual.append((frame, obj.track_id))
    assert [(int(f), int(i)) for f, i in rows[:, :2]] == manual
    path = write_mot(tmp_path / "results.txt", rows)
    again = read_mot(path)
    assert np.allclose(again[:, :7], rows[:, :7], atol=0.006)  # boxes written with 2 decimals
    assert evaluate_mot(ground_truth, again).num_matches == evaluate_mot(ground_truth, rows).num_matches


def test_bad_inputs_raise_clear_errors():
    tracker = Tracker()
    with pytest.raises(ValueError, match="scores"):
        tracker.update(box_at(100), [0.9, 0.8])
    with pytest.raises(ValueError, match="right > left"):
        tracker.update(np.array([[10.0, 10.0, 5.0, 20.0]]), [0.9])
    with pytest.raises(ValueError, match="embeddings"):
        tracker.update(box_at(100), [0.9], np.zeros((2, 8)))
    with pytest.raises(ValueError, match="low_score"):
        TrackerConfig(low_score=0.7, high_score=0.5)
    with pytest.raises(ValueError, match="embeddings"):
        track_detections(np.array([[1, -1, 0, 0, 10, 10, 0.9, -1, -1, -1]]), embeddings=np.zeros((2, 4)))


def test_uninformative_embeddings_do_not_break_a_clearly_overlapping_track():
    rng = np.random.default_rng(0)
    rows = np.array([[f, -1, 100 + 3 * f, 150, 40, 80, 0.9, -1, -1, -1] for f in range(1, 31)], dtype=float)
    random_looks = rng.normal(size=(30, 32))  # every frame looks unrelated to the previous one
    kept = track_detections(rows, TrackerConfig(), random_looks)
    assert set(kept[:, 1]) == {1} and len(kept) == 29  # one identity, reported from its second hit on
    vetoing = track_detections(rows, TrackerConfig(motion_override_iou=1.01), random_looks)
    assert len(set(vetoing[:, 1])) >= 10  # a hard appearance gate breaks the track again and again
