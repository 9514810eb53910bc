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
from augment_images import EvalTransform
from augment_images import parse_args as augment_parse_args
from loss import SupConLoss
from model import EmbeddingModel
from myutils.retrieval.grad_cache import grad_cache_backward
from myutils.synthetic.garments import generate_garment_dataset
from myutils.training.log import plot_curves
from myutils.training.schedule import warmup_cosine_factor
from test_model import parse_args as retrieval_parse_args
from train import parse_args as train_parse_args
from train import train_supcon

REPO = Path(__file__).resolve().parents[1]
TINY = dict(batch_size=4, target_batch=8, m_per_class=2, model_name="test_efficientnet", emb_dim=16, img_size=32,
            num_workers=0, val_split=0.25, warmup_epochs=1, eval_batch_size=32, progress=False)


@pytest.fixture(autouse=True)
def fast_curves(monkeypatch):
    """matplotlib costs seconds per figure on a busy 2-core machine: only the first test draws the curves."""
    monkeypatch.setattr(train, "plot_curves", lambda *args, **kwargs: None)


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("garments") / "train"
    generate_garment_dataset(root, 5, 32, seed=0, shapes=["tshirt", "skirt"], patterns=["stripes", "dots"])
    generate_garment_dataset(root, 1, 32, seed=1, shapes=["cap"], patterns=["checks"])  # a one-image class
    (root / "tshirt_dots" / "broken.png").write_bytes(b"\x89PNG not really")
    return root


def test_training_writes_loadable_checkpoints_history_and_best_by_validation(tiny_data, tmp_path, monkeypatch):
    monkeypatch.setattr(train, "plot_curves", plot_curves)
    result = train_supcon(str(tiny_data), epochs=2, save_dir=str(tmp_path / "run"), **TINY)
    run = tmp_path / "run"
    for name in ("best_supcon.pth", "last.pth", "history.json", "training_curves.png"):
        assert (run / name).is_file(), name
    assert any((run / "tensorboard").iterdir())

    last = torch.load(run / "last.pth", weights_only=True)
    assert last["model_config"]["model_name"] == "test_efficientnet" and last["model_config"]["img_size"] == [32, 32]
    assert last["class_names"] == ["cap_checks", "skirt_dots", "skirt_stripes", "tshirt_dots", "tshirt_stripes"]
    assert last["epoch"] == 1 and {"optimizer", "scheduler", "scaler", "rng", "best_metric", "run_settings"} <= set(last)
    assert [group["weight_decay"] for group in last["optimizer"]["param_groups"]] == [0.0, 0.05]  # none on norm/bias
    model, _ = EmbeddingModel.from_checkpoint(run / "last.pth")
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 16)

    history = json.loads((run / "history.json").read_text())
    assert history["epoch"] == [1, 2] and history["val_epoch"] == [1, 2]
    assert all(len(history[key]) == 2 for key in ("train_loss", "lr", "val_map_at_r", "val_precision_at_1"))
    # best checkpoint = best validation mAP@R, not lowest loss
    best_epoch = max(range(2), key=lambda i: (history["val_map_at_r"][i], -i)) + 1
    best = torch.load(run / "best_supcon.pth", weights_only=True)
    assert result["best_epoch"] == best_epoch == best["epoch"] + 1 and result["best_metric_name"] == "val_map_at_r"
    assert result["best_metric"] == pytest.approx(max(history["val_map_at_r"]))


def test_no_weight_decay_on_biases_and_norm_weights():
    model = EmbeddingModel("test_vit3", emb_dim=8, img_size=32)
    optimizer = train.make_optimizer(model, 1e-3, 0.05)
    decay_of = {id(p): group["weight_decay"] for group in optimizer.param_groups for p in group["params"]}
    for name, parameter in model.named_parameters():
        exempt = parameter.ndim <= 1 or name.endswith(("pos_embed", "cls_token", "reg_token"))  # norms, biases, ViT tokens
        assert decay_of[id(parameter)] == (0.0 if exempt else 0.05), name
    assert sum(1 for p in model.parameters() if p.ndim <= 1) > 10


def _unreadable_data(root):
    """Train/val folders where one unreadable file is drawn several times per epoch (its class has 3 files)."""
    generate_garment_dataset(root / "train", 4, 32, seed=0, shapes=["tshirt", "skirt"], patterns=["dots"])
    generate_garment_dataset(root / "train", 2, 32, seed=2, shapes=["cap"], patterns=["dots"])
    broken = root / "train" / "cap_dots" / "broken.png"
    broken.write_bytes(b"\x89PNG not really")
    generate_garment_dataset(root / "val", 1, 32, seed=3, shapes=["tshirt", "skirt", "cap"], patterns=["dots"])
    return broken


def test_unreadable_images_are_counted_as_files_and_named_once(tmp_path, capsys):
    broken = _unreadable_data(tmp_path)
    options = {**TINY, "val_split": None}
    records, names = train.scan_image_folder(tmp_path / "train")
    broken_index = [r.path for r in records].index(str(broken))
    sampler = train.MPerClassBatchSampler([r.label for r in records], 2, 4, 8, seed=0)
    draws = []
    for epoch in range(2):
        sampler.set_epoch(epoch)
        draws.append(sum(batch.count(broken_index) for batch in sampler))
    assert max(draws) >= 2  # an occurrence count would say 2 or more

    train_supcon(str(tmp_path / "train"), val_root=str(tmp_path / "val"), epochs=2, save_dir=str(tmp_path / "run"),
                 **options)
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    assert history["skipped_images"] == [1 if n else 0 for n in draws]
    assert (tmp_path / "run" / "skipped_images.txt").read_text().splitlines() == [str(broken)]
    assert capsys.readouterr().out.count(f"unreadable image skipped (listed in {tmp_path / 'run'}") == 1


def test_fewer_than_two_classes_is_refused(tmp_path):
    generate_garment_dataset(tmp_path / "one", 6, 32, seed=0, shapes=["tshirt"], patterns=["dots"])
    (tmp_path / "one" / "empty_class").mkdir()  # a folder without images is not a class
    with pytest.raises(ValueError, match="at least two classes"):
        train_supcon(str(tmp_path / "one"), epochs=1, save_dir=str(tmp_path / "run"), **TINY)


def test_without_validation_images_best_is_the_lowest_training_loss_of_a_vit(tmp_path, capsys):
    generate_garment_dataset(tmp_path / "single", 1, 32, seed=0, shapes=["tshirt", "skirt", "cap"],
                             patterns=["dots", "checks"])  # every class has one image: nothing to hold out
    options = {**TINY, "model_name": "test_vit3", "lr": 1e-2, "warmup_epochs": 0}  # a fixed-size ViT at 32 px
    result = train_supcon(str(tmp_path / "single"), epochs=3, save_dir=str(tmp_path / "run"), **options)
    out = capsys.readouterr().out
    assert out.count("no validation images") == 1 and "lowest training loss" in out
    history = result["history"]
    assert "val_map_at_r" not in history and result["best_metric_name"] == "train_loss"
    losses = history["train_loss"]
    assert result["best_epoch"] == losses.index(min(losses)) + 1 and result["best_metric"] == pytest.approx(min(losses))
    best = torch.load(tmp_path / "run" / "best_supcon.pth", weights_only=True)
    assert best["epoch"] + 1 == result["best_epoch"] and best["best_metric_name"] == "train_loss"
    assert "(best train_loss)" in out


class SimulatedCrash(RuntimeError):
    pass


def _crash_after(monkeypatch, epochs_done):
    """Make train.py stop right after writing last.pth of epoch ``epochs_done``."""
    real_plot = train.plot_curves
    calls = []

    def crash(history, *args, **kwargs):
        real_plot(history, *args, **kwargs)
        calls.append(1)
        if len(calls) == epochs_done:
            raise SimulatedCrash

    monkeypatch.setattr(train, "plot_curves", crash)
    return lambda: monkeypatch.setattr(train, "plot_curves", real_plot)


RANDOM_LAYERS = {**TINY, "drop_rate": 0.3, "drop_path_rate": 0.2, "ema": True, "ema_decay": 0.9}


def test_resume_is_exact_with_dropout_drop_path_and_ema(tiny_data, tmp_path, monkeypatch):
    straight = train_supcon(str(tiny_data), epochs=2, save_dir=str(tmp_path / "straight"), **RANDOM_LAYERS)
    restore = _crash_after(monkeypatch, 1)
    with pytest.raises(SimulatedCrash):
        train_supcon(str(tiny_data), epochs=2, save_dir=str(tmp_path / "resumed"), **RANDOM_LAYERS)
    restore()
    resumed = train_supcon(str(tiny_data), save_dir=str(tmp_path / "resumed"),
                           resume=str(tmp_path / "resumed" / "last.pth"), **{**TINY, "model_name": None})

    assert resumed["history"]["epoch"] == [1, 2]
    assert resumed["history"]["train_loss"] == straight["history"]["train_loss"]  # bitwise: same random masks
    a = torch.load(tmp_path / "straight" / "last.pth", weights_only=True)
    b = torch.load(tmp_path / "resumed" / "last.pth", weights_only=True)
    for key in ("model", "online_model"):  # the EMA weights and the trained weights
        for name, value in a[key].items():
            assert torch.equal(b[key][name], value), (key, name)
    assert not all(torch.equal(a["model"][n], a["online_model"][n]) for n in a["model"])
    assert b["scheduler"]["last_epoch"] == a["scheduler"]["last_epoch"]


def test_resume_takes_the_run_settings_from_the_checkpoint(tiny_data, tmp_path, monkeypatch):
    options = {**TINY, "lr": 2e-3}
    restore = _crash_after(monkeypatch, 1)
    with pytest.raises(SimulatedCrash):
        train_supcon(str(tiny_data), epochs=2, save_dir=str(tmp_path / "run"), **options)
    restore()
    last = str(tmp_path / "run" / "last.pth")
    with pytest.raises(ValueError, match=r"lr=0\.001 \(the checkpoint has 0\.002\)"):
        train_supcon(str(tiny_data), save_dir=str(tmp_path / "run"), resume=last, **{**TINY, "lr": 1e-3})
    with pytest.raises(ValueError, match=r"model_name='test_convnext' \(the checkpoint has 'test_efficientnet'\)"):
        train_supcon(str(tiny_data), save_dir=str(tmp_path / "run"), resume=last,
                     **{**TINY, "model_name": "test_convnext"})
    with pytest.raises(ValueError, match=r"img_size=\[48, 48\]"):
        train_supcon(str(tiny_data), save_dir=str(tmp_path / "run"), resume=last, **{**TINY, "img_size": 48})
    with pytest.raises(ValueError, match="already holds 1 epochs"):
        train_supcon(str(tiny_data), epochs=1, save_dir=str(tmp_path / "run"), resume=last, **TINY)
    # the same values as the checkpoint, or none at all, are fine; the lr is the checkpoint's 2e-3
    unset = {key: value for key, value in TINY.items() if key not in train.RUN_DEFAULTS}
    result = train_supcon(str(tiny_data), save_dir=str(tmp_path / "run"), resume=last, **unset)
    assert result["settings"]["lr"] == 2e-3 and result["settings"]["epochs"] == 2
    assert result["settings"]["model_name"] == "test_efficientnet" and result["history"]["epoch"] == [1, 2]
    with pytest.raises(ValueError, match="decayed to 0"):  # a finished schedule cannot be extended
        train_supcon(str(tiny_data), epochs=3, save_dir=str(tmp_path / "run"), resume=last, **unset)


def _step_lrs(monkeypatch):
    lrs = {}
    real_scalar = train.TrainingLog.scalar

    def record(self, tag, value, step):
        if tag == "Train/lr":
            lrs[step] = value
        real_scalar(self, tag, value, step)

    monkeypatch.setattr(train.TrainingLog, "scalar", record)
    return lrs


def test_more_epochs_on_resume_continue_the_cosine_without_a_jump(tiny_data, tmp_path, monkeypatch):
    lrs = _step_lrs(monkeypatch)
    options = {**TINY, "lr": 1e-2, "warmup_epochs": 0}
    restore = _crash_after(monkeypatch, 1)
    with pytest.raises(SimulatedCrash):  # planned for 2 epochs, stopped after 1
        train_supcon(str(tiny_data), epochs=2, save_dir=str(tmp_path / "run"), **options)
    restore()
    train_supcon(str(tiny_data), epochs=4, save_dir=str(tmp_path / "run"), resume=str(tmp_path / "run" / "last.pth"),
                 **{key: value for key, value in TINY.items() if key not in train.RUN_DEFAULTS})
    steps_per_epoch = 3
    sequence = [lrs[step] for step in sorted(lrs)]  # the lr after each optimizer step
    resume_at = steps_per_epoch  # steps 1..3 ran before the crash, 4.. after
    assert len(sequence) == 4 * steps_per_epoch
    planned = [warmup_cosine_factor(step, 0, 2 * steps_per_epoch) * 1e-2 for step in range(1, resume_at + 1)]
    assert sequence[:resume_at] == pytest.approx(planned)  # the 2-epoch plan until the crash
    assert all(b < a for a, b in zip(sequence, sequence[1:], strict=False))  # strictly falling: no jump up
    drops = [a - b for a, b in zip(sequence, sequence[1:], strict=False)]
    assert drops[resume_at - 1] <= max(drops[: resume_at - 1])  # no jump down either
    assert sequence[-1] < 1e-4 < sequence[resume_at]  # then down to ~0 at the new end
    # re-planning the cosine for 4 epochs from the start would have jumped up at the resume point
    assert warmup_cosine_factor(resume_at + 1, 0, 4 * steps_per_epoch) * 1e-2 > sequence[resume_at - 1]


def test_amp_on_cpu_trains_in_bfloat16_with_the_gradient_cache(tiny_data, tmp_path):
    fp32 = train_supcon(str(tiny_data), epochs=1, save_dir=str(tmp_path / "fp32"), **TINY)
    bf16 = train_supcon(str(tiny_data), epochs=1, save_dir=str(tmp_path / "bf16"), amp=True, **TINY)
    assert bf16["settings"]["accumulation"] == "gradcache"
    loss_fp32, loss_bf16 = fp32["history"]["train_loss"][0], bf16["history"]["train_loss"][0]
    assert loss_bf16 != loss_fp32  # autocast really ran the network in bfloat16 ...
    assert loss_bf16 == pytest.approx(loss_fp32, rel=0.02)  # ... and the loss is still the same SupCon value
    assert torch.load(tmp_path / "bf16" / "last.pth", weights_only=True)["scaler"] == {}  # no scaler for bf16


def test_controls_views_val_every_augment_channels_last_compile(tiny_data, tmp_path, monkeypatch):
    seen = {"views": set(), "validated_channels_last": [], "compiled": []}
    real_loss = train.SupConLoss

    class RecordingLoss(real_loss):
        def forward(self, features, labels=None, mask=None):
            seen["views"].add(features.shape[1])
            return super().forward(features, labels, mask)

    real_validation = train.validation_metrics

    def recording_validation(model, *args, **kwargs):
        conv = next(p for p in model.parameters() if p.dim() == 4)
        seen["validated_channels_last"].append(conv.is_contiguous(memory_format=torch.channels_last))
        return real_validation(model, *args, **kwargs)

    def fake_compile(module):
        seen["compiled"].append(module)
        return module

    monkeypatch.setattr(train, "SupConLoss", RecordingLoss)
    monkeypatch.setattr(train, "validation_metrics", recording_validation)
    monkeypatch.setattr(torch, "compile", fake_compile)
    result = train_supcon(str(tiny_data), epochs=3, save_dir=str(tmp_path), views=3, val_every=2, augment="standard",
                          hflip=False, colour_ops=False, channels_last=True, compile=True, **TINY)
    assert seen["views"] == {3}
    assert result["history"]["val_epoch"] == [2, 3] and len(result["history"]["val_map_at_r"]) == 2
    assert seen["validated_channels_last"] == [True, True] and len(seen["compiled"]) == 1
    settings = torch.load(tmp_path / "last.pth", weights_only=True)["run_settings"]
    assert (settings["augment"], settings["hflip"], settings["colour_ops"], settings["views"]) == (
        "standard", False, False, 3)


def test_bad_arguments_are_clear_errors(tiny_data, tmp_path):
    with pytest.raises(ValueError, match="unknown augmentation preset"):
        train_supcon(str(tiny_data), epochs=1, save_dir=str(tmp_path), augment="strong", **TINY)
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
        "--views", "3", "--ema", "--ema_decay", "0.9", "--augment", "light", "--no_hflip", "--drop_path_rate", "0.1",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "× 3 views (gradcache, 2 process(es))" in result.stdout
    checkpoint = torch.load(tmp_path / "ddp" / "last.pth", weights_only=True)
    assert len(checkpoint["rng"]) == 2 and checkpoint["epoch"] == 0
    settings = checkpoint["run_settings"]
    assert (settings["views"], settings["ema"], settings["augment"], settings["hflip"]) == (3, True, "light", False)

    # the validation sharded over both ranks equals one process validating the saved (EMA) weights
    model, _ = EmbeddingModel.from_checkpoint(tmp_path / "ddp" / "last.pth")
    train_records, val_records, _ = train.load_data(str(tiny_data), None, settings["val_split"], settings["seed"])
    single, _ = train.validation_metrics(model, train_records, val_records, EvalTransform.from_config(model.config),
                                         torch.device("cpu"))
    assert checkpoint["metrics"] == pytest.approx(single, abs=1e-6)

    # resuming from the command line with another run-defining value is one error line naming both values
    resume = [sys.executable, "train.py", "--data_root", str(tiny_data), "--save_dir", str(tmp_path / "ddp"),
              "--resume", str(tmp_path / "ddp" / "last.pth"), "--lr", "0.5", "--epochs", "2"]
    refused = subprocess.run(resume, cwd=REPO, capture_output=True, text=True, timeout=300, env=env)
    assert refused.returncode == 2 and "error: resuming" in refused.stderr
    assert "lr=0.5 (the checkpoint has 0.0003)" in refused.stderr


@pytest.mark.parametrize(
    "parse_args, options",
    [
        (train_parse_args, ["--data_root", "--batch_size", "--target_batch", "--epochs", "--warmup_epochs", "--lr",
                            "--save_dir", "--model_name", "--temperature", "--emb_dim", "--img_size", "--pretrained",
                            "--val_root", "--val_split", "--num_workers", "--amp", "--resume", "--seed", "--device",
                            "--m_per_class", "--accumulation", "--augment", "--no_hflip", "--no_colour_ops",
                            "--drop_rate", "--drop_path_rate", "--ema", "--ema_decay", "--views", "--val_every",
                            "--channels_last", "--compile", "--weight_decay"]),
        (retrieval_parse_args, ["--model_path", "--gallery_root", "--images", "--top_k", "--eval", "--query_root"]),
        (augment_parse_args, ["--grid", "--output", "--img_size", "--seed", "--show", "--augment", "--no_hflip",
                              "--no_colour_ops"]),
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
    assert (args.batch_size, args.save_dir) == (16, "checkpoints_supcon")
    # run-defining flags stay unset on the command line (a resumed run takes the checkpoint's) ...
    assert all(getattr(args, key) is None for key in train.RUN_DEFAULTS if hasattr(args, key))
    # ... and a new run gets the seed's defaults
    defaults = train.RUN_DEFAULTS
    assert (defaults["target_batch"], train.DEFAULT_EPOCHS, defaults["warmup_epochs"], defaults["lr"]) == (
        128, 50, 5, 3e-4)
    assert (defaults["model_name"], defaults["temperature"], defaults["emb_dim"], defaults["img_size"]) == (
        "tf_efficientnetv2_m", 0.1, 512, None)
    assert defaults["accumulation"] == "gradcache" and defaults["m_per_class"] == 4
    assert (defaults["augment"], defaults["hflip"], defaults["colour_ops"], defaults["ema"]) == (
        "colour_agnostic", True, True, False)
