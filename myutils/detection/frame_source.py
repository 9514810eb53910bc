"""Frames from a video file, a folder of images or a MOTChallenge sequence, numbered from 1.

A MOT sequence folder (``seq/img1/000001.jpg ...``) reads its ``img1``. Images named by number
keep that number as their frame; otherwise frames are numbered in sorted order. Unreadable
images are skipped and counted (``FrameSource.skipped``).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import TypeVar

import cv2
import numpy as np

from myutils.cli import InputError
from myutils.data.image_io import is_image_file, read_image_rgb

T = TypeVar("T")


@dataclass(frozen=True)
class Frame:
    number: int  # from 1
    name: str  # image path, or "video.mp4#<number>"
    image: np.ndarray  # RGB uint8 [H, W, 3]


def _image_files(folder: Path) -> list[Path]:
    files = [p for p in folder.iterdir() if p.is_file() and is_image_file(p)]
    return sorted(files, key=lambda p: (0, int(p.stem), "") if p.stem.isdigit() else (1, 0, p.name))


def _probe_video(path: Path) -> int:
    """The frame count of a video file (0 when the container does not say); an error when it is no video."""
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")  # our message replaces FFmpeg's "moov atom not found"
    capture = cv2.VideoCapture(str(path))
    try:
        if not capture.isOpened() or not capture.read()[0]:
            raise InputError(f"cannot read {path} as a video (and it is not an image or an image folder)")
        return max(int(capture.get(cv2.CAP_PROP_FRAME_COUNT)), 0)
    finally:
        capture.release()


class FrameSource:
    """Iterate ``Frame`` objects of ``path``; ``step`` keeps every step-th frame."""

    def __init__(self, path: str | os.PathLike, step: int = 1):
        self.path = Path(path)
        if not self.path.exists():
            raise FileNotFoundError(f"frame source not found: {self.path}")
        if step < 1:
            raise InputError(f"step must be >= 1, got {step}")
        self.step = step
        self.skipped = 0
        if self.path.is_dir() and (self.path / "img1").is_dir():
            self.path = self.path / "img1"
        if self.path.is_dir():
            self.files = _image_files(self.path)
            if not self.files:
                raise InputError(f"no images in {self.path}")
        elif is_image_file(self.path):
            self.files = [self.path]
        else:
            self.files = None  # a video
            self.video_frames = _probe_video(self.path)

    def __len__(self) -> int:
        if self.files is not None:
            return len(self.files[:: self.step])
        return (self.video_frames + self.step - 1) // self.step

    def __iter__(self) -> Iterator[Frame]:
        if self.files is not None:
            for position, file in enumerate(self.files):
                if position % self.step:
                    continue
                image = read_image_rgb(file)
                if image is None:
                    self.skipped += 1
                    continue
                number = int(file.stem) if file.stem.isdigit() else position + 1
                yield Frame(number, str(file), image)
            return
        capture = cv2.VideoCapture(str(self.path))
        number = 0
        try:
            while True:
                ok, bgr = capture.read()
                if not ok:
                    break
                number += 1
                if (number - 1) % self.step == 0:
                    yield Frame(number, f"{self.path}#{number}", cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
        finally:
            capture.release()


def in_batches(items: Iterable[T], size: int) -> Iterator[list[T]]:
    """Consecutive lists of ``size`` items (the last one shorter): frames for one batched forward pass."""
    iterator = iter(items)
    while batch := list(islice(iterator, size)):
        yield batch
