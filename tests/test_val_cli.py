"""val.py end to end on a tiny generated validation set."""

import json
import shutil

import pytest
import torch

import val
from myutils.roi.encoder import ROIEncoder, encoder_checkpoint_state
from myutils.synthetic.scenes import generate_scene, write_validation_pairs
from myutils.training.checkpoint import save_checkpoint


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "last.pth"
    state = {**encoder_checkpoint_state(ROIEncoder()), "feature_metadata": {"img_size": 128, "random_weights_seed": 0}}
    return save_checkpoint(state, path)


def test_identical_frames_give_perfect_association(tmp_path, checkpoint):
    """With "pre" a copy of "now" every object's nearest neighbour is itself: Top-1 = 1, rank 1."""
    scene = generate_scene(num_frames=20, num_objects=5, width=256, height=160, seed=4)
    source = write_validation_pairs(scene, tmp_path / "src", num_pairs=2, frame_gap=3, min_visibility=0.5)
    data = tmp_path / "val"
    (data / "now").mkdir(parents=True)
    shutil.copytree(source / "now" / "pic", data / "now" / "pic")
    shutil.copytree(source / "now" / "lable", data / "now" / "label")  # the correctly spelled folder works too
    shutil.copytree(data / "now", data / "pre")
    output = tmp_path / "metrics.json"
    with pytest.warns(UserWarning, match="randomly initialised"):
        result = val.main(["--data", str(data), "--checkpoint", str(checkpoint), "--output", str(output)])
    labels = [json.loads((data / "now" / "label" / f"{k}.json").read_text())["annotations"] for k in range(2)]
    written = json.loads(output.read_text())
    assert written["settings"]["img_size"] == 128
    for k, pair in enumerate(written["pairs"]):
        assert pair["num_queries"] == pair["num_valid"] == len(labels[k]) > 0
        assert pair["top1"] == 1.0 and pair["mean_rank"] == 1.0 and pair["mrr"] == 1.0
    assert written["mean"] == pytest.approx(result["mean"])


def test_real_pairs_and_untrained_baseline(tmp_path, checkpoint, capsys):
    scene = generate_scene(num_frames=30, num_objects=6, width=256, height=160, seed=5)
    data = write_validation_pairs(scene, tmp_path / "val", num_pairs=2, frame_gap=5)
    with pytest.warns(UserWarning):
        result = val.main(["--data", str(data), "--checkpoint", str(checkpoint), "--untrained"])
    table = capsys.readouterr().out
    assert "Top-1" in table and "Num. Valid" in table and "mean" in table
    assert result["settings"]["encoder"] == "untrained" and result["settings"]["img_size"] == 128
    for pair in result["pairs"]:
        assert 0 <= pair["top1"] <= 1 and 1 <= pair["mean_rank"] <= pair["num_queries"]
        assert pair["num_valid"] <= pair["num_queries"]
    with pytest.raises(FileNotFoundError, match="pic"):
        val.main(["--data", str(tmp_path / "nowhere"), "--untrained"])
