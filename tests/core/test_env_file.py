"""env_file: dotenv files read at load, beneath the component's env, in real children."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import trio

from core.config import ConfigError, load
from core.plugins import PluginManager
from tests.core.test_component_keys import supervising, write
from tests.core.test_run_as import environ, running_pid

pytestmark = pytest.mark.anyio


def job(keys: str) -> str:
    return f'[components.job]\nplugin = "process"\ncommand = ["sleep", "60"]\n{keys}\n'


def loaded(path: Path):
    plugins = PluginManager(load_entry_points=False)
    return load(path, plugins=plugins.names, validate=plugins.validate)


async def test_values_reach_the_child_beneath_env_and_a_later_file_wins(tmp_path, monkeypatch):
    monkeypatch.setenv("CC_TEST_FROM_SUPERVISOR", "supervisor")
    (tmp_path / "a.env").write_text(
        "# shared settings\nexport FIRST=a\nBOTH_FILES=a\nFILE_AND_ENV=file\n"
        "QUOTED=\"two words\"\nREF=${FIRST}-ref\nCC_TEST_FROM_SUPERVISOR\n")
    sub = tmp_path / "conf"
    sub.mkdir()
    (sub / "b.env").write_text("BOTH_FILES=b\n")
    path = write(tmp_path, job('env_file = ["a.env", "conf/b.env"]\n'
                               'env = { FILE_AND_ENV = "env" }'))
    async with supervising(path) as sup:
        env = environ(await running_pid(sup))
        info = sup._components["job"].info
    assert env["FIRST"] == "a" and env["QUOTED"] == "two words" and env["REF"] == "a-ref"
    assert env["BOTH_FILES"] == "b"          # the later file wins
    assert env["FILE_AND_ENV"] == "env"      # the component's env wins over the files
    assert env["CC_TEST_FROM_SUPERVISOR"] == "supervisor"  # a bare KEY: the supervisor's
    assert info.env_file_env["BOTH_FILES"] == "b"
    with pytest.raises(TypeError):
        info.env_file_env["X"] = "y"  # read-only for plugins


def test_a_single_path_and_the_supervisors_value(tmp_path):
    (tmp_path / "one.env").write_text("A=1\nNOT_SET_ANYWHERE_CC\n")
    cfg = loaded(write(tmp_path, job('env_file = "one.env"')))
    comp = cfg.components["job"]
    assert dict(comp.env_file_env) == {"A": "1"}  # a bare KEY nobody has is left out
    assert comp.env_file == (tmp_path / "one.env",)


@pytest.mark.parametrize(("value", "where", "words"), [
    ('"missing.env"', "components.job.env_file", "does not exist"),
    ('["ok.env", "missing.env"]', "components.job.env_file[1]", "missing.env does not exist"),
    ('"."', "components.job.env_file", "is not a file"),
    ("3", "components.job.env_file", "expected a path (string) or an array of paths"),
    ('[1]', "components.job.env_file[0]", "expected a string"),
    ('""', "components.job.env_file", "non-empty"),
    ('"latin1.env"', "components.job.env_file", "cannot read"),
])
def test_env_file_mistakes_are_config_errors_naming_the_key(tmp_path, value, where, words):
    (tmp_path / "ok.env").write_text("A=1\n")
    (tmp_path / "latin1.env").write_bytes(b"A=caf\xe9\n")
    with pytest.raises(ConfigError) as refused:
        loaded(write(tmp_path, job(f"env_file = {value}")))
    assert where in str(refused.value) and words in str(refused.value), str(refused.value)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_an_unreadable_file_is_a_config_error(tmp_path):
    secret = tmp_path / "secret.env"
    secret.write_text("A=1\n")
    secret.chmod(0)
    with pytest.raises(ConfigError, match="cannot read"):
        loaded(write(tmp_path, job('env_file = "secret.env"')))


async def test_a_reload_that_finds_a_file_changed_restarts_the_component(tmp_path):
    env_file = tmp_path / "app.env"
    env_file.write_text("VERSION=1\n")
    (tmp_path / "other.env").write_text("X=1\n")
    path = write(tmp_path, job('env_file = "app.env"') + job("").replace(
        "[components.job]", "[components.other]") + 'env_file = "other.env"\n')
    async with supervising(path) as sup:
        pid = await running_pid(sup)
        other = sup.view("other")["pid"]
        assert environ(pid)["VERSION"] == "1"
        assert (await sup.reload())["changed"] == []  # nothing changed: nothing restarts
        env_file.write_text("VERSION=2\n")
        result = await sup.reload()
        assert result["changed"] == ["job"] and result["unchanged"] == ["other"]
        with trio.fail_after(10):
            while sup.view("job")["pid"] in (None, pid):
                await trio.sleep(0.02)
        assert environ(sup.view("job")["pid"])["VERSION"] == "2"
        assert sup.view("other")["pid"] == other
