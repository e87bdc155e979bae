"""Task kind ``price``: candidate pricers against a reference pricer on sampled parameter sets."""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from bench import arrays, scoring
from bench.kinds import REPEAT, Scored, TaskData, TaskKind, price_with, sample_params, timed
from bench.methods import PriceResult


class PriceKind(TaskKind):
    name = "price"
    description = "price a batch of options; score every pricer against a reference pricer"
    method_kinds = ("pricer",)
    timing = REPEAT
    keys = {"reference": (str, dict)}

    def parse(self, table, ctx):
        if "reference" not in table:
            raise ctx.error("required key is missing", "reference")
        return {"reference": ctx.pricer_for_task(table["reference"], "reference")}

    def check_method(self, spec, cls, ctx, key):
        ctx.check_pricer(spec, key)

    def build(self, task, seeds, registry):
        params = sample_params(task, seeds.rng(), registry)
        reference, seconds = timed(lambda: price_with(task.reference, registry, task.model, task.product, params,
                                                      seeds.reference))
        return TaskData(params, params, reference, seconds, scoring.price_scale(params, task.size), seeds.method)

    def prepare(self, method, task, data, device, registry):
        prepared = method.prepare(registry.model(task.model), task.product, data.inputs, device)
        return lambda: method.price(prepared)

    def score(self, task, data, out, metrics: Mapping[str, Any]) -> Scored:
        estimate, stderr, notes = _price_outputs(out, data.size)
        columns = scoring.score(estimate, data.reference, metrics, task.floor, None, data.scale, stderr)
        usable = int(np.isfinite(data.reference).sum())
        if columns["failures"] and not notes and columns["failures"] < usable:
            # pricers return NaN where a point is outside what they can price
            notes.append(f"{columns['failures']} of {usable} points not priced (NaN/inf: outside the method's range)")
        return Scored(columns, notes)


def _price_outputs(out: Any, size: int) -> tuple[np.ndarray, np.ndarray | None, list[str]]:
    """Estimates, standard errors (if given) and the counted reasons; ValueError on a bad shape."""
    stderr, notes = None, []
    if isinstance(out, PriceResult):
        if out.stderr is not None:
            stderr = arrays.to_numpy(out.stderr).astype(np.float64).reshape(-1)
            if stderr.size != size:
                raise ValueError(f"wrong output shape: PriceResult.stderr has {stderr.size} entries, expected {size}")
        if out.reason is not None:
            reasons = np.asarray(out.reason, dtype=object).reshape(-1)
            if reasons.size != size:
                raise ValueError(f"wrong output shape: PriceResult.reason has {reasons.size} entries, "
                                 f"expected {size}")
            given, counts = np.unique([str(x) for x in reasons if x], return_counts=True)
            if given.size:
                notes.append("not priced: " + ", ".join(f"{g} {c}" for g, c in zip(given, counts)))
        out = out.price
    estimate = arrays.to_numpy(out)
    if estimate.size != size or estimate.ndim > 1 and estimate.shape != (size,):
        raise ValueError(f"wrong output shape {estimate.shape}, expected {(size,)}")
    return estimate.reshape(-1).astype(np.float64), stderr, notes
