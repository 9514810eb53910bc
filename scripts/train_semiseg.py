"""Semi-supervised segmentation (SS-Net / UA-MT tradition) with the SS-Net class-wise contrastive memory.

    python scripts/train_semiseg.py --root_path data/ACDC --dataset acdc --labelnum 3 \\
        --use_contrastive_prototype --use_learned_selector
    torchrun --nproc_per_node=2 scripts/train_semiseg.py --root_path data/LA --dataset la --labelnum 8

Also a function: ``train_semiseg(root_path="data/ACDC", dataset="acdc", labelnum=3, ...)`` takes the flags
by name (``True`` for a switch) and returns the best checkpoint's validation (and test) metrics.
Data layouts (``--dataset``): ``acdc`` (h5 slices + volumes with list files), ``la`` (h5 volumes in
``2018LA_Seg_Training Set/<case>/mri_norm2.h5``), ``folder`` (``train|val|test/images|masks/*.png``).
Writes under --output_dir: checkpoints/best.pth (by validation Dice) and last.pth (for --resume),
tensorboard/ (``Loss/<key>`` per iteration), history.json, curves.png and metrics.json (per-class Dice,
Jaccard, HD95 and ASD of the best checkpoint on the validation and test cases).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from myutils.cli import (  # noqa: E402
    non_negative_float,
    non_negative_int,
    options_to_argv,
    positive_float,
    positive_int,
    run,
    unit_float,
)
from myutils.contrastive_prototype_manager import MEMORY_MODES, MEMORY_SOURCES  # noqa: E402
from myutils.segmentation.data import LAYOUTS  # noqa: E402
from myutils.segmentation.networks import NETWORKS  # noqa: E402
from myutils.segmentation.trainer import METHODS, train  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    data = parser.add_argument_group("data (defaults per --dataset follow SS-Net: acdc / la / folder)")
    data.add_argument("--root_path", required=True, help="data root (see the layouts above)")
    data.add_argument("--dataset", choices=LAYOUTS, default="acdc", help="data layout (default acdc)")
    data.add_argument("--labelnum", type=positive_int, default=None,
                      help="labelled cases (acdc: patients; la: volumes; folder: masked images); the rest of the "
                           "training data is unlabelled (default 3 / 4 / every masked image)")
    data.add_argument("--train_list", default=None, help="training list file (default train_slices.list / train.list)")
    data.add_argument("--val_list", default=None, help="validation list (default val.list / test.list / the val folder)")
    data.add_argument("--test_list", default=None,
                      help="test list evaluated with the best checkpoint at the end (default test.list / none / "
                           "the test folder when present; 'none' to skip)")
    data.add_argument("--patch_size", type=positive_int, nargs="+", default=None,
                      help="training patch, multiples of 16 (default 256 256 / 112 112 80)")
    data.add_argument("--batch_size", type=positive_int, default=None, help="patches per iteration and process (default 24 / 4 / 8)")
    data.add_argument("--labeled_bs", type=positive_int, default=None, help="labelled patches among them (default 12 / 2 / 4)")
    data.add_argument("--num_workers", type=non_negative_int, default=2, help="DataLoader workers per process (default 2)")

    model = parser.add_argument_group("model")
    model.add_argument("--model", choices=NETWORKS, default=None, help="unet (2-D) or vnet (3-D); default by --dataset")
    model.add_argument("--num_classes", type=positive_int, default=None, help="classes with background (default 4 / 2 / 2)")
    model.add_argument("--base_channels", type=positive_int, default=16, help="channels of the first stage (SS-Net: 16)")
    model.add_argument("--embedding_dim", type=positive_int, default=32, help="projection/prediction head width (SS-Net: 32)")

    training = parser.add_argument_group("training")
    training.add_argument("--semi_method", choices=METHODS, default="mean_teacher",
                          help="use of the unlabelled data: none, EMA-teacher consistency, or teacher pseudo-labels")
    training.add_argument("--max_iterations", type=positive_int, default=30000, help="training iterations (SS-Net ACDC: 30000)")
    training.add_argument("--base_lr", type=positive_float, default=0.01, help="learning rate, poly decay (default 0.01)")
    training.add_argument("--optimizer", choices=("sgd", "adamw"), default="sgd", help="SGD momentum 0.9 (SS-Net) or AdamW")
    training.add_argument("--consistency", type=non_negative_float, default=0.1, help="weight of the unlabelled loss (default 0.1)")
    training.add_argument("--consistency_rampup", type=non_negative_float, default=None,
                          help="iterations of the sigmoid ramp-up of the unlabelled and memory losses (default 40%% of --max_iterations)")
    training.add_argument("--ema_decay", type=unit_float, default=0.99, help="mean-teacher EMA decay (default 0.99)")
    training.add_argument("--pseudo_threshold", type=unit_float, default=0.95,
                          help="teacher confidence a pseudo-label needs (--semi_method pseudo_label; default 0.95)")
    training.add_argument("--stream_batchnorm", choices=("separate", "shared"), default="separate",
                          help="separate: labelled and unlabelled patches through the student in two forwards, "
                               "BatchNorm statistics per stream (default); shared: one forward as SS-Net")
    training.add_argument("--amp", choices=("auto", "bf16", "fp16", "off"), default="auto",
                          help="autocast: auto = bf16 on CUDA where supported (fp16 + scaler otherwise), off on CPU")
    training.add_argument("--seed", type=non_negative_int, default=1337, help="random seed (SS-Net: 1337)")
    training.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")

    memory = parser.add_argument_group("SS-Net class-wise contrastive memory")
    memory.add_argument("--use_contrastive_prototype", action="store_true", help="add the memory's contrastive loss")
    memory.add_argument("--contrastive_weight", type=non_negative_float, default=1.0, help="weight of its contrastive term (default 1.0)")
    memory.add_argument("--use_learned_selector", action="store_true",
                        help="learned per-class selectors (own Adam at base_lr x 0.1)")
    memory.add_argument("--intra_weight", type=non_negative_float, default=0.1, help="weight of the intra-class term (default 0.1)")
    memory.add_argument("--inter_weight", type=non_negative_float, default=0.1, help="weight of the inter-class term (default 0.1)")
    memory.add_argument("--elements_per_class", type=positive_int, default=32, help="memory items per class (SS-Net: 32)")
    memory.add_argument("--memory_mode", choices=MEMORY_MODES, default="replace", help="replace (SS-Net) or fifo")
    memory.add_argument("--memory_from", choices=MEMORY_SOURCES, default="labelled",
                        help="labelled (both originals) or labelled+pseudo")
    memory.add_argument("--memory_ignore_classes", type=non_negative_int, nargs="*", default=[],
                        help="classes kept out of the memory, e.g. 0 for background as SS-Net")
    memory.add_argument("--prototype_threshold", type=unit_float, default=0.95,
                        help="confidence an unlabelled pixel needs to enter the memory loss (default 0.95)")

    output = parser.add_argument_group("output")
    output.add_argument("--output_dir", default="runs/semiseg", help="checkpoints, logs, curves (default runs/semiseg)")
    output.add_argument("--eval_interval", type=positive_int, default=200, help="validate every N iterations (SS-Net: 200)")
    output.add_argument("--stride", type=positive_int, nargs="+", default=None,
                        help="3-D sliding-window stride per axis (default half the patch; SS-Net LA: 18 18 4)")
    output.add_argument("--resume", default=None, help="checkpoint to continue from (OUTPUT/checkpoints/last.pth)")
    return parser


def train_semiseg(root_path: str, **options) -> dict:
    """The CLI's job as a function; options are the flags by name (``True`` for a switch, lists for nargs)."""
    return train(build_parser().parse_args(["--root_path", str(root_path), *options_to_argv(options)]))


def main(argv: list[str] | None = None) -> None:
    train(build_parser().parse_args(argv))


if __name__ == "__main__":
    run(main)
