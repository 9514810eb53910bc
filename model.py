"""Image embedding model: a timm backbone, a linear projection and L2 normalisation.

The model is fully described by :attr:`EmbeddingModel.config` (timm name, embedding size,
input size, mean/std), which the trainer stores in every checkpoint so that
:meth:`EmbeddingModel.from_checkpoint` rebuilds it from the file alone.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import timm
import torch
import torch.nn as nn
import torch.nn.functional as F

from myutils.cli import InputError
from myutils.data.image_io import size_pair
from myutils.training.checkpoint import load_checkpoint


def _create(model_name: str, img_size: tuple[int, int] | None, **kwargs) -> nn.Module:
    """``timm.create_model`` with ``img_size`` for the models that take it (ViT, DeiT, Swin, ...).

    Fixed-size backbones build their position embeddings (or windows) for ``img_size``; convolutional
    ones take any input size and have no such argument, so it is left out for them.
    """
    if img_size is not None:
        try:
            return timm.create_model(model_name, img_size=img_size, **kwargs)
        except TypeError as error:
            if "img_size" not in str(error):
                raise
    try:
        return timm.create_model(model_name, **kwargs)
    except TypeError as error:  # e.g. a drop_path_rate the architecture has no use for
        raise InputError(f"timm model {model_name!r} does not accept these options: {error}") from error


def create_backbone(
    model_name: str,
    pretrained: str | os.PathLike | None = None,
    img_size: tuple[int, int] | None = None,
    drop_rate: float = 0.0,
    drop_path_rate: float = 0.0,
) -> nn.Module:
    """A timm model without classifier (``num_classes=0``: pooled features).

    ``pretrained`` is a local weights file (``.safetensors``/``.pth``/``.bin``); timm is never
    allowed to download. ``img_size`` reaches the models that take it; the drop rates are passed
    only when non-zero.
    """
    if not timm.is_model(model_name):
        raise InputError(f"unknown timm model {model_name!r} (see timm.list_models())")
    options: dict[str, Any] = {"num_classes": 0}
    options.update({name: rate for name, rate in (("drop_rate", drop_rate), ("drop_path_rate", drop_path_rate)) if rate})
    if pretrained is None:
        return _create(model_name, img_size, pretrained=False, **options)
    path = Path(pretrained)
    if not path.is_file():
        raise FileNotFoundError(f"pretrained weights file not found: {path} (weights are never downloaded)")
    return _create(model_name, img_size, pretrained=True, pretrained_cfg_overlay={"file": str(path)}, **options)


class EmbeddingModel(nn.Module):
    """``timm backbone → Linear(num_features, emb_dim) → L2 normalise``.

    Args:
        model_name: any timm model name (documented choices: ``tf_efficientnetv2_s/m/l``).
        emb_dim: embedding size.
        pretrained: path of a local weights file for the backbone, or ``None`` (random init).
        img_size: input side length (or ``(height, width)``); ``None`` uses the model's default data
            config. Models with a fixed input size (ViT, DeiT, Swin) are built for it.
        mean, std: input normalisation; ``None`` uses the model's data config
            (mean = std = 0.5 for ``tf_efficientnetv2_*``).
        drop_rate, drop_path_rate: timm's dropout before the pooled features and stochastic depth.
    """

    def __init__(
        self,
        model_name: str = "tf_efficientnetv2_m",
        emb_dim: int = 512,
        pretrained: str | os.PathLike | None = None,
        img_size: int | Sequence[int] | None = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
    ):
        super().__init__()
        if emb_dim < 1:
            raise InputError(f"emb_dim must be positive, got {emb_dim}")
        size = None if img_size is None else size_pair(img_size)
        self.backbone = create_backbone(model_name, pretrained, size, drop_rate, drop_path_rate)
        # models with a pre-logits head (MobileNetV3, ...) pool to head_hidden_size, others to num_features
        pooled_dim = getattr(self.backbone, "head_hidden_size", None) or self.backbone.num_features
        self.projection = nn.Linear(pooled_dim, emb_dim)
        data_config = timm.data.resolve_model_data_config(self.backbone)
        _, height, width = data_config["input_size"]
        self.config: dict[str, Any] = {
            "model_name": model_name,
            "emb_dim": emb_dim,
            "img_size": list(size or (height, width)),
            "mean": list(mean or data_config["mean"]),
            "std": list(std or data_config["std"]),
            "interpolation": data_config.get("interpolation", "bilinear"),
            "crop_pct": float(data_config.get("crop_pct", 1.0)),
            "drop_rate": drop_rate,
            "drop_path_rate": drop_path_rate,
        }

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.projection(self.backbone(images)), dim=-1)

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> EmbeddingModel:
        """The architecture described by ``config`` (random weights; load a state_dict next)."""
        model = cls(
            config["model_name"], config["emb_dim"], img_size=config["img_size"], mean=config["mean"],
            std=config["std"], drop_rate=config.get("drop_rate", 0.0), drop_path_rate=config.get("drop_path_rate", 0.0),
        )
        model.config = {**model.config, **config}
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
