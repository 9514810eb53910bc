"""Embedding a list of images with a trained model (validation, galleries, queries)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from myutils.data.image_folder import ImageFolderDataset, ImageRecord, collate_skip_none
from myutils.training.precision import autocast


@dataclass
class EmbeddedImages:
    """Embeddings of the readable images; ``records[i]`` is the image of ``embeddings[i]``."""

    embeddings: torch.Tensor  # [N, D] float32, CPU
    labels: torch.Tensor  # [N] long
    records: list[ImageRecord]
    skipped_paths: list[str]


@torch.no_grad()
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
) -> EmbeddedImages:
    """Embed ``records`` in eval mode; unreadable images are skipped and listed, never fatal."""
    was_training = model.training
    model.eval()
    dataset = ImageFolderDataset(records, transform)
    loader = DataLoader(
        dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers, collate_fn=collate_skip_none,
        pin_memory=device.type == "cuda",
    )
    embeddings, labels, kept = [], [], []
    for inputs, batch_labels, indices, _ in tqdm(loader, desc=desc, leave=False, disable=not progress):
        if inputs is None:
            continue
        with autocast(device, amp):
            embeddings.append(model(inputs.to(device, non_blocking=True)).float().cpu())
        labels.append(batch_labels)
        kept.extend(indices.tolist())
    model.train(was_training)
    kept_set = set(kept)
    skipped = [record.path for i, record in enumerate(dataset.records) if i not in kept_set]
    if not embeddings:
        return EmbeddedImages(torch.empty(0, 0), torch.empty(0, dtype=torch.long), [], skipped)
    return EmbeddedImages(torch.cat(embeddings), torch.cat(labels), [dataset.records[i] for i in kept], skipped)
