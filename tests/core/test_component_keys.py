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


def _toml_list(items: list[str]) -> str:
    import json

    return json.dumps(items)


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
