"""Sample-quality metrics for generated digits, measured in a digit classifier's feature space.

- FID, Fréchet distance between Gaussians fitted to real and generated features
  (Heusel et al. 2017, arXiv 1706.08500): ||mu_r - mu_g||^2 + Tr(S_r + S_g - 2 (S_r S_g)^1/2).
- KID, unbiased squared MMD with the cubic kernel k(x, y) = (x.y / d + 1)^3, averaged over random
  subsets (Bińkowski et al. 2018, arXiv 1801.01401); unbiased, so it can be slightly negative.
- IS, exp(E_x KL(p(y|x) || p(y))) over `splits` chunks (Salimans et al. 2016, arXiv 1606.03498);
  between 1 and num_classes: confident *and* diverse samples score high.
- Precision / recall, the share of generated samples inside the real k-NN manifold and vice
  versa (Kynkäänniemi et al. 2019, arXiv 1904.06991, k = 3): quality and coverage apart.
- Conditional accuracy: the classifier agrees with the class a sample was generated for.

Why a classifier instead of Inception-v3: its weights would have to be downloaded (runs here are
offline), and an ImageNet network looking at 28x28 grey digits upsampled to 299x299 is a poor,
insensitive judge. Features of a 99.4 %-accurate `MNISTClassifier` know what digits look like, so
these numbers are comparable within this project but *not* with published Inception FIDs.

FID and KID are torchmetrics' implementations, fed precomputed features; `ClassifierFeatures`
is the extractor to hand torchmetrics' metrics when they should see images. All scores are
biased by the sample count, so compare a model with `real_floor` at the same count: the score of
real test digits against real train digits.
"""

from __future__ import annotations

import hashlib
import logging
import warnings
from pathlib import Path

import torch
from torch import Tensor, nn
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.kid import KernelInceptionDistance

from ldm.io import WriteError, load_checked, save_checked, update_hash
from ldm.models.classifier import MNISTClassifier

log = logging.getLogger(__name__)


def to_float_images(images: Tensor) -> Tensor:
    """uint8 in 0..255 or float in [0, 1], (N, C, H, W) -> float32 in [0, 1]."""
    if images.dtype == torch.uint8:
        return images.float().div_(255.0)
    if not images.is_floating_point():
        raise TypeError(f"images must be uint8 or float, got {images.dtype}")
    lo, hi = images.min().item(), images.max().item()
    if lo < -1e-3 or hi > 1 + 1e-3:  # e.g. [-1, 1] or 0..255 floats: a caller bug, not noise
        raise ValueError(f"float images must lie in [0, 1], got values in [{lo:.3g}, {hi:.3g}]")
    return images.float().clamp(0.0, 1.0)


class ClassifierFeatures(nn.Module):
    """A classifier's penultimate features as a torchmetrics feature extractor.

    `FrechetInceptionDistance(feature=ClassifierFeatures(c))` (and KID) pass `update()`'s images
    to `forward` unchanged: any (N, C, H, W) batch in 0..255 uint8 or [0, 1] float works, grey
    images are repeated for a 3-channel classifier. torchmetrics reads `num_features` instead of
    probing with a dummy image. The classifier is put in, and kept in, eval mode (dropout off,
    BatchNorm statistics frozen) even when a metric holding it is switched to training.
    """

    def __init__(self, classifier: MNISTClassifier) -> None:
        super().__init__()
        self.classifier = classifier.eval()
        self.num_features = classifier.feature_dim

    def train(self, mode: bool = True) -> ClassifierFeatures:
        super().train(False)  # dropout and BatchNorm statistics must never change
        return self

    @torch.no_grad()
    def forward(self, images: Tensor) -> Tensor:
        return self.features_and_logits(images)[0]

    @torch.no_grad()
    def features_and_logits(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """(N, num_features) features and (N, num_classes) logits, float32 on the classifier's device."""
        device = next(self.classifier.parameters()).device
        x = to_float_images(images.to(device))
        if x.shape[1] == 1 and self.classifier.in_channels > 1:
            x = x.expand(-1, self.classifier.in_channels, -1, -1)
        with torch.autocast(device.type, enabled=False):  # float32 even inside a bf16 Trainer
            features = self.classifier.features(x)
            return features, self.classifier.head(features)


def judge_digest(classifier: nn.Module) -> str:
    """sha256 of the judge's weights: metrics are comparable only between equal digests (a retrained
    classifier, even with the same command, is another feature space)."""
    return update_hash(hashlib.sha256(b"ldm-judge-v1"), classifier.state_dict()).hexdigest()


def extract(images: Tensor, extractor: ClassifierFeatures, batch_size: int = 500) -> tuple[Tensor, Tensor]:
    """Features (N, d) and logits (N, num_classes) of many images, in batches, on the CPU."""
    outputs = [extractor.features_and_logits(chunk) for chunk in images.split(batch_size)]
    return torch.cat([f.cpu() for f, _ in outputs]), torch.cat([lg.cpu() for _, lg in outputs])


def reference_features(images: Tensor, extractor: ClassifierFeatures, batch_size: int = 500) -> Tensor:
    """Features (N, d) of a real image set: what generated samples are compared with."""
    return extract(images, extractor, batch_size)[0]


def cached_reference_features(
    images: Tensor, extractor: ClassifierFeatures, cache_dir: str | Path | None, batch_size: int = 500
) -> Tensor:
    """`reference_features`, computed once per (classifier weights, images) and kept in `cache_dir`.

    The file name is a hash of both, so retraining the classifier or changing the real set makes
    a new entry instead of silently reusing stale features. The entry also holds a sha256 of the
    features, checked on every load: a corrupted file is rebuilt (with a warning), never used. A
    read-only cache folder is fine: a valid entry is read, and a missing one that cannot be written
    is only a warning (the features are computed for this run). `cache_dir=None`: no cache.
    """
    if not cache_dir:  # None or ""
        return reference_features(images, extractor, batch_size)
    key = update_hash(hashlib.sha256(), {**extractor.classifier.state_dict(), "<images>": images}).hexdigest()
    path = Path(cache_dir) / f"features-{key[:20]}.pt"
    if path.is_file():
        try:
            return load_checked(path, key, ("features",))["features"]
        except ValueError as e:
            log.warning("Rebuilding the feature cache %s (%s)", path, e)
    log.info("Computing reference features of %d images into %s", len(images), path)
    features = reference_features(images, extractor, batch_size)
    try:
        save_checked(path, key, {"features": features})
    except WriteError as e:
        log.warning("Not caching the reference features (%s); going on without the cache", e)
    return features


class _GivenFeatures(nn.Module):
    """Lets torchmetrics' FID / KID take features we already extracted (and maybe cached)."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = num_features

    def forward(self, features: Tensor) -> Tensor:
        return features


def frechet_distance(real_features: Tensor, fake_features: Tensor) -> float:
    """FID between two feature sets (N, d) (statistics in float64, torchmetrics' formula)."""
    fid = FrechetInceptionDistance(feature=_GivenFeatures(real_features.shape[1]))
    fid.update(real_features.double(), real=True)
    fid.update(fake_features.double(), real=False)
    return float(fid.compute())


def kernel_distance(
    real_features: Tensor, fake_features: Tensor, subsets: int = 100, subset_size: int = 1000, seed: int = 0
) -> tuple[float, float]:
    """KID mean and std over `subsets` random subsets (reproducible through `seed`)."""
    subset_size = min(subset_size, len(real_features), len(fake_features))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*will save all extracted features.*")
        kid = KernelInceptionDistance(
            feature=_GivenFeatures(real_features.shape[1]), subsets=subsets, subset_size=subset_size
        )
    kid.update(real_features.double(), real=True)
    kid.update(fake_features.double(), real=False)
    with torch.random.fork_rng(devices=[]):  # torchmetrics draws subsets from the global RNG
        torch.manual_seed(seed)
        mean, std = kid.compute()
    return float(mean), float(std)


def inception_score(logits: Tensor, splits: int = 10, seed: int | None = 0) -> tuple[float, float]:
    """Classifier-based IS: mean and (population) std of exp(E KL(p(y|x) || p(y))) over `splits` chunks.

    The samples are shuffled first (with `seed`; None keeps their order): class-conditional
    samples often come sorted by class, and a chunk holding a single class scores ~1.
    """
    if seed is not None:
        logits = logits[torch.randperm(len(logits), generator=torch.Generator().manual_seed(seed))]
    scores = []
    for chunk in logits.double().chunk(splits):
        log_p = chunk.log_softmax(dim=1)  # log p(y|x), (n, K)
        log_marginal = log_p.exp().mean(dim=0).log()  # log p(y), (K,)
        kl = (log_p.exp() * (log_p - log_marginal)).sum(dim=1)  # KL per sample, (n,)
        scores.append(kl.mean().exp())
    scores = torch.stack(scores)
    return float(scores.mean()), float(scores.std(unbiased=False))


def _kth_neighbour_radii(features: Tensor, k: int, chunk: int) -> Tensor:
    """Distance from each point to its k-th nearest other point, (N,)."""
    # The (k+1)-th smallest distance counts the point itself (at distance 0) as the first.
    return torch.cat([torch.cdist(c, features).kthvalue(k + 1, dim=1).values for c in features.split(chunk)])


def _inside_manifold(points: Tensor, centres: Tensor, radii: Tensor, chunk: int) -> Tensor:
    """For each point, whether it lies in some ball(centre_j, radius_j), (N,) bool."""
    return torch.cat([(torch.cdist(c, centres) <= radii).any(dim=1) for c in points.split(chunk)])


def precision_recall(
    real_features: Tensor, fake_features: Tensor, k: int = 3, chunk: int = 1024
) -> tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019) with k-NN balls.

    precision: share of fake samples inside the union of balls around real samples whose radius
    is the distance to their k-th nearest real neighbour; recall: the same with the roles swapped.
    Distances are computed `chunk` rows at a time, so 10k x 10k sets fit in memory.
    """
    real, fake = real_features.float(), fake_features.float()
    if min(len(real), len(fake)) <= k:
        raise ValueError(f"precision_recall needs more than k={k} samples in each set")
    real_radii = _kth_neighbour_radii(real, k, chunk)
    fake_radii = _kth_neighbour_radii(fake, k, chunk)
    precision = _inside_manifold(fake, real, real_radii, chunk).float().mean()
    recall = _inside_manifold(real, fake, fake_radii, chunk).float().mean()
    return float(precision), float(recall)


def conditional_accuracy(images: Tensor, labels: Tensor, extractor: ClassifierFeatures, batch_size: int = 500) -> float:
    """Share of class-conditional samples the classifier assigns to the class they were made for."""
    return _accuracy(extract(images, extractor, batch_size)[1], labels)


def _accuracy(logits: Tensor, labels: Tensor) -> float:
    if labels.shape != (len(logits),):  # (N, 1) or (1,) would broadcast into a meaningless number
        raise ValueError(f"labels must have shape ({len(logits)},), one class per sample, got {tuple(labels.shape)}")
    return float((logits.argmax(dim=1) == labels.cpu().long()).float().mean())


def sample_metrics(
    fake_images: Tensor,
    real_features: Tensor,
    extractor: ClassifierFeatures,
    labels: Tensor | None = None,
    k: int = 3,
    seed: int = 0,
    batch_size: int = 500,
) -> dict[str, float]:
    """Every metric of generated images against real features (e.g. `cached_reference_features`).

    Keys: fid, kid, kid_std, is, is_std, precision, recall, and cond_acc when `labels` (the
    classes the samples were conditioned on) are given. Use as many samples as the real set for
    FID; its bias grows as N shrinks.
    """
    fake_features, logits = extract(fake_images, extractor, batch_size)
    kid, kid_std = kernel_distance(real_features, fake_features, seed=seed)
    is_mean, is_std = inception_score(logits, seed=seed)
    precision, recall = precision_recall(real_features, fake_features, k)
    metrics = {
        "fid": frechet_distance(real_features, fake_features),
        "kid": kid,
        "kid_std": kid_std,
        "is": is_mean,
        "is_std": is_std,
        "precision": precision,
        "recall": recall,
    }
    if labels is not None:
        metrics["cond_acc"] = _accuracy(logits, labels)
    return metrics


def real_floor(
    train_images: Tensor,
    real_features: Tensor,
    extractor: ClassifierFeatures,
    num_samples: int = 10_000,
    k: int = 3,
    seed: int = 0,
) -> dict[str, float]:
    """The best score a generator can hope for: `num_samples` real train digits scored exactly like
    generated samples, against the same reference features (e.g. of the test set).

    Use the count the generated samples have, since FID's bias depends on it. A generator whose FID
    is near this floor is indistinguishable from held-out data to this classifier; IS here is the
    real data's IS, the most a faithful generator should reach.
    """
    if num_samples > len(train_images):
        raise ValueError(
            f"the floor needs {num_samples} real train digits (as many as the samples, since FID's bias depends on the "
            f"count) but there are {len(train_images)}: score fewer samples, or pass floor=false"
        )
    generator = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(train_images), generator=generator)[:num_samples]
    return sample_metrics(train_images[idx], real_features, extractor, k=k, seed=seed)
