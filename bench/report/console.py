"""Console leaderboards (rich): one table per task, best first, and the fastest setting within
each accuracy target; the number formatting they share.
"""

from __future__ import annotations

import math
from typing import Any

from rich import box
from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from bench import scoring
from bench.report._common import _num, _settings_text
from bench.scoring import tier_label

STATUS_ORDER = {"ok": 0, "failed": 1, "error": 2, "timeout": 3, "skipped": 4}


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
