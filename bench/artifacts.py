"""Files a cell makes besides its row (a fitted approximator, its plots), and their hand-over.

A task kind returns them in :attr:`bench.kinds.Scored.artifacts` as ``{file name: bytes}``;
the runner's store writes them atomically to ``<run>/artifacts/<task>/<file name>`` (names
made safe: nothing lands outside the run folder) and keeps them for later tasks of the run.

A method that needs an earlier task's artifact (the ``learned`` pricer naming a fitted
approximator with ``fitted = "task/name"``) declares it with ``Method.requires``; the runner
then waits for that task's cells, puts the bytes in the task data, and :func:`provided` makes
them visible to the method while its cell is set up (:func:`lookup`), in whatever process or
thread the cell runs.
"""

from __future__ import annotations

import contextlib
import contextvars
from typing import Iterator, Mapping

FOLDER = "artifacts"

_current: contextvars.ContextVar[Mapping[str, bytes]] = contextvars.ContextVar("pricebench_artifacts", default={})


@contextlib.contextmanager
def provided(mapping: Mapping[str, bytes]) -> Iterator[None]:
    token = _current.set(mapping)
    try:
        yield
    finally:
        _current.reset(token)


def lookup(ref: str) -> bytes | None:
    """The bytes of artifact ``task/file`` made available to the running cell, or None."""
    return _current.get().get(ref)


def task_of(ref: str) -> str:
    return ref.split("/", 1)[0]
