import configparser
import json

import numpy as np
import pytest

from myutils.data.image_io import read_image_rgb
from myutils.synthetic.scenes import (
    generate_scene,
    place_objects,
    render_frame,
    write_mot_sequence,
    write_validation_pairs,
)
from myutils.tracking.mot_io import read_mot


@pytest.fixture(scope="module")
def scene():
    return generate_scene(num_frames=60, num_objects=6, width=320, height=192, seed=3)


def test_scene_is_deterministic_and_seed_dependent(scene):
    again = generate_scene(num_frames=60, num_objects=6, width=320, height=192, seed=3)
    other = generate_scene(num_frames=60, num_objects=6, width=320, height=192, seed=4)
    np.testing.assert_array_equal(scene.ground_truth, again.ground_truth)
    np.testing.assert_array_equal(render_frame(scene, 17), render_frame(again, 17))
    assert not np.array_equal(render_frame(scene, 17), render_frame(other, 17))


def test_ground_truth_is_mot_format_inside_the_image(scene):
    gt = scene.ground_truth
    assert gt.shape[1] == 10 and len(gt) > 0
    frames, ids = gt[:, 0], gt[:, 1]
    assert frames.min() >= 1 and frames.max() <= scene.num_frames
    assert set(np.unique(ids).astype(int)) <= set(range(1, 7))
    left, top, w, h = gt[:, 2], gt[:, 3], gt[:, 4], gt[:, 5]
    assert (left >= 0).all() and (top >= 0).all() and (w > 0).all() and (h > 0).all()
    assert (left + w <= scene.width).all() and (top + h <= scene.height).all()
    assert ((gt[:, 8] >= 0) & (gt[:, 8] <= 1)).all()
    # one row per (frame, id)
    assert len({(int(f), int(i)) for f, i in gt[:, :2]}) == len(gt)


def test_objects_enter_and_leave(scene):
    gt = scene.ground_truth
    first = {int(i): gt[gt[:, 1] == i, 0].min() for i in np.unique(gt[:, 1])}
    assert any(frame == 1 for frame in first.values()), "some objects are in view from the start"
    assert any(frame > 1 for frame in first.values()), "some objects enter later"


def test_visibility_matches_an_independent_occlusion_count():
    scene = generate_scene(num_frames=120, num_objects=8, width=320, height=192, seed=1)
    gt = scene.ground_truth
    occluded = gt[gt[:, 8] < 0.99]
    assert len(occluded) > 0, "objects occlude each other"
    frame = int(occluded[0, 0])
    placements = place_objects(scene, frame)  # far to near
    for index, placement in enumerate(placements):
        canvas = np.zeros((scene.height + 400, scene.width + 400), bool)  # padded so nothing is clipped
        def paint(p, value, canvas=canvas):
            h, w = p.mask.shape
            region = canvas[p.top + 200 : p.top + 200 + h, p.left + 200 : p.left + 200 + w]
            region[p.mask] = value
        paint(placement, True)
        inside = canvas[200 : 200 + scene.height, 200 : 200 + scene.width].copy()
        for nearer in placements[index + 1 :]:
            paint(nearer, False)
        visible = canvas[200 : 200 + scene.height, 200 : 200 + scene.width]
        row = gt[(gt[:, 0] == frame) & (gt[:, 1] == placement.identity)]
        if inside.sum() == 0:
            assert len(row) == 0
            continue
        assert row[0, 8] == pytest.approx(visible.sum() / inside.sum(), abs=1e-4)
        ys, xs = np.nonzero(inside)
        np.testing.assert_array_equal(row[0, 2:6], [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1])


def test_render_frame_draws_objects_over_background(scene):
    image = render_frame(scene, 10)
    assert image.shape == (scene.height, scene.width, 3) and image.dtype == np.uint8
    rows = scene.ground_truth[(scene.ground_truth[:, 0] == 10) & (scene.ground_truth[:, 8] == 1)]
    left, top, w, h = rows[0, 2:6].astype(int)
    difference = np.abs(image[top : top + h, left : left + w].astype(float) - scene.background[top : top + h, left : left + w])
    assert difference.mean() > 20
    with pytest.raises(ValueError, match="frame must be"):
        render_frame(scene, 0)


def test_write_mot_sequence_round_trips(scene, tmp_path):
    small = generate_scene(num_frames=5, num_objects=3, width=160, height=96, seed=2)
    out = write_mot_sequence(small, tmp_path / "SYN-01")
    assert sorted(p.name for p in (out / "img1").iterdir()) == [f"{i:06d}.jpg" for i in range(1, 6)]
    assert read_image_rgb(out / "img1" / "000003.jpg").shape == (96, 160, 3)
    np.testing.assert_allclose(read_mot(out / "gt" / "gt.txt"), small.ground_truth, atol=0.01)
    info = configparser.ConfigParser()
    info.read(out / "seqinfo.ini")
    assert info["Sequence"]["seqLength"] == "5" and info["Sequence"]["imWidth"] == "160"


def test_write_validation_pairs_uses_seed_layout(tmp_path):
    scene = generate_scene(num_frames=40, num_objects=4, width=160, height=96, seed=5)
    out = write_validation_pairs(scene, tmp_path / "val", num_pairs=3, frame_gap=4, min_visibility=0.0)
    for k in range(3):
        now = json.loads((out / "now" / "lable" / f"{k}.json").read_text())
        pre = json.loads((out / "pre" / "lable" / f"{k}.json").read_text())
        assert now["frame"] - pre["frame"] == 4
        assert read_image_rgb(out / "now" / "pic" / f"{k}.jpg").shape == (96, 160, 3)
        gt = scene.ground_truth[scene.ground_truth[:, 0] == now["frame"]]
        assert len(now["annotations"]) == len(gt)
        for annotation in now["annotations"]:
            row = gt[gt[:, 1] == annotation["id"]][0]
            box = annotation["bbox"]
            assert box["cx"] * 160 == pytest.approx(row[2] + row[4] / 2)
            assert box["h"] * 96 == pytest.approx(row[5])
    with pytest.raises(ValueError, match="frame_gap"):
        write_validation_pairs(scene, tmp_path / "bad", num_pairs=1, frame_gap=40)
