"""Issue 16 item 5's baselines: a plain autoencoder (model=ae) and a Gaussian fitted to first-stage
codes (`ldm.models.gaussian`, `sample.py prior=fitted`)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from ldm.errors import ConfigError
from ldm.models.gaussian import FittedGaussian

from conftest import ROOT, compose_cfg, save_vae_checkpoint


def test_the_fit_recovers_a_known_gaussian_and_samples_from_it() -> None:
    g = torch.Generator().manual_seed(0)
    mean = torch.randn(12, generator=g)
    mixing = torch.randn(12, 12, generator=g) / 3
    codes = (mean + torch.randn(40_000, 12, generator=g) @ mixing.T).reshape(-1, 3, 2, 2)
    fitted = FittedGaussian.fit(codes.split(1000))  # in batches, as the encoder hands them over
    cov = mixing @ mixing.T
    assert torch.allclose(fitted.mean, mean, atol=0.02)
    assert torch.allclose(fitted.scale_tril @ fitted.scale_tril.T, cov, atol=0.03)
    drawn = fitted.sample(40_000, torch.Generator().manual_seed(1))
    assert drawn.shape == (40_000, 3, 2, 2)
    flat = drawn.reshape(len(drawn), -1)
    fitted_cov = fitted.scale_tril @ fitted.scale_tril.T  # the draws follow the fit (not the truth it estimated)
    assert torch.allclose(flat.mean(0), fitted.mean, atol=0.02) and torch.allclose(flat.T.cov(), fitted_cov, atol=0.03)
    # Codes that live on a lower-dimensional subspace (a collapsed latent) still factorise (the jitter).
    flat_codes = torch.randn(500, 6, generator=g) @ torch.randn(6, 12, generator=g)
    assert torch.isfinite(FittedGaussian.fit([flat_codes.reshape(-1, 3, 2, 2)]).scale_tril).all()


def test_the_fit_refuses_what_it_cannot_fit() -> None:
    with pytest.raises(ValueError, match="at least 2 codes, got 1"):
        FittedGaussian.fit([torch.zeros(1, 4)])
    with pytest.raises(ValueError, match="NaN/Inf"):
        FittedGaussian.fit([torch.full((4, 3), float("nan"))])
    with pytest.raises(ValueError, match=r"codes of shape \(5,\) after codes of shape \(4,\)"):
        FittedGaussian.fit([torch.zeros(3, 4), torch.zeros(3, 5)])


@pytest.mark.filterwarnings("ignore:You are trying to `self.log()`")
def test_the_plain_autoencoder_trains_on_the_mean_and_has_no_kl(tmp_path: Path, mnist_dir: Path) -> None:
    import hydra

    from ldm.systems.vae import VAEModule

    cfg = compose_cfg(tmp_path, mnist_dir, ["model=ae", "model.vae.hidden_channels=[8,16,16]"])
    assert cfg.task_name == "ae"  # its own registry entry: never the LDM's default first stage
    module = hydra.utils.instantiate(cfg.model)
    batch = {"image": torch.rand(8, 1, 28, 28)}
    module.train()
    losses = [module._shared_step(batch, "train") for _ in range(2)]  # no sampled latent: no noise
    assert torch.equal(losses[0], losses[1])
    posterior = module.vae.encode(batch["image"])  # as a first stage too: the code, not a draw around it
    assert float((posterior.sample() - posterior.mean).abs().max()) < 1e-5 and float(posterior.std.max()) < 1e-6
    from ldm.models.autoencoder import AutoencoderKL

    vae = VAEModule(AutoencoderKL(hidden_channels=(8, 16, 16)), beta=1e-3)  # a VAE samples z: another loss
    assert not torch.equal(vae._shared_step(batch, "train"), vae._shared_step(batch, "train"))
    with pytest.raises(ValueError, match="model.vae.deterministic=true is a plain autoencoder .* set model.beta=0"):
        VAEModule(module.vae, beta=1e-3)


def _sample_cfg(overrides: list[str], data_dir: Path, root: Path):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from ldm.cli.resolvers import register

    register()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        overrides = [
            f"paths.data_dir={data_dir}",
            f"paths.root_dir={root}",
            "data.val_size=64",
            "device=cpu",
            *overrides,
        ]
        return compose("sample", overrides=overrides)


def test_sample_py_decodes_a_gaussian_fitted_to_the_training_codes(tmp_path: Path, mnist_dir: Path, caplog) -> None:
    from ldm.cli.sample import run

    from conftest import make_ldm

    vae = save_vae_checkpoint(tmp_path / "vae.ckpt")
    out = tmp_path / "fitted"
    with caplog.at_level("INFO", logger="ldm.sampling"):
        path = run(_sample_cfg([f"ckpt={vae}", "prior=fitted", "num_samples=6", f"out={out}"], mnist_dir, tmp_path))
    assert "a Gaussian fitted to the codes of 256 training digits" in caplog.text  # 320 train - 64 held out
    images = np.load(path)["images"]
    assert images.shape == (6, 28, 28) and images.dtype == np.uint8
    assert json.loads((out / "sampling.json").read_text())["generator"] == "vae fitted gaussian"
    standard = np.load(
        run(_sample_cfg([f"ckpt={vae}", "num_samples=6", f"out={tmp_path / 'std'}"], mnist_dir, tmp_path))
    )
    assert not np.array_equal(standard["images"], images)  # another generator, not N(0, I) renamed
    with pytest.raises(ConfigError, match="prior='gaussian' must be standard .* or fitted"):
        run(_sample_cfg([f"ckpt={vae}", "prior=gaussian", f"out={tmp_path / 'x'}"], mnist_dir, tmp_path))
    import lightning as L

    ldm = tmp_path / "ldm.ckpt"
    trainer = L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False, max_steps=0)
    trainer.strategy.connect(make_ldm(vae))
    trainer.save_checkpoint(ldm)
    with pytest.raises(ConfigError, match="prior=fitted is for VAE checkpoints"):
        run(_sample_cfg([f"ckpt={ldm}", "prior=fitted", f"out={tmp_path / 'y'}"], mnist_dir, tmp_path))


def test_the_fit_is_kept_in_the_cache_and_a_damaged_entry_is_refitted(tmp_path: Path, mnist_dir: Path, caplog) -> None:
    """The second prior=fitted run reads the fit instead of encoding the training set again; an entry
    with garbage bytes or with edited tensors is refitted (a warning), and the samples never change."""
    from ldm.cli.sample import run

    vae = save_vae_checkpoint(tmp_path / "vae.ckpt")

    def draw(name: str) -> np.ndarray:
        caplog.clear()
        with caplog.at_level("INFO", logger="ldm.sampling"):
            out = tmp_path / name
            return np.load(
                run(_sample_cfg([f"ckpt={vae}", "prior=fitted", "num_samples=4", f"out={out}"], mnist_dir, tmp_path))
            )["images"]

    first = draw("a")
    assert "encoding the 256 training digits" in caplog.text
    (entry,) = (tmp_path / ".cache" / "ldm").glob("prior-*.pt")
    assert np.array_equal(draw("b"), first) and "encoding" not in caplog.text and str(entry) in caplog.text

    stored = torch.load(entry, weights_only=True)
    stored["mean"] += 1.0  # an edited entry that still loads: its checksum no longer matches
    torch.save(stored, entry)
    assert np.array_equal(draw("c"), first) and "do not match their checksum" in caplog.text
    assert "encoding the 256" in caplog.text
    from ldm.io import save_checked

    forged = {k: v for k, v in torch.load(entry, weights_only=True).items() if k not in ("key", "sha256")}
    save_checked(entry, stored["key"], {**forged, "shape": torch.tensor([2, 98])})  # a valid checksum, wrong shape
    assert np.array_equal(draw("forged"), first) and "not this VAE's" in caplog.text
    entry.write_bytes(np.random.default_rng(0).bytes(700))  # garbage bytes
    assert np.array_equal(draw("d"), first) and "Refitting the prior" in caplog.text and "unreadable" in caplog.text
    assert np.array_equal(draw("e"), first) and "encoding" not in caplog.text  # rewritten whole
    entry.unlink()
    with caplog.at_level("INFO", logger="ldm.sampling"):
        out = tmp_path / "nocache"
        run(
            _sample_cfg(
                [f"ckpt={vae}", "prior=fitted", "num_samples=4", f"out={out}", "cache_dir=null"], mnist_dir, tmp_path
            )
        )
    assert not entry.exists()  # cache_dir=null: no cache


@pytest.mark.slow
def test_the_baselines_report_runs_on_tiny_data(tmp_path: Path, mnist_dir: Path) -> None:
    """experiments/baselines.sh end to end: three first stages trained, six rows scored, one table."""
    import os
    import subprocess

    from test_classifier import save_classifier_checkpoint

    env = {
        **os.environ,
        "LDM_DATA_DIR": str(mnist_dir),
        "CLASSIFIER_CKPT": str(save_classifier_checkpoint(tmp_path / "classifier.ckpt")),
        "VAE_EXTRA": "+trainer.limit_train_batches=2 data.val_size=64 model.vae.hidden_channels=[8,16,16] "
        "callbacks.images=null test=false",
        "EVAL_EXTRA": "data.val_size=64 device=cpu",
    }
    done = subprocess.run(
        ["bash", str(ROOT / "experiments/baselines.sh"), str(tmp_path / "root"), "32"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    rows = ["vae_beta1e-3", "vae_beta1", "ae"]
    for row in rows:
        for prior in ("standard", "fitted"):
            folder = tmp_path / "root" / "baselines" / f"{row}.{prior}"
            assert json.loads((folder / "metrics.json").read_text())["num_samples"] == 32
            assert np.load(folder / "samples.npz")["images"].shape == (32, 28, 28)
            assert f"| {row}.{prior} | 32 |" in done.stdout  # the table
    beta1 = torch.load((tmp_path / "root" / "baselines" / "vae_beta1.ckpt").read_text().strip(), weights_only=True)[
        "hyper_parameters"
    ]
    assert beta1["beta"] == 1.0


def test_an_autoencoder_sampled_from_n01_warns_and_its_fit_is_its_codes(tmp_path: Path, mnist_dir: Path, caplog):
    import lightning as L

    from ldm.checkpoints import load_vae
    from ldm.cli.sample import run
    from ldm.models.autoencoder import AutoencoderKL
    from ldm.systems.vae import VAEModule

    ae = tmp_path / "ae.ckpt"
    trainer = L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False, max_steps=0)
    trainer.strategy.connect(VAEModule(AutoencoderKL(hidden_channels=(8, 16, 16), deterministic=True), beta=0.0))
    trainer.save_checkpoint(ae)
    assert load_vae(ae).deterministic  # the checkpoint rebuilds a plain autoencoder (and a first stage that is one)
    with caplog.at_level("WARNING", logger="ldm.sampling"):
        run(_sample_cfg([f"ckpt={ae}", "num_samples=2", f"out={tmp_path / 's'}"], mnist_dir, tmp_path))
    assert "is a plain autoencoder: N(0, I) is not its prior" in caplog.text


def test_parts_of_an_interrupted_run_are_reused_only_with_the_same_fit(tmp_path: Path, mnist_dir: Path) -> None:
    """Continuing with other fit data (data.subset) must start over, not mix two Gaussians in one file:
    the parts' manifest carries a digest of the fit (Parts starts over on any manifest change)."""
    from ldm.cli.sample import run
    from ldm.sample_request import Request
    from ldm.sampling import _manifest, load_source

    vae = save_vae_checkpoint(tmp_path / "vae.ckpt")
    run(_sample_cfg([f"ckpt={vae}", "prior=fitted", "num_samples=2", f"out={tmp_path / 'warm'}"], mnist_dir, tmp_path))
    import hydra

    manifests = []
    for subset in (100, 100, 50):
        cfg = _sample_cfg([f"data.subset={subset}", "data.val_size=10"], mnist_dir, tmp_path)
        request = Request(out=tmp_path / "o", prior="fitted", device="cpu")
        source = load_source(vae, None, request, torch.device("cpu"), hydra.utils.instantiate(cfg.data))
        manifests.append(_manifest(vae, source, request, torch.device("cpu"), 2, 2, None))
    assert manifests[0] == manifests[1] and manifests[0]["fitted"] != manifests[2]["fitted"]
