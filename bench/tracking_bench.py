"""Tracker quality and association speed against deep-sort-realtime and ByteTrack (supervision 0.30).

Every tracker gets exactly the same detections: generated scenes (myutils.synthetic.scenes)
degraded by the simulated detector (box jitter, random misses, occlusion runs, low-score
occluded objects, lower-score false positives) at three difficulty levels. Appearance-based
trackers get the same embeddings: SIMULATED ones (an identity vector plus noise that grows
with occlusion; random vectors for false positives) and, with ``--encoder``, also those of a
trained ROI encoder on the rendered frames (slow on CPU: one YOLOv7 backbone pass per frame).
Frames/s count the tracker's update calls only (no detector, no encoder, no evaluation).

    python bench/tracking_bench.py                 # 3 difficulties x 3 seeds x 300 frames
    python bench/tracking_bench.py --seeds 1 --num_frames 150 --encoder demo_runs/roi/train/checkpoints/last.pth

Targets (issue 6): with appearance, IDF1 and ID switches at least as good as the best baseline at
every difficulty; motion-only MOTA within 0.02 of ByteTrack; association at least as fast as ByteTrack.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from myutils.cli import positive_int, run  # noqa: E402
from myutils.synthetic.scenes import generate_scene  # noqa: E402
from myutils.synthetic.simulated_detector import DIFFICULTY_LEVELS, simulate_detections, simulate_embeddings  # noqa: E402
from myutils.tracking.boxes import tlwh_to_xyxy, xyxy_to_tlwh  # noqa: E402
from myutils.tracking.mot_metrics import MOTSummary, combine_summaries, evaluate_mot  # noqa: E402
from myutils.tracking.tracker import Tracker, TrackerConfig, results_to_mot_rows  # noqa: E402


def frames_of(rows: np.ndarray, embeddings: dict[str, np.ndarray], num_frames: int) -> list[tuple]:
    """Per frame: xyxy boxes, scores and ``{appearance kind: embeddings}`` (prepared outside the timed loops)."""
    frames = rows[:, 0].astype(int)
    return [
        (
            tlwh_to_xyxy(rows[frames == f, 2:6]),
            rows[frames == f, 6],
            {kind: values[frames == f] for kind, values in embeddings.items()},
        )
        for f in range(1, num_frames + 1)
    ]


def encoder_embeddings(scene, rows: np.ndarray, appearance) -> np.ndarray:
    """ROI-encoder embeddings of the detection ``rows`` on the scene's rendered frames (a backbone pass each)."""
    from tqdm import tqdm

    from myutils.synthetic.scenes import render_frame

    embeddings = np.zeros((len(rows), appearance.dim))
    frames = rows[:, 0].astype(int)
    for frame in tqdm(range(1, scene.num_frames + 1), desc="ROI embeddings", unit="frame", leave=False):
        index = np.nonzero(frames == frame)[0]
        boxes = tlwh_to_xyxy(rows[index, 2:6])
        embeddings[index] = appearance.embed_image(render_frame(scene, frame), boxes)
    return embeddings


def run_ours(frames: list[tuple], kind: str | None) -> tuple[np.ndarray, float]:
    tracker = Tracker(TrackerConfig())
    outputs, seconds = [], 0.0
    for boxes, scores, embeddings in frames:
        start = time.perf_counter()
        objects = tracker.update(boxes, scores, None if kind is None else embeddings[kind])
        seconds += time.perf_counter() - start
        outputs.append(objects)
    rows = [results_to_mot_rows(frame, objects) for frame, objects in enumerate(outputs, start=1)]
    return np.concatenate(rows), seconds


def run_bytetrack(frames: list[tuple], activation_threshold: float) -> tuple[np.ndarray, float]:
    import supervision as sv

    tracker = sv.ByteTrack(
        track_activation_threshold=activation_threshold,
        lost_track_buffer=30,
        minimum_matching_threshold=0.8,
        frame_rate=30,
    )
    rows, seconds = [], 0.0
    for frame, (boxes, scores, _) in enumerate(frames, start=1):
        detections = sv.Detections(
            xyxy=boxes.astype(np.float32),
            confidence=scores.astype(np.float32),
            class_id=np.zeros(len(scores), dtype=int),
        )
        start = time.perf_counter()
        tracked = tracker.update_with_detections(detections)
        seconds += time.perf_counter() - start
        for box, track_id, score in zip(tracked.xyxy, tracked.tracker_id, tracked.confidence, strict=True):
            rows.append([frame, track_id, *xyxy_to_tlwh(box)[0], score, -1, -1, -1])
    return np.asarray(rows, dtype=np.float64).reshape(-1, 10), seconds


def run_deepsort(
    frames: list[tuple], kind: str, min_confidence: float, max_cosine_distance: float
) -> tuple[np.ndarray, float]:
    from deep_sort_realtime.deepsort_tracker import DeepSort

    tracker = DeepSort(
        max_age=30, n_init=3, max_cosine_distance=max_cosine_distance, nn_budget=100, embedder=None
    )
    rows, seconds = [], 0.0
    for frame, (boxes, scores, embeddings) in enumerate(frames, start=1):
        keep = scores >= min_confidence
        detections = [
            (list(box), float(score), 0)
            for box, score in zip(xyxy_to_tlwh(boxes[keep]), scores[keep], strict=True)
        ]
        start = time.perf_counter()
        tracks = tracker.update_tracks(detections, embeds=list(embeddings[kind][keep]))
        seconds += time.perf_counter() - start
        for track in tracks:
            if track.is_confirmed() and track.time_since_update == 0:
                score = track.get_det_conf() or 0.0
                rows.append(
                    [frame, int(track.track_id), *xyxy_to_tlwh(track.to_ltrb())[0], score, -1, -1, -1]
                )
    return np.asarray(rows, dtype=np.float64).reshape(-1, 10), seconds


def tracker_specs(kinds: list[str]) -> dict:
    """``{name: (appearance kind or None, runner(frames))}``: motion-only trackers, then per appearance kind."""
    specs = {
        "ours": (None, lambda frames: run_ours(frames, None)),
        "ByteTrack sv 0.30 (0.25)": (None, lambda frames: run_bytetrack(frames, activation_threshold=0.25)),
        "ByteTrack sv 0.30 (0.5)": (None, lambda frames: run_bytetrack(frames, activation_threshold=0.5)),
    }
    for kind in kinds:
        specs[f"ours [{kind}]"] = (kind, lambda frames, kind=kind: run_ours(frames, kind))
        for gate in (0.2, 0.35):
            specs[f"DeepSORT-rt cos {gate} [{kind}]"] = (
                kind,
                lambda frames, kind=kind, gate=gate: run_deepsort(frames, kind, 0.3, gate),
            )
    return specs


def benchmark(
    difficulties: list[str], seeds: int, num_frames: int, num_objects: int, appearance=None
) -> tuple[dict, dict]:
    """``{difficulty: {tracker: (combined MOTSummary, frames/s)}}`` and the tracker specs.

    With ``appearance`` (a :class:`myutils.roi.appearance.ROIAppearance`) the trackers also run on
    ROI-encoder embeddings of the rendered frames, next to the simulated ones.
    """
    specs = tracker_specs(["simulated"] + (["ROI encoder"] if appearance is not None else []))
    table = {}
    for difficulty in difficulties:
        summaries: dict[str, list[MOTSummary]] = {name: [] for name in specs}
        seconds = dict.fromkeys(specs, 0.0)
        for seed in range(seeds):
            scene = generate_scene(
                num_frames=num_frames, num_objects=num_objects, seed=seed, difficulty=difficulty
            )
            detections = simulate_detections(scene.ground_truth, scene.width, scene.height, difficulty, seed)
            embeddings = {"simulated": simulate_embeddings(detections, difficulty, seed=seed)}
            if appearance is not None:
                embeddings["ROI encoder"] = encoder_embeddings(scene, detections.rows, appearance)
            frames = frames_of(detections.rows, embeddings, num_frames)
            for name, (_, runner) in specs.items():
                rows, elapsed = runner(frames)
                summaries[name].append(evaluate_mot(scene.ground_truth, rows))
                seconds[name] += elapsed
        table[difficulty] = {
            name: (combine_summaries(summaries[name]), seeds * num_frames / seconds[name]) for name in specs
        }
    return table, specs


def print_table(table: dict, specs: dict) -> None:
    print(
        "| difficulty | tracker | appearance | MOTA | IDF1 | IDSW | FP | FN | assoc. frames/s | vs ByteTrack 0.25 |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for difficulty, rows in table.items():
        reference_fps = rows["ByteTrack sv 0.30 (0.25)"][1]
        for name, (summary, fps) in rows.items():
            print(
                f"| {difficulty} | {name} | {specs[name][0] or 'none'} | {summary.mota:.3f} | {summary.idf1:.3f} | "
                f"{summary.num_switches} | {summary.num_false_positives} | {summary.num_misses} | {fps:.0f} | "
                f"{fps / reference_fps:.2f}x |"
            )


def check_targets(table: dict, specs: dict) -> list[str]:
    """PASS or FAIL with the numbers, per difficulty: the issue's targets for each appearance kind."""
    lines = []
    kinds = sorted({kind for kind, _ in specs.values() if kind})
    for difficulty, rows in table.items():
        bytetracks = [name for name in rows if name.startswith("ByteTrack")]
        checks = []
        for kind in kinds:
            ours = rows[f"ours [{kind}]"][0]
            baselines = bytetracks + [
                name for name in rows if name.startswith("DeepSORT") and specs[name][0] == kind
            ]
            best_idf1 = max(rows[name][0].idf1 for name in baselines)
            fewest = min(rows[name][0].num_switches for name in baselines)
            checks.append(
                (f"[{kind}] IDF1 {ours.idf1:.3f} >= best baseline {best_idf1:.3f}", ours.idf1 >= best_idf1)
            )
            checks.append(
                (
                    f"[{kind}] IDSW {ours.num_switches} <= fewest baseline {fewest}",
                    ours.num_switches <= fewest,
                )
            )
        motion, motion_fps = rows["ours"]
        best_mota = max(rows[name][0].mota for name in bytetracks)
        fastest = max(rows[name][1] for name in bytetracks)
        checks.append(
            (
                f"motion-only MOTA {motion.mota:.3f} >= ByteTrack {best_mota:.3f} - 0.02",
                motion.mota >= best_mota - 0.02,
            )
        )
        checks.append(
            (f"motion-only frames/s {motion_fps:.0f} >= ByteTrack {fastest:.0f}", motion_fps >= fastest)
        )
        lines += [f"{'PASS' if ok else 'FAIL'} [{difficulty}] {text}" for text, ok in checks]
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--difficulties",
        nargs="+",
        default=list(DIFFICULTY_LEVELS),
        choices=list(DIFFICULTY_LEVELS),
        help="difficulty levels of the scenes and the simulated detector",
    )
    parser.add_argument("--seeds", type=positive_int, default=3, help="scenes per difficulty (seeds 0..N-1)")
    parser.add_argument("--num_frames", type=positive_int, default=300, help="frames per scene")
    parser.add_argument("--num_objects", type=positive_int, default=10, help="identities per scene")
    parser.add_argument(
        "--encoder",
        help="also track with this ROI encoder's embeddings (a checkpoint written by main_train.py)",
    )
    parser.add_argument(
        "--yolo_weights", help="YOLOv7 weights the encoder was trained on (default: random, seed 0)"
    )
    parser.add_argument(
        "--img_size", type=positive_int, default=320, help="YOLOv7 input size for the encoder's features"
    )
    parser.add_argument("--device", default=None, help="cpu or cuda (default: CUDA when available)")
    args = parser.parse_args(argv)
    appearance = None
    if args.encoder:
        from myutils.detection.detector import YOLOv7Detector
        from myutils.roi.appearance import ROIAppearance

        detector = YOLOv7Detector(args.yolo_weights, img_size=args.img_size, device=args.device)
        appearance = ROIAppearance(args.encoder, detector)
    table, specs = benchmark(args.difficulties, args.seeds, args.num_frames, args.num_objects, appearance)
    print_table(table, specs)
    print("\n".join(check_targets(table, specs)))


if __name__ == "__main__":
    run(main)
