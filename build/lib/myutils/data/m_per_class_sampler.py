"""Class-balanced batches for contrastive training: ``m`` images of each of ``target_batch / m`` classes.

SupCon needs positives in every batch; with many classes and random batches most anchors
would only have their own second view. Like pytorch-metric-learning's ``MPerClassSampler``,
each global batch of ``target_batch`` images holds ``m`` images of each chosen class. The
global batch is split over ranks (``target_batch / world_size`` each) and yielded as
micro-batches of ``batch_size``; consecutive ``steps_per_batch`` micro-batches make one
optimizer step.

Classes are visited in a reshuffled round-robin, so every class appears about equally often;
a class with fewer than ``m`` images repeats its images (their augmented views differ), so a
class with a single image still works. When there are fewer than ``target_batch / m`` classes,
a class may fill several ``m``-slots of one batch.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np
from torch.utils.data import Sampler

from myutils.cli import InputError


class MPerClassBatchSampler(Sampler[list[int]]):
    """Yields this rank's micro-batches (lists of dataset indices), epoch by epoch.

    Args:
        labels: the label of every dataset item.
        m_per_class: images per class in a global batch; ``0`` for plain random batches.
        batch_size: micro-batch size (images per forward pass on one rank).
        target_batch: global contrastive batch (images per optimizer step, all ranks together).
        num_replicas, rank: the distributed world (1, 0 for a single process).
        seed: base seed; call :meth:`set_epoch` before each epoch for a new, reproducible order.
        batches_per_epoch: optimizer steps per epoch; default ``ceil(len(labels) / target_batch)``.
    """

    def __init__(
        self,
        labels: Sequence[int],
        m_per_class: int,
        batch_size: int,
        target_batch: int,
        num_replicas: int = 1,
        rank: int = 0,
        seed: int = 0,
        batches_per_epoch: int | None = None,
    ):
        if len(labels) == 0:
            raise InputError("cannot sample from an empty dataset")
        if batch_size < 1 or target_batch < 1:
            raise InputError(f"batch_size and target_batch must be positive, got {batch_size}, {target_batch}")
        if target_batch % (batch_size * num_replicas) != 0:
            raise InputError(
                f"target_batch ({target_batch}) must be a multiple of batch_size × world size "
                f"({batch_size} × {num_replicas})"
            )
        if m_per_class < 0 or (m_per_class and target_batch % m_per_class != 0):
            raise InputError(f"target_batch ({target_batch}) must be a multiple of m_per_class ({m_per_class})")
        self.labels = np.asarray(labels)
        self.m_per_class = m_per_class
        self.batch_size = batch_size
        self.target_batch = target_batch
        self.num_replicas = num_replicas
        self.rank = rank
        self.seed = seed
        self.epoch = 0
        self.steps_per_batch = target_batch // (batch_size * num_replicas)
        self.batches_per_epoch = batches_per_epoch or max(1, math.ceil(len(labels) / target_batch))
        self.indices_by_class = [np.flatnonzero(self.labels == c) for c in np.unique(self.labels)]

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.batches_per_epoch * self.steps_per_batch

    def global_batches(self) -> list[np.ndarray]:
        """The epoch's global batches (identical on every rank: same seed and epoch)."""
        rng = np.random.default_rng([self.seed, self.epoch])
        if self.m_per_class == 0:
            stream = _endless_permutations(np.arange(len(self.labels)), rng)
            return [_take(stream, self.target_batch) for _ in range(self.batches_per_epoch)]
        class_stream = _endless_permutations(np.arange(len(self.indices_by_class)), rng)
        image_streams = [_endless_permutations(indices, rng) for indices in self.indices_by_class]
        batches = []
        for _ in range(self.batches_per_epoch):
            classes = _take(class_stream, self.target_batch // self.m_per_class)
            batches.append(np.concatenate([_take(image_streams[c], self.m_per_class) for c in classes]))
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        per_rank = self.target_batch // self.num_replicas
        for batch in self.global_batches():
            mine = batch[self.rank * per_rank : (self.rank + 1) * per_rank]
            for start in range(0, per_rank, self.batch_size):
                yield mine[start : start + self.batch_size].tolist()


def _endless_permutations(items: np.ndarray, rng: np.random.Generator) -> Iterator[int]:
    while True:
        yield from items[rng.permutation(len(items))]


def _take(stream: Iterator[int], n: int) -> np.ndarray:
    return np.fromiter((next(stream) for _ in range(n)), dtype=np.int64, count=n)
