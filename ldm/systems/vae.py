"""VAEModule: trains the first stage, an `AutoencoderKL`, on images in [0, 1].

Loss (negative ELBO with a weighted KL, i.e. a beta-VAE; Kingma & Welling 2014 eq. 3,
Higgins et al. 2017):  L = E_q[ -log p(x|z) ] + beta * KL(q(z|x) || N(0, I)),
both summed over pixels / latent dims and averaged over the batch. `recon_loss="bce"` is the
Bernoulli likelihood of the original VAE; `mse` and `l1` are the usual alternatives. A small beta
keeps reconstructions sharp while still pulling the posterior towards N(0, I), so its latents have
a scale the diffusion stage can normalise. Samples decoded from the prior are the baseline the
latent diffusion model is compared with.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Literal

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics.image import PeakSignalNoiseRatio, StructuralSimilarityIndexMeasure

from ldm.models.autoencoder import AutoencoderKL
from ldm.serialize import built, spec
from ldm.systems.compile import Compiled
from ldm.systems.optim import configure


def bce(logits: Tensor, x: Tensor) -> Tensor:
    """Bernoulli negative log-likelihood per image, (B,)."""
    return F.binary_cross_entropy_with_logits(logits, x, reduction="none").flatten(1).sum(1)


def mse(logits: Tensor, x: Tensor) -> Tensor:
    """Squared error per image (a fixed-variance Gaussian likelihood up to constants), (B,)."""
    return (torch.sigmoid(logits) - x).pow(2).flatten(1).sum(1)


def l1(logits: Tensor, x: Tensor) -> Tensor:
    """Absolute error per image (a Laplace likelihood up to constants), (B,)."""
    return (torch.sigmoid(logits) - x).abs().flatten(1).sum(1)


# Each maps (logits, target in [0, 1]) -> per-image loss (B,), summed over pixels.
RECON_LOSSES: dict[str, Callable[[Tensor, Tensor], Tensor]] = {"bce": bce, "mse": mse, "l1": l1}


class VAEModule(L.LightningModule):
    """Lightning wrapper of a VAE.

    Args:
        vae: the network (built by Hydra, not stored in hyperparameters).
        optimizer: partial optimizer, finished here with the VAE's parameters.
        scheduler: optional partial LR schedule taking (optimizer, total_steps).
        recon_loss: reconstruction term, one of "bce", "mse", "l1".
        beta: weight of the KL term.
        beta_warmup_steps: beta grows linearly from 0 over these training steps (0 = off);
            validation and test always use the full beta, so val/loss is comparable across epochs.

    A VAE built with `deterministic=True` is a plain autoencoder (conf/model/ae.yaml): it encodes to
    its mean, trains on reconstruction alone (beta must be 0), and generates through a Gaussian
    fitted to its codes (`sample.py ckpt=<ae> prior=fitted`, `ldm.models.gaussian`).
    """

    KIND = "vae"  # checkpoint["ldm"]["kind"]: which stage wrote a checkpoint

    def __init__(
        self,
        vae: AutoencoderKL | dict,
        optimizer: Callable[..., torch.optim.Optimizer] | None = None,
        scheduler: Callable[..., Any] | None = None,
        recon_loss: Literal["bce", "mse", "l1"] = "bce",
        beta: float = 1e-3,
        beta_warmup_steps: int = 0,
        compile: bool | str = False,
    ) -> None:
        super().__init__()
        if recon_loss not in RECON_LOSSES:
            raise ValueError(f"model.recon_loss={recon_loss!r} is not one of {sorted(RECON_LOSSES)}")
        if not (0 <= beta < math.inf) or beta_warmup_steps < 0:
            raise ValueError(f"model.beta={beta} and model.beta_warmup_steps={beta_warmup_steps} must be >= 0")
        self.save_hyperparameters(
            ignore=["vae", "optimizer", "scheduler"], logger=False
        )  # loggers get the resolved config
        vae = built(vae, AutoencoderKL)
        if vae.deterministic and beta != 0:
            raise ValueError(
                f"model.vae.deterministic=true is a plain autoencoder with no KL term: set model.beta=0 (got {beta})"
            )
        self.hparams["vae"] = spec(vae)  # a spec (ldm.serialize), so load_from_checkpoint rebuilds it
        self.vae = vae
        size = vae.config["image_size"]  # one input, so that the model summary counts real FLOPs
        self.example_input_array = torch.zeros(1, vae.config["in_channels"], size, size)
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.recon_fn = RECON_LOSSES[recon_loss]
        self.compiled = Compiled(compile)  # training calls torch.compile(vae) if asked
        self.psnr = torch.nn.ModuleDict({s: PeakSignalNoiseRatio(data_range=1.0) for s in ("val", "test")})
        self.ssim = torch.nn.ModuleDict({s: StructuralSimilarityIndexMeasure(data_range=1.0) for s in ("val", "test")})

    def forward(self, x: Tensor) -> Tensor:
        """Deterministic reconstruction: decode the posterior mean. (B, C, H, W) in [0, 1]."""
        return self.vae.decode(self.vae.encode(x).mode())

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        return self._shared_step(batch, "train")

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        return self._shared_step(batch, "val")

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        return self._shared_step(batch, "test")

    def _shared_step(self, batch: dict[str, Tensor], stage: str) -> Tensor:
        x = batch["image"]
        train = stage == "train"
        # Training samples z (the ELBO's Monte-Carlo estimate); evaluation, and a plain autoencoder, decode the mean.
        sample = train and not self.vae.deterministic
        logits, posterior = (self.compiled(self.vae) if train else self.vae)(x, sample_posterior=sample)
        recon = self.recon_fn(logits.float(), x.float()).mean()
        kl = posterior.kl().float().mean()
        beta = self.current_beta() if train else self.hparams.beta
        loss = recon + beta * kl
        metrics = {f"{stage}/loss": loss, f"{stage}/recon": recon, f"{stage}/kl": kl}
        if train:
            metrics["train/beta"] = float(beta)
        else:
            images = torch.sigmoid(logits.float()).clamp(0, 1)
            self.psnr[stage](images, x)
            self.ssim[stage](images, x)
            metrics.update({f"{stage}/psnr": self.psnr[stage], f"{stage}/ssim": self.ssim[stage]})
        self.log_dict(
            metrics, on_step=train, on_epoch=True, prog_bar=stage == "val", batch_size=len(x), sync_dist=not train
        )
        return loss

    def configure_optimizers(self) -> Any:
        return configure(self, self.vae.parameters())

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Checkpoints from before the VAE carried its (diffusion) latent normaliser resume too: it
        # is not trained here, so the missing buffers take the current, unfitted values.
        state = checkpoint.get("state_dict", {})
        for key, value in self.state_dict().items():
            if key.startswith("vae.normalizer.") and key not in state:
                state[key] = value

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Plain values only, so `ldm.checkpoints.load_vae` can rebuild the VAE with weights_only=True.
        checkpoint["ldm"] = {"kind": self.KIND, "vae_config": dict(self.vae.config)}

    def current_beta(self) -> float:
        """The KL weight at the current training step (linear warm-up, then constant)."""
        warmup = self.hparams.beta_warmup_steps
        if warmup == 0:
            return self.hparams.beta
        return self.hparams.beta * min(1.0, self.global_step / warmup)

    @torch.no_grad()
    def sample(self, num_samples: int, generator: torch.Generator | None = None) -> Tensor:
        """Decode z ~ N(0, I) from the prior: the VAE-only baseline. (N, C, H, W) in [0, 1]."""
        z = torch.randn((num_samples, *self.vae.latent_shape), generator=generator, device=self.device)
        return self.vae.decode(z)

    @torch.no_grad()
    def log_images(self, batch: dict[str, Tensor], num_images: int) -> dict[str, Tensor]:
        """Grids for `ldm.callbacks.ImageLogger`: inputs, reconstructions and prior samples."""
        x = batch["image"][:num_images]
        generator = torch.Generator(device=self.device).manual_seed(0)  # same z every epoch
        return {"inputs": x, "reconstructions": self(x), "prior_samples": self.sample(num_images, generator)}
