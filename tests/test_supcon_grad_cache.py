"""Gradient cache = full-batch gradient (plain accumulation is not); class-balanced batch sampler."""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from loss import SupConLoss
from model import EmbeddingModel
from myutils.data.m_per_class_sampler import MPerClassBatchSampler
from myutils.retrieval.grad_cache import accumulated_backward, grad_cache_backward


def parameter_grads(model):
    return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])


def micro_batches(images, labels, size):
    return [(images[i : i + size], labels[i : i + size]) for i in range(0, images.shape[0], size)]


def test_grad_cache_equals_the_full_batch_gradient_in_train_mode():
    """BatchNorm (batch statistics), dropout and drop-path active: the exact gradient of the whole batch."""
    torch.manual_seed(0)
    model = EmbeddingModel("test_efficientnet", emb_dim=16, drop_rate=0.3, drop_path_rate=0.2).train()
    reference = EmbeddingModel("test_efficientnet", emb_dim=16, drop_rate=0.3, drop_path_rate=0.2).train()
    reference.load_state_dict(model.state_dict())
    images, labels = torch.randn(12, 2, 3, 32, 32), torch.arange(12) % 4
    chunks = micro_batches(images, labels, 4)
    loss_fn = SupConLoss(0.1)

    # reference: one autograd graph over all micro-batches (each normalised by its own BN batch, as in
    # training), the same random stream, the loss of the whole batch
    torch.manual_seed(7)
    features = torch.cat([reference(x.flatten(0, 1)).view(x.shape[0], 2, -1) for x, _ in chunks])
    full_loss = loss_fn(features, labels)
    full_loss.backward()
    torch.manual_seed(7)
    cached_loss = grad_cache_backward(model, chunks, loss_fn)

    assert cached_loss == pytest.approx(full_loss.item(), rel=1e-6)
    torch.testing.assert_close(parameter_grads(model), parameter_grads(reference), rtol=1e-4, atol=1e-7)
    # the BN running statistics saw each micro-batch once, as in ordinary training
    for (name, buffer), ref_buffer in zip(model.named_buffers(), reference.buffers(), strict=True):
        torch.testing.assert_close(buffer, ref_buffer, msg=name)

    model.zero_grad()
    torch.manual_seed(7)
    accumulated_loss = accumulated_backward(model, chunks, loss_fn)
    assert accumulated_loss != pytest.approx(full_loss.item(), rel=1e-2)
    assert (parameter_grads(model) - parameter_grads(reference)).norm() > 0.1 * parameter_grads(reference).norm()


def test_sampler_gives_m_per_class_and_splits_ranks():
    labels = [c for c in range(10) for _ in range(7)] + [10]  # class 10 has a single image
    world = [MPerClassBatchSampler(labels, 4, 4, 16, num_replicas=2, rank=r, seed=3) for r in range(2)]
    for sampler in world:
        sampler.set_epoch(1)
    global_batches = world[0].global_batches()
    assert len(global_batches) == len(world[0]) // world[0].steps_per_batch == 5  # ceil(71 / 16)
    for batch in global_batches:
        assert all(count % 4 == 0 for count in Counter(labels[i] for i in batch).values())
    rank_batches = [list(sampler) for sampler in world]
    assert all(len(b) == 4 for batches in rank_batches for b in batches)
    first_step = [i for r in range(2) for b in rank_batches[r][:2] for i in b]
    assert first_step == global_batches[0].tolist()
    seen_classes = {labels[i] for batch in global_batches for i in batch}
    assert seen_classes == set(range(11))  # round-robin over classes reaches the single-image class


def test_sampler_is_reproducible_and_changes_with_epoch():
    labels = [c for c in range(6) for _ in range(5)]
    sampler = MPerClassBatchSampler(labels, 2, 4, 8, seed=0)
    first = list(sampler)
    assert list(sampler) == first
    sampler.set_epoch(1)
    assert list(sampler) != first
    # m_per_class=0: plain random batches, every image once per pass
    random_order = [i for batch in MPerClassBatchSampler(labels, 0, 4, 8, seed=0) for i in batch]
    assert len(random_order) == 32 and sorted(random_order[:30]) == list(range(30))


def test_sampler_rejects_bad_sizes():
    with pytest.raises(ValueError, match="multiple of batch_size"):
        MPerClassBatchSampler([0, 1], 2, 16, 24)
    with pytest.raises(ValueError, match="multiple of m_per_class"):
        MPerClassBatchSampler([0, 1], 3, 4, 8)
    with pytest.raises(ValueError, match="empty"):
        MPerClassBatchSampler([], 2, 4, 8)
