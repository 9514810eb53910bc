"""Generate segmentation cases in SS-Net's layouts, to try scripts/train_semiseg.py without a data set.

    python scripts/make_semiseg_data.py --out demo_data/ACDC_synthetic --layout acdc
    python scripts/make_semiseg_data.py --out demo_data/LA_synthetic --layout la

acdc: 2-D slices + volumes with train_slices.list / val.list / test.list (4 classes, two frames per
patient); la: 3-D volumes in ``2018LA_Seg_Training Set/<case>/mri_norm2.h5`` with train.list / test.list;
folder: PNG images and masks. Textured structures, per-case intensity drift and noise
(myutils/synthetic/semiseg_cases.py).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from myutils.cli import non_negative_int, positive_int, run  # noqa: E402
from myutils.synthetic.semiseg_cases import make_acdc_like, make_folder_like, make_la_like  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, type=Path, help="data root to write")
    parser.add_argument("--layout", choices=("acdc", "la", "folder"), default="acdc", help="layout (default acdc)")
    parser.add_argument("--train", type=positive_int, default=None,
                        help="training patients / volumes / images (default 20 / 16 / 6)")
    parser.add_argument("--test", type=non_negative_int, default=None, help="test patients / volumes (default 8 / 4)")
    parser.add_argument("--size", type=positive_int, default=64, help="image side (acdc, folder; default 64)")
    parser.add_argument("--seed", type=non_negative_int, default=0, help="generator seed (default 0)")
    args = parser.parse_args(argv)
    if args.layout == "acdc":
        root = make_acdc_like(args.out, train=args.train or 20, test=8 if args.test is None else args.test,
                              size=args.size, seed=args.seed)
    elif args.layout == "la":
        root = make_la_like(args.out, train=args.train or 16, test=4 if args.test is None else args.test, seed=args.seed)
    else:
        root = make_folder_like(args.out, labelled=2, unlabelled=max(1, (args.train or 6) - 2), size=args.size,
                                seed=args.seed)
    print(f"wrote {args.layout} data under {root}")


if __name__ == "__main__":
    run(main)
