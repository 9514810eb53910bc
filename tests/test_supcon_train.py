"""train.py end to end on tiny generated data: checkpoints, history, corrupt images, resume, torchrun, CLIs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

import train
from augment_images import parse_args as augment_parse_args
from loss import SupConLoss
from model import EmbeddingModel
from myutils.retrieval.grad_cache import grad_cache_backward
from myutils.synthetic.garments import generate_garment_dataset
from test_model import parse_args as retrieval_parse_args
from train import parse_args as train_parse_args
from train import train_supcon

REPO = Path(__file__).resolve().parents[1]
TINY = dict(batch_size=4, target_batch=8, m_per_class=2, model_name="test_efficientnet", emb_dim=16, img_size=32,
            num_workers=0, val_split=0.25, warmup_epochs=1, eval_batch_size=32, progress=False)


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("garments") / "train"
    generate_garment_dataset(root, 5, 32, seed=0, shapes=["tshirt", "skirt"], patterns=["stripes", "dots"])
    generate_garment_dataset(root, 1, 32, seed=1, shapes=["cap"], patterns=["checks"])  # a one-image class
    (root / "tshirt_dots" / "broken.png").write_bytes(b"\x89PNG not really")
    return root


def test_training_writes_loadable_checkpoints_history_and_counts_corrupt_images(tiny_data, tmp_path):
    result = train_supcon(str(tiny_data), epochs=2, save_dir=str(tmp_path / "run"), **TINY)
    run = tmp_path / "run"
    for name in ("best_supcon.pth", "last.pth", "history.json", "training_curves.png"):
        assert (run / name).is_file(), name
    assert any((run / "tensorboard").iterdir())

    last = torch.load(run / "last.pth", weights_only=True)
    assert last["model_config"]["model_name"] == "test_efficientnet" and last["model_config"]["img_size"] == [32, 32]
    assert last["class_names"] == ["cap_checks", "skirt_dots", "skirt_stripes", "tshirt_dots", "tshirt_stripes"]
    assert last["epoch"] == 1 and {"optimizer", "scheduler", "scaler", "rng", "best_metric"} <= set(last)
    model, _ = EmbeddingModel.from_checkpoint(run / "last.pth")
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 16)

    history = json.loads((run / "history.json").read_text())
    assert history["epoch"] == [1, 2]
    assert all(len(history[key]) == 2 for key in ("train_loss", "lr", "val_map_at_r", "val_precision_at_1"))
    assert all(count >= 1 for count in history["skipped_images"])  # the broken file, every epoch, never fatal
    # best checkpoint = best validation mAP@R, not lowest loss
    best_epoch = max(range(2), key=lambda i: (history["val_map_at_r"][i], -i)) + 1
    best = torch.load(run / "best_supcon.pth", weights_only=True)
    assert result["best_epoch"] == best_epoch == best["epoch"] + 1
    assert result["best_metric"] == pytest.approx(max(history["val_map_at_r"]))


class SimulatedCrash(RuntimeError):
    pass


def test_resume_continues_exactly_where_it_stopped(tiny_data, tmp_path, monkeypatch):
    straight = train_supcon(str(tiny_data), epochs=2, save_dir=str(tmp_path / "straight"), **TINY)

    real_plot = train.plot_curves

    def crash_after_first_epoch(history, *args, **kwargs):
        real_plot(history, *args, **kwargs)
        raise SimulatedCrash  # after last.pth of epoch 1 was written

    monkeypatch.setattr(train, "plot_curves", crash_after_first_epoch)
    with pytest.raises(SimulatedCrash):
        train_supcon(str(tiny_data), epochs=2, save_dir=str(tmp_path / "resumed"), **TINY)
    monkeypatch.setattr(train, "plot_curves", real_plot)
    resumed = train_supcon(str(tiny_data), epochs=2, save_dir=str(tmp_path / "resumed"),
                           resume=str(tmp_path / "resumed" / "last.pth"), **TINY)

    assert resumed["history"]["epoch"] == [1, 2]
    assert resumed["history"]["train_loss"] == pytest.approx(straight["history"]["train_loss"], rel=1e-5)
    a = torch.load(tmp_path / "straight" / "last.pth", weights_only=True)
    b = torch.load(tmp_path / "resumed" / "last.pth", weights_only=True)
    for name, value in a["model"].items():
        torch.testing.assert_close(b["model"][name], value, msg=name)
    assert b["scheduler"]["last_epoch"] == a["scheduler"]["last_epoch"]


def test_amp_on_cpu_trains_in_bfloat16_with_plain_accumulation(tiny_data, tmp_path):
    result = train_supcon(str(tiny_data), epochs=1, save_dir=str(tmp_path), amp=True, accumulation="plain", **TINY)
    losses = result["history"]["train_loss"]
    assert len(losses) == 1 and 0 < losses[0] < 20  # finite, a real SupCon value
    assert torch.load(tmp_path / "last.pth", weights_only=True)["scaler"] == {}  # no scaler needed for bf16


def test_bad_arguments_are_clear_errors(tiny_data, tmp_path):
    with pytest.raises(ValueError, match="multiple of batch_size"):
        train_supcon(str(tiny_data), epochs=1, save_dir=str(tmp_path), **{**TINY, "target_batch": 6})
    with pytest.raises(ValueError, match="accumulation"):
        train_supcon(str(tiny_data), epochs=1, save_dir=str(tmp_path), accumulation="sum", **TINY)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        train_supcon(str(tmp_path / "missing"), epochs=1, save_dir=str(tmp_path), **TINY)


def _ddp_grad_cache_worker(rank, init_file, images, labels, state_dict, expected_grad):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        model = EmbeddingModel("test_efficientnet", emb_dim=8)
        model.load_state_dict(state_dict)
        ddp = DistributedDataParallel(model.eval())
        half = images.shape[0] // 2
        mine = slice(rank * half, (rank + 1) * half)
        chunks = [(images[mine][i : i + 2], labels[mine][i : i + 2]) for i in range(0, half, 2)]
        grad_cache_backward(ddp, chunks, SupConLoss(0.1), no_sync=ddp.no_sync)
        grad = torch.cat([p.grad.flatten() for p in model.parameters()])
        torch.testing.assert_close(grad, expected_grad, rtol=1e-3, atol=1e-6)
    finally:
        dist.destroy_process_group()


def test_grad_cache_under_ddp_equals_the_global_batch_gradient(tmp_path):
    torch.manual_seed(0)
    model = EmbeddingModel("test_efficientnet", emb_dim=8).eval()
    images, labels = torch.randn(8, 2, 3, 32, 32), torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])  # positives across ranks
    features = model(images.flatten(0, 1)).view(8, 2, -1)
    SupConLoss(0.1)(features, labels).backward()
    expected = torch.cat([p.grad.flatten() for p in model.parameters()])
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    mp.spawn(_ddp_grad_cache_worker, args=(str(tmp_path / "init"), images, labels, state, expected), nprocs=2)


def test_torchrun_two_processes_on_cpu(tiny_data, tmp_path):
    command = [
        str(Path(sys.executable).with_name("torchrun")), "--standalone", "--nproc_per_node=2", "train.py",
        "--data_root", str(tiny_data), "--save_dir", str(tmp_path / "ddp"), "--epochs", "1", "--warmup_epochs", "0",
        "--batch_size", "2", "--target_batch", "8", "--m_per_class", "2", "--model_name", "test_efficientnet",
        "--emb_dim", "16", "--img_size", "32", "--num_workers", "0", "--device", "cpu", "--no_progress",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "(gradcache, 2 process(es))" in result.stdout
    checkpoint = torch.load(tmp_path / "ddp" / "last.pth", weights_only=True)
    assert len(checkpoint["rng"]) == 2 and checkpoint["epoch"] == 0


@pytest.mark.parametrize(
    "parse_args, options",
    [
        (train_parse_args, ["--data_root", "--batch_size", "--target_batch", "--epochs", "--warmup_epochs", "--lr",
                            "--save_dir", "--model_name", "--temperature", "--emb_dim", "--img_size", "--pretrained",
                            "--val_root", "--val_split", "--num_workers", "--amp", "--resume", "--seed", "--device",
                            "--m_per_class", "--accumulation"]),
        (retrieval_parse_args, ["--model_path", "--gallery_root", "--images", "--top_k", "--eval", "--query_root"]),
        (augment_parse_args, ["--grid", "--output", "--img_size", "--seed", "--show"]),
    ],
)
def test_help_describes_every_option(parse_args, options, capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse_args(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for option in options:
        assert option in text, option


def test_train_cli_has_the_seed_defaults():
    args = train_parse_args(["--data_root", "data"])
    assert (args.batch_size, args.target_batch, args.epochs, args.warmup_epochs, args.lr) == (16, 128, 50, 5, 3e-4)
    assert (args.save_dir, args.model_name, args.temperature, args.emb_dim) == (
        "checkpoints_supcon", "tf_efficientnetv2_m", 0.1, 512)
    assert args.accumulation == "gradcache" and args.m_per_class == 4 and args.img_size is None
