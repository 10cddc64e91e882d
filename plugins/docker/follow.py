"""The process the core runs for a docker component: the container's output and its end.

    python plugins/docker/follow.py CONTAINER_ID --grace 9 [--note TEXT ...]

The start hook has already created and started the container; this process
copies the container's stdout and stderr (the engine's log of it, from its
very start) to its own, so that the core drains them into the component's
log tail and rotated file exactly as it does a process's output, and exits
with the container's exit status when the container exits: the core's
restart policy then applies as to any process.

On the core's stop signal: SIGTERM is `docker stop` with --grace seconds
(the image's stop signal, then the engine's SIGKILL); any other signal is
sent to the container as it is, with the same grace. Then kill, if it still
runs, then remove. Whatever ends this process short of SIGKILL removes the
container; after a SIGKILL (the supervisor's own death takes this process
with it) the next start removes it by its labels.

Run as a script, not as a module of the package: it needs only the standard
library and the Docker SDK, whatever the supervisor's sys.path was.
"""

from __future__ import annotations

import queue
import signal

#: Signals the core may be configured to stop a component with (stop_signal).
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT,
                signal.SIGUSR1, signal.SIGUSR2)

#: What ends the wait: our stop signal, the container's exit, the engine lost.
_events: queue.SimpleQueue[tuple[object, ...]] = queue.SimpleQueue()


def _on_signal(signum: int, _frame: object) -> None:
    _events.put(("signal", signum))  # SimpleQueue.put is safe in a signal handler


# Before the SDK's imports (a few tenths of a second): a stop that comes
# while they load is kept, not the default death that would leave the
# container running.
if __name__ == "__main__":
    for _sig in STOP_SIGNALS:
        signal.signal(_sig, _on_signal)

import argparse  # noqa: E402
import contextlib  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from typing import Any  # noqa: E402

import docker  # noqa: E402
import docker.errors  # noqa: E402
import requests.exceptions  # noqa: E402

#: Exit status when the engine fails us (as `docker run` does).
ENGINE_FAILED = 125
#: After the container exited, how long the log copies may take to reach the end.
DRAIN_WAIT = 2.0
#: One wait request lasts at most this long; then it is simply made again.
WAIT_CHUNK = 3600
#: A lost connection to the engine is retried this many times, a second apart.
RECONNECTS = 3


def say(text: str) -> None:
    """A line of ours in the component's log (stderr, marked as the plugin's)."""
    _write_all(2, f"[docker] {text}\n".encode())


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            view = view[os.write(fd, view):]
        except InterruptedError:
            continue


class Follower:
    """One container: its output copied, its exit or our stop signal awaited."""

    def __init__(self, api: Any, container: str, grace: int,
                 events: queue.SimpleQueue[tuple[Any, ...]]) -> None:
        self.api = api
        self.container = container
        self.grace = grace
        self.events = events
        self.pumps: list[threading.Thread] = []
        #: The last chunk copied per stream (1: stdout, 2: stderr).
        self.last: dict[int, bytes] = {1: b"", 2: b""}

    def start(self) -> None:
        for fd in (1, 2):
            pump = threading.Thread(target=self._pump, args=(fd,), daemon=True,
                                    name=f"logs-{fd}")
            pump.start()
            self.pumps.append(pump)
        threading.Thread(target=self._wait, daemon=True, name="wait").start()

    def _pump(self, fd: int) -> None:
        try:
            for chunk in self.api.logs(self.container, stdout=fd == 1, stderr=fd == 2,
                                       stream=True, follow=True):
                _write_all(fd, chunk)
                self.last[fd] = chunk
        except docker.errors.NotFound:
            pass
        except (requests.exceptions.RequestException, docker.errors.DockerException,
                OSError) as exc:
            say(f"reading the container's {'stdout' if fd == 1 else 'stderr'} failed: {exc}")

    def _wait(self) -> None:
        failures = 0
        while True:
            try:
                result = self.api.wait(self.container, timeout=WAIT_CHUNK)
            except docker.errors.NotFound:
                self.events.put(("gone",))
                return
            except (requests.exceptions.RequestException, docker.errors.DockerException) as exc:
                # A wait that simply lasted WAIT_CHUNK ends the same way as a lost
                # engine (the SDK's unix socket reports both as ConnectionError):
                # whether the engine still answers tells them apart.
                if self._engine_answers():
                    failures = 0
                    continue
                failures += 1
                if failures > RECONNECTS:
                    self.events.put(("engine", str(exc)))
                    return
                time.sleep(1.0)
                continue
            self.events.put(("exit", result.get("StatusCode"),
                             (result.get("Error") or {}).get("Message")))
            return

    def _engine_answers(self) -> bool:
        try:
            return bool(self.api.ping())
        except (requests.exceptions.RequestException, docker.errors.DockerException):
            return False

    def run(self) -> int:
        event = self.events.get()
        code: int | None = None
        if event[0] == "signal":
            code = self.stop(event[1])
        elif event[0] == "exit":
            code = event[1]
            if event[2]:
                say(f"the engine reports: {event[2]}")
        elif event[0] == "gone":
            say(f"container {self.container[:12]} was removed by someone else")
        else:
            say(f"lost the Docker engine: {event[1]}")
        for pump in self.pumps:
            pump.join(DRAIN_WAIT)
        self.copy_unterminated()
        self.report_end()
        self.remove()
        if code is None or not 0 <= code <= 255:
            return ENGINE_FAILED
        return code

    def stop(self, signum: int) -> int | None:
        """`docker stop` (or the configured signal), then kill, then the exit status."""
        api, cid = self.api, self.container
        name = signal.Signals(signum).name
        try:
            if signum == signal.SIGTERM:
                say(f"docker stop, SIGKILL after {self.grace} s")
                api.stop(cid, timeout=self.grace)
            else:
                say(f"sending {name} to the container, SIGKILL after {self.grace} s")
                api.kill(cid, signal=name)
                with contextlib.suppress(requests.exceptions.ReadTimeout,
                                         requests.exceptions.ConnectionError):
                    api.wait(cid, timeout=self.grace)
            if api.inspect_container(cid)["State"].get("Running"):
                say("still running after docker stop: kill")
                api.kill(cid)
            return api.wait(cid, timeout=10).get("StatusCode")
        except docker.errors.NotFound:
            return None
        except (requests.exceptions.RequestException, docker.errors.DockerException) as exc:
            say(f"stopping the container failed: {exc}")
            return None

    def copy_unterminated(self) -> None:
        """The last line of each stream if it had no newline (the engine 20.10's follow
        stream ends without it; it is in the log once the container has exited)."""
        for fd in (1, 2):
            with contextlib.suppress(requests.exceptions.RequestException,
                                     docker.errors.DockerException):
                last = self.api.logs(self.container, stdout=fd == 1, stderr=fd == 2,
                                     stream=False, tail=1)
                if last and not last.endswith(b"\n") and not self.last[fd].endswith(last):
                    _write_all(fd, last)

    def report_end(self) -> None:
        with contextlib.suppress(requests.exceptions.RequestException,
                                 docker.errors.DockerException):
            state = self.api.inspect_container(self.container).get("State") or {}
            if state.get("OOMKilled"):
                say("the container was killed for going over its memory limit (memory_max)")

    def remove(self) -> None:
        try:
            # v: the container's anonymous volumes go with it, as with `docker run --rm`.
            self.api.remove_container(self.container, force=True, v=True)
        except docker.errors.NotFound:
            pass
        except (requests.exceptions.RequestException, docker.errors.DockerException) as exc:
            say(f"removing container {self.container[:12]} failed (the next start removes "
                f"it): {exc}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("container")
    parser.add_argument("--grace", type=int, default=9, help="seconds of docker stop")
    parser.add_argument("--note", action="append", default=[],
                        help="a line to write to the log first")
    args = parser.parse_args(argv)
    for note in args.note:
        say(note)
    try:
        api = docker.from_env(timeout=30, use_ssh_client=True).api
    except docker.errors.DockerException as exc:
        say(f"cannot reach the Docker engine: {exc}")
        return ENGINE_FAILED
    for sig in STOP_SIGNALS:
        signal.signal(sig, _on_signal)  # again: main() may be called without __main__
    follower = Follower(api, args.container, args.grace, _events)
    follower.start()
    return follower.run()


if __name__ == "__main__":
    sys.exit(main())
