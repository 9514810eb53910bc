"""SupCon benchmarks; every figure is a ratio against a baseline measured in the same run.

1. SupConLoss forward+backward (512 views × 128 dims): time and peak memory vs pytorch-metric-learning's
   SupConLoss (target ratio ≤ 1.0).
2. One optimizer step at target_batch=128 from batch_size=16: gradient cache vs plain accumulation
   (target ≤ 1.6×).
3. train.py images/s vs a bare loop doing the same step on in-memory tensors (target ≥ 0.8: the input
   pipeline must not starve the model); the second epoch is timed, DataLoader start-up included.
4. Top-5 search of 1,000 queries in a 10,000 × 512 gallery: ``myutils.retrieval.search.top_k_search`` (backend
   auto: torch, or faiss's own kernel where the first search timed it faster) vs faiss ``IndexFlatIP`` at its
   defaults and with the best OpenBLAS kernel of a two-value sweep (``OPENBLAS_CORETYPE``, each in its own
   process) (target ≤ 1.0×).

    python bench/supcon_bench.py            # CPU, about 2-3 minutes on 2 cores
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from loss import SupConLoss  # noqa: E402
from model import EmbeddingModel  # noqa: E402
from myutils.cli import non_negative_int, positive_int, run  # noqa: E402
from myutils.retrieval.grad_cache import accumulated_backward, grad_cache_backward  # noqa: E402
from myutils.retrieval.search import search_backend, top_k_search  # noqa: E402
from myutils.synthetic.garments import generate_garment_dataset  # noqa: E402
from train import train_supcon  # noqa: E402


def median_seconds(fns: Sequence[Callable[[], object]], repeats: int, warmup: int = 1) -> list[float]:
    """Median wall time of each function; runs are interleaved so that load changes hit all of them alike."""
    for fn in fns:
        for _ in range(warmup):
            fn()
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for fn, fn_times in zip(fns, times, strict=True):
            start = time.perf_counter()
            fn()
            fn_times.append(time.perf_counter() - start)
    return [statistics.median(fn_times) for fn_times in times]


def peak_memory_bytes(fn: Callable[[], object]) -> int:
    """Peak of the live CPU tensor memory allocated while ``fn`` runs (from the profiler's allocation events)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    live = peak = 0
    for event in sorted(prof.events(), key=lambda e: e.time_range.start):
        live += event.self_cpu_memory_usage  # allocations minus frees of this op (or free event)
        peak = max(peak, live)
    return peak


# ---------------------------------------------------------------- 1. loss
def loss_inputs(views: int = 512, dim: int = 128, n_classes: int = 32, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    features = F.normalize(torch.randn(views // 2, 2, dim, generator=generator), dim=-1)
    labels = torch.randint(0, n_classes, (views // 2,), generator=generator)
    return features, labels


def loss_step(which: str) -> Callable[[], None]:
    """Forward+backward of our SupConLoss or pytorch-metric-learning's on the same 512 views."""
    features, labels = loss_inputs()
    if which == "ours":
        loss_fn = SupConLoss(0.1)

        def step():
            leaf = features.clone().requires_grad_(True)
            loss_fn(leaf, labels).backward()
    else:
        from pytorch_metric_learning.losses import SupConLoss as PMLSupConLoss

        pml_loss, flat, flat_labels = PMLSupConLoss(0.1), features.transpose(0, 1).reshape(-1, 128), labels.repeat(2)

        def step():
            leaf = flat.clone().requires_grad_(True)
            pml_loss(leaf, flat_labels).backward()
    return step


def bench_loss(repeats: int) -> list[dict]:
    ours_time, pml_time = median_seconds([loss_step("ours"), loss_step("pml")], repeats, warmup=3)
    ours_mem, pml_mem = peak_memory_bytes(loss_step("ours")), peak_memory_bytes(loss_step("pml"))
    return [
        row("SupConLoss fwd+bwd time, 512×128", ours_time * 1e3, pml_time * 1e3, "ms", "<= 1.0"),
        row("SupConLoss fwd+bwd peak memory", ours_mem / 2**20, pml_mem / 2**20, "MiB", "<= 1.0"),
    ]


# ---------------------------------------------------------------- 2. optimizer step
def make_step(model, optimizer, method, micro_batches, loss_fn):
    def step():
        optimizer.zero_grad(set_to_none=True)
        method(model, micro_batches, loss_fn)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
    return step


def bench_step(model_name: str, img_size: int, repeats: int) -> list[dict]:
    torch.manual_seed(0)
    model = EmbeddingModel(model_name, 128, img_size=img_size).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    images, labels = torch.randn(128, 2, 3, img_size, img_size), torch.arange(128) % 32
    micro = [(images[i : i + 16], labels[i : i + 16]) for i in range(0, 128, 16)]
    loss_fn = SupConLoss(0.1)
    cached, plain = median_seconds([make_step(model, optimizer, grad_cache_backward, micro, loss_fn),
                                    make_step(model, optimizer, accumulated_backward, micro, loss_fn)], repeats)
    return [row(f"optimizer step 128 from 16 ({model_name} {img_size}px)", cached, plain, "s", "<= 1.6",
                names=("grad cache", "plain accum."))]


# ---------------------------------------------------------------- 3. input pipeline
def bench_pipeline(model_name: str, img_size: int, num_workers: int, work_dir: Path) -> list[dict]:
    data = work_dir / "garments"
    generate_garment_dataset(data, 72, img_size, seed=0)  # 18 classes × 72 images: 19 steps of 64 per epoch
    rows = []
    for accumulation, method in (("plain", accumulated_backward), ("gradcache", grad_cache_backward)):
        result = train_supcon(
            str(data), batch_size=16, target_batch=64, epochs=2, warmup_epochs=0, save_dir=str(work_dir / accumulation),
            model_name=model_name, emb_dim=128, img_size=img_size, val_split=0.1, num_workers=num_workers,
            m_per_class=4, accumulation=accumulation, device="cpu", progress=False,
        )
        loader_rate = result["history"]["images_per_s"][-1]  # second epoch: workers and allocator warm
        torch.manual_seed(0)
        model = EmbeddingModel(model_name, 128, img_size=img_size).train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
        images, labels = torch.randn(64, 2, 3, img_size, img_size), torch.arange(64) % 16
        micro = [(images[i : i + 16], labels[i : i + 16]) for i in range(0, 64, 16)]
        # as many steps as train.py's epoch (19), warmed up: five short steps left the baseline ±30 % noisy
        (bare_seconds,) = median_seconds([make_step(model, optimizer, method, micro, SupConLoss(0.1))], 19,
                                         warmup=3)
        rows.append(row(f"train.py images/s ({accumulation}, {num_workers} worker(s))", loader_rate, 64 / bare_seconds,
                        "img/s", ">= 0.8", names=("train.py", "in-memory loop")))
    return rows


# ---------------------------------------------------------------- 4. search
OPENBLAS_CORETYPES = ("Haswell", "SkylakeX")  # the sweep for faiss's bundled OpenBLAS (see bench_search)


def bench_search(repeats: int, baseline_label: str = "faiss IndexFlatIP") -> list[dict]:
    """``top_k_search`` (backend auto) vs faiss ``IndexFlatIP.search``, interleaved in this process.

    faiss-cpu wheels bundle an OpenBLAS that picks its kernels by CPU model; on CPUs newer than it
    knows it falls back to generic ones. :func:`bench_search_tuned` reruns this in subprocesses with
    ``OPENBLAS_CORETYPE`` forced to each of :data:`OPENBLAS_CORETYPES` and keeps faiss's best.
    """
    import faiss

    faiss.omp_set_num_threads(torch.get_num_threads())  # the same threads as ours
    generator = torch.Generator().manual_seed(0)
    gallery = F.normalize(torch.randn(10_000, 512, generator=generator), dim=1)
    queries = F.normalize(torch.randn(1_000, 512, generator=generator), dim=1)
    index = faiss.IndexFlatIP(512)
    index.add(gallery.numpy())
    queries_np = queries.numpy()
    _, ours_indices = top_k_search(queries, gallery, 5)
    _, faiss_indices = index.search(queries_np, 5)
    assert (ours_indices.numpy() == faiss_indices).mean() > 0.999  # the same neighbours (ties aside)
    backend = search_backend(queries, gallery)
    ours, base = median_seconds([lambda: top_k_search(queries, gallery, 5), lambda: index.search(queries_np, 5)],
                                repeats)
    return [row("top-5 search 1k × 10k × 512", ours * 1e3, base * 1e3, "ms", "<= 1.0",
                names=(f"top_k_search ({backend})", baseline_label))]


def bench_search_tuned(repeats: int, threads: int) -> list[dict]:
    """The search row against faiss with the best ``OPENBLAS_CORETYPE`` of the sweep (each run in its own process)."""
    runs = []
    for coretype in OPENBLAS_CORETYPES:
        env = {**os.environ, "OPENBLAS_CORETYPE": coretype}
        command = [sys.executable, str(Path(__file__).resolve()), "--search_only", "--repeats", str(repeats),
                   "--threads", str(threads), "--baseline_label", f"faiss IndexFlatIP, OPENBLAS_CORETYPE={coretype}"]
        result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=1200)
        if result.returncode != 0:
            raise RuntimeError(f"search benchmark with OPENBLAS_CORETYPE={coretype} failed:\n{result.stderr}")
        runs.append(json.loads(result.stdout.strip().splitlines()[-1])[0])
    return [min(runs, key=lambda r: r["baseline"])]


# ---------------------------------------------------------------- table
def row(name, ours, baseline, unit, target, names=("ours", "pytorch-metric-learning")) -> dict:
    ratio = ours / baseline if baseline else float("inf")
    bound = float(target.split()[-1])
    passed = ratio <= bound if target.startswith("<=") else ratio >= bound
    return {"benchmark": name, "ours": ours, "baseline": baseline, "unit": unit, "ours_name": names[0],
            "baseline_name": names[1], "ratio": ratio, "target": target, "pass": passed}


def print_table(rows: Sequence[dict]) -> None:
    print(f"\n{'benchmark':<56}{'ours':>12}{'baseline':>12}  {'unit':<6}{'ratio':>7}  {'target':<8}result  (ours vs baseline)")
    for r in rows:
        print(f"{r['benchmark']:<56}{r['ours']:>12.3f}{r['baseline']:>12.3f}  {r['unit']:<6}{r['ratio']:>7.2f}  "
              f"{r['target']:<8}{'PASS' if r['pass'] else 'MISS'}    ({r['ours_name']} vs {r['baseline_name']})")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model_name", default="mobilenetv3_small_100", help="timm model for the step/pipeline benchmarks")
    p.add_argument("--img_size", type=positive_int, default=64, help="image side length for the step/pipeline benchmarks")
    p.add_argument("--num_workers", type=non_negative_int, default=1, help="DataLoader workers for the train.py run")
    p.add_argument("--threads", type=positive_int, default=1, help="torch compute threads (same for ours and baselines)")
    p.add_argument("--repeats", type=positive_int, default=5, help="timed repeats per measurement (median reported)")
    p.add_argument("--json", default=None, help="also write the rows to this JSON file")
    p.add_argument("--search_only", action="store_true", help=argparse.SUPPRESS)  # one run of the faiss sweep
    p.add_argument("--baseline_label", default="faiss IndexFlatIP (defaults)", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.search_only:
        print(json.dumps(bench_search(args.repeats, args.baseline_label)))
        return
    rows = bench_loss(args.repeats * 4)
    rows += bench_step(args.model_name, args.img_size, args.repeats)
    with tempfile.TemporaryDirectory() as work_dir:
        rows += bench_pipeline(args.model_name, args.img_size, args.num_workers, Path(work_dir))
    rows += bench_search(args.repeats, "faiss IndexFlatIP (defaults)")
    rows += bench_search_tuned(args.repeats, args.threads)
    print_table(rows)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    run(main)
