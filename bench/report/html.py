"""``pricebench report RUN_DIR``: one self-contained HTML file per run.

The file needs no network and no file beside it: every PNG the run folder holds (the work-precision
plots, the approximators' and any other plots under ``artifacts/``) is inlined as a base64 ``data:``
URI, the style and the small script that sorts the tables are inline, and a Content-Security-Policy
forbids any other source. It holds:

- per task: the leaderboard as a sortable table (click a header; numbers sort as numbers, missing
  values last in either direction), the fastest configuration per accuracy target (``targets.csv``),
  the work-precision plot and the task's artifact plots;
- the no-arbitrage audit (``arb_violations`` / ``arb_max`` of approximate tasks) when present;
- the load notes: every cell flagged busy or noisy, with its load figures and message;
- the run's metadata: suite, run id, status, seed, times, machine (CPU, GPU, host), package
  versions, threads, executor; and the whole ``run.json``.

Every string taken from the run is escaped (:func:`html.escape`). The rows come from ``rows.jsonl``
(the record), with ``speedup``, ``baseline`` and other columns computed when the tables are written
(``break_even``, ...) from ``leaderboard.csv``; a
schema-1 run (only ``leaderboard.csv``) is read from the CSV. The file is written atomically
(:mod:`bench.atomic`) to ``RUN_DIR/report.html`` or ``--out FILE``, and nothing else is written.
"""

from __future__ import annotations

import base64
import csv
import html
import json
import math
import struct
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Callable

from bench import atomic
from bench.commands import Command
from bench.report._common import _num, _settings_text
from bench.report.console import fmt_err, fmt_time, sort_rows
from bench.scoring import tier_label

REPORT_NAME = "report.html"
RUN_NAME = "run.json"
ROWS_NAME = "rows.jsonl"
CSV_NAME = "leaderboard.csv"
TARGETS_NAME = "targets.csv"
ARTIFACTS_DIR = "artifacts"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
DERIVED_COLUMNS = ("speedup", "baseline")  # rows.jsonl may hold a placeholder; leaderboard.csv the value
EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


class ReportError(ValueError):
    """Bad input: a path that is not a readable run folder, or an output path that cannot be used."""


def esc(value: Any) -> str:
    """``value`` as text, escaped for HTML content and (double- or single-quoted) attributes."""
    return html.escape("" if value is None else str(value), quote=True)


def _text(value: Any) -> str:
    """A text field of a row: '' for missing values (None, NaN, an empty CSV cell)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return str(value)


def _flag(value: Any) -> bool:
    return value is True or (isinstance(value, str) and value.strip().lower() == "true") or (
        isinstance(value, (int, float)) and not isinstance(value, bool) and value == 1)


def _sort_value(value: float) -> str:
    """A number as the table script reads it (``Number(...)``): '' for NaN, which sorts last."""
    if math.isnan(value):
        return ""
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    return repr(float(value))


# ---------------------------------------------------------------------------------------------- reading


@dataclass
class Image:
    path: str  # relative to the run folder, '/'-separated
    data: bytes
    width: int
    height: int
    caption: str = ""

    def tag(self) -> str:
        uri = "data:image/png;base64," + base64.b64encode(self.data).decode("ascii")
        size = f' width="{self.width}" height="{self.height}"' if self.width and self.height else ""
        return f'<img src="{uri}" alt="{esc(self.path)}"{size}>'


@dataclass
class Run:
    directory: Path
    meta: dict[str, Any]
    rows: list[dict[str, Any]]
    targets: list[dict[str, str]] | None
    images: dict[str, Image]
    skipped_files: list[str] = field(default_factory=list)  # *.png files that are not PNG images

    def tasks(self) -> list[str]:
        """Task names in the suite's order (run.json), then any only the rows name."""
        names = list((self.meta.get("tasks") or {}) if isinstance(self.meta.get("tasks"), dict) else [])
        for r in self.rows:
            name = _text(r.get("task"))
            if name not in names:
                names.append(name)
        return names


def _read_meta(directory: Path) -> dict[str, Any]:
    path = directory / RUN_NAME
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ReportError(f"{path}: cannot read the run's metadata ({exc})") from None
    if not isinstance(meta, dict):
        raise ReportError(f"{path}: not a run's metadata (expected a JSON object, got {type(meta).__name__})")
    return meta


def _read_csv(path: Path) -> list[dict[str, str]] | None:
    if not path.is_file():
        return None
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            return list(csv.DictReader(fh))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise ReportError(f"{path}: cannot read ({exc})") from None


def _read_rows(directory: Path) -> list[dict[str, Any]]:
    """The run's cells: rows.jsonl (the last line per cell_key wins; a torn last line is skipped),
    with speedup and baseline from leaderboard.csv; leaderboard.csv alone for a schema-1 run."""
    table = _read_csv(directory / CSV_NAME) or []
    path = directory / ROWS_NAME
    if not path.is_file():
        return [dict(r) for r in table]
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ReportError(f"{path}: cannot read ({exc})") from None
    by_key: dict[str, dict[str, Any]] = {}
    for line in lines:
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict):
            by_key[_text(row.get("cell_key")) or f"#{len(by_key)}"] = row
    derived = {r.get("cell_key"): r for r in table if r.get("cell_key")}
    for key, row in by_key.items():
        # columns computed when the tables are written (speed-ups, an approximator's break-even against the
        # classical methods) are in the CSV only
        for name, value in derived.get(key, {}).items():
            if name in DERIVED_COLUMNS or name not in row:
                row[name] = value
    return list(by_key.values())


def _png_size(data: bytes) -> tuple[int, int] | None:
    """Width and height from a PNG's IHDR chunk; None if ``data`` is not a PNG."""
    if len(data) < 24 or not data.startswith(PNG_MAGIC) or data[12:16] != b"IHDR":
        return None
    return struct.unpack(">II", data[16:24])


def _read_images(directory: Path, exclude: Path | None) -> tuple[dict[str, Image], list[str]]:
    """Every ``*.png`` under the run folder (hidden files and folders, e.g. a half-written temporary
    file, left out), keyed by its path relative to the folder."""
    images, skipped = {}, []
    for path in sorted(directory.rglob("*.png")):
        rel = path.relative_to(directory)
        if any(part.startswith(".") for part in rel.parts) or not path.is_file():
            continue
        if exclude is not None and path.resolve() == exclude:
            continue
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ReportError(f"{path}: cannot read ({exc})") from None
        size = _png_size(data)
        if size is None:
            skipped.append(rel.as_posix())
            continue
        images[rel.as_posix()] = Image(rel.as_posix(), data, *size)
    return images, skipped


def check_run_dir(run_dir: str | Path) -> Path:
    """``run_dir`` if it is a folder holding run.json; :class:`ReportError` naming the path otherwise."""
    directory = Path(run_dir)
    if not directory.exists():
        raise ReportError(f"{directory}: no such folder")
    if not directory.is_dir():
        raise ReportError(f"{directory}: not a run folder (a file; give the folder that holds {RUN_NAME})")
    if not (directory / RUN_NAME).is_file():
        try:  # a suite's folder of runs (run ids sort by time): name the newest
            runs = sorted(p.name for p in directory.iterdir() if (p / RUN_NAME).is_file())
        except OSError:
            runs = []
        hint = f"; a folder of runs, the newest is {directory / runs[-1]}" if runs else ""
        raise ReportError(f"{directory}: not a run folder (no {RUN_NAME}){hint}")
    return directory


def load_run(run_dir: str | Path, exclude: Path | None = None) -> Run:
    """Read a run folder; :class:`ReportError` naming the path for anything that is not one."""
    directory = check_run_dir(run_dir)
    meta = _read_meta(directory)
    rows = _read_rows(directory)
    targets = _read_csv(directory / TARGETS_NAME)
    images, skipped = _read_images(directory, exclude)
    return Run(directory, meta, rows, targets, images, skipped)


# ---------------------------------------------------------------------------------------------- tables


@dataclass
class Column:
    head: str
    value: Callable[[dict[str, Any]], Any]  # a float for numeric columns, else text
    show: Callable[[dict[str, Any]], str] | None = None  # the text shown; default: value as text
    numeric: bool = False
    optional: bool = False  # left out when no row has a value
    tip: str = ""
    css: str = ""

    def has_value(self, row: dict[str, Any]) -> bool:
        v = self.value(row)
        return (not math.isnan(v)) if self.numeric else bool(v)


def _table(columns: list[Column], rows: list[dict[str, Any]], css: str = "",
           row_class: Callable[[dict[str, Any]], str] | None = None, caption: str = "") -> str:
    """A sortable table: each cell carries ``data-sort`` (a number, or '' for none), headers sort."""
    columns = [c for c in columns if not c.optional or any(c.has_value(r) for r in rows)]
    out = [f'<table class="sortable {esc(css)}">']
    if caption:
        out.append(f"<caption>{esc(caption)}</caption>")
    out.append("<thead><tr>")
    for c in columns:
        title = f' title="{esc(c.tip)}"' if c.tip else ""
        out.append(f'<th scope="col" tabindex="0" data-type="{"num" if c.numeric else "text"}"{title}>'
                   f"{esc(c.head)}</th>")
    out.append("</tr></thead><tbody>")
    for r in rows:
        cls = row_class(r) if row_class else ""
        out.append(f'<tr class="{esc(cls)}">' if cls else "<tr>")
        for c in columns:
            value = c.value(r)
            shown = c.show(r) if c.show else ("" if value is None else str(value))
            key = _sort_value(value) if c.numeric else _text(value)
            klass = " ".join(filter(None, ["num" if c.numeric else "", c.css]))
            out.append(f'<td data-sort="{esc(key)}"' + (f' class="{klass}"' if klass else "") + f">{esc(shown)}</td>")
        out.append("</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def _scrolling(table: str) -> str:
    """A wide table scrolls sideways on its own instead of widening the page."""
    return f'<div class="scroll">{table}</div>'


def _field(name: str) -> Callable[[dict[str, Any]], float]:
    return lambda r: _num(r.get(name))


def _fmt_count(value: float) -> str:
    if math.isnan(value):
        return "-"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return f"{value:,.0f}" if value == int(value) else f"{value:.3g}"


def _fmt_general(value: float) -> str:
    if math.isnan(value):
        return "-"
    return "inf" if value == math.inf else f"{value:.3g}"


def _settings_of(r: dict[str, Any]) -> str:
    settings = _settings_text(r.get("settings")) if _text(r.get("settings")) else ""
    label = _text(r.get("label"))
    return f"{label}: {settings}" if label and settings else (label or settings)


def _tier(r: dict[str, Any]) -> float:
    return _num(r.get("tier")) if _text(r.get("status")) in ("ok", "failed") else math.nan


def _speedup_text(r: dict[str, Any]) -> str:
    from bench.report.console import fmt_speedup  # one way to write a speed-up, console and HTML alike

    return fmt_speedup(r.get("speedup"))


def _fmt_share(value: float) -> str:
    """A fraction as a percentage."""
    return "-" if not math.isfinite(value) else f"{100 * value:.3g}%"


def _fmt_pct(value: float) -> str:
    """A value already in percent."""
    return "-" if not math.isfinite(value) else f"{value:.3g}%"


def _number(head: str, name: str, fmt: Callable[[float], str], tip: str = "", optional: bool = True,
            scale: float = 1.0) -> Column:
    """A numeric column of the row's field ``name`` (times ``scale``), shown through ``fmt``."""
    def value(r: dict[str, Any]) -> float:
        return _num(r.get(name)) * scale

    return Column(head, value, lambda r: fmt(value(r)), numeric=True, optional=optional, tip=tip)


def leaderboard_columns(rows: list[dict[str, Any]]) -> list[Column]:
    """The leaderboard's columns; optional ones only where some row of the task has a value."""
    columns = [
        Column("#", lambda r: float(r["_rank"]), lambda r: str(r["_rank"]), numeric=True,
               tip="rank: accuracy tier, then failures, then median latency; broken cells last"),
        Column("method", lambda r: _text(r.get("method")), css="name"),
        Column("settings", _settings_of, css="settings"),
        Column("device", lambda r: _text(r.get("device"))),
        Column("status", lambda r: _text(r.get("status"))),
        Column("tier", _tier, lambda r: "-" if math.isnan(_tier(r)) else tier_label(_tier(r)), numeric=True,
               tip="accuracy tier: the smallest power of 1e-2 bounding the max error"),
        _number("max error", "max_abs_error", fmt_err, optional=False),
        _number("max err S=100", "max_err_s100", fmt_err, "max abs error of prices scaled to S = 100"),
        _number("MAE", "mae", fmt_err),
        _number("RMSE", "rmse", fmt_err),
        _number("±se", "stderr_mean", fmt_err, "mean standard error of a Monte Carlo estimate"),
        _number("in 3se", "within_3se", _fmt_share, "share of points whose reference lies within 3 standard errors"),
        _number("fails", "failures", _fmt_count, "points not priced (NaN, inf, not converged)", optional=False),
        _number("iterations", "iterations_mean", _fmt_general, "root finders: mean iterations"),
        _number("median", "latency_median_s", fmt_time, "median latency of one batch call", optional=False),
        _number("±IQR", "latency_iqr_s", fmt_time, "interquartile range of the latency", optional=False),
        _number("spread", "spread_pct", _fmt_pct, "IQR / median"),
        _number("per option", "ns_per_option", fmt_time, "median latency per option", optional=False, scale=1e-9),
        Column("speed-up", _field("speedup"), _speedup_text, numeric=True, optional=True,
               tip="the baseline's CPU median latency (same host) / this cell's"),
        _number("prepare", "prepare_s", fmt_time, "untimed set-up"),
        _number("once", "once_s", fmt_time, "timing policy once: the one timed call"),
        _number("fit", "fit_s", fmt_time, "approximators: training time"),
        _number("labelling", "label_s", fmt_time, "approximators: labelling the training and validation sets"),
        _number("n train", "n_train", _fmt_count, "approximators: training points"),
        _number("narrow MAE", "narrow_mae", fmt_err, "approximators: MAE on the narrow test set"),
        _number("within 2sd", "within_2sd", _fmt_share, "share of test points within two predictive std devs"),
        _number("break-even", "break_even", _fmt_count, "prices to serve before labelling and fitting pay back"),
        _number("break-even classical", "break_even_classical", _fmt_count,
                "the same against the fastest classical method of the accuracy tier"),
    ]
    if len({_text(r.get("host")) for r in rows}) > 1:
        columns.append(Column("host", lambda r: _text(r.get("host"))))
    columns.append(Column("note", lambda r: _text(r.get("message")), css="note"))
    return columns


def _row_class(r: dict[str, Any]) -> str:
    status = _text(r.get("status")) or "unknown"
    return f"status-{status}" + (" busy" if _flag(r.get("busy")) else "")


def _targets_html(task: str, kind: str, targets: list[dict[str, str]]) -> str:
    """The fastest configuration per method and device within each accuracy target (targets.csv)."""
    mine = [t for t in targets if t.get("task") == task]
    if not mine:
        return ""
    levels = []
    for t in mine:
        if t.get("target") not in levels:
            levels.append(t.get("target"))
    pairs = []
    for t in mine:
        if (t.get("method"), t.get("device")) not in pairs:
            pairs.append((t.get("method"), t.get("device")))
    lookup = {(t.get("method"), t.get("device"), t.get("target")): t for t in mine}
    rows = [{"method": m, "device": d, **{f"t{i}": lookup.get((m, d, level)) for i, level in enumerate(levels)}}
            for m, d in pairs]

    def cell(i: int) -> Column:
        def value(r):
            t = r[f"t{i}"]
            return _num(t.get("latency_median_s")) if t else math.nan

        def show(r):
            t = r[f"t{i}"]
            if not t or (not _text(t.get("settings")) and not math.isfinite(_num(t.get("latency_median_s")))):
                return "-"
            settings = _settings_text(t.get("settings")) or "defaults"
            return f"{fmt_time(t.get('latency_median_s'))} ({settings}; error {fmt_err(t.get('error'))})"

        level = _num(levels[i])
        head = f"<= {level:.0e}" if math.isfinite(level) else f"<= {levels[i]}"
        return Column(head, value, show, numeric=True, tip="the fastest setting whose max error meets the target")

    columns = [Column("method", lambda r: _text(r["method"]), css="name"),
               Column("device", lambda r: _text(r["device"]))] + [cell(i) for i in range(len(levels))]
    scaled = "; prices scaled to S = 100" if kind == "price" else ""
    return ("<h3>Fastest setting within each accuracy target</h3>"
            + _table(columns, rows, "targets", caption=f"{task}: targets.csv (max error{scaled})"))


# ---------------------------------------------------------------------------------------------- sections


def _figure(image: Image, caption: str) -> str:
    return f'<figure>{image.tag()}<figcaption>{esc(caption)}</figcaption></figure>'


def _task_info(run: Run, task: str) -> dict[str, Any]:
    """What run.json says about a task (kind, n, reference, its plot, ...); {} if nothing."""
    tasks = run.meta.get("tasks")
    info = tasks.get(task) if isinstance(tasks, dict) else None
    return info if isinstance(info, dict) else {}


def _task_images(run: Run, task: str, rows: list[dict[str, Any]], claimed: set[str]) -> tuple[list[str], list[str]]:
    """The task's work-precision plot and its artifact plots (figures), and its other artifact files."""
    safe_name = atomic.safe_name
    figures, files = [], []
    plot = _task_info(run, task).get("plot")
    plot = plot if isinstance(plot, str) else None
    for name in filter(None, [plot, f"{safe_name(task)}.png"]):
        if name in run.images and name not in claimed:
            claimed.add(name)
            figures.append(_figure(run.images[name], f"work-precision plot: {name}"))
    owners: dict[str, str] = {}
    for r in rows:
        for path in _text(r.get("artifacts")).split(";"):
            path = path.strip()
            if path:
                settings = _settings_of(r)
                owners[path] = f"{_text(r.get('method'))}" + (f" ({settings})" if settings else "") + \
                               f" on {_text(r.get('device'))}"
    prefix = f"{ARTIFACTS_DIR}/{safe_name(task)}/"
    candidates = [p for p in run.images if p.startswith(prefix) or p in owners]
    for name in sorted(set(candidates)):
        if name not in claimed:
            claimed.add(name)
            figures.append(_figure(run.images[name], name + (f": {owners[name]}" if name in owners else "")))
    folder = run.directory / ARTIFACTS_DIR / safe_name(task)
    if folder.is_dir():
        files = sorted(p.relative_to(run.directory).as_posix() for p in folder.rglob("*")
                       if p.is_file() and not p.name.startswith(".") and p.suffix.lower() != ".png")
    return figures, files


def _task_section(run: Run, index: int, task: str, rows: list[dict[str, Any]], claimed: set[str]) -> str:
    info = _task_info(run, task)
    first = rows[0] if rows else {}
    kind = _text(first.get("kind")) or _text(info.get("kind"))
    bits = [kind, _text(first.get("model")), _text(first.get("product")),
            f"n={_text(first.get('n')) or _text(info.get('n'))}"]
    out = [f'<section class="task" id="task-{index}"><h2>{esc(task)}</h2>',
           f'<p class="sub">{esc(" · ".join(b for b in bits if b and b != "n="))}</p>']
    ref = _text(info.get("reference"))
    if ref:
        settings = info.get("reference_settings")
        settings_text = _settings_text(settings) if settings else ""
        ref_s = _num(info.get("reference_s"))
        out.append(f'<p class="sub">reference: {esc(ref)}' + (f" ({esc(settings_text)})" if settings_text else "")
                   + (f", computed in {esc(fmt_time(ref_s))}" if math.isfinite(ref_s) and ref_s > 0 else "")
                   + (f" · baseline: {esc(_text(first.get('baseline')))}" if _text(first.get("baseline")) else "")
                   + (f" · method seed {esc(info.get('method_seed'))}" if info.get("method_seed") is not None else "")
                   + "</p>")
    if rows:
        ranked = [dict(r, _rank=i) for i, r in enumerate(sort_rows(rows), 1)]
        out.append(_scrolling(_table(
            leaderboard_columns(ranked), ranked, "leaderboard", _row_class,
            caption=f"{task}: leaderboard, best first ({len(ranked)} cells); click a header to sort")))
    else:
        out.append('<p class="warn">no cell of this task finished</p>')
    if run.targets:
        out.append(_targets_html(task, kind, run.targets))
    figures, files = _task_images(run, task, rows, claimed)
    if figures:
        out.append('<div class="figures">' + "".join(figures) + "</div>")
    if files:
        names = ", ".join(f"<code>{esc(f)}</code>" for f in files)
        out.append(f'<p class="sub">other artifacts beside the run: {names}</p>')
    out.append("</section>")
    return "".join(out)


def _audit_section(run: Run) -> str:
    rows = [r for r in run.rows if math.isfinite(_num(r.get("arb_violations")))]
    if not rows:
        return ""

    def detail(r):
        parts = [p.strip() for p in _text(r.get("message")).split(";")]
        return "; ".join(p for p in parts if "arbitrage" in p)

    columns = [Column("task", lambda r: _text(r.get("task")), css="name"),
               Column("method", lambda r: _text(r.get("method")), css="name"),
               Column("settings", _settings_of, css="settings"),
               Column("device", lambda r: _text(r.get("device"))),
               _number("violations", "arb_violations", _fmt_count,
                       "points of the 41-strike x 11-maturity audit grid that break a condition", optional=False),
               _number("largest", "arb_max", fmt_err, "size of the largest violation", optional=False),
               Column("which conditions", detail, css="note")]
    return ('<section id="audit"><h2>No-arbitrage audit</h2><p class="sub">Approximators\' prices on a 41-strike x '
            "11-maturity grid (other parameters at mid-range): monotone and convex in strike, monotone in maturity "
            "where that must hold, within the price bounds.</p>"
            + _scrolling(_table(columns, rows, "audit", caption="arb_violations and arb_max per cell")) + "</section>")


def _load_flags(r: dict[str, Any]) -> list[str]:
    message = _text(r.get("message"))
    flags = []
    if _flag(r.get("busy")) or "busy machine" in message:
        flags.append("busy")
    if "noisy timing" in message:
        flags.append("noisy")
    return flags


def _load_section(run: Run) -> str:
    rows = [r for r in run.rows if _load_flags(r)]
    head = '<section id="load"><h2>Load notes</h2>'
    if not rows:
        return head + ('<p class="sub">No cell was flagged busy (other processes using the CPUs it needed) or '
                       "noisy (timing spread over 10% of the median).</p></section>")
    columns = [Column("task", lambda r: _text(r.get("task")), css="name"),
               Column("method", lambda r: _text(r.get("method")), css="name"),
               Column("settings", _settings_of, css="settings"),
               Column("device", lambda r: _text(r.get("device"))),
               Column("flag", lambda r: ", ".join(_load_flags(r))),
               _number("load 1m", "load_1m", _fmt_general, "1-minute load average", optional=False),
               _number("others' CPUs", "others_cpu", _fmt_general,
                       "CPUs other processes kept busy while the cell was timed", optional=False),
               _number("CPU share", "cpu_share", _fmt_general, "the cell's CPU time per second of wall time",
                       optional=False),
               _number("threads", "threads", _fmt_count, "threads the cell ran with"),
               _number("spread", "spread_pct", _fmt_pct, "IQR / median"),
               Column("message", lambda r: _text(r.get("message")), css="note")]
    return (head + f'<p class="sub">{len(rows)} of {len(run.rows)} cells were timed on a busy machine or with a '
            "noisy spread: treat their timings as suspect and re-run them.</p>"
            + _scrolling(_table(columns, rows, "load", caption="cells flagged busy or noisy")) + "</section>")


def _kv_table(pairs: list[tuple[str, Any]], css: str = "meta") -> str:
    body = "".join(f'<tr><th scope="row">{esc(k)}</th><td>{esc(v)}</td></tr>' for k, v in pairs
                   if v not in (None, ""))
    return f'<table class="{esc(css)}"><tbody>{body}</tbody></table>' if body else ""


def _duration(meta: dict[str, Any]) -> str:
    try:
        started = datetime.fromisoformat(str(meta["started"]))
        finished = datetime.fromisoformat(str(meta["finished"]))
    except (KeyError, TypeError, ValueError):
        return ""
    return f"{(finished - started).total_seconds():.0f} s"


def _json_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, (dict, list)):
        return json.dumps(value, default=str)
    return str(value)


def _run_section(run: Run) -> str:
    meta = run.meta
    executor = meta.get("executor")
    if isinstance(executor, dict):
        options = {k: v for k, v in executor.items() if k != "name" and v not in (None, "", {}, [])}
        executor = _text(executor.get("name")) + (f" ({_json_text(options)})" if options else "")
    planned = meta.get("cells_planned")
    cells = f"{len(run.rows)}" + (f" of {planned} planned" if planned is not None else "")
    pairs = [("suite", meta.get("suite")), ("description", meta.get("suite_description")),
             ("run id", meta.get("run_id")), ("status", meta.get("status")), ("cells", cells),
             ("seed", meta.get("seed")), ("started", meta.get("started")), ("finished", meta.get("finished")),
             ("duration", _duration(meta)), ("threads per cell", meta.get("threads")), ("executor", executor),
             ("suite file", meta.get("suite_path")), ("suite hash", meta.get("suite_hash")),
             ("filters", _json_text(meta.get("filters"))), ("cache", meta.get("cache_dir")),
             ("schema version", meta.get("schema_version"))]
    return '<section id="run"><h2>Run</h2>' + _kv_table([(k, _json_text(v)) for k, v in pairs]) + "</section>"


def _machine_section(run: Run) -> str:
    machine = run.meta.get("machine")
    machine = machine if isinstance(machine, dict) else {}
    hosts = sorted({_text(r.get("host")) for r in run.rows} - {""})
    pairs = [("CPU", machine.get("cpu")), ("GPU", machine.get("gpu") or "none"), ("host", machine.get("host")),
             ("hosts the cells ran on", ", ".join(hosts) if hosts and hosts != [machine.get("host")] else ""),
             ("python", machine.get("python")), ("platform", machine.get("platform")),
             ("git commit", machine.get("git_commit"))]
    out = ['<section id="machine"><h2>Machine</h2>', _kv_table([(k, _json_text(v)) for k, v in pairs])]
    packages = machine.get("packages")
    if isinstance(packages, dict) and packages:
        out.append("<h3>Package versions</h3>" + _kv_table([(k, _json_text(v)) for k, v in packages.items()],
                                                          "meta packages"))
    plugins = run.meta.get("plugins") or machine.get("plugins")
    if isinstance(plugins, dict) and plugins:
        out.append("<h3>Plugins</h3>" + _kv_table([(k, _json_text(v)) for k, v in plugins.items()], "meta packages"))
    elif isinstance(plugins, list) and plugins:
        out.append("<h3>Plugins</h3>" + _kv_table([(str(i + 1), _json_text(v)) for i, v in enumerate(plugins)],
                                                  "meta packages"))
    threads = machine.get("threads")
    if isinstance(threads, dict) and threads:
        env = threads.get("env") if isinstance(threads.get("env"), dict) else {}
        pairs = [("CPUs", threads.get("cpu_count")), ("torch threads", threads.get("torch_threads")),
                 ("numba threads", threads.get("numba_threads"))]
        pairs += [(k, v) for k, v in env.items() if v is not None]
        pairs += [(k, _json_text(v)) for k, v in threads.items()
                  if k not in ("cpu_count", "torch_threads", "numba_threads", "env", "threadpools")]
        out.append("<h3>Threads</h3>" + _kv_table([(k, _json_text(v)) for k, v in pairs]))
        pools = threads.get("threadpools")
        if isinstance(pools, list) and pools and all(isinstance(p, dict) for p in pools):
            columns = [Column(name.replace("_", " "), (lambda n: lambda r: _text(r.get(n)))(name), optional=True)
                       for name in ("user_api", "internal_api", "num_threads", "version", "filepath")]
            out.append(_table(columns, pools, "pools", caption="thread pools (threadpoolctl) when the run started"))
    out.append("</section>")
    return "".join(out)


_STYLE = """
:root{--fg:#1d2330;--muted:#5b6577;--line:#d9dee7;--head:#eef1f6;--warn:#9a5b00;--bad:#b3261e}
*{box-sizing:border-box}
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:var(--fg);margin:0 auto;
 padding:16px 24px 48px;max-width:1600px}
h1{font-size:22px;margin:8px 0 4px}h2{font-size:18px;margin:28px 0 4px;border-bottom:1px solid var(--line)}
h3{font-size:15px;margin:16px 0 4px}
.sub{color:var(--muted);margin:2px 0 8px}.warn{color:var(--warn);font-weight:600}
nav ul{margin:4px 0;padding-left:18px;columns:3 200px}
table{border-collapse:collapse;margin:8px 0 12px;font-size:13px}
caption{text-align:left;color:var(--muted);padding:2px 0 4px;caption-side:top}
th,td{border:1px solid var(--line);padding:3px 7px;vertical-align:top}
thead th{background:var(--head);position:sticky;top:0;white-space:nowrap}
table.sortable thead th{cursor:pointer;user-select:none}
table.sortable thead th::after{content:" \\2195";color:#9aa3b2;font-size:11px}
table.sortable thead th[aria-sort=ascending]::after{content:" \\25B2";color:var(--fg)}
table.sortable thead th[aria-sort=descending]::after{content:" \\25BC";color:var(--fg)}
td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
.scroll{overflow-x:auto;max-width:100%}
td.settings{min-width:90px;max-width:300px;overflow-wrap:break-word}
td.note{min-width:160px;max-width:420px;overflow-wrap:break-word;color:var(--muted)}
tr.status-failed td{background:#fff8e6}tr.status-error td,tr.status-timeout td,tr.status-crashed td{background:#fdecea}
tr.status-skipped td{color:#8a93a3}tr.busy td.note{color:var(--warn)}
table.meta th{text-align:left;background:var(--head);font-weight:600;white-space:nowrap}
table.meta td{max-width:900px;overflow-wrap:anywhere}
.figures{display:flex;flex-wrap:wrap;gap:12px}
figure{margin:0;border:1px solid var(--line);padding:6px;max-width:100%}
figure img{display:block;max-width:100%;height:auto}
figcaption{color:var(--muted);font-size:12px;margin-top:4px;overflow-wrap:anywhere}
pre{background:#f6f8fa;border:1px solid var(--line);padding:8px;overflow:auto;font-size:12px}
code{font-size:12px}
"""

# sorts a table by a clicked header (numbers as numbers, empty cells last in either direction; ties keep
# their previous order) and, once everything loaded, records on <body> whether every table has rows and
# every image decoded (data-tables-ok, data-images-ok), for a headless browser to read
_SCRIPT = """
(function(){
  "use strict";
  function key(row, i, numeric){
    var cell = row.cells[i], raw = cell ? cell.getAttribute("data-sort") : "";
    if (raw === null) raw = cell.textContent.trim();
    if (raw === "") return null;
    if (numeric){ var v = Number(raw); return isNaN(v) ? null : v; }
    return raw;
  }
  function sortBy(th){
    var table = th.closest("table"), body = table.tBodies[0];
    if (!body) return;
    var i = Array.prototype.indexOf.call(th.parentNode.children, th);
    var numeric = th.getAttribute("data-type") === "num";
    var dir = th.getAttribute("aria-sort") === "ascending" ? -1 : 1;
    var rows = Array.prototype.slice.call(body.rows).map(function(r, n){ return [key(r, i, numeric), n, r]; });
    rows.sort(function(a, b){
      if (a[0] === null || b[0] === null){
        if (a[0] === null && b[0] === null) return a[1] - b[1];
        return a[0] === null ? 1 : -1;
      }
      var c = numeric ? (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0)
                      : a[0].localeCompare(b[0], undefined, {numeric: true, sensitivity: "base"});
      return c !== 0 ? dir * c : a[1] - b[1];
    });
    Array.prototype.forEach.call(th.parentNode.children, function(h){ h.removeAttribute("aria-sort"); });
    th.setAttribute("aria-sort", dir === 1 ? "ascending" : "descending");
    rows.forEach(function(r){ body.appendChild(r[2]); });
  }
  document.querySelectorAll("table.sortable thead th").forEach(function(th){
    th.addEventListener("click", function(){ sortBy(th); });
    th.addEventListener("keydown", function(e){
      if (e.key === "Enter" || e.key === " "){ e.preventDefault(); sortBy(th); }
    });
  });
  window.addEventListener("load", function(){
    var tables = document.querySelectorAll("table"), images = document.images, t = 0, m = 0, k;
    for (k = 0; k < tables.length; k++){
      var b = tables[k].tBodies[0];
      if (b && b.rows.length > 0 && tables[k].getBoundingClientRect().height > 0) t++;
    }
    for (k = 0; k < images.length; k++){
      if (images[k].complete && images[k].naturalWidth > 0) m++;
    }
    var body = document.body;
    body.setAttribute("data-tables-rendered", String(t));
    body.setAttribute("data-images-loaded", String(m));
    body.setAttribute("data-tables-ok", String(t === tables.length));
    body.setAttribute("data-images-ok", String(m === images.length));
  });
})();
"""

_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'"


@dataclass
class Summary:
    tasks: int
    tables: int
    images: int
    skipped_files: list[str]


def render(run: Run) -> tuple[str, Summary]:
    """The report's HTML and what it holds."""
    meta = run.meta
    by_task: dict[str, list[dict[str, Any]]] = {name: [] for name in run.tasks()}
    for r in run.rows:
        by_task[_text(r.get("task"))].append(r)
    claimed: set[str] = set()
    sections = [_task_section(run, i, task, rows, claimed) for i, (task, rows) in enumerate(by_task.items(), 1)]
    others = [name for name in run.images if name not in claimed]
    title = f"pricebench · {_text(meta.get('suite')) or run.directory.name} · run {_text(meta.get('run_id'))}"
    status = _text(meta.get("status")) or ("finished" if meta.get("finished") else "unfinished")
    head = [f"<h1>{esc(title)}</h1>"]
    if _text(meta.get("suite_description")):
        head.append(f'<p class="sub">{esc(meta["suite_description"])}</p>')
    machine = meta.get("machine") if isinstance(meta.get("machine"), dict) else {}
    head.append('<p class="sub">' + esc(" · ".join(filter(None, [
        f"status {status}", f"seed {_text(meta.get('seed'))}" if meta.get("seed") is not None else "",
        _text(meta.get("started")), _text(machine.get("cpu")), _text(machine.get("gpu")),
        f"host {_text(machine.get('host'))}" if machine.get("host") else ""]))) + "</p>")
    if status != "finished":
        planned = meta.get("cells_planned")
        head.append(f'<p class="warn">This run did not finish ({esc(status)}): {len(run.rows)}'
                    + (f" of {esc(planned)}" if planned is not None else "") + " cells saved.</p>")
    nav = ['<nav><ul><li><a href="#run">Run</a></li>']
    nav += [f'<li><a href="#task-{i}">{esc(task)}</a></li>' for i, task in enumerate(by_task, 1)]
    audit = _audit_section(run)
    if audit:
        nav.append('<li><a href="#audit">No-arbitrage audit</a></li>')
    nav.append('<li><a href="#load">Load notes</a></li><li><a href="#machine">Machine</a></li>')
    if others or run.skipped_files:
        nav.append('<li><a href="#other-images">Other images</a></li>')
    nav.append('<li><a href="#run-json">run.json</a></li></ul></nav>')
    body = head + nav + [_run_section(run)] + sections + [audit, _load_section(run), _machine_section(run)]
    if others or run.skipped_files:
        body.append('<section id="other-images"><h2>Other images</h2>')
        if others:
            body.append('<div class="figures">' + "".join(_figure(run.images[n], n) for n in others) + "</div>")
        if run.skipped_files:
            body.append('<p class="warn">not PNG images, left out: '
                        + ", ".join(f"<code>{esc(n)}</code>" for n in run.skipped_files) + "</p>")
        body.append("</section>")
    body.append('<section id="run-json"><h2>run.json</h2><details><summary>the run\'s metadata as stored</summary>'
                f"<pre>{esc(json.dumps(meta, indent=2, default=str))}</pre></details></section>")
    body.append(f'<footer class="sub">written by pricebench report from {esc(run.directory)}; '
                "self-contained: images are inlined, nothing is fetched.</footer>")
    content = "\n".join(body)
    tables = content.count("<table")  # every string from the run is escaped: these are our tables
    page = ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{esc(title)}</title><style>{_STYLE}</style></head>\n"
            f'<body data-tables="{tables}" data-images="{len(run.images)}">\n'
            + content + f"\n<script>{_SCRIPT}</script>\n</body></html>\n")
    return page, Summary(len(by_task), tables, len(run.images), run.skipped_files)


def _output_path(run_dir: Path, out: str | Path | None) -> Path:
    if out is None:
        return run_dir / REPORT_NAME
    path = Path(out)
    if path.is_dir():
        raise ReportError(f"{path}: --out must name a file, and this is a folder")
    if not path.parent.is_dir():
        raise ReportError(f"{path}: cannot write here: the folder {path.parent} does not exist")
    return path


def write_report(run_dir: str | Path, out: str | Path | None = None) -> tuple[Path, Summary]:
    """Read the run, build the page, then write it atomically: nothing is written on bad input."""
    run_dir = check_run_dir(run_dir)  # the run folder is checked before the output path
    path = _output_path(run_dir, out)
    run = load_run(run_dir, exclude=path.resolve())
    page, summary = render(run)
    atomic.write_text(path, page)
    return path, summary


class ReportCommand(Command):
    name = "report"
    help = "write a run's self-contained HTML report"
    description = ("Write one self-contained HTML file for a run folder: the leaderboards as sortable tables, the "
                   "fastest setting per accuracy target, every plot the run saved (inlined), the no-arbitrage "
                   "audit, load notes and the run's metadata. Default: RUN_DIR/report.html.")

    def add_arguments(self, parser) -> None:
        parser.add_argument("run_dir", metavar="RUN_DIR", help="a run folder (results/<suite>/<run-id>)")
        parser.add_argument("--out", metavar="FILE", help="where to write the report (default: RUN_DIR/report.html)")

    def run(self, args, out, err) -> int:
        from rich.markup import escape

        try:
            path, summary = write_report(args.run_dir, args.out)
        except ReportError as exc:
            err.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False)
            return EXIT_USAGE
        except OSError as exc:
            err.print(f"[bold red]error:[/] cannot write the report: {escape(str(exc))}", highlight=False)
            return EXIT_FAILURE
        size = path.stat().st_size
        out.print(f"[green]wrote[/] {escape(str(path))} ({summary.tasks} tasks, {summary.tables} tables, "
                  f"{summary.images} images, {size / 1024:.0f} KiB)", highlight=False, soft_wrap=True)
        for name in summary.skipped_files:
            err.print(f"[yellow]warning:[/] {escape(name)}: not a PNG image, left out of the report", highlight=False)
        return EXIT_OK
