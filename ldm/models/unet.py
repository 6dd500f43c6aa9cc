"""Time-conditioned UNet that predicts noise for (latent) diffusion.

The architecture follows the DDPM UNet of Ho et al. 2020, "Denoising Diffusion
Probabilistic Models" (https://arxiv.org/abs/2006.11239): residual blocks with
GroupNorm, skip connections concatenated on the way up, self-attention at low
resolution and zero-initialised output layers. The conditioning follows the
"Latent Diffusion Series" blog post: a sinusoidal timestep embedding
(`SinusoidalPositionalEmbedding(dim, scale=1000)`) passed through an MLP, and
conv blocks that add a linear projection of SiLU(embedding) after their first
convolution (`TimeEmbeddingConvBlock`).

Spatial sizes need not be divisible by 2**depth: downsampling is a stride-2
conv with padding 1 (7 -> 4 -> 2) and upsampling interpolates to the exact size
of the skip connection it is concatenated with, so 4x7x7 latents and 1x28x28
pixels both work.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _group_norm(channels: int) -> nn.GroupNorm:
    # Largest power-of-two group count <= 32 that divides C and keeps >= 2 channels
    # per group (the usual 32 groups for multiples of 64). One channel per group
    # would be instance norm, which erases the per-channel time-embedding shift.
    return nn.GroupNorm(max(math.gcd(64, channels) // 2, 1), channels)


def _zero_init(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class SinusoidalTimeEmbedding(nn.Module):
    """Fixed sin/cos features of the timestep, as in the blog post.

    half = dim // 2, freqs = exp(-log(scale) / (half - 1) * arange(half)),
    emb = cat(sin(t * freqs), cos(t * freqs)).
    """

    def __init__(self, dim: int, scale: float = 1000.0) -> None:
        super().__init__()
        if dim < 4 or dim % 2:
            raise ValueError(f"time embedding dim must be even and >= 4, got {dim}")
        half = dim // 2
        freqs = torch.exp(-math.log(scale) / (half - 1) * torch.arange(half, dtype=torch.float32))
        self.register_buffer("freqs", freqs, persistent=False)  # recomputed, not saved

    def forward(self, t: Tensor) -> Tensor:
        # Always float32: t * freqs reaches ~1000 and would lose precision in bf16.
        args = t.float()[:, None] * self.freqs.float()[None, :]  # (B, half)
        return torch.cat([args.sin(), args.cos()], dim=-1)  # (B, dim)


class ResBlock(nn.Module):
    """GroupNorm-SiLU-Conv twice, with the conditioning embedding added in between."""

    def __init__(self, in_channels: int, out_channels: int, emb_dim: int, dropout: float) -> None:
        super().__init__()
        self.norm1 = _group_norm(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.emb_proj = nn.Sequential(nn.SiLU(), nn.Linear(emb_dim, out_channels))
        self.norm2 = _group_norm(out_channels)
        self.dropout = nn.Dropout(dropout)
        # Zero init: the residual branch starts at 0, so every block starts as
        # (a 1x1 projection of) the identity and the deep net is well conditioned
        # at initialisation; the branch is learned from there (as in DDPM).
        self.conv2 = _zero_init(nn.Conv2d(out_channels, out_channels, 3, padding=1))
        self.skip = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))  # (B, C_out, H, W)
        h = h + self.emb_proj(emb)[:, :, None, None]  # broadcast (B, C_out, 1, 1)
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))  # (B, C_out, H, W)
        return self.skip(x) + h


class SelfAttention(nn.Module):
    """Multi-head self-attention over all H*W positions, with a residual connection."""

    def __init__(self, channels: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.norm = _group_norm(channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = _zero_init(nn.Conv2d(channels, channels, 1))  # starts as the identity

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        qkv = self.qkv(self.norm(x)).reshape(b, 3, self.num_heads, c // self.num_heads, h * w)
        q, k, v = qkv.transpose(-1, -2).unbind(1)  # each (B, heads, H*W, C/heads)
        out = F.scaled_dot_product_attention(q, k, v)  # (B, heads, H*W, C/heads)
        out = out.transpose(-1, -2).reshape(b, c, h, w)  # (B, C, H, W)
        return x + self.proj(out)


class Downsample(nn.Module):
    """Stride-2 3x3 conv with padding 1: H -> ceil(H / 2), so odd sizes work (7 -> 4)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """Nearest-neighbour resize to an exact target size (the skip's), then a 3x3 conv."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor, size: Sequence[int]) -> Tensor:
        return self.conv(F.interpolate(x, size=tuple(size), mode="nearest"))


class UNet(nn.Module):
    """DDPM-style UNet predicting a tensor of the input's shape from (x_t, t[, y]).

    Args:
        in_channels: channels of x (e.g. 4 for latents, 1 for MNIST pixels).
        base_channels: width of the first level; even, >= 4. The time embedding
            is base_channels wide and the MLP maps it to 4 * base_channels.
        channel_mults: width multiplier per resolution level; one downsample
            between consecutive levels.
        num_res_blocks: ResBlocks per level on the way down (num_res_blocks + 1 up).
        attention: self-attention after each ResBlock of the lowest-resolution
            level (down and up) and in the middle block.
        num_heads: attention heads; must divide base_channels * channel_mults[-1].
        dropout: dropout probability inside the ResBlocks.
        num_classes: enables class conditioning; index num_classes is the learned
            null class (classifier-free guidance), used where y is None.
        out_channels: output channels; defaults to in_channels.
    """

    def __init__(
        self,
        in_channels: int = 4,
        base_channels: int = 64,
        channel_mults: Sequence[int] = (1, 2, 2),
        num_res_blocks: int = 2,
        attention: bool = True,
        num_heads: int = 4,
        dropout: float = 0.0,
        num_classes: int | None = None,
        out_channels: int | None = None,
    ) -> None:
        super().__init__()
        channel_mults = tuple(channel_mults)
        if in_channels < 1 or (out_channels is not None and out_channels < 1):
            raise ValueError(f"in/out_channels must be >= 1, got {in_channels}/{out_channels}")
        if base_channels < 4 or base_channels % 2:
            raise ValueError(f"base_channels must be even and >= 4, got {base_channels}")
        if not channel_mults or any(m < 1 for m in channel_mults):
            raise ValueError(f"channel_mults must be a non-empty list of ints >= 1, got {channel_mults}")
        if num_res_blocks < 1:
            raise ValueError(f"num_res_blocks must be >= 1, got {num_res_blocks}")
        if num_heads < 1 or (attention and (base_channels * channel_mults[-1]) % num_heads):
            raise ValueError(
                f"num_heads={num_heads} must be >= 1 and divide the attention width "
                f"base_channels * channel_mults[-1] = {base_channels * channel_mults[-1]}"
            )
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        if num_classes is not None and num_classes < 1:
            raise ValueError(f"num_classes must be None or >= 1, got {num_classes}")
        self.in_channels, self.num_classes = in_channels, num_classes
        # Plain values only: stored in checkpoints so the network can be rebuilt without Hydra.
        self.config = dict(
            in_channels=in_channels,
            base_channels=base_channels,
            channel_mults=list(channel_mults),
            num_res_blocks=num_res_blocks,
            attention=attention,
            num_heads=num_heads,
            dropout=dropout,
            num_classes=num_classes,
            out_channels=out_channels,
        )
        emb_dim = 4 * base_channels
        last = len(channel_mults) - 1

        def attn(level: int, ch: int) -> nn.Module:
            return SelfAttention(ch, num_heads) if attention and level == last else nn.Identity()

        self.time_features = SinusoidalTimeEmbedding(base_channels)
        self.time_mlp = nn.Sequential(nn.Linear(base_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.class_embed = nn.Embedding(num_classes + 1, emb_dim) if num_classes is not None else None

        ch = base_channels
        self.input_conv = nn.Conv2d(in_channels, ch, 3, padding=1)
        skip_channels = [ch]
        self.down_blocks, self.down_attns, self.downsamples = nn.ModuleList(), nn.ModuleList(), nn.ModuleList()
        for level, mult in enumerate(channel_mults):
            blocks, attns = nn.ModuleList(), nn.ModuleList()
            for _ in range(num_res_blocks):
                blocks.append(ResBlock(ch, base_channels * mult, emb_dim, dropout))
                ch = base_channels * mult
                attns.append(attn(level, ch))
                skip_channels.append(ch)
            self.down_blocks.append(blocks)
            self.down_attns.append(attns)
            if level != last:
                self.downsamples.append(Downsample(ch))
                skip_channels.append(ch)

        self.mid_block1 = ResBlock(ch, ch, emb_dim, dropout)
        self.mid_attn = attn(last, ch)
        self.mid_block2 = ResBlock(ch, ch, emb_dim, dropout)

        self.up_blocks, self.up_attns, self.upsamples = nn.ModuleList(), nn.ModuleList(), nn.ModuleList()
        for level in reversed(range(len(channel_mults))):
            blocks, attns = nn.ModuleList(), nn.ModuleList()
            for _ in range(num_res_blocks + 1):
                blocks.append(
                    ResBlock(ch + skip_channels.pop(), base_channels * channel_mults[level], emb_dim, dropout)
                )
                ch = base_channels * channel_mults[level]
                attns.append(attn(level, ch))
            self.up_blocks.append(blocks)
            self.up_attns.append(attns)
            if level != 0:
                self.upsamples.append(Upsample(ch))

        self.out_norm = _group_norm(ch)
        # Zero init: the untrained network predicts exactly 0 (the mean of the
        # noise target) instead of large random values, so training starts at
        # loss = E[eps^2] = 1 without an initial spike.
        self.out_conv = _zero_init(nn.Conv2d(ch, out_channels or in_channels, 3, padding=1))

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        """x: (B, C, H, W) noisy input, t: (B,) timesteps in [0, T), y: (B,) class ids or None."""
        emb = self.time_mlp(self.time_features(t).to(x.dtype))  # (B, E)
        if self.class_embed is not None:
            if y is None:  # all samples unconditional: the learned null class
                y = torch.full((x.shape[0],), self.num_classes, dtype=torch.long, device=x.device)
            emb = emb + self.class_embed(y)  # (B, E)
        elif y is not None:
            raise ValueError("y was given but the UNet was built with num_classes=None")

        h = self.input_conv(x)  # (B, C0, H, W)
        skips = [h]
        for level, (blocks, attns) in enumerate(zip(self.down_blocks, self.down_attns)):
            for block, attn in zip(blocks, attns):
                h = attn(block(h, emb))  # (B, C_level, H_level, W_level)
                skips.append(h)
            if level < len(self.downsamples):
                h = self.downsamples[level](h)  # (B, C_level, ceil(H_level/2), ceil(W_level/2))
                skips.append(h)

        h = self.mid_block2(self.mid_attn(self.mid_block1(h, emb)), emb)  # (B, C_last, H_min, W_min)

        for level, (blocks, attns) in enumerate(zip(self.up_blocks, self.up_attns)):
            for block, attn in zip(blocks, attns):
                h = attn(block(torch.cat([h, skips.pop()], dim=1), emb))  # (B, C_level, H_level, W_level)
            if level < len(self.upsamples):
                h = self.upsamples[level](h, skips[-1].shape[-2:])  # to the next skip's exact size

        return self.out_conv(F.silu(self.out_norm(h)))  # (B, C_out, H, W)
