"""Measure the regression gate on this machine: false alarms and sensitivity (README "Comparing runs").

    python examples/measure_gate.py --out /tmp/gate [--runs 10]      # run, then evaluate
    python examples/measure_gate.py --out /tmp/gate --evaluate-only  # evaluate the runs already there

1. False alarms: the CI suite run ``--runs`` + 2 times from one commit. Each later run is compared, at
   the default settings, with and without ``--normalise``: with the first run as the baseline (one run
   against one); with the first three as the baseline (``pricebench baseline save RUN RUN RUN``); and
   with the first three against the later runs taken two at a time (``pricebench compare BASE NEW NEW``,
   what .ci/run does). Counted: cells called worse (every one a false alarm: it is one commit).
2. Sensitivity: tests/plugins/slowed.toml run three times as the baseline, then ``--runs`` times with
   each slow-down (``SLOWED_BS_SLOWDOWN`` = 0, 0.1, 0.2, 0.3: 10-30% more work in the timed call, the
   cell key unchanged); each try compared with the first baseline run and with all three: how many of
   the tries are caught.

Run it on a quiet machine: it measures the gate, not the machine's neighbours.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from bench.compare import Rules, combine, compare, load

ROOT = Path(__file__).resolve().parent.parent
SLOWDOWNS = ("0", "0.1", "0.2", "0.3")


def run(suite: str, out: Path, env: dict[str, str] | None = None, plugins: Path | None = None) -> Path:
    folder = out / Path(suite).stem
    before = set(folder.glob("*")) if folder.exists() else set()
    cmd = ["pricebench", "run", suite, "--out", str(out)] + (["--plugins-dir", str(plugins)] if plugins else [])
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, env={**os.environ, **(env or {})})
    (new,) = set(folder.glob("*")) - before
    (new / "slowdown.txt").write_text((env or {}).get("SLOWED_BS_SLOWDOWN", "0"))
    return new


def alarms(base, new, normalise: bool) -> list[str]:
    c = compare(base, new, Rules.create([], normalise=normalise))
    worse = [v for v in c.verdicts if v.regression]
    assert all(v.verdict == "worse" and any(n.startswith("latency") for n in v.notes) for v in worse), \
        "an accuracy regression or a newly failing cell between runs of one commit"
    return [f"{v.task}/{v.name}: {v.notes[0]}" for v in worse]


def evaluate(out: Path) -> dict:
    report: dict = {"false_alarms": {}, "sensitivity": {}}
    runs = [load(p) for p in sorted((out / "ci" / "ci").glob("2*"))]
    if len(runs) >= 5:
        later = runs[3:]
        designs = {"1 baseline run vs 1": (runs[0], runs[1:]),
                   "3 baseline runs vs 1": (combine(runs[:3]), later),
                   "3 baseline runs vs 2": (combine(runs[:3]),
                                            [combine(later[i:i + 2]) for i in range(0, len(later) - 1, 2)])}
        for name, (base, news) in designs.items():
            for normalise in (False, True):
                found = [alarms(base, n, normalise) for n in news]
                key = f"{name}, {'normalised' if normalise else 'default'}"
                report["false_alarms"][key] = {"comparisons": len(found), "cells": len(base.rows),
                                               "comparisons_failing": sum(bool(f) for f in found),
                                               "cells_called_worse": sum(map(len, found)),
                                               "details": [d for f in found for d in f]}
    slowed = sorted((out / "slowed" / "slowed").glob("2*"))
    by = {s: [p for p in slowed if (p / "slowdown.txt").read_text() == s] for s in SLOWDOWNS}
    if len(by["0"]) > 3:
        bases = by["0"][:3]
        baselines = {"1 baseline run": load(bases[0]), "3 baseline runs": combine([load(p) for p in bases])}
        for slowdown in SLOWDOWNS:
            tries = [load(p) for p in (by[slowdown][3:] if slowdown == "0" else by[slowdown])]
            for name, base in baselines.items():
                for normalise in (False, True):
                    rules = Rules.create([], normalise=normalise)
                    caught = sum(bool(alarms(base, t, normalise)) for t in tries)
                    ratios = [round(v.ratio, 3) for t in tries for v in compare(base, t, rules).verdicts]
                    key = f"{slowdown}, {name}, {'normalised' if normalise else 'default'}"
                    report["sensitivity"][key] = {"caught": caught, "tries": len(tries), "ratios": ratios}
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--evaluate-only", action="store_true", help="evaluate the runs already under --out")
    args = parser.parse_args()
    if not args.evaluate_only:
        for _ in range(args.runs + 2):
            run(str(ROOT / "suites" / "ci.toml"), args.out / "ci")
        suite, plugins = str(ROOT / "tests" / "plugins" / "slowed.toml"), ROOT / "tests" / "plugins"
        for _ in range(3):
            run(suite, args.out / "slowed", {"SLOWED_BS_SLOWDOWN": "0"}, plugins)
        for slowdown in SLOWDOWNS:
            for _ in range(args.runs):
                run(suite, args.out / "slowed", {"SLOWED_BS_SLOWDOWN": slowdown}, plugins)
    report = evaluate(args.out)
    for part in report.values():
        for key, value in part.items():
            print(key, {k: v for k, v in value.items() if k not in ("details", "ratios")})
    (args.out / "gate.json").write_text(json.dumps(report, indent=1))
    print(f"wrote {args.out / 'gate.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
