"""Small helpers shared by the report modules: numbers and a cell's settings as stored in a row."""

from __future__ import annotations

import json
import math
from typing import Any


def _num(value: Any) -> float:
    """``value`` as a float; NaN when it is missing or not a number."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        return math.nan
    return v


def _settings_dict(raw: Any) -> dict | None:
    """A cell's settings from their JSON text (or a mapping); None if they do not parse."""
    try:
        return json.loads(raw) if isinstance(raw, str) else dict(raw or {})
    except (TypeError, ValueError):
        return None


def _settings_text(raw: Any) -> str:
    settings = _settings_dict(raw)
    if settings is None:
        return str(raw)
    return ", ".join(f"{k}={v}" for k, v in settings.items())
