"""Diffusion math: noise schedules, parameterizations, loss weights and samplers.

Notation (used in every module of ``ldm``)
==========================================

============  ==============================================================
symbol        meaning
============  ==============================================================
x0            clean sample (here a VAE latent z, or an image)
z             VAE latent; the diffusion model's x0 in latent diffusion
eps           standard Gaussian noise, eps ~ N(0, I), same shape as x0
T             number of discrete noise levels (``NoiseSchedule.num_timesteps``)
t             int64 timestep index in [0, T); t = 0 is the first *noisy*
              level (DDPM's t = 1), t = T-1 the noisiest. ``CLEAN = -1``
              denotes x0 itself (alpha = 1, sigma = 0)
s             the next, less noisy index a sampler steps to (s < t or CLEAN)
alpha_t       signal coefficient;  x_t = alpha_t x0 + sigma_t eps  (VDM eq. 1)
sigma_t       noise coefficient (a standard deviation, not a variance)
x_t           noisy sample at index t
alpha_bar_t   DDPM's cumulative product; = alpha_t^2 for variance-preserving
              (VP) schedules, where alpha_t^2 + sigma_t^2 = 1
beta_t        DDPM's per-step variance, 1 - alpha_bar_t / alpha_bar_{t-1} (VP only)
snr           alpha_t^2 / sigma_t^2, strictly decreasing in t
lambda        log(alpha_t / sigma_t) = log(snr) / 2 (DPM-Solver's time variable)
v             alpha_t eps - sigma_t x0 (Salimans & Ho 2022)
x0_hat, eps_hat  a denoiser's estimates of x0 and eps at (x_t, t)
============  ==============================================================

References: DDPM (Ho et al. 2020, arXiv 2006.11239); DDIM (Song et al. 2020,
arXiv 2010.02502); Improved DDPM (Nichol & Dhariwal 2021, arXiv 2102.09672);
VDM (Kingma et al. 2021, arXiv 2107.00630); v-prediction (Salimans & Ho 2022,
arXiv 2202.00512); Min-SNR (Hang et al. 2023, arXiv 2303.09556); DPM-Solver++
(Lu et al. 2022, arXiv 2211.01095); timestep spacing (Lin et al. 2023,
arXiv 2305.08891); Analytic-DPM (Bao et al. 2022, arXiv 2201.06503 and 2206.07309).
"""

from ldm.diffusion.analytic import AnalyticDDIMSampler, x0_errors
from ldm.diffusion.loop import denoiser_from, sample
from ldm.diffusion.parameterization import EpsilonPrediction, Parameterization, VPrediction, X0Prediction
from ldm.diffusion.samplers import (
    DDIMSampler,
    DDPMSampler,
    Denoiser,
    DPMSolverPP2M,
    DPMSolverState,
    Sampler,
    Spacing,
    posterior,
    timesteps,
)
from ldm.diffusion.schedules import CLEAN, NoiseSchedule, cosine, interpolation, linear, scaled_linear, sigmoid
from ldm.diffusion.weighting import LossWeight, MinSNRWeight, UniformWeight

__all__ = [
    "CLEAN",
    "AnalyticDDIMSampler",
    "DDIMSampler",
    "DDPMSampler",
    "DPMSolverPP2M",
    "DPMSolverState",
    "Denoiser",
    "EpsilonPrediction",
    "LossWeight",
    "MinSNRWeight",
    "NoiseSchedule",
    "Parameterization",
    "Sampler",
    "Spacing",
    "UniformWeight",
    "VPrediction",
    "X0Prediction",
    "cosine",
    "denoiser_from",
    "interpolation",
    "linear",
    "posterior",
    "sample",
    "scaled_linear",
    "sigmoid",
    "timesteps",
    "x0_errors",
]
