"""Run a suite, top-down:

    plan cells -> build each task's data once -> hand cells to an executor
    -> store each row as it finishes -> speed-ups -> report

A cell is one (task, method configuration, device) and becomes one row
(:class:`bench.cells.CellResult`) with a status; a failing cell never stops
the run. Task kinds (:mod:`bench.kinds`) decide how data is built, how a
method is called and timed, and how a cell is scored; executors
(:mod:`bench.executors`) decide where cells run; the results store
(:mod:`bench.store`) appends each row the moment it finishes, so an
interrupted run keeps every finished cell and ``resume`` completes it.
"""

from __future__ import annotations

import fnmatch
import hashlib
import inspect
import json
import math
import time
import zlib
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from bench import artifacts, atomic, calibration, environment, executors, report
from bench.cells import CellResult, CellSpec, cell_stems
from bench.kinds import RunContext, Seeds, TaskData
from bench.plugins import Registry
from bench.store import SCHEMA_VERSION, RunStore, StoreError, new_run_id
from bench.suite import MethodSpec, Suite, SuiteError, Task

__all__ = ["Runner", "RunResult", "RunInterrupted", "run", "task_seed", "method_seed", "SCHEMA_VERSION",
           "new_run_id"]

DEVICE_CHOICES = ("default", "cpu", "cuda", "all")
DEFAULT_THREADS = 1
TABLE_INTERVAL_S = 2.0


def seeds_text(seeds: Seeds) -> str:
    return f"{seeds.sequence.entropy}:{tuple(seeds.sequence.spawn_key)}"


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


def plugin_versions(registry: Registry) -> list[dict[str, Any]]:
    """Every plugin the run loaded (built-in and third-party): its name, version, where it came from
    (an entry point's distribution, a file, an object), what it registers, and why it was skipped."""
    return [{"name": p.name, "version": p.version, "source": p.source,
             "registers": [f"{kind}:{name}" for kind, name in p.registered], "error": p.error}
            for p in registry.plugins]


def suite_hash(suite: Suite) -> str:
    """A hash of what the suite's tasks define (resume checks it is the same suite)."""
    blob = json.dumps([[t.name, t.definition(), t.seed, [[m.name, dict(m.settings), list(m.devices)] for m in t.methods],
                        t.baseline, t.baseline_settings] for t in suite.tasks], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


@dataclass
class RunResult:
    suite: Suite
    run_id: str
    directory: Path | None
    rows: list[dict[str, Any]] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C during a run; carries what was saved."""

    def __init__(self, result: RunResult, planned: int):
        super().__init__()
        self.result, self.planned = result, planned

    @property
    def message(self) -> str:
        done = len(self.result.rows)
        if self.result.directory is None:
            return f"interrupted after {done} of {self.planned} cells; nothing is saved (no output folder)"
        return (f"interrupted: {done} of {self.planned} cells are saved in {self.result.directory} "
                f"(rows.jsonl, leaderboard.csv); complete the run with: pricebench run "
                f"{self.result.suite.path} --resume {self.result.directory}")


def speedups(rows: list[dict[str, Any]], task: Task) -> None:
    """Speed-up of each row against the task's baseline measured on the same host (CPU).

    The baseline configuration is the one the suite names, else the baseline method's first
    configuration in the task's order: never whichever cell happened to finish first."""
    if task.baseline is None:
        return
    settings = task.baseline_settings
    if settings is None:
        settings = next(dict(m.settings) for m in task.methods if m.name == task.baseline)
    wanted = json.dumps(settings, sort_keys=True)
    bases = {}
    for r in rows:
        median = r.get("latency_median_s")
        if (r["method"] == task.baseline and r["device"] == "cpu" and r["settings"] == wanted
                and r["status"] in ("ok", "failed") and median and median == median):
            bases[r.get("host", "")] = r
    for row in rows:
        row["baseline"] = task.baseline
        base = bases.get(row.get("host", ""))
        median = row.get("latency_median_s")
        if base is not None and median and median == median:
            row["speedup"] = base["latency_median_s"] / median


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
        executor: str = "serial",
        executor_options: dict[str, Any] | None = None,
        save_outputs: bool = False,
        resume: str | Path | None = None,
        cache_dir: str | Path | None = None,
        on_start: Callable[[int], None] | None = None,
        on_cell: Callable[[dict[str, Any]], None] | None = None,
        on_task: Callable[[Task, list[dict[str, Any]]], None] | None = None,
    ) -> None:
        if device not in DEVICE_CHOICES:
            raise ValueError(f"device must be one of {', '.join(DEVICE_CHOICES)}, got {device!r}")
        executors.check_name(executor)
        self.registry = registry
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.device = device
        self.task_patterns = list(tasks)
        self.method_patterns = list(methods)
        self.seed = seed
        self.threads = threads
        self.executor = executor
        self.executor_options = dict(executor_options or {})
        self.save_outputs = save_outputs
        self.resume = Path(resume) if resume is not None else None
        # labelled training data and the like: --cache-dir, else the resumed run's, else <out>/cache, else none
        self._cache_given = cache_dir is not None
        if cache_dir is None and self.out_dir is not None:
            cache_dir = self.out_dir / "cache"
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self._artifacts: dict[str, bytes] = {}
        self.on_start, self.on_cell, self.on_task = on_start, on_cell, on_task

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
            # every device the method has a path for: a CPU-only method gets no cuda row (naming cuda
            # itself, in a suite or with --device cuda, still gives a row that says it has none)
            cls = self.registry.get(spec.kind, spec.name)
            return tuple(d for d in ("cpu", "cuda") if cls.supports_device(d)) or ("cpu",)
        return (self.device,)

    def plan(self, suite: Suite) -> list[tuple[Task, list[tuple[MethodSpec, str]]]]:
        plan = []
        for task in self.selected_tasks(suite):
            cells = [(spec, dev) for spec in self.selected_methods(task) for dev in self.devices_for(task, spec)]
            if cells:
                plan.append((task, cells))
        return plan

    def threads_for(self, suite: Suite) -> int:
        """Threads per cell: --threads, else the suite's, else 1 (pinned: timings do not depend on load)."""
        return self.threads or suite.threads or DEFAULT_THREADS

    def cell_specs(self, suite: Suite, run_id: str) -> list[tuple[Task, Seeds, list[CellSpec]]]:
        out = []
        for task, cells in self.plan(suite):
            seeds = self.task_seeds(suite, task)
            entropy = seeds_text(seeds)
            specs = []
            stems = cell_stems(task)
            for spec, device in cells:
                entry = self.registry.entry(spec.kind, spec.name)
                specs.append(CellSpec.create(
                    suite=suite.name, run_id=run_id, task=task, spec=spec, device=device, version=entry.cls.version,
                    plugin=entry.plugin, method_seed=seeds.method, seed_entropy=entropy,
                    threads=self.threads_for(suite), resolved=entry.cls.resolve_settings(spec.settings),
                    save_outputs=self.save_outputs, stem=stems[task.methods.index(spec)]))
            out.append((task, seeds, specs))
        return out

    # ------------------------------------------------------------------ task data
    def task_seeds(self, suite: Suite, task: Task) -> Seeds:
        """The task's seed sequence and the seeds it gives its candidates and its reference."""
        seq = task_seed(suite.seed, task, self.seed)
        return Seeds(seq, method_seed(seq), method_seed(seq, role=1))

    def prepare_task(self, suite: Suite, task: Task) -> TaskData:
        """The data every cell of ``task`` shares (points, inputs, reference), read-only."""
        return self._build(task, self.task_seeds(suite, task), suite)

    def _build(self, task: Task, seeds: Seeds, suite: Suite) -> TaskData:
        kind = self.registry.task_kind(task.kind)
        extra = {}
        if "run" in inspect.signature(kind.build).parameters:
            extra["run"] = RunContext(cache_dir=self.cache_dir)
        available = {ref: self._artifacts[ref] for ref in self.required(task) if ref in self._artifacts}
        with environment.limit_threads(self.threads or suite.threads), artifacts.provided(available):
            data = kind.build(task, seeds, self.registry, **extra)
        data.artifacts = available
        return data.freeze()

    def required(self, task: Task) -> list[str]:
        """The artifacts of earlier tasks that ``task``'s methods, and the methods its kind runs in
        ``build``, need (``"task/file"``)."""
        refs = []
        helpers = self.registry.task_kind(task.kind).helper_specs(task)
        for spec in [*self.selected_methods(task), *helpers]:
            cls = self.registry.get(spec.kind, spec.name)
            refs += [r for r in cls.requires(spec.settings) if r not in refs]
        return refs

    # ------------------------------------------------------------------ the run
    def run(self, suite: Suite) -> RunResult:
        plan = self.plan(suite)
        if not plan:
            raise ValueError("no task and method match the --task/--method filters")
        resumed = self._check_resume(suite)
        self._progress: tuple[RunResult, int, RunStore | None] | None = None
        try:
            # the executor starts before anything is written: a scheduler it cannot reach writes nothing
            with executors.create(self.executor, self.registry, threads=self.threads_for(suite),
                                  **self.executor_options) as executor:
                return self._run(suite, executor, resumed)
        except KeyboardInterrupt:
            if self._progress is None:
                raise
            result, planned, store = self._progress
            if result.metadata.get("status") != "finished":
                result.metadata["status"] = "interrupted"
                self._save_tables(store, result, force=True)
                self._save_meta(store, result.metadata)
            raise RunInterrupted(result, planned) from None
        finally:
            for held in (resumed, self._progress[2] if self._progress else None):
                if held is not None:
                    held.unlock()

    def _run(self, suite: Suite, executor: executors.Executor, resumed: RunStore | None) -> RunResult:
        store, run_id, meta, done = self._open_store(suite, resumed)
        result = RunResult(suite, run_id, store.directory if store else None, metadata=meta)
        work = self.cell_specs(suite, run_id)
        planned = sum(len(specs) for _, _, specs in work)
        if store is not None:
            result.rows = store.rows()
        todo = [(task, seeds, [s for s in specs if s.key not in done]) for task, seeds, specs in work]
        todo = [(task, seeds, specs) for task, seeds, specs in todo if specs]
        meta["cells_planned"] = planned
        meta["executor"] = executor.describe()
        plugins = plugin_versions(self.registry)
        if meta.get("plugins", plugins) != plugins:  # resumed with other plugins: keep what the first cells ran with
            meta.setdefault("plugins_before_resume", meta["plugins"])
        meta["plugins"] = plugins
        if self.on_start:
            self.on_start(sum(len(specs) for _, _, specs in todo))
        remaining = {task.name: len(specs) for task, _, specs in todo}
        tasks = {task.name: task for task, _, _ in work}
        self._progress = (result, planned, store)
        meta["task_seeds"] = {task.name: seeds_text(seeds) for task, seeds, _ in work}
        if "calibration" not in meta:  # a resumed run keeps the measurement its first cells were taken with
            meta["calibration"] = calibration.summary(calibration.measure_workload(self.threads_for(suite)))
        self._save_meta(store, meta)
        for task, seeds, specs in todo:
            if self.required(task):
                # the artifacts it needs come from earlier tasks: finish every cell handed out so far
                for row in executor.results(wait=True):
                    self._finish_cell(row, store, result, remaining, tasks)
                if store is not None:
                    for name in {artifacts.task_of(r) for r in self.required(task)}:
                        for ref, data in store.read_artifacts(name).items():
                            self._artifacts.setdefault(ref, data)
            data = self._task_data(task, seeds, specs, meta, store, result, remaining, suite)
            if data is not None:
                executor.submit(data, specs)
                for row in executor.results(wait=False):
                    self._finish_cell(row, store, result, remaining, tasks)
        for row in executor.results(wait=True):
            self._finish_cell(row, store, result, remaining, tasks)
        for task in tasks.values():
            if remaining.get(task.name, 0) == 0 and task.name in {r["task"] for r in result.rows}:
                speedups([r for r in result.rows if r["task"] == task.name], task)
        self._finish_tasks(tasks, store, result)
        meta["calibration"] = calibration.summary(meta["calibration"]["before"],
                                                  calibration.measure_workload(self.threads_for(suite)))
        meta["status"] = "finished"
        meta["finished"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        self._save_tables(store, result, force=True)
        self._save_meta(store, meta)
        return result

    def _check_resume(self, suite: Suite) -> RunStore | None:
        """The run to complete, checked to be of this suite and seed (reads only)."""
        if self.resume is None:
            return None
        try:
            store = RunStore.open(self.resume)
            meta = store.metadata()
            store.lock_and_repair()
        except StoreError as exc:
            raise SuiteError(self.resume, f"--resume: {exc}") from None
        if not self._cache_given and meta.get("cache_dir"):
            self.cache_dir = Path(meta["cache_dir"])  # the cache the run labelled into
        ours = {task.name: seeds_text(self.task_seeds(suite, task)) for task, _ in self.plan(suite)}
        theirs = meta.get("task_seeds", {})
        changed = sorted(name for name in ours.keys() & theirs.keys() if ours[name] != theirs[name])
        if changed:
            store.unlock()
            raise SuiteError(self.resume, f"--resume: task {changed[0]!r} draws from another seed than that run did "
                             "(was --seed given to one and not the other?); resume with the same seed")
        seed = self.seed if self.seed is not None else suite.seed
        for what, theirs, ours in (("suite", meta.get("suite"), suite.name),
                                   ("seed", meta.get("seed"), seed),
                                   ("suite definition", meta.get("suite_hash"), suite_hash(suite))):
            if theirs != ours:
                store.unlock()
                raise SuiteError(self.resume, f"--resume: that run is of {what} {theirs!r}, this one of "
                                 f"{ours!r}; resume it with the same suite and seed")
        return store

    def _open_store(self, suite: Suite, resumed: RunStore | None
                    ) -> tuple[RunStore | None, str, dict[str, Any], set[str]]:
        if resumed is not None:
            store = resumed
            meta = store.metadata()
            meta["resumed"] = meta.get("resumed", []) + [datetime.now(timezone.utc).isoformat(timespec="seconds")]
            meta["status"] = "running"
            return store, meta["run_id"], meta, store.done_keys()
        if self.out_dir is None:
            run_id = new_run_id()
            store = None
        else:
            store, run_id = RunStore.create(self.out_dir, suite.name)
            store.lock()
        meta = {
            "schema_version": SCHEMA_VERSION,
            "run_id": run_id,
            "status": "running",
            "suite": suite.name,
            "suite_path": str(Path(suite.path).resolve()),  # absolute: resume and show work from anywhere
            "suite_hash": suite_hash(suite),
            "suite_description": suite.description,
            "seed": self.seed if self.seed is not None else suite.seed,
            "threads": self.threads_for(suite),
            "filters": {"tasks": self.task_patterns, "methods": self.method_patterns, "device": self.device},
            "cache_dir": str(self.cache_dir.resolve()) if self.cache_dir is not None else None,
            "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "finished": None,
            "machine": environment.describe() | {"host": environment.host_name()},
            "files": {"rows": "rows.jsonl", "samples": "samples.jsonl", "leaderboard": report.CSV_NAME},
            "tasks": {},
        }
        return store, run_id, meta, set()

    def _task_data(self, task: Task, seeds: Seeds, specs: list[CellSpec], meta: dict, store: RunStore | None,
                   result: RunResult, remaining: dict[str, int], suite: Suite) -> TaskData | None:
        try:
            data = self._build(task, seeds, suite)
        except Exception as exc:  # noqa: BLE001 - the task fails, the run goes on
            message = f"building the task data (sampling, reference) failed: {type(exc).__name__}: {exc}"
            meta["tasks"][task.name] = {"error": message}
            for spec in specs:
                self._finish_cell(CellResult.for_cell(spec, status="error", message=message, executor=self.executor),
                                  store, result, remaining, {task.name: task})
            return None
        kind = self.registry.task_kind(task.kind)
        reference = kind.reference_spec(task)
        meta["tasks"][task.name] = {
            "kind": task.kind,
            "n": task.size,
            "reference": reference.name if reference else kind.default_reference,
            "reference_settings": dict(reference.settings) if reference else {},
            "reference_s": data.reference_s,
            "definition": task.definition(),  # what its cells' keys hash: compare names what changed
            "seed_entropy": str(seeds.sequence.entropy),
            "method_seed": data.method_seed,
            "timing": kind.timing,
        }
        self._save_meta(store, meta)
        return data

    def _finish_tasks(self, tasks: dict[str, Task], store: RunStore | None, result: RunResult) -> None:
        """Each kind's last word once every cell is done: columns that need other tasks' rows, summaries."""
        for task in tasks.values():
            rows = [r for r in result.rows if r["task"] == task.name]
            if not rows:
                continue
            kind = self.registry.task_kind(task.kind)
            try:
                files = kind.finish(task, rows, result.rows, store.directory if store else None)
            except Exception as exc:  # noqa: BLE001 - a summary must not cost the results
                result.metadata["tasks"].setdefault(task.name, {})["finish_error"] = f"{type(exc).__name__}: {exc}"
                continue
            if files and store is not None:
                written = store.write_artifacts(task.name, files)
                result.metadata["tasks"].setdefault(task.name, {})["summaries"] = written

    def _finish_cell(self, row: CellResult, store: RunStore | None, result: RunResult, remaining: dict[str, int],
                     tasks: dict[str, Task]) -> None:
        for name, data in row.artifact_data.items():
            self._artifacts[f"{row.task}/{atomic.safe_name(name)}"] = data
        if store is not None:
            store.append(row)
        as_row = row.as_row()
        result.rows.append(as_row)
        if self.on_cell:
            self.on_cell(as_row)
        remaining[row.task] = remaining.get(row.task, 1) - 1
        if remaining[row.task] == 0:
            task = tasks[row.task]
            task_rows = [r for r in result.rows if r["task"] == row.task]
            speedups(task_rows, task)
            if self.on_task:
                self.on_task(task, task_rows)
            self._save_plot(store, result, task, task_rows)
        self._save_tables(store, result, force=remaining[row.task] == 0)

    # ------------------------------------------------------------------ files
    def _save_meta(self, store: RunStore | None, meta: dict) -> None:
        if store is not None:
            store.write_metadata(meta)

    def _save_tables(self, store: RunStore | None, result: RunResult, force: bool = False) -> None:
        """Rewrite leaderboard.csv and targets.csv (derived from rows.jsonl, the record): at the end of
        every task and at most every TABLE_INTERVAL_S seconds in between, so a run of many tiny cells
        does not spend its time rewriting tables."""
        if store is None:
            return
        now = time.monotonic()
        if not force and now - getattr(self, "_tables_at", -math.inf) < TABLE_INTERVAL_S:
            return
        self._tables_at = now
        metrics = sorted(self.registry.names("metric"))
        report.write_csv(store.directory / report.CSV_NAME, result.rows, metrics)
        report.write_targets(store.directory / report.TARGETS_NAME, result.rows)

    def _save_plot(self, store: RunStore | None, result: RunResult, task: Task, rows: list[dict[str, Any]]) -> None:
        if store is None:
            return
        path = atomic.inside(store.directory, task.name, ".png")
        entry = result.metadata["tasks"].setdefault(task.name, {})
        try:
            if report.plot_work_precision(path, task.name, rows):
                entry["plot"] = path.name
        except Exception as exc:  # noqa: BLE001 - a plot must not cost the results
            entry["plot_error"] = f"{type(exc).__name__}: {exc}"
        self._save_meta(store, result.metadata)


def run(suite: Suite, registry: Registry, **options: Any) -> RunResult:
    """Run ``suite`` with :class:`Runner` options; returns rows and metadata."""
    return Runner(registry, **options).run(suite)
