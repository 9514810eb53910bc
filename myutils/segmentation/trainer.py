"""The semi-supervised segmentation trainer behind ``scripts/train_semiseg.py``.

One iteration, with a two-stream batch of ``labeled_bs`` labelled and ``batch_size − labeled_bs``
unlabelled patches through the student in one forward:

    L = ½ (CE + Dice)(labelled)                                         supervised
      + consistency · ramp(t) · L_unlabelled                            mean_teacher: MSE of softmax maps vs the
                                                                        EMA teacher on noisy input; pseudo_label:
                                                                        CE to the teacher's confident argmax
      + ramp(t) · (L_memory(labelled) + L_memory(unlabelled))           --use_contrastive_prototype

``ramp(t) = exp(−5 (1 − t/T_r)²)`` (sigmoid ramp-up). The memory stores the projections that the EMA
teacher (or, without one, the student in eval mode) computes under ``no_grad`` for correctly predicted
labelled pixels; the loss pulls the student's prediction-head features of both streams (pseudo-labels for
the unlabelled ones), as SS-Net. The learned selectors have their own Adam at ``base_lr × 0.1``.
Evaluation on the validation cases every ``--eval_interval`` iterations keeps the best checkpoint by mean
foreground Dice; ``last.pth`` resumes exactly.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import time
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from myutils.cli import InputError, TrainingError
from myutils.contrastive_prototype_manager import ContrastivePrototypeManager
from myutils.segmentation.data import (
    TrainingSet,
    TwoStreamBatchSampler,
    evaluation_cases,
    labelled_split,
    read_item,
    training_items,
)
from myutils.segmentation.inference import predict_case
from myutils.segmentation.losses import (
    consistency_mse,
    pseudo_label_loss,
    sigmoid_rampup,
    supervised_loss,
    update_ema,
)
from myutils.segmentation.metrics import case_metrics, summarize
from myutils.segmentation.networks import build_network
from myutils.training.checkpoint import load_checkpoint, save_checkpoint
from myutils.training.distributed import (
    DistContext,
    all_reduce_gradients,
    barrier,
    broadcast_module_state,
    cleanup_distributed,
    init_distributed,
)
from myutils.training.log import TrainingLog, plot_curves, write_json_atomic
from myutils.training.precision import amp_settings, autocast, make_grad_scaler
from myutils.training.seeding import capture_rank_rng_states, resume_rank_rng_states, seed_everything

METHODS = ("supervised", "mean_teacher", "pseudo_label")
# SS-Net's settings per layout: network, classes, patch, batch (labelled part), labelled cases, validation list.
LAYOUT_DEFAULTS = {
    "acdc": {"model": "unet", "num_classes": 4, "patch_size": [256, 256], "batch_size": 24, "labeled_bs": 12,
             "labelnum": 3, "val_list": "val.list", "test_list": "test.list"},
    "la": {"model": "vnet", "num_classes": 2, "patch_size": [112, 112, 80], "batch_size": 4, "labeled_bs": 2,
           "labelnum": 4, "val_list": "test.list", "test_list": None},
    "folder": {"model": "unet", "num_classes": 2, "patch_size": [256, 256], "batch_size": 8, "labeled_bs": 4,
               "labelnum": None, "val_list": "val", "test_list": "test"},
}


def resolve_defaults(args: argparse.Namespace) -> argparse.Namespace:
    """Fill the flags left at None with the layout's SS-Net defaults and check the combination."""
    args = copy.copy(args)
    test_list_given = args.test_list is not None
    for key, value in LAYOUT_DEFAULTS[args.dataset].items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    if args.test_list in ("", "none") or (not test_list_given and args.test_list
                                           and not (Path(args.root_path) / args.test_list).exists()):
        args.test_list = None  # the default test split is optional; one that was asked for must exist
    dims = 2 if args.model == "unet" else 3
    if len(args.patch_size) != dims:
        raise InputError(f"--patch_size needs {dims} values for --model {args.model}, got {args.patch_size}")
    if (args.dataset == "la") != (dims == 3):
        raise InputError(f"--model {args.model} does not fit --dataset {args.dataset} (unet: 2-D, vnet: 3-D)")
    if any(size % 16 for size in args.patch_size):
        raise InputError(f"--patch_size values must be multiples of 16 (four 2x down-samplings), got {args.patch_size}")
    if args.semi_method == "supervised":
        args.batch_size = args.labeled_bs
    if args.labeled_bs > args.batch_size or (args.semi_method != "supervised" and args.labeled_bs == args.batch_size):
        raise InputError(f"--labeled_bs {args.labeled_bs} must be below --batch_size {args.batch_size} "
                         "(the rest of the batch is unlabelled)")
    smallest_stream = min(args.labeled_bs, args.batch_size - args.labeled_bs or args.labeled_bs)
    if args.stream_batchnorm == "separate" and smallest_stream * math.prod(p // 16 for p in args.patch_size) == 1:
        raise InputError(f"--patch_size {args.patch_size} with {smallest_stream} patch(es) in a stream leaves BatchNorm "
                         "one value per channel at the deepest level: use a larger patch or batch, or "
                         "--stream_batchnorm shared")
    if args.use_learned_selector and not args.use_contrastive_prototype:
        raise InputError("--use_learned_selector needs --use_contrastive_prototype")
    if args.consistency_rampup is None:
        args.consistency_rampup = 0.4 * args.max_iterations  # SS-Net/UA-MT: 40 "epochs" of 150 of 15,000 iterations
    if args.stride is None:
        args.stride = [max(1, p // 2) for p in args.patch_size]
    if len(args.stride) != dims:
        raise InputError(f"--stride needs {dims} values, got {args.stride}")
    return args


class Run:
    """The objects of one training run: data, networks, memory, optimizers, logs."""

    def __init__(self, args: argparse.Namespace, ctx: DistContext):
        self.args, self.ctx = args, ctx
        split = training_items(args.root_path, args.dataset, args.train_list)
        if not split.items:
            raise InputError(f"no usable training items under {args.root_path} ({len(split.skipped)} skipped)")
        self.val = evaluation_cases(args.root_path, args.dataset, args.val_list)
        self.test = evaluation_cases(args.root_path, args.dataset, args.test_list) if args.test_list else None
        self.labelled, self.unlabelled = labelled_split(split.items, args.labelnum)
        self.skipped = split.skipped + self.val.skipped + (self.test.skipped if self.test else [])
        self.items = split.items
        seed_everything(args.seed)  # same initial weights and selectors on every rank
        self.student = build_network(args.model, 1, args.num_classes, args.base_channels,
                                     args.embedding_dim if args.use_contrastive_prototype else 0).to(ctx.device)
        self.teacher = None
        if args.semi_method != "supervised":
            self.teacher = copy.deepcopy(self.student).eval()
            self.teacher.requires_grad_(False)
        self.manager = None
        if args.use_contrastive_prototype:
            self.manager = ContrastivePrototypeManager(
                args.num_classes, args.embedding_dim, args.elements_per_class,
                use_learned_selector=args.use_learned_selector, memory_mode=args.memory_mode,
                confidence_threshold=args.prototype_threshold, memory_from=args.memory_from,
                memory_ignore_classes=args.memory_ignore_classes,
            ).to(ctx.device)
            broadcast_module_state(self.manager)
        self.model = self.student
        if ctx.enabled:
            self.model = DistributedDataParallel(self.student, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None)
        self.optimizer = make_optimizer(args, self.student.parameters())
        self.selector_optimizer = None
        if args.use_learned_selector:  # the seed's recipe: the selectors' own Adam at a tenth of the base lr
            feature_selectors, memory_selectors = self.manager.get_selectors()
            self.selector_optimizer = torch.optim.Adam(
                [*feature_selectors.parameters(), *memory_selectors.parameters()], lr=args.base_lr * 0.1)
        self.amp = amp_settings(args.amp, ctx.device)
        self.scaler = make_grad_scaler(ctx.device, *self.amp)
        self.iteration, self.best_dice, self.history = 0, -1.0, {}
        self.output = Path(args.output_dir)

    # ----------------------------------------------------------------------------- state
    def state(self, rng_states: list[dict]) -> dict:
        """Everything a resumed run needs; ``rng_states`` is every rank's (:func:`capture_rank_rng_states`)."""
        state = {
            "iteration": self.iteration, "best_dice": self.best_dice, "history": self.history,
            "student": self.student.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(), "rng": rng_states, "args": serializable(vars(self.args)),
        }
        if self.teacher is not None:
            state["teacher"] = self.teacher.state_dict()
        if self.manager is not None:
            state["prototype_manager"] = self.manager.state_dict()
        if self.selector_optimizer is not None:
            state["selector_optimizer"] = self.selector_optimizer.state_dict()
        return state

    def load(self, path: str) -> dict:
        state = load_checkpoint(path, map_location=self.ctx.device)
        missing = [key for key in ("student", "optimizer", "iteration") if key not in state]
        if missing:
            raise InputError(f"{path} is not a train_semiseg checkpoint (missing {', '.join(missing)})")
        try:
            self.student.load_state_dict(state["student"])
            if self.teacher is not None:
                self.teacher.load_state_dict(state.get("teacher", state["student"]))
            if self.manager is not None and "prototype_manager" in state:
                self.manager.load_state_dict(state["prototype_manager"])
        except RuntimeError as error:
            raise InputError(f"{path} does not match these flags (network or memory size): "
                             f"{str(error).splitlines()[0]}") from error
        self.optimizer.load_state_dict(state["optimizer"])
        if self.selector_optimizer is not None and "selector_optimizer" in state:
            self.selector_optimizer.load_state_dict(state["selector_optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        self.iteration, self.best_dice, self.history = state["iteration"], state["best_dice"], state["history"]
        return state

    # ----------------------------------------------------------------------------- one step
    def logits_fn(self, network: torch.nn.Module):
        def logits(x: torch.Tensor) -> torch.Tensor:
            with autocast(self.ctx.device, *self.amp):
                return network(x)[0]
        return logits

    def step(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        args, device = self.args, self.ctx.device
        images = batch["image"].to(device, non_blocking=True)
        labels = batch["label"].to(device, non_blocking=True)
        lb = args.labeled_bs
        ramp = sigmoid_rampup(self.iteration, args.consistency_rampup)
        lr = poly_lr(args.base_lr, self.iteration, args.max_iterations)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        with autocast(device, *self.amp):
            logits, prediction = self.student_outputs(images)
            teacher_logits = teacher_projection = None
            if self.teacher is not None or self.manager is not None:
                teacher_logits, teacher_projection = self.teacher_outputs(images)
        ce, dice = supervised_loss(logits[:lb], labels[:lb])
        total = 0.5 * (ce + dice)
        parts = {"supervised_ce": ce.item(), "supervised_dice": dice.item(), "ramp": ramp, "lr": lr}
        if args.semi_method == "mean_teacher":
            unsupervised = consistency_mse(logits[lb:], teacher_logits[lb:])
        elif args.semi_method == "pseudo_label":
            unsupervised, kept = pseudo_label_loss(logits[lb:], teacher_logits[lb:], args.pseudo_threshold)
            parts["pseudo_label_fraction"] = kept
        if args.semi_method != "supervised":
            total = total + args.consistency * ramp * unsupervised
            parts["consistency"] = unsupervised.item()
        if self.manager is not None:
            total = total + ramp * self.memory_losses(prediction, labels, teacher_logits, teacher_projection, parts)
        if not torch.isfinite(total):
            raise TrainingError(f"the loss became {total.item()} at iteration {self.iteration}; lower --base_lr "
                                "or turn off --amp")
        self.optimizer.zero_grad(set_to_none=True)
        if self.selector_optimizer is not None:
            self.selector_optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(total).backward()
        self.scaler.step(self.optimizer)
        if self.selector_optimizer is not None:
            all_reduce_gradients(self.selector_optimizer)  # the selectors live outside DDP
            self.scaler.step(self.selector_optimizer)
        self.scaler.update()
        self.iteration += 1
        if self.teacher is not None:
            update_ema(self.teacher, self.student, args.ema_decay, self.iteration)
        parts["total"] = total.item()
        return parts

    def student_outputs(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The student's logits and predictions for the batch. ``--stream_batchnorm separate``: the labelled and
        the unlabelled patches in two forwards, so BatchNorm normalises each stream with its own statistics and
        the labelled loss does not depend on which unlabelled patches share the batch (one forward, SS-Net's
        ``shared``, let unlabelled cases with other intensities shift the labelled patches' normalisation)."""
        lb = self.args.labeled_bs
        if self.args.stream_batchnorm == "shared" or images.shape[0] == lb:
            logits, _, prediction = self.model(images)
            return logits, prediction
        (labelled_logits, _, labelled_prediction), (unlabelled_logits, _, unlabelled_prediction) = (
            self.model(images[:lb]), self.model(images[lb:]))
        prediction = None if labelled_prediction is None else torch.cat([labelled_prediction, unlabelled_prediction])
        return torch.cat([labelled_logits, unlabelled_logits]), prediction

    @torch.no_grad()
    def teacher_outputs(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The memory encoder's logits and projections (labelled part clean); the mean teacher sees the
        unlabelled part with clipped Gaussian noise, as UA-MT. Without a teacher: the student in eval mode."""
        lb = self.args.labeled_bs
        inputs = images.clone()
        if self.args.semi_method == "mean_teacher":
            inputs[lb:] += (torch.randn_like(inputs[lb:]) * 0.1).clamp(-0.2, 0.2)
        if self.teacher is not None:
            logits, projection, _ = self.teacher(inputs)
        else:
            self.student.eval()
            logits, projection, _ = self.student(inputs)
            self.student.train()
        return logits, projection

    def memory_losses(self, prediction, labels, teacher_logits, teacher_projection, parts) -> torch.Tensor:
        args, lb = self.args, self.args.labeled_bs
        weights = {"contrastive_weight": args.contrastive_weight, "intra_weight": args.intra_weight,
                   "inter_weight": args.inter_weight}
        labelled_loss, labelled_parts = self.manager.update_and_compute_loss(
            prediction[:lb], teacher_logits[:lb], labels[:lb], is_labeled=True,
            memory_features=teacher_projection[:lb], **weights)
        parts |= {f"labeled_{key}": value for key, value in labelled_parts.items()}
        if prediction.shape[0] == lb:
            return labelled_loss
        unlabelled_loss, unlabelled_parts = self.manager.update_and_compute_loss(
            prediction[lb:], teacher_logits[lb:], None, is_labeled=False,
            memory_features=teacher_projection[lb:], **weights)
        parts |= {f"unlabeled_{key}": value for key, value in unlabelled_parts.items()}
        return labelled_loss + unlabelled_loss

    # ----------------------------------------------------------------------------- evaluation
    def evaluate(self, cases, network: torch.nn.Module, desc: str) -> tuple[dict[str, float], list[dict]]:
        """Per-case, per-class metrics and their means (``dice`` = mean foreground Dice)."""
        was_training = network.training
        network.eval()
        per_case, rows = [], []
        for item in tqdm(cases.items, desc=desc, leave=False, disable=not self.ctx.is_main):
            image, label = read_item(item)
            prediction = predict_case(self.logits_fn(network), image, tuple(self.args.patch_size),
                                      tuple(self.args.stride), self.args.num_classes, self.ctx.device)
            metrics = case_metrics(prediction, label, self.args.num_classes)
            per_case.append(metrics)
            rows.append({"case": item.name, **{f"{k}_class{c}": v for c, m in metrics.items() for k, v in m.items()}})
        network.train(was_training)
        return summarize(per_case), rows


def make_optimizer(args: argparse.Namespace, parameters) -> torch.optim.Optimizer:
    if args.optimizer == "sgd":  # SS-Net: SGD, momentum 0.9, weight decay 1e-4
        return torch.optim.SGD(parameters, lr=args.base_lr, momentum=0.9, weight_decay=1e-4)
    return torch.optim.AdamW(parameters, lr=args.base_lr, weight_decay=1e-4)


def poly_lr(base_lr: float, iteration: int, max_iterations: int, power: float = 0.9) -> float:
    """``base_lr · (1 − t/T)^0.9``, the poly schedule of the UA-MT/SS-Net family of trainers."""
    return base_lr * (1.0 - min(iteration, max_iterations - 1) / max_iterations) ** power


def serializable(values: dict) -> dict:
    return {key: (str(value) if isinstance(value, Path) else value) for key, value in values.items()}


def print_metrics(title: str, summary: dict[str, float], num_classes: int) -> None:
    print(f"{title}: mean Dice {summary['dice']:.4f}  Jaccard {summary['jaccard']:.4f}  "
          f"HD95 {summary['hd95']:.2f}  ASD {summary['asd']:.2f}")
    for c in range(1, num_classes):
        print(f"  class {c}: Dice {summary[f'dice_class{c}']:.4f}  Jaccard {summary[f'jaccard_class{c}']:.4f}  "
              f"HD95 {summary[f'hd95_class{c}']:.2f}  ASD {summary[f'asd_class{c}']:.2f}")


def train(args: argparse.Namespace) -> dict:
    """Train (under torchrun: DDP) and return ``{"best_val": ..., "test": ..., "history": ...}``."""
    ctx = init_distributed(args.device)
    try:
        return _train(resolve_defaults(args), ctx)
    finally:
        cleanup_distributed()


def _train(args: argparse.Namespace, ctx: DistContext) -> dict:
    run = Run(args, ctx)
    if args.resume:
        state = run.load(args.resume)
    dataset = TrainingSet(run.items, tuple(args.patch_size))
    sampler = TwoStreamBatchSampler(run.labelled, run.unlabelled, args.labeled_bs, args.batch_size - args.labeled_bs,
                                    args.seed, args.max_iterations, run.iteration, ctx.rank, ctx.world_size)
    # augmentation is seeded per sample by the sampler, so workers need no seeding of their own
    loader = DataLoader(dataset, batch_sampler=sampler, num_workers=args.num_workers,
                        pin_memory=ctx.device.type == "cuda", persistent_workers=args.num_workers > 0)
    batches = iter(loader)  # before seeding: creating it draws a base seed from the global RNG
    seed_everything(args.seed + ctx.rank)  # dropout and teacher noise differ per rank
    if args.resume:  # every rank continues its own streams
        resume_rank_rng_states(state["rng"], args.seed + 1_000 * run.iteration, args.resume)
    log = TrainingLog(run.output / "tensorboard", run.output / "history.json", run.history) if ctx.is_main else None
    if ctx.is_main:
        print(f"{len(run.items)} training items: {len(run.labelled)} labelled ({args.labelnum or 'all'} cases), "
              f"{len(run.unlabelled)} unlabelled; {len(run.val.items)} validation cases; "
              f"{len(run.skipped)} unusable files skipped; {args.semi_method}"
              f"{' + prototype memory' if run.manager else ''}{' + learned selector' if args.use_learned_selector else ''}; "
              f"{ctx.world_size} process(es) on {ctx.device}")
        for problem in run.skipped[:10]:
            print(f"  skipped {problem}")
    sums: dict[str, float] = {}
    steps = 0
    progress = tqdm(total=args.max_iterations, initial=run.iteration, desc="train", disable=not ctx.is_main)
    started = time.perf_counter()
    while run.iteration < args.max_iterations:
        parts = run.step(next(batches))
        steps += 1
        progress.update(1)
        for key, value in parts.items():
            sums[key] = sums.get(key, 0.0) + value
        if ctx.is_main:
            progress.set_postfix(loss=f"{parts['total']:.4f}")
            for key, value in parts.items():
                log.scalar(f"Loss/{key}" if key not in ("ramp", "lr") else f"Train/{key}", value, run.iteration)
        if run.iteration % args.eval_interval == 0 or run.iteration == args.max_iterations:
            end_of_interval(run, log, {key: value / steps for key, value in sums.items()}, started, steps)
            sums, steps, started = {}, 0, time.perf_counter()
    progress.close()
    result = finish(run, log)
    barrier()
    return result


def end_of_interval(run: Run, log: TrainingLog | None, means: dict[str, float], started: float, steps: int) -> None:
    """Validation (rank 0), history, best and last checkpoints; ``means`` are this interval's loss means."""
    if run.ctx.is_main:
        seconds = (time.perf_counter() - started) / steps
        summary, _ = run.evaluate(run.val, run.student, "validate")
        values = {f"train_{key}": value for key, value in means.items()}
        values |= {f"val_{key}": value for key, value in summary.items()}
        values["seconds_per_iteration"] = seconds
        log.log_epoch(run.iteration, values, tag_prefix="Eval/")
        run.history = log.history
    rng_states = capture_rank_rng_states()  # every rank, after validation: where the run continues
    if run.ctx.is_main:
        if summary["dice"] > run.best_dice:
            run.best_dice = summary["dice"]
            save_checkpoint({**run.state(rng_states), "val_metrics": summary}, run.output / "checkpoints" / "best.pth")
        save_checkpoint(run.state(rng_states), run.output / "checkpoints" / "last.pth")
        tqdm.write(f"iteration {run.iteration}: val Dice {summary['dice']:.4f} HD95 {summary['hd95']:.2f} "
                   f"(best {run.best_dice:.4f})")
    barrier()


def finish(run: Run, log: TrainingLog | None) -> dict:
    """Curves, and the best checkpoint's metrics on the validation and test cases (rank 0)."""
    if not run.ctx.is_main:
        return {}
    log.close()
    history = log.history
    foreground = range(1, run.args.num_classes)
    loss_keys = [key for key in history if key.startswith("train_") and key not in ("train_lr", "train_ramp")]
    plot_curves(history, {"training losses": loss_keys, "validation Dice": ["val_dice"] + [f"val_dice_class{c}" for c in foreground],
                          "validation HD95": ["val_hd95"], "learning rate": ["train_lr"]},
                run.output / "curves.png", x_key="epoch", title="x axis: iteration")
    best = load_checkpoint(run.output / "checkpoints" / "best.pth", map_location=run.ctx.device)
    network = build_network(run.args.model, 1, run.args.num_classes, run.args.base_channels,
                            run.student.embedding_dim).to(run.ctx.device)
    network.load_state_dict(best["student"])
    result = {"best_iteration": best["iteration"], "best_val": best["val_metrics"], "history": history,
              "skipped_files": run.skipped}
    print_metrics(f"best checkpoint (iteration {best['iteration']}) on validation", best["val_metrics"], run.args.num_classes)
    if run.test is not None:
        summary, rows = run.evaluate(run.test, network, "test")
        result |= {"test": summary, "test_cases": rows}
        print_metrics("best checkpoint on test", summary, run.args.num_classes)
    write_json_atomic({key: value for key, value in result.items() if key != "history"}, run.output / "metrics.json")
    print(json.dumps({"best_val_dice": round(best["val_metrics"]["dice"], 4),
                      **({"test_dice": round(result["test"]["dice"], 4)} if "test" in result else {})}))
    return result

