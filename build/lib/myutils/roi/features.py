"""ROI align of boxes given in original-image pixels on a letterboxed image's feature map."""

from __future__ import annotations

import torch
from torchvision.ops import roi_align

from myutils.cli import InputError
from myutils.detection.letterbox import Letterbox

ROI_OUTPUT_SIZE = 10
SAMPLING_RATIO = 2


def roi_align_features(
    feature_map: torch.Tensor,
    boxes_xyxy_original: torch.Tensor,
    letterbox: Letterbox,
    output_size: int = ROI_OUTPUT_SIZE,
    sampling_ratio: int = SAMPLING_RATIO,
) -> torch.Tensor:
    """``[N, C, output_size, output_size]`` features of the boxes ``[N, 4]`` (xyxy, original pixels).

    Boxes go through the letterbox mapping first (scale, then padding offset), then
    ``roi_align(spatial_scale = feature width / input width, i.e. 1/32, aligned=True)``.
    ``feature_map`` is ``[1, C, h, w]`` of one image (batch index 0 for every box).
    """
    if feature_map.ndim != 4 or feature_map.shape[0] != 1:
        raise InputError(f"feature_map must be [1, C, h, w] of one image, got {tuple(feature_map.shape)}")
    boxes = torch.as_tensor(boxes_xyxy_original, dtype=torch.float32, device=feature_map.device).reshape(-1, 4)
    if boxes.shape[0] == 0:
        return feature_map.new_zeros((0, feature_map.shape[1], output_size, output_size))
    if not torch.isfinite(boxes).all() or (boxes[:, 2:] < boxes[:, :2]).any():
        raise InputError("boxes must be finite xyxy with x2 >= x1 and y2 >= y1")
    spatial_scale = feature_map.shape[-1] / letterbox.input_width
    rois = torch.cat([boxes.new_zeros((boxes.shape[0], 1)), letterbox.to_input(boxes)], dim=1)
    return roi_align(
        feature_map.float(), rois, output_size=output_size, spatial_scale=spatial_scale,
        sampling_ratio=sampling_ratio, aligned=True,
    )
