"""Cross-frame association validation of the ROI encoder (the seed's val.py, with its metrics).

For every pair ``{now,pre}/pic/<k>.jpg`` + ``{now,pre}/lable/<k>.json`` (or ``label/``), each
labelled box of both frames is embedded (YOLOv7 backbone to SPPCSPC, ROI align, encoder),
``S = e_now @ e_preᵀ``, ``P = softmax(S / 0.2)``, and every "now" object whose id is also in
"pre" ranks the "pre" objects. Reports Top-1, Mean Rank, MRR, Recall@5, Recall@10, Num. Queries
and Num. Valid per pair and averaged over pairs, as a table and (``--output``) JSON.

    python val.py                                   # the demo's validation set and checkpoint
    python val.py --data VAL_DIR --checkpoint runs/roi_encoder/checkpoints/last.pth --output val.json
    python val.py --untrained                       # the same with a randomly initialised encoder
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from myutils.cli import InputError, non_negative_int, positive_float, positive_int, run
from myutils.data.image_io import read_image_rgb
from myutils.detection.detector import YOLOv7Detector
from myutils.roi.appearance import ROIAppearance
from myutils.roi.association_metrics import association_metrics, average_over_pairs, match_probabilities
from myutils.roi.encoder import ROIEncoder
from myutils.roi.validation_pairs import cxcywh_to_xyxy_pixels, list_validation_pairs, read_frame_labels
from myutils.training.checkpoint import load_checkpoint
from myutils.training.log import write_json_atomic

DEFAULT_DATA = "demo_runs/roi/val"
DEFAULT_CHECKPOINT = "demo_runs/roi/train/checkpoints/last.pth"
COLUMNS = (("Top-1", "top1"), ("Mean Rank", "mean_rank"), ("MRR", "mrr"), ("Recall@5", "recall@5"),
           ("Recall@10", "recall@10"), ("Num. Queries", "num_queries"), ("Num. Valid", "num_valid"))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=DEFAULT_DATA, help=f"validation folder with now/ and pre/ (default {DEFAULT_DATA})")
    parser.add_argument("--checkpoint", default=DEFAULT_CHECKPOINT,
                        help=f"encoder checkpoint written by main_train.py (default {DEFAULT_CHECKPOINT})")
    parser.add_argument("--untrained", action="store_true",
                        help="use a randomly initialised encoder (seed --seed) instead of --checkpoint")
    parser.add_argument("--yolo_weights", default=None,
                        help="local YOLOv7 weights; default: those the training features were extracted with")
    parser.add_argument("--img_size", type=positive_int, default=None,
                        help="letterbox size; default: the training features' (else 640)")
    parser.add_argument("--temperature", type=positive_float, default=0.2, help="softmax temperature of P (default 0.2)")
    parser.add_argument("--output", default=None, help="write the per-pair and mean metrics to this JSON file")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--seed", type=non_negative_int, default=0,
                        help="seed of the untrained encoder and of a random YOLOv7 without recorded settings")
    return parser.parse_args(argv)


def feature_settings(args: argparse.Namespace) -> dict:
    """Backbone settings: explicit flags win, then what the checkpoint's training features used."""
    recorded = {}
    # an untrained baseline still uses the trained run's features when its checkpoint is there
    if not args.untrained or Path(args.checkpoint).is_file():
        recorded = load_checkpoint(args.checkpoint).get("feature_metadata") or {}
    return {
        "yolo_weights": args.yolo_weights or recorded.get("yolo_weights"),
        "img_size": args.img_size or recorded.get("img_size") or 640,
        "seed": recorded.get("random_weights_seed") if recorded.get("random_weights_seed") is not None else args.seed,
    }


def embed_labelled_boxes(appearance: ROIAppearance, image_path: Path, label_path: Path):
    """Ids and unit embeddings of the labelled boxes of one frame."""
    image = read_image_rgb(image_path)
    if image is None:
        raise InputError(f"cannot read image {image_path}")
    labels = read_frame_labels(label_path)
    height, width = image.shape[:2]
    boxes = cxcywh_to_xyxy_pixels(labels.boxes_cxcywh, width, height)
    return labels.ids, torch.from_numpy(appearance.embed_image(image, np.asarray(boxes, dtype=np.float32)))


def format_table(per_pair: list[dict], mean: dict) -> str:
    header = f"{'pair':>6} " + " ".join(f"{name:>12}" for name, _ in COLUMNS)
    lines = [header, "-" * len(header)]
    for name, metrics in [*((p["pair"], p) for p in per_pair), ("mean", mean)]:
        cells = []
        for _, key in COLUMNS:
            value = metrics[key]
            cells.append(f"{'n/a':>12}" if math.isnan(value) else f"{value:>12.4f}")
        lines.append(f"{name:>6} " + " ".join(cells))
    return "\n".join(lines)


def validate(args: argparse.Namespace) -> dict:
    """Evaluate every pair; returns ``{"pairs": [...], "mean": {...}, "settings": {...}}``."""
    pairs = list_validation_pairs(args.data)
    settings = feature_settings(args)
    detector = YOLOv7Detector(settings["yolo_weights"], settings["img_size"], device=args.device, seed=settings["seed"])
    if args.untrained:
        torch.manual_seed(args.seed)
        appearance = ROIAppearance(ROIEncoder(), detector)
    else:
        appearance = ROIAppearance(args.checkpoint, detector)
    per_pair = []
    for pair in tqdm(pairs, desc="validation pairs", unit="pair"):
        now_ids, now_embeddings = embed_labelled_boxes(appearance, pair.now_image, pair.now_label)
        pre_ids, pre_embeddings = embed_labelled_boxes(appearance, pair.pre_image, pair.pre_label)
        probabilities = match_probabilities(now_embeddings @ pre_embeddings.T, args.temperature)
        per_pair.append({"pair": pair.key, **association_metrics(probabilities, now_ids, pre_ids)})
    mean = average_over_pairs([{k: v for k, v in p.items() if k != "pair"} for p in per_pair])
    encoder_name = "untrained" if args.untrained else str(args.checkpoint)
    return {"pairs": per_pair, "mean": mean, "settings": {**settings, "encoder": encoder_name, "data": str(args.data)}}


def _json_safe(value):
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    result = validate(args)
    print(format_table(result["pairs"], result["mean"]))
    if args.output:
        write_json_atomic(_json_safe(result), args.output)
        print(f"metrics written to {args.output}")
    return result


if __name__ == "__main__":
    run(main)
