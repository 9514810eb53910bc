"""scripts/demo_supcon.py: the demo's data is regenerated unless it matches its fingerprint."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

from myutils.data.image_io import write_image_rgb

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "demo_supcon.py"
spec = importlib.util.spec_from_file_location("demo_supcon", SCRIPT)
demo = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = demo
spec.loader.exec_module(demo)


def test_demo_data_is_reused_only_when_it_matches_its_fingerprint(tmp_path):
    data = tmp_path / "data"
    args = dict(images_per_class=1, queries_per_class=1, img_size=16, seed=0)
    assert demo.prepare_data(data, **args) is True
    fingerprint = demo.data_fingerprint(data)
    assert demo.prepare_data(data, **args) is False  # same arguments, same files: reused

    image = data / "train" / "cap_dots" / "0000.png"
    write_image_rgb(image, np.zeros((16, 16, 3), dtype=np.uint8))  # a file changed by hand
    assert demo.prepare_data(data, **args) is True and demo.data_fingerprint(data) == fingerprint

    assert demo.prepare_data(data, **{**args, "seed": 1}) is True  # another configuration: new data
    assert demo.data_fingerprint(data) != fingerprint
    assert demo.prepare_data(data, **args) is True and demo.data_fingerprint(data) == fingerprint


def test_old_unstamped_demo_data_is_replaced_but_foreign_data_is_refused(tmp_path):
    old = tmp_path / "old" / "data"
    demo.generate_garment_dataset(old / "train", 1, 16, seed=5)  # what earlier versions left, no fingerprint
    demo.generate_garment_dataset(old / "query", 1, 16, seed=6)
    assert demo.prepare_data(old, 1, 1, 16, 0) is True and (old / "fingerprint.json").is_file()
    foreign = tmp_path / "mine" / "data"
    (foreign / "train" / "holiday_photos").mkdir(parents=True)
    (foreign / "train" / "holiday_photos" / "beach.jpg").write_bytes(b"x")
    with pytest.raises(ValueError, match="not written by this demo"):
        demo.prepare_data(foreign, 1, 1, 16, 0)
    assert (foreign / "train" / "holiday_photos" / "beach.jpg").is_file()
