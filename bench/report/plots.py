"""Figures (matplotlib, Agg backend, imported only when a figure is drawn): the work-precision
plot of a task, and :func:`save_figure`, the one way a figure is written (atomically, through
:mod:`bench.atomic`).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from bench import atomic, scoring
from bench.report._common import _num, _settings_dict


def plot_work_precision(path: Path, task: str, rows: list[dict[str, Any]]) -> bool:
    """Error against median latency, log-log, one line per method and device over its
    sweep, the Pareto front (nothing both faster and more accurate) drawn over them.

    Returns False (and writes nothing) when no cell has both an error and a time.
    """
    fig = work_precision_figure(task, rows)
    if fig is None:
        return False
    save_figure(fig, path)
    return True


def work_precision_figure(task: str, rows: list[dict[str, Any]]):
    """The work-precision figure (a matplotlib Figure), or None when no cell has both an error and a time.

    Every marker is explained in the legend: filled (every point priced) or hollow (some points failed:
    the error covers the rest); a sweep of more than one setting as markers without a line; exact
    agreement (error 0) in a band at 1e-16; the dotted accuracy targets, labelled; the Pareto front,
    or the one cell that dominates all others.
    """
    points = [(r, _num(r.get("latency_median_s")), scoring._err(r)) for r in rows
              if r.get("status") in ("ok", "failed")]
    points = [(r, t, e) for r, t, e in points if math.isfinite(t) and t > 0 and math.isfinite(e)]
    if not points:
        return None
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
    grid_sweeps = set()
    for key, pts in grouped.items():
        keys = sorted({k for p in pts for k in p[2]})
        varying = [k for k in keys if len({json.dumps(p[2].get(k)) for p in pts}) > 1]
        if len(varying) > 1:
            grid_sweeps.add(key)  # e.g. fd's nx x nt: a line through it in time order would zigzag
        varying = varying or keys
        lines[key] = [(t, e, ", ".join(f"{k}={d[k]}" for k in varying if k in d), c) for t, e, d, c in pts]
    hollow = False
    for (method, tag, device), pts in sorted(lines.items()):
        pts.sort()
        label = method + (f": {tag}" if tag else "") + ("" if device == "cpu" else f" ({device})")
        grid = (method, tag, device) in grid_sweeps
        (line,) = ax.plot([p[0] for p in pts], [p[1] for p in pts],
                          linestyle="none" if grid else ("-" if device == "cpu" else "--"),
                          marker="o" if grid else None, markersize=4, linewidth=1.2, alpha=0.85,
                          label=label + (" (a grid of settings: points, no line)" if grid else ""))
        color = line.get_color()
        for t, e, text, complete in pts:
            # cells where some points failed are drawn hollow: their error covers only the rest
            ax.plot([t], [e], marker="o", markersize=4, color=color,
                    markerfacecolor=color if complete else "none")
            hollow |= not complete
            if len(pts) <= 12:  # name each point of a sweep by its settings
                ax.annotate(text, (t, e), fontsize=6, color=color, xytext=(3, 3), textcoords="offset points")
    from matplotlib.lines import Line2D

    explained = []
    if hollow:
        explained.append(Line2D([], [], color="grey", marker="o", markerfacecolor="none", linestyle="none",
                                label="hollow: some points failed (error over the others)"))
    if any(e == 0 for _, _, e in points):
        ax.axhspan(floor / 3, floor * 3, color="grey", alpha=0.15, zorder=0)
        explained.append(Line2D([], [], color="grey", alpha=0.4, linewidth=6,
                                label="error 0 (exact agreement), drawn at 1e-16"))
    # the Pareto front over complete cells: nothing else is both faster and more accurate
    front, best = [], math.inf
    complete_points = sorted((t, max(e, floor)) for r, t, e in points
                             if r.get("status") == "ok" and not _num(r.get("failures")))
    for t, e in complete_points:
        if e < best:
            front.append((t, e))
            best = e
    if len(front) > 1:
        ax.step([p[0] for p in front], [p[1] for p in front], where="post", color="black", linewidth=2.5,
                alpha=0.35, label="Pareto front (nothing faster and more accurate)", zorder=0)
    elif front:  # one cell is both the fastest and the most accurate: a front of one point
        ax.plot(*front[0], marker="o", markersize=11, markerfacecolor="none", markeredgecolor="black",
                alpha=0.5, linestyle="none", label="dominates every other cell", zorder=0)
    # each accuracy target: a labelled dotted line, and a star on the fastest configuration meeting it
    stars: dict[tuple[float, float], tuple[str, list[str]]] = {}
    for target in scoring.TARGETS if price_task else ():
        ax.axhline(target, color="grey", linewidth=0.6, linestyle=":")
        ax.annotate(f"target {target:.0e}", (1.0, target), xycoords=("axes fraction", "data"), fontsize=6,
                    color="grey", ha="right", va="bottom")
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
    from matplotlib.ticker import NullFormatter

    for axis, (lo, hi) in ((ax.xaxis, ax.get_xlim()), (ax.yaxis, ax.get_ylim())):
        if lo > 0 and hi / lo >= 10:  # a decade or more has labelled major ticks: minor labels only overlap
            axis.set_minor_formatter(NullFormatter())
    if stars:
        explained.append(Line2D([], [], marker="*", markersize=10, color="gold", markeredgecolor="black",
                                linestyle="none", label="fastest cell meeting a target"))
    handles, _ = ax.get_legend_handles_labels()
    ax.legend(handles=handles + explained, fontsize=7)
    return fig


def save_figure(fig, path: Path, dpi: int = 110) -> None:
    """Save a matplotlib figure atomically (temporary PNG in the same folder, then rename; ordinary mode)."""
    with atomic.atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=dpi)
