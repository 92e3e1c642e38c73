"""Does one faint grating send diverse inputs to a class? An exploratory `saliency` statistic (stop 27).

    python bench/grating_shortcut.py probe --out F.json --dev-seeds 6000-7807 [--ids A,B] [--no-clean]
    python bench/grating_shortcut.py show F.json        # per model: the class each statistic singles out
    python bench/grating_shortcut.py evaluate F.json [G.json] [--seeds A-B] [--only gphase0.2]
        # fused with the shipped four, against bench/_cache/saliency_calibration_{a,b}.json

The shipped statistics miss whole-image additive triggers (SIG: 0.61 on the dev models): an ℓ2 ball
large enough to reach the trigger's energy also holds adversarial universal perturbations for every
class of a clean model. A low-dimensional family cannot hold those: here, grey sinusoidal gratings
(every Fourier frequency of the image but DC, 8 phases), *added* to the input at amplitude a. Per
model, each grating of the bank is added at amplitude 0.2 to 8 search inputs (a sample stream apart
from the held-out one) and ranked per class by the mean margin toward the class; per class the 4 best
are then added to the detector's own held-out other-class inputs, and the best of the 4 gives

* ``gflip{a}``: the share of those inputs sent to the class;
* ``gmargin{a}``: their mean margin toward the class, in the model's typical margin units;
* ``gphase{a}``: how much of ``gflip`` the same grating loses shifted by half a period.

bench/RESULTS.md §3 "Stop 27" has what a first look at 16 models showed: every model has a grating
sink that outranks most SIG targets, and phase dependence separates on shapes but is reversed on
digits. No design run followed. The subcommands come from ``bench/candidate_probe.py``. The
benchmarked zoo is never read.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from auditor.detectors import _saliency_core as core  # noqa: E402
from auditor.diffusion.readout import grating_bank  # noqa: E402
from auditor.sampling import SAMPLER_KINDS, unrestricted_samples  # noqa: E402
from bench import candidate_probe  # noqa: E402

AMPLITUDES = (0.1, 0.2, 0.3)
SEARCH_INPUTS = 8
SEARCH_AMPLITUDE = 0.2
KEEP_PER_CLASS = 4


def additive_gratings(c: int, h: int, w: int) -> torch.Tensor:
    """(G, C, H, W) unit-amplitude grey gratings, every frequency but DC, 8 phases each."""
    return grating_bank(c, h, w, amplitude=1.0, max_period=float(max(h, w))) - 0.5


@torch.no_grad()
def best_gratings(model, search: torch.Tensor, k: int, bank: torch.Tensor) -> torch.Tensor:
    """(K, keep) indices into ``bank``: per class the gratings whose sum with the search inputs, at
    :data:`SEARCH_AMPLITUDE`, has the largest mean margin toward the class."""
    v = search.shape[0]
    per = max(1, 1024 // v)
    score = []
    for i in range(0, bank.shape[0], per):
        g = SEARCH_AMPLITUDE * bank[i:i + per]
        logits = model((search[None] + g[:, None]).clamp(0, 1).flatten(0, 1)).view(len(g), v, k)
        top2 = logits.topk(2, dim=2).values
        # margin toward each class t: logit_t − the largest other logit
        other = torch.where(logits == top2[..., :1], top2[..., 1:2], top2[..., :1])
        score.append((logits - other).mean(1))                                      # (g, K)
    return torch.cat(score).topk(KEEP_PER_CLASS, dim=0).indices.T                   # (K, keep)


@torch.no_grad()
def grating_statistics(model, held: torch.Tensor, valid: torch.Tensor, amplitude: float, bank: torch.Tensor,
                       best: torch.Tensor) -> tuple[list[float], list[float], list[float]]:
    """Per class t, the best of its chosen gratings added at ``amplitude`` to t's held-out inputs:
    the share sent to t, their mean margin toward t, and how much of that share the same grating
    loses when shifted by half a period (phase dependence)."""
    k = held.shape[0]
    flips, margins, phase = [], [], []
    n = held.shape[1]
    keep = valid.float()
    for t in range(k):
        g = amplitude * bank[best[t]]                                               # (keep, C, H, W)
        x = (held[t][None] + g[:, None]).clamp(0, 1).flatten(0, 1)
        logits = core.batched_logits(model, x)
        m = core.margins(logits, torch.full((len(x),), t)).view(len(g), n)
        hit = (logits.argmax(1) == t).float().view(len(g), n)
        f = (hit * keep[t]).sum(1) / keep[t].sum().clamp_min(1)
        mm = (m * keep[t]).sum(1) / keep[t].sum().clamp_min(1)
        j = int(torch.argmax(f * 1e6 + mm))
        flips.append(float(f[j]))
        margins.append(float(mm[j]))
        shifted = (held[t] - amplitude * bank[best[t, j]]).clamp(0, 1)    # cos(θ + π) = −cos θ
        hit_shifted = (core.batched_logits(model, shifted).argmax(1) == t).float()
        phase.append(float(f[j]) - float((hit_shifted * keep[t]).sum() / keep[t].sum().clamp_min(1)))
    return flips, margins, phase


def probe(module, spec) -> dict[str, list[float]]:
    """gflip, gmargin and gphase per class, on the detector's own held-out inputs (seed 0)."""
    model, shape, k, context, held, valid = candidate_probe.detector_held_out(module, spec)
    search = unrestricted_samples(SEARCH_INPUTS, shape, context.generator("cpu", salt=27), SAMPLER_KINDS)[0]
    bank = additive_gratings(*shape)
    out = {}
    best = best_gratings(model, search, k, bank)
    for a in AMPLITUDES:
        out[f"gflip{a}"], out[f"gmargin{a}"], out[f"gphase{a}"] = grating_statistics(model, held, valid, a, bank, best)
    return out


def candidates(row: dict) -> dict[str, np.ndarray]:
    out = {}
    for a in AMPLITUDES:
        out[f"gflip{a}"] = np.array(row[f"gflip{a}"])
        m = np.array(row[f"gmargin{a}"])
        out[f"gmargin{a}"] = m / (float(np.median(np.abs(m))) + 1e-9)
        out[f"gphase{a}"] = np.array(row[f"gphase{a}"])
    return out


#: the candidate statistics, in the order ``evaluate`` lists them
NEW = [f"{kind}{amp}" for amp in AMPLITUDES for kind in ("gflip", "gmargin", "gphase")]


def main(argv: list[str] | None = None) -> int:
    return candidate_probe.main(argv, __doc__, probe, candidates, NEW)


if __name__ == "__main__":
    raise SystemExit(main())
