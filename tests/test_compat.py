"""The private Lightning / torch APIs ldm relies on (ldm/compat.py) still exist and still do what
ldm needs: an upstream rename or change of behaviour fails here, not silently in a run."""

from __future__ import annotations

import pytest
import torch

from ldm.compat import missing_private_apis, require


def test_every_private_api_ldm_uses_is_still_there() -> None:
    assert missing_private_apis() == []


def test_a_missing_private_api_fails_loudly() -> None:
    class Upstream:
        def kept(self) -> None: ...

    require(Upstream, "kept")
    with pytest.raises(RuntimeError, match="_renamed is gone"):
        require(Upstream, "kept", "_renamed")


def test_fused_adam_still_skips_a_step_when_found_inf_is_set() -> None:
    """The NaN guard's device-side skip (ldm/guard.py) relies on fused Adam/AdamW honouring `found_inf`."""
    weight = torch.nn.Parameter(torch.ones(4))
    try:
        optimizer = torch.optim.AdamW([weight], lr=0.1, fused=True)
    except RuntimeError as e:  # no fused kernel for this device in this torch build
        pytest.skip(f"fused AdamW unavailable here: {e}")
    weight.grad = torch.ones(4)
    optimizer.found_inf = torch.tensor(1.0)
    optimizer.step()
    assert (
        torch.equal(weight.detach(), torch.ones(4)) and not optimizer.state[weight].get("exp_avg", torch.zeros(1)).any()
    )
    optimizer.found_inf = torch.tensor(0.0)
    optimizer.step()
    assert not torch.equal(weight.detach(), torch.ones(4))
