"""Train the SENet triplet network that maps pose-varied face features toward the person's frontal feature.

    python train_transformer3D/triplet/train_senet_triplet.py --data_dir train/datas/file

Also a function: ``train_senet_triplet(data_dir=..., epochs=..., ...)`` takes the same options by name.
Writes ``best_model.pth``, ``checkpoint_epoch_N.pth``, ``final_model.pth``, ``training_history.json``,
``training_curves_epoch_N.png``, ``final_training_curves.png`` and ``identity_dims.json`` to ``--save_dir``
and TensorBoard logs to ``--log_dir``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from myutils.cli import non_negative_float, non_negative_int, positive_float, positive_int, run, unit_float  # noqa: E402
from myutils.face.losses import TARGET_LOSSES  # noqa: E402
from myutils.face.networks import ARCHITECTURES, NORMS  # noqa: E402
from myutils.face.trainer import train  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    data = parser.add_argument_group("data")
    data.add_argument("--data_dir", required=True,
                      help="folder with front_feature.npy, front_metadata.json, video_feature.npy, video_metadata.json")
    data.add_argument("--batch_size", type=positive_int, default=32, help="samples per batch")
    data.add_argument("--samples_per_person", type=positive_int, default=4,
                      help="samples of one person in a batch (triplets need positives in the batch)")
    data.add_argument("--num_workers", type=non_negative_int, default=4, help="DataLoader worker processes")
    data.add_argument("--split_seed", type=non_negative_int, default=42, help="seed of the 0.6/0.3/0.1 split by person")

    model = parser.add_argument_group("model (docs/senet.md: which defaults differ from the seed, and why)")
    model.add_argument("--architecture", choices=ARCHITECTURES, default="senet",
                       help="senet: the dual-branch SENet; residual_mlp: the plain baseline "
                            "L2norm(x + MLP([x, pose/90])); dream: DREAM's L2norm(x + sigmoid(10(|yaw|/45 - 1)) MLP(x)); "
                            "the baselines have --num_layers layers of --hidden_dim (SE/fusion flags unused)")
    model.add_argument("--image_dim", type=positive_int, default=512, help="face feature dimension (InsightFace: 512)")
    model.add_argument("--pose_dim", type=positive_int, default=3, help="pose dimension (Euler angles in degrees: 3)")
    model.add_argument("--hidden_dim", type=positive_int, default=1024, help="width of the hidden layers")
    model.add_argument("--num_layers", type=positive_int, default=3, help="fully connected blocks before the SE branches (>= 1)")
    model.add_argument("--se_reduction", type=positive_int, default=16, help="SE block reduction ratio (8-32)")
    model.add_argument("--fusion_alpha", type=unit_float, default=0.7,
                       help="initial identity-branch weight α, strictly between 0 and 1 (learned at --alpha_lr); "
                            "the branches can rescale themselves, so α's value is not a health signal")
    model.add_argument("--use_batch_stat", action="store_true",
                       help="SE gates from the batch mean instead of each sample")
    model.add_argument("--dropout", type=non_negative_float, default=0.0, help="dropout after each hidden block (seed: 0.1)")
    model.add_argument("--norm", choices=NORMS, default="none", help="normalisation in each block (seed: batch)")
    model.add_argument("--no_se", action="store_true", help="drop the SE gates of both branches (ablation)")
    model.add_argument("--no_residual_gain", action="store_true",
                       help="front = src + fused, as the seed (default: src + γ·fused, γ learned from 0)")
    model.add_argument("--relu_projection", action="store_true",
                       help="end the encoder with BN-ReLU-Dropout as the seed (default: a plain Linear projection)")
    model.add_argument("--triplet_through_mapper", action="store_true",
                       help="let the triplet loss's gradient reach the mapper through the identity head, as the seed "
                            "(default: the triplet trains the identity head on front_features.detach())")

    training = parser.add_argument_group("training")
    training.add_argument("--epochs", type=positive_int, default=100, help="number of epochs")
    training.add_argument("--lr", type=positive_float, default=1e-4, help="AdamW learning rate (cosine decay to 1%%)")
    training.add_argument("--alpha_lr", type=non_negative_float, default=None,
                          help="learning rate of the fusion weight's logit (default: 50 × --lr; 0 freezes α)")
    training.add_argument("--gain_lr", type=non_negative_float, default=None,
                          help="learning rate of the residual gain γ (default: 50 × --lr)")
    training.add_argument("--weight_decay", type=non_negative_float, default=1e-5, help="AdamW weight decay")
    training.add_argument("--identity_preserve_weight", type=non_negative_float, default=0.3,
                          help="weight of the MSE between mapped and input feature on the identity dimensions")
    training.add_argument("--identity_dims", default=None,
                          help="comma-separated identity dimensions; default: computed from the training split")
    training.add_argument("--num_identity_dims", type=positive_int, default=20,
                          help="how many identity dimensions to compute when --identity_dims is not given")
    training.add_argument("--target_weight", type=non_negative_float, default=1.0,
                          help="weight of the loss between front_features and the frontal feature (0: the seed's objective)")
    training.add_argument("--target_loss", choices=TARGET_LOSSES, default="cosine", help="frontal target loss")
    training.add_argument("--triplet_weight", type=non_negative_float, default=1.0,
                          help="weight of the angle-aware triplet loss (the seed's: 1)")
    training.add_argument("--gradient_accumulation_steps", type=positive_int, default=1,
                          help="batches per optimizer step (gradient clipping at max_norm 1.0 is built in)")
    training.add_argument("--use_amp", action="store_true",
                          help="mixed precision: fp16 with gradient scaling (or bf16) on CUDA, bf16 on CPU")
    training.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    training.add_argument("--seed", type=non_negative_int, default=42, help="seed of initialisation, dropout and batch order")

    triplet = parser.add_argument_group("angle-aware triplet loss")
    triplet.add_argument("--margin", type=positive_float, default=0.3, help="triplet margin")
    triplet.add_argument("--alpha", type=non_negative_float, default=2.0, help="weight of positives more than 45° away in pose")
    triplet.add_argument("--beta", type=non_negative_float, default=1.0, help="weight of negatives less than 15° away in pose")
    triplet.add_argument("--angle_threshold", type=non_negative_float, default=30.0,
                         help="negatives are mined among other persons closer than this in pose (degrees)")

    other = parser.add_argument_group("other")
    other.add_argument("--save_dir", default="checkpoints_senet", help="folder of checkpoints, history and plots")
    other.add_argument("--log_dir", default="logs_senet", help="TensorBoard log folder")
    other.add_argument("--resume", default=None, help="checkpoint to continue training from")
    other.add_argument("--save_interval", type=positive_int, default=10,
                       help="write checkpoint_epoch_N.pth and training_curves_epoch_N.png every N epochs")
    return parser


def train_senet_triplet(**options) -> dict:
    """Same as the command line, options by flag name (``data_dir`` required); returns the run summary."""
    parser = build_parser()
    args = parser.parse_args(["--data_dir", str(options.pop("data_dir"))])
    unknown = sorted(set(options) - set(vars(args)))
    if unknown:
        raise TypeError(f"unknown options {unknown}; see --help")
    vars(args).update(options)
    return train(args)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    train(args)
    return 0


if __name__ == "__main__":
    run(main)
