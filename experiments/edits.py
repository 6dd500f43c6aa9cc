"""Latent-space tools on a trained LDM and real test digits (issue 16, item 8): figures and numbers.

    python experiments/edits.py --ckpt RUN_OR_CKPT --out experiments/edits [--num 200] [--steps 10 20 50]

Writes into --out:
  roundtrip.json     DDIM inversion of --num test digits at each of --steps: the latents' relative L2
                     round-trip error ||z - z'|| / ||z|| (mean, median, 90th percentile), and the PSNR of
                     the decoded round trip against the decoded original latent and against the digit.
  inversion.png      rows: digits, their VAE reconstructions, their DDIM round trips (largest --steps).
  interpolation.png  slerp between the inversions of digit pairs, one strip per pair (ends = the digits).
  sdedit.png         each digit, then SDEdit at strengths 0.2 .. 0.8 (re-noised, then denoised).
  inpaint.png        each digit, its upper half shown (lower half grey), then three completions.
The checkpoint must be trained with objective=diffusion (DDIM inversion). MNIST's test split from
$LDM_DATA_DIR/MNIST/raw. Everything runs on the CPU in about a minute for the 1.0M-parameter UNet.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "experiments"))

from post_figures import test_digits  # noqa: E402

import ldm  # noqa: E402
from ldm import edits  # noqa: E402
from ldm.io import atomic_write_json  # noqa: E402


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR in dB over the whole set (images in [0, 1]) from its summed squared error."""
    return float(10 * torch.log10(1 / (a - b).pow(2).mean()))


def roundtrip(pipe, images: torch.Tensor, steps: list[int]) -> tuple[dict, torch.Tensor]:
    """The inversion numbers per step count, and the decoded round trips at the last one."""
    z = edits.encode(pipe, images)
    recon = pipe.decode(z)
    report, back = {}, recon
    for n in steps:
        noise, error = edits.invert(pipe, images, steps=n)
        back = edits.from_noise(pipe, noise, steps=n)
        report[str(n)] = {
            "latent_rel_error_mean": float(error.mean()),
            "latent_rel_error_median": float(error.median()),
            "latent_rel_error_p90": float(error.quantile(0.9)),
            "psnr_vs_reconstruction_db": psnr(back, recon),
            "psnr_vs_digit_db": psnr(back, images),
        }
    report["vae_reconstruction_psnr_db"] = psnr(recon, images)
    return report, torch.cat([images[:8], recon[:8], back[:8]])


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", required=True, help="an LDM checkpoint, its run folder or a registry folder")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--data-dir", type=Path, default=None, help="default: $LDM_DATA_DIR or ./data")
    parser.add_argument("--num", type=int, default=200, help="test digits inverted for the numbers")
    parser.add_argument("--steps", type=int, nargs="+", default=[10, 20, 50], help="DDIM steps of the inversion")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    data_dir = args.data_dir or Path(os.environ.get("LDM_DATA_DIR", ROOT / "data"))
    pipe = ldm.load(args.ckpt, device="cpu")
    images, labels = test_digits(data_dir, max(args.num, 8))
    args.out.mkdir(parents=True, exist_ok=True)

    report, strip = roundtrip(pipe, images[: args.num], args.steps)
    report.update(ckpt=str(args.ckpt), num=args.num, steps=args.steps)
    atomic_write_json(args.out / "roundtrip.json", report)
    ldm.save_grid(strip, args.out / "inversion.png", nrow=8)

    pairs = [(0, 1), (2, 3), (4, 5), (6, 7)]  # test digits 7-2, 1-0, 4-1, 4-9
    strips = [
        edits.interpolate(pipe, images[a : a + 1], images[b : b + 1], num=10, steps=max(args.steps)) for a, b in pairs
    ]
    ldm.save_grid(torch.cat(strips), args.out / "interpolation.png", nrow=10)

    shown = images[:8]
    strengths = [0.2, 0.4, 0.6, 0.8]
    columns = [shown] + [edits.sdedit(pipe, shown, strength=s, seed=args.seed) for s in strengths]
    ldm.save_grid(torch.stack(columns, 1).flatten(0, 1), args.out / "sdedit.png", nrow=len(columns))

    known = torch.zeros(28, 28)
    known[:14] = 1  # keep the upper half
    masked = shown * known + 0.5 * (1 - known)
    fills = [edits.inpaint(pipe, shown, known, seed=args.seed + k) for k in range(3)]
    ldm.save_grid(torch.stack([shown, masked, *fills], 1).flatten(0, 1), args.out / "inpaint.png", nrow=5)
    print(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
