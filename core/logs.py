"""A component's output: a bounded in-memory tail plus a size-rotated log file.

The tail serves the dashboard and `logs -f`; the file is for the operator.
Disk trouble (full disk, unwritable directory) never reaches the caller: the
lines stay in memory, `file_error` says what went wrong, and the file is
retried now and then so that a freed disk recovers on its own.
"""

from __future__ import annotations

import collections
import contextlib
import os
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import trio

#: Longest line kept, in characters; longer text is cut (the pipe reader
#: splits longer byte runs into several lines before they get here).
MAX_LINE = 8192

#: At most one attempt to (re)open a failing log file per this many seconds.
RETRY_SECONDS = 5.0

STREAMS = ("stdout", "stderr", "supervisor")


_last_ms = -1
_last_stamp = ""
_last_second = -1
_second_prefix = ""


def utc_now() -> str:
    """The current time as ISO-8601 UTC with milliseconds, ending in "Z"."""
    # Called for every line a child writes: reuse the text within a millisecond
    # and the date part within a second (a chatty child writes 100k lines/s).
    global _last_ms, _last_stamp, _last_second, _second_prefix
    ms = time.time_ns() // 1_000_000
    if ms != _last_ms:
        second = ms // 1000
        if second != _last_second:
            _second_prefix = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S.")
            _last_second = second
        _last_stamp = f"{_second_prefix}{ms % 1000:03d}Z"
        _last_ms = ms
    return _last_stamp


@dataclass(frozen=True)
class LogLine:
    """One line of a component's output, or a note the supervisor wrote."""

    seq: int
    time: str
    stream: str
    text: str

    def as_dict(self) -> dict[str, object]:
        return {"seq": self.seq, "time": self.time, "stream": self.stream, "text": self.text}


class _RotatingFile:
    """Append-only file rotated by size: x.log -> x.log.1 -> ... -> x.log.<backups>.

    Every method may raise OSError; LogTail turns that into `file_error`.
    """

    def __init__(self, path: Path, max_bytes: int, backups: int) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.backups = backups
        self.fd: int | None = None
        self.size = 0

    def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Unbuffered, one write(2) per line: what is logged survives a SIGKILL
        # of the supervisor, and there is no buffer to lose on a disk error.
        self.fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        self.size = os.fstat(self.fd).st_size

    def write_lines(self, lines: list[bytes]) -> None:
        """Write whole lines, as few write(2) calls as rotation at max_bytes allows."""
        chunk: list[bytes] = []
        size = 0
        for line in lines:
            if chunk and self.size + size + len(line) > self.max_bytes:
                self.write(b"".join(chunk))
                chunk, size = [], 0
            chunk.append(line)
            size += len(line)
        if chunk:
            self.write(b"".join(chunk))

    def write(self, data: bytes) -> None:
        if self.fd is None:
            self.open()
        if self.size and self.size + len(data) > self.max_bytes:
            self.rotate()
        assert self.fd is not None
        written = os.write(self.fd, data)
        self.size += written
        if written < len(data):
            raise OSError(f"short write ({written} of {len(data)} bytes)")

    def rotate(self) -> None:
        self.close()
        if self.backups > 0:
            for i in range(self.backups - 1, 0, -1):
                older = self.path.with_name(f"{self.path.name}.{i}")
                if older.exists():
                    os.replace(older, self.path.with_name(f"{self.path.name}.{i + 1}"))
            # Someone may have moved the file away meanwhile (logrotate): then
            # there is nothing to rotate, just start a new one.
            with contextlib.suppress(FileNotFoundError):
                os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))
        else:
            with contextlib.suppress(FileNotFoundError):
                os.truncate(self.path, 0)
        self.open()

    def close(self) -> None:
        fd, self.fd = self.fd, None
        if fd is not None:
            os.close(fd)


class LogTail:
    """Bounded in-memory tail of one component's output + a size-rotated log file."""

    def __init__(self, path: Path | None, *, lines: int = 1000, max_bytes: int = 5 * 2**20,
                 backups: int = 3, retry_after: float = RETRY_SECONDS) -> None:
        self.path = path
        self.retry_after = retry_after
        self._lines: collections.deque[LogLine] = collections.deque(maxlen=max(1, lines))
        self._seq = 0
        self._file = _RotatingFile(path, max_bytes, backups) if path is not None else None
        self._file_error: str | None = None
        self._retry_at = 0.0
        self._closed = False
        # Created only when someone waits, so that append() works outside trio too.
        self._changed: trio.Event | None = None
        self._token: trio.lowlevel.TrioToken | None = None

    @property
    def last_seq(self) -> int:
        return self._seq

    @property
    def file_error(self) -> str | None:
        return self._file_error

    def append(self, stream: str, text: str) -> LogLine:
        """Keep one line (several if `text` holds newlines); returns the last one kept."""
        if "\n" in text:
            parts = text.rstrip("\n").split("\n")
            for part in parts[:-1]:
                self._append_one(stream, part)
            text = parts[-1]
        return self._append_one(stream, text)

    def extend(self, stream: str, texts: list[str]) -> None:
        """Keep several lines of one stream at once: one file write for all of them."""
        if not texts:
            return
        stamp = utc_now()
        new = []
        for text in texts:
            if text.endswith("\r"):
                text = text[:-1]
            if len(text) > MAX_LINE:
                text = text[:MAX_LINE]
            self._seq += 1
            new.append(LogLine(self._seq, stamp, stream, text))
        self._lines.extend(new)
        if self._file is not None and not self._closed:
            self._write(new)
        self._wake()

    def note(self, text: str) -> LogLine:
        """A lifecycle line written by the supervisor itself ("started pid 123")."""
        return self.append("supervisor", text)

    def _append_one(self, stream: str, text: str) -> LogLine:
        if text.endswith("\r"):
            text = text[:-1]
        if len(text) > MAX_LINE:
            text = text[:MAX_LINE]
        self._seq += 1
        line = LogLine(self._seq, utc_now(), stream, text)
        self._lines.append(line)
        if self._file is not None and not self._closed:
            self._write([line])
        self._wake()
        return line

    def _write(self, lines: list[LogLine]) -> None:
        assert self._file is not None
        if self._file_error is not None and time.monotonic() < self._retry_at:
            return
        data = [f"{x.time} {x.stream} {x.text}\n".encode("utf-8", errors="replace")
                for x in lines]
        recovering = self._file_error is not None
        try:
            if recovering:
                self._file.close()
                self._file.open()
                self._file.write(f"{utc_now()} supervisor log file writable again "
                                 f"(lines logged meanwhile are only in memory)\n".encode())
            self._file.write_lines(data)
        except OSError as exc:
            first = self._file_error is None
            self._file_error = f"cannot write {self._file.path}: {exc.strerror or exc}"
            self._retry_at = time.monotonic() + self.retry_after
            try:
                self._file.close()
            except OSError:
                pass
            if first:
                # Memory only: writing this note to the broken file would recurse.
                self._seq += 1
                self._lines.append(LogLine(self._seq, utc_now(), "supervisor",
                                           f"{self._file_error}; keeping output in memory only"))
        else:
            self._file_error = None

    def _wake(self) -> None:
        event, self._changed = self._changed, None
        if event is None:
            return
        try:
            trio.lowlevel.current_task()
        except RuntimeError:
            # Called from a thread other than trio's: hand the wake-up over.
            if self._token is not None:
                self._token.run_sync_soon(event.set)
            return
        event.set()

    def tail(self, n: int) -> list[LogLine]:
        """The last `n` lines (fewer if fewer are kept)."""
        if n <= 0:
            return []
        if n >= len(self._lines):
            return list(self._lines)
        return list(self._lines)[-n:]

    def since(self, seq: int) -> list[LogLine]:
        """Lines with a sequence number above `seq` (only those still kept)."""
        if not self._lines or seq >= self._seq:
            return []
        first = self._lines[0].seq
        if seq < first:
            return list(self._lines)
        # Sequence numbers are consecutive within the deque: index directly.
        return list(self._lines)[seq - first + 1:]

    async def wait_after(self, seq: int) -> None:
        """Return once a line with a sequence number above `seq` exists."""
        while self._seq <= seq:
            if self._changed is None:
                self._changed = trio.Event()
                self._token = trio.lowlevel.current_trio_token()
            await self._changed.wait()
        await trio.lowlevel.checkpoint_if_cancelled()

    def close(self) -> None:
        """Close the file; later lines are kept in memory only."""
        self._closed = True
        if self._file is not None:
            try:
                self._file.close()
            except OSError:
                pass
