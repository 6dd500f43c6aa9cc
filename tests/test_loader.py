"""TensorLoader: on-device batches, order fixed by (seed, epoch), DDP shards, mid-epoch resume."""

from __future__ import annotations

import pytest
import torch

from ldm.data.loader import ResumableTrainLoader, TensorLoader
from ldm.data.tensors import TensorBatchDataset


def _data(n: int = 10) -> TensorBatchDataset:
    def noisy(batch, generator=None):  # a random transform, as SampleLatent is
        return {**batch, "noise": torch.randn(len(batch["x"]), generator=generator)}

    return TensorBatchDataset({"x": torch.arange(n)}, noisy)


def _epoch(loader: TensorLoader, epoch: int) -> list[list[int]]:
    loader.sampler.set_epoch(epoch)
    return [b["x"].tolist() for b in loader]


def test_each_epoch_is_a_permutation_fixed_by_seed_and_epoch() -> None:
    loader = TensorLoader(_data(), batch_size=3, shuffle=True, seed=1)
    first = _epoch(loader, 0)
    assert len(loader) == 4 and [len(b) for b in first] == [3, 3, 3, 1]
    assert sorted(sum(first, [])) == list(range(10))
    assert _epoch(TensorLoader(_data(), 3, shuffle=True, seed=1), 0) == first  # reproducible
    assert _epoch(loader, 1) != first and _epoch(TensorLoader(_data(), 3, shuffle=True, seed=2), 0) != first
    assert _epoch(TensorLoader(_data(), 4, shuffle=False), 5) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


def test_ranks_read_disjoint_padded_shards_of_the_same_order() -> None:
    shards = [_epoch(TensorLoader(_data(), 2, shuffle=True, seed=0, rank=r, world_size=3), 4) for r in range(3)]
    assert all(len(s) == 2 and sum(map(len, s)) == 4 for s in shards)  # ceil(10 / 3) = 4 each
    seen = [x for s in shards for b in s for x in b]
    assert sorted(set(seen)) == list(range(10)) and len(seen) == 12  # 2 wrapped-around repeats
    with pytest.raises(ValueError, match="rank=3"):
        TensorLoader(_data(), 2, rank=3, world_size=3)


def test_resume_continues_mid_epoch_with_identical_batches() -> None:
    straight = TensorLoader(_data(), 3, shuffle=True, seed=7)
    straight.sampler.set_epoch(2)
    batches = [(b["x"].tolist(), b["noise"]) for b in straight]

    interrupted = TensorLoader(_data(), 3, shuffle=True, seed=7)
    interrupted.sampler.set_epoch(2)
    it = iter(interrupted)
    next(it), next(it)
    state = interrupted.state_dict()
    assert state == {"epoch": 2, "consumed": 2}

    class DataModule(ResumableTrainLoader):
        pass

    dm = DataModule()
    dm.load_state_dict({"train_loader": state})  # before the loader exists, as on resume
    resumed = dm.track_train_loader(TensorLoader(_data(), 3, shuffle=True, seed=7))
    resumed.sampler.set_epoch(2)
    rest = [(b["x"].tolist(), b["noise"]) for b in resumed]
    assert [x for x, _ in rest] == [x for x, _ in batches[2:]]
    assert all(torch.equal(a, b) for (_, a), (_, b) in zip(rest, batches[2:]))  # same random draws
    resumed.sampler.set_epoch(3)
    assert len(list(resumed)) == 4  # the next epoch is whole again
    assert dm.state_dict() == {"train_loader": {"epoch": 3, "consumed": 4}}
