"""A child's stdout and stderr, read line by line into its LogTail.

The supervisor holds its own copies of the two pipe ends (trio FdStreams) and
reads them until end of file. A pipe that something unknown keeps open after
every process we know of is dead is given a grace and then closed on our side,
with a note in the log, so that a stop never waits on a stranger.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import trio

from core.logs import MAX_LINE, LogTail

if TYPE_CHECKING:
    from core.spawn import Child

__all__ = ["Output", "split_lines"]


def split_lines(pending: bytes, data: bytes) -> tuple[list[bytes], bytes]:
    """Complete lines in pending+data, and what is left; overlong runs become several lines."""
    lines = (pending + data).split(b"\n")
    rest = lines.pop()
    out = []
    for line in [*lines, rest]:
        while len(line) > MAX_LINE:
            cut = MAX_LINE
            # Do not cut a UTF-8 sequence in two: back off over continuation bytes.
            while cut > MAX_LINE - 4 and (line[cut] & 0xC0) == 0x80:
                cut -= 1
            out.append(line[:cut])
            line = line[cut:]
        out.append(line)
    rest = out.pop()
    return out, rest


class Output:
    """The two output pipes of one child and the task that drains them."""

    def __init__(self, log: LogTail) -> None:
        self.log = log
        #: Set once both pipes are read to the end (or closed on our side).
        self.done = trio.Event()
        self._scope = trio.CancelScope()
        self._streams: list[trio.lowlevel.FdStream] = []

    def take(self, popen: Child) -> None:
        """Take over popen's stdout and stderr; OSError (no descriptor left) closes both."""
        try:
            for pipe in (popen.stdout, popen.stderr):
                assert pipe is not None
                # Our own copy of the fd: FdStream owns and closes it.
                self._streams.append(trio.lowlevel.FdStream(os.dup(pipe.fileno())))
                pipe.close()
        except OSError:
            self.close_now()
            raise
        popen.stdout = popen.stderr = None

    def close_now(self) -> None:
        """Close our ends at once (the child is being abandoned)."""
        for stream in self._streams:
            stream.close()

    async def run(self) -> None:
        """Read both pipes until end of file; sets `done`."""
        try:
            with self._scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._drain, self._streams[0], "stdout")
                    nursery.start_soon(self._drain, self._streams[1], "stderr")
        finally:
            self.close_now()
            self.done.set()

    async def close(self, grace: float) -> None:
        """Let the readers finish for `grace` seconds, then stop reading what is held open."""
        with trio.move_on_after(grace):
            await self.done.wait()
        if not self.done.is_set():
            self.log.note("output pipe still held open by an unknown process: stopped reading")
            self._scope.cancel()
            with trio.move_on_after(1.0):
                await self.done.wait()

    async def _drain(self, stream: trio.lowlevel.FdStream, name: str) -> None:
        pending = b""
        try:
            while True:
                data = await stream.receive_some(65536)
                if not data:
                    break
                lines, pending = split_lines(pending, data)
                self.log.extend(name, [x.decode("utf-8", errors="replace") for x in lines])
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            pass
        finally:
            if pending:
                self.log.append(name, pending.decode("utf-8", errors="replace"))
