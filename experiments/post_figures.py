"""The post's figures that need no trained diffusion model (issue 16, items 1-3).

    python experiments/post_figures.py schedules --out experiments/post/schedules.png
    python experiments/post_figures.py forward --schedule sigmoid --out experiments/post/forward_sigmoid.png
    python experiments/post_figures.py latents --vae PATH.ckpt --out experiments/post/latents.png

schedules: alpha_t, sigma_t and log-SNR against t/T for every schedule in conf/schedule/, one panel each.
forward:   the forward process on real test digits in pixel space (scaled to [-1, 1]): each row a
           digit, then x_t = alpha_t x0 + sigma_t eps at evenly spaced t (the post's
           x_t = (1 - phi_t) x0 + phi_t eps is schedule=interpolation); any conf/schedule/ name.
latents:   a VAE's four latent channels for a few test digits, and the test set's posterior means
           in 2-D (PCA) coloured by digit.
MNIST is read from $LDM_DATA_DIR/MNIST/raw (test split). Needs matplotlib: pip install -e ".[plot]".
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

from ldm.data.idx import find_idx_file, read_idx  # noqa: E402
from ldm.diffusion.schedules import NoiseSchedule  # noqa: E402
from ldm.io import atomic_write  # noqa: E402


def schedules() -> dict[str, NoiseSchedule]:
    """Every schedule of conf/schedule/, built from its config."""
    return {p.stem: instantiate(OmegaConf.load(p)) for p in sorted((ROOT / "conf" / "schedule").glob("*.yaml"))}


def test_digits(data_dir: Path, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first n test digits (n, 1, 28, 28) in [0, 1] and their labels."""
    raw = data_dir / "MNIST" / "raw"
    images, labels = (find_idx_file(raw, f"t10k-{kind}-idx{d}-ubyte") for kind, d in (("images", 3), ("labels", 1)))
    if images is None or labels is None:
        raise SystemExit(f"post_figures.py: no MNIST test files in {raw}: set LDM_DATA_DIR (see the README)")
    return read_idx(images)[:n, None].float() / 255, read_idx(labels)[:n].long()


def forward_grid(x0: torch.Tensor, schedule: NoiseSchedule, columns: int, seed: int = 0) -> torch.Tensor:
    """(rows * (columns + 1), 1, H, W) in [0, 1]: each digit, then x_t at `columns` evenly spaced t."""
    t = torch.linspace(0, schedule.num_timesteps - 1, columns).round().long()
    eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed))
    x = x0 * 2 - 1  # pixel space, as first_stage=pixel trains on it
    rows = [
        schedule.q_sample(xi.expand(columns, *xi.shape), t, ei.expand(columns, *ei.shape)) for xi, ei in zip(x, eps)
    ]
    grid = torch.cat([x[:, None], torch.stack(rows)], 1).flatten(0, 1)
    return ((grid + 1) / 2).clamp(0, 1)


def plot_schedules(out: Path) -> Path:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for name, schedule in schedules().items():
        u = torch.arange(schedule.num_timesteps) / (schedule.num_timesteps - 1)
        log_snr = schedule.log_snr(torch.arange(schedule.num_timesteps))
        for ax, values in zip(axes, (schedule.alpha, schedule.sigma, log_snr)):
            ax.plot(u, values, label=name)
    for ax, title in zip(axes, ("alpha_t (signal)", "sigma_t (noise)", "log SNR_t = log(alpha_t^2 / sigma_t^2)")):
        ax.set(title=title, xlabel="t / T")
        ax.grid(alpha=0.3)
    axes[2].legend(fontsize=8)
    return _save(fig, out)


def plot_forward(out: Path, schedule_name: str, data_dir: Path, rows: int, columns: int) -> Path:
    from torchvision.utils import save_image

    table = schedules()
    if schedule_name not in table:
        raise SystemExit(f"post_figures.py: schedule {schedule_name!r} is not one of {sorted(table)} (conf/schedule/)")
    x0, _ = test_digits(data_dir, rows)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_image(forward_grid(x0, table[schedule_name], columns), out, nrow=columns + 1, padding=1)
    return out


@torch.no_grad()
def plot_latents(out: Path, vae_ckpt: Path, data_dir: Path, n: int = 10_000, shown: int = 6) -> Path:
    import matplotlib.pyplot as plt

    from ldm.checkpoints import load_vae

    vae = load_vae(vae_ckpt).eval()
    x, y = test_digits(data_dir, n)
    z = torch.cat([vae.encode(b).mode() for b in x.split(500)])  # posterior means (n, C, h, w)
    channels = z.shape[1]
    fig = plt.figure(figsize=(4 + 1.1 * (channels + 1), 1.2 * shown))
    grid = fig.add_gridspec(shown, channels + 2, width_ratios=[1] * (channels + 1) + [shown * 0.9])
    for row in range(shown):
        cells = [x[row, 0]] + [z[row, c] for c in range(channels)]
        for col, image in enumerate(cells):
            ax = fig.add_subplot(grid[row, col])
            limit = float(z[:shown].abs().max())  # one symmetric colour scale for every latent cell
            ax.imshow(image, cmap="gray") if col == 0 else ax.imshow(image, cmap="RdBu_r", vmin=-limit, vmax=limit)
            ax.set_xticks([]), ax.set_yticks([])
            if row == 0:
                ax.set_title("digit" if col == 0 else f"z[{col - 1}]", fontsize=8)
    flat = z.flatten(1) - z.flatten(1).mean(0)
    _, s, v = torch.linalg.svd(flat, full_matrices=False)
    xy = flat @ v[:2].T
    explained = (s[:2] ** 2 / (s**2).sum()).tolist()
    ax = fig.add_subplot(grid[:, -1])
    points = ax.scatter(xy[:, 0], xy[:, 1], c=y, cmap="tab10", s=1.5, alpha=0.6)
    ax.legend(*points.legend_elements(), fontsize=6, markerscale=0.8, loc="best", title="digit")
    title = f"PCA of {n} test latents\n(PC 1 {explained[0]:.0%}, PC 2 {explained[1]:.0%} of the variance)"
    ax.set(title=title, xlabel="PC 1", ylabel="PC 2")
    return _save(fig, out)


def _save(fig, out: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    atomic_write(out, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> Path:
    import os

    import matplotlib

    matplotlib.use("Agg")
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("figure", choices=["schedules", "forward", "latents"])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--schedule", default="interpolation", help="forward: a conf/schedule/ name")
    parser.add_argument("--rows", type=int, default=6)
    parser.add_argument("--columns", type=int, default=10)
    parser.add_argument("--vae", type=Path, help="latents: a VAE checkpoint")
    parser.add_argument("--num", type=int, default=10_000, help="latents: test digits in the PCA")
    args = parser.parse_args(argv)
    data_dir = Path(os.environ.get("LDM_DATA_DIR", ROOT / "data"))
    if args.figure == "schedules":
        out = plot_schedules(args.out)
    elif args.figure == "forward":
        out = plot_forward(args.out, args.schedule, data_dir, args.rows, args.columns)
    else:
        if args.vae is None:
            parser.error("latents needs --vae PATH (a checkpoint of python train.py model=vae)")
        out = plot_latents(args.out, args.vae, data_dir, args.num)
    print(out)
    return out


if __name__ == "__main__":
    main(sys.argv[1:])
