"""Image embedding model: a timm backbone, a linear projection and L2 normalisation.

The model is fully described by :attr:`EmbeddingModel.config` (timm name, embedding size,
input size, mean/std), which the trainer stores in every checkpoint so that
:meth:`EmbeddingModel.from_checkpoint` rebuilds it from the file alone.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import timm
import torch
import torch.nn as nn
import torch.nn.functional as F

from myutils.cli import InputError
from myutils.training.checkpoint import load_checkpoint


def create_backbone(model_name: str, pretrained: str | os.PathLike | None = None) -> nn.Module:
    """A timm model without classifier (``num_classes=0``: pooled features).

    ``pretrained`` is a local weights file (``.safetensors``/``.pth``/``.bin``); timm is never
    allowed to download.
    """
    if not timm.is_model(model_name):
        raise InputError(f"unknown timm model {model_name!r} (see timm.list_models())")
    if pretrained is None:
        return timm.create_model(model_name, pretrained=False, num_classes=0)
    path = Path(pretrained)
    if not path.is_file():
        raise FileNotFoundError(f"pretrained weights file not found: {path} (weights are never downloaded)")
    return timm.create_model(
        model_name, pretrained=True, num_classes=0, pretrained_cfg_overlay={"file": str(path)}
    )


class EmbeddingModel(nn.Module):
    """``timm backbone → Linear(num_features, emb_dim) → L2 normalise``.

    Args:
        model_name: any timm model name (documented choices: ``tf_efficientnetv2_s/m/l``).
        emb_dim: embedding size.
        pretrained: path of a local weights file for the backbone, or ``None`` (random init).
        img_size: input side length; ``None`` uses the model's default data config.
        mean, std: input normalisation; ``None`` uses the model's data config
            (mean = std = 0.5 for ``tf_efficientnetv2_*``).
    """

    def __init__(
        self,
        model_name: str = "tf_efficientnetv2_m",
        emb_dim: int = 512,
        pretrained: str | os.PathLike | None = None,
        img_size: int | None = None,
        mean: tuple[float, float, float] | None = None,
        std: tuple[float, float, float] | None = None,
    ):
        super().__init__()
        if emb_dim < 1:
            raise InputError(f"emb_dim must be positive, got {emb_dim}")
        self.backbone = create_backbone(model_name, pretrained)
        # models with a pre-logits head (MobileNetV3, ...) pool to head_hidden_size, others to num_features
        pooled_dim = getattr(self.backbone, "head_hidden_size", None) or self.backbone.num_features
        self.projection = nn.Linear(pooled_dim, emb_dim)
        data_config = timm.data.resolve_model_data_config(self.backbone)
        _, height, width = data_config["input_size"]
        self.config: dict[str, Any] = {
            "model_name": model_name,
            "emb_dim": emb_dim,
            "img_size": [img_size, img_size] if img_size else [height, width],
            "mean": list(mean or data_config["mean"]),
            "std": list(std or data_config["std"]),
            "interpolation": data_config.get("interpolation", "bilinear"),
        }

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.projection(self.backbone(images)), dim=-1)

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> EmbeddingModel:
        """The architecture described by ``config`` (random weights; load a state_dict next)."""
        model = cls(
            config["model_name"], config["emb_dim"], img_size=None, mean=config["mean"], std=config["std"]
        )
        model.config = dict(config)
        return model

    @classmethod
    def from_checkpoint(
        cls, path: str | os.PathLike, map_location: str | torch.device = "cpu"
    ) -> tuple[EmbeddingModel, dict[str, Any]]:
        """Rebuild the model saved by ``train.py``; returns ``(model in eval mode, checkpoint dict)``."""
        checkpoint = load_checkpoint(path, map_location=map_location)
        if "model_config" not in checkpoint or "model" not in checkpoint:
            raise InputError(f"{path} is not an EmbeddingModel checkpoint (no 'model_config'/'model' entries)")
        model = cls.from_config(checkpoint["model_config"])
        model.load_state_dict(checkpoint["model"])
        return model.eval(), checkpoint
