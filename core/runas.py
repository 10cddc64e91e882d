"""Whose identity a child runs under: a Launch's user, group and umask.

Names are resolved when the child is spawned (a user added after the
config was read is found). Root can run a child as anyone; any other
supervisor can run it only as itself, so naming itself is a no-op and
naming someone else is refused.

How it is applied: by the native spawner (core/_spawn.c), in the child
before exec, setgroups, setresgid and setresuid as raw system calls, then
the death signal; else (measured, bench/spawn_user_bench.py, BENCHMARKS.md)
with the setpriv wrapper, setpriv's own --reuid/--regid/--init-groups,
which keeps subprocess on vfork (0.20 ms in Popen() in a 47 MB process,
against 0.27 ms without a switch); asking subprocess for
user=/group=/extra_groups= instead makes it fork the whole interpreter
(1.57 ms, the event loop held all along). setpriv sets the death signal after it changes the
credentials (a credential change clears it), so the child still dies with
the supervisor. Without setpriv, the preexec_fn (core.spawn) joins the
cgroup, then switches (switch(), with groups looked up before the fork), then
sets the death signal.
"""

from __future__ import annotations

import grp
import os
import pwd
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from core.model import ComponentInfo, Launch


class RunAsError(Exception):
    """The user or group cannot be used (unknown, or not ours to take)."""


@dataclass(frozen=True)
class RunAs:
    """A resolved identity; None fields are left as the supervisor's."""

    uid: int | None = None
    gid: int | None = None
    #: The user's name: supplementary groups are initialised from it.
    user: str | None = None

    @property
    def changes(self) -> bool:
        return self.uid is not None or self.gid is not None


def user_entry(name: str) -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(name)
    except KeyError:
        raise RunAsError(f"unknown user {name!r} (not in the password database)") from None


def group_entry(name: str) -> grp.struct_group:
    try:
        return grp.getgrnam(name)
    except KeyError:
        raise RunAsError(f"unknown group {name!r} (not in the group database)") from None


def check(user: str | None, group: str | None) -> None:
    """Raise RunAsError when this supervisor cannot run a child as user/group."""
    resolve(user, group)


def resolve(user: str | None, group: str | None) -> RunAs:
    """The identity to switch to; RunAs() when nothing changes."""
    pw = user_entry(user) if user is not None else None
    gr = group_entry(group) if group is not None else None
    if os.geteuid() != 0:
        me = os.geteuid()
        if pw is not None and pw.pw_uid != me:
            raise RunAsError(f"the supervisor runs as {_user_name(me)} (uid {me}), not root: "
                             f"it can run children only as itself, not as {user!r}")
        if gr is not None and gr.gr_gid not in (os.getgid(), os.getegid()):
            raise RunAsError(f"the supervisor runs as {_user_name(me)} (uid {me}), not root: "
                             f"it can run children only in its own group, not {group!r}")
        return RunAs()  # ourselves: nothing to change
    if pw is None:
        return RunAs(gid=gr.gr_gid if gr is not None else None)
    return RunAs(uid=pw.pw_uid, gid=gr.gr_gid if gr is not None else pw.pw_gid,
                 user=pw.pw_name)


def login_env(user: str | None) -> dict[str, str]:
    """HOME, USER and LOGNAME of `user` (empty without one), as login(1) sets them."""
    if user is None:
        return {}
    pw = user_entry(user)
    return {"HOME": pw.pw_dir, "USER": pw.pw_name, "LOGNAME": pw.pw_name}


def setpriv_args(run_as: RunAs) -> list[str]:
    """setpriv's options for `run_as` (before its `--`)."""
    args: list[str] = []
    if run_as.uid is not None:
        args += ["--reuid", str(run_as.uid)]
    if run_as.gid is not None:
        args += ["--regid", str(run_as.gid)]
        # With a user: that user's groups; a group alone drops root's own.
        args.append("--init-groups" if run_as.uid is not None else "--clear-groups")
    return args


def groups_of(run_as: RunAs) -> list[int]:
    """The supplementary groups `run_as` gets: its user's, or none for a group alone."""
    if run_as.user is not None and run_as.gid is not None:
        return os.getgrouplist(run_as.user, run_as.gid)
    return []


def switch(run_as: RunAs, groups: list[int]) -> None:
    """Take `run_as` in this process (a forked child before exec): groups, gid, uid.

    `groups` comes from groups_of(), looked up before the fork: no user
    database is read in the child.
    """
    if run_as.gid is not None:
        os.setgroups(groups)
        os.setresgid(run_as.gid, run_as.gid, run_as.gid)
    if run_as.uid is not None:
        os.setresuid(run_as.uid, run_as.uid, run_as.uid)


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def launch_env(info: ComponentInfo, launch: Launch) -> dict[str, str]:
    """What the core sets over its own environment for a Launch, lowest first:
    the user's login variables, the component's env_file values, Launch.env."""
    try:
        env = login_env(launch.user)
    except RunAsError:
        env = {}  # the spawn itself says why
    env.update(info.env_file_env)
    env.update(launch.env)
    return env


def hand_over(directory: Path, user: str | None, group: str | None) -> None:
    """Give a component's data directory to the user its process runs as.

    The core creates the directory as the supervisor's user (root); a child
    that runs as another user could not write its own data otherwise. Only
    the directory itself changes owner, not what is already in it.
    """
    run_as = resolve(user, group)
    if run_as.uid is None:
        return
    st = directory.stat()
    if st.st_uid != run_as.uid:
        os.chown(directory, run_as.uid, run_as.gid if run_as.gid is not None else -1)
