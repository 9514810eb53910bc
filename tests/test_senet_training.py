"""SENet trainer end to end on tiny generated data: files, TensorBoard tags, exact resume, NaN stop, CLI."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from myutils.cli import run
from train_transformer3D.triplet.senet_trainer import NonFiniteLossError, load_trained_model
from train_transformer3D.triplet.synthetic_faces import make_face_feature_data
from train_transformer3D.triplet.train_senet_triplet import main, train_senet_triplet

TINY = {
    "image_dim": 24, "hidden_dim": 32, "num_layers": 3, "se_reduction": 4, "batch_size": 16,
    "samples_per_person": 4, "num_workers": 0, "lr": 1e-3, "num_identity_dims": 4,
}


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Tiny models train several times faster on one thread when the machine's two cores are shared."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("senet") / "faces"
    make_face_feature_data(out, num_persons=12, fronts_per_person=2, frames_per_person=6, feature_dim=24,
                           num_identity_dims=4, pose_rank=2, seed=3)
    return out


def _run(data_dir, run_dir, **options):
    return train_senet_triplet(data_dir=data_dir, save_dir=str(run_dir / "ckpt"), log_dir=str(run_dir / "logs"),
                               **{**TINY, **options})


@pytest.fixture(scope="module")
def two_epoch_run(data_dir, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("run")
    summary = _run(data_dir, run_dir, epochs=2, save_interval=1)
    return run_dir, summary


def test_two_epoch_run_writes_every_file(two_epoch_run, capsys):
    run_dir, summary = two_epoch_run
    ckpt = run_dir / "ckpt"
    for name in ["best_model.pth", "checkpoint_epoch_1.pth", "checkpoint_epoch_2.pth", "final_model.pth",
                 "training_history.json", "training_curves_epoch_1.png", "training_curves_epoch_2.png",
                 "final_training_curves.png", "identity_dims.json"]:
        assert (ckpt / name).is_file(), name
    assert (ckpt / "final_training_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    history = json.loads((ckpt / "training_history.json").read_text(encoding="utf-8"))
    assert history["epoch"] == [1, 2]
    for key in ["TrainLoss", "TrainTripletLoss", "TrainIdentityLoss", "ValLoss", "ValCosineSim", "ValRank1",
                "ValRank1Raw", "FusionAlpha"]:
        assert len(history[key]) == 2, key
    assert history == summary["history"]

    final = torch.load(ckpt / "final_model.pth", weights_only=True)
    assert final["epoch"] == 2 and final["identity_dims"] == summary["identity_dims"]
    assert json.loads((ckpt / "identity_dims.json").read_text())["identity_dims"] == summary["identity_dims"]
    assert final["model_config"]["num_layers"] == 3
    alpha = torch.sigmoid(final["model_state_dict"]["dual_branch.fusion_logit"]).item()
    assert history["FusionAlpha"][-1] == pytest.approx(alpha, abs=1e-6)

    best = torch.load(ckpt / "best_model.pth", weights_only=True)
    assert best["best"]["rank1"] == max(history["ValRank1"])
    assert 0.0 <= summary["test"]["rank1"] <= 1.0 and summary["test"]["rank1_raw"] > 0.0
    model = load_trained_model(ckpt / "best_model.pth")
    front, identity = model(torch.randn(3, 24), torch.zeros(3, 3))
    assert front.shape == identity.shape == (3, 24)

    events = EventAccumulator(str(run_dir / "logs")).Reload()
    tags = set(events.Tags()["scalars"])
    assert {"Train/Loss", "Train/TripletLoss", "Train/IdentityLoss", "Train/LearningRate", "Epoch/TrainLoss",
            "Epoch/ValLoss", "Epoch/ValCosineSim", "Epoch/FusionAlpha"} <= tags
    assert [e.step for e in events.Scalars("Epoch/FusionAlpha")] == [1, 2]


def test_resume_continues_from_the_saved_epoch(two_epoch_run, data_dir, tmp_path, capsys):
    run_dir, _ = two_epoch_run
    resumed = _run(data_dir, tmp_path, epochs=2, save_interval=1, resume=str(run_dir / "ckpt/checkpoint_epoch_1.pth"))
    out = capsys.readouterr().out
    assert "continuing after epoch 1" in out and "Epoch 1/2" not in out and "Epoch 2/2" in out
    assert resumed["history"]["epoch"] == [1, 2]
    straight = torch.load(run_dir / "ckpt/final_model.pth", weights_only=True)["model_state_dict"]
    again = torch.load(tmp_path / "ckpt/final_model.pth", weights_only=True)["model_state_dict"]
    for name, tensor in straight.items():
        assert torch.allclose(tensor.float(), again[name].float(), atol=1e-6), name


def test_resume_with_a_new_learning_rate_and_more_epochs(two_epoch_run, data_dir, tmp_path, capsys):
    run_dir, _ = two_epoch_run
    resumed = _run(data_dir, tmp_path, epochs=3, lr=2e-4, resume=str(run_dir / "ckpt/checkpoint_epoch_2.pth"))
    assert "Learning rate changed on resume: 0.001 → 0.0002" in capsys.readouterr().out
    assert resumed["history"]["epoch"] == [1, 2, 3]
    assert resumed["history"]["LearningRate"][-1] == pytest.approx(2e-4 * 0.01)  # cosine ends at 1 % of the new lr


def test_resume_refuses_a_different_model(two_epoch_run, data_dir, tmp_path):
    run_dir, _ = two_epoch_run
    with pytest.raises(ValueError, match="hidden_dim"):
        _run(data_dir, tmp_path, epochs=2, hidden_dim=16, resume=str(run_dir / "ckpt/checkpoint_epoch_1.pth"))


def test_amp_accumulation_and_seed_objective(data_dir, tmp_path):
    summary = _run(data_dir, tmp_path, epochs=1, use_amp=True, gradient_accumulation_steps=2, target_weight=0.0,
                   num_layers=1, identity_dims="0,5,7")
    assert summary["identity_dims"] == [0, 5, 7]
    history = summary["history"]
    assert all(torch.isfinite(torch.tensor(history[key])).all() for key in ["TrainLoss", "ValLoss", "ValCosineSim"])
    # the seed's objective: total = triplet + 0.3 · identity, the target term only reported
    assert history["TrainTargetLoss"][0] > 0


def test_non_finite_loss_stops_naming_the_step(data_dir, tmp_path):
    with pytest.raises(NonFiniteLossError, match=r"epoch 1, batch \d+/\d+ \(global step \d+\)"):
        _run(data_dir, tmp_path, epochs=1, lr=1e30, weight_decay=0.0)


def test_cli_help_and_clear_errors(repo_root, tmp_path, capsys):
    script = repo_root / "train_transformer3D/triplet/train_senet_triplet.py"
    result = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True, cwd=tmp_path,
                            timeout=120)
    assert result.returncode == 0
    for flag in ["--data_dir", "--num_layers", "--fusion_alpha", "--use_batch_stat", "--identity_preserve_weight",
                 "--gradient_accumulation_steps", "--use_amp", "--angle_threshold", "--save_interval", "--resume",
                 "--target_weight", "--identity_dims"]:
        assert flag in result.stdout
    with pytest.raises(SystemExit) as exit_info:
        run(main, ["--data_dir", str(tmp_path / "nowhere"), "--save_dir", str(tmp_path / "c")])
    assert exit_info.value.code == 2
    assert "data directory not found" in capsys.readouterr().err
    with pytest.raises(TypeError, match="unknown options"):
        train_senet_triplet(data_dir=tmp_path, epoch=3)
