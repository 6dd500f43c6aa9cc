"""`torch.compile` for the training networks, kept out of the module tree.

`torch.compile(net)` returns a wrapper whose state-dict keys gain an `_orig_mod.` prefix. The
systems therefore register only the plain network and call the compiled wrapper, held in a
`Compiled` cache (not an `nn.Module`): in `training_step`, and for the LDM also when sampling
from the EMA network. Checkpoints from compiled and eager runs have identical keys and load
into either. Validation losses run eager.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
CUDA_GRAPH_MODES = ("reduce-overhead", "max-autotune")


def _cloning(fn: Callable) -> Callable:
    def call(*args: Any, **kwargs: Any) -> Any:
        out = fn(*args, **kwargs)
        return out.clone() if isinstance(out, torch.Tensor) else out

    return call


class Compiled:
    """`compiled(net)` is `net` itself when disabled, else a cached `torch.compile(net, mode=...)`.

    Args:
        mode: False (eager), True (torch.compile's default mode) or one of `MODES`;
            "reduce-overhead" also captures CUDA graphs, which pays off for small networks.
    """

    def __init__(self, mode: bool | str = False) -> None:
        if not (isinstance(mode, bool) or mode in MODES):
            raise ValueError(f"model.compile={mode!r} is not valid: use false, true or one of {list(MODES)}")
        self.mode = mode
        self._cache: dict[int, Callable] = {}

    def __call__(self, net: nn.Module) -> Callable:
        if self.mode is False:
            return net
        if id(net) not in self._cache:
            compiled = torch.compile(net, mode=None if self.mode is True else self.mode)
            # CUDA graphs reuse their output memory on the next call; samplers keep outputs across
            # steps (DPM-Solver++ keeps x0_hat), so these modes hand out copies.
            self._cache[id(net)] = _cloning(compiled) if self.mode in CUDA_GRAPH_MODES else compiled
        return self._cache[id(net)]

    def __getstate__(self) -> dict:  # pickled with the module (ddp_spawn): recompile in the child
        return {"mode": self.mode, "_cache": {}}
