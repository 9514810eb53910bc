import cv2
import numpy as np
import pytest

from myutils.data.image_io import write_image_rgb
from myutils.detection.frame_source import FrameSource


def _image(value):
    return np.full((32, 48, 3), value, dtype=np.uint8)


def test_image_folder_numbering_step_and_corrupt_files(tmp_path):
    for number in (1, 2, 3, 10):
        write_image_rgb(tmp_path / "seq" / "img1" / f"{number:06d}.png", _image(number * 10))
    (tmp_path / "seq" / "img1" / "000004.jpg").write_bytes(b"broken")
    source = FrameSource(tmp_path / "seq")  # a MOT sequence folder reads img1/
    frames = list(source)
    assert [f.number for f in frames] == [1, 2, 3, 10] and source.skipped == 1
    assert frames[3].image[0, 0, 0] == 100 and frames[0].image.shape == (32, 48, 3)
    assert [f.number for f in FrameSource(tmp_path / "seq" / "img1", step=2)] == [1, 3, 10]  # files 1, 3 and 10
    with pytest.raises(FileNotFoundError):
        FrameSource(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no images"):
        FrameSource(tmp_path / "empty")


def test_video_frames(tmp_path):
    path = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (48, 32))
    assert writer.isOpened()
    for value in (20, 120, 220):
        writer.write(_image(value))
    writer.release()
    source = FrameSource(path)
    frames = list(source)
    assert len(source) == 3 and [f.number for f in frames] == [1, 2, 3]
    assert frames[1].name.endswith("#2") and abs(int(frames[2].image.mean()) - 220) < 8
    assert [f.number for f in FrameSource(path, step=2)] == [1, 3]
