"""Leaderboards: CSV and JSON files (written atomically) and rich tables.

CSV columns are stable and documented in README.md ("Leaderboard
columns"); registered metrics each add a column named after the metric.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable, Sequence

import pandas as pd
from rich import box
from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from bench import scoring
from bench.scoring import tier_label

CSV_NAME = "leaderboard.csv"
JSON_NAME = "run.json"
TARGETS_NAME = "targets.csv"
TARGET_COLUMNS = ["task", "method", "device", "target", "settings", "error", "latency_median_s"]

COLUMNS_BEFORE_METRICS = [
    "suite", "run_id", "task", "kind", "model", "product", "n", "method", "method_version", "plugin",
    "settings", "label", "device", "status", "message", "failures", "failure_rate",
]
COLUMNS_AFTER_METRICS = [
    "max_err_s100", "tier", "latency_median_s", "latency_iqr_s", "latency_min_s", "latency_max_s", "spread_pct", "samples",
    "loops", "ns_per_option", "throughput_per_s", "prepare_s", "first_call_s", "baseline", "speedup",
    "iterations_mean", "iterations_max", "stderr_mean", "stderr_max", "z_max", "within_3se",
]
STATUS_ORDER = {"ok": 0, "failed": 1, "error": 2, "timeout": 3, "skipped": 4}


def columns(metric_names: Sequence[str]) -> list[str]:
    return COLUMNS_BEFORE_METRICS + list(metric_names) + COLUMNS_AFTER_METRICS


def _atomic_write(path: Path, write) -> None:
    """Write through a temporary file in the same folder, then rename: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; results are ordinary files
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_csv(path: Path, rows: Iterable[dict[str, Any]], metric_names: Sequence[str]) -> None:
    rows = list(rows)
    cols = columns(metric_names)
    extra = sorted({k for r in rows for k in r} - set(cols))
    frame = pd.DataFrame(list(rows), columns=cols + extra)
    _atomic_write(path, lambda fh: frame.to_csv(fh, index=False, float_format="%.9g"))


def write_targets(path: Path, rows: list[dict[str, Any]]) -> None:
    """Per task, method and device: the fastest configuration meeting each accuracy target."""
    frame = pd.DataFrame(scoring.fastest_per_target(rows), columns=TARGET_COLUMNS)
    _atomic_write(path, lambda fh: frame.to_csv(fh, index=False, float_format="%.9g"))


def plot_work_precision(path: Path, task: str, rows: list[dict[str, Any]]) -> bool:
    """Error against median latency, log-log, one line per method and device over its
    sweep, the Pareto front (nothing both faster and more accurate) drawn over them.

    Returns False (and writes nothing) when no cell has both an error and a time.
    """
    points = [(r, _num(r.get("latency_median_s")), scoring._err(r)) for r in rows
              if r.get("status") in ("ok", "failed")]
    points = [(r, t, e) for r, t, e in points if math.isfinite(t) and t > 0 and math.isfinite(e)]
    if not points:
        return False
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    floor = 1e-16  # exact agreement still needs a place on a log axis
    first = rows[0]
    price_task = any(math.isfinite(_num(r.get("max_err_s100"))) for r, _, _ in points)
    fig = Figure(figsize=(7.5, 5.0), layout="constrained")
    ax = fig.add_subplot()
    # one line per method, suite label and device; a point is named by the settings that vary along its line
    grouped: dict[tuple[str, str, str], list[tuple[float, float, dict, bool]]] = {}
    for r, t, e in points:
        complete = r.get("status") == "ok" and not _num(r.get("failures"))
        tag = r.get("label") if isinstance(r.get("label"), str) else ""
        grouped.setdefault((str(r["method"]), tag, str(r["device"])), []).append(
            (t, max(e, floor), _settings_dict(r.get("settings")) or {}, complete))
    lines: dict[tuple[str, str, str], list[tuple[float, float, str, bool]]] = {}
    for key, pts in grouped.items():
        keys = sorted({k for p in pts for k in p[2]})
        varying = [k for k in keys if len({json.dumps(p[2].get(k)) for p in pts}) > 1] or keys
        lines[key] = [(t, e, ", ".join(f"{k}={d[k]}" for k in varying if k in d), c) for t, e, d, c in pts]
    for (method, tag, device), pts in sorted(lines.items()):
        pts.sort()
        label = method + (f": {tag}" if tag else "") + ("" if device == "cpu" else f" ({device})")
        (line,) = ax.plot([p[0] for p in pts], [p[1] for p in pts], linestyle="-" if device == "cpu" else "--",
                          linewidth=1.2, label=label, alpha=0.85)
        color = line.get_color()
        for t, e, text, complete in pts:
            # cells where some points failed are drawn hollow: their error covers only the rest
            ax.plot([t], [e], marker="o", markersize=4, color=color,
                    markerfacecolor=color if complete else "none")
            if len(pts) <= 12:  # name each point of a sweep by its settings
                ax.annotate(text, (t, e), fontsize=6, color=color, xytext=(3, 3), textcoords="offset points")
    # the Pareto front over complete cells: nothing else is both faster and more accurate
    front, best = [], math.inf
    complete_points = sorted((t, max(e, floor)) for r, t, e in points
                             if r.get("status") == "ok" and not _num(r.get("failures")))
    for t, e in complete_points:
        if e < best:
            front.append((t, e))
            best = e
    if front:
        ax.step([p[0] for p in front], [p[1] for p in front], where="post", color="black", linewidth=2.5,
                alpha=0.35, label="Pareto front", zorder=0)
    # each accuracy target: a dotted line, and a star on the fastest configuration meeting it
    stars: dict[tuple[float, float], tuple[str, list[str]]] = {}
    for target in scoring.TARGETS if price_task else ():
        ax.axhline(target, color="grey", linewidth=0.6, linestyle=":")
        winners = [f for f in scoring.fastest_per_target(rows, (target,)) if f["settings"] is not None]
        if winners:
            w = min(winners, key=lambda f: f["latency_median_s"])
            xy = (w["latency_median_s"], max(w["error"], floor))
            stars.setdefault(xy, (w["method"], []))[1].append(f"{target:.0e}")
    for xy, (method, targets) in stars.items():
        ax.plot(*xy, marker="*", markersize=12, color="gold", markeredgecolor="black", zorder=5)
        ax.annotate(f"fastest <= {', '.join(targets)}: {method}", xy, fontsize=7, xytext=(6, -10),
                    textcoords="offset points")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("median latency of the batch [s]")
    ax.set_ylabel("max abs error" + (" (prices scaled to S = 100)" if price_task else ""))
    ax.set_title(f"{task}: {first.get('kind')} · {first.get('model')} · {first.get('product')} · n={first.get('n')}",
                 fontsize=10)
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=8)
    save_figure(fig, path)
    return True


def save_figure(fig, path: Path, dpi: int = 110) -> None:
    """Save a matplotlib figure atomically (temporary file in the same folder, then rename; mode 0644)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp.png")
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=dpi)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def targets_table(task: str, rows: list[dict[str, Any]]) -> Table | None:
    """Per method and device, the fastest setting within each accuracy target (price tasks)."""
    if not any(math.isfinite(_num(r.get("max_err_s100"))) for r in rows):
        return None
    found = scoring.fastest_per_target(rows)
    methods = sorted({(f["method"], f["device"]) for f in found})
    table = Table(title=f"{task}: fastest setting within each target (max error, prices scaled to S = 100)",
                  box=box.SIMPLE_HEAD, title_justify="left", pad_edge=False)
    table.add_column("method")
    table.add_column("dev")
    for target in scoring.TARGETS:
        table.add_column(f"<= {target:.0e}", overflow="fold")
    for method, device in methods:
        cells = []
        for target in scoring.TARGETS:
            f = next(x for x in found if x["method"] == method and x["device"] == device and x["target"] == target)
            cells.append("-" if f["settings"] is None else
                         f"{fmt_time(f['latency_median_s'])} [dim]{_settings_text(f['settings']) or 'defaults'}[/]")
        table.add_row(method, device, *cells)
    return table


def write_json(path: Path, data: dict[str, Any]) -> None:
    _atomic_write(path, lambda fh: json.dump(data, fh, indent=2, default=str))


def read(path: str | Path) -> tuple[pd.DataFrame, dict[str, Any]]:
    """A saved leaderboard: a run folder or its leaderboard.csv."""
    path = Path(path)
    if path.is_dir():
        path = path / CSV_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no leaderboard here (expected a run folder or {CSV_NAME})")
    frame = pd.read_csv(path, keep_default_na=True)
    meta_path = path.with_name(JSON_NAME)
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    return frame, meta


# --------------------------------------------------------------------------- console


def _num(value: Any) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return math.nan
    return v


def fmt_time(seconds: Any) -> str:
    s = _num(seconds)
    if not math.isfinite(s):
        return "-"
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("µs", 1e-6), ("ns", 1e-9)):
        if s >= scale:
            return f"{s / scale:.3g} {unit}"
    return f"{s / 1e-9:.3g} ns"


def fmt_err(value: Any) -> str:
    v = _num(value)
    return "-" if not math.isfinite(v) else f"{v:.2e}"


def fmt_rate(value: Any) -> str:
    v = _num(value)
    if not math.isfinite(v):
        return "-"
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if v >= scale:
            return f"{v / scale:.3g}{unit}"
    return f"{v:.3g}"


def sort_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Accuracy tier first, then fewer failures, then speed; broken cells last."""

    def key(r):
        tier = _num(r.get("tier"))
        lat = _num(r.get("latency_median_s"))
        return (
            STATUS_ORDER.get(str(r.get("status")), 9),
            tier if math.isfinite(tier) else math.inf,
            _num(r.get("failures")) if math.isfinite(_num(r.get("failures"))) else math.inf,
            lat if math.isfinite(lat) else math.inf,
        )

    return sorted(rows, key=key)


def _pct(value: Any) -> str:
    v = _num(value)
    return "-" if not math.isfinite(v) else f"{100 * v:.3g}%"


def _settings_dict(raw: Any) -> dict | None:
    """A cell's settings from their JSON text (or a mapping); None if they do not parse."""
    try:
        return json.loads(raw) if isinstance(raw, str) else dict(raw or {})
    except (TypeError, ValueError):
        return None


def _settings_text(raw: Any) -> str:
    settings = _settings_dict(raw)
    if settings is None:
        return str(raw)
    return ", ".join(f"{k}={v}" for k, v in settings.items())


def _cells(r: dict[str, Any]) -> dict[str, str]:
    status = str(r.get("status"))
    message = r.get("message")
    message = "" if message is None or (isinstance(message, float) and math.isnan(message)) else str(message)
    speed = _num(r.get("speedup"))
    fails = _num(r.get("failures"))
    settings = _settings_text(r.get("settings"))
    label = r.get("label")
    if isinstance(label, str) and label:
        settings = f"{label}: {settings}" if settings else label
    median = r.get("latency_median_s")
    return {
        "method": f"{r.get('method')}" + (f" [dim]{settings}[/]" if settings else ""),
        "dev": str(r.get("device")),
        "tier": tier_label(_num(r.get("tier"))) if status in ("ok", "failed") else "-",
        "max err": fmt_err(r.get("max_abs_error")),
        "±se": fmt_err(r.get("stderr_mean")),
        "in 3se": _pct(r.get("within_3se")),
        "fails": "-" if not math.isfinite(fails) else str(int(fails)),
        "median": fmt_time(median),
        "±IQR": fmt_time(r.get("latency_iqr_s")),
        "per opt": fmt_time(_num(r.get("ns_per_option")) * 1e-9),
        "speed-up": f"{speed:.3g}x" if math.isfinite(speed) else "-",
        "prepare": fmt_time(r.get("prepare_s")),
        "note": message if status in ("ok", "skipped") or message.startswith(status) else f"{status}: {message}",
    }


# columns by priority: narrow consoles drop the later ones
_OPTIONAL = ("±IQR", "per opt", "prepare")
_STYLE = {"ok": "", "failed": "yellow", "error": "red", "timeout": "red", "skipped": "dim"}


def task_table(task: str, rows: list[dict[str, Any]], width: int = 200):
    """One task's leaderboard, best first (see :func:`sort_rows`).

    On consoles narrower than 140 columns, notes move below the table,
    keyed by row number, and the least important columns are dropped.
    """
    first = rows[0]
    title = (f"[bold]{task}[/]  {first.get('kind')} · {first.get('model')} · {first.get('product')} · "
             f"n={first.get('n')}")
    drop = set(_OPTIONAL) if width < 110 else ({"prepare"} if width < 140 else set())
    if width < 140:
        drop.add("note")
    if not any(math.isfinite(_num(r.get("stderr_mean"))) for r in rows):
        drop |= {"±se", "in 3se"}  # only tasks with Monte Carlo rows show standard errors
    elif width < 110:
        drop |= {"tier", "fails"}  # room for the standard errors: the tier follows from max err
    if all(str(r.get("device")) == "cpu" for r in rows):
        drop.add("dev")
    table = Table(title=title, box=box.SIMPLE_HEAD, title_justify="left", pad_edge=False)
    table.add_column("#", justify="right")
    names = [n for n in ("method", "dev", "tier", "max err", "±se", "in 3se", "fails", "median", "±IQR", "per opt", "speed-up",
                         "prepare", "note") if n not in drop]
    for name in names:
        if name == "method":
            table.add_column(name, overflow="fold", min_width=16)
        elif name in ("dev", "note"):
            table.add_column(name, overflow="fold", min_width=4 if name == "dev" else 12)
        else:
            table.add_column(name, justify="right", no_wrap=True)
    footnotes = []
    for i, r in enumerate(sort_rows(rows), 1):
        cells = _cells(r)
        style = _STYLE.get(str(r.get("status")), "")
        table.add_row(str(i), *(cells[n] for n in names), style=style)
        if "note" in drop and cells["note"]:
            footnotes.append(Text(f"  {i:>2}  {cells['note']}", style=style or "italic"))
    if not footnotes:
        return table
    return Group(table, *footnotes, Text(""))


def render(rows: list[dict[str, Any]], console: Console | None = None, title: str | None = None) -> None:
    console = console or Console()
    if title:
        console.rule(title)
    by_task: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_task.setdefault(str(row.get("task")), []).append(row)
    for task, task_rows in by_task.items():
        console.print(task_table(task, task_rows, console.width))
        targets = targets_table(task, task_rows)
        if targets is not None:
            console.print(targets)
