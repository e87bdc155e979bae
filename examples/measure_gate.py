"""Measure the regression gate on this machine: false alarms and sensitivity (README "Comparing runs").

    python examples/measure_gate.py --out /tmp/gate [--runs 10]

1. False alarms: the CI suite run ``--runs`` + 2 times from one commit; each later run compared at the
   default settings, with and without ``--normalise``, with a baseline of the first run, and with a
   baseline of the first three (``pricebench baseline save RUN RUN RUN``): how many cells are called worse.
2. Sensitivity: tests/plugins/slowed.toml run three times as the baseline, then ``--runs`` times with each
   slow-down (``SLOWED_BS_SLOWDOWN`` = 0, 0.1, 0.2, 0.3: 10-30% more work in the timed call, the cell key
   unchanged); each compared with the first baseline run and with all three: how many tries are caught.

Run it on a quiet machine: it measures the gate, not the machine's neighbours.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from bench.compare import Rules, compare, load, save_baseline

ROOT = Path(__file__).resolve().parent.parent


def run(suite: str, out: Path, env: dict[str, str] | None = None, plugins: Path | None = None) -> Path:
    before = set((out / Path(suite).stem).glob("*")) if (out / Path(suite).stem).exists() else set()
    cmd = ["pricebench", "run", suite, "--out", str(out)] + (["--plugins-dir", str(plugins)] if plugins else [])
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, env={**os.environ, **(env or {})})
    (new,) = set((out / Path(suite).stem).glob("*")) - before
    return new


def latency_alarms(base, new: Path, normalise: bool) -> tuple[int, list[str]]:
    c = compare(base, load(new), Rules.create([], normalise=normalise))
    worse = [v for v in c.verdicts if v.regression]
    assert all(v.verdict == "worse" and any(n.startswith("latency") for n in v.notes) for v in worse), \
        "an accuracy regression or a newly failing cell between runs of one commit"
    return len(worse), [f"{v.task}/{v.name}: {'; '.join(v.notes)}" for v in worse]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--skip-ci", action="store_true", help="only the sensitivity part")
    args = parser.parse_args()
    report: dict = {"false_alarms": {}, "sensitivity": {}}
    if not args.skip_ci:
        runs = [run(str(ROOT / "suites" / "ci.toml"), args.out / "ci") for _ in range(args.runs + 2)]
        baselines = {"first run": (load(runs[0]), runs[1:]),
                     "first three runs": (load(save_baseline(runs[:3], args.out / "baselines")), runs[3:])}
        for name, (base, later) in baselines.items():
            for normalise in (False, True):
                alarms = [latency_alarms(base, r, normalise) for r in later]
                key = f"{name}, {'normalised' if normalise else 'default'}"
                report["false_alarms"][key] = {"comparisons": len(alarms), "cells": len(base.rows),
                                               "cells_called_worse": sum(a for a, _ in alarms),
                                               "runs_failing": sum(a > 0 for a, _ in alarms),
                                               "details": [d for _, ds in alarms for d in ds]}
                print(key, report["false_alarms"][key], flush=True)
    suite, plugins = str(ROOT / "tests" / "plugins" / "slowed.toml"), ROOT / "tests" / "plugins"
    bases = [run(suite, args.out / "slowed", {"SLOWED_BS_SLOWDOWN": "0"}, plugins) for _ in range(3)]
    baselines = {"first run": load(bases[0]), "three runs": load(save_baseline(bases, args.out / "baselines"))}
    for slowdown in ("0", "0.1", "0.2", "0.3"):
        tries = [run(suite, args.out / "slowed", {"SLOWED_BS_SLOWDOWN": slowdown}, plugins) for _ in range(args.runs)]
        for name, base in baselines.items():
            for normalise in (False, True):
                results = [latency_alarms(base, t, normalise) for t in tries]
                ratios = [v.ratio for t in tries
                          for v in compare(base, load(t), Rules.create([], normalise=normalise)).verdicts]
                key = f"{slowdown}, {name}, {'normalised' if normalise else 'default'}"
                report["sensitivity"][key] = {"caught": sum(a > 0 for a, _ in results), "tries": len(results),
                                              "ratios": [round(r, 3) for r in ratios]}
                print(key, report["sensitivity"][key], flush=True)
    (args.out / "gate.json").write_text(json.dumps(report, indent=1))
    print(f"wrote {args.out / 'gate.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
