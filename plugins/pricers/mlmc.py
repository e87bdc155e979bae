"""Multilevel Monte Carlo pricer (Giles 2008, 2015): ``mlmc``.

Algorithm: Giles' adaptive MLMC as in his ``mlmc.m`` and the Python port
``pymlmc``, implemented generically in :mod:`._mlmc_driver` (read its
docstring): levels l = 0..L with time step h_l = T / M^l, N0 pilot samples
per level starting from L = Lmin, optimal N_l = ceil(2 eps^-2 sqrt(V_l / C_l)
sum_k sqrt(V_k C_k)) for variance eps^2 / 2, and levels added while the bias
estimate max_k |E Y_{L-k}| M^(-k alpha) / (M^alpha - 1) (k < min(3, L): never
level 0, unlike mlmc.m when L = 2) exceeds eps / sqrt 2
(up to Lmax; reaching Lmax short of that issues an ``MLMCWarning``). Rates
alpha, beta, gamma (h units) are fitted by regression over levels 1..L unless
given as settings. The whole batch advances together: each iteration runs
one compiled kernel call per level over every option that needs samples.

Work budget: ``max_cost`` (default 1e9) caps the path steps one option may
take, fine and coarse paths on every level together (the driver checks it
before every draw, so it is never exceeded). An option whose eps would need
more gets NaN with the reason "over the work budget" instead of running for
minutes or asking for more memory than the machine has: the edges of the
domains need from 2.5e9 (Heston, v0 = 1) over 1e11 (Heston, T = 30) to 1e20
steps (CEV, sigma = 300, T = 30) at eps = 0.01, and now end after their
pilot samples, in a fraction of a second. 1e9 steps take about 10 s for
Black-Scholes and 25 s for Heston on one core of our development VM,
and are more than 15 times what the ``mlmc`` suite's hardest cell (Euler,
eps = 0.005: 6e7) needs; Heston at eps = 0.01 needs 1e8 to 1e9 steps for
moderate parameters but more with a strong vol of vol (5e9 with xi = 1,
rho = -0.9): raise ``max_cost`` (``inf``: no budget) or ``eps`` there. The
kernels run a call's blocks in passes of bounded size, so their memory does
not grow with the samples asked for.

Level estimators (:mod:`._mlmc_kernels`, numba, parallel over blocks of
samples): fine path with M^l steps and coarse path with M^(l-1) steps driven
by the same Brownian increments; the schemes are

- ``black_scholes``: Euler or Milstein on S (``scheme = "auto"`` picks
  Milstein: strong order 1, so V[Y_l] ~ h^2 and the cost is O(eps^-2));
- ``heston``: full-truncation Euler on ln S (variance floored at 0 inside
  the coefficients);
- ``cev``: Euler on S, absorbed at 0; ``sinh_lv``: Euler on S;
- ``black_karasinski`` (``zero_coupon_bond``): Euler on ln r with the
  reversion level mu(t) = mu + mu_sin sin t taken at each step's end, the
  integral of r by the trapezoid rule, payoff exp(-int r dt).

Euler gives V[Y_l] ~ h (beta = 1) for these Lipschitz payoffs, so the cost
is O(eps^-2 (log eps)^2); plain Monte Carlo with Euler needs O(eps^-3).

Random numbers: :mod:`._rng` streams keyed by (seed, option index and level,
block of samples); blocks already used on a level are counted, so samples
added in later iterations are always fresh. Results are identical whatever
the number of threads. ``seed = None`` means 0.

``pricebench mlmc-test`` (:mod:`._mlmc_test`, registered below through
``register_commands``: :func:`._mlmc_driver.mlmc_test` on
:meth:`MultilevelMC.level_function`) reproduces Giles' ``mlmc_test`` report:
the convergence test per level, fitted alpha, beta, gamma (or fixed with
``--alpha``, ``--beta``, ``--gamma``: theory for GBM is alpha = 1 with
beta = 1 for Euler, beta = 2 for Milstein, gamma = 1), and the complexity
test per eps with the MLMC cost beside two plain-MC costs: "MC cost (level L)",
plain MC on the finest MLMC level L (Giles' convention; its slope against eps
is jumpy, since L moves in whole levels), and "MC cost (optimal h)", plain MC
with n = ceil(T / h*) steps, c h*^alpha = eps / sqrt 2, from the weak-error
model |E[P_h] - P| ~ c h^alpha with c fitted to the level corrections
(|E Y_l| = c h_l^alpha (M^alpha - 1), levels >= 1), cost V[P] n / (eps^2 / 2);
the savings and the fitted cost-vs-eps slope of each (theory for the latter:
-2 - gamma/alpha, -3 for Euler). The MSE split of Spence, Brolly and Xue (plain MC on each
level's grid, MSE = V/N + bias^2) shows the bias estimated from h vs h/M,
M^p/(M^p - 1) |E[P_h - P_{h/M}]|, beside the exact bias: for
``black_scholes`` (exact path solution) the level function offers
``exact_coupling``, the kernel :func:`._mlmc_kernels.exact_sums` returning
the sums of D = P_h - P_exact with P_exact from S_T = S0 exp((r - q -
sigma^2/2) T + sigma W_T) on the same Brownian path, so E[D] = E[P_h] - P
comes with the small standard error sqrt(V[D] / n) (``--exact-paths``,
default 10 N); other models have no exact path solution and keep
E[P_h] - exact value from independent samples, whose standard error
sqrt(V[P_h] / N) swamps the bias beyond the coarsest levels.

The price's ``stderr`` is the MLMC estimator's standard error
sqrt(sum_l V_l / N_l); the RMS error target ``eps`` also allows a bias of up
to eps / sqrt 2.

References: M. B. Giles, Multilevel Monte Carlo path simulation, Operations
Research 56(3), 2008; M. B. Giles, Multilevel Monte Carlo methods, Acta
Numerica 24, 2015; Giles' MATLAB/Python MLMC codes (mlmc.m, mlmc_test.m,
pymlmc).
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from bench import hookimpl
from bench.methods import Model, PriceResult, Pricer, Setting, SettingError, Unsupported
from pricebench_plugins.pricers import _mlmc_driver

__version__ = "1"

_COLUMNS = {  # mirrors _mlmc_kernels.COLUMNS (not imported here: the kernels load lazily)
    "black_scholes": ("S", "K", "T", "r", "q", "sigma"),
    "heston": ("S", "K", "T", "r", "q", "v0", "kappa", "theta", "xi", "rho"),
    "cev": ("S", "K", "T", "r", "q", "sigma", "beta"),
    "sinh_lv": ("S", "K", "T", "r", "lam"),
    "black_karasinski": ("r0", "alpha", "sigma", "mu", "mu_sin", "T"),
}
_EUROPEAN = ("european_call", "european_put")


def _kernels():
    from pricebench_plugins.pricers import _mlmc_kernels

    return _mlmc_kernels


class KernelLevels:
    """A level function (see :mod:`._mlmc_driver`) over the compiled kernels.

    ``P`` holds one parameter row per option; with a single row, every batch
    entry is an independent replica of that one problem (``mlmc_test`` runs
    repeats that way), else the batch is the options. Keeps, per batch entry
    and level, how many random blocks were used, so every call draws fresh
    samples.
    """

    def __init__(self, model: str, scheme: str, sign: float, M: int, P: np.ndarray, seed: int):
        k = _kernels()
        self.k = k
        self.model = model
        self.model_code = k.MODELS.index(model)
        self.scheme_code = k.SCHEMES.index(scheme)
        self.sign = float(sign)
        self.M = int(M)
        self.P = np.ascontiguousarray(P, dtype=np.float64)
        self.seed = np.uint64(seed)
        self.blocks: dict[int, np.ndarray] = {}
        self.exact_blocks: dict[int, np.ndarray] = {}
        if model in k.EXACT_MODELS:  # offered only where the model has an exact path solution
            self.exact_coupling = self._exact_coupling

    def fine_cost(self, l: int) -> float:
        """Cost of one fine path on level l alone (path steps): what plain MC pays."""
        return float(self.M ** l)

    def cost_per_sample(self, l: int) -> float:
        return float(self.M ** l + (self.M ** (l - 1) if l > 0 else 0))

    def _prepare_call(self, l: int, N, counts: dict[int, np.ndarray]):
        """(N, rows, block0, used) for a call on level l; ``used`` is the block counter to advance."""
        N = np.ascontiguousarray(np.atleast_1d(np.asarray(N, dtype=np.int64)))
        B = N.size
        if l < 0 or l > self.k.MAX_LEVEL:
            raise ValueError(f"level {l} outside 0..{self.k.MAX_LEVEL}")
        nrows = self.P.shape[0]
        if nrows == 1:
            rows = np.zeros(B, dtype=np.int64)
        elif nrows == B:
            rows = np.arange(B, dtype=np.int64)
        else:
            raise ValueError(f"batch of {B} sample counts for {nrows} parameter rows")
        used = counts.get(l)
        if used is None or used.size < B:
            grown = np.zeros(B, dtype=np.int64)
            if used is not None:
                grown[: used.size] = used
            used = counts[l] = grown
        return N, rows, used[:B].copy(), used

    def __call__(self, l: int, N) -> tuple[np.ndarray, np.ndarray]:
        N, rows, block0, used = self._prepare_call(l, N, self.blocks)
        B = N.size
        out = np.empty((B, 6))
        self.k.level_sums(self.model_code, self.scheme_code, self.sign, int(l), self.M, self.P, rows,
                          np.arange(B, dtype=np.int64), N, block0, self.seed, out)
        used[:B] += self.k.blocks_used(N)
        return out, N * self.cost_per_sample(l)

    def _exact_coupling(self, l: int, N) -> tuple[np.ndarray, np.ndarray]:
        """The MSE split's coupling with the exact solution (``black_scholes`` only; see
        :mod:`._mlmc_driver`): sums (B, 4) over N fresh paths of D = P_l - P_exact
        (same Brownian path), D^2, P_exact, P_exact^2, and their cost (M^l steps each)."""
        N, rows, block0, used = self._prepare_call(l, N, self.exact_blocks)
        B = N.size
        self.k.warm_up_exact()
        out = np.empty((B, 4))
        self.k.exact_sums(self.scheme_code, self.sign, int(l), self.M, self.P, rows, np.arange(B, dtype=np.int64),
                          N, block0, self.seed, out)
        used[:B] += self.k.blocks_used(N)
        return out, N * self.fine_cost(l)


class MultilevelMC(Pricer):
    name = "mlmc"
    version = "1"
    description = ("Multilevel Monte Carlo (Giles): adaptive levels and sample sizes to a target RMS error eps; "
                   "Euler/Milstein level estimators in numba, reproducible whatever the thread count")
    devices = ("cpu",)
    supports = {
        "black_scholes": _EUROPEAN,
        "heston": _EUROPEAN,
        "cev": _EUROPEAN,
        "sinh_lv": _EUROPEAN,
        "black_karasinski": ("zero_coupon_bond",),
    }
    settings = {
        "eps": Setting(0.01, float, "target RMS error in price units (variance eps^2/2, bias eps/sqrt(2))",
                       min=1e-12),
        "M": Setting(4, int, "refinement factor: level l has M^l time steps", min=2, max=16),
        "scheme": Setting("auto", str, "time stepping: auto (milstein for black_scholes, else euler), euler or "
                          "milstein (black_scholes only)", choices=("auto", "euler", "milstein")),
        "N0": Setting(10_000, int, "pilot samples on each new level", min=2),
        "Lmin": Setting(2, int, "levels 0..Lmin to start with", min=2, max=30),
        "Lmax": Setting(10, int, "finest level allowed (M^Lmax steps); reaching it short of the bias target "
                        "warns", min=2, max=30),
        "seed": Setting(None, int, "random seed (None: 0)", min=0),
        "alpha": Setting(None, float, "weak rate |E Y_l| ~ h^alpha (None: fitted)", min=1e-3),
        "beta": Setting(None, float, "variance rate V[Y_l] ~ h^beta (None: fitted)", min=1e-3),
        "gamma": Setting(None, float, "cost rate C_l ~ h^-gamma (None: fitted)", min=1e-3),
        "max_cost": Setting(1e9, float, "work budget per option: the most path steps (fine and coarse, all levels) "
                            "it may take; an option whose eps needs more is NaN with a reason (inf: no budget)",
                            min=1.0),
    }

    def __init__(self, **settings: Any) -> None:
        super().__init__(**settings)
        self._check()  # cross-setting checks here, so a suite is rejected before anything runs

    # ------------------------------------------------------------------ set-up

    def resolved_scheme(self, model: str) -> str:
        """The scheme used for ``model``; ValueError naming 'scheme' if it does not apply."""
        if self.scheme == "auto":
            return "milstein" if model == "black_scholes" else "euler"
        if self.scheme == "milstein" and model != "black_scholes":
            raise SettingError(f"pricer 'mlmc': setting 'scheme' = 'milstein' is implemented for black_scholes "
                               f"only, not {model!r}; use 'euler' or 'auto'", "scheme")
        return self.scheme

    def check_task(self, model: str, product: str) -> None:
        self.resolved_scheme(model)

    def _check(self):
        if self.Lmax < self.Lmin:
            raise SettingError(f"pricer 'mlmc': setting 'Lmax' ({self.Lmax}) must be >= 'Lmin' ({self.Lmin})",
                               "Lmax")
        if self.M ** self.Lmax > 2 ** 31:
            raise SettingError(f"pricer 'mlmc': setting 'Lmax' = {self.Lmax} gives M^Lmax = {self.M ** self.Lmax} "
                               f"time steps per path (M = {self.M}); keep M^Lmax <= 2^31", "Lmax")

    def prepare(self, model, product, params, device="cpu", array_backend=None):
        if array_backend not in (None, "numpy"):
            raise Unsupported(f"pricer {self.name!r} takes NumPy arrays only, not {array_backend!r}")
        self.check_device(device)
        self._check()
        scheme = self.resolved_scheme(model.name)
        if not self.can_price(model.name, product):
            raise ValueError(f"pricer {self.name!r} does not price {product!r} under {model.name!r}")
        self.model_, self.product_, self.device_ = model, product, device
        self.shape_ = np.shape(params[next(iter(params))])
        flat = {k: np.ravel(v) for k, v in params.items()}
        self.scheme_ = scheme
        self.sign_ = -1.0 if product.endswith("_put") else 1.0
        k = _kernels()
        k.warm_up()  # compile (or load from the cache) outside the timed region
        P = np.stack([np.asarray(flat[c], dtype=np.float64) for c in _COLUMNS[model.name]], axis=1)
        return {"P": np.ascontiguousarray(P)}

    # ------------------------------------------------------------------ pricing

    def price(self, inputs):
        P = inputs["P"]
        B = P.shape[0]
        if B == 0:
            return PriceResult(np.empty(self.shape_), np.empty(self.shape_), np.empty(self.shape_, dtype=object))
        levels = KernelLevels(self.model_.name, self.scheme_, self.sign_, self.M, P,
                              self.seed if self.seed is not None else 0)
        res = _mlmc_driver.mlmc(levels, self.eps, M=self.M, N0=self.N0, Lmin=self.Lmin, Lmax=self.Lmax,
                                alpha=self.alpha, beta=self.beta, gamma=self.gamma, batch=B,
                                max_cost=self.max_cost if np.isfinite(self.max_cost) else None)
        self.result_ = res
        reason = np.where(res.reason == "", "", "mlmc: " + res.reason.astype(str))
        return PriceResult(price=res.price.reshape(self.shape_), stderr=res.stderr.reshape(self.shape_),
                           reason=reason.reshape(self.shape_))

    def level_function(self, model: str | Model, product: str, params: Mapping[str, Any],
                       seed: int | None = None) -> KernelLevels:
        """The level function (see :mod:`._mlmc_driver`) for ONE parameter set:
        batch entries are independent replicas. For ``mlmc_test`` and experiments.

        ``model``: a name or a Model; ``params``: scalars (validated by the model);
        ``seed`` overrides the setting. Compiles the kernels on first use.
        """
        from bench.plugins import get_registry

        mdl = get_registry().model(model) if isinstance(model, str) else model
        mdl.check_product(product)
        if not self.can_price(mdl.name, product):
            raise ValueError(f"pricer {self.name!r} does not price {product!r} under {mdl.name!r}")
        self._check()
        values = mdl.validate(dict(params))
        if any(np.size(v) != 1 for v in values.values()):
            raise ValueError("level_function takes one parameter set (scalars)")
        scheme = self.resolved_scheme(mdl.name)
        P = np.array([[float(np.ravel(values[c])[0]) for c in _COLUMNS[mdl.name]]])
        _kernels().warm_up()
        seed = seed if seed is not None else (self.seed or 0)
        return KernelLevels(mdl.name, scheme, -1.0 if product.endswith("_put") else 1.0, self.M, P, seed)


@hookimpl
def register_pricers(register):
    register(MultilevelMC)


@hookimpl
def register_commands(register):
    from pricebench_plugins.pricers._mlmc_test import MLMCTestCommand

    register(MLMCTestCommand)
