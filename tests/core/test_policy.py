"""The restart decision, one row per case."""

from __future__ import annotations

import pytest

from core.policy import Action, Backoff, Decision, after_exit

B = Backoff(initial=0.5, factor=2.0, maximum=3.0, max_failures=4)

R, STOP, FAIL, GIVE_UP = Action.RESTART, Action.STOP, Action.FAIL, Action.GIVE_UP

# policy, exit code (None: did not start), quick, failures before -> decision
CASES = [
    # never: whatever happened, it stays down; status 0 is a stop, anything else an error
    ("never", 0, True, 0, Decision(STOP, 0)),
    ("never", 3, True, 2, Decision(FAIL, 2)),
    ("never", -9, False, 0, Decision(FAIL, 0)),
    ("never", None, True, 0, Decision(FAIL, 0)),
    # on-failure: a clean exit stays stopped; a failure restarts
    ("on-failure", 0, True, 3, Decision(STOP, 3)),
    ("on-failure", 0, False, 0, Decision(STOP, 0)),
    ("on-failure", 1, True, 0, Decision(R, 1, 0.5)),
    ("on-failure", -15, True, 1, Decision(R, 2, 1.0)),
    # always: even a clean exit restarts; an expected exit is no failure, a
    # quick one waits the first delay (no busy loop)
    ("always", 0, True, 0, Decision(R, 0, 0.5)),
    ("always", 0, True, 3, Decision(R, 3, 0.5)),
    ("always", 0, False, 5, Decision(R, 0, 0.0)),
    # backoff grows by the factor and stops at the maximum
    ("always", 1, True, 1, Decision(R, 2, 1.0)),
    ("always", 1, True, 2, Decision(R, 3, 2.0)),
    # a run past stable_after resets the count: restart at once
    ("always", 1, False, 3, Decision(R, 0, 0.0)),
    ("on-failure", -9, False, 3, Decision(R, 0, 0.0)),
    # a start that failed counts as quick, like any other
    ("always", None, True, 0, Decision(R, 1, 0.5)),
    # the max_failures-th quick failure in a row gives up
    ("always", 1, True, 3, Decision(GIVE_UP, 4)),
    ("on-failure", None, True, 3, Decision(GIVE_UP, 4)),
]


# exit_codes = [0, 2]: status 2 is expected like 0; 0 alone is no longer special
EXPECTED = frozenset({0, 2})
EXIT_CODE_CASES = [
    ("on-failure", 2, True, 1, Decision(STOP, 1)),
    ("on-failure", 3, True, 1, Decision(R, 2, 1.0)),
    ("never", 2, True, 0, Decision(STOP, 0)),
    ("always", 2, True, 3, Decision(R, 3, 0.5)),  # never toward the give-up
    ("always", 1, True, 3, Decision(GIVE_UP, 4)),
]


@pytest.mark.parametrize(("policy", "code", "quick", "failures", "expected"), EXIT_CODE_CASES)
def test_after_exit_with_exit_codes(policy: str, code: int, quick: bool, failures: int,
                                    expected: Decision) -> None:
    assert after_exit(policy, code, quick=quick, failures=failures, backoff=B,
                      expected=EXPECTED) == expected


@pytest.mark.parametrize(("policy", "code", "quick", "failures", "expected"), CASES)
def test_after_exit(policy: str, code: int | None, quick: bool, failures: int,
                    expected: Decision) -> None:
    assert after_exit(policy, code, quick=quick, failures=failures, backoff=B) == expected


def test_the_delay_is_capped_at_the_maximum() -> None:
    wide = Backoff(initial=0.5, factor=2.0, maximum=3.0, max_failures=100)
    delays = [after_exit("always", 1, quick=True, failures=n, backoff=wide).delay
              for n in range(7)]
    assert delays == [0.5, 1.0, 2.0, 3.0, 3.0, 3.0, 3.0]

