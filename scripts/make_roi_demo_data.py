"""Generate the ROI demo's data: training scenes in MOTChallenge layout and a held-out validation set.

    python scripts/make_roi_demo_data.py --out demo_runs/roi

writes ``OUT/scenes/SYN-01 ...`` (img1/, gt/gt.txt, seqinfo.ini) and ``OUT/val`` in the seed's
layout (``{now,pre}/pic/<k>.jpg``, ``{now,pre}/lable/<k>.json``) from a scene with other seeds.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere
from myutils.cli import non_negative_int, positive_int, run  # noqa: E402
from myutils.synthetic.scenes import generate_scene, write_mot_sequence, write_validation_pairs  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="output folder (scenes/ and val/ are created in it)")
    parser.add_argument("--train_scenes", type=positive_int, default=2, help="training sequences (default 2)")
    parser.add_argument("--frames", type=positive_int, default=150, help="frames per sequence (default 150)")
    parser.add_argument("--objects", type=positive_int, default=8, help="identities per sequence (default 8)")
    parser.add_argument("--val_pairs", type=positive_int, default=15, help="validation pairs, as in the seed (default 15)")
    parser.add_argument("--frame_gap", type=positive_int, default=10, help="frames between 'pre' and 'now' (default 10)")
    parser.add_argument("--difficulty", choices=("easy", "medium", "hard"), default="medium",
                        help="motion speed, noise and scale change (default medium)")
    parser.add_argument("--seed", type=non_negative_int, default=0, help="first scene seed (default 0)")
    return parser.parse_args(argv)


def make_roi_demo_data(args: argparse.Namespace) -> dict[str, list[str] | str]:
    out = Path(args.out)
    sequences = []
    for index in tqdm(range(args.train_scenes), desc="training scenes"):
        scene = generate_scene(args.frames, args.objects, seed=args.seed + index, difficulty=args.difficulty)
        sequences.append(str(write_mot_sequence(scene, out / "scenes" / f"SYN-{index + 1:02d}")))
    held_out = generate_scene(args.frames, args.objects, seed=args.seed + 1000, difficulty=args.difficulty)
    val_dir = write_validation_pairs(held_out, out / "val", args.val_pairs, args.frame_gap)
    return {"sequences": sequences, "val": str(val_dir)}


def main(argv: list[str] | None = None) -> None:
    written = make_roi_demo_data(parse_args(argv))
    print(f"training sequences: {' '.join(written['sequences'])}\nvalidation pairs: {written['val']}")


if __name__ == "__main__":
    run(main)
