"""Evaluate MOTChallenge tracker results against ground truth: MOTA, IDF1, MOTP, ID switches, FP, misses.

    python scripts/evaluate_mot.py --gt seq/gt/gt.txt --results results.txt
    python scripts/evaluate_mot.py --gt_dir MOT17/train --results_dir my_results/   # <seq>/gt/gt.txt vs <seq>.txt

Several sequences are also combined into one row (counts summed, as MOTChallenge does).
The same job as a function: :func:`evaluate_files`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from myutils.cli import run, unit_float  # noqa: E402
from myutils.tracking.mot_io import read_mot  # noqa: E402
from myutils.tracking.mot_metrics import MOTSummary, combine_summaries, evaluate_mot, format_summary  # noqa: E402
from myutils.training.log import write_json_atomic  # noqa: E402


def sequence_pairs(gt_dir: Path, results_dir: Path) -> dict[str, tuple[Path, Path]]:
    """``{sequence: (gt file, results file)}`` for every ``gt_dir/<seq>/gt/gt.txt``; a missing result is an error."""
    pairs = {}
    for gt_file in sorted(gt_dir.glob("*/gt/gt.txt")):
        name = gt_file.parent.parent.name
        result_file = results_dir / f"{name}.txt"
        if not result_file.is_file():
            raise FileNotFoundError(f"no results for sequence {name}: expected {result_file}")
        pairs[name] = (gt_file, result_file)
    if not pairs:
        raise FileNotFoundError(f"no <sequence>/gt/gt.txt under {gt_dir}")
    return pairs


def evaluate_files(
    pairs: dict[str, tuple[Path, Path]], iou_threshold: float = 0.5, min_visibility: float = 0.0
) -> dict[str, MOTSummary]:
    """One summary per sequence, plus ``"COMBINED"`` when there are several."""
    summaries = {
        name: evaluate_mot(read_mot(gt), read_mot(results), iou_threshold, min_visibility)
        for name, (gt, results) in pairs.items()
    }
    if len(summaries) > 1:
        summaries["COMBINED"] = combine_summaries(list(summaries.values()))
    return summaries


def main(argv: list[str] | None = None) -> dict[str, MOTSummary]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--gt", type=Path, help="ground-truth file of one sequence")
    parser.add_argument("--results", type=Path, help="tracker results of that sequence")
    parser.add_argument("--gt_dir", type=Path, help="folder of MOT sequences, each with gt/gt.txt")
    parser.add_argument("--results_dir", type=Path, help="folder with one <sequence>.txt per sequence")
    parser.add_argument("--iou", type=unit_float, default=0.5, help="least IoU for a box to match (default 0.5)")
    parser.add_argument(
        "--min_visibility",
        type=unit_float,
        default=0.0,
        help="leave out ground-truth boxes less visible than this (default 0: all count)",
    )
    parser.add_argument("--json", type=Path, help="also write the numbers to this JSON file")
    args = parser.parse_args(argv)
    if args.gt and args.results:
        pairs = {args.results.stem: (args.gt, args.results)}
    elif args.gt_dir and args.results_dir:
        pairs = sequence_pairs(args.gt_dir, args.results_dir)
    else:
        parser.error("give --gt with --results, or --gt_dir with --results_dir")
    summaries = evaluate_files(pairs, args.iou, args.min_visibility)
    print(format_summary(summaries))
    if args.json:
        write_json_atomic({name: summary.as_dict() for name, summary in summaries.items()}, args.json)
        print(f"wrote {args.json}")
    return summaries


if __name__ == "__main__":
    run(main)
