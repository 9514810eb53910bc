"""Multi-object tracking evaluation as TrackEval computes it: HOTA, CLEAR-MOT (MOTA, MOTP, IDSW, MT/ML)
and the identity metrics (IDF1, IDP, IDR), with MOTChallenge's ground-truth preprocessing.

Why our own, in NumPy: the reference implementations do not install beside this toolkit as plain
dependencies (``trackeval`` 1.3 and ``trackers`` 2.6 both require ``opencv-python``, a second cv2
next to our ``opencv-python-headless``; ``trackers`` also pulls ``supervision``), and the benchmark
evaluates hundreds of runs. The definitions follow TrackEval line for line (``metrics/hota.py``,
``clear.py``, ``identity.py``, ``datasets/mot_challenge_2d_box.py``), and the tests check equal
numbers against TrackEval and the ``trackers`` evaluator on the same files.

Preprocessing (TrackEval's MotChallenge2DBox, per frame):
1. result boxes that the best IoU >= 0.5 one-to-one matching pairs with a *distractor* ground-truth
   box (person on vehicle 2, static person 7, distractor 8, reflection 12; MOT20 also non-MOT
   vehicle 6) are removed: they are neither false positives nor true positives;
2. only pedestrian (class 1) ground truth with a non-zero consider flag (column 7) is scored.
Ground truth without a class column (or with class -1) counts as pedestrians. ``min_visibility``
(not part of TrackEval; 0 = off) turns ground truth less visible than that into ignore regions too.

Metrics, with IoU as the similarity:
- CLEAR-MOT (Bernardin & Stiefelhagen 2008): per frame, a Hungarian matching at IoU >= 0.5 that first
  keeps the previous frame's pairs, then maximises the summed IoU; a match to another id than the
  object's last one is an ID switch. ``MOTA = (TP − FP − IDSW) / #gt``, ``MOTP`` = mean IoU of matches;
  MT / ML: objects matched in more than 80 % / less than 20 % of their frames.
- Identity (Ristani et al. 2016): one global one-to-one mapping of ground-truth to result trajectories
  maximising the co-occurrences at IoU >= 0.5 (IDTP); ``IDF1 = 2 IDTP / (#gt + #results)``.
- HOTA (Luiten et al. 2021): at each localisation threshold α = 0.05, 0.10, ..., 0.95 a matching that
  maximises the association-weighted IoU gives TP/FN/FP; ``DetA = TP / (TP + FN + FP)``,
  ``AssA`` = the mean over TPs of the matched pair's track-level Jaccard ``TPA / (TPA + FNA + FPA)``,
  ``HOTA_α = sqrt(DetA_α · AssA_α)``, ``LocA`` = mean IoU of TPs; the reported values average over α.
Sequences combine as TrackEval combines them: counts summed, AssA / AssRe / AssPr / LocA averaged
with the TPs of each α as weights.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment

from myutils.cli import InputError
from myutils.tracking.boxes import iou_matrix, tlwh_to_xyxy

PEDESTRIAN = 1
DISTRACTOR_CLASSES = {
    "MOT17": (2, 7, 8, 12),  # also MOT16
    "MOT20": (2, 6, 7, 8, 12),
}
BENCHMARKS = ("MOT17", "MOT20", "MOT15")  # MOT15 ground truth has no classes: no distractor removal
HOTA_ALPHAS = np.arange(0.05, 0.99, 0.05)
EPS = np.finfo("float").eps


@dataclass
class MOTSummary:
    hota: float
    deta: float
    assa: float
    loca: float
    detre: float
    detpr: float
    assre: float
    asspr: float
    mota: float
    motp: float
    idf1: float
    idp: float
    idr: float
    num_switches: int
    num_false_positives: int
    num_misses: int
    num_matches: int
    num_fragmentations: int
    num_id_true_positives: int
    num_objects: int  # scored ground-truth boxes
    num_predictions: int  # result boxes after the preprocessing
    num_unique_objects: int
    mostly_tracked: int
    partially_tracked: int
    mostly_lost: int
    motp_sum: float
    # per α (HOTA_ALPHAS), what combining sequences needs
    hota_tp: tuple[float, ...]
    hota_fn: tuple[float, ...]
    hota_fp: tuple[float, ...]
    assa_per_alpha: tuple[float, ...]
    assre_per_alpha: tuple[float, ...]
    asspr_per_alpha: tuple[float, ...]
    loca_per_alpha: tuple[float, ...]

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class PreparedSequence:
    """Per frame (index 0 = frame 1): scored ground-truth ids, result ids (both 0-based) and their IoUs."""

    gt_ids: list[np.ndarray]
    result_ids: list[np.ndarray]
    similarity: list[np.ndarray]
    num_gt_ids: int
    num_result_ids: int


def _as_rows(rows: np.ndarray) -> np.ndarray:
    rows = np.asarray(rows, dtype=np.float64)
    return rows.reshape(-1, rows.shape[-1] if rows.size else 10)


def _by_frame(rows: np.ndarray, num_frames: int) -> list[np.ndarray]:
    frames = rows[:, 0].astype(int)
    order = np.argsort(frames, kind="stable")
    starts = np.searchsorted(frames[order], np.arange(1, num_frames + 2))
    return [rows[order[starts[f] : starts[f + 1]]] for f in range(num_frames)]


def prepare_sequence(
    ground_truth: np.ndarray, results: np.ndarray, benchmark: str = "MOT17", min_visibility: float = 0.0
) -> PreparedSequence:
    """TrackEval's MOTChallenge preprocessing (see the module docstring) and its id relabelling."""
    if benchmark not in BENCHMARKS:
        raise InputError(f"benchmark must be one of {BENCHMARKS}, got {benchmark!r}")
    gt, hyp = _as_rows(ground_truth), _as_rows(results)
    if gt.shape[1] < 6 or hyp.shape[1] < 6:
        raise InputError("MOT rows need at least 6 columns (frame, id, left, top, width, height)")
    hyp = hyp[hyp[:, 1] >= 0]  # id -1: not a track (TrackEval drops unconfirmed boxes as well)
    num_frames = int(max(gt[:, 0].max(initial=0), hyp[:, 0].max(initial=0)))
    consider = gt[:, 6] != 0 if gt.shape[1] > 6 else np.ones(len(gt), bool)
    classes = gt[:, 7].astype(int) if gt.shape[1] > 7 else np.full(len(gt), -1)
    classes = np.where(classes == -1, PEDESTRIAN, classes)  # no class given: pedestrians
    ignore = np.isin(classes, DISTRACTOR_CLASSES.get(benchmark, ()))
    if min_visibility > 0 and gt.shape[1] > 8:
        ignore |= gt[:, 8] < min_visibility
    scored = consider & (classes == PEDESTRIAN) & ~ignore if benchmark != "MOT15" else consider & ~ignore
    gt = np.column_stack([gt[:, :6], scored, ignore])
    gt_id_map = {int(i): k for k, i in enumerate(np.unique(gt[scored, 1]))}

    gt_frames, hyp_frames = _by_frame(gt, num_frames), _by_frame(hyp, num_frames)
    kept_hyp, similarity = [], []
    for frame, (objects, hypotheses) in enumerate(zip(gt_frames, hyp_frames, strict=True), start=1):
        for ids, kind in ((objects[objects[:, 6] > 0, 1], "ground-truth"), (hypotheses[:, 1], "result")):
            if len(np.unique(ids)) != len(ids):
                raise InputError(f"frame {frame}: duplicate {kind} ids {sorted(ids.astype(int).tolist())}")
        iou = iou_matrix(tlwh_to_xyxy(objects[:, 2:6]), tlwh_to_xyxy(hypotheses[:, 2:6]))
        if objects[:, 7].any() and len(hypotheses):
            matching = np.where(iou < 0.5 - EPS, 0.0, iou)
            rows, cols = linear_sum_assignment(-matching)
            matched = matching[rows, cols] > EPS
            on_ignored = cols[matched][objects[rows[matched], 7] > 0]
            keep = np.setdiff1d(np.arange(len(hypotheses)), on_ignored)
            hypotheses, iou = hypotheses[keep], iou[:, keep]
        is_scored = objects[:, 6] > 0
        kept_hyp.append(hypotheses)
        similarity.append(iou[is_scored])
        gt_frames[frame - 1] = objects[is_scored]
    remaining = np.concatenate(kept_hyp) if kept_hyp else np.zeros((0, 6))
    hyp_id_map = {int(i): k for k, i in enumerate(np.unique(remaining[:, 1]))}
    return PreparedSequence(
        gt_ids=[np.array([gt_id_map[int(i)] for i in f[:, 1]], dtype=np.intp) for f in gt_frames],
        result_ids=[np.array([hyp_id_map[int(i)] for i in f[:, 1]], dtype=np.intp) for f in kept_hyp],
        similarity=similarity,
        num_gt_ids=len(gt_id_map),
        num_result_ids=len(hyp_id_map),
    )


def _clear(data: PreparedSequence, threshold: float) -> dict:
    """TrackEval's CLEAR: previous-frame pairs first (weight 1000), then the summed IoU."""
    num_gt_ids = data.num_gt_ids
    gt_count, matched_count, frag_count = np.zeros(num_gt_ids), np.zeros(num_gt_ids), np.zeros(num_gt_ids)
    last_id = np.full(num_gt_ids, np.nan)  # for ID switches: the last matched result id, any time ago
    previous_id = np.full(num_gt_ids, np.nan)  # for matching: the result id of the previous frame
    tp = fn = fp = switches = 0
    motp_sum = 0.0
    for gt_ids, hyp_ids, similarity in zip(data.gt_ids, data.result_ids, data.similarity, strict=True):
        gt_count[gt_ids] += 1
        if len(gt_ids) == 0 or len(hyp_ids) == 0:
            fp += len(hyp_ids)  # TrackEval keeps the previous frame's pairs over such a frame
            fn += len(gt_ids)
            continue
        score = 1000.0 * (hyp_ids[None, :] == previous_id[gt_ids][:, None]) + similarity
        score[similarity < threshold - EPS] = 0
        rows, cols = linear_sum_assignment(-score)
        matched = score[rows, cols] > EPS
        rows, cols = rows[matched], cols[matched]
        matched_gt, matched_hyp = gt_ids[rows], hyp_ids[cols]
        before = last_id[matched_gt]
        switches += int(np.sum(~np.isnan(before) & (matched_hyp != before)))
        matched_count[matched_gt] += 1
        not_tracked_before = np.isnan(previous_id)
        last_id[matched_gt] = matched_hyp
        previous_id[:] = np.nan
        previous_id[matched_gt] = matched_hyp
        frag_count += not_tracked_before & ~np.isnan(previous_id)
        tp += len(rows)
        fn += len(gt_ids) - len(rows)
        fp += len(hyp_ids) - len(rows)
        motp_sum += float(similarity[rows, cols].sum())
    present = gt_count > 0
    ratio = matched_count[present] / gt_count[present]
    mostly_tracked = int(np.sum(ratio > 0.8))
    partially_tracked = int(np.sum(ratio >= 0.2)) - mostly_tracked
    return {
        "num_matches": tp,
        "num_misses": fn,
        "num_false_positives": fp,
        "num_switches": switches,
        "motp_sum": motp_sum,
        "mostly_tracked": mostly_tracked,
        "partially_tracked": partially_tracked,
        "mostly_lost": num_gt_ids - mostly_tracked - partially_tracked,
        "num_fragmentations": int(np.sum(frag_count[frag_count > 0] - 1)),
    }


def _identity(data: PreparedSequence, threshold: float) -> int:
    """IDTP of the best global one-to-one mapping of ground-truth to result ids."""
    counts = np.zeros((data.num_gt_ids, data.num_result_ids))
    for gt_ids, hyp_ids, similarity in zip(data.gt_ids, data.result_ids, data.similarity, strict=True):
        rows, cols = np.nonzero(similarity >= threshold)
        np.add.at(counts, (gt_ids[rows], hyp_ids[cols]), 1)
    if counts.size == 0:
        return 0
    rows, cols = linear_sum_assignment(counts, maximize=True)
    return int(counts[rows, cols].sum())


def _hota(data: PreparedSequence) -> dict:
    """TrackEval's HOTA counts per α: TP, FN, FP, and AssA / AssRe / AssPr / LocA."""
    num_alphas = len(HOTA_ALPHAS)
    gt_count = np.zeros((data.num_gt_ids, 1))
    hyp_count = np.zeros((1, data.num_result_ids))
    potential = np.zeros((data.num_gt_ids, data.num_result_ids))
    for gt_ids, hyp_ids, similarity in zip(data.gt_ids, data.result_ids, data.similarity, strict=True):
        denominator = similarity.sum(0)[None, :] + similarity.sum(1)[:, None] - similarity
        normalised = np.divide(similarity, denominator, out=np.zeros_like(similarity), where=denominator > EPS)
        potential[gt_ids[:, None], hyp_ids[None, :]] += normalised
        gt_count[gt_ids] += 1
        hyp_count[0, hyp_ids] += 1
    alignment = potential / np.maximum(gt_count + hyp_count - potential, EPS)
    tp, fn, fp, loc_sum = (np.zeros(num_alphas) for _ in range(4))
    matches = np.zeros((num_alphas, data.num_gt_ids, data.num_result_ids))
    for gt_ids, hyp_ids, similarity in zip(data.gt_ids, data.result_ids, data.similarity, strict=True):
        if len(gt_ids) == 0 or len(hyp_ids) == 0:
            fp += len(hyp_ids)
            fn += len(gt_ids)
            continue
        rows, cols = linear_sum_assignment(-(alignment[gt_ids[:, None], hyp_ids[None, :]] * similarity))
        pair_similarity = similarity[rows, cols]
        kept = pair_similarity[None, :] >= HOTA_ALPHAS[:, None] - EPS  # [alphas, pairs]
        count = kept.sum(axis=1)
        tp += count
        fn += len(gt_ids) - count
        fp += len(hyp_ids) - count
        loc_sum += (kept * pair_similarity[None, :]).sum(axis=1)
        alpha_index, pair_index = np.nonzero(kept)
        np.add.at(matches, (alpha_index, gt_ids[rows[pair_index]], hyp_ids[cols[pair_index]]), 1)
    weights = np.maximum(1, tp)
    union = np.maximum(1, gt_count[None] + hyp_count[None] - matches)
    return {
        "hota_tp": tp,
        "hota_fn": fn,
        "hota_fp": fp,
        "assa_per_alpha": (matches * matches / union).sum(axis=(1, 2)) / weights,
        "assre_per_alpha": (matches * matches / np.maximum(1, gt_count[None])).sum(axis=(1, 2)) / weights,
        "asspr_per_alpha": (matches * matches / np.maximum(1, hyp_count[None])).sum(axis=(1, 2)) / weights,
        "loca_per_alpha": np.maximum(1e-10, loc_sum) / np.maximum(1e-10, tp),
    }


def _summary(counts: dict) -> MOTSummary:
    """The final ratios from summed counts (TrackEval's ``_compute_final_fields``)."""
    tp, fn, fp = (np.asarray(counts[k], dtype=np.float64) for k in ("hota_tp", "hota_fn", "hota_fp"))
    deta = tp / np.maximum(1, tp + fn + fp)
    assa = np.asarray(counts["assa_per_alpha"])
    objects, predictions = counts["num_objects"], counts["num_predictions"]
    matches, idtp = counts["num_matches"], counts["num_id_true_positives"]
    per_alpha = {k: tuple(float(v) for v in np.asarray(counts[k])) for k in _ALPHA_FIELDS}
    return MOTSummary(
        hota=float(np.mean(np.sqrt(deta * assa))),
        deta=float(np.mean(deta)),
        assa=float(np.mean(assa)),
        loca=float(np.mean(counts["loca_per_alpha"])),
        detre=float(np.mean(tp / np.maximum(1, tp + fn))),
        detpr=float(np.mean(tp / np.maximum(1, tp + fp))),
        assre=float(np.mean(counts["assre_per_alpha"])),
        asspr=float(np.mean(counts["asspr_per_alpha"])),
        mota=(matches - counts["num_false_positives"] - counts["num_switches"]) / max(1.0, objects),
        motp=counts["motp_sum"] / max(1.0, matches),
        idf1=idtp / max(1.0, 0.5 * (objects + predictions)),  # IDTP / (IDTP + IDFP/2 + IDFN/2)
        idp=idtp / max(1.0, predictions),
        idr=idtp / max(1.0, objects),
        **{k: int(counts[k]) for k in _INTEGER_FIELDS},
        motp_sum=float(counts["motp_sum"]),
        **per_alpha,
    )


_INTEGER_FIELDS = (
    "num_switches",
    "num_false_positives",
    "num_misses",
    "num_matches",
    "num_fragmentations",
    "num_id_true_positives",
    "num_objects",
    "num_predictions",
    "num_unique_objects",
    "mostly_tracked",
    "partially_tracked",
    "mostly_lost",
)
_ALPHA_FIELDS = (
    "hota_tp",
    "hota_fn",
    "hota_fp",
    "assa_per_alpha",
    "assre_per_alpha",
    "asspr_per_alpha",
    "loca_per_alpha",
)


def evaluate_mot(
    ground_truth: np.ndarray,
    results: np.ndarray,
    iou_threshold: float = 0.5,
    min_visibility: float = 0.0,
    benchmark: str = "MOT17",
) -> MOTSummary:
    """Compare tracker ``results`` with ``ground_truth`` (MOT rows ``[N, >=6]``, frames from 1) as TrackEval does.

    ``iou_threshold`` is CLEAR's and Identity's match threshold (HOTA uses every α). Raises
    ``InputError`` for duplicate ids within one frame.
    """
    data = prepare_sequence(ground_truth, results, benchmark, min_visibility)
    counts = _clear(data, iou_threshold)
    counts.update(_hota(data))
    counts["num_id_true_positives"] = _identity(data, iou_threshold)
    counts["num_objects"] = sum(len(ids) for ids in data.gt_ids)
    counts["num_predictions"] = sum(len(ids) for ids in data.result_ids)
    counts["num_unique_objects"] = data.num_gt_ids
    return _summary(counts)


def combine_summaries(summaries: list[MOTSummary]) -> MOTSummary:
    """One summary over several sequences, as TrackEval's COMBINED_SEQ: counts summed, then the ratios;
    AssA, AssRe, AssPr and LocA per α averaged with each sequence's TPs as weights."""
    counts = {k: sum(getattr(s, k) for s in summaries) for k in (*_INTEGER_FIELDS, "motp_sum")}
    for key in ("hota_tp", "hota_fn", "hota_fp"):
        counts[key] = np.sum([getattr(s, key) for s in summaries], axis=0)
    tp = np.array([s.hota_tp for s in summaries])
    for key in ("assa_per_alpha", "assre_per_alpha", "asspr_per_alpha"):
        counts[key] = (np.array([getattr(s, key) for s in summaries]) * tp).sum(0) / np.maximum(1.0, tp.sum(0))
    loc_sum = (np.array([s.loca_per_alpha for s in summaries]) * tp).sum(0)
    counts["loca_per_alpha"] = np.maximum(1e-10, loc_sum) / np.maximum(1e-10, tp.sum(0))
    return _summary(counts)


SUMMARY_COLUMNS = (
    ("HOTA", "hota", ".3f"),
    ("DetA", "deta", ".3f"),
    ("AssA", "assa", ".3f"),
    ("LocA", "loca", ".3f"),
    ("MOTA", "mota", ".3f"),
    ("IDF1", "idf1", ".3f"),
    ("MOTP", "motp", ".3f"),
    ("IDSW", "num_switches", "d"),
    ("FP", "num_false_positives", "d"),
    ("FN", "num_misses", "d"),
    ("MT", "mostly_tracked", "d"),
    ("ML", "mostly_lost", "d"),
    ("GT", "num_objects", "d"),
)


def format_summary(summaries: dict[str, MOTSummary]) -> str:
    """A fixed-width table, one row per named summary (TrackEval's headline columns)."""
    width = max([24, *(len(name) + 2 for name in summaries)])
    lines = [f"{'':<{width}}" + "".join(f"{title:>8}" for title, _, _ in SUMMARY_COLUMNS)]
    for name, summary in summaries.items():
        lines.append(
            f"{name:<{width}}" + "".join(f"{getattr(summary, key):>8{fmt}}" for _, key, fmt in SUMMARY_COLUMNS)
        )
    return "\n".join(lines)
