"""Component states and the table of allowed transitions.

This module imports nothing of the project: it is the vocabulary every other
module shares. The wire carries exactly these five values; richer detail
(restarts, exit code, health, next restart) travels in other fields.
"""

from __future__ import annotations

from enum import StrEnum


class ComponentState(StrEnum):
    STOPPED = "stopped"
    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"
    ERROR = "error"


S = ComponentState

#: Every transition the supervisor may make. A request outside this table is a
#: bug in the supervisor, not an operator mistake, and raises.
TRANSITIONS: dict[ComponentState, frozenset[ComponentState]] = {
    S.STOPPED: frozenset({S.STARTING}),
    # STARTING covers spawning and the backoff wait before a respawn.
    S.STARTING: frozenset({S.RUNNING, S.STOPPING, S.STOPPED, S.ERROR}),
    # RUNNING -> STARTING: the child died and the policy restarts it.
    S.RUNNING: frozenset({S.STOPPING, S.STARTING, S.STOPPED, S.ERROR}),
    S.STOPPING: frozenset({S.STOPPED, S.ERROR}),
    S.ERROR: frozenset({S.STARTING, S.STOPPED}),
}


class InvalidTransition(RuntimeError):
    """The supervisor tried a transition that TRANSITIONS does not allow."""

    def __init__(self, component_id: str, old: ComponentState, new: ComponentState) -> None:
        super().__init__(f"{component_id}: {old.value} -> {new.value} is not allowed")
        self.component_id = component_id
        self.old = old
        self.new = new


def check_transition(component_id: str, old: ComponentState, new: ComponentState) -> None:
    """Raise InvalidTransition unless old -> new is in the table."""
    if new not in TRANSITIONS[old]:
        raise InvalidTransition(component_id, old, new)
