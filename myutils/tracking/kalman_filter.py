"""Constant-velocity Kalman filter for image boxes (DeepSORT style), batched over tracks.

State ``x = [cx, cy, a, h, vcx, vcy, va, vh]`` (centre, aspect ratio w/h, height and their
velocities), measurement ``z = [cx, cy, a, h]``, one frame per step (dt = 1):

    predict:  x' = F x,              P' = F P Fᵀ + Q(h)
    project:  z' = H x',             S  = H P' Hᵀ + R(h)
    update:   K = P' Hᵀ S⁻¹,         x  = x' + K (z − z'),     P = P' − K S Kᵀ
    gating:   d² = (z − z')ᵀ S⁻¹ (z − z')  compared with the χ²(4 dof) quantile

The noise standard deviations scale with the box height ``h`` (``position_weight · h`` for
positions, ``velocity_weight · h`` for velocities), so a near, large object may move more pixels
than a far, small one. The aspect ratio gets small fixed noise: shapes change slowly.
``update`` may scale the measurement noise per track (StrongSORT's NSA: ``R · (1 − score)``, a
confident detection is trusted more); ``warp`` moves every state with the camera (an image-to-image
similarity ``x' = M x + t``; BoT-SORT's camera-motion compensation).
Every method takes and returns arrays with a leading track axis: ``mean [N, 8]``, ``cov [N, 8, 8]``.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import chi2

STATE_DIM, MEASUREMENT_DIM = 8, 4


def chi2_gate(probability: float = 0.95, dof: int = MEASUREMENT_DIM) -> float:
    """The squared-Mahalanobis threshold that keeps ``probability`` of true measurements (9.4877 for 0.95, 4 dof)."""
    return float(chi2.ppf(probability, dof))


class KalmanBoxFilter:
    def __init__(self, position_weight: float = 1.0 / 20, velocity_weight: float = 1.0 / 160):
        self.position_weight = position_weight
        self.velocity_weight = velocity_weight
        self.transition = np.eye(STATE_DIM)
        self.transition[:MEASUREMENT_DIM, MEASUREMENT_DIM:] = np.eye(MEASUREMENT_DIM)
        self.observation = np.eye(MEASUREMENT_DIM, STATE_DIM)

    def _position_std(self, height: np.ndarray, aspect_std: float) -> np.ndarray:
        w = self.position_weight * height
        return np.stack([w, w, np.full_like(height, aspect_std), w], axis=1)

    def _velocity_std(self, height: np.ndarray) -> np.ndarray:
        w = self.velocity_weight * height
        return np.stack([w, w, np.full_like(height, 1e-5), w], axis=1)

    def initiate(self, measurements: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """New tracks from measurements ``[N, 4]``: zero velocity, wide velocity uncertainty."""
        measurements = np.asarray(measurements, dtype=np.float64).reshape(-1, MEASUREMENT_DIM)
        mean = np.concatenate([measurements, np.zeros_like(measurements)], axis=1)
        height = measurements[:, 3]
        # DeepSORT's initial spread: twice the position noise, ten times the velocity noise; the
        # aspect ratio 1e-2 and its velocity 1e-5 (shapes change slowly)
        std = np.concatenate(
            [2 * self._position_std(height, 0.5e-2), 10 * self._velocity_std(height)], axis=1
        )
        std[:, 6] = 1e-5
        return mean, _diagonal(std**2)

    def predict(self, mean: np.ndarray, cov: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """One step ahead for every track."""
        height = mean[:, 3]
        std = np.concatenate([self._position_std(height, 1e-2), self._velocity_std(height)], axis=1)
        mean = mean @ self.transition.T
        cov = self.transition @ cov @ self.transition.T + _diagonal(std**2)
        return mean, cov

    def project(
        self, mean: np.ndarray, cov: np.ndarray, noise_scale: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """The state in measurement space: ``z' [N, 4]`` and the innovation covariance ``S [N, 4, 4]``
        (measurement noise times ``noise_scale [N]`` where given)."""
        variance = self._position_std(mean[:, 3], 1e-1) ** 2
        if noise_scale is not None:
            variance = variance * np.asarray(noise_scale, dtype=np.float64).reshape(-1, 1)
        projected_cov = self.observation @ cov @ self.observation.T + _diagonal(variance)
        return mean[:, :MEASUREMENT_DIM], projected_cov

    def update(
        self,
        mean: np.ndarray,
        cov: np.ndarray,
        measurements: np.ndarray,
        noise_scale: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Correct each track ``i`` with its own measurement ``measurements[i]`` (measurement noise
        times ``noise_scale[i]`` where given)."""
        projected_mean, projected_cov = self.project(mean, cov, noise_scale)
        cross = cov @ self.observation.T  # P Hᵀ  [N, 8, 4]
        # K = P Hᵀ S⁻¹, solved as S Kᵀ = H P (S is symmetric positive definite)
        gain = np.linalg.solve(projected_cov, np.swapaxes(cross, 1, 2)).swapaxes(1, 2)
        innovation = np.asarray(measurements, dtype=np.float64).reshape(-1, MEASUREMENT_DIM) - projected_mean
        new_mean = mean + np.einsum("nij,nj->ni", gain, innovation)
        new_cov = cov - gain @ projected_cov @ np.swapaxes(gain, 1, 2)
        return new_mean, new_cov

    @staticmethod
    def warp(mean: np.ndarray, cov: np.ndarray, matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Every state after the camera moved by ``matrix [2, 3]`` (``p' = M p + t``, a similarity):
        centres and their velocities go through ``M``, heights and their velocities scale with
        ``sqrt(|det M|)``, aspect ratios stay; the covariance follows, ``P' = T P Tᵀ``."""
        matrix = np.asarray(matrix, dtype=np.float64).reshape(2, 3)
        linear, shift = matrix[:, :2], matrix[:, 2]
        scale = float(np.sqrt(abs(np.linalg.det(linear))))
        transform = np.zeros((STATE_DIM, STATE_DIM))
        for offset in (0, MEASUREMENT_DIM):
            transform[offset : offset + 2, offset : offset + 2] = linear
            transform[offset + 2, offset + 2] = 1.0
            transform[offset + 3, offset + 3] = scale
        mean = mean @ transform.T
        mean[:, :2] += shift
        return mean, transform @ cov @ transform.T

    def gating_distance(
        self, mean: np.ndarray, cov: np.ndarray, measurements: np.ndarray, only_position: bool = False
    ) -> np.ndarray:
        """Squared Mahalanobis distance of every measurement ``[M, 4]`` to every track -> ``[N, M]``.

        With ``only_position`` only the centre is compared (use ``chi2_gate(dof=2)`` then).
        """
        projected_mean, projected_cov = self.project(mean, cov)
        measurements = np.asarray(measurements, dtype=np.float64).reshape(-1, MEASUREMENT_DIM)
        if only_position:
            projected_mean, projected_cov = projected_mean[:, :2], projected_cov[:, :2, :2]
            measurements = measurements[:, :2]
        if len(projected_mean) == 0 or len(measurements) == 0:
            return np.zeros((len(projected_mean), len(measurements)))
        difference = measurements[None, :, :] - projected_mean[:, None, :]  # [N, M, d]
        cholesky = np.linalg.cholesky(projected_cov)  # S = L Lᵀ, so d² = |L⁻¹ diff|²
        whitened = np.linalg.solve(cholesky, np.swapaxes(difference, 1, 2))  # [N, d, M]
        return np.sum(whitened**2, axis=1)


def _diagonal(values: np.ndarray) -> np.ndarray:
    """Batched diagonal matrices ``[N, d, d]`` from ``[N, d]``."""
    out = np.zeros(values.shape + values.shape[-1:])
    index = np.arange(values.shape[-1])
    out[:, index, index] = values
    return out
