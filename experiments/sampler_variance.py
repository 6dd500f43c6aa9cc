"""How much of the data variance each sampler keeps, with the exact denoiser of Gaussian data
(issue 16, item 7, first part).

    python experiments/sampler_variance.py --out experiments/sampler_variance

For x0 ~ N(0, s^2 I) the posterior mean is known in closed form, so every sampler runs with a
perfect denoiser and any deviation of the output variance from s^2 is the sampler's own
discretisation error, not the network's:

    diffusion, x_t = alpha x0 + sigma eps:   E[x0 | x_t] = alpha s^2 / (alpha^2 s^2 + sigma^2) x_t
    flow,      x_t = (1 - t) x0 + t eps:     E[eps - x0 | x_t] = (t - (1 - t) s^2) / ((1 - t)^2 s^2 + t^2) x_t

s = 1 (the latent normaliser's target). Writes variance.json (ratio = sample variance / s^2 per
sampler, schedule and step count), variance.png and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ldm.diffusion.analytic import AnalyticDDIMSampler  # noqa: E402
from ldm.diffusion.flow import EulerSampler, FlowAncestralSampler, FlowMatching, HeunSampler  # noqa: E402
from ldm.diffusion.loop import sample  # noqa: E402
from ldm.diffusion.samplers import DDIMSampler, DDPMSampler, DPMSolverPP2M  # noqa: E402
from ldm.diffusion.schedules import NoiseSchedule  # noqa: E402
from ldm.io import atomic_write, atomic_write_json  # noqa: E402

STEPS = (5, 10, 20, 50, 100, 250)
DIFFUSION = {
    "DDIM eta=1 (default)": lambda n: DDIMSampler(n, eta=1.0),
    "DDIM eta=0": lambda n: DDIMSampler(n, eta=0.0),
    "DDIM eta=1 trailing": lambda n: DDIMSampler(n, eta=1.0, spacing="trailing"),
    "DPM-Solver++ 2M (trailing)": lambda n: DPMSolverPP2M(n),
    "DPM-Solver++ 2M leading": lambda n: DPMSolverPP2M(n, spacing="leading"),
}
# Calibrated on 2000 fresh draws of the data before sampling (ldm.diffusion.analytic).
CALIBRATED = {"DDIM eta=1 analytic variance": lambda n: AnalyticDDIMSampler(n, eta=1.0)}
FLOW = {
    "flow Euler": lambda n: EulerSampler(n),
    "flow Heun": lambda n: HeunSampler(n),
    "flow ancestral": lambda n: FlowAncestralSampler(n),
}


def gaussian_denoiser(schedule: NoiseSchedule, s2: float):
    def denoise(x_t: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        alpha, sigma = schedule.coefficients(t, x_t.ndim)
        x0 = alpha * s2 / (alpha**2 * s2 + sigma**2) * x_t
        return x0, (x_t - alpha * x0) / sigma

    return denoise


def gaussian_velocity(objective: FlowMatching, s2: float):
    def velocity(x_t: torch.Tensor, time: torch.Tensor) -> torch.Tensor:
        t = (time / objective.time_scale).reshape(-1, *([1] * (x_t.ndim - 1)))
        return (t - (1 - t) * s2) / ((1 - t) ** 2 * s2 + t**2) * x_t

    return velocity


def variance_ratios(num: int, dim: int, s2: float = 1.0, seed: int = 0) -> dict[str, dict[str, dict[int, float]]]:
    """{schedule: {sampler: {steps: output variance / s^2}}} (schedule "flow" for the flow samplers)."""
    shape = (num, dim)
    results: dict[str, dict[str, dict[int, float]]] = {}
    for path in sorted((ROOT / "conf" / "schedule").glob("*.yaml")):
        schedule = instantiate(OmegaConf.load(path))
        denoiser, table = gaussian_denoiser(schedule, s2), {}
        for name, make in DIFFUSION.items():
            table[name] = {n: _ratio(sample(denoiser, schedule, make(n), shape, generator=_g(seed)), s2) for n in STEPS}
        data = torch.randn((2000, dim), generator=_g(seed + 1)) * s2**0.5
        for name, make in CALIBRATED.items():
            table[name] = {
                n: _ratio(
                    sample(
                        denoiser,
                        schedule,
                        make(n).calibrated(denoiser, schedule, data, _g(seed + 2)),
                        shape,
                        generator=_g(seed),
                    ),
                    s2,
                )
                for n in STEPS
            }
        table["DDPM (all 1000 steps)"] = {
            1000: _ratio(sample(denoiser, schedule, DDPMSampler(), shape, generator=_g(seed)), s2)
        }
        results[path.stem] = table
    objective = FlowMatching()
    network = gaussian_velocity(objective, s2)
    results["flow"] = {
        name: {n: _ratio(objective.sample(network, make(n), shape, generator=_g(seed)), s2) for n in STEPS}
        for name, make in FLOW.items()
    }
    return results


def _g(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _ratio(x: torch.Tensor, s2: float) -> float:
    return float(x.double().var()) / s2


def plot(results: dict, out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results)
    cols = 3
    rows = -(-len(names) // cols)
    fig, grid = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.3 * rows), sharey=True, squeeze=False)
    axes = grid.flatten()
    for ax in axes[len(names) :]:
        ax.set_visible(False)
    for ax, schedule in zip(axes, names):
        for sampler, by_steps in results[schedule].items():
            steps = sorted(by_steps)
            ax.plot(steps, [by_steps[n] for n in steps], marker="o", ms=3, label=sampler)
        ax.axhline(1.0, color="black", lw=0.8)
        ax.set(title=schedule, xscale="log", xlabel="sampler steps")
        ax.grid(alpha=0.3)
    for ax in grid[:, 0]:
        ax.set_ylabel("output variance / data variance")
    for ax in axes[: len(names)]:
        ax.legend(fontsize=5)
    fig.tight_layout()
    atomic_write(out, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    plt.close(fig)
    return out


def table(results: dict) -> str:
    lines = [
        "| schedule | sampler | " + " | ".join(f"{n} steps" for n in STEPS) + " |",
        "|---" * (len(STEPS) + 2) + "|",
    ]
    for schedule, samplers in results.items():
        for sampler, by_steps in samplers.items():
            cells = [f"{by_steps[n]:.3f}" if n in by_steps else "" for n in STEPS]
            if 1000 in by_steps:
                cells = [f"1000 steps: {by_steps[1000]:.3f}"] + [""] * (len(STEPS) - 1)
            lines.append(f"| {schedule} | {sampler} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for variance.json and variance.png")
    parser.add_argument("--num", type=int, default=4000, help="samples per run")
    parser.add_argument("--dim", type=int, default=196, help="dimensions (4 x 7 x 7 latents: 196)")
    args = parser.parse_args(argv)
    results = variance_ratios(args.num, args.dim)
    atomic_write_json(args.out / "variance.json", results)
    plot(results, args.out / "variance.png")
    print(table(results))
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
