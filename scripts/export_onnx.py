"""Export a trained network to ONNX and check onnxruntime's outputs against PyTorch's.

    python scripts/export_onnx.py <network> --output exported/name [network flags]

Writes ``name.onnx`` (dynamic batch) and ``name.json`` (input shapes, preprocessing, the measured
max abs difference). The export fails, and writes nothing, when the difference exceeds ``--atol``.
``python scripts/export_onnx.py <network> --help`` lists a network's flags.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from myutils.cli import options_to_argv, positive_float, run  # noqa: E402
from myutils.detection.export import YOLOV7_BACKBONE_EXPORTER  # noqa: E402
from myutils.export.onnx import Exporter, export_checked  # noqa: E402
from myutils.face.export import SENET_EXPORTER  # noqa: E402
from myutils.retrieval.export import EMBEDDING_EXPORTER  # noqa: E402
from myutils.roi.export import ROI_ENCODER_EXPORTER  # noqa: E402
from myutils.segmentation.export import EXPORTER as SEMISEG_EXPORTER  # noqa: E402

EXPORTERS: dict[str, Exporter] = {
    "embedding": EMBEDDING_EXPORTER,
    "semiseg": SEMISEG_EXPORTER,
    "roi_encoder": ROI_ENCODER_EXPORTER,
    "yolov7_backbone": YOLOV7_BACKBONE_EXPORTER,
    "senet": SENET_EXPORTER,
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    networks = parser.add_subparsers(dest="network", required=True, metavar="network")
    for name, exporter in EXPORTERS.items():
        sub = networks.add_parser(name, help=exporter.help, description=exporter.help)
        sub.add_argument("--output", required=True, help="output path without extension (.onnx and .json are written)")
        sub.add_argument("--atol", type=positive_float, default=1e-4,
                         help="largest allowed |onnxruntime - PyTorch| (default 1e-4)")
        exporter.add_arguments(sub)
    return parser


def export_onnx(network: str, output: str, atol: float = 1e-4, **options) -> dict:
    """The CLI's job as a function: ``export_onnx("roi_encoder", "out/enc", checkpoint="enc.pth")``.

    Options are the network's flags by name; ``True`` stands for a flag given without a value.
    """
    args = build_parser().parse_args([network, "--output", str(output), "--atol", str(atol), *options_to_argv(options)])
    return export_checked(EXPORTERS[network].build(args), args.output, args.atol)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    report = export_checked(EXPORTERS[args.network].build(args), args.output, args.atol)
    print(json.dumps({key: report[key] for key in ("onnx", "inputs", "max_abs_diff")}))
    return 0


if __name__ == "__main__":
    run(main)
