from collections.abc import Sequence

#: The name each step before the exec gives as an OSError's filename.
STEPS: tuple[str, ...]

def spawn(path: str | bytes, argv: Sequence[str | bytes], env: Sequence[str | bytes],
          cwd: str | bytes | None, fds: tuple[int, int, int], cgroup_fd: int,
          cgroup_dir: int, uid: int, gid: int, groups: Sequence[int] | None, umask: int,
          parent: int, /) -> int: ...

def creates_in_cgroup() -> bool: ...
