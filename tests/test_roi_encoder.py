import pytest
import torch

from myutils.roi.encoder import (
    ROIEncoder,
    ROIEncoderConfig,
    encoder_checkpoint_state,
    load_roi_encoder,
    shake_shake,
)
from myutils.training.checkpoint import save_checkpoint


def test_encoder_size_and_unit_embeddings():
    encoder = ROIEncoder()
    # spec: ~2.06 M parameters; exact count of the listed layers
    dsc = 2 * (512 * 256 + 256 * 25 + 256 * 512) + 2 * 512
    se = 512 * 128 + 128 + 128 * 512 + 512
    expected = 2 * dsc + se + (1024 * 512 + 512) + 512 * 512 + 2 * 512 + (512 * 128 + 128)
    assert sum(p.numel() for p in encoder.parameters()) == expected == 2_061_568
    encoder.eval()
    for h, w in ((10, 10), (3, 7)):
        z = encoder(torch.randn(5, 512, h, w))
        assert z.shape == (5, 128)
        torch.testing.assert_close(z.norm(dim=1), torch.ones(5))
    with pytest.raises(ValueError, match="expected ROI features"):
        encoder(torch.randn(2, 256, 10, 10))


def test_eval_is_deterministic_and_training_is_stochastic():
    torch.manual_seed(0)
    encoder = ROIEncoder()
    x = torch.randn(4, 512, 10, 10)
    encoder.eval()
    torch.testing.assert_close(encoder(x), encoder(x))
    encoder.train()
    encoder.set_warmup(False)
    assert not torch.allclose(encoder(x), encoder(x))


def test_shake_shake_forward_and_backward_coefficients():
    torch.manual_seed(1)
    x1 = torch.randn(3, 4, 2, 2, requires_grad=True)
    x2 = torch.randn(3, 4, 2, 2, requires_grad=True)
    out = shake_shake(x1, x2, training=True)
    # forward: per-sample convex combination, coefficient in [0, 1]
    alpha = ((out - x2) / (x1 - x2)).detach()
    assert torch.allclose(alpha, alpha[:, :1, :1, :1].expand_as(alpha), atol=1e-4)
    assert ((alpha >= 0) & (alpha <= 1)).all()
    out.sum().backward()
    beta = x1.grad
    torch.testing.assert_close(x1.grad + x2.grad, torch.ones_like(beta))
    assert not torch.allclose(beta[:, 0, 0, 0], alpha[:, 0, 0, 0]), "backward uses its own coefficient"
    torch.testing.assert_close(shake_shake(x1, x2, training=False), 0.5 * (x1 + x2))


def test_load_roi_encoder_round_trip(tmp_path):
    config = ROIEncoderConfig(embedding_dim=64)
    encoder = ROIEncoder(config)
    path = save_checkpoint({"epoch": 3, **encoder_checkpoint_state(encoder)}, tmp_path / "last.pth")
    loaded = load_roi_encoder(path)
    assert not loaded.training and loaded.config == config
    x = torch.randn(2, 512, 10, 10)
    encoder.eval()
    torch.testing.assert_close(loaded(x), encoder(x))
    save_checkpoint({"model": {}}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match="not an ROI encoder checkpoint"):
        load_roi_encoder(tmp_path / "other.pth")
