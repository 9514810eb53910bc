"""Shared pytest set-up: the repository root on sys.path, few threads, headless plotting."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def planted_weights(tmp_path_factory):
    """A YOLOv7 weights file (3 classes, fp16 state dict) whose head fires in every stride-32 cell:
    anchor 0 -> class 0, 16x16 input px, objectness 0.9, class 0.8; anchor 1 -> class 2, 18x18 px,
    objectness 0.95, class 0.9 (see myutils/synthetic/planted_yolov7.py)."""
    import types

    import torch

    from myutils.synthetic.planted_yolov7 import PlantedAnchor, planted_yolov7

    planted = [PlantedAnchor(0, 0, 16, 16, 0.9, 0.8), PlantedAnchor(1, 2, 18, 18, 0.95, 0.9)]
    path = tmp_path_factory.mktemp("planted") / "planted_yolov7.pt"
    torch.save(planted_yolov7(3, planted, seed=0).half().state_dict(), path)
    return types.SimpleNamespace(path=path, planted=planted)


def pytest_collection_modifyitems(config, items):
    """Tests marked ``cuda`` run only where a CUDA device is present (the GPU checks of the README)."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)
