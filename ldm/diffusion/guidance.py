"""Class conditioning with classifier-free guidance (Ho & Salimans 2022, arXiv 2207.12598).

Training replaces each label by a learned null class with probability `p_uncond`, so one network
learns both the conditional and the unconditional prediction. Sampling mixes the two (eq. 6):

    out_w = out_uncond + w * (out_cond - out_uncond)

w = 0 is the unconditional model, w = 1 the conditional one, w > 1 trades diversity for
fidelity to the class. The mix is applied to the network output; every parameterization is
affine in that output at fixed x_t, so mixing outputs equals mixing the x0 / eps estimates.
"""

from __future__ import annotations

import torch
from torch import Tensor


class ClassConditioning:
    """Labels 0..num_classes-1 plus a null label `num_classes` (the UNet's extra embedding row).

    Args:
        num_classes: number of real classes.
        p_uncond: probability of replacing a training label by the null label.
        guidance: default guidance scale w used when sampling.
    """

    def __init__(self, num_classes: int = 10, p_uncond: float = 0.1, guidance: float = 1.25) -> None:
        if num_classes < 1:
            raise ValueError(f"conditioning.num_classes={num_classes} must be >= 1")
        if not 0.0 <= p_uncond <= 1.0:
            raise ValueError(f"conditioning.p_uncond={p_uncond} must be in [0, 1]")
        check_guidance(guidance)
        self.num_classes, self.p_uncond, self.guidance = num_classes, p_uncond, float(guidance)

    @property
    def null_label(self) -> int:
        return self.num_classes

    def drop_labels(self, labels: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Labels with each replaced by the null label with probability p_uncond. (B,)"""
        drop = torch.rand(labels.shape, generator=generator, device=labels.device) < self.p_uncond
        return torch.where(drop, torch.full_like(labels, self.null_label), labels)

    @property
    def config(self) -> dict:
        return {"num_classes": self.num_classes, "p_uncond": self.p_uncond, "guidance": self.guidance}

    def __repr__(self) -> str:
        return f"ClassConditioning(num_classes={self.num_classes}, p_uncond={self.p_uncond}, guidance={self.guidance})"


def check_guidance(guidance: float) -> None:
    if not 0.0 <= guidance < float("inf"):
        raise ValueError(
            f"guidance={guidance} must be a finite number >= 0 (0: unconditional, 1: conditional, > 1: guided)"
        )


def guide(cond: Tensor, uncond: Tensor, guidance: float) -> Tensor:
    """Classifier-free guidance, Ho & Salimans eq. 6: uncond + w * (cond - uncond)."""
    return uncond + guidance * (cond - uncond)
