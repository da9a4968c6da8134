"""Downstream classifiers that score synthetic data: the DPDM/DP-LDM CNN and a small ResNet.

DPImageBench scores with ResNet, WRN and ResNeXt trained on a GPU; on a 2-core CPU we run the two
closest we can afford (docs/utility.md says so next to every number).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class DigitCNN(nn.Module):
    """The small CNN of the DPDM / DP-LDM MNIST protocol (two conv layers, two dense layers)."""

    def __init__(self, channels: int = 1, num_classes: int = 10, size: int = 28):
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(channels, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Dropout(0.25), nn.Flatten())
        self.features = nn.Sequential(nn.Linear(64 * (size // 4) ** 2, 128), nn.ReLU())
        self.head = nn.Sequential(nn.Dropout(0.5), nn.Linear(128, num_classes))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(self.conv(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(x))


class _Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.c1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.b1 = nn.BatchNorm2d(cout)
        self.c2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.b2 = nn.BatchNorm2d(cout)
        self.skip = nn.Sequential() if stride == 1 and cin == cout else nn.Sequential(
            nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        return F.relu(self.b2(self.c2(F.relu(self.b1(self.c1(x))))) + self.skip(x))


class SmallResNet(nn.Module):
    """A ResNet of three stages (16, 32, 64 channels, one basic block each): DPImageBench's ResNet family at a
    width a 2-core CPU trains on 55k images in minutes (≈ 55 MFLOP per training image)."""

    def __init__(self, channels: int = 1, num_classes: int = 10, size: int = 28):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(channels, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.stages = nn.Sequential(_Block(16, 16, 1), _Block(16, 32, 2), _Block(32, 64, 2))
        self.head = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(F.adaptive_avg_pool2d(self.stages(self.stem(x)), 1).flatten(1))


CLASSIFIERS = {"cnn": DigitCNN, "resnet": SmallResNet}


def build_classifier(arch: str, channels: int, num_classes: int, size: int) -> nn.Module:
    if arch not in CLASSIFIERS:
        raise ValueError(f"unknown classifier {arch!r}; choose from {', '.join(CLASSIFIERS)}")
    return CLASSIFIERS[arch](channels, num_classes, size)
