"""Labelled data for learned pricing functions: sample, label in batches, cache on disk.

A labelled set is the model parameters of ``n`` sampled points, the prices a
labelling pricer gives them and, for differential training, the price's
derivatives with respect to the parameters. Labelling is the slow part (a
COS or Monte Carlo pricer over 10^5 points), so sets are cached on disk,
keyed by a hash of everything that determines them: the model and its
version, the product, the domain (in its order: the sampler draws the
columns in that order) and fixed values, the sampler and its
options, the number of points, the seed, the labelling pricer with its
version and fully resolved settings, and whether derivatives were taken. A
second run with the same key reads the file instead of relabelling.

The cache is safe against interrupted writes: a file is written to a
temporary name in the cache folder and renamed into place (atomic on POSIX),
so a killed writer leaves no file under the key; a file that cannot be read
back (truncated by a full disk, say) is relabelled and replaced.

Derivatives: by torch autograd through the labelling pricer where it has a
torch back end that keeps the graph (``closed_form``), else by central finite
differences with step ``FD_STEP`` times the parameter's range in the domain
(or times its value where it is fixed), one-sided where the lower bump would
leave the model's admissible range. ``LabelledSet.derivatives`` says which.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np

from bench import atomic, sampling
from bench.kinds import with_seed
from bench.methods import PriceResult

if TYPE_CHECKING:  # pragma: no cover
    from bench.plugins import Registry
    from bench.suite import MethodSpec

FORMAT = 1  # bump when the file layout changes: old entries are then simply not found
LABEL_BATCH = 20_000  # points priced per call of the labelling pricer (bounds its memory)
FD_STEP = 1e-4


@dataclass(frozen=True)
class SetSpec:
    """What determines one labelled set (hashed into its cache key)."""

    model: str
    model_version: str
    product: str
    domain: Mapping[str, tuple[float, float]]
    fixed: Mapping[str, float]
    sampler: str
    sampler_options: Mapping[str, Any]
    n: int
    seed: str  # the seed sequence's entropy and spawn key, as text
    pricer: str
    pricer_version: str
    pricer_settings: Mapping[str, Any]
    derivatives: tuple[str, ...] = ()  # parameters to differentiate the price by

    def key(self) -> str:
        # sort_keys loses the domain's order, yet the sampler draws its columns in that order
        blob = json.dumps({"format": FORMAT, "domain_order": list(self.domain),
                           **{k: (dict(v) if isinstance(v, Mapping) else v) for k, v in self.__dict__.items()}},
                          sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:24]


@dataclass
class LabelledSet:
    params: dict[str, np.ndarray]
    labels: np.ndarray  # NaN where the labelling pricer could not price a point
    label_s: float  # seconds the labelling of the values took when it was done (also for a cached set)
    gradients: dict[str, np.ndarray] = field(default_factory=dict)  # d label / d parameter
    derivatives: str = ""  # how the gradients were taken
    derivative_s: float = 0.0  # seconds the gradients took, beside label_s
    cached: bool = False  # read from the cache this time
    key: str = ""
    note: str = ""

    @property
    def size(self) -> int:
        return int(self.labels.size)


def _price(pricer: Any, model: Any, product: str, params: Mapping[str, np.ndarray]) -> np.ndarray:
    out = pricer.price(pricer.prepare(model, product, params, "cpu"))
    if isinstance(out, PriceResult):
        out = out.price
    from bench import arrays

    return arrays.to_numpy(out).astype(np.float64).reshape(-1)


def _batched(pricer: Any, model: Any, product: str, params: Mapping[str, np.ndarray], batch: int) -> np.ndarray:
    n = next(iter(params.values())).size
    out = np.empty(n)
    for start in range(0, n, batch):
        chunk = {k: v[start:start + batch] for k, v in params.items()}
        out[start:start + batch] = _price(pricer, model, product, chunk)
    return out


def _autograd(pricer_cls: type, settings: Mapping[str, Any], model: Any, product: str,
              params: Mapping[str, np.ndarray], names: tuple[str, ...], batch: int) -> dict[str, np.ndarray] | None:
    """Gradients by torch autograd through a pricer's torch back end, or None where it has none that works."""
    spec = pricer_cls.settings.get("backend")
    if spec is None or not spec.choices or "torch" not in spec.choices:
        return None
    try:
        import torch

        pricer = pricer_cls(**dict(settings, backend="torch"))
        n = next(iter(params.values())).size
        grads = {k: np.empty(n) for k in names}
        for start in range(0, n, batch):
            leaves = {k: torch.tensor(np.array(v[start:start + batch]), dtype=torch.float64,
                                      requires_grad=k in names) for k, v in params.items()}
            inputs = pricer.prepare(model, product, leaves, "cpu")
            out = pricer.price(inputs)
            out = out.price if isinstance(out, PriceResult) else out
            if not (torch.is_tensor(out) and out.requires_grad):
                return None  # the back end detached its inputs
            out.sum().backward()
            for k in names:
                g = leaves[k].grad
                if g is None:
                    return None
                grads[k][start:start + batch] = g.numpy()
        return grads
    except Exception:  # noqa: BLE001 - any failure: fall back to finite differences
        return None


def _finite_differences(pricer: Any, model: Any, product: str, params: Mapping[str, np.ndarray],
                        names: tuple[str, ...], domain: Mapping[str, tuple[float, float]],
                        batch: int) -> dict[str, np.ndarray]:
    grads = {}
    for k in names:
        x = params[k]
        if k in domain:
            h = FD_STEP * (domain[k][1] - domain[k][0])
            h = np.full_like(x, h)
        else:
            h = FD_STEP * np.maximum(np.abs(x), 1e-3)
        lower_ok = model.params[k].admits(x - h)
        up = dict(params, **{k: x + h})
        down = dict(params, **{k: np.where(lower_ok, x - h, x)})
        width = np.where(lower_ok, 2 * h, h)
        grads[k] = (_batched(pricer, model, product, up, batch) - _batched(pricer, model, product, down, batch)) / width
    return grads


def label(spec: SetSpec, params: Mapping[str, np.ndarray], registry: "Registry", pricer_seed: int,
          batch: int = LABEL_BATCH) -> LabelledSet:
    """Price ``params`` (and their derivatives, if ``spec.derivatives``) with the labelling pricer, in batches."""
    model = registry.model(spec.model)
    cls = registry.get("pricer", spec.pricer)
    settings = with_seed(cls, spec.pricer_settings, pricer_seed)
    pricer = cls(**settings)
    t0 = time.perf_counter()
    labels = _batched(pricer, model, spec.product, params, batch)
    label_s = time.perf_counter() - t0
    gradients, how = {}, ""
    t0 = time.perf_counter()
    if spec.derivatives:
        gradients = _autograd(cls, settings, model, spec.product, params, spec.derivatives, batch)
        how = f"torch autograd through {spec.pricer}'s torch back end"
        if gradients is None:
            gradients = _finite_differences(pricer, model, spec.product, params, spec.derivatives, spec.domain,
                                            batch)
            how = f"central finite differences, step {FD_STEP:g} x the parameter's range"
    return LabelledSet(dict(params), labels, label_s, gradients, how,
                       time.perf_counter() - t0 if spec.derivatives else 0.0)


def sample_set(spec: SetSpec, seq: np.random.SeedSequence, registry: "Registry") -> dict[str, np.ndarray]:
    """The set's points: the sampler over ``spec.domain``, fixed values elsewhere, validated by the model."""
    rng = np.random.default_rng(seq)
    points = sampling.sample(dict(spec.domain), spec.n, spec.sampler, rng, dict(spec.sampler_options))
    size = sampling.points(spec.sampler, spec.n, len(spec.domain))
    raw = {k: np.full(size, v) for k, v in spec.fixed.items()} | points
    model = registry.model(spec.model)
    return {k: np.ascontiguousarray(v, dtype=np.float64) for k, v in model.validate(raw).items()}


def labelled_set(spec: SetSpec, seq: np.random.SeedSequence, registry: "Registry", pricer_seed: int,
                 cache_dir: str | Path | None = None) -> LabelledSet:
    """The labelled set of ``spec``: from the cache when it holds the key, else sampled, labelled and cached."""
    key = spec.key()
    path = Path(cache_dir) / f"{key}.npz" if cache_dir is not None else None
    note = ""
    if path is not None and path.is_file():
        try:
            found = _read(path, key)
            found.cached = True
            return found
        except Exception as exc:  # noqa: BLE001 - an unreadable entry is relabelled and replaced
            note = f"cache entry {path.name} unreadable ({type(exc).__name__}), relabelled"
    params = sample_set(spec, seq, registry)
    out = label(spec, params, registry, pricer_seed)
    out.key, out.note = key, note
    if path is not None:
        _write(path, key, spec, out)
    return out


def _write(path: Path, key: str, spec: SetSpec, data: LabelledSet) -> None:
    meta = {"key": key, "format": FORMAT, "label_s": data.label_s, "derivatives": data.derivatives,
            "derivative_s": data.derivative_s,
            "spec": json.loads(json.dumps(spec.__dict__, default=lambda v: dict(v) if isinstance(v, Mapping)
                                          else str(v)))}
    arrays = {f"param:{k}": v for k, v in data.params.items()}
    arrays |= {f"grad:{k}": v for k, v in data.gradients.items()}
    arrays["labels"] = data.labels
    arrays["meta"] = np.array(json.dumps(meta, default=str))
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic.atomic_path(path, suffix=".npz") as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)


def _read(path: Path, key: str) -> LabelledSet:
    with np.load(path, allow_pickle=False) as npz:
        meta = json.loads(str(npz["meta"]))
        if meta.get("key") != key or meta.get("format") != FORMAT:
            raise ValueError("key or format mismatch")
        params = {name.split(":", 1)[1]: npz[name] for name in npz.files if name.startswith("param:")}
        grads = {name.split(":", 1)[1]: npz[name] for name in npz.files if name.startswith("grad:")}
        labels = npz["labels"]
    if any(v.shape != labels.shape for v in (*params.values(), *grads.values())):
        raise ValueError("arrays of different lengths")
    return LabelledSet(params, labels, float(meta["label_s"]), grads, meta.get("derivatives", ""),
                       float(meta.get("derivative_s", 0.0)), key=key)
