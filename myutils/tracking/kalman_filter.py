"""Constant-velocity Kalman filter for image boxes, batched over tracks, with per-coordinate blocks.

Two box parameterisations (``state``):
- ``xyah`` (DeepSORT): measurement ``z = [cx, cy, a, h]`` (centre, aspect ratio w/h, height); the
  noise of cx, cy, h scales with the height, the aspect ratio gets small fixed noise;
- ``xywh`` (BoT-SORT): measurement ``z = [cx, cy, w, h]``; the noise of cx and w scales with the
  width, of cy and h with the height (a box may change shape freely).
The state is ``x = [z, ż]`` (8 numbers), one frame per step (dt = 1):

    predict:  x' = F x,              P' = F P Fᵀ + Q
    update:   S = H P' Hᵀ + R,  K = P' Hᵀ S⁻¹,  x = x' + K (z − H x'),  P = P' − K S Kᵀ
    gating:   d² = (z − H x')ᵀ S⁻¹ (z − H x')  compared with a χ² quantile

Noise standard deviations are ``position_weight ·`` size for positions and measurements and
``velocity_weight ·`` size for velocities (DeepSORT's 1/20 and 1/160). Because F couples each
coordinate only with its own velocity and Q, R and the initial P are diagonal, P stays a set of
independent 2×2 blocks, one per coordinate: the covariance is stored as ``cov [N, 3, 4]`` =
(var of the coordinate, its covariance with its velocity, var of the velocity) per coordinate,
and every step is elementwise arithmetic (no matrix inverse). :meth:`full_covariance` rebuilds
the 8×8 matrices.

``update`` may scale the measurement noise per track (StrongSORT's NSA: ``R · (1 − score)``, a
confident detection is trusted more); ``warp`` moves every state with the camera (an image-to-image
similarity ``p' = M p + t``; BoT-SORT's camera-motion compensation).
"""

from __future__ import annotations

import math

import numpy as np
from scipy.stats import chi2

from myutils.tracking.boxes import xyah_to_xyxy, xywh_to_xyxy, xyxy_to_xyah, xyxy_to_xywh

STATE_DIM, MEASUREMENT_DIM = 8, 4
STATES = ("xyah", "xywh")
_PREDICT_BLOCKS = np.array([[1.0, 2.0, 1.0], [0.0, 1.0, 1.0], [0.0, 0.0, 1.0]])
# the same step on the flattened blocks [N, 12]: flat @ kron(Bᵀ, I)
_PREDICT_FLAT = np.kron(_PREDICT_BLOCKS.T, np.eye(MEASUREMENT_DIM))
# x' = F x for row vectors: x @ Fᵀ
_TRANSITION_T = np.eye(STATE_DIM) + np.eye(STATE_DIM, k=-MEASUREMENT_DIM)
_GAIN_ROWS, _COV_ROWS = np.array([0, 0, 1]), np.array([0, 1, 1])
_XYAH_SCALED, _XYAH_ASPECT = np.array([1.0, 1.0, 0.0, 1.0]), np.array([0.0, 0.0, 1.0, 0.0])
_XYWH_SIZES = np.array([2, 3, 2, 3])


def chi2_gate(probability: float = 0.95, dof: int = MEASUREMENT_DIM) -> float:
    """The squared-Mahalanobis threshold that keeps ``probability`` of true measurements (9.4877 for 0.95, 4 dof)."""
    return float(chi2.ppf(probability, dof))


def similarity_scale(matrix: np.ndarray) -> float:
    """The scale ``s = sqrt(|det M|)`` of the linear part ``M`` of a ``[2, 3]`` similarity warp."""
    (a, b, _), (c, d, _) = np.asarray(matrix, dtype=np.float64).reshape(2, 3).tolist()
    return math.sqrt(abs(a * d - b * c))


def boxes_to_measurements(boxes_xyxy: np.ndarray, state: str) -> np.ndarray:
    """xyxy boxes ``[N, 4]`` as measurements (``[cx, cy, a, h]`` or ``[cx, cy, w, h]``)."""
    return xyxy_to_xyah(boxes_xyxy) if state == "xyah" else xyxy_to_xywh(boxes_xyxy)


def measurements_to_boxes(measurements: np.ndarray, state: str) -> np.ndarray:
    """The inverse of :func:`boxes_to_measurements`."""
    return xyah_to_xyxy(measurements) if state == "xyah" else xywh_to_xyxy(measurements)


class KalmanBoxFilter:
    def __init__(
        self, position_weight: float = 1.0 / 20, velocity_weight: float = 1.0 / 160, state: str = "xyah"
    ):
        if state not in STATES:
            raise ValueError(f"state must be one of {STATES}, got {state!r}")
        self.position_weight = position_weight
        self.velocity_weight = velocity_weight
        self.state = state
        # every noise variance is a weight times a squared size plus a constant (the aspect ratio's):
        # variances [N, k] = mean[:, 2:4]² @ weights + constants, one product for all tracks
        self._process_weights, self._process_constants = self._variance_terms(
            [position_weight, 0.0, velocity_weight], [1e-2, 0.0, 1e-5]
        )
        self._measurement_weights, self._measurement_constants = self._variance_terms([position_weight], [1e-1])

    def _variance_terms(self, weights: list[float], aspect_stds: list[float]) -> tuple[np.ndarray, np.ndarray]:
        """``(W [2, 4k], c [4k])`` with ``mean[:, 2:4]² @ W + c`` = the squared :meth:`_stds` of each weight,
        side by side (a zero weight and std give a zero block, the covariance between position and velocity)."""
        sizes = [0, 1, 0, 1] if self.state == "xywh" else [1, 1, None, 1]  # 0: width, 1: height, None: aspect
        matrix, constants = np.zeros((2, MEASUREMENT_DIM * len(weights))), np.zeros(MEASUREMENT_DIM * len(weights))
        for block, (weight, aspect_std) in enumerate(zip(weights, aspect_stds, strict=True)):
            for coordinate, size in enumerate(sizes):
                column = block * MEASUREMENT_DIM + coordinate
                if size is None:
                    constants[column] = aspect_std**2
                else:
                    matrix[size, column] = weight**2
        return matrix, constants

    def _stds(self, mean: np.ndarray, weight: float, aspect_std: float) -> np.ndarray:
        """Noise standard deviations ``[N, 4]``: ``weight`` times the size each coordinate scales with
        (height; or width for cx and w with ``xywh``), a fixed ``aspect_std`` for the aspect ratio."""
        if self.state == "xyah":
            return np.multiply.outer(weight * mean[:, 3], _XYAH_SCALED) + aspect_std * _XYAH_ASPECT
        return weight * mean[:, _XYWH_SIZES]

    def initiate(self, measurements: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """New tracks from measurements ``[N, 4]``: zero velocity, wide velocity uncertainty
        (DeepSORT's initial spread: twice the position noise, ten times the velocity noise)."""
        measurements = np.asarray(measurements, dtype=np.float64).reshape(-1, MEASUREMENT_DIM)
        mean = np.concatenate([measurements, np.zeros_like(measurements)], axis=1)
        cov = np.zeros((len(mean), 3, MEASUREMENT_DIM))
        cov[:, 0] = (2 * self._stds(mean, self.position_weight, 0.5e-2)) ** 2
        cov[:, 2] = (10 * self._stds(mean, self.velocity_weight, 1e-6)) ** 2
        return mean, cov

    def predict(self, mean: np.ndarray, cov: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """One step ahead for every track (the process noise from the sizes before the step)."""
        # F P Fᵀ per block (pp, pv, vv) -> (pp + 2 pv + vv, pv + vv, vv), plus the noise Q (no pv term):
        # two small matrix products on the flattened blocks instead of a dozen strided steps
        flat = cov.reshape(len(cov), -1) @ _PREDICT_FLAT
        flat += self._process_constants + mean[:, 2:4] ** 2 @ self._process_weights
        return mean @ _TRANSITION_T, flat.reshape(cov.shape)

    def project(
        self, mean: np.ndarray, cov: np.ndarray, noise_scale: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """The state in measurement space: ``z' [N, 4]`` and the innovation variances ``S [N, 4]``
        (S is diagonal; measurement noise times ``noise_scale [N]`` where given)."""
        variance = mean[:, 2:4] ** 2 @ self._measurement_weights + self._measurement_constants
        if noise_scale is not None:
            variance = variance * np.asarray(noise_scale, dtype=np.float64).reshape(-1, 1)
        return mean[:, :MEASUREMENT_DIM], cov[:, 0] + variance

    def update(
        self,
        mean: np.ndarray,
        cov: np.ndarray,
        measurements: np.ndarray,
        noise_scale: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Correct each track ``i`` with its own measurement ``measurements[i]`` (measurement noise
        times ``noise_scale[i]`` where given)."""
        projected_mean, innovation_var = self.project(mean, cov, noise_scale)
        # K per block, its rows laid out as (kp, kp, kv) for the covariance step; K = (kp, kv)
        gain = cov[:, _GAIN_ROWS] / innovation_var[:, None]
        innovation = np.asarray(measurements, dtype=np.float64).reshape(-1, MEASUREMENT_DIM) - projected_mean
        new_mean = mean + (gain[:, 1:] * innovation[:, None]).reshape(len(mean), STATE_DIM)
        # P − K S Kᵀ per block: (pp − kp pp, pv − kp pv, vv − kv pv)
        new_cov = cov - gain * cov[:, _COV_ROWS]
        return new_mean, new_cov

    def warp(self, mean: np.ndarray, cov: np.ndarray, matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Every state after the camera moved by ``matrix [2, 3]`` (``p' = M p + t``, a similarity):
        centres and their velocities go through ``M``, sizes (h, and w for ``xywh``) and their
        velocities scale with ``s = sqrt(|det M|)``, aspect ratios stay; variances of centres and sizes
        scale with s². With ``xyah`` this is ``T P Tᵀ`` exactly: the x and y blocks are equal (the same
        noise models), so a rotation leaves them unchanged; with ``xywh`` (x and y blocks differ)
        the rotation part of the covariance is left out, as small as camera roll is."""
        matrix = np.asarray(matrix, dtype=np.float64).reshape(2, 3)
        linear_t, shift = matrix[:, :2].T, matrix[:, 2]
        scale = similarity_scale(matrix)
        new_mean = mean.copy()
        new_mean[:, 0:2] = mean[:, 0:2] @ linear_t + shift
        new_mean[:, 4:6] = mean[:, 4:6] @ linear_t
        if self.state == "xyah":
            new_mean[:, 3::4] *= scale  # h and its velocity; the aspect ratio does not change with the zoom
            return new_mean, cov * np.array([scale**2, scale**2, 1.0, scale**2])
        new_mean[:, 2:4] *= scale
        new_mean[:, 6:8] *= scale
        return new_mean, cov * scale**2

    def gating_distance(
        self, mean: np.ndarray, cov: np.ndarray, measurements: np.ndarray, only_position: bool = False
    ) -> np.ndarray:
        """Squared Mahalanobis distance of every measurement ``[M, 4]`` to every track -> ``[N, M]``.

        With ``only_position`` only the centre is compared (use ``chi2_gate(dof=2)`` then).
        """
        projected_mean, innovation_var = self.project(mean, cov)
        measurements = np.asarray(measurements, dtype=np.float64).reshape(-1, MEASUREMENT_DIM)
        dims = slice(0, 2) if only_position else slice(0, MEASUREMENT_DIM)
        difference = measurements[None, :, dims] - projected_mean[:, None, dims]  # [N, M, d]
        return np.sum(difference**2 / innovation_var[:, None, dims], axis=2)

    @staticmethod
    def full_covariance(cov: np.ndarray) -> np.ndarray:
        """The 8×8 covariance matrices ``[N, 8, 8]`` of the compact ``[N, 3, 4]`` form."""
        full = np.zeros((len(cov), STATE_DIM, STATE_DIM))
        index = np.arange(MEASUREMENT_DIM)
        full[:, index, index] = cov[:, 0]
        full[:, index, index + MEASUREMENT_DIM] = cov[:, 1]
        full[:, index + MEASUREMENT_DIM, index] = cov[:, 1]
        full[:, index + MEASUREMENT_DIM, index + MEASUREMENT_DIM] = cov[:, 2]
        return full
