"""Map a face-feature file toward frontal with a trained SENet (or baseline) checkpoint.

    python scripts/map_face_features.py --model checkpoints_senet/best_model.pth \
        --features train/datas/file/video_feature.npy --metadata train/datas/file/video_metadata.json \
        --output mapped.npy

Reads ``[N, D]`` features and the ``poses`` ([yaw, pitch, roll] in degrees, one row per feature) of the
metadata file, maps them in batches (on CUDA when present) and writes ``[N, D]`` float32 L2-normalised
mapped features, row for row; rows with NaN/Inf are skipped, counted and left NaN. Also a function:
``map_feature_file`` in ``myutils/face/inference.py``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from myutils.cli import positive_int, run  # noqa: E402
from myutils.face.inference import map_feature_file  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--model", required=True, help="checkpoint written by train_senet_triplet.py (best_model.pth)")
    parser.add_argument("--features", required=True, help="[N, D] .npy feature file")
    parser.add_argument("--metadata", required=True, help="JSON with 'poses': N rows of [yaw, pitch, roll] in degrees")
    parser.add_argument("--output", required=True, help="output .npy of mapped, L2-normalised features")
    parser.add_argument("--batch_size", type=positive_int, default=4096, help="rows per forward pass")
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda or cuda:N")
    parser.add_argument("--use_amp", action="store_true", help="mixed precision (bf16/fp16 on CUDA, bf16 on CPU)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    summary = map_feature_file(args.model, args.features, args.metadata, args.output, args.batch_size,
                               args.device, args.use_amp)
    print(f"Mapped {summary['num_mapped']} of {summary['num_rows']} rows ({summary['feature_dim']}-d, "
          f"{summary['architecture']}, {summary['device']}, {summary['seconds']:.2f} s) → {summary['output']}"
          + (f"; skipped {summary['num_skipped']} rows with NaN/Inf (left NaN)" if summary["num_skipped"] else ""))
    return 0


if __name__ == "__main__":
    run(main)
