"""A harder, larger digits task for benchmarks that must tell methods apart: `--data benchmarks.hard_digits:hard_digits`.

scikit-learn's bundled digits saturate: a 5-epoch fine-tune brings every pruned ResNet-20 to 96-98 % on
360 test images, so methods differ by a few images. This data set is made from the same bundled images
(nothing is downloaded): each image is upsampled to 16x16, given a random rotation (+-15 degrees),
scale (0.85-1.15), shear and shift (+-1.5 pixels), downsampled back to 8x8, and given Gaussian pixel
noise, seeded. The training set holds `train_copies` distorted copies of each of the 1437 training
images of zoo's digits split (8622 images; the search's held-out split is drawn from them), the test set
`test_copies` copies of each of the 360 test images (28: 10080 images, so one test image is worth less than
0.0001 top-1): no test image is a distortion of a training image. The training set is distorted first, so
its images do not depend on `test_copies`. Normalized by the training set's mean and std.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset


def distort(images: torch.Tensor, copies: int, generator: torch.Generator, noise: float = 0.15) -> torch.Tensor:
    """`copies` random affine distortions of each (N, 1, 8, 8) image in [0, 1], with pixel noise."""
    x = F.interpolate(images.repeat_interleave(copies, 0), size=16, mode="bilinear", align_corners=False)
    n = len(x)
    u = lambda lo, hi: lo + (hi - lo) * torch.rand(n, generator=generator)  # noqa: E731
    angle, scale, shear = u(-15, 15) * math.pi / 180, u(0.85, 1.15), u(-0.15, 0.15)
    tx, ty = u(-1.5, 1.5) / 8, u(-1.5, 1.5) / 8
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin + shear, tx], 1), torch.stack([sin, cos, ty], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, align_corners=False, padding_mode="zeros")
    x = F.avg_pool2d(x, 2)
    return x + noise * torch.randn(x.shape, generator=generator)


def hard_digits(train_copies: int = 6, test_copies: int = 28, seed: int = 0) -> tuple[TensorDataset, TensorDataset]:
    """(train, test) datasets; see the module docstring."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = torch.tensor(digits.images / 16.0, dtype=torch.float32).unsqueeze(1)
    labels = torch.tensor(digits.target, dtype=torch.int64)
    tr, te = train_test_split(np.arange(len(labels)), test_size=0.2, stratify=digits.target, random_state=0)
    g = torch.Generator().manual_seed(seed)
    x_train, x_test = distort(images[tr], train_copies, g), distort(images[te], test_copies, g)
    mean, std = x_train.mean(), x_train.std()
    return (TensorDataset((x_train - mean) / std, labels[tr].repeat_interleave(train_copies)),
            TensorDataset((x_test - mean) / std, labels[te].repeat_interleave(test_copies)))
