"""tracking.py end to end on a generated MOT sequence: detection files, frames, video, encoder, errors."""

import shutil
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch

import tracking
from myutils.roi.encoder import ROIEncoder, encoder_checkpoint_state
from myutils.synthetic.scenes import generate_scene, write_mot_sequence
from myutils.synthetic.simulated_detector import simulate_detections
from myutils.tracking.mot_io import read_mot, write_mot
from myutils.tracking.mot_metrics import combine_summaries, evaluate_mot
from myutils.tracking.tracker import TrackerConfig, track_detections
from myutils.training.checkpoint import save_checkpoint

NUM_FRAMES = 30
SHORT = 4  # frames of the sequence that runs YOLOv7 (slow on CPU) at a 64-pixel input


def generated_sequence(folder, num_frames):
    scene = generate_scene(
        num_frames=num_frames, num_objects=4, width=320, height=192, seed=5, difficulty="easy"
    )
    path = write_mot_sequence(scene, folder)
    write_mot(
        path / "det" / "det.txt", simulate_detections(scene.ground_truth, 320, 192, "easy", seed=5).rows
    )
    return path


@pytest.fixture(scope="module")
def sequence(tmp_path_factory):
    return generated_sequence(tmp_path_factory.mktemp("tracking") / "seq", NUM_FRAMES)


@pytest.fixture(scope="module")
def short_sequence(tmp_path_factory):
    return generated_sequence(tmp_path_factory.mktemp("tracking") / "short", SHORT)


def test_help_describes_the_options():
    result = subprocess.run(
        [sys.executable, "tracking.py", "--help"],
        capture_output=True,
        text=True,
        check=True,
        cwd=tracking.Path(tracking.__file__).parent,
    )
    for option in (
        "--video",
        "--frames",
        "--detections",
        "--encoder",
        "--no_appearance",
        "--save_video",
        "--gt",
        "--max_age",
        "--n_init",
        "--reid_max_distance",
    ):
        assert option in result.stdout


def test_detections_file_only_motion_tracking(sequence, tmp_path, capsys):
    output = tmp_path / "results.txt"
    run = tracking.main(
        [
            "--detections",
            str(sequence / "det" / "det.txt"),
            "--output",
            str(output),
            "--gt",
            str(sequence / "gt" / "gt.txt"),
            "--n_init",
            "2",
        ]
    )
    written = read_mot(output)
    expected = track_detections(read_mot(sequence / "det" / "det.txt"), TrackerConfig(n_init=2))
    assert np.array_equal(written[:, :2], expected[:, :2])
    assert np.allclose(written[:, 2:6], expected[:, 2:6], atol=0.006)
    assert (written[:, 7:] == -1).all()
    printed = capsys.readouterr().out
    assert "MOTA" in printed and "IDF1" in printed and f"{run.summary.mota:.3f}" in printed
    assert run.summary.mota > 0.5 and run.summary.num_switches <= 2


def test_frames_with_detections_and_video_output(sequence, tmp_path):
    video = tmp_path / "out.mp4"
    run = tracking.track(
        frames=str(sequence / "img1"),
        detections=str(sequence / "det" / "det.txt"),
        save_video=str(video),
        gt=str(sequence / "gt" / "gt.txt"),
    )
    assert run.num_frames == NUM_FRAMES
    capture = cv2.VideoCapture(str(video))
    assert int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) == NUM_FRAMES
    ok, frame = capture.read()
    capture.release()
    assert ok and frame.shape == (192, 320, 3)
    # the same detections without images give the same tracks
    without_images = tracking.track(detections=str(sequence / "det" / "det.txt"))
    assert np.array_equal(run.rows, without_images.rows)


def test_video_input_and_roi_encoder_appearance(short_sequence, tmp_path):
    video = tmp_path / "in.mp4"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), 30.0, (320, 192))
    for image in sorted((short_sequence / "img1").iterdir()):
        writer.write(cv2.imread(str(image)))
    writer.release()
    torch.manual_seed(0)
    encoder_path = save_checkpoint(encoder_checkpoint_state(ROIEncoder()), tmp_path / "encoder.pth")
    with pytest.warns(UserWarning, match="randomly initialised"):
        run = tracking.track(
            video=str(video),
            detections=str(short_sequence / "det" / "det.txt"),
            encoder=str(encoder_path),
            img_size=64,
            device="cpu",
            output=str(tmp_path / "app.txt"),
            config=TrackerConfig(n_init=1),
        )
    assert run.num_frames == SHORT
    assert len(read_mot(tmp_path / "app.txt")) == len(run.rows) > 0


def test_appearance_embeddings_are_unit_vectors_per_box(short_sequence, tmp_path):
    from myutils.data.image_io import read_image_rgb
    from myutils.detection.detector import YOLOv7Detector
    from myutils.roi.appearance import ROIAppearance

    save_checkpoint(encoder_checkpoint_state(ROIEncoder()), tmp_path / "encoder.pth")
    with pytest.warns(UserWarning):
        detector = YOLOv7Detector(img_size=64, device="cpu")
    appearance = ROIAppearance(tmp_path / "encoder.pth", detector)
    image = read_image_rgb(short_sequence / "img1" / "000001.jpg")
    boxes = np.array([[10.0, 10.0, 80.0, 90.0], [100.0, 40.0, 180.0, 150.0]])
    embeddings = appearance.embed_image(image, boxes)
    assert embeddings.shape == (2, 128) and np.allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-5)
    # the same boxes on the map of a full detection pass give the same embeddings
    result = detector(image)
    assert np.allclose(appearance.embed(result.features, result.letterbox, boxes), embeddings, atol=1e-5)
    assert appearance.embed_image(image, np.zeros((0, 4))).shape == (0, 128)


def test_frames_with_yolov7_detections(short_sequence, tmp_path):
    output = tmp_path / "yolo.txt"
    with pytest.warns(UserWarning, match="randomly initialised"):
        run = tracking.track(
            frames=str(short_sequence),
            img_size=64,
            conf=0.3,
            device="cpu",
            output=str(output),
            config=TrackerConfig(n_init=1),
        )
    assert run.num_frames == SHORT
    written = read_mot(
        output
    )  # a random network may detect anything or nothing; the file is valid either way
    assert written.shape == run.rows.shape and set(written[:, 0]) <= set(range(1, SHORT + 1))


def test_frame_rate_from_seqinfo_drives_buffers_and_the_output_video(sequence, tmp_path):
    slow = tmp_path / "slow"
    shutil.copytree(sequence, slow)
    info = (slow / "seqinfo.ini").read_text().replace("frameRate=30", "frameRate=10")
    (slow / "seqinfo.ini").write_text(info)
    video = tmp_path / "slow.mp4"
    run = tracking.track(frames=str(slow), detections=str(slow / "det" / "det.txt"), save_video=str(video))
    assert run.fps == 10.0
    capture = cv2.VideoCapture(str(video))
    assert capture.get(cv2.CAP_PROP_FPS) == pytest.approx(10.0)  # plays at the input's speed
    capture.release()
    # the same frames at 10 frames/s keep a lost track a third as many frames as at 30
    config = TrackerConfig(max_age_seconds=1.0)
    detections = read_mot(slow / "det" / "det.txt")
    assert np.array_equal(
        tracking.track(detections=str(slow / "det" / "det.txt"), config=config, fps=10.0).rows,
        track_detections(detections, config, fps=10.0),
    )
    assert tracking.track(detections=str(slow / "det" / "det.txt"), fps=24.0).fps == 24.0  # --fps wins


def test_interpolation_flag_fills_gaps_in_the_results(sequence, tmp_path):
    online = tracking.main(["--detections", str(sequence / "det" / "det.txt"), "--gt", str(sequence / "gt" / "gt.txt")])
    filled = tracking.main(
        ["--detections", str(sequence / "det" / "det.txt"), "--gt", str(sequence / "gt" / "gt.txt"),
         "--interpolate", "linear", "--output", str(tmp_path / "filled.txt")]
    )
    assert len(filled.rows) > len(online.rows) and len(read_mot(tmp_path / "filled.txt")) == len(filled.rows)
    assert filled.summary.num_misses < online.summary.num_misses


def test_a_file_that_is_not_a_video_is_one_clear_error(tmp_path):
    fake = tmp_path / "clip.mp4"
    fake.write_text("not a video")
    detections = tmp_path / "det.txt"
    detections.write_text("1,-1,10,10,20,40,0.9,-1,-1,-1\n")
    with pytest.raises(ValueError, match="cannot read .* as a video"):
        tracking.main(["--video", str(fake), "--detections", str(detections)])


def test_bad_arguments_are_clear_errors(sequence):
    with pytest.raises(ValueError, match="nothing to track"):
        tracking.track()
    with pytest.raises(ValueError, match="not both"):
        tracking.track(frames=str(sequence), video="x.mp4")
    with pytest.raises(ValueError, match="needs the images"):
        tracking.track(detections=str(sequence / "det" / "det.txt"), encoder="enc.pth")
    with pytest.raises(FileNotFoundError):
        tracking.track(detections=str(sequence / "missing.txt"))


def test_evaluation_script_over_sequence_folders(tmp_path, capsys):
    import json

    from scripts.evaluate_mot import main as evaluate_main

    expected = {}
    for seed in (1, 2):
        scene = generate_scene(num_frames=40, num_objects=4, seed=seed)
        name = f"SEQ-{seed}"
        write_mot(tmp_path / "gt" / name / "gt" / "gt.txt", scene.ground_truth)
        detections = simulate_detections(scene.ground_truth, scene.width, scene.height, "medium", seed=seed)
        results = track_detections(detections.rows, num_frames=40)
        write_mot(tmp_path / "results" / f"{name}.txt", results)
        expected[name] = evaluate_mot(
            read_mot(tmp_path / "gt" / name / "gt" / "gt.txt"), read_mot(tmp_path / "results" / f"{name}.txt")
        )
    summaries = evaluate_main(
        [
            "--gt_dir",
            str(tmp_path / "gt"),
            "--results_dir",
            str(tmp_path / "results"),
            "--json",
            str(tmp_path / "metrics.json"),
        ]
    )
    assert summaries["SEQ-1"] == expected["SEQ-1"] and summaries["SEQ-2"] == expected["SEQ-2"]
    assert summaries["COMBINED"] == combine_summaries(list(expected.values()))
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["COMBINED"]["num_switches"] == summaries["COMBINED"].num_switches
    assert "COMBINED" in capsys.readouterr().out
    (tmp_path / "results" / "SEQ-2.txt").unlink()
    with pytest.raises(FileNotFoundError, match="SEQ-2"):
        evaluate_main(["--gt_dir", str(tmp_path / "gt"), "--results_dir", str(tmp_path / "results")])
