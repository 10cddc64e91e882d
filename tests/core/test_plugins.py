"""Plugin discovery and the public face."""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

import core
from core.plugins import PluginManager

ROOT = Path(__file__).resolve().parents[2]


def test_builtins_registered() -> None:
    pm = PluginManager()
    assert {"process", "storage", "api"} <= pm.names
    for name in ("process", "storage", "api"):
        assert pm.implements(name, "start")
        assert pm.implements(name, "validate_config")


def test_public_face_exports() -> None:
    assert set(core.__all__) == {"PLUGIN_METRICS", "ComponentInfo", "Launch", "OptionError",
                                 "OptionReader", "Probe", "UnknownOptionError", "hookimpl"}
    for name in core.__all__:
        assert hasattr(core, name)


def test_plugins_import_only_the_public_face() -> None:
    offenders = []
    for path in (ROOT / "plugins").rglob("*.py"):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and (
                    node.module.startswith("core.")):
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.module}")
            if isinstance(node, ast.Import):
                offenders += [f"{path.relative_to(ROOT)}:{node.lineno} {a.name}"
                              for a in node.names if a.name.startswith("core.")]
    assert offenders == []


def _make_plugin_dist(site: Path) -> None:
    """A third-party plugin as pip would install it: package + dist-info with an entry point."""
    pkg = site / "cc_hello"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(textwrap.dedent('''
        import sys
        from core import Launch, OptionReader, Probe, hookimpl

        @hookimpl
        def validate_config(component_id, options):
            opts = OptionReader(options)
            greeting = opts.string("greeting", "hello")
            opts.finish()
            return {"greeting": greeting}

        @hookimpl
        def start(component):
            greeting = component.options["greeting"]
            code = f"import time; print({greeting!r}, flush=True); time.sleep(60)"
            return Launch(argv=(sys.executable, "-c", code))

        @hookimpl
        def probe(component, pid):
            return Probe(healthy=True, metrics={"total_concepts": 42})
    '''))
    dist = site / "cc_hello-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: cc-hello\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[control_center]\nhello = cc_hello\n")
    (dist / "RECORD").write_text("")


def test_third_party_plugin_from_entry_point_runs(tmp_path: Path) -> None:
    site = tmp_path / "site"
    site.mkdir()
    _make_plugin_dist(site)
    config = tmp_path / "config.toml"
    config.write_text('[server]\nport = 0\ninterval = 0.2\n'
                      '[components.greeter]\nplugin = "hello"\ngreeting = "bonjour"\n')
    env = {"PYTHONPATH": f"{site}:{ROOT}", "PATH": "/usr/bin:/bin"}
    check = subprocess.run([sys.executable, "-m", "core", "check", str(config)], env=env,
                           capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stderr
    # Without the package the same config is an error naming the plugin.
    bare = subprocess.run([sys.executable, "-m", "core", "check", str(config)],
                          env={**env, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
                          timeout=60)
    assert bare.returncode == 2
    assert "components.greeter.plugin: unknown plugin 'hello'" in bare.stderr
    script = textwrap.dedent(f'''
        import trio
        from core.app import load_config
        from core.plugins import PluginManager
        from core.supervisor import Supervisor

        async def main():
            pm = PluginManager()
            sup = Supervisor(load_config({str(config)!r}, pm), pm)
            async with trio.open_nursery() as n:
                await n.start(sup.run)
                with trio.fail_after(10):
                    while sup.view("greeter")["health"] != "healthy":
                        await trio.sleep(0.05)
                    while not any("bonjour" in l.text for l in sup.log("greeter").tail(10)):
                        await trio.sleep(0.05)
                doc = await sup.tick()
                print("STATE", doc["components"]["greeter"]["state"])
                print("CONCEPTS", doc["metrics"]["total_concepts"])
                await sup.shutdown()
                n.cancel_scope.cancel()

        trio.run(main)
    ''')
    run = subprocess.run([sys.executable, "-c", script], env=env, cwd=tmp_path,
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert "STATE running" in run.stdout
    assert "CONCEPTS 42" in run.stdout


def _dist_info(site: Path, dist: str, entry_points: str) -> None:
    info = site / f"{dist.replace('-', '_')}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[control_center]\n{entry_points}\n")
    (info / "RECORD").write_text("")


def test_two_distributions_with_one_name_is_an_error_naming_both(tmp_path: Path) -> None:
    site = tmp_path / "site"
    site.mkdir()
    for module in ("acme_one", "acme_two"):
        (site / f"{module}.py").write_text("from core import Probe, hookimpl\n")
    _dist_info(site, "acme-one", "cache = acme_one")
    _dist_info(site, "acme-two", "cache = acme_two")
    # A third party naming its entry point after a built-in is ignored, not a conflict.
    _dist_info(site, "acme-three", "process = acme_one")
    config = tmp_path / "config.toml"
    config.write_text('[components.c]\nplugin = "cache"\n'
                      '[components.p]\nplugin = "process"\ncommand = "true"\n')
    env = {"PYTHONPATH": f"{site}:{ROOT}", "PATH": "/usr/bin:/bin"}
    check = subprocess.run([sys.executable, "-m", "core", "check", str(config)], env=env,
                           capture_output=True, text=True, timeout=60)
    assert check.returncode == 2
    assert ("components.c.plugin: plugin 'cache' is installed but the entry point name "
            "'cache' is registered by 2 distributions: acme-one (acme_one) and acme-two "
            "(acme_two); uninstall one of them, or rename one entry point") in check.stderr
    assert "'process' is a built-in plugin" in check.stderr
    listing = subprocess.run([sys.executable, "-m", "core", "plugins"], env=env,
                             capture_output=True, text=True, timeout=60)
    assert listing.returncode == 0, listing.stderr
    rows = {line.split()[0]: line for line in listing.stdout.splitlines()[1:]}
    assert "registered by 2 distributions" in rows["cache"]
    assert "built-in: plugins.process" in rows["process"] and rows["process"].endswith("ok")


def test_the_plugins_command_shows_where_a_name_comes_from(tmp_path: Path) -> None:
    site = tmp_path / "site"
    site.mkdir()
    _make_plugin_dist(site)
    env = {"PYTHONPATH": f"{site}:{ROOT}", "PATH": "/usr/bin:/bin"}
    listing = subprocess.run([sys.executable, "-m", "core", "plugins"], env=env,
                             capture_output=True, text=True, timeout=60)
    assert listing.returncode == 0, listing.stderr
    line = next(ln for ln in listing.stdout.splitlines() if ln.startswith("hello "))
    assert line.split() == ["hello", "cc-hello:", "cc_hello", "ok"]
