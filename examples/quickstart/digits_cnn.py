"""The quickstart's model: a small CNN for scikit-learn's 8x8 digits.

Used by ``recipes/quickstart.yaml`` through the ``python`` model source
(``factory: ../examples/quickstart/digits_cnn.py:digits_cnn``); its weights are trained by
``examples/train_quickstart_model.py``.
"""

from __future__ import annotations

from torch import nn

__all__ = ["digits_cnn"]


def digits_cnn(num_classes: int = 10, width: int = 64) -> nn.Module:
    """Four 3x3 conv blocks (width, 2*width, 2*width, 4*width), global pooling, a linear head."""

    def block(cin: int, cout: int) -> list[nn.Module]:
        return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout),
                nn.ReLU(inplace=True)]

    return nn.Sequential(
        *block(1, width), *block(width, 2 * width), nn.MaxPool2d(2),
        *block(2 * width, 2 * width), *block(2 * width, 4 * width),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4 * width, num_classes))
