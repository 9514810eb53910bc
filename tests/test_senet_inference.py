"""Using a trained mapper: scripts/map_face_features.py on the seed's files, and the ONNX export's parity."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from myutils.cli import run
from myutils.export.onnx import onnxruntime_outputs
from scripts.export_onnx import export_onnx
from scripts.map_face_features import main
from train_transformer3D.triplet.senet_inference import load_trained_model, map_feature_file
from train_transformer3D.triplet.senet_trainer import SmallSplitWarning
from train_transformer3D.triplet.synthetic_faces import make_face_feature_data
from train_transformer3D.triplet.train_senet_triplet import train_senet_triplet

TINY = {"image_dim": 24, "hidden_dim": 32, "se_reduction": 4, "batch_size": 16, "num_workers": 0, "lr": 3e-3,
        "num_identity_dims": 4, "epochs": 2, "save_interval": 2}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Checkpoints of both architectures, trained by the real trainer on the seed's folder layout."""
    root = tmp_path_factory.mktemp("mapper")
    data = root / "faces"
    make_face_feature_data(data, num_persons=30, fronts_per_person=1, frames_per_person=4, feature_dim=24,
                           num_identity_dims=4, pose_rank=2, seed=5)
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", SmallSplitWarning)  # 30 persons: enough to map, too few to evaluate
            for name, options in {"senet": {}, "baseline": {"architecture": "residual_mlp"}}.items():
                train_senet_triplet(data_dir=data, save_dir=str(root / name), log_dir=str(root / name / "logs"),
                                    **TINY, **options)
    finally:
        torch.set_num_threads(previous)
    return root, data


def _expected(model_path, features, poses):
    model = load_trained_model(model_path)
    with torch.no_grad():
        front, _ = model(torch.from_numpy(features), torch.from_numpy(poses))
    return F.normalize(front, dim=1).numpy()


def test_map_script_writes_mapped_unit_features_row_for_row(trained, tmp_path, repo_root):
    root, data = trained
    model_path = root / "senet" / "best_model.pth"
    output = tmp_path / "out" / "mapped.npy"
    result = subprocess.run(
        [sys.executable, str(repo_root / "scripts/map_face_features.py"), "--model", str(model_path),
         "--features", str(data / "video_feature.npy"), "--metadata", str(data / "video_metadata.json"),
         "--output", str(output), "--batch_size", "7"],
        capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "Mapped 120 of 120 rows (24-d, senet, cpu" in result.stdout
    mapped = np.load(output)
    features = np.load(data / "video_feature.npy")
    poses = np.asarray(json.loads((data / "video_metadata.json").read_text())["poses"], dtype=np.float32)
    assert mapped.dtype == np.float32 and mapped.shape == features.shape
    np.testing.assert_allclose(mapped, _expected(model_path, features, poses), atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(mapped, axis=1), 1.0, atol=1e-5)
    assert not np.allclose(mapped, features, atol=1e-3)  # it did map


def test_non_finite_rows_are_skipped_counted_and_left_nan(trained, tmp_path, capsys):
    root, data = trained
    features = np.load(data / "video_feature.npy")
    features[[3, 10]] = np.nan
    np.save(tmp_path / "features.npy", features)
    metadata = json.loads((data / "video_metadata.json").read_text())
    metadata["poses"][5][0] = float("inf")
    (tmp_path / "meta.json").write_text(json.dumps(metadata))  # Python's json writes Infinity
    summary = map_feature_file(root / "baseline" / "best_model.pth", tmp_path / "features.npy", tmp_path / "meta.json",
                               tmp_path / "mapped.npy", batch_size=16, progress=False)
    assert (summary["num_mapped"], summary["num_skipped"], summary["architecture"]) == (117, 3, "residual_mlp")
    mapped = np.load(tmp_path / "mapped.npy")
    assert np.isnan(mapped[[3, 5, 10]]).all() and np.isfinite(np.delete(mapped, [3, 5, 10], axis=0)).all()
    poses = np.asarray(metadata["poses"], dtype=np.float32)
    keep = np.setdiff1d(np.arange(len(features)), [3, 5, 10])
    np.testing.assert_allclose(mapped[keep], _expected(root / "baseline" / "best_model.pth", features[keep], poses[keep]),
                               atol=1e-5)


def test_map_script_errors_name_the_problem(trained, tmp_path, capsys):
    root, data = trained
    model = str(root / "senet" / "best_model.pth")
    np.save(tmp_path / "wide.npy", np.zeros((120, 32), dtype=np.float32))
    cases = {
        "24-d features with 3 pose angles": ["--features", str(tmp_path / "wide.npy")],
        "'poses' must be 120 finite rows": ["--metadata", str(data / "front_metadata.json")],
        "expected a .npy path": ["--output", str(tmp_path / "mapped.txt")],
    }
    for expected, change in cases.items():
        argv = {"--model": model, "--features": str(data / "video_feature.npy"),
                "--metadata": str(data / "video_metadata.json"), "--output": str(tmp_path / "m.npy")}
        argv.update(dict(zip(change[::2], change[1::2], strict=True)))
        with pytest.raises(SystemExit) as exit_info:
            run(main, [item for pair in argv.items() for item in pair])
        assert exit_info.value.code == 2
        assert expected in capsys.readouterr().err
    assert not (tmp_path / "m.npy").exists()


@pytest.mark.parametrize("name", ["senet", "baseline"])
def test_onnx_export_matches_pytorch_at_any_batch_size(trained, tmp_path, name):
    root, _ = trained
    checkpoint = root / name / "best_model.pth"
    report = export_onnx("senet", tmp_path / name, checkpoint=checkpoint)
    assert max(report["max_abs_diff"].values()) <= 1e-4
    assert report["dynamic_axes"]["features"] == {0: "batch"}
    sidecar = json.loads((tmp_path / f"{name}.json").read_text())
    assert sidecar["model_config"]["architecture"] == ("senet" if name == "senet" else "residual_mlp")
    model = load_trained_model(checkpoint)
    for batch in (1, 7):
        generator = torch.Generator().manual_seed(batch)
        features = F.normalize(torch.randn(batch, 24, generator=generator), dim=1)
        poses = torch.rand(batch, 3, generator=generator) * 180 - 90
        mapped, identity = onnxruntime_outputs(tmp_path / f"{name}.onnx",
                                               {"features": features.numpy(), "poses": poses.numpy()})
        with torch.no_grad():
            front, expected_identity = model(features, poses)
        assert np.abs(mapped - F.normalize(front, dim=1).numpy()).max() <= 1e-4
        assert np.abs(identity - expected_identity.numpy()).max() <= 1e-4


def test_export_refuses_a_missing_checkpoint(tmp_path):
    with pytest.raises(ValueError, match="--checkpoint .*no such file"):
        export_onnx("senet", tmp_path / "x", checkpoint=tmp_path / "missing.pth")


@pytest.mark.cuda
def test_mapping_on_cuda_matches_cpu(trained, tmp_path):
    root, data = trained
    model = root / "senet" / "best_model.pth"
    args = (model, data / "video_feature.npy", data / "video_metadata.json")
    cuda = map_feature_file(*args, tmp_path / "cuda.npy", device="cuda", progress=False)
    map_feature_file(*args, tmp_path / "cpu.npy", device="cpu", progress=False)
    assert cuda["device"].startswith("cuda")
    np.testing.assert_allclose(np.load(tmp_path / "cuda.npy"), np.load(tmp_path / "cpu.npy"), atol=1e-4)
