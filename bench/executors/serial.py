"""The serial executor: every cell in the runner's own process, one after another.

The per-cell timeout is a SIGALRM timer: it interrupts Python code, but a call into
compiled code (a numba loop) is interrupted only when it returns, and a method that
catches BaseException can swallow it; such cells are marked ``timeout`` with a note
saying how long they really ran. Use the process executor to stop them.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Iterator, Sequence

from bench.cells import CellResult, CellSpec, execute_cell
from bench.executors import Executor
from bench.kinds import TaskData


class SerialExecutor(Executor):
    name = "serial"

    def __init__(self, registry, **options: Any):
        self.registry = registry
        self.queue: deque[tuple[TaskData, CellSpec]] = deque()

    def submit(self, data: TaskData, specs: Sequence[CellSpec]) -> None:
        self.queue.extend((data, spec) for spec in specs)

    def results(self, wait: bool) -> Iterator[CellResult]:
        while self.queue:
            data, spec = self.queue.popleft()
            yield execute_cell(spec, data, self.registry, executor=self.name)


EXECUTOR = SerialExecutor
