"""Shared fixtures: tiny models trained in seconds, with a planted trigger and a clean twin."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from auditor.spec import InputSpec
from auditor.synthetic.digits import load_digits_28
from auditor.synthetic.nets import SmallCNN
from auditor.synthetic.train import accuracy, attack_success_rate, train_classifier
from auditor.synthetic.triggers import PatchTrigger, poison
from auditor.target import ModelTarget

DIGITS_SPEC = InputSpec("image", (1, 28, 28))


@dataclass(frozen=True, eq=False)
class TwinModels:
    """A trojaned digits model, its clean twin, and the ground truth."""

    trojaned: ModelTarget
    clean: ModelTarget
    trojaned_module: torch.nn.Module
    clean_module: torch.nn.Module
    target_class: int
    trigger: PatchTrigger
    x_test: torch.Tensor
    y_test: torch.Tensor
    clean_accuracy: float
    attack_success: float


def train_digits_twins(target_class: int = 3, seed: int = 0, epochs: int = 8) -> TwinModels:
    torch.set_num_threads(min(2, torch.get_num_threads()))
    xtr, ytr, xte, yte = load_digits_28(seed)
    trigger = PatchTrigger(size=4, pattern_seed=7, top=-1, left=-1)  # bottom-right corner
    xp, yp = poison(xtr, ytr, trigger, target_class, rate=0.1, generator=torch.Generator().manual_seed(seed))
    torch.manual_seed(seed)
    trojaned = train_classifier(SmallCNN(), xp, yp, epochs=epochs, seed=seed)
    torch.manual_seed(seed + 100)
    clean = train_classifier(SmallCNN(), xtr, ytr, epochs=epochs, seed=seed + 100)
    return TwinModels(
        trojaned=ModelTarget.from_module(trojaned, DIGITS_SPEC, name="tiny-trojaned"),
        clean=ModelTarget.from_module(clean, DIGITS_SPEC, name="tiny-clean"),
        trojaned_module=trojaned, clean_module=clean, target_class=target_class, trigger=trigger,
        x_test=xte, y_test=yte, clean_accuracy=accuracy(trojaned, xte, yte),
        attack_success=attack_success_rate(trojaned, xte, yte, trigger, target_class),
    )


@pytest.fixture(scope="session")
def digits_twins() -> TwinModels:
    """Trained once per test session (~10 s on 2 CPU cores)."""
    twins = train_digits_twins()
    assert twins.attack_success > 0.9 and twins.clean_accuracy > 0.9, "fixture models failed to train"
    return twins
