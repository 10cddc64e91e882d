"""How a child process is started: own session, death signal, no stdin.

Three ways, the first that works here (decided once, by starting `true`):

1. The native spawner (`core._spawn`, a C extension built when a compiler
   is there): clone(CLONE_VM | CLONE_VFORK), into the cgroup where the
   kernel can (clone3 with CLONE_INTO_CGROUP, on x86-64), then in the child,
   with system calls only, the session, the cgroup (unless created in it),
   the descriptors, the working directory, the umask, the user switch, the
   death signal and the check that its parent is still the supervisor, then
   one exec of the program.
   Nothing but the program itself is ever exec'd.
2. util-linux's `setpriv --pdeathsig` (Debian's util-linux is essential):
   the child is `setpriv --pdeathsig KILL -- sh -c CHECK argv...`, started
   by subprocess's vfork; setpriv sets the signal, sh makes the parent
   check and execs the program, all in the same process. Seen from outside
   (bench/restart_trace.py), the two extra execs took 3.8 ms of a 7 ms
   restart.
3. A `preexec_fn`, which forces subprocess to fork() the whole interpreter
   and run Python in the child before exec (2.6 ms per spawn, against 0.2 ms
   by vfork, on a 40 MB interpreter).

The death signal fires when the *thread* that started the child exits:
spawn must run on trio's main thread, never from a worker thread.

Since the wrapper's exec cannot report a missing or non-executable program
to us, the command is looked up here first and the same SpawnError raised
as subprocess would; the native spawner execs the path found.
"""

from __future__ import annotations

import logging
import os
import resource
import shlex
import shutil
import signal
import stat
import subprocess
import time
from collections.abc import Mapping, Sequence
from typing import BinaryIO

from core import runas
from core.children import libc

_PR_SET_PDEATHSIG = 1

log = logging.getLogger("control_center")

#: Whether children are started by the native spawner, and else through
#: setpriv; None until first decided. Tests set them to False to exercise
#: the other paths.
use_native: bool | None = None
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


#: How children are started here, once said in the log.
_path: str | None = None


def _say_path() -> None:
    global _path
    if _native_works():
        _path = "the native spawner (core._spawn)"
    elif _wrapper_works():
        _path = "setpriv --pdeathsig (core._spawn is not available)"
    else:
        _path = "a preexec_fn (neither core._spawn nor setpriv --pdeathsig is available)"
    log.info("children are started by %s", _path)


def _native_works() -> bool:
    global use_native
    if use_native is None:
        use_native = False
        try:
            from core import _spawn  # noqa: F401
        except ImportError:
            return False
        try:
            started = _native(shutil.which("true") or "/bin/true", ["true"], cwd=None,
                              env=dict(os.environ), run_as=runas.RunAs(), umask=None,
                              cgroup=None)
            for pipe in (started.stdout, started.stderr):
                if pipe is not None:
                    pipe.close()
            use_native = started.wait(5) == 0
        except (OSError, subprocess.SubprocessError):
            pass
    return use_native


def _native_steps() -> tuple[str, ...]:
    from core import _spawn

    steps: tuple[str, ...] = _spawn.STEPS
    return steps


class Started:
    """A child from the native spawner, with what ChildProcess uses of a Popen."""

    def __init__(self, pid: int, stdout: int, stderr: int) -> None:
        self.pid = pid
        self.stdout: BinaryIO | None = open(stdout, "rb", buffering=0)
        self.stderr: BinaryIO | None = open(stderr, "rb", buffering=0)
        self.returncode: int | None = None

    def wait(self, timeout: float | None = None) -> int:
        """Reap it (within `timeout` seconds, else subprocess.TimeoutExpired)."""
        if self.returncode is not None:
            return self.returncode
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            pid, status = os.waitpid(self.pid, os.WNOHANG if deadline is not None else 0)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
                return self.returncode
            assert deadline is not None
            if time.monotonic() >= deadline:
                raise subprocess.TimeoutExpired(str(self.pid), timeout or 0.0)
            time.sleep(0.005)


Child = subprocess.Popen[bytes] | Started


def _environment(env: Mapping[str, str]) -> list[bytes]:
    """env as KEY=VALUE, refused as subprocess refuses it (TypeError, ValueError)."""
    out = []
    for key, value in env.items():
        k, v = os.fsencode(key), os.fsencode(value)
        if b"=" in k or not k:
            raise ValueError(f"illegal environment variable name: {key!r}")
        if b"\0" in k or b"\0" in v:
            raise ValueError("embedded null byte in the environment")
        out.append(k + b"=" + v)
    return out


def _native(path: str, argv: list[str], *, cwd: str | None, env: Mapping[str, str],
            run_as: runas.RunAs, umask: int | None, cgroup: str | None) -> Started:
    from core import _spawn

    envp = _environment(env)
    groups = runas.groups_of(run_as) if run_as.gid is not None else None
    fds: list[int] = []
    try:
        fds.append(os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC))
        out_r, out_w = os.pipe()
        fds += [out_r, out_w]
        err_r, err_w = os.pipe()
        fds += [err_r, err_w]
        cgroup_fd = cgroup_dir = -1
        if cgroup is not None:
            cgroup_fd = os.open(cgroup, os.O_WRONLY | os.O_CLOEXEC)
            fds.append(cgroup_fd)
            # Where the kernel can, the child is created in the cgroup, and
            # is not moved there (core/_spawn.c says why).
            if _spawn.creates_in_cgroup():
                cgroup_dir = os.open(os.path.dirname(cgroup),
                                     os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
                fds.append(cgroup_dir)
        pid = _spawn.spawn(path, argv, envp, cwd, (fds[0], out_w, err_w), cgroup_fd,
                           cgroup_dir,
                           -1 if run_as.uid is None else run_as.uid,
                           -1 if run_as.gid is None else run_as.gid,
                           groups, -1 if umask is None else umask, os.getpid())
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise
    for fd in (fds[0], out_w, err_w, *fds[5:]):
        os.close(fd)
    return Started(pid, out_r, err_r)


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


def check_command(argv: Sequence[str], cwd: str | None, env: Mapping[str, str]) -> str | None:
    """The path exec would run for argv[0], as subprocess looks it up.

    Raises the SpawnError exec would give; None when `cwd` is not a
    directory (the spawn itself reports that).
    """
    if cwd is not None and not os.path.isdir(cwd):
        return None
    name = argv[0]
    base = cwd or os.getcwd()
    if os.path.dirname(name):
        path = os.path.join(base, name)
        problem = _executable(path)
    else:
        problem = FileNotFoundError(2, "No such file or directory", name)
        for folder in os.get_exec_path(env):
            path = os.path.join(base, folder, name)
            found = _executable(path)
            if found is None:
                return path
            if not isinstance(found, FileNotFoundError | NotADirectoryError):
                problem = found  # as execvp: a denied candidate beats "not found"
    if problem is not None:
        raise spawn_error(problem, argv, None)
    return path


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
          cgroup: str | None = None) -> Child:
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
    if _path is None:
        _say_path()
    if _native_works():
        path = check_command(argv, cwd, env) or argv[0]
        try:
            return _native(path, argv, cwd=cwd, env=env, run_as=run_as, umask=umask,
                           cgroup=cgroup)
        except OSError as exc:
            if exc.filename not in (cwd, path) and exc.filename in _native_steps():
                # A step before the exec: setsid, the cgroup, the user switch...
                raise SpawnError(f"cannot start {argv[0]}: {exc.filename} failed: "
                                 f"{exc.strerror or exc}") from None
            raise spawn_error(exc, argv, cwd) from None
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
