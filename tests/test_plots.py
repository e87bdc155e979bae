"""The work-precision plot explains every mark it draws (issue 10: a newcomer could not read them)."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("matplotlib")

from bench.report.plots import plot_work_precision, work_precision_figure  # noqa: E402


def row(method, t, err, failures=0, settings=None, status="ok"):
    return {"method": method, "label": None, "device": "cpu", "status": status, "failures": failures,
            "latency_median_s": t, "max_abs_error": err, "max_err_s100": err, "kind": "price",
            "model": "black_scholes", "product": "european_call", "n": 100, "task": "t",
            "settings": json.dumps(settings or {}), "tier": 1.0}


def legend_texts(fig):
    return [t.get_text() for t in fig.axes[0].get_legend().get_texts()]


def test_every_mark_is_in_the_legend():
    rows = [row("closed_form", 1e-4, 0.0),  # exact: error 0
            row("newton", 2e-4, 1e-9, failures=3),  # hollow
            row("fd", 1e-3, 1e-4, settings={"nx": 100, "nt": 50}), row("fd", 2e-3, 5e-5, settings={"nx": 200, "nt": 50}),
            row("fd", 3e-3, 4e-5, settings={"nx": 100, "nt": 100}), row("fd", 5e-3, 1e-5, settings={"nx": 200, "nt": 100})]
    fig = work_precision_figure("t", rows)
    texts = legend_texts(fig)
    assert any("hollow" in t for t in texts)
    assert any("error 0" in t and "1e-16" in t for t in texts)
    assert any("fd" in t and "grid of settings" in t for t in texts)
    assert any("dominates every other cell" in t for t in texts)  # closed_form: fastest and exact
    assert not any(t.startswith("Pareto front") for t in texts)
    assert any("fastest cell meeting a target" in t for t in texts)
    notes = [t.get_text() for t in fig.axes[0].texts]
    assert {"target 1e-03", "target 1e-05", "target 1e-07"} <= set(notes)
    fd_line = next(line for line in fig.axes[0].get_lines() if "grid of settings" in line.get_label())
    assert fd_line.get_linestyle() == "None"  # no zigzag through a 2-D sweep
    assert all(label.get_text() == "" for label in fig.axes[0].xaxis.get_minorticklabels())


def test_a_latency_range_within_one_decade_keeps_its_tick_labels():
    rows = [row("a", 2.7e-5, 1e-3), row("b", 3.7e-5, 1e-6)]
    fig = work_precision_figure("t", rows)
    fig.canvas.draw()
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.xaxis.get_majorticklabels() + ax.xaxis.get_minorticklabels()
              if ax.get_xlim()[0] <= t.get_position()[0] <= ax.get_xlim()[1]]
    assert any(labels)


def test_a_front_of_several_cells_is_drawn_and_named(tmp_path):
    rows = [row("a", 1e-4, 1e-3), row("b", 1e-3, 1e-6), row("c", 1e-2, 1e-5)]
    fig = work_precision_figure("t", rows)
    texts = legend_texts(fig)
    assert any(t.startswith("Pareto front") for t in texts) and not any("hollow" in t for t in texts)
    assert plot_work_precision(tmp_path / "t.png", "t", rows) and (tmp_path / "t.png").stat().st_size > 1000
    assert work_precision_figure("t", [row("a", float("nan"), 1.0)]) is None
