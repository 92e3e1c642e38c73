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
holds the rule and the result (not integrated). The benchmarked zoo is never read.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from auditor.detectors import _saliency_core as core  # noqa: E402
from auditor.detectors import saliency as sal  # noqa: E402
from auditor.detectors.base import RunContext  # noqa: E402
from auditor.sampling import SAMPLER_KINDS, unrestricted_samples  # noqa: E402
from auditor.target import ModelTarget  # noqa: E402
from bench.calibrate_saliency import DIGITS_SPEC, digits_model, zoo_trojaned_models  # noqa: E402
from bench.common import zoo_clean_models  # noqa: E402
from bench.saliency_fusion import evaluate as evaluate_fusion  # noqa: E402
from bench.saliency_fusion import in_seed_ranges, merged, relative  # noqa: E402

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
    target = ModelTarget.from_module(module, spec)
    model, shape, k = target.model, target.spec.shape, target.num_classes
    context = RunContext(seed=0)
    held_pool, held_kind = unrestricted_samples(600, shape, context.generator("cpu", salt=2), SAMPLER_KINDS)
    with torch.no_grad():
        held_logits = core.batched_logits(model, held_pool)
    idx, valid = core.pick_other_class_starts(torch.softmax(held_logits, 1), held_kind, 32)
    held = held_pool[idx]
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
    for part, mid, module, spec, targets, attack in rows:
        if mid in done:
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
    new = [f"{kind}{r}" for r in RADII for kind in ("univ", "gap", "U")]
    for stats in [shipped] + [[s] for s in new] + [shipped + [s] for s in new]:
        r = evaluate_fusion(clean, dev, stats)
        per = "; ".join(f"{att} {evaluate_fusion(clean, [d for d in dev if d['attack'] == att], stats)['auroc']:.2f}"
                        for att in sorted({d["attack"] for d in dev}))
        print(f"| {', '.join(stats)} | {r['auroc']:.3f} | {r['right']}/{r['n']} | {r['clean_max']:.2f} → "
              f"{r['threshold']:.1f} | {r['flagged']} | {per} |")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("probe", help="measure U and P per class (resumable)")
    p.add_argument("--zoo", type=Path, default=Path("bench/zoo/reference"))
    p.add_argument("--dev-zoo", type=Path, default=Path("bench/zoo/dev"))
    p.add_argument("--dev-seeds", default=None, metavar="A-B[,C-D]")
    p.add_argument("--no-clean", action="store_true", help="skip the clean reference models")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, required=True)
    e = sub.add_parser("evaluate", help="fuse the candidates with the shipped statistics")
    e.add_argument("probes", type=Path, nargs="+")
    e.add_argument("--saliency", type=Path, nargs="+",
                   default=[Path("bench/_cache/saliency_calibration_a.json"),
                            Path("bench/_cache/saliency_calibration_b.json")])
    e.add_argument("--seeds", default=None, metavar="A-B[,C-D]")
    a = ap.parse_args(argv)
    return run_probe(a) if a.command == "probe" else run_evaluate(a)


if __name__ == "__main__":
    raise SystemExit(main())
