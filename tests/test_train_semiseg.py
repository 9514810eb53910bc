"""scripts/train_semiseg.py end to end on tiny generated h5 cases: 2-D and 3-D, memory and selector,
TensorBoard tags, checkpoints, exact resume, bf16 autocast, torchrun with two processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from myutils.cli import InputError
from myutils.contrastive_prototype_manager import ContrastivePrototypeManager
from myutils.segmentation import trainer
from myutils.synthetic.semiseg_cases import make_acdc_like, make_la_like
from scripts.train_semiseg import train_semiseg

TINY = {"patch_size": [32, 32], "batch_size": 4, "labeled_bs": 2, "base_channels": 4, "embedding_dim": 8,
        "num_workers": 0, "optimizer": "adamw", "base_lr": 0.003, "elements_per_class": 16}


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny networks: one thread is faster on a shared CPU
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def acdc(tmp_path_factory):
    return make_acdc_like(tmp_path_factory.mktemp("acdc"), train=4, val=1, test=1, size=32, slices=3, seed=5)


def test_function_passes_zero_values_through(monkeypatch):
    """Bug caught: ``train_semiseg(seed=0, consistency=0, num_workers=0)`` silently training with the
    defaults (1337, 0.1, 2), because ``0 in (None, False)`` is true in Python."""
    import scripts.train_semiseg as script

    seen = []
    monkeypatch.setattr(script, "train", seen.append)
    script.train_semiseg("data", seed=0, consistency=0, num_workers=0, ema_decay=0.0, use_learned_selector=False,
                         test_list=None, use_contrastive_prototype=True, memory_ignore_classes=[0])
    (args,) = seen
    assert (args.seed, args.consistency, args.num_workers, args.ema_decay) == (0, 0.0, 0, 0.0)
    assert args.use_contrastive_prototype and not args.use_learned_selector and args.test_list is None
    assert args.memory_ignore_classes == [0]


def test_training_learns_the_segmentation(tmp_path):
    """Bug caught: a trainer that runs but does not learn (wrong targets, optimizer not stepping, labels
    misaligned with images): on clean cases the best validation Dice must go far above chance."""
    easy = make_acdc_like(tmp_path / "easy", train=3, val=1, test=1, size=32, slices=3, seed=5, drift=False)
    result = train_semiseg(easy, dataset="acdc", labelnum=3, semi_method="supervised", max_iterations=140,
                           eval_interval=70, output_dir=tmp_path / "run", **{**TINY, "base_channels": 8})
    assert result["best_val"]["dice"] > 0.35, result["best_val"]  # untrained: about 0.02
    assert result["test"]["dice"] > 0.3, result["test"]
    assert set(result["best_val"]) >= {f"{m}_class{c}" for m in ("dice", "jaccard", "hd95", "asd") for c in (1, 2, 3)}


def test_memory_run_logs_losses_and_trains_the_selectors_at_a_tenth_of_the_lr(acdc, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    train_semiseg(acdc, dataset="acdc", labelnum=1, max_iterations=4, eval_interval=2, output_dir=out,
                  use_contrastive_prototype=True, use_learned_selector=True, memory_ignore_classes=[0],
                  consistency_rampup=0, **TINY)
    last = torch.load(out / "checkpoints" / "last.pth", weights_only=True)
    assert last["iteration"] == 4 and {"student", "teacher", "prototype_manager", "selector_optimizer"} <= set(last)
    assert last["selector_optimizer"]["param_groups"][0]["lr"] == pytest.approx(0.003 * 0.1)
    assert len(last["selector_optimizer"]["state"]) > 0  # the selectors were stepped
    manager = ContrastivePrototypeManager(4, 8, 16, use_learned_selector=True, memory_ignore_classes=[0])
    manager.load_state_dict(last["prototype_manager"])
    assert manager.memory_count[0] == 0 and manager.memory_count[1:].sum() > 0
    assert torch.load(out / "checkpoints" / "best.pth", weights_only=True)["val_metrics"]["dice"] >= 0
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"Loss/supervised_ce", "Loss/supervised_dice", "Loss/consistency", "Loss/total",
            "Loss/labeled_prototype_contrastive", "Loss/unlabeled_prototype_contrastive",
            "Loss/labeled_prototype_total", "Eval/val_dice"} <= tags
    assert len(events.Scalars("Loss/labeled_prototype_contrastive")) == 4
    assert (out / "curves.png").stat().st_size > 0 and json.loads((out / "metrics.json").read_text())["test"]


def test_resume_continues_exactly(acdc, tmp_path, monkeypatch):
    """Bug caught: anything not restored (RNG, sampler position, teacher, memory, optimizers, scaler)."""
    options = dict(dataset="acdc", labelnum=1, max_iterations=4, eval_interval=2, use_contrastive_prototype=True,
                   use_learned_selector=True, test_list="none", **TINY)
    train_semiseg(acdc, output_dir=tmp_path / "straight", **options)
    calls = []
    original = trainer.end_of_interval

    def interrupt_after_first(*args, **kwargs):
        original(*args, **kwargs)
        calls.append(1)
        raise KeyboardInterrupt  # the run dies after its iteration-2 checkpoint

    monkeypatch.setattr(trainer, "end_of_interval", interrupt_after_first)
    with pytest.raises(KeyboardInterrupt):
        train_semiseg(acdc, output_dir=tmp_path / "resumed", **options)
    monkeypatch.setattr(trainer, "end_of_interval", original)
    assert torch.load(tmp_path / "resumed/checkpoints/last.pth", weights_only=True)["iteration"] == 2
    train_semiseg(acdc, output_dir=tmp_path / "resumed", resume=tmp_path / "resumed/checkpoints/last.pth", **options)
    straight = torch.load(tmp_path / "straight/checkpoints/last.pth", weights_only=True)
    resumed = torch.load(tmp_path / "resumed/checkpoints/last.pth", weights_only=True)
    for part in ("student", "teacher", "prototype_manager"):
        for key, value in straight[part].items():
            assert torch.equal(value, resumed[part][key]), (part, key)
    assert straight["history"]["train_total"] == resumed["history"]["train_total"]


def test_3d_training_with_sliding_window_and_bf16_autocast(tmp_path):
    root = make_la_like(tmp_path / "la", train=3, test=1, shape=(20, 18, 16), seed=2)
    with pytest.raises(InputError, match="one value per channel"):  # one 16^3 patch per stream: a 1x1x1 bottleneck
        train_semiseg(root, dataset="la", labelnum=1, patch_size=[16, 16, 16], batch_size=2, labeled_bs=1)
    result = train_semiseg(root, dataset="la", labelnum=1, patch_size=[32, 16, 16], batch_size=2, labeled_bs=1,
                           base_channels=2, embedding_dim=4, max_iterations=2, eval_interval=2, num_workers=0,
                           stride=[8, 8, 8], amp="bf16", use_contrastive_prototype=True, output_dir=tmp_path / "run")
    assert set(result["best_val"]) >= {"dice", "hd95", "asd", "jaccard", "dice_class1"}
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    assert all(torch.isfinite(torch.tensor(history["train_total"])))


def test_torchrun_two_processes(acdc, tmp_path):
    """DDP on gloo: both ranks step together (memory candidates gathered, selectors' gradients averaged)."""
    out = tmp_path / "ddp"
    command = [str(Path(sys.executable).with_name("torchrun")), "--standalone", "--nproc_per_node=2",
               "scripts/train_semiseg.py", "--root_path", str(acdc), "--dataset", "acdc", "--labelnum", "1",
               "--patch_size", "32", "32", "--batch_size", "4", "--labeled_bs", "2", "--base_channels", "4",
               "--embedding_dim", "8", "--num_workers", "0", "--max_iterations", "2", "--eval_interval", "2",
               "--use_contrastive_prototype", "--use_learned_selector", "--test_list", "none", "--output_dir", str(out)]
    result = subprocess.run(command, cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True,
                            timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert "2 process(es)" in result.stdout
    assert json.loads((out / "metrics.json").read_text())["best_iteration"] == 2
    rng = torch.load(out / "checkpoints" / "last.pth", weights_only=True)["rng"]
    # each rank's own stream: a checkpoint with rank 0's state alone cannot resume rank 1 exactly
    assert len(rng) == 2 and not torch.equal(rng[0]["torch"], rng[1]["torch"])


def tiny_run(acdc, tmp_path, *flags: str) -> trainer.Run:
    """A ``Run`` on the tiny cases, one labelled patient, built as the CLI builds it."""
    from myutils.training.distributed import init_distributed
    from scripts.train_semiseg import build_parser

    argv = ["--root_path", str(acdc), "--labelnum", "1", "--output_dir", str(tmp_path), "--max_iterations", "10",
            "--test_list", "none", *flags]
    for key, value in TINY.items():
        argv += [f"--{key}", *map(str, value if isinstance(value, list) else [value])]
    return trainer.Run(trainer.resolve_defaults(build_parser().parse_args(argv)), init_distributed("cpu"))


def first_batch(run: trainer.Run) -> dict[str, torch.Tensor]:
    from torch.utils.data import default_collate

    from myutils.segmentation.data import TrainingSet, TwoStreamBatchSampler

    sampler = TwoStreamBatchSampler(run.labelled, run.unlabelled, 2, 2, seed=0, num_iterations=1)
    return default_collate([TrainingSet(run.items, (32, 32))[key] for key in sampler.batch(0)])


@pytest.mark.parametrize("stream_batchnorm", ["separate", "shared"])
def test_labelled_loss_does_not_see_the_unlabelled_patches(acdc, tmp_path, monkeypatch, stream_batchnorm):
    """Bug caught: labelled and unlabelled patches through the student in one forward, so BatchNorm normalises
    the labelled patches with statistics of whatever unlabelled cases share the batch. On the bench data that
    put the mean teacher 0.09 Dice below training on the labelled patches alone, even at --consistency 0.
    ``shared`` (SS-Net's one forward, kept as an option) must show the dependence, or the test proves nothing."""
    seen = []
    original = trainer.supervised_loss
    monkeypatch.setattr(trainer, "supervised_loss", lambda logits, labels: seen.append(logits) or original(logits, labels))
    batch = first_batch(tiny_run(acdc, tmp_path, "--stream_batchnorm", stream_batchnorm))
    drifted = {**batch, "image": batch["image"].clone()}
    drifted["image"][2:] = drifted["image"][2:] * 1.6 + 0.4  # other unlabelled cases: another gain and offset
    for images in (batch, drifted):
        run = tiny_run(acdc, tmp_path, "--stream_batchnorm", stream_batchnorm)  # same seed: same initial weights
        torch.manual_seed(0)  # same dropout masks
        run.step(images)
    same = torch.allclose(seen[0], seen[1], rtol=0, atol=1e-6)
    assert same == (stream_batchnorm == "separate"), (seen[0] - seen[1]).abs().max()


def test_memory_stores_the_teachers_projections_and_pulls_the_students_predictions(acdc, tmp_path, monkeypatch):
    """Bug caught: the memory fed with the student's own (grad-carrying) features instead of the EMA
    teacher's no-grad projections of the labelled images, or the loss pulling the teacher's features."""
    import copy

    run = tiny_run(acdc, tmp_path, "--use_contrastive_prototype")
    batch = first_batch(run)
    teacher_before = copy.deepcopy(run.teacher)
    calls = []
    original = ContrastivePrototypeManager.update_and_compute_loss

    def spy(self, features, predictions, labels, *rest, **kwargs):
        calls.append((features, predictions, labels, kwargs))
        return original(self, features, predictions, labels, *rest, **kwargs)

    monkeypatch.setattr(ContrastivePrototypeManager, "update_and_compute_loss", spy)
    run.step(batch)
    (features, predictions, labels, kwargs), unlabelled_call = calls
    with torch.no_grad():
        expected_logits, expected_projection, _ = teacher_before(batch["image"][:2])
    assert features.requires_grad and kwargs["is_labeled"] and torch.equal(labels, batch["label"][:2])
    assert not kwargs["memory_features"].requires_grad
    torch.testing.assert_close(kwargs["memory_features"], expected_projection)
    torch.testing.assert_close(predictions, expected_logits)
    assert unlabelled_call[2] is None and unlabelled_call[0].shape[0] == 2


def test_onnx_export_of_a_trained_network(acdc, tmp_path):
    from scripts.export_onnx import export_onnx

    train_semiseg(acdc, dataset="acdc", labelnum=1, max_iterations=1, eval_interval=1, test_list="none",
                  use_contrastive_prototype=True, output_dir=tmp_path / "run", **TINY)
    report = export_onnx("semiseg", tmp_path / "unet", checkpoint=tmp_path / "run/checkpoints/best.pth")
    assert report["max_abs_diff"]["logits"] <= 1e-4 and report["check_batch"] == [[2, 1, 48, 48]]
    assert report["num_classes"] == 4 and report["patch_size"] == [32, 32]
