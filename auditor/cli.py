"""Command line: wiring only. Parses options, calls the core, writes reports, maps results to exit codes.

Exit codes: 0 clean · 1 suspicious classes found · 2 usage error · 3 model or tool error.
Every option also reads an ``AUDITOR_<OPTION>`` environment variable (e.g. ``AUDITOR_SEED=1``).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import time
import traceback
import warnings
from importlib import resources
from pathlib import Path

import click

from auditor import __version__
from auditor.errors import EXIT_CLEAN, EXIT_ERROR, EXIT_FINDINGS, EXIT_USAGE, AuditorError, UsageError

_log = logging.getLogger("auditor")


def _opt(*decls: str, **kwargs):
    """click.option whose environment variable is AUDITOR_<LONG_NAME> (shown in --help)."""
    long_name = next(d for d in decls if d.startswith("--")).split("/")[0]
    envvar = "AUDITOR_" + long_name.lstrip("-").replace("-", "_").upper()
    return click.option(*decls, envvar=envvar, show_envvar=True, **kwargs)


def _floats(text: str | None, what: str, count: int | None = None) -> tuple[float, ...] | None:
    if text is None or text == "":
        return None
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise UsageError(f"{what} takes comma-separated numbers (got {text!r})") from None
    if count is not None and len(values) != count:
        raise UsageError(f"{what} takes {count} numbers (got {text!r})")
    return values


def _ints(text: str | None, what: str) -> tuple[int, ...] | None:
    if text is None or text == "":
        return None
    try:
        values = tuple(int(v) for v in text.replace("x", ",").split(","))
    except ValueError:
        raise UsageError(f"{what} takes comma-separated integers such as 3,32,32 (got {text!r})") from None
    if any(v <= 0 for v in values):
        raise UsageError(f"{what} dimensions must be positive (got {text!r})")
    return values


def _pairs(items: tuple[str, ...], what: str, dotted: bool) -> dict:
    out: dict = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"{what} takes NAME{'.KEY' if dotted else ''}=VALUE (got {item!r})")
        if dotted:
            name, dot, sub = key.partition(".")
            if not dot:
                raise UsageError(f"{what} takes DETECTOR.KEY=VALUE (got {item!r})")
            out.setdefault(name, {})[sub] = value
        else:
            try:
                out[key] = float(value)
            except ValueError:
                raise UsageError(f"{what} value must be a number (got {item!r})") from None
    return out


# --------------------------------------------------------------------------------------------------


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(__version__, prog_name="auditor")
def cli() -> None:
    """Audit a trained classifier for backdoors (trojans) and spurious features.

    \b
    auditor demo                 scan the bundled (trojaned) demo model
    auditor scan model.onnx      data-free scan; report in ./audit-model/
    auditor detectors            list detectors and what each needs
    """


def scan_options(func):
    options = [
        _opt("--out", "out", type=click.Path(file_okay=False), default=None,
             help="Report folder [default: ./audit-<model name>]."),
        _opt("--format", "formats", default="html,json", show_default=True,
             help="Comma list of report formats: html, json, sarif."),
        _opt("--detectors", default=None, help="Comma list of detectors to run [default: all default detectors]."),
        _opt("--data", type=click.Path(), default=None,
             help="Clean samples: image folder (one subfolder per class) or .npz with x (N,C,H,W in [0,1]) and y."),
        _opt("--labels", type=click.Path(), default=None, help="Class names, one per line."),
        _opt("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True),
        _opt("--seed", type=int, default=0, show_default=True, help="Seed for every random draw."),
        _opt("--threads", type=int, default=None, help="CPU threads for torch [default: torch's choice]."),
        _opt("--input-shape", default=None, help="Input shape without batch, canonical: C,H,W (images) or N,3 (points)."),
        _opt("--layout", type=click.Choice(["NCHW", "NHWC", "BN3", "B3N"]), default=None,
             help="Input layout the model expects [default: inferred]."),
        _opt("--mean", default=None, help="The model's own per-channel mean, applied after scaling [0,1] pixels."),
        _opt("--std", default=None, help="The model's own per-channel std."),
        _opt("--value-range", default="0,1", show_default=True,
             help="Range the model expects pixels in, e.g. 0,255 (applied before --mean/--std)."),
        _opt("--arch", default=None, help="Architecture for weight files: torchvision:NAME or package.module:factory."),
        _opt("--arch-kwargs", default="{}", show_default=True, help="JSON keyword arguments for --arch."),
        _opt("--trust-pickle", is_flag=True, default=False,
             help="Allow files that need pickle (full nn.Module checkpoints). Unpickling runs code stored in the "
                  "file: only for files from a source you trust."),
        _opt("--threshold", "thresholds", multiple=True,
             help="Override a detector's decision threshold: NAME=VALUE (repeatable)."),
        _opt("--option", "detector_options", multiple=True,
             help="Detector option: NAME.KEY=VALUE (repeatable), e.g. max_margin.steps=100."),
        _opt("--effort", default="auto", show_default=True,
             help="Share of the default detector work to spend, in (0, 1]; auto = 1 unless the model is so large "
                  "that the work exceeds the device's FLOP budget (then less, said in the report)."),
        _opt("--timeout", type=float, default=None, help="Time budget per detector in seconds."),
        _opt("--total-timeout", type=float, default=None, help="Time budget for all detectors together."),
        _opt("--max-input-pixels", type=int, default=None, help="Refuse inputs with more values per sample [default: 3·1024²]."),
        _opt("--max-params", type=int, default=None, help="Refuse models with more parameters [default: 5e8]."),
        _opt("--fidelity", is_flag=True, default=False,
             help="Measure how faithful every class map is (DiFull localisation, randomisation ρ) and add the "
                  "explanation-fidelity suite to the report (slower)."),
        _opt("--strict", is_flag=True, default=False, help="Skipped or failed detectors and inconclusive verdicts exit 3."),
        _opt("--quiet", is_flag=True, default=False, help="No summary on stderr."),
        _opt("--debug", is_flag=True, default=False, help="Tracebacks and debug logs on errors."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


@cli.command()
@click.argument("model", type=click.Path(dir_okay=True))
@scan_options
def scan(model: str, **kw) -> None:
    """Scan MODEL (.onnx, .pt2, TorchScript, .pt/.pth/.safetensors with --arch) and write reports."""
    out = kw.pop("out") or f"audit-{Path(model).stem}"
    sys.exit(_run_scan(model, Path(out), **kw))


@cli.command()
@scan_options
def demo(**kw) -> None:
    """Scan the bundled demo model: a digits classifier with a planted BadNets trigger (exit 1 expected)."""
    out = kw.pop("out") or "audit-demo"
    # a showcase: the opt-in neural_cleanse runs too (held-out digits as its clean data), so the report
    # shows recovered triggers and masks besides the class maps; flow_am is left out because it flags class
    # 7 on the demo's clean twin as well (z 7.2 > 5.5, one of its documented false positives)
    kw["detectors"] = kw["detectors"] or ",".join(DEMO_DETECTORS)
    with resources.as_file(resources.files("auditor") / "assets" / "demo_trojaned.onnx") as path:
        sys.exit(_run_scan(str(path), Path(out), builtin_data=None if kw["data"] else _demo_samples, **kw))


DEMO_DETECTORS = ("max_margin", "saliency", "neural_cleanse")


def _demo_samples():
    """Held-out digits (never seen in the demo model's training) so data-hungry detectors run too."""
    from auditor.synthetic.digits import load_digits_28
    from auditor.target import SampleData

    _, _, x_test, y_test = load_digits_28(seed=0)
    return SampleData(x_test, y_test, "scikit-learn digits, held-out split (built in)")


@cli.command("fidelity")
@click.argument("model", type=click.Path(dir_okay=True))
@scan_options
def fidelity_command(model: str, **kw) -> None:
    """Run the explanation-fidelity suite alone on MODEL (DiFull/DiPart, ML-Att, AggAtt, smoothing,
    cascading randomisation) and write fidelity.html + fidelity.json."""
    out = kw.pop("out") or f"fidelity-{Path(model).stem}"
    sys.exit(_run_fidelity(model, Path(out), **kw))


@cli.group()
def prior() -> None:
    """Diffusion priors for the diffusion bias probe."""


@prior.command("train")
@click.option("--data", "data_path", required=True, type=click.Path(), envvar="AUDITOR_DATA", show_envvar=True,
              help="Clean images: a folder (one subfolder per class, or any images) or an .npz with x.")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), envvar="AUDITOR_OUT",
              show_envvar=True, help="Prior folder (resumable: re-run to continue training).")
@click.option("--input-shape", default=None, envvar="AUDITOR_INPUT_SHAPE", show_envvar=True,
              help="C,H,W of the classifier's input (≤ 64 px); read from the .npz when omitted.")
@click.option("--steps", type=int, default=2000, show_default=True, envvar="AUDITOR_STEPS", show_envvar=True)
@click.option("--seed", type=int, default=0, show_default=True, envvar="AUDITOR_SEED", show_envvar=True)
@click.option("--context-share", type=click.FloatRange(0.0, 1.0), default=None,
              help="Share of training images given a random frame or texture, so that the prior can draw "
                   "those spurious-feature families when a classifier rewards them (default 0.4; 0: the images "
                   "as they are).")
@click.option("--debug", is_flag=True, default=False, help="Tracebacks on errors.")
def prior_train(data_path: str, out_dir: str, input_shape: str | None, steps: int, seed: int,
                context_share: float | None, debug: bool) -> None:
    """Train a small diffusion prior on your own clean images (CPU-feasible up to 64 px)."""
    import numpy as np

    from auditor.diffusion.prior import train_prior
    from auditor.loading.data import load_samples
    from auditor.spec import InputSpec

    shape = _ints(input_shape, "--input-shape")
    if shape is None:
        if not data_path.endswith(".npz"):
            raise UsageError("--input-shape C,H,W is required for an image folder")
        with np.load(data_path, allow_pickle=False) as z:
            x_shape = z["x"].shape
        shape = tuple(x_shape[1:]) if x_shape[1] in (1, 3) else (x_shape[3], x_shape[1], x_shape[2])
    if len(shape) != 3 or max(shape[1:]) > 64:
        raise UsageError(f"priors are trained on images up to 64 px: got input shape {shape}")
    samples = load_samples(data_path, InputSpec("image", tuple(shape)), num_classes=10**6)
    console = _console(False)
    with _progress(console) as observer:
        task = observer.progress.add_task("training prior", total=steps) if observer.progress else None

        def report(step: int, total: int, loss: float) -> None:
            if task is not None:
                observer.progress.update(task, completed=step, description=f"training prior (loss {loss:.4f})")

        extra = {} if context_share is None else {"context_share": context_share}
        train_prior(samples.x, out_dir, steps=steps, resume=True, progress=report, seed=seed, **extra)
    _err(f"prior written to {out_dir}; use it with --option diffusion.prior={out_dir}")
    sys.exit(EXIT_CLEAN)


@cli.command("detectors")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable list.")
def list_detectors(as_json: bool) -> None:
    """List registered detectors with what each needs (gradients, data, GPU) and the options each takes."""
    from auditor.detectors import registered
    from auditor.detectors.base import COMMON_OPTIONS

    infos = [cls.info for cls in registered().values()]
    if as_json:
        click.echo(json.dumps([info.__dict__ for info in infos], indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title="auditor detectors", show_lines=False)
    for col in ("name", "gradients", "data", "GPU", "inputs", "default", "what it does"):
        table.add_column(col, overflow="fold")
    yes = {True: "needs", False: "—"}
    for info in infos:
        table.add_row(info.name, yes[info.needs_gradients], yes[info.needs_data],
                      "prefers" if info.prefers_gpu else "—", ",".join(info.modalities),
                      "yes" if info.default else "no",
                      f"{info.summary}\n[dim]{info.reference}\noptions: {', '.join((*info.options, *COMMON_OPTIONS))}[/dim]")
    Console(soft_wrap=False).print(table)


# --------------------------------------------------------------------------------------------------


def _run_scan(model: str, out_dir: Path, builtin_data=None, **kw) -> int:
    from dataclasses import replace

    from auditor.compute import parse_effort
    from auditor.detectors.base import RunContext
    from auditor.output import parse_formats, write_reports
    from auditor.scan import check_options, plan_compute, resolve_detectors, scan

    formats = parse_formats(kw["formats"])
    names = [n.strip() for n in kw["detectors"].split(",") if n.strip()] if kw["detectors"] else None
    if names is not None:
        resolve_detectors(names, "image")  # unknown names are a usage error before any loading work
    thresholds = _pairs(kw["thresholds"], "--threshold", dotted=False)
    options = _pairs(kw["detector_options"], "--option", dotted=True)
    check_options(options, thresholds)  # before loading: a typo costs no conversion time
    effort = parse_effort(kw["effort"])
    console = _console(kw["quiet"])
    with _status(console, "loading model"):
        target, data = _load_for_cli(model, kw)
    if data is None and builtin_data is not None:
        data = builtin_data()
    names = resolve_detectors(names, target.spec.modality)
    settings = {"detectors": names, "thresholds": thresholds, "options": options,
                "data": data.source if data is not None else None,
                "input": target.spec.describe()}
    compute = plan_compute(target, names, options, effort=effort)
    if compute.effort < 1.0 and console is not None:
        hint = "; pass --effort 1 (or --device cuda) for the full work" if compute.requested == "auto" else ""
        console.print(f"auditor: {compute.describe()}{hint}", markup=False, highlight=False, soft_wrap=True)
    with _progress(console) as observer:
        context = RunContext(seed=kw["seed"], data=data, progress=observer.detector_progress)
        report = scan(target, names, context, options=options, thresholds=thresholds,
                      detector_timeout_s=kw["timeout"], total_timeout_s=kw["total_timeout"],
                      observer=observer.detector_event, settings=settings, fidelity=kw["fidelity"],
                      compute=compute)
    report = replace(report, model=replace(report.model, path=str(model)))
    written = write_reports(report, out_dir, formats)
    if console is not None:
        _summary(console, report, written)
    return _exit_code(report, kw["strict"])


def _load_for_cli(model: str, kw: dict):
    """Model + optional samples from the shared scan options (used by scan and fidelity)."""
    import torch

    from auditor.loading import LoadOptions, load_model
    from auditor.loading.common import DEFAULT_MAX_INPUT_PIXELS, DEFAULT_MAX_PARAMS
    from auditor.loading.data import load_samples

    if kw["threads"]:
        torch.set_num_threads(kw["threads"])
    try:
        arch_kwargs = json.loads(kw["arch_kwargs"])
    except ValueError:
        raise UsageError(f"--arch-kwargs must be a JSON object (got {kw['arch_kwargs']!r})") from None
    if not isinstance(arch_kwargs, dict):
        raise UsageError("--arch-kwargs must be a JSON object")
    value_range = _floats(kw["value_range"], "--value-range", 2)
    load_options = LoadOptions(
        device=kw["device"], input_shape=_ints(kw["input_shape"], "--input-shape"), layout=kw["layout"],
        mean=_floats(kw["mean"], "--mean"), std=_floats(kw["std"], "--std"),
        value_range=(value_range[0], value_range[1]) if value_range else (0.0, 1.0),
        labels_file=kw["labels"], arch=kw["arch"], arch_kwargs=arch_kwargs, trust_pickle=kw["trust_pickle"],
        max_input_pixels=kw["max_input_pixels"] or DEFAULT_MAX_INPUT_PIXELS,
        max_params=kw["max_params"] or DEFAULT_MAX_PARAMS, seed=kw["seed"],
    )
    target = load_model(model, load_options)
    data = load_samples(kw["data"], target.spec, target.num_classes) if kw["data"] else None
    return target, data


def _run_fidelity(model: str, out_dir: Path, **kw) -> int:
    from auditor.detectors.base import RunContext
    from auditor.fidelity import render_fidelity_page
    from auditor.output import atomic_write_text
    from auditor.reports.json_report import to_plain
    from auditor.scan import check_options, run_fidelity_suite

    all_options = _pairs(kw["detector_options"], "--option", dotted=True)
    check_options(all_options)
    options = all_options.get("fidelity", {})
    console = _console(kw["quiet"])
    with _status(console, "loading model"):
        target, data = _load_for_cli(model, kw)
    with _status(console, "measuring explanation fidelity"):
        report, note = run_fidelity_suite(target, RunContext(seed=kw["seed"], data=data, options=options,
                                                              time_budget_s=kw["timeout"]))
    if report is None:
        raise UsageError(f"the fidelity suite cannot run on this model ({note})")
    atomic_write_text(out_dir / "fidelity.json", json.dumps(to_plain(report.to_dict()), indent=2) + "\n")
    atomic_write_text(out_dir / "fidelity.html", render_fidelity_page(report, title=f"auditor — fidelity of {Path(model).name}"))
    if console is not None:
        from rich.markup import escape

        console.print(f"fidelity report: {escape(str(out_dir / 'fidelity.html'))}")
    return EXIT_CLEAN


def _exit_code(report, strict: bool) -> int:
    if strict and any(r.status != "ok" for r in report.results):
        bad = next(r for r in report.results if r.status != "ok")
        _err(f"--strict: detector {bad.name} {bad.status}: {bad.reason}")
        return EXIT_ERROR
    if report.verdict.status == "suspicious":
        return EXIT_FINDINGS
    if report.verdict.status == "inconclusive":
        if strict:
            _err("--strict: the verdict is inconclusive")
            return EXIT_ERROR
        _err("warning: the verdict is inconclusive (" + "; ".join(report.verdict.notes) + ")")
    return EXIT_CLEAN


def _console(quiet: bool):
    if quiet:
        return None
    from rich.console import Console

    return Console(stderr=True, highlight=False)


class _Observer:
    """Progress bars on a TTY; elsewhere (CI logs, pipes) one plain line per detector start and end."""

    def __init__(self, progress, console=None):
        self.progress = progress
        self.console = console
        self.task = None
        self.started = 0.0

    def detector_event(self, name: str, event: str) -> None:
        if self.progress is None:
            if self.console is not None:
                if event == "start":
                    self.started = time.monotonic()
                    self.console.print(f"auditor: running {name}", markup=False, highlight=False, soft_wrap=True)
                else:
                    self.console.print(f"auditor: {name} finished in {time.monotonic() - self.started:.1f} s",
                                       markup=False, highlight=False, soft_wrap=True)
            return
        if event == "start":
            self.task = self.progress.add_task(name, total=1.0)
        elif self.task is not None:
            self.progress.update(self.task, completed=1.0)

    def detector_progress(self, stage: str, fraction: float) -> None:
        if self.progress is not None and self.task is not None:
            self.progress.update(self.task, completed=fraction)


class _progress:
    def __init__(self, console):
        self.console = console
        self.bar = None

    def __enter__(self) -> _Observer:
        if self.console is not None and self.console.is_terminal:
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

            self.bar = Progress(TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(),
                                console=self.console, transient=True)
            self.bar.__enter__()
            return _Observer(self.bar)
        return _Observer(None, self.console)

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.__exit__(*exc)


class _status:
    def __init__(self, console, text: str):
        self.console, self.text, self.ctx = console, text, None

    def __enter__(self):
        if self.console is not None and self.console.is_terminal:
            self.ctx = self.console.status(self.text)
            self.ctx.__enter__()

    def __exit__(self, *exc):
        if self.ctx is not None:
            self.ctx.__exit__(*exc)


def _summary(console, report, written) -> None:
    from rich.markup import escape
    from rich.table import Table

    verdict = report.verdict
    colour = {"suspicious": "bold red", "clean": "bold green", "inconclusive": "bold yellow"}[verdict.status]
    table = Table(show_header=True, header_style="bold", box=None, pad_edge=False)
    for col in ("detector", "status", "seconds", "model score", "flagged classes"):
        table.add_column(col)
    for r in report.results:
        flagged = ", ".join(f"{i} ({report.labels[i]})" for i in r.flagged_classes) or "—"
        detail = r.reason if r.status != "ok" else flagged
        table.add_row(r.name, r.status, f"{r.seconds:.1f}",
                      "—" if r.model_score is None else f"{r.model_score:.3f}", escape(detail))
    console.print(table)
    console.print(f"[{colour}]{verdict.status.upper()}[/]: {escape(verdict.headline(report.labels))}"
                  + ("" if verdict.model_score is None else f"  (model score {verdict.model_score:.3f})"))
    if verdict.status != "inconclusive":  # an inconclusive verdict's notes are its headline
        for note in verdict.notes:
            console.print(f"  note: {escape(note)}")
    for fmt, path in written.items():
        console.print(f"  {fmt:5s} {escape(str(path))}")


def _err(message: str) -> None:
    click.echo(f"auditor: {message}", err=True)


def _debug_requested(argv: list[str]) -> bool:
    return "--debug" in argv or os.environ.get("AUDITOR_DEBUG", "").lower() in {"1", "true", "yes", "on"}


def main(argv: list[str] | None = None) -> None:
    """Entry point: maps every outcome to one line and an exit code (tracebacks only with --debug)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = _debug_requested(argv)
    logging.basicConfig(level=logging.DEBUG if debug else logging.WARNING, format="auditor: %(message)s")
    if not debug:
        # Library chatter (deprecation warnings, torch.export's logged tracebacks on damaged files) would
        # break the one-line error contract; --debug shows all of it.
        warnings.filterwarnings("ignore")
        for name in ("torch", "onnx", "onnxruntime", "onnxscript", "diffusers", "PIL"):
            logging.getLogger(name).setLevel(logging.CRITICAL)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))  # run finally-blocks, clean temp files
    try:
        cli.main(args=argv, prog_name="auditor", standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        _err("aborted")
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(EXIT_USAGE)
    except AuditorError as exc:
        if debug:
            traceback.print_exc()
        _err(f"error: {exc}")
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        _err("interrupted")
        sys.exit(130)
    except SystemExit:
        raise
    except BaseException as exc:  # noqa: BLE001 - last line of defence: one line, exit 3
        if debug:
            traceback.print_exc()
        _err(f"internal error: {type(exc).__name__}: {' '.join(str(exc).split())[:300]} (re-run with --debug for details)")
        sys.exit(EXIT_ERROR)
    sys.exit(EXIT_CLEAN)
