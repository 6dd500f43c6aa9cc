"""Neural network architectures for the latent diffusion pipeline."""
