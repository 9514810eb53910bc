"""Semi-supervised per-pixel classification with and without the SS-Net class-wise contrastive memory.

Generates striped-shape images (class = stripe orientation), keeps the masks of only a few of them, and
trains the same tiny segmentation network from the same seed: cross-entropy on the labelled images alone,
then cross-entropy plus ``ContrastivePrototypeManager`` losses on labelled (true labels) and unlabelled
(confident pseudo-labels) images, and with --use_learned_selector a third time with the learned selectors.
Prints test mIoU and a class-separation figure for each run.

Writes under --out: per-run TensorBoard logs (``Loss/<key>`` per step), history.json and checkpoints,
plus results.json and curves.png comparing the runs.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from myutils.cli import non_negative_float, non_negative_int, positive_float, positive_int, run, unit_float  # noqa: E402
from myutils.contrastive_prototype_manager import ContrastivePrototypeManager  # noqa: E402
from myutils.synthetic.toy_segmentation import TinySegNet, centroid_margin, make_striped_shapes, mean_iou  # noqa: E402
from myutils.training.checkpoint import save_checkpoint  # noqa: E402
from myutils.training.log import TrainingLog, plot_curves, write_json_atomic  # noqa: E402
from myutils.training.precision import resolve_device  # noqa: E402
from myutils.training.seeding import seed_everything  # noqa: E402

NUM_CLASSES = 3


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, type=Path, help="output folder (logs, checkpoints, results)")
    parser.add_argument("--steps", type=positive_int, default=300, help="training steps per run")
    parser.add_argument("--eval-every", type=positive_int, default=50, help="evaluate on the test images every N steps")
    parser.add_argument("--labeled", type=positive_int, default=4, help="number of images whose masks are used")
    parser.add_argument("--unlabeled", type=non_negative_int, default=96, help="number of images used without masks")
    parser.add_argument("--test", type=positive_int, default=32, help="number of held-out test images")
    parser.add_argument("--image-size", type=positive_int, default=32, help="side of the square generated images")
    parser.add_argument("--batch-size", type=positive_int, default=4, help="labelled and unlabelled images per step (each)")
    parser.add_argument("--lr", type=positive_float, default=3e-3, help="Adam learning rate of the network")
    parser.add_argument("--embed-dim", type=positive_int, default=16, help="dimension of the projected pixel features")
    parser.add_argument("--elements-per-class", type=positive_int, default=64, help="prototype memory size per class")
    parser.add_argument("--contrastive-weight", "--contrastive_weight", type=non_negative_float, default=1.0,
                        help="weight of the memory contrastive loss (intra/inter weights stay 0.1)")
    parser.add_argument("--confidence-threshold", type=unit_float, default=0.95,
                        help="softmax probability an unlabelled pixel needs to become a pseudo-label")
    parser.add_argument("--use-learned-selector", "--use_learned_selector", action="store_true",
                        help="also train a third run with the learned selectors (own Adam, lr x 0.1)")
    parser.add_argument("--seed", type=non_negative_int, default=0, help="seed for data generation and training")
    parser.add_argument("--device", default="auto", help="cpu, cuda or auto")
    parser.add_argument("--threads", type=positive_int, default=1,
                        help="torch CPU threads; the model is tiny, and one thread is far faster on a busy CPU")
    return parser.parse_args(argv)


def evaluate(model, images, masks) -> dict[str, float]:
    model.eval()
    with torch.no_grad():
        logits, features = model(images)
    model.train()
    rows = features.movedim(1, -1).reshape(-1, features.shape[1])
    return {
        "test_miou": mean_iou(logits.argmax(1), masks, NUM_CLASSES),
        "centroid_margin": centroid_margin(rows, masks.reshape(-1), NUM_CLASSES),
    }


def train_run(name, data, args, device, use_memory, use_selector) -> tuple[dict[str, list[float]], dict[str, float]]:
    """Train one configuration; returns its evaluation history and final scores."""
    seed_everything(args.seed)
    (labeled_x, labeled_y), unlabeled_x, (test_x, test_y) = data
    model = TinySegNet(NUM_CLASSES, embed_dim=args.embed_dim).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    manager = selector_optimizer = None
    if use_memory:
        manager = ContrastivePrototypeManager(
            NUM_CLASSES, args.embed_dim, args.elements_per_class, use_learned_selector=use_selector,
            confidence_threshold=args.confidence_threshold, ignore_index=255,
        ).to(device)
        if use_selector:  # the seed's recipe: the selectors get their own Adam at a tenth of the base lr
            selector_optimizer = torch.optim.Adam(manager.parameters(), lr=args.lr * 0.1)
    run_dir = args.out / name
    log = TrainingLog(run_dir / "tensorboard", run_dir / "history.json")
    sampler = torch.Generator().manual_seed(args.seed)
    for step in tqdm(range(1, args.steps + 1), desc=name, leave=False):
        labeled_idx = torch.randint(0, len(labeled_x), (args.batch_size,), generator=sampler)
        unlabeled_idx = torch.randint(0, len(unlabeled_x), (args.batch_size,), generator=sampler)
        logits, features = model(labeled_x[labeled_idx])
        loss = F.cross_entropy(logits, labeled_y[labeled_idx])
        parts = {"supervised": loss.item()}
        if manager is not None:
            weights = {"contrastive_weight": args.contrastive_weight, "intra_weight": 0.1, "inter_weight": 0.1}
            labeled_loss, labeled_parts = manager.update_and_compute_loss(
                features, logits, labeled_y[labeled_idx], is_labeled=True, **weights)
            unlabeled_logits, unlabeled_features = model(unlabeled_x[unlabeled_idx])
            unlabeled_loss, unlabeled_parts = manager.update_and_compute_loss(
                unlabeled_features, unlabeled_logits, None, is_labeled=False, **weights)
            loss = loss + labeled_loss + unlabeled_loss
            parts |= {f"labeled_{k}": v for k, v in labeled_parts.items()}
            parts |= {f"unlabeled_{k}": v for k, v in unlabeled_parts.items()}
        optimizer.zero_grad(set_to_none=True)
        if selector_optimizer is not None:
            selector_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if selector_optimizer is not None:
            selector_optimizer.step()
        for key, value in parts.items():
            log.scalar(f"Loss/{key}", value, step)
        if step % args.eval_every == 0 or step == args.steps:
            log.log_epoch(step, {"loss": loss.item(), **evaluate(model, test_x, test_y)})
    log.close()
    state = {"model": model.state_dict(), "step": args.steps, "args": {k: str(v) for k, v in vars(args).items()}}
    if manager is not None:
        state["prototype_manager"] = manager.state_dict()
    save_checkpoint(state, run_dir / "checkpoint.pth")
    final = {key: values[-1] for key, values in log.history.items() if key != "epoch"}
    return log.history, final


def run_demo(args: argparse.Namespace) -> dict[str, dict[str, float]]:
    """Generate the data, train every configuration, print and save the comparison."""
    device = resolve_device(args.device)
    images, masks = make_striped_shapes(args.labeled + args.unlabeled + args.test, args.image_size, seed=args.seed)
    images, masks = images.to(device), masks.to(device)
    first_unlabeled, first_test = args.labeled, args.labeled + args.unlabeled
    data = (
        (images[:first_unlabeled], masks[:first_unlabeled]),
        images[first_unlabeled:first_test],
        (images[first_test:], masks[first_test:]),
    )
    runs = [("supervised_only", False, False), ("prototype_memory", True, False)]
    if args.use_learned_selector:
        runs.append(("prototype_memory_learned_selector", True, True))
    results, curves = {}, {}
    for name, use_memory, use_selector in runs:
        start = time.perf_counter()
        history, final = train_run(name, data, args, device, use_memory, use_selector)
        results[name] = final | {"seconds": round(time.perf_counter() - start, 1)}
        curves["epoch"] = history["epoch"]
        curves |= {f"{name}/{key}": history[key] for key in ("test_miou", "centroid_margin")}
    panels = {metric: [f"{name}/{metric}" for name, _, _ in runs] for metric in ("test_miou", "centroid_margin")}
    plot_curves(curves, panels, args.out / "curves.png", title="x axis: training step")
    write_json_atomic(results, args.out / "results.json")
    print(f"{args.labeled} labelled + {args.unlabeled} unlabelled {args.image_size}px images, {args.steps} steps, "
          f"test on {args.test} images ({device})")
    print(f"{'run':<36}{'test mIoU':>10}{'centroid margin':>17}{'seconds':>9}")
    for name, scores in results.items():
        print(f"{name:<36}{scores['test_miou']:>10.3f}{scores['centroid_margin']:>17.3f}{scores['seconds']:>9.1f}")
    print(f"results: {args.out / 'results.json'}, curves: {args.out / 'curves.png'}")
    return results


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    run_demo(args)


if __name__ == "__main__":
    run(main)
