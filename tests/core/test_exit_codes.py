"""exit_codes: an expected exit is not restarted under on-failure, through a real supervisor."""

from __future__ import annotations

import sys

import pytest
import trio

from core.config import ConfigError, load
from core.plugins import PluginManager
from core.supervisor import Supervisor

pytestmark = pytest.mark.anyio


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
    plugins = PluginManager(load_entry_points=False)
    sup = Supervisor(load(path, plugins=plugins.names, validate=plugins.validate), plugins)
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        with trio.fail_after(10):
            while sup.view("job")["state"] != "stopped" or sup.view("job")["exit_code"] != 2:
                await trio.sleep(0.05)
        await trio.sleep(0.5)  # and it stays so
        view = sup.view("job")
        await sup.shutdown()
        nursery.cancel_scope.cancel()
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
