"""The autoencoder's ceiling: VAE reconstructions of real train digits, as a samples.npz.

An LDM can at best generate what its decoder can draw, so `evaluate.py` on these reconstructions
(the first N digits of our train split, encoded to the posterior mean and decoded) bounds the
LDM's FID from below, next to the real-digits floor:

    python experiments/reconstruct.py --vae-ckpt PATH --num 10000 --out OUT
    python evaluate.py samples=OUT/samples.npz out=OUT
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

if Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:  # run as a script: import ldm from the repo
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import numpy as np  # noqa: E402
import torch  # noqa: E402

from ldm.checkpoints import load_vae  # noqa: E402
from ldm.data.mnist import MNISTDataModule  # noqa: E402
from ldm.io import atomic_write  # noqa: E402
from ldm.samples import to_uint8  # noqa: E402


@torch.no_grad()
def reconstruct(vae_ckpt: Path, data_dir: Path, num: int, batch_size: int = 1000) -> np.ndarray:
    """uint8 reconstructions (decode(posterior mean)) of the first `num` train digits, as samples.npz holds them."""
    data = MNISTDataModule(data_dir=data_dir, download=False)
    data.setup()
    vae = load_vae(vae_ckpt)
    images = []
    for start in range(0, min(num, len(data.splits["train"])), batch_size):
        x = data.splits["train"].batch(torch.arange(start, min(start + batch_size, num)))["image"]
        images.append(vae.decode(vae.encode(x).mode()))
    return to_uint8(torch.cat(images))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--vae-ckpt", type=Path, required=True)
    p.add_argument("--num", type=int, default=10_000)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--data-dir", type=Path, default=Path(os.environ.get("LDM_DATA_DIR", "data")))
    args = p.parse_args()
    images = reconstruct(args.vae_ckpt, args.data_dir, args.num)
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write(args.out / "samples.npz", lambda tmp: np.savez_compressed(open(tmp, "wb"), images=images))
    print(f"{len(images)} reconstructions -> {args.out / 'samples.npz'}")


if __name__ == "__main__":
    main()
