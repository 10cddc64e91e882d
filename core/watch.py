"""`watch`: restart a running component when files matching its globs change.

One task per watching component, in the supervisor's nursery, built on
watchfiles' `awatch` (inotify through its Rust watcher, in a worker
thread). awatch runs on trio through anyio, with one catch, measured: it
sets its stop event only on asyncio's CancelledError, so under trio a
cancelled awatch waits for its watcher thread's 5 s timeout. Each task
therefore owns the stop event and sets it the moment it is cancelled
(`_stop_on_cancel`): removal and shutdown take about a millisecond.

Changes are debounced here: the first change of a burst opens it, and it
closes once QUIET seconds pass without another (at most MAX_BURST after it
opened); then the component is restarted once, with a log line and a
`restart` event that names the files. Changes inside the component's own
data directory, its log files and the supervisor's own records are never
counted, so a component cannot restart itself by writing.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import trio

if TYPE_CHECKING:
    import anyio
    import watchfiles

    from core.config import ComponentConfig, ServerConfig

log = logging.getLogger("control_center")

#: A burst of changes ends after this long without one (seconds).
QUIET = 0.5
#: A burst that never goes quiet still restarts after this long.
MAX_BURST = 5.0
#: Files a restart reason names before "and N more".
NAMED = 5
_GLOB = re.compile(r"[*?\[]")


@dataclass(frozen=True)
class Spec:
    """What one component watches: absolute globs, and what never counts."""

    patterns: tuple[str, ...]
    base: Path
    ignore_dirs: tuple[Path, ...]
    ignore_files: tuple[Path, ...]

    def roots(self) -> list[Path]:
        """The directories to watch: each glob's literal head, or its nearest existing
        ancestor so that a directory made later is seen, but never above `base`
        (a glob outside `base` whose directory does not exist is left out: its
        nearest ancestor could be /). None lies inside another."""
        found: set[Path] = set()
        for pattern in self.patterns:
            head = Path(pattern)
            inside = head.is_relative_to(self.base)
            while _GLOB.search(head.name) or not head.is_dir():
                if head == self.base or head.parent == head or (
                        not inside and not _GLOB.search(head.name)):
                    break
                head = head.parent
            if head.is_dir():
                found.add(head)
            else:
                log.warning("watch: %s does not exist; %s is not watched", head, pattern)
        return [r for r in sorted(found) if not any(o != r and r.is_relative_to(o)
                                                    for o in found)]

    def matches(self) -> Callable[[str], bool]:
        regexes = [re.compile(_translate(p)) for p in self.patterns]

        def match(path: str) -> bool:
            p = Path(path)
            if any(p.is_relative_to(d) for d in self.ignore_dirs):
                return False
            if any(p == f or (p.parent == f.parent and p.name.startswith(f.name + "."))
                   for f in self.ignore_files):
                return False  # the log file and its rotated backups
            return any(r.fullmatch(path) for r in regexes)

        return match


def spec_for(cfg: ComponentConfig, server: ServerConfig, config_dir: Path) -> Spec | None:
    """The watch of one component, or None when it has no `watch` globs."""
    if not cfg.watch:
        return None
    cwd = cfg.options.get("cwd")
    base = (config_dir / cwd).resolve() if isinstance(cwd, str) else config_dir
    patterns = tuple(str(_absolute(base, p)) for p in cfg.watch)
    return Spec(patterns=patterns, base=base,
                ignore_dirs=(_absolute(server.data_dir, cfg.id),
                             _absolute(server.data_dir, ".control-center")),
                ignore_files=(_absolute(server.log_dir, f"{cfg.id}.log"),))


def _absolute(base: Path, path: str) -> Path:
    joined = base / path
    # Normalise ".." without resolving symlinks in the glob part.
    return Path(*_normal(joined.parts))


def _normal(parts: Sequence[str]) -> list[str]:
    out: list[str] = []
    for part in parts:
        if part == ".." and len(out) > 1:
            out.pop()
        elif part != ".":
            out.append(part)
    return out


def _translate(pattern: str) -> str:
    """A glob over a whole path as a regex: `**` spans directories, `*` and `?` do not."""
    out = []
    parts = pattern.split("/")
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if part == "**":
            out.append(".*" if last else "(?:[^/]*/)*")
            continue
        j = 0
        while j < len(part):
            c = part[j]
            if c == "*":
                out.append("[^/]*")
            elif c == "?":
                out.append("[^/]")
            elif c == "[" and part.find("]", j + 2) != -1:
                end = part.find("]", j + 2)
                body = part[j + 1:end].replace("\\", "\\\\")
                if body.startswith("!"):
                    body = "^" + body[1:]
                out.append(f"[{body}]")
                j = end
            else:
                out.append(re.escape(c))
            j += 1
        if not last:
            out.append("/")
    return "".join(out)


def describe(paths: Iterable[str], base: Path) -> str:
    """"files changed: a.py, src/b.py and 3 more", relative to `base` when inside it."""
    shown = []
    for path in sorted(paths):
        p = Path(path)
        shown.append(str(p.relative_to(base)) if p.is_relative_to(base) else path)
    text = ", ".join(shown[:NAMED])
    if len(shown) > NAMED:
        text += f" and {len(shown) - NAMED} more"
    return f"files changed: {text}"


async def _stop_on_cancel(stop: anyio.Event) -> None:
    try:
        await trio.sleep_forever()
    finally:
        stop.set()


async def watch(cid: str, spec: Spec, on_burst: Callable[[str, set[str]], Awaitable[None]],
                *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """Call `on_burst(cid, paths)` once per burst of matching changes, until cancelled."""
    # Imported by the first watch: a supervisor without one never loads them.
    import anyio
    import watchfiles

    match = spec.matches()
    default = watchfiles.DefaultFilter()
    pending: set[str] = set()
    arrived = trio.Event()
    stop = anyio.Event()

    def keep(change: watchfiles.Change, path: str) -> bool:
        return default(change, path) and match(path)

    ready = trio.Event()

    async def feed() -> None:
        roots = spec.roots()
        if not roots:
            ready.set()
            return
        # awatch's first step makes the inotify watches, then waits in its
        # thread: once this task yields after set(), they exist.
        ready.set()
        async for changes in watchfiles.awatch(*roots, watch_filter=keep, stop_event=stop,
                                               debounce=int(MAX_BURST * 1000), step=50):
            pending.update(path for _, path in changes)
            arrived.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(_stop_on_cancel, stop)
        nursery.start_soon(feed)
        await ready.wait()
        task_status.started()
        while True:
            await arrived.wait()
            opened = trio.current_time()
            while True:
                arrived = trio.Event()
                left = opened + MAX_BURST - trio.current_time()
                with trio.move_on_after(min(QUIET, max(left, 0))) as quiet:
                    await arrived.wait()
                if quiet.cancelled_caught:
                    break
            paths = set(pending)
            pending.clear()
            if paths:
                await on_burst(cid, paths)


class Watchers:
    """The watch tasks of a supervisor's components, kept in line with its config.

    `restart(cid, reason)` is the supervisor's: it restarts a running
    component and says why.
    """

    def __init__(self, restart: Callable[[str, str], Awaitable[None]]) -> None:
        self._restart = restart
        self._tasks: dict[str, tuple[Spec, trio.CancelScope]] = {}

    async def sync(self, nursery: trio.Nursery, components: Iterable[ComponentConfig],
                   server: ServerConfig, config_dir: Path) -> None:
        """Start, replace or stop watch tasks so that each component's matches its config."""
        wanted = {cfg.id: spec_for(cfg, server, config_dir) for cfg in components}
        for cid in list(self._tasks):
            if wanted.get(cid) != self._tasks[cid][0]:
                self._tasks.pop(cid)[1].cancel()
        for cid, spec in wanted.items():
            if spec is not None and cid not in self._tasks:
                scope = await nursery.start(self._run, cid, spec)
                self._tasks[cid] = (spec, scope)

    def stop_all(self) -> None:
        for _, scope in self._tasks.values():
            scope.cancel()
        self._tasks.clear()

    async def _run(self, cid: str, spec: Spec, *,
                   task_status: trio.TaskStatus[trio.CancelScope] = trio.TASK_STATUS_IGNORED
                   ) -> None:
        with trio.CancelScope() as scope:
            status = _Started(task_status, scope)
            try:
                await watch(cid, spec, self._burst, task_status=status)
            except Exception as exc:  # an ExceptionGroup from its nursery, too
                # No inotify watch left, a directory that vanished: this
                # component's watch stops, nothing else does.
                log.error("%s: watch stopped: %s", cid, _reason(exc))
                if not status.done:
                    task_status.started(scope)

    async def _burst(self, cid: str, paths: set[str]) -> None:
        spec = self._tasks.get(cid)
        if spec is None:
            return
        await self._restart(cid, describe(paths, spec[0].base))


class _Started:
    """task_status for `watch` that reports the task's cancel scope instead."""

    def __init__(self, status: trio.TaskStatus[trio.CancelScope], scope: trio.CancelScope
                 ) -> None:
        self._status, self._scope = status, scope

        self.done = False

    def started(self, value: object = None) -> None:
        self.done = True
        self._status.started(self._scope)


def _reason(exc: BaseException) -> str:
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
