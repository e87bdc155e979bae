"""Surrogate Modeling Toolbox models (approximator ``smt``): KRG, RBF, LS and QP behind one adapter.

What it does
    Trains one of smt's surrogate models (``smt.surrogate_models``), chosen by
    the setting ``surrogate``, on the standardised training set, and predicts
    with its ``predict_values``:

    - ``KRG``: kriging (a Gaussian process with a polynomial trend ``poly`` and
      correlation ``corr``); hyperparameters (one length scale theta per input,
      starting at ``theta0``) by maximum likelihood with smt's optimiser
      ``hyper_opt`` from ``n_start`` starting points drawn with ``seed``.
      O(n^3) per likelihood evaluation. The only one with a predictive
      variance (``predict_variances``).
    - ``RBF``: radial-basis-function interpolation, Gaussian basis of width
      ``d0``, optional global polynomial ``poly_degree`` (-1 none, 0 constant,
      1 linear), regularisation ``reg``. O(n^2) memory, O(n^3) solve.
    - ``LS``: linear least squares (an affine function of the inputs).
    - ``QP``: quadratic polynomial least squares; needs at least
      (d + 1)(d + 2) / 2 points.

Predictive standard deviation
    ``has_std`` is ``True`` on the class (the capability exists) and is
    overridden on the *instance* by ``fit``: ``True`` only for ``KRG``, where
    ``predict_std`` is the square root of ``predict_variances`` (the kriging
    variance of the latent function, plus nothing: without ``eval_noise`` the
    model interpolates). For the others ``fit`` sets ``has_std = False`` and
    ``predict_std`` raises NotImplementedError. The framework reads
    ``getattr(approximator, "has_std", False)`` on the fitted instance.

Limits
    - KRG and RBF train on at most ``max_points`` points (default 1000): a
      larger training set is subsampled at random (seeded by ``seed``) and
      ``fit_info_["note"]`` says so ("trained on 1000 of 100000 points
      (max_points)"). LS and QP are linear in n and use every point.
      KRG at 1000 points in 2-D takes of the order of 10 s on one core with
      the defaults (Cobyla, 3 starts); smt's own defaults (TNC, 10 starts)
      are several times slower.
    - CPU only (smt is NumPy/SciPy). Deterministic for a given ``seed``.
    - smt's output is silenced: ``print_global=False``, and stdout is
      captured during training because KRG (smt 2.15) prints the eigenvalues
      of a kernel matrix that is not positive definite straight to stdout
      whatever the print options; ``fit_info_["smt_messages"]`` counts such
      lines.
    - An empty batch gives an empty prediction (smt itself raises on one).
    - smt 2.15 quirks: the KRG option is ``seed`` (not ``random_state``);
      ``theta0`` must have one entry per input (we repeat the setting).
"""

from __future__ import annotations

import contextlib
import io
import time
from typing import Any

import numpy as np

from bench import hookimpl
from bench.methods import Approximator, Setting, check_fit_arrays

__version__ = "1"

SUBSAMPLED = ("KRG", "RBF")  # surrogates whose cost grows faster than n: trained on at most max_points points


class SMTSurrogate(Approximator):
    """smt's KRG, RBF, LS or QP surrogate behind the approximator interface."""

    name = "smt"
    version = "1"
    description = "Surrogate Modeling Toolbox: kriging (KRG), RBF, linear (LS) or quadratic (QP) surrogate"
    devices = ("cpu",)
    has_std = True  # the class can give one (KRG); fit sets it per instance: True only for KRG
    imports = ("smt.surrogate_models",)
    settings = {
        "surrogate": Setting("KRG", str, "smt surrogate model", choices=("KRG", "RBF", "LS", "QP")),
        "max_points": Setting(1000, int, "KRG, RBF: train on a seeded random subset of at most this many points",
                              min=1, max=20_000),
        # KRG
        "corr": Setting("squar_exp", str, "KRG: correlation function",
                        choices=("squar_exp", "abs_exp", "pow_exp", "matern52", "matern32")),
        "poly": Setting("constant", str, "KRG: regression trend", choices=("constant", "linear", "quadratic")),
        "theta0": Setting(1e-2, float, "KRG: initial correlation parameter, one per input", min=1e-6, max=20.0),
        "hyper_opt": Setting("Cobyla", str, "KRG: likelihood optimiser", choices=("Cobyla", "TNC")),
        "n_start": Setting(3, int, "KRG: starting points of the likelihood optimisation", min=1, max=50),
        "nugget": Setting(None, float, "KRG: diagonal jitter (None: smt's default, 100 machine epsilons)",
                          min=0.0),
        "eval_noise": Setting(False, bool, "KRG: also estimate a noise variance (for noisy targets)"),
        # RBF
        "d0": Setting(1.0, float, "RBF: basis function width (standardised inputs)", min=1e-6),
        "poly_degree": Setting(-1, int, "RBF: global polynomial (-1 none, 0 constant, 1 linear)", choices=(-1, 0, 1)),
        "reg": Setting(1e-10, float, "RBF: regularisation of the interpolation system", min=0.0),
        "seed": Setting(None, int, "random seed (None: 0): the max_points subset and KRG's starting points", min=0),
    }

    def _options(self, d: int, seed: int) -> dict[str, Any]:
        options: dict[str, Any] = {"print_global": False}
        if self.surrogate == "KRG":
            options.update(theta0=[self.theta0] * d, corr=self.corr, poly=self.poly, hyper_opt=self.hyper_opt,
                           n_start=self.n_start, eval_noise=self.eval_noise, seed=seed)
            if self.nugget is not None:
                options["nugget"] = self.nugget
        elif self.surrogate == "RBF":
            options.update(d0=self.d0, poly_degree=self.poly_degree, reg=self.reg)
        return options

    def fit(self, X, y, *, X_val=None, y_val=None, dydX=None, device="cpu") -> "SMTSurrogate":
        X, y, X_val, y_val = check_fit_arrays(X, y, X_val, y_val)
        self.check_device(device)
        n, d = X.shape
        needed = {"LS": d + 1, "QP": (d + 1) * (d + 2) // 2}.get(self.surrogate, 2)
        if n < needed:
            raise ValueError(f"approximator 'smt': surrogate {self.surrogate} needs at least {needed} points "
                             f"in {d} inputs, got {n}")
        seed = 0 if self.seed is None else self.seed
        info: dict[str, Any] = {"surrogate": self.surrogate, "n_given": n, "n_features": d}
        if self.surrogate in SUBSAMPLED and n > self.max_points:
            keep = np.sort(np.random.default_rng(seed).choice(n, size=self.max_points, replace=False))
            X, y = X[keep], y[keep]
            info["note"] = f"trained on {self.max_points} of {n} points (max_points)"
        info["n_train"] = X.shape[0]

        from smt import surrogate_models

        start = time.perf_counter()
        model = getattr(surrogate_models, self.surrogate)(**self._options(d, seed))
        captured = io.StringIO()
        with contextlib.redirect_stdout(captured):  # KRG prints eigenvalues of bad kernel matrices regardless
            model.set_training_values(X, y)
            model.train()
        self.model_ = model
        self.n_features_in_ = d
        self.has_std = self.surrogate == "KRG"
        info["fit_seconds"] = round(time.perf_counter() - start, 6)
        info["smt_messages"] = captured.getvalue().count("\n")
        if self.surrogate == "KRG":
            theta = np.asarray(model.optimal_theta, dtype=np.float64).ravel()
            info["theta_min"], info["theta_max"] = float(theta.min()), float(theta.max())
        info["train_rmse"] = float(np.sqrt(np.mean((self.predict(X) - y) ** 2)))
        if X_val is not None:
            info["val_rmse"] = float(np.sqrt(np.mean((self.predict(X_val) - y_val) ** 2)))
        self.fit_info_ = info
        return self

    def predict(self, X) -> np.ndarray:
        X = np.asarray(X, dtype=np.float64)
        if X.shape[0] == 0:
            return np.zeros(0)
        return np.ascontiguousarray(self.model_.predict_values(X)[:, 0])

    def predict_std(self, X) -> np.ndarray:
        """KRG only: the square root of smt's kriging variance (clipped at 0)."""
        if self.surrogate != "KRG":
            raise NotImplementedError(
                f"approximator 'smt': surrogate {self.surrogate} gives no predictive standard deviation "
                "(only KRG does)")
        X = np.asarray(X, dtype=np.float64)
        if X.shape[0] == 0:
            return np.zeros(0)
        return np.sqrt(np.clip(self.model_.predict_variances(X)[:, 0], 0.0, None))


@hookimpl
def register_approximators(register):
    register(SMTSurrogate)
