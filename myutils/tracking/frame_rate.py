"""The frame rate of a sequence: the tracker's time-based settings (seconds) become frames through it.

Looked up in this order: an explicit value (``--fps``), the ``frameRate`` of the sequence's
``seqinfo.ini`` (next to ``img1/`` or ``det/``, as MOTChallenge lays sequences out), the video
container's rate, else 30 frames/s (MOT17's most common rate), said so.
"""

from __future__ import annotations

import os
from pathlib import Path

import cv2

from myutils.tracking.mot_io import read_seqinfo, seqinfo_number

DEFAULT_FPS = 30.0


def seqinfo_near(path: str | os.PathLike | None) -> Path | None:
    """The ``seqinfo.ini`` of the MOT sequence that ``path`` (the sequence, its ``img1/``, its
    ``det/det.txt`` or ``gt/gt.txt``) belongs to, or ``None``."""
    if path is None:
        return None
    path = Path(path)
    for folder in (path, path.parent, path.parent.parent):
        if (folder / "seqinfo.ini").is_file():
            return folder / "seqinfo.ini"
    return None


def video_fps(path: str | os.PathLike) -> float | None:
    """The frame rate a video container declares (``None`` when it declares none)."""
    capture = cv2.VideoCapture(str(path))
    try:
        fps = capture.get(cv2.CAP_PROP_FPS) if capture.isOpened() else 0.0
    finally:
        capture.release()
    return float(fps) if fps and 0 < fps < 1000 else None


def sequence_fps(
    fps: float | None = None,
    frames: str | os.PathLike | None = None,
    video: str | os.PathLike | None = None,
    detections: str | os.PathLike | None = None,
) -> tuple[float, str]:
    """``(frames per second, where it came from)`` for a sequence given as frames, video or detections."""
    if fps is not None:
        return float(fps), "--fps"
    for path in (frames, detections):
        info_file = seqinfo_near(path)
        if info_file is not None:
            rate = seqinfo_number(read_seqinfo(info_file), "frameRate", info_file)
            if rate is not None:
                return rate, str(info_file)
    if video is not None:
        rate = video_fps(video)
        if rate is not None:
            return rate, str(video)
    return DEFAULT_FPS, "default (no --fps, seqinfo.ini or video frame rate)"
