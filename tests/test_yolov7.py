"""YOLOv7 network forms, fusion, the safe loader on official-style pickles, scoring/NMS and the detector."""

import copy
import io
import json
import pickletools
import shutil
import subprocess
import sys
import textwrap
import warnings
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torchvision.ops import box_iou

from myutils.detection.detector import YOLOv7Detector, non_max_suppression
from myutils.detection.yolov7 import YOLOv7, count_parameters, num_classes_from_state_dict
from myutils.detection.yolov7_checkpoint import (
    InertObject,
    RestrictedUnpickler,
    load_yolov7_checkpoint,
    load_yolov7_state_dict,
    restricted_load,
)

REPO = Path(__file__).resolve().parents[1]
# measured on the official code (WongKinYiu/yolov7, 80 classes): state-dict entries and parameters
OFFICIAL_SIZES = {"training": (566, 37_622_682), "deploy": (560, 37_620_125), "fused": (186, 36_905_341)}


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return YOLOv7(80).eval()


@pytest.mark.parametrize("form", list(OFFICIAL_SIZES))
def test_official_size_of_each_form(form):
    network = YOLOv7(80, form=form)
    assert (len(network.state_dict()), count_parameters(network)) == OFFICIAL_SIZES[form]


def test_official_names(model):
    state = model.state_dict()
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
    fused = YOLOv7(80, form="fused").state_dict()
    assert "model.102.rbr_reparam.weight" in fused and "model.0.conv.bias" in fused
    assert not any(".bn." in key or ".ia." in key for key in fused)


def test_forward_returns_detections_and_sppcspc(model):
    x = torch.rand(1, 3, 128, 96)
    with torch.no_grad():
        detections, features = model(x)
        backbone_only = model.forward_backbone(x)
    assert detections.shape == (1, 3 * (16 * 12 + 8 * 6 + 4 * 3), 85)
    assert features.shape == (1, 512, 4, 3)
    torch.testing.assert_close(backbone_only, features)
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
    # the implicit layers act: x + a before the conv, times m after it
    conv, a, m = detect.m[1], detect.ia[1].implicit, detect.im[1].implicit
    with torch.no_grad():
        by_hand = (torch.nn.functional.conv2d(maps[1] + a, conv.weight, conv.bias) * m)[0, 2 * 85 : 2 * 85 + 2, 1, 0]
    torch.testing.assert_close(raw[1][0, 2, 1, 0, :2], by_hand)


def _perturbed(form: str, seed: int = 1) -> YOLOv7:
    """A network whose BatchNorm statistics and implicit layers are far from identity (fusion matters)."""
    torch.manual_seed(seed)
    network = YOLOv7(80, form=form)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in network.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                n = module.num_features
                module.running_mean.copy_(torch.randn(n, generator=generator) * 0.1)
                module.running_var.copy_(torch.rand(n, generator=generator) * 0.5 + 0.75)
                module.weight.copy_(torch.rand(n, generator=generator) * 0.5 + 0.75)
                module.bias.copy_(torch.randn(n, generator=generator) * 0.1)
        for name, parameter in network.named_parameters():
            if "implicit" in name:
                parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.3)
    return network.eval()


def test_fuse_keeps_the_outputs():
    """Conv+BN, RepConv (with and without its identity branch) and IDetect's implicit layers folded."""
    form = "training"
    network = _perturbed(form)
    x = torch.rand(2, 3, 64, 96)
    with torch.no_grad():
        detections, features = network(x)
        fused = copy.deepcopy(network).fuse()
        fused_detections, fused_features = fused(x)
    assert fused.form == "fused" and set(fused.state_dict()) == set(YOLOv7(80, form="fused").state_dict())
    assert count_parameters(fused) == OFFICIAL_SIZES["fused"][1]
    torch.testing.assert_close(fused_features, features, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(fused_detections[..., 4:], detections[..., 4:], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(fused_detections[..., :4], detections[..., :4], rtol=1e-5, atol=1e-3)  # pixels
    # the implicit layers were folded, not dropped: without them the probabilities differ
    if form == "training":
        plain = copy.deepcopy(network)
        for implicit in plain.detect.ia:
            implicit.implicit.data.zero_()
        with torch.no_grad():
            assert (plain(x)[0][..., 4:] - fused_detections[..., 4:]).abs().max() > 1e-3


@pytest.mark.parametrize("c_in, c_out, stride", [(16, 16, 1), (16, 24, 1), (16, 16, 2)])
def test_repconv_fuse_with_and_without_the_identity_branch(c_in, c_out, stride):
    """YOLOv7's own RepConvs change the width (no identity branch); the class supports both."""
    from myutils.detection.yolov7 import RepConv

    torch.manual_seed(0)
    block = RepConv(c_in, c_out, stride)
    assert (block.rbr_identity is not None) == (c_in == c_out and stride == 1)
    with torch.no_grad():
        for bn in (m for m in block.modules() if isinstance(m, torch.nn.BatchNorm2d)):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.5, 0.5)
    block.eval()
    x = torch.randn(2, c_in, 9, 9)
    with torch.no_grad():
        expected = block(x)
        block.fuse()
        fused = block(x)
    assert set(block.state_dict()) == {"rbr_reparam.weight", "rbr_reparam.bias"}
    torch.testing.assert_close(fused, expected, rtol=1e-5, atol=1e-5)


def _reference_nms(boxes, scores, iou_threshold):
    order = scores.argsort(descending=True).tolist()
    keep = []
    while order:
        best = order.pop(0)
        keep.append(best)
        order = [i for i in order if box_iou(boxes[best : best + 1], boxes[i : i + 1])[0, 0] <= iou_threshold]
    return keep


def _random_prediction(n=60, num_classes=2, seed=0):
    generator = torch.Generator().manual_seed(seed)
    centres = torch.rand(n, 2, generator=generator) * 100
    sizes = 10 + torch.rand(n, 2, generator=generator) * 30
    objectness = torch.rand(n, 1, generator=generator)
    class_probs = torch.rand(n, num_classes, generator=generator)
    boxes = torch.cat([centres - sizes / 2, centres + sizes / 2], dim=1)
    return torch.cat([centres, sizes, objectness, class_probs], dim=1)[None], boxes, objectness, class_probs


def test_non_max_suppression_against_a_reference():
    prediction, boxes, objectness, class_probs = _random_prediction()
    result = non_max_suppression(prediction, conf_threshold=0.2, iou_threshold=0.4)[0]
    scores, classes = (class_probs * objectness).max(dim=1)
    expected = []
    for cls in range(2):
        candidates = torch.nonzero((classes == cls) & (scores > 0.2) & (objectness[:, 0] > 0.2))[:, 0]
        kept = _reference_nms(boxes[candidates], scores[candidates], 0.4)
        expected += [(round(float(scores[candidates[k]]), 5), cls) for k in kept]
    got = sorted((round(float(s), 5), int(c)) for s, c in zip(result[:, 4], result[:, 5], strict=True))
    assert got == sorted(expected) and len(got) > 0
    assert non_max_suppression(torch.zeros(1, 5, 7))[0].shape == (0, 6)
    # agnostic: one NMS over all classes
    agnostic = non_max_suppression(prediction, conf_threshold=0.2, iou_threshold=0.4, agnostic=True)[0]
    candidates = torch.nonzero((scores > 0.2) & (objectness[:, 0] > 0.2))[:, 0]
    kept = _reference_nms(boxes[candidates], scores[candidates], 0.4)
    assert sorted(agnostic[:, 4].tolist()) == pytest.approx(sorted(float(scores[candidates[k]]) for k in kept))
    assert len(agnostic) < len(result)
    # --classes keeps only those classes, with the same rows
    only_one = non_max_suppression(prediction, conf_threshold=0.2, iou_threshold=0.4, classes=[1])[0]
    assert (only_one[:, 5] == 1).all() and len(only_one) == int((result[:, 5] == 1).sum()) > 0


def test_one_class_models_score_by_objectness_alone():
    """Official detect.py: with nc == 1 the class column is ignored (a one-class model's class
    probability sits at 0.5; multiplying would halve every score)."""
    prediction, boxes, objectness, _ = _random_prediction(n=20, num_classes=1, seed=3)
    prediction[0, :, 5] = 0.5
    result = non_max_suppression(prediction, conf_threshold=0.3, iou_threshold=1.0)[0]
    assert sorted(result[:, 4].tolist()) == pytest.approx(sorted(o for o in objectness[:, 0].tolist() if o > 0.3))
    assert (result[:, 5] == 0).all()


def test_candidate_and_detection_caps():
    """At most max_candidates (the best-scoring) enter NMS; at most max_detections leave it, best first."""
    n = 12
    centres = torch.stack([torch.arange(n) * 50.0, torch.zeros(n)], dim=1)  # disjoint boxes: NMS keeps all
    objectness = torch.linspace(0.95, 0.4, n)[:, None]
    prediction = torch.cat([centres, torch.full((n, 2), 10.0), objectness, torch.ones(n, 3)], dim=1)[None]
    everything = non_max_suppression(prediction, 0.25, 0.45, max_detections=100)[0]
    assert len(everything) == n
    capped = non_max_suppression(prediction, 0.25, 0.45, max_detections=100, max_candidates=5)[0]
    torch.testing.assert_close(capped, everything[:5])
    few = non_max_suppression(prediction, 0.25, 0.45, max_detections=3)[0]
    torch.testing.assert_close(few, everything[:3])
    assert few[:, 4].tolist() == sorted(few[:, 4].tolist(), reverse=True)


# ---- the detector on weights that plant known boxes ------------------------------------------------


def _hand_decoded(bias: torch.Tensor, anchor: int, img_size: int) -> tuple[list[tuple], float, float, float]:
    """Boxes of one planted stride-32 anchor in input pixels, decoded by hand from the stored logits."""
    row = bias.view(3, -1)[anchor].double()
    width = float((2 * row[2].sigmoid()) ** 2) * (142, 192, 459)[anchor]
    height = float((2 * row[3].sigmoid()) ** 2) * (110, 243, 401)[anchor]
    cells = [(gx + 0.5) * 32 for gx in range(img_size // 32)]
    boxes = [(cx - width / 2, cy - height / 2, cx + width / 2, cy + height / 2) for cy in cells for cx in cells]
    return boxes, float(row[4].sigmoid()), width, height


def _to_original(box, scale, pad_left, pad_top, width, height):
    x1, y1, x2, y2 = box
    return (min(max((x1 - pad_left) / scale, 0), width), min(max((y1 - pad_top) / scale, 0), height),
            min(max((x2 - pad_left) / scale, 0), width), min(max((y2 - pad_top) / scale, 0), height))


def _textured(height: int, width: int, seed: int) -> np.ndarray:
    """An RGB uint8 frame of smooth colour noise (flat frames make degenerate feature maps)."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 255, size=(6, 10, 3), dtype=np.uint8)
    return cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)


def _sorted_rows(rows: np.ndarray) -> np.ndarray:
    """Rows ``x1, y1, x2, y2, score, class`` in a fixed order (class, then y1, then x1)."""
    return rows[np.lexsort((rows[:, 0].round(1), rows[:, 1].round(1), rows[:, 5]))]


def test_planted_boxes_in_original_pixels_one_forward_per_batch(planted_weights, capsys):
    """A batch of two frames of different sizes: boxes, scores and classes equal a hand decoding of
    the planted logits mapped back through each frame's own letterbox."""
    detector = YOLOv7Detector(planted_weights.path, img_size=128, conf_threshold=0.25)
    assert capsys.readouterr().out == (f"YOLOv7 {planted_weights.path}: training form (cfg/training/yolov7.yaml, "
                                       "IDetect), 3 classes, 37,207,344 parameters, weights from 'file'\n")
    forward_calls = []
    detector.model.register_forward_hook(lambda *_: forward_calls.append(1))
    frames = [_textured(192, 320, seed=1), _textured(160, 256, seed=2)]
    results = detector(frames)
    assert len(forward_calls) == 1 and len(results) == 2
    bias = detector.model.detect.m[2].bias.detach()
    class_logit = {0: bias.view(3, -1)[0, 5], 2: bias.view(3, -1)[1, 7]}
    for frame, result in zip(frames, results, strict=True):
        height, width = frame.shape[:2]
        scale = min(128 / height, 128 / width)
        pad_left, pad_top = (128 - round(width * scale)) // 2, (128 - round(height * scale)) // 2
        expected = []
        for anchor, class_id in ((0, 0), (1, 2)):
            boxes, objectness, _, _ = _hand_decoded(bias, anchor, 128)
            score = objectness * float(class_logit[class_id].double().sigmoid())
            expected += [(*_to_original(b, scale, pad_left, pad_top, width, height), score, class_id) for b in boxes]
        got = torch.cat([result.boxes, result.scores[:, None], result.classes[:, None].float()], dim=1)
        np.testing.assert_allclose(_sorted_rows(got.double().numpy()), _sorted_rows(np.array(expected)),
                                   rtol=1e-5, atol=1e-3)
        assert result.features.shape == (1, 512, 4, 4)
    # a single frame gives the same as its place in the batch; backbone_features alone the same map
    single = detector(frames[1])
    torch.testing.assert_close(single.boxes, results[1].boxes)
    scale = float(results[1].features.abs().max())  # fp32 rounding differs between batch sizes
    torch.testing.assert_close(detector.backbone_features(frames[1]).features, results[1].features,
                               rtol=1e-3, atol=2e-4 * scale)


def test_classes_filter_and_agnostic_nms(planted_weights):
    frame = _textured(192, 320, seed=1)
    detector = YOLOv7Detector(planted_weights.path, img_size=128, log=None)
    both = detector(frame)
    assert sorted(set(both.classes.tolist())) == [0, 2] and len(both.boxes) == 32
    detector.classes = [2]
    only_two = detector(frame)
    assert set(only_two.classes.tolist()) == {2} and len(only_two.boxes) == 16
    # class 0's 16x16 box lies inside class 2's 18x18 box (IoU 0.79): agnostic NMS keeps the better one
    detector.classes, detector.agnostic = None, True
    torch.testing.assert_close(detector(frame).boxes, only_two.boxes)
    detector.agnostic, detector.max_detections = False, 5
    capped = detector(frame)
    assert len(capped.boxes) == 5 and (capped.classes == 2).all()
    with pytest.raises(ValueError, match="3 classes"):
        YOLOv7Detector(planted_weights.path, img_size=128, classes=[3], log=None)


def test_detector_with_random_weights_warns_and_maps_boxes(tmp_path):
    with pytest.warns(UserWarning, match="randomly initialised"):
        detector = YOLOv7Detector(weights=None, img_size=128, conf_threshold=0.01)
    image = np.random.default_rng(0).integers(0, 255, size=(72, 160, 3), dtype=np.uint8)
    result = detector(image)
    assert result.features.shape == (1, 512, 4, 4)
    assert result.letterbox.pad_top == (128 - 58) // 2 and result.letterbox.scale == pytest.approx(0.8)
    features, _ = detector.backbone_features(image)
    torch.testing.assert_close(features, result.features)
    assert features.abs().mean() > 1e-3, "random features keep their scale (BatchNorm calibration)"
    # the same seed gives the same random network; a plain state-dict file loads strictly without warning
    path = tmp_path / "yolov7_state.pt"
    torch.save(detector.model.state_dict(), path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        reloaded = YOLOv7Detector(weights=path, img_size=128, log=None)
    torch.testing.assert_close(reloaded.backbone_features(image)[0], features)


def test_letterbox_resizes_with_inter_linear():
    from myutils.detection.letterbox import letterbox_image

    image = np.random.default_rng(1).integers(0, 255, size=(300, 500, 3), dtype=np.uint8)
    padded, _ = letterbox_image(image, 128)  # a downscale: INTER_AREA would differ
    expected = cv2.resize(image, (128, 77), interpolation=cv2.INTER_LINEAR)
    np.testing.assert_array_equal(padded[25:102], expected)


@pytest.mark.cuda
def test_half_precision_on_cuda(planted_weights):
    frame = _textured(192, 320, seed=1)
    full = YOLOv7Detector(planted_weights.path, img_size=128, device="cuda", log=None)(frame)
    half = YOLOv7Detector(planted_weights.path, img_size=128, device="cuda", half=True, log=None)(frame)
    assert half.features.dtype == torch.float16 and len(half.boxes) == len(full.boxes) == 32
    torch.testing.assert_close(half.boxes.float(), full.boxes, atol=0.5, rtol=1e-2)
    torch.testing.assert_close(half.features.float(), full.features, atol=0.05, rtol=0.02)


def test_half_needs_cuda():
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    with pytest.raises(ValueError, match="--half"):
        YOLOv7Detector(None, half=True, device="cpu")


# ---- official-style checkpoints: pickles that name the official classes -----------------------------

STAND_IN_PACKAGE = {
    # the class names of the YOLOv7 source tree, with nothing inside: only what the pickles name
    "models/__init__.py": "",
    "models/common.py": """
        from torch import nn

        class Conv(nn.Module):
            def fuseforward(self, x):
                raise NotImplementedError  # fused official pickles name it as a bound 'forward'

        class MP(nn.Module): pass
        class Concat(nn.Module): pass
        class SPPCSPC(nn.Module): pass
        class RepConv(nn.Module): pass
        class ImplicitA(nn.Module): pass
        class ImplicitM(nn.Module): pass
    """,
    "models/yolo.py": """
        from torch import nn

        class Model(nn.Module): pass
        class Detect(nn.Module): pass

        class IDetect(nn.Module):
            def fuseforward(self, x):
                raise NotImplementedError
    """,
}

# the project's network re-dressed as the official classes, with the attributes they keep, then
# saved as the official train.py / strip_optimizer / Model.fuse() leave it
OFFICIAL_STYLE_WRITER = textwrap.dedent(
    """
    import copy, json, sys
    import numpy as np, torch
    from models import common, yolo
    from myutils.detection import yolov7 as ours

    STAND_INS = {ours.Conv: common.Conv, ours.MP: common.MP, ours.Concat: common.Concat,
                 ours.SPPCSPC: common.SPPCSPC, ours.RepConv: common.RepConv, ours.ImplicitA: common.ImplicitA,
                 ours.ImplicitM: common.ImplicitM, ours.Detect: yolo.Detect, ours.IDetect: yolo.IDetect,
                 ours.YOLOv7: yolo.Model}

    def perturbed(form, seed):
        torch.manual_seed(seed)
        net = ours.YOLOv7(80, form=form)
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for m in net.modules():
                if isinstance(m, torch.nn.BatchNorm2d):
                    m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                    m.running_var.copy_(torch.rand(m.num_features, generator=g) * 0.5 + 0.75)
                    m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            for name, p in net.named_parameters():
                if "implicit" in name:
                    p.add_(torch.randn(p.shape, generator=g) * 0.3)
        return net.eval()

    def official_layout(net, fused_forward=False, implicit=None):
        net = copy.deepcopy(net)
        if implicit is not None:  # official IDetect.fuse() keeps ia/im next to the folded convs
            net.detect.ia, net.detect.im = implicit
            net.detect.__class__ = ours.IDetect
        for index, layer in enumerate(net.model):
            layer.i, layer.f, layer.np = index, -1, sum(p.numel() for p in layer.parameters())
            layer.type = STAND_INS.get(type(layer), type(layer)).__module__ + "." + type(layer).__name__
        for m in net.modules():
            kind = type(m)
            if kind is ours.Conv and m.bn is None:
                m._modules.pop("bn", None)
                m.__dict__.pop("bn", None)
            if kind is ours.RepConv:
                m.deploy, m.groups = m.fused, 1
                if m.fused:
                    m.rbr_identity = m.rbr_1x1 = m.rbr_dense = None
            if kind in (ours.Detect, ours.IDetect):
                stride = m._buffers.pop("stride")
                m._non_persistent_buffers_set.discard("stride")
                m.stride, m.nc, m.no, m.nl, m.na = stride, m.num_classes, m.num_outputs, 3, 3
                m.grid = [torch.zeros(1)] * 3
                for attribute in ("num_classes", "num_outputs", "num_levels", "num_anchors"):
                    del m.__dict__[attribute]
            if kind in STAND_INS:
                m.__class__ = STAND_INS[kind]
            if fused_forward and kind in (ours.Conv, ours.IDetect):
                m.forward = m.fuseforward
        for attribute in ("_wiring", "_needed", "num_classes", "form"):
            del net.__dict__[attribute]
        net.yaml = {"nc": 80, "depth_multiple": 1.0, "width_multiple": 1.0}
        net.names = ["class%d" % i for i in range(80)]
        net.stride, net.save, net.traced = torch.tensor([8.0, 16.0, 32.0]), [24, 37, 51], False
        return net.half()

    def fingerprint(net):
        # a weighted sum per tensor: any misplaced or mis-copied tensor changes it
        g = torch.Generator().manual_seed(0)
        weights = torch.rand(4_800_000, generator=g, dtype=torch.float64)
        return {k: float((v.double().flatten() * weights[: v.numel()]).sum()) for k, v in net.state_dict().items()}

    def outputs(net):
        x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(5))
        with torch.no_grad():
            detections, features = net.float().eval()(x)
        return {"detections": detections[0, ::7].tolist(), "sppcspc": features.flatten()[::50].tolist()}

    out = sys.argv[1]
    nets = {"training": perturbed("training", 1), "ema": perturbed("training", 2), "deploy": perturbed("deploy", 3)}
    nets["fused"] = copy.deepcopy(nets["deploy"]).fuse()
    nets["fused_training"] = copy.deepcopy(nets["ema"]).fuse()
    files = {
        "training": {"epoch": 3, "best_fitness": np.array([0.42]), "training_results": "results",
                     "model": official_layout(nets["training"]), "ema": official_layout(nets["ema"]),
                     "updates": 10, "optimizer": None, "wandb_id": None},
        "deploy": {"model": official_layout(nets["deploy"]), "optimizer": None, "training_results": None, "epoch": -1},
        "fused": {"model": official_layout(nets["fused"], fused_forward=True), "optimizer": None, "epoch": -1},
        "fused_training": {"model": official_layout(nets["fused_training"], fused_forward=True,
                                                    implicit=copy.deepcopy((nets["ema"].detect.ia, nets["ema"].detect.im))),
                           "epoch": -1},
    }
    expected = {}
    for name, checkpoint in files.items():
        torch.save(checkpoint, f"{out}/{name}.pt")
        source = nets["ema" if name == "training" else name]
        rounded = copy.deepcopy(source).half().float()  # what the fp16 file holds
        expected[name] = {"fingerprint": fingerprint(rounded), **outputs(rounded)}
    json.dump(expected, open(f"{out}/expected.json", "w"))
    """
)

# globals named by the official code's own pickles (measured on WongKinYiu/yolov7 with torch 2.14)
OFFICIAL_GLOBALS = {
    "common": {"__builtin__.set", "collections.OrderedDict", "models.common.Concat", "models.common.Conv",
               "models.common.MP", "models.common.RepConv", "models.common.SPPCSPC", "models.yolo.Model",
               "torch.FloatStorage", "torch.HalfStorage", "torch._utils._rebuild_parameter",
               "torch._utils._rebuild_tensor_v2", "torch.nn.modules.activation.SiLU",
               "torch.nn.modules.container.ModuleList", "torch.nn.modules.container.Sequential",
               "torch.nn.modules.conv.Conv2d", "torch.nn.modules.pooling.MaxPool2d",
               "torch.nn.modules.upsampling.Upsample"},
    "training": {"models.common.ImplicitA", "models.common.ImplicitM", "models.yolo.IDetect", "torch.LongStorage",
                 "torch.nn.modules.batchnorm.BatchNorm2d", "_codecs.encode"},  # encode: the numpy bytes
    "deploy": {"models.yolo.Detect", "torch.LongStorage", "torch.nn.modules.batchnorm.BatchNorm2d"},
    "fused": {"models.yolo.Detect", "__builtin__.getattr"},
    "fused_training": {"models.common.ImplicitA", "models.common.ImplicitM", "models.yolo.IDetect",
                       "__builtin__.getattr"},
}


def pickle_globals(path: Path) -> set[str]:
    with zipfile.ZipFile(path) as archive:
        data = archive.read(next(n for n in archive.namelist() if n.endswith("data.pkl")))
    names, strings = set(), []
    for opcode, argument, _ in pickletools.genops(data):
        if opcode.name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE"):
            strings.append(argument)
        elif opcode.name == "GLOBAL":
            names.add(argument.replace(" ", "."))
        elif opcode.name == "STACK_GLOBAL":
            names.add(f"{strings[-2]}.{strings[-1]}")
    return names


@pytest.fixture(scope="module")
def official_style(tmp_path_factory):
    folder = tmp_path_factory.mktemp("official_style")
    package = folder / "source_tree"
    for name, text in STAND_IN_PACKAGE.items():
        (package / name).parent.mkdir(parents=True, exist_ok=True)
        (package / name).write_text(textwrap.dedent(text))
    env = {"PYTHONPATH": f"{package}:{REPO}", "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}
    subprocess.run([sys.executable, "-c", OFFICIAL_STYLE_WRITER, str(folder)], check=True, env=env, cwd=folder,
                   timeout=600)
    shutil.rmtree(package)  # the YOLOv7 source tree is gone before anything is loaded
    return folder, json.loads((folder / "expected.json").read_text())


@pytest.mark.parametrize("name, form, source", [("training", "training", "ema"), ("deploy", "deploy", "model"),
                                                ("fused", "fused", "model"), ("fused_training", "fused", "model")])
def test_every_official_form_loads_without_its_source_tree(official_style, name, form, source):
    folder, expected = official_style
    path = folder / f"{name}.pt"
    named = pickle_globals(path)
    numpy_globals = {g for g in named if g.startswith("numpy")}  # best_fitness of a training checkpoint
    assert named - numpy_globals == OFFICIAL_GLOBALS["common"] | OFFICIAL_GLOBALS[name]
    assert bool(numpy_globals) == (name == "training")
    assert "models" not in sys.modules and "models.yolo" not in sys.modules
    with pytest.raises(Exception):  # noqa: B017 - the standard safe path refuses these pickles
        torch.load(path, weights_only=True)
    loaded = load_yolov7_checkpoint(path)
    line = loaded.summary(path)
    assert line.startswith(f"YOLOv7 {path}: {form} form") and "80 classes" in line
    assert f"{OFFICIAL_SIZES[form][1]:,} parameters" in line and f"from '{source}'" in line
    assert loaded.form == form and loaded.num_classes == 80 and loaded.class_names[:2] == ["class0", "class1"]
    # official fuse() of a training model keeps ia/im beside the convs they were folded into: used once
    assert ("ia/im entries ignored" in line) == (name == "fused_training")
    generator = torch.Generator().manual_seed(0)
    weights = torch.rand(4_800_000, generator=generator, dtype=torch.float64)
    state = loaded.model.state_dict()
    assert len(state) == OFFICIAL_SIZES[form][0]
    for key, value in expected[name]["fingerprint"].items():
        if name == "fused_training" and (".ia." in key or ".im." in key):
            continue
        assert float((state[key].double().flatten() * weights[: state[key].numel()]).sum()) == pytest.approx(
            value, rel=1e-9, abs=1e-9), key
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        detections, features = loaded.model(x)
    np.testing.assert_allclose(detections[0, ::7].numpy(), expected[name]["detections"], rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(features.flatten()[::50].numpy(), expected[name]["sppcspc"], rtol=1e-5, atol=1e-6)


def test_plain_state_dicts_in_every_container(tmp_path):
    network = YOLOv7(3, form="fused")
    state = {k: v.half() for k, v in network.state_dict().items()}
    # a bare state dict: test_detector_with_random_weights_warns_and_maps_boxes
    for name, content in {"model": {"model": state, "epoch": 1}, "state_dict": {"state_dict": state}}.items():
        torch.save(content, tmp_path / f"{name}.pt")
        loaded = load_yolov7_checkpoint(tmp_path / f"{name}.pt")
        assert loaded.form == "fused" and loaded.num_classes == 3
        assert loaded.source == name
        torch.testing.assert_close(loaded.model.model[0].conv.bias, state["model.0.conv.bias"].float())


def test_weights_of_another_network_are_a_clear_error(tmp_path):
    state = YOLOv7(80, form="deploy").state_dict()
    del state["model.50.conv.weight"]
    state["model.106.extra"] = torch.zeros(1)
    torch.save(state, tmp_path / "broken.pt")
    with pytest.raises(ValueError, match=r"deploy form but do not match it \(missing model.50.conv.weight; "
                                         r"unexpected model.106.extra\)"):
        load_yolov7_checkpoint(tmp_path / "broken.pt")
    torch.save({"model.0.conv.weight": torch.zeros(1)}, tmp_path / "tiny.pt")
    with pytest.raises(ValueError, match="yolov7-tiny"):
        load_yolov7_checkpoint(tmp_path / "tiny.pt")


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return os.system, (f"touch {self.marker}",)


def test_refused_objects_are_named_and_never_run(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"model": _Payload(marker), "weights": torch.ones(2)}, path)
    with pytest.raises(ValueError) as error:
        restricted_load(path)
    assert str(error.value) == (f"{path}: refused untrusted object posix.system in the checkpoint "
                                "(not a YOLOv7 weights file?)")
    assert not marker.exists()
    with pytest.raises(ValueError, match="refused untrusted object posix.system"):
        YOLOv7Detector(path, log=None)
    assert not marker.exists()
    torch.save({"epoch": 3, "notes": "no model here"}, tmp_path / "plain.pt")
    with pytest.raises(ValueError, match="no YOLOv7 model"):
        load_yolov7_state_dict(tmp_path / "plain.pt")
    with pytest.raises(FileNotFoundError):
        load_yolov7_state_dict(tmp_path / "missing.pt")
    (tmp_path / "not_zip.pt").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="not a torch zip checkpoint"):
        load_yolov7_state_dict(tmp_path / "not_zip.pt")


def test_module_classes_become_inert_placeholders_without_imports():
    unpickler = RestrictedUnpickler(io.BytesIO(), lambda key: b"")
    placeholder = unpickler.find_class("torch.nn.modules.no_such_module", "Conv9d")  # never imported
    assert issubclass(placeholder, InertObject) and placeholder.qualified_name.endswith("no_such_module.Conv9d")
    assert unpickler.find_class("torch", "float16") is torch.float16


def _raw_checkpoint(path: Path, pickle_bytes: bytes) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", pickle_bytes)
        archive.writestr("archive/byteorder", "little")
    return path


def test_find_class_imports_no_torch_submodule_on_request(tmp_path):
    """A file naming torch's lazily imported submodules (torch.onnx, torch._dynamo) gets refused before
    anything is imported: torch's module __getattr__ would import them on a getattr."""
    for name in ("onnx", "_dynamo"):
        _raw_checkpoint(tmp_path / f"{name}.pt", b"\x80\x02ctorch\n" + name.encode() + b"\nq\x00.")
    script = textwrap.dedent(f"""
        import sys
        from myutils.detection.yolov7_checkpoint import restricted_load
        for name in ("onnx", "_dynamo"):
            try:
                restricted_load("{tmp_path}/" + name + ".pt")
            except ValueError as error:
                print(error)
        print(sorted(m for m in ("torch.onnx", "torch._dynamo") if m in sys.modules))
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True,
                            cwd=REPO, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    lines = result.stdout.strip().splitlines()
    assert lines[0].endswith("refused untrusted object torch.onnx in the checkpoint (not a YOLOv7 weights file?)")
    assert "refused untrusted object torch._dynamo" in lines[1]
    assert lines[2] == "[]"
