"""Comparing two runs: ``pricebench compare BASELINE NEW`` and ``pricebench baseline save RUN_DIR``.

Cells are matched by ``cell_key`` (task definition and data seed, method, version, resolved settings,
device). Each cell of either run gets one verdict:

    worse            a regression: an accuracy metric beyond its tolerance, a lower accuracy tier, or
                     a latency beyond the factor that is also statistically significant
    newly failing    a regression: ok in the baseline, failed / error / timeout / crashed now
    better           faster (beyond the factor, significant) or more accurate, and nothing worse
    fixed            failing in the baseline, ok now
    unchanged        none of the above
    new, removed     in one run only
    incomparable     the same task, method, settings and device under another key: the method's
                     version, the task's definition or its data seed changed (the note says which),
                     or a cell not measured in one run (skipped)

Accuracy is deterministic (every random draw comes from the suite's seed), so it is gated by
tolerances: by default an error metric may grow by 0.1% of its baseline value plus 1e-12 (rounding
differences between CPUs' SIMD paths, BLAS kernels and library versions are far below that);
``--fail-on METRIC:TOL`` sets an absolute (``1e-9``) or relative (``5%``) tolerance for any numeric
column. Latency needs statistics: a cell is slower only if its median ratio exceeds ``--factor``
(``--fail-on latency:10%``) and a two-sided Mann-Whitney U test on the stored timing samples gives
p < 0.002 (asv's test and threshold). Where the two sample counts cannot reach that p-value at all
(fewer than 7 + 7 samples: 5 + 5 can give no p below 0.008) it falls back to disjoint sample ranges (every new sample slower than every
baseline sample); a timing policy ``once`` cell (one sample) has no latency test. A baseline saved from
several runs of one code (``pricebench baseline save RUN RUN RUN``) also knows how far each cell moves
between runs: then the factor applies to the slowest of those runs (the fastest, for ``better``), the
test to all their samples pooled, and a slow-down within the runs' own spread is only a note.

Latencies are compared only between cells measured on the same host, unless ``--normalise``
divides every sample by its run's calibration workload (:mod:`bench.calibration`).
"""

from __future__ import annotations

import argparse
import difflib
import json
import math
import re
import statistics
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from bench import atomic
from bench.commands import Command
from bench.store import RUN_NAME, SCHEMA_VERSION, RunStore, StoreError

EXIT_OK, EXIT_REGRESSION, EXIT_USAGE = 0, 1, 2

BASELINE_FORMAT = "pricebench-baseline"
BASELINE_ROOT = Path("results") / "baselines"

DEFAULT_FACTOR = 1.1
P_THRESHOLD = 0.002
# error metrics gated by default (lower is better), and their default tolerance
DEFAULT_ACCURACY = ("max_abs_error", "max_err_s100", "rmse", "mae", "failure_rate", "r2", "within_3se", "within_2sd")
DEFAULT_RTOL, DEFAULT_ATOL = 1e-3, 1e-12
HIGHER_IS_BETTER = {"r2", "within_2sd", "within_3se", "throughput_per_s", "speedup"}
NOT_METRICS = {"n", "failures", "tier", "latency_median_s", "latency_iqr_s", "latency_min_s", "latency_max_s",
               "spread_pct", "samples", "loops", "ns_per_option", "throughput_per_s", "prepare_s", "first_call_s",
               "speedup", "once_s", "threads", "load_1m", "others_cpu", "cpu_share", "exit_code", "wall_s"}

OK, FAILING_STATUSES = "ok", ("failed", "error", "timeout", "crashed")
VERDICTS = ("worse", "newly failing", "better", "fixed", "unchanged", "new", "removed", "incomparable")
REGRESSIONS = ("worse", "newly failing")


class CompareError(ValueError):
    """Bad input to compare / baseline: a missing run, another schema, an unknown metric (exit code 2)."""


# ---------------------------------------------------------------------------------------------- loading
@dataclass
class RunData:
    """One side of a comparison: a run folder or a saved baseline, read the same way."""

    source: str
    meta: dict[str, Any]
    rows: list[dict[str, Any]]
    samples: dict[str, list[float]]
    # a baseline of several runs: each other run's calibration time, samples by cell key and the
    # calibration workload timed next to each cell
    replicates: list[tuple[float, dict[str, list[float]], dict[str, float]]] = field(default_factory=list)

    @property
    def label(self) -> str:
        return f"{self.meta.get('suite')} run {self.meta.get('run_id')}"

    @property
    def calibration_s(self) -> float:
        """The machine's undisturbed speed over the run: the faster of the calibration timings before the
        first cell and after the last (a neighbour busy during one of them slows only that one)."""
        cal = self.meta.get("calibration") or {}
        ends = [_num((cal.get(k) or {}).get("median_s")) for k in ("before", "after") if isinstance(cal.get(k), dict)]
        ends = [x for x in ends if x > 0]
        return min(ends) if ends else _num(cal.get("median_s"))

    @property
    def calibration_id(self) -> tuple:
        """What the calibration workload was: its version and its checksum (the same work everywhere)."""
        cal = self.meta.get("calibration") or {}
        checksum = _num((cal.get("before") or {}).get("checksum"))
        return cal.get("version"), round(checksum, 3) if math.isfinite(checksum) else None

    @property
    def run_ids(self) -> set[str]:
        return {str(self.meta.get("run_id"))} | set(self.meta.get("replicate_run_ids") or [])


def _latest_run(folder: Path) -> Path | None:
    """The newest finished run folder directly inside ``folder`` (a suite's folder of runs)."""
    runs = sorted((p for p in folder.iterdir() if (p / RUN_NAME).is_file()), key=lambda p: p.name)
    for run in reversed(runs):
        try:
            if json.loads((run / RUN_NAME).read_text()).get("status") == "finished":
                return run
        except (OSError, json.JSONDecodeError):
            continue
    return None


def load(path: str | Path) -> RunData:
    """A run folder, its leaderboard.csv, a suite's folder of runs (its newest finished run), or a
    baseline JSON file written by ``pricebench baseline save``; CompareError for anything else or
    anything damaged (it names the path)."""
    try:
        run = _load(Path(path))
    except CompareError:
        raise
    except (OSError, TypeError, ValueError, KeyError, AttributeError) as exc:  # UnicodeDecodeError too
        raise CompareError(f"{path}: cannot be read as a run ({type(exc).__name__}: {exc})") from None
    if not run.rows:
        raise CompareError(f"{run.source}: holds no finished cell (no rows): nothing to compare")
    bad = [i for i, r in enumerate(run.rows) if not isinstance(r, dict) or not r.get("cell_key")]
    if bad:
        raise CompareError(f"{run.source}: row {bad[0] + 1} has no cell_key (a run from before schema 2, or "
                           "edited by hand)")
    if not isinstance(run.meta.get("calibration") or {}, dict):
        raise CompareError(f"{run.source}: its calibration entry is not an object")
    return run


def _load(path: Path) -> RunData:
    if path.is_file() and path.suffix == ".csv":
        path = path.parent
    if path.is_file():
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise CompareError(f"{path}: not a baseline file (cannot read JSON: {exc})") from None
        if not isinstance(data, dict) or data.get("format") != BASELINE_FORMAT:
            raise CompareError(f"{path}: not a baseline file (no \"format\": \"{BASELINE_FORMAT}\"); "
                               "make one with: pricebench baseline save RUN_DIR")
        meta = data.get("meta") or {}
        _check_schema(path, meta)
        meta = dict(meta, replicate_run_ids=[str(r.get("run_id")) for r in data.get("replicates") or []])
        try:
            replicates = [(_num(r.get("calibration_s")),
                           {k: [float(x) for x in v] for k, v in (r.get("samples") or {}).items()},
                           {k: _num(v) for k, v in (r.get("cell_calibration") or {}).items()})
                          for r in data.get("replicates") or []]
            return RunData(str(path), meta, [dict(r) for r in data.get("rows") or []],
                           {k: [float(x) for x in v] for k, v in (data.get("samples") or {}).items()}, replicates)
        except (TypeError, ValueError, AttributeError) as exc:
            raise CompareError(f"{path}: a damaged baseline file ({type(exc).__name__}: {exc})") from None
    if not path.is_dir():
        raise CompareError(f"{path}: no such run folder or baseline file")
    if not (path / RUN_NAME).is_file():
        latest = _latest_run(path)
        if latest is None:
            raise CompareError(f"{path}: not a run folder (no {RUN_NAME}) and holds no finished run")
        path = latest
    try:
        store = RunStore(path)
        meta = store.metadata()
    except StoreError as exc:
        raise CompareError(str(exc)) from None
    _check_schema(path, meta)
    return RunData(str(path), meta, store.rows(), store.samples())


def _check_schema(path: Path, meta: Any) -> None:
    if not isinstance(meta, dict):
        raise CompareError(f"{path}: its run metadata is not a JSON object")
    version = meta.get("schema_version", 1)
    if version != SCHEMA_VERSION:
        raise CompareError(f"{path}: a schema-{version} run; compare reads schema-{SCHEMA_VERSION} runs "
                           "(rows with cell keys and raw timing samples); run the suite again")


# ---------------------------------------------------------------------------------------------- rules
@dataclass(frozen=True)
class Tolerance:
    metric: str
    value: float
    relative: bool

    def allows(self, base: float, new: float, higher_is_better: bool = False) -> bool:
        """Whether ``new`` is no worse than ``base`` beyond this tolerance."""
        change = (base - new) if higher_is_better else (new - base)
        limit = self.value * abs(base) + DEFAULT_ATOL if self.relative else self.value
        return change <= limit

    def text(self) -> str:
        return f"{self.metric}:{self.value * 100:g}%" if self.relative else f"{self.metric}:{self.value:g}"


_RULE = re.compile(r"^(?P<metric>[A-Za-z_][A-Za-z0-9_]*):(?P<value>[0-9.eE+-]+)(?P<pct>%?)$")


def parse_rule(text: str) -> Tolerance:
    """``METRIC:TOL``: TOL absolute (``1e-9``) or relative (``5%``); ``latency`` takes a percentage."""
    match = _RULE.match(text.strip())
    if not match:
        raise CompareError(f"--fail-on {text!r}: expected METRIC:TOLERANCE, e.g. max_abs_error:1e-9, mae:5% "
                           "or latency:10%")
    try:
        value = float(match["value"])
    except ValueError:
        raise CompareError(f"--fail-on {text!r}: {match['value']!r} is not a number") from None
    if not math.isfinite(value) or value < 0:
        raise CompareError(f"--fail-on {text!r}: the tolerance must be a finite number >= 0")
    relative = bool(match["pct"])
    if match["metric"] == "latency" and not relative:
        raise CompareError(f"--fail-on {text!r}: a latency tolerance is a percentage (latency:10% fails a "
                           "cell more than 10% slower)")
    return Tolerance(match["metric"], value / 100.0 if relative else value, relative)


@dataclass
class Rules:
    factor: float = DEFAULT_FACTOR
    accuracy: dict[str, Tolerance] = field(default_factory=dict)
    normalise: bool = False
    gate_latency: bool = True

    @classmethod
    def create(cls, fail_on: list[str], factor: float = DEFAULT_FACTOR, normalise: bool = False,
               gate_latency: bool = True) -> "Rules":
        if not (math.isfinite(factor) and factor >= 1.0):
            raise CompareError(f"--factor {factor:g}: must be a number >= 1 (1.1 = 10% slower)")
        accuracy = {m: Tolerance(m, DEFAULT_RTOL, True) for m in DEFAULT_ACCURACY}
        for text in fail_on:
            rule = parse_rule(text)
            if rule.metric == "latency":
                if factor != DEFAULT_FACTOR and not math.isclose(factor, 1.0 + rule.value):
                    raise CompareError(f"--fail-on {text} and --factor {factor:g} say two things: give one")
                factor = 1.0 + rule.value
            else:
                accuracy[rule.metric] = rule
        return cls(factor, accuracy, normalise, gate_latency)


# ---------------------------------------------------------------------------------------------- statistics
def _min_p(n1: int, n2: int) -> float:
    """The smallest two-sided p-value a Mann-Whitney U test can give for these sample counts."""
    return 2.0 / math.comb(n1 + n2, n1)


def latency_test(base: list[float], new: list[float]) -> tuple[str, float, bool]:
    """(test, p-value or nan, whether base and new differ significantly)."""
    if len(base) < 2 or len(new) < 2:
        return "none", math.nan, False
    if _min_p(len(base), len(new)) <= P_THRESHOLD:
        from scipy.stats import mannwhitneyu

        p = float(mannwhitneyu(base, new, alternative="two-sided").pvalue)
        return "mann-whitney", p, p < P_THRESHOLD
    disjoint = min(new) > max(base) or max(new) < min(base)
    return "ranges", math.nan, disjoint


# ---------------------------------------------------------------------------------------------- comparing
def identity(row: dict[str, Any]) -> tuple:
    """A cell's name without its version, definition and seed: what 'the same cell' means to a reader."""
    return (row.get("task"), row.get("method"), row.get("label") or "", row.get("settings") or "{}",
            row.get("device"))


@dataclass
class Verdict:
    verdict: str
    task: str
    method: str
    label: str
    settings: str
    device: str
    cell_key: str
    base: dict[str, Any] | None = None
    new: dict[str, Any] | None = None
    ratio: float = math.nan  # new latency / baseline latency (normalised where asked)
    p_value: float = math.nan
    test: str = ""
    notes: list[str] = field(default_factory=list)
    judged: tuple[float, float] | None = None  # the latencies compared: baseline, new (medians over runs)
    slower_not_gated: bool = False  # --latency report: significantly slower beyond the factor, not a regression

    @property
    def regression(self) -> bool:
        return self.verdict in REGRESSIONS

    @property
    def name(self) -> str:
        extra = self.label or ("" if self.settings in ("", "{}") else self.settings)
        return f"{self.method} {extra}".strip()

    def as_dict(self) -> dict[str, Any]:
        def pick(row):
            if row is None:
                return None
            return {k: row.get(k) for k in ("status", "latency_median_s", "tier", "max_abs_error", "mae",
                                            "message", "method_version", "host")}

        return {"verdict": self.verdict, "task": self.task, "method": self.method, "label": self.label,
                "settings": self.settings, "device": self.device, "cell_key": self.cell_key, "ratio": self.ratio,
                "p_value": self.p_value, "test": self.test, "notes": self.notes,
                "slower_not_gated": self.slower_not_gated, "baseline": pick(self.base),
                "new": pick(self.new)}


def _num(value: Any) -> float:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return math.nan
    return out


def _fmt(value: float) -> str:
    return "nan" if not math.isfinite(value) else f"{value:.3g}"


def _definition_change(base: RunData, new: RunData, task: str) -> list[str]:
    """What changed in the task between the runs: its data seed, its definition's fields (each named)."""
    old = (base.meta.get("tasks") or {}).get(task) or {}
    cur = (new.meta.get("tasks") or {}).get(task) or {}
    out = []
    if old.get("seed_entropy") and cur.get("seed_entropy") and old["seed_entropy"] != cur["seed_entropy"]:
        out.append("the task's data seed changed")
    a, b = old.get("definition"), cur.get("definition")
    if isinstance(a, dict) and isinstance(b, dict) and a != b:
        keys = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
        parts = [f"{k} {json.dumps(a.get(k), default=str)} -> {json.dumps(b.get(k), default=str)}" for k in keys]
        text = "; ".join(parts)
        out.append("the task's definition changed: " + (text if len(text) < 160 else ", ".join(keys)))
    return out


def _incomparable_reason(base: RunData, new: RunData, old: dict[str, Any], cur: dict[str, Any]) -> str:
    reasons = []
    if str(old.get("method_version")) != str(cur.get("method_version")):
        reasons.append(f"method version {old.get('method_version')} -> {cur.get('method_version')}")
    reasons += _definition_change(base, new, str(cur.get("task")))
    return "; ".join(reasons) or "the task's definition or data seed changed (a run without task definitions)"


CONTENDED = 1.15  # the calibration workload this much slower next to a cell than over its run: contended


def _timed_runs(run: RunData, row: dict[str, Any]) -> list[tuple[list[float], float, float]]:
    """The cell's timings in each run ``run`` holds (a baseline or a set of new runs may hold several):
    (samples, the calibration workload timed next to the cell, the run's calibration)."""
    key = row.get("cell_key", "")
    values = [float(v) for v in run.samples.get(key, [])]
    if not values and math.isfinite(_num(row.get("latency_median_s"))):
        values = [_num(row.get("latency_median_s"))]
    out = [(values, _num(row.get("calibration_s")), run.calibration_s)] if values else []
    for calibration_s, samples, cells in run.replicates:
        if samples.get(key):
            out.append(([float(v) for v in samples[key]], cells.get(key, math.nan), calibration_s))
    return out


def _compare_cell(v: Verdict, base: RunData, new: RunData, rules: Rules) -> None:
    old, cur = v.base, v.new
    s_old, s_new = str(old.get("status")), str(cur.get("status"))
    if s_old == "skipped" or s_new == "skipped":
        if s_old == s_new:
            v.verdict = "unchanged"
        else:
            which = "baseline" if s_old == "skipped" else "new run"
            v.verdict = "incomparable"
            v.notes.append(f"not measured in the {which}: {(old if s_old == 'skipped' else cur).get('message')}")
        return
    if s_old != OK or s_new != OK:
        if s_old == OK:
            v.verdict = "newly failing"
            v.notes.append(f"{s_new}: {cur.get('message') or ''}".strip(": "))
        elif s_new == OK:
            v.verdict = "fixed"
            v.notes.append(f"was {s_old}")
        else:
            v.verdict = "unchanged"
            v.notes.append(f"still {s_new}")
        return
    worse, better = [], []
    # accuracy: tier, then each gated metric
    t_old, t_new = _num(old.get("tier")), _num(cur.get("tier"))
    if not (math.isnan(t_old) or math.isnan(t_new)) and t_new > t_old:
        worse.append(f"accuracy tier {_fmt(t_old)} -> {_fmt(t_new)}")
    elif not (math.isnan(t_old) or math.isnan(t_new)) and t_new < t_old:
        better.append(f"accuracy tier {_fmt(t_old)} -> {_fmt(t_new)}")
    for metric, tol in rules.accuracy.items():
        a, b = _num(old.get(metric)), _num(cur.get(metric))
        if math.isnan(a) and math.isnan(b):
            continue
        higher = metric in HIGHER_IS_BETTER
        if math.isnan(b) and not math.isnan(a):
            worse.append(f"{metric} {_fmt(a)} -> nan")
        elif math.isnan(a):
            continue
        elif not tol.allows(a, b, higher):
            worse.append(f"{metric} {_fmt(a)} -> {_fmt(b)} (tolerance {tol.text()})")
        elif not tol.allows(b, a, higher):
            better.append(f"{metric} {_fmt(a)} -> {_fmt(b)}")
    # latency
    latency_note = _compare_latency(v, base, new, rules)
    if latency_note:
        kind, text = latency_note
        if kind == "worse" and rules.gate_latency:
            worse.append(text)
        elif kind == "worse":
            v.slower_not_gated = True  # reported as its own count; never lets the cell read "better"
            v.notes.append(text + " (reported, not gated)")
        elif kind == "better":
            better.append(text)
        else:
            v.notes.append(text)
    v.verdict = "worse" if worse else "better" if better and not v.slower_not_gated else "unchanged"
    v.notes = worse + better + v.notes


def _run_host(run: RunData) -> Any:
    return (run.meta.get("machine") or {}).get("host")


def _compare_latency(v: Verdict, base: RunData, new: RunData, rules: Rules) -> tuple[str, str] | None:
    old, cur = v.base, v.new
    t_old, t_new = _num(old.get("threads")), _num(cur.get("threads"))
    if math.isfinite(t_old) and math.isfinite(t_new) and t_old != t_new:
        return "note", f"latency not compared: {t_old:g} thread(s) in the baseline, {t_new:g} now"
    if rules.normalise and any(row.get("host") != _run_host(run) and _run_host(run) is not None
                               for run, row in ((base, old), (new, cur))):
        return "note", ("latency not normalised: the cell ran on another host (a dask worker) than the one "
                        "that timed its run's calibration workload")
    if rules.normalise:
        if v.device != "cpu" and old.get("host") != cur.get("host"):
            return "note", (f"{v.device} latency not compared: the calibration workload is CPU-only, and the "
                            f"hosts differ ({old.get('host')} / {cur.get('host')})")
        normalise = v.device == "cpu"
    else:
        if old.get("host") != cur.get("host"):
            return "note", (f"latency not compared: measured on another host ({old.get('host')} / "
                            f"{cur.get('host')}); use --normalise")
        normalise = False
    runs, news = _timed_runs(base, old), _timed_runs(new, cur)
    if not runs or not news:
        return "note", "latency not compared: no timing samples"
    for run, row, got in ((base, old, runs[0][0]), (new, cur, news[0][0])):
        if len(got) < 2 and not math.isfinite(_num(row.get("once_s"))) and _num(row.get("samples")) > 1:
            return "note", (f"latency not compared: {run.source} stores no timing samples for this cell "
                            f"(its row says {_num(row.get('samples')):g} were taken)")
    # a run in which the machine itself was slow right next to this cell (a neighbour on the physical host,
    # invisible to the load figures) says nothing about the method: leave it out
    # the calibration workload timed next to the cell: where it was slow, the machine may have been; it
    # is reported, not acted on (measured on our VM, it does not track the cell's own slow-downs)
    contended = []
    for side, timed in (("baseline", runs), ("new", news)):
        slow = [t[1] / t[2] for t in timed if t[1] > CONTENDED * t[2]]
        if slow:
            contended.append(f"{side}: the calibration workload took {(max(slow) - 1) * 100:+.0f}% next to this "
                             f"cell in {len(slow)} of {len(timed)} run(s)")
    scale = (lambda t: t[2]) if normalise else (lambda t: 1.0)
    base_sets = [[x / scale(t) for x in t[0]] for t in runs]
    new_sets = [[x / scale(t) for x in t[0]] for t in news]
    medians = [statistics.median(r) for r in base_sets]
    new_medians = [statistics.median(r) for r in new_sets]
    reference, new_median = statistics.median(medians), statistics.median(new_medians)
    if not (reference > 0 and math.isfinite(reference) and math.isfinite(new_median)):
        return "note", "latency not compared: no finite timing"
    v.ratio = new_median / reference
    v.judged = (reference, new_median) if not normalise else None
    pooled, pooled_new = [x for r in base_sets for x in r], [x for r in new_sets for x in r]
    v.test, v.p_value, significant = latency_test(pooled, pooled_new)
    if v.test == "none":
        return "note", f"latency x{v.ratio:.3f}, not tested (one sample: timing policy once)"
    pct = f"{(v.ratio - 1) * 100:+.1f}%"
    how = f"p={v.p_value:.2g}" if v.test == "mann-whitney" else "disjoint ranges" if significant else "ranges overlap"
    if len(runs) > 1 or len(news) > 1:
        # several runs of one code show how much the cell moves between runs: slower beyond the factor
        # means the fastest new run beyond it from the slowest baseline run (and the reverse for faster)
        how += f"; {len(runs)} baseline and {len(news)} new run(s)"
    if contended:
        how += "; " + "; ".join(contended)
    if min(new_medians) > rules.factor * max(medians) and significant:
        return "worse", f"latency {pct} ({how})"
    if max(new_medians) < min(medians) / rules.factor and significant:
        return "better", f"latency {pct} ({how})"
    if v.ratio > rules.factor and significant:
        return "note", f"latency {pct}, within the runs' own spread ({how})"
    if contended:
        return "note", "; ".join(contended)
    return None


@dataclass
class Comparison:
    base: RunData
    new: RunData
    rules: Rules
    verdicts: list[Verdict]
    warnings: list[str] = field(default_factory=list)

    @property
    def regressions(self) -> list[Verdict]:
        return [v for v in self.verdicts if v.regression]

    def counts(self) -> dict[str, int]:
        return {k: sum(v.verdict == k for v in self.verdicts) for k in VERDICTS}

    def as_dict(self) -> dict[str, Any]:
        return {"baseline": self.base.source, "new": self.new.source, "counts": self.counts(),
                "factor": self.rules.factor, "normalise": self.rules.normalise,
                "tolerances": [t.text() for t in self.rules.accuracy.values()], "warnings": self.warnings,
                "cells": [v.as_dict() for v in self.verdicts]}


def compare(base: RunData, new: RunData, rules: Rules | None = None) -> Comparison:
    rules = rules or Rules.create([])
    if base.meta.get("suite") != new.meta.get("suite"):
        raise CompareError(f"{new.source}: a run of suite {new.meta.get('suite')!r}, the baseline "
                           f"{base.source} of suite {base.meta.get('suite')!r}: compare runs of one suite")
    if rules.normalise:
        for run in (base, new):
            if not (run.calibration_s > 0) or not all(cal > 0 for cal, _, _ in run.replicates):
                raise CompareError(f"{run.source}: no calibration workload timing in its run.json (a run made "
                                   "before pricebench timed one); --normalise needs it in both runs")
        if base.calibration_id != new.calibration_id:
            raise CompareError(f"{new.source}: its calibration workload (version, checksum {new.calibration_id}) "
                               f"is not the baseline's ({base.calibration_id}): latencies cannot be normalised "
                               "by two different workloads")
    try:
        return _compare(base, new, rules)
    except (TypeError, ValueError, KeyError, AttributeError) as exc:
        raise CompareError(f"{new.source} against {base.source}: a damaged row ({type(exc).__name__}: {exc})") \
            from None


def _compare(base: RunData, new: RunData, rules: Rules) -> Comparison:
    known = set()
    for row in base.rows + new.rows:
        known.update(k for k, val in row.items() if isinstance(val, (int, float)) and not isinstance(val, bool))
    for metric in rules.accuracy:
        if metric not in known and metric not in DEFAULT_ACCURACY:
            close = difflib.get_close_matches(metric, sorted(known - NOT_METRICS), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise CompareError(f"--fail-on {metric}: no such numeric column in these runs{hint}")
    old_by_key = {r["cell_key"]: r for r in base.rows if r.get("cell_key")}
    new_by_key = {r["cell_key"]: r for r in new.rows if r.get("cell_key")}
    old_by_id = {identity(r): r for r in base.rows if r.get("cell_key") not in new_by_key}
    verdicts: list[Verdict] = []
    paired_old: set[str] = set()
    for key, cur in new_by_key.items():
        v = Verdict("", str(cur.get("task")), str(cur.get("method")), str(cur.get("label") or ""),
                    str(cur.get("settings") or "{}"), str(cur.get("device")), key, new=cur)
        if key in old_by_key:
            v.base = old_by_key[key]
            _compare_cell(v, base, new, rules)
        elif identity(cur) in old_by_id:
            v.base = old_by_id[identity(cur)]
            paired_old.add(v.base["cell_key"])
            v.verdict = "incomparable"
            v.notes.append(_incomparable_reason(base, new, v.base, cur))
        else:
            v.verdict = "new"
        verdicts.append(v)
    for key, old in old_by_key.items():
        if key not in new_by_key and key not in paired_old:
            verdicts.append(Verdict("removed", str(old.get("task")), str(old.get("method")),
                                    str(old.get("label") or ""), str(old.get("settings") or "{}"),
                                    str(old.get("device")), key, base=old))
    comparison = Comparison(base, new, rules, verdicts)
    if str(new.meta.get("run_id")) in base.run_ids:
        comparison.warnings.append(f"{new.source} is {'the baseline run' if new.meta.get('run_id') == base.meta.get('run_id') else 'one of the baseline runs'}: "
                                   "a run compared with itself shows nothing")
    if new.meta.get("status") not in (None, "finished"):
        comparison.warnings.append(f"{new.source}: the run is {new.meta.get('status')!r}, not finished: its missing "
                                   "cells show as removed")
    hosts = ({r.get("host") for r in base.rows}, {r.get("host") for r in new.rows})
    if not rules.normalise and hosts[0].isdisjoint(hosts[1]):
        comparison.warnings.append(f"the runs were measured on different hosts ({', '.join(map(str, hosts[0]))} / "
                                   f"{', '.join(map(str, hosts[1]))}): latencies are not compared; --normalise "
                                   "compares them as multiples of each run's calibration workload")
    for run in (base, new):
        busy = [r for r in run.rows if r.get("busy") is True]
        if busy:
            comparison.warnings.append(f"{run.source}: {len(busy)} cell(s) shared the machine while timed (busy)")
        drift = _num((run.meta.get("calibration") or {}).get("drift"))
        if abs(drift) > 0.1:
            comparison.warnings.append(f"{run.source}: the calibration workload took {abs(drift) * 100:.0f}% "
                                       f"{'longer' if drift > 0 else 'less time'} at the end of the run than at its "
                                       "start (the machine changed speed)")
    return comparison


# ---------------------------------------------------------------------------------------------- output
_STYLE = {"worse": "bold red", "newly failing": "bold red", "better": "green", "fixed": "green",
          "unchanged": "dim", "new": "cyan", "removed": "yellow", "incomparable": "magenta"}


def _judged_text(v: "Verdict", arrow: str) -> str:
    """The latencies the verdict compared (medians over each side's runs), else the rows' own."""
    if v.judged is not None:
        return f"{_latency_text({'latency_median_s': v.judged[0]})} {arrow} " \
               f"{_latency_text({'latency_median_s': v.judged[1]})}"
    return f"{_latency_text(v.base)} {arrow} {_latency_text(v.new)}"


def _latency_text(row: dict[str, Any] | None) -> str:
    if row is None:
        return ""
    value = _num(row.get("latency_median_s"))
    if not math.isfinite(value):
        return "-"
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6)):
        if value >= scale:
            return f"{value / scale:.3g} {unit}"
    return f"{value / 1e-9:.3g} ns"


def _error_text(row: dict[str, Any] | None) -> str:
    if row is None:
        return ""
    value = _num(row.get("max_abs_error"))
    return "-" if not math.isfinite(value) else f"{value:.2e}"


def _pair(old: str, new: str, arrow: str) -> str:
    return f"{new} (same)" if old == new else f"{old} {arrow} {new}"


def summary_line(c: Comparison) -> str:
    counts = c.counts()
    parts = [f"{n} {k}" for k, n in counts.items() if n]
    slower = sum(v.slower_not_gated for v in c.verdicts)
    if slower:
        parts.append(f"{slower} slower (latency not gated)")
    head = f"{len(c.regressions)} regression(s)" if c.regressions else "no regression"
    return f"{head}: " + ", ".join(parts)


def render(c: Comparison, out, show_all: bool = False) -> None:
    from rich.table import Table

    table = Table(title=f"{c.base.label} -> {c.new.meta.get('run_id')}" + (" (normalised)" if c.rules.normalise
                                                                              else ""),
                  title_justify="left", show_lines=False)
    table.add_column("verdict", no_wrap=True)
    table.add_column("cell", overflow="fold", ratio=2, min_width=14)
    table.add_column("latency (ratio)", justify="right", overflow="fold", min_width=10)
    table.add_column("max error", justify="right", overflow="fold", min_width=9)
    table.add_column("why", overflow="fold", ratio=3, min_width=12)
    order = {k: i for i, k in enumerate(VERDICTS)}
    shown = 0
    for v in sorted(c.verdicts, key=lambda v: (order[v.verdict], v.task, v.name)):
        if not show_all and v.verdict == "unchanged" and not v.notes:
            continue
        style = "bold yellow" if v.slower_not_gated else _STYLE[v.verdict]
        shown += 1
        latency = _judged_text(v, "->") if v.base and v.new else \
            _latency_text(v.new or v.base)
        if not math.isnan(v.ratio):
            latency += f" (x{v.ratio:.3f})"
        error = _pair(_error_text(v.base), _error_text(v.new), "->") if v.base and v.new else \
            _error_text(v.new or v.base)
        table.add_row(f"[{style}]{v.verdict}{' (slower)' if v.slower_not_gated else ''}[/]", f"{v.task} · {v.name} · {v.device}", latency, error,
                      "; ".join(v.notes))
    if shown:
        out.print(table)
    for w in c.warnings:
        out.print(f"[yellow]warning:[/] {w}", highlight=False)
    style = "bold red" if c.regressions else "bold green"
    out.print(f"[{style}]{summary_line(c)}[/] (factor {c.rules.factor:g}, "
              f"{'latency gated' if c.rules.gate_latency else 'latency reported only'})", highlight=False)


def markdown(c: Comparison) -> str:
    def cell(text: str) -> str:
        return str(text).replace("|", "\\|").replace("\n", " ")

    lines = [f"### pricebench compare: {summary_line(c)}", "",
             f"- baseline: `{cell(c.base.source)}` ({cell(c.base.label)}, {cell((c.base.meta.get('machine') or {}).get('cpu'))})",
             f"- new: `{cell(c.new.source)}` ({cell(c.new.label)}, {cell((c.new.meta.get('machine') or {}).get('cpu'))})",
             f"- rules: latency factor {c.rules.factor:g} with Mann-Whitney U p < {P_THRESHOLD}"
             f"{', normalised by the calibration workload' if c.rules.normalise else ''}"
             f"{'' if c.rules.gate_latency else ' (latency reported, not gated)'}; accuracy "
             + ", ".join(t.text() for t in c.rules.accuracy.values()) + "; a lower accuracy tier or a newly "
             "failing cell is always a regression", ""]
    for w in c.warnings:
        lines.append(f"> warning: {cell(w)}")
    if c.warnings:
        lines.append("")
    order = {k: i for i, k in enumerate(VERDICTS)}
    rows = sorted(c.verdicts, key=lambda v: (order[v.verdict], v.task, v.name))
    head = ["| verdict | task | method | device | latency | ratio | max error | why |",
            "|---|---|---|---|---:|---:|---:|---|"]

    def line(v: Verdict) -> str:
        latency = _judged_text(v, "→") if v.base and v.new else \
            _latency_text(v.new or v.base)
        error = _pair(_error_text(v.base), _error_text(v.new), "→") if v.base and v.new else \
            _error_text(v.new or v.base)
        ratio = "" if math.isnan(v.ratio) else f"×{v.ratio:.3f}"
        return (f"| {v.verdict}{' (slower, not gated)' if v.slower_not_gated else ''} | {cell(v.task)} | {cell(v.name)} | {v.device} | {latency} | {ratio} | {error} | "
                f"{cell('; '.join(v.notes))} |")

    notable = [v for v in rows if v.verdict != "unchanged" or v.slower_not_gated]
    if notable:
        lines += head + [line(v) for v in notable] + [""]
    lines += ["<details><summary>every cell</summary>", ""] + head + [line(v) for v in rows] + ["", "</details>", ""]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- baselines
def machine_name(meta: dict[str, Any]) -> str:
    """A folder name for the machine a run was measured on: its CPU model and CPU count."""
    machine = meta.get("machine") or {}
    cpu = re.sub(r"\((R|TM)\)|CPU|Processor|@.*$", "", str(machine.get("cpu") or "unknown-cpu"))
    slug = re.sub(r"[^a-z0-9]+", "-", cpu.lower()).strip("-") or "unknown-cpu"
    count = (machine.get("threads") or {}).get("cpu_count")
    return f"{slug}-{count}cpu" if count else slug


def combine(runs: list[RunData], what: str = "a baseline") -> RunData:
    """Several runs of one code as one side of a comparison: the first run's rows and samples, and each
    further run's timing samples as a replicate. They must be runs of one suite on one host, and score
    identically (accuracy is reproducible, or they are not runs of one code)."""
    run = runs[0]
    if len(runs) == 1:
        return run
    seen = {str(run.meta.get("run_id"))}
    for other in runs[1:]:
        if other.meta.get("suite") != run.meta.get("suite") or other.meta.get("suite_hash") != run.meta.get("suite_hash"):
            raise CompareError(f"{other.source}: a run of another suite (or suite definition) than {run.source}")
        hosts = {r.get("host") for r in run.rows} | {r.get("host") for r in other.rows}
        if len(hosts) > 1:
            raise CompareError(f"{other.source}: measured on another host than {run.source} "
                               f"({', '.join(map(str, hosts))}); {what}'s runs come from one machine")
        if str(other.meta.get("run_id")) in seen:
            raise CompareError(f"{other.source}: the same run twice")
        seen.add(str(other.meta.get("run_id")))
        mine = {r.get("cell_key"): r for r in run.rows}
        for row in other.rows:
            ref = mine.get(row.get("cell_key"))
            if ref is not None and any(_num(ref.get(m)) != _num(row.get(m)) and not
                                       (math.isnan(_num(ref.get(m))) and math.isnan(_num(row.get(m))))
                                       for m in DEFAULT_ACCURACY):
                raise CompareError(f"{other.source}: cell {row.get('task')}/{row.get('method')} scored differently "
                                   f"from {run.source} with the same key: its accuracy is not reproducible, so "
                                   f"the two cannot be {what}")
    replicates, ids = list(run.replicates), list(run.meta.get("replicate_run_ids") or [])
    for other in runs[1:]:
        cells = {r["cell_key"]: _num(r.get("calibration_s")) for r in other.rows}
        replicates.append((other.calibration_s, {k: v for k, v in other.samples.items() if k in run.samples}, cells))
        ids.append(str(other.meta.get("run_id")))
        replicates += other.replicates
        ids += list(other.meta.get("replicate_run_ids") or [])
    meta = dict(run.meta, replicate_run_ids=ids)
    return RunData(run.source + f" (+{len(runs) - 1} run(s))", meta, run.rows, run.samples, replicates)


def load_many(paths: list[str | Path], what: str = "the new side") -> RunData:
    return combine([load(p) for p in paths], what)


def save_baseline(run_dirs: str | Path | list[str | Path], root: str | Path = BASELINE_ROOT,
                  machine: str | None = None, force: bool = False, warnings: list[str] | None = None) -> Path:
    """Promote finished runs to ``<root>/<machine>/<suite>.json``: the first run's rows and timing samples
    (not its outputs or artifacts) and, from each further run of the same suite and host, its timing
    samples (``replicates``): how much each cell's latency moves between runs of one code."""
    warnings = [] if warnings is None else warnings
    paths = [Path(p) for p in (run_dirs if isinstance(run_dirs, list) else [run_dirs])]
    runs = []
    for path in paths:
        if not (path / RUN_NAME).is_file():
            raise CompareError(f"{path}: not a run folder (no {RUN_NAME})")
        run = load(path)
        status = run.meta.get("status")
        if status != "finished" and not force:
            raise CompareError(f"{path}: this run is {status!r}, not finished; a baseline should be complete "
                               "(--force saves it anyway)")
        runs.append(run)
    run, path = runs[0], paths[0]
    combined = combine(runs, "a baseline")
    for r in runs:
        busy = [row for row in r.rows if row.get("busy") is True]
        if busy:
            warnings.append(f"{r.source}: {len(busy)} cell(s) shared the machine while timed (busy); a baseline "
                            "should come from a quiet machine")
    for row in run.rows:
        medians = [statistics.median(r.samples[row["cell_key"]]) for r in runs if r.samples.get(row["cell_key"])]
        if len(medians) > 1 and min(medians) > 0 and max(medians) / min(medians) > DEFAULT_FACTOR:
            warnings.append(f"{row.get('task')}/{row.get('method')}: its latency moved "
                            f"{(max(medians) / min(medians) - 1) * 100:.0f}% between these runs; compare will only "
                            "call it slower beyond the slowest of them")
    name = machine or machine_name(run.meta)
    target = atomic.inside(atomic.inside(root, name), f"{run.meta.get('suite')}.json")
    keep = {"artifacts"}
    data = {
        "format": BASELINE_FORMAT,
        "saved": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "saved_from": [str(p.resolve()) for p in paths],
        "machine_name": name,
        "meta": run.meta,
        "rows": [{k: v for k, v in r.items() if k not in keep} for r in run.rows],
        "samples": {r["cell_key"]: run.samples[r["cell_key"]] for r in run.rows if r.get("cell_key") in run.samples},
        "replicates": [{"run_id": rid, "calibration_s": cal, "samples": samples, "cell_calibration": cells}
                       for rid, (cal, samples, cells) in zip(combined.meta.get("replicate_run_ids") or [], combined.replicates)],
    }
    target.parent.mkdir(parents=True, exist_ok=True)  # results/baselines/<machine>/: ours to make
    write_output(target, dumps(data) + "\n")
    return target


def this_machine() -> str:
    from bench import environment

    return machine_name({"machine": {"cpu": environment.cpu_model(),
                                     "threads": {"cpu_count": __import__("os").cpu_count()}}})


def find_baseline(suite: str, root: str | Path = BASELINE_ROOT, any_machine: bool = False) -> tuple[Path, str]:
    """This machine's baseline of ``suite`` (and '' ), or with ``any_machine`` another's (and a note saying so)."""
    root = Path(root)
    mine = this_machine()
    own = atomic.inside(atomic.inside(root, mine), f"{suite}.json")
    if own.is_file():
        return own, ""
    others = sorted(root.glob(f"*/{atomic.safe_name(suite)}.json")) if root.is_dir() else []
    if any_machine and others:
        return others[0], (f"no baseline of {suite!r} for this machine ({mine}); using {others[0].parent.name}'s: "
                           "compare latencies with --normalise")
    have = ", ".join(p.parent.name for p in others) or "none"
    raise CompareError(f"{own}: no baseline of suite {suite!r} for this machine ({mine}; other machines: {have}); "
                       "save one with: pricebench baseline save RUN_DIR")


# ---------------------------------------------------------------------------------------------- commands
def _strict_json(value: Any) -> Any:
    """``value`` with every NaN and infinity as null: strict JSON that jq and browsers read."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_strict_json(v) for v in value]
    return value


def dumps(value: Any) -> str:
    return json.dumps(_strict_json(value), indent=1, default=str, allow_nan=False)


def write_output(path: str | Path, text: str) -> Path:
    """Write a report file the user named, atomically; CompareError (exit 2) where it cannot go."""
    target = Path(path)
    if target.is_dir():
        raise CompareError(f"{target}: is a folder; name a file")
    if not target.parent.is_dir():
        raise CompareError(f"{target}: its folder {target.parent} does not exist")
    try:
        atomic.write_text(target, text)
    except OSError as exc:
        raise CompareError(f"{target}: cannot write ({exc.strerror or exc})") from None
    return target


def _factor(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number such as 1.1, got {text!r}") from None


class CompareCommand(Command):
    name = "compare"
    help = "compare two runs cell by cell; exit 1 on a regression"
    description = ("Match the cells of BASELINE and NEW by cell key and say which got worse, better, newly "
                   "failing, fixed, new, removed or incomparable. Exit code 1 on any regression, 0 otherwise, "
                   "2 on bad input. BASELINE and NEW are run folders, a suite's folder of runs (its newest "
                   "finished run) or baseline files (pricebench baseline save).")

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("baseline", metavar="BASELINE", help="the reference run or baseline file")
        parser.add_argument("new", nargs="+", metavar="NEW",
                            help="the run to judge; several runs of one code (a second run of the suite) are "
                                 "judged together: a cell is slower only if it is slower in every one of them")
        parser.add_argument("--factor", type=_factor, default=DEFAULT_FACTOR,
                            help="a latency regression needs new/baseline beyond this ratio, and significance "
                                 "(default 1.1)")
        parser.add_argument("--fail-on", action="append", default=[], metavar="METRIC:TOL",
                            help="a tolerance: max_abs_error:1e-9 (absolute), mae:5%% (relative), latency:10%% "
                                 "(= --factor 1.1); repeatable")
        parser.add_argument("--normalise", "--normalize", action="store_true",
                            help="compare latencies as multiples of each run's calibration workload, so runs "
                                 "from two similar machines compare")
        parser.add_argument("--latency", choices=("gate", "report"), default="gate",
                            help="gate: a latency regression fails (exit 1); report: it is shown only "
                                 "(a shared CI machine)")
        parser.add_argument("--markdown", metavar="FILE", help="also write a Markdown summary (CI logs, "
                                                                 "pull-request comments)")
        parser.add_argument("--json", metavar="FILE", help="also write every verdict as JSON")
        parser.add_argument("--all", action="store_true", help="list unchanged cells too")

    def run(self, args, out, err) -> int:
        try:
            rules = Rules.create(args.fail_on, args.factor, args.normalise, args.latency == "gate")
            comparison = compare(load(args.baseline), load_many(args.new), rules)
        except CompareError as exc:
            err.print(f"[bold red]error:[/] {exc}", highlight=False)
            return EXIT_USAGE
        render(comparison, out, show_all=args.all)
        try:
            for option, text in (("markdown", markdown(comparison) if args.markdown else None),
                                 ("json", dumps(comparison.as_dict()) if args.json else None)):
                if text is not None:
                    out.print(f"[green]wrote[/] {write_output(getattr(args, option), text)}", highlight=False)
        except CompareError as exc:
            err.print(f"[bold red]error:[/] {exc}", highlight=False)
            return EXIT_USAGE
        return EXIT_REGRESSION if comparison.regressions else EXIT_OK


class BaselineCommand(Command):
    name = "baseline"
    help = "save a run as the baseline that later runs are compared with"
    description = ("pricebench baseline save RUN_DIR [RUN_DIR...]: copy finished runs' rows and raw timing samples "
                   "(not their outputs) to results/baselines/<machine>/<suite>.json, the file to commit and compare "
                   "with. Several runs of one code tell compare how much each cell moves between runs.")

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
        p = sub.add_parser("save", help="promote RUN_DIR to results/baselines/<machine>/<suite>.json",
                           description=self.description)
        p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR",
                       help="finished run folders of one suite and machine: the first gives the rows; each further "
                            "run adds its timing samples, so compare knows how much a cell moves between runs "
                            "(three runs recommended)")
        p.add_argument("--to", default=str(BASELINE_ROOT), metavar="DIR",
                       help=f"the baselines folder (default: ./{BASELINE_ROOT})")
        p.add_argument("--machine", metavar="NAME", help="the machine's folder name (default: from the run's CPU "
                                                         "model and CPU count)")
        p.add_argument("--force", action="store_true", help="save an unfinished run too")
        p = sub.add_parser("path", help="print the baseline file of SUITE for this machine",
                           description="Print results/baselines/<this machine>/<SUITE>.json; exit 2 if there is "
                                       "none (with --any: another machine's, the one to compare with --normalise).")
        p.add_argument("suite", metavar="SUITE", help="a suite name (ci)")
        p.add_argument("--to", default=str(BASELINE_ROOT), metavar="DIR",
                       help=f"the baselines folder (default: ./{BASELINE_ROOT})")
        p.add_argument("--any", action="store_true", help="fall back to another machine's baseline of SUITE")

    def run(self, args, out, err) -> int:
        try:
            if args.action == "path":
                path, note = find_baseline(args.suite, args.to, args.any)
                if note:
                    err.print(f"[yellow]note:[/] {note}", highlight=False)
                print(path)
                return EXIT_OK
            notes: list[str] = []
            target = save_baseline(args.run_dirs, args.to, args.machine, args.force, notes)
        except CompareError as exc:
            err.print(f"[bold red]error:[/] {exc}", highlight=False)
            return EXIT_USAGE
        for note in notes:
            err.print(f"[yellow]warning:[/] {note}", highlight=False)
        suite = json.loads(target.read_text())["meta"].get("suite")
        out.print(f"[green]saved[/] {target} ({target.stat().st_size / 1024:.0f} KiB): commit it; compare later "
                  f"runs with: pricebench compare '{target}' results/{suite}", highlight=False)
        return EXIT_OK
