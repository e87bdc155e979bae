"""Task kinds: what a suite's ``kind = "..."`` means.

A task kind is registered by a plugin (hook ``register_task_kinds``; see
:mod:`bench.hookspecs` for the contract) and owns everything that differs
between kinds: its suite keys and their validation, how the task data is
built (sampling, reference), which timing policy its cells use, how a method
is prepared and called, and how a cell is scored. The suite reader keeps only
the keys common to all kinds and the runner only plans, executes and stores
cells, so adding a kind touches no ``if kind == ...`` anywhere.

The built-in kinds, ``price`` and ``implied_vol``, live in
``pricebench_plugins.kinds``.
"""

from __future__ import annotations

import time
from pathlib import Path
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Mapping

import numpy as np

from bench import arrays, sampling

if TYPE_CHECKING:  # pragma: no cover
    from bench.plugins import Registry
    from bench.suite import MethodSpec, ParseContext, Task

# timing policies a kind can name
REPEAT = "repeat"  # untimed prepare, discarded first call, calibrated loops, median and IQR
ONCE = "once"  # a long step (a fit, a calibration): timed once, reported apart
TIMING_POLICIES = (REPEAT, ONCE)


@dataclass
class TaskData:
    """What every cell of a task shares, built once per task (and sent once to each worker).

    ``params``: the sampled model parameters; ``inputs``: what the methods
    receive; ``reference``: the values cells are scored against;
    ``scale``: a per-point factor for scale-free errors (price tasks);
    ``method_seed``: given to random methods whose ``seed`` the suite leaves
    unset; ``extra``: anything else a kind needs (picklable).
    """

    params: dict[str, np.ndarray]
    inputs: dict[str, np.ndarray]
    reference: np.ndarray
    reference_s: float
    scale: np.ndarray | None = None
    method_seed: int = 0
    extra: dict[str, Any] = field(default_factory=dict)
    # artifacts of earlier tasks that this task's methods require ({"task/file": bytes}; see bench.artifacts)
    artifacts: dict[str, bytes] = field(default_factory=dict)

    def freeze(self) -> "TaskData":
        """Make every array read-only: a method that writes into its inputs must not change
        what later cells (and the scores) see. Arrays arrive writable after pickling, so
        every executor calls this where the cells run."""
        for value in (*self.inputs.values(), *self.params.values(), self.reference):
            if isinstance(value, np.ndarray):
                value.setflags(write=False)
        return self

    @property
    def size(self) -> int:
        return int(np.size(self.reference))


@dataclass
class Seeds:
    """The seeds of one task, all children of its seed sequence (see :func:`bench.runner.task_seed`)."""

    sequence: np.random.SeedSequence
    method: int  # role 0: every candidate (common random numbers across a sweep)
    reference: int  # role 1: the reference, or the pricer of an implied-volatility task

    def rng(self) -> np.random.Generator:
        return np.random.default_rng(self.sequence)


@dataclass
class Scored:
    """A cell's accuracy: its columns, notes for the message, and whether nothing was usable."""

    columns: dict[str, Any]
    notes: list[str] = field(default_factory=list)
    failed: bool = False
    artifacts: dict[str, bytes] = field(default_factory=dict)  # files for the run folder: {file name: bytes}


@dataclass
class RunContext:
    """What a kind's ``build`` may use of the run: where to cache data (None: do not cache)."""

    cache_dir: Path | None = None


class TaskKind:
    """Base of every task kind. Subclasses set the class attributes and override the hooks below."""

    kind: ClassVar[str] = "task_kind"
    name: ClassVar[str] = ""
    version: ClassVar[str] = "1"
    description: ClassVar[str] = ""
    method_kinds: ClassVar[tuple[str, ...]] = ("pricer",)
    timing: ClassVar[str] = REPEAT
    # suite keys this kind adds to the common task keys: key -> type or tuple of types
    keys: ClassVar[Mapping[str, Any]] = {}
    # a short name of what the reference is, for run.json when a task names none
    default_reference: ClassVar[str] = ""

    # ------------------------------------------------------------------ suite
    def parse(self, table: Mapping[str, Any], ctx: "ParseContext") -> dict[str, Any]:
        """Validate this kind's keys of one task table; return its options (picklable).

        Raise ``ctx.error(message, key)`` (a :class:`bench.suite.SuiteError`)
        for the first problem. Common keys are already checked.
        """
        return {}

    def check_method(self, spec: "MethodSpec", cls: type, ctx: "ParseContext", key: str) -> None:
        """Reject a candidate configuration that cannot run this task (raise ``ctx.error``)."""

    def reference_spec(self, task: "Task") -> "MethodSpec | None":
        """The method that makes the reference, if any (for run.json and the cell key)."""
        return task.options.get("reference")

    def helper_specs(self, task: "Task") -> list["MethodSpec"]:
        """The method configurations ``build`` itself runs (a reference, a labelling pricer, the pricer of
        the prices to invert): every :class:`~bench.suite.MethodSpec` among the task's options. The runner
        hands them the artifacts they require (a ``learned`` pricer's fitted file), as it does candidates."""
        from bench.suite import MethodSpec

        return [v for v in task.options.values() if isinstance(v, MethodSpec)]

    # ------------------------------------------------------------------ data
    def build(self, task: "Task", seeds: Seeds, registry: "Registry") -> TaskData:  # pragma: no cover
        """Sample the task's points and compute what every cell shares (untimed, once per task).

        A kind whose ``build`` also takes ``run`` (a :class:`RunContext`) gets the run's cache folder."""
        raise NotImplementedError

    # ------------------------------------------------------------------ cells
    def prepare(self, method: Any, task: "Task", data: TaskData, device: str,
                registry: "Registry") -> Callable[[], Any]:  # pragma: no cover
        """Untimed set-up of ``method`` for this task on ``device``; returns the call to time."""
        raise NotImplementedError

    def score(self, task: "Task", data: TaskData, out: Any, metrics: Mapping[str, Any]) -> Scored:  # pragma: no cover
        """Score the output of the last timed call against ``data.reference``.

        Raise ValueError for an output of the wrong type or shape (the cell
        becomes an ``error`` row naming it)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ after the run
    def finish(self, task: "Task", rows: list[dict[str, Any]], run_rows: list[dict[str, Any]],
               directory: Path | None) -> dict[str, bytes]:
        """Once every cell of the run is done: add columns to this task's ``rows`` that need other
        tasks' rows (``run_rows``), and return summary files for the run folder ({name: bytes})."""
        return {}

    def __repr__(self) -> str:
        return f"<task kind {self.name!r}>"


# --------------------------------------------------------------------------- helpers for kinds


def sample_params(task: "Task", rng: np.random.Generator, registry: "Registry") -> dict[str, np.ndarray]:
    """The task's points: fixed values and sampled ranges, validated by the model."""
    points = sampling.sample(task.domain, task.n, task.sampler, rng, task.sampler_options)
    raw = {k: np.full(task.size, v) for k, v in task.fixed.items()} | points
    model = registry.model(task.model)
    return {k: np.ascontiguousarray(v) for k, v in model.validate(raw).items()}


def with_seed(cls: type, settings: Mapping[str, Any], seed: int) -> dict[str, Any]:
    """``settings`` plus ``seed`` when the method has a ``seed`` setting left unset (None)."""
    if "seed" in getattr(cls, "settings", {}) and settings.get("seed") is None:
        return dict(settings, seed=seed)
    return dict(settings)


def price_with(spec: "MethodSpec", registry: "Registry", model_name: str, product: str,
               params: Mapping[str, np.ndarray], seed: int) -> np.ndarray:
    """Prices of the batch by a pricer configuration on the CPU (references, prices to invert)."""
    from bench.methods import PriceResult

    cls = registry.get("pricer", spec.name)
    pricer = cls(**with_seed(cls, spec.settings, seed))
    out = pricer.price(pricer.prepare(registry.model(model_name), product, params, "cpu"))
    if isinstance(out, PriceResult):
        out = out.price
    return arrays.to_numpy(out).astype(np.float64).reshape(-1)


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    """``fn()`` and the seconds it took (reference computations, fits)."""
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0

