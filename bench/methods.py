"""The contracts a plugin implements: models, pricers, root finders,
approximators and metrics.

The shape follows scikit-learn's estimators: ``__init__`` only validates and
stores settings; untimed work (grids, JIT warm-up, moving data to a device,
training) happens in ``prepare``/``fit``; the timed work is one call
(``price``, ``solve``, ``predict``). Capabilities are class attributes, so
the runner can decide what to run without instantiating anything.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar, Mapping, Sequence

import numpy as np

from bench import arrays

DEVICES = ("cpu", "cuda")
PRODUCTS = ("european_call", "european_put", "american_put", "american_call", "zero_coupon_bond")


class Unsupported(Exception):
    """Raised by ``prepare`` when a method cannot run a cell as configured
    (for example a CPU-only backend asked to run on CUDA). The runner
    records the cell as skipped with this message, not as an error."""


# --------------------------------------------------------------------------- settings


class SettingError(ValueError):
    """A bad setting of a method; ``setting`` names it."""

    def __init__(self, message: str, setting: str):
        super().__init__(message)
        self.setting = setting


@dataclass(frozen=True)
class Setting:
    """One tunable knob of a method: its default, type and admissible values."""

    default: Any
    type: type = float
    doc: str = ""
    choices: Sequence[Any] | None = None
    min: float | None = None
    max: float | None = None

    def check(self, name: str, value: Any) -> Any:
        """Return ``value`` converted to this setting's type, or raise ValueError."""
        kind = self.type
        if value is None and self.default is None:
            return None
        if kind is bool:
            if not isinstance(value, bool):
                raise ValueError(f"setting {name!r} must be true or false, got {value!r}")
        elif kind is int:
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise ValueError(f"setting {name!r} must be an integer, got {value!r}")
            value = int(value)
        elif kind is float:
            if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
                raise ValueError(f"setting {name!r} must be a number, got {value!r}")
            value = float(value)
            if math.isnan(value):
                raise ValueError(f"setting {name!r} must not be NaN")
        elif kind is str:
            if not isinstance(value, str):
                raise ValueError(f"setting {name!r} must be a string, got {value!r}")
        elif kind in (list, tuple):
            if not isinstance(value, (list, tuple)):
                raise ValueError(f"setting {name!r} must be a list, got {value!r}")
            value = tuple(value)
        if self.choices is not None and value not in self.choices:
            raise ValueError(
                f"setting {name!r} must be one of {', '.join(map(repr, self.choices))}; got {value!r}"
            )
        if self.min is not None and value < self.min:
            raise ValueError(f"setting {name!r} must be >= {self.min}, got {value!r}")
        if self.max is not None and value > self.max:
            raise ValueError(f"setting {name!r} must be <= {self.max}, got {value!r}")
        return value


class Method:
    """Base of every registered method (pricer, root finder, approximator).

    Subclasses declare:

    - ``name``: stable identifier used in suites, the API and CSV files;
    - ``version``: bump it whenever results change, so old leaderboards are
      recognisably incomparable;
    - ``devices``: where it runs (``"cpu"``, ``"cuda"``);
    - ``settings``: ``{name: Setting(default, type, doc, ...)}``.
    """

    kind: ClassVar[str] = "method"
    name: ClassVar[str] = ""
    version: ClassVar[str] = "1"
    description: ClassVar[str] = ""
    devices: ClassVar[tuple[str, ...]] = ("cpu",)
    settings: ClassVar[Mapping[str, Setting]] = {}

    def __init__(self, **settings: Any) -> None:
        for key, value in self.resolve_settings(settings).items():
            setattr(self, key, value)

    @classmethod
    def resolve_settings(cls, given: Mapping[str, Any]) -> dict[str, Any]:
        """Defaults overlaid with ``given``, each checked; unknown names raise ValueError."""
        unknown = sorted(set(given) - set(cls.settings))
        if unknown:
            known = ", ".join(sorted(cls.settings)) or "none"
            raise SettingError(
                f"{cls.kind} {cls.name!r} has no setting {unknown[0]!r} (settings: {known})", unknown[0]
            )
        out = {}
        for key, spec in cls.settings.items():
            value = given.get(key, spec.default)
            try:
                out[key] = spec.check(key, value)
            except ValueError as exc:
                raise SettingError(f"{cls.kind} {cls.name!r}: {exc}", key) from None
        return out

    @classmethod
    def requires(cls, settings: Mapping[str, Any]) -> tuple[str, ...]:
        """Artifacts of earlier tasks this configuration needs (``"task/file"``; see :mod:`bench.artifacts`).

        The runner finishes those tasks first and hands their files to the cell; the default needs none."""
        return ()

    @classmethod
    def check_requirements(cls, settings: Mapping[str, Any], tasks: Mapping[str, Any], model: str | None = None,
                           product: str | None = None) -> None:
        """Raise :class:`SettingError` when a required artifact cannot come from ``tasks`` (the earlier tasks
        of the suite, by name) or does not fit the task at hand (``model``, ``product``): suites call it
        while they are read."""

    def get_params(self) -> dict[str, Any]:
        """The settings of this instance (scikit-learn's name for it)."""
        return {key: getattr(self, key) for key in self.settings}

    @classmethod
    def supports_device(cls, device: str) -> bool:
        return device in cls.devices

    def check_device(self, device: str) -> None:
        if device not in DEVICES:
            raise ValueError(f"unknown device {device!r}; use one of {', '.join(DEVICES)}")
        if not self.supports_device(device):
            raise Unsupported(f"{self.kind} {self.name!r} has no {device} path (devices: {', '.join(self.devices)})")
        if device == "cuda" and not arrays.cuda_available():
            raise RuntimeError("device 'cuda' requested but no CUDA GPU is available")

    def pick_backend(self, device: str, cpu_default: str) -> str:
        """Resolve a ``backend`` setting: ``auto`` means ``cpu_default`` on the
        CPU and ``torch`` elsewhere; only torch runs off the CPU."""
        backend = getattr(self, "backend", "auto")
        if backend == "auto":
            backend = cpu_default if device == "cpu" else "torch"
        if device != "cpu" and backend != "torch":
            raise Unsupported(f"backend {backend!r} runs on the CPU only; use backend 'torch' on {device!r}")
        return backend

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({args})"


# --------------------------------------------------------------------------- models


@dataclass(frozen=True)
class Param:
    """A model parameter: default (None = required) and admissible range."""

    doc: str = ""
    default: float | None = None
    lower: float = -math.inf
    upper: float = math.inf
    lower_open: bool = False
    upper_open: bool = False

    def describe(self) -> str:
        """The admissible range in interval notation; values must also be finite."""
        lo = "(" if self.lower_open or not math.isfinite(self.lower) else "["
        hi = ")" if self.upper_open or not math.isfinite(self.upper) else "]"
        return f"{lo}{self.lower:g}, {self.upper:g}{hi}"

    def admits(self, values: np.ndarray) -> np.ndarray:
        ok = np.isfinite(values)
        ok &= (values > self.lower) if self.lower_open else (values >= self.lower)
        ok &= (values < self.upper) if self.upper_open else (values <= self.upper)
        return ok


# the contract terms and market data of an equity option, shared by the equity models
OPTION_PARAMS: dict[str, Param] = {
    "S": Param("spot price", lower=0.0, lower_open=True),
    "K": Param("strike", lower=0.0, lower_open=True),
    "T": Param("time to maturity in years", lower=0.0, lower_open=True),
    "r": Param("continuously compounded risk-free rate", default=0.0),
    "q": Param("continuous dividend yield", default=0.0),
}


class Model:
    """A stochastic model: its parameters, with bounds, and its products.

    ``validate`` is the single place parameters are checked; the API, the
    runner and every pricer rely on it, so a bad parameter gives one
    ValueError naming the parameter whoever calls.
    """

    kind: ClassVar[str] = "model"
    name: ClassVar[str] = ""
    version: ClassVar[str] = "1"
    description: ClassVar[str] = ""
    params: ClassVar[Mapping[str, Param]] = {}
    products: ClassVar[tuple[str, ...]] = ()
    # prices homogeneous of degree one in (S, K): V(a S, a K) = a V(S, K) (no parameter in price units);
    # learned functions may then use S/K and V/K
    homogeneous: ClassVar[bool] = False

    def validate(self, params: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """Fill defaults, reject unknown or missing names and out-of-range values.

        Returns float64 arrays broadcast to a common shape.
        """
        unknown = sorted(set(params) - set(self.params))
        if unknown:
            raise ValueError(
                f"model {self.name!r} has no parameter {unknown[0]!r} "
                f"(parameters: {', '.join(self.params)})"
            )
        values = {}
        for key, spec in self.params.items():
            if key in params and params[key] is not None:
                value = params[key]
            elif spec.default is not None:
                value = spec.default
            else:
                raise ValueError(f"model {self.name!r}: parameter {key!r} is required")
            try:
                values[key] = np.asarray(value, dtype=np.float64)
            except (TypeError, ValueError):
                raise ValueError(
                    f"model {self.name!r}: parameter {key!r} must be numeric, got {value!r}"
                ) from None
        try:
            shape = np.broadcast_shapes(*(v.shape for v in values.values()))
        except ValueError:
            shapes = ", ".join(f"{k}{v.shape}" for k, v in values.items())
            raise ValueError(f"model {self.name!r}: parameter shapes do not broadcast: {shapes}") from None
        for key, spec in self.params.items():
            ok = spec.admits(values[key])
            if not np.all(ok):
                bad = values[key][~ok] if values[key].ndim else values[key]
                first = float(np.ravel(bad)[0])
                raise ValueError(
                    f"model {self.name!r}: parameter {key!r} must lie in {spec.describe()}, got {first!r}"
                )
        self.check_joint(values)
        return {k: np.broadcast_to(v, shape) for k, v in values.items()}

    def check_joint(self, values: Mapping[str, np.ndarray]) -> None:
        """Conditions linking several parameters; raise ValueError naming them."""

    # ------------------------------------------------------------------ optional capabilities
    # Fourier methods (COS) use these when a model has them; a model without a
    # characteristic function leaves them as they are.

    def characteristic_function(self, u: Any, params: Mapping[str, Any]) -> Any:
        """phi(u) = E[exp(i u X)] of X = ln(S_T / S_0) under the pricing measure.

        ``u`` is a real array (NumPy or torch) that broadcasts against the
        parameter arrays in ``params`` (which include T, r and q); the
        result is complex, of the broadcast shape, on the same device.
        """
        raise NotImplementedError(f"model {self.name!r} has no characteristic function")

    def cumulants(self, params: Mapping[str, Any]) -> tuple[Any, Any, Any]:
        """First, second and fourth cumulants (c1, c2, c4) of X = ln(S_T / S_0),
        for the truncation range of Fourier-cosine methods."""
        raise NotImplementedError(f"model {self.name!r} has no cumulants")

    @classmethod
    def has_characteristic_function(cls) -> bool:
        return cls.characteristic_function is not Model.characteristic_function

    def check_product(self, product: str) -> None:
        if product not in self.products:
            raise ValueError(
                f"model {self.name!r} has no product {product!r} (products: {', '.join(self.products)})"
            )


# --------------------------------------------------------------------------- pricers


@dataclass
class PriceResult:
    """Prices of a batch, with optional per-option extras.

    ``stderr``: an error estimate (Monte Carlo). ``reason``: why a point is
    NaN, one string per option ("" where priced); the runner counts the
    reasons into the leaderboard's message.
    """

    price: Any
    stderr: Any = None
    reason: Any = None


class Pricer(Method):
    """Prices a batch of options of one (model, product) pair.

    ``supports`` maps model name to the products this pricer handles.
    ``price`` returns an array (or :class:`PriceResult`) of the batch's
    shape, with NaN where the method cannot price a point (never raise for
    one bad point).
    """

    kind: ClassVar[str] = "pricer"
    supports: ClassVar[Mapping[str, tuple[str, ...]]] = {}

    @classmethod
    def can_price(cls, model: str, product: str) -> bool:
        return product in cls.supports.get(model, ())

    def check_task(self, model: str, product: str) -> None:
        """Raise :class:`SettingError` if these settings cannot price ``product`` under ``model``
        (a scheme the model lacks, say). Suites call it while they are validated, so the
        error names the file, task and setting before anything runs; the default accepts."""

    def prepare(self, model: Model, product: str, params: Mapping[str, np.ndarray], device: str = "cpu",
                array_backend: str | None = None) -> Any:
        """Untimed set-up; returns the inputs of :meth:`price`, resident on ``device``.

        The default stores the task and moves the parameter arrays to the
        device: NumPy on the CPU and torch tensors on CUDA, unless
        ``array_backend`` (``"numpy"`` or ``"torch"``) says otherwise.
        """
        self.check_device(device)
        if not self.can_price(model.name, product):
            raise ValueError(f"pricer {self.name!r} does not price {product!r} under {model.name!r}")
        self.model_ = model
        self.product_ = product
        self.device_ = device
        return arrays.to_device(dict(params), device, backend=array_backend)

    def price(self, inputs: Any) -> Any:  # pragma: no cover - contract
        raise NotImplementedError


# --------------------------------------------------------------------------- root finders


class IVStatus(enum.IntEnum):
    """Per-option outcome of an implied-volatility solve."""

    CONVERGED = 0
    BELOW_LOWER_BOUND = 1
    ABOVE_UPPER_BOUND = 2
    MAX_ITERATIONS = 3
    NO_BRACKET = 4
    DIVERGED = 5
    INVALID_INPUT = 6
    OUTSIDE_DOMAIN = 7
    INACCURATE = 8

    @property
    def reason(self) -> str:
        return _IV_REASONS[self]


_IV_REASONS = {
    IVStatus.CONVERGED: "converged",
    IVStatus.BELOW_LOWER_BOUND: "price at or below the no-arbitrage lower bound (intrinsic value)",
    IVStatus.ABOVE_UPPER_BOUND: "price at or above the no-arbitrage upper bound",
    IVStatus.MAX_ITERATIONS: "iteration cap reached before the tolerance",
    IVStatus.NO_BRACKET: "no sign change inside the bracket",
    IVStatus.DIVERGED: "iterate left the admissible region (non-positive, non-finite or zero vega)",
    IVStatus.INVALID_INPUT: "non-finite input, or S, K or T not positive",
    IVStatus.OUTSIDE_DOMAIN: "outside the domain the method covers (a learned function's training domain)",
    IVStatus.INACCURATE: "the answer failed the method's accuracy check (not within its tolerance of the implied "
                         "volatility)",
}


@dataclass
class IVResult:
    """Implied volatilities of a batch: NaN wherever ``converged`` is False."""

    sigma: np.ndarray
    converged: np.ndarray
    iterations: np.ndarray
    status: np.ndarray = field(default=None)  # IVStatus codes

    def __post_init__(self) -> None:
        if self.status is None:
            self.status = np.where(self.converged, IVStatus.CONVERGED, IVStatus.MAX_ITERATIONS).astype(np.int8)

    @property
    def reasons(self) -> np.ndarray:
        """Per-option reason strings (``"converged"`` for success)."""
        table = np.array([_IV_REASONS[s] for s in IVStatus], dtype=object)
        return table[np.asarray(self.status, dtype=np.int64)]

    def to_host(self) -> "IVResult":
        return IVResult(
            sigma=arrays.to_numpy(self.sigma),
            converged=arrays.to_numpy(self.converged).astype(bool),
            iterations=arrays.to_numpy(self.iterations),
            status=arrays.to_numpy(self.status),
        )

    def summary(self) -> dict[str, int]:
        """How many options ended in each status (non-zero counts only)."""
        codes, counts = np.unique(np.asarray(self.status), return_counts=True)
        return {IVStatus(int(c)).name.lower(): int(n) for c, n in zip(codes, counts)}


class RootFinder(Method):
    """Black-Scholes implied volatility of a batch.

    Inputs (a dict of arrays of one shape): ``price, S, K, T, r, q`` and
    ``is_call`` (bool). ``solve`` returns an :class:`IVResult`; options
    outside the no-arbitrage bounds get NaN with a status, never an
    exception.
    """

    kind: ClassVar[str] = "root_finder"

    def prepare(self, inputs: Mapping[str, np.ndarray], device: str = "cpu", array_backend: str | None = None) -> Any:
        """Untimed: move the inputs to ``device`` (NumPy on CPU, torch on CUDA,
        unless ``array_backend`` says otherwise)."""
        self.check_device(device)
        self.device_ = device
        return arrays.to_device(dict(inputs), device, backend=array_backend)

    def solve(self, inputs: Any) -> IVResult:  # pragma: no cover - contract
        raise NotImplementedError


# --------------------------------------------------------------------------- approximators


class Approximator(Method):
    """A learned function of a batch of feature vectors: trained (untimed) by ``fit``, timed in ``predict``.

    The framework (task kind ``approximate``, :mod:`bench.features`) turns
    model parameters into features and targets and standardises both with
    statistics of the training set only; an approximator sees only the
    standardised arrays:

    - ``fit(X, y, *, X_val=None, y_val=None, dydX=None, device="cpu")``:
      ``X`` is a C-contiguous float64 array of shape (n, d), ``y`` of shape
      (n,); ``X_val``/``y_val`` a validation set for early stopping or model
      selection (never the test set); ``dydX`` of shape (n, d) the
      derivatives of ``y`` with respect to ``X`` (differential training;
      only approximators with ``uses_derivatives = True`` use it, when
      ``wants_derivatives()`` says so; others ignore it). Training runs on ``device``. ``fit`` returns ``self``, sets its
      fitted attributes (names ending in ``_``) and ``fit_info_``, a dict of
      plain numbers and strings describing the training (epochs run,
      best validation loss, early stop, ...). It must bound its own work
      (epochs, iterations, a point cap with a clear ``ValueError``) and be
      deterministic for a given ``seed`` setting on the CPU. Bad shapes or
      non-finite values raise ``ValueError`` naming the argument.
    - ``prepare(X, device)``: untimed; moves the fitted state and ``X`` to
      ``device`` and returns what ``predict`` takes (a NumPy array on the CPU,
      a torch tensor on CUDA for torch back ends).
    - ``predict(X)``: the timed call; one value per row, an array or tensor
      of shape (n,) on the device ``prepare`` chose. Never raises for a
      finite input row; NaN where it cannot predict.
    - ``predict_std(X)`` (only when ``has_std``): the predictive standard
      deviation, same shape and units as ``predict``.
    - ``to_cpu()``: move the fitted state to the CPU (before saving); returns
      ``self``. A fitted approximator must survive ``pickle`` (that is how
      :func:`bench.save_approximator` stores it) and predict the same after.
    - ``imports``: modules the fit needs (``("torch",)``); the framework
      imports them before it starts the clock on ``fit``, so a first import
      (a second or more for torch) is not counted as training time.
    """

    kind: ClassVar[str] = "approximator"
    uses_derivatives: ClassVar[bool] = False  # fit can use dydX (differential training) when a setting asks
    has_std: ClassVar[bool] = False  # predict_std gives a predictive standard deviation
    imports: ClassVar[tuple[str, ...]] = ()  # modules fit imports: imported before fit is timed

    def fit(self, X: np.ndarray, y: np.ndarray, *, X_val: np.ndarray | None = None, y_val: np.ndarray | None = None,
            dydX: np.ndarray | None = None, device: str = "cpu") -> "Approximator":  # pragma: no cover - contract
        raise NotImplementedError

    def prepare(self, X: np.ndarray, device: str = "cpu") -> Any:
        """Untimed: ``X`` on ``device`` (NumPy on the CPU, torch elsewhere); the default for CPU-only methods."""
        self.check_device(device)
        return np.ascontiguousarray(X, dtype=np.float64)

    def predict(self, X: Any) -> Any:  # pragma: no cover - contract
        raise NotImplementedError

    def predict_std(self, X: Any) -> Any:
        raise NotImplementedError(f"approximator {self.name!r} gives no predictive standard deviation")

    def wants_derivatives(self) -> bool:
        """Whether this configuration trains on derivative labels (``dydX``)."""
        return False

    def to_cpu(self) -> "Approximator":
        return self


def check_training_arrays(X: Any, y: Any, dydX: Any = None, name: str = "X") -> tuple[np.ndarray, np.ndarray]:
    """``X`` (n, d) and ``y`` (n,) as float64, finite and of matching length; ValueError naming the argument."""
    X = np.asarray(X, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64).reshape(-1)
    if X.ndim != 2:
        raise ValueError(f"{name} must be 2-D (n, d), got shape {X.shape}")
    if X.shape[0] != y.shape[0]:
        raise ValueError(f"{name} has {X.shape[0]} rows but its targets have {y.shape[0]}")
    if X.shape[0] == 0:
        raise ValueError(f"{name} has no rows: nothing to fit")
    if not (np.all(np.isfinite(X)) and np.all(np.isfinite(y))):
        raise ValueError(f"{name} or its targets contain NaN or inf")
    if dydX is not None and np.shape(dydX) != X.shape:
        raise ValueError(f"dydX must have the shape of {name} {X.shape}, got {np.shape(dydX)}")
    return np.ascontiguousarray(X), y


def check_fit_arrays(X: Any, y: Any, X_val: Any = None, y_val: Any = None, dydX: Any = None):
    """What every ``Approximator.fit`` checks first: ``(X, y, X_val, y_val)`` as float64 arrays.

    The training set by :func:`check_training_arrays`; the validation set given whole or not at all,
    with as many columns as ``X``. ValueError naming the argument at fault.
    """
    X, y = check_training_arrays(X, y, dydX, "X")
    if (X_val is None) != (y_val is None):
        raise ValueError("X_val and y_val must be given together")
    if X_val is not None:
        X_val, y_val = check_training_arrays(X_val, y_val, name="X_val")
        if X_val.shape[1] != X.shape[1]:
            raise ValueError(f"X_val has {X_val.shape[1]} columns but X has {X.shape[1]}")
    return X, y, X_val, y_val


# --------------------------------------------------------------------------- metrics


class Metric:
    """An accuracy score of estimates against references.

    ``compute`` receives the points where both are finite; ``relative``
    metrics receive only points where ``|reference| > floor``.
    """

    kind: ClassVar[str] = "metric"
    name: ClassVar[str] = ""
    version: ClassVar[str] = "1"
    description: ClassVar[str] = ""
    relative: ClassVar[bool] = False

    def compute(self, estimate: np.ndarray, reference: np.ndarray) -> float:  # pragma: no cover
        raise NotImplementedError


BASES: dict[str, type] = {
    "model": Model,
    "pricer": Pricer,
    "root_finder": RootFinder,
    "approximator": Approximator,
    "metric": Metric,
}
