"""Supervised-contrastive (SupCon) training of an image embedding, validated by gallery retrieval.

Data: ``data_root/<class_name>/<images>``. Each optimizer step contrasts ``target_batch`` images
(two augmented views each) drawn ``m_per_class`` per class; the gradient cache computes the exact
gradient of that batch from micro-batches of ``batch_size`` (under torchrun, the batch is global
over ranks). Every epoch the held-out images are retrieved against the training gallery and
``best_supcon.pth`` keeps the best validation mAP@R.

    python train.py --data_root data/train --epochs 50
    torchrun --nproc_per_node=2 train.py --data_root data/train --device cpu
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from augment_images import A2ClothingTransform, EvalTransform, MultiViewTransform, seed_worker_augmentation
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
    scan_image_folder,
    split_per_class,
)
from myutils.data.m_per_class_sampler import MPerClassBatchSampler
from myutils.retrieval.embedding import embed_records
from myutils.retrieval.grad_cache import accumulated_backward, grad_cache_backward
from myutils.retrieval.metrics import retrieval_metrics
from myutils.training.checkpoint import load_checkpoint, save_checkpoint
from myutils.training.distributed import all_reduce_mean, barrier, cleanup_distributed, init_distributed
from myutils.training.log import TrainingLog, plot_curves
from myutils.training.precision import autocast, autocast_dtype, make_grad_scaler
from myutils.training.schedule import warmup_cosine_scheduler
from myutils.training.seeding import capture_rng_state, restore_rng_state, seed_everything, worker_seed

BACKWARD_METHODS = {"gradcache": grad_cache_backward, "plain": accumulated_backward}
VAL_METRICS = ("precision_at_1", "recall_at_1", "recall_at_5", "recall_at_10", "mrr", "r_precision", "map_at_r")
CURVE_PANELS = {
    "training loss": ["train_loss"],
    "learning rate": ["lr"],
    "validation retrieval": [f"val_{name}" for name in VAL_METRICS],
    "throughput (images/s)": ["images_per_s"],
}


def load_data(data_root, val_root, val_split, seed):
    """Training records, validation records (held-out fraction or a separate folder), class names."""
    records, class_names = scan_image_folder(data_root)
    if val_root:
        val_records, _ = scan_image_folder(val_root, class_names)
        return records, val_records, class_names
    train_records, val_records = split_per_class(records, val_split, seed)
    return train_records, val_records, class_names


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


def validate(model, train_records, val_records, eval_transform, device, amp, batch_size, num_workers, progress):
    """Retrieval metrics of the held-out images against the training gallery (leave-one-out without them)."""
    embed = functools.partial(embed_records, model, transform=eval_transform, device=device, batch_size=batch_size,
                              num_workers=num_workers, amp=amp, progress=progress)
    gallery = embed(train_records, desc="gallery")
    skipped = list(gallery.skipped_paths)
    if val_records:
        queries = embed(val_records, desc="validation")
        skipped += queries.skipped_paths
        metrics = retrieval_metrics(queries.embeddings, queries.labels, gallery.embeddings, gallery.labels)
    else:
        metrics = retrieval_metrics(gallery.embeddings, gallery.labels, gallery.embeddings, gallery.labels, True)
    return metrics, skipped


def gather_rng_states(ctx) -> list[dict[str, Any]]:
    """Every rank's RNG state (rank order), so a resumed run continues each rank's stream."""
    state = capture_rng_state()
    if not ctx.enabled:
        return [state]
    states: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(states, state)
    return states


def train_one_epoch(train_model, loader, steps_per_batch, backward_method, loss_fn, optimizer, scheduler, scaler,
                    ctx, amp_context, grad_clip, log, global_step, epoch, progress):
    """One pass over the sampler; returns (mean loss, images/s, skipped images, global step)."""
    no_sync = train_model.no_sync if ctx.enabled else contextlib.nullcontext

    def backward(tensor):
        scaler.scale(tensor).backward()

    losses, n_images, n_skipped, micro_batches = [], 0, 0, []
    start = time.perf_counter()
    bar = tqdm(loader, desc=f"epoch {epoch + 1}", disable=not (progress and ctx.is_main), leave=False)
    for index, (inputs, labels, _, skipped) in enumerate(bar):
        n_skipped += skipped
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
        n_images += sum(images.shape[0] for images, _ in micro_batches)
        micro_batches = []
        losses.append(loss)
        global_step += 1
        bar.set_postfix(loss=f"{loss:.4f}")
        if log is not None:
            log.scalar("Train/loss", loss, global_step)
            log.scalar("Train/lr", optimizer.param_groups[0]["lr"], global_step)
    elapsed = time.perf_counter() - start
    images_per_s = all_reduce_mean(n_images, ctx.device) * ctx.world_size / max(elapsed, 1e-9)
    total_skipped = round(all_reduce_mean(n_skipped, ctx.device) * ctx.world_size)
    mean_loss = all_reduce_mean(sum(losses) / max(1, len(losses)), ctx.device)
    return mean_loss, images_per_s, total_skipped, global_step


def train_supcon(
    data_root: str,
    batch_size: int = 16,
    target_batch: int = 128,
    epochs: int = 50,
    warmup_epochs: int = 5,
    lr: float = 3e-4,
    save_dir: str = "checkpoints_supcon",
    model_name: str = "tf_efficientnetv2_m",
    temperature: float = 0.1,
    emb_dim: int = 512,
    img_size: int | None = None,
    pretrained: str | None = None,
    val_root: str | None = None,
    val_split: float = 0.1,
    num_workers: int = 4,
    amp: bool = False,
    resume: str | None = None,
    seed: int = 0,
    device: str | None = None,
    m_per_class: int = 4,
    accumulation: str = "gradcache",
    weight_decay: float = 0.05,
    grad_clip: float = 1.0,
    eval_batch_size: int = 64,
    progress: bool = True,
) -> dict[str, Any]:
    """Train an :class:`EmbeddingModel` with SupCon; returns the best metric/epoch, checkpoint paths and history."""
    settings = dict(locals())  # every argument, passed on unchanged
    if accumulation not in BACKWARD_METHODS:
        raise InputError(f"accumulation must be one of {sorted(BACKWARD_METHODS)}, got {accumulation!r}")
    if epochs < 1 or not 0 <= warmup_epochs <= epochs:
        raise InputError(f"need epochs >= 1 and 0 <= warmup_epochs <= epochs, got {epochs}, {warmup_epochs}")
    ctx = init_distributed(device)
    try:
        return _train(ctx, **settings)
    finally:
        cleanup_distributed()


def _train(ctx, data_root, batch_size, target_batch, epochs, warmup_epochs, lr, save_dir, model_name, temperature,
           emb_dim, img_size, pretrained, val_root, val_split, num_workers, amp, resume, seed, device, m_per_class,
           accumulation, weight_decay, grad_clip, eval_batch_size, progress) -> dict[str, Any]:
    save_dir = Path(save_dir)
    seed_everything(seed)
    train_records, val_records, class_names = load_data(data_root, val_root, val_split, seed)
    checkpoint = load_checkpoint(resume) if resume else None
    if checkpoint is not None:
        if checkpoint["class_names"] != class_names:
            raise InputError(f"--resume {resume}: its classes differ from the classes in {data_root}")
        model = EmbeddingModel.from_config(checkpoint["model_config"])
    else:
        model = EmbeddingModel(model_name, emb_dim, pretrained, img_size)
    model.to(ctx.device)
    config = model.config
    seed_everything(seed + ctx.rank)  # model init is shared (DDP broadcasts rank 0's); dropout is per rank

    train_set = ImageFolderDataset(
        train_records, MultiViewTransform(A2ClothingTransform(config["img_size"], config["mean"], config["std"]), 2)
    )
    sampler = MPerClassBatchSampler(
        train_set.labels, m_per_class, batch_size, target_batch, ctx.world_size, ctx.rank, seed
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    steps = sampler.batches_per_epoch
    scheduler = warmup_cosine_scheduler(optimizer, warmup_epochs * steps, epochs * steps)
    amp_dtype = autocast_dtype(ctx.device)
    scaler = make_grad_scaler(ctx.device, amp, amp_dtype)
    loss_fn = SupConLoss(temperature)

    start_epoch, best_metric, best_epoch, history, global_step = 0, -1.0, -1, {}, 0
    if checkpoint is not None:
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        scaler.load_state_dict(checkpoint["scaler"])
        start_epoch, best_metric = checkpoint["epoch"] + 1, checkpoint["best_metric"]
        best_epoch, history, global_step = checkpoint["best_epoch"], checkpoint["history"], checkpoint["global_step"]
        rng_states = checkpoint["rng"]
        restore_rng_state(rng_states[ctx.rank] if len(rng_states) == ctx.world_size else rng_states[0])
    train_model = DistributedDataParallel(model) if ctx.enabled else model
    log = TrainingLog(save_dir / "tensorboard", save_dir / "history.json", history) if ctx.is_main else None
    eval_transform = EvalTransform(config["img_size"], config["mean"], config["std"])
    amp_context = functools.partial(autocast, ctx.device, amp, amp_dtype)
    if ctx.is_main:
        print(f"{len(class_names)} classes, {len(train_records)} training / {len(val_records)} validation images; "
              f"{steps} steps/epoch of {target_batch} images ({accumulation}, {ctx.world_size} process(es))")

    for epoch in range(start_epoch, epochs):
        sampler.set_epoch(epoch)
        loader = make_train_loader(train_set, sampler, num_workers, seed * 10_007 + epoch, ctx.rank, ctx.device)
        model.train()
        train_loss, images_per_s, n_skipped, global_step = train_one_epoch(
            train_model, loader, sampler.steps_per_batch, BACKWARD_METHODS[accumulation], loss_fn, optimizer,
            scheduler, scaler, ctx, amp_context, grad_clip, log, global_step, epoch, progress,
        )
        rng_states = gather_rng_states(ctx)
        if ctx.is_main:
            metrics, val_skipped = validate(
                model, train_records, val_records, eval_transform, ctx.device, amp, eval_batch_size, num_workers, progress
            )
            values = {"train_loss": train_loss, "lr": optimizer.param_groups[0]["lr"], "images_per_s": images_per_s,
                      "skipped_images": n_skipped + len(val_skipped)}
            values.update({f"val_{name}": metrics[name] for name in VAL_METRICS})
            log.log_epoch(epoch + 1, values)
            improved = metrics["map_at_r"] > best_metric
            if improved:
                best_metric, best_epoch = metrics["map_at_r"], epoch + 1
            state = {
                "model": model.state_dict(), "model_config": config, "class_names": class_names,
                "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict(), "epoch": epoch, "global_step": global_step,
                "best_metric": best_metric, "best_epoch": best_epoch, "metrics": metrics, "rng": rng_states,
                "history": log.history,
            }
            save_checkpoint(state, save_dir / "last.pth")
            if improved:
                save_checkpoint(state, save_dir / "best_supcon.pth")
            plot_curves(log.history, CURVE_PANELS, save_dir / "training_curves.png", title="SupCon training")
            print(f"epoch {epoch + 1}/{epochs}: loss {train_loss:.4f}, val P@1 {metrics['precision_at_1']:.3f}, "
                  f"mAP@R {metrics['map_at_r']:.3f}, {images_per_s:.1f} img/s, skipped images {values['skipped_images']}"
                  + (" (best)" if improved else ""))
        barrier()
    if log is not None:
        log.close()
    return {
        "best_metric": best_metric, "best_epoch": best_epoch, "history": log.history if log else history,
        "best_path": str(save_dir / "best_supcon.pth"), "last_path": str(save_dir / "last.pth"),
    }


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Train an image embedding with supervised contrastive loss (SupCon); "
        "run under torchrun for multi-process training.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--data_root", required=True, help="training images, one sub-folder per class")
    p.add_argument("--batch_size", type=positive_int, default=16, help="micro-batch: images per forward pass per process")
    p.add_argument("--target_batch", type=positive_int, default=128,
                   help="contrastive batch: images per optimizer step over all processes (multiple of "
                        "batch_size × processes)")
    p.add_argument("--epochs", type=positive_int, default=50, help="training epochs")
    p.add_argument("--warmup_epochs", type=non_negative_int, default=5, help="epochs of linear lr warm-up before the cosine decay")
    p.add_argument("--lr", type=positive_float, default=3e-4, help="peak AdamW learning rate")
    p.add_argument("--weight_decay", type=non_negative_float, default=0.05, help="AdamW weight decay")
    p.add_argument("--grad_clip", type=non_negative_float, default=1.0, help="max gradient L2 norm")
    p.add_argument("--save_dir", default="checkpoints_supcon",
                   help="where best_supcon.pth, last.pth, history.json, training_curves.png and tensorboard/ go")
    p.add_argument("--model_name", default="tf_efficientnetv2_m", help="any timm model name, e.g. tf_efficientnetv2_s")
    p.add_argument("--pretrained", default=None, metavar="PATH",
                   help="local weights file for the backbone (.safetensors/.pth); nothing is downloaded")
    p.add_argument("--emb_dim", type=positive_int, default=512, help="embedding size")
    p.add_argument("--img_size", type=positive_int, default=None, help="input side length; unset: the model's data config")
    p.add_argument("--temperature", type=positive_float, default=0.1, help="SupCon temperature")
    p.add_argument("--m_per_class", type=non_negative_int, default=4,
                   help="images per class in each contrastive batch (0: plain random batches)")
    p.add_argument("--accumulation", choices=sorted(BACKWARD_METHODS), default="gradcache",
                   help="gradcache: exact gradient of the whole target_batch; plain: mean of micro-batch losses")
    p.add_argument("--val_root", default=None, help="validation images (same class folders); overrides --val_split")
    p.add_argument("--val_split", type=unit_float, default=0.1,
                   help="fraction of each class held out for validation when --val_root is not given")
    p.add_argument("--eval_batch_size", type=positive_int, default=64, help="batch size for embedding the validation gallery")
    p.add_argument("--num_workers", type=non_negative_int, default=min(4, os.cpu_count() or 1), help="DataLoader workers")
    p.add_argument("--amp", action="store_true", help="mixed precision (CUDA fp16/bf16 with a scaler, CPU bf16)")
    p.add_argument("--resume", default=None, metavar="PATH", help="continue from a last.pth/best_supcon.pth")
    p.add_argument("--seed", type=non_negative_int, default=0, help="random seed (data split, sampling, augmentation, init)")
    p.add_argument("--device", default=None, help="cuda, cuda:1 or cpu; unset: cuda when available")
    p.add_argument("--no_progress", action="store_true", help="hide tqdm progress bars")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = vars(parse_args(argv))
    args["progress"] = not args.pop("no_progress")
    result = train_supcon(**args)
    if result["best_epoch"] > 0:
        print(f"best validation mAP@R {result['best_metric']:.4f} at epoch {result['best_epoch']}: {result['best_path']}")


if __name__ == "__main__":
    run(main)
