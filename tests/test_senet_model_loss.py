"""SENet face-feature mapper: network shapes and fusion weight, angle-aware mining, the three loss terms."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from myutils.face.losses import (
    AngleAwareTripletLoss,
    SENetObjective,
    identity_preserve_loss,
    mine_angle_aware_triplets,
    target_alignment_loss,
)
from myutils.face.networks import (
    DREAMMapper,
    ResidualMLPMapper,
    SEBlock,
    SENetTripletNetwork,
    build_mapper,
)


@pytest.mark.parametrize(("num_layers", "hidden_dim"), [(1, 16), (2, 48), (3, 24), (5, 40)])
def test_shapes_for_several_num_layers(num_layers, hidden_dim):
    torch.manual_seed(0)
    model = SENetTripletNetwork(image_dim=32, pose_dim=3, hidden_dim=hidden_dim, num_layers=num_layers, se_reduction=8)
    linears = [m for m in model.encoder.modules() if isinstance(m, torch.nn.Linear)]
    assert len(linears) == num_layers
    assert linears[0].in_features == 35 and linears[-1].out_features == 32
    src, pose = F.normalize(torch.randn(6, 32), dim=1), torch.randn(6, 3) * 40
    front, identity = model(src, pose)
    assert front.shape == (6, 32) and identity.shape == (6, 32)
    assert torch.allclose(identity.norm(dim=1), torch.ones(6), atol=1e-5)
    (front.sum() + identity.sum()).backward()
    assert linears[0].weight.grad is not None


def test_default_encoder_ends_in_a_linear_projection_and_the_seed_layout_is_an_option():
    default = SENetTripletNetwork(image_dim=16, hidden_dim=24, num_layers=3)
    assert isinstance(default.encoder[-1], torch.nn.Linear)
    assert [type(m) for m in default.encoder[0]] == [torch.nn.Linear, torch.nn.Identity, torch.nn.ReLU, torch.nn.Dropout]
    assert not any(isinstance(m, torch.nn.BatchNorm1d) for m in default.modules())
    assert default.encoder[0][3].p == 0.0
    default.train()(torch.randn(1, 16), torch.zeros(1, 3))  # one sample trains without BatchNorm
    seed = SENetTripletNetwork(image_dim=16, hidden_dim=24, num_layers=3, relu_projection=True, dropout=0.1,
                               norm="batch")
    assert [type(m) for m in seed.encoder[-1]] == [torch.nn.Linear, torch.nn.BatchNorm1d, torch.nn.ReLU, torch.nn.Dropout]
    assert seed.encoder[-1][3].p == 0.1
    seed.eval()
    hidden = seed.encoder(torch.randn(5, 19))
    assert (hidden >= 0).all()  # the seed's branches only ever see non-negative features
    layer_norm = SENetTripletNetwork(image_dim=16, hidden_dim=24, norm="layer", use_se=False)
    assert sum(isinstance(m, torch.nn.LayerNorm) for m in layer_norm.modules()) == 2 + 3 + 2  # encoder, branches, head
    assert not any(isinstance(m, SEBlock) for m in layer_norm.modules())


@pytest.mark.parametrize("detach", [True, False])
def test_the_triplet_gradient_reaches_the_mapper_only_when_asked(detach):
    torch.manual_seed(6)
    model = SENetTripletNetwork(image_dim=16, hidden_dim=16, detach_identity_head=detach)
    with torch.no_grad():
        model.residual_gain.fill_(0.5)
    _, identity = model(torch.randn(6, 16), torch.randn(6, 3))
    identity.pow(3).sum().backward()
    assert model.identity_head[0][0].weight.grad.abs().sum() > 0
    encoder_grad = model.encoder[0][0].weight.grad
    assert (encoder_grad is None or encoder_grad.abs().sum() == 0) == detach


def test_residual_mlp_baseline_matches_its_formula():
    torch.manual_seed(7)
    model = ResidualMLPMapper(image_dim=12, pose_dim=3, hidden_dim=20, num_layers=3)
    linears = [m for m in model.mlp if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(15, 20), (20, 20), (20, 12)]
    src, pose = F.normalize(torch.randn(4, 12), dim=1), torch.rand(4, 3) * 180 - 90
    hidden = torch.cat([src, pose / 90.0], dim=1)
    for index, layer in enumerate(linears):
        hidden = layer(hidden) if index == len(linears) - 1 else torch.relu(layer(hidden))
    expected = F.normalize(src + hidden, dim=1)
    mapped, identity = model(src, pose)
    assert torch.allclose(mapped, expected, atol=1e-6) and identity is mapped
    assert math.isnan(model.get_fusion_alpha())
    rebuilt = build_mapper(model.config)
    assert isinstance(rebuilt, ResidualMLPMapper) and rebuilt.config == model.config


def test_dream_mapper_matches_its_formula():
    """DREAM: x + sigmoid(10 · (|yaw|/45 − 1)) · R(x), R ignoring the pose; then L2-normalised."""
    torch.manual_seed(8)
    model = DREAMMapper(image_dim=12, pose_dim=3, hidden_dim=20, num_layers=2)
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(12, 20), (20, 12)]
    src = F.normalize(torch.randn(5, 12), dim=1)
    pose = torch.tensor([[0.0, 30, 10], [45, 0, 0], [-45, 5, 0], [90, 0, -20], [-20, 60, 0]])
    residual = linears[1](torch.relu(linears[0](src)))
    gate = torch.tensor([1 / (1 + math.exp(-10 * (abs(yaw) / 45 - 1))) for yaw in [0.0, 45, -45, 90, -20]])
    assert gate[1] == gate[2] == 0.5 and gate[0] < 1e-4 and gate[3] > 0.9999
    mapped, identity = model(src, pose)
    assert torch.allclose(mapped, F.normalize(src + gate[:, None] * residual, dim=1), atol=1e-6) and identity is mapped
    changed_pitch = model(src, pose + torch.tensor([0.0, 17, -9]))[0]
    assert torch.allclose(changed_pitch, mapped, atol=1e-6)  # only yaw reaches it
    rebuilt = build_mapper(model.config)
    assert isinstance(rebuilt, DREAMMapper) and rebuilt.config == model.config and math.isnan(rebuilt.get_fusion_alpha())


def test_build_mapper_reads_first_release_configs():
    """Checkpoints written before the defaults changed have no 'architecture' and the seed's layout."""
    first_release = {"image_dim": 16, "pose_dim": 3, "hidden_dim": 24, "num_layers": 3, "se_reduction": 4,
                     "fusion_alpha": 0.7, "use_batch_stat": False, "dropout": 0.1, "pose_scale": 1 / 90}
    model = build_mapper(first_release)
    assert model.config["relu_projection"] and not model.config["detach_identity_head"]
    assert isinstance(model.encoder[-1], torch.nn.Sequential)
    assert build_mapper(model.config).config == model.config
    with pytest.raises(ValueError, match="unknown mapper architecture"):
        build_mapper({**first_release, "architecture": "transformer"})
    with pytest.raises(ValueError, match="unknown norm"):
        SENetTripletNetwork(image_dim=16, hidden_dim=16, norm="group")


def test_fusion_alpha_starts_at_the_requested_value_and_is_the_one_used():
    for requested in (0.7, 0.25):
        model = SENetTripletNetwork(image_dim=16, hidden_dim=16, fusion_alpha=requested)
        assert model.get_fusion_alpha() == pytest.approx(requested, abs=1e-6)
    branch = model.dual_branch.eval()
    x = torch.randn(4, 16)
    identity = x + branch.identity_mlp(branch.identity_se(x))
    pose = branch.pose_mlp(branch.pose_se(x))
    expected = 0.25 * identity + 0.75 * pose
    assert torch.allclose(branch(x), expected, atol=1e-5)
    for bad in (0.0, 1.0, 1.5):
        with pytest.raises(ValueError, match="fusion_alpha"):
            SENetTripletNetwork(image_dim=16, hidden_dim=16, fusion_alpha=bad)


def test_fusion_alpha_learns_and_untrained_mapper_returns_its_input():
    torch.manual_seed(1)
    model = SENetTripletNetwork(image_dim=16, hidden_dim=16, num_layers=2)
    src, pose = torch.randn(8, 16), torch.randn(8, 3)
    front, _ = model(src, pose)
    assert torch.equal(front, src)  # residual gain starts at 0
    with torch.no_grad():
        model.residual_gain.fill_(0.5)
    model(src, pose)[0].pow(2).sum().backward()
    assert model.dual_branch.fusion_logit.grad is not None and model.dual_branch.fusion_logit.grad.abs() > 0


def test_se_block_matches_its_formula():
    torch.manual_seed(2)
    block = SEBlock(16, reduction=4)
    w1, w2 = block.excite[0].weight, block.excite[2].weight
    x = torch.randn(5, 16)
    per_sample = x * torch.sigmoid(torch.relu(x @ w1.T) @ w2.T)
    assert torch.allclose(block(x), per_sample, atol=1e-6)
    block.use_batch_stat = True
    shared = x * torch.sigmoid(torch.relu(x.mean(0, keepdim=True) @ w1.T) @ w2.T)
    assert torch.allclose(block(x), shared, atol=1e-6)


def _unit(*values):
    return F.normalize(torch.tensor(values, dtype=torch.float32), dim=0)


def test_miner_picks_largest_pose_gap_positive_and_near_pose_negative():
    # anchor 0 (person 0, yaw 0); positives at yaw 20 and 70; negatives: person 1 near in pose but
    # dissimilar, person 2 near in pose and most similar among near ones, person 3 most similar overall
    # but far in pose.
    features = torch.stack([
        _unit(1, 0, 0), _unit(1, 0.1, 0), _unit(0.9, 0.3, 0),
        _unit(-1, 0, 0), _unit(1, 0.5, 0), _unit(1, 0.01, 0),
    ])
    labels = torch.tensor([0, 0, 0, 1, 2, 3])
    angles = torch.tensor([[0, 0, 0], [20, 0, 0], [70, 0, 0], [10, 0, 0], [5, 0, 0], [80, 0, 0]], dtype=torch.float32)
    triplets = mine_angle_aware_triplets(features, labels, angles, angle_threshold=30.0)
    assert triplets.anchor.tolist() == [0, 1, 2]  # persons 1-3 have no positive
    assert triplets.positive[0] == 2 and triplets.negative[0] == 4
    assert triplets.positive_gap[0] == pytest.approx(70.0) and triplets.negative_gap[0] == pytest.approx(5.0)
    # anchor 2 (yaw 70): only person 3 (yaw 80) is within 30°, so it is the negative
    assert triplets.positive[2] == 0 and triplets.negative[2] == 5


def test_miner_falls_back_to_the_closest_pose_when_no_negative_is_near():
    features = F.normalize(torch.randn(4, 8), dim=1)
    labels = torch.tensor([0, 0, 1, 2])
    angles = torch.tensor([[0.0, 0, 0], [10, 0, 0], [-80, 0, 0], [60, 0, 0]])
    triplets = mine_angle_aware_triplets(features, labels, angles, angle_threshold=30.0)
    assert triplets.negative.tolist() == [3, 3]


def _manual_triplet_loss(features, labels, angles, margin, alpha, beta, threshold):
    """Loop version of the module docstring, for comparison."""
    losses = []
    gaps = torch.cdist(angles, angles)
    sims = features @ features.T
    for a in range(len(labels)):
        positives = [j for j in range(len(labels)) if j != a and labels[j] == labels[a]]
        others = [j for j in range(len(labels)) if labels[j] != labels[a]]
        if not positives or not others:
            continue
        p = max(positives, key=lambda j: gaps[a, j])
        near = [j for j in others if gaps[a, j] < threshold]
        n = max(near, key=lambda j: sims[a, j]) if near else min(others, key=lambda j: gaps[a, j])
        weight = (alpha if gaps[a, p] > 45 else 1.0) * (beta if gaps[a, n] < 15 else 1.0)
        hinge = (features[a] - features[p]).norm() - (features[a] - features[n]).norm() + margin
        losses.append(weight * max(0.0, float(hinge)))
    return sum(losses) / len(losses)


def test_triplet_loss_matches_a_loop_implementation():
    torch.manual_seed(3)
    features = F.normalize(torch.randn(24, 16), dim=1)
    labels = torch.arange(6).repeat_interleave(4)
    angles = torch.rand(24, 3) * torch.tensor([180.0, 60, 40]) - torch.tensor([90.0, 30, 20])
    loss = AngleAwareTripletLoss(margin=0.3, alpha=2.0, beta=1.5, angle_threshold=30.0)(features, labels, angles)
    expected = _manual_triplet_loss(features, labels, angles, 0.3, 2.0, 1.5, 30.0)
    assert loss.item() == pytest.approx(expected, rel=1e-4, abs=1e-5)


def test_triplet_loss_is_zero_when_the_margin_is_satisfied():
    # each person sits at its own corner; same-person samples are almost identical
    base = torch.eye(4)
    features = F.normalize(base.repeat_interleave(3, dim=0) + 0.01 * torch.randn(12, 4), dim=1)
    labels = torch.arange(4).repeat_interleave(3)
    angles = torch.tensor([[0.0, 0, 0], [50, 0, 0], [-60, 0, 0]]).repeat(4, 1)
    criterion = AngleAwareTripletLoss(margin=0.3)
    features.requires_grad_(True)
    loss = criterion(features, labels, angles)
    assert loss.item() == 0.0
    loss.backward()  # a zero loss still has a graph
    swapped = features.detach()[torch.tensor([0, 3, 6, 9, 1, 4, 7, 10, 2, 5, 8, 11])]  # same person now far apart
    assert criterion(swapped, labels, angles).item() > 0.3


def test_triplet_loss_without_any_triplet_is_zero_with_a_graph():
    features = torch.randn(3, 4, requires_grad=True)
    loss = AngleAwareTripletLoss()(features, torch.tensor([0, 1, 2]), torch.zeros(3, 3))
    assert loss.item() == 0.0
    loss.backward()


def test_identity_and_target_losses_match_their_formulas():
    torch.manual_seed(4)
    front, src, target = torch.randn(5, 10), torch.randn(5, 10), torch.randn(5, 10)
    dims = [1, 7, 3]
    assert identity_preserve_loss(front, src, dims).item() == pytest.approx(
        float(((front[:, dims] - src[:, dims]) ** 2).mean()), rel=1e-6
    )
    cos = torch.tensor([float(front[i] @ target[i] / (front[i].norm() * target[i].norm())) for i in range(5)])
    assert target_alignment_loss(front, target, "cosine").item() == pytest.approx(1 - cos.mean().item(), rel=1e-5)
    squared_distance = sum(float((front[i] - target[i]) @ (front[i] - target[i])) for i in range(5)) / 5
    assert target_alignment_loss(front, target, "mse").item() == pytest.approx(squared_distance, rel=1e-5)
    with pytest.raises(ValueError, match="unknown target loss"):
        target_alignment_loss(front, target, "l1")


def test_objective_weights_and_seed_objective_without_target():
    torch.manual_seed(5)
    front, src, target = torch.randn(8, 6), torch.randn(8, 6), torch.randn(8, 6)
    identity = F.normalize(torch.randn(8, 6), dim=1)
    labels, pose = torch.arange(4).repeat_interleave(2), torch.randn(8, 3) * 30
    full = SENetObjective([0, 2], identity_preserve_weight=0.3, target_weight=2.0)
    terms = full(front, identity, src, pose, target, labels)
    expected = terms["triplet"] + 0.3 * terms["identity"] + 2.0 * terms["target"]
    assert terms["total"].item() == pytest.approx(expected.item(), rel=1e-6)
    seed = SENetObjective([0, 2], identity_preserve_weight=0.3, target_weight=0.0)(front, identity, src, pose, target, labels)
    assert seed["total"].item() == pytest.approx((seed["triplet"] + 0.3 * seed["identity"]).item(), rel=1e-6)
    assert seed["target"].item() > 0 and math.isfinite(seed["target"].item())  # still reported
    target_only = SENetObjective([0, 2], identity_preserve_weight=0.0, target_weight=1.0, triplet_weight=0.0)
    terms = target_only(front, identity, src, pose, target, labels)
    assert terms["triplet"].item() > 0 and terms["total"].item() == pytest.approx(terms["target"].item(), rel=1e-6)
