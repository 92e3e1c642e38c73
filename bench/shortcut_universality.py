"""How universal is each class's shortcut? A candidate `saliency` statistic, measured offline (stop 26).

    python bench/shortcut_universality.py probe --out bench/_cache/univ_a.json --dev-seeds 6000-7807
    python bench/shortcut_universality.py probe --out bench/_cache/univ_b.json --dev-seeds 9100-9807 --no-clean
    python bench/shortcut_universality.py evaluate bench/_cache/univ_a.json bench/_cache/univ_b.json \\
        --seeds 9100-9807   # against bench/_cache/saliency_calibration_{a,b}.json (calibrate_saliency.py)

Per class t of each model: U(r), the mean margin toward t that ONE universal perturbation in an ℓ2 ball of
r RMS per pixel reaches on the detector's held-out other-class inputs (the detector's shortcut loop and
sample streams: at r = 0.5 it reproduces ``shortcut_margin_logits``), and P(r), the mean margin that a
separate perturbation per input reaches in the same ball on the same inputs. Candidates: U / P (scale-free)
and (U − P) / median |P|, each fused with the shipped statistics through ``bench/saliency_fusion.evaluate``
(all statistics calibrated on the clean reference models, leave-one-out). bench/RESULTS.md §3 "Stop 26"
holds the rule and the result (not integrated). The subcommands (and ``show``) come from
``bench/candidate_probe.py``. The benchmarked zoo is never read.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from auditor.detectors import _saliency_core as core  # noqa: E402
from auditor.sampling import SAMPLER_KINDS, unrestricted_samples  # noqa: E402
from bench import candidate_probe  # noqa: E402

RADII = (0.5, 0.2)
STEPS = 20
STEP_SIZE = 0.2  # fraction of the ball radius, as the detector's universal loop


def per_input_margins(model, held: torch.Tensor, valid: torch.Tensor, radius: float) -> list[float]:
    """Mean margin toward t of per-input ℓ2 perturbations (normalised gradient steps with momentum,
    projected on the ball after each step) over the countable held-out inputs (K, N, C, H, W)."""
    k, n = held.shape[:2]
    view = (-1,) + (1,) * (held.dim() - 2)
    ball = radius * float(held[0, 0].numel()) ** 0.5
    x = held.flatten(0, 1)
    t = torch.arange(k).repeat_interleave(n)
    delta, velocity = torch.zeros_like(x), torch.zeros_like(x)
    for _ in range(STEPS):
        d = delta.clone().requires_grad_(True)
        for i in range(0, len(x), core.CHUNK_IMAGES):
            part = slice(i, i + core.CHUNK_IMAGES)
            F.cross_entropy(model((x[part] + d[part]).clamp(0, 1)), t[part], reduction="sum").backward()
        grad = d.grad / d.grad.flatten(1).norm(dim=1).clamp_min(1e-12).view(view)
        velocity = 0.9 * velocity + grad
        delta = delta - STEP_SIZE * ball * velocity / velocity.flatten(1).norm(dim=1).clamp_min(1e-12).view(view)
        delta = delta * (ball / delta.flatten(1).norm(dim=1).clamp_min(1e-12)).clamp(max=1.0).view(view)
    with torch.no_grad():
        m = core.margins(core.batched_logits(model, (x + delta).clamp(0, 1)), t).view(k, n)
    keep = valid.float()
    return ((m * keep).sum(1) / keep.sum(1).clamp_min(1)).tolist()


def probe(module, spec) -> dict[str, list[float]]:
    """U(r) and P(r) per class, on the detector's own held-out inputs and shortcut sample stream (seed 0)."""
    model, shape, k, context, held, valid = candidate_probe.detector_held_out(module, spec)
    out = {}
    for r in RADII:
        stream = context.generator("cpu", salt=5)
        universal = core.universal_perturbations(
            model, k, lambda n, g=stream: unrestricted_samples(n, shape, g, SAMPLER_KINDS)[0], radius=r, steps=STEPS,
            batch=16, step_size=STEP_SIZE, eval_x=held, eval_valid=valid, check=lambda: None)
        out[f"U{r}"] = torch.nan_to_num(universal.margin, nan=0.0).tolist()
        out[f"P{r}"] = per_input_margins(model, held, valid, r)
    return out


def candidates(row: dict) -> dict[str, np.ndarray]:
    out = {}
    for r in RADII:
        u, p = np.array(row[f"U{r}"]), np.array(row[f"P{r}"])
        typical = float(np.median(np.abs(p))) + 1e-9
        out[f"univ{r}"] = u / np.maximum(p, 0.05 * typical)
        out[f"gap{r}"] = (u - p) / typical
        out[f"U{r}"] = u / (float(np.median(np.abs(u))) + 1e-9)
    return out


#: the candidate statistics, in the order ``evaluate`` lists them
NEW = [f"{kind}{r}" for r in RADII for kind in ("univ", "gap", "U")]


def main(argv: list[str] | None = None) -> int:
    return candidate_probe.main(argv, __doc__, probe, candidates, NEW)


if __name__ == "__main__":
    raise SystemExit(main())
