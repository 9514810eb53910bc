"""ONNX export of a network trained by scripts/train_semiseg.py (class logits of one patch)."""

from __future__ import annotations

import argparse

import torch
from torch import Tensor, nn

from myutils.cli import InputError
from myutils.export.onnx import Exporter, ExportSpec, require_file
from myutils.segmentation.networks import build_network
from myutils.training.checkpoint import load_checkpoint


class LogitsOnly(nn.Module):
    """The network's class logits; the memory heads are training-only."""

    def __init__(self, network: nn.Module):
        super().__init__()
        self.network = network

    def forward(self, images: Tensor) -> Tensor:
        return self.network(images)[0]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="best.pth or last.pth written by scripts/train_semiseg.py")
    parser.add_argument("--teacher", action="store_true", help="export the EMA teacher instead of the student")


def build(args: argparse.Namespace) -> ExportSpec:
    state = load_checkpoint(require_file(args.checkpoint, "--checkpoint"))
    if "student" not in state or "args" not in state:
        raise InputError(f"{args.checkpoint} is not a train_semiseg checkpoint")
    flags = state["args"]
    weights = state["teacher" if args.teacher else "student"]
    embedding = flags["embedding_dim"] if flags["use_contrastive_prototype"] else 0
    network = build_network(flags["model"], 1, flags["num_classes"], flags["base_channels"], embedding)
    network.load_state_dict(weights)
    patch = list(flags["patch_size"])
    spatial = {i + 2: f"dim{i}" for i in range(len(patch))}  # any multiple of 16
    return ExportSpec(
        LogitsOnly(network).eval(), (torch.randn(1, 1, *patch),), ["images"], ["logits"],
        {"images": {0: "batch", **spatial}, "logits": {0: "batch", **spatial}},
        check_inputs=(torch.randn(2, 1, *[p + 16 for p in patch]),),
        metadata={"network": flags["model"], "num_classes": flags["num_classes"], "patch_size": patch,
                  "input": "one channel, intensities as in the training h5 files (PNG layout: pixel / 255)",
                  "output": "class logits; argmax over dim 1 is the segmentation"},
    )


EXPORTER = Exporter("segmentation network from scripts/train_semiseg.py (class logits)", add_arguments, build)
