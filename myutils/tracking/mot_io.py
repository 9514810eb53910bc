"""MOTChallenge text files and sequence folders: detections, tracker results, ground truth, seqinfo.ini, seqmaps.

One box per line: ``frame, id, bb_left, bb_top, bb_width, bb_height, conf, x, y, z``
(frames from 1; id = -1 for detections; x, y, z = -1 in 2-D). MOT16/17/20 ground truth uses
the same first six columns, then ``consider flag (0 = ignore), class, visibility``
(class 1 = pedestrian; see :mod:`myutils.tracking.mot_metrics` for the classes that count).
A sequence folder holds ``seqinfo.ini`` (``frameRate``, ``seqLength``, ``imWidth``, ...),
``img1/``, ``det/det.txt`` and ``gt/gt.txt``; a seqmap lists sequence names under a ``name`` header.
"""

from __future__ import annotations

import configparser
import math
import os
from pathlib import Path

import numpy as np

from myutils.cli import InputError
from myutils.files import atomic_output

MOT_COLUMNS = 10


def read_mot(path: str | os.PathLike) -> np.ndarray:
    """Read a MOT file into a float64 array ``[N, 10]`` (short rows padded with -1).

    Fields are separated by commas (or semicolons); a trailing separator is tolerated. An empty
    field, a value that is not a finite number, a row with fewer than 6 values and a frame number
    below 1 are errors (``InputError``) naming ``file:line``: a silently shifted column or a lost
    frame would corrupt every number computed from the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"MOT file not found: {path}")
    rows = []
    for line_number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        line = line.strip()
        if not line:
            continue
        fields = [value.strip() for value in line.replace(";", ",").split(",")]
        if fields[-1] == "":
            fields.pop()
        where = f"{path}:{line_number}"
        if "" in fields:
            raise InputError(f"{where}: empty field {fields.index('') + 1} in MOT row {line!r}")
        try:
            values = [float(value) for value in fields]
        except ValueError as error:
            raise InputError(f"{where}: not a number in MOT row {line!r}") from error
        if not all(math.isfinite(value) for value in values):
            raise InputError(f"{where}: non-finite value in MOT row {line!r}")
        if len(values) < 6:
            raise InputError(f"{where}: MOT rows need at least 6 values, got {len(values)}")
        if values[0] < 1 or values[0] != int(values[0]):
            raise InputError(f"{where}: frame {values[0]:g}: MOT frames are whole numbers starting at 1")
        rows.append((values + [-1.0] * MOT_COLUMNS)[:MOT_COLUMNS])
    return np.asarray(rows, dtype=np.float64).reshape(-1, MOT_COLUMNS)


def write_mot(path: str | os.PathLike, rows: np.ndarray) -> Path:
    """Write ``rows`` ``[N, >=6]`` sorted by (frame, id); frame/id as integers, boxes with 2 decimals."""
    path = Path(path)
    rows = np.asarray(rows, dtype=np.float64).reshape(-1, np.shape(rows)[-1] if np.size(rows) else MOT_COLUMNS)
    if rows.shape[1] < MOT_COLUMNS:
        rows = np.hstack([rows, -np.ones((rows.shape[0], MOT_COLUMNS - rows.shape[1]))])
    rows = rows[np.lexsort((rows[:, 1], rows[:, 0]))]
    lines = [
        f"{int(r[0])},{int(r[1])},{r[2]:.2f},{r[3]:.2f},{r[4]:.2f},{r[5]:.2f},{r[6]:.4g},{r[7]:.4g},{r[8]:.4g},{r[9]:.4g}"
        for r in rows
    ]
    with atomic_output(path) as tmp:
        tmp.write_text("\n".join(lines) + ("\n" if lines else ""), encoding="utf-8")
    return path


def rows_by_frame(rows: np.ndarray) -> dict[int, np.ndarray]:
    """Group MOT rows by frame number."""
    frames = rows[:, 0].astype(int)
    return {int(frame): rows[frames == frame] for frame in np.unique(frames)}


def read_seqinfo(path: str | os.PathLike) -> dict[str, str]:
    """The ``[Sequence]`` section of a ``seqinfo.ini`` (``path`` is the file or its sequence folder)."""
    path = Path(path)
    if path.is_dir():
        path = path / "seqinfo.ini"
    if not path.is_file():
        raise FileNotFoundError(f"seqinfo.ini not found: {path}")
    parser = configparser.ConfigParser()
    parser.optionxform = str  # keep frameRate, seqLength ... as written
    try:
        parser.read(path, encoding="utf-8")
    except configparser.Error as error:
        raise InputError(f"{path}: not a seqinfo.ini ({error.message.splitlines()[0]})") from error
    if not parser.has_section("Sequence"):
        raise InputError(f"{path}: no [Sequence] section")
    return dict(parser["Sequence"])


def seqinfo_number(info: dict[str, str], key: str, path: str | os.PathLike) -> float | None:
    """``info[key]`` as a positive finite number, ``None`` when absent; an error naming the file when invalid."""
    if key not in info:
        return None
    try:
        value = float(info[key])
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        raise InputError(f"{path}: {key}={info[key]!r} is not a positive number")
    return value


def read_seqmap(path: str | os.PathLike) -> list[str]:
    """Sequence names of a MOTChallenge seqmap (a ``name`` header line, then one name per line)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"seqmap not found: {path}")
    names = [line.split(",")[0].strip() for line in path.read_text(encoding="utf-8").splitlines()]
    names = [name for name in names if name]
    if names and names[0].lower() == "name":
        names = names[1:]
    if not names:
        raise InputError(f"{path}: the seqmap lists no sequence")
    return names
