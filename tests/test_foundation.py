"""Shared helpers of myutils/: checkpoints, seeding, schedules, class folders, retrieval metrics."""

from __future__ import annotations

import math
import os
import random
import sys
import time

import faiss
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from pytorch_metric_learning.distances import CosineSimilarity
from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator
from pytorch_metric_learning.utils.inference import CustomKNN

from myutils.data.image_folder import (
    ImageFolderDataset,
    collate_skip_none,
    scan_image_folder,
    split_per_class,
)
from myutils.data.image_io import read_image_rgb, write_image_rgb
from myutils.files import atomic_output
from myutils.retrieval import metrics, search
from myutils.retrieval.metrics import knn_classification, retrieval_metrics
from myutils.retrieval.search import top_k_search
from myutils.training.checkpoint import load_checkpoint, save_checkpoint
from myutils.training.schedule import warmup_cosine_factor, warmup_cosine_scheduler
from myutils.training.seeding import (
    capture_rank_rng_states,
    capture_rng_state,
    restore_rng_state,
    resume_rank_rng_states,
    seed_everything,
)


def test_checkpoint_round_trip_is_weights_only_and_atomic(tmp_path):
    state = {"model": {"w": torch.randn(3, 2)}, "epoch": 4, "classes": ["a", "ü"], "metrics": {"map": 0.5}}
    path = save_checkpoint(state, tmp_path / "sub" / "ckpt.pth")
    assert list(path.parent.iterdir()) == [path]  # no temp file left behind
    loaded = torch.load(path, weights_only=True)
    assert torch.equal(loaded["model"]["w"], state["model"]["w"])
    assert loaded["classes"] == ["a", "ü"] and loaded["epoch"] == 4


class ForeignObject:
    pass


def test_load_checkpoint_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "missing.pth")
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a checkpoint file"):
        load_checkpoint(bad)
    foreign = tmp_path / "b.pth"
    torch.save({"sampler": ForeignObject()}, foreign)  # a pickled class: weights_only=True must refuse it
    with pytest.raises(ValueError, match="objects that weights_only=True refuses"):
        load_checkpoint(foreign)


def test_rng_state_survives_a_checkpoint(tmp_path):
    seed_everything(3)
    save_checkpoint({"rng": capture_rng_state()}, tmp_path / "rng.pth")
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    restore_rng_state(load_checkpoint(tmp_path / "rng.pth")["rng"])
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected


def test_rank_rng_states_resume_exactly_or_reseed_with_a_warning(tmp_path, capsys):
    """A world of one continues the one saved stream (list or bare state); a checkpoint of two processes cannot,
    so the stream is re-seeded from the fallback seed (a restore of rank 0's state would repeat, not re-seed)."""
    seed_everything(5)
    save_checkpoint({"rng": capture_rank_rng_states()}, tmp_path / "rng.pth")
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    saved = load_checkpoint(tmp_path / "rng.pth")["rng"]
    assert len(saved) == 1
    for states in (saved, saved[0]):
        assert resume_rank_rng_states(states, fallback_seed=9, source="x.pth")
        assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected
    assert not resume_rank_rng_states(saved * 2, fallback_seed=9, source="x.pth")
    drawn = (random.random(), torch.rand(1).item())
    seed_everything(9)
    assert drawn == (random.random(), torch.rand(1).item())
    assert "x.pth holds the RNG state of 2 process(es), this run has 1" in capsys.readouterr().out


def test_warmup_cosine_factor():
    assert warmup_cosine_factor(0, 4, 20) == pytest.approx(0.25)
    assert warmup_cosine_factor(3, 4, 20) == pytest.approx(1.0)
    assert warmup_cosine_factor(4, 4, 20) == pytest.approx(1.0)
    assert warmup_cosine_factor(12, 4, 20) == pytest.approx(0.5)
    assert warmup_cosine_factor(20, 4, 20, min_factor=0.1) == pytest.approx(0.1)


def test_warmup_cosine_extends_without_a_jump_and_survives_the_scheduler_state(tmp_path):
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    scheduler = warmup_cosine_scheduler(optimizer, 2, 10)
    for _ in range(6):
        optimizer.step()
        scheduler.step()
    state = scheduler.state_dict()
    torch.save(state, tmp_path / "s.pt")
    restored = warmup_cosine_scheduler(torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0), 2, 99)
    restored.load_state_dict(torch.load(tmp_path / "s.pt", weights_only=True))  # the 10-step plan comes back, not 99
    schedule = restored.lr_lambdas[0]
    assert schedule.total_steps == 10 and schedule(6) == pytest.approx(warmup_cosine_factor(6, 2, 10))
    before = schedule(6)
    schedule.extend(6, 20)
    assert schedule(6) == pytest.approx(before) and schedule(20) == pytest.approx(0.0)
    values = [schedule(step) for step in range(6, 21)]
    assert all(b < a for a, b in zip(values, values[1:], strict=False))
    # the stretched remainder is the rest of the old cosine, slowed down: progress 0.5 at step 6, 0.75 at 13
    assert schedule(13) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.75)))
    during_warmup = warmup_cosine_scheduler(torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0), 4, 8)
    during_warmup.lr_lambdas[0].extend(1, 16)  # still warming up: the cosine simply starts later
    assert during_warmup.lr_lambdas[0](10) == pytest.approx(warmup_cosine_factor(10, 4, 16))


def test_image_folder_unicode_corrupt_and_split(tmp_path):
    rng = np.random.default_rng(0)
    for name, count in [("裙子", 4), ("shirt", 3), ("single", 1)]:
        for i in range(count):
            write_image_rgb(tmp_path / name / f"图{i}.png", rng.integers(0, 255, (8, 8, 3), dtype=np.uint8))
    (tmp_path / "shirt" / "broken.jpg").write_bytes(b"\xff\xd8 garbage")
    records, classes = scan_image_folder(tmp_path)
    assert classes == sorted(["裙子", "shirt", "single"]) and len(records) == 9
    assert read_image_rgb(tmp_path / "裙子" / "图0.png").shape == (8, 8, 3)

    train, val = split_per_class(records, 0.25, seed=0)
    assert len(train) + len(val) == 9
    assert {r.label for r in train} == {0, 1, 2}  # every class keeps training images, the single one too
    assert classes.index("single") not in {r.label for r in val}

    dataset = ImageFolderDataset(records, transform=lambda image: torch.from_numpy(image).permute(2, 0, 1))
    inputs, labels, indices, skipped = collate_skip_none([dataset[i] for i in range(len(dataset))])
    assert inputs.shape == (8, 3, 8, 8) and len(indices) == 8
    assert [records[i].path for i in skipped] == [str(tmp_path / "shirt" / "broken.jpg")]
    assert collate_skip_none([dataset[int(skipped[0])]])[0] is None


def test_a_folder_without_images_is_not_a_class(tmp_path):
    write_image_rgb(tmp_path / "shirt" / "a.png", np.zeros((4, 4, 3), dtype=np.uint8))
    write_image_rgb(tmp_path / "skirt" / "nested" / "b.png", np.zeros((4, 4, 3), dtype=np.uint8))
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes_only").mkdir()
    (tmp_path / "notes_only" / "readme.txt").write_text("no images here")
    records, classes = scan_image_folder(tmp_path)
    assert classes == ["shirt", "skirt"] and [r.label for r in records] == [0, 1]
    (tmp_path / "shirt" / "a.png").unlink()
    (tmp_path / "skirt" / "nested" / "b.png").unlink()
    with pytest.raises(ValueError, match="no images found"):
        scan_image_folder(tmp_path)


def test_scan_image_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        scan_image_folder(tmp_path / "nope")
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(NotADirectoryError):
        scan_image_folder(tmp_path / "file.txt")
    with pytest.raises(ValueError, match="no class folders"):
        scan_image_folder(tmp_path)


def _pml_metrics(query, query_labels, gallery, gallery_labels, same_set):
    calculator = AccuracyCalculator(
        include=("precision_at_1", "r_precision", "mean_average_precision_at_r", "mean_reciprocal_rank"),
        k=None,
        knn_func=CustomKNN(CosineSimilarity()),
        device=torch.device("cpu"),
    )
    return calculator.get_accuracy(query, query_labels, gallery, gallery_labels, ref_includes_query=same_set)


@pytest.mark.parametrize("same_set", [True, False])
def test_retrieval_metrics_equal_accuracy_calculator(same_set):
    torch.manual_seed(0)
    gallery_labels = torch.randint(0, 6, (120,))
    gallery = F.normalize(torch.randn(120, 16) + 1.5 * F.one_hot(gallery_labels, 16).float(), dim=1)
    if same_set:
        query, query_labels = gallery, gallery_labels
    else:
        query_labels = torch.randint(0, 7, (50,))  # label 6 has no gallery match
        query = F.normalize(torch.randn(50, 16) + 1.5 * F.one_hot(query_labels, 16).float(), dim=1)
    ours = retrieval_metrics(query, query_labels, gallery, gallery_labels, queries_in_gallery=same_set, chunk_size=17)
    reference = _pml_metrics(query, query_labels, gallery, gallery_labels, same_set)
    assert ours["precision_at_1"] == pytest.approx(reference["precision_at_1"], abs=1e-6)
    assert ours["r_precision"] == pytest.approx(reference["r_precision"], abs=1e-6)
    assert ours["map_at_r"] == pytest.approx(reference["mean_average_precision_at_r"], abs=1e-6)
    assert ours["mrr"] == pytest.approx(reference["mean_reciprocal_rank"], abs=1e-6)

    # recall@K from an independent brute-force ranking
    sims = query @ gallery.T
    if same_set:
        sims.fill_diagonal_(-float("inf"))
    valid = torch.tensor([(gallery_labels == label).sum() - int(same_set) > 0 for label in query_labels])
    top5 = sims.topk(5, dim=1).indices
    hit5 = (gallery_labels[top5] == query_labels[:, None]).any(1)
    assert ours["recall_at_5"] == pytest.approx(hit5[valid].float().mean().item(), abs=1e-6)
    assert ours["num_queries"] == int(valid.sum())


def test_top_k_search_matches_full_sort_in_memory_bounded_blocks(monkeypatch):
    # blocks of 4 queries in one reused buffer: a result left as a view of the buffer would be overwritten
    torch.manual_seed(1)
    query, gallery = F.normalize(torch.randn(9, 8), dim=1), F.normalize(torch.randn(1000, 8), dim=1)
    monkeypatch.setattr(search, "SIMILARITY_BLOCK_ELEMENTS", 4 * 1000)
    monkeypatch.setattr(search, "MIN_BLOCK_ROWS", 1)
    scores, indices = top_k_search(query, gallery, k=5, backend="torch")
    expected = (query @ gallery.T).sort(dim=1, descending=True)
    assert torch.equal(indices, expected.indices[:, :5])
    assert torch.allclose(scores, expected.values[:, :5])


@pytest.mark.parametrize("n_columns, k", [(10, 3), (1024, 1), (1024, 5), (1061, 5), (3000, 17)])
def test_block_top_k_equals_topk(n_columns, k):
    # against torch.topk: a wrong group statistic (mean instead of max) or a forgotten tail (1061 = 16
    # groups of 64 + 37 columns, with the row maxima planted there) picks other columns
    generator = torch.Generator().manual_seed(n_columns + k)
    similarities = torch.randn(40, n_columns, generator=generator)
    similarities[::2, -1] = 10.0
    scores, indices = search.block_top_k(similarities, k)
    expected = similarities.topk(k, dim=1)
    assert torch.equal(scores, expected.values) and torch.equal(indices, expected.indices)


def test_block_top_k_with_ties_returns_k_distinct_columns_of_the_top_values():
    similarities = torch.randint(0, 4, (30, 2000), generator=torch.Generator().manual_seed(0)).float()
    scores, indices = search.block_top_k(similarities, 7)
    assert torch.equal(scores, similarities.topk(7, dim=1).values)
    assert torch.equal(similarities.gather(1, indices), scores)
    assert all(len(set(row.tolist())) == 7 for row in indices)


def test_auto_search_times_both_backends_once_and_keeps_the_faster(monkeypatch):
    generator = torch.Generator().manual_seed(3)
    gallery = F.normalize(torch.randn(3000, 32, generator=generator), dim=1)
    queries = F.normalize(torch.randn(50, 32, generator=generator), dim=1)
    expected = top_k_search(queries, gallery, 5, backend="torch")
    monkeypatch.setattr(search, "PROBE_MIN_MACS", 1)
    monkeypatch.setattr(search, "PROBE_QUERIES", 12)
    real = dict(search._SEARCHES)
    for slow, fast in (("faiss", "torch"), ("torch", "faiss")):
        monkeypatch.setattr(search, "_faster_backend", {})
        calls = []

        def slowed(q, g, k, name=slow):
            time.sleep(0.05)
            return real[name](q, g, k)

        monkeypatch.setitem(search._SEARCHES, slow, slowed)
        monkeypatch.setitem(search._SEARCHES, fast, lambda q, g, k, name=fast, calls=calls: calls.append(len(q)) or real[name](q, g, k))
        assert search.search_backend(queries, gallery) == "timed"
        scores, indices = top_k_search(queries, gallery, 5)  # 12 queries each way, then 26 the faster way
        assert torch.equal(indices, expected[1])  # the three parts in the queries' order
        torch.testing.assert_close(scores, expected[0], rtol=0, atol=1e-5)
        assert search.search_backend(queries, gallery) == fast  # kept for this shape class
        top_k_search(queries, gallery, 5)
        assert calls == [8, 12, 26, 50]  # warm-up, timed part, rest, then the whole next search


def test_faiss_and_torch_search_give_the_same_neighbours(monkeypatch):
    generator = torch.Generator().manual_seed(2)
    gallery = F.normalize(torch.randn(3000, 48, generator=generator), dim=1)
    queries = F.normalize(torch.randn(70, 48, generator=generator), dim=1)
    by_torch = top_k_search(queries, gallery, 10, backend="torch")
    by_faiss = top_k_search(queries, gallery, 10, backend="faiss")
    assert torch.equal(by_faiss[1], by_torch[1])
    torch.testing.assert_close(by_faiss[0], by_torch[0], rtol=0, atol=1e-5)
    # auto: faiss from FAISS_MIN_GALLERY items on, torch below it (search too small to time) or without faiss
    assert search.search_backend(queries, gallery) == "torch"
    monkeypatch.setattr(search, "FAISS_MIN_GALLERY", 3000)
    assert search.search_backend(queries, gallery) == "faiss"
    calls = []
    real_knn = faiss.knn
    monkeypatch.setattr(faiss, "knn", lambda *args, **kwargs: calls.append(1) or real_knn(*args, **kwargs))
    assert torch.equal(top_k_search(queries, gallery, 10)[1], by_torch[1]) and calls == [1]
    monkeypatch.setitem(sys.modules, "faiss", None)  # not installed: import fails
    assert search.search_backend(queries, gallery) == "torch"
    assert torch.equal(top_k_search(queries, gallery, 10)[1], by_torch[1])


def test_knn_classification_leave_one_out_and_ties():
    angles = torch.tensor([0.0, 18.0, 90.0, 60.0, 45.0]) * math.pi / 180
    gallery = torch.stack([angles.cos(), angles.sin()], dim=1)
    labels = torch.tensor([0, 0, 1, 1, 1])
    # leave-one-out with k=2: item 4 (45°) sees items 3 (60°, class 1) and 1 (18°, class 0): a tie that the
    # larger summed similarity gives to class 1 (the lowest label, as scikit-learn breaks ties, would be wrong)
    result = knn_classification(gallery, labels, gallery, labels, k=2, queries_in_gallery=True)
    assert result["knn_accuracy"] == pytest.approx(1.0) and result["knn_k"] == 2
    assert result["per_class_precision_at_1"] == {0: 1.0, 1: 1.0}
    far = torch.tensor([[math.cos(0.17), math.sin(0.17)]])  # a class-1 query at 10°: its nearest item is class 0
    assert knn_classification(far, torch.tensor([1]), gallery, labels, k=1)["per_class_precision_at_1"] == {1: 0.0}
    # against scikit-learn where the votes have no tie (odd k)
    from sklearn.neighbors import KNeighborsClassifier

    generator = torch.Generator().manual_seed(3)
    train_labels = torch.randint(0, 4, (200,), generator=generator)
    train = F.normalize(torch.randn(200, 8, generator=generator) + F.one_hot(train_labels, 8).float(), dim=1)
    test_labels = torch.randint(0, 4, (60,), generator=generator)
    test = F.normalize(torch.randn(60, 8, generator=generator) + F.one_hot(test_labels, 8).float(), dim=1)
    ours = knn_classification(test, test_labels, train, train_labels, k=1)
    reference = KNeighborsClassifier(n_neighbors=1, metric="cosine").fit(train.numpy(), train_labels.numpy())
    assert ours["knn_accuracy"] == pytest.approx(reference.score(test.numpy(), test_labels.numpy()))


def test_merged_shard_metrics_equal_the_whole():
    torch.manual_seed(4)
    gallery_labels = torch.randint(0, 5, (80,))
    gallery = F.normalize(torch.randn(80, 16) + F.one_hot(gallery_labels, 16).float(), dim=1)
    query_labels = torch.randint(0, 6, (33,))
    query = F.normalize(torch.randn(33, 16) + F.one_hot(query_labels, 16).float(), dim=1)
    whole = retrieval_metrics(query, query_labels, gallery, gallery_labels)
    parts = [retrieval_metrics(query[a:b], query_labels[a:b], gallery, gallery_labels) for a, b in ((0, 10), (10, 33))]
    assert metrics.merge_retrieval_metrics(parts) == pytest.approx(whole)


def test_mot_file_round_trip_and_errors(tmp_path):
    from myutils.tracking.mot_io import read_mot, rows_by_frame, write_mot

    rows = np.array([[2, 1, 10.5, 20, 30, 40, 0.9], [1, 2, 0, 0, 5, 5, 1.0], [1, 1, 3.25, 4, 6, 8, 0.5]])
    path = write_mot(tmp_path / "res.txt", rows)
    back = read_mot(path)
    assert back.shape == (3, 10)
    assert back[:, :2].tolist() == [[1, 1], [1, 2], [2, 1]]  # sorted by frame, then id
    assert back[0, 2:7].tolist() == [3.25, 4, 6, 8, 0.5] and (back[:, 7:] == -1).all()
    assert sorted(rows_by_frame(back)) == [1, 2]
    (tmp_path / "bad.txt").write_text("1,2,3\n")
    with pytest.raises(ValueError, match="bad.txt:1"):
        read_mot(tmp_path / "bad.txt")


def test_a_failed_atomic_write_keeps_the_previous_file(tmp_path):
    """Checkpoints, JSON, MOT files and exports share atomic_output: an error mid-write (a full disk, a crash)
    must leave the old file as it was and no temporary file behind."""
    target = tmp_path / "results.txt"
    target.write_text("old")
    with pytest.raises(OSError), atomic_output(target) as tmp:
        tmp.write_text("half of the new")
        raise OSError("disk full")
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["results.txt"]
    with atomic_output(target) as tmp:
        tmp.write_text("new")
    assert target.read_text() == "new" and [p.name for p in tmp_path.iterdir()] == ["results.txt"]


def test_atomic_files_get_normal_permissions(tmp_path):
    """mkstemp creates 0600 files; a checkpoint others cannot read is useless on a shared machine."""
    umask = os.umask(0o022)
    try:
        path = save_checkpoint({"x": torch.zeros(1)}, tmp_path / "a.pth")
        assert path.stat().st_mode & 0o777 == 0o644
    finally:
        os.umask(umask)
    assert [p.name for p in tmp_path.iterdir()] == ["a.pth"]  # no temporary file left behind
