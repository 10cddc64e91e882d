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

# What has been reported already, per component record (weakly held: a removed
# component's set goes with it).
_reported: weakref.WeakKeyDictionary[Any, set[str]] = weakref.WeakKeyDictionary()


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


def accept(owner: Any, metrics: Mapping[Any, Any], note: Callable[[str], None],
           component_id: str = "") -> dict[str, float]:
    """The entries of `metrics` that pass; each refusal is told through `note` once.

    `owner` is the component record the refusals are remembered for; `note`
    writes a line to its log. Raises TypeError/ValueError when `metrics` is
    not a mapping at all (the caller reports that as a probe error).
    """
    items = list(dict(metrics).items())
    reported = _reported.setdefault(owner, set())
    kept: dict[str, float] = {}
    for name, value in items:
        why = _refusal(name, value)
        if why is None and len(kept) >= MAX_METRICS:
            why = f"metric {name!r} refused: more than {MAX_METRICS} metrics in one probe"
        if why is None:
            kept[name] = value
        elif why not in reported:
            reported.add(why)
            note(why)
            log.warning("%s: %s", component_id or "component", why)
    return kept
