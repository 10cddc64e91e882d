"""config.toml mistakes: one clear message naming file and key, exit status 2."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from core.app import load_config
from core.config import ConfigError, parse
from core.plugins import PluginManager

GOOD = """
[server]
port = 9100
interval = 1.5

[components.storage]
plugin = "process"
name = "Storage"
command = ["sleep", "60"]

[components.api]
plugin = "process"
command = "sleep 60"
depends_on = ["storage"]
restart = "always"
stop_signal = "SIGINT"
"""


@pytest.fixture(scope="module")
def plugins() -> PluginManager:
    return PluginManager()


def load_text(tmp_path: Path, text: str, plugins: PluginManager):
    path = tmp_path / "config.toml"
    path.write_text(text)
    return load_config(path, plugins)


def test_good_config(tmp_path: Path, plugins: PluginManager) -> None:
    cfg = load_text(tmp_path, GOOD, plugins)
    assert cfg.server.port == 9100
    assert cfg.server.interval == 1.5
    assert cfg.server.data_dir == tmp_path / "data"
    assert list(cfg.components) == ["storage", "api"]
    api = cfg.components["api"]
    assert api.name == "api"
    assert api.depends_on == ("storage",)
    assert api.stop_signal == signal.SIGINT
    assert api.options["command"] == ["sleep", "60"]
    assert cfg.start_order() == ["storage", "api"]


def test_defaults(tmp_path: Path, plugins: PluginManager) -> None:
    cfg = load_text(tmp_path, "", plugins)
    assert cfg.server.host == "127.0.0.1"
    assert cfg.server.port == 9000
    assert cfg.server.interval == 2.0
    assert cfg.components == {}


COMP = '[components.a]\nplugin = "process"\ncommand = "true"\n'

BAD = [
    # (config text, key path in the message, words the message must contain)
    ("[server\nport = 1", None, "invalid TOML"),
    ("[server]\nport = ", None, "line 2"),
    ("[server]\nprot = 9000", "server.prot", "did you mean 'port'"),
    ("[sever]\nport = 9000", "sever", "did you mean 'server'"),
    ('[server]\nport = "9000"', "server.port", "expected an integer"),
    ("[server]\nport = 70000", "server.port", "from 0 to 65535"),
    ("[server]\ninterval = 0", "server.interval", "expected a number from 0.05 to 3600"),
    ('[server]\nallowed_origins = "x"', "server.allowed_origins", "array of strings"),
    ('[server]\ntls_cert = "/nonexistent.pem"', "server.tls_key", "go together"),
    ("[components.a]\ncommand = \"true\"", "components.a.plugin", "is required"),
    ('[components.a]\nplugin = "proces"\ncommand = "true"', "components.a.plugin",
     "did you mean 'process'"),
    (COMP + 'restart = "sometimes"', "components.a.restart", "'always', 'on-failure', 'never'"),
    (COMP + 'autostart = "yes"', "components.a.autostart", "true or false"),
    (COMP + "autostrat = true", "components.a.autostrat", "did you mean 'autostart'"),
    (COMP + 'depends_on = ["b"]', "components.a.depends_on[0]", "unknown component 'b'"),
    (COMP + 'depends_on = ["a"]', "components.a.depends_on[0]", "itself"),
    (COMP + 'depends_on = ["b"]\n[components.b]\nplugin = "process"\ncommand = "true"\n'
            'depends_on = ["a"]', "depends_on", "dependency cycle"),
    (COMP + 'stop_signal = "SIGTREM"', "components.a.stop_signal", "did you mean 'SIGTERM'"),
    (COMP + "stop_timeout = -1", "components.a.stop_timeout",
     "expected a number from 0.1 to 3600, got -1"),
    (COMP + "backoff_initial = 5\nbackoff_max = 1", "components.a.backoff_max",
     "backoff_initial"),
    ('[components.a]\nplugin = "process"', "components.a.command", "is required"),
    ('[components.a]\nplugin = "process"\ncommand = 5', "components.a.command",
     "string or an array of strings"),
    ('[components.a]\nplugin = "process"\ncommand = []', "components.a.command", "non-empty"),
    ('[components.a]\nplugin = "process"\ncommand = "x"\ncomand = "y"', "components.a.comand",
     "did you mean 'command'"),
    ('[components.a]\nplugin = "process"\ncommand = "x"\nenv = {A = 1}', "components.a.env.A",
     "expected a string"),
    ('[components.a]\nplugin = "process"\ncommand = "x"\nhealth_url = "ftp://x"',
     "components.a.health_url", "http://"),
    ('[components.a]\nplugin = "process"\ncommand = "unterminated \'quote"',
     "components.a.command", "cannot split"),
    ("components = 3", "components", "expected tables"),
    ("[server]\nport = 29612.0", "server.port", "expected an integer, got a float (29612.0)"),
    ('[components.a]\nplugin = "storage"\nport = 29612.0', "components.a.port",
     "expected an integer, got a float (29612.0)"),
    (COMP + 'restrat = "always"', "components.a.restrat",
     "unknown key; did you mean 'restart'? (the process plugin's keys: command, cwd"),
    ('[server]\ntoken = "a"\ntoken_file = "t"', "server.token_file", "exclude each other"),
    ('[server]\ntoken_file = "no-such-file"', "server.token_file", "cannot read"),
    ('[components."a b"]\nplugin = "process"\ncommand = "x"', "components.a b", "letters"),
]


@pytest.mark.parametrize(("text", "key", "words"), BAD, ids=[b[1] or b[2] for b in BAD])
def test_bad_config(tmp_path: Path, plugins: PluginManager, text: str, key: str | None,
                    words: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_text(tmp_path, text, plugins)
    err = info.value
    assert err.path == str(tmp_path / "config.toml")
    if key is not None:
        assert err.key is not None and key in err.key
    assert words in str(err)
    assert str(err).startswith(str(tmp_path / "config.toml"))


def test_at_least_fifteen_distinct_mistakes() -> None:
    assert len({(b[1], b[2]) for b in BAD}) >= 15


def test_missing_file(tmp_path: Path, plugins: PluginManager) -> None:
    with pytest.raises(ConfigError, match="file not found"):
        load_config(tmp_path / "nope.toml", plugins)


def test_parse_without_plugins_keeps_options() -> None:
    cfg = parse('[components.x]\nplugin = "anything"\nfoo = 1', Path("/tmp/c.toml"))
    assert dict(cfg.components["x"].options) == {"foo": 1}


def run_core(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "core", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=60)


def test_check_command_ok(tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_text(GOOD)
    result = run_core("check", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "OK (2 components: storage, api)" in result.stdout


def test_bad_config_exits_2_without_traceback_and_starts_nothing(tmp_path: Path) -> None:
    marker = tmp_path / "started"
    (tmp_path / "config.toml").write_text(
        f'[components.ok]\nplugin = "process"\ncommand = ["touch", "{marker}"]\n'
        '[components.bad]\nplugin = "process"\ncommand = "x"\nrestart = "sometimes"\n')
    for args in (("check",), ("--config", "config.toml")):
        result = run_core(*args, cwd=tmp_path)
        assert result.returncode == 2
        assert "Traceback" not in result.stderr
        assert "config.toml: components.bad.restart: expected one of" in result.stderr
    assert not marker.exists()
