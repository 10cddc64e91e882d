"""`[remotes.NAME]` in config.toml, and the instance id under data_dir."""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import trustme

from core.config import parse
from core.errors import ConfigError
from core.remotes import INSTANCE_ID_FILE, instance_id

ROOT = Path(__file__).resolve().parents[2]


def _parse(text: str, tmp_path: Path):  # type: ignore[no-untyped-def]
    return parse(text, tmp_path / "config.toml")


def test_a_remote_with_a_token_file_and_a_ca(tmp_path: Path) -> None:
    (tmp_path / "b.token").write_text("the-token-of-b\n")
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    config = _parse('[remotes.b]\nurl = "https://10.0.0.2:9000/"\n'
                    'token_file = "b.token"\ncacert = "ca.pem"\n'
                    '[remotes.c]\nurl = "http://10.0.0.3:9000"\n', tmp_path)
    b, c = config.remotes["b"], config.remotes["c"]
    assert list(config.remotes) == ["b", "c"]
    assert b.url == "https://10.0.0.2:9000" and b.ws_url == "wss://10.0.0.2:9000/ws"
    assert b.token == "the-token-of-b" and b.cacert == tmp_path / "ca.pem"
    assert "the-token-of-b" not in repr(config)
    assert c.token is None and c.ws_url == "ws://10.0.0.3:9000/ws" and c.headers() == {}
    assert _parse("", tmp_path).remotes == {}


@pytest.mark.parametrize(("text", "key", "message"), [
    ('[remotes.b]\ntoken = "t"\n', "remotes.b.url", "is required"),
    ('[remotes.b]\nurl = 9000\n', "remotes.b.url", "expected a string, got an integer"),
    ('[remotes.b]\nurl = "ws://h:1"\n', "remotes.b.url", "http:// or https://"),
    ('[remotes.b]\nurl = "http://h:1/api"\n', "remotes.b.url", "no path"),
    ('[remotes.b]\nurl = "http://h:99999"\n', "remotes.b.url", "invalid port"),
    ('[remotes.b]\nurl = "http://h"\ntokn = "t"\n', "remotes.b.tokn", "did you mean 'token'"),
    ('[remotes.b]\nurl = "http://h"\ntoken = ["t"]\n', "remotes.b.token", "expected a string"),
    ('[remotes.b]\nurl = "http://h"\ntoken = "t"\ntoken_file = "f"\n',
     "remotes.b.token_file", "set one of them"),
    ('[remotes.b]\nurl = "http://h"\ntoken_file = "missing"\n', "remotes.b.token_file",
     "cannot read"),
    ('[remotes.b]\nurl = "https://h"\ncacert = "missing.pem"\n', "remotes.b.cacert",
     "does not exist"),
    ('[remotes.b]\nurl = "http://h"\ncacert = "config.toml"\n', "remotes.b.cacert",
     "https:// remotes only"),
    ('[remotes]\nb = "http://h"\n', "remotes.b", "expected a table"),
    ('remotes = 1\n', "remotes", "expected tables"),
    ('[remotes."a/b"]\nurl = "http://h"\n', "remotes.a/b", "letters, digits"),
    ('[remote.b]\nurl = "http://h"\n', "remote", "did you mean 'remotes'"),
])
def test_mistakes_name_the_key(tmp_path: Path, text: str, key: str, message: str) -> None:
    (tmp_path / "config.toml").write_text(text)
    with pytest.raises(ConfigError) as caught:
        _parse(text, tmp_path)
    assert caught.value.key == key
    assert message in caught.value.message


def test_a_bad_ca_file_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "ca.pem").write_text("not a certificate\n")
    with pytest.raises(ConfigError) as caught:
        _parse('[remotes.b]\nurl = "https://h"\ncacert = "ca.pem"\n', tmp_path)
    assert caught.value.key == "remotes.b.cacert"


def test_python_m_core_exits_2_naming_the_key_and_never_the_token(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text('[remotes.b]\nurl = "http://h"\ntoken = "sekrit-value"\nport = 1\n')
    done = subprocess.run([sys.executable, "-m", "core", "--config", str(config)], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "remotes.b.port: unknown key" in done.stderr
    assert "sekrit-value" not in done.stderr + done.stdout


def test_the_instance_id_is_made_once_and_kept(tmp_path: Path) -> None:
    first = instance_id(tmp_path / "data")
    assert uuid.UUID(first)
    assert instance_id(tmp_path / "data") == first
    (tmp_path / "data" / INSTANCE_ID_FILE).write_text("garbage")
    assert instance_id(tmp_path / "data") != first  # a broken file is replaced
    assert instance_id(tmp_path / "other") != first
