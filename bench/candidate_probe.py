"""The shared driver of the offline `saliency` candidate probes (``bench/shortcut_universality.py``,
``bench/grating_shortcut.py``): which models a probe runs on, its resumable output, and how a candidate
statistic is judged against the shipped ones.

A probe script supplies ``probe(module, spec) -> {name: per-class list}``, ``candidates(row) ->
{statistic: per-class array}`` and the names of its candidate statistics; this module gives it three
subcommands:

* ``probe --out F.json [--dev-seeds A-B] [--ids X,Y] [--no-clean]``: the 8 clean digits SmallCNNs and
  the clean reference zoo's image models, then the dev split's scored trojaned models (resumable);
* ``evaluate F.json [G.json] [--seeds A-B] [--only S]``: each candidate alone and fused with the
  shipped statistics through ``bench/saliency_fusion.evaluate`` (every statistic relative to the model's
  other classes, calibrated on the clean reference models, leave-one-out), against the detector's saved
  statistics (``bench/calibrate_saliency.py`` outputs);
* ``show F.json``: per model and statistic, the class that stands out most and the true target's value.

The benchmarked zoo is never read.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

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

Probe = Callable[..., dict[str, list[float]]]


def detector_held_out(module, spec):
    """What the `saliency` detector measures its statistics on, with seed 0: ``(model, shape, K, context,
    held, valid)``, where ``held`` (K, 32, ...) holds per class the unrestricted samples least like it
    and ``valid`` marks those the model puts in another class."""
    target = ModelTarget.from_module(module, spec)
    model, shape, k = target.model, target.spec.shape, target.num_classes
    context = RunContext(seed=0)
    pool, kind = unrestricted_samples(600, shape, context.generator("cpu", salt=2), SAMPLER_KINDS)
    with torch.no_grad():
        logits = core.batched_logits(model, pool)
    idx, valid = core.pick_other_class_starts(torch.softmax(logits, 1), kind, 32)
    return model, shape, k, context, pool[idx], valid
Candidates = Callable[[dict], dict[str, np.ndarray]]


def run_probe(a, probe: Probe) -> int:
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


def _load(paths: Sequence[Path]) -> dict[str, dict]:
    probed: dict[str, dict] = {}
    for path in paths:
        probed.update(json.loads(path.read_text()))
    return probed


def run_evaluate(a, candidates: Candidates, new: Sequence[str]) -> int:
    probed = _load(a.probes)
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


def run_show(a, candidates: Candidates) -> int:
    for mid, row in _load(a.probes).items():
        cells = []
        for name, values in candidates(row).items():
            rel = sal.relative_to_others(values)
            top = int(np.argmax(rel))
            target = f", target {rel[row['targets'][0]]:.2f}" if row["targets"] else ""
            cells.append(f"{name} top {top} {rel[top]:.2f}{target}")
        print(f"{row['part']} {mid} {row['targets']}: " + "; ".join(cells))
    return 0


def main(argv: list[str] | None, doc: str, probe: Probe, candidates: Candidates, new: Sequence[str]) -> int:
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("probe", help="measure the candidate's raw values per class (resumable)")
    p.add_argument("--zoo", type=Path, default=Path("bench/zoo/reference"))
    p.add_argument("--dev-zoo", type=Path, default=Path("bench/zoo/dev"))
    p.add_argument("--dev-seeds", default=None, metavar="A-B[,C-D]")
    p.add_argument("--no-clean", action="store_true", help="skip the clean reference models")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--ids", default=None, help="only models whose id contains one of these comma-separated strings")
    p.add_argument("--out", type=Path, required=True)
    e = sub.add_parser("evaluate", help="each candidate alone and fused with the shipped statistics")
    e.add_argument("probes", type=Path, nargs="+")
    e.add_argument("--saliency", type=Path, nargs="+",
                   default=[Path("bench/_cache/saliency_calibration_a.json"),
                            Path("bench/_cache/saliency_calibration_b.json")])
    e.add_argument("--seeds", default=None, metavar="A-B[,C-D]")
    e.add_argument("--only", default=None, help="comma-separated candidates to add to the shipped four")
    w = sub.add_parser("show", help="per model: the class each statistic singles out, and the target's value")
    w.add_argument("probes", type=Path, nargs="+")
    a = ap.parse_args(argv)
    if a.command == "probe":
        return run_probe(a, probe)
    if a.command == "evaluate":
        return run_evaluate(a, candidates, new)
    return run_show(a, candidates)
