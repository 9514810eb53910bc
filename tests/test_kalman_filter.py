"""Kalman box filter: predict/update against a hand computation and textbook 8x8 matrices, NSA, warp, gating."""

import numpy as np
import pytest
from scipy.spatial.distance import mahalanobis

from myutils.tracking.boxes import iou_matrix, tlwh_to_xyxy, xyah_to_xyxy, xyxy_to_tlwh, xyxy_to_xyah
from myutils.tracking.kalman_filter import KalmanBoxFilter, chi2_gate


def test_predict_update_by_hand():
    kf = KalmanBoxFilter()  # position weight 1/20, velocity weight 1/160
    mean, compact = kf.initiate(np.array([[100.0, 50.0, 0.5, 40.0]]))
    cov = kf.full_covariance(compact)
    # h = 40: initial std 2*40/20 = 4 for positions and 10*40/160 = 2.5 for their velocities;
    # the aspect ratio gets 1e-2 and its velocity 1e-5 (DeepSORT's values)
    assert np.allclose(np.diag(cov[0]), [16, 16, 1e-4, 16, 6.25, 6.25, 1e-10, 6.25])
    assert np.allclose(mean[0], [100, 50, 0.5, 40, 0, 0, 0, 0])

    mean, compact = kf.predict(mean, compact)
    cov = kf.full_covariance(compact)
    # var(cx) = 16 + 6.25 (velocity) + 2^2 (process, std 40/20); cov(cx, vcx) = 6.25; var(vcx) = 6.25 + 0.25^2
    assert cov[0, 0, 0] == pytest.approx(26.25)
    assert cov[0, 0, 4] == pytest.approx(6.25)
    assert cov[0, 4, 4] == pytest.approx(6.3125)
    assert np.allclose(mean[0, :4], [100, 50, 0.5, 40])

    measured_cx = 104.0
    mean, compact = kf.update(mean, compact, np.array([[measured_cx, 50.0, 0.5, 40.0]]))
    cov = kf.full_covariance(compact)
    innovation_var = 26.25 + 4.0  # + measurement noise (std 40/20)
    gain_position, gain_velocity = 26.25 / innovation_var, 6.25 / innovation_var
    assert mean[0, 0] == pytest.approx(100 + gain_position * 4)
    assert mean[0, 4] == pytest.approx(gain_velocity * 4)
    assert cov[0, 0, 0] == pytest.approx(26.25 - 26.25**2 / innovation_var)
    assert cov[0, 0, 4] == pytest.approx(6.25 - 26.25 * 6.25 / innovation_var)
    assert mean[0, 1] == pytest.approx(50.0) and mean[0, 5] == pytest.approx(0.0)  # no innovation in y


def noise_sizes(mean: np.ndarray, state: str) -> np.ndarray:
    """What each coordinate's noise scales with: DeepSORT (xyah) h, h, -, h; BoT-SORT (xywh) w, h, w, h."""
    w, h = mean[2], mean[3]
    return np.array([h, h, 1.0, h]) if state == "xyah" else np.array([w, h, w, h])


def textbook_step(mean, cov, measurement, state):
    """One predict + update with explicit 8x8 matrices and an explicit inverse, one track at a time."""
    size = noise_sizes(mean, state)
    q = np.concatenate([size / 20, size / 160])
    if state == "xyah":
        q[2], q[6] = 1e-2, 1e-5
    transition = np.eye(8) + np.eye(8, k=4)
    mean, cov = transition @ mean, transition @ cov @ transition.T + np.diag(q**2)
    r = noise_sizes(mean, state) / 20
    if state == "xyah":
        r[2] = 1e-1
    observation = np.eye(4, 8)
    s = observation @ cov @ observation.T + np.diag(r**2)
    gain = cov @ observation.T @ np.linalg.inv(s)
    return mean + gain @ (measurement - observation @ mean), (np.eye(8) - gain @ observation) @ cov


@pytest.mark.parametrize("state", ["xyah", "xywh"])
def test_batched_filter_equals_textbook_per_track(state):
    rng = np.random.default_rng(0)
    kf = KalmanBoxFilter(state=state)
    third = rng.uniform(0.3, 2, 5) if state == "xyah" else rng.uniform(20, 120, 5)
    first = np.column_stack([rng.uniform(50, 500, 5), rng.uniform(50, 300, 5), third, rng.uniform(20, 120, 5)])
    mean, cov = kf.initiate(first)
    expected = [(m.copy(), c.copy()) for m, c in zip(mean, kf.full_covariance(cov), strict=True)]
    for _ in range(4):
        measurement = first + rng.normal(0, 3, size=first.shape) * [1, 1, 0.01 if state == "xyah" else 1, 1]
        mean, cov = kf.update(*kf.predict(mean, cov), measurement)
        expected = [textbook_step(m, c, z, state) for (m, c), z in zip(expected, measurement, strict=True)]
    assert np.allclose(mean, [m for m, _ in expected])
    assert np.allclose(kf.full_covariance(cov), [c for _, c in expected])


def test_score_scaled_measurement_noise_trusts_confident_boxes_more():
    kf = KalmanBoxFilter()
    mean, cov = kf.predict(*kf.initiate(np.array([[100.0, 50.0, 0.5, 40.0]] * 2)))
    measurement = np.array([[110.0, 50.0, 0.5, 40.0]] * 2)
    updated, _ = kf.update(mean, cov, measurement, noise_scale=np.array([1.0, 0.1]))
    plain, _ = kf.update(mean, cov, measurement)
    assert updated[0, 0] == pytest.approx(plain[0, 0])  # scale 1: the plain update
    # innovation variance 26.25 + 0.1 * 4 instead of 26.25 + 4: the gain grows
    assert updated[1, 0] == pytest.approx(100 + 10 * 26.25 / (26.25 + 0.4))


def test_warp_equals_transforming_the_full_covariance():
    """For xyah the compact warp is exactly T P Tᵀ, rotation included (x and y share one variance)."""
    kf = KalmanBoxFilter()
    mean, cov = kf.initiate(np.array([[100.0, 50.0, 0.5, 40.0], [300.0, 200.0, 0.8, 90.0]]))
    mean, cov = kf.update(*kf.predict(mean, cov), np.array([[103.0, 52.0, 0.5, 41.0], [298.0, 201.0, 0.8, 88.0]]))
    angle, scale = 0.1, 1.2
    linear = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    matrix = np.column_stack([linear, [5.0, -3.0]])
    warped_mean, warped_cov = kf.warp(mean, cov, matrix)
    transform = np.zeros((8, 8))
    for offset in (0, 4):
        transform[offset : offset + 2, offset : offset + 2] = linear
        transform[offset + 2, offset + 2] = 1.0
        transform[offset + 3, offset + 3] = scale
    expected_mean = mean @ transform.T + [5.0, -3.0, 0, 0, 0, 0, 0, 0]
    assert np.allclose(warped_mean, expected_mean)
    full = kf.full_covariance(cov)
    assert np.allclose(kf.full_covariance(warped_cov), transform @ full @ transform.T)


def test_gating_distance_is_mahalanobis_and_gate_rejects_far_boxes():
    kf = KalmanBoxFilter()
    mean, cov = kf.predict(*kf.initiate(np.array([[200.0, 100.0, 0.5, 60.0], [400.0, 200.0, 1.0, 30.0]])))
    measurements = np.array([[203.0, 98.0, 0.52, 61.0], [260.0, 100.0, 0.5, 60.0], [401.0, 201.0, 1.0, 30.0]])
    distance = kf.gating_distance(mean, cov, measurements)
    projected_mean, innovation_var = kf.project(mean, cov)
    projected_cov = np.stack([np.diag(v) for v in innovation_var])
    for i in range(2):
        inverse = np.linalg.inv(projected_cov[i])
        for j in range(3):
            assert distance[i, j] == pytest.approx(
                mahalanobis(measurements[j], projected_mean[i], inverse) ** 2
            )
    position_only = kf.gating_distance(mean, cov, measurements, only_position=True)
    inverse = np.linalg.inv(projected_cov[0][:2, :2])
    assert position_only[0, 1] == pytest.approx(
        mahalanobis(measurements[1, :2], projected_mean[0, :2], inverse) ** 2
    )
    assert chi2_gate(0.95, 4) == pytest.approx(9.4877, abs=1e-4)
    assert chi2_gate(0.95, 2) == pytest.approx(5.9915, abs=1e-4)
    gated_in = distance <= chi2_gate(0.95, 4)
    assert gated_in[0, 0] and not gated_in[0, 1] and gated_in[1, 2] and not gated_in[0, 2]


def test_box_conversions_round_trip_and_iou_by_hand():
    xyxy = np.array([[10.0, 20.0, 50.0, 100.0], [0.0, 0.0, 4.0, 2.0]])
    assert np.allclose(xyxy_to_xyah(xyxy)[0], [30, 60, 0.5, 80])
    assert np.allclose(xyah_to_xyxy(xyxy_to_xyah(xyxy)), xyxy)
    assert np.allclose(tlwh_to_xyxy(xyxy_to_tlwh(xyxy)), xyxy)
    a = np.array([[0.0, 0.0, 10.0, 10.0]])
    b = np.array([[5.0, 0.0, 15.0, 10.0], [20.0, 20.0, 30.0, 30.0], [0.0, 0.0, 10.0, 10.0]])
    assert np.allclose(iou_matrix(a, b), [[50 / 150, 0.0, 1.0]])
    assert iou_matrix(np.zeros((0, 4)), b).shape == (0, 3)
