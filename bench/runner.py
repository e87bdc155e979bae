"""Run a suite: sample -> reference -> run and time each cell -> score.

A cell is one (task, method configuration, device). Every cell ends up as a
leaderboard row with a status: ``ok``, ``failed`` (every point NaN or not
converged), ``error`` (the method raised or returned the wrong shape),
``timeout`` or ``skipped`` (no GPU, unsupported device or backend). A
failing cell never stops the run. Results are written after every task, so
an interrupted run keeps what it finished.
"""

from __future__ import annotations

import fnmatch
import json
import math
import time
import warnings
import zlib
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from bench import arrays, environment, report, sampling
from bench.methods import IVResult, PriceResult, Unsupported
from bench.plugins import Registry
from bench import scoring
from bench.scoring import score
from bench.suite import MethodSpec, Suite, Task
from bench.timing import CellTimeout, deadline, measure

SCHEMA_VERSION = 1
DEVICE_CHOICES = ("default", "cpu", "cuda", "all")


@dataclass
class TaskData:
    """What every cell of a task shares: the batch, its inputs and the reference."""

    params: dict[str, np.ndarray]
    inputs: dict[str, np.ndarray]  # what methods receive (model params, or IV inputs)
    reference: np.ndarray
    reference_s: float
    scale: np.ndarray | None = None  # price tasks: per-point factor to S = 100
    method_seed: int = 0  # given to methods with a ``seed`` setting the suite leaves unset


def method_seed(seq: np.random.SeedSequence, role: int = 0) -> int:
    """The seed a task gives to random methods (Monte Carlo) that the suite does not seed.

    A child of the task's seed sequence, so it changes with the suite seed,
    the task seed and ``--seed``, and the same seed gives the same estimates.
    Every candidate method of the task gets the same one (role 0: common
    random numbers across a sweep of settings); the reference and the pricer
    of an implied-volatility task get their own (role 1), so a random
    reference never shares paths with the candidates it scores."""
    child = np.random.SeedSequence(seq.entropy, spawn_key=tuple(seq.spawn_key) + (0x5EED, role))
    return int(child.generate_state(1, np.uint32)[0])


def with_seed(cls: type, settings: dict[str, Any], seed: int) -> dict[str, Any]:
    """``settings`` plus ``seed`` when the method has a ``seed`` setting left unset (None)."""
    if "seed" in getattr(cls, "settings", {}) and settings.get("seed") is None:
        return dict(settings, seed=seed)
    return dict(settings)


@dataclass
class RunResult:
    suite: Suite
    run_id: str
    directory: Path | None
    rows: list[dict[str, Any]] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)


def task_seed(base: int, task: Task, override: int | None) -> np.random.SeedSequence:
    """The task's seed sequence: its own seed, else derived from the suite seed and its name.

    Deriving from the name (not the position) keeps a task's points the
    same when other tasks are added, removed or filtered out.
    """
    if override is not None:
        return np.random.SeedSequence([override, zlib.crc32(task.name.encode())])
    if task.seed is not None:
        return np.random.SeedSequence(task.seed)
    return np.random.SeedSequence([base, zlib.crc32(task.name.encode())])


def new_run_id() -> str:
    now = datetime.now(timezone.utc)
    return now.strftime("%Y%m%dT%H%M%S") + f"{now.microsecond // 1000:03d}Z"


class Runner:
    def __init__(
        self,
        registry: Registry,
        *,
        out_dir: str | Path | None = "results",
        device: str = "default",
        tasks: Sequence[str] = (),
        methods: Sequence[str] = (),
        seed: int | None = None,
        threads: int | None = None,
        on_start: Callable[[int], None] | None = None,
        on_cell: Callable[[dict[str, Any]], None] | None = None,
        on_task: Callable[[Task, list[dict[str, Any]]], None] | None = None,
    ) -> None:
        if device not in DEVICE_CHOICES:
            raise ValueError(f"device must be one of {', '.join(DEVICE_CHOICES)}, got {device!r}")
        self.registry = registry
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.device = device
        self.task_patterns = list(tasks)
        self.method_patterns = list(methods)
        self.seed = seed
        self.threads = threads
        self.on_start, self.on_cell, self.on_task = on_start, on_cell, on_task
        self._stamp: dict[str, str] = {}
        self._stage = ""
        self.metrics = {name: registry.get("metric", name)() for name in registry.names("metric")}

    # ------------------------------------------------------------------ selection
    def selected_tasks(self, suite: Suite) -> list[Task]:
        if not self.task_patterns:
            return list(suite.tasks)
        return [t for t in suite.tasks if any(fnmatch.fnmatchcase(t.name, p) for p in self.task_patterns)]

    def selected_methods(self, task: Task) -> list[MethodSpec]:
        if not self.method_patterns:
            return list(task.methods)
        keep = [m for m in task.methods if any(fnmatch.fnmatchcase(m.name, p) for p in self.method_patterns)]
        # the baseline always runs: speed-ups need it
        return [m for m in task.methods if m in keep or m.name == task.baseline]

    def devices_for(self, task: Task, spec: MethodSpec) -> tuple[str, ...]:
        if self.device == "default":
            return spec.devices
        if self.device == "all":
            return ("cpu", "cuda")
        return (self.device,)

    def plan(self, suite: Suite) -> list[tuple[Task, list[tuple[MethodSpec, str]]]]:
        plan = []
        for task in self.selected_tasks(suite):
            cells = [(spec, dev) for spec in self.selected_methods(task) for dev in self.devices_for(task, spec)]
            if cells:
                plan.append((task, cells))
        return plan

    # ------------------------------------------------------------------ the run
    def run(self, suite: Suite) -> RunResult:
        plan = self.plan(suite)
        if not plan:
            raise ValueError("no task and method match the --task/--method filters")
        with environment.limit_threads(self.threads if self.threads is not None else suite.threads):
            return self._run(suite, plan)

    def _run(self, suite: Suite, plan) -> RunResult:
        run_id = new_run_id()
        self._stamp = {"suite": suite.name, "run_id": run_id}
        directory = self.out_dir / suite.name / run_id if self.out_dir is not None else None
        result = RunResult(suite, run_id, directory)
        result.metadata = {
            "schema_version": SCHEMA_VERSION,
            "run_id": run_id,
            "suite": suite.name,
            "suite_path": suite.path,
            "suite_description": suite.description,
            "seed": self.seed if self.seed is not None else suite.seed,
            "filters": {"tasks": self.task_patterns, "methods": self.method_patterns, "device": self.device},
            "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "finished": None,
            "machine": environment.describe(),
            "tasks": {},
        }
        if self.on_start:
            self.on_start(sum(len(cells) for _, cells in plan))
        for task, cells in plan:
            rows = self.run_task(suite, task, cells, result.metadata["tasks"])
            result.rows.extend(rows)
            if self.on_task:
                self.on_task(task, rows)
            self.save_plot(result, task, rows)
            self.save(result)
        result.metadata["finished"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        self.save(result)
        return result

    def save(self, result: RunResult) -> None:
        if result.directory is None:
            return
        result.directory.mkdir(parents=True, exist_ok=True)
        report.write_csv(result.directory / report.CSV_NAME, result.rows, list(self.metrics))
        report.write_targets(result.directory / report.TARGETS_NAME, result.rows)
        report.write_json(result.directory / report.JSON_NAME, result.metadata)

    def save_plot(self, result: RunResult, task: Task, rows: list[dict[str, Any]]) -> None:
        if result.directory is None:
            return
        result.directory.mkdir(parents=True, exist_ok=True)
        try:
            if report.plot_work_precision(result.directory / f"{task.name}.png", task.name, rows):
                result.metadata["tasks"][task.name]["plot"] = f"{task.name}.png"
        except Exception as exc:  # noqa: BLE001 - a plot must not cost the results
            result.metadata["tasks"][task.name]["plot_error"] = f"{type(exc).__name__}: {exc}"

    # ------------------------------------------------------------------ one task
    def prepare_task(self, suite: Suite, task: Task) -> TaskData:
        data = self._prepare_task(suite, task)
        # every cell receives the same arrays: a method that writes into its
        # inputs must not change what later cells (and the scores) see
        for value in (*data.inputs.values(), *data.params.values(), data.reference):
            value.setflags(write=False)
        return data

    def _prepare_task(self, suite: Suite, task: Task) -> TaskData:
        self._stage = "sampling"
        seq = task_seed(suite.seed, task, self.seed)
        seed, reference_seed = method_seed(seq), method_seed(seq, role=1)
        rng = np.random.default_rng(seq)
        points = sampling.sample(task.domain, task.n, task.sampler, rng, task.sampler_options)
        size = task.size
        raw = {k: np.full(size, v) for k, v in task.fixed.items()} | points
        model = self.registry.model(task.model)
        params = {k: np.ascontiguousarray(v) for k, v in model.validate(raw).items()}
        self._stage = "reference"
        if task.kind == "price":
            t0 = time.perf_counter()
            reference = self._price(task.reference, model, task.product, params, reference_seed)
            return TaskData(params, params, reference, time.perf_counter() - t0,
                            scoring.price_scale(params, task.size), seed)
        # implied_vol: invert prices made by the task's pricer
        self._stage = "pricing the options to invert"
        prices = self._price(task.pricer, model, task.product, params, reference_seed)
        inputs = {k: params[k] for k in ("S", "K", "T", "r", "q")}
        inputs["price"] = prices
        inputs["is_call"] = np.full(size, task.product == "european_call")
        self._stage = "reference"
        t0 = time.perf_counter()
        if task.reference is None:
            reference = params["sigma"].copy()
        else:
            finder = self.registry.get("root_finder", task.reference.name)(**task.reference.settings)
            reference = finder.solve(finder.prepare(inputs, "cpu")).to_host().sigma
        return TaskData(params, inputs, reference, time.perf_counter() - t0, method_seed=seed)

    def _price(self, spec: MethodSpec, model, product, params, seed: int) -> np.ndarray:
        cls = self.registry.get("pricer", spec.name)
        pricer = cls(**with_seed(cls, spec.settings, seed))
        out = pricer.price(pricer.prepare(model, product, params, "cpu"))
        if isinstance(out, PriceResult):
            out = out.price
        return arrays.to_numpy(out).astype(np.float64).reshape(-1)

    def run_task(self, suite: Suite, task: Task, cells, task_meta: dict) -> list[dict[str, Any]]:
        try:
            data = self.prepare_task(suite, task)
        except Exception as exc:  # noqa: BLE001 - the task fails, the run goes on
            message = f"{self._stage} failed: {type(exc).__name__}: {exc}"
            rows = [self._row(task, spec, dev, status="error", message=message) for spec, dev in cells]
            for row in rows:
                if self.on_cell:
                    self.on_cell(row)
            task_meta[task.name] = {"error": message}
            return rows
        task_meta[task.name] = {
            "kind": task.kind,
            "n": task.size,
            "reference": task.reference.name if task.reference else "true_sigma",
            "reference_settings": dict(task.reference.settings) if task.reference else {},
            "reference_s": data.reference_s,
            "seed_entropy": str(task_seed(suite.seed, task, self.seed).entropy),
            "method_seed": data.method_seed,
        }
        rows = []
        for spec, device in cells:
            row = self.run_cell(task, spec, device, data)
            rows.append(row)
            if self.on_cell:
                self.on_cell(row)
        self._speedups(task, rows)
        return rows

    # ------------------------------------------------------------------ one cell
    def _row(self, task: Task, spec: MethodSpec, device: str, **values) -> dict[str, Any]:
        entry = self.registry.entry(spec.kind, spec.name)
        row = {
            **self._stamp,
            "task": task.name,
            "kind": task.kind,
            "model": task.model,
            "product": task.product,
            "n": task.size,
            "method": spec.name,
            "method_version": entry.cls.version,
            "plugin": entry.plugin,
            "settings": json.dumps(dict(spec.settings), sort_keys=True),
            "label": spec.label,
            "device": device,
            "status": "ok",
            "message": "",
        }
        row.update(values)
        return row

    def run_cell(self, task: Task, spec: MethodSpec, device: str, data: TaskData) -> dict[str, Any]:
        row = self._row(task, spec, device)
        cls = self.registry.get(spec.kind, spec.name)
        if device == "cuda" and not arrays.cuda_available():
            return row | {"status": "skipped", "message": "skipped: no GPU"}
        if not cls.supports_device(device):
            return row | {"status": "skipped", "message": f"skipped: {spec.name} does not run on {device}"}
        model = self.registry.model(task.model)
        caught: list[warnings.WarningMessage] = []
        try:
            with warnings.catch_warnings(record=True) as caught, deadline(task.timeout):
                warnings.simplefilter("once")  # each distinct warning once: cheap inside the timed loop
                method = cls(**with_seed(cls, spec.settings, data.method_seed))
                t0 = time.perf_counter()
                if task.kind == "price":
                    prepared = method.prepare(model, task.product, data.inputs, device)
                    call = lambda: method.price(prepared)  # noqa: E731
                else:
                    prepared = method.prepare(data.inputs, device)
                    call = lambda: method.solve(prepared)  # noqa: E731
                arrays.synchronize(device)
                prepare_s = time.perf_counter() - t0
                timing, out = measure(call, device=device, repeats=task.repeats, min_time=task.min_time,
                                      budget=max(task.timeout - prepare_s, 0.0))
        except Unsupported as exc:
            return row | {"status": "skipped", "message": f"skipped: {exc}"}
        except CellTimeout as exc:
            return row | {"status": "timeout", "message": str(exc)}
        except Exception as exc:  # noqa: BLE001 - record and go on
            return row | {"status": "error", "message": f"{type(exc).__name__}: {exc}"}

        row.update(
            latency_median_s=timing.median,
            latency_iqr_s=timing.iqr,
            latency_min_s=timing.minimum,
            latency_max_s=timing.maximum,
            spread_pct=100.0 * timing.spread,
            samples=len(timing.samples),
            loops=timing.loops,
            ns_per_option=1e9 * timing.median / task.size,
            throughput_per_s=task.size / timing.median if timing.median > 0 else math.inf,
            prepare_s=prepare_s,
            first_call_s=timing.first_call,
        )
        notes = []
        try:
            estimate, failed, stderr = self._outputs(task, out, row)
            row.update(score(estimate, data.reference, self.metrics, task.floor, failed, data.scale, stderr))
        except Exception as exc:  # noqa: BLE001 - a bad output or a broken metric fails this cell only
            return row | {"status": "error", "message": f"scoring failed: {type(exc).__name__}: {exc}"}
        usable = int(np.isfinite(data.reference).sum())
        if usable and row["failures"] == usable:
            row["status"] = "failed"
            notes.append("no point priced")
        elif task.kind == "price" and row["failures"] and not row.get("message"):
            # pricers return NaN where a point is outside what they can price
            notes.append(f"{row['failures']} of {usable} points not priced (NaN/inf: outside the method's range)")
        if usable < task.size:
            notes.append(f"reference undefined (NaN) at {task.size - usable} points, not scored")
        if timing.noisy:
            notes.append(f"noisy timing: IQR {100 * timing.spread:.0f}% of median")
        if caught:
            notes.append(f"warning: {caught[0].category.__name__}: {caught[0].message}")
        row["message"] = "; ".join(filter(None, [row.get("message", "")] + notes))
        return row

    def _outputs(self, task: Task, out: Any, row: dict) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        """The estimates, the points the method itself flagged as failed, and the
        standard errors if it gave them; ValueError on a bad shape."""
        expected = (task.size,)
        if task.kind == "implied_vol":
            if not isinstance(out, IVResult):
                raise ValueError(f"solve returned {type(out).__name__}, expected IVResult")
            res = out.to_host()
            for field_name in ("sigma", "converged", "iterations", "status"):
                size = np.size(getattr(res, field_name))
                if size != task.size:
                    raise ValueError(f"wrong output shape: IVResult.{field_name} has {size} entries, "
                                     f"expected {task.size}")
            iterations = res.iterations.reshape(-1)
            row["iterations_mean"] = float(np.mean(iterations)) if iterations.size else math.nan
            row["iterations_max"] = int(np.max(iterations)) if iterations.size else 0
            counts = {k: v for k, v in res.summary().items() if k != "converged"}
            if counts:
                row["message"] = "not converged: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
            return res.sigma.reshape(-1).astype(np.float64), ~res.converged.reshape(-1), None
        stderr = None
        if isinstance(out, PriceResult):
            if out.stderr is not None:
                stderr = arrays.to_numpy(out.stderr).astype(np.float64).reshape(-1)
                if stderr.size != task.size:
                    raise ValueError(f"wrong output shape: PriceResult.stderr has {stderr.size} entries, "
                                     f"expected {task.size}")
            if out.reason is not None:
                reasons = np.asarray(out.reason, dtype=object).reshape(-1)
                if reasons.size != task.size:
                    raise ValueError(f"wrong output shape: PriceResult.reason has {reasons.size} entries, "
                                     f"expected {task.size}")
                given, counts = np.unique([str(x) for x in reasons if x], return_counts=True)
                if given.size:
                    row["message"] = "not priced: " + ", ".join(f"{g} {c}" for g, c in zip(given, counts))
            out = out.price
        estimate = arrays.to_numpy(out)
        if estimate.size != task.size or estimate.ndim > 1 and estimate.shape != expected:
            raise ValueError(f"wrong output shape {estimate.shape}, expected {expected}")
        return estimate.reshape(-1).astype(np.float64), None, stderr

    def _speedups(self, task: Task, rows: list[dict[str, Any]]) -> None:
        if task.baseline is None:
            return
        wanted = None if task.baseline_settings is None else json.dumps(task.baseline_settings, sort_keys=True)
        base = next((r for r in rows if r["method"] == task.baseline and r["device"] == "cpu"
                     and (wanted is None or r["settings"] == wanted)
                     and r["status"] in ("ok", "failed") and r.get("latency_median_s")), None)
        for row in rows:
            row["baseline"] = task.baseline
            if base is not None and row.get("latency_median_s"):
                row["speedup"] = base["latency_median_s"] / row["latency_median_s"]


def run(suite: Suite, registry: Registry, **options: Any) -> RunResult:
    """Run ``suite`` with :class:`Runner` options; returns rows and metadata."""
    return Runner(registry, **options).run(suite)
