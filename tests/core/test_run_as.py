"""user, group and umask: real children under another identity, and the config errors."""

from __future__ import annotations

import grp
import os
import pwd
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import trio

from core import spawn
from core.config import ConfigError, load
from core.plugins import PluginManager
from tests.core.helpers_process import SPAWN_PATHS, choose_spawn_path
from tests.core.test_component_keys import supervising, write

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parents[2]
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="switching users needs root")
NOBODY = pwd.getpwnam("nobody")
#: A group nobody is not in by default, to tell group from the primary one.
_GROUPS = {e.gr_name for e in grp.getgrall()}
OTHER_GROUP = next((g for g in ("daemon", "bin", "sys", "adm") if g in _GROUPS), None)


def status(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/status") as f:
        return dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)


def environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode().split("=", 1) for item in raw if b"=" in item)


def sleeper_config(tmp_path: Path, keys: str, plugin: str = "process") -> Path:
    return write(tmp_path, f'[components.job]\nplugin = "{plugin}"\n'
                           f'command = ["sleep", "60"]\n{keys}\n')


async def running_pid(sup) -> int:
    with trio.fail_after(10):
        while sup.view("job")["state"] != "running" or sup.view("job")["pid"] is None:
            await trio.sleep(0.02)
    return sup.view("job")["pid"]


@needs_root
@pytest.mark.parametrize("path", SPAWN_PATHS)
async def test_a_child_runs_as_the_user_with_its_groups_and_login_variables(
        tmp_path, monkeypatch, path):
    native, wrapper = choose_spawn_path(path)
    monkeypatch.setattr(spawn, "use_native", native)
    monkeypatch.setattr(spawn, "use_wrapper", wrapper)
    path = sleeper_config(tmp_path, 'user = "nobody"\numask = "027"\nenv = { LOGNAME = "x" }')
    async with supervising(path) as sup:
        pid = await running_pid(sup)
        st, env = status(pid), environ(pid)
        assert st["Uid"].split() == [str(NOBODY.pw_uid)] * 4  # real, effective, saved, fs
        assert st["Gid"].split() == [str(NOBODY.pw_gid)] * 4
        wanted = set(os.getgrouplist("nobody", NOBODY.pw_gid))
        assert set(map(int, st["Groups"].split())) == wanted
        assert st["Umask"] == "0027"
        assert env["HOME"] == NOBODY.pw_dir and env["USER"] == "nobody"
        assert env["LOGNAME"] == "x"  # the component's env wins over the login variables
    assert os.getuid() == 0  # the supervisor itself stays who it was


@needs_root
@pytest.mark.skipif(OTHER_GROUP is None, reason="no second group on this machine")
async def test_group_replaces_the_primary_group(tmp_path):
    path = sleeper_config(tmp_path, f'user = "nobody"\ngroup = "{OTHER_GROUP}"')
    gid = grp.getgrnam(OTHER_GROUP).gr_gid
    async with supervising(path) as sup:
        st = status(await running_pid(sup))
    assert st["Uid"].split()[:2] == [str(NOBODY.pw_uid)] * 2
    assert st["Gid"].split() == [str(gid)] * 4


@needs_root
async def test_a_group_alone_keeps_root_and_drops_its_groups(tmp_path):
    path = sleeper_config(tmp_path, 'group = "nogroup"')
    gid = grp.getgrnam("nogroup").gr_gid
    async with supervising(path) as sup:
        pid = await running_pid(sup)
        st, env = status(pid), environ(pid)
    assert st["Uid"].split()[:2] == ["0", "0"] and st["Gid"].split()[:2] == [str(gid)] * 2
    assert st["Groups"].strip() == ""
    assert env.get("USER") == os.environ.get("USER")  # no user: no login variables


@needs_root
async def test_the_death_signal_survives_the_user_switch(tmp_path):
    """A supervisor killed with SIGKILL takes a child that runs as nobody with it."""
    path = sleeper_config(tmp_path, 'user = "nobody"')
    code = ("import trio, sys\n"
            "from core.config import load\nfrom core.plugins import PluginManager\n"
            "from core.supervisor import Supervisor\n"
            "async def main():\n"
            "    p = PluginManager(load_entry_points=False)\n"
            f"    sup = Supervisor(load({str(path)!r}, plugins=p.names, validate=p.validate), p)\n"
            "    async with trio.open_nursery() as n:\n"
            "        await n.start(sup.run)\n"
            "        while sup.view('job')['pid'] is None: await trio.sleep(0.02)\n"
            "        print(sup.view('job')['pid'], flush=True)\n"
            "        await trio.sleep(60)\n"
            "trio.run(main)\n")
    with subprocess.Popen([sys.executable, "-c", code], cwd=ROOT,
                          stdout=subprocess.PIPE) as sup:
        try:
            assert sup.stdout is not None
            pid = int(sup.stdout.readline())
            assert status(pid)["Uid"].split()[0] == str(NOBODY.pw_uid)
            pidfd = os.pidfd_open(pid)
        finally:
            sup.kill()
    # The child is not ours to reap: wait until it is gone or a zombie of someone else.
    import select

    assert select.select([pidfd], [], [], 10)[0] == [pidfd], "the child outlived its supervisor"
    os.close(pidfd)


@pytest.mark.parametrize(("keys", "where", "words"), [
    ('user = "no-such-user-here"', "components.job.user", "unknown user 'no-such-user-here'"),
    ('group = "no-such-group-here"', "components.job.group", "unknown group"),
    ("user = 65534", "components.job.user", "expected a string, got an integer"),
    ('user = ""', "components.job.user", "expected a user name"),
    ('umask = "999"', "components.job.umask", 'such as "022"'),
    ('umask = "0222x"', "components.job.umask", 'such as "022"'),
    ("umask = 22", "components.job.umask", "write it in quotes"),
    ("umask = true", "components.job.umask", "expected a string"),
    ("usr = \"nobody\"", "components.job.usr", "did you mean 'user'"),
])
@pytest.mark.parametrize("plugin", ["process", "storage", "api"])
def test_identity_mistakes_are_config_errors_naming_the_key(tmp_path, keys, where, words,
                                                             plugin):
    body = f'[components.job]\nplugin = "{plugin}"\n'
    if plugin == "process":
        body += 'command = ["sleep", "60"]\n'
    path = write(tmp_path, body + keys + "\n")
    plugins = PluginManager(load_entry_points=False)
    with pytest.raises(ConfigError) as refused:
        load(path, plugins=plugins.names, validate=plugins.validate)
    assert where in str(refused.value) and words in str(refused.value), str(refused.value)


@needs_root
def test_as_another_user_naming_someone_else_says_why(tmp_path):
    """A supervisor that is not root refuses to run a child as another user, at load."""
    with tempfile.TemporaryDirectory(dir="/tmp") as where:
        os.chmod(where, 0o755)
        cfg = Path(where) / "config.toml"
        cfg.write_text('[components.job]\nplugin = "process"\ncommand = ["true"]\n'
                       'user = "root"\n')
        mine = Path(where) / "mine.toml"
        mine.write_text('[components.job]\nplugin = "process"\ncommand = ["true"]\n'
                        'user = "nobody"\ngroup = "nogroup"\n')
        as_nobody = ["setpriv", "--reuid", "nobody", "--regid", "nogroup", "--clear-groups",
                     "--", sys.executable, "-m", "core", "check"]
        refused = subprocess.run([*as_nobody, str(cfg)], cwd=ROOT, capture_output=True,
                                 text=True, timeout=60)
        fine = subprocess.run([*as_nobody, str(mine)], cwd=ROOT, capture_output=True,
                              text=True, timeout=60)
    assert refused.returncode == 2, refused.stderr
    assert "components.job.user" in refused.stderr and "not root" in refused.stderr
    assert "as itself, not as 'root'" in refused.stderr and "Traceback" not in refused.stderr
    assert fine.returncode == 0, fine.stderr  # naming itself is fine


async def test_an_unknown_user_at_spawn_is_a_start_failure(tmp_path):
    """A third-party plugin's Launch naming a user that does not exist fails that start."""
    from core import Launch, hookimpl

    class Plugin:
        @hookimpl
        def start(self, component):
            return Launch(argv=("sleep", "60"), user="no-such-user-here")

    plugins = PluginManager(load_entry_points=False, extra={"odd": Plugin()})
    path = write(tmp_path, '[components.job]\nplugin = "odd"\nrestart = "never"\n')
    from core.supervisor import Supervisor

    sup = Supervisor(load(path, plugins=plugins.names, validate=plugins.validate), plugins)
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        with trio.fail_after(10):
            while "no-such-user-here" not in (sup.view("job")["error"] or ""):
                await trio.sleep(0.02)
        assert sup.view("job")["pid"] is None
        await sup.shutdown()
        nursery.cancel_scope.cancel()


def test_launch_refuses_wrong_types() -> None:
    from core import Launch

    for bad in ({"user": 0}, {"group": ""}, {"umask": "022"}, {"umask": 0o1000},
                {"umask": True}):
        with pytest.raises(TypeError):
            Launch(argv=("true",), **bad)
    assert Launch(argv=("true",), user="nobody", umask=0o022).umask == 0o022


@needs_root
async def test_a_child_as_nobody_writes_in_its_own_data_directory():
    """The core hands the component's data directory to the user its process runs as."""
    with tempfile.TemporaryDirectory(dir="/tmp") as where:
        os.chmod(where, 0o755)  # nobody must reach it
        base = Path(where)
        data = base / "data" / "job"
        script = f"echo made > {data}/made.txt && exec sleep 60"
        path = write(base, '[components.job]\nplugin = "process"\n'
                           f'command = ["/bin/sh", "-c", "{script}"]\n'
                           'user = "nobody"\numask = "077"\n')
        async with supervising(path) as sup:
            pid = await running_pid(sup)
            with trio.fail_after(10):
                while not (data / "made.txt").exists():
                    await trio.sleep(0.02)
            assert status(pid)["Uid"].split()[0] == str(NOBODY.pw_uid)
            made = (data / "made.txt").stat()
        assert data.stat().st_uid == NOBODY.pw_uid
        assert made.st_uid == NOBODY.pw_uid and made.st_mode & 0o777 == 0o600  # umask 077


@needs_root
@pytest.mark.parametrize("path", SPAWN_PATHS)
async def test_a_child_as_another_user_joins_its_cgroup_first(tmp_path, monkeypatch, path):
    """Only root may move a process into our cgroups: the child joins, then switches."""
    import uuid

    from core.containment import Containment
    from core.supervisor import Supervisor

    containment = Containment.open(f"runas-{uuid.uuid4().hex[:8]}", enabled=True)
    if containment.tree is None:
        pytest.skip(f"cgroups cannot be made here: {containment.reason}")
    native, wrapper = choose_spawn_path(path)
    monkeypatch.setattr(spawn, "use_native", native)
    monkeypatch.setattr(spawn, "use_wrapper", wrapper)
    path = sleeper_config(tmp_path, 'user = "nobody"')
    plugins = PluginManager(load_entry_points=False)
    sup = Supervisor(load(path, plugins=plugins.names, validate=plugins.validate), plugins,
                     containment=containment)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(sup.run)
            try:
                pid = await running_pid(sup)
                with trio.fail_after(10):  # "running" comes when the wrapper runs
                    while Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0] != b"sleep":
                        await trio.sleep(0.01)
                assert sup.view("job")["containment"] == "cgroup"
                assert status(pid)["Uid"].split() == [str(NOBODY.pw_uid)] * 4
                with open(f"/proc/{pid}/cgroup") as f:
                    line = next(x for x in f.read().splitlines() if x.startswith("0::"))
                assert line.endswith("/job") or "/job/" in line, line
            finally:
                with trio.CancelScope(shield=True), trio.move_on_after(15):
                    await sup.shutdown()
                nursery.cancel_scope.cancel()
    finally:
        containment.close()
