"""Checkpoints written atomically and read back without unpickling code.

Everything we save is tensors and plain Python data, so every file loads with
``torch.load(path, weights_only=True)``.
"""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from myutils.cli import InputError
from myutils.files import atomic_output


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write ``state`` to ``path`` atomically (see :func:`atomic_output`), flushed to disk before the rename."""
    with atomic_output(path) as tmp, open(tmp, "wb") as handle:
        torch.save(state, handle)
        handle.flush()
        os.fsync(handle.fileno())
    return Path(path)


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint` (``weights_only=True``, never executes code)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if not zipfile.is_zipfile(path):
        raise InputError(f"{path} is not a checkpoint file (not a torch zip archive; truncated, or another format?)")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        raise InputError(
            f"{path} holds objects that weights_only=True refuses (not written by this project?): "
            f"{_first_line(error)}"
        ) from error
    except Exception as error:  # torch raises RuntimeError and others for damaged archives
        raise InputError(f"could not read checkpoint {path} (truncated or damaged?): {_first_line(error)}") from error


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


def resolve_run_settings(
    requested: dict[str, Any], defaults: dict[str, Any], saved: dict[str, Any] | None, source: str = "the checkpoint"
) -> dict[str, Any]:
    """The settings that define a run: ``requested`` (``None`` = not given) over the defaults, or over ``saved``.

    A new run (``saved is None``) takes each requested value, else the default. A resumed run takes
    the values ``saved`` in its checkpoint; asking for another value is an :class:`InputError` that
    names both values, because silently training on with other settings is not the run that was
    resumed.
    """
    if saved is None:
        return {key: defaults[key] if requested.get(key) is None else requested[key] for key in defaults}
    missing = sorted(set(defaults) - set(saved))
    if missing:
        raise InputError(f"{source} does not record the settings {', '.join(missing)} (written by an older version?): "
                         "start a new run")
    conflicts = [f"{key}={requested[key]!r} (the checkpoint has {saved[key]!r})"
                 for key in defaults if requested.get(key) is not None and requested[key] != saved[key]]
    if conflicts:
        raise InputError(f"resuming {source}: {'; '.join(conflicts)}. These settings define the run and come from "
                         "the checkpoint: leave them out, or start a new run")
    return {key: saved[key] for key in defaults}
