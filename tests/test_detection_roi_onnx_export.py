"""ONNX exports of the ROI encoder and of the YOLOv7 backbone: onnxruntime against PyTorch (fp32)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from myutils.detection.detector import smooth_random_images
from myutils.detection.yolov7 import YOLOv7
from myutils.detection.yolov7_checkpoint import load_yolov7_checkpoint
from myutils.export.onnx import onnxruntime_outputs
from myutils.roi.encoder import ROIEncoder, encoder_checkpoint_state
from myutils.training.checkpoint import save_checkpoint
from scripts.export_onnx import EXPORTERS, export_onnx


def test_both_networks_are_registered():
    assert {"roi_encoder", "yolov7_backbone"} <= set(EXPORTERS)


def test_roi_encoder_export_with_a_dynamic_number_of_rois(tmp_path):
    torch.manual_seed(0)
    encoder = ROIEncoder()
    with torch.no_grad():  # trained-looking BatchNorm statistics, not the identity
        for module in encoder.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
    checkpoint = save_checkpoint(encoder_checkpoint_state(encoder), tmp_path / "encoder.pth")
    report = export_onnx("roi_encoder", tmp_path / "roi_encoder", checkpoint=checkpoint)
    assert report["max_abs_diff"]["embeddings"] <= 1e-4 and report["check_batch"] == [[7, 512, 10, 10]]
    features = torch.randn(13, 512, 10, 10, generator=torch.Generator().manual_seed(3))
    (onnx_embeddings,) = onnxruntime_outputs(tmp_path / "roi_encoder.onnx", {"roi_features": features.numpy()})
    with torch.no_grad():
        expected = encoder.eval()(features).numpy()
    np.testing.assert_allclose(onnx_embeddings, expected, atol=1e-4)
    np.testing.assert_allclose(np.linalg.norm(onnx_embeddings, axis=1), 1.0, atol=1e-5)
    sidecar = json.loads((tmp_path / "roi_encoder.json").read_text())
    assert sidecar["dynamic_axes"]["roi_features"] == {"0": "rois"} and "roi_align" in sidecar["input"]


def test_yolov7_backbone_export_fused_against_the_unfused_network(tmp_path):
    """Weights in the deploy form; the export merges Conv+BN and RepConv; onnxruntime on a batch of 3
    must give the SPPCSPC map of the network as loaded (unfused, PyTorch)."""
    torch.manual_seed(0)
    network = YOLOv7(80, form="deploy")
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():  # BatchNorm far from identity, so fusing is not a no-op
        for module in network.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                n = module.num_features
                module.running_mean.copy_(torch.randn(n, generator=generator) * 0.1)
                module.running_var.copy_(torch.rand(n, generator=generator) * 0.5 + 0.75)
                module.bias.copy_(torch.randn(n, generator=generator) * 0.1)
    weights = tmp_path / "yolov7.pt"
    torch.save({k: v.half() for k, v in network.state_dict().items()}, weights)
    report = export_onnx("yolov7_backbone", tmp_path / "backbone", weights=weights, img_size=64)
    assert report["form"] == "fused" and report["max_abs_diff"]["sppcspc"] <= 1e-4
    assert report["inputs"] == {"images": [1, 3, 64, 64]} and report["check_batch"] == [[2, 3, 64, 64]]
    images = smooth_random_images(3, 64, torch.Generator().manual_seed(7))
    (onnx_map,) = onnxruntime_outputs(tmp_path / "backbone.onnx", {"images": images.numpy()})
    with torch.no_grad():
        expected = load_yolov7_checkpoint(weights).model.forward_backbone(images).numpy()
    assert onnx_map.shape == (3, 512, 2, 2) and np.abs(expected).max() > 0.05
    np.testing.assert_allclose(onnx_map, expected, atol=1e-4)
    assert "INTER_LINEAR" in report["preprocessing"]["letterbox"]
    with pytest.raises(ValueError, match="multiple of 32"):
        export_onnx("yolov7_backbone", tmp_path / "bad", weights=weights, img_size=48)
