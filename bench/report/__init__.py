"""Presentation of a run, one module per medium:

- :mod:`bench.report.files`: the leaderboard CSV, the targets CSV and the run's JSON
  (written atomically through :mod:`bench.atomic`), and :func:`read` to load a run back;
- :mod:`bench.report.plots`: matplotlib figures (the work-precision plot) and
  :func:`save_figure`, the one atomic figure writer;
- :mod:`bench.report.console`: rich tables for the terminal and the number formatting they use;
- :mod:`bench.report._common`: small helpers they share (numbers, a cell's settings).

Another medium (an HTML report) is one more module beside these. The names below are
re-exported so that ``from bench import report; report.write_csv(...)`` keeps working.
"""

from __future__ import annotations

from bench.report.console import (
    STATUS_ORDER,
    fmt_err,
    fmt_rate,
    fmt_time,
    render,
    sort_rows,
    targets_table,
    task_table,
    tier_label,
)
from bench.report.files import (
    CSV_NAME,
    JSON_NAME,
    TARGET_COLUMNS,
    TARGETS_NAME,
    columns,
    read,
    write_csv,
    write_json,
    write_targets,
)
from bench.report.plots import plot_work_precision, save_figure

__all__ = [
    "CSV_NAME", "JSON_NAME", "TARGETS_NAME", "TARGET_COLUMNS",
    "columns", "write_csv", "write_targets", "write_json", "read",
    "plot_work_precision", "save_figure",
    "task_table", "targets_table", "render", "sort_rows", "fmt_time", "fmt_err", "fmt_rate", "STATUS_ORDER",
    "tier_label",
]
