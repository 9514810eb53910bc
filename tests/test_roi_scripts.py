"""Command lines of the ROI scripts: --help describes every option; the demo-data generator runs."""

import json

import pytest

import main_train
import val
from myutils.tracking.mot_io import read_mot
from scripts import extract_roi_features, make_roi_demo_data


@pytest.mark.parametrize("module", [main_train, val, extract_roi_features, make_roi_demo_data])
def test_help_describes_every_option(module, capsys):
    with pytest.raises(SystemExit) as exit_info:
        module.parse_args(["--help"])
    assert exit_info.value.code == 0
    lines = capsys.readouterr().out.splitlines()
    option_lines = [i for i, line in enumerate(lines) if line.startswith("  --")]
    assert len(option_lines) >= 5
    for i in option_lines:
        # argparse puts the help text after the option or, for long options, on the next line
        described_inline = "  " in lines[i].strip()
        described_below = i + 1 < len(lines) and lines[i + 1].startswith(" " * 20) and lines[i + 1].strip()
        assert described_inline or described_below, f"{lines[i].strip()} has no description"


def test_main_train_defaults_match_the_original():
    args = main_train.parse_args([])
    assert (args.epochs, args.batch_size, args.lr, args.min_lr, args.warmup_epochs, args.conf_threshold) == (
        500, 256, 1e-4, 1e-5, 10, 0.3)
    assert (args.weight_decay, args.grad_clip, args.save_interval) == (1e-4, 7.0, 10)


def test_make_roi_demo_data(tmp_path):
    args = make_roi_demo_data.parse_args(["--out", str(tmp_path), "--train_scenes", "2", "--frames", "8",
                                          "--objects", "3", "--val_pairs", "2", "--frame_gap", "3"])
    written = make_roi_demo_data.make_roi_demo_data(args)
    assert [p.split("/")[-1] for p in written["sequences"]] == ["SYN-01", "SYN-02"]
    for sequence in written["sequences"]:
        gt = read_mot(f"{sequence}/gt/gt.txt")
        assert gt[:, 0].max() <= 8 and len(gt) > 0
    labels = json.loads((tmp_path / "val" / "pre" / "lable" / "1.json").read_text())
    now = json.loads((tmp_path / "val" / "now" / "lable" / "1.json").read_text())
    assert now["frame"] - labels["frame"] == 3
