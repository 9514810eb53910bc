"""ONNX export of YOLOv7's backbone up to SPPCSPC (layer 51): the feature map of the ROI encoder."""

from __future__ import annotations

import argparse

import torch
from torch import nn

from myutils.cli import InputError, non_negative_int, positive_int
from myutils.detection.detector import build_yolov7, smooth_random_images
from myutils.detection.letterbox import PAD_VALUE
from myutils.detection.yolov7 import SPPCSPC_LAYER, YOLOv7
from myutils.export.onnx import Exporter, ExportSpec, require_file


class YOLOv7Backbone(nn.Module):
    """``images [B, 3, S, S]`` in [0, 1] -> SPPCSPC map ``[B, 512, S/32, S/32]``."""

    def __init__(self, model: YOLOv7):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.forward_backbone(images)


def add_backbone_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--weights", required=True,
                        help="local YOLOv7 weights in any form (yolov7.pt, yolov7_training.pt, fused, state dict)")
    parser.add_argument("--img_size", type=positive_int, default=640,
                        help="square input size of the example, a multiple of 32 (default 640)")
    parser.add_argument("--no_fuse", action="store_true",
                        help="export the network as loaded (default: Conv+BN and RepConv merged, same outputs)")
    parser.add_argument("--seed", type=non_negative_int, default=0, help="seed of the check images (default 0)")


def build_backbone_spec(args: argparse.Namespace) -> ExportSpec:
    if args.img_size % 32:
        raise InputError(f"--img_size must be a multiple of 32 (the network stride), got {args.img_size}")
    weights = require_file(args.weights, "--weights")
    model = build_yolov7(weights).eval()
    if not args.no_fuse:
        model.fuse()
    generator = torch.Generator().manual_seed(args.seed)
    size = args.img_size
    return ExportSpec(
        module=YOLOv7Backbone(model).eval(),
        example_inputs=(smooth_random_images(1, size, generator),),  # image-like, not uniform noise
        input_names=["images"],
        output_names=["sppcspc"],
        dynamic_axes={"images": {0: "batch"}, "sppcspc": {0: "batch"}},
        check_inputs=(smooth_random_images(2, size, generator),),
        metadata={
            "network": "yolov7_backbone",
            "weights": str(weights),
            "form": model.form,
            "output": f"SPPCSPC (layer {SPPCSPC_LAYER}) [B, 512, {size // 32}, {size // 32}], stride 32",
            "preprocessing": {"letterbox": f"{size}x{size}, keep aspect ratio, cv2.INTER_LINEAR, centred, "
                                           f"pad value {PAD_VALUE}", "channels": "RGB", "scale": "1/255",
                              "layout": "NCHW float32"},
        },
    )


YOLOV7_BACKBONE_EXPORTER = Exporter(
    help="YOLOv7 backbone to SPPCSPC (dynamic batch): the ROI encoder's feature map",
    add_arguments=add_backbone_arguments,
    build=build_backbone_spec,
)
