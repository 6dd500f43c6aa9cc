"""The Python API as the README shows it: its code block runs as written, on small data."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from conftest import ROOT


def readme_block(title: str) -> str:
    text = (ROOT / "README.md").read_text()
    section = text[text.index(title) :]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_readme_python_example_runs(tmp_path: Path, mnist_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    code = readme_block("### From Python")
    # The one change: small data (320 fake training digits, fewer than the default validation split)
    # and small networks, so that CI's 2 cores run it in seconds.
    small = {
        '"model=vae", "debug=fast"': '"model=vae", "debug=fast", "data.val_size=64", "trainer=cpu", '
        '"model.vae.hidden_channels=[8,16,16]"',
        '"model=ldm", "debug=fast"': '"model=ldm", "debug=fast", "data.images.val_size=64", "trainer=cpu", '
        '"model.unet.base_channels=16", "model.unet.num_res_blocks=1", '
        '"sampler.num_steps=5", "callbacks.images.num_images=4"',
    }
    for old, new in small.items():
        assert old in code
        code = code.replace(old, new)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LDM_DATA_DIR", str(mnist_dir))
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)
    images = scope["images"]
    assert images.shape == (16, 1, 28, 28) and 0 <= images.min() and images.max() <= 1
    assert (tmp_path / "grid.png").is_file() and list((tmp_path / "logs" / "debug" / "ldm" / "runs").glob("*"))
    assert "val/loss" in scope["metrics"]
    again_metrics = scope["ldm"].train(scope["cfg"])  # the same config trains again, into a new folder
    assert "val/loss" in again_metrics
    assert len(list((tmp_path / "logs" / "debug" / "ldm" / "runs").glob("*"))) == 2
    calls = []
    again = scope["pipe"].sample(16, sampler="ddim", steps=20, seed=0, on_step=lambda i, n: calls.append((i, n)))
    assert torch.equal(images, again)  # seed= is the whole randomness
    assert calls == [(i, 20) for i in range(20)]
    with pytest.raises(ValueError, match="guidance was given but this model is unconditional"):
        scope["pipe"].sample(2, guidance=3.0)
    with pytest.raises(ValueError, match="num_samples must be a positive int"):
        scope["pipe"].sample(-1)


def test_load_names_what_it_takes(tmp_path: Path) -> None:
    import ldm
    from ldm.checkpoints import CheckpointError

    with pytest.raises(CheckpointError, match="No LDM run recorded"):
        ldm.load(registry=tmp_path)
    with pytest.raises(CheckpointError, match="neither a checkpoint, a run folder"):
        ldm.load(tmp_path)
    with pytest.raises(TypeError, match="list of strings"):
        ldm.compose("model=vae")
    with pytest.raises(TypeError, match="list of strings"):
        ldm.train({"model": "vae"})


def test_samplers_by_name_steps_and_eta() -> None:
    from ldm.diffusion import DDIMSampler
    from ldm.pipeline import SAMPLERS, make_sampler

    assert repr(make_sampler("ddim", steps=20, eta=0.0)) == repr(DDIMSampler(num_steps=20, eta=0.0))
    original = DDIMSampler(num_steps=50)
    assert make_sampler(original, steps=10).num_steps == 10 and original.num_steps == 50  # not changed in place
    with pytest.raises(ValueError, match="is not one of"):
        make_sampler("ddmi")
    with pytest.raises(ValueError, match="eta= does not apply to"):
        make_sampler("heun", eta=1.0)
    assert set(SAMPLERS) == {p.stem for p in (ROOT / "conf" / "sampler").glob("*.yaml")}
