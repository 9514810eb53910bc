"""Camera-motion compensation: the image-to-image motion of the background between two frames.

A moving camera shifts every object by the same image motion, which a constant-velocity
Kalman filter mistakes for object motion. :class:`CameraMotion` estimates, per frame, the
similarity ``p' = M p + t`` (a ``[2, 3]`` matrix: pan, zoom, roll) that carries the previous
frame onto the current one, and :meth:`myutils.tracking.tracker.Tracker.update` moves every
track with it before association (BoT-SORT's and Deep OC-SORT's camera-motion compensation).

Methods (OpenCV, on a grey image downscaled by ``downscale``):
- ``sparse_flow``: Shi-Tomasi corners of the previous frame followed by pyramidal Lucas-Kanade
  optical flow, then a RANSAC fit of the similarity (what BoT-SORT calls sparseOptFlow);
- ``ecc``: OpenCV's enhanced-correlation-coefficient alignment (``findTransformECC``,
  Euclidean motion model plus a scale estimate from the flow-free fit: slower, no corners needed).
Detection boxes may be masked out: moving objects are not background.
"""

from __future__ import annotations

import cv2
import numpy as np

from myutils.cli import InputError

CMC_METHODS = ("sparse_flow", "ecc", "none")
IDENTITY = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])


class CameraMotion:
    """Call :meth:`estimate` once per frame, in order; it returns the warp from the previous frame."""

    def __init__(self, method: str = "sparse_flow", downscale: int = 2, max_corners: int = 400):
        if method not in CMC_METHODS or method == "none":
            raise InputError(f"camera-motion method must be one of {CMC_METHODS[:2]}, got {method!r}")
        if downscale < 1:
            raise InputError(f"downscale must be >= 1, got {downscale}")
        self.method = method
        self.downscale = downscale
        self.max_corners = max_corners
        self._previous: np.ndarray | None = None

    def estimate(self, image: np.ndarray, boxes_xyxy: np.ndarray | None = None) -> np.ndarray:
        """The ``[2, 3]`` warp from the previous frame to ``image`` (RGB or grey); identity on the first
        frame and where the estimate fails. Pixels inside ``boxes_xyxy`` (full-size pixels) are ignored."""
        grey = image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
        if self.downscale > 1:
            grey = cv2.resize(
                grey,
                (grey.shape[1] // self.downscale, grey.shape[0] // self.downscale),
                interpolation=cv2.INTER_AREA,
            )
        previous, self._previous = self._previous, grey
        if previous is None or previous.shape != grey.shape:
            return IDENTITY.copy()
        mask = self._background_mask(grey.shape, boxes_xyxy)
        if self.method == "sparse_flow":
            warp = self._sparse_flow(previous, grey, mask)
        else:
            warp = self._ecc(previous, grey)
        if warp is None:
            return IDENTITY.copy()
        warp[:, 2] *= self.downscale  # the translation back in full-size pixels
        return warp

    def _background_mask(self, shape: tuple[int, int], boxes_xyxy: np.ndarray | None) -> np.ndarray:
        mask = np.full(shape, 255, np.uint8)
        if boxes_xyxy is not None and len(boxes_xyxy):
            for x0, y0, x1, y1 in np.asarray(boxes_xyxy, dtype=np.float64) / self.downscale:
                mask[max(int(y0), 0) : max(int(np.ceil(y1)), 0), max(int(x0), 0) : max(int(np.ceil(x1)), 0)] = 0
        return mask

    def _sparse_flow(self, previous: np.ndarray, current: np.ndarray, mask: np.ndarray) -> np.ndarray | None:
        corners = cv2.goodFeaturesToTrack(
            previous, maxCorners=self.max_corners, qualityLevel=0.01, minDistance=1, blockSize=3, mask=mask
        )
        if corners is None or len(corners) < 8:
            return None
        moved, status, _ = cv2.calcOpticalFlowPyrLK(previous, current, corners, None)
        found = status.reshape(-1) == 1
        if found.sum() < 8:
            return None
        warp, _ = cv2.estimateAffinePartial2D(
            corners[found], moved[found], method=cv2.RANSAC, ransacReprojThreshold=1.0
        )
        return warp

    def _ecc(self, previous: np.ndarray, current: np.ndarray) -> np.ndarray | None:
        warp = IDENTITY.astype(np.float32)
        criteria = (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 100, 1e-5)
        try:
            # the template is the current frame: the result maps previous-frame points onto it
            _, warp = cv2.findTransformECC(
                current.astype(np.float32), previous.astype(np.float32), warp, cv2.MOTION_AFFINE, criteria, None, 1
            )
        except cv2.error:
            return None
        return cv2.invertAffineTransform(warp).astype(np.float64)
