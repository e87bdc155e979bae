"""Gaussian-process regression (approximator ``gp``), with gpytorch.

What it does
    Fits a Gaussian process to the (standardised) training set and predicts
    its posterior mean; ``predict_std`` gives the predictive standard
    deviation. The prior is a constant mean plus a scaled ARD kernel (one
    lengthscale per input): ``ScaleKernel(RBFKernel)`` or
    ``ScaleKernel(MaternKernel(nu))`` with nu = 0.5, 1.5 or 2.5. The
    likelihood is Gaussian with one learned noise variance, bounded below by
    ``noise_floor`` (pricing targets are often noise free; the floor keeps
    the kernel matrix invertible).

Two fits, chosen by ``method``
    - ``exact``: gpytorch's ``ExactGP``; the hyperparameters (mean, output
      scale, lengthscales, noise) are trained by Adam on the exact marginal
      log likelihood for ``iterations`` steps. Every step factorises the
      n x n kernel matrix by Cholesky (we raise gpytorch's
      ``max_cholesky_size`` so it never switches to its stochastic CG/Lanczos
      estimates: the fit is exact and deterministic), O(n^3) time and O(n^2)
      memory, so ``exact`` refuses more than 20,000 points (``EXACT_HARD_CAP``)
      with a ValueError.
    - ``variational``: a sparse variational GP (SVGP, Hensman et al. 2013):
      gpytorch's ``ApproximateGP`` with a ``VariationalStrategy`` over
      ``inducing`` inducing points (a seeded random subset of the training
      inputs, then learned: ``learn_inducing_locations=True``) and a
      ``CholeskyVariationalDistribution``; trained by Adam on the
      ``VariationalELBO`` in minibatches of ``batch_size`` for ``epochs``
      passes over the data, O(n m^2) per epoch for m inducing points.
    - ``auto`` (default): exact up to ``max_exact`` points, variational above.

Predictions
    ``predict`` returns the posterior mean of the latent function, computed
    under ``torch.no_grad()``, ``gpytorch.settings.fast_pred_var()`` and
    ``skip_posterior_variances()`` (the mean needs no variances).
    ``predict_std`` returns the standard deviation of the predictive
    distribution of an *observation* y, ``likelihood(model(X)).stddev``:
    latent variance plus the learned noise variance. That is the quantity
    the framework scores (the share of test targets within two predictive
    standard deviations of the prediction), and with the noise floor it
    never collapses to zero at the training points. ``prepare`` moves the
    model and X to the device as torch tensors and computes gpytorch's
    prediction caches (the O(n^3) Cholesky of the exact GP, the inducing
    factorisation of the variational one) so the timed ``predict`` does not.
    On the CPU ``predict`` returns a float64 NumPy array, on CUDA a tensor.

Limits
    - Exact: at most ``EXACT_HARD_CAP`` = 20,000 points (``method="exact"``
      beyond it is a ValueError; ``auto`` switches to variational above
      ``max_exact``). Work is bounded by ``iterations``; the variational fit
      by ``epochs`` x ceil(n / ``batch_size``) steps.
    - Deterministic on the CPU for a given ``seed`` (the inducing-point
      subset and minibatch order come from it; gpytorch's own random draws
      run inside ``torch.random.fork_rng`` seeded with it, so the global torch
      RNG is left untouched). On CUDA results may differ in the last bits.
    - Cost measured on our 2-core Intel VM (one torch thread, machine busy):
      exact, 200 points x 100 iterations 1 s; 3000 points x 200 iterations
      (the largest ``auto`` fit with the defaults) about 11 minutes, ~3 s per
      iteration, cubic in n. Variational, 20,000 points with the defaults
      (500 inducing points, 20 epochs of 1024) 43 s.
    - ``dtype`` float64 (default, what gpytorch's Cholesky-based inference
      likes) or float32 (faster, needs a larger ``noise_floor``).
    - Pickling stores the hyperparameters (``state_dict``) and, for the exact
      GP, the training data, on the CPU; unpickling rebuilds the model, so a
      round trip predicts identically. gpytorch is imported only when a GP is
      fitted or unpickled.
"""

from __future__ import annotations

import contextlib
import functools
import math
import time
import warnings
from typing import Any

import numpy as np

from bench import hookimpl
from bench.methods import Approximator, Setting, SettingError, check_fit_arrays

__version__ = "1"

STD_BLOCK = 1024  # rows per block of predict_std
MEAN_BLOCK_ENTRIES = 4_000_000  # kernel entries per block of an exact GP's posterior mean (32 MB in float64)
EXACT_HARD_CAP = 20_000  # points: an exact GP beyond this is refused (O(n^3) time, O(n^2) memory)


# --------------------------------------------------------------------------- gpytorch models (built lazily)


def _gpytorch():
    """gpytorch, imported on first use (importing the plugin does not import it) without the
    DeprecationWarnings of torch.jit.script that linear_operator 0.6 / gpytorch 1.15 raise under torch 2.13."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*torch.jit.script.* is deprecated", category=DeprecationWarning)
        import gpytorch
    return gpytorch


@functools.lru_cache(maxsize=1)
def _models():
    """The gpytorch model classes; built on first use so importing the plugin does not import gpytorch."""
    gpytorch = _gpytorch()

    class ExactGPModel(gpytorch.models.ExactGP):
        def __init__(self, x, y, likelihood, mean, covar):
            super().__init__(x, y, likelihood)
            self.mean_module = mean
            self.covar_module = covar

        def forward(self, x):
            return gpytorch.distributions.MultivariateNormal(self.mean_module(x), self.covar_module(x))

    class VariationalGPModel(gpytorch.models.ApproximateGP):
        def __init__(self, inducing, mean, covar):
            distribution = gpytorch.variational.CholeskyVariationalDistribution(inducing.size(0))
            strategy = gpytorch.variational.VariationalStrategy(
                self, inducing, distribution, learn_inducing_locations=True
            )
            super().__init__(strategy)
            self.mean_module = mean
            self.covar_module = covar

        def forward(self, x):
            return gpytorch.distributions.MultivariateNormal(self.mean_module(x), self.covar_module(x))

    return ExactGPModel, VariationalGPModel


def _inference_settings():
    """Context of every gpytorch call: exact Cholesky solves up to the hard cap."""
    gpytorch = _gpytorch()

    stack = contextlib.ExitStack()
    stack.enter_context(gpytorch.settings.max_cholesky_size(EXACT_HARD_CAP + 1))
    stack.enter_context(warnings.catch_warnings())
    # eval-mode calls on the training inputs themselves are legitimate here
    warnings.filterwarnings("ignore", message=".*input matches the stored training data.*")
    return stack


# --------------------------------------------------------------------------- the approximator


class GaussianProcess(Approximator):
    """Gaussian-process regression in gpytorch: exact up to ``max_exact`` points, sparse variational above."""

    name = "gp"
    version = "1"
    description = "Gaussian process (gpytorch): exact GP, or a sparse variational GP with inducing points"
    devices = ("cpu", "cuda")
    has_std = True
    imports = ("torch", "gpytorch")
    settings = {
        "method": Setting("auto", str, "exact GP, sparse variational GP, or auto (exact up to max_exact points)",
                          choices=("auto", "exact", "variational")),
        "kernel": Setting("rbf", str, "covariance: ARD squared exponential (rbf) or ARD Matern",
                          choices=("rbf", "matern")),
        "nu": Setting(2.5, float, "smoothness of the Matern kernel", choices=(0.5, 1.5, 2.5)),
        "iterations": Setting(200, int, "Adam steps on the exact marginal log likelihood", min=1, max=100_000),
        "lr": Setting(0.05, float, "Adam learning rate (both fits)", min=1e-6, max=10.0),
        "noise_init": Setting(1e-2, float, "initial noise variance (standardised units)", min=0.0),
        "noise_floor": Setting(1e-6, float, "lower bound of the noise variance (standardised units)", min=0.0),
        "max_exact": Setting(3000, int, "method auto: exact GP up to this many points, variational above",
                             min=1, max=EXACT_HARD_CAP),
        "inducing": Setting(500, int, "variational GP: number of inducing points", min=1, max=10_000),
        "batch_size": Setting(1024, int, "variational GP: minibatch size", min=1),
        "epochs": Setting(20, int, "variational GP: passes over the training set", min=1, max=10_000),
        "dtype": Setting("float64", str, "floating-point precision of the model",
                         choices=("float64", "float32")),
        "seed": Setting(None, int, "random seed (None: 0): inducing-point subset, minibatch order", min=0),
    }

    def __init__(self, **settings: Any) -> None:
        super().__init__(**settings)
        if not self.noise_init > self.noise_floor:
            raise SettingError(
                f"approximator 'gp': setting 'noise_init' ({self.noise_init!r}) must exceed "
                f"'noise_floor' ({self.noise_floor!r})", "noise_init")

    # ------------------------------------------------------------------ helpers

    def _torch_dtype(self):
        import torch

        return torch.float64 if self.dtype == "float64" else torch.float32

    def _build(self, kind: str, d: int, train_x=None, train_y=None, inducing=None):
        """A fresh (likelihood, model) pair of this configuration, on the CPU in ``dtype``."""
        gpytorch = _gpytorch()

        ExactGPModel, VariationalGPModel = _models()
        likelihood = gpytorch.likelihoods.GaussianLikelihood(
            noise_constraint=gpytorch.constraints.GreaterThan(self.noise_floor))
        if self.kernel == "rbf":
            base = gpytorch.kernels.RBFKernel(ard_num_dims=d)
        else:
            base = gpytorch.kernels.MaternKernel(nu=self.nu, ard_num_dims=d)
        covar = gpytorch.kernels.ScaleKernel(base)
        mean = gpytorch.means.ConstantMean()
        if kind == "exact":
            model = ExactGPModel(train_x, train_y, likelihood, mean, covar)
        else:
            model = VariationalGPModel(inducing, mean, covar)
        dtype = self._torch_dtype()
        return likelihood.to(dtype=dtype), model.to(dtype=dtype)

    def _as_tensor(self, X: Any):
        import torch

        if isinstance(X, torch.Tensor):
            return X.to(device=self.device_, dtype=self._torch_dtype())
        X = np.asarray(X, dtype=np.float64)
        if not X.flags.writeable:  # torch warns on read-only memory
            X = X.copy()
        return torch.as_tensor(X, device=self.device_).to(self._torch_dtype())

    def _output(self, t):
        """float64 NumPy on the CPU, a float64 tensor on another device."""
        import torch

        t = t.detach().to(dtype=torch.float64)
        return t.cpu().numpy() if self.device_ == "cpu" else t

    def _rng_devices(self, device: str) -> list[int]:
        import torch

        return [torch.device(device).index or 0] if device.startswith("cuda") else []

    def _reset_caches(self) -> None:
        """Drop gpytorch's prediction caches (they are rebuilt on the next prediction)."""
        self._weights = None
        self._caches_ready = False
        self.model_.train()
        self.likelihood_.train()
        self.model_.eval()
        self.likelihood_.eval()

    # ------------------------------------------------------------------ fit

    def fit(self, X, y, *, X_val=None, y_val=None, dydX=None, device="cpu") -> "GaussianProcess":
        X, y, X_val, y_val = check_fit_arrays(X, y, X_val, y_val)
        self.check_device(device)
        n, d = X.shape
        method = self.method
        if method == "auto":
            method = "exact" if n <= self.max_exact else "variational"
        if method == "exact" and n > EXACT_HARD_CAP:
            raise ValueError(
                f"approximator 'gp': an exact GP on {n} points exceeds the cap of {EXACT_HARD_CAP} "
                f"(O(n^3) time, O(n^2) memory); use method 'variational' or 'auto', or fewer points")

        import torch

        seed = 0 if self.seed is None else self.seed
        self.device_ = device
        self.n_features_in_ = d
        dtype = self._torch_dtype()
        start = time.perf_counter()
        with torch.random.fork_rng(devices=self._rng_devices(device)), _inference_settings():
            torch.manual_seed(seed)
            # copies: the exact GP keeps its training data, which must not alias the caller's arrays
            x_t = torch.tensor(X, dtype=dtype, device=device)
            y_t = torch.tensor(y, dtype=dtype, device=device)
            if method == "exact":
                info = self._fit_exact(x_t, y_t)
            else:
                info = self._fit_variational(x_t, y_t, seed)
            self.model_.eval()
            self.likelihood_.eval()
        self.method_ = method
        self._weights = None
        self._caches_ready = False
        with torch.no_grad(), _inference_settings():
            self._mean_weights()  # here, so the mean never depends on which predictions came first
        info = {"method": method, "n_train": n, "n_features": d, **info,
                **self._hyperparameters(), "fit_seconds": round(time.perf_counter() - start, 6)}
        if X_val is not None:
            pred = self._mean(self._as_tensor(X_val)).detach().to(dtype=torch.float64).cpu().numpy()
            info["val_rmse"] = float(np.sqrt(np.mean((pred - y_val) ** 2)))
        self.fit_info_ = info
        return self

    def _fit_exact(self, x, y) -> dict[str, Any]:
        gpytorch = _gpytorch()
        import torch

        likelihood, model = self._build("exact", x.shape[1], train_x=x, train_y=y)
        likelihood.noise = self.noise_init
        self.likelihood_, self.model_ = likelihood.to(x.device), model.to(x.device)
        model, likelihood = self.model_, self.likelihood_
        model.train()
        likelihood.train()
        optimiser = torch.optim.Adam(model.parameters(), lr=self.lr)  # includes the likelihood's noise
        mll = gpytorch.mlls.ExactMarginalLogLikelihood(likelihood, model)
        loss = None
        for _ in range(self.iterations):
            optimiser.zero_grad()
            loss = -mll(model(x), y)
            loss.backward()
            optimiser.step()
        return {"iterations": self.iterations, "final_loss": float(loss.detach())}

    def _fit_variational(self, x, y, seed: int) -> dict[str, Any]:
        gpytorch = _gpytorch()
        import torch

        n, d = x.shape
        m = min(self.inducing, n)
        pick = np.sort(np.random.default_rng(seed).choice(n, size=m, replace=False))
        inducing = x[torch.as_tensor(pick, device=x.device)].clone()
        likelihood, model = self._build("variational", d, inducing=inducing)
        likelihood.noise = self.noise_init
        self.likelihood_, self.model_ = likelihood.to(x.device), model.to(x.device)
        model, likelihood = self.model_, self.likelihood_
        model.train()
        likelihood.train()
        optimiser = torch.optim.Adam([*model.parameters(), *likelihood.parameters()], lr=self.lr)
        elbo = gpytorch.mlls.VariationalELBO(likelihood, model, num_data=n)
        order = torch.Generator().manual_seed(seed)
        batch = min(self.batch_size, n)
        steps = 0
        epoch_loss = math.nan
        for _ in range(self.epochs):
            perm = torch.randperm(n, generator=order).to(x.device)
            total = 0.0
            for lo in range(0, n, batch):
                idx = perm[lo:lo + batch]
                optimiser.zero_grad()
                loss = -elbo(model(x[idx]), y[idx])
                loss.backward()
                optimiser.step()
                total += float(loss.detach()) * idx.numel()
                steps += 1
            epoch_loss = total / n
        return {"inducing": m, "epochs": self.epochs, "steps": steps, "batch_size": batch,
                "final_loss": epoch_loss}

    def _hyperparameters(self) -> dict[str, float]:
        covar = self.model_.covar_module
        lengthscale = covar.base_kernel.lengthscale.detach().cpu().numpy().ravel()
        return {"noise": float(self.likelihood_.noise.detach().cpu()),
                "outputscale": float(covar.outputscale.detach().cpu()),
                "lengthscale_min": float(lengthscale.min()), "lengthscale_max": float(lengthscale.max())}

    # ------------------------------------------------------------------ predict

    def _mean(self, x):
        gpytorch = _gpytorch()
        import torch

        with torch.no_grad(), gpytorch.settings.fast_pred_var(), \
                gpytorch.settings.skip_posterior_variances(), _inference_settings():
            # gpytorch's calls build the joint kernel of the training (or inducing) points and the test points
            # lazily and evaluate all of it, test-test block included: O((n + m)^2) per call. The posterior
            # mean needs only mean(x) + K(x, points) @ weights, computed here in row blocks (bounded memory)
            points, weights = self._mean_weights()
            rows = max(1, MEAN_BLOCK_ENTRIES // max(points.shape[0], 1))
            # the product in float64 (as gpytorch's own solve is): float32 kernels lose a few digits here
            return torch.cat([self.model_.mean_module(block) + (self.model_.covar_module(block, points).to_dense()
                              .double() @ weights).to(x.dtype) for block in x.split(rows)])

    def _mean_weights(self):
        """(points, weights) of the posterior mean, cached until the model moves.

        Exact GP: the training inputs and gpytorch's ``mean_cache``, (K + noise)^-1 (y - mean). Variational
        (whitened ``VariationalStrategy``): the inducing points Z and L^-T m, L the Cholesky factor of
        K(Z, Z) + jitter (in float64, as gpytorch takes it) and m the variational mean; gpytorch's predictive
        mean is K(x, Z) L^-T m + mean(x).
        """
        cached = getattr(self, "_weights", None)
        if cached is not None:
            return cached
        gpytorch = _gpytorch()
        import torch

        if self.method_ == "exact":
            if getattr(self.model_, "prediction_strategy", None) is None:
                self.model_(self.model_.train_inputs[0][:1])  # builds the prediction strategy and its mean cache
            cached = (self.model_.train_inputs[0], self.model_.prediction_strategy.mean_cache.double())
        else:
            strategy = self.model_.variational_strategy
            Z = strategy.inducing_points
            jitter = strategy.jitter_val
            if jitter is None:
                jitter = gpytorch.settings.variational_cholesky_jitter.value(Z.dtype)
            Kzz = self.model_.covar_module(Z).to_dense().double()
            Kzz = Kzz + jitter * torch.eye(Kzz.shape[0], dtype=Kzz.dtype, device=Kzz.device)
            from linear_operator.utils.cholesky import psd_safe_cholesky

            L = psd_safe_cholesky(Kzz)  # as gpytorch's own strategy: more jitter if K(Z, Z) is nearly singular
            m = strategy.variational_distribution.mean.double().unsqueeze(-1)
            cached = (Z, torch.linalg.solve_triangular(L.mT, m, upper=True).squeeze(-1))
        self._weights = cached
        return cached

    def prepare(self, X, device="cpu"):
        """Move the model and ``X`` to ``device`` (torch tensors) and build gpytorch's prediction caches."""
        self.check_device(device)
        if device != self.device_:
            self.model_.to(device)
            self.likelihood_.to(device)
            self.device_ = device
            self._reset_caches()
        x = self._as_tensor(X)
        if not getattr(self, "_caches_ready", False):
            # one prediction with variances fills the mean and variance caches (untimed here, not in predict);
            # later calls (the framework prepares every batch) find them built
            self.predict_std(x.new_zeros((1, self.n_features_in_)))
            self._mean_weights()
            self._caches_ready = True
        if device != "cpu":
            from bench import arrays

            arrays.synchronize(device)
        return x

    def predict(self, X):
        x = self._as_tensor(X)
        if x.shape[0] == 0:
            return self._output(x.new_zeros((0,)))
        return self._output(self._mean(x))

    def predict_std(self, X):
        """Standard deviation of the predictive distribution of y: latent variance plus the noise variance."""
        gpytorch = _gpytorch()
        import torch

        x = self._as_tensor(X)
        if x.shape[0] == 0:
            return self._output(x.new_zeros((0,)))
        # in row blocks: gpytorch builds the joint kernel of the training points and the block
        with torch.no_grad(), gpytorch.settings.fast_pred_var(), _inference_settings():
            return self._output(torch.cat([self.likelihood_(self.model_(block)).stddev
                                           for block in x.split(STD_BLOCK)]))

    def to_cpu(self) -> "GaussianProcess":
        if getattr(self, "device_", "cpu") != "cpu":
            self.model_.to("cpu")
            self.likelihood_.to("cpu")
            self.device_ = "cpu"
            self._reset_caches()
        return self

    # ------------------------------------------------------------------ pickle

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state.pop("_weights", None)  # rebuilt from the model on the next prediction
        state.pop("_caches_ready", None)
        model = state.pop("model_", None)
        likelihood = state.pop("likelihood_", None)
        if model is not None:
            def cpu(sd):
                return {k: v.detach().cpu().clone() for k, v in sd.items()}

            state["_gp_state"] = {
                "model": cpu(model.state_dict()),
                "likelihood": cpu(likelihood.state_dict()),
                "train_x": model.train_inputs[0].detach().cpu() if self.method_ == "exact" else None,
                "train_y": model.train_targets.detach().cpu() if self.method_ == "exact" else None,
                "n_inducing": (None if self.method_ == "exact"
                               else int(model.variational_strategy.inducing_points.shape[0])),
            }
            state["device_"] = "cpu"
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        gp_state = state.pop("_gp_state", None)
        self.__dict__.update(state)
        if gp_state is None:
            return
        d = self.n_features_in_
        if self.method_ == "exact":
            likelihood, model = self._build("exact", d, train_x=gp_state["train_x"], train_y=gp_state["train_y"])
        else:
            import torch

            placeholder = torch.zeros((gp_state["n_inducing"], d), dtype=self._torch_dtype())
            likelihood, model = self._build("variational", d, inducing=placeholder)
        model.load_state_dict(gp_state["model"])
        likelihood.load_state_dict(gp_state["likelihood"])
        model.eval()
        likelihood.eval()
        self.model_, self.likelihood_ = model, likelihood


@hookimpl
def register_approximators(register):
    register(GaussianProcess)
