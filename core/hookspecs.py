"""The hooks a Control Center plugin may implement.

A plugin is a module or object with functions marked `@hookimpl` (from
`core`). The core calls a hook only on the plugin named by a component's
`plugin` key, never on the others, so a hook returns that plugin's answer
directly; there is no first-result race between plugins.

Every hook here is a plain (synchronous) function. The core calls it from a
worker thread with a timeout, so a hook may block on I/O (an HTTP health
check, a socket); a hook that hangs past its timeout is abandoned and only
its own component shows the error. A hook must not touch the event loop.

Hooks, in the order of a component's life:

1. ``validate_config`` at config load (and reload), before anything starts.
2. ``start`` each time the component is to be (re)started.
3. ``probe`` once per snapshot interval while the component runs, and more
   often while it starts (until it first reports healthy).
4. ``stop`` when the component is asked to stop, before the core's signals.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pluggy

from core.model import ComponentInfo, Launch, Probe

PROJECT = "control_center"

hookspec = pluggy.HookspecMarker(PROJECT)


# -- configuration ------------------------------------------------------------

@hookspec
def validate_config(component_id: str, options: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """Check this plugin's keys of one ``[components.<id>]`` table.

    Called when config.toml is loaded (in the main thread, before anything
    starts; also by ``python -m core check``) and on every reload (in a
    worker thread; the whole reload must finish within 5 s, or it is
    refused and nothing changes). Should not block: check the values, do
    not connect to anything.

    :param component_id: the table name, e.g. ``"storage"``.
    :param options: every key of the table that is not a common key
        (``plugin``, ``name``, ``autostart``, ``restart``, ...).
    :return: the normalised options (defaults filled in), which the other
        hooks then see as ``ComponentInfo.options``; None keeps ``options``
        as given. Raise ``core.OptionError(key, message)`` for a mistake;
        ``core.OptionReader`` does the usual checks, unknown keys included.
    """


# -- lifecycle ----------------------------------------------------------------

@hookspec
def start(component: ComponentInfo) -> Launch:
    """Say which process runs this component.

    Called from a worker thread each time the component is (re)started, with
    a timeout of the component's ``start_timeout``. May block briefly (create
    directories, render a file). The core spawns the returned ``Launch`` in
    its own session with the death signal set and drains its output; plugins
    never spawn long-lived processes themselves.

    :return: a ``Launch``. None is an error shown in the component's
        ``error`` field.
    """


@hookspec
def stop(component: ComponentInfo, pid: int) -> None:
    """Ask the component to shut down cleanly, before the core's signals.

    Called from a worker thread whenever a running component is to stop: a
    stop or restart request, a reload that removes or changes it, the
    supervisor's shutdown. ``pid`` is the process that ``start``'s Launch
    became (the leader of its process group). Not called when the process
    has exited by itself.

    The contract, with ``T`` the component's ``stop_timeout`` (default 10 s):

    1. The hook runs for at most ``T / 2``; past that it is abandoned (its
       thread finishes in the background) and the stop goes on.
    2. As soon as the hook returns (or is abandoned or raises), the core
       sends ``stop_signal`` (default SIGTERM) to the process group, even
       if the process is still busy exiting. If the process has already
       exited, only what it left in its group gets the signal. So a hook
       that wants the process to finish on its own terms (flush, checkpoint)
       waits until it has exited before returning, within ``T / 2``: poll
       the service (its listener closes), or ``os.kill(pid, 0)`` until it
       raises ProcessLookupError (the core reaps its child at once).
    3. Whatever is still alive ``T`` after the stop began is killed with
       SIGKILL, the whole group.

    A plugin with nothing better than a signal need not implement it. The
    return value is ignored; an exception is written to the component's
    log ("stop hook failed: ...") and the signals follow as usual.
    """


# -- observation --------------------------------------------------------------

@hookspec
def probe(component: ComponentInfo, pid: int) -> Probe | None:
    """Check health and collect this component's metrics.

    Called from a worker thread once per snapshot interval while the
    component runs (and every few tenths of a second while it starts), with a
    timeout of the component's ``probe_timeout``. May block on I/O up to that
    timeout; a probe that times out or raises marks the component unhealthy
    with the reason in ``error``.

    The probe pass starts ahead of each snapshot, by half the interval or
    the longest ``probe_timeout`` if shorter, so that the snapshot leaves on
    time; a result that comes later shows in the next snapshot.

    Not called for a run whose ``Launch`` has ``health`` (an HTTP or TCP
    check the core runs itself on its event loop) or ``probe=False``.

    :return: a ``Probe``; None means "no opinion": healthy while the process
        is alive, no metrics. ``Probe.metrics`` become the component's own
        ``metrics`` in the snapshot (see ``core.Probe``). A change of health
        is written to the component's log with ``Probe.error`` as the
        reason; being unhealthy never restarts a component.
    """


# -- events -------------------------------------------------------------------

@hookspec
def on_event(event: dict[str, Any]) -> None:
    """Hear of every event: a state change, a restart scheduled, a give-up, a
    health change, a probe error, a config reload, a control action.

    Called for every plugin that implements it, each in its own worker
    thread, one event at a time and in order, never on the event loop. Each
    plugin has a bounded queue (1,000 events): a plugin that is slower than
    the events loses the newest ones, counted and logged, and supervision
    never waits for it. Blocking is allowed; an exception is logged and the
    next event comes as usual.

    :param event: ``{"type": "event", "id", "kind", "time" (ISO-8601 UTC),
        "component" (or None), ...}`` plus the kind's own fields: ``old``,
        ``new`` and ``reason`` for "state"; ``delay`` for
        "restart_scheduled"; ``reason`` for "crashed", "gave_up",
        "unhealthy" and "restart" (files it watches changed); ``error``
        for "probe_error"; ``added``, ``removed`` and ``changed`` for
        "reload"; ``action``, ``actor``, ``address`` and
        ``result`` for "control". The same document ``GET /api/events``
        lists and ``/ws`` sends to clients that subscribe with
        ``"events": true``.
    :return: ignored.
    """
