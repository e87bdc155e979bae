"""Task kind ``approximate``: learn a pricing function from a labelling pricer, then score it.

The idea of the source documents 000, 002 and 003: learn a pricing function
offline from a slow pricer, then price in one fast pass. A task names the
model, product and domain, the pricer that labels the data (any registered
pricer, with settings), the sizes of the training, validation and test sets
and the target (``price``, or ``implied_vol`` for the inverse map). Each
candidate approximator (``mlp``, ``gp``, ``least_squares``, ``smt`` or a
plugin's) is fitted in its cell's untimed set-up, on the cell's device, and
its prediction is timed like a pricer.

Suite keys (besides the common ones; ``n`` is the training set size):

- ``pricer`` (required): the labelling pricer, a name or ``{name, settings}``;
- ``reference``: the pricer that labels the test sets (default: ``pricer``;
  Spence, Brolly and Xue train on Monte Carlo labels, scored here against the PDE);
- ``target``: ``"price"`` (default) or ``"implied_vol"``;
- ``homogeneous``: learn ``V/K`` on ``S/K`` (default true for models whose prices are homogeneous of
  degree one in S and K: black_scholes, heston, merton, kou; not cev or sinh_lv);
- ``squash``: implied_vol only, the price enters as log(time value / K);
  ``min_time_value`` (default 1e-7): points whose time value / K is below it
  are dropped from every set (Liu, Oosterlee and Bohte 2019), the count is reported;
- ``validation`` (default n // 10), ``test`` (default 10,000): set sizes;
- ``narrow``: an inner domain ``{param = [low, high], ...}`` inside the
  training domain, with its own test set of ``narrow_test`` points (default
  ``test``); Liu, Oosterlee and Bohte (2019) show errors grow near the boundary, and both sets
  are scored (the leaderboard's metric columns are the wide set's,
  ``narrow_*`` the narrow set's);
- ``noise``: standard deviation of Gaussian noise added to the training and
  validation labels (the experiment of the lecture notebook "Deep Learning for
  Option Pricing"), in the label's units: the price for a price target, the
  volatility for an implied_vol target (the price, an input there, stays
  clean); test labels stay clean;
- ``audit`` (default true for option prices): the no-arbitrage audit.

Validation and test points come from the task's sampler (``uniform`` where
the task samples a ``grid``: a test set on the training grid would test
nothing). Labelled sets are cached (see :mod:`bench.datasets`).

Columns beyond the pricer metrics: ``narrow_*``; ``label_s`` (seconds the
labelling of the training and validation values took, also when read from
the cache), ``label_price_s`` (seconds per labelled price),
``derivative_s`` (seconds the derivative labels took, for configurations
that train on them; else 0), ``fit_s`` (the fit, timed once), ``n_train``,
``break_even`` (prices the approximator must serve before labelling plus
fitting are paid back against the labelling pricer: (label_s +
derivative_s + fit_s) / (label_price_s - predict seconds per price);
``inf`` when it is never paid back), ``break_even_classical`` and
``classical`` (the same against the fastest method of the run that the
approximator stands in for: a ``price`` row (``implied_vol`` row for an
implied-volatility target) with the same model, product and device, whose
accuracy tier is at least as good, learned methods excluded),
``arb_violations`` and ``arb_max`` (the audit:
calls decreasing and convex in strike, puts increasing and convex, prices
non-decreasing in maturity where that must hold (American options, calls
with q = 0 and r >= 0, puts with r = 0 and q >= 0), within the price
bounds; on a grid of 41 strikes x 11 maturities with the other parameters
at their mid-range), ``within_2sd``
(approximators with a predictive standard deviation: the share of wide
test points inside two of them), ``fit_info`` (the approximator's own
account of its training, JSON).

Each cell saves its fitted approximator (``<stem>.<device>.pbapprox``, the stem being the method's
label, else its name, see :func:`bench.cells.cell_stems`;
see :mod:`bench.approximators`) and a PNG of predicted against target with
an error histogram beside the leaderboard, under ``artifacts/<task>/``.
When a run has approximate tasks that differ only in ``n`` and the set
sizes (column ``design`` is a hash of the rest), the largest of them also
writes ``learning_curve.csv`` and ``.png``: RMSE against training set size
per method configuration.
"""

from __future__ import annotations

import hashlib
import importlib
import io
import json
import math
import time
from typing import Any, Mapping

import numpy as np

from bench import arrays, scoring
from bench.approximators import LearnedFunction
from bench.datasets import LabelledSet, SetSpec, labelled_set
from bench.features import TARGETS, FeatureMap
from bench.kinds import REPEAT, RunContext, Scored, TaskData, TaskKind

OPTIONS = ("european_call", "european_put", "american_call", "american_put")
# seed-sequence roles of the sets (children of the task's sequence)
ROLES = {"train": 101, "validation": 102, "test": 103, "narrow": 104, "noise": 105}
AUDIT_STRIKES, AUDIT_MATURITIES = 41, 11
# methods that serve a fitted approximator: never the classical method an approximator is compared with
LEARNED_METHODS = ("learned",)
# a violation smaller than this times (S + K) is floating-point noise, not arbitrage
AUDIT_TOL = 1e-10


class ApproximateKind(TaskKind):
    name = "approximate"
    description = ("fit approximators (learned pricing functions) to a labelling pricer; score on wide and narrow "
                   "test sets, with break-even counts and a no-arbitrage audit")
    method_kinds = ("approximator",)
    timing = REPEAT
    keys = {"pricer": (str, dict), "reference": (str, dict), "target": str, "homogeneous": bool, "squash": bool,
            "min_time_value": float, "validation": int, "test": int, "narrow": dict, "narrow_test": int,
            "noise": float, "audit": bool}
    default_reference = "the labelling pricer"

    # ------------------------------------------------------------------ suite
    def parse(self, table, ctx):
        if "pricer" not in table:
            raise ctx.error("required key is missing: the pricer that labels the training data", "pricer")
        pricer = ctx.pricer_for_task(table["pricer"], "pricer")
        reference = ctx.pricer_for_task(table["reference"], "reference") if "reference" in table else None
        target = table.get("target", "price")
        if target not in TARGETS:
            raise ctx.error(f"unknown target {target!r} (targets: {', '.join(TARGETS)})", "target")
        homogeneous = table.get("homogeneous", bool(getattr(ctx.model, "homogeneous", False)))
        try:
            fmap = FeatureMap.build(ctx.model, ctx.product, target, ctx.domain, ctx.fixed, homogeneous,
                                    table.get("squash", False), table.get("min_time_value", 1e-7))
        except ValueError as exc:
            key = ("homogeneous" if "homogeneous" in str(exc) else "squash" if "squash" in str(exc)
                   else "domain" if "domain" in str(exc) or "varies" in str(exc) else "target")
            raise ctx.error(str(exc), key) from None
        n = table["n"]
        sizes = {"validation": table.get("validation", n // 10), "test": table.get("test", 10_000)}
        sizes["narrow_test"] = table.get("narrow_test", sizes["test"])
        for key, value in sizes.items():
            if not 0 <= value <= 10_000_000:
                raise ctx.error("must be between 0 and 10,000,000", key)
        if sizes["test"] < 1:
            raise ctx.error("must be >= 1: the wide test set is what the task scores", "test")
        narrow = {}
        for param, value in table.get("narrow", {}).items():
            key = f"narrow.{param}"
            if param not in ctx.domain:
                raise ctx.error(f"{param!r} is not a ranged parameter of the training domain "
                                f"({', '.join(ctx.domain) or 'none'})", key)
            if (not isinstance(value, list) or len(value) != 2
                    or any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in value)):
                raise ctx.error(f"must be a range [low, high] of two numbers, got {value!r}", key)
            lo, hi = float(value[0]), float(value[1])
            dlo, dhi = ctx.domain[param]
            if not lo < hi:
                raise ctx.error(f"bad range [{lo:g}, {hi:g}]: need low < high", key)
            if lo < dlo or hi > dhi:
                raise ctx.error(f"the test range [{lo:g}, {hi:g}] leaves the training domain [{dlo:g}, {dhi:g}]: "
                                "an approximator is only tested where it was trained", key)
            narrow[param] = (lo, hi)
        noise = float(table.get("noise", 0.0))
        if not 0 <= noise < math.inf:
            raise ctx.error("must be >= 0", "noise")
        mtv = float(table.get("min_time_value", 1e-7))
        if not 0 < mtv < 1:
            raise ctx.error("must be in (0, 1)", "min_time_value")
        audit = table.get("audit", target == "price" and ctx.product in OPTIONS)
        if audit and not (target == "price" and ctx.product in OPTIONS):
            raise ctx.error("the no-arbitrage audit is defined for option prices (calls and puts)", "audit")
        return {"pricer": pricer, "reference": reference, "target": target, "homogeneous": fmap.homogeneous,
                "squash": fmap.squash, "min_time_value": mtv, **sizes, "narrow": narrow, "noise": noise,
                "audit": bool(audit)}

    def check_method(self, spec, cls, ctx, key):
        try:
            wants = cls(**spec.settings).wants_derivatives()
        except ValueError:
            return  # the suite reader reports bad settings itself
        if wants:
            if not getattr(cls, "uses_derivatives", False):
                raise ctx.error(f"approximator {spec.name!r} asks for derivative labels but does not train on "
                                "them", key)
            if ctx.options.get("target") != "price":
                raise ctx.error("differential training needs derivative labels of a price target; this task's "
                                f"target is {ctx.options.get('target')!r}", key)

    def reference_spec(self, task):
        return task.options["reference"] or task.options["pricer"]

    # ------------------------------------------------------------------ data
    def build(self, task, seeds, registry, run: RunContext | None = None):
        opts = task.options
        model = registry.model(task.model)
        fmap = FeatureMap.build(model, task.product, opts["target"], task.domain, task.fixed, opts["homogeneous"],
                                opts["squash"], opts["min_time_value"])
        wants = [self._wants_derivatives(spec, registry) for spec in task.methods]
        derivatives = self._derivative_params(fmap) if any(wants) else ()
        cache = run.cache_dir if run is not None else None
        notes: list[str] = []

        def labelled(role: str, n: int, pricer, domain, derivs=()) -> LabelledSet:
            sampler = task.sampler if role == "train" or task.sampler != "grid" else "uniform"
            seq = _child(seeds.sequence, ROLES[role])
            spec = SetSpec(task.model, model.version, task.product, dict(domain), dict(task.fixed), sampler,
                           dict(task.sampler_options) if sampler == task.sampler else {}, n,
                           f"{seq.entropy}:{tuple(seq.spawn_key)}", pricer.name,
                           registry.get("pricer", pricer.name).version,
                           registry.get("pricer", pricer.name).resolve_settings(pricer.settings), tuple(derivs))
            out = labelled_set(spec, seq, registry, seeds.reference, cache)
            if out.note:
                notes.append(out.note)
            return out

        labeller, reference = opts["pricer"], opts["reference"] or opts["pricer"]
        train = labelled("train", task.n, labeller, task.domain, derivatives)
        val = labelled("validation", opts["validation"], labeller, task.domain) if opts["validation"] else None
        wide = labelled("test", opts["test"], reference, task.domain)
        narrow = (labelled("narrow", opts["narrow_test"], reference, {**task.domain, **opts["narrow"]})
                  if opts["narrow"] else None)

        noise_rng = np.random.default_rng(_child(seeds.sequence, ROLES["noise"]))
        Xtr, ytr, keep_tr = self._xy(fmap, train, opts["noise"], noise_rng)
        if Xtr.shape[0] < 2:
            raise ValueError(f"only {Xtr.shape[0]} training points could be labelled: nothing to learn from")
        fmap.fit(Xtr, ytr)
        inputs = {"X": fmap.scale_x(Xtr), "y": fmap.scale_y(ytr)}
        if derivatives:
            inputs["dydX"] = fmap.scale_gradient(self._gradients(fmap, train, keep_tr))
        if val is not None:
            Xv, yv, _ = self._xy(fmap, val, opts["noise"], noise_rng)
            if Xv.shape[0]:
                inputs["X_val"], inputs["y_val"] = fmap.scale_x(Xv), fmap.scale_y(yv)
        dropped = (train.size - Xtr.shape[0]) + (val.size - inputs.get("X_val", np.empty((0,))).shape[0] if val else 0)

        tests = [("wide", wide)] + ([("narrow", narrow)] if narrow is not None else [])
        params, price, reference_values, parts = {}, [], [], []
        for name, data in tests:
            keep = np.isfinite(data.labels)
            if fmap.target == "implied_vol":
                _, ok = fmap.raw_features(data.params, data.labels)
                keep &= ok
            dropped_test = int(data.size - keep.sum())
            if dropped_test:
                notes.append(f"{dropped_test} {name} test points dropped (no label, or time value below "
                             f"{opts['min_time_value']:g})")
            for k, v in data.params.items():
                params.setdefault(k, []).append(v[keep])
            price.append(data.labels[keep])
            reference_values.append(fmap.raw_target(data.params, data.labels)[keep] if fmap.target == "implied_vol"
                                    else data.labels[keep])
            parts.append((name, int(keep.sum())))
        params = {k: np.concatenate(v) for k, v in params.items()}
        reference_values = np.concatenate(reference_values)
        extra = {
            "fmap": fmap, "parts": parts, "label_s": train.label_s + (val.label_s if val else 0.0),
            "derivative_s": train.derivative_s,
            "n_labelled": train.size + (val.size if val else 0), "n_train": int(Xtr.shape[0]),
            "n_val": int(inputs["X_val"].shape[0]) if "X_val" in inputs else 0,
            "cached": train.cached and (val is None or val.cached), "data_hash": train.key,
            "derivatives": train.derivatives, "dropped": int(dropped), "notes": notes,
            "test_price": np.concatenate(price) if fmap.target == "implied_vol" else None,
            "audit": self._audit_grid(task, fmap, model) if opts["audit"] else None,
            "design": _design(task),
        }
        scale = scoring.price_scale(params, reference_values.size) if fmap.target == "price" else None
        return TaskData(params, inputs, reference_values, wide.label_s + (narrow.label_s if narrow else 0.0), scale,
                        seeds.method, extra)

    @staticmethod
    def _wants_derivatives(spec, registry) -> bool:
        cls = registry.get("approximator", spec.name)
        try:
            return bool(cls(**spec.settings).wants_derivatives())
        except ValueError:
            return False

    @staticmethod
    def _derivative_params(fmap: FeatureMap) -> tuple[str, ...]:
        if fmap.target != "price":
            raise ValueError("differential training needs a price target")
        names = []
        for feature in fmap.names:
            names.append("S" if feature == "S/K" else feature)
        return tuple(names)

    @staticmethod
    def _xy(fmap: FeatureMap, data: LabelledSet, noise: float, rng: np.random.Generator):
        """Features and targets of a set; the noise goes on the label the approximator learns: the price
        (before V/K) for a price target, the volatility for an implied_vol target (the price stays a clean
        input)."""
        iv = fmap.target == "implied_vol"
        labels = data.labels
        if noise > 0 and not iv:
            labels = labels + noise * rng.standard_normal(labels.size)
        X, ok = fmap.raw_features(data.params, data.labels if iv else None)
        y = fmap.raw_target(data.params, labels)
        if noise > 0 and iv:
            y = y + noise * rng.standard_normal(y.size)
        keep = np.asarray(ok) & np.isfinite(data.labels) & np.isfinite(y)
        return np.ascontiguousarray(X[keep]), y[keep], keep

    @staticmethod
    def _gradients(fmap: FeatureMap, data: LabelledSet, keep: np.ndarray) -> np.ndarray:
        """d y / d feature (unscaled) from the labelling pricer's d V / d parameter."""
        K = data.params["K"][keep] if fmap.homogeneous else 1.0
        cols = []
        for feature in fmap.names:
            if feature == "S/K":
                cols.append(data.gradients["S"][keep])  # y = V/K = g(S/K): dy/d(S/K) = dV/dS
            else:
                cols.append(data.gradients[feature][keep] / K)
        return np.stack(cols, axis=1)

    @staticmethod
    def _audit_grid(task, fmap: FeatureMap, model) -> dict[str, Any] | None:
        """The audit's grid: strikes x maturities, the other parameters at mid-range; None if it has no strike axis."""
        def value(p):
            if p in task.fixed:
                return task.fixed[p]
            if p in task.domain:
                return 0.5 * sum(task.domain[p])
            return model.params[p].default

        S0 = value("S")
        if fmap.homogeneous:
            lo, hi = fmap.declared_range("S/K")
            strikes = np.sort(S0 / np.linspace(lo, hi, AUDIT_STRIKES))
        elif "K" in task.domain:
            strikes = np.linspace(*task.domain["K"], AUDIT_STRIKES)
        else:
            return None
        maturities = np.linspace(*task.domain["T"], AUDIT_MATURITIES) if "T" in task.domain else np.array([value("T")])
        TT, KK = np.meshgrid(maturities, strikes, indexing="ij")
        grid = {p: np.full(TT.size, float(value(p))) for p in model.params if value(p) is not None}
        grid["K"], grid["T"] = KK.ravel(), TT.ravel()
        # a function learned at one strike prices the others by homogeneity (LearnedFunction scales V/K)
        return {"params": model.validate(grid), "shape": TT.shape}

    # ------------------------------------------------------------------ cells
    def prepare(self, method, task, data, device, registry):
        fmap: FeatureMap = data.extra["fmap"]
        inputs = data.inputs
        dydX = inputs.get("dydX") if method.wants_derivatives() else None
        if method.wants_derivatives() and dydX is None:
            raise ValueError("this configuration trains on derivative labels, and the task has none")
        for module in getattr(method, "imports", ()):
            importlib.import_module(module)  # a first import is not training time
        t0 = time.perf_counter()
        method.fit(inputs["X"], inputs["y"], X_val=inputs.get("X_val"), y_val=inputs.get("y_val"), dydX=dydX,
                   device=device)
        arrays.synchronize(device)
        fit_s = time.perf_counter() - t0
        learned = LearnedFunction(method, fmap, {
            "approximator": method.name, "version": method.version, "settings": method.get_params(),
            "task": task.name, "model": task.model, "product": task.product, "target": fmap.target,
            "data_hash": data.extra["data_hash"], "n_train": data.extra["n_train"], "fit_s": fit_s,
            "labelling_pricer": {"name": task.options["pricer"].name,
                                 "settings": dict(task.options["pricer"].settings)},
            "trained_on": device,
        })
        saved = learned.to_bytes()  # moves the fitted state to the CPU; `to` brings it back
        learned.to(device)
        params = arrays.to_device(data.params, device)
        price = data.extra["test_price"]
        price = arrays.to_device({"p": price}, device)["p"] if price is not None else None
        info = {"fit_s": fit_s, "saved": saved, "fit_info": dict(getattr(method, "fit_info_", {}) or {}),
                "uses_derivatives": dydX is not None}
        if data.extra["audit"] is not None:
            grid = data.extra["audit"]
            values, _, _ = learned.evaluate(arrays.to_device(grid["params"], device))
            info["audit"] = arbitrage_audit(task.product, grid["params"], arrays.to_numpy(values), grid["shape"])
        if getattr(method, "has_std", False):
            wide = data.extra["parts"][0][1]
            _, _, std = learned.evaluate(params, price, with_std=True)
            mean, _, _ = learned.evaluate(params, price)
            err = np.abs(arrays.to_numpy(mean)[:wide] - data.reference[:wide])
            sd = arrays.to_numpy(std)[:wide]
            finite = np.isfinite(err) & np.isfinite(sd)
            info["within_2sd"] = float(np.mean(err[finite] <= 2 * sd[finite])) if finite.any() else math.nan

        def call():
            values, _, _ = learned.evaluate(params, price)
            return Prediction(values, info)

        return call

    def score(self, task, data, out, metrics: Mapping[str, Any]) -> Scored:
        if not isinstance(out, Prediction):
            raise ValueError(f"expected a Prediction, got {type(out).__name__}")
        estimate = arrays.to_numpy(out.values).astype(np.float64).reshape(-1)
        if estimate.size != data.size:
            raise ValueError(f"wrong output shape {estimate.shape}, expected {(data.size,)}")
        info, extra = out.info, data.extra
        columns: dict[str, Any] = {}
        notes = list(extra["notes"])
        start = 0
        for name, count in extra["parts"]:
            part = slice(start, start + count)
            start += count
            scale = data.scale[part] if data.scale is not None else None
            cols = scoring.score(estimate[part], data.reference[part], metrics, task.floor, None, scale)
            if name == "wide":
                columns.update(cols)
                failures = cols.get("failures", 0)
                if failures:
                    notes.append(f"{failures} of {count} wide test points not predicted (outside the training box "
                                 "or no feature)")
            else:
                columns.update({f"{name}_{k}": v for k, v in cols.items() if k not in ("tier",)})
        fit_info = info.get("fit_info", {})
        columns.update({
            "fit_s": info["fit_s"], "label_s": extra["label_s"],
            "label_price_s": extra["label_s"] / max(extra["n_labelled"], 1),
            # the derivative labels are a cost of the configurations that train on them only
            "derivative_s": extra["derivative_s"] if info.get("uses_derivatives") else 0.0,
            "n_train": extra["n_train"], "n_val": extra["n_val"], "n_test": extra["parts"][0][1],
            "n_narrow": extra["parts"][1][1] if len(extra["parts"]) > 1 else 0, "cached": extra["cached"],
            "design": extra["design"],
            "fit_info": json.dumps(fit_info, sort_keys=True, default=str),
        })
        if extra["derivatives"] and task.methods:
            columns["derivatives"] = extra["derivatives"]
        if "audit" in info:
            audit = info["audit"]
            columns["arb_violations"], columns["arb_max"] = audit["count"], audit["max"]
            if audit["count"]:
                notes.append("arbitrage on the audit grid: " + ", ".join(f"{k} {v}" for k, v in audit["by_kind"].items()
                                                                        if v))
        if "within_2sd" in info:
            columns["within_2sd"] = info["within_2sd"]
        if extra["cached"]:
            notes.append("training data from the cache")
        if fit_info.get("note"):
            notes.append(str(fit_info["note"]))
        files = {"pbapprox": info["saved"]}
        png = _scatter_png(task, estimate, data.reference, extra["parts"])
        if png is not None:
            files["png"] = png
        return Scored(columns, notes, artifacts=files)

    # ------------------------------------------------------------------ after the run
    def finish(self, task, rows, run_rows, directory):
        for row in rows:
            ns = row.get("ns_per_option")
            per_price = ns * 1e-9 if ns is not None and ns == ns else math.nan
            cost = sum(row.get(k) or 0.0 for k in ("label_s", "derivative_s", "fit_s"))
            row["break_even"] = _break_even(cost, row.get("label_price_s", math.nan), per_price)
            best = _fastest_classical(task, row, run_rows)
            if best is not None:
                row["classical"] = best["method"] + (f" ({best['label']})" if best.get("label") else "")
                row["break_even_classical"] = _break_even(cost, best["ns_per_option"] * 1e-9, per_price)
        return _learning_curve(task, run_rows)


class Prediction:
    """A cell's timed output: the predicted values, and what its untimed set-up measured."""

    __slots__ = ("values", "info")

    def __init__(self, values: Any, info: dict[str, Any]):
        self.values, self.info = values, info


def _design(task) -> str:
    """A short hash of what defines a task's data except its size: tasks with the same design differ only in n."""
    opts = task.options
    described = {"model": task.model, "product": task.product, "domain": task.domain, "fixed": task.fixed,
                 "sampler": task.sampler, "sampler_options": task.sampler_options,
                 "pricer": [opts["pricer"].name, opts["pricer"].settings],
                 "reference": [s.name, s.settings] if (s := opts["reference"]) is not None else None,
                 **{k: opts[k] for k in ("target", "homogeneous", "squash", "min_time_value", "noise", "narrow")}}
    text = json.dumps(described, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _child(seq: np.random.SeedSequence, role: int) -> np.random.SeedSequence:
    return np.random.SeedSequence(seq.entropy, spawn_key=tuple(seq.spawn_key) + (role,))


def _break_even(cost: float, pricer_per_price: float, approx_per_price: float) -> float:
    """Prices to serve before ``cost`` seconds are paid back by the saving per price (inf: never)."""
    if not (math.isfinite(pricer_per_price) and math.isfinite(approx_per_price)):
        return math.nan
    saving = pricer_per_price - approx_per_price
    return math.ceil(cost / saving) if saving > 0 else math.inf


def _fastest_classical(task, row, run_rows) -> dict[str, Any] | None:
    """The fastest classical row the approximator stands in for, of at least its accuracy tier (None: none).

    Price targets: ``price`` rows of the same model and product; implied-volatility targets: ``implied_vol``
    rows (root finders; tiers in volatility units on both sides). A learned method is not classical.
    """
    tier = row.get("tier")
    if tier is None or not tier == tier:
        return None
    kind = "implied_vol" if task.options["target"] == "implied_vol" else "price"
    best = None
    for other in run_rows:
        if (other.get("kind") == kind and other.get("method") not in LEARNED_METHODS
                and other.get("model") == task.model and other.get("product") == task.product
                and other.get("status") == "ok" and other.get("device") == row.get("device")
                and other.get("tier", math.inf) <= tier and other.get("ns_per_option")
                and other["ns_per_option"] == other["ns_per_option"]):
            if best is None or other["ns_per_option"] < best["ns_per_option"]:
                best = other
    return best


def arbitrage_audit(product: str, params: Mapping[str, np.ndarray], prices: np.ndarray,
                    shape: tuple[int, int]) -> dict[str, Any]:
    """Violations of static no-arbitrage on a (maturities x strikes) grid of prices (strikes ascending).

    Checks: calls non-increasing and puts non-decreasing in strike, convex in strike, non-decreasing in
    maturity (only where that must hold: American options, European calls with q = 0 and r >= 0, European
    puts with r = 0 and q >= 0; a deep in-the-money European put loses value with maturity when r > 0),
    and within the price bounds. A violation smaller than ``AUDIT_TOL`` times (S + K) is rounding, not counted.
    Points the approximator did not price (NaN) are not audited. Returns the count, the largest size and
    the count of each kind.
    """
    P = np.asarray(prices, dtype=np.float64).reshape(shape)
    S, K, T = (np.asarray(params[k]).reshape(shape) for k in ("S", "K", "T"))
    r, q = (np.asarray(params.get(k, np.zeros(S.shape))).reshape(shape) for k in ("r", "q"))
    tol = AUDIT_TOL * (S + K)
    call = product.endswith("call")
    american = product.startswith("american")
    sizes: dict[str, np.ndarray] = {}
    slope = np.diff(P, axis=1)
    sizes["strike monotonicity"] = slope if call else -slope
    dK = np.diff(K, axis=1)
    gradient = slope / dK
    sizes["strike convexity"] = -np.diff(gradient, axis=1) * 0.5 * (dK[:, 1:] + dK[:, :-1])
    # calls: the American call equals the European one when q = 0 (and r >= 0); puts by put-call symmetry
    monotone = (np.all(q == 0) and np.all(r >= 0)) if call else (np.all(r == 0) and np.all(q >= 0))
    if P.shape[0] > 1 and (american or monotone):
        sizes["calendar"] = -np.diff(P, axis=0)
    disc_s, disc_k = S * np.exp(-q * T), K * np.exp(-r * T)
    if call:
        lower = np.maximum(disc_s - disc_k, 0.0)
        upper = S if american else disc_s
        if american:
            lower = np.maximum(lower, S - K)
    else:
        lower = np.maximum(disc_k - disc_s, 0.0)
        upper = K if american else disc_k
        if american:
            lower = np.maximum(lower, K - S)
    sizes["bounds"] = np.maximum(lower - P, P - upper)
    count, largest, by_kind = 0, 0.0, {}
    for kind, size in sizes.items():
        limit = tol[(slice(None), slice(0, size.shape[1])) if size.shape[1] < tol.shape[1] else (slice(None),) * 2]
        limit = limit[: size.shape[0]]
        bad = np.isfinite(size) & (size > limit)
        by_kind[kind] = int(bad.sum())
        count += by_kind[kind]
        if bad.any():
            largest = max(largest, float(size[bad].max()))
    return {"count": count, "max": largest, "by_kind": by_kind}


def _scatter_png(task, estimate: np.ndarray, reference: np.ndarray, parts) -> bytes | None:
    """Predicted against target, and the error histogram, of the wide test set (PNG bytes)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except Exception:  # noqa: BLE001 - no plot without matplotlib
        return None
    count = parts[0][1]
    est, ref = estimate[:count], reference[:count]
    ok = np.isfinite(est) & np.isfinite(ref)
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 4))
    a.scatter(ref[ok], est[ok], s=2, alpha=0.4)
    if ok.any():
        lo, hi = float(min(ref[ok].min(), est[ok].min())), float(max(ref[ok].max(), est[ok].max()))
        a.plot([lo, hi], [lo, hi], "k--", lw=0.8)
    a.set_xlabel("target")
    a.set_ylabel("predicted")
    a.set_title(f"{task.name}: wide test set")
    b.hist((est - ref)[ok], bins=60)
    b.set_xlabel("predicted - target")
    b.set_ylabel("points")
    b.set_title("error histogram")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90)
    plt.close(fig)
    return buffer.getvalue()


def _learning_curve(task, run_rows) -> dict[str, bytes]:
    """RMSE against training-set size across the run's approximate tasks of this task's design (all but n)."""
    design = _design(task)
    same = [r for r in run_rows if r.get("kind") == "approximate" and r.get("design") == design
            and r.get("n_train") and r.get("status") == "ok"]
    tasks = sorted({r["task"] for r in same})
    sizes = sorted({int(r["n_train"]) for r in same})
    if len(tasks) < 2 or len(sizes) < 2 or task.name != max(tasks, key=lambda t: max(
            int(r["n_train"]) for r in same if r["task"] == t)):
        return {}
    table: dict[tuple[str, str, str], dict[int, float]] = {}
    for r in same:
        key = (r["method"], r.get("label") or r.get("settings", ""), r.get("device", "cpu"))
        table.setdefault(key, {})[int(r["n_train"])] = r.get("rmse", math.nan)
    lines = ["method,configuration,device," + ",".join(f"rmse_n{n}" for n in sizes)]
    for (method, config, device), by_n in sorted(table.items()):
        cfg = '"' + str(config).replace('"', '""') + '"'
        lines.append(f"{method},{cfg},{device}," + ",".join(f"{by_n.get(n, math.nan):.6g}" for n in sizes))
    files = {"learning_curve.csv": ("\n".join(lines) + "\n").encode()}
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 4))
        for (method, config, device), by_n in sorted(table.items()):
            ns = sorted(by_n)
            ax.loglog(ns, [by_n[n] for n in ns], "o-", label=f"{method} {config} ({device})"[:60])
        ax.set_xlabel("training set size")
        ax.set_ylabel("RMSE (wide test set)")
        ax.legend(fontsize=7)
        fig.tight_layout()
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=90)
        plt.close(fig)
        files["learning_curve.png"] = buffer.getvalue()
    except Exception:  # noqa: BLE001 - the CSV is the record
        pass
    return files
