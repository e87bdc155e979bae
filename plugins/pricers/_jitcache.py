"""Keep numba's on-disk cache honest about inlined code from other files.

numba (``cache=True``) decides whether a cached kernel is stale from the
time stamp and size of the kernel's *own* source file. The Monte Carlo
kernels inline functions from ``_rng.py`` and ``_sde.py``; an edit there
alone would leave old machine code in the cache, silently. Each kernel
module therefore calls :func:`refresh` at the end of its import: it hashes
the module's source and the sources it inlines, and when the hash differs
from the one stored beside the cache, removes that module's cache files
(``<module>.*.nbi`` / ``.nbc``) before anything is loaded (numba loads them
lazily, at the first call).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from bench import atomic


def refresh(namespace: dict, dependencies: list[str]) -> None:
    """Drop the cached kernels of the module owning ``namespace`` if it or a dependency changed."""
    source = Path(namespace["__file__"])
    module = source.stem
    digest = hashlib.sha256()
    for path in [source, *(source.with_name(d) for d in dependencies)]:
        digest.update(path.read_bytes())
    stamp = digest.hexdigest()
    cache_dirs = {Path(obj._cache._cache_path) for obj in namespace.values()
                  if getattr(getattr(obj, "_cache", None), "_cache_path", None)}
    for folder in cache_dirs:
        marker = folder / f"{module}.sources-sha256"
        try:
            if marker.is_file() and marker.read_text() == stamp:
                continue
            for pattern in (f"{module}.*.nbi", f"{module}.*.nbc"):
                for stale in folder.glob(pattern):
                    stale.unlink(missing_ok=True)
            atomic.write_text(marker, stamp)  # two processes importing at once never leave half a stamp
        except OSError:  # a read-only cache folder: numba falls back or recompiles; nothing to clean
            pass
