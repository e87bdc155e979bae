"""Console leaderboards (rich): one table per task, best first, and the fastest setting within
each accuracy target; the number formatting they share.
"""

from __future__ import annotations

import math
from typing import Any

from rich import box
from rich.console import Console, Group
from rich.padding import Padding
from rich.table import Table
from rich.text import Text

from bench import scoring
from bench.report._common import _num, _settings_text
from bench.report.files import CSV_NAME
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


def _sig3(x: float) -> str:
    """``x`` >= 1 to three significant digits, with thousands separators: 14,400, 213, 33.2."""
    r = float(f"{x:.3g}")
    return f"{r:,.0f}" if r >= 100 else f"{r:g}"


def fmt_speedup(value: Any) -> str:
    """A speed-up for a reader: ``213x``, ``14,400x``, ``0.52x``; below 0.1 as a fraction, ``1/14,400x``
    (14,400 times slower than the baseline), never ``6.95e-05x``."""
    v = _num(value)
    if not math.isfinite(v) or v <= 0:
        return "-"
    if v >= 1:
        return f"{_sig3(v)}x"
    if v >= 0.1:
        return f"{v:.2g}x"
    return f"1/{_sig3(1 / v)}x"


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
        "speed-up": fmt_speedup(speed),
        "prepare": fmt_time(r.get("prepare_s")),
        "note": message if status in ("ok", "skipped") or message.startswith(status) else f"{status}: {message}",
    }


# columns a narrow console leaves out, first to go first; the rest (#, method, max err, median,
# speed-up) always show. Whatever is left out for want of room is named under the table.
_BY_WIDTH = ("prepare", "±IQR", "per opt", "tier", "in 3se", "fails", "±se", "dev")
_STYLE = {"ok": "", "failed": "yellow", "error": "red", "timeout": "red", "skipped": "dim"}


def task_title(task: str, rows: list[dict[str, Any]]) -> Text:
    """The task's heading: its name, kind, model, product and batch size, wrapped between words
    (never cut: a cut ``n=5000`` would read as a wrong number)."""
    first = rows[0]
    title = Text.from_markup(f"[bold]{task}[/]  {first.get('kind')} · {first.get('model')} · "
                             f"{first.get('product')} · n={first.get('n')}")
    title.overflow = "fold"
    return title


_WRAPPING = {"method": 12, "dev": 4, "note": 12}  # columns that wrap between words: their least width
_LONGEST_WORD = 24  # a longer word in a wrapping column folds rather than costing a column


def _build(names: list[str], rows: list[dict[str, Any]]) -> tuple[Table, list[dict[str, str]]]:
    """The table with columns ``names`` (after ``#``) and each row's cells, best row first."""
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    table.add_column("#", justify="right", no_wrap=True)
    for name in names:
        if name in _WRAPPING:
            table.add_column(name, overflow="fold", min_width=_WRAPPING[name])
        else:
            table.add_column(name, justify="right", no_wrap=True)
    cells = []
    for i, r in enumerate(sort_rows(rows), 1):
        row = _cells(r) | {"#": str(i), "style": _STYLE.get(str(r.get("status")), "")}
        table.add_row(*(row[n] for n in ["#", *names]), style=row["style"])
        cells.append(row)
    return table, cells


def _needed(names: list[str], cells: list[dict[str, str]]) -> int:
    """Columns the table needs with no cell cut: every number whole, wrapping columns at their
    longest word (at most ``_LONGEST_WORD``), plus padding and edges as ``_build`` lays them out."""
    total = 0
    for name in ["#", *names]:
        plain = [name] + [Text.from_markup(c[name]).plain for c in cells]
        if name in _WRAPPING:
            longest = max((len(word) for text in plain for word in text.split()), default=1)
            total += max(_WRAPPING[name], min(longest, _LONGEST_WORD))
        else:
            total += max(len(text) for text in plain)
    n = len(names) + 1
    return total + (2 * n - 2) + 2 + (n - 1)  # padding (none at the edges), edges, column gaps


def _pack(items: list[str], width: int) -> list[str]:
    """``items`` joined by `` · `` into lines of at most ``width`` characters, never splitting an item
    (an item longer than a line gets a line of its own, and the console folds it)."""
    lines: list[str] = []
    for item in items:
        if lines and len(lines[-1]) + 3 + len(item) <= width:
            lines[-1] += " · " + item
        else:
            lines.append(item)
    return lines


def _folded(names: list[str], cells: list[dict[str, str]], width: int) -> Table:
    """The leaderboard for a console too narrow for its table: per row, the method (and device),
    then every other column as ``name value``, wrapped between columns."""
    grid = Table.grid(padding=(0, 2, 0, 0))
    grid.add_column(justify="right", no_wrap=True)
    grid.add_column(overflow="fold")
    inner = max(width - 2 - 2 - max(len(c["#"]) for c in cells), 8)
    for c in cells:
        head = Text.from_markup(c["method"] + (f" · {c['dev']}" if "dev" in names else ""))
        items = [f"{n} {c[n]}" for n in names if n not in ("method", "dev", "note") and c[n] != "-"]
        body = Text.assemble(head, "\n", "\n".join(_pack(items, inner)))
        grid.add_row(Text(c["#"]), body, style=c["style"])
    return Padding(grid, (1, 0, 1, 1))


def task_table(task: str, rows: list[dict[str, Any]], width: int = 200):
    """One task's leaderboard, best first (see :func:`sort_rows`), for a console ``width`` wide.

    Nothing is cut: the title wraps between words; on consoles narrower than 140 columns the notes
    move below the table, keyed by row number; columns that do not fit are left out in the order
    of ``_BY_WIDTH`` and named in a line under the table (``leaderboard.csv`` has every column);
    on a console too narrow even for the rest, each row folds into lines of ``column value``.
    """
    semantic = set()  # columns with nothing to say for this task (not for want of room)
    if not any(math.isfinite(_num(r.get("stderr_mean"))) for r in rows):
        semantic |= {"±se", "in 3se"}  # only tasks with Monte Carlo rows show standard errors
    if all(str(r.get("device")) == "cpu" for r in rows):
        semantic.add("dev")
    names = [n for n in ("method", "dev", "tier", "max err", "±se", "in 3se", "fails", "median", "±IQR", "per opt",
                         "speed-up", "prepare", "note") if n not in semantic]
    if width < 140:
        names.remove("note")  # notes go below the table, keyed by row number
    every = list(names)
    left_out = []
    table, cells = _build(names, rows)
    for name in _BY_WIDTH:
        if _needed(names, cells) <= width:
            break
        if name in names:
            names.remove(name)
            left_out.append(name)
            table, cells = _build(names, rows)
    if _needed(names, cells) > width:  # too narrow for a table: fold each row into lines, every column kept
        names, left_out = every, []
        table, cells = _build(names, rows)
        table = _folded(names, cells, width)
    parts: list[Any] = [task_title(task, rows), table]
    if left_out:
        parts.append(Text(f"not shown at {width} columns: {', '.join(left_out)} (every column is in "
                          f"{CSV_NAME}; a wider console shows more)", style="dim", overflow="fold"))
    footnotes = [c for c in cells if c["note"]] if "note" not in names else []
    if footnotes:
        grid = Table.grid(padding=(0, 2, 0, 0))  # a hanging indent: wrapped notes stay right of their number
        grid.add_column(justify="right", no_wrap=True)
        grid.add_column(overflow="fold")
        for c in footnotes:
            style = c["style"] or "italic"
            grid.add_row(Text(c["#"], style=style), Text(c["note"], style=style))
        parts.append(Padding(grid, (0, 0, 0, 1)))
    if len(parts) > 2:
        parts.append(Text(""))  # what is under the table ends with a blank line, as the table does
    return Group(*parts)


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
