"""Multi-object tracking: YOLOv7 (or a detection file) + Kalman filter + Hungarian matching + ROI appearance.

    python tracking.py                                      # demo: generated scene, prints the evaluation
    python tracking.py --frames seq/img1 --detections seq/det/det.txt --output results.txt --gt seq/gt/gt.txt
    python tracking.py --video in.mp4 --yolo_weights yolov7.pt --encoder roi_encoder.pth --save_video out.mp4
    python tracking.py --detections det.txt --output results.txt    # motion only, no images at all
    python tracking.py --frames seq --detections seq/det/det.txt --interpolate gaussian --output results.txt

Detections come from YOLOv7 on the frames (any weights form: ``yolov7.pt``, ``yolov7_training.pt``,
fused; ``--classes``, ``--agnostic_nms``, ``--max_det``, ``--batch_size`` frames per forward pass,
``--half`` on CUDA) or from a MOTChallenge file (``frame, -1, left, top, w, h, conf, ...``, frames
from 1). Association never links boxes of different classes. With ``--encoder`` each box gets the
ROI encoder's embedding of the SPPCSPC map of the same YOLOv7 forward pass (or of a backbone-only
pass for file detections). With frames, camera motion is estimated from them (``--cmc``) and
compensated in the Kalman states. Time-based tracker settings use the sequence's frame rate
(``--fps``, else ``seqinfo.ini``, else the video's). Results are written in MOTChallenge format
(``frame, id, left, top, w, h, conf, -1, -1, -1``), optionally with short gaps interpolated
(``--interpolate``), and evaluated with HOTA, MOTA and IDF1 as TrackEval computes them (``--gt``).
The same job as a function: :func:`track`.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import defaultdict, deque
from collections.abc import Iterator
from dataclasses import dataclass, fields
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from myutils.cli import (
    InputError,
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
    run,
    unit_float,
)
from myutils.detection.detector import nonempty_boxes
from myutils.detection.frame_source import FrameSource, in_batches
from myutils.roi.appearance import ROIAppearance
from myutils.tracking.boxes import tlwh_to_xyxy
from myutils.tracking.camera_motion import CMC_METHODS, CameraMotion
from myutils.tracking.frame_rate import sequence_fps
from myutils.tracking.interpolation import INTERPOLATION_METHODS, interpolate_tracks
from myutils.tracking.mot_io import read_mot, rows_by_frame, write_mot
from myutils.tracking.mot_metrics import BENCHMARKS, MOTSummary, evaluate_mot, format_summary
from myutils.tracking.tracker import TrackedObject, Tracker, TrackerConfig, results_to_mot_rows

DEMO_DIR = Path("demo_runs/tracking")
TRAIL_LENGTH = 20


@dataclass
class TrackingRun:
    rows: np.ndarray  # MOT result rows [N, 10] (after --interpolate)
    num_frames: int
    association_fps: float  # tracker.update calls only (no detector, no encoder, no camera motion)
    fps: float  # the sequence's frame rate
    summary: MOTSummary | None = None


def frame_numbers_and_images(source: FrameSource | None, last_detection_frame: int) -> Iterator[tuple]:
    """``(frame number, RGB image or None)`` for every frame from 1 to the last one, so the tracker
    steps once per frame even where an image is unreadable or there are no images at all."""
    if source is None:
        yield from (
            (number, None)
            for number in tqdm(range(1, last_detection_frame + 1), unit="frame", desc="tracking")
        )
        return
    expected = 1
    for frame in tqdm(source, total=len(source), unit="frame", desc="tracking"):
        for missing in range(expected, frame.number):  # skipped (unreadable) images
            yield missing, None
        yield frame.number, frame.image
        expected = frame.number + 1
    if source.skipped:
        print(f"skipped {source.skipped} unreadable image(s) in {source.path}")


def draw_tracks(image: np.ndarray, objects: list[TrackedObject], trails: dict[int, deque]) -> np.ndarray:
    """Boxes, ids and short trails of the track centres, in a colour per id (BGR image for OpenCV)."""
    canvas = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    for obj in objects:
        hue = (obj.track_id * 37) % 180
        colour = tuple(int(c) for c in cv2.cvtColor(np.uint8([[[hue, 220, 255]]]), cv2.COLOR_HSV2BGR)[0, 0])
        x0, y0, x1, y1 = (int(round(v)) for v in obj.box_xyxy)
        trail = trails[obj.track_id]
        trail.append(((x0 + x1) // 2, (y0 + y1) // 2))
        cv2.rectangle(canvas, (x0, y0), (x1, y1), colour, 2)
        cv2.putText(
            canvas, str(obj.track_id), (x0, max(y0 - 4, 12)), cv2.FONT_HERSHEY_SIMPLEX, 0.6, colour, 2
        )
        cv2.polylines(canvas, [np.array(trail, np.int32)], False, colour, 2)
    return canvas


class Display:
    """``--show``: a window where a display exists; otherwise a single notice and nothing more."""

    def __init__(self, enabled: bool):
        has_display = sys.platform in ("win32", "darwin") or any(
            os.environ.get(name) for name in ("DISPLAY", "WAYLAND_DISPLAY")
        )
        if enabled and not has_display:
            print("--show: no display found, not opening a window")
        self.enabled = enabled and has_display

    def show(self, canvas: np.ndarray) -> None:
        if not self.enabled:
            return
        try:
            cv2.imshow("tracking", canvas)
            cv2.waitKey(1)
        except cv2.error:  # OpenCV built without GUI support (opencv-python-headless)
            print("--show: this OpenCV build has no GUI support, not opening a window")
            self.enabled = False


def track(
    frames: str | None = None,
    video: str | None = None,
    detections: str | None = None,
    yolo_weights: str | None = None,
    conf: float = 0.25,
    iou: float = 0.45,
    img_size: int = 640,
    encoder: str | None = None,
    no_appearance: bool = False,
    output: str | None = None,
    save_video: str | None = None,
    show: bool = False,
    gt: str | None = None,
    device: str | None = None,
    config: TrackerConfig | None = None,
    fps: float | None = None,
    cmc: str = "sparse_flow",
    interpolate: str = "none",
    interpolate_max_gap: float = 0.7,
    interpolate_sigma: float = 0.1,
    benchmark: str = "MOT17",
    classes: list[int] | None = None,
    agnostic_nms: bool = False,
    max_det: int = 300,
    batch_size: int = 1,
    half: bool = False,
) -> TrackingRun:
    """Track one sequence; the CLI's job as a function. Returns the result rows (and the evaluation with ``gt``)."""
    if frames and video:
        raise InputError("give --frames or --video, not both")
    source = frames or video
    if source is None and detections is None:
        raise InputError("nothing to track: give --frames, --video or --detections")
    use_appearance = encoder is not None and not no_appearance
    if use_appearance and source is None:
        raise InputError("--encoder needs the images (--frames or --video) to compute ROI embeddings")
    if save_video and source is None:
        raise InputError("--save_video needs the images (--frames or --video)")
    if cmc not in CMC_METHODS:
        raise InputError(f"--cmc must be one of {CMC_METHODS}, got {cmc!r}")
    if classes is not None and detections is not None:
        raise InputError("--classes filters YOLOv7's detections; a MOT detection file has no class column")
    file_detections = rows_by_frame(read_mot(detections)) if detections else None
    frame_source = FrameSource(source) if source else None  # a bad path is reported before weights are read
    fps, fps_origin = sequence_fps(fps, frames, video, detections)
    print(f"frame rate {fps:g} frames/s ({fps_origin})")
    detector = None
    if detections is None or use_appearance:
        from myutils.detection.detector import YOLOv7Detector

        detector = YOLOv7Detector(
            yolo_weights, img_size=img_size, conf_threshold=conf, iou_threshold=iou, device=device,
            classes=classes, agnostic=agnostic_nms, max_detections=max_det, half=half,
        )
    appearance = ROIAppearance(encoder, detector) if use_appearance else None

    tracker = Tracker(config, fps)
    camera = CameraMotion(cmc) if cmc != "none" and frame_source is not None else None
    display = Display(show)
    trails: dict[int, deque] = defaultdict(lambda: deque(maxlen=TRAIL_LENGTH))
    writer = None
    results, association_seconds, num_frames = [], 0.0, 0
    last_detection_frame = max(file_detections, default=0) if file_detections else 0
    numbered_frames = frame_numbers_and_images(frame_source, last_detection_frame)
    yolo_boxes = file_detections is None
    for number, image, detected in detect_in_batches(numbered_frames, detector, batch_size, yolo_boxes):
        # class_ids: YOLOv7's class per box (-1 for file detections); association stays within a class
        boxes, scores, class_ids, embeddings = frame_detections(number, detected, file_detections, appearance)
        warp = camera.estimate(image, boxes) if camera is not None and image is not None else None
        start = time.perf_counter()
        objects = tracker.update(boxes, scores, embeddings, class_ids=class_ids, camera_warp=warp)
        association_seconds += time.perf_counter() - start
        results.append(results_to_mot_rows(number, objects))
        num_frames += 1
        if image is not None and (save_video or display.enabled):
            canvas = draw_tracks(image, objects, trails)
            if save_video:
                writer = writer or open_video_writer(save_video, canvas.shape[1], canvas.shape[0], fps)
                writer.write(canvas)
            display.show(canvas)
    if writer is not None:
        writer.release()
    rows = np.concatenate(results) if results else np.zeros((0, 10))
    max_gap = int(round(interpolate_max_gap * fps))
    rows = interpolate_tracks(rows, max_gap, interpolate, sigma=max(interpolate_sigma * fps, 1e-3))
    if output:
        write_mot(output, rows)
    run = TrackingRun(rows, num_frames, num_frames / max(association_seconds, 1e-9), fps)
    if gt:
        run.summary = evaluate_mot(read_mot(gt), rows, benchmark=benchmark)
    return run


def detect_in_batches(frames: Iterator[tuple], detector, batch_size: int, yolo_boxes: bool) -> Iterator[tuple]:
    """``(frame number, image, detector output or None)`` in frame order, one forward pass per batch of
    readable images: :class:`Detections` when YOLOv7 gives the boxes, otherwise (boxes from a file,
    appearance wanted) the backbone's :class:`BackboneFeatures`; ``None`` without a detector."""
    for batch in in_batches(frames, batch_size):
        images = [image for _, image in batch if image is not None]
        outputs = iter([])
        if detector is not None and images:
            outputs = iter(detector(images) if yolo_boxes else detector.backbone_features(images))
        for number, image in batch:
            yield number, image, next(outputs) if detector is not None and image is not None else None


def frame_detections(number: int, detected, file_detections: dict | None, appearance: ROIAppearance | None):
    """Boxes (xyxy), scores, class ids and embeddings (or ``None``) of one frame, from the file or YOLOv7.

    ``detected`` is this frame's output of :func:`detect_in_batches` (``None``: no image).
    """
    if file_detections is not None:
        rows = file_detections.get(number, np.zeros((0, 10)))
        boxes, scores = drop_empty_boxes(tlwh_to_xyxy(rows[:, 2:6]), rows[:, 6])
        class_ids = np.full(len(boxes), -1, dtype=np.int64)  # detection files carry no class
        if appearance is None or detected is None:
            return boxes, scores, class_ids, None
        return boxes, scores, class_ids, appearance.embed(detected.features, detected.letterbox, boxes)
    if detected is None:  # an unreadable image and no detection file: nothing detected
        return np.zeros((0, 4)), np.zeros(0), np.zeros(0, dtype=np.int64), None
    boxes, scores, class_ids = drop_empty_boxes(
        detected.boxes.cpu().double().numpy(), detected.scores.cpu().double().numpy(), detected.classes.cpu().numpy()
    )
    if appearance is None:
        return boxes, scores, class_ids, None
    return boxes, scores, class_ids, appearance.embed(detected.features, detected.letterbox, boxes)


def drop_empty_boxes(boxes: np.ndarray, *columns: np.ndarray) -> tuple[np.ndarray, ...]:
    """Zero-size boxes (seen in detection files and clipped detections) carry no object: drop their rows."""
    valid = nonempty_boxes(boxes)
    return (boxes[valid], *(column[valid] for column in columns))


def open_video_writer(path: str, width: int, height: int, fps: float) -> cv2.VideoWriter:
    """An .mp4 writer at the input's frame rate (the output plays at the speed of the input)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), float(fps), (width, height))
    if not writer.isOpened():
        raise InputError(f"cannot write video {path} (no mp4v encoder in this OpenCV build?)")
    return writer


def prepare_demo(out_dir: Path, difficulty: str = "medium", seed: int = 0) -> Path:
    """A generated scene as a MOT sequence (frames, gt) plus simulated detections in ``det/det.txt``."""
    from myutils.synthetic.scenes import generate_scene, write_mot_sequence
    from myutils.synthetic.simulated_detector import simulate_detections

    scene = generate_scene(num_frames=300, num_objects=8, seed=seed, difficulty=difficulty)
    sequence = write_mot_sequence(scene, out_dir / "sequence")
    detected = simulate_detections(scene.ground_truth, scene.width, scene.height, difficulty, seed)
    write_mot(sequence / "det" / "det.txt", detected.rows)
    return sequence


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    inputs = parser.add_argument_group("input (none of them: the generated demo scene)")
    inputs.add_argument("--video", help="video file to track")
    inputs.add_argument("--frames", help="folder of images named by frame number (or a MOT sequence folder)")
    inputs.add_argument(
        "--detections",
        help="MOTChallenge detection file (frame, -1, left, top, w, h, conf, ...); "
        "without it YOLOv7 detects on the frames",
    )
    detector = parser.add_argument_group("YOLOv7 detector and appearance")
    detector.add_argument(
        "--yolo_weights",
        help="local YOLOv7 checkpoint (official yolov7.pt or a state dict); "
        "none: a random network (only meaningful for tests)",
    )
    detector.add_argument(
        "--conf",
        type=unit_float,
        default=0.25,
        help="detection confidence threshold (default 0.25; at or below --low_score, occluded objects "
        "reach the tracker's low-score round)",
    )
    detector.add_argument("--iou", type=unit_float, default=0.45, help="NMS IoU threshold (default 0.45)")
    detector.add_argument(
        "--img_size",
        type=positive_int,
        default=640,
        help="letterboxed square input size, a multiple of 32 (default 640)",
    )
    detector.add_argument(
        "--classes", type=non_negative_int, nargs="+", default=None,
        help="keep only these YOLOv7 class ids (e.g. --classes 0 2; default: all)",
    )
    detector.add_argument(
        "--agnostic_nms", action="store_true", help="NMS across classes (default: per class, as official)"
    )
    detector.add_argument(
        "--max_det", type=positive_int, default=300, help="most detections kept per frame (default 300)"
    )
    detector.add_argument(
        "--batch_size", type=positive_int, default=1,
        help="frames per YOLOv7 forward pass (default 1: frame by frame; more for throughput on a GPU)",
    )
    detector.add_argument("--half", action="store_true", help="fp16 inference (CUDA only)")
    detector.add_argument(
        "--encoder", help="ROI encoder checkpoint written by main_train.py (appearance embeddings)"
    )
    detector.add_argument(
        "--no_appearance", action="store_true", help="motion only, even if --encoder is given"
    )
    detector.add_argument(
        "--device", default=None, help="cpu, cuda, cuda:1 ... (default: CUDA when available)"
    )
    outputs = parser.add_argument_group("output")
    outputs.add_argument(
        "--output", help="results in MOTChallenge format (demo default: demo_runs/tracking/results.txt)"
    )
    outputs.add_argument("--save_video", help="write an .mp4 with boxes, ids and trails")
    outputs.add_argument(
        "--show", action="store_true", help="show the frames in a window (only where a display exists)"
    )
    outputs.add_argument(
        "--gt",
        help="MOTChallenge ground truth: print HOTA (DetA, AssA, LocA), MOTA, IDF1, ID switches, FP, "
        "misses, MT/ML as TrackEval computes them",
    )
    outputs.add_argument(
        "--benchmark",
        choices=BENCHMARKS,
        default="MOT17",
        help="ground-truth classes as this benchmark defines them (distractors; default MOT17, also MOT16)",
    )
    outputs.add_argument(
        "--interpolate",
        choices=INTERPOLATION_METHODS,
        default="none",
        help="offline post-process of the results: fill gaps of a track linearly, or linearly and then "
        "Gaussian-smoothed (default none: the online results)",
    )
    outputs.add_argument(
        "--interpolate_max_gap",
        type=non_negative_float,
        default=0.7,
        help="longest gap to fill, in seconds (default 0.7, about 20 frames at 30 frames/s)",
    )
    outputs.add_argument(
        "--interpolate_sigma",
        type=positive_float,
        default=0.1,
        help="width of the Gaussian smoothing in seconds (default 0.1)",
    )
    sequence = parser.add_argument_group("sequence")
    sequence.add_argument(
        "--fps",
        type=positive_float,
        default=None,
        help="frame rate for the time-based tracker settings and --save_video "
        "(default: seqinfo.ini's frameRate, else the video's, else 30)",
    )
    sequence.add_argument(
        "--cmc",
        choices=CMC_METHODS,
        default="sparse_flow",
        help="camera-motion compensation from the frames: sparse optical flow (default), ECC, or none; "
        "only where images are given",
    )
    add_tracker_arguments(parser.add_argument_group("tracker thresholds"))
    return parser


def add_tracker_arguments(group) -> None:
    """One flag per :class:`TrackerConfig` field, with its help and default (booleans as --x / --no-x)."""
    defaults = TrackerConfig()
    for name, text in TrackerConfig.field_help().items():
        default = getattr(defaults, name)
        if isinstance(default, bool):
            group.add_argument(
                f"--{name}", action=argparse.BooleanOptionalAction, default=default, help=f"{text} (default {default})"
            )
        else:
            group.add_argument(f"--{name}", type=type(default), default=default, help=f"{text} (default {default})")


def main(argv: list[str] | None = None) -> TrackingRun:
    args = build_parser().parse_args(argv)
    config = TrackerConfig(**{f.name: getattr(args, f.name) for f in fields(TrackerConfig)})
    if args.video is None and args.frames is None and args.detections is None:
        print(f"no input given: tracking the generated demo scene in {DEMO_DIR}/")
        sequence = prepare_demo(DEMO_DIR)
        args.frames, args.detections = str(sequence / "img1"), str(sequence / "det" / "det.txt")
        args.gt = str(sequence / "gt" / "gt.txt")
        args.output = args.output or str(DEMO_DIR / "results.txt")
        args.save_video = args.save_video or str(DEMO_DIR / "tracking.mp4")
    run = track(
        frames=args.frames,
        video=args.video,
        detections=args.detections,
        yolo_weights=args.yolo_weights,
        conf=args.conf,
        iou=args.iou,
        img_size=args.img_size,
        encoder=args.encoder,
        no_appearance=args.no_appearance,
        output=args.output,
        save_video=args.save_video,
        show=args.show,
        gt=args.gt,
        device=args.device,
        config=config,
        fps=args.fps,
        cmc=args.cmc,
        interpolate=args.interpolate,
        interpolate_max_gap=args.interpolate_max_gap,
        interpolate_sigma=args.interpolate_sigma,
        benchmark=args.benchmark,
        classes=args.classes,
        agnostic_nms=args.agnostic_nms,
        max_det=args.max_det,
        batch_size=args.batch_size,
        half=args.half,
    )
    print(
        f"tracked {run.num_frames} frames, {len(np.unique(run.rows[:, 1]))} identities, "
        f"association {run.association_fps:.0f} frames/s"
    )
    for path in (args.output, args.save_video):
        if path:
            print(f"wrote {path}")
    if run.summary is not None:
        print(format_summary({"tracker": run.summary}))
    return run


if __name__ == "__main__":
    run(main)
