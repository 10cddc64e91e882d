"""A probe's metrics -> the component's own `metrics`: checked names, numbers only.

Each entry that passes appears in the component's snapshot entry, in
Prometheus (control_center_component_metric) and on the dashboard card. An
entry that does not pass is left out, and the reason is written to the
component's log once (per name and reason), not on every tick.
"""

from __future__ import annotations

import logging
import math
import re
import weakref
from collections.abc import Callable, Mapping
from typing import Any

log = logging.getLogger("control_center")

NAME = re.compile(r"[a-z_][a-z0-9_]*")
MAX_NAME = 64
#: Metrics kept per component and probe; more are refused (a plugin bug, usually).
MAX_METRICS = 64


class _Seen:
    """Per component: names that passed before (skip the pattern), refusals already told."""

    __slots__ = ("good", "told")

    def __init__(self) -> None:
        self.good: set[str] = set()
        self.told: set[str] = set()


# Weakly held: a removed component's record goes with it.
_seen: weakref.WeakKeyDictionary[Any, _Seen] = weakref.WeakKeyDictionary()


def _refusal(name: object, value: object) -> str | None:
    if not isinstance(name, str):
        return f"metric {name!r} refused: a name must be a string"
    if len(name) > MAX_NAME or not NAME.fullmatch(name):
        return (f"metric {name!r} refused: a name must match [a-z_][a-z0-9_]* "
                f"(at most {MAX_NAME} characters)")
    if isinstance(value, bool) or not isinstance(value, int | float):
        return f"metric {name!r} refused: expected a number, got {type(value).__name__}"
    if not math.isfinite(value):
        return f"metric {name!r} refused: expected a finite number, got {value}"
    return None


def accept(owner: Any, metrics: Mapping[Any, Any], note: Callable[[str], object],
           component_id: str = "") -> dict[str, float]:
    """The entries of `metrics` that pass; each refusal is told through `note` once.

    `owner` is the component record the refusals are remembered for; `note`
    writes a line to its log. Raises TypeError/ValueError when `metrics` is
    not a mapping at all (the caller reports that as a probe error).
    """
    items = list(dict(metrics).items())
    seen = _seen.get(owner)
    if seen is None:
        seen = _seen[owner] = _Seen()
    kept: dict[str, float] = {}
    for name, value in items:
        if name in seen.good and type(value) in (int, float) and math.isfinite(value):
            why = None
        else:
            why = _refusal(name, value)
        if why is None and len(kept) >= MAX_METRICS:
            why = f"metric {name!r} refused: more than {MAX_METRICS} metrics in one probe"
        if why is None:
            kept[name] = value
            seen.good.add(name)
        elif why not in seen.told:
            seen.told.add(why)
            note(why)
            log.warning("%s: %s", component_id or "component", why)
    return kept
