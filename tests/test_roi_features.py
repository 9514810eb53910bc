import numpy as np
import pytest
import torch

from myutils.detection.letterbox import image_to_tensor, letterbox_image
from myutils.roi.features import roi_align_features


def test_letterbox_geometry_and_round_trip():
    image = np.zeros((384, 640, 3), np.uint8)
    padded, box = letterbox_image(image, 320)
    assert padded.shape == (320, 320, 3)
    assert (box.scale, box.pad_left, box.pad_top) == (0.5, 0, 64)
    assert (padded[:64] == 114).all() and (padded[64:256] == 0).all() and (padded[256:] == 114).all()
    boxes = torch.tensor([[10.0, 20.0, 110.0, 220.0], [600.0, 0.0, 640.0, 384.0]])
    mapped = box.to_input(boxes)
    torch.testing.assert_close(mapped[0], torch.tensor([5.0, 74.0, 55.0, 174.0]))
    torch.testing.assert_close(box.to_original(mapped), boxes)
    with pytest.raises(ValueError, match="multiple of 32"):
        letterbox_image(image, 100)
    tensor = image_to_tensor(padded)
    assert tensor.shape == (1, 3, 320, 320) and float(tensor.max()) == pytest.approx(114 / 255)


def test_roi_align_maps_boxes_through_the_letterbox():
    """On a feature map whose values are the input x (channel 0) and y (channel 1) coordinates of
    each cell centre, the pooled ROI centre must equal the letterboxed box centre."""
    _, box = letterbox_image(np.zeros((384, 640, 3), np.uint8), 640)  # pad_top = 128
    size = 20  # 640 / 32
    centres = (torch.arange(size, dtype=torch.float32) + 0.5) * 32
    feature_map = torch.stack([centres.expand(size, size), centres[:, None].expand(size, size)])[None]
    boxes = torch.tensor([[64.0, 32.0, 192.0, 160.0], [320.0, 200.0, 448.0, 328.0]])
    rois = roi_align_features(feature_map, boxes, box)
    assert rois.shape == (2, 2, 10, 10)
    input_boxes = box.to_input(boxes)
    expected_x = (input_boxes[:, 0] + input_boxes[:, 2]) / 2
    expected_y = (input_boxes[:, 1] + input_boxes[:, 3]) / 2
    torch.testing.assert_close(rois[:, 0].mean(dim=(1, 2)), expected_x, atol=1e-3, rtol=0)
    torch.testing.assert_close(rois[:, 1].mean(dim=(1, 2)), expected_y, atol=1e-3, rtol=0)
    # the 10 sample columns span the box: first/last bin centres at 1/20 and 19/20 of its width
    width = input_boxes[0, 2] - input_boxes[0, 0]
    torch.testing.assert_close(rois[0, 0, 0, [0, -1]], input_boxes[0, 0] + width * torch.tensor([0.05, 0.95]))


def test_roi_align_edge_cases():
    _, box = letterbox_image(np.zeros((64, 64, 3), np.uint8), 64)
    feature_map = torch.randn(1, 8, 2, 2)
    assert roi_align_features(feature_map, torch.zeros((0, 4)), box).shape == (0, 8, 10, 10)
    with pytest.raises(ValueError, match="x2 >= x1"):
        roi_align_features(feature_map, torch.tensor([[10.0, 10.0, 5.0, 20.0]]), box)
    with pytest.raises(ValueError, match="one image"):
        roi_align_features(torch.randn(2, 8, 2, 2), torch.tensor([[0.0, 0.0, 5.0, 5.0]]), box)
