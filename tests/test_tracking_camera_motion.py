"""Camera-motion estimation against known warps, and the moving-camera scenes it is benchmarked on."""

import cv2
import numpy as np
import pytest

from myutils.synthetic.scenes import camera_motion, generate_scene, render_frame
from myutils.tracking.boxes import tlwh_to_xyxy
from myutils.tracking.camera_motion import CameraMotion


def textured(seed=0, size=(240, 320)):
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(0, 255, size=(size[0] // 8, size[1] // 8, 3)).astype(np.float32)
    return cv2.resize(coarse, size[::-1], interpolation=cv2.INTER_CUBIC).clip(0, 255).astype(np.uint8)


def corner_error(estimate, truth, width, height):
    corners = np.array([[0, 0], [width, 0], [0, height], [width, height]], dtype=np.float64)
    return np.abs(corners @ estimate[:, :2].T + estimate[:, 2] - (corners @ truth[:, :2].T + truth[:, 2])).max()


@pytest.mark.parametrize("method", ["sparse_flow", "ecc"])
def test_recovers_a_known_pan_and_zoom(method):
    image = textured()
    truth = np.array([[1.03, 0.0, -6.0], [0.0, 1.03, 4.0]])  # zoom in 3 %, pan
    moved = cv2.warpAffine(image, truth, (320, 240), borderMode=cv2.BORDER_REFLECT)
    motion = CameraMotion(method)
    assert np.allclose(motion.estimate(image), np.eye(2, 3))  # the first frame: nothing to compare with
    estimate = motion.estimate(moved)
    assert corner_error(estimate, truth, 320, 240) < 1.0


def test_masked_boxes_keep_moving_objects_out_of_the_estimate():
    """An object covering most of the view moves 15 px against a static background: with its box
    masked the estimate is the camera's (no motion); without the mask it follows the object."""
    background, patch = textured(1), textured(2, (200, 240))
    frames, boxes = [], []
    for x in (20, 35):
        frame = background.copy()
        frame[20:220, x : x + 240] = patch
        frames.append(frame)
        boxes.append(np.array([[x, 20, x + 240, 220]], dtype=np.float64))
    errors = {}
    for masked in (True, False):
        motion = CameraMotion()
        motion.estimate(frames[0], boxes[0] if masked else None)
        errors[masked] = corner_error(motion.estimate(frames[1], boxes[1] if masked else None), np.eye(2, 3), 320, 240)
    assert errors[True] < 1.5 < 5.0 < errors[False]


def test_moving_camera_scene_and_its_true_motion():
    scene = generate_scene(num_frames=40, num_objects=6, seed=3, camera="moving")
    static = generate_scene(num_frames=40, num_objects=6, seed=3)
    gt = scene.ground_truth
    assert len(gt) and (gt[:, 2] >= 0).all() and (gt[:, 2] + gt[:, 4] <= scene.width).all()
    assert not np.array_equal(gt, static.ground_truth)  # the same objects, seen differently
    motion, errors, shifts = CameraMotion(), [], []
    for frame in range(1, 41):
        in_frame = gt[gt[:, 0] == frame]
        estimate = motion.estimate(render_frame(scene, frame), tlwh_to_xyxy(in_frame[:, 2:6]))
        truth = camera_motion(scene, frame)
        errors.append(corner_error(estimate, truth, scene.width, scene.height))
        shifts.append(np.abs(truth[:, 2]).max())
    assert np.median(shifts[1:]) > 1.0  # the camera really moves
    assert np.median(errors[1:]) < 0.5 and np.percentile(errors[1:], 90) < 1.5
    assert np.allclose(camera_motion(static, 5), np.eye(2, 3))


def test_bad_settings():
    with pytest.raises(ValueError, match="method"):
        CameraMotion("orb")
    with pytest.raises(ValueError, match="camera"):
        generate_scene(camera="drone")
