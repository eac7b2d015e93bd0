"""Option values as people type them: a duration (``--time 10m``) and a list of image sizes
(``--progressive 64,96,128``), read into numbers with one-line errors naming the option."""

from __future__ import annotations

import re
from typing import Optional, Sequence, Union

from flowerfast.core.errors import FlowerfastError

DURATION_UNITS = {"s": 1, "m": 60, "h": 3600}


def parse_duration(value: Union[float, int, str, None]) -> Optional[float]:
    """Seconds from ``90s``, ``10m``, ``1.5h`` or ``1h30m`` (a bare number is minutes), or ``None``."""
    if value is None or isinstance(value, (int, float)):
        seconds = None if value is None else float(value)
    else:
        text = str(value).strip().lower().replace(" ", "")
        parts = re.fullmatch(r"((\d+(\.\d*)?|\.\d+)[smh]?)+", text) and re.findall(
            r"(\d+(?:\.\d*)?|\.\d+)([smh]?)", text
        )
        if not parts or (len(parts) > 1 and not all(unit for _, unit in parts)):
            raise FlowerfastError(
                f"$time_budget must be a duration such as 90s, 10m or 1.5h (got {value!r})", parameters=("time_budget",)
            )
        seconds = sum(float(n) * DURATION_UNITS[unit or "m"] for n, unit in parts)
    if seconds is not None and not seconds > 0:
        raise FlowerfastError(f"$time_budget must be a positive duration (got {value!r})", parameters=("time_budget",))
    return seconds


def parse_sizes(value: Union[str, Sequence[int], None]) -> Optional[list[int]]:
    """``"64,96,128"`` (or a list) as ascending image sizes of at least 32, or ``None``."""
    if value is None or value == "" or value == []:
        return None
    try:
        sizes = [int(v) for v in (value.split(",") if isinstance(value, str) else value)]
    except (TypeError, ValueError):
        raise FlowerfastError(
            f"$progressive must be sizes such as 64,96,128 (got {value!r})", parameters=("progressive",)
        ) from None
    if len(sizes) < 2 or sizes != sorted(set(sizes)) or sizes[0] < 32:
        raise FlowerfastError(
            f"$progressive must be two or more increasing sizes of at least 32 pixels, such as 64,96,128 (got {value!r})",
            parameters=("progressive",),
        )
    return sizes
