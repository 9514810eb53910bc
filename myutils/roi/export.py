"""ONNX export of the ROI encoder: ROI features ``[N, 512, 10, 10]`` -> unit embeddings ``[N, 128]``."""

from __future__ import annotations

import argparse
from dataclasses import asdict

import torch

from myutils.cli import non_negative_int
from myutils.export.onnx import Exporter, ExportSpec, require_file
from myutils.roi.encoder import load_roi_encoder
from myutils.roi.features import ROI_OUTPUT_SIZE, SAMPLING_RATIO


def add_encoder_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="ROI encoder checkpoint written by main_train.py")
    parser.add_argument("--seed", type=non_negative_int, default=0, help="seed of the check inputs (default 0)")


def build_encoder_spec(args: argparse.Namespace) -> ExportSpec:
    checkpoint = require_file(args.checkpoint, "--checkpoint")
    encoder = load_roi_encoder(checkpoint).eval()
    channels, size = encoder.config.in_channels, ROI_OUTPUT_SIZE
    generator = torch.Generator().manual_seed(args.seed)
    return ExportSpec(
        module=encoder,
        example_inputs=(torch.randn(2, channels, size, size, generator=generator),),
        input_names=["roi_features"],
        output_names=["embeddings"],
        dynamic_axes={"roi_features": {0: "rois"}, "embeddings": {0: "rois"}},
        check_inputs=(torch.randn(7, channels, size, size, generator=generator),),
        metadata={
            "network": "roi_encoder",
            "checkpoint": str(checkpoint),
            "encoder_config": asdict(encoder.config),
            "input": f"roi_align of the YOLOv7 SPPCSPC map [N, {channels}, {size}, {size}] (spatial_scale 1/32, "
                     f"sampling_ratio {SAMPLING_RATIO}, aligned=True, boxes in letterboxed input pixels)",
            "output": f"L2-normalised embeddings [N, {encoder.config.embedding_dim}]",
        },
    )


ROI_ENCODER_EXPORTER = Exporter(
    help="ROI appearance encoder: ROI features [N, 512, 10, 10] (dynamic N) -> 128-d unit embeddings",
    add_arguments=add_encoder_arguments,
    build=build_encoder_spec,
)
