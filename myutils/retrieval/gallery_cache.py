"""Gallery embeddings cached next to the model file, recomputed when the model or the gallery changes.

The cache is valid while the checkpoint's content hash and the gallery's file list (path relative
to the gallery root, size, modification time of every image) are those it was computed with. Every
path in it is relative to the gallery root, so the same gallery reached through another relative
path, or from another working directory, reuses it. A cache that cannot be read or does not match
the gallery is rebuilt, never fatal.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

from myutils.data.image_folder import ImageRecord
from myutils.retrieval.embedding import EmbeddedImages
from myutils.training.checkpoint import load_checkpoint, save_checkpoint

CACHE_VERSION = 2  # 1 stored the paths as given on the command line


def file_digest(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def relative_key(path: str | os.PathLike, root: str | os.PathLike) -> str:
    """``path`` relative to the gallery ``root``, with ``/`` separators: the same whatever the cwd."""
    return Path(os.path.relpath(os.path.abspath(path), os.path.abspath(root))).as_posix()


def records_signature(root: str | os.PathLike, records: list[ImageRecord], class_names: list[str]) -> str:
    """A hash of the gallery's classes and (relative path, size, mtime) of every image."""
    entries = []
    for record in records:
        stat = os.stat(record.path)
        entries.append([relative_key(record.path, root), record.label, stat.st_size, stat.st_mtime_ns])
    return hashlib.sha256(json.dumps([class_names, entries]).encode("utf-8")).hexdigest()


def cache_path_for(model_path: str | os.PathLike, gallery_root: str | os.PathLike) -> Path:
    """``<model stem>.gallery-<hash of the gallery's absolute path>.pt`` beside the model."""
    model_path = Path(model_path)
    key = hashlib.sha256(str(Path(gallery_root).resolve()).encode("utf-8")).hexdigest()[:12]
    return model_path.with_name(f"{model_path.stem}.gallery-{key}.pt")


def _from_cache(path: Path, model_digest: str, signature: str, by_key: dict[str, ImageRecord]) -> EmbeddedImages | None:
    """The cached gallery, or ``None`` when the file is missing, unreadable, stale or inconsistent."""
    try:
        cached = load_checkpoint(path)
        if (cached.get("version"), cached.get("model_digest"), cached.get("gallery_signature")) != (
            CACHE_VERSION, model_digest, signature):
            return None
        kept = [by_key[key] for key in cached["paths"]]
        skipped = [by_key[key].path for key in cached["skipped_paths"]]
        embeddings, labels = cached["embeddings"], cached["labels"]
        if not (isinstance(embeddings, torch.Tensor) and embeddings.shape[0] == len(kept) == labels.shape[0]):
            return None
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    return EmbeddedImages(embeddings, labels, kept, skipped)


def load_or_embed_gallery(
    model_path: str | os.PathLike,
    gallery_root: str | os.PathLike,
    records: list[ImageRecord],
    class_names: list[str],
    embed: Callable[[list[ImageRecord]], EmbeddedImages],
) -> tuple[EmbeddedImages, bool]:
    """The gallery's embeddings from the cache when still valid, else from ``embed`` (then cached).

    Returns ``(embedded gallery, came_from_cache)``; the records keep the paths as given.
    """
    path = cache_path_for(model_path, gallery_root)
    model_digest = file_digest(model_path)
    signature = records_signature(gallery_root, records, class_names)
    by_key = {relative_key(record.path, gallery_root): record for record in records}
    cached = _from_cache(path, model_digest, signature, by_key) if path.is_file() else None
    if cached is not None:
        return cached, True
    gallery = embed(records)
    try:
        save_checkpoint(_cache_entry(gallery, gallery_root, class_names, model_digest, signature), path)
    except OSError as error:  # a read-only model folder: work without the cache
        warnings.warn(f"could not write the gallery cache {path}: {error}", stacklevel=2)
    return gallery, False


def _cache_entry(gallery: EmbeddedImages, gallery_root, class_names, model_digest: str, signature: str) -> dict:
    return {
        "version": CACHE_VERSION,
        "model_digest": model_digest,
        "gallery_signature": signature,
        "embeddings": gallery.embeddings,
        "labels": gallery.labels,
        "paths": [relative_key(record.path, gallery_root) for record in gallery.records],
        "skipped_paths": [relative_key(p, gallery_root) for p in gallery.skipped_paths],
        "class_names": class_names,
    }
