"""LatentDiffusionModule: a denoiser trained, by any objective, in the space of a frozen first stage.

The module holds no diffusion math: its objective (`ldm.diffusion.objectives`, `ldm.diffusion.flow`)
draws t and the noise, builds the network input, the target and the weight, and owns the sampling
loop; the first stage (`ldm.models.first_stage`: the VAE, or the identity for pixel space) maps
images to the latents it works on and back, with its fitted latent scale. Sampling goes through
`pipeline()` (`ldm.pipeline`), figures through `ldm.figures`.

Training: x0 = normalize(z), z from the latent cache (already drawn from the VAE's posterior) or
encoded on the fly from images; loss = the objective's weighted squared error. The frozen first
stage (eval, no grad, outside the optimizer) rides along in the checkpoint, so a checkpoint alone
can sample. An EMA copy of the denoiser is used for validation and sampling.

Every component is saved as a spec (`ldm.serialize`: class path + plain values) in the
checkpoint's hyperparameters, so `LatentDiffusionModule.load_from_checkpoint(path)` (Lightning's)
and `LatentDiffusionModule.from_checkpoint(path)` (ours: safe load, stage check) both rebuild it.
"""

from __future__ import annotations

import hashlib
import inspect
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import Tensor, nn

from ldm import figures
from ldm.checkpoints import CheckpointError, load_checkpoint, load_first_stage
from ldm.diffusion.flow import FlowSampler
from ldm.diffusion.guidance import ClassConditioning
from ldm.diffusion.objectives import Objective
from ldm.diffusion.samplers import Sampler
from ldm.errors import ConfigError, one_line
from ldm.io import update_hash
from ldm.models.first_stage import FirstStage, weights
from ldm.models.unet import UNet
from ldm.pipeline import DiffusionPipeline
from ldm.serialize import SpecError, built, spec
from ldm.systems.compile import Compiled
from ldm.systems.ema import EMA
from ldm.systems.ldm_checks import OLD_FORMAT, check_loaded, check_same_recipe
from ldm.systems.optim import configure

log = logging.getLogger(__name__)


class LatentDiffusionModule(L.LightningModule):
    """A diffusion (or flow-matching) model on a frozen first stage. Hydra builds the components.

    Args:
        unet: the denoiser network (x_t, time[, labels]) -> output (or its spec).
        objective: the training objective, which also owns the sampling loop (or its spec).
        sampler: the default sampler, of the objective's family (or its spec).
        first_stage: the frozen first stage: an object, a VAE or LDM checkpoint path, or a spec.
        optimizer: partial optimizer over the denoiser's parameters.
        scheduler: optional partial LR schedule taking (optimizer, total_steps).
        ema_decay: the decay of the EMA of the denoiser's weights.
        conditioning: class labels with classifier-free guidance (None: unconditional).
        compile: train and sample through `torch.compile` (True or a mode; see `ldm.systems.compile`).
    """

    KIND = "ldm"  # checkpoint["ldm"]["kind"]: which stage wrote a checkpoint
    FORMAT = 2  # checkpoint["ldm"]["format"]: 2 = components saved as specs (objective, first stage)

    def __init__(
        self,
        unet: UNet | dict,
        objective: Objective | dict,
        sampler: Any,
        first_stage: nn.Module | str | Path | dict,
        optimizer: Callable[..., torch.optim.Optimizer] | None = None,
        scheduler: Callable[..., Any] | None = None,
        ema_decay: float = 0.999,
        conditioning: ClassConditioning | dict | None = None,
        compile: bool | str = False,
    ) -> None:
        super().__init__()
        unet, objective, sampler = (
            built(unet, UNet),
            built(objective, Objective),
            built(sampler, (Sampler, FlowSampler)),
        )
        conditioning = None if conditioning is None else built(conditioning, ClassConditioning)
        self._first_stage_from_spec = isinstance(first_stage, dict)  # random weights until a state dict loads
        first_stage = _first_stage(first_stage)
        if first_stage.latent_shape[0] != unet.in_channels:
            raise ValueError(
                f"The first stage makes {tuple(first_stage.latent_shape)} latents but the UNet takes "
                f"{unet.in_channels} channels: set model.unet.in_channels={first_stage.latent_shape[0]}"
            )
        objective.check_sampler(sampler)  # e.g. num_steps > T fails now, not after training
        if DiffusionPipeline.needs_calibration(sampler):  # the training-time grids and val/fid could not draw
            raise ValueError(
                f"{type(sampler).__name__} measures the trained denoiser on data before it samples: train with "
                "sampler=ddim, then sample or evaluate with sampler=ddim_analytic"
            )
        wanted = conditioning.num_classes if conditioning else None
        if unet.num_classes != wanted:
            raise ValueError(
                f"conditioning has {wanted} classes but the UNet {unet.num_classes}: "
                f"set model.unet.num_classes={wanted}"
            )
        # Plain specs only (never modules): what load_from_checkpoint rebuilds the model from.
        self.save_hyperparameters(
            {
                "unet": spec(unet),
                "objective": spec(objective),
                "sampler": spec(sampler),
                "first_stage": spec(first_stage),
                "ema_decay": ema_decay,
                "conditioning": spec(conditioning) if conditioning else None,
                "compile": compile,
            },
            logger=False,
        )
        self.unet, self.objective, self.sampler, self.conditioning = unet, objective, sampler, conditioning
        self.first_stage = first_stage.eval().requires_grad_(False)
        self.ema = EMA(unet, ema_decay)
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.compiled = Compiled(compile)
        # One (x_t, time) input, so that the model summary counts real FLOPs.
        self.example_input_array = (torch.zeros(1, *first_stage.latent_shape), torch.zeros(1))

    def setup(self, stage: str) -> None:
        # The data module has fitted the scale by now (its setup runs first); a resumed checkpoint holds the same.
        try:
            self.first_stage.normalizer.check()
        except ValueError as e:
            raise ConfigError(str(e)) from None

    def train(self, mode: bool = True) -> LatentDiffusionModule:
        super().train(mode)
        self.first_stage.eval()  # frozen: stays in eval mode whatever Lightning does
        return self

    def forward(self, x_t: Tensor, time: Tensor) -> Tensor:
        """The training network's raw output for (x_t, time)."""
        return self.unet(x_t, time)

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        x0, labels = self.clean(batch), self._labels(batch)
        if labels is not None:
            labels = self.conditioning.drop_labels(labels)  # learn the unconditional model too
        t = self.objective.draw_times(len(x0), x0.device)
        loss = self.objective.loss(self.compiled(self.unet), x0, t, torch.randn_like(x0), labels).mean()
        self.log("train/loss", loss, on_step=True, on_epoch=True, batch_size=len(x0))  # the bar reads it every n steps
        return loss

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        return self._eval_step(batch, batch_idx, "val")

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        return self._eval_step(batch, batch_idx, "test")

    def _eval_step(self, batch: dict[str, Tensor], batch_idx: int, stage: str) -> Tensor:
        """EMA loss with t on a fixed grid and eps from a seeded generator: same inputs every epoch."""
        x0 = self.clean(batch)
        t = self.objective.eval_times(len(x0), x0.device)
        generator = torch.Generator(device=x0.device).manual_seed(batch_idx)
        eps = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        loss = self.objective.loss(self.ema.model, x0, t, eps, self._labels(batch)).mean()
        self.log(f"{stage}/loss", loss, on_epoch=True, prog_bar=stage == "val", batch_size=len(x0), sync_dist=True)
        return loss

    @torch.no_grad()
    def clean(self, batch: dict[str, Tensor]) -> Tensor:
        """x0 for a batch: normalised latents, from the cache ("latent") or encoded now ("image")."""
        if "latent" in batch:
            z = batch["latent"]
        else:
            posterior = self.first_stage.encode(batch["image"])
            z = posterior.sample() if self.training else posterior.mode()
        return self.first_stage.normalizer.normalize(z)

    def _labels(self, batch: dict[str, Tensor]) -> Tensor | None:
        return batch["label"] if self.conditioning is not None else None

    def configure_optimizers(self) -> Any:
        return configure(self, self.unet.parameters())

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        super().optimizer_step(*args, **kwargs)
        # Here rather than in on_train_batch_end, which runs after the callbacks': a checkpoint
        # saved at the end of step n must already hold the EMA of step n (exact resume).
        self.ema.update(self.unet, self.global_step)

    @property
    def first_stage_sha256(self) -> str:
        """sha256 of the first stage's weights (without its normaliser): the latents' encoder and the samples' decoder."""
        return update_hash(hashlib.sha256(), weights(self.first_stage)).hexdigest()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        info = checkpoint.get("ldm") or {}
        if info.get("format") != self.FORMAT:
            raise CheckpointError(OLD_FORMAT)
        if self._first_stage_from_spec:
            return  # rebuilt from the checkpoint's own spec: the weights are about to load
        check_same_recipe(checkpoint.get("hyper_parameters") or {}, self.hparams)
        # A resumed or tested checkpoint must have been trained on this first stage's latents;
        # otherwise its weights would silently replace the VAE the data was encoded with.
        prefix = "first_stage."
        stored = {
            k[len(prefix) :]: v
            for k, v in checkpoint.get("state_dict", {}).items()
            if k.startswith(prefix) and not k.startswith(prefix + "normalizer.")
        }
        if update_hash(hashlib.sha256(), stored).hexdigest() != self.first_stage_sha256:
            raise CheckpointError(
                "This LDM checkpoint was trained on the latents of another VAE than the one given (vae_ckpt): "
                "resume or test it with the VAE it holds (vae_ckpt=<the same checkpoint>, the default for "
                "ckpt_path=...), or start a new LDM run for the new VAE"
            )

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["ldm"] = {
            "kind": self.KIND,
            "format": self.FORMAT,
            "first_stage_sha256": self.first_stage_sha256,
            "latent_shape": list(self.first_stage.latent_shape),
        }

    @classmethod
    def from_checkpoint(
        cls, path: str | Path, sampler: Any = None, compile: bool | str = False
    ) -> LatentDiffusionModule:
        """Rebuild a trained model (first stage, EMA denoiser, objective, sampler) from its checkpoint alone.

        `sampler` replaces the stored default sampler (the one it was trained with)."""
        checkpoint = load_checkpoint(path, "ldm")
        hparams = checkpoint.get("hyper_parameters")
        if checkpoint["ldm"].get("format") != cls.FORMAT or not isinstance(hparams, dict):
            raise CheckpointError(f"{path}: {OLD_FORMAT}")
        unknown = set(hparams) - set(inspect.signature(cls.__init__).parameters)
        if unknown:
            raise CheckpointError(
                f"{path}: its hyperparameters hold {sorted(unknown)}, which this model does not take; "
                "the file was edited or comes from another version of ldm"
            )
        try:
            model = cls(**{**hparams, "compile": compile, **({"sampler": sampler} if sampler is not None else {})})
        except (SpecError, ValueError, TypeError) as e:
            raise CheckpointError(
                f"{path}: the model it records does not build ({one_line(e)[:200]}); the file was "
                "edited or damaged: use another checkpoint"
            ) from e
        try:
            model.load_state_dict(checkpoint["state_dict"])
        except RuntimeError as e:  # missing, unexpected or mis-shaped tensors
            raise CheckpointError(
                f"{path}: its weights do not fit the model it records ({one_line(e)[:200]}); "
                "the file is damaged: use another checkpoint"
            ) from e
        check_loaded(model, path)
        return model.eval()

    @classmethod
    def load_from_checkpoint(cls, checkpoint_path: str | Path, *args: Any, **kwargs: Any) -> LatentDiffusionModule:
        """Lightning's loader, after the same checks as `from_checkpoint` (an LDM checkpoint of this format)."""
        checkpoint = load_checkpoint(checkpoint_path, cls.KIND)
        if checkpoint["ldm"].get("format") != cls.FORMAT or not isinstance(checkpoint.get("hyper_parameters"), dict):
            raise CheckpointError(f"{checkpoint_path}: {OLD_FORMAT}")
        return super().load_from_checkpoint(checkpoint_path, *args, **kwargs)

    def pipeline(self) -> DiffusionPipeline:
        """The EMA denoiser with its objective, first stage, default sampler and guidance (`ldm.pipeline`)."""
        self.first_stage.normalizer.check()  # NaN latents never reach a decoder
        return DiffusionPipeline(
            self.compiled(self.ema.model), self.objective, self.first_stage, self.sampler, self.conditioning
        )

    @torch.no_grad()
    def sample(
        self,
        num_samples: int,
        sampler: Any = None,
        generator: torch.Generator | None = None,
        labels: Tensor | None = None,
        guidance: float | None = None,
        on_step: Callable[[int, int], None] | None = None,
    ) -> Tensor:
        """Decoded samples (N, C, H, W) in [0, 1] from the EMA denoiser (see `DiffusionPipeline.sample`)."""
        return self.pipeline().sample(
            num_samples, sampler, generator, labels=labels, guidance=guidance, on_step=on_step
        )

    def default_labels(self, num_samples: int) -> Tensor | None:
        """Classes 0, 1, ..., 9, 0, ... for a conditional model (balanced grids), else None."""
        return self.pipeline().default_labels(num_samples)

    @torch.no_grad()
    def log_images(self, batch: dict[str, Tensor], num_images: int) -> dict[str, Any]:
        """Samples, the forward corruption of real data, and one denoising trajectory (`ldm.figures`)."""
        pipeline, generator = self.pipeline(), torch.Generator(device=self.device).manual_seed(0)
        samples = pipeline.sample(num_images, generator=generator, labels=pipeline.default_labels(num_images))
        return {
            "samples": samples,
            "forward_corruption": figures.forward_corruption(pipeline, self.clean(batch)[:4]),
            "denoising_trajectory": figures.trajectory(pipeline, 4, generator),
        }


def _first_stage(value: nn.Module | str | Path | dict) -> nn.Module:
    if isinstance(value, (str, Path)):
        return load_first_stage(value)
    stage = built(value, nn.Module)
    if not isinstance(stage, FirstStage):
        raise ValueError(
            f"{type(stage).__name__} is not a first stage (encode, decode, latent_shape, normalizer, config)"
        )
    return stage
