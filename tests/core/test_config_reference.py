"""The config reference is generated from the definitions the validator uses."""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
from pathlib import Path

import pytest

from core import schema
from core.config import ComponentConfig, ConfigError, ServerConfig, parse
from core.errors import OptionError
from core.options import UnknownOptionError
from core.plugins import PluginManager

ROOT = Path(__file__).resolve().parents[2]


def test_the_command_prints_docs_config_md() -> None:
    out = subprocess.run([sys.executable, "-m", "core", "config-reference"], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    assert out == (ROOT / "docs" / "config.md").read_text(encoding="utf-8"), (
        "docs/config.md is stale: python -m core config-reference > docs/config.md")
    explain = subprocess.run([sys.executable, "-m", "core", "check", "--explain"], cwd=ROOT,
                             capture_output=True, text=True, check=True).stdout
    assert explain == out


def test_every_config_field_has_a_definition_and_the_same_default() -> None:
    server = {f.name: f for f in dataclasses.fields(ServerConfig)}
    assert set(server) | {"token_file"} == set(schema.SERVER_KEYS)
    for name, f in server.items():
        default = schema.SERVER_KEYS[name].default
        expected = f.default
        if isinstance(expected, Path):
            expected = str(expected)
        assert expected == (default if default != () else ()), name
    # Not keys: the table name, the plugin's own, what env_file's files hold, and what
    # an instance is of (core.instances).
    derived = {"id", "options", "env_file_env", "instance_of", "instance"}
    comp = {f.name for f in dataclasses.fields(ComponentConfig)} - derived
    assert comp == set(schema.COMPONENT_KEYS)


def test_every_key_is_in_the_reference_with_its_default() -> None:
    text = schema.reference()
    for key in (*schema.SERVER, *schema.COMPONENT):
        line = f"- `{key.name}`: {key.type_text()}; default {key.default_repr()}."
        assert line in text
        assert len(key.meaning) > 20


def _server(text: str, tmp_path: Path) -> ServerConfig:
    return parse(text, tmp_path / "config.toml").server


@pytest.mark.parametrize("key", [k for k in schema.SERVER if k.kind in ("integer", "number")],
                         ids=lambda k: k.name)
def test_server_bounds_in_the_reference_are_the_validators(key: schema.Key,
                                                           tmp_path: Path) -> None:
    assert key.low is not None
    low = int(key.low) if key.kind == "integer" else key.low
    assert getattr(_server(f"[server]\n{key.name} = {low}", tmp_path), key.name) == low
    below = low - 1 if key.kind == "integer" else low - 0.01
    with pytest.raises(ConfigError) as info:
        _server(f"[server]\n{key.name} = {below}", tmp_path)
    assert f"server.{key.name}" in str(info.value)
    if key.high is not None:
        above = int(key.high) + 1 if key.kind == "integer" else key.high + 1
        with pytest.raises(ConfigError):
            _server(f"[server]\n{key.name} = {above}", tmp_path)


@pytest.mark.parametrize("key", [k for k in schema.COMPONENT
                                 if k.kind in ("integer", "number")], ids=lambda k: k.name)
def test_component_bounds_in_the_reference_are_the_validators(key: schema.Key,
                                                              tmp_path: Path) -> None:
    head = '[components.a]\nplugin = "process"\ncommand = "true"\n'
    extra = "backoff_initial = 0\n" if key.name == "backoff_max" else ""
    low = int(key.low) if key.kind == "integer" else key.low
    cfg = parse(f"{head}{extra}{key.name} = {low}", tmp_path / "c.toml").components["a"]
    assert getattr(cfg, key.name) == low
    below = low - 1 if key.kind == "integer" else low - 0.01
    with pytest.raises(ConfigError, match=rf"components\.a\.{key.name}: expected"):
        parse(f"{head}{extra}{key.name} = {below}", tmp_path / "c.toml")


@pytest.mark.parametrize(("plugin", "required"), [
    ("process", {"command": "true"}), ("storage", {}), ("api", {})])
def test_the_builtin_plugins_keys_are_all_in_the_reference(plugin: str,
                                                           required: dict[str, str]) -> None:
    pm = PluginManager(load_entry_points=False)
    with pytest.raises(OptionError) as info:
        pm.validate("a", plugin, {**required, "zz_not_a_key": 1})
    assert isinstance(info.value, UnknownOptionError)
    line = re.search(rf"^- `{plugin}`: (.*?)(?=^- |\Z)", schema.reference(), re.M | re.S)
    assert line is not None
    listed = set(re.findall(r"`(\w+)`", line.group(1)))
    assert info.value.known <= listed, info.value.known - listed


def test_token_file_reads_the_token_with_variables_expanded(tmp_path: Path,
                                                             monkeypatch) -> None:
    (tmp_path / "creds").mkdir()
    (tmp_path / "creds" / "token").write_text("  s3cret\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path / "creds"))
    server = _server('[server]\ntoken_file = "$CREDENTIALS_DIRECTORY/token"', tmp_path)
    assert server.token == "s3cret"
    (tmp_path / "creds" / "token").write_text("\n")
    with pytest.raises(ConfigError, match="is empty"):
        _server('[server]\ntoken_file = "creds/token"', tmp_path)
