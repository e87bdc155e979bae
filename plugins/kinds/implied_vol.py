"""Task kind ``implied_vol``: root finders invert Black-Scholes prices made by a pricer."""

from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np

from bench import scoring
from bench.kinds import REPEAT, Scored, TaskData, TaskKind, price_with, sample_params, timed
from bench.methods import IVResult

TRUE_SIGMA = "true_sigma"
IV_INPUTS = ("S", "K", "T", "r", "q")


class ImpliedVolKind(TaskKind):
    name = "implied_vol"
    description = "invert Black-Scholes European prices; score root finders against the true volatility"
    method_kinds = ("root_finder",)
    timing = REPEAT
    keys = {"reference": (str, dict), "pricer": (str, dict)}
    default_reference = TRUE_SIGMA

    def parse(self, table, ctx):
        if ctx.model.name != "black_scholes" or ctx.product not in ("european_call", "european_put"):
            raise ctx.error("implied_vol tasks invert Black-Scholes European prices", "product")
        if "sigma" not in ctx.domain and "sigma" not in ctx.fixed:
            raise ctx.error("an implied_vol task needs the true sigma, fixed or in the domain", "domain")
        ref = table.get("reference", TRUE_SIGMA)
        reference = None if ref == TRUE_SIGMA else ctx.single(ref, "reference", ("root_finder",))
        pricer = ctx.pricer_for_task(table.get("pricer", "closed_form"), "pricer")
        return {"reference": reference, "pricer": pricer}

    def build(self, task, seeds, registry):
        params = sample_params(task, seeds.rng(), registry)
        inputs = {k: params[k] for k in IV_INPUTS}
        inputs["price"] = price_with(task.options["pricer"], registry, task.model, task.product, params,
                                     seeds.reference)
        inputs["is_call"] = np.full(task.size, task.product == "european_call")
        spec = task.reference
        if spec is None:
            reference, seconds = params["sigma"].copy(), 0.0
        else:
            finder = registry.get("root_finder", spec.name)(**spec.settings)
            reference, seconds = timed(lambda: finder.solve(finder.prepare(inputs, "cpu")).to_host().sigma)
        return TaskData(params, inputs, np.asarray(reference, dtype=np.float64), seconds, method_seed=seeds.method)

    def prepare(self, method, task, data, device, registry):
        prepared = method.prepare(data.inputs, device)
        return lambda: method.solve(prepared)

    def score(self, task, data, out, metrics: Mapping[str, Any]) -> Scored:
        if not isinstance(out, IVResult):
            raise ValueError(f"solve returned {type(out).__name__}, expected IVResult")
        res = out.to_host()
        for field_name in ("sigma", "converged", "iterations", "status"):
            size = np.size(getattr(res, field_name))
            if size != data.size:
                raise ValueError(f"wrong output shape: IVResult.{field_name} has {size} entries, "
                                 f"expected {data.size}")
        iterations = res.iterations.reshape(-1)
        columns: dict[str, Any] = {
            "iterations_mean": float(np.mean(iterations)) if iterations.size else math.nan,
            "iterations_max": int(np.max(iterations)) if iterations.size else 0,
        }
        estimate = res.sigma.reshape(-1).astype(np.float64)
        columns.update(scoring.score(estimate, data.reference, metrics, task.floor, ~res.converged.reshape(-1)))
        counts = {k: v for k, v in res.summary().items() if k != "converged"}
        notes = ["not converged: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))] if counts else []
        return Scored(columns, notes)
