"""Neural Cleanse: reverse-engineer the smallest trigger that sends clean inputs to each class.

Wang, Yao, Shan, Li, Viswanath, Zheng, Zhao, "Neural Cleanse: Identifying and Mitigating Backdoor
Attacks in Neural Networks" (IEEE S&P 2019).

Per class t we optimise a mask m = tanh(θ_m)/2 + ½ (H×W) and a pattern p = tanh(θ_p)/2 + ½ (C×H×W) so
that x' = (1 − m)·x + m·p is classified as t, with an ℓ1 prior on the mask weighted by λ_t:
``CE(f(x'), t) + λ_t·‖m‖₁``. λ_t follows the paper's schedule (start 1e-3; ×2 after ``patience``
epochs above the success threshold, ÷2^1.5 after ``patience`` epochs below). All classes are
optimised together in one batch (Adam is element-wise, so this equals K independent runs). A
backdoor target needs an anomalously small mask: the anomaly index (median − ℓ1_t)/(1.4826·MAD) of
the masks' ℓ1 norms is flagged above 2 (low side only).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from auditor.detectors.base import ClassEvidence, Detector, EvidenceImage, Findings, RunContext, register
from auditor.stats import MAD_TO_SIGMA, squash
from auditor.target import ModelTarget

_TANH_EPS = 1e-6


def _atanh_unit(v: torch.Tensor) -> torch.Tensor:
    """Inverse of v = tanh(θ)/2 + ½ (clamped away from the saturating ends)."""
    return torch.atanh(((v - 0.5) * 2).clamp(-1 + 1e-4, 1 - 1e-4))


def anomaly_indices(norms: np.ndarray) -> np.ndarray:
    """(median − ℓ1_t) / (1.4826·MAD) per class: large positive = anomalously small mask."""
    med = float(np.median(norms))
    mad = MAD_TO_SIGMA * float(np.median(np.abs(norms - med)))
    scale = max(mad, 1e-6 * max(1.0, abs(med)))
    return (med - norms) / scale


@register(
    "neural_cleanse",
    summary="Neural Cleanse: per-class smallest mask+pattern trigger; anomalously small mask ⇒ backdoor target.",
    reference="Wang et al., Neural Cleanse, IEEE S&P 2019",
    needs_gradients=True,
    needs_data=True,
    modalities=("image",),
    # opt-in baseline (--detectors neural_cleanse): on the zoo it flagged 28 % of clean models at the
    # paper's anomaly index 2 and reached AUROC 0.53 (bench/RESULTS.md), so it does not vote by default
    default=False,
    options=("steps", "batch_size", "epoch_steps", "lr", "init_cost", "success_threshold", "patience", "cost_up",
             "cost_down", "max_samples", "anomaly_threshold"),
)
class NeuralCleanseDetector(Detector):
    """Options (defaults): ``steps`` (150 Adam steps in all), ``batch_size`` (8 clean images per class
    per step), ``epoch_steps`` (5 steps form one schedule "epoch"), ``lr`` (0.1), ``init_cost`` (1e-3),
    ``success_threshold`` (0.99), ``patience`` (5 epochs), ``cost_up`` (2.0), ``cost_down`` (2**1.5),
    ``max_samples`` (200 clean images used), ``anomaly_threshold`` (2.0; ``--threshold`` overrides)."""

    def _run(self, target: ModelTarget, context: RunContext) -> Findings:
        steps = int(context.option("steps", 150))
        batch = int(context.option("batch_size", 8))
        epoch_steps = max(1, int(context.option("epoch_steps", 5)))
        lr = float(context.option("lr", 0.1))
        init_cost = float(context.option("init_cost", 1e-3))
        success = float(context.option("success_threshold", 0.99))
        patience = int(context.option("patience", 5))
        cost_up = float(context.option("cost_up", 2.0))
        cost_down = float(context.option("cost_down", 2.0 ** 1.5))
        max_samples = int(context.option("max_samples", 200))
        threshold = float(context.threshold if context.threshold is not None
                          else context.option("anomaly_threshold", 2.0))

        device = target.device
        k = target.num_classes
        c, h, w = target.spec.shape
        data = context.data
        g = context.generator("cpu")
        pick = torch.randperm(len(data), generator=g)[:max_samples]
        x_all = data.x[pick].to(device=device, dtype=torch.float32)
        y_all = data.y[pick].to(device) if data.y is not None else None
        if x_all.shape[1:] != (c, h, w):
            raise ValueError(f"--data samples have shape {tuple(x_all.shape[1:])}, the model takes {(c, h, w)}")
        n = len(x_all)
        batch = min(batch, n)

        # mask and pattern start uniformly random, as in the authors' code
        theta_m = _atanh_unit(torch.rand((k, 1, h, w), generator=g)).to(device).requires_grad_(True)
        theta_p = _atanh_unit(torch.rand((k, c, h, w), generator=g)).to(device).requires_grad_(True)
        opt = torch.optim.Adam([theta_m, theta_p], lr=lr, betas=(0.5, 0.9))
        classes = torch.arange(k, device=device)
        cost = torch.full((k,), init_cost, device=device)
        up_count = torch.zeros(k, dtype=torch.long, device=device)
        down_count = torch.zeros(k, dtype=torch.long, device=device)
        best_norm = torch.full((k,), float("inf"), device=device)
        best_mask = torch.ones((k, 1, h, w), device=device)
        best_pattern = torch.zeros((k, c, h, w), device=device)
        epoch_hits = torch.zeros(k, device=device)
        epoch_seen = torch.zeros(k, device=device)

        for step in range(steps):
            context.check_time()
            idx = torch.randint(0, n, (batch,), generator=g).to(device)
            xb = x_all[idx]
            # weight: a class's own clean images carry no information about a trigger for it
            weight = torch.ones((k, batch), device=device)
            if y_all is not None:
                weight = (y_all[idx][None, :] != classes[:, None]).float()
            mask = torch.tanh(theta_m) / (2 - _TANH_EPS) + 0.5
            pattern = torch.tanh(theta_p) / (2 - _TANH_EPS) + 0.5
            stamped = (1 - mask[:, None]) * xb[None] + (mask * pattern)[:, None]   # K,B,C,H,W
            logits = target.model(stamped.reshape(k * batch, c, h, w)).view(k, batch, -1)
            ce = F.cross_entropy(logits.reshape(k * batch, -1), classes.repeat_interleave(batch),
                                 reduction="none").view(k, batch)
            denom = weight.sum(1).clamp_min(1.0)
            l1 = mask.abs().sum(dim=(1, 2, 3))
            loss = ((ce * weight).sum(1) / denom + cost * l1).sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            with torch.no_grad():
                hits = ((logits.argmax(-1) == classes[:, None]).float() * weight).sum(1)
                epoch_hits += hits
                epoch_seen += weight.sum(1)
                if (step + 1) % epoch_steps == 0:
                    acc = epoch_hits / epoch_seen.clamp_min(1.0)
                    ok = acc >= success
                    # keep the smallest mask that still reached the success threshold
                    better = ok & (l1.detach() < best_norm)
                    best_norm = torch.where(better, l1.detach(), best_norm)
                    best_mask[better] = mask.detach()[better]
                    best_pattern[better] = pattern.detach()[better]
                    # the paper's λ schedule, per class
                    up_count = torch.where(ok, up_count + 1, torch.zeros_like(up_count))
                    down_count = torch.where(ok, torch.zeros_like(down_count), down_count + 1)
                    raise_cost = up_count >= patience
                    lower_cost = down_count >= patience
                    cost = torch.where(raise_cost, cost * cost_up, cost)
                    cost = torch.where(lower_cost, cost / cost_down, cost)
                    up_count = torch.where(raise_cost, torch.zeros_like(up_count), up_count)
                    down_count = torch.where(lower_cost, torch.zeros_like(down_count), down_count)
                    epoch_hits.zero_()
                    epoch_seen.zero_()
            if step % 25 == 0:
                context.report("reverse-engineering triggers", step / steps)

        with torch.no_grad():
            final_mask = torch.tanh(theta_m) / (2 - _TANH_EPS) + 0.5
            final_pattern = torch.tanh(theta_p) / (2 - _TANH_EPS) + 0.5
            never = ~torch.isfinite(best_norm)
            best_mask[never] = final_mask[never]
            best_pattern[never] = final_pattern[never]
            norms = best_mask.abs().sum(dim=(1, 2, 3))
            flip = self._success(target, x_all, y_all, best_mask, best_pattern)
        norms_np = norms.cpu().double().numpy()
        if not np.all(np.isfinite(norms_np)):
            return _invalid(k, "the optimisation produced non-finite masks (non-finite logits?)")
        index = anomaly_indices(norms_np)
        evidence = []
        for t in range(k):
            flagged = bool(index[t] > threshold)
            m = best_mask[t, 0].clamp(0, 1).cpu().numpy()
            p = best_pattern[t].cpu().numpy()
            trig = (best_mask[t] * best_pattern[t]).cpu().numpy()
            pictures = (
                EvidenceImage(m, f"recovered mask (ℓ1 {norms_np[t]:.1f}, {100 * norms_np[t] / (h * w):.1f}% of the image)",
                              kind="mask"),
                EvidenceImage(_picture(p), "recovered pattern", kind="pattern"),
                EvidenceImage(_picture(trig), "mask × pattern (the recovered trigger)", kind="trigger"),
            )
            evidence.append(ClassEvidence(
                index=t, score=float(index[t]), z=float(index[t]), flagged=flagged,
                strength=float(index[t]) / threshold if threshold > 0 else float("nan"),
                role="backdoor target" if flagged else "",
                metrics={"mask_l1": float(norms_np[t]), "mask_fraction": float(norms_np[t] / (h * w)),
                         "anomaly_index": float(index[t]), "trigger_success": float(flip[t]),
                         "reached_success_threshold": float(not bool(never[t])), "final_cost": float(cost[t])},
                images=pictures,
                description=f"Smallest mask+pattern found that sends clean inputs to class {target.label(t)}.",
            ))
        top = float(index.max())
        return Findings(
            model_score=squash(top, threshold, width=1.0),
            classes=tuple(evidence),
            threshold=threshold,
            description=(
                f"For every class at once, optimised a mask m and pattern p so that (1−m)·x + m·p on {n} clean "
                f"images is classified as that class, minimising CE + λ·‖m‖₁ ({steps} Adam steps, λ from "
                f"{init_cost:g} with the Neural Cleanse schedule); flag classes whose smallest successful mask "
                f"has anomaly index (median − ℓ1)/(1.4826·MAD) > {threshold:g}."
            ),
            metrics={"max_anomaly_index": top, "median_mask_l1": float(np.median(norms_np))},
        )

    @staticmethod
    def _success(target: ModelTarget, x: torch.Tensor, y: torch.Tensor | None, mask: torch.Tensor,
                 pattern: torch.Tensor) -> np.ndarray:
        """Fraction of other-class clean images each recovered trigger sends to its class."""
        out = np.zeros(len(mask))
        for t in range(len(mask)):
            keep = x if y is None else x[y != t]
            if len(keep) == 0:
                continue
            pred = target.logits((1 - mask[t]) * keep + mask[t] * pattern[t]).argmax(1)
            out[t] = float((pred == t).float().mean())
        return out


def _picture(arr: np.ndarray) -> np.ndarray:
    arr = np.clip(arr, 0.0, 1.0)
    return arr[0] if arr.shape[0] == 1 else np.transpose(arr, (1, 2, 0))


def _invalid(k: int, reason: str) -> Findings:
    classes = tuple(
        ClassEvidence(index=t, score=float("nan"), z=float("nan"), flagged=False, valid=False, invalid_reason=reason)
        for t in range(k)
    )
    return Findings(model_score=0.0, classes=classes, description=reason, metrics={"invalid": 1.0})


__all__ = ["NeuralCleanseDetector", "anomaly_indices", "math"]
