"""What a generator measures on the training digits before it samples.

- `fitted_prior`: a full-covariance Gaussian fitted to a VAE's (or plain autoencoder's) codes, the
  generator of `sample.py prior=fitted` (`ldm.models.gaussian`), kept in the cache folder.
- `calibrate`: an `AnalyticDDIMSampler`'s x0 error at each of its steps (`ldm.diffusion.analytic`),
  measured through the denoiser that will sample.
"""

from __future__ import annotations

import hashlib
import logging
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ldm.data.source import ImageSource
from ldm.errors import ConfigError
from ldm.io import WriteError, load_checked, save_checked, update_hash
from ldm.models.autoencoder import AutoencoderKL
from ldm.models.gaussian import FittedGaussian
from ldm.systems.latent_diffusion import LatentDiffusionModule

log = logging.getLogger("ldm.sampling")  # one logger for everything sample.py reports


def fitted_prior(
    vae: AutoencoderKL,
    data: ImageSource,
    device: torch.device,
    cache_dir: str | Path | None = None,
    batch_size: int = 1000,
) -> FittedGaussian:
    """A Gaussian fitted to the posterior means of every training digit of `data` (`ldm.models.gaussian`).

    With `cache_dir`, the fit is kept there as `prior-<key>.pt`, keyed by the VAE's weights and the
    data's fingerprint and checked by its sha256 on every load (a stale or damaged entry is refitted,
    with a warning; a folder that cannot be written only warns)."""
    key = update_hash(hashlib.sha256(b"ldm-fitted-prior-v1"), vae.state_dict())
    key.update(data.fingerprint().encode())
    path = Path(cache_dir) / f"prior-{key.hexdigest()[:20]}.pt" if cache_dir else None  # None / "": no cache
    if path is not None and path.is_file():
        try:
            entry = load_checked(path, key.hexdigest(), ("shape", "mean", "scale_tril"))
            shape = tuple(int(d) for d in entry["shape"].tolist())
            if shape != tuple(vae.latent_shape) or not all(torch.isfinite(t).all() for t in entry.values()):
                raise ValueError(f"it holds a fit of shape {shape} or non-finite values, not this VAE's")
            gaussian = FittedGaussian(shape)
            gaussian.load_state_dict({"mean": entry["mean"], "scale_tril": entry["scale_tril"]})
            log.info("prior=fitted: the Gaussian fitted to these codes before, from %s", path)
            return gaussian.to(device)
        except (ValueError, RuntimeError, TypeError) as e:  # RuntimeError: tensors that do not fit together
            log.warning("Refitting the prior: %s is not usable (%s)", path, e)
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
    if path is not None:
        tensors = {"shape": torch.tensor(gaussian.shape), **{k: v.cpu() for k, v in gaussian.state_dict().items()}}
        try:
            save_checked(path, key.hexdigest(), tensors)
        except WriteError as e:
            log.warning("Not caching the fitted prior (%s); going on without the cache", e)
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
