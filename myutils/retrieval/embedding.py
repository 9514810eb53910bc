"""Embedding a list of images with a trained model (validation, galleries, queries), on one or all ranks."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from myutils.data.image_folder import ImageFolderDataset, ImageRecord, collate_skip_none
from myutils.training.distributed import all_gather_variable
from myutils.training.precision import autocast


@dataclass
class EmbeddedImages:
    """Embeddings of the readable images; ``records[i]`` is the image of ``embeddings[i]``."""

    embeddings: torch.Tensor  # [N, D] float32, CPU
    labels: torch.Tensor  # [N] long
    records: list[ImageRecord]
    skipped_paths: list[str]


@torch.no_grad()
def _embed_in_order(model, records, transform, device, batch_size, num_workers, amp, desc, progress):
    """``(embeddings [N, D] on device, kept record indices, skipped record indices)`` in record order."""
    was_training = model.training
    model.eval()
    loader = DataLoader(
        ImageFolderDataset(records, transform), batch_size=batch_size, shuffle=False, num_workers=num_workers,
        collate_fn=collate_skip_none, pin_memory=device.type == "cuda",
        generator=torch.Generator(),  # the loader's seed draw must not consume the global RNG (exact resume)
    )
    embeddings, kept, skipped = [], [], []
    for inputs, _, indices, skipped_indices in tqdm(loader, desc=desc, leave=False, disable=not progress):
        skipped.append(skipped_indices)
        if inputs is None:
            continue
        with autocast(device, amp):
            embeddings.append(model(inputs.to(device, non_blocking=True)).float())
        kept.append(indices)
    model.train(was_training)
    return (torch.cat(embeddings) if embeddings else None), _cat_indices(kept), _cat_indices(skipped)


def _cat_indices(parts: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat(parts) if parts else torch.empty(0, dtype=torch.long)


def _embedded(records: Sequence[ImageRecord], embeddings, kept: torch.Tensor, skipped: torch.Tensor) -> EmbeddedImages:
    kept_records = [records[i] for i in kept.tolist()]
    labels = torch.tensor([record.label for record in kept_records], dtype=torch.long)
    embeddings = embeddings.cpu() if embeddings is not None and len(kept_records) else torch.empty(0, 0)
    return EmbeddedImages(embeddings, labels, kept_records, [records[i].path for i in skipped.tolist()])


def rank_shard(n_items: int) -> tuple[int, int]:
    """``(start, stop)`` of this rank's contiguous share of ``n_items`` (all of them in a world of one)."""
    if not (dist.is_available() and dist.is_initialized()):
        return 0, n_items
    bounds = np.linspace(0, n_items, dist.get_world_size() + 1).round().astype(int)
    return int(bounds[dist.get_rank()]), int(bounds[dist.get_rank() + 1])


def embed_records(
    model: nn.Module,
    records: Sequence[ImageRecord],
    transform: Callable[[np.ndarray], torch.Tensor],
    device: torch.device,
    batch_size: int = 64,
    num_workers: int = 0,
    amp: bool = False,
    desc: str = "embedding",
    progress: bool = True,
    distributed: bool = False,
) -> EmbeddedImages:
    """Embed ``records`` in eval mode; unreadable images are skipped and listed, never fatal.

    With ``distributed`` (call it on every rank of a torchrun world) each rank embeds a contiguous
    shard and the shards are gathered, so every rank returns the whole result in record order,
    equal to the single-process one (the model must be identical on every rank: see
    :func:`myutils.training.distributed.broadcast_module_state`).
    """
    sharded = distributed and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
    start, stop = rank_shard(len(records)) if sharded else (0, len(records))
    embeddings, kept, skipped = _embed_in_order(model, records[start:stop], transform, device, batch_size,
                                                num_workers, amp, desc, progress)
    if not sharded:
        return _embedded(records, embeddings, kept, skipped)
    dim = torch.tensor([0 if embeddings is None else embeddings.shape[1]], device=device)
    dist.all_reduce(dim, op=dist.ReduceOp.MAX)  # a rank whose shard had no readable image still takes part
    if embeddings is None:
        embeddings = torch.empty(0, int(dim), device=device)
    embeddings, _ = all_gather_variable(embeddings.contiguous())
    kept, _ = all_gather_variable((kept + start).to(device))
    skipped, _ = all_gather_variable((skipped + start).to(device))
    return _embedded(records, embeddings if kept.numel() else None, kept.cpu(), skipped.cpu())
