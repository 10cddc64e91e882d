"""How a child process is started: own session, death signal, no stdin.

The death signal (SIGKILL when the supervisor's main thread exits) used to
be set by a `preexec_fn`, which forces subprocess to fork() the whole
interpreter and run Python in the child before exec: 2.6 ms per spawn,
against 0.2 ms with the vfork() that subprocess uses when there is no
preexec_fn (measured on a 40 MB interpreter, 2-core machine). So when
util-linux's `setpriv --pdeathsig` is there (Debian's util-linux is
essential), the child is `setpriv --pdeathsig KILL -- sh -c CHECK argv...`,
started by vfork: setpriv sets the signal, sh makes the preexec_fn's check
(is its parent still the supervisor? if not, the signal went to whoever
adopted it, so exit) and execs the program, all in the same process (same
pid, same session). 0.9 ms more than a bare exec of the program, against
2.4 ms more for the fork. Without setpriv, the preexec_fn path is kept.

Since the wrapper's exec cannot report a missing or non-executable program
to us, the command is looked up here first and the same SpawnError raised
as subprocess would.
"""

from __future__ import annotations

import os
import resource
import shlex
import shutil
import signal
import stat
import subprocess
import time
from collections.abc import Mapping, Sequence

from core import runas
from core.children import libc

_PR_SET_PDEATHSIG = 1

#: Whether children are started through setpriv; None until first decided.
#: Tests set it to False to exercise the preexec_fn path.
use_wrapper: bool | None = None
_SETPRIV = shutil.which("setpriv")
_SH = shutil.which("sh") or "/bin/sh"


class SpawnError(Exception):
    """The command could not be started (not found, not executable, bad cwd)."""


def _wrapper_works() -> bool:
    global use_wrapper
    if use_wrapper is None:
        use_wrapper = False
        if _SETPRIV is not None:
            try:
                done = subprocess.run([_SETPRIV, "--pdeathsig", "KILL", "--", "true"],
                                      stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL, timeout=5)
                use_wrapper = done.returncode == 0
            except (OSError, subprocess.SubprocessError):
                pass
    return use_wrapper


def _preexec(parent_pid: int, cgroup: str | None = None,
             run_as: runas.RunAs | None = None, groups: list[int] | None = None) -> None:
    # Runs in the forked child, before exec: the death signal fires when the
    # *thread* that forked exits, which is why spawn() must run on trio's main
    # thread, never from a worker thread.
    if cgroup is not None:
        try:
            fd = os.open(cgroup, os.O_WRONLY)
            os.write(fd, b"0")  # "0": the writing process itself
            os.close(fd)
        except OSError:
            os._exit(1)  # outside its cgroup it would escape the stop
    if run_as is not None and run_as.changes:
        try:
            runas.switch(run_as, groups or [])
        except OSError:
            os._exit(1)
    # After the switch: a change of credentials clears the death signal.
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent_pid:
        # The parent died before prctl took effect: nobody will ever stop us.
        os._exit(1)


def spawn_error(exc: OSError, argv: Sequence[str], cwd: str | None) -> SpawnError:
    if cwd is not None and exc.filename == cwd:
        if isinstance(exc, FileNotFoundError):
            return SpawnError(f"working directory not found: {cwd}")
        return SpawnError(f"cannot use working directory {cwd}: {exc.strerror}")
    if isinstance(exc, FileNotFoundError):
        return SpawnError(f"command not found: {argv[0]}")
    if isinstance(exc, PermissionError):
        return SpawnError(f"permission denied: {argv[0]} (is it executable?)")
    return SpawnError(f"cannot run {argv[0]}: {exc.strerror or exc}")


def _executable(path: str) -> OSError | None:
    """Why exec of `path` would fail before the program runs, or None."""
    try:
        st = os.stat(path)
    except OSError as exc:
        return exc
    if stat.S_ISDIR(st.st_mode) or not os.access(path, os.X_OK):
        return PermissionError(13, "Permission denied", path)
    return None


def check_command(argv: Sequence[str], cwd: str | None, env: Mapping[str, str]) -> None:
    """Raise the SpawnError exec would give for argv[0], as subprocess looks it up."""
    if cwd is not None and not os.path.isdir(cwd):
        return  # Popen reports the directory itself
    name = argv[0]
    base = cwd or os.getcwd()
    if os.path.dirname(name):
        problem = _executable(os.path.join(base, name))
    else:
        problem = FileNotFoundError(2, "No such file or directory", name)
        for folder in os.get_exec_path(env):
            found = _executable(os.path.join(base, folder, name))
            if found is None:
                return
            if not isinstance(found, FileNotFoundError | NotADirectoryError):
                problem = found  # as execvp: a denied candidate beats "not found"
    if problem is not None:
        raise spawn_error(problem, argv, None)


#: Descriptors a spawn leaves free for the rest of the supervisor (REST, the
#: log files, /proc reads), beyond the child's own (pidfd, two pipes, its log
#: and stat files): past it the spawn fails at once, with the reason.
SPAWN_RESERVE = 16
PER_CHILD = 5


#: Far from the limit (more than this many free at the last count, taken
#: under COUNT_FOR seconds ago), a spawn skips the count: listing
#: /proc/self/fd takes 0.3 ms with 50 children, on the restart's path.
FAR_FROM_LIMIT = 512
COUNT_FOR = 1.0
_last_count: tuple[float, int, int] = (-1e9, 0, 0)  # (when, soft limit, used)


def descriptors_free() -> int:
    """How many more descriptors this process may open (a large number if unknown)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        used = len(os.listdir("/proc/self/fd"))
    except OSError:
        return 0  # not even one for the listing
    global _last_count
    _last_count = (time.monotonic(), soft, used)
    return soft - used


def _enough_descriptors() -> tuple[bool, int]:
    """Whether a spawn may go on, and the free count when one was taken."""
    global _last_count
    when, soft, used = _last_count
    if (time.monotonic() - when < COUNT_FOR and soft == resource.getrlimit(
            resource.RLIMIT_NOFILE)[0] and soft - used > FAR_FROM_LIMIT):
        # Each spawn since counts as PER_CHILD more in use until the next count.
        _last_count = (when, soft, used + PER_CHILD)
        return True, soft - used
    free = descriptors_free()
    return free >= SPAWN_RESERVE + PER_CHILD, free


def popen(argv: list[str], *, cwd: str | None, env: dict[str, str],
          user: str | None = None, group: str | None = None, umask: int | None = None,
          cgroup: str | None = None) -> subprocess.Popen[bytes]:
    """Start argv in its own session with the death signal set; raises SpawnError.

    `user`, `group` and `umask` are the child's (core.runas says how).
    Must be called from the thread whose exit should kill the child (trio's
    main thread). `cgroup`: a cgroup.procs file the child joins before the
    program runs (so that nothing it forks can start outside).
    """
    try:
        run_as = runas.resolve(user, group)
    except runas.RunAsError as exc:
        raise SpawnError(f"cannot run {argv[0]}: {exc}") from None
    enough, free = _enough_descriptors()
    if not enough:
        # A child takes four (pidfd, two pipes, its stat file) and the rest of
        # the supervisor must keep some: refuse now rather than starve REST.
        raise SpawnError(f"cannot run {argv[0]}: only {max(free, 0)} file descriptors left "
                         "(raise the limit: LimitNOFILE= in the unit, ulimit -n)")
    kwargs: dict[str, object] = {} if umask is None else {"umask": umask}
    if _wrapper_works():
        check_command(argv, cwd, env)
        assert _SETPRIV is not None
        # setpriv sets the signal, then sh checks that its parent is still
        # us (else the signal was set on whoever adopted it: exit) and execs
        # the program in the same process. Without the check, a supervisor
        # killed while setpriv starts would leave the child running.
        check = f'[ "$PPID" = {os.getpid()} ] || exit 1; exec "$@"'
        switch = runas.setpriv_args(run_as)
        if cgroup is not None:
            # A builtin with a redirection: no extra process, no extra exec.
            check = f'echo 0 > {shlex.quote(cgroup)} || exit 1; {check}'
            if switch:
                # Only root may move a process between our cgroups: join as
                # root, then a second setpriv switches the user and sets the
                # death signal again (a change of credentials clears it). In
                # the instant between the two a dying supervisor leaves the
                # child in its cgroup, where the next start finds it.
                inner = " ".join(shlex.quote(a) for a in (_SETPRIV, "--pdeathsig", "KILL",
                                                          *switch, "--"))
                check = check.replace('exec "$@"', f'exec {inner} "$@"')
                switch = []
        run = [_SETPRIV, "--pdeathsig", "KILL", *switch, "--", _SH, "-c", check,
               "control-center", *argv]
    else:
        parent = os.getpid()
        run = argv
        # The cgroup is joined as root, before the user is switched.
        groups = runas.groups_of(run_as)
        kwargs["preexec_fn"] = lambda: _preexec(parent, cgroup, run_as, groups)
    try:
        return subprocess.Popen(
            run, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, start_new_session=True, close_fds=True,
            **kwargs)  # type: ignore[call-overload]
    except OSError as exc:
        raise spawn_error(exc, argv, cwd) from None
    except subprocess.SubprocessError as exc:
        raise SpawnError(f"cannot run {argv[0]}: {exc}") from None
