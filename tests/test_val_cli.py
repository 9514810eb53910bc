"""val.py end to end on a tiny generated validation set."""

import json
import shutil

import numpy as np
import pytest
import torch
from by_hand import roi_features_by_hand

import val
from myutils.data.image_io import read_image_rgb, write_image_rgb
from myutils.roi.encoder import ROIEncoder, encoder_checkpoint_state
from myutils.synthetic.scenes import generate_scene, write_validation_pairs
from myutils.training.checkpoint import save_checkpoint


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "last.pth"
    state = {**encoder_checkpoint_state(ROIEncoder()), "feature_metadata": {"img_size": 128, "random_weights_seed": 0}}
    return save_checkpoint(state, path)


def _embed_by_hand(image, labels, model, encoder, size=128):
    height, width = image.shape[:2]
    boxes = [[(a["bbox"]["cx"] - a["bbox"]["w"] / 2) * width, (a["bbox"]["cy"] - a["bbox"]["h"] / 2) * height,
              (a["bbox"]["cx"] + a["bbox"]["w"] / 2) * width, (a["bbox"]["cy"] + a["bbox"]["h"] / 2) * height]
             for a in labels]
    with torch.no_grad():
        return encoder(roi_features_by_hand(image, boxes, model, size))


def _metrics_by_hand(e_now, now_ids, e_pre, pre_ids):
    probabilities = torch.softmax(e_now @ e_pre.T / 0.2, dim=1)
    ranks = []
    for i, identity in enumerate(now_ids):
        if identity in pre_ids:
            true = probabilities[i, pre_ids.index(identity)]
            ranks.append(1 + sum(float(p) >= float(true) for j, p in enumerate(probabilities[i])
                                 if pre_ids[j] != identity))
    return {"top1": sum(r == 1 for r in ranks) / len(ranks), "mean_rank": sum(ranks) / len(ranks),
            "mrr": sum(1 / r for r in ranks) / len(ranks), "num_valid": float(len(ranks)),
            "num_queries": float(len(now_ids))}


def test_shifted_pre_frame_matches_an_independent_computation(tmp_path, checkpoint, planted_weights):
    """"pre" is "now" moved 64 px right inside a wider frame (another letterbox), its objects listed in
    another order and one left out: val.py's numbers must equal embeddings computed by hand with
    torchvision's roi_align; the boxes left unshifted would give other numbers."""
    from myutils.detection.yolov7_checkpoint import load_yolov7_checkpoint
    from myutils.roi.encoder import load_roi_encoder

    scene = generate_scene(num_frames=20, num_objects=6, width=256, height=160, seed=4)
    source = write_validation_pairs(scene, tmp_path / "src", num_pairs=2, frame_gap=3, min_visibility=0.5)
    data = tmp_path / "val"
    shutil.copytree(source / "now" / "pic", data / "now" / "pic")
    shutil.copytree(source / "now" / "lable", data / "now" / "label")  # the correctly spelled folder works too
    (data / "pre" / "pic").mkdir(parents=True)
    (data / "pre" / "lable").mkdir(parents=True)
    model, encoder = load_yolov7_checkpoint(planted_weights.path).model, load_roi_encoder(checkpoint)
    expected, unshifted = [], []
    for k in range(2):
        now = read_image_rgb(data / "now" / "pic" / f"{k}.jpg")
        pre = np.full((160, 320, 3), 60, np.uint8)
        pre[:, 64:] = now
        write_image_rgb(data / "pre" / "pic" / f"{k}.png", pre)
        now_labels = json.loads((data / "now" / "label" / f"{k}.json").read_text())["annotations"]
        assert len(now_labels) >= 3
        pre_labels = [{**a, "bbox": {**a["bbox"], "cx": (a["bbox"]["cx"] * 256 + 64) / 320, "w": a["bbox"]["w"] * 0.8}}
                      for a in now_labels[::-1][1:]]  # reversed, the (originally) last object left out
        (data / "pre" / "lable" / f"{k}.json").write_text(json.dumps({"annotations": pre_labels}))
        now_ids, pre_ids = [a["id"] for a in now_labels], [a["id"] for a in pre_labels]
        e_now = _embed_by_hand(now, now_labels, model, encoder)
        expected.append(_metrics_by_hand(e_now, now_ids, _embed_by_hand(pre, pre_labels, model, encoder), pre_ids))
        wrong = _embed_by_hand(pre, [{**a, "bbox": b["bbox"]} for a, b in zip(pre_labels, now_labels[::-1][1:],
                                                                                  strict=True)], model, encoder)
        unshifted.append(_metrics_by_hand(e_now, now_ids, wrong, pre_ids))
    output = tmp_path / "metrics.json"
    result = val.main(["--data", str(data), "--checkpoint", str(checkpoint), "--output", str(output),
                       "--yolo_weights", str(planted_weights.path)])
    written = json.loads(output.read_text())
    assert written["settings"]["img_size"] == 128
    for pair, wanted in zip(written["pairs"], expected, strict=True):
        assert pair["num_valid"] == pair["num_queries"] - 1
        for key, value in wanted.items():
            assert pair[key] == pytest.approx(value, abs=1e-9), key
    assert expected != unshifted  # the input tells a box-mapping error apart
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
