"""A cell: one (task, method configuration, device), and the row it becomes.

- :class:`CellSpec` is frozen and picklable: everything a worker process or a
  dask worker needs besides the task's shared data.
- :func:`execute_cell` is the one way a cell runs, whatever the executor: it
  builds the method, lets the task kind prepare it (untimed), times the call
  with the kind's timing policy under pinned threads while recording the
  machine's load, and scores the output. It never raises: a failing method is
  a row with a status and a reason.
- :class:`CellResult` is the one definition of a leaderboard row: its fields
  are the CSV columns (registered metrics are inserted after
  ``failure_rate``), in order.

Statuses: ``ok``; ``failed`` (no point priced or converged); ``error`` (the
method raised or returned the wrong shape); ``timeout``; ``crashed`` (the
worker process died: a segfault, ``os._exit``, the kernel's OOM killer);
``skipped`` (no GPU, a device or backend the method lacks).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import time
import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np

from bench import arrays, artifacts, calibration, environment
from bench.kinds import ONCE, TaskData, with_seed
from bench.methods import Unsupported
from bench.timing import CellTimeout, deadline, measure, measure_once

if TYPE_CHECKING:  # pragma: no cover
    from bench.plugins import Registry
    from bench.suite import MethodSpec, Task

def settings_json(settings: Mapping[str, Any]) -> str:
    return json.dumps(dict(settings), sort_keys=True)


def cell_key(task: "Task", seed_entropy: str, method: str, version: str, settings: Mapping[str, Any],
             device: str) -> str:
    """A stable hash of what determines a cell: the task's definition and data seed, the method,
    its version and settings, and the device. Two runs' cells with one key are the same experiment."""
    blob = json.dumps({"task": task.name, "definition": task.definition(), "seed": seed_entropy, "method": method,
                       "version": version, "settings": dict(settings), "device": device},
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


STEM_LENGTH = 64  # characters of a stem: room for ".<device>.<artifact name>" within a file name's 100


def cell_stems(task: "Task") -> dict[int, str]:
    """What each method configuration's artifact files are named after, by its index in ``task.methods``:
    its label if the suite gives one, else its name, made safe for a file name and cut to ``STEM_LENGTH``;
    where that leaves two configurations of the task one stem (a name or label shared by a sweep, or two
    labels that differ only in characters a file name cannot hold), each of them gets a hash of its
    settings appended. A ``fitted = "task/<stem>"`` reference names one."""
    from bench.atomic import safe_name

    base = [safe_name(spec.label or spec.name)[:STEM_LENGTH] for spec in task.methods]
    stems = {}
    for i, spec in enumerate(task.methods):
        if base.count(base[i]) == 1:
            stems[i] = base[i]
        else:
            # unlabelled: the hash of the settings alone (the names earlier runs gave these files)
            text = settings_json(spec.settings)
            if spec.label:
                text = f"{spec.name}:{spec.label}:{text}"
            digest = hashlib.sha256(text.encode()).hexdigest()
            stems[i] = f"{base[i][:STEM_LENGTH - 9]}-{digest[:8]}"
    return stems


@dataclass(frozen=True)
class CellSpec:
    """One cell, ready to run anywhere: the task, the method configuration, the device, the seeds."""

    suite: str
    run_id: str
    task: "Task"
    method: str
    method_kind: str
    method_version: str
    plugin: str
    settings: Mapping[str, Any]
    label: str
    device: str
    method_seed: int
    seed_entropy: str
    threads: int
    key: str
    save_outputs: bool = False
    stem: str = ""  # what the cell's artifact files are named after (see cell_stems)

    @classmethod
    def create(cls, *, suite: str, run_id: str, task: "Task", spec: "MethodSpec", device: str, version: str,
               plugin: str, method_seed: int, seed_entropy: str, threads: int, resolved: Mapping[str, Any],
               save_outputs: bool = False, stem: str = "") -> "CellSpec":
        """``resolved``: every setting with its default filled in, so ``cos`` and ``cos`` with its
        default ``N`` given are one experiment (one key)."""
        key = cell_key(task, seed_entropy, spec.name, version, resolved, device)
        return cls(suite, run_id, task, spec.name, spec.kind, version, plugin, dict(spec.settings), spec.label,
                   device, method_seed, seed_entropy, threads, key, save_outputs, stem or spec.name)

    @property
    def title(self) -> str:
        return f"{self.task.name} · {self.method} · {self.device}"


_METRICS_AFTER = "failure_rate"  # registered metrics' columns come right after this field
_NOT_COLUMNS = ("timing_samples", "scores", "outputs", "artifact_data")


@dataclass
class CellResult:
    """A leaderboard row. Field order is column order; see README "Leaderboard columns"."""

    suite: str = ""
    run_id: str = ""
    task: str = ""
    kind: str = ""
    model: str = ""
    product: str = ""
    n: int = 0
    method: str = ""
    method_version: str = ""
    plugin: str = ""
    settings: str = "{}"
    label: str = ""
    device: str = "cpu"
    status: str = "ok"
    message: str = ""
    failures: float = math.nan
    failure_rate: float = math.nan
    # (registered metrics here)
    max_err_s100: float = math.nan
    tier: float = math.nan
    latency_median_s: float = math.nan
    latency_iqr_s: float = math.nan
    latency_min_s: float = math.nan
    latency_max_s: float = math.nan
    spread_pct: float = math.nan
    samples: float = math.nan
    loops: float = math.nan
    ns_per_option: float = math.nan
    throughput_per_s: float = math.nan
    prepare_s: float = math.nan
    first_call_s: float = math.nan
    baseline: str | None = None
    speedup: float = math.nan
    iterations_mean: float = math.nan
    iterations_max: float = math.nan
    stderr_mean: float = math.nan
    stderr_max: float = math.nan
    z_max: float = math.nan
    within_3se: float = math.nan
    # schema 2
    once_s: float = math.nan  # timing policy "once": the single timed call (a fit, a calibration)
    calibration_s: float = math.nan  # the calibration workload timed right after this cell (cpu cells)
    cell_key: str = ""
    host: str = ""
    threads: float = math.nan
    load_1m: float = math.nan
    others_cpu: float = math.nan
    cpu_share: float = math.nan
    busy: bool | None = None
    executor: str = ""
    exit_code: float = math.nan
    wall_s: float = math.nan
    artifacts: str = ""  # files the cell made, relative to the run folder ("; "-separated)
    # not columns: the raw timing samples (stored apart) and kind-specific or metric columns
    timing_samples: list[float] = field(default_factory=list, repr=False)
    scores: dict[str, Any] = field(default_factory=dict)
    outputs: dict[str, np.ndarray] = field(default_factory=dict, repr=False)  # --save-outputs
    artifact_data: dict[str, bytes] = field(default_factory=dict, repr=False)  # {file name: bytes}

    @classmethod
    def columns(cls, metric_names: list[str] | tuple[str, ...] = ()) -> list[str]:
        names = [f.name for f in dataclasses.fields(cls) if f.name not in _NOT_COLUMNS]
        cut = names.index(_METRICS_AFTER) + 1
        return names[:cut] + list(metric_names) + names[cut:]

    @classmethod
    def for_cell(cls, spec: CellSpec, **values: Any) -> "CellResult":
        task = spec.task
        row = cls(suite=spec.suite, run_id=spec.run_id, task=task.name, kind=task.kind, model=task.model,
                  product=task.product, n=task.size, method=spec.method, method_version=spec.method_version,
                  plugin=spec.plugin, settings=settings_json(spec.settings), label=spec.label, device=spec.device,
                  cell_key=spec.key, host=environment.host_name(), threads=spec.threads)
        row.update(values)
        return row

    def update(self, values: Mapping[str, Any]) -> "CellResult":
        """Set fields by name; names that are not fields (metrics, a kind's own columns) go to ``scores``."""
        names = {f.name for f in dataclasses.fields(self)}
        for key, value in values.items():
            if key in names and key not in _NOT_COLUMNS:
                setattr(self, key, value)
            else:
                self.scores[key] = value
        return self

    def as_row(self) -> dict[str, Any]:
        """The row as a flat dict (what the CSV, the console and ``RunResult.rows`` hold)."""
        row = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in _NOT_COLUMNS}
        row.update(self.scores)
        return row

    def add_note(self, note: str) -> None:
        if note:
            self.message = "; ".join(filter(None, [self.message, note]))


def execute_cell(spec: CellSpec, data: TaskData, registry: "Registry | None" = None,
                 executor: str = "serial") -> CellResult:
    """Run one cell on the task's shared data; never raises (every outcome is a row)."""
    from bench.plugins import get_registry

    registry = registry or get_registry()
    started = time.perf_counter()
    row = CellResult.for_cell(spec, executor=executor)
    try:
        _execute(spec, data, registry, row)
    except (Exception, SystemExit) as exc:  # noqa: BLE001 - a broken kind or plugin fails this cell only
        what = f"called sys.exit({exc.code!r})" if isinstance(exc, SystemExit) else f"{type(exc).__name__}: {exc}"
        row.update({"status": "error", "message": what})
    row.wall_s = time.perf_counter() - started
    return row


def _execute(spec: CellSpec, data: TaskData, registry: "Registry", row: CellResult) -> None:
    task, device = spec.task, spec.device
    cls = registry.get(spec.method_kind, spec.method)
    if not cls.supports_device(device):  # first: a method without a GPU path is not waiting for a GPU
        row.update({"status": "skipped", "message": f"skipped: {spec.method} has no {device} path"})
        return
    if device == "cuda" and not arrays.cuda_available():
        row.update({"status": "skipped", "message": "skipped: no GPU"})
        return
    kind = registry.task_kind(task.kind)
    metrics = {name: registry.get("metric", name)() for name in registry.names("metric")}
    data.freeze()
    caught: list[warnings.WarningMessage] = []
    monitor = environment.LoadMonitor(spec.threads)
    timer = None
    try:
        with environment.limit_threads(spec.threads), warnings.catch_warnings(record=True) as caught, \
                artifacts.provided(data.artifacts), deadline(task.timeout) as timer:
            warnings.simplefilter("once")  # each distinct warning once: cheap inside the timed loop
            method = cls(**with_seed(cls, spec.settings, spec.method_seed))
            t0 = time.perf_counter()
            call = kind.prepare(method, task, data, device, registry)
            arrays.synchronize(device)
            prepare_s = time.perf_counter() - t0
            probe = kind.timing != ONCE and device == "cpu"
            before = calibration.measure_next_to_cell() if probe else math.nan
            with monitor:
                if kind.timing == ONCE:
                    timing, out = measure_once(call, device=device)
                else:
                    timing, out = measure(call, device=device, repeats=task.repeats, min_time=task.min_time,
                                          budget=max(task.timeout - prepare_s, 0.0))
            if probe:
                # the faster of the timings just before and just after: the cell's own after-effects (a
                # lower clock after wide vector code, a fragmented heap) touch only the second
                row.calibration_s = min(before, calibration.measure_next_to_cell())
    except Unsupported as exc:
        row.update({"status": "skipped", "message": f"skipped: {exc}"})
        return
    except CellTimeout as exc:
        why = timer.diagnose(time.monotonic()) if timer is not None else ""
        row.update({"status": "timeout", "message": "; ".join(filter(None, [str(exc), why]))})
        return
    except Exception as exc:  # noqa: BLE001 - record and go on
        row.update({"status": "error", "message": f"{type(exc).__name__}: {exc}"})
        return
    if timer is not None and timer.fired:
        # the timer fired, yet the block ended normally: the method caught CellTimeout
        why = timer.diagnose(time.monotonic()) or "the method caught the timeout (swallowed)"
        row.update({"status": "timeout", "message": f"exceeded the {task.timeout:g} s per-cell timeout; {why}"})
        return

    row.update(monitor.values)
    row.timing_samples = list(timing.samples)
    if kind.timing == ONCE:
        row.update({"once_s": timing.median, "prepare_s": prepare_s})
    else:
        row.update({
            "latency_median_s": timing.median, "latency_iqr_s": timing.iqr, "latency_min_s": timing.minimum,
            "latency_max_s": timing.maximum, "spread_pct": 100.0 * timing.spread, "samples": len(timing.samples),
            # per option of what was timed: the task's points (an approximate task's test sets)
            "loops": timing.loops, "ns_per_option": 1e9 * timing.median / max(data.size, 1),
            "throughput_per_s": data.size / timing.median if timing.median > 0 else math.inf,
            "prepare_s": prepare_s, "first_call_s": timing.first_call,
        })
    try:
        scored = kind.score(task, data, out, metrics)
    except Exception as exc:  # noqa: BLE001 - a bad output or a broken metric fails this cell only
        row.update({"status": "error", "message": f"scoring failed: {type(exc).__name__}: {exc}"})
        return
    row.update(scored.columns)
    row.artifact_data = {f"{spec.stem}.{spec.device}.{name}": data for name, data in scored.artifacts.items()}
    if spec.save_outputs:
        row.outputs = _output_arrays(out)
    notes = list(scored.notes)
    usable = int(np.isfinite(data.reference).sum())
    failures = row.failures
    if scored.failed or (usable and failures == usable):
        row.status = "failed"
        notes.append("no point priced")
    if usable < data.size:
        notes.append(f"reference undefined (NaN) at {data.size - usable} points, not scored")
    if timing.noisy:
        notes.append(f"noisy timing: IQR {100 * timing.spread:.0f}% of median")
    notes.append(monitor.note())
    if caught:
        notes.append(f"warning: {caught[0].category.__name__}: {caught[0].message}")
    for note in notes:
        row.add_note(note)


def _output_arrays(out: Any) -> dict[str, np.ndarray]:
    """A cell's outputs as named host arrays (``--save-outputs``)."""
    if dataclasses.is_dataclass(out):
        values = {f.name: getattr(out, f.name) for f in dataclasses.fields(out)}
    else:
        values = {"value": out}
    result = {}
    for name, value in values.items():
        if value is None:
            continue
        array = arrays.to_numpy(value)
        if array.dtype == object:
            array = array.astype(str)
        result[name] = np.asarray(array)
    return result

