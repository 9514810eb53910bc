"""Write generated face features in the seed's folder layout, so the SENet trainer runs without real faces.

    python scripts/make_face_feature_data.py --out demo_data/senet_faces

Each person's features are a known pose distortion of an identity vector plus noise, from one of three
families (``--family``: residual, mixing, nonlinear; see ``myutils/synthetic/faces.py``).
Also a function: ``make_face_feature_data``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from myutils.cli import non_negative_float, non_negative_int, positive_float, positive_int, run  # noqa: E402
from myutils.synthetic.faces import DEFAULT_STRENGTH, FAMILIES, make_face_feature_data  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--out", required=True, help="output folder (created)")
    parser.add_argument("--num_persons", type=positive_int, default=1000,
                        help="generated identities (the trainer's test split gets 10 %%)")
    parser.add_argument("--fronts_per_person", type=positive_int, default=1, help="frontal features per person")
    parser.add_argument("--frames_per_person", type=positive_int, default=4, help="video-frame features per person")
    parser.add_argument("--feature_dim", type=positive_int, default=512, help="feature dimension")
    parser.add_argument("--num_identity_dims", type=positive_int, default=20,
                        help="planted pose-invariant dimensions (the trainer should find them)")
    parser.add_argument("--family", choices=sorted(FAMILIES), default="residual",
                        help="residual: DREAM's yaw-gated residual f + yaw·c·U Vᵀ f; mixing: pose-dependent rotations "
                             "mixing the identity dimensions; nonlinear: a fixed random tanh MLP of feature and pose")
    parser.add_argument("--strength", type=positive_float, default=None,
                        help="distortion strength; default per family: "
                             + ", ".join(f"{k} {v:g}" for k, v in DEFAULT_STRENGTH.items())
                             + " (residual/nonlinear: its length relative to the identity at a ±90° profile; "
                               "mixing: std of the plane angles in radians)")
    parser.add_argument("--pose_rank", type=positive_int, default=8, help="residual: rank of U Vᵀ")
    parser.add_argument("--offset", type=non_negative_float, default=0.5, help="residual: length of the pitch-dependent shift at 90° pitch")
    parser.add_argument("--noise", type=non_negative_float, default=0.3, help="length of the Gaussian noise added to each feature")
    parser.add_argument("--seed", type=non_negative_int, default=0, help="random seed")
    parser.add_argument("--overwrite", action="store_true", help="replace data files already in --out")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = vars(build_parser().parse_args(argv))
    out = args.pop("out")
    summary = make_face_feature_data(out, **args)
    print(
        f"Wrote {summary['num_front']} frontal and {summary['num_video']} video features "
        f"({summary['feature_dim']}-d) to {summary['out_dir']}; planted identity dims: {summary['identity_dims']}"
    )
    return 0


if __name__ == "__main__":
    run(main)
