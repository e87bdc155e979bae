"""Leaderboard files: the CSV (one row per cell), the targets CSV and the run's JSON metadata,
written atomically through :mod:`bench.atomic`; :func:`read` loads a saved run back.

CSV columns are stable and documented in README.md ("Leaderboard
columns"); registered metrics each add a column named after the metric.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable, Sequence

import pandas as pd

from bench import atomic, scoring

CSV_NAME = "leaderboard.csv"
JSON_NAME = "run.json"
TARGETS_NAME = "targets.csv"
TARGET_COLUMNS = ["task", "method", "device", "target", "settings", "error", "latency_median_s"]


def columns(metric_names: Sequence[str]) -> list[str]:
    """The leaderboard's columns: the fields of :class:`bench.cells.CellResult`, metrics after ``failure_rate``."""
    from bench.cells import CellResult

    return CellResult.columns(list(metric_names))


def write_csv(path: Path, rows: Iterable[dict[str, Any]], metric_names: Sequence[str]) -> None:
    rows = list(rows)
    cols = columns(metric_names)
    extra = sorted({k for r in rows for k in r} - set(cols))
    frame = pd.DataFrame(list(rows), columns=cols + extra)
    atomic.write_with(path, lambda fh: frame.to_csv(fh, index=False, float_format="%.9g"))


def write_targets(path: Path, rows: list[dict[str, Any]]) -> None:
    """Per task, method and device: the fastest configuration meeting each accuracy target."""
    frame = pd.DataFrame(scoring.fastest_per_target(rows), columns=TARGET_COLUMNS)
    atomic.write_with(path, lambda fh: frame.to_csv(fh, index=False, float_format="%.9g"))


def write_json(path: Path, data: dict[str, Any]) -> None:
    atomic.write_with(path, lambda fh: json.dump(data, fh, indent=2, default=str))


def _count(n: int, what: str) -> str:
    return f"{n} {what}" if n == 1 else f"{n} {what}s"


def folder_summary(directory: str | Path) -> str:
    """Every file a run folder holds, for the run's closing line: the tables and records by name,
    plots by name (a count beyond five), and the files under each subfolder counted by type."""
    directory = Path(directory)
    top = sorted(p.name for p in directory.iterdir() if p.is_file() and not p.name.startswith("."))
    order = [CSV_NAME, TARGETS_NAME, JSON_NAME, "rows.jsonl", "samples.jsonl"]
    named = [n for n in order if n in top] + [n for n in top if n not in order and not n.endswith(".png")]
    plots = [n for n in top if n.endswith(".png")]
    parts = list(named)
    if plots:
        parts.append(f"{_count(len(plots), 'plot')} ({', '.join(plots)})" if len(plots) <= 5
                     else _count(len(plots), "plot") + " (*.png)")
    for sub in sorted(p for p in directory.iterdir() if p.is_dir()):
        files = [p for p in sub.rglob("*") if p.is_file()]
        if not files:
            continue
        types: dict[str, int] = {}
        for f in files:
            kind = f".{f.suffix.lstrip('.')}" if f.suffix else "other"
            types[kind] = types.get(kind, 0) + 1
        parts.append(f"{sub.name}/ ({', '.join(f'{n} {kind}' for kind, n in sorted(types.items()))})")
    return ", ".join(parts)


def read(path: str | Path) -> tuple[pd.DataFrame, dict[str, Any]]:
    """A saved leaderboard: a run folder or its leaderboard.csv."""
    path = Path(path)
    if path.is_dir():
        if not (path / CSV_NAME).is_file() and (path / JSON_NAME).is_file():
            # a run stopped before its first table: its rows (if any) are in the record
            from bench.store import ROWS_NAME, read_jsonl

            return pd.DataFrame(read_jsonl(path / ROWS_NAME)), json.loads((path / JSON_NAME).read_text())
        path = path / CSV_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no leaderboard here (expected a run folder or {CSV_NAME})")
    frame = pd.read_csv(path, keep_default_na=True)
    meta_path = path.with_name(JSON_NAME)
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    return frame, meta
