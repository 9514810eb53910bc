"""ROI feature extraction, shards and main_train.py (single process, resume, torchrun with 2 ranks)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import main_train
from myutils.data.image_io import read_image_rgb
from myutils.detection.detector import YOLOv7Detector
from myutils.roi.encoder import load_roi_encoder
from myutils.roi.features import roi_align_features
from myutils.roi.shards import RoiFeatureDataset, RoiShardWriter
from myutils.synthetic.scenes import generate_scene, write_mot_sequence, write_validation_pairs
from myutils.training.checkpoint import load_checkpoint
from scripts.extract_roi_features import extract_roi_features, parse_args

REPO = Path(__file__).resolve().parents[1]


def test_extraction_from_mot_ground_truth(tmp_path):
    scene = generate_scene(num_frames=4, num_objects=4, width=320, height=192, seed=2)
    sequence = write_mot_sequence(scene, tmp_path / "SEQ")
    (sequence / "img1" / "000003.jpg").write_bytes(b"not a jpeg")  # corrupt frame: skipped and counted
    args = parse_args(["--source", str(sequence), "--boxes", "gt", "--img_size", "128", "--min_visibility", "0.3",
                       "--output", str(tmp_path / "features"), "--shard_size", "3"])
    with pytest.warns(UserWarning, match="randomly initialised"):
        summary = extract_roi_features(args)
    gt = scene.ground_truth
    expected = gt[(gt[:, 8] >= 0.3) & (gt[:, 0] != 3)]
    assert summary["skipped_images"] == 1 and summary["rois"] == len(expected) > 0
    dataset = RoiFeatureDataset(tmp_path / "features")
    assert len(dataset) == len(expected) and dataset.metadata["img_size"] == 128
    np.testing.assert_array_equal(dataset.identities.numpy(), expected[:, 1])
    np.testing.assert_allclose(dataset.boxes[:, :2].numpy(), expected[:, 2:4])
    # the stored features are what the detector backbone + ROI align give for that frame (fp16 storage)
    with pytest.warns(UserWarning):
        detector = YOLOv7Detector(None, img_size=128, seed=0)
    first = dataset.image_names[0]
    features, letterbox = detector.backbone_features(read_image_rgb(first))
    rows = [i for i, name in enumerate(dataset.image_names) if name == first]
    direct = roi_align_features(features, dataset.boxes[rows], letterbox)
    stored = torch.stack([dataset[i][0] for i in rows])
    torch.testing.assert_close(stored, direct, rtol=2e-3, atol=2e-3 * float(direct.abs().max()))
    with pytest.raises(FileExistsError):
        RoiShardWriter(tmp_path / "features")


def _random_shards(path: Path, count: int, low_score: int) -> None:
    generator = torch.Generator().manual_seed(0)
    writer = RoiShardWriter(path, shard_size=7, metadata={"img_size": 128, "random_weights_seed": 0})
    for image in range(count // 4):
        scores = torch.ones(4)
        if image < low_score:
            scores[0] = 0.1  # below --conf_threshold 0.3: never trained on
        writer.add(f"img{image}.jpg", torch.randn(4, 512, 2, 2, generator=generator),
                   torch.tensor([[0.0, 0.0, 10.0, 10.0]] * 4), scores, torch.arange(4))
    writer.close()


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    path = tmp_path_factory.mktemp("shards")
    _random_shards(path, count=24, low_score=4)  # 24 ROIs, 4 filtered out -> 20
    return path


def _args(shards, output, *extra):
    return ["--data", str(shards), "--output_dir", str(output), "--batch_size", "8", "--warmup_epochs", "1",
            "--workers", "0", "--seed", "3", *extra]


def test_confidence_filter(shards):
    assert len(RoiFeatureDataset(shards, min_confidence=0.3)) == 20
    assert len(RoiFeatureDataset(shards)) == 24
    with pytest.raises(ValueError, match="no ROIs"):
        RoiFeatureDataset(shards, min_confidence=2.0)


def test_resume_continues_exactly(shards, tmp_path):
    straight = main_train.train(main_train.parse_args(_args(shards, tmp_path / "a", "--epochs", "2", "--save_interval", "1")))
    assert len(straight["loss"]) == 2 and all(np.isfinite(straight["loss"]))
    first = tmp_path / "a" / "checkpoints" / "epoch_0001.pth"
    resumed = main_train.train(main_train.parse_args(_args(shards, tmp_path / "b", "--epochs", "2", "--resume", str(first))))
    assert resumed["epoch"] == [1, 2]
    final_a = torch.load(tmp_path / "a" / "checkpoints" / "last.pth", weights_only=True)
    final_b = torch.load(tmp_path / "b" / "checkpoints" / "last.pth", weights_only=True)
    for key, value in final_a["encoder"].items():
        torch.testing.assert_close(final_b["encoder"][key], value, msg=key)
    assert final_b["feature_metadata"]["img_size"] == 128
    assert (tmp_path / "a" / "curves.png").is_file() and json.loads((tmp_path / "a" / "history.json").read_text())["epoch"] == [1, 2]
    assert list((tmp_path / "a" / "tensorboard").glob("events.out.tfevents.*"))


def test_torchrun_two_ranks_see_disjoint_parts_covering_the_set(shards, tmp_path):
    output = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    command = [str(Path(sys.executable).parent / "torchrun"), "--standalone", "--nproc_per_node=2",
               str(REPO / "main_train.py"), *_args(shards, output, "--epochs", "1", "--log_sample_indices")]
    run = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    indices = json.loads((output / "sample_indices.json").read_text())["1"]
    rank0, rank1 = set(indices[0]), set(indices[1])
    assert len(indices[0]) == len(rank0) == 10 and len(indices[1]) == len(rank1) == 10
    assert not rank0 & rank1 and rank0 | rank1 == set(range(20))
    checkpoint = load_checkpoint(output / "checkpoints" / "last.pth")
    assert checkpoint["epoch"] == 1 and "2 process(es)" in run.stdout
    encoder = load_roi_encoder(output / "checkpoints" / "last.pth")
    assert encoder(torch.randn(3, 512, 10, 10)).shape == (3, 128)


def test_extraction_with_detector_boxes_and_json_labels(tmp_path):
    scene = generate_scene(num_frames=12, num_objects=4, width=256, height=160, seed=6)
    pairs = write_validation_pairs(scene, tmp_path / "val", num_pairs=2, frame_gap=4, min_visibility=0.0)
    images = pairs / "now" / "pic"
    with pytest.warns(UserWarning):
        json_summary = extract_roi_features(parse_args([
            "--source", str(images), "--boxes", "json", "--label_dir", str(pairs / "now" / "lable"),
            "--img_size", "128", "--output", str(tmp_path / "from_json")]))
    labels = [json.loads((pairs / "now" / "lable" / f"{k}.json").read_text())["annotations"] for k in range(2)]
    dataset = RoiFeatureDataset(tmp_path / "from_json")
    assert json_summary["rois"] == len(dataset) == sum(map(len, labels))
    assert dataset.identities.tolist() == [a["id"] for frame in labels for a in frame]
    with pytest.warns(UserWarning):
        detector_summary = extract_roi_features(parse_args([
            "--source", str(images), "--boxes", "detector", "--conf_threshold", "0.05", "--img_size", "128",
            "--output", str(tmp_path / "from_detector")]))
    with pytest.warns(UserWarning):
        detector = YOLOv7Detector(None, img_size=128, conf_threshold=0.05, seed=0)
    detections = [detector(read_image_rgb(images / f"{k}.jpg")) for k in range(2)]
    assert detector_summary["rois"] == sum(len(d.boxes) for d in detections)
    if detector_summary["rois"]:
        stored = RoiFeatureDataset(tmp_path / "from_detector")
        assert (stored.scores >= 0.05).all() and (stored.identities == -1).all()
        torch.testing.assert_close(stored.scores, torch.cat([d.scores for d in detections]))


def test_bf16_autocast_training_step(shards, tmp_path):
    history = main_train.train(main_train.parse_args(_args(shards, tmp_path / "bf16", "--epochs", "1", "--amp", "bf16")))
    assert np.isfinite(history["loss"][0]) and history["samples_per_s"][0] > 0
    state = load_checkpoint(tmp_path / "bf16" / "checkpoints" / "last.pth")
    assert all(value.dtype != torch.bfloat16 for value in state["encoder"].values())  # weights stay fp32
