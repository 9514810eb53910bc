"""A picture of recognition results: each query beside its top-k gallery matches, with class and score."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from myutils.cli import InputError
from myutils.data.image_io import read_image_rgb
from myutils.training.log import save_figure

TILE_INCHES = 1.8


def draw_match_grid(
    results: Sequence[dict[str, Any]], path: str | os.PathLike, min_score: float | None = None
) -> Path:
    """One row per query: the query (titled with the prediction), then its matches (class, score).

    ``results`` are :func:`test_model.verify_real_world_image` results (``image``, ``prediction``,
    ``matches``). A match below ``min_score`` is titled in grey, a query answered "unknown" in red.
    The format follows the suffix of ``path`` (``.jpg``, ``.png``, ...).
    """
    if not results:
        raise InputError("no readable query image to draw")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = 1 + max(len(result["matches"]) for result in results)
    fig, axes = plt.subplots(len(results), cols, figsize=(TILE_INCHES * cols, TILE_INCHES * 1.25 * len(results)),
                             squeeze=False)
    for row, result in zip(axes, results, strict=True):
        query = Path(result["image"])
        _tile(row[0], result["image"], f"{query.parent.name}/{query.name}\n→ {result['prediction']}",
              "tab:red" if result["prediction"] == "unknown" else "black")
        for ax, match in zip(row[1:], result["matches"], strict=False):
            below = min_score is not None and match["score"] < min_score
            _tile(ax, match["path"], f"{match['class']}\n{match['score']:.3f}", "grey" if below else "black")
        for ax in row[1 + len(result["matches"]):]:
            ax.axis("off")
    return save_figure(fig, path)


def _tile(ax, image_path: str, title: str, colour: str) -> None:
    image = read_image_rgb(image_path)
    ax.imshow(image if image is not None else np.zeros((8, 8, 3), dtype=np.uint8))
    ax.set_title(title, fontsize=8, color=colour)
    ax.axis("off")
