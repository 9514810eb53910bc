"""Benchmark of the SENet face-feature mapper on generated data: does the frontal target help?

Trains the same network with the seed's objective (``--target_weight 0``: triplet + identity preservation)
and with the frontal-target loss, then reports on the held-out test persons rank-1 identification of
video features against the frontal gallery and the mean cosine to the frontal feature, before mapping
(raw features, the baseline measured in the same run) and after, plus training samples/s.

    python bench/senet_bench.py [--epochs 25 --num_persons 400 --feature_dim 512]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import statistics
import sys
import tempfile
from pathlib import Path

if __package__ in (None, ""):  # run as a file: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from myutils.cli import positive_float, positive_int, run  # noqa: E402
from train_transformer3D.triplet.synthetic_faces import make_face_feature_data  # noqa: E402
from train_transformer3D.triplet.train_senet_triplet import train_senet_triplet  # noqa: E402

OBJECTIVES = {
    "seed objective (target_weight 0)": {"target_weight": 0.0},
    "frontal target, cosine (weight 1)": {"target_weight": 1.0, "target_loss": "cosine"},
    "frontal target, MSE (weight 1)": {"target_weight": 1.0, "target_loss": "mse"},
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--num_persons", type=positive_int, default=400, help="generated identities (60/30/10 %% split)")
    parser.add_argument("--frames_per_person", type=positive_int, default=10, help="video frames per identity")
    parser.add_argument("--feature_dim", type=positive_int, default=512, help="feature dimension")
    parser.add_argument("--hidden_dim", type=positive_int, default=512, help="hidden width of the mapper")
    parser.add_argument("--epochs", type=positive_int, default=25, help="training epochs per objective")
    parser.add_argument("--batch_size", type=positive_int, default=64, help="batch size")
    parser.add_argument("--lr", type=positive_float, default=1e-3, help="learning rate (short runs need more than 1e-4)")
    parser.add_argument("--threads", type=positive_int, default=1,
                        help="torch CPU threads (small matrices on a shared 2-core machine run fastest on one)")
    parser.add_argument("--out", default=None, help="working folder (default: a temporary one, removed)")
    return parser


def run_benchmark(args: argparse.Namespace, work_dir: Path) -> list[dict]:
    data_dir = work_dir / "faces"
    make_face_feature_data(data_dir, overwrite=True, num_persons=args.num_persons, fronts_per_person=1,
                           frames_per_person=args.frames_per_person, feature_dim=args.feature_dim)
    rows = []
    for name, options in OBJECTIVES.items():
        run_dir = work_dir / name.split()[0] / options.get("target_loss", "none")
        print(f"training: {name} ...", flush=True)
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            summary = train_senet_triplet(
                data_dir=data_dir, image_dim=args.feature_dim, hidden_dim=args.hidden_dim, epochs=args.epochs,
                batch_size=args.batch_size, lr=args.lr, num_workers=0, save_interval=args.epochs,
                save_dir=str(run_dir / "checkpoints"), log_dir=str(run_dir / "logs"), **options,
            )
        rows.append({"name": name, **summary["test"], "best_epoch": summary["best"]["epoch"],
                     "samples_per_sec": statistics.median(summary["history"]["TrainSamplesPerSec"])})
    return rows


def print_table(rows: list[dict]) -> None:
    raw = rows[0]
    header = f"{'test split (held-out persons)':36s} {'rank-1':>7s} {'×raw':>6s} {'profile':>8s} {'×raw':>6s} {'cos→front':>9s} {'×raw':>6s} {'samples/s':>10s}"
    print(header)
    print("-" * len(header))
    print(f"{'raw features (no mapping)':36s} {raw['rank1_raw']:7.3f} {1:6.2f} {raw['rank1_profile_raw']:8.3f} {1:6.2f} "
          f"{raw['cosine_raw']:9.3f} {1:6.2f} {'':>10s}")
    for row in rows:
        print(f"{row['name']:36s} {row['rank1']:7.3f} {row['rank1'] / raw['rank1_raw']:6.2f} "
              f"{row['rank1_profile']:8.3f} {row['rank1_profile'] / raw['rank1_profile_raw']:6.2f} "
              f"{row['cosine']:9.3f} {row['cosine'] / raw['cosine_raw']:6.2f} {row['samples_per_sec']:10.0f}")
    print("profile: |yaw| > 45°; cos→front: mean cosine to the person's frontal feature; "
          "samples/s: median training throughput per epoch")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"SENet bench: {args.num_persons} persons × {args.frames_per_person} frames, {args.feature_dim}-d, "
          f"hidden {args.hidden_dim}, {args.epochs} epochs, batch {args.batch_size}, lr {args.lr}, "
          f"{args.threads} CPU thread(s)")
    if args.out:
        rows = run_benchmark(args, Path(args.out))
    else:
        with tempfile.TemporaryDirectory(prefix="senet_bench_") as work_dir:
            rows = run_benchmark(args, Path(work_dir))
    print_table(rows)
    return 0


if __name__ == "__main__":
    run(main)
