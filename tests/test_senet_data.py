"""SENet face-feature data: the folder layout and its errors, person split, batches, identity dimensions."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from myutils.face.data import (
    FacePairDataset,
    PersonBatchSampler,
    load_face_feature_folder,
    rank_identity_dimensions,
    split_persons,
)
from myutils.synthetic.faces import (
    DEFAULT_STRENGTH,
    FAMILIES,
    generate_face_features,
    make_distortion,
    make_face_feature_data,
)


@pytest.fixture()
def small_folder(tmp_path):
    make_face_feature_data(tmp_path / "faces", num_persons=10, fronts_per_person=2, frames_per_person=5,
                           feature_dim=24, num_identity_dims=4, pose_rank=2, seed=1)
    return tmp_path / "faces"


def test_folder_round_trip(small_folder):
    folder = load_face_feature_folder(small_folder)
    assert folder.person_names == [f"person_{i:04d}" for i in range(10)]
    assert folder.front_features.shape == (20, 24) and folder.video_features.shape == (50, 24)
    assert folder.video_poses.shape == (50, 3)
    assert np.bincount(folder.video_person).tolist() == [5] * 10
    assert np.allclose(np.linalg.norm(folder.video_features, axis=1), 1.0, atol=1e-5)
    saved = json.loads((small_folder / "video_metadata.json").read_text(encoding="utf-8"))
    assert np.allclose(np.asarray(saved["poses"], dtype=np.float32), folder.video_poses)


def test_missing_file_and_fields_are_named(small_folder):
    (small_folder / "video_feature.npy").rename(small_folder / "moved.npy")
    with pytest.raises(FileNotFoundError, match="video_feature.npy"):
        load_face_feature_folder(small_folder)
    (small_folder / "moved.npy").rename(small_folder / "video_feature.npy")

    path = small_folder / "video_metadata.json"
    original = json.loads(path.read_text(encoding="utf-8"))
    path.write_text(json.dumps({k: v for k, v in original.items() if k != "poses"}), encoding="utf-8")
    with pytest.raises(ValueError, match="'poses'"):
        load_face_feature_folder(small_folder)
    broken = dict(original, metadata=[{"image_path": "x"}] + original["metadata"][1:])
    path.write_text(json.dumps(broken), encoding="utf-8")
    with pytest.raises(ValueError, match=r"metadata\[0\].*'person_name'"):
        load_face_feature_folder(small_folder)
    path.write_text(json.dumps(dict(original, metadata=original["metadata"][:-1])), encoding="utf-8")
    with pytest.raises(ValueError, match="49 entries but the feature file has 50 rows"):
        load_face_feature_folder(small_folder)


def test_non_finite_features_are_rejected(small_folder):
    features = np.load(small_folder / "front_feature.npy")
    features[3, 0] = np.nan
    np.save(small_folder / "front_feature.npy", features)
    with pytest.raises(ValueError, match="NaN/Inf.*row 3"):
        load_face_feature_folder(small_folder)


def test_split_is_by_person_and_seeded():
    train, val, test = split_persons(20, seed=42)
    assert (len(train), len(val), len(test)) == (12, 6, 2)
    assert sorted(train + val + test) == list(range(20))
    assert split_persons(20, seed=42) == (train, val, test)
    assert split_persons(20, seed=7) != (train, val, test)
    assert all(len(part) == 1 for part in split_persons(3))
    with pytest.raises(ValueError, match="at least 3 persons"):
        split_persons(2)


def test_pairs_cover_every_frontal_video_combination(small_folder):
    folder = load_face_feature_folder(small_folder)
    dataset = FacePairDataset(folder, [1, 4])
    assert len(dataset) == 2 * (2 * 5)
    item = dataset[3]
    front_index, video_index = dataset.pairs[3]
    assert folder.front_person[front_index] == folder.video_person[video_index] == int(item["label"])
    assert np.array_equal(item["src"].numpy(), folder.video_features[video_index])
    assert np.array_equal(item["tgt"].numpy(), folder.front_features[front_index])
    assert set(dataset.labels.tolist()) == {1, 4}


def test_person_batches_cover_each_sample_once_with_positives():
    labels = np.repeat(np.arange(9), [6, 6, 5, 8, 4, 6, 7, 6, 3])
    sampler = PersonBatchSampler(labels, batch_size=12, samples_per_person=4, seed=3)
    batches = list(sampler)
    assert len(batches) == len(sampler)
    assert sorted(i for batch in batches for i in batch) == list(range(len(labels)))
    for batch in batches[:-1]:
        assert len(batch) <= 12
    assert len(batches[-1]) <= 12 + 4  # a lone last group joins the last full batch
    for batch in batches:
        assert np.unique(labels[batch], return_counts=True)[1].min() >= 2  # every sample has a positive
    assert list(sampler) == batches  # same epoch, same order
    sampler.set_epoch(1)
    assert list(sampler) != batches
    with pytest.raises(ValueError, match="samples_per_person"):
        PersonBatchSampler(labels, batch_size=6, samples_per_person=4)


@pytest.mark.parametrize("num_persons", [5, 7, 9])
def test_no_batch_is_a_lone_sample(num_persons):
    """Persons with a single pair: batches of 2 groups would leave one sample last (BatchNorm cannot train on it)."""
    labels = np.arange(num_persons)
    sampler = PersonBatchSampler(labels, batch_size=8, samples_per_person=4, seed=0)  # 2 groups per batch
    for epoch in range(4):
        sampler.set_epoch(epoch)
        batches = list(sampler)
        assert len(batches) == len(sampler) == num_persons // 2
        assert min(len(batch) for batch in batches) >= 2
        assert sorted(i for batch in batches for i in batch) == list(range(num_persons))
    assert len(list(PersonBatchSampler([0], batch_size=8, samples_per_person=4))) == 1  # nothing is dropped


def test_identity_dimensions_are_found_where_planted():
    data = generate_face_features(num_persons=80, fronts_per_person=1, frames_per_person=10, feature_dim=64,
                                  num_identity_dims=6, pose_rank=4, seed=5)
    person = np.repeat(np.arange(80), 10)
    side, frontal = data["video_features"], data["front_features"][person]
    dims, correlation = rank_identity_dimensions(side, frontal, 6)
    assert sorted(dims) == data["identity_dims"]
    for d in (dims[0], 0, 63):
        assert correlation[d] == pytest.approx(np.corrcoef(side[:, d], frontal[:, d])[0, 1], abs=1e-6)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_every_family_keeps_identity_dims_and_is_the_identity_at_frontal_pose(family):
    rng = np.random.default_rng(0)
    distortion = make_distortion(family, 64, 6, None, rng)
    identity = rng.standard_normal((40, 64))
    identity /= np.linalg.norm(identity, axis=1, keepdims=True)
    profile = np.column_stack([rng.choice([-90.0, 90.0], 40), rng.uniform(-30, 30, 40), rng.uniform(-20, 20, 40)])
    distorted = distortion(identity, profile)
    dims = distortion.identity_dims
    assert np.allclose(distorted[:, dims], identity[:, dims])  # planted dimensions are pose-invariant
    assert np.allclose(distortion(identity, np.zeros((40, 3))), identity)  # a frontal face is undistorted
    rolled = profile.copy()
    rolled[:, 2] = 0.0
    assert np.allclose(distortion(identity, rolled), distorted)  # roll has no effect
    change = np.linalg.norm(distorted - identity, axis=1).mean()
    assert change > 0.5  # a profile moves the feature a lot


def test_family_specific_properties():
    rng = np.random.default_rng(1)
    identity = rng.standard_normal((30, 64))
    identity /= np.linalg.norm(identity, axis=1, keepdims=True)
    poses = rng.uniform([-90, -30, -20], [90, 30, 20], size=(30, 3))
    mixing = make_distortion("mixing", 64, 4, None, rng)
    mixed = mixing(identity, poses)
    assert np.allclose(np.linalg.norm(mixed, axis=1), 1.0)  # a rotation: nothing added, nothing lost
    # the same rotation for every person: distorting a sum is the sum of the distortions (linear in f)
    assert np.allclose(mixing(identity[:10] + identity[10:20], poses[:10]),
                       mixing(identity[:10], poses[:10]) + mixing(identity[10:20], poses[:10]))
    residual = make_distortion("residual", 64, 4, None, rng, rank=4, offset=0.0)
    yaw = np.column_stack([np.full(30, 90.0), np.zeros((30, 2))])
    change = np.linalg.norm(residual(identity, yaw) - identity, axis=1)
    assert change.mean() == pytest.approx(DEFAULT_STRENGTH["residual"], rel=0.35)  # ~strength × |f| at 90°
    nonlinear = make_distortion("nonlinear", 64, 4, 3.0, rng)
    half = nonlinear(identity, yaw / 2) - identity
    full = nonlinear(identity, yaw) - identity
    assert not np.allclose(2 * half, full, rtol=0.05)  # not linear in the pose
    with pytest.raises(ValueError, match="unknown distortion family"):
        make_distortion("affine", 64, 4, None, rng)


def test_make_data_script_refuses_to_overwrite(tmp_path, repo_root):
    command = [sys.executable, str(repo_root / "scripts/make_face_feature_data.py"), "--out", str(tmp_path / "d"),
               "--num_persons", "4", "--frames_per_person", "3", "--feature_dim", "20", "--num_identity_dims", "2",
               "--pose_rank", "2"]
    first = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert first.returncode == 0, first.stderr
    assert "Wrote 4 frontal and 12 video features (20-d)" in first.stdout  # one frontal per person by default
    with pytest.raises(FileExistsError, match="already exists"):
        make_face_feature_data(tmp_path / "d", num_persons=4)
    assert load_face_feature_folder(tmp_path / "d").video_features.shape == (12, 20)
    mixing = subprocess.run(command[:3] + [str(tmp_path / "m"), *command[4:], "--family", "mixing"],
                            capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert mixing.returncode == 0, mixing.stderr
    saved = json.loads((tmp_path / "m" / "video_metadata.json").read_text(encoding="utf-8"))
    assert saved["generator"]["family"] == "mixing" and saved["generator"]["strength"] == DEFAULT_STRENGTH["mixing"]
