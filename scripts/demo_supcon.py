"""End-to-end SupCon demo on generated garments: untrained vs trained retrieval on held-out images.

Generates ``OUT/data/train`` (gallery and training set) and ``OUT/data/query`` (held-out images never
seen in training), measures the untrained model, trains a small timm model on the CPU with
``train.py``'s ``train_supcon``, measures again and prints both side by side, then draws
``OUT/matches.jpg`` (held-out queries beside their top-3 classes). Colour is random per image, so
retrieval only works once the model has learned colour-independent shape/pattern features.

The data is reproducible: ``OUT/data/fingerprint.json`` records the generator's arguments and
version and a hash of every file; data that does not match them (an earlier configuration, files
changed by hand) is regenerated, never reused.

    python scripts/demo_supcon.py --out demo_runs/supcon
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

import torch  # noqa: E402

from model import EmbeddingModel  # noqa: E402
from myutils.cli import InputError, non_negative_int, positive_int, run  # noqa: E402
from myutils.synthetic.garments import GENERATOR_VERSION, garment_class_names, generate_garment_dataset  # noqa: E402
from myutils.training.checkpoint import save_checkpoint  # noqa: E402
from myutils.training.log import write_json_atomic  # noqa: E402
from myutils.training.seeding import seed_everything  # noqa: E402
from test_model import EVAL_KEYS, evaluate_retrieval, verify_real_world_image  # noqa: E402
from train import train_supcon  # noqa: E402


def save_untrained(path: Path, model_name: str, emb_dim: int, img_size: int, seed: int) -> Path:
    """The randomly initialised model that training starts from, as a checkpoint for test_model.py."""
    seed_everything(seed)
    model = EmbeddingModel(model_name, emb_dim, img_size=img_size)
    return save_checkpoint({"model": model.state_dict(), "model_config": model.config}, path)


def data_fingerprint(data_dir: Path) -> str:
    """SHA-256 over the relative path and bytes of every generated image."""
    digest = hashlib.sha256()
    for path in sorted(p for p in data_dir.rglob("*.png")):
        digest.update(path.relative_to(data_dir).as_posix().encode("utf-8") + b"\0" + path.read_bytes())
    return digest.hexdigest()


def _looks_generated(data_dir: Path) -> bool:
    """Only garment class folders of numbered PNGs: a folder this demo may delete."""
    names = set(garment_class_names())
    return all(split.is_dir() and all(c.is_dir() and c.name in names and all(f.suffix == ".png" for f in c.iterdir())
                                      for c in split.iterdir())
               for split in data_dir.iterdir())


def prepare_data(data_dir: Path, images_per_class: int, queries_per_class: int, img_size: int, seed: int) -> bool:
    """Generate ``data_dir/train`` and ``data_dir/query`` unless they match their fingerprint; True if regenerated."""
    params = {"generator": "myutils.synthetic.garments", "version": GENERATOR_VERSION,
              "images_per_class": images_per_class, "queries_per_class": queries_per_class, "img_size": img_size,
              "seed": seed}
    stamp = data_dir / "fingerprint.json"
    if stamp.is_file():
        recorded = json.loads(stamp.read_text())
        if recorded.get("params") == params and recorded.get("sha256") == data_fingerprint(data_dir):
            return False
    if data_dir.exists():
        if not (stamp.is_file() or _looks_generated(data_dir)):
            raise InputError(f"{data_dir} exists and was not written by this demo: choose another --out")
        shutil.rmtree(data_dir)
    generate_garment_dataset(data_dir / "train", images_per_class, img_size, seed)
    generate_garment_dataset(data_dir / "query", queries_per_class, img_size, seed + 1)
    stamp.write_text(json.dumps({"params": params, "sha256": data_fingerprint(data_dir)}, indent=2))
    return True


def run_demo(out: str, model_name: str = "resnet10t", epochs: int = 30, images_per_class: int = 80,
             queries_per_class: int = 20, img_size: int = 32, threads: int = 1, num_workers: int = 1,
             seed: int = 0) -> dict:
    """Generate data, evaluate untrained, train, evaluate trained; returns both metric dicts."""
    torch.set_num_threads(threads)
    out_dir = Path(out)
    train_root, query_root = out_dir / "data" / "train", out_dir / "data" / "query"
    regenerated = prepare_data(out_dir / "data", images_per_class, queries_per_class, img_size, seed)
    print(f"{'generated' if regenerated else 'reusing (fingerprint matches)'} {out_dir / 'data'}: "
          f"{images_per_class} training/gallery and {queries_per_class} held-out images per class, {img_size} px")
    checkpoints = out_dir / "checkpoints"
    emb_dim = 128

    untrained_path = save_untrained(checkpoints / "untrained.pth", model_name, emb_dim, img_size, seed)
    untrained = evaluate_retrieval(untrained_path, train_root, query_root, num_workers=num_workers)
    start = time.perf_counter()
    result = train_supcon(
        str(train_root), batch_size=32, target_batch=64, epochs=epochs, warmup_epochs=2, lr=2e-3,
        save_dir=str(checkpoints), model_name=model_name, temperature=0.1, emb_dim=emb_dim, img_size=img_size,
        val_split=0.15, num_workers=num_workers, seed=seed, m_per_class=4, weight_decay=1e-4, device="cpu",
    )
    train_seconds = time.perf_counter() - start
    trained = evaluate_retrieval(result["best_path"], train_root, query_root, num_workers=num_workers)

    print(f"\nretrieval of {trained['num_queries']} held-out images against the {train_root} gallery "
          f"({model_name}, {epochs} epochs, {train_seconds:.0f} s of training)")
    print(f"{'metric':<16}{'untrained':>12}{'trained':>12}")
    for key in EVAL_KEYS[:-1]:
        print(f"{key:<16}{untrained[key]:>12.4f}{trained[key]:>12.4f}")
    examples = [sorted((query_root / name).iterdir())[0] for name in ("tshirt_stripes", "trousers_dots", "dress_checks",
                                                                       "skirt_stripes", "cap_dots", "bag_checks")]
    print("\nexamples: top-3 classes of held-out images (also drawn in matches.jpg)")
    verify_real_world_image(result["best_path"], train_root, examples, top_k=3, grid_path=out_dir / "matches.jpg")
    summary = {"untrained": untrained, "trained": trained, "train_seconds": train_seconds,
               "best_epoch": result["best_epoch"], "model_name": model_name, "epochs": epochs}
    write_json_atomic(summary, out_dir / "results.json")
    return summary


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", default="demo_runs/supcon", help="output folder (data, checkpoints, results.json)")
    p.add_argument("--model_name", default="resnet10t", help="timm model to train from scratch")
    p.add_argument("--epochs", type=positive_int, default=30, help="training epochs")
    p.add_argument("--images_per_class", type=positive_int, default=80, help="generated training/gallery images per class")
    p.add_argument("--queries_per_class", type=positive_int, default=20, help="generated held-out query images per class")
    p.add_argument("--img_size", type=positive_int, default=32, help="image side length")
    p.add_argument("--threads", type=positive_int, default=1,
                   help="torch compute threads (1 leaves the second core of a 2-core machine to the data loader)")
    p.add_argument("--num_workers", type=non_negative_int, default=1, help="DataLoader worker processes")
    p.add_argument("--seed", type=non_negative_int, default=0, help="random seed")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    summary = run_demo(**vars(args))
    gain = summary["trained"]["map_at_r"] - summary["untrained"]["map_at_r"]
    print(f"\nmAP@R gain from training: {gain:+.4f}")
    return 0 if gain > 0 else 1


if __name__ == "__main__":
    run(main)
