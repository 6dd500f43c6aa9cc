"""LatentDiffusionModule: a DDPM (Ho et al. 2020) trained on the latents of a frozen VAE.

Training (DDPM Algorithm 1, in general (alpha, sigma) form): z0 from the latent cache (already
normalised), t ~ U{0..T-1}, eps ~ N(0, I), x_t = alpha_t z0 + sigma_t eps (DDPM eq. 4), and the
denoiser regresses the parameterization's target with a per-timestep loss weight. The frozen VAE
(eval, no grad, outside the optimizer) only decodes samples; its weights ride along in the
checkpoint, so a checkpoint alone can sample. An EMA copy of the denoiser is used for
validation and sampling. The sampler is chosen at sampling time and never affects training.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any, Callable

import lightning as L
import torch
from torch import Tensor

from ldm.checkpoints import CheckpointError, load_checkpoint, load_vae
from ldm.diffusion import parameterization as parameterization_module
from ldm.diffusion.guidance import ClassConditioning, check_guidance, guide
from ldm.diffusion.parameterization import Parameterization
from ldm.diffusion.samplers import DDIMSampler, Sampler, denoiser_from, sample
from ldm.diffusion.schedules import NoiseSchedule
from ldm.diffusion.weighting import LossWeight, UniformWeight
from ldm.io import update_hash
from ldm.models.autoencoder import AutoencoderKL, LatentNormalizer
from ldm.models.unet import UNet
from ldm.systems.compile import Compiled
from ldm.systems.ema import EMA
from ldm.systems.optim import configure

log = logging.getLogger(__name__)

VAL_TIMESTEPS = 10  # validation loss on a fixed grid of t so epochs are comparable


class LatentDiffusionModule(L.LightningModule):
    """A latent DDPM. All components are built objects (Hydra builds them from `conf/`).

    Args:
        unet: the denoiser network (x_t, t) -> output.
        schedule: the noise schedule (alpha_t, sigma_t).
        parameterization: what the network predicts (eps, x0 or v).
        sampler: default sampler for validation grids and `sample()`.
        vae: the VAE whose encoder made the latents (or its checkpoint path); it decodes samples.
        optimizer: partial optimizer over the denoiser's parameters.
        scheduler: optional partial LR schedule taking (optimizer, total_steps).
        loss_weight: per-timestep weight of the squared error (uniform by default).
        ema_decay: the decay of the EMA of the denoiser's weights.
        conditioning: class labels with classifier-free guidance (None: unconditional).
        compile: train and sample through `torch.compile` (True or a mode; see `ldm.systems.compile`).
    """

    KIND = "ldm"  # checkpoint["ldm"]["kind"]: which stage wrote a checkpoint

    def __init__(
        self,
        unet: UNet,
        schedule: NoiseSchedule,
        parameterization: Parameterization,
        sampler: Sampler,
        vae: AutoencoderKL | str | Path,
        optimizer: Callable[..., torch.optim.Optimizer] | None = None,
        scheduler: Callable[..., Any] | None = None,
        loss_weight: LossWeight | None = None,
        ema_decay: float = 0.999,
        conditioning: ClassConditioning | None = None,
        compile: bool | str = False,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["unet", "schedule", "parameterization", "sampler", "vae", "optimizer",
                                          "scheduler", "loss_weight", "conditioning"])
        source = "the given VAE" if isinstance(vae, AutoencoderKL) else str(vae)
        self.vae = (vae if isinstance(vae, AutoencoderKL) else load_vae(vae)).eval().requires_grad_(False)
        if self.vae.latent_shape[0] != unet.in_channels:
            raise ValueError(
                f"The VAE ({source}) makes {self.vae.latent_shape} latents but the UNet takes "
                f"{unet.in_channels} channels: set model.unet.in_channels={self.vae.latent_shape[0]} "
                "or pass a matching vae_ckpt=PATH"
            )
        sampler.timesteps(schedule)  # fails now, not after training, if e.g. num_steps > T
        wanted = conditioning.num_classes if conditioning else None
        if unet.num_classes != wanted:
            raise ValueError(f"conditioning has {wanted} classes but the UNet {unet.num_classes}: "
                             f"set model.unet.num_classes={wanted}")
        self.conditioning = conditioning
        self.unet, self.schedule, self.parameterization, self.sampler = unet, schedule, parameterization, sampler
        self.ema = EMA(unet, ema_decay)
        self.normalizer = LatentNormalizer()  # set from the latent cache in setup(); saved in checkpoints
        self.loss_weight = loss_weight or UniformWeight()
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.compiled = Compiled(compile)

    def setup(self, stage: str) -> None:
        normalizer = getattr(self.trainer.datamodule, "normalizer", None)
        if normalizer is not None:  # the cache's statistics; a resumed checkpoint holds the same
            self.normalizer.load_state_dict(normalizer.state_dict())

    def train(self, mode: bool = True) -> "LatentDiffusionModule":
        super().train(mode)
        self.vae.eval()  # frozen: stays in eval mode whatever Lightning does
        return self

    def forward(self, x_t: Tensor, t: Tensor) -> Tensor:
        """The training network's raw output for (x_t, t)."""
        return self.unet(x_t, t)

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        z0, labels = batch["latent"], self._labels(batch)
        if labels is not None:
            labels = self.conditioning.drop_labels(labels)  # learn the unconditional model too
        t = torch.randint(0, self.schedule.num_timesteps, (len(z0),), device=z0.device)
        loss = self.diffusion_loss(self.compiled(self.unet), z0, t, torch.randn_like(z0), labels).mean()
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=len(z0))
        return loss

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        return self._eval_step(batch, batch_idx, "val")

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        return self._eval_step(batch, batch_idx, "test")

    def _eval_step(self, batch: dict[str, Tensor], batch_idx: int, stage: str) -> Tensor:
        """EMA loss with t on a fixed grid and eps from a seeded generator: same inputs every epoch."""
        z0 = batch["latent"]
        grid = torch.linspace(0, self.schedule.num_timesteps - 1, VAL_TIMESTEPS, device=z0.device).long()
        t = grid[torch.arange(len(z0), device=z0.device) % VAL_TIMESTEPS]
        generator = torch.Generator(device=z0.device).manual_seed(batch_idx)
        eps = torch.randn(z0.shape, generator=generator, device=z0.device, dtype=z0.dtype)
        loss = self.diffusion_loss(self.ema.model, z0, t, eps, self._labels(batch)).mean()
        self.log(f"{stage}/loss", loss, on_epoch=True, prog_bar=True, batch_size=len(z0), sync_dist=True)
        return loss

    def _labels(self, batch: dict[str, Tensor]) -> Tensor | None:
        return batch["label"] if self.conditioning is not None else None

    def diffusion_loss(
        self, network: torch.nn.Module, z0: Tensor, t: Tensor, eps: Tensor, labels: Tensor | None = None
    ) -> Tensor:
        """Weighted squared error of the network's output against the target, per sample. (B,)"""
        alpha, sigma = self.schedule.coefficients(t, z0.ndim)
        x_t = self.schedule.q_sample(z0, t, eps)
        target = self.parameterization.target(z0, eps, alpha, sigma)
        output = network(x_t, t) if labels is None else network(x_t, t, labels)
        error = (output.float() - target.float()).pow(2).flatten(1).mean(1)
        factor = self.parameterization.x0_loss_factor(alpha, sigma).flatten()
        return self.loss_weight(self.schedule.snr(t), factor) * error

    def configure_optimizers(self) -> Any:
        return configure(self, self.unet.parameters())

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        super().optimizer_step(*args, **kwargs)
        # Here rather than in on_train_batch_end, which runs after the callbacks': a checkpoint
        # saved at the end of step n must already hold the EMA of step n (exact resume).
        self.ema.update(self.unet, self.global_step)

    @property
    def vae_sha256(self) -> str:
        """sha256 of the VAE's weights as they are now (the latents' encoder and the samples' decoder)."""
        return update_hash(hashlib.sha256(), self.vae.state_dict()).hexdigest()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # A resumed or tested checkpoint must have been trained on the latents of this module's
        # VAE; otherwise its weights would silently replace the VAE the data was encoded with.
        stored = {k[len("vae."):]: v for k, v in checkpoint.get("state_dict", {}).items() if k.startswith("vae.")}
        if stored and update_hash(hashlib.sha256(), stored).hexdigest() != self.vae_sha256:
            raise CheckpointError(
                "This LDM checkpoint was trained on the latents of another VAE than the one given (vae_ckpt): "
                "resume or test it with the VAE it holds (vae_ckpt=<the same checkpoint>, the default for "
                "ckpt_path=...), or start a new LDM run for the new VAE"
            )

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Everything `from_checkpoint` needs to rebuild the model for sampling, as plain values.
        checkpoint["ldm"] = {
            "kind": self.KIND, "vae_config": dict(self.vae.config), "vae_sha256": self.vae_sha256,
            "latent_shape": list(self.vae.latent_shape), "unet_config": dict(self.unet.config),
            "parameterization": type(self.parameterization).__name__,
            "schedule": {"alpha": self.schedule.alpha.cpu(), "sigma": self.schedule.sigma.cpu()},
            "conditioning": self.conditioning.config() if self.conditioning else None,
        }

    @classmethod
    def from_checkpoint(
        cls, path: str | Path, sampler: Sampler | None = None, compile: bool | str = False
    ) -> "LatentDiffusionModule":
        """Rebuild a trained model (VAE, EMA denoiser, schedule, normaliser) from its checkpoint alone."""
        checkpoint = load_checkpoint(path, "ldm")
        info = checkpoint["ldm"]
        param_cls = getattr(parameterization_module, info["parameterization"], None)
        if not (isinstance(param_cls, type) and issubclass(param_cls, Parameterization)):
            raise CheckpointError(f"{path}: unknown parameterization {info['parameterization']!r}")
        model = cls(
            unet=UNet(**info["unet_config"]),
            schedule=NoiseSchedule((info["schedule"]["alpha"], info["schedule"]["sigma"])),
            parameterization=param_cls(), sampler=sampler or DDIMSampler(),
            vae=AutoencoderKL(**info["vae_config"]),
            conditioning=ClassConditioning(**info["conditioning"]) if info.get("conditioning") else None,
            compile=compile,
        )
        model.load_state_dict(checkpoint["state_dict"])
        return model.eval()

    def guided_network(self, labels: Tensor | None, guidance: float | None) -> Callable[[Tensor, Tensor], Tensor]:
        """The EMA denoiser as (x_t, t) -> output, with classifier-free guidance for `labels`.

        w = 0 and w = 1 run one pass (exactly the unconditional / conditional model); otherwise the
        conditional and unconditional passes share one batched forward call.
        """
        net = self.compiled(self.ema.model)
        if self.conditioning is None:
            if labels is not None:
                raise ValueError("labels were given but this model is unconditional (train with conditioning=class)")
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

    @torch.no_grad()
    def sample_latents(
        self, num_samples: int, sampler: Sampler | None = None, generator: torch.Generator | None = None,
        return_trajectory: bool = False, labels: Tensor | None = None, guidance: float | None = None,
    ) -> Tensor | tuple[Tensor, list[Tensor]]:
        """Normalised latents from the EMA denoiser, (N, *latent_shape) (and the x_t trajectory).

        `labels` (N,) picks each sample's class for a conditional model; `guidance` is w
        (default: the model's `conditioning.guidance`).
        """
        if labels is not None:
            labels = torch.as_tensor(labels, device=self.device).long()
            if labels.shape != (num_samples,):
                raise ValueError(f"labels must have shape ({num_samples},), got {tuple(labels.shape)}")
        network = self.guided_network(labels, guidance)
        denoiser = denoiser_from(network, self.parameterization, self.schedule)
        shape = (num_samples, *self.vae.latent_shape)
        return sample(denoiser, self.schedule, sampler or self.sampler, shape, generator=generator,
                      device=self.device, return_trajectory=return_trajectory)

    @torch.no_grad()
    def decode(self, z_n: Tensor) -> Tensor:
        """Normalised latents -> images in [0, 1]."""
        return self.vae.decode(self.normalizer.denormalize(z_n))

    @torch.no_grad()
    def sample(
        self, num_samples: int, sampler: Sampler | None = None, generator: torch.Generator | None = None,
        labels: Tensor | None = None, guidance: float | None = None,
    ) -> Tensor:
        """Decoded samples (N, C, H, W) in [0, 1] (of the given classes, for a conditional model)."""
        return self.decode(self.sample_latents(num_samples, sampler, generator, labels=labels, guidance=guidance))

    def default_labels(self, num_samples: int) -> Tensor | None:
        """Classes 0, 1, ..., 9, 0, ... for a conditional model (balanced grids), else None."""
        if self.conditioning is None:
            return None
        return torch.arange(num_samples, device=self.device) % self.conditioning.num_classes

    @torch.no_grad()
    def log_images(self, batch: dict[str, Tensor], num_images: int) -> dict[str, Any]:
        """Samples, the forward corruption of real latents, and one denoising trajectory."""
        generator = torch.Generator(device=self.device).manual_seed(0)
        samples = self.sample(num_images, generator=generator, labels=self.default_labels(num_images))
        return {"samples": samples, **self.forward_corruption(batch["latent"][:4]), **self.trajectory(4, generator)}

    @torch.no_grad()
    def forward_corruption(self, z0: Tensor, columns: int = 8) -> dict[str, tuple[Tensor, int]]:
        """The post's figure: each row one latent, decoded at increasing t (eq. 2), t = 0 ... T-1."""
        T = self.schedule.num_timesteps
        t = torch.linspace(0, T - 1, columns, device=z0.device).long()
        eps = torch.randn(z0.shape, generator=torch.Generator(device=z0.device).manual_seed(1), device=z0.device)
        rows = [self.schedule.q_sample(z.expand(columns, -1, -1, -1), t, e.expand(columns, -1, -1, -1)) for z, e in zip(z0, eps)]
        images = self.decode(torch.cat([z0[:, None], torch.stack(rows)], 1).flatten(0, 1))
        return {"forward_corruption": (images, columns + 1)}

    @torch.no_grad()
    def trajectory(self, num_rows: int, generator: torch.Generator, columns: int = 8) -> dict[str, tuple[Tensor, int]]:
        """Denoising trajectories: each row one sample, decoded at evenly spaced sampler steps."""
        labels = self.default_labels(num_rows)
        _, states = self.sample_latents(num_rows, generator=generator, return_trajectory=True, labels=labels)
        picks = torch.linspace(0, len(states) - 1, columns).round().long().tolist()
        images = self.decode(torch.stack([states[i] for i in picks], 1).flatten(0, 1))
        return {"denoising_trajectory": (images, columns)}
