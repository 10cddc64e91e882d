"""The storage and api plugins: option validation, Launch, probe, stop."""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path

import pytest

import plugins.api as api_plugin
import plugins.storage as storage_plugin
from core import ComponentInfo, OptionError, Probe
from core.config import parse
from core.plugins import PluginManager

# -- validate_config ---------------------------------------------------------------


def test_storage_defaults():
    assert storage_plugin.validate_config(component_id="storage", options={}) == {
        "host": "127.0.0.1", "port": 7701, "data_dir": None, "sync": "full"}


def test_api_defaults():
    assert api_plugin.validate_config(component_id="api", options={}) == {
        "host": "127.0.0.1", "port": 7702, "storage_url": "http://127.0.0.1:7701",
        "window": 10}


@pytest.mark.parametrize(("plugin", "options", "key", "needle"), [
    (storage_plugin, {"prot": 7701}, "prot", "did you mean 'port'"),
    (storage_plugin, {"port": 0}, "port", "from 1 to 65535, got 0"),
    (storage_plugin, {"port": 70000}, "port", "from 1 to 65535, got 70000"),
    (storage_plugin, {"port": "7701"}, "port", "integer"),
    (storage_plugin, {"port": True}, "port", "integer"),
    (storage_plugin, {"host": ""}, "host", "empty"),
    (storage_plugin, {"data_dir": 3}, "data_dir", "string"),
    (storage_plugin, {"sync": "sometimes"}, "sync", "full"),
    (api_plugin, {"storage": "x"}, "storage", "did you mean 'storage_url'"),
    (api_plugin, {"port": -1}, "port", "from 1 to 65535"),
    (api_plugin, {"storage_url": "127.0.0.1:7701"}, "storage_url", "http://host:port"),
    (api_plugin, {"storage_url": "http://127.0.0.1"}, "storage_url", "http://host:port"),
    (api_plugin, {"storage_url": "http://127.0.0.1:99999"}, "storage_url", "http://"),
    (api_plugin, {"window": 0}, "window", "from 1 to 3600"),
])
def test_option_errors(plugin, options, key, needle):
    with pytest.raises(OptionError) as info:
        plugin.validate_config(component_id="c", options=options)
    assert info.value.key == key
    assert needle in info.value.message


def test_errors_name_the_key_path_through_the_config_loader(tmp_path):
    pm = PluginManager(load_entry_points=False)
    text = '[components.storage]\nplugin = "storage"\nport = 123456\n'
    with pytest.raises(Exception) as info:
        parse(text, tmp_path / "config.toml", plugins=pm.names, validate=pm.validate)
    assert "components.storage.port" in str(info.value)
    assert "65535" in str(info.value)


# -- start / probe / stop against the real programs ------------------------------------


def _info(plugin, component_id: str, tmp_path: Path, **options) -> ComponentInfo:
    normalised = plugin.validate_config(component_id=component_id, options=options)
    return ComponentInfo(id=component_id, name=component_id, plugin=component_id,
                         options=normalised, data_dir=tmp_path / component_id,
                         config_dir=tmp_path)


def _run(launch, tmp_path: Path, name: str) -> subprocess.Popen[bytes]:
    log = (tmp_path / f"{name}.log").open("wb")
    try:
        return subprocess.Popen(launch.argv, cwd=launch.cwd, stdout=log,
                                stderr=subprocess.STDOUT)
    finally:
        log.close()


def _wait_healthy(plugin, info: ComponentInfo, pid: int, within: float = 10.0) -> Probe:
    deadline = time.monotonic() + within
    while True:
        found = plugin.probe(component=info, pid=pid)
        if found.healthy or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


def _reap(*procs: subprocess.Popen[bytes]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait(5)


def test_storage_launch_runs_probe_reports_and_stop_is_clean(tmp_path, port_factory,
                                                              json_call):
    info = _info(storage_plugin, "storage", tmp_path, port=port_factory())
    launch = storage_plugin.start(component=info)
    assert launch.argv[1:3] == ("-m", "plugins.storage.engine")
    assert str(tmp_path / "storage") in launch.argv  # the component's own data_dir
    proc = _run(launch, tmp_path, "storage")
    try:
        found = _wait_healthy(storage_plugin, info, proc.pid)
        assert found.healthy, found.error
        assert set(found.metrics) == {"total_concepts", "total_associations",
                                      "storage_size_mb"}
        assert found.metrics["total_concepts"] == 0
        url = f"http://127.0.0.1:{info.options['port']}"
        json_call(url, "POST", "/concepts", {"content": "one galaxy"})
        json_call(url, "POST", "/concepts", {"content": "two galaxy"})
        found = storage_plugin.probe(component=info, pid=proc.pid)
        assert (found.metrics["total_concepts"], found.metrics["total_associations"]) == (2, 1)
        assert found.metrics["storage_size_mb"] > 0
        started = time.monotonic()
        storage_plugin.stop(component=info, pid=proc.pid)
        # The hook returns once the engine has stopped listening, having
        # checkpointed: the process then exits 0 without any signal.
        assert proc.wait(5) == 0
        assert time.monotonic() - started < 5
        wal = tmp_path / "storage" / "knowledge.db-wal"
        assert not wal.exists() or wal.stat().st_size == 0
    finally:
        _reap(proc)


def test_storage_data_dir_option_is_relative_to_the_config(tmp_path, port_factory):
    info = _info(storage_plugin, "storage", tmp_path, port=port_factory(), data_dir="elsewhere")
    launch = storage_plugin.start(component=info)
    assert str(tmp_path / "elsewhere") in launch.argv
    assert (tmp_path / "elsewhere").is_dir()


def test_api_launch_runs_and_probe_follows_storage(tmp_path, port_factory, json_call):
    storage = _info(storage_plugin, "storage", tmp_path, port=port_factory())
    api = _info(api_plugin, "api", tmp_path, port=port_factory(),
                storage_url=f"http://127.0.0.1:{storage.options['port']}")
    launch = api_plugin.start(component=api)
    assert launch.argv[1:3] == ("-m", "plugins.api.server")
    api_proc = _run(launch, tmp_path, "api")
    storage_proc = None
    try:
        # The API is up but its storage is not: unhealthy, with the reason.
        deadline = time.monotonic() + 10
        while True:
            found = api_plugin.probe(component=api, pid=api_proc.pid)
            if "unreachable" not in (found.error or "") or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert not found.healthy
        assert "storage engine unavailable" in found.error
        assert set(found.metrics) == {"queries_per_second", "avg_latency_ms"}

        storage_proc = _run(storage_plugin.start(component=storage), tmp_path, "storage")
        found = _wait_healthy(api_plugin, api, api_proc.pid)
        assert found.healthy, found.error
        url = f"http://127.0.0.1:{api.options['port']}"
        for i in range(5):
            assert json_call(url, "POST", "/learn", {"content": f"fact {i}"})[0] == 201
        found = api_plugin.probe(component=api, pid=api_proc.pid)
        assert found.metrics["queries_per_second"] > 0
        assert found.metrics["avg_latency_ms"] > 0
    finally:
        _reap(api_proc, *([storage_proc] if storage_proc else []))


@pytest.mark.parametrize("plugin", [storage_plugin, api_plugin])
def test_probe_of_nothing_listening_is_quick_and_clear(plugin, tmp_path, port_factory):
    info = _info(plugin, "c", tmp_path, port=port_factory())
    started = time.monotonic()
    found = plugin.probe(component=info, pid=1)
    assert time.monotonic() - started < 1.0
    assert not found.healthy
    assert f"unreachable at 127.0.0.1:{info.options['port']}" in found.error


@pytest.mark.parametrize("plugin", [storage_plugin, api_plugin])
def test_probe_of_a_silent_listener_times_out_within_a_bound(plugin, tmp_path):
    with socket.socket() as silent:  # accepts connections (backlog), never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        info = _info(plugin, "c", tmp_path, port=silent.getsockname()[1])
        started = time.monotonic()
        found = plugin.probe(component=info, pid=1)
        elapsed = time.monotonic() - started
    assert 0.9 < elapsed < 2.0
    assert not found.healthy
    assert "timed out" in found.error


def test_storage_stop_of_a_dead_engine_returns_at_once(tmp_path, port_factory):
    info = _info(storage_plugin, "storage", tmp_path, port=port_factory())
    started = time.monotonic()
    assert storage_plugin.stop(component=info, pid=1) is None
    assert time.monotonic() - started < 1.0
