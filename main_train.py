"""Train the ROI appearance encoder on extracted ROI features, without identity labels.

    torchrun --nproc_per_node=2 main_train.py --data demo_runs/roi/features   # DDP (NCCL / gloo)
    python main_train.py --data FEATURES_DIR                                 # one process

One ``DistributedSampler`` over the whole data set gives each rank a disjoint part: every ROI
once per epoch (plus at most world_size - 1 repeats when the count does not divide evenly).
The original also sharded the data per rank, so each rank saw only half of its shard.
NT-Xent takes its negatives from every rank's batch (gathered with gradient), so the
contrastive batch is global as in single-process training; checkpoints keep every rank's RNG
state, so ``--resume`` under torchrun continues exactly (with the same number of processes).
AdamW, linear warm-up then cosine, bf16 autocast where supported, gradient clipping, a
checkpoint every ``--save_interval`` epochs plus ``last.pth`` (all loadable with
``torch.load(weights_only=True)``), ``--resume``, TensorBoard, ``history.json`` and a
curves PNG (rank 0 only).
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import time
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel
from torch.nn.utils import clip_grad_norm_
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

from myutils.cli import (
    InputError,
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
    run,
    unit_float,
)
from myutils.roi.encoder import ROIEncoder, ROIEncoderConfig, encoder_checkpoint_state
from myutils.roi.loss import beta_schedule, noisy_view, roi_contrastive_loss
from myutils.roi.shards import RoiFeatureDataset
from myutils.training.checkpoint import load_checkpoint, save_checkpoint
from myutils.training.distributed import (
    DistContext,
    all_gather_tensor,
    all_reduce_mean,
    cleanup_distributed,
    init_distributed,
)
from myutils.training.log import TrainingLog, plot_curves, write_json_atomic
from myutils.training.precision import autocast, autocast_dtype, make_grad_scaler
from myutils.training.schedule import warmup_cosine_scheduler
from myutils.training.seeding import (
    capture_rank_rng_states,
    resume_rank_rng_states,
    seed_everything,
    worker_seed,
)

DEFAULT_DATA = "demo_runs/roi/features"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", nargs="+", default=[DEFAULT_DATA],
                        help=f"ROI feature folders from scripts/extract_roi_features.py (default {DEFAULT_DATA})")
    parser.add_argument("--output_dir", default="runs/roi_encoder",
                        help="checkpoints/, tensorboard/, history.json, curves.png (default runs/roi_encoder)")
    parser.add_argument("--epochs", type=positive_int, default=500, help="training epochs (default 500)")
    parser.add_argument("--batch_size", type=positive_int, default=256, help="ROIs per batch on each process (default 256)")
    parser.add_argument("--lr", type=positive_float, default=1e-4, help="peak AdamW learning rate (default 1e-4)")
    parser.add_argument("--min_lr", type=non_negative_float, default=1e-5, help="learning rate at the end of the cosine (default 1e-5)")
    parser.add_argument("--weight_decay", type=non_negative_float, default=1e-4, help="AdamW weight decay (default 1e-4)")
    parser.add_argument("--warmup_epochs", type=non_negative_int, default=10,
                        help="linear lr warm-up, fixed RMB fusion and beta = 0.9 for this many epochs (default 10)")
    parser.add_argument("--conf_threshold", type=unit_float, default=0.3,
                        help="train only on ROIs with detection score >= this (default 0.3)")
    parser.add_argument("--temperature", type=positive_float, default=0.2, help="NT-Xent and student temperature (default 0.2)")
    parser.add_argument("--teacher_temperature", type=positive_float, default=0.07, help="teacher temperature (default 0.07)")
    parser.add_argument("--noise_std", type=non_negative_float, default=0.05, help="Gaussian noise of the views (default 0.05)")
    parser.add_argument("--drop_prob", type=unit_float, default=0.1,
                        help="probability that a view has elements zeroed (default 0.1)")
    parser.add_argument("--drop_fraction", type=unit_float, default=0.2, help="fraction zeroed in such a view (default 0.2)")
    parser.add_argument("--grad_clip", type=non_negative_float, default=7.0, help="max gradient norm (default 7)")
    parser.add_argument("--amp", choices=("auto", "bf16", "fp16", "off"), default="auto",
                        help="autocast: auto = bf16 on CUDA where supported (fp16 + scaler otherwise), off on CPU")
    parser.add_argument("--save_interval", type=positive_int, default=10, help="keep a checkpoint every n epochs (default 10)")
    parser.add_argument("--resume", default=None, help="checkpoint to continue from (e.g. OUTPUT/checkpoints/last.pth)")
    parser.add_argument("--workers", type=non_negative_int, default=2, help="DataLoader workers per process (default 2)")
    parser.add_argument("--seed", type=non_negative_int, default=0, help="random seed (default 0)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--log_sample_indices", action="store_true",
                        help="write the data-set indices each rank used per epoch to OUTPUT/sample_indices.json")
    return parser.parse_args(argv)


def amp_settings(choice: str, device: torch.device) -> tuple[bool, torch.dtype]:
    if choice == "off" or (choice == "auto" and device.type == "cpu"):
        return False, torch.float32
    return True, autocast_dtype(device, "auto" if choice == "auto" else choice)


def seed_worker(worker_id: int, base_seed: int, rank: int) -> None:
    torch.manual_seed(worker_seed(base_seed, worker_id, rank))


def make_loader(dataset: RoiFeatureDataset, args: argparse.Namespace, ctx: DistContext) -> DataLoader:
    sampler = DistributedSampler(dataset, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True, seed=args.seed)
    return DataLoader(
        dataset, batch_size=args.batch_size, sampler=sampler, num_workers=args.workers,
        pin_memory=ctx.device.type == "cuda", persistent_workers=args.workers > 0,
        worker_init_fn=functools.partial(seed_worker, base_seed=args.seed, rank=ctx.rank),
    )


def train_one_epoch(model, loader, optimizer, scheduler, scaler, args, ctx, epoch, amp, log):
    """One pass over this rank's part; returns (rank-averaged metrics, the data-set indices used here)."""
    model.train()
    beta = beta_schedule(epoch, args.epochs, args.warmup_epochs)
    sums = {"loss": 0.0, "nt_xent": 0.0, "kl": 0.0}
    seen = []
    batches = tqdm(loader, desc=f"epoch {epoch + 1}/{args.epochs}", disable=not ctx.is_main, leave=False)
    for features, indices in batches:
        features = features.to(ctx.device, non_blocking=True)
        seen.append(indices)
        view1 = noisy_view(features, args.drop_prob, args.drop_fraction, args.noise_std)
        view2 = noisy_view(features, args.drop_prob, args.drop_fraction, args.noise_std)
        with autocast(ctx.device, *amp):
            z1, z2 = model(torch.cat([view1, view2])).chunk(2)
        parts = roi_contrastive_loss(z1, z2, features, beta, args.temperature, args.teacher_temperature)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(parts["loss"]).backward()
        scaler.unscale_(optimizer)
        clip_grad_norm_(model.parameters(), args.grad_clip)
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        for key in sums:
            sums[key] += float(parts[key].detach())
        if ctx.is_main:
            batches.set_postfix(loss=f"{float(parts['loss'].detach()):.4f}")
            log.scalar("Iter/loss", float(parts["loss"].detach()), scheduler.last_epoch)
    steps = max(1, len(loader))
    metrics = {key: all_reduce_mean(value / steps, ctx.device) for key, value in sums.items()}
    metrics.update(beta=beta, lr=optimizer.param_groups[0]["lr"])
    local = torch.cat(seen) if seen else torch.zeros(0, dtype=torch.long)
    return metrics, local


def checkpoint_state(encoder, optimizer, scheduler, scaler, epoch, args, history, feature_metadata,
                     rng_per_rank) -> dict:
    return {
        "epoch": epoch,
        **encoder_checkpoint_state(encoder),
        "feature_metadata": feature_metadata,  # how the ROI features were made: val.py re-uses it
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict(),
        "args": dict(vars(args)),
        "history": history,
        "rng": rng_per_rank,  # index = rank: every process resumes its own random streams
    }


def train(args: argparse.Namespace) -> dict:
    """Train; returns the history (on every rank) and writes checkpoints and logs on rank 0."""
    ctx = init_distributed(args.device)
    try:
        return _train(args, ctx)
    finally:
        cleanup_distributed()


def _train(args: argparse.Namespace, ctx: DistContext) -> dict:
    seed_everything(args.seed + ctx.rank)
    output = Path(args.output_dir)
    dataset = RoiFeatureDataset(args.data, min_confidence=args.conf_threshold)
    loader = make_loader(dataset, args, ctx)
    encoder = ROIEncoder(ROIEncoderConfig(in_channels=dataset[0][0].shape[0])).to(ctx.device)
    model = DistributedDataParallel(encoder, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None) \
        if ctx.enabled else encoder
    optimizer = torch.optim.AdamW(encoder.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    steps_per_epoch = len(loader)
    scheduler = warmup_cosine_scheduler(optimizer, args.warmup_epochs * steps_per_epoch,
                                        args.epochs * steps_per_epoch, args.min_lr / args.lr)
    amp = amp_settings(args.amp, ctx.device)
    scaler = make_grad_scaler(ctx.device, *amp)

    start_epoch, history = 0, {}
    if args.resume:
        state = load_checkpoint(args.resume, map_location=ctx.device)
        encoder.load_state_dict(state["encoder"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        start_epoch, history = state["epoch"], state["history"]
        resume_rank_rng_states(state["rng"], args.seed + 1_000 * state["epoch"], args.resume)

    log = TrainingLog(output / "tensorboard", output / "history.json", history) if ctx.is_main else None
    if ctx.is_main:
        print(f"{len(dataset)} ROIs (score >= {args.conf_threshold}), {ctx.world_size} process(es), "
              f"{steps_per_epoch} steps/epoch, autocast {amp[1] if amp[0] else 'off'}, device {ctx.device}")
    sample_log = {}
    for epoch in range(start_epoch, args.epochs):
        loader.sampler.set_epoch(epoch)
        encoder.set_warmup(epoch < args.warmup_epochs)
        started = time.perf_counter()
        metrics, local_indices = train_one_epoch(model, loader, optimizer, scheduler, scaler, args, ctx, epoch, amp, log)
        metrics["samples_per_s"] = len(loader.sampler) * ctx.world_size / (time.perf_counter() - started)
        if args.log_sample_indices:
            # every rank contributes its list (padded to the common length) for the audit file
            counts = all_gather_tensor(torch.tensor([len(local_indices)], device=ctx.device))
            padded = torch.full((int(counts.max()),), -1, dtype=torch.long, device=ctx.device)
            padded[: len(local_indices)] = local_indices.to(ctx.device)
            gathered = all_gather_tensor(padded).view(ctx.world_size, -1)
            sample_log[str(epoch + 1)] = [row[row >= 0].tolist() for row in gathered.cpu()]
        rng_per_rank = capture_rank_rng_states()  # every rank takes part, rank 0 saves
        if ctx.is_main:
            log.log_epoch(epoch + 1, metrics)
            print(f"epoch {epoch + 1}/{args.epochs} loss {metrics['loss']:.4f} nt_xent {metrics['nt_xent']:.4f} "
                  f"kl {metrics['kl']:.4f} beta {metrics['beta']:.2f} lr {metrics['lr']:.2e}")
            state = checkpoint_state(encoder, optimizer, scheduler, scaler, epoch + 1, args, log.history,
                                     dataset.metadata, rng_per_rank)
            save_checkpoint(state, output / "checkpoints" / "last.pth")
            if (epoch + 1) % args.save_interval == 0 or epoch + 1 == args.epochs:
                save_checkpoint(state, output / "checkpoints" / f"epoch_{epoch + 1:04d}.pth")
            if args.log_sample_indices:
                write_json_atomic(sample_log, output / "sample_indices.json")
    history = log.history if ctx.is_main else {}
    if ctx.is_main:
        log.close()
        if history:
            plot_curves(history, {"loss": ["loss"], "terms": ["nt_xent", "kl"], "beta": ["beta"], "lr": ["lr"],
                                  "throughput": ["samples_per_s"]},
                        output / "curves.png", title="ROI encoder training")
    return history


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if not math.isfinite(args.lr) or args.lr <= 0 or args.epochs < 1 or args.batch_size < 1:
        raise InputError("--lr must be positive, --epochs and --batch_size at least 1")
    history = train(args)
    if history:
        print(json.dumps({key: values[-1] for key, values in history.items()}))


if __name__ == "__main__":
    run(main)
