"""The shared ONNX export: onnxruntime parity is measured, a dynamic batch works, a mismatch writes nothing."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from myutils.export import onnx as onnx_export
from myutils.export.onnx import ExportSpec, ParityError, export_checked, onnxruntime_outputs


def _spec() -> ExportSpec:
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
                                 torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten()).eval()
    return ExportSpec(module, (torch.randn(2, 3, 8, 8),), ["images"], ["embeddings"],
                      {"images": {0: "batch"}, "embeddings": {0: "batch"}},
                      check_inputs=(torch.randn(5, 3, 8, 8),), metadata={"mean": [0.5] * 3})


def test_export_matches_pytorch_on_another_batch_size(tmp_path):
    spec = _spec()
    report = export_checked(spec, tmp_path / "net")
    assert report["max_abs_diff"]["embeddings"] <= 1e-4 and report["check_batch"] == [[5, 3, 8, 8]]
    images = torch.randn(7, 3, 8, 8)
    (actual,) = onnxruntime_outputs(tmp_path / "net.onnx", {"images": images.numpy()})
    with torch.no_grad():
        np.testing.assert_allclose(actual, spec.module(images).numpy(), atol=1e-5)
    sidecar = json.loads((tmp_path / "net.json").read_text())
    assert sidecar["mean"] == [0.5] * 3 and sidecar["onnx"].endswith("net.onnx")


def test_a_mismatch_is_refused_and_writes_nothing(tmp_path, monkeypatch):
    real = onnx_export.onnxruntime_outputs
    monkeypatch.setattr(onnx_export, "onnxruntime_outputs",
                        lambda path, feeds: [out + 1e-3 for out in real(path, feeds)])
    with pytest.raises(ParityError, match="differs from PyTorch"):
        export_checked(_spec(), tmp_path / "net")
    assert list(tmp_path.iterdir()) == []
