"""Polynomial and Chebyshev least squares (approximator ``least_squares``), with scikit-learn.

What it does
    Linear regression of the target on a fixed basis of all monomials or
    tensor Chebyshev polynomials of total degree 1..``degree`` in the d
    inputs, with ridge regularisation ``alpha`` (``alpha = 0``: plain least
    squares). The constant term is the intercept, which is not penalised.

    - ``basis = "polynomial"``: the monomials x1^a1 ... xd^ad, 1 <= sum a <= degree,
      built by scikit-learn's ``PolynomialFeatures(include_bias=False)`` on the
      standardised inputs the framework passes in.
    - ``basis = "chebyshev"``: T_a1(z1) ... T_ad(zd), 1 <= sum a <= degree, with
      each input mapped affinely to z in [-1, 1] by the *training* minimum and
      maximum of its column (stored at fit; a constant column maps to 0). Points
      outside the training box map outside [-1, 1] and are extrapolated by the
      same polynomials (no clipping). The basis is much better conditioned than
      monomials at high degree.

    The coefficients come from scikit-learn's ``Ridge(alpha, fit_intercept=True,
    solver=solver)``; the default solver ``"svd"`` is the most accurate (an exact
    cubic is recovered to about 1e-12 with ``alpha = 0``), ``"cholesky"`` (normal
    equations) is faster on large designs but squares the condition number.
    ``predict`` evaluates the basis with NumPy and takes one matrix-vector product.

Limits
    - The basis has C(d + degree, degree) functions (constant included); more
      than ``MAX_BASIS`` = 20,000 is refused at fit with a ValueError, and so is a
      design matrix of more than ``MAX_DESIGN_ENTRIES`` = 2e8 numbers (1.6 GB of
      float64; n x basis size): use a lower ``degree`` or fewer points.
    - CPU only; deterministic (no randomness, so no seed).
    - Fits that need more basis functions than points are under-determined:
      use ``alpha > 0`` (ridge picks the smallest-norm-like solution either way).
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np

from bench import hookimpl
from bench.methods import Approximator, Setting, check_fit_arrays

__version__ = "1"

PREDICT_BLOCK = 1024  # rows per block of predict
MAX_BASIS = 20_000  # basis functions, constant included
MAX_DESIGN_ENTRIES = 200_000_000  # n x (basis functions): the design matrix's size in numbers


def n_basis(d: int, degree: int) -> int:
    """The number of monomials (or tensor Chebyshev polynomials) of total degree <= ``degree`` in ``d`` variables."""
    return math.comb(d + degree, degree)


def total_degree_indices(d: int, degree: int) -> np.ndarray:
    """Multi-indices a in N^d with 1 <= |a| <= degree, shape (count, d), ordered by total degree then lexicographically."""
    out: list[tuple[int, ...]] = []

    def extend(prefix: tuple[int, ...], left: int, budget: int) -> None:
        if left == 0:
            if sum(prefix) == budget:
                out.append(prefix)
            return
        for a in range(budget - sum(prefix), -1, -1):
            extend(prefix + (a,), left - 1, budget)

    for total in range(1, degree + 1):
        extend((), d, total)
    return np.array(out, dtype=np.intp).reshape(-1, d)


def chebyshev_basis(Z: np.ndarray, indices: np.ndarray, degree: int, transposed: bool = False) -> np.ndarray:
    """T_a1(z1) ... T_ad(zd) for every row of ``Z`` (n, d) and every multi-index row of ``indices``.

    Returns (n, count), or (count, n) with ``transposed`` (the layout it is computed in: contiguous rows).
    """
    n, d = Z.shape
    Zt = np.ascontiguousarray(Z.T)
    # T[j, k] = T_k(z_j) for every point, by the three-term recurrence T_{k+1} = 2 z T_k - T_{k-1}
    T = np.empty((d, degree + 1, n))
    T[:, 0] = 1.0
    if degree >= 1:
        T[:, 1] = Zt
    for k in range(1, degree):
        T[:, k + 1] = 2.0 * Zt * T[:, k] - T[:, k - 1]
    out = T[0, indices[:, 0]]
    for j in range(1, d):
        out *= T[j, indices[:, j]]
    return out if transposed else out.T


class LeastSquares(Approximator):
    """Ridge regression on a polynomial or tensor-Chebyshev basis of total degree <= ``degree``."""

    name = "least_squares"
    version = "1"
    description = "Polynomial or Chebyshev least squares with ridge regularisation (scikit-learn Ridge)"
    devices = ("cpu",)
    has_std = False
    imports = ("sklearn.linear_model", "sklearn.preprocessing")
    settings = {
        "basis": Setting("chebyshev", str, "monomials (polynomial) or tensor Chebyshev polynomials on the "
                         "training box", choices=("polynomial", "chebyshev")),
        "degree": Setting(4, int, "total degree of the basis", min=0, max=100),
        "alpha": Setting(1e-10, float, "ridge penalty on the coefficients (0: plain least squares; the "
                         "intercept is not penalised)", min=0.0),
        "solver": Setting("svd", str, "scikit-learn Ridge solver: svd (most accurate) or cholesky "
                          "(normal equations, faster)", choices=("svd", "cholesky")),
    }

    def _features(self, X: np.ndarray) -> np.ndarray:
        if self.basis == "polynomial":
            return self.poly_.transform(X)
        Z = (X - self.center_) * self.scale_
        return chebyshev_basis(Z, self.indices_, self.degree)

    def fit(self, X, y, *, X_val=None, y_val=None, dydX=None, device="cpu") -> "LeastSquares":
        X, y, X_val, y_val = check_fit_arrays(X, y, X_val, y_val)
        self.check_device(device)
        n, d = X.shape
        count = n_basis(d, self.degree)
        if count > MAX_BASIS:
            raise ValueError(
                f"approximator 'least_squares': degree {self.degree} in {d} inputs needs {count} basis functions, "
                f"more than the cap of {MAX_BASIS}; lower 'degree'")
        if n * count > MAX_DESIGN_ENTRIES:
            raise ValueError(
                f"approximator 'least_squares': the design matrix would have {n} x {count} = {n * count} entries, "
                f"more than the cap of {MAX_DESIGN_ENTRIES}; lower 'degree' or use fewer points")
        start = time.perf_counter()
        self.n_features_in_ = d
        self.n_basis_ = count
        if self.degree == 0:  # the constant alone: the mean
            self.coef_ = np.zeros(0)
            self.intercept_ = float(np.mean(y))
        else:
            from sklearn.linear_model import Ridge

            if self.basis == "polynomial":
                from sklearn.preprocessing import PolynomialFeatures

                self.poly_ = PolynomialFeatures(self.degree, include_bias=False).fit(X)
            else:
                lo, hi = X.min(axis=0), X.max(axis=0)
                width = hi - lo
                self.center_ = (lo + hi) / 2.0
                self.scale_ = np.where(width > 0, 2.0 / np.where(width > 0, width, 1.0), 0.0)
                self.indices_ = total_degree_indices(d, self.degree)
            ridge = Ridge(alpha=self.alpha, fit_intercept=True, solver=self.solver).fit(self._features(X), y)
            self.coef_ = np.ascontiguousarray(ridge.coef_, dtype=np.float64)
            self.intercept_ = float(ridge.intercept_)
        info: dict[str, Any] = {"basis": self.basis, "degree": self.degree, "n_basis": count, "n_train": n,
                                "n_features": d, "alpha": self.alpha, "solver": self.solver,
                                "train_rmse": float(np.sqrt(np.mean((self.predict(X) - y) ** 2))),
                                "fit_seconds": round(time.perf_counter() - start, 6)}
        if X_val is not None:
            info["val_rmse"] = float(np.sqrt(np.mean((self.predict(X_val) - y_val) ** 2)))
        self.fit_info_ = info
        return self

    def predict(self, X) -> np.ndarray:
        X = np.asarray(X, dtype=np.float64)
        if X.shape[0] == 0:
            return np.zeros(0)
        if self.degree == 0:
            return np.full(X.shape[0], self.intercept_)
        # in blocks of rows whose basis stays in cache: 6x faster than one n x count matrix at 20,000 points
        out = np.empty(X.shape[0])
        for start in range(0, X.shape[0], PREDICT_BLOCK):
            block = X[start:start + PREDICT_BLOCK]
            if self.basis == "polynomial":
                out[start:start + PREDICT_BLOCK] = self.poly_.transform(block) @ self.coef_
            else:
                Z = (block - self.center_) * self.scale_
                out[start:start + PREDICT_BLOCK] = self.coef_ @ chebyshev_basis(Z, self.indices_, self.degree, True)
        return out + self.intercept_


@hookimpl
def register_approximators(register):
    register(LeastSquares)
