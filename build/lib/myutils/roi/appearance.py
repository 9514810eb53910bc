"""Appearance embeddings of boxes for tracking: YOLOv7 SPPCSPC map -> ROI align -> ROI encoder."""

from __future__ import annotations

import os

import numpy as np
import torch

from myutils.roi.encoder import ROIEncoder, load_roi_encoder
from myutils.roi.features import roi_align_features


class ROIAppearance:
    """Unit embeddings ``[N, D]`` of boxes (xyxy, original pixels) from the detector's own feature map."""

    def __init__(self, encoder: str | os.PathLike | ROIEncoder, detector):
        """``encoder``: a checkpoint written by main_train.py, or an encoder module (e.g. untrained)."""
        self.detector = detector
        if isinstance(encoder, ROIEncoder):
            self.encoder = encoder.to(detector.device).eval()
        else:
            self.encoder = load_roi_encoder(encoder, detector.device)

    @property
    def dim(self) -> int:
        return self.encoder.config.embedding_dim

    @torch.no_grad()
    def embed(self, features: torch.Tensor, letterbox, boxes_xyxy: np.ndarray) -> np.ndarray:
        """Embeddings from an SPPCSPC map ``[1, 512, h, w]`` already computed (e.g. by the detection pass)."""
        if len(boxes_xyxy) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        boxes = torch.as_tensor(np.asarray(boxes_xyxy), dtype=torch.float32, device=features.device)
        return self.encoder(roi_align_features(features, boxes, letterbox)).float().cpu().numpy()

    def embed_image(self, image: np.ndarray, boxes_xyxy: np.ndarray) -> np.ndarray:
        """Embeddings of boxes given without a detection pass (a backbone-only pass on ``image``)."""
        if len(boxes_xyxy) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        features, letterbox = self.detector.backbone_features(image)
        return self.embed(features, letterbox, boxes_xyxy)
