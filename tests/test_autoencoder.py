"""AutoencoderKL and its diagonal-Gaussian posterior."""

from __future__ import annotations

import pytest
import torch

from ldm.models.autoencoder import AutoencoderKL
from ldm.models.distributions import DiagonalGaussian


@pytest.mark.parametrize("channels", [1, 3])
def test_shapes(channels: int) -> None:
    vae = AutoencoderKL(in_channels=channels, hidden_channels=(8, 16, 16))
    x = torch.rand(3, channels, 28, 28)
    posterior = vae.encode(x)
    mean, logvar = posterior.mean, posterior.logvar
    assert vae.latent_shape == (4, 7, 7)
    assert mean.shape == logvar.shape == (3, 4, 7, 7)
    assert vae.decode(mean).shape == x.shape
    logits, posterior = vae(x)
    assert logits.shape == x.shape and posterior.sample().shape == mean.shape
    images = vae.decode(torch.randn(2, 4, 7, 7))
    assert 0.0 <= images.min() and images.max() <= 1.0


def test_latent_shape_follows_config() -> None:
    vae = AutoencoderKL(image_size=32, latent_channels=2, hidden_channels=(8, 8, 8, 8))
    assert vae.latent_shape == (2, 4, 4)
    assert vae.encode(torch.rand(1, 1, 32, 32)).mean.shape == (1, 2, 4, 4)


def test_invalid_config_is_rejected() -> None:
    with pytest.raises(ValueError, match="not divisible"):
        AutoencoderKL(image_size=28, hidden_channels=(8, 8, 8, 8))
    with pytest.raises(ValueError, match="latent_channels"):
        AutoencoderKL(latent_channels=0)


def test_kl_is_nonnegative_and_zero_at_the_prior() -> None:
    mean, logvar = torch.randn(16, 4, 7, 7), torch.randn(16, 4, 7, 7)
    kl = DiagonalGaussian(mean, logvar).kl()
    assert kl.shape == (16,) and (kl >= 0).all()
    assert torch.equal(DiagonalGaussian(torch.zeros(2, 4, 7, 7), torch.zeros(2, 4, 7, 7)).kl(), torch.zeros(2))


def test_kl_matches_torch_distributions() -> None:
    mean, logvar = torch.randn(4, 3), torch.randn(4, 3)
    q = torch.distributions.Normal(mean, (0.5 * logvar).exp())
    p = torch.distributions.Normal(torch.zeros(3), torch.ones(3))
    expected = torch.distributions.kl_divergence(q, p).sum(1)
    torch.testing.assert_close(DiagonalGaussian(mean, logvar).kl(), expected)


def test_sample_uses_mean_and_std() -> None:
    posterior = DiagonalGaussian(torch.full((20000,), 2.0), torch.full((20000,), 2 * torch.tensor(0.5).log()))
    z = posterior.sample(torch.Generator().manual_seed(0))
    assert abs(z.mean().item() - 2.0) < 0.02 and abs(z.std().item() - 0.5) < 0.02
    assert torch.equal(posterior.mode(), posterior.mean)
