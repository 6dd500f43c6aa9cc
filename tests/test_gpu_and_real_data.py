"""Checks that need a GPU (`-m gpu`) or the real MNIST files (`-m slow`); skipped cleanly otherwise.

python -m pytest -m gpu      # bf16 VAE -> LDM end to end on CUDA
LDM_DATA_DIR=/path/with/MNIST python -m pytest -m slow
"""

from __future__ import annotations

import gzip
import hashlib
import os
from pathlib import Path

import pytest
import torch

from ldm.data.idx import find_idx_file

from conftest import compose_cfg

REAL_MD5 = {  # of the decompressed official files (gzip bytes differ between mirrors)
    "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
}


def _real_root() -> Path:
    root = Path(os.environ.get("LDM_DATA_DIR", "data"))
    if any(find_idx_file(root / "MNIST" / "raw", name) is None for name in REAL_MD5):
        pytest.skip(f"real MNIST files not found under {root}/MNIST/raw (set LDM_DATA_DIR)")
    return root


@pytest.mark.slow
def test_real_mnist_files_and_splits() -> None:
    from ldm.data.mnist import MNISTDataModule

    root = _real_root()
    for name, md5 in REAL_MD5.items():
        path = find_idx_file(root / "MNIST" / "raw", name)
        data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
        assert hashlib.md5(data).hexdigest() == md5, path
    dm = MNISTDataModule(data_dir=root)
    dm.setup()
    assert {k: len(v) for k, v in dm.splits.items()} == {"train": 55_000, "val": 5_000, "test": 10_000}
    labels = dm.splits["test"].tensors["label"]
    assert torch.bincount(labels).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_bf16_vae_then_ldm(tmp_path: Path, mnist_dir: Path) -> None:
    from ldm.cli.train import train

    from test_train import LDM_TINY, TINY

    gpu = ["trainer=gpu"]  # bf16-mixed
    vae = train(
        compose_cfg(tmp_path, mnist_dir, ["model=vae", *[o for o in TINY if o != "trainer=cpu"], *gpu], run="vae_run")
    )
    assert torch.isfinite(torch.tensor(vae["val/loss"]))
    ldm = train(compose_cfg(tmp_path, mnist_dir, ["model=ldm", *[o for o in LDM_TINY if o != "trainer=cpu"], *gpu]))
    assert torch.isfinite(torch.tensor(ldm["val/loss"]))
