"""Writing report files: atomic (temp file + rename), so a crash or a kill never leaves a half report."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from auditor.errors import UsageError
from auditor.scan import AuditReport

FORMATS = ("html", "json", "sarif")


def writers() -> dict[str, tuple[str, Callable[[AuditReport], str]]]:
    from auditor.reports.html import to_html
    from auditor.reports.json_report import to_json
    from auditor.reports.sarif import to_sarif

    return {"html": ("report.html", to_html), "json": ("report.json", to_json), "sarif": ("report.sarif", to_sarif)}


def parse_formats(text: str) -> tuple[str, ...]:
    formats = tuple(dict.fromkeys(f.strip().lower() for f in text.split(",") if f.strip()))
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise UsageError(f"--format takes a comma list of {', '.join(FORMATS)} (got {text!r})")
    return formats


def atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; reports are ordinary files
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def write_reports(report: AuditReport, out_dir: Path, formats: Sequence[str]) -> Mapping[str, Path]:
    """Render every format first (pure), then write each atomically; returns format → path."""
    table = writers()
    rendered = {fmt: (out_dir / table[fmt][0], table[fmt][1](report)) for fmt in formats}
    for path, text in rendered.values():
        atomic_write_text(path, text)
    return {fmt: path for fmt, (path, _) in rendered.items()}
