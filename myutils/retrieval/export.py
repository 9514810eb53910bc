"""Exports for serving without the training code: the gallery (embeddings, labels, paths, a faiss index)
and the embedding network (ONNX, through ``scripts/export_onnx.py embedding``).

A served recogniser needs three things: the network (``embedding.onnx``), how to prepare an image
for it (the ``preprocessing`` entry written beside both exports) and the gallery to search
(``embeddings.npy`` + ``gallery.json``, or ``index.faiss``). ``docs/supcon.md`` shows the
whole loop with numpy, onnxruntime, Pillow and faiss only.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from myutils.cli import positive_int
from myutils.export.onnx import Exporter, ExportSpec, require_file
from myutils.files import atomic_output
from myutils.retrieval.embedding import EmbeddedImages
from myutils.retrieval.gallery_cache import file_digest, relative_key
from myutils.retrieval.search import faiss_available
from myutils.training.log import write_json_atomic

GALLERY_FORMAT_VERSION = 1


def preprocessing_of(config: dict[str, Any]) -> dict[str, Any]:
    """How an RGB uint8 image becomes the network's input (timm's eval transform; ``EvalTransform``)."""
    height, width = config["img_size"]
    return {
        "input": "RGB uint8 image",
        "resize": "cover (height / crop_pct, width / crop_pct) keeping the aspect ratio (the shorter side for a "
                  "square input), with PIL and this interpolation",
        "interpolation": config.get("interpolation", "bilinear"),
        "crop_pct": config.get("crop_pct", 1.0),
        "crop": "centre",
        "size": [height, width],
        "scale": 1 / 255,
        "mean": config["mean"],
        "std": config["std"],
        "layout": "NCHW float32",
        "output": "L2-normalised embedding: cosine similarity = inner product",
    }


def write_gallery_export(
    out_dir: str | os.PathLike,
    gallery: EmbeddedImages,
    gallery_root: str | os.PathLike,
    class_names: list[str],
    model_config: dict[str, Any],
    model_path: str | os.PathLike,
) -> dict[str, Any]:
    """Write ``embeddings.npy``, ``gallery.json`` and (when faiss is installed) ``index.faiss``; returns the JSON.

    Row ``i`` of the embeddings is ``paths[i]`` (relative to the gallery root) of class
    ``class_names[labels[i]]``; the faiss index is an exact ``IndexFlatIP`` whose ids are the rows.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    embeddings = np.ascontiguousarray(gallery.embeddings.numpy().astype(np.float32))
    with atomic_output(out_dir / "embeddings.npy") as tmp, open(tmp, "wb") as handle:
        np.save(handle, embeddings)
    files = ["embeddings.npy", "gallery.json"]
    if faiss_available():
        import faiss

        index = faiss.IndexFlatIP(embeddings.shape[1])
        index.add(embeddings)
        with atomic_output(out_dir / "index.faiss") as tmp:
            faiss.write_index(index, str(tmp))
        files.append("index.faiss")
    description = {
        "format_version": GALLERY_FORMAT_VERSION,
        "files": files,
        "num_images": int(embeddings.shape[0]),
        "embedding_dim": int(embeddings.shape[1]),
        "metric": "inner product of L2-normalised embeddings (cosine similarity)",
        "class_names": list(class_names),
        "labels": gallery.labels.tolist(),
        "paths": [relative_key(record.path, gallery_root) for record in gallery.records],
        "gallery_root": str(Path(gallery_root).resolve()),
        "unreadable_paths": [relative_key(path, gallery_root) for path in gallery.skipped_paths],
        "model": {"path": str(Path(model_path).resolve()), "sha256": file_digest(model_path), "config": model_config},
        "preprocessing": preprocessing_of(model_config),
    }
    write_json_atomic(description, out_dir / "gallery.json")
    return description


def _embedding_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="a best_supcon.pth / last.pth written by train.py")
    parser.add_argument("--batch", type=positive_int, default=2, help="batch size of the example input (any works)")


def _build_embedding_spec(args: argparse.Namespace) -> ExportSpec:
    from model import EmbeddingModel  # the flat script module, imported when an export is asked for

    checkpoint_path = require_file(args.checkpoint, "--checkpoint")
    model, checkpoint = EmbeddingModel.from_checkpoint(checkpoint_path)
    height, width = model.config["img_size"]
    generator = torch.Generator().manual_seed(0)
    example = torch.randn(args.batch, 3, height, width, generator=generator)
    check = torch.randn(args.batch + 3, 3, height, width, generator=generator)  # another batch size
    return ExportSpec(
        module=model.eval(),
        example_inputs=(example,),
        input_names=["images"],
        output_names=["embeddings"],
        dynamic_axes={"images": {0: "batch"}, "embeddings": {0: "batch"}},
        check_inputs=(check,),
        metadata={"preprocessing": preprocessing_of(model.config), "model_config": model.config,
                  "class_names": checkpoint.get("class_names", []), "checkpoint": str(checkpoint_path)},
    )


EMBEDDING_EXPORTER = Exporter(
    help="SupCon EmbeddingModel (train.py checkpoint): images [N, 3, H, W] -> L2-normalised embeddings [N, D]",
    add_arguments=_embedding_arguments,
    build=_build_embedding_spec,
)
