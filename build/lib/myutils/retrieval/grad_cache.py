"""Gradients of a large contrastive batch computed in small micro-batches.

Averaging the losses of 8 micro-batches of 16 is *not* a contrastive batch of 128: each
micro-batch only contrasts against itself. The gradient cache (Gao et al. 2021, "Scaling Deep
Contrastive Learning Batch Size under Memory Limited Setup", arXiv 2101.06983) gives the exact
large-batch gradient at the memory cost of one micro-batch plus the ``N × D`` embeddings:

1. forward every micro-batch without autograd, keep the embeddings and each micro-batch's RNG state;
2. compute the loss on all embeddings at once (leaf tensors), backward to get ∂L/∂embedding;
3. re-forward each micro-batch with autograd under the same RNG state (same dropout masks) and
   backward ``(embedding · cached_grad).sum()``: parameter gradients add up to the full-batch gradient.

The price is one extra forward pass. Under ``torchrun`` the embeddings of every rank are
gathered, so the contrastive batch is global; each rank back-propagates its own slice, scaled by
the world size because DDP *averages* the parameter gradients over ranks.

BatchNorm: statistics are computed per micro-batch (in both passes, identically), so the
result equals the full-batch gradient of a network whose BN normalises per micro-batch. The
running statistics are restored after the no-grad pass, so they are updated once per
micro-batch, as in ordinary training.

:func:`accumulated_backward` is the plain accumulation (mean of micro-batch losses), kept for
comparison and selectable in ``train.py``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence

import torch
import torch.distributed as dist
import torch.nn as nn

from myutils.cli import InputError
from myutils.training.distributed import all_gather_variable

MicroBatch = tuple[torch.Tensor, torch.Tensor]  # (images [b, V, C, H, W], labels [b])
ContrastiveLoss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (features [N, V, D], labels [N])
ContextFactory = Callable[[], contextlib.AbstractContextManager]


class RandomState:
    """The CPU (and current CUDA device) RNG state, to replay a forward pass with identical randomness."""

    def __init__(self, device: torch.device):
        self.device = device
        self.cpu_state = torch.get_rng_state()
        self.cuda_state = torch.cuda.get_rng_state(device) if device.type == "cuda" else None

    def restore(self) -> None:
        torch.set_rng_state(self.cpu_state)
        if self.cuda_state is not None:
            torch.cuda.set_rng_state(self.cuda_state, self.device)


@contextlib.contextmanager
def preserved_batchnorm_buffers(model: nn.Module) -> Iterator[None]:
    """Undo the running-statistics updates that BatchNorm layers make inside the block."""
    saved = [
        (module, {name: buffer.clone() for name, buffer in module.named_buffers(recurse=False)})
        for module in model.modules()
        if isinstance(module, nn.modules.batchnorm._BatchNorm)
    ]
    try:
        yield
    finally:
        with torch.no_grad():
            for module, buffers in saved:
                for name, value in buffers.items():
                    getattr(module, name).copy_(value)


def _embed(encoder: nn.Module, images: torch.Tensor, autocast_context: ContextFactory) -> torch.Tensor:
    """``images [b, V, C, H, W]`` → float32 embeddings ``[b, V, D]``."""
    batch, views = images.shape[:2]
    with autocast_context():
        embeddings = encoder(images.flatten(0, 1))
    return embeddings.float().view(batch, views, -1)


def grad_cache_backward(
    encoder: nn.Module,
    micro_batches: Sequence[MicroBatch],
    loss_fn: ContrastiveLoss,
    autocast_context: ContextFactory = contextlib.nullcontext,
    backward: Callable[[torch.Tensor], None] = torch.Tensor.backward,
    no_sync: ContextFactory = contextlib.nullcontext,
) -> float:
    """Accumulate into ``.grad`` the gradient of ``loss_fn`` on all micro-batches (of all ranks) at once.

    ``backward`` runs the surrogate backward (pass ``lambda t: scaler.scale(t).backward()`` for
    fp16); ``no_sync`` is ``ddp_model.no_sync`` so that only the last micro-batch all-reduces.
    Returns the loss value.
    """
    if not micro_batches:
        raise InputError("grad_cache_backward needs at least one micro-batch")
    device = micro_batches[0][0].device
    states, chunks = [], []
    with torch.no_grad(), preserved_batchnorm_buffers(encoder):
        for images, _ in micro_batches:
            states.append(RandomState(device))
            chunks.append(_embed(encoder, images, autocast_context))
    local_features = torch.cat(chunks)
    local_labels = torch.cat([labels for _, labels in micro_batches])

    features, sizes = all_gather_variable(local_features)
    labels, _ = all_gather_variable(local_labels)
    rank = dist.get_rank() if len(sizes) > 1 else 0
    offset = sum(sizes[:rank])
    leaf = features.detach().requires_grad_(True)
    loss = loss_fn(leaf, labels)
    loss.backward()
    # DDP averages parameter gradients over ranks; each rank holds one slice of a summed gradient
    cached_grad = leaf.grad[offset : offset + local_features.shape[0]] * len(sizes)

    start = 0
    for i, ((images, _), state) in enumerate(zip(micro_batches, states, strict=True)):
        state.restore()
        grad_chunk = cached_grad[start : start + images.shape[0]]
        start += images.shape[0]
        sync = contextlib.nullcontext() if i == len(micro_batches) - 1 else no_sync()
        with sync:
            backward((_embed(encoder, images, autocast_context) * grad_chunk).sum())
    return float(loss.detach())


def accumulated_backward(
    encoder: nn.Module,
    micro_batches: Sequence[MicroBatch],
    loss_fn: ContrastiveLoss,
    autocast_context: ContextFactory = contextlib.nullcontext,
    backward: Callable[[torch.Tensor], None] = torch.Tensor.backward,
    no_sync: ContextFactory = contextlib.nullcontext,
) -> float:
    """Plain gradient accumulation: the mean of per-micro-batch losses (the original's method).

    Each micro-batch only contrasts against its own views; kept as the comparison baseline.
    """
    if not micro_batches:
        raise InputError("accumulated_backward needs at least one micro-batch")
    total = 0.0
    for i, (images, labels) in enumerate(micro_batches):
        sync = contextlib.nullcontext() if i == len(micro_batches) - 1 else no_sync()
        with sync:
            loss = loss_fn(_embed(encoder, images, autocast_context), labels) / len(micro_batches)
            backward(loss)
        total += float(loss.detach())
    return total
