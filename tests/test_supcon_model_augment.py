"""EmbeddingModel (timm backbone, local weights, rebuild from a checkpoint) and the augmentation module."""

from __future__ import annotations

import functools

import albumentations as A
import numpy as np
import pytest
import timm
import torch
from safetensors.torch import save_file
from torch.utils.data import DataLoader

from augment_images import (
    A2ClothingTransform,
    EvalTransform,
    MultiViewTransform,
    colour_agnostic_augmentations,
    preview_augmentations,
    seed_worker_augmentation,
)
from augment_images import (
    main as augment_main,
)
from model import EmbeddingModel
from myutils.data.image_io import read_image_rgb, write_image_rgb
from myutils.training.checkpoint import save_checkpoint


def test_embedding_model_is_normalised_and_described_by_its_config():
    model = EmbeddingModel("test_efficientnet", emb_dim=24, img_size=48).eval()
    out = model(torch.randn(3, 3, 48, 48))
    assert out.shape == (3, 24)
    torch.testing.assert_close(out.norm(dim=1), torch.ones(3))
    data_config = timm.data.resolve_model_data_config(timm.create_model("test_efficientnet", num_classes=0))
    assert model.config["img_size"] == [48, 48] and model.config["mean"] == list(data_config["mean"])
    assert EmbeddingModel("tf_efficientnetv2_s", emb_dim=8).config["mean"] == [0.5, 0.5, 0.5]


def test_rebuilt_from_checkpoint_alone(tmp_path):
    model = EmbeddingModel("test_efficientnet", emb_dim=8, img_size=32).eval()
    save_checkpoint({"model": model.state_dict(), "model_config": model.config}, tmp_path / "m.pth")
    rebuilt, checkpoint = EmbeddingModel.from_checkpoint(tmp_path / "m.pth")
    images = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(rebuilt(images), model(images))
    assert rebuilt.config == model.config and not rebuilt.training
    save_checkpoint({"weights": 1}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match="not an EmbeddingModel checkpoint"):
        EmbeddingModel.from_checkpoint(tmp_path / "other.pth")


def test_pretrained_weights_come_from_a_local_file_only(tmp_path):
    source = timm.create_model("test_efficientnet", num_classes=0)
    weights = tmp_path / "backbone.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(weights))
    model = EmbeddingModel("test_efficientnet", emb_dim=8, pretrained=weights)
    for name, value in source.state_dict().items():
        assert torch.equal(model.backbone.state_dict()[name], value), name
    with pytest.raises(FileNotFoundError, match="never downloaded"):
        EmbeddingModel("test_efficientnet", pretrained=tmp_path / "missing.safetensors")
    with pytest.raises(ValueError, match="unknown timm model"):
        EmbeddingModel("no_such_model_xyz")


def test_augmentation_pipeline_is_strict_and_uses_albumentations_2_names():
    pipeline = A2ClothingTransform(32).augment
    assert pipeline.strict is True
    names = {type(t).__name__ for t in colour_agnostic_augmentations(32)}
    assert {"RandomResizedCrop", "Affine", "OneOf"} <= names
    with pytest.raises(ValueError):  # a 1.x argument name is an error under strict=True, not silently dropped
        A.Compose([A.RandomResizedCrop(height=32, width=32)], strict=True)


def test_augmentation_seeding_is_reproducible():
    image = np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8)
    transform = A2ClothingTransform(32, seed=5)
    first = [transform(image) for _ in range(3)]
    transform.set_seed(5)
    assert all(torch.equal(a, transform(image)) for a in first)
    assert not torch.equal(first[0], first[1])
    views = MultiViewTransform(A2ClothingTransform(32, seed=1), n_views=2)(image)
    assert views.shape == (2, 3, 32, 32) and not torch.equal(views[0], views[1])


class ConstantImages(torch.utils.data.Dataset):
    def __init__(self, transform):
        self.transform = transform
        self.image = np.full((32, 32, 3), 128, dtype=np.uint8)

    def __len__(self):
        return 8

    def __getitem__(self, index):
        return self.transform(self.image)


def test_dataloader_workers_get_distinct_reproducible_streams():
    def run(seed):
        dataset = ConstantImages(A2ClothingTransform(16, seed=0))
        init = functools.partial(seed_worker_augmentation, base_seed=seed, rank=0)
        loader = DataLoader(dataset, batch_size=1, num_workers=2, worker_init_fn=init, timeout=120)
        return [batch[0] for batch in loader]

    first, again = run(11), run(11)
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    # items 0 and 1 come from different workers: their first draws must differ
    assert not torch.equal(first[0], first[1])
    assert not all(torch.equal(a, b) for a, b in zip(first, run(12), strict=True))


def test_eval_transform_uses_the_given_normalisation():
    image = np.full((20, 30, 3), 255, dtype=np.uint8)
    out = EvalTransform(16, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))(image)
    assert out.shape == (3, 16, 16)
    torch.testing.assert_close(out, torch.ones(3, 16, 16))


def test_preview_writes_the_grid(tmp_path):
    image = np.random.default_rng(1).integers(0, 256, (40, 40, 3), dtype=np.uint8)
    write_image_rgb(tmp_path / "shirt.png", image)
    path = preview_augmentations(tmp_path / "shirt.png", (2, 3), tmp_path / "grid.png", show=False, img_size=24)
    grid = read_image_rgb(path)
    assert grid.shape == (48, 72, 3)
    with pytest.raises(ValueError, match="cannot read"):
        preview_augmentations(tmp_path / "missing.png", show=False)


def test_preview_cli(tmp_path, capsys):
    write_image_rgb(tmp_path / "shirt.png", np.zeros((20, 20, 3), dtype=np.uint8))
    augment_main([str(tmp_path / "shirt.png"), "--grid", "1", "2", "--img_size", "16", "--output", str(tmp_path / "c.png")])
    assert "wrote" in capsys.readouterr().out and read_image_rgb(tmp_path / "c.png").shape == (16, 32, 3)
