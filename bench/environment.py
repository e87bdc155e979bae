"""What a result depends on besides the code: machine, libraries, threads.

Stored with every run (run.json), following pytest-benchmark's machine_info
and asv's machine description.
"""

from __future__ import annotations

import contextlib
import os
import platform
import subprocess
import time
from importlib import metadata
from pathlib import Path

from bench import arrays

PACKAGES = ("pricebench", "numpy", "scipy", "numba", "torch", "scikit-learn", "gpytorch", "smt", "pandas",
            "rich", "pluggy")
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def package_versions() -> dict[str, str | None]:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def git_commit(path: str | Path | None = None) -> str | None:
    """The commit of the source tree pricebench runs from (None outside a git checkout)."""
    where = Path(path) if path else Path(__file__).resolve().parent.parent
    try:
        res = subprocess.run(["git", "-C", str(where), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    if res.returncode != 0:
        return None
    dirty = subprocess.run(["git", "-C", str(where), "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True, timeout=5, check=False).stdout.strip()
    return res.stdout.strip() + ("-dirty" if dirty else "")


@contextlib.contextmanager
def limit_threads(n: int | None):
    """Within the block, use at most ``n`` threads in BLAS/OpenMP pools, torch and numba.

    ``None`` leaves everything as it is. The previous settings come back on exit.
    """
    if n is None:
        yield
        return
    import numba
    import torch
    from threadpoolctl import threadpool_limits

    torch_before, numba_before = torch.get_num_threads(), numba.get_num_threads()
    with threadpool_limits(n):
        torch.set_num_threads(n)
        numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))
        try:
            yield
        finally:
            torch.set_num_threads(torch_before)
            numba.set_num_threads(numba_before)


def thread_settings() -> dict:
    from threadpoolctl import threadpool_info

    info: dict = {"cpu_count": os.cpu_count(), "env": {v: os.environ.get(v) for v in THREAD_VARS}}
    try:
        import torch

        info["torch_threads"] = torch.get_num_threads()
    except Exception:  # noqa: BLE001
        info["torch_threads"] = None
    try:
        import numba

        info["numba_threads"] = numba.get_num_threads()
    except Exception:  # noqa: BLE001
        info["numba_threads"] = None
    info["threadpools"] = [
        {k: p.get(k) for k in ("user_api", "internal_api", "num_threads", "version")} for p in threadpool_info()
    ]
    return info


def describe() -> dict:
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "gpu": arrays.gpu_name(),
        "packages": package_versions(),
        "threads": thread_settings(),
        "git_commit": git_commit(),
    }


def host_name() -> str:
    """The machine a cell ran on (rows record it; speed-ups compare cells of one host)."""
    return platform.node() or "unknown"


def thread_env(n: int) -> dict[str, str]:
    """Environment variables that pin every thread pool to ``n`` threads in a process started with them.

    numba reads ``NUMBA_NUM_THREADS`` once, at import; dask does not set it, so
    workers get it in their environment before they start."""
    return {var: str(n) for var in THREAD_VARS}


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _busy_cpu_seconds() -> float:
    import psutil

    t = psutil.cpu_times()
    return sum(v for k, v in t._asdict().items() if k not in ("idle", "iowait", "guest", "guest_nice"))


def _own_cpu_seconds() -> float:
    return time.process_time()


def _runnable_others() -> float:
    """Threads ready to run on the machine right now, less the one reading this (Linux), else NaN."""
    try:
        running = Path("/proc/loadavg").read_text().split()[3].split("/")[0]
        return max(float(running) - 1.0, 0.0)
    except (OSError, IndexError, ValueError):
        return float("nan")


class LoadMonitor:
    """The machine's load while a cell was timed: enter before timing, exit after.

    Records the 1-minute load average, the process's own CPU time as a share of
    the wall time (``cpu_share``), and the cores other processes kept busy
    (``others_cpu``: all busy CPU time less this process's, per second of wall
    time). A cell is ``busy`` when other processes used more cores than the
    machine had left beside the cell's own threads: its timing competed for
    CPUs.
    """

    def __init__(self, threads: int):
        self.threads = max(1, int(threads))
        self.values: dict[str, float | bool] = {}

    # below this window the CPU counters (10 ms ticks) say little: count runnable threads instead
    MIN_WINDOW_S = 0.1

    def __enter__(self) -> "LoadMonitor":
        self._runnable = _runnable_others()
        self._wall = time.perf_counter()
        self._own = _own_cpu_seconds()
        try:
            self._busy = _busy_cpu_seconds()
        except Exception:  # noqa: BLE001 - no psutil or no /proc: record what we can
            self._busy = None
        return self

    def __exit__(self, *exc) -> None:
        wall = max(time.perf_counter() - self._wall, 1e-9)
        own = _own_cpu_seconds() - self._own
        cpus = usable_cpus()
        free = max(cpus - self.threads, 0)  # CPUs the cell leaves to others (none when oversubscribed)
        values: dict[str, float | bool] = {"cpu_share": own / wall}
        try:
            values["load_1m"] = os.getloadavg()[0]
        except OSError:
            values["load_1m"] = float("nan")
        if self._busy is not None and wall >= self.MIN_WINDOW_S:
            others = max((_busy_cpu_seconds() - self._busy - own) / wall, 0.0)
            values["others_cpu"] = others
            values["busy"] = bool(others > free + 0.25)
        elif self._runnable == self._runnable:  # a short window: runnable threads at its two ends
            others = min(max(self._runnable, _runnable_others()), float(cpus))
            values["others_cpu"] = others
            values["busy"] = bool(others > free + 0.25)
        else:
            values["others_cpu"] = float("nan")
            values["busy"] = bool(values["load_1m"] > cpus + 0.5)
        self.values = values

    def note(self) -> str:
        """A note for the row's message when the cell was timed on a busy machine, else ''."""
        if not self.values.get("busy"):
            return ""
        cpus = usable_cpus()
        return (f"busy machine: other processes kept {self.values['others_cpu']:.1f} of {cpus} CPUs busy while "
                f"this cell ({self.threads} thread{'s' if self.threads > 1 else ''}) was timed; "
                f"load {self.values['load_1m']:.1f}")
