"""ldm.metrics: FID / KID / IS / precision-recall invariants, the torchmetrics contract, the feature cache."""

from __future__ import annotations

import logging
import math
import struct
import warnings
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.inception import InceptionScore
from torchmetrics.image.kid import KernelInceptionDistance

from ldm.metrics import (
    ClassifierFeatures,
    cached_reference_features,
    conditional_accuracy,
    extract,
    frechet_distance,
    inception_score,
    kernel_distance,
    precision_recall,
    real_floor,
    reference_features,
    sample_metrics,
    to_float_images,
)
from ldm.models.classifier import MNISTClassifier

from conftest import fake_digits
from mounts import remount, tmpfs

N = 512


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: extra threads only contend with other work
    yield
    torch.set_num_threads(threads)


def _digits(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = fake_digits(N, seed)
    return torch.from_numpy(images).unsqueeze(1), torch.from_numpy(labels).long()  # uint8 (N, 1, 28, 28)


@pytest.fixture(scope="module")
def classifier() -> MNISTClassifier:
    """A tiny classifier trained for 30 steps on fake digits (it classifies them perfectly)."""
    torch.manual_seed(0)
    net = MNISTClassifier(width=8, feature_dim=32)
    images, labels = _digits(0)
    x = to_float_images(images)
    optimizer = torch.optim.Adam(net.parameters(), lr=3e-3)
    for _ in range(30):
        idx = torch.randint(0, N, (64,))
        loss = F.cross_entropy(net(x[idx]), labels[idx])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return net.eval()


@pytest.fixture(scope="module")
def extractor(classifier: MNISTClassifier) -> ClassifierFeatures:
    return ClassifierFeatures(classifier)


def test_images_are_accepted_as_uint8_or_unit_floats() -> None:
    images = _digits(0)[0]
    torch.testing.assert_close(to_float_images(images), images.float() / 255)
    torch.testing.assert_close(to_float_images(images.float() / 255), images.float() / 255)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        to_float_images(images.float())  # 0..255 floats
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        to_float_images(images.float() / 127.5 - 1)  # [-1, 1]
    with pytest.raises(TypeError):
        to_float_images(images.long())


def test_extractor_is_a_torchmetrics_feature_extractor(extractor: ClassifierFeatures) -> None:
    real, fake = _digits(0)[0], _digits(1)[0]
    fid = FrechetInceptionDistance(feature=extractor)  # reads num_features: no dummy 3x299x299 probe
    fid.train()
    assert not extractor.classifier.training  # stays in eval mode inside a metric
    for chunk in real.split(200):
        fid.update(chunk, real=True)  # uint8, one channel, 28x28
    fid.update(fake.float() / 255, real=False)  # or floats in [0, 1]
    ours = frechet_distance(reference_features(real, extractor), reference_features(fake, extractor))
    assert fid.compute().item() == pytest.approx(ours, rel=1e-4, abs=1e-6)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        kid = KernelInceptionDistance(feature=extractor, subset_size=100, subsets=5)
    kid.update(real, real=True)
    kid.update(fake, real=False)
    assert math.isfinite(kid.compute()[0].item())


def test_grey_images_are_repeated_for_a_colour_classifier() -> None:
    extractor = ClassifierFeatures(MNISTClassifier(in_channels=3, width=8, feature_dim=16))
    grey = _digits(0)[0][:8]
    torch.testing.assert_close(extractor(grey), extractor(grey.expand(-1, 3, -1, -1)))


def test_fid_and_kid_are_zero_for_identical_sets_and_grow_with_damage(extractor: ClassifierFeatures) -> None:
    torch.manual_seed(0)
    x = to_float_images(_digits(0)[0])
    real = reference_features(x, extractor)
    noised = reference_features((x + 0.05 * torch.randn_like(x)).clamp(0, 1), extractor)
    shifted = reference_features(torch.roll(x, 4, dims=2), extractor)  # 4 rows down: the bar means another digit
    assert abs(frechet_distance(real, real)) < 1e-6
    assert frechet_distance(real, shifted) > 10 * frechet_distance(real, noised) > 0
    kid_same = kernel_distance(real, real, subsets=10, subset_size=256)[0]
    kid_shifted = kernel_distance(real, shifted, subsets=10, subset_size=256)[0]
    assert abs(kid_same) < 0.05 and kid_shifted > 0.1
    assert kernel_distance(real, shifted, seed=3) == kernel_distance(real, shifted, seed=3)  # reproducible


def test_inception_score_bounds_and_torchmetrics_agreement() -> None:
    labels = torch.arange(1000) % 10  # in this order every chunk of 100 holds each class 10 times
    confident = 50.0 * F.one_hot(labels, 10).double()
    assert inception_score(confident, seed=None)[0] == pytest.approx(10.0, rel=1e-6)
    # Sorted by class, unshuffled chunks would each hold one class (IS ~1); the default shuffles.
    by_class = confident[labels.argsort(stable=True)]
    assert inception_score(by_class, seed=None)[0] == pytest.approx(1.0)
    assert 9.0 < inception_score(by_class)[0] <= 10.0
    assert inception_score(torch.zeros(1000, 10))[0] == pytest.approx(1.0)
    assert inception_score(confident[labels == 3])[0] == pytest.approx(1.0)  # confident but one class
    logits = torch.randn(300, 10) * 3
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = InceptionScore(feature=torch.nn.Identity(), splits=1)
        reference.update(logits)
        expected = reference.compute()[0].item()  # (its std of one split warns)
    assert inception_score(logits, splits=1)[0] == pytest.approx(expected, rel=1e-5)


def test_precision_recall() -> None:
    torch.manual_seed(0)
    real = torch.randn(300, 8)
    assert precision_recall(real, real) == (1.0, 1.0)
    assert precision_recall(real, real + 100.0) == (0.0, 0.0)
    half = torch.cat([real[:150], torch.randn(150, 8) + 100.0])
    assert precision_recall(real, half)[0] == 0.5  # exactly the copied half lies on the real manifold
    # A generator that collapses onto a tight cluster: high precision, low recall.
    collapsed = real[:1] + 0.01 * torch.randn(300, 8)
    precision, recall = precision_recall(real, collapsed)
    assert precision == 1.0 and recall < 0.1
    assert precision_recall(real, half, chunk=7) == precision_recall(real, half)  # chunking changes nothing


def test_conditional_accuracy(extractor: ClassifierFeatures) -> None:
    images, labels = _digits(1)
    predicted = extract(images, extractor)[1].argmax(dim=1)
    assert conditional_accuracy(images, predicted, extractor) == 1.0
    assert conditional_accuracy(images, (predicted + 1) % 10, extractor) == 0.0
    assert conditional_accuracy(images, labels, extractor, batch_size=100) > 0.9  # it learned the fake digits
    with pytest.raises(ValueError, match=r"labels must have shape \(512,\)"):  # (N, 1) broadcast to (N, N)
        conditional_accuracy(images, predicted[:, None], extractor)


def test_reference_features_are_cached_per_classifier_and_images(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    torch.manual_seed(0)
    classifier = MNISTClassifier(width=8, feature_dim=16).eval()
    extractor = ClassifierFeatures(classifier)
    images = _digits(0)[0][:64]
    calls = []
    features = classifier.features
    monkeypatch.setattr(classifier, "features", lambda x: calls.append(len(x)) or features(x))

    first = cached_reference_features(images, extractor, tmp_path)
    assert calls and len(list(tmp_path.glob("features-*.pt"))) == 1
    calls.clear()
    torch.testing.assert_close(cached_reference_features(images, extractor, tmp_path), first)
    assert not calls  # reused

    cached_reference_features(images[:32], extractor, tmp_path)  # other images: a new entry
    assert calls and len(list(tmp_path.glob("features-*.pt"))) == 2
    calls.clear()
    with torch.no_grad():
        classifier.head[1].bias.add_(1.0)  # a retrained classifier: even a change outside features()
    before = set(tmp_path.glob("features-*.pt"))
    cached_reference_features(images, extractor, tmp_path)
    assert calls and len(list(tmp_path.glob("features-*.pt"))) == 3

    (entry,) = set(tmp_path.glob("features-*.pt")) - before
    entry.write_bytes(b"truncated")  # an unreadable entry is rebuilt, not trusted
    calls.clear()
    assert cached_reference_features(images, extractor, tmp_path).shape == (64, 16) and calls
    assert torch.load(entry, weights_only=True)["features"].shape == (64, 16)


def _corrupt_features(path: Path) -> None:
    """Flip bytes of the stored features in place, as a bad sector would: the file still loads."""
    with zipfile.ZipFile(path) as archive:
        info = next(i for i in archive.infolist() if i.filename.endswith("/data/0"))  # the one storage, uncompressed
    raw = bytearray(path.read_bytes())
    name_len, extra_len = struct.unpack("<HH", raw[info.header_offset + 26 : info.header_offset + 30])
    start = info.header_offset + 30 + name_len + extra_len + 40
    raw[start : start + 8] = bytes(b ^ 0x5A for b in raw[start : start + 8])
    path.write_bytes(raw)


def _counting_extractor(monkeypatch: pytest.MonkeyPatch) -> tuple[ClassifierFeatures, list[int]]:
    torch.manual_seed(0)
    classifier = MNISTClassifier(width=8, feature_dim=16).eval()
    calls: list[int] = []
    features = classifier.features
    monkeypatch.setattr(classifier, "features", lambda x: calls.append(len(x)) or features(x))
    return ClassifierFeatures(classifier), calls


def test_corrupted_feature_cache_is_rebuilt_not_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog) -> None:
    extractor, calls = _counting_extractor(monkeypatch)
    images = _digits(0)[0][:64]
    first = cached_reference_features(images, extractor, tmp_path)
    (entry,) = tmp_path.glob("features-*.pt")
    _corrupt_features(entry)
    stored = torch.load(entry, weights_only=True)["features"]  # torch itself loads it without a word
    assert stored.shape == first.shape and not torch.equal(stored, first)

    calls.clear()
    with caplog.at_level(logging.WARNING, logger="ldm.metrics"):
        again = cached_reference_features(images, extractor, tmp_path)
    assert torch.equal(again, first) and calls and "do not match their checksum" in caplog.text
    assert torch.equal(torch.load(entry, weights_only=True)["features"], first)  # rebuilt on disk too


def test_a_read_only_cache_is_read_and_a_missing_entry_only_warns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog
) -> None:
    """A real read-only folder (a tmpfs remounted ro; chmod does not stop root)."""
    extractor, calls = _counting_extractor(monkeypatch)
    images = _digits(0)[0][:64]
    with tmpfs(tmp_path / "cache", "1m") as cache:
        valid = cached_reference_features(images[:32], extractor, cache)
        before = set(cache.glob("features-*.pt"))
        broken = cached_reference_features(images, extractor, cache)
        (entry,) = set(cache.glob("features-*.pt")) - before
        _corrupt_features(entry)
        remount(cache, "ro")
        calls.clear()
        assert torch.equal(cached_reference_features(images[:32], extractor, cache), valid) and not calls
        with caplog.at_level(logging.WARNING, logger="ldm.metrics"):
            assert torch.equal(cached_reference_features(images, extractor, cache), broken) and calls
            assert cached_reference_features(images[:16], extractor, cache).shape == (16, 16)
        assert caplog.text.count("Not caching the reference features") == 2


def test_sample_metrics_and_the_real_floor(extractor: ClassifierFeatures) -> None:
    train_images, _ = _digits(0)
    test_images, test_labels = _digits(1)
    real = reference_features(test_images, extractor)
    floor = real_floor(train_images, real, extractor, num_samples=256)
    assert set(floor) == {"fid", "kid", "kid_std", "is", "is_std", "precision", "recall"}
    shifted = torch.roll(test_images, 4, dims=2)
    bad = sample_metrics(shifted, real, extractor, labels=test_labels)
    assert bad["fid"] > floor["fid"] and bad["cond_acc"] < 0.5
    assert 1.0 <= floor["is"] <= 10.0 and floor["precision"] > 0.5 and floor["recall"] > 0.5
