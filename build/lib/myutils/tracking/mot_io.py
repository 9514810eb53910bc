"""MOTChallenge text files: detections, tracker results and ground truth.

One box per line: ``frame, id, bb_left, bb_top, bb_width, bb_height, conf, x, y, z``
(frames from 1; id = -1 for detections; x, y, z = -1 in 2-D). Ground truth uses the
same columns, where column 7 is the "counts" flag and column 9 (if present) the visibility.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from myutils.cli import InputError

MOT_COLUMNS = 10


def read_mot(path: str | os.PathLike) -> np.ndarray:
    """Read a MOT file into a float64 array ``[N, 10]`` (short rows padded with -1).

    Raises ``ValueError`` naming the file and line for rows with fewer than 6 numbers.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"MOT file not found: {path}")
    rows = []
    for line_number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        line = line.strip()
        if not line:
            continue
        try:
            values = [float(value) for value in line.replace(";", ",").split(",") if value.strip() != ""]
        except ValueError as error:
            raise InputError(f"{path}:{line_number}: not a number in MOT row {line!r}") from error
        if len(values) < 6:
            raise InputError(f"{path}:{line_number}: MOT rows need at least 6 values, got {len(values)}")
        rows.append((values + [-1.0] * MOT_COLUMNS)[:MOT_COLUMNS])
    return np.asarray(rows, dtype=np.float64).reshape(-1, MOT_COLUMNS)


def write_mot(path: str | os.PathLike, rows: np.ndarray) -> Path:
    """Write ``rows`` ``[N, >=6]`` sorted by (frame, id); frame/id as integers, boxes with 2 decimals."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = np.asarray(rows, dtype=np.float64).reshape(-1, np.shape(rows)[-1] if np.size(rows) else MOT_COLUMNS)
    if rows.shape[1] < MOT_COLUMNS:
        rows = np.hstack([rows, -np.ones((rows.shape[0], MOT_COLUMNS - rows.shape[1]))])
    rows = rows[np.lexsort((rows[:, 1], rows[:, 0]))]
    lines = [
        f"{int(r[0])},{int(r[1])},{r[2]:.2f},{r[3]:.2f},{r[4]:.2f},{r[5]:.2f},{r[6]:.4g},{r[7]:.4g},{r[8]:.4g},{r[9]:.4g}"
        for r in rows
    ]
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("\n".join(lines) + ("\n" if lines else ""), encoding="utf-8")
    os.replace(tmp, path)
    return path


def rows_by_frame(rows: np.ndarray) -> dict[int, np.ndarray]:
    """Group MOT rows by frame number."""
    frames = rows[:, 0].astype(int)
    return {int(frame): rows[frames == frame] for frame in np.unique(frames)}
