"""scripts/cleanup_low_count_dirs.py: dry run by default, deletes only with --execute, never follows links."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "cleanup_low_count_dirs.py"
spec = importlib.util.spec_from_file_location("cleanup_low_count_dirs", SCRIPT)
cleanup = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = cleanup  # dataclasses look their module up there
spec.loader.exec_module(cleanup)


def make_class(root: Path, name: str, n_images: int, extra_files=("notes.txt",)) -> Path:
    folder = root / name
    (folder / "nested").mkdir(parents=True)
    for i in range(n_images):
        target = folder / "nested" if i % 2 else folder
        (target / f"img{i}.JPG").write_bytes(b"x")
    for extra in extra_files:
        (folder / extra).write_text("not an image")
    return folder


@pytest.fixture
def data_root(tmp_path):
    root = tmp_path / "data"
    make_class(root, "many", 5)
    make_class(root, "few", 2)
    make_class(root, "empty", 0)
    outside = make_class(tmp_path, "outside", 1)
    (root / "linked_class").symlink_to(outside, target_is_directory=True)
    (root / "many" / "linked.jpg").symlink_to(outside / "img0.JPG")  # not counted
    (root / "few" / "escape").symlink_to(outside, target_is_directory=True)  # not followed when deleting
    return root


def test_counts_recursively_and_ignores_links(data_root):
    folders = {f.path.name: f for f in cleanup.scan_class_folders(data_root)}
    assert {name: f.image_count for name, f in folders.items() if not f.is_symlink} == {
        "many": 5, "few": 2, "empty": 0}
    assert folders["linked_class"].is_symlink


def test_dry_run_lists_without_deleting(data_root, capsys):
    assert cleanup.main(["--data-root", str(data_root), "--min-images", "3"]) == 0
    out = capsys.readouterr().out
    assert "would delete: empty (0 images)" in out and "would delete: few (2 images)" in out
    assert "many" not in out.replace("skipped", "") and "dry run" in out
    assert "skipped (symbolic link, not followed): linked_class" in out
    assert all((data_root / name).is_dir() for name in ("many", "few", "empty", "linked_class"))


def test_execute_deletes_only_low_count_folders_inside_the_root(data_root, capsys):
    outside = data_root.parent / "outside"
    assert cleanup.main(["--data-root", str(data_root), "--min-images", "3", "--execute"]) == 0
    assert "deleted: few (2 images)" in capsys.readouterr().out
    assert sorted(p.name for p in data_root.iterdir()) == ["linked_class", "many"]
    assert (outside / "img0.JPG").is_file()  # the link inside "few" was removed, not followed
    assert (data_root / "many" / "linked.jpg").is_symlink()


def test_bad_roots_are_clear_errors(tmp_path, capsys, monkeypatch):
    def exit_code(argv):
        with pytest.raises(SystemExit) as exit_info:
            cleanup.run(cleanup.main, argv)
        return exit_info.value.code

    assert exit_code(["--data-root", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "file.txt").write_text("x")
    assert exit_code(["--data-root", str(tmp_path / "file.txt")]) == 2
    assert "not a directory" in capsys.readouterr().err
    monkeypatch.delenv(cleanup.DATA_ROOT_ENV, raising=False)
    with pytest.raises(SystemExit):
        cleanup.main(["--execute"])
    assert "no data root" in capsys.readouterr().err
    with pytest.raises(ValueError, match="at least 1"):
        cleanup.cleanup_low_count_dirs(tmp_path, min_images=0)


def test_data_root_from_environment(data_root, monkeypatch, capsys):
    monkeypatch.setenv(cleanup.DATA_ROOT_ENV, str(data_root))
    assert cleanup.main(["--min-images", "1", "--execute"]) == 0
    assert "deleted: empty (0 images)" in capsys.readouterr().out
    assert not (data_root / "empty").exists() and (data_root / "few").is_dir()
