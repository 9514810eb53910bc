"""MOTChallenge files and sequence folders: a strict reader, seqinfo.ini, seqmaps and the frame rate."""

import cv2
import numpy as np
import pytest

from myutils.tracking.frame_rate import DEFAULT_FPS, sequence_fps
from myutils.tracking.mot_io import read_mot, read_seqinfo, read_seqmap, write_mot

GOOD = "1,-1,10,20,30,40,0.9,-1,-1,-1\n2,-1,11,21,30,40,0.8,-1,-1,-1\n"


def write(tmp_path, text, name="det.txt"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_reader_accepts_mot_rows_and_pads_short_ones(tmp_path):
    rows = read_mot(write(tmp_path, GOOD + "3;-1;12;22;30;40\n\n4,-1,13,23,30,40,0.7,\n"))
    assert rows.shape == (4, 10)
    assert rows[2].tolist() == [3, -1, 12, 22, 30, 40, -1, -1, -1, -1]  # ';' separated, padded with -1
    assert rows[3, 6] == pytest.approx(0.7)  # a trailing separator is tolerated


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("3,,12,22,30,40,0.9", "empty field 2"),  # would silently shift every later column
        ("3,-1,12,nan,30,40,0.9", "non-finite"),
        ("3,-1,12,22,inf,40,0.9", "non-finite"),
        ("3,-1,twelve,22,30,40", "not a number"),
        ("3,-1,12,22,30", "at least 6"),
        ("0,-1,12,22,30,40,0.9", "MOT frames are whole numbers starting at 1"),
        ("2.5,-1,12,22,30,40,0.9", "MOT frames are whole numbers starting at 1"),
    ],
)
def test_reader_rejects_bad_rows_naming_file_and_line(tmp_path, line, message):
    path = write(tmp_path, GOOD + line + "\n")
    with pytest.raises(ValueError, match=message) as error:
        read_mot(path)
    assert f"{path}:3:" in str(error.value)


def test_written_results_read_back(tmp_path):
    rows = np.array([[2, 5, 1.234, 2, 3, 4, 0.5, -1, -1, -1], [1, 7, 10, 20, 30, 40, 0.9, -1, -1, -1]])
    again = read_mot(write_mot(tmp_path / "out" / "r.txt", rows))
    assert again[:, :2].tolist() == [[1, 7], [2, 5]]  # sorted by frame, then id
    assert again[1, 2] == pytest.approx(1.23)


def sequence_folder(tmp_path, frame_rate="25"):
    folder = tmp_path / "MOT17-02"
    (folder / "det").mkdir(parents=True)
    (folder / "img1").mkdir()
    (folder / "det" / "det.txt").write_text(GOOD)
    (folder / "seqinfo.ini").write_text(
        f"[Sequence]\nname=MOT17-02\nimDir=img1\nframeRate={frame_rate}\nseqLength=600\n"
        "imWidth=1920\nimHeight=1080\nimExt=.jpg\n"
    )
    return folder


def test_seqinfo_and_frame_rate_precedence(tmp_path):
    folder = sequence_folder(tmp_path)
    assert read_seqinfo(folder)["frameRate"] == "25" and read_seqinfo(folder / "seqinfo.ini")["seqLength"] == "600"
    # seqinfo.ini found from the sequence, its img1/ or its det/det.txt
    assert sequence_fps(frames=folder / "img1")[0] == 25.0
    assert sequence_fps(detections=folder / "det" / "det.txt") == (25.0, str(folder / "seqinfo.ini"))
    assert sequence_fps(fps=14.0, frames=folder)[0] == 14.0  # --fps wins
    video = tmp_path / "clip.mp4"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), 12.0, (64, 48))
    for _ in range(3):
        writer.write(np.zeros((48, 64, 3), np.uint8))
    writer.release()
    assert sequence_fps(video=video)[0] == pytest.approx(12.0)
    assert sequence_fps(detections=tmp_path / "elsewhere.txt")[0] == DEFAULT_FPS
    with pytest.raises(ValueError, match="frameRate"):
        sequence_fps(frames=sequence_folder(tmp_path / "bad", frame_rate="fast"))
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "seqinfo.ini").write_text("name=x\n")
    with pytest.raises(ValueError, match="seqinfo.ini"):
        read_seqinfo(tmp_path / "broken")


def test_seqmap(tmp_path):
    assert read_seqmap(write(tmp_path, "name\nMOT17-02\n\nMOT17-04\n", "map.txt")) == ["MOT17-02", "MOT17-04"]
    with pytest.raises(ValueError, match="no sequence"):
        read_seqmap(write(tmp_path, "name\n", "empty.txt"))
    with pytest.raises(FileNotFoundError):
        read_seqmap(tmp_path / "missing.txt")
