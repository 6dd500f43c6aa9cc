"""Tests for ldm.diffusion.flow: the straight path, its velocity target and the three samplers,
against oracle velocity fields that are exact for known data distributions."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from ldm.diffusion.flow import (
    EulerSampler,
    FlowAncestralSampler,
    FlowMatching,
    HeunSampler,
    estimates,
)
from ldm.diffusion.samplers import DDIMSampler

STD = 0.5  # data ~ N(0, STD^2 I)


def gaussian_velocity(objective: FlowMatching, std: float = STD):
    """E[eps - x0 | x_t] for x0 ~ N(0, std^2 I): (t - (1 - t) std^2) / ((1 - t)^2 std^2 + t^2) x_t."""

    def network(x_t: Tensor, time: Tensor) -> Tensor:
        t = (time / objective.time_scale).double().reshape(-1, *(1,) * (x_t.ndim - 1))
        return ((t - (1 - t) * std**2) / ((1 - t) ** 2 * std**2 + t**2) * x_t.double()).float()

    return network


def point_velocity(objective: FlowMatching, point: Tensor):
    """E[eps - x0 | x_t] when all data is `point`: (x_t - point) / t."""

    def network(x_t: Tensor, time: Tensor) -> Tensor:
        t = (time / objective.time_scale).reshape(-1, *(1,) * (x_t.ndim - 1))
        return (x_t - point) / t

    return network


SAMPLERS = [
    EulerSampler(8),
    HeunSampler(8),
    FlowAncestralSampler(8),
    FlowAncestralSampler(8, eta=0.3),
    EulerSampler(8, shift=3.0),
]


def test_path_target_and_estimates_invert_each_other() -> None:
    objective = FlowMatching()
    x0, eps = torch.randn(6, 2, 3, 3), torch.randn(6, 2, 3, 3)
    t = torch.rand(6)
    x_t = objective.noisy(x0, t, eps)
    expected = (1 - t.view(-1, 1, 1, 1)) * x0 + t.view(-1, 1, 1, 1) * eps
    assert torch.allclose(x_t, expected)
    target, weight = objective.target_and_weight(x0, eps, t)
    assert torch.allclose(target, eps - x0) and torch.equal(weight, torch.ones(6))
    x0_hat, eps_hat = estimates(target, x_t, t.view(-1, 1, 1, 1))
    assert torch.allclose(x0_hat, x0, atol=1e-5) and torch.allclose(eps_hat, eps, atol=1e-5)


def test_oracle_has_zero_loss_and_network_sees_scaled_time() -> None:
    objective = FlowMatching(time_distribution="uniform")
    point = torch.randn(1, 2, 4, 4)
    seen = []

    def network(x_t: Tensor, time: Tensor) -> Tensor:
        seen.append(time)
        return point_velocity(objective, point)(x_t, time)

    t = objective.draw_times(32, torch.device("cpu")).clamp(min=1e-3)
    loss = objective.loss(network, point.expand(32, -1, -1, -1), t, torch.randn(32, 2, 4, 4))
    assert loss.shape == (32,) and loss.max() < 1e-8
    assert torch.allclose(seen[0], t * 1000)


@pytest.mark.parametrize("distribution", ["uniform", "logit_normal"])
def test_time_distributions(distribution: str) -> None:
    t = FlowMatching(time_distribution=distribution).draw_times(
        200_000, torch.device("cpu"), torch.Generator().manual_seed(0)
    )
    assert 0 < t.min() and t.max() < 1 and abs(t.median() - 0.5) < 0.01
    if distribution == "uniform":
        assert abs(t.std() - (1 / 12) ** 0.5) < 0.002
    else:  # logit-normal(0, 1): more mass in the middle than uniform
        assert t.std() < 0.23 and abs(torch.logit(t).std() - 1.0) < 0.01


def test_eval_and_figure_times_are_fixed_and_inside_the_path() -> None:
    objective = FlowMatching()
    t = objective.eval_times(25, torch.device("cpu"))
    assert torch.equal(t, objective.eval_times(25, torch.device("cpu"))) and 0 < t.min() and t.max() < 1
    figure = objective.figure_times(8, torch.device("cpu"))
    assert len(figure) == 8 and figure[-1] == 1 and (figure.diff() > 0).all()


def test_shifted_times() -> None:
    plain, shifted = EulerSampler(10).times(), EulerSampler(10, shift=3.0).times()
    assert plain[0] == shifted[0] == 1.0 and plain[-1] == shifted[-1] == 0.0 and len(plain) == 11
    assert all(a > b for a, b in zip(shifted, shifted[1:]))
    assert all(s >= p for s, p in zip(shifted, plain))  # more of the grid at the noisy end


def test_euler_step_is_deterministic_ddim_on_the_path() -> None:
    """DDIM eq. 12 with eta = 0, x_s = alpha_s x0_hat + sigma_s eps_hat, with alpha = 1 - t, sigma = t."""
    x, v = torch.randn(4, 3), torch.randn(4, 3)
    t, s = 0.7, 0.45
    x0_hat, eps_hat = estimates(v, x, torch.tensor(t))
    ddim = (1 - s) * x0_hat + s * eps_hat
    assert torch.allclose(EulerSampler(1).step(lambda *_: v, x, t, s, None), ddim, atol=1e-6)
    ancestral = FlowAncestralSampler(1, eta=0.0).step(lambda *_: v, x, t, s, None)
    assert torch.allclose(ancestral, ddim, atol=1e-6)


@pytest.mark.parametrize("sampler", SAMPLERS, ids=repr)
def test_point_oracle_recovers_the_point(sampler) -> None:
    objective = FlowMatching()
    point = torch.randn(1, 2, 3, 3)
    out = objective.sample(
        point_velocity(objective, point), sampler, (5, 2, 3, 3), generator=torch.Generator().manual_seed(0)
    )
    assert torch.allclose(out, point.expand(5, -1, -1, -1), atol=1e-4)


def _gain_error(sampler) -> float:
    """The exact flow for N(0, STD^2) data is x0 = STD * x_1 (linear): the sampler's gain error."""
    objective = FlowMatching()
    out, states = objective.sample(
        gaussian_velocity(objective),
        sampler,
        (4, 1),
        generator=torch.Generator().manual_seed(0),
        return_trajectory=True,
    )
    return abs((out / states[0]).mean().item() - STD)


def test_euler_is_first_order_and_heun_second_order() -> None:
    euler = [_gain_error(EulerSampler(n)) for n in (20, 40)]
    heun = [_gain_error(HeunSampler(n)) for n in (10, 20)]
    assert 1.7 < euler[0] / euler[1] < 2.3  # error ~ 1/N
    assert 3.3 < heun[0] / heun[1] < 4.7  # error ~ 1/N^2
    assert HeunSampler(10).num_evaluations == 19 == EulerSampler(19).num_evaluations
    assert heun[0] < _gain_error(EulerSampler(19)) / 3  # better at equal network evaluations


def test_ancestral_sampling_converges_to_the_data_distribution() -> None:
    objective = FlowMatching()
    out = objective.sample(
        gaussian_velocity(objective), FlowAncestralSampler(200), (20_000, 1), generator=torch.Generator().manual_seed(0)
    )
    assert abs(out.mean().item()) < 0.02 and out.std().item() == pytest.approx(STD, rel=0.03)


@pytest.mark.parametrize("sampler", SAMPLERS, ids=repr)
def test_trajectory_and_seeded_reproducibility(sampler) -> None:
    objective = FlowMatching()
    network = gaussian_velocity(objective)
    a, states = objective.sample(
        network, sampler, (3, 2, 2), generator=torch.Generator().manual_seed(1), return_trajectory=True
    )
    b = objective.sample(network, sampler, (3, 2, 2), generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and len(states) == sampler.num_steps + 1 and torch.equal(states[-1], a)


def test_bad_values_and_wrong_sampler_family_are_refused() -> None:
    for bad in (
        lambda: FlowMatching(time_distribution="beta"),
        lambda: FlowMatching(scale=0),
        lambda: EulerSampler(0),
        lambda: HeunSampler(3, shift=0),
        lambda: FlowAncestralSampler(eta=2),
        lambda: EulerSampler(10**11),
        lambda: EulerSampler(3, shift=float("inf")),
    ):
        with pytest.raises(ValueError):
            bad()
    with pytest.raises(ValueError, match="cannot sample a FlowMatching model"):
        FlowMatching().sample(lambda x, t: x, DDIMSampler(5), (1, 2))
