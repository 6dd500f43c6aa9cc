"""Speed benchmark of issue 6: training and sampling throughput, and a diffusers reference loop.

    python experiments/bench.py --out experiments/bench/results_<device>.json   # CUDA if present
    python experiments/bench.py --quick                                          # CPU smoke test

One run prints one table. Rows:

* ``ldm_train``: our real LDM training path: `LatentDiffusionModule` built as conf/model/ldm.yaml
  builds it, trained by a `lightning.Trainer` (bf16-mixed on CUDA) on random latents served by
  `LatentDataModule`'s own loader from device memory. Latents/s and ms per optimizer step.
* ``vae_train``: the same for `VAEModule` on random 1x28x28 images (`MNISTDataModule`'s loader).
* ``sample_ddim50`` / ``sample_dpmpp20``: `LatentDiffusionModule.sample` (EMA UNet + VAE decode)
  under bf16 autocast on CUDA (as sample.py), all samples in one batch; images/s and seconds
  per 10k samples. ``--compile`` compiles the sampling network too.
* ``diffusers_train``: a plain eager loop over diffusers' `UNet2DModel` + `DDPMScheduler` at the
  same parameter count, batch, precision and latents (padded 7x7 -> 8x8: its up/down blocks need
  even sizes). The ratio ldm_train / diffusers_train is printed under the table.

Weights are random: speed does not depend on them. Timing starts after ``--warmup`` steps and
brackets the measured steps with CUDA synchronisations. Peak memory is per row, on CUDA only.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import logging
import math
import platform
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

# As a script, Python puts experiments/ first on sys.path; the repository root takes its place, so
# `ldm` imports without `pip install -e .` and no script here can shadow an installed package.
if Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import hydra  # noqa: E402
import lightning as L  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from ldm.data.latents import LatentDataModule, SampleLatent  # noqa: E402
from ldm.data.mnist import MNISTDataModule, ToFloat  # noqa: E402
from ldm.data.tensors import TensorBatchDataset  # noqa: E402
from ldm.diffusion.samplers import DDIMSampler, DPMSolverPP2M, Sampler  # noqa: E402
from ldm.guard import NonFiniteGuard  # noqa: E402
from ldm.models.autoencoder import AutoencoderKL  # noqa: E402
from ldm.models.first_stage import IdentityFirstStage  # noqa: E402
from ldm.seeding import StepSeed  # noqa: E402
from ldm.systems.latent_diffusion import LatentDiffusionModule  # noqa: E402
from ldm.systems.vae import VAEModule  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
LATENT_SHAPE = (4, 7, 7)  # AutoencoderKL(in_channels=1, image_size=28): 28 -> 14 -> 7
MNIST_TRAIN = 55_000  # the size of our MNIST train split: epochs (and their boundaries) as in a real run
DIFFUSERS_MISSING = "diffusers not installed: pip install -e .[bench]"
FULL = dict(batch_size=1024, steps=200, warmup=20, num_samples=10_000, num_train=MNIST_TRAIN)
QUICK = dict(batch_size=64, steps=3, warmup=1, num_samples=32, num_train=None)  # num_train: 8 batches


@dataclass
class Row:
    """One measurement; `throughput` is None when it could not run (see `note`)."""

    name: str
    unit: str
    throughput: float | None
    ms_per_step: float | None = None
    seconds_per_10k: float | None = None
    batch_size: int | None = None
    steps: int | None = None
    params: int | None = None
    peak_mem_mib: float | None = None
    note: str = ""


# --------------------------------------------------------------------------- timing helpers
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def _peak_mib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None


def _autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA (what bf16-mixed does); full precision on CPU."""
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()


class StepTimer(L.Callback):
    """Wall time and samples of the `steps` training batches after the first `warmup`."""

    def __init__(self, warmup: int, steps: int) -> None:
        self.warmup, self.steps = warmup, steps
        self.batches, self.samples, self.start, self.seconds = 0, 0, 0.0, float("nan")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.batches += 1
        if self.batches > self.warmup:
            self.samples += len(next(iter(batch.values())))
        if self.batches == self.warmup:
            _sync(pl_module.device)
            self.start = time.perf_counter()
        elif self.batches == self.warmup + self.steps:
            _sync(pl_module.device)
            self.seconds = time.perf_counter() - self.start


# --------------------------------------------------------------------------- data
class RandomLatents(LatentDataModule):
    """`LatentDataModule` over random posterior (mean, std) instead of the VAE cache.

    Only `setup` is replaced: batches come from the real datamodule's `train_dataloader`, with the
    same per-batch transform (z = mean + std * eps, normalised), so the loader is the one training
    uses, whatever it is.
    """

    def __init__(self, num_latents: int, batch_size: int) -> None:
        super().__init__(
            images=None, first_stage=IdentityFirstStage(), cache_dir="unused", batch_size=batch_size, mode="sample"
        )
        self.num_latents = num_latents

    def prepare_data(self) -> None:  # nothing to encode
        pass

    def setup(self, stage: str | None = None) -> None:
        latents = random_latents(self.num_latents, self._device())
        self.splits["train"] = TensorBatchDataset(latents, SampleLatent("sample"))


def random_latents(n: int, device: torch.device) -> dict[str, torch.Tensor]:
    """A latent cache's train split: posterior mean and std (N, 4, 7, 7), labels (N,)."""
    return {
        "mean": torch.randn(n, *LATENT_SHAPE, device=device),
        "std": torch.rand(n, *LATENT_SHAPE, device=device) * 0.1 + 0.05,
        "label": torch.randint(0, 10, (n,), device=device),
    }


class RandomImages(MNISTDataModule):
    """`MNISTDataModule` over random uint8 digits resident on the training device (its own loader)."""

    def __init__(self, num_images: int, batch_size: int) -> None:
        super().__init__(batch_size=batch_size)
        self.num_images = num_images

    def prepare_data(self) -> None:  # no files
        pass

    def setup(self, stage: str | None = None) -> None:
        device = self.trainer.strategy.root_device if self.trainer is not None else torch.device("cpu")
        images = torch.randint(0, 256, (self.num_images, 28, 28), dtype=torch.uint8, device=device)
        labels = torch.randint(0, 10, (self.num_images,), device=device)
        self.splits["train"] = TensorBatchDataset({"image": images, "label": labels}, ToFloat(1))


# --------------------------------------------------------------------------- our systems
def _compile_note(compile_mode: bool | str) -> str:
    return "" if compile_mode is False else f"torch.compile({'default' if compile_mode is True else compile_mode})"


def default_model(model: str, **built: object) -> object:
    """What `python train.py model=<model>` builds, from conf/ itself (the bench follows the defaults),
    with `built` objects in place of config nodes (e.g. a random VAE as the first stage)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from ldm.cli.resolvers import register

    register()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=[f"model={model}", *(["vae_ckpt=unused"] if model == "ldm" else [])])
    return hydra.utils.instantiate(cfg.model, **built)


def build_ldm(compile_mode: bool | str = False) -> tuple[LatentDiffusionModule, str]:
    """The module conf/model/ldm.yaml builds (today: sigmoid schedule, v-prediction, Min-SNR-5, DDIM 50
    with eta = 1, the 4.0M UNet), on a random VAE."""
    vae = AutoencoderKL(in_channels=1, image_size=28)
    module = default_model("ldm", first_stage=vae, compile=compile_mode)
    module.first_stage.normalizer.set(1.0)  # random latents of unit scale (the cache would fit it)
    return module, _compile_note(compile_mode)


def build_vae(compile_mode: bool | str = False) -> tuple[VAEModule, str]:
    """The module conf/model/vae.yaml builds."""
    return default_model("vae", compile=compile_mode), _compile_note(compile_mode)


def _optimizer_note(optimizer: torch.optim.Optimizer) -> str:
    kind = "fused" if optimizer.defaults.get("fused") else "foreach" if optimizer.defaults.get("foreach") else "default"
    return f"{type(optimizer).__name__} ({kind})"


def fit_row(
    name: str,
    unit: str,
    module: L.LightningModule,
    network: torch.nn.Module,
    datamodule: L.LightningDataModule,
    args: argparse.Namespace,
    device: torch.device,
    notes: list[str],
    gradient_clip_val: float | None = None,
) -> Row:
    """Train with a real Trainer and time the `args.steps` steps after `args.warmup`."""
    timer = StepTimer(args.warmup, args.steps)
    _reset_peak(device)
    with tempfile.TemporaryDirectory() as root:
        trainer = L.Trainer(
            accelerator="gpu" if device.type == "cuda" else "cpu",
            devices=1,
            precision="bf16-mixed" if device.type == "cuda" else "32-true",
            max_steps=args.warmup + args.steps,
            max_epochs=-1,
            limit_val_batches=0,
            num_sanity_val_steps=0,
            # train.py's always-on callbacks: per-step reseeding and the NaN guard cost what they cost
            gradient_clip_val=gradient_clip_val,
            callbacks=[timer, StepSeed(0), NonFiniteGuard()],
            default_root_dir=root,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
        )
        trainer.fit(module, datamodule=datamodule)
    note = "; ".join(filter(None, [*notes, _optimizer_note(trainer.optimizers[0])]))
    params = sum(p.numel() for p in network.parameters())
    return Row(
        name,
        unit,
        timer.samples / timer.seconds,
        1000 * timer.seconds / args.steps,
        None,
        args.batch_size,
        args.steps,
        params,
        _peak_mib(device),
        note,
    )


def ldm_train_row(args: argparse.Namespace, device: torch.device) -> Row:
    module, note = build_ldm(args.compile)
    data = RandomLatents(args.num_train, args.batch_size)
    notes = [note, "Lightning, EMA 0.999, grad clip 1.0, 7x7"]
    # gradient_clip_val as conf/model/ldm.yaml's trainer section sets it.
    return fit_row("ldm_train", "latents/s", module, module.unet, data, args, device, notes, gradient_clip_val=1.0)


def vae_train_row(args: argparse.Namespace, device: torch.device) -> Row:
    module, note = build_vae(args.compile)
    data = RandomImages(args.num_train, args.batch_size)
    return fit_row("vae_train", "images/s", module, module.vae, data, args, device, [note, "Lightning, 1x28x28"])


def _chunks(total: int, size: int) -> Iterator[int]:
    for start in range(0, total, size):
        yield min(size, total - start)


def sample_row(name: str, sampler: Sampler, args: argparse.Namespace, device: torch.device) -> Row:
    """Decoded samples of `LatentDiffusionModule.sample` (EMA UNet, then VAE decode), as sample.py
    draws them: bf16 autocast on CUDA, eager unless --compile."""
    module = build_ldm(args.compile)[0].to(device).eval()
    chunk = args.sample_batch_size or args.num_samples
    _reset_peak(device)
    with _autocast(device):
        module.sample(min(chunk, args.num_samples), sampler)  # warm-up: cuDNN/cuBLAS plans, allocator
        _sync(device)
        start = time.perf_counter()
        for n in _chunks(args.num_samples, chunk):
            module.sample(n, sampler)
        _sync(device)
    seconds = time.perf_counter() - start
    params = sum(p.numel() for p in module.unet.parameters())
    return Row(
        name,
        "images/s",
        args.num_samples / seconds,
        None,
        seconds * 10_000 / args.num_samples,
        chunk,
        sampler.num_steps,
        params,
        _peak_mib(device),
        f"{sampler!r} + decode, {args.num_samples} samples",
    )


# --------------------------------------------------------------------------- diffusers reference
def diffusers_unet() -> torch.nn.Module:
    """UNet2DModel with our UNet's layout (widths 64/128, 2 blocks, attention at 128 and mid, 4 heads)."""
    from diffusers import UNet2DModel

    return UNet2DModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(64, 128),
        layers_per_block=2,
        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=32,
        norm_num_groups=32,
    )


def reference_step(
    model: torch.nn.Module, scheduler: Any, optimizer: torch.optim.Optimizer, z0: torch.Tensor, device: torch.device
) -> None:
    """One step of diffusers' train_unconditional recipe: add_noise, predict eps, MSE, AdamW."""
    z0 = F.pad(z0, (0, 1, 0, 1))  # (B, 4, 8, 8): UNet2DModel's upsampling doubles sizes exactly
    noise = torch.randn_like(z0)
    t = torch.randint(0, scheduler.config.num_train_timesteps, (len(z0),), device=device)
    with _autocast(device):
        pred = model(scheduler.add_noise(z0, noise, t), t).sample
    loss = F.mse_loss(pred.float(), noise)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def diffusers_train_row(args: argparse.Namespace, device: torch.device) -> Row:
    """The reference loop on the same latents (same random posterior, same SampleLatent transform)."""
    if importlib.util.find_spec("diffusers") is None:
        print(DIFFUSERS_MISSING, file=sys.stderr)
        return Row("diffusers_train", "latents/s", None, note=DIFFUSERS_MISSING)
    from diffusers import DDPMScheduler

    model = diffusers_unet().to(device).train()
    scheduler = DDPMScheduler(
        num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear", prediction_type="epsilon"
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0)
    transform = SampleLatent("sample")
    data = TensorBatchDataset(random_latents(args.num_train, device), transform)
    _reset_peak(device)
    for i in range(args.warmup + args.steps):
        if i == args.warmup:
            _sync(device)
            start = time.perf_counter()
        idx = torch.randint(0, len(data), (args.batch_size,), device=device)
        reference_step(model, scheduler, optimizer, data.batch(idx)["latent"], device)
    _sync(device)
    seconds = time.perf_counter() - start
    params = sum(p.numel() for p in model.parameters())
    return Row(
        "diffusers_train",
        "latents/s",
        args.steps * args.batch_size / seconds,
        1000 * seconds / args.steps,
        None,
        args.batch_size,
        args.steps,
        params,
        _peak_mib(device),
        "eager loop, UNet2DModel+DDPMScheduler, padded to 8x8, no EMA/clip",
    )


# --------------------------------------------------------------------------- report
def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None or not math.isfinite(value) else format(value, spec)


def format_table(rows: list[Row]) -> str:
    header = (
        f"{'row':<16} {'throughput':>12} {'unit':<10} {'ms/step':>8} {'s/10k':>8} {'batch':>6} {'steps':>5} "
        f"{'params':>10} {'peak MiB':>9}  note"
    )
    lines = [header, "-" * len(header)]
    for r in rows:
        lines.append(
            f"{r.name:<16} {_fmt(r.throughput, ',.0f'):>12} {r.unit:<10} {_fmt(r.ms_per_step, '.2f'):>8} "
            f"{_fmt(r.seconds_per_10k, '.2f'):>8} {_fmt(r.batch_size, 'd'):>6} {_fmt(r.steps, 'd'):>5} "
            f"{_fmt(r.params, ',d'):>10} {_fmt(r.peak_mem_mib, ',.0f'):>9}  {r.note}"
        )
    return "\n".join(lines)


def speed_ratio(rows: list[Row]) -> float | None:
    """ldm_train / diffusers_train throughput, if both ran."""
    by_name = {r.name: r.throughput for r in rows}
    ours, theirs = by_name.get("ldm_train"), by_name.get("diffusers_train")
    return ours / theirs if ours and theirs else None


def _cpu_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def environment(device: torch.device) -> dict[str, Any]:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_name()
    diffusers = importlib.import_module("diffusers").__version__ if importlib.util.find_spec("diffusers") else None
    return {
        "device": device.type,
        "device_name": name,
        "cpu_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "lightning": L.__version__,
        "diffusers": diffusers,
    }


# --------------------------------------------------------------------------- CLI
def _compile_arg(value: str) -> bool | str:
    return True if value.lower() in ("true", "1", "default") else value


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch-size", type=int, help="training batch (default 1024; --quick 64)")
    p.add_argument("--steps", type=int, help="timed training steps (default 200; --quick 3)")
    p.add_argument("--warmup", type=int, help="untimed steps first (default 20; --quick 1)")
    p.add_argument("--num-samples", type=int, help="samples per sampler row (default 10000; --quick 32)")
    p.add_argument("--sample-batch-size", type=int, help="samples per sample() call (default: all at once)")
    p.add_argument("--num-train", type=int, help="training set size (default 55000, MNIST's; --quick 8 batches)")
    p.add_argument(
        "--compile",
        nargs="?",
        const=True,
        default=False,
        type=_compile_arg,
        metavar="MODE",
        help="train through torch.compile (optionally a mode, e.g. reduce-overhead)",
    )
    p.add_argument("--quick", action="store_true", help="tiny CPU smoke profile (well under a minute)")
    p.add_argument("--out", type=Path, help="also write the results as JSON here")
    args = p.parse_args(argv)
    for key, value in (QUICK if args.quick else FULL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.num_train = args.num_train or 8 * args.batch_size
    if min(args.batch_size, args.steps, args.warmup, args.num_samples, args.num_train) < 1:
        p.error("--batch-size, --steps, --warmup, --num-samples and --num-train must be >= 1")
    return args


def _quiet() -> None:
    """Lightning's info lines and the warnings a deliberately odd setup triggers add nothing here."""
    for name in ("lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode.*")
    warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=r".*smaller than the logging interval.*")
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")  # torch vs Lightning


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run every row, print the table, write JSON if asked; returns what the JSON holds."""
    args = parse_args(argv)
    _quiet()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    measurements: list[Callable[[], Row]] = [
        lambda: ldm_train_row(args, device),
        lambda: vae_train_row(args, device),
        lambda: sample_row("sample_ddim50", DDIMSampler(num_steps=50, eta=1.0), args, device),  # conf/sampler/ddim
        lambda: sample_row("sample_dpmpp20", DPMSolverPP2M(num_steps=20), args, device),
        lambda: diffusers_train_row(args, device),
    ]
    rows = [measure() for measure in measurements]
    ratio = speed_ratio(rows)
    env = environment(device)
    print(
        f"\n{env['device_name']} ({device.type}), torch {env['torch']}, lightning {env['lightning']}, "
        f"diffusers {env['diffusers']}, {env['cpu_threads']} CPU threads\n{format_table(rows)}"
    )
    print(f"ldm_train / diffusers_train = {_fmt(ratio, '.2f')}x" if ratio else "ldm_train / diffusers_train: -")
    config = {k: v for k, v in vars(args).items() if k != "out"}
    report = {**env, "config": config, "rows": [asdict(r) for r in rows], "ratio_vs_diffusers": ratio}
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    main()
