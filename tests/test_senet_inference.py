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
from myutils.face import inference as senet_inference
from myutils.face.export import example_inputs
from myutils.face.inference import load_trained_model, map_feature_file, map_features
from myutils.face.trainer import SmallSplitWarning
from myutils.synthetic.faces import make_face_feature_data
from scripts.export_onnx import export_onnx
from scripts.map_face_features import main
from train_transformer3D.triplet.train_senet_triplet import train_senet_triplet

TINY = {"image_dim": 24, "hidden_dim": 32, "se_reduction": 4, "batch_size": 16, "num_workers": 0, "lr": 3e-3,
        "num_identity_dims": 4, "epochs": 2, "save_interval": 2}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Checkpoints of the SENet and both baselines, trained by the real trainer on the seed's folder layout."""
    root = tmp_path_factory.mktemp("mapper")
    data = root / "faces"
    make_face_feature_data(data, num_persons=30, fronts_per_person=1, frames_per_person=4, feature_dim=24,
                           num_identity_dims=4, pose_rank=2, seed=5)
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", SmallSplitWarning)  # 30 persons: enough to map, too few to evaluate
            for name, options in {"senet": {}, "baseline": {"architecture": "residual_mlp"},
                                  "dream": {"architecture": "dream"}}.items():
                train_senet_triplet(data_dir=data, save_dir=str(root / name), log_dir=str(root / name / "logs"),
                                    **TINY, **options)
    finally:
        torch.set_num_threads(previous)
    return root, data


# The state dict of a model the first release (before `architecture` and the new defaults) trained, for
# image_dim 4, hidden_dim 6, num_layers 2, se_reduction 2: each module as it named it, with its shape.
# "block" is its Linear (X.0) + BatchNorm1d (X.1), "bn" a BatchNorm1d, "se" the two bias-free Linears.
FIRST_RELEASE_LAYOUT = {
    "residual_gain": ("scalar",), "dual_branch.fusion_logit": ("scalar",),
    "encoder.0": ("block", 7, 6), "encoder.1": ("block", 6, 4),
    "dual_branch.identity_se": ("se", 4, 2), "dual_branch.identity_mlp.0": ("block", 4, 4),
    "dual_branch.identity_mlp.1": ("linear", 4, 4),
    "dual_branch.pose_se": ("se", 4, 2), "dual_branch.pose_mlp.0": ("block", 4, 4),
    "dual_branch.pose_mlp.1": ("linear", 4, 4), "dual_branch.pose_mlp.2": ("bn", 4),
    "identity_head.0": ("block", 4, 4), "identity_head.1": ("linear", 4, 4), "identity_head.2": ("bn", 4),
}


def _first_release_state_dict(generator: torch.Generator) -> dict[str, torch.Tensor]:
    def linear(prefix, fan_in, fan_out):
        return {f"{prefix}.weight": torch.randn(fan_out, fan_in, generator=generator),
                f"{prefix}.bias": torch.randn(fan_out, generator=generator)}

    def bn(prefix, dim):
        return {f"{prefix}.weight": torch.rand(dim, generator=generator) + 0.5,
                f"{prefix}.bias": torch.randn(dim, generator=generator),
                f"{prefix}.running_mean": torch.randn(dim, generator=generator),
                f"{prefix}.running_var": torch.rand(dim, generator=generator) + 0.5,
                f"{prefix}.num_batches_tracked": torch.tensor(40)}

    state = {}
    for prefix, (kind, *dims) in FIRST_RELEASE_LAYOUT.items():
        if kind == "scalar":
            state[prefix] = torch.tensor(0.4)
        elif kind == "block":
            state |= linear(f"{prefix}.0", *dims) | bn(f"{prefix}.1", dims[1])
        elif kind == "linear":
            state |= linear(prefix, *dims)
        elif kind == "bn":
            state |= bn(prefix, *dims)
        else:  # se: Linear(dim → dim / reduction) and back, without bias
            dim, squeezed = dims
            state[f"{prefix}.excite.0.weight"] = torch.randn(squeezed, dim, generator=generator)
            state[f"{prefix}.excite.2.weight"] = torch.randn(dim, squeezed, generator=generator)
    return state


def test_a_first_release_checkpoint_loads_with_its_layout(tmp_path):
    """Users hold checkpoints of the first release: no 'architecture', BatchNorm, dropout 0.1, ReLU projection."""
    config = {"image_dim": 4, "pose_dim": 3, "hidden_dim": 6, "num_layers": 2, "se_reduction": 2, "fusion_alpha": 0.7,
              "use_batch_stat": False, "dropout": 0.1, "pose_scale": 1 / 90}
    state = _first_release_state_dict(torch.Generator().manual_seed(0))
    torch.save({"epoch": 3, "model_config": config, "model_state_dict": state, "identity_dims": [0, 1]},
               tmp_path / "old.pth")
    model = load_trained_model(tmp_path / "old.pth")  # strict: every key and shape must match
    assert not model.training and model.config["norm"] == "batch" and model.config["relu_projection"]
    loaded = model.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in state.items())
    features, poses = example_inputs(4, 3, batch=6, seed=2)
    with torch.no_grad():
        front, identity = model(features, poses)
        alone, _ = model(features[:1], poses[:1])
    assert torch.allclose(front[:1], alone, atol=1e-6)  # eval mode: running statistics, no dropout
    assert not torch.allclose(front, features, atol=1e-3) and torch.isfinite(identity).all()


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


def test_mapping_runs_in_batches_of_the_given_size_and_in_bfloat16_with_amp(trained):
    root, data = trained
    model = load_trained_model(root / "senet" / "best_model.pth")
    features = np.load(data / "video_feature.npy")
    poses = np.asarray(json.loads((data / "video_metadata.json").read_text())["poses"], dtype=np.float32)
    calls = []
    first_linear = next(m for m in model.modules() if isinstance(m, torch.nn.Linear))
    first_linear.register_forward_hook(lambda module, inputs, output: calls.append((len(output), output.dtype)))
    full = map_features(model, features, poses, "cpu", batch_size=50)
    assert calls == [(50, torch.float32), (50, torch.float32), (20, torch.float32)]
    calls.clear()
    amp = map_features(model, features, poses, "cpu", use_amp=True, batch_size=4096)
    assert calls == [(120, torch.bfloat16)] and amp.dtype == torch.float32
    difference = (F.normalize(amp, dim=1) - F.normalize(full, dim=1)).abs().max()
    assert 1e-5 < difference < 0.05  # bf16 rounding, not another mapping


def test_map_script_passes_batch_size_device_and_amp_on(trained, tmp_path, monkeypatch):
    root, data = trained
    seen = {}
    real = senet_inference.map_features

    def record(model, features, poses, device, use_amp=False, batch_size=4096, progress=False):
        seen.update(device=str(device), use_amp=use_amp, batch_size=batch_size, rows=len(features))
        return real(model, features, poses, device, use_amp, batch_size, progress)

    monkeypatch.setattr(senet_inference, "map_features", record)
    argv = ["--model", str(root / "dream" / "best_model.pth"), "--features", str(data / "video_feature.npy"),
            "--metadata", str(data / "video_metadata.json"), "--output", str(tmp_path / "m.npy"),
            "--batch_size", "33", "--device", "cpu", "--use_amp"]
    assert main(argv) == 0
    assert seen == {"device": "cpu", "use_amp": True, "batch_size": 33, "rows": 120}


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


@pytest.mark.parametrize("name", ["senet", "baseline", "dream"])
def test_onnx_export_matches_pytorch_at_any_batch_size(trained, tmp_path, name):
    root, _ = trained
    checkpoint = root / name / "best_model.pth"
    report = export_onnx("senet", tmp_path / name, checkpoint=checkpoint)
    assert max(report["max_abs_diff"].values()) <= 1e-4
    assert report["dynamic_axes"]["features"] == {0: "batch"}
    sidecar = json.loads((tmp_path / f"{name}.json").read_text())
    assert sidecar["model_config"]["architecture"] == {"senet": "senet", "baseline": "residual_mlp", "dream": "dream"}[name]
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
