"""Tests for the denoising UNet (ldm/models/unet.py); small widths, CPU, fast."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from ldm.models.unet import ResBlock, SelfAttention, SinusoidalTimeEmbedding, UNet

T = 1000
SMALL = dict(base_channels=8, channel_mults=(1, 2, 2), num_res_blocks=1, num_heads=2)


def _timesteps(batch: int) -> torch.Tensor:
    return torch.randint(0, T, (batch,), dtype=torch.int64)


def _perturb_zero_init(net: nn.Module) -> nn.Module:
    """Give the zero-initialised convs (ResBlock.conv2, attention proj, out_conv) random weights,
    otherwise the untrained net outputs exactly 0 whatever its inputs."""
    for m in net.modules():
        if isinstance(m, nn.Conv2d) and not m.weight.any():
            m.reset_parameters()
    return net


@pytest.mark.parametrize("attention", [True, False])
@pytest.mark.parametrize("shape", [(2, 4, 7, 7), (3, 1, 28, 28), (2, 3, 5, 5), (2, 8, 14, 14)])
def test_output_shape(shape: tuple[int, ...], attention: bool) -> None:
    torch.manual_seed(0)
    net = UNet(in_channels=shape[1], attention=attention, **SMALL)
    x = torch.randn(shape)
    out = net(x, _timesteps(shape[0]))
    assert out.shape == x.shape
    assert torch.count_nonzero(out) == 0  # zero-init output conv: starts predicting zeros
    out = _perturb_zero_init(net)(x, _timesteps(shape[0]))
    assert out.shape == x.shape and torch.isfinite(out).all()


def test_out_channels_and_widths_not_multiple_of_32() -> None:
    net = UNet(in_channels=4, base_channels=24, channel_mults=(1, 2), num_res_blocks=1, num_heads=3, out_channels=8)
    out = net(torch.randn(2, 4, 7, 7), torch.tensor([0.5, 999.0]))  # float t is fine too
    assert out.shape == (2, 8, 7, 7)


def test_time_embedding_matches_post_formula() -> None:
    dim, scale = 8, 1000.0
    ts = [0, 1, 17, 999]
    emb = SinusoidalTimeEmbedding(dim, scale=scale)(torch.tensor(ts, dtype=torch.int64))
    half = dim // 2
    for row, t in zip(emb, ts):
        freqs = [math.exp(-math.log(scale) / (half - 1) * i) for i in range(half)]
        expected = [math.sin(t * f) for f in freqs] + [math.cos(t * f) for f in freqs]
        assert row.tolist() == pytest.approx(expected, abs=1e-4)


def test_blocks_start_as_identity() -> None:
    x, emb = torch.randn(2, 8, 5, 5), torch.randn(2, 16)
    assert torch.equal(ResBlock(8, 8, emb_dim=16, dropout=0.0)(x, emb), x)
    assert torch.equal(SelfAttention(8, num_heads=2)(x), x)


def test_time_conditioning_reaches_output() -> None:
    torch.manual_seed(0)
    net = _perturb_zero_init(UNet(in_channels=4, **SMALL)).eval()
    x = torch.randn(1, 4, 7, 7).expand(3, -1, -1, -1)
    out = net(x, torch.tensor([10, 10, 500]))
    torch.testing.assert_close(out[0], out[1])  # samples are processed independently
    assert (out[0] - out[2]).abs().max() > 1e-3


def test_class_conditioning() -> None:
    torch.manual_seed(0)
    net = _perturb_zero_init(UNet(in_channels=4, num_classes=10, **SMALL)).eval()
    x, t = torch.randn(2, 4, 7, 7), _timesteps(2)
    out_a = net(x, t, torch.tensor([1, 2]))
    out_b = net(x, t, torch.tensor([3, 7]))
    assert (out_a - out_b).abs().amax(dim=(1, 2, 3)).min() > 1e-3
    torch.testing.assert_close(net(x, t), net(x, t, torch.full((2,), 10)))  # None == null index

    with pytest.raises(ValueError, match="num_classes"):
        UNet(in_channels=4, **SMALL)(x, t, torch.tensor([1, 2]))


def test_adam_steps_reduce_mse() -> None:
    torch.manual_seed(0)
    net = UNet(in_channels=4, dropout=0.1, **SMALL)
    x, t, target = torch.randn(4, 4, 7, 7), _timesteps(4), torch.randn(4, 4, 7, 7)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    losses = []
    for _ in range(15):
        loss = nn.functional.mse_loss(net(x, t), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.9 * losses[0]


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(in_channels=0),
        dict(out_channels=0),
        dict(base_channels=7),
        dict(base_channels=2),
        dict(channel_mults=()),
        dict(channel_mults=(1, 0)),
        dict(num_res_blocks=0),
        dict(num_heads=0),
        dict(num_heads=3),  # 64 * 2 = 128 channels not divisible by 3 heads
        dict(dropout=1.0),
        dict(dropout=-0.1),
        dict(num_classes=0),
    ],
)
def test_invalid_arguments_raise(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        UNet(**kwargs)


def test_default_model_6_473_348_params_on_4x7x7_latents() -> None:
    """UNet() (base 64, mults (1, 2, 2), 2 res blocks, attention) has 6,473,348 parameters;
    UNet(base_channels=32) has 1,624,900."""
    net = UNet()
    n_params = sum(p.numel() for p in net.parameters())
    assert 1e6 < n_params < 2e7
    assert net(torch.randn(2, 4, 7, 7), _timesteps(2)).shape == (2, 4, 7, 7)
