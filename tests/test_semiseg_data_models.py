"""Segmentation data layouts, labelled split, two-stream sampler, augmentation, networks and inference."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch

from myutils.segmentation.data import (
    TrainingSet,
    TwoStreamBatchSampler,
    augment_2d,
    augment_3d,
    case_of_slice,
    evaluation_cases,
    labelled_split,
    read_list,
    training_items,
)
from myutils.segmentation.inference import predict_slices, sliding_window_probabilities, window_starts
from myutils.segmentation.networks import UNet2D, VNet3D
from myutils.synthetic.semiseg_cases import make_acdc_like, make_folder_like, make_la_like


@pytest.fixture(scope="module")
def acdc(tmp_path_factory):
    return make_acdc_like(tmp_path_factory.mktemp("acdc"), train=3, val=1, test=1, size=32, slices=3)


def test_acdc_layout_groups_slices_by_patient_and_labels_the_first_k(acdc):
    assert case_of_slice("patient001_frame01_slice_3") == "patient001"
    assert case_of_slice("case7_slice12") == "case7" and case_of_slice("volume") == "volume"
    split = training_items(acdc, "acdc")
    assert len(split.items) == 3 * 2 * 3 and not split.skipped  # patients x frames x slices
    labelled, unlabelled = labelled_split(split.items, 2)
    assert {split.items[i].case for i in labelled} == {"patient001", "patient002"}
    assert len(labelled) == 12 and len(unlabelled) == 6  # both frames of a labelled patient are labelled
    cases = evaluation_cases(acdc, "acdc", "val.list")
    assert [c.name for c in cases.items] == ["patient004_frame01", "patient004_frame02"]
    with h5py.File(cases.items[0].image) as handle:
        assert handle["image"].shape == handle["label"].shape == (3, 32, 32)
    with pytest.raises(ValueError, match="--labelnum 4 is more than the 3"):
        labelled_split(split.items, 4)


def test_unusable_files_are_skipped_and_counted(acdc, tmp_path):
    root = tmp_path / "broken"
    (root / "data" / "slices").mkdir(parents=True)
    names = ["good_slice_1", "junk_slice_1", "nolabel_slice_1", "mismatch_slice_1", "missing_slice_1"]
    with h5py.File(root / "data/slices/good_slice_1.h5", "w") as f:
        f["image"], f["label"] = np.zeros((8, 8)), np.zeros((8, 8))
    (root / "data/slices/junk_slice_1.h5").write_bytes(b"not an h5 file")
    with h5py.File(root / "data/slices/nolabel_slice_1.h5", "w") as f:
        f["image"] = np.zeros((8, 8))
    with h5py.File(root / "data/slices/mismatch_slice_1.h5", "w") as f:
        f["image"], f["label"] = np.zeros((8, 8)), np.zeros((8, 9))
    (root / "train_slices.list").write_text("\n".join(names) + "\n\n# a comment\n")
    split = training_items(root, "acdc")
    assert [item.name for item in split.items] == ["good_slice_1"]
    assert len(split.skipped) == 4
    assert any("missing 'image' or 'label'" in s for s in split.skipped)
    assert any("differs from label shape" in s for s in split.skipped)
    assert read_list(root / "train_slices.list") == names


def test_folder_layout_images_without_masks_are_unlabelled(tmp_path):
    root = make_folder_like(tmp_path / "folder", labelled=2, unlabelled=3, val=2, size=32)
    split = training_items(root, "folder")
    labelled, unlabelled = labelled_split(split.items, None)
    assert len(labelled) == 2 and len(unlabelled) == 3
    assert len(evaluation_cases(root, "folder", "val").items) == 2
    sample = TrainingSet(split.items, (32, 32))[(unlabelled[0], 0)]
    assert sample["label"].unique().tolist() == [255]  # no mask: nothing to learn from by accident


def test_la_layout_reads_volumes(tmp_path):
    root = make_la_like(tmp_path / "la", train=2, test=1, shape=(20, 18, 16))
    split = training_items(root, "la")
    assert [i.image.parts[-3:] for i in split.items][0] == ("2018LA_Seg_Training Set", "case001", "mri_norm2.h5")
    sample = TrainingSet(split.items, (16, 16, 16))[(0, 5)]
    assert sample["image"].shape == (1, 16, 16, 16) and sample["label"].shape == (16, 16, 16)


def test_two_stream_sampler_is_a_function_of_the_iteration():
    labelled, unlabelled = list(range(5)), list(range(5, 25))
    full = list(TwoStreamBatchSampler(labelled, unlabelled, 2, 3, seed=1, num_iterations=10))
    resumed = list(TwoStreamBatchSampler(labelled, unlabelled, 2, 3, seed=1, num_iterations=10, start_iteration=6))
    assert resumed == full[6:] and len(full) == 10
    assert all(all(i < 5 for i, _ in b[:2]) and all(i >= 5 for i, _ in b[2:]) for b in full)
    # ranks take disjoint parts of each pass: 2 ranks x 2 iterations x 5 unlabelled = one pass of 20
    ranks = [TwoStreamBatchSampler(labelled, unlabelled, 1, 5, seed=3, num_iterations=2, rank=r, world_size=2)
             for r in range(2)]
    seen = [i for sampler in ranks for batch in sampler for i, _ in batch[1:]]
    assert sorted(seen) == unlabelled
    assert len({seed for b in full for _, seed in b}) == 50  # a fresh augmentation seed per sample
    assert full != list(TwoStreamBatchSampler(labelled, unlabelled, 2, 3, seed=2, num_iterations=10))


@pytest.mark.parametrize("dims", [2, 3])
def test_augmentation_moves_image_and_label_together(dims):
    shape = (24, 20) if dims == 2 else (20, 18, 12)
    label = np.zeros(shape, np.int64)
    label[tuple(slice(3, s // 2 + 2) for s in shape)] = 1
    label[tuple(slice(s // 2, s - 2) for s in shape)] = 2
    image = label.astype(np.float32) * 10
    for seed in range(12):
        if dims == 2:
            out_image, out_label = augment_2d(image, label, (24, 20), np.random.default_rng(seed))
        else:
            out_image, out_label = augment_3d(image, label, (16, 16, 16), np.random.default_rng(seed))
        assert out_image.shape == out_label.shape
        assert np.mean(np.abs(out_image - 10 * out_label) < 5) > 0.9, seed  # the same pixels moved


def test_networks_return_logits_and_memory_features():
    unet = UNet2D(1, 4, base_channels=4, embedding_dim=8)
    logits, projection, prediction = unet(torch.randn(2, 1, 32, 48))
    assert logits.shape == (2, 4, 32, 48) and projection.shape == prediction.shape == (2, 8, 32, 48)
    vnet = VNet3D(1, 2, base_channels=2, embedding_dim=0)
    logits, projection, prediction = vnet(torch.randn(1, 1, 16, 16, 32))
    assert logits.shape == (1, 2, 16, 16, 32) and projection is None and prediction is None


def test_sliding_window_of_a_pointwise_network_equals_one_pass():
    """Averaging overlapping windows (and padding a small volume) must give the whole-volume answer."""
    torch.manual_seed(0)
    pointwise = torch.nn.Conv3d(1, 3, 1)

    def logits(x):
        return pointwise(x)

    assert window_starts(37, 16, 8) == [0, 8, 16, 21]
    for shape in [(37, 20, 18), (10, 12, 20)]:  # larger than the patch; smaller in two axes (padding)
        image = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
        probabilities = sliding_window_probabilities(logits, image, (16, 16, 16), (8, 8, 5), 3, torch.device("cpu"))
        with torch.no_grad():
            expected = pointwise(torch.from_numpy(image)[None, None]).softmax(1)[0].numpy()
        np.testing.assert_allclose(probabilities, expected, rtol=1e-5, atol=1e-6)


def test_slice_prediction_of_a_pointwise_network_on_a_volume():
    torch.manual_seed(0)
    pointwise = torch.nn.Conv2d(1, 3, 1)
    volume = np.random.default_rng(2).standard_normal((3, 16, 16)).astype(np.float32)
    prediction = predict_slices(pointwise, volume, (16, 16), torch.device("cpu"))
    with torch.no_grad():
        expected = pointwise(torch.from_numpy(volume)[:, None]).argmax(1).numpy()
    np.testing.assert_array_equal(prediction, expected)
    assert predict_slices(pointwise, volume[0], (16, 16), torch.device("cpu")).shape == (16, 16)
