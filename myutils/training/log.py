"""Training history: TensorBoard scalars, ``history.json`` and a PNG of the curves."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from myutils.files import atomic_output


def write_json_atomic(data: object, path: str | os.PathLike) -> None:
    with atomic_output(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False), encoding="utf-8")


def plot_curves(
    history: Mapping[str, Sequence[float]],
    panels: Mapping[str, Sequence[str]],
    path: str | os.PathLike,
    x_key: str = "epoch",
    title: str | None = None,
    x_keys: Mapping[str, str] | None = None,
) -> Path:
    """One subplot per panel title, one line per history key in it (missing keys skipped).

    ``x_keys`` names another x series for some keys (values logged on some epochs only, with
    :meth:`TrainingLog.log_series`), e.g. ``{"val_map_at_r": "val_epoch"}``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(panels)
    cols = 2 if n > 1 else 1
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(6 * cols, 4 * rows), squeeze=False)
    x_values = list(history.get(x_key, []))
    for ax, (panel_title, keys) in zip(axes.flat, panels.items(), strict=False):
        for key in keys:
            values = list(history.get(key, []))
            key_xs = list(history.get((x_keys or {}).get(key, x_key), x_values))
            if values:
                xs = key_xs[-len(values) :] if len(key_xs) >= len(values) else range(1, len(values) + 1)
                ax.plot(list(xs), values, marker="o", markersize=3, label=key)
        ax.set_title(panel_title)
        ax.set_xlabel(x_key)
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    if title:
        fig.suptitle(title)
    return save_figure(fig, path)


def save_figure(fig, path: str | os.PathLike, dpi: int = 100) -> Path:
    """``fig.tight_layout()``, save to ``path`` (format from the suffix; folders created), close the figure."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


class TrainingLog:
    """Collects per-epoch scalars; mirrors them to TensorBoard and ``history.json``.

    Create it on the main process only: other ranks should not write files.
    """

    def __init__(self, log_dir: str | os.PathLike, history_path: str | os.PathLike, history: dict | None = None):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(log_dir))
        self.history_path = Path(history_path)
        self.history: dict[str, list[float]] = {key: list(values) for key, values in (history or {}).items()}

    def scalar(self, tag: str, value: float, step: int) -> None:
        """A TensorBoard-only scalar (per-iteration values)."""
        self.writer.add_scalar(tag, value, step)

    def log_epoch(self, epoch: int, values: Mapping[str, float], tag_prefix: str = "Epoch/") -> None:
        self.log_series("epoch", epoch, values, tag_prefix)

    def log_series(self, x_key: str, x: int, values: Mapping[str, float], tag_prefix: str = "Epoch/") -> None:
        """Append ``x`` to ``history[x_key]`` and each value to its key (e.g. metrics of some epochs only)."""
        self.history.setdefault(x_key, []).append(x)
        for key, value in values.items():
            self.history.setdefault(key, []).append(float(value))
            self.writer.add_scalar(f"{tag_prefix}{key}", float(value), x)
        self.writer.flush()
        write_json_atomic(self.history, self.history_path)

    def close(self) -> None:
        self.writer.close()
