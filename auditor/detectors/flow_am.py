"""FlowAM: activation-flow activation maximisation, for image and point-cloud classifiers.

Tan 2024, "Activation-flow AM" (arXiv 2404.18760; ``shared/research/detectors.md`` §2): when a
classifier predicts different classes, its intermediate layers are activated differently — each class
has an *activation flow*. AM that keeps its input's activations on the class's flow yields
class-maximising inputs without a generative model (and, unlike generative AM, passes the model
randomisation sanity check).

Per class ``c`` we run two AMs in one batch:

* **flow-guided**: maximise ``z_c(x) − λ · mean_l d_l(x, flow_c)`` (``d_l`` the normalised squared
  distance of layer ``l``'s channel profile to the class's mean profile) with input priors;
* **unconstrained**: maximise ``z_c(x)`` with the same priors.

A trojaned target class reaches its logit through a shortcut (the trigger) far from its normal flow,
so dropping the flow term buys it either an outlying move away from the flow (log ratio of the
unconstrained to the flow-guided distance to the flow) or an outlying logit gain (logit gap). Each
class's z is the larger of the two leave-one-out robust z's among the model's classes; the outlier
threshold is calibrated on clean models that are never the model under test. The flows behind this
statistic are always the data-free ones (inputs the model itself assigns confidently to the class);
with ``--data`` the flow-guided AM shown in the report follows the samples' flows instead.

Fidelity: cascading randomisation re-initialises a deep copy's layers top-down and reruns the
flow-guided AM (Spearman rank correlation with the trained model's images, Chamfer for points).
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import numpy as np
import torch

from auditor.compute import REFERENCE_MAX_FLOPS
from auditor.detectors._flow_core import (
    AMResult,
    Flows,
    Priors,
    chamfer,
    estimate_flows,
    image_init,
    layer_profiles,
    maximise,
    points_init,
    synthesise_confident,
)
from auditor.detectors._flow_sanity import (
    describe_block,
    randomisation_blocks,
    randomised_copy,
    reinitialise_,
    spearman_per_row,
)
from auditor.detectors.base import ClassEvidence, Detector, EvidenceImage, Findings, RunContext, register
from auditor.hooks import LayerRef, choose_layers, with_graph_taps
from auditor.stats import leave_one_out_z, squash
from auditor.target import ModelTarget

# Outlier threshold on each class's z (the larger of its two leave-one-out robust z's, see _run).
# Calibrated on clean models that are never tested against it: ``bench/flow_am_calibrate.py --zoo
# bench/zoo/reference`` (the clean reference population of ``bench/zoo.py --reference`` — digits CNN/VGG/
# ResNet/MobileNet/ViT, shapes VGG/ResNet/MobileNet ×2, two PointNets; seeds disjoint from the benchmarked
# zoo — plus digits SmallCNNs of seeds 11–14 and PointNets of seeds 11–13; default options, data-free and
# with --data; output in bench/flow_am_calibration.json). Largest clean z per model, sorted (re-measured
# after the image AM objective gained its log-probability term and its un-jittered settle steps):
#   images (15 models): 5.65, 5.49, 5.34, 5.18, 4.90, 4.24, … → threshold 5.5, the smallest half-integer
#     that at most one clean reference model exceeds (≈ 7 % of them);
#   points (5 models): 6.72, 2.1, 2.0, 1.9, 1.7 → 1.25 × the largest (too few models to allow an exceedance).
Z_THRESHOLD = {"image": 5.5, "points": 1.25 * 6.72}
_THRESHOLD = max(Z_THRESHOLD.values())  # for a modality without calibration


@dataclass(frozen=True)
class FlowAMOptions:
    """Every knob, with its default. Set with ``--option flow_am.KEY=VALUE``."""

    steps: int = 150                 # Adam steps of each AM
    lr: float = 0.05                 # Adam step size (input units: pixels in [0,1] / point coordinates)
    flow_weight: float = 3.0         # λ: weight of the flow-alignment term (0.3 and 1 flagged less clearly on digits)
    max_layers: int = 4              # hooked layers: deepest stages + penultimate
    jitter: int = 2                  # images: random translation per step (pixels)
    tv_weight: float = 0.3           # images: total-variation weight
    continuity_weight: float = 1.0   # points: kNN-spacing weight
    knn: int = 4                     # points: neighbours in the continuity term
    samples_per_class: int = 32      # --data samples per class used for the flows
    synth_per_class: int = 8         # data-free: synthesised inputs per class
    synth_steps: int = 100           # data-free: synthesis steps
    confidence: float = 0.9          # data-free: keep inputs the model assigns with p ≥ this
    bn_weight: float = 0.05          # data-free: weight of the BatchNorm running-statistics prior
    sanity: bool = True              # run the cascading-randomisation check
    sanity_stages: int = 4           # randomisation stages (blocks re-initialised top-down)
    sanity_steps: int = 100          # AM steps per randomisation stage
    # images: weight of the log-probability term (the class must win, not only rise: without it digits
    # MobileNets/ViTs reached their class on 10–50 % of classes). Point AM reached its class without it,
    # and with it the clean calibration null widened (largest z 6.7 → 10.8), so points leave it out.
    ce_weight: float = 1.0
    settle_steps: int = 30           # images: un-jittered steps after the AM (the image must work where it is)
    z_threshold: float = 0.0         # 0 = calibrated default for the modality (see Z_THRESHOLD)

    @classmethod
    def from_context(cls, context: RunContext) -> FlowAMOptions:
        return cls(**{f.name: context.option(f.name, f.default) for f in fields(cls)})


@register(
    "flow_am",
    summary="Activation-flow AM: class-maximising inputs that follow each class's activation flow; a class "
            "reached by a shortcut far from its flow ⇒ backdoor target.",
    reference="Tan, activation-flow AM (arXiv 2404.18760); randomisation check: Adebayo et al. 2018",
    needs_gradients=True,
    needs_data=False,
    modalities=("image", "points"),
    # opt-in (--detectors flow_am): on the zoo it flags 3 of 20 clean models (shapes classes 4 and 8 on a
    # ResNet and two MobileNets) at the reference-calibrated threshold (bench/RESULTS.md, run `flow_am`),
    # so it does not vote in the default verdict; its class-maximising images are still worth a look
    default=False,
    options=tuple(f.name for f in fields(FlowAMOptions)),
    calibrated_flops=REFERENCE_MAX_FLOPS,
)
class FlowAMDetector(Detector):
    """See the module docstring; options in :class:`FlowAMOptions`."""

    def _run(self, target: ModelTarget, context: RunContext) -> Findings:
        opts = FlowAMOptions.from_context(context)
        model, spec, device = target.model, target.spec, target.device
        if spec.modality != "image":
            opts = replace(opts, ce_weight=0.0)
        k = target.num_classes
        modality = spec.modality
        lower, upper = _bounds(target, context)
        priors = Priors(modality, lower, upper, jitter=opts.jitter, tv_weight=opts.tv_weight,
                        continuity_weight=opts.continuity_weight, knn=opts.knn)

        def make_init(n: int, generator: torch.Generator) -> torch.Tensor:
            if modality == "points":
                return points_init(n, spec.num_points, generator, device, lower, upper)
            return image_init(n, spec.shape, generator, device)

        example = make_init(2, context.generator("cpu", salt=1))
        layers = choose_layers(model, example, opts.max_layers)
        if not layers:  # exported graphs inline their ops: hook a tapped deep copy instead
            tapped = with_graph_taps(model)
            if tapped is not None:
                model = tapped
                layers = choose_layers(model, example, opts.max_layers)
        if not layers:
            raise ValueError("could not find intermediate layers to hook (no stage or linear head found)")

        # The backdoor statistic always uses data-free flows (inputs the model itself assigns to each
        # class): in calibration they separated trojaned targets from clean classes far better than
        # flows from --data samples. With --data, the flow-guided AM that is *shown* (and measured
        # against real samples, and sanity-checked) follows the flows of the samples.
        context.report("estimating activation flows", 0.0)
        synth_flows, synth_x, synth_y = _synthetic_flows(model, layers, k, context, opts, priors, make_init)
        data_flows = _data_flows(model, layers, k, context, opts, device)

        # flow-guided and unconstrained AM in one batch: rows [0, k) and [k, 2k), same start
        context.report("activation maximisation", 0.1)
        classes = torch.arange(k, device=device)
        x0 = make_init(k, context.generator("cpu", salt=2))
        weights = torch.cat([torch.full((k,), opts.flow_weight), torch.zeros(k)]).to(device)
        am = maximise(model, synth_flows, classes.repeat(2), torch.cat([x0, x0]), priors, steps=opts.steps,
                      lr=opts.lr, flow_weight=weights, ce_weight=opts.ce_weight, settle_steps=opts.settle_steps,
                      generator=context.generator("cpu", salt=3),
                      tick=_ticker(context, "activation maximisation", 0.1, 0.4, opts.steps))
        guided, free = _split(am, k)
        off_flow, logit_gap = _shortcut(guided, free, k)

        if data_flows is not None:
            flows, flow_x, flow_y = data_flows
            shown = maximise(model, flows, classes, x0, priors, steps=opts.steps, lr=opts.lr,
                             flow_weight=opts.flow_weight, generator=context.generator("cpu", salt=3),
                             ce_weight=opts.ce_weight, settle_steps=opts.settle_steps,
                             tick=_ticker(context, "activation maximisation (data flows)", 0.4, 0.5, opts.steps))
            free_shown = AMResult(free.x, free.logits, free.profiles, flows.distances(free.profiles, classes))
        else:
            flows, flow_x, flow_y, shown, free_shown = synth_flows, synth_x, synth_y, guided, free
        metrics_per_class, model_metrics = _class_metrics(target, model, flows, shown, free_shown, flow_x, flow_y,
                                                           context)
        z_off, z_gap = np.full(k, np.nan), np.full(k, np.nan)
        valid = np.isfinite(off_flow) & np.isfinite(logit_gap)
        if not valid.any():
            return _invalid(k, "the model produced non-finite logits during activation maximisation")
        # a shortcut shows as an outlying flow divergence *or* an outlying logit gain: z is the larger of
        # the two leave-one-out robust z's (the calibration below is of this maximum)
        if valid.sum() > 2:
            z_off[valid], z_gap[valid] = leave_one_out_z(off_flow[valid]), leave_one_out_z(logit_gap[valid])
        else:
            z_off[valid], z_gap[valid] = 0.0, 0.0
        z = np.fmax(z_off, z_gap)
        stat = z  # the per-class score is this combined robust z (its parts are in the metrics)
        metrics_per_class.update({"log_divergence_ratio": off_flow, "z_divergence_ratio": z_off,
                                  "z_logit_gap": z_gap})
        threshold = float(context.threshold if context.threshold is not None
                          else (opts.z_threshold or Z_THRESHOLD.get(modality, _THRESHOLD)))

        fidelity = None
        if opts.sanity:
            fidelity = _sanity_check(target, model, layers, flows, flow_x, flow_y, shown.x, x0, priors, opts,
                                     context, make_init)

        objective = _objective_text(target, layers, opts.flow_weight, opts.ce_weight)
        classes_out = []
        for c in range(k):
            flagged = bool(valid[c] and z[c] > threshold)
            m = {name: float(values[c]) for name, values in metrics_per_class.items()}
            pics = _pictures(target, shown.x[c], free.x[c], m, fidelity)
            classes_out.append(ClassEvidence(
                index=c, score=float(stat[c]), z=float(z[c]), flagged=flagged,
                strength=float(z[c]) / threshold if valid[c] and threshold > 0 else float("nan"),
                role="backdoor target" if flagged else "", metrics=m, images=pics,
                description=objective.format(label=target.label(c)) + (
                    f"; flow-guided AM reached logit {m['logit_flow']:.2f} "
                    f"({'classified as its class' if m['success_flow'] else 'NOT classified as its class'}), "
                    f"unconstrained {m['logit_unconstrained']:.2f}"),
                valid=bool(valid[c]),
                invalid_reason="" if valid[c] else "non-finite logits",
            ))
        z_max = float(np.nanmax(z)) if np.isfinite(z).any() else 0.0
        model_metrics.update({"max_z": z_max, "layers": float(len(layers))})
        sanity_text = ""
        if fidelity is not None:
            sanity_text = f" Cascading randomisation: {fidelity['verdict']}."
        return Findings(
            model_score=squash(z_max, threshold, width=2.0),
            classes=tuple(classes_out),
            threshold=threshold,
            description=(
                f"For every class, {objective.format(label='<class>')} ({opts.steps} Adam steps"
                + (f" + {opts.settle_steps} without jitter" if modality == "image" and opts.settle_steps else "")
                + f", {_prior_text(modality, opts)}), and the same without the flow term (unconstrained AM). "
                f"Activation flows from {flows.source}"
                + (f"; the backdoor statistic uses the {synth_flows.source}. " if data_flows is not None else ". ")
                + "Per class, two shortcut signals: log(distance to the class flow, unconstrained / "
                "flow-guided) and the logit gap (unconstrained − flow-guided); classes where either has a "
                f"leave-one-out robust z > {threshold:.1f} (calibrated on clean models) are flagged."
                f"{sanity_text}"
            ),
            metrics=model_metrics,
            fidelity=fidelity,
        )


# --------------------------------------------------------------------------------------------------
# Pieces of _run


def _bounds(target: ModelTarget, context: RunContext) -> tuple[torch.Tensor, torch.Tensor]:
    """Images: [0, 1]. Points: the data's per-axis bounds when --data is given, else [−1, 1]^3."""
    device = target.device
    if target.spec.modality == "points":
        if context.data is not None and len(context.data) > 0:
            x = context.data.x.to(device).reshape(-1, 3)
            finite = x[torch.isfinite(x).all(1)]
            if len(finite):
                return finite.min(0).values, finite.max(0).values
        return torch.full((3,), -1.0, device=device), torch.full((3,), 1.0, device=device)
    return torch.tensor(0.0, device=device), torch.tensor(1.0, device=device)


def _data_flows(model, layers, k, context: RunContext, opts: FlowAMOptions, device):
    """Flows from --data samples (their labels, else the model's own predictions), or None."""
    data = context.data
    if data is None or len(data) == 0:
        return None
    x = data.x.to(device)
    if data.y is not None:
        y, how = data.y.long().to(device), "labels"
    else:
        y, how = layer_profiles(model, layers, x)[1].argmax(1), "the model's own predictions as labels"
    keep = torch.cat([torch.nonzero(y == c).squeeze(1)[: opts.samples_per_class] for c in range(k)])
    keep, _ = keep.sort()
    x, y = x[keep], y[keep]
    flows = estimate_flows(model, layers, x, y, k, source="")
    missing = int((flows.counts == 0).sum())
    source = (f"--data samples (up to {opts.samples_per_class} per class, {len(x)} in all, {how})"
              + (f"; {missing} class(es) without samples use the all-class mean" if missing else ""))
    return Flows(flows.layers, flows.means, flows.spread, flows.counts, source), x, y


def _synthetic_flows(model, layers, k, context: RunContext, opts: FlowAMOptions, priors: Priors, make_init):
    """Data-free flows: synthesised inputs the model assigns confidently to each class (with BatchNorm
    running statistics as a prior where the model has them). Returns (flows, inputs, labels)."""
    x, y, p = synthesise_confident(
        model, k, opts.synth_per_class, make_init, priors, steps=opts.synth_steps, lr=opts.lr,
        confidence=opts.confidence, bn_weight=opts.bn_weight, generator=context.generator("cpu", salt=4),
        tick=_ticker(context, "synthesising class inputs", 0.0, 0.1, opts.synth_steps))
    confident = p >= opts.confidence
    # a class with no confident input keeps all of its inputs rather than losing its flow
    for c in range(k):
        rows = y == c
        if not bool(confident[rows].any()):
            confident |= rows
    n_conf = int((p >= opts.confidence).sum())
    has_bn = any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())
    source = (f"data-free estimate: {n_conf} of {len(x)} synthesised inputs the model assigns to their class "
              f"with p ≥ {opts.confidence:g}"
              + (" (BatchNorm running statistics as the layer prior)" if has_bn and opts.bn_weight > 0
                 else " (no BatchNorm statistics in this model)"))
    x, y = x[confident], y[confident]
    return estimate_flows(model, layers, x, y, k, source=source), x, y


def _shortcut(guided: AMResult, free: AMResult, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per class, what the class gains once the flow term is dropped: (log of the unconstrained /
    flow-guided distance to the class flow, logit gap unconstrained − flow-guided). NaN where the
    logits are not finite."""
    rows = torch.arange(k, device=guided.logits.device)
    z_f = guided.logits[rows, rows].double().cpu().numpy()
    z_u = free.logits[rows, rows].double().cpu().numpy()
    d_f = guided.distances.clamp_min(0).sqrt().mean(1).double().cpu().numpy()
    d_u = free.distances.clamp_min(0).sqrt().mean(1).double().cpu().numpy()
    ok = np.isfinite(z_f) & np.isfinite(z_u) & np.isfinite(d_f) & np.isfinite(d_u)
    with np.errstate(divide="ignore", invalid="ignore"):
        off_flow = np.log(np.maximum(d_u, 1e-6) / np.maximum(d_f, 1e-6))
    return np.where(ok, off_flow, np.nan), np.where(ok, z_u - z_f, np.nan)


def _split(am: AMResult, k: int) -> tuple[AMResult, AMResult]:
    """Rows [0, k) (flow-guided) and [k, 2k) (unconstrained) of the batched AM."""
    return am.rows(slice(0, k)), am.rows(slice(k, 2 * k))


def _class_metrics(target: ModelTarget, model: torch.nn.Module, flows: Flows, guided: AMResult, free: AMResult,
                   flow_x: torch.Tensor, flow_y: torch.Tensor, context: RunContext):
    k = target.num_classes
    rows = torch.arange(k, device=guided.logits.device)
    z_f = guided.logits[rows, rows].double().cpu().numpy()
    z_u = free.logits[rows, rows].double().cpu().numpy()
    div_f = guided.distances.clamp_min(0).sqrt().double().cpu().numpy()  # (K, L) in spread units
    div_u = free.distances.clamp_min(0).sqrt().double().cpu().numpy()
    between = []
    for ref in flows.layers:
        diff = (free.profiles[ref.label] - guided.profiles[ref.label]).norm(dim=1) / flows.spread[ref.label]
        between.append(diff.double().cpu().numpy())
    between = np.stack(between, 1)  # (K, L)
    gap = z_u - z_f
    d_u, d_f = div_u.mean(1), div_f.mean(1)
    per_class: dict[str, np.ndarray] = {
        "logit_flow": z_f,
        "logit_unconstrained": z_u,
        "logit_gap": gap,
        "success_flow": (guided.logits.argmax(1) == rows).double().cpu().numpy(),
        "success_unconstrained": (free.logits.argmax(1) == rows).double().cpu().numpy(),
        "flow_divergence": between.mean(1),
        "flow_distance_flow": d_f,
        "flow_distance_unconstrained": d_u,
    }
    for j, ref in enumerate(flows.layers):
        per_class[f"flow_divergence@{ref.label}"] = between[:, j]
    # distances to real (or, data-free, synthesised) class inputs in the penultimate feature space
    pen = flows.layers[-1].label
    feats = layer_profiles(model, [flows.layers[-1]], flow_x)[0][pen] if len(flow_x) else None
    d_f, d_u = np.full(k, np.nan), np.full(k, np.nan)
    ch_f, ch_u = np.full(k, np.nan), np.full(k, np.nan)
    for c in range(k):
        members = flow_y == c
        if feats is None or not bool(members.any()):
            continue
        d_f[c] = float((feats[members] - guided.profiles[pen][c]).norm(dim=1).mean())
        d_u[c] = float((feats[members] - free.profiles[pen][c]).norm(dim=1).mean())
        if target.spec.modality == "points" and context.data is not None:
            samples = flow_x[members][:16]
            ch_f[c] = float(chamfer(guided.x[c].expand(len(samples), -1, -1), samples).mean())
            ch_u[c] = float(chamfer(free.x[c].expand(len(samples), -1, -1), samples).mean())
    per_class["penultimate_distance_flow"] = d_f
    per_class["penultimate_distance_unconstrained"] = d_u
    model_metrics = {
        "am_success_rate_flow": float(per_class["success_flow"].mean()),
        "am_success_rate_unconstrained": float(per_class["success_unconstrained"].mean()),
        "penultimate_distance_flow": _nanmean(d_f),
        "penultimate_distance_unconstrained": _nanmean(d_u),
        "flows_from_data": 1.0 if context.data is not None else 0.0,
    }
    if target.spec.modality == "points" and context.data is not None:
        per_class["chamfer_to_class_flow"] = ch_f
        per_class["chamfer_to_class_unconstrained"] = ch_u
        model_metrics["chamfer_to_class_flow"] = _nanmean(ch_f)
        model_metrics["chamfer_to_class_unconstrained"] = _nanmean(ch_u)
    return per_class, model_metrics


def _nanmean(v: np.ndarray) -> float:
    v = v[np.isfinite(v)]
    return float(v.mean()) if v.size else float("nan")


def _sanity_check(target: ModelTarget, model: torch.nn.Module, layers: tuple[LayerRef, ...], flows: Flows,
                  flow_x, flow_y,
                  trained_x: torch.Tensor, x0: torch.Tensor, priors: Priors, opts: FlowAMOptions,
                  context: RunContext, make_init) -> dict:
    """Rerun the flow-guided AM on progressively randomised deep copies; compare with the trained result.

    Every run, including a *reseeded* run on the trained model (the reference: how similar two AM runs
    of the same model are), starts from its own random start, so similarity never comes from a shared
    start. With --data the flows are re-estimated on each randomised copy from the same samples;
    data-free, the synthesis of confident inputs is rerun on each copy too.
    """
    k, modality = target.num_classes, target.spec.modality
    classes = torch.arange(k, device=target.device)
    example = x0[:2] if len(x0) >= 2 else torch.cat([x0, x0])
    blocks = randomisation_blocks(model, example, opts.sanity_stages)
    clone = randomised_copy(model)
    stage_names = ["trained (reseeded)"] + [f"+ {describe_block(b)}" for b in blocks]
    total = len(stage_names)

    def run(model, stage: int) -> torch.Tensor:
        if context.data is not None and len(flow_x):
            stage_flows = estimate_flows(model, layers, flow_x, flow_y, k, flows.source)
        else:
            # data-free: the whole procedure reruns, synthesis included, so that no input made by the
            # trained model carries its picture into the randomised one
            sx, sy, _ = synthesise_confident(
                model, k, min(opts.synth_per_class, 2), make_init, priors, steps=opts.sanity_steps,
                lr=opts.lr, confidence=opts.confidence, bn_weight=opts.bn_weight,
                generator=context.generator("cpu", salt=400 + stage))
            stage_flows = estimate_flows(model, layers, sx, sy, k, flows.source)
        start = make_init(k, context.generator("cpu", salt=100 + stage))
        frac0 = 0.5 + 0.5 * stage / total
        res = maximise(model, stage_flows, classes, start, priors, steps=opts.sanity_steps, lr=opts.lr,
                       flow_weight=opts.flow_weight, generator=context.generator("cpu", salt=200 + stage),
                       ce_weight=opts.ce_weight, settle_steps=opts.settle_steps,
                       tick=_ticker(context, "randomisation check", frac0, frac0 + 0.5 / total, opts.sanity_steps))
        return res.x

    results = [run(model, 0)]
    for s, block in enumerate(blocks, start=1):
        reinitialise_(clone, block, context.generator("cpu", salt=300 + s))
        results.append(run(clone, s))

    if modality == "points":
        per_stage = [float(chamfer(trained_x, r).mean()) for r in results]
        ref, full = per_stage[0], per_stage[-1]
        # degraded = the fully randomised model's AM is clearly further from the trained one than a rerun
        passes = bool(full >= 2.0 * ref)
        metric = "chamfer distance to the trained model's flow-guided AM (higher = less similar)"
    else:
        per_stage = [float(np.nanmedian(spearman_per_row(trained_x, r))) for r in results]
        ref, full = per_stage[0], per_stage[-1]
        passes = bool(full <= 0.3 or full <= 0.5 * ref)
        metric = "median per-class Spearman rank correlation with the trained model's flow-guided AM"
    verdict = "passes sanity check" if passes else "fails sanity check"
    return {
        "method": "cascading model randomisation (top-down), flow-guided AM rerun per stage",
        "metric": metric,
        "stages": stage_names,
        "similarity": per_stage,
        "reference": ref,
        "fully_randomised": full,
        "passes": passes,
        "verdict": verdict,
    }


def _objective_text(target: ModelTarget, layers, flow_weight: float, ce_weight: float) -> str:
    where = ", ".join(ref.label for ref in layers)
    prob = "" if not ce_weight else (f"{ce_weight:g} × log-probability of " + "'{label}' + ")
    return "maximise logit of '{label}' + " + prob + f"{flow_weight:g} × flow alignment at {where}"


def _prior_text(modality: str, opts: FlowAMOptions) -> str:
    if modality == "points":
        return (f"point-continuity {opts.continuity_weight:g} × mean {opts.knn}-NN spacing, points clamped to "
                f"the data bounds")
    return f"jitter ±{opts.jitter} px, total variation {opts.tv_weight:g}, pixels clamped to [0, 1]"


def _pictures(target: ModelTarget, x_flow: torch.Tensor, x_free: torch.Tensor, m: dict, fidelity) -> tuple:
    fid = None
    if fidelity is not None:
        key = "randomisation_chamfer" if target.spec.modality == "points" else "randomisation_spearman"
        fid = {key: float(fidelity["fully_randomised"]), "sanity_passed": float(fidelity["passes"])}
    return (
        EvidenceImage(_to_picture(x_flow, target), f"flow-guided AM (logit {m['logit_flow']:.2f})", kind="am",
                      fidelity=fid),
        EvidenceImage(_to_picture(x_free, target), f"unconstrained AM (logit {m['logit_unconstrained']:.2f})",
                      kind="am"),
    )


def _to_picture(x: torch.Tensor, target: ModelTarget) -> np.ndarray:
    arr = x.detach().cpu().numpy()
    if target.spec.modality == "points":
        from auditor.reports.pictures import render_points

        return render_points(arr)
    arr = np.clip(arr, 0.0, 1.0)
    return arr[0] if arr.shape[0] == 1 else np.transpose(arr[:3], (1, 2, 0))


def _ticker(context: RunContext, stage: str, start: float, end: float, steps: int):
    def tick(step: int) -> None:
        context.check_time()
        if step % 25 == 0:
            context.report(stage, start + (end - start) * step / max(steps, 1))

    return tick


def _invalid(k: int, reason: str) -> Findings:
    classes = tuple(
        ClassEvidence(index=t, score=float("nan"), z=float("nan"), flagged=False, valid=False, invalid_reason=reason)
        for t in range(k)
    )
    return Findings(model_score=0.0, classes=classes, description=reason, metrics={"invalid": 1.0})

