"""FlowAM on tiny image and point-cloud models with a planted trigger and a clean twin."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch

from auditor.detectors import create
from auditor.detectors._flow_core import Priors, estimate_flows, maximise
from auditor.detectors.base import RunContext, count_hooks
from auditor.detectors.flow_am import Z_THRESHOLD
from auditor.hooks import LayerRef, capture_activations, choose_layers
from auditor.reports.pictures import render_points
from auditor.spec import InputSpec
from auditor.synthetic.nets import SmallCNN
from auditor.synthetic.points import (
    SHAPE_CLASSES,
    PointClusterTrigger,
    PointNet,
    make_point_dataset,
    train_pointnet,
)
from auditor.synthetic.train import accuracy, attack_success_rate
from auditor.synthetic.triggers import poison
from auditor.target import ModelTarget, SampleData

FAST = {"sanity": "0"}


def _run(target, data=None, seed=0, **options):
    result = create("flow_am").run(target, RunContext(seed=seed, data=data, options={**FAST, **options}))
    assert result.status == "ok", result.reason
    return result


# --------------------------------------------------------------------------------------------------
# Point-cloud twins (trained in a few seconds)


@dataclass(frozen=True, eq=False)
class PointTwins:
    trojaned: ModelTarget
    clean: ModelTarget
    target_class: int
    x_test: torch.Tensor
    y_test: torch.Tensor


POINTS_SPEC = InputSpec("points", (128, 3), layout="BN3")


@pytest.fixture(scope="module")
def point_twins() -> PointTwins:
    torch.set_num_threads(min(2, torch.get_num_threads()))
    x, y = make_point_dataset(40, 128, seed=0)
    xt, yt = make_point_dataset(10, 128, seed=1)
    trigger = PointClusterTrigger(num_points=16)
    xp, yp = poison(x, y, trigger, 2, rate=0.1, generator=torch.Generator().manual_seed(0))
    trojaned = train_pointnet(xp, yp, seed=0)
    clean = train_pointnet(x, y, seed=1)
    assert accuracy(trojaned, xt, yt) > 0.85 and accuracy(clean, xt, yt) > 0.85
    assert attack_success_rate(trojaned, xt, yt, trigger, 2) > 0.9
    return PointTwins(ModelTarget.from_module(trojaned, POINTS_SPEC, SHAPE_CLASSES, name="points-trojaned"),
                      ModelTarget.from_module(clean, POINTS_SPEC, SHAPE_CLASSES, name="points-clean"), 2, xt, yt)


# --------------------------------------------------------------------------------------------------
# Images


def test_am_reaches_its_class_and_describes_its_objective(digits_twins):
    r = _run(digits_twins.clean)
    assert r.metrics["am_success_rate_flow"] >= 0.9
    assert r.metrics["am_success_rate_unconstrained"] >= 0.9
    # self-describing objective, with the class's own label and the hooked layers
    assert "maximise logit of '<class>'" in r.description and "flow alignment at" in r.description
    assert "data-free" in r.description
    c3 = r.classes[3]
    assert c3.description.startswith("maximise logit of '3' + 1 × log-probability of '3' + 3 × flow alignment at ")
    assert [im.caption.split(" (")[0] for im in c3.images] == ["flow-guided AM", "unconstrained AM"]
    assert c3.images[0].pixels.shape == (28, 28)
    assert 0.0 <= c3.images[0].pixels.min() and c3.images[0].pixels.max() <= 1.0


def test_the_last_steps_settle_without_jitter():
    # an image optimised only under random shifts can miss its class at its own position, so settle
    # steps on the un-shifted image follow the jittered ones
    calls = []

    @dataclass(frozen=True)
    class CountingPriors(Priors):
        def shift(self, x, generator):
            calls.append(1)
            return super().shift(x, generator)

    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3)).eval()
    priors = CountingPriors("image", torch.tensor(0.0), torch.tensor(1.0), jitter=1)
    x0 = torch.full((3, 1, 4, 4), 0.5)
    flows = estimate_flows(model, [LayerRef("1", "head")], x0, torch.arange(3), 3, source="")
    result = maximise(model, flows, torch.arange(3), x0, priors, steps=7, lr=0.1, flow_weight=0.0,
                      generator=torch.Generator().manual_seed(0), settle_steps=3)
    assert len(calls) == 7  # 7 jittered steps, then 3 on the un-shifted image
    assert result.rows(slice(0, 1)).x.shape == (1, 1, 4, 4)


def test_trojaned_target_is_the_outlier_and_the_clean_twin_has_none(digits_twins):
    trojaned = _run(digits_twins.trojaned)
    clean = _run(digits_twins.clean)
    assert trojaned.flagged_classes == (digits_twins.target_class,)
    assert trojaned.classes[digits_twins.target_class].role == "backdoor target"
    assert clean.flagged_classes == ()
    assert trojaned.model_score > 0.5 > clean.model_score
    assert trojaned.threshold == pytest.approx(Z_THRESHOLD["image"])


def test_with_data_the_flows_come_from_the_samples(digits_twins):
    data = SampleData(digits_twins.x_test, digits_twins.y_test)
    r = _run(digits_twins.trojaned, data=data)
    assert "--data samples" in r.description and r.metrics["flows_from_data"] == 1.0
    assert r.metrics["am_success_rate_flow"] >= 0.9
    # the flow term pulls AM towards real class samples in the penultimate feature space
    assert r.metrics["penultimate_distance_flow"] < r.metrics["penultimate_distance_unconstrained"]
    # the backdoor statistic itself always uses data-free flows, so the verdict does not hinge on --data
    assert "the backdoor statistic uses the data-free estimate" in r.description
    assert r.flagged_classes == (digits_twins.target_class,)


def test_randomisation_check_degrades_and_lands_in_fidelity(digits_twins):
    r = _run(digits_twins.clean, sanity="1", sanity_steps="60", steps="100")
    fid = r.fidelity
    assert fid is not None and fid["stages"][0] == "trained (reseeded)" and len(fid["stages"]) >= 3
    sims = fid["similarity"]
    assert len(sims) == len(fid["stages"])
    assert sims[0] > 0.6  # two runs on the trained model agree
    assert sims[-1] < sims[0] - 0.3  # … and the fully randomised model's AM does not
    assert fid["verdict"] == "passes sanity check" and "Cascading randomisation" in r.description
    assert r.classes[0].images[0].fidelity["randomisation_spearman"] == pytest.approx(sims[-1])


def test_the_audited_model_is_never_mutated_and_no_hooks_are_left(digits_twins):
    model = digits_twins.trojaned.model
    before = {k: v.clone() for k, v in model.state_dict().items()}
    hooks = count_hooks(model)
    _run(digits_twins.trojaned, sanity="1", sanity_steps="20", steps="20", sanity_stages="2")
    assert count_hooks(model) == hooks
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(not p.requires_grad for p in model.parameters())


def test_same_seed_same_result(digits_twins):
    a = _run(digits_twins.trojaned, steps="30", synth_steps="30")
    b = _run(digits_twins.trojaned, steps="30", synth_steps="30")
    c = _run(digits_twins.trojaned, steps="30", synth_steps="30", seed=1)
    assert [x.score for x in a.classes] == [x.score for x in b.classes]
    assert all(np.array_equal(x.images[0].pixels, y.images[0].pixels) for x, y in zip(a.classes, b.classes))
    assert [x.score for x in a.classes] != [x.score for x in c.classes]


# --------------------------------------------------------------------------------------------------
# Point clouds


def test_point_am_reaches_its_class_and_flags_the_cluster_target(point_twins):
    trojaned = _run(point_twins.trojaned)
    clean = _run(point_twins.clean)
    for r in (trojaned, clean):
        assert r.metrics["am_success_rate_flow"] >= 0.9
        assert "point-continuity" in r.description and "data bounds" in r.description
        pic = r.classes[0].images[0].pixels
        assert pic.ndim == 3 and pic.shape[2] == 3 and r.classes[0].images[0].kind == "am"
    assert trojaned.flagged_classes == (point_twins.target_class,)
    assert clean.flagged_classes == ()


@pytest.mark.slow  # ~60 s alone, minutes on a loaded 2-core machine
def test_point_chamfer_and_randomisation(point_twins):
    data = SampleData(point_twins.x_test, point_twins.y_test)
    r = _run(point_twins.clean, data=data, sanity="1", sanity_steps="60", steps="100", sanity_stages="3")
    assert np.isfinite(r.metrics["chamfer_to_class_flow"]) and np.isfinite(r.metrics["chamfer_to_class_unconstrained"])
    # flow-guided clouds look more like the class than unconstrained ones
    assert r.metrics["chamfer_to_class_flow"] < r.metrics["chamfer_to_class_unconstrained"]
    fid = r.fidelity
    assert "chamfer" in fid["metric"]
    assert fid["similarity"][-1] > fid["similarity"][0]  # randomised clouds are further away than a rerun


def test_channels_first_point_model_is_handled_by_the_wrapper():
    torch.manual_seed(0)
    net = PointNet(4, channels_last=False, widths=(8, 16), head=8).eval()
    target = ModelTarget.from_module(net, InputSpec("points", (64, 3), layout="B3N"))
    r = _run(target, steps="5", synth_steps="5")
    assert len(r.classes) == 4 and all(np.isfinite(c.score) for c in r.classes)


# --------------------------------------------------------------------------------------------------
# Building blocks


def test_choose_layers_picks_stages_and_penultimate():
    img = ModelTarget.from_module(SmallCNN(), InputSpec("image", (1, 28, 28)))
    layers = choose_layers(img.model, torch.rand(2, 1, 28, 28))
    assert [ref.label for ref in layers] == ["features.1", "features.4", "features", "classifier.2"]
    assert layers[-1].role == "penultimate"
    pts = ModelTarget.from_module(PointNet(5, widths=(8, 16, 32), head=8), InputSpec("points", (32, 3)))
    layers = choose_layers(pts.model, torch.rand(2, 32, 3), max_layers=3)
    assert [ref.label for ref in layers] == ["features.1", "features", "classifier.2"]


def test_capture_activations_removes_hooks_even_on_error():
    model = ModelTarget.from_module(SmallCNN(), InputSpec("image", (1, 28, 28))).model
    refs = [LayerRef("model.features.1", "a"), LayerRef("model.classifier.3", "b", use_input=True)]
    with capture_activations(model, refs) as acts:
        model(torch.rand(2, 1, 28, 28))
        assert acts["a"].shape == (2, 16, 28, 28) and acts["b"].shape == (2, 64)
    assert count_hooks(model) == 0
    with pytest.raises(RuntimeError, match="boom"), capture_activations(model, refs):
        raise RuntimeError("boom")
    assert count_hooks(model) == 0
    with pytest.raises(KeyError):
        with capture_activations(model, [LayerRef("model.nope", "x")]):
            pass


def test_point_dataset_trigger_and_rendering():
    x, y = make_point_dataset(3, 64, seed=5)
    x2, _ = make_point_dataset(3, 64, seed=5)
    assert x.shape == (30, 64, 3) and torch.equal(x, x2) and set(y.tolist()) == set(range(10))
    assert float(x.norm(dim=2).max()) <= 1.0 + 1e-5
    trig = PointClusterTrigger(num_points=8, radius=0.05)
    xt = trig.apply(x, torch.Generator().manual_seed(0))
    moved = (xt != x).any(dim=2).sum(dim=1)
    assert bool((moved <= 8).all()) and bool((moved >= 6).all())
    centre = torch.tensor(trig.centre)
    assert int(((xt - centre).norm(dim=2) <= 0.05 + 1e-6).sum(dim=1).min()) >= 8
    first = PointClusterTrigger(num_points=8, channels_last=False).apply(x.transpose(1, 2), torch.Generator().manual_seed(0))
    assert torch.equal(first.transpose(1, 2), PointClusterTrigger(num_points=8).apply(x, torch.Generator().manual_seed(0)))
    pic = render_points(x[0].numpy())
    assert pic.ndim == 3 and pic.shape[2] == 3 and 0 <= pic.min() and pic.max() <= 1
    assert np.array_equal(pic, render_points(x[0].numpy())) and pic.min() < 0.9  # deterministic, not blank
