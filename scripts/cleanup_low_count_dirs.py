"""Find (and with --execute, delete) class folders that hold fewer than --min-images images.

A dry run unless --execute is given. Only direct sub-folders of the data root are candidates;
symbolic links are never followed (a linked class folder is reported and left alone, linked
files are not counted), and nothing outside the data root is ever deleted.

    python scripts/cleanup_low_count_dirs.py --data-root data/train --min-images 70
    python scripts/cleanup_low_count_dirs.py --data-root data/train --min-images 70 --execute
    ASCENSION_DATA_ROOT=data/train python scripts/cleanup_low_count_dirs.py --execute
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from myutils.cli import InputError, positive_int, run  # noqa: E402
from myutils.data.image_folder import require_data_root  # noqa: E402
from myutils.data.image_io import is_image_file  # noqa: E402

DATA_ROOT_ENV = "ASCENSION_DATA_ROOT"


@dataclass(frozen=True)
class ClassFolder:
    path: Path
    image_count: int
    is_symlink: bool = False


def count_images(folder: Path) -> int:
    """Regular image files below ``folder`` (recursive, symbolic links neither followed nor counted)."""
    count = 0
    for dirpath, _, filenames in os.walk(folder, followlinks=False):
        count += sum(
            1 for name in filenames if is_image_file(name) and not os.path.islink(os.path.join(dirpath, name))
        )
    return count


def scan_class_folders(data_root: str | os.PathLike) -> list[ClassFolder]:
    """Every direct sub-folder of ``data_root`` with its image count, sorted by name."""
    root = require_data_root(data_root)
    folders = []
    for entry in sorted(root.iterdir()):
        if entry.is_symlink():
            if entry.is_dir():
                folders.append(ClassFolder(entry, 0, is_symlink=True))
        elif entry.is_dir():
            folders.append(ClassFolder(entry, count_images(entry)))
    return folders


def cleanup_low_count_dirs(data_root: str | os.PathLike, min_images: int = 70, execute: bool = False) -> list[ClassFolder]:
    """The (non-symlink) class folders with fewer than ``min_images`` images; deleted only when ``execute``."""
    if min_images < 1:
        raise InputError(f"--min-images must be at least 1, got {min_images}")
    root = Path(data_root).resolve()
    low = [f for f in scan_class_folders(root) if not f.is_symlink and f.image_count < min_images]
    if execute:
        for folder in low:
            target = folder.path.resolve()
            if target.parent != root:  # paranoia: never leave the data root
                raise InputError(f"refusing to delete {target}: not a direct sub-folder of {root}")
            shutil.rmtree(target)
    return low


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="List class folders with fewer than --min-images images; delete them with --execute.",
    )
    parser.add_argument("--data-root", default=os.environ.get(DATA_ROOT_ENV),
                        help=f"folder whose sub-folders are classes (default: the {DATA_ROOT_ENV} environment variable)")
    parser.add_argument("--min-images", type=positive_int, default=70, help="folders with fewer images than this are removed (default: 70)")
    parser.add_argument("--execute", action="store_true", help="really delete; without it this is a dry run")
    args = parser.parse_args(argv)
    if not args.data_root:
        parser.error(f"no data root: pass --data-root PATH or set {DATA_ROOT_ENV}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    folders = scan_class_folders(args.data_root)
    low = cleanup_low_count_dirs(args.data_root, args.min_images, args.execute)
    for folder in folders:
        if folder.is_symlink:
            print(f"skipped (symbolic link, not followed): {folder.path.name}")
    verb = "deleted" if args.execute else "would delete"
    for folder in low:
        print(f"{verb}: {folder.path.name} ({folder.image_count} images)")
    kept = sum(1 for f in folders if not f.is_symlink) - len(low)
    print(f"{len(low)} of {len(folders)} class folders below {args.min_images} images; {kept} kept"
          + ("" if args.execute else " (dry run: add --execute to delete)"))
    return 0


if __name__ == "__main__":
    run(main)
