"""An exponential moving average (EMA) of a network's weights.

Diffusion models are evaluated and sampled with EMA weights (Ho et al. 2020, App. B: decay
0.9999; Song & Ermon 2020 explain why it stabilises samples). The average is a full copy of the
network, so it can be called directly, and it is a submodule: saved in checkpoints and restored
on resume like any weight.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from ldm.compat import require

require(torch, "_foreach_lerp_")  # private torch API (ldm/compat.py)


class EMA(nn.Module):
    """`model` = EMA of a source network: w <- d * w + (1 - d) * w_src after each optimizer step.

    With warm-up the decay is min(decay, (1 + n) / (10 + n)) at update n, so early averages do
    not drag in the random initialisation for thousands of steps.
    """

    def __init__(self, source: nn.Module, decay: float = 0.999, warmup: bool = True) -> None:
        super().__init__()
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"ema decay={decay} must be in [0, 1)")
        self.model = copy.deepcopy(source).eval().requires_grad_(False)
        self.decay, self.warmup = decay, warmup

    def current_decay(self, num_updates: int) -> float:
        return min(self.decay, (1 + num_updates) / (10 + num_updates)) if self.warmup else self.decay

    @torch.no_grad()
    def update(self, source: nn.Module, num_updates: int) -> None:
        """Blend `source`'s weights in; `num_updates` is the optimizer step count (no GPU sync)."""
        weight = 1.0 - self.current_decay(num_updates)
        ema_params = list(self.model.parameters())
        src_params = [p.detach() for p in source.parameters()]
        torch._foreach_lerp_(ema_params, src_params, weight)
        for ema_buf, src_buf in zip(self.model.buffers(), source.buffers()):
            ema_buf.copy_(src_buf)

    def train(self, mode: bool = True) -> EMA:
        return super().train(False)  # the average is only ever evaluated
