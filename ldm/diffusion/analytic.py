"""DDIM whose stochastic step gives back the variance that plugging in x0_hat drops.

DDIM with eta > 0 draws x_s from q(x_s | x_t, x0 = x0_hat): it treats the prediction as if it were
the clean sample and so drops the spread of x0 around it. For Gaussian data with a perfect
denoiser this loses 18 % of the data variance at 20 steps (experiments/sampler_variance). The
optimal isotropic reverse variance adds it back (Bao et al. 2022a, "Analytic-DPM", arXiv
2201.06503, Thm. 1; with an imperfect mean, Bao et al. 2022b, arXiv 2206.07309, Thm. 1):

    x_s = alpha_s x0_hat + sqrt(sigma_s^2 - c^2) eps_hat + sqrt(c^2 + k^2 v_t) z,
    k   = alpha_s - sqrt(sigma_s^2 - c^2) alpha_t / sigma_t     (x_s's coefficient on x0_hat),
    v_t = E ||x0 - x0_hat(x_t, t)||^2 / d                       (the denoiser's x0 error at t),

c^2 as in DDIM (eta). v_t is measured once per timestep on training data (`x0_errors`): with a
perfect denoiser it is the posterior variance E tr Cov[x0 | x_t] / d, and with a real one it also
holds the network's own error, which the optimal variance then covers too (2022b). The last step
(to clean data) adds nothing, as in both papers: the output is the prediction.

`per_dimension=True` keeps one v_t per latent dimension (the error averaged over the data only, a
diagonal covariance, as 2022b's SN-DPM but measured rather than learned): dimensions the network
predicts well get less noise than those it does not.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from ldm.diffusion.samplers import DDIMSampler, Denoiser, Spacing, _randn
from ldm.diffusion.schedules import CLEAN, NoiseSchedule


@torch.no_grad()
def x0_errors(
    denoiser: Denoiser,
    schedule: NoiseSchedule,
    x0: Tensor,
    steps: Sequence[int],
    generator: torch.Generator | None = None,
    batch_size: int = 1000,
    per_dimension: bool = False,
) -> list[Any]:
    """v_t = mean squared error of the denoiser's x0_hat over `x0` (N, ...) noised afresh at each t in
    `steps`: one number per step, or (`per_dimension`) nested lists shaped like one sample."""
    errors = []
    for t in steps:
        total = torch.zeros(x0.shape[1:], dtype=torch.float64, device=x0.device)
        for batch in x0.split(batch_size):
            eps = _randn(batch.shape, generator, batch.device, batch.dtype)
            index = torch.full((len(batch),), int(t), dtype=torch.long, device=batch.device)
            x_t = schedule.q_sample(batch, index, eps)
            x0_hat, _ = denoiser(x_t, index)
            total += (x0_hat.double() - batch.double()).pow(2).sum(0)
        mean = total / len(x0)
        errors.append(mean.cpu().tolist() if per_dimension else float(mean.mean()))
    return errors


class AnalyticDDIMSampler(DDIMSampler):
    """DDIM (eta, default 1) plus the x0-error variance term; needs `x0_error` per timestep (see module doc).

    Built without `x0_error`, it must be calibrated before it samples: `calibrated(denoiser, schedule, x0)`
    returns a copy that carries the errors (sample.py / evaluate.py do it on training data).
    """

    def __init__(
        self,
        num_steps: int = 50,
        eta: float = 1.0,
        spacing: Spacing = "leading",
        x0_error: Sequence[Any] | None = None,
        calibration_samples: int = 2000,
        per_dimension: bool = False,
    ) -> None:
        super().__init__(num_steps, eta, spacing)
        if not isinstance(calibration_samples, int) or calibration_samples < 1:
            raise ValueError(f"calibration_samples must be a positive int, got {calibration_samples!r}")
        self.calibration_samples, self.per_dimension = calibration_samples, bool(per_dimension)
        self.x0_error, self._v = None, None
        if x0_error is not None:
            self._v = [torch.as_tensor(v, dtype=torch.float32) for v in x0_error]
            finite = all(bool(((v >= 0) & (v < float("inf"))).all()) for v in self._v)
            shapes = {v.shape for v in self._v}
            if len(self._v) != num_steps or not finite or len(shapes) != 1 or (self._v[0].ndim > 0) != per_dimension:
                what = "lists of numbers of one shape" if per_dimension else "numbers"
                raise ValueError(f"x0_error must be {num_steps} {what} (one per step), finite and >= 0")
            self.x0_error = [v.tolist() for v in self._v]

    def calibrated(
        self, denoiser: Denoiser, schedule: NoiseSchedule, x0: Tensor, generator: torch.Generator | None = None
    ) -> AnalyticDDIMSampler:
        """A copy with v_t measured on `x0` (normalised training latents) at each of its timesteps."""
        steps = self.timesteps(schedule).tolist()
        errors = x0_errors(denoiser, schedule, x0, steps, generator, per_dimension=self.per_dimension)
        return AnalyticDDIMSampler(**{**self.config, "x0_error": errors})

    def step(
        self,
        schedule: NoiseSchedule,
        x_t: Tensor,
        x0_hat: Tensor,
        eps_hat: Tensor,
        t: int,
        s: int,
        *,
        state: Any = None,
        generator: torch.Generator | None = None,
    ) -> tuple[Tensor, Any]:
        if self._v is None:
            raise RuntimeError(
                "AnalyticDDIMSampler has no x0_error: calibrate it on training data first (sample.py and "
                "evaluate.py do; from Python: pipe.sample(n, sampler=pipe.calibrated(sampler, train_images)))"
            )
        if s == CLEAN:
            return super().step(schedule, x_t, x0_hat, eps_hat, t, s, generator=generator)
        v_t = self._v[self.timesteps(schedule).tolist().index(t)].to(x_t.device, x_t.dtype)
        (alpha_t, sigma_t), (alpha_s, _) = schedule.at(t), schedule.at(s)
        c2, direction = self.noise_and_direction(schedule, t, s)
        k = alpha_s - direction * alpha_t / sigma_t
        x_s = alpha_s * x0_hat + direction * eps_hat
        return x_s + (c2 + k**2 * v_t).sqrt() * _randn(x_t.shape, generator, x_t.device, x_t.dtype), None

    @property
    def config(self) -> dict[str, Any]:
        return {
            **super().config,
            "x0_error": self.x0_error,
            "calibration_samples": self.calibration_samples,
            "per_dimension": self.per_dimension,
        }

    def __repr__(self) -> str:
        state = "calibrated" if self.x0_error is not None else "uncalibrated"
        return (
            f"AnalyticDDIMSampler(num_steps={self.num_steps}, eta={self.eta}, spacing={self.spacing!r}, "
            f"per_dimension={self.per_dimension}, {state})"
        )
