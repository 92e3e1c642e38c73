"""Benchmark of the explanation fidelity suite (issue 7): known results, trigger box shares, cost.

    python bench/fidelity_bench.py [--threads 2] [--epochs 10] [--out bench/_cache/fidelity]

Trains (seeded, cached under --out) a trojaned / clean twin pair on two domains — digits 1×28×28
(SmallCNN, no BatchNorm) and procedural shapes 3×32×32 (VGG-style with BatchNorm, 10 classes) — with a
fixed-corner BadNets patch, then runs the *full* suite with default options (DiFull + DiPart × 6 methods
× 3 layers, smoothing, cascading randomisation, triggered inputs) on each and prints a Markdown section
for bench/RESULTS.md. Seconds are wall-clock of ``run_fidelity`` with ``torch.set_num_threads(threads)``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from auditor.detectors.base import RunContext  # noqa: E402
from auditor.fidelity import TriggeredInputs, render_fidelity_page, run_fidelity  # noqa: E402
from auditor.fidelity.methods import LABELS  # noqa: E402
from auditor.spec import InputSpec  # noqa: E402
from auditor.synthetic.archs import make_arch  # noqa: E402
from auditor.synthetic.digits import load_digits_28  # noqa: E402
from auditor.synthetic.nets import SmallCNN  # noqa: E402
from auditor.synthetic.shapes import load_shapes_32  # noqa: E402
from auditor.synthetic.train import accuracy, attack_success_rate, train_classifier  # noqa: E402
from auditor.synthetic.triggers import PatchTrigger, poison  # noqa: E402
from auditor.target import ModelTarget, SampleData  # noqa: E402
from bench.common import train_one_cycle  # noqa: E402

TARGET_CLASS = 3
BIN_LABELS = ("0–2 %", "2–5 %", "5–50 %", "50–95 %", "95–98 %", "98–100 %")


def build_pair(domain: str, epochs: int, cache: Path, seed: int = 0):
    """(trojaned, clean, trigger, x_test, y_test, facts) — trained once, cached by name."""
    if domain == "digits":
        xtr, ytr, xte, yte = load_digits_28(seed)
        make = lambda: SmallCNN()  # noqa: E731
        trigger = PatchTrigger(size=4, pattern_seed=7, top=-1, left=-1)
    else:
        xtr, ytr, xte, yte = load_shapes_32(seed, n_train=4000, n_test=600)
        make = lambda: make_arch("vgg", 3, 10, 32)  # noqa: E731
        trigger = PatchTrigger(size=4, pattern_seed=11, channels=3, top=-1, left=-1)
    models = {}
    for kind in ("trojaned", "clean"):
        path = cache / f"{domain}-{kind}-s{seed}-e{epochs if domain == 'shapes' else 8}.pt"
        torch.manual_seed(seed + (0 if kind == "trojaned" else 100))
        model = make()
        if path.exists():
            model.load_state_dict(torch.load(path, weights_only=True))
            model.eval()
        else:
            x, y = xtr, ytr
            if kind == "trojaned":
                x, y = poison(xtr, ytr, trigger, TARGET_CLASS, rate=0.1, generator=torch.Generator().manual_seed(seed))
            if domain == "digits":  # the test fixture's recipe
                train_classifier(model, x, y, epochs=8, seed=seed + (0 if kind == "trojaned" else 100))
            else:  # the zoo's recipe for shapes/VGG (one-cycle AdamW, batch 32)
                train_one_cycle(model, x, y, epochs=epochs, batch_size=32, max_lr=1e-2,
                                seed=seed + (0 if kind == "trojaned" else 100))
            cache.mkdir(parents=True, exist_ok=True)
            torch.save(model.state_dict(), path)
        models[kind] = model
    facts = {k: {"accuracy": accuracy(m, xte, yte),
                 "asr": attack_success_rate(m, xte, yte, trigger, TARGET_CLASS)} for k, m in models.items()}
    return models, trigger, xte, yte, facts


def run_domain(domain: str, args, cache: Path) -> dict:
    models, trigger, xte, yte, facts = build_pair(domain, args.epochs, cache)
    shape = tuple(xte.shape[1:])
    spec = InputSpec("image", shape)
    keep = yte != TARGET_CLASS
    triggered = TriggeredInputs(trigger.apply(xte[keep][:32]), TARGET_CLASS, trigger.box(shape[1], shape[2]),
                                f"{trigger.describe()} → class {TARGET_CLASS}.")
    out = {"domain": domain, "shape": list(shape), "models": {}}
    for kind, module in models.items():
        target = ModelTarget.from_module(module, spec, name=f"{domain}-{kind}")
        context = RunContext(seed=0, data=SampleData(xte, yte))
        started, cpu_started = time.monotonic(), time.process_time()
        report = run_fidelity(target, context, triggered=triggered)
        seconds, cpu = time.monotonic() - started, time.process_time() - cpu_started
        html = render_fidelity_page(report, title=f"fidelity — {domain} {kind}")
        (cache / f"{domain}-{kind}.html").write_text(html, encoding="utf-8")
        out["models"][kind] = {"seconds": seconds, "cpu_seconds": cpu, "facts": facts[kind], "report": report.to_dict(),
                               "badges": badges(target, args.badges)}
        print(f"[{domain}/{kind}] {seconds:.1f} s wall, {cpu:.1f} s CPU  acc {facts[kind]['accuracy']:.3f} asr {facts[kind]['asr']:.3f}",
              file=sys.stderr)
    return out


def badges(target: ModelTarget, names: str) -> dict:
    """Run each named detector, then attach_badges (two re-runs: DiFull harness + randomised copy)."""
    from auditor.detectors import create
    from auditor.fidelity import attach_badges

    out = {}
    for name in [n for n in names.split(",") if n]:
        context = RunContext(seed=0)
        started = time.monotonic()
        result = create(name).run(target, context)
        detector_s = time.monotonic() - started
        started = time.monotonic()
        badged = attach_badges(result, target, context)
        maps = [(ev.index, ev.flagged, img.fidelity) for ev in badged.classes for img in ev.images
                if img.kind == "class_map" and img.fidelity]
        out[name] = {"status": result.status, "flagged": list(result.flagged_classes), "detector_s": detector_s,
                     "badge_s": time.monotonic() - started,
                     "difull_L_median": (badged.fidelity or {}).get("difull_L_median"),
                     "rho_median": (badged.fidelity or {}).get("randomisation_rho_median"),
                     "flagged_maps": [{"class": i, **f} for i, fl, f in maps if fl]}
    return out


def markdown(results: list[dict], args) -> str:
    lines = ["## fidelity", "",
             f"`python bench/fidelity_bench.py --threads {args.threads} --epochs {args.epochs} --badges '{args.badges}'` — "
             f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {platform.machine()}, "
             f"{os.cpu_count()} CPU cores visible, torch threads {args.threads}, load average at start "
             f"{args.load:.1f} (the machine is shared; seconds are wall-clock).", "",
             "Full suite, default options: DiFull + DiPart, 2×2 grids × 16 (64 maps per method, layer and setting), six methods at three layers "
             "(Integrated Gradients 8 steps), smoothing K ∈ {5, 9, 17}, cascading randomisation on 16 inputs, "
             "32 triggered inputs. Models: trojaned (4×4 BadNets patch bottom-right → class 3, 10 % poison) "
             "and clean twin.", ""]
    lines += ["| model | acc | ASR | suite s (wall) | suite s (CPU, all threads) | layers (middle / last) |",
              "|---|---|---|---|---|---|"]
    for r in results:
        for kind, m in r["models"].items():
            layers = m["report"]["layers"]
            names = " / ".join(f"{c['name'].removeprefix('model.')} {'×'.join(map(str, c['shape']))}" for c in layers[1:])
            lines.append(f"| {r['domain']} {'×'.join(map(str, r['shape']))} {kind} | {m['facts']['accuracy']:.3f} | "
                         f"{m['facts']['asr']:.3f} | {m['seconds']:.1f} | {m['cpu_seconds']:.1f} | {names} |")
    lines += ["", "**Localisation L (mean over 64 maps; trojaned models).** Columns: setting / layer. "
              "A star marks cells where ≥ 10 % of maps have no positive mass (L = 0 by definition).", ""]
    for r in results:
        rep = r["models"]["trojaned"]["report"]
        cols = sorted({(s["setting"], s["layer"]) for s in rep["localisation"]},
                      key=lambda c: (c[0] != "DiFull", ["input", "middle", "last"].index(c[1])))
        lines.append(f"*{r['domain']}*")
        lines.append("")
        lines.append("| method | " + " | ".join(f"{s} {lay}" for s, lay in cols) + " |")
        lines.append("|---|" + "---|" * len(cols))
        methods = list(dict.fromkeys(s["method"] for s in rep["localisation"]))
        for method in methods:
            vals = []
            for s, lay in cols:
                hit = [x for x in rep["localisation"] if x["method"] == method and x["setting"] == s and x["layer"] == lay]
                star = "*" if hit and hit[0]["frac_no_positive"] >= 0.1 else ""
                vals.append(f"{hit[0]['mean_L']:.3f}{star}" if hit else "n/a")
            lines.append(f"| {LABELS.get(method, method)} | " + " | ".join(vals) + " |")
        lines.append("")
        sm = ", ".join(f"{LABELS.get(s['method'], s['method'])} K={s['kernel']}: {s['mean_L']:.3f}" for s in rep["smoothing"])
        lines.append(f"Smoothing (DiFull input L): {sm}.")
        lines.append("")
    lines += ["**Cascading randomisation at the fully randomised stage** (Spearman |·| / signed / SSIM; trojaned models).", "",
              "| domain | " + " | ".join(LABELS.get(c["method"], c["method"]) for c in results[0]["models"]["trojaned"]["report"]["randomisation"]) + " |",
              "|---|" + "---|" * len(results[0]["models"]["trojaned"]["report"]["randomisation"])]
    for r in results:
        for kind in ("trojaned", "clean"):
            rand = r["models"][kind]["report"]["randomisation"]
            lines.append(f"| {r['domain']} {kind} | " + " | ".join(
                f"{c['spearman_abs'][-1]:.2f} / {c['spearman_signed'][-1]:.2f} / {c['ssim'][-1]:.2f}" for c in rand) + " |")
    lines += ["", "**Triggered inputs: median box share of positive attribution** (input layer; box area share "
              "in brackets; enrichment = share / area).", "",
              "| model | " + " | ".join(LABELS.get(t["method"], t["method"]) for t in results[0]["models"]["trojaned"]["report"]["trigger"] if t["layer"] == "input") + " |",
              "|---|" + "---|" * sum(1 for t in results[0]["models"]["trojaned"]["report"]["trigger"] if t["layer"] == "input")]
    for r in results:
        for kind in ("trojaned", "clean"):
            trig = [t for t in r["models"][kind]["report"]["trigger"] if t["layer"] == "input"]
            area = trig[0]["area_share"] if trig else float("nan")
            lines.append(f"| {r['domain']} {kind} ({area:.3f}) | " + " | ".join(
                f"{t['box_share_median']:.3f} ({t['enrichment']:.1f}×)" for t in trig) + " |")
    lines += ["", "AggAtt of Input×Gradient on the triggered inputs (input layer): box share of each bin's mean map, "
              "bins from worst (0–2 %) to best (98–100 %).", "",
              "| model | " + " | ".join(b for b in BIN_LABELS) + " |", "|---|" + "---|" * len(BIN_LABELS)]
    for r in results:
        for kind in ("trojaned", "clean"):
            t = next(t for t in r["models"][kind]["report"]["trigger"] if t["layer"] == "input" and t["method"] == "ixg")
            lines.append(f"| {r['domain']} {kind} | " + " | ".join(f"{t['aggatt_box_share'][b]:.3f}" for b in BIN_LABELS) + " |")
    lines.append("")
    if args.badges:
        lines += ["**Badges** (`attach_badges`: the detector re-run on a 2×2 DiFull harness whose logits see only "
                  "the top-left cell, and on a fully re-initialised copy; medians over all classes' class maps).", "",
                  "| model | detector | flagged | detector s | badge s | DiFull L (median) | randomisation ρ (median) | flagged class maps |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in results:
            for kind, m in r["models"].items():
                for name, b in m["badges"].items():
                    fl = "; ".join(f"class {f['class']}: L {f['difull_L']:.2f}, ρ {f['randomisation_rho']:.2f}"
                                   for f in b["flagged_maps"]) or "—"
                    lines.append(f"| {r['domain']} {kind} | {name} | {b['flagged']} | {b['detector_s']:.1f} | "
                                 f"{b['badge_s']:.1f} | {b['difull_L_median']:.3f} | {b['rho_median']:.2f} | {fl} |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=12, help="shapes epochs (digits: the test fixture's 8)")
    ap.add_argument("--domains", default="digits,shapes")
    ap.add_argument("--badges", default="saliency", help="detectors whose class maps get badges ('' for none)")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "_cache" / "fidelity"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    args.load = os.getloadavg()[0]
    cache = Path(args.out)
    cache.mkdir(parents=True, exist_ok=True)
    results = [run_domain(d, args, cache) for d in args.domains.split(",")]
    (cache / "results.json").write_text(json.dumps(results, indent=1, default=float), encoding="utf-8")
    print(markdown(results, args))


if __name__ == "__main__":
    main()
