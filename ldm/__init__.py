"""ldm: latent diffusion on MNIST with PyTorch Lightning and Hydra.

Stages: a VAE (`ldm.systems.vae`) -> latents cached from its frozen encoder (`ldm.data.latents`)
-> a latent DDPM (`ldm.systems.latent_diffusion`). The math lives in `ldm.diffusion`, plain
networks in `ldm.models`, data in `ldm.data`. Only `ldm.cli` (the commands) imports Hydra.

From Python (each imported on first use, so `import ldm` stays light):

    ldm.compose(overrides) -> cfg; ldm.train(cfg) -> metrics     (ldm.cli.api)
    ldm.load(run_or_ckpt) -> pipeline; pipeline.sample(n, ...)    (ldm.api, ldm.pipeline)
    ldm.save_grid(images, path)
"""

__version__ = "0.1.0"

_API = {
    "compose": "ldm.cli.api",
    "train": "ldm.cli.api",
    "load": "ldm.api",
    "checkpoint_of": "ldm.api",
    "save_grid": "ldm.api",
}
__all__ = sorted(_API)


def __getattr__(name: str):
    if name in _API:
        import importlib

        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'ldm' has no attribute {name!r}")
