"""Extract ROI features ``[N, 512, 10, 10]`` from YOLOv7's SPPCSPC map into safetensors shards.

Boxes come from the detector (``--boxes detector``, score >= ``--conf_threshold``), from a
MOTChallenge ground truth (``--boxes gt``: ``seq/gt/gt.txt`` of a sequence folder, or
``--gt_file``; identity kept, rows with visibility < ``--min_visibility`` skipped), or from
seed-style JSON labels (``--boxes json --label_dir DIR`` with ``<image stem>.json``).
YOLOv7 weights in any form load (``yolov7.pt`` deploy, ``yolov7_training.pt``, fused, state dicts);
``--batch_size`` frames go through one forward pass; ``--half`` runs fp16 on CUDA.

    python scripts/extract_roi_features.py --source demo_runs/roi/scenes/SYN-01 --boxes gt \
        --img_size 320 --output demo_runs/roi/features/SYN-01
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere
from myutils.cli import InputError, non_negative_int, positive_int, run, unit_float  # noqa: E402
from myutils.detection.detector import YOLOv7Detector  # noqa: E402
from myutils.detection.frame_source import Frame, FrameSource, in_batches  # noqa: E402
from myutils.roi.features import ROI_OUTPUT_SIZE, roi_align_features  # noqa: E402
from myutils.roi.shards import RoiShardWriter  # noqa: E402
from myutils.roi.validation_pairs import cxcywh_to_xyxy_pixels, read_frame_labels  # noqa: E402
from myutils.tracking.mot_io import read_mot, rows_by_frame  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", required=True, nargs="+",
                        help="image folders, video files or MOT sequence folders (seq/img1)")
    parser.add_argument("--output", required=True, help="new folder for index.json and the shards")
    parser.add_argument("--boxes", choices=("detector", "gt", "json"), default="detector",
                        help="where boxes come from (default: detector)")
    parser.add_argument("--gt_file", default=None,
                        help="MOT gt.txt for --boxes gt with a single non-sequence source")
    parser.add_argument("--label_dir", default=None, help="folder of <image stem>.json labels for --boxes json")
    parser.add_argument("--min_visibility", type=unit_float, default=0.3,
                        help="--boxes gt: skip boxes less visible than this (default 0.3)")
    parser.add_argument("--yolo_weights", default=None,
                        help="local YOLOv7 checkpoint (yolov7.pt or a state dict); none = random weights")
    parser.add_argument("--img_size", type=positive_int, default=640, help="letterbox size, a multiple of 32 (default 640)")
    parser.add_argument("--conf_threshold", type=unit_float, default=0.3,
                        help="--boxes detector: minimum detection score (default 0.3)")
    parser.add_argument("--iou_threshold", type=unit_float, default=0.45, help="NMS IoU threshold (default 0.45)")
    parser.add_argument("--classes", type=non_negative_int, nargs="+", default=None,
                        help="--boxes detector: keep only these class ids (e.g. --classes 0 2; default: all)")
    parser.add_argument("--agnostic_nms", action="store_true", help="NMS across classes (default: per class)")
    parser.add_argument("--max_det", type=positive_int, default=300, help="most detections per image (default 300)")
    parser.add_argument("--batch_size", type=positive_int, default=8, help="images per forward pass (default 8)")
    parser.add_argument("--half", action="store_true", help="fp16 inference (CUDA only)")
    parser.add_argument("--frame_step", type=positive_int, default=1, help="use every n-th frame (default 1)")
    parser.add_argument("--shard_size", type=positive_int, default=4096, help="ROIs per shard file (default 4096)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    parser.add_argument("--seed", type=non_negative_int, default=0,
                        help="seed of the random YOLOv7 when no weights are given (default 0)")
    return parser.parse_args(argv)


class LabelBoxes:
    """Boxes (xyxy pixels), scores and ids of a frame from ground truth or JSON labels."""

    def __init__(self, mode: str, gt_file: Path | None, label_dir: Path | None, min_visibility: float):
        self.mode, self.label_dir = mode, label_dir
        self.by_frame = {}
        if mode == "gt":
            rows = read_mot(gt_file)
            rows = rows[(rows[:, 6] != 0) & ((rows[:, 8] < 0) | (rows[:, 8] >= min_visibility))]
            self.by_frame = rows_by_frame(rows)

    def __call__(self, frame: Frame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if self.mode == "gt":
            rows = self.by_frame.get(frame.number, np.zeros((0, 10)))
            boxes = np.concatenate([rows[:, 2:4], rows[:, 2:4] + rows[:, 4:6]], axis=1)
            return boxes, np.ones(len(rows)), rows[:, 1].astype(np.int64)
        label_path = self.label_dir / f"{Path(frame.name).stem}.json"
        if not label_path.is_file():
            return np.zeros((0, 4)), np.zeros(0), np.zeros(0, np.int64)
        labels = read_frame_labels(label_path)
        height, width = frame.image.shape[:2]
        return cxcywh_to_xyxy_pixels(labels.boxes_cxcywh, width, height), np.ones(len(labels.ids)), labels.ids


def _gt_file_for(source: Path, args: argparse.Namespace) -> Path:
    candidate = source / "gt" / "gt.txt"
    if candidate.is_file():
        return candidate
    if args.gt_file and len(args.source) == 1:
        return Path(args.gt_file)
    raise FileNotFoundError(f"--boxes gt: no {candidate} and no --gt_file for a single source")


def _batch_rois(frames: list[Frame], detector: YOLOv7Detector, labels: LabelBoxes | None):
    """``(frame, boxes, scores, ids, rois)`` per frame; one forward pass for the whole batch."""
    if labels is None:
        for frame, detections in zip(frames, detector([f.image for f in frames]), strict=True):
            detections = detections.nonempty()  # boxes in the letterbox padding hold no object
            ids = torch.full((len(detections.boxes),), -1)
            rois = roi_align_features(detections.features, detections.boxes, detections.letterbox)
            yield frame, detections.boxes, detections.scores, ids, rois
        return
    boxes_per_frame = [[torch.as_tensor(a) for a in labels(frame)] for frame in frames]
    labelled = [frame.image for frame, (boxes, _, _) in zip(frames, boxes_per_frame, strict=True) if len(boxes)]
    maps = iter(detector.backbone_features(labelled))  # frames without boxes need no pass
    for frame, (boxes, scores, ids) in zip(frames, boxes_per_frame, strict=True):
        if len(boxes):
            features, letterbox = next(maps)
            rois = roi_align_features(features, boxes, letterbox)
        else:
            rois = torch.zeros((0, 512, ROI_OUTPUT_SIZE, ROI_OUTPUT_SIZE))
        yield frame, boxes, scores, ids, rois


def extract_roi_features(args: argparse.Namespace) -> dict:
    """Run the extraction; returns a summary (images, ROIs, skipped images, output path)."""
    if args.boxes == "json" and not (args.label_dir and Path(args.label_dir).is_dir()):
        raise FileNotFoundError(f"--boxes json needs --label_dir pointing at a folder, got {args.label_dir!r}")
    if args.classes is not None and args.boxes != "detector":
        raise InputError(f"--classes filters detections; --boxes {args.boxes} takes every labelled box")
    sources = [FrameSource(path, args.frame_step) for path in map(Path, args.source)]  # before any weights are read
    detector = YOLOv7Detector(args.yolo_weights, args.img_size, args.conf_threshold, args.iou_threshold,
                              device=args.device, seed=args.seed, classes=args.classes, agnostic=args.agnostic_nms,
                              max_detections=args.max_det, half=args.half)
    metadata = {"yolo_weights": args.yolo_weights, "random_weights_seed": None if args.yolo_weights else args.seed,
                "img_size": args.img_size, "boxes": args.boxes, "classes": detector.classes,
                "roi_output_size": ROI_OUTPUT_SIZE,
                "spatial_scale": 1 / 32, "sampling_ratio": 2, "aligned": True}
    writer = RoiShardWriter(args.output, args.shard_size, metadata)
    summary = {"images": 0, "rois": 0, "skipped_images": 0, "output": str(args.output)}
    for source_path, source in zip(map(Path, args.source), sources, strict=True):
        labels = None
        if args.boxes != "detector":
            gt_file = _gt_file_for(source_path, args) if args.boxes == "gt" else None
            labels = LabelBoxes(args.boxes, gt_file, Path(args.label_dir) if args.label_dir else None,
                                args.min_visibility)
        progress = tqdm(total=len(source), desc=f"ROI features {source_path.name}", unit="img")
        for frames in in_batches(source, args.batch_size):
            for frame, boxes, scores, ids, rois in _batch_rois(frames, detector, labels):
                writer.add(frame.name, rois, boxes.float(), scores.float(), ids)
                summary["images"] += 1
                summary["rois"] += len(boxes)
            progress.update(len(frames))
        progress.close()
        summary["skipped_images"] += source.skipped
    writer.close()
    return summary


def main(argv: list[str] | None = None) -> None:
    summary = extract_roi_features(parse_args(argv))
    print(f"wrote {summary['rois']} ROIs from {summary['images']} images to {summary['output']}"
          f" ({summary['skipped_images']} unreadable images skipped)")


if __name__ == "__main__":
    run(main)
