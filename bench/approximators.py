"""Fitted approximators as objects and files: :class:`LearnedFunction`, save and load.

A :class:`LearnedFunction` is a fitted approximator together with the
:class:`~bench.features.FeatureMap` it was trained with (features, target,
scaling, training box) and metadata: the approximator's name, version and
settings, the hash of its training data, the task it came from and the
package versions. It evaluates on model parameters directly::

    import bench
    f = bench.load_approximator("results/bs_ann/<run>/artifacts/bs_ann/mlp.cpu.pbapprox")
    f.price(S=1.0, K=[0.9, 1.0, 1.1], T=0.5, r=0.0, sigma=0.2)       # a price target
    bench.price(f, model="black_scholes", product="european_call", S=1, K=1, T=0.5, sigma=0.2)
    bench.implied_vol(iv_ann, price=0.05, S=1, K=1, T=0.5, r=0.0)      # an implied_vol target

and as a method of ``price`` and ``implied_vol`` tasks through the pricer and
root finder called ``learned`` (setting ``path``, or ``fitted`` naming an
``approximate`` task of the same suite).

Where the function cannot answer it returns NaN with a reason: a point
outside the box it was trained on (extrapolation), a parameter held
constant in training given another value, a price whose time value is
below what an IV-ANN with the gradient squash can invert.

File format (``.pbapprox``): a zip archive holding ``meta.json`` (plain
JSON: everything above, readable without pricebench) and ``model.pkl`` (the
fitted approximator, moved to the CPU, pickled). Like scikit-learn's and
torch's own files, loading unpickles: load only files you trust.
"""

from __future__ import annotations

import io
import json
import pickle
import zipfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from bench import arrays, atomic, environment
from bench.features import FeatureMap
from bench.methods import Approximator

SUFFIX = ".pbapprox"
FORMAT = 1

# reasons a learned function gives for a NaN
OUTSIDE = "outside the training domain (extrapolation)"
FIXED_OTHER = "a parameter held constant in training has another value"
NO_FEATURE = "time value below what the approximator can invert"


@dataclass
class LearnedFunction:
    approximator: Approximator
    features: FeatureMap
    meta: dict[str, Any] = field(default_factory=dict)
    device: str = "cpu"

    # ------------------------------------------------------------------ what it stands for
    @property
    def target(self) -> str:
        return self.features.target

    @property
    def model(self) -> str:
        return self.features.model

    @property
    def product(self) -> str:
        return self.features.product

    def __repr__(self) -> str:
        return (f"<LearnedFunction {self.meta.get('approximator', '?')} {self.target} of {self.model} "
                f"{self.product}, {self.features.dimension} features>")

    # ------------------------------------------------------------------ evaluation
    def to(self, device: str) -> "LearnedFunction":
        """Move the fitted state to ``device`` (untimed set-up)."""
        self.approximator.check_device(device)
        self.approximator.prepare(np.zeros((1, self.features.dimension)), device)
        self.device = device
        return self

    def evaluate(self, params: Mapping[str, Any], price: Any = None, with_std: bool = False,
                 reasons: bool = False):
        """Values at ``params`` (arrays or tensors of one length, on this function's device).

        Returns ``(values, codes, std)``: ``values`` on the inputs' device with NaN where the
        function cannot answer; with ``reasons``, ``codes`` an int8 NumPy array (0 answered, 1
        outside the training box, 2 a parameter held fixed in training differs, 3 no feature), else
        None; ``std`` the predictive standard deviation where asked and available, else None.
        """
        with np.errstate(all="ignore"):  # bad inputs (K = 0, NaN) become NaN features, answered with a reason
            X, ok = self.features.raw_features(params, price)
            inside, fixed_ok = self.features.inside(X), self.features.fixed_ok(params, X)
        good = ok & inside & fixed_ok
        Xs = self.features.scale_x(X)
        with np.errstate(all="ignore"):
            y = self._like(self.approximator.predict(self.approximator.prepare(Xs, self.device)), X)
        out = self.features.output(self.features.unscale_y(y), params)
        std = None
        if with_std and getattr(self.approximator, "has_std", False):
            s = self._like(self.approximator.predict_std(self.approximator.prepare(Xs, self.device)), X)
            std = self.features.output(s * self.features.y_std, params)
        nan = float("nan")
        if arrays.is_torch(out):
            import torch

            out = torch.where(good, out, torch.full_like(out, nan))
        else:
            out = np.where(good, out, nan)
        codes = None
        if reasons:
            ok_h, in_h, fix_h = (arrays.to_numpy(m) for m in (ok, inside, fixed_ok))
            codes = np.where(~ok_h, 3, np.where(~fix_h, 2, np.where(~in_h, 1, 0))).astype(np.int8)
        return out, codes, std

    @staticmethod
    def _like(y: Any, X: Any) -> Any:
        """``y`` as a 1-D array of the kind and device of ``X``."""
        if arrays.is_torch(X):
            import torch

            return torch.as_tensor(y, device=X.device).reshape(-1).to(X.dtype)
        return arrays.to_numpy(y).reshape(-1).astype(np.float64)

    @staticmethod
    def reason_text(code: int) -> str:
        return {0: "", 1: OUTSIDE, 2: FIXED_OTHER, 3: NO_FEATURE}[int(code)]

    def price(self, **params: Any) -> np.ndarray:
        """Prices at the given model parameters (broadcast like NumPy); a price target only."""
        if self.target != "price":
            raise ValueError(f"this approximator learned {self.target!r}, not prices: use implied_vol")
        from bench.plugins import get_registry

        model = get_registry().model(self.model)
        full = dict(self.features.fixed)
        full.update(params)
        values = model.validate(full)
        shape = np.shape(next(iter(values.values())))
        flat = {k: np.ravel(v) for k, v in values.items()}
        out, _, _ = self.evaluate(flat)
        return arrays.to_numpy(out).reshape(shape)

    # ------------------------------------------------------------------ files
    def save(self, path: str | Path) -> Path:
        return save_approximator(self, path)

    def to_bytes(self) -> bytes:
        """The ``.pbapprox`` file's bytes (the approximator is moved to the CPU first)."""
        self.approximator.to_cpu()
        self.device = "cpu"
        meta = dict(self.meta, format=FORMAT, features=self.features.as_dict(),
                    approximator_class=f"{type(self.approximator).__module__}.{type(self.approximator).__qualname__}")
        meta.setdefault("saved", datetime.now(timezone.utc).isoformat(timespec="seconds"))
        meta.setdefault("packages", environment.package_versions())
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
            zf.writestr("meta.json", json.dumps(meta, indent=2, sort_keys=True, default=str))
            zf.writestr("model.pkl", pickle.dumps(self.approximator, protocol=pickle.HIGHEST_PROTOCOL))
        return buffer.getvalue()


def save_approximator(fitted: LearnedFunction, path: str | Path) -> Path:
    """Write ``fitted`` to ``path`` atomically (``.pbapprox`` is appended when missing)."""
    path = Path(path)
    if path.suffix != SUFFIX:
        path = path.with_name(path.name + SUFFIX)
    atomic.write_bytes(path, fitted.to_bytes())
    return path


def from_bytes(data: bytes, source: str = "<bytes>") -> LearnedFunction:
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            meta = json.loads(zf.read("meta.json"))
            blob = zf.read("model.pkl")
    except (zipfile.BadZipFile, KeyError, json.JSONDecodeError) as exc:
        raise ValueError(f"{source}: not a pricebench approximator file ({exc})") from None
    if meta.get("format") != FORMAT:
        raise ValueError(f"{source}: approximator file format {meta.get('format')!r}, this pricebench reads "
                         f"{FORMAT}")
    approximator = pickle.loads(blob)
    if not isinstance(approximator, Approximator):
        raise ValueError(f"{source}: model.pkl holds a {type(approximator).__name__}, not an approximator")
    features = FeatureMap.from_dict(meta.pop("features"))
    return LearnedFunction(approximator, features, meta)


def load_approximator(path: str | Path) -> LearnedFunction:
    """A fitted approximator saved by a run (``artifacts/<task>/<method>.<device>.pbapprox``) or by
    :func:`save_approximator`; ValueError for a file that is not one. Unpickles: trusted files only."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ValueError(f"cannot read approximator file {path}: {exc.strerror or exc}") from None
    return from_bytes(data, str(path))
