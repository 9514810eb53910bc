"""ROI feature extraction, shards and main_train.py (single process, resume, torchrun with 2 ranks)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from by_hand import roi_features_by_hand

import main_train
from myutils.data.image_io import read_image_rgb
from myutils.detection.detector import YOLOv7Detector
from myutils.detection.yolov7_checkpoint import load_yolov7_checkpoint
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


def _torchrun(output: Path, shards: Path, *extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    command = [str(Path(sys.executable).parent / "torchrun"), "--standalone", "--nproc_per_node=2",
               str(REPO / "main_train.py"), *_args(shards, output, *extra)]
    run = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    return run


def test_torchrun_two_ranks_disjoint_parts_and_exact_resume(shards, tmp_path):
    """Two ranks see disjoint halves; a resumed run restores both ranks' RNG and ends bit-identical."""
    straight = _torchrun(tmp_path / "ddp", shards, "--epochs", "2", "--save_interval", "1", "--log_sample_indices")
    for epoch, indices in json.loads((tmp_path / "ddp" / "sample_indices.json").read_text()).items():
        rank0, rank1 = set(indices[0]), set(indices[1])
        assert len(indices[0]) == len(rank0) == 10 and len(indices[1]) == len(rank1) == 10, epoch
        assert not rank0 & rank1 and rank0 | rank1 == set(range(20)), epoch
    assert "2 process(es)" in straight.stdout
    first = load_checkpoint(tmp_path / "ddp" / "checkpoints" / "epoch_0001.pth")
    assert len(first["rng"]) == 2
    # the ranks draw different noise: a resume that gave rank 1 rank 0's state would not repeat the run
    assert not torch.equal(first["rng"][0]["torch"], first["rng"][1]["torch"])
    _torchrun(tmp_path / "resumed", shards, "--epochs", "2", "--resume",
              str(tmp_path / "ddp" / "checkpoints" / "epoch_0001.pth"))
    final = load_checkpoint(tmp_path / "ddp" / "checkpoints" / "last.pth")
    resumed = load_checkpoint(tmp_path / "resumed" / "checkpoints" / "last.pth")
    assert resumed["epoch"] == final["epoch"] == 2
    for key, value in final["encoder"].items():
        assert torch.equal(resumed["encoder"][key], value), key
    encoder = load_roi_encoder(tmp_path / "resumed" / "checkpoints" / "last.pth")
    assert encoder(torch.randn(3, 512, 10, 10)).shape == (3, 128)


def test_extraction_with_detector_boxes_and_json_labels(tmp_path, planted_weights):
    scene = generate_scene(num_frames=12, num_objects=4, width=320, height=192, seed=6)
    pairs = write_validation_pairs(scene, tmp_path / "val", num_pairs=3, frame_gap=4, min_visibility=0.0)
    images = pairs / "now" / "pic"
    with pytest.warns(UserWarning):
        json_summary = extract_roi_features(parse_args([
            "--source", str(images), "--boxes", "json", "--label_dir", str(pairs / "now" / "lable"),
            "--img_size", "128", "--output", str(tmp_path / "from_json"), "--batch_size", "2"]))
    labels = [json.loads((pairs / "now" / "lable" / f"{k}.json").read_text())["annotations"] for k in range(3)]
    dataset = RoiFeatureDataset(tmp_path / "from_json")
    assert json_summary["rois"] == len(dataset) == sum(map(len, labels))
    assert dataset.identities.tolist() == [a["id"] for frame in labels for a in frame]
    # planted weights: class 2's 18x18 boxes in every stride-32 cell; 3 images in batches of 2
    summary = extract_roi_features(parse_args([
        "--source", str(images), "--boxes", "detector", "--yolo_weights", str(planted_weights.path),
        "--classes", "2", "--conf_threshold", "0.3", "--img_size", "128", "--batch_size", "2",
        "--output", str(tmp_path / "from_detector")]))
    stored = RoiFeatureDataset(tmp_path / "from_detector")
    assert stored.metadata["classes"] == [2]
    model = load_yolov7_checkpoint(planted_weights.path).model
    bias = model.detect.m[2].bias.detach().view(3, -1)[1].double()
    side = float((2 * bias[2].sigmoid()) ** 2) * 192  # anchor 1 of stride 32 is 192 x 243 px
    score = float(bias[4].sigmoid() * bias[7].sigmoid())
    expected_rows, expected_rois = [], []
    scale, left, top = 0.4, 0, (128 - 77) // 2  # 320 x 192 -> 128 x 77, padded above and below
    for k in range(3):
        boxes_input = torch.tensor([[cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2]
                                    for cy in (16, 48, 80, 112) for cx in (16, 48, 80, 112)], dtype=torch.float32)
        original = (boxes_input - torch.tensor([left, top, left, top])) / scale
        original = torch.minimum(original.clamp(min=0), torch.tensor([320.0, 192.0, 320.0, 192.0]))
        keep = (original[:, 2] > original[:, 0]) & (original[:, 3] > original[:, 1])  # not in the padding
        image = read_image_rgb(images / f"{k}.jpg")
        expected_rois.append(roi_features_by_hand(image, original[keep], model, 128))
        expected_rows.append(original[keep])
    expected_boxes = torch.cat(expected_rows)
    assert summary["rois"] == len(stored) == len(expected_boxes) == 3 * 8  # 2 of 4 rows lie in the padding
    torch.testing.assert_close(stored.boxes, expected_boxes, atol=0.05, rtol=0)
    torch.testing.assert_close(stored.scores, torch.full((len(stored),), score), atol=1e-3, rtol=0)
    assert (stored.identities == -1).all()
    expected_features = torch.cat(expected_rois)
    got = torch.stack([stored[i][0] for i in range(len(stored))])
    scale = float(expected_features.abs().max())
    torch.testing.assert_close(got, expected_features, rtol=5e-3, atol=5e-3 * scale)  # fp16 shards


def test_bf16_autocast_training_step(shards, tmp_path):
    history = main_train.train(main_train.parse_args(_args(shards, tmp_path / "bf16", "--epochs", "1", "--amp", "bf16")))
    assert np.isfinite(history["loss"][0]) and history["samples_per_s"][0] > 0
    state = load_checkpoint(tmp_path / "bf16" / "checkpoints" / "last.pth")
    assert all(value.dtype != torch.bfloat16 for value in state["encoder"].values())  # weights stay fp32
