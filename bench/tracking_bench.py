"""Tracker quality (HOTA, IDF1, MOTA) and association speed against the maintained trackers users pick.

Peers: ByteTrack, OC-SORT, BoT-SORT and McByte from ``trackers`` 2.6 (Roboflow, Apache-2.0; BoT-SORT
and McByte with their camera-motion compensation on whenever frames exist) and deep-sort-realtime
1.3 for appearance. Every tracker sees exactly the same detections: generated scenes
(myutils.synthetic.scenes) degraded by the simulated detector (box jitter, random misses,
occlusion runs, low-score occluded objects, lower-score false positives) at three difficulties
with a static camera (detection files only, as MOTChallenge's public detections: no frames, so no
camera motion to compensate) plus a ``moving`` case: medium difficulty seen by a panning, zooming,
shaking camera, with the rendered frames given to every tracker that uses frames. Appearance
trackers get the same embeddings: SIMULATED ones (an identity vector plus noise that grows with
occlusion; random vectors for false positives) and, with ``--encoder``, those of a trained ROI
encoder on the rendered frames (slow on CPU). Every tracker is scored on the boxes it reports
for the frame, by :func:`myutils.tracking.mot_metrics.evaluate_mot` (TrackEval's numbers).

Each peer runs at its package defaults and at the best (HOTA) of a small sweep of its main
thresholds (``SWEEPS``), chosen per case on the TUNING seeds and reported on the disjoint
REPORTED seeds; ours runs at its defaults only (chosen on tuning seeds as well). Frames/s time the
trackers' update calls only: no detector, no encoder, no evaluation; ours and ByteTrack never see
frames, BoT-SORT's and McByte's include their camera-motion estimate; ours gets its camera motion
from :class:`myutils.tracking.camera_motion.CameraMotion`, timed separately (``CMC ms/frame``).

    python bench/tracking_bench.py                          # 4 cases x 5 reported seeds x 300 frames
    python bench/tracking_bench.py --cases medium --reported_seeds 1 --tuning_seeds 1 --num_frames 150

Targets (issue 12), per case: ours >= the best peer on HOTA, IDF1 and MOTA, motion only (against
the motion-only peers) and with appearance (against every peer); association frames/s >= 1.5x
the trackers ByteTrack at its defaults.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from myutils.cli import positive_int, run  # noqa: E402
from myutils.tracking.boxes import tlwh_to_xyxy, xyxy_to_tlwh  # noqa: E402
from myutils.tracking.mot_metrics import MOTSummary, combine_summaries, evaluate_mot  # noqa: E402
from myutils.tracking.tracker import Tracker, TrackerConfig, results_to_mot_rows  # noqa: E402

# case -> (difficulty, camera)
CASES = {
    "easy": ("easy", "static"),
    "medium": ("medium", "static"),
    "hard": ("hard", "static"),
    "moving": ("medium", "moving"),
}
FPS = 30.0  # the generated scenes' frame rate
# the peers' main thresholds (new-track score, high/low score split, first-round IoU, lost-track buffer
# in frames at 30 frames/s); every combination is tried on the tuning seeds
SWEEPS = {
    "ByteTrack": {
        "track_activation_threshold": (0.5, 0.7),
        "high_conf_det_threshold": (0.5, 0.6),
        "minimum_iou_threshold": (0.05, 0.1, 0.2),
        "lost_track_buffer": (30, 60),
    },
    "OC-SORT": {
        "minimum_iou_threshold": (0.1, 0.2, 0.3),
        "high_conf_det_threshold": (0.5, 0.6),
        "minimum_consecutive_frames": (2, 3),
        "lost_track_buffer": (30, 60),
    },
    "BoT-SORT": {
        "track_activation_threshold": (0.5, 0.7),
        "high_conf_det_threshold": (0.5, 0.6),
        "minimum_iou_threshold_first_assoc": (0.1, 0.2),
        "lost_track_buffer": (30, 60),
    },
    "McByte": {
        "track_activation_threshold": (0.5, 0.7),
        "high_conf_det_threshold": (0.5, 0.6),
        "minimum_iou_threshold_first_assoc": (0.05, 0.1, 0.2),
        "lost_track_buffer": (30, 60),
    },
    # deep-sort-realtime is slow (about 30 ms a frame here): a smaller sweep, a bounded gallery
    "DeepSORT-rt": {"max_cosine_distance": (0.2, 0.35), "min_confidence": (0.0, 0.3), "nn_budget": (100,)},
}
MOTION_PEERS = ("ByteTrack", "OC-SORT", "BoT-SORT", "McByte")


@dataclass
class Sequence:
    """One generated scene with everything every tracker gets (prepared outside the timed loops)."""

    ground_truth: np.ndarray
    boxes: list[np.ndarray]  # per frame, xyxy
    scores: list[np.ndarray]
    embeddings: dict[str, list[np.ndarray]]  # appearance kind -> per frame
    images_bgr: list[np.ndarray] | None = None  # the rendered frames (moving camera only)
    camera_warps: list[np.ndarray] | None = None  # ours, from the frames
    cmc_seconds: float = 0.0
    peer_cmc_cache: dict = field(default_factory=dict)  # frame index -> the peers' CMC estimate


def make_sequence(case: str, seed: int, num_frames: int, num_objects: int, appearance=None) -> Sequence:
    from myutils.synthetic.scenes import generate_scene, render_frame
    from myutils.synthetic.simulated_detector import simulate_detections, simulate_embeddings
    from myutils.tracking.camera_motion import CameraMotion

    difficulty, camera = CASES[case]
    scene = generate_scene(num_frames, num_objects, seed=seed, difficulty=difficulty, camera=camera)
    detected = simulate_detections(scene.ground_truth, scene.width, scene.height, difficulty, seed)
    rows = detected.rows
    frame_of = rows[:, 0].astype(int)
    per_frame = [np.nonzero(frame_of == f)[0] for f in range(1, num_frames + 1)]
    kinds = {"simulated": simulate_embeddings(detected, difficulty, seed=seed)}
    images = None
    if camera == "moving" or appearance is not None:
        images = [render_frame(scene, f) for f in range(1, num_frames + 1)]
    if appearance is not None:
        encoded = np.zeros((len(rows), appearance.dim))
        for image, index in zip(images, per_frame, strict=True):
            encoded[index] = appearance.embed_image(image, tlwh_to_xyxy(rows[index, 2:6]))
        kinds["ROI encoder"] = encoded
    sequence = Sequence(
        ground_truth=scene.ground_truth,
        boxes=[tlwh_to_xyxy(rows[index, 2:6]) for index in per_frame],
        scores=[rows[index, 6] for index in per_frame],
        embeddings={kind: [values[index] for index in per_frame] for kind, values in kinds.items()},
    )
    if camera == "moving":
        sequence.images_bgr = [np.ascontiguousarray(image[..., ::-1]) for image in images]
        motion = CameraMotion()
        start = time.perf_counter()
        sequence.camera_warps = [motion.estimate(image, boxes) for image, boxes in zip(images, sequence.boxes, strict=True)]
        sequence.cmc_seconds = time.perf_counter() - start
    return sequence


def rows_of(frame: int, boxes: np.ndarray, ids: np.ndarray, scores: np.ndarray) -> list[list[float]]:
    return [[frame, track_id, *xyxy_to_tlwh(box)[0], score, -1, -1, -1] for box, track_id, score in zip(boxes, ids, scores, strict=True)]


def run_ours(sequence: Sequence, kind: str | None, config: TrackerConfig) -> tuple[np.ndarray, float]:
    tracker = Tracker(config, FPS)
    warps = sequence.camera_warps or [None] * len(sequence.boxes)
    outputs, seconds = [], 0.0
    for frame, (boxes, scores, warp) in enumerate(zip(sequence.boxes, sequence.scores, warps, strict=True)):
        embeddings = None if kind is None else sequence.embeddings[kind][frame]
        start = time.perf_counter()
        objects = tracker.update(boxes, scores, embeddings, camera_warp=warp)
        seconds += time.perf_counter() - start
        outputs.append(results_to_mot_rows(frame + 1, objects))
    return np.concatenate(outputs), seconds


class CachedCameraMotion:
    """The peer's own CMC estimate, computed once per frame of a sequence and replayed for the other
    settings of its sweep (sparse optical flow depends on the frames only: the same numbers, less time)."""

    def __init__(self, cmc, cache: dict):
        self.cmc, self.cache, self.frame = cmc, cache, 0

    def estimate(self, frame_bgr, dets_xyxy=None):
        self.frame += 1
        if self.frame not in self.cache:
            self.cache[self.frame] = self.cmc.estimate(frame_bgr, dets_xyxy)
        return self.cache[self.frame]

    def reset(self):
        self.cmc.reset()
        self.frame = 0


def run_peer(sequence: Sequence, name: str, params: dict, cached_cmc: bool) -> tuple[np.ndarray, float]:
    import supervision as sv
    import trackers

    classes = {
        "ByteTrack": trackers.ByteTrackTracker,
        "OC-SORT": trackers.OCSORTTracker,
        "BoT-SORT": trackers.BoTSORTTracker,
        "McByte": trackers.McByteTracker,
    }
    tracker = classes[name](frame_rate=FPS, **params)
    frames = sequence.images_bgr if name in ("BoT-SORT", "McByte") else None
    if frames is not None and cached_cmc and getattr(tracker, "cmc", None) is not None:
        tracker.cmc = CachedCameraMotion(tracker.cmc, sequence.peer_cmc_cache)
    rows, seconds = [], 0.0
    for frame, (boxes, scores) in enumerate(zip(sequence.boxes, sequence.scores, strict=True), start=1):
        detections = sv.Detections(
            xyxy=boxes.astype(np.float32), confidence=scores.astype(np.float32), class_id=np.zeros(len(scores), int)
        )
        start = time.perf_counter()
        if frames is None:
            tracked = tracker.update(detections)
        else:
            tracked = tracker.update(detections, frame=frames[frame - 1])
        seconds += time.perf_counter() - start
        confirmed = tracked.tracker_id >= 0
        rows += rows_of(frame, tracked.xyxy[confirmed], tracked.tracker_id[confirmed], tracked.confidence[confirmed])
    return np.asarray(rows, dtype=np.float64).reshape(-1, 10), seconds


def run_deepsort(sequence: Sequence, kind: str, params: dict) -> tuple[np.ndarray, float]:
    from deep_sort_realtime.deepsort_tracker import DeepSort

    params = dict(params)
    min_confidence = params.pop("min_confidence", 0.0)
    tracker = DeepSort(embedder=None, **params)
    rows, seconds = [], 0.0
    for frame, (boxes, scores) in enumerate(zip(sequence.boxes, sequence.scores, strict=True), start=1):
        keep = scores >= min_confidence
        detections = [(list(box), float(score), 0) for box, score in zip(xyxy_to_tlwh(boxes[keep]), scores[keep], strict=True)]
        embeddings = list(sequence.embeddings[kind][frame - 1][keep])
        start = time.perf_counter()
        tracks = tracker.update_tracks(detections, embeds=embeddings)
        seconds += time.perf_counter() - start
        for track in tracks:
            if track.is_confirmed() and track.time_since_update == 0:
                box = np.asarray(track.to_ltrb())
                rows += rows_of(frame, box[None], [int(track.track_id)], [track.get_det_conf() or 0.0])
    return np.asarray(rows, dtype=np.float64).reshape(-1, 10), seconds


def sweep(name: str) -> list[dict]:
    grid = SWEEPS[name]
    return [dict(zip(grid, values, strict=True)) for values in itertools.product(*grid.values())]


def runner(name: str, kind: str | None, params: dict | None, cached_cmc: bool = False):
    """``sequence -> (rows, seconds)`` for a tracker at ``params`` (``None`` = its defaults)."""
    if name == "ours":
        return lambda sequence: run_ours(sequence, kind, TrackerConfig(**(params or {})))
    if name == "DeepSORT-rt":
        return lambda sequence: run_deepsort(sequence, kind, params or {})
    return lambda sequence: run_peer(sequence, name, params or {}, cached_cmc)


def evaluate(runs: list, sequences: list[Sequence]) -> tuple[MOTSummary, float]:
    """Combined summary over the sequences and frames/s of the update calls."""
    summaries, seconds, frames = [], 0.0, 0
    for run_one, sequence in zip(runs, sequences, strict=True):
        rows, elapsed = run_one(sequence)
        summaries.append(evaluate_mot(sequence.ground_truth, rows))
        seconds += elapsed
        frames += len(sequence.boxes)
    return combine_summaries(summaries), frames / max(seconds, 1e-9)


def entries(kinds: list[str]) -> list[tuple[str, str | None]]:
    """(tracker, appearance kind or None) in table order."""
    rows = [("ours", None)] + [(name, None) for name in MOTION_PEERS]
    for kind in kinds:
        rows += [("ours", kind), ("DeepSORT-rt", kind)]
    return rows


@dataclass
class Result:
    tracker: str
    kind: str | None
    setting: str  # "defaults", "tuned: ..." or "ours defaults"
    summary: MOTSummary
    fps: float


def tune(name: str, kind: str | None, sequences: list[Sequence]) -> dict:
    """The sweep setting with the best HOTA on the tuning sequences."""
    best, best_hota = {}, -1.0
    for params in sweep(name):
        run_one = runner(name, kind, params, cached_cmc=True)
        summary, _ = evaluate([run_one] * len(sequences), sequences)
        if summary.hota > best_hota:
            best, best_hota = params, summary.hota
    return best


def benchmark(
    cases: list[str],
    tuning_seeds: list[int],
    reported_seeds: list[int],
    num_frames: int,
    num_objects: int,
    appearance=None,
    progress=print,
) -> dict[str, list[Result]]:
    """``{case: [Result, ...]}`` (ours at defaults, each peer at defaults and tuned on the tuning seeds)
    and ``{case: (our frames/s, ByteTrack's frames/s)}`` from :func:`speed_ratio`."""
    kinds = ["simulated"] + (["ROI encoder"] if appearance is not None else [])
    table, speed = {}, {}
    for case in cases:
        progress(f"[{case}] generating {len(tuning_seeds)} tuning + {len(reported_seeds)} reported scenes")
        tuning = [make_sequence(case, seed, num_frames, num_objects, appearance) for seed in tuning_seeds]
        reported = [make_sequence(case, seed, num_frames, num_objects, appearance) for seed in reported_seeds]
        results = []
        for name, kind in entries(kinds):
            settings = [("defaults", None)]
            if name != "ours":
                progress(f"[{case}] tuning {name}" + (f" [{kind}]" if kind else ""))
                tuned = tune(name, kind, tuning)
                settings.append(("tuned: " + ", ".join(f"{k}={v}" for k, v in tuned.items()), tuned))
            for setting, params in settings:
                summary, fps = evaluate([runner(name, kind, params)] * len(reported), reported)
                results.append(Result(name, kind, setting, summary, fps))
        cmc_seconds = sum(s.cmc_seconds for s in reported)
        if cmc_seconds:
            progress(f"[{case}] our camera-motion estimate: {1000 * cmc_seconds / (num_frames * len(reported)):.1f} ms/frame")
        table[case] = results
        speed[case] = speed_ratio(reported)
    return table, speed


def speed_ratio(sequences: list[Sequence], repeats: int = 3) -> tuple[float, float]:
    """Association frames/s of ours (motion only, defaults) and of ByteTrack (defaults): the best of
    ``repeats`` runs each, interleaved on the same sequences, so both see the same machine load."""
    ours, reference = runner("ours", None, None), runner("ByteTrack", None, None)
    best = {"ours": np.inf, "ByteTrack": np.inf}
    for _ in range(repeats):
        for name, run_one in (("ours", ours), ("ByteTrack", reference)):
            best[name] = min(best[name], sum(run_one(sequence)[1] for sequence in sequences))
    frames = sum(len(sequence.boxes) for sequence in sequences)
    return frames / best["ours"], frames / best["ByteTrack"]


def reference_fps(results: list[Result]) -> float:
    return next(r.fps for r in results if r.tracker == "ByteTrack" and r.setting == "defaults")


def print_table(table: dict[str, list[Result]]) -> None:
    print(
        "| case | tracker | setting | appearance | HOTA | DetA | AssA | MOTA | IDF1 | IDSW | FP | FN | "
        "assoc. frames/s | vs ByteTrack |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for case, results in table.items():
        reference = reference_fps(results)
        for r in results:
            s = r.summary
            print(
                f"| {case} | {r.tracker} | {r.setting} | {r.kind or 'none'} | {s.hota:.3f} | {s.deta:.3f} | "
                f"{s.assa:.3f} | {s.mota:.3f} | {s.idf1:.3f} | {s.num_switches} | {s.num_false_positives} | "
                f"{s.num_misses} | {r.fps:.0f} | {r.fps / reference:.2f}x |"
            )


def check_targets(table: dict[str, list[Result]], speed: dict[str, tuple[float, float]], target_ratio: float = 1.5) -> list[str]:
    """PASS or FAIL with the numbers: per case, each metric against the best peer, and the speed."""
    lines = []
    for case, results in table.items():
        peers = [r for r in results if r.tracker != "ours"]
        kinds = [None] + sorted({r.kind for r in results if r.kind})
        for kind in kinds:
            ours = next(r for r in results if r.tracker == "ours" and r.kind == kind)
            rivals = [r for r in peers if r.kind is None] if kind is None else peers
            for metric in ("hota", "idf1", "mota"):
                best = max(rivals, key=lambda r, metric=metric: getattr(r.summary, metric))
                mine, theirs = getattr(ours.summary, metric), getattr(best.summary, metric)
                label = "motion only" if kind is None else f"with {kind} appearance"
                lines.append(
                    f"{'PASS' if mine >= theirs else 'FAIL'} [{case}] {label}: {metric.upper()} {mine:.3f} >= "
                    f"best peer {theirs:.3f} ({best.tracker}{' [' + best.kind + ']' if best.kind else ''}, {best.setting})"
                )
        ours_fps, bytetrack_fps = speed[case]
        ratio = ours_fps / bytetrack_fps
        lines.append(
            f"{'PASS' if ratio >= target_ratio else 'FAIL'} [{case}] association frames/s {ours_fps:.0f} = "
            f"{ratio:.2f}x ByteTrack's {bytetrack_fps:.0f} (best of 3 interleaved runs; target >= {target_ratio}x)"
        )
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES), help="scene cases to run")
    parser.add_argument("--reported_seeds", type=positive_int, default=5, help="reported scenes per case (seeds 0..N-1)")
    parser.add_argument(
        "--tuning_seeds", type=positive_int, default=2, help="tuning scenes per case (seeds 100..100+N-1)"
    )
    parser.add_argument("--num_frames", type=positive_int, default=300, help="frames per scene")
    parser.add_argument("--num_objects", type=positive_int, default=10, help="identities per scene")
    parser.add_argument(
        "--encoder", help="also track with this ROI encoder's embeddings (a checkpoint written by main_train.py)"
    )
    parser.add_argument("--yolo_weights", help="YOLOv7 weights the encoder was trained on (default: random, seed 0)")
    parser.add_argument("--img_size", type=positive_int, default=320, help="YOLOv7 input size for the encoder's features")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: CUDA when available)")
    args = parser.parse_args(argv)
    appearance = None
    if args.encoder:
        from myutils.detection.detector import YOLOv7Detector
        from myutils.roi.appearance import ROIAppearance

        detector = YOLOv7Detector(args.yolo_weights, img_size=args.img_size, device=args.device)
        appearance = ROIAppearance(args.encoder, detector)
    warnings.filterwarnings("ignore", module="trackers")  # per-frame notices of the peers
    table, speed = benchmark(
        args.cases,
        list(range(100, 100 + args.tuning_seeds)),
        list(range(args.reported_seeds)),
        args.num_frames,
        args.num_objects,
        appearance,
    )
    print_table(table)
    print("\n".join(check_targets(table, speed)))


if __name__ == "__main__":
    run(main)
