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

A track found again after a gap is re-filtered along a straight virtual path from its last
observation (OC-SORT's observation-centric re-update), so the velocity it lost while coasting
is not carried on. Appearance memory is updated only by confident detections whose look agrees
with the track (a match made on overlap alone with a mismatched look does not teach the track
a wrong look). Unmatched high-score detections scoring at least ``new_track_score`` start
tentative tracks; a tentative track is confirmed after ``n_init`` consecutive hits and deleted
at its first miss; a confirmed track missed for more than ``max_age_seconds`` is deleted.
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

    The defaults were chosen on generated scenes (tuning seeds of bench/tracking_bench.py, never
    the reported ones): a wide motion gate, because the DeepSORT noise model is tight for
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
    max_age_seconds: float = _param(
        2.0, "seconds a confirmed track may stay unmatched before it is deleted (x fps = frames)"
    )
    gate_probability: float = _param(0.9999, "chi-square quantile of the Mahalanobis gate (centre, 2 dof)")
    min_iou: float = _param(0.2, "round 1 without appearance: least IoU with the predicted box")
    max_fused_cost: float = _param(
        0.9, "round 1 with appearance: largest fused cost of a match (= the cost of leaving both unmatched)"
    )
    min_iou_low: float = _param(0.5, "round 2 (low-score detections): least IoU with the predicted box")
    min_iou_recovery: float = _param(
        0.3, "round 3 (recovery): least IoU with the track's last observed box; 1 disables the round"
    )
    min_iou_tentative: float = _param(0.3, "round 3 (tentative tracks): least IoU with the predicted box")
    direction_weight: float = _param(
        0.2, "round 1: weight of OC-SORT's velocity-direction consistency (0 = off), times the detection score"
    )
    direction_frames: int = _param(3, "frames between the observations that give a track's direction")
    reupdate: bool = _param(
        True, "OC-SORT re-update: re-filter a re-found track along a virtual path from its last observation"
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
        if min(self.n_init, self.bank_size, self.bank_top_k, self.direction_frames, self.reid_min_missed) < 1:
            raise InputError("n_init, bank_size, bank_top_k, direction_frames and reid_min_missed must be >= 1")
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

    @classmethod
    def field_help(cls) -> dict[str, str]:
        return {f.name: f.metadata["help"] for f in fields(cls)}

    def frames(self, seconds: float, fps: float) -> int:
        """A duration in frames at ``fps`` (at least one frame)."""
        return max(1, int(round(seconds * fps)))


class TrackState(Enum):
    TENTATIVE = "tentative"
    CONFIRMED = "confirmed"
    DELETED = "deleted"


@dataclass
class Track:
    """One identity: its Kalman state, life-cycle counters, last observations and appearance memory."""

    mean: np.ndarray  # [8]
    cov: np.ndarray  # [8, 8]
    score: float
    observed_box: np.ndarray  # xyxy of the last matched detection (moved with the camera)
    class_id: int = -1
    track_id: int = 0  # given at confirmation, so reported ids count up without gaps
    state: TrackState = TrackState.TENTATIVE
    hits: int = 1
    time_since_update: int = 0
    feature: np.ndarray | None = None  # EMA of the embeddings, unit length
    bank: deque = field(default_factory=deque)
    # the filter state right after the last update, for the re-update after a gap
    observed_mean: np.ndarray | None = None
    observed_cov: np.ndarray | None = None
    # (frame number, centre) of recent observations, for the velocity direction
    recent_centres: deque = field(default_factory=deque)
    direction: np.ndarray | None = None  # unit vector of the observed motion

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

    def reference_centre(self, frame: int, frames_back: int) -> np.ndarray:
        """OC-SORT's reference observation: the oldest observed centre at most ``frames_back`` frames
        before ``frame``, or the last observed one when there is none that recent."""
        for observed_frame, centre in self.recent_centres:
            if observed_frame >= frame - frames_back:
                return centre
        return self.recent_centres[-1][1]


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
    scale = float(np.sqrt(abs(np.linalg.det(warp[:, :2]))))
    centres = box_centres(boxes_xyxy) @ warp[:, :2].T + warp[:, 2]
    half = (boxes_xyxy[:, 2:] - boxes_xyxy[:, :2]) * scale / 2
    return np.concatenate([centres - half, centres + half], axis=1)


class Tracker:
    def __init__(self, config: TrackerConfig | None = None, fps: float = 30.0):
        if not np.isfinite(fps) or fps <= 0:
            raise InputError(f"fps must be a positive number, got {fps}")
        self.config = config or TrackerConfig()
        self.fps = float(fps)
        self.max_age = self.config.frames(self.config.max_age_seconds, fps)
        self.reid_window = self.config.frames(self.config.reid_window_seconds, fps)
        self.kalman = KalmanBoxFilter(self.config.position_noise, self.config.velocity_noise)
        self.gate = chi2_gate(self.config.gate_probability, dof=2)
        self.tracks: list[Track] = []
        self.frame = 0  # frames seen so far
        self._next_id = 1

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

        keep = scores >= cfg.low_score
        high = np.nonzero(keep & (scores >= cfg.high_score))[0]
        low = np.nonzero(keep & (scores < cfg.high_score))[0]
        measurements = xyxy_to_xyah(boxes)
        confirmed = [i for i, t in enumerate(self.tracks) if t.state is TrackState.CONFIRMED]
        tentative = [i for i, t in enumerate(self.tracks) if t.state is TrackState.TENTATIVE]
        matches: list[tuple[int, int]] = []
        rounds = (boxes, scores, class_ids)

        # round 1: confirmed tracks x high-score detections, motion (+ appearance)
        pairs, confirmed_left, high_left = self._match_confirmed(confirmed, high, *rounds, measurements, embeddings)
        matches += pairs
        # round 2: tracks seen in the previous frame x low-score detections, IoU only
        recent = [i for i in confirmed_left if self.tracks[i].time_since_update == 1]
        pairs, _, _ = self._match_iou(recent, low, *rounds, cfg.min_iou_low)
        matches += pairs
        extended = {track_index for track_index, _ in pairs}
        confirmed_left = [i for i in confirmed_left if i not in extended]
        # round 3: the rest x remaining high-score detections, IoU with the last observed box
        if cfg.min_iou_recovery < 1.0:
            pairs, confirmed_left, high_left = self._match_iou(
                confirmed_left, high_left, *rounds, cfg.min_iou_recovery, observed=True
            )
            matches += pairs
        # round 4: tentative tracks x remaining high-score detections, IoU only
        pairs, _, high_left = self._match_iou(tentative, high_left, *rounds, cfg.min_iou_tentative)
        matches += pairs
        # round 5: lost tracks x remaining high-score detections, appearance only, near where they were lost
        if embeddings is not None:
            lost = [
                i
                for i in confirmed_left
                if cfg.reid_min_missed <= self.tracks[i].time_since_update <= self.reid_window
            ]
            pairs, _, high_left = self._match_appearance(lost, high_left, boxes, class_ids, embeddings)
            matches += pairs

        updated = self._apply_matches(matches, boxes, measurements, scores, embeddings)
        for track in self.tracks:
            if track.time_since_update > 0 and (
                track.state is TrackState.TENTATIVE or track.time_since_update > self.max_age
            ):
                track.state = TrackState.DELETED
        self.tracks = [t for t in self.tracks if t.state is not TrackState.DELETED]
        for j in high_left:
            if scores[j] >= cfg.new_track_score:
                self._start_track(
                    boxes[j], measurements[j], scores[j], class_ids[j], None if embeddings is None else embeddings[j]
                )

        # the matched detection's box is reported: the filtered box lags behind on turns and size changes
        reported = [
            TrackedObject(track.track_id, boxes[j], track.score, j, track.class_id)
            for track, j in updated
            if track.state is TrackState.CONFIRMED
        ]
        return sorted(reported, key=lambda obj: obj.track_id)

    # --- steps -------------------------------------------------------------------------------------
    def _check_inputs(self, boxes, scores, embeddings, class_ids):
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
        if class_ids is None:
            class_ids = np.full(len(boxes), -1, dtype=np.int64)
        else:
            class_ids = np.asarray(class_ids).reshape(-1)
            if len(class_ids) != len(boxes):
                raise InputError(f"got {len(boxes)} boxes but {len(class_ids)} class ids")
            class_ids = class_ids.astype(np.int64)
        return boxes, scores, embeddings, class_ids

    def _predict(self, camera_warp: np.ndarray | None) -> None:
        if not self.tracks:
            return
        mean, cov = self.kalman.predict(
            np.stack([t.mean for t in self.tracks]), np.stack([t.cov for t in self.tracks])
        )
        if camera_warp is not None:
            warp = np.asarray(camera_warp, dtype=np.float64).reshape(2, 3)
            mean, cov = self.kalman.warp(mean, cov, warp)
            self._warp_observations(warp)
        for track, m, c in zip(self.tracks, mean, cov, strict=True):
            track.mean, track.cov = m, c
            track.time_since_update += 1

    def _warp_observations(self, warp: np.ndarray) -> None:
        """What a track remembers of past frames, moved into the current image's coordinates."""
        observed = warp_boxes(np.stack([t.observed_box for t in self.tracks]), warp)
        for track, box in zip(self.tracks, observed, strict=True):
            track.observed_box = box
            track.recent_centres = deque(
                (frame, warp[:, :2] @ centre + warp[:, 2]) for frame, centre in track.recent_centres
            )
            if track.direction is not None:
                moved = warp[:, :2] @ track.direction
                track.direction = moved / max(np.linalg.norm(moved), 1e-12)
            if track.observed_mean is not None:
                mean, cov = self.kalman.warp(track.observed_mean[None], track.observed_cov[None], warp)
                track.observed_mean, track.observed_cov = mean[0], cov[0]

    def _class_conflicts(self, tracks: list[Track], det_class_ids: np.ndarray) -> np.ndarray:
        """``[N, M]`` True where a track and a detection belong to different classes."""
        return np.array([t.class_id for t in tracks])[:, None] != det_class_ids[None, :]

    def _direction_bonus(self, tracks: list[Track], boxes: np.ndarray, scores: np.ndarray) -> np.ndarray:
        """OC-SORT's velocity-direction consistency ``(π/2 − |Δθ|) / π`` in [−0.5, 0.5], times the
        detection score: positive where a detection lies along the track's observed direction."""
        bonus = np.zeros((len(tracks), len(boxes)))
        with_direction = [k for k, t in enumerate(tracks) if t.direction is not None]
        if not with_direction or self.config.direction_weight == 0:
            return bonus
        frames_back = self.config.direction_frames
        reference = np.stack([tracks[k].reference_centre(self.frame, frames_back) for k in with_direction])
        offsets = box_centres(boxes)[None, :, :] - reference[:, None, :]
        offsets /= np.maximum(np.linalg.norm(offsets, axis=2, keepdims=True), 1e-6)
        directions = np.stack([tracks[k].direction for k in with_direction])
        cosine = np.clip(np.einsum("nmd,nd->nm", offsets, directions), -1.0, 1.0)
        bonus[with_direction] = (np.pi / 2 - np.arccos(cosine)) / np.pi
        return self.config.direction_weight * bonus * scores[None, :]

    def _match_confirmed(self, track_indices, det_indices, boxes, scores, class_ids, measurements, embeddings):
        if not track_indices or len(det_indices) == 0:
            return [], list(track_indices), np.asarray(det_indices)
        cfg = self.config
        tracks = [self.tracks[i] for i in track_indices]
        mean = np.stack([t.mean for t in tracks])
        cov = np.stack([t.cov for t in tracks])
        forbidden = self._class_conflicts(tracks, class_ids[det_indices])
        forbidden |= (
            self.kalman.gating_distance(mean, cov, measurements[det_indices], only_position=True) > self.gate
        )
        overlap = iou_matrix(xyah_to_xyxy(mean[:, :4]), boxes[det_indices])
        motion = 1.0 - overlap - self._direction_bonus(tracks, boxes[det_indices], scores[det_indices])
        with_features = [k for k, t in enumerate(tracks) if t.feature is not None]
        if embeddings is None or not with_features:
            cost = np.where(forbidden | (overlap < cfg.min_iou), np.inf, motion)
            return self._assign(cost, 1.0 - cfg.min_iou, track_indices, det_indices)
        appearance = np.ones_like(motion)  # a track without a feature yet counts as unknown look
        appearance[with_features] = self._appearance([tracks[k] for k in with_features], embeddings[det_indices])
        cost = fuse_costs(np.minimum(appearance, 1.0), motion, cfg.appearance_weight)
        # a clear overlap may match whatever the look: weak embeddings must not break tracks
        vetoed = (appearance > cfg.max_appearance_distance) & (overlap < cfg.motion_override_iou)
        cost[forbidden | vetoed] = np.inf
        return self._assign(cost, cfg.max_fused_cost, track_indices, det_indices)

    def _match_iou(self, track_indices, det_indices, boxes, scores, class_ids, min_iou, observed=False):
        if not track_indices or len(det_indices) == 0:
            return [], list(track_indices), np.asarray(det_indices)
        tracks = [self.tracks[i] for i in track_indices]
        reference = np.stack([t.observed_box if observed else t.box_xyxy for t in tracks])
        cost = 1.0 - iou_matrix(reference, boxes[det_indices])
        cost[(cost > 1.0 - min_iou) | self._class_conflicts(tracks, class_ids[det_indices])] = np.inf
        return self._assign(cost, 1.0 - min_iou + 1e-9, track_indices, det_indices)

    def _match_appearance(self, track_indices, det_indices, boxes, class_ids, embeddings):
        track_indices = [i for i in track_indices if self.tracks[i].feature is not None]
        if not track_indices or len(det_indices) == 0:
            return [], list(track_indices), np.asarray(det_indices)
        cfg = self.config
        tracks = [self.tracks[i] for i in track_indices]
        cost = self._appearance(tracks, embeddings[det_indices])
        # the object moved at most reid_max_speed box heights per second since it was last seen
        last = np.stack([t.observed_box for t in tracks])
        heights = last[:, 3] - last[:, 1]
        seconds_lost = np.array([t.time_since_update for t in tracks]) / self.fps
        reach = heights * (1.0 + cfg.reid_max_speed * seconds_lost)
        shift = np.linalg.norm(box_centres(boxes[det_indices])[None] - box_centres(last)[:, None], axis=2)
        too_far = shift > reach[:, None]
        cost[(cost > cfg.reid_max_distance) | too_far | self._class_conflicts(tracks, class_ids[det_indices])] = np.inf
        return self._assign(cost, cfg.reid_max_distance + 1e-9, track_indices, det_indices)

    def _appearance(self, tracks: list[Track], embeddings: np.ndarray) -> np.ndarray:
        return appearance_distance(
            np.stack([t.feature for t in tracks]),
            [np.asarray(t.bank) for t in tracks],
            embeddings,
            self.config.bank_top_k,
        )

    @staticmethod
    def _assign(cost, max_cost, track_indices, det_indices):
        det_indices = np.asarray(det_indices)
        pairs, rows_left, cols_left = linear_assignment(cost, max_cost)
        matches = [(track_indices[r], int(det_indices[c])) for r, c in pairs]
        return matches, [track_indices[r] for r in rows_left], det_indices[cols_left]

    def _apply_matches(self, matches, boxes, measurements, scores, embeddings) -> list[tuple[Track, int]]:
        """Kalman-correct every matched track, advance its life cycle, observations and appearance memory."""
        if not matches:
            return []
        cfg = self.config
        tracks = [self.tracks[track_index] for track_index, _ in matches]
        det_indices = np.array([detection_index for _, detection_index in matches])
        if cfg.reupdate:
            for track, j in zip(tracks, det_indices, strict=True):
                if track.time_since_update > 1 and track.observed_mean is not None:
                    self._reupdate(track, measurements[j])
        noise_scale = np.clip(1.0 - scores[det_indices], 0.05, 1.0) if cfg.score_scaled_noise else None
        mean, cov = self.kalman.update(
            np.stack([t.mean for t in tracks]), np.stack([t.cov for t in tracks]), measurements[det_indices], noise_scale
        )
        learns = self._learns_look(tracks, det_indices, scores, embeddings)
        centres = box_centres(boxes[det_indices])
        for track, j, m, c, centre, learn in zip(tracks, det_indices, mean, cov, centres, learns, strict=True):
            track.mean, track.cov = m, c
            track.observed_mean, track.observed_cov = m.copy(), c.copy()
            track.observed_box = boxes[j]
            offset = centre - track.reference_centre(self.frame, cfg.direction_frames)
            if np.linalg.norm(offset) > 1e-6:
                track.direction = offset / np.linalg.norm(offset)
            track.recent_centres.append((self.frame, centre))
            while self.frame - track.recent_centres[0][0] > cfg.direction_frames:
                track.recent_centres.popleft()
            track.score = float(scores[j])
            track.hits += 1
            track.time_since_update = 0
            if track.state is TrackState.TENTATIVE and track.hits >= cfg.n_init:
                self._confirm(track)
            if learn:
                track.add_embedding(embeddings[j], self._ema_momentum(scores[j]))
        return list(zip(tracks, det_indices.tolist(), strict=True))

    def _learns_look(self, tracks, det_indices, scores, embeddings) -> np.ndarray:
        """Per match: may the detection's embedding update the track's look? Only a confident detection
        whose look agrees with the track (or a track with no look yet)."""
        if embeddings is None:
            return np.zeros(len(tracks), dtype=bool)
        learns = scores[det_indices] >= self.config.feature_min_score
        known = [k for k, t in enumerate(tracks) if t.feature is not None and learns[k]]
        if known:
            distance = self._appearance([tracks[k] for k in known], embeddings[det_indices[known]])
            learns[known] = np.diag(distance) <= self.config.max_appearance_distance
        return learns

    def _ema_momentum(self, score: float) -> float:
        """Deep OC-SORT's confidence-weighted EMA: a barely-high-score detection hardly moves the feature."""
        cfg = self.config
        if not cfg.ema_confidence_weighted or cfg.high_score >= 1.0:
            return cfg.ema_momentum
        trust = np.clip((score - cfg.high_score) / (1.0 - cfg.high_score), 0.0, 1.0)
        return float(cfg.ema_momentum + (1.0 - cfg.ema_momentum) * (1.0 - trust))

    def _reupdate(self, track: Track, measurement: np.ndarray) -> None:
        """OC-SORT's observation-centric re-update: back to the state at the last observation, then
        predict and update along a straight line to the new observation for every missed frame."""
        gap = track.time_since_update
        mean, cov = track.observed_mean[None], track.observed_cov[None]
        start = mean[0, :4].copy()
        for step in range(1, gap):
            mean, cov = self.kalman.predict(mean, cov)
            virtual = start + (measurement - start) * step / gap
            mean, cov = self.kalman.update(mean, cov, virtual[None])
        track.mean, track.cov = (arr[0] for arr in self.kalman.predict(mean, cov))

    def _start_track(self, box, measurement, score, class_id, embedding) -> None:
        mean, cov = self.kalman.initiate(measurement[None])
        track = Track(
            mean[0],
            cov[0],
            float(score),
            observed_box=box,
            class_id=int(class_id),
            bank=deque(maxlen=self.config.bank_size),
            observed_mean=mean[0].copy(),
            observed_cov=cov[0].copy(),
            recent_centres=deque([(self.frame, box_centres(box[None])[0])]),
        )
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
