"""Multi-object tracking evaluation: CLEAR-MOT (MOTA, MOTP, ID switches, FP, misses) and IDF1.

Why our own: ``motmetrics`` 1.4.0 calls ``np.asfarray`` (removed in NumPy 2) and the
NumPy-2-ready ``trackeval`` 1.3 requires ``opencv-python`` next to our ``opencv-python-headless``.
The definitions follow ``motmetrics`` event for event, and the tests check equal numbers
against ``motmetrics`` (run there with a one-line NumPy shim).

CLEAR-MOT (Bernardin & Stiefelhagen 2008), per frame with IoU >= ``iou_threshold`` as a valid pair:
1. a ground-truth object keeps its last matched hypothesis if that pair is still valid;
2. the remaining objects and hypotheses are matched by Hungarian assignment on ``1 − IoU``
   (most matches first); a match to a different hypothesis than the object's last one is an ID switch;
3. unmatched objects are misses (FN), unmatched hypotheses false positives (FP).
``MOTA = 1 − (FN + FP + IDSW) / #objects``; ``MOTP`` = mean IoU of the matches.

IDF1 (Ristani et al. 2016): one global one-to-one mapping of ground-truth to hypothesis
trajectories maximising the frames where the mapped pair is a valid pair (IDTP);
``IDF1 = 2·IDTP / (#objects + #hypotheses)``, ``IDP = IDTP / #hypotheses``, ``IDR = IDTP / #objects``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment

from myutils.cli import InputError
from myutils.tracking.association import linear_assignment
from myutils.tracking.boxes import iou_matrix, tlwh_to_xyxy
from myutils.tracking.mot_io import rows_by_frame


@dataclass
class MOTSummary:
    mota: float
    motp: float
    idf1: float
    idp: float
    idr: float
    num_switches: int
    num_false_positives: int
    num_misses: int
    num_matches: int
    num_id_true_positives: int
    num_objects: int
    num_predictions: int
    num_unique_objects: int
    mostly_tracked: int
    mostly_lost: int

    def as_dict(self) -> dict:
        return asdict(self)


def evaluate_mot(
    ground_truth: np.ndarray, results: np.ndarray, iou_threshold: float = 0.5, min_visibility: float = 0.0
) -> MOTSummary:
    """Compare tracker ``results`` with ``ground_truth`` (both MOT rows ``[N, >=6]``, frames from 1).

    Ground-truth rows whose column 7 ("consider" flag) is 0, or whose visibility (column 9) is below
    ``min_visibility``, are left out. Raises ``ValueError`` for duplicate ids within one frame.
    """
    gt = np.asarray(ground_truth, dtype=np.float64).reshape(
        -1, np.shape(ground_truth)[-1] if len(ground_truth) else 10
    )
    hyp = np.asarray(results, dtype=np.float64).reshape(-1, np.shape(results)[-1] if len(results) else 10)
    if gt.shape[1] > 6:
        gt = gt[gt[:, 6] != 0]
    if min_visibility > 0 and gt.shape[1] > 8:
        gt = gt[gt[:, 8] >= min_visibility]
    gt_frames, hyp_frames = rows_by_frame(gt), rows_by_frame(hyp)
    gt_index = {int(i): k for k, i in enumerate(np.unique(gt[:, 1]))}
    hyp_index = {int(i): k for k, i in enumerate(np.unique(hyp[:, 1]))}
    overlap_counts = np.zeros((len(gt_index), len(hyp_index)), dtype=np.int64)  # IoU-valid co-occurrences
    matched_frames = np.zeros(len(gt_index), dtype=np.int64)
    last_match: dict[int, int] = {}
    switches = false_positives = misses = matches = 0
    iou_sum = 0.0

    for frame in sorted(set(gt_frames) | set(hyp_frames)):
        objects = gt_frames.get(frame, np.zeros((0, gt.shape[1])))
        hypotheses = hyp_frames.get(frame, np.zeros((0, hyp.shape[1])))
        object_ids, hypothesis_ids = objects[:, 1].astype(int), hypotheses[:, 1].astype(int)
        for ids, kind in ((object_ids, "ground-truth"), (hypothesis_ids, "result")):
            if len(np.unique(ids)) != len(ids):
                raise InputError(f"frame {frame}: duplicate {kind} ids {sorted(ids.tolist())}")
        iou = iou_matrix(tlwh_to_xyxy(objects[:, 2:6]), tlwh_to_xyxy(hypotheses[:, 2:6]))
        valid = iou >= iou_threshold
        rows, cols = np.nonzero(valid)
        np.add.at(
            overlap_counts,
            ([gt_index[o] for o in object_ids[rows]], [hyp_index[h] for h in hypothesis_ids[cols]]),
            1,
        )

        pairs = []
        # 1. keep established correspondences that are still valid
        kept_rows, kept_cols = [], []
        for i, object_id in enumerate(object_ids):
            previous = np.nonzero(hypothesis_ids == last_match.get(object_id, -(10**9)))[0]
            if len(previous) and valid[i, previous[0]] and previous[0] not in kept_cols:
                kept_rows.append(i)
                kept_cols.append(previous[0])
                pairs.append((i, previous[0]))
        # 2. Hungarian on what is left; a new partner is a switch
        cost = np.where(valid, 1.0 - iou, np.inf)
        cost[kept_rows, :] = np.inf
        cost[:, kept_cols] = np.inf
        assigned, _, _ = linear_assignment(cost)
        for i, j in assigned:
            object_id = object_ids[i]
            if object_id in last_match and last_match[object_id] != hypothesis_ids[j]:
                switches += 1
            pairs.append((i, j))
        for i, j in pairs:
            last_match[object_ids[i]] = hypothesis_ids[j]
            matched_frames[gt_index[object_ids[i]]] += 1
            iou_sum += iou[i, j]
        matches += len(pairs)
        misses += len(object_ids) - len(pairs)
        false_positives += len(hypothesis_ids) - len(pairs)

    num_objects, num_predictions = len(gt), len(hyp)
    id_true_positives = 0
    if overlap_counts.size:
        rows, cols = linear_sum_assignment(overlap_counts, maximize=True)
        id_true_positives = int(overlap_counts[rows, cols].sum())
    present_frames = np.bincount([gt_index[int(i)] for i in gt[:, 1]], minlength=len(gt_index))
    track_ratio = matched_frames / np.maximum(present_frames, 1)
    return MOTSummary(
        mota=1.0 - (misses + false_positives + switches) / num_objects if num_objects else float("nan"),
        motp=float(iou_sum / matches) if matches else float("nan"),
        idf1=2 * id_true_positives / (num_objects + num_predictions)
        if num_objects + num_predictions
        else float("nan"),
        idp=id_true_positives / num_predictions if num_predictions else float("nan"),
        idr=id_true_positives / num_objects if num_objects else float("nan"),
        num_switches=switches,
        num_false_positives=false_positives,
        num_misses=misses,
        num_matches=matches,
        num_id_true_positives=id_true_positives,
        num_objects=num_objects,
        num_predictions=num_predictions,
        num_unique_objects=len(gt_index),
        mostly_tracked=int((track_ratio >= 0.8).sum()),
        mostly_lost=int((track_ratio < 0.2).sum()),
    )


def combine_summaries(summaries: list[MOTSummary]) -> MOTSummary:
    """Totals over several sequences (MOTChallenge style: counts are summed, then the ratios recomputed)."""
    total = {
        key: sum(getattr(s, key) for s in summaries)
        for key in (
            "num_switches",
            "num_false_positives",
            "num_misses",
            "num_matches",
            "num_id_true_positives",
            "num_objects",
            "num_predictions",
            "num_unique_objects",
            "mostly_tracked",
            "mostly_lost",
        )
    }
    iou_sum = sum(s.motp * s.num_matches for s in summaries if s.num_matches)
    objects, predictions, idtp = (
        total["num_objects"],
        total["num_predictions"],
        total["num_id_true_positives"],
    )
    errors = total["num_misses"] + total["num_false_positives"] + total["num_switches"]
    return MOTSummary(
        mota=1.0 - errors / objects if objects else float("nan"),
        motp=iou_sum / total["num_matches"] if total["num_matches"] else float("nan"),
        idf1=2 * idtp / (objects + predictions) if objects + predictions else float("nan"),
        idp=idtp / predictions if predictions else float("nan"),
        idr=idtp / objects if objects else float("nan"),
        **total,
    )


def format_summary(summaries: dict[str, MOTSummary]) -> str:
    """A fixed-width table, one row per named summary."""
    header = (
        f"{'':<24}{'MOTA':>8}{'IDF1':>8}{'MOTP':>8}{'IDSW':>7}{'FP':>7}{'FN':>7}{'MT':>5}{'ML':>5}{'GT':>7}"
    )
    lines = [header]
    for name, s in summaries.items():
        lines.append(
            f"{name:<24}{s.mota:>8.3f}{s.idf1:>8.3f}{s.motp:>8.3f}{s.num_switches:>7d}"
            f"{s.num_false_positives:>7d}{s.num_misses:>7d}{s.mostly_tracked:>5d}{s.mostly_lost:>5d}"
            f"{s.num_objects:>7d}"
        )
    return "\n".join(lines)
