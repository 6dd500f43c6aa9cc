"""What a generator measures on the training digits before it samples.

- `fitted_prior`: a full-covariance Gaussian fitted to a VAE's (or plain autoencoder's) codes, the
  generator of `sample.py prior=fitted` (`ldm.models.gaussian`).
- `calibrate`: an `AnalyticDDIMSampler`'s x0 error at each of its steps (`ldm.diffusion.analytic`),
  measured through the denoiser that will sample.
"""

from __future__ import annotations

import hashlib
import logging
import time
from typing import Any

import torch
from torch import Tensor

from ldm.data.source import ImageSource
from ldm.errors import ConfigError
from ldm.models.autoencoder import AutoencoderKL
from ldm.models.gaussian import FittedGaussian
from ldm.systems.latent_diffusion import LatentDiffusionModule

log = logging.getLogger("ldm.sampling")  # one logger for everything sample.py reports


def fitted_prior(vae: AutoencoderKL, data: ImageSource, device: torch.device, batch_size: int = 1000) -> FittedGaussian:
    """A Gaussian fitted to the posterior means of every training digit of `data` (`ldm.models.gaussian`)."""
    images = data.split("train")
    log.info("prior=fitted: encoding the %d training digits to fit a Gaussian to their codes ...", len(images))
    start = time.perf_counter()
    batches = (
        vae.encode(images.batch(indices)["image"].to(device)).mode()
        for indices in torch.arange(len(images)).split(batch_size)
    )
    try:
        gaussian = FittedGaussian.fit(batches).to(device)
    except ValueError as e:
        raise ConfigError(f"prior=fitted: {e}") from None
    log.info(
        "prior=fitted: a Gaussian fitted to the codes of %d training digits in %.1f s",
        len(images),
        time.perf_counter() - start,
    )
    return gaussian


def calibrate(
    model: LatentDiffusionModule,
    sampler: Any,
    data: ImageSource | None,
    guidance: float | None,
    seed: int,
    device: torch.device,
) -> Any:
    """`sampler` measured on the first `sampler.calibration_samples` training digits of `data` (ldm.diffusion.analytic)."""
    if data is None:
        raise ConfigError(f"{sampler!r} is calibrated on training digits: give data= (as in conf/sample.yaml)")
    train = data.split("train")
    batch = train.batch(torch.arange(min(sampler.calibration_samples, len(train))))
    labels = batch.get("label") if model.conditioning is not None else None
    log.info(
        "Calibrating %s on %d training digits (%d network passes each) ...",
        type(sampler).__name__,
        len(batch["image"]),
        sampler.num_steps,
    )
    start = time.perf_counter()
    generator = torch.Generator(device=device).manual_seed(seed)
    calibrated = model.pipeline().calibrated(sampler, batch["image"], labels, guidance, generator)
    errors = [float(torch.as_tensor(v).mean()) for v in calibrated.x0_error]  # per step (mean over dimensions)
    log.info(
        "%s calibrated on %d training digits in %.1f s: x0 error %.3g (first step) .. %.3g (last)",
        type(sampler).__name__,
        len(batch["image"]),
        time.perf_counter() - start,
        errors[0],
        errors[-1],
    )
    return calibrated


def fit_digest(*tensors: Tensor) -> str:
    """A short fingerprint of measured values: parts drawn with another fit are never reused."""
    digest = hashlib.sha256()
    for tensor in tensors:
        digest.update(tensor.detach().double().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]
