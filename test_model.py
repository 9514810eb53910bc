"""Recognise images by nearest neighbours in a gallery, or evaluate retrieval on a whole folder.

Top-k classes for some photos (best gallery image per class, cosine score)::

    python test_model.py --model_path checkpoints_supcon/best_supcon.pth --gallery_root data/gallery \
        --images photo1.jpg photo2.jpg --top_k 5

Retrieval metrics as one JSON object (queries from --query_root, else leave-one-out over the gallery)::

    python test_model.py --model_path checkpoints_supcon/best_supcon.pth --gallery_root data/gallery --eval

Gallery embeddings are cached next to the model and recomputed when the model or the gallery changes.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from augment_images import EvalTransform
from model import EmbeddingModel
from myutils.cli import InputError, non_negative_int, positive_int, run
from myutils.data.image_folder import ImageRecord, scan_image_folder
from myutils.retrieval.embedding import EmbeddedImages, embed_records
from myutils.retrieval.gallery_cache import load_or_embed_gallery
from myutils.retrieval.metrics import retrieval_metrics
from myutils.training.precision import resolve_device

EVAL_KEYS = ("precision_at_1", "recall_at_1", "recall_at_5", "recall_at_10", "mrr", "r_precision", "map_at_r",
             "num_queries")


class RetrievalSession:
    """A trained model plus its (cached) gallery embeddings."""

    def __init__(self, model_path, gallery_root, device=None, batch_size=64, num_workers=0, progress=True):
        records, self.class_names = scan_image_folder(gallery_root)  # cheap checks before the model is read
        self.device = resolve_device(device)
        self.model, _ = EmbeddingModel.from_checkpoint(model_path, map_location=self.device)
        self.model.to(self.device)
        config = self.model.config
        self.transform = EvalTransform(config["img_size"], config["mean"], config["std"])
        self.batch_size, self.num_workers, self.progress = batch_size, num_workers, progress
        self.gallery, self.from_cache = load_or_embed_gallery(
            model_path, gallery_root, records, self.class_names, lambda items: self.embed(items, "gallery")
        )
        if self.gallery.embeddings.shape[0] == 0:
            raise InputError(f"no readable gallery image in {gallery_root}")

    def embed(self, records: Sequence[ImageRecord], desc: str = "queries") -> EmbeddedImages:
        return embed_records(self.model, records, self.transform, self.device, self.batch_size, self.num_workers,
                             desc=desc, progress=self.progress)

    def top_classes(self, query: torch.Tensor, top_k: int) -> list[dict[str, Any]]:
        """The ``top_k`` classes by their best gallery image: class, path, cosine score."""
        scores = self.gallery.embeddings @ query
        matches, seen = [], set()
        for index in scores.argsort(descending=True).tolist():
            label = int(self.gallery.labels[index])
            if label in seen:
                continue
            seen.add(label)
            matches.append({"class": self.class_names[label], "path": self.gallery.records[index].path,
                            "score": float(scores[index])})
            if len(matches) == top_k:
                break
        return matches


def verify_real_world_image(
    model_path: str | os.PathLike,
    gallery_root: str | os.PathLike,
    image_paths: Sequence[str | os.PathLike],
    top_k: int = 5,
    device: str | None = None,
    batch_size: int = 64,
) -> list[dict[str, Any]]:
    """Print and return, per query image, its top-k gallery classes (best image per class).

    Each result is ``{"image": path, "matches": [{"class", "path", "score"}, ...]}``; an unreadable
    query gets ``"error"`` and no matches.
    """
    if top_k < 1:
        raise InputError(f"top_k must be positive, got {top_k}")
    session = RetrievalSession(model_path, gallery_root, device, batch_size, progress=False)
    queries = session.embed([ImageRecord(str(path), -1) for path in image_paths])
    embedding_of = {record.path: emb for record, emb in zip(queries.records, queries.embeddings, strict=True)}
    results = []
    for path in map(str, image_paths):
        if path not in embedding_of:
            results.append({"image": path, "error": "unreadable image", "matches": []})
            print(f"{path}: unreadable image, skipped")
            continue
        matches = session.top_classes(embedding_of[path], top_k)
        results.append({"image": path, "matches": matches})
        print(f"{path}:")
        for rank, match in enumerate(matches, 1):
            print(f"  {rank}. {match['class']:<24} {match['score']:.4f}  {match['path']}")
    return results


def evaluate_retrieval(
    model_path: str | os.PathLike,
    gallery_root: str | os.PathLike,
    query_root: str | os.PathLike | None = None,
    device: str | None = None,
    batch_size: int = 64,
    num_workers: int = 0,
) -> dict[str, float]:
    """Retrieval metrics of ``query_root`` against the gallery (leave-one-out over the gallery without it)."""
    session = RetrievalSession(model_path, gallery_root, device, batch_size, num_workers)
    gallery = session.gallery
    if query_root is None:
        metrics = retrieval_metrics(gallery.embeddings, gallery.labels, gallery.embeddings, gallery.labels, True)
    else:
        records, _ = scan_image_folder(query_root, session.class_names)
        queries = session.embed(records)
        metrics = retrieval_metrics(queries.embeddings, queries.labels, gallery.embeddings, gallery.labels)
    return {key: metrics[key] for key in EVAL_KEYS}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Top-k gallery classes for query images, or retrieval metrics with --eval.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--model_path", default="checkpoints_supcon/best_supcon.pth", help="checkpoint written by train.py")
    p.add_argument("--gallery_root", required=True, help="gallery images, one sub-folder per class")
    p.add_argument("--images", nargs="+", default=[], help="query images to recognise")
    p.add_argument("--top_k", type=positive_int, default=5, help="classes to list per query image")
    p.add_argument("--eval", action="store_true",
                   help="print retrieval metrics as JSON instead (queries: --query_root, else leave-one-out)")
    p.add_argument("--query_root", default=None, help="with --eval: query images in the gallery's class folders")
    p.add_argument("--batch_size", type=positive_int, default=64, help="images per forward pass")
    p.add_argument("--num_workers", type=non_negative_int, default=0, help="DataLoader workers for --eval")
    p.add_argument("--device", default=None, help="cuda or cpu; unset: cuda when available")
    args = p.parse_args(argv)
    if not args.eval and not args.images:
        p.error("give --images to recognise, or --eval for retrieval metrics")
    if args.query_root and not args.eval:
        p.error("--query_root only applies with --eval")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if not Path(args.model_path).is_file():
        raise InputError(f"model checkpoint not found: {args.model_path}")
    if args.eval:
        metrics = evaluate_retrieval(args.model_path, args.gallery_root, args.query_root, args.device,
                                     args.batch_size, args.num_workers)
        print(json.dumps(metrics))
    else:
        verify_real_world_image(args.model_path, args.gallery_root, args.images, args.top_k, args.device,
                                args.batch_size)


if __name__ == "__main__":
    run(main)
