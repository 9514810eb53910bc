"""Every entry point answers bad input with one ``error:`` line and exit status 2, never a traceback.

Each case would fail if the script let the exception escape (traceback, exit 1), printed a second
error line, or checked an expensive input (weights, network) before the cheap one the case breaks.
"""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from myutils.cli import InputError, error_message, options_to_argv, positive_int, run, unit_float

ROOT = Path(__file__).resolve().parents[1]


def _cases(tmp: Path) -> dict[str, tuple[list[str], str]]:
    """name -> (argv after the script, text the error line must contain)."""
    junk = tmp / "junk.pth"
    evil = tmp / "evil.pt"
    missing = tmp / "missing"
    not_video = tmp / "clip.mp4"
    gallery = tmp / "gallery" / "a_class"
    return {
        "train.py data root before model": (
            ["train.py", "--data_root", str(missing), "--model_name", "no_such_model"], f"{missing}"),
        "train.py img_size": (["train.py", "--data_root", str(tmp), "--img_size", "-3"], "--img_size"),
        "augment_images.py": (["augment_images.py", str(missing / "a.png")], "a.png"),
        "test_model.py junk checkpoint": (
            ["test_model.py", "--model_path", str(junk), "--gallery_root", str(gallery.parent),
             "--images", str(missing)], f"{junk} is not a checkpoint file"),
        "test_model.py gallery before model": (
            ["test_model.py", "--model_path", str(junk), "--gallery_root", str(missing), "--images", "x.png"],
            f"{missing}"),
        "main_train.py": (["main_train.py", "--data", str(missing)], f"{missing}"),
        "main_train.py lr": (["main_train.py", "--lr", "nan"], "--lr"),
        "val.py": (["val.py", "--data", str(missing)], f"{missing}"),
        "tracking.py video before weights": (
            ["tracking.py", "--video", str(not_video), "--yolo_weights", str(junk)], f"{not_video}"),
        "tracking.py weights": (["tracking.py", "--frames", str(gallery), "--yolo_weights", str(junk)], f"{junk}"),
        "tracking.py detections": (["tracking.py", "--detections", str(missing)], f"{missing}"),
        "tracking.py refused pickle": (
            ["tracking.py", "--frames", str(gallery), "--yolo_weights", str(evil)],
            f"error: {evil}: refused untrusted object posix.system in the checkpoint (not a YOLOv7 weights file?)"),
        "tracking.py classes with a detection file": (
            ["tracking.py", "--detections", str(missing), "--classes", "0"], "no class column"),
        "train_senet_triplet.py": (
            ["train_transformer3D/triplet/train_senet_triplet.py", "--data_dir", str(missing)], f"{missing}"),
        "cleanup_low_count_dirs.py": (["scripts/cleanup_low_count_dirs.py", "--data-root", str(missing)], f"{missing}"),
        "train_semiseg.py data root before networks": (
            ["scripts/train_semiseg.py", "--root_path", str(missing), "--dataset", "la"], f"{missing}"),
        "train_semiseg.py patch size": (
            ["scripts/train_semiseg.py", "--root_path", str(tmp), "--patch_size", "30", "32"], "multiples of 16"),
        "make_semiseg_data.py": (["scripts/make_semiseg_data.py", "--out", str(tmp / "d"), "--train", "0"], "--train"),
        "demo_supcon.py": (["scripts/demo_supcon.py", "--out", str(tmp / "s"), "--epochs", "0"], "--epochs"),
        "evaluate_mot.py": (["scripts/evaluate_mot.py", "--gt", str(missing), "--results", str(missing)], f"{missing}"),
        "extract_roi_features.py source before weights": (
            ["scripts/extract_roi_features.py", "--source", str(missing), "--output", str(tmp / "o"),
             "--yolo_weights", str(junk)], f"{missing}"),
        "make_face_feature_data.py": (
            ["scripts/make_face_feature_data.py", "--out", str(tmp / "f"), "--num_persons", "0"], "--num_persons"),
        "make_roi_demo_data.py": (["scripts/make_roi_demo_data.py", "--out", str(tmp / "r"), "--frames", "0"], "--frames"),
        "map_face_features.py features before weights": (
            ["scripts/map_face_features.py", "--model", str(junk), "--features", str(missing / "f.npy"),
             "--metadata", str(missing / "m.json"), "--output", str(tmp / "mapped.npy")], f"{missing / 'f.npy'}"),
        "map_face_features.py junk checkpoint": (
            ["scripts/map_face_features.py", "--model", str(junk), "--features", str(tmp / "faces" / "video_feature.npy"),
             "--metadata", str(tmp / "faces" / "video_metadata.json"), "--output", str(tmp / "mapped.npy")],
            f"{junk} is not a checkpoint file"),
        "export_onnx.py senet checkpoint": (
            ["scripts/export_onnx.py", "senet", "--checkpoint", str(missing / "c.pth"), "--output", str(tmp / "x")],
            "--checkpoint"),
        "export_onnx.py": (["scripts/export_onnx.py"], "network"),
        "export_onnx.py yolov7_backbone": (
            ["scripts/export_onnx.py", "yolov7_backbone", "--output", str(tmp / "b"), "--weights", str(missing)],
            f"--weights {missing}: no such file"),
        "export_onnx.py roi_encoder": (
            ["scripts/export_onnx.py", "roi_encoder", "--output", str(tmp / "e"), "--checkpoint", str(junk)],
            f"{junk} is not a checkpoint file"),
        "extract_roi_features.py classes with labels": (
            ["scripts/extract_roi_features.py", "--source", str(gallery), "--output", str(tmp / "o2"),
             "--boxes", "gt", "--classes", "0"], "--classes filters detections"),
        "export_onnx.py embedding checkpoint": (
            ["scripts/export_onnx.py", "embedding", "--output", str(tmp / "e"), "--checkpoint", str(missing)],
            "--checkpoint"),
        "export_gallery.py gallery before model": (
            ["scripts/export_gallery.py", "--model_path", str(junk), "--gallery_root", str(missing), "--out",
             str(tmp / "g")], f"{missing}"),
        "test_model.py min_score before model": (
            ["test_model.py", "--model_path", str(junk), "--gallery_root", str(gallery.parent), "--images", "x.png",
             "--min_score", "2"], "--min_score"),
        "prototype_bench.py": (["bench/prototype_bench.py", "--n", "0"], "--n"),
        "semiseg_bench.py": (["bench/semiseg_bench.py", "--out", str(tmp / "b"), "--labelnum", "20"], "--labelnum"),
        "roi_bench.py": (["bench/roi_bench.py", "--repeats", "0"], "--repeats"),
        "senet_bench.py": (["bench/senet_bench.py", "--epochs", "0"], "--epochs"),
        "supcon_bench.py": (["bench/supcon_bench.py", "--repeats", "0"], "--repeats"),
        "tracking_bench.py": (["bench/tracking_bench.py", "--reported_seeds", "0"], "--reported_seeds"),
    }


class _SystemCall:
    def __reduce__(self):
        return os.system, ("echo pwned",)


def _run_script(argv: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *argv], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, **(env or {})})


@pytest.fixture(scope="module")
def bad_input_runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bad_input")
    (tmp / "junk.pth").write_text("not a checkpoint")
    import torch

    torch.save({"model": _SystemCall()}, tmp / "evil.pt")  # names os.system: refused, never run
    (tmp / "clip.mp4").write_text("not a video")
    (tmp / "gallery" / "a_class").mkdir(parents=True)
    (tmp / "faces").mkdir()
    np.save(tmp / "faces" / "video_feature.npy", np.zeros((2, 4), dtype=np.float32))
    (tmp / "faces" / "video_metadata.json").write_text('{"metadata": [], "poses": [[0, 0, 0], [40, 0, 0]]}')
    (tmp / "gallery" / "a_class" / "0000.png").write_bytes(
        bytes.fromhex("89504e470d0a1a0a0000000d4948445200000001000000010806000000"
                      "1f15c4890000000d49444154789c6360606060000000050001a5f645400000000049454e44ae426082"))
    cases = _cases(tmp)
    with ThreadPoolExecutor(max_workers=4) as pool:  # each run is mostly a torch import
        results = dict(zip(cases, pool.map(lambda case: _run_script(case[0]), cases.values()), strict=True))
    return cases, results


@pytest.mark.parametrize("name", list(_cases(Path("/tmp"))))
def test_bad_input_gives_one_error_line(bad_input_runs, name):
    cases, results = bad_input_runs
    expected = cases[name][1]
    result = results[name]
    output = result.stdout + result.stderr
    error_lines = [line for line in result.stderr.splitlines() if "error:" in line]
    assert result.returncode == 2, output
    assert "Traceback" not in output
    assert len(error_lines) == 1, output
    assert expected in error_lines[0], output


def test_every_entry_point_is_covered():
    scripts = {"train.py", "augment_images.py", "test_model.py", "main_train.py", "val.py", "tracking.py",
               "train_transformer3D/triplet/train_senet_triplet.py"}
    scripts |= {f"{folder}/{p.name}" for folder in ("scripts", "bench") for p in (ROOT / folder).glob("*.py")}
    covered = {argv[0] for argv, _ in _cases(Path("/tmp")).values()}
    assert scripts <= covered, sorted(scripts - covered)
    for script in scripts:
        assert "run(main)" in (ROOT / script).read_text(), f"{script} does not end with run(main)"


def test_debug_shows_the_traceback(tmp_path):
    argv = ["scripts/cleanup_low_count_dirs.py", "--data-root", str(tmp_path / "missing")]
    assert "Traceback" in _run_script(argv, {"ASCENSION_DEBUG": "1"}).stderr
    assert "Traceback" in _run_script([*argv, "--debug"]).stderr


def test_unexpected_errors_keep_their_traceback(capsys):
    def buggy_main(argv):
        raise KeyError("a bug, not bad input")

    with pytest.raises(KeyError):
        run(buggy_main, [])


def test_run_exit_codes(capsys):
    def failing_main(argv):
        raise InputError("--flag: bad")

    with pytest.raises(SystemExit) as exit_info:
        run(failing_main, [])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == "error: --flag: bad\n"
    with pytest.raises(SystemExit) as exit_info:
        run(lambda argv: 3, [])
    assert exit_info.value.code == 3
    with pytest.raises(SystemExit) as exit_info:
        run(lambda argv: {"a": "result"}, [])
    assert exit_info.value.code == 0


def test_error_message_names_the_file():
    assert error_message(FileNotFoundError(2, "No such file or directory", "/x/y.pth")) == \
        "/x/y.pth: No such file or directory"
    assert error_message(InputError("two\n   lines")) == "two lines"


def test_value_types():
    import argparse

    assert positive_int("3") == 3 and unit_float("0.5") == 0.5
    for parse, text in ((positive_int, "0"), (positive_int, "x"), (unit_float, "1.5"), (unit_float, "nan")):
        with pytest.raises(argparse.ArgumentTypeError):
            parse(text)


def test_options_to_argv_keeps_zero_values():
    """``0 == False``: a membership test (``value in (None, False)``) would drop seed=0 and consistency=0.0."""
    argv = options_to_argv({"seed": 0, "consistency": 0.0, "amp": True, "resume": None, "compile": False,
                            "patch_size": [32, 16], "out": Path("o")})
    assert argv == ["--seed", "0", "--consistency", "0.0", "--amp", "--patch_size", "32", "16", "--out", "o"]


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_requested_without_cuda():
    from myutils.training.precision import resolve_device

    with pytest.raises(InputError, match="--device cuda"):
        resolve_device("cuda")
