"""Recognise images by nearest neighbours in a gallery, or evaluate retrieval on a whole folder.

Top-k classes for some photos (best gallery image per class, cosine score); "unknown" below a score
(open-set recognition); one JSON object per query; a picture of each query beside its matches::

    python test_model.py --model_path checkpoints_supcon/best_supcon.pth --gallery_root data/gallery \
        --images photo1.jpg photo2.jpg --top_k 5 --min_score 0.5 --json --grid matches.jpg

Retrieval metrics, kNN accuracy and per-class precision@1 as one JSON object (queries from
--query_root, else leave-one-out over the gallery)::

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
from myutils.retrieval.metrics import knn_classification, retrieval_metrics
from myutils.retrieval.search import top_k_search
from myutils.retrieval.visualize import draw_match_grid
from myutils.training.precision import resolve_device

EVAL_KEYS = ("precision_at_1", "recall_at_1", "recall_at_5", "recall_at_10", "mrr", "r_precision", "map_at_r",
             "knn_accuracy", "num_queries")
UNKNOWN = "unknown"


class RetrievalSession:
    """A trained model plus its (cached) gallery embeddings."""

    def __init__(self, model_path, gallery_root, device=None, batch_size=64, num_workers=0, progress=True):
        records, self.class_names = scan_image_folder(gallery_root)  # cheap checks before the model is read
        self.device = resolve_device(device)
        self.model, _ = EmbeddingModel.from_checkpoint(model_path, map_location=self.device)
        self.model.to(self.device)
        self.transform = EvalTransform.from_config(self.model.config)
        self.batch_size, self.num_workers, self.progress = batch_size, num_workers, progress
        self.gallery, self.from_cache = load_or_embed_gallery(
            model_path, gallery_root, records, self.class_names, lambda items: self.embed(items, "gallery")
        )
        if self.gallery.embeddings.shape[0] == 0:
            raise InputError(f"no readable gallery image in {gallery_root}")

    def embed(self, records: Sequence[ImageRecord], desc: str = "queries") -> EmbeddedImages:
        return embed_records(self.model, records, self.transform, self.device, self.batch_size, self.num_workers,
                             desc=desc, progress=self.progress)

    def top_classes(self, queries: torch.Tensor, top_k: int) -> list[list[dict[str, Any]]]:
        """Per query, the ``top_k`` classes by their best gallery image: class, path, cosine score."""
        n_gallery = self.gallery.embeddings.shape[0]
        n_classes = min(top_k, len(set(self.gallery.labels.tolist())))
        n_candidates = min(n_gallery, 32 * top_k)
        while True:  # widen the neighbour search until every query sees top_k classes (or the whole gallery)
            scores, indices = top_k_search(queries, self.gallery.embeddings, n_candidates)
            matches = [self._best_per_class(row_scores, row_indices, top_k)
                       for row_scores, row_indices in zip(scores.tolist(), indices.tolist(), strict=True)]
            if n_candidates == n_gallery or all(len(found) == n_classes for found in matches):
                return matches
            n_candidates = min(n_gallery, 4 * n_candidates)

    def _best_per_class(self, scores: list[float], indices: list[int], top_k: int) -> list[dict[str, Any]]:
        matches, seen = [], set()
        for score, index in zip(scores, indices, strict=True):
            label = int(self.gallery.labels[index])
            if label not in seen:
                seen.add(label)
                matches.append({"class": self.class_names[label], "path": self.gallery.records[index].path,
                                "score": score})
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
    min_score: float | None = None,
    json_lines: bool = False,
    grid_path: str | os.PathLike | None = None,
) -> list[dict[str, Any]]:
    """Print and return, per query image, its top-k gallery classes (best image per class).

    Each result is ``{"image", "prediction", "matches": [{"class", "path", "score"}, ...]}``; the
    prediction is the best class, or ``"unknown"`` when its score is below ``min_score`` (open-set
    recognition). An unreadable query gets ``"error"``, no matches and prediction ``None``.
    ``json_lines`` prints one JSON object per query instead of text; ``grid_path`` draws each query
    beside its matches.
    """
    if top_k < 1:
        raise InputError(f"top_k must be positive, got {top_k}")
    if min_score is not None and not -1.0 <= min_score <= 1.0:
        raise InputError(f"min_score is a cosine similarity in [-1, 1], got {min_score}")
    session = RetrievalSession(model_path, gallery_root, device, batch_size, progress=False)
    queries = session.embed([ImageRecord(str(path), -1) for path in image_paths])
    matches_of = dict(zip((record.path for record in queries.records),
                          session.top_classes(queries.embeddings, top_k) if queries.records else [], strict=True))
    results = []
    for path in map(str, image_paths):
        if path not in matches_of:
            result = {"image": path, "error": "unreadable image", "prediction": None, "matches": []}
        else:
            matches = matches_of[path]
            known = min_score is None or matches[0]["score"] >= min_score
            result = {"image": path, "prediction": matches[0]["class"] if known else UNKNOWN, "matches": matches}
        results.append(result)
        print(json.dumps(result, ensure_ascii=False) if json_lines else _as_text(result, min_score))
    if grid_path is not None:
        draw_match_grid([r for r in results if r["matches"]], grid_path, min_score)
        if not json_lines:
            print(f"wrote {grid_path}")
    return results


def _as_text(result: dict[str, Any], min_score: float | None) -> str:
    if "error" in result:
        return f"{result['image']}: {result['error']}, skipped"
    lines = [f"{result['image']}:"]
    if result["prediction"] == UNKNOWN:
        lines[0] += f" unknown (best score {result['matches'][0]['score']:.4f} < --min_score {min_score})"
    lines += [f"  {rank}. {match['class']:<24} {match['score']:.4f}  {match['path']}"
              for rank, match in enumerate(result["matches"], 1)]
    return "\n".join(lines)


def evaluate_retrieval(
    model_path: str | os.PathLike,
    gallery_root: str | os.PathLike,
    query_root: str | os.PathLike | None = None,
    device: str | None = None,
    batch_size: int = 64,
    num_workers: int = 0,
    knn_k: int = 5,
) -> dict[str, Any]:
    """Retrieval metrics, kNN accuracy (majority of ``knn_k``) and per-class precision@1 of ``query_root``
    against the gallery (leave-one-out over the gallery without it)."""
    session = RetrievalSession(model_path, gallery_root, device, batch_size, num_workers)
    gallery = session.gallery
    if query_root is None:
        queries, leave_one_out = gallery, True
    else:
        records, _ = scan_image_folder(query_root, session.class_names)
        queries, leave_one_out = session.embed(records), False
    metrics = retrieval_metrics(queries.embeddings, queries.labels, gallery.embeddings, gallery.labels, leave_one_out)
    knn = knn_classification(queries.embeddings, queries.labels, gallery.embeddings, gallery.labels, knn_k,
                             leave_one_out)
    result: dict[str, Any] = {key: metrics[key] for key in EVAL_KEYS if key in metrics}
    result["knn_accuracy"], result["knn_k"] = knn["knn_accuracy"], knn["knn_k"]
    result["per_class_precision_at_1"] = {session.class_names[label]: value
                                          for label, value in sorted(knn["per_class_precision_at_1"].items())}
    return result


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Top-k gallery classes for query images, or retrieval metrics with --eval.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--model_path", default="checkpoints_supcon/best_supcon.pth", help="checkpoint written by train.py")
    p.add_argument("--gallery_root", required=True, help="gallery images, one sub-folder per class")
    p.add_argument("--images", nargs="+", default=[], help="query images to recognise")
    p.add_argument("--top_k", type=positive_int, default=5, help="classes to list per query image")
    p.add_argument("--min_score", type=float, default=None,
                   help="answer 'unknown' when the best class scores below this cosine similarity (open set)")
    p.add_argument("--json", action="store_true", help="print one JSON object per query instead of text")
    p.add_argument("--grid", default=None, metavar="OUT.jpg",
                   help="draw each query beside its top-k gallery images (class and score) into this image")
    p.add_argument("--eval", action="store_true",
                   help="print retrieval metrics, kNN accuracy and per-class precision@1 as JSON instead "
                        "(queries: --query_root, else leave-one-out)")
    p.add_argument("--query_root", default=None, help="with --eval: query images in the gallery's class folders")
    p.add_argument("--knn_k", type=positive_int, default=5, help="with --eval: neighbours that vote for the kNN class")
    p.add_argument("--batch_size", type=positive_int, default=64, help="images per forward pass")
    p.add_argument("--num_workers", type=non_negative_int, default=0, help="DataLoader workers for --eval")
    p.add_argument("--device", default=None, help="cuda or cpu; unset: cuda when available")
    args = p.parse_args(argv)
    if not args.eval and not args.images:
        p.error("give --images to recognise, or --eval for retrieval metrics")
    if args.eval and (args.images or args.grid or args.json or args.min_score is not None):
        p.error("--eval evaluates a folder: --images, --grid, --json and --min_score apply to recognition")
    if args.min_score is not None and not -1.0 <= args.min_score <= 1.0:
        p.error(f"--min_score is a cosine similarity in [-1, 1], got {args.min_score}")
    if args.query_root and not args.eval:
        p.error("--query_root only applies with --eval")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if not Path(args.model_path).is_file():
        raise InputError(f"model checkpoint not found: {args.model_path}")
    if args.eval:
        metrics = evaluate_retrieval(args.model_path, args.gallery_root, args.query_root, args.device,
                                     args.batch_size, args.num_workers, args.knn_k)
        print(json.dumps(metrics, ensure_ascii=False))
    else:
        verify_real_world_image(args.model_path, args.gallery_root, args.images, args.top_k, args.device,
                                args.batch_size, args.min_score, args.json, args.grid)


if __name__ == "__main__":
    run(main)
