"""Faults in training (issues 7 and 13): NaNs, bad config values, bad resume targets, W&B
unreachable here; real kills and signals, a really full disk, racing processes and garbage files
in test_real_faults.py. Each fault must end in a clear message and lose nothing already written.
(Resume after kill -9 and SIGTERM is in test_resume.py; corrupt and foreign caches, concurrent
cache builds and missing data in the stage tests.)"""

from __future__ import annotations

import os
import pickle
import warnings
from pathlib import Path

import hydra
import pytest
import torch
from hydra.errors import InstantiationException

from ldm.checkpoints import CheckpointError
from ldm.cli.handler import user_error
from ldm.cli.train import train
from ldm.errors import ConfigError
from ldm.guard import NonFiniteError, NonFiniteGuard
from ldm.loggers import wandb_mode
from ldm.resume import resolve_resume

from conftest import compose_cfg, save_vae_checkpoint

VAE_TINY = [
    "model=vae",
    "trainer=cpu",
    "trainer.max_epochs=2",
    "data.val_size=64",
    "data.batch_size=32",
    "model.vae.hidden_channels=[8,8,8]",
    "callbacks.images=null",
    "callbacks.progress_bar=null",
    "test=false",
]


def _all_finite(path: Path) -> bool:
    state = torch.load(path, weights_only=True)["state_dict"]
    return all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


def test_nan_loss_stops_before_the_step_and_names_the_last_good_checkpoint(tmp_path: Path, mnist_dir: Path) -> None:
    cfg = compose_cfg(
        tmp_path,
        mnist_dir,
        [
            *VAE_TINY,
            "callbacks.step_checkpoint.every_n_train_steps=4",
            "+callbacks.nan._target_=faults.NaNBatchAt",
            "+callbacks.nan.steps=[10]",
            "+callbacks.nan.key=image",
        ],
    )
    with pytest.raises(NonFiniteError, match=r"at step 10 .*Last good checkpoint: .*last\.ckpt") as raised:
        train(cfg)
    assert user_error(raised.value) is raised.value  # train.py prints it as one line, exit code 1
    checkpoints = list((tmp_path / "run" / "checkpoints").glob("*.ckpt"))
    assert checkpoints and all(_all_finite(p) for p in checkpoints)
    assert torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 8


@pytest.mark.parametrize("fused", [False, True])
def test_nan_loss_with_skip_drops_those_steps_and_trains_on(fused: bool, tmp_path: Path, mnist_dir: Path) -> None:
    """Unfused: checked on the host each step. Fused (the CUDA default): skipped on the device,
    counted by the host at the epoch end."""
    cfg = compose_cfg(
        tmp_path,
        mnist_dir,
        [
            *VAE_TINY,
            "callbacks.nonfinite.action=skip",
            f"+model.optimizer.fused={fused}",
            "+callbacks.nan._target_=faults.NaNBatchAt",
            "+callbacks.nan.steps=[3,5]",
            "+callbacks.nan.key=image",
        ],
    )
    metrics = train(cfg)
    assert metrics["train/nonfinite_skips"] == 2.0
    assert _all_finite(tmp_path / "run" / "checkpoints" / "last.ckpt")


def test_fused_stop_is_caught_at_the_next_check_with_the_first_bad_step(tmp_path: Path, mnist_dir: Path) -> None:
    cfg = compose_cfg(
        tmp_path,
        mnist_dir,
        [
            *VAE_TINY,
            "+model.optimizer.fused=true",
            "+callbacks.nan._target_=faults.NaNBatchAt",
            "+callbacks.nan.steps=[10,11]",
            "+callbacks.nan.key=image",
        ],
    )
    with pytest.raises(NonFiniteError, match=r"at step 10 .*that step was skipped, so the weights are finite"):
        train(cfg)
    assert _all_finite(tmp_path / "run" / "checkpoints" / "last.ckpt")


class _Trainer:  # just what the guard reads
    global_step, current_epoch, checkpoint_callbacks = 7, 0, []
    precision_plugin = object()


class _Module:
    def log(self, *args, **kwargs) -> None:
        pass


@pytest.mark.parametrize("fused", [False, True])
def test_a_skipped_step_leaves_weights_and_optimizer_state_untouched(fused: bool) -> None:
    net = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(net.parameters(), lr=0.1, weight_decay=0.1, fused=fused)
    net(torch.randn(4, 3)).sum().backward()
    optimizer.step()
    weights = [p.detach().clone() for p in net.parameters()]
    state = {p: {k: v.clone() for k, v in optimizer.state[p].items()} for p in net.parameters()}
    for action in ("skip", "stop"):
        optimizer.zero_grad()
        net(torch.full((4, 3), float("nan"))).sum().backward()
        guard = NonFiniteGuard(action=action, check_every_n_steps=1)
        if action == "skip":
            guard.on_before_optimizer_step(_Trainer(), _Module(), optimizer)
        else:
            with pytest.raises(NonFiniteError, match="at step 7"):
                guard.on_before_optimizer_step(_Trainer(), _Module(), optimizer)
        if fused:  # skipped on the device: gradients kept, the kernel told to leave everything
            assert optimizer.found_inf.item() == 1.0 and all(p.grad is not None for p in net.parameters())
        else:  # skipped on the host: gradients dropped
            assert all(p.grad is None for p in net.parameters())
        optimizer.step()
        assert all(torch.equal(a, b) for a, b in zip(weights, net.parameters()))
        assert all(torch.equal(state[p][k], optimizer.state[p][k]) for p in net.parameters() for k in state[p])
    with pytest.raises(ValueError, match="callbacks.nonfinite.action='retry'"):
        NonFiniteGuard(action="retry")


def test_a_checkpoint_with_nan_weights_is_never_written() -> None:
    module = torch.nn.Linear(2, 2)
    with torch.no_grad():
        module.weight[0, 0] = float("nan")

    with pytest.raises(NonFiniteError, match="Refusing to save a checkpoint at step 7"):
        NonFiniteGuard().on_save_checkpoint(_Trainer(), module, {})


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (
            ["schedule=linear", "schedule.coefficients.beta_end=1.5"],
            "model.objective.schedule.coefficients: need 0 < beta_start <= beta_end < 1",
        ),
        (["schedule.coefficients.tau=0"], "model.objective.schedule.coefficients: need start < end and tau > 0"),
        (["schedule.coefficients.num_timesteps=0"], "num_timesteps must be a positive int, got 0"),
        (["sampler.num_steps=2000"], "model: num_steps=2000 exceeds the schedule's num_timesteps=1000"),
        (
            ["conditioning=class", "conditioning.guidance=-1"],
            "model.conditioning: guidance=-1 must be a finite number >= 0",
        ),
        (["conditioning=class", "conditioning.p_uncond=1.5"], "conditioning.p_uncond=1.5 must be in [0, 1]"),
        (["model.unet.in_channels=3"], "set model.unet.in_channels=4"),
        (["model.compile=fast"], "model.compile='fast' is not valid"),
        (["objective=flow", "objective.time_distribution=beta"], "time_distribution='beta' is not valid"),
        (["objective=flow", "sampler=ddim"], "DDIMSampler cannot sample a FlowMatching model"),
        (["sampler=heun"], "HeunSampler cannot sample a DiffusionObjective model"),
        (["sampler=ddim_analytic"], "train with sampler=ddim, then sample or evaluate with sampler=ddim_analytic"),
    ],
)
def test_invalid_config_values_stop_before_any_work_with_one_line(
    overrides: list[str], expected: str, tmp_path: Path, mnist_dir: Path
) -> None:
    vae = save_vae_checkpoint(tmp_path / "vae.ckpt")
    cfg = compose_cfg(tmp_path, mnist_dir, ["model=ldm", f"vae_ckpt={vae}", *overrides])
    with pytest.raises(InstantiationException) as raised:
        hydra.utils.instantiate(cfg.model)  # train() builds the model before touching data
    message = str(user_error(raised.value))
    assert expected in message and "\n" not in message, message


def test_resume_targets_that_cannot_work_are_clear(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="ckpt_path=last: no checkpoints/last.ckpt under"):
        resolve_resume("last", tmp_path / "logs", "ldm")
    with pytest.raises(CheckpointError, match="does not exist"):
        resolve_resume(str(tmp_path / "nope.ckpt"), tmp_path / "logs", "ldm")
    truncated = tmp_path / "truncated.ckpt"
    torch.save({"ldm": {"kind": "vae"}, "loops": {}, "state_dict": {"w": torch.zeros(1000)}}, truncated)
    truncated.write_bytes(truncated.read_bytes()[:500])
    with pytest.raises(CheckpointError, match="cannot be used: .*truncated or not a checkpoint"):
        resolve_resume(str(truncated), tmp_path / "logs", "ldm")
    for name, garbage, says in (
        ("text", b"1 epoch\n" * 50, "not a PyTorch checkpoint file"),
        ("empty", b"", "is empty (0 bytes)"),
        ("random", os.urandom(5000), "truncated or not a checkpoint"),
        ("zip", truncated.read_bytes(), "a damaged archive of 500 bytes"),
        ("pickle", pickle.dumps({"epoch": 1}, protocol=4), "not a PyTorch checkpoint file"),  # torch warns on these
    ):
        (tmp_path / f"{name}.ckpt").write_bytes(garbage)
        with pytest.raises(CheckpointError) as raised, warnings.catch_warnings(record=True) as shown:
            warnings.simplefilter("always")
            resolve_resume(str(tmp_path / f"{name}.ckpt"), tmp_path / "logs", "ldm")
        assert not shown, [str(w.message) for w in shown]  # nothing before the one line ("Detected pickle protocol")
        message = str(raised.value)  # the user's terms, not the unpickler's ("Unsupported operand 49")
        assert says in message and "\n" not in message and "operand" not in message.lower(), message
    weights_only = tmp_path / "weights.ckpt"
    torch.save({"ldm": {"kind": "vae"}, "state_dict": {}}, weights_only)
    with pytest.raises(CheckpointError, match="not a training checkpoint"):
        resolve_resume(str(weights_only), tmp_path / "logs", "ldm")

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    evil = tmp_path / "evil.ckpt"
    torch.save({"ldm": {"kind": "ldm"}, "loops": {}, "payload": Evil()}, evil)
    with pytest.raises(CheckpointError, match="cannot be used: Refusing to load"):
        resolve_resume(str(evil), tmp_path / "logs", "ldm")


def test_wandb_unreachable_goes_offline_without_waiting(monkeypatch) -> None:
    import time

    monkeypatch.delenv("WANDB_MODE")
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # nothing listens on the discard port
    start = time.perf_counter()
    assert wandb_mode() == "offline"
    assert time.perf_counter() - start < 5


def test_resumed_run_continues_the_same_wandb_run(tmp_path: Path, mnist_dir: Path, monkeypatch) -> None:
    monkeypatch.delenv("WANDB_MODE")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    first = compose_cfg(tmp_path, mnist_dir, [*VAE_TINY, "logger=wandb", "trainer.max_epochs=1"])
    train(first)
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    run_id = torch.load(last, weights_only=True)["wandb_run_id"]
    resumed = compose_cfg(tmp_path, mnist_dir, [*VAE_TINY, "logger=wandb", f"ckpt_path={last}"])
    train(resumed)
    after = torch.load(last, weights_only=True)
    assert after["wandb_run_id"] == run_id and after["global_step"] == 16  # 2 epochs of 8 steps
    runs = sorted(p.name for p in (tmp_path / "run" / "wandb").glob("offline-run-*"))
    assert len(runs) == 2 and all(name.endswith(run_id) for name in runs), runs


def test_a_new_run_never_overwrites_another_runs_checkpoints(tmp_path: Path, mnist_dir: Path) -> None:
    taken = tmp_path / "run" / "checkpoints"
    taken.mkdir(parents=True)
    (taken / "last.ckpt").write_bytes(b"someone else's weights")
    with pytest.raises(CheckpointError, match="already holds another run's checkpoints.*ckpt_path="):
        train(compose_cfg(tmp_path, mnist_dir, VAE_TINY))
    assert (taken / "last.ckpt").read_bytes() == b"someone else's weights"


def test_guard_follows_the_restored_optimizer_not_its_constructor() -> None:
    """A run resumed on CUDA from an unfused (e.g. CPU) checkpoint: AdamW was built fused, but
    load_state_dict restored unfused param groups, which must not be handed a found_inf flag."""
    net = torch.nn.Linear(3, 2)
    unfused = torch.optim.AdamW(net.parameters(), lr=0.1)
    net(torch.randn(4, 3)).sum().backward()
    unfused.step()
    resumed = torch.optim.AdamW(net.parameters(), lr=0.1, fused=True)
    resumed.load_state_dict(unfused.state_dict())
    assert resumed.defaults["fused"] and not resumed.param_groups[0]["fused"]
    resumed.zero_grad()
    net(torch.full((4, 3), float("nan"))).sum().backward()
    NonFiniteGuard(action="skip").on_before_optimizer_step(_Trainer(), _Module(), resumed)
    resumed.step()  # the unfused path: no found_inf was set, the gradients were dropped instead
    assert not hasattr(resumed, "found_inf") and all(torch.isfinite(p).all() for p in net.parameters())


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["seed=abc"], "seed='abc' must be an int"),
        (["model.beta=abc"], "model.beta='abc' must be a number"),
        (["+model.bogus=1"], "model.bogus is not an argument of ldm.systems.vae.VAEModule"),
        (["trainer.max_epochs=ten"], "trainer.max_epochs='ten' must be an int"),
        (["data.val_size=1.5"], "data.val_size=1.5 must be an int"),
        (["model.vae.hidden_channels=[8,x]"], "model.vae.hidden_channels=[8, 'x'] must be a list of ints"),
        (["model.optimizer.lr=-1"], "model.optimizer: Invalid learning rate: -1"),
        (["+model.optimizer.betas=[2,0]"], "model.optimizer: Invalid beta parameter at index 0: 2"),
        (["lr_scaling=fast"], "lr_scaling='fast' must be one of 'none', 'sqrt', 'linear'"),
        (["train=false", "test=true"], "train=false tests a trained checkpoint: pass ckpt_path=PATH"),
        (["train=false"], "train=false test=false leaves nothing to do"),
        (["trainer.max_epochs=-2"], "trainer: `max_epochs` must be a non-negative integer or -1"),
        (
            ["data.val_size=320"],
            "data.val_size=320 must be < 320, the number of train images",
        ),  # after reading the data
        (["trainer.max_epochs=-1"], "model.scheduler needs the run's length"),  # at fit time
    ],
)
def test_bad_values_anywhere_in_the_config_are_one_line_naming_the_key(
    overrides: list[str], expected: str, tmp_path: Path, mnist_dir: Path
) -> None:
    with pytest.raises(Exception) as raised:
        train(compose_cfg(tmp_path, mnist_dir, [*VAE_TINY, *overrides]))
    cause = user_error(raised.value)
    assert cause is not None and expected in str(cause) and "\n" not in str(cause), (raised.value, cause)
    assert not list(tmp_path.glob("run/checkpoints/*.ckpt"))


def test_ldm_on_another_image_dataset_says_which_override_to_use(tmp_path: Path, mnist_dir: Path) -> None:
    """`model=ldm data=fashion_mnist` replaces the latent data with images; it used to end in an
    InterpolationKeyError deep in the callbacks."""
    vae = save_vae_checkpoint(tmp_path / "vae.ckpt")
    with pytest.raises(ConfigError, match=r"data@data.images=fashion_mnist"):
        train(compose_cfg(tmp_path, mnist_dir, ["model=ldm", f"vae_ckpt={vae}", "data=fashion_mnist"]))
    cfg = compose_cfg(tmp_path, mnist_dir, ["model=ldm", f"vae_ckpt={vae}", "data@data.images=fashion_mnist"])
    assert cfg.data.images.dataset_cls.path == "torchvision.datasets.FashionMNIST"
