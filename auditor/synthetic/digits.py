"""scikit-learn's bundled 8×8 digits, upsampled to 1×28×28 in [0, 1]."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def load_digits_28(seed: int = 0, test_fraction: float = 0.25) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x_train, y_train, x_test, y_test): float32 (N,1,28,28) in [0,1], int64 labels; seeded split."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32)[:, None] / 16.0
    x = F.interpolate(x, size=(28, 28), mode="bilinear", align_corners=False).clamp(0, 1)
    y = torch.tensor(d.target, dtype=torch.long)
    rng = np.random.default_rng(seed)
    order = torch.from_numpy(rng.permutation(len(x)))
    n_test = int(len(x) * test_fraction)
    test, train = order[:n_test], order[n_test:]
    return x[train], y[train], x[test], y[test]
