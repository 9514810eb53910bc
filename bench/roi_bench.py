"""ROI encoder benchmarks, ratios against baselines measured in the same run.

1. Appearance cost: ROI align + encoder for 20 boxes versus the YOLOv7 forward at 640x640
   (target <= 0.10: the encoder must stay lightweight next to the detector).
2. Training throughput of main_train.py: samples/s with 2 processes (torchrun, gloo) versus 1,
   both with one thread per process, on the same random ROI shards.

    python bench/roi_bench.py [--repeats 5] [--rois 2048] [--epochs 3]
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
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from myutils.cli import positive_int, run  # noqa: E402
from myutils.detection.letterbox import Letterbox  # noqa: E402
from myutils.detection.yolov7 import YOLOv7  # noqa: E402
from myutils.roi.encoder import ROIEncoder  # noqa: E402
from myutils.roi.features import roi_align_features  # noqa: E402
from myutils.roi.shards import RoiShardWriter  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=positive_int, default=5, help="timed repetitions per measurement (default 5)")
    parser.add_argument("--boxes", type=positive_int, default=20, help="boxes per image for the ROI path (default 20)")
    parser.add_argument("--rois", type=positive_int, default=2048, help="ROIs in the training benchmark (default 2048)")
    parser.add_argument("--epochs", type=positive_int, default=3, help="training epochs per run; the first is warm-up (default 3)")
    parser.add_argument("--batch_size", type=positive_int, default=64, help="batch size per process (default 64)")
    return parser.parse_args(argv)


def interleaved_seconds(fns: dict, repeats: int) -> dict[str, dict[str, float]]:
    """Time the functions in turns (so load from other processes hits all alike); min and median."""
    for fn in fns.values():
        fn()  # warm-up (allocations, kernel selection)
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: {"min": min(t), "median": statistics.median(t)} for name, t in times.items()}


def count_flops(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


@torch.no_grad()
def appearance_cost(args: argparse.Namespace) -> dict[str, dict[str, float]]:
    torch.manual_seed(0)
    detector = YOLOv7(80).eval()
    encoder = ROIEncoder().eval()
    image = torch.rand(1, 3, 640, 640)
    _, feature_map = detector(image)
    letterbox = Letterbox(1.0, 0, 0, 640, 640, 640, 640)
    xy = torch.rand(args.boxes, 2) * 560
    boxes = torch.cat([xy, xy + 20 + torch.rand(args.boxes, 2) * 60], dim=1)
    fns = {"yolo": lambda: detector(image), "roi": lambda: encoder(roi_align_features(feature_map, boxes, letterbox))}
    result = interleaved_seconds(fns, args.repeats)
    result["flops"] = {name: float(count_flops(fn)) for name, fn in fns.items()}
    return result


def training_throughput(args: argparse.Namespace, workdir: Path) -> dict[str, float]:
    generator = torch.Generator().manual_seed(0)
    writer = RoiShardWriter(workdir / "features", shard_size=1024, metadata={"img_size": 640})
    for start in range(0, args.rois, 16):
        n = min(16, args.rois - start)
        writer.add(f"img{start}.jpg", torch.randn(n, 512, 10, 10, generator=generator),
                   torch.tensor([[0.0, 0.0, 10.0, 10.0]] * n), torch.ones(n))
    writer.close()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    common = ["main_train.py", "--data", str(workdir / "features"), "--epochs", str(args.epochs),
              "--batch_size", str(args.batch_size), "--warmup_epochs", "1", "--workers", "0"]
    torchrun = str(Path(sys.executable).parent / "torchrun")
    runs = {
        "1 process": [sys.executable, *common, "--output_dir", str(workdir / "one")],
        "2 processes": [torchrun, "--standalone", "--nproc_per_node=2", *common, "--output_dir", str(workdir / "two")],
    }
    result = {}
    for name, command in runs.items():
        subprocess.run(command, cwd=REPO, env=env, check=True, capture_output=True)
        history = json.loads((Path(command[command.index("--output_dir") + 1]) / "history.json").read_text())
        result[name] = statistics.mean(history["samples_per_s"][1:] or history["samples_per_s"])
    result["ratio"] = result["2 processes"] / result["1 process"]
    return result


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}, "
          f"load average {os.getloadavg()[0]:.1f}")
    cost = appearance_cost(args)
    print(f"\n1. appearance cost per image ({args.boxes} boxes; interleaved runs, {args.repeats} each)")
    print(f"{'':<28}{'min ms':>10}{'median ms':>12}{'GFLOPs':>10}")
    for name, label in (("yolo", "YOLOv7 forward 640x640"), ("roi", "ROI align + encoder")):
        print(f"{label:<28}{cost[name]['min'] * 1000:>10.1f}{cost[name]['median'] * 1000:>12.1f}"
              f"{cost['flops'][name] / 1e9:>10.2f}")
    for kind in ("min", "median"):
        ratio = cost["roi"][kind] / cost["yolo"][kind]
        print(f"{'time ratio (' + kind + ')':<28}{ratio:>10.3f}   {'meets' if ratio <= 0.10 else 'MISSES'} the 0.10 target")
    flop_ratio = cost["flops"]["roi"] / cost["flops"]["yolo"]
    print(f"{'FLOP ratio':<28}{flop_ratio:>10.3f}   {'meets' if flop_ratio <= 0.10 else 'MISSES'} the 0.10 target")
    with tempfile.TemporaryDirectory() as tmp:
        throughput = training_throughput(args, Path(tmp))
    print(f"\n2. main_train.py throughput ({args.rois} ROIs, batch {args.batch_size}/process, 1 thread/process)")
    for name in ("1 process", "2 processes"):
        print(f"{name:<34}{throughput[name]:>10.1f} samples/s")
    print(f"{'ratio 2 / 1':<34}{throughput['ratio']:>10.2f}x")


if __name__ == "__main__":
    run(main)
