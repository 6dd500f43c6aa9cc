"""The sampling pipeline: a trained denoiser, its objective, the first stage and guidance, nothing else.

    pipeline = model.pipeline()                       # the EMA denoiser of a LatentDiffusionModule
    images = pipeline.sample(64, sampler=HeunSampler(10), labels=torch.arange(64) % 10, guidance=2.0)
    images = pipeline.sample(16, sampler="ddim", steps=20, eta=0.0, seed=0)   # by name (SAMPLERS)

Noise -> `objective.sample` (its own sampler family) -> normalised latents z_n -> z = denormalize(z_n)
-> `first_stage.decode(z)` -> images in [0, 1]. It needs no Lightning and no trainer; the figures
(`ldm.figures`), the FID callback, `sample.py` and `evaluate.py` all draw through it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from ldm.diffusion.analytic import AnalyticDDIMSampler, x0_errors
from ldm.diffusion.flow import EulerSampler, FlowAncestralSampler, HeunSampler
from ldm.diffusion.guidance import ClassConditioning, check_guidance, guide
from ldm.diffusion.loop import denoiser_from
from ldm.diffusion.objectives import Objective
from ldm.diffusion.samplers import DDIMSampler, DDPMSampler, DPMSolverPP2M
from ldm.models.first_stage import FirstStage

# The names of conf/sampler/*.yaml; each class's defaults are that file's values.
SAMPLERS: dict[str, type] = {
    "ddim": DDIMSampler,
    "ddim_analytic": AnalyticDDIMSampler,
    "ddpm": DDPMSampler,
    "dpmpp": DPMSolverPP2M,
    "euler": EulerSampler,
    "heun": HeunSampler,
    "flow_ancestral": FlowAncestralSampler,
}


def make_sampler(sampler: Any, steps: int | None = None, eta: float | None = None) -> Any:
    """`sampler` (a name in SAMPLERS, an object, or None), with `steps` / `eta` replaced if given.
    An object is rebuilt from its `config`, never changed in place."""
    if isinstance(sampler, str):
        if sampler not in SAMPLERS:
            raise ValueError(f"sampler={sampler!r} is not one of {sorted(SAMPLERS)}")
        sampler = SAMPLERS[sampler]()
    wanted = {key: value for key, value in (("num_steps", steps), ("eta", eta)) if value is not None}
    if not wanted:
        return sampler
    config = getattr(sampler, "config", None)
    if not isinstance(config, dict):
        raise ValueError("steps= / eta= need a sampler (a name or an object with a `config`); got None")
    for key in wanted:
        if key not in config:
            raise ValueError(
                f"{'steps' if key == 'num_steps' else key}= does not apply to {type(sampler).__name__} "
                f"(it has no {key})"
            )
    if config.get("x0_error") is not None and "num_steps" in wanted:
        config = {**config, "x0_error": None}  # measured at the old steps: calibrate again
    return type(sampler)(**{**config, **wanted})


class DiffusionPipeline:
    """Draws samples from `network` (x_t, time[, labels]) -> output.

    Args:
        network: the denoiser (usually the EMA copy, possibly compiled).
        objective: the objective it was trained with (it owns the sampling loop).
        first_stage: decodes the normalised latents (its normaliser must be fitted).
        sampler: the default sampler (another may be passed to each call).
        conditioning: class conditioning with classifier-free guidance, or None.
    """

    def __init__(
        self,
        network: Callable[..., Tensor],
        objective: Objective,
        first_stage: FirstStage,
        sampler: Any,
        conditioning: ClassConditioning | None = None,
    ) -> None:
        self.network, self.objective, self.first_stage = network, objective, first_stage
        self.sampler, self.conditioning = sampler, conditioning

    @property
    def device(self) -> torch.device:
        return self.first_stage.normalizer.scale.device

    def guided_network(self, labels: Tensor | None, guidance: float | None) -> Callable[[Tensor, Tensor], Tensor]:
        """The denoiser as (x_t, time) -> output, with classifier-free guidance for `labels`.

        w = 0 and w = 1 run one pass (exactly the unconditional / conditional model); otherwise the
        conditional and unconditional passes share one batched forward call (Ho & Salimans eq. 6).
        """
        net = self.network
        if self.conditioning is None:
            if labels is not None or guidance is not None:
                what = "labels were" if labels is not None else "guidance was"
                raise ValueError(f"{what} given but this model is unconditional (train with conditioning=class)")
            return net
        w = self.conditioning.guidance if guidance is None else guidance
        check_guidance(w)
        if labels is None or w == 0:
            return lambda x, t: net(x, t, None)  # the null label everywhere
        if w == 1:
            return lambda x, t: net(x, t, labels)
        null = torch.full_like(labels, self.conditioning.null_label)

        def guided(x: Tensor, t: Tensor) -> Tensor:
            cond, uncond = net(torch.cat([x, x]), torch.cat([t, t]), torch.cat([labels, null])).chunk(2)
            return guide(cond, uncond, w)

        return guided

    @staticmethod
    def needs_calibration(sampler: Any) -> bool:
        """A sampler that must measure the denoiser on data before it samples (`ldm.diffusion.analytic`)."""
        return isinstance(sampler, AnalyticDDIMSampler) and sampler.x0_error is None

    @torch.no_grad()
    def calibrated(
        self,
        sampler: AnalyticDDIMSampler,
        images: Tensor,
        labels: Tensor | None = None,
        guidance: float | None = None,
        generator: torch.Generator | None = None,
        batch_size: int = 1000,
    ) -> AnalyticDDIMSampler:
        """`sampler` calibrated on training `images` (N, C, H, W) in [0, 1], encoded and normalised as the
        latent cache does, through the denoiser sampling will use (the same `labels` / `guidance`):

            pipe.sample(16, sampler=pipe.calibrated(AnalyticDDIMSampler(10), train_images))
        """
        self.objective.check_sampler(sampler)
        if labels is not None and len(labels) != len(images):
            raise ValueError(f"{len(labels)} labels for {len(images)} calibration images")
        steps, schedule = sampler.timesteps(self.objective.schedule).tolist(), self.objective.schedule
        total, count = None, 0
        for start in range(0, len(images), batch_size):  # each batch with its own labels
            chunk = images[start : start + batch_size].to(self.device)
            z = self.first_stage.normalizer.normalize(self.first_stage.encode(chunk).sample(generator))
            y = None if labels is None else labels[start : start + batch_size].to(self.device)
            denoiser = denoiser_from(self.guided_network(y, guidance), self.objective.parameterization, schedule)
            errors = torch.tensor(
                x0_errors(denoiser, schedule, z, steps, generator, len(z), sampler.per_dimension), dtype=torch.float64
            )
            total = errors * len(z) if total is None else total + errors * len(z)
            count += len(z)
        if total is None:
            raise ValueError("calibration needs at least one image")
        return AnalyticDDIMSampler(**{**sampler.config, "x0_error": (total / count).tolist()})

    @torch.no_grad()
    def sample_latents(
        self,
        num_samples: int,
        sampler: Any = None,
        generator: torch.Generator | None = None,
        labels: Tensor | None = None,
        guidance: float | None = None,
        return_trajectory: bool = False,
        on_step: Callable[[int, int], None] | None = None,
    ) -> Tensor | tuple[Tensor, list[Tensor]]:
        """Normalised latents (N, *latent_shape) (and the x_t trajectory).

        `labels` (N,) picks each sample's class for a conditional model; `guidance` is w
        (default: the model's `conditioning.guidance`).
        """
        if not isinstance(num_samples, int) or isinstance(num_samples, bool) or num_samples < 1:
            raise ValueError(f"num_samples must be a positive int, got {num_samples!r}")
        if labels is not None:
            labels = torch.as_tensor(labels, device=self.device)
            if labels.shape != (num_samples,) or labels.is_floating_point():
                raise ValueError(
                    f"labels must be {num_samples} integer class ids, got {labels.dtype} {tuple(labels.shape)}"
                )
            classes = self.conditioning.num_classes if self.conditioning is not None else None
            if classes is not None and not bool(((labels >= 0) & (labels < classes)).all()):
                raise ValueError(f"labels must be class ids in 0..{classes - 1}")
            labels = labels.long()
        shape = (num_samples, *self.first_stage.latent_shape)
        return self.objective.sample(
            self.guided_network(labels, guidance),
            sampler or self.sampler,
            shape,
            generator=generator,
            device=self.device,
            return_trajectory=return_trajectory,
            on_step=on_step,
        )

    @torch.no_grad()
    def decode(self, z_n: Tensor) -> Tensor:
        """Normalised latents -> images in [0, 1]."""
        return self.first_stage.decode(self.first_stage.normalizer.denormalize(z_n))

    @torch.no_grad()
    def sample(
        self,
        num_samples: int,
        sampler: Any = None,
        generator: torch.Generator | None = None,
        labels: Tensor | None = None,
        guidance: float | None = None,
        *,
        steps: int | None = None,
        eta: float | None = None,
        seed: int | None = None,
        on_step: Callable[[int, int], None] | None = None,
    ) -> Tensor:
        """Decoded samples (N, C, H, W) in [0, 1]: of the given classes for a conditional model
        (labels=None: its unconditional model; `default_labels(n)`: 0..9 in turn).

        `sampler`: an object or a name in SAMPLERS (default: the model's own); `steps` / `eta`
        replace its number of steps / its eta; `seed` draws from a fresh generator seeded with it;
        `on_step(i, n)` is called after each of the sampler's n steps (e.g. a progress bar).
        """
        sampler = make_sampler(self.sampler if sampler is None else sampler, steps, eta)
        if seed is not None:
            if generator is not None:
                raise ValueError("give seed= or generator=, not both")
            generator = torch.Generator(device=self.device).manual_seed(seed)
        return self.decode(
            self.sample_latents(num_samples, sampler, generator, labels=labels, guidance=guidance, on_step=on_step)
        )

    def default_labels(self, num_samples: int) -> Tensor | None:
        """Classes 0, 1, ..., K-1, 0, ... for a conditional model (balanced grids), else None."""
        if self.conditioning is None:
            return None
        return torch.arange(num_samples, device=self.device) % self.conditioning.num_classes
