"""``pricebench history DIR...``: each cell's latency and accuracy across a series of runs.

DIR is a run folder, a suite's folder of runs (``results/ci``) or a baselines folder's file; runs are put
in the order they started. A cell is followed by its name (task, method, label, settings, device), not
its key, so a new method version continues the cell's line; the table says where the version changed.
The plot (PNG) has one line per cell: median latency with its interquartile range over the runs, and
the chosen accuracy metric below it.
"""

from __future__ import annotations

import argparse
import fnmatch
import math
from pathlib import Path
from typing import Any

from bench import atomic
from bench.commands import Command
from bench.compare import CompareError, RunData, identity, load
from bench.store import RUN_NAME

MAX_PLOTTED = 12


def collect(paths: list[str]) -> list[RunData]:
    """Every run under ``paths`` (run folders, folders of runs, baseline files), oldest first."""
    runs: list[RunData] = []
    for text in paths:
        path = Path(text)
        if path.is_dir() and not (path / RUN_NAME).is_file():
            inner = sorted(p for p in path.iterdir() if (p / RUN_NAME).is_file())
            if not inner:
                raise CompareError(f"{path}: holds no run folder (no */{RUN_NAME})")
            runs += [load(p) for p in inner]
        else:
            runs.append(load(path))
    seen, unique = set(), []
    for run in runs:
        if run.meta.get("run_id") not in seen:
            seen.add(run.meta.get("run_id"))
            unique.append(run)
    suites = sorted({str(r.meta.get("suite")) for r in unique})
    if len(suites) > 1:
        raise CompareError(f"these runs are of {len(suites)} suites ({', '.join(suites)}): give runs of one suite")
    return sorted(unique, key=lambda r: (str(r.meta.get("started") or ""), str(r.meta.get("run_id"))))


def series(runs: list[RunData], tasks: list[str], methods: list[str], metric: str, normalise: bool
           ) -> dict[tuple, list[dict[str, Any]]]:
    """cell name -> one point per run that has it: latency (median, IQR), the metric, status, version."""
    out: dict[tuple, list[dict[str, Any]]] = {}
    for i, run in enumerate(runs):
        scale = run.calibration_s if normalise else 1.0
        for row in run.rows:
            if tasks and not any(fnmatch.fnmatchcase(str(row.get("task")), p) for p in tasks):
                continue
            if methods and not any(fnmatch.fnmatchcase(str(row.get("method")), p) for p in methods):
                continue
            if normalise and row.get("device") != "cpu":
                continue
            median, iqr = _float(row.get("latency_median_s")), _float(row.get("latency_iqr_s"))
            out.setdefault(identity(row), []).append({
                "run": i, "run_id": run.meta.get("run_id"), "started": run.meta.get("started"),
                "commit": (run.meta.get("machine") or {}).get("git_commit"), "host": row.get("host"),
                "status": row.get("status"), "version": row.get("method_version"),
                "latency": median / scale, "iqr": iqr / scale, "metric": _float(row.get(metric)),
                "busy": row.get("busy") is True,
            })
    return out


def _float(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _name(key: tuple) -> str:
    task, method, label, settings, device = key
    extra = label or ("" if settings in ("", "{}") else settings)
    return f"{task} · {method}{' ' + extra if extra else ''} · {device}"


def plot(runs: list[RunData], data: dict[tuple, list[dict[str, Any]]], metric: str, normalise: bool,
         path: Path) -> int:
    """Write the history plot; returns how many cells it draws."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = list(data)[:MAX_PLOTTED]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 7.5), sharex=True)
    for key in keys:
        points = data[key]
        x = [p["run"] for p in points]
        y = [p["latency"] for p in points]
        err = [p["iqr"] / 2 if math.isfinite(p["iqr"]) else 0.0 for p in points]
        line = top.errorbar(x, y, yerr=err, marker="o", ms=4, capsize=3, label=_name(key))
        failed = [(p["run"], p["latency"]) for p in points if p["status"] != "ok"]
        if failed:
            top.plot(*zip(*failed), "x", color=line[0].get_color(), ms=9)
        values = [(p["run"], p["metric"]) for p in points if math.isfinite(p["metric"]) and p["metric"] > 0]
        if values:
            bottom.plot(*zip(*values), marker="o", ms=4, color=line[0].get_color())
    from matplotlib.ticker import NullFormatter

    values = [p["latency"] for k in keys for p in data[k] if math.isfinite(p["latency"]) and p["latency"] > 0]
    if values and max(values) / min(values) > 10:  # several decades: log, labelled at powers of ten only
        top.set_yscale("log")
        top.yaxis.set_minor_formatter(NullFormatter())
    top.set_ylabel("latency / calibration workload" if normalise else "median latency per call (s)")
    top.set_title(f"{runs[0].meta.get('suite')}: {len(runs)} runs (bars: median +/- half the interquartile range; x: a failed cell)")
    bottom.set_yscale("log")
    bottom.yaxis.set_minor_formatter(NullFormatter())
    if all(p["metric"] == data[k][0]["metric"] for k in keys for p in data[k]):
        bottom.set_title(f"{metric}: the same in every run", fontsize=9)
    bottom.set_ylabel(metric)
    labels = [f"{i}  {str(r.meta.get('started') or r.meta.get('run_id'))[5:16].replace('T', ' ')}"
              for i, r in enumerate(runs)]
    bottom.set_xticks(range(len(runs)), labels, fontsize=7, rotation=40, ha="right")
    bottom.set_xlabel("run (oldest first)")
    top.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    with atomic.atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return len(keys)


class HistoryCommand(Command):
    name = "history"
    help = "a cell's latency and accuracy across a series of runs (table and plot)"
    description = ("Follow every cell (task, method, settings, device) through the runs under DIR... (run folders or "
                   "a suite's folder of runs, oldest first): a table of median latency, its change against the "
                   "first run and an accuracy metric, and a PNG plot.")

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("dirs", nargs="+", metavar="DIR", help="run folders, suite folders of runs, or baseline files")
        parser.add_argument("--task", action="append", default=[], metavar="PATTERN", help="only these tasks (glob)")
        parser.add_argument("--method", action="append", default=[], metavar="PATTERN",
                            help="only these methods (glob)")
        parser.add_argument("--metric", default="max_abs_error", help="the accuracy column (default max_abs_error)")
        parser.add_argument("--normalise", "--normalize", action="store_true",
                            help="latency as a multiple of each run's calibration workload (CPU cells only)")
        parser.add_argument("--plot", default="results/history.png", metavar="FILE",
                            help="where the plot goes (default: results/history.png)")

    def run(self, args, out, err) -> int:
        from rich.table import Table

        try:
            runs = collect(args.dirs)
            if args.normalise:
                missing = [r.source for r in runs if not r.calibration_s > 0]
                if missing:
                    raise CompareError(f"{missing[0]}: no calibration workload timing; --normalise needs it")
            data = series(runs, args.task, args.method, args.metric, args.normalise)
            if not data:
                raise CompareError("no cell matches --task/--method in these runs" + (
                    " (--normalise follows cpu cells only: the calibration workload is CPU work)"
                    if args.normalise else ""))
            if not any(math.isfinite(p["metric"]) for points in data.values() for p in points):
                raise CompareError(f"--metric {args.metric}: no such numeric column in these runs")
        except CompareError as exc:
            err.print(f"[bold red]error:[/] {exc}", highlight=False)
            return 2
        table = Table(title=f"{runs[0].meta.get('suite')}: {len(runs)} runs, oldest first", title_justify="left")
        table.add_column("cell", overflow="fold", ratio=2, min_width=12)
        table.add_column("run", overflow="fold", min_width=8)
        table.add_column("x calibration" if args.normalise else "latency", justify="right", no_wrap=True)
        table.add_column("vs first", justify="right", no_wrap=True)
        table.add_column(args.metric, justify="right", no_wrap=True)
        table.add_column("note", overflow="fold", ratio=1, min_width=6)
        for key, points in data.items():
            first = points[0]["latency"]
            previous = points[0]
            for j, p in enumerate(points):
                latency = _seconds(p["latency"]) if not args.normalise else f"{p['latency']:.3g}"
                change = p["latency"] / first if first > 0 else math.nan
                notes = []
                if p["status"] != "ok":
                    notes.append(f"[red]{p['status']}[/]")
                if p["version"] != previous["version"]:
                    notes.append(f"[magenta]version {previous['version']} -> {p['version']}[/]")
                if p["host"] != previous["host"]:
                    notes.append(f"[magenta]host {p['host']}[/]")
                if p["busy"]:
                    notes.append("[yellow]busy[/]")
                previous = p
                table.add_row(_name(key) if j == 0 else "", f"{p['run']} {str(p['started'] or p['run_id'])[5:16].replace('T', ' ')}", latency,
                              "" if j == 0 or not math.isfinite(change) else f"x{change:.3f}",
                              f"{p['metric']:.2e}" if math.isfinite(p["metric"]) else "-", ", ".join(notes),
                              end_section=j == len(points) - 1)
        out.print(table)
        target = Path(args.plot)
        try:
            if target.is_dir():
                raise CompareError(f"--plot {target}: is a folder; name a PNG file")
            target.parent.mkdir(parents=True, exist_ok=True)
            drawn = plot(runs, data, args.metric, args.normalise, target)
        except OSError as exc:
            err.print(f"[bold red]error:[/] --plot {target}: cannot write ({exc.strerror or exc})", highlight=False)
            return 2
        except CompareError as exc:
            err.print(f"[bold red]error:[/] {exc}", highlight=False)
            return 2
        more = f" (the first {drawn} of {len(data)} cells; narrow with --task/--method)" if drawn < len(data) else ""
        out.print(f"[green]wrote[/] {target}{more}", highlight=False)
        return 0


def _seconds(value: float) -> str:
    if not math.isfinite(value):
        return "-"
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6)):
        if value >= scale:
            return f"{value / scale:.3g} {unit}"
    return f"{value / 1e-9:.3g} ns"
