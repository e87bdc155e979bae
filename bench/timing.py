"""Time one batch call the way pyperf and torch.utils.benchmark do.

The first call is discarded (lazy initialisation, caches, CUDA context);
the number of calls per sample is calibrated so a sample lasts at least
``min_time`` (timer resolution and call overhead stop mattering); then
``repeats`` samples, more while the spread is large and time allows; the
median is reported with the interquartile range. On a GPU the device is
synchronised before the clock is read. A cell that exceeds its time budget
is interrupted (SIGALRM, main thread) or stopped between calls.
"""

from __future__ import annotations

import contextlib
import math
import signal
import statistics
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from bench import arrays

# a sample whose interquartile range exceeds this fraction of the median is noisy
NOISY_SPREAD = 0.10


class CellTimeout(BaseException):
    """The cell ran past its time budget.

    A BaseException, like KeyboardInterrupt, so that a method's own
    ``except Exception`` cannot swallow it.
    """


@dataclass
class Timing:
    median: float
    iqr: float
    minimum: float
    maximum: float
    samples: list[float] = field(default_factory=list)
    loops: int = 1
    first_call: float = math.nan

    @property
    def spread(self) -> float:
        """Interquartile range relative to the median."""
        return self.iqr / self.median if self.median > 0 else math.nan

    @property
    def noisy(self) -> bool:
        return self.spread > NOISY_SPREAD


@dataclass
class Deadline:
    """What :func:`deadline` knows afterwards: whether it could arm a timer, and whether it fired.

    A timer that fired inside a block that still ended normally means the
    method swallowed :class:`CellTimeout`, or ran in compiled code that only
    let Python's signal handler run when it returned."""

    seconds: float
    armed: bool = False
    fired: bool = False
    started: float = 0.0
    fired_at: float = math.nan  # time.monotonic() when the handler ran

    def diagnose(self, ended: float) -> str:
        """Why a cell that timed out ran well past its timeout ('' if it did not)."""
        if not self.fired or ended - self.started < 1.5 * self.seconds + 1.0:
            return ""
        if ended - self.fired_at > 1.0:
            return (f"the method caught the timeout and ran on ({ended - self.started:.3g} s in all): the serial "
                    "executor cannot stop it (swallowed); use --executor process, whose timeout kills the worker")
        return (f"the call ran {ended - self.started:.3g} s in compiled code, which Python cannot interrupt: "
                "use --executor process, whose timeout kills the worker")


@contextlib.contextmanager
def deadline(seconds: float):
    """Raise :class:`CellTimeout` inside the block after ``seconds`` (main thread, POSIX).

    Yields a :class:`Deadline`. Python can only raise between bytecodes: a
    call into compiled code (a numba loop, a long BLAS call) is interrupted
    when it returns, and a method that catches ``BaseException`` can swallow
    the timeout; only the process executor, which kills the worker, stops those.
    """
    state = Deadline(seconds, started=time.monotonic())
    usable = hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread()
    if not usable or not math.isfinite(seconds):
        yield state
        return

    def _raise(signum, frame):
        state.fired = True
        state.fired_at = time.monotonic()
        raise CellTimeout(f"exceeded the {seconds:g} s per-cell timeout")

    outer_delay, outer_interval = signal.getitimer(signal.ITIMER_REAL)
    if outer_delay and outer_delay <= seconds:
        yield state  # an enclosing timer (pytest-timeout, say) fires first anyway: leave it alone
        return
    state.armed = True
    started = time.monotonic()
    previous = signal.signal(signal.SIGALRM, _raise)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield state
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        if outer_delay:  # give an enclosing timer back what is left of it
            left = max(outer_delay - (time.monotonic() - started), 1e-6)
            signal.setitimer(signal.ITIMER_REAL, left, outer_interval)


def _quartiles(values: list[float]) -> tuple[float, float]:
    if len(values) < 2:
        return values[0], values[0]
    q = statistics.quantiles(values, n=4, method="inclusive")
    return q[0], q[2]


def measure(
    fn: Callable[[], Any],
    *,
    device: str = "cpu",
    repeats: int = 5,
    min_time: float = 0.01,
    budget: float = math.inf,
    max_loops: int = 10_000,
) -> tuple[Timing, Any]:
    """Time ``fn()``; returns the timing and the output of the last call.

    ``budget`` (seconds) bounds the whole measurement: it is checked
    between calls and :class:`CellTimeout` is raised past it. To interrupt
    a single call that hangs, wrap the measurement in :func:`deadline`.
    """
    start = time.perf_counter()

    def call():
        out = fn()
        arrays.synchronize(device)
        return out

    def check_budget():
        if time.perf_counter() - start > budget:
            raise CellTimeout(f"exceeded the {budget:g} s per-cell timeout")

    t0 = time.perf_counter()
    out = call()  # discarded: lazy initialisation, caches
    first = time.perf_counter() - t0
    check_budget()

    # calibrate: loops per sample so one sample lasts >= min_time
    t0 = time.perf_counter()
    out = call()
    single = max(time.perf_counter() - t0, 1e-9)
    loops = int(min(max_loops, max(1, math.ceil(min_time / single))))
    check_budget()

    samples: list[float] = []
    target = repeats
    while len(samples) < target:
        t0 = time.perf_counter()
        for _ in range(loops):
            out = call()
        samples.append((time.perf_counter() - t0) / loops)
        if len(samples) >= repeats and time.perf_counter() - start > budget:
            break  # extra samples for a noisy cell are optional: keep what we have
        check_budget()
        if len(samples) == target and target < 3 * repeats:
            q1, q3 = _quartiles(samples)
            med = statistics.median(samples)
            elapsed = time.perf_counter() - start
            # noisy: take more samples while the budget allows a quarter more
            if med > 0 and (q3 - q1) / med > NOISY_SPREAD and elapsed * 1.25 < budget:
                target += max(1, repeats // 2)
    q1, q3 = _quartiles(samples)
    return (
        Timing(
            median=statistics.median(samples),
            iqr=q3 - q1,
            minimum=min(samples),
            maximum=max(samples),
            samples=samples,
            loops=loops,
            first_call=first,
        ),
        out,
    )


def measure_once(fn: Callable[[], Any], *, device: str = "cpu") -> tuple[Timing, Any]:
    """Time one call of ``fn()`` (timing policy ``once``: a fit, a calibration); no warm-up, no repeats."""
    t0 = time.perf_counter()
    out = fn()
    arrays.synchronize(device)
    seconds = time.perf_counter() - t0
    return Timing(median=seconds, iqr=0.0, minimum=seconds, maximum=seconds, samples=[seconds], loops=1,
                  first_call=seconds), out
