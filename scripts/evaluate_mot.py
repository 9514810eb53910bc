"""Evaluate MOTChallenge tracker results as TrackEval does: HOTA (DetA, AssA, LocA), MOTA, IDF1, IDSW, MT/ML.

    python scripts/evaluate_mot.py --gt seq/gt/gt.txt --results results.txt
    python scripts/evaluate_mot.py --gt_dir MOT17/train --results_dir my_results/        # <seq>/gt/gt.txt vs <seq>.txt
    python scripts/evaluate_mot.py --gt_dir MOT17/train --results_dir my_results/ --seqmap seqmaps/MOT17-train.txt

Ground truth is preprocessed as TrackEval's MOTChallenge loader does (pedestrians only; results on
distractor classes removed; ``--benchmark MOT20`` adds non-MOT vehicles to the distractors).
Several sequences are also combined into one row (counts summed, as TrackEval's COMBINED_SEQ).
The same job as a function: :func:`evaluate_files`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from myutils.cli import run, unit_float  # noqa: E402
from myutils.tracking.mot_io import read_mot, read_seqmap  # noqa: E402
from myutils.tracking.mot_metrics import (  # noqa: E402
    BENCHMARKS,
    MOTSummary,
    combine_summaries,
    evaluate_mot,
    format_summary,
)
from myutils.training.log import write_json_atomic  # noqa: E402


def sequence_pairs(
    gt_dir: Path, results_dir: Path, seqmap: Path | None = None
) -> dict[str, tuple[Path, Path]]:
    """``{sequence: (gt file, results file)}``: the seqmap's sequences, or every ``gt_dir/<seq>/gt/gt.txt``.

    A sequence without results (``results_dir/<seq>.txt``) is an error: leaving it out would
    improve the combined numbers silently."""
    if seqmap is not None:
        names = read_seqmap(seqmap)
    else:
        names = [gt_file.parent.parent.name for gt_file in sorted(gt_dir.glob("*/gt/gt.txt"))]
        if not names:
            raise FileNotFoundError(f"no <sequence>/gt/gt.txt under {gt_dir}")
    pairs = {}
    for name in names:
        gt_file, result_file = gt_dir / name / "gt" / "gt.txt", results_dir / f"{name}.txt"
        if not gt_file.is_file():
            raise FileNotFoundError(f"no ground truth for sequence {name}: expected {gt_file}")
        if not result_file.is_file():
            raise FileNotFoundError(f"no results for sequence {name}: expected {result_file}")
        pairs[name] = (gt_file, result_file)
    return pairs


def evaluate_files(
    pairs: dict[str, tuple[Path, Path]],
    iou_threshold: float = 0.5,
    min_visibility: float = 0.0,
    benchmark: str = "MOT17",
) -> dict[str, MOTSummary]:
    """One summary per sequence, plus ``"COMBINED"`` when there are several."""
    summaries = {
        name: evaluate_mot(read_mot(gt), read_mot(results), iou_threshold, min_visibility, benchmark)
        for name, (gt, results) in pairs.items()
    }
    if len(summaries) > 1:
        summaries["COMBINED"] = combine_summaries(list(summaries.values()))
    return summaries


def main(argv: list[str] | None = None) -> dict[str, MOTSummary]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gt", type=Path, help="ground-truth file of one sequence")
    parser.add_argument("--results", type=Path, help="tracker results of that sequence")
    parser.add_argument("--gt_dir", type=Path, help="folder of MOT sequences, each with gt/gt.txt")
    parser.add_argument("--results_dir", type=Path, help="folder with one <sequence>.txt per sequence")
    parser.add_argument("--seqmap", type=Path, help="MOTChallenge seqmap: evaluate only the sequences it lists")
    parser.add_argument(
        "--benchmark",
        choices=BENCHMARKS,
        default="MOT17",
        help="ground-truth classes as this benchmark defines them (default MOT17, also MOT16)",
    )
    parser.add_argument(
        "--iou", type=unit_float, default=0.5, help="least IoU for a CLEAR / identity match (default 0.5)"
    )
    parser.add_argument(
        "--min_visibility",
        type=unit_float,
        default=0.0,
        help="also ignore ground truth less visible than this (default 0: TrackEval's rule)",
    )
    parser.add_argument("--json", type=Path, help="also write the numbers to this JSON file")
    args = parser.parse_args(argv)
    if args.gt and args.results:
        pairs = {args.results.stem: (args.gt, args.results)}
    elif args.gt_dir and args.results_dir:
        pairs = sequence_pairs(args.gt_dir, args.results_dir, args.seqmap)
    else:
        parser.error("give --gt with --results, or --gt_dir with --results_dir")
    summaries = evaluate_files(pairs, args.iou, args.min_visibility, args.benchmark)
    print(format_summary(summaries))
    if args.json:
        write_json_atomic({name: summary.as_dict() for name, summary in summaries.items()}, args.json)
        print(f"wrote {args.json}")
    return summaries


if __name__ == "__main__":
    run(main)
