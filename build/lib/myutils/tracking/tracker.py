"""The multi-object tracker: Kalman motion + Hungarian association + optional appearance embeddings.

Per-frame contract: call :meth:`Tracker.update` exactly once per frame, in frame order, also
for frames without detections, with the frame's detections as ``boxes [M, 4]`` (xyxy pixels),
``scores [M]`` and optionally ``embeddings [M, D]`` (L2-normalised; ``None`` = motion only).
It returns the confirmed tracks that were matched in this frame, each with its detection's box.

One frame runs these association rounds (each a gated Hungarian matching):

1. confirmed tracks (tracked or lost) × high-score detections: motion cost ``1 − IoU`` with the
   Kalman prediction, fused with the appearance distance when embeddings are given; pairs
   outside the Mahalanobis gate, below ``min_iou`` (motion only) or beyond
   ``max_appearance_distance`` (unless they overlap by ``motion_override_iou``) are forbidden;
2. confirmed tracks still unmatched that were tracked in the previous frame × low-score
   detections, by IoU alone (ByteTrack: occluded objects score low but keep their track);
3. tentative tracks × remaining high-score detections, by IoU;
4. lost tracks × remaining high-score detections by appearance alone (re-identification after
   the motion prediction has drifted away).

Unmatched high-score detections scoring at least ``new_track_score`` start tentative tracks;
a tentative track is confirmed after ``n_init`` consecutive hits and deleted at its first miss;
a confirmed track missed for more than ``max_age`` frames is deleted.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field, fields
from enum import Enum

import numpy as np

from myutils.cli import InputError
from myutils.tracking.association import appearance_distance, fuse_costs, linear_assignment, normalize_rows
from myutils.tracking.boxes import iou_matrix, tlwh_to_xyxy, xyah_to_xyxy, xyxy_to_tlwh, xyxy_to_xyah
from myutils.tracking.kalman_filter import KalmanBoxFilter, chi2_gate


def _param(default, help_text: str):
    return field(default=default, metadata={"help": help_text})


@dataclass
class TrackerConfig:
    """Every threshold of the tracker; ``help`` metadata doubles as the CLI documentation.

    The defaults were chosen on generated scenes (seeds 0-4 of bench/tracking_bench.py's set-up) and
    checked on unseen seeds 10-14: a wide motion gate, because the DeepSORT noise model is tight for
    objects that turn, and appearance thresholds that tolerate partly hidden views. A low
    appearance weight plus ``motion_override_iou`` keep weak embeddings (e.g. a briefly trained ROI
    encoder) from breaking tracks or misranking neighbours; good embeddings still win through the gates.
    """

    high_score: float = _param(0.5, "detections scoring at least this take part in round 1")
    low_score: float = _param(
        0.1,
        "detections below this are ignored; between low_score and high_score they "
        "only extend tracks (round 2)",
    )
    new_track_score: float = _param(0.6, "an unmatched detection starts a track only at or above this score")
    n_init: int = _param(2, "consecutive hits before a tentative track is confirmed and reported")
    max_age: int = _param(60, "frames a confirmed track may stay unmatched before it is deleted")
    gate_probability: float = _param(0.9999, "chi-square quantile of the Mahalanobis gate (centre, 2 dof)")
    min_iou: float = _param(0.2, "round 1 without appearance: least IoU with the predicted box")
    min_iou_low: float = _param(0.5, "round 2 (low-score detections): least IoU with the predicted box")
    min_iou_tentative: float = _param(0.3, "round 3 (tentative tracks): least IoU with the predicted box")
    appearance_weight: float = _param(
        0.3, "weight of the appearance distance in the fused round-1 cost (rest: 1 - IoU)"
    )
    max_appearance_distance: float = _param(0.45, "round 1: largest cosine distance for a match")
    motion_override_iou: float = _param(
        0.5, "round 1 with appearance: from this IoU on, a pair may match even beyond max_appearance_distance"
    )
    reid_max_distance: float = _param(
        0.3, "round 4: largest cosine distance to re-identify a lost track by appearance alone"
    )
    ema_momentum: float = _param(0.9, "EMA momentum of a track's appearance feature")
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
        if self.n_init < 1 or self.max_age < 1 or self.bank_size < 1 or self.bank_top_k < 1:
            raise InputError("n_init, max_age, bank_size and bank_top_k must be >= 1")
        if self.position_noise <= 0 or self.velocity_noise <= 0:
            raise InputError("position_noise and velocity_noise must be > 0")
        if not 0.0 < self.gate_probability < 1.0:
            raise InputError(f"gate_probability must be in (0, 1), got {self.gate_probability}")
        if not 0.0 <= self.appearance_weight <= 1.0 or not 0.0 <= self.ema_momentum < 1.0:
            raise InputError("appearance_weight must be in [0, 1] and ema_momentum in [0, 1)")

    @classmethod
    def field_help(cls) -> dict[str, str]:
        return {f.name: f.metadata["help"] for f in fields(cls)}


class TrackState(Enum):
    TENTATIVE = "tentative"
    CONFIRMED = "confirmed"
    DELETED = "deleted"


@dataclass
class Track:
    """One identity: its Kalman state, life-cycle counters and appearance memory."""

    mean: np.ndarray  # [8]
    cov: np.ndarray  # [8, 8]
    score: float
    track_id: int = 0  # given at confirmation, so reported ids count up without gaps
    state: TrackState = TrackState.TENTATIVE
    hits: int = 1
    time_since_update: int = 0
    feature: np.ndarray | None = None  # EMA of the embeddings, unit length
    bank: deque = field(default_factory=deque)

    @property
    def box_xyxy(self) -> np.ndarray:
        return xyah_to_xyxy(self.mean[:4])[0]

    def add_embedding(self, embedding: np.ndarray, momentum: float) -> None:
        if self.feature is None:
            self.feature = embedding
        else:
            mixed = momentum * self.feature + (1.0 - momentum) * embedding
            self.feature = mixed / max(np.linalg.norm(mixed), 1e-12)
        self.bank.append(embedding)


@dataclass
class TrackedObject:
    """A reported track in one frame: the box of the detection it matched (xyxy) and that detection's index."""

    track_id: int
    box_xyxy: np.ndarray
    score: float
    detection_index: int


class Tracker:
    def __init__(self, config: TrackerConfig | None = None):
        self.config = config or TrackerConfig()
        self.kalman = KalmanBoxFilter(self.config.position_noise, self.config.velocity_noise)
        self.gate = chi2_gate(self.config.gate_probability, dof=2)
        self.tracks: list[Track] = []
        self._next_id = 1

    def update(
        self, boxes_xyxy: np.ndarray, scores: np.ndarray, embeddings: np.ndarray | None = None
    ) -> list[TrackedObject]:
        """Advance one frame (see the module docstring for the contract and the rounds)."""
        boxes, scores, embeddings = self._check_inputs(boxes_xyxy, scores, embeddings)
        cfg = self.config
        self._predict()

        keep = scores >= cfg.low_score
        high = np.nonzero(keep & (scores >= cfg.high_score))[0]
        low = np.nonzero(keep & (scores < cfg.high_score))[0]
        measurements = xyxy_to_xyah(boxes)
        confirmed = [i for i, t in enumerate(self.tracks) if t.state is TrackState.CONFIRMED]
        tentative = [i for i, t in enumerate(self.tracks) if t.state is TrackState.TENTATIVE]
        matches: list[tuple[int, int]] = []

        # round 1: confirmed tracks x high-score detections, motion (+ appearance)
        pairs, confirmed_left, high_left = self._match_confirmed(
            confirmed, high, boxes, measurements, embeddings
        )
        matches += pairs
        # round 2: tracks seen in the previous frame x low-score detections, IoU only
        recent = [i for i in confirmed_left if self.tracks[i].time_since_update == 1]
        pairs, _, _ = self._match_iou(recent, low, boxes, cfg.min_iou_low)
        matches += pairs
        extended = {track_index for track_index, _ in pairs}
        # round 3: tentative tracks x remaining high-score detections, IoU only
        pairs, _, high_left = self._match_iou(tentative, high_left, boxes, cfg.min_iou_tentative)
        matches += pairs
        # round 4: lost tracks x remaining high-score detections, appearance only
        if embeddings is not None:
            lost = [i for i in confirmed_left if i not in extended]
            pairs, _, high_left = self._match_appearance(lost, high_left, embeddings)
            matches += pairs

        updated = self._apply_matches(matches, measurements, scores, embeddings)
        for track in self.tracks:
            if track.time_since_update > 0 and (
                track.state is TrackState.TENTATIVE or track.time_since_update > cfg.max_age
            ):
                track.state = TrackState.DELETED
        self.tracks = [t for t in self.tracks if t.state is not TrackState.DELETED]
        for j in high_left:
            if scores[j] >= cfg.new_track_score:
                self._start_track(measurements[j], scores[j], None if embeddings is None else embeddings[j])

        # the matched detection's box is reported: the filtered box lags behind on turns and size changes
        reported = [
            TrackedObject(track.track_id, boxes[detection_index], track.score, detection_index)
            for track, detection_index in updated
            if track.state is TrackState.CONFIRMED
        ]
        return sorted(reported, key=lambda obj: obj.track_id)

    # --- steps -------------------------------------------------------------------------------------
    def _check_inputs(self, boxes, scores, embeddings):
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        scores = np.asarray(scores, dtype=np.float64).reshape(-1)
        if len(scores) != len(boxes):
            raise InputError(f"got {len(boxes)} boxes but {len(scores)} scores")
        if np.any(boxes[:, 2] <= boxes[:, 0]) or np.any(boxes[:, 3] <= boxes[:, 1]):
            raise InputError("boxes must be xyxy with right > left and bottom > top")
        if embeddings is not None:
            embeddings = np.asarray(embeddings, dtype=np.float64)
            if embeddings.ndim != 2 or len(embeddings) != len(boxes):
                raise InputError(f"embeddings must be [{len(boxes)}, D], got shape {embeddings.shape}")
            embeddings = normalize_rows(embeddings)
        return boxes, scores, embeddings

    def _predict(self) -> None:
        if not self.tracks:
            return
        mean, cov = self.kalman.predict(
            np.stack([t.mean for t in self.tracks]), np.stack([t.cov for t in self.tracks])
        )
        for track, m, c in zip(self.tracks, mean, cov, strict=True):
            track.mean, track.cov = m, c
            track.time_since_update += 1

    def _match_confirmed(self, track_indices, det_indices, boxes, measurements, embeddings):
        if not track_indices or len(det_indices) == 0:
            return [], list(track_indices), np.asarray(det_indices)
        tracks = [self.tracks[i] for i in track_indices]
        mean = np.stack([t.mean for t in tracks])
        cov = np.stack([t.cov for t in tracks])
        gated = (
            self.kalman.gating_distance(mean, cov, measurements[det_indices], only_position=True) > self.gate
        )
        motion = 1.0 - iou_matrix(xyah_to_xyxy(mean[:, :4]), boxes[det_indices])
        with_features = [k for k, t in enumerate(tracks) if t.feature is not None]
        if embeddings is None or not with_features:
            cost = np.where(gated | (motion > 1.0 - self.config.min_iou), np.inf, motion)
        else:
            appearance = np.ones_like(motion)  # a track without a feature yet counts as unknown look
            appearance[with_features] = appearance_distance(
                np.stack([tracks[k].feature for k in with_features]),
                [np.asarray(tracks[k].bank) for k in with_features],
                embeddings[det_indices],
                self.config.bank_top_k,
            )
            cost = fuse_costs(np.minimum(appearance, 1.0), motion, self.config.appearance_weight)
            # a clear overlap may match whatever the look: weak embeddings must not break tracks
            vetoed = (appearance > self.config.max_appearance_distance) & (
                motion > 1.0 - self.config.motion_override_iou
            )
            cost[gated | vetoed] = np.inf
        return self._assign(cost, track_indices, det_indices)

    def _match_iou(self, track_indices, det_indices, boxes, min_iou):
        if not track_indices or len(det_indices) == 0:
            return [], list(track_indices), np.asarray(det_indices)
        predicted = np.stack([self.tracks[i].box_xyxy for i in track_indices])
        cost = 1.0 - iou_matrix(predicted, boxes[det_indices])
        return self._assign(np.where(cost > 1.0 - min_iou, np.inf, cost), track_indices, det_indices)

    def _match_appearance(self, track_indices, det_indices, embeddings):
        track_indices = [i for i in track_indices if self.tracks[i].feature is not None]
        if not track_indices or len(det_indices) == 0:
            return [], list(track_indices), np.asarray(det_indices)
        tracks = [self.tracks[i] for i in track_indices]
        cost = appearance_distance(
            np.stack([t.feature for t in tracks]),
            [np.asarray(t.bank) for t in tracks],
            embeddings[det_indices],
            self.config.bank_top_k,
        )
        cost[cost > self.config.reid_max_distance] = np.inf
        return self._assign(cost, track_indices, det_indices)

    @staticmethod
    def _assign(cost, track_indices, det_indices):
        det_indices = np.asarray(det_indices)
        pairs, rows_left, cols_left = linear_assignment(cost)
        matches = [(track_indices[r], int(det_indices[c])) for r, c in pairs]
        return matches, [track_indices[r] for r in rows_left], det_indices[cols_left]

    def _apply_matches(self, matches, measurements, scores, embeddings) -> list[tuple[Track, int]]:
        """Kalman-correct every matched track, advance its life cycle and appearance memory."""
        if not matches:
            return []
        tracks = [self.tracks[track_index] for track_index, _ in matches]
        det_indices = [detection_index for _, detection_index in matches]
        mean, cov = self.kalman.update(
            np.stack([t.mean for t in tracks]), np.stack([t.cov for t in tracks]), measurements[det_indices]
        )
        cfg = self.config
        for track, detection, m, c in zip(tracks, det_indices, mean, cov, strict=True):
            track.mean, track.cov = m, c
            track.score = float(scores[detection])
            track.hits += 1
            track.time_since_update = 0
            if track.state is TrackState.TENTATIVE and track.hits >= cfg.n_init:
                self._confirm(track)
            if embeddings is not None and scores[detection] >= cfg.feature_min_score:
                track.add_embedding(embeddings[detection], cfg.ema_momentum)
        return list(zip(tracks, det_indices, strict=True))

    def _start_track(self, measurement, score, embedding) -> None:
        mean, cov = self.kalman.initiate(measurement[None])
        track = Track(mean[0], cov[0], float(score), bank=deque(maxlen=self.config.bank_size))
        if self.config.n_init <= 1:
            self._confirm(track)
        if embedding is not None:
            track.add_embedding(embedding, self.config.ema_momentum)
        self.tracks.append(track)

    def _confirm(self, track: Track) -> None:
        track.state = TrackState.CONFIRMED
        track.track_id = self._next_id
        self._next_id += 1


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
) -> np.ndarray:
    """Track MOT detection rows (``frame, -1, left, top, w, h, conf, ...``, frames from 1) with a fresh
    :class:`Tracker`; ``embeddings[i]`` belongs to ``detection_rows[i]``. Returns MOT result rows."""
    detection_rows = np.asarray(detection_rows, dtype=np.float64).reshape(-1, np.shape(detection_rows)[-1])
    if embeddings is not None and len(embeddings) != len(detection_rows):
        raise InputError(f"got {len(embeddings)} embeddings for {len(detection_rows)} detections")
    frames = detection_rows[:, 0].astype(int)
    last_frame = num_frames or (int(frames.max()) if len(frames) else 0)
    order = np.argsort(frames, kind="stable")
    starts = np.searchsorted(frames[order], np.arange(1, last_frame + 2))
    tracker = Tracker(config)
    results = []
    for frame in range(1, last_frame + 1):
        index = order[starts[frame - 1] : starts[frame]]
        objects = tracker.update(
            tlwh_to_xyxy(detection_rows[index, 2:6]),
            detection_rows[index, 6],
            None if embeddings is None else embeddings[index],
        )
        results.append(results_to_mot_rows(frame, objects))
    return np.concatenate(results) if results else np.zeros((0, 10))
