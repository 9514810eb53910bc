"""Where the prototype memory is filled from, and what reaches the features.

Each test names the defect it catches: the memory overwritten by the unlabelled batch's own pixels,
pseudo-label updates that replace the labelled items of the same step, classes that should stay out of
the memory, memory and query features mixed up, labels at another resolution than the features, an
empty batch, a selector input that is not detached, and ranks that hold different memories.
"""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F

from myutils.contrastive_prototype_manager import ContrastivePrototypeManager

C, D = 3, 8


def reference_loss(features, labels, memory, feature_selectors=None, memory_selectors=None, detach_selector_input=True):
    """The spec's formula with an explicit [M, N] distance matrix; ``memory`` is a list of constant [n, D]."""
    loss = features.new_zeros(())
    for c in range(C):
        feats, mem = features[labels == c], memory[c].detach()
        if feats.shape[0] < 2 or mem.shape[0] < 2:
            continue
        mem_n = F.normalize(mem, dim=1)
        dist = 1 - F.normalize(feats, dim=1) @ mem_n.T
        if feature_selectors is not None:
            selector_input = feats.detach() if detach_selector_input else feats
            w_f = torch.sigmoid(feature_selectors[c](selector_input))
            dist = dist * (w_f.shape[0] / w_f.sum(0)) * w_f
            w_m = torch.sigmoid(memory_selectors[c](mem_n))
            dist = dist * ((w_m.shape[0] / w_m.sum(0)) * w_m).T
        loss = loss + dist.mean()
    return loss / C


def reference_prototype_terms(features, labels, memory, margin):
    """Intra/inter terms with explicit loops over rows and prototypes (memory constant)."""
    prototypes = {c: F.normalize(F.normalize(m.detach(), dim=1).mean(0), dim=0) for c, m in enumerate(memory) if len(m)}
    intra, inter, n_intra, n_inter = features.new_zeros(()), features.new_zeros(()), 0, 0
    for f, y in zip(F.normalize(features, dim=1), labels.tolist(), strict=True):
        for c, p in prototypes.items():
            distance = (f - p).norm()
            if c == y:
                intra, n_intra = intra + distance**2, n_intra + 1
            else:
                inter, n_inter = inter + (margin - distance).clamp_min(0), n_inter + 1
    return intra / max(n_intra, 1), inter / max(n_inter, 1)


def batch(n=60, seed=0, correct=0.7, scale=6.0):
    gen = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % C
    features = torch.randn(n, D, generator=gen) + 2.0 * F.one_hot(labels, D).float()
    predicted = torch.where(torch.rand(n, generator=gen) < correct, labels, (labels + 1) % C)
    logits = torch.randn(n, C, generator=gen) + scale * F.one_hot(predicted, C).float()
    return features, logits, labels


def memory_list(manager):
    return [manager.class_memory(c).clone() for c in range(C)]


def test_default_memory_comes_from_labelled_data_only():
    """Bug caught: the unlabelled call replacing the memory with its own confident pixels (mean +10 -> -10)."""
    manager = ContrastivePrototypeManager(C, D, elements_per_class=50)  # free slots left after the labelled call
    assert manager.memory_from == "labelled"
    features, logits, labels = batch()
    features = features + 10.0
    manager.update_and_compute_loss(features, logits, labels)
    after_labelled = memory_list(manager)
    assert all(len(m) >= 2 for m in after_labelled)
    unlabelled, unlabelled_logits, _ = batch(seed=1, scale=20.0)  # every prediction confident
    unlabelled = -10.0 - unlabelled
    _, parts = manager.update_and_compute_loss(unlabelled, unlabelled_logits, None, is_labeled=False)
    for before, after in zip(after_labelled, memory_list(manager), strict=True):
        assert torch.equal(before, after)
    pseudo = unlabelled_logits.argmax(1)
    expected = reference_loss(unlabelled, pseudo, after_labelled)
    assert parts["prototype_contrastive"] == pytest.approx(expected.item(), rel=1e-5)
    assert expected.item() > 0.5  # the features are far from the labelled memory, not from copies of themselves


def test_pseudo_label_updates_never_overwrite_the_labelled_items_of_the_step():
    """Bug caught: a pseudo-label update replacing what the labelled call of the same step stored."""
    manager = ContrastivePrototypeManager(C, D, elements_per_class=5, memory_from="labelled+pseudo",
                                          confidence_threshold=0.5)
    manager.update_memory({2: torch.randn(4, D)})  # a class-2 memory from an earlier step ...
    labelled = torch.randn(8, D)
    labels = torch.tensor([0, 0, 0, 1, 1, 1, 1, 1])  # ... then this step: class 0 gets 3 items, class 1 is full
    manager.update_and_compute_loss(labelled, 9.0 * F.one_hot(labels, C).float(), labels)
    old = memory_list(manager)
    assert manager.memory_count.tolist() == [3, 5, 4]
    pseudo_features = torch.randn(12, D)
    pseudo = torch.tensor([0] * 4 + [1] * 4 + [2] * 4)
    confidence_logits = F.one_hot(pseudo, C).float() * torch.linspace(3, 6, 12)[:, None]  # p from 0.91 up
    _, parts = manager.update_and_compute_loss(pseudo_features, confidence_logits, None, is_labeled=False)
    # the loss of the unlabelled call is computed against the memory before its own pseudo-labels went in
    assert parts["prototype_contrastive"] == pytest.approx(reference_loss(pseudo_features, pseudo, old).item(), rel=1e-5)
    new = memory_list(manager)
    assert torch.equal(new[0][:3], old[0])  # labelled items of this step kept, free slots filled ...
    confidence = confidence_logits.softmax(1).max(1).values
    most_confident_0 = confidence[:4].argsort(descending=True)[:2]
    assert torch.equal(new[0][3:], pseudo_features[:4][most_confident_0])  # ... by the most confident pseudo rows
    assert torch.equal(new[1], old[1])  # full with this step's labelled items: untouched
    most_confident_2 = confidence[8:].argsort(descending=True)
    assert torch.equal(new[2], pseudo_features[8:][most_confident_2])  # not labelled this step: replaced
    # the next labelled call starts a new step and replaces the pseudo items again
    manager.update_and_compute_loss(labelled, 9.0 * F.one_hot(labels, C).float(), labels)
    assert torch.equal(manager.class_memory(0), old[0])


def test_memory_ignore_classes_keeps_a_class_out_of_the_memory():
    """Bug caught: background pixels stored although the class is excluded (SS-Net ignores class 0)."""
    features, logits, labels = batch()
    manager = ContrastivePrototypeManager(C, D, elements_per_class=50, memory_ignore_classes=(0,))
    _, parts = manager.update_and_compute_loss(features, logits, labels, intra_weight=0.0, inter_weight=0.0)
    assert manager.memory_count[0] == 0
    correct = logits.argmax(1) == labels
    assert manager.memory_count[1:].tolist() == [int((correct & (labels == c)).sum()) for c in (1, 2)]
    assert parts["prototype_contrastive"] == pytest.approx(
        reference_loss(features, labels, memory_list(manager)).item(), rel=1e-5)
    manager.update_memory({0: torch.randn(4, D), 1: torch.randn(4, D)})  # the direct update obeys it too
    assert manager.memory_count[:2].tolist() == [0, 4]
    with pytest.raises(ValueError, match="memory_ignore_classes"):
        ContrastivePrototypeManager(C, D, memory_ignore_classes=(3,))


def test_memory_features_are_stored_and_the_loss_pulls_the_query_features():
    """Bugs caught: the query features stored instead of the memory features; gradient into the memory encoder."""
    features, logits, labels = batch()
    memory_encoder = torch.nn.Linear(D, D)
    memory_features = memory_encoder(features)  # requires grad, as a careless caller would pass it
    query = features.clone().requires_grad_(True)
    manager = ContrastivePrototypeManager(C, D, elements_per_class=100)
    loss, _ = manager.update_and_compute_loss(query, logits, labels, 1.0, 0.0, 0.0, memory_features=memory_features)
    correct = logits.argmax(1) == labels
    stored = memory_list(manager)
    for c in range(C):
        expected = memory_features[correct & (labels == c)].detach()
        assert torch.equal(stored[c].sort(0).values, expected.sort(0).values)
    loss.backward()
    assert memory_encoder.weight.grad is None and memory_encoder.bias.grad is None
    reference_query = features.clone().requires_grad_(True)
    reference = reference_loss(reference_query, labels, stored)
    reference.backward()
    assert loss.item() == pytest.approx(reference.item(), rel=1e-5)
    torch.testing.assert_close(query.grad, reference_query.grad, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("weights", [(1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0)])
def test_gradient_of_each_term_equals_the_reference_with_a_constant_memory(weights):
    """Bug caught: the memory (built from this very batch) taking part in the graph of the loss."""
    features, logits, labels = batch(seed=4)
    query = features.clone().requires_grad_(True)
    manager = ContrastivePrototypeManager(C, D, elements_per_class=8, margin=1.9)
    loss, _ = manager.update_and_compute_loss(query, logits, labels, *weights)
    loss.backward()
    memory = memory_list(manager)
    reference_query = features.clone().requires_grad_(True)
    intra, inter = reference_prototype_terms(reference_query, labels, memory, margin=1.9)
    reference = weights[0] * reference_loss(reference_query, labels, memory) + weights[1] * intra + weights[2] * inter
    reference.backward()
    assert query.grad.abs().sum() > 0
    torch.testing.assert_close(query.grad, reference_query.grad, rtol=1e-4, atol=1e-7)


def test_selector_path_sends_no_gradient_into_the_features():
    """Bug caught: ``.detach()`` dropped on the selector input (the selector then pushes the features)."""
    torch.manual_seed(0)
    manager = ContrastivePrototypeManager(C, D, elements_per_class=5, use_learned_selector=True)
    gen = torch.Generator().manual_seed(1)
    manager.update_memory({c: torch.randn(5, D, generator=gen) + 2.0 * F.one_hot(torch.tensor(c), D) for c in range(C)})
    for selector in manager.feature_selectors:
        with torch.no_grad():
            selector[3].weight.mul_(10.0)  # strong weights: the selector path's gradient would be large
    features, _, labels = batch(seed=5)
    query = features.clone().requires_grad_(True)
    manager.contrastive_class_to_class_learned_memory(query, labels).backward()
    selectors = manager.get_selectors()
    detached, attached = features.clone().requires_grad_(True), features.clone().requires_grad_(True)
    reference_loss(detached, labels, memory_list(manager), *selectors).backward()
    reference_loss(attached, labels, memory_list(manager), *selectors, detach_selector_input=False).backward()
    assert (detached.grad - attached.grad).abs().max() > 1e-3  # the two paths are far apart ...
    torch.testing.assert_close(query.grad, detached.grad, rtol=1e-4, atol=1e-6)  # ... and ours is the detached one


@pytest.mark.parametrize("case", ["labels lower", "labels higher", "predictions higher"])
def test_labels_and_predictions_at_another_resolution_are_resampled_nearest(case):
    """Bug caught: labels at another resolution than the features rejected or resampled other than nearest."""
    gen = torch.Generator().manual_seed(6)
    features = torch.randn(2, D, 4, 6, generator=gen)
    logits = torch.randn(2, C, 4, 6, generator=gen) * 4
    labels = torch.randint(0, C, (2, 4, 6), generator=gen)
    if case == "labels lower":  # a 2x2 label block per feature 2x2 block: each label repeated
        coarse = torch.randint(0, C, (2, 2, 3), generator=gen)
        given, labels = coarse, coarse.repeat_interleave(2, 1).repeat_interleave(2, 2)
        given_logits = logits
    elif case == "labels higher":  # nearest downsampling by 2 keeps the top-left pixel of each block
        given = torch.randint(0, C, (2, 8, 12), generator=gen)
        labels, given_logits = given[:, ::2, ::2], logits
    else:
        fine_logits = torch.randn(2, C, 8, 12, generator=gen) * 4
        given, given_logits, logits = labels, fine_logits, fine_logits[:, :, ::2, ::2]
    resampled, expected = ContrastivePrototypeManager(C, D, 50), ContrastivePrototypeManager(C, D, 50)
    loss, _ = resampled.update_and_compute_loss(features, given_logits, given)
    reference, _ = expected.update_and_compute_loss(features, logits, labels)
    assert loss.item() == pytest.approx(reference.item(), rel=1e-6)
    assert torch.equal(resampled.memory, expected.memory) and resampled.memory_count.sum() > 0


@pytest.mark.parametrize("shape", [(0, D), (0, D, 4, 4), (2, D, 0, 3)])
def test_an_empty_batch_gives_a_zero_loss(shape):
    """Bug caught: ``aminmax`` on an empty tensor raising instead of a zero loss."""
    manager = ContrastivePrototypeManager(C, D, 8, use_learned_selector=True)
    features, logits, labels = batch()
    manager.update_and_compute_loss(features, logits, labels)
    before = manager.memory.clone()
    empty = torch.zeros(shape, requires_grad=True)
    logit_shape = (shape[0], C, *shape[2:])
    loss, parts = manager.update_and_compute_loss(empty, torch.zeros(logit_shape), torch.zeros(logit_shape[:1] + logit_shape[2:], dtype=torch.long))
    loss.backward()
    assert loss.item() == 0.0 and set(parts.values()) == {0.0}
    unlabelled_loss, _ = manager.update_and_compute_loss(empty, torch.zeros(logit_shape), None, is_labeled=False)
    assert unlabelled_loss.item() == 0.0
    assert torch.equal(manager.memory, before)


# ------------------------------------------------------------------ torchrun: one memory for all ranks
def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _rank_batch(rank):
    features, logits, labels = batch(n=40, seed=10 + rank)
    return features + rank, logits, labels


def _distributed_worker(rank, world_size, port, out_dir, learned):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world_size)
    torch.manual_seed(0)  # identical selectors on both ranks, as a trainer broadcasts them
    manager = ContrastivePrototypeManager(C, D, elements_per_class=6, use_learned_selector=learned)
    manager.update_and_compute_loss(*_rank_batch(rank))
    torch.save(manager.state_dict(), os.path.join(out_dir, f"rank{rank}.pth"))
    torch.distributed.destroy_process_group()


@pytest.mark.parametrize("learned", [False, True])
def test_every_rank_holds_the_memory_of_the_whole_global_batch(tmp_path, learned):
    """Bug caught: each rank keeping only its own candidates, so the ranks' memories drift apart."""
    mp.spawn(_distributed_worker, args=(2, _free_port(), str(tmp_path), learned), nprocs=2, join=True)
    states = [torch.load(tmp_path / f"rank{r}.pth", weights_only=True) for r in range(2)]
    torch.manual_seed(0)
    single = ContrastivePrototypeManager(C, D, elements_per_class=6, use_learned_selector=learned)
    parts = [_rank_batch(r) for r in range(2)]
    features, logits, labels = (torch.cat(tensors) for tensors in zip(*parts, strict=True))
    single.update_and_compute_loss(features, logits, labels)
    for state in states:
        assert torch.equal(state["memory_count"], single.memory_count)
        torch.testing.assert_close(state["memory"], single.memory, rtol=0, atol=0)
    assert single.memory_count.sum() == 3 * 6
