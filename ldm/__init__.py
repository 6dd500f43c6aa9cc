"""ldm: latent diffusion on MNIST with PyTorch Lightning and Hydra.

Stages: a VAE (`ldm.systems.vae`) -> latents cached from its frozen encoder (`ldm.data.latents`)
-> a latent DDPM (`ldm.systems.latent_diffusion`). The math lives in `ldm.diffusion`, plain
networks in `ldm.models`, data in `ldm.data`. Nothing in this package imports Hydra.
"""

__version__ = "0.1.0"
