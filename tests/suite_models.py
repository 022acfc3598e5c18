"""The export suite: small architectures that cover the layers users deploy.

Each factory takes (num_classes, in_channels) and works on 8x8 inputs. Used by
tests/test_export_suite.py and tools/bench_export.py.
"""

import torch
from torch import nn


class Residual(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(c, c, 3, padding=1),
            nn.BatchNorm2d(c),
            nn.ReLU(),
            nn.Conv2d(c, c, 3, padding=1),
        )

    def forward(self, x):
        return torch.relu(x + self.body(x))


class TinyTransformer(nn.Module):
    """Rows of the image as tokens: a 2-layer encoder with LayerNorm and GELU."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, dim: int = 32):
        super().__init__()
        self.embed = nn.Linear(8 * in_channels, dim)
        self.pos = nn.Parameter(torch.zeros(1, 8, dim))
        layer = nn.TransformerEncoderLayer(
            dim, 4, 64, dropout=0.1, activation="gelu", batch_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x):
        tokens = x.permute(0, 2, 1, 3).flatten(2)  # (B, H, C*W)
        h = self.encoder(self.embed(tokens) + self.pos)
        return self.head(self.norm(h.mean(1)))


def plain_cnn(num_classes=10, in_channels=1):
    return nn.Sequential(
        nn.Conv2d(in_channels, 16, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(32 * 16, num_classes),
    )


def residual_cnn(num_classes=10, in_channels=1):
    return nn.Sequential(
        nn.Conv2d(in_channels, 16, 3, padding=1),
        Residual(16),
        Residual(16),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, num_classes),
    )


def mobile_cnn(num_classes=10, in_channels=1):
    """Depthwise-separable blocks, BatchNorm, ReLU6, hard-swish."""

    def block(c_in, c_out, stride):
        return [
            nn.Conv2d(c_in, c_in, 3, stride, 1, groups=c_in),
            nn.BatchNorm2d(c_in),
            nn.ReLU6(),
            nn.Conv2d(c_in, c_out, 1),
            nn.BatchNorm2d(c_out),
            nn.Hardswish(),
        ]

    return nn.Sequential(
        nn.Conv2d(in_channels, 16, 3, padding=1),
        *block(16, 32, 2),
        *block(32, 64, 2),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(64, num_classes),
    )


def mlp(num_classes=10, in_channels=1):
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(64 * in_channels, 128),
        nn.GELU(),
        nn.Dropout(0.2),
        nn.LayerNorm(128),
        nn.Linear(128, num_classes),
    )


def bn_dropout_cnn(num_classes=10, in_channels=1):
    return nn.Sequential(
        nn.Conv2d(in_channels, 24, 3, padding=1),
        nn.BatchNorm2d(24),
        nn.ReLU(),
        nn.Dropout2d(0.1),
        nn.Conv2d(24, 24, 3, padding=1),
        nn.BatchNorm2d(24),
        nn.ReLU(),
        nn.AdaptiveMaxPool2d(2),
        nn.Flatten(),
        nn.Dropout(0.3),
        nn.Linear(96, num_classes),
    )


def transformer(num_classes=10, in_channels=1):
    return TinyTransformer(num_classes, in_channels)


def gelu_layernorm_cnn(num_classes=10, in_channels=1):
    return nn.Sequential(
        nn.Conv2d(in_channels, 16, 3, padding=1),
        nn.GELU(),
        nn.GroupNorm(1, 16),
        nn.Conv2d(16, 16, 3, padding=1, stride=2),
        nn.SiLU(),
        nn.AdaptiveAvgPool2d((2, 2)),
        nn.Flatten(),
        nn.LayerNorm(64),
        nn.Linear(64, num_classes),
    )


def mid_cnn(num_classes=10, in_channels=1):
    """A mid-sized student for the INT8 benchmark: 216 k parameters and 5.3 M multiply-adds, a
    quarter of the default teacher (the 6 k-parameter default student is too small for INT8 to
    pay at batch 1)."""
    return nn.Sequential(
        nn.Conv2d(in_channels, 48, 3, padding=1),
        nn.BatchNorm2d(48),
        nn.ReLU(),
        nn.Conv2d(48, 96, 3, padding=1),
        nn.BatchNorm2d(96),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(96, 192, 3, padding=1),
        nn.BatchNorm2d(192),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(768, num_classes),
    )


SUITE = {
    "plain_cnn": plain_cnn,
    "residual_cnn": residual_cnn,
    "mobile_cnn": mobile_cnn,
    "mlp": mlp,
    "bn_dropout_cnn": bn_dropout_cnn,
    "transformer": transformer,
    "gelu_layernorm_cnn": gelu_layernorm_cnn,
    "mid_cnn": mid_cnn,
}
