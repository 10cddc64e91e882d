"""Small files read every tick, kept open and read with one pread each.

Opening, reading and closing a /proc or cgroup file is three system calls and
a path lookup; a kept descriptor read at offset 0 is one call, and the kernel
renders the file afresh each time. A file not read during a pass is closed by
the next sweep(); one that fails to read (its cgroup or process is gone) is
closed at once and the path opened again, so a descriptor never reads a
removed file twice. (Only for kernel files: a regular file replaced on disk
would go on being read through its old descriptor.) All KeptFiles together
keep at most KEEP_OPEN descriptors: past it, files are opened for each read.
"""

from __future__ import annotations

import os
import resource

__all__ = ["KEEP_OPEN", "KeptFiles", "read_once"]

#: Descriptors kept open by all KeptFiles together: a quarter of the limit at
#: most, as each child already holds three (two pipes and a pidfd).
KEEP_OPEN = min(1024, resource.getrlimit(resource.RLIMIT_NOFILE)[0] // 4)

# Descriptors kept open now, across every KeptFiles. Like the readers, only
# one thread at a time uses them (the tick's pass over the process table).
_kept = [0]


def read_once(path: str) -> bytes:
    """Open, read (up to 64 KiB) and close."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return os.read(fd, 65536)
    finally:
        os.close(fd)


class KeptFiles:
    """Descriptors of files read repeatedly, by path (see the module's docstring)."""

    def __init__(self, limit: int = KEEP_OPEN) -> None:
        #: This one's own bound, within the shared KEEP_OPEN.
        self.limit = limit
        self._fds: dict[str, int] = {}
        self._used: set[str] = set()

    def __len__(self) -> int:
        return len(self._fds)

    def read(self, path: str) -> bytes:
        """The file's current content; OSError as open() or read() would raise it.

        A kept descriptor that fails (what it named was removed, and perhaps
        made again under the same path) is closed and the path opened afresh.
        """
        fd = self._fds.get(path)
        if fd is not None:
            try:
                data = os.pread(fd, 65536, 0)
            except OSError:
                self._drop(path)
            else:
                self._used.add(path)
                return data
        if len(self._fds) >= self.limit or _kept[0] >= KEEP_OPEN:
            return read_once(path)
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            data = os.pread(fd, 65536, 0)
        except OSError:
            os.close(fd)
            raise
        self._fds[path] = fd
        _kept[0] += 1
        self._used.add(path)
        return data

    def keep(self, path: str) -> None:
        """Count `path` as read for the next sweep (its figures were reused)."""
        if path in self._fds:
            self._used.add(path)

    def sweep(self) -> None:
        """Close what was not read since the last sweep."""
        for path in [p for p in self._fds if p not in self._used]:
            self._drop(path)
        self._used.clear()

    def close(self) -> None:
        for path in list(self._fds):
            self._drop(path)
        self._used.clear()

    def _drop(self, path: str) -> None:
        fd = self._fds.pop(path, None)
        self._used.discard(path)
        if fd is not None:
            _kept[0] -= 1
            os.close(fd)
