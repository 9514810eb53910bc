"""test_model.py: top-k recognition, --eval metrics against AccuracyCalculator, the gallery cache."""

from __future__ import annotations

import json
import os

import pytest
import torch
from pytorch_metric_learning.distances import CosineSimilarity
from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator
from pytorch_metric_learning.utils.inference import CustomKNN

from augment_images import EvalTransform
from model import EmbeddingModel
from myutils.data.image_folder import scan_image_folder
from myutils.data.image_io import read_image_rgb
from myutils.synthetic.garments import generate_garment_dataset
from myutils.training.checkpoint import save_checkpoint
from test_model import RetrievalSession, evaluate_retrieval, verify_real_world_image
from test_model import main as run_test_model_cli

SHAPES, PATTERNS = ["tshirt", "skirt", "cap"], ["stripes", "dots"]


def save_model(path, seed=0):
    torch.manual_seed(seed)
    model = EmbeddingModel("test_efficientnet", emb_dim=16, img_size=32)
    save_checkpoint({"model": model.state_dict(), "model_config": model.config, "class_names": []}, path)
    return model.eval()


@pytest.fixture(scope="module")
def retrieval_setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("retrieval")
    generate_garment_dataset(root / "gallery", 4, 32, seed=0, shapes=SHAPES, patterns=PATTERNS)
    generate_garment_dataset(root / "query", 2, 32, seed=1, shapes=SHAPES, patterns=PATTERNS)
    model = save_model(root / "model.pth")
    return root, model


def reference_embeddings(model, root, class_names=None):
    """Embeddings computed directly (no project inference code): read, transform, forward one by one."""
    records, names = scan_image_folder(root, class_names)
    transform = EvalTransform(model.config["img_size"], model.config["mean"], model.config["std"])
    with torch.no_grad():
        embeddings = torch.cat([model(transform(read_image_rgb(r.path))[None]) for r in records])
    return embeddings, torch.tensor([r.label for r in records]), [r.path for r in records], names


def accuracy_calculator(query, query_labels, gallery, gallery_labels, same_set):
    calculator = AccuracyCalculator(
        include=("precision_at_1", "r_precision", "mean_average_precision_at_r", "mean_reciprocal_rank"),
        k=None, knn_func=CustomKNN(CosineSimilarity()), device=torch.device("cpu"),
    )
    return calculator.get_accuracy(query, query_labels, gallery, gallery_labels, ref_includes_query=same_set)


@pytest.mark.parametrize("with_queries", [True, False])
def test_eval_metrics_equal_accuracy_calculator(retrieval_setup, with_queries):
    root, model = retrieval_setup
    gallery, gallery_labels, _, names = reference_embeddings(model, root / "gallery")
    if with_queries:
        query, query_labels, _, _ = reference_embeddings(model, root / "query", names)
        ours = evaluate_retrieval(root / "model.pth", root / "gallery", root / "query")
    else:
        query, query_labels = gallery, gallery_labels
        ours = evaluate_retrieval(root / "model.pth", root / "gallery")
    reference = accuracy_calculator(query, query_labels, gallery, gallery_labels, same_set=not with_queries)
    assert ours["precision_at_1"] == pytest.approx(reference["precision_at_1"], abs=1e-5)
    assert ours["r_precision"] == pytest.approx(reference["r_precision"], abs=1e-5)
    assert ours["map_at_r"] == pytest.approx(reference["mean_average_precision_at_r"], abs=1e-5)
    assert ours["mrr"] == pytest.approx(reference["mean_reciprocal_rank"], abs=1e-5)
    assert ours["num_queries"] == query.shape[0]


def test_verify_real_world_image_ranks_classes_by_their_best_image(retrieval_setup, capsys):
    root, model = retrieval_setup
    gallery, labels, paths, names = reference_embeddings(model, root / "gallery")
    query, _, query_paths, _ = reference_embeddings(model, root / "query", names)
    results = verify_real_world_image(root / "model.pth", root / "gallery", query_paths[:2] + ["nope.jpg"], top_k=3)

    for result, embedding in zip(results[:2], query[:2], strict=True):
        scores = gallery @ embedding
        best = {}
        for index in range(len(paths)):  # brute force: the best image of every class
            name = names[int(labels[index])]
            if name not in best or scores[index] > best[name][1]:
                best[name] = (paths[index], float(scores[index]))
        expected = sorted(best.items(), key=lambda item: -item[1][1])[:3]
        assert [m["class"] for m in result["matches"]] == [name for name, _ in expected]
        assert [m["path"] for m in result["matches"]] == [p for _, (p, _) in expected]
        assert [m["score"] for m in result["matches"]] == pytest.approx([s for _, (_, s) in expected], abs=1e-5)
    assert results[2] == {"image": "nope.jpg", "error": "unreadable image", "matches": []}
    out = capsys.readouterr().out
    assert "nope.jpg: unreadable image" in out and results[0]["matches"][0]["class"] in out


def test_gallery_cache_is_reused_and_invalidated(tmp_path):
    generate_garment_dataset(tmp_path / "gallery", 2, 32, seed=0, shapes=["tshirt"], patterns=PATTERNS)
    save_model(tmp_path / "model.pth", seed=0)
    first = RetrievalSession(tmp_path / "model.pth", tmp_path / "gallery", progress=False)
    again = RetrievalSession(tmp_path / "model.pth", tmp_path / "gallery", progress=False)
    assert not first.from_cache and again.from_cache
    torch.testing.assert_close(again.gallery.embeddings, first.gallery.embeddings)
    assert [r.path for r in again.gallery.records] == [r.path for r in first.gallery.records]

    generate_garment_dataset(tmp_path / "more", 1, 32, seed=5, shapes=["tshirt"], patterns=["dots"])
    os.replace(tmp_path / "more" / "tshirt_dots" / "0000.png", tmp_path / "gallery" / "tshirt_dots" / "new.png")
    grown = RetrievalSession(tmp_path / "model.pth", tmp_path / "gallery", progress=False)
    assert not grown.from_cache and grown.gallery.embeddings.shape[0] == 5

    save_model(tmp_path / "model.pth", seed=1)  # new weights, same path
    retrained = RetrievalSession(tmp_path / "model.pth", tmp_path / "gallery", progress=False)
    assert not retrained.from_cache
    assert not torch.allclose(retrained.gallery.embeddings, grown.gallery.embeddings)


def test_cli_eval_prints_one_json_object(retrieval_setup, capsys):
    root, _ = retrieval_setup
    run_test_model_cli(["--model_path", str(root / "model.pth"), "--gallery_root", str(root / "gallery"),
                     "--query_root", str(root / "query"), "--eval"])
    metrics = json.loads(capsys.readouterr().out)
    assert set(metrics) == {"precision_at_1", "recall_at_1", "recall_at_5", "recall_at_10", "mrr", "r_precision",
                            "map_at_r", "num_queries"}
    assert metrics["num_queries"] == 12
    with pytest.raises(SystemExit):
        run_test_model_cli(["--gallery_root", str(root / "gallery")])  # neither --images nor --eval
