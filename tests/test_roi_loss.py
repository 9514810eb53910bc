import numpy as np
import pytest
import torch

from myutils.roi.loss import beta_schedule, noisy_view, nt_xent, roi_contrastive_loss, similarity_kl


def test_nt_xent_matches_pytorch_metric_learning():
    from pytorch_metric_learning.losses import NTXentLoss  # imported here: the DDP test's workers skip it

    generator = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(6, 16, generator=generator), torch.randn(6, 16, generator=generator)
    reference = NTXentLoss(temperature=0.2)(torch.cat([z1, z2]), torch.arange(6).repeat(2))
    torch.testing.assert_close(nt_xent(z1, z2, 0.2), reference, rtol=1e-5, atol=1e-6)


def _numpy_similarity_kl(teacher, student, t_tau, s_tau):
    from scipy.special import log_softmax as np_log_softmax

    def log_p(x, tau):
        x = x / np.linalg.norm(x, axis=1, keepdims=True)
        sims = x @ x.T / tau
        rows = [np.delete(sims[i], i) for i in range(len(x))]
        return np.stack([np_log_softmax(row) for row in rows])

    lt, ls = log_p(teacher, t_tau), log_p(student, s_tau)
    return float((np.exp(lt) * (lt - ls)).sum() / len(teacher))


def test_similarity_kl_matches_an_independent_computation():
    rng = np.random.default_rng(1)
    teacher, student = rng.normal(size=(5, 12)), rng.normal(size=(5, 8))
    got = similarity_kl(torch.tensor(teacher), torch.tensor(student), 0.07, 0.2)
    assert float(got) == pytest.approx(_numpy_similarity_kl(teacher, student, 0.07, 0.2), rel=1e-5)
    # identical similarity structure and temperature: zero divergence
    assert float(similarity_kl(torch.tensor(teacher), torch.tensor(teacher), 0.2, 0.2)) == pytest.approx(0, abs=1e-6)


def test_combined_loss_and_gradients():
    torch.manual_seed(0)
    roi = torch.randn(4, 512, 3, 3)
    z1 = torch.randn(4, 128, requires_grad=True)
    z2 = torch.randn(4, 128, requires_grad=True)
    parts = roi_contrastive_loss(z1, z2, roi, beta=0.7)
    teacher = roi.mean(dim=(2, 3))
    expected_kl = 0.5 * (similarity_kl(teacher, z1) + similarity_kl(teacher, z2))
    torch.testing.assert_close(parts["kl"], expected_kl.detach())
    torch.testing.assert_close(parts["loss"], 0.7 * nt_xent(z1, z2) + 0.3 * expected_kl)
    parts["loss"].backward()
    assert z1.grad.abs().sum() > 0
    single = roi_contrastive_loss(z1[:1], z2[:1], roi[:1], beta=0.7)
    assert float(single["loss"].detach()) == 0.0 and single["loss"].requires_grad


def test_beta_schedule():
    values = [beta_schedule(epoch, total_epochs=100, warmup_epochs=10) for epoch in (0, 9, 10, 45, 80, 99)]
    assert values == pytest.approx([0.9, 0.9, 0.9, 0.9 - 0.4 * 35 / 70, 0.5, 0.5])
    assert beta_schedule(3, total_epochs=5, warmup_epochs=10) == 0.9
    assert beta_schedule(5, total_epochs=10, warmup_epochs=2) == pytest.approx(0.7)


def test_noisy_view_drops_and_adds_noise():
    torch.manual_seed(0)
    x = torch.ones(2000, 50)
    view = noisy_view(x, drop_prob=0.5, drop_fraction=0.2, noise_std=0.05)
    zeroed = (view.abs() < 0.5).float().mean(dim=1)
    dropped_rows = zeroed > 0.05
    assert 0.4 < dropped_rows.float().mean() < 0.6
    assert zeroed[dropped_rows].mean() == pytest.approx(0.2, abs=0.02)
    kept = view[~dropped_rows]
    assert (kept - 1).std() == pytest.approx(0.05, rel=0.05)


def _ddp_nt_xent_gradients(rank: int, world_size: int, init_file: str, inputs, result_file: str) -> None:
    """One rank of a 2-process gloo group: DDP step on this rank's half of the batch."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        x1, x2, weight = inputs
        layer = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=False)
        layer.weight.data.copy_(weight)
        model = DistributedDataParallel(layer)
        half = x1.shape[0] // world_size
        part = slice(rank * half, (rank + 1) * half)
        loss = nt_xent(model(x1[part]), model(x2[part]), 0.2)
        loss.backward()
        losses = [torch.zeros(()) for _ in range(world_size)]
        dist.all_gather(losses, loss.detach())
        if rank == 0:
            torch.save({"grad": layer.weight.grad, "losses": torch.stack(losses)}, result_file)
    finally:
        dist.destroy_process_group()


def test_nt_xent_under_ddp_uses_every_ranks_negatives(tmp_path):
    """2 ranks x 4 pairs under DDP (gloo) take the same step as one process on the 8 pairs: negatives
    come from both ranks and the gathered gradient reaches the rank that produced each view."""
    import torch.multiprocessing as mp

    generator = torch.Generator().manual_seed(0)
    x1, x2 = torch.randn(8, 6, generator=generator), torch.randn(8, 6, generator=generator)
    weight = torch.randn(5, 6, generator=generator)
    result = tmp_path / "rank0.pt"
    mp.spawn(_ddp_nt_xent_gradients, args=(2, str(tmp_path / "init"), (x1, x2, weight), str(result)),
             nprocs=2, join=True)
    distributed = torch.load(result, weights_only=True)
    from pytorch_metric_learning.losses import NTXentLoss  # the reference: one process, the 8 pairs at once

    reference = NTXentLoss(temperature=0.2)
    single = torch.nn.Linear(6, 5, bias=False)
    single.weight.data.copy_(weight)
    global_loss = reference(torch.cat([single(x1), single(x2)]), torch.arange(8).repeat(2))
    global_loss.backward()
    torch.testing.assert_close(distributed["losses"].mean(), global_loss.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(distributed["grad"], single.weight.grad, rtol=1e-4, atol=1e-6)
    # what a rank would get with only its own negatives: a different loss (the test can tell)
    with torch.no_grad():
        local_only = reference(torch.cat([single(x1[:4]), single(x2[:4])]), torch.arange(4).repeat(2))
    assert abs(float(local_only) - float(distributed["losses"][0])) > 1e-3
