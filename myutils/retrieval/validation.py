"""Retrieval validation of held-out images against a gallery, split over the ranks of a torchrun world.

Every rank embeds a shard of the gallery (gathered, so each rank holds the whole gallery) and a
shard of the queries, scores its queries against the whole gallery and the per-shard metrics are
merged: no rank waits at a barrier while another embeds everything, and the numbers equal the
single-process ones.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn as nn

from myutils.data.image_folder import ImageRecord
from myutils.retrieval.embedding import embed_records, rank_shard
from myutils.retrieval.metrics import merge_retrieval_metrics, retrieval_metrics
from myutils.training.distributed import all_gather_object, broadcast_module_state


def validation_metrics(
    model: nn.Module,
    gallery_records: Sequence[ImageRecord],
    query_records: Sequence[ImageRecord],
    transform: Callable[[np.ndarray], torch.Tensor],
    device: torch.device,
    batch_size: int = 64,
    num_workers: int = 0,
    amp: bool = False,
    progress: bool = True,
) -> tuple[dict[str, float], list[str]]:
    """``(retrieval metrics of the queries against the gallery, paths of unreadable images)``.

    Call it on every rank (a collective); rank 0's weights and BatchNorm statistics are used.
    """
    broadcast_module_state(model)
    options = dict(transform=transform, device=device, batch_size=batch_size, num_workers=num_workers, amp=amp,
                   progress=progress)
    gallery = embed_records(model, gallery_records, desc="gallery", distributed=True, **options)
    start, stop = rank_shard(len(query_records))
    queries = embed_records(model, query_records[start:stop], desc="validation", **options)
    part = retrieval_metrics(queries.embeddings, queries.labels, gallery.embeddings, gallery.labels)
    metrics = merge_retrieval_metrics(all_gather_object(part))
    skipped = [path for paths in all_gather_object(queries.skipped_paths) for path in paths]
    return metrics, gallery.skipped_paths + skipped
