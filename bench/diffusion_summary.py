"""Summarise diffusion_bench.py rows: spurious models, clean flag rate, per-attack AUROC.

    python bench/diffusion_summary.py [--rescore] bench/diffusion_results.json

``--rescore``: flags, candidates and model scores are recomputed from each row's per-class flip rates
and controls with the thresholds now in each bundled prior's ``prior.json``, by the detector's rule —
for a run made before only the calibration changed (the detector is deterministic given its seed).

The model score is the detector's (largest flip rate ÷ its threshold, mapped to (0, 1)); rows written
before the bench recorded it are scored from their per-class flip rates with the same rule and the
thresholds in each bundled prior's ``prior.json``.
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from auditor.diffusion.generators import available_priors  # noqa: E402


def auroc(pos: list[float], neg: list[float]) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score([1] * len(pos) + [0] * len(neg), list(pos) + list(neg))) if pos and neg else float("nan")

BORDER_LOSS = 0.5
TEXTURE_LOSS = 0.5


def row_thresholds(row: dict, thresholds: dict[str, float]) -> dict[str, float]:
    """A prior's thresholds as the row's scan used them: a row made with the frame scan (recorded since
    stop 31; earlier rows had it off unless their file says otherwise) uses the scan's frame threshold."""
    if row.get("frame_scan") and "frame (frame scan)" in thresholds:
        return {**thresholds, "frame": thresholds["frame (frame scan)"]}
    return thresholds


def score_of(row: dict, thresholds: dict[str, float]) -> float:
    if "model_score" in row:
        return row["model_score"]
    thresholds = row_thresholds(row, thresholds)
    best = 0.0
    for c in row["class_flips"].values():
        frame = c["frame"] if c["frame_moved_inward"] <= BORDER_LOSS * c["frame"] else 0.0
        best = max(best, frame / thresholds["frame"], c["background_texture"] / thresholds["background texture"])
    return best / (1 + best)


def rescore(row: dict, thresholds: dict[str, float]) -> None:
    """The detector's flag rule on the row's per-class flip rates and controls, in place."""
    thresholds = row_thresholds(row, thresholds)
    flagged, candidates, best = [], [], 0.0
    for cls, c in row["class_flips"].items():
        usable = {"frame": c["frame"] if c["frame_moved_inward"] <= BORDER_LOSS * c["frame"] else 0.0,
                  "background texture": c["background_texture"]
                  if max(c.get("texture_as_noise", 0.0), c.get("texture_shifted", 0.0)) <= TEXTURE_LOSS * c["background_texture"]
                  else 0.0}
        ratio = {cand: usable[cand] / max(thresholds[cand], 1e-6) for cand in usable}
        cand = max(ratio, key=ratio.get)
        best = max(best, ratio[cand])
        if ratio[cand] >= 1.0:
            flagged.append(int(cls))
            candidates.append(cand)
    row.update(flagged=flagged, flagged_candidates=candidates, model_score=best / (1 + best))


def main() -> None:
    args = sys.argv[1:]
    redo = "--rescore" in args
    rows = [r for f in args if f != "--rescore" for r in json.loads(Path(f).read_text())]
    manifest = {m["id"]: m for m in json.loads((ROOT / "bench" / "zoo" / "manifest.json").read_text())["members"]}
    priors = {tuple(p.input_shape): dict(p.thresholds) for p in available_priors()}
    domain_shape = {"digits": (1, 28, 28), "shapes": (3, 32, 32)}
    by_kind = defaultdict(list)
    for r in rows:
        m = manifest.get(r["id"])
        domain = m["domain"] if m else "digits"
        r["domain"] = domain
        if r["status"] != "ok":
            print(f"{r['id']}: {r['status']} ({r['reason'][:90]})")
            by_kind["skipped"].append(r)
            continue
        if redo:
            rescore(r, priors[domain_shape[domain]])
        r["score"] = score_of(r, priors[domain_shape[domain]])
        r["targets"] = m["target_classes"] if m and m["trojaned"] else ([r["truth_class"]] if r["truth_class"] is not None else [])
        r["scored"] = bool(m["scored"]) if m else False
        by_kind[r["kind"].split("/")[0]].append(r)
    print("\nspurious models")
    for r in by_kind["spurious"]:
        hit = r["truth_class"] in r["flagged"]
        print(f"  {r['id']:40s} truth {r['truth_class']} flagged {r['flagged']} {r.get('flagged_candidates')} "
              f"truth flip {r['truth_flip']} ({r['truth_candidate']}), true feature {r['true_feature_flip']:.2f}, "
              f"{'FOUND' if hit else 'missed'}{'' if r['scored'] else ' [not a scored zoo member]'}")
    clean = [r for r in by_kind["clean"] if r["scored"]]
    print("\nclean zoo models flagged:", sum(bool(r["flagged"]) for r in clean), "of", len(clean),
          {d: f"{sum(bool(r['flagged']) for r in clean if r['domain'] == d)}/{sum(r['domain'] == d for r in clean)}"
           for d in ("digits", "shapes")})
    for r in clean:
        if r["flagged"]:
            print("   ", r["id"], r["flagged"], r.get("flagged_candidates"))
    skipped = [r for r in by_kind["skipped"] if r["id"] in manifest]
    print("skipped zoo models:", len(skipped))
    troj = [r for r in by_kind["trojaned"] if r["scored"]]
    print("\ntrojaned: per attack AUROC (vs the scored clean models of both domains), flagged, target right")
    attacks = defaultdict(list)
    for r in troj:
        attacks[r["kind"].split("/")[1]].append(r)
    neg = [r["score"] for r in clean]
    for name, group in sorted(attacks.items()):
        a = auroc([r["score"] for r in group], neg)
        flagged = [r for r in group if r["flagged"]]
        right = sum(bool(set(r["flagged"]) & set(r["targets"])) for r in flagged)
        print(f"  {name:12s} n={len(group)} AUROC {a:.2f} flagged {len(flagged)} target right {right}")
    print(f"  overall AUROC {auroc([r['score'] for r in troj], neg):.2f} (n={len(troj)} vs {len(neg)} clean)")
    secs = sorted(r["seconds"] for r in rows if r["status"] == "ok")
    for d in ("digits", "shapes"):
        s = sorted(r["seconds"] for r in rows if r["status"] == "ok" and r["domain"] == d)
        if s:
            print(f"seconds {d}: median {s[len(s) // 2]:.0f}, max {s[-1]:.0f} (n={len(s)})")
    print("activation score: min", min(r["mean_activation"] for r in rows if r["status"] == "ok"), "n", len(secs))


if __name__ == "__main__":
    main()
