"""Does the SS-Net class-wise memory help semi-supervised segmentation? Four trainings, same budget, 3 seeds.

    python bench/semiseg_bench.py --out demo_runs/semiseg_bench            # the README table (~30-60 min, 2 cores)
    python bench/semiseg_bench.py --out demo_runs/semiseg --preset demo  # the small version of `make demo`

Generates ACDC-like 2-D data (myutils/synthetic/semiseg_cases.py: textured structures, per-case gain,
offset, bias field and noise; --data_seed, not the seed the settings were chosen on), labels
``--labelnum`` patients and trains scripts/train_semiseg.py with, per training seed:

    supervised       labelled patches only
    mean_teacher     + EMA-teacher consistency on the unlabelled patches (the baseline)
    mt_shared_bn     the same with SS-Net's one student forward (BatchNorm statistics shared by both streams)
    mt_memory        + the class-wise contrastive memory (SS-Net's recipe: background kept out)
    mt_memory_sel    + the learned selectors

Each run is its own process (nice, one thread); the best checkpoint by validation Dice is scored on the
test volumes. Prints mean ± std over seeds of test Dice and HD95 (mean over the three foreground
classes), each run's figures, and the paired difference of each memory run to the mean-teacher baseline.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from myutils.cli import InputError, non_negative_int, positive_int, run  # noqa: E402
from myutils.training.log import write_json_atomic  # noqa: E402

CONFIGS = {
    "supervised": ["--semi_method", "supervised"],
    "mean_teacher": ["--semi_method", "mean_teacher"],
    "mt_shared_bn": ["--semi_method", "mean_teacher", "--stream_batchnorm", "shared"],  # SS-Net's one forward
    "mt_memory": ["--semi_method", "mean_teacher", "--use_contrastive_prototype", "--memory_ignore_classes", "0"],
    "mt_memory_sel": ["--semi_method", "mean_teacher", "--use_contrastive_prototype", "--memory_ignore_classes", "0",
                      "--use_learned_selector"],
}
BASELINE = "mean_teacher"
PRESETS = {  # data and budget
    "full": {"train": 20, "val": 4, "test": 8, "size": 64, "slices": 6, "iterations": 400, "eval_interval": 100, "seeds": 3},
    "demo": {"train": 8, "val": 2, "test": 4, "size": 48, "slices": 4, "iterations": 120, "eval_interval": 60, "seeds": 1},
}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="output folder (data, one folder per run, results.json)")
    parser.add_argument("--preset", choices=PRESETS, default="full", help="data size and budget (default full)")
    parser.add_argument("--iterations", type=positive_int, default=None, help="training iterations per run (preset)")
    parser.add_argument("--seeds", type=positive_int, default=None, help="training seeds per configuration (preset)")
    parser.add_argument("--labelnum", type=positive_int, default=2, help="labelled patients (default 2)")
    parser.add_argument("--data_seed", type=non_negative_int, default=2024, help="seed of the generated data (default 2024)")
    parser.add_argument("--parallel", type=positive_int, default=2, help="runs at once, one thread each (default 2)")
    parser.add_argument("--configs", nargs="+", choices=CONFIGS, default=list(CONFIGS), help="configurations to run")
    args = parser.parse_args(argv)
    preset = PRESETS[args.preset]
    args.iterations = args.iterations or preset["iterations"]
    args.seeds = args.seeds or preset["seeds"]
    if args.labelnum >= preset["train"]:
        raise InputError(f"--labelnum {args.labelnum} leaves no unlabelled patients (the preset has {preset['train']})")
    return args


def train_command(args: argparse.Namespace, data: Path, config: str, seed: int, out: Path) -> list[str]:
    preset = PRESETS[args.preset]
    size = str(preset["size"])
    return [sys.executable, str(ROOT / "scripts" / "train_semiseg.py"), "--root_path", str(data), "--dataset", "acdc",
            "--labelnum", str(args.labelnum), "--patch_size", size, size, "--batch_size", "8", "--labeled_bs", "4",
            "--base_channels", "8", "--optimizer", "adamw", "--base_lr", "0.002", "--max_iterations",
            str(args.iterations), "--eval_interval", str(preset["eval_interval"]), "--num_workers", "0",
            "--seed", str(seed), "--output_dir", str(out), *CONFIGS[config]]


def run_one(command: list[str], out: Path) -> dict:
    """One training in its own process (nice, one thread); its metrics.json plus the wall time."""
    metrics = out / "metrics.json"
    if metrics.is_file():  # finished earlier: a rerun continues where an interrupted bench stopped
        return json.loads(metrics.read_text())
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    started = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "log.txt", "w") as log:
        result = subprocess.run(["nice", "-n", "10", *command], stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    if result.returncode != 0:
        raise RuntimeError(f"training failed ({result.returncode}), see {out / 'log.txt'}")
    report = json.loads(metrics.read_text())
    report["seconds"] = time.perf_counter() - started
    write_json_atomic(report, metrics)
    return report


def mean_std(values: list[float]) -> str:
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.4f} ± {spread:.4f}"


def run_bench(args: argparse.Namespace) -> dict:
    from myutils.synthetic.semiseg_cases import make_acdc_like

    preset = PRESETS[args.preset]
    data = args.out / "data"
    if not (data / "train_slices.list").is_file():
        make_acdc_like(data, preset["train"], preset["val"], preset["test"], preset["size"], preset["slices"], args.data_seed)
    jobs = [(config, seed) for seed in range(args.seeds) for config in args.configs]
    print(f"{len(jobs)} runs: {args.configs} x seeds 0..{args.seeds - 1}, {args.iterations} iterations each, "
          f"{args.labelnum} of {preset['train']} training patients labelled, {preset['test']} test patients "
          f"(2 frames each), {args.parallel} at a time, load average {os.getloadavg()[0]:.1f}", flush=True)

    def job(entry):
        config, seed = entry
        out = args.out / f"{config}_seed{seed}"
        report = run_one(train_command(args, data, config, seed, out), out)
        print(f"  {config:<14} seed {seed}: test Dice {report['test']['dice']:.4f} HD95 {report['test']['hd95']:.2f} "
              f"({report.get('seconds', 0):.0f} s)", flush=True)
        return entry, report

    with ThreadPoolExecutor(max_workers=args.parallel) as pool:
        reports = dict(pool.map(job, jobs))
    results = {}
    for config in args.configs:
        runs = [reports[(config, seed)] for seed in range(args.seeds)]
        results[config] = {
            "test_dice": [r["test"]["dice"] for r in runs], "test_hd95": [r["test"]["hd95"] for r in runs],
            "test_dice_per_class": [[r["test"][f"dice_class{c}"] for c in (1, 2, 3)] for r in runs],
            "val_dice": [r["best_val"]["dice"] for r in runs], "best_iteration": [r["best_iteration"] for r in runs],
            "seconds": [r.get("seconds", 0.0) for r in runs],
        }
    write_json_atomic({"settings": {k: str(v) for k, v in vars(args).items()}, "results": results}, args.out / "results.json")
    print(f"\n{'configuration':<16}{'test Dice':>18}{'test HD95':>18}{'Dice RV / Myo / LV':>24}{'min/run':>9}")
    for config, r in results.items():
        per_class = [statistics.mean(values) for values in zip(*r["test_dice_per_class"], strict=True)]
        print(f"{config:<16}{mean_std(r['test_dice']):>18}{mean_std(r['test_hd95']):>18}"
              f"{' / '.join(f'{v:.3f}' for v in per_class):>24}{statistics.mean(r['seconds']) / 60:>9.1f}")
    if BASELINE in results:
        print(f"\npaired difference to {BASELINE} (same seed), mean ± std over seeds:")
        for config in (c for c in results if c.startswith("mt_memory")):
            dice = [a - b for a, b in zip(results[config]["test_dice"], results[BASELINE]["test_dice"], strict=True)]
            hd95 = [a - b for a, b in zip(results[config]["test_hd95"], results[BASELINE]["test_hd95"], strict=True)]
            if len(dice) == 1:
                verdict = "one seed: no verdict"
            else:
                verdict = "helps on every seed" if min(dice) > 0 else "no consistent gain"
            print(f"  {config:<14} Δ Dice {mean_std(dice)}  Δ HD95 {mean_std(hd95)}  -> {verdict}")
    print(f"results: {args.out / 'results.json'}")
    return results


def main(argv=None) -> None:
    run_bench(parse_args(argv))


if __name__ == "__main__":
    run(main)
