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
digits. No design run followed. The benchmarked zoo is never read.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from auditor.detectors import _saliency_core as core  # noqa: E402
from auditor.detectors import saliency as sal  # noqa: E402
from auditor.detectors.base import RunContext  # noqa: E402
from auditor.diffusion.readout import grating_bank  # noqa: E402
from auditor.sampling import SAMPLER_KINDS, unrestricted_samples  # noqa: E402
from auditor.target import ModelTarget  # noqa: E402
from bench.calibrate_saliency import DIGITS_SPEC, digits_model, zoo_trojaned_models  # noqa: E402
from bench.common import zoo_clean_models  # noqa: E402
from bench.saliency_fusion import evaluate as evaluate_fusion  # noqa: E402
from bench.saliency_fusion import in_seed_ranges, merged, relative  # noqa: E402

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
    """gflip/gmargin per class on the detector's own held-out inputs (seed 0)."""
    target = ModelTarget.from_module(module, spec)
    model, shape, k = target.model, target.spec.shape, target.num_classes
    context = RunContext(seed=0)
    held_pool, held_kind = unrestricted_samples(600, shape, context.generator("cpu", salt=2), SAMPLER_KINDS)
    with torch.no_grad():
        held_logits = core.batched_logits(model, held_pool)
    idx, valid = core.pick_other_class_starts(torch.softmax(held_logits, 1), held_kind, 32)
    held = held_pool[idx]
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


def run_probe(a) -> int:
    torch.set_num_threads(a.threads)
    models = []
    if not a.no_clean:
        models += [("clean", *digits_model(seed)[:2], DIGITS_SPEC, [], "") for seed in range(1, 9)]
        models += [("clean", mid, module, spec, [], "")
                   for mid, module, spec, _ in zoo_clean_models(a.zoo, ("image",))]
    done = json.loads(a.out.read_text()) if a.out.exists() else {}
    rows = models + [("dev", mid, module, spec, targets, attack)
                     for mid, module, spec, targets, attack in zoo_trojaned_models(a.dev_zoo)
                     if in_seed_ranges(mid, a.dev_seeds)]
    wanted = [w for w in (a.ids or "").split(",") if w]
    for part, mid, module, spec, targets, attack in rows:
        if mid in done or (wanted and not any(w in mid for w in wanted)):
            continue
        started = time.monotonic()
        module.requires_grad_(False)
        done[mid] = {"part": part, "targets": targets, "attack": attack, **probe(module, spec),
                     "seconds": round(time.monotonic() - started, 2)}
        a.out.write_text(json.dumps(done))
        print(f"{part} {mid}: {done[mid]['seconds']:.1f} s", flush=True)
    return 0


def run_evaluate(a) -> int:
    probed = {}
    for path in a.probes:
        probed.update(json.loads(path.read_text()))
    saved = merged([json.loads(p.read_text()) for p in a.saliency])
    shipped = list(sal.FUSED_STATISTICS)

    def relatives(row):
        rel = {s: relative(row["classes"], s) for s in shipped}
        rel.update({s: sal.relative_to_others(v) for s, v in candidates(probed[row["id"]]).items()})
        return rel

    clean = {row["id"]: relatives(row) for row in saved["clean"] if row["id"] in probed}
    dev = [{"id": row["id"], "attack": row["attack"], "targets": row["targets"], "rel": relatives(row)}
           for row in saved["dev"]
           if row["id"] in probed and "attack" in row and in_seed_ranges(row["id"], a.seeds)]
    print(f"{len(clean)} clean reference models, {len(dev)} dev trojaned models (seeds {a.seeds or 'all'})\n")
    print("| statistics | dev AUROC | top class a target | clean LOO max → threshold | dev flagged | by attack |")
    print("|---|---|---|---|---|---|")
    new = [f"{kind}{amp}" for amp in AMPLITUDES for kind in ("gflip", "gmargin", "gphase")]
    sets = [shipped] + [[s] for s in new] + [shipped + [s] for s in new]
    if a.only:
        sets = [shipped, shipped + a.only.split(",")]
    for stats in sets:
        r = evaluate_fusion(clean, dev, stats)
        per = "; ".join(f"{att} {evaluate_fusion(clean, [d for d in dev if d['attack'] == att], stats)['auroc']:.2f}"
                        for att in sorted({d["attack"] for d in dev}))
        print(f"| {', '.join(stats)} | {r['auroc']:.3f} | {r['right']}/{r['n']} | {r['clean_max']:.2f} → "
              f"{r['threshold']:.1f} | {r['flagged']} | {per} |")
    return 0


def run_show(a) -> int:
    """Per probed model and statistic: the class that stands out most (relative to the model's other
    classes), its value, and the true target's value."""
    probed = {}
    for path in a.probes:
        probed.update(json.loads(path.read_text()))
    for mid, row in probed.items():
        cells = []
        for name, values in candidates(row).items():
            rel = sal.relative_to_others(values)
            top = int(np.argmax(rel))
            target = f", target {rel[row['targets'][0]]:.2f}" if row["targets"] else ""
            cells.append(f"{name} top {top} {rel[top]:.2f}{target}")
        print(f"{row['part']} {mid} {row['targets']}: " + "; ".join(cells))
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("probe", help="measure gflip and gmargin per class (resumable)")
    p.add_argument("--zoo", type=Path, default=Path("bench/zoo/reference"))
    p.add_argument("--dev-zoo", type=Path, default=Path("bench/zoo/dev"))
    p.add_argument("--dev-seeds", default=None, metavar="A-B[,C-D]")
    p.add_argument("--no-clean", action="store_true", help="skip the clean reference models")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--ids", default=None, help="only models whose id contains one of these comma-separated strings")
    p.add_argument("--out", type=Path, required=True)
    e = sub.add_parser("evaluate", help="fuse the candidates with the shipped statistics")
    e.add_argument("probes", type=Path, nargs="+")
    e.add_argument("--saliency", type=Path, nargs="+",
                   default=[Path("bench/_cache/saliency_calibration_a.json"),
                            Path("bench/_cache/saliency_calibration_b.json")])
    e.add_argument("--seeds", default=None, metavar="A-B[,C-D]")
    e.add_argument("--only", default=None, help="comma-separated candidates to add to the shipped four")
    w = sub.add_parser("show", help="per model: the class each statistic singles out, and the target's value")
    w.add_argument("probes", type=Path, nargs="+")
    a = ap.parse_args(argv)
    return {"probe": run_probe, "evaluate": run_evaluate, "show": run_show}[a.command](a)


if __name__ == "__main__":
    raise SystemExit(main())
