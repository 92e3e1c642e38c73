"""The explanation fidelity suite reproduces known results on tiny models (Rao et al. 2022; Adebayo et al. 2018)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from auditor.detectors.base import ClassEvidence, DetectorResult, EvidenceImage, RunContext, count_hooks
from auditor.fidelity import TriggeredInputs, attach_badges, choose_layers, render_fidelity_page, run_fidelity
from auditor.fidelity.aggatt import BINS, aggatt
from auditor.fidelity.grids import AllHeads, GridHarness, HeadView, assemble_cells, check_harness, split_cells
from auditor.fidelity.metrics import gaussian_smooth, localisation, spearman_rows, ssim_rows
from auditor.target import ModelTarget, SampleData

FAST = {"grids": 8, "ig_steps": 4, "randomisation_images": 8, "smoothing_kernels": (5, 17)}


def _triggered(twins, count: int = 32) -> TriggeredInputs:
    keep = twins.y_test != twins.target_class
    x = twins.trigger.apply(twins.x_test[keep][:count])
    return TriggeredInputs(x, twins.target_class, twins.trigger.box(28, 28), "planted 4×4 BadNets patch")


@pytest.fixture(scope="module")
def trojaned_report(digits_twins):
    context = RunContext(seed=0, data=SampleData(digits_twins.x_test, digits_twins.y_test), options=FAST)
    before = {k: v.clone() for k, v in digits_twins.trojaned.model.state_dict().items()}
    report = run_fidelity(digits_twins.trojaned, context, triggered=_triggered(digits_twins))
    return report, before


# ------------------------------------------------------------------------------------------------ grids


def test_cells_round_trip():
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).reshape(2, 3, 8, 8)
    cells = split_cells(x, 2)
    assert cells.shape == (8, 3, 4, 4)
    assert torch.equal(cells[1], x[0, :, :4, 4:])  # grid 0, cell 1 = top-right
    assert torch.equal(assemble_cells(cells, 2), x)


def test_difull_head_sees_only_its_cell_and_lean_mode_is_exact(digits_twins):
    model = digits_twins.clean.model
    layers = choose_layers(model, (1, 28, 28))
    harness = GridHarness(model, "full", 2, layers)
    check_harness(harness, (1, 28, 28), "cpu")
    grid = torch.rand((3, 1, 56, 56), generator=torch.Generator().manual_seed(0))
    with harness.attached(), torch.no_grad():
        heads = harness(grid)
        harness.lean = True
        lean = torch.stack([harness(grid, k) for k in range(4)], 1)
    with torch.no_grad():
        assert torch.allclose(heads[:, 3], model(grid[:, :, 28:, 28:]), atol=1e-5)
    assert torch.allclose(heads, lean, atol=1e-5)
    assert count_hooks(model) == 0


def test_dipart_all_heads_equal_single_heads(digits_twins):
    model = digits_twins.clean.model
    harness = GridHarness(model, "part", 2, choose_layers(model, (1, 28, 28)))
    check_harness(harness, (1, 28, 28), "cpu")  # raises when the heads disagree
    grid = torch.rand((2, 1, 56, 56), generator=torch.Generator().manual_seed(1))
    classes = torch.tensor([[0, 1, 2, 3], [4, 5, 6, 7]])
    with harness.attached(), torch.no_grad():
        every = AllHeads(harness, classes)(grid)
        one = torch.stack([HeadView(harness, k)(grid).gather(1, classes[:, k:k + 1])[:, 0] for k in range(4)], 1)
    assert torch.allclose(every, one, atol=1e-5)


def test_shared_backward_pass_equals_captum_classes(digits_twins):
    """Gradient / IxG / Grad-CAM / Layer-CAM from one backward pass equal Captum's own classes."""
    from captum.attr import InputXGradient, LayerGradCam, LayerGradientXActivation

    from auditor.fidelity.methods import activations, gradient_family

    model = digits_twins.clean.model
    layers = choose_layers(model, (1, 28, 28))
    harness = GridHarness(model, "full", 2, layers)
    grid = torch.rand((3, 1, 56, 56), generator=torch.Generator().manual_seed(2))
    target = torch.tensor([1, 4, 7])
    methods = ("gradient", "ixg", "gradcam", "layercam")
    with harness.attached():
        view = HeadView(harness, 0)
        point = harness.point("last")
        acts = activations(lambda g: harness(g), point, grid)
        harness.lean = True  # g from the attributed cell only; A from the full grid
        shared = gradient_family(methods, view, point, grid, target, acts)
        harness.lean = False
        ref_cam = LayerGradCam(view, point).attribute(grid, target=target)[:, 0]
        ref_ixg = LayerGradientXActivation(view, point).attribute(grid, target=target).sum(1)
        at_input = gradient_family(("ixg",), view, None, grid, target, grid)["ixg"]
        ref_input = InputXGradient(view).attribute(grid.clone(), target=target).sum(1)
    assert torch.allclose(shared["gradcam"], ref_cam, atol=1e-5)
    assert torch.allclose(shared["ixg"], ref_ixg, atol=1e-5)
    assert torch.allclose(at_input, ref_input, atol=1e-6)
    assert count_hooks(model) == 0


def test_layers_are_input_middle_last(digits_twins):
    layers = choose_layers(digits_twins.clean.model, (1, 28, 28))
    assert [c.role for c in layers] == ["input", "middle", "last"]
    assert layers[-1].shape == (32, 7, 7)  # SmallCNN's last spatial block
    assert layers[1].shape[1] == 14


# ------------------------------------------------------------------------------------------------ metrics


def test_localisation_and_smoothing_leak():
    maps = torch.zeros((3, 8, 8))
    maps[0, :4, :4] = 1.0          # all inside cell 0
    maps[1, :, :] = 1.0            # uniform
    maps[2, 4:, 4:] = -1.0         # only negative mass → 0
    L, inside = localisation(maps, (0, 0, 4, 4))
    assert np.allclose(L, [1.0, 0.25, 0.0]) and inside[0] == 16
    smoothed, _ = localisation(gaussian_smooth(maps[:1], 5), (0, 0, 4, 4))
    assert 0.5 < smoothed[0] < 1.0  # a Gaussian blur leaks mass across the cell border


def test_spearman_ssim_and_aggatt_bins():
    a = np.array([[1.0, 2.0, 3.0, 4.0], [0.0, 0.0, 1.0, 1.0]])
    assert np.allclose(spearman_rows(a, a), 1.0)
    assert np.allclose(spearman_rows(a, -a), -1.0)
    assert spearman_rows(a[:1], np.ones((1, 4)))[0] == 0.0  # constant map: no correlation
    img = np.random.default_rng(0).random((2, 16, 16))
    assert np.allclose(ssim_rows(img, img), 1.0)
    maps = np.random.default_rng(1).normal(size=(100, 8, 8))
    scores = np.linspace(0, 1, 100)
    bins = aggatt(maps, scores, np.zeros(100), (0, 0, 4, 4))
    assert [(b.lo, b.hi) for b in bins] == list(BINS)
    assert [b.count for b in bins] == [2, 3, 45, 45, 3, 2]
    assert bins[0].mean_score < bins[-1].mean_score
    assert max(float(np.abs(b.mean_map).max()) for b in bins) <= 1.0


# ------------------------------------------------------------------------------------------------ suite


def test_difull_known_results(trojaned_report):
    """Gradient, IxG and IntGrad localise perfectly on DiFull at every layer (anything less is a bug);
    Grad-CAM at the last layer spreads over the same-class copy and scores clearly lower."""
    report, _ = trojaned_report
    for method in ("gradient", "ixg", "intgrad"):
        for role in ("input", "middle", "last"):
            assert report.score(method, "DiFull", role).mean_L >= 0.99, (method, role)
    gradcam = report.score("gradcam", "DiFull", "last").mean_L
    assert gradcam < report.score("gradient", "DiFull", "last").mean_L - 0.3
    assert report.score("occlusion", "DiFull", "input").mean_L >= 0.99  # non-overlapping patches
    dipart = report.score("ixg", "DiPart", "input")
    assert dipart is not None and 0.5 < dipart.mean_L <= 1.0


def test_smoothing_leaks_more_with_bigger_kernels(trojaned_report):
    report, _ = trojaned_report
    ixg = {s.kernel: s.mean_L for s in report.smoothing if s.method == "ixg"}
    assert ixg[17] < ixg[5] < 1.0


def test_trigger_box_share_on_trojaned_vs_clean_twin(trojaned_report, digits_twins):
    """AggAtt of IxG on triggered inputs puts the trigger box in the top bins; the clean twin gives the null."""
    report, _ = trojaned_report
    ixg = report.trigger_score("ixg")
    assert ixg.area_share == pytest.approx(16 / 784)
    assert ixg.enrichment > 5.0
    assert ixg.bins[-1].box_share > 5 * ixg.area_share and ixg.bins[-1].box_share >= ixg.bins[0].box_share
    context = RunContext(seed=0, data=SampleData(digits_twins.x_test, digits_twins.y_test),
                         options={**FAST, "settings": (), "methods": ("ixg",), "randomisation_images": 2})
    clean = run_fidelity(digits_twins.clean, context, triggered=_triggered(digits_twins)).trigger_score("ixg")
    assert ixg.box_share_median > 3 * clean.box_share_median


def test_cascading_randomisation_known_results(trojaned_report):
    """Gradient decorrelates; IxG's signed correlation collapses while |IxG| stays input-dominated."""
    report, _ = trojaned_report
    gradient, ixg = report.curve("gradient"), report.curve("ixg")
    assert gradient.spearman_abs[0] == 1.0 and len(gradient.stages) >= 3
    assert gradient.final_abs < 0.3 and gradient.passes
    assert abs(ixg.final_signed) < 0.3
    assert ixg.final_abs > ixg.final_signed + 0.3


def test_suite_leaves_the_model_alone(trojaned_report, digits_twins):
    report, before = trojaned_report
    after = digits_twins.trojaned.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert count_hooks(digits_twins.trojaned.model) == 0
    assert report.to_dict()["layers"][0]["role"] == "input"


def test_html_page_is_self_contained_and_escaped(trojaned_report):
    report, _ = trojaned_report
    html = render_fidelity_page(report, title="<script>alert(1)</script>")
    assert "<script>" not in html and "&lt;script&gt;" in html
    assert "DiFull" in html and "fails sanity check" in html and "data:image/png;base64," in html


def test_custom_map_method_and_data_free_cells(digits_twins):
    """A project map method is scored like the built-ins; without --data, cells are synthesised."""

    def noise_gradient(model, x, classes):
        x = x.detach().requires_grad_(True)
        model(x).gather(1, classes[:, None]).sum().backward()
        return x.grad.sum(1)

    context = RunContext(seed=0, options={**FAST, "methods": ("gradient",), "settings": ("full",),
                                          "am_steps": 20, "randomisation_images": 4})
    report = run_fidelity(digits_twins.clean, context, maps={"my_map": noise_gradient})
    assert "activation maximisation" in report.cell_source
    assert report.score("my_map", "DiFull", "input").mean_L >= 0.99
    assert report.score("my_map", "DiFull", "last") is None  # project maps are input-level only


def test_refuses_point_clouds_and_ungradable_models(digits_twins):
    from dataclasses import replace

    with pytest.raises(ValueError, match="gradients"):
        run_fidelity(replace(digits_twins.clean, differentiable=False), RunContext())


# ------------------------------------------------------------------------------------------------ badges


def _class_map_detector(target: ModelTarget, context: RunContext) -> DetectorResult:
    """An input-agnostic class map: |mean gradient| of each class logit over uniform noise."""
    g = context.generator("cpu", 5)
    x = torch.rand((16, *target.spec.shape), generator=g).requires_grad_(True)
    classes = []
    for t in range(2):
        x.grad = None
        target.model(x)[:, t].sum().backward()
        m = x.grad.mean(0).sum(0).abs()
        m = (m / m.max()).numpy()
        classes.append(ClassEvidence(index=t, score=0.0, z=0.0, flagged=False, images=(
            EvidenceImage(m, "class map", kind="class_map"), EvidenceImage(m, "other", kind="am"))))
    return DetectorResult("toy_maps", "ok", model_score=0.0, classes=tuple(classes))


def test_attach_badges_fills_class_maps(digits_twins):
    target, context = digits_twins.clean, RunContext(seed=0)
    result = _class_map_detector(target, context)
    badged = attach_badges(result, target, context, rerun=_class_map_detector)
    for ev in badged.classes:
        class_map, other = ev.images
        assert class_map.fidelity["difull_L"] >= 0.99  # gradient maps cannot leave the head's cell
        assert class_map.fidelity["randomisation_rho"] < 0.5
        assert other.fidelity is None
    assert math.isfinite(badged.fidelity["difull_L_median"])
    assert result.classes[0].images[0].fidelity is None  # the input result is not modified
    assert count_hooks(target.model) == 0
    skipped = DetectorResult("x", "skipped", reason="no")
    assert attach_badges(skipped, target, context, rerun=_class_map_detector) is skipped
