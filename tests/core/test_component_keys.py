"""Component keys an operator expects from supervisord and PM2, through a real supervisor."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio

from core.config import ConfigError, load
from core.plugins import PluginManager
from core.supervisor import Supervisor

pytestmark = pytest.mark.anyio


@asynccontextmanager
async def supervising(path: Path) -> AsyncIterator[Supervisor]:
    """A real Supervisor on `path` with the built-in plugins, shut down at the end."""
    plugins = PluginManager(load_entry_points=False)
    sup = Supervisor(load(path, plugins=plugins.names, validate=plugins.validate), plugins)
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        try:
            yield sup
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(15):
                await sup.shutdown()
            nursery.cancel_scope.cancel()


def write(tmp_path, body: str):
    path = tmp_path / "config.toml"
    path.write_text(f'[server]\ndata_dir = "{tmp_path / "data"}"\nlog_dir = "{tmp_path / "logs"}"'
                    f"\n{body}")
    return path


async def test_an_expected_exit_code_is_not_restarted(tmp_path):
    code = "import sys, time; time.sleep(0.2); sys.exit(2)"
    path = write(tmp_path, f'[components.job]\nplugin = "process"\ncommand = '
                           f'["{sys.executable}", "-c", "{code}"]\nrestart = "on-failure"\n'
                           "exit_codes = [0, 2]\n")
    async with supervising(path) as sup:
        with trio.fail_after(10):
            while sup.view("job")["state"] != "stopped" or sup.view("job")["exit_code"] != 2:
                await trio.sleep(0.05)
        await trio.sleep(0.5)  # and it stays so
        view = sup.view("job")
    assert (view["state"], view["exit_code"], view["restarts"]) == ("stopped", 2, 0)
    assert view["error"] is None


@pytest.mark.parametrize(("value", "words"), [
    ('"0"', "expected an array of integers"), ("[0, 256]", "from 0 to 255"),
    ('[0, "2"]', "components.job.exit_codes[1]")])
def test_exit_codes_mistakes_name_the_key(tmp_path, value, words):
    path = write(tmp_path, '[components.job]\nplugin = "process"\ncommand = ["true"]\n'
                           f"exit_codes = {value}\n")
    with pytest.raises(ConfigError) as refused:
        load(path)
    assert "components.job.exit_codes" in str(refused.value) and words in str(refused.value)


async def test_env_file_values_reach_the_child_and_env_wins(tmp_path):
    (tmp_path / "app.env").write_text("# the app's settings\nGREETING=hello\nLEVEL=debug\n"
                                      "QUOTED=\"a b\"\n")
    (tmp_path / "more.env").write_text("LEVEL=warning\n")
    out = tmp_path / "env.txt"
    code = (f"import os; open({str(out)!r}, 'w').write(os.environ['GREETING'] + ' ' + "
            "os.environ['LEVEL'] + ' ' + os.environ['QUOTED'] + ' ' + os.environ['OWN']); "
            "import time; time.sleep(60)")
    path = write(tmp_path, '[components.app]\nplugin = "process"\n'
                           f"command = {_toml_list([sys.executable, '-c', code])}\n"
                           'env_file = ["app.env", "more.env"]\nenv = { OWN = "mine" }\n')
    async with supervising(path):
        with trio.fail_after(10):
            while not out.exists() or not out.read_text():
                await trio.sleep(0.05)
    assert out.read_text() == "hello warning a b mine"


def test_a_missing_env_file_is_a_config_error(tmp_path):
    path = write(tmp_path, '[components.app]\nplugin = "process"\ncommand = ["true"]\n'
                           'env_file = "nope.env"\n')
    with pytest.raises(ConfigError) as refused:
        load(path)
    assert "components.app.env_file" in str(refused.value) and "nope.env" in str(refused.value)


def _toml_list(items: list[str]) -> str:
    import json

    return json.dumps(items)


@pytest.mark.skipif(__import__("os").geteuid() != 0, reason="only root can start a child "
                    "as another user (this machine's tests run as root, CI's too)")
async def test_a_child_runs_as_nobody_with_its_umask(tmp_path):
    import pwd

    nobody = pwd.getpwnam("nobody")
    script = 'echo "ids $(id -ru) $(id -u) $(id -rg) home=$HOME user=$USER mask=$(umask)"; ' \
             "sleep 60"
    path = write(tmp_path, '[components.job]\nplugin = "process"\n'
                           f"command = {_toml_list(['/bin/sh', '-c', script])}\n"
                           'cwd = "/"\nuser = "nobody"\numask = "027"\n')
    async with supervising(path) as sup:
        with trio.fail_after(10):
            while not any("ids" in ln.text for ln in sup.log("job").tail(20)):
                await trio.sleep(0.05)
        line = next(ln.text for ln in sup.log("job").tail(20) if "ids" in ln.text)
    uid, gid = nobody.pw_uid, nobody.pw_gid
    assert f"ids {uid} {uid} {gid}" in line, line
    assert f"home={nobody.pw_dir} user=nobody" in line and "mask=0027" in line, line


def test_user_and_group_mistakes_name_the_key(tmp_path):
    for body, where in (('user = "no-such-user-here"', "components.job.user"),
                        ('group = "no-such-group-here"', "components.job.group"),
                        ('umask = "999"', "components.job.umask")):
        path = write(tmp_path, '[components.job]\nplugin = "process"\ncommand = ["true"]\n'
                               f"{body}\n")
        with pytest.raises(ConfigError) as refused:
            load(path)
        assert where in str(refused.value), refused.value


async def test_health_cmd_turns_unhealthy_with_its_output_as_the_reason(tmp_path):
    flag = tmp_path / "ok"
    flag.write_text("")
    check = f'test -f {flag} || {{ echo "checking"; echo "no flag file at {flag}"; exit 1; }}'
    sleeper = [sys.executable, "-c", "import time; time.sleep(60)"]
    path = write(tmp_path, '[components.web]\nplugin = "process"\n'
                           f"command = {_toml_list(sleeper)}\n"
                           f"health_cmd = {_toml_list(['/bin/sh', '-c', check])}\n"
                           "probe_timeout = 2.0\n")
    async with supervising(path) as sup:
        with trio.fail_after(10):
            while sup.view("web")["health"] != "healthy":
                await sup.tick()
                await trio.sleep(0.05)
            flag.unlink()
            while sup.view("web")["health"] != "unhealthy":
                await sup.tick()
                await trio.sleep(0.05)
        view = sup.view("web")
    assert view["state"] == "running"  # unhealthy is not restarted
    assert view["error"] == f"health_cmd: no flag file at {flag}"
