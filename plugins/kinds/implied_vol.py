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
    """Root finders get (S, K, T, r, q) and a price, and return the Black-Scholes implied volatility.

    The prices come from ``pricer`` (default ``closed_form``) under the task's model. Under Black-Scholes
    the reference is the true ``sigma`` (``reference = "true_sigma"``, the default) or a root finder. Under
    any other equity model (Heston, say: the implied volatility of its prices) the reference is a root
    finder applied to the prices of ``reference_pricer`` (default: ``pricer``); with ``pricer`` a
    ``learned`` Heston-ANN and ``reference_pricer`` COS, the candidates invert the network's prices and
    are scored against COS -> root finder: Liu, Oosterlee and Bohte's (2019) Heston-ANN -> IV-ANN pipeline
    against COS -> Brent.
    """

    name = "implied_vol"
    description = "invert European prices (Black-Scholes or another model's) to Black-Scholes implied volatilities"
    method_kinds = ("root_finder",)
    timing = REPEAT
    keys = {"reference": (str, dict), "pricer": (str, dict), "reference_pricer": (str, dict)}
    default_reference = TRUE_SIGMA

    def parse(self, table, ctx):
        if ctx.product not in ("european_call", "european_put"):
            raise ctx.error("implied_vol tasks invert European call and put prices", "product")
        if not all(p in ctx.model.params for p in ("S", "K", "T")):
            raise ctx.error(f"implied_vol tasks need a spot, strike and maturity; {ctx.model.name!r} has none",
                            "model")
        black_scholes = ctx.model.name == "black_scholes"
        ref = table.get("reference", TRUE_SIGMA if black_scholes else None)
        if ref is None:
            raise ctx.error(f"under {ctx.model.name!r} there is no true sigma: name a root finder that makes the "
                            "reference implied volatilities", "reference")
        if ref == TRUE_SIGMA and not black_scholes:
            raise ctx.error(f"'true_sigma' exists under black_scholes only, not {ctx.model.name!r}: name a root "
                            "finder", "reference")
        if ref == TRUE_SIGMA and "sigma" not in ctx.domain and "sigma" not in ctx.fixed:
            raise ctx.error("an implied_vol task needs the true sigma, fixed or in the domain", "domain")
        reference = None if ref == TRUE_SIGMA else ctx.single(ref, "reference", ("root_finder",))
        pricer = ctx.pricer_for_task(table.get("pricer", "closed_form"), "pricer")
        reference_pricer = None
        if "reference_pricer" in table:
            if reference is None:
                raise ctx.error("the true sigma needs no prices: reference_pricer goes with a root finder as the "
                                "reference", "reference_pricer")
            reference_pricer = ctx.pricer_for_task(table["reference_pricer"], "reference_pricer")
        return {"reference": reference, "pricer": pricer, "reference_pricer": reference_pricer}

    def build(self, task, seeds, registry):
        params = sample_params(task, seeds.rng(), registry)
        inputs = {k: params[k] if k in params else np.zeros(task.size) for k in IV_INPUTS}
        inputs["price"] = price_with(task.options["pricer"], registry, task.model, task.product, params,
                                     seeds.reference)
        inputs["is_call"] = np.full(task.size, task.product == "european_call")
        spec = task.reference
        if spec is None:
            reference, seconds = params["sigma"].copy(), 0.0
        else:
            ref_inputs = dict(inputs)
            if task.options.get("reference_pricer") is not None:
                ref_inputs["price"] = price_with(task.options["reference_pricer"], registry, task.model,
                                                 task.product, params, seeds.reference)
            finder = registry.get("root_finder", spec.name)(**spec.settings)
            reference, seconds = timed(lambda: finder.solve(finder.prepare(ref_inputs, "cpu")).to_host().sigma)
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
