"""The multi-object tracker: Kalman motion + optimal assignment + optional appearance embeddings.

Per-frame contract: call :meth:`Tracker.update` exactly once per frame, in frame order, also
for frames without detections, with the frame's detections as ``boxes [M, 4]`` (xyxy pixels),
``scores [M]``, optionally ``embeddings [M, D]`` (``None`` = motion only), ``class_ids [M]``
(tracks and detections of different classes are never matched) and ``camera_warp`` (the
``[2, 3]`` image motion from the previous frame, see :mod:`myutils.tracking.camera_motion`).
It returns the confirmed tracks that were matched in this frame, each with its detection's box.
Time-based settings (``max_age_seconds``, ``reid_window_seconds``, ``reid_max_speed``) become
frames through the ``fps`` the tracker is built with.

One frame runs these association rounds (each an optimal assignment, see
:func:`myutils.tracking.association.linear_assignment`, where leaving a track and a detection
unmatched costs the round's limit):

1. confirmed tracks (tracked or lost) × high-score detections: motion cost ``1 − IoU`` with the
   Kalman prediction minus OC-SORT's velocity-direction consistency bonus, fused with the
   appearance distance when embeddings are given; pairs outside the Mahalanobis gate, below
   ``min_iou`` (motion only) or beyond ``max_appearance_distance`` (unless they overlap by
   ``motion_override_iou``) are forbidden;
2. confirmed tracks still unmatched that were tracked in the previous frame × low-score
   detections, by IoU alone (ByteTrack: occluded objects score low but keep their track);
3. confirmed tracks still unmatched × remaining high-score detections by IoU with the track's
   last *observed* box (OC-SORT's observation-centric recovery: the prediction drifted, the
   object did not);
4. tentative tracks × remaining high-score detections, by IoU;
5. lost tracks (missed at least ``reid_min_missed`` frames, at most ``reid_window_seconds``)
   × remaining high-score detections by appearance alone, only within ``reid_max_speed`` box
   heights per second of the last observed position (re-identification after the motion
   prediction has drifted away; an identity never jumps across the image).

Appearance memory is updated only by confident detections whose look agrees with the track (a
match made on overlap alone with a mismatched look does not teach the track a wrong look).
Unmatched high-score detections scoring at least ``new_track_score`` start tentative tracks; a
tentative track is confirmed after ``n_init`` consecutive hits and deleted at its first miss; a
confirmed track missed for more than ``max_age_seconds`` is deleted.

The tracks live in arrays (one row per track; :class:`TrackTable`), so a frame costs a fixed
number of vectorised steps whatever the number of tracks; :attr:`Tracker.tracks` gives a
per-track view for inspection.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field, fields

import numpy as np

from myutils.cli import InputError
from myutils.tracking.association import appearance_distance, fuse_costs, normalize_rows, optimal_pairs
from myutils.tracking.boxes import iou_matrix, tlwh_to_xyxy, xyxy_to_tlwh
from myutils.tracking.kalman_filter import (
    STATES,
    KalmanBoxFilter,
    boxes_to_measurements,
    chi2_gate,
    measurements_to_boxes,
    similarity_scale,
)


def _param(default, help_text: str):
    return field(default=default, metadata={"help": help_text})


@dataclass
class TrackerConfig:
    """Every threshold of the tracker; ``help`` metadata doubles as the CLI documentation.

    The defaults were chosen on generated scenes (seeds 100-111 of bench/tracking_bench.py's cases,
    never the reported seeds 0-4; docs/tracking.md lists what each choice measured): BoT-SORT's
    xywh Kalman state, score-fused IoU at a low threshold, first-frame confirmation and the
    recovery round helped; velocity-direction consistency and score-scaled noise did not and are
    off. A low appearance weight plus ``motion_override_iou`` keep weak embeddings (e.g. a briefly
    trained ROI encoder) from breaking tracks or misranking neighbours; good embeddings still win
    through the gates.
    """

    high_score: float = _param(0.5, "detections scoring at least this take part in round 1")
    low_score: float = _param(
        0.1,
        "detections below this are ignored; between low_score and high_score they "
        "only extend tracks (round 2)",
    )
    new_track_score: float = _param(0.6, "an unmatched detection starts a track only at or above this score")
    n_init: int = _param(2, "consecutive hits before a tentative track is confirmed and reported")
    confirm_first_frame: bool = _param(
        True, "tracks started in the first frame are confirmed at once (ByteTrack: nothing came before them)"
    )
    max_age_seconds: float = _param(
        2.0, "seconds a confirmed track may stay unmatched before it is deleted (x fps = frames)"
    )
    gate_probability: float = _param(
        0.9999, "round 1 with appearance: chi-square quantile of the Mahalanobis gate (centre, 2 dof)"
    )
    min_iou: float = _param(
        0.1, "round 1 without appearance: least IoU with the predicted box (times the score with fuse_score)"
    )
    max_fused_cost: float = _param(
        0.9, "round 1 with appearance: largest fused cost of a match (= the cost of leaving both unmatched)"
    )
    min_iou_low: float = _param(0.5, "round 2 (low-score detections): least IoU with the predicted box")
    min_iou_recovery: float = _param(
        0.3, "round 3 (recovery): least IoU with the track's last observed box; 1 disables the round"
    )
    min_iou_tentative: float = _param(0.1, "round 4 (tentative tracks): least IoU with the predicted box")
    fuse_score: bool = _param(
        True, "round 1: IoU times the detection score (ByteTrack's score fusion) in the cost and the min_iou gate"
    )
    direction_weight: float = _param(
        0.0, "round 1: weight of OC-SORT's velocity-direction consistency (0 = off), times the detection score"
    )
    direction_delta: int = _param(
        3, "a track's direction: from its observation this many observations back to the newest (OC-SORT's dt)"
    )
    kalman_state: str = _param(
        "xywh", "Kalman box parameterisation: xywh (BoT-SORT: width + height) or xyah (DeepSORT: aspect + height)"
    )
    score_scaled_noise: bool = _param(
        False, "measurement noise times (1 - score) (StrongSORT's NSA): confident boxes are trusted more"
    )
    appearance_weight: float = _param(
        0.3, "weight of the appearance distance in the fused round-1 cost (rest: 1 - IoU)"
    )
    max_appearance_distance: float = _param(
        0.45, "round 1: largest cosine distance for a match; also the most a look may differ to update it"
    )
    motion_override_iou: float = _param(
        0.5, "round 1 with appearance: from this IoU on, a pair may match even beyond max_appearance_distance"
    )
    reid_max_distance: float = _param(
        0.3, "round 5: largest cosine distance to re-identify a lost track by appearance alone"
    )
    reid_min_missed: int = _param(2, "round 5: frames a track must have been missed to count as lost")
    reid_window_seconds: float = _param(
        2.0, "round 5: tracks lost longer than this are not re-identified (x fps = frames)"
    )
    reid_max_speed: float = _param(
        4.0, "round 5: largest shift from the last observed centre, in box heights per second (+1 height)"
    )
    ema_momentum: float = _param(0.9, "EMA momentum of a track's appearance feature")
    ema_confidence_weighted: bool = _param(
        True, "Deep OC-SORT: a detection's weight in the EMA grows with its score above high_score"
    )
    bank_size: int = _param(30, "recent embeddings kept per track")
    bank_top_k: int = _param(5, "bank similarity = mean of the top-k similarities")
    position_noise: float = _param(0.05, "Kalman noise std of centre and height, as a fraction of the height")
    velocity_noise: float = _param(
        0.00625, "Kalman noise std of their velocities, as a fraction of the height"
    )
    feature_min_score: float = _param(
        0.6, "a match updates the appearance only when the detection scores at least this"
    )

    def __post_init__(self) -> None:
        if not 0.0 <= self.low_score <= self.high_score <= 1.0:
            raise InputError(
                f"need 0 <= low_score <= high_score <= 1, got {self.low_score} and {self.high_score}"
            )
        if min(self.n_init, self.bank_size, self.bank_top_k, self.direction_delta, self.reid_min_missed) < 1:
            raise InputError("n_init, bank_size, bank_top_k, direction_delta and reid_min_missed must be >= 1")
        if self.max_age_seconds <= 0 or self.reid_window_seconds < 0 or self.reid_max_speed < 0:
            raise InputError("max_age_seconds must be > 0; reid_window_seconds and reid_max_speed >= 0")
        if self.position_noise <= 0 or self.velocity_noise <= 0:
            raise InputError("position_noise and velocity_noise must be > 0")
        if not 0.0 < self.gate_probability < 1.0:
            raise InputError(f"gate_probability must be in (0, 1), got {self.gate_probability}")
        if not 0.0 <= self.appearance_weight <= 1.0 or not 0.0 <= self.ema_momentum < 1.0:
            raise InputError("appearance_weight must be in [0, 1] and ema_momentum in [0, 1)")
        if self.max_fused_cost <= 0:
            raise InputError(f"max_fused_cost must be > 0, got {self.max_fused_cost}")
        if self.kalman_state not in STATES:
            raise InputError(f"kalman_state must be one of {STATES}, got {self.kalman_state!r}")

    @classmethod
    def field_help(cls) -> dict[str, str]:
        return {f.name: f.metadata["help"] for f in fields(cls)}

    def frames(self, seconds: float, fps: float) -> int:
        """A duration in frames at ``fps`` (at least one frame)."""
        return max(1, int(round(seconds * fps)))


@dataclass
class TrackTable:
    """Every track's state, one row per track (Kalman state, observations, life cycle, appearance)."""

    mean: np.ndarray  # [N, 8] Kalman state
    cov: np.ndarray  # [N, 3, 4] its covariance blocks (see KalmanBoxFilter)
    observed_box: np.ndarray  # [N, 4] xyxy of the last matched detection (moved with the camera)
    history: np.ndarray  # [N, direction_delta, 2] the last observed centres, oldest first
    direction: np.ndarray  # [N, 2] unit vector of the observed motion (nan = not known yet)
    score: np.ndarray  # [N] score of the last matched detection
    class_id: np.ndarray  # [N] int
    track_id: np.ndarray  # [N] int, 0 while tentative (ids are given at confirmation, without gaps)
    hits: np.ndarray  # [N] int, matched frames
    missed: np.ndarray  # [N] int, frames since the last match
    feature: np.ndarray | None  # [N, D] EMA of the embeddings (unit length), None = no embeddings yet
    has_feature: np.ndarray  # [N] bool
    banks: list  # N deques of recent embeddings

    def __len__(self) -> int:
        return len(self.mean)

    @property
    def confirmed(self) -> np.ndarray:
        return self.track_id > 0

    def select(self, index: np.ndarray) -> TrackTable:
        """The rows ``index`` (indices or a boolean mask) as a new table."""
        index = np.nonzero(index)[0] if np.asarray(index).dtype == bool else np.asarray(index, dtype=int)
        values = {name: getattr(self, name)[index] for name in _ROW_ARRAYS}
        feature = None if self.feature is None else self.feature[index]
        return TrackTable(**values, feature=feature, banks=[self.banks[i] for i in index])

    def extend(self, other: TrackTable) -> TrackTable:
        """This table with the rows of ``other`` appended."""
        values = {name: np.concatenate([getattr(self, name), getattr(other, name)]) for name in _ROW_ARRAYS}
        if self.feature is None and other.feature is None:
            feature = None
        else:
            dim = (self.feature if self.feature is not None else other.feature).shape[1]
            feature = np.concatenate(
                [t.feature if t.feature is not None else np.zeros((len(t), dim)) for t in (self, other)]
            )
        return TrackTable(**values, feature=feature, banks=self.banks + other.banks)


_ROW_ARRAYS = tuple(f.name for f in fields(TrackTable) if f.name not in ("feature", "banks"))


@dataclass(frozen=True)
class Track:
    """One track as seen from outside (a copy of its row of the :class:`TrackTable`)."""

    track_id: int  # 0 while tentative
    confirmed: bool
    mean: np.ndarray
    cov: np.ndarray
    observed_box: np.ndarray
    class_id: int
    score: float
    hits: int
    time_since_update: int
    feature: np.ndarray | None
    bank: tuple


@dataclass
class TrackedObject:
    """A reported track in one frame: the box of the detection it matched (xyxy) and that detection's index."""

    track_id: int
    box_xyxy: np.ndarray
    score: float
    detection_index: int
    class_id: int = -1


def box_centres(boxes_xyxy: np.ndarray) -> np.ndarray:
    return (boxes_xyxy[:, :2] + boxes_xyxy[:, 2:]) / 2


def warp_boxes(boxes_xyxy: np.ndarray, warp: np.ndarray) -> np.ndarray:
    """Axis-aligned boxes after a similarity warp: centres moved, sides scaled."""
    centres = box_centres(boxes_xyxy) @ warp[:, :2].T + warp[:, 2]
    half = (boxes_xyxy[:, 2:] - boxes_xyxy[:, :2]) * similarity_scale(warp) / 2
    return np.concatenate([centres - half, centres + half], axis=1)


NO_PAIRS = (np.zeros(0, dtype=int), np.zeros(0, dtype=int))


class Tracker:
    def __init__(self, config: TrackerConfig | None = None, fps: float = 30.0):
        if not np.isfinite(fps) or fps <= 0:
            raise InputError(f"fps must be a positive number, got {fps}")
        self.config = config or TrackerConfig()
        self.fps = float(fps)
        self.max_age = self.config.frames(self.config.max_age_seconds, fps)
        self.reid_window = self.config.frames(self.config.reid_window_seconds, fps)
        self.kalman = KalmanBoxFilter(self.config.position_noise, self.config.velocity_noise, self.config.kalman_state)
        self.gate = chi2_gate(self.config.gate_probability, dof=2)
        # an unmatched detection starts a track when it is a high-score one scoring at least new_track_score
        self._start_score = max(self.config.high_score, self.config.new_track_score)
        self._low_limit = self._iou_limit(self.config.min_iou_low)
        self._recovery_limit = self._iou_limit(self.config.min_iou_recovery)
        self._tentative_limit = self._iou_limit(self.config.min_iou_tentative)
        self.table = self._empty_table()
        self.frame = 0  # frames seen so far
        self._next_id = 1

    @property
    def tracks(self) -> list[Track]:
        """A copy of every live track (tentative and confirmed), for inspection."""
        t = self.table
        return [
            Track(
                int(t.track_id[i]),
                bool(t.track_id[i] > 0),
                t.mean[i].copy(),
                t.cov[i].copy(),
                t.observed_box[i].copy(),
                int(t.class_id[i]),
                float(t.score[i]),
                int(t.hits[i]),
                int(t.missed[i]),
                t.feature[i].copy() if t.has_feature[i] else None,
                tuple(t.banks[i]),
            )
            for i in range(len(t))
        ]

    def update(
        self,
        boxes_xyxy: np.ndarray,
        scores: np.ndarray,
        embeddings: np.ndarray | None = None,
        class_ids: np.ndarray | None = None,
        camera_warp: np.ndarray | None = None,
    ) -> list[TrackedObject]:
        """Advance one frame (see the module docstring for the contract and the rounds)."""
        boxes, scores, embeddings, class_ids = self._check_inputs(boxes_xyxy, scores, embeddings, class_ids)
        cfg = self.config
        self.frame += 1
        self._predict(camera_warp)
        if len(boxes) == 0:
            self._drop_unmatched()
            return []
        measurements = boxes_to_measurements(boxes, cfg.kalman_state)
        is_high = scores >= cfg.high_score
        reported, free = [], is_high
        if len(self.table):
            matches, det_free = self._associate(boxes, scores, measurements, embeddings, class_ids, is_high)
            if matches:
                reported = self._apply_matches(*matches, boxes, measurements, scores, embeddings)
            if not matches or len(matches[0]) + len(matches[2]) < len(self.table):  # a track was missed
                self._drop_unmatched()
            free = det_free
        starts = (free & (scores >= self._start_score)).nonzero()[0]
        if len(starts):
            reported += self._start_tracks(starts, boxes, measurements, scores, class_ids, embeddings)
        # the matched detection's box is reported: the filtered box lags behind on turns and size changes
        objects = [
            TrackedObject(track_id, boxes[j], float(scores[j]), j, -1 if class_ids is None else int(class_ids[j]))
            for track_id, j in reported
        ]
        return sorted(objects, key=lambda obj: obj.track_id)

    def _associate(self, boxes, scores, measurements, embeddings, class_ids, is_high):
        """The association rounds of one frame -> ``(confirmed rows, their detections, tentative rows,
        their detections)`` (None: no match) and a mask of the detections left unmatched."""
        cfg, t = self.config, self.table
        n, m = len(t.mean), len(boxes)
        recovering = cfg.min_iou_recovery < 1.0
        predicted = measurements_to_boxes(t.mean[:, :4], cfg.kalman_state)
        # one IoU call for every predicted box (rounds 1, 2, 4) and every last observed box (round 3, rows n:)
        overlap = iou_matrix(np.concatenate([predicted, t.observed_box]) if recovering else predicted, boxes)
        is_confirmed = t.track_id > 0
        confirmed, high = is_confirmed.nonzero()[0], is_high.nonzero()[0]
        all_confirmed, all_high = len(confirmed) == n, len(high) == m
        track_free, det_free = np.ones(n, dtype=bool), np.ones(m, dtype=bool)
        track_parts, det_parts = [], []

        def take(pairs):
            if len(pairs[0]):
                track_free[pairs[0]] = False
                det_free[pairs[1]] = False
                track_parts.append(pairs[0])
                det_parts.append(pairs[1])

        det = (boxes, scores, class_ids, embeddings)
        # round 1: confirmed tracks x high-score detections, motion (+ appearance)
        if len(confirmed) and len(high):
            block = overlap[:n] if all_confirmed and all_high else overlap[confirmed[:, None], high]
            take(self._match_confirmed(confirmed, high, det, measurements, block))
            confirmed, high = confirmed[track_free[confirmed]], high[det_free[high]]
        # round 2: tracks seen in the previous frame x low-score detections, IoU only
        if not all_high and len(confirmed):
            recent = confirmed[t.missed[confirmed] == 1]
            low = ((scores >= cfg.low_score) & ~is_high).nonzero()[0]
            if len(recent) and len(low):
                take(self._match_iou(recent, low, overlap[recent[:, None], low], class_ids, self._low_limit))
                confirmed = confirmed[track_free[confirmed]]
        # round 3: the rest x remaining high-score detections, IoU with the last observed box
        if recovering and len(confirmed) and len(high):
            block = overlap[n:][confirmed[:, None], high]
            take(self._match_iou(confirmed, high, block, class_ids, self._recovery_limit))
            confirmed, high = confirmed[track_free[confirmed]], high[det_free[high]]
        # round 4: tentative tracks x remaining high-score detections, IoU only (kept apart: only these
        # matches can confirm a track)
        tentative_pairs = NO_PAIRS
        if not all_confirmed and len(high):
            tentative = (~is_confirmed).nonzero()[0]
            tentative_pairs = self._match_iou(
                tentative, high, overlap[tentative[:, None], high], class_ids, self._tentative_limit
            )
            if len(tentative_pairs[1]):
                det_free[tentative_pairs[1]] = False
                high = high[det_free[high]]
        # round 5: lost tracks x remaining high-score detections, appearance only, near where they were lost
        if embeddings is not None and len(confirmed) and len(high):
            missed = t.missed[confirmed]
            lost = confirmed[(missed >= cfg.reid_min_missed) & (missed <= self.reid_window)]
            take(self._match_appearance(lost, high, det))
        if not track_parts and not len(tentative_pairs[0]):
            return None, det_free
        rows = track_parts[0] if len(track_parts) == 1 else np.concatenate(track_parts or [NO_PAIRS[0]])
        cols = det_parts[0] if len(det_parts) == 1 else np.concatenate(det_parts or [NO_PAIRS[1]])
        return (rows, cols, *tentative_pairs), det_free

    # --- steps -------------------------------------------------------------------------------------
    def _empty_table(self) -> TrackTable:
        return TrackTable(
            mean=np.zeros((0, 8)),
            cov=np.zeros((0, 3, 4)),
            observed_box=np.zeros((0, 4)),
            history=np.zeros((0, self.config.direction_delta, 2)),
            direction=np.zeros((0, 2)),
            score=np.zeros(0),
            class_id=np.zeros(0, dtype=np.int64),
            track_id=np.zeros(0, dtype=np.int64),
            hits=np.zeros(0, dtype=np.int64),
            missed=np.zeros(0, dtype=np.int64),
            feature=None,
            has_feature=np.zeros(0, dtype=bool),
            banks=[],
        )

    def _check_inputs(self, boxes, scores, embeddings, class_ids):
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        scores = np.asarray(scores, dtype=np.float64).reshape(-1)
        if len(scores) != len(boxes):
            raise InputError(f"got {len(boxes)} boxes but {len(scores)} scores")
        if (boxes[:, 2:] <= boxes[:, :2]).any():
            raise InputError("boxes must be xyxy with right > left and bottom > top")
        if embeddings is not None:
            embeddings = np.asarray(embeddings, dtype=np.float64)
            if embeddings.ndim != 2 or len(embeddings) != len(boxes):
                raise InputError(f"embeddings must be [{len(boxes)}, D], got shape {embeddings.shape}")
            embeddings = normalize_rows(embeddings)
        if class_ids is not None:
            class_ids = np.asarray(class_ids).reshape(-1)
            if len(class_ids) != len(boxes):
                raise InputError(f"got {len(boxes)} boxes but {len(class_ids)} class ids")
            class_ids = class_ids.astype(np.int64)
        return boxes, scores, embeddings, class_ids

    def _predict(self, camera_warp: np.ndarray | None) -> None:
        t = self.table
        if len(t) == 0:
            return
        t.mean, t.cov = self.kalman.predict(t.mean, t.cov)
        t.missed += 1
        if camera_warp is None:
            return
        # what a track remembers of past frames, moved into the current image's coordinates
        warp = np.asarray(camera_warp, dtype=np.float64).reshape(2, 3)
        t.mean, t.cov = self.kalman.warp(t.mean, t.cov, warp)
        t.observed_box = warp_boxes(t.observed_box, warp)
        if self.config.direction_weight:  # the direction history is kept only where it is used
            t.history = t.history @ warp[:, :2].T + warp[:, 2]
            moved = t.direction @ warp[:, :2].T
            t.direction = moved / np.maximum(np.linalg.norm(moved, axis=1, keepdims=True), 1e-12)

    def _class_conflicts(self, track_index: np.ndarray, det_class_ids: np.ndarray | None) -> np.ndarray | bool:
        """``[N, M]`` True where a track and a detection belong to different classes (False: no classes)."""
        if det_class_ids is None:
            return False
        return self.table.class_id[track_index][:, None] != det_class_ids[None, :]

    def _direction_bonus(self, track_index: np.ndarray, boxes: np.ndarray, scores: np.ndarray) -> np.ndarray:
        """OC-SORT's velocity-direction consistency ``(π/2 − |Δθ|) / π = asin(cos Δθ) / π`` in [−0.5, 0.5],
        times the detection score and ``direction_weight``: Δθ is the angle between the track's observed
        direction and the way from its reference observation (``direction_delta`` observations back) to
        the detection; 0 for tracks without a direction yet."""
        t = self.table
        directions = t.direction[track_index]
        offsets = box_centres(boxes)[None, :, :] - t.history[track_index, 0][:, None, :]
        length = np.maximum(np.hypot(offsets[..., 0], offsets[..., 1]), 1e-6)
        cosine = (offsets[..., 0] * directions[:, 0:1] + offsets[..., 1] * directions[:, 1:2]) / length
        bonus = np.arcsin(np.clip(cosine, -1.0, 1.0))
        bonus *= (self.config.direction_weight / np.pi) * scores[None, :]
        bonus[np.isnan(directions[:, 0])] = 0.0
        return bonus

    def _match_confirmed(self, track_index, det_index, det, measurements, overlap):
        """Round 1; ``overlap`` is the IoU of the tracks' predicted boxes with the detections."""
        boxes, scores, class_ids, embeddings = det
        cfg, t = self.config, self.table
        forbidden = self._class_conflicts(track_index, None if class_ids is None else class_ids[det_index])
        if cfg.fuse_score:  # ByteTrack / BoT-SORT: the overlap weighted by the detection's score
            overlap = overlap * scores[det_index]
        motion = 1.0 - overlap
        if cfg.direction_weight:
            motion -= self._direction_bonus(track_index, boxes[det_index], scores[det_index])
        with_features = None if embeddings is None else t.has_feature[track_index]
        if with_features is None or not with_features.any():  # the overlap itself is the gate
            # an overlap below min_iou costs at least the limit 1 - min_iou and is never kept; only the
            # direction bonus or a class conflict need the pair forbidden explicitly
            if cfg.direction_weight or class_ids is not None:
                motion[forbidden | (overlap < cfg.min_iou)] = np.inf
            return self._assign(motion, 1.0 - cfg.min_iou, track_index, det_index)
        # pairs without overlap may match on their look, only within the Mahalanobis gate
        forbidden |= (
            self.kalman.gating_distance(
                t.mean[track_index], t.cov[track_index], measurements[det_index], only_position=True
            )
            > self.gate
        )
        appearance = np.ones_like(motion)  # a track without a feature yet counts as unknown look
        appearance[with_features] = self._appearance(track_index[with_features], embeddings[det_index])
        cost = fuse_costs(np.minimum(appearance, 1.0), motion, cfg.appearance_weight)
        # a clear overlap may match whatever the look: weak embeddings must not break tracks
        vetoed = (appearance > cfg.max_appearance_distance) & (overlap < cfg.motion_override_iou)
        cost[forbidden | vetoed] = np.inf
        return self._assign(cost, cfg.max_fused_cost, track_index, det_index)

    def _match_iou(self, track_index, det_index, overlap, class_ids, limit):
        """Rounds 2-4 on IoU alone; ``overlap [len(track_index), len(det_index)]``, ``limit`` from
        :meth:`_iou_limit`."""
        cost = 1.0 - overlap
        if class_ids is not None:
            cost[self._class_conflicts(track_index, class_ids[det_index])] = np.inf
        return self._assign(cost, limit, track_index, det_index)

    @staticmethod
    def _iou_limit(min_iou: float) -> float:
        """The assignment limit of an IoU round whose pairs are allowed from an IoU of ``min_iou`` on: the
        next float above ``1 - min_iou``, so every cost up to ``1 - min_iou`` may be kept and every larger
        one is capped to the limit (never kept)."""
        return math.nextafter(1.0 - min_iou, math.inf)

    def _match_appearance(self, track_index, det_index, det):
        track_index = track_index[self.table.has_feature[track_index]]
        if len(track_index) == 0 or len(det_index) == 0:
            return NO_PAIRS
        boxes, _, class_ids, embeddings = det
        cfg, t = self.config, self.table
        cost = self._appearance(track_index, embeddings[det_index])
        # the object moved at most reid_max_speed box heights per second since it was last seen
        last = t.observed_box[track_index]
        reach = (last[:, 3] - last[:, 1]) * (1.0 + cfg.reid_max_speed * t.missed[track_index] / self.fps)
        shift = np.linalg.norm(box_centres(boxes[det_index])[None] - box_centres(last)[:, None], axis=2)
        too_far = shift > reach[:, None]
        conflicts = self._class_conflicts(track_index, None if class_ids is None else class_ids[det_index])
        cost[(cost > cfg.reid_max_distance) | too_far | conflicts] = np.inf
        return self._assign(cost, cfg.reid_max_distance + 1e-9, track_index, det_index)

    def _appearance(self, track_index: np.ndarray, embeddings: np.ndarray) -> np.ndarray:
        t = self.table
        return appearance_distance(
            t.feature[track_index], [np.asarray(t.banks[i]) for i in track_index], embeddings, self.config.bank_top_k
        )

    @staticmethod
    def _assign(cost, max_cost, track_index, det_index):
        rows, cols = optimal_pairs(cost, max_cost)
        return track_index[rows], det_index[cols]

    def _apply_matches(
        self, rows, cols, tentative_rows, tentative_cols, boxes, measurements, scores, embeddings
    ) -> list[tuple[int, int]]:
        """Kalman-correct every matched track (confirmed ``rows`` and ``tentative_rows``), advance its life
        cycle, observations and appearance memory; returns ``(track id, detection index)`` of the matched
        tracks that are confirmed now."""
        cfg, t = self.config, self.table
        if len(tentative_rows):
            confirmed_count = len(rows)
            rows, cols = np.concatenate([rows, tentative_rows]), np.concatenate([cols, tentative_cols])
        noise_scale = np.clip(1.0 - scores[cols], 0.05, 1.0) if cfg.score_scaled_noise else None
        t.mean[rows], t.cov[rows] = self.kalman.update(t.mean[rows], t.cov[rows], measurements[cols], noise_scale)
        observed = boxes[cols]
        if cfg.direction_weight:
            self._observe_direction(rows, observed)
        t.observed_box[rows] = observed
        t.score[rows] = scores[cols]
        t.hits[rows] += 1
        t.missed[rows] = 0
        if embeddings is not None:
            learns = self._learns_look(rows, cols, scores, embeddings)
            for row, col in zip(rows[learns], cols[learns], strict=True):
                self._learn(row, embeddings[col], self._ema_momentum(scores[col]))
        if not len(tentative_rows):
            return list(zip(t.track_id[rows].tolist(), cols.tolist(), strict=True))
        # only tentative tracks can be confirmed now: after n_init hits, with the next free ids
        promoted = (t.hits[tentative_rows] >= cfg.n_init).nonzero()[0]
        new_ids = np.arange(self._next_id, self._next_id + len(promoted))
        t.track_id[tentative_rows[promoted]] = new_ids
        self._next_id += len(promoted)
        return list(
            zip(
                t.track_id[rows[:confirmed_count]].tolist() + new_ids.tolist(),
                cols[:confirmed_count].tolist() + tentative_cols[promoted].tolist(),
                strict=True,
            )
        )

    def _observe_direction(self, rows: np.ndarray, observed: np.ndarray) -> None:
        """The new observed centres of the tracks ``rows``: their direction from the reference observation
        (``direction_delta`` back), then the history shifted by one."""
        t = self.table
        centres = box_centres(observed)
        history = t.history[rows]
        offsets = centres - history[:, 0]
        length = np.hypot(offsets[:, 0], offsets[:, 1])
        moved = length > 1e-6  # a track that did not move keeps its direction
        t.direction[rows[moved]] = offsets[moved] / length[moved, None]
        history[:, :-1] = history[:, 1:]
        history[:, -1] = centres
        t.history[rows] = history

    def _learns_look(self, rows, cols, scores, embeddings) -> np.ndarray:
        """Per match: may the detection's embedding update the track's look? Only a confident detection
        whose look agrees with the track (or a track with no look yet)."""
        learns = scores[cols] >= self.config.feature_min_score
        known = learns & self.table.has_feature[rows]
        if known.any():
            distance = self._appearance(rows[known], embeddings[cols[known]])
            learns[known] = np.diag(distance) <= self.config.max_appearance_distance
        return learns

    def _learn(self, row: int, embedding: np.ndarray, momentum: float) -> None:
        t = self.table
        if t.feature is None:
            t.feature = np.zeros((len(t), len(embedding)))
        if t.has_feature[row]:
            mixed = momentum * t.feature[row] + (1.0 - momentum) * embedding
            t.feature[row] = mixed / max(np.linalg.norm(mixed), 1e-12)
        else:
            t.feature[row], t.has_feature[row] = embedding, True
        t.banks[row].append(embedding)

    def _ema_momentum(self, score: float) -> float:
        """Deep OC-SORT's confidence-weighted EMA: a barely-high-score detection hardly moves the feature."""
        cfg = self.config
        if not cfg.ema_confidence_weighted or cfg.high_score >= 1.0:
            return cfg.ema_momentum
        trust = np.clip((score - cfg.high_score) / (1.0 - cfg.high_score), 0.0, 1.0)
        return float(cfg.ema_momentum + (1.0 - cfg.ema_momentum) * (1.0 - trust))

    def _drop_unmatched(self) -> None:
        """Tentative tracks die at their first miss, confirmed ones after ``max_age`` missed frames."""
        t = self.table
        dead = t.missed > (t.track_id > 0) * self.max_age  # tentative: limit 0, confirmed: max_age
        if np.logical_or.reduce(dead):
            self.table = t.select(~dead)

    def _start_tracks(self, index, boxes, measurements, scores, class_ids, embeddings) -> list[tuple[int, int]]:
        """New tracks from the detections ``index``; returns ``(track id, detection index)`` of those
        confirmed at once (``n_init`` 1, or the first frame with ``confirm_first_frame``)."""
        cfg, n = self.config, len(index)
        mean, cov = self.kalman.initiate(measurements[index])
        history = np.repeat(box_centres(boxes[index])[:, None, :], cfg.direction_delta, axis=1)
        track_ids = np.zeros(n, dtype=np.int64)
        if cfg.n_init <= 1 or (self.frame == 1 and cfg.confirm_first_frame):
            track_ids = np.arange(self._next_id, self._next_id + n)
            self._next_id += n
        new = TrackTable(
            mean=mean,
            cov=cov,
            observed_box=boxes[index].copy(),
            history=history,
            direction=np.full((n, 2), np.nan),
            score=scores[index].copy(),
            class_id=np.full(n, -1, dtype=np.int64) if class_ids is None else class_ids[index].copy(),
            track_id=track_ids,
            hits=np.ones(n, dtype=np.int64),
            missed=np.zeros(n, dtype=np.int64),
            feature=None if embeddings is None else embeddings[index].copy(),
            has_feature=np.full(n, embeddings is not None),
            banks=[deque(maxlen=cfg.bank_size) for _ in range(n)],
        )
        if embeddings is not None:
            for bank, embedding in zip(new.banks, embeddings[index], strict=True):
                bank.append(embedding)
        self.table = self.table.extend(new)
        return [(int(track_id), int(j)) for track_id, j in zip(track_ids, index, strict=True) if track_id > 0]


def results_to_mot_rows(frame: int, objects: list[TrackedObject]) -> np.ndarray:
    """MOTChallenge result rows ``frame, id, left, top, w, h, conf, -1, -1, -1`` for one frame."""
    rows = np.full((len(objects), 10), -1.0)
    for row, obj in zip(rows, objects, strict=True):
        row[:7] = [frame, obj.track_id, *xyxy_to_tlwh(obj.box_xyxy)[0], obj.score]
    return rows


def track_detections(
    detection_rows: np.ndarray,
    config: TrackerConfig | None = None,
    embeddings: np.ndarray | None = None,
    num_frames: int | None = None,
    fps: float = 30.0,
    camera_warps: dict[int, np.ndarray] | None = None,
) -> np.ndarray:
    """Track MOT detection rows (``frame, -1, left, top, w, h, conf, ...``, frames from 1) with a fresh
    :class:`Tracker`; ``embeddings[i]`` belongs to ``detection_rows[i]``, ``camera_warps[f]`` is the
    camera motion into frame ``f``. Returns MOT result rows."""
    detection_rows = np.asarray(detection_rows, dtype=np.float64).reshape(-1, np.shape(detection_rows)[-1])
    if embeddings is not None and len(embeddings) != len(detection_rows):
        raise InputError(f"got {len(embeddings)} embeddings for {len(detection_rows)} detections")
    frames = detection_rows[:, 0].astype(int)
    last_frame = num_frames or (int(frames.max()) if len(frames) else 0)
    order = np.argsort(frames, kind="stable")
    starts = np.searchsorted(frames[order], np.arange(1, last_frame + 2))
    tracker = Tracker(config, fps)
    results = []
    for frame in range(1, last_frame + 1):
        index = order[starts[frame - 1] : starts[frame]]
        objects = tracker.update(
            tlwh_to_xyxy(detection_rows[index, 2:6]),
            detection_rows[index, 6],
            None if embeddings is None else embeddings[index],
            camera_warp=None if camera_warps is None else camera_warps.get(frame),
        )
        results.append(results_to_mot_rows(frame, objects))
    return np.concatenate(results) if results else np.zeros((0, 10))
