"""SS-Net class-wise contrastive memory: a per-class feature bank and the losses that pull features toward it.

The design follows SS-Net (Wu et al., MICCAI 2022) and SemiSeg-Contrastive (Alonso et al., ICCV 2021).
Each class keeps up to ``elements_per_class`` good feature vectors (correctly predicted labelled pixels or
confident pseudo-labelled ones). The reference loss pulls every current feature of class ``c`` toward all
memory items of class ``c``; it has no negatives::

    m̂ = normalize(M_c), f̂ = normalize(F_c)           M_c: [N, D] memory, F_c: [M, D] features
    Dist = 1 − f̂ m̂ᵀ                                   [M, N], values in [0, 2]
    learned selector: Dist_ij *= a_i · b_j            a = M·w_f/Σw_f, b = N·w_m/Σw_m (mean weight 1)
                      w_f = sigmoid(selector_c(F_c.detach())), w_m = sigmoid(memory_selector_c(m̂))
    L_contrastive = Σ_c mean(Dist) / num_classes      classes with M < 2 or N < 2 add 0

Where the memory comes from (both originals agree): by default (``memory_from="labelled"``) only labelled
calls store candidates, the correctly predicted pixels, as SS-Net (``train_ss_3d.py``: labelled foreground
with ``prediction == label``) and SemiSeg-Contrastive (the EMA teacher's correct predictions) do; an
unlabelled call only computes its loss against that memory. ``memory_from="labelled+pseudo"`` also stores
confident pseudo-labelled pixels, after the call's loss, and never over items a labelled call stored in the
same step (a labelled call starts a step): they fill free slots of such a class and update the others by
``memory_mode``. ``memory_ignore_classes`` keeps classes out of the memory (SS-Net: background).
``memory_features`` are what the memory stores (projections computed under ``no_grad`` by an eval-mode
student or an EMA teacher); ``features`` are what the loss pulls (the student's). Labels and predictions at
another resolution than dense features are resampled to it with nearest neighbours, as the references do.
Under torchrun the candidates of all ranks are gathered before the selection, so every rank holds the same
memory (the selectors must then be identical on every rank: broadcast them and average their gradients).

The loss is divided by all ``num_classes`` (as the reference does), not by the classes present, so a
class's pull on its features does not grow when other classes are missing from the batch.

Because the weights have mean 1, ``mean_ij a_i b_j (1 − f̂_i·m̂_j) = 1 − mean_i a_i f̂_i · mean_j b_j m̂_j``:
the loss is computed from two weighted means in O((M + N)·D) and never builds the [M, N] matrix.

Auxiliary terms, computed against prototypes ``p_c = normalize(mean_j m̂_cj)`` and carrying gradients to
the features::

    L_intra = mean_i ‖f̂_i − p_{y_i}‖²                                  compactness
    L_inter = mean_{i, c ≠ y_i} max(0, margin − ‖f̂_i − p_c‖)           separation from other classes

Fixed defects of the originals: the selector keeps the *highest*-ranked features (they sorted ascending);
memory-item weights are rescaled over the N items (the reference's rescale on a [1, N] tensor was
identically 1); the intra/inter terms have gradients; the memory stays on the features' device as
buffers; the selectors exist from construction, so an optimizer can own them before the first step.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from myutils.cli import InputError
from myutils.training.distributed import all_gather_variable

MEMORY_MODES = ("replace", "fifo")
MEMORY_SOURCES = ("labelled", "labelled+pseudo")


def make_selector(feature_dim: int) -> nn.Sequential:
    """The reference's per-class scoring MLP: Linear, BatchNorm, LeakyReLU(0.2), Linear to one logit."""
    return nn.Sequential(
        nn.Linear(feature_dim, feature_dim),
        nn.BatchNorm1d(feature_dim),
        nn.LeakyReLU(negative_slope=0.2),
        nn.Linear(feature_dim, 1),
    )


def rescaled_sigmoid_weights(logits: Tensor) -> Tensor:
    """``n · w / Σ w`` with ``w = sigmoid(logits)`` over the ``n`` rows: positive weights of mean exactly 1."""
    weights = torch.sigmoid(logits.reshape(-1))
    return weights * (weights.numel() / weights.sum())


def rows_by_class(class_ids: Tensor, group_sizes: list[int]) -> list[Tensor]:
    """Row indices of each id 0..len(group_sizes)-1, ascending (as ``(class_ids == c).nonzero()`` gives them).

    One stable sort replaces a mask and a ``nonzero`` per class; ``group_sizes`` is ``bincount(class_ids)``.
    """
    return list(class_ids.argsort(stable=True).split(group_sizes))


def max_softmax(logits: Tensor) -> tuple[Tensor, Tensor]:
    """(max softmax probability, argmax) over dim 1: ``1 / Σ_k exp(l_k − max l)``, no softmax tensor kept."""
    top, predicted = logits.max(dim=1)
    return 1.0 / (logits - top.unsqueeze(1)).exp().sum(dim=1), predicted


def resample_nearest(values: Tensor, size: torch.Size) -> Tensor:
    """Maps [B, *S] resampled to [B, *size] by nearest neighbour (``F.interpolate``'s "nearest", as the
    references resize labels and predictions to the feature resolution); dtype kept."""
    if tuple(values.shape[1:]) == tuple(size):
        return values
    if values.numel() == 0 or 0 in tuple(size):
        return values.new_zeros((values.shape[0], *size))
    resampled = F.interpolate(values.unsqueeze(1).double(), size=tuple(size), mode="nearest").squeeze(1)
    return resampled.to(values.dtype)


def any_nonfinite(values: Tensor) -> Tensor:
    """0-d bool: some element is NaN or ±inf (min and max propagate NaN and reach ±inf); False when empty."""
    if values.numel() == 0:
        return torch.zeros((), dtype=torch.bool, device=values.device)
    return ~torch.isfinite(torch.stack(torch.aminmax(values))).all()


def distributed_world() -> int:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_world_size()
    return 1


class ContrastivePrototypeManager(nn.Module):
    """Class-wise feature memory (buffers) plus optional learned feature/memory selectors (parameters).

    Move it with ``.to(device)`` like any module; ``state_dict()`` holds the memory, its fill counts and
    the selectors, so a checkpoint restores everything with ``load_state_dict`` (``weights_only=True`` safe).

    Args:
        num_classes: classes 0..num_classes-1; ``ignore_index`` marks features that take no part.
        feature_dim: D of the (projected) features.
        elements_per_class: memory capacity per class.
        use_learned_selector: per-class MLPs rank memory candidates and weight the loss terms.
        memory_mode: "replace" (SS-Net: the new selection replaces the class memory) or
            "fifo" (SemiSeg-Contrastive: ``concat(new, old)[:elements_per_class]``).
        memory_from: "labelled" (both originals: only correctly predicted labelled pixels are stored) or
            "labelled+pseudo" (unlabelled calls also store confident pseudo-labels, never over the
            items a labelled call stored in the same step).
        memory_ignore_classes: class ids never stored (e.g. ``(0,)``: background, as SS-Net).
        confidence_threshold: softmax probability a prediction needs to become a pseudo-label.
        ignore_index: label value to skip (e.g. 255 for unannotated pixels).
        margin: hinge margin of the inter-class term, on distances between unit vectors (range [0, 2]).
    """

    def __init__(
        self,
        num_classes: int,
        feature_dim: int,
        elements_per_class: int = 32,
        use_learned_selector: bool = False,
        memory_mode: str = "replace",
        confidence_threshold: float = 0.95,
        ignore_index: int = 255,
        margin: float = 1.0,
        memory_from: str = "labelled",
        memory_ignore_classes: tuple[int, ...] | list[int] = (),
    ):
        super().__init__()
        if num_classes < 2:
            raise InputError(f"num_classes must be at least 2, got {num_classes}")
        if feature_dim < 1 or elements_per_class < 1:
            raise InputError(
                f"feature_dim and elements_per_class must be positive, got {feature_dim} and {elements_per_class}"
            )
        if memory_mode not in MEMORY_MODES:
            raise InputError(f"memory_mode must be one of {MEMORY_MODES}, got {memory_mode!r}")
        if not 0.0 <= confidence_threshold <= 1.0:
            raise InputError(f"confidence_threshold must be in [0, 1], got {confidence_threshold}")
        if 0 <= ignore_index < num_classes:
            raise InputError(f"ignore_index {ignore_index} collides with a class id (0..{num_classes - 1})")
        if memory_from not in MEMORY_SOURCES:
            raise InputError(f"memory_from must be one of {MEMORY_SOURCES}, got {memory_from!r}")
        memory_ignore_classes = tuple(sorted({int(c) for c in memory_ignore_classes}))
        if any(not 0 <= c < num_classes for c in memory_ignore_classes) or len(memory_ignore_classes) == num_classes:
            raise InputError(
                f"memory_ignore_classes must be class ids in 0..{num_classes - 1}, not all of them; "
                f"got {list(memory_ignore_classes)}"
            )
        self.num_classes = num_classes
        self.feature_dim = feature_dim
        self.elements_per_class = elements_per_class
        self.use_learned_selector = use_learned_selector
        self.memory_mode = memory_mode
        self.confidence_threshold = confidence_threshold
        self.ignore_index = ignore_index
        self.margin = margin
        self.memory_from = memory_from
        self.memory_ignore_classes = memory_ignore_classes
        if use_learned_selector:
            self.feature_selectors = nn.ModuleList(make_selector(feature_dim) for _ in range(num_classes))
            self.memory_selectors = nn.ModuleList(make_selector(feature_dim) for _ in range(num_classes))
        else:
            self.feature_selectors = None
            self.memory_selectors = None
        self.register_buffer("memory", torch.zeros(num_classes, elements_per_class, feature_dim))
        self.register_buffer("memory_count", torch.zeros(num_classes, dtype=torch.long))
        # classes a labelled call stored in the current step: pseudo-labels only fill their free slots.
        # Not saved: a checkpoint is taken between steps, and the next labelled call starts a new one.
        self.register_buffer("labelled_this_step", torch.zeros(num_classes, dtype=torch.bool), persistent=False)
        stored = torch.ones(num_classes, dtype=torch.bool)
        stored[list(memory_ignore_classes)] = False
        self.register_buffer("stored_classes", stored, persistent=False)

    def extra_repr(self) -> str:
        return (
            f"num_classes={self.num_classes}, feature_dim={self.feature_dim}, "
            f"elements_per_class={self.elements_per_class}, memory_mode={self.memory_mode!r}, "
            f"memory_from={self.memory_from!r}, memory_ignore_classes={list(self.memory_ignore_classes)}"
        )

    def get_selectors(self) -> tuple[nn.ModuleList | None, nn.ModuleList | None]:
        """(feature_selectors, memory_selectors); both None without the learned selector."""
        return self.feature_selectors, self.memory_selectors

    def class_memory(self, class_id: int) -> Tensor:
        """The filled part of class ``class_id``'s memory, [n, D] (a view: do not modify)."""
        class_id = self._check_class_id(class_id)
        return self.memory[class_id, : int(self.memory_count[class_id])]

    # ----------------------------------------------------------------- memory
    @torch.no_grad()
    def update_memory(
        self, features_dict: Mapping[int, Tensor], confidences: Mapping[int, Tensor] | None = None
    ) -> None:
        """Store candidates ``{class_id: [n, D]}`` as a labelled update; classes not in the dict keep their memory.

        When a class has more than ``elements_per_class`` candidates, keep the highest-ranked by the
        learned selector, else the most confident by ``confidences[class_id]`` ([n]), else the first ones.
        Classes in ``memory_ignore_classes`` are not stored. Under torchrun every rank must call it.
        """
        rows, labels, scores = [], [], []
        for class_id, features in features_dict.items():
            class_id = self._check_class_id(class_id)
            features = self._check_features(features, f"features_dict[{class_id}]")
            confidence = None if confidences is None else confidences.get(class_id)
            if confidence is None:
                confidence = -torch.arange(features.shape[0], dtype=torch.float32, device=features.device)
            elif confidence.shape != features.shape[:1]:
                raise InputError(
                    f"confidences[{class_id}] has shape {tuple(confidence.shape)}, expected ({features.shape[0]},)"
                )
            rows.append(features.detach())
            labels.append(torch.full(features.shape[:1], class_id, dtype=torch.long, device=features.device))
            scores.append(confidence.float())
        if rows or distributed_world() > 1:  # every rank joins the gather, with or without candidates
            empty = self.memory.new_zeros(0, self.feature_dim)
            features = torch.cat(rows) if rows else empty
            labels = torch.cat(labels) if labels else torch.zeros(0, dtype=torch.long, device=features.device)
            self._store(features, labels, torch.cat(scores) if scores else features.new_zeros(0), labelled=True)

    def _store(self, features: Tensor, labels: Tensor, scores: Tensor, labelled: bool) -> None:
        """Per class, keep the ``elements_per_class`` best-scored rows (labels == ignore_index: not candidates).

        A labelled store starts a step: it replaces (or queues into) each class it has candidates for. A
        pseudo-label store (``labelled=False``) only fills the free slots of classes stored by this step's
        labelled call and updates the other classes by ``memory_mode``.
        """
        features = features.detach()
        candidate = (labels != self.ignore_index) & (labels >= 0) & (labels < self.num_classes)
        candidate &= self.stored_classes[labels.clamp(0, self.num_classes - 1)]
        labels = labels.masked_fill(~candidate, self.ignore_index)
        if distributed_world() > 1:
            features, labels, scores = self._gather_candidates(features, labels, scores)
        if labelled:
            self.labelled_this_step.zero_()
        class_ids = labels.masked_fill(labels == self.ignore_index, self.num_classes)  # ignored: spare group C
        group_sizes = torch.bincount(class_ids, minlength=self.num_classes + 1).tolist()
        sizes = group_sizes[: self.num_classes]
        if not any(sizes):
            return
        if self.feature_selectors is not None:
            scores = self._selector_scores(features, class_ids, group_sizes, scores)
        ranked = self._ranked_rows(labels, scores, features.shape[0])
        counts = self.memory_count.tolist()
        keep_labelled = [] if labelled else self.labelled_this_step.tolist()
        for class_id, size in enumerate(sizes):
            if size == 0:
                continue
            chosen = features[ranked[class_id, : min(size, self.elements_per_class)]].to(self.memory.dtype)
            if not labelled and keep_labelled[class_id]:  # this step's labelled items stay; free slots only
                kept = self.memory[class_id, : counts[class_id]]
                chosen = torch.cat([kept, chosen])[: self.elements_per_class]
            elif self.memory_mode == "fifo":
                chosen = torch.cat([chosen, self.memory[class_id, : counts[class_id]]])[: self.elements_per_class]
            self.memory[class_id, : chosen.shape[0]] = chosen
            self.memory_count[class_id] = chosen.shape[0]
            if labelled:
                self.labelled_this_step[class_id] = True

    def _ranked_rows(self, labels: Tensor, scores: Tensor, num_rows: int) -> Tensor:
        """[C, min(K, n)] row indices of each class's best scores, best first (one top-k over a [C, n] table)."""
        members = labels[None, :] == torch.arange(self.num_classes, device=labels.device)[:, None]
        ranked = scores[None, :].masked_fill(~members, float("-inf"))
        return ranked.topk(min(self.elements_per_class, num_rows), dim=1).indices

    def _gather_candidates(self, features: Tensor, labels: Tensor, scores: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The candidates of every rank, in rank order, so all ranks select (and store) the same rows.

        Without the learned selector the ranking is per row, so each rank first keeps only its own best
        ``elements_per_class`` per class (the global best are among them); the selector ranks a class's
        candidates together (BatchNorm), so all of them travel.
        """
        keep = labels != self.ignore_index
        if self.feature_selectors is None and bool(keep.any()):
            ranked = self._ranked_rows(labels, scores, features.shape[0])
            sizes = torch.bincount(labels[keep], minlength=self.num_classes).clamp_max(self.elements_per_class)
            keep = torch.cat([ranked[c, :n] for c, n in enumerate(sizes.tolist())])
            keep = keep.sort().values  # rows keep their original order
        packed = torch.cat([features[keep].float(), labels[keep, None].float(), scores[keep, None].float()], dim=1)
        gathered, _ = all_gather_variable(packed)
        return gathered[:, : self.feature_dim], gathered[:, self.feature_dim].long(), gathered[:, self.feature_dim + 1]

    def _selector_scores(self, features: Tensor, class_ids: Tensor, group_sizes: list[int], scores: Tensor) -> Tensor:
        """Selector logits replace the scores of classes that overflow the memory (logit order = sigmoid order)."""
        overflowing = [c for c, size in enumerate(group_sizes[: self.num_classes]) if size > self.elements_per_class]
        if not overflowing:
            return scores
        scores = scores.clone()
        class_rows = rows_by_class(class_ids, group_sizes)
        for class_id in overflowing:
            rows = class_rows[class_id]
            # index_select copies whole rows; features[rows] gathers element by element, ~10x slower on CPU
            logits = self.feature_selectors[class_id](features.index_select(0, rows).float())
            scores[rows] = logits.reshape(-1)
        return scores

    # ------------------------------------------------------------------- loss
    def contrastive_class_to_class_learned_memory(self, features: Tensor, class_labels: Tensor) -> Tensor:
        """The reference loss of ``features`` [N, D] (or [B, D, *S]) with ``class_labels`` against the current memory."""
        features, _, class_labels, _ = self._flatten_inputs(features, None, class_labels)
        with torch.autocast(features.device.type, enabled=False):
            features = features.float()
            return self._contrastive_loss(features, F.normalize(features, dim=1), class_labels)

    def update_and_compute_loss(
        self,
        features: Tensor,
        predictions: Tensor,
        labels: Tensor | None,
        contrastive_weight: float = 1.0,
        intra_weight: float = 0.1,
        inter_weight: float = 0.1,
        is_labeled: bool = True,
        memory_features: Tensor | None = None,
    ) -> tuple[Tensor, dict[str, float]]:
        """Update the memory from this batch (no grad), then return the weighted loss and its parts.

        Shapes: features [N, D], predictions (logits) [N, C], labels [N]; or dense maps [B, D, *S],
        [B, C, *S'], [B, *S''] for segmentation, where predictions and labels may have another resolution
        than the features (resampled to ``S`` by nearest neighbour). ``memory_features`` (the shape of
        ``features``; default: ``features`` detached) are what the memory stores, e.g. projections from an
        EMA teacher or an eval-mode student computed under ``no_grad``; ``features`` are what the loss pulls.

        Labelled data (``is_labeled`` and labels given): the loss uses the labels; the memory candidates are
        the correctly predicted rows, stored before the loss (as the reference). Unlabelled data
        (``is_labeled=False``; labels are then ignored): pseudo-labels are the predictions whose softmax
        probability reaches ``confidence_threshold``; the loss uses only those, against the memory as it is;
        with ``memory_from="labelled+pseudo"`` they are stored afterwards. Under torchrun every rank must
        make the same calls (the memory candidates are gathered from all ranks).
        """
        if is_labeled and labels is None:
            raise InputError("labels are required when is_labeled=True (pass is_labeled=False for pseudo-labels)")
        features, predictions, labels, memory_features = self._flatten_inputs(
            features, predictions, labels if is_labeled else None, memory_features)
        with torch.autocast(features.device.type, enabled=False):
            features = features.float()
            confidence, predicted = predictions
            with torch.no_grad():
                if labels is None:
                    targets = predicted.masked_fill(confidence < self.confidence_threshold, self.ignore_index)
                else:
                    targets = labels
                    self._store(memory_features, labels.masked_fill(predicted != labels, self.ignore_index),
                                confidence, labelled=True)
            unit = F.normalize(features, dim=1)
            contrastive = self._contrastive_loss(features, unit, targets)
            intra, inter = self._prototype_terms(unit, targets)
            total = contrastive_weight * contrastive + intra_weight * intra + inter_weight * inter
            used_fraction = (targets != self.ignore_index).sum() / max(targets.numel(), 1)
            if labels is None and self.memory_from == "labelled+pseudo":
                with torch.no_grad():
                    self._store(memory_features, targets, confidence, labelled=False)
        values = torch.stack([contrastive, intra, inter, total, used_fraction.float()]).detach().tolist()
        keys = ("prototype_contrastive", "prototype_intra", "prototype_inter", "prototype_total", "prototype_used_fraction")
        return total, dict(zip(keys, values, strict=True))

    def _contrastive_loss(self, features: Tensor, unit: Tensor, labels: Tensor) -> Tensor:
        """Σ_c [1 − (mean_i a_i f̂_i)·(mean_j b_j m̂_j)] / C over classes with ≥ 2 features and ≥ 2 memory items."""
        class_ids = labels.masked_fill(labels == self.ignore_index, self.num_classes)  # ignored: spare row C
        group_sizes = torch.bincount(class_ids, minlength=self.num_classes + 1)
        class_sizes = group_sizes[: self.num_classes]
        usable = (class_sizes >= 2) & (self.memory_count >= 2)
        memory_weights = self._filled_mask().float()
        if self.feature_selectors is not None:
            class_rows = rows_by_class(class_ids, group_sizes.tolist())
            weights, memory_weights = self._selector_weights(features, class_rows, usable, memory_weights)
            unit = unit * weights[:, None]
        feature_sums = unit.new_zeros(self.num_classes + 1, self.feature_dim).index_add_(0, class_ids, unit)
        feature_means = feature_sums[: self.num_classes] / class_sizes.clamp_min(1)[:, None]
        memory_means = (self._unit_memory() * memory_weights[..., None]).sum(1)
        memory_means = memory_means / self.memory_count.clamp_min(1)[:, None]
        per_class = 1.0 - (feature_means * memory_means).sum(1)
        return (per_class * usable).sum() / self.num_classes

    def _selector_weights(
        self, features: Tensor, class_rows: list[Tensor], usable: Tensor, memory_weights: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Rescaled sigmoid weights (mean 1 within each class) for the usable classes' features and memory."""
        counts = self.memory_count.tolist()
        unit_memory = self._unit_memory()
        detached = features.detach()  # the selectors weight the features; they do not send gradients into them
        weighted_rows, row_weights = [], []
        for class_id in usable.nonzero().reshape(-1).tolist():
            rows = class_rows[class_id]
            # index_select copies whole rows; features[rows] gathers element by element, ~10x slower on CPU
            feature_logits = self.feature_selectors[class_id](detached.index_select(0, rows))
            weighted_rows.append(rows)
            row_weights.append(rescaled_sigmoid_weights(feature_logits))
            memory_logits = self.memory_selectors[class_id](unit_memory[class_id, : counts[class_id]])
            filled = torch.arange(counts[class_id], device=rows.device)
            memory_weights = memory_weights.index_put(
                (torch.full_like(filled, class_id), filled), rescaled_sigmoid_weights(memory_logits)
            )
        weights = features.new_ones(features.shape[0])  # rows of other classes do not enter the loss
        if weighted_rows:  # one write for all classes: their rows are disjoint
            weights = weights.index_put((torch.cat(weighted_rows),), torch.cat(row_weights))
        return weights, memory_weights

    def _filled_mask(self) -> Tensor:
        """[C, K] True where the memory row holds an item."""
        return torch.arange(self.elements_per_class, device=self.memory.device) < self.memory_count[:, None]

    def _unit_memory(self) -> Tensor:
        """[C, K, D] normalized memory items, zero rows where empty."""
        return F.normalize(self.memory.float(), dim=2) * self._filled_mask()[..., None]

    def prototypes(self) -> tuple[Tensor, Tensor]:
        """Unit prototypes ``normalize(mean of normalized memory)`` [C, D] and which classes have one [C]."""
        return F.normalize(self._unit_memory().sum(dim=1), dim=1), self.memory_count > 0

    def _prototype_terms(self, unit: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        prototypes, has_prototype = self.prototypes()
        cosine = unit @ prototypes.T  # [N, C]
        squared_distance = (2.0 - 2.0 * cosine).clamp_min(0.0)  # ‖f̂ − p‖² for unit vectors
        valid = labels != self.ignore_index
        own = labels.masked_fill(~valid, 0)[:, None]
        intra_rows = valid & has_prototype[own.squeeze(1)]
        intra = (squared_distance.gather(1, own).squeeze(1) * intra_rows).sum() / intra_rows.sum().clamp_min(1)
        distance = (squared_distance + 1e-12).sqrt()  # eps keeps the gradient finite at distance 0
        hinge = (self.margin - distance).clamp_min(0.0) * has_prototype
        other_classes = hinge.sum(1) - hinge.gather(1, own).squeeze(1)  # every prototype but the own class's
        pairs = valid.sum() * has_prototype.sum() - intra_rows.sum()
        inter = (other_classes * valid).sum() / pairs.clamp_min(1)
        return intra, inter

    # ------------------------------------------------------------- validation
    def _check_class_id(self, class_id: int) -> int:
        class_id = int(class_id)
        if not 0 <= class_id < self.num_classes:
            raise InputError(f"class id {class_id} is out of range 0..{self.num_classes - 1}")
        return class_id

    def _check_device(self, tensor: Tensor, name: str) -> None:
        if tensor.device != self.memory.device:
            raise InputError(
                f"{name} is on {tensor.device} but the prototype memory is on {self.memory.device}; "
                f"move the manager with .to({str(tensor.device)!r}) before building its optimizer"
            )

    def _check_features(self, features: Tensor, name: str) -> Tensor:
        if features.dim() != 2 or features.shape[1] != self.feature_dim:
            raise InputError(f"{name} must have shape [n, {self.feature_dim}], got {tuple(features.shape)}")
        self._check_device(features, name)
        if not bool(torch.isfinite(features).all()):
            raise InputError(f"{name} contains NaN or infinite values")
        return features

    def _flatten_inputs(
        self, features: Tensor, predictions: Tensor | None, labels: Tensor | None, memory_features: Tensor | None = None
    ) -> tuple[Tensor, tuple[Tensor, Tensor] | None, Tensor | None, Tensor]:
        """Check shapes, device, finiteness and label range (one host sync); flatten dense maps to rows.

        Returns feature rows [N, D], (confidence, predicted class) rows of the predictions or None, label
        rows [N] or None, and memory-feature rows [N, D] (detached; the features when not given).
        """
        if features.dim() < 2 or features.shape[1] != self.feature_dim:
            raise InputError(
                f"features must have shape [N, {self.feature_dim}] or [B, {self.feature_dim}, *spatial], "
                f"got {tuple(features.shape)}"
            )
        self._check_device(features, "features")
        batch, spatial = features.shape[0], features.shape[2:]
        rows = lambda x: x.movedim(1, -1).reshape(-1, x.shape[1])  # noqa: E731  [B, K, *S] -> [B·S, K]
        problems = [any_nonfinite(features)]
        if memory_features is None:
            memory_features = features
        elif memory_features.shape != features.shape:
            raise InputError(
                f"memory_features must have the shape of features {tuple(features.shape)}, got {tuple(memory_features.shape)}")
        else:
            self._check_device(memory_features, "memory_features")
            problems.append(any_nonfinite(memory_features.detach()))
        predicted = None
        if predictions is not None:
            if predictions.dim() != features.dim() or predictions.shape[0] != batch or predictions.shape[1] != self.num_classes:
                expected = f"[{batch}, {self.num_classes}" + (", *spatial]" if spatial else "]")
                raise InputError(f"predictions must have shape {expected} to match features, got {tuple(predictions.shape)}")
            self._check_device(predictions, "predictions")
            problems.append(any_nonfinite(predictions.detach()))
            with torch.no_grad():
                confidence, predicted = max_softmax(predictions.detach().float())
                if spatial:  # per pixel at the predictions' resolution, then to the features' (as the references)
                    confidence = resample_nearest(confidence, spatial)
                    predicted = resample_nearest(predicted, spatial)
                predicted = (confidence.reshape(-1), predicted.reshape(-1))
        if labels is not None:
            if labels.dtype.is_floating_point or labels.dtype == torch.bool:
                raise InputError(f"labels must be an integer tensor of class ids, got dtype {labels.dtype}")
            if labels.dim() != features.dim() - 1 or labels.shape[0] != batch or (not spatial and labels.shape != (batch,)):
                expected = f"[{batch}" + (", *spatial]" if spatial else "]")
                raise InputError(f"labels must have shape {expected} to match features, got {tuple(labels.shape)}")
            self._check_device(labels, "labels")
            labels = labels.long()
            out_of_range = (labels != self.ignore_index) & ((labels < 0) | (labels >= self.num_classes))
            problems.append(out_of_range.any())
            given_labels, labels = labels, resample_nearest(labels, spatial).reshape(-1) if spatial else labels
        bad_features, *rest = torch.stack(problems).tolist()
        if bad_features:
            raise InputError("features contain NaN or infinite values")
        if memory_features is not features and rest.pop(0):
            raise InputError("memory_features contain NaN or infinite values")
        if predictions is not None and rest.pop(0):
            raise InputError("predictions contain NaN or infinite values")
        if labels is not None and rest.pop(0):
            bad_values = given_labels[out_of_range].unique()[:10].tolist()
            raise InputError(
                f"labels {bad_values} are out of range: expected 0..{self.num_classes - 1} "
                f"or ignore_index={self.ignore_index}"
            )
        return rows(features), predicted, labels, rows(memory_features.detach())
