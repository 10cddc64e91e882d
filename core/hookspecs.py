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

    Called in the main thread when config.toml is loaded or reloaded, before
    anything starts. Must not block.

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

    Called from a worker thread when the component is asked to stop; the
    whole stop (this hook, then the stop signal to the process group, then
    SIGKILL) is bounded by the component's ``stop_timeout``. A plugin with
    nothing better than a signal need not implement it. The return value is
    ignored.
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
        is alive, no metrics.
    """
