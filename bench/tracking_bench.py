"""Tracker quality and association speed against deep-sort-realtime and ByteTrack (supervision 0.30).

Every tracker gets exactly the same detections: generated scenes (myutils.synthetic_scenes)
degraded by the simulated detector (box jitter, random misses, occlusion runs, low-score
occluded objects, lower-score false positives) at three difficulty levels. Appearance-based
trackers get the same embeddings: SIMULATED ones (an identity vector plus noise that grows
with occlusion; random vectors for false positives), not a trained encoder. Frames/s count the
tracker's update calls only (no detector, no encoder, no evaluation).

    python bench/tracking_bench.py                 # 3 difficulties x 3 seeds x 300 frames
    python bench/tracking_bench.py --seeds 1 --num_frames 150

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

from myutils.boxes import tlwh_to_xyxy, xyxy_to_tlwh  # noqa: E402
from myutils.mot_metrics import MOTSummary, combine_summaries, evaluate_mot  # noqa: E402
from myutils.simulated_detector import DIFFICULTY_LEVELS, simulate_detections, simulate_embeddings  # noqa: E402
from myutils.synthetic_scenes import generate_scene  # noqa: E402
from myutils.tracker import Tracker, TrackerConfig, results_to_mot_rows  # noqa: E402


def frames_of(rows: np.ndarray, embeddings: np.ndarray, num_frames: int) -> list[tuple]:
    """Per frame: xyxy boxes, scores, embeddings (prepared outside the timed loops)."""
    frames = rows[:, 0].astype(int)
    return [
        (tlwh_to_xyxy(rows[frames == f, 2:6]), rows[frames == f, 6], embeddings[frames == f])
        for f in range(1, num_frames + 1)
    ]


def run_ours(frames: list[tuple], use_appearance: bool) -> tuple[np.ndarray, float]:
    tracker = Tracker(TrackerConfig())
    outputs, seconds = [], 0.0
    for boxes, scores, embeddings in frames:
        start = time.perf_counter()
        objects = tracker.update(boxes, scores, embeddings if use_appearance else None)
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
    frames: list[tuple], min_confidence: float, max_cosine_distance: float
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
        tracks = tracker.update_tracks(detections, embeds=list(embeddings[keep]))
        seconds += time.perf_counter() - start
        for track in tracks:
            if track.is_confirmed() and track.time_since_update == 0:
                score = track.get_det_conf() or 0.0
                rows.append(
                    [frame, int(track.track_id), *xyxy_to_tlwh(track.to_ltrb())[0], score, -1, -1, -1]
                )
    return np.asarray(rows, dtype=np.float64).reshape(-1, 10), seconds


TRACKERS = {
    # name: (appearance used, runner)
    "ours (motion only)": (False, lambda frames: run_ours(frames, use_appearance=False)),
    "ours (appearance)": (True, lambda frames: run_ours(frames, use_appearance=True)),
    "ByteTrack sv 0.30 (0.25)": (False, lambda frames: run_bytetrack(frames, activation_threshold=0.25)),
    "ByteTrack sv 0.30 (0.5)": (False, lambda frames: run_bytetrack(frames, activation_threshold=0.5)),
    "DeepSORT-rt (cos 0.2)": (True, lambda frames: run_deepsort(frames, 0.3, 0.2)),
    "DeepSORT-rt (cos 0.35)": (True, lambda frames: run_deepsort(frames, 0.3, 0.35)),
}


def benchmark(difficulties: list[str], seeds: int, num_frames: int, num_objects: int) -> dict:
    """``{difficulty: {tracker: (combined MOTSummary, frames/s)}}``."""
    table = {}
    for difficulty in difficulties:
        summaries: dict[str, list[MOTSummary]] = {name: [] for name in TRACKERS}
        seconds = dict.fromkeys(TRACKERS, 0.0)
        for seed in range(seeds):
            scene = generate_scene(
                num_frames=num_frames, num_objects=num_objects, seed=seed, difficulty=difficulty
            )
            detections = simulate_detections(scene.ground_truth, scene.width, scene.height, difficulty, seed)
            embeddings = simulate_embeddings(detections, difficulty, seed=seed)
            frames = frames_of(detections.rows, embeddings, num_frames)
            for name, (_, runner) in TRACKERS.items():
                rows, elapsed = runner(frames)
                summaries[name].append(evaluate_mot(scene.ground_truth, rows))
                seconds[name] += elapsed
        table[difficulty] = {
            name: (combine_summaries(summaries[name]), seeds * num_frames / seconds[name])
            for name in TRACKERS
        }
    return table


def print_table(table: dict) -> None:
    print(
        "| difficulty | tracker | appearance | MOTA | IDF1 | IDSW | FP | FN | assoc. frames/s | vs ByteTrack (0.25) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for difficulty, rows in table.items():
        reference_fps = rows["ByteTrack sv 0.30 (0.25)"][1]
        for name, (summary, fps) in rows.items():
            appearance = "simulated" if TRACKERS[name][0] else "none"
            print(
                f"| {difficulty} | {name} | {appearance} | {summary.mota:.3f} | {summary.idf1:.3f} | "
                f"{summary.num_switches} | {summary.num_false_positives} | {summary.num_misses} | {fps:.0f} | "
                f"{fps / reference_fps:.2f}x |"
            )


def check_targets(table: dict) -> list[str]:
    """One line per target and difficulty: PASS or FAIL with the numbers."""
    lines = []
    for difficulty, rows in table.items():
        ours, ours_motion = rows["ours (appearance)"][0], rows["ours (motion only)"][0]
        baselines = [name for name in rows if not name.startswith("ours")]
        best_idf1 = max(rows[name][0].idf1 for name in baselines)
        fewest_switches = min(rows[name][0].num_switches for name in baselines)
        best_byte_mota = max(rows[name][0].mota for name in baselines if name.startswith("ByteTrack"))
        fastest_byte = max(rows[name][1] for name in baselines if name.startswith("ByteTrack"))
        checks = [
            (f"IDF1 {ours.idf1:.3f} >= best baseline {best_idf1:.3f}", ours.idf1 >= best_idf1),
            (
                f"IDSW {ours.num_switches} <= fewest baseline {fewest_switches}",
                ours.num_switches <= fewest_switches,
            ),
            (
                f"motion-only MOTA {ours_motion.mota:.3f} >= ByteTrack {best_byte_mota:.3f} - 0.02",
                ours_motion.mota >= best_byte_mota - 0.02,
            ),
            (
                f"motion-only frames/s {rows['ours (motion only)'][1]:.0f} >= ByteTrack {fastest_byte:.0f}",
                rows["ours (motion only)"][1] >= fastest_byte,
            ),
        ]
        lines += [f"{'PASS' if ok else 'FAIL'} [{difficulty}] {text}" for text, ok in checks]
    return lines


def main() -> None:
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
    parser.add_argument("--seeds", type=int, default=3, help="scenes per difficulty (seeds 0..N-1)")
    parser.add_argument("--num_frames", type=int, default=300, help="frames per scene")
    parser.add_argument("--num_objects", type=int, default=10, help="identities per scene")
    args = parser.parse_args()
    table = benchmark(args.difficulties, args.seeds, args.num_frames, args.num_objects)
    print_table(table)
    print("\n".join(check_targets(table)))


if __name__ == "__main__":
    main()
