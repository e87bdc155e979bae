"""Monte Carlo prices with standard errors: every model, European and American
options (Longstaff-Schwartz) and Black-Karasinski bonds.

Schemes (the ``scheme`` setting; ``auto`` = the first listed for the model)
---------------------------------------------------------------------------
- ``black_scholes``: ``exact`` (ln S += (r - q - sigma^2/2) dt + sigma sqrt(dt) Z),
  ``euler`` (S *= 1 + (r - q) dt + sigma sqrt(dt) Z) and ``milstein`` (Euler plus
  sigma^2 dt (Z^2 - 1) / 2) on S (Glasserman 2003, ch. 3 and 6).
- ``heston``: ``qe``, the quadratic-exponential scheme of Andersen (2008) for the
  variance with psi_c = 1.5 (non-central chi-square moments m, s^2 of v(t + dt) given
  v(t); psi = s^2/m^2 <= 1.5: v' = a (b + Z_v)^2, else v' = 0 with probability
  p = (psi - 1)/(psi + 1) and exponential otherwise), and Andersen's log-S step
  ln S += (r - q) dt + K0 + K1 v + K2 v' + sqrt(K3 v + K4 v') Z with
  gamma1 = gamma2 = 1/2, without the martingale correction (its bias is O(dt^2) here and
  small against the statistical error at 50 steps); ``euler``, full-truncation Euler on
  (v, ln S) with v+ = max(v, 0) in drift and diffusion (Lord, Koekkoek & van Dijk 2010).
- ``merton``, ``kou``: ``exact``: per step the exact log increment, Gaussian part plus a
  compound Poisson sum of jumps (count by inverse transform of a uniform; Merton: the sum
  of N normal log jumps drawn as one N(N mu_j, N sigma_j^2); Kou: N draws of
  -ln(U)/eta1 up with probability p, ln(U)/eta2 down), with the compensator of the model
  modules: drift r - q - sigma^2/2 - lam E[e^Y - 1]. Steps only matter for American
  exercise dates.
- ``cev``: ``euler`` on S, absorbed at 0 (once S <= 0 it stays 0).
- ``sinh_lv``: ``euler`` on S; ``exact``: S_T = (lam/c) sinh(asinh(c S/lam) + c W_T),
  c = sqrt(2 r).
- ``black_karasinski`` (``zero_coupon_bond``): ``euler`` on x = ln r with the reversion
  level ln mu(t) taken at the step's end (ln mu(0) is -inf when mu = 0; Spence, Brolly and
  Xue's notebook does the same), and ``exact``: the Gaussian OU transition of ln r around its mean
  m(t) (:func:`~pricebench_plugins.models.black_karasinski.log_rate_mean`, computed in
  ``prepare`` on the time grid), x' = m(t') + e^{-alpha dt} (x - m(t)) + sigma
  sqrt((1 - e^{-2 alpha dt}) / (2 alpha)) Z. In both, int r dt is the trapezoid rule over
  the steps and the price is the mean of exp(-int r dt): the exact scheme is exact in
  distribution at the grid points, the remaining bias is the trapezoid rule's O(dt^2).

``steps`` (default 0) is the scheme's natural number of time steps: 1 for exact European
schemes (black_scholes, merton, kou, sinh_lv), 50 otherwise (and for every American
option and bond). ``dt`` overrides it per option: steps = ceil(T/dt - 1e-9).

Random numbers and reproducibility
----------------------------------
Only :mod:`._rng` (xoshiro256++, ziggurat normals). The paths of each option are cut into
blocks of ``BLOCK`` = 2048 paths (a constant, whatever the thread count); block b of
option i (its index in the batch) draws from the stream keyed (seed, i, b). Threads take
whole blocks (numba ``prange`` over the flattened (option, block) pairs); each block
writes its partial sums to its own slot and the per-option reduction runs afterwards in
block order, so prices and errors are bit-identical with any number of threads and any
chunking of the batch. A price depends on the seed, the option's index in the batch,
``paths``, the steps and the flags, and on nothing else. ``seed`` None means 0 (the
runner passes a seed derived from the suite's task seed).

Variance reduction
------------------
- ``antithetic``: paths come in pairs driven by Z and -Z (and U, 1 - U for Heston's
  exponential branch; a Merton/Kou pair shares its jumps), ``paths`` rounded up to even;
  the standard error is that of the pair averages (Glasserman 2003, 4.2).
- ``control_variate`` (European options; ignored, as documented, for American options
  and bonds): the control is the discounted terminal asset e^{-rT} S_T with known mean
  S e^{-qT} for black_scholes, merton, kou, cev and sinh_lv (for the Euler and Milstein
  schemes the scheme's own mean S e^{-rT} (1 + (r - q) dt)^n, which it matches exactly;
  for cev that ignores the tiny mass pushed up by the absorption at 0); for heston the
  Black-Scholes payoff of a GBM driven by the same normals as ln S (QE: rho Z_v +
  sqrt(1 - rho^2) Z, with Z_v = Phi^{-1}(U) on the exponential branch; Euler: the spot
  normal), with sigma_bar^2 = theta + (v0 - theta)(1 - e^{-kappa T})/(kappa T) and known
  mean the closed-form Black-Scholes price. The coefficient b = Cov(Y, X)/Var(X) is
  estimated from the same samples, which biases the estimate by O(1/N) (Glasserman 2003,
  4.1.2: negligible against the O(N^-1/2) error); stderr = std(Y - b (X - E X)) / sqrt(N).

American options: Longstaff & Schwartz (2001)
---------------------------------------------
Exercise dates are the time steps. The paths of one option are recorded (steps x paths,
at most 1 GiB), then, backwards from maturity, the discounted cash flows of the
in-the-money paths are regressed on polynomials of degree ``basis_degree`` in the
moneyness S/K (as powers of S/K - 1, the same space better conditioned) by normal
equations (scaled Cholesky, near-collinear terms dropped), and a path exercises where the
exercise value beats the fitted continuation value. The price is the mean of the
discounted realised cash flows, floored at the immediate exercise value. The same paths
serve for the regression and the pricing, which biases the estimate slightly upwards
(foresight), while the suboptimal exercise rule biases it downwards; both are small
against the statistical error at the usual path counts (Glasserman 2003, 8.6).

Back ends (``backend``)
-----------------------
``numba`` (the CPU default): compiled kernels in :mod:`._mc_paths`, cached on disk,
compiled in ``prepare`` (untimed). ``price`` processes the batch in calls of about
4e6 path-steps per thread (tens of ms), returning to Python between calls so that the
runner's timeout can fire. ``torch`` (the default on CUDA, and usable on the CPU): the
black_scholes exact scheme and heston qe/euler for European calls and puts, vectorised
over (options, paths) with ``torch.Generator(device).manual_seed(seed)``: reproducible on
one device, but its numbers differ from the CPU streams (and between devices). Any other
combination on CUDA raises :class:`~bench.methods.Unsupported` in ``prepare``.

NaN points (``PriceResult.reason`` says why, "" where priced): a non-finite estimate (the
paths overflowed), and an estimate outside the no-arbitrage bounds of its product (European
call in [(S e^{-qT} - K e^{-rT})+, S e^{-qT}], put in [(K e^{-rT} - S e^{-qT})+, K e^{-rT}],
American put in [max(K - S, K e^{-rT} - S e^{-qT}, 0), K]; no upper bound for sinh_lv) by more
than ``BOUND_TOL`` (S e^{-qT} + K e^{-rT}) plus 6 standard errors (Black-Karasinski bonds: [0, 1]
with ``BOUND_TOL`` plus 6 standard errors, never left, as each path's discount factor lies in (0, 1];
the bounds are :mod:`._bounds`', shared with cos and fd): where the simulated paths
miss the mass that carries the price, as for Kou with eta1 = 1 + 1e-6 (E[exp(Y)] = 1e6 for an up
jump: the compensated drift sends every simulated path to 0, so a call of 0 with stderr 0,
where its lower bound is 12.7). Ordinary estimates are never near that slack. An empty batch
gives an empty result.

Parameter layout: :mod:`._mc_paths` documents the columns of the per-model parameter
matrices built in ``prepare``.

References: P. Glasserman, Monte Carlo Methods in Financial Engineering (2003);
L. Andersen, Simple and efficient simulation of the Heston stochastic volatility model,
J. Comput. Finance 11(3) (2008); F. Longstaff & E. Schwartz, Valuing American options by
simulation: a simple least-squares approach, Rev. Financ. Stud. 14 (2001); R. Lord,
R. Koekkoek & D. van Dijk, A comparison of biased simulation schemes for stochastic
volatility models, Quant. Finance 10(2) (2010).
"""

from __future__ import annotations

import numpy as np

from bench import hookimpl
from bench.methods import Pricer, PriceResult, Setting, SettingError, Unsupported
from pricebench_plugins.pricers import _bounds

__version__ = "1"

BLOCK = 2048  # = _mc_paths.BLOCK (kept here so that loading the plugin does not import numba)
_WORK_PER_CALL = 4e6  # path-steps per thread and kernel call (tens of ms)
_LSM_MAX_BYTES = 1 << 30  # recorded paths of one American option
_DEFAULT_STEPS = 50

EUROPEAN = ("european_call", "european_put")
OPTIONS = ("european_call", "european_put", "american_put")

# schemes per model; the first is "auto"
SCHEMES = {
    "black_scholes": ("exact", "euler", "milstein"),
    "heston": ("qe", "euler"),
    "merton": ("exact",),
    "kou": ("exact",),
    "cev": ("euler",),
    "sinh_lv": ("euler", "exact"),
    "black_karasinski": ("euler", "exact"),
}
_SCHEME_CODE = {"exact": 0, "euler": 1, "milstein": 2, "qe": 3}
_TORCH_SCHEMES = {"black_scholes": ("exact",), "heston": ("qe", "euler")}
_KERNEL = {"black_scholes": "euro_gbm", "heston": "euro_heston", "merton": "euro_jump", "kou": "euro_jump",
           "cev": "euro_cev", "sinh_lv": "euro_sinh", "black_karasinski": "bond_bk"}
_NON_FINITE = "non-finite Monte Carlo estimate (the simulated paths overflowed)"
_OUT_OF_BOUNDS = ("Monte Carlo estimate outside the no-arbitrage bounds (the simulated paths miss the mass that "
                  "carries the price, e.g. jumps with E[exp(Y)] in the millions)")
# NaN beyond the no-arbitrage bounds (:mod:`._bounds`) by more than this times S e^{-qT} + K e^{-rT}, plus 6 stderr
BOUND_TOL = _bounds.BOUND_TOL


def _bs_price(S, K, T, r, q, sigma, theta):
    from pricebench_plugins.models import black_scholes as bs

    return bs.price(S, K, T, r, q, sigma, theta)


class MonteCarlo(Pricer):
    name = "mc"
    version = "1"
    description = ("Monte Carlo with standard errors: exact, Euler, Milstein and Andersen QE schemes, antithetic "
                   "and control variates, Longstaff-Schwartz American puts, Black-Karasinski bonds")
    devices = ("cpu", "cuda")
    supports = {
        **{m: OPTIONS for m in ("black_scholes", "heston", "merton", "kou", "cev", "sinh_lv")},
        "black_karasinski": ("zero_coupon_bond",),
    }
    settings = {
        "paths": Setting(100_000, int, "simulated paths per option (antithetic: rounded up to even, at least 4)",
                         min=2),
        "steps": Setting(0, int, "time steps per path; 0 = the scheme's default: 1 for exact European "
                                 "schemes, 50 otherwise (American exercise dates are the steps)", min=0),
        "dt": Setting(None, float, "if set, steps per option = ceil(T/dt), overriding steps", min=1e-8),
        "scheme": Setting("auto", str, "discretisation: auto (the model's first) or exact, euler, milstein "
                                       "(black_scholes), qe, euler (heston), exact (merton, kou), euler (cev), "
                                       "euler, exact (sinh_lv, black_karasinski)",
                          choices=("auto", "exact", "euler", "milstein", "qe")),
        "antithetic": Setting(False, bool, "antithetic pairs (Z, -Z); stderr from the pair averages"),
        "control_variate": Setting(False, bool, "European options: control variate (discounted S_T, or for "
                                                "heston a Black-Scholes payoff on a GBM with the same normals); "
                                                "ignored for American options and bonds"),
        "seed": Setting(None, int, "random seed (None = 0); results are identical for any thread count",
                        min=0),
        "basis_degree": Setting(3, int, "Longstaff-Schwartz polynomial degree in S/K (American options)",
                                min=1, max=6),
        "backend": Setting("auto", str, "numba (CPU kernels) or torch (black_scholes exact and heston "
                                        "European, any device); auto = numba on cpu, torch on cuda",
                           choices=("auto", "numba", "torch")),
    }

    def __init__(self, **settings):
        super().__init__(**settings)
        torch_schemes = {x for schemes in _TORCH_SCHEMES.values() for x in schemes}
        if self.backend == "torch" and self.scheme not in torch_schemes | {"auto"}:
            raise SettingError(f"pricer 'mc': setting 'scheme' = {self.scheme!r} has no torch kernel (backend "
                               f"'torch' runs {', '.join(sorted(torch_schemes))}); use backend 'numba'", "scheme")

    # ------------------------------------------------------------------ set-up (untimed)
    def scheme_for(self, model: str) -> str:
        """The scheme used for ``model``; ValueError naming 'scheme' if the model has no such scheme."""
        allowed = SCHEMES[model]
        if self.scheme == "auto":
            return allowed[0]
        if self.scheme not in allowed:
            raise SettingError(
                f"pricer 'mc': setting 'scheme' = {self.scheme!r} is not available for model {model!r}; "
                f"use {' or '.join(map(repr, ('auto',) + allowed))}", "scheme")
        return self.scheme

    def check_task(self, model: str, product: str) -> None:
        self.scheme_for(model)
        if product.startswith("american") and self.dt is None:  # with dt the steps depend on T
            self._check_recorded_paths(self.steps if self.steps > 0 else _DEFAULT_STEPS)

    def _npaths(self) -> int:
        """Paths per option: antithetic rounds up to whole pairs, and at least two of them for a standard
        error."""
        return max(4, self.paths + self.paths % 2) if self.antithetic else self.paths

    def _check_recorded_paths(self, nmax: int) -> None:
        """SettingError naming 'paths' if an American option's recorded paths (steps x paths) pass 1 GiB."""
        npaths = self._npaths()
        if nmax * npaths * 8 > _LSM_MAX_BYTES:
            raise SettingError(f"pricer 'mc': an American option records paths x steps = {npaths} x "
                               f"{nmax} values, over the 1 GiB limit; lower 'paths' or 'steps'", "paths")

    def prepare(self, model, product, params, device="cpu", array_backend=None):
        self.check_device(device)
        if not self.can_price(model.name, product):
            raise ValueError(f"pricer {self.name!r} does not price {product!r} under {model.name!r}")
        self.model_, self.product_, self.device_ = model, product, device
        self.scheme_ = self.scheme_for(model.name)
        self.backend_ = self.pick_backend(device, "numba")
        self.american_ = product.startswith("american")
        self.bond_ = product == "zero_coupon_bond"
        self.cv_ = bool(self.control_variate) and not (self.american_ or self.bond_)
        self.cp_ = -1.0 if product.endswith("_put") else 1.0
        self.seed_ = 0 if self.seed is None else int(self.seed)
        self.npaths_ = self._npaths()
        self.shape_ = np.shape(params[next(iter(params))])
        flat = {k: np.array(np.ravel(v), dtype=np.float64) for k, v in params.items()}
        self.nsteps_ = self._steps(flat["T"])
        self.bounds_ = _bounds.no_arbitrage_bounds(model.name, product, flat)
        if self.backend_ == "torch":
            return self._prepare_torch(model.name, flat, device)
        return self._prepare_numba(model.name, flat)

    def _steps(self, T: np.ndarray) -> np.ndarray:
        exact_euro = self.scheme_ == "exact" and not self.american_ and not self.bond_
        if self.dt is not None:
            n = np.ceil(T / self.dt - 1e-9)
            if np.any(n > 1e8):
                raise SettingError(f"pricer 'mc': setting 'dt' = {self.dt!r} gives more than 1e8 steps", "dt")
            return np.maximum(n, 1.0).astype(np.int64)
        n = self.steps if self.steps > 0 else (1 if exact_euro else _DEFAULT_STEPS)
        return np.full(T.shape, n, dtype=np.int64)

    def _matrix(self, name: str, p: dict) -> tuple[np.ndarray, np.ndarray | None]:
        """The kernel's parameter matrix (options, columns) and the control's known means."""
        S, K, T, r, q = (p.get(k) for k in ("S", "K", "T", "r", "q"))
        n = self.nsteps_
        cvmean = None
        if name == "black_scholes":
            P = np.stack([S, K, T, r, q, p["sigma"]], axis=1)
        elif name == "heston":
            kT = p["kappa"] * T
            frac = np.where(kT > 1e-8, -np.expm1(-kT) / np.where(kT > 1e-8, kT, 1.0), 1.0 - 0.5 * kT)
            sbar = np.sqrt(np.maximum(p["theta"] + (p["v0"] - p["theta"]) * frac, 0.0))
            P = np.stack([S, K, T, r, q, p["v0"], p["kappa"], p["theta"], p["xi"], p["rho"], sbar], axis=1)
            if self.cv_:
                with np.errstate(all="ignore"):
                    cvmean = np.asarray(_bs_price(S, K, T, r, q, sbar, self.cp_), dtype=np.float64)
        elif name in ("merton", "kou"):
            lam, sigma = p["lam"], p["sigma"]
            if name == "merton":
                from pricebench_plugins.models.merton import jump_compensator

                j1, j2, j3 = p["mu_j"], p["sigma_j"], np.zeros_like(S)
                comp = jump_compensator(j1, j2)
            else:
                from pricebench_plugins.models.kou import jump_compensator

                j1, j2, j3 = p["p"], p["eta1"], p["eta2"]
                comp = jump_compensator(j1, j2, j3)
            drift = r - q - 0.5 * sigma * sigma - lam * comp
            nsub = np.maximum(np.ceil(lam * T / n / 20.0), 1.0)  # Poisson means per draw <= 20
            P = np.stack([S, K, T, r, q, sigma, lam, j1, j2, j3, drift, nsub], axis=1)
        elif name == "cev":
            P = np.stack([S, K, T, r, q, p["sigma"], p["beta"]], axis=1)
        elif name == "sinh_lv":
            P = np.stack([S, K, T, r, q, p["lam"]], axis=1)
        else:  # black_karasinski
            P = np.stack([p["r0"], p["alpha"], p["sigma"], T], axis=1)
        if self.cv_ and name != "heston":
            if self.scheme_ == "exact":
                cvmean = S * np.exp(-q * T)
            else:  # the Euler/Milstein mean of S_T: S (1 + (r - q) dt)^n
                cvmean = S * np.exp(-r * T + n * np.log1p((r - q) * T / n))
        return np.ascontiguousarray(P, dtype=np.float64), cvmean

    def _bk_grid(self, p: dict) -> np.ndarray:
        """Per-option values on the time grid t_k = k T/n: ln mu(t_k) (Euler) or m(t_k) (exact)."""
        from pricebench_plugins.models.black_karasinski import _log_level, log_rate_mean

        n = self.nsteps_
        nmax = int(n.max()) if n.size else 1
        k = np.arange(nmax + 1, dtype=np.float64)[None, :]
        t = np.minimum(k, n[:, None]) * (p["T"] / n)[:, None]  # padded with T past each option's end
        if self.scheme_ == "exact":
            return np.ascontiguousarray(log_rate_mean(t, p["r0"], p["alpha"], p["mu"], p["mu_sin"]))
        with np.errstate(divide="ignore"):
            G = _log_level(t, p["mu"][:, None], p["mu_sin"][:, None])
        G[:, 0] = 0.0  # unused (the level is taken at each step's end)
        return np.ascontiguousarray(G)

    def _prepare_numba(self, name: str, flat: dict) -> dict:
        from pricebench_plugins.pricers import _mc_paths

        assert _mc_paths.BLOCK == BLOCK
        P, cvmean = self._matrix(name, flat)
        self.kernel_ = getattr(_mc_paths, _KERNEL[name])
        self.lsm_ = _mc_paths.lsm
        self.code_ = 1 if name == "kou" else (0 if name == "merton" else _SCHEME_CODE[self.scheme_])
        m = P.shape[0]
        self.nblk_ = -(-self.npaths_ // BLOCK)
        inputs = {"P": P, "nsteps": self.nsteps_, "cvmean": cvmean}
        if self.american_:
            self._check_recorded_paths(int(self.nsteps_.max()) if m else 1)
            inputs["S"] = flat["S"]
            inputs["K"] = flat["K"]
            inputs["r"] = flat["r"]
            inputs["T"] = flat["T"]
        if self.bond_:
            inputs["G"] = self._bk_grid(flat)
        # chunks of work items (option, block) of about _WORK_PER_CALL path-steps per thread
        import numba

        self.nthreads_ = numba.get_num_threads()
        cnt = np.full(self.nblk_, BLOCK, dtype=np.float64)
        cnt[-1] = self.npaths_ - BLOCK * (self.nblk_ - 1)
        work = np.cumsum((self.nsteps_.astype(np.float64)[:, None] * cnt[None, :]).ravel())
        target = _WORK_PER_CALL * self.nthreads_
        total = float(work[-1]) if work.size else 0.0
        cuts = np.searchsorted(work, np.arange(target, total, target), side="left") + 1
        self.cuts_ = [0] + sorted(set(int(c) for c in cuts if 0 < c < work.size)) + [int(work.size)]
        self._compile(P.shape[1], inputs)
        return inputs

    def _compile(self, ncol: int, inputs: dict) -> None:
        """JIT-compile (or load from the disk cache) the kernels price() calls, untimed, on the
        exact argument types it passes."""
        P = np.ones((1, ncol))
        P[0, 2] = 1.0
        n = np.ones(1, dtype=np.int64)
        acc = np.zeros((1, 1, 8))
        if self.bond_:
            P[0, :] = (0.05, 1.0, 0.1, 1.0)
            self.kernel_(P, n, np.zeros((1, 2)), 0, 2, bool(self.antithetic), self.code_, acc, 0, 1)
            return
        P[0, :6] = (1.0, 1.0, 1.0, 0.0, 0.0, 0.2)
        if ncol == 11:  # heston
            P[0, 5:] = (0.04, 1.0, 0.04, 0.3, -0.5, 0.2)
        elif ncol == 12:  # jumps
            P[0, 6:] = (0.0, 0.0, 1.0, 1.0, 0.0, 1.0)
        elif ncol == 7:  # cev
            P[0, 6] = 1.0
        X = np.zeros((1, 2)) if self.american_ else np.empty((0, 0))
        self.kernel_(P, n, self.cp_, 0, 2, bool(self.antithetic), self.cv_, self.code_, acc, 0, 1, X)
        if self.american_:
            self.lsm_(X, 1, 2, 1.0, 0.0, 1.0, self.cp_, int(self.basis_degree), bool(self.antithetic), acc, 0)

    # ------------------------------------------------------------------ timed
    def price(self, inputs):
        if self.backend_ == "torch":
            from pricebench_plugins.pricers import _mc_torch

            mean, se = _mc_torch.price(self, inputs)
            return self._result(mean, se)
        P = inputs["P"]
        m = P.shape[0]
        acc = np.zeros((m, self.nblk_, 8))
        anti = bool(self.antithetic)
        if self.bond_:
            for i0, i1 in zip(self.cuts_[:-1], self.cuts_[1:]):
                self.kernel_(P, inputs["nsteps"], inputs["G"], self.seed_, self.npaths_, anti, self.code_, acc,
                             i0, i1)
        elif self.american_:
            self._american(inputs, acc)
        else:
            for i0, i1 in zip(self.cuts_[:-1], self.cuts_[1:]):
                self.kernel_(P, inputs["nsteps"], self.cp_, self.seed_, self.npaths_, anti, self.cv_, self.code_,
                             acc, i0, i1, _NO_RECORD)
        mean, var, N = _reduce(acc, inputs.get("cvmean") if self.cv_ else None)
        se = np.sqrt(var / N)
        if self.american_:  # exercise at once where that beats the simulated strategy
            mean = np.maximum(mean, np.maximum(self.cp_ * (inputs["S"] - inputs["K"]), 0.0))
        return self._result(mean, se)

    def _american(self, inputs, acc):
        P, nsteps = inputs["P"], inputs["nsteps"]
        if P.shape[0] == 0:  # an empty batch: nothing to simulate
            return
        nblk, npaths, anti = self.nblk_, self.npaths_, bool(self.antithetic)
        X = np.empty((int(nsteps.max()), npaths))
        per_call = max(1, int(_WORK_PER_CALL * self.nthreads_ // (BLOCK * max(int(nsteps.max()), 1))))
        for o in range(P.shape[0]):
            n = int(nsteps[o])
            for b0 in range(0, nblk, per_call):
                self.kernel_(P, nsteps, self.cp_, self.seed_, npaths, anti, False, self.code_, acc,
                             o * nblk + b0, o * nblk + min(nblk, b0 + per_call), X)
            self.lsm_(X, n, npaths, float(inputs["K"][o]), float(inputs["r"][o]), float(inputs["T"][o]) / n,
                      self.cp_, int(self.basis_degree), anti, acc, o)

    def _result(self, mean, se):
        mean = np.asarray(mean, dtype=np.float64)
        se = np.asarray(se, dtype=np.float64)
        mean, se, reason = _bounds.check_bounds(mean, self.bounds_, BOUND_TOL, se, out_of_bounds=_OUT_OF_BOUNDS,
                                                not_finite=_NON_FINITE)
        if reason is not None:
            reason = reason.reshape(self.shape_)
        return PriceResult(price=mean.reshape(self.shape_), stderr=se.reshape(self.shape_), reason=reason)

    # ------------------------------------------------------------------ torch
    def _prepare_torch(self, name: str, flat: dict, device: str) -> dict:
        if name not in _TORCH_SCHEMES or self.american_:
            raise Unsupported(f"pricer 'mc' with backend 'torch' prices only European calls and puts under "
                              f"black_scholes (scheme exact) and heston (qe, euler), not {self.product_!r} under "
                              f"{name!r}; use backend 'numba' on the CPU")
        if self.scheme_ not in _TORCH_SCHEMES[name]:
            raise Unsupported(f"pricer 'mc' with backend 'torch' runs {name!r} with scheme "
                              f"{' or '.join(map(repr, _TORCH_SCHEMES[name]))}, not {self.scheme_!r}")
        from pricebench_plugins.pricers import _mc_torch

        P, cvmean = self._matrix(name, flat)
        return _mc_torch.prepare(P, self.nsteps_, cvmean, device)


_NO_RECORD = np.empty((0, 0))


def _reduce(acc: np.ndarray, cvmean: np.ndarray | None):
    """Per-option mean, sample variance and sample count from the block sums, in block order
    (NumPy, deterministic); with a control variate, those of the adjusted samples."""
    n = acc[..., 0]
    with np.errstate(all="ignore"):
        N = n.sum(axis=1)
        my_b = acc[..., 1] + acc[..., 2] / n
        my = (n * my_b).sum(axis=1) / N
        dy = my_b - my[:, None]
        Myy = (acc[..., 3] - acc[..., 2] ** 2 / n).sum(axis=1) + (n * dy * dy).sum(axis=1)
        if cvmean is None:
            return my, np.maximum(Myy, 0.0) / (N - 1.0), N
        mx_b = acc[..., 4] + acc[..., 5] / n
        mx = (n * mx_b).sum(axis=1) / N
        dx = mx_b - mx[:, None]
        Mxx = (acc[..., 6] - acc[..., 5] ** 2 / n).sum(axis=1) + (n * dx * dx).sum(axis=1)
        Mxy = (acc[..., 7] - acc[..., 5] * acc[..., 2] / n).sum(axis=1) + (n * dx * dy).sum(axis=1)
        b = np.where(Mxx > 0.0, Mxy / np.where(Mxx > 0.0, Mxx, 1.0), 0.0)
        mean = my - b * (mx - cvmean)
        var = np.maximum(Myy - 2.0 * b * Mxy + b * b * Mxx, 0.0) / (N - 1.0)
    return mean, var, N


@hookimpl
def register_pricers(register):
    register(MonteCarlo)
