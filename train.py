"""Supervised-contrastive (SupCon) training of an image embedding, validated by gallery retrieval.

Data: ``data_root/<class_name>/<images>`` (at least two classes). Each optimizer step contrasts
``target_batch`` images (``views`` augmented views each) drawn ``m_per_class`` per class; the
gradient cache computes the exact gradient of that batch from micro-batches of ``batch_size``
(under torchrun, the batch is global over ranks). Every ``val_every`` epochs the held-out images
are retrieved against the training gallery (split over the ranks) and ``best_supcon.pth`` keeps
the best validation mAP@R; without held-out images it keeps the lowest training loss.

    python train.py --data_root data/train --epochs 50
    python train.py --data_root data/train --resume checkpoints_supcon/last.pth --epochs 80
    torchrun --nproc_per_node=2 train.py --data_root data/train --device cpu
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from timm.optim import param_groups_weight_decay
from timm.utils import ModelEmaV3
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from augment_images import (
    A2ClothingTransform,
    EvalTransform,
    MultiViewTransform,
    add_augmentation_arguments,
    require_preset,
    seed_worker_augmentation,
)
from loss import SupConLoss
from model import EmbeddingModel
from myutils.cli import (
    InputError,
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
    run,
    unit_float,
)
from myutils.data.image_folder import (
    ImageFolderDataset,
    collate_skip_none,
    require_data_root,
    scan_image_folder,
    split_per_class,
)
from myutils.data.image_io import size_pair
from myutils.data.m_per_class_sampler import MPerClassBatchSampler
from myutils.retrieval.grad_cache import accumulated_backward, grad_cache_backward
from myutils.retrieval.validation import validation_metrics
from myutils.training.checkpoint import load_checkpoint, resolve_run_settings, save_checkpoint
from myutils.training.distributed import (
    all_gather_object,
    all_reduce_mean,
    barrier,
    cleanup_distributed,
    init_distributed,
)
from myutils.training.log import TrainingLog, plot_curves
from myutils.training.precision import autocast, autocast_dtype, make_grad_scaler
from myutils.training.schedule import warmup_cosine_scheduler
from myutils.training.seeding import (
    capture_rank_rng_states,
    resume_rank_rng_states,
    seed_everything,
    worker_seed,
)

BACKWARD_METHODS = {"gradcache": grad_cache_backward, "plain": accumulated_backward}
# Settings that define a run: a new run's defaults (the seed's values); --resume takes the checkpoint's.
RUN_DEFAULTS: dict[str, Any] = {
    "model_name": "tf_efficientnetv2_m", "emb_dim": 512, "img_size": None, "drop_rate": 0.0, "drop_path_rate": 0.0,
    "lr": 3e-4, "warmup_epochs": 5, "weight_decay": 0.05, "grad_clip": 1.0, "temperature": 0.1,
    "target_batch": 128, "m_per_class": 4, "views": 2, "accumulation": "gradcache", "augment": "colour_agnostic",
    "hflip": True, "colour_ops": True, "ema": False, "ema_decay": 0.9998, "val_split": 0.1, "seed": 0,
}
DEFAULT_EPOCHS = 50
VAL_METRICS = ("precision_at_1", "recall_at_1", "recall_at_5", "recall_at_10", "mrr", "r_precision", "map_at_r")
CURVE_PANELS = {
    "training loss": ["train_loss"],
    "learning rate": ["lr"],
    "validation retrieval": [f"val_{name}" for name in VAL_METRICS],
    "throughput (images/s)": ["images_per_s"],
}
VAL_X_KEYS = {f"val_{name}": "val_epoch" for name in VAL_METRICS}


def load_data(data_root, val_root, val_split, seed):
    """Training records, validation records (held-out fraction or a separate folder), class names."""
    records, class_names = scan_image_folder(data_root)
    if len(class_names) < 2:
        raise InputError(f"{data_root} holds {len(class_names)} class with images ({', '.join(class_names)}): "
                         "contrastive training needs at least two classes")
    if val_root:
        val_records, _ = scan_image_folder(val_root, class_names)
        return records, val_records, class_names
    train_records, val_records = split_per_class(records, val_split, seed)
    return train_records, val_records, class_names


def make_optimizer(model: torch.nn.Module, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW without weight decay on biases, norm weights and the backbone's ``no_weight_decay()`` (timm's rule)."""
    backbone = getattr(model, "backbone", None)
    skip = {f"backbone.{name}" for name in backbone.no_weight_decay()} if hasattr(backbone, "no_weight_decay") else ()
    return torch.optim.AdamW(param_groups_weight_decay(model, weight_decay, no_weight_decay_list=skip), lr=lr)


def make_train_loader(dataset, sampler, num_workers, epoch_seed, rank, device) -> DataLoader:
    """A loader whose augmentation stream depends on (seed, epoch, rank, worker): reproducible, never repeated."""
    if num_workers == 0:
        dataset.transform.set_seed(worker_seed(epoch_seed, 0, rank))
    return DataLoader(
        dataset,
        batch_sampler=sampler,
        num_workers=num_workers,
        collate_fn=collate_skip_none,
        pin_memory=device.type == "cuda",
        worker_init_fn=functools.partial(seed_worker_augmentation, base_seed=epoch_seed, rank=rank)
        if num_workers
        else None,
        prefetch_factor=4 if num_workers else None,
    )


class UnreadableImages:
    """The distinct unreadable files met so far; each is named once, on screen and in ``skipped_images.txt``."""

    def __init__(self, log_path: Path, known: Sequence[str] = ()):
        self.log_path = log_path
        self.known = set(known)

    def report(self, paths: set[str]) -> None:
        new = sorted(paths - self.known)
        if not new:
            return
        self.known.update(new)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "a", encoding="utf-8") as handle:
            handle.writelines(f"{path}\n" for path in new)
        for path in new:
            print(f"unreadable image skipped (listed in {self.log_path}): {path}")


def train_one_epoch(train_model, loader, steps_per_batch, backward_method, loss_fn, optimizer, scheduler, scaler,
                    ctx, amp_context, grad_clip, ema, log, global_step, epoch, progress):
    """One pass over the sampler; returns (mean loss, images/s, unreadable paths, global step)."""
    no_sync = train_model.no_sync if ctx.enabled else contextlib.nullcontext
    records = loader.dataset.records

    def backward(tensor):
        scaler.scale(tensor).backward()

    losses, n_images, skipped, micro_batches = [], 0, set(), []
    start = time.perf_counter()
    bar = tqdm(loader, desc=f"epoch {epoch + 1}", disable=not (progress and ctx.is_main), leave=False)
    for index, (inputs, labels, _, skipped_indices) in enumerate(bar):
        skipped.update(records[i].path for i in skipped_indices.tolist())
        if inputs is not None:
            micro_batches.append((inputs.to(ctx.device, non_blocking=True), labels.to(ctx.device)))
        if (index + 1) % steps_per_batch:
            continue
        # every rank must take part in the step's collectives: skip it everywhere if one rank has no images
        if all_reduce_mean(float(bool(micro_batches)), ctx.device) < 1.0:
            micro_batches = []
            continue
        optimizer.zero_grad(set_to_none=True)
        loss = backward_method(train_model, micro_batches, loss_fn, amp_context, backward, no_sync)
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(train_model.parameters(), grad_clip)
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        global_step += 1
        if ema is not None:
            ema.update(_unwrapped(train_model), step=global_step)
        n_images += sum(images.shape[0] for images, _ in micro_batches)
        micro_batches = []
        losses.append(loss)
        bar.set_postfix(loss=f"{loss:.4f}")
        if log is not None:
            log.scalar("Train/loss", loss, global_step)
            log.scalar("Train/lr", optimizer.param_groups[0]["lr"], global_step)
    elapsed = time.perf_counter() - start
    images_per_s = all_reduce_mean(n_images, ctx.device) * ctx.world_size / max(elapsed, 1e-9)
    mean_loss = all_reduce_mean(sum(losses) / max(1, len(losses)), ctx.device)
    return mean_loss, images_per_s, skipped, global_step


def _unwrapped(module: torch.nn.Module) -> torch.nn.Module:
    """The model inside torch.compile and DDP wrappers."""
    module = getattr(module, "_orig_mod", module)
    return module.module if isinstance(module, DistributedDataParallel) else module


def train_supcon(
    data_root: str,
    batch_size: int = 16,
    target_batch: int | None = None,
    epochs: int | None = None,
    warmup_epochs: int | None = None,
    lr: float | None = None,
    save_dir: str = "checkpoints_supcon",
    model_name: str | None = None,
    temperature: float | None = None,
    emb_dim: int | None = None,
    img_size: int | Sequence[int] | None = None,
    pretrained: str | None = None,
    val_root: str | None = None,
    val_split: float | None = None,
    num_workers: int = 4,
    amp: bool = False,
    resume: str | None = None,
    seed: int | None = None,
    device: str | None = None,
    m_per_class: int | None = None,
    accumulation: str | None = None,
    weight_decay: float | None = None,
    grad_clip: float | None = None,
    eval_batch_size: int = 64,
    progress: bool = True,
    augment: str | None = None,
    hflip: bool | None = None,
    colour_ops: bool | None = None,
    drop_rate: float | None = None,
    drop_path_rate: float | None = None,
    ema: bool | None = None,
    ema_decay: float | None = None,
    views: int | None = None,
    val_every: int = 1,
    channels_last: bool = False,
    compile: bool = False,
) -> dict[str, Any]:
    """Train an :class:`EmbeddingModel` with SupCon; returns the best metric/epoch, checkpoint paths and history.

    The settings that define a run (the keys of :data:`RUN_DEFAULTS`: model, emb_dim, img_size, lr,
    schedule, loss, batch composition, augmentation, EMA, split, seed) left at ``None`` take their
    default (the seed's values: ``target_batch=128, warmup_epochs=5, lr=3e-4, model_name=
    "tf_efficientnetv2_m", temperature=0.1``, ...) in a new run, and the checkpoint's with ``resume``,
    where a different value is an error naming both. ``epochs`` (default 50; on resume the
    checkpoint's) may change on resume: the cosine continues from the current lr to the new end.
    ``batch_size``, workers, device, ``amp``, ``val_every``, ``channels_last`` and ``compile`` are
    free to change. ``ema`` keeps a timm ``ModelEmaV3`` of the weights (decay ramped up by timm's
    warm-up), used for validation and stored as ``model`` in the checkpoints.
    """
    requested = {key: value for key, value in locals().items() if key in RUN_DEFAULTS}
    if img_size is not None:
        requested["img_size"] = list(size_pair(img_size))
    options = {key: value for key, value in locals().items() if key not in {*RUN_DEFAULTS, "requested", "device"}}
    if accumulation is not None and accumulation not in BACKWARD_METHODS:
        raise InputError(f"accumulation must be one of {sorted(BACKWARD_METHODS)}, got {accumulation!r}")
    if augment is not None:
        require_preset(augment)
    require_data_root(data_root)  # cheap inputs before any checkpoint or network is read
    if val_every < 1 or (epochs is not None and epochs < 1):
        raise InputError(f"epochs and val_every must be positive, got {epochs}, {val_every}")
    ctx = init_distributed(device)
    try:
        return _train(ctx, requested, **options)
    finally:
        cleanup_distributed()


def _run_settings(requested, resume, epochs):
    """``(settings, epochs, checkpoint or None)`` for a new or a resumed run."""
    checkpoint = load_checkpoint(resume) if resume else None
    saved = checkpoint.get("run_settings") if checkpoint is not None else None
    if checkpoint is not None and saved is None:
        raise InputError(f"{resume} holds no run settings (written by an older train.py?): start a new run")
    settings = resolve_run_settings(requested, RUN_DEFAULTS, saved, str(resume))
    if checkpoint is None:
        epochs = epochs or DEFAULT_EPOCHS
    else:
        epochs = epochs or saved["epochs"]
        if epochs <= checkpoint["epoch"] + 1:
            raise InputError(f"--epochs {epochs}: {resume} already holds {checkpoint['epoch'] + 1} epochs; "
                             "ask for more to continue")
    if not 0 <= settings["warmup_epochs"] <= epochs:
        raise InputError(f"need 0 <= warmup_epochs <= epochs, got {settings['warmup_epochs']}, {epochs}")
    return settings, epochs, checkpoint


def _train(ctx, requested, data_root, batch_size, epochs, save_dir, pretrained, val_root, num_workers, amp, resume,
           eval_batch_size, progress, val_every, channels_last, compile) -> dict[str, Any]:
    save_dir = Path(save_dir)
    settings, epochs, checkpoint = _run_settings(requested, resume, epochs)
    seed = settings["seed"]
    seed_everything(seed)
    train_records, val_records, class_names = load_data(data_root, val_root, settings["val_split"], seed)
    if checkpoint is not None:
        if checkpoint["class_names"] != class_names:
            raise InputError(f"--resume {resume}: its classes differ from the classes in {data_root}")
        model = EmbeddingModel.from_config(checkpoint["model_config"])
    else:
        model = EmbeddingModel(settings["model_name"], settings["emb_dim"], pretrained, settings["img_size"],
                               drop_rate=settings["drop_rate"], drop_path_rate=settings["drop_path_rate"])
    model.to(ctx.device, memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    config = model.config
    settings["img_size"] = config["img_size"]
    seed_everything(seed + ctx.rank)  # model init is shared (DDP broadcasts rank 0's); dropout is per rank

    augmentation = A2ClothingTransform(config["img_size"], config["mean"], config["std"], preset=settings["augment"],
                                       hflip=settings["hflip"], colour_ops=settings["colour_ops"])
    train_set = ImageFolderDataset(train_records, MultiViewTransform(augmentation, settings["views"]))
    sampler = MPerClassBatchSampler(train_set.labels, settings["m_per_class"], batch_size, settings["target_batch"],
                                    ctx.world_size, ctx.rank, seed)
    optimizer = make_optimizer(model, settings["lr"], settings["weight_decay"])
    steps = sampler.batches_per_epoch
    scheduler = warmup_cosine_scheduler(optimizer, settings["warmup_epochs"] * steps, epochs * steps)
    amp_dtype = autocast_dtype(ctx.device)
    scaler = make_grad_scaler(ctx.device, amp, amp_dtype)
    loss_fn = SupConLoss(settings["temperature"])
    ema = ModelEmaV3(model, decay=settings["ema_decay"], use_warmup=True) if settings["ema"] else None

    start_epoch, best_metric, best_epoch, history, global_step, metrics = 0, None, -1, {}, 0, {}
    skipped_known: list[str] = []
    if checkpoint is not None:
        model.load_state_dict(checkpoint["online_model"] if ema is not None else checkpoint["model"])
        if ema is not None:
            ema.module.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        scaler.load_state_dict(checkpoint["scaler"])
        start_epoch, best_metric, best_epoch = checkpoint["epoch"] + 1, checkpoint["best_metric"], checkpoint["best_epoch"]
        history, global_step, metrics = checkpoint["history"], checkpoint["global_step"], checkpoint["metrics"]
        skipped_known = checkpoint["skipped_paths"]
        schedule = scheduler.lr_lambdas[0]
        if schedule.total_steps != epochs * steps:  # --epochs changed: continue the cosine from here
            if global_step >= schedule.total_steps:
                raise InputError(f"--epochs {epochs}: the learning rate of {resume} has already decayed to 0 at the "
                                 "end of its schedule, so more epochs would not train; start a new run")
            schedule.extend(global_step, epochs * steps)
        resume_rank_rng_states(checkpoint["rng"], seed + 1_000 * start_epoch, resume)
    train_model = DistributedDataParallel(model) if ctx.enabled else model
    if compile:
        train_model = _compiled(train_model)
    eval_model = ema.module if ema is not None else model
    log = TrainingLog(save_dir / "tensorboard", save_dir / "history.json", history) if ctx.is_main else None
    unreadable = UnreadableImages(save_dir / "skipped_images.txt", skipped_known)
    eval_transform = EvalTransform.from_config(config)
    amp_context = functools.partial(autocast, ctx.device, amp, amp_dtype)
    selection = "val_map_at_r" if val_records else "train_loss"
    if ctx.is_main:
        print(f"{len(class_names)} classes, {len(train_records)} training / {len(val_records)} validation images; "
              f"{steps} steps/epoch of {settings['target_batch']} images × {settings['views']} views "
              f"({settings['accumulation']}, {ctx.world_size} process(es))")
        if not val_records:
            print("no validation images (every class has a single image, or --val_split 0 without --val_root): "
                  "best_supcon.pth keeps the epoch with the lowest training loss")

    for epoch in range(start_epoch, epochs):
        sampler.set_epoch(epoch)
        loader = make_train_loader(train_set, sampler, num_workers, seed * 10_007 + epoch, ctx.rank, ctx.device)
        model.train()
        train_loss, images_per_s, skipped, global_step = train_one_epoch(
            train_model, loader, sampler.steps_per_batch, BACKWARD_METHODS[settings["accumulation"]], loss_fn,
            optimizer, scheduler, scaler, ctx, amp_context, settings["grad_clip"], ema, log, global_step, epoch,
            progress,
        )
        validated = bool(val_records) and ((epoch + 1) % val_every == 0 or epoch + 1 == epochs)
        if validated:
            metrics, val_skipped = validation_metrics(eval_model, train_records, val_records, eval_transform,
                                                      ctx.device, eval_batch_size, num_workers, amp, progress)
            skipped.update(val_skipped)
        skipped = set().union(*all_gather_object(skipped))
        rng_states = capture_rank_rng_states()  # after validation: the next epoch starts from exactly this state
        if ctx.is_main:
            unreadable.report(skipped)
            log.log_epoch(epoch + 1, {"train_loss": train_loss, "lr": optimizer.param_groups[0]["lr"],
                                      "images_per_s": images_per_s, "skipped_images": len(skipped)})
            if validated:
                log.log_series("val_epoch", epoch + 1, {f"val_{name}": metrics[name] for name in VAL_METRICS})
            improved = False
            if validated or selection == "train_loss":  # with validation images, only validated epochs compete
                value = metrics["map_at_r"] if validated else train_loss
                improved = best_metric is None or (value > best_metric if validated else value < best_metric)
            if improved:
                best_metric, best_epoch = value, epoch + 1
            state = {
                "model": eval_model.state_dict(), "model_config": config, "class_names": class_names,
                "run_settings": {**settings, "epochs": epochs},
                **({"online_model": model.state_dict()} if ema is not None else {}),
                "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict(), "epoch": epoch, "global_step": global_step,
                "best_metric": best_metric, "best_metric_name": selection, "best_epoch": best_epoch,
                "metrics": metrics, "rng": rng_states, "history": log.history, "skipped_paths": sorted(unreadable.known),
            }
            save_checkpoint(state, save_dir / "last.pth")
            if improved:
                save_checkpoint(state, save_dir / "best_supcon.pth")
            plot_curves(log.history, CURVE_PANELS, save_dir / "training_curves.png", title="SupCon training",
                        x_keys=VAL_X_KEYS)
            val_text = f", val P@1 {metrics['precision_at_1']:.3f}, mAP@R {metrics['map_at_r']:.3f}" if validated else ""
            print(f"epoch {epoch + 1}/{epochs}: loss {train_loss:.4f}{val_text}, lr {optimizer.param_groups[0]['lr']:.3g}, "
                  f"{images_per_s:.1f} img/s, unreadable images {len(skipped)}"
                  + (f" (best {selection})" if improved else ""))
        barrier()
    if log is not None:
        log.close()
    return {
        "best_metric": best_metric, "best_metric_name": selection, "best_epoch": best_epoch,
        "history": log.history if log else history, "best_path": str(save_dir / "best_supcon.pth"),
        "last_path": str(save_dir / "last.pth"), "settings": {**settings, "epochs": epochs},
    }


def _compiled(module: torch.nn.Module) -> torch.nn.Module:
    """``torch.compile(module)`` where this PyTorch has it; the module itself (with a warning) otherwise."""
    if not hasattr(torch, "compile"):
        warnings.warn("--compile: this PyTorch has no torch.compile; training uncompiled", stacklevel=2)
        return module
    return torch.compile(module)


def _run_help(text: str, key: str) -> str:
    return f"{text} (default: {RUN_DEFAULTS[key]}; with --resume: the checkpoint's)"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Train an image embedding with supervised contrastive loss (SupCon); run under torchrun for "
        "multi-process training. Settings marked 'with --resume: the checkpoint's' define the run: a resumed run "
        "takes them from its checkpoint, and asking for another value is an error.",
    )
    p.add_argument("--data_root", required=True, help="training images, one sub-folder per class (at least two)")
    p.add_argument("--batch_size", type=positive_int, default=16,
                   help="micro-batch: images per forward pass per process (default: 16)")
    p.add_argument("--target_batch", type=positive_int, default=None,
                   help=_run_help("contrastive batch: images per optimizer step over all processes (multiple of "
                                  "batch_size × processes)", "target_batch"))
    p.add_argument("--epochs", type=positive_int, default=None,
                   help=f"training epochs (default: {DEFAULT_EPOCHS}; with --resume: the checkpoint's, and a new "
                        "value continues the cosine smoothly to the new end)")
    p.add_argument("--warmup_epochs", type=non_negative_int, default=None,
                   help=_run_help("epochs of linear lr warm-up before the cosine decay", "warmup_epochs"))
    p.add_argument("--lr", type=positive_float, default=None, help=_run_help("peak AdamW learning rate", "lr"))
    p.add_argument("--weight_decay", type=non_negative_float, default=None,
                   help=_run_help("AdamW weight decay (never on biases and norm weights)", "weight_decay"))
    p.add_argument("--grad_clip", type=non_negative_float, default=None, help=_run_help("max gradient L2 norm", "grad_clip"))
    p.add_argument("--save_dir", default="checkpoints_supcon",
                   help="where best_supcon.pth, last.pth, history.json, training_curves.png, skipped_images.txt and "
                        "tensorboard/ go (default: checkpoints_supcon)")
    p.add_argument("--model_name", default=None,
                   help=_run_help("any timm model name, e.g. tf_efficientnetv2_s, vit_small_patch16_224", "model_name"))
    p.add_argument("--pretrained", default=None, metavar="PATH",
                   help="local weights file for the backbone (.safetensors/.pth); nothing is downloaded")
    p.add_argument("--emb_dim", type=positive_int, default=None, help=_run_help("embedding size", "emb_dim"))
    p.add_argument("--img_size", type=positive_int, default=None,
                   help="input side length, passed to timm for fixed-size models (ViT, Swin) (default: the model's "
                        "data config; with --resume: the checkpoint's)")
    p.add_argument("--drop_rate", type=unit_float, default=None, help=_run_help("timm dropout before the pooled features", "drop_rate"))
    p.add_argument("--drop_path_rate", type=unit_float, default=None, help=_run_help("timm stochastic depth", "drop_path_rate"))
    p.add_argument("--temperature", type=positive_float, default=None, help=_run_help("SupCon temperature", "temperature"))
    p.add_argument("--m_per_class", type=non_negative_int, default=None,
                   help=_run_help("images per class in each contrastive batch (0: plain random batches)", "m_per_class"))
    p.add_argument("--views", type=positive_int, default=None, help=_run_help("augmented views per image", "views"))
    p.add_argument("--accumulation", choices=sorted(BACKWARD_METHODS), default=None,
                   help=_run_help("gradcache: exact gradient of the whole target_batch; plain: mean of micro-batch "
                                  "losses", "accumulation"))
    add_augmentation_arguments(p)
    p.add_argument("--ema", action="store_true", default=None,
                   help="keep an exponential moving average of the weights (timm ModelEmaV3); validation and "
                        "best_supcon.pth use it (default: off; with --resume: the checkpoint's)")
    p.add_argument("--ema_decay", type=unit_float, default=None, help=_run_help("EMA decay (ramped up by timm's warm-up)", "ema_decay"))
    p.add_argument("--val_root", default=None, help="validation images (same class folders); overrides --val_split")
    p.add_argument("--val_split", type=unit_float, default=None,
                   help=_run_help("fraction of each class held out for validation when --val_root is not given", "val_split"))
    p.add_argument("--val_every", type=positive_int, default=1, help="validate every K epochs and after the last (default: 1)")
    p.add_argument("--eval_batch_size", type=positive_int, default=64,
                   help="batch size for embedding the validation gallery (default: 64)")
    p.add_argument("--num_workers", type=non_negative_int, default=min(4, os.cpu_count() or 1),
                   help="DataLoader workers (default: min(4, CPU count))")
    p.add_argument("--amp", action="store_true", help="mixed precision (CUDA fp16/bf16 with a scaler, CPU bf16)")
    p.add_argument("--channels_last", action="store_true", help="channels-last memory format (faster convolutions on GPUs)")
    p.add_argument("--compile", action="store_true", help="torch.compile the training model where available")
    p.add_argument("--resume", default=None, metavar="PATH", help="continue from a last.pth/best_supcon.pth")
    p.add_argument("--seed", type=non_negative_int, default=None,
                   help=_run_help("random seed (data split, sampling, augmentation, init)", "seed"))
    p.add_argument("--device", default=None, help="cuda, cuda:1 or cpu (default: cuda when available)")
    p.add_argument("--no_progress", action="store_true", help="hide tqdm progress bars")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = vars(parse_args(argv))
    args["progress"] = not args.pop("no_progress")
    no_hflip, no_colour_ops = args.pop("no_hflip"), args.pop("no_colour_ops")
    args["hflip"] = False if no_hflip else None
    args["colour_ops"] = False if no_colour_ops else None
    result = train_supcon(**args)
    if result["best_epoch"] > 0:
        name = "validation mAP@R" if result["best_metric_name"] == "val_map_at_r" else "training loss"
        print(f"best {name} {result['best_metric']:.4f} at epoch {result['best_epoch']}: {result['best_path']}")


if __name__ == "__main__":
    run(main)
