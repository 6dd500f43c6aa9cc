"""The installed package, not the checkout: the wheel holds every module and config, and its
commands train, sample and explain themselves from a folder that has no conf/ of its own."""

from __future__ import annotations

import os
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

from conftest import ROOT


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(out), str(ROOT)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (path,) = out.glob("ldm_lab-*.whl")
    return path


def test_the_wheel_holds_every_module_and_config(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    modules = {str(p.relative_to(ROOT)) for p in (ROOT / "ldm").rglob("*.py")}
    configs = {"ldm/conf/" + str(p.relative_to(ROOT / "conf")) for p in (ROOT / "conf").rglob("*.yaml")}
    assert modules and configs and not (modules | configs) - names, sorted((modules | configs) - names)
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    for command in (
        "ldm-train = ldm.cli.train:main",
        "ldm-sample = ldm.cli.sample:main",
        "ldm-evaluate = ldm.cli.evaluate:main",
        "ldm-edit = ldm.cli.edit:main",
    ):
        assert command in text
    assert any(n.endswith("licenses/LICENSE") for n in names)


def test_installed_commands_work_from_any_folder(wheel: Path, tmp_path: Path, mnist_dir: Path) -> None:
    """pip install the wheel into a fresh environment (its dependencies borrowed from this one), then
    from an empty folder: --help, a debug VAE run, and sampling its prior."""
    env_dir = tmp_path / "env"
    venv.create(env_dir, system_site_packages=True, with_pip=False)
    python = env_dir / "bin" / "python"
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps", str(wheel)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    work = tmp_path / "work"
    work.mkdir()
    env = {**os.environ, "LDM_DATA_DIR": str(mnist_dir), "PYTHONPATH": ""}

    def run(*args: str) -> str:
        result = subprocess.run(
            [str(env_dir / "bin" / args[0]), *args[1:]], cwd=work, env=env, capture_output=True, text=True, timeout=600
        )
        assert result.returncode == 0, (args, result.stdout[-2000:], result.stderr[-3000:])
        return result.stdout + result.stderr

    where = subprocess.run(
        [str(python), "-c", "import ldm.cli; print(ldm.cli.CONF_DIR)"],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert where.startswith(str(env_dir)), where  # the installed copy, not this checkout
    assert "model=ldm" in run("ldm-train", "--help")
    run(
        "ldm-train",
        "model=vae",
        "debug=fast",
        "trainer=cpu",
        "data.val_size=64",
        "model.vae.hidden_channels=[8,16,16]",
        "callbacks.progress_bar=null",
        "test=false",
    )
    ckpt = next((work / "logs" / "debug" / "vae" / "runs").glob("*/checkpoints/last.ckpt"))
    run("ldm-sample", f"ckpt={ckpt}", "num_samples=8", "out=prior", "device=cpu")
    assert (work / "prior" / "samples.npz").is_file()
