"""test_model.py: top-k recognition, open set, JSON, grids, --eval metrics against AccuracyCalculator and a
brute-force kNN, the gallery cache, sharded validation under 2-process gloo, and the serving exports."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from PIL import Image
from pytorch_metric_learning.distances import CosineSimilarity
from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator
from pytorch_metric_learning.utils.inference import CustomKNN

from model import EmbeddingModel
from myutils.data.image_folder import scan_image_folder
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
    """Embeddings computed directly (no project inference code): PIL read, timm's eval transform, one by one."""
    records, names = scan_image_folder(root, class_names)
    config = model.config
    transform = timm.data.create_transform(input_size=(3, *config["img_size"]), interpolation=config["interpolation"],
                                           crop_pct=config["crop_pct"], mean=config["mean"], std=config["std"])
    with torch.no_grad():
        embeddings = torch.cat([model(transform(Image.open(r.path).convert("RGB"))[None]) for r in records])
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
    # kNN accuracy and per-class precision@1 from an independent brute force over the reference embeddings
    sims = query @ gallery.T
    if not with_queries:
        sims.fill_diagonal_(-float("inf"))
    order = sims.argsort(dim=1, descending=True)
    correct_knn, top1 = 0, {}
    for q in range(query.shape[0]):
        nearest = order[q, :5].tolist()
        votes = Counter(int(gallery_labels[i]) for i in nearest)
        best = max(votes.values())
        tied = [label for label, n in votes.items() if n == best]
        predicted = max(tied, key=lambda label: sum(float(sims[q, i]) for i in nearest if gallery_labels[i] == label))
        correct_knn += predicted == int(query_labels[q])
        top1.setdefault(names[int(query_labels[q])], []).append(int(gallery_labels[nearest[0]] == query_labels[q]))
    assert ours["knn_accuracy"] == pytest.approx(correct_knn / query.shape[0]) and ours["knn_k"] == 5
    assert ours["per_class_precision_at_1"] == pytest.approx({name: sum(v) / len(v) for name, v in top1.items()})


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
    assert results[2] == {"image": "nope.jpg", "error": "unreadable image", "prediction": None, "matches": []}
    assert [r["prediction"] for r in results[:2]] == [r["matches"][0]["class"] for r in results[:2]]
    out = capsys.readouterr().out
    assert "nope.jpg: unreadable image" in out and results[0]["matches"][0]["class"] in out


def test_top_classes_widen_the_search_past_a_crowded_class():
    from myutils.data.image_folder import ImageRecord
    from myutils.retrieval.embedding import EmbeddedImages

    generator = torch.Generator().manual_seed(0)
    query = torch.nn.functional.normalize(torch.randn(1, 8, generator=generator), dim=1)
    crowd = torch.nn.functional.normalize(query + 0.01 * torch.randn(200, 8, generator=generator), dim=1)
    others = torch.nn.functional.normalize(torch.randn(2, 8, generator=generator), dim=1)
    embeddings, labels = torch.cat([crowd, others]), torch.tensor([0] * 200 + [1, 2])
    session = RetrievalSession.__new__(RetrievalSession)  # no model needed: only the gallery is searched
    session.class_names = ["crowd", "one", "two"]
    session.gallery = EmbeddedImages(embeddings, labels, [ImageRecord(f"{i}.png", int(c)) for i, c in
                                                          enumerate(labels)], [])
    (matches,) = session.top_classes(query, top_k=3)  # the first 96 candidates are all "crowd"
    scores = (embeddings @ query[0]).tolist()
    assert [m["class"] for m in matches[:1]] == ["crowd"] and {m["class"] for m in matches} == {"crowd", "one", "two"}
    assert [m["score"] for m in matches[1:]] == pytest.approx(sorted(scores[200:], reverse=True), abs=1e-6)


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


def test_gallery_cache_works_through_another_relative_path(tmp_path, monkeypatch):
    project = tmp_path / "project"
    generate_garment_dataset(project / "gal", 2, 32, seed=0, shapes=["skirt"], patterns=["dots", "checks"])
    save_model(project / "model.pth")
    monkeypatch.chdir(project)
    first = RetrievalSession("model.pth", "gal", progress=False)
    assert not first.from_cache and first.gallery.records[0].path == os.path.join("gal", "skirt_checks", "0000.png")
    monkeypatch.chdir(tmp_path)  # the same gallery and model, reached from another folder
    again = RetrievalSession("project/model.pth", "project/gal", progress=False)
    assert again.from_cache
    assert [r.path for r in again.gallery.records] == [os.path.join("project", r.path) for r in first.gallery.records]
    assert all(os.path.isfile(r.path) for r in again.gallery.records)
    results = verify_real_world_image("project/model.pth", "./project/../project/gal",
                                      [again.gallery.records[0].path], top_k=1)
    assert results[0]["matches"][0]["class"] == "skirt_checks"


@pytest.mark.parametrize("damage", ["garbage", "foreign paths", "wrong content"])
def test_a_stale_or_unreadable_gallery_cache_is_rebuilt(tmp_path, damage):
    from myutils.retrieval.gallery_cache import cache_path_for

    generate_garment_dataset(tmp_path / "gallery", 2, 32, seed=0, shapes=["cap"], patterns=["dots", "checks"])
    save_model(tmp_path / "model.pth")
    expected = RetrievalSession(tmp_path / "model.pth", tmp_path / "gallery", progress=False).gallery
    cache = cache_path_for(tmp_path / "model.pth", tmp_path / "gallery")
    if damage == "garbage":
        cache.write_bytes(b"truncated")
    else:
        entry = torch.load(cache, weights_only=True)
        if damage == "foreign paths":  # what a cache of the old format (paths as typed) looks like elsewhere
            entry["paths"] = [f"gal/{p}" for p in entry["paths"]]
        else:
            entry["embeddings"] = entry["embeddings"][:1]
        save_checkpoint(entry, cache)
    rebuilt = RetrievalSession(tmp_path / "model.pth", tmp_path / "gallery", progress=False)
    assert not rebuilt.from_cache
    torch.testing.assert_close(rebuilt.gallery.embeddings, expected.embeddings)
    assert RetrievalSession(tmp_path / "model.pth", tmp_path / "gallery", progress=False).from_cache  # fixed


def test_cli_eval_prints_one_json_object(retrieval_setup, capsys):
    root, _ = retrieval_setup
    run_test_model_cli(["--model_path", str(root / "model.pth"), "--gallery_root", str(root / "gallery"),
                        "--query_root", str(root / "query"), "--eval", "--knn_k", "3"])
    metrics = json.loads(capsys.readouterr().out)
    assert set(metrics) == {"precision_at_1", "recall_at_1", "recall_at_5", "recall_at_10", "mrr", "r_precision",
                            "map_at_r", "num_queries", "knn_accuracy", "knn_k", "per_class_precision_at_1"}
    assert metrics["num_queries"] == 12 and metrics["knn_k"] == 3
    assert set(metrics["per_class_precision_at_1"]) == {f"{s}_{p}" for s in SHAPES for p in PATTERNS}
    with pytest.raises(SystemExit):
        run_test_model_cli(["--gallery_root", str(root / "gallery")])  # neither --images nor --eval


def test_min_score_json_lines_and_grid(retrieval_setup, tmp_path, capsys):
    root, _ = retrieval_setup
    queries = [str(p) for p in sorted((root / "query" / "tshirt_dots").iterdir())]
    base = ["--model_path", str(root / "model.pth"), "--gallery_root", str(root / "gallery"), "--top_k", "3"]
    run_test_model_cli([*base, "--images", *queries, "nope.png", "--json"])
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3
    objects = [json.loads(line) for line in lines]  # one JSON object per query, every line
    assert [o["image"] for o in objects] == [*queries, "nope.png"] and objects[2]["prediction"] is None
    best = [o["matches"][0]["score"] for o in objects[:2]]
    assert all(len(o["matches"]) == 3 and o["prediction"] == o["matches"][0]["class"] for o in objects[:2])

    threshold = (best[0] + best[1]) / 2 if best[0] != best[1] else best[0] + 1e-6
    run_test_model_cli([*base, "--images", *queries, "--min_score", str(threshold), "--grid", str(tmp_path / "g.jpg")])
    out = capsys.readouterr().out
    predictions = ["unknown" if score < threshold else o["matches"][0]["class"] for score, o in zip(best, objects[:2],
                                                                                                  strict=True)]
    assert "unknown" in predictions and out.count("unknown (best score") == predictions.count("unknown")
    grid = np.asarray(Image.open(tmp_path / "g.jpg"))
    assert grid.shape[0] > 100 and grid.shape[1] > 3 * grid.shape[0] / 2 * 0.9  # 2 rows of 4 tiles
    with pytest.raises(SystemExit):
        run_test_model_cli([*base, "--eval", "--json"])


def _validation_worker(rank, init_file, state, config, gallery, queries, expected, expected_embeddings):
    from augment_images import EvalTransform
    from myutils.retrieval.embedding import embed_records
    from myutils.retrieval.validation import validation_metrics

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        torch.set_num_threads(1)
        model = EmbeddingModel.from_config(config)
        model.load_state_dict(state)
        if rank == 1:  # rank 1's BatchNorm statistics drifted in its last training forward: rank 0's must win
            for buffer in model.buffers():
                if buffer.is_floating_point():
                    buffer.add_(0.5)
        transform = EvalTransform.from_config(config)
        metrics, skipped = validation_metrics(model, gallery, queries, transform, torch.device("cpu"), batch_size=3)
        assert metrics == pytest.approx(expected[0], abs=1e-6) and sorted(skipped) == sorted(expected[1])
        embedded = embed_records(model, gallery, transform, torch.device("cpu"), batch_size=4, distributed=True)
        torch.testing.assert_close(embedded.embeddings, expected_embeddings, rtol=0, atol=1e-6)
    finally:
        dist.destroy_process_group()


def test_sharded_validation_under_two_processes_equals_one_process(retrieval_setup, tmp_path):
    from augment_images import EvalTransform
    from myutils.retrieval.embedding import embed_records
    from myutils.retrieval.validation import validation_metrics

    root, model = retrieval_setup
    gallery, names = scan_image_folder(root / "gallery")
    queries, _ = scan_image_folder(root / "query", names)
    gallery = gallery + [type(gallery[0])(str(tmp_path / "broken.png"), 0)]  # 25 images: uneven shards
    (tmp_path / "broken.png").write_bytes(b"not an image")
    queries = queries[:11]
    transform = EvalTransform.from_config(model.config)
    expected = validation_metrics(model, gallery, queries, transform, torch.device("cpu"))
    reference = embed_records(model, gallery, transform, torch.device("cpu"))
    assert 0 < expected[0]["map_at_r"] < 1 and expected[1] == [str(tmp_path / "broken.png")]
    state = {k: v.clone() for k, v in model.state_dict().items()}
    mp.spawn(_validation_worker, nprocs=2, args=(str(tmp_path / "init"), state, model.config, gallery, queries,
                                                expected, reference.embeddings))


def test_exports_serve_without_the_training_code(retrieval_setup, tmp_path):
    """ONNX model + preprocessing JSON + gallery export: recognise a photo with numpy, PIL, onnxruntime, faiss."""
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        from export_gallery import export_gallery
        from export_onnx import export_onnx
    finally:
        sys.path.remove(str(REPO / "scripts"))
    root, model = retrieval_setup
    report = export_onnx("embedding", str(tmp_path / "served" / "embedding"), checkpoint=str(root / "model.pth"))
    assert report["max_abs_diff"]["embeddings"] <= 1e-4 and report["check_batch"] == [[5, 3, 32, 32]]
    assert report["preprocessing"]["mean"] == model.config["mean"] and report["preprocessing"]["size"] == [32, 32]
    description = export_gallery(str(root / "model.pth"), str(root / "gallery"), str(tmp_path / "served"),
                                 progress=False)
    assert description["files"] == ["embeddings.npy", "gallery.json", "index.faiss"]

    query = sorted((root / "query" / "skirt_dots").iterdir())[1]
    expected = verify_real_world_image(root / "model.pth", root / "gallery", [query], top_k=1)[0]["matches"][0]
    serve = SERVING_SNIPPET.format(served=tmp_path / "served", query=query)
    result = subprocess.run([sys.executable, "-I", "-c", serve], cwd=tmp_path, capture_output=True, text=True,
                            timeout=120)  # -I: isolated, the repository is not importable
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    assert answer["flat_class"] == answer["faiss_class"] == expected["class"]
    assert answer["faiss_path"] == os.path.relpath(expected["path"], root / "gallery")
    assert answer["score"] == pytest.approx(expected["score"], abs=1e-4)


REPO = Path(__file__).resolve().parents[1]
# the loop that docs/supcon.md shows for serving (kept identical there)
SERVING_SNIPPET = """
import json, numpy as np, onnxruntime, faiss
from PIL import Image

served, query = "{served}", "{query}"
spec = json.load(open(f"{{served}}/embedding.json"))["preprocessing"]
gallery = json.load(open(f"{{served}}/gallery.json"))
image = Image.open(query).convert("RGB")
(h, w), pct = spec["size"], spec["crop_pct"]
sh, sw = int(h / pct), int(w / pct)
scale = max(sh / image.height, sw / image.width)
if sh == sw:  # square: the shorter side becomes exactly sh
    short, long = sorted((image.height, image.width))
    size = (sh, int(sh * long / short)) if image.height <= image.width else (int(sh * long / short), sh)
else:
    size = (round(image.height * scale), round(image.width * scale))
filters = {{"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC, "nearest": Image.NEAREST, "lanczos": Image.LANCZOS}}
image = image.resize((size[1], size[0]), filters[spec["interpolation"]])
top, left = int(round((size[0] - h) / 2)), int(round((size[1] - w) / 2))
pixels = np.asarray(image.crop((left, top, left + w, top + h)), dtype=np.float32) * spec["scale"]
pixels = (pixels - np.array(spec["mean"], np.float32)) / np.array(spec["std"], np.float32)
batch = pixels.transpose(2, 0, 1)[None].astype(np.float32)
session = onnxruntime.InferenceSession(f"{{served}}/embedding.onnx", providers=["CPUExecutionProvider"])
embedding = session.run(None, {{"images": batch}})[0]
scores = np.load(f"{{served}}/embeddings.npy") @ embedding[0]
best = int(scores.argmax())
index = faiss.read_index(f"{{served}}/index.faiss")
faiss_scores, faiss_rows = index.search(embedding, 1)
row = int(faiss_rows[0, 0])
print(json.dumps({{"flat_class": gallery["class_names"][gallery["labels"][best]],
                  "faiss_class": gallery["class_names"][gallery["labels"][row]],
                  "faiss_path": gallery["paths"][row], "score": float(faiss_scores[0, 0])}}))
"""
