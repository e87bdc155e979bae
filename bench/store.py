"""The results store: one folder per run, written as cells finish.

    <out>/<suite>/<run-id>/rows.jsonl        one JSON line per finished cell (the record; appended)
    <out>/<suite>/<run-id>/samples.jsonl     every raw timing sample of every cell, by cell_key
    <out>/<suite>/<run-id>/run.json          schema version, status, seed, filters, machine, tasks
    <out>/<suite>/<run-id>/leaderboard.csv   the rows as a table (rewritten after every cell)
    <out>/<suite>/<run-id>/targets.csv       fastest configuration per accuracy target
    <out>/<suite>/<run-id>/outputs/<cell_key>.npz   a cell's outputs (``--save-outputs``)

Every line is appended with one ``write`` and ``fsync`` (:func:`bench.atomic.append_line`) and
every other file is replaced atomically, so a run killed at any moment keeps every finished cell;
a torn last line is skipped on reading. Run ids are a UTC time stamp and a random suffix, and the
folder is created exclusively, so two runs started in the same second never share a folder.
"""

from __future__ import annotations

import json
import math
import os
import secrets
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from bench import artifacts, atomic
from bench.cells import CellResult

SCHEMA_VERSION = 2
ROWS_NAME = "rows.jsonl"
SAMPLES_NAME = "samples.jsonl"
OUTPUTS_DIR = "outputs"
RUN_NAME = "run.json"
LOCK_NAME = ".lock"


class StoreError(ValueError):
    """A run folder that cannot be used (missing, another schema, another suite)."""


def new_run_id() -> str:
    now = datetime.now(timezone.utc)
    return now.strftime("%Y%m%dT%H%M%S") + f"{now.microsecond // 1000:03d}Z-{secrets.token_hex(3)}"


def _plain(value: Any) -> Any:
    if isinstance(value, (np.floating, np.integer, np.bool_)):
        return value.item()
    return value


def _json(data: dict[str, Any]) -> str:
    return json.dumps({k: _plain(v) for k, v in data.items()}, default=str)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The complete lines of a JSON-lines file; a torn last line (a killed writer) is skipped."""
    if not path.is_file():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


class RunStore:
    """One run's folder: append rows as cells finish, read them back, keep run.json current."""

    def __init__(self, directory: Path):
        self.directory = Path(directory)
        self._lock_fd: int | None = None

    # ------------------------------------------------------------------ one writer at a time
    def lock(self) -> None:
        """Hold the run folder for this process (an advisory ``flock`` on ``.lock``): a second run or
        resume of the same folder is refused while the first is alive; the kernel frees it at exit."""
        import fcntl

        fd = os.open(self.directory / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise StoreError(f"{self.directory}: another pricebench process is running this run") from None
        self._lock_fd = fd

    def unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing the descriptor releases the flock
            self._lock_fd = None

    def repair(self) -> None:
        """Drop a torn last line (a writer killed mid-line) so the next append starts a line of its own."""
        for name in (ROWS_NAME, SAMPLES_NAME):
            path = self.directory / name
            if not path.is_file():
                continue
            data = path.read_bytes()
            if data and not data.endswith(b"\n"):
                with open(path, "r+b") as fh:
                    fh.truncate(data.rfind(b"\n") + 1)

    @classmethod
    def create(cls, out_dir: str | Path, suite: str) -> tuple["RunStore", str]:
        parent = atomic.inside(out_dir, suite)
        parent.mkdir(parents=True, exist_ok=True)
        for _ in range(100):
            run_id = new_run_id()
            try:
                (parent / run_id).mkdir()
            except FileExistsError:
                continue
            return cls(parent / run_id), run_id
        raise OSError(f"could not make a new run folder in {parent}")

    @classmethod
    def open(cls, directory: str | Path) -> "RunStore":
        directory = Path(directory)
        if not (directory / RUN_NAME).is_file():
            raise StoreError(f"{directory}: not a run folder (no {RUN_NAME})")
        store = cls(directory)
        meta = store.metadata()
        if meta.get("schema_version") != SCHEMA_VERSION:
            raise StoreError(f"{directory}: a schema-{meta.get('schema_version', 1)} run; only schema-"
                             f"{SCHEMA_VERSION} runs can be resumed")
        return store

    def lock_and_repair(self) -> None:
        self.lock()
        self.repair()

    # ------------------------------------------------------------------ writing
    def append(self, row: CellResult) -> None:
        if row.artifact_data:
            row.artifacts = "; ".join(self.write_artifacts(row.task, row.artifact_data))
        if row.outputs:
            with atomic.atomic_path(self.directory / OUTPUTS_DIR / f"{row.cell_key}.npz", suffix=".npz") as tmp:
                np.savez_compressed(tmp, **row.outputs)
        if row.timing_samples:
            atomic.append_line(self.directory / SAMPLES_NAME, _json(
                {"cell_key": row.cell_key, "run_id": row.run_id, "host": row.host, "loops": row.loops,
                 "policy": "once" if math.isfinite(row.once_s) else "repeat", "samples": row.timing_samples}))
        atomic.append_line(self.directory / ROWS_NAME, _json(row.as_row()))

    def write_artifacts(self, task: str, files: dict[str, bytes]) -> list[str]:
        """Write ``files`` to ``artifacts/<task>/`` atomically; their paths relative to the run folder."""
        folder = atomic.inside(self.directory / artifacts.FOLDER, task)
        written = []
        for name, data in files.items():
            path = atomic.inside(folder, name)
            atomic.write_bytes(path, data)
            written.append(str(path.relative_to(self.directory)))
        return written

    def read_artifacts(self, task: str) -> dict[str, bytes]:
        """The artifacts a task's cells wrote (``{"task/file": bytes}``), for a resumed run."""
        folder = atomic.inside(self.directory / artifacts.FOLDER, task)
        if not folder.is_dir():
            return {}
        return {f"{task}/{p.name}": p.read_bytes() for p in sorted(folder.iterdir())
                if p.is_file() and not p.name.startswith(".")}

    def write_metadata(self, meta: dict[str, Any]) -> None:
        atomic.write_text(self.directory / RUN_NAME, json.dumps(meta, indent=2, default=str))

    # ------------------------------------------------------------------ reading
    def metadata(self) -> dict[str, Any]:
        try:
            return json.loads((self.directory / RUN_NAME).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise StoreError(f"{self.directory / RUN_NAME}: cannot read ({exc})") from None

    def rows(self) -> list[dict[str, Any]]:
        """The finished cells, one per cell_key (the last written wins)."""
        by_key: dict[str, dict[str, Any]] = {}
        for row in read_jsonl(self.directory / ROWS_NAME):
            by_key[row.get("cell_key") or str(len(by_key))] = row
        return list(by_key.values())

    def samples(self) -> dict[str, list[float]]:
        return {s["cell_key"]: s["samples"] for s in read_jsonl(self.directory / SAMPLES_NAME)}

    def done_keys(self) -> set[str]:
        return {r["cell_key"] for r in self.rows() if r.get("cell_key")}

