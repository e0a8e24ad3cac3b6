"""Evaluation reports: the metrics.json document (atomic write) and rich tables of it.

metrics.json layout (schema_version 1; every section is optional, see docs/metrics.md):

    {"schema_version": 1,
     "created": "2026-01-01T12:00:00Z",                  UTC time of writing
     "run": {...},                                       free-form: command, model, dataset, config
     "frame_prediction": {"horizons": [1, 2, 4, 8, 16],  `HorizonScores.summary()`, plus
                          "modes": {mode: {metric: {"mean": [...], "std": [...], "n": [...]}}},
                          "higher_is_better": {metric: bool}},   (psnr: dataset-level, see horizons.py)
     "controllability": {"accuracy": float, ...},        `evaluate_controllability()`
     "lookback": {"turns": {"k4": {...}}, ...},          `evaluate_lookback()`
     "navigation": {...},                                `navigation_summary()`
     "trajectory": {"ate": float, "align": str, "rpe": {...}, ...},
     "text": {"accuracy": float, "correct": int, "n": int, "by_question": {question: {...}}, "examples": [...]},
     "symbolic": {...}}                                  `SymbolicAccuracy.as_dict()`

Numbers are plain JSON numbers; non-finite values (inf, nan) are written as null. Printing the
tables is the CLI's job: this module only builds `rich.table.Table` objects.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from rich.table import Table

from worldbagel.atomic_files import atomic_write_text
from worldbagel.errors import WorldBagelError, bad_argument
from worldbagel.frame_metrics import HIGHER_IS_BETTER, PSNR_FRAME_MEAN

SCHEMA_VERSION = 1
SECTIONS = (
    "run",
    "frame_prediction",
    "controllability",
    "lookback",
    "navigation",
    "trajectory",
    "text",
    "symbolic",
)
#: higher-is-better of metrics beyond the frame metrics (for tables, plots and the document)
METRIC_DIRECTION = {
    **HIGHER_IS_BETTER,
    PSNR_FRAME_MEAN: True,
    "lpips": False,
    "dreamsim": False,
    "fvd": False,
    "symbolic_accuracy": True,
}


def _jsonable(value):
    """Plain-JSON copy: numpy -> Python, tuples -> lists, non-finite floats -> None."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, (np.bool_, bool)):
        return bool(value)
    if isinstance(value, (np.integer, int)):
        return int(value)
    if isinstance(value, (np.floating, float)):
        v = float(value)
        return v if math.isfinite(v) else None
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    raise bad_argument("metrics value", value, "use numbers, strings, lists or dicts (JSON-serialisable)")


def metrics_document(
    run: Mapping | None = None,
    frame_prediction: Mapping | None = None,
    navigation: Mapping | None = None,
    trajectory: Mapping | None = None,
    text: Mapping | None = None,
    symbolic: Mapping | None = None,
    controllability: Mapping | None = None,
    lookback: Mapping | None = None,
) -> dict:
    """Assemble a metrics.json document from the sections that were evaluated (None sections are left out).

    `frame_prediction` is a `HorizonScores.summary()`; its `higher_is_better` map is filled in for the
    metrics it contains.
    """
    doc: dict = {
        "schema_version": SCHEMA_VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    if frame_prediction is not None:
        if "horizons" not in frame_prediction or "modes" not in frame_prediction:
            raise bad_argument(
                "frame_prediction",
                dict(frame_prediction),
                "pass HorizonScores.summary() (keys horizons, modes)",
            )
        names = {m for per_mode in frame_prediction["modes"].values() for m in per_mode}
        frame_prediction = {
            **frame_prediction,
            "higher_is_better": {m: METRIC_DIRECTION[m] for m in sorted(names) if m in METRIC_DIRECTION},
        }
    sections = dict(
        run=run,
        frame_prediction=frame_prediction,
        controllability=controllability,
        lookback=lookback,
        navigation=navigation,
        trajectory=trajectory,
        text=text,
        symbolic=symbolic,
    )
    for name, section in sections.items():
        if section is not None:
            if not isinstance(section, Mapping):
                raise bad_argument(name, section, "pass a dict (see docs/metrics.md for the keys)")
            doc[name] = _jsonable(section)
    return doc


def write_metrics_json(path: str | os.PathLike, document: Mapping) -> Path:
    """Write a metrics document atomically (temp file in the same folder, then os.replace); returns the path."""
    path = Path(path)
    if "schema_version" not in document:
        raise bad_argument("document", sorted(document), "build it with metrics_document(...)")
    text = json.dumps(_jsonable(document), indent=2, allow_nan=False) + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, text)
    return path


def read_metrics_json(path: str | os.PathLike) -> dict:
    """Read a metrics.json written by `write_metrics_json` (checks the schema version)."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise WorldBagelError(f"cannot read metrics file '{path}': {exc}") from None
    if not isinstance(doc, dict) or doc.get("schema_version") != SCHEMA_VERSION:
        raise WorldBagelError(
            f"'{path}' is not a worldbagel metrics.json of schema_version {SCHEMA_VERSION} "
            f"(found {doc.get('schema_version') if isinstance(doc, dict) else type(doc).__name__})"
        )
    return doc


# --------------------------------------------------------------------------------------------- tables
def format_value(value, std=None) -> str:
    """Compact number: 4 significant digits, '± std' when given, '-' for missing; text stays as it is."""
    if isinstance(value, str):
        return value
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-" if value is None else str(value)
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    text = f"{float(value):.4g}"
    if std is not None:
        text += f" ± {float(std):.2g}"
    return text


def _best(means: Sequence, higher: bool | None) -> float | None:
    vals = [m for m in means if m is not None]
    if higher is None or len(vals) < 2:
        return None
    return max(vals) if higher else min(vals)


def horizon_table(
    frame_prediction: Mapping, metrics: Sequence[str] | None = None, title: str = "Frame prediction"
) -> Table:
    """Table of mean ± std per (metric, mode) row and horizon column; the best mode per horizon is bold."""
    horizons = list(frame_prediction["horizons"])
    modes = frame_prediction["modes"]
    names = (
        list(metrics)
        if metrics is not None
        else list(dict.fromkeys(m for per in modes.values() for m in per))
    )
    table = Table(title=title, title_justify="left")
    table.add_column("metric", style="cyan", overflow="fold")
    table.add_column("mode", no_wrap=True)
    for k in horizons:
        table.add_column(f"k={k}", justify="right", no_wrap=True)
    for name in names:
        higher = METRIC_DIRECTION.get(name)
        arrow = "" if higher is None else (" ↑" if higher else " ↓")
        rows = [(mode, per[name]) for mode, per in modes.items() if name in per]
        if not rows:
            raise bad_argument("metrics", names, f"'{name}' is not in the frame_prediction summary")
        best = [_best([r["mean"][j] for _, r in rows], higher) for j in range(len(horizons))]
        for r_i, (mode, cell) in enumerate(rows):
            values = []
            for j in range(len(horizons)):
                text = format_value(cell["mean"][j], cell["std"][j])
                if best[j] is not None and cell["mean"][j] == best[j]:
                    text = f"[bold]{text}[/bold]"
                values.append(text)
            table.add_row(
                f"{name}{arrow}" if r_i == 0 else "", mode, *values, end_section=r_i == len(rows) - 1
            )
    return table


def scalar_table(section: Mapping, title: str) -> Table:
    """Two-column table (metric, value) of a flat section such as navigation or text; nested dicts are
    flattened with dotted keys."""
    table = Table(title=title, title_justify="left")
    table.add_column("metric", style="cyan", overflow="fold")
    table.add_column("value", justify="right", no_wrap=True, min_width=10)

    def rows(prefix: str, value) -> None:
        if isinstance(value, Mapping):
            for k, v in value.items():
                rows(f"{prefix}.{k}" if prefix else str(k), v)
        elif isinstance(value, (list, tuple)):
            table.add_row(prefix, ", ".join(format_value(v) for v in value))
        else:
            table.add_row(prefix, value if isinstance(value, str) else format_value(value))

    rows("", section)
    return table


_TITLES = {
    "controllability": "Controllability",
    "lookback": "Look-back (memory)",
    "navigation": "Navigation",
    "trajectory": "Trajectory",
    "text": "Text Q&A",
    "symbolic": "Symbolic accuracy",
}


def report_tables(document: Mapping) -> list[Table]:
    """All tables of a metrics document, in section order (frame prediction first)."""
    tables = []
    if "frame_prediction" in document:
        tables.append(horizon_table(document["frame_prediction"]))
    for key, title in _TITLES.items():
        if key in document:
            tables.append(scalar_table(document[key], title))
    return tables
