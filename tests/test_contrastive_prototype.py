"""SS-Net class-wise contrastive memory: memory update, loss and gradients, learned selectors, pseudo-labels,
the similarity/distance details against an independent implementation, state round trip and input errors
(where the memory is filled from, and the gradients, are in test_prototype_memory_semantics.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from myutils.contrastive_prototype_manager import ContrastivePrototypeManager, rescaled_sigmoid_weights
from myutils.training.checkpoint import save_checkpoint

NUM_CLASSES, DIM = 3, 8


def make_batch(n=60, num_classes=NUM_CLASSES, dim=DIM, seed=0, correct_fraction=0.7):
    """Features, logits that are right for about ``correct_fraction`` of rows, and labels."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % num_classes
    features = torch.randn(n, dim, generator=gen) + 2.0 * F.one_hot(labels, dim).float()
    predicted = torch.where(torch.rand(n, generator=gen) < correct_fraction, labels, (labels + 1) % num_classes)
    logits = torch.randn(n, num_classes, generator=gen) + 6.0 * F.one_hot(predicted, num_classes).float()
    return features, logits, labels


def reference_loss(features, labels, memory, num_classes, feature_selectors=None, memory_selectors=None):
    """The spec's formula written out: explicit [M, N] distance matrix, per-class loop, / num_classes."""
    loss = torch.zeros(())
    for c in range(num_classes):
        feats = features[labels == c]
        mem = memory[c]
        if feats.shape[0] < 2 or mem.shape[0] < 2:
            continue
        mem_n = F.normalize(mem, dim=1)
        sim = F.normalize(feats, dim=1) @ mem_n.T
        dist = 1 - sim
        if feature_selectors is not None:
            w_f = torch.sigmoid(feature_selectors[c](feats.detach()))  # [M, 1]
            dist = dist * (w_f.shape[0] / w_f.sum(0)) * w_f
            w_m = torch.sigmoid(memory_selectors[c](mem_n))  # [N, 1]: rescaled over the N items
            dist = dist * ((w_m.shape[0] / w_m.sum(0)) * w_m).T
        loss = loss + dist.mean()
    return loss / num_classes


def filled_manager(seed=1, **kwargs):
    manager = ContrastivePrototypeManager(NUM_CLASSES, DIM, elements_per_class=5, **kwargs)
    gen = torch.Generator().manual_seed(seed)
    manager.update_memory({c: torch.randn(5, DIM, generator=gen) + 2.0 * F.one_hot(torch.tensor(c), DIM) for c in range(3)})
    return manager


# ------------------------------------------------------------------ memory update, loss and gradient flow
def test_update_memory_replace_keeps_most_confident_and_absent_classes():
    manager = ContrastivePrototypeManager(NUM_CLASSES, DIM, elements_per_class=4)
    first = torch.randn(3, DIM)
    manager.update_memory({0: first, 2: torch.randn(6, DIM)})
    assert torch.equal(manager.class_memory(0), first)
    assert manager.memory_count.tolist() == [3, 0, 4]  # 6 candidates, no confidence: the first 4 kept
    candidates, confidence = torch.randn(10, DIM), torch.rand(10)
    manager.update_memory({0: candidates}, {0: confidence})
    kept = confidence.argsort(descending=True)[:4]
    assert torch.equal(manager.class_memory(0), candidates[kept])  # replaced by the 4 most confident
    assert manager.memory_count.tolist() == [4, 0, 4]  # class 2 absent from the update: unchanged


def test_update_memory_fifo_queue_puts_new_items_first():
    manager = ContrastivePrototypeManager(NUM_CLASSES, DIM, elements_per_class=5, memory_mode="fifo")
    old, new = torch.randn(4, DIM), torch.randn(3, DIM)
    manager.update_memory({1: old})
    manager.update_memory({1: new})
    assert torch.equal(manager.class_memory(1), torch.cat([new, old])[:5])


def test_update_and_compute_loss_stores_only_correct_predictions_and_skips_ignored():
    features, logits, labels = make_batch()
    labels[:6] = 255
    manager = ContrastivePrototypeManager(NUM_CLASSES, DIM, elements_per_class=100)
    loss, parts = manager.update_and_compute_loss(features, logits, labels)
    correct = (logits.argmax(1) == labels) & (labels != 255)
    for c in range(NUM_CLASSES):
        expected = features[correct & (labels == c)]
        stored = manager.class_memory(c)
        assert stored.shape == expected.shape
        # the same rows, in any order
        assert torch.allclose(stored[stored[:, 0].argsort()], expected[expected[:, 0].argsort()])
    assert parts["prototype_used_fraction"] == pytest.approx(54 / 60)
    assert set(parts) == {"prototype_contrastive", "prototype_intra", "prototype_inter", "prototype_total",
                          "prototype_used_fraction"}
    assert all(type(value) is float for value in parts.values())
    assert parts["prototype_total"] == pytest.approx(
        parts["prototype_contrastive"] + 0.1 * parts["prototype_intra"] + 0.1 * parts["prototype_inter"], rel=1e-6
    )
    assert loss.item() == pytest.approx(parts["prototype_total"])


@pytest.mark.parametrize("case", ["all classes", "ignored rows and a class without memory"])
def test_intra_and_inter_terms_match_an_independent_numpy_computation(case):
    features, logits, labels = make_batch(seed=3)
    if case == "all classes":
        manager = filled_manager(margin=1.2)
    else:  # class 2 never correctly predicted and not in memory: no prototype, so no intra term, no inter pairs
        manager = ContrastivePrototypeManager(NUM_CLASSES, DIM, elements_per_class=5, margin=1.2)
        logits[labels == 2] = 6.0 * F.one_hot(torch.tensor(0), NUM_CLASSES).float()
        labels[:7] = 255
    _, parts = manager.update_and_compute_loss(features, logits, labels)
    memory = [manager.class_memory(c).numpy() for c in range(NUM_CLASSES)]  # the loss uses the updated memory
    has = np.array([len(m) > 0 for m in memory])
    assert has.all() == (case == "all classes")
    unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)  # noqa: E731
    prototypes = np.stack([unit(unit(m).mean(0)) if len(m) else np.zeros(DIM) for m in memory])
    y = labels.numpy()
    f = unit(features.numpy().astype(np.float64))[y != 255]
    y = y[y != 255]
    dist = np.linalg.norm(f[:, None, :] - prototypes[None], axis=2)  # [N, C]
    own = np.zeros_like(dist, dtype=bool)
    own[np.arange(len(y)), y] = True
    intra = (dist**2)[own & has].mean()
    inter = np.maximum(0.0, 1.2 - dist)[~own & has].mean()
    assert parts["prototype_intra"] == pytest.approx(intra, rel=1e-5)
    assert parts["prototype_inter"] == pytest.approx(inter, rel=1e-5)
    assert inter > 0.01  # the hinge is active, so the check above is not 0 == 0


def test_training_the_features_reaches_the_loss_minimum():
    features, _, labels = make_batch(n=90)
    manager = filled_manager()
    # the minimum of mean_j (1 − f̂·m̂_j) over unit f̂ is 1 − ‖mean_j m̂_j‖, reached at f̂ ∝ mean_j m̂_j
    minimum = sum(1 - F.normalize(manager.class_memory(c), dim=1).mean(0).norm() for c in range(3)) / 3
    features = features.clone().requires_grad_(True)
    optimizer = torch.optim.Adam([features], lr=0.1)
    losses = []
    for _ in range(150):
        loss = manager.contrastive_class_to_class_learned_memory(features, labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[0] > minimum + 0.1
    assert losses[-1] == pytest.approx(minimum.item(), abs=2e-3)


# ------------------------------------------------------------------ learned selectors
def test_selector_keeps_the_highest_ranked_candidates():
    manager = ContrastivePrototypeManager(NUM_CLASSES, DIM, elements_per_class=4, use_learned_selector=True)
    selector = manager.feature_selectors[1]
    selector.eval()  # BatchNorm with running stats 0/1: an almost-identity map
    with torch.no_grad():
        selector[0].weight.copy_(torch.eye(DIM))
        selector[0].bias.zero_()
        selector[3].weight.zero_()
        selector[3].weight[0, 0] = 1.0  # rank = sigmoid(leaky_relu(x_0)): increasing in the first coordinate
        selector[3].bias.zero_()
    candidates = torch.randn(12, DIM)
    manager.update_memory({1: candidates}, {1: -candidates[:, 0]})  # the selector outranks the confidences
    expected = candidates[candidates[:, 0].argsort(descending=True)[:4]]
    assert torch.equal(manager.class_memory(1), expected)


def test_rescaled_weights_have_mean_one():
    weights = rescaled_sigmoid_weights(torch.randn(37, 1) * 3)
    assert weights.shape == (37,)
    assert weights.mean().item() == pytest.approx(1.0, abs=1e-6)
    assert (weights > 0).all() and weights.std() > 0.1


def test_selector_weights_change_the_loss_and_both_selectors_get_gradients():
    torch.manual_seed(0)
    manager = filled_manager(use_learned_selector=True)
    for selector in [*manager.feature_selectors, *manager.memory_selectors]:
        with torch.no_grad():
            selector[3].weight.mul_(10.0)  # spread the weights so their effect is far above rounding
    plain = filled_manager()
    features, _, labels = make_batch(seed=5)
    weighted = manager.contrastive_class_to_class_learned_memory(features, labels)
    unweighted = plain.contrastive_class_to_class_learned_memory(features, labels)
    assert abs(weighted.item() - unweighted.item()) > 1e-2
    weighted.backward()
    feature_selectors, memory_selectors = manager.get_selectors()
    for selectors in (feature_selectors, memory_selectors):
        for selector in selectors:
            assert selector[0].weight.grad.abs().sum() > 0
            assert selector[3].weight.grad.abs().sum() > 0


def test_equal_selector_outputs_give_the_unweighted_loss():
    manager = filled_manager(use_learned_selector=True)
    for selector in [*manager.feature_selectors, *manager.memory_selectors]:
        with torch.no_grad():
            selector[3].weight.zero_()
            selector[3].bias.fill_(0.7)
    features, _, labels = make_batch(seed=6)
    weighted = manager.contrastive_class_to_class_learned_memory(features, labels)
    unweighted = filled_manager().contrastive_class_to_class_learned_memory(features, labels)
    assert weighted.item() == pytest.approx(unweighted.item(), rel=1e-6)


def test_optimizer_built_before_the_first_step_trains_the_selectors():
    manager = ContrastivePrototypeManager(NUM_CLASSES, DIM, elements_per_class=6, use_learned_selector=True)
    assert ContrastivePrototypeManager(NUM_CLASSES, DIM).get_selectors() == (None, None)
    optimizer = torch.optim.Adam(manager.parameters(), lr=1e-2)
    before = [p.detach().clone() for p in manager.memory_selectors.parameters()]
    features, logits, labels = make_batch()
    loss, _ = manager.update_and_compute_loss(features, logits, labels)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    assert any(not torch.equal(b, p) for b, p in zip(before, manager.memory_selectors.parameters(), strict=True))


# ------------------------------------------------------------------ unlabeled data, pseudo-labels
def test_unlabeled_data_uses_confident_pseudo_labels_only():
    features, logits, labels = make_batch(seed=7)
    logits[::2] = 0.0  # uniform softmax: never confident
    wrong_labels = (labels + 1) % NUM_CLASSES  # must be ignored for unlabeled data
    probability, pseudo = logits.softmax(1).max(1)
    confident = probability >= 0.9
    default = ContrastivePrototypeManager(NUM_CLASSES, DIM, elements_per_class=100, confidence_threshold=0.9)
    _, parts = default.update_and_compute_loss(features, logits, wrong_labels, is_labeled=False)
    assert parts["prototype_used_fraction"] == pytest.approx(confident.float().mean().item())
    assert default.memory_count.sum() == 0  # default: unlabelled data never enters the memory
    manager = ContrastivePrototypeManager(NUM_CLASSES, DIM, elements_per_class=100, confidence_threshold=0.9,
                                          memory_from="labelled+pseudo")
    _, first = manager.update_and_compute_loss(features, logits, wrong_labels, is_labeled=False)
    assert first["prototype_contrastive"] == 0.0  # its loss came before its own pseudo-labels were stored
    for c in range(NUM_CLASSES):
        assert manager.memory_count[c] == (confident & (pseudo == c)).sum()
    memory = [manager.class_memory(c).clone() for c in range(NUM_CLASSES)]
    other, other_logits, _ = make_batch(seed=8)
    _, second = manager.update_and_compute_loss(other, other_logits, None, is_labeled=False)
    other_probability, other_pseudo = other_logits.softmax(1).max(1)
    kept = other_probability >= 0.9
    expected = reference_loss(other[kept], other_pseudo[kept], memory, NUM_CLASSES)
    assert second["prototype_contrastive"] == pytest.approx(expected.item(), rel=1e-5)
    with pytest.raises(ValueError, match="labels are required"):
        manager.update_and_compute_loss(features, logits, None)
    _, none_confident = manager.update_and_compute_loss(features, torch.zeros_like(logits), None, is_labeled=False)
    assert none_confident["prototype_used_fraction"] == 0.0 and none_confident["prototype_total"] == 0.0


def test_dense_segmentation_maps_equal_the_flattened_rows():
    gen = torch.Generator().manual_seed(8)
    features = torch.randn(2, DIM, 5, 4, generator=gen)
    logits = torch.randn(2, NUM_CLASSES, 5, 4, generator=gen) * 4
    labels = torch.randint(0, NUM_CLASSES, (2, 5, 4), generator=gen)
    dense, flat = filled_manager(), filled_manager()
    loss_dense, _ = dense.update_and_compute_loss(features, logits, labels)
    rows = lambda x: x.movedim(1, -1).reshape(-1, x.shape[1])  # noqa: E731
    loss_flat, _ = flat.update_and_compute_loss(rows(features), rows(logits), labels.reshape(-1))
    assert loss_dense.item() == pytest.approx(loss_flat.item(), rel=1e-6)
    assert torch.equal(dense.memory, flat.memory)


# ------------------------------------------------------------------ similarity matrix and distances
@pytest.mark.parametrize("learned", [False, True])
def test_loss_equals_the_explicit_distance_matrix_formula(learned):
    manager = filled_manager(use_learned_selector=learned)
    features, _, labels = make_batch(seed=9)
    labels[labels == 2] = torch.tensor([2] + [255] * 19)  # class 2 has one feature: skipped, still / 3
    memory = [manager.class_memory(c).clone() for c in range(NUM_CLASSES)]
    ours = manager.contrastive_class_to_class_learned_memory(features, labels)
    expected = reference_loss(features, labels, memory, NUM_CLASSES, *manager.get_selectors())
    assert ours.item() == pytest.approx(expected.item(), rel=1e-5)


def test_distance_conversion_range_and_scale_invariance():
    manager = ContrastivePrototypeManager(2, DIM, elements_per_class=4)
    direction = F.normalize(torch.randn(1, DIM), dim=1)
    manager.update_memory({0: direction.repeat(4, 1) * torch.tensor([[1.0], [2.0], [3.0], [4.0]]),
                           1: -direction.repeat(4, 1)})
    labels = torch.tensor([0, 0, 0, 1, 1, 1])
    same = direction.repeat(6, 1) * torch.tensor([[0.5], [1.0], [7.0], [-1.0], [-2.0], [-9.0]])
    assert manager.contrastive_class_to_class_learned_memory(same, labels).item() == pytest.approx(0.0, abs=1e-6)
    # opposite directions: distance 2 for each class, divided by 2 classes
    assert manager.contrastive_class_to_class_learned_memory(-same, labels).item() == pytest.approx(2.0, abs=1e-6)
    features = torch.randn(6, DIM)
    scaled = features * torch.rand(6, 1).add(0.1) * 10
    assert manager.contrastive_class_to_class_learned_memory(features, labels).item() == pytest.approx(
        manager.contrastive_class_to_class_learned_memory(scaled, labels).item(), rel=1e-5)


def test_autocast_inputs_give_a_float32_loss():
    manager = filled_manager()
    features, logits, labels = make_batch()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, _ = manager.update_and_compute_loss(features.bfloat16(), logits.bfloat16(), labels)
    expected, _ = filled_manager().update_and_compute_loss(features.bfloat16().float(), logits.bfloat16().float(), labels)
    assert loss.dtype == torch.float32 and loss.item() == pytest.approx(expected.item(), rel=1e-5)


# ------------------------------------------------------------------ state round trip
def test_state_dict_round_trip_restores_memory_and_selectors(tmp_path):
    manager = ContrastivePrototypeManager(NUM_CLASSES, DIM, elements_per_class=6, use_learned_selector=True,
                                          memory_mode="fifo")
    features, logits, labels = make_batch()
    manager.update_and_compute_loss(features, logits, labels)
    path = save_checkpoint({"prototype_manager": manager.state_dict()}, tmp_path / "ckpt.pth")
    state = torch.load(path, weights_only=True)["prototype_manager"]
    restored = ContrastivePrototypeManager(NUM_CLASSES, DIM, elements_per_class=6, use_learned_selector=True,
                                           memory_mode="fifo")
    restored.load_state_dict(state)
    assert torch.equal(restored.memory_count, manager.memory_count)
    for c in range(NUM_CLASSES):
        assert torch.equal(restored.class_memory(c), manager.class_memory(c))
    next_batch = make_batch(seed=11)
    assert restored.update_and_compute_loss(*next_batch)[1] == manager.update_and_compute_loss(*next_batch)[1]
    with pytest.raises(RuntimeError, match="size mismatch"):
        ContrastivePrototypeManager(NUM_CLASSES, DIM, elements_per_class=7, use_learned_selector=True).load_state_dict(state)


# ------------------------------------------------------------------ clear errors
def test_bad_inputs_raise_clear_errors():
    manager = ContrastivePrototypeManager(NUM_CLASSES, DIM)
    features, logits, labels = make_batch()
    with pytest.raises(ValueError, match=r"features must have shape \[N, 8\]"):
        manager.update_and_compute_loss(features[:, :5], logits, labels)
    with pytest.raises(ValueError, match="predictions must have shape"):
        manager.update_and_compute_loss(features, logits[:, :2], labels)
    with pytest.raises(ValueError, match="labels must have shape"):
        manager.update_and_compute_loss(features, logits, labels[:-1])
    with pytest.raises(ValueError, match="integer tensor"):
        manager.update_and_compute_loss(features, logits, labels.float())
    bad_labels = labels.clone()
    bad_labels[3], bad_labels[4] = 7, -1
    with pytest.raises(ValueError, match=r"labels \[-1, 7\] are out of range"):
        manager.update_and_compute_loss(features, logits, bad_labels)
    nan_features = features.clone()
    nan_features[2, 1] = float("nan")
    with pytest.raises(ValueError, match="features contain NaN"):
        manager.update_and_compute_loss(nan_features, logits, labels)
    with pytest.raises(ValueError, match="predictions contain NaN"):
        manager.update_and_compute_loss(features, logits / 0.0 * 0.0, labels)
    with pytest.raises(ValueError, match="contains NaN"):
        manager.update_memory({0: nan_features})
    with pytest.raises(ValueError, match="class id 3 is out of range"):
        manager.update_memory({3: features})
    with pytest.raises(ValueError, match="is on meta but the prototype memory is on cpu"):
        manager.contrastive_class_to_class_learned_memory(features.to("meta"), labels)
    with pytest.raises(ValueError, match="memory_mode"):
        ContrastivePrototypeManager(NUM_CLASSES, DIM, memory_mode="lifo")
    with pytest.raises(ValueError, match="collides with a class id"):
        ContrastivePrototypeManager(NUM_CLASSES, DIM, ignore_index=1)
    assert not manager.memory_count.any()  # nothing stored by the failed calls
