"""Export a gallery for serving: embeddings (.npy), labels and paths (JSON) and a faiss index, from a checkpoint.

    python scripts/export_gallery.py --model_path checkpoints_supcon/best_supcon.pth \\
        --gallery_root data/gallery --out exported/gallery

Writes ``OUT/embeddings.npy`` (float32 [N, D], L2-normalised), ``OUT/gallery.json`` (class names,
label and path of every row, the model's config and preprocessing) and ``OUT/index.faiss`` (an exact
inner-product index; written when faiss is installed). None of them needs this repository to be
read: see "Serving without the training code" in docs/supcon.md.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from myutils.cli import InputError, non_negative_int, positive_int, run  # noqa: E402
from myutils.data.image_folder import require_data_root  # noqa: E402
from myutils.retrieval.export import write_gallery_export  # noqa: E402
from test_model import RetrievalSession  # noqa: E402


def export_gallery(model_path: str, gallery_root: str, out: str, device: str | None = None, batch_size: int = 64,
                   num_workers: int = 0, progress: bool = True) -> dict:
    """Embed the gallery (or reuse test_model.py's cache) and write the export; returns ``gallery.json``'s content."""
    require_data_root(gallery_root)
    if not Path(model_path).is_file():
        raise InputError(f"model checkpoint not found: {model_path}")
    session = RetrievalSession(model_path, gallery_root, device, batch_size, num_workers, progress)
    return write_gallery_export(out, session.gallery, gallery_root, session.class_names, session.model.config,
                                model_path)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model_path", default="checkpoints_supcon/best_supcon.pth", help="checkpoint written by train.py")
    p.add_argument("--gallery_root", required=True, help="gallery images, one sub-folder per class")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--batch_size", type=positive_int, default=64, help="images per forward pass")
    p.add_argument("--num_workers", type=non_negative_int, default=0, help="DataLoader workers")
    p.add_argument("--device", default=None, help="cuda or cpu; unset: cuda when available")
    p.add_argument("--no_progress", action="store_true", help="hide the progress bar")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    description = export_gallery(args.model_path, args.gallery_root, args.out, args.device, args.batch_size,
                                 args.num_workers, not args.no_progress)
    print(f"wrote {', '.join(description['files'])} to {args.out}: {description['num_images']} images of "
          f"{len(description['class_names'])} classes, {description['embedding_dim']}-d embeddings")
    return 0


if __name__ == "__main__":
    run(main)
