"""The restart decision: what to do once a component's process is gone.

A pure function of the facts (the policy, how the process ended, whether it
ran long enough to count as stable, the failures so far), kept apart from
the task that carries the decision out, so that every case is one row of a
table in tests/core/test_policy.py.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Action(enum.Enum):
    """What the component's task does next."""

    #: Exited with status 0 under a policy that does not restart it: STOPPED.
    STOP = "stop"
    #: Failed under a policy that does not restart it: ERROR.
    FAIL = "fail"
    #: Too many quick failures in a row: ERROR, until started again.
    GIVE_UP = "give_up"
    #: Start it again after `Decision.delay` seconds.
    RESTART = "restart"


@dataclass(frozen=True)
class Backoff:
    """The restart timing keys of a component's config."""

    initial: float
    factor: float
    maximum: float
    max_failures: int


@dataclass(frozen=True)
class Decision:
    action: Action
    #: Quick failures in a row, counting this exit.
    failures: int
    #: Seconds to wait before the restart (RESTART only; 0 otherwise).
    delay: float = 0.0


#: The exit statuses that are expected when `exit_codes` is not set.
EXPECTED = frozenset({0})


def after_exit(policy: str, code: int | None, *, quick: bool, failures: int,
               backoff: Backoff, expected: frozenset[int] = EXPECTED) -> Decision:
    """The decision after an exit.

    `policy` is the `restart` key (always | on-failure | never); `code` the
    exit status (negative: killed by that signal; None: the start failed and
    no process ran); `quick` whether it ended before `stable_after`;
    `failures` the quick failures in a row before this exit; `expected` the
    `exit_codes` key: such an exit is no failure.
    """
    ok = code is not None and code in expected
    if policy == "never" or (policy == "on-failure" and ok):
        return Decision(Action.STOP if ok else Action.FAIL, failures)
    if ok:
        # Expected, under "always": counts toward nothing; a quick one waits
        # the first delay so that a program that exits at once is no busy loop.
        return Decision(Action.RESTART, failures if quick else 0,
                        backoff.initial if quick else 0.0)
    failures = failures + 1 if quick else 0
    if failures >= backoff.max_failures:
        return Decision(Action.GIVE_UP, failures)
    if failures == 0:
        # A crash after a stable run restarts at once.
        return Decision(Action.RESTART, 0, 0.0)
    delay = min(backoff.maximum, backoff.initial * backoff.factor ** (failures - 1))
    return Decision(Action.RESTART, failures, delay)
