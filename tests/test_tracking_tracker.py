"""Tracker life cycle, ByteTrack's low-score round, appearance through a crossing, re-identification."""

import numpy as np
import pytest

from myutils.tracking.boxes import tlwh_to_xyxy
from myutils.tracking.kalman_filter import boxes_to_measurements
from myutils.tracking.mot_io import read_mot, write_mot
from myutils.tracking.mot_metrics import evaluate_mot
from myutils.tracking.tracker import Tracker, TrackerConfig, results_to_mot_rows, track_detections


def box_at(cx: float, cy: float = 200.0, w: float = 40.0, h: float = 80.0) -> np.ndarray:
    return np.array([[cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]])


def test_tentative_tracks_are_not_reported_and_die_at_first_miss():
    config = TrackerConfig(n_init=3, max_age_seconds=0.4, confirm_first_frame=False)
    tracker = Tracker(config, fps=10)  # max age 4 frames
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


def test_tracks_of_the_first_frame_are_confirmed_at_once():
    for first_frame, expected in ((True, [1, 1, 1]), (False, [0, 1, 1])):
        tracker = Tracker(TrackerConfig(n_init=2, confirm_first_frame=first_frame))
        reported = [tracker.update(np.vstack([box_at(100 + 5 * f)] + [box_at(300)] * (f > 0)), [0.9] * (1 + (f > 0)))
                    for f in range(3)]
        assert [len([o for o in r if o.detection_index == 0]) for r in reported] == expected
        # an object appearing later still needs n_init hits: reported from its second frame on
        assert [len([o for o in r if o.detection_index == 1]) for r in reported] == [0, 0, 1]


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


def walk_then_vanish(tracker, look, frames_lost=6):
    """A track walking right at 4 px/frame for 5 frames (x = 100 ... 116), then unseen."""
    for f in range(5):
        tracker.update(box_at(100 + 4 * f), [0.9], None if look is None else look[None])
    for _ in range(frames_lost):
        tracker.update(np.zeros((0, 4)), np.zeros(0), None if look is None else np.zeros((0, len(look))))


def outside_motion_gate(tracker, box) -> bool:
    """Would the next frame's Kalman prediction of the first track reject ``box`` (round 1 cannot match it)?"""
    track = tracker.tracks[0]
    mean, cov = tracker.kalman.predict(track.mean[None], track.cov[None])
    measurement = boxes_to_measurements(box, tracker.config.kalman_state)
    return tracker.kalman.gating_distance(mean, cov, measurement, only_position=True)[0, 0] > tracker.gate


def test_lost_track_is_reidentified_by_appearance_outside_the_motion_gate_but_nearby():
    config = TrackerConfig(n_init=2, reid_max_speed=4.0)
    look, other = np.eye(8)[0], np.eye(8)[3]
    # 6 frames (0.2 s) later it is back 115 px up-left of where it vanished: outside the motion gate
    # (the prediction went on to the right), inside the re-id reach of 80 * (1 + 4 * 0.2) = 144 px
    for embeddings, expected_id in ((look[None], 1), (other[None], 2)):
        tracker = Tracker(config)
        walk_then_vanish(tracker, look)
        assert outside_motion_gate(tracker, box_at(60, cy=100))
        tracker.update(box_at(60, cy=100), [0.9], embeddings)
        reported = tracker.update(box_at(62, cy=100), [0.9], embeddings)
        assert [o.track_id for o in reported] == [expected_id]
    # without appearance the same return is a new identity
    tracker = Tracker(config)
    walk_then_vanish(tracker, None)
    tracker.update(box_at(60, cy=100), [0.9])
    assert [o.track_id for o in tracker.update(box_at(62, cy=100), [0.9])] == [2]


def test_reidentification_is_bounded_in_space_and_time():
    look = np.eye(8)[0]
    # across the image (383 px in 0.2 s) the same look is a new identity: it cannot be the same object
    tracker = Tracker(TrackerConfig(n_init=2, reid_max_speed=4.0))
    walk_then_vanish(tracker, look)
    tracker.update(box_at(480, cy=80), [0.9], look[None])
    assert [o.track_id for o in tracker.update(box_at(482, cy=80), [0.9], look[None])] == [2]
    # the reach grows with the speed allowed: 20 box heights per second cover it
    tracker = Tracker(TrackerConfig(n_init=2, reid_max_speed=20.0))
    walk_then_vanish(tracker, look)
    assert [o.track_id for o in tracker.update(box_at(480, cy=80), [0.9], look[None])] == [1]
    # lost for longer than the re-id window (0.1 s = 3 frames): not re-identified, even nearby
    tracker = Tracker(TrackerConfig(n_init=2, reid_window_seconds=0.1))
    walk_then_vanish(tracker, look)
    tracker.update(box_at(60, cy=100), [0.9], look[None])
    assert [o.track_id for o in tracker.update(box_at(62, cy=100), [0.9], look[None])] == [2]
    # ... and at 10 frames/s the same 6 frames are 0.6 s: within a 1 s window, too far for 4 heights/s
    tracker = Tracker(TrackerConfig(n_init=2, reid_window_seconds=1.0), fps=10)
    walk_then_vanish(tracker, look)
    assert [o.track_id for o in tracker.update(box_at(60, cy=100), [0.9], look[None])] == [1]


def test_a_track_missed_for_one_frame_is_not_reidentified_elsewhere():
    look = np.eye(8)[0]
    tracker = Tracker(TrackerConfig(n_init=2, reid_max_speed=100.0))  # the spatial bound would not stop it
    walk_then_vanish(tracker, look, frames_lost=0)
    # next frame: no detection where it is, but one with its look 150 px away (within re-id reach)
    assert tracker.update(box_at(270), [0.9], look[None]) == []
    track = next(t for t in tracker.tracks if t.track_id == 1)
    assert np.allclose(track.observed_box, box_at(116)[0])  # it did not jump
    assert [o.track_id for o in tracker.update(box_at(272), [0.9], look[None])] == [2]


def test_a_false_positive_beside_a_missed_track_does_not_swap_identities():
    """The issue's example in the tracker: tracks at x=100 and x=120; the second is missed and a
    false positive appears at x=80. Maximising the number of pairs gave [[0, 1], [1, 0]]."""
    tracker = Tracker(TrackerConfig(n_init=2))
    for _ in range(3):
        tracker.update(np.vstack([box_at(100), box_at(120)]), [0.9, 0.9])
    reported = tracker.update(np.vstack([box_at(100), box_at(80)]), [0.9, 0.9])
    assert [(o.track_id, o.detection_index) for o in reported] == [(1, 0)]


def test_an_overlap_match_with_a_mismatched_look_does_not_teach_the_track_that_look():
    look, wrong = np.eye(8)[0], np.eye(8)[5]
    tracker = Tracker(TrackerConfig(n_init=2, motion_override_iou=0.5))
    for f in range(4):
        tracker.update(box_at(100 + 2 * f), [0.9], look[None])
    bank_size = len(tracker.tracks[0].bank)
    # a clear overlap with another look: still matched (weak embeddings must not break tracks) ...
    reported = tracker.update(box_at(108), [0.9], wrong[None])
    assert [o.track_id for o in reported] == [1]
    # ... but the look it learnt stays its own
    track = tracker.tracks[0]
    assert np.allclose(track.feature, look) and len(track.bank) == bank_size
    tracker.update(box_at(110), [0.9], look[None])
    assert len(tracker.tracks[0].bank) == bank_size + 1  # an agreeing look is learnt


def test_classes_are_never_mixed():
    tracker = Tracker(TrackerConfig(n_init=1))
    for f in range(3):
        reported = tracker.update(
            np.vstack([box_at(100 + 2 * f), box_at(300)]), [0.9, 0.9], class_ids=np.array([0, 2])
        )
    assert [(o.track_id, o.class_id) for o in reported] == [(1, 0), (2, 2)]
    # the class-0 object's detection now carries class 5: a new track, never track 1
    reported = tracker.update(np.vstack([box_at(106), box_at(300)]), [0.9, 0.9], class_ids=np.array([5, 2]))
    assert [(o.track_id, o.class_id, o.detection_index) for o in reported] == [(2, 2, 1), (3, 5, 0)]
    assert {t.track_id: t.class_id for t in tracker.tracks} == {1: 0, 2: 2, 3: 5}
    rows = results_to_mot_rows(4, reported)
    assert rows.shape == (2, 10) and (rows[:, 7:] == -1).all()  # MOT results keep x, y, z = -1
    with pytest.raises(ValueError, match="class ids"):
        tracker.update(box_at(100), [0.9], class_ids=np.array([0, 1]))


def test_camera_motion_compensation_keeps_identities_through_a_jerky_pan():
    """Objects standing still while the camera jumps 30 px left and right: the boxes leap, the world does not."""
    pans = np.random.default_rng(0).uniform(-45, 45, size=30)
    offset, boxes_per_frame, warps = 0.0, [], []
    for pan in pans:
        offset += pan
        boxes_per_frame.append(np.vstack([box_at(150 + offset), box_at(400 + offset)]))
        warps.append(np.array([[1.0, 0.0, pan], [0.0, 1.0, 0.0]]))
    ids = {}
    for name, use_warps in (("compensated", True), ("plain", False)):
        tracker = Tracker(TrackerConfig(n_init=1, min_iou_recovery=1.0))
        seen = set()
        for boxes, warp in zip(boxes_per_frame, warps, strict=True):
            seen |= {o.track_id for o in tracker.update(boxes, [0.9, 0.9], camera_warp=warp if use_warps else None)}
        ids[name] = seen
    assert ids["compensated"] == {1, 2}
    assert len(ids["plain"]) >= 8  # a box 40 px wide that leaps tens of pixels misses its prediction


def test_warp_moves_the_kalman_state_with_the_camera():
    tracker = Tracker(TrackerConfig(n_init=1))
    for f in range(4):
        tracker.update(box_at(100 + 5 * f), [0.9])
    before = tracker.tracks[0].mean.copy()
    zoom = np.array([[1.2, 0.0, -10.0], [0.0, 1.2, 4.0]])
    mean, cov = tracker.kalman.warp(before[None], tracker.tracks[0].cov[None], zoom)
    assert np.allclose(mean[0, :2], 1.2 * before[:2] + [-10.0, 4.0])
    assert mean[0, 2] == pytest.approx(1.2 * before[2]) and mean[0, 3] == pytest.approx(1.2 * before[3])
    assert np.allclose(mean[0, 4:6], 1.2 * before[4:6]) and mean[0, 7] == pytest.approx(1.2 * before[7])
    assert cov[0, 0, 0] == pytest.approx(1.44 * tracker.tracks[0].cov[0, 0])


def test_direction_consistency_prefers_the_detection_ahead():
    """Two candidates beside the prediction: the one behind overlaps it slightly more, the one ahead
    continues the track's direction (OC-SORT's velocity-direction consistency)."""
    chosen = {}
    for weight in (0.0, 0.4):
        config = TrackerConfig(n_init=1, direction_weight=weight, direction_delta=1, min_iou_recovery=1.0)
        tracker = Tracker(config)
        for f in range(6):
            tracker.update(box_at(100 + 6 * f), [0.9])
        predicted = tracker.tracks[0].mean[0] + tracker.tracks[0].mean[4]
        behind, ahead = box_at(predicted - 9), box_at(predicted + 10)
        reported = tracker.update(np.vstack([behind, ahead]), [0.9, 0.9])
        chosen[weight] = next(o.detection_index for o in reported if o.track_id == 1)
    assert chosen == {0.0: 0, 0.4: 1}


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
    assert set(kept[:, 1]) == {1} and len(kept) == 30  # one identity, in every frame (confirmed at frame 1)
    vetoing = track_detections(rows, TrackerConfig(motion_override_iou=1.01, min_iou_recovery=1.0), random_looks)
    assert len(set(vetoing[:, 1])) >= 10  # a hard appearance gate breaks the track again and again
