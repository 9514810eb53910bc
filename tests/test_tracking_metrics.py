"""MOT evaluation against TrackEval, the trackers evaluator and by hand; the simulated detector's degradations."""

import contextlib
import io

import numpy as np
import pytest

from myutils.synthetic.scenes import generate_scene
from myutils.synthetic.simulated_detector import DIFFICULTY_LEVELS, simulate_detections, simulate_embeddings
from myutils.tracking.mot_io import read_mot, write_mot
from myutils.tracking.mot_metrics import combine_summaries, evaluate_mot
from myutils.tracking.tracker import TrackerConfig, track_detections


def row(frame, identity, left, top, w=10.0, h=10.0):
    return [frame, identity, left, top, w, h, 1, 1, 1, -1]


def test_clear_mot_and_idf1_by_hand():
    ground_truth = np.array([row(f, 1, 0, 0) for f in range(1, 5)] + [row(f, 2, 50, 0) for f in range(1, 5)])
    results = np.array(
        [row(1, 7, 0, 0), row(2, 7, 1, 0), row(3, 8, 0, 0), row(4, 8, 0, 0)]  # object 1: one switch (7 -> 8)
        + [
            row(1, 9, 50, 0),
            row(2, 9, 58, 0),
        ]  # object 2: IoU 2/18 in frame 2 -> FP + miss; frames 3-4 missed
        + [row(4, 5, 200, 200)]  # a false positive
    )
    summary = evaluate_mot(ground_truth, results)
    assert (summary.num_matches, summary.num_switches, summary.num_false_positives, summary.num_misses) == (
        5,
        1,
        2,
        3,
    )
    assert summary.mota == pytest.approx(1 - (3 + 2 + 1) / 8)
    # IDF1: best mapping 1->7 (2 frames) or 1->8 (2), 2->9 (1 valid frame) -> IDTP 3
    assert summary.num_id_true_positives == 3
    assert summary.idf1 == pytest.approx(2 * 3 / (8 + 7))
    assert summary.motp == pytest.approx((1 + 90 / 110 + 1 + 1 + 1) / 5)
    assert summary.mostly_tracked == 1 and summary.mostly_lost == 0  # object 2 matched 1 of 4 frames
    ignored = ground_truth.copy()
    ignored[ground_truth[:, 1] == 2, 6] = 0  # "consider" flag 0: object 2 does not count
    assert evaluate_mot(ignored, results).num_objects == 4
    with pytest.raises(ValueError, match="duplicate"):
        evaluate_mot(ground_truth, np.array([row(1, 3, 0, 0), row(1, 3, 50, 0)]))


def test_mostly_tracked_needs_more_than_80_percent_as_in_trackeval():
    ground_truth = np.array([row(f, 1, 0, 0) for f in range(1, 6)] + [row(f, 2, 50, 0) for f in range(1, 6)])
    results = np.array([row(f, 7, 0, 0) for f in range(1, 5)] + [row(f, 8, 50, 0) for f in range(1, 6)])
    summary = evaluate_mot(ground_truth, results)  # object 1 matched in 4 of 5 frames: exactly 0.8
    assert (summary.mostly_tracked, summary.partially_tracked, summary.mostly_lost) == (1, 1, 0)


def test_hota_by_hand_perfect_and_switched_halfway():
    ground_truth = np.array([row(f, 1, 0, 0) for f in range(1, 5)])
    perfect = evaluate_mot(ground_truth, np.array([row(f, 7, 0, 0) for f in range(1, 5)]))
    assert (perfect.hota, perfect.deta, perfect.assa, perfect.loca) == (1.0, 1.0, 1.0, 1.0)
    # every box found (DetA 1), but the identity changes after two frames: each of the two result
    # tracks shares 2 of the 4 + 2 - 2 frames of the union with the object -> AssA 1/2, HOTA sqrt(1/2)
    switched = evaluate_mot(ground_truth, np.array([row(f, 7 if f <= 2 else 8, 0, 0) for f in range(1, 5)]))
    assert switched.deta == pytest.approx(1.0) and switched.assa == pytest.approx(0.5)
    assert switched.hota == pytest.approx(np.sqrt(0.5)) and switched.num_switches == 1
    # a box shifted by 1 of 10 pixels: IoU 9/11 passes the α thresholds up to 0.80 (16 of 19)
    shifted = evaluate_mot(ground_truth, np.array([row(f, 7, 1, 0) for f in range(1, 5)]))
    assert shifted.deta == pytest.approx(16 / 19) and shifted.assa == pytest.approx(16 / 19)
    # TrackEval counts LocA as 1 at the α with no TP at all (0.85, 0.90, 0.95)
    assert shifted.loca == pytest.approx((16 * 9 / 11 + 3) / 19)


def mot17_sequence(folder, name: str, seed: int, difficulty: str) -> None:
    """A MOTChallenge sequence with MOT17's columns: distractor classes, zero-marked boxes, and results
    that sit on distractors (removed by the preprocessing) plus extra identity switches."""
    rng = np.random.default_rng(seed)
    scene = generate_scene(num_frames=80, num_objects=8, seed=seed, difficulty=difficulty)
    gt = scene.ground_truth.copy()
    detections = simulate_detections(gt, scene.width, scene.height, difficulty, seed)
    results = track_detections(detections.rows, TrackerConfig(n_init=1), num_frames=80)
    results[::7, 1] += 50
    for identity, cls in ((3, 7), (5, 8), (6, 2), (7, 6)):  # static person, distractor, on vehicle, non-MOT vehicle
        gt[gt[:, 1] == identity, 7] = cls
    gt[gt[:, 1] == 5, 6] = 0
    gt[(rng.uniform(size=len(gt)) < 0.05) & (gt[:, 7] == 1), 6] = 0  # ignored pedestrians
    sequence = folder / "gt" / "MOT17-train" / name
    write_mot(sequence / "gt" / "gt.txt", gt)
    (sequence / "seqinfo.ini").write_text(
        f"[Sequence]\nname={name}\nimDir=img1\nframeRate=30\nseqLength=80\nimWidth={scene.width}\n"
        f"imHeight={scene.height}\nimExt=.jpg\n"
    )
    write_mot(folder / "trackers" / "MOT17-train" / "ours" / "data" / f"{name}.txt", results)


SEQUENCES = {"SEQ-01": (1, "medium"), "SEQ-02": (2, "hard")}


@pytest.fixture(scope="module")
def mot17_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mot17")
    for name, (seed, difficulty) in SEQUENCES.items():
        mot17_sequence(folder, name, seed, difficulty)
    seqmaps = folder / "gt" / "seqmaps"
    seqmaps.mkdir()
    (seqmaps / "MOT17-train.txt").write_text("name\n" + "\n".join(SEQUENCES) + "\n")
    return folder


def trackeval_results(folder, benchmark: str) -> dict:
    """TrackEval's own pipeline (dataset preprocessing + HOTA, CLEAR, Identity) on the files."""
    trackeval = pytest.importorskip("trackeval")
    quiet = {"PRINT_RESULTS": False, "OUTPUT_SUMMARY": False, "OUTPUT_DETAILED": False, "PLOT_CURVES": False}
    evaluator = trackeval.Evaluator(
        {"USE_PARALLEL": False, "PRINT_CONFIG": False, "TIME_PROGRESS": False, **quiet}
    )
    for kind in ("gt", "trackers"):  # TrackEval finds the files under <BENCHMARK>-train
        if not (folder / kind / f"{benchmark}-train").exists():
            (folder / kind / f"{benchmark}-train").symlink_to(folder / kind / "MOT17-train")
    seqmap = folder / "gt" / "seqmaps" / f"{benchmark}-train.txt"
    seqmap.write_text((folder / "gt" / "seqmaps" / "MOT17-train.txt").read_text())
    dataset = trackeval.datasets.MotChallenge2DBox(
        {
            "GT_FOLDER": str(folder / "gt"),
            "TRACKERS_FOLDER": str(folder / "trackers"),
            "BENCHMARK": benchmark,
            "SPLIT_TO_EVAL": "train",
            "TRACKERS_TO_EVAL": ["ours"],
            "PRINT_CONFIG": False,
        }
    )
    with contextlib.redirect_stdout(io.StringIO()):
        output, _ = evaluator.evaluate(
            [dataset], [trackeval.metrics.HOTA(), trackeval.metrics.CLEAR(), trackeval.metrics.Identity()]
        )
    return {name: value["pedestrian"] for name, value in output["MotChallenge2DBox"]["ours"].items()}


def assert_equal_to_trackeval(ours, reference) -> None:
    hota, clear, identity = reference["HOTA"], reference["CLEAR"], reference["Identity"]
    for name in ("HOTA", "DetA", "AssA", "LocA", "DetRe", "DetPr", "AssRe", "AssPr"):
        assert getattr(ours, name.lower()) == pytest.approx(float(np.mean(hota[name])), abs=1e-12), name
    for name, key in (("MOTA", "mota"), ("MOTP", "motp"), ("IDF1", "idf1"), ("IDP", "idp"), ("IDR", "idr")):
        value = identity[name] if name.startswith("ID") else clear[name]
        assert getattr(ours, key) == pytest.approx(float(value), abs=1e-12), name
    counts = {"IDSW": ours.num_switches, "CLR_FP": ours.num_false_positives, "CLR_FN": ours.num_misses,
              "CLR_TP": ours.num_matches, "MT": ours.mostly_tracked, "PT": ours.partially_tracked,
              "ML": ours.mostly_lost, "Frag": ours.num_fragmentations}
    assert counts == {key: int(clear[key]) for key in counts}
    assert ours.num_id_true_positives == int(identity["IDTP"])


@pytest.mark.parametrize("benchmark", ["MOT17", "MOT20"])
def test_evaluation_equals_trackeval_on_mot17_files(mot17_folder, benchmark):
    reference = trackeval_results(mot17_folder, benchmark)
    ours = {}
    for name in SEQUENCES:
        gt = read_mot(mot17_folder / "gt" / "MOT17-train" / name / "gt" / "gt.txt")
        results = read_mot(mot17_folder / "trackers" / "MOT17-train" / "ours" / "data" / f"{name}.txt")
        ours[name] = evaluate_mot(gt, results, benchmark=benchmark)
        assert_equal_to_trackeval(ours[name], reference[name])
        assert ours[name].num_switches > 0 and ours[name].hota < 1
    assert_equal_to_trackeval(combine_summaries(list(ours.values())), reference["COMBINED_SEQ"])
    # the preprocessing matters: scoring every box as a pedestrian gives other numbers
    unclassed = gt.copy()
    unclassed[:, 7] = -1  # no classes: every box with a consider flag counts
    everything = evaluate_mot(unclassed, results, benchmark=benchmark)
    assert everything.num_objects > ours[name].num_objects and everything.mota != ours[name].mota
    if benchmark == "MOT20":  # results on non-MOT vehicles (class 6) are not false positives there
        mot17 = evaluate_mot(gt, results, benchmark="MOT17")
        assert ours[name].num_false_positives < mot17.num_false_positives


def test_evaluation_equals_the_trackers_evaluator(mot17_folder):
    evaluate_files = pytest.importorskip("trackers.eval").evaluate_mot_sequence
    for name in SEQUENCES:
        gt_file = mot17_folder / "gt" / "MOT17-train" / name / "gt" / "gt.txt"
        result_file = mot17_folder / "trackers" / "MOT17-train" / "ours" / "data" / f"{name}.txt"
        reference = evaluate_files(gt_file, result_file, metrics=["CLEAR", "HOTA", "Identity"])
        ours = evaluate_mot(read_mot(gt_file), read_mot(result_file))
        assert ours.hota == pytest.approx(reference.HOTA.HOTA, abs=1e-12)
        assert ours.assa == pytest.approx(reference.HOTA.AssA, abs=1e-12)
        assert ours.deta == pytest.approx(reference.HOTA.DetA, abs=1e-12)
        assert ours.mota == pytest.approx(reference.CLEAR.MOTA, abs=1e-12)
        assert ours.num_switches == reference.CLEAR.IDSW
        assert ours.idf1 == pytest.approx(reference.Identity.IDF1, abs=1e-12)


def test_combined_summary_equals_evaluating_the_concatenation():
    scene = generate_scene(num_frames=60, num_objects=5, seed=1)
    detections = simulate_detections(scene.ground_truth, scene.width, scene.height, "medium", seed=1)
    results = track_detections(detections.rows, num_frames=60)
    first_gt, first_results = scene.ground_truth[:, 0] <= 30, results[:, 0] <= 30
    halves = [(first_gt, first_results), (~first_gt, ~first_results)]
    parts = [evaluate_mot(scene.ground_truth[g], results[r]) for g, r in halves]
    # the halves share no frames, so shifting the second half's ids apart makes one joint sequence
    shifted_gt, shifted_results = scene.ground_truth.copy(), results.copy()
    shifted_gt[~halves[0][0], 1] += 1000
    shifted_results[~halves[0][1], 1] += 1000
    joint = evaluate_mot(shifted_gt, shifted_results)
    combined = combine_summaries(parts)
    assert combined.mota == pytest.approx(joint.mota) and combined.idf1 == pytest.approx(joint.idf1)
    assert combined.num_switches == joint.num_switches and combined.motp == pytest.approx(joint.motp)
    # HOTA too: ids of the two halves never meet, so TP-weighted AssA / LocA equal the joint ones
    for name in ("hota", "deta", "assa", "loca", "assre", "asspr"):
        assert getattr(combined, name) == pytest.approx(getattr(joint, name), abs=1e-12), name


def test_simulated_detector_degrades_with_difficulty_and_is_deterministic():
    scene = generate_scene(num_frames=150, num_objects=8, seed=2)
    counts = {}
    for difficulty in DIFFICULTY_LEVELS:
        detections = simulate_detections(scene.ground_truth, scene.width, scene.height, difficulty, seed=0)
        again = simulate_detections(scene.ground_truth, scene.width, scene.height, difficulty, seed=0)
        assert np.array_equal(detections.rows, again.rows)
        true_positive = detections.identities > 0
        counts[difficulty] = (true_positive.sum(), (~true_positive).sum())
        scores = detections.rows[:, 6]
        assert scores[~true_positive].mean() < scores[true_positive & (detections.visibility > 0.8)].mean()
        right = detections.rows[:, 2] + detections.rows[:, 4]
        assert (detections.rows[:, 2] >= 0).all() and (right <= scene.width + 1e-9).all()
        half_hidden = scores[true_positive & (detections.visibility < 0.5)]
        assert half_hidden.mean() < scores[true_positive & (detections.visibility > 0.8)].mean() - 0.15
    assert counts["easy"][0] > counts["medium"][0] > counts["hard"][0]  # more misses
    assert counts["easy"][1] < counts["medium"][1] < counts["hard"][1]  # more false positives


def test_simulated_embeddings_separate_identities():
    scene = generate_scene(num_frames=60, num_objects=6, seed=3)
    detections = simulate_detections(scene.ground_truth, scene.width, scene.height, "medium", seed=3)
    embeddings = simulate_embeddings(detections, "medium", seed=3)
    assert np.allclose(np.linalg.norm(embeddings, axis=1), 1.0)
    similarity = embeddings @ embeddings.T
    same = detections.identities[:, None] == detections.identities[None, :]
    real = (detections.identities[:, None] > 0) & (detections.identities[None, :] > 0)
    assert similarity[same & real].mean() > 0.6 > 0.2 > similarity[~same & real].mean()


def test_evaluation_script_with_a_seqmap_equals_trackeval(mot17_folder, capsys):
    from scripts.evaluate_mot import main as evaluate_main

    reference = trackeval_results(mot17_folder, "MOT17")
    seqmap = mot17_folder / "only-two.txt"
    seqmap.write_text("name\nSEQ-02\nSEQ-01\n")
    summaries = evaluate_main(
        ["--gt_dir", str(mot17_folder / "gt" / "MOT17-train"), "--results_dir",
         str(mot17_folder / "trackers" / "MOT17-train" / "ours" / "data"), "--seqmap", str(seqmap)]
    )
    assert list(summaries) == ["SEQ-02", "SEQ-01", "COMBINED"]
    assert_equal_to_trackeval(summaries["COMBINED"], reference["COMBINED_SEQ"])
    printed = capsys.readouterr().out
    assert "HOTA" in printed and "AssA" in printed and f"{summaries['COMBINED'].hota:.3f}" in printed
    seqmap.write_text("name\nSEQ-03\n")
    with pytest.raises(FileNotFoundError, match="SEQ-03"):
        evaluate_main(["--gt_dir", str(mot17_folder / "gt" / "MOT17-train"), "--results_dir", str(mot17_folder),
                       "--seqmap", str(seqmap)])
