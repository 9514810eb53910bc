"""Training loop of the SENet face-feature mapper (seed 004): data, epochs, validation, checkpoints, logs.

``train(args)`` takes the namespace of ``train_senet_triplet.py`` (every flag is an attribute).
Validation reports what a user of the mapper cares about: the cosine between ``front_features`` and
the person's frontal feature, rank-1 identification of video features against the frontal gallery of
the held-out persons, and frontal-vs-profile verification (10-fold accuracy, TAR at FAR 1e-3), each
before (raw) and after mapping; ``best_model.pth`` is chosen by rank-1 after mapping.
"""

from __future__ import annotations

import math
import time
import warnings
from argparse import Namespace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm import tqdm

from myutils.cli import InputError, TrainingError
from myutils.face.data import (
    FacePairDataset,
    PersonBatchSampler,
    load_face_feature_folder,
    rank_identity_dimensions,
    split_persons,
)
from myutils.face.inference import load_trained_model, map_features
from myutils.face.losses import SENetObjective
from myutils.face.networks import Mapper, build_mapper
from myutils.retrieval.metrics import retrieval_metrics
from myutils.retrieval.verification import pair_verification
from myutils.training.checkpoint import load_checkpoint, save_checkpoint
from myutils.training.log import TrainingLog, plot_curves, write_json_atomic
from myutils.training.precision import autocast, autocast_dtype, make_grad_scaler, resolve_device
from myutils.training.schedule import warmup_cosine_scheduler
from myutils.training.seeding import capture_rng_state, restore_rng_state, seed_everything

MAX_GRAD_NORM = 1.0
MIN_LR_FACTOR = 0.01  # cosine decays to 1 % of --lr (the seed: 1e-4 → 1e-6)
PROFILE_YAW = 45.0  # |yaw| above this counts as a profile view in the rank-1 breakdown and verification
VERIFICATION_FOLDS = 10
VERIFICATION_FAR = 1e-3
MIN_INFORMATIVE_PERSONS = 10  # fewer persons in a split: rank-1 among so few candidates says little
GATE_LR_FACTOR = 50.0  # default --alpha_lr / --gain_lr as a multiple of --lr (see parameter_groups)
CURVE_PANELS = {
    "Total loss & cosine similarity": ["TrainLoss", "ValLoss", "ValCosineSim", "ValRank1", "ValVerifAcc"],
    "Triplet loss": ["TrainTripletLoss", "ValTripletLoss"],
    "Identity-preservation loss": ["TrainIdentityLoss", "ValIdentityLoss"],
    "Fusion weight α (identity branch) and residual gain γ": ["FusionAlpha", "ResidualGain"],
}


class NonFiniteLossError(TrainingError):
    """The loss or the gradient became NaN/Inf; the message names the epoch and step."""


class SmallSplitWarning(UserWarning):
    """A validation or test split too small for its rank-1 / verification figures to mean much."""


def model_config(args: Namespace) -> dict:
    shared = {"image_dim": args.image_dim, "pose_dim": args.pose_dim, "hidden_dim": args.hidden_dim,
              "num_layers": args.num_layers}
    if args.architecture != "senet":  # the baselines take no SENet options
        return {"architecture": args.architecture, **shared}
    return {
        "architecture": "senet", **shared, "se_reduction": args.se_reduction, "fusion_alpha": args.fusion_alpha,
        "use_batch_stat": args.use_batch_stat, "dropout": args.dropout, "norm": args.norm, "use_se": not args.no_se,
        "residual_gain": not args.no_residual_gain, "relu_projection": args.relu_projection,
        "detach_identity_head": not args.triplet_through_mapper,
    }


def parameter_groups(model, args: Namespace) -> list[dict]:
    """AdamW groups: the weights at ``--lr``; α's logit at ``--alpha_lr`` and γ at ``--gain_lr``, undecayed.

    Adam moves each parameter by about its learning rate per step whatever the gradient's size, so a
    scalar that should travel O(1) (α's logit, the residual gain γ) needs many more steps than a weight
    matrix whose entries travel O(1/sqrt(width)): at ``--lr`` it barely leaves its start. Weight decay
    would pull α toward 0.5 and γ toward 0, so they have none.
    """
    gates = {"dual_branch.fusion_logit": args.alpha_lr, "residual_gain": args.gain_lr}
    groups = [{"params": [p for n, p in model.named_parameters() if n not in gates], "name": "weights"}]
    for name, lr in gates.items():
        params = [p for n, p in model.named_parameters() if n == name]
        if params:
            groups.append({"params": params, "lr": lr if lr is not None else GATE_LR_FACTOR * args.lr,
                           "weight_decay": 0.0, "name": name})
    return groups


def resolve_identity_dims(args: Namespace, train_set: FacePairDataset) -> list[int]:
    """``--identity_dims`` when given, else the top ``--num_identity_dims`` of the training split (printed)."""
    if args.identity_dims:
        dims = [int(d) for d in str(args.identity_dims).split(",") if d.strip()]
        bad = [d for d in dims if not 0 <= d < args.image_dim]
        if bad:
            raise InputError(f"--identity_dims {bad} outside [0, {args.image_dim})")
        print(f"Identity dimensions (from --identity_dims): {dims}")
        return dims
    dims, correlation = rank_identity_dimensions(*train_set.pair_arrays(), args.num_identity_dims)
    print(
        f"Identity dimensions (top {len(dims)} by side/frontal correlation on the train split): {dims}\n"
        f"  correlation {correlation[dims[0]]:.3f} … {correlation[dims[-1]]:.3f} "
        f"(median over all {len(correlation)} dims {np.median(correlation[np.isfinite(correlation)]):.3f})"
    )
    return dims


def make_loader(dataset: FacePairDataset, args: Namespace, seed: int) -> DataLoader:
    sampler = PersonBatchSampler(dataset.labels, args.batch_size, args.samples_per_person, seed=seed)
    return DataLoader(
        dataset, batch_sampler=sampler, num_workers=args.num_workers, pin_memory=torch.cuda.is_available()
    )


def _to_device(batch: dict, device: torch.device) -> dict:
    return {key: value.to(device, non_blocking=True) for key, value in batch.items()}


def train_one_epoch(model, loader, objective, optimizer, scheduler, scaler, args, epoch, log, device) -> dict:
    """One pass over the training loader with accumulation, AMP and clipping; returns mean loss terms."""
    model.train()
    loader.batch_sampler.set_epoch(epoch)
    accumulation = args.gradient_accumulation_steps
    num_batches = len(loader)
    sums = {"total": 0.0, "triplet": 0.0, "identity": 0.0, "target": 0.0}
    num_samples, start = 0, time.perf_counter()
    optimizer.zero_grad(set_to_none=True)
    progress = tqdm(loader, desc=f"Epoch {epoch + 1}", leave=False, dynamic_ncols=True)
    for index, batch in enumerate(progress):
        batch = _to_device(batch, device)
        step = epoch * num_batches + index + 1
        with autocast(device, args.use_amp):
            front, identity = model(batch["src"], batch["pose"])
        terms = objective(front, identity, batch["src"], batch["pose"], batch["tgt"], batch["label"])
        if not torch.isfinite(terms["total"]):
            raise NonFiniteLossError(
                f"loss became {terms['total'].item()} at epoch {epoch + 1}, batch {index + 1}/{num_batches} "
                f"(global step {step}): " + ", ".join(f"{k}={v.item():.4g}" for k, v in terms.items())
                + ". Lower --lr, or train without --use_amp."
            )
        group_start = index - index % accumulation
        scaler.scale(terms["total"] / min(accumulation, num_batches - group_start)).backward()
        if (index + 1) % accumulation == 0 or index + 1 == num_batches:
            scaler.unscale_(optimizer)
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), MAX_GRAD_NORM)
            if not scaler.is_enabled() and not torch.isfinite(grad_norm):
                raise NonFiniteLossError(
                    f"gradient norm became {grad_norm.item()} at epoch {epoch + 1}, batch {index + 1}/{num_batches} "
                    f"(global step {step}). Lower --lr."
                )
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)

        values = {name: term.item() for name, term in terms.items()}
        for name, value in values.items():
            sums[name] += value
        num_samples += len(batch["label"])
        lr = optimizer.param_groups[0]["lr"]
        progress.set_postfix(loss=f"{values['total']:.4f}", triplet=f"{values['triplet']:.4f}", lr=f"{lr:.2e}")
        log.scalar("Train/Loss", values["total"], step)
        log.scalar("Train/TripletLoss", values["triplet"], step)
        log.scalar("Train/IdentityLoss", values["identity"], step)
        log.scalar("Train/TargetLoss", values["target"], step)
        log.scalar("Train/LearningRate", lr, step)
    means = {name: total / max(1, num_batches) for name, total in sums.items()}
    means["samples_per_sec"] = num_samples / max(1e-9, time.perf_counter() - start)
    return means


@torch.no_grad()
def validation_losses(model, loader, objective, args, device) -> dict:
    """Mean loss terms over person batches of a held-out split (fixed batch order)."""
    model.eval()
    sums = {"total": 0.0, "triplet": 0.0, "identity": 0.0, "target": 0.0}
    for batch in loader:
        batch = _to_device(batch, device)
        with autocast(device, args.use_amp):
            front, identity = model(batch["src"], batch["pose"])
        terms = objective(front, identity, batch["src"], batch["pose"], batch["tgt"], batch["label"])
        for name in sums:
            sums[name] += terms[name].item()
    return {name: total / max(1, len(loader)) for name, total in sums.items()}


def identification(model, dataset: FacePairDataset, device, use_amp: bool) -> dict:
    """Rank-1 of the split's video frames against its frontal gallery, cosine to the frontal target, verification.

    Each is reported for the raw video features (``*_raw``) and after mapping; ``rank1_profile*`` keeps
    only frames with |yaw| > 45°. Verification (CFP-FP style, :func:`pair_verification`): profile frames
    against the frontal features, ``verification_accuracy*`` over 10 folds split by person and
    ``tar_at_far*`` at FAR 1e-3; NaN when fewer than 10 persons have a profile frame.
    """
    folder = dataset.folder
    video, front = dataset.video_indices, dataset.front_indices
    query_labels = torch.from_numpy(folder.video_person[video])
    gallery_labels = torch.from_numpy(folder.front_person[front])
    gallery = F.normalize(torch.from_numpy(folder.front_features[front]), dim=1)
    profile = torch.from_numpy(np.abs(folder.video_poses[video, 0]) > PROFILE_YAW)
    raw = F.normalize(torch.from_numpy(folder.video_features[video]), dim=1)
    mapped = F.normalize(map_features(model, folder.video_features[video], folder.video_poses[video], device, use_amp), dim=1)
    same_person = query_labels[:, None] == gallery_labels[None, :]
    results = {}
    profile_persons = len(torch.unique(query_labels[profile]))
    enough_profiles = profile_persons >= VERIFICATION_FOLDS
    if not enough_profiles:
        warnings.warn(f"only {profile_persons} persons of the split have a profile frame (|yaw| > {PROFILE_YAW:g}°): "
                      f"{VERIFICATION_FOLDS}-fold verification needs {VERIFICATION_FOLDS}, reported as NaN",
                      SmallSplitWarning, stacklevel=2)
    for suffix, queries in [("", mapped), ("_raw", raw)]:
        results[f"cosine{suffix}"] = float((queries @ gallery.T)[same_person].mean())
        results[f"rank1{suffix}"] = retrieval_metrics(queries, query_labels, gallery, gallery_labels)["precision_at_1"]
        results[f"rank1_profile{suffix}"] = (
            retrieval_metrics(queries[profile], query_labels[profile], gallery, gallery_labels)["precision_at_1"]
            if profile.any() else float("nan")
        )
        verification = (
            pair_verification(queries[profile], query_labels[profile], gallery, gallery_labels,
                              VERIFICATION_FOLDS, VERIFICATION_FAR)
            if enough_profiles else {"accuracy": float("nan"), "tar": float("nan")}
        )
        results[f"verification_accuracy{suffix}"] = verification["accuracy"]
        results[f"tar_at_far{suffix}"] = verification["tar"]
    return results


def checkpoint_state(model, optimizer, scheduler, scaler, epoch, best, log, args, identity_dims, split) -> dict:
    """Everything needed to resume or to use the model, as tensors and plain data only."""
    return {
        "epoch": epoch,
        "model_config": model.config,
        "model_state_dict": model.state_dict(),
        "optimizer_state_dict": optimizer.state_dict(),
        "scheduler_state_dict": scheduler.state_dict(),
        "scaler_state_dict": scaler.state_dict(),
        "best": dict(best),
        "history": log.history,
        "identity_dims": list(identity_dims),
        "split": split,
        "args": {key: value for key, value in vars(args).items()},
        "rng_state": capture_rng_state(),
    }


def _restore(path, model, optimizer, scheduler, scaler, args, device) -> dict:
    state = load_checkpoint(path, map_location=device)
    if state["model_config"] != model.config:
        changed = {k: (state["model_config"].get(k), v) for k, v in model.config.items() if state["model_config"].get(k) != v}
        raise InputError(f"--resume {path}: model options differ from the checkpoint (saved, given): {changed}")
    model.load_state_dict(state["model_state_dict"])
    requested = [group["initial_lr"] for group in optimizer.param_groups]
    optimizer.load_state_dict(state["optimizer_state_dict"])
    scheduler.load_state_dict(state["scheduler_state_dict"])
    scaler.load_state_dict(state["scaler_state_dict"])
    if requested != scheduler.base_lrs:  # the seed's fine-tuning recipe resumes with a new --lr
        for group, old, new in zip(optimizer.param_groups, scheduler.base_lrs, requested, strict=True):
            if old != new:
                print(f"Learning rate changed on resume: {old:g} → {new:g}"
                      + ("" if group["name"] == "weights" else f" ({group['name']})"))
        scheduler.base_lrs = requested
        for group, base, factor in zip(optimizer.param_groups, requested, scheduler.lr_lambdas, strict=True):
            group["initial_lr"], group["lr"] = base, base * factor(scheduler.last_epoch)
    restore_rng_state(state["rng_state"])
    print(f"Resumed from {path}: continuing after epoch {state['epoch']}")
    return state


def format_identification(ident: dict) -> str:
    """The after-mapping (raw) figures of :func:`identification` on one line."""
    return ", ".join(
        f"{label} {ident[key]:.4f} (raw {ident[key + '_raw']:.4f})"
        for label, key in [("rank-1", "rank1"), ("profile rank-1", "rank1_profile"),
                           ("cosine to frontal", "cosine"), ("frontal-profile verification", "verification_accuracy"),
                           (f"TAR@FAR={VERIFICATION_FAR:g}", "tar_at_far")]
    )


def _print_epoch(epoch: int, args: Namespace, train_terms: dict, val_terms: dict, ident: dict, alpha: float) -> None:
    print(f"\nEpoch {epoch}/{args.epochs}")
    print(
        f"  Train - total: {train_terms['total']:.4f}, triplet: {train_terms['triplet']:.4f}, "
        f"identity: {train_terms['identity']:.4f}, target: {train_terms['target']:.4f}, "
        f"fusion weight: {alpha:.4f}, {train_terms['samples_per_sec']:.0f} samples/s"
    )
    print(f"  Val   - total: {val_terms['total']:.4f}, triplet: {val_terms['triplet']:.4f}, {format_identification(ident)}")


def residual_gain(model) -> float:
    """γ of ``front = src + γ · fused``; NaN for a mapper without one."""
    gain = getattr(model, "residual_gain", None)
    return float(gain.detach()) if gain is not None else float("nan")


def epoch_record(train_terms: dict, val_terms: dict, ident: dict, alpha: float, gain: float, lr: float) -> dict:
    """One epoch's values under their history keys (also the ``Epoch/<key>`` TensorBoard tags)."""
    return {
        "TrainLoss": train_terms["total"], "TrainTripletLoss": train_terms["triplet"],
        "TrainIdentityLoss": train_terms["identity"], "TrainTargetLoss": train_terms["target"],
        "ValLoss": val_terms["total"], "ValTripletLoss": val_terms["triplet"],
        "ValIdentityLoss": val_terms["identity"], "ValTargetLoss": val_terms["target"],
        "ValCosineSim": ident["cosine"], "ValCosineSimRaw": ident["cosine_raw"],
        "ValRank1": ident["rank1"], "ValRank1Raw": ident["rank1_raw"],
        "ValRank1Profile": ident["rank1_profile"], "ValRank1ProfileRaw": ident["rank1_profile_raw"],
        "ValVerifAcc": ident["verification_accuracy"], "ValVerifAccRaw": ident["verification_accuracy_raw"],
        "ValTarAtFar": ident["tar_at_far"], "ValTarAtFarRaw": ident["tar_at_far_raw"],
        "FusionAlpha": alpha, "ResidualGain": gain, "LearningRate": lr, "TrainSamplesPerSec": train_terms["samples_per_sec"],
    }


def load_splits(args: Namespace) -> tuple[dict[str, list[int]], dict[str, FacePairDataset]]:
    """Person indices and pair datasets of the train / val / test split of ``--data_dir`` (printed)."""
    folder = load_face_feature_folder(args.data_dir)
    if folder.feature_dim != args.image_dim or folder.pose_dim != args.pose_dim:
        raise InputError(
            f"{args.data_dir} holds {folder.feature_dim}-d features and {folder.pose_dim}-d poses; "
            f"pass --image_dim {folder.feature_dim} --pose_dim {folder.pose_dim}"
        )
    parts = split_persons(len(folder.person_names), seed=args.split_seed)
    splits = dict(zip(["train", "val", "test"], parts, strict=True))
    datasets = {name: FacePairDataset(folder, persons) for name, persons in splits.items()}
    for name, dataset in datasets.items():
        print(f"{name.capitalize()}: {len(dataset)} samples ({len(dataset.persons)} persons, "
              f"{len(dataset.video_indices)} video frames, {len(dataset.front_indices)} frontal)")
    for name in ("val", "test"):
        if len(splits[name]) < MIN_INFORMATIVE_PERSONS:
            warnings.warn(
                f"the {name} split has only {len(splits[name])} persons: rank-1 among so few candidates is "
                f"close to meaningless (one person: always 1.0) and verification needs "
                f"{VERIFICATION_FOLDS}; use a folder with at least {math.ceil(MIN_INFORMATIVE_PERSONS / 0.1)} persons",
                SmallSplitWarning, stacklevel=2,
            )
    return splits, datasets


def build_model(args: Namespace, device: torch.device) -> Mapper:
    model = build_mapper(model_config(args)).to(device)
    print(f"Total parameters: {sum(p.numel() for p in model.parameters()):,}")
    print(f"Trainable parameters: {sum(p.numel() for p in model.parameters() if p.requires_grad):,}")
    if model.config["architecture"] == "senet":
        print(f"Initial fusion weight: {model.get_fusion_alpha():.4f}")
    return model


def evaluate_test_split(model, save_dir: Path, dataset: FacePairDataset, best: dict, device, use_amp: bool) -> dict:
    """Identification on the test persons with ``best_model.pth`` (printed)."""
    best_path = save_dir / "best_model.pth"
    # a run resumed into a new --save_dir has no best_model.pth until it beats the resumed best
    if best_path.is_file():
        model, name = load_trained_model(best_path, device), f"best model (epoch {best['epoch']})"
    else:
        name = "final model"
    test = identification(model, dataset, device, use_amp)
    print(f"\nTest split ({len(dataset.persons)} persons), {name}: {format_identification(test)}")
    return test


def train(args: Namespace) -> dict:
    """Train, validate and save as ``train_senet_triplet.py`` does; returns a summary of the run."""
    if args.gradient_accumulation_steps < 1 or args.save_interval < 1 or args.epochs < 1:
        raise InputError("--epochs, --save_interval and --gradient_accumulation_steps must be >= 1")
    if not 0.0 <= args.dropout < 1.0:
        raise InputError(f"--dropout must be in [0, 1), got {args.dropout}")
    device = resolve_device(args.device)
    print(f"Device: {device}")
    seed_everything(args.seed)
    save_dir = Path(args.save_dir)

    print("Loading data...")
    splits, datasets = load_splits(args)
    if len(datasets["train"]) < 2:
        raise InputError(f"the training split has {len(datasets['train'])} sample; training needs at least 2 "
                         "(BatchNorm cannot train on one): add persons or frames")
    identity_dims = resolve_identity_dims(args, datasets["train"])
    train_loader = make_loader(datasets["train"], args, seed=args.seed)
    val_loader = make_loader(datasets["val"], args, seed=args.seed + 1)

    print("Creating model...")
    model = build_model(args, device)
    objective = SENetObjective(
        identity_dims, args.identity_preserve_weight, args.target_weight, args.target_loss,
        args.margin, args.alpha, args.beta, args.angle_threshold, args.triplet_weight,
    ).to(device)
    optimizer = torch.optim.AdamW(parameter_groups(model, args), lr=args.lr, weight_decay=args.weight_decay)
    steps_per_epoch = math.ceil(len(train_loader) / args.gradient_accumulation_steps)
    scheduler = warmup_cosine_scheduler(optimizer, 0, args.epochs * steps_per_epoch, MIN_LR_FACTOR)
    scaler = make_grad_scaler(device, args.use_amp)
    if args.use_amp:
        print(f"Mixed precision: {str(autocast_dtype(device)).removeprefix('torch.')} autocast on {device.type}"
              + (" with gradient scaling" if scaler.is_enabled() else ""))

    start_epoch, best, history = 0, {"rank1": -1.0, "cosine": -math.inf, "epoch": 0}, None
    if args.resume:
        state = _restore(args.resume, model, optimizer, scheduler, scaler, args, device)
        start_epoch, best, history, identity_dims = state["epoch"], state["best"], state["history"], state["identity_dims"]
        objective.identity_dims = torch.as_tensor(identity_dims, dtype=torch.long, device=device)
        print(f"Identity dimensions (from the checkpoint): {identity_dims}")
    folder = datasets["train"].folder
    split_names = {name: [folder.person_names[p] for p in persons] for name, persons in splits.items()}
    save_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic({"identity_dims": identity_dims}, save_dir / "identity_dims.json")
    log = TrainingLog(args.log_dir, save_dir / "training_history.json", history)
    log.writer.add_text("IdentityDims", str(identity_dims), start_epoch)

    def save(epoch: int, name: str) -> Path:
        state = checkpoint_state(model, optimizer, scheduler, scaler, epoch, best, log, args, identity_dims, split_names)
        return save_checkpoint(state, save_dir / name)

    print("Starting training...")
    print("=" * 70)
    try:
        for epoch in range(start_epoch + 1, args.epochs + 1):
            train_terms = train_one_epoch(model, train_loader, objective, optimizer, scheduler, scaler, args, epoch - 1, log, device)
            val_terms = validation_losses(model, val_loader, objective, args, device)
            ident = identification(model, datasets["val"], device, args.use_amp)
            alpha = model.get_fusion_alpha()
            _print_epoch(epoch, args, train_terms, val_terms, ident, alpha)
            record = epoch_record(train_terms, val_terms, ident, alpha, residual_gain(model), optimizer.param_groups[0]["lr"])
            log.log_epoch(epoch, record)
            if (ident["rank1"], ident["cosine"]) > (best["rank1"], best["cosine"]):
                best = {"rank1": ident["rank1"], "cosine": ident["cosine"], "epoch": epoch}
                print(f"  ✓ saved best model: {save(epoch, 'best_model.pth')}")
            if epoch % args.save_interval == 0:
                plot_curves(log.history, CURVE_PANELS, save_dir / f"training_curves_epoch_{epoch}.png",
                            title="SENet triplet training")
                print(f"  ✓ saved checkpoint: {save(epoch, f'checkpoint_epoch_{epoch}.pth')}")
        final_path = save(args.epochs, "final_model.pth")
        plot_curves(log.history, CURVE_PANELS, save_dir / "final_training_curves.png", title="SENet triplet training")
    finally:
        log.close()
    print(f"\n✓ saved final model: {final_path}")
    print(f"✓ saved training history: {save_dir / 'training_history.json'}")
    test = evaluate_test_split(model, save_dir, datasets["test"], best, device, args.use_amp)
    print("Training complete.")
    return {"best": best, "test": test, "identity_dims": identity_dims, "history": log.history}
