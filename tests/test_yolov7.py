"""YOLOv7 network, detector wrapper and the safe checkpoint loader (small inputs: CPU is slow)."""

import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.ops import box_iou

from myutils.detection.detector import YOLOv7Detector, non_max_suppression
from myutils.detection.yolov7 import YOLOv7, count_parameters, num_classes_from_state_dict
from myutils.detection.yolov7_checkpoint import InertObject, load_yolov7_state_dict, restricted_load


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return YOLOv7(80).eval()


def test_official_size_and_names(model):
    state = model.state_dict()
    assert len(state) == 566
    assert count_parameters(model) == 37_622_682
    expected_shapes = {
        "model.0.conv.weight": (32, 3, 3, 3),
        "model.50.conv.weight": (1024, 1024, 1, 1),
        "model.51.cv5.conv.weight": (512, 2048, 1, 1),
        "model.51.cv7.bn.running_var": (512,),
        "model.104.rbr_dense.0.weight": (1024, 512, 3, 3),
        "model.104.rbr_1x1.1.weight": (1024,),
        "model.105.m.0.weight": (255, 256, 1, 1),
        "model.105.ia.2.implicit": (1, 1024, 1, 1),
        "model.105.im.1.implicit": (1, 255, 1, 1),
        "model.105.anchors": (3, 3, 2),
        "model.105.anchor_grid": (3, 1, 3, 1, 1, 2),
    }
    for key, shape in expected_shapes.items():
        assert tuple(state[key].shape) == shape, key
    torch.testing.assert_close(state["model.105.anchors"][2, 2], torch.tensor([459 / 32, 401 / 32]))
    assert num_classes_from_state_dict(state) == 80


def test_forward_returns_detections_and_sppcspc(model):
    x = torch.rand(1, 3, 128, 96)
    with torch.no_grad():
        detections, features = model(x)
        backbone_only = model.forward_backbone(x)
    assert detections.shape == (1, 3 * (16 * 12 + 8 * 6 + 4 * 3), 85)
    assert features.shape == (1, 512, 4, 3)
    torch.testing.assert_close(backbone_only, features)
    # decoded boxes: centres inside the padded range, positive sizes, probabilities in [0, 1]
    assert (detections[..., 2:4] > 0).all() and ((detections[..., 4:] >= 0) & (detections[..., 4:] <= 1)).all()


def test_idetect_decoding_matches_the_formula(model):
    detect = model.detect
    maps = [torch.randn(1, c, s, s) for c, s in ((256, 4), (512, 2), (1024, 1))]
    with torch.no_grad():
        decoded = detect(maps)
        detect.train()
        raw = detect(maps)
        detect.eval()
    y = raw[1].sigmoid()[0, 2, 1, 0]  # level 1 (stride 16), anchor 2, cell row 1, column 0
    expected_xy = (y[:2] * 2 - 0.5 + torch.tensor([0.0, 1.0])) * 16
    expected_wh = (y[2:4] * 2) ** 2 * torch.tensor([72.0, 146.0])
    index = 3 * 16 + 2 * 4 + 1 * 2 + 0
    torch.testing.assert_close(decoded[0, index, :4], torch.cat([expected_xy, expected_wh]))


def _reference_nms(boxes, scores, iou_threshold):
    order = scores.argsort(descending=True).tolist()
    keep = []
    while order:
        best = order.pop(0)
        keep.append(best)
        order = [i for i in order if box_iou(boxes[best : best + 1], boxes[i : i + 1])[0, 0] <= iou_threshold]
    return keep


def test_non_max_suppression_against_a_reference():
    generator = torch.Generator().manual_seed(0)
    n, num_classes = 60, 2
    centres = torch.rand(n, 2, generator=generator) * 100
    sizes = 10 + torch.rand(n, 2, generator=generator) * 30
    objectness = torch.rand(n, 1, generator=generator)
    class_probs = torch.rand(n, num_classes, generator=generator)
    prediction = torch.cat([centres, sizes, objectness, class_probs], dim=1)[None]
    result = non_max_suppression(prediction, conf_threshold=0.2, iou_threshold=0.4)[0]
    scores, classes = (class_probs * objectness).max(dim=1)
    boxes = torch.cat([centres - sizes / 2, centres + sizes / 2], dim=1)
    expected = []
    for cls in range(num_classes):
        candidates = torch.nonzero((classes == cls) & (scores > 0.2) & (objectness[:, 0] > 0.2))[:, 0]
        kept = _reference_nms(boxes[candidates], scores[candidates], 0.4)
        expected += [(round(float(scores[candidates[k]]), 5), cls) for k in kept]
    got = sorted((round(float(s), 5), int(c)) for s, c in zip(result[:, 4], result[:, 5], strict=True))
    assert got == sorted(expected) and len(got) > 0
    assert non_max_suppression(torch.zeros(1, 5, 7))[0].shape == (0, 6)


def test_detector_with_random_weights_warns_and_maps_boxes(tmp_path):
    with pytest.warns(UserWarning, match="randomly initialised"):
        detector = YOLOv7Detector(weights=None, img_size=128, conf_threshold=0.01)
    image = np.random.default_rng(0).integers(0, 255, size=(72, 160, 3), dtype=np.uint8)
    result = detector(image)
    assert result.features.shape == (1, 512, 4, 4)
    assert result.letterbox.pad_top == (128 - 58) // 2 and result.letterbox.scale == pytest.approx(0.8)
    assert len(result.boxes) > 0 and result.boxes.shape[1] == 4
    assert (result.boxes[:, [0, 2]] <= 160).all() and (result.boxes[:, [1, 3]] <= 72).all() and (result.boxes >= 0).all()
    assert result.scores.shape == result.classes.shape == (len(result.boxes),)
    features, _ = detector.backbone_features(image)
    torch.testing.assert_close(features, result.features)
    assert features.abs().mean() > 1e-3, "random features keep their scale (BatchNorm calibration)"
    # the same seed gives the same random network; a plain state-dict file loads strictly without warning
    path = tmp_path / "yolov7_state.pt"
    torch.save(detector.model.state_dict(), path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        reloaded = YOLOv7Detector(weights=path, img_size=128)
    torch.testing.assert_close(reloaded.backbone_features(image)[0], features)


STAND_IN_CHECKPOINT = textwrap.dedent(
    """
    import sys, types, torch
    from myutils.detection import yolov7 as net

    # stand-ins for the YOLOv7 source tree: same class names under models.common / models.yolo
    packages = {name: types.ModuleType(name) for name in ("models", "models.common", "models.yolo")}
    sys.modules.update(packages)
    stand_ins = {}
    for cls, module in [(net.Conv, "models.common"), (net.MP, "models.common"), (net.Concat, "models.common"),
                        (net.SPPCSPC, "models.common"), (net.RepConv, "models.common"),
                        (net.ImplicitA, "models.common"), (net.ImplicitM, "models.common"),
                        (net.IDetect, "models.yolo"), (net.YOLOv7, "models.yolo")]:
        name = "Model" if cls is net.YOLOv7 else cls.__name__
        stand_in = type(name, (cls,), {"__module__": module, "__qualname__": name})
        setattr(packages[module], name, stand_in)
        stand_ins[cls] = stand_in
    torch.manual_seed(1)
    model = net.YOLOv7(80)
    for module in model.modules():
        module.__class__ = stand_ins.get(type(module), type(module))
    model.names = ["class%d" % i for i in range(80)]
    model.half()
    torch.save({"model": model, "optimizer": None, "training_results": None, "epoch": -1}, sys.argv[1])
    torch.save({k: v.float() for k, v in model.state_dict().items()}, sys.argv[2])
    """
)


def test_safe_loader_reads_official_format_without_its_source_tree(tmp_path):
    official, expected = tmp_path / "yolov7.pt", tmp_path / "expected_state.pt"
    subprocess.run([sys.executable, "-c", STAND_IN_CHECKPOINT, str(official), str(expected)], check=True,
                   cwd=Path(__file__).parents[1])
    assert "models.yolo" not in sys.modules and "models" not in sys.modules
    with pytest.raises(Exception):  # noqa: B017 - the standard safe path refuses these pickles
        torch.load(official, weights_only=True)
    state = load_yolov7_state_dict(official)
    reference = torch.load(expected, weights_only=True)
    assert len(state) == 566 and set(state) == set(reference)
    assert state["model.0.conv.weight"].dtype == torch.float16
    for key, value in reference.items():
        torch.testing.assert_close(state[key].float(), value, msg=key)
    model = YOLOv7(80)
    model.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return os.system, (f"touch {self.marker}",)


def test_safe_loader_never_executes_code_from_the_file(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"model": _Payload(marker), "weights": torch.ones(2)}, path)
    loaded = restricted_load(path)
    assert not marker.exists()
    assert isinstance(loaded["model"], InertObject) and loaded["model"].args == (f"touch {marker}",)
    torch.testing.assert_close(loaded["weights"], torch.ones(2))
    with pytest.raises(ValueError, match="no YOLOv7 model"):
        load_yolov7_state_dict(_write_plain(tmp_path))
    with pytest.raises(FileNotFoundError):
        load_yolov7_state_dict(tmp_path / "missing.pt")
    (tmp_path / "not_zip.pt").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="not a torch zip checkpoint"):
        load_yolov7_state_dict(tmp_path / "not_zip.pt")


def _write_plain(tmp_path):
    path = tmp_path / "plain.pt"
    torch.save({"epoch": 3, "notes": "no model here"}, path)
    return path
