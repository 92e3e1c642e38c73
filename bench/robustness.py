"""Long fuzz run of the real CLI on mutated model files (bench/RESULTS.md, "Robustness").

    python bench/robustness.py --per-format 60            # ≈ 5–10 min on 2 cores

Each mutant runs through ``auditor.cli.main`` in a forked child (the real CLI path without paying for
interpreter start-up each time); the parent records the exit code, whether stderr held a traceback or
more than one line, crashes of the interpreter (signals) and hangs (a per-input time limit).
Accepted outcomes: exit 0/1 with a report.json, or exit 3 with exactly one stderr line.
"""

from __future__ import annotations

import argparse
import collections
import json
import multiprocessing as mp
import os
import random
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SCAN_ARGS = ["--detectors", "max_margin", "--option", "max_margin.steps=10", "--option", "max_margin.starts=3",
             "--format", "json", "--quiet", "--device", "cpu"]


def byte_mutants(data: bytes, rng: random.Random):
    buf = bytearray(data)
    kind = rng.choice(["flip", "truncate", "word", "delete", "zero-run"])
    pos = rng.randrange(len(buf))
    if kind == "flip":
        for _ in range(rng.randint(1, 8)):
            p = rng.randrange(len(buf))
            buf[p] ^= 1 << rng.randrange(8)
    elif kind == "truncate":
        buf = buf[:pos]
    elif kind == "word":
        buf[pos:pos + 4] = rng.getrandbits(32).to_bytes(4, "little")
    elif kind == "delete":
        del buf[pos:pos + rng.randint(1, 256)]
    else:
        buf[pos:pos + rng.randint(1, 512)] = bytes(rng.randint(1, 512))
    return kind, bytes(buf)


def onnx_structural_mutants(path: Path, folder: Path):
    """Lies a file can tell: dtypes, shapes, opsets, cycles, external data outside the folder."""
    import onnx

    def fresh():
        return onnx.load(str(path))

    def mutated(edit):
        model = fresh()
        edit(model)
        return model

    def external(location):
        def edit(model):
            tensor = model.graph.initializer[0]
            tensor.ClearField("raw_data")
            tensor.data_location = onnx.TensorProto.EXTERNAL
            entry = tensor.external_data.add()
            entry.key, entry.value = "location", location
        return edit

    def first_input_dims(m):
        return m.graph.input[0].type.tensor_type.shape.dim

    edits = {
        "wrong-dtype": lambda m: setattr(m.graph.input[0].type.tensor_type, "elem_type", onnx.TensorProto.INT8),
        "shape-lie": lambda m: setattr(first_input_dims(m)[2], "dim_value", 3),
        "zero-dim": lambda m: setattr(first_input_dims(m)[1], "dim_value", 0),
        "opset-999": lambda m: setattr(m.opset_import[0], "version", 999),
        "opset-1": lambda m: setattr(m.opset_import[0], "version", 1),
        "cycle": lambda m: m.graph.node[0].input.__setitem__(0, m.graph.node[-1].output[0]),
        "initializer-dims-lie": lambda m: m.graph.initializer[0].dims.__setitem__(0, 10**9),
        "initializer-dtype-lie": lambda m: setattr(m.graph.initializer[0], "data_type", onnx.TensorProto.STRING),
        "external-outside": external("../../../etc/shadow"),
        "external-absolute": external("/etc/passwd"),
        "unknown-op": lambda m: setattr(m.graph.node[0], "op_type", "NoSuchOp"),
        "no-output": lambda m: m.graph.output.__delitem__(slice(None)),
    }
    out = [(name, mutated(edit)) for name, edit in edits.items()]
    folder.mkdir(parents=True, exist_ok=True)
    for name, proto in out:
        p = folder / f"{name}.onnx"
        p.write_bytes(proto.SerializeToString())
        yield name, p


def _child(argv: list[str], stderr_path: str) -> None:
    fd = os.open(stderr_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    os.dup2(fd, 2)
    os.dup2(fd, 1)
    torch.set_num_threads(1)
    from auditor.cli import main

    main(argv)


def run_one(model: Path, out: Path, time_limit: float, extra: list[str]) -> dict:
    out.parent.mkdir(parents=True, exist_ok=True)
    stderr_path = str(out) + ".stderr"
    proc = mp.get_context("fork").Process(target=_child, args=(["scan", str(model), "--out", str(out), *SCAN_ARGS, *extra], stderr_path))
    started = time.monotonic()
    proc.start()
    proc.join(time_limit)
    if proc.is_alive():
        proc.kill()
        proc.join()
        return {"outcome": "hang", "seconds": time_limit}
    code = proc.exitcode
    stderr = Path(stderr_path).read_text(errors="replace")
    lines = [line for line in stderr.splitlines() if line.strip()]
    if code is None or code < 0:
        outcome = f"crash (signal {-code if code else '?'})"
    elif "Traceback" in stderr:
        outcome = "traceback"
    elif code in (0, 1):
        outcome = "report" if (out / "report.json").exists() else "exit 0/1 without report"
    elif code == 3:
        outcome = "exit 3, one line" if len(lines) == 1 else f"exit 3, {len(lines)} lines"
    else:
        outcome = f"exit {code}"
    return {"outcome": outcome, "seconds": time.monotonic() - started, "first_line": lines[0] if lines else ""}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--per-format", type=int, default=60, help="byte-level mutants per format")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--time-limit", type=float, default=120.0, help="seconds per input before it counts as a hang")
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "robustness.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    from auditor.synthetic.nets import SmallCNN
    from tests.helpers import export_all_formats

    rng = random.Random(args.seed)
    work = Path(tempfile.mkdtemp(prefix="auditor-fuzz-"))
    torch.manual_seed(args.seed)
    seeds = export_all_formats(SmallCNN().eval(), work / "seeds")
    formats = {"onnx": (seeds["onnx-legacy"], []), "pt2": (seeds["pt2"], []),
               "torchscript": (seeds["torchscript"], ["--input-shape", "1,28,28"]),
               "safetensors": (seeds["safetensors"], ["--input-shape", "1,28,28", "--arch", "auditor.synthetic.nets:SmallCNN"])}
    rows = []
    for fmt, (seed_path, extra) in formats.items():
        data = Path(seed_path).read_bytes()
        cases = []
        for i in range(args.per_format):
            kind, mutant = byte_mutants(data, rng)
            p = work / fmt / f"m{i}{Path(seed_path).suffix}"
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(mutant)
            cases.append((kind, p))
        if fmt == "onnx":
            cases += list(onnx_structural_mutants(Path(seed_path), work / "onnx-structural"))
        for kind, p in cases:
            result = run_one(p, work / "out" / fmt / p.stem, args.time_limit, extra)
            rows.append({"format": fmt, "mutation": kind, **result})
            print(f"{fmt:12s} {kind:24s} {result['outcome']:22s} {result.get('first_line', '')[:90]}", flush=True)
    table = collections.Counter((r["format"], r["outcome"]) for r in rows)
    summary = {"inputs": len(rows), "seed": args.seed, "per_format": args.per_format,
               "outcomes": {f"{f} | {o}": n for (f, o), n in sorted(table.items())},
               "bad": [r for r in rows if r["outcome"] not in ("report", "exit 3, one line")]}
    args.json.write_text(json.dumps({"summary": summary, "rows": rows}, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
