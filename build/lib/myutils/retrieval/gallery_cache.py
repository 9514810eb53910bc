"""Gallery embeddings cached next to the model file, recomputed when the model or the gallery changes.

The cache is valid while the checkpoint's content hash and the gallery's file list (relative
path, size, modification time of every image) are those it was computed with.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path

from myutils.data.image_folder import ImageRecord
from myutils.retrieval.embedding import EmbeddedImages
from myutils.training.checkpoint import load_checkpoint, save_checkpoint


def file_digest(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def records_signature(root: str | os.PathLike, records: list[ImageRecord], class_names: list[str]) -> str:
    """A hash of the gallery's classes and (relative path, size, mtime) of every image."""
    entries = []
    for record in records:
        stat = os.stat(record.path)
        entries.append([os.path.relpath(record.path, root), record.label, stat.st_size, stat.st_mtime_ns])
    return hashlib.sha256(json.dumps([class_names, entries]).encode("utf-8")).hexdigest()


def cache_path_for(model_path: str | os.PathLike, gallery_root: str | os.PathLike) -> Path:
    """``<model stem>.gallery-<hash of the gallery's absolute path>.pt`` beside the model."""
    model_path = Path(model_path)
    key = hashlib.sha256(str(Path(gallery_root).resolve()).encode("utf-8")).hexdigest()[:12]
    return model_path.with_name(f"{model_path.stem}.gallery-{key}.pt")


def load_or_embed_gallery(
    model_path: str | os.PathLike,
    gallery_root: str | os.PathLike,
    records: list[ImageRecord],
    class_names: list[str],
    embed: Callable[[list[ImageRecord]], EmbeddedImages],
) -> tuple[EmbeddedImages, bool]:
    """The gallery's embeddings from the cache when still valid, else from ``embed`` (then cached).

    Returns ``(embedded gallery, came_from_cache)``.
    """
    path = cache_path_for(model_path, gallery_root)
    model_digest = file_digest(model_path)
    signature = records_signature(gallery_root, records, class_names)
    if path.is_file():
        try:
            cached = load_checkpoint(path)
        except ValueError:
            cached = None  # a damaged cache is rebuilt, never fatal
        if cached and cached.get("model_digest") == model_digest and cached.get("gallery_signature") == signature:
            by_path = {record.path: record for record in records}
            kept = [by_path[p] for p in cached["paths"]]
            return EmbeddedImages(cached["embeddings"], cached["labels"], kept, list(cached["skipped_paths"])), True
    gallery = embed(records)
    save_checkpoint(
        {
            "model_digest": model_digest,
            "gallery_signature": signature,
            "embeddings": gallery.embeddings,
            "labels": gallery.labels,
            "paths": [record.path for record in gallery.records],
            "skipped_paths": gallery.skipped_paths,
            "class_names": class_names,
        },
        path,
    )
    return gallery, False

