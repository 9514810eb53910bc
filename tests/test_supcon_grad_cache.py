"""Gradient cache = full-batch gradient (plain accumulation is not); class-balanced batch sampler."""

from __future__ import annotations

from collections import Counter

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from loss import SupConLoss
from model import EmbeddingModel
from myutils.data.m_per_class_sampler import MPerClassBatchSampler
from myutils.retrieval.grad_cache import accumulated_backward, grad_cache_backward


class DropoutEncoder(nn.Module):
    """A tiny encoder with dropout: exactness needs the re-forward to replay the same masks."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(48, 32), nn.ReLU(), nn.Dropout(0.3), nn.Linear(32, 8))

    def forward(self, images):
        return F.normalize(self.body(images), dim=-1)


def parameter_grads(model):
    return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])


def full_batch_grad(model, images, labels, loss_fn):
    model.zero_grad()
    features = model(images.flatten(0, 1)).view(images.shape[0], images.shape[1], -1)
    loss = loss_fn(features, labels)
    loss.backward()
    return loss.item(), parameter_grads(model)


def micro_batches(images, labels, size):
    return [(images[i : i + size], labels[i : i + size]) for i in range(0, images.shape[0], size)]


def test_grad_cache_equals_full_batch_gradient_and_accumulation_does_not():
    torch.manual_seed(0)
    model = DropoutEncoder().eval()  # eval: the full batch and the micro-batches see the same network
    images, labels = torch.randn(24, 2, 3, 4, 4), torch.arange(24) % 6
    loss_fn = SupConLoss(0.1)
    full_loss, full_grad = full_batch_grad(model, images, labels, loss_fn)

    model.zero_grad()
    cached_loss = grad_cache_backward(model, micro_batches(images, labels, 4), loss_fn)
    cached_grad = parameter_grads(model)
    model.zero_grad()
    accumulated_loss = accumulated_backward(model, micro_batches(images, labels, 4), loss_fn)
    accumulated_grad = parameter_grads(model)

    assert cached_loss == pytest.approx(full_loss, rel=1e-6)
    torch.testing.assert_close(cached_grad, full_grad, rtol=1e-4, atol=1e-6)
    assert accumulated_loss != pytest.approx(full_loss, rel=1e-2)
    assert (accumulated_grad - full_grad).norm() > 0.1 * full_grad.norm()


def test_grad_cache_replays_dropout_masks():
    torch.manual_seed(1)
    model = DropoutEncoder().train()
    images, labels = torch.randn(8, 2, 3, 4, 4), torch.arange(8) % 4
    chunks = micro_batches(images, labels, 4)
    loss_fn = SupConLoss(0.1)

    torch.manual_seed(7)
    cached_loss = grad_cache_backward(model, chunks, loss_fn)
    cached_grad = parameter_grads(model)
    # reference: the same dropout masks (same RNG stream, one forward per micro-batch), full-batch loss
    torch.manual_seed(7)
    model.zero_grad()
    features = torch.cat([model(x.flatten(0, 1)).view(4, 2, -1) for x, _ in chunks])
    loss = loss_fn(features, labels)
    loss.backward()
    assert cached_loss == pytest.approx(loss.item(), rel=1e-6)
    torch.testing.assert_close(cached_grad, parameter_grads(model), rtol=1e-4, atol=1e-6)


def test_grad_cache_on_a_timm_model_updates_batchnorm_stats_once():
    torch.manual_seed(2)
    model = EmbeddingModel("test_efficientnet", emb_dim=16).train()
    images, labels = torch.randn(8, 2, 3, 32, 32), torch.arange(8) % 4
    chunks = micro_batches(images, labels, 4)
    reference = EmbeddingModel("test_efficientnet", emb_dim=16).train()
    reference.load_state_dict(model.state_dict())

    grad_cache_backward(model, chunks, SupConLoss(0.1))
    with torch.no_grad():
        for x, _ in chunks:  # ordinary training: one BN update per micro-batch
            reference(x.flatten(0, 1))
    for (name, buffer), ref_buffer in zip(model.named_buffers(), reference.buffers(), strict=True):
        torch.testing.assert_close(buffer, ref_buffer, msg=name)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


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
