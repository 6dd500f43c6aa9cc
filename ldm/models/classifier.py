"""A small CNN digit classifier: the judge of generated samples, and their feature extractor.

Two VGG-style blocks (conv-conv-pool, widths w and 2w) and a fully connected layer, the standard
MNIST design that reaches 99.3-99.5 % test accuracy within a few epochs (with BatchNorm, dropout
and +-2 px shifts; see `ldm.systems.classifier`). Its penultimate activations, `features(x)`, replace
Inception's pool3 features for FID / KID / precision-recall on 28x28 digits (`ldm.metrics`), and
its class probabilities give the classifier-based Inception Score and the accuracy of
class-conditional samples.
"""

from __future__ import annotations

from torch import Tensor, nn


def _conv_block(in_channels: int, out_channels: int, dropout: float) -> list[nn.Module]:
    """conv-BN-ReLU twice, then 2x2 max-pool (halves H, W) and dropout."""
    layers: list[nn.Module] = []
    for c_in in (in_channels, out_channels):
        layers += [nn.Conv2d(c_in, out_channels, 3, padding=1, bias=False), nn.BatchNorm2d(out_channels), nn.ReLU()]
    return layers + [nn.MaxPool2d(2), nn.Dropout(dropout)]


class MNISTClassifier(nn.Module):
    """Images in [0, 1] (B, C, 28, 28) -> class logits (B, num_classes).

    Inputs are standardised by a first BatchNorm (no affine) whose running statistics are the
    data's mean and std, so callers pass images in the data module's [0, 1] range and the network
    fits MNIST, Fashion-MNIST or colour-repeated digits alike.

    Args:
        in_channels: image channels (1, or 3 when the data module repeats the grey channel).
        num_classes: output classes.
        feature_dim: width of the penultimate layer, i.e. of `features(x)`.
        width: channels of the first block; the second has 2 * width.
        dropout: dropout after each block and before the last layer (training only).
        image_size: height = width of the inputs; must be divisible by 4.
    """

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 10,
        feature_dim: int = 128,
        width: int = 32,
        dropout: float = 0.25,
        image_size: int = 28,
    ) -> None:
        super().__init__()
        if min(in_channels, num_classes, feature_dim, width) < 1 or not 0.0 <= dropout < 1.0:
            raise ValueError("in_channels, num_classes, feature_dim and width must be >= 1, dropout in [0, 1)")
        if image_size % 4:
            raise ValueError(f"image_size={image_size} must be divisible by 4 (two 2x2 poolings)")
        # Plain values only: stored in checkpoints so the classifier can be rebuilt without Hydra.
        self.config = dict(
            in_channels=in_channels,
            num_classes=num_classes,
            feature_dim=feature_dim,
            width=width,
            dropout=dropout,
            image_size=image_size,
        )
        self.in_channels, self.num_classes, self.feature_dim = in_channels, num_classes, feature_dim
        side = image_size // 4
        self.body = nn.Sequential(
            nn.BatchNorm2d(in_channels, affine=False),  # learned input standardisation
            *_conv_block(in_channels, width, dropout),  # (B, w, H/2, W/2)
            *_conv_block(width, 2 * width, dropout),  # (B, 2w, H/4, W/4)
            nn.Flatten(),
            nn.Linear(2 * width * side * side, feature_dim, bias=False),
            nn.BatchNorm1d(feature_dim),
            nn.ReLU(),
        )
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(feature_dim, num_classes))

    def features(self, x: Tensor) -> Tensor:
        """Penultimate activations (B, feature_dim): what the last layer reads (post-ReLU, like pool3)."""
        return self.body(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))

    def predict(self, x: Tensor) -> Tensor:
        """Predicted classes (B,) int64; call in eval mode for deterministic answers."""
        return self(x).argmax(dim=1)
