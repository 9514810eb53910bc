"""Time ``ContrastivePrototypeManager.update_and_compute_loss`` against the seed's numpy-memory design.

Workload (issue 7): 65,536 features x 64 dims, 4 classes, elements_per_class=256. The baseline is measured
in the same run: memory kept as numpy arrays on the CPU, moved to the features' device every step, the
explicit [M, N] distance matrix, a full sort for selection, intra/inter terms in numpy. It computes the same
numbers (checked below), so the ratio compares equal work. Target: ratio <= 0.5 on CPU.

On CUDA the script also counts device-to-host copies per call with the profiler: the manager only reads
back a few scalars (group sizes, loss_dict floats), never the memory.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from myutils.cli import non_negative_int, positive_float, positive_int, run  # noqa: E402
from myutils.contrastive_prototype_manager import ContrastivePrototypeManager  # noqa: E402


class NumpyMemoryBaseline:
    """The seed's design: ``self.memory[c] = features.detach().cpu().numpy()``, per-class matrices."""

    def __init__(self, manager: ContrastivePrototypeManager):
        self.m = manager  # shares config and selectors so both compute the same loss
        self.memory = [None] * manager.num_classes

    def __call__(self, features, predictions, labels, weights=(1.0, 0.1, 0.1)):
        m = self.m
        with torch.no_grad():
            confidence, predicted = predictions.softmax(1).max(1)
            for c in range(m.num_classes):
                mask = (labels == c) & (predicted == c)
                candidates = features[mask].detach()
                if candidates.shape[0] == 0:
                    continue
                if candidates.shape[0] > m.elements_per_class:
                    if m.feature_selectors is not None:
                        score = m.feature_selectors[c](candidates).reshape(-1)
                    else:
                        score = confidence[mask]
                    candidates = candidates[torch.sort(score, descending=True).indices[: m.elements_per_class]]
                self.memory[c] = candidates.cpu().numpy()
        contrastive = features.new_zeros(())
        for c in range(m.num_classes):
            feats = features[labels == c]
            if self.memory[c] is None or feats.shape[0] < 2 or self.memory[c].shape[0] < 2:
                continue
            memory_c = F.normalize(torch.from_numpy(self.memory[c]).to(features.device), dim=1)
            distances = 1 - F.normalize(feats, dim=1) @ memory_c.T
            if m.feature_selectors is not None:
                w_f = torch.sigmoid(m.feature_selectors[c](feats.detach()))
                w_m = torch.sigmoid(m.memory_selectors[c](memory_c))
                distances = distances * (w_f.shape[0] / w_f.sum(0)) * w_f * ((w_m.shape[0] / w_m.sum(0)) * w_m).T
            contrastive = contrastive + distances.mean()
        contrastive = contrastive / m.num_classes
        intra, inter = self._numpy_terms(features.detach().cpu().numpy(), labels.cpu().numpy())
        total = weights[0] * contrastive + weights[1] * intra + weights[2] * inter
        return total, {"prototype_contrastive": contrastive.item(), "prototype_intra": intra, "prototype_inter": inter}

    def _numpy_terms(self, features, labels):
        """The seed's auxiliary terms: detached numpy constants (same definitions as the manager)."""
        unit = lambda x: x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)  # noqa: E731
        prototypes = np.stack([unit(unit(mem).mean(0)) for mem in self.memory])
        f = unit(features)
        distance_sq = np.maximum(2.0 - 2.0 * f @ prototypes.T, 0.0)
        rows = np.arange(len(labels))
        intra = float(distance_sq[rows, labels].mean())
        hinge = np.maximum(self.m.margin - np.sqrt(distance_sq + 1e-12), 0.0)
        hinge[rows, labels] = 0.0
        inter = float(hinge.sum() / (hinge.size - len(labels)))
        return intra, inter


def make_workload(n, dim, num_classes, device, seed=0):
    gen = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, num_classes, (n,), generator=gen)
    features = torch.randn(n, dim, generator=gen) + 1.5 * F.one_hot(labels, dim).float()
    predicted = torch.where(torch.rand(n, generator=gen) < 0.7, labels, torch.randint(0, num_classes, (n,), generator=gen))
    logits = torch.randn(n, num_classes, generator=gen) + 3.0 * F.one_hot(predicted, num_classes).float()
    return features.to(device).requires_grad_(True), logits.to(device), labels.to(device)


def time_interleaved(fns, repeats, device):
    """Median seconds per call of each function, calls alternating so load changes hit both alike."""

    def once(fn):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    for fn in fns:  # warm-up: allocator, kernels, first memory fill
        once(fn)
    samples = [[] for _ in fns]
    for _ in range(repeats):
        for fn, times in zip(fns, samples, strict=True):
            times.append(once(fn))
    return [statistics.median(times) for times in samples]


def count_device_to_host_copies(fn):
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    return sum(1 for event in prof.events() if "DtoH" in event.name)


def run_benchmark(n=65_536, dim=64, num_classes=4, elements_per_class=256, repeats=9, device="auto", margin=1.5):
    """Print per-call times of both implementations; the margin is raised from 1.0 so the hinge is active."""
    device = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else ("cpu" if device == "auto" else device))
    features, logits, labels = make_workload(n, dim, num_classes, device)
    load = " ".join(f"{value:.1f}" for value in os.getloadavg())
    print(f"update_and_compute_loss: {n} x {dim} features, {num_classes} classes, "
          f"elements_per_class={elements_per_class}, margin={margin}, device={device}, "
          f"torch threads={torch.get_num_threads()}, load average {load}")
    print(f"{'selector':<10}{'manager ms':>12}{'numpy-memory ms':>17}{'ratio':>8}{'max |diff|':>12}")
    for learned in (False, True):
        torch.manual_seed(0)
        manager = ContrastivePrototypeManager(
            num_classes, dim, elements_per_class, use_learned_selector=learned, margin=margin
        ).to(device)
        manager.eval()  # fixed BatchNorm statistics: both implementations see identical selector outputs
        baseline = NumpyMemoryBaseline(manager)
        ours_loss, ours_parts = manager.update_and_compute_loss(features, logits, labels)
        base_loss, base_parts = baseline(features, logits, labels)
        diff = max(abs(ours_parts[key] - base_parts[key]) for key in base_parts)
        ours_s, base_s = time_interleaved(
            [lambda m=manager: m.update_and_compute_loss(features, logits, labels),
             lambda b=baseline: b(features, logits, labels)],
            repeats, device,
        )
        ours_ms, base_ms = 1e3 * ours_s, 1e3 * base_s
        print(f"{'on' if learned else 'off':<10}{ours_ms:>12.1f}{base_ms:>17.1f}{ours_ms / base_ms:>8.2f}{diff:>12.2e}")
        if device.type == "cuda":
            ours_copies = count_device_to_host_copies(lambda m=manager: m.update_and_compute_loss(features, logits, labels))
            base_copies = count_device_to_host_copies(lambda b=baseline: b(features, logits, labels))
            print(f"{'':<10}device-to-host copies per call: manager {ours_copies} (scalars only), "
                  f"numpy-memory {base_copies}; memory stays on {manager.memory.device}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=positive_int, default=65_536, help="number of features per call")
    parser.add_argument("--dim", type=positive_int, default=64, help="feature dimension")
    parser.add_argument("--num-classes", type=positive_int, default=4, help="number of classes")
    parser.add_argument("--elements-per-class", type=positive_int, default=256, help="memory capacity per class")
    parser.add_argument("--repeats", type=positive_int, default=9, help="timed calls per implementation, alternating (median reported)")
    parser.add_argument("--device", default="auto", help="cpu, cuda or auto (CUDA when available)")
    parser.add_argument("--threads", type=non_negative_int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--margin", type=positive_float, default=1.5, help="inter-class hinge margin (1.5 keeps it active)")
    args = parser.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    run_benchmark(args.n, args.dim, args.num_classes, args.elements_per_class, args.repeats, args.device, args.margin)


if __name__ == "__main__":
    run(main)
