"""Input-agnostic saliency: class-level maps from unrestricted inputs, and the backdoor signatures in them.

After Akhtar & Jalwana, "Rethinking interpretation: input-agnostic saliency mapping of deep visual
classifiers" (AAAI 2023, arXiv 2303.17836). The paper's exact algorithm (distributions, step rule,
norm, radius, refinement) is not published in what we could read, so this is a reconstruction with
every one of those choices exposed as an option (see ``shared/research/detectors.md`` §1).

All classes are processed in one batch. For every class t:

1. **Probe.** A pool of inputs from unrestricted distributions (uniform and Gaussian noise, smooth
   blobs, gratings/checkerboards, flat shapes; plus ``--data`` samples when given) is classified.
   ``sink_share`` = the share of the pool the model assigns to t. Backdoored models often send whole
   distributions to their target ("noise sink").
2. **Universal map (ℓ2 ball).** Fresh samples that the model assigns to *other* classes are nudged
   toward t (descent on cross-entropy); the normalised gradients are integrated (momentum) into one
   perturbation ρ_t that is projected onto an ℓ2 ball after every step. ``uap_flip`` / ``uap_margin``
   measure how well that small universal perturbation sends held-out samples to t; its refined
   magnitude is the class map the report shows.
   **Shortcut.** The same loop with a wide ball (RMS 0.5 per pixel): the mean margin z_t − max_{j≠t} z_j
   of held-out other-class samples after adding it, divided by the median over classes of |that
   margin|, is ``shortcut_margin`` ("how many times harder than a typical class"). A margin does not
   saturate the way a flip rate does, and the wide ball reaches whole-image triggers too: a backdoor
   target is driven much harder by one universal pattern than a clean class is. The ratio makes it
   blind to the logits' overall scale (a model trained to larger logits is not more suspicious).
3. **Compact map (pixel-budget ball).** A plain universal perturbation is whole-image and does not
   localise a patch trigger, so a second map adds sparsity pressure: a mask m_t projected onto the
   capped simplex {0 ≤ m ≤ 1, Σm ≤ budget·H·W} (an ℓ1 ball intersected with the box) and a pattern
   p_t, applied as x' = (1 − m)·x + m·p, optimised for a ladder of budgets at once. The second half of
   the steps binarises the mask (straight-through top-k) so that the result is a region, not a blend.
4. **Window scan (position-agnostic patch).** One full-image pattern per class is optimised while each
   start sample gets it pasted through a randomly placed square window (4 % of the image); then every
   window of a half-overlapping grid is screened with its own crop of the pattern on a few held-out
   inputs per class, and the best few are measured on all of them. ``window_margin`` is the best
   window's mean margin in units of the median class's |margin| (like ``shortcut_margin``);
   ``window_flip`` the share of inputs it sends to t. The screened margins, spread over each window's
   pixels, are the **location map** ("where a small universal patch works"). Backdoored CNNs with
   global pooling often respond to their trigger anywhere, so this map shows where the model reacts,
   not necessarily where the attacker put the trigger (bench/RESULTS.md §3).
5. **Transplant.** The binarised mask and its pattern are pasted onto *held-out* inputs that the model
   assigns to other classes (drawn afresh, least t-like first); ``transplant_asr@b`` is the share sent
   to t. A backdoor target is reached by a small region from almost anywhere; a clean class is not.
   A flagged class is called a "backdoor target" when the ladder's region or the best window (both
   ≤ 10 % of the image) flips ≥ 50 % of them, or when its score is extreme; otherwise "unusual".

6. **Channel stimulation (opt-in, ``channel_stimulation=report|fuse``).** After ABS (Liu et al., CCS
   2019): a backdoor is learnt as a few inner channels that, once the trigger lights them, override the
   rest of the input, whatever the trigger looks like in pixels. At a middle-deep stage (the one before
   the deepest), every channel in turn is set to ``stimulation_level`` × the layer's 99th-percentile
   activation over its whole map, on ``stimulation_inputs`` held-out inputs per class;
   ``stimulation_margin`` is, per class, the largest 20th-percentile margin toward t that one channel
   gives the inputs outside t, in units of the median class's |margin|. Chosen on dev draws 1–6, it
   raised the dev AUROC on draws 7–9 (0.853 → 0.871), which it was not chosen on, but lowered it on the
   benchmarked zoo (0.92 → 0.89) and on a foreign population, and on every population it added one
   clean flag, each on a MobileNet (bench/RESULTS.md §3 "Stop 29"). So it is off by default; ``report``
   adds it to each class's metrics, ``fuse`` also fuses it (with its calibration constant and the
   unchanged threshold).

7. **Feature dominance (opt-in, ``feature_dominance=true``).** After FreeEagle (Fu et al., USENIX
   Security 2023): activations at a middle-deep stage are optimised so that the rest of the network
   assigns them to each class in turn; a class whose logit stands out in the *other* classes' rows is
   driven from anywhere in feature space, whatever its trigger looks like in pixels. Reported as
   ``feature_dominance``, not fused: it raised the dev AUROC on the two draws it was chosen on but
   lowered it on a third draw scored afterwards (bench/RESULTS.md §3, stop 19).

Statistics are made relative within the model (value minus the median over the other classes) and
turned into z-scores with constants measured on *clean* models that are not under test
(:data:`CALIBRATION`, produced by ``bench/calibrate_saliency.py``). With ``scale=hybrid`` (an option,
not the default) the z's scale is the larger of the clean models' and the spread of the scanned model's
own other classes, so a class must also stand out within its own model: meant for networks whose classes
all spread widely (a standard-size ResNet-18's clean classes did, bench/RESULTS.md §8). The class score
is the mean of the two largest calibrated z's over the fused statistics (a backdoor raises several at once).
The probe's sink share and the small ball's flip rate are reported but not fused: neither raises the
AUROC on the 25-model dev split, and the sink share flagged more clean models on the benchmark (some
classes collect noise on clean models too; bench/RESULTS.md §3).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from auditor.compute import REFERENCE_MAX_FLOPS
from auditor.detectors import _saliency_core as core
from auditor.detectors.base import ClassEvidence, Detector, EvidenceImage, Findings, RunContext, register
from auditor.errors import OptionError
from auditor.hooks import display_name
from auditor.sampling import SAMPLER_KINDS, unrestricted_samples
from auditor.stats import squash
from auditor.target import ModelTarget

# --------------------------------------------------------------------------------------------------
# Calibration (see bench/calibrate_saliency.py, which prints this block).
#
# For every fused statistic s, the *relative* value r_t = s_t − median_{j≠t} s_j is computed per class;
# CALIBRATION[s] = (centre, scale) of r over all classes of clean reference models, with centre the
# median and scale = max(1.4826·MAD, (q90 − q50)/1.2816, floor) — the second term keeps the scale honest
# for statistics that are zero for most classes. z_t = (r_t − centre) / max(scale, spread_t), where
# spread_t = 1.4826·MAD of the scanned model's other classes (:func:`within_model_spread`) with option
# ``scale=hybrid``: a class must stand out against the clean models *and* against its own model's
# classes. The default ``scale=reference`` is z_t = (r_t − centre) / scale: on a held-out dev draw hybrid
# ranked trojaned models a little worse (AUROC 0.862 against 0.866; bench/RESULTS.md §3 "Stop 23").
#
# Obtained from 33 clean reference models — 8 digits SmallCNNs (seeds 1–8) and the 25 clean image models
# of `bench/zoo.py --reference` (digits CNN/VGG/ResNet/MobileNet/ViT, shapes VGG/ResNet/MobileNet; seeds
# 8000–8010 and 8013–8026, disjoint from every benchmarked zoo member and test fixture) — via
# `python bench/calibrate_saliency.py --zoo bench/zoo/reference --digits-seeds 1-8`, default options, seed 0.
CALIBRATION: dict[str, tuple[float, float]] = {
    "transplant_asr": (0.0000, 0.1634),
    "map_concentration": (0.0000, 0.0323),
    "shortcut_margin": (0.0000, 0.4432),
    "window_margin": (0.0000, 0.6103),
    # fused only with channel_stimulation=fuse. From the 33 clean reference models as rebuilt in stop 23
    # (`bench/neuron_stimulation.py`, the probe it was chosen with; the four above predate that rebuild)
    "stimulation_margin": (0.0000, 1.4595),
}
#: The default decision threshold on the class score (:func:`fused_class_score`): the smallest
#: half-integer above every clean reference model's largest class score (leave-one-model-out scores:
#: median 1.8, max 3.39 on a shapes VGG). The dev split's 25 trojaned models (`--dev-zoo bench/zoo/dev`,
#: never scored by the bench) scored 1.4–66, median 4.6; AUROC 0.878 against the clean scores (0.956 on
#: the first 13, on which the statistics were chosen). The same rule gives 3.5 for ``scale=hybrid`` on the
#: reference population as rebuilt in stop 23 (largest score 3.10 with these constants, 3.39 leave-one-out;
#: bench/RESULTS.md §3 "Stop 23").
DEFAULT_THRESHOLD = 3.5
#: Channels the compute plan assumes at the stimulated stage (the real count is known only when the
#: model runs; the zoo's networks have 32–128 there).
STIMULATED_CHANNELS = 256
#: The z scales of option ``scale`` (the first is the default).
SCALES = ("reference", "hybrid")
#: A class whose score exceeds ``EXTREME_FACTOR × threshold`` is called a backdoor target even when the
#: transplant check does not reach 50 % (e.g. whole-image triggers that no small region reproduces).
EXTREME_FACTOR = 2.0
#: Statistics fused into the class score (each "higher = more suspicious"): ``transplant_asr`` mean
#: transplant success over the budget ladder; ``map_concentration`` share of the ℓ2 universal map's mass in
#: its top 5 % pixels (a backdoor's universal direction is compact); ``shortcut_margin`` mean margin of
#: held-out inputs pushed by the wide-ball universal perturbation, in units of the median class's
#: |margin| (scale-free: bench/RESULTS.md §3); ``window_margin`` the same margin for the best window of
#: the position-agnostic patch scan. Chosen on the dev split against the clean reference models
#: (``bench/calibrate_saliency.py --dev-zoo``, ``bench/saliency_fusion.py``), never on the benchmarked zoo.
#: Option ``channel_stimulation=fuse`` adds ``stimulation_margin`` (item 6 above).
FUSED_STATISTICS: tuple[str, ...] = ("transplant_asr", "map_concentration", "shortcut_margin", "window_margin")
#: Values of option ``channel_stimulation`` (the first is the default).
STIMULATION_MODES = ("off", "report", "fuse")

_DEFAULTS = {
    "pool": 600,                 # probe inputs drawn from the unrestricted distributions
    "kinds": ",".join(SAMPLER_KINDS),
    "budgets": (0.01, 0.03, 0.08),  # mask area ladder, fractions of the image
    "starts": 8,                 # optimisation samples per class for the mask ladder
    "steps": 50,                 # mask-ladder Adam steps
    "lr": 0.1,                   # mask-ladder Adam learning rate
    "heldout": 32,               # transplant inputs per class (least t-like of a fresh pool)
    "uap_radius": 0.05,          # ℓ2 ball radius of the universal map, RMS per pixel
    "uap_steps": 20,             # universal-map iterations
    "uap_batch": 16,             # fresh samples per universal-map iteration
    "uap_step_size": 0.2,        # step as a fraction of the ball radius
    "shortcut_radius": 0.5,      # ℓ2 ball radius (RMS per pixel) of the wide universal perturbation
    "percentile": 99.0,          # display scaling of maps
    "init_from_map": True,       # seed the masks with the refined ℓ2 universal map
    "window_area": 0.04,         # window scan: square window of this share of the image
    "window_stride": 0.5,        # window scan: grid stride as a fraction of the window's side
    "window_steps": 40,          # window scan: Adam steps of the position-agnostic pattern
    "window_screen": 8,          # window scan: held-out inputs per class every window is screened on
    "window_finalists": 4,       # window scan: best screened windows measured on all held-out inputs
    "channel_stimulation": "off",  # opt-in ABS-style statistic: off, report (not fused) or fuse (< 1 s)
    "stimulation_inputs": 2,     # channel stimulation: held-out inputs per class
    "stimulation_level": 4.0,    # channel stimulation: × the layer's 99th-percentile activation
    "scale": "reference",        # z scale: "reference" (clean models' scale) or "hybrid" (the larger of that
                                 # and the scanned model's own spread over its other classes)
    "feature_dominance": False,  # opt-in FreeEagle-style statistic (reported, not fused; ≈ 2–4 s)
    "feature_examples": 64,      # feature dominance: probe inputs whose activations start the dummies
    "feature_steps": 300,        # feature dominance: Adam steps on the split layer's activations
    "feature_lr": 0.01,          # feature dominance: Adam learning rate, in units of the activations' RMS
    "feature_restarts": 2,       # feature dominance: dummies per class (their logits are averaged)
    "feature_decay": 0.005,      # feature dominance: ℓ2 decay on the dummies (in RMS units)
}


@register(
    "saliency",
    summary="Data-free input-agnostic class maps; flags classes a tiny universal region or noise falls into.",
    reference="Akhtar & Jalwana, Rethinking interpretation: input-agnostic saliency mapping, AAAI 2023 "
              "(arXiv 2303.17836); reconstruction",
    needs_gradients=True,
    needs_data=False,
    modalities=("image",),
    options=(*_DEFAULTS, "threshold"),
    calibrated_flops=REFERENCE_MAX_FLOPS,
)
class SaliencyDetector(Detector):
    """Options (``--option saliency.KEY=VALUE``), with defaults:

    ``pool`` 600 probe inputs; ``kinds`` sampler kinds (uniform,gaussian,blobs,gratings,shapes);
    ``budgets`` 0.01,0.03,0.08 mask area ladder; ``starts`` 8 and ``steps`` 50 and ``lr`` 0.1 for the
    mask ladder; ``heldout`` 32 transplant inputs per class; ``uap_radius`` 0.05 (RMS per pixel),
    ``uap_steps`` 20, ``uap_batch`` 16, ``uap_step_size`` 0.2 for the ℓ2 universal map;
    ``shortcut_radius`` 0.5 (RMS per pixel) for the wide-ball universal perturbation (same steps);
    ``window_area`` 0.04 (share of the image), ``window_stride`` 0.5 (of the window's side),
    ``window_steps`` 40, ``window_screen`` 8 and ``window_finalists`` 4 for the window scan;
    ``channel_stimulation`` off (``report`` adds the ABS-style statistic, ``fuse`` also scores it), with
    ``stimulation_inputs`` 2 (per class) and ``stimulation_level`` 4;
    ``percentile`` 99 display scaling; ``scale`` reference (z scale: the clean reference models'; ``hybrid``
    for the larger of that and the model's own spread over its other classes);
    ``threshold`` 3.5 on the fused class score
    (``--threshold`` overrides); ``feature_dominance`` false (true adds the FreeEagle-style statistic, with
    ``feature_examples`` 64, ``feature_steps`` 300, ``feature_lr`` 0.01, ``feature_restarts`` 2,
    ``feature_decay`` 0.005).
    """

    @classmethod
    def planned_passes(cls, num_classes: int, context: RunContext) -> float:
        """Gradient passes of the universal maps (two balls), the mask ladder and the window scan, ×3 for
        the backward pass, plus the probe pools and the opt-in channel stimulation's forward passes (for
        an assumed :data:`STIMULATED_CHANNELS` channels; the transplant and screening passes are small)."""
        opt = _read_options(context)
        per_class = (2 * int(opt["uap_batch"]) * int(opt["uap_steps"])
                     + int(opt["starts"]) * int(opt["steps"]) * len(opt["budgets"])
                     + int(opt["starts"]) * int(opt["window_steps"]))
        stimulation = (STIMULATED_CHANNELS * int(opt["stimulation_inputs"]) * num_classes
                       if opt["channel_stimulation"] != "off" else 0)
        return 3.0 * num_classes * per_class + 2.0 * int(opt["pool"]) + stimulation

    def _run(self, target: ModelTarget, context: RunContext) -> Findings:
        opt = _read_options(context)
        opt.update(_work_counts(context))
        threshold = float(context.threshold if context.threshold is not None
                          else context.option("threshold", DEFAULT_THRESHOLD))
        kinds = tuple(s.strip() for s in str(opt["kinds"]).split(",") if s.strip())
        budgets = opt["budgets"]
        device = target.device
        shape = target.spec.shape
        k = target.num_classes
        model = target.model
        data = context.data.x if context.data is not None and len(context.data) else None

        # 1. probe pool and the held-out transplant pool (independent streams)
        g_pool = context.generator("cpu", salt=1)
        pool, kind = unrestricted_samples(int(opt["pool"]), shape, g_pool, kinds, data)
        held_pool, held_kind = unrestricted_samples(int(opt["pool"]), shape, context.generator("cpu", salt=2),
                                                    kinds, data)
        pool, held_pool = pool.to(device), held_pool.to(device)
        context.report("probing", 0.0)
        with torch.no_grad():
            logits = core.batched_logits(model, pool)
            held_logits = core.batched_logits(model, held_pool)
        if not (torch.isfinite(logits).all() and torch.isfinite(held_logits).all()):
            return _invalid(k, "the model produced non-finite logits on probe inputs")
        probs = torch.softmax(logits, 1)
        pred = probs.argmax(1)
        sink_share = torch.bincount(pred, minlength=k)[:k].float() / len(pool)
        kind_sink = {name: torch.bincount(pred[kind == i], minlength=k)[:k].float() / max(1, int((kind == i).sum()))
                     for i, name in enumerate(kinds)}

        # 2. ℓ2-ball universal map
        g_uap = context.generator("cpu", salt=3)

        def draw(n: int) -> torch.Tensor:
            return unrestricted_samples(n, shape, g_uap, kinds, data)[0].to(device)

        held_idx, held_valid = core.pick_other_class_starts(torch.softmax(held_logits, 1), held_kind,
                                                            int(opt["heldout"]))
        held = held_pool[held_idx]                                                      # (K, N, C, H, W)
        context.report("universal maps", 0.1)
        uap = core.universal_perturbations(
            model, k, draw, radius=float(opt["uap_radius"]), steps=int(opt["uap_steps"]),
            batch=int(opt["uap_batch"]), step_size=float(opt["uap_step_size"]),
            eval_x=held, eval_valid=held_valid, check=context.check_time,
        )

        # 2b. the wide-ball universal perturbation (own sample stream: the small ball's results do not move)
        g_wide = context.generator("cpu", salt=5)
        shortcut = core.universal_perturbations(
            model, k, lambda n: unrestricted_samples(n, shape, g_wide, kinds, data)[0].to(device),
            radius=float(opt["shortcut_radius"]), steps=int(opt["uap_steps"]), batch=int(opt["uap_batch"]),
            step_size=float(opt["uap_step_size"]), eval_x=held, eval_valid=held_valid, check=context.check_time,
        )

        # 3. pixel-budget masks, all classes × budgets in one batch
        context.report("compact maps", 0.3)
        start_idx, start_valid = core.pick_other_class_starts(probs, kind, int(opt["starts"]))
        universal_map = refine(uap.rho)                                                  # (K, H, W)
        ladder = core.mask_ladder(model, pool[start_idx], start_valid, budgets, steps=int(opt["steps"]),
                                  lr=float(opt["lr"]), generator=context.generator("cpu", salt=4),
                                  check=context.check_time,
                                  init=universal_map if opt["init_from_map"] else None)

        # 3b. position-agnostic window scan: where one pasted pattern drives other inputs hardest into t
        context.report("window scan", 0.7)
        side = max(2, round(math.sqrt(float(opt["window_area"]) * shape[-1] * shape[-2])))
        stride = max(1, round(side * float(opt["window_stride"])))
        scan = core.window_scan(model, pool[start_idx], start_valid, held, held_valid, side=side, stride=stride,
                                steps=int(opt["window_steps"]), lr=float(opt["lr"]),
                                generator=context.generator("cpu", salt=6), check=context.check_time,
                                screen=int(opt["window_screen"]), finalists=int(opt["window_finalists"]))

        # 3c. opt-in: channel stimulation (ABS-style), how hard one inner channel, driven high, sends other
        # inputs into t. Off by default: it helped on held-out dev draws but not on the zoo or a foreign
        # population, where it added a clean flag (bench/RESULTS.md §3, stop 29)
        stimulation = np.full(k, np.nan)  # not measured: left out of the metrics
        if opt["channel_stimulation"] != "off":
            context.report("channel stimulation", 0.8)
            stimulated = held[:, : int(opt["stimulation_inputs"])].flatten(0, 1)
            hooked, stimulated_layer = core.split_layer(model, stimulated[:8])
            stimulation = np.zeros(k)  # no spatial stage to stimulate (e.g. an MLP): no evidence either way
            if stimulated_layer is not None:
                stimulation = core.channel_stimulation(hooked, stimulated_layer, stimulated, k,
                                                       level=float(opt["stimulation_level"]),
                                                       check=context.check_time).double().numpy()
                opt["stimulated_layer"] = display_name(stimulated_layer)  # named in the description

        # 3d. opt-in: feature-space dominance (FreeEagle-style), which class rises when the back half of
        # the network is driven to every other class, whatever the trigger looks like in pixels. Reported,
        # not fused: it did not hold up on a held-out dev draw (bench/RESULTS.md §3, stop 19)
        dominance = np.full(k, np.nan)  # not measured: left out of the metrics
        if opt["feature_dominance"]:
            context.report("feature dominance", 0.85)
            g_feature = context.generator("cpu", salt=7)
            example = pool[torch.randperm(len(pool), generator=g_feature)[: int(opt["feature_examples"])].to(device)]
            hooked, layer = core.split_layer(model, example[:8])
            if layer is not None:
                dominance = core.feature_dominance(
                    hooked, layer, example, k, generator=g_feature, steps=int(opt["feature_steps"]),
                    lr=float(opt["feature_lr"]), restarts=int(opt["feature_restarts"]),
                    decay=float(opt["feature_decay"]), check=context.check_time).double().numpy()
                opt["feature_layer"] = display_name(layer)  # named in the description

        # 4. transplant onto held-out other-class inputs
        context.report("transplant", 0.9)
        binary = core.binarise(ladder.masks, budgets)
        asr, pasted_margin = core.paste_outcome(model, binary, ladder.patterns, held, held_valid)  # (K, L)
        compact = core.window_concentration(ladder.masks, budgets)                       # (K, L)

        # NaN = no held-out input was outside t at all: the class swallows everything, count it as flipped
        asr = torch.nan_to_num(asr, nan=1.0)
        uap_flip = torch.nan_to_num(uap.flip_rate, nan=1.0)
        shortcut_logits = torch.nan_to_num(shortcut.margin, nan=0.0).cpu().double().numpy()
        raw = {
            "sink_share": sink_share.cpu().double().numpy(),
            "transplant_asr": asr.mean(1).cpu().double().numpy(),
            "uap_flip": uap_flip.cpu().double().numpy(),
            "map_concentration": np.array([top_share(uap.rho[t].abs().sum(0), 0.05) for t in range(k)]),
            "shortcut_margin": _in_typical_units(shortcut_logits),
            "transplant_margin": _in_typical_units(pasted_margin.mean(1).cpu().double().numpy()),
            "window_margin": _in_typical_units(scan.best_margin.cpu().double().numpy()),
            "stimulation_margin": _in_typical_units(stimulation) if np.isfinite(stimulation).all() else stimulation,
            "feature_dominance": dominance,
        }
        shortcut_flip = torch.nan_to_num(shortcut.flip_rate, nan=1.0).cpu().double().numpy()
        rel = {name: relative_to_others(v) for name, v in raw.items()}
        fused = FUSED_STATISTICS + (("stimulation_margin",) if opt["channel_stimulation"] == "fuse" else ())
        spread = {name: within_model_spread(raw[name]) if opt["scale"] == "hybrid" else None for name in fused}
        zs = {name: calibrated_z(name, rel[name], spread[name]) for name in fused}
        score = fused_class_score(zs)
        return self._findings(target, context, opt, budgets, threshold, raw, rel, zs, score, asr, compact,
                              ladder, binary, uap, kind_sink, held_valid, universal_map, shortcut_flip,
                              shortcut_logits, pasted_margin, scan, stimulation)

    # ----------------------------------------------------------------------------------------------

    def _findings(self, target, context, opt, budgets, threshold, raw, rel, zs, score, asr, compact, ladder,
                  binary, uap, kind_sink, held_valid, universal_map, shortcut_flip, shortcut_logits,
                  pasted_margin, scan, stimulation) -> Findings:
        k = target.num_classes
        h, w = target.spec.shape[-2:]
        pct = float(opt["percentile"])
        asr_np = asr.cpu().double().numpy()
        pasted_margin = pasted_margin.cpu().double().numpy()
        heat = scan.heat(h, w)
        best_window = scan.best.cpu()
        window_flip = torch.nan_to_num(scan.best_flip.cpu(), nan=1.0).double()
        window_area = float((scan.boxes[0, 2] - scan.boxes[0, 0]) * (scan.boxes[0, 3] - scan.boxes[0, 1])) / (h * w)
        classes = []
        for t in range(k):
            flagged = bool(score[t] > threshold)
            # the smallest budget whose transplant works, else the middle of the ladder
            working = [i for i, b in enumerate(budgets) if asr_np[t, i] >= 0.5 and b <= 0.10]
            level = working[0] if working else len(budgets) // 2
            window_ok = bool(window_flip[t] >= 0.5 and window_area <= 0.10)
            transplant_ok = bool(working) or window_ok
            top, left, bottom, right = (int(v) for v in scan.boxes[best_window[t]])
            role = ""
            if flagged:
                extreme = score[t] > EXTREME_FACTOR * threshold
                role = "backdoor target" if (transplant_ok or extreme) else "unusual"
            metrics = {
                "score": float(score[t]),
                "sink_share": float(raw["sink_share"][t]),
                "uap_flip": float(raw["uap_flip"][t]),
                "uap_margin": float(uap.margin[t]),
                "shortcut_margin": float(raw["shortcut_margin"][t]),
                "shortcut_margin_logits": float(shortcut_logits[t]),
                "shortcut_flip": float(shortcut_flip[t]),
                "heldout_outside_class": float(held_valid[t].float().mean()),
                "transplant_asr": float(asr_np[t].max()),
                "transplant_asr_mean": float(raw["transplant_asr"][t]),
                "trigger_area": float(budgets[level]),
                "compactness": float(compact[t, level]),
                "map_concentration": float(raw["map_concentration"][t]),
                "refined_map_concentration": top_share(universal_map[t], 0.05),
            }
            metrics.update({f"transplant_asr@{b:g}": float(asr_np[t, i]) for i, b in enumerate(budgets)})
            metrics.update({f"transplant_margin_logits@{b:g}": float(pasted_margin[t, i]) for i, b in enumerate(budgets)})
            metrics.update({"transplant_margin": float(raw["transplant_margin"][t]),
                            "window_margin": float(raw["window_margin"][t]), "window_flip": float(window_flip[t]),
                            "window_top": float(top), "window_left": float(left), "window_side": float(bottom - top),
                            "window_area": window_area,
                            "location_map_concentration": top_share(heat[t], 0.05)})
            metrics.update({f"sink_share[{name}]": float(v[t]) for name, v in kind_sink.items()})
            metrics.update({f"z_{name}": float(zs[name][t]) for name in zs})
            metrics.update({f"rel_{name}": float(rel[name][t]) for name in raw if np.isfinite(rel[name][t])})
            if np.isfinite(stimulation[t]):
                metrics.update({"stimulation_margin": float(raw["stimulation_margin"][t]),
                                "stimulation_margin_logits": float(stimulation[t])})
            if np.isfinite(raw["feature_dominance"][t]):
                metrics["feature_dominance"] = float(raw["feature_dominance"][t])
            images = [
                EvidenceImage(percentile_scale(universal_map[t], pct),
                              f"class map of {target.label(t)!r}: refined ℓ2 universal perturbation "
                              f"(flips {raw['uap_flip'][t]:.0%} of other inputs)", kind="class_map"),
                EvidenceImage(percentile_scale(ladder.masks[t, level], pct),
                              f"compact map: where a {budgets[level]:.0%} region sends other inputs to "
                              f"{target.label(t)!r} (transplant {asr_np[t, level]:.0%})", kind="compact_map"),
                EvidenceImage(percentile_scale(heat[t], pct),
                              f"location map: where one pattern pasted through a {window_area:.0%} window sends other "
                              f"inputs to {target.label(t)!r} (best window rows {top}–{bottom - 1}, columns "
                              f"{left}–{right - 1}: flips {window_flip[t]:.0%})", kind="location_map"),
            ]
            if flagged:
                m = binary[t, level]
                p = ladder.patterns[t, level]
                trig = (m * p + (1 - m) * 0.5).cpu()
                images.append(EvidenceImage(_picture(trig), f"recovered trigger ({budgets[level]:.0%} of the image, "
                                            f"transplant ASR {asr_np[t, level]:.0%})", kind="trigger"))
                images.append(EvidenceImage(m.cpu().numpy(), "recovered trigger mask", kind="mask"))
                if window_ok:
                    window_trigger = torch.full_like(scan.patterns[t], 0.5)
                    window_trigger[:, top:bottom, left:right] = scan.patterns[t, :, top:bottom, left:right]
                    images.append(EvidenceImage(_picture(window_trigger.cpu()),
                                                f"recovered window trigger ({window_area:.0%} of the image, "
                                                f"transplant ASR {window_flip[t]:.0%})", kind="trigger"))
            classes.append(ClassEvidence(
                index=t, score=float(score[t]), z=float(score[t]), flagged=flagged, role=role,
                strength=float(score[t]) / threshold if threshold > 0 else float("nan"),
                metrics=metrics, images=tuple(images),
                description=(f"{_top_statistic(zs, t)}; best transplant "
                             f"{asr_np[t].max():.0%} with a {budgets[int(asr_np[t].argmax())]:.0%} region"),
            ))
        order = sorted(range(k), key=lambda t: (not classes[t].flagged, -score[t]))
        grid = map_grid([next(img.pixels for img in classes[t].images if img.kind == "class_map") for t in order])
        grid_caption = "class maps, flagged first then by score: " + ", ".join(target.label(t) for t in order)
        top = float(np.max(score))
        budget_text = ", ".join(f"{b:.0%}" for b in budgets)
        description = (
            f"For every class t, nudged inputs from unrestricted distributions ({', '.join(sorted(kind_sink))}) that "
            f"the model assigns to other classes toward t: an ℓ2-ball universal perturbation "
            f"(radius {float(opt['uap_radius']):g} RMS, {int(opt['uap_steps'])} integrated steps) and a mask+pattern "
            f"with a pixel budget of {budget_text} of the image ({int(opt['steps'])} Adam steps, binarised). "
            f"A second universal perturbation in a wide ball (radius {float(opt['shortcut_radius']):g} RMS) measures "
            f"how hard one pattern drives other inputs into t, and one pattern pasted through a {window_area:.0%} window "
            f"({int(opt['window_steps'])} Adam steps at random positions, then every window position measured) "
            f"how hard a small patch anywhere does. Scored the transplant success of the recovered region "
            f"on held-out inputs, the concentration of the class map and the margins the wide perturbation and the "
            f"best window reach (in units of the median class's margin)"
            + (" and the channel stimulation's (below)" if "stimulation_margin" in zs else "")
            + ", each as a z against clean reference models"
            + (" on the larger of their scale and the spread of this model's other classes"
               if opt["scale"] == "hybrid" else "")
            + f" (flagged when the mean of a class's two largest z's > {threshold:g})."
        )
        effort = _effective_effort(opt, k)
        if effort < 1.0:
            description += (f" Ran at reduced effort, {effort:.2g} of the default work ({int(opt['starts'])} "
                            f"starts and {int(opt['uap_batch'])} samples per step per class, {int(opt['steps'])}/"
                            f"{int(opt['uap_steps'])}/{int(opt['window_steps'])} steps): the statistics are noisier than "
                            f"at the effort the threshold was calibrated at (--effort 1 for the full work).")
        if opt["channel_stimulation"] != "off":
            fused_or_not = "scored" if "stimulation_margin" in zs else "reported, not scored"
            description += (
                f" Channel stimulation ({fused_or_not}): each channel of {opt['stimulated_layer']} in turn set to "
                f"{float(opt['stimulation_level']):g}× the layer's 99th-percentile activation, on "
                f"{int(opt['stimulation_inputs'])} held-out inputs per class; a class's value is the best channel's "
                f"20th-percentile margin toward it (ABS-style)." if "stimulated_layer" in opt else
                f" Channel stimulation ({fused_or_not}) found no spatial stage to stimulate, so it gave no evidence.")
        if "feature_layer" in opt:
            description += (f" Also reported, not scored: feature dominance, the mean standing of each class's "
                            f"logit when the activations of {opt['feature_layer']} are optimised "
                            f"({int(opt['feature_steps'])} Adam steps) toward each other class (FreeEagle-style).")
        return Findings(
            model_score=squash(top, threshold, width=max(threshold / 4.0, 0.5)),
            classes=tuple(classes), threshold=threshold, description=description,
            metrics={"max_score": top, "max_sink_share": float(np.max(raw["sink_share"])),
                     "effort": effort},
            images=(EvidenceImage(grid, grid_caption, kind="class_map_grid"),),
        )


# --------------------------------------------------------------------------------------------------
# Helpers (public: the calibration script and tests use them)


def _read_options(context: RunContext) -> dict:
    """The options at their defaults' types, checked (the compute plan reads them before any detector
    runs, so a bad value stops the scan before any work): ``budgets`` sorted."""
    opt = {key: context.option(key, default) for key, default in _DEFAULTS.items()}
    if opt["scale"] not in SCALES:
        raise OptionError(f"option scale={opt['scale']!r} must be one of {', '.join(SCALES)}")
    if opt["channel_stimulation"] not in STIMULATION_MODES:
        raise OptionError(f"option channel_stimulation={opt['channel_stimulation']!r} must be one of "
                          f"{', '.join(STIMULATION_MODES)}")
    opt["budgets"] = tuple(sorted(opt["budgets"]))
    if not opt["budgets"] or not all(0.0 < b <= 1.0 for b in opt["budgets"]):
        raise OptionError(f"option budgets={','.join(f'{b:g}' for b in opt['budgets'])} must be fractions in (0, 1]")
    return opt


def _work_counts(context: RunContext) -> dict[str, int]:
    """Sample and step counts at ``context.effort`` (:mod:`auditor.compute`).

    Sample counts shrink first (to a quarter): the statistics are means over samples, so fewer samples
    make them noisier but keep their calibrated centre. Only below effort 0.25 do the step counts shrink
    too (to 40 %), which moves the statistics themselves away from the calibration."""
    effort = float(context.effort)
    samples = max(effort, 0.25)
    steps = max(effort / samples, 0.4)
    return {
        "starts": context.work_count("starts", _DEFAULTS["starts"], samples, floor=2),
        "uap_batch": context.work_count("uap_batch", _DEFAULTS["uap_batch"], samples, floor=4),
        "steps": context.work_count("steps", _DEFAULTS["steps"], steps, floor=20),
        "uap_steps": context.work_count("uap_steps", _DEFAULTS["uap_steps"], steps, floor=8),
        "window_steps": context.work_count("window_steps", _DEFAULTS["window_steps"], steps, floor=16),
    }


def _effective_effort(opt: dict, num_classes: int) -> float:
    """The share of the default work this run spent (1 at the defaults)."""
    ran = SaliencyDetector.planned_passes(num_classes, RunContext(options=opt))
    return ran / SaliencyDetector.planned_passes(num_classes, RunContext())


def relative_to_others(values: np.ndarray) -> np.ndarray:
    """v_t − median_{j≠t} v_j: how much class t stands out inside its own model."""
    values = np.asarray(values, dtype=np.float64)
    return np.array([values[t] - np.median(np.delete(values, t)) for t in range(values.size)])


def _in_typical_units(margins: np.ndarray) -> np.ndarray:
    """Margins divided by the median over classes of |margin|: unchanged when all logits are rescaled."""
    scale = float(np.median(np.abs(margins)))
    return margins / scale if scale > 1e-9 else np.zeros_like(margins)


def calibrated_z(name: str, relative: np.ndarray, spread: np.ndarray | None = None) -> np.ndarray:
    """z of the relative values against the clean reference models; with ``spread`` (per class, from
    :func:`within_model_spread`) the scale is the larger of the reference scale and that spread."""
    centre, scale = CALIBRATION[name]
    scale = np.maximum(scale, spread) if spread is not None else scale
    return (np.asarray(relative, dtype=np.float64) - centre) / scale


def within_model_spread(values: np.ndarray) -> np.ndarray:
    """Per class t, 1.4826·MAD of the *other* classes' values: how widely this model's own classes spread.

    A class is an outlier only if it stands out against both the clean reference models and its own
    model's classes: a network whose classes all spread widely on a statistic (a standard-size ResNet-18
    can be driven hard toward several clean classes, bench/RESULTS.md §8) gets a wider scale; a model
    whose other classes cluster, as a backdoored model's do, keeps the reference scale."""
    v = np.asarray(values, dtype=np.float64)
    out = np.empty(v.size)
    for t in range(v.size):
        others = np.delete(v, t)
        out[t] = 1.4826 * float(np.median(np.abs(others - np.median(others))))
    return out


def calibration_scale(values: np.ndarray, floor: float = 0.02) -> tuple[float, float]:
    """(centre, scale) as documented at :data:`CALIBRATION`."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    med = float(np.median(v))
    mad = 1.4826 * float(np.median(np.abs(v - med)))
    tail = (float(np.quantile(v, 0.9)) - med) / 1.2816
    return med, max(mad, tail, floor)


def refine(rho: torch.Tensor) -> torch.Tensor:
    """Class maps from universal perturbations (K, C, H, W) → (K, H, W): channel-summed magnitude, 3×3
    smoothed, minus its median (the diffuse floor every universal perturbation has), clipped at 0."""
    k, _, h, w = rho.shape
    mag = rho.abs().sum(1, keepdim=True)
    mag = torch.nn.functional.avg_pool2d(mag, 3, stride=1, padding=1, count_include_pad=False)[:, 0]
    floor = mag.flatten(1).median(dim=1).values.view(k, 1, 1)
    return (mag - floor).clamp_min(0)


def percentile_scale(m: torch.Tensor, pct: float = 99.0) -> np.ndarray:
    """Display scaling: divide by the ``pct`` percentile of |map| and clip to [0, 1]."""
    a = m.detach().abs().cpu().double().numpy()
    top = float(np.percentile(a, pct)) if a.size else 0.0
    return np.clip(a / top, 0.0, 1.0) if top > 0 else np.zeros_like(a)


def map_grid(maps: list[np.ndarray], columns: int = 10, gap: int = 1) -> np.ndarray:
    """Tile (H, W) maps in rows of ``columns`` with a light separator: one picture for all classes."""
    h, w = maps[0].shape[:2]
    rows = -(-len(maps) // columns)
    cols = min(columns, len(maps))
    out = np.full((rows * (h + gap) - gap, cols * (w + gap) - gap), 0.5)
    for i, m in enumerate(maps):
        r, c = divmod(i, columns)
        out[r * (h + gap): r * (h + gap) + h, c * (w + gap): c * (w + gap) + w] = m
    return out


def top_share(m: torch.Tensor, fraction: float) -> float:
    """Share of a non-negative map's mass in its top ``fraction`` of pixels (concentration)."""
    flat = m.detach().flatten().double()
    total = float(flat.sum())
    if total <= 0:
        return 0.0
    n = max(1, int(math.ceil(fraction * flat.numel())))
    return float(flat.topk(n).values.sum()) / total


def fused_class_score(zs: dict[str, np.ndarray]) -> np.ndarray:
    """Per class, the mean of the two largest calibrated z's over the fused statistics in ``zs``
    (:data:`FUSED_STATISTICS`, and ``stimulation_margin`` with ``channel_stimulation=fuse``).

    A backdoor target raises several statistics at once, a clean class at most one now and then: on the
    clean reference models and the trojaned dev models (bench/calibrate_saliency.py) the mean of the top
    two separated them with a wider gap than the single largest z (clean ≤ 3.4 vs trojaned ≥ 4.9, against
    ≤ 5.2 vs ≥ 5.6)."""
    stacked = np.sort(np.stack(list(zs.values()), axis=1), axis=1)
    return stacked[:, -2:].mean(axis=1)


def _top_statistic(zs: dict[str, np.ndarray], t: int) -> str:
    top = sorted(zs, key=lambda s: zs[s][t], reverse=True)[:2]
    return "mean of the top two z's: " + ", ".join(f"{name} z = {zs[name][t]:.1f}" for name in top)


def _picture(x: torch.Tensor) -> np.ndarray:
    arr = x.detach().cpu().numpy()
    return arr[0] if arr.shape[0] == 1 else np.transpose(arr, (1, 2, 0))


def _invalid(k: int, reason: str) -> Findings:
    classes = tuple(
        ClassEvidence(index=t, score=float("nan"), z=float("nan"), flagged=False, valid=False, invalid_reason=reason)
        for t in range(k)
    )
    return Findings(model_score=0.0, classes=classes, description=reason, metrics={"invalid": 1.0})
