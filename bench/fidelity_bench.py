"""Benchmark of the explanation fidelity suite (issue 7): known results, trigger box shares, cost.

    python bench/fidelity_bench.py [--threads 2] [--epochs 10] [--out bench/_cache/fidelity]

Trains (seeded, cached under --out) a trojaned / clean twin pair on two domains — digits 1×28×28
(SmallCNN, no BatchNorm) and procedural shapes 3×32×32 (VGG-style with BatchNorm, 10 classes) — with a
fixed-corner BadNets patch, then runs the *full* suite with default options (DiFull + DiPart × 6 methods
× 3 layers, smoothing, cascading randomisation, triggered inputs) on each and prints a Markdown section
for bench/RESULTS.md. Seconds are wall-clock of ``run_fidelity`` with ``torch.set_num_threads(threads)``.

    python bench/fidelity_bench.py --zoo bench/zoo [--only SUBSTRING] [--clean-per-domain 4] [--threads 1]

Zoo mode (issue 7 acceptance on the project's zoo): for every scored zoo member with a patch trigger
(patch, large_patch at their fixed location; patch_random stamped at one seeded location — its model was
trained with the patch anywhere, so any placement is an instance of its trigger and the box is known) and
for up to ``--clean-per-domain`` clean members of the same domains (the null: each borrows a trojaned
member's trigger and target, round-robin), runs the full suite with default options on the domain's
held-out inputs outside the target class stamped with that trigger, and prints a Markdown section.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
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


def _input_trigger(report: dict) -> list[dict]:
    return [t for t in report["trigger"] if t["layer"] == "input"]


def _header(first: str, columns: list[str]) -> list[str]:
    return [f"| {first} | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]


def _rand_cell(curve: dict) -> str:
    """Spearman |·| / signed / SSIM at the fully randomised stage."""
    return f"{curve['spearman_abs'][-1]:.2f} / {curve['spearman_signed'][-1]:.2f} / {curve['ssim'][-1]:.2f}"


def _share_cell(score: dict) -> str:
    return f"{score['box_share_median']:.3f} ({score['enrichment']:.1f}×)"


def _aggatt_ixg(report: dict) -> dict:
    return next(t for t in _input_trigger(report) if t["method"] == "ixg")["aggatt_box_share"]


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
    first = results[0]["models"]["trojaned"]["report"]
    lines += ["**Cascading randomisation at the fully randomised stage** (Spearman |·| / signed / SSIM; trojaned models).", ""]
    lines += _header("domain", [LABELS.get(c["method"], c["method"]) for c in first["randomisation"]])
    for r in results:
        for kind in ("trojaned", "clean"):
            rand = r["models"][kind]["report"]["randomisation"]
            lines.append(f"| {r['domain']} {kind} | " + " | ".join(_rand_cell(c) for c in rand) + " |")
    lines += ["", "**Triggered inputs: median box share of positive attribution** (input layer; box area share "
              "in brackets; enrichment = share / area).", ""]
    lines += _header("model", [LABELS.get(t["method"], t["method"]) for t in _input_trigger(first)])
    for r in results:
        for kind in ("trojaned", "clean"):
            trig = _input_trigger(r["models"][kind]["report"])
            area = trig[0]["area_share"] if trig else float("nan")
            lines.append(f"| {r['domain']} {kind} ({area:.3f}) | " + " | ".join(_share_cell(t) for t in trig) + " |")
    lines += ["", "AggAtt of Input×Gradient on the triggered inputs (input layer): box share of each bin's mean map, "
              "bins from worst (0–2 %) to best (98–100 %).", ""]
    lines += _header("model", list(BIN_LABELS))
    for r in results:
        for kind in ("trojaned", "clean"):
            bins = _aggatt_ixg(r["models"][kind]["report"])
            lines.append(f"| {r['domain']} {kind} | " + " | ".join(f"{bins[b]:.3f}" for b in BIN_LABELS) + " |")
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


# --------------------------------------------------------------------------------------------------
# Zoo mode: the acceptance figures on the project's zoo (bench/zoo, built by bench/zoo.py)

PATCH_ATTACKS = ("patch", "large_patch", "patch_random")


def zoo_plan(zoo: Path, only: str, clean_per_domain: int) -> list[dict]:
    """Scored patch members (trigger as planted) plus clean members of their domains (borrowed trigger)."""
    from dataclasses import replace

    from bench.zoo import DOMAIN_SHAPE, make_trigger

    members = [m for m in json.loads((zoo / "manifest.json").read_text(encoding="utf-8"))["members"] if m["scored"]]
    plan = []
    for m in members:
        if m["attack"] not in PATCH_ATTACKS:
            continue
        channels, height, width = DOMAIN_SHAPE[m["domain"]]
        trigger = make_trigger(m["attack_params"], channels)
        if trigger.box(height, width) is None:  # random placement: one seeded location for all inputs
            g = torch.Generator().manual_seed(m["recipe"]["seed"])
            top = int(torch.randint(0, height - trigger.size + 1, (1,), generator=g))
            left = int(torch.randint(0, width - trigger.size + 1, (1,), generator=g))
            trigger = replace(trigger, top=top, left=left)
        plan.append({"member": m, "role": "trojaned", "trigger": trigger, "target": m["target_classes"][0],
                     "trigger_of": m["id"]})
    for domain in dict.fromkeys(p["member"]["domain"] for p in plan):
        donors = [p for p in plan if p["member"]["domain"] == domain]
        clean = [m for m in members if m["domain"] == domain and not m["trojaned"] and not m["spurious"]]
        for i, m in enumerate(clean[:clean_per_domain]):
            donor = donors[i % len(donors)]
            plan.append({"member": m, "role": "clean", "trigger": donor["trigger"], "target": donor["target"],
                         "trigger_of": donor["member"]["id"]})
    return [p for p in plan if only in p["member"]["id"]]


def run_zoo_member(item: dict, zoo: Path, n_triggered: int = 32) -> dict:
    from auditor.loading import load_model

    m, trigger, target_class = item["member"], item["trigger"], item["target"]
    with np.load(zoo / m["data"], allow_pickle=False) as z:
        x, y = torch.from_numpy(z["x"]).float(), torch.from_numpy(z["y"]).long()
    model = load_model(str(zoo / m["file"]))
    box = trigger.box(x.shape[2], x.shape[3])
    xt = trigger.apply(x[y != target_class][:n_triggered])
    with torch.no_grad():
        hit = float((model.model(xt.to(model.device)).argmax(1).cpu() == target_class).float().mean())
    triggered = TriggeredInputs(xt, target_class, box, f"{trigger.describe()} → class {target_class}.")
    started = time.monotonic()
    report = run_fidelity(model, RunContext(seed=0, data=SampleData(x, y)), triggered=triggered)
    seconds = time.monotonic() - started
    print(f"[{m['id']}] {seconds:.1f} s wall, triggered → {target_class}: {hit:.2f}", file=sys.stderr)
    return {"id": m["id"], "role": item["role"], "domain": m["domain"], "attack": m["attack"],
            "trigger_of": item["trigger_of"], "target": target_class, "box": list(box), "hit_rate": hit,
            "seconds": seconds, "report": report.to_dict()}


def _median(values) -> float:
    values = [v for v in values if np.isfinite(v)]
    return statistics.median(values) if values else float("nan")


def zoo_markdown(rows: list[dict], args) -> str:
    command = f"python bench/fidelity_bench.py --zoo {args.zoo} --threads {args.threads}"
    command += (f" --only {args.only}" if args.only else "") + f" --clean-per-domain {args.clean_per_domain}"
    lines = [f"`{command}` — {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {platform.machine()}, "
             f"{os.cpu_count()} CPU cores visible, torch threads {args.threads}, load average at start {args.load:.1f}.", "",
             "Full suite, default options, per zoo model (loaded with `auditor.loading.load_model`, as the CLI does), "
             "on 32 held-out inputs outside the target class stamped with the member's own trigger "
             "(patch / large_patch at their planted location; patch_random at one seeded location: the model was "
             "trained with the patch anywhere). Clean members are the null: each borrows the trigger and target "
             "class of the trojaned member named in brackets. \"→ target\" is the share of triggered inputs the "
             "model sends to the target class.", ""]
    roles = {role: [r for r in rows if r["role"] == role] for role in ("trojaned", "clean")}
    groups = [(f"median {role} ({len(rs)})", rs) for role, rs in roles.items() if rs]
    groups.append((f"median all ({len(rows)})", rows))

    def rand(r: dict, method: str) -> dict:
        return next(c for c in r["report"]["randomisation"] if c["method"] == method)

    lines += ["**Models, cost and cascading randomisation at the fully randomised stage** (Spearman |·| / signed).", ""]
    lines += _header("model", ["trigger → class (box; area)", "→ target", "suite s", "Gradient ρ", "IxG ρ"])
    for r in rows:
        t, l, b, rt = r["box"]
        area = _input_trigger(r["report"])[0]["area_share"]
        origin = "" if r["role"] == "trojaned" else f" ({r['trigger_of']})"
        cells = [f"{r['attack'] or 'clean'}{origin} → {r['target']} ({t},{l})–({b},{rt}); {area:.3f}",
                 f"{r['hit_rate']:.2f}", f"{r['seconds']:.1f}"]
        cells += [f"{rand(r, m)['spearman_abs'][-1]:.2f} / {rand(r, m)['spearman_signed'][-1]:.2f}" for m in ("gradient", "ixg")]
        lines.append(f"| {r['id']} | " + " | ".join(cells) + " |")
    for name, rs in groups:
        cells = ["", "", f"{_median(r['seconds'] for r in rs):.1f}"]
        cells += [f"{_median(rand(r, m)['spearman_abs'][-1] for r in rs):.2f} / "
                  f"{_median(rand(r, m)['spearman_signed'][-1] for r in rs):.2f}" for m in ("gradient", "ixg")]
        lines.append(f"| **{name}** | " + " | ".join(cells) + " |")

    methods = [t["method"] for t in _input_trigger(rows[0]["report"])]
    lines += ["", "**Triggered inputs: median box share of positive attribution** (input layer; box area share "
              "in brackets; enrichment = share / area).", ""]
    lines += _header("model", [LABELS.get(m, m) for m in methods])
    for r in rows:
        trig = _input_trigger(r["report"])
        lines.append(f"| {r['id']} ({trig[0]['area_share']:.3f}) | " + " | ".join(_share_cell(t) for t in trig) + " |")
    for name, rs in groups[:-1]:
        per = [{t["method"]: t for t in _input_trigger(r["report"])} for r in rs]
        lines.append(f"| **{name}** | " + " | ".join(_share_cell({
            "box_share_median": _median(p[m]["box_share_median"] for p in per),
            "enrichment": _median(p[m]["enrichment"] for p in per)}) for m in methods) + " |")

    lines += ["", "AggAtt of Input×Gradient on the triggered inputs (input layer): box share of each bin's mean map, "
              "bins from worst (0–2 %) to best (98–100 %); box area share in brackets.", ""]
    lines += _header("model", list(BIN_LABELS))
    for r in rows:
        bins, area = _aggatt_ixg(r["report"]), _input_trigger(r["report"])[0]["area_share"]
        lines.append(f"| {r['id']} ({area:.3f}) | " + " | ".join(f"{bins[b]:.3f}" for b in BIN_LABELS) + " |")
    for name, rs in groups[:-1]:
        lines.append(f"| **{name}** | " + " | ".join(
            f"{_median(_aggatt_ixg(r['report'])[b] for r in rs):.3f}" for b in BIN_LABELS) + " |")
    lines.append("")
    return "\n".join(lines)


def run_zoo(args) -> None:
    zoo = Path(args.zoo)
    plan = zoo_plan(zoo, args.only, args.clean_per_domain)
    if not plan:
        raise SystemExit(f"no patch-trigger or clean members in {zoo} match --only {args.only!r}")
    rows = [run_zoo_member(item, zoo) for item in plan]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "zoo-results.json").write_text(json.dumps(rows, indent=1, default=float), encoding="utf-8")
    print(zoo_markdown(rows, args))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=12, help="shapes epochs (digits: the test fixture's 8)")
    ap.add_argument("--domains", default="digits,shapes")
    ap.add_argument("--badges", default="saliency", help="detectors whose class maps get badges ('' for none)")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "_cache" / "fidelity"))
    ap.add_argument("--zoo", help="run on the zoo built at this folder (bench/zoo) instead of the trained twins")
    ap.add_argument("--only", default="", help="zoo mode: only members whose id contains this substring")
    ap.add_argument("--clean-per-domain", type=int, default=4, help="zoo mode: clean members per domain (the null)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    args.load = os.getloadavg()[0]
    if args.zoo:
        run_zoo(args)
        return
    cache = Path(args.out)
    cache.mkdir(parents=True, exist_ok=True)
    results = [run_domain(d, args, cache) for d in args.domains.split(",")]
    (cache / "results.json").write_text(json.dumps(results, indent=1, default=float), encoding="utf-8")
    print(markdown(results, args))


if __name__ == "__main__":
    main()
