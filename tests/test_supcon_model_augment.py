"""EmbeddingModel (timm backbone, local weights, rebuild from a checkpoint) and the augmentation module."""

from __future__ import annotations

import functools
from collections import Counter

import albumentations as A
import numpy as np
import pytest
import timm
import torch
from safetensors.torch import save_file
from torch.utils.data import DataLoader

import augment_images
from augment_images import (
    AUGMENT_PRESETS,
    COLOUR_OPS,
    A2ClothingTransform,
    EvalTransform,
    MultiViewTransform,
    preview_augmentations,
    seed_worker_augmentation,
    training_augmentations,
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


TINY_VIT = "test_vit3"  # a fixed-size ViT (160 px by default; timm's test_vit accepts any size)


def test_img_size_reaches_fixed_size_backbones():
    vit = EmbeddingModel(TINY_VIT, emb_dim=8, img_size=32).eval()  # built for 160 px by default
    assert vit(torch.randn(2, 3, 32, 32)).shape == (2, 8) and vit.config["img_size"] == [32, 32]
    with pytest.raises(AssertionError, match="doesn't match model"):
        timm.create_model(TINY_VIT, num_classes=0)(torch.randn(1, 3, 32, 32))  # what --img_size alone used to give
    rebuilt = EmbeddingModel.from_config(vit.config)
    rebuilt.load_state_dict(vit.state_dict())  # the position embedding has the 32 px shape
    conv = EmbeddingModel("test_efficientnet", emb_dim=8, img_size=(24, 40))  # no img_size argument: left out
    assert conv.config["img_size"] == [24, 40] and conv.eval()(torch.randn(1, 3, 24, 40)).shape == (1, 8)


def test_drop_rates_reach_timm_and_the_config():
    model = EmbeddingModel("test_efficientnet", emb_dim=8, img_size=32, drop_rate=0.3, drop_path_rate=0.2)
    assert model.backbone.drop_rate == 0.3 and (model.config["drop_rate"], model.config["drop_path_rate"]) == (0.3, 0.2)
    drop_paths = [m for m in model.modules() if type(m).__name__ == "DropPath"]
    assert drop_paths and max(m.drop_prob for m in drop_paths) > 0
    rebuilt = EmbeddingModel.from_config(model.config)
    assert rebuilt.backbone.drop_rate == 0.3
    images = torch.randn(4, 3, 32, 32)
    model.train()
    assert not torch.equal(model(images), model(images))  # random layers are active in training
    model.eval()
    assert torch.equal(model(images), model(images))


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


def _leaf_transforms(transforms):
    for transform in transforms:
        if isinstance(transform, A.BaseCompose):
            yield from _leaf_transforms(transform.transforms)
        else:
            yield transform


@pytest.mark.parametrize("preset", AUGMENT_PRESETS)
@pytest.mark.parametrize("hflip, colour_ops", [(True, True), (False, False)])
def test_every_augmentation_argument_is_an_albumentations_2_name(preset, hflip, colour_ops):
    transforms = training_augmentations(32, preset, hflip, colour_ops)
    for transform in _leaf_transforms(transforms):
        assert not transform.invalid_args, (type(transform).__name__, transform.invalid_args)


def test_a_wrong_argument_name_stops_the_pipeline(monkeypatch):
    # a 1.x name (CoarseDropout(max_holes=...)) is dropped with a warning unless Compose is strict
    monkeypatch.setattr(augment_images, "training_augmentations", lambda *args: [A.CoarseDropout(max_holes=8)])
    with pytest.raises(ValueError, match="max_holes"), pytest.warns(UserWarning, match="max_holes"):
        A2ClothingTransform(32)


def _applied_ops(preset, hflip=True, colour_ops=True, n=300):
    """Names of the leaf transforms that fired over ``n`` augmentations of one image."""
    transform = A2ClothingTransform(32, preset=preset, hflip=hflip, colour_ops=colour_ops, seed=0)
    transform.augment = A.Compose(transform.augment.transforms, strict=True, seed=0, save_applied_params=True)
    image = np.random.default_rng(0).integers(0, 256, (40, 40, 3), dtype=np.uint8)
    fired = Counter()
    for _ in range(n):
        fired.update(name for name, _ in transform.augment(image=image)["applied_transforms"])
    return fired


def test_colour_ops_are_in_the_default_pipeline_and_fire():
    fired = _applied_ops("colour_agnostic")
    # OneOf(p=0.8) over four ops: each fires in about 20 % of the images
    for name in COLOUR_OPS:
        assert 30 <= fired[name] <= 100, (name, fired[name])
    assert 90 <= fired["HorizontalFlip"] <= 210 and fired["ColorJitter"] > 100
    without = _applied_ops("colour_agnostic", hflip=False, colour_ops=False)
    assert not set(COLOUR_OPS) & set(without) and "ColorJitter" not in without and "HorizontalFlip" not in without
    assert without["RandomBrightnessContrast"] > 100 and without["CoarseDropout"] + without["GridDropout"] > 50


def test_colour_ops_really_remove_colour():
    image = np.zeros((32, 32, 3), dtype=np.uint8)
    image[..., 0] = 200  # pure red
    grey = A.Compose([A.ToGray(num_output_channels=3, p=1.0)], strict=True)(image=image)["image"]
    assert (grey[..., 0] == grey[..., 1]).all() and (grey[..., 1] == grey[..., 2]).all()
    views = [A2ClothingTransform(32, seed=s).augment_image(image) for s in range(40)]
    dominant = Counter(int(v.reshape(-1, 3).mean(0).argmax()) for v in views)
    assert len(dominant) == 3  # red becomes green or blue in some views: hue is not a cue


def test_presets_differ_and_light_is_a_crop_only():
    names = {p: [type(t).__name__ for t in _leaf_transforms(training_augmentations(32, p))] for p in AUGMENT_PRESETS}
    assert names["light"] == ["RandomResizedCrop"]
    assert names["standard"] == ["RandomResizedCrop", "HorizontalFlip", "ColorJitter"]
    assert set(COLOUR_OPS) <= set(names["colour_agnostic"])
    with pytest.raises(ValueError, match="unknown augmentation preset"):
        training_augmentations(32, "strong")


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


@pytest.mark.parametrize("size, interpolation, crop_pct", [(32, "bicubic", 0.95), (32, "bilinear", 0.875),
                                                           ((24, 40), "bicubic", 0.9), (32, "nearest", 1.0)])
def test_eval_transform_equals_timms_eval_transform(size, interpolation, crop_pct):
    from PIL import Image

    image = np.random.default_rng(3).integers(0, 256, (50, 70, 3), dtype=np.uint8)
    height, width = (size, size) if isinstance(size, int) else size
    reference = timm.data.create_transform(input_size=(3, height, width), interpolation=interpolation, crop_pct=crop_pct,
                                           crop_mode="center", mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3))
    ours = EvalTransform(size, (0.5, 0.4, 0.3), (0.2, 0.25, 0.3), interpolation, crop_pct)(image)
    torch.testing.assert_close(ours, reference(Image.fromarray(image)), atol=1e-5, rtol=0)


def test_eval_transform_follows_the_model_config():
    model = EmbeddingModel("test_vit", emb_dim=8, img_size=32)
    assert (model.config["interpolation"], model.config["crop_pct"]) == ("bicubic", 0.95)
    image = np.random.default_rng(4).integers(0, 256, (60, 45, 3), dtype=np.uint8)
    from_config = EvalTransform.from_config(model.config)(image)
    plain_resize = EvalTransform(32, model.config["mean"], model.config["std"])(image)
    assert from_config.shape == plain_resize.shape == (3, 32, 32)
    assert not torch.allclose(from_config, plain_resize, atol=1e-2)  # the crop and filter matter
    white = EvalTransform(16, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))(np.full((20, 30, 3), 255, dtype=np.uint8))
    torch.testing.assert_close(white, torch.ones(3, 16, 16))


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


def _preview_cells(tmp_path, *flags, grid=(4, 5), size=16):
    """The augmented cells (the original, cell 0, left out) of a preview of a red-left / blue-right image."""
    image = np.zeros((40, 40, 3), dtype=np.uint8)
    image[:, :20, 0] = 200
    image[:, 20:, 2] = 200
    write_image_rgb(tmp_path / "halves.png", image)
    output = tmp_path / f"preview{'_'.join(flags)}.png"
    augment_main([str(tmp_path / "halves.png"), "--grid", *map(str, grid), "--img_size", str(size), "--output",
                  str(output), *flags])
    picture = read_image_rgb(output).astype(int)
    cells = [picture[r * size : (r + 1) * size, c * size : (c + 1) * size] for r in range(grid[0]) for c in range(grid[1])]
    return cells[1:]


def _mirrored(cell):
    """Whether the cell shows blue left of red (the original has red on the left)."""
    red_minus_blue = (cell[..., 0] - cell[..., 2]).mean(axis=0)  # per column
    half = len(red_minus_blue) // 2
    return red_minus_blue[:half].mean() < red_minus_blue[half:].mean() - 20


def test_preview_cli_shows_the_chosen_preset_and_switches(tmp_path):
    # light is a crop only: no green ever appears (the default preset shuffles channels and rotates hue)
    assert all((cell[..., 1] == 0).all() for cell in _preview_cells(tmp_path, "--augment", "light"))
    assert any((cell[..., 1] > 50).any() for cell in _preview_cells(tmp_path))
    # standard flips half of the images, --no_hflip none of them
    assert any(_mirrored(cell) for cell in _preview_cells(tmp_path, "--augment", "standard", "--no_colour_ops"))
    assert not any(_mirrored(cell) for cell in _preview_cells(tmp_path, "--augment", "standard", "--no_colour_ops",
                                                              "--no_hflip"))
