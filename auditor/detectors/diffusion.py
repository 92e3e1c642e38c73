"""Diffusion bias probe (DiffExplainer, Pennisi et al. 2024, arXiv 2404.02618).

Per class, optimise a diffusion generator's conditioning so that the generated images maximise the
class (cross-entropy to the class, summed per image so that every image is optimised independently),
N images per class, all classes in one batch, from seeded initial noise. The generator is either the
project's bundled prior matching the model's input shape (initial latent of a deterministic few-step
DDIM sampler) or a local diffusers text-to-image pipeline (soft-prompt embeddings).

Context probe: plain class maximisation draws the object first and stops once the class wins, so a
frame or background the model also uses seldom appears in those images. A second set of images per
class is therefore optimised through the same generator so that their *frame alone* carries the class:
their outer ring, pasted onto unoptimised prior samples the model puts elsewhere (``victims``), must
send those to the class. The prior can render frames because it was trained with random frames and
textures mixed in (``auditor.diffusion.prior``). With the frame scan (``frame_scan``: by default on
for colour inputs, off for greyscale ones) frames are also searched directly: every one-colour frame
of a bank (a grid of colours, 1/32 to 1/8 of the shorter side wide) is pasted onto the victims, and
the 2 that send most of them to a class join its context images, each at its own width (a model
that learned a wide frame can ignore a 2-px one of the right colour). Textures are searched directly:
every grey grating of a bank (each Fourier frequency with a period of at most 8 px, 8 phases) is pasted
onto the victims and the ones that send most of them to a class become its texture candidates. The prior could not
render the phase-aligned stripes that models learn (a planted stripe texture flipped 58 % of a model's
inputs at its phase and 0 % with randomised phases), and a pixel-level search finds adversarial
patterns instead; a grating is neither.

Read-out: what the class's images share that is not the object (frame / background texture, border
vs centre energy, colour and texture statistics against the other classes' images; concept words
ranked by CLIP with a local pipeline), each candidate confirmed by intervention: the context images'
frames and the gratings are transplanted, one by one, onto other-class inputs the probe never saw, and
the flip rate says whether the model really uses them (the best image is chosen on one half of the
inputs and measured on the other). A frame must be a feature of the border: pasted as a ring around
the central box it has to lose most of its effect, which rules out objects drawn by a ring. A texture
must be a learned pattern: replaced by plain noise of the same energy, or shifted by half a period, it
has to lose most of its effect, which rules out a class that takes any fine or periodic detail (the
star of the shapes domain takes gratings whatever their phase in clean models); a texture a model
takes at any phase is therefore not flagged. A class whose candidate flips held-out other-class inputs
at a rate that reaches the candidate's threshold gets the role "spurious feature". The thresholds of a
bundled prior are calibrated on clean reference models of its domain (``bench/diffusion_calibrate.py``,
stored in the prior's ``prior.json``); without calibration, or when the user sets one, ``min_flip``
applies. Clean models take some grating at its phase as strongly as a planted texture (up to 1.00), so
with both bundled priors the texture candidate is reported but cannot flag. Clean digits models take
some wide frame at the border as a 4 or a 5 (up to 0.81), so with the scan the digits prior's
frame threshold would be 0.91, against 0.505 without: the scan is therefore off by default for
greyscale inputs and on for colour ones, where it found the true class of 6 of 8 fresh spurious-frame
models against 4 of 8 without it, and flagged none of 16 clean ones (bench/RESULTS.md §5, stop 31).

A prior chosen by input shape alone must fit the model: the model must recognise its unoptimised
samples (mean top probability ≥ ``min_confidence``, spread over ≥ ``min_coverage`` of the classes),
otherwise the probe is skipped with instructions.

Fidelity: cascading randomisation of the classifier (deep copy, top-down) and re-generation from the
same noise: if the images barely change, the picture reflects the prior, not the model.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from auditor.compute import REFERENCE_MAX_FLOPS
from auditor.detectors.base import ClassEvidence, Detector, EvidenceImage, Findings, RunContext, register
from auditor.diffusion.generators import (
    BundledPrior,
    Generator,
    make_generator,
    optimised_indices,
    select_prior,
)
from auditor.diffusion.readout import (
    CANDIDATES,
    DEFAULT_CONCEPTS,
    GRATING_PHASES,
    TEXTURE_PEAKS,
    class_statistics,
    frame_colour_bank,
    frame_widths,
    intervene,
    rank_concepts,
    scan_frames,
    scan_gratings,
    transplant,
)
from auditor.errors import DetectorSkip, OptionError
from auditor.stats import leave_one_out_z
from auditor.target import ModelTarget

#: ``frame_scan``: ``auto`` scans frames for colour inputs only (on greyscale digits clean models take wide
#: frames too, so the scan's threshold is 0.91 there and it lost digits frames; bench/RESULTS.md §5, stop 31);
#: ``true``/``false`` force it
FRAME_SCAN_DEFAULT = "auto"


def frame_scan_wanted(value: str, channels: int) -> bool:
    """Whether the colour × width frame scan runs, from the option's value and the input's channels."""
    value = value.strip().lower()
    if value == "auto":
        return channels == 3
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off"}:
        return False
    raise OptionError(f"option frame_scan={value!r} must be auto, true or false")


@register(
    "diffusion",
    summary="DiffExplainer-style bias probe: diffusion-generated class-maximising images, spurious "
            "features confirmed by transplant flip rate, randomisation check.",
    reference="Pennisi et al., DiffExplainer, arXiv 2404.02618 (2024)",
    needs_gradients=True,
    needs_data=False,
    prefers_gpu=True,
    modalities=("image",),
    # opt-in (--detectors diffusion): on the zoo it flags the spurious class on 2 of 4 spurious models
    # (both frames; the texture model's grating is found but clean models reach the same flip rates;
    # bench/RESULTS.md §5), so it does not vote in the default verdict
    default=False,
    options=("prior", "pipeline", "fast", "per_class", "iterations", "lr", "sampler_steps", "latent_weight",
             "objective", "context_per_class", "frame_scan", "victims", "texture_amplitude", "texture_checks",
             "min_flip", "fidelity_stages", "fidelity_per_class", "prior_rho", "border_loss", "texture_loss",
             "min_coverage", "min_confidence", "ring", "concepts"),
    calibrated_flops=REFERENCE_MAX_FLOPS,  # the bundled priors' thresholds (bench/diffusion_calibrate.py)
)
class DiffusionProbe(Detector):
    """Options (``--option diffusion.KEY=VALUE``):

    ``prior`` ("": a prior folder from ``auditor prior train``; bundled priors are tried by input
    shape), ``pipeline`` ("": a local diffusers text-to-image pipeline folder — overrides the prior),
    ``fast`` (false: 2 images per class, 6 steps, one randomisation stage — smoke runs),
    ``per_class`` (8 images), ``iterations`` (20 Adam steps), ``lr`` (0.1 for the prior's latent,
    0.01 for prompt embeddings), ``sampler_steps`` (6 DDIM steps through a prior — with 4 the shapes
    prior's images lacked the planted frame of a dev model; 4 through a pipeline), ``latent_weight``
    (1.0, keeps the latent on the Gaussian shell), ``objective`` (cross_entropy; logit or margin keep
    pushing past a won class), ``context_per_class`` (2 frame context images and 2 gratings per class;
    0 reads the candidates off the class-maximising images instead), ``frame_scan`` (auto: on for
    colour inputs, off for greyscale ones; true: also try, per class, the 2 one-colour frames of a
    bank — 33 greys or 729 RGB colours, each 1/32 to 1/8 of the shorter side wide — that send most
    victims to the class, with the prior's own ``frame (frame scan)`` threshold; false: the context
    images' 2-px frames only. It finds wider frames on shapes, but clean digits models take wide
    frames too, so the digits threshold rises to 0.91; bench/RESULTS.md §5, stops 30–31),
    ``victims`` (8 inputs the context probe and the grating scan optimise for: unoptimised prior samples, or --data samples
    kept apart from the measured ones), ``texture_amplitude`` (0.3 in pixel units, 0.6 peak to peak:
    a texture seen at a glance; on a dev model 0.25 gave a best grating of 0.48, 0.3 of 0.54, 0.4 of
    0.51), ``texture_checks`` (false: also record each class's texture turned by 90°, at half contrast
    and kept off the part of each input the model looks at, as ``flip_rate_texture_*`` metrics; they
    decide nothing — none told a learned texture from a clean model's on the stop-32 dev models),
    ``ring`` (0 = max(2, H/14) px frame width),
    ``min_flip`` (the prior's calibrated thresholds, else 0.5; ``--threshold`` overrides, for every
    candidate), ``border_loss`` (0.5: a frame counts only if, moved inward, it keeps at most this
    share of its flip rate), ``texture_loss`` (0.5: a texture counts only if, replaced by plain
    high-pass noise of the same energy or shifted by half a period, it keeps at most this share), ``min_confidence`` (0.5) and ``min_coverage`` (0.2): a prior
    picked by input shape must give unoptimised samples that the model recognises (mean top softmax)
    and spreads over this share of its classes, else the probe is skipped; ``fidelity_stages`` (2),
    ``fidelity_per_class`` (2),
    ``prior_rho`` (0.9: Spearman at full randomisation above which the picture is called
    prior-dominated), ``concepts`` ("": a file with one concept per line, added to the defaults).
    """

    def _unmet_need(self, target: ModelTarget, context: RunContext) -> str:
        need = super()._unmet_need(target, context)
        if need:
            return need
        pipeline = str(context.option("pipeline", ""))
        if pipeline:
            return "" if Path(pipeline).is_dir() else f"diffusion pipeline folder not found: {pipeline}"
        if select_prior(tuple(target.spec.shape), str(context.option("prior", "")) or None) is None:
            _, reason = make_generator(tuple(target.spec.shape), torch.device("cpu"),
                                       prior=str(context.option("prior", "")))
            return reason
        return ""

    def _run(self, target: ModelTarget, context: RunContext) -> Findings:
        fast = bool(context.option("fast", False))  # contract tests / smoke runs: a few images, few steps
        per_class = int(context.option("per_class", 2 if fast else 8))
        iterations = int(context.option("iterations", 6 if fast else 20))
        pipeline = str(context.option("pipeline", ""))
        lr = float(context.option("lr", 0.01 if pipeline else 0.1))
        steps = int(context.option("sampler_steps", 4 if pipeline else 6))
        latent_weight = float(context.option("latent_weight", 1.0))
        objective = str(context.option("objective", "cross_entropy"))
        context_per_class = int(context.option("context_per_class", 2))
        n_victims = int(context.option("victims", 8))
        texture_amplitude = float(context.option("texture_amplitude", 0.3))
        texture_checks = bool(context.option("texture_checks", False))
        c, h, w = target.spec.shape
        frame_scan = frame_scan_wanted(str(context.option("frame_scan", FRAME_SCAN_DEFAULT)), c)
        if objective not in OBJECTIVES:
            raise OptionError(f"option objective={objective!r} must be one of {', '.join(OBJECTIVES)}")
        user_flip = context.threshold if context.threshold is not None else (
            context.option("min_flip", 0.5) if "min_flip" in context.options else None)
        min_flip = float(user_flip) if user_flip is not None else 0.5
        n_stages = int(context.option("fidelity_stages", 1 if fast else 2))
        fid_per_class = min(per_class, int(context.option("fidelity_per_class", 1 if fast else 2)))
        prior_rho = float(context.option("prior_rho", 0.9))
        border_loss = float(context.option("border_loss", 0.5))
        texture_loss = float(context.option("texture_loss", 0.5))
        # clean reference models of the priors' domains: confidence ≥ 0.70, coverage ≥ 0.3; models of a
        # foreign domain measured 0.19–0.50 (bench/RESULTS.md §5)
        min_coverage = float(context.option("min_coverage", 0.2))
        min_confidence = float(context.option("min_confidence", 0.5))
        k = target.num_classes
        ring = int(context.option("ring", 0)) or max(2, round(min(h, w) / 14))
        device = target.device

        gen, reason = make_generator((c, h, w), device, pipeline=pipeline,
                                     prior=str(context.option("prior", "")), steps=steps)
        if gen is None:  # _unmet_need normally catches this first
            raise RuntimeError(reason)
        labels = torch.arange(k, device=device).repeat_interleave(per_class)
        init = gen.init_conditioning(k * per_class, context.generator("cpu", salt=1))

        with torch.no_grad():
            start_images = gen.generate([t.detach() for t in init])
        coverage, confidence = prior_fit(target, start_images)
        user_prior = str(context.option("prior", ""))
        chosen_by_shape = isinstance(gen, BundledPrior) and (
            not user_prior or gen.info.path.resolve() != Path(user_prior).resolve())
        if chosen_by_shape and (coverage < min_coverage or confidence < min_confidence):
            # a bundled prior is picked by input shape alone; the model must recognise its samples
            raise DetectorSkip(
                f"the {gen.describe()} does not fit this model: the model gives its unoptimised samples a mean "
                f"top probability of {confidence:.2f} (needs {min_confidence:g}) and spreads them over "
                f"{coverage:.0%} of its classes (needs {min_coverage:.0%}); train a prior on clean images of "
                f"the model's domain with `auditor prior train --data DIR --out PRIOR_DIR` and pass "
                f"--option diffusion.prior=PRIOR_DIR")

        context.report("optimising conditioning", 0.0)
        images, cond = optimise(gen, target.model, init, labels, iterations, lr, latent_weight, context, 0.0, 0.6,
                                objective)
        pred = target.logits(images).argmax(1).cpu()
        per = images.view(k, per_class, c, h, w).cpu()
        activation = (pred.view(k, per_class) == torch.arange(k)[:, None]).float().mean(1).numpy()

        # read-out + intervention (inputs: --data when given, else the other classes' generated images)
        context.report("intervention", 0.65)
        # victims of the context probe and the grating scan: inputs the model puts in various classes,
        # kept apart from the inputs the flip rates are measured on
        if context.data is not None and context.data.y is not None:
            order = torch.randperm(len(context.data), generator=context.generator("cpu", salt=2))
            victims = context.data.x[order[:n_victims]].to(device)
            sel = order[n_victims:n_victims + 256]
            others, other_labels = context.data.x[sel].to(device), context.data.y[sel].cpu()
            inputs_source = "--data samples"
        else:
            pick = torch.randperm(start_images.shape[0], generator=context.generator("cpu", salt=5))[:n_victims]
            victims = start_images[pick.to(device)].detach()
            others, other_labels = images.detach(), labels.cpu()
            inputs_source = "the other classes' generated images"
        stats = class_statistics(per, ring)
        sources = {cand: per for cand in CANDIDATES}
        widths = torch.full((k, per_class), ring, dtype=torch.long)                   # each frame source's width
        if context_per_class > 0:
            # the context probe: images whose frame alone, pasted onto the victims, maximises the class;
            # and the gratings that, pasted as a texture, send most victims to the class
            context.report("context probe", 0.62)
            frames = probe_context(gen, target.model, k, context_per_class, victims, ring, iterations, lr,
                                   latent_weight, context)
            widths = torch.full(frames.shape[:2], ring, dtype=torch.long)
            if frame_scan:  # and the one-colour frames (colour × width) that send most victims to the class
                scanned, scanned_widths = scan_frames(target.model, victims, k, context_per_class)
                frames, widths = torch.cat([frames, scanned], 1), torch.cat([widths, scanned_widths], 1)
            sources = {"frame": frames,
                       "background texture": scan_gratings(target.model, victims, k, texture_amplitude,
                                                           context_per_class)}
        found = intervene(target.model, per.to(device), others, other_labels, ring,
                          context.generator("cpu", salt=4), sources={c: v.to(device) for c, v in sources.items()},
                          widths=widths, texture_checks=texture_checks)
        # a frame counts only when it is a feature of the border: moved inward it must lose at least half
        # its effect (an object drawn by a ring, such as a hollow square, keeps it)
        frame_ok = found.frame_control <= border_loss * found.flip["frame"]
        # and a texture only when it is a texture: replaced by plain noise of the same energy it must lose at
        # least half its effect (a class that takes any fine detail, such as the edge-richest shape, keeps it)
        # and shifted by half a period too (a class that takes any periodic detail, such as the star, keeps it)
        texture_ok = (np.maximum(found.texture_control, found.texture_shift_control)
                      <= texture_loss * found.flip["background texture"])
        usable = {"frame": np.where(frame_ok, found.flip["frame"], 0.0),
                  "background texture": np.where(texture_ok, found.flip["background texture"], 0.0)}
        # thresholds per candidate: the prior's calibration on clean reference models of its domain
        # unless the user set one; above 1 the candidate cannot be told from what clean models do
        thresholds = {cand: min_flip for cand in CANDIDATES}
        if user_flip is None:
            calibrated = gen.thresholds()
            thresholds.update({c: v for c, v in calibrated.items() if c in thresholds})
            if frame_scan and "frame (frame scan)" in calibrated:  # the scan raises the clean frame null
                thresholds["frame"] = calibrated["frame (frame scan)"]
        flip_matrix = np.stack([usable[cand] for cand in CANDIDATES], 1)    # (K, candidates)
        ratio = flip_matrix / np.array([max(thresholds[cand], 1e-6) for cand in CANDIDATES])[None, :]
        best_cand = ratio.argmax(1)
        best_flip = flip_matrix[np.arange(k), best_cand]
        best_ratio = ratio.max(1)
        z = leave_one_out_z(best_flip.astype(np.float64))

        concepts: list[list[tuple[str, float]]] = [[] for _ in range(k)]
        if gen.has_text_encoder:
            vocab = list(DEFAULT_CONCEPTS)
            extra = str(context.option("concepts", ""))
            if extra:
                vocab += [s.strip() for s in Path(extra).read_text().splitlines() if s.strip()]
            concepts = rank_concepts(gen, cond[0].detach().view(k, per_class, *cond[0].shape[1:]), vocab)

        context.report("randomisation check", 0.7)
        fidelity, fid_text = randomisation_check(
            gen, target, init, labels, images, start_images, per_class, fid_per_class, n_stages,
            iterations, lr, latent_weight, prior_rho, context, objective,
        )

        source_names = ({"frame": "frame source" if frame_scan else "context image", "background texture": "grating"}
                        if context_per_class > 0
                        else {cand: "image" for cand in CANDIDATES})
        classes = []
        for t in range(k):
            flagged = bool(best_ratio[t] >= 1.0)
            cand = CANDIDATES[int(best_cand[t])]
            source_name = source_names[cand]
            src = int(found.source[cand][t])
            caption = (f"{per_class} images maximising '{target.label(t)}' (activation {activation[t]:.2f}); "
                       f"candidate: {cand} of {source_name} {src + 1}, flip rate {best_flip[t]:.2f}")
            words = ", ".join(f"{wd} ({s:.2f})" for wd, s in concepts[t])
            metrics = {
                "activation_score": float(activation[t]), "flip_rate": float(best_flip[t]),
                "flip_threshold": float(thresholds[cand]),
                **{f"flip_rate_{cn.replace(' ', '_')}": float(found.flip[cn][t]) for cn in CANDIDATES},
                **{f"mean_flip_rate_{cn.replace(' ', '_')}": float(found.mean_flip[cn][t]) for cn in CANDIDATES},
                "flip_rate_frame_moved_inward": float(found.frame_control[t]),
                "frame_width": float(found.frame_width[t]),
                "flip_rate_texture_as_noise": float(found.texture_control[t]),
                "flip_rate_texture_shifted": float(found.texture_shift_control[t]),
                **{f"flip_rate_{name.replace(' ', '_')}": float(v[t]) for name, v in found.texture_checks.items()},
                "border_contrast": float(stats.border_contrast[t]), "centre_contrast": float(stats.centre_contrast[t]),
                "border_ratio": float(stats.border_ratio[t]), "texture_ratio": float(stats.texture_ratio[t]),
            }
            fid_badge = {"randomisation_rho": float(fidelity["spearman"][-1])} if fidelity["spearman"] else None
            pictures = [EvidenceImage(tile(per[t]), caption, kind="diffusion", fidelity=fid_badge)]
            if flagged:  # the source images, and what the intervention did: the chosen one on another class's input
                if context_per_class > 0:
                    what = ("pasted as a texture, these sent most of the victims to the class" if cand != "frame" else
                            f"the first {context_per_class} were optimised so that their frame alone carries the class, "
                            f"the last {context_per_class} are the colours of the colour bank whose frames send most "
                            f"victims to it" if frame_scan else "their frame alone was optimised to carry the class")
                    pictures.append(EvidenceImage(
                        tile(sources[cand][t]), f"{len(sources[cand][t])} {source_name}s for '{target.label(t)}': {what}",
                        kind="diffusion", fidelity=fid_badge))
                victim = others[int(torch.nonzero(other_labels != t)[0])] if (other_labels != t).any() else others[0]
                width = int(found.frame_width[t]) if cand == "frame" else ring
                stamped = transplant(cand, sources[cand][t, src][None].to(device), victim[None], width)[0].cpu()
                pictures.append(EvidenceImage(tile(stamped[None]), f"{cand} of {source_name} {src + 1} transplanted "
                                              f"onto an input of another class", kind="diffusion", fidelity=fid_badge))
            why = (f"flip rate {best_flip[t]:.2f} on held-out {inputs_source}, mean over the class's {source_name}s "
                   f"{found.mean_flip[cand][t]:.2f}")
            if cand == "frame":
                why += f"; {found.frame_width[t]}-px frame, moved inward {found.frame_control[t]:.2f}"
            else:
                why += (f"; as plain noise {found.texture_control[t]:.2f}, shifted by half a period "
                        f"{found.texture_shift_control[t]:.2f}")
            if found.flip["frame"][t] >= thresholds["frame"] and not frame_ok[t]:
                why += (f"; its frame flips {found.flip['frame'][t]:.2f} but also {found.frame_control[t]:.2f} "
                        f"moved inward, so it is part of the object, not of the border")
            if found.flip["background texture"][t] >= thresholds["background texture"] and not texture_ok[t]:
                why += (f"; its texture flips {found.flip['background texture'][t]:.2f} but plain noise of the same "
                        f"energy flips {found.texture_control[t]:.2f} and the texture shifted by half a period "
                        f"{found.texture_shift_control[t]:.2f}, so it cannot be told from a class that takes any fine "
                        f"or periodic detail (a texture learnt at every phase looks the same to this read-out)")
            classes.append(ClassEvidence(
                index=t, score=float(best_flip[t]), z=float(z[t]), flagged=flagged,
                role="spurious feature" if flagged else "", metrics=metrics, images=tuple(pictures),
                description=(f"candidate spurious feature: {cand} ({why})"
                             + (f"; CLIP concepts: {words}" if words else "") + (f". {fid_text}" if flagged else "")),
            ))
        max_flip = float(best_flip.max())
        model_score = float(best_ratio.max() / (1.0 + best_ratio.max()))   # 0.5 at the threshold
        limits = ", ".join(f"{cand} {thresholds[cand]:g}" for cand in CANDIDATES)
        where = ("calibrated on clean reference models of the prior's domain"
                 if user_flip is None and gen.thresholds() else "uncalibrated default" if user_flip is None
                 else "set by the user")
        uninformative = [cand for cand in CANDIDATES if thresholds[cand] > 1.0]
        description = (
            f"Optimised the conditioning of a {gen.describe()} with {iterations} Adam steps so that "
            f"{per_class} generated images per class maximise that class (cross-entropy), all classes in one "
            f"batch; "
            + (f"{context_per_class} more images per class were optimised so that their outer {ring}-px frame "
               f"alone sends {n_victims} other inputs to the class, "
               + (f"{context_per_class} one-colour frames per class were chosen from a bank "
                  f"({len(frame_colour_bank(c))} colours, {', '.join(map(str, frame_widths(h, w)))} px wide) as the "
                  f"frames that send most of those inputs to the class, "
                  if frame_scan else "")
               + f"and {context_per_class} grey gratings per class "
               f"(amplitude {texture_amplitude:g}, periods up to 8 px, {GRATING_PHASES} phases) were chosen as the textures "
               f"that send most of those inputs to the class; these frames and textures "
               if context_per_class > 0 else
               f"the outer {ring}-px frame and the periodic background texture (its {TEXTURE_PEAKS} strongest "
               f"Fourier components) of each class's images ")
            + f"were transplanted, one by one, onto {inputs_source} (the best one chosen on one half of the "
            f"inputs, its flip rate measured on the other half); a class is flagged when a flip rate reaches "
            f"its threshold ({limits}; {where}); a frame counts only if moving it inward costs at least "
            f"{1 - border_loss:.0%} of its effect, a texture only if replacing it by plain noise of the same energy "
            f"or shifting it by half a period costs at least {1 - texture_loss:.0%}. "
            + (f"The {' and '.join(uninformative)} candidate cannot flag with this prior: clean reference "
               f"models of its domain reach the same flip rates. " if uninformative else "")
            + fid_text
        )
        return Findings(
            model_score=model_score, classes=tuple(classes), description=description, threshold=0.5,
            metrics={"mean_activation_score": float(activation.mean()), "max_flip_rate": max_flip,
                     "prior_class_coverage": coverage, "prior_sample_confidence": confidence,
                     "prior_dominated": float(fidelity["prior_dominated"]), "frame_scan": float(frame_scan)},
            fidelity=fidelity,
        )


def prior_fit(target: ModelTarget, samples: torch.Tensor) -> tuple[float, float]:
    """(share of classes the model assigns at least one unoptimised prior sample to, mean top softmax):
    a prior of the model's own domain gives samples the model recognises, spread over its classes."""
    probs = target.logits(samples).float().softmax(1)
    coverage = len(torch.unique(probs.argmax(1))) / target.num_classes
    return float(coverage), float(probs.max(1).values.mean())


OBJECTIVES = ("cross_entropy", "logit", "margin")


def class_loss(logits: torch.Tensor, labels: torch.Tensor, objective: str) -> torch.Tensor:
    """Per-image loss to minimise: cross-entropy saturates once the class wins; the logit and the margin
    over the best other class keep rewarding every feature that adds evidence for the class."""
    if objective == "cross_entropy":
        return F.cross_entropy(logits, labels, reduction="none")
    own = logits.gather(1, labels[:, None]).squeeze(1)
    if objective == "logit":
        return -own
    others = logits.scatter(1, labels[:, None], float("-inf")).max(1).values
    return others - own


def probe_context(gen: Generator, model, k: int, per_class: int, victims: torch.Tensor, ring: int, iterations: int,
                  lr: float, latent_weight: float, context: RunContext) -> torch.Tensor:
    """Per class, ``per_class`` generated images optimised so that their frame alone (the outer ring),
    transplanted onto ``victims`` that the model does not already assign to the class, sends them to
    the class. A spurious feature is context that carries the class whatever the object; plain class
    maximisation finds the object first and stops. Returns (K, per_class, C, H, W) on the CPU."""
    n = k * per_class
    device = victims.device
    labels = torch.arange(k, device=device).repeat_interleave(per_class)             # (n,)
    v = victims.shape[0]
    with torch.no_grad():
        victim_pred = model(victims).argmax(1)
    weight = (victim_pred[None, :] != labels[:, None]).float()                         # (n, V)
    cond = [t.detach().clone() for t in gen.init_conditioning(n, context.generator("cpu", salt=6))]
    params = [cond[i].requires_grad_(True) for i in optimised_indices(gen)]
    opt = torch.optim.Adam(params, lr=lr)
    for _ in range(iterations):
        context.check_time()
        opt.zero_grad(set_to_none=True)
        x = gen.generate(cond)
        stamped = transplant("frame", x.repeat_interleave(v, 0), victims.repeat(n, 1, 1, 1), ring)
        ce = F.cross_entropy(model(stamped), labels.repeat_interleave(v), reduction="none").view(n, v)
        loss = (ce * weight).sum(-1) / weight.sum(-1).clamp(min=1)                       # (n,)
        (loss + latent_weight * gen.regulariser(cond)).sum().backward()
        opt.step()
    with torch.no_grad():
        x = gen.generate(cond).cpu()
    return x.view(k, per_class, *x.shape[1:])


def optimise(gen: Generator, model, init: list[torch.Tensor], labels: torch.Tensor, iterations: int, lr: float,
             latent_weight: float, context: RunContext, frac0: float, frac1: float, objective: str = "cross_entropy",
             ) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Adam on the generator's conditioning; per-image losses summed, so images are independent."""
    cond = [t.detach().clone() for t in init]
    params = [cond[i].requires_grad_(True) for i in optimised_indices(gen)]
    opt = torch.optim.Adam(params, lr=lr)
    for it in range(iterations):
        context.check_time()
        opt.zero_grad(set_to_none=True)
        x = gen.generate(cond)
        loss = class_loss(model(x), labels, objective) + latent_weight * gen.regulariser(cond)
        loss.sum().backward()
        opt.step()
        if it % 5 == 0:
            context.report("optimising conditioning", frac0 + (frac1 - frac0) * it / max(iterations, 1))
    with torch.no_grad():
        images = gen.generate(cond)
    return images.detach(), [t.detach() for t in cond]


def randomisation_check(gen, target: ModelTarget, init, labels, images, start_images, per_class, fid_per_class,
                        n_stages, iterations, lr, latent_weight, prior_rho, context, objective="cross_entropy"):
    """Re-run the probe on top-down randomised copies of the classifier from the same noise."""
    from auditor.fidelity.metrics import spearman_rows
    from auditor.fidelity.randomisation import randomisation_stages, reinitialise_

    k = target.num_classes
    pick = (torch.arange(k)[:, None] * per_class + torch.arange(fid_per_class)[None, :]).flatten().to(images.device)
    sub_init = [t[pick.to(t.device)] for t in init]
    reference = images[pick].cpu().numpy()
    empty = {"stages": [], "spearman": [], "change": [], "prior_dominated": False, "start_spearman": 0.0}
    if n_stages <= 0:
        return empty, "Randomisation check disabled."
    model = copy.deepcopy(target.model)
    stages = randomisation_stages(model, torch.zeros((1, *target.spec.shape), device=target.device), n_stages)
    g = context.generator("cpu", salt=3)
    names, rhos, changes = [], [], []
    moved = float(np.abs(reference - start_images[pick].cpu().numpy()).mean()) + 1e-9
    for i, (label, modules) in enumerate(stages):
        reinitialise_(model, modules, g)
        model.eval()
        for p in model.parameters():
            p.requires_grad_(False)
        frac = 0.7 + 0.3 * i / max(len(stages), 1)
        out, _ = optimise(gen, model, sub_init, labels[pick], iterations, lr, latent_weight, context, frac, frac,
                          objective)
        out = out.cpu().numpy()
        names.append(label)
        rhos.append(float(np.mean(spearman_rows(reference, out))))
        changes.append(float(np.abs(out - reference).mean()) / moved)
    start_rho = float(np.mean(spearman_rows(reference, start_images[pick].cpu().numpy())))
    dominated = bool(rhos and rhos[-1] >= prior_rho)
    fid = {"stages": names, "spearman": rhos, "change": changes, "prior_dominated": dominated,
           "start_spearman": start_rho,
           "note": "Spearman between the trained model's images and the randomised model's, same noise"}
    if dominated:
        text = (f"Randomisation check: with the classifier fully randomised the images barely change "
                f"(Spearman {rhos[-1]:.2f} ≥ {prior_rho:g}) — the picture reflects the prior, not the model.")
    else:
        text = (f"Randomisation check: the images change when the classifier is randomised (Spearman "
                f"{', '.join(f'{r:.2f}' for r in rhos)} over {len(rhos)} top-down stages; the unoptimised images "
                f"have {start_rho:.2f}), so they depend on the model.")
    return fid, text


def tile(images: torch.Tensor) -> np.ndarray:
    """(N, C, H, W) → one picture, N images side by side in rows of 4, 1-px grey gaps."""
    n, c, h, w = images.shape
    cols = min(4, n)
    rows = (n + cols - 1) // cols
    canvas = torch.full((c, rows * (h + 1) - 1, cols * (w + 1) - 1), 0.5)
    for i in range(n):
        r, q = divmod(i, cols)
        canvas[:, r * (h + 1): r * (h + 1) + h, q * (w + 1): q * (w + 1) + w] = images[i]
    arr = canvas.numpy()
    return arr[0] if c == 1 else np.transpose(arr, (1, 2, 0))
