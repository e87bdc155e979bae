"""NumPy/torch interchange: one formula can run on NumPy arrays on the CPU
and on torch tensors on the CPU or a CUDA device.

torch is imported lazily: scripts that never touch it do not pay for it.
"""

from __future__ import annotations

import functools
import math
import sys
from types import SimpleNamespace
from typing import Any, Mapping

import numpy as np
from scipy import special

_SQRT_2PI = math.sqrt(2.0 * math.pi)
_INV_SQRT2 = 1.0 / math.sqrt(2.0)


def _torch():
    import torch

    return torch


def is_torch(x: Any) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(x, torch.Tensor)


@functools.lru_cache(maxsize=1)
def cuda_available() -> bool:
    try:
        return bool(_torch().cuda.is_available())
    except Exception:  # noqa: BLE001 - no usable torch means no CUDA
        return False


def gpu_name() -> str | None:
    if not cuda_available():
        return None
    return _torch().cuda.get_device_name(0)


def to_device(values: Mapping[str, Any], device: str, backend: str | None = None) -> dict[str, Any]:
    """Copy a dict of arrays to ``device``.

    ``backend`` is ``"numpy"`` or ``"torch"``; by default NumPy on the CPU
    and torch on CUDA. Floats become float64, booleans stay booleans; torch
    tensors given to the torch back end are moved, not copied through NumPy,
    so gradients flow through.
    """
    backend = backend or ("torch" if device != "cpu" else "numpy")
    out = {}
    for key, value in values.items():
        if backend == "torch" and is_torch(value):
            # a tensor stays a tensor (and in autograd's graph): only its device and dtype may change
            out[key] = value.to(device=device, dtype=value.dtype if value.dtype == _torch().bool
                                else _torch().float64)
            continue
        arr = np.ascontiguousarray(value)
        if arr.dtype != np.bool_:
            arr = arr.astype(np.float64, copy=False)
        if backend != "numpy" and not arr.flags.writeable:
            arr = arr.copy()  # torch refuses read-only (broadcast) NumPy memory
        if backend == "numpy":
            if device != "cpu":
                raise ValueError(f"NumPy arrays cannot live on {device!r}")
            out[key] = arr
        else:
            out[key] = _torch().as_tensor(arr, device=device)
    if backend == "torch" and device != "cpu":
        synchronize(device)
    return out


def to_numpy(x: Any) -> np.ndarray:
    if is_torch(x):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def synchronize(device: str) -> None:
    """Wait for queued device work (a no-op on the CPU)."""
    if device.startswith("cuda"):
        _torch().cuda.synchronize()


def erfc(x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """erfc of a float64 NumPy array through torch's vectorised (SIMD) CPU kernel.

    Zero-copy on NumPy memory and about 10x faster than ``scipy.special.erfc``
    at 20,000 points, with the same accuracy (relative error below 1e-15 up
    to x = 26, where both underflow). The iterative implied-volatility
    solvers spend most of their time here.
    """
    torch = _torch()
    x = np.ascontiguousarray(x, dtype=np.float64)
    if out is None:
        out = np.empty_like(x)
    if not x.flags.writeable:
        x = x.copy()
    torch.special.erfc(torch.from_numpy(x), out=torch.from_numpy(out))
    return out


def namespace(x: Any) -> SimpleNamespace:
    """The array functions for ``x``'s library, under NumPy's names."""
    return _torch_ns() if is_torch(x) else _NUMPY_NS


def _npdf_np(x):
    return np.exp(-0.5 * x * x) / _SQRT_2PI


_NUMPY_NS = SimpleNamespace(
    name="numpy",
    lib=np,
    ndtr=special.ndtr,
    npdf=_npdf_np,
    where=np.where,
    positive_part=lambda x: np.maximum(x, 0.0),
    nonzero=np.flatnonzero,
    any=lambda x: bool(np.any(x)),
    zeros_like=np.zeros_like,
    full_like=np.full_like,
    empty_bool=lambda like: np.zeros(like.shape, dtype=bool),
    empty_int=lambda like: np.zeros(like.shape, dtype=np.int32),
)


@functools.lru_cache(maxsize=1)
def _torch_ns() -> SimpleNamespace:
    torch = _torch()
    return SimpleNamespace(
        name="torch",
        lib=torch,
        # torch.special.ndtr loses the lower tail (0 instead of 7.6e-24 at -10);
        # erfc keeps full relative accuracy there
        ndtr=lambda x: 0.5 * torch.special.erfc(x * -_INV_SQRT2),
        npdf=lambda x: torch.exp(-0.5 * x * x) / _SQRT_2PI,
        where=torch.where,
        positive_part=lambda x: torch.clamp(x, min=0.0),
        nonzero=lambda m: torch.nonzero(m, as_tuple=True)[0],
        any=lambda x: bool(torch.any(x)),
        zeros_like=torch.zeros_like,
        full_like=torch.full_like,
        empty_bool=lambda like: torch.zeros(like.shape, dtype=torch.bool, device=like.device),
        empty_int=lambda like: torch.zeros(like.shape, dtype=torch.int32, device=like.device),
    )
