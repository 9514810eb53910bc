"""ONNX export of a trained face-feature mapper (``scripts/export_onnx.py senet --checkpoint best_model.pth``).

Inputs ``features [B, D]`` (float32) and ``poses [B, pose_dim]`` (degrees, [yaw, pitch, roll]); outputs
``mapped [B, D]`` (the L2-normalised ``front_features``, what ``scripts/map_face_features.py`` writes) and
``identity [B, D]`` (the identity head's L2-normalised features; the baseline repeats ``mapped``).
The batch axis is dynamic; the parity check runs on another batch size than the example.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from torch import nn

from myutils.export.onnx import Exporter, ExportSpec, require_file
from myutils.face.inference import load_trained_model

EXAMPLE_BATCH, CHECK_BATCH = 2, 5


class DeployedMapper(nn.Module):
    """``(features, poses) → (L2norm(front_features), identity_features)`` of a mapper in eval mode."""

    def __init__(self, mapper: nn.Module):
        super().__init__()
        self.mapper = mapper.eval()

    def forward(self, features: torch.Tensor, poses: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        front, identity = self.mapper(features, poses)
        return F.normalize(front, dim=1), identity


def example_inputs(image_dim: int, pose_dim: int, batch: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Unit features and poses spread over ±90° (the range the mapper sees)."""
    generator = torch.Generator().manual_seed(seed)
    features = F.normalize(torch.randn(batch, image_dim, generator=generator), dim=1)
    poses = (torch.rand(batch, pose_dim, generator=generator) * 2 - 1) * 90.0
    return features, poses


def mapper_spec(mapper: nn.Module) -> ExportSpec:
    config = mapper.config
    module = DeployedMapper(mapper)
    return ExportSpec(
        module=module,
        example_inputs=example_inputs(config["image_dim"], config["pose_dim"], EXAMPLE_BATCH, seed=0),
        input_names=["features", "poses"],
        output_names=["mapped", "identity"],
        dynamic_axes={name: {0: "batch"} for name in ["features", "poses", "mapped", "identity"]},
        check_inputs=example_inputs(config["image_dim"], config["pose_dim"], CHECK_BATCH, seed=1),
        metadata={"network": "senet", "model_config": dict(config),
                  "inputs_meaning": {"features": "face features [B, D], float32",
                                     "poses": "head pose [B, pose_dim] in degrees: yaw, pitch, roll"},
                  "outputs_meaning": {"mapped": "L2-normalised mapped (frontal-like) features",
                                      "identity": "L2-normalised identity-head features"}},
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="checkpoint written by train_senet_triplet.py")


def build(args: argparse.Namespace) -> ExportSpec:
    return mapper_spec(load_trained_model(require_file(args.checkpoint, "--checkpoint")))


SENET_EXPORTER = Exporter(
    help="SENet face-feature mapper (features + poses → mapped features), from a train_senet_triplet.py checkpoint",
    add_arguments=add_arguments,
    build=build,
)
