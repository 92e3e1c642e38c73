"""Score detectors on the zoo through the real CLI, one process per model, and write bench/RESULTS.md.

    python bench/run.py [--zoo bench/zoo] [--detectors max_margin,neural_cleanse] [--jobs 1]
                        [--section main] [--scaling] [--inprocess]

For every scored zoo member this runs ``python -m auditor scan MODEL --detectors D1,D2,… --format json
--seed 0 [--data DOMAIN.npz]`` in a subprocess (``--data`` when any selected detector needs data). The
report's top-level ``model_score``/``flagged_classes`` are the *fused* verdict of the selected
detectors; each detector's own ``model_score``, flagged classes and seconds come from the same
report (``detectors.NAME`` and ``classes[].detectors.NAME``) — detectors are seeded independently, so
their scores equal those of a scan with that detector alone (``--separate`` runs them alone as well).
Results are cached per member, command, model file and ``auditor`` code under ``bench/_runs/SECTION/`` so
an interrupted run resumes and a changed detector is re-scanned.

Metrics, overall and per attack (trojaned models of that attack vs all clean models of the same
modality): AUROC, TPR at FPR ≤ 0.1, FPR at 95 % TPR, TrojAI cross-entropy of ``model_score``
(probabilities clipped to [1e-6, 1 − 1e-6]), the share of clean models flagged, target class among the
flagged classes on flagged all-to-one models, spurious class named; seconds per model and peak RSS.
``--scaling`` measures seconds against the number of classes (10 → 40, random synthetic heads) and
input size (28 → 64 px). ``bench/RESULTS.md`` is rewritten only between this section's markers.
"""

from __future__ import annotations

import argparse
import datetime as dt
import functools
import json
import math
import os
import platform
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import BENCH_DIR, REPO_ROOT, content_hash, git_revision  # noqa: E402

PYTHON = sys.executable
FUSED = "fused"
EPS = 1e-6


# --------------------------------------------------------------------------------------------------
# Running one scan


def _needs_data(names: list[str]) -> bool:
    from auditor.detectors import registered

    reg = registered()
    unknown = [n for n in names if n not in reg]
    if unknown:
        raise SystemExit(f"unknown detector(s): {', '.join(unknown)} (registered: {', '.join(reg)})")
    return any(reg[n].info.needs_data for n in names)


def scan_command(model_file: Path, names: list[str], out_dir: Path, data: Path | None, input_shape: list[int] | None,
                 extra: list[str]) -> list[str]:
    cmd = [PYTHON, "-m", "auditor", "scan", str(model_file), "--detectors", ",".join(names), "--format", "json",
           "--out", str(out_dir), "--seed", "0", "--threads", "1", "--quiet"]
    if data is not None:
        cmd += ["--data", str(data)]
    if input_shape:
        cmd += ["--input-shape", ",".join(str(v) for v in input_shape)]
    return cmd + extra


def run_cli(cmd: list[str], out_dir: Path, timeout: float) -> dict:
    """Run one scan; returns exit code, wall seconds, peak RSS (MiB) of that process, and the report."""
    out_dir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=str(REPO_ROOT))
    started = time.monotonic()
    with open(out_dir / "stdout.txt", "wb") as so, open(out_dir / "stderr.txt", "wb") as se:
        proc = subprocess.Popen(cmd, stdout=so, stderr=se, cwd=REPO_ROOT, env=env)
        rusage = None
        deadline = started + timeout
        while True:
            pid, status, rusage = os.wait4(proc.pid, os.WNOHANG)
            if pid != 0:
                break
            if time.monotonic() > deadline:
                proc.kill()
                pid, status, rusage = os.wait4(proc.pid, 0)
                break
            time.sleep(0.05)
    wall = time.monotonic() - started
    code = os.waitstatus_to_exitcode(status)
    proc.returncode = code
    report = None
    rp = out_dir / "report.json"
    if rp.exists():
        try:
            report = json.loads(rp.read_text())
        except json.JSONDecodeError:
            report = None
    stderr_tail = (out_dir / "stderr.txt").read_text(errors="replace")[-600:]
    return {"exit": code, "wall_s": round(wall, 3), "peak_rss_mib": round(rusage.ru_maxrss / 1024.0, 1),
            "report": report, "stderr": stderr_tail, "timed_out": wall > timeout}


def run_inprocess(model_file: Path, names: list[str], data: Path | None) -> dict:
    """Development fallback without the CLI: load the model file and run the detectors here."""
    import resource

    from auditor.detectors import RunContext, create
    from auditor.target import SampleData

    started = time.monotonic()
    target = _load_target(model_file)
    sample = None
    if data is not None:
        import torch

        z = np.load(data)
        sample = SampleData(torch.from_numpy(z["x"]).float(), torch.from_numpy(z["y"]).long() if "y" in z else None)
    detectors = {}
    per_class: dict[int, dict] = {}
    for n in names:
        r = create(n).run(target, RunContext(seed=0, data=sample))
        detectors[n] = {"status": r.status, "reason": r.reason, "seconds": r.seconds, "model_score": r.model_score}
        for c in r.classes:
            per_class.setdefault(c.index, {})[n] = {"score": c.score, "z": c.z, "flagged": c.flagged}
    ok = [d["model_score"] for d in detectors.values() if d["status"] == "ok"]
    flagged = sorted(i for i, d in per_class.items() if any(v["flagged"] for v in d.values()))
    report = {"verdict": "suspicious" if flagged else "clean", "model_score": max(ok) if ok else None,
              "flagged_classes": flagged, "detectors": detectors,
              "classes": [{"index": i, "detectors": d} for i, d in sorted(per_class.items())]}
    return {"exit": 1 if flagged else 0, "wall_s": round(time.monotonic() - started, 3),
            "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1),
            "report": report, "stderr": "", "timed_out": False, "inprocess": True}


def _load_target(model_file: Path):
    from auditor.loading import load_model

    return load_model(str(model_file))


# --------------------------------------------------------------------------------------------------
# Collecting results


def scores_from_report(report: dict | None, names: list[str]) -> dict:
    """{scorer: {status, model_score, flagged, seconds}} for each detector and the fused verdict."""
    out = {}
    if report is None:
        return out
    classes = report.get("classes") or []
    for n in names:
        d = (report.get("detectors") or {}).get(n, {})
        flagged = [c["index"] for c in classes if (c.get("detectors") or {}).get(n, {}).get("flagged")]
        # per-class strength (evidence in units of the detector's threshold): lets --reuse re-fuse the agreement
        strengths = [(c.get("detectors") or {}).get(n, {}).get("strength") for c in classes]
        out[n] = {"status": d.get("status"), "reason": d.get("reason", ""), "model_score": d.get("model_score"),
                  "flagged": flagged, "seconds": d.get("seconds"), "strengths": strengths}
    out[FUSED] = {"status": "ok" if report.get("model_score") is not None else "failed",
                  "model_score": report.get("model_score"), "flagged": list(report.get("flagged_classes") or []),
                  "verdict": report.get("verdict"),
                  "seconds": sum((d or {}).get("seconds") or 0.0 for d in (report.get("detectors") or {}).values())}
    return out


def run_member(member: dict, zoo: Path, names: list[str], runs_dir: Path, need_data: bool, inprocess: bool,
               extra: list[str], timeout: float, separate: bool) -> dict:
    model_file = zoo / member["file"]
    data = zoo / member["data"] if need_data else None
    shape = member["input_shape"] if member["domain"] == "points" else None
    jobs = [("all", names)] + ([(n, [n]) for n in names] if separate and len(names) > 1 else [])
    row = {"id": member["id"], "runs": {}}
    for label, subset in jobs:
        cmd = scan_command(model_file, subset, runs_dir / member["id"] / label, data, shape, extra)
        cache = cache_file(runs_dir / member["id"] / label, cmd, inprocess, model_file)
        if cache.exists():
            row["runs"][label] = json.loads(cache.read_text())
            continue
        res = run_inprocess(model_file, subset, data) if inprocess else run_cli(cmd, cache.parent, timeout)
        res["scores"] = scores_from_report(res.pop("report"), subset)
        res["command"] = " ".join(cmd[1:])
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps(res, indent=1))
        row["runs"][label] = res
    return row


def merge_earlier_run(rows: dict, earlier_dir: Path, name: str) -> None:
    """Add detector ``name``'s cached results from an earlier run to each row and re-fuse.

    Detectors draw randomness from their own seeded generators, so a detector's result does not
    depend on which other detectors ran in the same scan; the fused scores follow ``auditor.verdict``
    (:func:`refuse`)."""
    for member_id, row in rows.items():
        found = None
        # the newest cached result that has the detector (older ones may predate a code change)
        for path in sorted((earlier_dir / member_id / "all").glob("result-*.json"), key=lambda p: p.stat().st_mtime):
            earlier = json.loads(path.read_text())
            if name in earlier["scores"]:
                found = earlier
        run = row["runs"]["all"]
        if found is None:
            raise SystemExit(f"--reuse: no cached {name} result for {member_id} under {earlier_dir}")
        run["scores"][name] = found["scores"][name]
        run["wall_s"] += float(found["scores"][name].get("seconds") or 0.0)
        run["reused"] = sorted(set(run.get("reused", [])) | {name})
        ok = {n: sc for n, sc in run["scores"].items() if n != FUSED and sc.get("status") == "ok"}
        fused = run["scores"][FUSED]
        if ok:
            fused["model_score"], fused["flagged"] = refuse(ok)
            fused["verdict"] = "suspicious" if fused["flagged"] else "clean"
            fused["status"] = "ok"
            if run["exit"] in (0, 1):  # the exit code the CLI gives that verdict (errors are kept)
                run["exit"] = 1 if fused["flagged"] else 0
        fused["seconds"] = sum(float(sc.get("seconds") or 0.0) for n, sc in run["scores"].items() if n != FUSED)


def refuse(scores: dict[str, dict]) -> tuple[float, list[int]]:
    """The fused model score and flagged classes that ``auditor.verdict.fuse`` gives cached per-detector
    scores. Results cached before stop 25 carry no per-class strengths: for those the agreement of the
    default pair cannot be re-fused, and the rule is the largest model score and the union of flags."""
    from auditor.detectors.base import ClassEvidence, DetectorResult
    from auditor.verdict import fuse

    k = max((len(sc.get("strengths") or []) for sc in scores.values()), default=0)
    if k == 0:
        return max(float(sc["model_score"]) for sc in scores.values()), sorted(
            {c for sc in scores.values() for c in sc["flagged"]})
    results = []
    for name, sc in scores.items():
        strengths = sc.get("strengths") or [None] * k
        results.append(DetectorResult(name, "ok", model_score=float(sc["model_score"]), classes=tuple(
            ClassEvidence(index=i, score=0.0, z=0.0, flagged=i in sc["flagged"],
                          strength=float("nan") if v is None else float(v)) for i, v in enumerate(strengths))))
    verdict = fuse(results, [str(i) for i in range(k)])
    return float(verdict.model_score), list(verdict.flagged_classes)


def cache_file(folder: Path, cmd: list[str], inprocess: bool, model_file: Path) -> Path:
    """Where one scan's result is cached: keyed by the command, the model file *and* the auditor code, so
    a changed detector never reuses a stale result."""
    key = content_hash({"cmd": cmd[1:], "inprocess": inprocess, "model_sha": _file_sha(model_file),
                        "code_sha": _code_sha()})
    return folder / f"result-{key}.json"


@functools.lru_cache(maxsize=1)
def _code_sha() -> str:
    """Hash of every file of the ``auditor`` package (sources and bundled assets)."""
    import hashlib

    digest = hashlib.sha256()
    for path in sorted((REPO_ROOT / "auditor").rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts:
            digest.update(str(path.relative_to(REPO_ROOT)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def _file_sha(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()[:16] if path.exists() else "missing"


# --------------------------------------------------------------------------------------------------
# Metrics


def _group_of(member: dict) -> str:
    if member["spurious"]:
        return "spurious"
    if member["trojaned"]:
        return member["attack"]
    return "clean"


def roc_metrics(pos: np.ndarray, neg: np.ndarray) -> dict:
    from sklearn.metrics import roc_auc_score, roc_curve

    if len(pos) == 0 or len(neg) == 0:
        return {}
    y = np.r_[np.ones(len(pos)), np.zeros(len(neg))]
    s = np.r_[pos, neg]
    auc = float(roc_auc_score(y, s))
    fpr, tpr, _ = roc_curve(y, s)
    tpr_at = float(tpr[fpr <= 0.1 + 1e-12].max()) if np.any(fpr <= 0.1 + 1e-12) else 0.0
    fpr_at = float(fpr[tpr >= 0.95 - 1e-12].min()) if np.any(tpr >= 0.95 - 1e-12) else 1.0
    p = np.clip(s, EPS, 1 - EPS)
    ce = float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))
    return {"auroc": auc, "tpr_at_fpr_0.1": tpr_at, "fpr_at_tpr_0.95": fpr_at, "cross_entropy": ce,
            "n_pos": int(len(pos)), "n_neg": int(len(neg))}


def compute_metrics(members: list[dict], rows: dict, scorers: list[str]) -> dict:
    """{scorer: {group: metrics}} with groups overall, each attack, spurious, clean."""
    out: dict = {}
    for scorer in scorers:
        table: dict = {}
        recs = []
        for m in members:
            r = rows.get(m["id"])
            if r is None:
                continue
            sc = r["runs"]["all"]["scores"].get(scorer)
            if sc is None or sc.get("model_score") is None or sc.get("status") != "ok":
                recs.append((m, None, []))
                continue
            recs.append((m, float(sc["model_score"]), list(sc["flagged"])))
        valid = [(m, s, f) for m, s, f in recs if s is not None]
        clean = [(m, s, f) for m, s, f in valid if _group_of(m) == "clean"]
        troj = [(m, s, f) for m, s, f in valid if m["trojaned"]]
        spur = [(m, s, f) for m, s, f in valid if m["spurious"]]

        def neg_for(mod_domain_pred, clean=clean):
            return np.array([s for m, s, _ in clean if mod_domain_pred(m)])

        is_img = lambda m: m["domain"] != "points"  # noqa: E731
        overall = roc_metrics(np.array([s for _, s, _ in troj]), np.array([s for _, s, _ in clean]))
        overall.update(_flag_stats(troj, clean))
        overall["failed_or_skipped"] = sum(1 for _, s, _ in recs if s is None)
        table["overall"] = overall
        for attack in sorted({m["attack"] for m, _, _ in troj}):
            group = [(m, s, f) for m, s, f in troj if m["attack"] == attack]
            pred = is_img if group[0][0]["domain"] != "points" else (lambda m: m["domain"] == "points")
            neg = [(m, s, f) for m, s, f in clean if pred(m)]
            met = roc_metrics(np.array([s for _, s, _ in group]), neg_for(pred))
            met.update(_flag_stats(group, neg))
            table[attack] = met
        if spur:
            neg = [(m, s, f) for m, s, f in clean if is_img(m)]
            met = roc_metrics(np.array([s for _, s, _ in spur]), neg_for(is_img))
            named = [m["spurious_class"] in f for m, _, f in spur]
            met.update({"spurious_named": float(np.mean(named)), "n_spurious": len(spur),
                        "flagged_rate": float(np.mean([bool(f) for _, _, f in spur]))})
            table["spurious"] = met
        table["clean"] = {"flagged_rate": float(np.mean([bool(f) for _, _, f in clean])) if clean else float("nan"),
                          "n": len(clean)}
        out[scorer] = table
    return out


def _flag_stats(troj, clean) -> dict:
    """Flag rate at the default threshold and target-class accuracy on flagged all-to-one models."""
    flagged = [(m, f) for m, _, f in troj if f]
    one = [(m, f) for m, f in flagged if not m["all_to_all"] and m["target_classes"]]
    hit = [any(t in f for t in m["target_classes"]) for m, f in one]
    both = [all(t in f for t in m["target_classes"]) for m, f in one if len(m["target_classes"]) > 1]
    return {"tpr_at_threshold": float(np.mean([bool(f) for _, _, f in troj])) if troj else float("nan"),
            "fpr_at_threshold": float(np.mean([bool(f) for _, _, f in clean])) if clean else float("nan"),
            "target_accuracy": float(np.mean(hit)) if hit else float("nan"), "n_flagged_all_to_one": len(hit),
            "both_targets": float(np.mean(both)) if both else float("nan")}


def cost_metrics(rows: dict, scorers: list[str]) -> dict:
    out = {}
    for scorer in scorers:
        secs = []
        for r in rows.values():
            run = r["runs"].get(scorer if scorer != FUSED else "all") or r["runs"]["all"]
            sc = run["scores"].get(scorer) or {}
            if scorer == FUSED:
                secs.append(run["wall_s"])
            elif sc.get("seconds") is not None:
                secs.append(float(sc["seconds"]))
        rss = [r["runs"]["all"]["peak_rss_mib"] for r in rows.values()]
        out[scorer] = {"median_s": float(np.median(secs)) if secs else float("nan"),
                       "p90_s": float(np.percentile(secs, 90)) if secs else float("nan"),
                       "peak_rss_median_mib": float(np.median(rss)) if rss else float("nan"),
                       "peak_rss_max_mib": float(np.max(rss)) if rss else float("nan"), "n": len(secs)}
    return out


# --------------------------------------------------------------------------------------------------
# Scaling (synthetic heads)


def scaling(names: list[str], runs_dir: Path, timeout: float, extra: list[str]) -> list[dict]:
    """Seconds per detector against classes (10, 20, 40 at 32 px) and input size (28, 32, 48, 64 px, 10
    classes), on randomly initialised VGG-style models exported as .pt2 with random --data."""
    import torch

    from auditor.synthetic.archs import VGGNet

    torch.set_num_threads(1)
    cases = [(k, 32) for k in (10, 20, 40)] + [(10, s) for s in (28, 48, 64)]
    rows = []
    for k, side in cases:
        d = runs_dir / "scaling" / f"k{k}-s{side}"
        d.mkdir(parents=True, exist_ok=True)
        model_file, data_file = d / "model.pt2", d / "data.npz"
        if not model_file.exists():
            torch.manual_seed(k * 1000 + side)
            model = VGGNet(3, k).eval()
            x = torch.rand((2, 3, side, side))
            prog = torch.export.export(model, (x,), dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=4096)},))
            torch.export.save(prog, str(model_file))
            g = np.random.default_rng(0)
            np.savez(data_file, x=g.random((max(100, 2 * k), 3, side, side), dtype=np.float32),
                     y=np.arange(max(100, 2 * k)) % k)
        for n in names:
            cmd = scan_command(model_file, [n], d / n, data_file, None, extra)
            cache = d / n / "result.json"
            if cache.exists():
                res = json.loads(cache.read_text())
            else:
                res = run_cli(cmd, d / n, timeout)
                res["scores"] = scores_from_report(res.pop("report"), [n])
                cache.write_text(json.dumps(res, indent=1))
            sec = (res["scores"].get(n) or {}).get("seconds")
            rows.append({"detector": n, "classes": k, "side": side, "seconds": sec, "wall_s": res["wall_s"],
                         "status": (res["scores"].get(n) or {}).get("status"), "exit": res["exit"]})
            print(f"scaling {n} K={k} {side}px: {sec} s (exit {res['exit']})", flush=True)
    return rows


# --------------------------------------------------------------------------------------------------
# Output


def _fmt(v, digits: int = 2) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    return f"{v:.{digits}f}"


def roc_plot(members: list[dict], rows: dict, scorers: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import roc_curve

    fig, ax = plt.subplots(figsize=(5, 5), dpi=110)
    for scorer in scorers:
        ys, ss = [], []
        for m in members:
            r = rows.get(m["id"])
            if r is None or m["spurious"]:
                continue
            sc = r["runs"]["all"]["scores"].get(scorer) or {}
            if sc.get("model_score") is None or sc.get("status") != "ok":
                continue
            ys.append(1 if m["trojaned"] else 0)
            ss.append(float(sc["model_score"]))
        if len(set(ys)) < 2:
            continue
        fpr, tpr, _ = roc_curve(ys, ss)
        from sklearn.metrics import auc

        ax.plot(fpr, tpr, label=f"{scorer} (AUROC {auc(fpr, tpr):.2f})", lw=2 if scorer == FUSED else 1.3)
    ax.plot([0, 1], [0, 1], ":", color="grey")
    ax.set_xlabel("false positive rate (clean models)")
    ax.set_ylabel("true positive rate (trojaned models)")
    ax.set_title("Model-level ROC on the zoo")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def metric_table(metrics: dict, scorers: list[str], key: str, digits: int = 2) -> str:
    groups = ["overall"] + sorted({g for t in metrics.values() for g in t if g not in ("overall", "clean", "spurious")})
    head = "| scorer | " + " | ".join(groups) + " |\n|---|" + "---|" * len(groups) + "\n"
    lines = []
    for s in scorers:
        t = metrics.get(s, {})
        lines.append(f"| {s} | " + " | ".join(_fmt(t.get(g, {}).get(key), digits) for g in groups) + " |")
    return head + "\n".join(lines) + "\n"


def write_results(section: str, body: str, path: Path) -> None:
    """Replace this section's block in RESULTS.md (between markers), keeping everything else."""
    begin, end = f"<!-- bench/run.py:{section}:begin -->", f"<!-- bench/run.py:{section}:end -->"
    text = path.read_text() if path.exists() else ""
    block = f"{begin}\n{body.rstrip()}\n{end}"
    if begin in text and end in text:
        pre, rest = text.split(begin, 1)
        _, post = rest.split(end, 1)
        text = pre + block + post
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    path.write_text(text)


def render(section: str, manifest: dict, members: list[dict], rows: dict, names: list[str], metrics: dict,
           cost: dict, scale: list[dict] | None, roc_file: Path, inprocess: bool, wall: float,
           extra: list[str] | None = None) -> str:
    scorers = names + [FUSED]
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    gpu = "no GPU"
    try:
        import torch

        if torch.cuda.is_available():
            gpu = torch.cuda.get_device_name(0)
    except Exception:
        pass
    groups = {}
    for m in members:
        groups[_group_of(m)] = groups.get(_group_of(m), 0) + 1
    out = [
        f"### Run `{section}`: {', '.join(names)} + fused verdict",
        "",
        f"- Date {now}; git revision `{git_revision()}`; machine: {os.cpu_count()} CPU cores "
        f"({platform.processor() or platform.machine()}), {gpu}; Python {platform.python_version()}.",
        f"- Zoo profile `{manifest['profile']}`: {len(members)} scored members "
        f"({', '.join(f'{k} {v}' for k, v in sorted(groups.items()))}); "
        f"{len(manifest.get('excluded', []))} excluded below the quality bar (see the zoo section).",
        f"- Path: {'in-process fallback (NOT the CLI)' if inprocess else '`python -m auditor scan` subprocess per model, --seed 0, --threads 1'}"
        + ("; `--data` = the domain's held-out clean sample" if _needs_data(names) else "; no `--data` (data-free)")
        + f". Sum of scan wall times {wall / 60:.1f} min.",
        f"- Extra scan arguments: `{' '.join(extra) if extra else 'none (detector defaults)'}`.",
        "- Per attack: that attack's trojaned models against all clean models of the same modality (image or "
        "points). `fused` = the CLI's fused verdict over the detectors of this run.",
        "- Reproduce: `python bench/run.py"
        + (f" --zoo bench/zoo/{manifest['profile']}" if manifest["profile"] != "default" else "")
        + f" --detectors {','.join(names)} --section {section}"
        + "".join(f" --cli-arg={e}" for e in (extra or [])) + "`.",
        "",
    ]
    trojaned = any(m["trojaned"] for m in members)
    detection = (("auroc", "Model-level AUROC", 2), ("tpr_at_fpr_0.1", "TPR at FPR ≤ 0.1", 2),
                 ("fpr_at_tpr_0.95", "FPR at 95 % TPR", 2),
                 ("cross_entropy", "TrojAI cross-entropy of model_score (lower is better; 0.693 = coin)", 3),
                 ("tpr_at_threshold", "Share of trojaned models flagged at the default threshold", 2),
                 ("target_accuracy", "Target class among flagged classes (flagged all-to-one models)", 2))
    for key, title, digits in detection if trojaned else ():
        out += [f"#### {title}", "", metric_table(metrics, scorers, key, digits)]
    if not trojaned:
        out += ["No trojaned members: only the clean models' figures and the cost apply (no ROC).", ""]
    out += ["#### Clean and spurious models", "",
            "| scorer | clean flagged | spurious AUROC | spurious flagged | spurious class named | two-target: both found |",
            "|---|---|---|---|---|---|"]
    for s in scorers:
        t = metrics.get(s, {})
        out.append(f"| {s} | {_fmt(t.get('clean', {}).get('flagged_rate'))} | {_fmt(t.get('spurious', {}).get('auroc'))} | "
                   f"{_fmt(t.get('spurious', {}).get('flagged_rate'))} | {_fmt(t.get('spurious', {}).get('spurious_named'))} | "
                   f"{_fmt(t.get('two_target', {}).get('both_targets'))} |")
    out += ["", *([f"![ROC]({roc_file.name})", ""] if trojaned else []), "#### Cost per model", "",
            "| scorer | median s | p90 s | peak RSS median (MiB) | peak RSS max (MiB) |", "|---|---|---|---|---|"]
    for s in scorers:
        c = cost.get(s, {})
        out.append(f"| {s} | {_fmt(c.get('median_s'), 1)} | {_fmt(c.get('p90_s'), 1)} | "
                   f"{_fmt(c.get('peak_rss_median_mib'), 0)} | {_fmt(c.get('peak_rss_max_mib'), 0)} |")
    out += ["", "Detector seconds are the detector's own time in the report; `fused` is the whole CLI process "
            "(start-up, loading with ONNX parity check, all detectors, writing). Peak RSS is the scan process's."]
    if scale:
        out += ["", "#### Scaling (random VGG-style models, `.pt2`, seconds of the detector alone)", "",
                "| detector | K=10 32px | K=20 32px | K=40 32px | K=10 28px | K=10 48px | K=10 64px |", "|---|---|---|---|---|---|---|"]
        for n in names:
            cells = []
            for k, side in ((10, 32), (20, 32), (40, 32), (10, 28), (10, 48), (10, 64)):
                v = [r["seconds"] for r in scale if r["detector"] == n and r["classes"] == k and r["side"] == side]
                cells.append(_fmt(v[0], 1) if v else "–")
            out.append(f"| {n} | " + " | ".join(cells) + " |")
    failures = []
    for mid, r in rows.items():
        for label, run in r["runs"].items():
            if run["exit"] not in (0, 1):
                failures.append(f"- `{mid}` ({label}): exit {run['exit']}: {run['stderr'].strip().splitlines()[-1:] or ''}")
            for n, sc in run["scores"].items():
                if n != FUSED and sc.get("status") not in (None, "ok"):
                    failures.append(f"- `{mid}` {n}: {sc.get('status')} — {sc.get('reason', '')[:200]}")
    if failures:
        out += ["", "#### Failed or skipped scans", ""] + failures
    out += ["", "<details><summary>Per-model scores</summary>", "",
            "| model | truth | " + " | ".join(scorers) + " | flagged (fused) | exit |", "|---|---|" + "---|" * (len(scorers) + 2)]
    for m in members:
        r = rows.get(m["id"])
        if r is None:
            continue
        run = r["runs"]["all"]
        truth = _group_of(m) + (f" → {m['target_classes']}" if m["target_classes"] else "") + \
            (f" (class {m['spurious_class']})" if m["spurious"] else "")
        vals = [_fmt((run["scores"].get(s) or {}).get("model_score"), 3) for s in scorers]
        out.append(f"| {m['id']} | {truth} | " + " | ".join(vals) + f" | {(run['scores'].get(FUSED) or {}).get('flagged')} | {run['exit']} |")
    out += ["", "</details>"]
    return "\n".join(out)


def zoo_section(manifest: dict) -> str:
    """The zoo summary table (written by bench/run.py from manifest.json)."""
    c = manifest["counts"]
    out = [f"Profile `{manifest['profile']}`: {c['total']} members ({c['clean']} clean, {c['trojaned']} trojaned, "
           f"{c['spurious']} spurious, {c['points']} point-cloud); {c['scored']} meet the quality bar "
           f"(clean accuracy ≥ {manifest['quality_bar']['shapes']} shapes/points, ≥ {manifest['quality_bar']['digits']} "
           f"digits; ASR ≥ {manifest['quality_bar']['asr']}). Build wall time {manifest['build_wall_seconds'] / 60:.1f} min "
           f"with {manifest['jobs']} job(s) × {manifest['threads_per_job']} thread(s) on {manifest['cpu_count']} cores "
           "(shared machine).", "",
           "| member | arch | format | attack / feature | target | clean acc | ASR / flip | scored |", "|---|---|---|---|---|---|---|---|"]
    for r in manifest["members"]:
        feat = r["attack"] or (f"spurious {r['spurious_params']['kind']}" if r["spurious"] else "clean")
        tgt = r["target_classes"] or ([r["spurious_class"]] if r["spurious"] else "")
        asr = r["asr"] if r["trojaned"] else r.get("spurious_flip_rate")
        out.append(f"| {r['id']} | {r['architecture']} | {r['format']} | {feat} | {tgt} | {_fmt(r['clean_accuracy'], 3)} | "
                   f"{_fmt(asr, 3)} | {'yes' if r['scored'] else 'no: ' + (r['excluded_reason'] or '').splitlines()[0][:120]} |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--zoo", type=Path, default=BENCH_DIR / "zoo")
    p.add_argument("--detectors", default="max_margin,neural_cleanse", help="comma list of registered detectors")
    p.add_argument("--section", default=None, help="name of this run's block in RESULTS.md [default: detector list]")
    p.add_argument("--jobs", type=int, default=1, help="scans in parallel (default 1: the machine is shared)")
    p.add_argument("--timeout", type=float, default=900.0, help="seconds per scan before it is killed")
    p.add_argument("--only", default=None, help="only members whose id contains this string")
    p.add_argument("--limit", type=int, default=None, help="at most this many members (smoke runs)")
    p.add_argument("--separate", action="store_true", help="also run each detector alone (costs more)")
    p.add_argument("--inprocess", action="store_true", help="development fallback: no CLI subprocess")
    p.add_argument("--scaling", action="store_true", help="also measure seconds vs classes and input size")
    p.add_argument("--cached-only", action="store_true", help="report only members already scanned (no new scans)")
    p.add_argument("--cli-arg", action="append", default=[], help="extra argument passed to every scan")
    p.add_argument("--reuse", action="append", default=[], metavar="SECTION:DETECTOR",
                   help="take DETECTOR's per-model results from an earlier run SECTION instead of re-scanning "
                        "(same seed, same CLI); the fused verdict is recomputed with the CLI's rule")
    p.add_argument("--results", type=Path, default=BENCH_DIR / "RESULTS.md")
    p.add_argument("--runs-dir", type=Path, default=BENCH_DIR / "_runs", help="per-scan reports and cache")
    p.add_argument("--no-write", action="store_true", help="print the section instead of writing RESULTS.md")
    a = p.parse_args(argv)

    names = [n.strip() for n in a.detectors.split(",") if n.strip()]
    need_data = _needs_data(names)
    section = a.section or "-".join(names)
    manifest = json.loads((a.zoo / "manifest.json").read_text())
    members = [m for m in manifest["members"] if m["scored"]]
    if a.only:
        members = [m for m in members if a.only in m["id"]]
    if a.limit:
        members = members[: a.limit]
    runs_dir = a.runs_dir / f"{manifest['profile']}-{section}"
    rows: dict = {}

    if a.cached_only:
        def cached(m):
            data = a.zoo / m["data"] if need_data else None
            shape = m["input_shape"] if m["domain"] == "points" else None
            cmd = scan_command(a.zoo / m["file"], names, runs_dir / m["id"] / "all", data, shape, a.cli_arg)
            return cache_file(runs_dir / m["id"] / "all", cmd, a.inprocess, a.zoo / m["file"]).exists()

        members = [m for m in members if cached(m)]

    def one(m):
        row = run_member(m, a.zoo, names, runs_dir, need_data, a.inprocess, a.cli_arg, a.timeout, a.separate)
        run = row["runs"]["all"]
        fused = run["scores"].get(FUSED, {})
        print(f"{m['id']:<44} exit={run['exit']} fused={_fmt(fused.get('model_score'), 3)} "
              f"flagged={fused.get('flagged')} " + " ".join(
                  f"{n}={_fmt((run['scores'].get(n) or {}).get('model_score'), 3)}" for n in names)
              + f" {run['wall_s']:.0f}s", flush=True)
        return row

    if a.jobs <= 1:
        for m in members:
            rows[m["id"]] = one(m)
    else:
        with ThreadPoolExecutor(a.jobs) as pool:
            for row in pool.map(one, members):
                rows[row["id"]] = row
    scanned = list(names)
    reused = [tuple(r.split(":", 1)) for r in a.reuse]
    for earlier, name in reused:
        merge_earlier_run(rows, a.runs_dir / f"{manifest['profile']}-{earlier}", name)
        names.append(name)
    scorers = names + [FUSED]
    metrics = compute_metrics(members, rows, scorers)
    cost = cost_metrics(rows, scorers)
    scale = scaling(scanned, runs_dir, a.timeout, a.cli_arg) if a.scaling else None
    wall = sum(run["wall_s"] for r in rows.values() for run in r["runs"].values())
    roc_name = "roc.png" if section == "main" else f"roc-{section}.png"
    # a --no-write run must not overwrite the committed plot that RESULTS.md shows
    roc_file = (runs_dir if a.no_write else a.results.parent) / roc_name
    if any(m["trojaned"] for m in members):  # a clean-only population has no ROC to draw
        roc_plot(members, rows, scorers, roc_file)
    (runs_dir / "metrics.json").write_text(json.dumps({"metrics": metrics, "cost": cost, "scaling": scale}, indent=1))
    body = render(section, manifest, members, rows, names, metrics, cost, scale, roc_file, a.inprocess, wall,
                  a.cli_arg)
    if reused:
        names_run = [n for n in names if n not in {name for _, name in reused}]
        body = body.replace(f"--detectors {','.join(names)}", f"--detectors {','.join(names_run)}" + "".join(
            f" --reuse {e}:{n}" for e, n in reused), 1)
        body = body.replace("- Reproduce: ", "- Reused from earlier runs (not re-scanned here; fused verdict recomputed "
                            "with the CLI's rule): " + ", ".join(f"{n} from run `{e}`" for e, n in reused)
                            + ".\n- Reproduce: ", 1)
    if a.no_write:
        print(body)
    else:
        write_results(section, body, a.results)
        if manifest["profile"] in ("default", "foreign"):  # the scored populations' member tables
            write_results("zoo" if manifest["profile"] == "default" else f"zoo-{manifest['profile']}",
                          zoo_section(manifest), a.results)
        print(f"wrote {a.results} (section {section})" + (f" and {roc_file}" if roc_file.exists() else ""))
    for s in scorers:
        o = metrics[s].get("overall", {})
        print(f"{s:<16} AUROC {_fmt(o.get('auroc'))}  clean flagged {_fmt(metrics[s]['clean'].get('flagged_rate'))}  "
              f"median {_fmt(cost[s]['median_s'], 1)} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
