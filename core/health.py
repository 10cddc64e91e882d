"""Health changes as lines in the component's log, with the reason.

healthy -> unhealthy and back, and starting -> healthy, are written once
each time they happen ("health: healthy -> unhealthy: cannot connect ...").
While a component is still starting, a probe that is not healthy yet is
normal and not written; the start timeout running out is.
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger("control_center")


def note_change(comp: Any, was: str | None, *, start_timed_out: bool = False) -> None:
    """Write comp's health change since `was` to its log (nothing when unchanged)."""
    now = comp.health
    if now == was or now in (None, "starting"):
        return
    if was == "starting" and now == "unhealthy" and not start_timed_out:
        return  # not healthy yet while starting: the start timeout tells
    text = f"health: {was or 'unknown'} -> {now}"
    if now == "unhealthy" and comp.probe_error:
        text += f": {comp.probe_error}"
    comp.log.note(text)
    log.info("%s: %s", comp.cfg.id, text)
