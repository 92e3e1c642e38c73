"""Neural Cleanse on the tiny digits twins: finds the planted target, passes the clean twin."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from auditor.detectors import RunContext, create, registered
from auditor.detectors.neural_cleanse import anomaly_indices
from auditor.target import SampleData


@pytest.fixture(scope="module")
def clean_sample(digits_twins) -> SampleData:
    # a small clean set from the digits *test* split (never trained on), 10 per class
    x, y = digits_twins.x_test, digits_twins.y_test
    keep = torch.cat([torch.nonzero(y == c).squeeze(1)[:10] for c in range(10)])
    return SampleData(x[keep], y[keep], source="digits test split")


@pytest.fixture(scope="module")
def trojaned_result(digits_twins, clean_sample):
    return create("neural_cleanse").run(digits_twins.trojaned, RunContext(seed=0, data=clean_sample))


def test_registered_with_needs():
    info = registered()["neural_cleanse"].info
    assert info.needs_data and info.needs_gradients


def test_anomaly_index_is_low_side_median_mad():
    norms = np.array([100.0, 102.0, 98.0, 101.0, 99.0, 10.0])
    idx = anomaly_indices(norms)
    med = np.median(norms)
    mad = 1.4826 * np.median(np.abs(norms - med))
    assert idx[-1] == pytest.approx((med - 10.0) / mad)
    assert idx[-1] > 2 and np.all(idx[:-1] < 2)
    # a large mask is not anomalous on the low side
    assert anomaly_indices(np.array([100.0, 102.0, 98.0, 101.0, 99.0, 500.0]))[-1] < 0


def test_flags_trojaned_target(digits_twins, trojaned_result):
    r = trojaned_result
    assert r.status == "ok", r.reason
    assert r.flagged_classes == (digits_twins.target_class,)
    target = r.classes[digits_twins.target_class]
    assert target.role == "backdoor target"
    # the recovered trigger is small and actually works on held-out clean images
    assert target.metrics["mask_fraction"] < 0.1
    assert target.metrics["trigger_success"] > 0.9
    assert 0.5 < r.model_score <= 1.0
    kinds = {im.kind for im in target.images}
    assert {"mask", "pattern"} <= kinds
    mask = next(im for im in target.images if im.kind == "mask").pixels
    assert mask.shape == (28, 28) and mask.min() >= 0 and mask.max() <= 1
    # the mask's mass sits in the true trigger box (bottom-right 4×4) far above its area share
    t, l, b, rr = digits_twins.trigger.box(28, 28)
    inside = mask[t:b, l:rr].sum() / mask.sum()
    assert inside > 5 * (16 / 784)


def test_passes_clean_twin(digits_twins, clean_sample, trojaned_result):
    r = create("neural_cleanse").run(digits_twins.clean, RunContext(seed=0, data=clean_sample))
    assert r.status == "ok", r.reason
    assert r.flagged_classes == ()
    assert r.model_score < trojaned_result.model_score


def test_skips_without_data(digits_twins):
    r = create("neural_cleanse").run(digits_twins.clean, RunContext(seed=0))
    assert r.status == "skipped" and "--data" in r.reason


def test_threshold_override_and_determinism(digits_twins, clean_sample, trojaned_result):
    again = create("neural_cleanse").run(digits_twins.trojaned, RunContext(seed=0, data=clean_sample, threshold=1e6))
    assert again.flagged_classes == ()
    # same seed → same scores (the threshold only moves the decision)
    assert [c.score for c in again.classes] == pytest.approx([c.score for c in trojaned_result.classes])
