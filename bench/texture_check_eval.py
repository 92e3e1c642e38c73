"""Stop 32 (bench/RESULTS.md §5): the diffusion probe's texture candidate under other control rules.

    python bench/texture_check_eval.py --reference REF.json [...] --rows NAME=ROWS.json [...]

Every row must come from a detector run with ``--option texture_checks=true``, which records the
stop-32 texture checks (``flip_rate_texture_turned_by_90_degrees``, ``..._at_half_contrast``,
``..._kept_off_the_object``). For each rule of :data:`RULES`, a class's texture counts when the
rule holds; the rule's texture threshold per domain is the committed calibration rule (largest clean reference null + 0.1, never below 0.5) applied to the
``--reference`` rows. Per rows file: how many spurious-texture models are flagged on their true class
by the texture candidate, how many models get a texture flag on another class, and how many clean
models get a texture flag. Frames are not scored here (their rule is unchanged).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

MARGIN, FLOOR, LOSS, KEEP = 0.1, 0.5, 0.5, 0.5


def _lost(c: dict, key: str) -> bool:
    """The control ``key`` keeps at most LOSS of the texture's flip rate."""
    return c.get(key, 0.0) <= LOSS * c["background_texture"]


#: rule name → does class ``c``'s texture count (the shipped rule first)
RULES: dict[str, Callable[[dict], bool]] = {
    "shipped (noise, shift)": lambda c: _lost(c, "texture_as_noise") and _lost(c, "texture_shifted"),
    "noise, shift, turn": lambda c: (_lost(c, "texture_as_noise") and _lost(c, "texture_shifted")
                                     and _lost(c, "texture_turned_by_90_degrees")),
    "noise, turn": lambda c: _lost(c, "texture_as_noise") and _lost(c, "texture_turned_by_90_degrees"),
    "noise, shift, off-object": lambda c: (_lost(c, "texture_as_noise") and _lost(c, "texture_shifted")
                                           and c["texture_kept_off_the_object"] >= KEEP * c["background_texture"]),
    "noise, off-object": lambda c: (_lost(c, "texture_as_noise")
                                    and c["texture_kept_off_the_object"] >= KEEP * c["background_texture"]),
    "noise, turn, off-object": lambda c: (_lost(c, "texture_as_noise") and _lost(c, "texture_turned_by_90_degrees")
                                          and c["texture_kept_off_the_object"] >= KEEP * c["background_texture"]),
    "noise, shift, half": lambda c: (_lost(c, "texture_as_noise") and _lost(c, "texture_shifted")
                                     and _lost(c, "texture_at_half_contrast")),
    "noise, half": lambda c: _lost(c, "texture_as_noise") and _lost(c, "texture_at_half_contrast"),
}


def domain(row: dict) -> str:
    return row["id"].split("-")[0]


def texture_null(row: dict, rule) -> float:
    return max((c["background_texture"] for c in row["class_flips"].values() if rule(c)), default=0.0)


def load(path: str) -> list[dict]:
    return [r for r in json.loads(Path(path).read_text()) if r["status"] == "ok"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reference", nargs="+", required=True)
    ap.add_argument("--rows", nargs="+", required=True, metavar="NAME=ROWS.json")
    ap.add_argument("--detail", action="store_true", help="print every spurious row's true class")
    a = ap.parse_args()
    reference = [r for p in a.reference for r in load(p) if r["kind"] == "clean"]
    for name, rule in RULES.items():
        thresholds = {}
        for d in sorted({domain(r) for r in reference}):
            nulls = [texture_null(r, rule) for r in reference if domain(r) == d]
            thresholds[d] = round(max(FLOOR, max(nulls) + MARGIN), 3)
        print(f"== {name}: texture thresholds {thresholds}")
        for spec in a.rows:
            label, path = spec.split("=", 1)
            rows = load(path)
            found, wrong, clean_flags, n_spurious, n_clean = [], [], [], 0, 0
            for r in rows:
                limit = thresholds.get(domain(r), float("inf"))
                flagged = [int(k) for k, c in r["class_flips"].items()
                           if rule(c) and c["background_texture"] >= limit]
                if r["kind"] == "clean":
                    n_clean += 1
                    if flagged:
                        clean_flags.append(f"{r['id']} {flagged}")
                    continue
                n_spurious += 1
                if r["truth_class"] in flagged:
                    found.append(r["id"])
                if [c for c in flagged if c != r["truth_class"]]:
                    wrong.append(f"{r['id']} {flagged}")
                if a.detail:
                    c = r["class_flips"][str(r["truth_class"])]
                    print(f"     {r['id']} class {r['truth_class']}: texture {c['background_texture']:.2f} "
                          f"(noise {c['texture_as_noise']:.2f}, shifted {c['texture_shifted']:.2f}, turned "
                          f"{c['texture_turned_by_90_degrees']:.2f}, half {c['texture_at_half_contrast']:.2f}, "
                          f"off-object {c['texture_kept_off_the_object']:.2f}) rule {'holds' if rule(c) else 'fails'}"
                          f"{' FOUND' if r['id'] in found else ''}")
            print(f"   {label}: true class found {len(found)} of {n_spurious}; another class flagged on "
                  f"{len(wrong)} {wrong}; clean flagged {len(clean_flags)} of {n_clean} {clean_flags}")


if __name__ == "__main__":
    main()
