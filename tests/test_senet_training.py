"""SENet trainer end to end on small generated data: files, TensorBoard tags, exact resume, NaN stop, CLI,
and the flags whose effect a run must show (accumulation, AMP, the seed's objective, one-sample batches)."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from argparse import Namespace

import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.utils.data import DataLoader

from myutils.cli import run
from myutils.face import trainer as senet_trainer
from myutils.face.data import (
    FacePairDataset,
    PersonBatchSampler,
    load_face_feature_folder,
    write_face_feature_folder,
)
from myutils.face.losses import SENetObjective
from myutils.face.networks import SENetTripletNetwork
from myutils.face.trainer import (
    NonFiniteLossError,
    SmallSplitWarning,
    load_trained_model,
    train_one_epoch,
)
from myutils.synthetic.faces import generate_face_features, make_face_feature_data
from train_transformer3D.triplet.train_senet_triplet import main, train_senet_triplet

TINY = {
    "image_dim": 24, "hidden_dim": 32, "num_layers": 3, "se_reduction": 4, "batch_size": 16,
    "samples_per_person": 4, "num_workers": 0, "lr": 3e-3, "num_identity_dims": 4,
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
    """100 persons: test split of 10, validation of 30, so rank-1 is not 1.0 by construction."""
    out = tmp_path_factory.mktemp("senet") / "faces"
    make_face_feature_data(out, num_persons=100, fronts_per_person=1, frames_per_person=5, feature_dim=24,
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
                "ValRank1Raw", "FusionAlpha", "ValVerifAcc", "ValVerifAccRaw", "ValTarAtFar", "ValTarAtFarRaw"]:
        assert len(history[key]) == 2, key
    assert history == summary["history"]
    assert all(0.5 <= v <= 1.0 for v in history["ValVerifAccRaw"] + history["ValVerifAcc"])

    final = torch.load(ckpt / "final_model.pth", weights_only=True)
    assert final["epoch"] == 2 and final["identity_dims"] == summary["identity_dims"]
    assert json.loads((ckpt / "identity_dims.json").read_text())["identity_dims"] == summary["identity_dims"]
    assert final["model_config"]["num_layers"] == 3 and final["model_config"]["architecture"] == "senet"
    alpha = torch.sigmoid(final["model_state_dict"]["dual_branch.fusion_logit"]).item()
    assert history["FusionAlpha"][-1] == pytest.approx(alpha, abs=1e-6)

    best = torch.load(ckpt / "best_model.pth", weights_only=True)
    assert best["best"]["rank1"] == max(history["ValRank1"])
    test = summary["test"]
    assert 0.0 <= test["rank1"] <= 1.0 and 0.2 < test["rank1_raw"] < 0.95  # the test split can fail rank-1
    assert 0.5 <= test["verification_accuracy_raw"] <= 1.0 and 0.0 <= test["tar_at_far_raw"] <= 1.0
    model = load_trained_model(ckpt / "best_model.pth")
    front, identity = model(torch.randn(3, 24), torch.zeros(3, 3))
    assert front.shape == identity.shape == (3, 24)

    events = EventAccumulator(str(run_dir / "logs")).Reload()
    tags = set(events.Tags()["scalars"])
    assert {"Train/Loss", "Train/TripletLoss", "Train/IdentityLoss", "Train/LearningRate", "Epoch/TrainLoss",
            "Epoch/ValLoss", "Epoch/ValCosineSim", "Epoch/FusionAlpha", "Epoch/ValVerifAcc", "Epoch/ValTarAtFar"} <= tags
    assert [e.step for e in events.Scalars("Epoch/FusionAlpha")] == [1, 2]


def test_the_mapper_learns_the_frontal_target(data_dir, tmp_path):
    """Held-out persons (30 in validation): mapping must lift rank-1, cosine and verification above raw."""
    summary = _run(data_dir, tmp_path, epochs=8, save_interval=8)
    history, best = summary["history"], summary["best"]["epoch"] - 1
    assert history["ValRank1"][best] >= history["ValRank1Raw"][best] + 0.15
    assert history["ValCosineSim"][best] >= history["ValCosineSimRaw"][best] + 0.1
    assert history["ValVerifAcc"][best] >= history["ValVerifAccRaw"][best] + 0.05
    assert summary["test"]["rank1"] > summary["test"]["rank1_raw"]


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
    resumed = _run(data_dir, tmp_path, epochs=3, lr=2e-4, alpha_lr=0.5, resume=str(run_dir / "ckpt/checkpoint_epoch_2.pth"))
    out = capsys.readouterr().out
    assert "Learning rate changed on resume: 0.003 → 0.0002" in out
    assert "Learning rate changed on resume: 0.15 → 0.5 (dual_branch.fusion_logit)" in out
    assert "(residual_gain)" in out  # its default follows --lr: 50 × 0.003 → 50 × 0.0002
    assert resumed["history"]["epoch"] == [1, 2, 3]
    assert resumed["history"]["LearningRate"][-1] == pytest.approx(2e-4 * 0.01)  # cosine ends at 1 % of the new lr


def test_resume_refuses_a_different_model(two_epoch_run, data_dir, tmp_path):
    run_dir, _ = two_epoch_run
    with pytest.raises(ValueError, match="hidden_dim"):
        _run(data_dir, tmp_path, epochs=2, hidden_dim=16, resume=str(run_dir / "ckpt/checkpoint_epoch_1.pth"))


def _record_first_layer_dtypes(monkeypatch) -> list[torch.dtype]:
    """Patch the trainer's model builder so that training forwards record their first Linear's output dtype."""
    dtypes: list[torch.dtype] = []
    original = senet_trainer.build_mapper

    def build_and_watch(config):
        model = original(config)
        first = next(m for m in model.modules() if isinstance(m, torch.nn.Linear))
        first.register_forward_hook(lambda module, inputs, output: dtypes.append(output.dtype) if module.training else None)
        return model

    monkeypatch.setattr(senet_trainer, "build_mapper", build_and_watch)
    return dtypes


@pytest.mark.parametrize("use_amp", [True, False])
def test_use_amp_runs_the_forward_in_bfloat16_on_cpu(data_dir, tmp_path, monkeypatch, use_amp):
    dtypes = _record_first_layer_dtypes(monkeypatch)
    summary = _run(data_dir, tmp_path, epochs=1, use_amp=use_amp, num_layers=1)
    assert dtypes and set(dtypes) == ({torch.bfloat16} if use_amp else {torch.float32})
    assert np.isfinite(summary["history"]["TrainLoss"]).all()


def test_seed_objective_total_is_triplet_plus_weighted_identity(data_dir, tmp_path):
    summary = _run(data_dir, tmp_path, epochs=2, use_amp=True, target_weight=0.0, identity_preserve_weight=0.3,
                   identity_dims="0,5,7", triplet_through_mapper=True)
    assert summary["identity_dims"] == [0, 5, 7]
    history = summary["history"]
    for epoch in range(2):
        expected = history["TrainTripletLoss"][epoch] + 0.3 * history["TrainIdentityLoss"][epoch]
        assert history["TrainLoss"][epoch] == pytest.approx(expected, rel=1e-5)
        assert history["TrainTripletLoss"][epoch] > 0 and history["TrainIdentityLoss"][epoch] > 0
    assert history["TrainTargetLoss"][0] > 0  # reported, not optimised


def test_gradient_accumulation_sets_the_number_of_optimizer_steps(data_dir, tmp_path):
    one = _run(data_dir, tmp_path / "one", epochs=1, gradient_accumulation_steps=1)
    three = _run(data_dir, tmp_path / "three", epochs=1, gradient_accumulation_steps=3)
    steps = {name: torch.load(tmp_path / name / "ckpt/final_model.pth", weights_only=True)["scheduler_state_dict"]["last_epoch"]
             for name in ("one", "three")}
    assert steps["one"] >= 7 and steps["three"] == -(-steps["one"] // 3)
    assert one["history"]["TrainLoss"] != three["history"]["TrainLoss"]


def test_accumulated_gradient_is_the_mean_over_the_group(data_dir, monkeypatch):
    """Plain SGD with lr 1 and no clipping: the parameter change must be minus the mean gradient per group."""
    monkeypatch.setattr(senet_trainer, "MAX_GRAD_NORM", float("inf"))
    folder = load_face_feature_folder(data_dir)
    dataset = FacePairDataset(folder, range(12))  # 60 pairs: 24 groups of 2-3, 3 groups per batch
    loader = DataLoader(dataset, batch_sampler=PersonBatchSampler(dataset.labels, 12, 4, seed=0))
    assert len(loader) == 8  # accumulation groups of 3 + 3 + 2 batches
    torch.manual_seed(0)
    model = SENetTripletNetwork(image_dim=24, hidden_dim=16, num_layers=2, se_reduction=4)
    with torch.no_grad():
        model.residual_gain.fill_(0.3)
    expected_model = copy.deepcopy(model)
    objective = SENetObjective([0, 1], identity_preserve_weight=0.3)
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    log = Namespace(scalar=lambda *a: None)
    args = Namespace(gradient_accumulation_steps=3, use_amp=False)
    train_one_epoch(model, loader, objective, optimizer, scheduler, scaler, args, 0, log, torch.device("cpu"))
    assert scheduler.last_epoch == 3

    expected_model.train()
    batches = list(loader)
    for group in (batches[:3], batches[3:6], batches[6:]):
        grads = [torch.zeros_like(p) for p in expected_model.parameters()]
        for batch in group:
            expected_model.zero_grad()
            front, identity = expected_model(batch["src"], batch["pose"])
            objective(front, identity, batch["src"], batch["pose"], batch["tgt"], batch["label"])["total"].backward()
            for g, p in zip(grads, expected_model.parameters(), strict=True):
                g += p.grad / len(group)
        with torch.no_grad():
            for g, p in zip(grads, expected_model.parameters(), strict=True):
                p -= g
    for (name, p), q in zip(model.named_parameters(), expected_model.parameters(), strict=True):
        assert torch.allclose(p, q, atol=1e-5), name


def _write_one_pair_persons(out, num_persons: int):
    """Persons with one frontal and one video feature each: every sampler group is a lone sample."""
    data = generate_face_features(num_persons=num_persons, fronts_per_person=1, frames_per_person=1, feature_dim=24,
                                  num_identity_dims=4, pose_rank=2, seed=4)
    write_face_feature_folder(out, data["front_features"], data["front_metadata"], data["video_features"],
                              data["video_metadata"])
    return out


def test_persons_with_a_single_frame_never_form_a_one_sample_batch(tmp_path):
    # 12 persons → 7 in training; 6 groups per batch → batches of 6 and 1 before the fix, which crashed BatchNorm
    data_dir = _write_one_pair_persons(tmp_path / "faces", 12)
    with pytest.warns(SmallSplitWarning, match="the test split has only 1 persons"):
        summary = _run(data_dir, tmp_path, epochs=1, batch_size=12, samples_per_person=2, norm="batch")
    assert np.isfinite(summary["history"]["TrainLoss"]).all()


def test_small_splits_warn_and_large_ones_do_not(data_dir, tmp_path, recwarn):
    _run(data_dir, tmp_path, epochs=1)
    assert not [w for w in recwarn if issubclass(w.category, SmallSplitWarning)]
    small = tmp_path / "small"
    make_face_feature_data(small, num_persons=12, fronts_per_person=2, frames_per_person=6, feature_dim=24,
                           num_identity_dims=4, pose_rank=2, seed=3)
    with pytest.warns(SmallSplitWarning) as caught:
        summary = _run(small, tmp_path / "small_run", epochs=1)
    assert {"the val split has only 4 persons", "the test split has only 1 persons"} <= {
        str(w.message).split(":")[0] for w in caught}
    assert summary["test"]["rank1"] == 1.0  # one candidate: what the warning is about
    assert np.isnan(summary["test"]["verification_accuracy"])  # 10 folds need 10 persons


# DREAM's residual ignores pitch, which this data's residual family also uses: it needs more epochs
@pytest.mark.parametrize(("architecture", "epochs"), [("residual_mlp", 3), ("dream", 8)])
def test_the_baselines_train_through_the_same_loop(data_dir, tmp_path, architecture, epochs):
    summary = _run(data_dir, tmp_path, epochs=epochs, architecture=architecture, triplet_weight=0.0,
                   identity_preserve_weight=0.0)
    model = load_trained_model(tmp_path / "ckpt/best_model.pth")
    assert model.config["architecture"] == architecture
    assert np.isnan(summary["history"]["FusionAlpha"]).all()
    assert summary["test"]["rank1"] > summary["test"]["rank1_raw"]


def test_fusion_weight_and_gain_follow_their_own_learning_rates(two_epoch_run, data_dir, tmp_path):
    _, summary = two_epoch_run
    moved = summary["history"]
    assert abs(moved["FusionAlpha"][-1] - 0.7) > 0.02 and abs(moved["ResidualGain"][-1]) > 0.01
    frozen = _run(data_dir, tmp_path, epochs=1, alpha_lr=0.0, gain_lr=1e-9)["history"]
    assert frozen["FusionAlpha"] == [pytest.approx(0.7, abs=1e-7)] and abs(frozen["ResidualGain"][0]) < 1e-6
    optimizer_state = torch.load(tmp_path / "ckpt/final_model.pth", weights_only=True)["optimizer_state_dict"]
    groups = {g["name"]: g for g in optimizer_state["param_groups"]}
    assert groups["dual_branch.fusion_logit"]["weight_decay"] == groups["residual_gain"]["weight_decay"] == 0.0
    assert groups["weights"]["weight_decay"] == pytest.approx(1e-5)


def test_non_finite_loss_stops_naming_the_step(data_dir, tmp_path):
    with pytest.raises(NonFiniteLossError, match=r"epoch 1, batch \d+/\d+ \(global step \d+\)"):
        _run(data_dir, tmp_path, epochs=1, lr=1e30, alpha_lr=1e30, gain_lr=1e30, weight_decay=0.0)


def test_cli_help_and_clear_errors(repo_root, tmp_path, capsys):
    script = repo_root / "train_transformer3D/triplet/train_senet_triplet.py"
    result = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True, cwd=tmp_path,
                            timeout=120)
    assert result.returncode == 0
    for flag in ["--data_dir", "--num_layers", "--fusion_alpha", "--use_batch_stat", "--identity_preserve_weight",
                 "--gradient_accumulation_steps", "--use_amp", "--angle_threshold", "--save_interval", "--resume",
                 "--target_weight", "--identity_dims", "--alpha_lr", "--gain_lr", "--architecture", "--dropout",
                 "--triplet_through_mapper", "--relu_projection", "--norm"]:
        assert flag in result.stdout
    with pytest.raises(SystemExit) as exit_info:
        run(main, ["--data_dir", str(tmp_path / "nowhere"), "--save_dir", str(tmp_path / "c")])
    assert exit_info.value.code == 2
    assert "data directory not found" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        run(main, ["--data_dir", str(tmp_path / "nowhere"), "--dropout", "1.5"])
    assert exit_info.value.code == 2 and "--dropout must be in [0, 1)" in capsys.readouterr().err
    with pytest.raises(TypeError, match="unknown options"):
        train_senet_triplet(data_dir=tmp_path, epoch=3)
